/* pool.c - kdrank-load's request pool: asks the server for GetModelMetadata (one synchronous call
 * on its own channel) and serializes ScoreRequest bodies from it, with random feature values drawn
 * per FeatureSpec or replayed from a JSON-lines file. Routing keys are added per call (engine.c). */
#include "load.h"

#include <cjson/cJSON.h> /* cJSON: the project's JSON library (Debian libcjson) */
#include <grpc/byte_buffer.h>
#include <grpc/byte_buffer_reader.h>
#include <grpc/grpc.h>
#include <grpc/grpc_security.h>
#include <grpc/support/alloc.h>
#include <grpc/support/time.h>
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "kdrank.pb-c.h"

#define REPLAY_MAX_LINES 100000           /* requests in a replay file */
#define REPLAY_MAX_BYTES ((size_t)1 << 30) /* size of a replay file */

static uint64_t splitmix(uint64_t *s) {
  uint64_t z = (*s += 0x9E3779B97F4A7C15ull);
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return z ^ (z >> 31);
}
static double unif01(uint64_t *s) { return ((double)(splitmix(s) >> 11) + 0.5) / 9007199254740992.0; }

/* One GetModelMetadata call. Returns the unpacked message (free with ..._free_unpacked) or NULL. */
static Kdrank__V1__ModelMetadata *fetch_metadata(struct kd_load_req_params p, struct kd_load_err *e) {
  Kdrank__V1__GetModelMetadataRequest rq = KDRANK__V1__GET_MODEL_METADATA_REQUEST__INIT;
  rq.model = (char *)(p.model ? p.model : "");
  if (p.pin_version > 0) {
    rq.pin_case = KDRANK__V1__GET_MODEL_METADATA_REQUEST__PIN_VERSION;
    rq.version = p.pin_version;
  } else if (p.pin_label && *p.pin_label) {
    rq.pin_case = KDRANK__V1__GET_MODEL_METADATA_REQUEST__PIN_VERSION_LABEL;
    rq.version_label = (char *)p.pin_label;
  }
  Kdrank__V1__ModelMetadata *md = NULL;
  grpc_init();
  grpc_channel_credentials *cred = grpc_insecure_credentials_create();
  grpc_channel *ch = grpc_channel_create(p.target, cred, NULL);
  grpc_channel_credentials_release(cred);
  grpc_completion_queue *cq = grpc_completion_queue_create_for_pluck(NULL);
  gpr_timespec dl = gpr_time_add(gpr_now(GPR_CLOCK_MONOTONIC),
                                 gpr_time_from_nanos((int64_t)(p.timeout_s * 1e9), GPR_TIMESPAN));
  grpc_slice method = grpc_slice_from_static_string("/kdrank.v1.Ranker/GetModelMetadata");
  grpc_call *call = grpc_channel_create_call(ch, NULL, GRPC_PROPAGATE_DEFAULTS, cq, method, NULL, dl, NULL);
  size_t n = kdrank__v1__get_model_metadata_request__get_packed_size(&rq);
  grpc_slice body = grpc_slice_malloc(n);
  kdrank__v1__get_model_metadata_request__pack(&rq, GRPC_SLICE_START_PTR(body));
  grpc_byte_buffer *send = grpc_raw_byte_buffer_create(&body, 1), *recv = NULL;
  grpc_slice_unref(body);
  grpc_metadata_array mi, mt;
  grpc_metadata_array_init(&mi);
  grpc_metadata_array_init(&mt);
  grpc_status_code status = GRPC_STATUS_UNKNOWN;
  grpc_slice details = grpc_empty_slice();
  grpc_op ops[6];
  memset(ops, 0, sizeof(ops));
  ops[0].op = GRPC_OP_SEND_INITIAL_METADATA;
  ops[1].op = GRPC_OP_SEND_MESSAGE;
  ops[1].data.send_message.send_message = send;
  ops[2].op = GRPC_OP_SEND_CLOSE_FROM_CLIENT;
  ops[3].op = GRPC_OP_RECV_INITIAL_METADATA;
  ops[3].data.recv_initial_metadata.recv_initial_metadata = &mi;
  ops[4].op = GRPC_OP_RECV_MESSAGE;
  ops[4].data.recv_message.recv_message = &recv;
  ops[5].op = GRPC_OP_RECV_STATUS_ON_CLIENT;
  ops[5].data.recv_status_on_client.trailing_metadata = &mt;
  ops[5].data.recv_status_on_client.status = &status;
  ops[5].data.recv_status_on_client.status_details = &details;
  static int tag;
  if (grpc_call_start_batch(call, ops, 6, &tag, NULL) != GRPC_CALL_OK) {
    kd_load_errf(e, "%s: GetModelMetadata: the gRPC core refused the call", p.target);
  } else {
    grpc_event ev = grpc_completion_queue_pluck(cq, &tag, gpr_inf_future(GPR_CLOCK_MONOTONIC), NULL);
    if (ev.type != GRPC_OP_COMPLETE || !ev.success) {
      kd_load_errf(e, "%s: GetModelMetadata did not complete", p.target);
    } else if (status != GRPC_STATUS_OK) {
      char *d = grpc_slice_to_c_string(details);
      kd_load_errf(e, "%s: GetModelMetadata(model \"%s\") failed: %s (%s)", p.target, rq.model,
                   kd_load_status_name((int)status), d);
      gpr_free(d);
    } else {
      grpc_slice all = grpc_empty_slice();
      if (recv) {
        grpc_byte_buffer_reader rd;
        if (grpc_byte_buffer_reader_init(&rd, recv)) {
          all = grpc_byte_buffer_reader_readall(&rd);
          grpc_byte_buffer_reader_destroy(&rd);
        }
      }
      md = kdrank__v1__model_metadata__unpack(NULL, GRPC_SLICE_LENGTH(all), GRPC_SLICE_START_PTR(all));
      grpc_slice_unref(all);
      if (!md) kd_load_errf(e, "%s: GetModelMetadata: the reply is not a kdrank.v1.ModelMetadata", p.target);
    }
  }
  grpc_byte_buffer_destroy(send);
  if (recv) grpc_byte_buffer_destroy(recv);
  grpc_metadata_array_destroy(&mi);
  grpc_metadata_array_destroy(&mt);
  grpc_slice_unref(details);
  grpc_call_unref(call);
  grpc_completion_queue_shutdown(cq);
  while (grpc_completion_queue_pluck(cq, NULL, gpr_inf_future(GPR_CLOCK_MONOTONIC), NULL).type !=
         GRPC_QUEUE_SHUTDOWN) {}
  grpc_completion_queue_destroy(cq);
  grpc_channel_destroy(ch);
  grpc_shutdown();
  return md;
}

