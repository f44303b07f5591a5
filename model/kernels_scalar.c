/* kernels_scalar.c - the fast path's portable kernels: plain C epilogues, BLAS gemv for the
 * small-batch layer. Used when the CPU lacks AVX2+FMA, or when KD_KERNEL_SCALAR is asked for. */
#include "kernels.h"

#include <cblas.h>
#include <math.h>

#include "kdrank_model.h"

static inline float act1(float v, int act, float clip) {
  if (act) {
    v = v > 0.0f ? v : 0.0f;
    if (clip > 0.0f && v > clip) v = clip;
  }
  return v;
}

static void scalar_bias_act(float *y, size_t rows, size_t ld, size_t w, const float *bias,
                            int act, float clip) {
  for (size_t r = 0; r < rows; r++) {
    float *yr = y + r * ld;
    for (size_t c = 0; c < w; c++) yr[c] = act1(yr[c] + bias[c], act, clip);
  }
}

static void scalar_layer_small(const float *w, size_t out, size_t in, const float *x, size_t ldx,
                               size_t nb, const float *bias, float *y, size_t ldy, int act,
                               float clip) {
  for (size_t r = 0; r < nb; r++) {
    if (in == 0) { /* e.g. a model without context features; BLAS rejects lda 0 */
      for (size_t o = 0; o < out; o++) y[r * ldy + o] = 0.0f;
      continue;
    }
    cblas_sgemv(CblasRowMajor, CblasNoTrans, (blasint)out, (blasint)in, 1.0f, w, (blasint)in,
                x + r * ldx, 1, 0.0f, y + r * ldy, 1);
  }
  scalar_bias_act(y, nb, ldy, out, bias, act, clip);
}

static void scalar_dot_rows(const float *g, size_t rows, size_t ldg, const float *u, size_t n,
                            float d, float *lt) {
  for (size_t r = 0; r < rows; r++) {
    const float *gr = g + r * ldg;
    float s = 0.0f;
    for (size_t c = 0; c < n; c++) s += gr[c] * u[c];
    lt[r] = s + d;
  }
}

static void scalar_xform(float *v, size_t n, int xform) {
  if (xform == KD_OUT_SIGMOID) {
    for (size_t i = 0; i < n; i++) v[i] = 1.0f / (1.0f + expf(-v[i]));
  } else if (xform == KD_OUT_EXPM1) {
    for (size_t i = 0; i < n; i++) v[i] = expm1f(v[i]);
  }
}

static void scalar_add(float *dst, const float *src, size_t n) {
  for (size_t i = 0; i < n; i++) dst[i] += src[i];
}

static void scalar_scale(float *v, size_t n, float s) {
  for (size_t i = 0; i < n; i++) v[i] *= s;
}

const struct kd_kernels kd_kernels_scalar = {
    .id = KD_KERNEL_SCALAR,
    .bias_act = scalar_bias_act,
    .layer_small = scalar_layer_small,
    .layer_panel = NULL, /* sgemm serves mid-size batches */
    .dot_rows = scalar_dot_rows,
    .xform = scalar_xform,
    .add = scalar_add,
    .scale = scalar_scale,
};
