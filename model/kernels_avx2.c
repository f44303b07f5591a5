/* kernels_avx2.c - the fast path's AVX2+FMA kernels (built with -mavx2 -mfma; only called after
 * kd_kernel_detect() saw both features). Same contracts as kernels.h; widths are multiples of 8
 * except in add/scale, which handle tails. exp() is a Cephes-style degree-6 polynomial after
 * range reduction (relative error ~2e-7 over the clamped range). */
#include "kernels.h"

#include <immintrin.h>
#include <math.h>

#include "kdrank_model.h"

/* ---- epilogues ---- */

static inline __m256 act8(__m256 v, int act, __m256 clipv, int do_clip) {
  if (act) {
    v = _mm256_max_ps(v, _mm256_setzero_ps());
    if (do_clip) v = _mm256_min_ps(v, clipv);
  }
  return v;
}

static void avx2_bias_act(float *y, size_t rows, size_t ld, size_t w, const float *bias, int act,
                          float clip) {
  const __m256 clipv = _mm256_set1_ps(clip);
  const int do_clip = clip > 0.0f;
  size_t w8 = w & ~(size_t)7;
  for (size_t r = 0; r < rows; r++) {
    float *yr = y + r * ld;
    size_t c = 0;
    for (; c < w8; c += 8) {
      __m256 v = _mm256_add_ps(_mm256_loadu_ps(yr + c), _mm256_loadu_ps(bias + c));
      _mm256_storeu_ps(yr + c, act8(v, act, clipv, do_clip));
    }
    for (; c < w; c++) {
      float v = yr[c] + bias[c];
      if (act) {
        v = v > 0.0f ? v : 0.0f;
        if (do_clip && v > clip) v = clip;
      }
      yr[c] = v;
    }
  }
}

/* Sums of 4 vectors' lanes: {sum a, sum b, sum c, sum d}. */
static inline __m128 hsum4(__m256 a, __m256 b, __m256 c, __m256 d) {
  __m256 ab = _mm256_hadd_ps(a, b);
  __m256 cd = _mm256_hadd_ps(c, d);
  __m256 abcd = _mm256_hadd_ps(ab, cd);
  return _mm_add_ps(_mm256_castps256_ps128(abcd), _mm256_extractf128_ps(abcd, 1));
}

static inline float hsum1(__m256 a) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(a), _mm256_extractf128_ps(a, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_movehdup_ps(s));
  return _mm_cvtss_f32(s);
}

static inline float act1(float v, int act, float clip) {
  if (act) {
    v = v > 0.0f ? v : 0.0f;
    if (clip > 0.0f && v > clip) v = clip;
  }
  return v;
}

/* ---- small-batch layer: NB rows x O outputs per step, weights read once per step ---- */

/* One block: rows 0..NB-1 of x, outputs o..o+O-1. acc[r][j] accumulates x_r . W_{o+j}. */
#define KD_SMALL_BLOCK(NB, O)                                                                  \
  static void small_##NB##x##O(const float *w, size_t out, size_t in, const float *x,        \
                               size_t ldx, const float *bias, float *y, size_t ldy, int act, \
                               float clip) {                                                 \
    for (size_t o = 0; o < out; o += (O)) {                                                  \
      __m256 acc[NB][O];                                                                     \
      for (int r = 0; r < (NB); r++)                                                         \
        for (int j = 0; j < (O); j++) acc[r][j] = _mm256_setzero_ps();                       \
      const float *wo = w + o * in;                                                          \
      for (size_t c = 0; c < in; c += 8) {                                                   \
        __m256 wv[O];                                                                        \
        for (int j = 0; j < (O); j++) wv[j] = _mm256_load_ps(wo + j * in + c);               \
        for (int r = 0; r < (NB); r++) {                                                     \
          __m256 xv = _mm256_loadu_ps(x + r * ldx + c);                                      \
          for (int j = 0; j < (O); j++) acc[r][j] = _mm256_fmadd_ps(wv[j], xv, acc[r][j]);   \
        }                                                                                    \
      }                                                                                      \
      float s[(NB) * (O)] __attribute__((aligned(32)));                                      \
      const __m256 *a = &acc[0][0];                                                          \
      for (int i = 0; i + 4 <= (NB) * (O); i += 4)                                           \
        _mm_store_ps(s + i, hsum4(a[i], a[i + 1], a[i + 2], a[i + 3]));                      \
      for (int r = 0; r < (NB); r++)                                                         \
        for (int j = 0; j < (O); j++)                                                        \
          y[r * ldy + o + j] = act1(s[r * (O) + j] + bias[o + j], act, clip);                \
    }                                                                                        \
  }

