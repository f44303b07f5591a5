/* ckpt_request.c - ScoreRequest in the proto3 JSON mapping, for kdrank-ckpt score/request.
 * cJSON does the JSON; this file applies the proto3 rules (field name forms, 64-bit integers as
 * strings, float specials) and maps columns to the model's features with clear errors. */
#include <errno.h>
#include <inttypes.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include <cjson/cJSON.h>

#include "ckpt_request.h"

void kd_json_float(FILE *out, float v) {
  if (isnan(v)) fputs("\"NaN\"", out);
  else if (isinf(v)) fputs(v > 0 ? "\"Infinity\"" : "\"-Infinity\"", out);
  else fprintf(out, "%.9g", (double)v);
}

void kd_req_free(struct kd_req *r) {
  struct kd_req_batch *bs[2] = {&r->ctx, &r->cand};
  for (int b = 0; b < 2; b++) {
    for (uint32_t i = 0; i < bs[b]->n_cols; i++) {
      free(bs[b]->cols[i].name);
      free(bs[b]->cols[i].floats);
      free(bs[b]->cols[i].ids);
    }
    free(bs[b]->cols);
  }
  for (uint32_t i = 0; i < r->n_tasks; i++) free(r->tasks[i]);
  free(r->tasks);
  free(r->model);
  memset(r, 0, sizeof *r);
}

/* A field by its lowerCamel or original name; both given is an error. NULL/JSON null: absent. */
static int field(const cJSON *obj, const char *camel, const char *snake, const char *where, const cJSON **out,
                 struct kd_err *e) {
  const cJSON *a = cJSON_GetObjectItemCaseSensitive(obj, camel);
  const cJSON *b = snake ? cJSON_GetObjectItemCaseSensitive(obj, snake) : NULL;
  if (a && b)
    return kd_err_set(e, KD_ERR_INVALID, "%s: field given twice, as \"%s\" and \"%s\"", where, camel, snake);
  *out = a ? a : b;
  if (*out && cJSON_IsNull(*out)) *out = NULL;
  return KD_OK;
}

/* Rejects members not in names[] (both spellings listed) and duplicate members. */
static int known_fields(const cJSON *obj, const char *where, const char *const *names, struct kd_err *e) {
  if (!cJSON_IsObject(obj)) return kd_err_set(e, KD_ERR_INVALID, "%s: expected a JSON object", where);
  for (const cJSON *c = obj->child; c; c = c->next) {
    int ok = 0;
    for (const char *const *n = names; *n; n++) ok |= !strcmp(c->string, *n);
    if (!ok) return kd_err_set(e, KD_ERR_INVALID, "%s: unknown field \"%s\"", where, c->string);
    for (const cJSON *d = c->next; d; d = d->next)
      if (!strcmp(c->string, d->string))
        return kd_err_set(e, KD_ERR_INVALID, "%s: field \"%s\" given twice", where, c->string);
  }
  return KD_OK;
}

/* Integers: a JSON number (integral, exact: |v| <= 2^53) or a decimal string (full range). */
static int get_int(const cJSON *v, int is_signed, int64_t min, uint64_t max, const char *where, uint64_t *out,
                   struct kd_err *e) {
  if (cJSON_IsNumber(v)) {
    double d = v->valuedouble;
    if (d != floor(d) || fabs(d) > 9007199254740992.0)
      return kd_err_set(e, KD_ERR_INVALID, "%s: expected an integer (as a string beyond 2^53), found %.17g", where, d);
    if (d < (double)min || d > (double)max)
      return kd_err_set(e, KD_ERR_INVALID, "%s: expected %" PRId64 "..%" PRIu64 ", found %.17g", where, min, max, d);
    if (is_signed) *out = (uint64_t)(int64_t)d;
    else *out = (uint64_t)d;
    return KD_OK;
  }
  if (cJSON_IsString(v)) {
    const char *s = v->valuestring;
    char *end;
    errno = 0;
    int neg = s[0] == '-';
    if (!s[0] || !((s[0] >= '0' && s[0] <= '9') || (neg && s[1] >= '0' && s[1] <= '9')))
      return kd_err_set(e, KD_ERR_INVALID, "%s: expected an integer, found \"%s\"", where, s);
    if (is_signed) {
      long long x = strtoll(s, &end, 10);
      if (errno || *end || x < min || (x > 0 && (uint64_t)x > max))
        return kd_err_set(e, KD_ERR_INVALID, "%s: expected an integer in %" PRId64 "..%" PRIu64 ", found \"%s\"", where, min, max, s);
      *out = (uint64_t)(int64_t)x;
    } else {
      if (neg) return kd_err_set(e, KD_ERR_INVALID, "%s: expected an unsigned integer, found \"%s\"", where, s);
      unsigned long long x = strtoull(s, &end, 10);
      if (errno || *end || x > max)
        return kd_err_set(e, KD_ERR_INVALID, "%s: expected an integer in 0..%" PRIu64 ", found \"%s\"", where, max, s);
      *out = x;
    }
    return KD_OK;
  }
  return kd_err_set(e, KD_ERR_INVALID, "%s: expected an integer (number or string)", where);
}

