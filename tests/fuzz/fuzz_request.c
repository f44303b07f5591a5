/* fuzz_request.c - fuzz target for kdrank-ckpt's ScoreRequest JSON parser (loader/ckpt_request.c):
 * parse, bind to the tiny architecture, check, and score with the oracle when the input passes.
 * Every input must be accepted or rejected with a message; never a crash, leak or bad read.
 * Builds as in fuzz_ckpt.c: libFuzzer with -DKD_FUZZ=ON (clang), or a replay binary for CTest
 * that mutates valid requests (`fuzz_request_replay [--generate N] [--seed S] [FILE|DIR]...`). */
#include <dirent.h>
#include <inttypes.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "ckpt_request.h"
#include "kdrank_loader.h"

static struct kd_model *model;

static void init_model(void) {
  if (model) return;
  struct kd_arch a;
  struct kd_err e = {0};
  if (kd_arch_preset("tiny", &a, &e) != KD_OK || !(model = kd_model_alloc(&a, &e))) {
    fprintf(stderr, "fuzz_request: %s\n", e.msg);
    abort();
  }
  kd_model_init_random(model, 1);
}

static uint64_t outcome[4]; /* parse error, bind error, input error, scored */

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  init_model();
  struct kd_req r;
  struct kd_err e = {0};
  if (kd_req_parse((const char *)data, size, "fuzz", &r, &e) != KD_OK) {
    if (!e.msg[0]) abort();
    outcome[0]++;
    return 0;
  }
  struct kd_column cols[KD_MAX_FEATURES];
  const struct kd_arch *a = &model->arch;
  if (kd_req_bind(&r, a, cols, &e) != KD_OK) {
    if (!e.msg[0]) abort();
    outcome[1]++;
  } else {
    struct kd_input in = {.n_cand = r.cand.count, .cols = cols};
    if (kd_input_check(a, &in, &e) != KD_OK || in.n_cand > 4096) {
      outcome[2]++;
    } else {
      uint32_t tasks[4] = {0, 1, 2, 3};
      float *out = malloc((size_t)in.n_cand * 4 * sizeof *out);
      if (out && kd_score_ref(model, &in, tasks, 4, out, &e) != KD_OK) abort();
      free(out);
      outcome[3]++;
    }
  }
  kd_req_free(&r);
  return 0;
}

#ifndef KD_LIBFUZZER
static uint64_t rs;
static uint64_t rnd(void) {
  uint64_t z = (rs += 0x9E3779B97F4A7C15ull);
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return z ^ (z >> 31);
}

/* Tokens spliced into requests: the proto3 JSON edge cases. */
static const char *tokens[] = {
    "null", "true", "false", "0", "-1", "1e308", "-1e39", "1.5", "\"NaN\"", "\"Infinity\"", "\"-Infinity\"",
    "\"9223372036854775807\"", "\"-9223372036854775808\"", "\"9223372036854775808\"", "\"18446744073709551615\"",
    "9007199254740993", "\"\"", "\"x\"", "[]", "{}", "[1,2,3]", "{\"a\":1}", "\"user_id\"", "\"item_id\"",
    ",", ":", "[", "]", "{", "}", "\"\\u0000\"", "\"\\ud800\"", "\"count\"", "\"columns\"", "\"floats\"", "\"ids\"",
    "\"routing_key\"", "\"routingKey\"", "\"tasks\"", "\"click\"", "4294967296", "\"4294967295\"",
};

