/* trainer.c - the training network: batched forward/backward with BLAS (cblas_sgemm), data-parallel
 * over worker threads with a fixed-order gradient reduction (deterministic for seed + threads),
 * sparse embedding-row gradients, loss terms, and the optimizer step.
 *
 * A batch of n rows is cut into T contiguous shards; worker w runs forward+backward on shard w into
 * its own buffers; the reduction then sums shard gradients in shard order (dense tensors split by
 * slices, embedding tables split by feature), so the sum order depends only on T. */
#include <math.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include <cblas.h>

#include "train_internal.h"

#define KD_ALIGN_F 16 /* tensors in the gradient block start on 64-byte boundaries */

struct kd_ws {            /* one worker's buffers, sized for cap rows */
  uint32_t cap;
  float *x;               /* (cap, in0) network input */
  float *z[KD_MAX_LAYERS], *h[KD_MAX_LAYERS]; /* shared layer l: (cap, shared[l]) pre/post act */
  float *tz[KD_MAX_TASKS][KD_MAX_LAYERS];     /* tower hidden j of task k: (cap, tower[j]) */
  float *th[KD_MAX_TASKS][KD_MAX_LAYERS];
  float *logit;           /* (n_tasks, cap) task-major */
  float *dlogit;          /* (n_tasks, cap) */
  float *dtop;            /* (cap, shared_last): d loss / d h_last summed over towers */
  float *da, *db;         /* (cap, maxw) backprop scratch */
  float *dx;              /* (cap, in0) d loss / d x (embedding gradients come from it) */
  float *grad;            /* dense gradient block, offsets goff[] */
  const uint64_t *rows;   /* this shard's rows */
  uint32_t m;             /* rows in this shard */
  double term_loss[2 * KD_MAX_TASKS]; /* sum of unweighted loss over own labelled rows */
};

struct kd_trainer {
  struct kd_model *m;
  struct kd_arch a;
  struct kd_train_params p;
  uint32_t T, in0, maxw, n_ten;
  uint32_t xo[KD_MAX_FEATURES];   /* column offset of each feature in x */
  int32_t emb_of[KD_MAX_FEATURES]; /* tensor index of feature f's embedding, or -1 */
  uint64_t goff[KD_MAX_FEATURES + 2 * KD_MAX_LAYERS + 2 * KD_MAX_TASKS * (KD_MAX_LAYERS + 1)];
  uint64_t gsize;                 /* floats in a dense gradient block */
  struct kd_ws ws[16];
  /* embedding gradients: full tables, only touched rows non-zero */
  /* embedding gradients, compact: slot s of feature f holds the gradient of row touched[f][s] */
  float *cg[KD_MAX_FEATURES];     /* (touched_cap, dim) */
  uint32_t *stamp[KD_MAX_FEATURES]; /* (rows) grad call that last touched the row */
  uint32_t *slot[KD_MAX_FEATURES];  /* (rows) the row's slot in this grad call (valid if stamped) */
  float *eg[KD_MAX_FEATURES];     /* (rows, dim) full-shape copy, built only for kd_trainer_grad_tensor */
  uint64_t *touched[KD_MAX_FEATURES], n_touched[KD_MAX_FEATURES], touched_cap[KD_MAX_FEATURES];
  uint32_t gen;                   /* grad call counter (stamps) */
  /* hashed embedding rows of the tables in use (two slots: e.g. train and test), so ids are hashed
   * once per table, not once per step; keyed by table address, size and fingerprint */
  struct kd_rowcache {
    const struct kd_table *tab;
    uint64_t n, fp, use;
    uint64_t *rows[KD_MAX_FEATURES]; /* (off[n]) kd_hash_row of each id */
  } rc[2];
  uint64_t rc_clock;
  int oom;                        /* a touched-row list could not grow during this step */
  uint64_t *const *hrows;         /* rows[] of the current table */
  /* optimizer state: same layout as the model's tensors */
  float *s1[KD_MAX_FEATURES + 2 * KD_MAX_LAYERS + 2 * KD_MAX_TASKS * (KD_MAX_LAYERS + 1)];
  float *s2[KD_MAX_FEATURES + 2 * KD_MAX_LAYERS + 2 * KD_MAX_TASKS * (KD_MAX_LAYERS + 1)];
  uint64_t step;
  double last_norm;
  /* current batch */
  const struct kd_table *tab;
  const uint64_t *rows;
  uint32_t n;
  double term_w[2 * KD_MAX_TASKS]; /* weight / labelled count of each term in this batch */
  int fwd_only;
  double ss_part[16];             /* per worker: sum of squared gradients of its reduce share */
  double lr_now;                  /* this step's learning rate */
  float gscale;                   /* this step's gradient-norm clip factor (1: none) */
  /* thread pool */
  pthread_t th[16];
  pthread_mutex_t mu;
  pthread_cond_t cv_go, cv_done;
  uint64_t job_gen;
  uint32_t pending;
  int job, quit, pool_up;
};

enum { KD_JOB_FWDBWD = 1, KD_JOB_REDUCE = 2, KD_JOB_UPDATE = 3 };

static size_t kd_al(size_t n) { return (n + KD_ALIGN_F - 1) / KD_ALIGN_F * KD_ALIGN_F; }

static float *kd_falloc(size_t n) {
  void *p = NULL;
  if (posix_memalign(&p, 64, kd_al(n ? n : 1) * sizeof(float))) return NULL;
  memset(p, 0, kd_al(n ? n : 1) * sizeof(float));
  return p;
}

static uint32_t kd_layer_in(const struct kd_trainer *t, uint32_t l) {
  return l == 0 ? t->in0 : t->a.shared[l - 1];
}