/* Floats: a number within float range, a numeric string, or "NaN"/"Infinity"/"-Infinity". */
static int get_float(const cJSON *v, const char *where, float *out, struct kd_err *e) {
  double d;
  if (cJSON_IsNumber(v)) {
    d = v->valuedouble;
  } else if (cJSON_IsString(v)) {
    const char *s = v->valuestring;
    if (!strcmp(s, "NaN")) { *out = NAN; return KD_OK; }
    if (!strcmp(s, "Infinity")) { *out = INFINITY; return KD_OK; }
    if (!strcmp(s, "-Infinity")) { *out = -INFINITY; return KD_OK; }
    char *end;
    errno = 0;
    d = strtod(s, &end);
    if (!*s || *end || errno || isnan(d) || isinf(d) || strchr(s, 'x') || strchr(s, 'X') || strchr(s, 'n') || strchr(s, 'N'))
      return kd_err_set(e, KD_ERR_INVALID, "%s: expected a float, found \"%s\"", where, s);
  } else {
    return kd_err_set(e, KD_ERR_INVALID, "%s: expected a float (number or string)", where);
  }
  if (fabs(d) > 3.4028234663852886e38)
    return kd_err_set(e, KD_ERR_INVALID, "%s: expected a value within float range, found %.17g", where, d);
  *out = (float)d;
  return KD_OK;
}

static int parse_column(const cJSON *o, const char *where, struct kd_req_col *c, struct kd_err *e) {
  static const char *const names[] = {"name", "floats", "ids", NULL};
  char w[160];
  const cJSON *v;
  int rc;
  if ((rc = known_fields(o, where, names, e))) return rc;
  if ((rc = field(o, "name", NULL, where, &v, e))) return rc;
  if (!v || !cJSON_IsString(v) || !v->valuestring[0])
    return kd_err_set(e, KD_ERR_INVALID, "%s.name: expected a non-empty string", where);
  c->name = strdup(v->valuestring);
  if (!c->name) return kd_err_set(e, KD_ERR_NOMEM, "out of memory");
  snprintf(w, sizeof w, "column '%s'", c->name);
  if ((rc = field(o, "floats", NULL, where, &v, e))) return rc;
  if (v) {
    if (!cJSON_IsArray(v)) return kd_err_set(e, KD_ERR_INVALID, "%s.floats: expected an array", w);
    size_t n = (size_t)cJSON_GetArraySize(v), i = 0;
    c->floats = malloc((n ? n : 1) * sizeof *c->floats);
    if (!c->floats) return kd_err_set(e, KD_ERR_NOMEM, "out of memory");
    for (const cJSON *x = v->child; x; x = x->next, i++) {
      char wi[200];
      snprintf(wi, sizeof wi, "%s.floats[%zu]", w, i);
      if ((rc = get_float(x, wi, &c->floats[i], e))) return rc;
    }
    c->n_floats = n;
  }
  if ((rc = field(o, "ids", NULL, where, &v, e))) return rc;
  if (v) {
    if (!cJSON_IsArray(v)) return kd_err_set(e, KD_ERR_INVALID, "%s.ids: expected an array", w);
    size_t n = (size_t)cJSON_GetArraySize(v), i = 0;
    c->ids = malloc((n ? n : 1) * sizeof *c->ids);
    if (!c->ids) return kd_err_set(e, KD_ERR_NOMEM, "out of memory");
    for (const cJSON *x = v->child; x; x = x->next, i++) {
      char wi[200];
      uint64_t u;
      snprintf(wi, sizeof wi, "%s.ids[%zu]", w, i);
      if ((rc = get_int(x, 1, INT64_MIN, INT64_MAX, wi, &u, e))) return rc;
      c->ids[i] = (int64_t)u;
    }
    c->n_ids = n;
  }
  return KD_OK;
}

