# cython: language_level=3
"""lstmc's C-level API: the LSTM kernels, for other Cython code.

    from lstmc._cell cimport lstm_step_forward, lstm_step_backward

Every kernel is `noexcept nogil`, works on float or double (a fused type; Cython
picks the version from the pointer types), and returns 0, or -1 when a size or
leading dimension does not fit BLAS's integer type (nothing is written then):
the rule is `lstm_step_fits` / `lstm_sequence_fits`, which a caller may also
check before allocating anything.

Layout contract (the same for every argument):
  - A matrix (R, C) is row-major with contiguous columns and a leading
    dimension `ld` >= C: element (r, c) is at ptr[r * ld + c]. Slices such as
    xs[:, t, :] of a C-contiguous (N, T, D) array are such matrices (ld = T*D).
  - Wx (D, 4H), Wh (H, 4H) and b (4H,) are C-contiguous (ld = 4H).
  - Gate order along 4H is f, g, i, o:
        A      = x @ Wx + h_prev @ Wh + b
        f, i, o = sigmoid(A[:, :H]), sigmoid(A[:, 2H:3H]), sigmoid(A[:, 3H:])
        g      = tanh(A[:, H:2H])
        c_next = f * c_prev + g * i
        h_next = o * tanh(c_next)
  - The caller owns every buffer; the kernels allocate nothing and keep nothing.
  - NULL is allowed where a comment says so.
"""
from cython cimport floating


# How a sequence kernel runs (lstmc._work chooses it per layer and shape):
cdef struct Plan:
    int threads                 # at most this many threads (1: the caller's only)
    Py_ssize_t block            # rows of the batch per task, >= 1
    bint recurrent_by_rows      # the recurrent product issued with BLAS's m = rows
    Py_ssize_t recurrent_piece  # with it, > 0: h transposed first, products of this
                                # many columns (BLAS's small-matrix kernels)
                                # (gate-major, added in by a loop), else m = 4H
    bint by_units               # the batch whole, each step a round of tasks over
                                # slices of the H units (block unused)
    bint backward_by_rows       # the backward's dh = dA_t @ Wh.T issued with BLAS's
                                # m = rows (gate-major, transposed into place)
    Py_ssize_t backward_piece   # with it, > 0: instead from Wh's transpose (copied
                                # into the scratch), BLAS's m pieces of this many
                                # units, dh written in place (small-matrix kernels)
    Py_ssize_t ahead_piece      # a batch of one row on 2+ threads, > 0: its inputs
                                # projected on another thread ahead of the time
                                # loop, in pieces of this many steps


# lstmc's threads (_pool.h). Every numeric call runs between lstm_call_begin,
# which waits until fewer than the limit of threads run lstmc work (and with
# pin_blas holds SciPy's BLAS at one thread), and lstm_call_end (the same
# pin_blas). The `threads` of a kernel is the most it runs on.
cdef void lstm_call_begin(bint pin_blas) noexcept nogil
cdef void lstm_call_end(bint pin_blas) noexcept nogil
cdef void lstm_set_threads(int n) noexcept nogil
cdef int lstm_get_threads() noexcept nogil
cdef int lstm_pool_workers() noexcept nogil          # worker threads made so far
cdef int lstm_blas_threads() noexcept nogil          # SciPy's BLAS count now, -1 unknown
cdef bint lstm_blas_bound() noexcept nogil           # lstmc can pin SciPy's BLAS
cdef int lstm_blas_set_threads(int n) noexcept nogil  # returns the count before, -1
cdef void lstm_blas_after_fork() noexcept nogil       # a forked child: a count pinned
                                                       # by another thread's call restored


# True when a kernel accepts these sizes; largest_ld is the largest leading
# dimension (or stride, in elements) among its arguments.
cdef bint lstm_step_fits(Py_ssize_t N, Py_ssize_t D, Py_ssize_t H,
                         Py_ssize_t largest_ld) noexcept nogil
cdef bint lstm_sequence_fits(Py_ssize_t N, Py_ssize_t T, Py_ssize_t D, Py_ssize_t H,
                             Py_ssize_t largest_stride) noexcept nogil


cdef int lstm_step_forward(
    Py_ssize_t N, Py_ssize_t D, Py_ssize_t H,
    const floating *x, Py_ssize_t ldx,         # IN  (N, D), or NULL: `gates` already holds x @ Wx
    const floating *h_prev, Py_ssize_t ldhp,   # IN  (N, H), or NULL for zeros
    const floating *c_prev, Py_ssize_t ldcp,   # IN  (N, H), or NULL for zeros
    const floating *Wx, const floating *Wh, const floating *b,
    floating *gates, Py_ssize_t ldg,           # IN/OUT (N, 4H): scratch in; f, g, i, o out
    floating *h_next, Py_ssize_t ldhn,         # OUT (N, H); may be h_prev
    floating *c_next, Py_ssize_t ldcn,         # OUT (N, H); may be c_prev
    floating *tanh_c, Py_ssize_t ldtc,         # OUT (N, H) tanh(c_next), or NULL
    int threads=*,                             # at most this many threads (default 1)
) noexcept nogil