/* Column storage for one request being built (freed after packing). */
struct builder {
  Kdrank__V1__ScoreRequest rq;
  Kdrank__V1__FeatureBatch ctx, cand;
  Kdrank__V1__Column *cols;     /* [n_features] */
  Kdrank__V1__Column **ctx_ptr, **cand_ptr;
};

static int builder_init(struct builder *b, const Kdrank__V1__ModelMetadata *md, struct kd_load_req_params p) {
  memset(b, 0, sizeof(*b));
  kdrank__v1__score_request__init(&b->rq);
  kdrank__v1__feature_batch__init(&b->ctx);
  kdrank__v1__feature_batch__init(&b->cand);
  b->cols = calloc(md->n_features + 1, sizeof(*b->cols));
  b->ctx_ptr = calloc(md->n_features + 1, sizeof(*b->ctx_ptr));
  b->cand_ptr = calloc(md->n_features + 1, sizeof(*b->cand_ptr));
  if (!b->cols || !b->ctx_ptr || !b->cand_ptr) return -1;
  b->rq.model = (char *)(p.model ? p.model : "");
  if (p.pin_version > 0) {
    b->rq.pin_case = KDRANK__V1__SCORE_REQUEST__PIN_VERSION;
    b->rq.version = p.pin_version;
  } else if (p.pin_label && *p.pin_label) {
    b->rq.pin_case = KDRANK__V1__SCORE_REQUEST__PIN_VERSION_LABEL;
    b->rq.version_label = (char *)p.pin_label;
  }
  b->rq.context = &b->ctx;
  b->rq.candidates = &b->cand;
  b->ctx.columns = b->ctx_ptr;
  b->cand.columns = b->cand_ptr;
  b->ctx.count = 1;
  return 0;
}

static void builder_clear_values(struct builder *b, size_t n_features) {
  for (size_t i = 0; i < n_features; i++) {
    free(b->cols[i].floats);
    free(b->cols[i].ids);
    b->cols[i].floats = NULL;
    b->cols[i].ids = NULL;
    b->cols[i].n_floats = b->cols[i].n_ids = 0;
  }
  b->ctx.n_columns = b->cand.n_columns = 0;
}

static void builder_free(struct builder *b, size_t n_features) {
  if (b->cols) builder_clear_values(b, n_features);
  free(b->cols);
  free(b->ctx_ptr);
  free(b->cand_ptr);
}

