"""lstmc._cell: the compiled core of lstmc.

What lives here, and why:
  - The step kernels (`lstm_step_forward`, `lstm_step_backward`), fused over
    float/double, `noexcept nogil`, on raw pointers with leading dimensions.
    They are lstmc's C-level API (declared in _cell.pxd, installed beside the
    extension) and the single source of the math: the sequence loop below
    calls the same kernels.
  - The sequence loop (`TimeWork.forward` / `.backward`): one input gemm for
    all steps, then per step the recurrent gemm and the fused gate loop; the
    backward collects dA for every step and finishes with one gemm each for
    dWx, dWh and dxs.
  - The entry points the Python classes call once per public call. The one-step
    cell is called at sizes where a microsecond matters, so its argument checks
    are done here on the ndarray structs (a few ns each); anything that fails
    the fast check goes to lstmc._validate, which converts array-likes and
    non-contiguous layouts or raises the exception that names the argument.
Matrix products go through _blas.pxd (SciPy's BLAS); the element-wise gate
loops are C in _gates.h so that they vectorize for the CPU at hand.
"""
from cython cimport floating
from libc.string cimport memcpy, memset
from libc.limits cimport INT_MAX
from cpython.pythread cimport (PyThread_type_lock, PyThread_allocate_lock,
                               PyThread_free_lock, PyThread_acquire_lock,
                               PyThread_release_lock, WAIT_LOCK, NOWAIT_LOCK)
cimport numpy as cnp

from _blas cimport gemm, gemv_t, gemv_n

import numpy as np
from lstmc import _validate

cnp.import_array()

cdef extern from "_gates.h" nogil:
    void lstmc_gates_forward_f(Py_ssize_t N, Py_ssize_t H, float *A, Py_ssize_t lda,
                               const float *b, const float *c_prev, Py_ssize_t ldcp,
                               float *c_next, Py_ssize_t ldcn, float *h_next,
                               Py_ssize_t ldhn, float *tanh_c, Py_ssize_t ldtc)
    void lstmc_gates_forward_d(Py_ssize_t N, Py_ssize_t H, double *A, Py_ssize_t lda,
                               const double *b, const double *c_prev, Py_ssize_t ldcp,
                               double *c_next, Py_ssize_t ldcn, double *h_next,
                               Py_ssize_t ldhn, double *tanh_c, Py_ssize_t ldtc)
    void lstmc_gates_backward_f(Py_ssize_t N, Py_ssize_t H, const float *dh, Py_ssize_t lddh,
                                const float *dh2, Py_ssize_t lddh2, const float *dc,
                                Py_ssize_t lddc, const float *G, Py_ssize_t ldg,
                                const float *c_prev, Py_ssize_t ldcp, const float *tanh_c,
                                Py_ssize_t ldtc, float *dA, Py_ssize_t ldda,
                                float *dc_prev, Py_ssize_t lddcp)
    void lstmc_gates_backward_d(Py_ssize_t N, Py_ssize_t H, const double *dh, Py_ssize_t lddh,
                                const double *dh2, Py_ssize_t lddh2, const double *dc,
                                Py_ssize_t lddc, const double *G, Py_ssize_t ldg,
                                const double *c_prev, Py_ssize_t ldcp, const double *tanh_c,
                                Py_ssize_t ldtc, double *dA, Py_ssize_t ldda,
                                double *dc_prev, Py_ssize_t lddcp)
    void lstmc_colsum_f(Py_ssize_t N, Py_ssize_t M, const float *X, Py_ssize_t ldx, float *out)
    void lstmc_colsum_d(Py_ssize_t N, Py_ssize_t M, const double *X, Py_ssize_t ldx, double *out)
    void lstmc_outer_f(Py_ssize_t M, Py_ssize_t N, const float *x, const float *y, float *A)
    void lstmc_outer_d(Py_ssize_t M, Py_ssize_t N, const double *x, const double *y, double *A)


# ----------------------------------------------------------------- kernels

cdef inline bint _fits(Py_ssize_t a, Py_ssize_t b, Py_ssize_t c,
                       Py_ssize_t d, Py_ssize_t e) noexcept nogil:
    return a <= INT_MAX and b <= INT_MAX and c <= INT_MAX and d <= INT_MAX and e <= INT_MAX


cdef void lstm_gates_forward(
    Py_ssize_t N, Py_ssize_t H, floating *gates, Py_ssize_t ldg, const floating *b,
    const floating *c_prev, Py_ssize_t ldcp, floating *c_next, Py_ssize_t ldcn,
    floating *h_next, Py_ssize_t ldhn, floating *tanh_c, Py_ssize_t ldtc,
) noexcept nogil:
    if floating is float:
        lstmc_gates_forward_f(N, H, gates, ldg, b, c_prev, ldcp, c_next, ldcn,
                              h_next, ldhn, tanh_c, ldtc)
    else:
        lstmc_gates_forward_d(N, H, gates, ldg, b, c_prev, ldcp, c_next, ldcn,
                              h_next, ldhn, tanh_c, ldtc)


cdef void lstm_gates_backward(
    Py_ssize_t N, Py_ssize_t H, const floating *dh, Py_ssize_t lddh,
    const floating *dh2, Py_ssize_t lddh2, const floating *dc, Py_ssize_t lddc,
    const floating *gates, Py_ssize_t ldg, const floating *c_prev, Py_ssize_t ldcp,
    const floating *tanh_c, Py_ssize_t ldtc, floating *dA, Py_ssize_t ldda,
    floating *dc_prev, Py_ssize_t lddcp,
) noexcept nogil:
    if floating is float:
        lstmc_gates_backward_f(N, H, dh, lddh, dh2, lddh2, dc, lddc, gates, ldg,
                               c_prev, ldcp, tanh_c, ldtc, dA, ldda, dc_prev, lddcp)
    else:
        lstmc_gates_backward_d(N, H, dh, lddh, dh2, lddh2, dc, lddc, gates, ldg,
                               c_prev, ldcp, tanh_c, ldtc, dA, ldda, dc_prev, lddcp)


