/* fuzz_ckpt.c - fuzz target for the checkpoint reader (kd_ckpt_open_mem). Its only job is to
 * find crashes, out-of-bounds reads, leaks and wrong verdicts:
 *  - every input must either open or fail with a message that names the input;
 *  - an opened checkpoint must be fully usable (metadata, every tensor, the oracle on one row).
 * Each input is tried as given and again with every CRC re-sealed (tests/loader/ckpt_bytes.h), so
 * mutations reach the structural checks behind the CRCs.
 *
 * Two builds of this file:
 *  - libFuzzer (clang, -DKD_FUZZ=ON): `fuzz_ckpt [libFuzzer flags] CORPUS_DIR`;
 *  - replay (any compiler, run by CTest): `fuzz_ckpt_replay [--generate N] [--seed S]
 *    [--write-seeds DIR] [FILE|DIR]...` replays files (e.g. crash reproducers) and N mutants of
 *    small valid checkpoints made in memory (byte flips, truncations, insertions, field rewrites
 *    with re-sealed CRCs), deterministic for the seed. */
#include <dirent.h>
#include <inttypes.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "../loader/ckpt_bytes.h"
#include "kdrank_loader.h"

static void fail_verdict(const char *why, const char *msg) {
  fprintf(stderr, "fuzz_ckpt: wrong verdict: %s: %s\n", why, msg);
  abort();
}

/* Uses everything an opened checkpoint offers; returns a value so nothing is optimised away. */
static double exercise(kd_ckpt *c) {
  double acc = 0;
  for (uint32_t i = 0; i < kd_ckpt_n_meta(c); i++) {
    const struct kd_meta *m = kd_ckpt_meta_at(c, i);
    acc += (double)strlen(m->key);
    if (m->type == KD_META_STR) acc += (double)strlen(m->v.s);
    if (kd_ckpt_meta_find(c, m->key) != m) fail_verdict("meta_find disagrees with meta_at", m->key);
  }
  const struct kd_model *md = kd_ckpt_model(c);
  struct kd_err e = {0};
  if (kd_arch_validate(&md->arch, &e) != KD_OK) fail_verdict("opened an invalid architecture", e.msg);
  for (uint32_t i = 0; i < md->n_tensors; i++) {
    struct kd_tensor_info ti;
    if (kd_arch_tensor(&md->arch, i, &ti) != KD_OK) fail_verdict("tensor index", "out of range");
    for (uint64_t j = 0; j < ti.numel; j++) acc += md->t[i][j];
  }
  /* One candidate through the oracle, when the input width is small. */
  const struct kd_arch *a = &md->arch;
  if (kd_arch_ctx_width(a) + kd_arch_cand_width(a) <= 4096) {
    struct kd_column cols[KD_MAX_FEATURES];
    static float fl[4096];
    static int64_t ids[1] = {12345};
    memset(cols, 0, sizeof cols);
    for (uint32_t f = 0; f < a->n_features; f++) {
      if (a->features[f].kind == KD_FEAT_DENSE) { cols[f].floats = fl; cols[f].n_floats = a->features[f].dim; }
      else { cols[f].ids = ids; cols[f].n_ids = 1; }
    }
    struct kd_input in = {.n_cand = 1, .cols = cols};
    uint32_t tasks[KD_MAX_TASKS];
    float out[KD_MAX_TASKS];
    for (uint32_t t = 0; t < a->n_tasks; t++) tasks[t] = t;
    if (kd_score_ref(md, &in, tasks, a->n_tasks, out, &e) != KD_OK) fail_verdict("oracle on an opened model", e.msg);
    for (uint32_t t = 0; t < a->n_tasks; t++) acc += out[t];
  }
  return acc + kd_ckpt_crc(c);
}

/* Rejection kinds seen (replay mode prints them: which checks the mutants reached). */
#define N_KINDS 96
static char kinds[N_KINDS][48];
static uint64_t kind_n[N_KINDS];

