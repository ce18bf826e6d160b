"""lstmc._cell: the LSTM kernels, lstmc's C-level API (declared in _cell.pxd).

One module in three files, by concern:
  - here: lstmc's threads (the pool of _pool.h, and SciPy's BLAS held at one
    thread during calls), the size rules, the element-wise halves of a step
    (`lstm_gates_forward`, `lstm_gates_backward`) and the helpers both below use;
  - _cell_step.pxi: one step (`lstm_step_forward`, `lstm_step_backward`) on raw
    pointers with leading dimensions, so that a step can read and write slices
    of larger arrays in place; on the caller's thread, or split over lstmc's;
  - _cell_sequence.pxi: a whole sequence (`lstm_sequence_forward`,
    `lstm_sequence_infer`, `lstm_sequence_backward`): the time loop in C on the
    same gate loops and products. The forward projects the inputs of all steps
    with one gemm per task (a gemm repacks its weights on every call, so one
    large call beats T small ones; one row on two threads: the other thread
    projects them ahead of the loop, in pieces), then runs the recurrent
    product and the gate loop per step; the backward collects dA for every
    step and finishes with the products for dWx, dWh and dxs. A Plan says how a
    call splits.
Every kernel is `noexcept nogil`, generic over float and double (a fused type),
allocates nothing, keeps nothing, and returns 0, or -1 when a size does not fit
BLAS's integer type (nothing is written then). The rule for that is
`lstm_step_fits` / `lstm_sequence_fits`, which callers may also use to refuse
an argument before allocating anything. Per-layer buffers, locks, plans and
argument checks live in lstmc._work; matrix products go through _blas.pxd
(SciPy's BLAS); the element-wise loops are C in _gates.h, built for the widest
SIMD the running CPU has.
"""
from cython cimport floating
from libc.string cimport memcpy, memset

from _blas cimport blas_fits, gemm, gemv_t, gemv_n
from scipy.linalg.cython_blas cimport sgemm
from _gates cimport (gates_forward, gates_backward, gates_forward_units, gates_backward_units,
                     column_sums, outer, add_transposed, transpose)
from libc.stddef cimport ptrdiff_t

cdef extern from "_pool.h" nogil:
    ctypedef void (*lstmc_task_fn)(void *ctx, ptrdiff_t task) noexcept nogil
    ctypedef void (*lstmc_step_fn)(void *ctx, ptrdiff_t step, ptrdiff_t task) noexcept nogil
    void lstmc_parallel(int threads, ptrdiff_t ntasks, lstmc_task_fn fn, void *ctx)
    void lstmc_parallel_steps(int threads, ptrdiff_t steps, ptrdiff_t per_step,
                              lstmc_step_fn fn, void *ctx)
    enum: LSTMC_AHEAD_MAX
    ctypedef struct lstmc_ahead:
        ptrdiff_t pieces, claimed
        ptrdiff_t made[LSTMC_AHEAD_MAX]
    void lstmc_ahead_ready(lstmc_ahead *q, ptrdiff_t k, lstmc_task_fn make, void *ctx)
    void lstmc_ahead_help(lstmc_ahead *q, lstmc_task_fn make, void *ctx)
    void lstmc_call_begin(int pin)
    void lstmc_call_end(int pin)
    void lstmc_set_threads(int n)
    int lstmc_get_threads()
    int lstmc_pool_workers()
    int lstmc_bind_blas(const void *sym)
    int lstmc_blas_threads_now()
    int lstmc_blas_set_threads(int n)
    void lstmc_blas_after_fork()
    void lstmc_pool_init()

# --------------------------------------------------------------- threads

lstmc_pool_init()
cdef bint _blas_bound = lstmc_bind_blas(<const void *> sgemm)


cdef void lstm_call_begin(bint pin_blas) noexcept nogil:
    lstmc_call_begin(pin_blas)


cdef void lstm_call_end(bint pin_blas) noexcept nogil:
    lstmc_call_end(pin_blas)


cdef void lstm_set_threads(int n) noexcept nogil:
    lstmc_set_threads(n)


cdef int lstm_get_threads() noexcept nogil:
    return lstmc_get_threads()


cdef int lstm_pool_workers() noexcept nogil:
    return lstmc_pool_workers()


cdef int lstm_blas_threads() noexcept nogil:
    return lstmc_blas_threads_now()


