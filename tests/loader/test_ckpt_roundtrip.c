/* test_ckpt_roundtrip.c - write then read back, bit-exact, for a micro architecture and every
 * preset (tiny, ref-student, ref-teacher-2x, ref-teacher-4x): the architecture, every tensor, every metadata entry (every type),
 * determinism of the bytes, mmap and in-memory opens agree, tensors are 64-byte aligned, the
 * oracle scores the loaded model exactly as the original. Also the writer's refusals. */
#include <inttypes.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "ckpt_bytes.h"
#include "kd_test.h"
#include "kdrank_loader.h"

static char dir[64];

static void path_of(char *out, size_t cap, const char *name) { snprintf(out, cap, "%s/%s", dir, name); }

static void roundtrip(const struct kd_arch *a, uint64_t seed) {
  char p1[128], p2[128];
  path_of(p1, sizeof p1, "a.kdrk");
  path_of(p2, sizeof p2, "b.kdrk");
  struct kd_err e = {0};
  struct kd_model *m = kd_model_alloc(a, &e);
  REQUIRE(m);
  kd_model_init_random(m, seed);
  struct kd_meta meta[] = {
      {.key = "general.name", .type = KD_META_STR, .v.s = "feed-ranker"},
      {.key = "provenance.trainer_version", .type = KD_META_STR, .v.s = "kdrank-train 0.1.0"},
      {.key = "provenance.teacher_id", .type = KD_META_STR, .v.s = "teacher-4x \xC3\xA9\xE2\x9C\x93"},
      {.key = "provenance.distill_mode", .type = KD_META_STR, .v.s = "soft+hard"},
      {.key = "provenance.metrics", .type = KD_META_STR, .v.s = "{\"auc\":0.75}"},
      {.key = "provenance.empty", .type = KD_META_STR, .v.s = ""},
      {.key = "provenance.steps", .type = KD_META_U32, .v.u = 4000000000u},
      {.key = "provenance.examples", .type = KD_META_U64, .v.u = 0xFFFFFFFFFFFFFFFFull},
      {.key = "provenance.offset", .type = KD_META_I64, .v.i = INT64_MIN},
      {.key = "provenance.lr", .type = KD_META_F32, .v.f = 0.001f},
      {.key = "provenance.loss", .type = KD_META_F64, .v.f = 0.123456789012345678},
      {.key = "provenance.early_stopped", .type = KD_META_BOOL, .v.u = 1},
  };
  uint32_t nm = sizeof meta / sizeof meta[0];
  int rc = kd_ckpt_write(p1, m, meta, nm, &e);
  CHECKF(rc == KD_OK, "%s", e.msg);
  REQUIRE(rc == KD_OK);
  REQUIRE(kd_ckpt_write(p2, m, meta, nm, &e) == KD_OK);
  size_t l1 = 0, l2 = 0;
  unsigned char *b1 = kdt_read(p1, &l1), *b2 = kdt_read(p2, &l2);
  REQUIRE(b1 && b2);
  CHECK(l1 == l2 && !memcmp(b1, b2, l1)); /* same model + metadata -> same bytes */

  kd_ckpt *c = kd_ckpt_open(p1, &e);
  CHECKF(c != NULL, "%s", e.msg);
  REQUIRE(c);
  const struct kd_model *r = kd_ckpt_model(c);
  CHECK(!memcmp(&r->arch, a, sizeof *a));
  CHECK(r->n_tensors == kd_arch_n_tensors(a));
  int exact = 1, aligned = 1;
  for (uint32_t i = 0; i < r->n_tensors; i++) {
    struct kd_tensor_info ti;
    kd_arch_tensor(a, i, &ti);
    exact &= !memcmp(r->t[i], m->t[i], ti.numel * 4);
    aligned &= ((uintptr_t)r->t[i] % 64) == 0;
  }
  CHECK(exact);
  CHECK(aligned);
  CHECK(kd_ckpt_file_size(c) == l1);
  CHECK(kd_ckpt_format_minor(c) == 0);
  /* Metadata: every caller entry comes back with its type and value. */
  for (uint32_t i = 0; i < nm; i++) {
    const struct kd_meta *x = kd_ckpt_meta_find(c, meta[i].key);
    CHECKF(x != NULL, "%s", meta[i].key);
    if (!x) continue;
    CHECKF(x->type == meta[i].type, "%s", meta[i].key);
    switch (x->type) {
    case KD_META_STR: CHECKF(!strcmp(x->v.s, meta[i].v.s), "%s", x->key); break;
    case KD_META_I64: CHECK(x->v.i == meta[i].v.i); break;
    case KD_META_F32: CHECK((float)x->v.f == (float)meta[i].v.f); break;
    case KD_META_F64: CHECK(x->v.f == meta[i].v.f); break;
    default: CHECK(x->v.u == meta[i].v.u);
    }
  }
  const struct kd_meta *an = kd_ckpt_meta_find(c, "arch.name");
  CHECK(an && an->type == KD_META_STR && !strcmp(an->v.s, a->name));
  CHECK(kd_ckpt_meta_find(c, "provenance.absent") == NULL);
  CHECK(kd_ckpt_meta_at(c, kd_ckpt_n_meta(c)) == NULL);
  /* general.name first, then general.writer, arch.*, then the caller's keys in order. */
  CHECK(!strcmp(kd_ckpt_meta_at(c, 0)->key, "general.name"));
  CHECK(!strcmp(kd_ckpt_meta_at(c, kd_ckpt_n_meta(c) - 1)->key, "provenance.early_stopped"));

  /* The same bytes opened from memory: same identity CRC, same tensors. */
  kd_ckpt *c2 = kd_ckpt_open_mem(b1, l1, "mem", &e);
  CHECKF(c2 != NULL, "%s", e.msg);
  if (c2) {
    CHECK(kd_ckpt_crc(c2) == kd_ckpt_crc(c));
    CHECK(!memcmp(kd_ckpt_model(c2)->t[0], m->t[0], 16));
    kd_ckpt_close(c2);
  }
  /* A different seed: different identity CRC. */
  kd_model_init_random(m, seed + 1);
  REQUIRE(kd_ckpt_write(p2, m, meta, nm, &e) == KD_OK);
  kd_ckpt *c3 = kd_ckpt_open(p2, &e);
  REQUIRE(c3);
  CHECK(kd_ckpt_crc(c3) != kd_ckpt_crc(c));
  kd_ckpt_close(c3);
  kd_model_init_random(m, seed);

  /* The oracle scores the loaded model exactly as the in-memory one (small architectures). */
  if (kd_arch_numel(a) < 1000000) {
    uint32_t n = 5, k = 2;
    struct kd_column cols[KD_MAX_FEATURES];
    float *fl[KD_MAX_FEATURES] = {0};
    int64_t *ids[KD_MAX_FEATURES] = {0};
    for (uint32_t f = 0; f < a->n_features; f++) {
      uint32_t rows = a->features[f].group == KD_GROUP_CONTEXT ? 1 : n;
      memset(&cols[f], 0, sizeof cols[f]);
      if (a->features[f].kind == KD_FEAT_DENSE) {
        fl[f] = malloc(rows * a->features[f].dim * sizeof(float));
        for (uint32_t j = 0; j < rows * a->features[f].dim; j++) fl[f][j] = (float)((j * 7 + f) % 11) / 11.0f - 0.4f;
        cols[f].floats = fl[f];
        cols[f].n_floats = rows * a->features[f].dim;
      } else {
        ids[f] = malloc(rows * k * sizeof(int64_t));
        for (uint32_t j = 0; j < rows * k; j++) ids[f][j] = (int64_t)j * 1000003 - 17;
        cols[f].ids = ids[f];
        cols[f].n_ids = rows * k;
      }
    }
    struct kd_input in = {.n_cand = n, .cols = cols};
    uint32_t tasks[KD_MAX_TASKS], nt = 0;
    for (uint32_t t = 0; t < a->n_tasks; t++) tasks[nt++] = t;
    float *o1 = calloc(n * nt, sizeof(float)), *o2 = calloc(n * nt, sizeof(float));
    CHECKF(kd_score_ref(m, &in, tasks, nt, o1, &e) == KD_OK, "%s", e.msg);
    CHECKF(kd_score_ref(r, &in, tasks, nt, o2, &e) == KD_OK, "%s", e.msg);
    CHECK(!memcmp(o1, o2, n * nt * sizeof(float)));
    free(o1);
    free(o2);
    for (uint32_t f = 0; f < a->n_features; f++) { free(fl[f]); free(ids[f]); }
  }
  printf("%-16s %10" PRIu64 " params, %10zu bytes, crc 0x%08X: round trip bit-exact\n", a->name, kd_arch_numel(a), l1,
         kd_ckpt_crc(c));
  kd_ckpt_close(c);
  free(b1);
  free(b2);
  kd_model_free(m);
  unlink(p1);
  unlink(p2);
}