cdef inline void _colsum(Py_ssize_t N, Py_ssize_t M, const floating *X, Py_ssize_t ldx,
                         floating *out) noexcept nogil:
    if floating is float:
        lstmc_colsum_f(N, M, X, ldx, out)
    else:
        lstmc_colsum_d(N, M, X, ldx, out)


cdef inline void _outer(Py_ssize_t M, Py_ssize_t N, const floating *x, const floating *y,
                        floating *A) noexcept nogil:
    if floating is float:
        lstmc_outer_f(M, N, x, y, A)
    else:
        lstmc_outer_d(M, N, x, y, A)


cdef inline void _affine(Py_ssize_t N, Py_ssize_t K, Py_ssize_t G4,
                         const floating *x, Py_ssize_t ldx, const floating *W,
                         floating beta, floating *C, Py_ssize_t ldc) noexcept nogil:
    """C := x @ W + beta * C, x (N, K), W (K, G4) contiguous. One row goes to gemv:
    some OpenBLAS kernels run a one-row gemm ten times slower than gemv."""
    if N == 1:
        gemv_t(<int> K, <int> G4, 1, W, <int> G4, x, beta, C)
    else:
        gemm(c'n', c'n', <int> N, <int> G4, <int> K, 1, x, <int> ldx, W, <int> G4,
             beta, C, <int> ldc)


cdef int lstm_step_forward(
    Py_ssize_t N, Py_ssize_t D, Py_ssize_t H,
    const floating *x, Py_ssize_t ldx,
    const floating *h_prev, Py_ssize_t ldhp,
    const floating *c_prev, Py_ssize_t ldcp,
    const floating *Wx, const floating *Wh, const floating *b,
    floating *gates, Py_ssize_t ldg,
    floating *h_next, Py_ssize_t ldhn,
    floating *c_next, Py_ssize_t ldcn,
    floating *tanh_c, Py_ssize_t ldtc,
) noexcept nogil:
    cdef Py_ssize_t G4 = 4 * H
    if N <= 0:
        return 0
    if not _fits(N, D, G4, ldx, ldhp) or not _fits(ldg, 0, 0, 0, 0):
        return -1
    if x != NULL:
        _affine(N, D, G4, x, ldx, Wx, 0, gates, ldg)          # gates = x @ Wx
    if h_prev != NULL:
        _affine(N, H, G4, h_prev, ldhp, Wh, 1, gates, ldg)    # gates += h_prev @ Wh
    lstm_gates_forward(N, H, gates, ldg, b, c_prev, ldcp, c_next, ldcn,
                       h_next, ldhn, tanh_c, ldtc)
    return 0


cdef int lstm_step_backward(
    Py_ssize_t N, Py_ssize_t D, Py_ssize_t H,
    const floating *dh_next, Py_ssize_t lddh,
    const floating *dc_next, Py_ssize_t lddc,
    const floating *x, Py_ssize_t ldx,
    const floating *h_prev, Py_ssize_t ldhp,
    const floating *c_prev, Py_ssize_t ldcp,
    const floating *Wx, const floating *Wh,
    const floating *gates, Py_ssize_t ldg,
    const floating *tanh_c, Py_ssize_t ldtc,
    floating *dA, Py_ssize_t ldda,
    floating *dx, Py_ssize_t lddx,
    floating *dh_prev, Py_ssize_t lddhp,
    floating *dc_prev, Py_ssize_t lddcp,
    floating *dWx, floating *dWh, floating *db,
) noexcept nogil:
    cdef Py_ssize_t G4 = 4 * H
    if not _fits(N, D, G4, ldx, ldhp) or not _fits(ldda, lddx, lddhp, 0, 0):
        return -1
    if N <= 0:
        memset(dWx, 0, D * G4 * sizeof(floating))
        memset(dWh, 0, H * G4 * sizeof(floating))
        memset(db, 0, G4 * sizeof(floating))
        return 0
    lstm_gates_backward(N, H, dh_next, lddh, <floating *> NULL, 0, dc_next, lddc,
                        gates, ldg, c_prev, ldcp, tanh_c, ldtc, dA, ldda, dc_prev, lddcp)
    if N == 1:
        # One row: the weight gradients are outer products (a write-only loop:
        # twice as fast as zeroing and BLAS ger), the rest gemv.
        _outer(D, G4, x, dA, dWx)                                     # dWx = outer(x, dA)
        if h_prev != NULL:
            _outer(H, G4, h_prev, dA, dWh)                            # dWh = outer(h_prev, dA)
        else:
            memset(dWh, 0, H * G4 * sizeof(floating))
        memcpy(db, dA, G4 * sizeof(floating))                         # db = dA[0]
        gemv_n(<int> D, <int> G4, 1, Wx, <int> G4, dA, 0, dx)         # dx = dA @ Wx.T
        gemv_n(<int> H, <int> G4, 1, Wh, <int> G4, dA, 0, dh_prev)    # dh_prev = dA @ Wh.T
        return 0
    gemm(c't', c'n', <int> D, <int> G4, <int> N, 1, x, <int> ldx, dA, <int> ldda,
         0, dWx, <int> G4)                                            # dWx = x.T @ dA
    if h_prev != NULL:
        gemm(c't', c'n', <int> H, <int> G4, <int> N, 1, h_prev, <int> ldhp, dA, <int> ldda,
             0, dWh, <int> G4)                                        # dWh = h_prev.T @ dA
    else:
        memset(dWh, 0, H * G4 * sizeof(floating))
    _colsum(N, G4, dA, ldda, db)                                      # db = dA.sum(0)
    gemm(c'n', c't', <int> N, <int> D, <int> G4, 1, dA, <int> ldda, Wx, <int> G4,
         0, dx, <int> lddx)                                           # dx = dA @ Wx.T
    gemm(c'n', c't', <int> N, <int> H, <int> G4, 1, dA, <int> ldda, Wh, <int> G4,
         0, dh_prev, <int> lddhp)                                     # dh_prev = dA @ Wh.T
    return 0


