/*
 * lstmc gate loops: the element-wise half of an LSTM step, in C.
 *
 * Why C and not Cython: these loops are where the small sizes spend their time
 * (a libm expf/tanhf call per element costs many times a vectorized loop's
 * share), and they must be built for the widest SIMD the running CPU has,
 * picked at load time (target_clones), not the x86-64 baseline.
 * The matrix products live in _cell.pyx (BLAS); this file has no BLAS.
 *
 * Layout: every matrix is row-major with an explicit leading dimension
 * (elements between rows); columns are contiguous. Gate order along 4H is
 * f, g, i, o.
 *
 * Numerics:
 *  - exp is branch-free, so that gcc vectorizes it: Cody-Waite reduction
 *    to |r| <= ln2/2, a Taylor polynomial (to r^7 for float32, r^13 for
 *    float64), and 2^k built from bits: ~2 ulp.
 *  - sigmoid(a) = 1/(1+e) for a >= 0, e/(1+e) below, with e = exp(-|a|):
 *    no overflow, exact 0 and 1 at saturation, NaN in -> NaN out.
 *  - tanh(a) = sign(a) (1-e)/(1+e), e = exp(-2|a|); an odd polynomial near 0
 *    where 1-e would cancel.
 *  - Derivatives come from the saved outputs (s' = s(1-s), tanh' = 1-t^2).
 * Loop indices are ptrdiff_t: CPython builds with -fwrapv, under which gcc
 * will not vectorize loops counted with int.
 */
#ifndef LSTMC_GATES_H
#define LSTMC_GATES_H

#include <math.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__) && defined(__linux__) \
    && !defined(LSTMC_NO_CLONES)
#define LSTMC_CLONES __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
#else
#define LSTMC_CLONES
#endif

#if defined(__GNUC__)
#define LSTMC_INLINE static inline __attribute__((always_inline))
#else
#define LSTMC_INLINE static inline
#endif

/* ---------------------------------------------------------------- float32 */

/* exp(x) for x <= 0 (or NaN). Below -87.3 the result is exactly 0. */
LSTMC_INLINE float lstmc_expf_nonpos(float x)
{
    const float lo = -87.3f;
    float xc = x < lo ? lo : x;                  /* NaN compares false: kept */
    float t = xc * 1.44269504088896341f;         /* x / ln 2 */
    float big = t + 12582912.0f;                 /* 1.5 * 2^23: rounds t to an integer k */
    float kf = big - 12582912.0f;
    float r = xc - kf * 0.693145751953125f;      /* Cody-Waite: ln2 = hi + lo */
    r = r - kf * 1.428606765330187e-06f;
    /* exp(r) on |r| <= ln2/2 by its Taylor series to r^7 (remainder < 6e-9) */
    float p = 1.0f / 5040.0f;
    p = p * r + 1.0f / 720.0f;
    p = p * r + 1.0f / 120.0f;
    p = p * r + 1.0f / 24.0f;
    p = p * r + 1.0f / 6.0f;
    p = p * r + 0.5f;
    p = p * r * r + r + 1.0f;
    uint32_t kbits, sbits;                       /* the low bits of `big` hold k */
    memcpy(&kbits, &big, sizeof kbits);
    sbits = (kbits + 127u) << 23;                /* 2^k, k in [-126, 0]; no UB on NaN */
    float scale;
    memcpy(&scale, &sbits, sizeof scale);
    float e = p * scale;
    return x < lo ? 0.0f : e;
}

LSTMC_INLINE float lstmc_sigmoidf(float a)
{
    float e = lstmc_expf_nonpos(-fabsf(a));
    float d = 1.0f / (1.0f + e);
    return a >= 0.0f ? d : e * d;
}

LSTMC_INLINE float lstmc_tanhf(float a)
{
    float x = fabsf(a);
    float e = lstmc_expf_nonpos(-2.0f * x);
    float big = (1.0f - e) / (1.0f + e);
    float x2 = x * x;                            /* tanh x = x - x^3/3 + 2x^5/15 - ... */
    float small = x + x * x2 * (-0.333333333f + x2 * (0.133333333f
                  + x2 * (-0.0539682540f + x2 * 0.0218694885f)));
    float t = x < 0.25f ? small : big;
    return copysignf(t, a);
}

