/* ckpt_bytes.h - test helpers that edit checkpoint bytes by hand, written from loader/FORMAT.md
 * (the offsets below are the document's, not the loader's private header), so a test can
 * corrupt one thing and re-seal every CRC: then only the check under test can catch it.
 * Also used by the fuzz target, so every helper is bounds-safe on arbitrary bytes. */
#ifndef KD_TEST_CKPT_BYTES_H
#define KD_TEST_CKPT_BYTES_H

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "kdrank_loader.h"

/* FORMAT.md, "Header": field offsets. */
#define KDT_H_MAJOR 4
#define KDT_H_MINOR 6
#define KDT_H_BOM 8
#define KDT_H_HSIZE 12
#define KDT_H_FSIZE 16
#define KDT_H_META_OFF 24
#define KDT_H_META_SIZE 32
#define KDT_H_N_META 40
#define KDT_H_N_TENSORS 44
#define KDT_H_TAB_OFF 48
#define KDT_H_TAB_SIZE 56
#define KDT_H_ENTRY_SIZE 64
#define KDT_H_DATA_OFF 72
#define KDT_H_DATA_SIZE 80
#define KDT_H_META_CRC 88
#define KDT_H_TAB_CRC 92
#define KDT_H_CRC 124
/* FORMAT.md, "Tensor table". */
#define KDT_E_NDIM 100
#define KDT_E_SHAPE 104
#define KDT_E_OFFSET 136
#define KDT_E_SIZE 144
#define KDT_E_CRC 152

static inline uint32_t kdt_ld32(const unsigned char *p) { uint32_t v; memcpy(&v, p, 4); return v; }
static inline uint64_t kdt_ld64(const unsigned char *p) { uint64_t v; memcpy(&v, p, 8); return v; }
static inline void kdt_st16(unsigned char *p, uint16_t v) { memcpy(p, &v, 2); }
static inline void kdt_st32(unsigned char *p, uint32_t v) { memcpy(p, &v, 4); }
static inline void kdt_st64(unsigned char *p, uint64_t v) { memcpy(p, &v, 8); }

/* [off, off+size) inside [0, len)? */
static inline int kdt_in(uint64_t off, uint64_t size, size_t len) { return off <= len && size <= len - off; }

/* Recomputes, in dependency order, every CRC the format stores: each tensor's (when
 * tensors != 0), the table's, the metadata's, the header's and the end marker's. Fields that
 * point outside the buffer are left alone. */
static inline void kdt_reseal(unsigned char *b, size_t len, int tensors) {
  if (len < 128) return;
  uint32_t hsize = kdt_ld32(b + KDT_H_HSIZE);
  if (hsize < 128 || hsize > len || hsize > 4096) hsize = 128;
  uint64_t moff = kdt_ld64(b + KDT_H_META_OFF), msize = kdt_ld64(b + KDT_H_META_SIZE);
  uint64_t toff = kdt_ld64(b + KDT_H_TAB_OFF), tsize = kdt_ld64(b + KDT_H_TAB_SIZE);
  uint64_t doff = kdt_ld64(b + KDT_H_DATA_OFF);
  uint32_t esize = kdt_ld32(b + KDT_H_ENTRY_SIZE), nt = kdt_ld32(b + KDT_H_N_TENSORS);
  int tab_ok = kdt_in(toff, tsize, len);
  if (tensors && tab_ok && esize >= 160 && esize <= 4096) {
    for (uint64_t i = 0; i < nt && (i + 1) * esize <= tsize; i++) {
      unsigned char *r = b + toff + i * esize;
      uint64_t off = kdt_ld64(r + KDT_E_OFFSET), sz = kdt_ld64(r + KDT_E_SIZE);
      if (doff <= len && kdt_in(off, sz, len - doff)) kdt_st32(r + KDT_E_CRC, kd_crc32c(0, b + doff + off, sz));
    }
  }
  if (tab_ok) kdt_st32(b + KDT_H_TAB_CRC, kd_crc32c(0, b + toff, tsize));
  int meta_ok = kdt_in(moff, msize, len);
  if (meta_ok) kdt_st32(b + KDT_H_META_CRC, kd_crc32c(0, b + moff, msize));
  /* Header CRC: over hsize bytes with the CRC field taken as zero. */
  kdt_st32(b + KDT_H_CRC, 0);
  kdt_st32(b + KDT_H_CRC, kd_crc32c(0, b, hsize));
  uint64_t fsize = kdt_ld64(b + KDT_H_FSIZE);
  if (fsize >= 16 && fsize <= len && meta_ok && tab_ok) {
    uint32_t c = kd_crc32c(0, b, hsize);
    c = kd_crc32c(c, b + moff, msize);
    c = kd_crc32c(c, b + toff, tsize);
    kdt_st32(b + fsize - 16 + 8, c);
  }
}

