"""A plain NumPy LSTM: the readable reference that lstmc is checked against.

lstmc computes the same thing in compiled code; this module says what that thing
is, in a few lines of NumPy a learner can read next to a textbook. The tests and
``python -m lstmc check`` compare the compiled layers with it, and the benchmark
times it as the NumPy contender. Everything is computed in the dtype of the
arrays given: float64 for the tests, float32 stays float32.

One step computes ``A = x @ Wx + h_prev @ Wh + b`` (N, 4H) and cuts its 4H axis
into the gates f, g, i, o (forget, cell candidate, input, output); ``_gates``
below does the rest. The same math comes in two forms:

* functions, for tests and for reading: :func:`cell_forward` /
  :func:`cell_backward` (one step) and :func:`time_forward` /
  :func:`time_backward` (a sequence), which pass their cache explicitly;
* the classes :class:`LSTM` and :class:`TimeLSTM` of the book *Deep Learning
  from Scratch 2* (``params``, ``grads`` written in place, ``cache``, ``h``,
  ``c``, ``dh``, ``stateful``), built on those functions. ``lstmc.LSTM`` and
  ``lstmc.TimeLSTM`` have the same interface.

:func:`numerical_gradient` checks a backward pass by central differences.
"""

from collections import namedtuple

import numpy as np

__all__ = [
    "sigmoid", "Cache", "cell_forward", "cell_backward", "time_forward",
    "time_backward", "LSTM", "TimeLSTM", "numerical_gradient",
]


def sigmoid(a):
    """The logistic function 1 / (1 + exp(-a)), without overflow.

    a >= 0: 1 / (1 + exp(-a));  a < 0: exp(a) / (1 + exp(a)), the same value.
    Both exponents are <= 0, so a large |a| gives exactly 0 or 1 and no
    warning; NaN stays NaN.
    """
    a = np.asarray(a)
    return np.exp(np.minimum(a, 0)) / (1 + np.exp(-np.abs(a)))


# What backward needs from one forward step. Positional, like the book's tuple,
# so it can be unpacked in one line: x, h_prev, c_prev, f, g, i, o, c_next = cache.
Cache = namedtuple("Cache", "x h_prev c_prev f g i o c_next")


def _gates(A, c_prev):
    """The gates and the next state from the pre-activations A (N, 4H)."""
    H = A.shape[1] // 4
    f = sigmoid(A[:, :H])
    g = np.tanh(A[:, H:2 * H])
    i = sigmoid(A[:, 2 * H:3 * H])
    o = sigmoid(A[:, 3 * H:])
    c_next = f * c_prev + g * i
    h_next = o * np.tanh(c_next)
    return h_next, c_next, (f, g, i, o)


def cell_forward(x, h_prev, c_prev, Wx, Wh, b):
    """One step: x (N, D), h_prev and c_prev (N, H) -> ``(h_next, c_next, cache)``."""
    A = np.dot(x, Wx) + np.dot(h_prev, Wh) + b
    h_next, c_next, (f, g, i, o) = _gates(A, c_prev)
    return h_next, c_next, Cache(x, h_prev, c_prev, f, g, i, o, c_next)


def cell_backward(dh_next, dc_next, cache, Wx, Wh):
    """Backward of one step -> ``(dx, dh_prev, dc_prev, dWx, dWh, db)``.

    The derivatives come from the saved gate outputs:
    sigmoid' = s (1 - s) and tanh' = 1 - tanh**2.
    """
    x, h_prev, c_prev, f, g, i, o, c_next = cache
    tanh_c = np.tanh(c_next)
    # Everything that reaches c_next: directly, and through h_next = o * tanh(c_next).
    ds = dc_next + dh_next * o * (1 - tanh_c ** 2)
    dc_prev = ds * f

    df = ds * c_prev * f * (1 - f)
    dg = ds * i * (1 - g ** 2)
    di = ds * g * i * (1 - i)
    do = dh_next * tanh_c * o * (1 - o)
    dA = np.hstack((df, dg, di, do))         # (N, 4H), gate order f, g, i, o

    dWx = np.dot(x.T, dA)
    dWh = np.dot(h_prev.T, dA)
    db = dA.sum(axis=0)
    dx = np.dot(dA, Wx.T)
    dh_prev = np.dot(dA, Wh.T)
    return dx, dh_prev, dc_prev, dWx, dWh, db


