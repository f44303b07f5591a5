/* test_fast.c - the fast path (kd_plan/kd_scratch/kd_score/kd_logits) against the scalar oracle.
 *
 * Tolerance: every fast output a must satisfy |a - b| <= TOL * max(1, |b|) against the oracle's b,
 * TOL = 1e-4, on served values AND on raw logits. Why that bound: the oracle accumulates in double,
 * the fast path in float (sgemm / FMA in a different order), so each dot product of length K
 * carries a rounding error of about sqrt(K) * 2^-24 * (sum of |terms|); with K <= ~600, O(1)
 * activations (He init) and at most five layers that is ~1e-5 in the worst case seen here, and the
 * AVX2 exp/sigmoid/expm1 add ~2e-7 relative. An indexing, padding, pooling or layout bug moves
 * outputs by O(0.01..1), two orders of magnitude over TOL, so the bound still catches every real
 * bug. The measured maximum is printed for each case.
 */
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../../model/kernels.h"
#include "kd_test.h"
#include "kdrank_model.h"

#define TOL 1e-4

static double worst_seen;

static uint64_t rng_state = 0x1234567u;
static uint64_t rnd(void) {
  rng_state ^= rng_state << 13;
  rng_state ^= rng_state >> 7;
  rng_state ^= rng_state << 17;
  return rng_state;
}
static float rndf(void) { return (float)((double)(rnd() >> 11) * 0x1.0p-53 * 2.0 - 1.0); }

/* A request with its own storage: one column per feature. */
struct req {
  struct kd_input in;
  struct kd_column cols[KD_MAX_FEATURES];
  float *floats[KD_MAX_FEATURES];
  int64_t *ids[KD_MAX_FEATURES];
};

/* Random request: dense values in [-1, 1], sparse rows with k ids (k per feature: kctx for
 * context features, kcand for candidate ones; ids over the whole int64 range). */
static void req_make(struct req *q, const struct kd_arch *a, uint32_t n, uint32_t kctx,
                     uint32_t kcand) {
  memset(q, 0, sizeof *q);
  q->in.n_cand = n;
  q->in.cols = q->cols;
  for (uint32_t f = 0; f < a->n_features; f++) {
    const struct kd_feature *ft = &a->features[f];
    size_t rows = ft->group == KD_GROUP_CONTEXT ? 1 : n;
    if (ft->kind == KD_FEAT_DENSE) {
      size_t m = rows * ft->dim;
      q->floats[f] = malloc((m ? m : 1) * sizeof(float));
      for (size_t i = 0; i < m; i++) q->floats[f][i] = rndf();
      q->cols[f].floats = q->floats[f];
      q->cols[f].n_floats = m;
    } else {
      size_t k = ft->group == KD_GROUP_CONTEXT ? kctx : kcand, m = rows * k;
      q->ids[f] = malloc((m ? m : 1) * sizeof(int64_t));
      for (size_t i = 0; i < m; i++) q->ids[f][i] = (int64_t)rnd();
      q->cols[f].ids = q->ids[f];
      q->cols[f].n_ids = m;
    }
  }
}

static void req_free(struct req *q) {
  for (int f = 0; f < KD_MAX_FEATURES; f++) {
    free(q->floats[f]);
    free(q->ids[f]);
  }
}

/* Max of |a-b| / max(1,|b|) over n values. */
static double max_rel(const float *a, const float *b, size_t n) {
  double w = 0;
  for (size_t i = 0; i < n; i++) {
    if (a[i] == b[i]) continue;
    double d = fabs((double)a[i] - (double)b[i]) / fmax(1.0, fabs((double)b[i]));
    if (!(d <= w)) w = d; /* NaN counts as worst */
  }
  return w;
}

