/* handlers.c - the RPC handlers of kdrank-serve: Score, GetModelMetadata, Health/Check.
 * Decode with protobuf-c into the worker's arena, validate everything that came from outside
 * (messages name the column or field, the expected and the found value), score with kd_score
 * into the worker's buffers, encode straight into a gRPC slice.
 *
 * Status codes: unknown model / version / label -> NOT_FOUND; a model with no available version
 * -> UNAVAILABLE; malformed request, unknown/missing/duplicate feature, wrong length, count 0 or
 * over --max-candidates, context.count != 1, unknown or unserved task, NaN/Inf in a dense feature
 * (rejected, never zeroed: a silent fix-up would hide a broken feature pipeline) ->
 * INVALID_ARGUMENT; a request that decodes past the arena cap or a response over
 * --max-message-bytes -> RESOURCE_EXHAUSTED; a deadline that expired before scoring ->
 * DEADLINE_EXCEEDED without scoring; draining (health only) -> NOT_SERVING. */
#include <math.h>
#include <stdio.h>
#include <string.h>
#include <time.h>

#include <grpc/byte_buffer.h>
#include <grpc/byte_buffer_reader.h>
#include <grpc/support/time.h>

#include "health.pb-c.h"
#include "kdrank.pb-c.h"
#include "log.h"
#include "serve.h"

/* Reads the request payload into one contiguous span: the single slice itself when possible
 * (no copy), else a copy in the arena. A NULL payload is the valid empty message. Returns 0, or
 * -1 (arena cap reached) / -2 (unreadable, e.g. undecompressable). */
static int payload_bytes(struct kd_worker *w, grpc_byte_buffer *bb, grpc_byte_buffer_reader *rd,
                         int *have_reader, const uint8_t **data, size_t *len) {
  *data = (const uint8_t *)"";
  *len = 0;
  *have_reader = 0;
  if (!bb) return 0;
  if (!grpc_byte_buffer_reader_init(rd, bb)) return -2;
  *have_reader = 1;
  size_t total = grpc_byte_buffer_length(rd->buffer_out);
  if (total == 0) return 0;
  grpc_slice *peek;
  if (rd->buffer_out->data.raw.slice_buffer.count == 1 && grpc_byte_buffer_reader_peek(rd, &peek)) {
    *data = GRPC_SLICE_START_PTR(*peek);
    *len = GRPC_SLICE_LENGTH(*peek);
    return 0;
  }
  uint8_t *buf = kd_arena_alloc(&w->arena, total);
  if (!buf) return -1;
  size_t at = 0;
  grpc_slice sl;
  while (grpc_byte_buffer_reader_next(rd, &sl)) {
    size_t n = GRPC_SLICE_LENGTH(sl);
    if (at + n <= total) memcpy(buf + at, GRPC_SLICE_START_PTR(sl), n);
    at += n;
    grpc_slice_unref(sl);
  }
  if (at != total) return -2;
  *data = buf;
  *len = total;
  return 0;
}

/* Packs msg into a new single-slice byte buffer (no extra copy). Returns NULL if it would exceed
 * max bytes (*size gets the packed size). */
static grpc_byte_buffer *pack_reply(const ProtobufCMessage *msg, size_t max, size_t *size) {
  *size = protobuf_c_message_get_packed_size(msg);
  if (*size > max) return NULL;
  grpc_slice s = grpc_slice_malloc(*size);
  protobuf_c_message_pack(msg, GRPC_SLICE_START_PTR(s));
  grpc_byte_buffer *bb = grpc_raw_byte_buffer_create(&s, 1);
  grpc_slice_unref(s);
  return bb;
}

/* 1 when the call's deadline has passed. */
static int deadline_passed(const struct kd_call *c) {
  gpr_timespec now = gpr_now(GPR_CLOCK_MONOTONIC);
  gpr_timespec dl = gpr_convert_clock_type(c->rpc.deadline, GPR_CLOCK_MONOTONIC);
  return gpr_time_cmp(now, dl) >= 0;
}

