/* test_clippy.c - Clippy checked against the expected values of TensorFlow Recommenders' unit tests
 * (tensorflow_recommenders/experimental/optimizers/clippy_adagrad_test.py): ClipByReferenceTest
 * (shrink_by_references: the scale) and ClippyAdagradTest (one step on a dense variable and on an
 * embedding table's touched row, with and without clip_accumulator_update). The numbers below are
 * the ones written in that file (not computed by this code). use_standard_accumulator_update is
 * not part of kdrank's rule (distillation.md: A from before the step) and is not ported. */
#include <math.h>

#include "kd_test.h"
#include "kdrank_train.h"

#define NEAR(a, b) (fabs((double)(a) - (double)(b)) <= 1e-5 + 1e-5 * fabs((double)(b)))

/* shrink_by_references(tensor, references, relative_factors, absolute_factor) -> (tensor*s, s) */
static void scale_case(float tensor, int nref, float r0, float f0, float r1, float f1, float absf,
                       double want_clipped, double want_scale) {
  float ref0[1] = {nref > 0 ? r0 : 0}, ref1[1] = {r1};
  double s = kd_clippy_scale(&tensor, 1, ref0, nref > 0 ? f0 : 0, nref > 1 ? ref1 : NULL, f1, absf);
  CHECKF(NEAR(s, want_scale), "tensor %g: scale %g, expected %g", tensor, s, want_scale);
  CHECKF(NEAR(tensor * s, want_clipped), "tensor %g: clipped %g, expected %g", tensor, tensor * s, want_clipped);
}

static void test_clip_by_reference(void) {
  /* test_scalar_clip */
  scale_case(2, 1, 4, 0.1f, 0, 0, 0.02f, 0.42, 0.21);
  scale_case(2, 1, -4, 0.1f, 0, 0, 0.02f, 0.42, 0.21);
  scale_case(-2, 1, 4, 0.1f, 0, 0, 0.02f, -0.42, 0.21);
  scale_case(-2, 1, 4, 0.1f, 0, 0, 0.0f, -0.4, 0.2);
  scale_case(-2, 1, 0, 0.1f, 0, 0, 0.0f, 0, 0);
  scale_case(2, 1, 20, 0.1f, 0, 0, 0.1f, 2, 1);   /* no clipping needed */
  scale_case(-2, 1, 20, 0.1f, 0, 0, 0.1f, -2, 1);
  scale_case(0, 1, 1, 0.1f, 0, 0, 0.1f, 0, 1);
  scale_case(0, 1, 1, 0.1f, 0, 0, 0.0f, 0, 1);
  scale_case(0, 1, 0, 0.0f, 0, 0, 0.0f, 0, 1);
  /* test_scalar_multiple_clip */
  scale_case(2, 2, 4, 0.1f, -5, 0.2f, 0.02f, 4 * .1 + 5 * .2 + .02, (4 * .1 + 5 * .2 + .02) / 2);
  /* test_scalar_empty_reference */
  scale_case(2, 0, 0, 0, 0, 0, 0.02f, 0.02, 0.01);
  scale_case(0, 0, 0, 0, 0, 0, 0.0f, 0, 1);
  /* test_tensor_clip */
  {
    float t[2] = {1, 1}, r[2] = {1, 0.1f};
    double s = kd_clippy_scale(t, 2, r, 0.1f, NULL, 0, 0.01f);
    CHECK(NEAR(s, 0.02));
  }
  /* test_tensor_clip_zero_absolute_factor */
  {
    float t[4] = {1, 1, 0, 0}, r[4] = {1, 0.1f, 1, 0};
    CHECK(NEAR(kd_clippy_scale(t, 4, r, 0.1f, NULL, 0, 0), 0.01));
  }
  /* test_tensor_clip_zero_reference */
  {
    float t[4] = {1, 1, 0, 0}, r[4] = {1, 0, 1, 0};
    CHECK(NEAR(kd_clippy_scale(t, 4, r, 0.1f, NULL, 0, 0), 0.0));
  }
  /* test_broadcast: reference 1. broadcast to the tensor's shape */
  {
    float t[4] = {1, 2, 1, 2}, r[4] = {1, 1, 1, 1};
    CHECK(NEAR(kd_clippy_scale(t, 4, r, 0.1f, NULL, 0, 0.1f), 0.1));
  }
}

