/* main.c - kdrank-train: the trainer's command line (synth, convert, fit, baseline, publish).
 * Flags of each command come from one table (name, kind, help) that drives parsing and --help. */
#include <math.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>

#include "train_internal.h"

static void die(const struct kd_err *e) {
  fprintf(stderr, "kdrank-train: error: %s\n", e->msg);
  exit(1);
}

enum kd_fk { FK_STR, FK_U32, FK_U64, FK_I64, FK_F32, FK_I32, FK_BOOL, FK_SPECIAL };
struct kd_flag {
  const char *name;
  int kind;
  size_t off;       /* offset in struct kd_fit_config (or the command's struct) */
  const char *help;
};

#define FO(f) offsetof(struct kd_fit_config, f)
static const struct kd_flag kd_fit_flags[] = {
    {"train", FK_STR, FO(train_path), "training table (TSV or TSV.gz with a header)"},
    {"test", FK_STR, FO(test_path), "held-out table (evaluated each epoch)"},
    {"schema", FK_STR, FO(schema_path), "JSON schema of the columns"},
    {"out", FK_STR, FO(out_path), "checkpoint to write (atomically; the best epoch)"},
    {"summary", FK_STR, FO(summary_path), "run summary JSON to write"},
    {"arch", FK_STR, FO(arch), "preset whose layer widths to use (tiny ref-student ref-teacher-2x ref-teacher-4x)"},
    {"shared", FK_SPECIAL, 0, "shared layer widths, e.g. 256,128 (overrides the preset)"},
    {"tower", FK_SPECIAL, 0, "tower hidden widths, e.g. 64 (or 'none')"},
    {"act-clip", FK_F32, FO(act_clip), "clip hidden activations to [0, X] (0: off)"},
    {"emb-dim", FK_U32, FO(emb_dim), "override every sparse feature's embedding width"},
    {"epochs", FK_U32, FO(epochs), "epochs (default 5)"},
    {"batch", FK_U32, FO(batch), "mini-batch size (default 512)"},
    {"threads", FK_U32, FO(threads), "worker threads (default 2); results are deterministic per (seed, threads)"},
    {"seed", FK_U64, FO(seed), "seed of the initial weights and the shuffles (default 1)"},
    {"max-steps", FK_U64, FO(max_steps), "stop after this many steps (benchmarks)"},
    {"opt", FK_SPECIAL, 0, "optimizer: adam (default), adagrad, clippy, sgd"},
    {"lr", FK_F32, FO(opt.lr), "learning rate (default per optimizer: adam 1e-3, adagrad 0.05, clippy 1e-3)"},
    {"warmup", FK_U64, FO(opt.warmup), "linear warmup steps"},
    {"sched", FK_SPECIAL, 0, "decay after warmup: constant (default), cosine, linear, invsqrt"},
    {"min-lr-ratio", FK_F32, FO(opt.min_lr_ratio), "decay floor as a fraction of --lr"},
    {"weight-decay", FK_F32, FO(opt.weight_decay), "decoupled weight decay on weight matrices"},
    {"grad-clip", FK_F32, FO(opt.grad_clip), "clip the global gradient norm to this (0: off)"},
    {"init-acc", FK_F32, FO(opt.init_acc), "adagrad/clippy initial accumulator"},
    {"clippy-rel", FK_F32, FO(opt.clippy_rel), "clippy lambda_rel (default 0.1)"},
    {"clippy-acc", FK_F32, FO(opt.clippy_acc), "clippy lambda_acc (default 0)"},
    {"clippy-abs", FK_F32, FO(opt.clippy_abs), "clippy lambda_abs (default 1e-7)"},
    {"clippy-clip-acc", FK_BOOL, FO(opt.clippy_clip_acc), "clippy: accumulate (s g)^2"},
    {"task-weight", FK_SPECIAL, 0, "per-task loss weights, e.g. click=1,watch_time=0.5"},
    {"huber", FK_SPECIAL, 0, "Huber loss for regression tasks, e.g. watch_time=1.0 (delta)"},
    {"early-metric", FK_STR, FO(early_metric), "best/early-stop metric: loss (default) or auc|logloss|rmse:<task>"},
    {"patience", FK_U32, FO(patience), "stop after N epochs without improvement (0: never)"},
    {"max-bad", FK_I64, FO(load.max_bad), "bad rows: 0 stops at the first (default), N skips up to N, -1 any"},
    {"no-cache", FK_SPECIAL, 0, "do not read or write the binary table cache"},
    {"cache-dir", FK_STR, FO(load.cache_dir), "where caches go (default: next to the data file)"},
    {"progress", FK_SPECIAL, 0, "bar or plain (default: bar on a terminal)"},
    {"quiet", FK_BOOL, FO(quiet), "no progress output"},
};
#undef FO