/* Fast vs oracle for one model, kernel, plan kind, batch and task list; served and raw. */
static void compare(const struct kd_model *m, int kernel, int flat, uint32_t n, uint32_t kctx,
                    uint32_t kcand, const uint32_t *tasks, uint32_t n_out, const char *what) {
  struct kd_err e = {0};
  struct kd_plan_params pp = {.kernel = kernel, .flat = flat};
  kd_plan *p = kd_plan_create(m, pp, &e);
  REQUIRE(p != NULL);
  CHECK(kd_plan_kernel(p) == kernel);
  kd_scratch *s = kd_scratch_create(p, n, &e);
  REQUIRE(s != NULL);
  struct req q;
  req_make(&q, &m->arch, n, kctx, kcand);
  size_t cnt = (size_t)n * n_out;
  float *fast = malloc(cnt * sizeof(float)), *ref = malloc(cnt * sizeof(float));
  float *fast2 = malloc(cnt * sizeof(float));
  REQUIRE(fast && ref && fast2);

  CHECKF(kd_score(p, s, &q.in, tasks, n_out, fast, &e) == KD_OK, "%s", e.msg);
  REQUIRE(kd_score_ref(m, &q.in, tasks, n_out, ref, &e) == KD_OK);
  double w = max_rel(fast, ref, cnt);
  CHECKF(w <= TOL, "%s kernel=%s flat=%d n=%u: served max rel err %.3g > %g", what,
         kd_kernel_name(kernel), flat, n, w, TOL);
  if (w > worst_seen) worst_seen = w;

  /* the same through the sgemm engine (no panel kernel; small kernel only for 1..2 rows) */
  kd_scratch *sg = kd_scratch_create_tuned(p, n, 0, 2, 0, &e);
  REQUIRE(sg != NULL);
  CHECKF(kd_score(p, sg, &q.in, tasks, n_out, fast2, &e) == KD_OK, "%s", e.msg);
  double wg = max_rel(fast2, ref, cnt);
  CHECKF(wg <= TOL, "%s kernel=%s flat=%d n=%u sgemm engine: served max rel err %.3g > %g", what,
         kd_kernel_name(kernel), flat, n, wg, TOL);
  if (wg > worst_seen) worst_seen = wg;
  kd_scratch_free(sg);

  /* deterministic: the same call again gives the same bits */
  CHECK(kd_score(p, s, &q.in, tasks, n_out, fast2, &e) == KD_OK);
  CHECKF(memcmp(fast, fast2, cnt * sizeof(float)) == 0, "%s: second call differs", what);

  /* raw logits of the same tasks through kd_logits (all tasks) */
  uint32_t T = m->arch.n_tasks;
  float *lf = malloc((size_t)n * T * sizeof(float)), *lr = malloc((size_t)n * T * sizeof(float));
  uint32_t all[KD_MAX_TASKS];
  for (uint32_t k = 0; k < T; k++) all[k] = k;
  REQUIRE(lf && lr);
  CHECKF(kd_logits(p, s, &q.in, lf, &e) == KD_OK, "%s", e.msg);
  REQUIRE(kd_logits_ref(m, &q.in, all, T, lr, &e) == KD_OK);
  double wl = max_rel(lf, lr, (size_t)n * T);
  CHECKF(wl <= TOL, "%s kernel=%s flat=%d n=%u: logit max rel err %.3g > %g", what,
         kd_kernel_name(kernel), flat, n, wl, TOL);
  if (wl > worst_seen) worst_seen = wl;
  printf("  %-28s %-6s %-5s n=%-5u served %.2e logits %.2e\n", what, kd_kernel_name(kernel),
         flat ? "flat" : "split", n, w, wl);

  free(lf);
  free(lr);
  free(fast);
  free(fast2);
  free(ref);
  req_free(&q);
  kd_scratch_free(s);
  kd_plan_free(p);
}

