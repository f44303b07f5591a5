/* test_handler_mutants.c - the server's request path in-process: kd_handle_score,
 * kd_handle_metadata and kd_handle_check (decode into the worker arena, validate, score, encode)
 * on valid requests and on N seeded mutants of them (bit flips, cuts, duplications, random bytes).
 * Every input must give a gRPC status from the documented set and never crash or leak (run it
 * under ASan+UBSan: the sanitizer build runs the same test). Usage: test_handler_mutants [N] */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include <grpc/byte_buffer.h>
#include <grpc/byte_buffer_reader.h>
#include <grpc/grpc.h>
#include <grpc/support/time.h>

#include "health.pb-c.h"
#include "kd_test.h"
#include "kdrank.pb-c.h"
#include "log.h"
#include "serve.h"

static uint64_t g_rng = 88172645463325252ull;
static uint64_t rnd(void) {
  g_rng ^= g_rng << 13;
  g_rng ^= g_rng >> 7;
  g_rng ^= g_rng << 17;
  return g_rng;
}

/* A valid ScoreRequest for arch a with n candidates (k ids per sparse row), packed into out. */
static size_t valid_request(const struct kd_arch *a, uint32_t n, uint32_t k, uint8_t *out, size_t cap) {
  Kdrank__V1__ScoreRequest r = KDRANK__V1__SCORE_REQUEST__INIT;
  Kdrank__V1__FeatureBatch b[2] = {KDRANK__V1__FEATURE_BATCH__INIT, KDRANK__V1__FEATURE_BATCH__INIT};
  Kdrank__V1__Column cols[KD_MAX_FEATURES], *pc[2][KD_MAX_FEATURES];
  static float floats[KD_MAX_FEATURES][4096];
  static int64_t ids[KD_MAX_FEATURES][4096];
  r.model = "tiny";
  b[0].count = 1;
  b[1].count = n;
  b[0].columns = pc[0];
  b[1].columns = pc[1];
  r.context = &b[0];
  r.candidates = &b[1];
  for (uint32_t i = 0; i < a->n_features; i++) {
    const struct kd_feature *f = &a->features[i];
    int g = f->group == KD_GROUP_CANDIDATE;
    uint32_t rows = b[g].count;
    Kdrank__V1__Column c = KDRANK__V1__COLUMN__INIT;
    c.name = (char *)f->name;
    if (f->kind == KD_FEAT_DENSE) {
      c.n_floats = (size_t)rows * f->dim;
      for (size_t j = 0; j < c.n_floats; j++) floats[i][j] = (float)(rnd() % 2000) / 1000.0f - 1.0f;
      c.floats = floats[i];
    } else {
      c.n_ids = (size_t)rows * k;
      for (size_t j = 0; j < c.n_ids; j++) ids[i][j] = (int64_t)rnd();
      c.ids = ids[i];
    }
    cols[i] = c;
    pc[g][b[g].n_columns++] = &cols[i];
  }
  size_t len = kdrank__v1__score_request__get_packed_size(&r);
  REQUIRE(len <= cap);
  return kdrank__v1__score_request__pack(&r, out);
}

/* Applies 1-4 random edits to buf (len, capacity cap); returns the new length. */
static size_t mutate(uint8_t *buf, size_t len, size_t cap) {
  int edits = 1 + (int)(rnd() % 4);
  for (int e = 0; e < edits && len > 0; e++) {
    size_t at = rnd() % len;
    switch (rnd() % 4) {
    case 0: buf[at] ^= (uint8_t)(1u << (rnd() % 8)); break;
    case 1: { size_t n = 1 + rnd() % 16; if (n > len - at) n = len - at; memmove(buf + at, buf + at + n, len - at - n); len -= n; break; }
    case 2: { size_t n = 1 + rnd() % 32; if (n > len - at) n = len - at; if (len + n > cap) break;
              memmove(buf + at + n, buf + at, len - at); len += n; break; }
    default: {
      size_t n = 1 + rnd() % 8;
      if (len + n > cap) break;
      memmove(buf + at + n, buf + at, len - at);
      for (size_t j = 0; j < n; j++) buf[at + j] = (uint8_t)rnd();
      len += n;
      break;
    }
    }
  }
  return len;
}

static int allowed(int code) {
  return code == GRPC_STATUS_OK || code == GRPC_STATUS_INVALID_ARGUMENT || code == GRPC_STATUS_NOT_FOUND ||
         code == GRPC_STATUS_RESOURCE_EXHAUSTED || code == GRPC_STATUS_UNAVAILABLE;
}

/* Runs one handler on bytes; returns its status code (checks the reply matches the code). */
static int run(struct kd_worker *w, int method, const uint8_t *bytes, size_t len) {
  grpc_slice s = grpc_slice_from_copied_buffer((const char *)bytes, len);
  struct kd_call c;
  memset(&c, 0, sizeof c);
  c.w = w;
  c.method = method;
  c.rpc.deadline = gpr_inf_future(GPR_CLOCK_MONOTONIC);
  c.rpc.payload = len ? grpc_raw_byte_buffer_create(&s, 1) : NULL;
  c.t_dequeue = kd_now_ns();
  grpc_slice_unref(s);
  char msg[KD_SERVE_MSG_MAX];
  msg[0] = 0;
  grpc_byte_buffer *resp = NULL;
  int code = method == KD_M_SCORE      ? kd_handle_score(w, &c, &resp, msg)
             : method == KD_M_METADATA ? kd_handle_metadata(w, &c, &resp, msg)
                                       : kd_handle_check(w, &c, &resp, msg);
  CHECKF((code == GRPC_STATUS_OK) == (resp != NULL), "method %d code %d resp %p", method, code, (void *)resp);
  CHECKF(code == GRPC_STATUS_OK || msg[0], "method %d code %d without a message", method, code);
  if (resp) grpc_byte_buffer_destroy(resp);
  if (c.rpc.payload) grpc_byte_buffer_destroy(c.rpc.payload);
  kd_arena_reset(&w->arena);
  return code;
}

