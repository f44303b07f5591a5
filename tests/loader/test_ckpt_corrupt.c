/* test_ckpt_corrupt.c - every kind of damage is rejected with its own message: a flipped byte in
 * the header, the metadata, the tensor table and the tensor data; truncation at many offsets
 * (through the file and around every section boundary, both from memory and as a real truncated
 * file); wrong magic; wrong major version (a newer minor is accepted); byte order; NaN and Inf
 * weights and a shape that disagrees with the architecture, with every CRC re-sealed so only the
 * check under test can catch them. Finally: every single-byte change anywhere in a small file is
 * rejected. */
#include <inttypes.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "ckpt_bytes.h"
#include "kd_test.h"
#include "kdrank_loader.h"

static unsigned char *orig;
static size_t olen;
static char dir[64], path[128];

/* Opens b (from memory, named "ckpt") and checks it is rejected with code and a message
 * containing want (and "ckpt:" naming the file). */
#define REJECT(b, len, code_, want)                                                                   \
  do {                                                                                                \
    struct kd_err e_ = {0};                                                                           \
    kd_ckpt *c_ = kd_ckpt_open_mem((b), (len), "ckpt", &e_);                                          \
    CHECKF(c_ == NULL, "accepted, expected: %s", (want));                                            \
    if (c_) kd_ckpt_close(c_);                                                                        \
    else {                                                                                            \
      CHECKF(e_.code == (code_), "code %s, expected %s (%s)", kd_status_name(e_.code),                \
             kd_status_name(code_), e_.msg);                                                          \
      CHECKF(strstr(e_.msg, (want)) != NULL && !strncmp(e_.msg, "ckpt: ", 6), "message \"%s\", expected \"%s\"", \
             e_.msg, (want));                                                                         \
    }                                                                                                 \
  } while (0)

static unsigned char *copy(void) {
  unsigned char *b = malloc(olen);
  memcpy(b, orig, olen);
  return b;
}

static uint64_t h64(const unsigned char *b, int off) { return kdt_ld64(b + off); }

static void test_sections(void) {
  unsigned char *b = copy();
  uint64_t moff = h64(b, KDT_H_META_OFF), msize = h64(b, KDT_H_META_SIZE);
  uint64_t toff = h64(b, KDT_H_TAB_OFF), doff = h64(b, KDT_H_DATA_OFF);

  /* Header: a size field and a reserved byte. */
  b[KDT_H_META_SIZE + 1] ^= 0x01;
  REJECT(b, olen, KD_ERR_CORRUPT, "header CRC32C: expected 0x");
  memcpy(b, orig, olen);
  b[100] ^= 0x40;
  REJECT(b, olen, KD_ERR_CORRUPT, "header CRC32C");
  memcpy(b, orig, olen);
  b[KDT_H_CRC] ^= 0x01;
  REJECT(b, olen, KD_ERR_CORRUPT, "the header is damaged");
  memcpy(b, orig, olen);

  /* Metadata: one byte in the middle (inside some key or value). */
  b[moff + msize / 2] ^= 0x10;
  REJECT(b, olen, KD_ERR_CORRUPT, "metadata CRC32C: expected 0x");
  memcpy(b, orig, olen);

  /* Tensor table: a name byte, and an offset field. */
  b[toff + 2] ^= 0x01;
  REJECT(b, olen, KD_ERR_CORRUPT, "tensor table CRC32C: expected 0x");
  memcpy(b, orig, olen);
  b[toff + KDT_E_OFFSET] ^= 0x40;
  REJECT(b, olen, KD_ERR_CORRUPT, "the tensor table is damaged");
  memcpy(b, orig, olen);

  /* Tensor data: a byte of shared.0.weight. */
  unsigned char *w = kdt_tensor(b, olen, "shared.0.weight");
  REQUIRE(w);
  w[5] ^= 0x01;
  REJECT(b, olen, KD_ERR_CORRUPT, "tensor 'shared.0.weight' data CRC32C: expected 0x");
  memcpy(b, orig, olen);
  b[doff] ^= 0x80; /* the first tensor's first byte */
  REJECT(b, olen, KD_ERR_CORRUPT, "the weights are damaged");
  memcpy(b, orig, olen);

  /* End marker: magic, identity CRC, reserved. */
  b[olen - 16] ^= 0x01;
  REJECT(b, olen, KD_ERR_CORRUPT, "end marker at offset");
  memcpy(b, orig, olen);
  b[olen - 7] ^= 0x01;
  REJECT(b, olen, KD_ERR_CORRUPT, "end marker CRC32C of header+metadata+table: expected 0x");
  memcpy(b, orig, olen);
  b[olen - 1] ^= 0x01;
  REJECT(b, olen, KD_ERR_CORRUPT, "reserved bytes 12..15 expected 0");
  memcpy(b, orig, olen);

  /* Padding after a tensor (emb.user_id is 32000 bytes: padded to 32000 -> 32000 is 64-aligned,
   * so take the padding after shared.0.bias, 64 bytes of which 64 are used: use the table). */
  unsigned char *e = kdt_entry(b, olen, "tower.click.1.bias"); /* 4 bytes + 60 padding */
  REQUIRE(e);
  b[doff + kdt_ld64(e + KDT_E_OFFSET) + 10] = 0x5A;
  REJECT(b, olen, KD_ERR_CORRUPT, "tensor padding at data offset");
  memcpy(b, orig, olen);
  free(b);
}

