/* registry.c - model repository scan and version registry: <repo>/<model>/<version>/model.kdr,
 * one atomic "current version" pointer per model, reference-counted versions.
 * Design and thread-safety contract: see the registry section of kdrank_loader.h. */
#include <dirent.h>
#include <errno.h>
#include <limits.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>

#include "kdrank_loader.h"

#define KD_REG_MAX_RECORDS 16 /* version records kept per model (newest first) */

struct kd_version {
  atomic_uint refs;          /* the registry's reference (while current) + one per reader */
  uint32_t model_index;
  const char *model_name;    /* points into the slot (outlives every version) */
  int64_t number;
  int64_t loaded_unix_ms;
  uint32_t crc;              /* kd_ckpt_crc of the checkpoint */
  uint64_t file_bytes;
  uint32_t n_meta;
  struct kd_meta *meta;      /* [n_meta] copies, keys and strings in the same block */
  kd_plan *plan;
  uint32_t n_scratch;
  kd_scratch **scratch;      /* [n_scratch] */
};

struct kd_slot {
  char name[KD_NAME_MAX];
  pthread_mutex_t mu;                 /* held for: acquire's load+increment, swap, records */
  _Atomic(struct kd_version *) stable; /* the current version, NULL when none */
  uint32_t n_records;
  struct kd_version_info records[KD_REG_MAX_RECORDS];
  atomic_uint_fast64_t loads_ok, loads_failed;
};

struct kd_registry {
  struct kd_registry_params p;
  char *repo;
  uint32_t n_models;
  struct kd_slot *slots; /* [n_models], sorted by name */
};

/* Formats a key=value string and hands it to the caller's logger (if any). */
static void reg_log(const kd_registry *r, int level, const char *event, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
static void reg_log(const kd_registry *r, int level, const char *event, const char *fmt, ...) {
  if (!r->p.log) return;
  char kv[768];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(kv, sizeof kv, fmt, ap);
  va_end(ap);
  r->p.log(r->p.log_ctx, level, event, kv);
}

static int64_t now_unix_ms(void) {
  struct timespec ts;
  clock_gettime(CLOCK_REALTIME, &ts);
  return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* A model directory name the registry accepts: 1..KD_NAME_MAX-1 bytes of [A-Za-z0-9._-], not
 * starting with '.'. */
static int valid_model_name(const char *s) {
  size_t n = strlen(s);
  if (n == 0 || n >= KD_NAME_MAX || s[0] == '.') return 0;
  for (size_t i = 0; i < n; i++) {
    char c = s[i];
    if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '.' ||
          c == '_' || c == '-'))
      return 0;
  }
  return 1;
}

/* Parses a version directory name: a positive decimal integer without sign or leading zero. */
static int64_t parse_version(const char *s) {
  if (!s[0] || s[0] == '0' || strlen(s) > 18) return 0;
  int64_t v = 0;
  for (const char *c = s; *c; c++) {
    if (*c < '0' || *c > '9') return 0;
    v = v * 10 + (*c - '0');
  }
  return v;
}

static int is_dir(const char *path) {
  struct stat st;
  return stat(path, &st) == 0 && S_ISDIR(st.st_mode);
}

/* Frees a version (no reference may remain). */
static void version_destroy(struct kd_version *v) {
  if (!v) return;
  if (v->scratch) {
    for (uint32_t i = 0; i < v->n_scratch; i++) kd_scratch_free(v->scratch[i]);
    free(v->scratch);
  }
  kd_plan_free(v->plan);
  free(v->meta);
  free(v);
}

