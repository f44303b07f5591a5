/* score_ref.c - the scalar reference scorer: the oracle every fast kernel is tested against.
 * Straight from the math in kdrank_model.h, one candidate at a time, double accumulators,
 * no BLAS, no layout tricks. Slow on purpose: obviously correct is its only job. */
#include <math.h>
#include <stdlib.h>

#include "kdrank_model.h"

static float act(double v, float clip) {
  if (v < 0) v = 0;
  if (clip > 0 && v > clip) v = clip;
  return (float)v;
}

/* y(out) = act(W(out,in) x + b), or the raw value when last. */
static void dense_layer(const float *W, const float *b, const float *x, uint32_t in, uint32_t out,
                        float *y, float clip, int relu) {
  for (uint32_t o = 0; o < out; o++) {
    double s = b[o];
    for (uint32_t i = 0; i < in; i++) s += (double)W[(size_t)o * in + i] * x[i];
    y[o] = relu ? act(s, clip) : (float)s;
  }
}

/* Writes feature f's row r (dim floats) into x. */
static void feature_row(const struct kd_model *m, const struct kd_input *in, uint32_t f, uint64_t r, float *x) {
  const struct kd_feature *ft = &m->arch.features[f];
  const struct kd_column *c = &in->cols[f];
  if (ft->kind == KD_FEAT_DENSE) {
    for (uint32_t d = 0; d < ft->dim; d++) x[d] = c->floats[r * ft->dim + d];
    return;
  }
  uint64_t rows = ft->group == KD_GROUP_CONTEXT ? 1 : in->n_cand;
  size_t k = c->n_ids / rows;
  const float *emb = kd_model_emb(m, f);
  for (uint32_t d = 0; d < ft->dim; d++) {
    double s = 0;
    for (size_t j = 0; j < k; j++) s += emb[kd_hash_row(c->ids[r * k + j], ft->rows) * ft->dim + d];
    x[d] = (float)(s / (double)k);
  }
}

static int run(const struct kd_model *m, const struct kd_input *in, const uint32_t *tasks, uint32_t n_out,
               float *out, int served, struct kd_err *e) {
  const struct kd_arch *a = &m->arch;
  if (kd_input_check(a, in, e) != KD_OK) return e ? e->code : KD_ERR_INVALID;
  for (uint32_t t = 0; t < n_out; t++)
    if (tasks[t] >= a->n_tasks)
      return kd_err_set(e, KD_ERR_INVALID, "task index %u, expected < %u", tasks[t], a->n_tasks);
  uint32_t width = kd_arch_ctx_width(a) + kd_arch_cand_width(a), maxw = width;
  for (uint32_t l = 0; l < a->n_shared; l++) if (a->shared[l] > maxw) maxw = a->shared[l];
  for (uint32_t l = 0; l < a->n_tower; l++) if (a->tower[l] > maxw) maxw = a->tower[l];
  float *buf = malloc(sizeof(float) * 4 * (size_t)maxw);
  if (!buf) return kd_err_set(e, KD_ERR_NOMEM, "out of memory in the reference scorer");
  float *x = buf, *h = buf + maxw, *g = buf + 2 * (size_t)maxw, *g2 = buf + 3 * (size_t)maxw;
  for (uint32_t n = 0; n < in->n_cand; n++) {
    uint32_t off = 0;
    for (uint32_t grp = KD_GROUP_CONTEXT; grp <= KD_GROUP_CANDIDATE; grp++)
      for (uint32_t f = 0; f < a->n_features; f++) {
        if (a->features[f].group != grp) continue;
        feature_row(m, in, f, grp == KD_GROUP_CONTEXT ? 0 : n, x + off);
        off += a->features[f].dim;
      }
    uint32_t w = width;
    for (uint32_t l = 0; l < a->n_shared; l++) {
      dense_layer(kd_model_shared_w(m, l), kd_model_shared_b(m, l), x, w, a->shared[l], h, a->act_clip, 1);
      w = a->shared[l];
      float *tmp = x; x = h; h = tmp;
    }
    for (uint32_t t = 0; t < n_out; t++) {
      uint32_t k = tasks[t], gw = w;
      const float *src = x;
      for (uint32_t j = 0; j < a->n_tower; j++) {
        float *dst = (src == g) ? g2 : g;
        dense_layer(kd_model_tower_w(m, k, j), kd_model_tower_b(m, k, j), src, gw, a->tower[j], dst, a->act_clip, 1);
        gw = a->tower[j];
        src = dst;
      }
      float logit;
      dense_layer(kd_model_tower_w(m, k, a->n_tower), kd_model_tower_b(m, k, a->n_tower), src, gw, 1, &logit, 0, 0);
      float v = logit;
      if (served) {
        if (a->tasks[k].type == KD_TASK_BINARY) v = (float)(1.0 / (1.0 + exp(-(double)logit)));
        else if (a->tasks[k].xform == KD_XFORM_LOG1P) v = (float)expm1((double)logit);
      }
      out[(size_t)n * n_out + t] = v;
    }
  }
  free(buf);
  return KD_OK;
}

int kd_score_ref(const struct kd_model *m, const struct kd_input *in, const uint32_t *tasks, uint32_t n_out,
                 float *out, struct kd_err *e) {
  return run(m, in, tasks, n_out, out, 1, e);
}

int kd_logits_ref(const struct kd_model *m, const struct kd_input *in, const uint32_t *tasks, uint32_t n_out,
                  float *out, struct kd_err *e) {
  return run(m, in, tasks, n_out, out, 0, e);
}