static void kd_usage(void) {
  fprintf(stderr,
          "usage: kdrank-train <command> [flags]\n"
          "  synth   --out DIR [--train N] [--test N] [--users N] [--items N] [--seed S] [--domain 0|1]\n"
          "  convert movielens|kuairand --src DIR --out DIR\n"
          "  fit     --train F --schema F [--test F] [--out F] ... (fit --help lists all flags)\n"
          "  baseline --train F --test F --schema F --feature NAME --task NAME [--index I]\n"
          "          popularity baseline AUC (sparse feature: its train positive rate; dense: column I)\n"
          "  publish FILE --repo DIR --model NAME\n");
}

static int kd_parse_list(const char *v, uint32_t *out, uint32_t max) {
  uint32_t n = 0;
  if (!strcmp(v, "none")) return 0;
  char buf[256];
  snprintf(buf, sizeof buf, "%s", v);
  for (char *s = strtok(buf, ","); s; s = strtok(NULL, ",")) {
    char *end;
    unsigned long x = strtoul(s, &end, 10);
    if (*end || x < 1 || x > 65536 || n >= max) return -1;
    out[n++] = (uint32_t)x;
  }
  return n ? (int)n : -1;
}

/* "name=value,..." against the schema's task names: resolved after the schema is read. */
static const char *kd_tw_spec, *kd_huber_spec;

static int kd_apply_task_spec(const char *spec, const char *flag, const char *schema_path, float *dst,
                              struct kd_err *e) {
  struct kd_schema s;
  int rc = kd_schema_load(schema_path, &s, e);
  if (rc) return rc;
  char buf[1024];
  snprintf(buf, sizeof buf, "%s", spec);
  for (char *it = strtok(buf, ","); it; it = strtok(NULL, ",")) {
    char *eq = strchr(it, '=');
    if (!eq) return kd_err_set(e, KD_ERR_INVALID, "--%s '%s': expected task=value", flag, it);
    *eq = 0;
    int k = kd_arch_find_task(&s.arch, it);
    if (k < 0) return kd_err_set(e, KD_ERR_NOT_FOUND, "--%s: no task '%s' in %s", flag, it, schema_path);
    char *end;
    double v = strtod(eq + 1, &end);
    if (*end || !(v >= 0) || !isfinite(v))
      return kd_err_set(e, KD_ERR_INVALID, "--%s %s=%s: expected a number >= 0", flag, it, eq + 1);
    dst[k] = (float)v;
  }
  return KD_OK;
}