/* Copies the checkpoint's metadata (keys and string values included) into one block owned by v. */
static int version_copy_meta(struct kd_version *v, const kd_ckpt *c) {
  uint32_t n = kd_ckpt_n_meta(c);
  size_t bytes = n * sizeof(struct kd_meta);
  for (uint32_t i = 0; i < n; i++) {
    const struct kd_meta *m = kd_ckpt_meta_at(c, i);
    bytes += strlen(m->key) + 1 + (m->type == KD_META_STR ? strlen(m->v.s) + 1 : 0);
  }
  v->meta = malloc(bytes ? bytes : 1);
  if (!v->meta) return -1;
  char *at = (char *)(v->meta + n);
  for (uint32_t i = 0; i < n; i++) {
    const struct kd_meta *m = kd_ckpt_meta_at(c, i);
    v->meta[i] = *m;
    size_t k = strlen(m->key) + 1;
    memcpy(at, m->key, k);
    v->meta[i].key = at;
    at += k;
    if (m->type == KD_META_STR) {
      size_t l = strlen(m->v.s) + 1;
      memcpy(at, m->v.s, l);
      v->meta[i].v.s = at;
      at += l;
    }
  }
  v->n_meta = n;
  return 0;
}

/* Builds a version from its checkpoint file: open + verify, plan, metadata copy, scratches; then
 * closes the checkpoint (the plan holds its own copy of the weights, so a loaded version costs
 * the plan's bytes, not the plan plus the mapped file). No lock held. */
static struct kd_version *version_build(kd_registry *r, uint32_t mi, int64_t number,
                                        struct kd_err *e) {
  struct kd_slot *s = &r->slots[mi];
  char path[PATH_MAX];
  if (snprintf(path, sizeof path, "%s/%s/%lld/model.kdr", r->repo, s->name, (long long)number) >=
      (int)sizeof path) {
    kd_err_set(e, KD_ERR_INVALID, "%s/%s/%lld/model.kdr: path longer than %d bytes", r->repo,
               s->name, (long long)number, PATH_MAX);
    return NULL;
  }
  struct kd_version *v = calloc(1, sizeof *v);
  if (!v) {
    kd_err_set(e, KD_ERR_NOMEM, "%s: out of memory for the version record", path);
    return NULL;
  }
  atomic_init(&v->refs, 1);
  v->model_index = mi;
  v->model_name = s->name;
  v->number = number;
  kd_ckpt *ck = kd_ckpt_open(path, e);
  if (!ck) goto fail;
  struct kd_plan_params pp = {.kernel = r->p.kernel, .flat = 0};
  v->plan = kd_plan_create(kd_ckpt_model(ck), pp, e);
  v->crc = kd_ckpt_crc(ck);
  v->file_bytes = kd_ckpt_file_size(ck);
  int meta_ok = v->plan && version_copy_meta(v, ck) == 0;
  kd_ckpt_close(ck);
  if (!v->plan) goto fail;
  if (!meta_ok) {
    kd_err_set(e, KD_ERR_NOMEM, "%s: out of memory for the metadata copy", path);
    goto fail;
  }
  v->n_scratch = r->p.n_scratch;
  v->scratch = calloc(v->n_scratch, sizeof *v->scratch);
  if (!v->scratch) {
    kd_err_set(e, KD_ERR_NOMEM, "%s: out of memory for %u scratch slots", path, v->n_scratch);
    goto fail;
  }
  for (uint32_t i = 0; i < v->n_scratch; i++) {
    v->scratch[i] = kd_scratch_create(v->plan, r->p.max_cand, e);
    if (!v->scratch[i]) goto fail;
  }
  v->loaded_unix_ms = now_unix_ms();
  return v;
fail:
  version_destroy(v);
  return NULL;
}

/* Records a load attempt; records are sorted by version, newest first, at most
 * KD_REG_MAX_RECORDS (the oldest falls off). Caller holds s->mu. */
