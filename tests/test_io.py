"""lstmc.save / lstmc.load: round trips and damaged files."""

import io
import os
import pathlib

import numpy as np
import pytest

import lstmc
from lstmc import _io
from reference import rewrite_archive, rewrite_member

DTYPES = [np.float64, np.float32]
D, H = 3, 4


def _weights(dtype, seed=0):
    rng = np.random.default_rng(seed)
    return (rng.standard_normal((D, 4 * H)).astype(dtype),
            rng.standard_normal((H, 4 * H)).astype(dtype),
            rng.standard_normal(4 * H).astype(dtype))


def _make(kind, dtype, stateful=False):
    if kind == "LSTM":
        return lstmc.LSTM(*_weights(dtype))
    return lstmc.TimeLSTM(*_weights(dtype), stateful=stateful)


@pytest.fixture
def saved(tmp_path):
    """Path of a valid file written by save() (a float64 TimeLSTM)."""
    path = tmp_path / "layer.npz"
    _io.save(path, _make("TimeLSTM", np.float64, stateful=True))
    return path


def test_exported_at_top_level():
    assert lstmc.save is _io.save
    assert lstmc.load is _io.load


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("kind, stateful", [
    ("LSTM", False), ("TimeLSTM", False), ("TimeLSTM", True)])
def test_round_trip_gives_identical_layer(tmp_path, dtype, kind, stateful):
    layer = _make(kind, dtype, stateful)
    path = tmp_path / "weights.npz"
    _io.save(path, layer)
    loaded = _io.load(path)

    assert type(loaded) is type(layer)
    assert loaded.dtype == dtype
    if kind == "TimeLSTM":
        assert loaded.stateful is stateful
    for got, want in zip(loaded.params, layer.params):
        assert got.dtype == want.dtype and got.shape == want.shape
        np.testing.assert_array_equal(got, want)
        assert not np.shares_memory(got, want)

    rng = np.random.default_rng(1)
    if kind == "LSTM":
        x = rng.standard_normal((2, D)).astype(dtype)
        h0, c0 = (rng.standard_normal((2, H)).astype(dtype) for _ in "hc")
        for a, b in zip(loaded.forward(x, h0, c0), layer.forward(x, h0, c0)):
            np.testing.assert_array_equal(a, b)
        dh, dc = (rng.standard_normal((2, H)).astype(dtype) for _ in "hc")
        for a, b in zip(loaded.backward(dh, dc), layer.backward(dh, dc)):
            np.testing.assert_array_equal(a, b)
    else:
        xs = rng.standard_normal((2, 5, D)).astype(dtype)
        np.testing.assert_array_equal(loaded.forward(xs), layer.forward(xs))
        dhs = rng.standard_normal((2, 5, H)).astype(dtype)
        np.testing.assert_array_equal(loaded.backward(dhs),
                                      layer.backward(dhs))
    for a, b in zip(loaded.grads, layer.grads):
        np.testing.assert_array_equal(a, b)


def test_path_types_and_exact_file_name(tmp_path):
    layer = _make("LSTM", np.float32)
    as_str = str(tmp_path / "no_suffix")  # np.savez would add ".npz"
    _io.save(as_str, layer)
    assert os.listdir(tmp_path) == ["no_suffix"]
    assert isinstance(_io.load(as_str), lstmc.LSTM)
    assert isinstance(_io.load(pathlib.Path(as_str)), lstmc.LSTM)

    buf = io.BytesIO()
    _io.save(buf, layer)
    buf.seek(0)
    np.testing.assert_array_equal(_io.load(buf).params[0], layer.params[0])


def test_file_needs_no_pickle(saved):
    with np.load(saved, allow_pickle=False) as npz:
        assert sorted(npz.files) == sorted(
            ["format", "version", "kind", "stateful", "Wx", "Wh", "b"])
        assert npz["format"].item() == "lstmc"
        assert npz["kind"].item() == "TimeLSTM"
        assert npz["stateful"].item() is True
        assert npz["Wx"].dtype == np.float64
        assert all(npz[k].dtype != object for k in npz.files)


def test_save_rejects_non_layers_and_keeps_existing_file(saved):
    before = saved.read_bytes()
    with pytest.raises(TypeError, match="lstmc.LSTM or lstmc.TimeLSTM"):
        _io.save(saved, object())
    assert saved.read_bytes() == before


