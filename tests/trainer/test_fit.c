/* test_fit.c - a whole run: synth world -> kd_fit_run -> checkpoint with provenance -> publish.
 * The trained model must beat an untrained one and stay below the ground truth's AUC; the
 * checkpoint must open (verified by the loader) and carry the provenance keys; publishing twice
 * gives versions 1 and 2 and leaves no temp directory visible. */
#include <dirent.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "kd_test.h"
#include "kdrank_loader.h"
#include "kdrank_train.h"

static char dir[256];

static const char *P(const char *name) {
  static char p[8][512];
  static int i;
  i = (i + 1) % 8;
  snprintf(p[i], sizeof p[i], "%s/%s", dir, name);
  return p[i];
}

/* test AUC of the click task for model m on the test split */
static double click_auc(const struct kd_model *mc, struct kd_table *te) {
  struct kd_err e;
  struct kd_model *m = kd_model_alloc(&mc->arch, &e);
  REQUIRE(m);
  for (uint32_t i = 0; i < m->n_tensors; i++) {
    struct kd_tensor_info inf;
    kd_arch_tensor(&m->arch, i, &inf);
    memcpy(m->t[i], mc->t[i], inf.numel * sizeof(float));
  }
  struct kd_train_params p;
  memset(&p, 0, sizeof p);
  p.threads = 2;
  p.max_batch = 512;
  p.opt = kd_opt_defaults(KD_OPT_SGD);
  p.n_loss = 1;
  kd_trainer *t = kd_trainer_create(m, &p, &e);
  REQUIRE(t);
  uint64_t *rows = malloc(te->n * sizeof *rows);
  float *lg = malloc(te->n * m->arch.n_tasks * sizeof *lg);
  for (uint64_t i = 0; i < te->n; i++) rows[i] = i;
  REQUIRE(kd_trainer_predict(t, te, rows, te->n, lg, &e) == KD_OK);
  struct kd_task_metrics tm;
  kd_metrics_task(KD_TASK_BINARY, lg, m->arch.n_tasks, te->labels, te->n_tasks, te->n, &tm);
  free(rows);
  free(lg);
  kd_trainer_free(t);
  kd_model_free(m);
  return tm.auc;
}

int main(void) {
  snprintf(dir, sizeof dir, "/tmp/kd_test_fit.XXXXXX");
  REQUIRE(mkdtemp(dir));
  struct kd_err e;
  struct kd_synth_params sp = {.seed = 9, .n_train = 30000, .n_test = 6000, .n_users = 500, .n_items = 300};
  REQUIRE(kd_synth_write(dir, sp, &e) == KD_OK);
  struct kd_fit_config c;
  kd_fit_defaults(&c);
  c.train_path = P("train.tsv");
  c.test_path = P("test.tsv");
  c.schema_path = P("schema.json");
  c.out_path = P("model.kdr");
  c.summary_path = P("summary.json");
  c.arch = "tiny";
  c.n_shared = 2;
  c.shared[0] = 64;
  c.shared[1] = 32;
  c.epochs = 3;
  c.batch = 256;
  c.opt.lr = 3e-3f;
  c.early_metric = "auc:click";
  c.quiet = 1;
  REQUIRE(kd_fit_run(&c, &e) == KD_OK);
  kd_ckpt *ck = kd_ckpt_open(P("model.kdr"), &e);
  REQUIRE(ck);
  const char *keys[] = {"provenance.trainer_version", "provenance.data_fingerprint", "provenance.metrics",
                        "provenance.config"};
  for (int i = 0; i < 4; i++) {
    const struct kd_meta *mt = kd_ckpt_meta_find(ck, keys[i]);
    CHECKF(mt && mt->type == KD_META_STR && strlen(mt->v.s) > 0, "%s", keys[i]);
  }
  const struct kd_meta *met = kd_ckpt_meta_find(ck, "provenance.metrics");
  CHECK(met && strstr(met->v.s, "\"auc\""));
  /* judge the model with the ground truth */
  struct kd_schema s;
  struct kd_table te;
  struct kd_load_params lp = {.max_bad = 0, .use_cache = 0};
  REQUIRE(kd_schema_load(P("schema.json"), &s, &e) == KD_OK);
  REQUIRE(kd_table_load(P("test.tsv"), &s, lp, &te, NULL, &e) == KD_OK);
  double trained = click_auc(kd_ckpt_model(ck), &te);
  struct kd_model *untrained = kd_model_alloc(&kd_ckpt_model(ck)->arch, &e);
  REQUIRE(untrained);
  kd_model_init_random(untrained, 1);
  double base = click_auc(untrained, &te);
  FILE *f = fopen(P("test.truth.tsv"), "r");
  REQUIRE(f);
  float *pc = malloc(te.n * sizeof *pc), *y = malloc(te.n * sizeof *y);
  char line[256];
  REQUIRE(fgets(line, sizeof line, f));
  for (uint64_t i = 0; i < te.n; i++) {
    REQUIRE(fgets(line, sizeof line, f));
    unsigned long long id;
    REQUIRE(sscanf(line, "%llu\t%f", &id, &pc[i]) == 2);
    y[i] = te.labels[i * te.n_tasks];
  }
  fclose(f);
  double truth = kd_auc(pc, y, te.n);
  printf("click test AUC: untrained %.4f, trained %.4f, ground truth %.4f\n", base, trained, truth);
  CHECK(trained > base + 0.05);
  CHECK(trained > 0.62);
  CHECK(trained < truth);
  kd_ckpt_close(ck);
  /* publish twice: versions 1 and 2, nothing else visible */
  uint64_t v1 = 0, v2 = 0;
  CHECK(kd_publish(P("model.kdr"), P("repo"), "syn", &v1, &e) == KD_OK);
  CHECK(kd_publish(P("model.kdr"), P("repo"), "syn", &v2, &e) == KD_OK);
  CHECK(v1 == 1 && v2 == 2);
  CHECK(access(P("repo/syn/1/model.kdr"), R_OK) == 0 && access(P("repo/syn/2/model.kdr"), R_OK) == 0);
  DIR *d = opendir(P("repo/syn"));
  REQUIRE(d);
  int others = 0;
  struct dirent *de;
  while ((de = readdir(d)))
    if (strcmp(de->d_name, ".") && strcmp(de->d_name, "..") && strcmp(de->d_name, "1") && strcmp(de->d_name, "2"))
      others++;
  closedir(d);
  CHECK(others == 0);
  /* a file that is not a checkpoint is refused and publishes nothing */
  CHECK(kd_publish(P("schema.json"), P("repo"), "syn", &v1, &e) != KD_OK);
  CHECK(access(P("repo/syn/3"), F_OK) != 0);
  CHECK(kd_publish(P("model.kdr"), P("repo"), "../x", &v1, &e) == KD_ERR_INVALID);
  free(pc);
  free(y);
  kd_model_free(untrained);
  kd_table_free(&te);
  char cmd[300];
  snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
  if (system(cmd)) fprintf(stderr, "could not remove %s\n", dir);
  KD_TEST_END();
}
