/* score_fast.c - the fast path: weights laid out once (kd_plan), per-thread scratch (kd_scratch),
 * and the scorer (kd_score / kd_logits).
 *
 * Layout chosen at plan time (every width padded to KD_PAD floats with zeros, so kernels have no
 * tails and pads stay exactly zero through ReLU):
 *   w0c   (h0, ctx)          the first shared layer's context columns   (split plans)
 *   l0    (h0, cand)         its candidate columns                      (split plans)
 *         (h0, ctx + cand)   or the whole layer, context columns first  (flat plans)
 *   shared[l] (h_l, h_{l-1}) the other shared layers, as in the model
 *   tw0   (T * t0, h_last)   every task's first tower layer stacked: one call for all towers
 *   tower[k][j] (t_j, t_{j-1}) deeper tower layers, per task
 *   u     (T, last)          last-layer vectors; d (T) their biases
 * plus, for kernel sets with a panel kernel (AVX2), each layer again in 16-output panels.
 * A request runs in chunks of at most KD_CHUNK candidates (balanced) so that a chunk's
 * activations stay in L2 from one layer to the next; inside a chunk each layer is, by chunk
 * size: the small-batch kernel (<= KD_SMALL_BATCH rows: streams the weights once), the AVX2
 * panel kernel (weights packed in 16-output panels at plan time, bias+ReLU(+clip) fused into the
 * store), or one cblas_sgemm (row-major X . W^T) followed by the bias+ReLU(+clip) epilogue.
 * The split plan computes c = W0c . ctx + b0 once per request and uses it as the first layer's
 * bias for every candidate; the flat plan (a benchmark baseline) copies the context into every
 * candidate's input row and multiplies the full first layer.
 *
 * With the default tuning the chunk (256) is under KD_PANEL_BATCH, so the AVX2 set never calls
 * BLAS; the portable set uses cblas_sgemm/sgemv, whose threads are the caller's choice
 * (kd_blas_set_threads; a server that scores on many worker threads should set 1).
 */
#include <cblas.h>
#include <stdlib.h>
#include <string.h>

#include "kdrank_model.h"
#include "kernels.h"

/* Tuning, measured on ref-student with kdrank-bench-model on the development machine (see
 * model/BENCHMARKS.md): candidates per chunk (a chunk's activations stay in L2 from one layer to
 * the next); chunks of at most KD_SMALL_BATCH rows use layer_small (weights streamed once, dot
 * products); up to KD_PANEL_BATCH rows the kernel set's panel kernel (6x16 register tile, weights
 * pre-packed, fused epilogue; it beat OpenBLAS sgemm + epilogue at every batch measured, most
 * at 4..64 rows where sgemm's per-call packing dominates); larger chunks, and every chunk of
 * the scalar kernel set, use cblas_sgemm + the bias/activation epilogue. */
#ifndef KD_CHUNK
#define KD_CHUNK 256
#endif
#ifndef KD_SMALL_BATCH
#define KD_SMALL_BATCH 2
#endif
#ifndef KD_PANEL_BATCH
#define KD_PANEL_BATCH 512
#endif

/* One dense layer laid out for the fast path. */
struct kd_layer {
  float *w;          /* (out_p, in_p) row-major, zero padded */
  float *wp;         /* (out_p/16, in_p, 16) the same packed in panels; NULL without layer_panel */
  float *b;          /* (out_p) zero padded; NULL for the split first layer (bias is per request) */
  uint32_t out_p, in_p;
};

/* Where a feature's values go in its group's input row. */
struct kd_feat_slot {
  uint32_t off;      /* first float in the context row or the candidate row */
  uint32_t dim;
  uint64_t rows;     /* sparse: embedding rows */
  float *emb;        /* sparse: (rows, dim) copy of the table; NULL for dense */
};