static int kd_fit_flag(struct kd_fit_config *c, const struct kd_flag *f, const char *v, struct kd_err *e) {
  char *base = (char *)c, *end = NULL;
  switch (f->kind) {
  case FK_STR: *(const char **)(base + f->off) = v; return KD_OK;
  case FK_U32: {
    unsigned long x = strtoul(v, &end, 10);
    if (*end || x > 0xFFFFFFFFul || v[0] == '-') break;
    *(uint32_t *)(base + f->off) = (uint32_t)x;
    return KD_OK;
  }
  case FK_U64: {
    unsigned long long x = strtoull(v, &end, 10);
    if (*end || v[0] == '-') break;
    *(uint64_t *)(base + f->off) = x;
    return KD_OK;
  }
  case FK_I64: {
    long long x = strtoll(v, &end, 10);
    if (*end) break;
    *(int64_t *)(base + f->off) = x;
    return KD_OK;
  }
  case FK_F32: {
    double x = strtod(v, &end);
    if (*end || !isfinite(x)) break;
    *(float *)(base + f->off) = (float)x;
    return KD_OK;
  }
  case FK_SPECIAL:
    if (!strcmp(f->name, "shared")) {
      int n = kd_parse_list(v, c->shared, KD_MAX_LAYERS);
      if (n < 1) break;
      c->n_shared = (uint32_t)n;
      return KD_OK;
    }
    if (!strcmp(f->name, "tower")) {
      int n = kd_parse_list(v, c->tower, KD_MAX_LAYERS);
      if (n < 0) break;
      c->n_tower = n;
      return KD_OK;
    }
    if (!strcmp(f->name, "opt")) {
      static const char *names[] = {"adam", "adagrad", "clippy", "sgd"};
      for (uint32_t k = 0; k < 4; k++)
        if (!strcmp(v, names[k])) {
          struct kd_opt_params keep = c->opt, d = kd_opt_defaults(k);
          d.warmup = keep.warmup;
          d.sched = keep.sched;
          d.weight_decay = keep.weight_decay;
          d.grad_clip = keep.grad_clip;
          d.min_lr_ratio = keep.min_lr_ratio;
          c->opt = d;
          return KD_OK;
        }
      break;
    }
    if (!strcmp(f->name, "sched")) {
      static const char *names[] = {"constant", "cosine", "linear", "invsqrt"};
      for (uint32_t k = 0; k < 4; k++)
        if (!strcmp(v, names[k])) {
          c->opt.sched = k;
          return KD_OK;
        }
      break;
    }
    if (!strcmp(f->name, "progress")) {
      if (!strcmp(v, "bar")) c->progress = 1;
      else if (!strcmp(v, "plain")) c->progress = 0;
      else break;
      return KD_OK;
    }
    if (!strcmp(f->name, "task-weight")) {
      kd_tw_spec = v;
      return KD_OK;
    }
    if (!strcmp(f->name, "huber")) {
      kd_huber_spec = v;
      return KD_OK;
    }
    break;
  default: break;
  }
  return kd_err_set(e, KD_ERR_INVALID, "--%s: bad value '%s' (%s)", f->name, v, f->help);
}

static int cmd_fit(int argc, char **argv) {
  struct kd_fit_config c;
  struct kd_err e = {0};
  kd_fit_defaults(&c);
  /* --opt first so that --lr etc. given before it are not reset */
  for (int i = 1; i + 1 < argc; i++)
    if (!strcmp(argv[i], "--opt")) {
      for (size_t k = 0; k < sizeof kd_fit_flags / sizeof kd_fit_flags[0]; k++)
        if (!strcmp(kd_fit_flags[k].name, "opt") && kd_fit_flag(&c, &kd_fit_flags[k], argv[i + 1], &e)) die(&e);
    }
  for (int i = 1; i < argc; i++) {
    if (!strcmp(argv[i], "--help") || !strcmp(argv[i], "-h")) {
      fprintf(stderr, "usage: kdrank-train fit [flags]\n");
      for (size_t k = 0; k < sizeof kd_fit_flags / sizeof kd_fit_flags[0]; k++)
        fprintf(stderr, "  --%-16s %s\n", kd_fit_flags[k].name, kd_fit_flags[k].help);
      return 0;
    }
    if (strncmp(argv[i], "--", 2)) {
      kd_err_set(&e, KD_ERR_INVALID, "fit: unexpected argument '%s'", argv[i]);
      die(&e);
    }
    const struct kd_flag *f = NULL;
    for (size_t k = 0; k < sizeof kd_fit_flags / sizeof kd_fit_flags[0]; k++)
      if (!strcmp(kd_fit_flags[k].name, argv[i] + 2)) f = &kd_fit_flags[k];
    if (!f) {
      kd_err_set(&e, KD_ERR_INVALID, "fit: unknown flag '%s' (fit --help lists them)", argv[i]);
      die(&e);
    }
    if (f->kind == FK_BOOL) {
      *(int *)((char *)&c + f->off) = 1;
      continue;
    }
    if (!strcmp(f->name, "no-cache")) {
      c.load.use_cache = 0;
      continue;
    }
    if (i + 1 >= argc) {
      kd_err_set(&e, KD_ERR_INVALID, "--%s needs a value", f->name);
      die(&e);
    }
    if (!strcmp(f->name, "opt")) {
      i++;
      continue;
    }
    if (kd_fit_flag(&c, f, argv[++i], &e)) die(&e);
  }
  if (!c.train_path || !c.schema_path) {
    kd_err_set(&e, KD_ERR_INVALID, "fit: --train and --schema are required");
    die(&e);
  }
  if (kd_tw_spec && kd_apply_task_spec(kd_tw_spec, "task-weight", c.schema_path, c.task_weight, &e)) die(&e);
  if (kd_huber_spec && kd_apply_task_spec(kd_huber_spec, "huber", c.schema_path, c.huber_delta, &e)) die(&e);
  if (kd_fit_run(&c, &e)) die(&e);
  printf("examples_per_sec %.0f train_seconds %.2f\n", c.examples_per_sec, c.train_seconds);
  return 0;
}

