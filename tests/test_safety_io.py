"""Issue 14, items 7 and 9: files, command lines and messages.

- ``lstmc.save`` is atomic: a write that fails leaves the old file as it was
  and no temporary file behind;
- ``lstmc.load`` refuses a small file whose ``.npy`` header claims a huge
  array with a ValueError naming the file, before allocating it;
- the demo saves right after training, samples at any temperature, and turns
  a model too large for the machine into a one-line error;
- ``check`` and ``bench`` report bad arguments and unwritable output paths in
  one line with exit code 2, before any work;
- arguments that NumPy cannot convert (ragged lists, torch tensors that
  require grad or hold bfloat16) raise an exception naming the argument;
- ``convert.from_torch_state_dict`` refuses a non-mapping with a TypeError.

The command lines run in subprocesses, like tests/test_main.py.
"""

import errno
import io
import os
import subprocess
import sys
import time
import types
import zipfile

import numpy as np
import pytest

import lstmc
from lstmc import _io, convert
from optional import require
from subproc import child_env

D, H = 3, 4


def run(args, cwd, timeout=300):
    """``python -m lstmc *args`` on the lstmc this process imports."""
    return subprocess.run([sys.executable, "-m", "lstmc", *args], cwd=str(cwd),
                          env=child_env({"PYTHONIOENCODING": "utf-8"}), capture_output=True,
                          text=True, encoding="utf-8", timeout=timeout)


def assert_usage_error(r, *words):
    """Exit code 2, one line on stderr naming ``words``, no traceback, no output."""
    assert r.returncode == 2, (r.returncode, r.stdout, r.stderr)
    assert "Traceback" not in r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1, r.stderr
    assert "error" in lines[0]
    for word in words:
        assert word in lines[0], (word, lines[0])
    assert r.stdout == ""


def _layer(dtype=np.float64, seed=0, kind=lstmc.TimeLSTM):
    rng = np.random.default_rng(seed)
    return kind(rng.standard_normal((D, 4 * H)).astype(dtype),
                rng.standard_normal((H, 4 * H)).astype(dtype),
                rng.standard_normal(4 * H).astype(dtype))


# --------------------------------------------------------------------------- save

def _failing_savez(exc):
    """An np.savez that writes part of an archive, then raises ``exc``."""
    def savez(file, **arrays):
        file.write(b"PK\x03\x04 a truncated archive")
        raise exc
    return savez


@pytest.mark.parametrize("exc", [OSError(errno.ENOSPC, "No space left on device"),
                                 KeyboardInterrupt()], ids=["disk full", "Ctrl-C"])
def test_failed_save_keeps_the_old_file_and_removes_the_temporary(tmp_path, monkeypatch, exc):
    path = tmp_path / "model.npz"
    old = _layer(seed=1)
    _io.save(path, old)
    before = path.read_bytes()

    monkeypatch.setattr(np, "savez", _failing_savez(exc))
    with pytest.raises(type(exc)):
        _io.save(path, _layer(seed=2))
    monkeypatch.undo()

    assert path.read_bytes() == before
    assert sorted(os.listdir(tmp_path)) == ["model.npz"]  # no temporary left
    for got, want in zip(_io.load(path).params, old.params):
        np.testing.assert_array_equal(got, want)


def test_failed_save_of_a_new_file_creates_nothing(tmp_path, monkeypatch):
    monkeypatch.setattr(np, "savez", _failing_savez(OSError(errno.ENOSPC, "disk full")))
    with pytest.raises(OSError):
        _io.save(tmp_path / "new.npz", _layer())
    assert os.listdir(tmp_path) == []


def test_save_writes_the_path_as_given_and_leaves_nothing_else(tmp_path):
    # No .npz suffix is appended (unlike np.savez), and no temporary file remains.
    layer = _layer(np.float32, kind=lstmc.LSTM)
    _io.save(tmp_path / "weights", layer)
    _io.save(str(tmp_path / "weights"), layer)  # replacing it
    assert os.listdir(tmp_path) == ["weights"]
    loaded = _io.load(tmp_path / "weights")
    assert type(loaded) is lstmc.LSTM
    np.testing.assert_array_equal(loaded.params[1], layer.params[1])