static void record_add(struct kd_slot *s, int64_t number, const char *state, const char *label,
                       const char *error, int64_t ms, uint32_t crc) {
  uint32_t at = 0;
  while (at < s->n_records && s->records[at].version > number) at++;
  if (at == s->n_records || s->records[at].version != number) { /* insert a new record at `at` */
    if (at == KD_REG_MAX_RECORDS) return; /* older than every kept record */
    uint32_t keep = s->n_records < KD_REG_MAX_RECORDS ? s->n_records : KD_REG_MAX_RECORDS - 1;
    memmove(&s->records[at + 1], &s->records[at], (keep - at) * sizeof s->records[0]);
    s->n_records = keep + 1;
  }
  struct kd_version_info *ri = &s->records[at];
  memset(ri, 0, sizeof *ri);
  ri->version = number;
  snprintf(ri->state, sizeof ri->state, "%s", state);
  snprintf(ri->label, sizeof ri->label, "%s", label);
  snprintf(ri->error, sizeof ri->error, "%s", error ? error : "");
  ri->loaded_unix_ms = ms;
  ri->checkpoint_crc = crc;
}

/* Sets the state and label of the record of `number`. Caller holds s->mu. */
static void record_state(struct kd_slot *s, int64_t number, const char *state, const char *label) {
  for (uint32_t i = 0; i < s->n_records; i++)
    if (s->records[i].version == number) {
      snprintf(s->records[i].state, sizeof s->records[i].state, "%s", state);
      snprintf(s->records[i].label, sizeof s->records[i].label, "%s", label);
    }
}

/* Makes v the current version of slot mi: one atomic exchange under the slot lock, then drops
 * the registry's reference to the previous version (outside the lock). */
static void slot_publish(kd_registry *r, uint32_t mi, struct kd_version *v) {
  struct kd_slot *s = &r->slots[mi];
  pthread_mutex_lock(&s->mu);
  struct kd_version *old = atomic_exchange_explicit(&s->stable, v, memory_order_acq_rel);
  if (old) record_state(s, old->number, "UNLOADING", "");
  record_add(s, v->number, "AVAILABLE", "stable", NULL, v->loaded_unix_ms, v->crc);
  pthread_mutex_unlock(&s->mu);
  if (old) kd_registry_release(old);
}

/* Tries one version; on success publishes it. Logs and records the outcome. */
static int slot_try_load(kd_registry *r, uint32_t mi, int64_t number, struct kd_err *e) {
  struct kd_slot *s = &r->slots[mi];
  struct kd_version *v = version_build(r, mi, number, e);
  if (!v) {
    atomic_fetch_add_explicit(&s->loads_failed, 1, memory_order_relaxed);
    pthread_mutex_lock(&s->mu);
    record_add(s, number, "FAILED", "", e ? e->msg : "load failed", 0, 0);
    pthread_mutex_unlock(&s->mu);
    reg_log(r, KD_LOG_WARN, "model_load_failed", "model=%s version=%lld error=\"%s\"", s->name,
            (long long)number, e ? e->msg : "");
    return e ? e->code : KD_ERR_INVALID;
  }
  atomic_fetch_add_explicit(&s->loads_ok, 1, memory_order_relaxed);
  reg_log(r, KD_LOG_INFO, "model_loaded",
          "model=%s version=%lld file_bytes=%llu plan_bytes=%zu kernel=%s crc=%08x", s->name,
          (long long)number, (unsigned long long)v->file_bytes,
          kd_plan_bytes(v->plan), kd_kernel_name(kd_plan_kernel(v->plan)), v->crc);
  slot_publish(r, mi, v);
  return KD_OK;
}

static int cmp_i64_desc(const void *a, const void *b) {
  int64_t x = *(const int64_t *)a, y = *(const int64_t *)b;
  return (x < y) - (x > y);
}

static int cmp_slot_name(const void *a, const void *b) {
  return strcmp(((const struct kd_slot *)a)->name, ((const struct kd_slot *)b)->name);
}

