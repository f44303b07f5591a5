/* test_fast_threads.c - one kd_plan shared by several threads, each with its own kd_scratch:
 * every thread's outputs equal (bit for bit) the same requests scored alone on one thread.
 * Meant to run under TSan too (the plan must be read-only while scoring). */
#include <pthread.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "../../model/kernels.h"
#include "kd_test.h"
#include "kdrank_model.h"

#define N_THREADS 4
#define N_REQ 6
#define ROUNDS 5

static struct kd_arch arch;
static kd_plan *plan;
static struct kd_input reqs[N_REQ];
static struct kd_column cols[N_REQ][KD_MAX_FEATURES];
static float *expect[N_REQ];
static const uint32_t sizes[N_REQ] = {1, 2, 5, 64, 300, 700};
static const uint32_t tasks[4] = {0, 1, 2, 3};

static uint64_t rng = 12345;
static uint64_t rnd(void) {
  rng ^= rng << 13;
  rng ^= rng >> 7;
  rng ^= rng << 17;
  return rng;
}

static void make_req(int i) {
  uint32_t n = sizes[i];
  reqs[i].n_cand = n;
  reqs[i].cols = cols[i];
  for (uint32_t f = 0; f < arch.n_features; f++) {
    const struct kd_feature *ft = &arch.features[f];
    size_t rows = ft->group == KD_GROUP_CONTEXT ? 1 : n;
    if (ft->kind == KD_FEAT_DENSE) {
      float *v = malloc(rows * ft->dim * sizeof *v);
      for (size_t j = 0; j < rows * ft->dim; j++) v[j] = (float)(rnd() % 2001) / 1000.0f - 1.0f;
      cols[i][f].floats = v;
      cols[i][f].n_floats = rows * ft->dim;
    } else {
      size_t k = 1 + (f % 3);
      int64_t *ids = malloc(rows * k * sizeof *ids);
      for (size_t j = 0; j < rows * k; j++) ids[j] = (int64_t)rnd();
      cols[i][f].ids = ids;
      cols[i][f].n_ids = rows * k;
    }
  }
}

struct worker {
  int id, engine, failures;
};

static void *work(void *arg) {
  struct worker *w = arg;
  struct kd_err e;
  kd_scratch *s = w->engine ? kd_scratch_create_tuned(plan, 1000, 0, 2, 0, &e)
                            : kd_scratch_create(plan, 1000, &e);
  float *out = malloc(sizeof(float) * 1000 * 4);
  if (!s || !out) {
    w->failures++;
    return NULL;
  }
  for (int r = 0; r < ROUNDS; r++)
    for (int q = 0; q < N_REQ; q++) {
      int i = (q + w->id + r) % N_REQ;
      if (kd_score(plan, s, &reqs[i], tasks, 4, out, &e) != KD_OK ||
          memcmp(out, expect[i], sizeof(float) * 4 * sizes[i]) != 0)
        w->failures++;
    }
  free(out);
  kd_scratch_free(s);
  return NULL;
}

int main(void) {
  kd_blas_set_threads(1);
  struct kd_err e = {0};
  REQUIRE(kd_arch_preset("ref-student", &arch, &e) == KD_OK);
  struct kd_model *m = kd_model_alloc(&arch, &e);
  REQUIRE(m != NULL);
  kd_model_init_random(m, 3);
  plan = kd_plan_create(m, (struct kd_plan_params){0}, &e);
  REQUIRE(plan != NULL);
  kd_model_free(m);
  for (int engine = 0; engine <= 1; engine++) {
    kd_scratch *s = engine ? kd_scratch_create_tuned(plan, 1000, 0, 2, 0, &e)
                           : kd_scratch_create(plan, 1000, &e);
    REQUIRE(s != NULL);
    for (int i = 0; i < N_REQ; i++) {
      if (!engine) make_req(i);
      free(expect[i]);
      expect[i] = malloc(sizeof(float) * 4 * sizes[i]);
      REQUIRE(kd_score(plan, s, &reqs[i], tasks, 4, expect[i], &e) == KD_OK);
    }
    kd_scratch_free(s);
    pthread_t th[N_THREADS];
    struct worker w[N_THREADS];
    for (int t = 0; t < N_THREADS; t++) {
      w[t] = (struct worker){.id = t, .engine = engine};
      REQUIRE(pthread_create(&th[t], NULL, work, &w[t]) == 0);
    }
    for (int t = 0; t < N_THREADS; t++) {
      pthread_join(th[t], NULL);
      CHECKF(w[t].failures == 0, "engine %d thread %d: %d mismatching or failed calls", engine, t,
             w[t].failures);
    }
  }
  for (int i = 0; i < N_REQ; i++) {
    free(expect[i]);
    for (uint32_t f = 0; f < arch.n_features; f++) {
      free((void *)cols[i][f].floats);
      free((void *)cols[i][f].ids);
    }
  }
  kd_plan_free(plan);
  KD_TEST_END();
}