# ------------------------------------------------------- argument plumbing

ctypedef struct Mat:
    char *data
    Py_ssize_t ld          # elements between rows


cdef inline bint _mat(object obj, int typenum, Py_ssize_t rows, Py_ssize_t cols,
                      bint writable, Mat *m) noexcept:
    """True when obj is an aligned, native-byte-order ndarray of typenum, shape
    (rows, cols) (rows < 0: any), whose rows BLAS can read in place: contiguous
    last axis, row stride a positive multiple of the item size. Fills m. No
    exception is ever set."""
    if not cnp.PyArray_Check(obj):
        return False
    cdef cnp.ndarray a = <cnp.ndarray> obj
    if cnp.PyArray_TYPE(a) != typenum or cnp.PyArray_NDIM(a) != 2:
        return False
    cdef cnp.npy_intp *dims = cnp.PyArray_DIMS(a)
    cdef cnp.npy_intp *st = cnp.PyArray_STRIDES(a)
    cdef Py_ssize_t item = cnp.PyArray_ITEMSIZE(a)
    if (rows >= 0 and dims[0] != rows) or dims[1] != cols:
        return False
    if (not cnp.PyArray_ISALIGNED(a) or not cnp.PyArray_ISNOTSWAPPED(a)
            or (writable and not cnp.PyArray_ISWRITEABLE(a))):
        return False
    if dims[0] == 0:                    # empty: NumPy may give any strides
        m.ld = cols if cols > 0 else 1
        m.data = cnp.PyArray_BYTES(a)
        return True
    if cols > 1 and st[1] != item:
        return False
    if dims[0] > 1:
        if st[0] <= 0 or st[0] % item != 0 or st[0] // item < cols:
            return False
        m.ld = st[0] // item
    else:
        m.ld = cols if cols > 0 else 1
    m.data = cnp.PyArray_BYTES(a)
    return True


cdef inline bint _vec(object obj, int typenum, Py_ssize_t n, bint writable,
                      char **data) noexcept:
    """True when obj is an aligned C-contiguous 1-D ndarray of typenum and length n."""
    if not cnp.PyArray_Check(obj):
        return False
    cdef cnp.ndarray a = <cnp.ndarray> obj
    if (cnp.PyArray_TYPE(a) != typenum or cnp.PyArray_NDIM(a) != 1
            or cnp.PyArray_DIMS(a)[0] != n or not cnp.PyArray_IS_C_CONTIGUOUS(a)
            or not cnp.PyArray_ISALIGNED(a) or not cnp.PyArray_ISNOTSWAPPED(a)
            or (writable and not cnp.PyArray_ISWRITEABLE(a))):
        return False
    data[0] = cnp.PyArray_BYTES(a)
    return True


cdef inline bint _cmat(object obj, int typenum, Py_ssize_t rows, Py_ssize_t cols,
                       bint writable, char **data) noexcept:
    """True when obj is an aligned C-contiguous ndarray of shape (rows, cols)."""
    cdef Mat m
    if not _mat(obj, typenum, rows, cols, writable, &m):
        return False
    if rows > 1 and m.ld != cols:
        return False
    data[0] = m.data
    return True


cdef inline cnp.ndarray _empty2(Py_ssize_t r, Py_ssize_t c, int typenum):
    cdef cnp.npy_intp dims[2]
    dims[0] = r
    dims[1] = c
    return cnp.PyArray_EMPTY(2, dims, typenum, 0)


cdef class _Lock:
    """A per-layer lock taken around every use of the layer's scratch buffers.
    It is a C lock, so waiting for it releases the GIL and costs nothing when
    nobody else holds it."""
    cdef PyThread_type_lock lock

    def __cinit__(self):
        self.lock = PyThread_allocate_lock()
        if self.lock == NULL:
            raise MemoryError()

    def __dealloc__(self):
        if self.lock != NULL:
            PyThread_free_lock(self.lock)

    cdef inline void acquire(self) noexcept:
        if not PyThread_acquire_lock(self.lock, NOWAIT_LOCK):
            with nogil:
                PyThread_acquire_lock(self.lock, WAIT_LOCK)

    cdef inline void release(self) noexcept:
        PyThread_release_lock(self.lock)


# --------------------------------------------------------------- the cell

cdef class CellWork(_Lock):
    """Scratch and cache buffers of one lstmc.LSTM, reused while the batch size
    stays the same. Not part of the public API."""
    cdef readonly int typenum
    cdef readonly Py_ssize_t D, H
    cdef Py_ssize_t n, n_train             # batch sizes the buffers are for
    cdef cnp.ndarray gates, tanh_c, xc, hp, cp, dA

    def __init__(self, dtype, Py_ssize_t D, Py_ssize_t H):
        self.typenum = np.dtype(dtype).num
        self.D = D
        self.H = H
        self.n = -1
        self.n_train = -1

    cdef void _ensure(self, Py_ssize_t N, bint train) except *:
        """Buffers for a batch of N (and what backward needs, when train).
        Allocated first, assigned after: a MemoryError leaves the old ones."""
        if self.n != N:
            gates = _empty2(N, 4 * self.H, self.typenum)
            self.gates, self.dA, self.n = gates, None, N
        if train and self.n_train != N:
            tanh_c = _empty2(N, self.H, self.typenum)
            xc = _empty2(N, self.D, self.typenum)
            hp = _empty2(N, self.H, self.typenum)
            cp = _empty2(N, self.H, self.typenum)
            self.tanh_c, self.xc, self.hp, self.cp = tanh_c, xc, hp, cp
            self.n_train = N


