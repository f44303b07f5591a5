/* kdrank_loader.h - the loader's contract: checkpoint files (read, verify, write atomically).
 * The format is specified in loader/FORMAT.md. The model repository, the version registry and
 * canary state join this header as they are built.
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

#ifdef __cplusplus
}
#endif
#endif
