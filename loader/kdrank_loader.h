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
 * Never leaves a partial file under path. Rejects NaN/Inf weights. Returns KD_OK or an error. */
int kd_ckpt_write(const char *path, const struct kd_model *m, const struct kd_meta *meta,
                  uint32_t n_meta, struct kd_err *e);

typedef struct kd_ckpt kd_ckpt;

/* Opens and fully verifies a checkpoint: mmaps it, checks magic, version, byte order, every
 * bound and offset, the header CRC and every tensor's CRC32C, dtype and shape against the
 * architecture, and that no weight is NaN/Inf. Any failure -> NULL with e naming the file, what
 * was wrong, the expected and the found value. The returned model's tensors point into the map. */
kd_ckpt *kd_ckpt_open(const char *path, struct kd_err *e);
/* The same over a caller buffer (copied; used by fuzzing and tests). name is used in messages. */
kd_ckpt *kd_ckpt_open_mem(const void *buf, size_t len, const char *name, struct kd_err *e);
void kd_ckpt_close(kd_ckpt *c);

const struct kd_model *kd_ckpt_model(const kd_ckpt *c);
/* CRC over header + metadata + tensor table: the checkpoint's identity. */
uint32_t kd_ckpt_crc(const kd_ckpt *c);
uint64_t kd_ckpt_file_size(const kd_ckpt *c);
uint32_t kd_ckpt_format_minor(const kd_ckpt *c);
/* All metadata entries (architecture keys included), in file order. */
uint32_t kd_ckpt_n_meta(const kd_ckpt *c);
const struct kd_meta *kd_ckpt_meta_at(const kd_ckpt *c, uint32_t i);
/* The entry with this key, or NULL. */
const struct kd_meta *kd_ckpt_meta_find(const kd_ckpt *c, const char *key);

/* CRC32C (Castagnoli), as stored in the file. */
uint32_t kd_crc32c(uint32_t crc, const void *buf, size_t len);

#ifdef __cplusplus
}
#endif
#endif