cdef inline void _copy_rows(char *dst, Py_ssize_t ldd, const char *src, Py_ssize_t lds,
                            Py_ssize_t rows, Py_ssize_t nbytes) noexcept nogil:
    cdef Py_ssize_t r
    for r in range(rows):
        memcpy(dst + r * ldd, src + r * lds, nbytes)


cdef inline bint _three(object items, int typenum, Py_ssize_t D, Py_ssize_t H, bint writable,
                        char **p0, char **p1, char **p2) noexcept:
    """True when items is a list of three C-contiguous arrays shaped like
    [Wx, Wh, b]: (D, 4H), (H, 4H), (4H,). Fills their data pointers."""
    return (type(items) is list and len(<list> items) == 3
            and _cmat((<list> items)[0], typenum, D, 4 * H, writable, p0)
            and _cmat((<list> items)[1], typenum, H, 4 * H, writable, p1)
            and _vec((<list> items)[2], typenum, 4 * H, writable, p2))


cdef void _params(object layer, int typenum, Py_ssize_t D, Py_ssize_t H,
                  char **pWx, char **pWh, char **pb) except *:
    if not _three(layer.params, typenum, D, H, False, pWx, pWh, pb):
        _validate.layer_params(layer)       # raises, naming the offending array


cdef void _grads(object layer, int typenum, Py_ssize_t D, Py_ssize_t H,
                 char **pdWx, char **pdWh, char **pdb) except *:
    if not _three(layer.grads, typenum, D, H, True, pdWx, pdWh, pdb):
        _validate.layer_grads(layer)        # raises, naming the offending array


cdef object _rows(object a, str name, int typenum, Py_ssize_t rows, Py_ssize_t cols, Mat *m):
    """The array to use for argument `name`, checked, converted when it must be."""
    if _mat(a, typenum, rows, cols, False, m):
        return a
    a = _validate.matrix(a, name, typenum, rows, cols)
    if not _mat(a, typenum, rows, cols, False, m):
        raise AssertionError(f"lstmc: {name} still unusable after conversion")
    return a


cdef inline char *_bytes(cnp.ndarray a) noexcept:
    return cnp.PyArray_BYTES(a) if a is not None else NULL


_NO_CACHE = ("backward() needs the cache of a forward(..., train=True) call; "
             "there is none (no forward yet, or the last one had train=False)")
_RACE = ("the cache changed under this call (another thread ran forward on this "
         "layer); nothing was written")
_TOO_BIG = "lstmc: a size exceeds what BLAS can index (2**31 - 1)"


def cell_forward(object layer, object x, object h_prev, object c_prev, object out,
                 bint train):
    """lstmc.LSTM.forward: validate, then one step in nogil code."""
    cdef CellWork w = <CellWork?> layer._work
    cdef char *Wx
    cdef char *Wh
    cdef char *b
    cdef char *gates
    cdef char *tanh_c = NULL
    cdef char *xc = NULL
    cdef char *hp = NULL
    cdef char *cp = NULL
    cdef Mat mx, mh, mc, mho, mco
    cdef Py_ssize_t N, D = w.D, H = w.H
    cdef Py_ssize_t item
    cdef int typenum = w.typenum
    _params(layer, typenum, D, H, &Wx, &Wh, &b)
    x = _rows(x, "x", typenum, -1, D, &mx)
    N = cnp.PyArray_DIMS(<cnp.ndarray> x)[0]
    h_prev = _rows(h_prev, "h_prev", typenum, N, H, &mh)
    c_prev = _rows(c_prev, "c_prev", typenum, N, H, &mc)
    if out is None:
        h_next = _empty2(N, H, typenum)
        c_next = _empty2(N, H, typenum)
        mho.data = cnp.PyArray_BYTES(<cnp.ndarray> h_next)
        mco.data = cnp.PyArray_BYTES(<cnp.ndarray> c_next)
        mho.ld = H
        mco.ld = H
    elif (type(out) is tuple and len(<tuple> out) == 2
            and _mat((<tuple> out)[0], typenum, N, H, True, &mho)
            and _mat((<tuple> out)[1], typenum, N, H, True, &mco)):
        h_next, c_next = <tuple> out
    else:
        _validate.out_pair(out, typenum, N, H)        # raises
        raise AssertionError("unreachable")

    if not (_fits(N, D, 4 * H, mx.ld, mh.ld) and _fits(mc.ld, mho.ld, mco.ld, 0, 0)):
        raise ValueError(_TOO_BIG)

    w.acquire()
    try:
        w._ensure(N, train)
        gates = _bytes(w.gates)
        item = cnp.PyArray_ITEMSIZE(w.gates)
        if train:
            # Private copies of what backward reads: out= may overwrite h_prev,
            # c_prev (or even x), and the caller may reuse its arrays.
            tanh_c, xc, hp, cp = _bytes(w.tanh_c), _bytes(w.xc), _bytes(w.hp), _bytes(w.cp)
        with nogil:
            if train:
                _copy_rows(xc, D * item, mx.data, mx.ld * item, N, D * item)
                _copy_rows(hp, H * item, mh.data, mh.ld * item, N, H * item)
                _copy_rows(cp, H * item, mc.data, mc.ld * item, N, H * item)
                mx.data, mx.ld = xc, D
                mh.data, mh.ld = hp, H
                mc.data, mc.ld = cp, H
            if typenum == cnp.NPY_FLOAT32:
                lstm_step_forward(
                    N, D, H, <float *> mx.data, mx.ld, <float *> mh.data, mh.ld,
                    <float *> mc.data, mc.ld, <float *> Wx, <float *> Wh, <float *> b,
                    <float *> gates, 4 * H, <float *> mho.data, mho.ld,
                    <float *> mco.data, mco.ld, <float *> tanh_c, H)
            else:
                lstm_step_forward(
                    N, D, H, <double *> mx.data, mx.ld, <double *> mh.data, mh.ld,
                    <double *> mc.data, mc.ld, <double *> Wx, <double *> Wh, <double *> b,
                    <double *> gates, 4 * H, <double *> mho.data, mho.ld,
                    <double *> mco.data, mco.ld, <double *> tanh_c, H)
        layer.cache = (w.xc, w.hp, w.cp, w.gates, w.tanh_c) if train else None
    finally:
        w.release()
    return (h_next, c_next) if out is None else out


