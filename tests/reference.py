"""Plain NumPy reference for the lstmc contract (spec.md, "Math").

Everything here works in float64, whatever the dtype of its inputs, so a
float32 layer is compared against the float64 math of the same
float32-rounded data.

Gate order along the 4H axis is f, g, i, o.  Unlike the seed notebook this
reference slices ``g = A[:, H:2H]`` (not ``A[: H:2H]``) and its cache keeps
the real ``c_prev`` (not ``h_next``).

The module also holds the small helpers the test files share (tolerances,
memory layouts, weights, a central-difference gradient checker); it is
imported as a sibling module (``from reference import ...``).
"""

import re as _re

import threading
import time

import numpy as np

__all__ = [
    "sigmoid", "cell_forward", "cell_backward", "time_forward",
    "time_backward", "RefTimeLSTM", "numerical_gradient", "assert_grad_close",
    "assert_close", "tolerances", "random_weights", "with_layout", "LAYOUTS",
    "check_dtype_message", "check_shape_message", "Snapshot",
]


# --------------------------------------------------------------------------
# Math
# --------------------------------------------------------------------------

def sigmoid(a):
    """Numerically stable logistic function (no overflow; exact 0/1 at saturation)."""
    a = np.asarray(a, dtype=np.float64)
    out = np.empty_like(a)
    pos = a >= 0          # NaN compares False and goes to the second branch
    neg = ~pos
    out[pos] = 1.0 / (1.0 + np.exp(-a[pos]))
    e = np.exp(a[neg])
    out[neg] = e / (1.0 + e)
    return out


def _f64(*arrays):
    return [np.array(a, dtype=np.float64) for a in arrays]


def cell_forward(x, h_prev, c_prev, Wx, Wh, b):
    """One LSTM step.  Returns ``(h_next, c_next, cache)`` in float64."""
    x, h_prev, c_prev, Wx, Wh, b = _f64(x, h_prev, c_prev, Wx, Wh, b)
    H = Wh.shape[0]
    A = x @ Wx + h_prev @ Wh + b
    f = sigmoid(A[:, :H])
    g = np.tanh(A[:, H:2 * H])
    i = sigmoid(A[:, 2 * H:3 * H])
    o = sigmoid(A[:, 3 * H:])
    c_next = f * c_prev + g * i
    tanh_c = np.tanh(c_next)
    h_next = o * tanh_c
    cache = dict(x=x, h_prev=h_prev, c_prev=c_prev, f=f, g=g, i=i, o=o,
                 tanh_c=tanh_c, A=A)
    return h_next, c_next, cache


def cell_backward(dh_next, dc_next, cache, Wx, Wh):
    """Backward of one step.  Returns ``(dx, dh_prev, dc_prev, dWx, dWh, db)``."""
    dh_next, dc_next, Wx, Wh = _f64(dh_next, dc_next, Wx, Wh)
    f, g, i, o = cache["f"], cache["g"], cache["i"], cache["o"]
    tanh_c = cache["tanh_c"]
    ds = dc_next + dh_next * o * (1.0 - tanh_c ** 2)
    dc_prev = ds * f
    df = ds * cache["c_prev"] * f * (1.0 - f)
    dg = ds * i * (1.0 - g ** 2)
    di = ds * g * i * (1.0 - i)
    do = dh_next * tanh_c * o * (1.0 - o)
    dA = np.hstack((df, dg, di, do))
    dWx = cache["x"].T @ dA
    dWh = cache["h_prev"].T @ dA
    db = dA.sum(axis=0)
    dx = dA @ Wx.T
    dh_prev = dA @ Wh.T
    return dx, dh_prev, dc_prev, dWx, dWh, db


def time_forward(xs, Wx, Wh, b, h0=None, c0=None):
    """The book's TimeLSTM loop.  Returns ``(hs, h_last, c_last, caches)``.

    A missing initial state is zeros.
    """
    xs = np.array(xs, dtype=np.float64)
    N, T, _ = xs.shape
    H = np.shape(Wh)[0]
    h = np.zeros((N, H)) if h0 is None else np.array(h0, dtype=np.float64)
    c = np.zeros((N, H)) if c0 is None else np.array(c0, dtype=np.float64)
    hs = np.empty((N, T, H))
    caches = []
    for t in range(T):
        h, c, cache = cell_forward(xs[:, t, :], h, c, Wx, Wh, b)
        hs[:, t, :] = h
        caches.append(cache)
    return hs, h, c, caches


