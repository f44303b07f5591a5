/* tt_util.h - helpers for the trainer tests: a random in-memory table for an architecture. */
#ifndef TT_UTIL_H
#define TT_UTIL_H
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "kdrank_train.h"

static uint64_t tt_rng(uint64_t *s) {
  uint64_t z = (*s += 0x9E3779B97F4A7C15ull);
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return z ^ (z >> 31);
}
static double tt_unif(uint64_t *s) { return (double)(tt_rng(s) >> 11) * 0x1.0p-53; }

/* n rows; sparse rows get 1..kmax ids (kfix > 0: exactly kfix); same_ctx: every row has row 0's
 * context features. Labels: binary 0/1, regression ~ N(0.5, 1); every 7th label missing if holes. */
static int tt_table(struct kd_table *t, const struct kd_arch *a, uint64_t n, uint32_t kmax, uint32_t kfix,
                    int same_ctx, int holes, uint64_t seed) {
  struct kd_err e;
  if (kd_table_alloc(t, a, n, n * (kmax > kfix ? kmax : kfix), &e)) return -1;
  uint64_t s = seed;
  t->n = n;
  for (uint64_t r = 0; r < n; r++) {
    t->ids[r] = (int64_t)r;
    for (uint32_t f = 0; f < a->n_features; f++) {
      const struct kd_feature *ft = &a->features[f];
      uint64_t src = (same_ctx && ft->group == KD_GROUP_CONTEXT) ? 0 : r;
      if (ft->kind == KD_FEAT_DENSE) {
        for (uint32_t d = 0; d < ft->dim; d++)
          t->cols[f].dense[r * ft->dim + d] = src == r ? (float)(2 * tt_unif(&s) - 1) : t->cols[f].dense[d];
      } else {
        uint64_t o = t->cols[f].off[r];
        if (src != r) {
          uint64_t k = t->cols[f].off[1] - t->cols[f].off[0];
          for (uint64_t q = 0; q < k; q++) t->cols[f].ids[o + q] = t->cols[f].ids[q];
          t->cols[f].off[r + 1] = o + k;
          continue;
        }
        uint32_t k = kfix ? kfix : 1 + (uint32_t)(tt_rng(&s) % kmax);
        for (uint32_t q = 0; q < k; q++) t->cols[f].ids[o + q] = (int64_t)(tt_rng(&s) % 50);
        t->cols[f].off[r + 1] = o + k;
      }
    }
    for (uint32_t k = 0; k < a->n_tasks; k++) {
      float y = a->tasks[k].type == KD_TASK_BINARY ? (tt_unif(&s) < 0.4 ? 1.0f : 0.0f)
                                                    : (float)(0.5 + (2 * tt_unif(&s) - 1));
      if (holes && (r * 3 + k) % 7 == 0) y = NAN;
      t->labels[r * a->n_tasks + k] = y;
    }
  }
  return 0;
}

/* Default loss terms: BCE for binary, MSE (or Huber with delta) for regression, weights w. */
static void tt_losses(struct kd_train_params *p, const struct kd_arch *a, float huber) {
  p->n_loss = 0;
  for (uint32_t k = 0; k < a->n_tasks; k++) {
    struct kd_loss_term *lt = &p->loss[p->n_loss++];
    memset(lt, 0, sizeof *lt);
    lt->task = lt->target = k;
    lt->weight = 0.5f + 0.25f * (float)k;
    lt->kind = a->tasks[k].type == KD_TASK_BINARY ? KD_LOSS_BCE : (huber > 0 ? KD_LOSS_HUBER : KD_LOSS_MSE);
    lt->delta = huber;
  }
}
/* The batch loss at the current weights (gradients are computed too; the tests read them after). */
static double tt_loss_at(kd_trainer *t, const struct kd_table *tab, const uint64_t *rows, uint32_t n) {
  double l = NAN;
  struct kd_err e;
  if (kd_trainer_grad(t, tab, rows, n, &l, NULL, &e) != KD_OK) {
    fprintf(stderr, "kd_trainer_grad: %s\n", e.msg);
    exit(1);
  }
  return l;
}

/* Checks tensor ti's analytic gradient against central finite differences on about `samples`
 * evenly spaced elements (every element of small tensors). At a ReLU/clip kink within h, one
 * one-sided difference matches the (sub)gradient, so that passes too. Returns the number of
 * elements that disagree (printed with ctx); adds to *checked and *nonzero. */
static int tt_gradcheck_tensor(kd_trainer *t, struct kd_model *m, const struct kd_table *tab, const uint64_t *rows,
                               uint32_t n, uint32_t ti, uint64_t samples, const char *ctx, int *checked, int *nonzero) {
  struct kd_tensor_info inf;
  kd_arch_tensor(&m->arch, ti, &inf);
  float *an = malloc(inf.numel * sizeof(float));
  if (!an) exit(1);
  tt_loss_at(t, tab, rows, n);
  memcpy(an, kd_trainer_grad_tensor(t, ti), inf.numel * sizeof(float));
  uint64_t step = inf.numel > samples ? inf.numel / samples + 1 : 1;
  int bad = 0;
  for (uint64_t j = 0; j < inf.numel; j += step) {
    float *w = m->t[ti] + j, w0 = *w;
    int ok = 0;
    double fd = 0;
    for (int hi = 0; hi < 2 && !ok; hi++) {
      float h = hi ? 3e-4f : 2e-3f;
      *w = w0 + h;
      double lp = tt_loss_at(t, tab, rows, n);
      *w = w0 - h;
      double lm = tt_loss_at(t, tab, rows, n);
      *w = w0;
      double l0 = tt_loss_at(t, tab, rows, n);
      fd = (lp - lm) / (2.0 * h);
      ok = fabs(fd - an[j]) <= 1e-3 + 2e-2 * fabs(fd);
      double fp = (lp - l0) / h, fm = (l0 - lm) / h;
      ok |= fabs(fp - an[j]) <= 1e-3 + 2e-2 * fabs(fp) || fabs(fm - an[j]) <= 1e-3 + 2e-2 * fabs(fm);
    }
    *nonzero += an[j] != 0;
    (*checked)++;
    if (!ok) {
      bad++;
      fprintf(stderr, "grad %s[%llu]: analytic %.6g, finite difference %.6g (%s)\n", inf.name,
              (unsigned long long)j, an[j], fd, ctx);
    }
  }
  free(an);
  return bad;
}

#endif
