/* One decode step of a GPTBigCode model on the CPU, every layer in one call: codeinstruct's native path.
 *
 * Built at run time by infer/native.py (the host's C compiler, -O3 -march=native -fopenmp) and called
 * through ctypes; the weights stay in tensors the Python side owns and packs. Two sets of kernels: AVX-512
 * (F, BW; int8 with VNNI, bfloat16 pairs with BF16) and AVX2 + FMA (float32 and bfloat16); on other CPUs
 * nothing is built and the torch forward runs as before.
 *
 * Why it exists: at batch 1-32 a decode step is a chain of small matrix-vector products whose cost on
 * two cores was the call, not the arithmetic (torch/oneDNN take 15-20 us per product at 256 wide), and
 * oneDNN's products streamed weights at ~40 GB/s where the memory gives more.
 *
 * Every output element of a product is one fixed chain: zero, then one fused multiply-add per input
 * element (or pair, or quad) in order, then the bias. Rows are computed the same whatever rows are beside
 * them and however the columns are split among threads, so a sequence decodes the same tokens alone or
 * in a batch. int8 products are exact in int32, so any order gives the same sums.
 *
 * Matrices are packed by the caller in panels of PANEL output columns (ci_panel(): 64 with AVX-512, 32
 * with AVX2):
 *   float32 / bfloat16: [n_panels][k][PANEL]
 *   int8:               [n_panels][k / 4][PANEL][4] (k padded to a multiple of 4 with zero weights)
 *   bfloat16 where the CPU has AVX512-BF16 (ci_features() & 4): [n_panels][k / 2][PANEL][2], multiplied by
 *   rows rounded to bfloat16 (vdpbf16ps, as oneDNN multiplies bfloat16), else [n_panels][k][PANEL] against
 *   float32 rows
 * with biases padded to n_panels * PANEL. Widths (embedding, inner, head) are multiples of 16.
 */
#include <math.h>
#include <omp.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#if defined(__AVX512F__) && defined(__AVX512BW__)
#define CI_AVX512 1
#define PANEL 64
#elif defined(__AVX2__) && defined(__FMA__)
#define CI_AVX2 1
#define PANEL 32
#endif
#if defined(CI_AVX512) || defined(CI_AVX2)
#include <immintrin.h>
#endif

enum { FMT_F32 = 0, FMT_BF16 = 1, FMT_I8 = 2 };
enum { ACT_NONE = 0, ACT_GELU_TANH = 1 };

typedef struct {
    int32_t fmt, k, n, n_panels, kp; /* kp: packed rows (int8: k / 4, bfloat16 pairs: k / 2, rounded up) */
    const void *w;                   /* panels */
    const float *bias;               /* [n_panels * 64] or NULL */
    const float *scale;              /* int8: per output column */
    const int32_t *wsum;             /* int8: 128 * the column's weight sum (the uint8 offset's share) */
} Linear;

typedef struct {
    const float *ln1_w, *ln1_b, *ln2_w, *ln2_b;
    Linear attn, proj, fc, mlp_proj;
    void *k_cache, *v_cache; /* [slots, kv_heads, max_len, head_dim] in the cache dtype */
} Layer;

typedef struct {
    int32_t n_layer, embed, heads, kv_heads, head_dim, max_len, inner, multi_query;
    int32_t act_dtype; /* wte, wpe and the cache: FMT_F32 or FMT_BF16 */
    int32_t act;       /* ACT_GELU_TANH */
    float eps, scale;
    const void *wte, *wpe;
    const float *lnf_w, *lnf_b;
    Linear lm_head;
    const Layer *layers;
} Model;

/* 1: the step is built (AVX-512 F+BW, or AVX2+FMA); 2: int8 products (AVX512-VNNI); 4: bfloat16 pairs
 * (AVX512-BF16); 8: the AVX-512 kernels */
int ci_features(void) {
    int f = 0;
#if defined(CI_AVX512)
    f |= 1 | 8;
#if defined(__AVX512VNNI__)
    f |= 2;
#endif
#if defined(__AVX512BF16__)
    f |= 4;
#endif
#elif defined(CI_AVX2)
    f |= 1;
#endif
    return f;
}

/* output columns per packed panel (the caller packs to it) */
int ci_panel(void) {
#if defined(PANEL)
    return PANEL;
#else
    return 0;
#endif
}

