/* bench_swap.c - kdrank-serve latency and memory across hot swaps (not a test: it prints figures).
 * Closed-loop gRPC core clients (one thread and one connection each, one call at a time) score a
 * fixed request. Phase 1 (steady): no publications. Phase 2 (swaps): this program publishes N new
 * versions into the repository (copy into REPO/MODEL/.publish-K, then rename to REPO/MODEL/K:
 * atomic), one every --every-ms, and waits until the server answers from each before the next.
 * It prints p50/p99/max of both phases and their ratio, the p99 of the calls that overlapped a
 * load (publication -> first answer from the new version), failed calls, and the server's RSS
 * after phase 1 and after phase 2 (plus a settle time), with their ratio.
 * Run by server/bench/run_swap_bench.sh. */
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <grpc/byte_buffer.h>
#include <grpc/byte_buffer_reader.h>
#include "../client.h"
#include <grpc/grpc.h>
#include <grpc/grpc_security.h>
#include <grpc/support/time.h>

#include "kdrank.pb-c.h"

static double now_ms(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec * 1e3 + (double)ts.tv_nsec / 1e6;
}

static void sleep_ms(double ms) {
  struct timespec ts = {(time_t)(ms / 1e3), (long)((ms - (double)(time_t)(ms / 1e3) * 1e3) * 1e6)};
  nanosleep(&ts, NULL);
}

struct conn {
  grpc_channel *ch;
  grpc_completion_queue *cq;
  void *h_score, *h_meta;
};

static void conn_open(struct conn *c, const char *target) {
  grpc_arg arg = {.type = GRPC_ARG_INTEGER, .key = (char *)GRPC_ARG_USE_LOCAL_SUBCHANNEL_POOL, .value.integer = 1};
  grpc_channel_args args = {.num_args = 1, .args = &arg};
  grpc_channel_credentials *cr = grpc_insecure_credentials_create();
  c->ch = grpc_channel_create(target, cr, &args);
  grpc_channel_credentials_release(cr);
  c->cq = grpc_completion_queue_create_for_pluck(NULL);
  c->h_score = grpc_channel_register_call(c->ch, "/kdrank.v1.Ranker/Score", NULL, NULL);
  c->h_meta = grpc_channel_register_call(c->ch, "/kdrank.v1.Ranker/GetModelMetadata", NULL, NULL);
}

static void conn_close(struct conn *c) {
  grpc_channel_destroy(c->ch);
  grpc_completion_queue_shutdown(c->cq);
  while (grpc_completion_queue_pluck(c->cq, NULL, gpr_inf_future(GPR_CLOCK_MONOTONIC), NULL).type != GRPC_QUEUE_SHUTDOWN) {
  }
  grpc_completion_queue_destroy(c->cq);
}

/* One unary call with pre-packed request bytes; returns the status, *out the reply bytes. */
static int unary(struct conn *c, void *h, grpc_slice body, grpc_slice *out) {
  gpr_timespec dl = gpr_time_add(gpr_now(GPR_CLOCK_MONOTONIC), gpr_time_from_seconds(30, GPR_TIMESPAN));
  grpc_call *call = grpc_channel_create_registered_call(c->ch, NULL, GRPC_PROPAGATE_DEFAULTS, c->cq, h, dl, NULL);
  int status = kd_client_unary(call, c->cq, body, NULL, 0, out, NULL, 0);
  grpc_call_unref(call);
  return status;
}

static uint64_t rng = 0x9E3779B97F4A7C15ull;
static float rnd(void) {
  rng ^= rng << 13;
  rng ^= rng >> 7;
  rng ^= rng << 17;
  return (float)(rng >> 40) / (float)(1 << 23) - 1.0f;
}

