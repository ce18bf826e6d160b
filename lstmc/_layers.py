"""The two layers: LSTM (one time step) and TimeLSTM (a whole sequence).

They keep the API of the classic NumPy LSTM (Deep Learning from Scratch 2):
`params`, `grads`, `forward`, `backward`. Each public call makes one call into
the layer's work object (lstmc._work, of the layer's dtype), which checks the
arguments, runs the kernels (lstmc._cell) with the GIL released, and raises
the errors worded in lstmc._validate.

The math (gate order f, g, i, o along the 4H axis):

    A      = x @ Wx + h_prev @ Wh + b            # (N, 4H)
    f, i, o = sigmoid(A[:, :H]), sigmoid(A[:, 2H:3H]), sigmoid(A[:, 3H:])
    g      = tanh(A[:, H:2H])
    c_next = f * c_prev + g * i
    h_next = o * tanh(c_next)
"""
import numpy as np

from . import _validate, _work

__all__ = ["LSTM", "TimeLSTM"]


class _Layer:
    """What both layers share: weights, gradients, dtype, pickling."""

    _work_classes = None            # {dtype: the work class of that dtype}

    def __init__(self, Wx, Wh, b):
        self.params, self.dtype, D, H = _validate.weights(Wx, Wh, b)
        self.grads = [np.zeros_like(p) for p in self.params]
        self._work = self._work_classes[self.dtype](D, H)

    @property
    def input_size(self):
        """D, the width of an input row."""
        return self._work.input_size

    @property
    def hidden_size(self):
        """H, the width of the hidden and cell states."""
        return self._work.hidden_size

    # Pickle and deepcopy keep weights, gradients and held state, not the
    # scratch buffers and cache (rebuilt on first use).
    _transient = ("_work", "cache")

    def __getstate__(self):
        return {k: v for k, v in self.__dict__.items() if k not in self._transient}

    def __setstate__(self, state):
        self.__dict__.update(state)
        Wx, Wh, b = self.params
        self._work = self._work_classes[self.dtype](Wx.shape[0], Wh.shape[0])
        self._reset_cache()

    def __repr__(self):
        return (f"{type(self).__name__}(D={self.input_size}, H={self.hidden_size}, "
                f"dtype={self.dtype})")


class LSTM(_Layer):
    """One LSTM time step, as in the book, compiled.

    LSTM(Wx, Wh, b) with Wx (D, 4H), Wh (H, 4H), b (4H,), all float32 or all
    float64 (sgemm or dgemm). `params` is [Wx, Wh, b] (the very arrays passed
    when they are C-contiguous), `grads` is [dWx, dWh, db].
    """

    _work_classes = _work.CELL_WORK

    def __init__(self, Wx, Wh, b):
        super().__init__(Wx, Wh, b)
        self.cache = None

    def _reset_cache(self):
        self.cache = None

    def forward(self, x, h_prev, c_prev, *, out=None, train=True):
        """(h_next, c_next) for x (N, D), h_prev (N, H), c_prev (N, H).

        out=(h_out, c_out) writes the results into those (N, H) arrays and returns
        them; they may be h_prev and c_prev themselves. train=False keeps no cache
        for backward (inference). The layer's scratch buffers are reused while N
        stays the same, so `train=False, out=...` allocates nothing.
        """
        return self._work.forward(self, x, h_prev, c_prev, out, train)

    def backward(self, dh_next, dc_next):
        """(dx, dh_prev, dc_prev) for the last forward; writes `grads` in place."""
        return self._work.backward(self, dh_next, dc_next)


class TimeLSTM(_Layer):
    """An LSTM over a whole sequence, the time loop in compiled code.

    TimeLSTM(Wx, Wh, b, stateful=False, reverse=False). forward(xs) maps xs
    (N, T, D) to hs (N, T, H), starting from h0 / c0 when given, else from the
    held state when `stateful` and one is held, else from zeros; afterwards `h`
    and `c` hold each row's last state. backward(dhs) returns dxs, writes the
    gradients summed over time into `grads`, and sets `dh` and `dc`, the
    gradients with respect to the initial h and c.

    reverse=True runs each row from its last valid step back to step 0 (the
    reverse direction of torch's and ONNX's bidirectional LSTMs); hs stays
    aligned with the input steps.
    """

    _work_classes = _work.TIME_WORK
    reverse = False             # (class defaults: layers pickled before these existed)
    dc = None

    def __init__(self, Wx, Wh, b, stateful=False, reverse=False):
        super().__init__(Wx, Wh, b)
        self.stateful = bool(stateful)
        self.reverse = bool(reverse)
        self.h = None
        self.c = None
        self.dh = None
        self.dc = None

    def _reset_cache(self):
        pass                    # TimeLSTM's cache lives in its _work

    def set_state(self, h, c=None):
        """Hold h (and c; None means zeros) as the state the next forward starts
        from. Only a stateful layer holds a state: on another, this raises
        ValueError (pass stateful=True, or h0= / c0= to forward)."""
        if not self.stateful:
            raise ValueError(
                "set_state() on a TimeLSTM with stateful=False would be ignored: build "
                "it with stateful=True to hold a state between calls, or pass the "
                "initial state to this call as forward(xs, h0=..., c0=...)")
        H = self.hidden_size
        h = _validate.state(h, "h", self.dtype, H)
        if c is not None:
            c = _validate.state(c, "c", self.dtype, H, h.shape[0])
        self.h, self.c = h, c

    def reset_state(self):
        """Forget the held state: the next forward starts from zeros."""
        self.h, self.c = None, None

    def forward(self, xs, *, lengths=None, h0=None, c0=None, train=True):
        """hs (N, T, H) for xs (N, T, D).

        lengths: integers (N,), each in 0 .. T: row i runs steps 0 .. lengths[i]-1
            only (from its last valid step back to 0 when `reverse`); hs[i, t] is 0
            for t >= lengths[i], and `h[i]`, `c[i]` are row i's state after its
            last valid step (its initial state for a length of 0). Rows that have
            finished drop out of the per-step products (hs is computed in the rows'
            order by length, then put back; training and reverse calls copy xs so
            too). None: every row runs T steps.
        h0, c0: (N, H) initial state of this call (None: zeros); either one given
            replaces the held state of a stateful layer.
        train=False keeps nothing for backward: beyond hs, its working memory is
            bounded whatever T is (the gates of 32 MB worth of steps at a time, or
            of 8 steps if that is more).
        """
        return _forward(self, xs, lengths, h0, c0, train)

    def backward(self, dhs):
        """dxs (N, T, D) for dhs (N, T, H); writes `grads` in place and sets `dh`
        and `dc` (gradients of the initial h and c). dhs past a row's length is
        ignored, and dxs is 0 there."""
        return _backward(self, dhs)


# TimeLSTM's calls, for StackedLSTM too, which may cap a call's threads (0: lstmc's
# setting) to run the two directions of a layer side by side.

def _forward(layer, xs, lengths, h0, c0, train, threads=0):
    hs, layer.h, layer.c = layer._work.forward(layer, xs, lengths, h0, c0, train, threads)
    return hs


def _backward(layer, dhs, threads=0):
    dxs, layer.dh, layer.dc = layer._work.backward(layer, dhs, threads)
    return dxs