KD_SMALL_BLOCK(1, 8)
KD_SMALL_BLOCK(2, 4)
KD_SMALL_BLOCK(3, 4)
KD_SMALL_BLOCK(4, 2)

static void avx2_layer_small(const float *w, size_t out, size_t in, const float *x, size_t ldx,
                             size_t nb, const float *bias, float *y, size_t ldy, int act,
                             float clip) {
  switch (nb) {
  case 1: small_1x8(w, out, in, x, ldx, bias, y, ldy, act, clip); break;
  case 2: small_2x4(w, out, in, x, ldx, bias, y, ldy, act, clip); break;
  case 3: small_3x4(w, out, in, x, ldx, bias, y, ldy, act, clip); break;
  default: small_4x2(w, out, in, x, ldx, bias, y, ldy, act, clip); break;
  }
}

/* ---- mid-size batches: weights packed in 16-output panels at plan time ----
 * wp is (out/16, in, 16): panel p holds outputs 16p..16p+15 interleaved by input, so one input
 * step is two aligned loads. NB rows x 16 outputs of y live in 2*NB registers (NB <= 6); the
 * bias, ReLU and clip are applied before the single store, so y is written once. */

/* Scalar accumulators (not arrays: GCC spills arrays of vectors every iteration); the NB > r
 * tests are compile-time constants in each panel_<NB> instance. */
