"""lstmc.save / lstmc.load of a StackedLSTM: round trips for both dtypes, one
or both directions and 1-3 layers, the file's keys (no pickle), damaged and
inconsistent files refused with a message saying what is wrong, and files of
single layers (as written before stacks existed) still loading."""

import io
import pickle

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

import lstmc
from lstmc import _io
from reference import random_weights, rewrite_archive, rewrite_member

DTYPES = [np.float32, np.float64]
D, H = 3, 4


def _entries(rng, num_layers, bidirectional, dtype, D=D, H=H):
    """The constructor list of a stack: layer 0 reads D, the others H·dirs."""
    dirs = 2 if bidirectional else 1
    layers = []
    for k in range(num_layers):
        width = D if k == 0 else dirs * H
        triples = [random_weights(rng, width, H, dtype) for _ in range(dirs)]
        layers.append(tuple(triples) if bidirectional else triples[0])
    return layers


def _stack(num_layers=2, bidirectional=True, dtype=np.float64, seed=0):
    return lstmc.StackedLSTM(_entries(np.random.default_rng(seed), num_layers,
                                      bidirectional, dtype))


def _flat(weights):
    """The arrays of a weights() list, in order."""
    out = []
    for entry in weights:
        for triple in (entry if isinstance(entry[0], (tuple, list)) else (entry,)):
            out.extend(triple)
    return out


def _keys(num_layers, bidirectional):
    keys = ["format", "version", "kind", "num_layers", "bidirectional"]
    for k in range(num_layers):
        for suffix in ("", "_reverse") if bidirectional else ("",):
            keys += [f"Wx_l{k}{suffix}", f"Wh_l{k}{suffix}", f"b_l{k}{suffix}"]
    return keys


@pytest.fixture
def saved(tmp_path):
    """Path of a file written by save(): a float64 2-layer bidirectional stack."""
    path = tmp_path / "stack.npz"
    _io.save(path, _stack())
    return path


# --------------------------------------------------------------------------
# Round trips
# --------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("bidirectional", [False, True], ids=["uni", "bi"])
@pytest.mark.parametrize("num_layers", [1, 2, 3])
def test_round_trip_gives_the_same_stack(tmp_path, dtype, bidirectional, num_layers):
    model = _stack(num_layers, bidirectional, dtype, seed=num_layers)
    path = tmp_path / "stack.npz"
    _io.save(path, model)
    loaded = _io.load(path)

    assert type(loaded) is lstmc.StackedLSTM
    assert loaded.num_layers == num_layers
    assert loaded.bidirectional is bidirectional
    assert loaded.dtype == dtype
    assert (loaded.input_size, loaded.hidden_size) == (D, H)
    want, got = _flat(model.weights()), _flat(loaded.weights())
    assert len(got) == len(want) == 3 * num_layers * (2 if bidirectional else 1)
    for a, b in zip(got, want):
        assert a.dtype == b.dtype and a.shape == b.shape
        np.testing.assert_array_equal(a, b)
        assert not np.shares_memory(a, b)
    # The same weights in the same places: the same outputs and final states,
    # with lengths (0 and T among them) and an initial state.
    rng = np.random.default_rng(1)
    N, T = 4, 5
    xs = rng.standard_normal((N, T, D)).astype(dtype)
    lengths = np.array([5, 0, 2, 3])
    dirs = 2 if bidirectional else 1
    h0 = rng.standard_normal((num_layers * dirs, N, H)).astype(dtype)
    np.testing.assert_array_equal(
        loaded.forward(xs, lengths=lengths, h0=h0, train=False),
        model.forward(xs, lengths=lengths, h0=h0, train=False))
    np.testing.assert_array_equal(loaded.h, model.h)
    np.testing.assert_array_equal(loaded.c, model.c)


@given(num_layers=st.integers(1, 3), bidirectional=st.booleans(),
       dtype=st.sampled_from(DTYPES), width=st.integers(1, 6), hidden=st.integers(1, 5),
       seed=st.integers(0, 2**16))