@pytest.mark.skipif(os.name != "posix", reason="POSIX permission bits")
def test_save_keeps_permissions_and_follows_symlinks(tmp_path):
    old_umask = os.umask(0o022)
    try:
        _io.save(tmp_path / "new.npz", _layer())
    finally:
        os.umask(old_umask)
    # Created as open() would (0o666 less the umask), not 0o600 like mkstemp.
    assert (tmp_path / "new.npz").stat().st_mode & 0o777 == 0o644

    os.chmod(tmp_path / "new.npz", 0o640)
    _io.save(tmp_path / "new.npz", _layer(seed=3))
    assert (tmp_path / "new.npz").stat().st_mode & 0o777 == 0o640

    link = tmp_path / "link.npz"
    link.symlink_to(tmp_path / "new.npz")
    layer = _layer(seed=4)
    _io.save(link, layer)
    assert link.is_symlink()
    np.testing.assert_array_equal(_io.load(tmp_path / "new.npz").params[0], layer.params[0])


def test_save_onto_a_directory_fails_and_creates_nothing(tmp_path):
    (tmp_path / "d").mkdir()
    with pytest.raises(IsADirectoryError):
        _io.save(tmp_path / "d", _layer())
    assert os.listdir(tmp_path) == ["d"] and os.listdir(tmp_path / "d") == []


# --------------------------------------------------------------------------- load

def _npy_header(shape, descr="<f8"):
    buf = io.BytesIO()
    np.lib.format.write_array_header_1_0(
        buf, {"descr": descr, "fortran_order": False, "shape": shape})
    return buf.getvalue()


def _archive_with_wx(path, wx_member, compression=zipfile.ZIP_STORED):
    """A valid lstmc file at ``path`` whose 'Wx.npy' member is replaced."""
    _io.save(path, _layer())
    with np.load(path) as npz:
        arrays = dict(npz)
    with zipfile.ZipFile(path, "w", compression) as zf:
        for key, value in arrays.items():
            buf = io.BytesIO()
            np.save(buf, value)
            zf.writestr(key + ".npy", wx_member if key == "Wx" else buf.getvalue())
    return path


@pytest.mark.parametrize("compression", [zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED],
                         ids=["stored", "deflated"])
def test_load_refuses_a_header_claiming_64_tib(tmp_path, compression):
    # (2**22, 2**21) float64 = 64 TiB, in a file of 2 KB.
    member = _npy_header((2 ** 22, 2 ** 21)) + b"\0" * 64
    path = _archive_with_wx(tmp_path / "huge.npz", member, compression)
    assert path.stat().st_size < 4096
    with pytest.raises(ValueError) as info:
        _io.load(path)
    msg = str(info.value)
    assert str(path) in msg and "'Wx'" in msg
    assert "70,368,744,177,664 bytes" in msg  # the claimed size, checked before allocating


def _set_uncompressed_size(data, name, size):
    """Rewrite the zip's local and central 'uncompressed size' of member ``name``."""
    data = bytearray(data)
    encoded = name.encode()
    for sig, offset in ((b"PK\x03\x04", 22), (b"PK\x01\x02", 24)):
        start = 0
        while True:
            k = data.find(sig, start)
            assert k >= 0, (sig, name)
            name_at = k + (30 if sig == b"PK\x03\x04" else 46)
            if data[name_at:name_at + len(encoded)] == encoded:
                data[k + offset:k + offset + 4] = size.to_bytes(4, "little")
                break
            start = k + 4
    return bytes(data)