static const char *kd_arg(int argc, char **argv, const char *name, const char *def) {
  for (int i = 1; i + 1 < argc; i++)
    if (!strcmp(argv[i], name)) return argv[i + 1];
  return def;
}

static uint64_t kd_arg_u64(int argc, char **argv, const char *name, uint64_t def) {
  const char *v = kd_arg(argc, argv, name, NULL);
  if (!v) return def;
  char *end;
  unsigned long long x = strtoull(v, &end, 10);
  if (*end || v[0] == '-') {
    fprintf(stderr, "kdrank-train: error: %s '%s': expected a non-negative integer\n", name, v);
    exit(1);
  }
  return x;
}

static int cmd_synth(int argc, char **argv) {
  struct kd_synth_params p = {
      .seed = kd_arg_u64(argc, argv, "--seed", 1),
      .n_train = kd_arg_u64(argc, argv, "--train", 200000),
      .n_test = kd_arg_u64(argc, argv, "--test", 50000),
      .n_users = (uint32_t)kd_arg_u64(argc, argv, "--users", 2000),
      .n_items = (uint32_t)kd_arg_u64(argc, argv, "--items", 1000),
      .domain = (int)kd_arg_u64(argc, argv, "--domain", 0),
  };
  const char *out = kd_arg(argc, argv, "--out", NULL);
  struct kd_err e = {0};
  if (!out || p.domain > 1) {
    kd_err_set(&e, KD_ERR_INVALID, "synth: --out DIR is required; --domain is 0 or 1");
    die(&e);
  }
  if (kd_synth_write(out, p, &e)) die(&e);
  fprintf(stderr, "synth: wrote %s/{train,test}.tsv, schema.json, *.truth.tsv\n", out);
  return 0;
}

static int cmd_convert(int argc, char **argv) {
  struct kd_err e = {0};
  const char *src = kd_arg(argc, argv, "--src", NULL), *out = kd_arg(argc, argv, "--out", NULL);
  if (argc < 2 || !src || !out) {
    kd_err_set(&e, KD_ERR_INVALID, "convert: usage: convert movielens|kuairand --src DIR --out DIR");
    die(&e);
  }
  int rc;
  if (!strcmp(argv[1], "movielens")) rc = kd_convert_movielens(src, out, &e);
  else if (!strcmp(argv[1], "kuairand")) rc = kd_convert_kuairand(src, out, &e);
  else rc = kd_err_set(&e, KD_ERR_INVALID, "convert: unknown dataset '%s' (movielens, kuairand)", argv[1]);
  if (rc) die(&e);
  fprintf(stderr, "convert: wrote %s/{train,test}.tsv and schema.json\n", out);
  return 0;
}

