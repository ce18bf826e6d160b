"""lstmc.bench._floor: the BLAS floor of `python -m lstmc bench`.

`floor` runs, `reps` times in a nogil C loop (no Python in the loop), the very BLAS
calls that an lstmc call makes, on buffers of the same shapes, and returns the
seconds per repetition. What lstmc adds on top of this (argument checks, gate loops,
allocation) is what the benchmark's "x/floor" ratios show.

The dtype is chosen once per call: `_timed` takes fused memoryviews, so Cython picks
its float or double version from the buffers; everything below it is fused too.
"""
from cython cimport floating

from _blas cimport gemm, gemv_t, gemv_n
from _gates cimport outer

import time

import numpy as np


cdef enum Kind:
    CELL_FORWARD
    CELL_BACKWARD
    SEQ_FORWARD
    SEQ_BACKWARD

_KINDS = {"cell_forward": CELL_FORWARD, "cell_backward": CELL_BACKWARD,
          "seq_forward": SEQ_FORWARD, "seq_backward": SEQ_BACKWARD}


cdef void _cell_forward(const floating *Wx, const floating *Wh, const floating *x,
                        const floating *h, floating *A, int N, int D, int H) noexcept nogil:
    cdef int G4 = 4 * H
    if N == 1:
        gemv_t(D, G4, 1, Wx, G4, x, 0, A)                          # A = x @ Wx
        gemv_t(H, G4, 1, Wh, G4, h, 1, A)                          # A += h @ Wh
    else:
        gemm(c'n', c'n', N, G4, D, 1, x, D, Wx, G4, 0, A, G4)      # A = x @ Wx
        gemm(c'n', c'n', N, G4, H, 1, h, H, Wh, G4, 1, A, G4)      # A += h @ Wh


cdef void _cell_backward(const floating *Wx, const floating *Wh, const floating *x,
                         const floating *h, const floating *dA,
                         floating *dWx, floating *dWh, floating *dx, floating *dh,
                         int N, int D, int H) noexcept nogil:
    cdef int G4 = 4 * H
    if N == 1:
        outer(D, G4, x, dA, dWx)                                  # dWx = outer(x, dA)
        outer(H, G4, h, dA, dWh)                                  # dWh = outer(h, dA)
        gemv_n(D, G4, 1, Wx, G4, dA, 0, dx)                        # dx = dA @ Wx.T
        gemv_n(H, G4, 1, Wh, G4, dA, 0, dh)                        # dh = dA @ Wh.T
    else:
        gemm(c't', c'n', D, G4, N, 1, x, D, dA, G4, 0, dWx, G4)    # dWx = x.T @ dA
        gemm(c't', c'n', H, G4, N, 1, h, H, dA, G4, 0, dWh, G4)    # dWh = h.T @ dA
        gemm(c'n', c't', N, D, G4, 1, dA, G4, Wx, G4, 0, dx, D)    # dx = dA @ Wx.T
        gemm(c'n', c't', N, H, G4, 1, dA, G4, Wh, G4, 0, dh, H)    # dh = dA @ Wh.T


cdef void _seq_forward(const floating *Wx, const floating *Wh, const floating *xs,
                       const floating *hs, floating *G, int N, int T, int D, int H
                       ) noexcept nogil:
    cdef int G4 = 4 * H
    cdef Py_ssize_t t
    if N * T == 1:
        gemv_t(D, G4, 1, Wx, G4, xs, 0, G)                         # G = xs @ Wx
    else:
        gemm(c'n', c'n', N * T, G4, D, 1, xs, D, Wx, G4, 0, G, G4) # G = xs @ Wx
    for t in range(1, T):                                          # G[:, t] += h @ Wh
        if N == 1:
            gemv_t(H, G4, 1, Wh, G4, hs + (t - 1) * H, 1, G + t * G4)
        else:
            gemm(c'n', c'n', N, G4, H, 1, hs + (t - 1) * H, T * H, Wh, G4, 1,
                 G + t * G4, T * G4)


cdef void _seq_backward(const floating *Wx, const floating *Wh, const floating *xs,
                        const floating *hs, const floating *dA, floating *dh,
                        floating *dWx, floating *dWh, floating *dxs,
                        int N, int T, int D, int H) noexcept nogil:
    cdef int G4 = 4 * H, M = N * T
    cdef Py_ssize_t t
    for t in range(T - 1, -1, -1):                                 # dh = dA[:, t] @ Wh.T
        if N == 1:
            gemv_n(H, G4, 1, Wh, G4, dA + t * G4, 0, dh)
        else:
            gemm(c'n', c't', N, H, G4, 1, dA + t * G4, T * G4, Wh, G4, 0, dh, H)
    gemm(c't', c'n', D, G4, M, 1, xs, D, dA, G4, 0, dWx, G4)       # dWx = xs.T @ dA
    gemm(c't', c'n', H, G4, M, 1, hs, H, dA, G4, 0, dWh, G4)       # dWh = hs.T @ dA
    gemm(c'n', c't', M, D, G4, 1, dA, G4, Wx, G4, 0, dxs, D)       # dxs = dA @ Wx.T


