"""Memory safety: whatever the caller does, lstmc never crashes the interpreter
and never returns a wrong answer without an error (the memory-safety issue).

Covered, each scenario that could crash run in a child interpreter
(``subproc.run``: a segfault or a hang fails the test, with the child's stderr):

1. ``params`` and ``grads`` replaced (not updated in place) by 4 threads while
   4 others call forward / backward on the same layer: every result is the
   single-threaded one, bit for bit (BLAS on one thread); freed memory is
   poisoned with NaN so that reading it shows, and checked so that writing it
   shows.
2. An argument whose ``__array__`` replaces ``params`` (or ``grads``): the call
   uses the weights as they are after converting its arguments.
3. A foreign ``cache`` (tuples of tiny arrays, any object, a cache object
   rebuilt through its pickle protocol with other state, the cache of a layer
   of another D, H or dtype) makes backward raise at N = H = 2048, changing
   nothing; the cache of another layer of the same D, H and dtype is used.
4. ``out=`` aliasing: overlapping outputs (with each other or with c_prev) raise
   ValueError and change nothing; the input arrays themselves, two halves of
   one buffer and an h_out over x give the reference result.
5. Saved caches stay valid: restoring an early step's cache gives that step's
   gradients; a cache nobody keeps is reused (no allocation per step).
6. A forward that runs out of memory (RLIMIT_AS) changes nothing: cache, held
   state and the next backward are as before.
7. Sizes are checked before any copy: 2**31 broadcast rows raise the "exceeds"
   ValueError at once, not MemoryError after a copy.
8. A row stride beyond 2**31 elements (rows 2**34 bytes apart, in a read-only
   mmap) is accepted: such rows are copied.
9. A program that ends while a daemon thread is inside a call exits with 0.
10. Calls from an atexit handler that runs after lstmc's own still compute.
11. An xs that TimeLSTM kept for its backward, lying in grads: backward raises
    ValueError and changes nothing.
"""
import json
import tracemalloc

import numpy as np
import pytest

import lstmc
import subproc
from optional import require
from reference import (Snapshot, assert_close, cell_backward, cell_forward, random_weights,
                       time_backward, time_forward)

# --------------------------------------------------------------------------
# 1. params and grads replaced by other threads during calls
# --------------------------------------------------------------------------

_STRESS = r"""
import json, sys, threading, time
import numpy as np
import scipy.linalg  # noqa: F401  (SciPy's BLAS loaded, for threadpoolctl to limit it)
import threadpoolctl
import lstmc

kind, dtype, seconds = sys.argv[1], np.dtype(sys.argv[2]), float(sys.argv[3])
RACE = "the cache changed under this call"
NO_CACHE = "needs the cache of a forward"
threadpoolctl.threadpool_limits(limits=1)        # bit-identical results, call to call
rng = np.random.default_rng(14)
N, T, D, H = 8, 20, 64, 64                       # about a millisecond a call
params = [(rng.standard_normal(s) * 0.2).astype(dtype) for s in ((D, 4 * H), (H, 4 * H), (4 * H,))]
if kind == "LSTM":
    layer = lstmc.LSTM(*[p.copy() for p in params])
    args = tuple(rng.standard_normal((N, k)).astype(dtype) for k in (D, H, H))
    dargs = tuple(rng.standard_normal((N, H)).astype(dtype) for _ in range(2))
    forward = lambda train: list(layer.forward(*args, train=train))
    backward = lambda: list(layer.backward(*dargs))
else:
    layer = lstmc.TimeLSTM(*[p.copy() for p in params])
    xs = rng.standard_normal((N, T, D)).astype(dtype)
    dhs = rng.standard_normal((N, T, H)).astype(dtype)
    forward = lambda train: [layer.forward(xs, train=train)]
    backward = lambda: [layer.backward(dhs), layer.dh]

# The single-threaded results. After this backward, every backward writes the
# same values into grads, so what a thread reads there is never half-written.
want = {False: [a.copy() for a in forward(False)], True: [a.copy() for a in forward(True)]}
want_bwd = [a.copy() for a in backward()]
want_grads = [g.copy() for g in layer.grads]

stop = threading.Event()
bwd_lock = threading.Lock()      # backward + reading grads, atomic among the callers
stats = {"forward": 0, "backward": 0, "race": 0, "no_cache": 0, "replaced": 0, "poisoned": 0}
bad = []


def caller(tid):
    it = 0
    while not stop.is_set():
        it += 1
        train = (tid + it) % 4 != 0                # a quarter of the forwards: inference
        got = forward(train)
        stats["forward"] += 1
        if not all(np.array_equal(g, w) for g, w in zip(got, want[train])):
            bad.append(("forward", train, tid, it))
        if not train:
            continue
        with bwd_lock:
            try:
                got = backward()
            except RuntimeError as e:
                # a forward of another thread replaced the cache meanwhile
                # (RACE), or dropped it (train=False: no cache)
                outcome = "race" if RACE in str(e) else "no_cache" if NO_CACHE in str(e) else None
                if outcome is None:
                    bad.append(("backward raised", repr(e)[:300]))
                else:
                    stats[outcome] += 1
                continue
            stats["backward"] += 1
            if not all(np.array_equal(g, w) for g, w in zip(got, want_bwd)):
                bad.append(("backward", tid, it))
            if not all(np.array_equal(g, w) for g, w in zip(layer.grads, want_grads)):
                bad.append(("grads after backward", tid, it))


def replacer(tid):
    # Equal copies replace the arrays; the memory of the old ones is freed
    # (unless a call holds them) and at once reused by arrays of NaN of the
    # same size: a call that reads freed weights gets NaN, one that writes
    # freed gradients spoils the NaN.
    junk = []
    r = np.random.default_rng(tid)
    while not stop.is_set():
        k = int(r.integers(3))
        if r.integers(2):
            layer.params[k] = params[k].copy()
        else:
            layer.grads[k] = want_grads[k].copy()
        stats["replaced"] += 1
        junk.append(np.full_like(params[k], np.nan))
        if len(junk) > 6:
            stats["poisoned"] += int(not np.isnan(junk.pop(0)).all())
    stats["poisoned"] += sum(int(not np.isnan(j).all()) for j in junk)


def guarded(fn, tid):
    try:
        fn(tid)
    except BaseException as e:  # noqa: BLE001 - reported below
        bad.append(("exception", fn.__name__, tid, repr(e)[:300]))
        stop.set()


threads = [threading.Thread(target=guarded, args=(fn, k))
           for k in range(4) for fn in (caller, replacer)]
for t in threads:
    t.start()
time.sleep(seconds)
stop.set()
for t in threads:
    t.join()

# Alone again: the weights are the same values, the next calls are exact.
final = forward(True) + backward() + list(layer.grads) + list(layer.params)
expect = want[True] + want_bwd + want_grads + params
stats["final_exact"] = all(np.array_equal(g, w) for g, w in zip(final, expect))
stats["bad"] = bad[:10]
stats["n_bad"] = len(bad)
print(json.dumps(stats))
"""


