"""Weight layouts of other frameworks, to and from lstmc's ``(Wx, Wh, b)``.

lstmc computes ``A = x @ Wx + h @ Wh + b`` and cuts the 4H axis of ``A`` into
the gate blocks **f, g, i, o** (forget, cell candidate, input, output).  The
other frameworks use the same LSTM (sigmoid gates, tanh candidate and output
squashing, no peepholes) but order the gate blocks differently, store the
input weights transposed, or split the bias in two:

=========  =====================  ====================  ================  ==========
layout     input weights          recurrent weights     bias              gate order
=========  =====================  ====================  ================  ==========
lstmc      ``Wx`` (D, 4H)         ``Wh`` (H, 4H)        ``b`` (4H,)       f, g, i, o
PyTorch    ``weight_ih`` (4H, D)  ``weight_hh`` (4H, H) ``bias_ih`` +     i, f, g, o
                                                        ``bias_hh`` (4H,)
Keras      ``kernel`` (D, 4H)     ``recurrent_kernel``  ``bias`` (4H,)    i, f, c, o
                                  (H, 4H)
ONNX       ``W`` ([nd,] 4H, D)    ``R`` ([nd,] 4H, H)   ``B`` ([nd,] 8H)  i, o, f, c
                                                        = [Wb, Rb]
=========  =====================  ====================  ================  ==========

(``c`` in Keras and ONNX is the cell candidate that lstmc and PyTorch call
``g``; ``nd`` is ONNX's ``num_directions``.)  PyTorch's and ONNX's two biases
are always added, so they are summed into ``b``; on the way back the whole of
``b`` goes into the *input* bias and the recurrent bias is zeros.

Every converter is a block permutation plus (for PyTorch and ONNX) a
transpose, so it is exact: no rounding, and ``from_x(*to_x(Wx, Wh, b))``
returns the very same numbers.  Because the maps are linear, they convert
*gradients* the same way as weights.

What lstmc does not model, and therefore these converters cannot carry:
PyTorch's ``proj_size`` (``weight_hr``), ONNX peepholes (``P``),
``clip``, ``input_forget`` and non-default activations, and Keras layers built
with activations other than ``activation="tanh"``,
``recurrent_activation="sigmoid"`` (the defaults since Keras 2).

Inputs may be NumPy arrays, nested lists, or anything with ``__array__``
(a PyTorch tensor, also one that requires grad: it is detached, and moved to
the CPU).  Outputs are new C-contiguous NumPy arrays.  float32 and float64
inputs keep their dtype; integer, boolean and float16 arrays and nested lists
take the dtype of the other (float32/float64) arguments, or float64 when
there are none; mixing float32 with float64 arrays raises ``TypeError``.  No framework is imported by this module.
"""

import numpy as np

from lstmc import _validate

__all__ = [
    "from_torch",
    "to_torch",
    "from_torch_state_dict",
    "from_keras",
    "to_keras",
    "from_onnx",
    "to_onnx",
]

# Gate order of each layout along its 4H axis.  Canonical names: i = input,
# f = forget, g = cell candidate (Keras and ONNX call it "c"), o = output.
_LSTMC = "fgio"
_TORCH = "ifgo"
_KERAS = "ifgo"  # Keras documents i, f, c, o; its c is our g.
_ONNX = "iofg"  # ONNX documents i, o, f, c.

_FLOATS = (np.dtype(np.float32), np.dtype(np.float64))


# --------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------

def _gate_permutation(n4, src, dst):
    """Indices ``p`` with ``a_dst = a_src[p]`` along a gate axis of length 4H."""
    hidden = n4 // 4
    block = np.arange(hidden)
    return np.concatenate([block + src.index(gate) * hidden for gate in dst])


def _reorder(a, src, dst, axis):
    """Reorder the four gate blocks of ``a`` along ``axis`` from ``src`` to ``dst``.

    The only place where gate orders are translated.  Returns a new
    C-contiguous array (``np.take`` always copies into a fresh C-order array),
    so transposing the input first costs no extra copy.
    """
    out = np.take(a, _gate_permutation(a.shape[axis], src, dst), axis=axis)
    return np.ascontiguousarray(out)


def _to_numpy(value, name):
    """``value`` as an ndarray, without a cast yet (see ``_common_dtype``)."""
    if value is None:
        raise TypeError(f"{name} must be an array, got None")
    if not isinstance(value, np.ndarray):
        # torch.Tensor: np.asarray refuses tensors that require grad and
        # tensors that live on an accelerator.
        detach = getattr(value, "detach", None)
        if callable(detach):
            value = detach()
            cpu = getattr(value, "cpu", None)
            if callable(cpu):
                value = cpu()
    arr = _validate.to_ndarray(value, name)
    if arr.dtype.kind not in "biuf":
        raise TypeError(
            f"{name} must hold real numbers, got an array of dtype {arr.dtype}"
        )
    return arr


