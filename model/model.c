/* model.c - weight storage (one aligned block or a view), seeded init, input checks. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "kdrank_model.h"

static uint32_t n_emb_before(const struct kd_arch *a, uint32_t f) {
  uint32_t n = 0;
  for (uint32_t i = 0; i < f && i < a->n_features; i++) n += a->features[i].kind == KD_FEAT_SPARSE;
  return n;
}

float *kd_model_emb(const struct kd_model *m, uint32_t f) {
  if (f >= m->arch.n_features || m->arch.features[f].kind != KD_FEAT_SPARSE) return NULL;
  return m->t[n_emb_before(&m->arch, f)];
}
float *kd_model_shared_w(const struct kd_model *m, uint32_t l) {
  return l < m->arch.n_shared ? m->t[n_emb_before(&m->arch, m->arch.n_features) + 2 * l] : NULL;
}
float *kd_model_shared_b(const struct kd_model *m, uint32_t l) {
  return l < m->arch.n_shared ? m->t[n_emb_before(&m->arch, m->arch.n_features) + 2 * l + 1] : NULL;
}
static uint32_t tower_idx(const struct kd_model *m, uint32_t k, uint32_t j) {
  return n_emb_before(&m->arch, m->arch.n_features) + 2 * m->arch.n_shared + 2 * (k * (m->arch.n_tower + 1) + j);
}
float *kd_model_tower_w(const struct kd_model *m, uint32_t k, uint32_t j) {
  return (k < m->arch.n_tasks && j <= m->arch.n_tower) ? m->t[tower_idx(m, k, j)] : NULL;
}
float *kd_model_tower_b(const struct kd_model *m, uint32_t k, uint32_t j) {
  return (k < m->arch.n_tasks && j <= m->arch.n_tower) ? m->t[tower_idx(m, k, j) + 1] : NULL;
}

static size_t align64(size_t n) { return (n + 63) & ~(size_t)63; }

struct kd_model *kd_model_alloc(const struct kd_arch *a, struct kd_err *e) {
  if (kd_arch_validate(a, e) != KD_OK) return NULL;
  struct kd_model *m = calloc(1, sizeof *m);
  if (!m) { kd_err_set(e, KD_ERR_NOMEM, "out of memory allocating a model"); return NULL; }
  m->arch = *a;
  m->n_tensors = kd_arch_n_tensors(a);
  size_t total = 0;
  struct kd_tensor_info ti;
  for (uint32_t i = 0; i < m->n_tensors; i++) {
    kd_arch_tensor(a, i, &ti);
    total += align64(ti.numel * sizeof(float));
  }
  m->owned = aligned_alloc(64, total ? total : 64);
  if (!m->owned) {
    free(m);
    kd_err_set(e, KD_ERR_NOMEM, "out of memory allocating %zu bytes of weights", total);
    return NULL;
  }
  memset(m->owned, 0, total);
  m->owned_bytes = total;
  size_t off = 0;
  for (uint32_t i = 0; i < m->n_tensors; i++) {
    kd_arch_tensor(a, i, &ti);
    m->t[i] = (float *)((char *)m->owned + off);
    off += align64(ti.numel * sizeof(float));
  }
  return m;
}

struct kd_model *kd_model_view(const struct kd_arch *a, float *const *ptrs, struct kd_err *e) {
  if (kd_arch_validate(a, e) != KD_OK) return NULL;
  struct kd_model *m = calloc(1, sizeof *m);
  if (!m) { kd_err_set(e, KD_ERR_NOMEM, "out of memory allocating a model"); return NULL; }
  m->arch = *a;
  m->n_tensors = kd_arch_n_tensors(a);
  for (uint32_t i = 0; i < m->n_tensors; i++) m->t[i] = ptrs[i];
  return m;
}

void kd_model_free(struct kd_model *m) {
  if (!m) return;
  free(m->owned);
  free(m);
}

/* splitmix64: a small, well-mixed generator; enough for weight init. */
static uint64_t rng_next(uint64_t *s) {
  uint64_t z = (*s += 0x9E3779B97F4A7C15ull);
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return z ^ (z >> 31);
}
static double rng_unit(uint64_t *s) { return (double)(rng_next(s) >> 11) * 0x1.0p-53; }

void kd_model_init_random(struct kd_model *m, uint64_t seed) {
  struct kd_tensor_info ti;
  for (uint32_t i = 0; i < m->n_tensors; i++) {
    kd_arch_tensor(&m->arch, i, &ti);
    uint64_t s = seed * 0x100000001B3ull + i * 0x9E3779B97F4A7C15ull + 1;
    float *w = m->t[i];
    if (!strncmp(ti.name, "emb.", 4)) {
      for (uint64_t j = 0; j < ti.numel; j += 2) { /* Box-Muller, N(0, 0.05) */
        double u1 = rng_unit(&s), u2 = rng_unit(&s);
        double r = sqrt(-2.0 * log(u1 + 1e-300)) * 0.05;
        w[j] = (float)(r * cos(2 * M_PI * u2));
        if (j + 1 < ti.numel) w[j + 1] = (float)(r * sin(2 * M_PI * u2));
      }
    } else if (ti.ndim == 2) { /* He-uniform over fan-in */
      double lim = sqrt(6.0 / (double)ti.shape[1]);
      for (uint64_t j = 0; j < ti.numel; j++) w[j] = (float)((2 * rng_unit(&s) - 1) * lim);
    } else {
      for (uint64_t j = 0; j < ti.numel; j++) w[j] = (float)((2 * rng_unit(&s) - 1) * 0.05);
    }
  }
}

int kd_input_check(const struct kd_arch *a, const struct kd_input *in, struct kd_err *e) {
  if (in->n_cand == 0) return kd_err_set(e, KD_ERR_INVALID, "candidates: count is 0, expected at least 1");
  for (uint32_t i = 0; i < a->n_features; i++) {
    const struct kd_feature *f = &a->features[i];
    const struct kd_column *c = &in->cols[i];
    uint64_t rows = f->group == KD_GROUP_CONTEXT ? 1 : in->n_cand;
    const char *g = f->group == KD_GROUP_CONTEXT ? "context" : "candidates";
    if (f->kind == KD_FEAT_DENSE) {
      if (c->n_ids)
        return kd_err_set(e, KD_ERR_INVALID, "%s column '%s': dense feature given %zu ids, expected %llu floats",
                          g, f->name, c->n_ids, (unsigned long long)(rows * f->dim));
      if (c->n_floats != rows * f->dim || (c->n_floats && !c->floats))
        return kd_err_set(e, KD_ERR_INVALID, "%s column '%s': %zu floats, expected %llu (%llu rows x dim %u)",
                          g, f->name, c->n_floats, (unsigned long long)(rows * f->dim), (unsigned long long)rows, f->dim);
    } else {
      if (c->n_floats)
        return kd_err_set(e, KD_ERR_INVALID, "%s column '%s': sparse feature given %zu floats, expected ids",
                          g, f->name, c->n_floats);
      if (c->n_ids == 0 || c->n_ids % rows != 0 || !c->ids)
        return kd_err_set(e, KD_ERR_INVALID, "%s column '%s': %zu ids, expected a positive multiple of %llu rows",
                          g, f->name, c->n_ids, (unsigned long long)rows);
    }
  }
  return KD_OK;
}
