/* test_distill.c - distillation through the trainer: soft losses (values and finite-difference
 * gradients, temperature included), finite-difference gradients of a network with auxiliary heads
 * and soft terms, and the label -> student pipeline against a real store (SQLite file, or the
 * PostgreSQL URI given): teacher labels equal the oracle's logits, immutability, WRITING versions
 * unreadable, coverage refusal, direct with alpha 0 equal to no distillation, aux heads kept or
 * dropped, provenance, a cross-domain teacher through the feature mapping.
 * Usage: test_distill --sqlite | --pg URI */
#include <math.h>
#include <stdio.h>
#include <unistd.h>

#include "kd_test.h"
#include "kdrank_labelstore.h"
#include "kdrank_loader.h"
#include "tt_util.h"

static double sig(double x) { return 1.0 / (1.0 + exp(-x)); }

/* Soft BCE against an independent formula, and d/dz against central differences. */
static void check_soft_losses(void) {
  const float Ts[] = {0.5f, 1.0f, 2.0f, 4.0f}, zs[] = {-3.0f, -0.7f, 0.0f, 1.2f, 4.0f}, ts[] = {-2.0f, 0.3f, 3.0f};
  for (size_t a = 0; a < 4; a++)
    for (size_t b = 0; b < 5; b++)
      for (size_t c = 0; c < 3; c++) {
        float T = Ts[a], z = zs[b], t = ts[c], d;
        double p = sig(t / T), q = sig(z / T);
        double want = -(p * log(q) + (1 - p) * log(1 - q)) * T * T;
        double got = kd_loss_eval(KD_LOSS_SOFT_BCE, T, z, t, &d);
        CHECKF(fabs(got - want) <= 1e-9 + 1e-9 * fabs(want), "soft bce T %g z %g t %g: %.12g vs %.12g", T, z, t, got, want);
        double h = 1e-3, dd;
        float dummy;
        dd = (kd_loss_eval(KD_LOSS_SOFT_BCE, T, (float)(z + h), t, &dummy) -
              kd_loss_eval(KD_LOSS_SOFT_BCE, T, (float)(z - h), t, &dummy)) / (2 * h);
        CHECKF(fabs(dd - d) <= 1e-3 + 1e-3 * fabs(dd), "soft bce grad T %g z %g t %g: %g vs fd %g", T, z, t, d, dd);
        /* the soft loss is smallest where the student agrees with the teacher */
        float d0;
        kd_loss_eval(KD_LOSS_SOFT_BCE, T, t, t, &d0);
        CHECKF(fabs(d0) < 1e-5, "soft bce gradient at z = t is %g", d0);
        double sq = kd_loss_eval(KD_LOSS_SOFT_SQ, 0, z, t, &d);
        double dz = (double)z - (double)t;
        CHECKF(fabs(sq - dz * dz) < 1e-9 && fabs(d - 2 * dz) < 1e-5, "soft sq z %g t %g: %g, d %g", z, t, sq, d);
      }
}

/* A tiny net with an auxiliary head per task, hard terms on the served heads, soft terms on the
 * aux heads (and a direct soft term on task 0): every tensor's gradient against finite differences. */
