/* torch_dump.c - the C side of the PyTorch cross-check (torch_check.py runs it).
 * usage: torch_dump DIR adam|adagrad STEPS_SNAPSHOT EPOCHS
 * Makes a synthetic world in DIR, trains a small network with the given optimizer on fixed
 * mini-batches (seeded shuffles, 2 threads), and writes everything the Python side needs to
 * repeat the run: manifest.json, the initial weights, the data (sparse ids already hashed to rows),
 * the batch order, the per-step losses, the weights after STEPS_SNAPSHOT steps, and the test
 * logits after the full run. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "kdrank_train.h"

static void die(const char *what, const struct kd_err *e) {
  fprintf(stderr, "torch_dump: %s: %s\n", what, e ? e->msg : "");
  exit(1);
}

static void wr(const char *dir, const char *name, const void *p, size_t n) {
  char path[1024];
  snprintf(path, sizeof path, "%s/%s", dir, name);
  FILE *f = fopen(path, "wb");
  if (!f || (n && fwrite(p, 1, n, f) != n) || fclose(f)) die(path, NULL);
}

static void dump_weights(const char *dir, const char *name, const struct kd_model *m) {
  char path[1024];
  snprintf(path, sizeof path, "%s/%s", dir, name);
  FILE *f = fopen(path, "wb");
  if (!f) die(path, NULL);
  for (uint32_t i = 0; i < m->n_tensors; i++) {
    struct kd_tensor_info inf;
    kd_arch_tensor(&m->arch, i, &inf);
    if (fwrite(m->t[i], sizeof(float), inf.numel, f) != inf.numel) die(path, NULL);
  }
  fclose(f);
}

static void dump_table(const char *dir, const char *split, const struct kd_table *t, const struct kd_arch *a) {
  char name[256];
  for (uint32_t f = 0; f < a->n_features; f++) {
    const struct kd_feature *ft = &a->features[f];
    if (ft->kind == KD_FEAT_DENSE) {
      snprintf(name, sizeof name, "%s_%s_dense.bin", split, ft->name);
      wr(dir, name, t->cols[f].dense, t->n * ft->dim * sizeof(float));
    } else {
      uint64_t nid = t->cols[f].off[t->n];
      int64_t *rows = malloc((nid ? nid : 1) * sizeof *rows);
      for (uint64_t q = 0; q < nid; q++) rows[q] = (int64_t)kd_hash_row(t->cols[f].ids[q], ft->rows);
      snprintf(name, sizeof name, "%s_%s_rows.bin", split, ft->name);
      wr(dir, name, rows, nid * sizeof *rows);
      snprintf(name, sizeof name, "%s_%s_off.bin", split, ft->name);
      wr(dir, name, t->cols[f].off, (t->n + 1) * sizeof(uint64_t));
      free(rows);
    }
  }
  snprintf(name, sizeof name, "%s_labels.bin", split);
  wr(dir, name, t->labels, t->n * a->n_tasks * sizeof(float));
}

int main(int argc, char **argv) {
  if (argc != 5) {
    fprintf(stderr, "usage: torch_dump DIR adam|adagrad STEPS_SNAPSHOT EPOCHS\n");
    return 2;
  }
  const char *dir = argv[1];
  uint32_t optk = !strcmp(argv[2], "adagrad") ? KD_OPT_ADAGRAD : KD_OPT_ADAM;
  uint64_t snap = strtoull(argv[3], NULL, 10);
  uint32_t epochs = (uint32_t)strtoul(argv[4], NULL, 10);
  struct kd_err e;
  struct kd_synth_params sp = {.seed = 3, .n_train = 24576, .n_test = 8000, .n_users = 600, .n_items = 400};
  if (kd_synth_write(dir, sp, &e)) die("synth", &e);
  char p1[1024], p2[1024], p3[1024];
  snprintf(p1, sizeof p1, "%s/schema.json", dir);
  snprintf(p2, sizeof p2, "%s/train.tsv", dir);
  snprintf(p3, sizeof p3, "%s/test.tsv", dir);
  struct kd_schema s;
  struct kd_table tr, te;
  struct kd_load_params lp = {.max_bad = 0, .use_cache = 0};
  if (kd_schema_load(p1, &s, &e) || kd_table_load(p2, &s, lp, &tr, NULL, &e) ||
      kd_table_load(p3, &s, lp, &te, NULL, &e))
    die("load", &e);
  struct kd_fit_config c;
  kd_fit_defaults(&c);
  c.n_shared = 2;
  c.shared[0] = 64;
  c.shared[1] = 32;
  c.n_tower = 1;
  c.tower[0] = 16;
  c.act_clip = 4.0f;
  struct kd_arch a;
  if (kd_arch_from_schema(&s, &c, &a, &e)) die("arch", &e);
  struct kd_model *m = kd_model_alloc(&a, &e);
  if (!m) die("alloc", &e);
  kd_model_init_random(m, 11);
  struct kd_train_params tp;
  memset(&tp, 0, sizeof tp);
  tp.threads = 2;
  tp.max_batch = 256;
  tp.opt = kd_opt_defaults(optk);
  tp.opt.lr = optk == KD_OPT_ADAM ? 2e-3f : 0.03f;
  float wts[3] = {1.0f, 0.5f, 1.0f};
  for (uint32_t k = 0; k < a.n_tasks; k++) {
    struct kd_loss_term *lt = &tp.loss[tp.n_loss++];
    lt->task = lt->target = k;
    lt->weight = wts[k % 3];
    lt->kind = a.tasks[k].type == KD_TASK_BINARY ? KD_LOSS_BCE : KD_LOSS_MSE;
  }
  kd_trainer *t = kd_trainer_create(m, &tp, &e);
  if (!t) die("trainer", &e);
  dump_weights(dir, "w0.bin", m);
  dump_table(dir, "train", &tr, &a);
  dump_table(dir, "test", &te, &a);
  uint64_t spe = tr.n / tp.max_batch, steps = spe * epochs;
  uint64_t *order = malloc(steps * tp.max_batch * sizeof *order), *perm = malloc(tr.n * sizeof *perm);
  double *losses = malloc(steps * sizeof *losses);
  for (uint32_t ep = 0; ep < epochs; ep++) {
    uint64_t st = ep * 977 + 5;
    for (uint64_t i = 0; i < tr.n; i++) perm[i] = i;
    for (uint64_t i = tr.n; i > 1; i--) { /* seeded Fisher-Yates */
      uint64_t z = (st += 0x9E3779B97F4A7C15ull);
      z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
      z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
      z ^= z >> 31;
      uint64_t j = z % i, x = perm[i - 1];
      perm[i - 1] = perm[j];
      perm[j] = x;
    }
    memcpy(order + ep * spe * tp.max_batch, perm, spe * tp.max_batch * sizeof *order);
  }
  for (uint64_t s0 = 0; s0 < steps; s0++) {
    if (kd_trainer_step(t, &tr, order + s0 * tp.max_batch, tp.max_batch, &losses[s0], NULL, &e)) die("step", &e);
    if (s0 + 1 == snap) dump_weights(dir, "w_snap.bin", m);
  }
  float *logits = malloc(te.n * a.n_tasks * sizeof *logits);
  uint64_t *rows = malloc(te.n * sizeof *rows);
  for (uint64_t i = 0; i < te.n; i++) rows[i] = i;
  if (kd_trainer_predict(t, &te, rows, te.n, logits, &e)) die("predict", &e);
  wr(dir, "order.bin", order, steps * tp.max_batch * sizeof *order);
  wr(dir, "losses.bin", losses, steps * sizeof *losses);
  wr(dir, "test_logits.bin", logits, te.n * a.n_tasks * sizeof *logits);
  /* manifest */
  char path[1024];
  snprintf(path, sizeof path, "%s/manifest.json", dir);
  FILE *f = fopen(path, "w");
  uint32_t cw = kd_arch_ctx_width(&a);
  fprintf(f, "{\"n_train\": %llu, \"n_test\": %llu, \"batch\": %u, \"steps\": %llu, \"snapshot\": %llu,\n",
          (unsigned long long)tr.n, (unsigned long long)te.n, tp.max_batch, (unsigned long long)steps,
          (unsigned long long)snap);
  fprintf(f, " \"opt\": \"%s\", \"lr\": %.9g, \"beta1\": %.9g, \"beta2\": %.9g, \"eps\": %.9g, \"adagrad_eps\": %.9g,"
             " \"init_acc\": %.9g, \"act_clip\": %.9g,\n", argv[2], tp.opt.lr, tp.opt.beta1, tp.opt.beta2,
          tp.opt.eps, tp.opt.adagrad_eps, tp.opt.init_acc, a.act_clip);
  fprintf(f, " \"shared\": [%u, %u], \"tower\": [%u], \"ctx_width\": %u,\n", a.shared[0], a.shared[1], a.tower[0], cw);
  fprintf(f, " \"features\": [");
  for (uint32_t i = 0; i < a.n_features; i++)
    fprintf(f, "%s{\"name\": \"%s\", \"sparse\": %d, \"group\": %u, \"dim\": %u, \"rows\": %llu}", i ? ", " : "",
            a.features[i].name, a.features[i].kind == KD_FEAT_SPARSE, a.features[i].group, a.features[i].dim,
            (unsigned long long)a.features[i].rows);
  fprintf(f, "],\n \"tasks\": [");
  for (uint32_t k = 0; k < a.n_tasks; k++)
    fprintf(f, "%s{\"name\": \"%s\", \"binary\": %d, \"weight\": %.9g}", k ? ", " : "", a.tasks[k].name,
            a.tasks[k].type == KD_TASK_BINARY, tp.loss[k].weight);
  fprintf(f, "],\n \"tensors\": [");
  for (uint32_t i = 0; i < m->n_tensors; i++) {
    struct kd_tensor_info inf;
    kd_arch_tensor(&a, i, &inf);
    fprintf(f, "%s{\"name\": \"%s\", \"shape\": [%llu%s", i ? ", " : "", inf.name, (unsigned long long)inf.shape[0],
            inf.ndim == 2 ? ", " : "");
    if (inf.ndim == 2) fprintf(f, "%llu", (unsigned long long)inf.shape[1]);
    fprintf(f, "]}");
  }
  fprintf(f, "]}\n");
  fclose(f);
  kd_trainer_free(t);
  kd_model_free(m);
  kd_table_free(&tr);
  kd_table_free(&te);
  free(order); free(perm); free(losses); free(logits); free(rows);
  return 0;
}