static int builder_pack(struct builder *b, struct kd_load_body *out) {
  out->len = kdrank__v1__score_request__get_packed_size(&b->rq);
  out->data = malloc(out->len ? out->len : 1);
  if (!out->data) return -1;
  kdrank__v1__score_request__pack(&b->rq, out->data);
  out->n_cand = b->cand.count;
  return 0;
}

static uint32_t draw_cand(struct kd_load_req_params p, uint32_t maxc, uint64_t *rng) {
  double n = p.cand_a;
  if (p.cand_dist == KD_LOAD_CAND_UNIFORM) n = p.cand_a + floor(unif01(rng) * (p.cand_b - p.cand_a + 1));
  else if (p.cand_dist == KD_LOAD_CAND_EXP) {
    n = ceil(-log(unif01(rng)) * p.cand_a);
    double cap = p.cand_b > 0 ? p.cand_b : maxc ? maxc : 10000;
    if (n > cap) n = cap;
  }
  if (n < 1) n = 1;
  if (maxc && n > maxc) n = maxc;
  return (uint32_t)n;
}

/* Random values for every feature of the metadata: dense ~ N(0,1), sparse ids uniform. */
static int build_random(struct builder *b, const Kdrank__V1__ModelMetadata *md, uint32_t n_cand, uint64_t *rng) {
  b->cand.count = n_cand;
  for (size_t i = 0; i < md->n_features; i++) {
    const Kdrank__V1__FeatureSpec *f = md->features[i];
    Kdrank__V1__Column *c = &b->cols[i];
    kdrank__v1__column__init(c);
    c->name = f->name;
    size_t rows = f->group == KDRANK__V1__FEATURE_SPEC__GROUP__CANDIDATE ? n_cand : 1;
    if (f->kind == KDRANK__V1__FEATURE_SPEC__KIND__SPARSE) {
      c->n_ids = rows;
      c->ids = malloc(rows * sizeof(int64_t));
      if (!c->ids) return -1;
      uint64_t span = f->rows ? 2 * f->rows : 1000000;
      for (size_t k = 0; k < rows; k++) c->ids[k] = (int64_t)(splitmix(rng) % span);
    } else {
      c->n_floats = rows * f->dim;
      c->floats = malloc((c->n_floats ? c->n_floats : 1) * sizeof(float));
      if (!c->floats) return -1;
      for (size_t k = 0; k < c->n_floats; k++) /* Irwin-Hall(4): mean 0, var 1 */
        c->floats[k] = (float)((unif01(rng) + unif01(rng) + unif01(rng) + unif01(rng) - 2.0) * sqrt(3.0));
    }
    if (f->group == KDRANK__V1__FEATURE_SPEC__GROUP__CANDIDATE) b->cand_ptr[b->cand.n_columns++] = c;
    else b->ctx_ptr[b->ctx.n_columns++] = c;
  }
  return 0;
}

static const Kdrank__V1__FeatureSpec *find_feature(const Kdrank__V1__ModelMetadata *md, const char *name, size_t *idx) {
  for (size_t i = 0; i < md->n_features; i++)
    if (strcmp(md->features[i]->name, name) == 0) { *idx = i; return md->features[i]; }
  return NULL;
}

/* One replayed request: a proto3-JSON kdrank.v1.ScoreRequest (as `kdrank-ckpt request` writes):
 * {"context": {"count": 1, "columns": [{"name": .., "floats": [..]} | {"name": .., "ids": ["..", ..]}]},
 *  "candidates": {"count": N, "columns": [..]}}. Its model, routingKey and pin are ignored (they
 * come from the flags and the key space). int64 ids may be JSON strings (proto3) or numbers. */
