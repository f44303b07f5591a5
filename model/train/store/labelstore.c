/* labelstore.c - the backend-independent half of the label store: URI dispatch, manifest and
 * argument checks, write buffering, the content digest, decoding and the coverage join. */
#include "labelstore_int.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

/* ---- small helpers ------------------------------------------------------------------------ */

int kd_ls_copy(char *dst, size_t cap, const char *src) {
  size_t n = strlen(src);
  if (n >= cap) {
    memcpy(dst, src, cap - 1);
    dst[cap - 1] = 0;
    return 1;
  }
  memcpy(dst, src, n + 1);
  return 0;
}

const char *kd_ls_state_name(uint32_t state) {
  return state == KD_LABEL_COMPLETE ? "COMPLETE" : state == KD_LABEL_WRITING ? "WRITING" : "?";
}

uint32_t kd_ls_state_parse(const char *s) {
  if (s && strcmp(s, "COMPLETE") == 0) return KD_LABEL_COMPLETE;
  if (s && strcmp(s, "WRITING") == 0) return KD_LABEL_WRITING;
  return 0;
}

uint32_t kd_ls_version_hash(const char *version) {
  uint32_t h = 2166136261u;
  for (const unsigned char *p = (const unsigned char *)version; *p; p++) h = (h ^ *p) * 16777619u;
  return h;
}

void kd_ls_writer_tag(char *out, size_t cap) {
  char host[128] = "?";
  if (gethostname(host, sizeof host - 1) != 0) strcpy(host, "?");
  host[sizeof host - 1] = 0;
  snprintf(out, cap, "%s:%ld", host, (long)getpid());
}

int kd_ls_tasks_join(const struct kd_label_manifest *m, char *out, size_t cap) {
  size_t off = 0;
  for (uint32_t k = 0; k < m->n_tasks; k++) {
    int n = snprintf(out + off, cap - off, "%s%s", k ? "," : "", m->tasks[k]);
    if (n < 0 || (size_t)n >= cap - off) return KD_ERR_RANGE;
    off += (size_t)n;
  }
  return KD_OK;
}

int kd_ls_tasks_split(const char *s, struct kd_label_manifest *m, const char *display, struct kd_err *e) {
  uint32_t n = 0;
  const char *p = s;
  while (*p) {
    const char *c = strchr(p, ',');
    size_t len = c ? (size_t)(c - p) : strlen(p);
    if (n >= KD_MAX_TASKS || len == 0 || len >= KD_NAME_MAX)
      return kd_err_set(e, KD_ERR_CORRUPT, "%s: version '%s': stored task list '%.200s' is malformed "
                        "(expected 1..%d comma-separated names of 1..%d chars)",
                        display, m->version, s, KD_MAX_TASKS, KD_NAME_MAX - 1);
    memcpy(m->tasks[n], p, len);
    m->tasks[n][len] = 0;
    n++;
    p += len;
    if (*p == ',') p++;
  }
  if (n == 0) return kd_err_set(e, KD_ERR_CORRUPT, "%s: version '%s': stored task list is empty", display, m->version);
  m->n_tasks = n;
  return KD_OK;
}

/* The digest: sum over rows (mod 2^64) of a mix of the example id and each logit's bits, so it
 * does not depend on the order rows were put or read. */
int kd_ls_check_schema(const kd_labelstore *s, int ver, struct kd_err *e) {
  if (ver <= 0)
    return kd_err_set(e, KD_ERR_INVALID, "label store %s: no schema_version in kd_label_meta (not a kdrank label store)%s",
                      s->display, s->p.read_only ? "; opened read-only, so nothing was created" : "");
  if (ver != KD_LS_SCHEMA_VERSION)
    return kd_err_set(e, KD_ERR_UNSUPPORTED, "label store %s: schema version %d, this build reads version %d",
                      s->display, ver, KD_LS_SCHEMA_VERSION);
  return KD_OK;
}