def _common_dtype(named, weak=()):
    """The one floating dtype of the ``(name, array)`` pairs.

    float32/float64 arguments fix it (they must agree); other real dtypes
    (integers, bool, float16) and the arguments named in ``weak`` (nested
    lists and Python numbers, which carry no dtype of their own) follow
    them, or give float64 when nothing fixes the dtype.
    """
    chosen = None
    chosen_name = None
    for name, arr in named:
        if arr.dtype in _FLOATS and name not in weak:
            if chosen is None:
                chosen, chosen_name = arr.dtype, name
            elif arr.dtype != chosen:
                raise TypeError(
                    f"{name} has dtype {arr.dtype} but {chosen_name} has dtype "
                    f"{chosen}; pass all arrays in one floating dtype "
                    "(float32 or float64)"
                )
    return np.dtype(np.float64) if chosen is None else chosen


def _arrays(optional=(), **named):
    """Convert keyword arguments to arrays of one floating dtype.

    Names in ``optional`` may be None (kept as None); a None anywhere else
    is a ``TypeError``.  Returns ``(dict of arrays, dtype)``.
    """
    arrays = {}
    weak = set()
    for name, value in named.items():
        if value is None and name in optional:
            continue
        arrays[name] = _to_numpy(value, name)
        if isinstance(value, (list, tuple, int, float)):
            weak.add(name)
    dtype = _common_dtype(arrays.items(), weak)
    out = {name: None for name in named}
    for name, arr in arrays.items():
        out[name] = arr.astype(dtype, copy=False)
    return out, dtype


def _check_shape(arr, name, expected, pattern):
    """``ValueError`` unless ``arr.shape == expected`` (``pattern`` explains it)."""
    if arr.shape != tuple(expected):
        raise ValueError(
            f"{name} must have shape {pattern} = {tuple(expected)}, "
            f"got {arr.shape}"
        )


def _gate_axis_length(arr, name, axis, pattern):
    """4H read off ``arr``'s gate axis, checked to be a multiple of 4."""
    if arr.ndim != len(pattern):
        raise ValueError(
            f"{name} must be {len(pattern)}-D with shape "
            f"({', '.join(pattern)}), got shape {arr.shape}"
        )
    n4 = arr.shape[axis]
    if n4 % 4:
        raise ValueError(
            f"{name} must have shape ({', '.join(pattern)}), but its 4*H "
            f"axis has length {n4}, not a multiple of 4 (shape {arr.shape})"
        )
    return n4


# --------------------------------------------------------------------------
# lstmc
# --------------------------------------------------------------------------

def _column_arrays(names, kernel, recurrent, bias):
    """Validate weights laid out by columns, as lstmc's and Keras's are:
    kernel (D, 4H), recurrent (H, 4H), bias (4H,) or None (zeros). ``names`` are
    the three argument names for messages. Returns ``(kernel, recurrent, bias,
    H, dtype)``."""
    nk, nr, nb = names
    arrs, dtype = _arrays((nb,), **{nk: kernel, nr: recurrent, nb: bias})
    kernel, recurrent, bias = arrs[nk], arrs[nr], arrs[nb]
    if bias is None:
        # zeros as long as the kernel's last axis; the check below judges the kernel
        bias = np.zeros(kernel.shape[-1:], dtype)
    (kernel, recurrent, bias), dtype, _, H = _validate.weights(kernel, recurrent, bias,
                                                               names=names)
    return kernel, recurrent, bias, H, dtype


def _lstmc_arrays(Wx, Wh, b):
    """Validate lstmc weights; return ``(Wx, Wh, b, H, dtype)`` (``b`` may be None)."""
    return _column_arrays(("Wx", "Wh", "b"), Wx, Wh, b)


# --------------------------------------------------------------------------
# PyTorch
# --------------------------------------------------------------------------