@settings(max_examples=25, deadline=None)
def test_round_trip_any_sizes(num_layers, bidirectional, dtype, width, hidden, seed):
    model = lstmc.StackedLSTM(_entries(np.random.default_rng(seed), num_layers,
                                       bidirectional, dtype, D=width, H=hidden))
    buf = io.BytesIO()
    _io.save(buf, model)
    buf.seek(0)
    loaded = _io.load(buf)
    assert (loaded.num_layers, loaded.bidirectional, loaded.dtype) == \
        (num_layers, bidirectional, np.dtype(dtype))
    assert len(_flat(loaded.weights())) == 3 * num_layers * (1 + bidirectional)
    for a, b in zip(_flat(loaded.weights()), _flat(model.weights())):
        assert a.dtype == b.dtype
        np.testing.assert_array_equal(a, b)


def test_file_needs_no_pickle_and_holds_the_documented_keys(saved):
    model = _stack()
    with np.load(saved, allow_pickle=False) as npz:
        assert sorted(npz.files) == sorted(_keys(2, True))
        assert npz["format"].item() == "lstmc"
        assert npz["version"].item() == 1
        assert npz["kind"].item() == "StackedLSTM"
        assert npz["num_layers"].item() == 2
        assert npz["bidirectional"].item() is True
        assert all(npz[k].dtype != object for k in npz.files)
        # torch's order of h_n: layer 0 forward, layer 0 reverse, layer 1 ...
        (f0, r0), (f1, r1) = model.weights()
        np.testing.assert_array_equal(npz["Wx_l0"], f0[0])
        np.testing.assert_array_equal(npz["Wh_l0_reverse"], r0[1])
        np.testing.assert_array_equal(npz["b_l1"], f1[2])
        np.testing.assert_array_equal(npz["Wx_l1_reverse"], r1[0])
        assert npz["Wx_l1"].shape == (2 * H, 4 * H)


def test_file_object_and_path_types(tmp_path):
    model = _stack(1, False, np.float32)
    buf = io.BytesIO()
    _io.save(buf, model)
    buf.seek(0)
    assert _io.load(buf).num_layers == 1
    path = tmp_path / "no_suffix"
    _io.save(str(path), model)
    assert [p.name for p in tmp_path.iterdir()] == ["no_suffix"]
    assert isinstance(_io.load(path), lstmc.StackedLSTM)


def test_loaded_stack_pickles(saved):
    loaded = _io.load(saved)
    again = pickle.loads(pickle.dumps(loaded))
    assert len(_flat(again.weights())) == 12
    for a, b in zip(_flat(again.weights()), _flat(loaded.weights())):
        np.testing.assert_array_equal(a, b)


def test_save_rejects_other_objects_and_keeps_the_file(saved):
    before = saved.read_bytes()
    with pytest.raises(TypeError, match=r"lstmc\.StackedLSTM.*got builtins\.list"):
        _io.save(saved, _stack().weights())
    assert saved.read_bytes() == before


def test_save_checks_the_stack_before_writing(saved):
    class Broken(lstmc.StackedLSTM):
        """A stack whose weights() disagree with each other (as if edited)."""

        def weights(self):
            (f0, r0), (f1, r1) = super().weights()
            return [(f0, r0), ((f1[0][:-1], f1[1], f1[2]), r1)]

    before = saved.read_bytes()
    with pytest.raises(ValueError, match=r"cannot save model: Wx_l1 has shape \(7, 16\); "
                                         r"expected \(D, 4\*H\) = \(8, 16\)"):
        _io.save(saved, Broken(_stack().weights()))
    assert saved.read_bytes() == before
    assert [p.name for p in saved.parent.iterdir()] == [saved.name]   # no temporary left