def time_backward(dhs, caches, Wx, Wh):
    """Backward of :func:`time_forward` with no gradient flowing into the last c.

    Returns ``(dxs, dWx, dWh, db, dh0, dc0)``; the grads are sums over time.
    """
    dhs = np.array(dhs, dtype=np.float64)
    N, T, H = dhs.shape
    D = np.shape(Wx)[0]
    dxs = np.empty((N, T, D))
    dWx = np.zeros(np.shape(Wx))
    dWh = np.zeros(np.shape(Wh))
    db = np.zeros(4 * H)
    dh = np.zeros((N, H))
    dc = np.zeros((N, H))
    for t in reversed(range(T)):
        dx, dh, dc, gWx, gWh, gb = cell_backward(dhs[:, t, :] + dh, dc,
                                                 caches[t], Wx, Wh)
        dxs[:, t, :] = dx
        dWx += gWx
        dWh += gWh
        db += gb
    return dxs, dWx, dWh, db, dh, dc


class RefTimeLSTM:
    """The book's TimeLSTM state semantics on top of the reference loop."""

    def __init__(self, Wx, Wh, b, stateful=False):
        self.params = [Wx, Wh, b]
        self.stateful = stateful
        self.h = self.c = None
        self.dh = None
        self.grads = None
        self._caches = None

    def forward(self, xs):
        Wx, Wh, b = self.params
        h0 = self.h if self.stateful else None
        c0 = self.c if self.stateful else None
        hs, self.h, self.c, self._caches = time_forward(xs, Wx, Wh, b, h0, c0)
        return hs

    def backward(self, dhs):
        Wx, Wh, _ = self.params
        dxs, dWx, dWh, db, self.dh, _ = time_backward(dhs, self._caches, Wx, Wh)
        self.grads = [dWx, dWh, db]
        return dxs

    def set_state(self, h, c=None):
        self.h, self.c = h, c

    def reset_state(self):
        self.h = self.c = None


# --------------------------------------------------------------------------
# Gradient checking
# --------------------------------------------------------------------------

def numerical_gradient(loss, arr, eps=1e-6):
    """Central differences of the scalar ``loss()`` with respect to ``arr``.

    ``arr`` (float64, writable) is perturbed in place, one entry at a time,
    and restored exactly afterwards.
    """
    assert arr.dtype == np.float64 and arr.flags.writeable
    grad = np.zeros(arr.shape)
    for idx in np.ndindex(*arr.shape):
        old = arr[idx]
        arr[idx] = old + eps
        plus = float(loss())
        arr[idx] = old - eps
        minus = float(loss())
        arr[idx] = old
        grad[idx] = (plus - minus) / (2.0 * eps)
    return grad


def assert_grad_close(analytic, numeric, name):
    np.testing.assert_allclose(analytic, numeric, rtol=1e-5, atol=1e-7,
                               err_msg=f"gradient wrt {name}")


# --------------------------------------------------------------------------
# Comparison, data and layout helpers
# --------------------------------------------------------------------------

def tolerances(dtype):
    """(rtol, atol) for comparing a layer of ``dtype`` with the float64 reference."""
    if np.dtype(dtype) == np.float32:
        return 1e-5, 1e-6
    return 1e-12, 1e-14


def assert_close(actual, expected, dtype, err_msg=""):
    """Compare a layer result with the reference: same shape, the layer's dtype,
    values within the dtype's tolerance (atol scaled by the largest |expected|,
    so sums over many time steps are judged relative to their size)."""
    actual = np.asarray(actual)
    expected = np.asarray(expected)
    assert actual.shape == expected.shape, (err_msg, actual.shape, expected.shape)
    assert actual.dtype == np.dtype(dtype), (err_msg, actual.dtype, dtype)
    rtol, atol = tolerances(dtype)
    finite = expected[np.isfinite(expected)]
    scale = max(1.0, float(np.max(np.abs(finite)))) if finite.size else 1.0
    np.testing.assert_allclose(actual, expected, rtol=rtol, atol=atol * scale,
                               err_msg=err_msg)