def from_torch(weight_ih, weight_hh, bias_ih=None, bias_hh=None):
    """lstmc ``(Wx, Wh, b)`` from PyTorch ``nn.LSTM`` / ``nn.LSTMCell`` weights.

    ============  ============  ==========================  ==========
    PyTorch       shape         lstmc                       gate order
    ============  ============  ==========================  ==========
    weight_ih     (4H, D)       ``Wx`` (D, 4H)              i, f, g, o
    weight_hh     (4H, H)       ``Wh`` (H, 4H)              -> f, g, i, o
    bias_ih       (4H,)         ``b = bias_ih + bias_hh``
    bias_hh       (4H,)
    ============  ============  ==========================  ==========

    A missing bias (``None``, as for ``bias=False``) counts as zeros.  For
    one layer of a multi-layer or bidirectional ``nn.LSTM`` pass
    ``weight_ih_l{k}[_reverse]`` etc., or use :func:`from_torch_state_dict`.

    Parameters
    ----------
    weight_ih, weight_hh, bias_ih, bias_hh : array_like or torch.Tensor
        Tensors may require grad and live on any device.

    Returns
    -------
    Wx : ndarray (D, 4H)
    Wh : ndarray (H, 4H)
    b : ndarray (4H,)
        New C-contiguous arrays of the inputs' floating dtype.

    Raises
    ------
    ValueError
        If a shape is not ``(4H, D)``, ``(4H, H)``, ``(4H,)`` for one H.
    TypeError
        If an argument is not real-valued, or float32 and float64 are mixed.
    """
    arrs, dtype = _arrays(("bias_ih", "bias_hh"),
                          weight_ih=weight_ih, weight_hh=weight_hh,
                          bias_ih=bias_ih, bias_hh=bias_hh)
    w_ih, w_hh = arrs["weight_ih"], arrs["weight_hh"]
    n4 = _gate_axis_length(w_ih, "weight_ih", 0, ("4*H", "D"))
    H = n4 // 4
    _check_shape(w_hh, "weight_hh", (n4, H), "(4*H, H)")
    b = np.zeros(n4, dtype)
    for name in ("bias_ih", "bias_hh"):
        if arrs[name] is not None:
            _check_shape(arrs[name], name, (n4,), "(4*H,)")
            b = b + arrs[name]
    # (4H, D) rows i,f,g,o  ->  (D, 4H) columns f,g,i,o
    Wx = _reorder(w_ih.T, _TORCH, _LSTMC, axis=1)
    Wh = _reorder(w_hh.T, _TORCH, _LSTMC, axis=1)
    return Wx, Wh, _reorder(b, _TORCH, _LSTMC, axis=0)


def to_torch(Wx, Wh, b=None):
    """PyTorch ``(weight_ih, weight_hh, bias_ih, bias_hh)`` from lstmc weights.

    The inverse of :func:`from_torch` (layouts tabled there).  PyTorch adds
    its two biases, so the whole of ``b`` goes into ``bias_ih`` and
    ``bias_hh`` is zeros: the layer computes the same function, but a
    ``from_torch`` -> ``to_torch`` round trip moves any ``bias_hh`` into
    ``bias_ih``.  ``b=None`` means zeros.

    Returns
    -------
    weight_ih : ndarray (4H, D)
    weight_hh : ndarray (4H, H)
    bias_ih : ndarray (4H,)
    bias_hh : ndarray (4H,), zeros
        New C-contiguous NumPy arrays of the inputs' floating dtype.  Load
        them with ``torch.from_numpy`` (e.g. into ``lstm.state_dict()`` keys
        ``weight_ih_l0``, ``weight_hh_l0``, ``bias_ih_l0``, ``bias_hh_l0``).
    """
    Wx, Wh, b, H, dtype = _lstmc_arrays(Wx, Wh, b)
    # (D, 4H) columns f,g,i,o  ->  (4H, D) rows i,f,g,o
    weight_ih = _reorder(Wx.T, _LSTMC, _TORCH, axis=0)
    weight_hh = _reorder(Wh.T, _LSTMC, _TORCH, axis=0)
    bias_ih = _reorder(b, _LSTMC, _TORCH, axis=0)
    return weight_ih, weight_hh, bias_ih, np.zeros(4 * H, dtype)