struct kd_plan {
  struct kd_arch arch;
  const struct kd_kernels *k;
  int flat;
  uint32_t ctx_p, cand_p;     /* padded input widths */
  uint32_t x_ld, x_off;       /* input row stride and the candidate block's offset in it */
  uint32_t h_max_p;           /* widest padded shared layer */
  uint32_t t_p[KD_MAX_LAYERS];/* padded tower widths */
  uint32_t t_max_p;
  uint32_t last_p;            /* padded input width of the last (logit) layer */
  struct kd_feat_slot slot[KD_MAX_FEATURES];
  struct kd_layer w0c;        /* split only: (h0_p, ctx_p), bias b0 */
  struct kd_layer shared[KD_MAX_LAYERS]; /* [0]: candidate block (split) or full layer (flat) */
  struct kd_layer tw0;        /* n_tower >= 1: (T * t_p[0], h_last_p) */
  struct kd_layer tower[KD_MAX_TASKS][KD_MAX_LAYERS]; /* j >= 1 */
  float *u;                   /* (T, last_p) */
  float d[KD_MAX_TASKS];
  void *block;                /* every array above, one 64-byte aligned allocation */
  size_t bytes;
};

struct kd_scratch {
  uint32_t max_cand, chunk;  /* chunk: candidates per pass through the network */
  uint32_t small_batch;      /* chunks of at most this many rows use the small-batch kernel */
  uint32_t panel_batch;      /* ... else at most this many the panel kernel (when present) */
  /* capacities, checked against each plan the scratch is used with */
  uint32_t cap_x_ld, cap_ctx_p, cap_h_p, cap_g_ld, cap_tasks;
  float *x;      /* (chunk, cap_x_ld) input rows */
  float *ctx;    /* (cap_ctx_p) the context input row */
  float *cvec;   /* (cap_h_p) W0c . ctx + b0 */
  float *ha, *hb;/* (chunk, cap_h_p) shared activations, ping-pong */
  float *ga, *gb;/* (chunk, cap_g_ld) tower activations, tasks side by side, ping-pong */
  float *lt;     /* (cap_tasks, chunk) logits, task-major */
  void *block;
};

/* ---- kernels and BLAS threads ---- */

const char *kd_kernel_name(int k) {
  switch (k) {
    case KD_KERNEL_AUTO: return "auto";
    case KD_KERNEL_SCALAR: return "scalar";
    case KD_KERNEL_AVX2: return "avx2";
    default: return "unknown";
  }
}

int kd_kernel_detect(void) {
  __builtin_cpu_init();
  if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) return KD_KERNEL_AVX2;
  return KD_KERNEL_SCALAR;
}

void kd_blas_set_threads(int n) { openblas_set_num_threads(n < 1 ? 1 : n); }
int kd_blas_threads(void) { return openblas_get_num_threads(); }

/* ---- plan ---- */

/* Carves n floats (64-byte aligned) from a block; with base NULL only counts. */
static float *carve(char *base, size_t *off, size_t n) {
  float *p = base ? (float *)(base + *off) : NULL;
  *off += (n * sizeof(float) + 63) & ~(size_t)63;
  return p;
}

/* Copies a (rows, cols) row-major matrix src into dst (rows, ld) starting at column c0. */
static void copy_block(float *dst, size_t ld, size_t c0, const float *src, size_t rows,
                       size_t cols, size_t src_ld, size_t src_c0) {
  for (size_t r = 0; r < rows; r++)
    memcpy(dst + r * ld + c0, src + r * src_ld + src_c0, cols * sizeof(float));
}

/* Carves L's panel copy (when the kernel set has layer_panel) and, with base, packs L->w into it. */
static void pack_panels(const kd_plan *p, struct kd_layer *L, char *base, size_t *off) {
  if (!p->k->layer_panel) return;
  L->wp = carve(base, off, (size_t)L->out_p * L->in_p);
  if (!base) return;
  for (size_t q = 0; q < L->out_p / 16; q++)
    for (size_t i = 0; i < L->in_p; i++)
      for (size_t j = 0; j < 16; j++)
        L->wp[(q * L->in_p + i) * 16 + j] = L->w[(q * 16 + j) * L->in_p + i];
}