@pytest.mark.parametrize("kind", ["LSTM", "TimeLSTM"])
def test_params_and_grads_replaced_while_other_threads_call(dtype, kind):
    """4 threads replace params[k] and grads[k] with equal copies for 2.5 s
    while 4 threads run forward (train and not) and backward on the same layer:
    every result, and the grads after every backward, are exactly the
    single-threaded ones (a backward may instead raise the documented
    RuntimeError when another thread's forward replaced the cache, or dropped it
    with train=False); no freed array is written."""
    require("threadpoolctl")
    out = subproc.run(_STRESS, kind, dtype.name, 2.5, timeout=120)
    stats = json.loads(out.splitlines()[-1])
    assert stats["n_bad"] == 0, out
    assert stats["poisoned"] == 0, f"a call wrote into freed memory: {out}"
    assert stats["final_exact"], out
    # it did happen: many calls, many replacements while they ran
    assert stats["forward"] >= 200 and stats["backward"] >= 30, out
    assert stats["replaced"] >= 1000, out


# --------------------------------------------------------------------------
# 2. an argument whose __array__ replaces params or grads
# --------------------------------------------------------------------------

_SWAP = r"""
import sys
import numpy as np
import lstmc
from reference import (assert_close, cell_backward, cell_forward, random_weights,
                       time_backward, time_forward)

dtype = np.dtype(sys.argv[1])


class Swap:
    # An array-like whose conversion (inside the call) replaces layer.<attr>[k]
    # by a new array (made by new()), freeing the old one.
    def __init__(self, value, layer, attr, k, new):
        self.value, self.layer, self.attr, self.k, self.new = value, layer, attr, k, new
        self.ran = 0

    def __array__(self, dtype=None, copy=None):
        lst = getattr(self.layer, self.attr)
        lst[self.k] = self.new(lst[self.k])
        self.ran += 1
        return self.value


rng = np.random.default_rng(2)
N, T, D, H = 3, 4, 5, 6
W0 = random_weights(rng, D, H, dtype)
other = random_weights(rng, D, H, dtype)        # different values, same shapes
x, h, c = (rng.standard_normal((N, k)).astype(dtype) for k in (D, H, H))
dh, dc = (rng.standard_normal((N, H)).astype(dtype) for _ in range(2))
zeros = lambda a: np.zeros_like(a)

# --- the cell's forward: through x (converted first) and c_prev (last)
for pos in (0, 2):
    for k, new in ((1, zeros), (1, lambda a: other[1].copy()), (0, lambda a: other[0].copy()),
                   (2, zeros)):
        cell = lstmc.LSTM(*[w.copy() for w in W0])
        a = [x, h, c]
        a[pos] = Swap(a[pos], cell, "params", k, new)
        got = cell.forward(*a)
        assert a[pos].ran, "__array__ was not called"
        Wx, Wh, b = cell.params                 # as they are after the conversion
        want = cell_forward(x, h, c, Wx, Wh, b)
        for g, w, name in zip(got, want, ("h_next", "c_next")):
            assert_close(g, w, dtype, err_msg=f"forward, arg {pos}, params[{k}] replaced: {name}")
        # the cache is the one of that forward: backward with the same weights
        got = cell.backward(dh, dc)
        want = cell_backward(dh, dc, want[2], Wx, Wh)
        for g, w in zip(list(got) + cell.grads, want):
            assert_close(g, w, dtype, err_msg=f"backward after arg {pos}, params[{k}]")

# --- the cell's backward: params and grads replaced while dh_next is converted
for attr, k, new in (("params", 1, lambda a: other[1].copy()), ("params", 0, zeros),
                     ("grads", 0, zeros), ("grads", 1, zeros), ("grads", 2, zeros)):
    cell = lstmc.LSTM(*[w.copy() for w in W0])
    cell.forward(x, h, c)
    _, _, cache = cell_forward(x, h, c, *W0)
    sneaky = Swap(dh, cell, attr, k, new)
    got = cell.backward(sneaky, dc)
    assert sneaky.ran
    want = cell_backward(dh, dc, cache, *cell.params[:2])
    for g, w in zip(list(got) + cell.grads, want):
        assert_close(g, w, dtype, err_msg=f"backward, {attr}[{k}] replaced")

# --- TimeLSTM: forward through xs, backward through dhs
xs = rng.standard_normal((N, T, D)).astype(dtype)
dhs = rng.standard_normal((N, T, H)).astype(dtype)
for k, new in ((1, zeros), (1, lambda a: other[1].copy()), (0, lambda a: other[0].copy())):
    layer = lstmc.TimeLSTM(*[w.copy() for w in W0])
    got = layer.forward(Swap(xs, layer, "params", k, new))
    Wx, Wh, b = layer.params
    hs, _, _, caches = time_forward(xs, Wx, Wh, b)
    assert_close(got, hs, dtype, err_msg=f"TimeLSTM forward, params[{k}] replaced")
    got = layer.backward(Swap(dhs, layer, "params", 1, lambda a: other[1].copy()))
    dxs, dWx, dWh, db, dh0, _ = time_backward(dhs, caches, layer.params[0], layer.params[1])
    for g, w in zip([got, layer.dh] + layer.grads, [dxs, dh0, dWx, dWh, db]):
        assert_close(g, w, dtype, err_msg=f"TimeLSTM backward after params[{k}] replaced")
    layer.forward(xs)
    _, _, _, caches = time_forward(xs, *layer.params)
    got = layer.backward(Swap(dhs, layer, "grads", k, zeros))
    dxs, dWx, dWh, db, dh0, _ = time_backward(dhs, caches, layer.params[0], layer.params[1])
    for g, w in zip([got, layer.dh] + layer.grads, [dxs, dh0, dWx, dWh, db]):
        assert_close(g, w, dtype, err_msg=f"TimeLSTM backward, grads[{k}] replaced")

# --- replaced by an array of the wrong shape: an exception, no crash
for make in (lambda: lstmc.LSTM(*[w.copy() for w in W0]),
             lambda: lstmc.TimeLSTM(*[w.copy() for w in W0])):
    layer = make()
    arg = x if isinstance(layer, lstmc.LSTM) else xs
    sneaky = Swap(arg, layer, "params", 1, lambda a: np.zeros((1, 1), dtype))
    try:
        layer.forward(sneaky, h, c) if isinstance(layer, lstmc.LSTM) else layer.forward(sneaky)
    except (ValueError, TypeError):
        pass
    else:
        raise AssertionError(f"{type(layer).__name__}: params[1] replaced by a (1, 1) array "
                             "during the call, and no exception")
print("OK")
"""