static uint64_t mix64(uint64_t z) {
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return z ^ (z >> 31);
}

static uint64_t row_hash(int64_t id, const float *logits, uint32_t n_tasks) {
  uint64_t h = mix64((uint64_t)id + 0x9E3779B97F4A7C15ull);
  for (uint32_t k = 0; k < n_tasks; k++) {
    uint32_t bits;
    memcpy(&bits, &logits[k], 4);
    h = mix64(h ^ (((uint64_t)bits << 8) | k));
  }
  return h;
}

/* Logits are stored little-endian; on a little-endian host encoding is a copy. */
static void logits_to_le(float *dst, const float *src, uint32_t n) {
#if __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__
  memcpy(dst, src, (size_t)n * sizeof(float));
#else
  for (uint32_t k = 0; k < n; k++) {
    uint32_t b;
    memcpy(&b, &src[k], 4);
    b = __builtin_bswap32(b);
    memcpy(&dst[k], &b, 4);
  }
#endif
}

static void logits_from_le(float *dst, const unsigned char *src, uint32_t n) {
#if __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__
  memcpy(dst, src, (size_t)n * sizeof(float));
#else
  for (uint32_t k = 0; k < n; k++) {
    uint32_t b;
    memcpy(&b, src + 4 * k, 4);
    b = __builtin_bswap32(b);
    memcpy(&dst[k], &b, 4);
  }
#endif
}

/* ---- checks ------------------------------------------------------------------------------- */

int kd_labelstore_version_check(const char *version, struct kd_err *e) {
  if (!version || !*version) return kd_err_set(e, KD_ERR_INVALID, "label version: empty, expected 1..%d characters",
                                               KD_LABEL_VERSION_MAX - 1);
  size_t n = strlen(version);
  if (n >= KD_LABEL_VERSION_MAX)
    return kd_err_set(e, KD_ERR_INVALID, "label version '%.40s...': %zu characters, expected at most %d", version, n,
                      KD_LABEL_VERSION_MAX - 1);
  for (size_t i = 0; i < n; i++) {
    unsigned char c = (unsigned char)version[i];
    int alnum = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9');
    if (!alnum && (i == 0 || !strchr("._:+-", c)))
      return kd_err_set(e, KD_ERR_INVALID, "label version '%s': character %zu (0x%02x) is not allowed "
                        "(expected [A-Za-z0-9._:+-], starting with a letter or digit)", version, i + 1, c);
  }
  return KD_OK;
}

int kd_labelstore_pin_parse(const char *pin, char *store, size_t store_cap, char *version, struct kd_err *e) {
  const char *at = pin ? strrchr(pin, '@') : NULL;
  if (!at || at == pin || !at[1])
    return kd_err_set(e, KD_ERR_INVALID, "label pin '%.200s': expected STORE@VERSION (e.g. labels.db@teacher-v3)",
                      pin ? pin : "(null)");
  size_t n = (size_t)(at - pin);
  if (n >= store_cap)
    return kd_err_set(e, KD_ERR_INVALID, "label pin: store URI is %zu characters, at most %zu fit", n,
                      store_cap ? store_cap - 1 : 0);
  int rc = kd_labelstore_version_check(at + 1, e);
  if (rc) return rc;
  memcpy(store, pin, n);
  store[n] = 0;
  kd_ls_copy(version, KD_LABEL_VERSION_MAX, at + 1);
  return KD_OK;
}

static int task_name_ok(const char *t) {
  size_t n = strnlen(t, KD_NAME_MAX);
  if (n == 0 || n >= KD_NAME_MAX) return 0;
  for (size_t i = 0; i < n; i++) {
    unsigned char c = (unsigned char)t[i];
    if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '_' || c == '.' || c == '-'))
      return 0;
  }
  return 1;
}

