# cython: language_level=3
"""The element-wise loops of _gates.h, as fused inline functions: float or
double is picked from the pointer types, so callers never write the dtype
branch. Declared once here for the kernels (_cell.pyx) and the benchmark's
floor (_floor.pyx). Layout as in _gates.h: row-major, explicit leading
dimensions, gate order f, g, i, o."""
from cython cimport floating

cdef extern from "_gates.h" nogil:
    void lstmc_gates_forward_f(Py_ssize_t N, Py_ssize_t H, Py_ssize_t gs, float *A, Py_ssize_t lda,
                               const float *b, const float *c_prev, Py_ssize_t ldcp,
                               float *c_next, Py_ssize_t ldcn, float *h_next,
                               Py_ssize_t ldhn, float *tanh_c, Py_ssize_t ldtc)
    void lstmc_gates_forward_d(Py_ssize_t N, Py_ssize_t H, Py_ssize_t gs, double *A, Py_ssize_t lda,
                               const double *b, const double *c_prev, Py_ssize_t ldcp,
                               double *c_next, Py_ssize_t ldcn, double *h_next,
                               Py_ssize_t ldhn, double *tanh_c, Py_ssize_t ldtc)
    void lstmc_gates_backward_f(Py_ssize_t N, Py_ssize_t H, Py_ssize_t gs, const float *dh, Py_ssize_t lddh,
                                const float *dh2, Py_ssize_t lddh2, const float *dc,
                                Py_ssize_t lddc, const float *G, Py_ssize_t ldg,
                                const float *c_prev, Py_ssize_t ldcp, const float *tanh_c,
                                Py_ssize_t ldtc, float *dA, Py_ssize_t ldda,
                                float *dc_prev, Py_ssize_t lddcp)
    void lstmc_gates_backward_d(Py_ssize_t N, Py_ssize_t H, Py_ssize_t gs, const double *dh, Py_ssize_t lddh,
                                const double *dh2, Py_ssize_t lddh2, const double *dc,
                                Py_ssize_t lddc, const double *G, Py_ssize_t ldg,
                                const double *c_prev, Py_ssize_t ldcp, const double *tanh_c,
                                Py_ssize_t ldtc, double *dA, Py_ssize_t ldda,
                                double *dc_prev, Py_ssize_t lddcp)
    void lstmc_colsum_f(Py_ssize_t N, Py_ssize_t M, const float *X, Py_ssize_t ldx, float *out)
    void lstmc_colsum_d(Py_ssize_t N, Py_ssize_t M, const double *X, Py_ssize_t ldx, double *out)
    void lstmc_outer_f(Py_ssize_t M, Py_ssize_t N, const float *x, const float *y, float *A)
    void lstmc_outer_d(Py_ssize_t M, Py_ssize_t N, const double *x, const double *y, double *A)
    void lstmc_add_transposed_f(Py_ssize_t N, Py_ssize_t M, const float *R, Py_ssize_t ldr,
                                float *G, Py_ssize_t ldg)
    void lstmc_add_transposed_d(Py_ssize_t N, Py_ssize_t M, const double *R, Py_ssize_t ldr,
                                double *G, Py_ssize_t ldg)
    void lstmc_transpose_f(Py_ssize_t N, Py_ssize_t M, const float *R, Py_ssize_t ldr,
                           float *G, Py_ssize_t ldg)
    void lstmc_transpose_d(Py_ssize_t N, Py_ssize_t M, const double *R, Py_ssize_t ldr,
                           double *G, Py_ssize_t ldg)


cdef inline void gates_forward_units(
    Py_ssize_t N, Py_ssize_t units, Py_ssize_t H, floating *gates, Py_ssize_t ldg,
    const floating *b, const floating *c_prev, Py_ssize_t ldcp, floating *c_next,
    Py_ssize_t ldcn, floating *h_next, Py_ssize_t ldhn, floating *tanh_c, Py_ssize_t ldtc,
) noexcept nogil:
    """gates_forward on `units` of the layer's H units: every pointer already at
    the first of them (gates and b at its f column)."""
    if floating is float:
        lstmc_gates_forward_f(N, units, H, gates, ldg, b, c_prev, ldcp, c_next, ldcn,
                              h_next, ldhn, tanh_c, ldtc)
    else:
        lstmc_gates_forward_d(N, units, H, gates, ldg, b, c_prev, ldcp, c_next, ldcn,
                              h_next, ldhn, tanh_c, ldtc)