/* The table record of the tensor named name, or NULL. */
static inline unsigned char *kdt_entry(unsigned char *b, size_t len, const char *name) {
  uint64_t toff = kdt_ld64(b + KDT_H_TAB_OFF);
  uint32_t esize = kdt_ld32(b + KDT_H_ENTRY_SIZE), nt = kdt_ld32(b + KDT_H_N_TENSORS);
  for (uint32_t i = 0; i < nt; i++) {
    unsigned char *r = b + toff + (uint64_t)i * esize;
    if (!kdt_in(toff + (uint64_t)i * esize, 160, len)) return NULL;
    if (!strncmp((const char *)r, name, 96)) return r;
  }
  return NULL;
}

/* The bytes of tensor name (inside b), or NULL. */
static inline unsigned char *kdt_tensor(unsigned char *b, size_t len, const char *name) {
  unsigned char *r = kdt_entry(b, len, name);
  if (!r) return NULL;
  return b + kdt_ld64(b + KDT_H_DATA_OFF) + kdt_ld64(r + KDT_E_OFFSET);
}

/* The value bytes of metadata key (after its type field), or NULL. Walks the entries. */
static inline unsigned char *kdt_meta_value(unsigned char *b, size_t len, const char *key, uint32_t *type) {
  uint64_t moff = kdt_ld64(b + KDT_H_META_OFF), msize = kdt_ld64(b + KDT_H_META_SIZE);
  uint32_t n = kdt_ld32(b + KDT_H_N_META);
  if (!kdt_in(moff, msize, len)) return NULL;
  unsigned char *p = b + moff, *end = p + msize;
  for (uint32_t i = 0; i < n && end - p >= 4; i++) {
    uint32_t kl = kdt_ld32(p);
    if ((uint64_t)(end - p) < 8ull + kl) return NULL;
    int hit = strlen(key) == kl && !memcmp(p + 4, key, kl);
    uint32_t t = kdt_ld32(p + 4 + kl);
    unsigned char *v = p + 8 + kl;
    if (hit) { *type = t; return v; }
    uint64_t vs = t == 0 || t == 3 ? 4 : t == 5 ? 1 : t == 6 ? 8 : 8;
    if (t == 6) {
      if (end - v < 8) return NULL;
      vs += kdt_ld64(v);
    }
    if ((uint64_t)(end - v) < vs) return NULL;
    p = v + vs;
  }
  return NULL;
}

/* Reads a whole file; NULL on error. */
static inline unsigned char *kdt_read(const char *path, size_t *len) {
  FILE *f = fopen(path, "rb");
  if (!f) return NULL;
  fseek(f, 0, SEEK_END);
  long n = ftell(f);
  fseek(f, 0, SEEK_SET);
  unsigned char *b = malloc(n > 0 ? (size_t)n : 1);
  if (b && fread(b, 1, (size_t)n, f) != (size_t)n) { free(b); b = NULL; }
  fclose(f);
  *len = (size_t)n;
  return b;
}

static inline int kdt_write(const char *path, const void *b, size_t len) {
  FILE *f = fopen(path, "wb");
  if (!f) return -1;
  size_t w = fwrite(b, 1, len, f);
  return fclose(f) == 0 && w == len ? 0 : -1;
}

/* A very small valid architecture (a checkpoint of ~2 KB) for exhaustive and fuzz tests. */
static inline void kdt_micro_arch(struct kd_arch *a) {
  memset(a, 0, sizeof *a);
  snprintf(a->name, sizeof a->name, "micro");
  a->n_features = 2;
  snprintf(a->features[0].name, KD_NAME_MAX, "ctx");
  a->features[0].kind = KD_FEAT_DENSE; a->features[0].group = KD_GROUP_CONTEXT; a->features[0].dim = 2;
  snprintf(a->features[1].name, KD_NAME_MAX, "item");
  a->features[1].kind = KD_FEAT_SPARSE; a->features[1].group = KD_GROUP_CANDIDATE; a->features[1].dim = 2;
  a->features[1].rows = 5;
  a->n_shared = 1; a->shared[0] = 3;
  a->n_tower = 1; a->tower[0] = 2;
  a->n_tasks = 2;
  snprintf(a->tasks[0].name, KD_NAME_MAX, "click"); a->tasks[0].served = 1;
  snprintf(a->tasks[1].name, KD_NAME_MAX, "dwell"); a->tasks[1].type = KD_TASK_REGRESSION;
  a->tasks[1].xform = KD_XFORM_LOG1P; a->tasks[1].served = 0;
  a->act_clip = 6.0f;
}

#endif