def cell_backward(object layer, object dh_next, object dc_next):
    """lstmc.LSTM.backward: validate, then one backward step in nogil code."""
    cdef CellWork w = <CellWork?> layer._work
    cdef char *Wx
    cdef char *Wh
    cdef char *b
    cdef char *dWx
    cdef char *dWh
    cdef char *db
    cdef char *dA
    cdef char *php
    cdef char *pcp
    cdef char *pg
    cdef char *ptc
    cdef char *pdx
    cdef char *pdhp
    cdef char *pdcp
    cdef Mat mdh, mdc, mx
    cdef Py_ssize_t N, D = w.D, H = w.H
    cdef int status, typenum = w.typenum
    cache = layer.cache
    if cache is None:
        raise RuntimeError(_NO_CACHE)
    x, hp, cp, gates, tanh_c = cache
    N = cnp.PyArray_DIMS(<cnp.ndarray?> gates)[0]
    _params(layer, typenum, D, H, &Wx, &Wh, &b)
    _grads(layer, typenum, D, H, &dWx, &dWh, &db)
    dh_next = _rows(dh_next, "dh_next", typenum, N, H, &mdh)
    dc_next = _rows(dc_next, "dc_next", typenum, N, H, &mdc)
    if not _mat(x, typenum, N, D, False, &mx):
        raise RuntimeError(_RACE)
    dx = _empty2(N, D, typenum)
    dh_prev = _empty2(N, H, typenum)
    dc_prev = _empty2(N, H, typenum)
    w.acquire()
    try:
        if layer.cache is not cache or w.gates is not gates:
            raise RuntimeError(_RACE)
        if w.dA is None:
            w.dA = _empty2(N, 4 * H, typenum)
        dA = _bytes(w.dA)
        php, pcp, pg, ptc = _bytes(hp), _bytes(cp), _bytes(gates), _bytes(tanh_c)
        pdx, pdhp, pdcp = _bytes(dx), _bytes(dh_prev), _bytes(dc_prev)
        with nogil:
            if typenum == cnp.NPY_FLOAT32:
                status = lstm_step_backward(
                    N, D, H, <float *> mdh.data, mdh.ld, <float *> mdc.data, mdc.ld,
                    <float *> mx.data, mx.ld, <float *> php, H,
                    <float *> pcp, H, <float *> Wx, <float *> Wh,
                    <float *> pg, 4 * H, <float *> ptc, H,
                    <float *> dA, 4 * H, <float *> pdx, D,
                    <float *> pdhp, H, <float *> pdcp, H,
                    <float *> dWx, <float *> dWh, <float *> db)
            else:
                status = lstm_step_backward(
                    N, D, H, <double *> mdh.data, mdh.ld, <double *> mdc.data, mdc.ld,
                    <double *> mx.data, mx.ld, <double *> php, H,
                    <double *> pcp, H, <double *> Wx, <double *> Wh,
                    <double *> pg, 4 * H, <double *> ptc, H,
                    <double *> dA, 4 * H, <double *> pdx, D,
                    <double *> pdhp, H, <double *> pdcp, H,
                    <double *> dWx, <double *> dWh, <double *> db)
    finally:
        w.release()
    if status != 0:
        raise ValueError(_TOO_BIG)
    return dx, dh_prev, dc_prev


# ----------------------------------------------------------- the sequence

# Working memory of train=False: the input projection is done for a chunk of
# steps at a time, its gates at most this many bytes (or 8 steps), so memory
# stays bounded however long the sequence is. The chunks are made near-equal. One
# projection for the whole sequence measured 5-7% faster overall than two halves,
# and 9-10% faster than chunks of 4 MB, at (64, 50, 512, 512): hence a bound this
# large (float32 gates of that case: 26 MB).
cdef Py_ssize_t _CHUNK_BYTES = 32 << 20
cdef Py_ssize_t _CHUNK_MIN_STEPS = 8


