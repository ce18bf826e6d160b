"""Pickle and deepcopy keep weights, gradients and held state, never scratch
buffers, and give layers that work (here and in another process)."""
import copy
import os
import pickle
import subprocess
import sys

import numpy as np
import pytest

import lstmc
from reference import RefTimeLSTM, assert_close, cell_backward, cell_forward


def _weights(rng, D, H, dtype):
    return [(rng.standard_normal(s) * 0.4).astype(dtype) for s in ((D, 4 * H), (H, 4 * H), (4 * H,))]


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_lstm_pickle_roundtrip_keeps_weights_and_grads(dtype):
    rng = np.random.default_rng(0)
    cell = lstmc.LSTM(*_weights(rng, 3, 4, dtype))
    x, h, c = (rng.standard_normal(s).astype(dtype) for s in ((2, 3), (2, 4), (2, 4)))
    cell.forward(x, h, c)
    cell.backward(np.ones((2, 4), dtype), np.ones((2, 4), dtype))
    clone = pickle.loads(pickle.dumps(cell))
    assert clone.dtype == cell.dtype
    for a, b in zip(clone.params + clone.grads, cell.params + cell.grads):
        assert a is not b
        np.testing.assert_array_equal(a, b)
    assert clone.cache is None                   # the cache is scratch, not state
    with pytest.raises(RuntimeError):
        clone.backward(np.ones((2, 4), dtype), np.ones((2, 4), dtype))
    for got, want in zip(clone.forward(x, h, c), cell.forward(x, h, c)):
        np.testing.assert_array_equal(got, want)
    dh, dc = (rng.standard_normal((2, 4)).astype(dtype) for _ in range(2))
    for got, want in zip(clone.backward(dh, dc), cell.backward(dh, dc)):
        np.testing.assert_array_equal(got, want)
    for got, want in zip(clone.grads, cell.grads):
        np.testing.assert_array_equal(got, want)
    # ... and the original is right (the NumPy reference): the clone copies it.
    h1, c1, cache = cell_forward(x, h, c, *cell.params)
    want = cell_backward(dh, dc, cache, *cell.params[:2])
    for got, w in zip(list(clone.forward(x, h, c)) + list(clone.backward(dh, dc)) + clone.grads,
                      [h1, c1, *want]):
        assert_close(got, w, dtype)
    # The pickle holds no scratch buffers: its size is the weights' and grads' size.
    nbytes = sum(a.nbytes for a in cell.params + cell.grads)
    assert len(pickle.dumps(cell)) < nbytes + 2000


def test_clone_shares_nothing_with_original():
    rng = np.random.default_rng(1)
    cell = lstmc.LSTM(*_weights(rng, 3, 4, np.float64))
    clone = copy.deepcopy(cell)
    clone.params[0][...] = 0
    assert np.any(cell.params[0] != 0)
    x, h, c = (rng.standard_normal(s) for s in ((2, 3), (2, 4), (2, 4)))
    assert not np.array_equal(clone.forward(x, h, c)[0], cell.forward(x, h, c)[0])


@pytest.mark.parametrize("stateful", [False, True])
def test_timelstm_pickle_and_deepcopy_keep_state(stateful):
    rng = np.random.default_rng(2)
    layer = lstmc.TimeLSTM(*_weights(rng, 3, 5, np.float64), stateful=stateful)
    xs = rng.standard_normal((2, 4, 3))
    layer.forward(xs)
    layer.backward(np.ones((2, 4, 5)))
    h_held, c_held = layer.h, layer.c
    params = [p.copy() for p in layer.params]
    grads = [g.copy() for g in layer.grads]
    held = {"h": layer.h.copy(), "c": layer.c.copy(), "dh": layer.dh.copy()}
    clones = [pickle.loads(pickle.dumps(layer)), copy.deepcopy(layer)]
    xs2 = rng.standard_normal((2, 4, 3))
    dhs2 = rng.standard_normal((2, 4, 5))
    # What the layer computes next, from the state it holds (its own future).
    want_hs, want_dxs = layer.forward(xs2), layer.backward(dhs2)
    want = {"h": layer.h, "c": layer.c, "dh": layer.dh}
    want_grads = [g.copy() for g in layer.grads]
    # The same, from the NumPy reference and the state held before that call.
    ref = RefTimeLSTM(*layer.params, stateful=stateful)
    if stateful:
        ref.set_state(h_held, c_held)
    assert_close(want_hs, ref.forward(xs2), np.float64, "hs")
    assert_close(want_dxs, ref.backward(dhs2), np.float64, "dxs")
    assert_close(want["dh"], ref.dh, np.float64, "dh")
    for g, rg in zip(want_grads, ref.grads):
        assert_close(g, rg, np.float64, "grads")
    for clone in clones:
        assert clone.stateful == stateful
        for a, b, orig in zip(clone.params, params, layer.params):
            assert a is not orig and not np.shares_memory(a, orig)
            np.testing.assert_array_equal(a, b)
        for name, value in held.items():
            np.testing.assert_array_equal(getattr(clone, name), value)
        for a, b in zip(clone.grads, grads):
            np.testing.assert_array_equal(a, b)
        # Each clone continues exactly as the original did from the state it held.
        np.testing.assert_array_equal(clone.forward(xs2), want_hs)
        np.testing.assert_array_equal(clone.backward(dhs2), want_dxs)
        for name in ("h", "c", "dh"):
            np.testing.assert_array_equal(getattr(clone, name), want[name])
        for a, b in zip(clone.grads, want_grads):
            np.testing.assert_array_equal(a, b)


def test_unpickle_in_another_process(tmp_path):
    rng = np.random.default_rng(3)
    layer = lstmc.TimeLSTM(*_weights(rng, 3, 4, np.float32), stateful=True)
    xs = rng.standard_normal((2, 6, 3)).astype(np.float32)
    layer.forward(xs[:, :3])
    path = tmp_path / "layer.pkl"
    path.write_bytes(pickle.dumps(layer))
    np.save(tmp_path / "xs.npy", xs[:, 3:])
    code = (
        "import pickle, sys, numpy as np\n"
        f"layer = pickle.loads(open({str(path)!r}, 'rb').read())\n"
        f"hs = layer.forward(np.load({str(tmp_path / 'xs.npy')!r}))\n"
        f"np.save({str(tmp_path / 'hs.npy')!r}, hs)\n"
    )
    # The child imports the same lstmc as this process, from a fresh interpreter.
    env = dict(os.environ, PYTHONPATH=os.path.dirname(os.path.dirname(lstmc.__file__)))
    subprocess.run([sys.executable, "-c", code], check=True, cwd=tmp_path, env=env)
    want = layer.forward(xs[:, 3:])
    np.testing.assert_array_equal(np.load(tmp_path / "hs.npy"), want)
