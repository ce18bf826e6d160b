"""Threads: the GIL is released for all numeric work, a layer shared by threads
is safe (README: "Each layer has a lock around its scratch buffers: one layer
shared by several threads is safe (calls on it take turns) but its cache is the
last forward's"), and a backward whose cache another thread replaced raises the
documented RuntimeError rather than mixing two caches.

Every concurrent result is compared, exactly, with the same call made by one
thread: BLAS runs one thread here (threadpoolctl), so results are bit-identical.
The calls take milliseconds each and the tests check that they did overlap in
time, so that a missing lock would be caught, not just possible.
"""
import threading
import time

import numpy as np
import pytest
import scipy.linalg  # noqa: F401  (load SciPy's BLAS so that threadpoolctl can limit it)

import lstmc
from optional import require
from reference import count_while

_RACE = "the cache changed under this call"


@pytest.fixture
def one_blas_thread():
    """BLAS on one thread: results bit-identical from call to call, and a core
    left for the other Python thread of the GIL tests."""
    threadpoolctl = require("threadpoolctl")
    with threadpoolctl.threadpool_limits(limits=1):
        yield


def _weights(rng, D, H, dtype, scale=0.05):
    return [(rng.standard_normal(s) * scale).astype(dtype)
            for s in ((D, 4 * H), (H, 4 * H), (4 * H,))]