def test_missing_file_is_not_a_value_error(tmp_path):
    with pytest.raises(FileNotFoundError):
        _io.load(tmp_path / "absent.npz")


# --------------------------------------------------------------------------
# Damaged or foreign files: ValueError with a message saying what is wrong
# --------------------------------------------------------------------------

@pytest.mark.parametrize("cut", [10, 0.5, -30])
def test_truncated_file(saved, cut):
    data = saved.read_bytes()
    n = int(len(data) * cut) if isinstance(cut, float) else cut
    saved.write_bytes(data[:n])
    with pytest.raises(ValueError, match="not a valid lstmc weights file"):
        _io.load(saved)


def test_random_bytes(tmp_path):
    path = tmp_path / "noise.npz"
    path.write_bytes(np.random.default_rng(2).bytes(500))
    with pytest.raises(ValueError, match="not a zip"):
        _io.load(path)


def test_empty_file(tmp_path):
    path = tmp_path / "empty.npz"
    path.write_bytes(b"")
    with pytest.raises(ValueError, match="empty"):
        _io.load(path)


def test_npy_file(tmp_path):
    path = tmp_path / "array.npz"
    with open(path, "wb") as fh:
        np.save(fh, np.zeros(3))
    with pytest.raises(ValueError, match=r"\.npy"):
        _io.load(path)


def test_npz_with_wrong_keys(tmp_path):
    path = tmp_path / "other.npz"
    np.savez(path, weights=np.zeros((3, 8)), bias=np.zeros(8))
    with pytest.raises(ValueError, match=r"missing keys.*'Wx'") as info:
        _io.load(path)
    assert "weights" in str(info.value)  # what it found


@pytest.mark.parametrize("changes, pattern", [
    (dict(Wh=None), r"missing keys \['Wh'\]"),
    (dict(extra=np.zeros(2)), r"unexpected keys \['extra'\]"),
    (dict(format=np.array("other")), r"'format' is 'other'"),
    (dict(format=np.array([1, 2])), r"'format' must be a 0-d"),
    (dict(version=np.array(2)), r"version 2 is not supported"),
    (dict(kind=np.array("GRU")), r"'kind' is 'GRU'"),
    (dict(stateful=np.array(1)), r"'stateful' must be a 0-d"),
    (dict(kind=np.array("LSTM")), r"'stateful' is True for kind 'LSTM'"),
    (dict(Wx=np.zeros((D, 4 * H), np.int64)), r"Wx has dtype int64"),
    (dict(b=np.zeros(4 * H, np.float32)), r"share one dtype"),
    (dict(Wh=np.zeros((H, 4 * H), np.complex128)), r"Wh has dtype complex"),
    (dict(b=np.zeros((1, 4 * H))), r"b must be 1-D"),
    (dict(Wx=np.zeros(4 * H)), r"Wx must be 2-D"),
    (dict(Wh=np.zeros((H + 1, 4 * H))), r"Wh must have shape \(H, 4\*H\)"),
    (dict(b=np.zeros(4 * H + 4)), r"b must have shape \(4\*H,\)"),
    (dict(Wx=np.zeros((D, 4 * H + 1)), Wh=np.zeros((H, 4 * H + 1)),
          b=np.zeros(4 * H + 1)), r"not divisible by 4"),
    (dict(Wx=np.array([None] * 3)), r"cannot read 'Wx'.*pickle"),
])
def test_npz_with_bad_contents(saved, changes, pattern):
    rewrite_archive(saved, **changes)
    with pytest.raises(ValueError, match=pattern):
        _io.load(saved)


def test_member_that_is_not_an_array(saved):
    rewrite_member(saved, "Wh", lambda fh: fh.write(b"not an array at all"))
    with pytest.raises(ValueError, match="'Wh' is not a NumPy array"):
        _io.load(saved)


def test_big_endian_weights_load_as_native(saved):
    with np.load(saved, allow_pickle=False) as npz:
        swapped = {k: npz[k].astype(npz[k].dtype.newbyteorder(">"))
                   for k in ("Wx", "Wh", "b")}
    rewrite_archive(saved, **swapped)
    loaded = _io.load(saved)
    assert loaded.params[0].dtype == np.float64  # native order
    np.testing.assert_array_equal(loaded.params[0], swapped["Wx"])
