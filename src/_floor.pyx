"""lstmc._floor: the BLAS floor for `python -m lstmc bench`.

Each function runs, `reps` times in a nogil C loop (no Python in the loop), the
very BLAS calls that an lstmc call makes, on buffers of the same shapes, and
returns the seconds per repetition. What
lstmc adds on top of this (argument checks, gate loops, allocation) is what
the benchmark's "x floor" columns show.
"""
from cython cimport floating
cimport numpy as cnp

from _blas cimport gemm, gemv_t, gemv_n

cdef extern from "_gates.h" nogil:
    void lstmc_outer_f(Py_ssize_t M, Py_ssize_t N, const float *x, const float *y, float *A)
    void lstmc_outer_d(Py_ssize_t M, Py_ssize_t N, const double *x, const double *y, double *A)

import time

import numpy as np

cnp.import_array()


cdef void _cell_fwd(floating *Wx, floating *Wh, floating *x, floating *h, floating *A,
                    int N, int D, int H) noexcept nogil:
    cdef int G4 = 4 * H
    if N == 1:
        gemv_t(D, G4, 1, Wx, G4, x, 0, A)                   # A = x @ Wx
        gemv_t(H, G4, 1, Wh, G4, h, 1, A)                   # A += h @ Wh
    else:
        gemm(c'n', c'n', N, G4, D, 1, x, D, Wx, G4, 0, A, G4)
        gemm(c'n', c'n', N, G4, H, 1, h, H, Wh, G4, 1, A, G4)


cdef void _cell_bwd(floating *Wx, floating *Wh, floating *x, floating *h, floating *dA,
                    floating *dWx, floating *dWh, floating *dx, floating *dh,
                    int N, int D, int H) noexcept nogil:
    cdef int G4 = 4 * H
    if N == 1:
        if floating is float:
            lstmc_outer_f(D, G4, x, dA, dWx)               # dWx = outer(x, dA)
            lstmc_outer_f(H, G4, h, dA, dWh)               # dWh = outer(h, dA)
        else:
            lstmc_outer_d(D, G4, x, dA, dWx)
            lstmc_outer_d(H, G4, h, dA, dWh)
        gemv_n(D, G4, 1, Wx, G4, dA, 0, dx)                # dx = dA @ Wx.T
        gemv_n(H, G4, 1, Wh, G4, dA, 0, dh)                # dh = dA @ Wh.T
    else:
        gemm(c't', c'n', D, G4, N, 1, x, D, dA, G4, 0, dWx, G4)
        gemm(c't', c'n', H, G4, N, 1, h, H, dA, G4, 0, dWh, G4)
        gemm(c'n', c't', N, D, G4, 1, dA, G4, Wx, G4, 0, dx, D)
        gemm(c'n', c't', N, H, G4, 1, dA, G4, Wh, G4, 0, dh, H)


cdef void _seq_fwd(floating *Wx, floating *Wh, floating *xs, floating *hs, floating *G,
                   int N, int T, int D, int H) noexcept nogil:
    cdef int G4 = 4 * H, t
    if N * T == 1:
        gemv_t(D, G4, 1, Wx, G4, xs, 0, G)
    else:
        gemm(c'n', c'n', N * T, G4, D, 1, xs, D, Wx, G4, 0, G, G4)   # G = xs @ Wx
    for t in range(1, T):                                          # G[:, t] += h @ Wh
        if N == 1:
            gemv_t(H, G4, 1, Wh, G4, hs + (t - 1) * H, 1, G + t * G4)
        else:
            gemm(c'n', c'n', N, G4, H, 1, hs + (t - 1) * H, T * H, Wh, G4, 1,
                 G + t * G4, T * G4)


cdef void _seq_bwd(floating *Wx, floating *Wh, floating *xs, floating *hs, floating *dA,
                   floating *dh, floating *dWx, floating *dWh, floating *dxs,
                   int N, int T, int D, int H) noexcept nogil:
    cdef int G4 = 4 * H, t, M = N * T
    for t in range(T - 1, -1, -1):                                 # dh = dA_t @ Wh.T
        if N == 1:
            gemv_n(H, G4, 1, Wh, G4, dA + t * G4, 0, dh)
        else:
            gemm(c'n', c't', N, H, G4, 1, dA + t * G4, T * G4, Wh, G4, 0, dh, H)
    gemm(c't', c'n', D, G4, M, 1, xs, D, dA, G4, 0, dWx, G4)       # dWx = xs.T @ dA
    gemm(c't', c'n', H, G4, M, 1, hs, H, dA, G4, 0, dWh, G4)       # dWh = hs.T @ dA
    gemm(c'n', c't', M, D, G4, 1, dA, G4, Wx, G4, 0, dxs, D)       # dxs = dA @ Wx.T


