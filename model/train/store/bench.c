/* bench.c - kd-labelstore-bench: labels/s written and read through the label store, per backend.
 *
 * For each store given, writes R new versions of N examples x T tasks (ids ascending, as a
 * labelling pass over a data set produces them), reads each back with reader_next (streaming,
 * verified), and joins a trainer's full id list (reader_join). Prints the median of R runs and its
 * ratio to a baseline measured in the same run: the same per-row work (decode + digest + copy)
 * over an in-memory array, i.e. the cost floor with no database. A trainer consumes roughly
 * 1e5..1e6 examples/s, so a read rate well above 1e6 rows/s keeps the store off its critical path.
 *
 * Usage: kd-labelstore-bench [--sqlite PATH] [--pg URI] [--rows N] [--tasks T] [--batch B] [--reps R]
 * Writes versions named bench-<pid>-<r> into the stores (they are immutable: use a scratch store). */
#include "kdrank_labelstore.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

static double now_s(void) {
  struct timespec t;
  clock_gettime(CLOCK_MONOTONIC, &t);
  return (double)t.tv_sec + 1e-9 * (double)t.tv_nsec;
}

static int cmp_d(const void *a, const void *b) {
  double x = *(const double *)a, y = *(const double *)b;
  return (x > y) - (x < y);
}

static double median(double *v, int n) {
  qsort(v, (size_t)n, sizeof *v, cmp_d);
  return n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
}

static float label(int64_t id, uint32_t k) {
  uint64_t z = (uint64_t)id * 0x9E3779B97F4A7C15ull + k * 0xBF58476D1CE4E5B9ull;
  z ^= z >> 31;
  return (float)((double)(z & 0xffff) / 65536.0 - 0.5) * 8.0f;
}

static void die(const char *what, const struct kd_err *e) {
  fprintf(stderr, "kd-labelstore-bench: %s: %s\n", what, e->msg);
  exit(1);
}

/* Baseline: the per-row work a reader does, over an in-memory array. Returns rows/s. */
static double baseline(size_t n, uint32_t nt) {
  int64_t *ids = malloc(n * sizeof *ids);
  float *lg = malloc(n * nt * sizeof *lg);
  if (!ids || !lg) exit(1);
  for (size_t i = 0; i < n; i++) {
    ids[i] = (int64_t)i;
    for (uint32_t k = 0; k < nt; k++) lg[i * nt + k] = label((int64_t)i, k);
  }
  volatile double sink = 0;
  double t0 = now_s();
  uint64_t dig = 0;
  float row[KD_MAX_TASKS];
  for (size_t i = 0; i < n; i++) {
    memcpy(row, lg + i * nt, nt * sizeof(float));
    uint64_t h = (uint64_t)ids[i] * 0x9E3779B97F4A7C15ull;
    for (uint32_t k = 0; k < nt; k++) {
      uint32_t b;
      memcpy(&b, &row[k], 4);
      h ^= b;
      h *= 0xBF58476D1CE4E5B9ull;
    }
    dig += h;
    sink += row[0];
  }
  double t = now_s() - t0;
  sink += (double)dig;
  free(ids);
  free(lg);
  return (double)n / t;
}

struct result {
  double write, read, join;
};