/* Tensor index of tower layer j of task k (weight; bias is +1). */
static uint32_t kd_ti_tower(const struct kd_trainer *t, uint32_t k, uint32_t j) {
  uint32_t n_emb = 0;
  for (uint32_t f = 0; f < t->a.n_features; f++) n_emb += t->a.features[f].kind == KD_FEAT_SPARSE;
  return n_emb + 2 * t->a.n_shared + k * 2 * (t->a.n_tower + 1) + 2 * j;
}
static uint32_t kd_ti_shared(const struct kd_trainer *t, uint32_t l) {
  uint32_t n_emb = 0;
  for (uint32_t f = 0; f < t->a.n_features; f++) n_emb += t->a.features[f].kind == KD_FEAT_SPARSE;
  return n_emb + 2 * l;
}

/* ---------------------------------------------------------------- losses */
double kd_loss_eval(uint32_t kind, float delta, float z, float y, float *d) {
  double r = (double)z - (double)y;
  switch (kind) {
  case KD_LOSS_BCE: {
    double zz = z;
    double l = (zz > 0 ? zz : 0) - zz * y + log1p(exp(-fabs(zz)));
    *d = (float)(1.0 / (1.0 + exp(-zz)) - y);
    return l;
  }
  case KD_LOSS_HUBER:
    if (fabs(r) < delta) {
      *d = (float)r;
      return 0.5 * r * r;
    }
    *d = r > 0 ? delta : -delta;
    return delta * (fabs(r) - 0.5 * delta);
  default:
    *d = (float)(2 * r);
    return r * r;
  }
}

/* ---------------------------------------------------------------- forward / backward of a shard */
static void kd_linear_fwd(const float *in, uint32_t m, uint32_t din, const float *w, const float *b,
                          uint32_t dout, float *z) {
  for (uint32_t i = 0; i < m; i++) memcpy(z + (size_t)i * dout, b, dout * sizeof(float));
  cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, (int)m, (int)dout, (int)din, 1.0f, in,
              (int)din, w, (int)din, 1.0f, z, (int)dout);
}

static void kd_act(const float *z, float *h, size_t n, float clip) {
  if (clip > 0) {
    for (size_t i = 0; i < n; i++) {
      float v = z[i] > 0.0f ? z[i] : 0.0f;
      h[i] = v < clip ? v : clip;
    }
  } else {
    for (size_t i = 0; i < n; i++) h[i] = z[i] > 0.0f ? z[i] : 0.0f;
  }
}

/* dz = dh where the activation passes gradient (0 < z, z <= clip), else 0 (torch's relu/clamp).
 * Written branch-free so the compiler vectorises it. */
static void kd_act_bwd(const float *restrict z, const float *restrict dh, float *restrict dz, size_t n,
                       float clip) {
  if (clip > 0) {
    for (size_t i = 0; i < n; i++) {
      float d = dh[i]; /* loaded unconditionally so the select vectorises */
      dz[i] = (z[i] > 0.0f) & (z[i] <= clip) ? d : 0.0f;
    }
  } else {
    for (size_t i = 0; i < n; i++) {
      float d = dh[i];
      dz[i] = z[i] > 0.0f ? d : 0.0f;
    }
  }
}

/* gw (dout, din) = dz^T in; gb (dout) = column sums of dz; din_out (m, din) (+)= dz w. */
static void kd_linear_bwd(const float *in, uint32_t m, uint32_t din, const float *w, uint32_t dout,
                          const float *dz, float *gw, float *gb, float *dinp, float beta) {
  cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, (int)dout, (int)din, (int)m, 1.0f, dz,
              (int)dout, in, (int)din, 0.0f, gw, (int)din);
  memset(gb, 0, dout * sizeof(float));
  for (uint32_t i = 0; i < m; i++) {
    const float *r = dz + (size_t)i * dout;
    for (uint32_t o = 0; o < dout; o++) gb[o] += r[o];
  }
  if (dinp)
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, (int)m, (int)din, (int)dout, 1.0f, dz,
                (int)dout, w, (int)din, beta, dinp, (int)din);
}

static void kd_fill_x(struct kd_trainer *t, struct kd_ws *w) {
  const struct kd_table *tab = t->tab;
  for (uint32_t i = 0; i < w->m; i++) {
    uint64_t r = w->rows[i];
    float *x = w->x + (size_t)i * t->in0;
    for (uint32_t f = 0; f < t->a.n_features; f++) {
      const struct kd_feature *ft = &t->a.features[f];
      float *dst = x + t->xo[f];
      if (ft->kind == KD_FEAT_DENSE) {
        memcpy(dst, tab->cols[f].dense + r * ft->dim, ft->dim * sizeof(float));
        continue;
      }
      memset(dst, 0, ft->dim * sizeof(float));
      uint64_t a = tab->cols[f].off[r], b = tab->cols[f].off[r + 1];
      if (a == b) continue;
      const float *emb = t->m->t[t->emb_of[f]];
      const uint64_t *hr = t->hrows[f];
      for (uint64_t q = a; q < b; q++) {
        const float *er = emb + hr[q] * ft->dim;
        for (uint32_t d = 0; d < ft->dim; d++) dst[d] += er[d];
      }
      float inv = 1.0f / (float)(b - a);
      for (uint32_t d = 0; d < ft->dim; d++) dst[d] *= inv;
    }
  }
}