/* Popularity baseline: score = smoothed positive rate of the candidate's id on the train set. */
static int cmd_baseline(int argc, char **argv) {
  struct kd_err e = {0};
  const char *trp = kd_arg(argc, argv, "--train", NULL), *tep = kd_arg(argc, argv, "--test", NULL);
  const char *sp = kd_arg(argc, argv, "--schema", NULL), *fname = kd_arg(argc, argv, "--feature", NULL);
  const char *tname = kd_arg(argc, argv, "--task", NULL);
  if (!trp || !tep || !sp || !fname || !tname) {
    kd_err_set(&e, KD_ERR_INVALID, "baseline: --train --test --schema --feature --task are required");
    die(&e);
  }
  struct kd_schema s;
  struct kd_table tr, te;
  struct kd_load_params lp = {.max_bad = 0, .use_cache = 1};
  if (kd_schema_load(sp, &s, &e) || kd_table_load(trp, &s, lp, &tr, NULL, &e) ||
      kd_table_load(tep, &s, lp, &te, NULL, &e))
    die(&e);
  int f = kd_arch_find_feature(&s.arch, fname), k = kd_arch_find_task(&s.arch, tname);
  if (f < 0 || k < 0) {
    kd_err_set(&e, KD_ERR_NOT_FOUND, "baseline: need a feature '%s' and a task '%s'", fname, tname);
    die(&e);
  }
  if (s.arch.features[f].kind == KD_FEAT_DENSE) {
    /* score = one column of a dense feature (e.g. a precomputed rate) */
    uint32_t col = (uint32_t)kd_arg_u64(argc, argv, "--index", 0), dim = s.arch.features[f].dim;
    float *sc = malloc(te.n * sizeof *sc), *lb = malloc(te.n * sizeof *lb);
    if (!sc || !lb || col >= dim) return 1;
    for (uint64_t i = 0; i < te.n; i++) {
      sc[i] = te.cols[f].dense[i * dim + col];
      lb[i] = te.labels[i * te.n_tasks + (uint32_t)k];
    }
    printf("baseline (%s by %s[%u]): test AUC %.4f over %llu rows\n", tname, fname, col, kd_auc(sc, lb, te.n),
           (unsigned long long)te.n);
    free(sc);
    free(lb);
    kd_table_free(&tr);
    kd_table_free(&te);
    return 0;
  }
  uint64_t rows = s.arch.features[f].rows;
  double *pos = calloc(rows, sizeof *pos), *cnt = calloc(rows, sizeof *cnt), sp_ = 0, sn = 0;
  float *score = malloc(te.n * sizeof *score), *lab = malloc(te.n * sizeof *lab);
  if (!pos || !cnt || !score || !lab) return 1;
  for (uint64_t i = 0; i < tr.n; i++) {
    float y = tr.labels[i * tr.n_tasks + (uint32_t)k];
    if (isnan(y) || tr.cols[f].off[i] == tr.cols[f].off[i + 1]) continue;
    uint64_t r = kd_hash_row(tr.cols[f].ids[tr.cols[f].off[i]], rows);
    pos[r] += y;
    cnt[r] += 1;
    sp_ += y;
    sn += 1;
  }
  double prior = sn ? sp_ / sn : 0.5, m = 10;
  for (uint64_t i = 0; i < te.n; i++) {
    lab[i] = te.labels[i * te.n_tasks + (uint32_t)k];
    uint64_t r = te.cols[f].off[i] == te.cols[f].off[i + 1] ? 0 : kd_hash_row(te.cols[f].ids[te.cols[f].off[i]], rows);
    score[i] = (float)((pos[r] + m * prior) / (cnt[r] + m));
  }
  printf("popularity baseline (%s by %s): test AUC %.4f over %llu rows\n", tname, fname,
         kd_auc(score, lab, te.n), (unsigned long long)te.n);
  free(pos); free(cnt); free(score); free(lab);
  kd_table_free(&tr);
  kd_table_free(&te);
  return 0;
}

static int cmd_publish(int argc, char **argv) {
  struct kd_err e = {0};
  const char *repo = kd_arg(argc, argv, "--repo", NULL), *model = kd_arg(argc, argv, "--model", NULL);
  if (argc < 2 || argv[1][0] == '-' || !repo || !model) {
    kd_err_set(&e, KD_ERR_INVALID, "publish: usage: publish FILE --repo DIR --model NAME");
    die(&e);
  }
  uint64_t v;
  if (kd_publish(argv[1], repo, model, &v, &e)) die(&e);
  printf("%s/%s/%llu/model.kdr\n", repo, model, (unsigned long long)v);
  return 0;
}

int main(int argc, char **argv) {
  if (argc < 2 || !strcmp(argv[1], "--help") || !strcmp(argv[1], "-h")) {
    kd_usage();
    return argc < 2 ? 2 : 0;
  }
  if (!strcmp(argv[1], "--version")) {
    printf("%s\n", KD_TRAIN_VERSION);
    return 0;
  }
  if (!strcmp(argv[1], "fit")) return cmd_fit(argc - 1, argv + 1);
  if (!strcmp(argv[1], "synth")) return cmd_synth(argc - 1, argv + 1);
  if (!strcmp(argv[1], "convert")) return cmd_convert(argc - 1, argv + 1);
  if (!strcmp(argv[1], "baseline")) return cmd_baseline(argc - 1, argv + 1);
  if (!strcmp(argv[1], "publish")) return cmd_publish(argc - 1, argv + 1);
  fprintf(stderr, "kdrank-train: unknown command '%s'\n", argv[1]);
  kd_usage();
  return 2;
}