/* Lays the model's weights into the plan's block (base NULL: only computes the size). */
static size_t plan_layout(kd_plan *p, const struct kd_model *m, char *base) {
  const struct kd_arch *a = &p->arch;
  size_t off = 0;
  uint32_t ctx_w = kd_arch_ctx_width(a), cand_w = kd_arch_cand_width(a);
  uint32_t in_w = ctx_w + cand_w;
  uint32_t h0 = a->shared[0], h0_p = kd_pad(h0);

  for (uint32_t f = 0; f < a->n_features; f++) {
    const struct kd_feature *ft = &a->features[f];
    if (ft->kind != KD_FEAT_SPARSE) continue;
    size_t n = (size_t)ft->rows * ft->dim;
    p->slot[f].emb = carve(base, &off, n);
    if (base) memcpy(p->slot[f].emb, kd_model_emb(m, f), n * sizeof(float));
  }

  const float *W0 = kd_model_shared_w(m, 0), *b0 = kd_model_shared_b(m, 0);
  struct kd_layer *l0 = &p->shared[0];
  l0->out_p = h0_p;
  if (p->flat) {
    l0->in_p = p->ctx_p + p->cand_p;
    l0->w = carve(base, &off, (size_t)h0_p * l0->in_p);
    l0->b = carve(base, &off, h0_p);
    if (base) {
      copy_block(l0->w, l0->in_p, 0, W0, h0, ctx_w, in_w, 0);
      copy_block(l0->w, l0->in_p, p->ctx_p, W0, h0, cand_w, in_w, ctx_w);
      memcpy(l0->b, b0, h0 * sizeof(float));
    }
  } else {
    p->w0c.out_p = h0_p;
    p->w0c.in_p = p->ctx_p;
    p->w0c.w = carve(base, &off, (size_t)h0_p * p->ctx_p);
    p->w0c.b = carve(base, &off, h0_p);
    l0->in_p = p->cand_p;
    l0->w = carve(base, &off, (size_t)h0_p * p->cand_p);
    l0->b = NULL;
    if (base) {
      copy_block(p->w0c.w, p->ctx_p, 0, W0, h0, ctx_w, in_w, 0);
      memcpy(p->w0c.b, b0, h0 * sizeof(float));
      copy_block(l0->w, p->cand_p, 0, W0, h0, cand_w, in_w, ctx_w);
    }
  }
  pack_panels(p, l0, base, &off);
  for (uint32_t l = 1; l < a->n_shared; l++) {
    struct kd_layer *L = &p->shared[l];
    L->out_p = kd_pad(a->shared[l]);
    L->in_p = kd_pad(a->shared[l - 1]);
    L->w = carve(base, &off, (size_t)L->out_p * L->in_p);
    L->b = carve(base, &off, L->out_p);
    if (base) {
      copy_block(L->w, L->in_p, 0, kd_model_shared_w(m, l), a->shared[l], a->shared[l - 1],
                 a->shared[l - 1], 0);
      memcpy(L->b, kd_model_shared_b(m, l), a->shared[l] * sizeof(float));
    }
    pack_panels(p, L, base, &off);
  }

  uint32_t h_last = a->shared[a->n_shared - 1], h_last_p = kd_pad(h_last);
  uint32_t T = a->n_tasks;
  if (a->n_tower >= 1) {
    uint32_t t0 = a->tower[0], t0_p = p->t_p[0];
    p->tw0.out_p = T * t0_p;
    p->tw0.in_p = h_last_p;
    p->tw0.w = carve(base, &off, (size_t)p->tw0.out_p * h_last_p);
    p->tw0.b = carve(base, &off, p->tw0.out_p);
    if (base)
      for (uint32_t k = 0; k < T; k++) {
        copy_block(p->tw0.w + (size_t)k * t0_p * h_last_p, h_last_p, 0, kd_model_tower_w(m, k, 0),
                   t0, h_last, h_last, 0);
        memcpy(p->tw0.b + (size_t)k * t0_p, kd_model_tower_b(m, k, 0), t0 * sizeof(float));
      }
    pack_panels(p, &p->tw0, base, &off);
    for (uint32_t k = 0; k < T; k++)
      for (uint32_t j = 1; j < a->n_tower; j++) {
        struct kd_layer *L = &p->tower[k][j];
        L->out_p = p->t_p[j];
        L->in_p = p->t_p[j - 1];
        L->w = carve(base, &off, (size_t)L->out_p * L->in_p);
        L->b = carve(base, &off, L->out_p);
        if (base) {
          copy_block(L->w, L->in_p, 0, kd_model_tower_w(m, k, j), a->tower[j], a->tower[j - 1],
                     a->tower[j - 1], 0);
          memcpy(L->b, kd_model_tower_b(m, k, j), a->tower[j] * sizeof(float));
        }
        pack_panels(p, L, base, &off);
      }
  }
  uint32_t last_in = a->n_tower ? a->tower[a->n_tower - 1] : h_last;
  p->u = carve(base, &off, (size_t)T * p->last_p);
  if (base)
    for (uint32_t k = 0; k < T; k++) {
      memcpy(p->u + (size_t)k * p->last_p, kd_model_tower_w(m, k, a->n_tower),
             last_in * sizeof(float));
      p->d[k] = kd_model_tower_b(m, k, a->n_tower)[0];
    }
  return off;
}

