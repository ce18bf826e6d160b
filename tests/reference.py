"""The NumPy reference, evaluated in float64, and the helpers the tests share.

The LSTM math is ``lstmc.reference`` (gate order f, g, i, o; g from the
columns H:2H of A; the cache keeps the real c_prev). The wrappers below
evaluate it in float64 whatever the dtype of their inputs, so a float32 layer
is compared against the float64 math of the same float32-rounded data.

The module also holds the small helpers the test files share (tolerances,
memory layouts, weights, a central-difference gradient checker); it is
imported as a sibling module (``from reference import ...``).
"""

import re as _re

import threading
import time

import numpy as np

from lstmc import reference as _ref
from lstmc.reference import numerical_gradient, sigmoid

__all__ = [
    "sigmoid", "cell_forward", "cell_backward", "time_forward",
    "time_backward", "RefTimeLSTM", "numerical_gradient", "assert_grad_close",
    "assert_close", "tolerances", "random_weights", "with_layout", "LAYOUTS",
    "check_dtype_message", "check_shape_message", "Snapshot", "rewrite_archive", "rewrite_member",
]


# --------------------------------------------------------------------------
# The reference math in float64
# --------------------------------------------------------------------------

def _f64(*arrays):
    return [None if a is None else np.array(a, dtype=np.float64) for a in arrays]


def cell_forward(x, h_prev, c_prev, Wx, Wh, b):
    """One LSTM step.  Returns ``(h_next, c_next, cache)`` in float64; the cache
    is a dict (``cache["c_prev"]``)."""
    h_next, c_next, cache = _ref.cell_forward(*_f64(x, h_prev, c_prev, Wx, Wh, b))
    return h_next, c_next, cache._asdict()


def cell_backward(dh_next, dc_next, cache, Wx, Wh):
    """Backward of one step.  Returns ``(dx, dh_prev, dc_prev, dWx, dWh, db)``."""
    return _ref.cell_backward(*_f64(dh_next, dc_next), _ref.Cache(**cache), *_f64(Wx, Wh))


def time_forward(xs, Wx, Wh, b, h0=None, c0=None):
    """The book's TimeLSTM loop.  Returns ``(hs, h_last, c_last, caches)``.

    A missing initial state is zeros.
    """
    return _ref.time_forward(*_f64(xs, Wx, Wh, b, h0, c0))


def time_backward(dhs, caches, Wx, Wh):
    """Backward of :func:`time_forward` with no gradient flowing into the last c.

    Returns ``(dxs, dWx, dWh, db, dh0, dc0)``; the grads are sums over time.
    """
    return _ref.time_backward(*_f64(dhs), caches, *_f64(Wx, Wh))


class RefTimeLSTM(_ref.TimeLSTM):
    """``lstmc.reference.TimeLSTM`` (the book's state semantics) in float64."""

    def __init__(self, Wx, Wh, b, stateful=False):
        super().__init__(*_f64(Wx, Wh, b), stateful=stateful)

    def forward(self, xs):
        return super().forward(*_f64(xs))

    def backward(self, dhs):
        return super().backward(*_f64(dhs))

    def set_state(self, h, c=None):
        super().set_state(*_f64(h, c))


# --------------------------------------------------------------------------
# Gradient checking
# --------------------------------------------------------------------------

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


def rewrite_archive(path, **changes):
    """Rewrite the .npz at path with some members replaced (None: removed)."""
    with np.load(path, allow_pickle=False) as npz:
        arrays = dict(npz)
    for key, value in changes.items():
        if value is None:
            del arrays[key]
        else:
            arrays[key] = value
    with open(path, "wb") as fh:
        np.savez(fh, **arrays)
    return path


def rewrite_member(path, key, write):
    """Rewrite the .npz at path with member `key` written by write(fh) instead
    of its array (every other member as it was): a damaged file for a test."""
    import zipfile

    with np.load(path, allow_pickle=False) as npz:
        arrays = dict(npz)
    with zipfile.ZipFile(path, "w") as zf:
        for name, value in arrays.items():
            with zf.open(name + ".npy", "w") as fh:
                if name == key:
                    write(fh)
                else:
                    np.lib.format.write_array(fh, value)


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
