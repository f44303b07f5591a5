/* load.h - kdrank-load internals (private to loadtest/): the request pool built from a model's
 * metadata, the run engine (open/closed loop over gRPC C core channels), and the reports.
 * Everything gRPC lives in pool.c and engine.c; report.c and main.c only see these structs. */
#ifndef KD_LOAD_H
#define KD_LOAD_H
#include <stdint.h>
#include <stddef.h>

#include "hist.h"

#define KD_LOAD_N_STATUS 17      /* gRPC status codes 0..16 */
#define KD_LOAD_MAX_VERSIONS 16  /* distinct (version, label) pairs tracked; more go to "other" */
#define KD_LOAD_MAX_EVENTS 256
#define KD_LOAD_LAT_LOW 1000ull            /* 1 us in ns */
#define KD_LOAD_LAT_HIGH 60000000000ull    /* 60 s in ns */

/* An error message for the CLI to print (loadtest is a tool: no shared kd_err dependency). */
struct kd_load_err {
  char msg[512];
};
/* Formats msg into e (if not NULL); returns -1 so callers can `return kd_load_errf(...)`. */
int kd_load_errf(struct kd_load_err *e, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/* Monotonic clock in ns (the clock every timestamp of a run uses). */
int64_t kd_load_now_ns(void);

/* ---- request pool (pool.c) ---- */
enum kd_load_cand_dist { KD_LOAD_CAND_FIXED = 0, KD_LOAD_CAND_UNIFORM = 1, KD_LOAD_CAND_EXP = 2 };

struct kd_load_req_params {
  const char *target;    /* gRPC target, e.g. ipv4:127.0.0.1:50051 */
  const char *model;     /* "" : the server's default model */
  int cand_dist;         /* enum kd_load_cand_dist */
  double cand_a, cand_b; /* FIXED: a; UNIFORM: a..b; EXP: mean a, capped at b (or max_candidates) */
  uint32_t pool;         /* distinct request bodies (random features), >= 1 */
  uint64_t seed;
  const char *replay;    /* NULL, or a file of proto3-JSON ScoreRequests (kdrank-ckpt request) */
  int64_t pin_version;   /* > 0: pin every request to this version */
  const char *pin_label; /* non-NULL/non-empty: pin to this label */
  double timeout_s;      /* for GetModelMetadata */
};

/* One serialized ScoreRequest without its routing key (field 2 is prepended per call). */
struct kd_load_body {
  void *data;
  size_t len;
  uint32_t n_cand;
};

struct kd_load_pool {
  uint32_t n;
  struct kd_load_body *bodies; /* [n] */
  /* from GetModelMetadata, for the report */
  char model[128];
  char architecture[128];
  int64_t version;
  uint32_t n_features, n_served_tasks, max_candidates;
  double mean_cand, mean_bytes;
};

/* Asks the server for the model's metadata and builds the pool (random features drawn per
 * FeatureSpec, or the replayed requests). Returns 0, or -1 with e filled (no server, bad
 * metadata, bad replay file: names the request and field). Free with kd_load_pool_free. */
int kd_load_pool_build(struct kd_load_req_params p, struct kd_load_pool *out, struct kd_load_err *e);
void kd_load_pool_free(struct kd_load_pool *pool);

/* ---- run engine (engine.c) ---- */
struct kd_load_params {
  const char *target;
  uint32_t connections;  /* channels, each with its own subchannel (connection) */
  uint32_t threads;      /* I/O threads, one completion queue each */
  double rate;           /* open loop: requests/s asked (ignored when closed > 0) */
  int poisson;           /* open loop: exponential inter-arrival times instead of constant */
  uint32_t closed;       /* > 0: closed loop with this many calls in flight */
  double duration_s;     /* schedule length, warm-up included */
  double warmup_s;       /* calls scheduled before this are not measured */
  uint64_t max_requests; /* cap on calls issued (warm-up included) */
  uint32_t max_inflight; /* open loop: cap on calls in flight; the schedule waits (and it is
                            reported) when hit, latency still counts from the intended time */
  double deadline_s;     /* per call */
  uint64_t keys;         /* routing keys drawn from [0, keys) then hashed; 0: key 0 always */
  uint64_t seed;
  double window_s;       /* length of a window opened by kd_load_run_mark(.., 1) */
};

struct kd_load_interval {
  uint64_t asked, ok, err; /* by intended send time, 1 s each */
  struct kd_hist *lat;     /* 2 significant digits; NULL when nothing ok in the interval */
};

struct kd_load_version {
  int64_t version;
  char label[32];
  uint64_t ok;
  double first_seen_s; /* since the start of the run */
  struct kd_hist *lat;
};

struct kd_load_event {
  double t_s;
  int window;
  char what[96];
};

struct kd_load_result {
  int closed;
  double asked_rate, duration_s, warmup_s, measured_s;
  double elapsed_s;               /* start to the end of the drain */
  uint64_t issued, warmup_calls;  /* every call issued; those in the warm-up */
  uint64_t ok, errors;            /* measured calls (after warm-up) */
  uint64_t by_status[KD_LOAD_N_STATUS];
  uint64_t bad_response;          /* OK status but unparseable or wrong score count (in errors) */
  uint64_t cancelled_at_end;      /* calls still in flight past the drain limit */
  uint64_t cap_hits;              /* times the schedule had to wait for the in-flight cap */
  double cap_wait_s;              /* total time it waited */
  uint64_t unsent;                /* scheduled before the end but never sent (cap still full) */
  uint64_t max_seen_inflight;
  struct kd_hist *lat;            /* ok calls: completion - intended send (corrected) */
  struct kd_hist *service;        /* ok calls: completion - actual send (uncorrected) */
  struct kd_hist *lat_in, *lat_out; /* ok calls overlapping / not overlapping a marked window */
  uint32_t n_intervals;
  struct kd_load_interval *iv;
  uint32_t n_versions;
  struct kd_load_version versions[KD_LOAD_MAX_VERSIONS];
  uint64_t other_versions;
  uint32_t n_events;
  struct kd_load_event events[KD_LOAD_MAX_EVENTS];
};

struct kd_load_run;
/* Creates the channels and threads' queues for one run over pool (which must outlive the run).
 * Returns NULL with e filled on bad params. Nothing is sent until kd_load_run_go. */
struct kd_load_run *kd_load_run_new(struct kd_load_params p, const struct kd_load_pool *pool,
                                    struct kd_load_err *e);
/* Runs the schedule to its end (duration or request cap), drains the calls in flight (at most
 * deadline + 1 s, then cancels) and fills res (free with kd_load_result_free). Returns 0 or -1. */
int kd_load_run_go(struct kd_load_run *r, struct kd_load_result *res, struct kd_load_err *e);
/* Thread safe, during kd_load_run_go: records an event now (e.g. "publish v7"); window=1 opens
 * a window of params.window_s for the inside/outside latency split. */
void kd_load_run_mark(struct kd_load_run *r, const char *what, int window);
/* Seconds since the run started (0 before). */
double kd_load_run_elapsed(const struct kd_load_run *r);
void kd_load_run_free(struct kd_load_run *r);
void kd_load_result_free(struct kd_load_result *res);
/* Name of a gRPC status code ("UNAVAILABLE"), "?" when out of range. */
const char *kd_load_status_name(int code);

/* ---- reports (report.c) ---- */
struct kd_load_report_info {
  const char *scenario;
  const char *target;
  const struct kd_load_pool *pool;
};
/* Human summary to stdout-like stream f. */
void kd_load_report_text(void *f, const struct kd_load_result *r, struct kd_load_report_info ri);
/* Adds the result as a cJSON object (cJSON *) describing it; caller owns it. */
void *kd_load_report_json(const struct kd_load_result *r, struct kd_load_report_info ri);
/* Writes the per-interval series as CSV. Returns 0 or -1 with e. */
int kd_load_report_csv(const char *path, const struct kd_load_result *r, struct kd_load_err *e);
/* Writes PREFIX-spectrum.png and PREFIX-latency.png with gnuplot (data files next to them).
 * Returns 0 or -1 with e (gnuplot missing or failing). */
int kd_load_report_plot(const char *prefix, const struct kd_load_result *r, struct kd_load_err *e);

#endif