static int parse_batch(const cJSON *o, const char *where, struct kd_req_batch *b, struct kd_err *e) {
  static const char *const names[] = {"count", "columns", NULL};
  char w[160];
  const cJSON *v;
  int rc;
  if ((rc = known_fields(o, where, names, e))) return rc;
  if ((rc = field(o, "count", NULL, where, &v, e))) return rc;
  if (v) {
    uint64_t u;
    snprintf(w, sizeof w, "%s.count", where);
    if ((rc = get_int(v, 0, 0, UINT32_MAX, w, &u, e))) return rc;
    b->count = (uint32_t)u;
  }
  if ((rc = field(o, "columns", NULL, where, &v, e))) return rc;
  if (v) {
    if (!cJSON_IsArray(v)) return kd_err_set(e, KD_ERR_INVALID, "%s.columns: expected an array", where);
    uint32_t n = (uint32_t)cJSON_GetArraySize(v), i = 0;
    b->cols = calloc(n ? n : 1, sizeof *b->cols);
    if (!b->cols) return kd_err_set(e, KD_ERR_NOMEM, "out of memory");
    for (const cJSON *x = v->child; x; x = x->next, i++) {
      b->n_cols = i + 1;
      snprintf(w, sizeof w, "%s.columns[%u]", where, i);
      if ((rc = parse_column(x, w, &b->cols[i], e))) return rc;
    }
  }
  return KD_OK;
}

int kd_req_parse(const char *json, size_t len, const char *src, struct kd_req *r, struct kd_err *e) {
  static const char *const names[] = {"model", "routingKey", "routing_key", "version", "versionLabel",
                                      "version_label", "context", "candidates", "tasks", NULL};
  memset(r, 0, sizeof *r);
  cJSON *root = cJSON_ParseWithLength(json, len);
  if (!root) {
    const char *at = cJSON_GetErrorPtr();
    size_t off = at && at >= json && at <= json + len ? (size_t)(at - json) : 0;
    return kd_err_set(e, KD_ERR_INVALID, "%s: not valid JSON (error near byte %zu)", src, off);
  }
  const cJSON *v;
  char w[256];
  int rc;
  snprintf(w, sizeof w, "%s: request", src);
  if ((rc = known_fields(root, w, names, e))) goto fail;
  if ((rc = field(root, "model", NULL, w, &v, e))) goto fail;
  if (v && !cJSON_IsString(v)) { rc = kd_err_set(e, KD_ERR_INVALID, "%s.model: expected a string", w); goto fail; }
  r->model = strdup(v ? v->valuestring : "");
  if (!r->model) { rc = kd_err_set(e, KD_ERR_NOMEM, "out of memory"); goto fail; }
  if ((rc = field(root, "routingKey", "routing_key", w, &v, e))) goto fail;
  if (v) {
    char wk[300];
    snprintf(wk, sizeof wk, "%s.routingKey", w);
    if ((rc = get_int(v, 0, 0, UINT64_MAX, wk, &r->routing_key, e))) goto fail;
  }
  if ((rc = field(root, "version", NULL, w, &v, e))) goto fail;
  const cJSON *vl = NULL;
  if ((rc = field(root, "versionLabel", "version_label", w, &vl, e))) goto fail;
  if (v && vl) { rc = kd_err_set(e, KD_ERR_INVALID, "%s: version and versionLabel are one oneof: give at most one", w); goto fail; }
  if (v) {
    uint64_t u;
    char wk[300];
    snprintf(wk, sizeof wk, "%s.version", w);
    if ((rc = get_int(v, 1, INT64_MIN, INT64_MAX, wk, &u, e))) goto fail;
  }
  if (vl && !cJSON_IsString(vl)) { rc = kd_err_set(e, KD_ERR_INVALID, "%s.versionLabel: expected a string", w); goto fail; }
  if ((rc = field(root, "context", NULL, w, &v, e))) goto fail;
  if (v && (rc = parse_batch(v, "context", &r->ctx, e))) goto fail;
  if ((rc = field(root, "candidates", NULL, w, &v, e))) goto fail;
  if (v && (rc = parse_batch(v, "candidates", &r->cand, e))) goto fail;
  if ((rc = field(root, "tasks", NULL, w, &v, e))) goto fail;
  if (v) {
    if (!cJSON_IsArray(v)) { rc = kd_err_set(e, KD_ERR_INVALID, "%s.tasks: expected an array of strings", w); goto fail; }
    uint32_t n = (uint32_t)cJSON_GetArraySize(v), i = 0;
    r->tasks = calloc(n ? n : 1, sizeof *r->tasks);
    if (!r->tasks) { rc = kd_err_set(e, KD_ERR_NOMEM, "out of memory"); goto fail; }
    for (const cJSON *x = v->child; x; x = x->next, i++) {
      if (!cJSON_IsString(x)) { rc = kd_err_set(e, KD_ERR_INVALID, "%s.tasks[%u]: expected a string", w, i); goto fail; }
      r->tasks[i] = strdup(x->valuestring);
      if (!r->tasks[i]) { rc = kd_err_set(e, KD_ERR_NOMEM, "out of memory"); goto fail; }
      r->n_tasks = i + 1;
    }
  }
  cJSON_Delete(root);
  return KD_OK;
fail:
  cJSON_Delete(root);
  kd_req_free(r);
  return rc;
}