def from_torch_state_dict(state_dict, layer=0, reverse=False):
    """lstmc ``(Wx, Wh, b)`` for one layer and direction of an ``nn.LSTM``.

    Picks ``weight_ih_l{layer}``, ``weight_hh_l{layer}``, ``bias_ih_l{layer}``
    and ``bias_hh_l{layer}`` (with the suffix ``_reverse`` when ``reverse``)
    out of ``state_dict`` (e.g. ``lstm.state_dict()``; any mapping) and calls
    :func:`from_torch`.  An LSTM built with ``bias=False`` has no bias keys
    and gives ``b = 0``.

    The reverse direction of a bidirectional layer is an ordinary LSTM run
    over the time-reversed sequence: feed it ``xs[:, ::-1]`` and flip its
    outputs back.  Layer ``k > 0`` of a bidirectional LSTM takes the
    concatenation ``[forward, reverse]`` (2H features) as its input.

    Raises
    ------
    ValueError
        If the layer has a projection (``weight_hr_l{layer}``, from
        ``proj_size > 0``), which lstmc does not model; if a weight key is
        missing (the message names the missing and the existing keys); or if
        only one of the two bias keys is present.
    TypeError
        If ``state_dict`` is not a mapping (it has no ``keys()``), or
        ``layer`` is not an int.
    """
    if not (callable(getattr(state_dict, "keys", None))
            and hasattr(type(state_dict), "__getitem__")):
        raise TypeError(
            "state_dict must be a mapping of parameter names to tensors "
            f"(e.g. lstm.state_dict()), got {type(state_dict).__name__}")
    if isinstance(layer, bool) or not isinstance(layer, (int, np.integer)):
        raise TypeError(f"layer must be an int, got {type(layer).__name__}")
    if layer < 0:
        raise ValueError(f"layer must be >= 0, got {layer}")
    suffix = f"_l{int(layer)}" + ("_reverse" if reverse else "")
    keys = {name: name + suffix
            for name in ("weight_ih", "weight_hh", "bias_ih", "bias_hh")}
    available = list(state_dict.keys())
    if "weight_hr" + suffix in state_dict:
        raise ValueError(
            f"state_dict has 'weight_hr{suffix}': the LSTM was built with "
            "proj_size > 0 (a projected hidden state), which lstmc does not "
            "model; only LSTMs with proj_size=0 can be converted"
        )
    missing = [keys[n] for n in ("weight_ih", "weight_hh")
               if keys[n] not in state_dict]
    bias_present = [keys[n] in state_dict for n in ("bias_ih", "bias_hh")]
    if any(bias_present) and not all(bias_present):
        missing += [keys[n] for n, present in
                    zip(("bias_ih", "bias_hh"), bias_present) if not present]
    if missing:
        raise ValueError(
            f"state_dict has no {', '.join(repr(k) for k in missing)} "
            f"(layer={layer}, reverse={bool(reverse)}); its keys are "
            f"{available!r}"
        )
    return from_torch(
        state_dict[keys["weight_ih"]],
        state_dict[keys["weight_hh"]],
        state_dict[keys["bias_ih"]] if bias_present[0] else None,
        state_dict[keys["bias_hh"]] if bias_present[1] else None,
    )


# --------------------------------------------------------------------------
# Keras
# --------------------------------------------------------------------------

def from_keras(kernel, recurrent_kernel, bias=None):
    """lstmc ``(Wx, Wh, b)`` from a Keras ``LSTM`` / ``LSTMCell``'s weights.

    ==================  =======  ===============  ==========
    Keras               shape    lstmc            gate order
    ==================  =======  ===============  ==========
    kernel              (D, 4H)  ``Wx`` (D, 4H)   i, f, c, o
    recurrent_kernel    (H, 4H)  ``Wh`` (H, 4H)   -> f, g, i, o
    bias                (4H,)    ``b`` (4H,)
    ==================  =======  ===============  ==========

    These are ``layer.get_weights()`` in order; ``bias=None`` (a layer built
    with ``use_bias=False``) means zeros.  Only layers with the default
    ``activation="tanh"`` and ``recurrent_activation="sigmoid"`` compute
    lstmc's function.
    """
    kernel, rec, bias, _, _ = _column_arrays(("kernel", "recurrent_kernel", "bias"),
                                             kernel, recurrent_kernel, bias)
    return (_reorder(kernel, _KERAS, _LSTMC, axis=1),
            _reorder(rec, _KERAS, _LSTMC, axis=1),
            _reorder(bias, _KERAS, _LSTMC, axis=0))


def to_keras(Wx, Wh, b=None):
    """Keras ``(kernel, recurrent_kernel, bias)`` from lstmc weights.

    The inverse of :func:`from_keras` (layouts tabled there); the result is
    what ``layer.set_weights`` takes for ``keras.layers.LSTM(H)`` with the
    default activations and ``use_bias=True``.  ``b=None`` means zeros.
    """
    Wx, Wh, b, H, dtype = _lstmc_arrays(Wx, Wh, b)
    return (_reorder(Wx, _LSTMC, _KERAS, axis=1),
            _reorder(Wh, _LSTMC, _KERAS, axis=1),
            _reorder(b, _LSTMC, _KERAS, axis=0))


# --------------------------------------------------------------------------
# ONNX
# --------------------------------------------------------------------------