/* The model a request names, or the server's default. NULL + msg when empty and no default. */
static const char *resolve_model(struct kd_server *s, const char *asked, char *msg) {
  if (asked && asked[0]) return asked;
  if (s->default_model) return s->default_model;
  snprintf(msg, KD_SERVE_MSG_MAX,
           "model: empty, and the server has no default model (%u models; set --default-model or "
           "name one)", kd_registry_n_models(s->reg));
  return NULL;
}

/* Acquires the version a request asks for; maps registry errors to gRPC codes. */
static kd_version *acquire(struct kd_server *s, const char *model, uint64_t key, int64_t pin_version,
                           const char *pin_label, const char **label, int *code, char *msg) {
  struct kd_err e = {0};
  kd_version *v = kd_registry_route(s->reg, model, key, pin_version, pin_label, label, &e);
  if (!v) {
    *code = e.code == KD_REG_UNAVAILABLE ? GRPC_STATUS_UNAVAILABLE
            : e.code == KD_ERR_NOT_FOUND ? GRPC_STATUS_NOT_FOUND
                                         : GRPC_STATUS_INVALID_ARGUMENT;
    snprintf(msg, KD_SERVE_MSG_MAX, "%s", e.msg);
  }
  return v;
}

/* Lists the names of the features of `group` ("a, b, c") for messages. */
static void feature_names(const struct kd_arch *a, uint32_t group, char *buf, size_t cap) {
  size_t at = 0;
  buf[0] = 0;
  for (uint32_t i = 0; i < a->n_features && at + 1 < cap; i++)
    if (a->features[i].group == group)
      at += (size_t)snprintf(buf + at, cap - at, "%s%s", at ? ", " : "", a->features[i].name);
  if (!at) snprintf(buf, cap, "none");
}

static const char *group_name(uint32_t g) { return g == KD_GROUP_CONTEXT ? "context" : "candidates"; }

/* Checks one FeatureBatch against the model's features of `group` and fills cols[] for them.
 * rows: the batch's row count (already checked). Returns a gRPC code; msg names the column. */
static int check_batch(const struct kd_arch *a, uint32_t group, const Kdrank__V1__FeatureBatch *b,
                       uint32_t rows, struct kd_column *cols, char *msg) {
  const char *bn = group_name(group);
  uint8_t seen[KD_MAX_FEATURES] = {0};
  char names[512];
  size_t ncols = b ? b->n_columns : 0;
  for (size_t j = 0; j < ncols; j++) {
    const Kdrank__V1__Column *col = b->columns[j];
    const char *name = col->name ? col->name : "";
    int fi = kd_arch_find_feature(a, name);
    if (fi < 0) {
      feature_names(a, group, names, sizeof names);
      snprintf(msg, KD_SERVE_MSG_MAX, "%s.columns[%zu] \"%s\": unknown feature (expected %s features: %s)",
               bn, j, name, bn, names);
      return GRPC_STATUS_INVALID_ARGUMENT;
    }
    const struct kd_feature *f = &a->features[fi];
    if (f->group != group) {
      snprintf(msg, KD_SERVE_MSG_MAX, "%s.columns[%zu] \"%s\": a %s feature, expected in %s, found in %s",
               bn, j, name, f->group == KD_GROUP_CONTEXT ? "context" : "candidate",
               group_name(f->group), bn);
      return GRPC_STATUS_INVALID_ARGUMENT;
    }
    if (seen[fi]) {
      snprintf(msg, KD_SERVE_MSG_MAX, "%s.columns[%zu] \"%s\": duplicate column (expected each feature once)",
               bn, j, name);
      return GRPC_STATUS_INVALID_ARGUMENT;
    }
    seen[fi] = 1;
    struct kd_column *kc = &cols[fi];
    if (f->kind == KD_FEAT_DENSE) {
      uint64_t want = (uint64_t)rows * f->dim;
      if (col->n_ids) {
        snprintf(msg, KD_SERVE_MSG_MAX,
                 "%s.columns[%zu] \"%s\": dense feature (dim %u): expected %llu floats and no ids, found %zu ids",
                 bn, j, name, f->dim, (unsigned long long)want, col->n_ids);
        return GRPC_STATUS_INVALID_ARGUMENT;
      }
      if (col->n_floats != want) {
        snprintf(msg, KD_SERVE_MSG_MAX,
                 "%s.columns[%zu] \"%s\": dense feature: expected count x dim = %u x %u = %llu floats, found %zu",
                 bn, j, name, rows, f->dim, (unsigned long long)want, col->n_floats);
        return GRPC_STATUS_INVALID_ARGUMENT;
      }
      for (size_t k = 0; k < col->n_floats; k++)
        if (!isfinite(col->floats[k])) {
          snprintf(msg, KD_SERVE_MSG_MAX,
                   "%s.columns[%zu] \"%s\": floats[%zu] (row %zu, element %zu) is %s: dense features must be finite",
                   bn, j, name, k, k / f->dim, k % f->dim, isnan(col->floats[k]) ? "NaN" : "Inf");
          return GRPC_STATUS_INVALID_ARGUMENT;
        }
      kc->floats = col->floats;
      kc->n_floats = col->n_floats;
    } else {
      if (col->n_floats) {
        snprintf(msg, KD_SERVE_MSG_MAX,
                 "%s.columns[%zu] \"%s\": sparse feature: expected ids and no floats, found %zu floats",
                 bn, j, name, col->n_floats);
        return GRPC_STATUS_INVALID_ARGUMENT;
      }
      if (col->n_ids == 0 || col->n_ids % rows) {
        snprintf(msg, KD_SERVE_MSG_MAX,
                 "%s.columns[%zu] \"%s\": sparse feature: expected a positive multiple of count = %u ids "
                 "(count x k), found %zu",
                 bn, j, name, rows, col->n_ids);
        return GRPC_STATUS_INVALID_ARGUMENT;
      }
      kc->ids = col->ids;
      kc->n_ids = col->n_ids;
    }
  }
  for (uint32_t i = 0; i < a->n_features; i++)
    if (a->features[i].group == group && !seen[i]) {
      const struct kd_feature *f = &a->features[i];
      snprintf(msg, KD_SERVE_MSG_MAX, "%s: missing feature \"%s\" (%s, dim %u)", bn, f->name,
               f->kind == KD_FEAT_DENSE ? "dense" : "sparse", f->dim);
      return GRPC_STATUS_INVALID_ARGUMENT;
    }
  return GRPC_STATUS_OK;
}