static int build_replay(struct builder *b, const Kdrank__V1__ModelMetadata *md, const cJSON *j,
                        const char *path, size_t no, struct kd_load_err *e) {
  if (!cJSON_IsObject(j)) return kd_load_errf(e, "%s: request #%zu: expected a JSON object", path, no);
  static const char *groups[2] = {"context", "candidates"};
  for (int g = 0; g < 2; g++) {
    const cJSON *obj = cJSON_GetObjectItemCaseSensitive(j, groups[g]);
    if (!cJSON_IsObject(obj)) return kd_load_errf(e, "%s: request #%zu: field \"%s\": expected an object", path, no, groups[g]);
    const cJSON *cnt = cJSON_GetObjectItemCaseSensitive(obj, "count");
    double count = cJSON_IsNumber(cnt) ? cnt->valuedouble : -1;
    if (g == 0 && count != 1) return kd_load_errf(e, "%s: request #%zu: context.count: expected 1, found %g", path, no, count);
    if (g == 1 && !(count >= 1 && count <= 1e6 && count == floor(count)))
      return kd_load_errf(e, "%s: request #%zu: candidates.count: expected 1..1000000, found %g", path, no, count);
    if (g == 1) b->cand.count = (uint32_t)count;
    const cJSON *cols = cJSON_GetObjectItemCaseSensitive(obj, "columns"), *col;
    if (!cJSON_IsArray(cols)) return kd_load_errf(e, "%s: request #%zu: %s.columns: expected an array", path, no, groups[g]);
    cJSON_ArrayForEach(col, cols) {
      const cJSON *nm = cJSON_GetObjectItemCaseSensitive(col, "name");
      if (!cJSON_IsString(nm)) return kd_load_errf(e, "%s: request #%zu: %s.columns[]: expected a \"name\"", path, no, groups[g]);
      size_t fi;
      const Kdrank__V1__FeatureSpec *f = find_feature(md, nm->valuestring, &fi);
      if (!f) return kd_load_errf(e, "%s: request #%zu: %s.%s: no such feature in the model's metadata", path, no, groups[g], nm->valuestring);
      Kdrank__V1__Column *c = &b->cols[fi];
      if (c->floats || c->ids) return kd_load_errf(e, "%s: request #%zu: %s.%s: given twice", path, no, groups[g], nm->valuestring);
      kdrank__v1__column__init(c);
      c->name = f->name;
      int sparse = f->kind == KDRANK__V1__FEATURE_SPEC__KIND__SPARSE;
      const cJSON *vals = cJSON_GetObjectItemCaseSensitive(col, sparse ? "ids" : "floats"), *v;
      if (vals && !cJSON_IsArray(vals))
        return kd_load_errf(e, "%s: request #%zu: %s.%s.%s: expected an array", path, no, groups[g], f->name, sparse ? "ids" : "floats");
      size_t n = vals ? (size_t)cJSON_GetArraySize(vals) : 0, k = 0;
      if (sparse) c->ids = malloc((n ? n : 1) * sizeof(int64_t));
      else c->floats = malloc((n ? n : 1) * sizeof(float));
      if (!c->ids && !c->floats) return kd_load_errf(e, "out of memory");
      cJSON_ArrayForEach(v, vals) {
        if (sparse && cJSON_IsString(v)) {
          char *end;
          errno = 0;
          long long id = strtoll(v->valuestring, &end, 10);
          if (errno || end == v->valuestring || *end)
            return kd_load_errf(e, "%s: request #%zu: %s.%s.ids[%zu]: expected an int64, found \"%s\"", path, no, groups[g], f->name, k, v->valuestring);
          c->ids[k++] = id;
        } else if (cJSON_IsNumber(v)) {
          if (sparse) c->ids[k++] = (int64_t)v->valuedouble;
          else c->floats[k++] = (float)v->valuedouble;
        } else {
          return kd_load_errf(e, "%s: request #%zu: %s.%s[%zu]: expected a number", path, no, groups[g], f->name, k);
        }
      }
      if (sparse) c->n_ids = n; else c->n_floats = n;
      if (g) b->cand_ptr[b->cand.n_columns++] = c;
      else b->ctx_ptr[b->ctx.n_columns++] = c;
    }
  }
  return 0;
}

/* Reads a whole file (at most max bytes) into a NUL-terminated buffer. */
static char *read_file(const char *path, size_t max, size_t *len, struct kd_load_err *e) {
  FILE *f = fopen(path, "rb");
  if (!f) { kd_load_errf(e, "--replay %s: cannot open: %s", path, strerror(errno)); return NULL; }
  size_t cap = 1 << 16, n = 0;
  char *buf = malloc(cap + 1);
  while (buf) {
    size_t got = fread(buf + n, 1, cap - n, f);
    n += got;
    if (n < cap) break;
    if (cap >= max) { kd_load_errf(e, "--replay %s: larger than %zu bytes", path, max); free(buf); buf = NULL; break; }
    cap *= 2;
    char *nb = realloc(buf, cap + 1);
    if (!nb) { free(buf); buf = NULL; kd_load_errf(e, "out of memory"); }
    buf = nb;
  }
  if (buf && ferror(f)) { kd_load_errf(e, "--replay %s: read error", path); free(buf); buf = NULL; }
  fclose(f);
  if (buf) { buf[n] = 0; *len = n; }
  return buf;
}