/* Lists the version numbers under <repo>/<model> (descending). Returns count, -1 on error. */
static int list_versions(kd_registry *r, const char *model, int64_t **out) {
  char dir[PATH_MAX];
  snprintf(dir, sizeof dir, "%s/%s", r->repo, model);
  DIR *d = opendir(dir);
  *out = NULL;
  if (!d) return -1;
  int n = 0, cap = 0;
  struct dirent *de;
  while ((de = readdir(d))) {
    if (de->d_name[0] == '.') continue;
    int64_t v = parse_version(de->d_name);
    if (v <= 0) {
      reg_log(r, KD_LOG_WARN, "repo_entry_skipped",
              "model=%s entry=\"%s\" reason=\"not a positive integer version\"", model, de->d_name);
      continue;
    }
    if (n == cap) {
      int nc = cap ? cap * 2 : 8;
      int64_t *t = realloc(*out, (size_t)nc * sizeof *t);
      if (!t) break;
      *out = t;
      cap = nc;
    }
    (*out)[n++] = v;
  }
  closedir(d);
  if (n > 1) qsort(*out, (size_t)n, sizeof **out, cmp_i64_desc);
  return n;
}

kd_registry *kd_registry_open(struct kd_registry_params p, struct kd_err *e) {
  if (!p.repo || !p.repo[0]) {
    kd_err_set(e, KD_ERR_INVALID, "model repository: no directory given (--model-repo)");
    return NULL;
  }
  if (p.max_cand < 1 || p.n_scratch < 1) {
    kd_err_set(e, KD_ERR_INVALID, "registry params: max_cand and n_scratch must be >= 1, found %u and %u",
               p.max_cand, p.n_scratch);
    return NULL;
  }
  kd_registry *r = calloc(1, sizeof *r);
  if (!r) {
    kd_err_set(e, KD_ERR_NOMEM, "registry: out of memory");
    return NULL;
  }
  r->p = p;
  r->repo = strdup(p.repo);
  r->p.repo = r->repo;
  DIR *d = opendir(p.repo);
  if (!r->repo || !d) {
    kd_err_set(e, KD_ERR_IO, "model repository %s: cannot open directory: %s", p.repo,
               strerror(errno));
    if (d) closedir(d);
    goto fail;
  }
  uint32_t cap = 0;
  struct dirent *de;
  while ((de = readdir(d))) {
    if (de->d_name[0] == '.') continue;
    char path[PATH_MAX];
    snprintf(path, sizeof path, "%s/%s", p.repo, de->d_name);
    if (!is_dir(path)) continue;
    if (!valid_model_name(de->d_name)) {
      reg_log(r, KD_LOG_WARN, "repo_entry_skipped",
              "entry=\"%s\" reason=\"model names are 1-%d bytes of [A-Za-z0-9._-]\"", de->d_name,
              KD_NAME_MAX - 1);
      continue;
    }
    if (r->n_models == cap) {
      uint32_t nc = cap ? cap * 2 : 8;
      struct kd_slot *t = realloc(r->slots, nc * sizeof *t);
      if (!t) {
        closedir(d);
        kd_err_set(e, KD_ERR_NOMEM, "registry: out of memory for %u models", nc);
        goto fail;
      }
      r->slots = t;
      cap = nc;
    }
    struct kd_slot *s = &r->slots[r->n_models++];
    memset(s, 0, sizeof *s);
    memcpy(s->name, de->d_name, strlen(de->d_name) + 1); /* valid_model_name: < KD_NAME_MAX */
  }
  closedir(d);
  if (r->n_models > 1) qsort(r->slots, r->n_models, sizeof *r->slots, cmp_slot_name);
  /* Initialise after sorting: a pthread mutex must not be moved once initialised. */
  for (uint32_t i = 0; i < r->n_models; i++) {
    struct kd_slot *s = &r->slots[i];
    pthread_mutex_init(&s->mu, NULL);
    atomic_init(&s->stable, NULL);
    atomic_init(&s->loads_ok, 0);
    atomic_init(&s->loads_failed, 0);
  }
  for (uint32_t i = 0; i < r->n_models; i++) {
    struct kd_slot *s = &r->slots[i];
    int64_t *vs = NULL;
    int n = list_versions(r, s->name, &vs);
    int loaded = 0;
    for (int k = 0; k < n && !loaded; k++) {
      struct kd_err le = {0};
      loaded = slot_try_load(r, i, vs[k], &le) == KD_OK;
    }
    free(vs);
    if (!loaded)
      reg_log(r, KD_LOG_WARN, "model_unavailable", "model=%s versions_found=%d reason=\"%s\"",
              s->name, n < 0 ? 0 : n, n <= 0 ? "no version directory" : "no version verified");
  }
  reg_log(r, KD_LOG_INFO, "repo_scanned", "repo=%s models=%u", r->repo, r->n_models);
  return r;
fail:
  kd_registry_free(r);
  return NULL;
}