# --------------------------------------------------------------------------
# Single-layer files: the layout written before stacks existed still loads
# --------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("kind, stateful", [("LSTM", False), ("TimeLSTM", True)])
def test_single_layer_file_of_the_first_layout_loads(tmp_path, dtype, kind, stateful):
    Wx, Wh, b = random_weights(np.random.default_rng(3), D, H, dtype)
    path = tmp_path / "old.npz"
    # Exactly what lstmc.save wrote for a layer before StackedLSTM: seven
    # members, version 1.
    np.savez(path, format=np.array("lstmc"), version=np.array(1, dtype=np.int64),
             kind=np.array(kind), stateful=np.array(stateful), Wx=Wx, Wh=Wh, b=b)
    loaded = _io.load(path)
    assert type(loaded) is getattr(lstmc, kind)
    assert len(loaded.params) == 3
    assert getattr(loaded, "stateful", False) is stateful
    for got, want in zip(loaded.params, (Wx, Wh, b)):
        assert got.dtype == dtype
        np.testing.assert_array_equal(got, want)


def test_single_layer_files_keep_their_layout(tmp_path):
    # An older lstmc, which knows no StackedLSTM, must still read a layer's file.
    path = tmp_path / "layer.npz"
    _io.save(path, lstmc.TimeLSTM(*random_weights(np.random.default_rng(4), D, H)))
    with np.load(path, allow_pickle=False) as npz:
        assert sorted(npz.files) == sorted(
            ["format", "version", "kind", "stateful", "Wx", "Wh", "b"])
        assert npz["version"].item() == 1


# --------------------------------------------------------------------------
# Damaged, foreign or inconsistent stack files: ValueError saying what is wrong
# --------------------------------------------------------------------------

@pytest.mark.parametrize("cut", [10, 0.5, -30])
def test_truncated_stack_file(saved, cut):
    data = saved.read_bytes()
    n = int(len(data) * cut) if isinstance(cut, float) else cut
    saved.write_bytes(data[:n])
    with pytest.raises(ValueError, match="not a valid lstmc weights file"):
        _io.load(saved)


F64 = np.float64
BAD = [
    (dict(Wh_l1=None), r"missing keys \['Wh_l1'\]"),
    (dict(b_l0_reverse=None), r"missing keys \['b_l0_reverse'\]"),
    (dict(Wx_l2=np.zeros((8, 16))), r"unexpected keys \['Wx_l2'\]"),
    (dict(num_layers=None), r"missing keys \['num_layers'\]"),
    (dict(bidirectional=None), r"missing keys \['bidirectional'\]"),
    (dict(num_layers=np.array(1)),
     r"unexpected keys \['Wh_l1', 'Wh_l1_reverse', 'Wx_l1', 'Wx_l1_reverse', "
     r"'b_l1', 'b_l1_reverse'\]"),
    (dict(num_layers=np.array(3)), r"missing keys \['Wx_l2', 'Wh_l2', 'b_l2'"),
    (dict(num_layers=np.array(0)), r"'num_layers' is 0, expected >= 1"),
    (dict(num_layers=np.array(-1)), r"'num_layers' is -1, expected >= 1"),
    (dict(num_layers=np.array(10**12)), r"'num_layers' is 1000000000000, but the archive "
                                        r"holds only 17 arrays"),
    (dict(num_layers=np.array(2.0)), r"'num_layers' must be a 0-d array of kind 'iu'"),
    (dict(num_layers=np.array([2])), r"'num_layers' must be a 0-d array"),
    (dict(bidirectional=np.array(1)), r"'bidirectional' must be a 0-d array of kind 'b'"),
    (dict(bidirectional=np.array(False)), r"unexpected keys \['Wh_l0_reverse'"),
    (dict(kind=np.array("TimeLSTM")), r"missing keys \['stateful', 'Wx', 'Wh', 'b'\]"),
    (dict(kind=np.array("GRU")), r"'kind' is 'GRU', expected one of \['LSTM', 'TimeLSTM', "
                                  r"'StackedLSTM'\]"),
    (dict(version=np.array(2)), r"version 2 is not supported"),
    (dict(format=np.array("other")), r"'format' is 'other'"),
    (dict(Wx_l1=np.zeros((8, 16), np.float32), Wh_l1=np.zeros((4, 16), np.float32),
          b_l1=np.zeros(16, np.float32)),
     r"Wx_l1 has dtype float32; expected float64, the dtype of Wx_l0"),
    (dict(Wx_l0_reverse=np.zeros((3, 16), np.float32), Wh_l0_reverse=np.zeros((4, 16), np.float32),
          b_l0_reverse=np.zeros(16, np.float32)), r"Wx_l0_reverse has dtype float32"),
    (dict(b_l1=np.zeros(16, np.float32)), r"b_l1 has dtype float32.*share one dtype"),
    (dict(Wx_l1=np.zeros((8, 16), np.int64)), r"Wx_l1 has dtype int64"),
    (dict(Wh_l1=np.zeros((5, 16))), r"Wh_l1 must have shape \(H, 4\*H\)"),
    (dict(b_l0=np.zeros(17)), r"b_l0 must have shape \(4\*H,\)"),
    (dict(Wx_l0=np.zeros(16)), r"Wx_l0 must be 2-D"),
    # layer 1 reads layer 0's output: 2H = 8 features
    (dict(Wx_l1=np.zeros((4, 16)), Wx_l1_reverse=np.zeros((4, 16))),
     r"Wx_l1 has shape \(4, 16\); expected \(D, 4\*H\) = \(8, 16\) with D = layer 0's "
     r"output width, 2 \* H"),
    # both directions of layer 0 read the input
    (dict(Wx_l0_reverse=np.zeros((5, 16))),
     r"Wx_l0_reverse has shape \(5, 16\); expected \(D, 4\*H\) = \(3, 16\) with D = the "
     r"input width of Wx_l0"),
    # one H for all layers and directions
    (dict(Wx_l1_reverse=np.zeros((8, 20)), Wh_l1_reverse=np.zeros((5, 20)),
          b_l1_reverse=np.zeros(20)),
     r"Wh_l1_reverse has shape \(5, 20\); expected \(H, 4\*H\) = \(4, 16\).*one H"),
    (dict(Wh_l1=np.array([None] * 3)), r"cannot read 'Wh_l1'.*pickle"),
]