static void check_aux_grads(float T) {
  struct kd_arch a;
  struct kd_err e;
  REQUIRE(kd_arch_preset("tiny", &a, &e) == KD_OK);
  uint32_t n_lab = a.n_tasks;
  for (uint32_t k = 0; k < n_lab; k++) {
    a.tasks[a.n_tasks] = a.tasks[k];
    REQUIRE(strlen(a.tasks[k].name) + 5 <= KD_NAME_MAX);
    strcat(a.tasks[a.n_tasks].name, "_aux");
    a.tasks[a.n_tasks].served = 0;
    a.n_tasks++;
  }
  REQUIRE(kd_arch_validate(&a, &e) == KD_OK);
  struct kd_model *m = kd_model_alloc(&a, &e);
  REQUIRE(m);
  kd_model_init_random(m, 11);
  struct kd_arch la = a;
  la.n_tasks = n_lab;
  struct kd_table tab;
  REQUIRE(tt_table(&tab, &la, 12, 3, 0, 0, 1, 42) == 0);
  tab.n_soft = n_lab;
  tab.soft = malloc(12 * n_lab * sizeof(float));
  REQUIRE(tab.soft);
  uint64_t s = 5;
  for (uint32_t i = 0; i < 12 * n_lab; i++) tab.soft[i] = (i % 5 == 3) ? NAN : (float)(4 * tt_unif(&s) - 2);
  struct kd_train_params p;
  memset(&p, 0, sizeof p);
  p.threads = 2;
  p.max_batch = 12;
  p.opt = kd_opt_defaults(KD_OPT_SGD);
  tt_losses(&p, &la, 0);
  for (uint32_t k = 0; k < n_lab; k++) {
    struct kd_loss_term *lt = &p.loss[p.n_loss++];
    memset(lt, 0, sizeof *lt);
    lt->task = n_lab + k;
    lt->source = KD_TARGET_TEACHER;
    lt->target = k;
    lt->kind = a.tasks[k].type == KD_TASK_BINARY ? KD_LOSS_SOFT_BCE : KD_LOSS_SOFT_SQ;
    lt->delta = lt->kind == KD_LOSS_SOFT_BCE ? T : 0;
    lt->weight = 0.7f;
  }
  struct kd_loss_term *dt = &p.loss[p.n_loss++]; /* direct: a soft term on served task 0 */
  memset(dt, 0, sizeof *dt);
  dt->task = 0;
  dt->source = KD_TARGET_TEACHER;
  dt->target = 0;
  dt->kind = a.tasks[0].type == KD_TASK_BINARY ? KD_LOSS_SOFT_BCE : KD_LOSS_SOFT_SQ;
  dt->delta = dt->kind == KD_LOSS_SOFT_BCE ? T : 0;
  dt->weight = 0.4f;
  kd_trainer *t = kd_trainer_create(m, &p, &e);
  REQUIRE(t);
  uint64_t rows[12];
  for (int i = 0; i < 12; i++) rows[i] = (uint64_t)i;
  uint32_t nt = kd_arch_n_tensors(&a);
  int bad = 0, checked = 0;
  char ctx[32];
  snprintf(ctx, sizeof ctx, "aux, T %g", T);
  for (uint32_t ti = 0; ti < nt; ti++) {
    struct kd_tensor_info inf;
    kd_arch_tensor(&a, ti, &inf);
    int nonzero = 0;
    bad += tt_gradcheck_tensor(t, m, &tab, rows, 12, ti, 48, ctx, &checked, &nonzero);
    CHECKF(nonzero > 0, "tensor %s: no non-zero gradient sampled", inf.name);
  }
  CHECKF(bad == 0, "%d of %d gradient elements disagree (T %g)", bad, checked, T);
  /* a soft term reading a table without teacher columns is refused, not read out of bounds */
  float *keep = tab.soft;
  tab.soft = NULL;
  double l;
  CHECK(kd_trainer_grad(t, &tab, rows, 12, &l, NULL, &e) == KD_ERR_INVALID);
  tab.soft = keep;
  kd_trainer_free(t);
  kd_table_free(&tab);
  kd_model_free(m);
}

static char g_dir[256], g_store[1024];

static void path(char *out, size_t cap, const char *name) { snprintf(out, cap, "%s/%s", g_dir, name); }

static const char *g_tasks; /* --distill-tasks of the next fit (NULL: all) */

static int fit(const char *out, uint32_t distill, float alpha, const char *labels, float min_cov, int drop_aux,
               double *coverage, struct kd_err *e) {
  struct kd_fit_config c;
  char tr[512], te[512], sc[512];
  path(tr, sizeof tr, "d/train.tsv");
  path(te, sizeof te, "d/test.tsv");
  path(sc, sizeof sc, "d/schema.json");
  kd_fit_defaults(&c);
  c.train_path = tr;
  c.test_path = te;
  c.schema_path = sc;
  c.out_path = out;
  c.arch = "tiny";
  c.epochs = 2;
  c.batch = 256;
  c.threads = 2;
  c.seed = 3;
  c.quiet = 1;
  c.distill = distill;
  c.alpha = alpha;
  c.labels = labels;
  c.min_coverage = min_cov;
  c.drop_aux = drop_aux;
  c.temperature = 2.0f;
  c.distill_tasks = g_tasks;
  int rc = kd_fit_run(&c, e);
  if (coverage) *coverage = c.coverage;
  return rc;
}

/* 1 when the two checkpoints hold bit-identical tensors. */
static int same_weights(const char *p1, const char *p2) {
  struct kd_err e;
  kd_ckpt *a = kd_ckpt_open(p1, &e), *b = kd_ckpt_open(p2, &e);
  REQUIRE(a && b);
  const struct kd_model *ma = kd_ckpt_model(a), *mb = kd_ckpt_model(b);
  int same = ma->n_tensors == mb->n_tensors;
  for (uint32_t i = 0; same && i < ma->n_tensors; i++) {
    struct kd_tensor_info inf;
    kd_arch_tensor(&ma->arch, i, &inf);
    same = !memcmp(ma->t[i], mb->t[i], inf.numel * sizeof(float));
  }
  kd_ckpt_close(a);
  kd_ckpt_close(b);
  return same;
}