static void kd_shard_forward(struct kd_trainer *t, struct kd_ws *w) {
  const struct kd_arch *a = &t->a;
  struct kd_model *md = t->m;
  uint32_t m = w->m;
  kd_fill_x(t, w);
  const float *in = w->x;
  for (uint32_t l = 0; l < a->n_shared; l++) {
    uint32_t ti = kd_ti_shared(t, l);
    kd_linear_fwd(in, m, kd_layer_in(t, l), md->t[ti], md->t[ti + 1], a->shared[l], w->z[l]);
    kd_act(w->z[l], w->h[l], (size_t)m * a->shared[l], a->act_clip);
    in = w->h[l];
  }
  const float *top = in;
  uint32_t topw = a->shared[a->n_shared - 1];
  for (uint32_t k = 0; k < a->n_tasks; k++) {
    const float *g = top;
    uint32_t gw = topw;
    for (uint32_t j = 0; j < a->n_tower; j++) {
      uint32_t ti = kd_ti_tower(t, k, j);
      kd_linear_fwd(g, m, gw, md->t[ti], md->t[ti + 1], a->tower[j], w->tz[k][j]);
      kd_act(w->tz[k][j], w->th[k][j], (size_t)m * a->tower[j], a->act_clip);
      g = w->th[k][j];
      gw = a->tower[j];
    }
    uint32_t ti = kd_ti_tower(t, k, a->n_tower);
    kd_linear_fwd(g, m, gw, md->t[ti], md->t[ti + 1], 1, w->logit + (size_t)k * w->cap);
  }
}

static void kd_shard_backward(struct kd_trainer *t, struct kd_ws *w) {
  const struct kd_arch *a = &t->a;
  struct kd_model *md = t->m;
  const struct kd_table *tab = t->tab;
  uint32_t m = w->m;
  /* d loss / d logit from the loss terms */
  memset(w->dlogit, 0, (size_t)a->n_tasks * w->cap * sizeof(float));
  for (uint32_t q = 0; q < t->p.n_loss; q++) {
    const struct kd_loss_term *lt = &t->p.loss[q];
    w->term_loss[q] = 0;
    if (t->term_w[q] == 0) continue;
    float *dl = w->dlogit + (size_t)lt->task * w->cap;
    const float *lg = w->logit + (size_t)lt->task * w->cap;
    double s = 0;
    for (uint32_t i = 0; i < m; i++) {
      float y = tab->labels[w->rows[i] * tab->n_tasks + lt->target];
      if (isnan(y)) continue;
      float d;
      s += kd_loss_eval(lt->kind, lt->delta, lg[i], y, &d);
      dl[i] += (float)(t->term_w[q] * d);
    }
    w->term_loss[q] = s;
  }
  const float *top = a->n_shared ? w->h[a->n_shared - 1] : w->x;
  uint32_t topw = a->shared[a->n_shared - 1];
  for (uint32_t k = 0; k < a->n_tasks; k++) {
    /* last layer (out 1) */
    uint32_t j = a->n_tower;
    const float *gin = j ? w->th[k][j - 1] : top;
    uint32_t gdin = j ? a->tower[j - 1] : topw;
    uint32_t ti = kd_ti_tower(t, k, j);
    float *dcur = j ? w->da : w->dtop;
    kd_linear_bwd(gin, m, gdin, md->t[ti], 1, w->dlogit + (size_t)k * w->cap, w->grad + t->goff[ti],
                  w->grad + t->goff[ti + 1], dcur, (j == 0 && k > 0) ? 1.0f : 0.0f);
    while (j-- > 0) {
      /* dcur = d loss / d th[k][j] */
      kd_act_bwd(w->tz[k][j], dcur, w->db, (size_t)m * a->tower[j], a->act_clip);
      gin = j ? w->th[k][j - 1] : top;
      gdin = j ? a->tower[j - 1] : topw;
      ti = kd_ti_tower(t, k, j);
      float *dnext = j ? w->da : w->dtop;
      kd_linear_bwd(gin, m, gdin, md->t[ti], a->tower[j], w->db, w->grad + t->goff[ti],
                    w->grad + t->goff[ti + 1], dnext, (j == 0 && k > 0) ? 1.0f : 0.0f);
      dcur = dnext;
    }
  }
  /* shared layers, top down; dh = d loss / d h[l] */
  const float *dh = w->dtop;
  int need_dx = 0;
  for (uint32_t f = 0; f < a->n_features; f++) need_dx |= a->features[f].kind == KD_FEAT_SPARSE;
  for (uint32_t l = a->n_shared; l-- > 0;) {
    float *dz = (dh == w->da) ? w->db : w->da;
    kd_act_bwd(w->z[l], dh, dz, (size_t)m * a->shared[l], a->act_clip);
    uint32_t ti = kd_ti_shared(t, l);
    const float *in = l ? w->h[l - 1] : w->x;
    float *dinp = l ? (dz == w->da ? w->db : w->da) : (need_dx ? w->dx : NULL);
    kd_linear_bwd(in, m, kd_layer_in(t, l), md->t[ti], a->shared[l], dz, w->grad + t->goff[ti],
                  w->grad + t->goff[ti + 1], dinp, 0.0f);
    dh = dinp;
  }
}

/* ---------------------------------------------------------------- reduction */
/* The compact gradient row of (feature f, row) for this grad call, zeroed when first touched;
 * NULL when the slot list cannot grow (reported by kd_trainer_grad). */
static float *kd_touch(struct kd_trainer *t, uint32_t f, uint64_t row) {
  uint32_t dim = t->a.features[f].dim;
  if (t->stamp[f][row] == t->gen) return t->cg[f] + (size_t)t->slot[f][row] * dim;
  if (t->n_touched[f] == t->touched_cap[f]) {
    uint64_t nc = t->touched_cap[f] * 2 + 64;
    uint64_t *np = realloc(t->touched[f], nc * sizeof *np);
    if (np) t->touched[f] = np;
    float *ng = np ? realloc(t->cg[f], nc * dim * sizeof *ng) : NULL;
    if (!ng) {
      t->oom = 1;
      return NULL;
    }
    t->cg[f] = ng;
    t->touched_cap[f] = nc;
  }
  uint64_t s = t->n_touched[f]++;
  t->stamp[f][row] = t->gen;
  t->slot[f][row] = (uint32_t)s;
  t->touched[f][s] = row;
  float *dst = t->cg[f] + s * dim;
  memset(dst, 0, dim * sizeof(float));
  return dst;
}

