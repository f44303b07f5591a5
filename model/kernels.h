/* kernels.h - private: the fast path's ISA-specific kernels behind one dispatch table.
 *
 * Two implementations sit side by side: kernels_scalar.c (plain C; the fallback on any x86-64)
 * and kernels_avx2.c (AVX2+FMA, compiled with -mavx2 -mfma and only called when the CPU has
 * both). score_fast.c picks one table once, when a plan is created.
 *
 * Conventions shared by every kernel:
 *  - weights are (out, in) row-major with both dims padded to KD_PAD floats by zeros;
 *  - activations are row-major (rows, width) with a row stride `ld` (floats); pads hold zeros;
 *  - `act`: 0 = identity, 1 = ReLU, then min(v, clip) when clip > 0.
 * None allocates; all are single-threaded and reentrant.
 */
#ifndef KD_KERNELS_H
#define KD_KERNELS_H

#include <stddef.h>
#include <stdint.h>

/* Every padded width is a multiple of this many floats (one AVX2 register = 8; 16 keeps each
 * weight row 64-byte aligned when the matrix is). */
#define KD_PAD 16
static inline uint32_t kd_pad(uint32_t n) { return (n + KD_PAD - 1) / KD_PAD * KD_PAD; }

/* Largest row count the small-batch kernel takes in one call (rows share each weight load). */
#define KD_SMALL_ROWS 4

enum kd_out_xform { KD_OUT_LOGIT = 0, KD_OUT_SIGMOID = 1, KD_OUT_EXPM1 = 2 };

struct kd_kernels {
  int id; /* enum kd_kernel */
  /* y (rows, w; stride ld) = act(y + bias) where bias is (w). */
  void (*bias_act)(float *y, size_t rows, size_t ld, size_t w, const float *bias, int act,
                   float clip);
  /* Small-batch layer: y (nb, out; stride ldy) = act(x (nb, in; stride ldx) . W^T + bias);
   * W (out, in) row-major, out and in multiples of 8, 1 <= nb <= KD_SMALL_ROWS.
   * Each weight row is read once for all nb rows. */
  void (*layer_small)(const float *w, size_t out, size_t in, const float *x, size_t ldx,
                      size_t nb, const float *bias, float *y, size_t ldy, int act, float clip);
  /* Mid-size batches (any rows): same result as layer_small, weights wp packed in 16-output
   * panels (out/16, in, 16) at plan time; out a multiple of 16. NULL when the kernel set
   * has none (then sgemm is used). */
  void (*layer_panel)(const float *wp, size_t out, size_t in, const float *x, size_t ldx,
                      size_t rows, const float *bias, float *y, size_t ldy, int act, float clip);
  /* Logits, task-major: lt[r] = g[r*ldg + 0..n) . u + d for r < rows; n a multiple of 8. */
  void (*dot_rows)(const float *g, size_t rows, size_t ldg, const float *u, size_t n, float d,
                   float *lt);
  /* In place on v (n): KD_OUT_SIGMOID -> 1/(1+exp(-v)), KD_OUT_EXPM1 -> exp(v)-1, else as is. */
  void (*xform)(float *v, size_t n, int xform);
  /* dst (n) += src (n) (sparse mean pooling: sum, then scale). */
  void (*add)(float *dst, const float *src, size_t n);
  /* v (n) *= s. */
  void (*scale)(float *v, size_t n, float s);
};

/* kd_scratch_create with the fast path's tuning made explicit (benchmarks and tests):
 * chunk = candidates per pass through the network (0: default), small_batch = largest chunk
 * scored with layer_small (0: never), panel_batch = largest chunk scored with layer_panel when
 * the kernel set has it (0: never); bigger chunks use sgemm. Defined in score_fast.c. */
struct kd_plan;
struct kd_scratch;
struct kd_err;
struct kd_scratch *kd_scratch_create_tuned(const struct kd_plan *p, uint32_t max_cand,
                                           uint32_t chunk, uint32_t small_batch,
                                           uint32_t panel_batch, struct kd_err *e);

extern const struct kd_kernels kd_kernels_scalar;
extern const struct kd_kernels kd_kernels_avx2;

#endif