static inline uint16_t f32_to_bf16(float f) { /* round to nearest even, as torch converts */
    uint32_t u;
    memcpy(&u, &f, 4);
    if ((u & 0x7fffffffu) > 0x7f800000u) return (uint16_t)((u >> 16) | 0x40);
    u += 0x7fffu + ((u >> 16) & 1u);
    return (uint16_t)(u >> 16);
}

#if defined(CI_AVX512) || defined(CI_AVX2)
static void store_act(void *base, size_t i, const float *src, int n, int dtype) {
    if (dtype == FMT_F32)
        memcpy((float *)base + i, src, (size_t)n * 4);
    else
        for (int j = 0; j < n; j++) ((uint16_t *)base)[i + j] = f32_to_bf16(src[j]);
}
#endif

/* ------------------------------------------------------- vector primitives: the one ISA-specific layer */
#if defined(CI_AVX512)

typedef __m512 vf;
#define VW 16 /* lanes */
#define V_REG "v"
#define v_zero _mm512_setzero_ps
#define v_load _mm512_loadu_ps
#define v_store _mm512_storeu_ps
#define v_set1 _mm512_set1_ps
#define v_add _mm512_add_ps
#define v_sub _mm512_sub_ps
#define v_mul _mm512_mul_ps
#define v_div _mm512_div_ps
#define v_min _mm512_min_ps
#define v_max _mm512_max_ps
#define v_fma _mm512_fmadd_ps
#define v_fnma _mm512_fnmadd_ps
#define v_hsum _mm512_reduce_add_ps /* a fixed order, as every reduction here */
#define v_round(x) _mm512_roundscale_ps(x, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC)
#define v_pow2(p, n) _mm512_scalef_ps(p, n) /* p * 2^n */

static inline vf v_load_bf16(const uint16_t *p) {
    return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(_mm256_loadu_si256((const __m256i *)p)), 16));
}
static inline __mmask16 first(int n) { return (__mmask16)((1u << n) - 1u); } /* the first n < 16 lanes */
static inline vf v_load_first(const float *p, int n) { return _mm512_maskz_loadu_ps(first(n), p); }
static inline void v_store_first(float *p, vf v, int n) { _mm512_mask_storeu_ps(p, first(n), v); }
static inline vf v_keep_first(vf v, int n) { return _mm512_maskz_mov_ps(first(n), v); }

#elif defined(CI_AVX2)

typedef __m256 vf;
#define VW 8
#define V_REG "x"
#define v_zero _mm256_setzero_ps
#define v_load _mm256_loadu_ps
#define v_store _mm256_storeu_ps
#define v_set1 _mm256_set1_ps
#define v_add _mm256_add_ps
#define v_sub _mm256_sub_ps
#define v_mul _mm256_mul_ps
#define v_div _mm256_div_ps
#define v_min _mm256_min_ps
#define v_max _mm256_max_ps
#define v_fma _mm256_fmadd_ps
#define v_fnma _mm256_fnmadd_ps
#define v_round(x) _mm256_round_ps(x, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC)

static inline float v_hsum(vf v) { /* a fixed order: lanes 0+4, 1+5, ... then pairs */
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_shuffle_ps(s, s, 1));
    return _mm_cvtss_f32(s);
}
static inline vf v_pow2(vf p, vf n) { /* p * 2^n, 2^n built in the exponent bits (n in [-126, 127]) */
    __m256i e = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)), 23);
    return _mm256_mul_ps(p, _mm256_castsi256_ps(e));
}
static inline vf v_load_bf16(const uint16_t *p) {
    return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(_mm_loadu_si128((const __m128i *)p)), 16));
}
static inline __m256i first(int n) { return _mm256_cmpgt_epi32(_mm256_set1_epi32(n), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7)); }
static inline vf v_load_first(const float *p, int n) { return _mm256_maskload_ps(p, first(n)); }
static inline void v_store_first(float *p, vf v, int n) { _mm256_maskstore_ps(p, first(n), v); }
static inline vf v_keep_first(vf v, int n) { return _mm256_and_ps(v, _mm256_castsi256_ps(first(n))); }

#endif

#if defined(CI_AVX512) || defined(CI_AVX2)

/* e^x (cephes' single-precision polynomial, within ~2 ulp) */
static inline vf v_exp(vf x) {
    x = v_min(v_max(x, v_set1(-87.33654475f)), v_set1(88.0f));
    vf n = v_round(v_mul(x, v_set1(1.44269504088896341f)));
    vf r = v_fnma(n, v_set1(0.693359375f), x);
    r = v_fnma(n, v_set1(-2.12194440e-4f), r);
    vf p = v_set1(1.9875691500e-4f);
    p = v_fma(p, r, v_set1(1.3981999507e-3f));
    p = v_fma(p, r, v_set1(8.3334519073e-3f));
    p = v_fma(p, r, v_set1(4.1665795894e-2f));
    p = v_fma(p, r, v_set1(1.6666665459e-1f));
    p = v_fma(p, r, v_set1(5.0000001201e-1f));
    p = v_fma(p, v_mul(r, r), v_add(r, v_set1(1.0f)));
    return v_pow2(p, n);
}