static void kd_reduce(struct kd_trainer *t, uint32_t tid) {
  /* dense: slice tid of the block, summed over shards in shard order */
  uint64_t lo = t->gsize * tid / t->T, hi = t->gsize * (tid + 1) / t->T;
  float *g0 = t->ws[0].grad;
  for (uint32_t w = 1; w < t->T; w++) {
    const float *gw = t->ws[w].grad;
    for (uint64_t i = lo; i < hi; i++) g0[i] += gw[i];
  }
  double ss = 0;
  for (uint64_t i = lo; i < hi; i++) ss += (double)g0[i] * g0[i];
  /* embeddings: feature f by thread f % T, rows in shard order */
  const struct kd_table *tab = t->tab;
  for (uint32_t f = tid; f < t->a.n_features; f += t->T) {
    const struct kd_feature *ft = &t->a.features[f];
    if (ft->kind != KD_FEAT_SPARSE) continue;
    for (uint32_t w = 0; w < t->T; w++) {
      const struct kd_ws *ws = &t->ws[w];
      for (uint32_t i = 0; i < ws->m; i++) {
        uint64_t r = ws->rows[i];
        uint64_t a = tab->cols[f].off[r], b = tab->cols[f].off[r + 1];
        if (a == b) continue;
        const float *dx = ws->dx + (size_t)i * t->in0 + t->xo[f];
        float inv = 1.0f / (float)(b - a);
        for (uint64_t q = a; q < b; q++) {
          float *dst = kd_touch(t, f, t->hrows[f][q]);
          if (!dst) return;
          for (uint32_t d = 0; d < ft->dim; d++) dst[d] += dx[d] * inv;
        }
      }
    }
    const float *gr = t->cg[f];
    for (uint64_t j = 0; j < t->n_touched[f] * ft->dim; j++) ss += (double)gr[j] * gr[j];
  }
  t->ss_part[tid] = ss;
}

static void kd_update_rows(struct kd_trainer *t, uint32_t f, double lr);
static void kd_update_dense(struct kd_trainer *t, float *w, const float *g, float *s1, float *s2, size_t n,
                            double lr, int matrix);
static int kd_is_matrix(const struct kd_trainer *t, uint32_t i);

/* The optimizer update, shared out: element slices of every dense tensor (Clippy: whole tensors,
 * its scale is per tensor), embedding tables by feature. Each element is owned by one worker. */
static void kd_update(struct kd_trainer *t, uint32_t tid) {
  float *g0 = t->ws[0].grad;
  double lr = t->lr_now;
  for (uint32_t f = tid; f < t->a.n_features; f += t->T) {
    if (!t->cg[f]) continue;
    if (t->gscale != 1.0f) {
      float *gr = t->cg[f];
      for (uint64_t j = 0; j < t->n_touched[f] * t->a.features[f].dim; j++) gr[j] *= t->gscale;
    }
    kd_update_rows(t, f, lr);
  }
  for (uint32_t i = 0; i < t->n_ten; i++) {
    int is_emb = 0;
    for (uint32_t f = 0; f < t->a.n_features; f++) is_emb |= t->emb_of[f] == (int32_t)i;
    if (is_emb) continue;
    struct kd_tensor_info inf;
    kd_arch_tensor(&t->a, i, &inf);
    uint64_t lo = 0, hi = inf.numel;
    if (t->p.opt.kind == KD_OPT_CLIPPY) {
      if (i % t->T != tid) continue;
    } else {
      lo = inf.numel * tid / t->T;
      hi = inf.numel * (tid + 1) / t->T;
    }
    float *g = g0 + t->goff[i];
    if (t->gscale != 1.0f)
      for (uint64_t j = lo; j < hi; j++) g[j] *= t->gscale;
    kd_update_dense(t, t->m->t[i] + lo, g + lo, t->s1[i] ? t->s1[i] + lo : NULL,
                    t->s2[i] ? t->s2[i] + lo : NULL, hi - lo, lr, kd_is_matrix(t, i));
  }
}

/* ---------------------------------------------------------------- thread pool */
static void kd_run_job(struct kd_trainer *t, uint32_t tid) {
  if (t->job == KD_JOB_FWDBWD) {
    struct kd_ws *w = &t->ws[tid];
    if (w->m == 0) {
      memset(w->grad, 0, t->gsize * sizeof(float));
      for (uint32_t q = 0; q < t->p.n_loss; q++) w->term_loss[q] = 0;
      return;
    }
    kd_shard_forward(t, w);
    if (!t->fwd_only) kd_shard_backward(t, w);
  } else if (t->job == KD_JOB_REDUCE) {
    kd_reduce(t, tid);
  } else if (t->job == KD_JOB_UPDATE) {
    kd_update(t, tid);
  }
}

struct kd_worker_arg {
  struct kd_trainer *t;
  uint32_t tid;
};
static void *kd_worker_main(void *p) {
  struct kd_worker_arg *wa = p;
  struct kd_trainer *t = wa->t;
  uint32_t tid = wa->tid;
  free(wa);
  uint64_t seen = 0;
  pthread_mutex_lock(&t->mu);
  for (;;) {
    while (!t->quit && t->job_gen == seen) pthread_cond_wait(&t->cv_go, &t->mu);
    if (t->quit) break;
    seen = t->job_gen;
    pthread_mutex_unlock(&t->mu);
    kd_run_job(t, tid);
    pthread_mutex_lock(&t->mu);
    if (--t->pending == 0) pthread_cond_signal(&t->cv_done);
  }
  pthread_mutex_unlock(&t->mu);
  return NULL;
}