/* An architecture with odd widths everywhere: tower depth nt, clip on/off, T tasks. */
static void odd_arch(struct kd_arch *a, uint32_t nt, float clip, int with_ctx) {
  memset(a, 0, sizeof *a);
  snprintf(a->name, sizeof a->name, "odd-%u", nt);
  struct kd_feature *f;
#define FEAT(nm, kd, gr, dm, rw)                                                                \
  f = &a->features[a->n_features++];                                                          \
  snprintf(f->name, sizeof f->name, "%s", nm);                                                \
  f->kind = kd; f->group = gr; f->dim = dm; f->rows = rw;
  if (with_ctx) {
    FEAT("c_dense", KD_FEAT_DENSE, KD_GROUP_CONTEXT, 13, 0);
    FEAT("c_ids", KD_FEAT_SPARSE, KD_GROUP_CONTEXT, 7, 50);
  }
  FEAT("x_ids", KD_FEAT_SPARSE, KD_GROUP_CANDIDATE, 5, 1009);
  FEAT("x_dense", KD_FEAT_DENSE, KD_GROUP_CANDIDATE, 31, 0);
  if (with_ctx) { FEAT("c_more", KD_FEAT_DENSE, KD_GROUP_CONTEXT, 3, 0); } /* interleaved groups */
  FEAT("x_tag", KD_FEAT_SPARSE, KD_GROUP_CANDIDATE, 9, 17);
#undef FEAT
  a->n_shared = 2;
  a->shared[0] = 67;
  a->shared[1] = 13;
  a->n_tower = nt;
  a->tower[0] = 31;
  a->tower[1] = 9;
  const char *names[5] = {"ctr", "dwell", "score", "aux", "sat"};
  uint32_t types[5] = {KD_TASK_BINARY, KD_TASK_REGRESSION, KD_TASK_REGRESSION, KD_TASK_BINARY,
                       KD_TASK_BINARY};
  uint32_t xf[5] = {0, KD_XFORM_LOG1P, KD_XFORM_IDENTITY, 0, 0};
  a->n_tasks = 5;
  for (uint32_t k = 0; k < 5; k++) {
    snprintf(a->tasks[k].name, sizeof a->tasks[k].name, "%s", names[k]);
    a->tasks[k].type = types[k];
    a->tasks[k].xform = xf[k];
    a->tasks[k].served = k != 3;
  }
  a->act_clip = clip;
}

static int kernels[2];
static int n_kernels;

static void test_odd_shapes(void) {
  static const uint32_t batches[] = {1, 2, 3, 4, 5, 7, 9, 64, 1000, 4097};
  uint32_t all[5] = {0, 1, 2, 3, 4}, sub[3] = {4, 1, 1}, one[1] = {2};
  for (uint32_t nt = 0; nt <= 2; nt++)
    for (int clip = 0; clip <= 1; clip++) {
      struct kd_arch a;
      odd_arch(&a, nt, clip ? 0.7f : 0.0f, 1);
      struct kd_err e = {0};
      REQUIRE(kd_arch_validate(&a, &e) == KD_OK);
      struct kd_model *m = kd_model_alloc(&a, &e);
      REQUIRE(m != NULL);
      kd_model_init_random(m, 100 + nt * 2 + (uint64_t)clip);
      char what[64];
      snprintf(what, sizeof what, "odd tower=%u clip=%d", nt, clip);
      for (int ki = 0; ki < n_kernels; ki++)
        for (int flat = 0; flat <= 1; flat++)
          for (size_t b = 0; b < sizeof batches / sizeof *batches; b++) {
            uint32_t n = batches[b];
            if (n == 4097 && (flat || clip)) continue; /* the oracle is slow; one of each is enough */
            compare(m, kernels[ki], flat, n, 3, 1 + (uint32_t)(b % 3), all, 5, what);
            if (n == 7 || n == 64) {
              compare(m, kernels[ki], flat, n, 1, 2, sub, 3, what);
              compare(m, kernels[ki], flat, n, 2, 1, one, 1, what);
            }
          }
      kd_model_free(m);
    }
}

static void test_no_context(void) {
  struct kd_arch a;
  odd_arch(&a, 1, 0.0f, 0);
  struct kd_err e = {0};
  REQUIRE(kd_arch_validate(&a, &e) == KD_OK);
  struct kd_model *m = kd_model_alloc(&a, &e);
  REQUIRE(m != NULL);
  kd_model_init_random(m, 7);
  uint32_t all[5] = {0, 1, 2, 3, 4};
  for (int ki = 0; ki < n_kernels; ki++)
    for (int flat = 0; flat <= 1; flat++) {
      compare(m, kernels[ki], flat, 1, 1, 1, all, 5, "no context");
      compare(m, kernels[ki], flat, 300, 1, 4, all, 5, "no context");
    }
  kd_model_free(m);
}

