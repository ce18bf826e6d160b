# lstmc._cell, a whole sequence: included by _cell.pyx (one module, one C-level
# API). The time loop, split by row blocks or by unit slices per step.
from cython cimport floating


# ---------------------------------------------------------- a sequence

cdef inline Py_ssize_t _step_ld(Py_ssize_t N, Py_ssize_t T, Py_ssize_t D,
                                Py_ssize_t seq_stride, Py_ssize_t step_stride) noexcept nogil:
    """The leading dimension that reads the N*T rows of xs, sequence by sequence,
    as one matrix: meaningful only when `_evenly_spaced`."""
    if T > 1:
        return step_stride
    return seq_stride if N > 1 else D


cdef inline bint _evenly_spaced(Py_ssize_t N, Py_ssize_t T, Py_ssize_t seq_stride,
                                Py_ssize_t step_stride) noexcept nogil:
    """True when the N*T rows of xs, sequence-major, are evenly spaced: one gemm
    reads them all."""
    return N == 1 or T == 1 or seq_stride == T * step_stride


cdef inline void _initial_state(Py_ssize_t N, Py_ssize_t H, const floating *h0,
                                const floating *c0, floating *h_last,
                                floating *c_last) noexcept nogil:
    if h0 != NULL:
        memcpy(h_last, h0, N * H * sizeof(floating))
    else:
        memset(h_last, 0, N * H * sizeof(floating))
    if c0 != NULL:
        memcpy(c_last, c0, N * H * sizeof(floating))
    else:
        memset(c_last, 0, N * H * sizeof(floating))


# Each sequence kernel splits the batch into blocks of plan.block rows and runs
# every block through all T steps as one task (rows never interact in the
# forward, nor in the backward's time loop), on up to plan.threads threads. The
# backward's products over all steps then split the weight gradients by
# columns and dxs by rows. Task boundaries depend on the sizes and the plan
# only: results do not depend on which thread ran which task.

cdef struct _SequenceArgs:
    bint double_precision
    Py_ssize_t batch, steps, input_size, hidden_size, chunk_steps
    Plan plan
    const Py_ssize_t *lengths           # each row's steps (non-increasing in a block), or NULL
    const Py_ssize_t *xs_rows           # infer: row n of the batch is xs's row xs_rows[n], or NULL
    const void *xs
    Py_ssize_t xs_seq_stride, xs_step_stride
    const void *dhs
    Py_ssize_t dhs_seq_stride, dhs_step_stride
    const void *Wx
    const void *Wh
    const void *b
    const void *h0
    const void *c0
    void *hs
    void *h_last
    void *c_last
    void *gates
    void *cells
    void *tanh_cells
    void *h_prevs
    void *weights_t                     # recurrent_by_rows: Wh transposed, (4H, H)
    void *recurrent                     # recurrent_by_rows: scratch (4H, N), gate-major
    void *h_t                           # recurrent_piece: scratch (H, N) per task
    void *chunk_gates
    void *chunk_inputs
    void *dA
    void *dc_carry
    void *dh_scratch                    # backward_by_rows: (N, H), gate-major per task
    void *dxs
    void *dh0
    void *dWx
    void *dWh
    void *db
    Py_ssize_t column_piece, row_piece, column_tasks   # the backward's second phase
    Py_ssize_t unit_piece, step                        # plan.by_units: a slice, a step
    Py_ssize_t chunk_first                             # by_units, infer: the chunk's first step
    Py_ssize_t running                                 # by_units: the rows that run this step
    Py_ssize_t first_step, row_ld, step_ld             # by_units with lengths: a projection
    Py_ssize_t rows, row_spacing                       # by_units: rows being projected
    # by_units, the forward: the step a task runs, each matrix with its ld
    void *step_gates
    const void *step_h_prev
    const void *step_c_prev
    void *step_h_next
    void *step_c_next
    void *step_tanh_c
    Py_ssize_t ld_gates, ld_h_prev, ld_c_prev, ld_h_next, ld_c_next
    # one row on two threads: its inputs projected ahead of its time loop
    lstmc_ahead ahead
    Py_ssize_t ahead_steps, ahead_piece, ahead_ldx     # ahead_steps 0: not ahead
    const void *ahead_xs
    void *ahead_gates
    lstmc_task_fn ahead_loop


cdef inline Py_ssize_t _block_rows(const _SequenceArgs *a, ptrdiff_t task,
                                   Py_ssize_t *first) noexcept nogil:
    first[0] = task * a.plan.block
    return min(a.plan.block, a.batch - first[0])


cdef inline const Py_ssize_t *_at_lengths(const _SequenceArgs *a, Py_ssize_t first) noexcept nogil:
    return NULL if a.lengths == NULL else a.lengths + first


cdef inline Py_ssize_t _blocks(const Plan *plan, Py_ssize_t N) noexcept nogil:
    return _ceil_div(N, max(plan.block, 1))


# Lengths. Row n of a call runs steps 0 .. lengths[n] - 1 only. The rows of
# each task are sorted longest first, so the rows still running at step t are
# a prefix of the task's rows: each step's products and gate loop run on that
# prefix, and a finished row costs nothing more.

cdef inline Py_ssize_t _row(const Py_ssize_t *rows, Py_ssize_t n) noexcept nogil:
    """Row n's row of xs: rows[n], or n without a map."""
    return n if rows == NULL else rows[n]


cdef void _gather_chunk(Py_ssize_t N, Py_ssize_t D, const floating *xs, Py_ssize_t seq_stride,
                        Py_ssize_t step_stride, const Py_ssize_t *xs_rows,
                        Py_ssize_t first_step, Py_ssize_t steps,
                        floating *out) noexcept nogil:
    """out (steps, N, D) step-major = steps first_step .. of the N rows of xs
    (xs's row xs_rows[n] for row n when xs_rows is not NULL)."""
    cdef Py_ssize_t n, t
    for t in range(steps):
        for n in range(N):
            memcpy(out + (t * N + n) * D,
                   xs + _row(xs_rows, n) * seq_stride + (first_step + t) * step_stride,
                   D * sizeof(floating))


cdef inline Py_ssize_t _task_rows(const Plan *plan, Py_ssize_t N) noexcept nogil:
    """The rows of one row task: the whole batch by units."""
    return N if plan.by_units else plan.block


cdef inline bint _lengths_fit(const Py_ssize_t *lengths, Py_ssize_t N, Py_ssize_t T,
                              Py_ssize_t block) noexcept nogil:
    """Every length in 0 .. T, and non-increasing within each block of rows."""
    cdef Py_ssize_t n
    for n in range(N):
        if lengths[n] < 0 or lengths[n] > T:
            return False
        if n % block != 0 and lengths[n] > lengths[n - 1]:
            return False
    return True


cdef inline Py_ssize_t _running(const Py_ssize_t *lengths, Py_ssize_t N,
                                Py_ssize_t t) noexcept nogil:
    """How many of the N rows (longest first) still run at step t; N without lengths."""
    cdef Py_ssize_t lo = 0, hi = N, mid
    if lengths == NULL:
        return N
    while lo < hi:                      # the first row with lengths <= t
        mid = (lo + hi) // 2
        if lengths[mid] > t:
            lo = mid + 1
        else:
            hi = mid
    return lo


# Projecting each row's valid steps alone costs a gemm per row, each repacking
# Wx (measured here: a repack of Wx costs about what projecting 10-25 rows does);
# projecting every step of the rows, padding included, costs one. Each row's
# own steps pay when the padding averages more than this many steps a row.
cdef Py_ssize_t _PADDING_PER_ROW = 16


cdef inline bint _by_row(const Py_ssize_t *lengths, Py_ssize_t N, Py_ssize_t first_step,
                         Py_ssize_t steps) noexcept nogil:
    """Whether to project the valid steps of each row alone (else all steps
    first_step .. first_step + steps - 1 of all N rows, padding included)."""
    cdef Py_ssize_t n, padding = 0
    if lengths == NULL:
        return False
    for n in range(N):
        padding += steps - min(max(lengths[n] - first_step, 0), steps)
    return padding > _PADDING_PER_ROW * N


