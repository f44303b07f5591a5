/* synth.c - a synthetic recommendation world for demos and tests: users and items with latent
 * tastes, context and candidate features, and tasks whose true probabilities are known.
 *
 * Domain 0 (video): click ~ Bernoulli(sigmoid(taste + popularity + activity + hour + device));
 * watch_time (seconds, log1p target) = 0 without a click, else lognormal around the item length
 * times taste, with heavy noise and partial logging (noisy, under-reported); satisfied = click and
 * Bernoulli(sigmoid(quality + taste)). Domain 1 (music): the same users (same tastes), another
 * catalogue, other features (no hour; artist) and another task mix (click, like).
 * Ground truth (p_click, E[log1p watch_time], p_satisfied / p_like) goes to *.truth.tsv. */
#include <errno.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "train_internal.h"

#define KD_LAT 8

static double kd_sig(double x) { return 1.0 / (1.0 + exp(-x)); }

struct kd_world {
  uint32_t nu, ni;
  float *ut;      /* (nu, KD_LAT) user tastes */
  float *ua;      /* (nu) activity */
  uint8_t *uage, *udev;
  float *it;      /* (ni, KD_LAT) item factors */
  float *ib;      /* (ni) popularity bias */
  float *iq;      /* (ni) quality */
  float *ilen;    /* (ni) length in seconds */
  uint16_t *icat; /* (ni) category / artist */
  uint8_t *itag[3], *intag;
  double *icdf;   /* (ni) exposure CDF (Zipf-like) */
  double *ucdf;   /* (nu) user activity CDF */
};

static void kd_world_free(struct kd_world *w) {
  free(w->ut); free(w->ua); free(w->uage); free(w->udev); free(w->it); free(w->ib); free(w->iq);
  free(w->ilen); free(w->icat); free(w->itag[0]); free(w->itag[1]); free(w->itag[2]); free(w->intag);
  free(w->icdf); free(w->ucdf);
}

static uint32_t kd_pick(const double *cdf, uint32_t n, double u) {
  uint32_t lo = 0, hi = n - 1;
  while (lo < hi) {
    uint32_t mid = (lo + hi) / 2;
    if (cdf[mid] < u) lo = mid + 1;
    else hi = mid;
  }
  return lo;
}

static int kd_world_make(struct kd_world *w, const struct kd_synth_params *p) {
  memset(w, 0, sizeof *w);
  w->nu = p->n_users;
  w->ni = p->n_items;
  w->ut = malloc(sizeof(float) * w->nu * KD_LAT);
  w->ua = malloc(sizeof(float) * w->nu);
  w->uage = malloc(w->nu);
  w->udev = malloc(w->nu);
  w->ucdf = malloc(sizeof(double) * w->nu);
  w->it = malloc(sizeof(float) * w->ni * KD_LAT);
  w->ib = malloc(sizeof(float) * w->ni);
  w->iq = malloc(sizeof(float) * w->ni);
  w->ilen = malloc(sizeof(float) * w->ni);
  w->icat = malloc(sizeof(uint16_t) * w->ni);
  for (int k = 0; k < 3; k++) w->itag[k] = malloc(w->ni);
  w->intag = malloc(w->ni);
  w->icdf = malloc(sizeof(double) * w->ni);
  if (!w->ut || !w->ua || !w->uage || !w->udev || !w->ucdf || !w->it || !w->ib || !w->iq || !w->ilen ||
      !w->icat || !w->itag[0] || !w->itag[1] || !w->itag[2] || !w->intag || !w->icdf)
    return -1;
  /* users: shared by both domains (seeded by seed only) */
  struct kd_rng ur = {p->seed * 0x9E3779B97F4A7C15ull + 17};
  double acc = 0;
  for (uint32_t u = 0; u < w->nu; u++) {
    w->uage[u] = (uint8_t)(kd_rng_u64(&ur) % 7);
    w->udev[u] = (uint8_t)(kd_rng_u64(&ur) % 4);
    /* taste = the age segment's taste + an individual part: demographics carry signal */
    struct kd_rng sr = {w->uage[u] * 6151ull + 3};
    for (int d = 0; d < KD_LAT; d++)
      w->ut[u * KD_LAT + d] = (float)((0.75 * kd_rng_normal(&sr) + 0.65 * kd_rng_normal(&ur)) / sqrt(KD_LAT) * 1.6);
    w->ua[u] = (float)(0.6 * kd_rng_normal(&ur));
    acc += exp(w->ua[u]);
    w->ucdf[u] = acc;
  }
  for (uint32_t u = 0; u < w->nu; u++) w->ucdf[u] /= acc;
  /* items: per domain */
  struct kd_rng ir = {p->seed * 0xD1B54A32D192ED03ull + 1000003ull * (uint64_t)(p->domain + 1)};
  acc = 0;
  for (uint32_t i = 0; i < w->ni; i++) {
    uint32_t cat = (uint32_t)(kd_rng_u64(&ir) % (p->domain ? 300 : 40));
    /* items of a category share a direction in taste space */
    struct kd_rng cr = {cat * 7919ull + 11 + (uint64_t)p->domain * 104729ull};
    for (int d = 0; d < KD_LAT; d++)
      w->it[i * KD_LAT + d] = (float)((0.7 * kd_rng_normal(&cr) + 0.7 * kd_rng_normal(&ir)) / sqrt(KD_LAT) * 1.6);
    w->icat[i] = (uint16_t)cat;
    w->ib[i] = (float)(0.8 * kd_rng_normal(&ir));
    w->iq[i] = (float)kd_rng_normal(&ir);
    w->ilen[i] = (float)(p->domain ? 200 * exp(0.3 * kd_rng_normal(&ir)) : 60 * exp(0.9 * kd_rng_normal(&ir)));
    w->intag[i] = (uint8_t)(1 + kd_rng_u64(&ir) % 3);
    for (int k = 0; k < 3; k++) w->itag[k][i] = (uint8_t)((cat * 3 + kd_rng_u64(&ir) % 6) % 60);
    acc += 1.0 / pow((double)i + 10.0, 0.9); /* Zipf-like exposure */
    w->icdf[i] = acc;
  }
  for (uint32_t i = 0; i < w->ni; i++) w->icdf[i] /= acc;
  return 0;
}