static void test_presets(void) {
  const char *presets[2] = {"tiny", "ref-student"};
  uint32_t all[4] = {0, 1, 2, 3}, rev[4] = {3, 2, 1, 0};
  for (int i = 0; i < 2; i++) {
    struct kd_arch a;
    struct kd_err e = {0};
    REQUIRE(kd_arch_preset(presets[i], &a, &e) == KD_OK);
    struct kd_model *m = kd_model_alloc(&a, &e);
    REQUIRE(m != NULL);
    kd_model_init_random(m, 42);
    for (int ki = 0; ki < n_kernels; ki++) {
      compare(m, kernels[ki], 0, 1, 20, 1, all, 4, presets[i]);
      compare(m, kernels[ki], 0, 16, 20, 1, rev, 4, presets[i]);
      compare(m, kernels[ki], 0, 1000, 20, 2, all, 4, presets[i]);
      compare(m, kernels[ki], 1, 64, 5, 1, all, 4, presets[i]);
    }
    if (i == 1) compare(m, kernels[n_kernels - 1], 0, 4097, 20, 1, all, 4, presets[i]);
    kd_model_free(m);
  }
}

/* Saturated outputs: last-layer biases pushed to +-40 (sigmoid -> 0/1) and a log1p regression
 * head pushed to 30 (expm1 ~ 1e13) still match the oracle within the relative bound. */
static void test_saturation(void) {
  struct kd_arch a;
  odd_arch(&a, 1, 0.0f, 1);
  struct kd_err e = {0};
  struct kd_model *m = kd_model_alloc(&a, &e);
  REQUIRE(m != NULL);
  kd_model_init_random(m, 9);
  kd_model_tower_b(m, 0, 1)[0] = 40.0f;
  kd_model_tower_b(m, 3, 1)[0] = -40.0f;
  kd_model_tower_b(m, 1, 1)[0] = 30.0f;
  uint32_t all[5] = {0, 1, 2, 3, 4};
  for (int ki = 0; ki < n_kernels; ki++) compare(m, kernels[ki], 0, 64, 2, 2, all, 5, "saturated");
  kd_model_free(m);
}

/* Chunk boundaries and the engine switch: tiny chunks (1, 7, 64 rows) x {panel kernel for every
 * chunk, small kernel up to 3 rows then sgemm, small kernel always}, on 100 and 13 candidates. */
static void test_tuning(void) {
  struct kd_arch a;
  odd_arch(&a, 2, 0.0f, 1);
  struct kd_err e = {0};
  struct kd_model *m = kd_model_alloc(&a, &e);
  REQUIRE(m != NULL);
  kd_model_init_random(m, 11);
  uint32_t tasks[3] = {3, 0, 1};
  uint32_t chunks[3] = {1, 7, 64}, smalls[3] = {0, 3, 64}, panels[3] = {64, 0, 0}, ns[2] = {100, 13};
  for (int ki = 0; ki < n_kernels; ki++)
    for (int flat = 0; flat <= 1; flat++) {
      kd_plan *p = kd_plan_create(m, (struct kd_plan_params){.kernel = kernels[ki], .flat = flat}, &e);
      REQUIRE(p != NULL);
      for (int ni = 0; ni < 2; ni++) {
        uint32_t n = ns[ni];
        struct req q;
        req_make(&q, &a, n, 2, 3);
        float *ref = malloc(sizeof(float) * 3 * n), *out = malloc(sizeof(float) * 3 * n);
        REQUIRE(ref && out);
        REQUIRE(kd_score_ref(m, &q.in, tasks, 3, ref, &e) == KD_OK);
        for (int ci = 0; ci < 3; ci++)
          for (int si = 0; si < 3; si++) {
            kd_scratch *s = kd_scratch_create_tuned(p, n, chunks[ci], smalls[si], panels[si], &e);
            REQUIRE(s != NULL);
            CHECK(kd_score(p, s, &q.in, tasks, 3, out, &e) == KD_OK);
            double w = max_rel(out, ref, (size_t)3 * n);
            CHECKF(w <= TOL, "tuned kernel=%s flat=%d n=%u chunk=%u small=%u: %.3g",
                   kd_kernel_name(kernels[ki]), flat, n, chunks[ci], smalls[si], w);
            if (w > worst_seen) worst_seen = w;
            kd_scratch_free(s);
          }
        free(ref);
        free(out);
        req_free(&q);
      }
      kd_plan_free(p);
    }
  kd_model_free(m);
}

