"""TimeLSTM with lengths, per-call initial states and reverse=True.

The reference is a plain NumPy loop over each row's valid steps, written here
(float64); gradients are checked by central differences in float64; torch's
``pack_padded_sequence`` is a second, independent reference when installed.
"""

import numpy as np
import pytest

import lstmc
from optional import require
from reference import Snapshot, assert_close, assert_grad_close, numerical_gradient, random_weights


def _sigmoid(a):
    return 1.0 / (1.0 + np.exp(-a))


def padded_reference(xs, Wx, Wh, b, lengths, h0=None, c0=None, reverse=False):
    """hs (zeros past each length), h_last, c_last in float64, one row at a time."""
    xs, Wx, Wh, b = (np.asarray(a, np.float64) for a in (xs, Wx, Wh, b))
    N, T, _ = xs.shape
    H = Wh.shape[0]
    hs = np.zeros((N, T, H))
    h_last, c_last = np.zeros((N, H)), np.zeros((N, H))
    for i in range(N):
        h = np.zeros(H) if h0 is None else np.array(h0[i], np.float64)
        c = np.zeros(H) if c0 is None else np.array(c0[i], np.float64)
        steps = range(lengths[i] - 1, -1, -1) if reverse else range(lengths[i])
        for t in steps:
            A = xs[i, t] @ Wx + h @ Wh + b
            f, g = _sigmoid(A[:H]), np.tanh(A[H:2 * H])
            ii, o = _sigmoid(A[2 * H:3 * H]), _sigmoid(A[3 * H:])
            c = f * c + g * ii
            h = o * np.tanh(c)
            hs[i, t] = h
        h_last[i], c_last[i] = h, c
    return hs, h_last, c_last


def make(rng, N, T, D, H, dtype, reverse=False, stateful=False):
    Wx, Wh, b = random_weights(rng, D, H, dtype, scale=0.6)
    layer = lstmc.TimeLSTM(Wx, Wh, b, stateful=stateful, reverse=reverse)
    xs = rng.standard_normal((N, T, D)).astype(dtype)
    h0 = rng.standard_normal((N, H)).astype(dtype)
    c0 = rng.standard_normal((N, H)).astype(dtype)
    return layer, (Wx, Wh, b), xs, h0, c0