/* gelu with the tanh approximation: 0.5 x (1 + tanh(u)) = x / (1 + e^(-2u)) */
static inline vf v_gelu_tanh(vf x) {
    vf x3 = v_mul(v_mul(x, x), x);
    vf u = v_mul(v_set1(0.7978845608028654f), v_fma(v_set1(0.044715f), x3, x));
    return v_div(x, v_add(v_set1(1.0f), v_exp(v_mul(v_set1(-2.0f), u))));
}

static inline vf load_act(const void *base, size_t i, int dtype) {
    return dtype == FMT_F32 ? v_load((const float *)base + i) : v_load_bf16((const uint16_t *)base + i);
}

/* ---------------------------------------------------------------- products */

static inline void epilogue(vf v, const Linear *L, int col, float *out, int valid, int act) {
    if (L->bias) v = v_add(v, v_load(L->bias + col));
    if (act == ACT_GELU_TANH) v = v_gelu_tanh(v);
    int left = valid - (col % PANEL);
    if (left >= VW)
        v_store(out, v);
    else if (left > 0)
        v_store_first(out, v, left);
}

#ifndef PF_DIST
#define PF_DIST 16
#endif
#define PREFETCH(p)                                                                    \
    do {                                                                               \
        const char *a_ = (const char *)((p) + PF_DIST * PANEL);                        \
        for (int l_ = 0; l_ < PANEL * (int)sizeof(*(p)); l_ += 64)                     \
            _mm_prefetch(a_ + l_, _MM_HINT_T0);                                        \
    } while (0)

/* rows m0..m0+MR of x [., ldx] times panel p (4 vectors wide), into out [., ldo] */
#define DENSE_KERNEL(NAME, MR, WTYPE, LOADW)                                                                    \
    static void NAME(const Linear *L, int p, const float *x, int ldx, int m0, float *out, int ldo, int act) { \
        const WTYPE *w = (const WTYPE *)L->w + (size_t)p * L->k * PANEL;                                     \
        vf acc[MR][4];                                                                                       \
        for (int r = 0; r < MR; r++)                                                                         \
            for (int j = 0; j < 4; j++) acc[r][j] = v_zero();                                                \
        const float *xr = x + (size_t)m0 * ldx;                                                              \
        for (int k = 0; k < L->k; k++, w += PANEL) {                                                         \
            PREFETCH(w);                                                                                     \
            vf w0 = LOADW(w), w1 = LOADW(w + VW), w2 = LOADW(w + 2 * VW), w3 = LOADW(w + 3 * VW);            \
            __asm__("" : "+" V_REG(w0), "+" V_REG(w1), "+" V_REG(w2), "+" V_REG(w3)); /* loaded once per k */ \
            for (int r = 0; r < MR; r++) {                                                                   \
                vf b = v_set1(xr[(size_t)r * ldx + k]);                                                      \
                acc[r][0] = v_fma(b, w0, acc[r][0]);                                                         \
                acc[r][1] = v_fma(b, w1, acc[r][1]);                                                         \
                acc[r][2] = v_fma(b, w2, acc[r][2]);                                                         \
                acc[r][3] = v_fma(b, w3, acc[r][3]);                                                         \
            }                                                                                                \
        }                                                                                                    \
        int col = p * PANEL;                                                                                 \
        for (int r = 0; r < MR; r++)                                                                         \
            for (int j = 0; j < 4; j++)                                                                      \
                epilogue(acc[r][j], L, col + VW * j, out + (size_t)(m0 + r) * ldo + col + VW * j, L->n - col, act); \
    }
#define LOAD_F32(p) v_load(p)
#define LOAD_BF16(p) v_load_bf16(p)
typedef void (*dense_fn)(const Linear *, int, const float *, int, int, float *, int, int);