int kd_load_pool_build(struct kd_load_req_params p, struct kd_load_pool *out, struct kd_load_err *e) {
  memset(out, 0, sizeof(*out));
  if (p.pool < 1 || p.pool > 100000) return kd_load_errf(e, "--pool: expected 1..100000, found %u", p.pool);
  if (!(p.cand_a >= 1) || (p.cand_dist == KD_LOAD_CAND_UNIFORM && !(p.cand_b >= p.cand_a)))
    return kd_load_errf(e, "--candidates: expected N, A:B (1 <= A <= B) or exp:MEAN, found %g..%g", p.cand_a, p.cand_b);
  if (p.timeout_s <= 0) p.timeout_s = 5;
  Kdrank__V1__ModelMetadata *md = fetch_metadata(p, e);
  if (!md) return -1;
  int rc = -1;
  struct builder b;
  char *text = NULL;
  if (builder_init(&b, md, p) != 0) { kd_load_errf(e, "out of memory"); goto fail; }
  snprintf(out->model, sizeof(out->model), "%s", md->model);
  snprintf(out->architecture, sizeof(out->architecture), "%s", md->architecture);
  out->version = md->version;
  out->n_features = (uint32_t)md->n_features;
  out->max_candidates = md->max_candidates;
  for (size_t i = 0; i < md->n_tasks; i++) out->n_served_tasks += md->tasks[i]->served ? 1 : 0;
  if (md->n_features == 0) { kd_load_errf(e, "%s: model \"%s\" declares no features", p.target, md->model); goto fail; }
  if (p.cand_dist == KD_LOAD_CAND_FIXED && md->max_candidates && p.cand_a > md->max_candidates) {
    kd_load_errf(e, "--candidates %g: the model serves at most %u candidates per request", p.cand_a, md->max_candidates);
    goto fail;
  }
  uint64_t rng = p.seed * 0x9E3779B97F4A7C15ull + 1;
  uint32_t cap = p.replay ? REPLAY_MAX_LINES : p.pool;
  out->bodies = calloc(cap, sizeof(*out->bodies));
  if (!out->bodies) { kd_load_errf(e, "out of memory"); goto fail; }
  if (p.replay) {
    size_t len = 0;
    text = read_file(p.replay, REPLAY_MAX_BYTES, &len, e);
    if (!text) goto fail;
    const char *at = text, *end = text + len;
    for (size_t no = 1;; no++) {
      at += strspn(at, " \t\r\n");
      if (at >= end) break;
      if (out->n == cap) { kd_load_errf(e, "%s: more than %u requests", p.replay, cap); goto fail; }
      const char *stop = NULL;
      cJSON *j = cJSON_ParseWithLengthOpts(at, (size_t)(end - at), &stop, 0);
      if (!j) {
        kd_load_errf(e, "%s: request #%zu (byte %zu): not valid JSON", p.replay, no, (size_t)((stop ? stop : at) - text));
        goto fail;
      }
      at = stop;
      builder_clear_values(&b, md->n_features);
      int brc = build_replay(&b, md, j, p.replay, no, e);
      cJSON_Delete(j);
      if (brc != 0) goto fail;
      if (builder_pack(&b, &out->bodies[out->n]) != 0) { kd_load_errf(e, "out of memory"); goto fail; }
      out->n++;
    }
    if (out->n == 0) { kd_load_errf(e, "%s: no requests in the file", p.replay); goto fail; }
  } else {
    for (uint32_t i = 0; i < p.pool; i++) {
      builder_clear_values(&b, md->n_features);
      if (build_random(&b, md, draw_cand(p, md->max_candidates, &rng), &rng) != 0 ||
          builder_pack(&b, &out->bodies[out->n]) != 0) {
        kd_load_errf(e, "out of memory");
        goto fail;
      }
      out->n++;
    }
  }
  double sc = 0, sb = 0;
  for (uint32_t i = 0; i < out->n; i++) { sc += out->bodies[i].n_cand; sb += (double)out->bodies[i].len; }
  out->mean_cand = sc / out->n;
  out->mean_bytes = sb / out->n;
  rc = 0;
fail:
  free(text);
  builder_free(&b, md->n_features);
  kdrank__v1__model_metadata__free_unpacked(md, NULL);
  if (rc != 0) kd_load_pool_free(out);
  return rc;
}

void kd_load_pool_free(struct kd_load_pool *pool) {
  for (uint32_t i = 0; pool->bodies && i < pool->n; i++) free(pool->bodies[i].data);
  free(pool->bodies);
  memset(pool, 0, sizeof(*pool));
}
