/* eval.c - evaluation metrics: exact ROC AUC with ties (rank-sum with average ranks), log loss,
 * calibration (mean prediction / mean label) for binary tasks; RMSE and calibration for regression. */
#include <math.h>
#include <stdlib.h>

#include "train_internal.h"

struct kd_sl {
  float s, y;
};
static int kd_sl_cmp(const void *a, const void *b) {
  float x = ((const struct kd_sl *)a)->s, y = ((const struct kd_sl *)b)->s;
  return (x > y) - (x < y);
}

double kd_auc(const float *score, const float *label, uint64_t n) {
  struct kd_sl *v = malloc((n ? n : 1) * sizeof *v);
  if (!v) return NAN;
  uint64_t m = 0;
  for (uint64_t i = 0; i < n; i++)
    if (!isnan(label[i]) && !isnan(score[i])) v[m++] = (struct kd_sl){score[i], label[i]};
  qsort(v, m, sizeof *v, kd_sl_cmp);
  /* sum of (average) ranks of the positives */
  double rank_sum = 0, npos = 0;
  for (uint64_t i = 0; i < m;) {
    uint64_t j = i;
    double pos = 0;
    while (j < m && v[j].s == v[i].s) pos += v[j++].y > 0.5f;
    double avg = 0.5 * ((double)i + 1 + (double)j); /* ranks i+1 .. j */
    rank_sum += pos * avg;
    npos += pos;
    i = j;
  }
  free(v);
  double nneg = (double)m - npos;
  if (npos == 0 || nneg == 0) return NAN;
  return (rank_sum - npos * (npos + 1) / 2) / (npos * nneg);
}

void kd_metrics_task(uint32_t type, const float *logits, size_t stride, const float *labels,
                     size_t lstride, uint64_t n, struct kd_task_metrics *out) {
  double sp = 0, sy = 0, ll = 0, se = 0;
  uint64_t m = 0;
  float *sc = malloc((n ? n : 1) * sizeof *sc), *lb = malloc((n ? n : 1) * sizeof *lb);
  for (uint64_t i = 0; i < n; i++) {
    float y = labels[i * lstride];
    if (isnan(y)) continue;
    double z = logits[i * stride];
    if (type == KD_TASK_BINARY) {
      double p = 1.0 / (1.0 + exp(-z));
      double pc = p < 1e-7 ? 1e-7 : (p > 1 - 1e-7 ? 1 - 1e-7 : p);
      ll += y > 0.5f ? -log(pc) : -log(1 - pc);
      sp += p;
      if (sc) {
        sc[m] = (float)z;
        lb[m] = y;
      }
    } else {
      se += (z - y) * (z - y);
      sp += z;
    }
    sy += y;
    m++;
  }
  out->n = m;
  out->mean_label = m ? sy / (double)m : NAN;
  out->mean_pred = m ? sp / (double)m : NAN;
  out->calib = m && sy != 0 ? sp / sy : NAN;
  if (type == KD_TASK_BINARY) {
    out->auc = sc && lb ? kd_auc(sc, lb, m) : NAN;
    out->logloss = m ? ll / (double)m : NAN;
    out->rmse = NAN;
  } else {
    out->auc = NAN;
    out->logloss = NAN;
    out->rmse = m ? sqrt(se / (double)m) : NAN;
  }
  free(sc);
  free(lb);
}