static void test_truncation(void) {
  unsigned char *b = copy();
  uint64_t bounds[] = {0, 1, 3, 4, 5, 15, 16, 127, 128, 129,
                       h64(b, KDT_H_META_OFF) + h64(b, KDT_H_META_SIZE),
                       h64(b, KDT_H_TAB_OFF), h64(b, KDT_H_TAB_OFF) + 1,
                       h64(b, KDT_H_TAB_OFF) + h64(b, KDT_H_TAB_SIZE),
                       h64(b, KDT_H_DATA_OFF), h64(b, KDT_H_DATA_OFF) + 1,
                       olen - 17, olen - 16, olen - 15, olen - 1};
  int n = 0;
  for (size_t i = 0; i < sizeof bounds / sizeof bounds[0]; i++) {
    uint64_t cut = bounds[i];
    if (cut >= olen) continue;
    if (cut < 4) REJECT(b, cut, KD_ERR_CORRUPT, "not a kdrank checkpoint: expected at least the 4-byte magic");
    else REJECT(b, cut, KD_ERR_CORRUPT, "truncated: ");
    n++;
  }
  for (int k = 1; k < 64; k++) {
    size_t cut = olen * (size_t)k / 64;
    REJECT(b, cut, KD_ERR_CORRUPT, "truncated: ");
    n++;
  }
  /* The message states both sizes. */
  char want[128];
  snprintf(want, sizeof want, "truncated: the header records %zu bytes, found a %zu-byte file", olen, olen - 1);
  REJECT(b, olen - 1, KD_ERR_CORRUPT, want);
  /* Real truncated files through the mmap path. */
  size_t cuts[] = {0, 2, 100, olen / 3, olen - 16};
  for (size_t i = 0; i < sizeof cuts / sizeof cuts[0]; i++) {
    REQUIRE(kdt_write(path, b, cuts[i]) == 0);
    struct kd_err e = {0};
    kd_ckpt *c = kd_ckpt_open(path, &e);
    CHECK(c == NULL);
    CHECKF(strstr(e.msg, path) == e.msg && (strstr(e.msg, "truncated: ") || strstr(e.msg, "not a kdrank checkpoint")),
           "%s", e.msg);
    kd_ckpt_close(c);
    n++;
  }
  /* Trailing bytes are damage too. */
  unsigned char *big = malloc(olen + 64);
  memcpy(big, orig, olen);
  memset(big + olen, 0, 64);
  REJECT(big, olen + 64, KD_ERR_CORRUPT, "trailing data: the header records");
  free(big);
  printf("truncation: %d cut points rejected\n", n);
  free(b);
}

static void test_versions(void) {
  unsigned char *b = copy();
  memcpy(b, "GGUF", 4);
  REJECT(b, olen, KD_ERR_CORRUPT, "not a kdrank checkpoint: magic expected \"KDRK\" (4B 44 52 4B), found 47 47 55 46");
  memcpy(b, orig, olen);

  /* A valid header of major 2 (CRC re-sealed): the reader refuses the major. */
  kdt_st16(b + KDT_H_MAJOR, 2);
  kdt_reseal(b, olen, 0);
  REJECT(b, olen, KD_ERR_UNSUPPORTED, "format major version: expected 1, found 2 (version 2.0; written by a newer kdrank)");
  kdt_st16(b + KDT_H_MAJOR, 0);
  kdt_reseal(b, olen, 0);
  REJECT(b, olen, KD_ERR_UNSUPPORTED, "format major version: expected 1, found 0");
  memcpy(b, orig, olen);

  /* A newer minor (e.g. more metadata keys) is accepted. */
  kdt_st16(b + KDT_H_MINOR, 7);
  kdt_reseal(b, olen, 0);
  struct kd_err e = {0};
  kd_ckpt *c = kd_ckpt_open_mem(b, olen, "ckpt", &e);
  CHECKF(c != NULL, "%s", e.msg);
  if (c) CHECK(kd_ckpt_format_minor(c) == 7);
  kd_ckpt_close(c);
  memcpy(b, orig, olen);

  /* Byte order: a big-endian writer's mark. */
  kdt_st32(b + KDT_H_BOM, 0x0D0C0B0Au);
  kdt_reseal(b, olen, 0);
  REJECT(b, olen, KD_ERR_UNSUPPORTED, "byte order: expected a little-endian file");
  kdt_st32(b + KDT_H_BOM, 0x12345678u);
  REJECT(b, olen, KD_ERR_CORRUPT, "byte-order mark: expected 0x0A0B0C0D, found 0x12345678");
  memcpy(b, orig, olen);
  free(b);
}

