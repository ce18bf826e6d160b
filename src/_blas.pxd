# cython: language_level=3
"""Row-major BLAS for lstmc: thin inline wrappers over scipy.linalg.cython_blas.

Every matrix here is row-major with a leading dimension (elements between rows).
BLAS is column-major, and a row-major matrix read column-major is its transpose,
so each row-major product is the column-major call with the operands swapped:
    C = op(A) @ op(B)   <=>   C.T = op(B).T @ op(A).T
No transposed copies are made. Nothing else in lstmc calls cython_blas directly.
SciPy's prototypes take non-const pointers; the casts from const live here only.
"""
from cython cimport floating
from scipy.linalg.cython_blas cimport sgemm, dgemm, sgemv, dgemv


cdef inline void gemm(char ta, char tb, int m, int n, int k,
                      floating alpha, const floating *A, int lda,
                      const floating *B, int ldb,
                      floating beta, floating *C, int ldc) noexcept nogil:
    """C := alpha * op(A) @ op(B) + beta * C, C (m, n); op(X) = X or X.T by 'n'/'t'."""
    if floating is float:
        sgemm(&tb, &ta, &n, &m, &k, &alpha, <float *> B, &ldb,
              <float *> A, &lda, &beta, C, &ldc)
    else:
        dgemm(&tb, &ta, &n, &m, &k, &alpha, <double *> B, &ldb,
              <double *> A, &lda, &beta, C, &ldc)


cdef inline void gemv_t(int m, int n, floating alpha, const floating *A, int lda,
                        const floating *x, floating beta, floating *y) noexcept nogil:
    """y := alpha * x @ A + beta * y, A (m, n), x (m,), y (n,): one row times a matrix."""
    cdef char t = c'n'
    cdef int one = 1
    # A row-major (m, n) is column-major (n, m): x @ A = (A.T) @ x is 'n' on it.
    if floating is float:
        sgemv(&t, &n, &m, &alpha, <float *> A, &lda, <float *> x, &one, &beta, y, &one)
    else:
        dgemv(&t, &n, &m, &alpha, <double *> A, &lda, <double *> x, &one, &beta, y, &one)


cdef inline void gemv_n(int m, int n, floating alpha, const floating *A, int lda,
                        const floating *x, floating beta, floating *y) noexcept nogil:
    """y := alpha * A @ x + beta * y, A (m, n), x (n,), y (m,)."""
    cdef char t = c't'
    cdef int one = 1
    if floating is float:
        sgemv(&t, &n, &m, &alpha, <float *> A, &lda, <float *> x, &one, &beta, y, &one)
    else:
        dgemv(&t, &n, &m, &alpha, <double *> A, &lda, <double *> x, &one, &beta, y, &one)