static size_t mutate(const char *seed, size_t len, char *out, size_t cap) {
  size_t n = len;
  memcpy(out, seed, len);
  int k = 1 + (int)(rnd() % 3);
  for (int i = 0; i < k; i++) {
    size_t at = n ? rnd() % n : 0;
    switch (rnd() % 4) {
    case 0: out[at] = (char)rnd(); break;                      /* a byte */
    case 1: if (n) { memmove(out + at, out + at + 1, n - at - 1); n--; } break; /* delete */
    case 2: n = at; break;                                     /* truncate */
    default: {                                                 /* splice a token */
      const char *t = tokens[rnd() % (sizeof tokens / sizeof tokens[0])];
      size_t tl = strlen(t), del = rnd() % 8;
      if (at + del > n) del = n - at;
      if (n - del + tl > cap) break;
      memmove(out + at + tl, out + at + del, n - at - del);
      memcpy(out + at, t, tl);
      n = n - del + tl;
    }
    }
  }
  return n;
}

static void replay_path(const char *p, int *files) {
  struct stat st;
  if (stat(p, &st) != 0) return;
  if (S_ISDIR(st.st_mode)) {
    DIR *d = opendir(p);
    struct dirent *de;
    while (d && (de = readdir(d))) {
      if (de->d_name[0] == '.') continue;
      char sub[4096];
      snprintf(sub, sizeof sub, "%s/%s", p, de->d_name);
      replay_path(sub, files);
    }
    if (d) closedir(d);
    return;
  }
  FILE *f = fopen(p, "rb");
  if (!f) return;
  char *buf = malloc((size_t)st.st_size + 1);
  size_t n = buf ? fread(buf, 1, (size_t)st.st_size, f) : 0;
  fclose(f);
  if (buf) LLVMFuzzerTestOneInput((const uint8_t *)buf, n);
  free(buf);
  (*files)++;
}

int main(int argc, char **argv) {
  uint64_t n = 0, seed = 1;
  int files = 0;
  const char *seeds_dir = NULL;
  for (int i = 1; i < argc; i++) {
    if (!strcmp(argv[i], "--generate") && i + 1 < argc) n = strtoull(argv[++i], NULL, 10);
    else if (!strcmp(argv[i], "--seed") && i + 1 < argc) seed = strtoull(argv[++i], NULL, 10);
    else if (!strcmp(argv[i], "--write-seeds") && i + 1 < argc) seeds_dir = argv[++i];
    else replay_path(argv[i], &files);
  }
  init_model();
  /* Seeds: valid requests (1 and 3 candidates, k 1 and 2), which must score. */
  char *sd[2] = {0};
  size_t sl[2] = {0};
  struct kd_err e = {0};
  for (int s = 0; s < 2; s++) {
    FILE *m = open_memstream(&sd[s], &sl[s]);
    if (!m || kd_req_write_random(m, &model->arch, "tiny", 1 + 2 * (uint32_t)s, 1 + (uint32_t)s, 5, &e) != KD_OK) return 1;
    fclose(m);
    uint64_t before = outcome[3];
    LLVMFuzzerTestOneInput((const uint8_t *)sd[s], sl[s]);
    if (outcome[3] != before + 1) { fprintf(stderr, "fuzz_request_replay: seed %d does not score\n", s); return 1; }
    if (seeds_dir) {
      char p[4096];
      snprintf(p, sizeof p, "%s/seed-%d.json", seeds_dir, s);
      FILE *f = fopen(p, "wb");
      if (f) { fwrite(sd[s], 1, sl[s], f); fclose(f); }
    }
  }
  rs = seed;
  size_t cap = (sl[0] > sl[1] ? sl[0] : sl[1]) + 256;
  char *buf = malloc(cap);
  for (uint64_t i = 0; i < n; i++) {
    int s = (int)(rnd() % 2);
    size_t len = mutate(sd[s], sl[s], buf, cap);
    LLVMFuzzerTestOneInput((const uint8_t *)buf, len);
  }
  printf("fuzz_request_replay: %d files, %" PRIu64 " mutants: %" PRIu64 " not parsed, %" PRIu64 " not bound, %" PRIu64
         " failed the input check, %" PRIu64 " scored\n", files, n, outcome[0], outcome[1], outcome[2], outcome[3]);
  free(buf);
  free(sd[0]);
  free(sd[1]);
  kd_model_free(model);
  return 0;
}
#endif