cdef inline Py_ssize_t _chunk_steps(Py_ssize_t N, Py_ssize_t T, Py_ssize_t G4,
                                    Py_ssize_t item) noexcept:
    """Steps per chunk of train=False: near-equal chunks, each within _CHUNK_BYTES
    (or of _CHUNK_MIN_STEPS steps)."""
    cdef Py_ssize_t most = max(_CHUNK_MIN_STEPS, _CHUNK_BYTES // max(1, N * G4 * item))
    cdef Py_ssize_t chunks
    if T <= most:
        return max(1, T)
    chunks = (T + most - 1) // most
    return (T + chunks - 1) // chunks

ctypedef struct Seq:
    Py_ssize_t N, T, D, H
    char *xs                      # IN  (N, T, D): element (n, t, :) at n*sxn + t*sxt
    Py_ssize_t sxn, sxt           #     strides in elements; the last axis is contiguous
    char *Wx
    char *Wh
    char *b
    char *h0                      # IN  (N, H) contiguous, or NULL for zeros
    char *c0                      # IN  (N, H) contiguous, or NULL for zeros
    char *hs                      # OUT (N, T, H) contiguous
    char *hT                      # OUT (N, H): last h
    char *cT                      # OUT (N, H): last c
    # train=True: what backward needs, all (N, T, .) contiguous
    char *G                       # gates f, g, i, o of every step (N, T, 4H)
    char *Cs                      # c of every step (N, T, H)
    char *TC                      # tanh(c) of every step (N, T, H)
    char *Hp                      # h_prev of every step (N, T, H): h0, then hs[:, :-1]
    # train=False
    char *Gc                      # gates of a chunk of Tc steps, time-major (Tc, N, 4H)
    char *Xc                      # the chunk's inputs gathered time-major (Tc, N, D), N > 1
    Py_ssize_t Tc
    # backward
    char *dhs                     # IN  (N, T, H), strides sdn, sdt in elements
    Py_ssize_t sdn, sdt
    char *dA                      # (N, T, 4H)
    char *dhc                     # (N, H) dh carried to the previous step
    char *dcc                     # (N, H) dc carried to the previous step
    char *dxs                     # OUT (N, T, D) contiguous
    char *dWx
    char *dWh
    char *db


cdef inline bint _even_rows(const Seq *s) noexcept nogil:
    """True when the N*T rows of xs are evenly spaced: one gemm reads them all."""
    return s.N == 1 or s.T == 1 or s.sxn == s.T * s.sxt


cdef int _seq_forward(floating *tag, Seq *s) noexcept nogil:
    cdef Py_ssize_t N = s.N, T = s.T, D = s.D, H = s.H, G4 = 4 * s.H
    cdef Py_ssize_t t, t0, tc, n, j, ldhp, ldcp
    cdef const floating *xs = <const floating *> s.xs
    cdef const floating *Wx = <const floating *> s.Wx
    cdef const floating *Wh = <const floating *> s.Wh
    cdef const floating *b = <const floating *> s.b
    cdef const floating *h0 = <const floating *> s.h0
    cdef const floating *c0 = <const floating *> s.c0
    cdef floating *hs = <floating *> s.hs
    cdef const floating *hp
    cdef const floating *cp
    cdef floating *G
    cdef floating *Cs = <floating *> s.Cs
    cdef floating *Hp = <floating *> s.Hp
    cdef floating *c
    cdef floating *cT = <floating *> s.cT
    cdef Py_ssize_t ldx = s.sxt if T > 1 else (s.sxn if N > 1 else D)
    if N == 0:
        return 0
    if not _fits(N * T, G4, T * G4, s.sxn, s.sxt) or not _fits(T * H, D, 0, 0, 0):
        return -1
    if T == 0:
        for n in range(N):
            for j in range(H):
                (<floating *> s.hT)[n * H + j] = h0[n * H + j] if h0 != NULL else 0
                cT[n * H + j] = c0[n * H + j] if c0 != NULL else 0
        return 0
    if s.G != NULL:
        # Training: project all N*T rows at once, keep everything for backward.
        G = <floating *> s.G
        if _even_rows(s):
            _affine(N * T, D, G4, xs, ldx, Wx, 0, G, G4)      # G = xs @ Wx, all steps
        else:                                                 # rows in place, a gemm per sequence
            for n in range(N):
                _affine(T, D, G4, xs + n * s.sxn, s.sxt, Wx, 0, G + n * T * G4, G4)
        for t in range(T):
            hp = h0 if t == 0 else hs + (t - 1) * H
            ldhp = H if t == 0 else T * H
            cp = c0 if t == 0 else Cs + (t - 1) * H
            ldcp = H if t == 0 else T * H
            lstm_step_forward(N, D, H, <floating *> NULL, 0, hp, ldhp, cp, ldcp,
                              Wx, Wh, b, G + t * G4, T * G4, hs + t * H, T * H,
                              Cs + t * H, T * H, <floating *> s.TC + t * H, T * H)
        for n in range(N):
            if h0 != NULL:
                memcpy(Hp + n * T * H, h0 + n * H, H * sizeof(floating))
            else:
                memset(Hp + n * T * H, 0, H * sizeof(floating))
            memcpy(Hp + n * T * H + H, hs + n * T * H, (T - 1) * H * sizeof(floating))
        _copy_rows(<char *> cT, H * sizeof(floating), <char *> (Cs + (T - 1) * H),
                   T * H * sizeof(floating), N, H * sizeof(floating))
    else:
        # Inference: project a chunk of steps with one gemm, then run them; c
        # lives in cT. One gemm per chunk rather than per step: each gemm call
        # repacks Wx, which at large sizes costs as much as a small product.
        G = <floating *> s.Gc
        c = cT
        t0 = 0
        while t0 < T:
            tc = min(s.Tc, T - t0)
            # The chunk's gates are time-major, (tc, N, 4H): each step's rows are one
            # contiguous block for its recurrent gemm and gate loop.
            # (t, n) rows evenly spaced, and apart by at least D (the validator lets
            # sequences overlap, e.g. sliding windows, which BLAS cannot take as ld)
            if N == 1 or T == 1 or (s.sxt == N * s.sxn and s.sxn >= D):
                _affine(N * tc, D, G4, xs + t0 * s.sxt, s.sxn if N > 1 else ldx,
                        Wx, 0, G, G4)
            else:                                               # gather them, time-major
                for t in range(tc):
                    _copy_rows(s.Xc + t * N * D * sizeof(floating), D * sizeof(floating),
                               <char *> (xs + (t0 + t) * s.sxt), s.sxn * sizeof(floating),
                               N, D * sizeof(floating))
                _affine(N * tc, D, G4, <floating *> s.Xc, D, Wx, 0, G, G4)
            for t in range(t0, t0 + tc):
                hp = h0 if t == 0 else hs + (t - 1) * H
                ldhp = H if t == 0 else T * H
                cp = c0 if t == 0 else c
                lstm_step_forward(N, D, H, <floating *> NULL, 0, hp, ldhp, cp, H,
                                  Wx, Wh, b, G + (t - t0) * N * G4, G4, hs + t * H, T * H,
                                  c, H, <floating *> NULL, 0)
            t0 += tc
    _copy_rows(s.hT, H * sizeof(floating), <char *> (hs + (T - 1) * H),
               T * H * sizeof(floating), N, H * sizeof(floating))
    return 0


cdef int _seq_backward(floating *tag, Seq *s) noexcept nogil:
    cdef Py_ssize_t N = s.N, T = s.T, D = s.D, H = s.H, G4 = 4 * s.H, M = s.N * s.T
    cdef Py_ssize_t t, n, ldcp
    cdef const floating *xs = <const floating *> s.xs
    cdef const floating *Wx = <const floating *> s.Wx
    cdef const floating *Wh = <const floating *> s.Wh
    cdef const floating *dhs = <const floating *> s.dhs
    cdef const floating *G = <const floating *> s.G
    cdef const floating *Cs = <const floating *> s.Cs
    cdef const floating *TC = <const floating *> s.TC
    cdef const floating *cp
    cdef floating *dA = <floating *> s.dA
    cdef floating *dhc = <floating *> s.dhc
    cdef floating *dcc = <floating *> s.dcc
    cdef Py_ssize_t ldx = s.sxt if T > 1 else (s.sxn if N > 1 else D)
    if not _fits(M, G4, T * G4, s.sdn, s.sdt) or not _fits(T * H, D, s.sxn, s.sxt, 0):
        return -1
    if M == 0:
        memset(s.dWx, 0, D * G4 * sizeof(floating))
        memset(s.dWh, 0, H * G4 * sizeof(floating))
        memset(s.db, 0, G4 * sizeof(floating))
        memset(dhc, 0, N * H * sizeof(floating))
        return 0
    for t in range(T - 1, -1, -1):
        cp = <const floating *> s.c0 if t == 0 else Cs + (t - 1) * H
        ldcp = H if t == 0 else T * H
        lstm_gates_backward(N, H, dhs + t * s.sdt, s.sdn,
                            dhc if t < T - 1 else NULL, H,
                            dcc if t < T - 1 else NULL, H,
                            G + t * G4, T * G4, cp, ldcp, TC + t * H, T * H,
                            dA + t * G4, T * G4, dcc, H)
        if N == 1:
            gemv_n(<int> H, <int> G4, 1, Wh, <int> G4, dA + t * G4, 0, dhc)  # dh = dA_t @ Wh.T
        else:
            gemm(c'n', c't', <int> N, <int> H, <int> G4, 1, dA + t * G4, <int> (T * G4),
                 Wh, <int> G4, 0, dhc, <int> H)                              # dh = dA_t @ Wh.T
    # All steps at once, over the N*T stacked rows:
    if _even_rows(s):
        gemm(c't', c'n', <int> D, <int> G4, <int> M, 1, xs, <int> ldx, dA, <int> G4,
             0, <floating *> s.dWx, <int> G4)                                 # dWx = xs.T @ dA
    else:
        for n in range(N):                                                    # dWx += xs[n].T @ dA[n]
            gemm(c't', c'n', <int> D, <int> G4, <int> T, 1, xs + n * s.sxn, <int> s.sxt,
                 dA + n * T * G4, <int> G4, 0 if n == 0 else 1, <floating *> s.dWx, <int> G4)
    gemm(c't', c'n', <int> H, <int> G4, <int> M, 1, <const floating *> s.Hp, <int> H,
         dA, <int> G4, 0, <floating *> s.dWh, <int> G4)                       # dWh = Hp.T @ dA
    _colsum(M, G4, dA, G4, <floating *> s.db)                                 # db = dA.sum(0)
    gemm(c'n', c't', <int> M, <int> D, <int> G4, 1, dA, <int> G4, Wx, <int> G4,
         0, <floating *> s.dxs, <int> D)                                      # dxs = dA @ Wx.T
    return 0


cdef inline cnp.ndarray _empty3(Py_ssize_t a, Py_ssize_t b, Py_ssize_t c, int typenum):
    cdef cnp.npy_intp dims[3]
    dims[0] = a
    dims[1] = b
    dims[2] = c
    return cnp.PyArray_EMPTY(3, dims, typenum, 0)


cdef class TimeWork(_Lock):
    """Buffers and cache of one lstmc.TimeLSTM, reused while (N, T) stays the
    same. Not part of the public API."""
    cdef readonly int typenum
    cdef readonly Py_ssize_t D, H
    cdef Py_ssize_t n, t                  # (N, T) the train buffers are for
    cdef cnp.ndarray G, Cs, TC, Hp, dA, dcc, Gc, Xc
    # The cache, set together by a successful train forward (under the lock):
    cdef object xs, c0                    # its input (kept as passed) and initial c
    cdef Py_ssize_t sxn, sxt              # xs's strides then, in elements
    cdef readonly bint cached
    cdef readonly unsigned long generation

    def __init__(self, dtype, Py_ssize_t D, Py_ssize_t H):
        self.typenum = np.dtype(dtype).num
        self.D = D
        self.H = H
        self.n = -1
        self.t = -1

    def forward(self, layer, xs, h0, c0, bint train):
        """(hs, h_last, c_last); xs, h0, c0 already checked by TimeLSTM.forward.
        Everything that can fail happens before the first write to the layer."""
        cdef Seq s
        cdef int typenum = self.typenum
        cdef cnp.ndarray a = <cnp.ndarray?> xs
        cdef Py_ssize_t item = cnp.PyArray_ITEMSIZE(a)
        cdef Py_ssize_t N = cnp.PyArray_DIMS(a)[0], T = cnp.PyArray_DIMS(a)[1]
        cdef Py_ssize_t H = self.H, D = self.D
        memset(&s, 0, sizeof(Seq))
        _params(layer, typenum, D, H, &s.Wx, &s.Wh, &s.b)
        s.N, s.T, s.D, s.H = N, T, D, H
        s.xs = cnp.PyArray_BYTES(a)
        s.sxn = cnp.PyArray_STRIDES(a)[0] // item
        s.sxt = cnp.PyArray_STRIDES(a)[1] // item
        if N > 0 and T > 0 and not (_fits(N * T, 4 * H * T, s.sxn, s.sxt, H * T)
                                    and _fits(D, 4 * H * max(N, T), 0, 0, 0)):
            raise ValueError(_TOO_BIG)
        s.h0 = _bytes(h0)
        c0_copy = None if c0 is None or not train else np.array(c0)
        s.c0 = _bytes(c0)
        hs = _empty3(N, T, H, typenum)
        hT = _empty2(N, H, typenum)
        cT = _empty2(N, H, typenum)
        s.hs, s.hT, s.cT = _bytes(hs), _bytes(hT), _bytes(cT)
        self.acquire()
        try:
            if train:
                if self.n != N or self.t != T:
                    G = _empty3(N, T, 4 * H, typenum)
                    Cs = _empty3(N, T, H, typenum)
                    TC = _empty3(N, T, H, typenum)
                    Hp = _empty3(N, T, H, typenum)
                    # All allocated: now the old cache goes, with its buffers.
                    self.G, self.Cs, self.TC, self.Hp, self.dA = G, Cs, TC, Hp, None
                    self.n, self.t = N, T
                s.G, s.Cs, s.TC, s.Hp = _bytes(self.G), _bytes(self.Cs), _bytes(self.TC), _bytes(self.Hp)
            else:
                s.Tc = _chunk_steps(N, T, 4 * H, item)
                if self.Gc is None or cnp.PyArray_SIZE(self.Gc) < N * s.Tc * 4 * H:
                    self.Gc = _empty2(max(1, N * s.Tc), 4 * H, typenum)
                if N > 1 and (self.Xc is None or cnp.PyArray_SIZE(self.Xc) < N * s.Tc * D):
                    self.Xc = _empty2(N * s.Tc, D, typenum)
                s.Gc = _bytes(self.Gc)
                s.Xc = _bytes(self.Xc) if N > 1 else NULL
            # The train buffers are overwritten from here on: the old cache is gone.
            self.cached = False
            self.xs = self.c0 = None
            with nogil:
                if typenum == cnp.NPY_FLOAT32:
                    _seq_forward(<float *> NULL, &s)
                else:
                    _seq_forward(<double *> NULL, &s)
            if train:
                self.xs, self.c0, self.sxn, self.sxt = xs, c0_copy, s.sxn, s.sxt
                self.cached = True
                self.generation += 1
        finally:
            self.release()
        return hs, hT, cT

    def backward(self, layer, dhs):
        """(dxs, dh) for the cached forward; writes layer.grads in place."""
        cdef Seq s
        cdef int typenum = self.typenum
        cdef Py_ssize_t N, T, H = self.H, D = self.D, item
        cdef cnp.ndarray a
        cdef unsigned long generation = self.generation
        if not self.cached:
            raise RuntimeError(_NO_CACHE)
        N, T = self.n, self.t
        memset(&s, 0, sizeof(Seq))
        _params(layer, typenum, D, H, &s.Wx, &s.Wh, &s.b)
        _grads(layer, typenum, D, H, &s.dWx, &s.dWh, &s.db)
        dhs = _validate.sequence(dhs, "dhs", typenum, N, H, T)
        a = <cnp.ndarray> dhs
        item = cnp.PyArray_ITEMSIZE(a)
        s.dhs = cnp.PyArray_BYTES(a)
        s.sdn = cnp.PyArray_STRIDES(a)[0] // item
        s.sdt = cnp.PyArray_STRIDES(a)[1] // item
        if N > 0 and T > 0 and not _fits(s.sdn, s.sdt, 0, 0, 0):
            raise ValueError(_TOO_BIG)
        s.N, s.T, s.D, s.H = N, T, D, H
        dxs = _empty3(N, T, D, typenum)
        dh = _empty2(N, H, typenum)
        s.dxs, s.dhc = _bytes(dxs), _bytes(dh)
        self.acquire()
        try:
            if not self.cached or self.generation != generation:
                raise RuntimeError(_RACE)
            if self.dA is None:
                self.dA = _empty3(N, T, 4 * H, typenum)
            if self.dcc is None or cnp.PyArray_SIZE(self.dcc) < N * H:
                self.dcc = _empty2(max(N, 1), H, typenum)
            # The cache, read under the lock; xs's strides as they were at forward.
            s.xs = cnp.PyArray_BYTES(<cnp.ndarray> self.xs)
            s.sxn, s.sxt = self.sxn, self.sxt
            s.c0 = _bytes(self.c0)
            s.G, s.Cs, s.TC, s.Hp = _bytes(self.G), _bytes(self.Cs), _bytes(self.TC), _bytes(self.Hp)
            s.dA, s.dcc = _bytes(self.dA), _bytes(self.dcc)
            with nogil:
                if typenum == cnp.NPY_FLOAT32:
                    _seq_backward(<float *> NULL, &s)
                else:
                    _seq_backward(<double *> NULL, &s)
        finally:
            self.release()
        return dxs, dh