/* Packs a valid request with n candidates for the model described by meta. */
static grpc_slice build_request(const Kdrank__V1__ModelMetadata *meta, uint32_t n) {
  Kdrank__V1__ScoreRequest r = KDRANK__V1__SCORE_REQUEST__INIT;
  Kdrank__V1__FeatureBatch b[2] = {KDRANK__V1__FEATURE_BATCH__INIT, KDRANK__V1__FEATURE_BATCH__INIT};
  Kdrank__V1__Column *cols = calloc(meta->n_features, sizeof *cols);
  Kdrank__V1__Column **cp[2] = {calloc(meta->n_features, sizeof(void *)), calloc(meta->n_features, sizeof(void *))};
  r.model = meta->model;
  r.routing_key = 42;
  b[0].count = 1;
  b[1].count = n;
  for (size_t i = 0; i < meta->n_features; i++) {
    const Kdrank__V1__FeatureSpec *f = meta->features[i];
    int g = f->group == KDRANK__V1__FEATURE_SPEC__GROUP__CANDIDATE;
    Kdrank__V1__Column *c = &cols[i];
    kdrank__v1__column__init(c);
    c->name = f->name;
    if (f->kind == KDRANK__V1__FEATURE_SPEC__KIND__DENSE) {
      c->n_floats = (size_t)b[g].count * f->dim;
      c->floats = malloc(c->n_floats * sizeof(float));
      for (size_t k = 0; k < c->n_floats; k++) c->floats[k] = rnd();
    } else {
      c->n_ids = b[g].count;
      c->ids = malloc(c->n_ids * sizeof(int64_t));
      for (size_t k = 0; k < c->n_ids; k++) c->ids[k] = (int64_t)(k * 7919 + 13);
    }
    cp[g][b[g].n_columns++] = c;
  }
  b[0].columns = cp[0];
  b[1].columns = cp[1];
  r.context = &b[0];
  r.candidates = &b[1];
  size_t sz = kdrank__v1__score_request__get_packed_size(&r);
  grpc_slice s = grpc_slice_malloc(sz);
  kdrank__v1__score_request__pack(&r, GRPC_SLICE_START_PTR(s));
  for (size_t i = 0; i < meta->n_features; i++) {
    free(cols[i].floats);
    free(cols[i].ids);
  }
  free(cols);
  free(cp[0]);
  free(cp[1]);
  return s;
}

/* Latency samples: (time the call started, ms, version answered). */
struct sample {
  double t0, ms;
  int64_t version;
};

struct worker {
  pthread_t th;
  const char *target;
  grpc_slice req;
  struct sample *s;
  size_t n, cap;
  long failed;
};

static atomic_int g_stop;
static atomic_llong g_last_version; /* newest version seen in any answer */

static void *worker_main(void *arg) {
  struct worker *w = arg;
  struct conn c;
  conn_open(&c, w->target);
  while (!atomic_load(&g_stop)) {
    grpc_slice out;
    double t0 = now_ms();
    int st = unary(&c, c.h_score, w->req, &out);
    double ms = now_ms() - t0;
    int64_t ver = -1;
    if (st == GRPC_STATUS_OK) {
      Kdrank__V1__ScoreResponse *r = kdrank__v1__score_response__unpack(NULL, GRPC_SLICE_LENGTH(out), GRPC_SLICE_START_PTR(out));
      if (r) {
        ver = r->version;
        kdrank__v1__score_response__free_unpacked(r, NULL);
      }
    }
    grpc_slice_unref(out);
    if (ver < 0) {
      w->failed++;
      continue;
    }
    long long cur = atomic_load(&g_last_version);
    while (ver > cur && !atomic_compare_exchange_weak(&g_last_version, &cur, ver)) {
    }
    if (w->n == w->cap) {
      w->cap = w->cap ? w->cap * 2 : 65536;
      w->s = realloc(w->s, w->cap * sizeof *w->s);
    }
    w->s[w->n++] = (struct sample){t0, ms, ver};
  }
  conn_close(&c);
  return NULL;
}

static long rss_kib(int pid) {
  char path[64], line[256];
  snprintf(path, sizeof path, "/proc/%d/status", pid);
  FILE *f = fopen(path, "r");
  long v = -1;
  while (f && fgets(line, sizeof line, f))
    if (strncmp(line, "VmRSS:", 6) == 0) v = strtol(line + 6, NULL, 10);
  if (f) fclose(f);
  return v;
}

static int cmp_d(const void *a, const void *b) {
  double x = *(const double *)a, y = *(const double *)b;
  return (x > y) - (x < y);
}

/* Percentile p of v[0..n) (sorted in place). */
static double pct(double *v, size_t n, double p) {
  if (!n) return 0;
  qsort(v, n, sizeof *v, cmp_d);
  size_t i = (size_t)(p * (double)(n - 1) + 0.5);
  return v[i];
}

static int copy_file(const char *src, const char *dst) {
  int in = open(src, O_RDONLY), out = open(dst, O_WRONLY | O_CREAT | O_TRUNC, 0644);
  int rc = in >= 0 && out >= 0 ? 0 : -1;
  char buf[1 << 16];
  ssize_t k;
  while (rc == 0 && (k = read(in, buf, sizeof buf)) > 0)
    if (write(out, buf, (size_t)k) != k) rc = -1;
  if (out >= 0 && (fsync(out) != 0 || close(out) != 0)) rc = -1;
  if (in >= 0) close(in);
  return rc;
}