cdef inline void gates_forward(
    Py_ssize_t N, Py_ssize_t H, floating *gates, Py_ssize_t ldg, const floating *b,
    const floating *c_prev, Py_ssize_t ldcp, floating *c_next, Py_ssize_t ldcn,
    floating *h_next, Py_ssize_t ldhn, floating *tanh_c, Py_ssize_t ldtc,
) noexcept nogil:
    """gates := activated f, g, i, o of gates + b; c_next, h_next (and tanh(c_next))."""
    gates_forward_units(N, H, H, gates, ldg, b, c_prev, ldcp, c_next, ldcn,
                        h_next, ldhn, tanh_c, ldtc)


cdef inline void gates_backward_units(
    Py_ssize_t N, Py_ssize_t units, Py_ssize_t H, const floating *dh, Py_ssize_t lddh,
    const floating *dh2, Py_ssize_t lddh2, const floating *dc, Py_ssize_t lddc,
    const floating *gates, Py_ssize_t ldg, const floating *c_prev, Py_ssize_t ldcp,
    const floating *tanh_c, Py_ssize_t ldtc, floating *dA, Py_ssize_t ldda,
    floating *dc_prev, Py_ssize_t lddcp,
) noexcept nogil:
    """gates_backward on `units` of the layer's H units (pointers at the first)."""
    if floating is float:
        lstmc_gates_backward_f(N, units, H, dh, lddh, dh2, lddh2, dc, lddc, gates, ldg,
                               c_prev, ldcp, tanh_c, ldtc, dA, ldda, dc_prev, lddcp)
    else:
        lstmc_gates_backward_d(N, units, H, dh, lddh, dh2, lddh2, dc, lddc, gates, ldg,
                               c_prev, ldcp, tanh_c, ldtc, dA, ldda, dc_prev, lddcp)


cdef inline void gates_backward(
    Py_ssize_t N, Py_ssize_t H, const floating *dh, Py_ssize_t lddh,
    const floating *dh2, Py_ssize_t lddh2, const floating *dc, Py_ssize_t lddc,
    const floating *gates, Py_ssize_t ldg, const floating *c_prev, Py_ssize_t ldcp,
    const floating *tanh_c, Py_ssize_t ldtc, floating *dA, Py_ssize_t ldda,
    floating *dc_prev, Py_ssize_t lddcp,
) noexcept nogil:
    """dA := gradient of the pre-activations; dc_prev (may be dc)."""
    gates_backward_units(N, H, H, dh, lddh, dh2, lddh2, dc, lddc, gates, ldg, c_prev, ldcp,
                         tanh_c, ldtc, dA, ldda, dc_prev, lddcp)


cdef inline void column_sums(Py_ssize_t N, Py_ssize_t M, const floating *X, Py_ssize_t ldx,
                             floating *out) noexcept nogil:
    """out := X.sum(0), X (N, M)."""
    if floating is float:
        lstmc_colsum_f(N, M, X, ldx, out)
    else:
        lstmc_colsum_d(N, M, X, ldx, out)


cdef inline void outer(Py_ssize_t M, Py_ssize_t N, const floating *x, const floating *y,
                       floating *A) noexcept nogil:
    """A := outer(x, y), A (M, N) C-contiguous."""
    if floating is float:
        lstmc_outer_f(M, N, x, y, A)
    else:
        lstmc_outer_d(M, N, x, y, A)


cdef inline void add_transposed(Py_ssize_t N, Py_ssize_t M, const floating *R, Py_ssize_t ldr,
                                floating *G, Py_ssize_t ldg) noexcept nogil:
    """G (N, M) += R.T, R (M, N)."""
    if floating is float:
        lstmc_add_transposed_f(N, M, R, ldr, G, ldg)
    else:
        lstmc_add_transposed_d(N, M, R, ldr, G, ldg)


cdef inline void transpose(Py_ssize_t N, Py_ssize_t M, const floating *R, Py_ssize_t ldr,
                           floating *G, Py_ssize_t ldg) noexcept nogil:
    """G (N, M) := R.T, R (M, N)."""
    if floating is float:
        lstmc_transpose_f(N, M, R, ldr, G, ldg)
    else:
        lstmc_transpose_d(N, M, R, ldr, G, ldg)