/* Resolves the requested task names to indices (all served tasks when none). */
static int check_tasks(const struct kd_arch *a, char **names, size_t n, uint32_t *idx,
                       uint32_t *n_out, char *msg) {
  char served[512];
  size_t at = 0;
  served[0] = 0;
  for (uint32_t i = 0; i < a->n_tasks && at + 1 < sizeof served; i++)
    if (a->tasks[i].served)
      at += (size_t)snprintf(served + at, sizeof served - at, "%s%s", at ? ", " : "", a->tasks[i].name);
  if (n == 0) {
    *n_out = 0;
    for (uint32_t i = 0; i < a->n_tasks; i++)
      if (a->tasks[i].served) idx[(*n_out)++] = i;
    return GRPC_STATUS_OK;
  }
  if (n > a->n_tasks) {
    snprintf(msg, KD_SERVE_MSG_MAX, "tasks: expected at most %u distinct served tasks (%s), found %zu names",
             a->n_tasks, served, n);
    return GRPC_STATUS_INVALID_ARGUMENT;
  }
  for (size_t j = 0; j < n; j++) {
    int ti = kd_arch_find_task(a, names[j]);
    if (ti < 0 || !a->tasks[ti].served) {
      snprintf(msg, KD_SERVE_MSG_MAX, "tasks[%zu] \"%s\": %s (served tasks: %s)", j, names[j],
               ti < 0 ? "unknown task" : "not a served task", served);
      return GRPC_STATUS_INVALID_ARGUMENT;
    }
    for (size_t k = 0; k < j; k++)
      if (idx[k] == (uint32_t)ti) {
        snprintf(msg, KD_SERVE_MSG_MAX, "tasks[%zu] \"%s\": duplicate (expected each task once)", j, names[j]);
        return GRPC_STATUS_INVALID_ARGUMENT;
      }
    idx[j] = (uint32_t)ti;
  }
  *n_out = (uint32_t)n;
  return GRPC_STATUS_OK;
}