static void test_values(void) {
  unsigned char *b = copy();
  /* NaN in a weight, every CRC correct: only the finiteness check catches it. */
  unsigned char *w = kdt_tensor(b, olen, "tower.like.0.weight");
  REQUIRE(w);
  float nan = NAN, inf = INFINITY;
  memcpy(w + 4 * 6, &nan, 4);
  kdt_reseal(b, olen, 1);
  REJECT(b, olen, KD_ERR_CORRUPT, "tensor 'tower.like.0.weight' element 6: expected a finite weight, found nan");
  memcpy(b, orig, olen);
  w = kdt_tensor(b, olen, "emb.item_id");
  REQUIRE(w);
  memcpy(w + 4 * 1000, &inf, 4);
  kdt_reseal(b, olen, 1);
  REJECT(b, olen, KD_ERR_CORRUPT, "tensor 'emb.item_id' element 1000: expected a finite weight, found inf");
  memcpy(b, orig, olen);

  /* Shape mismatch: shared.0.weight stored as (27, 16) instead of (16, 27): same byte size. */
  unsigned char *e = kdt_entry(b, olen, "shared.0.weight");
  REQUIRE(e);
  uint64_t s0 = kdt_ld64(e + KDT_E_SHAPE), s1 = kdt_ld64(e + KDT_E_SHAPE + 8);
  kdt_st64(e + KDT_E_SHAPE, s1);
  kdt_st64(e + KDT_E_SHAPE + 8, s0);
  kdt_reseal(b, olen, 1);
  REJECT(b, olen, KD_ERR_CORRUPT, "tensor 'shared.0.weight': shape expected (16, 27) (architecture tiny), found (27, 16)");
  memcpy(b, orig, olen);

  /* The architecture in the metadata disagrees with the table (arch.shared.0.width 16 -> 17). */
  uint32_t type = 99;
  unsigned char *v = kdt_meta_value(b, olen, "arch.shared.0.width", &type);
  REQUIRE(v && type == KD_META_U32 && kdt_ld32(v) == 16);
  kdt_st32(v, 17);
  kdt_reseal(b, olen, 1);
  REJECT(b, olen, KD_ERR_CORRUPT, "tensor 'shared.0.weight': shape expected (17, 27) (architecture tiny), found (16, 27)");
  memcpy(b, orig, olen);

  /* An architecture kd_arch_validate refuses (a tower width of 0). */
  v = kdt_meta_value(b, olen, "arch.tower.0.width", &type);
  REQUIRE(v && type == KD_META_U32);
  kdt_st32(v, 0);
  kdt_reseal(b, olen, 1);
  REJECT(b, olen, KD_ERR_CORRUPT, "architecture in metadata: architecture: tower layer 0 width 0");
  memcpy(b, orig, olen);

  /* A feature kind that is not a known string. */
  v = kdt_meta_value(b, olen, "arch.feature.0.kind", &type);
  REQUIRE(v && type == KD_META_STR && kdt_ld64(v) == 6);
  memcpy(v + 8, "dens3", 5);
  kdt_reseal(b, olen, 1);
  REJECT(b, olen, KD_ERR_CORRUPT, "\"arch.feature.0.kind\": expected \"dense\" or \"sparse\", found \"dens3e\"");
  memcpy(b, orig, olen);

  /* A dtype other than f32. */
  e = kdt_entry(b, olen, "shared.0.bias");
  REQUIRE(e);
  kdt_st32(e + 96, 1);
  kdt_reseal(b, olen, 1);
  REJECT(b, olen, KD_ERR_CORRUPT, "tensor 'shared.0.bias': dtype expected 0 (f32), found 1");
  memcpy(b, orig, olen);

  /* Two tensors at the same offset. */
  unsigned char *e1 = kdt_entry(b, olen, "tower.click.0.bias"), *e2 = kdt_entry(b, olen, "tower.like.0.bias");
  REQUIRE(e1 && e2);
  memcpy(e2 + KDT_E_OFFSET, e1 + KDT_E_OFFSET, 8);
  kdt_reseal(b, olen, 1);
  REJECT(b, olen, KD_ERR_CORRUPT, "tensors overlap");
  memcpy(b, orig, olen);

  /* A tensor pointing past the data section. */
  e = kdt_entry(b, olen, "tower.satisfied.1.bias");
  REQUIRE(e);
  kdt_st64(e + KDT_E_OFFSET, h64(b, KDT_H_DATA_SIZE));
  kdt_reseal(b, olen, 1);
  REJECT(b, olen, KD_ERR_CORRUPT, "tensor 'tower.satisfied.1.bias': bytes [");
  memcpy(b, orig, olen);

  /* Metadata section pointing past the end of the file (header re-sealed). */
  kdt_st64(b + KDT_H_META_SIZE, olen);
  kdt_reseal(b, olen, 0);
  REJECT(b, olen, KD_ERR_CORRUPT, "metadata section [");
  memcpy(b, orig, olen);

  /* A count of metadata entries that disagrees with the section. */
  kdt_st32(b + KDT_H_N_META, kdt_ld32(b + KDT_H_N_META) - 1);
  kdt_reseal(b, olen, 0);
  REJECT(b, olen, KD_ERR_CORRUPT, "entries end at byte");
  memcpy(b, orig, olen);
  free(b);
}