def time_forward(xs, Wx, Wh, b, h0=None, c0=None):
    """A whole sequence: xs (N, T, D) -> ``(hs, h_last, c_last, caches)``.

    hs is (N, T, H); h0 and c0 (N, H) default to zeros; caches holds one
    :class:`Cache` per step, for :func:`time_backward`.
    """
    N, T, D = xs.shape
    H = Wh.shape[0]
    # The input part of every step in one product; only h_prev @ Wh has to
    # wait for the previous step.
    xWb = (np.dot(xs.reshape(N * T, D), Wx) + b).reshape(N, T, 4 * H)
    h = np.zeros((N, H), xWb.dtype) if h0 is None else h0
    c = np.zeros((N, H), xWb.dtype) if c0 is None else c0
    hs = np.empty((N, T, H), xWb.dtype)
    caches = []
    for t in range(T):
        A = xWb[:, t, :] + np.dot(h, Wh)
        h_next, c_next, gates = _gates(A, c)
        caches.append(Cache(xs[:, t, :], h, c, *gates, c_next))
        hs[:, t, :] = h = h_next
        c = c_next
    return hs, h, c, caches


def time_backward(dhs, caches, Wx, Wh):
    """Backward of :func:`time_forward`, no gradient flowing into the last c.

    dhs (N, T, H) -> ``(dxs, dWx, dWh, db, dh0, dc0)``; the weight gradients
    are sums over the steps, dh0 and dc0 are with respect to the initial state.
    """
    N, T, H = dhs.shape
    dxs = np.empty((N, T, Wx.shape[0]), dhs.dtype)
    dWx, dWh = np.zeros_like(Wx), np.zeros_like(Wh)
    db = np.zeros(4 * H, dhs.dtype)
    dh = np.zeros((N, H), dhs.dtype)
    dc = np.zeros((N, H), dhs.dtype)
    for t in reversed(range(T)):
        # h of step t feeds both the output hs[:, t] and the next step.
        dx, dh, dc, gWx, gWh, gb = cell_backward(dhs[:, t, :] + dh, dc, caches[t], Wx, Wh)
        dxs[:, t, :] = dx
        dWx += gWx
        dWh += gWh
        db += gb
    return dxs, dWx, dWh, db, dh, dc


class LSTM:
    """One time step, the book's layer: ``forward`` keeps a cache for ``backward``."""

    def __init__(self, Wx, Wh, b):
        self.params = [Wx, Wh, b]
        self.grads = [np.zeros_like(Wx), np.zeros_like(Wh), np.zeros_like(b)]
        self.cache = None

    def forward(self, x, h_prev, c_prev):
        Wx, Wh, b = self.params
        h_next, c_next, self.cache = cell_forward(x, h_prev, c_prev, Wx, Wh, b)
        return h_next, c_next

    def backward(self, dh_next, dc_next):
        if self.cache is None:
            raise RuntimeError("backward() needs a forward() first")
        Wx, Wh, _ = self.params
        dx, dh_prev, dc_prev, *grads = cell_backward(dh_next, dc_next, self.cache, Wx, Wh)
        for grad, new in zip(self.grads, grads):
            grad[...] = new                  # in place: the same arrays every time
        return dx, dh_prev, dc_prev


class TimeLSTM:
    """A whole sequence, the book's layer.

    ``h`` and ``c`` hold the last step's state; a ``stateful`` layer starts the
    next ``forward`` from them (zeros when unset), otherwise every call starts
    from zeros. ``backward`` sets ``dh``, the gradient of the initial h.
    """

    def __init__(self, Wx, Wh, b, stateful=False):
        self.params = [Wx, Wh, b]
        self.grads = [np.zeros_like(Wx), np.zeros_like(Wh), np.zeros_like(b)]
        self.cache = None
        self.h = self.c = None
        self.dh = None
        self.stateful = stateful

    def forward(self, xs):
        Wx, Wh, b = self.params
        h0, c0 = (self.h, self.c) if self.stateful else (None, None)
        hs, self.h, self.c, self.cache = time_forward(xs, Wx, Wh, b, h0, c0)
        return hs

    def backward(self, dhs):
        if self.cache is None:
            raise RuntimeError("backward() needs a forward() first")
        Wx, Wh, _ = self.params
        dxs, dWx, dWh, db, self.dh, _ = time_backward(dhs, self.cache, Wx, Wh)
        for grad, new in zip(self.grads, (dWx, dWh, db)):
            grad[...] = new
        return dxs

    def set_state(self, h, c=None):
        self.h, self.c = h, c

    def reset_state(self):
        self.h = self.c = None


def numerical_gradient(loss, arr, eps=1e-6):
    """Central differences of the scalar ``loss()`` with respect to ``arr``.

    ``arr`` (float64, writable) is changed in place one entry at a time and
    restored exactly afterwards, so ``loss`` must read it on every call.
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
