"""No leaks: repeated calls keep neither memory nor references.

Two complementary checks, on inference, training (forward + backward, LSTM and
TimeLSTM) and calls that raise:

- tracemalloc: NumPy reports its array data to tracemalloc, and Python objects
  are traced too, so memory still allocated after thousands of calls (after a
  warm-up, and gc) is what the calls leaked. The bound is well under one small
  array per call: the arrays here are (2, 4) float64, ~180 bytes with their
  object, so one leaked per call over 2000 calls is ~360 kB (1000 calls for
  the calls that raise); the bound is 16 kB (error paths measured up to 4.7 kB: exception bookkeeping, not a per-call array), which
  even one leaked small Python object (a 28-byte int) per call exceeds.
- sys.getrefcount: an extra reference to an object that stays alive anyway (the
  inputs, the out= arrays, params, grads, their lists, the layer) costs no memory
  but is a leak all the same (and keeps big arrays alive after the caller drops
  them); their counts must not change, and results must come back holding no
  reference but the caller's.
"""
import gc
import sys
import tracemalloc

import numpy as np
import pytest

import lstmc
from reference import random_weights

N, D, H, T = 2, 3, 4, 5
CALLS = 2000
BOUND = 16 << 10          # bytes kept over CALLS calls (one leaked (2, 4) array each: ~360 kB)


def _growth(fn, calls=CALLS):
    """Bytes still allocated (as traced) after `calls` more calls of fn, past a warm-up."""
    for _ in range(50):
        fn()
    tracemalloc.start()
    try:
        for _ in range(50):          # warm up again, traced: caches, free lists, tracemalloc's tables
            fn()
        gc.collect()
        base = tracemalloc.get_traced_memory()[0]
        for _ in range(calls):
            fn()
        gc.collect()
        return tracemalloc.get_traced_memory()[0] - base
    finally:
        tracemalloc.stop()


def _refcounts(objs):
    return [sys.getrefcount(o) for o in objs]


def _counts(*objs):
    """What sys.getrefcount(v) reports for each v at the call site: 2 for an
    object that only the caller's variable v holds (v, and getrefcount's argument)."""
    return [sys.getrefcount(o) - 2 for o in objs]


def _check(fn, watched, calls=CALLS):
    """fn's repeated calls leak neither memory nor references to `watched`."""
    fn()
    before = _refcounts(watched)
    grown = _growth(fn, calls)
    after = _refcounts(watched)
    changed = [(k, b, a) for k, (b, a) in enumerate(zip(before, after)) if a != b]
    assert not changed, f"reference counts changed (index, before, after): {changed}"
    assert grown < BOUND, f"{grown} bytes kept over {calls} calls"


def _raises(exc, fn, *args, match=None):
    def call():
        try:
            fn(*args)
        except exc as e:
            if match is not None:
                assert match in str(e), str(e)
        else:
            raise AssertionError(f"{fn} did not raise {exc.__name__}")
    return call


def _cell(dtype=np.float64):
    rng = np.random.default_rng(0)
    layer = lstmc.LSTM(*random_weights(rng, D, H, dtype))
    x, h, c, dh, dc = (rng.standard_normal((N, k)).astype(dtype) for k in (D, H, H, H, H))
    return layer, x, h, c, dh, dc


def _time(dtype=np.float64, stateful=False):
    rng = np.random.default_rng(1)
    layer = lstmc.TimeLSTM(*random_weights(rng, D, H, dtype), stateful=stateful)
    xs = rng.standard_normal((N, T, D)).astype(dtype)
    dhs = rng.standard_normal((N, T, H)).astype(dtype)
    return layer, xs, dhs


def _layer_objects(layer):
    """The layer, its lists and arrays (and its compiled scratch object, when it
    has one): nothing a call may keep an extra reference to."""
    objs = [layer, layer.params, layer.grads, *layer.params, *layer.grads]
    work = vars(layer).get("_work")
    return objs + ([work] if work is not None else [])


# --------------------------------------------------------------------------
# the bound is tight enough: a leaked (2, 4) array per call is caught
# --------------------------------------------------------------------------


def test_the_bound_catches_one_small_array_per_call():
    kept = []
    grown = _growth(lambda: kept.append(np.empty((N, H))))
    assert grown > 10 * BOUND, grown
    kept.clear()


# --------------------------------------------------------------------------
# LSTM
# --------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_cell_inference_with_out(dtype):
    layer, x, h, c, _, _ = _cell(dtype)
    out = (np.empty((N, H), dtype), np.empty((N, H), dtype))
    _check(lambda: layer.forward(x, h, c, out=out, train=False),
           [x, h, c, out, *out, *_layer_objects(layer)])