static void test_single_step_no_clip(void) {
  struct kd_opt_params p = kd_opt_defaults(KD_OPT_CLIPPY); /* rel 0.1, acc 0, abs 1e-7, eps 1e-7 */
  const float lr = 0.1f, ia = 0.1f;
  float x[2] = {1, 2}, acc[2] = {ia * ia, ia * ia}, g[2] = {0.1f, 0.15f};
  double s = kd_clippy_step(x, acc, g, 2, lr, &p);
  CHECK(NEAR(x[0], 1.0 - lr * 0.1 / ia) && NEAR(x[1], 2.0 - lr * 0.15 / ia));
  CHECK(NEAR(acc[0], ia * ia + 0.1 * 0.1) && NEAR(acc[1], ia * ia + 0.15 * 0.15));
  CHECK(NEAR(s, 1.0));
  /* sparse: a (2, 2) table, gradient on row 1 only (compact: one row of gradients) */
  float sx[4] = {3, 4, 1, 2}, sa[4] = {ia * ia, ia * ia, ia * ia, ia * ia}, sg[2] = {0.1f, 0.15f};
  uint64_t rows[1] = {1};
  double ss = kd_clippy_step_rows(sx, sa, sg, rows, 1, 2, lr, &p);
  CHECK(sx[0] == 3 && sx[1] == 4);
  CHECK(NEAR(sx[2], 1.0 - lr * 0.1 / ia) && NEAR(sx[3], 2.0 - lr * 0.15 / ia));
  CHECK(NEAR(sa[0], ia * ia) && NEAR(sa[1], ia * ia));
  CHECK(NEAR(sa[2], ia * ia + 0.1 * 0.1) && NEAR(sa[3], ia * ia + 0.15 * 0.15));
  CHECK(NEAR(ss, 1.0));
}

static void test_single_step_clip(int clip_acc) {
  struct kd_opt_params p = kd_opt_defaults(KD_OPT_CLIPPY);
  const float lr = 0.2f, ia = 0.1f;
  p.clippy_rel = 0.4f;
  p.clippy_acc = 0.01f;
  p.clippy_abs = 0.1f;
  p.clippy_eps = 0.0f;
  p.clippy_clip_acc = clip_acc;
  float x[2] = {1, 2}, acc[2] = {ia * ia, ia * ia}, g[2] = {10, 10};
  double s = kd_clippy_step(x, acc, g, 2, lr, &p);
  /* change in each coordinate is at most 0.4 x + 0.01 / initial_accumulator_sqrt + 0.1 */
  CHECKF(NEAR(x[0], 0.4) && NEAR(x[1], 1.4), "x = [%g, %g], expected [0.4, 1.4]", x[0], x[1]);
  double want_s = 0.6 * ia / (10.0 * lr);
  CHECKF(NEAR(s, want_s), "clipping factor %g, expected %g", s, want_s);
  double want_acc = clip_acc ? ia * ia + (want_s * 10) * (want_s * 10) : ia * ia + 100.0;
  CHECK(NEAR(acc[0], want_acc) && NEAR(acc[1], want_acc));
  float sx[4] = {3, 4, 1, 2}, sa[4] = {ia * ia, ia * ia, ia * ia, ia * ia}, sg[2] = {10, 10};
  uint64_t rows[1] = {1};
  double ss = kd_clippy_step_rows(sx, sa, sg, rows, 1, 2, lr, &p);
  CHECK(sx[0] == 3 && sx[1] == 4 && NEAR(sx[2], 0.4) && NEAR(sx[3], 1.4));
  CHECK(NEAR(ss, want_s));
  CHECK(NEAR(sa[0], ia * ia) && NEAR(sa[2], want_acc) && NEAR(sa[3], want_acc));
}

/* Learning-rate schedules: values computed by hand from their definitions. */
static void test_schedules(void) {
  struct kd_opt_params p = kd_opt_defaults(KD_OPT_ADAM);
  p.lr = 0.1f;
  p.warmup = 10;
  p.total_steps = 110;
  p.sched = KD_SCHED_CONSTANT;
  CHECK(NEAR(kd_opt_lr_at(&p, 0), 0.01));  /* (0 + 1) / 10 of lr */
  CHECK(NEAR(kd_opt_lr_at(&p, 4), 0.05));
  CHECK(NEAR(kd_opt_lr_at(&p, 9), 0.1));
  CHECK(NEAR(kd_opt_lr_at(&p, 50), 0.1));
  p.sched = KD_SCHED_COSINE;
  p.min_lr_ratio = 0.1f;
  CHECK(NEAR(kd_opt_lr_at(&p, 10), 0.1));          /* start of decay */
  CHECK(NEAR(kd_opt_lr_at(&p, 60), 0.055));        /* halfway: floor + (lr - floor) / 2 */
  CHECK(NEAR(kd_opt_lr_at(&p, 110), 0.01));        /* the floor */
  CHECK(NEAR(kd_opt_lr_at(&p, 500), 0.01));
  p.sched = KD_SCHED_LINEAR;
  CHECK(NEAR(kd_opt_lr_at(&p, 35), 0.01 + 0.09 * 0.75));
  p.sched = KD_SCHED_INVSQRT;
  CHECK(NEAR(kd_opt_lr_at(&p, 39), 0.1 * sqrt(10.0 / 40.0)));
}

int main(void) {
  test_schedules();
  test_clip_by_reference();
  test_single_step_no_clip();
  test_single_step_clip(0);
  test_single_step_clip(1); /* test_single_step_clip_with_accumulator */
  KD_TEST_END();
}