/* E[log1p(exp(mu + s Z))] by a fixed quantile rule (Z ~ N(0,1)). */
static double kd_e_log1p_lognormal(double mu, double s) {
  static const double zq[8] = {-1.863, -1.150, -0.674, -0.319, 0.319, 0.674, 1.150, 1.863};
  double acc = 0;
  for (int k = 0; k < 8; k++) {
    double x = mu + s * zq[k];
    acc += x > 30 ? x : log1p(exp(x));
  }
  return acc / 8;
}

static int kd_synth_split(const char *dir, const char *name, const struct kd_world *w,
                          const struct kd_synth_params *p, uint64_t n, uint64_t id0, struct kd_rng *r,
                          struct kd_err *e) {
  char path[4200], tpath[4200];
  snprintf(path, sizeof path, "%s/%s.tsv", dir, name);
  snprintf(tpath, sizeof tpath, "%s/%s.truth.tsv", dir, name);
  FILE *f = fopen(path, "w"), *tf = fopen(tpath, "w");
  if (!f || !tf) {
    if (f) fclose(f);
    if (tf) fclose(tf);
    return kd_err_set(e, KD_ERR_IO, "%s: cannot create: %s", path, strerror(errno));
  }
  if (p->domain == 0) {
    fprintf(f, "id\tuser_id\tage\tdevice\thour\tuser_activity\titem_id\tcategory\ttags\titem_dense"
               "\tclick\twatch_time\tsatisfied\n");
    fprintf(tf, "id\tp_click\te_watch_time\tp_satisfied\n");
  } else {
    fprintf(f, "id\tuser_id\tage\tdevice\ttrack_id\tartist\tgenres\ttrack_len\tclick\tlike\n");
    fprintf(tf, "id\tp_click\tp_like\n");
  }
  for (uint64_t q = 0; q < n; q++) {
    uint32_t u = kd_pick(w->ucdf, w->nu, kd_rng_unif(r));
    uint32_t i = kd_pick(w->icdf, w->ni, kd_rng_unif(r));
    const float *ut = w->ut + (size_t)u * KD_LAT, *it = w->it + (size_t)i * KD_LAT;
    double taste = 0;
    for (int d = 0; d < KD_LAT; d++) taste += (double)ut[d] * it[d];
    uint32_t hour = (uint32_t)(kd_rng_u64(r) % 24);
    uint32_t dev = w->udev[u];
    if (kd_rng_unif(r) < 0.2) dev = (uint32_t)(kd_rng_u64(r) % 4); /* sometimes another device */
    double obs_act = w->ua[u] + 0.3 * kd_rng_normal(r);
    double obs_q = w->iq[i] + 0.5 * kd_rng_normal(r);
    uint64_t id = id0 + q;
    if (p->domain == 0) {
      double zc = 1.3 * taste + w->ib[i] + 0.4 * w->ua[u] + 0.35 * sin(6.2832 * hour / 24.0) +
                  0.15 * (dev == 0) - 0.25 * (dev == 3) - 1.6;
      double pc = kd_sig(zc);
      int click = kd_rng_unif(r) < pc;
      /* watch time: lognormal around length x taste; partial logging in 30% of sessions */
      double mu = log(w->ilen[i]) + 0.7 * taste + 0.25 * w->iq[i] - 0.8, sd = 0.9;
      double watch = 0;
      if (click) {
        watch = exp(mu + sd * kd_rng_normal(r));
        if (kd_rng_unif(r) < 0.3) watch *= 0.1 + 0.5 * kd_rng_unif(r);
      }
      /* expectation of log1p(watch) including the partial logging (mean factor ~0.35 -> log) */
      double ew = pc * (0.7 * kd_e_log1p_lognormal(mu, sd) + 0.3 * kd_e_log1p_lognormal(mu + log(0.35), sd));
      double ps = kd_sig(1.1 * w->iq[i] + 0.9 * taste - 0.2);
      int sat = click && kd_rng_unif(r) < ps;
      fprintf(f, "%llu\t%u\t%u\t%u\t%u\t%.4f\t%u\t%u\t", (unsigned long long)id, u, w->uage[u], dev, hour,
              obs_act, i, w->icat[i]);
      for (int k = 0; k < w->intag[i]; k++) fprintf(f, "%s%u", k ? "," : "", w->itag[k][i]);
      fprintf(f, "\t%.4f,%.4f\t%d\t%.3f\t%d\n", obs_q, log(w->ilen[i]) - 4.0, click, watch, sat);
      fprintf(tf, "%llu\t%.6f\t%.6f\t%.6f\n", (unsigned long long)id, pc, ew, pc * ps);
    } else {
      double zc = 1.5 * taste + w->ib[i] + 0.4 * w->ua[u] + 0.2 * (dev == 1) - 1.2;
      double pc = kd_sig(zc);
      int click = kd_rng_unif(r) < pc;
      double pl = kd_sig(1.6 * taste + 0.8 * w->iq[i] - 1.0);
      int like = click && kd_rng_unif(r) < pl;
      fprintf(f, "%llu\t%u\t%u\t%u\t%u\t%u\t", (unsigned long long)id, u, w->uage[u], dev, i, w->icat[i]);
      for (int k = 0; k < w->intag[i]; k++) fprintf(f, "%s%u", k ? "," : "", w->itag[k][i]);
      fprintf(f, "\t%.4f\t%d\t%d\n", log(w->ilen[i]) - 5.0, click, like);
      fprintf(tf, "%llu\t%.6f\t%.6f\n", (unsigned long long)id, pc, pc * pl);
    }
  }
  int bad = ferror(f) || ferror(tf);
  bad |= fclose(f) != 0;
  bad |= fclose(tf) != 0;
  if (bad) return kd_err_set(e, KD_ERR_IO, "%s: write error", path);
  return KD_OK;
}