cdef void _project_lengths(Py_ssize_t N, Py_ssize_t D, Py_ssize_t G4,
                           const floating *xs, Py_ssize_t seq_stride, Py_ssize_t step_stride,
                           const floating *Wx, const Py_ssize_t *lengths,
                           Py_ssize_t first_step, Py_ssize_t steps,
                           floating *out, Py_ssize_t row_ld, Py_ssize_t step_ld,
                           const Py_ssize_t *xs_rows=NULL) noexcept nogil:
    """out[n, t] = xs[n, t] @ Wx for the valid steps t of first_step ..
    first_step + steps - 1 of each row n, at out + n * row_ld + (t - first_step) * step_ld
    (xs's row xs_rows[n] when xs_rows is not NULL)."""
    cdef Py_ssize_t n, t, count
    cdef const floating *x
    for n in range(N):
        count = min(lengths[n], first_step + steps) - first_step
        x = xs + _row(xs_rows, n) * seq_stride + first_step * step_stride
        if count <= 0:
            break                       # longest first: no later row has steps here
        if step_stride >= D or count == 1:
            _affine(count, D, G4, x, max(step_stride, D), Wx, 0, out + n * row_ld, step_ld)
        else:                           # overlapping steps: BLAS cannot take them as rows
            for t in range(count):
                _affine(1, D, G4, x + t * step_stride, D, Wx, 0,
                        out + n * row_ld + t * step_ld, step_ld)


cdef void _last_valid(Py_ssize_t N, Py_ssize_t H, const Py_ssize_t *lengths,
                      const floating *seq, Py_ssize_t TH, const floating *initial,
                      floating *out) noexcept nogil:
    """out[n] = seq[n, lengths[n] - 1], or initial[n] (NULL: zeros) for a length of 0."""
    cdef Py_ssize_t n
    for n in range(N):
        if lengths[n] > 0:
            memcpy(out + n * H, seq + n * TH + (lengths[n] - 1) * H, H * sizeof(floating))
        elif initial != NULL:
            memcpy(out + n * H, initial + n * H, H * sizeof(floating))
        else:
            memset(out + n * H, 0, H * sizeof(floating))


cdef inline void _gate_major_product(Py_ssize_t N, Py_ssize_t H, Py_ssize_t cols,
                                     const floating *h_prev, Py_ssize_t ldh,
                                     const floating *Wt, floating *out, floating *h_t,
                                     Py_ssize_t piece) noexcept nogil:
    """out (cols, N) = Wt (cols, H) @ h_prev.T, BLAS's m the batch: one product
    reading h transposed, or (piece > 0) h transposed into h_t (H, N) first and
    products of `piece` columns, small enough for BLAS's small-matrix kernels."""
    cdef Py_ssize_t p = 0
    if piece <= 0:
        gemm(c'n', c't', cols, N, H, 1, Wt, H, h_prev, ldh, 0, out, N)   # out = Wt @ h.T
        return
    transpose(H, N, h_prev, ldh, h_t, N)                                 # h_t = h.T
    while p < cols:                                      # out[p:p+piece] = Wt[p:p+piece] @ h_t
        gemm(c'n', c'n', min(piece, cols - p), N, H, 1, Wt + p * H, H, h_t, N, 0,
             out + p * N, N)
        p += piece


cdef void lstm_recurrent(Py_ssize_t N, Py_ssize_t H, bint by_rows,
                         const floating *h_prev, Py_ssize_t ldh, const floating *Wh,
                         floating *gates, Py_ssize_t ldg, floating *recurrent,
                         const floating *Wh_t=NULL, floating *h_t=NULL,
                         Py_ssize_t piece=0) noexcept nogil:
    cdef Py_ssize_t G4 = 4 * H, p = 0
    if N == 1:
        gemv_t(H, G4, 1, Wh, G4, h_prev, 1, gates)
    elif by_rows:
        # BLAS's m is the batch, Wh_t (4H, H) read as it is: the product comes
        # out gate-major and is added in by a loop.
        _gate_major_product(N, H, G4, h_prev, ldh, Wh_t, recurrent, h_t, piece)
        add_transposed(N, G4, recurrent, N, gates, ldg)
    elif piece > 0:
        # BLAS's m = 4H in pieces small enough for its small-matrix kernels.
        while p < G4:                            # gates[:, p:p+piece] += h @ Wh[:, p:p+piece]
            gemm(c'n', c'n', N, min(piece, G4 - p), H, 1, h_prev, ldh, Wh + p, G4, 1,
                 gates + p, ldg)
            p += piece
    else:
        gemm(c'n', c'n', N, G4, H, 1, h_prev, ldh, Wh, G4, 1, gates, ldg)


# The by-rows product reads Wh transposed, (4H, H): BLAS packs a matrix whose
# columns are contiguous along the sum fastest (measured here: the m = rows
# product of (64, 512) took 30 ms per 50 steps from Wh's transpose against 40
# from Wh read transposed, and 37 in the m = 4H way). The call copies it once.
# By units, each slice's four gates are made adjacent rows, so that a slice's
# product is one gemm: unit j of gate g of the slice starting at unit j0 (width
# w) is row 4 j0 + g w + (j - j0). Split by rows, the one slice is Wh.T.

cdef void _transpose_slice(floating *kind, const _SequenceArgs *a, ptrdiff_t task) noexcept nogil:
    """Units j0 .. j1 of the four gates into weights_t: by units this task's
    slice (starting at s0 = j0, width w); by rows a share of the one slice of
    all H units (s0 = 0, w = H)."""
    cdef Py_ssize_t H = a.hidden_size, G4 = 4 * H, g
    cdef Py_ssize_t piece = a.unit_piece if a.plan.by_units else _ceil_div(H, a.plan.threads)
    cdef Py_ssize_t j0 = task * piece, j1 = min(H, j0 + piece)
    cdef Py_ssize_t s0 = j0 if a.plan.by_units else 0
    cdef Py_ssize_t w = j1 - j0 if a.plan.by_units else H
    for g in range(4):                       # weights_t[rows of gate g, j0..j1] = Wh[:, ...].T
        transpose(j1 - j0, H, <const floating *> a.Wh + g * H + j0, G4,
                  <floating *> a.weights_t + (4 * s0 + g * w + j0 - s0) * H, H)


cdef void _transpose_task(void *args, ptrdiff_t task) noexcept nogil:
    if (<_SequenceArgs *> args).double_precision:
        _transpose_slice(<double *> NULL, <_SequenceArgs *> args, task)
    else:
        _transpose_slice(<float *> NULL, <_SequenceArgs *> args, task)


cdef inline void *_aligned(void *p) noexcept nogil:
    """p moved up to its first 64-byte boundary."""
    return <void *> ((<size_t> p + 63) & ~(<size_t> 63))


cdef void _transpose_weights(_SequenceArgs *a, void *scratch, Py_ssize_t item) noexcept nogil:
    """With recurrent_by_rows: a.weights_t, a.recurrent and a.h_t share the
    scratch (from its first 64-byte boundary), Wh transposed first, on
    plan.threads. One row split by rows: a.Wh becomes Wh's copy there, as it
    is (a row's gemv ran 15 % slower from a matrix 16 bytes off a 64-byte
    boundary than from one on it), and the product goes the m = 4H way."""
    cdef Py_ssize_t H = a.hidden_size
    a.recurrent = scratch
    if not a.plan.recurrent_by_rows:
        return
    scratch = _aligned(scratch)
    a.weights_t = scratch
    a.recurrent = <char *> scratch + 4 * H * H * item
    a.h_t = <char *> a.recurrent + 4 * H * a.batch * item
    if a.batch == 1 and not a.plan.by_units:
        memcpy(scratch, a.Wh, 4 * H * H * item)
        a.Wh = scratch
        a.plan.recurrent_by_rows = False
    elif a.plan.by_units:
        lstmc_parallel(a.plan.threads, _ceil_div(H, a.unit_piece), _transpose_task, a)
    else:
        lstmc_parallel(a.plan.threads, a.plan.threads, _transpose_task, a)


