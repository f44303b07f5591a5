/* kdrank_model.h - the model core's contract: architecture, weights, scoring.
 *
 * The network: named features in two groups, CONTEXT (one row per request, shared by every
 * candidate) and CANDIDATE (one row per candidate). Each feature is DENSE (dim floats per row) or
 * SPARSE (int64 ids hashed into an embedding table of rows x dim; k ids per row are mean-pooled).
 * Input vector x = [context features in spec order | candidate features in spec order].
 *   h_0 = x
 *   h_{l+1} = clip(relu(W_l h_l + b_l))          shared layers l = 0 .. n_shared-1
 *   per task k: g_0 = h_last; g_{j+1} = clip(relu(V_kj g_j + c_kj)); logit_k = u_k . g_last + d_k
 *   served value: BINARY -> sigmoid(logit); REGRESSION -> identity(logit) or expm1(logit)
 * where clip(v) = min(v, act_clip) when act_clip > 0 (activation clipping, as trained).
 * The first shared layer's columns split into the context block and the candidate block; the
 * fast path computes the context block once per request and adds it to every candidate's row.
 *
 * Weights follow the (out, in) row-major convention (as torch.nn.Linear). Tensor names:
 *   emb.<feature>              (rows, dim)        sparse features only
 *   shared.<l>.weight          (out_l, in_l)      shared.<l>.bias (out_l)
 *   tower.<task>.<j>.weight    (out_j, in_j)      tower.<task>.<j>.bias (out_j); the last j has out 1
 * kd_arch_tensors() enumerates them in a fixed order: the single source of truth for the
 * checkpoint, the trainer and the scorers.
 *
 * Sparse ids map to rows by kd_hash_row(id, rows) = splitmix64(id) mod rows.
 * Thread safety: a kd_model and a kd_plan are immutable after creation and may be shared by any
 * number of threads; a kd_scratch belongs to one thread at a time.
 */
#ifndef KDRANK_MODEL_H
#define KDRANK_MODEL_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#define KD_NAME_MAX 64       /* feature/task names, including the NUL */
#define KD_MAX_LAYERS 8      /* shared layers, and hidden layers per tower */
#define KD_MAX_FEATURES 64
#define KD_MAX_TASKS 32

/* Errors: a code and a message a user can act on (file/field, expected, found). */
enum kd_status {
  KD_OK = 0,
  KD_ERR_INVALID = -1,   /* bad input: request, file content, flag */
  KD_ERR_NOT_FOUND = -2, /* unknown model/feature/task/file */
  KD_ERR_IO = -3,        /* system call failed */
  KD_ERR_NOMEM = -4,
  KD_ERR_CORRUPT = -5,   /* checksum, bound or structure check failed */
  KD_ERR_UNSUPPORTED = -6,
  KD_ERR_RANGE = -7,     /* a size is over a configured limit */
};

struct kd_err {
  int code;       /* enum kd_status */
  char msg[512];
};