static int manifest_check(const struct kd_label_manifest *m, struct kd_err *e) {
  if (!m) return kd_err_set(e, KD_ERR_INVALID, "label manifest: NULL");
  int rc = kd_labelstore_version_check(m->version, e);
  if (rc) return rc;
  if (strnlen(m->teacher, KD_LABEL_TEACHER_MAX) >= KD_LABEL_TEACHER_MAX)
    return kd_err_set(e, KD_ERR_INVALID, "label version '%s': teacher is not NUL-terminated within %d bytes",
                      m->version, KD_LABEL_TEACHER_MAX);
  size_t fl = strnlen(m->data_fingerprint, KD_LABEL_FINGERPRINT_MAX);
  if (fl == 0 || fl >= KD_LABEL_FINGERPRINT_MAX)
    return kd_err_set(e, KD_ERR_INVALID, "label version '%s': data_fingerprint must be 1..%d characters",
                      m->version, KD_LABEL_FINGERPRINT_MAX - 1);
  if (m->n_tasks < 1 || m->n_tasks > KD_MAX_TASKS)
    return kd_err_set(e, KD_ERR_INVALID, "label version '%s': n_tasks is %u, expected 1..%d", m->version, m->n_tasks,
                      KD_MAX_TASKS);
  for (uint32_t k = 0; k < m->n_tasks; k++) {
    if (!task_name_ok(m->tasks[k]))
      return kd_err_set(e, KD_ERR_INVALID, "label version '%s': task %u name '%.*s' is invalid (expected 1..%d "
                        "characters from [A-Za-z0-9_.-])", m->version, k, KD_NAME_MAX - 1, m->tasks[k], KD_NAME_MAX - 1);
    for (uint32_t j = 0; j < k; j++)
      if (strcmp(m->tasks[j], m->tasks[k]) == 0)
        return kd_err_set(e, KD_ERR_INVALID, "label version '%s': task '%s' is listed twice (tasks %u and %u)",
                          m->version, m->tasks[k], j, k);
  }
  if (m->row_count > (uint64_t)INT64_MAX)
    return kd_err_set(e, KD_ERR_INVALID, "label version '%s': expected row_count %llu is too large", m->version,
                      (unsigned long long)m->row_count);
  return KD_OK;
}

/* ---- store -------------------------------------------------------------------------------- */

struct kd_labelstore_params kd_labelstore_params_default(void) {
  struct kd_labelstore_params p = {0};
  p.batch_rows = KD_LS_DEFAULT_BATCH;
  p.timeout_ms = KD_LS_DEFAULT_TIMEOUT_MS;
  return p;
}

/* Copies a PostgreSQL URI with any password replaced by "***", for messages. */
static char *redact_uri(const char *uri) {
  const char *sch = strstr(uri, "://");
  if (!sch) return strdup(uri);
  const char *ui = sch + 3;
  const char *end = ui + strcspn(ui, "/?#");
  const char *at = NULL;
  for (const char *q = ui; q < end; q++)
    if (*q == '@') at = q;
  const char *colon = at ? memchr(ui, ':', (size_t)(at - ui)) : NULL;
  if (!colon) return strdup(uri);
  size_t head = (size_t)(colon + 1 - uri), tail = strlen(at);
  char *out = malloc(head + 3 + tail + 1);
  if (!out) return NULL;
  memcpy(out, uri, head);
  memcpy(out + head, "***", 3);
  memcpy(out + head + 3, at, tail + 1);
  return out;
}