def some_lengths(rng, N, T):
    """Unsorted lengths with 0 and T among them (when N allows)."""
    lengths = rng.integers(0, T + 1, N)
    lengths[0] = T
    if N > 1:
        lengths[-1] = 0
    if N > 2:
        lengths[N // 2] = 1
    return lengths


@pytest.fixture(params=[(None, 1), ("rows", 2), ("units", 2), (None, 3)],
                ids=["one-thread", "rows-2", "units-2", "rules-3"])
def split(request):
    """Thread counts and splits: a call with lengths runs by rows whatever is
    forced, so "units" checks that it falls back correctly."""
    how, n = request.param
    lstmc._work.force_split(how)
    try:
        with lstmc.threads(n):
            yield request.param
    finally:
        lstmc._work.force_split(None)


@pytest.mark.parametrize("reverse", [False, True], ids=["forward", "reverse"])
@pytest.mark.parametrize("train", [True, False], ids=["train", "infer"])
@pytest.mark.parametrize("shape", [(5, 7, 3, 4), (37, 9, 5, 8), (1, 6, 2, 3)])
def test_forward_matches_reference(rng, dtype, split, shape, reverse, train):
    N, T, D, H = shape
    layer, params, xs, h0, c0 = make(rng, N, T, D, H, dtype, reverse=reverse)
    lengths = some_lengths(rng, N, T)
    hs = layer.forward(xs, lengths=lengths, h0=h0, c0=c0, train=train)
    ref_hs, ref_h, ref_c = padded_reference(xs, *params, lengths, h0, c0, reverse)
    assert_close(hs, ref_hs, dtype, "hs")
    assert_close(layer.h, ref_h, dtype, "h")
    assert_close(layer.c, ref_c, dtype, "c")
    for i in range(N):
        assert np.all(hs[i, lengths[i]:] == 0), "hs past a row's length must be 0"


@pytest.mark.parametrize("reverse", [False, True], ids=["forward", "reverse"])
def test_gradients_central_differences(rng, split, reverse):
    """Every gradient, lengths 0 and T included, against float64 central differences."""
    N, T, D, H = 4, 5, 3, 4
    layer, (Wx, Wh, b), xs, h0, c0 = make(rng, N, T, D, H, np.float64, reverse=reverse)
    lengths = some_lengths(rng, N, T)
    R = rng.standard_normal((N, T, H))

    def loss():
        return np.sum(layer.forward(xs, lengths=lengths, h0=h0, c0=c0, train=False) * R)

    layer.forward(xs, lengths=lengths, h0=h0, c0=c0)
    dxs = layer.backward(R)
    analytic = dict(xs=dxs, Wx=layer.grads[0].copy(), Wh=layer.grads[1].copy(),
                    b=layer.grads[2].copy(), h0=layer.dh.copy(), c0=layer.dc.copy())
    for name, arr in dict(xs=xs, Wx=Wx, Wh=Wh, b=b, h0=h0, c0=c0).items():
        assert_grad_close(analytic[name], numerical_gradient(loss, arr), name)
    for i in range(N):
        assert np.all(dxs[i, lengths[i]:] == 0)
    assert np.all(layer.dh[lengths == 0] == 0) and np.all(layer.dc[lengths == 0] == 0)


def test_dc_without_lengths_central_differences(rng):
    """dc (new) is the gradient of c0 on the plain path too, held state included."""
    N, T, D, H = 3, 4, 2, 3
    layer, _, xs, h0, c0 = make(rng, N, T, D, H, np.float64, stateful=True)
    R = rng.standard_normal((N, T, H))

    def loss():
        layer.set_state(h0, c0)
        return np.sum(layer.forward(xs, train=False) * R)

    layer.set_state(h0, c0)
    layer.forward(xs)
    layer.backward(R)
    dh, dc = layer.dh.copy(), layer.dc.copy()
    assert_grad_close(dc, numerical_gradient(loss, c0), "c0")
    assert_grad_close(dh, numerical_gradient(loss, h0), "h0")


def test_padding_is_never_read(rng, dtype, split):
    """NaN in xs past a row's length and in dhs there changes nothing."""
    N, T, D, H = 37, 6, 3, 5
    layer, _, xs, h0, c0 = make(rng, N, T, D, H, dtype)
    lengths = some_lengths(rng, N, T)
    dhs = rng.standard_normal((N, T, H)).astype(dtype)
    hs = layer.forward(xs, lengths=lengths, h0=h0, c0=c0)
    dxs = layer.backward(dhs)
    clean = [hs, layer.h, layer.c, dxs, layer.dh, layer.dc] + [g.copy() for g in layer.grads]
    xs_nan, dhs_nan = xs.copy(), dhs.copy()
    for i in range(N):
        xs_nan[i, lengths[i]:] = np.nan
        dhs_nan[i, lengths[i]:] = np.nan
    hs2 = layer.forward(xs_nan, lengths=lengths, h0=h0, c0=c0)
    dxs2 = layer.backward(dhs_nan)
    dirty = [hs2, layer.h, layer.c, dxs2, layer.dh, layer.dc] + list(layer.grads)
    for a, b in zip(clean, dirty):
        np.testing.assert_array_equal(a, b)


def test_full_lengths_are_the_plain_call(rng, dtype):
    """lengths all T (forward direction) is the plain call, bit for bit."""
    N, T, D, H = 9, 5, 4, 6
    layer, _, xs, h0, c0 = make(rng, N, T, D, H, dtype)
    dhs = rng.standard_normal((N, T, H)).astype(dtype)
    hs = layer.forward(xs, h0=h0, c0=c0)
    dxs = layer.backward(dhs)
    plain = [hs, layer.h, layer.c, dxs, layer.dh, layer.dc] + [g.copy() for g in layer.grads]
    hs = layer.forward(xs, lengths=[T] * N, h0=h0, c0=c0)
    dxs = layer.backward(dhs)
    for a, b in zip(plain, [hs, layer.h, layer.c, dxs, layer.dh, layer.dc] + layer.grads):
        np.testing.assert_array_equal(a, b)


def test_reverse_without_lengths_is_the_flipped_sequence(rng, dtype):
    N, T, D, H = 6, 7, 3, 4
    layer, params, xs, h0, c0 = make(rng, N, T, D, H, dtype, reverse=True)
    plain = lstmc.TimeLSTM(*params)
    hs = layer.forward(xs, h0=h0, c0=c0)
    flipped = plain.forward(np.ascontiguousarray(xs[:, ::-1]), h0=h0, c0=c0)
    np.testing.assert_allclose(hs, flipped[:, ::-1], rtol=1e-6 if dtype == np.float32 else 1e-13,
                               atol=1e-7 if dtype == np.float32 else 1e-15)
    np.testing.assert_allclose(layer.h, plain.h, rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(layer.c, plain.c, rtol=1e-6, atol=1e-7)


def test_repeats_are_bit_identical_and_threads_agree(rng, dtype):
    N, T, D, H = 64, 12, 16, 32
    layer, _, xs, h0, c0 = make(rng, N, T, D, H, dtype)
    lengths = rng.integers(0, T + 1, N)
    dhs = rng.standard_normal((N, T, H)).astype(dtype)

    def run(n):
        with lstmc.threads(n):
            hs = layer.forward(xs, lengths=lengths, h0=h0, c0=c0)
            dxs = layer.backward(dhs)
            return [hs, layer.h, layer.c, dxs, layer.dh, layer.dc] + [g.copy() for g in layer.grads]

    lstmc._work.force_split("rows")
    try:
        first, again, one = run(2), run(2), run(1)
    finally:
        lstmc._work.force_split(None)
    for a, b, c in zip(first, again, one):
        np.testing.assert_array_equal(a, b)
        assert_close(a, c.astype(np.float64), dtype)


def test_backward_uses_the_forwards_plan(rng):
    """The thread count changing between forward and backward (so another plan
    and another order of rows) does not change the gradients."""
    N, T, D, H = 40, 6, 8, 16
    layer, _, xs, h0, c0 = make(rng, N, T, D, H, np.float64)
    lengths = rng.integers(0, T + 1, N)
    dhs = rng.standard_normal((N, T, H))
    lstmc._work.force_split("rows")
    try:
        with lstmc.threads(1):
            layer.forward(xs, lengths=lengths, h0=h0)
            expected = layer.backward(dhs)
        with lstmc.threads(2):
            layer.forward(xs, lengths=lengths, h0=h0)
        with lstmc.threads(1):
            got = layer.backward(dhs)
    finally:
        lstmc._work.force_split(None)
    np.testing.assert_allclose(got, expected, rtol=1e-12, atol=1e-14)


def test_initial_state_per_call(rng, dtype):
    N, T, D, H = 4, 3, 2, 5
    layer, params, xs, h0, c0 = make(rng, N, T, D, H, dtype)
    full = [T] * N
    for h, c in ((h0, c0), (h0, None), (None, c0)):
        hs = layer.forward(xs, h0=h, c0=c)
        ref_hs, ref_h, ref_c = padded_reference(xs, *params, full, h, c)
        assert_close(hs, ref_hs, dtype)
        assert_close(layer.c, ref_c, dtype)
    if dtype == np.float64:                   # lists work, like every other argument
        hs = layer.forward(xs, h0=h0.tolist(), c0=c0.tolist())
        assert_close(hs, padded_reference(xs, *params, full, h0, c0)[0], dtype)


def test_stateful_layer_h0_replaces_the_held_state(rng, dtype):
    N, T, D, H = 3, 4, 2, 3
    layer, params, xs, h0, c0 = make(rng, N, T, D, H, dtype, stateful=True)
    layer.set_state(np.ones((N, H), dtype), np.ones((N, H), dtype))
    hs = layer.forward(xs, h0=h0, c0=c0)
    assert_close(hs, padded_reference(xs, *params, [T] * N, h0, c0)[0], dtype)
    # and the next call continues from this call's last state, per row with lengths
    lengths = [4, 0, 2]
    h_before = layer.h.copy()
    layer.forward(xs, lengths=lengths)
    ref = padded_reference(xs, *params, lengths, h_before, None)
    np.testing.assert_array_equal(layer.h[1], h_before[1])


def test_set_state_on_a_stateless_layer_raises(rng):
    layer, _, xs, h0, c0 = make(rng, 2, 3, 2, 3, np.float64)
    with pytest.raises(ValueError, match="stateful=True.*h0="):
        layer.set_state(h0, c0)
    assert layer.h is None and layer.c is None


@pytest.mark.parametrize("bad, kind, words", [
    ([1, 2], ValueError, "lengths has shape"),
    ([[1, 2, 3]], ValueError, "lengths has shape"),
    ([1, 2, 4], ValueError, "lengths must be in 0 .. 3"),
    ([1, -1, 2], ValueError, "lengths must be in 0 .. 3"),
    ([1.0, 2.0, 3.0], TypeError, "lengths has dtype float64"),
    ([True, False, True], TypeError, "lengths has dtype bool"),
    (["a", "b", "c"], TypeError, "lengths has dtype"),
])
def test_bad_lengths_change_nothing(rng, dtype, bad, kind, words):
    N, T, D, H = 3, 3, 2, 4
    layer, _, xs, h0, c0 = make(rng, N, T, D, H, dtype, stateful=True)
    layer.forward(xs, lengths=[3, 1, 0], h0=h0)
    dhs = rng.standard_normal((N, T, H)).astype(dtype)
    snap = Snapshot(layer)
    with pytest.raises(kind, match=words):
        layer.forward(xs, lengths=bad)
    snap.assert_unchanged(layer)
    layer.backward(dhs)                      # the cache of the last good call is intact


@pytest.mark.parametrize("name", ["h0", "c0"])
def test_bad_initial_state_changes_nothing(rng, dtype, name):
    N, T, D, H = 3, 3, 2, 4
    layer, _, xs, h0, c0 = make(rng, N, T, D, H, dtype)
    layer.forward(xs)
    snap = Snapshot(layer)
    with pytest.raises(ValueError, match=name):
        layer.forward(xs, **{name: np.zeros((N, H + 1), dtype)})
    with pytest.raises(TypeError, match=name):
        layer.forward(xs, **{name: np.zeros((N, H), np.complex128)})
    snap.assert_unchanged(layer)


def test_empty_batches_and_steps(dtype):
    layer = lstmc.TimeLSTM(*random_weights(np.random.default_rng(0), 2, 3, dtype), reverse=True)
    hs = layer.forward(np.zeros((0, 4, 2), dtype), lengths=np.zeros(0, int))
    assert hs.shape == (0, 4, 3)
    h0 = np.ones((2, 3), dtype)
    hs = layer.forward(np.zeros((2, 0, 2), dtype), lengths=[0, 0], h0=h0)
    assert hs.shape == (2, 0, 3)
    np.testing.assert_array_equal(layer.h, h0)
    dxs = layer.backward(np.zeros((2, 0, 3), dtype))
    assert dxs.shape == (2, 0, 2) and np.all(layer.dc == 0) and np.all(layer.dh == 0)


def test_pickle_keeps_reverse(rng):
    import pickle
    layer, _, xs, _, _ = make(rng, 2, 3, 2, 3, np.float64, reverse=True)
    copy = pickle.loads(pickle.dumps(layer))
    assert copy.reverse
    np.testing.assert_array_equal(copy.forward(xs, lengths=[2, 3]), layer.forward(xs, lengths=[2, 3]))


@pytest.mark.parametrize("reverse", [False, True], ids=["forward", "reverse"])
def test_against_torch_pack_padded(rng, reverse):
    """One direction of a torch LSTM on a packed batch (unsorted lengths, h0, c0)."""
    torch = require("torch")
    N, T, D, H = 7, 9, 5, 6
    module = torch.nn.LSTM(D, H, batch_first=True, bidirectional=reverse).double()
    sd = {k: v.detach().numpy() for k, v in module.state_dict().items()}
    Wx, Wh, b = lstmc.convert.from_torch_state_dict(sd, 0, reverse=reverse)
    layer = lstmc.TimeLSTM(Wx, Wh, b, reverse=reverse)
    xs = rng.standard_normal((N, T, D))
    lengths = rng.integers(1, T + 1, N)
    lengths[0] = T
    dirs = 2 if reverse else 1
    h0 = rng.standard_normal((dirs, N, H))
    c0 = rng.standard_normal((dirs, N, H))
    packed = torch.nn.utils.rnn.pack_padded_sequence(
        torch.from_numpy(xs), torch.from_numpy(lengths), batch_first=True, enforce_sorted=False)
    out, (h_n, c_n) = module(packed, (torch.from_numpy(h0), torch.from_numpy(c0)))
    out, _ = torch.nn.utils.rnn.pad_packed_sequence(out, batch_first=True, total_length=T)
    d = dirs - 1                              # the reverse half when bidirectional
    hs = layer.forward(xs, lengths=lengths, h0=h0[d], c0=c0[d])
    np.testing.assert_allclose(hs, out.detach().numpy()[..., d * H:(d + 1) * H],
                               rtol=1e-12, atol=1e-13)
    np.testing.assert_allclose(layer.h, h_n.detach().numpy()[d], rtol=1e-12, atol=1e-13)
    np.testing.assert_allclose(layer.c, c_n.detach().numpy()[d], rtol=1e-12, atol=1e-13)


def test_save_load_keeps_reverse(rng, tmp_path):
    """A reverse TimeLSTM saves a `reverse` flag; a forward one writes the file as
    before (no such key), so older lstmc versions still read it."""
    layer, _, xs, _, _ = make(rng, 2, 4, 3, 5, np.float32, reverse=True)
    lstmc.save(tmp_path / "r.npz", layer)
    back = lstmc.load(tmp_path / "r.npz")
    assert back.reverse and isinstance(back, lstmc.TimeLSTM)
    np.testing.assert_array_equal(back.forward(xs, lengths=[3, 1]), layer.forward(xs, lengths=[3, 1]))
    assert bool(np.load(tmp_path / "r.npz", allow_pickle=False)["reverse"])
    layer.reverse = False
    lstmc.save(tmp_path / "f.npz", layer)
    assert "reverse" not in np.load(tmp_path / "f.npz", allow_pickle=False).files
    assert not lstmc.load(tmp_path / "f.npz").reverse


class _Reentrant:
    """An array-like whose conversion runs a forward on the same layer and
    replaces the layer's Wh with a copy (user code inside the call)."""

    def __init__(self, layer, xs, value):
        self.layer, self.xs, self.value, self.ran = layer, xs, value, False

    def __array__(self, dtype=None, copy=None):
        self.ran = True
        self.layer.forward(self.xs, train=False)
        self.layer.params[1] = self.layer.params[1].copy()
        return np.asarray(self.value) if dtype is None else np.asarray(self.value, dtype)


@pytest.mark.parametrize("name", ["lengths", "h0", "c0"])
def test_odd_array_likes_run_before_the_lock(rng, name):
    """Converting lengths, h0 or c0 may run user code that calls the same layer
    and replaces its params: no deadlock, and the call computes with the params
    it finds after the conversion."""
    N, T, D, H = 4, 5, 3, 6
    layer, params, xs, h0, c0 = make(rng, N, T, D, H, np.float64)
    lengths = np.array([5, 0, 2, 3])
    args = dict(lengths=lengths, h0=h0, c0=c0)
    odd = _Reentrant(layer, xs, args[name])
    args[name] = odd
    hs = layer.forward(xs, **args)
    assert odd.ran
    Wx, Wh, b = layer.params                 # Wh is the copy the conversion put there
    ref = padded_reference(xs, Wx, Wh, b, lengths, h0, c0)
    assert_close(hs, ref[0], np.float64)
    layer.backward(np.ones((N, T, H)))


@pytest.mark.parametrize("threads", [2, 3])
@pytest.mark.parametrize("N", [3, 5])
def test_one_row_blocks_read_xs_in_place(rng, dtype, threads, N):
    """Inference with lengths reads xs in place through the row order; blocks of
    one row (N=3 at 2 and 3 threads) take their row's own start."""
    T, D, H = 6, 3, 4
    layer, params, xs, h0, c0 = make(rng, N, T, D, H, dtype)
    lengths = rng.integers(0, T + 1, N)
    lengths[-1] = T
    strided = np.zeros((N, T, D + 2), dtype)[..., 1:D + 1]     # rows BLAS cannot take whole
    strided[...] = xs
    lstmc._work.force_split("rows")
    try:
        with lstmc.threads(threads):
            for x in (xs, strided):
                hs = layer.forward(x, lengths=lengths, h0=h0, train=False)
                ref_hs, ref_h, ref_c = padded_reference(xs, *params, lengths, h0)
                assert_close(hs, ref_hs, dtype)
                assert_close(layer.h, ref_h, dtype)
                assert_close(layer.c, ref_c, dtype)
    finally:
        lstmc._work.force_split(None)
