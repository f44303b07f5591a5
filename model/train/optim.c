/* optim.c - optimizer defaults, learning-rate schedules, and Clippy (Tang et al. 2023) exactly as
 * in distillation.md: P = 1/sqrt(A + eps) with A from before the step, delta = lr G P,
 * M_i = rel |W_i| + acc P_i + abs, one scale s = min(1, min_i M_i/|delta_i|) per tensor (per step's
 * touched rows for embeddings), W -= s delta, A += G^2 (or (s G)^2). */
#include <math.h>
#include <string.h>

#include "train_internal.h"

struct kd_opt_params kd_opt_defaults(uint32_t kind) {
  struct kd_opt_params p;
  memset(&p, 0, sizeof p);
  p.kind = kind;
  p.beta1 = 0.9f;
  p.beta2 = 0.999f;
  p.eps = 1e-8f;
  p.adagrad_eps = 1e-10f;
  p.clippy_rel = 0.1f;
  p.clippy_acc = 0.0f;
  p.clippy_abs = 1e-7f;
  p.clippy_eps = 1e-7f;
  p.min_lr_ratio = 0.0f;
  switch (kind) {
  case KD_OPT_ADAGRAD: p.lr = 0.05f; p.init_acc = 0.0f; break;
  case KD_OPT_CLIPPY: p.lr = 0.001f; p.init_acc = 0.1f; break;
  case KD_OPT_SGD: p.lr = 0.01f; break;
  default: p.lr = 0.001f; break;
  }
  return p;
}

double kd_opt_lr_at(const struct kd_opt_params *p, uint64_t step) {
  double lr = p->lr;
  if (p->warmup > 0 && step < p->warmup) return lr * (double)(step + 1) / (double)p->warmup;
  if (p->sched == KD_SCHED_CONSTANT || p->total_steps == 0) {
    if (p->sched == KD_SCHED_INVSQRT && p->warmup > 0) return lr * sqrt((double)p->warmup / (double)(step + 1));
    return lr;
  }
  double lo = lr * p->min_lr_ratio;
  uint64_t span = p->total_steps > p->warmup ? p->total_steps - p->warmup : 1;
  double f = (double)(step - p->warmup) / (double)span;
  if (f > 1) f = 1;
  switch (p->sched) {
  case KD_SCHED_COSINE: return lo + (lr - lo) * 0.5 * (1 + cos(3.141592653589793 * f));
  case KD_SCHED_LINEAR: return lo + (lr - lo) * (1 - f);
  case KD_SCHED_INVSQRT: return lr * sqrt((double)(p->warmup ? p->warmup : 1) / (double)(step + 1));
  default: return lr;
  }
}

double kd_clippy_scale(const float *delta, size_t n, const float *ref0, float f0, const float *ref1,
                       float f1, float abs_factor) {
  double s = 1.0;
  for (size_t i = 0; i < n; i++) {
    if (delta[i] == 0.0f) continue;
    double mx = (double)abs_factor + (double)f0 * fabs((double)ref0[i]);
    if (ref1) mx += (double)f1 * fabs((double)ref1[i]);
    double r = mx / fabs((double)delta[i]);
    if (r < s) s = r;
  }
  return s;
}

/* Shared by the dense and row versions: visit elements through an index function. */
double kd_clippy_step(float *w, float *acc, const float *g, size_t n, float lr,
                      const struct kd_opt_params *p) {
  /* pass 1: the scale, from delta_i = lr g_i P_i and M_i = rel|w_i| + acc_f P_i + abs */
  double s = 1.0;
  for (size_t i = 0; i < n; i++) {
    double P = 1.0 / sqrt((double)acc[i] + p->clippy_eps);
    double d = (double)lr * g[i] * P;
    if (d == 0.0) continue;
    double mx = p->clippy_rel * fabs((double)w[i]) + p->clippy_acc * P + p->clippy_abs;
    double r = mx / fabs(d);
    if (r < s) s = r;
  }
  /* pass 2: apply with the accumulator from before the step, then update it */
  for (size_t i = 0; i < n; i++) {
    double P = 1.0 / sqrt((double)acc[i] + p->clippy_eps);
    double d = (double)lr * g[i] * P;
    w[i] = (float)((double)w[i] - s * d);
    double gu = p->clippy_clip_acc ? s * g[i] : g[i];
    acc[i] = (float)((double)acc[i] + gu * gu);
  }
  return s;
}

double kd_clippy_step_rows(float *w, float *acc, const float *g, const uint64_t *rows, size_t n_rows,
                           uint32_t dim, float lr, const struct kd_opt_params *p) {
  double s = 1.0;
  for (size_t r = 0; r < n_rows; r++) {
    size_t at = rows[r] * dim;
    const float *gr = g + r * dim;
    for (uint32_t d = 0; d < dim; d++) {
      double P = 1.0 / sqrt((double)acc[at + d] + p->clippy_eps);
      double dl = (double)lr * gr[d] * P;
      if (dl == 0.0) continue;
      double mx = p->clippy_rel * fabs((double)w[at + d]) + p->clippy_acc * P + p->clippy_abs;
      double q = mx / fabs(dl);
      if (q < s) s = q;
    }
  }
  for (size_t r = 0; r < n_rows; r++) {
    size_t at = rows[r] * dim;
    const float *gr = g + r * dim;
    for (uint32_t d = 0; d < dim; d++) {
      double P = 1.0 / sqrt((double)acc[at + d] + p->clippy_eps);
      double dl = (double)lr * gr[d] * P;
      w[at + d] = (float)((double)w[at + d] - s * dl);
      double gu = p->clippy_clip_acc ? s * gr[d] : gr[d];
      acc[at + d] = (float)((double)acc[at + d] + gu * gu);
    }
  }
  return s;
}