/* ---------------------------------------------------------------- float64 */

/* exp(x) for x <= 0 (or NaN). Below -708.3 the result is exactly 0. */
LSTMC_INLINE double lstmc_exp_nonpos(double x)
{
    const double lo = -708.3;
    double xc = x < lo ? lo : x;                 /* NaN compares false: kept */
    double t = xc * 1.4426950408889634;          /* x / ln 2 */
    double big = t + 6755399441055744.0;         /* 1.5 * 2^52: rounds t to an integer k */
    double kf = big - 6755399441055744.0;
    double r = xc - kf * 0.6931471803691238;     /* Cody-Waite: ln2 = hi (32 bits) + lo */
    r = r - kf * 1.9082149292705877e-10;
    /* exp(r) on |r| <= ln2/2 by its Taylor series to r^13 (remainder < 5e-18) */
    double p = 1.0 / 6227020800.0;
    p = p * r + 1.0 / 479001600.0;
    p = p * r + 1.0 / 39916800.0;
    p = p * r + 1.0 / 3628800.0;
    p = p * r + 1.0 / 362880.0;
    p = p * r + 1.0 / 40320.0;
    p = p * r + 1.0 / 5040.0;
    p = p * r + 1.0 / 720.0;
    p = p * r + 1.0 / 120.0;
    p = p * r + 1.0 / 24.0;
    p = p * r + 1.0 / 6.0;
    p = p * r + 0.5;
    p = p * r * r + r + 1.0;
    uint64_t kbits, sbits;                       /* the low bits of `big` hold k */
    memcpy(&kbits, &big, sizeof kbits);
    sbits = (kbits + 1023) << 52;                /* 2^k, k in [-1022, 0] */
    double scale;
    memcpy(&scale, &sbits, sizeof scale);
    return x < lo ? 0.0 : p * scale;
}

LSTMC_INLINE double lstmc_sigmoid(double a)
{
    double e = lstmc_exp_nonpos(-fabs(a));
    double d = 1.0 / (1.0 + e);
    return a >= 0.0 ? d : e * d;
}

LSTMC_INLINE double lstmc_tanh(double a)
{
    double x = fabs(a);
    double e = lstmc_exp_nonpos(-2.0 * x);
    double big = (1.0 - e) / (1.0 + e);
    /* tanh x = sum c_n x^(2n+1), c_n = 2^(2n+2) (2^(2n+2)-1) B_(2n+2) / (2n+2)!;
     * through x^23 the remainder is < 3e-18 relative on |x| < 0.25. */
    double x2 = x * x;
    double p = -113927491862.0 / 2900518163668125.0;
    p = p * x2 + 18888466084.0 / 194896477400625.0;
    p = p * x2 - 443861162.0 / 1856156927625.0;
    p = p * x2 + 6404582.0 / 10854718875.0;
    p = p * x2 - 929569.0 / 638512875.0;
    p = p * x2 + 21844.0 / 6081075.0;
    p = p * x2 - 1382.0 / 155925.0;
    p = p * x2 + 62.0 / 2835.0;
    p = p * x2 - 17.0 / 315.0;
    p = p * x2 + 2.0 / 15.0;
    p = p * x2 - 1.0 / 3.0;
    double small = x + x * x2 * p;
    double t = x < 0.25 ? small : big;
    return copysign(t, a);
}

/* ------------------------------------------------------- forward gate loop */
/*
 * IN   A (N, 4H, lda): pre-activations without the bias (x@Wx + h@Wh)
 * IN   b (4H,), c_prev (N, H, ldcp) or NULL for zeros
 * gs is the distance between gate blocks along a row of A (and of b): H for a
 * whole row; the layer's H when H here is a slice of its units.
 * OUT  A: overwritten with the activated gates f, g, i, o (the cache)
 * OUT  c_next (N, H, ldcn), h_next (N, H, ldhn), tanh_c (N, H, ldtc) or NULL
 * Each element reads c_prev before writing c_next and h_next, so c_next may be
 * c_prev and h_next may be the h_prev that A was computed from.
 */
