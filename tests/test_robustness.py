"""Failure atomicity, aliasing, allocation and sharing: the promises that the
parity tests do not reach."""
import threading
import time
import tracemalloc

import numpy as np
import pytest
from numpy.lib.stride_tricks import as_strided

import lstmc
from reference import assert_close, cell_backward, cell_forward, count_while, time_forward


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
    tracemalloc.start()
    try:
        for _ in range(100):                       # warm up
            cell.forward(x, h, c, out=out, train=False)
        base = tracemalloc.get_traced_memory()[0]
        tracemalloc.reset_peak()
        for _ in range(2000):
            cell.forward(x, h, c, out=out, train=False)
        current, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    # NumPy reports its allocations to tracemalloc. Measured: this loop peaks
    # ~160 bytes over the baseline (the interpreter's own small objects), the
    # same loop without out= (two new (2, 16) arrays a call) ~600.
    assert current - base < 300, (base, current)
    assert peak - base < 300, (base, peak)


def _huge_stride(a, axis, nbytes):
    strides = list(a.strides)
    strides[axis] = nbytes
    return as_strided(a, shape=a.shape, strides=strides)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_cell_size_beyond_blas_ints_raises_and_keeps_the_cache(dtype):
    rng = np.random.default_rng(2)
    D, H = 3, 4
    cell = lstmc.LSTM(*_weights(rng, D, H, dtype))
    x, h, c = (rng.standard_normal((2, n)).astype(dtype) for n in (D, H, H))
    cell.forward(x, h, c)
    cache = cell.cache
    dx_before = cell.backward(np.ones((2, H), dtype), np.ones((2, H), dtype))[0]
    big = _huge_stride(x, 0, 2 ** 34)          # a row stride BLAS cannot index; never read
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
    big = _huge_stride(rng.standard_normal((2, 1, D)), 0, 2 ** 35)
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


def test_threads_sharing_one_timelstm_get_their_own_results():
    rng = np.random.default_rng(6)
    D, H, T = 5, 8, 7
    layer = lstmc.TimeLSTM(*_weights(rng, D, H, np.float64))
    inputs = [rng.standard_normal((n, T, D)) for n in (1, 2, 3, 5)]
    wants = [lstmc.TimeLSTM(*layer.params).forward(xs, train=False) for xs in inputs]
    errors = []

    def work(k):
        for i in range(200):
            j = (k + i) % len(inputs)
            got = layer.forward(inputs[j], train=False)
            if not np.array_equal(got, wants[j]):
                errors.append((k, i, j))

    threads = [threading.Thread(target=work, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors[:5]


def test_gil_released_during_a_sequence():
    """Another Python thread keeps running while a long TimeLSTM forward computes."""
    from threadpoolctl import threadpool_limits
    import scipy.linalg  # noqa: F401  (load SciPy's BLAS so threadpoolctl can limit it)

    rng = np.random.default_rng(7)
    N, T, D, H = 16, 400, 128, 256
    layer = lstmc.TimeLSTM(*_weights(rng, D, H, np.float64))
    xs = rng.standard_normal((N, T, D))
    with threadpool_limits(limits=1):     # one BLAS thread: a core stays free for the counter
        t0 = time.perf_counter()
        layer.forward(xs)
        reps = int(min(8, max(2, np.ceil(0.5 / (time.perf_counter() - t0)))))

        def work():
            for _ in range(reps):
                layer.forward(xs)
                layer.backward(np.ones((N, T, H)))

        busy, elapsed = count_while(work)
        idle, _ = count_while(lambda: time.sleep(elapsed))
    # Held, the GIL would let the counter run only between calls.
    assert busy > 0.2 * idle, (busy, idle, reps)


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