#if defined(CI_AVX512)
DENSE_KERNEL(f32_1, 1, float, LOAD_F32)
DENSE_KERNEL(f32_2, 2, float, LOAD_F32)
DENSE_KERNEL(f32_3, 3, float, LOAD_F32)
DENSE_KERNEL(f32_4, 4, float, LOAD_F32)
DENSE_KERNEL(f32_5, 5, float, LOAD_F32)
DENSE_KERNEL(f32_6, 6, float, LOAD_F32)
static const dense_fn F32_KERNELS[7] = {0, f32_1, f32_2, f32_3, f32_4, f32_5, f32_6};
#if !defined(__AVX512BF16__)
DENSE_KERNEL(bf16_1, 1, uint16_t, LOAD_BF16)
DENSE_KERNEL(bf16_2, 2, uint16_t, LOAD_BF16)
DENSE_KERNEL(bf16_3, 3, uint16_t, LOAD_BF16)
DENSE_KERNEL(bf16_4, 4, uint16_t, LOAD_BF16)
static const dense_fn BF16_KERNELS[5] = {0, bf16_1, bf16_2, bf16_3, bf16_4};
#endif

#if defined(__AVX512BF16__)
/* bfloat16 weight pairs against rows rounded to bfloat16 pairs, [M][kp * 2] */
#define BF16DP_KERNEL(NAME, MR)                                                                              \
    static void NAME(const Linear *L, int p, const uint8_t *q, int ldq, const float *xs, int m0, float *out, \
                     int ldo, int act) {                                                                     \
        const uint16_t *w = (const uint16_t *)L->w + (size_t)p * L->kp * PANEL * 2;                          \
        __m512 acc[MR][4];                                                                                   \
        (void)xs;                                                                                            \
        for (int r = 0; r < MR; r++)                                                                         \
            for (int j = 0; j < 4; j++) acc[r][j] = _mm512_setzero_ps();                                     \
        const uint8_t *qr = q + (size_t)m0 * ldq;                                                            \
        for (int k = 0; k < L->kp; k++, w += PANEL * 2) {                                                    \
            __m512bh w0 = (__m512bh)_mm512_loadu_si512(w), w1 = (__m512bh)_mm512_loadu_si512(w + 32);        \
            __m512bh w2 = (__m512bh)_mm512_loadu_si512(w + 64), w3 = (__m512bh)_mm512_loadu_si512(w + 96);   \
            for (int r = 0; r < MR; r++) {                                                                   \
                int32_t pair;                                                                                \
                memcpy(&pair, qr + (size_t)r * ldq + 4 * k, 4);                                              \
                __m512bh b = (__m512bh)_mm512_set1_epi32(pair);                                              \
                acc[r][0] = _mm512_dpbf16_ps(acc[r][0], b, w0);                                              \
                acc[r][1] = _mm512_dpbf16_ps(acc[r][1], b, w1);                                              \
                acc[r][2] = _mm512_dpbf16_ps(acc[r][2], b, w2);                                              \
                acc[r][3] = _mm512_dpbf16_ps(acc[r][3], b, w3);                                              \
            }                                                                                                \
        }                                                                                                    \
        int col = p * PANEL;                                                                                 \
        for (int r = 0; r < MR; r++)                                                                         \
            for (int j = 0; j < 4; j++)                                                                      \
                epilogue(acc[r][j], L, col + 16 * j, out + (size_t)(m0 + r) * ldo + col + 16 * j, L->n - p * PANEL, act); \
    }
BF16DP_KERNEL(bdp_1, 1)
BF16DP_KERNEL(bdp_2, 2)
BF16DP_KERNEL(bdp_3, 3)
BF16DP_KERNEL(bdp_4, 4)
#endif