void kd_registry_free(kd_registry *r) {
  if (!r) return;
  for (uint32_t i = 0; i < r->n_models; i++) {
    struct kd_slot *s = &r->slots[i];
    struct kd_version *v = atomic_exchange(&s->stable, NULL);
    kd_registry_release(v);
    pthread_mutex_destroy(&s->mu);
  }
  free(r->slots);
  free(r->repo);
  free(r);
}

uint32_t kd_registry_n_models(const kd_registry *r) { return r->n_models; }

const char *kd_registry_model_name(const kd_registry *r, uint32_t i) {
  return i < r->n_models ? r->slots[i].name : NULL;
}

int kd_registry_find(const kd_registry *r, const char *name) {
  if (!name) return -1;
  /* Binary search: slots are sorted by name. */
  uint32_t lo = 0, hi = r->n_models;
  while (lo < hi) {
    uint32_t mid = lo + (hi - lo) / 2;
    int c = strcmp(name, r->slots[mid].name);
    if (c == 0) return (int)mid;
    if (c < 0) hi = mid;
    else lo = mid + 1;
  }
  return -1;
}

int kd_registry_available(const kd_registry *r, uint32_t i) {
  if (i >= r->n_models) return 0;
  struct kd_slot *s = &r->slots[i];
  return atomic_load_explicit(&s->stable, memory_order_acquire) != NULL;
}

/* Lists the model names for an error message ("a, b, c"). */
static void names_list(const kd_registry *r, char *buf, size_t cap) {
  size_t at = 0;
  buf[0] = 0;
  for (uint32_t i = 0; i < r->n_models && at + 1 < cap; i++)
    at += (size_t)snprintf(buf + at, cap - at, "%s%s", i ? ", " : "", r->slots[i].name);
  if (r->n_models == 0) snprintf(buf, cap, "none");
}

kd_version *kd_registry_acquire(kd_registry *r, const char *model, uint64_t routing_key,
                                int64_t pin_version, const char *pin_label, struct kd_err *e) {
  (void)routing_key; /* one version per model until the canary issue: every key routes to stable */
  int mi = kd_registry_find(r, model);
  if (mi < 0) {
    char names[256];
    names_list(r, names, sizeof names);
    kd_err_set(e, KD_ERR_NOT_FOUND, "model \"%s\" not found (models: %s)", model ? model : "",
               names);
    return NULL;
  }
  if (pin_label && pin_label[0] && strcmp(pin_label, "stable") != 0) {
    if (strcmp(pin_label, "canary") == 0)
      kd_err_set(e, KD_ERR_NOT_FOUND, "model \"%s\" has no canary version", model);
    else
      kd_err_set(e, KD_ERR_NOT_FOUND,
                 "version_label \"%s\" of model \"%s\": expected \"stable\" or \"canary\"",
                 pin_label, model);
    return NULL;
  }
  struct kd_slot *s = &r->slots[mi];
  /* The acquire protocol: load + increment inside the slot lock, so a concurrent swap (which
   * exchanges the pointer inside the same lock and only then drops its reference) can never free
   * the version between our load and our increment. */
  pthread_mutex_lock(&s->mu);
  struct kd_version *v = atomic_load_explicit(&s->stable, memory_order_acquire);
  if (v) atomic_fetch_add_explicit(&v->refs, 1, memory_order_relaxed);
  pthread_mutex_unlock(&s->mu);
  if (!v) {
    kd_err_set(e, KD_REG_UNAVAILABLE, "model \"%s\" has no available version", model);
    return NULL;
  }
  if (pin_version > 0 && v->number != pin_version) {
    int64_t have = v->number;
    kd_registry_release(v);
    kd_err_set(e, KD_ERR_NOT_FOUND, "version %lld of model \"%s\" is not loaded (loaded: %lld)",
               (long long)pin_version, model, (long long)have);
    return NULL;
  }
  return v;
}