/* Sleeps ms milliseconds, waking early when the deadline passes (testing hook). */
static void test_delay(const struct kd_call *c, long long ms) {
  uint64_t end = kd_now_ns() + (uint64_t)ms * 1000000ull;
  while (kd_now_ns() < end && !deadline_passed(c)) {
    struct timespec ts = {0, 5 * 1000000L};
    nanosleep(&ts, NULL);
  }
}

int kd_handle_score(struct kd_worker *w, struct kd_call *c, grpc_byte_buffer **resp, char *msg) {
  struct kd_server *s = w->srv;
  const struct kd_serve_config *cfg = s->cfg;
  uint64_t t0 = kd_now_ns();
  grpc_byte_buffer_reader rd;
  int have_rd, code = GRPC_STATUS_OK;
  const uint8_t *data;
  size_t len;
  kd_version *v = NULL;
  *resp = NULL;

  int pr = payload_bytes(w, c->rpc.payload, &rd, &have_rd, &data, &len);
  Kdrank__V1__ScoreRequest *req = NULL;
  if (pr == 0) req = kdrank__v1__score_request__unpack(&w->arena.pb, len, data);
  if (have_rd) grpc_byte_buffer_reader_destroy(&rd);
  uint64_t t1 = kd_now_ns();
  if (!req) {
    int oom = pr == -1 || w->arena.failed;
    snprintf(msg, KD_SERVE_MSG_MAX,
             oom ? "request: %zu bytes decode to more than the server's %zu-byte decode limit"
                 : "request: %zu bytes are not a valid kdrank.v1.ScoreRequest",
             len, w->arena.cap);
    return oom ? GRPC_STATUS_RESOURCE_EXHAUSTED : GRPC_STATUS_INVALID_ARGUMENT;
  }
  const char *model = resolve_model(s, req->model, msg);
  if (!model) return GRPC_STATUS_INVALID_ARGUMENT;
  int64_t pin_v = 0;
  const char *pin_l = NULL;
  if (req->pin_case == KDRANK__V1__SCORE_REQUEST__PIN_VERSION) {
    if (req->version <= 0) {
      snprintf(msg, KD_SERVE_MSG_MAX, "version: expected a positive version number, found %lld",
               (long long)req->version);
      return GRPC_STATUS_INVALID_ARGUMENT;
    }
    pin_v = req->version;
  } else if (req->pin_case == KDRANK__V1__SCORE_REQUEST__PIN_VERSION_LABEL) {
    pin_l = req->version_label;
  }
  const char *label = "";
  v = acquire(s, model, req->routing_key, pin_v, pin_l, &label, &code, msg);
  if (!v) {
    int mi = kd_registry_find(s->reg, model);
    if (mi >= 0) c->series = kd_metrics_series(w->m, mi, 0);
    return code;
  }
  c->series = kd_metrics_series_l(w->m, (int32_t)kd_version_model_index(v), kd_version_number(v),
                                  kd_label_of(label));
  kd_metrics_observe(c->series, KD_H_QUEUE, t0 - c->t_dequeue);
  kd_metrics_observe(c->series, KD_H_DECODE, t1 - t0);

  const struct kd_arch *a = kd_version_arch(v);
  uint32_t ctx_count = req->context ? req->context->count : 0;
  uint32_t n = req->candidates ? req->candidates->count : 0;
  struct kd_column cols[KD_MAX_FEATURES];
  uint32_t tasks[KD_MAX_TASKS], n_out = 0;
  memset(cols, 0, sizeof cols);
  if (ctx_count != 1) {
    snprintf(msg, KD_SERVE_MSG_MAX, "context.count: expected 1, found %u", ctx_count);
    code = GRPC_STATUS_INVALID_ARGUMENT;
    goto done;
  }
  if (n == 0 || n > (uint64_t)cfg->max_candidates) {
    snprintf(msg, KD_SERVE_MSG_MAX, "candidates.count: expected 1..%lld, found %u",
             cfg->max_candidates, n);
    code = GRPC_STATUS_INVALID_ARGUMENT;
    goto done;
  }
  if ((code = check_batch(a, KD_GROUP_CONTEXT, req->context, 1, cols, msg)) != GRPC_STATUS_OK ||
      (code = check_batch(a, KD_GROUP_CANDIDATE, req->candidates, n, cols, msg)) != GRPC_STATUS_OK ||
      (code = check_tasks(a, req->tasks, req->n_tasks, tasks, &n_out, msg)) != GRPC_STATUS_OK)
    goto done;
  struct kd_input in = {.n_cand = n, .cols = cols};
  struct kd_err e = {0};
  if (kd_input_check(a, &in, &e) != KD_OK) { /* a guard: check_batch covers the same rules */
    snprintf(msg, KD_SERVE_MSG_MAX, "%s", e.msg);
    code = GRPC_STATUS_INVALID_ARGUMENT;
    goto done;
  }
  if (cfg->test_delay_ms > 0) test_delay(c, cfg->test_delay_ms);
  if (deadline_passed(c)) {
    snprintf(msg, KD_SERVE_MSG_MAX, "deadline expired before scoring (not scored)");
    code = GRPC_STATUS_DEADLINE_EXCEEDED;
    goto done;
  }
  uint64_t t2 = kd_now_ns();
  if (kd_score(kd_version_plan(v), kd_version_scratch(v, w->id), &in, tasks, n_out, w->out, &e) != KD_OK) {
    snprintf(msg, KD_SERVE_MSG_MAX, "scoring failed: %s", e.msg);
    code = e.code == KD_ERR_RANGE ? GRPC_STATUS_RESOURCE_EXHAUSTED : GRPC_STATUS_INTERNAL;
    goto done;
  }
  uint64_t t3 = kd_now_ns();
  kd_metrics_observe(c->series, KD_H_SCORE, t3 - t2);
  kd_m_add(&c->series->candidates, n);
  kd_metrics_scores(c->series, w->out, n, tasks, n_out);

  Kdrank__V1__ScoreResponse out = KDRANK__V1__SCORE_RESPONSE__INIT;
  char *tnames[KD_MAX_TASKS];
  for (uint32_t k = 0; k < n_out; k++) tnames[k] = (char *)a->tasks[tasks[k]].name;
  out.model = (char *)kd_version_model(v);
  out.version = kd_version_number(v);
  out.version_label = (char *)label;
  out.n_tasks = n_out;
  out.tasks = tnames;
  out.n_scores = (size_t)n * n_out;
  out.scores = w->out;
  size_t size;
  *resp = pack_reply(&out.base, (size_t)cfg->max_message_bytes, &size);
  if (!*resp) {
    snprintf(msg, KD_SERVE_MSG_MAX, "response: %zu bytes, over --max-message-bytes %lld", size,
             cfg->max_message_bytes);
    code = GRPC_STATUS_RESOURCE_EXHAUSTED;
    goto done;
  }
  kd_metrics_observe(c->series, KD_H_ENCODE, kd_now_ns() - t3);
done:
  kd_registry_release(v);
  return code;
}