static void note_kind(const char *msg) {
  char k[48];
  size_t i = 0;
  msg += 6; /* "fuzz: " */
  /* The kind: the message up to the first ':' or '(' or digit or quote, e.g. "metadata key ". */
  while (msg[i] && i < sizeof k - 1 && msg[i] != ':' && msg[i] != '(' && msg[i] != '"' && msg[i] != '\'' &&
         !(msg[i] >= '0' && msg[i] <= '9')) {
    k[i] = msg[i];
    i++;
  }
  k[i] = 0;
  for (int j = 0; j < N_KINDS; j++) {
    if (!kinds[j][0]) { memcpy(kinds[j], k, i + 1); kind_n[j] = 1; return; }
    if (!strcmp(kinds[j], k)) { kind_n[j]++; return; }
  }
}

/* Returns 1 when the input opened. */
static int try_open(const uint8_t *data, size_t size) {
  struct kd_err e = {0};
  kd_ckpt *c = kd_ckpt_open_mem(data, size, "fuzz", &e);
  if (!c) {
    if (e.code >= 0 || strncmp(e.msg, "fuzz: ", 6) || strlen(e.msg) < 12) fail_verdict("bad rejection message", e.msg);
    note_kind(e.msg);
    return 0;
  }
  volatile double sink = exercise(c);
  (void)sink;
  kd_ckpt_close(c);
  return 1;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  try_open(data, size);
  if (size >= 128 && size <= (1u << 22)) {
    uint8_t *b = malloc(size);
    if (!b) return 0;
    memcpy(b, data, size);
    kdt_reseal(b, size, 1);
    try_open(b, size);
    free(b);
  }
  return 0;
}

#ifndef KD_LIBFUZZER
/* ---- replay mode ---------------------------------------------------------------------------- */

static uint64_t rs;
static uint64_t rnd(void) {
  uint64_t z = (rs += 0x9E3779B97F4A7C15ull);
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return z ^ (z >> 31);
}

/* Seeds: small valid checkpoints written by kd_ckpt_write. */
static unsigned char *make_seed(int variant, size_t *len) {
  struct kd_arch a;
  kdt_micro_arch(&a);
  if (variant == 1) {
    a.n_tower = 0;
    a.n_features = 3;
    snprintf(a.features[2].name, KD_NAME_MAX, "tags");
    a.features[2].kind = KD_FEAT_SPARSE; a.features[2].group = KD_GROUP_CONTEXT;
    a.features[2].dim = 1; a.features[2].rows = 3;
    a.act_clip = 0;
  }
  struct kd_err e = {0};
  struct kd_model *m = kd_model_alloc(&a, &e);
  if (!m) return NULL;
  kd_model_init_random(m, 99 + (uint64_t)variant);
  struct kd_meta meta[] = {
      {.key = "provenance.teacher_id", .type = KD_META_STR, .v.s = "t\xC3\xA9"},
      {.key = "provenance.n", .type = KD_META_U64, .v.u = 5},
      {.key = "provenance.i", .type = KD_META_I64, .v.i = -5},
      {.key = "provenance.d", .type = KD_META_F64, .v.f = 0.5},
  };
  char path[64];
  snprintf(path, sizeof path, "fuzz-seed-%d-XXXXXX", (int)getpid());
  int fd = mkstemp(path);
  if (fd < 0) { kd_model_free(m); return NULL; }
  close(fd);
  int rc = kd_ckpt_write(path, m, meta, variant ? 4 : 0, &e);
  kd_model_free(m);
  unsigned char *b = rc == KD_OK ? kdt_read(path, len) : NULL;
  unlink(path);
  return b;
}

static const uint64_t interesting[] = {0, 1, 2, 7, 8, 15, 16, 63, 64, 127, 128, 159, 160, 255, 256, 4096,
                                       0x7FFFFFFFull, 0x80000000ull, 0xFFFFFFFFull, 0x100000000ull,
                                       0x7FFFFFFFFFFFFFFFull, 0x8000000000000000ull, 0xFFFFFFFFFFFFFFFFull};
static const int hfields64[] = {KDT_H_FSIZE, KDT_H_META_OFF, KDT_H_META_SIZE, KDT_H_TAB_OFF, KDT_H_TAB_SIZE,
                                KDT_H_DATA_OFF, KDT_H_DATA_SIZE};
