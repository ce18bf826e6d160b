# lstmc._cell, one step: included by _cell.pyx (one module, one C-level API).
# The single-thread step, and its split over lstmc's threads.
from cython cimport floating


# ------------------------------------------------------------- one step

cdef int _step_forward_rows(
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
    if x != NULL:
        _affine(N, D, G4, x, ldx, Wx, 0, gates, ldg)          # gates = x @ Wx
    if h_prev != NULL:
        _affine(N, H, G4, h_prev, ldhp, Wh, 1, gates, ldg)    # gates += h_prev @ Wh
    gates_forward(N, H, gates, ldg, b, c_prev, ldcp, c_next, ldcn,
                  h_next, ldhn, tanh_c, ldtc)
    return 0


cdef Py_ssize_t _COLUMNS_FROM_H = 256     # a cell's forward splits columns from this H

# A step on several threads: the forward splits the batch into row blocks (one
# row, or H from _COLUMNS_FROM_H: the 4H columns of its products into blocks,
# so that each thread reads only its slice of the weights, the gate loop after);
# the backward runs its gate loop by row blocks, then the weight gradients by
# column blocks and dx, dh_prev by blocks of Wx's and Wh's rows (one row: the
# weight gradients by those blocks too).

cdef struct _StepArgs:
    bint double_precision, by_columns
    Py_ssize_t batch, input_size, hidden_size, block, piece, pieces
    const void *x
    Py_ssize_t ldx
    const void *h_prev
    Py_ssize_t ldhp
    const void *c_prev
    Py_ssize_t ldcp
    const void *Wx
    const void *Wh
    const void *b
    void *gates
    Py_ssize_t ldg
    void *h_next
    Py_ssize_t ldhn
    void *c_next
    Py_ssize_t ldcn
    void *tanh_c
    Py_ssize_t ldtc
    const void *dh_next
    Py_ssize_t lddh
    const void *dc_next
    Py_ssize_t lddc
    void *dA
    Py_ssize_t ldda
    void *dx
    Py_ssize_t lddx
    void *dh_prev
    Py_ssize_t lddhp
    void *dc_prev
    Py_ssize_t lddcp
    void *dWx
    void *dWh
    void *db


cdef void _step_forward_part(floating *kind, const _StepArgs *a, ptrdiff_t task) noexcept nogil:
    cdef Py_ssize_t D = a.input_size, H = a.hidden_size, G4 = 4 * H
    cdef Py_ssize_t first, width
    if a.by_columns:                 # columns first .. first + width of both products
        first = task * a.piece
        width = min(a.piece, G4 - first)
        _affine(a.batch, D, width, <const floating *> a.x, a.ldx,
                <const floating *> a.Wx + first, 0, <floating *> a.gates + first, a.ldg, G4)
        if a.h_prev != NULL:
            _affine(a.batch, H, width, <const floating *> a.h_prev, a.ldhp,
                    <const floating *> a.Wh + first, 1, <floating *> a.gates + first, a.ldg,
                    G4)
        return
    first = task * a.block
    width = min(a.block, a.batch - first)
    _step_forward_rows(width, D, H, _at(a.x, first * a.ldx, kind), a.ldx,
                       _at(a.h_prev, first * a.ldhp, kind), a.ldhp,
                       _at(a.c_prev, first * a.ldcp, kind), a.ldcp,
                       <const floating *> a.Wx, <const floating *> a.Wh,
                       <const floating *> a.b,
                       _at_out(a.gates, first * a.ldg, kind), a.ldg,
                       _at_out(a.h_next, first * a.ldhn, kind), a.ldhn,
                       _at_out(a.c_next, first * a.ldcn, kind), a.ldcn,
                       _at_out(a.tanh_c, first * a.ldtc, kind), a.ldtc)


cdef void _step_forward_task(void *args, ptrdiff_t task) noexcept nogil:
    if (<_StepArgs *> args).double_precision:
        _step_forward_part(<double *> NULL, <_StepArgs *> args, task)
    else:
        _step_forward_part(<float *> NULL, <_StepArgs *> args, task)


cdef void _step_args(_StepArgs *a, Py_ssize_t N, Py_ssize_t D, Py_ssize_t H, int threads,
                     floating *kind) noexcept nogil:
    cdef Py_ssize_t blocks = min(N, <Py_ssize_t> threads)
    memset(a, 0, sizeof(_StepArgs))
    a.double_precision = floating is double
    a.batch, a.input_size, a.hidden_size = N, D, H
    a.block = _ceil_div(N, blocks)
    a.piece = _ceil_div(_ceil_div(4 * H, threads), 16) * 16
    a.pieces = _ceil_div(4 * H, a.piece)


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
    int threads=1,
) noexcept nogil:
    cdef _StepArgs a
    if N <= 0:
        return 0
    if not lstm_step_fits(N, D, H, max(ldx, ldhp, ldg)):
        return -1
    if threads <= 1 or x == NULL:
        return _step_forward_rows(N, D, H, x, ldx, h_prev, ldhp, c_prev, ldcp, Wx, Wh, b,
                                  gates, ldg, h_next, ldhn, c_next, ldcn, tanh_c, ldtc)
    _step_args(&a, N, D, H, threads, gates)
    a.x, a.ldx, a.h_prev, a.ldhp, a.c_prev, a.ldcp = x, ldx, h_prev, ldhp, c_prev, ldcp
    a.Wx, a.Wh, a.b = Wx, Wh, b
    a.gates, a.ldg, a.h_next, a.ldhn = gates, ldg, h_next, ldhn
    a.c_next, a.ldcn, a.tanh_c, a.ldtc = c_next, ldcn, tanh_c, ldtc
    # One row, or weights too large for every thread to read them all: the
    # products by columns (each thread reads its slice of Wx and Wh), then the
    # gate loop. Else rows, the gate loop in each task.
    a.by_columns = N == 1 or H >= _COLUMNS_FROM_H
    lstmc_parallel(threads, a.pieces if a.by_columns else _ceil_div(N, a.block),
                   _step_forward_task, &a)
    if a.by_columns:
        gates_forward(N, H, gates, ldg, b, c_prev, ldcp, c_next, ldcn,
                      h_next, ldhn, tanh_c, ldtc)
    return 0