/* "sigmoid" / "identity" / "expm1": how a task's served value relates to its logit. */
static const char *task_transform(const struct kd_task *t) {
  if (t->type == KD_TASK_BINARY) return "sigmoid";
  return t->xform == KD_XFORM_LOG1P ? "expm1" : "identity";
}

/* Formats a metadata value as text (provenance map values are strings). */
static char *meta_text(struct kd_arena *ar, const struct kd_meta *m) {
  char buf[64];
  switch (m->type) {
  case KD_META_STR: return (char *)m->v.s;
  case KD_META_I64: snprintf(buf, sizeof buf, "%lld", (long long)m->v.i); break;
  case KD_META_F32:
  case KD_META_F64: snprintf(buf, sizeof buf, "%.17g", m->v.f); break;
  case KD_META_BOOL: snprintf(buf, sizeof buf, "%s", m->v.u ? "true" : "false"); break;
  default: snprintf(buf, sizeof buf, "%llu", (unsigned long long)m->v.u); break;
  }
  char *s = kd_arena_alloc(ar, strlen(buf) + 1);
  if (s) memcpy(s, buf, strlen(buf) + 1);
  return s;
}

int kd_handle_metadata(struct kd_worker *w, struct kd_call *c, grpc_byte_buffer **resp, char *msg) {
  struct kd_server *s = w->srv;
  struct kd_arena *ar = &w->arena;
  grpc_byte_buffer_reader rd;
  int have_rd, code = GRPC_STATUS_OK;
  const uint8_t *data;
  size_t len;
  *resp = NULL;
  int pr = payload_bytes(w, c->rpc.payload, &rd, &have_rd, &data, &len);
  Kdrank__V1__GetModelMetadataRequest *req = NULL;
  if (pr == 0) req = kdrank__v1__get_model_metadata_request__unpack(&ar->pb, len, data);
  if (have_rd) grpc_byte_buffer_reader_destroy(&rd);
  if (!req) {
    snprintf(msg, KD_SERVE_MSG_MAX, "request: %zu bytes are not a valid kdrank.v1.GetModelMetadataRequest", len);
    return ar->failed ? GRPC_STATUS_RESOURCE_EXHAUSTED : GRPC_STATUS_INVALID_ARGUMENT;
  }
  const char *model = resolve_model(s, req->model, msg);
  if (!model) return GRPC_STATUS_INVALID_ARGUMENT;
  int64_t pin_v = req->pin_case == KDRANK__V1__GET_MODEL_METADATA_REQUEST__PIN_VERSION ? req->version : 0;
  const char *pin_l = req->pin_case == KDRANK__V1__GET_MODEL_METADATA_REQUEST__PIN_VERSION_LABEL
                          ? req->version_label : NULL;
  if (req->pin_case == KDRANK__V1__GET_MODEL_METADATA_REQUEST__PIN_VERSION && pin_v <= 0) {
    snprintf(msg, KD_SERVE_MSG_MAX, "version: expected a positive version number, found %lld", (long long)pin_v);
    return GRPC_STATUS_INVALID_ARGUMENT;
  }
  const char *label = "";
  kd_version *v = acquire(s, model, 0, pin_v, pin_l, &label, &code, msg);
  if (!v) return code;
  c->series = kd_metrics_series_l(w->m, (int32_t)kd_version_model_index(v), kd_version_number(v),
                                  kd_label_of(label));
  const struct kd_arch *a = kd_version_arch(v);

  Kdrank__V1__ModelMetadata out = KDRANK__V1__MODEL_METADATA__INIT;
  out.model = (char *)kd_version_model(v);
  out.version = kd_version_number(v);
  out.version_label = (char *)label;
  out.architecture = (char *)a->name;
  out.max_candidates = (uint32_t)s->cfg->max_candidates;
  Kdrank__V1__FeatureSpec *fs = kd_arena_alloc(ar, a->n_features * sizeof *fs + 1);
  Kdrank__V1__FeatureSpec **fp = kd_arena_alloc(ar, a->n_features * sizeof *fp + 1);
  Kdrank__V1__TaskSpec *ts = kd_arena_alloc(ar, a->n_tasks * sizeof *ts + 1);
  Kdrank__V1__TaskSpec **tp = kd_arena_alloc(ar, a->n_tasks * sizeof *tp + 1);
  struct kd_version_info vi[32];
  uint32_t nv = kd_registry_versions(s->reg, kd_version_model_index(v), vi, 32);
  Kdrank__V1__VersionInfo *vs = kd_arena_alloc(ar, nv * sizeof *vs + 1);
  Kdrank__V1__VersionInfo **vp = kd_arena_alloc(ar, nv * sizeof *vp + 1);
  uint32_t nmeta = kd_version_n_meta(v);
  Kdrank__V1__ModelMetadata__ProvenanceEntry *pe = kd_arena_alloc(ar, nmeta * sizeof *pe + 1);
  Kdrank__V1__ModelMetadata__ProvenanceEntry **pp = kd_arena_alloc(ar, nmeta * sizeof *pp + 1);
  if (!fs || !fp || !ts || !tp || !vs || !vp || !pe || !pp) {
    snprintf(msg, KD_SERVE_MSG_MAX, "metadata: over the server's decode/encode memory limit");
    code = GRPC_STATUS_RESOURCE_EXHAUSTED;
    goto done;
  }
  for (uint32_t i = 0; i < a->n_features; i++) {
    const struct kd_feature *f = &a->features[i];
    Kdrank__V1__FeatureSpec x = KDRANK__V1__FEATURE_SPEC__INIT;
    x.name = (char *)f->name;
    x.kind = f->kind == KD_FEAT_SPARSE ? KDRANK__V1__FEATURE_SPEC__KIND__SPARSE : KDRANK__V1__FEATURE_SPEC__KIND__DENSE;
    x.group = f->group == KD_GROUP_CANDIDATE ? KDRANK__V1__FEATURE_SPEC__GROUP__CANDIDATE
                                             : KDRANK__V1__FEATURE_SPEC__GROUP__CONTEXT;
    x.dim = f->dim;
    x.rows = f->rows;
    fs[i] = x;
    fp[i] = &fs[i];
  }
  for (uint32_t i = 0; i < a->n_tasks; i++) {
    const struct kd_task *t = &a->tasks[i];
    Kdrank__V1__TaskSpec x = KDRANK__V1__TASK_SPEC__INIT;
    x.name = (char *)t->name;
    x.type = t->type == KD_TASK_REGRESSION ? KDRANK__V1__TASK_SPEC__TYPE__REGRESSION : KDRANK__V1__TASK_SPEC__TYPE__BINARY;
    x.served = t->served != 0;
    x.transform = (char *)task_transform(t);
    ts[i] = x;
    tp[i] = &ts[i];
  }
  for (uint32_t i = 0; i < nv; i++) {
    Kdrank__V1__VersionInfo x = KDRANK__V1__VERSION_INFO__INIT;
    x.version = vi[i].version;
    x.state = vi[i].state;
    x.label = vi[i].label;
    x.error = vi[i].error;
    x.loaded_unix_ms = vi[i].loaded_unix_ms;
    x.checkpoint_crc = vi[i].checkpoint_crc;
    x.state_unix_ms = vi[i].state_unix_ms;
    x.loading_unix_ms = vi[i].loading_unix_ms;
    x.available_unix_ms = vi[i].available_unix_ms;
    x.failed_unix_ms = vi[i].failed_unix_ms;
    x.unloading_unix_ms = vi[i].unloading_unix_ms;
    vs[i] = x;
    vp[i] = &vs[i];
  }
  size_t np = 0;
  static const char prefix[] = "provenance.";
  for (uint32_t i = 0; i < nmeta; i++) {
    const struct kd_meta *m = kd_version_meta_at(v, i);
    if (!m || !m->key || strncmp(m->key, prefix, sizeof prefix - 1) != 0) continue;
    Kdrank__V1__ModelMetadata__ProvenanceEntry x = KDRANK__V1__MODEL_METADATA__PROVENANCE_ENTRY__INIT;
    x.key = (char *)m->key + sizeof prefix - 1;
    x.value = meta_text(ar, m);
    if (!x.value) continue;
    pe[np] = x;
    pp[np] = &pe[np];
    np++;
  }
  out.n_features = a->n_features;
  out.features = fp;
  out.n_tasks = a->n_tasks;
  out.tasks = tp;
  out.n_versions = nv;
  out.versions = vp;
  out.n_provenance = np;
  out.provenance = pp;
  size_t size;
  *resp = pack_reply(&out.base, (size_t)s->cfg->max_message_bytes, &size);
  if (!*resp) {
    snprintf(msg, KD_SERVE_MSG_MAX, "response: %zu bytes, over --max-message-bytes %lld", size,
             s->cfg->max_message_bytes);
    code = GRPC_STATUS_RESOURCE_EXHAUSTED;
  }
done:
  kd_registry_release(v);
  return code;
}