static inline __attribute__((always_inline)) void panel_rows(const int NB, const float *wp,
                                                             size_t in, const float *x,
                                                             size_t ldx, const float *bias,
                                                             float *y, size_t ldy, int act,
                                                             __m256 clipv, int do_clip) {
  const __m256 z = _mm256_setzero_ps();
  __m256 a00 = z, a01 = z, a10 = z, a11 = z, a20 = z, a21 = z, a30 = z, a31 = z, a40 = z,
         a41 = z, a50 = z, a51 = z;
  const float *x0 = x, *x1 = x + ldx, *x2 = x + 2 * ldx, *x3 = x + 3 * ldx, *x4 = x + 4 * ldx,
              *x5 = x + 5 * ldx;
#define KD_PANEL_ROW(r)                                                                        \
  if (NB > r) {                                                                                \
    __m256 xb = _mm256_broadcast_ss(x##r + i);                                                 \
    a##r##0 = _mm256_fmadd_ps(w0, xb, a##r##0);                                                \
    a##r##1 = _mm256_fmadd_ps(w1, xb, a##r##1);                                                \
  }
  for (size_t i = 0; i < in; i++) {
    __m256 w0 = _mm256_load_ps(wp + i * 16), w1 = _mm256_load_ps(wp + i * 16 + 8);
    KD_PANEL_ROW(0) KD_PANEL_ROW(1) KD_PANEL_ROW(2) KD_PANEL_ROW(3) KD_PANEL_ROW(4) KD_PANEL_ROW(5)
  }
#undef KD_PANEL_ROW
  __m256 b0 = _mm256_loadu_ps(bias), b1 = _mm256_loadu_ps(bias + 8);
#define KD_PANEL_STORE(r)                                                                      \
  if (NB > r) {                                                                                \
    _mm256_storeu_ps(y + r * ldy, act8(_mm256_add_ps(a##r##0, b0), act, clipv, do_clip));      \
    _mm256_storeu_ps(y + r * ldy + 8, act8(_mm256_add_ps(a##r##1, b1), act, clipv, do_clip));  \
  }
  KD_PANEL_STORE(0) KD_PANEL_STORE(1) KD_PANEL_STORE(2) KD_PANEL_STORE(3) KD_PANEL_STORE(4)
  KD_PANEL_STORE(5)
#undef KD_PANEL_STORE
}

#define KD_PANEL_BLOCK(NB)                                                                     \
  static void panel_##NB(const float *wp, size_t in, const float *x, size_t ldx,              \
                         const float *bias, float *y, size_t ldy, int act, __m256 clipv,      \
                         int do_clip) {                                                       \
    panel_rows(NB, wp, in, x, ldx, bias, y, ldy, act, clipv, do_clip);                        \
  }
KD_PANEL_BLOCK(1)
KD_PANEL_BLOCK(2)
KD_PANEL_BLOCK(3)
KD_PANEL_BLOCK(4)
KD_PANEL_BLOCK(5)
KD_PANEL_BLOCK(6)

static void avx2_layer_panel(const float *wp, size_t out, size_t in, const float *x, size_t ldx,
                             size_t rows, const float *bias, float *y, size_t ldy, int act,
                             float clip) {
  const __m256 clipv = _mm256_set1_ps(clip);
  const int do_clip = clip > 0.0f;
  for (size_t p = 0; p < out / 16; p++) {
    const float *w = wp + p * in * 16;
    const float *b = bias + p * 16;
    size_t r = 0;
    for (; r + 6 <= rows; r += 6) panel_6(w, in, x + r * ldx, ldx, b, y + r * ldy + p * 16, ldy, act, clipv, do_clip);
    switch (rows - r) {
    case 1: panel_1(w, in, x + r * ldx, ldx, b, y + r * ldy + p * 16, ldy, act, clipv, do_clip); break;
    case 2: panel_2(w, in, x + r * ldx, ldx, b, y + r * ldy + p * 16, ldy, act, clipv, do_clip); break;
    case 3: panel_3(w, in, x + r * ldx, ldx, b, y + r * ldy + p * 16, ldy, act, clipv, do_clip); break;
    case 4: panel_4(w, in, x + r * ldx, ldx, b, y + r * ldy + p * 16, ldy, act, clipv, do_clip); break;
    case 5: panel_5(w, in, x + r * ldx, ldx, b, y + r * ldy + p * 16, ldy, act, clipv, do_clip); break;
    default: break;
    }
  }
}

/* ---- logits ---- */

static void avx2_dot_rows(const float *g, size_t rows, size_t ldg, const float *u, size_t n,
                          float d, float *lt) {
  size_t r = 0;
  for (; r + 4 <= rows; r += 4) {
    const float *g0 = g + r * ldg;
    __m256 a0 = _mm256_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;
    for (size_t c = 0; c < n; c += 8) {
      __m256 uv = _mm256_loadu_ps(u + c);
      a0 = _mm256_fmadd_ps(_mm256_loadu_ps(g0 + c), uv, a0);
      a1 = _mm256_fmadd_ps(_mm256_loadu_ps(g0 + ldg + c), uv, a1);
      a2 = _mm256_fmadd_ps(_mm256_loadu_ps(g0 + 2 * ldg + c), uv, a2);
      a3 = _mm256_fmadd_ps(_mm256_loadu_ps(g0 + 3 * ldg + c), uv, a3);
    }
    _mm_storeu_ps(lt + r, _mm_add_ps(hsum4(a0, a1, a2, a3), _mm_set1_ps(d)));
  }
  for (; r < rows; r++) {
    const float *gr = g + r * ldg;
    __m256 a = _mm256_setzero_ps();
    for (size_t c = 0; c < n; c += 8) a = _mm256_fmadd_ps(_mm256_loadu_ps(gr + c), _mm256_loadu_ps(u + c), a);
    lt[r] = hsum1(a) + d;
  }
}

/* ---- exp / sigmoid / expm1 ---- */

/* exp(x) for x clamped to [-87.3, 88.0] (results stay normal floats); NaN propagates. */
static inline __m256 exp8(__m256 x) {
  x = _mm256_max_ps(_mm256_set1_ps(-87.3f), x); /* operand order: NaN in x passes through */
  x = _mm256_min_ps(_mm256_set1_ps(88.0f), x);
  __m256 fx = _mm256_fmadd_ps(x, _mm256_set1_ps(1.44269504088896341f), _mm256_set1_ps(0.5f));
  fx = _mm256_floor_ps(fx);
  x = _mm256_fnmadd_ps(fx, _mm256_set1_ps(0.693359375f), x);
  x = _mm256_fnmadd_ps(fx, _mm256_set1_ps(-2.12194440e-4f), x);
  __m256 y = _mm256_set1_ps(1.9875691500E-4f);
  y = _mm256_fmadd_ps(y, x, _mm256_set1_ps(1.3981999507E-3f));
  y = _mm256_fmadd_ps(y, x, _mm256_set1_ps(8.3334519073E-3f));
  y = _mm256_fmadd_ps(y, x, _mm256_set1_ps(4.1665795894E-2f));
  y = _mm256_fmadd_ps(y, x, _mm256_set1_ps(1.6666665459E-1f));
  y = _mm256_fmadd_ps(y, x, _mm256_set1_ps(5.0000001201E-1f));
  y = _mm256_fmadd_ps(y, _mm256_mul_ps(x, x), _mm256_add_ps(x, _mm256_set1_ps(1.0f)));
  __m256i n = _mm256_cvttps_epi32(fx);
  n = _mm256_slli_epi32(_mm256_add_epi32(n, _mm256_set1_epi32(127)), 23);
  return _mm256_mul_ps(y, _mm256_castsi256_ps(n));
}

static inline __m256 sigmoid8(__m256 v) {
  __m256 e = exp8(_mm256_sub_ps(_mm256_setzero_ps(), v));
  return _mm256_div_ps(_mm256_set1_ps(1.0f), _mm256_add_ps(_mm256_set1_ps(1.0f), e));
}

/* expm1: a Taylor polynomial to x^8 for |x| < 0.5 (no cancellation; error < 6e-9), else
 * exp(x) - 1. Lanes above 88 (overflow) fall back to libm so infinities match. */
static inline __m256 expm1_8(__m256 x) {
  __m256 p = _mm256_set1_ps(1.0f / 40320.0f);
  p = _mm256_fmadd_ps(p, x, _mm256_set1_ps(1.0f / 5040.0f));
  p = _mm256_fmadd_ps(p, x, _mm256_set1_ps(1.0f / 720.0f));
  p = _mm256_fmadd_ps(p, x, _mm256_set1_ps(1.0f / 120.0f));
  p = _mm256_fmadd_ps(p, x, _mm256_set1_ps(1.0f / 24.0f));
  p = _mm256_fmadd_ps(p, x, _mm256_set1_ps(1.0f / 6.0f));
  p = _mm256_fmadd_ps(p, x, _mm256_set1_ps(0.5f));
  p = _mm256_fmadd_ps(_mm256_mul_ps(p, x), x, x);
  __m256 e = _mm256_sub_ps(exp8(x), _mm256_set1_ps(1.0f));
  __m256 ax = _mm256_andnot_ps(_mm256_set1_ps(-0.0f), x);
  __m256 small = _mm256_cmp_ps(ax, _mm256_set1_ps(0.5f), _CMP_LT_OQ);
  return _mm256_blendv_ps(e, p, small);
}

static void avx2_xform(float *v, size_t n, int xform) {
  if (xform != KD_OUT_SIGMOID && xform != KD_OUT_EXPM1) return;
  size_t i = 0;
  for (; i + 8 <= n; i += 8) {
    __m256 x = _mm256_loadu_ps(v + i);
    if (xform == KD_OUT_SIGMOID) {
      _mm256_storeu_ps(v + i, sigmoid8(x));
    } else if (_mm256_movemask_ps(_mm256_cmp_ps(x, _mm256_set1_ps(88.0f), _CMP_GT_OQ))) {
      for (size_t j = i; j < i + 8; j++) v[j] = expm1f(v[j]);
    } else {
      _mm256_storeu_ps(v + i, expm1_8(x));
    }
  }
  for (; i < n; i++) v[i] = xform == KD_OUT_SIGMOID ? 1.0f / (1.0f + expf(-v[i])) : expm1f(v[i]);
}

/* ---- pooling ---- */

static void avx2_add(float *dst, const float *src, size_t n) {
  size_t i = 0;
  for (; i + 8 <= n; i += 8)
    _mm256_storeu_ps(dst + i, _mm256_add_ps(_mm256_loadu_ps(dst + i), _mm256_loadu_ps(src + i)));
  for (; i < n; i++) dst[i] += src[i];
}

static void avx2_scale(float *v, size_t n, float s) {
  const __m256 sv = _mm256_set1_ps(s);
  size_t i = 0;
  for (; i + 8 <= n; i += 8) _mm256_storeu_ps(v + i, _mm256_mul_ps(_mm256_loadu_ps(v + i), sv));
  for (; i < n; i++) v[i] *= s;
}

const struct kd_kernels kd_kernels_avx2 = {
    .id = KD_KERNEL_AVX2,
    .bias_act = avx2_bias_act,
    .layer_small = avx2_layer_small,
    .layer_panel = avx2_layer_panel,
    .dot_rows = avx2_dot_rows,
    .xform = avx2_xform,
    .add = avx2_add,
    .scale = avx2_scale,
};
