/* hist.c - HDR-style log-linear histogram for kdrank-load (see hist.h for the error bound). */
#include "hist.h"

#include <stdlib.h>
#include <string.h>

struct kd_hist {
  struct kd_hist_params p;
  int sub_bits;       /* S = 2^sub_bits sub-buckets in the first (exact) range */
  uint64_t sub_count; /* S */
  uint64_t half;      /* S / 2 */
  size_t n_buckets;
  uint64_t total, clamped, min, max;
  long double sum;
  uint64_t counts[]; /* [n_buckets] */
};

static int msb64(uint64_t v) { return 63 - __builtin_clzll(v); }

/* Bucket index of v (v <= highest). */
static size_t bucket_of(const struct kd_hist *h, uint64_t v) {
  if (v < h->sub_count) return (size_t)v;
  int e = msb64(v) - (h->sub_bits - 1); /* v >> e in [S/2, S) */
  return (size_t)(h->sub_count + (uint64_t)(e - 1) * h->half + ((v >> e) - h->half));
}

/* Highest value that lands in bucket i. */
static uint64_t bucket_high(const struct kd_hist *h, size_t i) {
  if (i < h->sub_count) return (uint64_t)i;
  uint64_t j = (uint64_t)i - h->sub_count;
  int e = (int)(j / h->half) + 1;
  uint64_t m = h->half + j % h->half;
  return (m << e) + ((1ull << e) - 1);
}

struct kd_hist *kd_hist_new(struct kd_hist_params p) {
  if (p.lowest < 1 || p.highest <= p.lowest || p.sig_digits < 1 || p.sig_digits > 5) return NULL;
  if (p.highest > (1ull << 62)) return NULL;
  uint64_t need = 2;
  for (int i = 0; i < p.sig_digits; i++) need *= 10;
  int bits = 0;
  while ((1ull << bits) < need) bits++;
  struct kd_hist tmp = {.sub_bits = bits, .sub_count = 1ull << bits, .half = 1ull << (bits - 1)};
  size_t n = bucket_of(&tmp, p.highest) + 1;
  struct kd_hist *h = calloc(1, sizeof(*h) + n * sizeof(uint64_t));
  if (!h) return NULL;
  *h = tmp;
  h->p = p;
  h->n_buckets = n;
  return h;
}

void kd_hist_free(struct kd_hist *h) { free(h); }

void kd_hist_reset(struct kd_hist *h) {
  memset(h->counts, 0, h->n_buckets * sizeof(uint64_t));
  h->total = h->clamped = h->min = h->max = 0;
  h->sum = 0;
}

void kd_hist_record_n(struct kd_hist *h, uint64_t v, uint64_t n) {
  if (n == 0) return;
  if (v < h->p.lowest) { v = h->p.lowest; h->clamped += n; }
  else if (v > h->p.highest) { v = h->p.highest; h->clamped += n; }
  h->counts[bucket_of(h, v)] += n;
  if (h->total == 0 || v < h->min) h->min = v;
  if (v > h->max) h->max = v;
  h->total += n;
  h->sum += (long double)v * (long double)n;
}

int kd_hist_merge(struct kd_hist *dst, const struct kd_hist *src) {
  if (dst->p.lowest != src->p.lowest || dst->p.highest != src->p.highest ||
      dst->p.sig_digits != src->p.sig_digits)
    return -1;
  if (src->total == 0) return 0;
  for (size_t i = 0; i < dst->n_buckets; i++) dst->counts[i] += src->counts[i];
  if (dst->total == 0 || src->min < dst->min) dst->min = src->min;
  if (src->max > dst->max) dst->max = src->max;
  dst->total += src->total;
  dst->clamped += src->clamped;
  dst->sum += src->sum;
  return 0;
}

uint64_t kd_hist_count(const struct kd_hist *h) { return h->total; }
uint64_t kd_hist_clamped(const struct kd_hist *h) { return h->clamped; }
uint64_t kd_hist_min(const struct kd_hist *h) { return h->min; }
uint64_t kd_hist_max(const struct kd_hist *h) { return h->max; }
double kd_hist_mean(const struct kd_hist *h) { return h->total ? (double)(h->sum / h->total) : 0.0; }
double kd_hist_rel_error(const struct kd_hist *h) { return 1.0 / (double)h->half; }

uint64_t kd_hist_percentile(const struct kd_hist *h, double p) {
  if (h->total == 0) return 0;
  if (p <= 0.0) return h->min;
  if (p >= 100.0) return h->max;
  uint64_t rank = kd_hist_rank(p, h->total), cum = 0;
  for (size_t i = 0; i < h->n_buckets; i++) {
    cum += h->counts[i];
    if (cum >= rank) {
      uint64_t v = bucket_high(h, i);
      return v > h->max ? h->max : v;
    }
  }
  return h->max;
}