static const int hfields32[] = {KDT_H_HSIZE, KDT_H_N_META, KDT_H_N_TENSORS, KDT_H_ENTRY_SIZE, 68, KDT_H_MINOR};

static uint64_t pick_value(size_t len) {
  uint64_t r = rnd() % 4;
  if (r == 0) return interesting[rnd() % (sizeof interesting / sizeof interesting[0])];
  if (r == 1) return len + (rnd() % 64) - 32;
  if (r == 2) return rnd() % (len + 1);
  return rnd();
}

/* One mutant of seed into out (capacity cap); returns its length; *sealed: CRCs re-sealed. */
static size_t mutate(const unsigned char *seed, size_t len, unsigned char *out, size_t cap, int *sealed) {
  memcpy(out, seed, len);
  *sealed = 0;
  size_t n = len;
  uint64_t moff = kdt_ld64(out + KDT_H_META_OFF), msize = kdt_ld64(out + KDT_H_META_SIZE);
  uint64_t toff = kdt_ld64(out + KDT_H_TAB_OFF), tsize = kdt_ld64(out + KDT_H_TAB_SIZE);
  switch (rnd() % 9) {
  case 0: { /* flip 1..8 random bits */
    int k = 1 + (int)(rnd() % 8);
    for (int i = 0; i < k; i++) out[rnd() % n] ^= (unsigned char)(1u << (rnd() % 8));
    break;
  }
  case 1: /* truncate */
    n = rnd() % len;
    break;
  case 2: { /* insert or delete a few bytes somewhere */
    size_t at = rnd() % len, k = 1 + rnd() % 16;
    if (rnd() % 2 && len + k <= cap) {
      memmove(out + at + k, out + at, len - at);
      for (size_t i = 0; i < k; i++) out[at + i] = (unsigned char)rnd();
      n = len + k;
    } else {
      if (at + k > len) k = len - at;
      memmove(out + at, out + at + k, len - at - k);
      n = len - k;
    }
    break;
  }
  case 3: /* a 64-bit header field, re-sealed */
    kdt_st64(out + hfields64[rnd() % (sizeof hfields64 / sizeof hfields64[0])], pick_value(len));
    *sealed = 1;
    break;
  case 4: /* a 32-bit header field, re-sealed */
    kdt_st32(out + hfields32[rnd() % (sizeof hfields32 / sizeof hfields32[0])], (uint32_t)pick_value(len));
    *sealed = 1;
    break;
  case 5: { /* metadata bytes, re-sealed */
    int k = 1 + (int)(rnd() % 4);
    for (int i = 0; i < k && msize; i++) {
      size_t at = moff + rnd() % msize;
      if (rnd() % 2) out[at] = (unsigned char)rnd();
      else if (at + 4 <= moff + msize) kdt_st32(out + at, (uint32_t)pick_value(msize));
    }
    *sealed = 1;
    break;
  }
  case 6: { /* a tensor table field, re-sealed */
    if (tsize < 160) break;
    size_t e = toff + (rnd() % (tsize / 160)) * 160;
    static const int ef[] = {KDT_E_NDIM, KDT_E_SHAPE, KDT_E_SHAPE + 8, KDT_E_SHAPE + 16, KDT_E_OFFSET, KDT_E_SIZE, 96, 0, 5};
    int f = ef[rnd() % (sizeof ef / sizeof ef[0])];
    if (f == KDT_E_NDIM || f == 96) kdt_st32(out + e + f, (uint32_t)pick_value(len));
    else if (f < 96) out[e + f] = (unsigned char)rnd();
    else kdt_st64(out + e + f, pick_value(len));
    *sealed = 1;
    break;
  }
  case 7: { /* a weight set to a random bit pattern (NaN/Inf sometimes), re-sealed */
    uint64_t doff = kdt_ld64(out + KDT_H_DATA_OFF);
    if (doff + 4 <= n - 16) {
      size_t at = doff + 4 * (rnd() % ((n - 16 - doff) / 4));
      uint32_t v = rnd() % 2 ? 0x7F800000u | (uint32_t)(rnd() % 3) : (uint32_t)rnd();
      kdt_st32(out + at, v);
    }
    *sealed = 1;
    break;
  }
  default: { /* bytes anywhere, then re-sealed */
    int k = 1 + (int)(rnd() % 4);
    for (int i = 0; i < k; i++) out[rnd() % n] = (unsigned char)rnd();
    *sealed = 1;
  }
  }
  if (*sealed) kdt_reseal(out, n, 1);
  return n;
}

