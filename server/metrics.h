/* metrics.h - Prometheus metrics: per-worker counters and histograms written only by their worker
 * (relaxed atomic load+store, no lock, no shared cache line on the hot path) and summed at scrape
 * time; served in the text exposition format over HTTP by libmicrohttpd on its own port. */
#ifndef KD_SERVE_METRICS_H
#define KD_SERVE_METRICS_H

#include <stdatomic.h>
#include <stdint.h>

#include "kdrank_loader.h"

enum kd_method { KD_M_SCORE = 0, KD_M_METADATA, KD_M_CHECK, KD_M_WATCH, KD_M_UNKNOWN, KD_M_COUNT };
enum kd_hist_kind { KD_H_DECODE = 0, KD_H_QUEUE, KD_H_SCORE, KD_H_ENCODE, KD_H_TOTAL, KD_H_REPLY, KD_H_COUNT };
#define KD_M_CODES 17      /* gRPC status codes 0..16 */
#define KD_M_BUCKETS 16    /* 15 finite bounds + +Inf */
#define KD_M_SERIES 256    /* (model, version, label) series per worker; series 0 = no model */

struct kd_hist {
  atomic_uint_fast64_t b[KD_M_BUCKETS]; /* per-bucket (non-cumulative) counts */
  atomic_uint_fast64_t sum_ns;
};

/* Version labels of a series (which routing answered). */
enum kd_label { KD_L_NONE = 0, KD_L_STABLE = 1, KD_L_CANARY = 2 };

/* One (model, version, label) series of one worker. */
struct kd_series {
  int32_t model;   /* registry model index, -1: none (health, unknown method, unresolved model) */
  int64_t version;
  int32_t label;   /* enum kd_label */
  atomic_uint_fast64_t req[KD_M_COUNT][KD_M_CODES];
  struct kd_hist h[KD_H_COUNT];
  atomic_uint_fast64_t candidates;
  /* Sum of served scores per task (arch task index; a double's bits) over scored candidates:
   * mean score per task = score_sum / candidates of the series (canary vs stable drift). */
  atomic_uint_fast64_t score_sum[KD_MAX_TASKS];
  atomic_uint_fast64_t score_n[KD_MAX_TASKS];
};

struct kd_wmetrics {
  _Alignas(64) atomic_uint n_series; /* published with release after the entry is written */
  atomic_int_fast64_t inflight;
  struct kd_series series[KD_M_SERIES];
};

typedef struct kd_metrics kd_metrics;

/* Creates metrics for n_workers workers over the registry (model names, versions, loads). */
kd_metrics *kd_metrics_create(uint32_t n_workers, kd_registry *reg);
void kd_metrics_free(kd_metrics *m);
struct kd_wmetrics *kd_metrics_worker(kd_metrics *m, uint32_t i);
/* The worker's series for (model, version); creates it on first use (worker thread only). When
 * the table is full, returns series 0 (labelled model="",version=""). Lock-free. */
struct kd_series *kd_metrics_series(struct kd_wmetrics *w, int32_t model, int64_t version);
/* The same with a version label (enum kd_label). */
struct kd_series *kd_metrics_series_l(struct kd_wmetrics *w, int32_t model, int64_t version, int32_t label);
/* enum kd_label of "stable" / "canary" / anything else. */
int32_t kd_label_of(const char *label);
/* Adds n candidates' scores (n x n_out, candidate-major; tasks: arch indices) to the series. */
void kd_metrics_scores(struct kd_series *s, const float *scores, uint32_t n, const uint32_t *tasks,
                       uint32_t n_out);

/* Single-writer increments (the worker owns w): relaxed load + store, no lock prefix. */
static inline void kd_m_add(atomic_uint_fast64_t *x, uint64_t d) {
  atomic_store_explicit(x, atomic_load_explicit(x, memory_order_relaxed) + d, memory_order_relaxed);
}
void kd_metrics_observe(struct kd_series *s, int hist, uint64_t ns);
static inline void kd_metrics_count(struct kd_series *s, int method, int code) {
  kd_m_add(&s->req[method][code >= 0 && code < KD_M_CODES ? code : 2], 1);
}

/* Renders every metric in the Prometheus text format into a malloc'd string (caller frees). */
char *kd_metrics_render(kd_metrics *m, size_t *len);
/* Starts the HTTP endpoint (GET /metrics) on HOST:PORT; *port receives the bound port. */
int kd_metrics_listen(kd_metrics *m, const char *hostport, int *port, struct kd_err *e);
/* Stops the endpoint (if started). */
void kd_metrics_stop(kd_metrics *m);

#endif
