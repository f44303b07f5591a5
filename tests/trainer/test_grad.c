/* test_grad.c - finite-difference gradient checks for every tensor kind (sparse pooled embeddings
 * with multi-valued ids, shared layers, tower layers, the output layer) with activation clipping on,
 * for every loss (BCE, squared error, Huber), with per-task weights and missing labels; the trainer's
 * forward against the model core's oracle kd_logits_ref; determinism for (seed, threads). */
#include <math.h>
#include <stdio.h>

#include "kd_test.h"
#include "tt_util.h"

static void check_grads(float act_clip, float huber, uint32_t threads) {
  struct kd_arch a;
  struct kd_err e;
  REQUIRE(kd_arch_preset("tiny", &a, &e) == KD_OK);
  a.act_clip = act_clip;
  struct kd_model *m = kd_model_alloc(&a, &e);
  REQUIRE(m);
  kd_model_init_random(m, 7);
  struct kd_table tab;
  REQUIRE(tt_table(&tab, &a, 12, 3, 0, 0, 1, 99) == 0);
  struct kd_train_params p;
  memset(&p, 0, sizeof p);
  p.threads = threads;
  p.max_batch = 12;
  p.opt = kd_opt_defaults(KD_OPT_SGD);
  tt_losses(&p, &a, huber);
  kd_trainer *t = kd_trainer_create(m, &p, &e);
  REQUIRE(t);
  uint64_t rows[12];
  for (int i = 0; i < 12; i++) rows[i] = (uint64_t)i;
  uint32_t nt = kd_arch_n_tensors(&a);
  int bad = 0, checked = 0;
  char ctx[96];
  snprintf(ctx, sizeof ctx, "clip %g, huber %g, threads %u", act_clip, huber, threads);
  for (uint32_t ti = 0; ti < nt; ti++) {
    struct kd_tensor_info inf;
    kd_arch_tensor(&a, ti, &inf);
    int nonzero = 0;
    bad += tt_gradcheck_tensor(t, m, &tab, rows, 12, ti, 64, ctx, &checked, &nonzero);
    CHECKF(nonzero > 0, "tensor %s: no non-zero gradient sampled", inf.name);
  }
  CHECKF(bad == 0, "%d of %d gradient elements disagree", bad, checked);
  kd_trainer_free(t);
  kd_table_free(&tab);
  kd_model_free(m);
}

/* The trainer's forward (batched, BLAS, threads) equals the oracle on a request-shaped batch. */
static void check_forward_vs_ref(uint32_t threads) {
  struct kd_arch a;
  struct kd_err e;
  REQUIRE(kd_arch_preset("tiny", &a, &e) == KD_OK);
  a.act_clip = 0.3f;
  struct kd_model *m = kd_model_alloc(&a, &e);
  REQUIRE(m);
  kd_model_init_random(m, 3);
  enum { N = 37, K = 2 };
  struct kd_table tab;
  REQUIRE(tt_table(&tab, &a, N, K, K, 1, 0, 5) == 0);
  /* build the request: context from row 0, candidate columns from all rows */
  struct kd_column cols[KD_MAX_FEATURES];
  memset(cols, 0, sizeof cols);
  for (uint32_t f = 0; f < a.n_features; f++) {
    const struct kd_feature *ft = &a.features[f];
    uint64_t rows = ft->group == KD_GROUP_CONTEXT ? 1 : N;
    if (ft->kind == KD_FEAT_DENSE) {
      cols[f].floats = tab.cols[f].dense;
      cols[f].n_floats = rows * ft->dim;
    } else {
      cols[f].ids = tab.cols[f].ids;
      cols[f].n_ids = rows * K;
    }
  }
  struct kd_input in = {.n_cand = N, .cols = cols};
  uint32_t tasks[KD_MAX_TASKS];
  for (uint32_t k = 0; k < a.n_tasks; k++) tasks[k] = k;
  float ref[N * KD_MAX_TASKS], got[N * KD_MAX_TASKS], noclip[N * KD_MAX_TASKS];
  REQUIRE(kd_logits_ref(m, &in, tasks, a.n_tasks, ref, &e) == KD_OK);
  struct kd_train_params p;
  memset(&p, 0, sizeof p);
  p.threads = threads;
  p.max_batch = 16; /* forces chunking */
  p.opt = kd_opt_defaults(KD_OPT_ADAM);
  tt_losses(&p, &a, 0);
  kd_trainer *t = kd_trainer_create(m, &p, &e);
  REQUIRE(t);
  uint64_t rows[N];
  for (int i = 0; i < N; i++) rows[i] = (uint64_t)i;
  REQUIRE(kd_trainer_predict(t, &tab, rows, N, got, &e) == KD_OK);
  double maxd = 0;
  for (uint32_t i = 0; i < N * a.n_tasks; i++) {
    double d = fabs((double)got[i] - ref[i]) / (1 + fabs((double)ref[i]));
    if (d > maxd) maxd = d;
  }
  CHECKF(maxd < 1e-5, "forward vs kd_logits_ref: max relative difference %g (threads %u)", maxd, threads);
  /* the clip is active in this configuration (otherwise this test would not cover it) */
  m->arch.act_clip = 0;
  REQUIRE(kd_logits_ref(m, &in, tasks, a.n_tasks, noclip, &e) == KD_OK);
  m->arch.act_clip = 0.3f;
  int differs = 0;
  for (uint32_t i = 0; i < N * a.n_tasks; i++) differs |= noclip[i] != ref[i];
  CHECK(differs);
  kd_trainer_free(t);
  kd_table_free(&tab);
  kd_model_free(m);
}

/* Same seed and thread count -> bit-identical weights after some Adam steps. */
static void check_determinism(void) {
  struct kd_arch a;
  struct kd_err e;
  REQUIRE(kd_arch_preset("tiny", &a, &e) == KD_OK);
  struct kd_table tab;
  REQUIRE(tt_table(&tab, &a, 64, 3, 0, 0, 1, 11) == 0);
  uint64_t rows[64];
  for (int i = 0; i < 64; i++) rows[i] = (uint64_t)((i * 37) % 64);
  struct kd_model *ms[2];
  for (int r = 0; r < 2; r++) {
    ms[r] = kd_model_alloc(&a, &e);
    REQUIRE(ms[r]);
    kd_model_init_random(ms[r], 5);
    struct kd_train_params p;
    memset(&p, 0, sizeof p);
    p.threads = 2;
    p.max_batch = 32;
    p.opt = kd_opt_defaults(KD_OPT_ADAM);
    p.opt.grad_clip = 1.0f;
    tt_losses(&p, &a, 0.5f);
    kd_trainer *t = kd_trainer_create(ms[r], &p, &e);
    REQUIRE(t);
    for (int s = 0; s < 6; s++) REQUIRE(kd_trainer_step(t, &tab, rows + (s % 2) * 32, 32, NULL, NULL, &e) == KD_OK);
    kd_trainer_free(t);
  }
  CHECK(memcmp(ms[0]->owned, ms[1]->owned, ms[0]->owned_bytes) == 0);
  kd_model_free(ms[0]);
  kd_model_free(ms[1]);
  kd_table_free(&tab);
}

int main(void) {
  check_grads(0.0f, 0.0f, 1);   /* ReLU, BCE + MSE */
  check_grads(0.8f, 0.0f, 2);   /* activation clipping, two shards */
  check_grads(0.8f, 0.3f, 2);   /* Huber */
  check_forward_vs_ref(1);
  check_forward_vs_ref(2);
  check_determinism();
  KD_TEST_END();
}
