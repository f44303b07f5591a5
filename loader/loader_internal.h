/* loader_internal.h - private to loader/: the checkpoint format's constants and byte offsets
 * (loader/FORMAT.md is the specification; this header mirrors it) and CRC32C variants. */
#ifndef KD_LOADER_INTERNAL_H
#define KD_LOADER_INTERNAL_H

#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include "kdrank_loader.h"

#define KD_CKPT_MAGIC "KDRK"
#define KD_CKPT_MAJOR 1
#define KD_CKPT_MINOR 0
#define KD_CKPT_BOM 0x0A0B0C0Du
#define KD_CKPT_BOM_SWAPPED 0x0D0C0B0Au
#define KD_CKPT_HEADER_SIZE 128u   /* major 1 writers; readers accept 128..4096, multiple of 8 */
#define KD_CKPT_HEADER_MAX 4096u
#define KD_CKPT_ENTRY_SIZE 160u    /* tensor table record; readers accept >= 160, multiple of 8 */
#define KD_CKPT_ENTRY_MAX 4096u
#define KD_CKPT_ALIGN 64u
#define KD_CKPT_END_MAGIC "KDRK-END"
#define KD_CKPT_END_SIZE 16u
#define KD_CKPT_DTYPE_F32 0u
#define KD_CKPT_MAX_DIMS 4u
#define KD_CKPT_TNAME 96u          /* tensor name field, NUL padded */
#define KD_CKPT_KEY_MAX 255u       /* metadata key length */

/* Header field offsets (all little-endian). */
enum {
  KD_H_MAGIC = 0,       /* char[4] "KDRK" */
  KD_H_MAJOR = 4,       /* u16 */
  KD_H_MINOR = 6,       /* u16 */
  KD_H_BOM = 8,         /* u32 0x0A0B0C0D */
  KD_H_HEADER_SIZE = 12,/* u32 */
  KD_H_FILE_SIZE = 16,  /* u64 */
  KD_H_META_OFF = 24,   /* u64 */
  KD_H_META_SIZE = 32,  /* u64 */
  KD_H_N_META = 40,     /* u32 */
  KD_H_N_TENSORS = 44,  /* u32 */
  KD_H_TAB_OFF = 48,    /* u64 */
  KD_H_TAB_SIZE = 56,   /* u64 */
  KD_H_ENTRY_SIZE = 64, /* u32 */
  KD_H_ALIGN = 68,      /* u32 */
  KD_H_DATA_OFF = 72,   /* u64 */
  KD_H_DATA_SIZE = 80,  /* u64 */
  KD_H_META_CRC = 88,   /* u32 */
  KD_H_TAB_CRC = 92,    /* u32 */
  KD_H_RESERVED = 96,   /* 28 bytes, zero in 1.0 */
  KD_H_CRC = 124,       /* u32: CRC32C of the header_size bytes with this field read as 0 */
};

/* Tensor table record field offsets. */
enum {
  KD_E_NAME = 0,      /* char[96], NUL padded */
  KD_E_DTYPE = 96,    /* u32 */
  KD_E_NDIM = 100,    /* u32 */
  KD_E_SHAPE = 104,   /* u64[4], unused dims 0 */
  KD_E_OFFSET = 136,  /* u64, from data_offset */
  KD_E_SIZE = 144,    /* u64 bytes */
  KD_E_CRC = 152,     /* u32 CRC32C of the tensor's bytes */
  KD_E_RESERVED = 156,/* u32 */
};

/* Little-endian loads and stores at any alignment (x86-64 is little-endian; the byte-order
 * mark rejects files from elsewhere). */
static inline uint16_t kd_ld16(const unsigned char *p) { uint16_t v; memcpy(&v, p, 2); return v; }
static inline uint32_t kd_ld32(const unsigned char *p) { uint32_t v; memcpy(&v, p, 4); return v; }
static inline uint64_t kd_ld64(const unsigned char *p) { uint64_t v; memcpy(&v, p, 8); return v; }
static inline void kd_st16(unsigned char *p, uint16_t v) { memcpy(p, &v, 2); }
static inline void kd_st32(unsigned char *p, uint32_t v) { memcpy(p, &v, 4); }
static inline void kd_st64(unsigned char *p, uint64_t v) { memcpy(p, &v, 8); }

/* CRC32C implementations (same results): table-driven, and SSE4.2 (falls back to the table
 * version off x86-64). kd_crc32c() picks one at first use. */
uint32_t kd_crc32c_sw(uint32_t crc, const void *buf, size_t len);
uint32_t kd_crc32c_hw(uint32_t crc, const void *buf, size_t len);
int kd_crc32c_hw_available(void);

/* The header CRC: CRC32C of header[0, hsize) with bytes 124..127 taken as zero. */
static inline uint32_t kd_ckpt_header_crc(const unsigned char *h, uint32_t hsize) {
  static const unsigned char zero[4];
  uint32_t c = kd_crc32c(0, h, KD_H_CRC);
  c = kd_crc32c(c, zero, 4);
  return kd_crc32c(c, h + KD_H_CRC + 4, hsize - KD_H_CRC - 4);
}

#endif