kd_labelstore *kd_labelstore_open(const char *uri, struct kd_labelstore_params p, struct kd_err *e) {
  if (!uri || !*uri) {
    kd_err_set(e, KD_ERR_INVALID, "label store: empty URI, expected a path, sqlite:PATH or postgresql://...");
    return NULL;
  }
  const struct kd_ls_ops *ops = NULL;
  const char *target = uri;
  if (strncmp(uri, "postgresql://", 13) == 0 || strncmp(uri, "postgres://", 11) == 0) {
    ops = &kd_ls_pg_ops;
  } else if (strncmp(uri, "sqlite:", 7) == 0) {
    ops = &kd_ls_sqlite_ops;
    target = uri + 7;
    if (strncmp(target, "//", 2) == 0 && target[2] == '/') target += 2; /* sqlite:///abs/path */
  } else if (strstr(uri, "://")) {
    /* the URI itself is not printed: it may hold a password */
    int slen = (int)(strstr(uri, "://") - uri);
    kd_err_set(e, KD_ERR_UNSUPPORTED, "label store: unknown URI scheme '%.*s', expected a path, sqlite:PATH, "
               "postgresql://... or postgres://...", slen > 40 ? 40 : slen, uri);
    return NULL;
  } else {
    ops = &kd_ls_sqlite_ops;
  }
  if (!*target) {
    kd_err_set(e, KD_ERR_INVALID, "label store '%s': empty SQLite path", uri);
    return NULL;
  }
  if (p.batch_rows == 0) p.batch_rows = KD_LS_DEFAULT_BATCH;
  if (p.timeout_ms == 0) p.timeout_ms = KD_LS_DEFAULT_TIMEOUT_MS;
  if (p.batch_rows > (1u << 24)) {
    kd_err_set(e, KD_ERR_RANGE, "label store params: batch_rows %u is over the limit %u", p.batch_rows, 1u << 24);
    return NULL;
  }
  kd_labelstore *s = calloc(1, sizeof *s);
  if (!s) goto fail_nomem;
  s->ops = ops;
  s->p = p;
  s->target = strdup(target);
  s->display = ops == &kd_ls_pg_ops ? redact_uri(uri) : strdup(target);
  if (!s->target || !s->display) goto fail_nomem_s;
  if (ops->open(s, e) != KD_OK) goto fail_s;
  return s;

fail_nomem_s:
  kd_err_set(e, KD_ERR_NOMEM, "label store: out of memory");
fail_s:
  free(s->target);
  free(s->display);
  free(s);
  return NULL;
fail_nomem:
  kd_err_set(e, KD_ERR_NOMEM, "label store: out of memory");
  return NULL;
}

void kd_labelstore_close(kd_labelstore *s) {
  if (!s) return;
  s->ops->close(s);
  free(s->target);
  free(s->display);
  free(s);
}

const char *kd_labelstore_backend(const kd_labelstore *s) { return s->ops->name; }

int kd_labelstore_manifest_get(kd_labelstore *s, const char *version, struct kd_label_manifest *out,
                               struct kd_err *e) {
  int rc = kd_labelstore_version_check(version, e);
  if (rc) return rc;
  int64_t vid;
  return s->ops->manifest_get(s, version, out, &vid, e);
}

int kd_labelstore_list(kd_labelstore *s, struct kd_label_manifest **out, size_t *n, struct kd_err *e) {
  *out = NULL;
  *n = 0;
  return s->ops->list(s, out, n, e);
}

/* ---- writer ------------------------------------------------------------------------------- */

static void *flush_main(void *arg);