static struct result run_store(const char *uri, size_t n, uint32_t nt, uint32_t batch, int reps) {
  struct kd_labelstore_params p = kd_labelstore_params_default();
  p.batch_rows = batch;
  struct kd_err e = {0};
  kd_labelstore *s = kd_labelstore_open(uri, p, &e);
  if (!s) die("open", &e);
  double wr[16], rd[16], jn[16];
  int64_t *ids = malloc(n * sizeof *ids);
  if (!ids) exit(1);
  for (size_t i = 0; i < n; i++) ids[i] = (int64_t)i;
  float row[KD_MAX_TASKS];
  for (int r = 0; r < reps; r++) {
    struct kd_label_manifest m;
    memset(&m, 0, sizeof m);
    snprintf(m.version, sizeof m.version, "bench-%ld-%d", (long)getpid(), r);
    snprintf(m.data_fingerprint, sizeof m.data_fingerprint, "bench:%zu", n);
    m.n_tasks = nt;
    for (uint32_t k = 0; k < nt; k++) snprintf(m.tasks[k], sizeof m.tasks[k], "task%u", k);
    m.row_count = n;
    double t0 = now_s();
    kd_labelstore_writer *w = kd_labelstore_writer_begin(s, &m, &e);
    if (!w) die("begin", &e);
    for (size_t i = 0; i < n; i++) {
      for (uint32_t k = 0; k < nt; k++) row[k] = label((int64_t)i, k);
      if (kd_labelstore_writer_put(w, (int64_t)i, row, &e)) die("put", &e);
    }
    if (kd_labelstore_writer_commit(w, NULL, &e)) die("commit", &e);
    kd_labelstore_writer_free(w);
    double t1 = now_s();
    kd_labelstore_reader *rd_ = kd_labelstore_reader_open(s, m.version, &e);
    if (!rd_) die("reader_open", &e);
    int64_t id;
    size_t got = 0;
    int rc;
    double sum = 0;
    while ((rc = kd_labelstore_reader_next(rd_, &id, row, &e)) == 1) {
      sum += row[0];
      got++;
    }
    if (rc < 0) die("next", &e);
    kd_labelstore_reader_free(rd_);
    double t2 = now_s();
    kd_labelstore_reader *rj = kd_labelstore_reader_open(s, m.version, &e);
    if (!rj) die("reader_open", &e);
    struct kd_label_coverage cov;
    if (kd_labelstore_reader_join(rj, ids, n, NULL, NULL, &cov, &e)) die("join", &e);
    kd_labelstore_reader_free(rj);
    double t3 = now_s();
    if (got != n || cov.n_labelled != n || !isfinite(sum)) {
      fprintf(stderr, "kd-labelstore-bench: read %zu rows, joined %llu, expected %zu\n", got,
              (unsigned long long)cov.n_labelled, n);
      exit(1);
    }
    wr[r] = (double)n / (t1 - t0);
    rd[r] = (double)n / (t2 - t1);
    jn[r] = (double)n / (t3 - t2);
  }
  free(ids);
  kd_labelstore_close(s);
  struct result res = {median(wr, reps), median(rd, reps), median(jn, reps)};
  return res;
}

int main(int argc, char **argv) {
  const char *sq = NULL, *pg = NULL;
  size_t n = 1000000;
  uint32_t nt = 4, batch = 65536;
  int reps = 3;
  for (int i = 1; i < argc; i++) {
    if (strcmp(argv[i], "--sqlite") == 0 && i + 1 < argc) sq = argv[++i];
    else if (strcmp(argv[i], "--pg") == 0 && i + 1 < argc) pg = argv[++i];
    else if (strcmp(argv[i], "--rows") == 0 && i + 1 < argc) n = (size_t)strtoull(argv[++i], NULL, 10);
    else if (strcmp(argv[i], "--tasks") == 0 && i + 1 < argc) nt = (uint32_t)strtoul(argv[++i], NULL, 10);
    else if (strcmp(argv[i], "--batch") == 0 && i + 1 < argc) batch = (uint32_t)strtoul(argv[++i], NULL, 10);
    else if (strcmp(argv[i], "--reps") == 0 && i + 1 < argc) reps = atoi(argv[++i]);
    else {
      fprintf(stderr, "usage: %s [--sqlite PATH] [--pg URI] [--rows N] [--tasks T] [--batch B] [--reps R]\n", argv[0]);
      return 2;
    }
  }
  if ((!sq && !pg) || nt < 1 || nt > KD_MAX_TASKS || reps < 1 || reps > 16 || n == 0) {
    fprintf(stderr, "kd-labelstore-bench: need --sqlite and/or --pg; tasks 1..%d, reps 1..16, rows > 0\n",
            KD_MAX_TASKS);
    return 2;
  }
  printf("kd-labelstore-bench: %zu examples x %u tasks, batch %u, median of %d runs\n", n, nt, batch, reps);
  double base = baseline(n, nt);
  printf("%-11s %14s %14s %14s %14s\n", "store", "write rows/s", "write labels/s", "read rows/s", "join rows/s");
  printf("%-11s %14s %14s %14.0f %14s   (in-memory array, no database)\n", "baseline", "-", "-", base, "-");
  const char *uris[2] = {sq, pg}, *names[2] = {"sqlite", "postgresql"};
  for (int b = 0; b < 2; b++) {
    if (!uris[b]) continue;
    struct result r = run_store(uris[b], n, nt, batch, reps);
    printf("%-11s %14.0f %14.0f %14.0f %14.0f   read labels/s %.0f; read = %.3f x baseline\n", names[b], r.write,
           r.write * nt, r.read, r.join, r.read * nt, r.read / base);
  }
  return 0;
}