cdef void _forward_tail(Py_ssize_t N, Py_ssize_t T, Py_ssize_t H, const Py_ssize_t *lengths,
                        const floating *h0, const floating *c0, const floating *hs,
                        const floating *cells, floating *h_prevs, floating *h_last,
                        floating *c_last) noexcept nogil:
    """After a training forward's time loop: every step's h_prev as one (N*T, H)
    matrix for backward's dWh (zeros past a row's length: the backward's
    products run over every step), and the last state of every row."""
    cdef Py_ssize_t n, valid, TH = T * H
    for n in range(N):
        valid = T if lengths == NULL else lengths[n]
        if h0 != NULL:
            memcpy(h_prevs + n * TH, h0 + n * H, H * sizeof(floating))
        else:
            memset(h_prevs + n * TH, 0, H * sizeof(floating))
        if valid > 1:
            memcpy(h_prevs + n * TH + H, hs + n * TH, (valid - 1) * H * sizeof(floating))
        if valid < T:
            memset(h_prevs + n * TH + max(valid, 1) * H, 0,
                   (T - max(valid, 1)) * H * sizeof(floating))
    if lengths != NULL:
        _last_valid(N, H, lengths, hs, TH, h0, h_last)
        _last_valid(N, H, lengths, cells, TH, c0, c_last)
    else:
        _copy_rows(h_last, H, hs + (T - 1) * H, TH, N, H)
        _copy_rows(c_last, H, cells + (T - 1) * H, TH, N, H)


# One row on two threads (plan.ahead_piece): a row's steps run one after
# another, so the other thread projects the inputs ahead of the time loop, in
# pieces of steps, while the loop runs (lstmc_ahead_* in _pool.h): the loop
# makes a piece itself when the other thread has not taken it, and waits only
# for one being made.

cdef bint _plan_ahead(_SequenceArgs *a, Py_ssize_t steps, const void *xs, void *gates,
                      lstmc_task_fn loop) noexcept nogil:
    """Whether this call projects its one row ahead of the time loop (then set
    up for lstmc_parallel(2, 2, _ahead_task, a)): the `steps` steps from xs
    (the row's first step) into gates (4H apart), `loop` the row's task."""
    cdef Py_ssize_t piece = max(a.plan.ahead_piece, _ceil_div(steps, LSTMC_AHEAD_MAX))
    if (a.plan.ahead_piece <= 0 or a.batch != 1 or a.plan.by_units or a.plan.threads < 2
            or steps <= piece):
        return False
    a.ahead_steps, a.ahead_piece, a.ahead_xs, a.ahead_gates = steps, piece, xs, gates
    a.ahead_ldx = _step_ld(1, a.steps, a.input_size, a.xs_seq_stride, a.xs_step_stride)
    a.ahead.pieces, a.ahead.claimed = _ceil_div(steps, piece), 0
    memset(a.ahead.made, 0, sizeof(a.ahead.made))
    a.ahead_loop = loop
    return True


cdef void _ahead_make_piece(floating *kind, _SequenceArgs *a, ptrdiff_t k) noexcept nogil:
    """Piece k: gates of its steps = their inputs @ Wx."""
    cdef Py_ssize_t G4 = 4 * a.hidden_size, t0 = k * a.ahead_piece
    _affine(min(a.ahead_piece, a.ahead_steps - t0), a.input_size, G4,
            <const floating *> a.ahead_xs + t0 * a.ahead_ldx, a.ahead_ldx,
            <const floating *> a.Wx, 0, <floating *> a.ahead_gates + t0 * G4, G4)


cdef void _ahead_make(void *args, ptrdiff_t k) noexcept nogil:
    if (<_SequenceArgs *> args).double_precision:
        _ahead_make_piece(<double *> NULL, <_SequenceArgs *> args, k)
    else:
        _ahead_make_piece(<float *> NULL, <_SequenceArgs *> args, k)


