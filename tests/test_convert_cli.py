"""``python -m lstmc convert SRC DST``: the round trip a user makes with a
model trained in PyTorch -- ``torch.save(lstm.state_dict())`` (.pt) -> lstmc
weights (.npz) -> ONNX (.onnx) run under onnxruntime with ``sequence_lens`` --
against torch's ``pack_padded_sequence`` output and the StackedLSTM's own
forward; the way back (.onnx -> .npz) gives the same weights; state_dicts of
whole models; every error is one line on stderr with exit code 2 (usage) or 1
(a file that cannot be converted), no traceback, and leaves DST as it was.

The round trips run ``python -m lstmc`` in subprocesses (from the tests
folder, on the installed lstmc: subproc.child_env); the error cases call the
command's main() in this process (faster; the same code path after dispatch).
"""
import os
import subprocess
import sys
import warnings

import numpy as np
import pytest

import lstmc
from lstmc.__main__ import main
from optional import require
from reference import assert_close
from subproc import TESTS, child_env

PROG = "python -m lstmc"
D, H, N, T = 3, 5, 6, 7


@pytest.fixture(scope="module")
def torch():
    return require("torch")


def run(*args, timeout=300):
    """``python -m lstmc *args`` in a subprocess."""
    return subprocess.run([sys.executable, "-m", "lstmc", *map(str, args)], cwd=TESTS,
                          env=child_env({"PYTHONIOENCODING": "utf-8"}), capture_output=True,
                          text=True, encoding="utf-8", timeout=timeout)


def convert(capsys, *args):
    """``main(["convert", *args])`` in this process: (exit code, stdout, stderr).
    No warning may escape (it would be a second line on stderr)."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            code = main(["convert", *map(str, args)], prog=PROG)
        except SystemExit as exc:          # argparse: --help, usage errors
            code = exc.code
    out, err = capsys.readouterr()
    assert [str(w.message) for w in caught] == []
    return code, out, err


def assert_error(result, code, *words):
    """Exit code `code`, one line on stderr naming `words`, no traceback, no stdout."""
    got, out, err = result
    assert got == code, (got, out, err)
    assert "Traceback" not in err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith(PROG + " convert: error: "), lines[0]
    for word in words:
        assert word in lines[0], (word, lines[0])
    assert out == ""


def _padded(torch, net, xs, lengths, batch_first, h0=None, c0=None):
    """torch's answer for a padded batch: out (N, T, H·dirs), h_n, c_n (NumPy)."""
    from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence
    x = torch.from_numpy(xs if batch_first else np.ascontiguousarray(xs.transpose(1, 0, 2)))
    state = None if h0 is None else (torch.from_numpy(h0), torch.from_numpy(c0))
    with torch.no_grad():
        packed = pack_padded_sequence(x, torch.from_numpy(lengths), batch_first=batch_first,
                                      enforce_sorted=False)
        out, (h_n, c_n) = net(packed, state)
        out, _ = pad_packed_sequence(out, batch_first=True, total_length=xs.shape[1])
    return out.numpy(), h_n.numpy(), c_n.numpy()


def _weights_of(path):
    """The arrays of the StackedLSTM in an .npz, in order."""
    model = lstmc.load(path)
    out = []
    for entry in model.weights():
        for triple in (entry if model.bidirectional else (entry,)):
            out.extend(np.array(a) for a in triple)
    return model, out


# --------------------------------------------------------------------------
# The round trip .pt -> .npz -> .onnx -> onnxruntime (and .onnx -> .npz)
# --------------------------------------------------------------------------

CASES = [(1, False, True), (2, True, True), (3, False, False), (2, True, False)]


@pytest.mark.parametrize("num_layers, bidirectional, batch_first", CASES,
                         ids=["L%d-%s-%s" % (k, "bi" if b else "uni", "bf" if f else "tm")
                              for k, b, f in CASES])