cdef double _run(int which, int N, int T, int D, int H, bint single, dict buf,
                 long reps) except -1:
    cdef char *p[9]
    names = ("Wx", "Wh", "x", "h", "A", "dWx", "dWh", "dx", "dh")
    for k, name in enumerate(names):
        p[k] = cnp.PyArray_BYTES(<cnp.ndarray> buf[name])
    cdef long r
    cdef long start = -1                # one untimed warm-up repetition
    t0 = 0.0
    with nogil:
        for r in range(start, reps):
            if r == 0:
                with gil:
                    t0 = time.perf_counter()
            if which == 0:
                if single:
                    _cell_fwd(<float *> p[0], <float *> p[1], <float *> p[2], <float *> p[3],
                              <float *> p[4], N, D, H)
                else:
                    _cell_fwd(<double *> p[0], <double *> p[1], <double *> p[2], <double *> p[3],
                              <double *> p[4], N, D, H)
            elif which == 1:
                if single:
                    _cell_bwd(<float *> p[0], <float *> p[1], <float *> p[2], <float *> p[3],
                              <float *> p[4], <float *> p[5], <float *> p[6], <float *> p[7],
                              <float *> p[8], N, D, H)
                else:
                    _cell_bwd(<double *> p[0], <double *> p[1], <double *> p[2], <double *> p[3],
                              <double *> p[4], <double *> p[5], <double *> p[6], <double *> p[7],
                              <double *> p[8], N, D, H)
            elif which == 2:
                if single:
                    _seq_fwd(<float *> p[0], <float *> p[1], <float *> p[2], <float *> p[3],
                             <float *> p[4], N, T, D, H)
                else:
                    _seq_fwd(<double *> p[0], <double *> p[1], <double *> p[2], <double *> p[3],
                             <double *> p[4], N, T, D, H)
            else:
                if single:
                    _seq_bwd(<float *> p[0], <float *> p[1], <float *> p[2], <float *> p[3],
                             <float *> p[4], <float *> p[8], <float *> p[5], <float *> p[6],
                             <float *> p[7], N, T, D, H)
                else:
                    _seq_bwd(<double *> p[0], <double *> p[1], <double *> p[2], <double *> p[3],
                             <double *> p[4], <double *> p[8], <double *> p[5], <double *> p[6],
                             <double *> p[7], N, T, D, H)
    return (time.perf_counter() - t0) / reps


_KINDS = {"cell_forward": 0, "cell_backward": 1, "seq_forward": 2, "seq_backward": 3}


def floor(kind, int N, int D, int H, dtype=np.float32, int T=1, long reps=100):
    """Seconds per repetition of the BLAS calls of `kind` (one timed batch of
    `reps` repetitions in a nogil loop). kind: cell_forward, cell_backward,
    seq_forward, seq_backward. T is used by the seq_ kinds only."""
    which = _KINDS[kind]
    dtype = np.dtype(dtype)
    if dtype not in (np.float32, np.float64):
        raise TypeError(f"dtype must be float32 or float64; got {dtype}")
    if which < 2:
        T = 1
    key = (N, T, D, H, dtype.char)
    buf = _BUFFERS.get(key)
    if buf is None:
        # Buffers live as long as the module, like a layer's reused scratch.
        rng = np.random.default_rng(0)
        rows = N * T
        shapes = {"Wx": (D, 4 * H), "Wh": (H, 4 * H), "x": (rows, D), "h": (rows, H),
                  "A": (rows, 4 * H), "dWx": (D, 4 * H), "dWh": (H, 4 * H),
                  "dx": (rows, D), "dh": (max(rows, N), H)}
        buf = {k: (rng.standard_normal(s) * 0.1).astype(dtype) for k, s in shapes.items()}
        _BUFFERS.clear()
        _BUFFERS[key] = buf
    return _run(which, N, T, D, H, dtype == np.float32, buf, max(1, reps))


_BUFFERS = {}
