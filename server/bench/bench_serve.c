/* bench_serve.c - kdrank-serve latency breakdown. A closed-loop gRPC core client on one connection
 * (one call at a time) measures end-to-end latency; the server's own histograms (scraped from
 * /metrics before and after each step) give its decode / queue / score / encode / total time per
 * call. Requests are random but valid, built from GetModelMetadata. Also reports the server's RSS
 * from /proc (idle and under load). Run by server/bench/run_bench.sh; prints a table. */
#include <arpa/inet.h>
#include <math.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include <grpc/byte_buffer.h>
#include <grpc/byte_buffer_reader.h>
#include "../client.h"
#include <grpc/grpc.h>
#include <grpc/grpc_security.h>
#include <grpc/support/alloc.h>
#include <grpc/support/time.h>

#include "health.pb-c.h"
#include "kdrank.pb-c.h"

static double now_us(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec * 1e6 + (double)ts.tv_nsec / 1e3;
}

static uint64_t rng = 0x9E3779B97F4A7C15ull;
static uint64_t next_u64(void) {
  rng ^= rng << 13;
  rng ^= rng >> 7;
  rng ^= rng << 17;
  return rng;
}

struct client {
  grpc_channel *ch;
  grpc_completion_queue *cq;
  void *h_score, *h_meta, *h_check;
};

/* One unary call: packs msg, waits for the reply; returns the status, *out the reply bytes. */
static int unary(struct client *c, void *handle, const ProtobufCMessage *msg, grpc_slice *out) {
  size_t n = protobuf_c_message_get_packed_size(msg);
  grpc_slice s = grpc_slice_malloc(n);
  protobuf_c_message_pack(msg, GRPC_SLICE_START_PTR(s));
  gpr_timespec dl = gpr_time_add(gpr_now(GPR_CLOCK_MONOTONIC), gpr_time_from_seconds(30, GPR_TIMESPAN));
  grpc_call *call = grpc_channel_create_registered_call(c->ch, NULL, GRPC_PROPAGATE_DEFAULTS, c->cq, handle, dl, NULL);
  char details[512];
  grpc_slice reply;
  int status = kd_client_unary(call, c->cq, s, NULL, 0, &reply, details, sizeof details);
  grpc_slice_unref(s);
  grpc_call_unref(call);
  if (status != GRPC_STATUS_OK) fprintf(stderr, "bench: call failed: status %d: %s\n", status, details);
  if (out) *out = reply;
  else grpc_slice_unref(reply);
  return status;
}

/* A random valid ScoreRequest for the model described by meta with n candidates (1 id per
 * sparse row, dense values in [-1, 1)). All memory from malloc; freed by the caller's exit. */
static Kdrank__V1__ScoreRequest *make_request(const Kdrank__V1__ModelMetadata *meta, uint32_t n) {
  Kdrank__V1__ScoreRequest *r = calloc(1, sizeof *r);
  kdrank__v1__score_request__init(r);
  r->model = meta->model;
  Kdrank__V1__FeatureBatch *b[2];
  for (int g = 0; g < 2; g++) {
    b[g] = calloc(1, sizeof *b[g]);
    kdrank__v1__feature_batch__init(b[g]);
    b[g]->count = g == 0 ? 1 : n;
    b[g]->columns = calloc(meta->n_features, sizeof *b[g]->columns);
  }
  r->context = b[0];
  r->candidates = b[1];
  for (size_t i = 0; i < meta->n_features; i++) {
    const Kdrank__V1__FeatureSpec *f = meta->features[i];
    int g = f->group == KDRANK__V1__FEATURE_SPEC__GROUP__CANDIDATE;
    uint32_t rows = b[g]->count;
    Kdrank__V1__Column *col = calloc(1, sizeof *col);
    kdrank__v1__column__init(col);
    col->name = f->name;
    if (f->kind == KDRANK__V1__FEATURE_SPEC__KIND__DENSE) {
      col->n_floats = (size_t)rows * f->dim;
      col->floats = malloc(col->n_floats * sizeof(float));
      for (size_t k = 0; k < col->n_floats; k++) col->floats[k] = (float)(next_u64() >> 40) / (float)(1 << 23) - 1.0f;
    } else {
      col->n_ids = rows;
      col->ids = malloc(rows * sizeof(int64_t));
      for (size_t k = 0; k < rows; k++) col->ids[k] = (int64_t)(next_u64() >> 1);
    }
    b[g]->columns[b[g]->n_columns++] = col;
  }
  return r;
}