kd_labelstore_writer *kd_labelstore_writer_begin(kd_labelstore *s, const struct kd_label_manifest *m,
                                                 struct kd_err *e) {
  if (manifest_check(m, e) != KD_OK) return NULL;
  if (s->p.read_only) {
    kd_err_set(e, KD_ERR_INVALID, "%s: cannot write label version '%s': the store was opened read-only",
               s->display, m->version);
    return NULL;
  }
  kd_labelstore_writer *w = calloc(1, sizeof *w);
  if (!w) goto fail_nomem;
  w->s = s;
  w->m = *m;
  w->m.state = KD_LABEL_WRITING;
  w->m.created_unix = (int64_t)time(NULL);
  w->m.completed_unix = 0;
  w->m.digest = 0;
  w->cap = s->p.batch_rows;
  w->pending = -1;
  for (int b = 0; b < 2; b++) {
    w->ids[b] = malloc(w->cap * sizeof *w->ids[b]);
    w->logits[b] = malloc(w->cap * m->n_tasks * sizeof *w->logits[b]);
    if (!w->ids[b] || !w->logits[b]) goto fail_nomem_w;
  }
  if (s->ops->writer_begin(w, e) != KD_OK) goto fail_w;
  if (pthread_mutex_init(&w->mu, NULL) != 0) goto fail_mu;
  if (pthread_cond_init(&w->cv, NULL) != 0) goto fail_cv;
  if (pthread_create(&w->thread, NULL, flush_main, w) != 0) goto fail_thread;
  w->thread_started = 1;
  return w;

fail_thread:
  pthread_cond_destroy(&w->cv);
fail_cv:
  pthread_mutex_destroy(&w->mu);
fail_mu:
  s->ops->writer_end(w, 1);
  kd_err_set(e, KD_ERR_NOMEM, "label version '%s': cannot start the writer's flush thread", m->version);
  goto fail_w;
fail_nomem_w:
  kd_err_set(e, KD_ERR_NOMEM, "label version '%s': out of memory for a %zu-row write buffer", m->version, w->cap);
fail_w:
  for (int b = 0; b < 2; b++) {
    free(w->ids[b]);
    free(w->logits[b]);
  }
  free(w);
  return NULL;
fail_nomem:
  kd_err_set(e, KD_ERR_NOMEM, "label version '%s': out of memory", m->version);
  return NULL;
}

/* The flush thread: writes each buffer handed over, one transaction each, until told to stop.
 * After an error it skips further buffers (the writer is failed anyway). */
static void *flush_main(void *arg) {
  kd_labelstore_writer *w = arg;
  pthread_mutex_lock(&w->mu);
  for (;;) {
    while (w->pending < 0 && !w->stop) pthread_cond_wait(&w->cv, &w->mu);
    if (w->pending < 0) break; /* stop, and nothing left */
    int b = w->pending, skip = w->t_rc != 0;
    size_t n = w->n_pending;
    pthread_mutex_unlock(&w->mu);
    struct kd_err err = {0};
    int rc = skip ? KD_OK : w->s->ops->writer_flush(w, w->ids[b], w->logits[b], n, &err);
    pthread_mutex_lock(&w->mu);
    if (rc != KD_OK && w->t_rc == 0) {
      w->t_rc = rc;
      w->t_err = err;
    }
    w->pending = -1;
    pthread_cond_broadcast(&w->cv);
  }
  pthread_mutex_unlock(&w->mu);
  return NULL;
}

static int writer_failed(kd_labelstore_writer *w, struct kd_err *e) {
  if (e) *e = w->fail_err;
  return w->failed;
}

/* Waits for the thread to be idle and takes over its error; the caller's thread only. */
static void writer_wait_idle(kd_labelstore_writer *w) {
  while (w->pending >= 0) pthread_cond_wait(&w->cv, &w->mu);
  if (w->t_rc && !w->failed) {
    w->failed = w->t_rc;
    w->fail_err = w->t_err;
  }
}

/* Hands the filled buffer to the flush thread (waiting for the previous one first) and switches
 * put to the other buffer. With wait, also waits until the thread has written it. */
static int writer_submit(kd_labelstore_writer *w, int wait, struct kd_err *e) {
  pthread_mutex_lock(&w->mu);
  writer_wait_idle(w);
  if (!w->failed && w->n_buf > 0) {
    w->pending = w->fill;
    w->n_pending = w->n_buf;
    w->fill ^= 1;
    pthread_cond_broadcast(&w->cv);
    if (wait) writer_wait_idle(w);
  }
  pthread_mutex_unlock(&w->mu);
  w->n_buf = 0;
  return w->failed ? writer_failed(w, e) : KD_OK;
}