cdef void _step_backward_rows(floating *kind, const _StepArgs *a,
                              ptrdiff_t task) noexcept nogil:
    """Rows first .. first + width: dA, dc_prev."""
    cdef Py_ssize_t H = a.hidden_size
    cdef Py_ssize_t first = task * a.block
    cdef Py_ssize_t width = min(a.block, a.batch - first)
    gates_backward(width, H, <const floating *> a.dh_next + first * a.lddh, a.lddh,
                   <floating *> NULL, 0, _at(a.dc_next, first * a.lddc, kind), a.lddc,
                   <const floating *> a.gates + first * a.ldg, a.ldg,
                   _at(a.c_prev, first * a.ldcp, kind), a.ldcp,
                   <const floating *> a.tanh_c + first * a.ldtc, a.ldtc,
                   <floating *> a.dA + first * a.ldda, a.ldda,
                   <floating *> a.dc_prev + first * a.lddcp, a.lddcp)


cdef void _step_backward_rows_task(void *args, ptrdiff_t task) noexcept nogil:
    if (<_StepArgs *> args).double_precision:
        _step_backward_rows(<double *> NULL, <_StepArgs *> args, task)
    else:
        _step_backward_rows(<float *> NULL, <_StepArgs *> args, task)


cdef inline Py_ssize_t _weight_rows(const _StepArgs *a, ptrdiff_t k,
                                    Py_ssize_t *first) noexcept nogil:
    """Block k of Wx's rows (k < pieces), else block k - pieces of Wh's: its first
    row (out) and its width (<= 0: an empty block)."""
    cdef Py_ssize_t rows = a.input_size if k < a.pieces else a.hidden_size
    cdef Py_ssize_t size = _ceil_div(rows, a.pieces)
    first[0] = (k % a.pieces) * size
    return min(size, rows - first[0])


