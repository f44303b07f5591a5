/* registry.c - model repository and version registry: <repo>/<model>/<version>/model.kdr,
 * per model a stable and an optional canary version (one atomic pointer each), reference-counted
 * versions, version records with states and timestamps, sticky canary routing, the serving state
 * persisted in <repo>/<model>/serving.json, and the keep-latest-N policy. The background watcher
 * (inotify + rescan, loading and freeing off the serving threads) is in loader/watch.c.
 * Design and thread-safety contract: see the registry section of kdrank_loader.h. */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <cjson/cJSON.h>

#include "registry_internal.h"

static const char *const k_state_names[] = {"LOADING", "AVAILABLE", "FAILED", "UNLOADING"};

void reg_log(const kd_registry *r, int level, const char *event, const char *fmt, ...) {
  if (!r->p.log) return;
  char kv[1024];
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

/* FNV-1a of a string: mixes the model name into the canary hash. */
static uint64_t fnv1a(const char *s) {
  uint64_t h = 0xcbf29ce484222325ull;
  for (; *s; s++) h = (h ^ (uint8_t)*s) * 0x100000001b3ull;
  return h;
}

/* splitmix64 finaliser: a routing key spread uniformly over 64 bits. */
static uint64_t mix64(uint64_t z) {
  z += 0x9E3779B97F4A7C15ull;
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return z ^ (z >> 31);
}

/* Canary threshold: a hash h goes to the canary when h < threshold (weight 1: always). */
static uint64_t weight_threshold(double w) {
  if (!(w > 0)) return 0;
  if (w >= 1) return UINT64_MAX;
  return (uint64_t)ldexp(w, 64);
}

/* The file's identity: a FAILED version is retried only when its file changed. */
static void file_id_of(const char *path, struct reg_file_id *id) {
  struct stat st;
  memset(id, 0, sizeof *id);
  if (stat(path, &st) != 0) return;
  id->dev = (uint64_t)st.st_dev;
  id->ino = (uint64_t)st.st_ino;
  id->size = (uint64_t)st.st_size;
  id->mtime_ns = (int64_t)st.st_mtim.tv_sec * 1000000000 + st.st_mtim.tv_nsec;
}

/* ---- versions ---- */

/* Frees a version (no reference may remain) and drops its record (if still UNLOADING). */
void reg_version_destroy(struct kd_version *v) {
  if (!v) return;
  kd_registry *r = v->reg;
  if (r && v->model_index < r->n_models) {
    struct kd_slot *s = &r->slots[v->model_index];
    pthread_mutex_lock(&s->mu);
    for (uint32_t i = 0; i < s->n_recs; i++)
      if (s->recs[i].dying == v) {
        memmove(&s->recs[i], &s->recs[i + 1], (s->n_recs - i - 1) * sizeof s->recs[0]);
        s->n_recs--;
        break;
      }
    pthread_mutex_unlock(&s->mu);
    reg_log(r, KD_LOG_INFO, "model_unloaded", "model=%s version=%lld", s->name, (long long)v->number);
  }
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

/* Scores a few synthetic batches built from the architecture on every scratch slot, so the
 * first real requests find warm pages, caches and branch predictors (no lazy work left). */
static int version_warm_up(kd_registry *r, struct kd_version *v, struct kd_err *e) {
  const struct kd_arch *a = kd_plan_arch(v->plan);
  uint32_t n = r->p.max_cand < 256 ? r->p.max_cand : 256;
  struct kd_column cols[KD_MAX_FEATURES];
  memset(cols, 0, sizeof cols);
  size_t nf = 0;
  for (uint32_t i = 0; i < a->n_features; i++)
    if (a->features[i].kind == KD_FEAT_DENSE) nf += (size_t)n * a->features[i].dim;
  float *fl = calloc(nf + 1, sizeof *fl);
  int64_t *ids = calloc((size_t)n, sizeof *ids);
  float *out = calloc((size_t)n * KD_MAX_TASKS, sizeof *out);
  uint32_t tasks[KD_MAX_TASKS], nt = 0;
  int rc = KD_OK;
  if (!fl || !ids || !out) {
    rc = kd_err_set(e, KD_ERR_NOMEM, "warm-up: out of memory");
    goto done;
  }
  for (size_t i = 0; i < nf; i++) fl[i] = (float)((i % 7) * 0.25 - 0.75);
  for (uint32_t i = 0; i < n; i++) ids[i] = (int64_t)i * 7919;
  size_t at = 0;
  for (uint32_t i = 0; i < a->n_features; i++) {
    const struct kd_feature *f = &a->features[i];
    uint32_t rows = f->group == KD_GROUP_CONTEXT ? 1 : n;
    if (f->kind == KD_FEAT_DENSE) {
      cols[i].floats = fl + at;
      cols[i].n_floats = (size_t)rows * f->dim;
      at += (size_t)n * f->dim;
    } else {
      cols[i].ids = ids;
      cols[i].n_ids = rows;
    }
  }
  for (uint32_t t = 0; t < a->n_tasks; t++)
    if (a->tasks[t].served) tasks[nt++] = t;
  static const uint32_t sizes[] = {1, 16, 256};
  for (uint32_t s = 0; s < v->n_scratch && rc == KD_OK; s++)
    for (size_t k = 0; k < sizeof sizes / sizeof sizes[0] && rc == KD_OK; k++) {
      struct kd_input in = {.n_cand = sizes[k] < n ? sizes[k] : n, .cols = cols};
      /* Candidate columns were sized for n rows: shrink them to this batch. */
      struct kd_column c2[KD_MAX_FEATURES];
      memcpy(c2, cols, sizeof c2);
      for (uint32_t i = 0; i < a->n_features; i++)
        if (a->features[i].group != KD_GROUP_CONTEXT) {
          if (a->features[i].kind == KD_FEAT_DENSE) c2[i].n_floats = (size_t)in.n_cand * a->features[i].dim;
          else c2[i].n_ids = in.n_cand;
        }
      in.cols = c2;
      rc = kd_score(v->plan, v->scratch[s], &in, tasks, nt, out, e);
    }
done:
  free(fl);
  free(ids);
  free(out);
  return rc;
}

/* Builds a version from its checkpoint file: open + verify every CRC, plan (weights laid out
 * for the fast path), metadata copy, then the checkpoint is closed and unmapped (the plan holds its
 * own copy of the weights: a loaded version costs the plan's bytes), scratches, warm-up. No lock
 * held: runs on the loader or admin thread. */
static struct kd_version *version_build(kd_registry *r, uint32_t mi, int64_t number,
                                        struct kd_err *e) {
  struct kd_slot *s = &r->slots[mi];
  char path[PATH_MAX];
  snprintf(path, sizeof path, "%s/%s/%lld/model.kdr", r->repo, s->name, (long long)number);
  struct kd_version *v = calloc(1, sizeof *v);
  if (!v) {
    kd_err_set(e, KD_ERR_NOMEM, "%s: out of memory for the version record", path);
    return NULL;
  }
  atomic_init(&v->refs, 1);
  atomic_init(&v->role, 0);
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
  kd_ckpt_close(ck); /* munmap */
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
  if (version_warm_up(r, v, e) != KD_OK) goto fail;
  v->loaded_unix_ms = now_unix_ms();
  v->reg = r; /* from here on, destroying it touches the slot's records */
  return v;
fail:
  v->reg = NULL; /* never registered: no record to drop */
  reg_version_destroy(v);
  return NULL;
}

/* ---- records (caller holds s->mu) ---- */

static struct reg_rec *rec_find(struct kd_slot *s, int64_t number) {
  for (uint32_t i = 0; i < s->n_recs; i++)
    if (s->recs[i].version == number && !s->recs[i].dying) return &s->recs[i];
  return NULL;
}

/* A new record for number, sorted newest first. When full, the oldest record that holds no
 * version is dropped; if every record holds one, NULL. */
static struct reg_rec *rec_new(struct kd_slot *s, int64_t number) {
  if (s->n_recs == KD_REG_MAX_RECORDS) {
    int drop = -1;
    for (int i = (int)s->n_recs - 1; i >= 0 && drop < 0; i--)
      if (!s->recs[i].v && !s->recs[i].dying && s->recs[i].state != KD_VSTATE_LOADING) drop = i;
    if (drop < 0) return NULL;
    memmove(&s->recs[drop], &s->recs[drop + 1], (s->n_recs - (uint32_t)drop - 1) * sizeof s->recs[0]);
    s->n_recs--;
  }
  uint32_t at = 0;
  while (at < s->n_recs && s->recs[at].version >= number) at++;
  memmove(&s->recs[at + 1], &s->recs[at], (s->n_recs - at) * sizeof s->recs[0]);
  s->n_recs++;
  memset(&s->recs[at], 0, sizeof s->recs[at]);
  s->recs[at].version = number;
  return &s->recs[at];
}

static void rec_set_state(struct reg_rec *rc, int state) {
  int64_t t = now_unix_ms();
  rc->state = state;
  rc->state_ms = t;
  switch (state) {
  case KD_VSTATE_LOADING: rc->loading_ms = t; break;
  case KD_VSTATE_AVAILABLE: rc->available_ms = t; break;
  case KD_VSTATE_FAILED: rc->failed_ms = t; break;
  default: rc->unloading_ms = t; break;
  }
}

/* The loaded (AVAILABLE) version `number` of slot s, or NULL. Caller holds s->mu. */
static struct kd_version *loaded_find(struct kd_slot *s, int64_t number) {
  struct reg_rec *rc = rec_find(s, number);
  return rc && rc->state == KD_VSTATE_AVAILABLE ? rc->v : NULL;
}

/* Sets roles (stable/canary) on the versions after a routing change. Caller holds s->mu. */
static void roles_update(struct kd_slot *s) {
  struct kd_version *st = atomic_load_explicit(&s->stable, memory_order_relaxed);
  struct kd_version *ca = atomic_load_explicit(&s->canary, memory_order_relaxed);
  for (uint32_t i = 0; i < s->n_recs; i++) {
    struct kd_version *v = s->recs[i].v;
    if (!v) continue;
    atomic_store_explicit(&v->role, v == st ? 1 : v == ca ? 2 : 0, memory_order_relaxed);
  }
}

/* ---- loading and the policy (caller holds r->ctl) ---- */

/* Loads version `number` of model mi (unless it is already loaded): LOADING record, build +
 * warm-up outside s->mu, then AVAILABLE (the registry holds one reference) or FAILED with the
 * error. Returns the loaded version (borrowed) or NULL with e filled. */
struct kd_version *reg_load(kd_registry *r, uint32_t mi, int64_t number, struct kd_err *e) {
  struct kd_slot *s = &r->slots[mi];
  char path[PATH_MAX];
  snprintf(path, sizeof path, "%s/%s/%lld/model.kdr", r->repo, s->name, (long long)number);
  pthread_mutex_lock(&s->mu);
  struct kd_version *have = loaded_find(s, number);
  if (have) {
    pthread_mutex_unlock(&s->mu);
    return have;
  }
  struct reg_rec *rc = rec_find(s, number);
  if (!rc) rc = rec_new(s, number);
  if (!rc) {
    pthread_mutex_unlock(&s->mu);
    kd_err_set(e, KD_ERR_NOMEM, "model %s: too many loaded versions (%d records)", s->name,
               KD_REG_MAX_RECORDS);
    return NULL;
  }
  memset(rc->error, 0, sizeof rc->error);
  rec_set_state(rc, KD_VSTATE_LOADING);
  file_id_of(path, &rc->fid);
  struct reg_file_id fid = rc->fid;
  pthread_mutex_unlock(&s->mu);
  if (number > s->newest_seen) s->newest_seen = number;

  reg_log(r, KD_LOG_INFO, "model_loading", "model=%s version=%lld", s->name, (long long)number);
  uint64_t t0 = (uint64_t)now_unix_ms();
  struct kd_err le = {0};
  struct kd_version *v = version_build(r, mi, number, &le);
  pthread_mutex_lock(&s->mu);
  rc = rec_find(s, number); /* records may have moved */
  if (rc) {
    if (v) {
      rc->v = v;
      rc->crc = v->crc;
      rc->loaded_ms = v->loaded_unix_ms;
      rec_set_state(rc, KD_VSTATE_AVAILABLE);
    } else {
      rc->fid = fid;
      snprintf(rc->error, sizeof rc->error, "%.255s", le.msg);
      rec_set_state(rc, KD_VSTATE_FAILED);
    }
  }
  pthread_mutex_unlock(&s->mu);
  if (!v) {
    atomic_fetch_add_explicit(&s->loads_failed, 1, memory_order_relaxed);
    reg_log(r, KD_LOG_WARN, "model_load_failed", "model=%s version=%lld error=\"%s\"", s->name,
            (long long)number, le.msg);
    if (e) *e = le;
    return NULL;
  }
  if (!rc) { /* cannot happen (records holding LOADING are never dropped); stay safe */
    kd_registry_release(v);
    kd_err_set(e, KD_ERR_NOMEM, "model %s: version record lost", s->name);
    return NULL;
  }
  atomic_fetch_add_explicit(&s->loads_ok, 1, memory_order_relaxed);
  reg_log(r, KD_LOG_INFO, "model_loaded",
          "model=%s version=%lld file_bytes=%llu plan_bytes=%zu kernel=%s crc=%08x load_ms=%llu",
          s->name, (long long)number, (unsigned long long)v->file_bytes,
          kd_plan_bytes(v->plan), kd_kernel_name(kd_plan_kernel(v->plan)), v->crc,
          (unsigned long long)((uint64_t)now_unix_ms() - t0));
  return v;
}

/* Drops the registry's reference to loaded version rc (not stable/canary): UNLOADING until the
 * last reader releases it. Caller holds r->ctl. */
static void reg_unload(kd_registry *r, struct kd_slot *s, int64_t number, const char *why) {
  pthread_mutex_lock(&s->mu);
  struct reg_rec *rc = rec_find(s, number);
  struct kd_version *v = rc ? rc->v : NULL;
  if (!v || v == atomic_load_explicit(&s->stable, memory_order_relaxed) ||
      v == atomic_load_explicit(&s->canary, memory_order_relaxed)) {
    pthread_mutex_unlock(&s->mu);
    return;
  }
  rc->v = NULL;
  rc->dying = v;
  rec_set_state(rc, KD_VSTATE_UNLOADING);
  atomic_store_explicit(&v->role, 0, memory_order_relaxed);
  pthread_mutex_unlock(&s->mu);
  reg_log(r, KD_LOG_INFO, "model_unloading", "model=%s version=%lld reason=%s", s->name,
          (long long)number, why);
  kd_registry_release(v); /* outside s->mu: the last release takes it */
}

/* Keep-latest-N: stable and canary always stay; the newest other loaded versions fill the rest
 * of the N; older ones are unloaded. Caller holds r->ctl. */
void reg_apply_policy(kd_registry *r, uint32_t mi) {
  struct kd_slot *s = &r->slots[mi];
  int64_t drop[KD_REG_MAX_RECORDS];
  uint32_t nd = 0;
  pthread_mutex_lock(&s->mu);
  struct kd_version *st = atomic_load_explicit(&s->stable, memory_order_relaxed);
  struct kd_version *ca = atomic_load_explicit(&s->canary, memory_order_relaxed);
  uint32_t kept = (st ? 1 : 0) + (ca ? 1 : 0);
  for (uint32_t i = 0; i < s->n_recs; i++) { /* newest first */
    struct kd_version *v = s->recs[i].v;
    if (!v || v == st || v == ca) continue;
    if (kept < r->keep) kept++;
    else drop[nd++] = s->recs[i].version;
  }
  pthread_mutex_unlock(&s->mu);
  for (uint32_t i = 0; i < nd; i++) reg_unload(r, s, drop[i], "policy");
}

/* Writes <repo>/<model>/serving.json atomically (temp -> fsync -> rename -> fsync dir). Caller
 * holds r->ctl. Failures are logged (serving goes on; the state is not persisted). */
void reg_persist(kd_registry *r, uint32_t mi) {
  if (!r->p.persist) return;
  struct kd_slot *s = &r->slots[mi];
  struct kd_model_status ms;
  kd_registry_status(r, mi, &ms);
  char dir[PATH_MAX], tmp[PATH_MAX + 32], fin[PATH_MAX + 32];
  snprintf(dir, sizeof dir, "%s/%s", r->repo, s->name);
  snprintf(tmp, sizeof tmp, "%s/.serving.json.tmp", dir);
  snprintf(fin, sizeof fin, "%s/serving.json", dir);
  char body[512];
  int n = snprintf(body, sizeof body,
                   "{\"stable\": %lld, \"canary\": %lld, \"canary_weight\": %.17g, "
                   "\"previous_stable\": %lld, \"newest_seen\": %lld}\n",
                   (long long)ms.stable_version, (long long)ms.canary_version, ms.canary_weight,
                   (long long)ms.previous_stable, (long long)s->newest_seen);
  int fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  int ok = fd >= 0 && write(fd, body, (size_t)n) == n && fsync(fd) == 0;
  if (fd >= 0 && close(fd) != 0) ok = 0;
  ok = ok && rename(tmp, fin) == 0;
  if (ok) {
    int dfd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (dfd >= 0) {
      fsync(dfd);
      close(dfd);
    }
  } else {
    reg_log(r, KD_LOG_ERROR, "serving_state_not_saved", "model=%s path=%s error=\"%s\"", s->name,
            fin, strerror(errno));
    unlink(tmp);
  }
}

/* Reads serving.json of model mi (if any) into the slot's wanted state. */
static void reg_read_state(kd_registry *r, uint32_t mi, int64_t *stable, int64_t *canary,
                           double *weight) {
  struct kd_slot *s = &r->slots[mi];
  *stable = *canary = 0;
  *weight = 0;
  if (!r->p.persist) return;
  char path[PATH_MAX];
  snprintf(path, sizeof path, "%s/%s/serving.json", r->repo, s->name);
  FILE *f = fopen(path, "rb");
  if (!f) return;
  char buf[4096];
  size_t n = fread(buf, 1, sizeof buf - 1, f);
  fclose(f);
  buf[n] = 0;
  cJSON *j = cJSON_Parse(buf);
  const char *names[5] = {"stable", "canary", "canary_weight", "previous_stable", "newest_seen"};
  double vals[5] = {0};
  int bad = !j || !cJSON_IsObject(j);
  for (int i = 0; i < 5 && !bad; i++) {
    cJSON *x = cJSON_GetObjectItemCaseSensitive(j, names[i]);
    if (!x) continue;
    if (!cJSON_IsNumber(x) || !isfinite(x->valuedouble) || x->valuedouble < 0 ||
        (i != 2 && x->valuedouble > 9e15) || (i == 2 && x->valuedouble > 1))
      bad = 1;
    else
      vals[i] = x->valuedouble;
  }
  cJSON_Delete(j);
  if (bad) {
    reg_log(r, KD_LOG_WARN, "serving_state_ignored",
            "model=%s path=%s reason=\"not a JSON object of non-negative numbers (stable, canary, "
            "canary_weight in [0,1], previous_stable, newest_seen)\"",
            s->name, path);
    return;
  }
  *stable = (int64_t)vals[0];
  *canary = (int64_t)vals[1];
  *weight = vals[2];
  s->prev_stable = (int64_t)vals[3];
  s->newest_seen = (int64_t)vals[4];
  reg_log(r, KD_LOG_INFO, "serving_state_read", "model=%s stable=%lld canary=%lld weight=%g newest_seen=%lld",
          s->name, (long long)*stable, (long long)*canary, *weight, (long long)s->newest_seen);
}

/* Routing changes (caller holds r->ctl; the pointer stores happen under s->mu so a reader's
 * load + increment never races the registry's release of the previous version). */
void reg_set_stable(kd_registry *r, uint32_t mi, struct kd_version *v) {
  struct kd_slot *s = &r->slots[mi];
  pthread_mutex_lock(&s->mu);
  struct kd_version *old = atomic_load_explicit(&s->stable, memory_order_relaxed);
  if (old && old != v) s->prev_stable = old->number;
  atomic_store_explicit(&s->stable, v, memory_order_release);
  if (atomic_load_explicit(&s->canary, memory_order_relaxed) == v) {
    atomic_store_explicit(&s->canary, NULL, memory_order_release);
    s->weight = 0;
    s->threshold = 0;
  }
  roles_update(s);
  pthread_mutex_unlock(&s->mu);
  reg_log(r, KD_LOG_INFO, "model_published", "model=%s version=%lld label=stable previous=%lld",
          s->name, (long long)(v ? v->number : 0), (long long)(old ? old->number : 0));
}

void reg_set_canary(kd_registry *r, uint32_t mi, struct kd_version *v, double w) {
  struct kd_slot *s = &r->slots[mi];
  pthread_mutex_lock(&s->mu);
  atomic_store_explicit(&s->canary, v, memory_order_release);
  s->weight = v ? w : 0;
  s->threshold = v ? weight_threshold(w) : 0;
  roles_update(s);
  pthread_mutex_unlock(&s->mu);
}

/* Lists the version numbers under <repo>/<model> (descending). Returns count, -1 on error. */
int reg_list_versions(kd_registry *r, uint32_t mi, int64_t **out) {
  struct kd_slot *s = &r->slots[mi];
  char dir[PATH_MAX];
  snprintf(dir, sizeof dir, "%s/%s", r->repo, s->name);
  DIR *d = opendir(dir);
  *out = NULL;
  if (!d) return -1;
  int n = 0, cap = 0;
  struct dirent *de;
  while ((de = readdir(d))) {
    if (de->d_name[0] == '.' || strcmp(de->d_name, "serving.json") == 0) continue;
    int64_t v = parse_version(de->d_name);
    if (v <= 0) continue; /* not a version (logged once at open) */
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
  if (n > 1) {
    for (int i = 1; i < n; i++) /* insertion sort, descending (small lists) */
      for (int j = i; j > 0 && (*out)[j] > (*out)[j - 1]; j--) {
        int64_t t = (*out)[j];
        (*out)[j] = (*out)[j - 1];
        (*out)[j - 1] = t;
      }
  }
  return n;
}

/* Newest AVAILABLE version number of slot s (0 if none). */
static int64_t newest_loaded(struct kd_slot *s) {
  int64_t best = 0;
  pthread_mutex_lock(&s->mu);
  for (uint32_t i = 0; i < s->n_recs; i++)
    if (s->recs[i].v && s->recs[i].version > best) best = s->recs[i].version;
  pthread_mutex_unlock(&s->mu);
  return best;
}

/* Should version `number` (on disk) be tried by a scan? New (never seen) versions newer than
 * every loaded one are; a FAILED one is retried when its file changed (e.g. a file that was being
 * written when the scan saw it). seen: newest_seen when the scan started (a newer version that
 * failed during this scan does not hide older new ones). ignore_seen: start-up fallback when the
 * saved stable failed. */
static int scan_wants(kd_registry *r, struct kd_slot *s, int64_t number, int64_t seen,
                      int ignore_seen) {
  char path[PATH_MAX];
  snprintf(path, sizeof path, "%s/%s/%lld/model.kdr", r->repo, s->name, (long long)number);
  pthread_mutex_lock(&s->mu);
  struct reg_rec *rc = rec_find(s, number);
  int want;
  if (rc) {
    want = 0;
    if (rc->state == KD_VSTATE_FAILED) {
      struct reg_file_id id;
      file_id_of(path, &id);
      want = memcmp(&id, &rc->fid, sizeof id) != 0;
    }
  } else {
    want = ignore_seen || number > seen;
  }
  pthread_mutex_unlock(&s->mu);
  return want;
}

/* Scans model mi: tries the newest wanted version(s) newer than every loaded one, newest first,
 * stopping at the first that loads; publishes it as stable (auto-promote, or when there is no
 * stable), applies the policy and persists a changed state. Caller holds r->ctl. Returns 1 if
 * something was published. */
int reg_scan_model(kd_registry *r, uint32_t mi, int ignore_seen) {
  struct kd_slot *s = &r->slots[mi];
  int64_t *vs = NULL;
  int n = reg_list_versions(r, mi, &vs);
  int64_t floor = newest_loaded(s);
  int published = 0;
  int64_t seen_before = s->newest_seen;
  for (int k = 0; k < n; k++) {
    if (vs[k] <= floor) break;
    if (!scan_wants(r, s, vs[k], seen_before, ignore_seen)) continue;
    struct kd_err e = {0};
    struct kd_version *v = reg_load(r, mi, vs[k], &e);
    if (!v) continue;
    int has_stable = atomic_load_explicit(&s->stable, memory_order_relaxed) != NULL;
    if (r->p.auto_promote || !has_stable) {
      reg_set_stable(r, mi, v);
      published = 1;
    }
    break;
  }
  free(vs);
  if (published) reg_apply_policy(r, mi);
  if (published || s->newest_seen != seen_before) reg_persist(r, mi);
  return published;
}

/* ---- open / free ---- */

static int cmp_slot_name(const void *a, const void *b) {
  return strcmp(((const struct kd_slot *)a)->name, ((const struct kd_slot *)b)->name);
}

/* Start-up: the saved serving state (if any) first, then a scan for newer versions; with no
 * stable after that, the newest version that verifies. */
static void reg_initial_load(kd_registry *r, uint32_t mi) {
  struct kd_slot *s = &r->slots[mi];
  int64_t want_stable, want_canary;
  double w;
  reg_read_state(r, mi, &want_stable, &want_canary, &w);
  if (want_stable > 0) {
    struct kd_err e = {0};
    struct kd_version *v = reg_load(r, mi, want_stable, &e);
    if (v) reg_set_stable(r, mi, v);
  }
  if (want_canary > 0 && want_canary != want_stable) {
    struct kd_err e = {0};
    struct kd_version *v = reg_load(r, mi, want_canary, &e);
    if (v) {
      reg_set_canary(r, mi, v, w);
      reg_log(r, KD_LOG_INFO, "canary_set", "model=%s version=%lld weight=%g source=serving.json",
              s->name, (long long)want_canary, w);
    }
  }
  reg_scan_model(r, mi, 0);
  if (!atomic_load_explicit(&s->stable, memory_order_relaxed)) reg_scan_model(r, mi, 1);
  if (!atomic_load_explicit(&s->stable, memory_order_relaxed)) {
    int64_t *vs = NULL;
    int n = reg_list_versions(r, mi, &vs);
    free(vs);
    reg_log(r, KD_LOG_WARN, "model_unavailable", "model=%s versions_found=%d reason=\"%s\"", s->name,
            n < 0 ? 0 : n, n <= 0 ? "no version directory" : "no version verified");
  }
  reg_apply_policy(r, mi);
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
  r->keep = p.keep_loaded ? p.keep_loaded : 2;
  r->repo = strdup(p.repo);
  r->p.repo = r->repo;
  pthread_mutex_init(&r->ctl, NULL);
  atomic_init(&r->dead, NULL);
  r->wake_fd[0] = r->wake_fd[1] = -1;
  DIR *d = r->repo ? opendir(p.repo) : NULL;
  if (!r->repo || !d) {
    kd_err_set(e, KD_ERR_IO, "model repository %s: cannot open directory: %s", p.repo,
               strerror(errno));
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
    atomic_init(&s->canary, NULL);
    atomic_init(&s->loads_ok, 0);
    atomic_init(&s->loads_failed, 0);
    s->name_hash = fnv1a(s->name);
  }
  r->mutexes_ready = 1;
  for (uint32_t i = 0; i < r->n_models; i++) {
    /* Log entries that are not versions (once, at open). */
    char dir[PATH_MAX];
    snprintf(dir, sizeof dir, "%s/%s", r->repo, r->slots[i].name);
    DIR *md = opendir(dir);
    while (md && (de = readdir(md))) {
      if (de->d_name[0] == '.' || strcmp(de->d_name, "serving.json") == 0) continue;
      if (parse_version(de->d_name) <= 0)
        reg_log(r, KD_LOG_WARN, "repo_entry_skipped",
                "model=%s entry=\"%s\" reason=\"not a positive integer version\"", r->slots[i].name,
                de->d_name);
    }
    if (md) closedir(md);
    pthread_mutex_lock(&r->ctl);
    reg_initial_load(r, i);
    pthread_mutex_unlock(&r->ctl);
  }
  reg_log(r, KD_LOG_INFO, "repo_scanned", "repo=%s models=%u keep_loaded=%u auto_promote=%d", r->repo,
          r->n_models, r->keep, r->p.auto_promote);
  return r;
fail:
  kd_registry_free(r);
  return NULL;
}

void kd_registry_free(kd_registry *r) {
  if (!r) return;
  kd_registry_watch_stop(r);
  for (uint32_t i = 0; i < r->n_models && r->mutexes_ready; i++) {
    struct kd_slot *s = &r->slots[i];
    pthread_mutex_lock(&s->mu);
    atomic_store(&s->stable, NULL);
    atomic_store(&s->canary, NULL);
    struct kd_version *held[KD_REG_MAX_RECORDS];
    uint32_t nh = 0;
    for (uint32_t k = 0; k < s->n_recs; k++)
      if (s->recs[k].v) {
        held[nh++] = s->recs[k].v;
        s->recs[k].dying = s->recs[k].v;
        s->recs[k].v = NULL;
      }
    pthread_mutex_unlock(&s->mu);
    for (uint32_t k = 0; k < nh; k++) kd_registry_release(held[k]);
  }
  reg_reap(r);
  for (uint32_t i = 0; i < r->n_models && r->mutexes_ready; i++) pthread_mutex_destroy(&r->slots[i].mu);
  pthread_mutex_destroy(&r->ctl);
  free(r->slots);
  free(r->repo);
  free(r);
}

/* ---- lookups ---- */

uint32_t kd_registry_n_models(const kd_registry *r) { return r->n_models; }

const char *kd_registry_model_name(const kd_registry *r, uint32_t i) {
  return i < r->n_models ? r->slots[i].name : NULL;
}

int kd_registry_find(const kd_registry *r, const char *name) {
  if (!name) return -1;
  uint32_t lo = 0, hi = r->n_models; /* binary search: slots are sorted by name */
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
  return atomic_load_explicit(&r->slots[i].stable, memory_order_acquire) != NULL;
}

/* Lists the model names for an error message ("a, b, c"). */
static void names_list(const kd_registry *r, char *buf, size_t cap) {
  size_t at = 0;
  buf[0] = 0;
  for (uint32_t i = 0; i < r->n_models && at + 1 < cap; i++)
    at += (size_t)snprintf(buf + at, cap - at, "%s%s", i ? ", " : "", r->slots[i].name);
  if (r->n_models == 0) snprintf(buf, cap, "none");
}

/* Per-thread generator for requests without a routing key (split per request). */
static _Thread_local uint64_t t_rng;

kd_version *kd_registry_route(kd_registry *r, const char *model, uint64_t routing_key,
                              int64_t pin_version, const char *pin_label, const char **label,
                              struct kd_err *e) {
  if (label) *label = "";
  int mi = kd_registry_find(r, model);
  if (mi < 0) {
    char names[256];
    names_list(r, names, sizeof names);
    kd_err_set(e, KD_ERR_NOT_FOUND, "model \"%s\" not found (models: %s)", model ? model : "",
               names);
    return NULL;
  }
  int want_canary = 0;
  if (pin_label && pin_label[0]) {
    if (strcmp(pin_label, "canary") == 0) {
      want_canary = 1;
    } else if (strcmp(pin_label, "stable") != 0) {
      kd_err_set(e, KD_ERR_NOT_FOUND,
                 "version_label \"%s\" of model \"%s\": expected \"stable\" or \"canary\"",
                 pin_label, model);
      return NULL;
    }
  }
  struct kd_slot *s = &r->slots[mi];
  uint64_t h = 0;
  if (pin_version <= 0 && !(pin_label && pin_label[0])) {
    if (routing_key) {
      h = mix64(routing_key ^ s->name_hash);
    } else {
      if (!t_rng) t_rng = mix64((uint64_t)(uintptr_t)&t_rng ^ (uint64_t)now_unix_ms());
      t_rng = mix64(t_rng);
      h = t_rng;
    }
  }
  /* The acquire protocol: choose + increment inside the slot lock, so a concurrent swap (which
   * changes the pointers inside the same lock and only then drops its reference) can never free
   * the version between our load and our increment. */
  const char *lab = "";
  int64_t have = 0;
  pthread_mutex_lock(&s->mu);
  struct kd_version *st = atomic_load_explicit(&s->stable, memory_order_acquire);
  struct kd_version *ca = atomic_load_explicit(&s->canary, memory_order_acquire);
  struct kd_version *v = NULL;
  if (pin_version > 0) {
    v = loaded_find(s, pin_version);
    if (v && (!pin_label || !pin_label[0] || (want_canary ? v == ca : v == st)))
      lab = v == st ? "stable" : v == ca ? "canary" : "";
    else if (v)
      v = NULL;
    have = st ? st->number : 0;
  } else if (want_canary) {
    v = ca;
    lab = "canary";
  } else if (pin_label && pin_label[0]) {
    v = st;
    lab = "stable";
  } else if (ca && h < s->threshold) {
    v = ca;
    lab = "canary";
  } else {
    v = st;
    lab = "stable";
  }
  if (v) atomic_fetch_add_explicit(&v->refs, 1, memory_order_relaxed);
  pthread_mutex_unlock(&s->mu);
  if (!v) {
    if (pin_version > 0)
      kd_err_set(e, KD_ERR_NOT_FOUND, "version %lld of model \"%s\" is not loaded (loaded: %lld)",
                 (long long)pin_version, model, (long long)have);
    else if (want_canary && st)
      kd_err_set(e, KD_ERR_NOT_FOUND, "model \"%s\" has no canary version", model);
    else
      kd_err_set(e, KD_REG_UNAVAILABLE, "model \"%s\" has no available version", model);
    return NULL;
  }
  if (label) *label = lab;
  return v;
}

kd_version *kd_registry_acquire(kd_registry *r, const char *model, uint64_t routing_key,
                                int64_t pin_version, const char *pin_label, struct kd_err *e) {
  return kd_registry_route(r, model, routing_key, pin_version, pin_label, NULL, e);
}

void kd_registry_release(kd_version *v) {
  if (!v) return;
  /* acq_rel: our uses happen before the decrement, and the last decrement sees every other
   * reader's uses before freeing (TSan models the read-modify-write, not separate fences). */
  if (atomic_fetch_sub_explicit(&v->refs, 1, memory_order_acq_rel) == 1) {
    kd_registry *r = v->reg;
    if (r && atomic_load_explicit(&r->watching, memory_order_acquire))
      reg_defer_free(r, v); /* the background thread frees it */
    else
      reg_version_destroy(v);
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
  struct kd_slot *s = &r->slots[mi];
  pthread_mutex_lock(&r->ctl);
  struct kd_version *v = reg_load(r, (uint32_t)mi, version, e);
  int rc = v ? KD_OK : (e ? e->code : KD_ERR_INVALID);
  if (v) {
    struct kd_version *old = atomic_load_explicit(&s->stable, memory_order_relaxed);
    reg_set_stable(r, (uint32_t)mi, v);
    if (old && old != v) reg_unload(r, s, old->number, "replaced");
    reg_apply_policy(r, (uint32_t)mi);
    reg_persist(r, (uint32_t)mi);
  }
  pthread_mutex_unlock(&r->ctl);
  return rc;
}

/* ---- admin operations ---- */

/* Finds model or fills e. */
static int admin_model(kd_registry *r, const char *model, struct kd_err *e) {
  int mi = kd_registry_find(r, model);
  if (mi < 0) {
    char names[256];
    names_list(r, names, sizeof names);
    kd_err_set(e, KD_ERR_NOT_FOUND, "model \"%s\" not found (models: %s)", model ? model : "", names);
  }
  return mi;
}

int kd_registry_set_canary(kd_registry *r, const char *model, int64_t version, double weight,
                           struct kd_err *e) {
  int mi = admin_model(r, model, e);
  if (mi < 0) return KD_ERR_NOT_FOUND;
  if (!(weight >= 0 && weight <= 1))
    return kd_err_set(e, KD_ERR_INVALID, "weight: expected a number in [0, 1], found %g", weight);
  if (version < 0)
    return kd_err_set(e, KD_ERR_INVALID, "version: expected > 0 (or 0: keep the current canary), found %lld",
                      (long long)version);
  struct kd_slot *s = &r->slots[mi];
  int rc = KD_OK;
  pthread_mutex_lock(&r->ctl);
  struct kd_version *st = atomic_load_explicit(&s->stable, memory_order_relaxed);
  struct kd_version *ca = atomic_load_explicit(&s->canary, memory_order_relaxed);
  struct kd_version *v = NULL;
  if (version == 0) {
    v = ca;
    if (!v) rc = kd_err_set(e, KD_REG_PRECONDITION, "model \"%s\" has no canary to re-weight (give a version)", model);
  } else if (st && st->number == version) {
    rc = kd_err_set(e, KD_ERR_INVALID, "version %lld is the stable version of model \"%s\"; a canary "
                    "must be another version", (long long)version, model);
  } else {
    v = reg_load(r, (uint32_t)mi, version, e);
    if (!v) rc = e->code == KD_ERR_NOT_FOUND ? KD_ERR_NOT_FOUND : KD_REG_PRECONDITION;
  }
  if (rc == KD_OK) {
    reg_set_canary(r, (uint32_t)mi, v, weight);
    reg_apply_policy(r, (uint32_t)mi);
    reg_persist(r, (uint32_t)mi);
    reg_log(r, KD_LOG_INFO, "canary_set", "model=%s version=%lld weight=%g previous_canary=%lld",
            s->name, (long long)v->number, weight, (long long)(ca ? ca->number : 0));
  }
  pthread_mutex_unlock(&r->ctl);
  return rc;
}

int kd_registry_promote(kd_registry *r, const char *model, struct kd_err *e) {
  int mi = admin_model(r, model, e);
  if (mi < 0) return KD_ERR_NOT_FOUND;
  struct kd_slot *s = &r->slots[mi];
  int rc = KD_OK;
  pthread_mutex_lock(&r->ctl);
  struct kd_version *ca = atomic_load_explicit(&s->canary, memory_order_relaxed);
  if (!ca) {
    rc = kd_err_set(e, KD_REG_PRECONDITION, "model \"%s\" has no canary to promote", model);
  } else {
    reg_set_stable(r, (uint32_t)mi, ca); /* one critical section: stable = canary, canary = none */
    reg_apply_policy(r, (uint32_t)mi);
    reg_persist(r, (uint32_t)mi);
  }
  pthread_mutex_unlock(&r->ctl);
  return rc;
}

int kd_registry_rollback(kd_registry *r, const char *model, struct kd_err *e) {
  int mi = admin_model(r, model, e);
  if (mi < 0) return KD_ERR_NOT_FOUND;
  struct kd_slot *s = &r->slots[mi];
  int rc = KD_OK;
  pthread_mutex_lock(&r->ctl);
  struct kd_version *st = atomic_load_explicit(&s->stable, memory_order_relaxed);
  struct kd_version *ca = atomic_load_explicit(&s->canary, memory_order_relaxed);
  if (ca) {
    reg_set_canary(r, (uint32_t)mi, NULL, 0);
    reg_log(r, KD_LOG_INFO, "canary_dropped", "model=%s version=%lld", s->name, (long long)ca->number);
  } else if (!st) {
    rc = kd_err_set(e, KD_REG_PRECONDITION, "model \"%s\" has no stable version to roll back", model);
  } else {
    /* The previous stable if known, else the newest version below the stable that loads. */
    int64_t target = s->prev_stable > 0 && s->prev_stable != st->number ? s->prev_stable : 0;
    struct kd_version *v = NULL;
    struct kd_err le = {0};
    if (target) v = reg_load(r, (uint32_t)mi, target, &le);
    if (!v) {
      int64_t *vs = NULL;
      int n = reg_list_versions(r, (uint32_t)mi, &vs);
      for (int k = 0; k < n && !v; k++)
        if (vs[k] < st->number) v = reg_load(r, (uint32_t)mi, vs[k], &le);
      free(vs);
    }
    if (!v) {
      rc = kd_err_set(e, KD_REG_PRECONDITION,
                      "model \"%s\": no earlier version than %lld loads (last error: %s)", model,
                      (long long)st->number, le.msg[0] ? le.msg : "none on disk");
    } else {
      reg_set_stable(r, (uint32_t)mi, v);
      pthread_mutex_lock(&s->mu);
      s->prev_stable = 0; /* a second rollback goes further back, not forward again */
      pthread_mutex_unlock(&s->mu);
    }
  }
  if (rc == KD_OK) {
    reg_apply_policy(r, (uint32_t)mi);
    reg_persist(r, (uint32_t)mi);
  }
  pthread_mutex_unlock(&r->ctl);
  return rc;
}

int kd_registry_reload(kd_registry *r, const char *model, struct kd_err *e) {
  if (model && model[0]) {
    int mi = admin_model(r, model, e);
    if (mi < 0) return KD_ERR_NOT_FOUND;
    pthread_mutex_lock(&r->ctl);
    reg_scan_model(r, (uint32_t)mi, 0);
    pthread_mutex_unlock(&r->ctl);
    return KD_OK;
  }
  pthread_mutex_lock(&r->ctl);
  for (uint32_t i = 0; i < r->n_models; i++) reg_scan_model(r, i, 0);
  pthread_mutex_unlock(&r->ctl);
  return KD_OK;
}

/* ---- views ---- */

uint32_t kd_version_model_index(const kd_version *v) { return v->model_index; }
const char *kd_version_model(const kd_version *v) { return v->model_name; }
int64_t kd_version_number(const kd_version *v) { return v->number; }
const char *kd_version_label(const kd_version *v) {
  int role = atomic_load_explicit(&v->role, memory_order_relaxed);
  return role == 1 ? "stable" : role == 2 ? "canary" : "";
}
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
  struct kd_version *st = atomic_load_explicit(&s->stable, memory_order_relaxed);
  struct kd_version *ca = atomic_load_explicit(&s->canary, memory_order_relaxed);
  uint32_t n = 0;
  for (uint32_t k = 0; k < s->n_recs && n < max; k++) {
    const struct reg_rec *rc = &s->recs[k];
    struct kd_version_info *o = &out[n++];
    memset(o, 0, sizeof *o);
    o->version = rc->version;
    snprintf(o->state, sizeof o->state, "%s", k_state_names[rc->state]);
    const char *lab = rc->v && rc->v == st ? "stable" : rc->v && rc->v == ca ? "canary" : "";
    snprintf(o->label, sizeof o->label, "%s", lab);
    snprintf(o->error, sizeof o->error, "%s", rc->error);
    o->loaded_unix_ms = rc->loaded_ms;
    o->checkpoint_crc = rc->crc;
    o->state_unix_ms = rc->state_ms;
    o->loading_unix_ms = rc->loading_ms;
    o->available_unix_ms = rc->available_ms;
    o->failed_unix_ms = rc->failed_ms;
    o->unloading_unix_ms = rc->unloading_ms;
  }
  pthread_mutex_unlock(&s->mu);
  return n;
}

void kd_registry_status(kd_registry *r, uint32_t i, struct kd_model_status *out) {
  memset(out, 0, sizeof *out);
  if (i >= r->n_models) return;
  struct kd_slot *s = &r->slots[i];
  pthread_mutex_lock(&s->mu);
  struct kd_version *st = atomic_load_explicit(&s->stable, memory_order_relaxed);
  struct kd_version *ca = atomic_load_explicit(&s->canary, memory_order_relaxed);
  out->stable_version = st ? st->number : 0;
  out->canary_version = ca ? ca->number : 0;
  out->canary_weight = ca ? s->weight : 0;
  out->previous_stable = s->prev_stable;
  pthread_mutex_unlock(&s->mu);
}

void kd_registry_load_counts(const kd_registry *r, uint32_t i, uint64_t *ok, uint64_t *failed) {
  *ok = *failed = 0;
  if (i >= r->n_models) return;
  *ok = atomic_load_explicit(&r->slots[i].loads_ok, memory_order_relaxed);
  *failed = atomic_load_explicit(&r->slots[i].loads_failed, memory_order_relaxed);
}
