"""lstmc._cell: the LSTM kernels, lstmc's C-level API (declared in _cell.pxd).

What lives here, and why:
  - The step kernels (`lstm_step_forward`, `lstm_step_backward`) and their
    element-wise halves (`lstm_gates_forward`, `lstm_gates_backward`): one step
    of the math, on raw pointers with leading dimensions, so that a step can
    read and write slices of larger arrays (a time step of a sequence) in place.
  - The sequence kernels (`lstm_sequence_forward`, `lstm_sequence_infer`,
    `lstm_sequence_backward`): the whole time loop in C, built on the step
    kernels so the math is written once. The forward projects the inputs of
    all steps with one gemm (a gemm repacks its weights on every call, so one
    large call beats T small ones), then runs the recurrent gemm and the gate
    loop per step; the backward collects dA for every step and finishes with
    one gemm each for dWx, dWh and dxs.
Every kernel is `noexcept nogil`, generic over float and double (a fused type),
allocates nothing, keeps nothing, and returns 0, or -1 when a size does not fit
BLAS's integer type (nothing is written then). The rule for that is
`lstm_step_fits` / `lstm_sequence_fits`, which callers may also use to refuse
an argument before allocating anything. Per-layer buffers, locks and argument
checks live in lstmc._work; matrix products go through _blas.pxd (SciPy's
BLAS); the element-wise loops are C in _gates.h, built for the widest SIMD the
running CPU has.
"""
from cython cimport floating
from libc.string cimport memcpy, memset

from _blas cimport blas_fits, gemm, gemv_t, gemv_n
from _gates cimport gates_forward, gates_backward, column_sums, outer

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
                         floating beta, floating *C, Py_ssize_t ldc) noexcept nogil:
    """C := x @ W + beta * C, x (N, K), W (K, G4) contiguous. One row goes to gemv:
    some OpenBLAS kernels run a one-row gemm far slower than the same gemv."""
    if N == 1:
        gemv_t(K, G4, 1, W, G4, x, beta, C)
    else:
        gemm(c'n', c'n', N, G4, K, 1, x, ldx, W, G4, beta, C, ldc)


cdef inline void _copy_rows(floating *dst, Py_ssize_t ld_dst, const floating *src,
                            Py_ssize_t ld_src, Py_ssize_t rows,
                            Py_ssize_t cols) noexcept nogil:
    cdef Py_ssize_t r
    for r in range(rows):
        memcpy(dst + r * ld_dst, src + r * ld_src, cols * sizeof(floating))