@pytest.mark.parametrize("changes, pattern", BAD, ids=[p for _, p in BAD])
def test_stack_file_with_bad_contents(saved, changes, pattern):
    rewrite_archive(saved, **changes)
    before = saved.read_bytes()
    with pytest.raises(ValueError, match=pattern) as info:
        _io.load(saved)
    assert repr(str(saved)) in str(info.value)            # names the file
    assert saved.read_bytes() == before                   # a read changes nothing


def test_stack_member_that_is_not_an_array(saved):
    rewrite_member(saved, "Wx_l1_reverse", lambda fh: fh.write(b"not an array at all"))
    with pytest.raises(ValueError, match="'Wx_l1_reverse' is not a NumPy array"):
        _io.load(saved)


def test_stack_member_with_a_lying_header(saved):
    # A member whose .npy header claims a huge array: refused before allocation.
    def lying(fh):
        np.lib.format.write_array_header_1_0(
            fh, {"descr": "<f8", "fortran_order": False, "shape": (2**20, 2**20)})
        fh.write(b"\0" * 64)

    rewrite_member(saved, "Wh_l1", lying)
    with pytest.raises(ValueError, match=r"cannot read 'Wh_l1'.*header claims"):
        _io.load(saved)


def test_big_endian_stack_weights_load_as_native(saved):
    with np.load(saved, allow_pickle=False) as npz:
        swapped = {k: npz[k].astype(npz[k].dtype.newbyteorder(">"))
                   for k in npz.files if k.startswith(("Wx_", "Wh_", "b_"))}
    rewrite_archive(saved, **swapped)
    loaded = _io.load(saved)
    got = dict(zip(_keys(2, True)[5:], _flat(loaded.weights())))
    assert len(got) == len(swapped) == 12
    for key, want in swapped.items():
        assert got[key].dtype == np.float64 and got[key].dtype.isnative
        np.testing.assert_array_equal(got[key], want)
