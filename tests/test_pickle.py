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
    for clone in (pickle.loads(pickle.dumps(layer)), copy.deepcopy(layer)):
        assert clone.stateful == stateful
        for name in ("h", "c", "dh"):
            np.testing.assert_array_equal(getattr(clone, name), getattr(layer, name))
        for a, b in zip(clone.grads, layer.grads):
            np.testing.assert_array_equal(a, b)
        # Both continue identically from the state they hold.
        ref = copy.deepcopy(layer)
        np.testing.assert_array_equal(clone.forward(xs), ref.forward(xs))
        clone.backward(np.ones((2, 4, 5)))


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
