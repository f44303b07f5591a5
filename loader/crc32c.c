/* crc32c.c - CRC32C (Castagnoli, reflected polynomial 0x82F63B78), as stored in checkpoints.
 * Two implementations behind one entry point: slicing-by-8 tables (portable) and the SSE4.2
 * crc32 instruction (x86-64), chosen once by CPU features. Both give identical results; the
 * loader tests compare them on random buffers and against the standard check value
 * crc32c("123456789") = 0xE3069283. */
#include <stdint.h>
#include <string.h>

#include "kdrank_loader.h"
#include "loader_internal.h"

static uint32_t crc_tab[8][256];
static int crc_tab_ready;

/* Builds the slicing-by-8 tables. Idempotent and race-free in effect: concurrent first callers
 * write the same values; the ready flag is an atomic store after the tables are complete. */
static void crc_tab_init(void) {
  for (uint32_t i = 0; i < 256; i++) {
    uint32_t c = i;
    for (int k = 0; k < 8; k++) c = (c >> 1) ^ (0x82F63B78u & (0u - (c & 1u)));
    crc_tab[0][i] = c;
  }
  for (uint32_t i = 0; i < 256; i++)
    for (int t = 1; t < 8; t++) crc_tab[t][i] = (crc_tab[t - 1][i] >> 8) ^ crc_tab[0][crc_tab[t - 1][i] & 0xFF];
  __atomic_store_n(&crc_tab_ready, 1, __ATOMIC_RELEASE);
}

uint32_t kd_crc32c_sw(uint32_t crc, const void *buf, size_t len) {
  if (!__atomic_load_n(&crc_tab_ready, __ATOMIC_ACQUIRE)) crc_tab_init();
  const unsigned char *p = buf;
  uint32_t c = ~crc;
  while (len && ((uintptr_t)p & 7)) {
    c = (c >> 8) ^ crc_tab[0][(c ^ *p++) & 0xFF];
    len--;
  }
  while (len >= 8) {
    uint64_t w;
    memcpy(&w, p, 8); /* little-endian host: the byte order the tables assume */
    w ^= c;
    c = crc_tab[7][w & 0xFF] ^ crc_tab[6][(w >> 8) & 0xFF] ^ crc_tab[5][(w >> 16) & 0xFF] ^
        crc_tab[4][(w >> 24) & 0xFF] ^ crc_tab[3][(w >> 32) & 0xFF] ^ crc_tab[2][(w >> 40) & 0xFF] ^
        crc_tab[1][(w >> 48) & 0xFF] ^ crc_tab[0][w >> 56];
    p += 8;
    len -= 8;
  }
  while (len--) c = (c >> 8) ^ crc_tab[0][(c ^ *p++) & 0xFF];
  return ~c;
}

#if defined(__x86_64__)
__attribute__((target("sse4.2"))) uint32_t kd_crc32c_hw(uint32_t crc, const void *buf, size_t len) {
  const unsigned char *p = buf;
  uint64_t c = (uint32_t)~crc;
  while (len && ((uintptr_t)p & 7)) {
    c = __builtin_ia32_crc32qi((uint32_t)c, *p++);
    len--;
  }
  while (len >= 8) {
    uint64_t w;
    memcpy(&w, p, 8);
    c = __builtin_ia32_crc32di(c, w);
    p += 8;
    len -= 8;
  }
  while (len--) c = __builtin_ia32_crc32qi((uint32_t)c, *p++);
  return ~(uint32_t)c;
}

int kd_crc32c_hw_available(void) {
  __builtin_cpu_init();
  return __builtin_cpu_supports("sse4.2");
}
#else
uint32_t kd_crc32c_hw(uint32_t crc, const void *buf, size_t len) { return kd_crc32c_sw(crc, buf, len); }
int kd_crc32c_hw_available(void) { return 0; }
#endif

/* 0: undecided, 1: software, 2: hardware. Decided once; a racing first call decides the same. */
static int crc_impl;

uint32_t kd_crc32c(uint32_t crc, const void *buf, size_t len) {
  int impl = __atomic_load_n(&crc_impl, __ATOMIC_RELAXED);
  if (!impl) {
    impl = kd_crc32c_hw_available() ? 2 : 1;
    __atomic_store_n(&crc_impl, impl, __ATOMIC_RELAXED);
  }
  return impl == 2 ? kd_crc32c_hw(crc, buf, len) : kd_crc32c_sw(crc, buf, len);
}