kd_plan *kd_plan_create(const struct kd_model *m, struct kd_plan_params pp, struct kd_err *e) {
  if (!m) {
    kd_err_set(e, KD_ERR_INVALID, "plan: model is NULL");
    return NULL;
  }
  if (kd_arch_validate(&m->arch, e) != KD_OK) return NULL;
  int kernel = pp.kernel == KD_KERNEL_AUTO ? kd_kernel_detect() : pp.kernel;
  if (kernel != KD_KERNEL_SCALAR && kernel != KD_KERNEL_AVX2) {
    kd_err_set(e, KD_ERR_INVALID, "plan: kernel %d, expected 0 (auto), 1 (scalar) or 2 (avx2)",
               pp.kernel);
    return NULL;
  }
  if (kernel == KD_KERNEL_AVX2 && kd_kernel_detect() != KD_KERNEL_AVX2) {
    kd_err_set(e, KD_ERR_UNSUPPORTED, "plan: kernel avx2 asked for, but this CPU lacks AVX2+FMA");
    return NULL;
  }
  kd_plan *p = calloc(1, sizeof *p);
  if (!p) goto fail_nomem;
  p->arch = m->arch;
  const struct kd_arch *a = &p->arch;
  p->k = kernel == KD_KERNEL_AVX2 ? &kd_kernels_avx2 : &kd_kernels_scalar;
  p->flat = pp.flat != 0;
  p->ctx_p = kd_pad(kd_arch_ctx_width(a));
  p->cand_p = kd_pad(kd_arch_cand_width(a));
  p->x_ld = p->flat ? p->ctx_p + p->cand_p : p->cand_p;
  p->x_off = p->flat ? p->ctx_p : 0;
  for (uint32_t l = 0; l < a->n_shared; l++)
    if (kd_pad(a->shared[l]) > p->h_max_p) p->h_max_p = kd_pad(a->shared[l]);
  for (uint32_t j = 0; j < a->n_tower; j++) {
    p->t_p[j] = kd_pad(a->tower[j]);
    if (p->t_p[j] > p->t_max_p) p->t_max_p = p->t_p[j];
  }
  p->last_p = a->n_tower ? p->t_p[a->n_tower - 1] : kd_pad(a->shared[a->n_shared - 1]);
  uint32_t off[2] = {0, 0};
  for (uint32_t f = 0; f < a->n_features; f++) {
    const struct kd_feature *ft = &a->features[f];
    p->slot[f].off = off[ft->group];
    p->slot[f].dim = ft->dim;
    p->slot[f].rows = ft->rows;
    off[ft->group] += ft->dim;
  }
  p->bytes = plan_layout(p, m, NULL);
  p->block = aligned_alloc(64, p->bytes);
  if (!p->block) goto fail_nomem;
  memset(p->block, 0, p->bytes);
  plan_layout(p, m, p->block);
  return p;

fail_nomem:
  kd_err_set(e, KD_ERR_NOMEM, "plan: out of memory laying out %s (%zu bytes)", m->arch.name,
             p ? p->bytes : sizeof *p);
  free(p);
  return NULL;
}

void kd_plan_free(kd_plan *p) {
  if (!p) return;
  free(p->block);
  free(p);
}

const struct kd_arch *kd_plan_arch(const kd_plan *p) { return &p->arch; }
size_t kd_plan_bytes(const kd_plan *p) { return sizeof *p + p->bytes; }
int kd_plan_kernel(const kd_plan *p) { return p->k->id; }

/* ---- scratch ---- */

static uint32_t plan_g_ld(const kd_plan *p) { return p->arch.n_tasks * p->t_max_p; }

kd_scratch *kd_scratch_create(const kd_plan *p, uint32_t max_cand, struct kd_err *e) {
  return kd_scratch_create_tuned(p, max_cand, KD_CHUNK, KD_SMALL_BATCH, KD_PANEL_BATCH, e);
}

