/* test_arch.c - architecture, presets, tensor table, input checks and the oracle on a hand-worked net. */
#include <math.h>
#include <string.h>

#include "kd_test.h"
#include "kdrank_model.h"

static void test_presets(void) {
  struct kd_arch a;
  struct kd_err e = {0};
  REQUIRE(kd_arch_preset("ref-student", &a, &e) == KD_OK);
  CHECK(kd_arch_validate(&a, &e) == KD_OK);
  CHECK(kd_arch_ctx_width(&a) == 256);
  CHECK(kd_arch_cand_width(&a) == 256);
  CHECK(a.n_shared == 2 && a.shared[0] == 256 && a.shared[1] == 128);
  CHECK(a.n_tower == 1 && a.tower[0] == 64 && a.n_tasks == 4);
  int item = kd_arch_find_feature(&a, "item_id");
  REQUIRE(item >= 0);
  CHECK(a.features[item].group == KD_GROUP_CANDIDATE && a.features[item].rows >= 100000);
  CHECK(kd_arch_find_task(&a, "watch_time") == 2 && a.tasks[2].type == KD_TASK_REGRESSION);
  struct kd_arch t2, t4;
  REQUIRE(kd_arch_preset("ref-teacher-2x", &t2, &e) == KD_OK);
  REQUIRE(kd_arch_preset("ref-teacher-4x", &t4, &e) == KD_OK);
  CHECK(t2.shared[0] == 512 && t4.shared[0] == 1024 && t4.tower[0] == 256);
  CHECK(kd_arch_preset("nope", &a, &e) == KD_ERR_NOT_FOUND && strstr(e.msg, "ref-student"));
  REQUIRE(kd_arch_preset("tiny", &a, &e) == KD_OK);
  CHECK(kd_arch_validate(&a, &e) == KD_OK);
}

static void test_tensor_table(void) {
  struct kd_arch a;
  REQUIRE(kd_arch_preset("ref-student", &a, NULL) == KD_OK);
  /* 5 sparse tables + 2 shared x (w,b) + 4 tasks x 2 layers x (w,b) */
  CHECK(kd_arch_n_tensors(&a) == 5 + 4 + 16);
  struct kd_tensor_info t;
  REQUIRE(kd_arch_tensor(&a, 0, &t) == KD_OK);
  CHECK(!strcmp(t.name, "emb.user_id") && t.shape[0] == 100000 && t.shape[1] == 64);
  REQUIRE(kd_arch_tensor(&a, 5, &t) == KD_OK);
  CHECK(!strcmp(t.name, "shared.0.weight") && t.shape[0] == 256 && t.shape[1] == 512);
  REQUIRE(kd_arch_tensor(&a, 8, &t) == KD_OK);
  CHECK(!strcmp(t.name, "shared.1.bias") && t.ndim == 1 && t.shape[0] == 128);
  REQUIRE(kd_arch_tensor(&a, 9, &t) == KD_OK);
  CHECK(!strcmp(t.name, "tower.click.0.weight") && t.shape[0] == 64 && t.shape[1] == 128);
  REQUIRE(kd_arch_tensor(&a, 24, &t) == KD_OK);
  CHECK(!strcmp(t.name, "tower.satisfied.1.bias") && t.shape[0] == 1);
  CHECK(kd_arch_tensor(&a, 25, &t) == KD_ERR_RANGE);
  /* flops: split saves (n-1) context blocks */
  double d = kd_arch_flops(&a, 10, 0) - kd_arch_flops(&a, 10, 1);
  CHECK(fabs(d - 2.0 * 256 * 256 * 9) < 1e-6);
}

static void test_validate_errors(void) {
  struct kd_arch a;
  struct kd_err e = {0};
  REQUIRE(kd_arch_preset("tiny", &a, NULL) == KD_OK);
  strcpy(a.features[1].name, a.features[0].name);
  CHECK(kd_arch_validate(&a, &e) == KD_ERR_INVALID && strstr(e.msg, "appears twice"));
  REQUIRE(kd_arch_preset("tiny", &a, NULL) == KD_OK);
  a.shared[1] = 0;
  CHECK(kd_arch_validate(&a, &e) == KD_ERR_INVALID && strstr(e.msg, "shared layer 1"));
  REQUIRE(kd_arch_preset("tiny", &a, NULL) == KD_OK);
  a.tasks[0].xform = KD_XFORM_LOG1P;
  CHECK(kd_arch_validate(&a, &e) == KD_ERR_INVALID && strstr(e.msg, "click"));
}

/* A net small enough to work out by hand:
 * ctx dense c (dim 1), cand sparse id (rows 4, dim 2, k ids mean-pooled), shared [2], tower [], tasks p (binary), r (log1p). */
