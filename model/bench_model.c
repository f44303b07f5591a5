/* bench_model.c - kdrank-bench-model: latency and throughput of the fast scorer on a preset model
 * (default ref-student, random weights) against the compute floor of this machine.
 *
 * For each batch size and thread mode it scores a rotating set of random requests and reports
 * median and p99 latency, candidates/s, effective GFLOP/s (kd_arch_flops, context split), and the
 * ratio to the compute floor = FLOPs of the batch / rate of a 1024^3 sgemm measured in the same
 * run with the same thread count (9 samples taken inside each row, so a row and its floor see
 * the same machine load). Timed interleaved with each split call: the same model as one flat
 * input (no context split; split_x = flat / split) and, in columns blas_us, the same split plan
 * with every chunk over 2 rows sent to OpenBLAS sgemm instead of the AVX2 panel kernel.
 * cpu_us / cpu_x: the calling thread's CPU time and its ratio to the sgemm's CPU-time floor
 * (1-thread rows only) - robust when other processes share the machine; blas_cpu: the same
 * for the sgemm engine. --kernel scalar times the portable kernel set. Thread modes:
 *   1        one thread, OpenBLAS on 1 thread (how a server worker scores)
 *   2-split  the batch cut in two halves scored by two threads, each with its own scratch and
 *            OpenBLAS on 1 thread (batches under --split-min stay on one thread)
 *   2-blas   one kd_score call with the sgemm engine and OpenBLAS on 2 threads (the panel
 *            kernel is single-threaded, so this mode times the sgemm engine in every column)
 * A benchmark, not a test: it asserts nothing and the machine may be noisy; compare ratios.
 */
#include <cjson/cJSON.h>
#include <errno.h>
#include <immintrin.h>
#include <math.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <cblas.h>

#include "kdrank_model.h"
#include "kernels.h" /* kd_scratch_create_tuned: the sgemm-engine comparison */

#define MAX_REQS 8       /* distinct requests per batch size, scored in rotation */
#define FLOOR_SAMPLES 9  /* 1024^3 sgemm samples taken inside each row */

static double now_us(void) {
  struct timespec t;
  clock_gettime(CLOCK_MONOTONIC, &t);
  return (double)t.tv_sec * 1e6 + (double)t.tv_nsec * 1e-3;
}

/* CPU time of the calling thread: immune to the time this thread spends descheduled. */
static double cpu_us(void) {
  struct timespec t;
  clock_gettime(CLOCK_THREAD_CPUTIME_ID, &t);
  return (double)t.tv_sec * 1e6 + (double)t.tv_nsec * 1e-3;
}

static void die(const char *what, const struct kd_err *e) {
  fprintf(stderr, "kdrank-bench-model: %s: %s\n", what, e ? e->msg : strerror(errno));
  exit(1);
}

static int cmp_double(const void *a, const void *b) {
  double x = *(const double *)a, y = *(const double *)b;
  return (x > y) - (x < y);
}

/* Sorts v and returns its q-quantile (nearest rank). */
static double quantile(double *v, size_t n, double q) {
  qsort(v, n, sizeof *v, cmp_double);
  size_t i = (size_t)ceil(q * (double)n);
  if (i > 0) i--;
  if (i >= n) i = n - 1;
  return v[i];
}

/* ---- requests ---- */

static uint64_t rng = 88172645463325252ull;
static uint64_t rnd(void) {
  rng ^= rng << 13;
  rng ^= rng >> 7;
  rng ^= rng << 17;
  return rng;
}

struct req {
  struct kd_input in;
  struct kd_column cols[KD_MAX_FEATURES];
  void *mem[KD_MAX_FEATURES];
};

/* Random request: dense values in [-1, 1]; sparse context features carry hist_k ids when their
 * table is large (a user history, mean-pooled), else 1; candidate features 1 id. */