#define LSTMC_GATES_FORWARD(NAME, T, SIGMOID, TANH)                                   \
LSTMC_CLONES static void NAME(                                                        \
    ptrdiff_t N, ptrdiff_t H, ptrdiff_t gs, T *A, ptrdiff_t lda, const T *b,          \
    const T *c_prev, ptrdiff_t ldcp, T *c_next, ptrdiff_t ldcn,                       \
    T *h_next, ptrdiff_t ldhn, T *tanh_c, ptrdiff_t ldtc)                             \
{                                                                                     \
    for (ptrdiff_t n = 0; n < N; n++) {                                               \
        T *restrict af = A + n * lda, *restrict ag = af + gs;                         \
        T *restrict ai = ag + gs, *restrict ao = ai + gs;                             \
        const T *cp = c_prev ? c_prev + n * ldcp : NULL;                              \
        T *cn = c_next + n * ldcn, *hn = h_next + n * ldhn;                           \
        T *tc = tanh_c ? tanh_c + n * ldtc : NULL;                                    \
        /* f | g | i | o: one loop per gate over contiguous blocks.         */     \
        for (ptrdiff_t j = 0; j < H; j++) af[j] = SIGMOID(af[j] + b[j]);             \
        for (ptrdiff_t j = 0; j < H; j++) ag[j] = TANH(ag[j] + b[gs + j]);           \
        for (ptrdiff_t j = 0; j < H; j++) ai[j] = SIGMOID(ai[j] + b[2 * gs + j]);    \
        for (ptrdiff_t j = 0; j < H; j++) ao[j] = SIGMOID(ao[j] + b[3 * gs + j]);    \
        if (cp) {                                                                     \
            for (ptrdiff_t j = 0; j < H; j++) cn[j] = af[j] * cp[j] + ag[j] * ai[j];  \
        } else {                                                                      \
            for (ptrdiff_t j = 0; j < H; j++) cn[j] = ag[j] * ai[j];                  \
        }                                                                             \
        if (tc) {                                                                     \
            for (ptrdiff_t j = 0; j < H; j++) {                                       \
                T t = TANH(cn[j]);                                                    \
                tc[j] = t;                                                            \
                hn[j] = ao[j] * t;                                                    \
            }                                                                         \
        } else {                                                                      \
            for (ptrdiff_t j = 0; j < H; j++) hn[j] = ao[j] * TANH(cn[j]);            \
        }                                                                             \
    }                                                                                 \
}

LSTMC_GATES_FORWARD(lstmc_gates_forward_f, float, lstmc_sigmoidf, lstmc_tanhf)
LSTMC_GATES_FORWARD(lstmc_gates_forward_d, double, lstmc_sigmoid, lstmc_tanh)

/* ------------------------------------------------------ backward gate loop */
/*
 * IN   dh (N, H, lddh), dh2 (N, H, lddh2) or NULL: dh_next = dh + dh2
 * IN   dc (N, H, lddc) or NULL for zeros
 * IN   G (N, 4H, ldg): the activated gates f, g, i, o of the forward step
 * IN   c_prev (N, H, ldcp) or NULL for zeros, tanh_c (N, H, ldtc) = tanh(c_next)
 * OUT  dA (N, 4H, ldda): gradient of the pre-activations
 * OUT  dc_prev (N, H, lddcp); may be dc (the same pointer and ld)
 * dA and dc_prev must not overlap each other or any input but that one.
 */
/* One row. Every block is its own restrict parameter (gcc honours restrict on
 * parameters, also once inlined, but not reliably on local pointers): the loops
 * then vectorize without run-time overlap checks. dc may be dc_prev, so those
 * two are not restrict, and no loop reads one and writes the other: dc is read
 * in pass 2 only, dc_prev written in pass 3 only (a loop that reads and writes
 * them in place fails gcc's run-time overlap check and runs scalar). ds travels
 * from pass 2 to pass 3 in df. */