cdef void _repeat(Kind kind, floating[:, ::1] Wx, floating[:, ::1] Wh, floating[:, ::1] x,
                  floating[:, ::1] h, floating[:, ::1] A, floating[:, ::1] dWx,
                  floating[:, ::1] dWh, floating[:, ::1] dx, floating[:, ::1] dh,
                  int N, int T, int D, int H, long reps) noexcept nogil:
    """The calls of `kind`, reps times. A holds the gates (forward) or their gradient
    (backward); x and h are the inputs and hidden states, one row per (n, t)."""
    cdef long r
    for r in range(reps):
        if kind == CELL_FORWARD:
            _cell_forward(&Wx[0, 0], &Wh[0, 0], &x[0, 0], &h[0, 0], &A[0, 0], N, D, H)
        elif kind == CELL_BACKWARD:
            _cell_backward(&Wx[0, 0], &Wh[0, 0], &x[0, 0], &h[0, 0], &A[0, 0], &dWx[0, 0],
                           &dWh[0, 0], &dx[0, 0], &dh[0, 0], N, D, H)
        elif kind == SEQ_FORWARD:
            _seq_forward(&Wx[0, 0], &Wh[0, 0], &x[0, 0], &h[0, 0], &A[0, 0], N, T, D, H)
        else:
            _seq_backward(&Wx[0, 0], &Wh[0, 0], &x[0, 0], &h[0, 0], &A[0, 0], &dh[0, 0],
                          &dWx[0, 0], &dWh[0, 0], &dx[0, 0], N, T, D, H)


def _timed(Kind kind, floating[:, ::1] Wx, floating[:, ::1] Wh, floating[:, ::1] x,
           floating[:, ::1] h, floating[:, ::1] A, floating[:, ::1] dWx,
           floating[:, ::1] dWh, floating[:, ::1] dx, floating[:, ::1] dh,
           int N, int T, int D, int H, long reps):
    """Seconds per repetition of `reps` repetitions, after one untimed warm-up."""
    cdef long n
    t0 = 0.0
    for n in (1, reps):
        t0 = time.perf_counter()
        with nogil:
            _repeat(kind, Wx, Wh, x, h, A, dWx, dWh, dx, dh, N, T, D, H, n)
    return (time.perf_counter() - t0) / reps


# Buffers live as long as the module, like a layer's reused scratch; only the last
# shape's are kept.
_BUFFERS = {}


def floor(kind, int N, int D, int H, dtype=np.float32, int T=1, long reps=100):
    """Seconds per repetition of the BLAS calls of `kind` (one timed batch of
    `reps` repetitions in a nogil loop). kind: cell_forward, cell_backward,
    seq_forward, seq_backward. T is used by the seq_ kinds only."""
    cdef Kind which = _KINDS[kind]
    dtype = np.dtype(dtype)
    if dtype not in (np.float32, np.float64):
        raise TypeError(f"dtype must be float32 or float64; got {dtype}")
    if min(N, D, H, T) < 1:
        raise ValueError(f"N, D, H and T must be >= 1; got {N}, {D}, {H}, {T}")
    if which in (CELL_FORWARD, CELL_BACKWARD):
        T = 1
    key = (N, T, D, H, dtype.char)
    buf = _BUFFERS.get(key)
    if buf is None:
        rng = np.random.default_rng(0)
        rows = N * T
        shapes = {"Wx": (D, 4 * H), "Wh": (H, 4 * H), "x": (rows, D), "h": (rows, H),
                  "A": (rows, 4 * H), "dWx": (D, 4 * H), "dWh": (H, 4 * H),
                  "dx": (rows, D), "dh": (max(rows, N), H)}
        buf = {k: (rng.standard_normal(s) * 0.1).astype(dtype) for k, s in shapes.items()}
        _BUFFERS.clear()
        _BUFFERS[key] = buf
    return _timed(which, buf["Wx"], buf["Wh"], buf["x"], buf["h"], buf["A"], buf["dWx"],
                  buf["dWh"], buf["dx"], buf["dh"], N, T, D, H, max(1, reps))