def test_round_trip_pt_npz_onnx_onnxruntime(torch, tmp_path, num_layers, bidirectional,
                                           batch_first):
    ort = require("onnxruntime")
    require("onnx")
    torch.manual_seed(num_layers + 10 * bidirectional)
    net = torch.nn.LSTM(D, H, num_layers=num_layers, bidirectional=bidirectional,
                        batch_first=batch_first)
    pt, npz, onnx_path, back = (tmp_path / n for n in ("m.pt", "m.npz", "m.onnx", "back.npz"))
    torch.save(net.state_dict(), pt)

    r = run("convert", pt, npz)
    assert r.returncode == 0, r.stderr
    dirs = 2 if bidirectional else 1
    assert r.stdout.strip() == (
        "wrote %s: StackedLSTM, %d layer%s, %s, D=%d, H=%d, float32"
        % (npz, num_layers, "" if num_layers == 1 else "s",
           "bidirectional" if bidirectional else "one direction", D, H))
    assert r.stderr == ""

    rng = np.random.default_rng(num_layers)
    xs = rng.standard_normal((N, T, D)).astype(np.float32)
    lengths = np.array([T, 1, 4, T - 1, 2, 5])              # unsorted, 1 and T
    h0, c0 = (rng.standard_normal((num_layers * dirs, N, H)).astype(np.float32)
              for _ in "hc")
    want, h_n, c_n = _padded(torch, net, xs, lengths, batch_first, h0, c0)

    # The .npz: a StackedLSTM computing torch's function.
    model = lstmc.load(npz)
    assert isinstance(model, lstmc.StackedLSTM)
    assert (model.num_layers, model.bidirectional) == (num_layers, bidirectional)
    hs = model.forward(xs, lengths=lengths, h0=h0, c0=c0, train=False)
    assert_close(hs, want, np.float32)
    assert_close(model.h, h_n, np.float32)
    assert_close(model.c, c_n, np.float32)

    # The .onnx, run by onnxruntime with sequence_lens and initial states.
    r = run("convert", npz, onnx_path)
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("wrote %s: StackedLSTM" % onnx_path)
    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    assert {i.name for i in session.get_inputs()} == \
        {"X", "sequence_lens", "initial_h", "initial_c"}
    Y, Y_h, Y_c = session.run(["Y", "Y_h", "Y_c"], {
        "X": xs, "sequence_lens": lengths.astype(np.int32), "initial_h": h0, "initial_c": c0})
    assert_close(Y, want, np.float32)
    assert_close(Y_h, h_n, np.float32)
    assert_close(Y_c, c_n, np.float32)
    assert_close(Y, hs, np.float32)

    # And back: .onnx -> .npz holds the very same weights.
    r = run("convert", onnx_path, back)
    assert r.returncode == 0, r.stderr
    m1, w1 = _weights_of(npz)
    m2, w2 = _weights_of(back)
    assert (m2.num_layers, m2.bidirectional, m2.dtype) == (m1.num_layers, m1.bidirectional,
                                                          m1.dtype)
    assert len(w1) == len(w2) == 3 * num_layers * dirs
    for a, b in zip(w1, w2):
        np.testing.assert_array_equal(a, b)


def test_single_layer_npz_converts_to_onnx(tmp_path, capsys):
    # A file saved from one TimeLSTM (as before stacks existed) is a one-layer stack.
    ort = require("onnxruntime")
    require("onnx")
    rng = np.random.default_rng(3)
    layer = lstmc.TimeLSTM(*(rng.standard_normal(s).astype(np.float32) * 0.5
                             for s in ((D, 4 * H), (H, 4 * H), (4 * H,))))
    src, dst = tmp_path / "layer.npz", tmp_path / "layer.onnx"
    lstmc.save(src, layer)
    code, out, err = convert(capsys, src, dst)
    assert code == 0, err
    assert "1 layer, one direction" in out
    xs = rng.standard_normal((N, T, D)).astype(np.float32)
    want = layer.forward(xs, train=False)
    session = ort.InferenceSession(str(dst), providers=["CPUExecutionProvider"])
    zeros = np.zeros((1, N, H), np.float32)
    (Y,) = session.run(["Y"], {"X": xs, "sequence_lens": np.full(N, T, np.int32),
                               "initial_h": zeros, "initial_c": zeros})
    assert_close(Y, want, np.float32)