def random_weights(rng, D, H, dtype=np.float64, scale=None):
    """(Wx, Wh, b) of the given dtype, C-contiguous, with a well-behaved scale."""
    if scale is None:
        scale = 1.0 / np.sqrt(max(D, H, 1))
    Wx = (rng.standard_normal((D, 4 * H)) * scale).astype(dtype)
    Wh = (rng.standard_normal((H, 4 * H)) * scale).astype(dtype)
    b = (rng.standard_normal(4 * H) * 0.5).astype(dtype)
    return Wx, Wh, b


LAYOUTS = (
    "C",            # C-contiguous
    "F",            # Fortran order
    "row_stride",   # every other row of a bigger buffer (last axis contiguous)
    "col_stride",   # every other column (last axis not contiguous)
    "neg_rows",     # negative stride on the first axis
    "neg_cols",     # negative stride on the last axis
    "neg_all",      # negative strides on every axis
    "slice_mid",    # arr lives at [:, 1, :] of an (N, 3, ...) buffer, like xs[:, t, :]
    "readonly",     # C-contiguous but not writeable
    "unaligned",    # C-ordered data at an odd byte offset (flags.aligned False)
    "odd_stride",   # rows a few bytes apart that are not a multiple of the item size
)


def with_layout(arr, kind):
    """An array equal to ``arr`` (same dtype and values) with the memory layout ``kind``.

    Works for any number of dimensions; the padding around strided views is
    filled with NaN so that reading outside the view poisons the result.
    """
    arr = np.asarray(arr)
    if kind == "C":
        return np.ascontiguousarray(arr)
    if kind == "F":
        out = np.asfortranarray(arr)
        return out
    if kind == "row_stride":
        buf = np.full((2 * arr.shape[0],) + arr.shape[1:], np.nan, dtype=arr.dtype)
        buf[::2] = arr
        return buf[::2]
    if kind == "col_stride":
        buf = np.full(arr.shape[:-1] + (2 * arr.shape[-1],), np.nan, dtype=arr.dtype)
        buf[..., ::2] = arr
        return buf[..., ::2]
    if kind == "neg_rows":
        return np.ascontiguousarray(arr[::-1])[::-1]
    if kind == "neg_cols":
        return np.ascontiguousarray(arr[..., ::-1])[..., ::-1]
    if kind == "neg_all":
        sl = (slice(None, None, -1),) * arr.ndim
        return np.ascontiguousarray(arr[sl])[sl]
    if kind == "slice_mid":
        buf = np.full((arr.shape[0], 3) + arr.shape[1:], np.nan, dtype=arr.dtype)
        buf[:, 1] = arr
        return buf[:, 1]
    if kind == "readonly":
        out = np.array(arr, copy=True)
        out.flags.writeable = False
        return out
    if kind == "unaligned":
        buf = np.zeros(arr.nbytes + 1, dtype=np.uint8)
        out = buf[1:].view(arr.dtype).reshape(arr.shape)
        out[...] = arr
        return out
    if kind == "odd_stride":
        lead = arr.shape[0]
        row = int(np.prod(arr.shape[1:])) * arr.itemsize
        buf = np.zeros((lead, row + 3), dtype=np.uint8)
        out = buf[:, 1:1 + row].view(arr.dtype).reshape(arr.shape)
        out[...] = arr
        return out
    raise ValueError(kind)


# --------------------------------------------------------------------------
# Error-message and "a failed call changes nothing" helpers
# --------------------------------------------------------------------------

def _name_re(name):
    # the argument name as a whole word: "x" must not match "xs" or "expected"
    return _re.compile(r"(?<![A-Za-z0-9_])" + _re.escape(name) + r"(?![A-Za-z0-9_])")