def test_array_conversion_that_replaces_params_or_grads(dtype):
    """An argument whose __array__ replaces params[k] (zeros, or other values)
    or grads[k]: no crash, and the call computes with the arrays as they are
    after the conversion (forward and backward of both layers); one replaced by
    a wrongly shaped array raises."""
    assert subproc.run(_SWAP, dtype.name, timeout=120).split() == ["OK"]


# --------------------------------------------------------------------------
# 3. a foreign cache
# --------------------------------------------------------------------------

_FOREIGN = r"""
import sys
import numpy as np
import lstmc

rng = np.random.default_rng(3)
f32 = np.float32
N = H = 2048                 # reading a (1, 1) array as (N, H) leaves the heap
D = 8


def weights(D, H, dtype):
    return [(rng.standard_normal(s) * 0.05).astype(dtype)
            for s in ((D, 4 * H), (H, 4 * H), (4 * H,))]


def run_forward(layer, n):
    layer.forward(*(rng.standard_normal((n, k)).astype(layer.dtype)
                    for k in (layer.input_size, layer.hidden_size, layer.hidden_size)))
    return layer.cache


cell = lstmc.LSTM(*weights(D, H, f32))
real = run_forward(cell, N)
grads = list(cell.grads)
tiny = lambda: np.zeros((1, 1), f32)
foreign = [
    ("a tuple of 5 (1, 1) arrays", tuple(tiny() for _ in range(5))),
    ("a tuple of 8 (1, 1) arrays", tuple(tiny() for _ in range(8))),
    ("an object()", object()),
    ("a string", "cache"),
    ("an empty tuple", ()),
]
if isinstance(real, tuple):
    # the real cache with one entry replaced by a tiny array, or by a
    # float64 array of the right shape
    for i, a in enumerate(real):
        for what, new in (("(1, 1)", tiny()),
                          ("float64", np.zeros(getattr(a, "shape", (1, 1)), np.float64))):
            fake = list(real)
            fake[i] = new
            foreign.append((f"the real cache with entry {i} {what}", tuple(fake)))


def rebuilt(real):
    # The cache object rebuilt through its own pickle protocol (which anyone
    # may call) with altered state: the arrays swapped for (1, 1) ones, one
    # integer doubled (N, D, H, a type number...).
    try:
        red = real.__reduce_ex__(2)
    except Exception:  # noqa: BLE001 - not reducible: nothing to alter
        return []
    if not (isinstance(red, tuple) and len(red) >= 3 and isinstance(red[2], tuple)):
        return []
    state = red[2]
    arrays = [i for i, v in enumerate(state) if isinstance(v, np.ndarray)]
    variants = [("every array (1, 1)", {i: np.zeros((1, 1), state[i].dtype) for i in arrays})]
    variants += [(f"state[{i}] (1, 1)", {i: np.zeros((1, 1), state[i].dtype)}) for i in arrays]
    variants += [(f"state[{i}] doubled", {i: 2 * v}) for i, v in enumerate(state) if type(v) is int]
    made = []
    for name, change in variants:
        try:
            obj = red[0](*red[1])
            setstate = getattr(obj, "__setstate__", None) or obj.__setstate_cython__
            setstate(tuple(change.get(i, v) for i, v in enumerate(state)))
        except Exception:  # noqa: BLE001 - refused: as good as raising in backward
            continue
        made.append((f"the cache rebuilt (pickle protocol) with {name}", obj))
    return made


foreign += rebuilt(real)
foreign += [
    ("the cache of a layer with H = 256", run_forward(lstmc.LSTM(*weights(D, 256, f32)), N)),
    ("the cache of a layer with D = 4", run_forward(lstmc.LSTM(*weights(4, H, f32)), 4)),
    ("the cache of a layer with D = 64", run_forward(lstmc.LSTM(*weights(64, H, f32)), 4)),
    ("the cache of a float64 layer", run_forward(lstmc.LSTM(*weights(D, H, np.float64)), 4)),
]
failures = []
for name, cache in foreign:
    for n in (N, 2 * N, 4):
        cell.cache = cache
        dh, dc = np.ones((n, H), f32), np.ones((n, H), f32)
        print(f"backward on {name}, dh of {n} rows", file=sys.stderr, flush=True)  # if it crashes
        try:
            cell.backward(dh, dc)
        except (RuntimeError, ValueError, TypeError):
            pass
        else:
            failures.append(f"{name}, dh of {n} rows: no exception")
        if cell.cache is not cache:
            failures.append(f"{name}: the cache was replaced")
        if any(g is not g0 for g, g0 in zip(cell.grads, grads)) or any(g.any() for g in grads):
            failures.append(f"{name}: grads changed")
assert not failures, failures
print("OK")
"""