int kd_req_bind(const struct kd_req *r, const struct kd_arch *a, struct kd_column *cols, struct kd_err *e) {
  const struct kd_req_batch *bs[2] = {&r->ctx, &r->cand};
  static const char *gname[2] = {"context", "candidates"};
  memset(cols, 0, a->n_features * sizeof *cols);
  if (r->ctx.count != 1)
    return kd_err_set(e, KD_ERR_INVALID, "context.count: expected 1, found %u", r->ctx.count);
  unsigned char seen[KD_MAX_FEATURES] = {0};
  for (uint32_t g = 0; g < 2; g++) {
    for (uint32_t i = 0; i < bs[g]->n_cols; i++) {
      const struct kd_req_col *c = &bs[g]->cols[i];
      int f = kd_arch_find_feature(a, c->name);
      if (f < 0)
        return kd_err_set(e, KD_ERR_NOT_FOUND, "%s column '%s': expected a feature of model %s, found no such feature",
                          gname[g], c->name, a->name);
      if (a->features[f].group != g)
        return kd_err_set(e, KD_ERR_INVALID, "%s column '%s': expected under %s (it is a %s feature)", gname[g], c->name,
                          gname[a->features[f].group], a->features[f].group == KD_GROUP_CONTEXT ? "context" : "candidate");
      if (seen[f])
        return kd_err_set(e, KD_ERR_INVALID, "%s column '%s': expected once, found twice", gname[g], c->name);
      seen[f] = 1;
      cols[f].floats = c->floats;
      cols[f].n_floats = c->n_floats;
      cols[f].ids = c->ids;
      cols[f].n_ids = c->n_ids;
    }
  }
  for (uint32_t f = 0; f < a->n_features; f++)
    if (!seen[f]) {
      const struct kd_feature *ft = &a->features[f];
      return kd_err_set(e, KD_ERR_INVALID, "%s: column for feature '%s' (%s, dim %u): expected, found none",
                        gname[ft->group], ft->name, ft->kind == KD_FEAT_SPARSE ? "sparse" : "dense", ft->dim);
    }
  return KD_OK;
}

static uint64_t rng_next(uint64_t *s) {
  uint64_t z = (*s += 0x9E3779B97F4A7C15ull);
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return z ^ (z >> 31);
}

static void write_batch(FILE *out, const struct kd_arch *a, uint32_t group, uint32_t rows, uint32_t k, uint64_t *rng) {
  fprintf(out, "{\"count\":%u,\"columns\":[", rows);
  int first = 1;
  for (uint32_t f = 0; f < a->n_features; f++) {
    const struct kd_feature *ft = &a->features[f];
    if (ft->group != group) continue;
    fprintf(out, "%s\n  {\"name\":\"%s\",", first ? "" : ",", ft->name); /* names are [A-Za-z0-9_-] */
    first = 0;
    if (ft->kind == KD_FEAT_DENSE) {
      fputs("\"floats\":[", out);
      for (uint64_t i = 0; i < (uint64_t)rows * ft->dim; i++) {
        if (i) fputc(',', out);
        float v = (float)((double)(rng_next(rng) >> 11) * 0x1.0p-53 * 2.0 - 1.0);
        kd_json_float(out, v);
      }
    } else {
      fputs("\"ids\":[", out);
      for (uint64_t i = 0; i < (uint64_t)rows * k; i++)
        fprintf(out, "%s\"%" PRId64 "\"", i ? "," : "", (int64_t)rng_next(rng));
    }
    fputs("]}", out);
  }
  fputs("]}", out);
}

int kd_req_write_random(FILE *out, const struct kd_arch *a, const char *model, uint32_t n_cand, uint32_t k,
                        uint64_t seed, struct kd_err *e) {
  if (n_cand == 0 || k == 0) return kd_err_set(e, KD_ERR_INVALID, "request: candidates and k expected >= 1, found %u and %u", n_cand, k);
  cJSON *s = cJSON_CreateString(model ? model : "");
  char *ms = s ? cJSON_PrintUnformatted(s) : NULL; /* escapes the model name */
  cJSON_Delete(s);
  if (!ms) return kd_err_set(e, KD_ERR_NOMEM, "out of memory");
  uint64_t rng = seed;
  fprintf(out, "{\"model\":%s,\"routingKey\":\"%" PRIu64 "\",\n\"context\":", ms, rng_next(&rng));
  free(ms);
  write_batch(out, a, KD_GROUP_CONTEXT, 1, k, &rng);
  fputs(",\n\"candidates\":", out);
  write_batch(out, a, KD_GROUP_CANDIDATE, n_cand, k, &rng);
  fputs(",\n\"tasks\":[]}\n", out);
  if (ferror(out)) return kd_err_set(e, KD_ERR_IO, "request: write error");
  return KD_OK;
}