cdef int lstm_step_backward(
    Py_ssize_t N, Py_ssize_t D, Py_ssize_t H,
    const floating *dh_next, Py_ssize_t lddh,  # IN  (N, H)
    const floating *dc_next, Py_ssize_t lddc,  # IN  (N, H), or NULL for zeros
    const floating *x, Py_ssize_t ldx,         # IN  (N, D): the forward's input
    const floating *h_prev, Py_ssize_t ldhp,   # IN  (N, H), or NULL for zeros
    const floating *c_prev, Py_ssize_t ldcp,   # IN  (N, H), or NULL for zeros
    const floating *Wx, const floating *Wh,
    const floating *gates, Py_ssize_t ldg,     # IN  (N, 4H) from lstm_step_forward
    const floating *tanh_c, Py_ssize_t ldtc,   # IN  (N, H) from lstm_step_forward
    floating *dA, Py_ssize_t ldda,             # OUT (N, 4H) scratch: d loss / d A
    floating *dx, Py_ssize_t lddx,             # OUT (N, D)
    floating *dh_prev, Py_ssize_t lddhp,       # OUT (N, H)
    floating *dc_prev, Py_ssize_t lddcp,       # OUT (N, H); may be dc_next
    floating *dWx, floating *dWh, floating *db,  # OUT overwritten, C-contiguous
    int threads=*,                             # at most this many threads (default 1)
) noexcept nogil
# No OUT array may overlap an IN array or another OUT array, with one exception:
# dc_prev may be dc_next itself (the same pointer and leading dimension).


# The element-wise halves of a step, which the sequence loop also uses.
cdef void lstm_gates_forward(
    Py_ssize_t N, Py_ssize_t H,
    floating *gates, Py_ssize_t ldg,           # IN x@Wx + h@Wh (no bias); OUT f, g, i, o
    const floating *b,
    const floating *c_prev, Py_ssize_t ldcp,   # or NULL for zeros
    floating *c_next, Py_ssize_t ldcn,
    floating *h_next, Py_ssize_t ldhn,
    floating *tanh_c, Py_ssize_t ldtc,         # or NULL
) noexcept nogil

cdef void lstm_gates_backward(
    Py_ssize_t N, Py_ssize_t H,
    const floating *dh, Py_ssize_t lddh,       # dh_next = dh + dh2
    const floating *dh2, Py_ssize_t lddh2,     # or NULL
    const floating *dc, Py_ssize_t lddc,       # or NULL for zeros
    const floating *gates, Py_ssize_t ldg,
    const floating *c_prev, Py_ssize_t ldcp,   # or NULL for zeros
    const floating *tanh_c, Py_ssize_t ldtc,
    floating *dA, Py_ssize_t ldda,
    floating *dc_prev, Py_ssize_t lddcp,       # may be dc (same pointer and ld)
) noexcept nogil
# dA and dc_prev must not overlap each other or any input, except that dc_prev
# may be dc itself.


# A whole sequence. xs is (N, T, D) with a contiguous last axis: row (n, t) at
# xs + n * xs_seq_stride + t * xs_step_stride (strides in elements, each at
# least D where it steps over rows; sequences may overlap). Everything else is
# C-contiguous.
cdef int lstm_sequence_forward(
    Py_ssize_t N, Py_ssize_t T, Py_ssize_t D, Py_ssize_t H,
    const floating *xs, Py_ssize_t xs_seq_stride, Py_ssize_t xs_step_stride,  # IN
    const floating *Wx, const floating *Wh, const floating *b,
    const floating *h0, const floating *c0,    # IN  (N, H), or NULL for zeros
    floating *hs,                              # OUT (N, T, H)
    floating *h_last, floating *c_last,        # OUT (N, H): the state after step T - 1
    # OUT what lstm_sequence_backward reads:
    floating *gates,                           # (N, T, 4H) f, g, i, o of every step
    floating *cells,                           # (N, T, H)  c of every step
    floating *tanh_cells,                      # (N, T, H)  tanh(c) of every step
    floating *h_prevs,                         # (N, T, H)  h before every step: h0, hs[:, :-1]
    const Plan *plan,                          # or NULL: the caller's thread, m = 4H
    floating *recurrent,                       # scratch 4H*(H+N) + threads*N*H + 16
                                               # for recurrent_by_rows, or NULL
    const Py_ssize_t *lengths=*,               # IN  (N,) steps of each row, or NULL: all T
) noexcept nogil