def test_load_does_not_trust_the_zip_size_of_a_member(tmp_path):
    # The zip directory says Wx.npy is ~4 GiB, but its 200 stored bytes cannot
    # hold the 3 GiB its header claims.
    member = _npy_header((3 * 2 ** 27,)) + b"\0" * 64
    path = _archive_with_wx(tmp_path / "lies.npz", member)
    path.write_bytes(_set_uncompressed_size(path.read_bytes(), "Wx.npy", 2 ** 32 - 16))
    with pytest.raises(ValueError) as info:
        _io.load(path)
    msg = str(info.value)
    assert str(path) in msg and "'Wx'" in msg and "3,221,225,472 bytes" in msg


def test_load_reads_compressed_archives(tmp_path):
    # The size check must not refuse genuine deflated members (np.savez_compressed).
    layer = _layer(np.float32, seed=5)
    Wx, Wh, b = layer.params
    path = tmp_path / "compressed.npz"
    np.savez_compressed(path, format=np.array("lstmc"), version=np.array(1),
                        kind=np.array("TimeLSTM"), stateful=np.array(False), Wx=Wx, Wh=Wh, b=b)
    loaded = _io.load(path)
    for got, want in zip(loaded.params, layer.params):
        np.testing.assert_array_equal(got, want)


# --------------------------------------------------------------------------- convert

@pytest.mark.parametrize("bad", [[1, 2], None, 3, "weight_ih_l0", (np.zeros((8, 3)),)],
                         ids=["list", "None", "int", "str", "tuple"])
def test_state_dict_must_be_a_mapping(bad):
    got = type(bad).__name__
    with pytest.raises(TypeError, match=r"^state_dict must be a mapping.*got " + got):
        convert.from_torch_state_dict(bad)


def test_state_dict_any_mapping_works():
    sd = types.MappingProxyType({"weight_ih_l0": np.ones((8, 3)), "weight_hh_l0": np.ones((8, 2)),
                                 "bias_ih_l0": np.ones(8), "bias_hh_l0": np.ones(8)})
    Wx, Wh, b = convert.from_torch_state_dict(sd)
    assert Wx.shape == (3, 8) and Wh.shape == (2, 8)
    np.testing.assert_array_equal(b, np.full(8, 2.0))


def test_convert_ragged_list_is_a_value_error_naming_the_argument():
    with pytest.raises(ValueError, match=r"^weight_hh could not be converted") as info:
        convert.from_torch(np.zeros((8, 3)), [[0.0, 1.0]] * 7 + [[0.0]])
    assert isinstance(info.value.__cause__, ValueError)


def test_convert_torch_tensors_requiring_grad_or_bfloat16():
    torch = require("torch")
    w_ih = torch.ones(8, 3, dtype=torch.float64, requires_grad=True)
    w_hh = torch.ones(8, 2, dtype=torch.float64, requires_grad=True)
    Wx, Wh, b = convert.from_torch(w_ih, w_hh)  # detached, as the docs say
    assert Wx.dtype == np.float64 and Wx.shape == (3, 8)
    np.testing.assert_array_equal(Wh, np.ones((2, 8)))
    with pytest.raises(TypeError, match=r"^weight_hh could not be converted.*BFloat16"):
        convert.from_torch(np.zeros((8, 3)), torch.zeros(8, 2, dtype=torch.bfloat16))


# --------------------------------------------------------------------------- layer arguments

RAGGED_ROWS = [[0.0] * D, [0.0] * (D - 1)]       # 2 rows of different lengths
RAGGED_H = [[0.0] * H, [0.0] * (H - 1)]


def _cell_calls():
    z = lambda *s: np.zeros(s)  # noqa: E731
    return {
        "x": lambda c: c.forward(RAGGED_ROWS, z(2, H), z(2, H)),
        "h_prev": lambda c: c.forward(z(2, D), RAGGED_H, z(2, H)),
        "c_prev": lambda c: c.forward(z(2, D), z(2, H), RAGGED_H),
        "dh_next": lambda c: (c.forward(z(2, D), z(2, H), z(2, H)),
                              c.backward(RAGGED_H, z(2, H))),
        "dc_next": lambda c: (c.forward(z(2, D), z(2, H), z(2, H)),
                              c.backward(z(2, H), RAGGED_H)),
    }