# --------------------------------------------------------------------------
# state_dicts of whole models
# --------------------------------------------------------------------------

def test_state_dict_of_a_model_holding_an_lstm(torch, tmp_path, capsys):
    class Tagger(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.rnn = torch.nn.LSTM(D, H, num_layers=2, batch_first=True)
            self.fc = torch.nn.Linear(H, 2)

    net = Tagger()
    src, dst = tmp_path / "tagger.pth", tmp_path / "tagger.npz"
    torch.save(net.state_dict(), src)
    code, out, err = convert(capsys, src, dst)
    assert code == 0, err
    xs = np.random.default_rng(4).standard_normal((N, T, D)).astype(np.float32)
    with torch.no_grad():
        want, _ = net.rnn(torch.from_numpy(xs))
    assert_close(lstmc.load(dst).forward(xs, train=False), want.numpy(), np.float32)


def test_state_dict_with_two_lstms_needs_prefix(torch, tmp_path, capsys):
    enc = torch.nn.LSTM(D, H)
    dec = torch.nn.LSTM(H, H, bidirectional=True)
    state = {**{"enc." + k: v for k, v in enc.state_dict().items()},
             **{"dec." + k: v for k, v in dec.state_dict().items()}}
    src, dst = tmp_path / "seq2seq.pt", tmp_path / "dec.npz"
    torch.save(state, src)
    assert_error(convert(capsys, src, dst), 2, "several LSTMs", "'dec.'", "'enc.'", "--prefix")
    assert not dst.exists()
    code, out, err = convert(capsys, src, dst, "--prefix", "dec.")
    assert code == 0, err
    model = lstmc.load(dst)
    assert model.bidirectional and model.input_size == H
    assert_error(convert(capsys, src, dst, "--prefix", "nope."), 2, "'nope.weight_ih_l0'")


# --------------------------------------------------------------------------
# Errors: one line, the documented exit code, DST untouched
# --------------------------------------------------------------------------

@pytest.fixture
def pt(torch, tmp_path):
    """A valid .pt state_dict of a one-layer LSTM."""
    path = tmp_path / "ok.pt"
    torch.save(torch.nn.LSTM(D, H).state_dict(), path)
    return path


def test_help(capsys):
    code, out, err = convert(capsys, "--help")
    assert code == 0 and err == ""
    for word in (".pt", ".pth", ".onnx", ".npz", "SRC", "DST", "--prefix", "sequence_lens"):
        assert word in out, word


def test_help_and_usage_error_through_python_m_lstmc():
    r = run("convert", "--help")
    assert r.returncode == 0 and "usage: %s convert" % PROG in r.stdout, r.stderr
    r = run("convert", "only-one.pt")
    assert r.returncode == 2 and r.stdout == ""
    assert r.stderr.strip().splitlines() == [
        "%s convert: error: the following arguments are required: DST (see %s convert --help)"
        % (PROG, PROG)]


@pytest.mark.parametrize("src, dst, words", [
    ("model.txt", "m.npz", ["SRC", "unknown extension '.txt'", ".npz, .onnx, .pt, .pth"]),
    ("model", "m.npz", ["SRC", "unknown extension '(none)'"]),
    ("PT", "m.h5", ["DST", "unknown extension '.h5'", ".npz, .onnx"]),
    ("absent.pt", "m.npz", ["SRC", "absent.pt", "no such file"]),
    ("DIR", "m.npz", ["SRC", "unknown extension '(none)'"]),
    ("dir.pt", "m.npz", ["SRC", "is a directory"]),
    ("PT", "no/such/dir/m.npz", ["DST", "does not exist"]),
    ("PT", "sub.npz", ["DST", "is a directory"]),
])
def test_usage_errors_exit_2(capsys, tmp_path, pt, src, dst, words):
    (tmp_path / "dir.pt").mkdir()
    (tmp_path / "sub.npz").mkdir()
    src = pt if src == "PT" else tmp_path if src == "DIR" else tmp_path / src
    result = convert(capsys, src, tmp_path / dst)
    assert_error(result, 2, *words)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dir.pt", "ok.pt", "sub.npz"]


def test_argument_errors_exit_2(capsys, tmp_path, pt):
    assert_error(convert(capsys, pt), 2, "required: DST")
    assert_error(convert(capsys, pt, tmp_path / "a.npz", "--bogus"), 2, "--bogus")
    lstmc.save(tmp_path / "a.npz", lstmc.TimeLSTM(np.zeros((D, 4 * H)), np.zeros((H, 4 * H)),
                                                  np.zeros(4 * H)))
    assert_error(convert(capsys, tmp_path / "a.npz", tmp_path / "b.onnx", "--prefix", "x."),
                 2, "--prefix applies to a .pt/.pth SRC only")
    assert not (tmp_path / "b.onnx").exists()


@pytest.mark.parametrize("missing, src, dst", [
    ("onnx", "m.npz", "m.onnx"), ("onnx", "m.onnx", "m.npz"), ("torch", "m.pt", "m.npz")])
def test_missing_framework_exit_2(capsys, monkeypatch, tmp_path, missing, src, dst):
    (tmp_path / src).write_bytes(b"whatever")
    monkeypatch.setitem(sys.modules, missing, None)       # import raises ImportError
    assert_error(convert(capsys, tmp_path / src, tmp_path / dst), 2,
                 "needs %s" % missing, "pip install %s" % missing)
    assert not (tmp_path / dst).exists()


def _assert_fails_keeping_dst(capsys, tmp_path, src, code, *words, dst_name="out.npz"):
    """Convert src over an existing DST: the error, and DST as it was."""
    dst = tmp_path / dst_name
    dst.write_bytes(b"the old file")
    assert_error(convert(capsys, src, dst), code, *words)
    assert dst.read_bytes() == b"the old file"
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []


def test_whole_module_pt_exit_1(torch, capsys, tmp_path):
    src = tmp_path / "module.pt"
    torch.save(torch.nn.LSTM(D, H), src)
    _assert_fails_keeping_dst(capsys, tmp_path, src, 1, "torch.load(weights_only=True)",
                              "state_dict()")


@pytest.mark.parametrize("content, words", [
    ("tensor", ["holds a Tensor, not a state_dict"]),
    ("linear", ["holds no LSTM weights", "weight_ih_l0"]),
    ("proj", ["proj_size"]),
    ("garbage", ["torch.load(weights_only=True)"]),
])
def test_pt_that_is_not_an_lstm_state_dict_exit_1(torch, capsys, tmp_path, content, words):
    src = tmp_path / "bad.pt"
    if content == "tensor":
        torch.save(torch.zeros(3), src)
    elif content == "linear":
        torch.save(torch.nn.Linear(D, H).state_dict(), src)
    elif content == "proj":
        torch.save(torch.nn.LSTM(D, H, proj_size=2).state_dict(), src)
    else:
        src.write_bytes(b"\x80\x04not a pickle at all")
    _assert_fails_keeping_dst(capsys, tmp_path, src, 1, "SRC", *words)


def test_damaged_npz_exit_1(capsys, tmp_path):
    require("onnx")
    src = tmp_path / "bad.npz"
    src.write_bytes(b"PK\x03\x04 truncated")
    _assert_fails_keeping_dst(capsys, tmp_path, src, 1, "not a valid lstmc weights file",
                              dst_name="out.onnx")


def test_onnx_without_an_lstm_exit_1(capsys, tmp_path):
    onnx = require("onnx")
    from onnx import TensorProto, helper
    graph = helper.make_graph(
        [helper.make_node("Identity", ["X"], ["Y"])], "no-lstm",
        [helper.make_tensor_value_info("X", TensorProto.FLOAT, [1])],
        [helper.make_tensor_value_info("Y", TensorProto.FLOAT, [1])])
    src = tmp_path / "identity.onnx"
    onnx.save(helper.make_model(graph), str(src))
    _assert_fails_keeping_dst(capsys, tmp_path, src, 1, "SRC", "LSTM")


def test_onnx_that_is_not_onnx_exit_1(capsys, tmp_path):
    require("onnx")
    src = tmp_path / "noise.onnx"
    src.write_bytes(np.random.default_rng(5).bytes(300))
    _assert_fails_keeping_dst(capsys, tmp_path, src, 1, "SRC", "noise.onnx")


def test_verbose_shows_the_traceback(capsys, tmp_path):
    src = tmp_path / "bad.npz"
    src.write_bytes(b"not a zip")
    with pytest.raises(ValueError, match="not a zip"):
        main(["convert", str(src), str(tmp_path / "out.npz"), "-v"], prog=PROG)


@pytest.mark.parametrize("ext", [".npz", ".onnx"])
def test_existing_dst_is_replaced_keeping_its_permissions(pt, tmp_path, capsys, ext):
    if ext == ".onnx":
        require("onnx")
    dst = tmp_path / ("out" + ext)
    dst.write_bytes(b"the old file")
    os.chmod(dst, 0o640)
    code, out, err = convert(capsys, pt, dst)
    assert code == 0, err
    assert dst.read_bytes() != b"the old file"
    assert os.stat(dst).st_mode & 0o777 == 0o640
    new = tmp_path / ("new" + ext)
    umask = os.umask(0o027)
    try:
        code, out, err = convert(capsys, pt, new)
    finally:
        os.umask(umask)
    assert code == 0, err
    assert os.stat(new).st_mode & 0o777 == 0o640              # 0o666 less the umask
    if ext == ".onnx":                                         # a valid model, read back
        dst, onnx_dst = tmp_path / "back.npz", dst
        assert convert(capsys, onnx_dst, dst)[0] == 0
    model = lstmc.load(dst)
    assert isinstance(model, lstmc.StackedLSTM) and model.input_size == D
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []


def test_failed_onnx_write_leaves_dst_and_no_temporary(pt, tmp_path, capsys, monkeypatch):
    require("onnx")

    import lstmc._io

    def disk_full(fd):                  # the model is written, the flush to disk fails
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(lstmc._io.os, "fsync", disk_full)
    _assert_fails_keeping_dst(capsys, tmp_path, pt, 1, "cannot write DST", "No space left",
                              dst_name="out.onnx")


def test_float64_npz_to_onnx_runs_under_onnxruntime(tmp_path, capsys):
    """onnxruntime's LSTM runs float32 only: a float64 model is written as float32
    unless --onnx-dtype float64 is asked for."""
    ort = require("onnxruntime")
    onnx = require("onnx")
    rng = np.random.default_rng(4)
    model = lstmc.StackedLSTM([tuple(tuple(rng.standard_normal(s) * 0.5 for s in
                                           ((D, 4 * H), (H, 4 * H), (4 * H,)))
                                     for _ in range(2))])
    src, dst = tmp_path / "m.npz", tmp_path / "m.onnx"
    lstmc.save(src, model)
    code, out, err = convert(capsys, src, dst)
    assert code == 0, err
    xs = rng.standard_normal((N, T, D))
    lengths = rng.integers(0, T + 1, N)
    want = model.forward(xs, lengths=lengths, train=False)
    session = ort.InferenceSession(str(dst), providers=["CPUExecutionProvider"])
    zeros = np.zeros((2, N, H), np.float32)
    (Y,) = session.run(["Y"], {"X": xs.astype(np.float32), "sequence_lens":
                               lengths.astype(np.int32), "initial_h": zeros, "initial_c": zeros})
    np.testing.assert_allclose(Y, want, atol=1e-5)
    code, out, err = convert(capsys, src, dst, "--onnx-dtype", "float64")
    assert code == 0, err
    elem = onnx.load(str(dst)).graph.input[0].type.tensor_type.elem_type
    assert elem == onnx.TensorProto.DOUBLE


def test_reverse_timelstm_npz_is_refused(tmp_path, capsys):
    rng = np.random.default_rng(5)
    layer = lstmc.TimeLSTM(*(rng.standard_normal(s) for s in ((D, 4 * H), (H, 4 * H), (4 * H,))),
                           reverse=True)
    lstmc.save(tmp_path / "r.npz", layer)
    assert_error(convert(capsys, tmp_path / "r.npz", tmp_path / "r.onnx"), 1, "reverse=True")
    assert not (tmp_path / "r.onnx").exists()