kd_scratch *kd_scratch_create_tuned(const kd_plan *p, uint32_t max_cand, uint32_t chunk,
                                    uint32_t small_batch, uint32_t panel_batch,
                                    struct kd_err *e) {
  if (!p) {
    kd_err_set(e, KD_ERR_INVALID, "scratch: plan is NULL");
    return NULL;
  }
  if (max_cand == 0) {
    kd_err_set(e, KD_ERR_INVALID, "scratch: max_cand 0, expected >= 1");
    return NULL;
  }
  kd_scratch *s = calloc(1, sizeof *s);
  if (!s) goto fail_nomem;
  s->max_cand = max_cand;
  if (chunk == 0) chunk = KD_CHUNK;
  s->chunk = max_cand < chunk ? max_cand : chunk;
  s->small_batch = small_batch;
  s->panel_batch = panel_batch;
  s->cap_x_ld = p->x_ld;
  s->cap_ctx_p = p->ctx_p;
  s->cap_h_p = p->h_max_p;
  s->cap_g_ld = plan_g_ld(p);
  s->cap_tasks = p->arch.n_tasks;
  size_t off = 0;
  for (int pass = 0; pass < 2; pass++) {
    char *base = pass ? s->block : NULL;
    off = 0;
    s->x = carve(base, &off, (size_t)s->chunk * s->cap_x_ld);
    s->ctx = carve(base, &off, s->cap_ctx_p ? s->cap_ctx_p : 1);
    s->cvec = carve(base, &off, s->cap_h_p);
    s->ha = carve(base, &off, (size_t)s->chunk * s->cap_h_p);
    s->hb = carve(base, &off, (size_t)s->chunk * s->cap_h_p);
    s->ga = carve(base, &off, (size_t)s->chunk * (s->cap_g_ld ? s->cap_g_ld : 1));
    s->gb = carve(base, &off, (size_t)s->chunk * (s->cap_g_ld ? s->cap_g_ld : 1));
    s->lt = carve(base, &off, (size_t)s->chunk * s->cap_tasks);
    if (!pass) {
      s->block = aligned_alloc(64, off);
      if (!s->block) goto fail_nomem;
      memset(s->block, 0, off);
    }
  }
  return s;

fail_nomem:
  kd_err_set(e, KD_ERR_NOMEM, "scratch: out of memory for %u candidates", max_cand);
  free(s);
  return NULL;
}

void kd_scratch_free(kd_scratch *s) {
  if (!s) return;
  free(s->block);
  free(s);
}

/* ---- scoring ---- */

/* Mean-pools k embedding rows into dst (dim). */
static void pool_ids(const struct kd_kernels *K, const struct kd_feat_slot *sl, const int64_t *ids,
                     size_t k, float *dst) {
  memcpy(dst, sl->emb + kd_hash_row(ids[0], sl->rows) * sl->dim, sl->dim * sizeof(float));
  if (k == 1) return;
  for (size_t j = 1; j < k; j++) K->add(dst, sl->emb + kd_hash_row(ids[j], sl->rows) * sl->dim, sl->dim);
  K->scale(dst, sl->dim, 1.0f / (float)k);
}

/* Writes group g's row r of in into dst (the group's features at their slots), zeroing the
 * pad up to width_p. rows: 1 for the context, n_cand for candidates. */
static void gather_row(const kd_plan *p, const struct kd_input *in, uint32_t g, size_t r,
                       size_t rows, float *dst, uint32_t width_p) {
  const struct kd_arch *a = &p->arch;
  uint32_t end = 0;
  for (uint32_t f = 0; f < a->n_features; f++) {
    const struct kd_feature *ft = &a->features[f];
    if (ft->group != g) continue;
    const struct kd_feat_slot *sl = &p->slot[f];
    const struct kd_column *c = &in->cols[f];
    if (ft->kind == KD_FEAT_DENSE) {
      memcpy(dst + sl->off, c->floats + r * sl->dim, sl->dim * sizeof(float));
    } else {
      size_t k = c->n_ids / rows;
      pool_ids(p->k, sl, c->ids + r * k, k, dst + sl->off);
    }
    end = sl->off + sl->dim;
  }
  if (width_p > end) memset(dst + end, 0, (width_p - end) * sizeof(float));
}