int kd_labelstore_writer_put(kd_labelstore_writer *w, int64_t example_id, const float *logits, struct kd_err *e) {
  if (w->failed) return writer_failed(w, e);
  if (w->committed)
    return kd_err_set(e, KD_ERR_INVALID, "%s: label version '%s' is COMPLETE (immutable): put refused",
                      w->s->display, w->m.version);
  const uint32_t nt = w->m.n_tasks;
  for (uint32_t k = 0; k < nt; k++)
    if (!isfinite(logits[k]))
      return kd_err_set(e, KD_ERR_INVALID, "label version '%s': example %lld task '%s': logit is %s, expected a "
                        "finite value", w->m.version, (long long)example_id, w->m.tasks[k],
                        isnan(logits[k]) ? "NaN" : "infinite");
  w->ids[w->fill][w->n_buf] = example_id;
  logits_to_le(w->logits[w->fill] + w->n_buf * nt, logits, nt);
  w->n_buf++;
  w->n_put++;
  w->digest += row_hash(example_id, logits, nt);
  if (w->n_buf == w->cap) return writer_submit(w, 0, e);
  return KD_OK;
}

uint64_t kd_labelstore_writer_rows(const kd_labelstore_writer *w) { return w->n_put; }

int kd_labelstore_writer_commit(kd_labelstore_writer *w, struct kd_label_manifest *out, struct kd_err *e) {
  if (w->failed) return writer_failed(w, e);
  if (w->committed)
    return kd_err_set(e, KD_ERR_INVALID, "%s: label version '%s' is already COMPLETE", w->s->display, w->m.version);
  int rc = writer_submit(w, 1, e); /* the thread is idle afterwards: the connection is ours */
  if (rc) return rc;
  if (w->m.row_count && w->m.row_count != w->n_put)
    return kd_err_set(e, KD_ERR_INVALID, "%s: label version '%s': %llu rows were put, the manifest declared %llu; "
                      "the version stays WRITING", w->s->display, w->m.version, (unsigned long long)w->n_put,
                      (unsigned long long)w->m.row_count);
  rc = w->s->ops->writer_commit(w, e);
  if (rc) return rc;
  w->committed = 1;
  if (out) *out = w->m;
  return KD_OK;
}

void kd_labelstore_writer_free(kd_labelstore_writer *w) {
  if (!w) return;
  if (w->thread_started) {
    pthread_mutex_lock(&w->mu);
    writer_wait_idle(w);
    w->stop = 1;
    pthread_cond_broadcast(&w->cv);
    pthread_mutex_unlock(&w->mu);
    pthread_join(w->thread, NULL);
    pthread_cond_destroy(&w->cv);
    pthread_mutex_destroy(&w->mu);
  }
  w->s->ops->writer_end(w, !w->committed);
  for (int b = 0; b < 2; b++) {
    free(w->ids[b]);
    free(w->logits[b]);
  }
  free(w);
}

/* ---- reader ------------------------------------------------------------------------------- */

kd_labelstore_reader *kd_labelstore_reader_open(kd_labelstore *s, const char *version, struct kd_err *e) {
  if (kd_labelstore_version_check(version, e) != KD_OK) return NULL;
  kd_labelstore_reader *r = calloc(1, sizeof *r);
  if (!r) {
    kd_err_set(e, KD_ERR_NOMEM, "label version '%s': out of memory", version);
    return NULL;
  }
  r->s = s;
  if (s->ops->reader_open(r, version, e) != KD_OK) goto fail_r;
  if (r->m.state != KD_LABEL_COMPLETE) {
    kd_err_set(e, KD_ERR_INVALID, "%s: label version '%s' is %s, not COMPLETE: it cannot be read until its writer "
               "commits (no partial reads)", s->display, version, kd_ls_state_name(r->m.state));
    goto fail_open;
  }
  return r;

fail_open:
  s->ops->reader_end(r);
fail_r:
  free(r);
  return NULL;
}

const struct kd_label_manifest *kd_labelstore_reader_manifest(const kd_labelstore_reader *r) { return &r->m; }