/* Runs job on every worker (the caller is worker 0) and waits for all. */
static void kd_parallel(struct kd_trainer *t, int job) {
  t->job = job;
  if (t->T > 1) {
    pthread_mutex_lock(&t->mu);
    t->pending = t->T - 1;
    t->job_gen++;
    pthread_cond_broadcast(&t->cv_go);
    pthread_mutex_unlock(&t->mu);
  }
  kd_run_job(t, 0);
  if (t->T > 1) {
    pthread_mutex_lock(&t->mu);
    while (t->pending > 0) pthread_cond_wait(&t->cv_done, &t->mu);
    pthread_mutex_unlock(&t->mu);
  }
}

/* ---------------------------------------------------------------- create / free */
void kd_trainer_free(kd_trainer *t) {
  if (!t) return;
  if (t->pool_up) {
    pthread_mutex_lock(&t->mu);
    t->quit = 1;
    pthread_cond_broadcast(&t->cv_go);
    pthread_mutex_unlock(&t->mu);
    for (uint32_t w = 1; w < t->T; w++) pthread_join(t->th[w], NULL);
    pthread_mutex_destroy(&t->mu);
    pthread_cond_destroy(&t->cv_go);
    pthread_cond_destroy(&t->cv_done);
  }
  for (uint32_t w = 0; w < 16; w++) {
    struct kd_ws *ws = &t->ws[w];
    free(ws->x);
    for (uint32_t l = 0; l < KD_MAX_LAYERS; l++) {
      free(ws->z[l]);
      free(ws->h[l]);
    }
    for (uint32_t k = 0; k < KD_MAX_TASKS; k++)
      for (uint32_t j = 0; j < KD_MAX_LAYERS; j++) {
        free(ws->tz[k][j]);
        free(ws->th[k][j]);
      }
    free(ws->logit);
    free(ws->dlogit);
    free(ws->dtop);
    free(ws->da);
    free(ws->db);
    free(ws->dx);
    free(ws->grad);
  }
  for (uint32_t f = 0; f < KD_MAX_FEATURES; f++) {
    free(t->rc[0].rows[f]);
    free(t->rc[1].rows[f]);
    free(t->eg[f]);
    free(t->cg[f]);
    free(t->slot[f]);
    free(t->stamp[f]);
    free(t->touched[f]);
  }
  for (uint32_t i = 0; i < t->n_ten; i++) {
    free(t->s1[i]);
    free(t->s2[i]);
  }
  free(t);
}