int main(int argc, char **argv) {
  long n_mut = argc > 1 ? atol(argv[1]) : 20000;
  char repo[] = "/tmp/kdmut-XXXXXX", path[256];
  REQUIRE(mkdtemp(repo));
  snprintf(path, sizeof path, "%s/tiny", repo);
  mkdir(path, 0755);
  snprintf(path, sizeof path, "%s/tiny/1", repo);
  mkdir(path, 0755);
  snprintf(path, sizeof path, "%s/tiny/1/model.kdr", repo);
  struct kd_arch a;
  struct kd_err e = {0};
  REQUIRE(kd_arch_preset("tiny", &a, &e) == KD_OK);
  struct kd_model *m = kd_model_alloc(&a, &e);
  REQUIRE(m);
  kd_model_init_random(m, 7);
  REQUIRE(kd_ckpt_write(path, m, NULL, 0, &e) == KD_OK);
  kd_model_free(m);

  grpc_init();
  static struct kd_serve_config cfg;
  int action;
  char *args[] = {"test", "--model-repo", repo, "--max-candidates", "64", "--max-message-bytes", "65536"};
  REQUIRE(kd_config_parse(7, args, &cfg, &action, &e) == KD_OK);
  kd_log_set_level(KD_LOG_ERROR);
  struct kd_registry_params rp = {.repo = repo, .max_cand = 64, .n_scratch = 1};
  kd_registry *reg = kd_registry_open(rp, &e);
  REQUIRE(reg);
  kd_metrics *metrics = kd_metrics_create(1, reg);
  REQUIRE(metrics);
  struct kd_server srv;
  memset(&srv, 0, sizeof srv);
  srv.cfg = &cfg;
  srv.reg = reg;
  srv.metrics = metrics;
  srv.default_model = "tiny";
  atomic_init(&srv.draining, 0);
  struct kd_worker w;
  memset(&w, 0, sizeof w);
  w.srv = &srv;
  w.m = kd_metrics_worker(metrics, 0);
  w.out = malloc(64 * KD_MAX_TASKS * sizeof(float));
  REQUIRE(w.out && kd_arena_init(&w.arena, 1 << 16, 16 << 20) == 0);

  static uint8_t seeds[3][65536], buf[70000];
  size_t seed_len[3];
  uint32_t shapes[3][2] = {{1, 1}, {7, 2}, {64, 3}};
  for (int i = 0; i < 3; i++) {
    seed_len[i] = valid_request(&a, shapes[i][0], shapes[i][1], seeds[i], sizeof seeds[i]);
    CHECK(run(&w, KD_M_SCORE, seeds[i], seed_len[i]) == GRPC_STATUS_OK);
  }
  uint8_t meta_req[] = {0x0a, 0x04, 't', 'i', 'n', 'y'}; /* GetModelMetadataRequest{model:"tiny"} */
  CHECK(run(&w, KD_M_METADATA, meta_req, sizeof meta_req) == GRPC_STATUS_OK);
  CHECK(run(&w, KD_M_CHECK, NULL, 0) == GRPC_STATUS_OK);
  CHECK(run(&w, KD_M_SCORE, NULL, 0) == GRPC_STATUS_INVALID_ARGUMENT); /* empty = defaults */

  long counts[17] = {0}, bad = 0;
  for (long it = 0; it < n_mut; it++) {
    int which = (int)(rnd() % 3);
    memcpy(buf, seeds[which], seed_len[which]);
    size_t len = mutate(buf, seed_len[which], sizeof buf);
    int code = run(&w, KD_M_SCORE, buf, len);
    if (!allowed(code)) bad++;
    counts[code >= 0 && code < 17 ? code : 2]++;
    if (it % 8 == 0) { /* the small handlers too */
      uint8_t small[64];
      size_t sl = sizeof meta_req;
      memcpy(small, meta_req, sl);
      sl = mutate(small, sl, sizeof small);
      code = run(&w, it % 16 ? KD_M_METADATA : KD_M_CHECK, small, sl);
      if (!allowed(code)) bad++;
    }
  }
  CHECKF(bad == 0, "%ld mutants gave a status outside the documented set", bad);
  CHECK(counts[GRPC_STATUS_OK] > 0 && counts[GRPC_STATUS_INVALID_ARGUMENT] > 0);
  printf("%ld mutants: OK %ld, INVALID_ARGUMENT %ld, NOT_FOUND %ld, RESOURCE_EXHAUSTED %ld\n", n_mut,
         counts[GRPC_STATUS_OK], counts[GRPC_STATUS_INVALID_ARGUMENT], counts[GRPC_STATUS_NOT_FOUND],
         counts[GRPC_STATUS_RESOURCE_EXHAUSTED]);

  free(w.out);
  kd_arena_free(&w.arena);
  kd_metrics_free(metrics);
  kd_registry_free(reg);
  grpc_shutdown();
  char cmd[300];
  snprintf(cmd, sizeof cmd, "rm -rf '%s'", repo);
  CHECK(system(cmd) == 0);
  KD_TEST_END();
}