static void req_make(struct req *q, const struct kd_arch *a, uint32_t n, uint32_t hist_k) {
  memset(q, 0, sizeof *q);
  q->in.n_cand = n;
  q->in.cols = q->cols;
  for (uint32_t f = 0; f < a->n_features; f++) {
    const struct kd_feature *ft = &a->features[f];
    size_t rows = ft->group == KD_GROUP_CONTEXT ? 1 : n;
    if (ft->kind == KD_FEAT_DENSE) {
      float *v = malloc(rows * ft->dim * sizeof *v);
      if (!v) die("out of memory", NULL);
      for (size_t i = 0; i < rows * ft->dim; i++) v[i] = (float)((double)(rnd() >> 11) * 0x1.0p-52 - 1.0);
      q->cols[f].floats = v;
      q->cols[f].n_floats = rows * ft->dim;
      q->mem[f] = v;
    } else {
      size_t k = (ft->group == KD_GROUP_CONTEXT && strstr(ft->name, "hist")) ? hist_k : 1;
      int64_t *ids = malloc(rows * k * sizeof *ids);
      if (!ids) die("out of memory", NULL);
      for (size_t i = 0; i < rows * k; i++) ids[i] = (int64_t)(rnd() >> 1);
      q->cols[f].ids = ids;
      q->cols[f].n_ids = rows * k;
      q->mem[f] = ids;
    }
  }
}

static void req_free(struct req *q) {
  for (int f = 0; f < KD_MAX_FEATURES; f++) free(q->mem[f]);
}

/* Rows [r0, r0+c) of src's candidates as a request of its own (context shared). */
static void req_slice(const struct kd_arch *a, const struct kd_input *src, uint32_t r0, uint32_t c,
                      struct kd_column *cols, struct kd_input *dst) {
  for (uint32_t f = 0; f < a->n_features; f++) {
    const struct kd_feature *ft = &a->features[f];
    cols[f] = src->cols[f];
    if (ft->group != KD_GROUP_CANDIDATE) continue;
    if (ft->kind == KD_FEAT_DENSE) {
      cols[f].floats += (size_t)r0 * ft->dim;
      cols[f].n_floats = (size_t)c * ft->dim;
    } else {
      size_t k = src->cols[f].n_ids / src->n_cand;
      cols[f].ids += (size_t)r0 * k;
      cols[f].n_ids = (size_t)c * k;
    }
  }
  dst->n_cand = c;
  dst->cols = cols;
}

/* ---- the second thread of the 2-split mode ----
 * Hand-off: the helper spins (with pause) for up to SPIN_US after each job, then sleeps on a
 * condition variable. Waking a sleeping vCPU costs tens of microseconds on this VM, so a
 * back-to-back load keeps the helper spinning, as a server's own scoring pool would. */

#define SPIN_US 200.0

struct helper {
  pthread_t th;
  pthread_mutex_t mu;
  pthread_cond_t cv;
  atomic_int gen, done_gen, quit, sleeping;
  /* the job, written before gen is bumped */
  const kd_plan *plan;
  kd_scratch *scratch;
  struct kd_input in;
  struct kd_column cols[KD_MAX_FEATURES];
  const uint32_t *tasks;
  uint32_t n_out;
  float *out;
  int rc;
};

static void *helper_main(void *arg) {
  struct helper *h = arg;
  int seen = 0;
  for (;;) {
    double t0 = now_us();
    while (atomic_load_explicit(&h->gen, memory_order_acquire) == seen && !atomic_load(&h->quit)) {
      _mm_pause();
      if (now_us() - t0 > SPIN_US) {
        pthread_mutex_lock(&h->mu);
        atomic_store(&h->sleeping, 1);
        while (atomic_load(&h->gen) == seen && !atomic_load(&h->quit))
          pthread_cond_wait(&h->cv, &h->mu);
        atomic_store(&h->sleeping, 0);
        pthread_mutex_unlock(&h->mu);
      }
    }
    if (atomic_load(&h->quit)) break;
    seen = atomic_load_explicit(&h->gen, memory_order_acquire);
    struct kd_err e;
    h->rc = kd_score(h->plan, h->scratch, &h->in, h->tasks, h->n_out, h->out, &e);
    atomic_store_explicit(&h->done_gen, seen, memory_order_release);
  }
  return NULL;
}