def _shape_re(shape):
    """Regex for a shape tuple repr; ``None`` entries match any token (e.g. N)."""
    parts = [r"[A-Za-z0-9_]+" if d is None else str(int(d)) for d in shape]
    if len(parts) == 1:
        return _re.compile(r"\(\s*" + parts[0] + r"\s*,\s*\)")
    return _re.compile(r"\(\s*" + r"\s*,\s*".join(parts) + r"\s*\)")


def check_dtype_message(msg, name, got, expected):
    """TypeError text names the argument, the dtype got and the dtype expected.

    A non-native dtype has the same name as the native one ('>f8' and '<f8' are
    both 'float64'): its message must show the byte order ('>f8', or the name
    and the words "byte order" / "endian"), or it would not say what is wrong.
    """
    assert _name_re(name).search(msg), f"argument name {name!r} not in {msg!r}"
    got, expected = np.dtype(got), np.dtype(expected)
    if got.isnative:
        assert got.name in msg, f"dtype got {got.name!r} not in {msg!r}"
    else:
        shown = got.str in msg or (
            got.name in msg and _re.search(r"byte[ -]?order|endian", msg, _re.I))
        assert shown, f"dtype got {got.str!r} (non-native byte order) not shown in {msg!r}"
    assert expected.name in msg, f"dtype expected {expected.name!r} not in {msg!r}"


def check_shape_message(msg, name, got, expected=None):
    """ValueError text names the argument, the shape got (tuple repr) and,
    when given, the expected shape (a tuple whose None entries are free)."""
    assert _name_re(name).search(msg), f"argument name {name!r} not in {msg!r}"
    assert repr(tuple(got)) in msg, f"shape got {tuple(got)!r} not in {msg!r}"
    if expected is not None:
        assert _shape_re(expected).search(msg.replace(repr(tuple(got)), "", 1)), \
            f"expected shape {tuple(expected)!r} not in {msg!r}"


def _deep_copy(value):
    if isinstance(value, np.ndarray):
        return value.copy()
    if isinstance(value, list):
        return [_deep_copy(v) for v in value]
    if isinstance(value, tuple):
        return tuple(_deep_copy(v) for v in value)
    if isinstance(value, dict):
        return {k: _deep_copy(v) for k, v in value.items()}
    return value


def _assert_same(before_obj, before_copy, now_obj, what):
    assert now_obj is before_obj, f"{what} was replaced"
    if isinstance(before_obj, np.ndarray):
        np.testing.assert_array_equal(now_obj, before_copy, err_msg=f"{what} changed")
    elif isinstance(before_obj, (list, tuple)):
        assert len(now_obj) == len(before_copy), f"{what} changed length"
        for k, (o, c) in enumerate(zip(before_obj, before_copy)):
            if isinstance(o, (np.ndarray, list, tuple, dict)):
                _assert_same(o, c, now_obj[k], f"{what}[{k}]")
    elif isinstance(before_obj, dict):
        assert set(now_obj) == set(before_copy), f"{what} keys changed"
        for k, o in before_obj.items():
            if isinstance(o, (np.ndarray, list, tuple, dict)):
                _assert_same(o, before_copy[k], now_obj[k], f"{what}[{k!r}]")


class Snapshot:
    """Identity and value of a layer's state, to check that a failed call changed nothing."""

    ATTRS = ("params", "grads", "cache", "h", "c", "dh", "stateful", "dtype")

    def __init__(self, layer):
        self.saved = {}
        for name in self.ATTRS:
            if hasattr(layer, name):
                obj = getattr(layer, name)
                self.saved[name] = (obj, _deep_copy(obj))

    def assert_unchanged(self, layer):
        for name, (obj, copy) in self.saved.items():
            _assert_same(obj, copy, getattr(layer, name), name)


def count_while(fn):
    """Run fn() in this thread while another thread counts; return (count, seconds)."""
    state = {"stop": False, "n": 0}
    started = threading.Event()

    def counter():
        n = 0
        started.set()
        while not state["stop"]:
            n += 1
        state["n"] = n

    t = threading.Thread(target=counter)
    t.start()
    started.wait()
    t0 = time.perf_counter()
    try:
        fn()
    finally:
        elapsed = time.perf_counter() - t0
        state["stop"] = True
        t.join()
    return state["n"], elapsed
