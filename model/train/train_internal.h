/* train_internal.h - private helpers shared by the trainer's files (not part of the contract). */
#ifndef KD_TRAIN_INTERNAL_H
#define KD_TRAIN_INTERNAL_H

#include "kdrank_train.h"

/* Streaming 64-bit hash (fingerprints, cache checksums). Not cryptographic. */
struct kd_hash {
  uint64_t acc, total;
  unsigned char pend[8];
  size_t n;
};
void kd_hash_init(struct kd_hash *h);
void kd_hash_update(struct kd_hash *h, const void *buf, size_t len);
uint64_t kd_hash_final(struct kd_hash *h);

/* temp file in the same dir -> fsync -> rename -> fsync(dir). */
int kd_write_file_atomic(const char *path, const void *buf, size_t len, struct kd_err *e);
int kd_fsync_dir(const char *dir);
/* mkdir -p (mode 0755). */
int kd_mkdirs(const char *dir, struct kd_err *e);

/* Small deterministic PRNG (splitmix64 stream). */
struct kd_rng {
  uint64_t s;
};
static inline uint64_t kd_rng_u64(struct kd_rng *r) {
  uint64_t z = (r->s += 0x9E3779B97F4A7C15ull);
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return z ^ (z >> 31);
}
static inline double kd_rng_unif(struct kd_rng *r) { return (double)(kd_rng_u64(r) >> 11) * 0x1.0p-53; }
double kd_rng_normal(struct kd_rng *r);
/* Seeded Fisher-Yates shuffle. */
void kd_shuffle_u64(uint64_t *v, uint64_t n, struct kd_rng *r);

double kd_now(void);

/* Schema builders (generators, converters): a column, a feature column, a label column. */
void kd_sc(struct kd_schema *s, const char *name, uint32_t role, int32_t index);
void kd_sf(struct kd_schema *s, const char *name, uint32_t kind, uint32_t group, uint32_t dim, uint64_t rows);
void kd_st(struct kd_schema *s, const char *name, uint32_t type, uint32_t xform);
#endif