/* y (rows, out_p; ldy) = act(x (rows, in_p; ldx) . W^T + bias); wp: W in panels or NULL. */
static void run_layer(const kd_plan *p, const kd_scratch *s, const float *w, const float *wp,
                      uint32_t out_p, uint32_t in_p,
                      const float *bias, const float *x, size_t ldx, size_t rows, float *y,
                      size_t ldy, int act) {
  float clip = p->arch.act_clip;
  if (rows <= s->small_batch) {
    for (size_t r = 0; r < rows; r += KD_SMALL_ROWS) {
      size_t nb = rows - r < KD_SMALL_ROWS ? rows - r : KD_SMALL_ROWS;
      p->k->layer_small(w, out_p, in_p, x + r * ldx, ldx, nb, bias, y + r * ldy, ldy, act, clip);
    }
    return;
  }
  if (wp && rows <= s->panel_batch) {
    p->k->layer_panel(wp, out_p, in_p, x, ldx, rows, bias, y, ldy, act, clip);
    return;
  }
  cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, (blasint)rows, (blasint)out_p,
              (blasint)in_p, 1.0f, x, (blasint)ldx, w, (blasint)in_p, 0.0f, y, (blasint)ldy);
  p->k->bias_act(y, rows, ldy, out_p, bias, act, clip);
}

static int out_xform(const struct kd_task *t) {
  if (t->type == KD_TASK_BINARY) return KD_OUT_SIGMOID;
  return t->xform == KD_XFORM_LOG1P ? KD_OUT_EXPM1 : KD_OUT_LOGIT;
}

/* Scores rows [r0, r0 + c) of in into out (rows of n_out). need: tasks to compute; span
 * [kmin, kmax] covers them. */
static void score_chunk(const kd_plan *p, kd_scratch *s, const struct kd_input *in, size_t r0,
                        size_t c, const uint32_t *tasks, uint32_t n_out, const uint8_t *need,
                        uint32_t kmin, uint32_t kmax, int raw, float *out) {
  const struct kd_arch *a = &p->arch;
  const struct kd_kernels *K = p->k;
  for (size_t r = 0; r < c; r++)
    gather_row(p, in, KD_GROUP_CANDIDATE, r0 + r, in->n_cand, s->x + r * p->x_ld + p->x_off,
               p->cand_p);

  /* shared layers: x -> ha -> hb -> ... */
  const struct kd_layer *L0 = &p->shared[0];
  uint32_t h_ld = s->cap_h_p;
  run_layer(p, s, L0->w, L0->wp, L0->out_p, L0->in_p, p->flat ? L0->b : s->cvec, s->x, p->x_ld, c, s->ha,
            h_ld, 1);
  float *h = s->ha, *h2 = s->hb;
  for (uint32_t l = 1; l < a->n_shared; l++) {
    const struct kd_layer *L = &p->shared[l];
    run_layer(p, s, L->w, L->wp, L->out_p, L->in_p, L->b, h, h_ld, c, h2, h_ld, 1);
    float *t = h; h = h2; h2 = t;
  }

  /* towers: the stacked first layer over the tasks' span, then each needed task alone */
  const float *g = h;
  size_t g_ld = h_ld, g_step = 0;
  if (a->n_tower >= 1) {
    uint32_t t0_p = p->t_p[0];
    size_t ld = (size_t)a->n_tasks * t0_p;
    const struct kd_layer *L = &p->tw0;
    size_t w_off = (size_t)kmin * t0_p * L->in_p; /* same offset in both layouts: t0_p % 16 == 0 */
    run_layer(p, s, L->w + w_off, L->wp ? L->wp + w_off : NULL, (kmax - kmin + 1) * t0_p, L->in_p,
              L->b + (size_t)kmin * t0_p, h, h_ld, c, s->ga + (size_t)kmin * t0_p, ld, 1);
    float *gi = s->ga, *go = s->gb;
    for (uint32_t j = 1; j < a->n_tower; j++) {
      size_t ld_in = (size_t)a->n_tasks * p->t_p[j - 1], ld_out = (size_t)a->n_tasks * p->t_p[j];
      for (uint32_t k = kmin; k <= kmax; k++) {
        if (!need[k]) continue;
        const struct kd_layer *V = &p->tower[k][j];
        run_layer(p, s, V->w, V->wp, V->out_p, V->in_p, V->b, gi + (size_t)k * p->t_p[j - 1], ld_in, c,
                  go + (size_t)k * p->t_p[j], ld_out, 1);
      }
      float *t = gi; gi = go; go = t;
      ld = ld_out;
    }
    g = gi;
    g_ld = ld;
    g_step = p->t_p[a->n_tower - 1];
  }

  /* logits (task-major), served transform, scatter to the candidate-major output */
  for (uint32_t k = kmin; k <= kmax; k++) {
    if (!need[k]) continue;
    float *lt = s->lt + (size_t)k * s->chunk;
    K->dot_rows(g + k * g_step, c, g_ld, p->u + (size_t)k * p->last_p, p->last_p, p->d[k], lt);
    if (!raw) K->xform(lt, c, out_xform(&a->tasks[k]));
  }
  for (uint32_t o = 0; o < n_out; o++) {
    const float *lt = s->lt + (size_t)tasks[o] * s->chunk;
    float *dst = out + r0 * n_out + o;
    for (size_t r = 0; r < c; r++) dst[r * n_out] = lt[r];
  }
}

