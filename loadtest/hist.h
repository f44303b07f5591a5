/* hist.h - kdrank-load's latency histogram (private to loadtest/): HDR-style log-linear buckets.
 * Values are integers (kdrank-load records nanoseconds). With d significant digits the buckets
 * are exact below S = 2^ceil(log2(2*10^d)) and each power-of-two range above is split into S/2
 * equal sub-buckets, so a reported value v' for a recorded v satisfies v <= v' <= v*(1 + 2/S)
 * (d = 3: S = 2048, relative error <= 1/1024 < 0.1%). Values outside [lowest, highest] are
 * clamped and counted. One histogram is not thread safe: keep one per thread and merge. */
#ifndef KD_LOAD_HIST_H
#define KD_LOAD_HIST_H
#include <math.h>
#include <stdint.h>

struct kd_hist_params {
  uint64_t lowest;  /* >= 1: smaller values are recorded as lowest (and counted as clamped) */
  uint64_t highest; /* > lowest: larger values are recorded as highest */
  int sig_digits;   /* 1..5 */
};

struct kd_hist;

/* Allocates an empty histogram. Returns NULL on bad params (lowest 0, highest <= lowest,
 * digits outside 1..5) or out of memory. Free with kd_hist_free. */
struct kd_hist *kd_hist_new(struct kd_hist_params p);
void kd_hist_free(struct kd_hist *h);
/* Empties the histogram (keeps its params and memory). */
void kd_hist_reset(struct kd_hist *h);
/* Records n occurrences of v. O(1), no allocation. */
void kd_hist_record_n(struct kd_hist *h, uint64_t v, uint64_t n);
static inline void kd_hist_record(struct kd_hist *h, uint64_t v) { kd_hist_record_n(h, v, 1); }
/* Adds src's counts to dst. Returns 0, or -1 (dst unchanged) when their params differ. */
int kd_hist_merge(struct kd_hist *dst, const struct kd_hist *src);

uint64_t kd_hist_count(const struct kd_hist *h);
uint64_t kd_hist_clamped(const struct kd_hist *h); /* records that fell outside [lowest, highest] */
uint64_t kd_hist_min(const struct kd_hist *h);     /* exact (after clamping); 0 when empty */
uint64_t kd_hist_max(const struct kd_hist *h);     /* exact (after clamping); 0 when empty */
double kd_hist_mean(const struct kd_hist *h);      /* exact (after clamping); 0 when empty */
/* Largest relative error of a reported percentile: 2/S (see the file comment). */
double kd_hist_rel_error(const struct kd_hist *h);

/* The rank (1-based) that defines percentile p (0..100) of n sorted samples: ceil(p/100 * n),
 * at least 1; computed so that products that are whole numbers in decimal are not rounded up. */
static inline uint64_t kd_hist_rank(double p, uint64_t n) {
  if (p <= 0.0) return 1;
  if (p >= 100.0) return n;
  double r = ceil(p / 100.0 * (double)n - 1e-9 * (double)n);
  if (r < 1.0) r = 1.0;
  if (r > (double)n) r = (double)n;
  return (uint64_t)r;
}
/* The value at percentile p (0..100): the highest value equivalent to the bucket holding the
 * sample of rank kd_hist_rank(p, count), capped to the exact max; p = 100 gives the max and
 * p = 0 the min. 0 when empty. */
uint64_t kd_hist_percentile(const struct kd_hist *h, double p);

#endif
