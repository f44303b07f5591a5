/* test_crc32c.c - CRC32C: published check values (RFC 3720 B.4 and the "123456789" check), the
 * table and SSE4.2 implementations agree on random buffers at every alignment, chaining works. */
#include <stdint.h>
#include <string.h>

#include "kd_test.h"
#include "kdrank_loader.h"
#include "loader_internal.h"

static uint64_t rng = 88172645463325252ull;
static uint64_t next(void) {
  rng ^= rng << 13;
  rng ^= rng >> 7;
  rng ^= rng << 17;
  return rng;
}

int main(void) {
  unsigned char b[32];
  CHECK(kd_crc32c(0, "123456789", 9) == 0xE3069283u);
  CHECK(kd_crc32c_sw(0, "123456789", 9) == 0xE3069283u);
  memset(b, 0, 32);
  CHECK(kd_crc32c(0, b, 32) == 0x8A9136AAu);
  memset(b, 0xFF, 32);
  CHECK(kd_crc32c(0, b, 32) == 0x62A8AB43u);
  for (int i = 0; i < 32; i++) b[i] = (unsigned char)i;
  CHECK(kd_crc32c(0, b, 32) == 0x46DD794Eu);
  for (int i = 0; i < 32; i++) b[i] = (unsigned char)(31 - i);
  CHECK(kd_crc32c(0, b, 32) == 0x113FDB5Cu);
  CHECK(kd_crc32c(0, b, 0) == 0);

  static unsigned char buf[4096 + 16];
  for (size_t i = 0; i < sizeof buf; i++) buf[i] = (unsigned char)next();
  int hw = kd_crc32c_hw_available();
  printf("sse4.2 crc32: %s\n", hw ? "available, compared with the table version" : "absent (table version only)");
  int agree = 1, chain = 1;
  for (int t = 0; t < 2000; t++) {
    size_t off = next() % 16, len = next() % 4096, cut = len ? next() % len : 0;
    uint32_t s = kd_crc32c_sw(0, buf + off, len);
    if (hw && kd_crc32c_hw(0, buf + off, len) != s) agree = 0;
    if (kd_crc32c(kd_crc32c(0, buf + off, cut), buf + off + cut, len - cut) != s) chain = 0;
  }
  CHECK(agree);
  CHECK(chain);
  /* One flipped bit always changes the CRC. */
  uint32_t base = kd_crc32c(0, buf, 1000);
  int all = 1;
  for (int i = 0; i < 8000; i++) {
    buf[i / 8] ^= (unsigned char)(1u << (i % 8));
    all &= kd_crc32c(0, buf, 1000) != base;
    buf[i / 8] ^= (unsigned char)(1u << (i % 8));
  }
  CHECK(all);
  KD_TEST_END();
}