static int score_impl(const kd_plan *p, kd_scratch *s, const struct kd_input *in,
                      const uint32_t *tasks, uint32_t n_out, float *out, int raw,
                      struct kd_err *e) {
  if (!p || !s || !in || (n_out && (!tasks || !out)))
    return kd_err_set(e, KD_ERR_INVALID, "score: NULL plan, scratch, input, tasks or output");
  const struct kd_arch *a = &p->arch;
  if (in->n_cand > s->max_cand)
    return kd_err_set(e, KD_ERR_RANGE, "score: %u candidates, over the scratch's maximum %u",
                      in->n_cand, s->max_cand);
  if (p->x_ld > s->cap_x_ld || p->ctx_p > s->cap_ctx_p || p->h_max_p > s->cap_h_p ||
      plan_g_ld(p) > s->cap_g_ld || a->n_tasks > s->cap_tasks)
    return kd_err_set(e, KD_ERR_RANGE,
                      "score: scratch too small for model %s (create it with this plan)", a->name);
  int rc = kd_input_check(a, in, e);
  if (rc != KD_OK) return rc;
  uint8_t need[KD_MAX_TASKS] = {0};
  uint32_t kmin = a->n_tasks, kmax = 0;
  for (uint32_t o = 0; o < n_out; o++) {
    if (tasks[o] >= a->n_tasks)
      return kd_err_set(e, KD_ERR_INVALID, "score: task index %u, expected < %u", tasks[o],
                        a->n_tasks);
    need[tasks[o]] = 1;
    if (tasks[o] < kmin) kmin = tasks[o];
    if (tasks[o] > kmax) kmax = tasks[o];
  }
  if (n_out == 0 || in->n_cand == 0) return KD_OK;

  /* the context: gathered once; split plans also compute its first-layer block once */
  gather_row(p, in, KD_GROUP_CONTEXT, 0, 1, s->ctx, p->ctx_p);
  size_t n = in->n_cand;
  size_t n_chunks = (n + s->chunk - 1) / s->chunk;
  size_t per = (n + n_chunks - 1) / n_chunks;
  if (p->flat) {
    size_t rows = per < n ? per : n;
    for (size_t r = 0; r < rows; r++) memcpy(s->x + r * p->x_ld, s->ctx, p->ctx_p * sizeof(float));
  } else {
    p->k->layer_small(p->w0c.w, p->w0c.out_p, p->w0c.in_p, s->ctx, 0, 1, p->w0c.b, s->cvec, 0, 0,
                      0.0f);
  }
  for (size_t r0 = 0; r0 < n; r0 += per) {
    size_t c = n - r0 < per ? n - r0 : per;
    score_chunk(p, s, in, r0, c, tasks, n_out, need, kmin, kmax, raw, out);
  }
  return KD_OK;
}

int kd_score(const kd_plan *p, kd_scratch *s, const struct kd_input *in, const uint32_t *tasks,
             uint32_t n_out, float *out, struct kd_err *e) {
  return score_impl(p, s, in, tasks, n_out, out, 0, e);
}

int kd_logits(const kd_plan *p, kd_scratch *s, const struct kd_input *in, float *out,
              struct kd_err *e) {
  if (!p) return kd_err_set(e, KD_ERR_INVALID, "logits: plan is NULL");
  uint32_t all[KD_MAX_TASKS];
  for (uint32_t k = 0; k < p->arch.n_tasks; k++) all[k] = k;
  return score_impl(p, s, in, all, p->arch.n_tasks, out, 1, e);
}
