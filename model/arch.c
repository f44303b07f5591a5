/* arch.c - architecture description: validation, widths, tensor table, FLOPs, presets. */
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>

#include "kdrank_model.h"

int kd_err_set(struct kd_err *e, int code, const char *fmt, ...) {
  if (e) {
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(e->msg, sizeof e->msg, fmt, ap);
    va_end(ap);
    e->code = code;
  }
  return code;
}

const char *kd_status_name(int code) {
  switch (code) {
    case KD_OK: return "OK";
    case KD_ERR_INVALID: return "INVALID";
    case KD_ERR_NOT_FOUND: return "NOT_FOUND";
    case KD_ERR_IO: return "IO";
    case KD_ERR_NOMEM: return "NOMEM";
    case KD_ERR_CORRUPT: return "CORRUPT";
    case KD_ERR_UNSUPPORTED: return "UNSUPPORTED";
    case KD_ERR_RANGE: return "RANGE";
    default: return "UNKNOWN";
  }
}

static int name_ok(const char *s) {
  size_t n = strnlen(s, KD_NAME_MAX);
  if (n == 0 || n >= KD_NAME_MAX) return 0;
  for (size_t i = 0; i < n; i++) {
    char c = s[i];
    if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '_' ||
          c == '-'))
      return 0;
  }
  return 1;
}

int kd_arch_validate(const struct kd_arch *a, struct kd_err *e) {
  uint32_t nctx = 0, ncand = 0;
  if (a->n_features == 0 || a->n_features > KD_MAX_FEATURES)
    return kd_err_set(e, KD_ERR_INVALID, "architecture: feature count %u, expected 1..%d",
                      a->n_features, KD_MAX_FEATURES);
  for (uint32_t i = 0; i < a->n_features; i++) {
    const struct kd_feature *f = &a->features[i];
    if (!name_ok(f->name))
      return kd_err_set(e, KD_ERR_INVALID,
                        "architecture: feature %u name is empty, too long or not [A-Za-z0-9_-]", i);
    for (uint32_t j = 0; j < i; j++)
      if (!strcmp(a->features[j].name, f->name))
        return kd_err_set(e, KD_ERR_INVALID, "architecture: feature '%s' appears twice", f->name);
    if (f->kind > KD_FEAT_SPARSE)
      return kd_err_set(e, KD_ERR_INVALID, "architecture: feature '%s' kind %u, expected 0 (dense) or 1 (sparse)", f->name, f->kind);
    if (f->group > KD_GROUP_CANDIDATE)
      return kd_err_set(e, KD_ERR_INVALID, "architecture: feature '%s' group %u, expected 0 (context) or 1 (candidate)", f->name, f->group);
    if (f->dim == 0 || f->dim > 65536)
      return kd_err_set(e, KD_ERR_INVALID, "architecture: feature '%s' dim %u, expected 1..65536", f->name, f->dim);
    if (f->kind == KD_FEAT_SPARSE && (f->rows == 0 || f->rows > (1ull << 32)))
      return kd_err_set(e, KD_ERR_INVALID, "architecture: sparse feature '%s' rows %llu, expected 1..2^32",
                        f->name, (unsigned long long)f->rows);
    if (f->kind == KD_FEAT_DENSE && f->rows != 0)
      return kd_err_set(e, KD_ERR_INVALID, "architecture: dense feature '%s' rows %llu, expected 0",
                        f->name, (unsigned long long)f->rows);
    if (f->group == KD_GROUP_CONTEXT) nctx++; else ncand++;
  }
  if (ncand == 0)
    return kd_err_set(e, KD_ERR_INVALID, "architecture: no candidate feature, expected at least one");
  (void)nctx;
  if (a->n_shared == 0 || a->n_shared > KD_MAX_LAYERS)
    return kd_err_set(e, KD_ERR_INVALID, "architecture: shared layer count %u, expected 1..%d", a->n_shared, KD_MAX_LAYERS);
  if (a->n_tower > KD_MAX_LAYERS)
    return kd_err_set(e, KD_ERR_INVALID, "architecture: tower layer count %u, expected 0..%d", a->n_tower, KD_MAX_LAYERS);
  for (uint32_t l = 0; l < a->n_shared; l++)
    if (a->shared[l] == 0 || a->shared[l] > 65536)
      return kd_err_set(e, KD_ERR_INVALID, "architecture: shared layer %u width %u, expected 1..65536", l, a->shared[l]);
  for (uint32_t l = 0; l < a->n_tower; l++)
    if (a->tower[l] == 0 || a->tower[l] > 65536)
      return kd_err_set(e, KD_ERR_INVALID, "architecture: tower layer %u width %u, expected 1..65536", l, a->tower[l]);
  if (a->n_tasks == 0 || a->n_tasks > KD_MAX_TASKS)
    return kd_err_set(e, KD_ERR_INVALID, "architecture: task count %u, expected 1..%d", a->n_tasks, KD_MAX_TASKS);
  for (uint32_t i = 0; i < a->n_tasks; i++) {
    const struct kd_task *t = &a->tasks[i];
    if (!name_ok(t->name))
      return kd_err_set(e, KD_ERR_INVALID, "architecture: task %u name is empty, too long or not [A-Za-z0-9_-]", i);
    for (uint32_t j = 0; j < i; j++)
      if (!strcmp(a->tasks[j].name, t->name))
        return kd_err_set(e, KD_ERR_INVALID, "architecture: task '%s' appears twice", t->name);
    if (t->type > KD_TASK_REGRESSION)
      return kd_err_set(e, KD_ERR_INVALID, "architecture: task '%s' type %u, expected 0 (binary) or 1 (regression)", t->name, t->type);
    if (t->xform > KD_XFORM_LOG1P || (t->type == KD_TASK_BINARY && t->xform != KD_XFORM_IDENTITY))
      return kd_err_set(e, KD_ERR_INVALID, "architecture: task '%s' transform %u not valid for its type", t->name, t->xform);
    if (t->served > 1)
      return kd_err_set(e, KD_ERR_INVALID, "architecture: task '%s' served flag %u, expected 0 or 1", t->name, t->served);
  }
  if (!(a->act_clip >= 0.0f) || isinf(a->act_clip))
    return kd_err_set(e, KD_ERR_INVALID, "architecture: act_clip %g, expected a finite value >= 0", (double)a->act_clip);
  if (a->name[KD_NAME_MAX - 1] != 0 && strnlen(a->name, KD_NAME_MAX) >= KD_NAME_MAX)
    return kd_err_set(e, KD_ERR_INVALID, "architecture: name longer than %d bytes", KD_NAME_MAX - 1);
  return KD_OK;
}