/* GET /metrics from 127.0.0.1:port into a malloc'd string. */
static char *scrape(int port) {
  int fd = socket(AF_INET, SOCK_STREAM, 0);
  struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
  inet_pton(AF_INET, "127.0.0.1", &sa.sin_addr);
  if (fd < 0 || connect(fd, (struct sockaddr *)&sa, sizeof sa) != 0) {
    perror("bench: metrics connect");
    exit(1);
  }
  const char *req = "GET /metrics HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n";
  if (write(fd, req, strlen(req)) < 0) exit(1);
  size_t cap = 1 << 16, len = 0;
  char *buf = malloc(cap);
  ssize_t k;
  while ((k = read(fd, buf + len, cap - len - 1)) > 0) {
    len += (size_t)k;
    if (cap - len < 4096) buf = realloc(buf, cap *= 2);
  }
  close(fd);
  buf[len] = 0;
  return buf;
}

/* The value of the sample "name{labels}" in a scrape (0 if absent). */
static double sample(const char *text, const char *name, const char *labels) {
  char key[256];
  snprintf(key, sizeof key, "\n%s{%s} ", name, labels);
  const char *p = strstr(text, key);
  return p ? strtod(p + strlen(key), NULL) : 0.0;
}

static long rss_kib(int pid, const char *field) {
  char path[64], line[256];
  snprintf(path, sizeof path, "/proc/%d/status", pid);
  FILE *f = fopen(path, "r");
  long v = -1;
  while (f && fgets(line, sizeof line, f))
    if (strncmp(line, field, strlen(field)) == 0) v = strtol(line + strlen(field) + 1, NULL, 10);
  if (f) fclose(f);
  return v;
}

static int cmp_d(const void *a, const void *b) {
  double x = *(const double *)a, y = *(const double *)b;
  return (x > y) - (x < y);
}

static const char *k_h[6] = {"decode", "queue", "score", "encode", "total", "reply"};

/* Runs `iters` Score calls of req; fills e2e p50/mean and the server's mean per phase (µs). */
static void run_score(struct client *c, Kdrank__V1__ScoreRequest *req, int iters, int mport, const char *labels,
                      double *p50, double *mean, double srv[6]) {
  for (int i = 0; i < 20; i++) unary(c, c->h_score, &req->base, NULL); /* warm-up */
  char *before = scrape(mport);
  double *lat = malloc((size_t)iters * sizeof *lat), sum = 0;
  for (int i = 0; i < iters; i++) {
    double t0 = now_us();
    unary(c, c->h_score, &req->base, NULL);
    lat[i] = now_us() - t0;
    sum += lat[i];
  }
  char *after = scrape(mport);
  qsort(lat, (size_t)iters, sizeof *lat, cmp_d);
  *p50 = lat[iters / 2];
  *mean = sum / iters;
  for (int h = 0; h < 6; h++) {
    char s[64], n[64];
    snprintf(s, sizeof s, "kdrank_%s_seconds_sum", k_h[h]);
    snprintf(n, sizeof n, "kdrank_%s_seconds_count", k_h[h]);
    double ds = sample(after, s, labels) - sample(before, s, labels);
    double dn = sample(after, n, labels) - sample(before, n, labels);
    srv[h] = dn > 0 ? ds / dn * 1e6 : NAN;
  }
  free(lat);
  free(before);
  free(after);
}

