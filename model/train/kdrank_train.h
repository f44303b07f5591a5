/* kdrank_train.h - the offline trainer's contract: example tables (TSV/gzip + JSON schema, binary
 * cache), the synthetic world and dataset converters, the training network (forward/backward with
 * BLAS, multi-threaded, deterministic), losses, optimizers (Adam, Adagrad, Clippy), evaluation
 * (AUC, log loss, calibration, RMSE), the fit loop and publishing into a model repository.
 *
 * The network is the model core's (kdrank_model.h): weights live in a struct kd_model and are
 * trained in place; every forward agrees with kd_logits_ref. Loss terms are a list (task, kind,
 * weight, target source) so soft-label (distillation) terms and auxiliary heads can join later
 * without changing the network code.
 *
 * Thread safety: a kd_trainer belongs to one caller thread (it runs its own worker threads).
 * Tables are immutable after load and may be shared.
 */
#ifndef KDRANK_TRAIN_H
#define KDRANK_TRAIN_H

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#include "kdrank_model.h"

#ifdef __cplusplus
extern "C" {
#endif

#define KD_TRAIN_VERSION "kdrank-train " KD_VERSION
#define KD_MAX_COLS 256

/* ---------------------------------------------------------------- schema */
enum kd_col_role { KD_COL_IGNORE = 0, KD_COL_ID = 1, KD_COL_LABEL = 2, KD_COL_FEATURE = 3 };

struct kd_schema_col {
  char name[KD_NAME_MAX];
  uint32_t role;  /* enum kd_col_role */
  int32_t index;  /* LABEL: task index; FEATURE: feature index in arch; else -1 */
  char sep;       /* FEATURE: separator of multi-valued sparse ids / dense values (default ',') */
};

/* A parsed schema: the columns in file order and the architecture's features and tasks (layer
 * widths are left 0; kd_arch_from_schema fills them). */
struct kd_schema {
  uint32_t n_cols;
  struct kd_schema_col cols[KD_MAX_COLS];
  struct kd_arch arch;
  uint64_t hash; /* of the schema's canonical content (part of the data fingerprint) */
};

/* Parses a JSON schema:
 *   {"columns": [
 *     {"name": "id", "role": "id"},
 *     {"name": "click", "role": "label", "type": "binary"},
 *     {"name": "watch", "role": "label", "type": "regression", "transform": "log1p"},
 *     {"name": "user", "role": "sparse", "group": "context", "rows": 4096, "dim": 16, "sep": ","},
 *     {"name": "age", "role": "dense", "group": "context", "dim": 1},
 *     {"name": "note", "role": "ignore"}]}
 * Errors name the file, the column (index and name), the field, expected and found. */
int kd_schema_parse(const char *json, size_t len, const char *name, struct kd_schema *s,
                    struct kd_err *e);
int kd_schema_load(const char *path, struct kd_schema *s, struct kd_err *e);
/* Writes s as JSON to path (atomically). */
int kd_schema_write(const char *path, const struct kd_schema *s, struct kd_err *e);

/* ---------------------------------------------------------------- tables */
struct kd_table_col {
  float *dense;   /* DENSE: (n, dim) */
  uint64_t *off;  /* SPARSE: (n + 1) offsets into ids; row i has ids[off[i] .. off[i+1]) */
  int64_t *ids;   /* SPARSE: (off[n]) */
};

/* A parsed example table. Labels of regression tasks are stored transformed (log1p applied). */
struct kd_table {
  uint64_t n;                  /* examples */
  uint32_t n_features, n_tasks;
  int64_t *ids;                /* (n) example ids (row number when the schema has no id) */
  float *labels;               /* (n, n_tasks); NaN = label missing (empty cell) */
  struct kd_table_col cols[KD_MAX_FEATURES];
  uint64_t fingerprint;        /* of the source bytes + schema */
  uint64_t cap;                /* rows allocated (internal) */
  uint64_t id_cap[KD_MAX_FEATURES]; /* sparse ids allocated (internal) */
};

#define KD_BAD_LINES_KEPT 16
/* What happened while loading: bad rows with their line numbers (first KD_BAD_LINES_KEPT). */
struct kd_load_report {
  uint64_t rows, bad;
  uint64_t bad_line[KD_BAD_LINES_KEPT];
  char bad_msg[KD_BAD_LINES_KEPT][160];
  int from_cache;              /* 1: the binary cache was used */
  char cache_path[512];
};

struct kd_load_params {
  int64_t max_bad;    /* 0: stop at the first bad row (error naming the line); N > 0: skip up to
                         N bad rows, then fail; < 0: skip any number */
  int use_cache;      /* 1: read/write the binary cache */
  const char *cache_dir; /* NULL: next to the data file (<file>.kdcache) */
};

/* Loads a TSV (plain or gzip, detected by content) whose first line is the header: every schema
 * column other than "ignore" ones must appear in the header (extra header columns are ignored).
 * With use_cache, a binary cache keyed by the fingerprint of the file bytes + schema is read when
 * it matches and written otherwise (atomically). Errors name file:line, column, expected, found. */
int kd_table_load(const char *path, const struct kd_schema *s, struct kd_load_params p,
                  struct kd_table *t, struct kd_load_report *r, struct kd_err *e);
/* Allocates an empty table for the schema with room for n rows and n_ids sparse ids per sparse
 * feature (used by generators/tests; fill then set off[] etc.). */
int kd_table_alloc(struct kd_table *t, const struct kd_arch *a, uint64_t n, uint64_t ids_per_feature,
                   struct kd_err *e);
void kd_table_free(struct kd_table *t);
/* Writes the table's binary cache / reads it back (fingerprint must match; every size checked). */
int kd_table_cache_write(const char *path, const struct kd_table *t, const struct kd_arch *a,
                         struct kd_err *e);
int kd_table_cache_read(const char *path, const struct kd_arch *a, uint64_t fingerprint,
                        struct kd_table *t, struct kd_err *e);
/* 64-bit hash of a file's bytes (the data fingerprint's input). */
int kd_file_hash(const char *path, uint64_t *out, struct kd_err *e);

/* ---------------------------------------------------------------- synthetic world, converters */
struct kd_synth_params {
  uint64_t seed;
  uint64_t n_train, n_test;
  uint32_t n_users, n_items;
  int domain;          /* 0: video domain (click, watch_time, satisfied); 1: music domain
                          (features and task mix differ: click, like) over the same users */
};
/* Writes DIR/train.tsv, DIR/test.tsv, DIR/schema.json and DIR/train.truth.tsv, DIR/test.truth.tsv
 * (id + the true probability / expectation of every task, for judging a model). */
int kd_synth_write(const char *dir, struct kd_synth_params p, struct kd_err *e);
/* MovieLens 100K (src holds u.data, u.user, u.item) / KuaiRand-1K (src holds the random log):
 * writes DIR/train.tsv, DIR/test.tsv, DIR/schema.json with a time-based split. */
int kd_convert_movielens(const char *src, const char *dir, struct kd_err *e);
int kd_convert_kuairand(const char *src, const char *dir, struct kd_err *e);

/* ---------------------------------------------------------------- losses */
enum kd_loss_kind {
  KD_LOSS_BCE = 0,     /* binary cross-entropy on sigmoid(logit) */
  KD_LOSS_MSE = 1,     /* (logit - y)^2 */
  KD_LOSS_HUBER = 2,   /* 0.5 r^2 if |r| < delta else delta (|r| - 0.5 delta), r = logit - y */
  /* reserved for distillation: soft BCE against sigmoid(t/T), soft squared error */
};
enum kd_target_src {
  KD_TARGET_LABEL = 0, /* the table's hard label of the task */
  /* reserved: KD_TARGET_TEACHER (a teacher logit column) */
};
/* One loss term: weight * mean over the batch's labelled rows of loss(logit[task], target). */
struct kd_loss_term {
  uint32_t task;     /* index into arch.tasks (served head or auxiliary head) */
  uint32_t kind;     /* enum kd_loss_kind */
  uint32_t source;   /* enum kd_target_src */
  uint32_t target;   /* column of the source (LABEL: the table's label column, i.e. schema task) */
  float weight;
  float delta;       /* Huber */
};
/* Loss and d loss / d logit of one example for a kind (exposed for tests). */
double kd_loss_eval(uint32_t kind, float delta, float logit, float y, float *dlogit);

/* ---------------------------------------------------------------- optimizers */
enum kd_opt_kind { KD_OPT_ADAM = 0, KD_OPT_ADAGRAD = 1, KD_OPT_CLIPPY = 2, KD_OPT_SGD = 3 };
enum kd_sched { KD_SCHED_CONSTANT = 0, KD_SCHED_COSINE = 1, KD_SCHED_LINEAR = 2, KD_SCHED_INVSQRT = 3 };

struct kd_opt_params {
  uint32_t kind;            /* enum kd_opt_kind */
  float lr;
  float beta1, beta2, eps;  /* Adam (torch.optim.Adam semantics; embeddings: SparseAdam) */
  float init_acc;           /* Adagrad / Clippy initial accumulator */
  float adagrad_eps;        /* Adagrad: w -= lr g / (sqrt(A) + eps) (torch.optim.Adagrad) */
  float clippy_rel, clippy_acc, clippy_abs, clippy_eps; /* Clippy lambda_rel/acc/abs, eps */
  int clippy_clip_acc;      /* 1: A += (s g)^2 */
  float weight_decay;       /* decoupled (w -= lr wd w) on weight matrices, not biases/embeddings */
  float grad_clip;          /* > 0: clip the global gradient norm to this */
  uint32_t sched;           /* enum kd_sched */
  uint64_t warmup;          /* linear warmup steps */
  uint64_t total_steps;     /* for the decay schedules */
  float min_lr_ratio;       /* decay floor as a fraction of lr */
};
/* Defaults for an optimizer kind (Clippy: the defaults of distillation.md). */
struct kd_opt_params kd_opt_defaults(uint32_t kind);
/* Learning rate at step (0-based) under the schedule. */
double kd_opt_lr_at(const struct kd_opt_params *p, uint64_t step);

/* Clippy's scale for one tensor: min(1, min over i with delta_i != 0 of M_i / |delta_i|) with
 * M_i = f0 |ref0_i| + f1 |ref1_i| + abs (ref1 may be NULL). Exposed for tests. */
double kd_clippy_scale(const float *delta, size_t n, const float *ref0, float f0, const float *ref1,
                       float f1, float abs_factor);
/* One Clippy step on a dense tensor (w, acc, g of n floats); returns the scale used. */
double kd_clippy_step(float *w, float *acc, const float *g, size_t n, float lr,
                      const struct kd_opt_params *p);
/* The same on the given rows of a (rows x dim) table; g holds n_rows x dim gradients, compact:
 * the gradient of rows[r] is g[r*dim .. r*dim+dim). The scale is taken over these rows only. */
double kd_clippy_step_rows(float *w, float *acc, const float *g, const uint64_t *rows, size_t n_rows,
                           uint32_t dim, float lr, const struct kd_opt_params *p);

/* ---------------------------------------------------------------- trainer */
struct kd_train_params {
  uint32_t threads;         /* worker threads (>= 1); results depend on (seed, threads) only */
  uint32_t max_batch;       /* largest batch the trainer is asked to step */
  struct kd_opt_params opt;
  uint32_t n_loss;
  struct kd_loss_term loss[2 * KD_MAX_TASKS];
};
typedef struct kd_trainer kd_trainer;

/* Creates a trainer over model m (borrowed; trained in place; must outlive the trainer).
 * The trainer caches the hashed embedding rows of the last two tables it was given (by address,
 * row count and fingerprint): a table must not be modified while a trainer uses it. */
kd_trainer *kd_trainer_create(struct kd_model *m, const struct kd_train_params *p, struct kd_err *e);
void kd_trainer_free(kd_trainer *t);
/* Forward + backward on rows[0..n) of tab, leaving gradients (no update). loss_out (may be NULL)
 * receives the total loss; task_loss (may be NULL, n_loss entries) each term's unweighted mean. */
int kd_trainer_grad(kd_trainer *t, const struct kd_table *tab, const uint64_t *rows, uint32_t n,
                    double *loss_out, double *task_loss, struct kd_err *e);
/* The gradient of tensor i (kd_arch_tensor order) after kd_trainer_grad: dense, full shape
 * (embedding rows not touched are 0; an embedding's full table is built on request). */
const float *kd_trainer_grad_tensor(kd_trainer *t, uint32_t i);
/* kd_trainer_grad then one optimizer update. */
int kd_trainer_step(kd_trainer *t, const struct kd_table *tab, const uint64_t *rows, uint32_t n,
                    double *loss_out, double *task_loss, struct kd_err *e);
uint64_t kd_trainer_steps(const kd_trainer *t);
double kd_trainer_last_grad_norm(const kd_trainer *t);
/* Raw logits for rows (n x arch.n_tasks, row-major), any n (processed in max_batch chunks). */
int kd_trainer_predict(kd_trainer *t, const struct kd_table *tab, const uint64_t *rows, uint64_t n,
                       float *logits, struct kd_err *e);

/* ---------------------------------------------------------------- evaluation */
/* Exact ROC AUC; tied scores count one half. Returns NaN when a class is absent. Allocates. */
double kd_auc(const float *score, const float *label, uint64_t n);
struct kd_task_metrics {
  uint64_t n;        /* labelled examples */
  double auc;        /* binary */
  double logloss;    /* binary */
  double rmse;       /* regression (on the transformed target) */
  double calib;      /* mean prediction / mean label (probabilities or target values) */
  double mean_label, mean_pred;
};
/* Metrics of one task from logits (stride = floats between rows) and labels (NaN skipped). */
void kd_metrics_task(uint32_t type, const float *logits, size_t stride, const float *labels,
                     size_t lstride, uint64_t n, struct kd_task_metrics *out);

/* ---------------------------------------------------------------- fit (the CLI's run) */
struct kd_fit_config {
  const char *train_path, *test_path, *schema_path, *out_path, *summary_path;
  const char *arch;          /* preset name for widths (NULL: "ref-student") */
  uint32_t n_shared, shared[KD_MAX_LAYERS]; /* 0: from the preset */
  int32_t n_tower;           /* < 0: from the preset */
  uint32_t tower[KD_MAX_LAYERS];
  float act_clip;            /* < 0: from the preset */
  uint32_t emb_dim;          /* > 0: override every sparse feature's dim */
  uint32_t epochs, batch, threads;
  uint64_t seed;
  uint64_t max_steps;        /* > 0: stop after this many steps (benchmarks) */
  struct kd_opt_params opt;
  float task_weight[KD_MAX_TASKS]; /* per task (default 1) */
  float huber_delta[KD_MAX_TASKS]; /* > 0: Huber instead of squared error */
  const char *early_metric;  /* "auc:<task>", "logloss:<task>", "rmse:<task>", "loss" */
  uint32_t patience;         /* epochs without improvement before stopping (0: never stop) */
  struct kd_load_params load;
  int progress;              /* -1 auto (TTY), 0 plain lines, 1 bar */
  int quiet;
  double train_seconds;      /* out: time spent in steps */
  double examples_per_sec;   /* out */
};
void kd_fit_defaults(struct kd_fit_config *c);
/* Loads data, builds the arch from the schema + widths, trains, evaluates each epoch, keeps the
 * best model (by early_metric) and writes it to out_path with provenance metadata. */
int kd_fit_run(struct kd_fit_config *c, struct kd_err *e);
/* Builds the arch: the schema's features/tasks with preset-like (or given) widths. */
int kd_arch_from_schema(const struct kd_schema *s, const struct kd_fit_config *c, struct kd_arch *out,
                        struct kd_err *e);

/* Places checkpoint file as REPO/MODEL/<next version>/model.kdr: copies into a temp dir in
 * REPO/MODEL, fsyncs, renames the dir to the next integer version, fsyncs the parent. Never a
 * half-visible version. version_out (may be NULL) receives the number. Checks the file opens. */
int kd_publish(const char *file, const char *repo, const char *model, uint64_t *version_out,
               struct kd_err *e);

#ifdef __cplusplus
}
#endif
#endif