def test_cell_inference_and_results_hold_no_extra_reference():
    layer, x, h, c, dh, dc = _cell()
    _check(lambda: layer.forward(x, h, c, train=False), [x, h, c, *_layer_objects(layer)])
    h1, c1 = layer.forward(x, h, c, train=False)
    assert _counts(h1, c1) == [2, 2]


def test_cell_training():
    layer, x, h, c, dh, dc = _cell()

    def step():
        layer.forward(x, h, c)
        layer.backward(dh, dc)
    _check(step, [x, h, c, dh, dc, *_layer_objects(layer)])
    # results are fresh arrays that only the caller holds
    h1, c1 = layer.forward(x, h, c)
    dx, dhp, dcp = layer.backward(dh, dc)
    assert _counts(h1, c1, dx, dhp, dcp) == [2] * 5


def test_cell_training_in_place_streaming():
    """out= is the state itself (h, c updated in place), training: the private
    copies the cache keeps are reused, not accumulated."""
    layer, x, h, c, dh, dc = _cell()
    out = (h, c)

    def step():
        layer.forward(x, h, c, out=out)
        h[...] = np.tanh(h)                 # keep the state bounded
        layer.backward(dh, dc)
    _check(step, [x, h, c, dh, dc, out, *_layer_objects(layer)])


def test_cell_backward_only():
    """Backward alone, repeated on one cache (a leaked dx, dh_prev or dc_prev
    per call is the leak this catches)."""
    layer, x, h, c, dh, dc = _cell()
    layer.forward(x, h, c)
    cache = layer.cache                     # its content is the implementation's
    parts = list(cache) if isinstance(cache, (tuple, list)) else []
    _check(lambda: layer.backward(dh, dc), [dh, dc, cache, *parts, *_layer_objects(layer)])


def test_cell_argument_conversions():
    """Lists and layouts that are copied: the copies are dropped."""
    layer, x, h, c, dh, dc = _cell()
    xl = x.tolist()
    hf = np.asfortranarray(h)
    cn = c[::-1][::-1].copy()[::-1]           # negative row stride

    def step():
        layer.forward(xl, hf, cn)
        layer.backward(dh.tolist(), np.asfortranarray(dc))
    _check(step, [xl, hf, cn, *_layer_objects(layer)])


def _cell_error_calls():
    layer, x, h, c, dh, dc = _cell()
    fresh, *_ = _cell()
    x32 = x.astype(np.float32)
    swapped = x.astype(x.dtype.newbyteorder())
    big = np.broadcast_to(x[:1], (2 ** 31, x.shape[1]))   # more rows than BLAS takes
    ro = h.copy()
    ro.flags.writeable = False
    layer.forward(x, h, c)
    layer.backward(dh, dc)
    calls = {
        "forward dtype": _raises(TypeError, layer.forward, x32, h, c),
        "forward list dtype": _raises(TypeError, layer.forward, x, h, c.astype(int).tolist()),
        "forward byte order": _raises(TypeError, layer.forward, swapped, h, c),
        "forward shape": _raises(ValueError, layer.forward, x, h[:1], c),
        "forward too big": _raises(ValueError, layer.forward, big, h, c),
        "forward out dtype": _raises(TypeError, lambda: layer.forward(
            x, h, c, out=(h.astype(np.float32), c.copy()))),
        "forward out read-only": _raises(ValueError, lambda: layer.forward(x, h, c, out=(ro, c.copy()))),
        "forward out not a tuple": _raises(TypeError, lambda: layer.forward(x, h, c, out=[h, c])),
        "backward dtype": _raises(TypeError, layer.backward, dh.astype(np.float32), dc),
        "backward shape": _raises(ValueError, layer.backward, dh, dc[:, :2]),
        "backward before forward": _raises(RuntimeError, fresh.backward, dh, dc),
    }
    watched = [x, h, c, dh, dc, x32, swapped, big, ro, layer.cache,
               *_layer_objects(layer), *_layer_objects(fresh)]
    return calls, watched