def _time_calls():
    z = lambda *s: np.zeros(s)  # noqa: E731
    return {
        "xs": lambda t: t.forward([[[0.0] * D], [[0.0] * (D - 1)]]),
        "dhs": lambda t: (t.forward(z(2, 1, D)), t.backward([[[0.0] * H], [[0.0] * (H - 1)]])),
        "h": lambda t: t.set_state(RAGGED_H),
        "c": lambda t: t.set_state(np.zeros((2, H)), RAGGED_H),
    }


@pytest.mark.parametrize("name", list(_cell_calls()) + list(_time_calls()))
def test_ragged_list_names_the_argument(name):
    calls = {**_cell_calls(), **_time_calls()}
    layer = _layer(kind=lstmc.LSTM if name in _cell_calls() else lstmc.TimeLSTM)
    if name in ("h", "c"):  # set_state is for stateful layers
        layer = lstmc.TimeLSTM(*layer.params, stateful=True)
    with pytest.raises(ValueError) as info:
        calls[name](layer)
    assert str(info.value).startswith(name + " could not be converted to a NumPy array")
    assert "inhomogeneous" in str(info.value)  # NumPy's reason is kept
    assert isinstance(info.value.__cause__, ValueError)


@pytest.mark.parametrize("what", ["requires_grad", "bfloat16"])
def test_torch_tensor_that_numpy_refuses_names_the_argument(what):
    torch = require("torch")

    def tensor(*shape):
        if what == "requires_grad":
            return torch.zeros(*shape, dtype=torch.float64, requires_grad=True)
        return torch.zeros(*shape, dtype=torch.bfloat16)

    cause = RuntimeError if what == "requires_grad" else TypeError
    cell = _layer(kind=lstmc.LSTM)
    z = np.zeros((2, H))
    for name, call in [("x", lambda: cell.forward(tensor(2, D), z, z)),
                       ("h_prev", lambda: cell.forward(np.zeros((2, D)), tensor(2, H), z)),
                       ("c_prev", lambda: cell.forward(np.zeros((2, D)), z, tensor(2, H))),
                       ("xs", lambda: _layer().forward(tensor(2, 3, D)))]:
        with pytest.raises(TypeError) as info:
            call()
        assert str(info.value).startswith(name + " could not be converted"), str(info.value)
        assert isinstance(info.value.__cause__, cause)
    # A detached float64 tensor is an ordinary array-like.
    h, c = cell.forward(torch.zeros(2, D, dtype=torch.float64), z, z)
    assert h.shape == (2, H)


# --------------------------------------------------------------------------- check, bench

@pytest.mark.parametrize("args, word", [
    (["--seed", "-1"], "--seed"),
    (["--seed", "1.5"], "--seed"),
    (["--seed"], "--seed"),
    (["--verbose=yes"], "--verbose"),
], ids=["negative seed", "float seed", "seed without value", "verbose with value"])
def test_check_bad_argument_is_one_line_exit_2(tmp_path, args, word):
    assert_usage_error(run(["check", *args], tmp_path, timeout=120), word)


def test_check_seed_zero_is_accepted(tmp_path):
    r = run(["check", "--seed", "0"], tmp_path)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "all 8 checks passed" in r.stdout


@pytest.mark.parametrize("where", ["missing dir", "a directory", "empty"])
def test_bench_json_path_checked_before_the_benchmark(tmp_path, where):
    path = {"missing dir": str(tmp_path / "no" / "such" / "dir" / "b.json"),
            "a directory": str(tmp_path),
            "empty": ""}[where]
    start = time.perf_counter()
    r = run(["bench", "--quick", "--section", "cell", "--json", path], tmp_path, timeout=120)
    assert_usage_error(r, "--json")
    assert time.perf_counter() - start < 60  # refused up front, not after a benchmark
    assert sorted(os.listdir(tmp_path)) == []


# --------------------------------------------------------------------------- the demo

def test_demo_huge_hidden_is_one_line_exit_2(tmp_path):
    r = run(["--hidden", "1000000", "--steps", "1"], tmp_path, timeout=120)
    assert_usage_error(r, "--hidden 1000000", "memory")