void kd_registry_release(kd_version *v) {
  if (!v) return;
  /* acq_rel: our uses happen before the decrement, and the last decrement sees every other
   * reader's uses before freeing (a release + acquire fence pair would do, but TSan models
   * only the read-modify-write). */
  if (atomic_fetch_sub_explicit(&v->refs, 1, memory_order_acq_rel) == 1) {
    version_destroy(v);
  }
}

int kd_registry_load_version(kd_registry *r, const char *model, int64_t version, struct kd_err *e) {
  int mi = kd_registry_find(r, model);
  if (mi < 0) {
    char names[256];
    names_list(r, names, sizeof names);
    return kd_err_set(e, KD_ERR_NOT_FOUND, "model \"%s\" not found (models: %s)", model ? model : "",
                      names);
  }
  if (version <= 0)
    return kd_err_set(e, KD_ERR_INVALID, "model \"%s\": version must be > 0, found %lld", model,
                      (long long)version);
  return slot_try_load(r, (uint32_t)mi, version, e);
}

uint32_t kd_version_model_index(const kd_version *v) { return v->model_index; }
const char *kd_version_model(const kd_version *v) { return v->model_name; }
int64_t kd_version_number(const kd_version *v) { return v->number; }
const char *kd_version_label(const kd_version *v) { (void)v; return "stable"; }
uint32_t kd_version_crc(const kd_version *v) { return v->crc; }
uint64_t kd_version_file_bytes(const kd_version *v) { return v->file_bytes; }
uint32_t kd_version_n_meta(const kd_version *v) { return v->n_meta; }
const struct kd_meta *kd_version_meta_at(const kd_version *v, uint32_t i) {
  return i < v->n_meta ? &v->meta[i] : NULL;
}
const kd_plan *kd_version_plan(const kd_version *v) { return v->plan; }
const struct kd_arch *kd_version_arch(const kd_version *v) { return kd_plan_arch(v->plan); }
kd_scratch *kd_version_scratch(const kd_version *v, uint32_t slot) {
  return slot < v->n_scratch ? v->scratch[slot] : NULL;
}
int64_t kd_version_loaded_unix_ms(const kd_version *v) { return v->loaded_unix_ms; }

uint32_t kd_registry_versions(kd_registry *r, uint32_t i, struct kd_version_info *out, uint32_t max) {
  if (i >= r->n_models) return 0;
  struct kd_slot *s = &r->slots[i];
  pthread_mutex_lock(&s->mu);
  uint32_t n = s->n_records < max ? s->n_records : max;
  memcpy(out, s->records, n * sizeof *out);
  pthread_mutex_unlock(&s->mu);
  return n;
}

void kd_registry_load_counts(const kd_registry *r, uint32_t i, uint64_t *ok, uint64_t *failed) {
  *ok = *failed = 0;
  if (i >= r->n_models) return;
  *ok = atomic_load_explicit(&r->slots[i].loads_ok, memory_order_relaxed);
  *failed = atomic_load_explicit(&r->slots[i].loads_failed, memory_order_relaxed);
}