int main(int argc, char **argv) {
  const char *target = NULL, *repo = NULL, *model = "student", *files = NULL;
  int pid = 0, swaps = 100, clients = 1, cand = 100;
  double steady_s = 20, every_ms = 300, settle_s = 3;
  for (int i = 1; i + 1 < argc; i += 2) {
    if (!strcmp(argv[i], "--target")) target = argv[i + 1];
    else if (!strcmp(argv[i], "--pid")) pid = atoi(argv[i + 1]);
    else if (!strcmp(argv[i], "--repo")) repo = argv[i + 1];
    else if (!strcmp(argv[i], "--model")) model = argv[i + 1];
    else if (!strcmp(argv[i], "--ckpts")) files = argv[i + 1];
    else if (!strcmp(argv[i], "--swaps")) swaps = atoi(argv[i + 1]);
    else if (!strcmp(argv[i], "--every-ms")) every_ms = atof(argv[i + 1]);
    else if (!strcmp(argv[i], "--steady-s")) steady_s = atof(argv[i + 1]);
    else if (!strcmp(argv[i], "--settle-s")) settle_s = atof(argv[i + 1]);
    else if (!strcmp(argv[i], "--clients")) clients = atoi(argv[i + 1]);
    else if (!strcmp(argv[i], "--candidates")) cand = atoi(argv[i + 1]);
  }
  if (!target || !repo || !files || pid <= 0 || clients < 1 || clients > 16 || swaps < 1) {
    fprintf(stderr, "usage: kdrank-bench-swap --target ipv4:127.0.0.1:PORT --pid PID --repo DIR --ckpts A.kdr,B.kdr "
                    "[--model student] [--swaps 100] [--every-ms 300] [--steady-s 20] [--settle-s 3] "
                    "[--clients 1] [--candidates 100]\n");
    return 2;
  }
  char *list = strdup(files), *save = NULL, *ck[16];
  int nck = 0;
  for (char *t = strtok_r(list, ",", &save); t && nck < 16; t = strtok_r(NULL, ",", &save)) ck[nck++] = t;

  grpc_init();
  struct conn c;
  conn_open(&c, target);
  Kdrank__V1__GetModelMetadataRequest mr = KDRANK__V1__GET_MODEL_METADATA_REQUEST__INIT;
  mr.model = (char *)model;
  size_t msz = kdrank__v1__get_model_metadata_request__get_packed_size(&mr);
  grpc_slice ms = grpc_slice_malloc(msz);
  kdrank__v1__get_model_metadata_request__pack(&mr, GRPC_SLICE_START_PTR(ms));
  grpc_slice out;
  int mst = unary(&c, c.h_meta, ms, &out);
  grpc_slice_unref(ms);
  if (mst != GRPC_STATUS_OK) {
    fprintf(stderr, "bench: GetModelMetadata failed\n");
    return 1;
  }
  Kdrank__V1__ModelMetadata *meta = kdrank__v1__model_metadata__unpack(NULL, GRPC_SLICE_LENGTH(out), GRPC_SLICE_START_PTR(out));
  grpc_slice_unref(out);
  int64_t v0 = meta->version;
  grpc_slice req = build_request(meta, (uint32_t)cand);
  conn_close(&c);

  struct worker *w = calloc((size_t)clients, sizeof *w);
  atomic_store(&g_last_version, v0);
  for (int i = 0; i < clients; i++) {
    w[i].target = target;
    w[i].req = req;
    pthread_create(&w[i].th, NULL, worker_main, &w[i]);
  }
  sleep_ms(1000); /* connect + warm */
  /* Prime: publish one version first, so the steady phase already holds what the keep-2 policy
   * holds after any swap (stable + the previous stable as a warm rollback target): the RSS
   * comparison then measures leaks, not the policy's second loaded version. */
  for (int k = 0; k < 1; k++) {
    int64_t ver = v0 + 1;
    char tmp[4096], file[4200], fin[4096];
    snprintf(tmp, sizeof tmp, "%s/%s/.publish-%lld", repo, model, (long long)ver);
    snprintf(file, sizeof file, "%s/model.kdr", tmp);
    snprintf(fin, sizeof fin, "%s/%s/%lld", repo, model, (long long)ver);
    if (mkdir(tmp, 0755) != 0 || copy_file(ck[(k + 1) % nck], file) != 0 || rename(tmp, fin) != 0) {
      fprintf(stderr, "bench: publish %s failed: %s\n", fin, strerror(errno));
      return 1;
    }
    double limit = now_ms() + 60000;
    while (atomic_load(&g_last_version) < ver && now_ms() < limit) sleep_ms(1);
    v0 = ver;
    sleep_ms(2000);
  }
  double t_steady0 = now_ms();
  sleep_ms(steady_s * 1e3);
  double t_swaps0 = now_ms();
  long rss_before = rss_kib(pid);
  /* Swaps: publish, wait for the first answer from it (bounded), keep the cadence. */
  double *win0 = calloc((size_t)swaps, sizeof *win0), *win1 = calloc((size_t)swaps, sizeof *win1);
  int published = 0, live = 0;
  double live_ms_sum = 0, live_ms_max = 0;
  for (int k = 0; k < swaps; k++) {
    double t = now_ms();
    int64_t ver = v0 + 1 + k;
    char tmp[4096], file[4200], fin[4096];
    snprintf(tmp, sizeof tmp, "%s/%s/.publish-%lld", repo, model, (long long)ver);
    snprintf(file, sizeof file, "%s/model.kdr", tmp);
    snprintf(fin, sizeof fin, "%s/%s/%lld", repo, model, (long long)ver);
    if (mkdir(tmp, 0755) != 0 || copy_file(ck[k % nck], file) != 0 || rename(tmp, fin) != 0) {
      fprintf(stderr, "bench: publish %s failed: %s\n", fin, strerror(errno));
      break;
    }
    published++;
    win0[k] = now_ms();
    double limit = win0[k] + 30000;
    while (atomic_load(&g_last_version) < ver && now_ms() < limit) sleep_ms(1);
    win1[k] = now_ms();
    if (atomic_load(&g_last_version) >= ver) {
      live++;
      live_ms_sum += win1[k] - win0[k];
      if (win1[k] - win0[k] > live_ms_max) live_ms_max = win1[k] - win0[k];
    }
    double next = t + every_ms;
    if (now_ms() < next) sleep_ms(next - now_ms());
  }
  double t_swaps1 = now_ms();
  atomic_store(&g_stop, 1);
  for (int i = 0; i < clients; i++) pthread_join(w[i].th, NULL);
  sleep_ms(settle_s * 1e3); /* retired versions are freed once their last call ends */
  long rss_after = rss_kib(pid);

  size_t total = 0;
  long failed = 0;
  for (int i = 0; i < clients; i++) total += w[i].n, failed += w[i].failed;
  double *st = malloc((total + 1) * sizeof *st), *sw = malloc((total + 1) * sizeof *sw), *sl = malloc((total + 1) * sizeof *sl);
  size_t nst = 0, nsw = 0, nsl = 0;
  for (int i = 0; i < clients; i++)
    for (size_t j = 0; j < w[i].n; j++) {
      struct sample *s = &w[i].s[j];
      if (s->t0 >= t_steady0 && s->t0 < t_swaps0) st[nst++] = s->ms;
      else if (s->t0 >= t_swaps0 && s->t0 < t_swaps1) {
        sw[nsw++] = s->ms;
        /* In a load window: the call overlapped [publication, first answer from it]. */
        for (int k = 0; k < published; k++)
          if (s->t0 <= win1[k] && s->t0 + s->ms >= win0[k]) {
            sl[nsl++] = s->ms;
            break;
          }
      }
    }
  double st50 = pct(st, nst, 0.5), st99 = pct(st, nst, 0.99), stmax = pct(st, nst, 1.0);
  double sw50 = pct(sw, nsw, 0.5), sw99 = pct(sw, nsw, 0.99), swmax = pct(sw, nsw, 1.0);
  double sl99 = pct(sl, nsl, 0.99);
  printf("clients %d, %d candidates per call, checkpoint(s) %s\n", clients, cand, files);
  printf("steady : %8zu calls in %.1f s  p50 %.3f ms  p99 %.3f ms  max %.3f ms\n", nst, (t_swaps0 - t_steady0) / 1e3, st50, st99, stmax);
  printf("swaps  : %8zu calls in %.1f s  p50 %.3f ms  p99 %.3f ms  max %.3f ms  (%d published, %d live, publish->live mean %.1f ms max %.1f ms)\n",
         nsw, (t_swaps1 - t_swaps0) / 1e3, sw50, sw99, swmax, published, live, live ? live_ms_sum / live : 0.0, live_ms_max);
  printf("loading: %8zu calls overlapping a publication->live window  p99 %.3f ms\n", nsl, sl99);
  printf("p99 ratio swaps/steady %.3f (target <= 1.25); loading-window p99 / steady p99 %.3f\n", st99 > 0 ? sw99 / st99 : 0, st99 > 0 ? sl99 / st99 : 0);
  printf("failed calls %ld\n", failed);
  printf("server RSS before swaps %ld KiB, after %d swaps + %.0f s %ld KiB, ratio %.3f (target <= 1.10)\n", rss_before, published,
         settle_s, rss_after, rss_before > 0 ? (double)rss_after / (double)rss_before : 0);
  grpc_slice_unref(req);
  kdrank__v1__model_metadata__free_unpacked(meta, NULL);
  grpc_shutdown();
  return failed ? 1 : 0;
}