/* Publishes the job set in h (gen bump) and wakes the helper if it sleeps. */
static int helper_post(struct helper *h) {
  int g = atomic_load(&h->gen) + 1;
  atomic_store_explicit(&h->gen, g, memory_order_release);
  if (atomic_load(&h->sleeping)) {
    pthread_mutex_lock(&h->mu);
    pthread_cond_broadcast(&h->cv);
    pthread_mutex_unlock(&h->mu);
  }
  return g;
}

static void helper_stop(struct helper *h) {
  pthread_mutex_lock(&h->mu);
  atomic_store(&h->quit, 1);
  pthread_cond_broadcast(&h->cv);
  pthread_mutex_unlock(&h->mu);
  pthread_join(h->th, NULL);
}

/* ---- one scoring call in a thread mode ---- */

enum mode { MODE_1 = 0, MODE_2SPLIT = 1, MODE_2BLAS = 2 };
static const char *mode_name[3] = {"1", "2-split", "2-blas"};

struct ctx {
  const struct kd_arch *a;
  kd_scratch *s[2][2]; /* [engine][thread]: engine 0 = default, 1 = sgemm for every chunk > 2 */
  struct helper *h;
  const uint32_t *tasks;
  uint32_t n_out;
  float *out;
  uint32_t split_min;
};

static void score_once(struct ctx *c, const kd_plan *p, const struct kd_input *in, int mode,
                       int engine) {
  struct kd_err e;
  if (mode != MODE_2SPLIT || in->n_cand < c->split_min) {
    if (kd_score(p, c->s[engine][0], in, c->tasks, c->n_out, c->out, &e) != KD_OK) die("score", &e);
    return;
  }
  uint32_t half = in->n_cand / 2;
  struct helper *h = c->h;
  struct kd_column cols[KD_MAX_FEATURES];
  struct kd_input mine;
  req_slice(c->a, in, 0, half, cols, &mine);
  req_slice(c->a, in, half, in->n_cand - half, h->cols, &h->in);
  h->plan = p;
  h->scratch = c->s[engine][1];
  h->tasks = c->tasks;
  h->n_out = c->n_out;
  h->out = c->out + (size_t)half * c->n_out;
  int g = helper_post(h);
  if (kd_score(p, c->s[engine][0], &mine, c->tasks, c->n_out, c->out, &e) != KD_OK) die("score", &e);
  while (atomic_load_explicit(&h->done_gen, memory_order_acquire) != g) _mm_pause();
  int rc = h->rc;
  if (rc != KD_OK) die("score (second thread)", NULL);
}

/* ---- the compute floor ---- */

#define FLOOR_N 1024
static float *fA, *fB, *fC; /* (FLOOR_N, FLOOR_N) each */

static void floor_init(void) {
  size_t nn = (size_t)FLOOR_N * FLOOR_N;
  fA = aligned_alloc(64, sizeof(float) * nn);
  fB = aligned_alloc(64, sizeof(float) * nn);
  fC = aligned_alloc(64, sizeof(float) * nn);
  if (!fA || !fB || !fC) die("out of memory", NULL);
  for (size_t i = 0; i < nn; i++) {
    fA[i] = (float)(i % 13) * 0.01f;
    fB[i] = (float)(i % 7) * 0.01f;
  }
}

/* One timed 1024^3 sgemm on `threads` OpenBLAS threads; returns wall microseconds, and the
 * calling thread's CPU microseconds in *cpu (if not NULL). */
static double floor_sample(int threads, double *cpu) {
  kd_blas_set_threads(threads);
  double c0 = cpu_us(), t0 = now_us();
  cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, FLOOR_N, FLOOR_N, FLOOR_N, 1.0f, fA,
              FLOOR_N, fB, FLOOR_N, 0.0f, fC, FLOOR_N);
  double t = now_us() - t0;
  if (cpu) *cpu = cpu_us() - c0;
  return t;
}

static double floor_gflops(double us) { return 2.0 * FLOOR_N * FLOOR_N * FLOOR_N / (us * 1e3); }