cdef void _step_backward_weights(floating *kind, const _StepArgs *a,
                                 ptrdiff_t task) noexcept nogil:
    cdef Py_ssize_t N = a.batch, D = a.input_size, H = a.hidden_size, G4 = 4 * H
    cdef Py_ssize_t first, width, part
    cdef const floating *dA = <const floating *> a.dA
    if N == 1:
        # Task p < pieces: rows of Wx (dWx and dx); else rows of Wh (dWh, dh_prev).
        width = _weight_rows(a, task, &first)
        if width <= 0:
            return
        if task < a.pieces:
            outer(width, G4, <const floating *> a.x + first, dA,
                  <floating *> a.dWx + first * G4)                       # dWx = outer(x, dA)
            gemv_n(width, G4, 1, <const floating *> a.Wx + first * G4, G4, dA, 0,
                   <floating *> a.dx + first)                            # dx = dA @ Wx.T
        else:
            if a.h_prev != NULL:
                outer(width, G4, <const floating *> a.h_prev + first, dA,
                      <floating *> a.dWh + first * G4)                   # dWh = outer(h_prev, dA)
            else:
                memset(<floating *> a.dWh + first * G4, 0, width * G4 * sizeof(floating))
            gemv_n(width, G4, 1, <const floating *> a.Wh + first * G4, G4, dA, 0,
                   <floating *> a.dh_prev + first)                       # dh_prev = dA @ Wh.T
        return
    if task >= a.pieces:
        # Columns of dx (task < 2 pieces) or of dh_prev: a block of Wx's or Wh's
        # rows, which only this task reads.
        width = _weight_rows(a, task - a.pieces, &first)
        if width <= 0:
            return
        if task < 2 * a.pieces:                                          # dx = dA @ Wx.T
            gemm(c'n', c't', N, width, G4, 1, dA, a.ldda, <const floating *> a.Wx + first * G4,
                 G4, 0, <floating *> a.dx + first, a.lddx)
        else:                                                            # dh_prev = dA @ Wh.T
            gemm(c'n', c't', N, width, G4, 1, dA, a.ldda, <const floating *> a.Wh + first * G4,
                 G4, 0, <floating *> a.dh_prev + first, a.lddhp)
        return
    first = task * a.piece
    width = min(a.piece, G4 - first)
    gemm(c't', c'n', D, width, N, 1, <const floating *> a.x, a.ldx, dA + first, a.ldda, 0,
         <floating *> a.dWx + first, G4)                                 # dWx = x.T @ dA
    if a.h_prev != NULL:                                                 # dWh = h_prev.T @ dA
        gemm(c't', c'n', H, width, N, 1, <const floating *> a.h_prev, a.ldhp, dA + first,
             a.ldda, 0, <floating *> a.dWh + first, G4)
    else:
        for part in range(H):
            memset(<floating *> a.dWh + part * G4 + first, 0, width * sizeof(floating))
    column_sums(N, width, dA + first, a.ldda, <floating *> a.db + first)  # db = dA.sum(0)


cdef void _step_backward_weights_task(void *args, ptrdiff_t task) noexcept nogil:
    if (<_StepArgs *> args).double_precision:
        _step_backward_weights(<double *> NULL, <_StepArgs *> args, task)
    else:
        _step_backward_weights(<float *> NULL, <_StepArgs *> args, task)


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
    int threads=1,
) noexcept nogil:
    cdef Py_ssize_t G4 = 4 * H
    cdef _StepArgs a
    if not lstm_step_fits(N, D, H, max(ldx, ldhp, ldda, lddx, lddhp)):
        return -1
    if N <= 0:
        memset(dWx, 0, D * G4 * sizeof(floating))
        memset(dWh, 0, H * G4 * sizeof(floating))
        memset(db, 0, G4 * sizeof(floating))
        return 0
    _step_args(&a, N, D, H, max(threads, 1), dA)
    if threads <= 1:
        a.pieces = 1
    a.x, a.ldx, a.h_prev, a.ldhp, a.c_prev, a.ldcp = x, ldx, h_prev, ldhp, c_prev, ldcp
    a.Wx, a.Wh, a.gates, a.ldg, a.tanh_c, a.ldtc = Wx, Wh, gates, ldg, tanh_c, ldtc
    a.dh_next, a.lddh, a.dc_next, a.lddc = dh_next, lddh, dc_next, lddc
    a.dA, a.ldda, a.dx, a.lddx = dA, ldda, dx, lddx
    a.dh_prev, a.lddhp, a.dc_prev, a.lddcp = dh_prev, lddhp, dc_prev, lddcp
    a.dWx, a.dWh, a.db = dWx, dWh, db
    if N == 1:
        # One row: the weight gradients are outer products (a write-only loop,
        # cheaper than zeroing and BLAS ger, which reads them back), the rest gemv.
        gates_backward(N, H, dh_next, lddh, <floating *> NULL, 0, dc_next, lddc,
                       gates, ldg, c_prev, ldcp, tanh_c, ldtc, dA, ldda, dc_prev, lddcp)
        memcpy(db, dA, G4 * sizeof(floating))                 # db = dA[0]
        lstmc_parallel(threads, 2 * a.pieces, _step_backward_weights_task, &a)
        return 0
    if threads <= 1:
        a.piece, a.pieces = G4, 1
    # The gate loop by rows; then blocks of columns of the weight gradients, of
    # dx and of dh_prev (each thread reads a slice of the weights, not all of
    # them: measured here at (64, 512, 512), 2 threads, the backward took
    # 1.63-1.81 ms against 2.08-2.16 with dx and dh_prev by rows).
    lstmc_parallel(threads, _ceil_div(N, a.block), _step_backward_rows_task, &a)
    lstmc_parallel(threads, 3 * a.pieces, _step_backward_weights_task, &a)
    return 0