def test_foreign_cache_raises_and_changes_nothing():
    """cell.cache set to tuples of (1, 1) arrays, to any object, to the real
    cache with one entry swapped (a tuple cache) or rebuilt through its pickle
    protocol with altered state (arrays (1, 1), N doubled...), or to the cache
    of a layer of another H, D or dtype: backward at N = H = 2048 (dh of N, 2N
    or 4 rows) raises (RuntimeError, ValueError or TypeError), does not crash,
    and leaves grads (zeros) and cache as they were."""
    assert subproc.run(_FOREIGN, timeout=120).split() == ["OK"]


_SHARED_CACHE = r"""
import numpy as np
import lstmc
from reference import assert_close, cell_backward, cell_forward, random_weights

rng = np.random.default_rng(4)
N, D, H = 3, 4, 5
for dtype in (np.float32, np.float64):
    a = lstmc.LSTM(*random_weights(rng, D, H, dtype))
    b = lstmc.LSTM(*random_weights(rng, D, H, dtype))
    x, h, c = (rng.standard_normal((N, k)).astype(dtype) for k in (D, H, H))
    dh, dc = (rng.standard_normal((N, H)).astype(dtype) for _ in range(2))
    a.forward(x, h, c)
    b.forward(h[:, :D] * 2, c, h)            # b's own cache, replaced below
    b.cache = a.cache
    got = b.backward(dh, dc)
    _, _, cache = cell_forward(x, h, c, *a.params)
    want = cell_backward(dh, dc, cache, *b.params[:2])
    names = ("dx", "dh_prev", "dc_prev", "dWx", "dWh", "db")
    for g, w, name in zip(list(got) + b.grads, want, names):
        assert_close(g, w, dtype, err_msg=name)
    assert not any(g.any() for g in a.grads)   # a's grads untouched
print("OK")
"""


def test_cache_of_another_layer_of_the_same_sizes_is_used():
    """b.cache = a.cache (same D, H, dtype, other weights): b.backward computes
    the gradients of a's forward with b's weights (both dtypes)."""
    assert subproc.run(_SHARED_CACHE, timeout=60).split() == ["OK"]


# --------------------------------------------------------------------------
# 4. out= aliasing
# --------------------------------------------------------------------------


def _cell_case(dtype, N=3, H=5):
    """A cell with D == H (so that h_out can lie over x) that holds a cache,
    and inputs for the next call."""
    rng = np.random.default_rng(40)
    Wx, Wh, b = random_weights(rng, H, H, dtype)
    cell = lstmc.LSTM(Wx, Wh, b)
    x, h, c = (rng.standard_normal((N, H)).astype(dtype) for _ in range(3))
    cell.forward(x * 0.5, h, c)                 # a cache to keep
    dh, dc = (rng.standard_normal((N, H)).astype(dtype) for _ in range(2))
    return cell, x, h, c, dh, dc


def _refuses(cell, x, h, c, out, train, match=None):
    buffers = [np.array(a, copy=True) for a in (x, h, c) + tuple(out)]
    snap = Snapshot(cell)
    with pytest.raises(ValueError, match=match):
        cell.forward(x, h, c, out=out, train=train)
    snap.assert_unchanged(cell)
    for a, a0 in zip((x, h, c) + tuple(out), buffers):
        np.testing.assert_array_equal(a, a0)    # nothing written


@pytest.mark.parametrize("train", [True, False], ids=["train", "infer"])
def test_out_same_buffer_twice_raises(dtype, train):
    """out=(buf, buf): ValueError naming out; no buffer, cache or grads changed."""
    cell, x, h, c, _, _ = _cell_case(dtype)
    buf = np.full_like(h, 7)
    _refuses(cell, x, h, c, (buf, buf), train, match="out")
    big = np.full(h.size + 1, 7, dtype)         # the two outputs overlap by all but one
    _refuses(cell, x, h, c, (big[:-1].reshape(h.shape), big[1:].reshape(h.shape)), train,
             match="out")