/* Median GFLOP/s of reps samples. */
static double sgemm_rate(int threads, int reps) {
  double t[64];
  floor_sample(threads, NULL);
  for (int r = 0; r < reps && r < 64; r++) t[r] = floor_sample(threads, NULL);
  return floor_gflops(quantile(t, (size_t)(reps < 64 ? reps : 64), 0.5));
}

static void set_mode_threads(int mode) { kd_blas_set_threads(mode == MODE_2BLAS ? 2 : 1); }

/* ---- main ---- */

static void usage(int code) {
  fprintf(code ? stderr : stdout,
          "usage: kdrank-bench-model [--json] [--reps N] [--preset NAME] [--modes 1,2-split,2-blas]\n"
          "                          [--batches 1,16,...] [--hist K] [--split-min N]\n"
          "                          [--kernel auto|scalar|avx2]\n"
          "  --reps N       timed calls per row (default: about 0.4 s of work per row, 20..3000)\n"
          "  --preset NAME  model preset (default ref-student): %s\n"
          "  --hist K       ids in the pooled user-history context feature (default 20)\n"
          "  --split-min N  smallest batch the 2-split mode cuts in two (default 64)\n",
          kd_arch_preset_names());
  exit(code);
}

static uint32_t parse_list(const char *s, uint32_t *v, uint32_t max) {
  uint32_t n = 0;
  char *end;
  while (*s && n < max) {
    unsigned long x = strtoul(s, &end, 10);
    if (end == s || x == 0 || x > 1000000) usage(2);
    v[n++] = (uint32_t)x;
    s = *end == ',' ? end + 1 : end;
    if (*end && *end != ',') usage(2);
  }
  return n;
}