void kd_sc(struct kd_schema *s, const char *name, uint32_t role, int32_t index) {
  struct kd_schema_col *c = &s->cols[s->n_cols++];
  snprintf(c->name, sizeof c->name, "%s", name);
  c->role = role;
  c->index = index;
  c->sep = ',';
}
void kd_sf(struct kd_schema *s, const char *name, uint32_t kind, uint32_t group, uint32_t dim,
                  uint64_t rows) {
  struct kd_feature *f = &s->arch.features[s->arch.n_features];
  snprintf(f->name, sizeof f->name, "%s", name);
  f->kind = kind;
  f->group = group;
  f->dim = dim;
  f->rows = rows;
  kd_sc(s, name, KD_COL_FEATURE, (int32_t)s->arch.n_features++);
}
void kd_st(struct kd_schema *s, const char *name, uint32_t type, uint32_t xform) {
  struct kd_task *t = &s->arch.tasks[s->arch.n_tasks];
  snprintf(t->name, sizeof t->name, "%s", name);
  t->type = type;
  t->xform = xform;
  t->served = 1;
  kd_sc(s, name, KD_COL_LABEL, (int32_t)s->arch.n_tasks++);
}

int kd_synth_write(const char *dir, struct kd_synth_params p, struct kd_err *e) {
  if (p.n_users < 1 || p.n_items < 1 || p.n_users > 50000000 || p.n_items > 50000000 || p.n_train < 1)
    return kd_err_set(e, KD_ERR_INVALID, "synth: users/items expected 1..5e7 and train rows >= 1");
  int rc = kd_mkdirs(dir, e);
  if (rc) return rc;
  struct kd_world w;
  if (kd_world_make(&w, &p)) {
    kd_world_free(&w);
    return kd_err_set(e, KD_ERR_NOMEM, "synth: out of memory for %u users / %u items", p.n_users, p.n_items);
  }
  struct kd_rng r = {p.seed * 0xA24BAED4963EE407ull + 7 + (uint64_t)p.domain};
  uint64_t id0 = p.domain ? 1000000000ull : 0;
  rc = kd_synth_split(dir, "train", &w, &p, p.n_train, id0, &r, e);
  if (!rc && p.n_test) rc = kd_synth_split(dir, "test", &w, &p, p.n_test, id0 + p.n_train, &r, e);
  kd_world_free(&w);
  if (rc) return rc;
  struct kd_schema s;
  memset(&s, 0, sizeof s);
  uint64_t ur = p.n_users * 2 + 16, irows = p.n_items * 2 + 16;
  kd_sc(&s, "id", KD_COL_ID, -1);
  kd_sf(&s, "user_id", KD_FEAT_SPARSE, KD_GROUP_CONTEXT, 16, ur);
  kd_sf(&s, "age", KD_FEAT_SPARSE, KD_GROUP_CONTEXT, 4, 16);
  kd_sf(&s, "device", KD_FEAT_SPARSE, KD_GROUP_CONTEXT, 4, 16);
  if (p.domain == 0) {
    kd_sf(&s, "hour", KD_FEAT_SPARSE, KD_GROUP_CONTEXT, 4, 64);
    kd_sf(&s, "user_activity", KD_FEAT_DENSE, KD_GROUP_CONTEXT, 1, 0);
    kd_sf(&s, "item_id", KD_FEAT_SPARSE, KD_GROUP_CANDIDATE, 16, irows);
    kd_sf(&s, "category", KD_FEAT_SPARSE, KD_GROUP_CANDIDATE, 8, 128);
    kd_sf(&s, "tags", KD_FEAT_SPARSE, KD_GROUP_CANDIDATE, 8, 128);
    kd_sf(&s, "item_dense", KD_FEAT_DENSE, KD_GROUP_CANDIDATE, 2, 0);
    kd_st(&s, "click", KD_TASK_BINARY, KD_XFORM_IDENTITY);
    kd_st(&s, "watch_time", KD_TASK_REGRESSION, KD_XFORM_LOG1P);
    kd_st(&s, "satisfied", KD_TASK_BINARY, KD_XFORM_IDENTITY);
  } else {
    kd_sf(&s, "track_id", KD_FEAT_SPARSE, KD_GROUP_CANDIDATE, 16, irows);
    kd_sf(&s, "artist", KD_FEAT_SPARSE, KD_GROUP_CANDIDATE, 8, 1024);
    kd_sf(&s, "genres", KD_FEAT_SPARSE, KD_GROUP_CANDIDATE, 8, 128);
    kd_sf(&s, "track_len", KD_FEAT_DENSE, KD_GROUP_CANDIDATE, 1, 0);
    kd_st(&s, "click", KD_TASK_BINARY, KD_XFORM_IDENTITY);
    kd_st(&s, "like", KD_TASK_BINARY, KD_XFORM_IDENTITY);
  }
  char path[4200];
  snprintf(path, sizeof path, "%s/schema.json", dir);
  return kd_schema_write(path, &s, e);
}