def _shifted_over_c_prev(c, which):
    """(c_prev, out) with out[which] over c_prev shifted by one element."""
    big = np.zeros(c.size + 1, c.dtype)
    big[:-1] = c.ravel()
    c_prev, over = big[:-1].reshape(c.shape), big[1:].reshape(c.shape)
    return c_prev, ((over, np.empty_like(c)) if which == "h_out" else (np.empty_like(c), over))


@pytest.mark.parametrize("which", ["c_out", "h_out"])
def test_out_overlapping_c_prev_raises_without_train(dtype, which):
    """train=False reads c_prev while it writes: c_out or h_out over c_prev
    shifted by one element raises ValueError naming out; nothing changed."""
    cell, x, h, c, _, _ = _cell_case(dtype)
    c_prev, out = _shifted_over_c_prev(c, which)
    _refuses(cell, x, h, c_prev, out, False, match="out")


@pytest.mark.parametrize("which", ["c_out", "h_out"])
def test_out_overlapping_c_prev_in_training_is_computed_right(dtype, which):
    """Training reads private copies of its inputs: the same overlaps (which the
    issue allows to "compute correctly or raise") either raise ValueError and
    change nothing, or give the reference forward and backward."""
    cell, x, h, c, dh, dc = _cell_case(dtype)
    c_prev, out = _shifted_over_c_prev(c, which)
    want_h, want_c, cache = cell_forward(x, h, c, *cell.params)
    snap, before = Snapshot(cell), [a.copy() for a in out]
    try:
        got = cell.forward(x, h, c_prev, out=out)
    except ValueError:
        snap.assert_unchanged(cell)
        for a, a0 in zip(out, before):
            np.testing.assert_array_equal(a, a0)
        return
    assert_close(got[0], want_h, dtype, err_msg="h_next")
    assert_close(got[1], want_c, dtype, err_msg="c_next")
    want = cell_backward(dh, dc, cache, *cell.params[:2])
    for g, w in zip(list(cell.backward(dh, dc)) + cell.grads, want):
        assert_close(g, w, dtype)


def _aliased(kind, x, h, c):
    """(x, h_prev, c_prev, out) of an allowed aliasing, holding the values x, h, c."""
    N, H = h.shape
    if kind == "inputs":                        # out=(h_prev, c_prev): the very inputs
        h_prev, c_prev = h.copy(), c.copy()
        return x.copy(), h_prev, c_prev, (h_prev, c_prev)
    if kind == "halves":                        # one (N, 2H) buffer, interleaved rows
        hc = np.full((N, 2 * H), np.nan, h.dtype)
        return x.copy(), h.copy(), c.copy(), (hc[:, :H], hc[:, H:])
    if kind == "h_out is x":
        x_in = x.copy()
        return x_in, h.copy(), c.copy(), (x_in, np.empty_like(c))
    if kind == "h_out over x shifted":          # x is read before anything is written
        big = np.zeros(x.size + 1, x.dtype)
        big[:-1] = x.ravel()
        return big[:-1].reshape(x.shape), h.copy(), c.copy(), (big[1:].reshape(h.shape),
                                                              np.empty_like(c))
    raise ValueError(kind)


@pytest.mark.parametrize("train", [True, False], ids=["train", "infer"])
@pytest.mark.parametrize("kind", ["inputs", "halves", "h_out is x", "h_out over x shifted"])
def test_out_allowed_aliasing_gives_the_reference(dtype, kind, train):
    """Outputs that are the inputs themselves, two halves of one buffer, or lie
    over x: the result (and, in training, the backward) is the reference's,
    computed from the inputs as they were before the call."""
    cell, x, h, c, dh, dc = _cell_case(dtype)
    x_in, h_in, c_in, out = _aliased(kind, x, h, c)
    want_h, want_c, cache = cell_forward(x, h, c, *cell.params)
    got = cell.forward(x_in, h_in, c_in, out=out, train=train)
    assert got[0] is out[0] and got[1] is out[1]
    assert_close(got[0], want_h, dtype, err_msg="h_next")
    assert_close(got[1], want_c, dtype, err_msg="c_next")
    if train:
        want = cell_backward(dh, dc, cache, *cell.params[:2])
        for g, w in zip(list(cell.backward(dh, dc)) + cell.grads, want):
            assert_close(g, w, dtype)
    else:
        assert cell.cache is None


# --------------------------------------------------------------------------
# 5. saved caches stay valid; an unkept cache is reused
# --------------------------------------------------------------------------


def test_saved_caches_give_their_own_steps_gradients(dtype):
    """One cell over 4 steps, each step's cache kept: restoring step k's cache
    gives step k's gradients (in any order), not the last step's."""
    rng = np.random.default_rng(50)
    N, D, H, steps = 3, 4, 5, 4
    Wx, Wh, b = random_weights(rng, D, H, dtype)
    cell = lstmc.LSTM(Wx, Wh, b)
    h, c = np.zeros((N, H), dtype), np.zeros((N, H), dtype)
    saved, ref_caches = [], []
    for _ in range(steps):
        x = rng.standard_normal((N, D)).astype(dtype)
        ref_caches.append(cell_forward(x, h, c, Wx, Wh, b)[2])
        h, c = cell.forward(x, h, c)
        saved.append(cell.cache)
    assert len({id(s) for s in saved}) == steps      # kept: four distinct caches
    for k in (1, 0, 2, 3, 0):
        dh, dc = (rng.standard_normal((N, H)).astype(dtype) for _ in range(2))
        cell.cache = saved[k]
        got = list(cell.backward(dh, dc)) + cell.grads
        want = cell_backward(dh, dc, ref_caches[k], Wx, Wh)
        for g, w, name in zip(got, want, ("dx", "dh_prev", "dc_prev", "dWx", "dWh", "db")):
            assert_close(g, w, dtype, err_msg=f"step {k}: {name}")