/* Every single-byte change anywhere in a small file is rejected. */
static void test_every_byte(void) {
  struct kd_arch a;
  kdt_micro_arch(&a);
  struct kd_err e = {0};
  struct kd_model *m = kd_model_alloc(&a, &e);
  REQUIRE(m);
  kd_model_init_random(m, 5);
  REQUIRE(kd_ckpt_write(path, m, NULL, 0, &e) == KD_OK);
  kd_model_free(m);
  size_t len = 0;
  unsigned char *b = kdt_read(path, &len);
  REQUIRE(b);
  kd_ckpt *c = kd_ckpt_open_mem(b, len, "micro", &e);
  REQUIRE(c);
  kd_ckpt_close(c);
  size_t accepted = 0;
  for (size_t i = 0; i < len; i++) {
    for (int bit = 0; bit < 8; bit += 7) {
      b[i] ^= (unsigned char)(1u << bit);
      c = kd_ckpt_open_mem(b, len, "micro", &e);
      if (c) {
        accepted++;
        fprintf(stderr, "byte %zu bit %d: accepted\n", i, bit);
        kd_ckpt_close(c);
      }
      b[i] ^= (unsigned char)(1u << bit);
    }
  }
  printf("every byte: %zu single-bit changes of a %zu-byte file, %zu accepted\n", 2 * len, len, accepted);
  CHECK(accepted == 0);
  free(b);
}

int main(void) {
  snprintf(dir, sizeof dir, "kdt-cor-XXXXXX");
  REQUIRE(mkdtemp(dir));
  snprintf(path, sizeof path, "%s/t.kdrk", dir);
  struct kd_arch a;
  struct kd_err e = {0};
  REQUIRE(kd_arch_preset("tiny", &a, &e) == KD_OK);
  struct kd_model *m = kd_model_alloc(&a, &e);
  REQUIRE(m);
  kd_model_init_random(m, 42);
  REQUIRE(kd_ckpt_write(path, m, NULL, 0, &e) == KD_OK);
  kd_model_free(m);
  orig = kdt_read(path, &olen);
  REQUIRE(orig);
  kd_ckpt *c = kd_ckpt_open_mem(orig, olen, "ckpt", &e);
  REQUIRE(c); /* the unmodified file opens */
  kd_ckpt_close(c);
  /* Re-sealing an intact file changes nothing (the helper agrees with the writer). */
  unsigned char *b = copy();
  kdt_reseal(b, olen, 1);
  CHECK(!memcmp(b, orig, olen));
  free(b);

  test_sections();
  test_truncation();
  test_versions();
  test_values();
  test_every_byte();

  /* Not a file at all. */
  c = kd_ckpt_open(dir, &e);
  CHECK(!c && e.code == KD_ERR_INVALID && strstr(e.msg, "expected a regular file"));
  char missing[160];
  snprintf(missing, sizeof missing, "%s/missing.kdrk", dir);
  c = kd_ckpt_open(missing, &e);
  CHECK(!c && e.code == KD_ERR_NOT_FOUND && strstr(e.msg, "missing.kdrk: open: "));
  unlink(path);
  rmdir(dir);
  free(orig);
  KD_TEST_END();
}