cdef bint lstm_blas_bound() noexcept nogil:
    return _blas_bound


cdef int lstm_blas_set_threads(int n) noexcept nogil:
    return lstmc_blas_set_threads(n)


cdef void lstm_blas_after_fork() noexcept nogil:
    lstmc_blas_after_fork()


# ------------------------------------------------------------ size rules

cdef bint lstm_step_fits(Py_ssize_t N, Py_ssize_t D, Py_ssize_t H,
                         Py_ssize_t largest_ld) noexcept nogil:
    return (blas_fits(N) and blas_fits(D) and blas_fits(4 * H)
            and blas_fits(largest_ld))


cdef bint lstm_sequence_fits(Py_ssize_t N, Py_ssize_t T, Py_ssize_t D, Py_ssize_t H,
                             Py_ssize_t largest_stride) noexcept nogil:
    # The products below address all N*T rows at once, and step through the
    # (N, T, 4H) gates with a leading dimension of T*4H.
    return (blas_fits(N * T) and blas_fits(D) and blas_fits(T * 4 * H)
            and blas_fits(largest_stride))


# ------------------------------------------------- element-wise halves

cdef void lstm_gates_forward(
    Py_ssize_t N, Py_ssize_t H, floating *gates, Py_ssize_t ldg, const floating *b,
    const floating *c_prev, Py_ssize_t ldcp, floating *c_next, Py_ssize_t ldcn,
    floating *h_next, Py_ssize_t ldhn, floating *tanh_c, Py_ssize_t ldtc,
) noexcept nogil:
    gates_forward(N, H, gates, ldg, b, c_prev, ldcp, c_next, ldcn, h_next, ldhn, tanh_c, ldtc)


cdef void lstm_gates_backward(
    Py_ssize_t N, Py_ssize_t H, const floating *dh, Py_ssize_t lddh,
    const floating *dh2, Py_ssize_t lddh2, const floating *dc, Py_ssize_t lddc,
    const floating *gates, Py_ssize_t ldg, const floating *c_prev, Py_ssize_t ldcp,
    const floating *tanh_c, Py_ssize_t ldtc, floating *dA, Py_ssize_t ldda,
    floating *dc_prev, Py_ssize_t lddcp,
) noexcept nogil:
    gates_backward(N, H, dh, lddh, dh2, lddh2, dc, lddc, gates, ldg, c_prev, ldcp,
                   tanh_c, ldtc, dA, ldda, dc_prev, lddcp)


cdef inline void _affine(Py_ssize_t N, Py_ssize_t K, Py_ssize_t G4,
                         const floating *x, Py_ssize_t ldx, const floating *W,
                         floating beta, floating *C, Py_ssize_t ldc,
                         Py_ssize_t ldw=0) noexcept nogil:
    """C := x @ W + beta * C, x (N, K), W (K, G4) with leading dimension ldw (0:
    G4, contiguous). One row goes to gemv: some OpenBLAS kernels run a one-row
    gemm far slower than the same gemv."""
    if ldw == 0:
        ldw = G4
    if N == 1:
        gemv_t(K, G4, 1, W, ldw, x, beta, C)
    else:
        gemm(c'n', c'n', N, G4, K, 1, x, ldx, W, ldw, beta, C, ldc)


cdef inline void _copy_rows(floating *dst, Py_ssize_t ld_dst, const floating *src,
                            Py_ssize_t ld_src, Py_ssize_t rows,
                            Py_ssize_t cols) noexcept nogil:
    cdef Py_ssize_t r
    for r in range(rows):
        memcpy(dst + r * ld_dst, src + r * ld_src, cols * sizeof(floating))


cdef inline const floating *_at(const void *p, Py_ssize_t offset, floating *kind) noexcept nogil:
    """p + offset elements of the type of `kind` (which only picks the type), or NULL."""
    return NULL if p == NULL else <const floating *> p + offset


cdef inline floating *_at_out(void *p, Py_ssize_t offset, floating *kind) noexcept nogil:
    return NULL if p == NULL else <floating *> p + offset


cdef inline Py_ssize_t _ceil_div(Py_ssize_t a, Py_ssize_t b) noexcept nogil:
    return (a + b - 1) // b


include "_cell_step.pxi"
include "_cell_sequence.pxi"