def test_an_unkept_cache_is_reused():
    """Training forwards at the same N, the cache kept by nobody else: the same
    cache object every time, and no allocation per call (tracemalloc, with
    out=: under half of an (N, H) array of peak, against a stand-in)."""
    rng = np.random.default_rng(51)
    N, D, H = 32, 16, 128
    cell = lstmc.LSTM(*random_weights(rng, D, H, np.float64))
    x, h, c = (rng.standard_normal((N, k)) for k in (D, H, H))
    out = (np.empty((N, H)), np.empty((N, H)))
    cell.forward(x, h, c, out=out)
    first = id(cell.cache)
    for _ in range(3):
        cell.forward(x, h, c, out=out)
        assert id(cell.cache) == first, "a training forward made a new cache"
    kept = cell.cache
    cell.forward(x, h, c, out=out)
    assert cell.cache is not kept                # someone holds it: a new one
    del kept

    def stand_in(x, h_prev, c_prev, *, out=None, train=True):
        return out

    def peak(fn, calls=100):
        fn(x, h, c, out=out)
        fn(x, h, c, out=out)
        tracemalloc.start()
        try:
            base = tracemalloc.get_traced_memory()[0]
            tracemalloc.reset_peak()
            for _ in range(calls):
                fn(x, h, c, out=out)
            return tracemalloc.get_traced_memory()[1] - base
        finally:
            tracemalloc.stop()

    got = min(peak(cell.forward) for _ in range(3))
    noise = min(peak(stand_in) for _ in range(3))
    assert got < noise + N * H * 8 // 2, (got, noise)


# --------------------------------------------------------------------------
# 6, 7. out of memory; sizes checked before any copy
# --------------------------------------------------------------------------

# The child's prologue: a cell and a stateful TimeLSTM that have run forward and
# backward, their results kept, then the address space limited to what the
# process uses now plus 300 MB.
_LIMITED = r"""
import resource, sys
import numpy as np
import lstmc

rng = np.random.default_rng(6)
D = H = 64
W = [(rng.standard_normal(s) * 0.1) for s in ((D, 4 * H), (H, 4 * H), (4 * H,))]
cell = lstmc.LSTM(*[w.copy() for w in W])
x, h, c = (rng.standard_normal((2, k)) for k in (D, H, H))
dh, dc = np.ones((2, H)), np.ones((2, H))
cell.forward(x, h, c)
cell_cache = cell.cache
cell_before = [a.copy() for a in cell.backward(dh, dc)] + [g.copy() for g in cell.grads]

seq = lstmc.TimeLSTM(*[w.copy() for w in W], stateful=True)
xs = rng.standard_normal((2, 5, D))
dhs = np.ones((2, 5, H))
seq.forward(xs)
seq.forward(xs)                                  # from a held state
seq_h, seq_c = seq.h, seq.c
seq_hc = (seq.h.copy(), seq.c.copy())
seq_before = [seq.backward(dhs).copy(), seq.dh.copy()] + [g.copy() for g in seq.grads]

x_big, h_big, c_big = (np.zeros((200_000, k)) for k in (D, H, H))
xs_big = np.zeros((2, 125_000, D))
with open("/proc/self/status") as f:
    vm = next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmSize:"))
hard = resource.getrlimit(resource.RLIMIT_AS)[1]
resource.setrlimit(resource.RLIMIT_AS, (vm + (300 << 20), hard))


def unchanged(what):
    assert cell.cache is cell_cache, f"{what}: the cell's cache was replaced"
    got = list(cell.backward(dh, dc)) + list(cell.grads)
    assert all(np.array_equal(g, w) for g, w in zip(got, cell_before)), \
        f"{what}: the cell's backward changed"
    assert seq.h is seq_h and seq.c is seq_c, f"{what}: the held state was replaced"
    assert np.array_equal(seq.h, seq_hc[0]) and np.array_equal(seq.c, seq_hc[1])
    got = [seq.backward(dhs), seq.dh] + list(seq.grads)
    assert all(np.array_equal(g, w) for g, w in zip(got, seq_before)), \
        f"{what}: the TimeLSTM's backward changed"
"""

_OUT_OF_MEMORY = _LIMITED + r"""
# Buffers of ~0.4, ~0.6 and ~1 GB, from inputs allocated before the limit (so
# only the layer's own buffers count against the 300 MB margin): each call runs
# out of memory at another stage of setting up its buffers.
for n in (80_000, 120_000, 200_000):             # the cell: 5 KB of buffers a row
    try:
        cell.forward(x_big[:n], h_big[:n], c_big[:n])
    except (MemoryError, ValueError) as e:
        print("cell", n, type(e).__name__)
    else:
        raise AssertionError(f"the cell's forward of {n} rows succeeded under a 300 MB margin")
    unchanged(f"cell forward of {n} rows out of memory")
for t in (50_000, 75_000, 125_000):              # the held state's N, 4 KB a step
    try:
        seq.forward(xs_big[:, :t])
    except (MemoryError, ValueError) as e:
        print("TimeLSTM", t, type(e).__name__)
    else:
        raise AssertionError(f"the TimeLSTM's forward of {t} steps succeeded under a 300 MB margin")
    unchanged(f"TimeLSTM forward of {t} steps out of memory")
print("OK")
"""