@pytest.mark.parametrize("name", list(_cell_error_calls()[0]))
def test_cell_calls_that_raise(name):
    calls, watched = _cell_error_calls()
    _check(calls[name], watched, calls=CALLS // 2)


# --------------------------------------------------------------------------
# TimeLSTM
# --------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_time_inference(dtype):
    layer, xs, _ = _time(dtype)
    _check(lambda: layer.forward(xs, train=False), [xs, *_layer_objects(layer)])
    hs = layer.forward(xs, train=False)
    h, c = layer.h, layer.c
    assert _counts(hs, h, c) == [2, 3, 3]          # h, c: here and in the layer


def test_time_training():
    layer, xs, dhs = _time()

    def step():
        layer.forward(xs)
        layer.backward(dhs)
    _check(step, [xs, dhs, *_layer_objects(layer)])
    # xs is held by the cache (README: "a reference to xs"), exactly once
    hs = layer.forward(xs)
    dxs = layer.backward(dhs)
    h, c, dh = layer.h, layer.c, layer.dh
    assert _counts(hs, dxs, h, c, dh) == [2, 2, 3, 3, 3]
    held = sys.getrefcount(xs)
    layer.forward(xs.copy())
    assert sys.getrefcount(xs) == held - 1            # released with the cache


def test_time_training_stateful_over_calls():
    """A stateful layer carries h, c from call to call: the old states are freed."""
    layer, xs, dhs = _time(stateful=True)
    layer.set_state(np.zeros((N, H)), np.zeros((N, H)))

    def step():
        layer.forward(xs)
        layer.backward(dhs)
    _check(step, [xs, dhs, *_layer_objects(layer)])


def test_time_backward_only():
    layer, xs, dhs = _time()
    layer.forward(xs)
    _check(lambda: layer.backward(dhs), [xs, dhs, *_layer_objects(layer)])


def test_time_argument_conversions():
    layer, xs, dhs = _time()
    xl = xs.tolist()
    xf = np.asfortranarray(xs)

    def step():
        layer.forward(xl)
        layer.backward(np.asfortranarray(dhs))
        layer.forward(xf, train=False)
    _check(step, [xl, xf, dhs, *_layer_objects(layer)])


class _ForwardMeanwhile:
    """dhs whose conversion (inside backward) runs a forward on the same layer."""

    def __init__(self, layer, xs, dhs):
        self.layer, self.xs, self.dhs = layer, xs, dhs

    def __array__(self, dtype=None, copy=None):
        self.layer.forward(self.xs)
        return self.dhs


def _time_error_calls():
    layer, xs, dhs = _time(stateful=True)
    fresh, _, _ = _time()
    h0 = np.zeros((N, H))
    layer.set_state(h0, h0)
    layer.forward(xs)
    layer.backward(dhs)
    layer.set_state(h0, h0)
    xs32 = xs.astype(np.float32)
    swapped = xs.astype(xs.dtype.newbyteorder())
    sneaky = _ForwardMeanwhile(layer, xs, dhs)
    calls = {
        "forward dtype": _raises(TypeError, layer.forward, xs32),
        "forward byte order": _raises(TypeError, layer.forward, swapped),
        "forward shape": _raises(ValueError, layer.forward, xs[..., :2]),
        "forward batch differs from held state": _raises(ValueError, layer.forward, xs[:1]),
        "backward dtype": _raises(TypeError, layer.backward, dhs.astype(np.float32)),
        "backward shape": _raises(ValueError, layer.backward, dhs[:, :2]),
        "backward before forward": _raises(RuntimeError, fresh.backward, dhs),
        "backward, cache replaced meanwhile": _raises(
            RuntimeError, layer.backward, sneaky, match="cache changed"),
        "set_state shape": _raises(ValueError, layer.set_state, h0[:, :2]),
        "set_state dtype": _raises(TypeError, layer.set_state, h0, h0.astype(np.float32)),
    }
    watched = [xs, dhs, h0, xs32, swapped, sneaky, *_layer_objects(layer), *_layer_objects(fresh)]
    return calls, watched


@pytest.mark.parametrize("name", list(_time_error_calls()[0]))
def test_time_calls_that_raise(name):
    calls, watched = _time_error_calls()
    _check(calls[name], watched, calls=CALLS // 2)


@pytest.mark.parametrize("reverse", [False, True], ids=["forward", "reverse"])
def test_time_lengths_and_initial_state(reverse):
    """Lengths, h0 / c0 and reverse (the rows copied into the kernels' order and
    back): neither memory nor references kept, training and inference."""
    layer, xs, dhs = _time()
    layer.reverse = reverse
    lengths = np.array([T, 2])
    h0, c0 = np.ones((N, H)), np.full((N, H), 0.5)

    def step():
        layer.forward(xs, lengths=lengths, h0=h0, c0=c0)
        layer.backward(dhs)
        layer.forward(xs, lengths=lengths, h0=h0, c0=c0, train=False)
    _check(step, [xs, dhs, lengths, h0, c0, *_layer_objects(layer)])
    hs = layer.forward(xs, lengths=lengths, h0=h0, c0=c0)
    dxs = layer.backward(dhs)
    assert _counts(hs, dxs, layer.dc) == [2, 2, 3]