static uint32_t group_width(const struct kd_arch *a, uint32_t g) {
  uint32_t w = 0;
  for (uint32_t i = 0; i < a->n_features; i++)
    if (a->features[i].group == g) w += a->features[i].dim;
  return w;
}
uint32_t kd_arch_ctx_width(const struct kd_arch *a) { return group_width(a, KD_GROUP_CONTEXT); }
uint32_t kd_arch_cand_width(const struct kd_arch *a) { return group_width(a, KD_GROUP_CANDIDATE); }

int kd_arch_find_feature(const struct kd_arch *a, const char *name) {
  for (uint32_t i = 0; i < a->n_features; i++)
    if (!strcmp(a->features[i].name, name)) return (int)i;
  return -1;
}

int kd_arch_find_task(const struct kd_arch *a, const char *name) {
  for (uint32_t i = 0; i < a->n_tasks; i++)
    if (!strcmp(a->tasks[i].name, name)) return (int)i;
  return -1;
}

double kd_arch_flops(const struct kd_arch *a, uint32_t n, int split) {
  double ctx = kd_arch_ctx_width(a), cand = kd_arch_cand_width(a);
  double per = cand * a->shared[0];
  double once = ctx * a->shared[0];
  if (!split) { per += once; once = 0; }
  for (uint32_t l = 1; l < a->n_shared; l++) per += (double)a->shared[l - 1] * a->shared[l];
  double tw = 0, in = a->shared[a->n_shared - 1];
  for (uint32_t j = 0; j < a->n_tower; j++) { tw += in * a->tower[j]; in = a->tower[j]; }
  tw += in;
  per += tw * a->n_tasks;
  return 2.0 * (per * n + once);
}

/* Tensor i of the table: see the order in kdrank_model.h. */
uint32_t kd_arch_n_tensors(const struct kd_arch *a) {
  uint32_t n = 0;
  for (uint32_t i = 0; i < a->n_features; i++) n += a->features[i].kind == KD_FEAT_SPARSE;
  return n + 2 * a->n_shared + 2 * a->n_tasks * (a->n_tower + 1);
}

static void set2(struct kd_tensor_info *t, uint64_t r, uint64_t c) {
  t->ndim = 2; t->shape[0] = r; t->shape[1] = c; t->numel = r * c;
}
static void set1(struct kd_tensor_info *t, uint64_t r) {
  t->ndim = 1; t->shape[0] = r; t->shape[1] = 1; t->numel = r;
}

int kd_arch_tensor(const struct kd_arch *a, uint32_t i, struct kd_tensor_info *t) {
  memset(t, 0, sizeof *t);
  for (uint32_t f = 0; f < a->n_features; f++) {
    if (a->features[f].kind != KD_FEAT_SPARSE) continue;
    if (i == 0) {
      snprintf(t->name, sizeof t->name, "emb.%s", a->features[f].name);
      set2(t, a->features[f].rows, a->features[f].dim);
      return KD_OK;
    }
    i--;
  }
  uint32_t in = kd_arch_ctx_width(a) + kd_arch_cand_width(a);
  for (uint32_t l = 0; l < a->n_shared; l++) {
    if (i < 2) {
      snprintf(t->name, sizeof t->name, "shared.%u.%s", l, i == 0 ? "weight" : "bias");
      if (i == 0) set2(t, a->shared[l], in); else set1(t, a->shared[l]);
      return KD_OK;
    }
    i -= 2;
    in = a->shared[l];
  }
  uint32_t base = in;
  for (uint32_t k = 0; k < a->n_tasks; k++) {
    in = base;
    for (uint32_t j = 0; j <= a->n_tower; j++) {
      uint32_t out = j < a->n_tower ? a->tower[j] : 1;
      if (i < 2) {
        snprintf(t->name, sizeof t->name, "tower.%s.%u.%s", a->tasks[k].name, j, i == 0 ? "weight" : "bias");
        if (i == 0) set2(t, out, in); else set1(t, out);
        return KD_OK;
      }
      i -= 2;
      in = out;
    }
  }
  return KD_ERR_RANGE;
}