#if defined(__AVX512VNNI__)
/* int8 weights against rows quantized to uint8 (value + 128), [M][k4 * 4]; xs: each row's scale */
#define INT8_KERNEL(NAME, MR)                                                                                \
    static void NAME(const Linear *L, int p, const uint8_t *q, int ldq, const float *xs, int m0, float *out, \
                     int ldo, int act) {                                                                     \
        const int8_t *w = (const int8_t *)L->w + (size_t)p * L->kp * PANEL * 4;                              \
        __m512i acc[MR][4];                                                                                  \
        for (int r = 0; r < MR; r++)                                                                         \
            for (int j = 0; j < 4; j++) acc[r][j] = _mm512_setzero_si512();                                  \
        const uint8_t *qr = q + (size_t)m0 * ldq;                                                            \
        for (int k = 0; k < L->kp; k++, w += PANEL * 4) {                                                    \
            __m512i w0 = _mm512_loadu_si512(w), w1 = _mm512_loadu_si512(w + 64);                             \
            __m512i w2 = _mm512_loadu_si512(w + 128), w3 = _mm512_loadu_si512(w + 192);                      \
            for (int r = 0; r < MR; r++) {                                                                   \
                int32_t quad;                                                                                \
                memcpy(&quad, qr + (size_t)r * ldq + 4 * k, 4);                                              \
                __m512i b = _mm512_set1_epi32(quad);                                                         \
                acc[r][0] = _mm512_dpbusd_epi32(acc[r][0], b, w0);                                           \
                acc[r][1] = _mm512_dpbusd_epi32(acc[r][1], b, w1);                                           \
                acc[r][2] = _mm512_dpbusd_epi32(acc[r][2], b, w2);                                           \
                acc[r][3] = _mm512_dpbusd_epi32(acc[r][3], b, w3);                                           \
            }                                                                                                \
        }                                                                                                    \
        int col = p * PANEL;                                                                                 \
        for (int r = 0; r < MR; r++) {                                                                       \
            __m512 s = _mm512_set1_ps(xs[m0 + r]);                                                           \
            for (int j = 0; j < 4; j++) {                                                                    \
                int c = col + 16 * j;                                                                        \
                __m512i exact = _mm512_sub_epi32(acc[r][j], _mm512_loadu_si512(L->wsum + c));               \
                __m512 v = _mm512_mul_ps(_mm512_mul_ps(_mm512_cvtepi32_ps(exact), _mm512_loadu_ps(L->scale + c)), s); \
                epilogue(v, L, c, out + (size_t)(m0 + r) * ldo + c, L->n - p * PANEL, act);                 \
            }                                                                                                \
        }                                                                                                    \
    }
INT8_KERNEL(i8_1, 1)
INT8_KERNEL(i8_2, 2)
INT8_KERNEL(i8_3, 3)
INT8_KERNEL(i8_4, 4)
typedef void (*int8_fn)(const Linear *, int, const uint8_t *, int, const float *, int, float *, int, int);
static const int8_fn I8_KERNELS[5] = {0, i8_1, i8_2, i8_3, i8_4};
#endif
#if defined(__AVX512BF16__)
typedef void (*prep_fn)(const Linear *, int, const uint8_t *, int, const float *, int, float *, int, int);
static const prep_fn BDP_KERNELS[5] = {0, bdp_1, bdp_2, bdp_3, bdp_4};
#endif

#if defined(__AVX512BF16__)
/* one row rounded to bfloat16 pairs, zero-padded to 2 * kp */
static void round_row(const float *x, int k, int kp, uint8_t *q) {
    uint16_t *o = (uint16_t *)q;
    for (int i = 0; i < k; i += 16) /* round to nearest even, as torch converts */
        _mm256_storeu_si256((__m256i *)(o + i), (__m256i)_mm512_cvtneps_pbh(_mm512_loadu_ps(x + i)));
    for (int i = k; i < 2 * kp; i++) o[i] = 0;
}
#endif