static void test_oracle_by_hand(void) {
  struct kd_arch a;
  memset(&a, 0, sizeof a);
  strcpy(a.name, "hand");
  a.n_features = 2;
  strcpy(a.features[0].name, "c"); a.features[0].kind = KD_FEAT_DENSE; a.features[0].group = KD_GROUP_CONTEXT; a.features[0].dim = 1;
  strcpy(a.features[1].name, "id"); a.features[1].kind = KD_FEAT_SPARSE; a.features[1].group = KD_GROUP_CANDIDATE;
  a.features[1].dim = 2; a.features[1].rows = 4;
  a.n_shared = 1; a.shared[0] = 2;
  a.n_tasks = 2;
  strcpy(a.tasks[0].name, "p"); a.tasks[0].served = 1;
  strcpy(a.tasks[1].name, "r"); a.tasks[1].type = KD_TASK_REGRESSION; a.tasks[1].xform = KD_XFORM_LOG1P; a.tasks[1].served = 1;
  struct kd_err e = {0};
  struct kd_model *m = kd_model_alloc(&a, &e);
  REQUIRE(m);
  float *emb = kd_model_emb(m, 1);
  for (int i = 0; i < 8; i++) emb[i] = (float)(i + 1); /* row r = (2r+1, 2r+2) */
  float *W = kd_model_shared_w(m, 0), *b = kd_model_shared_b(m, 0);
  /* x = [c, e0, e1]; h0 = relu(c + e0 - 1), h1 = relu(-e1 + 3) */
  W[0] = 1; W[1] = 1; W[2] = 0; b[0] = -1;
  W[3] = 0; W[4] = 0; W[5] = -1; b[1] = 3;
  float *u0 = kd_model_tower_w(m, 0, 0), *d0 = kd_model_tower_b(m, 0, 0);
  u0[0] = 0.5f; u0[1] = 1; d0[0] = -2;   /* p: logit = 0.5 h0 + h1 - 2 */
  float *u1 = kd_model_tower_w(m, 1, 0), *d1 = kd_model_tower_b(m, 1, 0);
  u1[0] = 0.25f; u1[1] = 0; d1[0] = 0;   /* r: logit = 0.25 h0 */
  int64_t ids[4] = {5, 7, 5, 5};   /* candidate 0: ids 5,7 pooled; candidate 1: 5,5 */
  float c = 2;
  struct kd_column cols[2] = {{.floats = &c, .n_floats = 1}, {.ids = ids, .n_ids = 4}};
  struct kd_input in = {.n_cand = 2, .cols = cols};
  uint64_t r5 = kd_hash_row(5, 4), r7 = kd_hash_row(7, 4);
  double e0[2] = {(emb[r5 * 2] + emb[r7 * 2]) / 2.0, emb[r5 * 2]};
  double e1[2] = {(emb[r5 * 2 + 1] + emb[r7 * 2 + 1]) / 2.0, emb[r5 * 2 + 1]};
  uint32_t tasks[2] = {1, 0}; /* reversed order on purpose */
  float out[4];
  REQUIRE(kd_score_ref(m, &in, tasks, 2, out, &e) == KD_OK);
  float lg[4];
  REQUIRE(kd_logits_ref(m, &in, tasks, 2, lg, &e) == KD_OK);
  for (int n = 0; n < 2; n++) {
    double h0 = fmax(0, c + e0[n] - 1), h1 = fmax(0, -e1[n] + 3);
    double lp = 0.5 * h0 + h1 - 2, lr = 0.25 * h0;
    CHECKF(fabs(out[n * 2 + 0] - expm1(lr)) < 1e-5, "cand %d r %g vs %g", n, out[n * 2], expm1(lr));
    CHECKF(fabs(out[n * 2 + 1] - 1 / (1 + exp(-lp))) < 1e-6, "cand %d p", n);
    CHECK(fabs(lg[n * 2 + 0] - lr) < 1e-5 && fabs(lg[n * 2 + 1] - lp) < 1e-5);
  }
  /* activation clipping caps hidden units */
  m->arch.act_clip = 0.5f;
  REQUIRE(kd_logits_ref(m, &in, tasks, 2, lg, &e) == KD_OK);
  double h0 = fmin(0.5, fmax(0, c + e0[0] - 1));
  CHECK(fabs(lg[0] - 0.25 * h0) < 1e-6);
  kd_model_free(m);
}

static void test_input_check(void) {
  struct kd_arch a;
  REQUIRE(kd_arch_preset("tiny", &a, NULL) == KD_OK);
  struct kd_err e = {0};
  float ctxd[4] = {0}, itemd[6] = {0};
  int64_t uid = 1, iid[2] = {1, 2}, tags[4] = {1, 2, 3, 4};
  struct kd_column cols[5] = {
      {.ids = &uid, .n_ids = 1}, {.floats = ctxd, .n_floats = 4}, {.ids = iid, .n_ids = 2},
      {.ids = tags, .n_ids = 4}, {.floats = itemd, .n_floats = 6}};
  struct kd_input in = {.n_cand = 2, .cols = cols};
  CHECK(kd_input_check(&a, &in, &e) == KD_OK);
  cols[4].n_floats = 5;
  CHECK(kd_input_check(&a, &in, &e) == KD_ERR_INVALID && strstr(e.msg, "item_dense") && strstr(e.msg, "expected 6"));
  cols[4].n_floats = 6;
  cols[3].n_ids = 3;
  CHECK(kd_input_check(&a, &in, &e) == KD_ERR_INVALID && strstr(e.msg, "item_tags"));
  cols[3].n_ids = 4;
  in.n_cand = 0;
  CHECK(kd_input_check(&a, &in, &e) == KD_ERR_INVALID && strstr(e.msg, "count is 0"));
}

int main(void) {
  test_presets();
  test_tensor_table();
  test_validate_errors();
  test_oracle_by_hand();
  test_input_check();
  KD_TEST_END();
}