/* Verifies the finished stream against the manifest. */
static int reader_finish(kd_labelstore_reader *r, struct kd_err *e) {
  r->done = 1;
  if (r->n_read != r->m.row_count)
    return kd_err_set(e, KD_ERR_CORRUPT, "%s: label version '%s': read %llu rows, the manifest says %llu",
                      r->s->display, r->m.version, (unsigned long long)r->n_read, (unsigned long long)r->m.row_count);
  if (r->digest != r->m.digest)
    return kd_err_set(e, KD_ERR_CORRUPT, "%s: label version '%s': content digest %016llx, the manifest says %016llx "
                      "(labels changed after commit)", r->s->display, r->m.version, (unsigned long long)r->digest,
                      (unsigned long long)r->m.digest);
  return 0;
}

int kd_labelstore_reader_next(kd_labelstore_reader *r, int64_t *example_id, float *logits, struct kd_err *e) {
  if (r->done) return 0;
  int rc;
  if (!r->started) {
    rc = r->s->ops->reader_start(r, e);
    if (rc) return rc;
    r->started = 1;
  }
  const unsigned char *blob;
  size_t len;
  int64_t id;
  rc = r->s->ops->reader_row(r, &id, &blob, &len, e);
  if (rc < 0) return rc;
  if (rc == 0) return reader_finish(r, e);
  const uint32_t nt = r->m.n_tasks;
  if (len != (size_t)nt * 4)
    return kd_err_set(e, KD_ERR_CORRUPT, "%s: label version '%s': example %lld has %zu logit bytes, expected %u "
                      "(%u tasks x float32)", r->s->display, r->m.version, (long long)id, len, nt * 4, nt);
  if (r->n_read > 0 && id <= r->last_id)
    return kd_err_set(e, KD_ERR_CORRUPT, "%s: label version '%s': example %lld after %lld, expected ascending ids",
                      r->s->display, r->m.version, (long long)id, (long long)r->last_id);
  logits_from_le(logits, blob, nt);
  r->digest += row_hash(id, logits, nt);
  r->last_id = id;
  r->n_read++;
  *example_id = id;
  return 1;
}

int kd_labelstore_reader_join(kd_labelstore_reader *r, const int64_t *ids, size_t n, float *logits,
                              uint8_t *found, struct kd_label_coverage *cov, struct kd_err *e) {
  if (r->started)
    return kd_err_set(e, KD_ERR_INVALID, "label version '%s': join needs a fresh reader (this one has been read)",
                      r->m.version);
  for (size_t i = 1; i < n; i++)
    if (ids[i] <= ids[i - 1])
      return kd_err_set(e, KD_ERR_INVALID, "label join: example ids must be strictly ascending; ids[%zu] = %lld "
                        "follows ids[%zu] = %lld", i, (long long)ids[i], i - 1, (long long)ids[i - 1]);
  const uint32_t nt = r->m.n_tasks;
  float row[KD_MAX_TASKS];
  size_t i = 0;
  uint64_t hits = 0;
  int64_t id;
  int rc;
  while ((rc = kd_labelstore_reader_next(r, &id, row, e)) == 1) {
    while (i < n && ids[i] < id) {
      if (found) found[i] = 0;
      if (logits)
        for (uint32_t k = 0; k < nt; k++) logits[i * nt + k] = NAN;
      i++;
    }
    if (i < n && ids[i] == id) {
      if (found) found[i] = 1;
      if (logits) memcpy(logits + i * nt, row, nt * sizeof(float));
      hits++;
      i++;
    }
  }
  if (rc < 0) return rc;
  for (; i < n; i++) {
    if (found) found[i] = 0;
    if (logits)
      for (uint32_t k = 0; k < nt; k++) logits[i * nt + k] = NAN;
  }
  if (cov) {
    cov->n_examples = n;
    cov->n_labelled = hits;
    cov->n_stored = r->n_read;
    cov->fraction = n ? (double)hits / (double)n : 1.0;
  }
  return KD_OK;
}

void kd_labelstore_reader_free(kd_labelstore_reader *r) {
  if (!r) return;
  r->s->ops->reader_end(r);
  free(r);
}