/* one row quantized as the torch path does: scale = max(|x|, 1e-12) / 127, q = round(x / scale) + 128 */
static void quantize_row(const float *x, int k, int kp, uint8_t *q, float *scale) {
    __m512 m = _mm512_setzero_ps();
    for (int i = 0; i < k; i += 16) m = _mm512_max_ps(m, _mm512_abs_ps(_mm512_loadu_ps(x + i)));
    float amax = _mm512_reduce_max_ps(m);
    float s = (amax > 1e-12f ? amax : 1e-12f) / 127.0f;
    __m512 sv = _mm512_set1_ps(s);
    for (int i = 0; i < k; i += 16) {
        __m512 v = _mm512_roundscale_ps(_mm512_div_ps(_mm512_loadu_ps(x + i), sv), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
        __m512i iv = _mm512_add_epi32(_mm512_cvtps_epi32(v), _mm512_set1_epi32(128));
        _mm_storeu_si128((__m128i *)(q + i), _mm512_cvtusepi32_epi8(iv));
    }
    for (int i = k; i < 4 * kp; i++) q[i] = 128;
    *scale = s;
}

/* whether L's rows go in prepared (int8 values, or bfloat16 pairs) rather than as float32 */
static int needs_prep(int fmt) {
#if defined(__AVX512BF16__)
    if (fmt == FMT_BF16) return 1;
#endif
    return fmt == FMT_I8;
}

static void prep_row(const Linear *L, const float *x, uint8_t *q, float *scale) {
    if (L->fmt == FMT_I8)
        quantize_row(x, L->k, L->kp, q, scale);
#if defined(__AVX512BF16__)
    else
        round_row(x, L->k, L->kp, q);
#endif
}

/* The columns of thread t's share of L's panels, for M rows; called inside a parallel region. Rows are
 * quantized beforehand (int8). */
static void linear_share(const Linear *L, const float *x, int ldx, const uint8_t *q, int ldq, const float *xs,
                         int M, float *out, int ldo, int act, int t, int nt) {
    (void)q, (void)ldq, (void)xs; /* used by the int8 and bfloat16-pair kernels, where built */
    int p0 = (int)((int64_t)L->n_panels * t / nt), p1 = (int)((int64_t)L->n_panels * (t + 1) / nt);
    for (int p = p0; p < p1; p++) {
        if (L->fmt == FMT_F32) { /* 6 rows a block: 24 accumulators (the most that fit beside a panel's row) */
            for (int m0 = 0; m0 < M; m0 += 6) F32_KERNELS[M - m0 < 6 ? M - m0 : 6](L, p, x, ldx, m0, out, ldo, act);
        } else if (L->fmt == FMT_BF16) {
            for (int m0 = 0; m0 < M; m0 += 4) {
#if defined(__AVX512BF16__)
                BDP_KERNELS[M - m0 < 4 ? M - m0 : 4](L, p, q, ldq, xs, m0, out, ldo, act);
#else
                BF16_KERNELS[M - m0 < 4 ? M - m0 : 4](L, p, x, ldx, m0, out, ldo, act);
#endif
            }
        } else {
#if defined(__AVX512VNNI__)
            for (int m0 = 0; m0 < M; m0 += 4) I8_KERNELS[M - m0 < 4 ? M - m0 : 4](L, p, q, ldq, xs, m0, out, ldo, act);
#endif
        }
    }
}

#else /* AVX2: float32 and bfloat16 (widened), 2 rows a block: 8 accumulators beside the panel's row in 16
       * registers; int8 stays on the torch path (ci_features() & 2 is unset) */
DENSE_KERNEL(f32_1, 1, float, LOAD_F32)
DENSE_KERNEL(f32_2, 2, float, LOAD_F32)
DENSE_KERNEL(bf16_1, 1, uint16_t, LOAD_BF16)
DENSE_KERNEL(bf16_2, 2, uint16_t, LOAD_BF16)

static int needs_prep(int fmt) {
    (void)fmt;
    return 0;
}

static void prep_row(const Linear *L, const float *x, uint8_t *q, float *scale) { (void)L, (void)x, (void)q, (void)scale; }

static void linear_share(const Linear *L, const float *x, int ldx, const uint8_t *q, int ldq, const float *xs,
                         int M, float *out, int ldo, int act, int t, int nt) {
    (void)q, (void)ldq, (void)xs;
    int p0 = (int)((int64_t)L->n_panels * t / nt), p1 = (int)((int64_t)L->n_panels * (t + 1) / nt);
    for (int p = p0; p < p1; p++)
        for (int m0 = 0; m0 < M; m0 += 2) { /* 2 rows a block: 8 accumulators beside the panel's row */
            if (L->fmt == FMT_F32)
                (M - m0 < 2 ? f32_1 : f32_2)(L, p, x, ldx, m0, out, ldo, act);
            else
                (M - m0 < 2 ? bf16_1 : bf16_2)(L, p, x, ldx, m0, out, ldo, act);
        }
}

#endif

/* ------------------------------------------------------------------ pieces */

static void layer_norm(const float *x, int n, const float *w, const float *b, float eps, float *y) {
    vf s = v_zero();
    for (int i = 0; i < n; i += VW) s = v_add(s, v_load(x + i));
    vf mv = v_set1(v_hsum(s) / (float)n), v = v_zero();
    for (int i = 0; i < n; i += VW) {
        vf d = v_sub(v_load(x + i), mv);
        v = v_fma(d, d, v);
    }
    vf rv = v_set1(1.0f / sqrtf(v_hsum(v) / (float)n + eps));
    for (int i = 0; i < n; i += VW) {
        vf d = v_mul(v_sub(v_load(x + i), mv), rv);
        v_store(y + i, v_fma(d, v_load(w + i), v_load(b + i)));
    }
}

/* one head of one row: q [D] against the slot's keys/values at positions 0..pos -> out [D] */
static void attend(const Model *m, const float *q, const void *kc, const void *vc, size_t base, int pos, float *scores,
                   float *out) {
    int d = m->head_dim, dt = m->act_dtype;
    float best = -INFINITY;
    for (int t = 0; t <= pos; t++) {
        vf a = v_zero();
        for (int i = 0; i < d; i += VW) a = v_fma(v_load(q + i), load_act(kc, base + (size_t)t * d + i, dt), a);
        scores[t] = v_hsum(a) * m->scale;
        best = scores[t] > best ? scores[t] : best;
    }
    vf bv = v_set1(best), sum = v_zero();
    int t = 0;
    for (; t + VW <= pos + 1; t += VW) {
        vf e = v_exp(v_sub(v_load(scores + t), bv));
        v_store(scores + t, e);
        sum = v_add(sum, e);
    }
    if (t <= pos) {
        int n = pos + 1 - t;
        vf e = v_exp(v_sub(v_load_first(scores + t, n), bv));
        v_store_first(scores + t, e, n);
        sum = v_add(sum, v_keep_first(e, n));
    }
    vf inv = v_set1(1.0f / v_hsum(sum));
    for (int i = 0; i < d; i += VW) {
        vf o = v_zero();
        for (int s = 0; s <= pos; s++) o = v_fma(v_set1(scores[s]), load_act(vc, base + (size_t)s * d + i, dt), o);
        v_store(out + i, v_mul(o, inv));
    }
}

/* x = wte[token] + wpe[position] */
static void embed_row(const Model *m, int64_t token, int64_t position, float *x) {
    for (int i = 0; i < m->embed; i += VW) {
        vf a = load_act(m->wte, (size_t)token * m->embed + i, m->act_dtype);
        v_store(x + i, v_add(a, load_act(m->wpe, (size_t)position * m->embed + i, m->act_dtype)));
    }
}

static void add_row(float *x, const float *t, int n) {
    for (int i = 0; i < n; i += VW) v_store(x + i, v_add(v_load(x + i), v_load(t + i)));
}

#endif

#if defined(CI_AVX512) || defined(CI_AVX2)

/* ------------------------------------------------------------------ the step */

int ci_decode(const Model *m, int B, const int64_t *tokens, const int64_t *positions, const int64_t *slots,
              float *logits, int nt) {
    const int E = m->embed, D = m->head_dim, H = m->heads, KVH = m->kv_heads, I = m->inner;
    const int QKV = m->layers[0].attn.n, g = H / KVH, V = m->lm_head.n;
    const int maxk = (I > E ? I : E) + 4;
    size_t floats = (size_t)B * (4 * E + QKV + I) + (size_t)nt * (m->max_len + 16) + B;
    float *ws = (float *)aligned_alloc(64, ((floats * 4 + 63) / 64) * 64);
    const int ldq = 2 * maxk; /* bytes per row: int8 values or bfloat16 pairs */
    uint8_t *qbuf = (uint8_t *)aligned_alloc(64, (((size_t)B * ldq + 63) / 64) * 64);
    if (!ws || !qbuf) {
        free(ws);
        free(qbuf);
        return -2;
    }
    float *x = ws, *h = x + (size_t)B * E, *attn = h + (size_t)B * E, *tmp = attn + (size_t)B * E;
    float *qkv = tmp + (size_t)B * E, *f = qkv + (size_t)B * QKV, *xs = f + (size_t)B * I;
    float *scores = xs + B;
    const int quant = needs_prep(m->lm_head.fmt);
#pragma omp parallel num_threads(nt)
    {
        const int t = omp_get_thread_num(), T = omp_get_num_threads();
        float *my_scores = scores + (size_t)t * (m->max_len + 16);
#pragma omp for schedule(static)
        for (int b = 0; b < B; b++) embed_row(m, tokens[b], positions[b], x + (size_t)b * E);
        for (int l = 0; l < m->n_layer; l++) {
            const Layer *L = m->layers + l;
#pragma omp for schedule(static)
            for (int b = 0; b < B; b++) {
                layer_norm(x + (size_t)b * E, E, L->ln1_w, L->ln1_b, m->eps, h + (size_t)b * E);
                if (quant) prep_row(&L->attn, h + (size_t)b * E, qbuf + (size_t)b * ldq, xs + b);
            }
            linear_share(&L->attn, h, E, qbuf, ldq, xs, B, qkv, QKV, ACT_NONE, t, T);
#pragma omp barrier
#pragma omp for schedule(static)
            for (int b = 0; b < B; b++) {
                const float *row = qkv + (size_t)b * QKV;
                for (int j = 0; j < KVH; j++) {
                    const float *k = m->multi_query ? row + E : row + (size_t)j * 3 * D + D;
                    const float *v = m->multi_query ? row + E + D : row + (size_t)j * 3 * D + 2 * D;
                    size_t at = (((size_t)slots[b] * KVH + j) * m->max_len + positions[b]) * D;
                    store_act(L->k_cache, at, k, D, m->act_dtype);
                    store_act(L->v_cache, at, v, D, m->act_dtype);
                }
            }
#pragma omp for schedule(static) collapse(2)
            for (int b = 0; b < B; b++)
                for (int hd = 0; hd < H; hd++) {
                    const float *row = qkv + (size_t)b * QKV;
                    const float *q = m->multi_query ? row + (size_t)hd * D : row + (size_t)hd * 3 * D;
                    size_t base = ((size_t)slots[b] * KVH + hd / g) * m->max_len * D;
                    attend(m, q, L->k_cache, L->v_cache, base, (int)positions[b], my_scores,
                           attn + (size_t)b * E + (size_t)hd * D);
                }
            if (quant) {
#pragma omp for schedule(static)
                for (int b = 0; b < B; b++)
                    prep_row(&L->proj, attn + (size_t)b * E, qbuf + (size_t)b * ldq, xs + b);
            }
            linear_share(&L->proj, attn, E, qbuf, ldq, xs, B, tmp, E, ACT_NONE, t, T);
#pragma omp barrier
#pragma omp for schedule(static)
            for (int b = 0; b < B; b++) {
                float *xb = x + (size_t)b * E;
                add_row(xb, tmp + (size_t)b * E, E);
                layer_norm(xb, E, L->ln2_w, L->ln2_b, m->eps, h + (size_t)b * E);
                if (quant) prep_row(&L->fc, h + (size_t)b * E, qbuf + (size_t)b * ldq, xs + b);
            }
            linear_share(&L->fc, h, E, qbuf, ldq, xs, B, f, I, m->act, t, T);
#pragma omp barrier
            if (quant) {
#pragma omp for schedule(static)
                for (int b = 0; b < B; b++)
                    prep_row(&L->mlp_proj, f + (size_t)b * I, qbuf + (size_t)b * ldq, xs + b);
            }
            linear_share(&L->mlp_proj, f, I, qbuf, ldq, xs, B, tmp, E, ACT_NONE, t, T);
#pragma omp barrier
#pragma omp for schedule(static)
            for (int b = 0; b < B; b++) add_row(x + (size_t)b * E, tmp + (size_t)b * E, E);
        }
#pragma omp for schedule(static)
        for (int b = 0; b < B; b++) {
            layer_norm(x + (size_t)b * E, E, m->lnf_w, m->lnf_b, m->eps, h + (size_t)b * E);
            if (quant) prep_row(&m->lm_head, h + (size_t)b * E, qbuf + (size_t)b * ldq, xs + b);
        }
        linear_share(&m->lm_head, h, E, qbuf, ldq, xs, B, logits, V, ACT_NONE, t, T);
    }
    free(ws);
    free(qbuf);
    return 0;
}

/* one product on its own (tests, benchmarks): out [M, n] = x [M, k] L^T (+ bias), through the same kernels */
int ci_linear(const Linear *L, const float *x, int M, float *out, int act, int nt) {
    uint8_t *q = NULL;
    float *xs = NULL;
    int ldq = 4 * L->kp;
    if (L->fmt == FMT_I8 && !(ci_features() & 2)) return -1;
    if (needs_prep(L->fmt)) {
        q = (uint8_t *)malloc((size_t)M * ldq + 64);
        xs = (float *)malloc((size_t)M * 4 + 64);
        if (!q || !xs) {
            free(q);
            free(xs);
            return -2;
        }
        for (int b = 0; b < M; b++) prep_row(L, x + (size_t)b * L->k, q + (size_t)b * ldq, xs + b);
    }
#pragma omp parallel num_threads(nt)
    linear_share(L, x, L->k, q, ldq, xs, M, out, L->n, act, omp_get_thread_num(), omp_get_num_threads());
    free(q);
    free(xs);
    return 0;
}

#else /* neither AVX-512 nor AVX2 in this build: the torch forward runs instead */

int ci_decode(const Model *m, int B, const int64_t *tokens, const int64_t *positions, const int64_t *slots,
              float *logits, int nt) {
    (void)m, (void)B, (void)tokens, (void)positions, (void)slots, (void)logits, (void)nt;
    return -1;
}

int ci_linear(const Linear *L, const float *x, int M, float *out, int act, int nt) {
    (void)L, (void)x, (void)M, (void)out, (void)act, (void)nt;
    return -1;
}

#endif