/* flat and split plans compute the same function */
static void test_flat_equals_split(void) {
  struct kd_arch a;
  struct kd_err e = {0};
  REQUIRE(kd_arch_preset("ref-student", &a, &e) == KD_OK);
  struct kd_model *m = kd_model_alloc(&a, &e);
  REQUIRE(m != NULL);
  kd_model_init_random(m, 5);
  for (int ki = 0; ki < n_kernels; ki++) {
    kd_plan *ps = kd_plan_create(m, (struct kd_plan_params){.kernel = kernels[ki], .flat = 0}, &e);
    kd_plan *pf = kd_plan_create(m, (struct kd_plan_params){.kernel = kernels[ki], .flat = 1}, &e);
    REQUIRE(ps && pf);
    CHECK(kd_plan_bytes(ps) > 0 && kd_plan_bytes(pf) > 0);
    kd_scratch *s = kd_scratch_create(pf, 600, &e);
    REQUIRE(s != NULL);
    uint32_t sizes[3] = {1, 33, 600};
    for (int i = 0; i < 3; i++) {
      struct req q;
      req_make(&q, &a, sizes[i], 10, 1);
      float *o1 = malloc(sizeof(float) * 4 * sizes[i]), *o2 = malloc(sizeof(float) * 4 * sizes[i]);
      REQUIRE(o1 && o2);
      CHECK(kd_logits(ps, s, &q.in, o1, &e) == KD_OK); /* a flat plan's scratch fits the split one */
      CHECK(kd_logits(pf, s, &q.in, o2, &e) == KD_OK);
      double w = max_rel(o1, o2, (size_t)4 * sizes[i]);
      CHECKF(w <= TOL, "flat vs split n=%u: %.3g", sizes[i], w);
      free(o1);
      free(o2);
      req_free(&q);
    }
    kd_scratch_free(s);
    kd_plan_free(ps);
    kd_plan_free(pf);
  }
  kd_model_free(m);
}

static void test_errors(void) {
  struct kd_arch a;
  struct kd_err e = {0};
  REQUIRE(kd_arch_preset("tiny", &a, &e) == KD_OK);
  struct kd_model *m = kd_model_alloc(&a, &e);
  REQUIRE(m != NULL);
  kd_model_init_random(m, 1);
  kd_plan *p = kd_plan_create(m, (struct kd_plan_params){0}, &e);
  REQUIRE(p != NULL);
  CHECK(kd_plan_kernel(p) == kd_kernel_detect());
  CHECK(kd_plan_arch(p)->n_tasks == 4);
  kd_model_free(m); /* the plan holds copies */
  kd_scratch *s = kd_scratch_create(p, 8, &e);
  REQUIRE(s != NULL);
  struct req q;
  req_make(&q, &a, 9, 1, 1);
  float out[9 * 4];
  uint32_t all[4] = {0, 1, 2, 3};
  e.code = 0;
  CHECK(kd_score(p, s, &q.in, all, 4, out, &e) == KD_ERR_RANGE && e.code == KD_ERR_RANGE &&
        strstr(e.msg, "9") && strstr(e.msg, "8"));
  CHECK(kd_logits(p, s, &q.in, out, &e) == KD_ERR_RANGE);
  q.in.n_cand = 8; /* columns now hold the wrong number of rows */
  CHECK(kd_score(p, s, &q.in, all, 4, out, &e) == KD_ERR_INVALID);
  req_free(&q);
  req_make(&q, &a, 8, 1, 1);
  uint32_t bad[2] = {0, 4};
  CHECK(kd_score(p, s, &q.in, bad, 2, out, &e) == KD_ERR_INVALID && strstr(e.msg, "4"));
  CHECK(kd_score(p, s, &q.in, all, 0, out, &e) == KD_OK);
  CHECK(kd_scratch_create(p, 0, &e) == NULL && e.code == KD_ERR_INVALID);
  CHECK(kd_plan_create(NULL, (struct kd_plan_params){0}, &e) == NULL);
  struct kd_arch bigger;
  REQUIRE(kd_arch_preset("ref-student", &bigger, &e) == KD_OK);
  struct kd_model *mb = kd_model_alloc(&bigger, &e);
  REQUIRE(mb != NULL);
  kd_plan *pb = kd_plan_create(mb, (struct kd_plan_params){0}, &e);
  REQUIRE(pb != NULL);
  struct req qb;
  req_make(&qb, &bigger, 2, 1, 1);
  CHECK(kd_score(pb, s, &qb.in, all, 4, out, &e) == KD_ERR_RANGE && strstr(e.msg, "scratch"));
  CHECK(kd_plan_create(mb, (struct kd_plan_params){.kernel = 9}, &e) == NULL &&
        e.code == KD_ERR_INVALID);
  req_free(&qb);
  kd_plan_free(pb);
  kd_model_free(mb);
  req_free(&q);
  kd_scratch_free(s);
  kd_plan_free(p);
}

