"""Failure atomicity, aliasing, allocation and sharing: the promises that the
parity tests do not reach."""
import tracemalloc

import numpy as np
import pytest

import lstmc
from reference import assert_close, cell_backward, cell_forward, time_forward


def _weights(rng, D, H, dtype):
    return [(rng.standard_normal(s) * 0.4).astype(dtype) for s in ((D, 4 * H), (H, 4 * H), (4 * H,))]


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_out_may_be_x_itself_in_training(dtype):
    # Streaming in place with D == H: h_next is written over x. backward must
    # still see the x the step was computed from.
    rng = np.random.default_rng(0)
    N, H = 3, 5
    Wx, Wh, b = _weights(rng, H, H, dtype)
    x, h, c, dh, dc = (rng.standard_normal((N, H)).astype(dtype) for _ in range(5))
    x0, h0, c0 = x.copy(), h.copy(), c.copy()
    cell = lstmc.LSTM(Wx, Wh, b)
    got_h, got_c = cell.forward(x, h, c, out=(x, c))
    assert got_h is x and got_c is c
    dx, dh_prev, dc_prev = cell.backward(dh, dc)
    want_h, want_c, cache = cell_forward(x0, h0, c0, Wx, Wh, b)
    want = cell_backward(dh, dc, cache, Wx, Wh)
    assert_close(got_h, want_h, dtype)
    for got, w in zip([dx, dh_prev, dc_prev] + cell.grads, want):
        assert_close(got, w, dtype)


def test_out_path_returns_the_out_tuple_and_allocates_nothing():
    rng = np.random.default_rng(1)
    D, H = 16, 16
    cell = lstmc.LSTM(*_weights(rng, D, H, np.float32))
    x = rng.standard_normal((2, D)).astype(np.float32)
    h = np.zeros((2, H), np.float32)
    c = np.zeros((2, H), np.float32)
    out = (h, c)
    assert cell.forward(x, h, c, out=out, train=False) is out

    # NumPy reports its allocations to tracemalloc. The bounds come from this
    # run, not from a number measured once: the same loop calling a stand-in
    # that does no work (what the interpreter itself allocates: ~250 bytes of
    # peak on CPython 3.11, a few dozen held), and one that allocates a single
    # (N, H) array a call (the smallest allocation forward could make).
    def stand_in(x, h_prev, c_prev, *, out=None, train=True):
        return out

    def one_array(x, h_prev, c_prev, *, out=None, train=True):
        return np.empty_like(h_prev)

    calls = 2000

    def traced(fn):
        """Bytes (still held, peak) over `calls` calls, after a warm-up; the best
        of three runs (anything else the process does can only add)."""
        runs = []
        for _ in range(3):
            tracemalloc.start()
            try:
                for _ in range(100):                       # warm up
                    fn(x, h, c, out=out, train=False)
                base = tracemalloc.get_traced_memory()[0]
                tracemalloc.reset_peak()
                for _ in range(calls):
                    fn(x, h, c, out=out, train=False)
                current, peak = tracemalloc.get_traced_memory()
            finally:
                tracemalloc.stop()
            runs.append((current - base, peak - base))
        return min(r[0] for r in runs), min(r[1] for r in runs)

    held, peak = traced(cell.forward)
    noise_held, noise_peak = traced(stand_in)
    _, array_peak = traced(one_array)
    assert array_peak > noise_peak, (array_peak, noise_peak)   # the probe can see an array
    # A leak grows with the number of calls, the interpreter's noise does not:
    # less than one byte a call stays (a leaked object is >= 16 bytes a call).
    assert held < noise_held + calls, (held, noise_held)
    # Nothing is allocated per call: the peak stays within half an (N, H) array
    # of the stand-in's.
    assert peak < noise_peak + (array_peak - noise_peak) / 2, (peak, noise_peak, array_peak)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_cell_size_beyond_blas_ints_raises_and_keeps_the_cache(dtype):
    rng = np.random.default_rng(2)
    D, H = 3, 4
    cell = lstmc.LSTM(*_weights(rng, D, H, dtype))
    x, h, c = (rng.standard_normal((2, n)).astype(dtype) for n in (D, H, H))
    cell.forward(x, h, c)
    cache = cell.cache
    dx_before = cell.backward(np.ones((2, H), dtype), np.ones((2, H), dtype))[0]
    big = np.broadcast_to(x[:1], (2 ** 31, D))  # more rows than BLAS takes; never copied
    with pytest.raises(ValueError, match="exceeds"):
        cell.forward(big, h, c)
    assert cell.cache is cache
    dx_after = cell.backward(np.ones((2, H), dtype), np.ones((2, H), dtype))[0]
    np.testing.assert_array_equal(dx_after, dx_before)