# ------------------------------------------------------------- one step

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
    if not lstm_step_fits(N, D, H, max(ldx, ldhp, ldg)):
        return -1
    if x != NULL:
        _affine(N, D, G4, x, ldx, Wx, 0, gates, ldg)          # gates = x @ Wx
    if h_prev != NULL:
        _affine(N, H, G4, h_prev, ldhp, Wh, 1, gates, ldg)    # gates += h_prev @ Wh
    gates_forward(N, H, gates, ldg, b, c_prev, ldcp, c_next, ldcn,
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
    if not lstm_step_fits(N, D, H, max(ldx, ldhp, ldda, lddx, lddhp)):
        return -1
    if N <= 0:
        memset(dWx, 0, D * G4 * sizeof(floating))
        memset(dWh, 0, H * G4 * sizeof(floating))
        memset(db, 0, G4 * sizeof(floating))
        return 0
    gates_backward(N, H, dh_next, lddh, <floating *> NULL, 0, dc_next, lddc,
                   gates, ldg, c_prev, ldcp, tanh_c, ldtc, dA, ldda, dc_prev, lddcp)
    if N == 1:
        # One row: the weight gradients are outer products (a write-only loop,
        # cheaper than zeroing and BLAS ger, which reads them back), the rest gemv.
        outer(D, G4, x, dA, dWx)                             # dWx = outer(x, dA)
        if h_prev != NULL:
            outer(H, G4, h_prev, dA, dWh)                    # dWh = outer(h_prev, dA)
        else:
            memset(dWh, 0, H * G4 * sizeof(floating))
        memcpy(db, dA, G4 * sizeof(floating))                 # db = dA[0]
        gemv_n(D, G4, 1, Wx, G4, dA, 0, dx)                   # dx = dA @ Wx.T
        gemv_n(H, G4, 1, Wh, G4, dA, 0, dh_prev)              # dh_prev = dA @ Wh.T
        return 0
    gemm(c't', c'n', D, G4, N, 1, x, ldx, dA, ldda, 0, dWx, G4)            # dWx = x.T @ dA
    if h_prev != NULL:
        gemm(c't', c'n', H, G4, N, 1, h_prev, ldhp, dA, ldda, 0, dWh, G4)  # dWh = h_prev.T @ dA
    else:
        memset(dWh, 0, H * G4 * sizeof(floating))
    column_sums(N, G4, dA, ldda, db)                                      # db = dA.sum(0)
    gemm(c'n', c't', N, D, G4, 1, dA, ldda, Wx, G4, 0, dx, lddx)           # dx = dA @ Wx.T
    gemm(c'n', c't', N, H, G4, 1, dA, ldda, Wh, G4, 0, dh_prev, lddhp)     # dh_prev = dA @ Wh.T
    return 0


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


cdef int lstm_sequence_forward(
    Py_ssize_t N, Py_ssize_t T, Py_ssize_t D, Py_ssize_t H,
    const floating *xs, Py_ssize_t xs_seq_stride, Py_ssize_t xs_step_stride,
    const floating *Wx, const floating *Wh, const floating *b,
    const floating *h0, const floating *c0,
    floating *hs, floating *h_last, floating *c_last,
    floating *gates, floating *cells, floating *tanh_cells, floating *h_prevs,
) noexcept nogil:
    cdef Py_ssize_t G4 = 4 * H, TH = T * H, TG = T * G4
    cdef Py_ssize_t t, n
    cdef Py_ssize_t ldx = _step_ld(N, T, D, xs_seq_stride, xs_step_stride)
    if N == 0:
        return 0
    if not lstm_sequence_fits(N, T, D, H, max(xs_seq_stride, xs_step_stride)):
        return -1
    if T == 0:
        _initial_state(N, H, h0, c0, h_last, c_last)
        return 0
    if _evenly_spaced(N, T, xs_seq_stride, xs_step_stride):
        _affine(N * T, D, G4, xs, ldx, Wx, 0, gates, G4)      # gates = xs @ Wx, all steps
    else:                                                     # rows in place, a gemm per sequence
        for n in range(N):
            _affine(T, D, G4, xs + n * xs_seq_stride, xs_step_stride, Wx, 0,
                    gates + n * TG, G4)
    # Step t reads h and c of step t - 1 in place, as (N, H) slices with ld T*H.
    lstm_step_forward(N, D, H, <floating *> NULL, 0, h0, H, c0, H, Wx, Wh, b,
                      gates, TG, hs, TH, cells, TH, tanh_cells, TH)
    for t in range(1, T):
        lstm_step_forward(N, D, H, <floating *> NULL, 0, hs + (t - 1) * H, TH,
                          cells + (t - 1) * H, TH, Wx, Wh, b, gates + t * G4, TG,
                          hs + t * H, TH, cells + t * H, TH, tanh_cells + t * H, TH)
    # Backward's dWh needs every step's h_prev as one (N*T, H) matrix.
    for n in range(N):
        if h0 != NULL:
            memcpy(h_prevs + n * TH, h0 + n * H, H * sizeof(floating))
        else:
            memset(h_prevs + n * TH, 0, H * sizeof(floating))
        memcpy(h_prevs + n * TH + H, hs + n * TH, (T - 1) * H * sizeof(floating))
    _copy_rows(h_last, H, hs + (T - 1) * H, TH, N, H)
    _copy_rows(c_last, H, cells + (T - 1) * H, TH, N, H)
    return 0


cdef int lstm_sequence_infer(
    Py_ssize_t N, Py_ssize_t T, Py_ssize_t D, Py_ssize_t H,
    const floating *xs, Py_ssize_t xs_seq_stride, Py_ssize_t xs_step_stride,
    const floating *Wx, const floating *Wh, const floating *b,
    const floating *h0, const floating *c0,
    floating *hs, floating *h_last, floating *c_last,
    floating *chunk_gates, floating *chunk_inputs, Py_ssize_t chunk_steps,
) noexcept nogil:
    cdef Py_ssize_t G4 = 4 * H, TH = T * H
    cdef Py_ssize_t t, first, steps
    cdef Py_ssize_t ldx = _step_ld(N, T, D, xs_seq_stride, xs_step_stride)
    cdef const floating *h_prev
    if N == 0:
        return 0
    if (not lstm_sequence_fits(N, T, D, H, max(xs_seq_stride, xs_step_stride))
            or chunk_steps < 1 or not blas_fits(N * chunk_steps)):
        return -1
    # c lives in c_last from the start: each step updates it in place.
    _initial_state(N, H, h0, c0, h_last, c_last)
    if T == 0:
        return 0
    first = 0
    while first < T:
        steps = min(chunk_steps, T - first)
        # The chunk's gates are step-major, (steps, N, 4H): each step's rows are
        # one contiguous block for its recurrent gemm and gate loop. One gemm
        # projects the whole chunk when its (t, n) rows are evenly spaced and at
        # least D apart (overlapping rows, such as sliding windows, are valid
        # input that BLAS cannot take as a leading dimension).
        if N == 1 or T == 1 or (xs_step_stride == N * xs_seq_stride and xs_seq_stride >= D):
            _affine(N * steps, D, G4, xs + first * xs_step_stride,
                    xs_seq_stride if N > 1 else ldx, Wx, 0, chunk_gates, G4)
        else:                                                   # gather them, step-major
            for t in range(steps):
                _copy_rows(chunk_inputs + t * N * D, D, xs + (first + t) * xs_step_stride,
                           xs_seq_stride, N, D)
            _affine(N * steps, D, G4, chunk_inputs, D, Wx, 0, chunk_gates, G4)
        for t in range(first, first + steps):
            h_prev = hs + (t - 1) * H if t > 0 else h0
            lstm_step_forward(N, D, H, <floating *> NULL, 0, h_prev, TH if t > 0 else H,
                              c_last, H, Wx, Wh, b, chunk_gates + (t - first) * N * G4, G4,
                              hs + t * H, TH, c_last, H, <floating *> NULL, 0)
        first += steps
    _copy_rows(h_last, H, hs + (T - 1) * H, TH, N, H)
    return 0


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
) noexcept nogil:
    cdef Py_ssize_t G4 = 4 * H, TH = T * H, TG = T * G4, M = N * T
    cdef Py_ssize_t t, n
    cdef Py_ssize_t ldx = _step_ld(N, T, D, xs_seq_stride, xs_step_stride)
    if not lstm_sequence_fits(N, T, D, H, max(max(xs_seq_stride, xs_step_stride),
                                              max(dhs_seq_stride, dhs_step_stride))):
        return -1
    if M == 0:
        memset(dWx, 0, D * G4 * sizeof(floating))
        memset(dWh, 0, H * G4 * sizeof(floating))
        memset(db, 0, G4 * sizeof(floating))
        memset(dh0, 0, N * H * sizeof(floating))
        return 0
    # dh0 carries dh from step t to step t - 1 (it ends as the gradient of h0),
    # dc_carry likewise for dc.
    for t in range(T - 1, -1, -1):
        gates_backward(N, H, dhs + t * dhs_step_stride, dhs_seq_stride,
                            dh0 if t < T - 1 else NULL, H,
                            dc_carry if t < T - 1 else NULL, H,
                            gates + t * G4, TG,
                            cells + (t - 1) * H if t > 0 else c0, TH if t > 0 else H,
                            tanh_cells + t * H, TH, dA + t * G4, TG, dc_carry, H)
        if N == 1:
            gemv_n(H, G4, 1, Wh, G4, dA + t * G4, 0, dh0)                 # dh = dA_t @ Wh.T
        else:
            gemm(c'n', c't', N, H, G4, 1, dA + t * G4, TG, Wh, G4, 0, dh0, H)  # dh = dA_t @ Wh.T
    # All steps at once, over the N*T stacked rows:
    if _evenly_spaced(N, T, xs_seq_stride, xs_step_stride):
        gemm(c't', c'n', D, G4, M, 1, xs, ldx, dA, G4, 0, dWx, G4)        # dWx = xs.T @ dA
    else:
        for n in range(N):                                                # dWx += xs[n].T @ dA[n]
            gemm(c't', c'n', D, G4, T, 1, xs + n * xs_seq_stride, xs_step_stride,
                 dA + n * TG, G4, 0 if n == 0 else 1, dWx, G4)
    gemm(c't', c'n', H, G4, M, 1, h_prevs, H, dA, G4, 0, dWh, G4)         # dWh = h_prevs.T @ dA
    column_sums(M, G4, dA, G4, db)                                       # db = dA.sum(0)
    gemm(c'n', c't', M, D, G4, 1, dA, G4, Wx, G4, 0, dxs, D)              # dxs = dA @ Wx.T
    return 0