# The same outputs without what backward needs, in memory bounded whatever T is:
# the inputs are projected chunk_steps steps at a time.
cdef int lstm_sequence_infer(
    Py_ssize_t N, Py_ssize_t T, Py_ssize_t D, Py_ssize_t H,
    const floating *xs, Py_ssize_t xs_seq_stride, Py_ssize_t xs_step_stride,  # IN
    const floating *Wx, const floating *Wh, const floating *b,
    const floating *h0, const floating *c0,    # IN  (N, H), or NULL for zeros
    floating *hs,                              # OUT (N, T, H)
    floating *h_last, floating *c_last,        # OUT (N, H)
    floating *chunk_gates,                     # scratch (chunk_steps * N, 4H)
    floating *chunk_inputs,                    # scratch (chunk_steps * N, D); NULL if N == 1
    Py_ssize_t chunk_steps,                    # >= 1
    const Plan *plan,                          # or NULL: the caller's thread, m = 4H
    floating *recurrent,                       # scratch as lstm_sequence_forward's, or NULL
    const Py_ssize_t *lengths=*,               # IN  (N,) steps of each row, or NULL: all T
    const Py_ssize_t *xs_rows=*,               # IN  (N,) row n is xs's sequence xs_rows[n]
) noexcept nogil                               #     (in 0 .. N-1), or NULL: sequence n

cdef int lstm_sequence_backward(
    Py_ssize_t N, Py_ssize_t T, Py_ssize_t D, Py_ssize_t H,
    const floating *dhs, Py_ssize_t dhs_seq_stride, Py_ssize_t dhs_step_stride,  # IN (N, T, H)
    const floating *xs, Py_ssize_t xs_seq_stride, Py_ssize_t xs_step_stride,     # IN the forward's
    const floating *Wx, const floating *Wh,
    const floating *c0,                        # IN  (N, H) the forward's, or NULL for zeros
    const floating *gates, const floating *cells,
    const floating *tanh_cells, const floating *h_prevs,  # IN  from lstm_sequence_forward
    floating *dA,                              # scratch (N, T, 4H)
    floating *dc_carry,                        # scratch (N, H)
    floating *dxs,                             # OUT (N, T, D)
    floating *dh0,                             # OUT (N, H) gradient of h0
    floating *dWx, floating *dWh, floating *db,  # OUT overwritten: sums over all steps
    const Plan *plan,                          # or NULL: the caller's thread
    const Py_ssize_t *lengths=*,               # IN  (N,) the forward's lengths, or NULL
    floating *dh_scratch=*,                    # scratch for backward_by_rows, or NULL: (N, H),
                                               # with backward_piece 4H*H elements + 64 bytes
) noexcept nogil
# No OUT or scratch array may overlap another array of the same call. After the
# call dc_carry holds the gradient of c0.
#
# lengths: row n runs steps 0 .. lengths[n] - 1 only (0 <= lengths[n] <= T);
# the rows of each task (plan.block rows; the whole batch when plan is NULL or
# by_units) must be sorted longest first, else the kernel returns -1. Rows past their
# length are not computed: hs and cells there are left as they were, h_last and
# c_last are each row's state after its last step (h0 / c0 for a length of 0),
# h_prevs is zero there; backward reads no dhs there and writes zero dA and
# dxs. Each step's products and gate loop run on the rows still running. The
# products of the backward run over every step, so xs past a row's length must be
# finite (zeros, say).


# gates (N, 4H, ldg) += h_prev (N, H, ldh) @ Wh, one step's recurrent product as
# the plan orients it (by_rows: recurrent is scratch (4H, N), Wh_t is Wh.T,
# C-contiguous (4H, H), and with piece > 0 h_t is scratch (H, N)).
cdef void lstm_recurrent(Py_ssize_t N, Py_ssize_t H, bint by_rows,
                         const floating *h_prev, Py_ssize_t ldh, const floating *Wh,
                         floating *gates, Py_ssize_t ldg, floating *recurrent,
                         const floating *Wh_t=*, floating *h_t=*,
                         Py_ssize_t piece=*) noexcept nogil

# dh (N, units, lddh) := dA (N, 4H, ldda) @ Wh.T for `units` rows of Wh (Wh at
# the first), the backward's product as the plan orients it (by_rows: scratch
# (units, N); piece > 0: from Wh_t (4H, H), Wh's transpose, at the first unit's
# column, in products of `piece` units, scratch unused).
cdef void lstm_recurrent_backward(Py_ssize_t N, Py_ssize_t H, Py_ssize_t units, bint by_rows,
                                  const floating *dA, Py_ssize_t ldda, const floating *Wh,
                                  floating *dh, Py_ssize_t lddh,
                                  floating *scratch, const floating *Wh_t=*,
                                  Py_ssize_t piece=*) noexcept nogil