kd_trainer *kd_trainer_create(struct kd_model *m, const struct kd_train_params *p, struct kd_err *e) {
  if (kd_arch_validate(&m->arch, e)) return NULL;
  if (p->threads < 1 || p->threads > 16) {
    kd_err_set(e, KD_ERR_INVALID, "threads: expected 1..16, found %u", p->threads);
    return NULL;
  }
  if (p->max_batch < 1 || p->max_batch > (1u << 20)) {
    kd_err_set(e, KD_ERR_INVALID, "batch: expected 1..1048576, found %u", p->max_batch);
    return NULL;
  }
  if (p->n_loss < 1 || p->n_loss > 2 * KD_MAX_TASKS) {
    kd_err_set(e, KD_ERR_INVALID, "loss terms: expected 1..%d, found %u", 2 * KD_MAX_TASKS, p->n_loss);
    return NULL;
  }
  for (uint32_t q = 0; q < p->n_loss; q++) {
    const struct kd_loss_term *lt = &p->loss[q];
    if (lt->task >= m->arch.n_tasks || lt->target >= KD_MAX_TASKS || lt->kind > KD_LOSS_HUBER ||
        lt->source != KD_TARGET_LABEL || !(lt->weight >= 0) ||
        (lt->kind == KD_LOSS_HUBER && !(lt->delta > 0))) {
      kd_err_set(e, KD_ERR_INVALID, "loss term %u: task %u target %u kind %u weight %g delta %g out of range",
                 q, lt->task, lt->target, lt->kind, lt->weight, lt->delta);
      return NULL;
    }
  }
  kd_trainer *t = calloc(1, sizeof *t);
  if (!t) {
    kd_err_set(e, KD_ERR_NOMEM, "out of memory");
    return NULL;
  }
  t->m = m;
  t->a = m->arch;
  t->p = *p;
  t->T = p->threads;
  t->n_ten = kd_arch_n_tensors(&t->a);
  const struct kd_arch *a = &t->a;
  uint32_t cw = kd_arch_ctx_width(a);
  uint32_t oc = 0, od = cw;
  for (uint32_t f = 0; f < a->n_features; f++) {
    if (a->features[f].group == KD_GROUP_CONTEXT) {
      t->xo[f] = oc;
      oc += a->features[f].dim;
    } else {
      t->xo[f] = od;
      od += a->features[f].dim;
    }
  }
  t->in0 = od;
  uint32_t ti = 0;
  for (uint32_t f = 0; f < a->n_features; f++)
    t->emb_of[f] = a->features[f].kind == KD_FEAT_SPARSE ? (int32_t)ti++ : -1;
  t->maxw = t->in0;
  for (uint32_t l = 0; l < a->n_shared; l++) t->maxw = a->shared[l] > t->maxw ? a->shared[l] : t->maxw;
  for (uint32_t j = 0; j < a->n_tower; j++) t->maxw = a->tower[j] > t->maxw ? a->tower[j] : t->maxw;
  uint64_t off = 0;
  for (uint32_t i = 0; i < t->n_ten; i++) {
    struct kd_tensor_info inf;
    kd_arch_tensor(a, i, &inf);
    t->goff[i] = off;
    if (strncmp(inf.name, "emb.", 4) != 0) off += kd_al(inf.numel);
  }
  t->gsize = off;
  uint32_t cap = (p->max_batch + t->T - 1) / t->T;
  for (uint32_t w = 0; w < t->T; w++) {
    struct kd_ws *ws = &t->ws[w];
    ws->cap = cap;
    if (!(ws->x = kd_falloc((size_t)cap * t->in0))) goto nomem;
    for (uint32_t l = 0; l < a->n_shared; l++)
      if (!(ws->z[l] = kd_falloc((size_t)cap * a->shared[l])) ||
          !(ws->h[l] = kd_falloc((size_t)cap * a->shared[l])))
        goto nomem;
    for (uint32_t k = 0; k < a->n_tasks; k++)
      for (uint32_t j = 0; j < a->n_tower; j++)
        if (!(ws->tz[k][j] = kd_falloc((size_t)cap * a->tower[j])) ||
            !(ws->th[k][j] = kd_falloc((size_t)cap * a->tower[j])))
          goto nomem;
    if (!(ws->logit = kd_falloc((size_t)cap * a->n_tasks)) ||
        !(ws->dlogit = kd_falloc((size_t)cap * a->n_tasks)) ||
        !(ws->dtop = kd_falloc((size_t)cap * a->shared[a->n_shared - 1])) ||
        !(ws->da = kd_falloc((size_t)cap * t->maxw)) || !(ws->db = kd_falloc((size_t)cap * t->maxw)) ||
        !(ws->dx = kd_falloc((size_t)cap * t->in0)) || !(ws->grad = kd_falloc(t->gsize)))
      goto nomem;
  }
  for (uint32_t f = 0; f < a->n_features; f++) {
    const struct kd_feature *ft = &a->features[f];
    if (ft->kind != KD_FEAT_SPARSE) continue;
    t->stamp[f] = calloc(ft->rows, sizeof(uint32_t));
    t->slot[f] = calloc(ft->rows, sizeof(uint32_t));
    t->touched_cap[f] = 4096;
    t->touched[f] = malloc(t->touched_cap[f] * sizeof(uint64_t));
    t->cg[f] = malloc(t->touched_cap[f] * ft->dim * sizeof(float));
    if (!t->stamp[f] || !t->slot[f] || !t->touched[f] || !t->cg[f]) goto nomem;
  }
  /* optimizer state */
  for (uint32_t i = 0; i < t->n_ten; i++) {
    struct kd_tensor_info inf;
    kd_arch_tensor(a, i, &inf);
    if (p->opt.kind == KD_OPT_SGD) break;
    if (!(t->s1[i] = kd_falloc(inf.numel))) goto nomem;
    if (p->opt.kind == KD_OPT_ADAM && !(t->s2[i] = kd_falloc(inf.numel))) goto nomem;
    if (p->opt.kind == KD_OPT_ADAGRAD || p->opt.kind == KD_OPT_CLIPPY)
      for (uint64_t j = 0; j < inf.numel; j++) t->s1[i][j] = p->opt.init_acc;
  }
  /* one BLAS thread per worker: the parallelism is ours (deterministic shards) */
  openblas_set_num_threads(1);
  if (t->T > 1) {
    pthread_mutex_init(&t->mu, NULL);
    pthread_cond_init(&t->cv_go, NULL);
    pthread_cond_init(&t->cv_done, NULL);
    t->pool_up = 1;
    for (uint32_t w = 1; w < t->T; w++) {
      struct kd_worker_arg *wa = malloc(sizeof *wa);
      if (!wa) goto nomem_pool;
      wa->t = t;
      wa->tid = w;
      if (pthread_create(&t->th[w], NULL, kd_worker_main, wa)) {
        free(wa);
        goto nomem_pool;
      }
      continue;
    nomem_pool:
      /* join the ones started */
      pthread_mutex_lock(&t->mu);
      t->quit = 1;
      pthread_cond_broadcast(&t->cv_go);
      pthread_mutex_unlock(&t->mu);
      for (uint32_t v = 1; v < w; v++) pthread_join(t->th[v], NULL);
      t->pool_up = 0;
      goto nomem;
    }
  }
  return t;
nomem:
  kd_trainer_free(t);
  kd_err_set(e, KD_ERR_NOMEM, "out of memory allocating trainer buffers (batch %u)", p->max_batch);
  return NULL;
}

/* ---------------------------------------------------------------- batch entry points */
/* Points t->hrows at the hashed rows of tab, computing them on first use (least recently used slot). */
static int kd_use_table(kd_trainer *t, const struct kd_table *tab, struct kd_err *e) {
  struct kd_rowcache *c = NULL;
  for (int i = 0; i < 2; i++)
    if (t->rc[i].tab == tab && t->rc[i].n == tab->n && t->rc[i].fp == tab->fingerprint) c = &t->rc[i];
  if (!c) {
    c = t->rc[0].use <= t->rc[1].use ? &t->rc[0] : &t->rc[1];
    for (uint32_t f = 0; f < KD_MAX_FEATURES; f++) {
      free(c->rows[f]);
      c->rows[f] = NULL;
    }
    c->tab = NULL;
    for (uint32_t f = 0; f < t->a.n_features; f++) {
      const struct kd_feature *ft = &t->a.features[f];
      if (ft->kind != KD_FEAT_SPARSE) continue;
      uint64_t nid = tab->cols[f].off[tab->n];
      c->rows[f] = malloc((nid ? nid : 1) * sizeof(uint64_t));
      if (!c->rows[f]) return kd_err_set(e, KD_ERR_NOMEM, "out of memory hashing %llu ids", (unsigned long long)nid);
      for (uint64_t q = 0; q < nid; q++) c->rows[f][q] = kd_hash_row(tab->cols[f].ids[q], ft->rows);
    }
    c->tab = tab;
    c->n = tab->n;
    c->fp = tab->fingerprint;
  }
  c->use = ++t->rc_clock;
  t->hrows = c->rows;
  return KD_OK;
}