cdef inline void _ahead_ready(_SequenceArgs *a, Py_ssize_t t) noexcept nogil:
    """Before the time loop's step t: the inputs' piece that starts there made."""
    if a.ahead_steps != 0 and t % a.ahead_piece == 0:
        lstmc_ahead_ready(&a.ahead, t // a.ahead_piece, _ahead_make, a)


cdef void _ahead_task(void *args, ptrdiff_t task) noexcept nogil:
    """Task 0 the row's time loop, task 1 the projection ahead of it."""
    cdef _SequenceArgs *a = <_SequenceArgs *> args
    if task == 0:
        a.ahead_loop(args, 0)
    else:
        lstmc_ahead_help(&a.ahead, _ahead_make, args)


cdef void _forward_rows(floating *kind, const _SequenceArgs *a, ptrdiff_t task) noexcept nogil:
    cdef Py_ssize_t D = a.input_size, H = a.hidden_size, T = a.steps
    cdef Py_ssize_t G4 = 4 * H, TH = T * H, TG = T * G4
    cdef Py_ssize_t first, n, t
    cdef Py_ssize_t N = _block_rows(a, task, &first)
    cdef Py_ssize_t rows = N                # rows still running at step t
    cdef Py_ssize_t ldx = _step_ld(N, T, D, a.xs_seq_stride, a.xs_step_stride)
    cdef const Py_ssize_t *lengths = _at_lengths(a, first)
    cdef const floating *xs = <const floating *> a.xs + first * a.xs_seq_stride
    cdef const floating *Wx = <const floating *> a.Wx
    cdef const floating *Wh = <const floating *> a.Wh
    cdef const floating *b = <const floating *> a.b
    cdef const floating *h0 = _at(a.h0, first * H, kind)
    cdef const floating *c0 = _at(a.c0, first * H, kind)
    cdef floating *hs = _at_out(a.hs, first * TH, kind)
    cdef floating *gates = _at_out(a.gates, first * TG, kind)
    cdef floating *cells = _at_out(a.cells, first * TH, kind)
    cdef floating *tanh_cells = _at_out(a.tanh_cells, first * TH, kind)
    cdef floating *h_prevs = _at_out(a.h_prevs, first * TH, kind)
    cdef floating *recurrent = _at_out(a.recurrent, first * G4, kind)
    cdef floating *h_t = _at_out(a.h_t, first * H, kind)
    cdef const floating *h_prev
    cdef const floating *c_prev
    if a.ahead_steps:                                         # piece by piece, in the loop
        pass
    elif _by_row(lengths, N, 0, T):                           # each row's valid steps only
        _project_lengths(N, D, G4, xs, a.xs_seq_stride, a.xs_step_stride, Wx, lengths,
                         0, T, gates, TG, G4)
    elif _evenly_spaced(N, T, a.xs_seq_stride, a.xs_step_stride):
        _affine(N * T, D, G4, xs, ldx, Wx, 0, gates, G4)      # gates = xs @ Wx, all steps
    else:                                                     # rows in place, a gemm per sequence
        for n in range(N):
            _affine(T, D, G4, xs + n * a.xs_seq_stride, a.xs_step_stride, Wx, 0,
                    gates + n * TG, G4)
    # Step t reads h and c of step t - 1 in place, as (N, H) slices with ld T*H.
    for t in range(T):
        rows = _running(lengths, rows, t)
        if rows == 0:
            break
        _ahead_ready(<_SequenceArgs *> a, t)
        h_prev = hs + (t - 1) * H if t > 0 else h0
        c_prev = cells + (t - 1) * H if t > 0 else c0
        if h_prev != NULL:
            lstm_recurrent(rows, H, a.plan.recurrent_by_rows, h_prev, TH if t > 0 else H, Wh,
                           gates + t * G4, TG, recurrent, <const floating *> a.weights_t,
                           h_t, a.plan.recurrent_piece)
        gates_forward(rows, H, gates + t * G4, TG, b, c_prev, TH if t > 0 else H,
                      cells + t * H, TH, hs + t * H, TH, tanh_cells + t * H, TH)
    _forward_tail(N, T, H, lengths, h0, c0, hs, cells, h_prevs,
                  _at_out(a.h_last, first * H, kind), _at_out(a.c_last, first * H, kind))


cdef void _forward_task(void *args, ptrdiff_t task) noexcept nogil:
    if (<_SequenceArgs *> args).double_precision:
        _forward_rows(<double *> NULL, <_SequenceArgs *> args, task)
    else:
        _forward_rows(<float *> NULL, <_SequenceArgs *> args, task)


cdef void _sequence_args(_SequenceArgs *a, Py_ssize_t N, Py_ssize_t T, Py_ssize_t D,
                         Py_ssize_t H, const Plan *plan, floating *kind,
                         bint recurrent_scratch, const Py_ssize_t *lengths) noexcept nogil:
    memset(a, 0, sizeof(_SequenceArgs))
    a.double_precision = floating is double
    a.batch, a.steps, a.input_size, a.hidden_size = N, T, D, H
    if plan != NULL:
        a.plan = plan[0]
    else:                               # the caller's thread, the whole batch, m = 4H
        a.plan.threads, a.plan.block = 1, N
    a.plan.block = max(1, min(a.plan.block, N))
    a.plan.threads = max(1, a.plan.threads)
    a.plan.by_units = a.plan.by_units and a.plan.threads > 1
    a.lengths = lengths
    a.running = N
    if a.plan.recurrent_by_rows and not recurrent_scratch:
        a.plan.recurrent_by_rows, a.plan.recurrent_piece = False, 0
    a.unit_piece = _ceil_div(_ceil_div(H, a.plan.threads), 16) * 16


# By units (plan.by_units): the batch is not split; every step's tasks are
# slices of the H units, each computing its slice of the four gates' products
# and the gate loop for it, and the whole loop is one job (lstmc_parallel_steps:
# a step waits for the step before, no lock and no wake-up per step). Each
# thread takes its own slice first, so each slice of Wh stays in one core's
# cache; the inputs are projected by the same slices for the same reason.

cdef void _project_rows(floating *kind, const _SequenceArgs *a, ptrdiff_t task) noexcept nogil:
    """a.gates (a.rows, 4H) = x @ Wx for the a.rows input rows at a.xs,
    a.row_spacing elements apart: this task's unit slice of the four gates (so
    that each step's task for the slice reads gates its own thread wrote)."""
    cdef Py_ssize_t D = a.input_size, H = a.hidden_size, G4 = 4 * H
    cdef Py_ssize_t j0 = task * a.unit_piece
    cdef Py_ssize_t width = min(a.unit_piece, H - j0), g
    for g in range(4):                       # gates[:, gate g, slice] = x @ Wx[:, gate g, slice]
        _affine(a.rows, D, width, <const floating *> a.xs, a.row_spacing,
                <const floating *> a.Wx + g * H + j0, 0, <floating *> a.gates + g * H + j0,
                G4, G4)


cdef void _project_task(void *args, ptrdiff_t task) noexcept nogil:
    if (<_SequenceArgs *> args).double_precision:
        _project_rows(<double *> NULL, <_SequenceArgs *> args, task)
    else:
        _project_rows(<float *> NULL, <_SequenceArgs *> args, task)


cdef void _project(_SequenceArgs *a, const void *xs, Py_ssize_t row_spacing,
                   Py_ssize_t rows, void *out) noexcept nogil:
    """out (rows, 4H) = the rows of xs (`row_spacing` apart) @ Wx, on plan.threads."""
    cdef _SequenceArgs p = a[0]
    p.xs, p.row_spacing, p.rows, p.gates = xs, row_spacing, rows, out
    lstmc_parallel(p.plan.threads, _ceil_div(p.hidden_size, p.unit_piece), _project_task, &p)


cdef void _project_rows_lengths(floating *kind, const _SequenceArgs *a,
                                ptrdiff_t task) noexcept nogil:
    """By units with lengths: rows task, task + threads, ... of a.gates = x @ Wx
    for their valid steps among a.first_step .. a.first_step + a.rows - 1 (rows
    dealt in turn: the longest rows are not all one task's)."""
    cdef Py_ssize_t n = task
    cdef Py_ssize_t D = a.input_size, G4 = 4 * a.hidden_size
    while n < a.batch:
        _project_lengths(1, D, G4, <const floating *> a.xs + _row(a.xs_rows, n) * a.xs_seq_stride,
                         a.xs_seq_stride, a.xs_step_stride, <const floating *> a.Wx,
                         a.lengths + n, a.first_step, a.rows,
                         <floating *> a.gates + n * a.row_ld, a.row_ld, a.step_ld)
        n += a.plan.threads


cdef void _project_lengths_task(void *args, ptrdiff_t task) noexcept nogil:
    if (<_SequenceArgs *> args).double_precision:
        _project_rows_lengths(<double *> NULL, <_SequenceArgs *> args, task)
    else:
        _project_rows_lengths(<float *> NULL, <_SequenceArgs *> args, task)


cdef void _project_valid(_SequenceArgs *a, Py_ssize_t first_step, Py_ssize_t steps,
                         void *out, Py_ssize_t row_ld, Py_ssize_t step_ld) noexcept nogil:
    """out = the valid steps of every row (a.lengths) @ Wx, on plan.threads."""
    cdef _SequenceArgs p = a[0]
    p.first_step, p.rows, p.gates, p.row_ld, p.step_ld = first_step, steps, out, row_ld, step_ld
    lstmc_parallel(p.plan.threads, min(p.plan.threads, p.batch), _project_lengths_task, &p)


cdef void _step_units(floating *kind, const _SequenceArgs *a, ptrdiff_t task) noexcept nogil:
    """The step set in a.step_*, units j0 .. j0 + width: their four gates'
    recurrent products and the gate loop, for the a.running rows that run it."""
    cdef Py_ssize_t N = a.running, H = a.hidden_size, G4 = 4 * H
    cdef Py_ssize_t j0 = task * a.unit_piece
    cdef Py_ssize_t width = min(a.unit_piece, H - j0)
    cdef Py_ssize_t ldg = a.ld_gates
    cdef Py_ssize_t g
    cdef floating *gates = <floating *> a.step_gates
    cdef const floating *h_prev = <const floating *> a.step_h_prev
    cdef const floating *Wh = <const floating *> a.Wh
    cdef floating *r
    if h_prev != NULL and a.plan.recurrent_by_rows:
        # One product for the slice's four gates, gate-major (the slice's rows of weights_t).
        r = <floating *> a.recurrent + 4 * j0 * N
        if N == 1:                                   # r = weights_t[slice] @ h
            gemv_n(4 * width, H, 1, <const floating *> a.weights_t + 4 * j0 * H, H, h_prev, 0, r)
        else:
            _gate_major_product(N, H, 4 * width, h_prev, a.ld_h_prev,
                                <const floating *> a.weights_t + 4 * j0 * H, r,
                                _at_out(a.h_t, task * N * H, kind), a.plan.recurrent_piece)
        for g in range(4):                           # gates[:, gate g, slice] += r[g].T
            add_transposed(N, width, r + g * width * N, N, gates + g * H + j0, ldg)
    elif h_prev != NULL:
        for g in range(4):
            if N == 1:
                gemv_t(H, width, 1, Wh + g * H + j0, G4, h_prev, 1, gates + g * H + j0)
            else:
                gemm(c'n', c'n', N, width, H, 1, h_prev, a.ld_h_prev, Wh + g * H + j0, G4, 1,
                     gates + g * H + j0, ldg)
    gates_forward_units(N, width, H, gates + j0, ldg, <const floating *> a.b + j0,
                        _at(a.step_c_prev, j0, kind), a.ld_c_prev,
                        <floating *> a.step_c_next + j0, a.ld_c_next,
                        <floating *> a.step_h_next + j0, a.ld_h_next,
                        _at_out(a.step_tanh_c, j0, kind), a.ld_c_next)


cdef inline void _set_step(_SequenceArgs *a, floating *gates, Py_ssize_t ldg,
                           const floating *h_prev, Py_ssize_t ldh,
                           const floating *c_prev, Py_ssize_t ldc,
                           floating *h_next, Py_ssize_t ldhn,
                           floating *c_next, floating *tanh_c, Py_ssize_t ldcn) noexcept nogil:
    """The step a task runs. c_next may be c_prev (the same ld);
    tanh_c, if any, has c_next's ld."""
    a.step_gates, a.ld_gates, a.step_h_prev, a.ld_h_prev = gates, ldg, h_prev, ldh
    a.step_c_prev, a.ld_c_prev, a.step_h_next, a.ld_h_next = c_prev, ldc, h_next, ldhn
    a.step_c_next, a.step_tanh_c, a.ld_c_next = c_next, tanh_c, ldcn


# The steps of a loop by units run as one job (lstmc_parallel_steps): each task
# works on its own copy of the arguments, set for its step.

cdef void _forward_units_step(floating *kind, const _SequenceArgs *a, ptrdiff_t t,
                              ptrdiff_t task) noexcept nogil:
    cdef Py_ssize_t H = a.hidden_size, G4 = 4 * H, TH = a.steps * H
    cdef _SequenceArgs s = a[0]
    cdef floating *hs = <floating *> a.hs
    cdef floating *cells = <floating *> a.cells
    s.running = _running(a.lengths, a.batch, t)      # the batch is sorted longest first
    if s.running == 0:
        return
    _set_step(&s, <floating *> a.gates + t * G4, a.steps * G4,
              hs + (t - 1) * H if t > 0 else <const floating *> a.h0, TH if t > 0 else H,
              cells + (t - 1) * H if t > 0 else <const floating *> a.c0, TH if t > 0 else H,
              hs + t * H, TH, cells + t * H, <floating *> a.tanh_cells + t * H, TH)
    _step_units(kind, &s, task)


cdef void _forward_units_task(void *args, ptrdiff_t step, ptrdiff_t task) noexcept nogil:
    if (<_SequenceArgs *> args).double_precision:
        _forward_units_step(<double *> NULL, <_SequenceArgs *> args, step, task)
    else:
        _forward_units_step(<float *> NULL, <_SequenceArgs *> args, step, task)


cdef void _infer_units_step(floating *kind, const _SequenceArgs *a, ptrdiff_t step,
                            ptrdiff_t task) noexcept nogil:
    cdef Py_ssize_t N = a.batch, H = a.hidden_size, G4 = 4 * H, TH = a.steps * H
    cdef Py_ssize_t t = a.chunk_first + step
    cdef _SequenceArgs s = a[0]
    cdef floating *hs = <floating *> a.hs
    s.running = _running(a.lengths, N, t)
    if s.running == 0:
        return
    _set_step(&s, <floating *> a.chunk_gates + step * N * G4, G4,
              hs + (t - 1) * H if t > 0 else <const floating *> a.h0, TH if t > 0 else H,
              <const floating *> a.c_last, H, hs + t * H, TH,
              <floating *> a.c_last, <floating *> NULL, H)
    _step_units(kind, &s, task)


cdef void _infer_units_task(void *args, ptrdiff_t step, ptrdiff_t task) noexcept nogil:
    if (<_SequenceArgs *> args).double_precision:
        _infer_units_step(<double *> NULL, <_SequenceArgs *> args, step, task)
    else:
        _infer_units_step(<float *> NULL, <_SequenceArgs *> args, step, task)


cdef void _forward_by_units(floating *kind, _SequenceArgs *a) noexcept nogil:
    cdef Py_ssize_t N = a.batch, T = a.steps, D = a.input_size, H = a.hidden_size
    cdef Py_ssize_t G4 = 4 * H, TG = T * G4
    cdef Py_ssize_t n
    cdef const floating *xs = <const floating *> a.xs
    cdef const floating *h0 = <const floating *> a.h0
    cdef const floating *c0 = <const floating *> a.c0
    cdef floating *hs = <floating *> a.hs
    cdef floating *gates = <floating *> a.gates
    cdef floating *cells = <floating *> a.cells
    cdef floating *tanh_cells = <floating *> a.tanh_cells
    cdef floating *h_prevs = <floating *> a.h_prevs
    if _by_row(a.lengths, N, 0, T):         # each row's valid steps only
        _project_valid(a, 0, T, gates, TG, G4)
    elif _evenly_spaced(N, T, a.xs_seq_stride, a.xs_step_stride):
        _project(a, xs, _step_ld(N, T, D, a.xs_seq_stride, a.xs_step_stride), N * T, gates)
    else:
        for n in range(N):
            _project(a, xs + n * a.xs_seq_stride, a.xs_step_stride, T, gates + n * TG)
    lstmc_parallel_steps(a.plan.threads, T if a.lengths == NULL else a.lengths[0],
                         _ceil_div(H, a.unit_piece), _forward_units_task, a)
    _forward_tail(N, T, H, a.lengths, h0, c0, hs, cells, h_prevs,
                  <floating *> a.h_last, <floating *> a.c_last)


cdef void _infer_by_units(floating *kind, _SequenceArgs *a) noexcept nogil:
    cdef Py_ssize_t N = a.batch, T = a.steps, D = a.input_size, H = a.hidden_size
    cdef Py_ssize_t G4 = 4 * H, TH = T * H, S = a.chunk_steps
    cdef Py_ssize_t first, steps
    cdef Py_ssize_t last = T if a.lengths == NULL else a.lengths[0]   # the longest row
    cdef Py_ssize_t seq_stride = a.xs_seq_stride, step_stride = a.xs_step_stride
    cdef const floating *xs = <const floating *> a.xs
    cdef const floating *h0 = <const floating *> a.h0
    cdef floating *hs = <floating *> a.hs
    cdef floating *h_last = <floating *> a.h_last
    cdef floating *c_last = <floating *> a.c_last
    cdef floating *chunk_gates = <floating *> a.chunk_gates
    cdef floating *chunk_inputs = <floating *> a.chunk_inputs
    _initial_state(N, H, h0, <const floating *> a.c0, h_last, c_last)
    first = 0
    while first < last:
        steps = min(S, last - first)
        if _by_row(a.lengths, N, first, steps):   # each row's valid steps, step-major
            _project_valid(a, first, steps, chunk_gates, G4, N * G4)
        elif a.xs_rows == NULL and (N == 1 or T == 1 or (step_stride == N * seq_stride
                                                          and seq_stride >= D)):
            _project(a, xs + first * step_stride,
                     seq_stride if N > 1 else _step_ld(N, T, D, seq_stride, step_stride),
                     N * steps, chunk_gates)
        else:
            _gather_chunk(N, D, xs, seq_stride, step_stride, a.xs_rows, first, steps,
                          chunk_inputs)
            _project(a, chunk_inputs, D, N * steps, chunk_gates)
        a.chunk_first = first
        lstmc_parallel_steps(a.plan.threads, steps, _ceil_div(H, a.unit_piece),
                             _infer_units_task, a)
        first += steps
    if a.lengths != NULL:
        _last_valid(N, H, a.lengths, hs, TH, h0, h_last)
    else:
        _copy_rows(h_last, H, hs + (T - 1) * H, TH, N, H)


cdef int lstm_sequence_forward(
    Py_ssize_t N, Py_ssize_t T, Py_ssize_t D, Py_ssize_t H,
    const floating *xs, Py_ssize_t xs_seq_stride, Py_ssize_t xs_step_stride,
    const floating *Wx, const floating *Wh, const floating *b,
    const floating *h0, const floating *c0,
    floating *hs, floating *h_last, floating *c_last,
    floating *gates, floating *cells, floating *tanh_cells, floating *h_prevs,
    const Plan *plan, floating *recurrent, const Py_ssize_t *lengths=NULL,
) noexcept nogil:
    cdef _SequenceArgs a
    if N == 0:
        return 0
    if not lstm_sequence_fits(N, T, D, H, max(xs_seq_stride, xs_step_stride)):
        return -1
    _sequence_args(&a, N, T, D, H, plan, recurrent, recurrent != NULL, lengths)
    if lengths != NULL and not _lengths_fit(lengths, N, T, _task_rows(&a.plan, N)):
        return -1
    if T == 0:
        _initial_state(N, H, h0, c0, h_last, c_last)
        return 0
    a.xs, a.xs_seq_stride, a.xs_step_stride = xs, xs_seq_stride, xs_step_stride
    a.Wx, a.Wh, a.b, a.h0, a.c0 = Wx, Wh, b, h0, c0
    a.hs, a.h_last, a.c_last = hs, h_last, c_last
    a.gates, a.cells, a.tanh_cells, a.h_prevs = gates, cells, tanh_cells, h_prevs
    _transpose_weights(&a, recurrent, sizeof(floating))
    if a.plan.by_units:
        _forward_by_units(recurrent, &a)
    elif _plan_ahead(&a, T if lengths == NULL else lengths[0], xs, gates, _forward_task):
        lstmc_parallel(2, 2, _ahead_task, &a)
    else:
        lstmc_parallel(a.plan.threads, _blocks(&a.plan, N), _forward_task, &a)
    return 0


cdef void _infer_rows(floating *kind, const _SequenceArgs *a, ptrdiff_t task) noexcept nogil:
    cdef Py_ssize_t D = a.input_size, H = a.hidden_size, T = a.steps
    cdef Py_ssize_t G4 = 4 * H, TH = T * H, S = a.chunk_steps
    cdef Py_ssize_t t, first_row, first, steps
    cdef Py_ssize_t N = _block_rows(a, task, &first_row)
    cdef Py_ssize_t rows = N                # rows still running at step t
    cdef Py_ssize_t seq_stride = a.xs_seq_stride, step_stride = a.xs_step_stride
    cdef Py_ssize_t ldx = _step_ld(N, T, D, seq_stride, step_stride)
    cdef const Py_ssize_t *lengths = _at_lengths(a, first_row)
    cdef Py_ssize_t last = T if lengths == NULL else lengths[0]   # the block's longest row
    # This block's rows of xs: in place, or through the row map (one row: its own).
    cdef const Py_ssize_t *xs_rows = NULL if a.xs_rows == NULL else a.xs_rows + first_row
    cdef const floating *xs = <const floating *> a.xs
    if xs_rows == NULL:
        xs += first_row * seq_stride
    elif N == 1:
        xs += xs_rows[0] * seq_stride
        xs_rows = NULL
    cdef const floating *Wx = <const floating *> a.Wx
    cdef const floating *Wh = <const floating *> a.Wh
    cdef const floating *b = <const floating *> a.b
    cdef const floating *h0 = _at(a.h0, first_row * H, kind)
    cdef floating *hs = _at_out(a.hs, first_row * TH, kind)
    cdef floating *h_last = _at_out(a.h_last, first_row * H, kind)
    cdef floating *c_last = _at_out(a.c_last, first_row * H, kind)
    # This block's share of the scratch: its rows of every chunk step.
    cdef floating *chunk_gates = _at_out(a.chunk_gates, (first_row * S) * G4, kind)
    cdef floating *chunk_inputs = _at_out(a.chunk_inputs, (first_row * S) * D, kind)
    cdef floating *recurrent = _at_out(a.recurrent, first_row * G4, kind)
    cdef floating *h_t = _at_out(a.h_t, first_row * H, kind)
    cdef const floating *h_prev
    # c lives in c_last from the start: each step updates it in place (a
    # finished row's is not touched again).
    _initial_state(N, H, h0, _at(a.c0, first_row * H, kind), h_last, c_last)
    first = 0
    while first < last:
        steps = min(S, last - first)
        # The chunk's gates are step-major, (steps, N, 4H): each step's rows are
        # one contiguous block for its recurrent gemm and gate loop. One gemm
        # projects the whole chunk when its (t, n) rows are evenly spaced and at
        # least D apart (overlapping rows, such as sliding windows, are valid
        # input that BLAS cannot take as a leading dimension).
        if a.ahead_steps:                                       # piece by piece, in the loop
            pass
        elif _by_row(lengths, N, first, steps):                 # each row's valid steps
            _project_lengths(N, D, G4, xs, seq_stride, step_stride, Wx, lengths,
                             first, steps, chunk_gates, G4, N * G4, xs_rows)
        elif xs_rows == NULL and (N == 1 or T == 1 or (step_stride == N * seq_stride
                                                       and seq_stride >= D)):
            _affine(N * steps, D, G4, xs + first * step_stride,
                    seq_stride if N > 1 else ldx, Wx, 0, chunk_gates, G4)
        else:                                                   # gather them, step-major
            _gather_chunk(N, D, xs, seq_stride, step_stride, xs_rows, first, steps,
                          chunk_inputs)
            _affine(N * steps, D, G4, chunk_inputs, D, Wx, 0, chunk_gates, G4)
        for t in range(first, first + steps):
            rows = _running(lengths, rows, t)
            _ahead_ready(<_SequenceArgs *> a, t)
            h_prev = hs + (t - 1) * H if t > 0 else h0
            if h_prev != NULL:
                lstm_recurrent(rows, H, a.plan.recurrent_by_rows, h_prev, TH if t > 0 else H,
                               Wh, chunk_gates + (t - first) * N * G4, G4, recurrent,
                               <const floating *> a.weights_t, h_t, a.plan.recurrent_piece)
            gates_forward(rows, H, chunk_gates + (t - first) * N * G4, G4, b, c_last, H,
                          c_last, H, hs + t * H, TH, <floating *> NULL, 0)
        first += steps
    if lengths != NULL:
        _last_valid(N, H, lengths, hs, TH, h0, h_last)
    else:
        _copy_rows(h_last, H, hs + (T - 1) * H, TH, N, H)


cdef void _infer_task(void *args, ptrdiff_t task) noexcept nogil:
    if (<_SequenceArgs *> args).double_precision:
        _infer_rows(<double *> NULL, <_SequenceArgs *> args, task)
    else:
        _infer_rows(<float *> NULL, <_SequenceArgs *> args, task)


cdef int lstm_sequence_infer(
    Py_ssize_t N, Py_ssize_t T, Py_ssize_t D, Py_ssize_t H,
    const floating *xs, Py_ssize_t xs_seq_stride, Py_ssize_t xs_step_stride,
    const floating *Wx, const floating *Wh, const floating *b,
    const floating *h0, const floating *c0,
    floating *hs, floating *h_last, floating *c_last,
    floating *chunk_gates, floating *chunk_inputs, Py_ssize_t chunk_steps,
    const Plan *plan, floating *recurrent, const Py_ssize_t *lengths=NULL,
    const Py_ssize_t *xs_rows=NULL,
) noexcept nogil:
    cdef _SequenceArgs a
    cdef Py_ssize_t last
    if N == 0:
        return 0
    if (not lstm_sequence_fits(N, T, D, H, max(xs_seq_stride, xs_step_stride))
            or chunk_steps < 1 or not blas_fits(N * chunk_steps)):
        return -1
    _sequence_args(&a, N, T, D, H, plan, recurrent, recurrent != NULL, lengths)
    if lengths != NULL and not _lengths_fit(lengths, N, T, _task_rows(&a.plan, N)):
        return -1
    if T == 0:
        _initial_state(N, H, h0, c0, h_last, c_last)
        return 0
    if N == 1 and xs_rows != NULL:          # one row: its own, no map (and no gather)
        xs += xs_rows[0] * xs_seq_stride
        xs_rows = NULL
    a.xs, a.xs_seq_stride, a.xs_step_stride = xs, xs_seq_stride, xs_step_stride
    a.Wx, a.Wh, a.b, a.h0, a.c0 = Wx, Wh, b, h0, c0
    a.hs, a.h_last, a.c_last = hs, h_last, c_last
    a.chunk_gates, a.chunk_inputs, a.chunk_steps = chunk_gates, chunk_inputs, chunk_steps
    a.xs_rows = xs_rows
    _transpose_weights(&a, recurrent, sizeof(floating))
    last = T if lengths == NULL else lengths[0]     # the longest row
    if a.plan.by_units:
        _infer_by_units(recurrent, &a)
    elif last <= chunk_steps and _plan_ahead(&a, last, xs, chunk_gates, _infer_task):
        lstmc_parallel(2, 2, _ahead_task, &a)       # one chunk, its inputs ahead
    else:
        lstmc_parallel(a.plan.threads, _blocks(&a.plan, N), _infer_task, &a)
    return 0


cdef void lstm_recurrent_backward(Py_ssize_t N, Py_ssize_t H, Py_ssize_t units, bint by_rows,
                                  const floating *dA, Py_ssize_t ldda, const floating *Wh,
                                  floating *dh, Py_ssize_t lddh,
                                  floating *scratch, const floating *Wh_t=NULL,
                                  Py_ssize_t piece=0) noexcept nogil:
    cdef Py_ssize_t G4 = 4 * H, p = 0
    if N == 1:
        gemv_n(units, G4, 1, Wh, G4, dA, 0, dh)                          # dh = Wh @ dA
    elif by_rows and piece > 0:
        # BLAS's m a piece of the units, Wh's transpose read as it is: products
        # small enough for BLAS's small-matrix kernels (no packing), in place.
        while p < units:                         # dh[:, p:p+piece] = dA @ Wh_t[:, p:p+piece]
            gemm(c'n', c'n', N, min(piece, units - p), G4, 1, dA, ldda, Wh_t + p, H, 0,
                 dh + p, lddh)
            p += piece
    elif by_rows:
        # BLAS's m is the batch, dA read transposed, Wh as it is: the sum runs
        # along Wh's rows, as BLAS packs fastest. Gate-major, then put in place.
        gemm(c'n', c't', units, N, G4, 1, Wh, G4, dA, ldda, 0, scratch, N)   # scratch = Wh @ dA.T
        transpose(N, units, scratch, N, dh, lddh)                            # dh = scratch.T
    else:
        gemm(c'n', c't', N, units, G4, 1, dA, ldda, Wh, G4, 0, dh, lddh)    # dh = dA @ Wh.T


cdef void _zero_padding(Py_ssize_t N, Py_ssize_t T, Py_ssize_t H, const Py_ssize_t *lengths,
                        floating *dA, floating *dh0, floating *dc_carry) noexcept nogil:
    """Backward with lengths: dA zero past each row's length (the products run
    over every step), and no dh or dc carried into a row's last valid step (a
    row of length 0 keeps zero gradients of h0 and c0)."""
    cdef Py_ssize_t n, G4 = 4 * H, TG = T * G4
    memset(dh0, 0, N * H * sizeof(floating))
    memset(dc_carry, 0, N * H * sizeof(floating))
    for n in range(N):
        memset(dA + n * TG + lengths[n] * G4, 0, (T - lengths[n]) * G4 * sizeof(floating))


cdef void _backward_rows(floating *kind, const _SequenceArgs *a, ptrdiff_t task) noexcept nogil:
    """The time loop of one block: dA of every step, and dh0 / dc carried back."""
    cdef Py_ssize_t H = a.hidden_size, T = a.steps
    cdef Py_ssize_t G4 = 4 * H, TH = T * H, TG = T * G4
    cdef Py_ssize_t first, t
    cdef Py_ssize_t N = _block_rows(a, task, &first)
    cdef Py_ssize_t rows = N                # rows that run step t
    cdef const Py_ssize_t *lengths = _at_lengths(a, first)
    cdef const floating *dhs = <const floating *> a.dhs + first * a.dhs_seq_stride
    cdef const floating *Wh = <const floating *> a.Wh
    cdef const floating *c0 = _at(a.c0, first * H, kind)
    cdef const floating *gates = _at(a.gates, first * TG, kind)
    cdef const floating *cells = _at(a.cells, first * TH, kind)
    cdef const floating *tanh_cells = _at(a.tanh_cells, first * TH, kind)
    cdef floating *dA = _at_out(a.dA, first * TG, kind)
    cdef floating *dc_carry = _at_out(a.dc_carry, first * H, kind)
    cdef floating *dh0 = _at_out(a.dh0, first * H, kind)
    cdef floating *scratch = _at_out(a.dh_scratch, first * H, kind)
    cdef bint carried
    if lengths != NULL:
        # A row joins the loop at its last valid step with nothing carried in;
        # its dA past that step is zero, for the products over all steps.
        _zero_padding(N, T, H, lengths, dA, dh0, dc_carry)
    # dh0 carries dh from step t to step t - 1 (it ends as the gradient of h0),
    # dc_carry likewise for dc.
    for t in range(T - 1, -1, -1):
        if lengths != NULL:
            rows = _running(lengths, N, t)
            if rows == 0:
                continue
        carried = t < T - 1 or lengths != NULL
        gates_backward(rows, H, dhs + t * a.dhs_step_stride, a.dhs_seq_stride,
                       dh0 if carried else NULL, H,
                       dc_carry if carried else NULL, H,
                       gates + t * G4, TG,
                       cells + (t - 1) * H if t > 0 else c0, TH if t > 0 else H,
                       tanh_cells + t * H, TH, dA + t * G4, TG, dc_carry, H)
        lstm_recurrent_backward(rows, H, H, a.plan.backward_by_rows, dA + t * G4, TG,  # dh =
                                Wh, dh0, H, scratch,                         # dA_t @ Wh.T
                                <const floating *> a.weights_t, a.plan.backward_piece)


cdef void _backward_rows_task(void *args, ptrdiff_t task) noexcept nogil:
    if (<_SequenceArgs *> args).double_precision:
        _backward_rows(<double *> NULL, <_SequenceArgs *> args, task)
    else:
        _backward_rows(<float *> NULL, <_SequenceArgs *> args, task)


cdef void _backward_units(floating *kind, const _SequenceArgs *a,
                          ptrdiff_t task) noexcept nogil:
    """Step a.step of the backward's time loop, units j0 .. j0 + width: their dh
    (from step + 1's dA, or at step -1 the gradient of h0), then their gates'
    dA and dc."""
    cdef Py_ssize_t N = a.running, T = a.steps, H = a.hidden_size
    cdef Py_ssize_t G4 = 4 * H, TH = T * H, TG = T * G4, t = a.step
    cdef Py_ssize_t j0 = task * a.unit_piece
    cdef Py_ssize_t width = min(a.unit_piece, H - j0)
    cdef const floating *Wh = <const floating *> a.Wh
    cdef floating *dA = <floating *> a.dA
    cdef floating *dh0 = <floating *> a.dh0 + j0
    cdef floating *dc_carry = <floating *> a.dc_carry + j0
    if t < T - 1:                       # dh = dA_{t+1} @ Wh.T, columns j0 .. of it
        lstm_recurrent_backward(N, H, width, a.plan.backward_by_rows, dA + (t + 1) * G4, TG,
                                Wh + j0 * G4, dh0, H, _at_out(a.dh_scratch, j0 * N, kind),
                                _at(a.weights_t, j0, kind), a.plan.backward_piece)
    if t < 0:
        return
    gates_backward_units(N, width, H,
                         <const floating *> a.dhs + t * a.dhs_step_stride + j0,
                         a.dhs_seq_stride,
                         dh0 if t < T - 1 else NULL, H,
                         dc_carry if t < T - 1 else NULL, H,
                         <const floating *> a.gates + t * G4 + j0, TG,
                         (<const floating *> a.cells + (t - 1) * H + j0 if t > 0
                          else _at(a.c0, j0, kind)), TH if t > 0 else H,
                         <const floating *> a.tanh_cells + t * H + j0, TH,
                         dA + t * G4 + j0, TG, dc_carry, H)


cdef void _backward_units_step(floating *kind, const _SequenceArgs *a, ptrdiff_t step,
                               ptrdiff_t task) noexcept nogil:
    """Step `step` of the backward's loop by units: t = T - 1 - step, down to -1
    (the gradient of h0), on the rows that run t (sorted longest first)."""
    cdef _SequenceArgs s = a[0]
    s.step = a.steps - 1 - step
    s.running = _running(a.lengths, a.batch, max(s.step, 0))
    if s.running == 0:
        return
    _backward_units(kind, &s, task)


cdef void _backward_units_task(void *args, ptrdiff_t step, ptrdiff_t task) noexcept nogil:
    if (<_SequenceArgs *> args).double_precision:
        _backward_units_step(<double *> NULL, <_SequenceArgs *> args, step, task)
    else:
        _backward_units_step(<float *> NULL, <_SequenceArgs *> args, step, task)


cdef void _backward_products(floating *kind, const _SequenceArgs *a,
                             ptrdiff_t task) noexcept nogil:
    """Over all N*T stacked rows: a column block of dWx, dWh and db, or a row
    block of dxs."""
    cdef Py_ssize_t N = a.batch, T = a.steps, D = a.input_size, H = a.hidden_size
    cdef Py_ssize_t G4 = 4 * H, TG = T * G4, M = N * T
    cdef Py_ssize_t n, first, width
    cdef Py_ssize_t seq_stride = a.xs_seq_stride, step_stride = a.xs_step_stride
    cdef Py_ssize_t ldx = _step_ld(N, T, D, seq_stride, step_stride)
    cdef const floating *xs = <const floating *> a.xs
    cdef const floating *dA = <const floating *> a.dA
    if task < a.column_tasks:
        first = task * a.column_piece
        width = min(a.column_piece, G4 - first)
        if _evenly_spaced(N, T, seq_stride, step_stride):             # dWx = xs.T @ dA
            gemm(c't', c'n', D, width, M, 1, xs, ldx, dA + first, G4, 0,
                 <floating *> a.dWx + first, G4)
        else:                                                         # dWx += xs[n].T @ dA[n]
            for n in range(N):
                gemm(c't', c'n', D, width, T, 1, xs + n * seq_stride, step_stride,
                     dA + n * TG + first, G4, 0 if n == 0 else 1,
                     <floating *> a.dWx + first, G4)
        gemm(c't', c'n', H, width, M, 1, <const floating *> a.h_prevs, H,   # dWh = h_prevs.T @ dA
             dA + first, G4, 0, <floating *> a.dWh + first, G4)
        column_sums(M, width, dA + first, G4, <floating *> a.db + first)    # db = dA.sum(0)
    else:
        first = (task - a.column_tasks) * a.row_piece
        width = min(a.row_piece, M - first)
        gemm(c'n', c't', width, D, G4, 1, dA + first * G4, G4,            # dxs = dA @ Wx.T
             <const floating *> a.Wx, G4, 0, <floating *> a.dxs + first * D, D)


cdef void _backward_products_task(void *args, ptrdiff_t task) noexcept nogil:
    if (<_SequenceArgs *> args).double_precision:
        _backward_products(<double *> NULL, <_SequenceArgs *> args, task)
    else:
        _backward_products(<float *> NULL, <_SequenceArgs *> args, task)


cdef int lstm_sequence_backward(
    Py_ssize_t N, Py_ssize_t T, Py_ssize_t D, Py_ssize_t H,
    const floating *dhs, Py_ssize_t dhs_seq_stride, Py_ssize_t dhs_step_stride,
    const floating *xs, Py_ssize_t xs_seq_stride, Py_ssize_t xs_step_stride,
    const floating *Wx, const floating *Wh, const floating *c0,
    const floating *gates, const floating *cells, const floating *tanh_cells,
    const floating *h_prevs,
    floating *dA, floating *dc_carry,
    floating *dxs, floating *dh0,
    floating *dWx, floating *dWh, floating *db,
    const Plan *plan, const Py_ssize_t *lengths=NULL, floating *dh_scratch=NULL,
) noexcept nogil:
    cdef Py_ssize_t G4 = 4 * H, M = N * T
    cdef Py_ssize_t parts, t
    cdef _SequenceArgs a
    if not lstm_sequence_fits(N, T, D, H, max(max(xs_seq_stride, xs_step_stride),
                                              max(dhs_seq_stride, dhs_step_stride))):
        return -1
    _sequence_args(&a, N, T, D, H, plan, dA, False, lengths)
    if lengths != NULL and not _lengths_fit(lengths, N, T, _task_rows(&a.plan, N)):
        return -1
    if M == 0:
        memset(dWx, 0, D * G4 * sizeof(floating))
        memset(dWh, 0, H * G4 * sizeof(floating))
        memset(db, 0, G4 * sizeof(floating))
        memset(dh0, 0, N * H * sizeof(floating))
        memset(dc_carry, 0, N * H * sizeof(floating))
        return 0
    a.dhs, a.dhs_seq_stride, a.dhs_step_stride = dhs, dhs_seq_stride, dhs_step_stride
    a.xs, a.xs_seq_stride, a.xs_step_stride = xs, xs_seq_stride, xs_step_stride
    a.Wx, a.Wh, a.c0 = Wx, Wh, c0
    a.gates, a.cells, a.tanh_cells, a.h_prevs = gates, cells, tanh_cells, h_prevs
    a.dA, a.dc_carry, a.dxs, a.dh0 = dA, dc_carry, dxs, dh0
    a.dh_scratch = dh_scratch
    a.plan.backward_by_rows = a.plan.backward_by_rows and dh_scratch != NULL
    if a.plan.backward_by_rows and a.plan.backward_piece > 0 and N > 1:
        # Wh's transpose (4H, H) in the scratch, from its first 64-byte boundary.
        a.weights_t = _aligned(dh_scratch)
        transpose(G4, H, Wh, G4, <floating *> a.weights_t, H)      # weights_t = Wh.T
    else:
        a.plan.backward_piece = 0
    a.dWx, a.dWh, a.db = dWx, dWh, db
    if a.plan.by_units:
        if lengths != NULL:
            # A row joins at its last valid step with nothing carried in (the
            # step after it, past its length, has zero dA: its dh is zero).
            _zero_padding(N, T, H, lengths, dA, dh0, dc_carry)
        # A step at a time, the last (step -1) for the gradient of h0; each on
        # the rows that run that step (the batch is sorted longest first).
        lstmc_parallel_steps(a.plan.threads, T + 1, _ceil_div(H, a.unit_piece),
                             _backward_units_task, &a)
    else:
        lstmc_parallel(a.plan.threads, _blocks(&a.plan, N), _backward_rows_task, &a)
    # Then the products over all steps: one column block of the weight
    # gradients and one row block of dxs per thread.
    parts = a.plan.threads
    a.column_piece = _ceil_div(_ceil_div(G4, parts), 16) * 16
    a.column_tasks = _ceil_div(G4, a.column_piece)
    a.row_piece = _ceil_div(M, parts)
    lstmc_parallel(a.plan.threads, a.column_tasks + _ceil_div(M, a.row_piece),
                   _backward_products_task, &a)
    return 0