uint64_t kd_arch_numel(const struct kd_arch *a) {
  uint64_t n = 0;
  struct kd_tensor_info t;
  for (uint32_t i = 0; i < kd_arch_n_tensors(a); i++)
    if (kd_arch_tensor(a, i, &t) == KD_OK) n += t.numel;
  return n;
}

/* ---- presets ---- */
static void add_feat(struct kd_arch *a, const char *name, uint32_t kind, uint32_t group, uint32_t dim, uint64_t rows) {
  struct kd_feature *f = &a->features[a->n_features++];
  snprintf(f->name, sizeof f->name, "%s", name);
  f->kind = kind; f->group = group; f->dim = dim; f->rows = rows;
}
static void add_task(struct kd_arch *a, const char *name, uint32_t type, uint32_t xform) {
  struct kd_task *t = &a->tasks[a->n_tasks++];
  snprintf(t->name, sizeof t->name, "%s", name);
  t->type = type; t->xform = xform; t->served = 1;
}

/* The four tasks of the reference models: two engagement, one noisy long-term value, one satisfaction. */
static void ref_tasks(struct kd_arch *a) {
  add_task(a, "click", KD_TASK_BINARY, KD_XFORM_IDENTITY);
  add_task(a, "like", KD_TASK_BINARY, KD_XFORM_IDENTITY);
  add_task(a, "watch_time", KD_TASK_REGRESSION, KD_XFORM_LOG1P);
  add_task(a, "satisfied", KD_TASK_BINARY, KD_XFORM_IDENTITY);
}

/* ref-student features: 256 context inputs + 256 candidate inputs. */
static void ref_features(struct kd_arch *a) {
  add_feat(a, "user_id", KD_FEAT_SPARSE, KD_GROUP_CONTEXT, 64, 100000);
  add_feat(a, "user_history", KD_FEAT_SPARSE, KD_GROUP_CONTEXT, 64, 100000);
  add_feat(a, "device", KD_FEAT_SPARSE, KD_GROUP_CONTEXT, 32, 1000);
  add_feat(a, "context_dense", KD_FEAT_DENSE, KD_GROUP_CONTEXT, 96, 0);
  add_feat(a, "item_id", KD_FEAT_SPARSE, KD_GROUP_CANDIDATE, 64, 100000);
  add_feat(a, "item_category", KD_FEAT_SPARSE, KD_GROUP_CANDIDATE, 32, 5000);
  add_feat(a, "item_dense", KD_FEAT_DENSE, KD_GROUP_CANDIDATE, 128, 0);
  add_feat(a, "item_stats", KD_FEAT_DENSE, KD_GROUP_CANDIDATE, 32, 0);
}

int kd_arch_preset(const char *name, struct kd_arch *a, struct kd_err *e) {
  memset(a, 0, sizeof *a);
  snprintf(a->name, sizeof a->name, "%s", name);
  if (!strcmp(name, "tiny")) {
    add_feat(a, "user_id", KD_FEAT_SPARSE, KD_GROUP_CONTEXT, 8, 1000);
    add_feat(a, "context_dense", KD_FEAT_DENSE, KD_GROUP_CONTEXT, 4, 0);
    add_feat(a, "item_id", KD_FEAT_SPARSE, KD_GROUP_CANDIDATE, 8, 5000);
    add_feat(a, "item_tags", KD_FEAT_SPARSE, KD_GROUP_CANDIDATE, 4, 100);
    add_feat(a, "item_dense", KD_FEAT_DENSE, KD_GROUP_CANDIDATE, 3, 0);
    a->n_shared = 2; a->shared[0] = 16; a->shared[1] = 8;
    a->n_tower = 1; a->tower[0] = 4;
    ref_tasks(a);
    return KD_OK;
  }
  uint32_t mult = 0;
  if (!strcmp(name, "ref-student")) mult = 1;
  else if (!strcmp(name, "ref-teacher-2x")) mult = 2;
  else if (!strcmp(name, "ref-teacher-4x")) mult = 4;
  if (!mult) {
    memset(a, 0, sizeof *a);
    return kd_err_set(e, KD_ERR_NOT_FOUND, "unknown preset '%s', expected one of: %s", name, kd_arch_preset_names());
  }
  ref_features(a);
  a->n_shared = 2; a->shared[0] = 256 * mult; a->shared[1] = 128 * mult;
  a->n_tower = 1; a->tower[0] = 64 * mult;
  ref_tasks(a);
  return KD_OK;
}

const char *kd_arch_preset_names(void) { return "tiny ref-student ref-teacher-2x ref-teacher-4x"; }