#define LSTMC_GATES_BACKWARD_ROW(NAME, T)                                             \
LSTMC_INLINE void NAME(                                                               \
    ptrdiff_t H, const T *restrict dh, const T *restrict dh2, const T *dc,            \
    const T *restrict f, const T *restrict g, const T *restrict i,                    \
    const T *restrict o, const T *restrict cp, const T *restrict tc,                  \
    T *restrict df, T *restrict dg, T *restrict di, T *restrict dout, T *dc_prev)     \
{                                                                                     \
    if (dh2) {                                                                        \
        for (ptrdiff_t j = 0; j < H; j++) dout[j] = dh[j] + dh2[j];                   \
    } else {                                                                          \
        for (ptrdiff_t j = 0; j < H; j++) dout[j] = dh[j];                            \
    }                                                                                 \
    if (dc) {                                                                         \
        for (ptrdiff_t j = 0; j < H; j++)                                             \
            df[j] = dc[j] + dout[j] * o[j] * (1 - tc[j] * tc[j]);                     \
    } else {                                                                          \
        for (ptrdiff_t j = 0; j < H; j++)                                             \
            df[j] = dout[j] * o[j] * (1 - tc[j] * tc[j]);                             \
    }                                                                                 \
    if (cp) {                                                                         \
        for (ptrdiff_t j = 0; j < H; j++) {                                           \
            T ds = df[j];                                                             \
            df[j] = ds * cp[j] * f[j] * (1 - f[j]);                                   \
            dg[j] = ds * i[j] * (1 - g[j] * g[j]);                                    \
            di[j] = ds * g[j] * i[j] * (1 - i[j]);                                    \
            dout[j] = dout[j] * tc[j] * o[j] * (1 - o[j]);                            \
            dc_prev[j] = ds * f[j];                                                   \
        }                                                                             \
    } else {                                                                          \
        for (ptrdiff_t j = 0; j < H; j++) {                                           \
            T ds = df[j];                                                             \
            df[j] = 0;                                                                \
            dg[j] = ds * i[j] * (1 - g[j] * g[j]);                                    \
            di[j] = ds * g[j] * i[j] * (1 - i[j]);                                    \
            dout[j] = dout[j] * tc[j] * o[j] * (1 - o[j]);                            \
            dc_prev[j] = ds * f[j];                                                   \
        }                                                                             \
    }                                                                                 \
}

#define LSTMC_GATES_BACKWARD(NAME, ROW, T)                                            \
LSTMC_CLONES static void NAME(                                                        \
    ptrdiff_t N, ptrdiff_t H, ptrdiff_t gs, const T *dh, ptrdiff_t lddh,              \
    const T *dh2, ptrdiff_t lddh2, const T *dc, ptrdiff_t lddc,                       \
    const T *G, ptrdiff_t ldg, const T *c_prev, ptrdiff_t ldcp,                       \
    const T *tanh_c, ptrdiff_t ldtc, T *dA, ptrdiff_t ldda,                           \
    T *dc_prev, ptrdiff_t lddcp)                                                      \
{                                                                                     \
    for (ptrdiff_t n = 0; n < N; n++) {                                               \
        const T *gr = G + n * ldg;                                                    \
        T *ar = dA + n * ldda;                                                        \
        ROW(H, dh + n * lddh, dh2 ? dh2 + n * lddh2 : NULL, dc ? dc + n * lddc : NULL, \
            gr, gr + gs, gr + 2 * gs, gr + 3 * gs,                                    \
            c_prev ? c_prev + n * ldcp : NULL,                                        \
            tanh_c + n * ldtc, ar, ar + gs, ar + 2 * gs, ar + 3 * gs,                 \
            dc_prev + n * lddcp);                                                     \
    }                                                                                 \
}

LSTMC_GATES_BACKWARD_ROW(lstmc_gates_backward_row_f, float)
LSTMC_GATES_BACKWARD_ROW(lstmc_gates_backward_row_d, double)
LSTMC_GATES_BACKWARD(lstmc_gates_backward_f, lstmc_gates_backward_row_f, float)
LSTMC_GATES_BACKWARD(lstmc_gates_backward_d, lstmc_gates_backward_row_d, double)

/* ------------------------------------------------------------ small helpers */

/* OUT db (M,) = column sums of X (N, M, ldx) */
#define LSTMC_COLSUM(NAME, T)                                                         \
LSTMC_CLONES static void NAME(ptrdiff_t N, ptrdiff_t M, const T *X, ptrdiff_t ldx,    \
                              T *restrict out)                                        \
{                                                                                     \
    for (ptrdiff_t j = 0; j < M; j++) out[j] = 0;                                     \
    for (ptrdiff_t n = 0; n < N; n++) {                                               \
        const T *row = X + n * ldx;                                                   \
        for (ptrdiff_t j = 0; j < M; j++) out[j] += row[j];                           \
    }                                                                                 \
}