static int kd_check_rows(kd_trainer *t, const struct kd_table *tab, const uint64_t *rows, uint64_t n,
                         struct kd_err *e) {
  /* label columns need not match the heads one to one (auxiliary heads have no label column):
   * every loss term's target must exist in the table */
  if (tab->n_features != t->a.n_features)
    return kd_err_set(e, KD_ERR_INVALID, "table has %u features, model %u", tab->n_features, t->a.n_features);
  for (uint32_t q = 0; q < t->p.n_loss; q++)
    if (t->p.loss[q].target >= tab->n_tasks)
      return kd_err_set(e, KD_ERR_INVALID, "loss term %u reads label column %u, the table has %u", q,
                        t->p.loss[q].target, tab->n_tasks);
  for (uint64_t i = 0; i < n; i++)
    if (rows[i] >= tab->n)
      return kd_err_set(e, KD_ERR_RANGE, "row %llu out of the table's %llu", (unsigned long long)rows[i],
                        (unsigned long long)tab->n);
  return kd_use_table(t, tab, e);
}

static void kd_shard(kd_trainer *t, const uint64_t *rows, uint32_t n) {
  for (uint32_t w = 0; w < t->T; w++) {
    uint32_t lo = (uint32_t)((uint64_t)n * w / t->T), hi = (uint32_t)((uint64_t)n * (w + 1) / t->T);
    t->ws[w].rows = rows + lo;
    t->ws[w].m = hi - lo;
  }
}

int kd_trainer_grad(kd_trainer *t, const struct kd_table *tab, const uint64_t *rows, uint32_t n,
                    double *loss_out, double *task_loss, struct kd_err *e) {
  if (n == 0 || n > t->p.max_batch)
    return kd_err_set(e, KD_ERR_RANGE, "batch of %u rows, expected 1..%u", n, t->p.max_batch);
  int rc = kd_check_rows(t, tab, rows, n, e);
  if (rc) return rc;
  /* a new grad call: no embedding row touched yet (slots are zeroed when first touched) */
  for (uint32_t f = 0; f < t->a.n_features; f++) t->n_touched[f] = 0;
  if (++t->gen == 0) { /* stamps wrapped: reset them */
    for (uint32_t f = 0; f < t->a.n_features; f++)
      if (t->stamp[f]) memset(t->stamp[f], 0, t->a.features[f].rows * sizeof(uint32_t));
    t->gen = 1;
  }
  t->tab = tab;
  t->rows = rows;
  t->n = n;
  t->fwd_only = 0;
  /* each term: weight / labelled rows in the whole batch */
  for (uint32_t q = 0; q < t->p.n_loss; q++) {
    const struct kd_loss_term *lt = &t->p.loss[q];
    uint64_t cnt = 0;
    for (uint32_t i = 0; i < n; i++) cnt += !isnan(tab->labels[rows[i] * tab->n_tasks + lt->target]);
    t->term_w[q] = cnt ? lt->weight / (double)cnt : 0.0;
  }
  kd_shard(t, rows, n);
  t->oom = 0;
  kd_parallel(t, KD_JOB_FWDBWD);
  kd_parallel(t, KD_JOB_REDUCE);
  if (t->oom) return kd_err_set(e, KD_ERR_NOMEM, "out of memory tracking touched embedding rows");
  double total = 0;
  for (uint32_t q = 0; q < t->p.n_loss; q++) {
    double s = 0;
    for (uint32_t w = 0; w < t->T; w++) s += t->ws[w].term_loss[q];
    double mean = t->term_w[q] > 0 ? s * t->term_w[q] / t->p.loss[q].weight : 0;
    if (t->p.loss[q].weight == 0) mean = 0;
    if (task_loss) task_loss[q] = mean;
    total += t->p.loss[q].weight * mean;
  }
  if (loss_out) *loss_out = total;
  return KD_OK;
}

const float *kd_trainer_grad_tensor(kd_trainer *t, uint32_t i) {
  if (i >= t->n_ten) return NULL;
  for (uint32_t f = 0; f < t->a.n_features; f++) {
    if (t->emb_of[f] != (int32_t)i) continue;
    /* scatter the compact rows into a full-shape table (tests and tools; not on the training path) */
    const struct kd_feature *ft = &t->a.features[f];
    if (!t->eg[f] && !(t->eg[f] = kd_falloc(ft->rows * ft->dim))) return NULL;
    memset(t->eg[f], 0, ft->rows * ft->dim * sizeof(float));
    for (uint64_t r = 0; r < t->n_touched[f]; r++)
      memcpy(t->eg[f] + t->touched[f][r] * ft->dim, t->cg[f] + r * ft->dim, ft->dim * sizeof(float));
    return t->eg[f];
  }
  return t->ws[0].grad + t->goff[i];
}

uint64_t kd_trainer_steps(const kd_trainer *t) { return t->step; }
double kd_trainer_last_grad_norm(const kd_trainer *t) { return t->last_norm; }