int kd_handle_check(struct kd_worker *w, struct kd_call *c, grpc_byte_buffer **resp, char *msg) {
  struct kd_server *s = w->srv;
  grpc_byte_buffer_reader rd;
  int have_rd;
  const uint8_t *data;
  size_t len;
  *resp = NULL;
  int pr = payload_bytes(w, c->rpc.payload, &rd, &have_rd, &data, &len);
  Grpc__Health__V1__HealthCheckRequest *req = NULL;
  if (pr == 0) req = grpc__health__v1__health_check_request__unpack(&w->arena.pb, len, data);
  if (have_rd) grpc_byte_buffer_reader_destroy(&rd);
  if (!req) {
    snprintf(msg, KD_SERVE_MSG_MAX, "request: %zu bytes are not a valid grpc.health.v1.HealthCheckRequest", len);
    return GRPC_STATUS_INVALID_ARGUMENT;
  }
  const char *svc = req->service ? req->service : "";
  int st = kd_health_status(s, svc);
  if (st == GRPC__HEALTH__V1__HEALTH_CHECK_RESPONSE__SERVING_STATUS__SERVICE_UNKNOWN) {
    snprintf(msg, KD_SERVE_MSG_MAX,
             "unknown service \"%s\" (expected \"\", \"kdrank.v1.Ranker\" or a model name)", svc);
    return GRPC_STATUS_NOT_FOUND;
  }
  Grpc__Health__V1__HealthCheckResponse out = GRPC__HEALTH__V1__HEALTH_CHECK_RESPONSE__INIT;
  out.status = (Grpc__Health__V1__HealthCheckResponse__ServingStatus)st;
  size_t size;
  *resp = pack_reply(&out.base, (size_t)s->cfg->max_message_bytes, &size);
  return GRPC_STATUS_OK;
}