def _run_threads(n_threads, worker):
    """Start n_threads running worker(tid, log) together; return the log of
    (tid, start, end) of every call and the exceptions the workers raised."""
    barrier = threading.Barrier(n_threads)
    log, failures = [], []

    def run(tid):
        try:
            barrier.wait()
            worker(tid, log)
        except BaseException as e:  # noqa: BLE001 - reported by the caller
            failures.append((tid, repr(e)[:800]))

    threads = [threading.Thread(target=run, args=(k,)) for k in range(n_threads)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return log, failures


def _timed(log, tid, fn):
    t0 = time.perf_counter()
    try:
        return fn()
    finally:
        log.append((tid, t0, time.perf_counter()))


def _overlaps(log):
    """Pairs of calls from different threads that were in progress at the same time."""
    calls = sorted(log, key=lambda r: r[1])
    n = 0
    for k, (tid, start, end) in enumerate(calls):
        for tid2, start2, _ in calls[k + 1:]:
            if start2 >= end:
                break
            n += tid2 != tid
    return n


# --------------------------------------------------------------------------
# one layer, many threads: every result is the single-threaded one
# --------------------------------------------------------------------------


def test_one_cell_shared_by_threads(one_blas_thread, dtype):
    """Four threads share one LSTM (train, train=False, out=); each call takes a
    few ms. First with one batch size, then with two, so that the layer's
    buffers are reallocated under its lock while other threads wait for it."""
    rng = np.random.default_rng(1)
    D, H = 256, 256
    layer = lstmc.LSTM(*_weights(rng, D, H, dtype))
    cases = []
    for N in (96, 96, 64, 64):
        x, h, c = (rng.standard_normal((N, k)).astype(dtype) for k in (D, H, H))
        cases.append((x, h, c))
    modes = ("train", "infer", "out")

    def call(case, mode):
        x, h, c = case
        if mode == "train":
            return layer.forward(x, h, c)
        if mode == "infer":
            return layer.forward(x, h, c, train=False)
        out = (np.empty_like(h), np.empty_like(c))
        res = layer.forward(x, h, c, out=out, train=False)
        assert res[0] is out[0] and res[1] is out[1]
        return res

    want = {(k, m): [a.copy() for a in call(case, m)]
            for k, case in enumerate(cases) for m in modes}
    iters = 8
    for used in ([0, 1], [0, 1, 2, 3]):         # one batch size, then two
        mismatches = []

        def worker(tid, log):
            for it in range(iters):
                k, m = used[(tid + it) % len(used)], modes[(tid * 2 + it) % len(modes)]
                got = _timed(log, tid, lambda: call(cases[k], m))
                for g, w, name in zip(got, want[k, m], ("h", "c")):
                    if not np.array_equal(g, w):
                        mismatches.append((tid, it, k, m, name))

        log, failures = _run_threads(4, worker)
        assert not failures, failures[:3]
        assert len(log) == 4 * iters
        assert not mismatches, (used, mismatches[:5])
        assert _overlaps(log) >= iters, "the calls did not overlap: the test proves nothing"


def test_one_timelstm_shared_by_threads(one_blas_thread, dtype):
    """Four threads share one TimeLSTM, forward with and without train; each call
    takes a few ms (the sequence loop with its shared buffers)."""
    rng = np.random.default_rng(2)
    N, T, D, H = 8, 48, 128, 128
    layer = lstmc.TimeLSTM(*_weights(rng, D, H, dtype))
    inputs = [rng.standard_normal((N, T, D)).astype(dtype) for _ in range(4)]
    # a time-major array too: train=False reads its rows in place
    inputs.append(np.ascontiguousarray(inputs[0].transpose(1, 0, 2)).transpose(1, 0, 2) * 2)
    want = {(k, train): layer.forward(xs, train=train).copy()
            for k, xs in enumerate(inputs) for train in (False, True)}
    iters = 10
    mismatches = []

    def worker(tid, log):
        for it in range(iters):
            k, train = (tid + 2 * it) % len(inputs), bool((tid + it) % 2)
            got = _timed(log, tid, lambda: layer.forward(inputs[k], train=train))
            if not np.array_equal(got, want[k, train]):
                mismatches.append((tid, it, k, train))

    log, failures = _run_threads(4, worker)
    assert not failures, failures[:3]
    assert len(log) == 4 * iters
    assert not mismatches, mismatches[:5]
    assert _overlaps(log) >= iters, "the calls did not overlap: the test proves nothing"


# --------------------------------------------------------------------------
# backward while another thread runs forward on the same layer
# --------------------------------------------------------------------------


def _cell_setup(dtype, big=True):
    rng = np.random.default_rng(3)
    N, D, H = (64, 256, 256) if big else (3, 4, 5)
    layer = lstmc.LSTM(*_weights(rng, D, H, dtype))
    fwd = [tuple(rng.standard_normal((N, k)).astype(dtype) for k in (D, H, H)) for _ in range(3)]
    bwd = [tuple(rng.standard_normal((N, H)).astype(dtype) for _ in range(2)) for _ in range(3)]
    # want[j, i]: backward(bwd[i]) on the cache of forward(fwd[j])
    want = {}
    for j, f in enumerate(fwd):
        for i, b in enumerate(bwd):
            layer.forward(*f)
            out = layer.backward(*b)
            want[j, i] = [a.copy() for a in list(out) + layer.grads]
    return layer, fwd, bwd, want


def _time_setup(dtype, big=True):
    rng = np.random.default_rng(4)
    N, T, D, H = (8, 48, 128, 128) if big else (3, 6, 4, 5)
    layer = lstmc.TimeLSTM(*_weights(rng, D, H, dtype))
    fwd = [rng.standard_normal((N, T, D)).astype(dtype) for _ in range(3)]
    bwd = [rng.standard_normal((N, T, H)).astype(dtype) for _ in range(3)]
    want = {}
    for j, xs in enumerate(fwd):
        for i, dhs in enumerate(bwd):
            layer.forward(xs)
            dxs = layer.backward(dhs)
            want[j, i] = [a.copy() for a in [dxs, layer.dh] + layer.grads]
    return layer, fwd, bwd, want


def _forward(layer, f):
    return layer.forward(*f) if isinstance(f, tuple) else layer.forward(f)


def _backward(layer, b):
    if isinstance(layer, lstmc.LSTM):
        return list(layer.backward(*b))
    return [layer.backward(b), layer.dh]


@pytest.mark.parametrize("kind", ["LSTM", "TimeLSTM"])
def test_backward_concurrent_with_forward(one_blas_thread, dtype, kind):
    """Threads alternate forward and backward on one layer. Each backward returns
    exactly the backward of one of the forwards' caches (README: "its cache is the
    last forward's"), never a mixture, or raises the documented RuntimeError when
    a forward replaced the cache while it waited; the race does happen."""
    layer, fwd, bwd, want = (_cell_setup if kind == "LSTM" else _time_setup)(dtype)
    n_out = 3 if kind == "LSTM" else 2
    iters = 12
    outcomes = {"race": 0, "ok": 0}
    bad = []

    def worker(tid, log):
        for it in range(iters):
            j = i = (tid + it) % len(fwd)
            _timed(log, tid, lambda: _forward(layer, fwd[j]))
            try:
                got = _timed(log, tid, lambda: _backward(layer, bwd[i]))
            except RuntimeError as e:
                if _RACE not in str(e):
                    bad.append((tid, it, repr(e)))
                outcomes["race"] += 1
                continue
            outcomes["ok"] += 1
            if not any(all(np.array_equal(g, w) for g, w in zip(got, want[jj, i][:n_out]))
                       for jj in range(len(fwd))):
                bad.append((tid, it, "backward matches no forward's cache"))

    log, failures = _run_threads(3, worker)
    assert not failures, failures[:3]
    assert not bad, bad[:5]
    assert outcomes["ok"] + outcomes["race"] == 3 * iters
    # Both outcomes occur (measured: 11-31 races in 36 backwards): the race branch
    # runs. The deterministic test below reaches it on every run as well.
    assert outcomes["ok"] > 0 and outcomes["race"] > 0, outcomes
    assert _overlaps(log) >= iters, "the calls did not overlap: the test proves nothing"
    # the grads are those of one complete backward
    assert any(all(np.array_equal(g, w) for g, w in zip(layer.grads, want[jj, ii][n_out:]))
               for jj in range(len(fwd)) for ii in range(len(bwd)))


class _ForwardMeanwhile:
    """An array-like gradient: converting it (inside backward, before backward
    takes the layer's lock) runs a forward on the same layer in another thread."""

    def __init__(self, layer, f, value):
        self.layer, self.f, self.value, self.ran = layer, f, value, False

    def __array__(self, dtype=None, copy=None):
        t = threading.Thread(target=_forward, args=(self.layer, self.f))
        t.start()
        t.join()
        self.ran = True
        return self.value


@pytest.mark.parametrize("kind", ["LSTM", "TimeLSTM"])
def test_backward_raises_when_another_thread_ran_forward(dtype, kind):
    """The interleaving the lock alone cannot make safe, made deterministic: a
    forward from another thread completes between backward's start and its use
    of the cache. backward raises the RuntimeError and writes nothing; the next
    backward uses the new cache."""
    layer, fwd, bwd, want = (_cell_setup if kind == "LSTM" else _time_setup)(dtype, big=False)
    n_out = 3 if kind == "LSTM" else 2
    _forward(layer, fwd[0])
    grads = [g.copy() for g in layer.grads]
    grad_ids = [id(g) for g in layer.grads]
    if kind == "LSTM":
        sneaky = (_ForwardMeanwhile(layer, fwd[1], bwd[2][0]), bwd[2][1])
    else:
        sneaky = _ForwardMeanwhile(layer, fwd[1], bwd[2])
    dh_before = getattr(layer, "dh", None)
    with pytest.raises(RuntimeError, match=_RACE):
        _backward(layer, sneaky)
    assert (sneaky[0] if kind == "LSTM" else sneaky).ran
    assert [id(g) for g in layer.grads] == grad_ids
    for g, g0 in zip(layer.grads, grads):
        np.testing.assert_array_equal(g, g0)          # nothing was written
    if kind == "TimeLSTM":
        assert layer.dh is dh_before
    # the cache is now the other thread's forward, fwd[1]
    got = _backward(layer, bwd[2])
    for g, w in zip(got + layer.grads, want[1, 2][:n_out] + want[1, 2][n_out:]):
        np.testing.assert_array_equal(g, w)


# --------------------------------------------------------------------------
# the GIL is released during the numeric work of every call
# --------------------------------------------------------------------------


def _grow(make, seconds=0.06, limit=256):
    """make(k) -> a call whose cost grows with k; returns the call for the first
    power of two k (found by extrapolation) whose call takes `seconds`, and its time."""
    k = 1
    while True:
        call = make(k)
        call()                                   # warm up: buffers allocated
        t0 = time.perf_counter()
        call()
        one = time.perf_counter() - t0
        if one >= seconds or k >= limit:
            return call, one
        k = min(limit, k * 2 ** max(1, int(np.ceil(np.log2(1.3 * seconds / max(one, 1e-5))))))


def _cell_call(op):
    rng = np.random.default_rng(5)
    D = H = 512
    layer = lstmc.LSTM(*_weights(rng, D, H, np.float64))

    def make(k):
        N = 32 * k
        x, h, c = (rng.standard_normal((N, n)) for n in (D, H, H))
        if op == "forward":
            out = (np.empty((N, H)), np.empty((N, H)))
            return lambda: layer.forward(x, h, c, out=out, train=False)
        layer.forward(x, h, c)
        return lambda: layer.backward(h, c)
    return make


def _time_call(op):
    rng = np.random.default_rng(6)
    N, D, H = 16, 128, 256
    layer = lstmc.TimeLSTM(*_weights(rng, D, H, np.float64))

    def make(k):
        T = 25 * k
        xs = rng.standard_normal((N, T, D))
        if op == "forward":
            return lambda: layer.forward(xs)
        if op == "forward(train=False)":
            return lambda: layer.forward(xs, train=False)
        layer.forward(xs)
        dhs = rng.standard_normal((N, T, H))
        return lambda: layer.backward(dhs)
    return make


@pytest.mark.parametrize("which", [
    "LSTM.forward", "LSTM.backward",
    "TimeLSTM.forward", "TimeLSTM.forward(train=False)", "TimeLSTM.backward",
])
def test_gil_released(one_blas_thread, which):
    """Another Python thread keeps counting while large calls compute. Held, the
    GIL would let it run only between calls (a switch interval of 5 ms per call
    of >= 60 ms: under a tenth of the time); released, it runs throughout."""
    cls, op = which.split(".", 1)
    call, one = _grow((_cell_call if cls == "LSTM" else _time_call)(op))
    reps = int(min(8, max(3, np.ceil(0.25 / one))))

    def work():
        for _ in range(reps):
            call()

    busy, elapsed = count_while(work)
    idle, _ = count_while(lambda: time.sleep(elapsed))
    assert busy > 0.2 * idle, (which, busy, idle, reps, one)