int kd_trainer_predict(kd_trainer *t, const struct kd_table *tab, const uint64_t *rows, uint64_t n,
                       float *logits, struct kd_err *e) {
  int rc = kd_check_rows(t, tab, rows, n, e);
  if (rc) return rc;
  t->tab = tab;
  t->fwd_only = 1;
  uint32_t nt = t->a.n_tasks;
  for (uint64_t s = 0; s < n; s += t->p.max_batch) {
    uint32_t c = (uint32_t)(n - s < t->p.max_batch ? n - s : t->p.max_batch);
    kd_shard(t, rows + s, c);
    kd_parallel(t, KD_JOB_FWDBWD);
    uint64_t base = s;
    for (uint32_t w = 0; w < t->T; w++) {
      const struct kd_ws *ws = &t->ws[w];
      for (uint32_t i = 0; i < ws->m; i++)
        for (uint32_t k = 0; k < nt; k++) logits[(base + i) * nt + k] = ws->logit[(size_t)k * ws->cap + i];
      base += ws->m;
    }
  }
  t->fwd_only = 0;
  return KD_OK;
}

/* ---------------------------------------------------------------- optimizer step */
static int kd_is_matrix(const struct kd_trainer *t, uint32_t i) {
  struct kd_tensor_info inf;
  kd_arch_tensor(&t->a, i, &inf);
  return inf.ndim == 2 && strncmp(inf.name, "emb.", 4) != 0;
}

/* Updates n elements (w, g, states at the same index); rows: adam bias step. */
static void kd_update_dense(struct kd_trainer *t, float *w, const float *g, float *s1, float *s2, size_t n,
                            double lr, int matrix) {
  const struct kd_opt_params *o = &t->p.opt;
  if (matrix && o->weight_decay > 0) {
    float f = (float)(1.0 - lr * o->weight_decay);
    for (size_t i = 0; i < n; i++) w[i] *= f;
  }
  switch (o->kind) {
  case KD_OPT_ADAM: {
    double bc1 = 1.0 - pow(o->beta1, (double)t->step), bc2 = 1.0 - pow(o->beta2, (double)t->step);
    float step = (float)(lr / bc1), sbc2 = (float)sqrt(bc2), eps = o->eps;
    float b1 = o->beta1, b2 = o->beta2;
    for (size_t i = 0; i < n; i++) {
      s1[i] = b1 * s1[i] + (1 - b1) * g[i];
      s2[i] = b2 * s2[i] + (1 - b2) * g[i] * g[i];
      w[i] -= step * s1[i] / (sqrtf(s2[i]) / sbc2 + eps);
    }
    break;
  }
  case KD_OPT_ADAGRAD:
    for (size_t i = 0; i < n; i++) {
      s1[i] += g[i] * g[i];
      w[i] -= (float)lr * g[i] / (sqrtf(s1[i]) + o->adagrad_eps);
    }
    break;
  case KD_OPT_CLIPPY: kd_clippy_step(w, s1, g, n, (float)lr, o); break;
  default:
    for (size_t i = 0; i < n; i++) w[i] -= (float)lr * g[i];
  }
}

static void kd_update_rows(struct kd_trainer *t, uint32_t f, double lr) {
  const struct kd_opt_params *o = &t->p.opt;
  uint32_t ti = (uint32_t)t->emb_of[f], dim = t->a.features[f].dim;
  float *w = t->m->t[ti], *s1 = t->s1[ti], *s2 = t->s2[ti];
  const float *g = t->cg[f]; /* (nr, dim) compact: row r's gradient at g + r dim */
  const uint64_t *rows = t->touched[f];
  uint64_t nr = t->n_touched[f];
  if (o->kind == KD_OPT_CLIPPY) {
    /* one scale over the touched rows: gather-free variant over row pointers */
    kd_clippy_step_rows(w, s1, g, rows, nr, dim, (float)lr, o);
    return;
  }
  double bc1 = 1.0 - pow(o->beta1, (double)t->step), bc2 = 1.0 - pow(o->beta2, (double)t->step);
  float step = (float)(lr * sqrt(bc2) / bc1);
  for (uint64_t r = 0; r < nr; r++) {
    size_t at = rows[r] * dim;
    const float *gr = g + r * dim;
    if (o->kind == KD_OPT_ADAM) {
      /* torch.optim.SparseAdam: only touched rows; bias correction with the global step */
      for (uint32_t d = 0; d < dim; d++) {
        float gi = gr[d];
        s1[at + d] += (gi - s1[at + d]) * (1 - o->beta1);
        s2[at + d] += (gi * gi - s2[at + d]) * (1 - o->beta2);
        w[at + d] -= step * s1[at + d] / (sqrtf(s2[at + d]) + o->eps);
      }
    } else {
      kd_update_dense(t, w + at, gr, s1 ? s1 + at : NULL, NULL, dim, lr, 0);
    }
  }
}

int kd_trainer_step(kd_trainer *t, const struct kd_table *tab, const uint64_t *rows, uint32_t n,
                    double *loss_out, double *task_loss, struct kd_err *e) {
  int rc = kd_trainer_grad(t, tab, rows, n, loss_out, task_loss, e);
  if (rc) return rc;
  if (loss_out && !isfinite(*loss_out))
    return kd_err_set(e, KD_ERR_INVALID, "loss is %g at step %llu: lower the learning rate or clip "
                      "gradients (--grad-clip)", *loss_out, (unsigned long long)t->step);
  t->lr_now = kd_opt_lr_at(&t->p.opt, t->step);
  t->step++;
  /* global gradient norm from the reduce shares, summed in worker order (deterministic) */
  double ss = 0;
  for (uint32_t w = 0; w < t->T; w++) ss += t->ss_part[w];
  t->last_norm = sqrt(ss);
  t->gscale = 1.0f;
  if (t->p.opt.grad_clip > 0) {
    double c = t->p.opt.grad_clip / (t->last_norm + 1e-6); /* torch.nn.utils.clip_grad_norm_ */
    if (c < 1) t->gscale = (float)c;
  }
  kd_parallel(t, KD_JOB_UPDATE);
  return KD_OK;
}