int kd_health_status(struct kd_server *s, const char *svc) {
  int serving;
  uint32_t nm = kd_registry_n_models(s->reg);
  if (svc[0] == 0 || strcmp(svc, "kdrank.v1.Ranker") == 0) {
    /* The server: SERVING only while every model in the repository has an available version. */
    serving = nm > 0;
    for (uint32_t i = 0; i < nm; i++) serving = serving && kd_registry_available(s->reg, i);
  } else {
    int mi = kd_registry_find(s->reg, svc);
    if (mi < 0) return GRPC__HEALTH__V1__HEALTH_CHECK_RESPONSE__SERVING_STATUS__SERVICE_UNKNOWN;
    serving = kd_registry_available(s->reg, (uint32_t)mi);
  }
  if (atomic_load_explicit(&s->draining, memory_order_acquire)) serving = 0;
  return serving ? GRPC__HEALTH__V1__HEALTH_CHECK_RESPONSE__SERVING_STATUS__SERVING
                 : GRPC__HEALTH__V1__HEALTH_CHECK_RESPONSE__SERVING_STATUS__NOT_SERVING;
}

int kd_watch_decode(struct kd_worker *w, struct kd_call *c, char *msg) {
  grpc_byte_buffer_reader rd;
  int have_rd;
  const uint8_t *data;
  size_t len;
  int pr = payload_bytes(w, c->rpc.payload, &rd, &have_rd, &data, &len);
  Grpc__Health__V1__HealthCheckRequest *req = NULL;
  if (pr == 0) req = grpc__health__v1__health_check_request__unpack(&w->arena.pb, len, data);
  if (have_rd) grpc_byte_buffer_reader_destroy(&rd);
  if (!req) {
    snprintf(msg, KD_SERVE_MSG_MAX, "request: %zu bytes are not a valid grpc.health.v1.HealthCheckRequest", len);
    return GRPC_STATUS_INVALID_ARGUMENT;
  }
  const char *svc = req->service ? req->service : "";
  if (strlen(svc) >= sizeof c->watch_service) {
    snprintf(msg, KD_SERVE_MSG_MAX, "service: expected at most %zu bytes, found %zu",
             sizeof c->watch_service - 1, strlen(svc));
    return GRPC_STATUS_INVALID_ARGUMENT;
  }
  memcpy(c->watch_service, svc, strlen(svc) + 1);
  return GRPC_STATUS_OK;
}

grpc_byte_buffer *kd_health_message(int status) {
  Grpc__Health__V1__HealthCheckResponse out = GRPC__HEALTH__V1__HEALTH_CHECK_RESPONSE__INIT;
  out.status = (Grpc__Health__V1__HealthCheckResponse__ServingStatus)status;
  size_t size;
  return pack_reply(&out.base, 64, &size);
}