def _onnx_direction(arr, name, ndim, direction, num_directions):
    """Drop ONNX's leading num_directions axis of ``arr``, if it has one."""
    if arr.ndim == ndim:
        if num_directions != 1:
            raise ValueError(
                f"{name} has no num_directions axis (shape {arr.shape}) but "
                f"the other inputs hold {num_directions} directions"
            )
        return arr
    return arr[direction]


def from_onnx(W, R, B=None, *, direction=0):
    """lstmc ``(Wx, Wh, b)`` from the inputs of an ONNX ``LSTM`` operator.

    ======  ======================  ====================  ============
    ONNX    shape                   lstmc                 gate order
    ======  ======================  ====================  ============
    W       (num_dir, 4H, D)        ``Wx`` (D, 4H)        i, o, f, c
    R       (num_dir, 4H, H)        ``Wh`` (H, 4H)        -> f, g, i, o
    B       (num_dir, 8H)           ``b = Wb + Rb``
            = [Wb (4H), Rb (4H)]
    ======  ======================  ====================  ============

    One direction may be passed with or without the leading ``num_dir`` axis
    (``W`` of shape (4H, D) or (1, 4H, D), etc.).  For a bidirectional node
    (``num_dir == 2``) ``direction`` picks the forward (0) or the reverse (1)
    weights; the reverse one is an ordinary LSTM over the time-reversed
    sequence.  ``B=None`` (the operator's default) means zeros.  Peepholes
    (``P``), ``clip``, ``input_forget=1`` and non-default activations are not
    modeled by lstmc.
    """
    if isinstance(direction, bool) or not isinstance(direction,
                                                     (int, np.integer)):
        raise TypeError(
            f"direction must be an int, got {type(direction).__name__}")
    arrs, dtype = _arrays(("B",), W=W, R=R, B=B)
    expected_ndim = {"W": 2, "R": 2, "B": 1}
    counts = {}
    for name, arr in arrs.items():
        if arr is None:
            continue
        nd = expected_ndim[name]
        if arr.ndim not in (nd, nd + 1):
            raise ValueError(
                f"{name} must be {nd + 1}-D (num_directions first) or {nd}-D "
                f"(one direction), got shape {arr.shape}"
            )
        if arr.ndim == nd + 1:
            counts[name] = arr.shape[0]
    if len(set(counts.values())) > 1:
        raise ValueError(
            "W, R and B disagree on num_directions (their leading axis): "
            + ", ".join(f"{k} has {v}" for k, v in counts.items())
        )
    num_directions = next(iter(counts.values()), 1)
    if not 0 <= direction < num_directions:
        raise ValueError(
            f"direction={direction} is out of range for "
            f"{num_directions} direction(s) (num_directions is the leading "
            "axis of W, R and B)"
        )
    W = _onnx_direction(arrs["W"], "W", 2, direction, num_directions)
    R = _onnx_direction(arrs["R"], "R", 2, direction, num_directions)
    n4 = _gate_axis_length(W, "W", 0, ("4*H", "D"))
    H = n4 // 4
    _check_shape(R, "R", (n4, H), "(4*H, H) per direction")
    if arrs["B"] is None:
        b = np.zeros(n4, dtype)
    else:
        B = _onnx_direction(arrs["B"], "B", 1, direction, num_directions)
        _check_shape(B, "B", (2 * n4,), "(8*H,) per direction")
        b = B[:n4] + B[n4:]
    return (_reorder(W.T, _ONNX, _LSTMC, axis=1),
            _reorder(R.T, _ONNX, _LSTMC, axis=1),
            _reorder(b, _ONNX, _LSTMC, axis=0))


def to_onnx(Wx, Wh, b=None):
    """ONNX ``LSTM`` inputs ``(W, R, B)`` for one forward direction.

    The inverse of :func:`from_onnx` (layouts tabled there).  The arrays have
    the leading ``num_directions = 1`` axis, ready to be initializers of an
    ``LSTM`` node with ``direction="forward"``: ``W`` (1, 4H, D), ``R``
    (1, 4H, H), ``B`` (1, 8H) with all of ``b`` in ``Wb`` and ``Rb`` zeros.
    Stack two results along axis 0 for a bidirectional node.
    """
    Wx, Wh, b, H, dtype = _lstmc_arrays(Wx, Wh, b)
    W = _reorder(Wx.T, _LSTMC, _ONNX, axis=0)
    R = _reorder(Wh.T, _LSTMC, _ONNX, axis=0)
    B = np.zeros((1, 8 * H), dtype)
    B[0, :4 * H] = _reorder(b, _LSTMC, _ONNX, axis=0)
    return W[np.newaxis], R[np.newaxis], B