/* The writer's refusals: a message naming the problem, and no file. */
static void refusals(void) {
  struct kd_arch a;
  kdt_micro_arch(&a);
  struct kd_err e = {0};
  struct kd_model *m = kd_model_alloc(&a, &e);
  REQUIRE(m);
  kd_model_init_random(m, 3);
  char p[128];
  path_of(p, sizeof p, "refused.kdrk");
  struct stat st;

  float *sb = kd_model_shared_b(m, 0); /* shape (3) */
  sb[1] = NAN;
  CHECK(kd_ckpt_write(p, m, NULL, 0, &e) == KD_ERR_INVALID);
  CHECKF(strstr(e.msg, "tensor 'shared.0.bias' element 1: expected a finite float, found nan") != NULL, "%s", e.msg);
  CHECK(stat(p, &st) != 0);
  sb[1] = -INFINITY;
  CHECK(kd_ckpt_write(p, m, NULL, 0, &e) == KD_ERR_INVALID);
  CHECKF(strstr(e.msg, "found -inf") != NULL, "%s", e.msg);
  sb[1] = 0.5f;

  struct kd_meta bad_key = {.key = "bad key", .type = KD_META_STR, .v.s = "x"};
  CHECK(kd_ckpt_write(p, m, &bad_key, 1, &e) == KD_ERR_INVALID);
  CHECKF(strstr(e.msg, "key expected") && strstr(e.msg, "\"bad key\""), "%s", e.msg);
  struct kd_meta reserved = {.key = "arch.name", .type = KD_META_STR, .v.s = "x"};
  CHECK(kd_ckpt_write(p, m, &reserved, 1, &e) == KD_ERR_INVALID);
  CHECKF(strstr(e.msg, "\"arch.name\"") != NULL, "%s", e.msg);
  struct kd_meta dup[2] = {{.key = "provenance.x", .type = KD_META_U32, .v.u = 1},
                           {.key = "provenance.x", .type = KD_META_U32, .v.u = 2}};
  CHECK(kd_ckpt_write(p, m, dup, 2, &e) == KD_ERR_INVALID);
  CHECKF(strstr(e.msg, "given twice") != NULL, "%s", e.msg);
  struct kd_meta utf[1] = {{.key = "provenance.x", .type = KD_META_STR, .v.s = "\xC3\x28"}};
  CHECK(kd_ckpt_write(p, m, utf, 1, &e) == KD_ERR_INVALID);
  CHECKF(strstr(e.msg, "UTF-8") != NULL, "%s", e.msg);
  struct kd_meta badtype[1] = {{.key = "provenance.x", .type = 9}};
  CHECK(kd_ckpt_write(p, m, badtype, 1, &e) == KD_ERR_INVALID);
  CHECKF(strstr(e.msg, "type expected 0..6, found 9") != NULL, "%s", e.msg);
  CHECK(stat(p, &st) != 0);

  struct kd_meta noname[1] = {{.key = "general.name", .type = KD_META_STR, .v.s = ""}};
  CHECK(kd_ckpt_write(p, m, noname, 1, &e) == KD_ERR_INVALID);
  CHECKF(strstr(e.msg, "general.name: expected a non-empty string") != NULL, "%s", e.msg);
  m->arch.name[0] = 0;
  CHECK(kd_ckpt_write(p, m, NULL, 0, &e) == KD_ERR_INVALID);
  CHECKF(strstr(e.msg, "architecture name: expected 1..63 bytes") != NULL, "%s", e.msg);
  snprintf(m->arch.name, KD_NAME_MAX, "micro");
  CHECK(stat(p, &st) != 0);

  /* An invalid architecture is refused by kd_arch_validate's rule. */
  m->arch.shared[0] = 0;
  CHECK(kd_ckpt_write(p, m, NULL, 0, &e) == KD_ERR_INVALID);
  CHECKF(strstr(e.msg, "architecture") != NULL, "%s", e.msg);
  CHECK(stat(p, &st) != 0);
  kd_model_free(m);
}

int main(void) {
  snprintf(dir, sizeof dir, "kdt-rt-XXXXXX");
  REQUIRE(mkdtemp(dir));
  struct kd_arch a;
  struct kd_err e = {0};
  kdt_micro_arch(&a);
  roundtrip(&a, 7);
  const char *presets[] = {"tiny", "ref-student", "ref-teacher-2x", "ref-teacher-4x"};
  for (int i = 0; i < 4; i++) {
    REQUIRE(kd_arch_preset(presets[i], &a, &e) == KD_OK);
    roundtrip(&a, 11 + (uint64_t)i);
  }
  refusals();
  rmdir(dir);
  KD_TEST_END();
}