static int replay_path(const char *p, int *files) {
  struct stat st;
  if (stat(p, &st) != 0) { fprintf(stderr, "fuzz_ckpt_replay: %s: not found\n", p); return 1; }
  if (S_ISDIR(st.st_mode)) {
    DIR *d = opendir(p);
    struct dirent *de;
    int rc = 0;
    while (d && (de = readdir(d))) {
      if (de->d_name[0] == '.') continue;
      char sub[4096];
      snprintf(sub, sizeof sub, "%s/%s", p, de->d_name);
      rc |= replay_path(sub, files);
    }
    if (d) closedir(d);
    return rc;
  }
  size_t len = 0;
  unsigned char *b = kdt_read(p, &len);
  if (!b) return 1;
  LLVMFuzzerTestOneInput(b, len);
  free(b);
  (*files)++;
  return 0;
}

int main(int argc, char **argv) {
  uint64_t n = 0, seed = 1;
  const char *seeds_dir = NULL;
  int files = 0, rc = 0;
  for (int i = 1; i < argc; i++) {
    if (!strcmp(argv[i], "--generate") && i + 1 < argc) n = strtoull(argv[++i], NULL, 10);
    else if (!strcmp(argv[i], "--seed") && i + 1 < argc) seed = strtoull(argv[++i], NULL, 10);
    else if (!strcmp(argv[i], "--write-seeds") && i + 1 < argc) seeds_dir = argv[++i];
    else rc |= replay_path(argv[i], &files);
  }
  size_t slen[2] = {0, 0};
  unsigned char *sb[2] = {make_seed(0, &slen[0]), make_seed(1, &slen[1])};
  if (!sb[0] || !sb[1]) { fprintf(stderr, "fuzz_ckpt_replay: could not make the seeds\n"); return 1; }
  for (int s = 0; s < 2; s++) {
    if (!try_open(sb[s], slen[s])) { fprintf(stderr, "fuzz_ckpt_replay: seed %d does not open\n", s); return 1; }
    if (seeds_dir) {
      char p[4096];
      snprintf(p, sizeof p, "%s/seed-%d.kdrk", seeds_dir, s);
      if (kdt_write(p, sb[s], slen[s]) != 0) { fprintf(stderr, "fuzz_ckpt_replay: cannot write %s\n", p); return 1; }
    }
  }
  rs = seed;
  size_t cap = slen[0] > slen[1] ? slen[0] + 64 : slen[1] + 64;
  unsigned char *buf = malloc(cap);
  uint64_t accepted = 0, sealed_n = 0, raw_accepted = 0;
  for (uint64_t i = 0; i < n; i++) {
    int s = (int)(rnd() % 2), sealed;
    size_t len = mutate(sb[s], slen[s], buf, cap, &sealed);
    int same = len == slen[s] && !memcmp(buf, sb[s], len);
    int ok = try_open(buf, len);
    accepted += ok;
    sealed_n += sealed;
    /* Without re-sealing, any change must be caught. */
    if (!sealed && !same && ok) {
      raw_accepted++;
      fprintf(stderr, "fuzz_ckpt_replay: mutant %" PRIu64 " (not re-sealed) was accepted\n", i);
    }
    if (!sealed) { /* also through the re-sealing path of the fuzz entry point */
      LLVMFuzzerTestOneInput(buf, len);
    }
  }
  printf("fuzz_ckpt_replay: %d files, %" PRIu64 " mutants (%" PRIu64 " re-sealed), %" PRIu64 " accepted, %" PRIu64
         " raw changes accepted\n", files, n, sealed_n, accepted, raw_accepted);
  for (int j = 0; j < N_KINDS && kinds[j][0]; j++) printf("  %8" PRIu64 "  %s\n", kind_n[j], kinds[j]);
  free(buf);
  free(sb[0]);
  free(sb[1]);
  return rc || raw_accepted ? 1 : 0;
}
#endif