int main(int argc, char **argv) {
  int json = 0, reps_flag = 0, modes[3] = {1, 1, 1};
  uint32_t batches[16] = {1, 16, 64, 256, 1000, 4096}, n_batches = 6, hist_k = 20, split_min = 64;
  const char *preset = "ref-student";
  int kernel = KD_KERNEL_AUTO;
  for (int i = 1; i < argc; i++) {
    if (!strcmp(argv[i], "--help") || !strcmp(argv[i], "-h")) usage(0);
    else if (!strcmp(argv[i], "--json")) json = 1;
    else if (!strcmp(argv[i], "--reps") && i + 1 < argc) reps_flag = atoi(argv[++i]);
    else if (!strcmp(argv[i], "--preset") && i + 1 < argc) preset = argv[++i];
    else if (!strcmp(argv[i], "--kernel") && i + 1 < argc) {
      const char *k = argv[++i];
      kernel = !strcmp(k, "scalar") ? KD_KERNEL_SCALAR : !strcmp(k, "avx2") ? KD_KERNEL_AVX2
             : !strcmp(k, "auto") ? KD_KERNEL_AUTO : -1;
      if (kernel < 0) usage(2);
    }
    else if (!strcmp(argv[i], "--batches") && i + 1 < argc) n_batches = parse_list(argv[++i], batches, 16);
    else if (!strcmp(argv[i], "--hist") && i + 1 < argc) hist_k = (uint32_t)atoi(argv[++i]);
    else if (!strcmp(argv[i], "--split-min") && i + 1 < argc) split_min = (uint32_t)atoi(argv[++i]);
    else if (!strcmp(argv[i], "--modes") && i + 1 < argc) {
      const char *m = argv[++i];
      for (int k = 0; k < 3; k++) modes[k] = 0;
      modes[0] = strchr(m, '1') != NULL; /* the other mode names hold no '1' */
      modes[1] = strstr(m, "2-split") != NULL;
      modes[2] = strstr(m, "2-blas") != NULL;
    } else usage(2);
  }
  if (reps_flag < 0 || n_batches == 0 || hist_k == 0) usage(2);

  struct kd_err e = {0};
  struct kd_arch a;
  if (kd_arch_preset(preset, &a, &e) != KD_OK) die("preset", &e);
  struct kd_model *m = kd_model_alloc(&a, &e);
  if (!m) die("model", &e);
  kd_model_init_random(m, 1);
  kd_plan *split = kd_plan_create(m, (struct kd_plan_params){.kernel = kernel, .flat = 0}, &e);
  kd_plan *flat = kd_plan_create(m, (struct kd_plan_params){.kernel = kernel, .flat = 1}, &e);
  if (!split || !flat) die("plan", &e);
  kd_model_free(m);
  uint32_t max_b = 0;
  for (uint32_t b = 0; b < n_batches; b++) if (batches[b] > max_b) max_b = batches[b];
  uint32_t tasks[KD_MAX_TASKS], n_out = 0;
  for (uint32_t k = 0; k < a.n_tasks; k++) if (a.tasks[k].served) tasks[n_out++] = k;
  struct ctx c = {.a = &a, .tasks = tasks, .split_min = split_min};
  for (int t = 0; t < 2; t++) {
    c.s[0][t] = kd_scratch_create(flat, max_b, &e);
    c.s[1][t] = kd_scratch_create_tuned(flat, max_b, 0, 2, 0, &e);
    if (!c.s[0][t] || !c.s[1][t]) die("scratch", &e);
  }
  float *out = malloc(sizeof(float) * (size_t)max_b * n_out);
  if (!out) die("out of memory", NULL);

  struct helper h = {0};
  pthread_mutex_init(&h.mu, NULL);
  pthread_cond_init(&h.cv, NULL);
  if (pthread_create(&h.th, NULL, helper_main, &h)) die("pthread_create", NULL);
  c.h = &h;
  c.n_out = n_out;
  c.out = out;

  /* the floor: 1024^3 sgemm on 1 and 2 OpenBLAS threads, sampled inside every row (so a row's
   * ratio sees the same machine load as its latencies) and also before and after the sweep */
  floor_init();
  double rate_start[3] = {0, sgemm_rate(1, 9), sgemm_rate(2, 9)};

  char cpu[256] = "unknown";
  FILE *fc = fopen("/proc/cpuinfo", "r");
  if (fc) {
    char line[512];
    while (fgets(line, sizeof line, fc))
      if (!strncmp(line, "model name", 10)) {
        char *v = strchr(line, ':');
        if (v) snprintf(cpu, sizeof cpu, "%s", v + 2);
        cpu[strcspn(cpu, "\n")] = 0;
        break;
      }
    fclose(fc);
  }
  const char *coretype = getenv("OPENBLAS_CORETYPE");

  struct row {
    uint32_t batch;
    int mode;
    double med, p99, fmed, gmed, gflops, rate, floor_us, ratio, speedup;
    double cmed, cratio; /* CPU-time median and its ratio to the CPU-time floor (1 thread only) */
    double gcmed;        /* CPU-time median of the sgemm engine */
  } rows[64];
  uint32_t n_rows = 0;
  for (uint32_t b = 0; b < n_batches; b++) {
    uint32_t n = batches[b];
    struct req q[MAX_REQS];
    for (int i = 0; i < MAX_REQS; i++) req_make(&q[i], &a, n, hist_k);
    double fl = kd_arch_flops(&a, n, 1);
    int reps = reps_flag;
    if (!reps) {
      reps = (int)(4e8 / (fl + 2e6)); /* ~0.4 s of split work at ~100 GFLOP/s; calls cost >= ~20 us */
      if (reps < 20) reps = 20;
      if (reps > 3000) reps = 3000;
    }
    double *ts = malloc(sizeof(double) * (size_t)reps), *tf = malloc(sizeof(double) * (size_t)reps);
    double *tg = malloc(sizeof(double) * (size_t)reps), tfl[FLOOR_SAMPLES], tflc[FLOOR_SAMPLES];
    double *tc = malloc(sizeof(double) * (size_t)reps), *tgc = malloc(sizeof(double) * (size_t)reps);
    if (!ts || !tf || !tg || !tc || !tgc) die("out of memory", NULL);
    for (int mode = 0; mode < 3; mode++) {
      if (!modes[mode]) continue;
      set_mode_threads(mode);
      int eng = mode == MODE_2BLAS; /* only the sgemm engine has OpenBLAS threads to use */
      for (int w = 0; w < 3; w++) { /* warm-up: caches, OpenBLAS threads, page faults */
        score_once(&c, split, &q[w % MAX_REQS].in, mode, eng);
        score_once(&c, flat, &q[w % MAX_REQS].in, mode, eng);
        score_once(&c, split, &q[w % MAX_REQS].in, mode, 1);
      }
      int floor_threads = mode == MODE_1 ? 1 : 2, every = reps / FLOOR_SAMPLES, nf = 0;
      if (every < 1) every = 1;
      for (int r = 0; r < reps; r++) { /* split, flat, sgemm engine interleaved: same noise */
        const struct kd_input *in = &q[r % MAX_REQS].in;
        if (r % every == 0 && nf < FLOOR_SAMPLES) {
          tfl[nf] = floor_sample(floor_threads, &tflc[nf]);
          nf++;
          set_mode_threads(mode);
          score_once(&c, split, in, mode, eng); /* untimed: the sgemm evicted the weights */
          score_once(&c, flat, in, mode, eng);
          score_once(&c, split, in, mode, 1);
        }
        double c0 = cpu_us(), t0 = now_us();
        score_once(&c, split, in, mode, eng);
        double t1 = now_us();
        tc[r] = cpu_us() - c0;
        score_once(&c, flat, in, mode, eng);
        double t2 = now_us();
        double c2 = cpu_us();
        if (!eng) score_once(&c, split, in, mode, 1);
        double t3 = now_us();
        tgc[r] = cpu_us() - c2;
        ts[r] = t1 - t0;
        tf[r] = t2 - t1;
        tg[r] = t3 - t2;
      }
      struct row *rw = &rows[n_rows++];
      rw->batch = n;
      rw->mode = mode;
      rw->p99 = quantile(ts, (size_t)reps, 0.99);
      rw->med = quantile(ts, (size_t)reps, 0.5);
      rw->fmed = quantile(tf, (size_t)reps, 0.5);
      rw->gmed = eng ? rw->med : quantile(tg, (size_t)reps, 0.5);
      rw->gflops = fl / (rw->med * 1e3);
      rw->rate = floor_gflops(quantile(tfl, (size_t)nf, 0.5));
      rw->cmed = quantile(tc, (size_t)reps, 0.5);
      rw->gcmed = eng ? rw->cmed : quantile(tgc, (size_t)reps, 0.5);
      rw->cratio = mode == MODE_1 ? rw->cmed / (fl / (floor_gflops(quantile(tflc, (size_t)nf, 0.5)) * 1e3)) : 0;
      rw->floor_us = fl / (rw->rate * 1e3);
      rw->ratio = rw->med / rw->floor_us;
      rw->speedup = rw->fmed / rw->med;
    }
    free(ts);
    free(tf);
    free(tg);
    free(tc);
    free(tgc);
    for (int i = 0; i < MAX_REQS; i++) req_free(&q[i]);
  }
  double rate_end[3] = {0, sgemm_rate(1, 9), sgemm_rate(2, 9)};

  if (json) {
    cJSON *root = cJSON_CreateObject();
    cJSON_AddStringToObject(root, "preset", preset);
    cJSON_AddStringToObject(root, "cpu", cpu);
    cJSON_AddStringToObject(root, "kernel", kd_kernel_name(kd_plan_kernel(split)));
    cJSON_AddStringToObject(root, "openblas_core", openblas_get_corename());
    cJSON_AddStringToObject(root, "openblas_coretype_env", coretype ? coretype : "");
    cJSON_AddNumberToObject(root, "hist_ids", hist_k);
    cJSON_AddNumberToObject(root, "split_min", split_min);
    cJSON_AddNumberToObject(root, "sgemm1024_gflops_1t_start", rate_start[1]);
    cJSON_AddNumberToObject(root, "sgemm1024_gflops_1t_end", rate_end[1]);
    cJSON_AddNumberToObject(root, "sgemm1024_gflops_2t_start", rate_start[2]);
    cJSON_AddNumberToObject(root, "sgemm1024_gflops_2t_end", rate_end[2]);
    cJSON *arr = cJSON_AddArrayToObject(root, "rows");
    for (uint32_t i = 0; i < n_rows; i++) {
      struct row *rw = &rows[i];
      cJSON *o = cJSON_CreateObject();
      cJSON_AddNumberToObject(o, "batch", rw->batch);
      cJSON_AddStringToObject(o, "threads", mode_name[rw->mode]);
      cJSON_AddNumberToObject(o, "median_us", rw->med);
      cJSON_AddNumberToObject(o, "p99_us", rw->p99);
      cJSON_AddNumberToObject(o, "cand_per_s", rw->batch / (rw->med * 1e-6));
      cJSON_AddNumberToObject(o, "gflops", rw->gflops);
      cJSON_AddNumberToObject(o, "floor_sgemm_gflops", rw->rate);
      cJSON_AddNumberToObject(o, "floor_us", rw->floor_us);
      cJSON_AddNumberToObject(o, "ratio_to_floor", rw->ratio);
      cJSON_AddNumberToObject(o, "flat_median_us", rw->fmed);
      cJSON_AddNumberToObject(o, "split_speedup", rw->speedup);
      cJSON_AddNumberToObject(o, "sgemm_engine_median_us", rw->gmed);
      cJSON_AddNumberToObject(o, "cpu_median_us", rw->cmed);
      cJSON_AddNumberToObject(o, "sgemm_engine_cpu_median_us", rw->gcmed);
      if (rw->mode == MODE_1) cJSON_AddNumberToObject(o, "cpu_ratio_to_floor", rw->cratio);
      cJSON_AddItemToArray(arr, o);
    }
    char *txt = cJSON_Print(root);
    puts(txt);
    free(txt);
    cJSON_Delete(root);
  } else {
    printf("kdrank-bench-model: preset %s, kernel %s, OpenBLAS core %s (OPENBLAS_CORETYPE=%s)\n",
           preset, kd_kernel_name(kd_plan_kernel(split)), openblas_get_corename(),
           coretype ? coretype : "unset");
    printf("cpu: %s\n", cpu);
    printf("floor: 1024^3 sgemm GFLOP/s, 1 thread: %.1f at start, %.1f at end; 2 threads: %.1f, %.1f\n"
           "       (each row's x_floor uses the median of %d samples taken during that row)\n",
           rate_start[1], rate_end[1], rate_start[2], rate_end[2], FLOOR_SAMPLES);
    printf("requests: %d distinct per batch, %u pooled history ids; 2-split cuts batches >= %u\n\n",
           MAX_REQS, hist_k, split_min);
    printf("%6s %8s %10s %10s %10s %8s %8s %10s %8s %10s %8s %10s %9s %7s %9s\n", "batch", "threads",
           "median_us", "p99_us", "cand/s", "GFLOP/s", "sgemm", "floor_us", "x_floor", "flat_us",
           "split_x", "blas_us", "cpu_us", "cpu_x", "blas_cpu");
    for (uint32_t i = 0; i < n_rows; i++) {
      struct row *rw = &rows[i];
      char cx[16] = "-";
      if (rw->mode == MODE_1) snprintf(cx, sizeof cx, "%.2f", rw->cratio);
      printf("%6u %8s %10.1f %10.1f %10.0f %8.1f %8.1f %10.1f %8.2f %10.1f %8.2f %10.1f %9.1f %7s %9.1f\n",
             rw->batch, mode_name[rw->mode], rw->med, rw->p99, rw->batch / (rw->med * 1e-6),
             rw->gflops, rw->rate, rw->floor_us, rw->ratio, rw->fmed, rw->speedup, rw->gmed,
             rw->cmed, cx, rw->gcmed);
    }
  }

  helper_stop(&h);
  pthread_cond_destroy(&h.cv);
  pthread_mutex_destroy(&h.mu);
  free(out);
  for (int t = 0; t < 2; t++) {
    kd_scratch_free(c.s[0][t]);
    kd_scratch_free(c.s[1][t]);
  }
  kd_plan_free(split);
  kd_plan_free(flat);
  return 0;
}
