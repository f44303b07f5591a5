/* kdrank_loader.h - the loader's contract: checkpoint files (read, verify, write atomically).
 * The format is specified in loader/FORMAT.md. The model repository and version registry are
 * below; canary state joins this header when it is built.
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


/* ---- Model repository and version registry (loader/registry.c) ----
 *
 * Layout: <repo>/<model>/<version>/model.kdr, <model> a name of [A-Za-z0-9._-] (< KD_NAME_MAX
 * bytes), <version> a positive decimal integer. kd_registry_open scans the repository and, for
 * each model, loads the highest version that verifies (a failing one is logged, recorded as
 * FAILED and skipped). A loaded version is a kd_version: its kd_plan, a copy of the checkpoint's
 * metadata, one kd_scratch per worker slot and an atomic reference count. The checkpoint itself is
 * closed once the plan is built (the plan copies the weights): a version's memory is the plan's.
 *
 * Each model's current ("stable") version is ONE atomic pointer. Readers call kd_registry_acquire
 * (which takes a reference) and kd_registry_release when done; a swap is a single atomic exchange
 * of that pointer, after which the registry drops its own reference to the old version; the old
 * version is freed by whoever drops the last reference. The acquire protocol (pointer load +
 * reference increment) runs under a per-model mutex that the swap also takes around its exchange,
 * so no reader can load a pointer whose last reference is being dropped concurrently: the
 * critical section is a load and an increment (tens of ns, uncontended except against other
 * readers of the same model, never against I/O: versions are built outside the lock).
 * Lock-free peeks (kd_registry_available) read the pointer with acquire ordering but never
 * dereference it.
 *
 * Thread safety: acquire/release/available/versions may be called from any thread at any time;
 * kd_registry_load_version may run concurrently with them; open/free are single-threaded.
 */
typedef struct kd_registry kd_registry;
typedef struct kd_version kd_version;

/* Log levels of the registry's log callback (the server maps them to its own logger). */
enum kd_log_level { KD_LOG_ERROR = 0, KD_LOG_WARN = 1, KD_LOG_INFO = 2, KD_LOG_DEBUG = 3 };

/* The model exists but has no available version (the server answers UNAVAILABLE). Returned in
 * kd_err.code by kd_registry_acquire; outside enum kd_status so that enum stays the model core's. */
#define KD_REG_UNAVAILABLE (-100)

struct kd_registry_params {
  const char *repo;         /* repository directory (required) */
  uint32_t max_cand;        /* scratch capacity in candidates (>= 1) */
  uint32_t n_scratch;       /* kd_scratch slots per version, e.g. one per worker thread (>= 1) */
  int kernel;               /* enum kd_kernel for kd_plan_create */
  /* Optional logger: one event per call, kv is a "key=value key=value" string. */
  void (*log)(void *ctx, int level, const char *event, const char *kv);
  void *log_ctx;
};

/* Opens the repository and loads every model's latest valid version. A missing or unreadable
 * repository, or bad params, is an error (NULL, e filled). A model whose versions all fail is still
 * registered, with no available version. Returns the registry (free with kd_registry_free). */
kd_registry *kd_registry_open(struct kd_registry_params p, struct kd_err *e);
/* Drops the registry's references and frees it. Every acquired version must be released first. */
void kd_registry_free(kd_registry *r);

/* Models, in name order; indexes are stable for the registry's life. */
uint32_t kd_registry_n_models(const kd_registry *r);
const char *kd_registry_model_name(const kd_registry *r, uint32_t i);
/* Index of the model with this name, or -1. */
int kd_registry_find(const kd_registry *r, const char *name);
/* 1 if model i has an available version now (lock-free peek), else 0. */
int kd_registry_available(const kd_registry *r, uint32_t i);

/* A reference to the version of `model` that serves this request: pin_version > 0 selects that
 * exact version, else pin_label ("stable", or NULL/"" for the default routing; "canary" when a
 * canary exists) selects by label, else routing_key routes (today: always stable; the canary
 * issue makes it sticky per key). Returns NULL with e->code = KD_ERR_NOT_FOUND (unknown model,
 * version or label; the message names what was asked and what exists) or KD_REG_UNAVAILABLE
 * (no version loaded). The caller must kd_registry_release the result. Never blocks on I/O. */
kd_version *kd_registry_acquire(kd_registry *r, const char *model, uint64_t routing_key,
                                int64_t pin_version, const char *pin_label, struct kd_err *e);
/* Drops a reference; the last one frees the version (checkpoint, plan, scratches). NULL is a no-op. */
void kd_registry_release(kd_version *v);

/* Loads <repo>/<model>/<version>/model.kdr (outside any lock), then makes it the model's current
 * version with one atomic exchange and releases the previous one. For tests today; the hot-swap
 * issue calls it from its background loader. Returns KD_OK or an error (the current version is
 * unchanged on error). */
int kd_registry_load_version(kd_registry *r, const char *model, int64_t version, struct kd_err *e);

/* What a loaded version carries. All pointers stay valid while the reference is held. */
uint32_t kd_version_model_index(const kd_version *v);
const char *kd_version_model(const kd_version *v);
int64_t kd_version_number(const kd_version *v);
const char *kd_version_label(const kd_version *v); /* "stable" (canary later) */
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

/* A version the registry knows of (loaded or failed), for metadata and admin. */
struct kd_version_info {
  int64_t version;
  char state[16];           /* LOADING | AVAILABLE | FAILED | UNLOADING */
  char label[16];           /* "stable", "canary" or "" */
  char error[256];          /* set when FAILED */
  int64_t loaded_unix_ms;
  uint32_t checkpoint_crc;
};
/* Copies up to max records of model i (newest first) into out; returns the number copied. */
uint32_t kd_registry_versions(kd_registry *r, uint32_t i, struct kd_version_info *out, uint32_t max);
/* Load attempts of model i since open: successes and failures. */
void kd_registry_load_counts(const kd_registry *r, uint32_t i, uint64_t *ok, uint64_t *failed);

#ifdef __cplusplus
}
#endif
#endif
