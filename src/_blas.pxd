# cython: language_level=3
"""Row-major BLAS for lstmc: thin inline wrappers over scipy.linalg.cython_blas.

Every matrix here is row-major with a leading dimension (elements between rows).
BLAS is column-major, and a row-major matrix read column-major is its transpose,
so each row-major product is the column-major call with the operands swapped:
    C = op(A) @ op(B)   <=>   C.T = op(B).T @ op(A).T
No transposed copies are made. Nothing else in lstmc calls cython_blas directly.

Sizes come in as Py_ssize_t and are converted to BLAS's integer type here only.
That type is `blas_int` where SciPy's cython_blas declares one (a build against
64-bit-integer BLAS), else C int; setup.py writes the matching declaration into
_blas_int.pxi. Callers check `blas_fits` first: a size BLAS cannot index must be
refused, never truncated. SciPy's prototypes take non-const pointers; the casts
from const live here only.
"""
from cython cimport floating
from libc.limits cimport INT_MAX
from scipy.linalg.cython_blas cimport sgemm, dgemm, sgemv, dgemv

include "_blas_int.pxi"


cdef inline bint blas_fits(Py_ssize_t n) noexcept nogil:
    """True when the size or leading dimension n is representable as blas_int."""
    return sizeof(blas_int) >= sizeof(Py_ssize_t) or n <= INT_MAX


cdef inline void gemm(char ta, char tb, Py_ssize_t m, Py_ssize_t n, Py_ssize_t k,
                      floating alpha, const floating *A, Py_ssize_t lda,
                      const floating *B, Py_ssize_t ldb,
                      floating beta, floating *C, Py_ssize_t ldc) noexcept nogil:
    """C := alpha * op(A) @ op(B) + beta * C, C (m, n); op(X) = X or X.T by 'n'/'t'."""
    cdef blas_int bm = <blas_int> m, bn = <blas_int> n, bk = <blas_int> k
    cdef blas_int blda = <blas_int> lda, bldb = <blas_int> ldb, bldc = <blas_int> ldc
    if floating is float:
        sgemm(&tb, &ta, &bn, &bm, &bk, &alpha, <float *> B, &bldb,
              <float *> A, &blda, &beta, C, &bldc)
    else:
        dgemm(&tb, &ta, &bn, &bm, &bk, &alpha, <double *> B, &bldb,
              <double *> A, &blda, &beta, C, &bldc)


cdef inline void _gemv(char t, Py_ssize_t m, Py_ssize_t n, floating alpha,
                       const floating *A, Py_ssize_t lda, const floating *x,
                       floating beta, floating *y) noexcept nogil:
    # A row-major (m, n) is column-major (n, m): BLAS's trans flag is the opposite.
    cdef blas_int bm = <blas_int> m, bn = <blas_int> n, blda = <blas_int> lda
    cdef blas_int one = 1
    if floating is float:
        sgemv(&t, &bn, &bm, &alpha, <float *> A, &blda, <float *> x, &one, &beta, y, &one)
    else:
        dgemv(&t, &bn, &bm, &alpha, <double *> A, &blda, <double *> x, &one, &beta, y, &one)


cdef inline void gemv_t(Py_ssize_t m, Py_ssize_t n, floating alpha, const floating *A,
                        Py_ssize_t lda, const floating *x, floating beta,
                        floating *y) noexcept nogil:
    """y := alpha * x @ A + beta * y, A (m, n), x (m,), y (n,): one row times a matrix."""
    _gemv(c'n', m, n, alpha, A, lda, x, beta, y)


cdef inline void gemv_n(Py_ssize_t m, Py_ssize_t n, floating alpha, const floating *A,
                        Py_ssize_t lda, const floating *x, floating beta,
                        floating *y) noexcept nogil:
    """y := alpha * A @ x + beta * y, A (m, n), x (n,), y (m,)."""
    _gemv(c't', m, n, alpha, A, lda, x, beta, y)
