"""Argument checks and conversions, with the messages users read.

The work objects (lstmc._work) check their arguments themselves on the fast
path (right dtype, shape and a layout BLAS can read in place; that layout rule
is stated there only). Whatever fails that check comes here: array-likes go
through numpy.asarray, and anything else raises an exception that names the
argument, what it got and what was expected. Nothing here writes to a layer.
"""
import numpy as np

FLOAT_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))


def contiguous(a):
    """a itself when C-contiguous and aligned, else an aligned C-contiguous copy
    (numpy.ascontiguousarray would return an unaligned array unchanged)."""
    if a.flags.c_contiguous and a.flags.aligned:
        return a
    return np.array(a, order="C", copy=True)


def _shape_str(shape):
    """(None, None, 5) -> '(N, T, 5)': the expected shape, free sizes by name."""
    names = iter("NT")
    parts = [next(names, "?") if s is None else str(s) for s in shape]
    return "(" + ", ".join(parts) + ("," if len(parts) == 1 else "") + ")"


def _dtype_of(typenum_or_dtype):
    if isinstance(typenum_or_dtype, (int, np.integer)):
        for dt in FLOAT_DTYPES:
            if dt.num == typenum_or_dtype:
                return dt
    return np.dtype(typenum_or_dtype)


def to_ndarray(value, name):
    """numpy.asarray(value), a failure re-raised naming the argument, chained to the
    original: ValueError stays ValueError (a ragged list), anything else is a
    TypeError (a torch tensor that requires grad or holds bfloat16). MemoryError
    passes as is."""
    try:
        return np.asarray(value)
    except MemoryError:
        raise
    except Exception as exc:  # noqa: BLE001 - re-raised with the argument's name
        kind = ValueError if isinstance(exc, ValueError) else TypeError
        raise kind(f"{name} could not be converted to a NumPy array "
                   f"({type(exc).__name__}: {exc})") from exc


def as_array(a, name, dtype, shape):
    """to_ndarray(a), checked for dtype and shape (None in shape: any size)."""
    dtype = _dtype_of(dtype)
    a = to_ndarray(a, name)
    if a.dtype != dtype:
        raise TypeError(f"{name} has dtype {a.dtype}; expected {dtype}")
    if a.ndim != len(shape) or any(s is not None and s != n for s, n in zip(shape, a.shape)):
        raise ValueError(f"{name} has shape {a.shape}; expected {_shape_str(shape)}")
    return a


def weights(Wx, Wh, b, names=("Wx", "Wh", "b")):
    """Check the weights of a layer; returns ([Wx, Wh, b], dtype, D, H).

    The one check of a set of weights: the layers call it, lstmc.load reports
    its errors about a file's arrays, and lstmc.convert calls it after its own
    conversions (``names``: the arguments' names there, e.g. Keras's kernel,
    recurrent_kernel, bias). A wrong dtype is a TypeError, a wrong shape a
    ValueError.

    Arrays that are already C-contiguous and float32/float64 are kept as the
    very objects passed (so in-place updates are seen); others are converted.
    """
    nx, nh, nb = names
    arrays = [np.asarray(a) for a in (Wx, Wh, b)]
    for name, a in zip(names, arrays):
        if a.dtype not in FLOAT_DTYPES:
            raise TypeError(f"{name} has dtype {a.dtype}; expected float32 or float64")
    dtype = arrays[0].dtype
    for name, a in zip(names[1:], arrays[1:]):
        if a.dtype != dtype:
            raise TypeError(f"{name} has dtype {a.dtype}; expected {dtype}, the dtype of {nx} "
                            f"({nx}, {nh} and {nb} must share one dtype)")
    patterns = ("(D, 4*H)", "(H, 4*H)", "(4*H,)")
    for name, a, ndim, pattern in zip(names, arrays, (2, 2, 1), patterns):
        if a.ndim != ndim:
            raise ValueError(f"{name} must be {ndim}-D with shape {pattern}, got shape {a.shape}")
    Wx, Wh, b = arrays
    D, n4 = Wx.shape
    if n4 % 4:
        raise ValueError(f"{nx} has shape {Wx.shape}; expected (D, 4*H), but its 4*H axis "
                         f"(length {n4}) is not divisible by 4")
    if D < 1 or n4 < 4:
        raise ValueError(f"{nx} has shape {Wx.shape}; expected (D, 4*H) with D >= 1, H >= 1")
    H = n4 // 4
    if Wh.shape != (H, n4):
        raise ValueError(f"{nh} must have shape (H, 4*H) = {(H, n4)} to match {nx} of shape "
                         f"{Wx.shape}, got {Wh.shape}")
    if b.shape != (n4,):
        raise ValueError(f"{nb} must have shape (4*H,) = {(n4,)} to match {nx} of shape "
                         f"{Wx.shape}, got {b.shape}")
    return [contiguous(a) for a in arrays], dtype, D, H