int main(int argc, char **argv) {
  const char *target = NULL, *model = "student", *floor_model = "tiny";
  int mport = 0, pid = 0, iters = 300;
  long ckpt_bytes = 0;
  for (int i = 1; i + 1 < argc; i += 2) {
    if (!strcmp(argv[i], "--target")) target = argv[i + 1];
    else if (!strcmp(argv[i], "--metrics-port")) mport = atoi(argv[i + 1]);
    else if (!strcmp(argv[i], "--pid")) pid = atoi(argv[i + 1]);
    else if (!strcmp(argv[i], "--model")) model = argv[i + 1];
    else if (!strcmp(argv[i], "--floor-model")) floor_model = argv[i + 1];
    else if (!strcmp(argv[i], "--iters")) iters = atoi(argv[i + 1]);
    else if (!strcmp(argv[i], "--ckpt-bytes")) ckpt_bytes = atol(argv[i + 1]);
  }
  if (!target || !mport || iters < 10) {
    fprintf(stderr, "usage: bench_serve --target ipv4:127.0.0.1:PORT --metrics-port P --pid PID "
                    "[--model student] [--floor-model tiny] [--iters N] [--ckpt-bytes B]\n");
    return 2;
  }
  grpc_init();
  struct client c;
  c.ch = grpc_channel_create(target, grpc_insecure_credentials_create(), NULL);
  c.cq = grpc_completion_queue_create_for_pluck(NULL);
  c.h_score = grpc_channel_register_call(c.ch, "/kdrank.v1.Ranker/Score", NULL, NULL);
  c.h_meta = grpc_channel_register_call(c.ch, "/kdrank.v1.Ranker/GetModelMetadata", NULL, NULL);
  c.h_check = grpc_channel_register_call(c.ch, "/grpc.health.v1.Health/Check", NULL, NULL);

  Kdrank__V1__ModelMetadata *meta[2];
  const char *names[2] = {model, floor_model};
  long version[2];
  for (int m = 0; m < 2; m++) {
    Kdrank__V1__GetModelMetadataRequest q = KDRANK__V1__GET_MODEL_METADATA_REQUEST__INIT;
    q.model = (char *)names[m];
    grpc_slice out;
    if (unary(&c, c.h_meta, &q.base, &out) != 0) return 1;
    meta[m] = kdrank__v1__model_metadata__unpack(NULL, GRPC_SLICE_LENGTH(out), GRPC_SLICE_START_PTR(out));
    grpc_slice_unref(out);
    if (!meta[m]) return 1;
    version[m] = (long)meta[m]->version;
  }
  long rss_idle = pid ? rss_kib(pid, "VmRSS:") : -1;

  /* Floor 1: Health/Check round trip (no model, 2-byte messages). */
  Grpc__Health__V1__HealthCheckRequest hc = GRPC__HEALTH__V1__HEALTH_CHECK_REQUEST__INIT;
  for (int i = 0; i < 50; i++) unary(&c, c.h_check, &hc.base, NULL);
  double *lat = malloc((size_t)iters * sizeof *lat);
  for (int i = 0; i < iters; i++) {
    double t0 = now_us();
    unary(&c, c.h_check, &hc.base, NULL);
    lat[i] = now_us() - t0;
  }
  qsort(lat, (size_t)iters, sizeof *lat, cmp_d);
  double health_p50 = lat[iters / 2];
  free(lat);

  printf("kdrank-serve latency breakdown: closed loop, 1 connection, 1 call at a time, %d calls per row\n", iters);
  printf("model %s (%s, version %ld); floor: Health/Check and Score on %s (%s) with 1 candidate\n\n", model,
         meta[0]->architecture, version[0], floor_model, meta[1]->architecture);
  printf("%-20s %5s %8s %8s | %7s %6s %8s %6s %8s %7s %8s | %8s %8s %8s\n", "row", "cand", "e2e_p50", "e2e_mean",
         "decode", "queue", "score", "encode", "handler", "reply", "srv_tot", "ovh/hdl", "ovh/srv", "nonsc/e2e");
  printf("%-20s %5s %8.1f %8s |\n", "Health/Check (floor)", "-", health_p50, "-");
  uint32_t ns[] = {1, 100, 500, 1000};
  char labels[2][128];
  for (int m = 0; m < 2; m++) snprintf(labels[m], sizeof labels[m], "model=\"%s\",version=\"%ld\",version_label=\"stable\"", names[m], version[m]);
  long rss_load = 0;
  for (int row = -1; row < 4; row++) {
    int m = row < 0 ? 1 : 0;
    uint32_t n = row < 0 ? 1 : ns[row];
    Kdrank__V1__ScoreRequest *req = make_request(meta[m], n);
    int it = n >= 500 ? iters / 3 : iters;
    double p50, mean, srv[6];
    run_score(&c, req, it, mport, labels[m], &p50, &mean, srv);
    long r = pid ? rss_kib(pid, "VmRSS:") : -1;
    if (r > rss_load) rss_load = r;
    char name[64];
    snprintf(name, sizeof name, "Score %s", row < 0 ? "(floor model)" : names[m]);
    double handler = srv[4] - srv[5];
    printf("%-20s %5u %8.1f %8.1f | %7.1f %6.1f %8.1f %6.1f %8.1f %7.1f %8.1f | %7.1f%% %7.1f%% %7.1f%%\n", name, n, p50,
           mean, srv[0], srv[1], srv[2], srv[3], handler, srv[5], srv[4], 100.0 * (handler - srv[2]) / handler,
           100.0 * (srv[4] - srv[2]) / srv[4], 100.0 * (mean - srv[2]) / mean);
  }
  printf("\ncolumns (us, means): e2e = client-measured round trip; decode/queue/score/encode = the server's phases\n"
         "from its /metrics histograms; handler = call dequeued -> reply handed to gRPC; reply = handed -> reply\n"
         "batch complete (transport write, stream close); srv_tot = handler + reply. ovh/hdl = (handler - score) /\n"
         "handler; ovh/srv = (srv_tot - score) / srv_tot; nonsc/e2e = (e2e_mean - score) / e2e_mean.\n");
  if (pid) {
    printf("\nRSS: idle %.1f MiB, under load %.1f MiB, peak (VmHWM) %.1f MiB; checkpoint %.1f MiB; under load - "
           "checkpoint = %.1f MiB\n",
           rss_idle / 1024.0, rss_load / 1024.0, rss_kib(pid, "VmHWM:") / 1024.0, ckpt_bytes / 1048576.0,
           rss_load / 1024.0 - ckpt_bytes / 1048576.0);
  }
  for (int m = 0; m < 2; m++) kdrank__v1__model_metadata__free_unpacked(meta[m], NULL);
  grpc_channel_destroy(c.ch);
  grpc_completion_queue_shutdown(c.cq);
  grpc_completion_queue_destroy(c.cq);
  grpc_shutdown();
  return 0;
}