def test_forward_out_of_memory_changes_nothing():
    """With the address space limited, forwards that need 0.4 to 1 GB of
    buffers raise MemoryError (or ValueError); the cell's cache is the same
    object, its backward and the TimeLSTM's (held state, backward) are as
    before."""
    out = subproc.run(_OUT_OF_MEMORY, timeout=120)
    assert out.split()[-1] == "OK", out


_EXCEEDS = _LIMITED + r"""
import time


def refused(what, call):
    try:
        call()
    except ValueError as e:
        assert "exceeds" in str(e), f"{what}: {e!r}"
    else:
        raise AssertionError(f"{what}: no exception")


stateless = lstmc.TimeLSTM(*[w.copy() for w in W])
stateless.forward(xs)
n = 2 ** 31
t0 = time.perf_counter()
refused("cell, 2**31 rows", lambda: cell.forward(
    np.broadcast_to(x[:1], (n, D)), np.broadcast_to(h[:1], (n, H)), np.broadcast_to(c[:1], (n, H))))
unchanged("cell forward of 2**31 rows")
refused("TimeLSTM, 2**31 sequences",
        lambda: stateless.forward(np.broadcast_to(xs[:1, :1], (n, 1, D))))
refused("TimeLSTM, 2**31 steps", lambda: stateless.forward(np.broadcast_to(xs[:1, :1], (1, n, D))))
assert stateless.h.shape == (2, H)               # the last good forward's state
unchanged("TimeLSTM forward of 2**31 rows")
print(f"OK {time.perf_counter() - t0:.3f}")
"""


def test_sizes_beyond_blas_are_refused_before_any_copy():
    """With the address space limited, 2**31 broadcast rows (cell x; TimeLSTM
    sequences, and steps) raise the ValueError that says a size "exceeds" what
    BLAS can index, at once: not a MemoryError after trying to copy them.
    Nothing changes."""
    out = subproc.run(_EXCEEDS, timeout=120)
    assert out.split()[0] == "OK", out
    assert float(out.split()[1]) < 5, f"refusing took {out.split()[1]} s: something was copied"


# --------------------------------------------------------------------------
# 8. row strides beyond 2**31 elements
# --------------------------------------------------------------------------

_HUGE_STRIDE = r"""
import mmap
import numpy as np
import lstmc

try:
    m = mmap.mmap(-1, 2 ** 34 + 4096, prot=mmap.PROT_READ)   # zeros, never backed
except (OSError, ValueError) as e:
    print("NOMMAP", e)
    raise SystemExit(0)
rng = np.random.default_rng(8)
D, H = 5, 6
for dtype in (np.float64, np.float32):
    W = [(rng.standard_normal(s) * 0.3).astype(dtype) for s in ((D, 4 * H), (H, 4 * H), (4 * H,))]
    h, c = (rng.standard_normal((2, H)).astype(dtype) for _ in range(2))
    dh, dc = np.ones((2, H), dtype), np.ones((2, H), dtype)
    x = np.ndarray((2, D), dtype, buffer=m, strides=(2 ** 34, np.dtype(dtype).itemsize))
    assert x.strides[0] // x.itemsize >= 2 ** 31
    zeros = np.zeros((2, D), dtype)
    for train in (True, False):
        got, want = lstmc.LSTM(*W), lstmc.LSTM(*W)
        a = got.forward(x, h, c, train=train)
        b = want.forward(zeros, h, c, train=train)
        assert all(np.array_equal(p, q) for p, q in zip(a, b)), (dtype, train, "cell forward")
        if train:
            a = list(got.backward(dh, dc)) + got.grads
            b = list(want.backward(dh, dc)) + want.grads
            assert all(np.array_equal(p, q) for p, q in zip(a, b)), (dtype, "cell backward")
    xs = np.ndarray((2, 1, D), dtype, buffer=m,
                    strides=(2 ** 34, D * np.dtype(dtype).itemsize, np.dtype(dtype).itemsize))
    for train in (True, False):
        got, want = lstmc.TimeLSTM(*W), lstmc.TimeLSTM(*W)
        a = got.forward(xs, train=train)
        b = want.forward(np.zeros((2, 1, D), dtype), train=train)
        assert np.array_equal(a, b), (dtype, train, "TimeLSTM forward")
        if train:
            dhs = np.ones((2, 1, H), dtype)
            a = [got.backward(dhs), got.dh] + got.grads
            b = [want.backward(dhs), want.dh] + want.grads
            assert all(np.array_equal(p, q) for p, q in zip(a, b)), (dtype, "TimeLSTM backward")
print("OK")
"""


def test_row_strides_beyond_blas_ints_are_copied():
    """Rows 2**34 bytes apart (2**31 float64, 2**32 float32 elements: more
    than a BLAS leading dimension can say) in a read-only mmap of zeros: the
    cell's and the TimeLSTM's forward (and backward) equal those of zeros."""
    out = subproc.run(_HUGE_STRIDE, timeout=120)
    if out.startswith("NOMMAP"):
        pytest.skip(f"a 16 GiB read-only mmap is not possible here: {out.strip()}")
    assert out.split() == ["OK"], out


# --------------------------------------------------------------------------
# 9, 10. interpreter exit
# --------------------------------------------------------------------------

_EXIT_DURING_CALL = r"""
import sys, threading, time
import numpy as np
import lstmc

rng = np.random.default_rng(9)
W = lambda D, H: [rng.standard_normal(s) * 0.05 for s in ((D, 4 * H), (H, 4 * H), (4 * H,))]
if sys.argv[1] == "TimeLSTM":
    layer = lstmc.TimeLSTM(*W(128, 128))
    xs = rng.standard_normal((64, 200, 128))

    def call():
        layer.forward(xs)
else:
    layer = lstmc.LSTM(*W(512, 512))
    x = rng.standard_normal((512, 512))

    def call():
        layer.forward(x, x, x)
        layer.backward(x, x)

started = threading.Event()


def loop():
    started.set()
    while True:
        call()


threading.Thread(target=loop, daemon=True).start()
started.wait()
time.sleep(0.3)                                  # the daemon thread is inside a call
"""


