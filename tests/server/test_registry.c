/* test_registry.c - the version registry over a real repository of checkpoints written by
 * kd_ckpt_write: scan (latest valid version, failing ones recorded and skipped, bad entries
 * skipped), acquire/release errors, swap while a reader holds the old version, and a bounded
 * stress of readers scoring while another thread swaps versions (run it under TSan and ASan). */
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "kd_test.h"
#include "kdrank_loader.h"

#define N_CAND 5

static char g_repo[256];

static void mkdirs(const char *rel) {
  char path[512];
  snprintf(path, sizeof path, "%s/%s", g_repo, rel);
  for (char *p = path + strlen(g_repo) + 1; *p; p++)
    if (*p == '/') {
      *p = 0;
      mkdir(path, 0755);
      *p = '/';
    }
  mkdir(path, 0755);
}

/* Writes <repo>/<model>/<version>/model.kdr from the tiny preset with this seed. */
static void write_version(const char *model, int version, uint64_t seed) {
  char rel[128], path[512];
  snprintf(rel, sizeof rel, "%s/%d", model, version);
  mkdirs(rel);
  snprintf(path, sizeof path, "%s/%s/model.kdr", g_repo, rel);
  struct kd_arch a;
  struct kd_err e = {0};
  REQUIRE(kd_arch_preset("tiny", &a, &e) == KD_OK);
  struct kd_model *m = kd_model_alloc(&a, &e);
  REQUIRE(m);
  kd_model_init_random(m, seed);
  REQUIRE(kd_ckpt_write(path, m, NULL, 0, &e) == KD_OK);
  kd_model_free(m);
}

static void write_garbage(const char *model, int version) {
  char rel[128], path[512];
  snprintf(rel, sizeof rel, "%s/%d", model, version);
  mkdirs(rel);
  snprintf(path, sizeof path, "%s/%s/model.kdr", g_repo, rel);
  FILE *f = fopen(path, "wb");
  REQUIRE(f);
  fputs("this is not a checkpoint", f);
  fclose(f);
}

/* A deterministic valid input for an architecture: N_CAND candidates, one id per sparse row. */
struct input {
  struct kd_column cols[KD_MAX_FEATURES];
  float floats[KD_MAX_FEATURES][N_CAND * 64];
  int64_t ids[KD_MAX_FEATURES][N_CAND];
  struct kd_input in;
};

static void make_input(const struct kd_arch *a, struct input *x) {
  memset(x, 0, sizeof *x);
  for (uint32_t i = 0; i < a->n_features; i++) {
    const struct kd_feature *f = &a->features[i];
    uint32_t rows = f->group == KD_GROUP_CONTEXT ? 1 : N_CAND;
    if (f->kind == KD_FEAT_DENSE) {
      REQUIRE(rows * f->dim <= N_CAND * 64);
      for (uint32_t k = 0; k < rows * f->dim; k++) x->floats[i][k] = 0.1f * (float)((k * 7 + i) % 11) - 0.5f;
      x->cols[i].floats = x->floats[i];
      x->cols[i].n_floats = rows * f->dim;
    } else {
      for (uint32_t k = 0; k < rows; k++) x->ids[i][k] = (int64_t)(k * 1000003 + i);
      x->cols[i].ids = x->ids[i];
      x->cols[i].n_ids = rows;
    }
  }
  x->in.n_cand = N_CAND;
  x->in.cols = x->cols;
}

static kd_registry *g_reg;
static struct input g_in;
static float g_want[3][N_CAND * KD_MAX_TASKS]; /* expected scores of versions 1 and 2 */
static uint32_t g_tasks[KD_MAX_TASKS], g_ntasks;
static atomic_int g_stop, g_bad, g_scored;

/* Reader: acquire, score with its scratch slot, compare with that version's expected scores. */
static void *reader(void *arg) {
  uint32_t slot = (uint32_t)(uintptr_t)arg;
  float out[N_CAND * KD_MAX_TASKS];
  for (int it = 0; it < 4000 && !atomic_load(&g_stop); it++) {
    struct kd_err e = {0};
    kd_version *v = kd_registry_acquire(g_reg, "a", (uint64_t)it, 0, NULL, &e);
    if (!v) {
      atomic_fetch_add(&g_bad, 1);
      continue;
    }
    int64_t num = kd_version_number(v);
    if (kd_score(kd_version_plan(v), kd_version_scratch(v, slot), &g_in.in, g_tasks, g_ntasks, out, &e) != KD_OK ||
        (num != 1 && num != 2) || memcmp(out, g_want[num], N_CAND * g_ntasks * sizeof(float)) != 0)
      atomic_fetch_add(&g_bad, 1);
    atomic_fetch_add(&g_scored, 1);
    kd_registry_release(v);
  }
  return NULL;
}