def test_time_size_beyond_blas_ints_raises_and_keeps_cache_and_state():
    rng = np.random.default_rng(3)
    D, H = 3, 4
    layer = lstmc.TimeLSTM(*_weights(rng, D, H, np.float64), stateful=True)
    xs = rng.standard_normal((2, 5, D))
    layer.forward(xs)
    h, c = layer.h, layer.c
    dxs_before = layer.backward(np.ones((2, 5, H)))
    big = np.broadcast_to(xs[:1, :1], (2 ** 31, 1, D))  # more rows than BLAS takes
    with pytest.raises(ValueError, match="exceeds"):
        layer.forward(big)
    assert layer.h is h and layer.c is c
    np.testing.assert_array_equal(layer.backward(np.ones((2, 5, H))), dxs_before)


def test_cached_xs_reshaped_in_place_does_not_change_backward():
    rng = np.random.default_rng(4)
    N, T, D, H = 2, 6, 3, 4
    layer = lstmc.TimeLSTM(*_weights(rng, D, H, np.float64))
    xs = rng.standard_normal((N, T, D))
    layer.forward(xs)
    want = [g.copy() for g in (layer.backward(np.ones((N, T, H))), *layer.grads)]
    xs.shape = (N, T // 2, 2 * D)              # same memory, other strides
    got = [layer.backward(np.ones((N, T, H))), *layer.grads]
    for g, w in zip(got, want):
        np.testing.assert_array_equal(g, w)


@pytest.mark.parametrize("layout", ["window", "time-major"])
def test_training_on_rows_spaced_unevenly_matches_reference(layout):
    # xs[:, 10:15] and a (T, N, D) array seen as (N, T, D) have contiguous rows
    # but no single row stride: the projection runs a gemm per sequence.
    rng = np.random.default_rng(5)
    N, T, D, H = 3, 5, 4, 6
    Wx, Wh, b = _weights(rng, D, H, np.float64)
    if layout == "window":
        xs = rng.standard_normal((N, 20, D))[:, 10:15]
    else:
        xs = rng.standard_normal((T, N, D)).transpose(1, 0, 2)
    layer = lstmc.TimeLSTM(Wx, Wh, b)
    hs = layer.forward(xs)
    dhs = rng.standard_normal((N, T, H))
    dxs = layer.backward(dhs)
    ref = lstmc.TimeLSTM(Wx, Wh, b)
    want_hs = ref.forward(np.ascontiguousarray(xs))
    want_dxs = ref.backward(dhs)
    np.testing.assert_allclose(hs, want_hs, rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(dxs, want_dxs, rtol=1e-12, atol=1e-14)
    for g, w in zip(layer.grads, ref.grads):
        np.testing.assert_allclose(g, w, rtol=1e-12, atol=1e-13)
    np.testing.assert_allclose(want_hs, time_forward(np.ascontiguousarray(xs), Wx, Wh, b)[0],
                               rtol=1e-12, atol=1e-14)


# Threads sharing a layer and the GIL: test_threads.py. Leaks: test_leaks.py.


def test_inference_memory_does_not_grow_with_T():
    # train=False projects the inputs a chunk of steps at a time: beyond its
    # output, the layer's working memory is bounded (32 MB of gates and the
    # chunk's inputs), whatever T is.
    rng = np.random.default_rng(8)
    N, D, H = 2, 8, 8                     # 512 bytes of gates a step: 65536 a chunk
    layer = lstmc.TimeLSTM(*_weights(rng, D, H, np.float64))
    peaks = {}
    for T in (100_000, 400_000):          # 2 and 7 chunks
        xs = rng.standard_normal((N, T, D))
        tracemalloc.start()
        try:
            hs = layer.forward(xs, train=False)
            peaks[T] = tracemalloc.get_traced_memory()[1] - hs.nbytes
        finally:
            tracemalloc.stop()
        assert np.all(np.isfinite(hs))
    bound = (32 << 20) * (1 + D / (4 * H)) + (1 << 20)
    assert max(peaks.values()) < bound, peaks       # four times the steps, same bound
    # A training forward keeps O(N*T*H): at a quarter of the steps, far more memory.
    xs = xs[:, :100_000]
    tracemalloc.start()
    try:
        hs = lstmc.TimeLSTM(*layer.params).forward(xs)
        train_peak = tracemalloc.get_traced_memory()[1] - hs.nbytes
    finally:
        tracemalloc.stop()
    assert train_peak > 2 * peaks[400_000], (train_peak, peaks)