@pytest.mark.parametrize("kind", ["TimeLSTM", "LSTM"])
def test_exit_while_a_daemon_thread_is_in_a_call(kind):
    """The main thread ends while a daemon thread loops TimeLSTM.forward
    (64, 200, 128, 128) or a cell's forward + backward (512, 512, 512): the
    program exits with 0 within 60 s, 5 times, and 3 times more with
    OPENBLAS_NUM_THREADS=1."""
    for env, runs in (({}, 5), ({"OPENBLAS_NUM_THREADS": "1"}, 3)):
        for _ in range(runs):
            subproc.run(_EXIT_DURING_CALL, kind, timeout=60, env=env)


_AT_EXIT = r"""
import atexit, json, os, sys, traceback
import numpy as np

results = {}


def late():
    # registered before lstmc is imported: runs after lstmc's own exit handler
    try:
        for dtype, (layer, cell, xs, x, h, c) in layers.items():
            hs = layer.forward(xs)
            dxs = layer.backward(np.ones_like(hs))
            h1, c1 = cell.forward(x, h, c)
            dx = cell.backward(np.ones_like(h1), np.ones_like(c1))[0]
            results[dtype] = [a.tolist() for a in (hs, dxs, h1, c1, dx)]
        print(json.dumps(results), flush=True)
    except BaseException:  # noqa: BLE001 - an exception here would not change the exit code
        traceback.print_exc()
        sys.stderr.flush()
        os._exit(1)


atexit.register(late)
import lstmc  # noqa: E402

rng = np.random.default_rng(10)
layers = {}
N, T, D, H = 8, 20, 64, 64
for dtype in ("float32", "float64"):
    W = [(rng.standard_normal(s) * 0.1).astype(dtype) for s in ((D, 4 * H), (H, 4 * H), (4 * H,))]
    inputs = [rng.standard_normal(s).astype(dtype) for s in ((N, T, D), (N, D), (N, H), (N, H))]
    layers[dtype] = (lstmc.TimeLSTM(*W), lstmc.LSTM(*W), *inputs)
"""


def test_calls_from_a_late_atexit_handler_compute():
    """An atexit handler registered before lstmc is imported (so it runs after
    lstmc's own) runs TimeLSTM forward + backward and a cell forward + backward:
    the child exits with 0 and its results are the reference's."""
    got = json.loads(subproc.run(_AT_EXIT, timeout=60).splitlines()[-1])
    rng = np.random.default_rng(10)
    N, T, D, H = 8, 20, 64, 64
    for dtype in ("float32", "float64"):
        W = [(rng.standard_normal(s) * 0.1).astype(dtype)
             for s in ((D, 4 * H), (H, 4 * H), (4 * H,))]
        xs, x, h, c = (rng.standard_normal(s).astype(dtype)
                       for s in ((N, T, D), (N, D), (N, H), (N, H)))
        hs, _, _, caches = time_forward(xs, *W)
        dxs = time_backward(np.ones_like(hs), caches, W[0], W[1])[0]
        h1, c1, cache = cell_forward(x, h, c, *W)
        dx = cell_backward(np.ones_like(h1), np.ones_like(c1), cache, W[0], W[1])[0]
        for g, w, name in zip(got[dtype], (hs, dxs, h1, c1, dx), ("hs", "dxs", "h", "c", "dx")):
            assert_close(np.asarray(g, dtype), w, dtype, err_msg=f"{dtype} {name}")


# --------------------------------------------------------------------------
# 11. the xs a forward kept, sharing memory with grads
# --------------------------------------------------------------------------

@pytest.mark.parametrize("which", [0, 1, 2])
def test_time_backward_refuses_grads_over_the_kept_xs(dtype, which):
    """TimeLSTM keeps a C-contiguous xs as passed for its backward, which writes
    grads while it still reads xs: an xs lying in grads[which] (dWx, dWh or db)
    makes backward raise ValueError naming both and change nothing; the same
    values in memory of their own give the reference's gradients."""
    D, H = 2, 4                                 # db has 16 elements: xs (1, 8, 2)
    T = 8
    rng = np.random.default_rng(which)
    W = [(rng.standard_normal(s) * 0.3).astype(dtype) for s in ((D, 4 * H), (H, 4 * H), (4 * H,))]
    layer = lstmc.TimeLSTM(*W)
    for g in layer.grads:
        g[...] = rng.standard_normal(g.shape)
    xs = layer.grads[which].reshape(-1)[:T * D].reshape(1, T, D)
    xs_values = xs.copy()
    dhs = rng.standard_normal((1, T, H)).astype(dtype)
    layer.forward(xs)
    before = [g.copy() for g in layer.grads]
    with pytest.raises(ValueError, match="grads and the xs of the last forward overlap"):
        layer.backward(dhs)
    for g, b in zip(layer.grads, before):
        np.testing.assert_array_equal(g, b)
    layer.forward(xs_values)
    layer.backward(dhs)
    hs, _, _, caches = time_forward(xs_values, *W)
    want = time_backward(dhs, caches, W[0], W[1])
    for got, ref, name in zip(layer.grads, want[1:4], ("dWx", "dWh", "db")):
        assert_close(got, ref, dtype, err_msg=name)