LSTMC_COLSUM(lstmc_colsum_f, float)
LSTMC_COLSUM(lstmc_colsum_d, double)

/* OUT A (M, N) = outer(x, y), A C-contiguous. One pass that only writes:
 * cheaper than zeroing A and calling BLAS ger (which reads A back). */
#define LSTMC_OUTER(NAME, T)                                                          \
LSTMC_CLONES static void NAME(ptrdiff_t M, ptrdiff_t N, const T *x,                   \
                              const T *restrict y, T *restrict A)                     \
{                                                                                     \
    for (ptrdiff_t i = 0; i < M; i++) {                                               \
        T xi = x[i];                                                                  \
        T *restrict row = A + i * N;                                                  \
        for (ptrdiff_t j = 0; j < N; j++) row[j] = xi * y[j];                         \
    }                                                                                 \
}

LSTMC_OUTER(lstmc_outer_f, float)
LSTMC_OUTER(lstmc_outer_d, double)

/* IN/OUT G (N, M, ldg) += R.T, R (M, N, ldr): the recurrent product when BLAS
 * wrote it gate-major. Square tiles (8 x 8 floats, 4 x 4 doubles) are
 * transposed in registers, so that R is read and G written in whole vectors;
 * the edges element by element. */
#if defined(__clang__) || (defined(__GNUC__) && __GNUC__ >= 12)
#define LSTMC_SHUFFLE(a, b, ...) __builtin_shufflevector(a, b, __VA_ARGS__)
#elif defined(__GNUC__)
#define LSTMC_SHUFFLE_F(a, b, ...) __builtin_shuffle(a, b, (lstmc_v8i) {__VA_ARGS__})
#define LSTMC_SHUFFLE_D(a, b, ...) __builtin_shuffle(a, b, (lstmc_v4l) {__VA_ARGS__})
#endif

#if defined(LSTMC_SHUFFLE) || defined(LSTMC_SHUFFLE_F)
#define LSTMC_TILES 1
typedef float lstmc_v8f __attribute__((vector_size(32)));
typedef double lstmc_v4d __attribute__((vector_size(32)));
typedef int32_t lstmc_v8i __attribute__((vector_size(32)));
typedef int64_t lstmc_v4l __attribute__((vector_size(32)));
#ifdef LSTMC_SHUFFLE
#define LSTMC_SHUFFLE_F LSTMC_SHUFFLE
#define LSTMC_SHUFFLE_D LSTMC_SHUFFLE
#endif

/* G rows 0..7 (ldg), columns 0..7 += (add) or = R rows 0..7 (ldr), columns
 * 0..7, transposed. */
LSTMC_INLINE void lstmc_tile_f(const float *R, ptrdiff_t ldr, float *G, ptrdiff_t ldg, int add)
{
    lstmc_v8f r[8], t[8], u[8];
    for (int k = 0; k < 8; k++) memcpy(&r[k], R + k * ldr, sizeof r[k]);
    for (int k = 0; k < 8; k += 2) {
        t[k] = LSTMC_SHUFFLE_F(r[k], r[k + 1], 0, 8, 1, 9, 4, 12, 5, 13);
        t[k + 1] = LSTMC_SHUFFLE_F(r[k], r[k + 1], 2, 10, 3, 11, 6, 14, 7, 15);
    }
    for (int k = 0; k < 8; k += 4) {
        u[k] = LSTMC_SHUFFLE_F(t[k], t[k + 2], 0, 1, 8, 9, 4, 5, 12, 13);
        u[k + 1] = LSTMC_SHUFFLE_F(t[k], t[k + 2], 2, 3, 10, 11, 6, 7, 14, 15);
        u[k + 2] = LSTMC_SHUFFLE_F(t[k + 1], t[k + 3], 0, 1, 8, 9, 4, 5, 12, 13);
        u[k + 3] = LSTMC_SHUFFLE_F(t[k + 1], t[k + 3], 2, 3, 10, 11, 6, 7, 14, 15);
    }
    for (int k = 0; k < 4; k++) {
        lstmc_v8f lo = LSTMC_SHUFFLE_F(u[k], u[k + 4], 0, 1, 2, 3, 8, 9, 10, 11);
        lstmc_v8f hi = LSTMC_SHUFFLE_F(u[k], u[k + 4], 4, 5, 6, 7, 12, 13, 14, 15);
        lstmc_v8f g;
        if (add) {
            memcpy(&g, G + k * ldg, sizeof g);
            lo += g;
            memcpy(&g, G + (k + 4) * ldg, sizeof g);
            hi += g;
        }
        memcpy(G + k * ldg, &lo, sizeof lo);
        memcpy(G + (k + 4) * ldg, &hi, sizeof hi);
    }
}