static const char *meta_str(const kd_ckpt *c, const char *key) {
  const struct kd_meta *m = kd_ckpt_meta_find(c, key);
  return m && m->type == KD_META_STR ? m->v.s : "";
}

static void check_pipeline(void) {
  struct kd_err e;
  char d[512], teacher[512], tr[512], sc[512], pin[1200], out1[512], out2[512], half[512];
  path(d, sizeof d, "d");
  struct kd_synth_params sp = {.seed = 9, .n_train = 3000, .n_test = 1000, .n_users = 200, .n_items = 100};
  REQUIRE(kd_synth_write(d, sp, &e) == KD_OK);
  path(teacher, sizeof teacher, "teacher.kdr");
  path(tr, sizeof tr, "d/train.tsv");
  path(sc, sizeof sc, "d/schema.json");
  REQUIRE(fit(teacher, 0, 0, NULL, 0, 0, NULL, &e) == KD_OK);
  char version[64];
  snprintf(version, sizeof version, "t-%d", (int)getpid());
  struct kd_label_config lc;
  memset(&lc, 0, sizeof lc);
  lc.teacher_path = teacher;
  lc.data_path = tr;
  lc.store = g_store;
  lc.version = version;
  lc.threads = 2;
  lc.quiet = 1;
  REQUIRE(kd_label_run(&lc, &e) == KD_OK);
  CHECK(lc.rows == 3000 && lc.defaulted == 0);

  /* the stored logits equal the oracle's on every example, keyed by example id */
  kd_ckpt *tc = kd_ckpt_open(teacher, &e);
  REQUIRE(tc);
  const struct kd_model *tm = kd_ckpt_model(tc);
  struct kd_schema s;
  struct kd_table tab;
  REQUIRE(kd_schema_load(sc, &s, &e) == KD_OK);
  struct kd_load_params lp = {.max_bad = 0, .use_cache = 0};
  REQUIRE(kd_table_load(tr, &s, lp, &tab, NULL, &e) == KD_OK);
  kd_labelstore *st = kd_labelstore_open(g_store, kd_labelstore_params_default(), &e);
  REQUIRE(st);
  kd_labelstore_reader *r = kd_labelstore_reader_open(st, version, &e);
  REQUIRE(r);
  const struct kd_label_manifest *man = kd_labelstore_reader_manifest(r);
  CHECK(man->teacher_crc == kd_ckpt_crc(tc));
  CHECK(man->row_count == 3000 && man->n_tasks == tm->arch.n_tasks);
  int64_t id;
  float lg[KD_MAX_TASKS], ref[KD_MAX_TASKS];
  uint64_t n_read = 0, bad = 0;
  int rc;
  while ((rc = kd_labelstore_reader_next(r, &id, lg, &e)) == 1) {
    uint64_t row = UINT64_MAX;
    for (uint64_t i = 0; i < tab.n; i++)
      if (tab.ids[i] == id) row = i;
    REQUIRE(row != UINT64_MAX);
    struct kd_column cols[KD_MAX_FEATURES];
    for (uint32_t f = 0; f < s.arch.n_features; f++) {
      const struct kd_feature *ft = &s.arch.features[f];
      if (ft->kind == KD_FEAT_DENSE)
        cols[f] = (struct kd_column){.floats = tab.cols[f].dense + row * ft->dim, .n_floats = ft->dim};
      else
        cols[f] = (struct kd_column){.ids = tab.cols[f].ids + tab.cols[f].off[row],
                                     .n_ids = tab.cols[f].off[row + 1] - tab.cols[f].off[row]};
    }
    struct kd_input in = {.n_cand = 1, .cols = cols};
    uint32_t tasks[KD_MAX_TASKS];
    for (uint32_t k = 0; k < tm->arch.n_tasks; k++) tasks[k] = k;
    REQUIRE(kd_logits_ref(tm, &in, tasks, tm->arch.n_tasks, ref, &e) == KD_OK);
    for (uint32_t k = 0; k < tm->arch.n_tasks; k++) bad += fabsf(lg[k] - ref[k]) > 1e-4f * (1 + fabsf(ref[k]));
    n_read++;
  }
  CHECK(rc == 0);
  CHECK(n_read == 3000);
  CHECKF(bad == 0, "%llu stored logits differ from the oracle", (unsigned long long)bad);
  kd_labelstore_reader_free(r);

  /* a COMPLETE version is immutable: labelling into it again is refused */
  CHECK(kd_label_run(&lc, &e) == KD_ERR_INVALID);
  CHECKF(strstr(e.msg, "immutable") != NULL, "message: %s", e.msg);

  /* direct with alpha 0 is exactly no distillation; alpha 0.5 is not */
  snprintf(pin, sizeof pin, "%s@%s", g_store, version);
  path(out1, sizeof out1, "none.kdr");
  path(out2, sizeof out2, "direct0.kdr");
  REQUIRE(fit(out1, KD_DISTILL_NONE, 0.5f, NULL, 0.99f, 0, NULL, &e) == KD_OK);
  double cov = -1;
  REQUIRE(fit(out2, KD_DISTILL_DIRECT, 0.0f, pin, 0.99f, 0, &cov, &e) == KD_OK);
  CHECK(cov == 1.0);
  CHECK(same_weights(out1, out2));
  path(out2, sizeof out2, "direct5.kdr");
  REQUIRE(fit(out2, KD_DISTILL_DIRECT, 0.5f, pin, 0.99f, 0, NULL, &e) == KD_OK);
  CHECK(!same_weights(out1, out2));

  /* aux: heads kept as non-served tasks, or dropped; provenance */
  path(out2, sizeof out2, "aux.kdr");
  REQUIRE(fit(out2, KD_DISTILL_AUX, 0.5f, pin, 0.99f, 0, NULL, &e) == KD_OK);
  kd_ckpt *ac = kd_ckpt_open(out2, &e);
  REQUIRE(ac);
  const struct kd_arch *aa = &kd_ckpt_model(ac)->arch;
  CHECK(aa->n_tasks == 2 * s.arch.n_tasks);
  for (uint32_t k = 0; k < aa->n_tasks; k++) CHECK(aa->tasks[k].served == (k < s.arch.n_tasks));
  CHECK(!strcmp(meta_str(ac, "provenance.teacher_version"), version));
  CHECK(!strcmp(meta_str(ac, "provenance.distill_mode"), "aux"));
  CHECK(!strcmp(meta_str(ac, "provenance.aux_heads"), "kept"));
  const struct kd_meta *crc = kd_ckpt_meta_find(ac, "provenance.teacher_crc");
  CHECK(crc && crc->v.u == kd_ckpt_crc(tc));
  const struct kd_meta *tt = kd_ckpt_meta_find(ac, "provenance.distill_temperature");
  CHECK(tt && tt->v.f == 2.0);
  kd_ckpt_close(ac);
  path(out2, sizeof out2, "aux_drop.kdr");
  REQUIRE(fit(out2, KD_DISTILL_AUX, 0.5f, pin, 0.99f, 1, NULL, &e) == KD_OK);
  ac = kd_ckpt_open(out2, &e);
  REQUIRE(ac);
  CHECK(kd_ckpt_model(ac)->arch.n_tasks == s.arch.n_tasks);
  CHECK(!strcmp(meta_str(ac, "provenance.aux_heads"), "dropped"));
  kd_ckpt_close(ac);

  /* coverage: a version labelling the first half of the examples */
  path(half, sizeof half, "d/half.tsv");
  FILE *in = fopen(tr, "r"), *ho = fopen(half, "w");
  REQUIRE(in && ho);
  char line[4096];
  for (int i = 0; i < 1501 && fgets(line, sizeof line, in); i++) fputs(line, ho);
  fclose(in);
  fclose(ho);
  char hv[64];
  snprintf(hv, sizeof hv, "half-%d", (int)getpid());
  lc.data_path = half;
  lc.schema_path = sc;
  lc.version = hv;
  REQUIRE(kd_label_run(&lc, &e) == KD_OK);
  snprintf(pin, sizeof pin, "%s@%s", g_store, hv);
  path(out2, sizeof out2, "cov.kdr");
  CHECK(fit(out2, KD_DISTILL_AUX, 0.5f, pin, 0.99f, 0, &cov, &e) == KD_ERR_INVALID);
  CHECKF(strstr(e.msg, "coverage") != NULL, "message: %s", e.msg);
  CHECK(access(out2, F_OK) != 0); /* nothing written */
  REQUIRE(fit(out2, KD_DISTILL_AUX, 0.5f, pin, 0.4f, 0, &cov, &e) == KD_OK);
  CHECKF(fabs(cov - 0.5) < 1e-9, "coverage %g, expected 0.5", cov);

  /* a version still being written is invisible to students */
  struct kd_label_manifest wm;
  memset(&wm, 0, sizeof wm);
  snprintf(wm.version, sizeof wm.version, "w-%d", (int)getpid());
  snprintf(wm.data_fingerprint, sizeof wm.data_fingerprint, "x");
  wm.n_tasks = s.arch.n_tasks;
  for (uint32_t k = 0; k < s.arch.n_tasks; k++) snprintf(wm.tasks[k], KD_NAME_MAX, "%s", s.arch.tasks[k].name);
  kd_labelstore_writer *w = kd_labelstore_writer_begin(st, &wm, &e);
  REQUIRE(w);
  float z[KD_MAX_TASKS] = {0};
  for (int64_t i = 0; i < 3000; i++) REQUIRE(kd_labelstore_writer_put(w, i, z, &e) == KD_OK);
  snprintf(pin, sizeof pin, "%s@%s", g_store, wm.version);
  CHECK(fit(out2, KD_DISTILL_DIRECT, 0.5f, pin, 0.0f, 0, NULL, &e) == KD_ERR_INVALID);
  kd_labelstore_writer_free(w);
  /* an unknown version */
  snprintf(pin, sizeof pin, "%s@nope", g_store);
  CHECK(fit(out2, KD_DISTILL_DIRECT, 0.5f, pin, 0.0f, 0, NULL, &e) == KD_ERR_NOT_FOUND);

  /* cross-domain: a teacher of the other synthetic domain (features and tasks differ) labels this
   * data through the feature mapping; only tasks with a counterpart can be distilled */
  char d1[512], t1[512], tr1[512], te1[512], sc1[512];
  path(d1, sizeof d1, "d1");
  struct kd_synth_params sp1 = {.seed = 9, .n_train = 2000, .n_test = 500, .n_users = 200, .n_items = 100, .domain = 1};
  REQUIRE(kd_synth_write(d1, sp1, &e) == KD_OK);
  path(t1, sizeof t1, "teacher_d1.kdr");
  path(tr1, sizeof tr1, "d1/train.tsv");
  path(te1, sizeof te1, "d1/test.tsv");
  path(sc1, sizeof sc1, "d1/schema.json");
  struct kd_fit_config c1;
  kd_fit_defaults(&c1);
  c1.train_path = tr1;
  c1.test_path = te1;
  c1.schema_path = sc1;
  c1.out_path = t1;
  c1.arch = "tiny";
  c1.epochs = 1;
  c1.quiet = 1;
  REQUIRE(kd_fit_run(&c1, &e) == KD_OK);
  char xv[64];
  snprintf(xv, sizeof xv, "x-%d", (int)getpid());
  lc.teacher_path = t1;
  lc.data_path = tr;
  lc.schema_path = sc;
  lc.version = xv;
  REQUIRE(kd_label_run(&lc, &e) == KD_OK);
  CHECK(lc.rows == 3000);
  CHECKF(lc.mapped > 0 && lc.defaulted > 0, "mapped %llu defaulted %llu", (unsigned long long)lc.mapped,
         (unsigned long long)lc.defaulted);
  snprintf(pin, sizeof pin, "%s@%s", g_store, xv);
  path(out2, sizeof out2, "xdomain.kdr");
  g_tasks = "click";
  CHECK(fit(out2, KD_DISTILL_AUX, 0.5f, pin, 0.99f, 0, &cov, &e) == KD_OK);
  g_tasks = "watch_time";
  CHECK(fit(out2, KD_DISTILL_AUX, 0.5f, pin, 0.99f, 0, &cov, &e) == KD_ERR_NOT_FOUND);
  CHECKF(strstr(e.msg, "watch_time") != NULL, "message: %s", e.msg);
  g_tasks = NULL;

  kd_labelstore_close(st);
  kd_table_free(&tab);
  kd_ckpt_close(tc);
}

int main(int argc, char **argv) {
  check_soft_losses();
  check_aux_grads(1.0f);
  check_aux_grads(2.5f);
  snprintf(g_dir, sizeof g_dir, "/tmp/kd-distill-test.XXXXXX");
  REQUIRE(mkdtemp(g_dir));
  if (argc >= 3 && !strcmp(argv[1], "--pg")) snprintf(g_store, sizeof g_store, "%s", argv[2]);
  else snprintf(g_store, sizeof g_store, "%s/labels.db", g_dir);
  fprintf(stderr, "test_distill: store %s, work dir %s\n", g_store, g_dir);
  check_pipeline();
  char cmd[600];
  snprintf(cmd, sizeof cmd, "rm -rf '%s'", g_dir);
  if (system(cmd) != 0) fprintf(stderr, "could not remove %s\n", g_dir);
  KD_TEST_END();
}