/* The transforms alone, over the whole useful range, against double-precision libm. */
static void test_xform_kernels(void) {
  enum { N = 4003 };
  static float v[N], ref[N];
  const struct kd_kernels *ks[2] = {&kd_kernels_scalar, &kd_kernels_avx2};
  for (int ki = 0; ki < n_kernels; ki++) {
    const struct kd_kernels *K = ks[ki];
    CHECK(K->id == kernels[ki]);
    for (int x = KD_OUT_SIGMOID; x <= KD_OUT_EXPM1; x++) {
      double lo = x == KD_OUT_SIGMOID ? -100 : -30, hi = x == KD_OUT_SIGMOID ? 100 : 80;
      for (int i = 0; i < N; i++) {
        double t = lo + (hi - lo) * i / (N - 1);
        v[i] = (float)t;
        ref[i] = (float)(x == KD_OUT_SIGMOID ? 1.0 / (1.0 + exp(-(double)v[i])) : expm1((double)v[i]));
      }
      v[7] = 1e-7f; ref[7] = (float)(x == KD_OUT_SIGMOID ? 1.0 / (1.0 + exp(-1e-7)) : expm1((double)1e-7f));
      K->xform(v, N, x);
      /* relative to the value itself here (not max(1,|b|)): expm1 near 0 must not cancel */
      double w = 0;
      for (int i = 0; i < N; i++) {
        double d = fabs((double)v[i] - ref[i]) / fmax(fabs((double)ref[i]), 1e-30);
        if (x == KD_OUT_SIGMOID) d = fabs((double)v[i] - ref[i]);
        if (!(d <= w)) w = d;
      }
      printf("  xform %s %s: max err %.2e\n", kd_kernel_name(K->id),
             x == KD_OUT_SIGMOID ? "sigmoid(abs)" : "expm1(rel)", w);
      CHECKF(w <= 1e-6, "xform %d kernel %s err %.3g", x, kd_kernel_name(K->id), w);
    }
    float big[8] = {89, 100, 200, -200, 0, 1, 2, 3};
    K->xform(big, 8, KD_OUT_EXPM1);
    CHECK(isinf(big[0]) && isinf(big[1]) && isinf(big[2]) && big[3] == -1.0f && big[4] == 0.0f);
  }
}

int main(void) {
  kd_blas_set_threads(1);
  kernels[n_kernels++] = KD_KERNEL_SCALAR;
  if (kd_kernel_detect() == KD_KERNEL_AVX2) kernels[n_kernels++] = KD_KERNEL_AVX2;
  else printf("note: this CPU lacks AVX2+FMA; only the scalar kernel is tested\n");
  test_xform_kernels();
  test_errors();
  test_odd_shapes();
  test_no_context();
  test_presets();
  test_saturation();
  test_tuning();
  test_flat_equals_split();
  printf("worst relative error over all fast-vs-oracle cases: %.3g (bound %g)\n", worst_seen, TOL);
  KD_TEST_END();
}