LSTMC_INLINE void lstmc_tile_d(const double *R, ptrdiff_t ldr, double *G, ptrdiff_t ldg,
                               int add)
{
    lstmc_v4d r[4], t[4];
    for (int k = 0; k < 4; k++) memcpy(&r[k], R + k * ldr, sizeof r[k]);
    t[0] = LSTMC_SHUFFLE_D(r[0], r[1], 0, 4, 2, 6);
    t[1] = LSTMC_SHUFFLE_D(r[0], r[1], 1, 5, 3, 7);
    t[2] = LSTMC_SHUFFLE_D(r[2], r[3], 0, 4, 2, 6);
    t[3] = LSTMC_SHUFFLE_D(r[2], r[3], 1, 5, 3, 7);
    lstmc_v4d o[4];
    o[0] = LSTMC_SHUFFLE_D(t[0], t[2], 0, 1, 4, 5);
    o[1] = LSTMC_SHUFFLE_D(t[1], t[3], 0, 1, 4, 5);
    o[2] = LSTMC_SHUFFLE_D(t[0], t[2], 2, 3, 6, 7);
    o[3] = LSTMC_SHUFFLE_D(t[1], t[3], 2, 3, 6, 7);
    for (int k = 0; k < 4; k++) {
        lstmc_v4d g;
        if (add) {
            memcpy(&g, G + k * ldg, sizeof g);
            o[k] += g;
        }
        memcpy(G + k * ldg, &o[k], sizeof o[k]);
    }
}
#define LSTMC_TILE_FN_float lstmc_tile_f
#define LSTMC_TILE_FN_double lstmc_tile_d
#define LSTMC_TILE_float 8
#define LSTMC_TILE_double 4
#else
#define LSTMC_TILE_float 0
#define LSTMC_TILE_double 0
#define LSTMC_TILE_FN_float(R, ldr, G, ldg, add) ((void) 0)
#define LSTMC_TILE_FN_double(R, ldr, G, ldg, add) ((void) 0)
#endif

/* ADD: G (N, M, ldg) += R.T; else G = R.T. R is (M, N, ldr). */
#define LSTMC_TRANSPOSED(NAME, T, ADD)                                                \
LSTMC_CLONES static void NAME(ptrdiff_t N, ptrdiff_t M, const T *restrict R,          \
                              ptrdiff_t ldr, T *restrict G, ptrdiff_t ldg)            \
{                                                                                     \
    const ptrdiff_t K = LSTMC_TILE_##T;                                               \
    ptrdiff_t n0 = 0, j0 = 0;                                                         \
    if (K > 0) {                                                                      \
        for (; n0 + K <= N; n0 += K)                                                  \
            for (j0 = 0; j0 + K <= M; j0 += K)                                        \
                LSTMC_TILE_FN_##T(R + j0 * ldr + n0, ldr, G + n0 * ldg + j0, ldg, ADD);\
        for (ptrdiff_t n = 0; n < n0; n++)       /* the last columns of those rows */ \
            for (ptrdiff_t j = j0; j < M; j++)                                        \
                G[n * ldg + j] = (ADD ? G[n * ldg + j] : 0) + R[j * ldr + n];         \
    }                                                                                 \
    for (ptrdiff_t n = n0; n < N; n++)                          /* the last rows */   \
        for (ptrdiff_t j = 0; j < M; j++)                                             \
            G[n * ldg + j] = (ADD ? G[n * ldg + j] : 0) + R[j * ldr + n];             \
}

LSTMC_TRANSPOSED(lstmc_add_transposed_f, float, 1)
LSTMC_TRANSPOSED(lstmc_add_transposed_d, double, 1)
LSTMC_TRANSPOSED(lstmc_transpose_f, float, 0)
LSTMC_TRANSPOSED(lstmc_transpose_d, double, 0)

#endif /* LSTMC_GATES_H */
