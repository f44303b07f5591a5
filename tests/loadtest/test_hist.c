/* test_hist.c - kdrank-load's histogram against exact percentiles of known samples (sorted
 * arrays) for several distributions: every reported percentile v' of exact value v must satisfy
 * v <= v' <= v * (1 + 1/1024) at 3 significant digits; merge must equal one histogram of all. */
#include "kd_test.h"
#include "hist.h"

#include <math.h>
#include <stdint.h>

static const double pcts[] = {0, 1, 10, 25, 50, 75, 90, 99, 99.9, 99.99, 99.999, 100};
#define NP (sizeof(pcts) / sizeof(pcts[0]))
#define LO 1000ull             /* 1 us in ns */
#define HI 60000000000ull      /* 60 s in ns */

static uint64_t rng_state = 0x1234567887654321ull;
static uint64_t rnd(void) { /* splitmix64 */
  uint64_t z = (rng_state += 0x9E3779B97F4A7C15ull);
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return z ^ (z >> 31);
}
static double unif(void) { return ((double)(rnd() >> 11) + 0.5) / 9007199254740992.0; }
static uint64_t clampv(double v) { return v < LO ? LO : v > HI ? HI : (uint64_t)v; }

static int cmp_u64(const void *a, const void *b) {
  uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
  return x < y ? -1 : x > y;
}

/* Exact percentile of a sorted array: the sample of rank ceil(p/100 n) (at least 1). */
static uint64_t exact_pct(const uint64_t *s, size_t n, double p) {
  if (p <= 0) return s[0];
  double r = ceil(p / 100.0 * (double)n - 1e-9 * (double)n);
  size_t k = r < 1 ? 1 : r > (double)n ? n : (size_t)r;
  return s[k - 1];
}

static void check_samples(const char *name, uint64_t *s, size_t n) {
  struct kd_hist *h = kd_hist_new((struct kd_hist_params){LO, HI, 3});
  struct kd_hist *a = kd_hist_new((struct kd_hist_params){LO, HI, 3});
  struct kd_hist *b = kd_hist_new((struct kd_hist_params){LO, HI, 3});
  REQUIRE(h && a && b);
  long double sum = 0;
  for (size_t i = 0; i < n; i++) {
    kd_hist_record(h, s[i]);
    kd_hist_record(i % 3 ? a : b, s[i]);
    sum += s[i];
  }
  CHECK(kd_hist_merge(a, b) == 0);
  qsort(s, n, sizeof(*s), cmp_u64);
  double rel = kd_hist_rel_error(h);
  CHECK(rel <= 1.0 / 1000);
  CHECK(kd_hist_count(h) == n);
  CHECK(kd_hist_min(h) == s[0]);
  CHECK(kd_hist_max(h) == s[n - 1]);
  CHECKF(fabs(kd_hist_mean(h) - (double)(sum / n)) <= 1e-9 * (double)(sum / n), "%s mean", name);
  for (size_t i = 0; i < NP; i++) {
    uint64_t x = exact_pct(s, n, pcts[i]), y = kd_hist_percentile(h, pcts[i]);
    CHECKF(y >= x && (double)y <= (double)x * (1.0 + rel), "%s p%g: exact %llu, hist %llu", name,
           pcts[i], (unsigned long long)x, (unsigned long long)y);
    CHECKF(kd_hist_percentile(a, pcts[i]) == y, "%s p%g: merged %llu != whole %llu", name, pcts[i],
           (unsigned long long)kd_hist_percentile(a, pcts[i]), (unsigned long long)y);
  }
  kd_hist_free(h);
  kd_hist_free(a);
  kd_hist_free(b);
}

int main(void) {
  enum { N = 200000 };
  uint64_t *s = malloc(N * sizeof(*s));
  REQUIRE(s);
  /* uniform 1 us .. 10 ms */
  for (size_t i = 0; i < N; i++) s[i] = clampv(1000 + unif() * 1e7);
  check_samples("uniform", s, N);
  /* exponential, mean 200 us, shifted by 50 us */
  for (size_t i = 0; i < N; i++) s[i] = clampv(50e3 - 200e3 * log(unif()));
  check_samples("exponential", s, N);
  /* lognormal: heavy tail spanning 1 us .. seconds */
  for (size_t i = 0; i < N; i++) {
    double z = sqrt(-2 * log(unif())) * cos(2 * M_PI * unif());
    s[i] = clampv(exp(log(300e3) + 2.0 * z));
  }
  check_samples("lognormal", s, N);
  /* bimodal: 99% around 150 us, 1% around 200 ms (a stalled server) */
  for (size_t i = 0; i < N; i++) s[i] = clampv(i % 100 ? 140e3 + unif() * 20e3 : 190e6 + unif() * 20e6);
  check_samples("bimodal", s, N);
  /* small integers: exact range below 2048 */
  for (size_t i = 0; i < 5000; i++) s[i] = 1000 + rnd() % 1048;
  check_samples("exact-range", s, 5000);
  /* the extremes of the range, and tiny sample counts */
  s[0] = LO; s[1] = HI; s[2] = 123456789;
  check_samples("extremes", s, 3);
  s[0] = 777777;
  check_samples("single", s, 1);
  for (size_t i = 0; i < 10000; i++) s[i] = 5000000;
  check_samples("constant", s, 10000);

  /* reported values are the bucket's highest equivalent value: within bound, never below */
  struct kd_hist *h = kd_hist_new((struct kd_hist_params){LO, HI, 3});
  REQUIRE(h);
  kd_hist_record(h, 3000000);
  kd_hist_record(h, 3000001);
  CHECK(kd_hist_percentile(h, 50) >= 3000000 && kd_hist_percentile(h, 50) <= 3000000 * 1.001);
  CHECK(kd_hist_percentile(h, 100) == 3000001);
  /* clamping is counted */
  kd_hist_record(h, 5);
  kd_hist_record(h, HI * 2);
  CHECK(kd_hist_clamped(h) == 2);
  CHECK(kd_hist_min(h) == LO);
  CHECK(kd_hist_max(h) == HI);
  kd_hist_reset(h);
  CHECK(kd_hist_count(h) == 0 && kd_hist_percentile(h, 99) == 0);
  /* merge refuses different params; bad params refused */
  struct kd_hist *g = kd_hist_new((struct kd_hist_params){LO, HI, 2});
  REQUIRE(g);
  CHECK(kd_hist_merge(h, g) == -1);
  CHECK(kd_hist_rel_error(g) <= 1.0 / 100);
  CHECK(kd_hist_new((struct kd_hist_params){0, HI, 3}) == NULL);
  CHECK(kd_hist_new((struct kd_hist_params){LO, LO, 3}) == NULL);
  CHECK(kd_hist_new((struct kd_hist_params){LO, HI, 0}) == NULL);
  CHECK(kd_hist_new((struct kd_hist_params){LO, HI, 6}) == NULL);
  /* the percentile rank definition on whole products */
  CHECK(kd_hist_rank(99.99, 100000) == 99990);
  CHECK(kd_hist_rank(50, 3) == 2);
  CHECK(kd_hist_rank(99, 1) == 1);
  kd_hist_free(g);
  kd_hist_free(h);
  free(s);
  KD_TEST_END();
}