def test_demo_memory_estimate():
    from lstmc.charlm.config import Config, UsageError
    from lstmc.charlm.training import check_memory

    check_memory(Config(hidden=128), 100, available=2 ** 30)  # about 2 MB: fits
    with pytest.raises(UsageError, match=r"--hidden 4096 .*more than the 1\.0 GiB"):
        # Wh alone is 4096 * 16384 float32 = 256 MiB, times 4 with grads and Adam.
        check_memory(Config(hidden=4096), 100, available=2 ** 30)


def test_demo_memory_error_is_one_line(monkeypatch, capsys):
    from lstmc.charlm import cli, training

    def out_of_memory(*args, **kwargs):
        raise MemoryError("Unable to allocate 29.1 TiB for an array")

    monkeypatch.setattr(training, "CharLM", out_of_memory)
    assert cli.main(["--steps", "1", "--hidden", "8"], prog="lstmc") == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("lstmc: error: out of memory")
    assert "29.1 TiB" in err[0]


def test_demo_saves_before_sampling(tmp_path, monkeypatch, capsys):
    from lstmc.charlm import cli, training

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt  # Ctrl-C while sampling

    monkeypatch.setattr(training, "sample", interrupted)
    path = tmp_path / "w.npz"
    code = cli.main(["--steps", "2", "--hidden", "8", "--length", "5", "--save", str(path)],
                    prog="lstmc")
    assert code == 130
    out = capsys.readouterr().out
    assert "saved" in out and str(path) in out
    layer = lstmc.load(path)
    assert isinstance(layer, lstmc.TimeLSTM) and layer.params[1].shape == (8, 32)


def _tiny_model():
    from lstmc.charlm.model import CharLM

    return CharLM(12, 6, 8, np.float64, np.random.default_rng(3),
                  log_prior=np.log(np.full(12, 1 / 12)))


@pytest.mark.parametrize("scale, temperature", [(1.0, 1e-320), (1e9, 1e-300)],
                         ids=["subnormal temperature", "large logits"])
def test_tiny_temperature_samples_the_most_likely_character(scale, temperature):
    # logits / temperature overflowed to inf (a subnormal temperature, or logits
    # above ~2e8 at 1e-300), and inf - inf gave NaN probabilities.
    model = _tiny_model()
    model.affine.params[0] *= scale
    with np.errstate(all="raise"):  # no overflow, no inf - inf
        tiny = model.generate([1, 2, 3], 40, temperature, np.random.default_rng(0))
    # At 1e-9 the sample is already the argmax (the logit gaps are far above
    # 1e-7), whatever the random numbers.
    greedy = model.generate([1, 2, 3], 40, 1e-9, np.random.default_rng(1))
    assert len(tiny) == 40 and tiny == greedy
    huge = model.generate([1, 2, 3], 40, 1e300, np.random.default_rng(0))
    assert len(huge) == 40 and all(0 <= k < 12 for k in huge)


def _sample_text(stdout):
    """The raw sample lines of a demo run (title excluded)."""
    lines = stdout.split("\n")
    start = next(i for i, line in enumerate(lines) if line.startswith("sample ("))
    return [line for line in lines[start + 1:] if line.startswith("  | ")]


def test_demo_tiny_temperature_prints_the_greedy_sample(tmp_path):
    # Same seed and steps, so the same model: at 1e-320 and at 1e-9 both samples
    # are the argmax at each step, hence equal (inf / inf gave NaN probabilities,
    # a RuntimeWarning and a sample of the last character of the vocabulary).
    common = ["--steps", "3", "--hidden", "8", "--length", "40", "--seed", "5"]
    tiny = run(common + ["--temperature", "1e-320"], tmp_path)
    small = run(common + ["--temperature", "1e-9"], tmp_path)
    for r in (tiny, small):
        assert r.returncode == 0, r.stderr
        assert "Warning" not in r.stderr
    assert _sample_text(tiny.stdout) == _sample_text(small.stdout)