def _check_list(layer, attr, names, writable):
    dtype, D, H = layer.dtype, layer._work.input_size, layer._work.hidden_size
    shapes = ((D, 4 * H), (H, 4 * H), (4 * H,))
    items = getattr(layer, attr)
    if not isinstance(items, list) or len(items) != 3:
        raise TypeError(f"{attr} must be a list of 3 arrays [{', '.join(names)}]; "
                        f"got {type(items).__name__}")
    for k, (a, name, shape) in enumerate(zip(items, names, shapes)):
        label = f"{attr}[{k}] ({name})"
        if not isinstance(a, np.ndarray):
            raise TypeError(f"{label} must be a numpy array; got {type(a).__name__}")
        if a.dtype != dtype:
            raise TypeError(f"{label} has dtype {a.dtype}; expected {dtype}")
        if a.shape != shape:
            raise ValueError(f"{label} has shape {a.shape}; expected {shape}")
        if not (a.flags.c_contiguous and a.flags.aligned):
            raise ValueError(f"{label} must be C-contiguous; update it in place "
                             f"({attr}[{k}][...] = new) instead of replacing it")
        if writable and not a.flags.writeable:
            raise ValueError(f"{label} is read-only")


def layer_params(layer):
    """Raise the error that explains why layer.params is not usable."""
    _check_list(layer, "params", ("Wx", "Wh", "b"), False)
    raise AssertionError("lstmc: params passed the slow check but not the fast one")


def layer_grads(layer):
    """Raise the error that explains why layer.grads is not usable."""
    _check_list(layer, "grads", ("dWx", "dWh", "db"), True)
    raise AssertionError("lstmc: grads passed the slow check but not the fast one")


def out_pair(out, typenum, N, H, unreadable):
    """Raise the error that explains why `out` is not a usable (h_out, c_out);
    `unreadable` is the index of the first whose layout BLAS cannot write."""
    dtype = _dtype_of(typenum)
    if not isinstance(out, tuple) or len(out) != 2:
        raise TypeError(f"out must be a tuple (h_out, c_out) of two arrays; got {type(out).__name__}"
                        + (f" of length {len(out)}" if isinstance(out, (tuple, list)) else ""))
    for k, a in enumerate(out):
        label = f"out[{k}]"
        if not isinstance(a, np.ndarray):
            raise TypeError(f"{label} must be a numpy array; got {type(a).__name__}")
        if a.dtype != dtype:
            raise TypeError(f"{label} has dtype {a.dtype}; expected {dtype}")
        if a.shape != (N, H):
            raise ValueError(f"{label} has shape {a.shape}; expected {(N, H)}")
        if not a.flags.writeable:
            raise ValueError(f"{label} is read-only")
    # Right type, dtype, shape and writable: what is left is the layout.
    raise ValueError(f"out[{unreadable}] must have a contiguous last axis and positive row "
                     f"stride (strides {out[unreadable].strides}); pass a C-contiguous array")


def state(a, name, dtype, H, N=None):
    """A held state (N, H): C-contiguous, of the layer's dtype."""
    a = as_array(a, name, dtype, (N, H))
    return contiguous(a)


def held_state(layer, N):
    """(h0, c0) from a stateful layer's held state, for a batch of N: each C-contiguous
    of the layer's dtype, or None for zeros."""
    H = layer.hidden_size
    for name in ("h", "c"):
        held = getattr(layer, name)
        if held is not None and np.shape(held)[:1] != (N,):
            raise ValueError(
                f"the held state {name} has shape {np.shape(held)}; xs has batch size "
                f"{N}, so expected {(N, H)} (call reset_state() to start over)")
    h0 = None if layer.h is None else state(layer.h, "h", layer.dtype, H, N)
    c0 = None if layer.c is None else state(layer.c, "c", layer.dtype, H, N)
    return h0, c0


def lengths(value, N, T):
    """lengths (N,) of integers in 0 .. T, as a new C-contiguous intp array (a
    copy of the caller's: another thread cannot change it after this check)."""
    a = to_ndarray(value, "lengths")
    if a.dtype.kind not in "iu" and not (a.size == 0 and a.dtype.kind == "f"):
        raise TypeError(f"lengths has dtype {a.dtype}; expected integers")
    if a.shape != (N,):
        raise ValueError(f"lengths has shape {a.shape}; expected {(N,)}, one per row of xs")
    if a.size and (a.min() < 0 or a.max() > T):
        raise ValueError(f"lengths must be in 0 .. {T} (the T of xs); "
                         f"got values from {a.min()} to {a.max()}")
    return np.array(a, dtype=np.intp, order="C")