int main(void) {
  snprintf(g_repo, sizeof g_repo, "/tmp/kdreg-XXXXXX");
  REQUIRE(mkdtemp(g_repo));
  struct kd_err e = {0};

  /* A missing repository is an error naming it. */
  struct kd_registry_params p = {.repo = "/nonexistent/kdrank-repo", .max_cand = 16, .n_scratch = 2};
  REQUIRE(kd_registry_open(p, &e) == NULL);
  CHECK(e.code == KD_ERR_IO && strstr(e.msg, "/nonexistent/kdrank-repo"));

  write_version("a", 1, 101);
  write_version("a", 2, 102);
  write_garbage("a", 3);
  mkdirs("a/notaversion");
  mkdirs("a/0");
  mkdirs("b");
  write_garbage("b", 7);
  mkdirs("bad name!");
  p.repo = g_repo;
  g_reg = kd_registry_open(p, &e);
  REQUIRE(g_reg);
  CHECK(kd_registry_n_models(g_reg) == 2);
  CHECK(strcmp(kd_registry_model_name(g_reg, 0), "a") == 0);
  CHECK(strcmp(kd_registry_model_name(g_reg, 1), "b") == 0);
  CHECK(kd_registry_find(g_reg, "b") == 1 && kd_registry_find(g_reg, "bad name!") == -1);
  CHECK(kd_registry_available(g_reg, 0) == 1 && kd_registry_available(g_reg, 1) == 0);

  /* Latest valid version of a is 2; 3 failed and is recorded; 1 was never tried. */
  kd_version *v = kd_registry_acquire(g_reg, "a", 0, 0, NULL, &e);
  REQUIRE(v);
  CHECK(kd_version_number(v) == 2);
  CHECK(strcmp(kd_version_model(v), "a") == 0 && strcmp(kd_version_label(v), "stable") == 0);
  CHECK(kd_version_scratch(v, 1) != NULL && kd_version_scratch(v, 2) == NULL);
  struct kd_version_info vi[8];
  uint32_t nv = kd_registry_versions(g_reg, 0, vi, 8);
  CHECK(nv == 2);
  CHECK(vi[0].version == 3 && strcmp(vi[0].state, "FAILED") == 0 && strstr(vi[0].error, "model.kdr"));
  CHECK(vi[1].version == 2 && strcmp(vi[1].state, "AVAILABLE") == 0 && strcmp(vi[1].label, "stable") == 0);
  uint64_t ok, failed;
  kd_registry_load_counts(g_reg, 0, &ok, &failed);
  CHECK(ok == 1 && failed == 1);

  /* Expected scores of versions 1 and 2 from the scalar oracle on the same weights. */
  const struct kd_arch *a = kd_version_arch(v);
  make_input(a, &g_in);
  for (uint32_t t = 0; t < a->n_tasks; t++)
    if (a->tasks[t].served) g_tasks[g_ntasks++] = t;
  float out[N_CAND * KD_MAX_TASKS];
  REQUIRE(kd_score(kd_version_plan(v), kd_version_scratch(v, 0), &g_in.in, g_tasks, g_ntasks, g_want[2], &e) == KD_OK);
  char p2[512];
  snprintf(p2, sizeof p2, "%s/a/2/model.kdr", g_repo);
  kd_ckpt *ck2 = kd_ckpt_open(p2, &e);
  REQUIRE(ck2);
  CHECK(kd_version_crc(v) == kd_ckpt_crc(ck2) && kd_version_file_bytes(v) == kd_ckpt_file_size(ck2));
  CHECK(kd_version_n_meta(v) == kd_ckpt_n_meta(ck2) && kd_version_n_meta(v) > 0);
  for (uint32_t i = 0; i < kd_version_n_meta(v); i++) {
    const struct kd_meta *x = kd_version_meta_at(v, i), *y = kd_ckpt_meta_at(ck2, i);
    CHECK(strcmp(x->key, y->key) == 0 && x->type == y->type);
    if (x->type == KD_META_STR) CHECK(strcmp(x->v.s, y->v.s) == 0 && x->v.s != y->v.s);
  }
  CHECK(kd_version_meta_at(v, kd_version_n_meta(v)) == NULL);
  REQUIRE(kd_score_ref(kd_ckpt_model(ck2), &g_in.in, g_tasks, g_ntasks, out, &e) == KD_OK);
  kd_ckpt_close(ck2);
  for (uint32_t i = 0; i < N_CAND * g_ntasks; i++) CHECK(out[i] > g_want[2][i] - 1e-4f && out[i] < g_want[2][i] + 1e-4f);

  /* Errors. */
  CHECK(kd_registry_acquire(g_reg, "zz", 0, 0, NULL, &e) == NULL && e.code == KD_ERR_NOT_FOUND &&
        strstr(e.msg, "\"zz\" not found (models: a, b)"));
  CHECK(kd_registry_acquire(g_reg, "b", 0, 0, NULL, &e) == NULL && e.code == KD_REG_UNAVAILABLE);
  CHECK(kd_registry_acquire(g_reg, "a", 0, 1, NULL, &e) == NULL && e.code == KD_ERR_NOT_FOUND &&
        strstr(e.msg, "version 1 of model \"a\" is not loaded (loaded: 2)"));
  CHECK(kd_registry_acquire(g_reg, "a", 0, 0, "canary", &e) == NULL && e.code == KD_ERR_NOT_FOUND);
  kd_version *s2 = kd_registry_acquire(g_reg, "a", 0, 2, "stable", &e);
  CHECK(s2 && kd_version_number(s2) == 2);
  kd_registry_release(s2);

  /* Swap to version 1 while v (version 2) is held: v stays valid until released. */
  REQUIRE(kd_registry_load_version(g_reg, "a", 1, &e) == KD_OK);
  kd_version *v1 = kd_registry_acquire(g_reg, "a", 0, 0, NULL, &e);
  REQUIRE(v1);
  CHECK(kd_version_number(v1) == 1);
  REQUIRE(kd_score(kd_version_plan(v1), kd_version_scratch(v1, 0), &g_in.in, g_tasks, g_ntasks, g_want[1], &e) == KD_OK);
  CHECK(memcmp(g_want[1], g_want[2], N_CAND * g_ntasks * sizeof(float)) != 0);
  REQUIRE(kd_score(kd_version_plan(v), kd_version_scratch(v, 0), &g_in.in, g_tasks, g_ntasks, out, &e) == KD_OK);
  CHECK(memcmp(out, g_want[2], N_CAND * g_ntasks * sizeof(float)) == 0); /* old version intact */
  kd_registry_release(v);  /* last reference to version 2: freed here (ASan checks) */
  kd_registry_release(v1);
  nv = kd_registry_versions(g_reg, 0, vi, 8);
  /* Version 2 was unloaded once its last reader released it: its record is gone. */
  CHECK(nv == 2 && vi[1].version == 1 && strcmp(vi[1].state, "AVAILABLE") == 0 &&
        strcmp(vi[1].label, "stable") == 0);
  CHECK(vi[0].version == 3 && strcmp(vi[0].state, "FAILED") == 0);

  /* A failing load leaves the current version in place. */
  CHECK(kd_registry_load_version(g_reg, "a", 3, &e) != KD_OK);
  CHECK(kd_registry_load_version(g_reg, "a", 9, &e) != KD_OK && strstr(e.msg, "a/9/model.kdr"));
  CHECK(kd_registry_load_version(g_reg, "zz", 1, &e) == KD_ERR_NOT_FOUND);
  v = kd_registry_acquire(g_reg, "a", 0, 0, NULL, &e);
  CHECK(v && kd_version_number(v) == 1);
  kd_registry_release(v);

  /* Stress: two readers score while this thread swaps 1 <-> 2 (bounded). */
  pthread_t th[2];
  for (uintptr_t i = 0; i < 2; i++) REQUIRE(pthread_create(&th[i], NULL, reader, (void *)i) == 0);
  int swaps = 0;
  for (int i = 0; i < 60; i++) {
    REQUIRE(kd_registry_load_version(g_reg, "a", 1 + (i & 1) , &e) == KD_OK);
    swaps++;
  }
  atomic_store(&g_stop, 1);
  for (int i = 0; i < 2; i++) pthread_join(th[i], NULL);
  CHECKF(atomic_load(&g_bad) == 0, "%d bad reads of %d", atomic_load(&g_bad), atomic_load(&g_scored));
  CHECK(atomic_load(&g_scored) > 0);
  printf("stress: %d swaps, %d scored reads\n", swaps, atomic_load(&g_scored));

  kd_registry_free(g_reg);
  char cmd[300];
  snprintf(cmd, sizeof cmd, "rm -rf '%s'", g_repo);
  CHECK(system(cmd) == 0);
  KD_TEST_END();
}
