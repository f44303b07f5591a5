/* kdrank_loader.h - the loader's contract: checkpoint files (read, verify, write atomically).
 * The format is specified in loader/FORMAT.md. The model repository, version registry and
 * canary state are below.
 *
 * Thread safety: an open kd_ckpt is immutable and may be read by any number of threads.
 */
#ifndef KDRANK_LOADER_H
#define KDRANK_LOADER_H

#include <stddef.h>
#include <stdint.h>

#include "kdrank_model.h"

#ifdef __cplusplus
extern "C" {
#endif

/* Typed metadata values (append-only enum: values are stored in files). */
enum kd_meta_type {
  KD_META_U32 = 0,
  KD_META_U64 = 1,
  KD_META_I64 = 2,
  KD_META_F32 = 3,
  KD_META_F64 = 4,
  KD_META_BOOL = 5,
  KD_META_STR = 6,
};

/* One metadata entry. Keys are dotted ASCII ("provenance.teacher_id"). For STR, s points to
 * NUL-terminated UTF-8 (owned by the checkpoint when read, by the caller when written). */
struct kd_meta {
  const char *key;
  uint32_t type; /* enum kd_meta_type */
  union {
    uint64_t u;  /* U32, U64, BOOL */
    int64_t i;   /* I64 */
    double f;    /* F32, F64 */
    const char *s;
  } v;
};

/* Writes model m (architecture + weights) and the extra metadata (typically "provenance.*"
 * keys: trainer_version, teacher_id, teacher_version, distill_mode, data_fingerprint, metrics
 * JSON...) to path atomically: temp file in the same directory -> fsync -> rename -> fsync(dir).
 * Never leaves a partial file under path; on failure the temp file is removed and a previous
 * file at path is untouched. Rejects (KD_ERR_INVALID, nothing written): an invalid architecture
 * or one whose tensor count differs from m->n_tensors, a NULL tensor, a NaN/Inf weight (the
 * message names the tensor and element), metadata keys that are not 1..255 chars of
 * [A-Za-z0-9_.-], duplicated, or in the reserved arch.* / general.* namespaces (except
 * "general.name", a non-empty string naming the model; default: the architecture name), unknown
 * types, strings that are not UTF-8. I/O failures -> KD_ERR_IO naming the path and errno text.
 * The caller keeps ownership of m and meta. Output bytes are deterministic for the same input.
 * Thread-safe for distinct paths. Returns KD_OK or an error code (e filled). */
int kd_ckpt_write(const char *path, const struct kd_model *m, const struct kd_meta *meta,
                  uint32_t n_meta, struct kd_err *e);

typedef struct kd_ckpt kd_ckpt;

/* Opens and fully verifies a checkpoint: mmaps it (read-only), checks magic, version, byte order,
 * every bound and offset, the header CRC and every tensor's CRC32C, dtype and shape against the
 * architecture, and that no weight is NaN/Inf (FORMAT.md, "What a reader verifies"). Any failure
 * -> NULL with e naming the file, what was wrong, the expected and the found value; codes:
 * KD_ERR_NOT_FOUND (no such file), KD_ERR_IO (open/stat/mmap), KD_ERR_INVALID (not a regular
 * file), KD_ERR_UNSUPPORTED (another major version, big-endian), KD_ERR_CORRUPT (everything
 * else), KD_ERR_NOMEM. Never reads outside the file on any content. The returned model's tensors
 * point into the read-only map: never write through them. The file must not be truncated in place
 * while open (writers replace files by rename, which is safe). Free with kd_ckpt_close. */
kd_ckpt *kd_ckpt_open(const char *path, struct kd_err *e);
/* The same over a caller buffer (copied into 64-byte aligned memory, so buf may be freed after
 * the call; used by fuzzing and tests). name is used in messages ("(memory)" when NULL). */
kd_ckpt *kd_ckpt_open_mem(const void *buf, size_t len, const char *name, struct kd_err *e);
/* Releases the checkpoint, its model view, map and metadata. NULL is a no-op. Pointers obtained
 * from the accessors below die with it. */
void kd_ckpt_close(kd_ckpt *c);

/* The verified model (architecture and tensor views), owned by c. */
const struct kd_model *kd_ckpt_model(const kd_ckpt *c);
/* CRC over header + metadata + tensor table (stored in the end marker): the checkpoint's
 * identity, e.g. VersionInfo.checkpoint_crc. Two files with equal CRCs hold the same model (the
 * table holds every tensor's CRC32C). */
uint32_t kd_ckpt_crc(const kd_ckpt *c);
/* Size of the file in bytes. */
uint64_t kd_ckpt_file_size(const kd_ckpt *c);
/* The file's format minor version (the major is always KD_CKPT_FORMAT_MAJOR). */
uint32_t kd_ckpt_format_minor(const kd_ckpt *c);
#define KD_CKPT_FORMAT_MAJOR 1
/* All metadata entries (general.*, arch.* and the writer's extra keys), in file order. Entries
 * and their strings are owned by c. kd_ckpt_meta_at returns NULL when i >= kd_ckpt_n_meta. */
uint32_t kd_ckpt_n_meta(const kd_ckpt *c);
const struct kd_meta *kd_ckpt_meta_at(const kd_ckpt *c, uint32_t i);
/* The entry with this key, or NULL (binary search, O(log n)). "general.name" always exists. */
const struct kd_meta *kd_ckpt_meta_find(const kd_ckpt *c, const char *key);

/* CRC32C (Castagnoli, reflected 0x82F63B78), as stored in the file. Chainable:
 * kd_crc32c(kd_crc32c(0, a, n), b, m) equals the CRC of a then b; start with crc = 0.
 * Uses the SSE4.2 instruction when the CPU has it. Thread-safe. */
uint32_t kd_crc32c(uint32_t crc, const void *buf, size_t len);


/* ---- Model repository and version registry (loader/registry.c, loader/watch.c) ----
 *
 * Layout: <repo>/<model>/<version>/model.kdr, <model> a name of [A-Za-z0-9._-] (< KD_NAME_MAX
 * bytes), <version> a positive decimal integer; <repo>/<model>/serving.json holds the persisted
 * serving state (stable, canary, canary_weight, previous_stable, newest_seen; written atomically).
 * kd_registry_open scans the repository: per model it loads the saved stable and canary (when
 * params.persist and the file exists), then the newest version that verifies if it is newer than
 * every version seen before (or if nothing else loaded). A version that fails is logged, recorded
 * as FAILED with its error and skipped; the serving version keeps serving.
 *
 * A loaded version is a kd_version: the open (mmapped, fully verified) checkpoint, its kd_plan,
 * one kd_scratch per worker slot, warmed up by scoring synthetic batches, and an atomic reference
 * count. Per model the registry routes to a `stable` version and an optional `canary` (one atomic
 * pointer each) and keeps the latest N loaded (params.keep_loaded, default 2 = stable + canary
 * or a warm rollback target); older versions are unloaded.
 *
 * Pinning: readers take a reference (kd_registry_route/acquire) and drop it with
 * kd_registry_release. Choosing the version and incrementing its count happen inside a per-model
 * mutex that every pointer change also takes, so no reader can pick a version whose registry
 * reference is being dropped; the section is a few loads, a hash compare and an increment (tens
 * of ns, never I/O: versions are built outside every lock on the background thread). Why a
 * reference count and not RCU: (1) memory comes back deterministically when the LAST call on the
 * old version ends, not after a grace period that every worker thread must pass through (a worker
 * parked in a long call would hold back every retired version's ~checkpoint-sized memory); (2) no
 * quiescent-state bookkeeping on the hot path and no liburcu dependency; (3) one version may be
 * held across a whole call (decode, score, encode) on a thread that also blocks in the gRPC
 * core, which RCU read sections are not meant for. The cost, two atomic RMWs per call on a line
 * shared by the workers, is small next to a gRPC round trip (100+ us). The last release hands
 * the version to the background thread (when watching), which frees plan, metadata and scratches
 * and asks the allocator to return the memory.
 *
 * Canary routing: with a canary of weight w, a request with routing_key k != 0 goes to the canary
 * when splitmix64(k ^ fnv1a(model)) < w * 2^64 (sticky: the same key and weight always give the
 * same version); key 0 draws a per-thread random number per request. Pins: pin_version (that
 * exact loaded version) or pin_label "stable"/"canary".
 *
 * Thread safety: route/acquire/release/available/versions/status may be called from any thread
 * at any time; loads, publishes and admin operations are serialised by a registry mutex and may
 * run concurrently with readers; open/free/watch_start/watch_stop are single-threaded (stop the
 * serving threads before watch_stop or free).
 */
typedef struct kd_registry kd_registry;
typedef struct kd_version kd_version;

/* Log levels of the registry's log callback (the server maps them to its own logger). */
enum kd_log_level { KD_LOG_ERROR = 0, KD_LOG_WARN = 1, KD_LOG_INFO = 2, KD_LOG_DEBUG = 3 };

/* The model exists but has no available version (the server answers UNAVAILABLE). Returned in
 * kd_err.code by kd_registry_acquire; outside enum kd_status so that enum stays the model core's. */
#define KD_REG_UNAVAILABLE (-100)
/* An admin operation cannot apply in the current state (no canary to promote, nothing to roll
 * back to, the version does not load): FAILED_PRECONDITION. */
#define KD_REG_PRECONDITION (-101)

struct kd_registry_params {
  const char *repo;         /* repository directory (required) */
  uint32_t max_cand;        /* scratch capacity in candidates (>= 1) */
  uint32_t n_scratch;       /* kd_scratch slots per version, e.g. one per worker thread (>= 1) */
  int kernel;               /* enum kd_kernel for kd_plan_create */
  /* Optional logger: one event per call, kv is a "key=value key=value" string. */
  void (*log)(void *ctx, int level, const char *event, const char *kv);
  void *log_ctx;
  uint32_t keep_loaded;     /* versions kept loaded per model (0: 2 = stable + canary) */
  int auto_promote;         /* 1: a newly found version becomes stable once loaded; 0: it only
                               loads (AVAILABLE, no label) until SetCanary/Promote */
  int persist;              /* 1: read and write <repo>/<model>/serving.json */
};

/* Opens the repository and loads every model's serving versions (see above). A missing or
 * unreadable repository, or bad params, is an error (NULL, e filled). A model whose versions all
 * fail is still registered, with no available version. Free with kd_registry_free. */
kd_registry *kd_registry_open(struct kd_registry_params p, struct kd_err *e);
/* Stops the watcher (if started), drops the registry's references and frees it. Every acquired
 * version must be released first. */
void kd_registry_free(kd_registry *r);

struct kd_registry_watch_params {
  long long rescan_interval_ms; /* periodic rescan (fallback for missed events); 0: none */
  int no_inotify;               /* 1: rescans only */
  void (*trim)(void);           /* returns freed memory to the OS after a version is freed
                                   (default: malloc_trim(0)); e.g. a jemalloc purge */
};
/* Starts the background thread: inotify on the repository, model and version directories
 * (IN_CREATE, IN_MOVED_TO, IN_CLOSE_WRITE) plus the periodic rescan; new versions are loaded,
 * verified, warmed up and published there, and versions whose last reference is gone are freed
 * there. Returns KD_OK or an error. */
int kd_registry_watch_start(kd_registry *r, struct kd_registry_watch_params p, struct kd_err *e);
/* Stops and joins the background thread (no-op when not started). */
void kd_registry_watch_stop(kd_registry *r);

/* Models, in name order; indexes are stable for the registry's life. */
uint32_t kd_registry_n_models(const kd_registry *r);
const char *kd_registry_model_name(const kd_registry *r, uint32_t i);
/* Index of the model with this name, or -1. */
int kd_registry_find(const kd_registry *r, const char *name);
/* 1 if model i has an available stable version now (lock-free peek), else 0. */
int kd_registry_available(const kd_registry *r, uint32_t i);

/* A reference to the version of `model` that serves this request: pin_version > 0 selects that
 * exact loaded version (with pin_label also set, it must carry that label), else pin_label
 * "stable"/"canary" selects by label, else routing (sticky canary by routing_key, see above).
 * *label (may be NULL) receives "stable", "canary" or "" (a pinned version with no label): the
 * label that answered. Returns NULL with e->code = KD_ERR_NOT_FOUND (unknown model, version or
 * label, no canary; the message names what was asked and what exists) or KD_REG_UNAVAILABLE (no
 * version loaded). The caller must kd_registry_release the result. Never blocks on I/O. */
kd_version *kd_registry_route(kd_registry *r, const char *model, uint64_t routing_key,
                              int64_t pin_version, const char *pin_label, const char **label,
                              struct kd_err *e);
/* kd_registry_route without the label. */
kd_version *kd_registry_acquire(kd_registry *r, const char *model, uint64_t routing_key,
                                int64_t pin_version, const char *pin_label, struct kd_err *e);
/* Drops a reference; the last one frees the version (on the background thread when watching,
 * else inline). NULL is a no-op. */
void kd_registry_release(kd_version *v);

/* Loads <repo>/<model>/<version>/model.kdr on the calling thread (outside the routing lock) and
 * makes it the stable version; the previous stable is unloaded (freed when its last reader
 * releases it). Returns KD_OK or an error (serving unchanged on error). */
int kd_registry_load_version(kd_registry *r, const char *model, int64_t version, struct kd_err *e);

/* Admin operations: each is atomic for readers (one pointer change under the routing lock),
 * logged, and persisted to serving.json (params.persist). Errors: KD_ERR_NOT_FOUND (model or
 * version), KD_ERR_INVALID (bad weight, canary = stable), KD_REG_PRECONDITION (see above). */
/* Sets the canary to `version` (loaded on the calling thread if needed; 0: keep the current
 * canary and change only its weight) with share weight in [0, 1]. */
int kd_registry_set_canary(kd_registry *r, const char *model, int64_t version, double weight,
                           struct kd_err *e);
/* Canary becomes stable (the old stable is kept loaded as the rollback target while N allows). */
int kd_registry_promote(kd_registry *r, const char *model, struct kd_err *e);
/* Drops the canary if there is one; else makes the previous stable (or the newest version below
 * the stable that loads) stable again. */
int kd_registry_rollback(kd_registry *r, const char *model, struct kd_err *e);
/* Rescans model (NULL/"" : every model) now and loads/publishes new versions. */
int kd_registry_reload(kd_registry *r, const char *model, struct kd_err *e);

/* What a loaded version carries. All pointers stay valid while the reference is held. */
uint32_t kd_version_model_index(const kd_version *v);
const char *kd_version_model(const kd_version *v);
int64_t kd_version_number(const kd_version *v);
/* Its current role: "stable", "canary" or "" (kd_registry_route gives the label that routed). */
const char *kd_version_label(const kd_version *v);
uint32_t kd_version_crc(const kd_version *v);        /* kd_ckpt_crc of its checkpoint */
uint64_t kd_version_file_bytes(const kd_version *v); /* checkpoint file size */
/* The checkpoint's metadata entries (copied at load, file order); NULL past the end. */
uint32_t kd_version_n_meta(const kd_version *v);
const struct kd_meta *kd_version_meta_at(const kd_version *v, uint32_t i);
const kd_plan *kd_version_plan(const kd_version *v);
const struct kd_arch *kd_version_arch(const kd_version *v);
/* Scratch slot (0 <= slot < n_scratch): one thread at a time per slot. */
kd_scratch *kd_version_scratch(const kd_version *v, uint32_t slot);
int64_t kd_version_loaded_unix_ms(const kd_version *v);

/* A version the registry knows of (loading, loaded, failed or unloading), for metadata/admin. */
struct kd_version_info {
  int64_t version;
  char state[16];           /* LOADING | AVAILABLE | FAILED | UNLOADING */
  char label[16];           /* "stable", "canary" or "" */
  char error[256];          /* set when FAILED */
  int64_t loaded_unix_ms;
  uint32_t checkpoint_crc;
  int64_t state_unix_ms;    /* when it entered its current state */
  int64_t loading_unix_ms, available_unix_ms, failed_unix_ms, unloading_unix_ms; /* 0: never */
};
/* Copies up to max records of model i (newest first) into out; returns the number copied. */
uint32_t kd_registry_versions(kd_registry *r, uint32_t i, struct kd_version_info *out, uint32_t max);
/* Load attempts of model i since open: successes and failures. */
void kd_registry_load_counts(const kd_registry *r, uint32_t i, uint64_t *ok, uint64_t *failed);

/* Serving state of model i (0: none). */
struct kd_model_status {
  int64_t stable_version, canary_version, previous_stable;
  double canary_weight;
};
void kd_registry_status(kd_registry *r, uint32_t i, struct kd_model_status *out);

#ifdef __cplusplus
}
#endif
#endif