/* Fills e (if not NULL) with code and a printf-style message; returns code. */
int kd_err_set(struct kd_err *e, int code, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
const char *kd_status_name(int code);

enum kd_feat_kind { KD_FEAT_DENSE = 0, KD_FEAT_SPARSE = 1 };
enum kd_feat_group { KD_GROUP_CONTEXT = 0, KD_GROUP_CANDIDATE = 1 };
enum kd_task_type { KD_TASK_BINARY = 0, KD_TASK_REGRESSION = 1 };
/* How a regression target was transformed for training; the served value undoes it. */
enum kd_task_xform { KD_XFORM_IDENTITY = 0, KD_XFORM_LOG1P = 1 };

struct kd_feature {
  char name[KD_NAME_MAX];
  uint32_t kind;  /* enum kd_feat_kind */
  uint32_t group; /* enum kd_feat_group */
  uint32_t dim;   /* dense: floats per row; sparse: embedding width */
  uint64_t rows;  /* sparse: embedding rows (hash buckets); 0 for dense */
};

struct kd_task {
  char name[KD_NAME_MAX];
  uint32_t type;   /* enum kd_task_type */
  uint32_t xform;  /* enum kd_task_xform (regression only) */
  uint32_t served; /* 0: trained (e.g. an auxiliary distillation head) but never returned */
};

/* The architecture: everything needed to know every tensor's name and shape. Plain data. */
struct kd_arch {
  char name[KD_NAME_MAX]; /* e.g. "ref-student" */
  uint32_t n_features;
  struct kd_feature features[KD_MAX_FEATURES];
  uint32_t n_shared;                /* >= 1 */
  uint32_t shared[KD_MAX_LAYERS];   /* output width of each shared layer */
  uint32_t n_tower;                 /* hidden layers per tower, >= 0 */
  uint32_t tower[KD_MAX_LAYERS];    /* width of each tower hidden layer (same for all tasks) */
  uint32_t n_tasks;
  struct kd_task tasks[KD_MAX_TASKS];
  float act_clip;                   /* > 0: hidden activations clipped to [0, act_clip] */
};

/* Checks the architecture is well formed (names unique and non-empty, dims > 0, limits). */
int kd_arch_validate(const struct kd_arch *a, struct kd_err *e);
/* Input widths: sum of dims of the context / candidate features. */
uint32_t kd_arch_ctx_width(const struct kd_arch *a);
uint32_t kd_arch_cand_width(const struct kd_arch *a);
/* Index of the feature / task with this name, or -1. */
int kd_arch_find_feature(const struct kd_arch *a, const char *name);
int kd_arch_find_task(const struct kd_arch *a, const char *name);
/* FLOPs to score n candidates (multiply-add = 2), with the context split (ctx computed once)
 * or flat (context block recomputed for every candidate). Embedding lookups not counted. */
double kd_arch_flops(const struct kd_arch *a, uint32_t n, int split);

/* The tensor table. Index order: emb.* (features in spec order, sparse only), shared.l.weight,
 * shared.l.bias for each l, then per task tower.<task>.j.weight, .bias for each j. */
struct kd_tensor_info {
  char name[KD_NAME_MAX + 32];
  uint32_t ndim;       /* 1 or 2 */
  uint64_t shape[2];   /* shape[0] = rows/out, shape[1] = in (ndim 2) */
  uint64_t numel;
};
/* Number of tensors of the architecture. */
uint32_t kd_arch_n_tensors(const struct kd_arch *a);
/* Fills info for tensor i (0 <= i < n_tensors). Returns KD_OK or KD_ERR_RANGE. */
int kd_arch_tensor(const struct kd_arch *a, uint32_t i, struct kd_tensor_info *info);
/* Total parameter count. */
uint64_t kd_arch_numel(const struct kd_arch *a);

/* Presets: "tiny", "ref-student", "ref-teacher-2x", "ref-teacher-4x". Returns KD_OK or NOT_FOUND. */
int kd_arch_preset(const char *name, struct kd_arch *out, struct kd_err *e);
/* Space-separated preset names, for --help. */
const char *kd_arch_preset_names(void);

/* Weights: a view of float32 tensors in kd_arch_tensors() order. The model does not own the
 * memory unless it was created by kd_model_alloc (then kd_model_free releases it). */
struct kd_model {
  struct kd_arch arch;
  uint32_t n_tensors;
  float *t[KD_MAX_FEATURES + 2 * KD_MAX_LAYERS + 2 * KD_MAX_TASKS * (KD_MAX_LAYERS + 1)];
  void *owned;         /* one 64-byte aligned block for all tensors when allocated here */
  size_t owned_bytes;
};
/* Convenience accessors into t[] (NULL when absent). */
float *kd_model_emb(const struct kd_model *m, uint32_t feature);
float *kd_model_shared_w(const struct kd_model *m, uint32_t l);
float *kd_model_shared_b(const struct kd_model *m, uint32_t l);
float *kd_model_tower_w(const struct kd_model *m, uint32_t task, uint32_t j); /* j in 0..n_tower */
float *kd_model_tower_b(const struct kd_model *m, uint32_t task, uint32_t j);

/* Allocates zeroed weights for arch in one block (each tensor 64-byte aligned). */
struct kd_model *kd_model_alloc(const struct kd_arch *a, struct kd_err *e);
/* Creates a model that views caller-owned tensors (e.g. an mmapped checkpoint); ptrs[i] for
 * tensor i. The caller keeps the memory alive for the model's lifetime. */
struct kd_model *kd_model_view(const struct kd_arch *a, float *const *ptrs, struct kd_err *e);
/* Fills weights with a seeded init: He-uniform for layers, N(0, 0.05) for embeddings, small
 * random biases. Deterministic for (arch, seed). */
void kd_model_init_random(struct kd_model *m, uint64_t seed);
void kd_model_free(struct kd_model *m);

/* Hash of a sparse id to a row in [0, rows). */
static inline uint64_t kd_hash_row(int64_t id, uint64_t rows) {
  uint64_t z = (uint64_t)id + 0x9E3779B97F4A7C15ull;
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  z ^= z >> 31;
  return z % rows;
}

/* One feature's values for all rows of a batch (points into caller memory, e.g. a decoded
 * request). Dense: n_floats = rows x dim. Sparse: n_ids = rows x k, k >= 1, mean-pooled. */
struct kd_column {
  const float *floats;
  size_t n_floats;
  const int64_t *ids;
  size_t n_ids;
};

/* A request: context columns (one row) and candidate columns (n_cand rows), each indexed by the
 * feature's position in arch.features (entries of the other group are ignored). */
struct kd_input {
  uint32_t n_cand;
  const struct kd_column *cols; /* [arch.n_features] */
};

/* Checks every column's length against the architecture: dense n_floats == rows*dim; sparse
 * n_ids a positive multiple of rows. Names the feature, expected and found on error. Does not
 * look at values: the scorers treat NaN/Inf floats as given (the server validates them). */
int kd_input_check(const struct kd_arch *a, const struct kd_input *in, struct kd_err *e);

/* The scalar reference scorer: the oracle. Plain loops, double accumulators, no BLAS.
 * tasks: indices into arch.tasks (n_out of them); out: n_cand x n_out, candidate-major, served
 * values (sigmoid / identity / expm1). Input must pass kd_input_check. Allocates internally. */
int kd_score_ref(const struct kd_model *m, const struct kd_input *in, const uint32_t *tasks,
                 uint32_t n_out, float *out, struct kd_err *e);
/* The same, returning raw logits (the trainer's view). */
int kd_logits_ref(const struct kd_model *m, const struct kd_input *in, const uint32_t *tasks,
                  uint32_t n_out, float *out, struct kd_err *e);

/* ---- The fast path ---- */
enum kd_kernel { KD_KERNEL_AUTO = 0, KD_KERNEL_SCALAR = 1, KD_KERNEL_AVX2 = 2 };
const char *kd_kernel_name(int k);
/* The kernel AUTO resolves to on this CPU (AVX2+FMA when present, else scalar). */
int kd_kernel_detect(void);

struct kd_plan_params {
  int kernel;          /* enum kd_kernel */
  int flat;            /* 1: no context split (benchmark baseline); 0: split (default) */
};
/* A plan: weights laid out once for the fast path (copies; the model may be freed after). */
typedef struct kd_plan kd_plan;
kd_plan *kd_plan_create(const struct kd_model *m, struct kd_plan_params p, struct kd_err *e);
void kd_plan_free(kd_plan *p);
const struct kd_arch *kd_plan_arch(const kd_plan *p);
size_t kd_plan_bytes(const kd_plan *p); /* memory held by the plan */
int kd_plan_kernel(const kd_plan *p);   /* the kernel actually used */

/* Per-thread scratch sized once for at most max_cand candidates (any number of ids per sparse
 * row: pooling needs no memory). Its memory is bounded by the fast path's chunk (256 rows), not
 * by max_cand. It may serve any plan whose layer widths fit the plan it was created with
 * (kd_score says KD_ERR_RANGE otherwise). */
typedef struct kd_scratch kd_scratch;
kd_scratch *kd_scratch_create(const kd_plan *p, uint32_t max_cand, struct kd_err *e);
void kd_scratch_free(kd_scratch *s);

/* Scores in. Same contract as kd_score_ref; no allocation. n_cand over the scratch's max ->
 * KD_ERR_RANGE. Deterministic for the same plan, kernel and input. */
int kd_score(const kd_plan *p, kd_scratch *s, const struct kd_input *in, const uint32_t *tasks,
             uint32_t n_out, float *out, struct kd_err *e);
/* Raw logits of every task (served or not), n_cand x n_tasks (the labeler's view). */
int kd_logits(const kd_plan *p, kd_scratch *s, const struct kd_input *in, float *out,
              struct kd_err *e);

/* OpenBLAS threads used by each BLAS call of the fast path (process-wide). Only the portable
 * kernel set (KD_KERNEL_SCALAR) calls BLAS; the AVX2 set has its own kernels. The library never
 * sets it itself: a server scoring on many worker threads should call kd_blas_set_threads(1)
 * once at start-up (or export OPENBLAS_NUM_THREADS=1); n < 1 counts as 1. */
void kd_blas_set_threads(int n);
int kd_blas_threads(void);

#ifdef __cplusplus
}
#endif
#endif
