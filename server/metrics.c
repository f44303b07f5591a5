/* metrics.c - per-worker metric tables, their sum at scrape time, and the /metrics endpoint.
 * libmicrohttpd serves HTTP (a well-kept Debian library, rather than a hand-written HTTP parser). */
#include "metrics.h"

#include <arpa/inet.h>
#include <microhttpd.h>
#include <netinet/in.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* Histogram upper bounds in seconds (the last bucket is +Inf). */
static const double k_bounds[KD_M_BUCKETS - 1] = {25e-6, 50e-6, 100e-6, 250e-6, 500e-6,
                                                   1e-3,  2.5e-3, 5e-3, 10e-3, 25e-3,
                                                   50e-3, 100e-3, 250e-3, 1.0, 5.0};
static uint64_t k_bounds_ns[KD_M_BUCKETS - 1];

static const char *const k_method_names[KD_M_COUNT] = {
    "Score", "GetModelMetadata", "grpc.health.v1.Health/Check", "grpc.health.v1.Health/Watch",
    "unknown"};
static const char *const k_hist_names[KD_H_COUNT] = {"decode", "queue", "score", "encode", "total", "reply"};
static const char *const k_hist_help[KD_H_COUNT] = {
    "Request read + protobuf decode time",
    "Time from the worker taking the call off its completion queue to the start of decoding",
    "Model scoring time (kd_score)",
    "Response build + protobuf encode time",
    "Server time from the call leaving the completion queue to the reply batch completing",
    "Time from handing the reply batch to gRPC to its completion (transport write and stream close)"};
static const char *const k_code_names[KD_M_CODES] = {
    "OK", "CANCELLED", "UNKNOWN", "INVALID_ARGUMENT", "DEADLINE_EXCEEDED", "NOT_FOUND",
    "ALREADY_EXISTS", "PERMISSION_DENIED", "RESOURCE_EXHAUSTED", "FAILED_PRECONDITION", "ABORTED",
    "OUT_OF_RANGE", "UNIMPLEMENTED", "INTERNAL", "UNAVAILABLE", "DATA_LOSS", "UNAUTHENTICATED"};

struct kd_metrics {
  uint32_t n_workers;
  struct kd_wmetrics *w; /* [n_workers], 64-byte aligned */
  kd_registry *reg;
  struct MHD_Daemon *httpd;
};

kd_metrics *kd_metrics_create(uint32_t n_workers, kd_registry *reg) {
  for (int i = 0; i < KD_M_BUCKETS - 1; i++) k_bounds_ns[i] = (uint64_t)(k_bounds[i] * 1e9 + 0.5);
  kd_metrics *m = calloc(1, sizeof *m);
  if (!m) return NULL;
  m->n_workers = n_workers;
  m->reg = reg;
  m->w = aligned_alloc(64, ((n_workers * sizeof *m->w) + 63) & ~(size_t)63);
  if (!m->w) {
    free(m);
    return NULL;
  }
  memset(m->w, 0, n_workers * sizeof *m->w);
  for (uint32_t i = 0; i < n_workers; i++) {
    m->w[i].series[0].model = -1;
    atomic_store(&m->w[i].n_series, 1);
  }
  return m;
}

void kd_metrics_free(kd_metrics *m) {
  if (!m) return;
  kd_metrics_stop(m);
  free(m->w);
  free(m);
}

struct kd_wmetrics *kd_metrics_worker(kd_metrics *m, uint32_t i) { return &m->w[i]; }

int32_t kd_label_of(const char *label) {
  if (!label) return KD_L_NONE;
  if (strcmp(label, "stable") == 0) return KD_L_STABLE;
  if (strcmp(label, "canary") == 0) return KD_L_CANARY;
  return KD_L_NONE;
}

struct kd_series *kd_metrics_series(struct kd_wmetrics *w, int32_t model, int64_t version) {
  return kd_metrics_series_l(w, model, version, KD_L_NONE);
}

struct kd_series *kd_metrics_series_l(struct kd_wmetrics *w, int32_t model, int64_t version, int32_t label) {
  if (model < 0) return &w->series[0];
  uint32_t n = atomic_load_explicit(&w->n_series, memory_order_relaxed); /* we are the writer */
  for (uint32_t i = 1; i < n; i++)
    if (w->series[i].model == model && w->series[i].version == version && w->series[i].label == label)
      return &w->series[i];
  if (n >= KD_M_SERIES) return &w->series[0];
  struct kd_series *s = &w->series[n];
  s->model = model;
  s->version = version;
  s->label = label;
  atomic_store_explicit(&w->n_series, n + 1, memory_order_release); /* publish to the scraper */
  return s;
}

void kd_metrics_observe(struct kd_series *s, int hist, uint64_t ns) {
  struct kd_hist *h = &s->h[hist];
  int b = 0;
  while (b < KD_M_BUCKETS - 1 && ns > k_bounds_ns[b]) b++;
  kd_m_add(&h->b[b], 1);
  kd_m_add(&h->sum_ns, ns);
}

void kd_metrics_scores(struct kd_series *s, const float *scores, uint32_t n, const uint32_t *tasks,
                       uint32_t n_out) {
  for (uint32_t t = 0; t < n_out; t++) {
    if (tasks[t] >= KD_MAX_TASKS) continue;
    double sum = 0;
    for (uint32_t i = 0; i < n; i++) sum += scores[(size_t)i * n_out + t];
    uint64_t bits = atomic_load_explicit(&s->score_sum[tasks[t]], memory_order_relaxed);
    double cur;
    memcpy(&cur, &bits, sizeof cur);
    cur += sum;
    memcpy(&bits, &cur, sizeof bits);
    atomic_store_explicit(&s->score_sum[tasks[t]], bits, memory_order_relaxed);
    kd_m_add(&s->score_n[tasks[t]], n);
  }
}

/* A growing output buffer (scrape path only: allocation is fine here). */
struct buf {
  char *p;
  size_t len, cap;
  int oom;
};

static void bprintf(struct buf *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void bprintf(struct buf *b, const char *fmt, ...) {
  if (b->oom) return;
  for (;;) {
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(b->p + b->len, b->cap - b->len, fmt, ap);
    va_end(ap);
    if (n < 0) return;
    if ((size_t)n < b->cap - b->len) {
      b->len += (size_t)n;
      return;
    }
    size_t nc = b->cap * 2 + (size_t)n + 1;
    char *t = realloc(b->p, nc);
    if (!t) {
      b->oom = 1;
      return;
    }
    b->p = t;
    b->cap = nc;
  }
}

/* The distinct (model, version, label) keys over all workers. */
struct key {
  int32_t model;
  int64_t version;
  int32_t label;
};
static const char *const k_label_names[] = {"", "stable", "canary"};

static uint32_t collect_keys(kd_metrics *m, struct key *keys, uint32_t cap) {
  uint32_t n = 0;
  for (uint32_t w = 0; w < m->n_workers; w++) {
    uint32_t ns = atomic_load_explicit(&m->w[w].n_series, memory_order_acquire);
    for (uint32_t i = 0; i < ns; i++) {
      struct kd_series *s = &m->w[w].series[i];
      uint32_t k = 0;
      while (k < n && !(keys[k].model == s->model && keys[k].version == s->version &&
                        keys[k].label == s->label))
        k++;
      if (k == n && n < cap) keys[n++] = (struct key){s->model, s->version, s->label};
    }
  }
  return n;
}

/* Sums a field over every worker's series of key k. get returns the value of one series. */
static uint64_t sum_over(kd_metrics *m, struct key k, uint64_t (*get)(const struct kd_series *, int, int),
                         int a, int b) {
  uint64_t t = 0;
  for (uint32_t w = 0; w < m->n_workers; w++) {
    uint32_t ns = atomic_load_explicit(&m->w[w].n_series, memory_order_acquire);
    for (uint32_t i = 0; i < ns; i++) {
      const struct kd_series *s = &m->w[w].series[i];
      if (s->model == k.model && s->version == k.version && s->label == k.label) t += get(s, a, b);
    }
  }
  return t;
}
static uint64_t get_req(const struct kd_series *s, int meth, int code) {
  return atomic_load_explicit(&s->req[meth][code], memory_order_relaxed);
}
static uint64_t get_bucket(const struct kd_series *s, int h, int b) {
  return atomic_load_explicit(&s->h[h].b[b], memory_order_relaxed);
}
static uint64_t get_sum(const struct kd_series *s, int h, int unused) {
  (void)unused;
  return atomic_load_explicit(&s->h[h].sum_ns, memory_order_relaxed);
}
static uint64_t get_cand(const struct kd_series *s, int a, int b) {
  (void)a, (void)b;
  return atomic_load_explicit(&s->candidates, memory_order_relaxed);
}
static uint64_t get_score_n(const struct kd_series *s, int t, int b) {
  (void)b;
  return atomic_load_explicit(&s->score_n[t], memory_order_relaxed);
}
/* Sum of a task's score sums over every worker's series of key k. */
static double score_sum_over(kd_metrics *m, struct key k, int t) {
  double tot = 0;
  for (uint32_t w = 0; w < m->n_workers; w++) {
    uint32_t ns = atomic_load_explicit(&m->w[w].n_series, memory_order_acquire);
    for (uint32_t i = 0; i < ns; i++) {
      const struct kd_series *s = &m->w[w].series[i];
      if (s->model != k.model || s->version != k.version || s->label != k.label) continue;
      uint64_t bits = atomic_load_explicit(&s->score_sum[t], memory_order_relaxed);
      double d;
      memcpy(&d, &bits, sizeof d);
      tot += d;
    }
  }
  return tot;
}

/* Label values of a key: model name and version ("" when none). */
static void key_labels(kd_metrics *m, struct key k, char *buf, size_t cap) {
  const char *name = k.model >= 0 ? kd_registry_model_name(m->reg, (uint32_t)k.model) : NULL;
  if (name)
    snprintf(buf, cap, "model=\"%s\",version=\"%lld\",version_label=\"%s\"", name,
             (long long)k.version, k_label_names[k.label >= 0 && k.label < 3 ? k.label : 0]);
  else
    snprintf(buf, cap, "model=\"\",version=\"\",version_label=\"\"");
}

char *kd_metrics_render(kd_metrics *m, size_t *len) {
  struct buf b = {malloc(16384), 0, 16384, 0};
  if (!b.p) return NULL;
  uint32_t cap = m->n_workers * KD_M_SERIES;
  struct key *keys = malloc(cap * sizeof *keys);
  if (!keys) {
    free(b.p);
    return NULL;
  }
  uint32_t nk = collect_keys(m, keys, cap);
  char lab[256];

  bprintf(&b, "# HELP kdrank_requests_total RPCs finished, by method, model, version and gRPC status code.\n"
              "# TYPE kdrank_requests_total counter\n");
  for (uint32_t k = 0; k < nk; k++) {
    key_labels(m, keys[k], lab, sizeof lab);
    for (int meth = 0; meth < KD_M_COUNT; meth++)
      for (int c = 0; c < KD_M_CODES; c++) {
        uint64_t v = sum_over(m, keys[k], get_req, meth, c);
        if (v)
          bprintf(&b, "kdrank_requests_total{method=\"%s\",%s,code=\"%s\"} %llu\n",
                  k_method_names[meth], lab, k_code_names[c], (unsigned long long)v);
      }
  }
  for (int h = 0; h < KD_H_COUNT; h++) {
    bprintf(&b, "# HELP kdrank_%s_seconds %s (Score calls).\n# TYPE kdrank_%s_seconds histogram\n",
            k_hist_names[h], k_hist_help[h], k_hist_names[h]);
    for (uint32_t k = 0; k < nk; k++) {
      if (keys[k].model < 0) continue;
      key_labels(m, keys[k], lab, sizeof lab);
      uint64_t cum = 0;
      for (int bk = 0; bk < KD_M_BUCKETS; bk++) {
        cum += sum_over(m, keys[k], get_bucket, h, bk);
        if (bk < KD_M_BUCKETS - 1)
          bprintf(&b, "kdrank_%s_seconds_bucket{%s,le=\"%g\"} %llu\n", k_hist_names[h], lab,
                  k_bounds[bk], (unsigned long long)cum);
        else
          bprintf(&b, "kdrank_%s_seconds_bucket{%s,le=\"+Inf\"} %llu\n", k_hist_names[h], lab,
                  (unsigned long long)cum);
      }
      bprintf(&b, "kdrank_%s_seconds_sum{%s} %.9f\nkdrank_%s_seconds_count{%s} %llu\n",
              k_hist_names[h], lab, (double)sum_over(m, keys[k], get_sum, h, 0) * 1e-9,
              k_hist_names[h], lab, (unsigned long long)cum);
    }
  }
  bprintf(&b, "# HELP kdrank_candidates_scored_total Candidates scored.\n"
              "# TYPE kdrank_candidates_scored_total counter\n");
  for (uint32_t k = 0; k < nk; k++) {
    if (keys[k].model < 0) continue;
    key_labels(m, keys[k], lab, sizeof lab);
    bprintf(&b, "kdrank_candidates_scored_total{%s} %llu\n", lab,
            (unsigned long long)sum_over(m, keys[k], get_cand, 0, 0));
  }
  static const char *const fam[3] = {"sum", "count", "mean"};
  static const char *const fam_help[3] = {
      "Sum of served scores per task, by model, version and label (canary vs stable)",
      "Scores summed into kdrank_task_score_sum", "Mean served score per task since start"};
  for (int f = 0; f < 3; f++) {
    bprintf(&b, "# HELP kdrank_task_score_%s %s.\n# TYPE kdrank_task_score_%s %s\n", fam[f],
            fam_help[f], fam[f], f == 2 ? "gauge" : "counter");
    for (uint32_t k = 0; k < nk; k++) {
      if (keys[k].model < 0) continue;
      key_labels(m, keys[k], lab, sizeof lab);
      /* Task names from the model's stable version (versions of a model share their tasks). */
      struct kd_err e = {0};
      kd_version *v = kd_registry_acquire(m->reg, kd_registry_model_name(m->reg, (uint32_t)keys[k].model),
                                          0, 0, "stable", &e);
      const struct kd_arch *a = v ? kd_version_arch(v) : NULL;
      for (int t = 0; t < KD_MAX_TASKS; t++) {
        uint64_t cnt = sum_over(m, keys[k], get_score_n, t, 0);
        if (!cnt) continue;
        char tname[KD_NAME_MAX + 16];
        if (a && (uint32_t)t < a->n_tasks) snprintf(tname, sizeof tname, "%s", a->tasks[t].name);
        else snprintf(tname, sizeof tname, "task_%d", t);
        double sum = score_sum_over(m, keys[k], t);
        if (f == 1)
          bprintf(&b, "kdrank_task_score_count{%s,task=\"%s\"} %llu\n", lab, tname, (unsigned long long)cnt);
        else
          bprintf(&b, "kdrank_task_score_%s{%s,task=\"%s\"} %.9g\n", fam[f], lab, tname,
                  f == 0 ? sum : sum / (double)cnt);
      }
      kd_registry_release(v);
    }
  }
  int64_t inflight = 0;
  for (uint32_t w = 0; w < m->n_workers; w++)
    inflight += atomic_load_explicit(&m->w[w].inflight, memory_order_relaxed);
  bprintf(&b, "# HELP kdrank_inflight_calls Calls being handled or replied to.\n"
              "# TYPE kdrank_inflight_calls gauge\nkdrank_inflight_calls %lld\n",
          (long long)inflight);

  uint32_t nm = kd_registry_n_models(m->reg);
  bprintf(&b, "# HELP kdrank_model_loads_total Model version load attempts, by result.\n"
              "# TYPE kdrank_model_loads_total counter\n");
  for (uint32_t i = 0; i < nm; i++) {
    uint64_t ok, failed;
    kd_registry_load_counts(m->reg, i, &ok, &failed);
    const char *name = kd_registry_model_name(m->reg, i);
    bprintf(&b, "kdrank_model_loads_total{model=\"%s\",result=\"ok\"} %llu\n", name, (unsigned long long)ok);
    bprintf(&b, "kdrank_model_loads_total{model=\"%s\",result=\"failed\"} %llu\n", name,
            (unsigned long long)failed);
  }
  bprintf(&b, "# HELP kdrank_model_version The version serving as stable (0: none available).\n"
              "# TYPE kdrank_model_version gauge\n");
  for (uint32_t i = 0; i < nm; i++) {
    struct kd_model_status st;
    kd_registry_status(m->reg, i, &st);
    bprintf(&b, "kdrank_model_version{model=\"%s\"} %lld\n", kd_registry_model_name(m->reg, i),
            (long long)st.stable_version);
  }
  for (int f = 0; f < 2; f++) {
    bprintf(&b, f == 0 ? "# HELP kdrank_model_canary_version The canary version (0: none).\n"
                         "# TYPE kdrank_model_canary_version gauge\n"
                       : "# HELP kdrank_canary_weight The canary's share of routed traffic.\n"
                         "# TYPE kdrank_canary_weight gauge\n");
    for (uint32_t i = 0; i < nm; i++) {
      struct kd_model_status st;
      kd_registry_status(m->reg, i, &st);
      const char *name = kd_registry_model_name(m->reg, i);
      if (f == 0)
        bprintf(&b, "kdrank_model_canary_version{model=\"%s\"} %lld\n", name, (long long)st.canary_version);
      else
        bprintf(&b, "kdrank_canary_weight{model=\"%s\"} %g\n", name, st.canary_weight);
    }
  }
  for (int f = 0; f < 2; f++) {
    if (f == 0)
      bprintf(&b, "# HELP kdrank_model_version_state Versions the registry knows of (1 each), by "
                  "state (LOADING, AVAILABLE, FAILED, UNLOADING) and label.\n"
                  "# TYPE kdrank_model_version_state gauge\n");
    else
      bprintf(&b, "# HELP kdrank_model_version_state_since_seconds Unix time the version entered "
                  "its state.\n# TYPE kdrank_model_version_state_since_seconds gauge\n");
    for (uint32_t i = 0; i < nm; i++) {
      struct kd_version_info vi[32];
      uint32_t nv = kd_registry_versions(m->reg, i, vi, 32);
      const char *name = kd_registry_model_name(m->reg, i);
      for (uint32_t j = 0; j < nv; j++) {
        if (f == 0)
          bprintf(&b, "kdrank_model_version_state{model=\"%s\",version=\"%lld\",state=\"%s\",label=\"%s\"} 1\n",
                  name, (long long)vi[j].version, vi[j].state, vi[j].label);
        else
          bprintf(&b, "kdrank_model_version_state_since_seconds{model=\"%s\",version=\"%lld\",state=\"%s\"} %.3f\n",
                  name, (long long)vi[j].version, vi[j].state, (double)vi[j].state_unix_ms / 1e3);
      }
    }
  }
  bprintf(&b, "# HELP kdrank_build_info kdrank-serve build.\n# TYPE kdrank_build_info gauge\n"
              "kdrank_build_info{version=\"%s\"} 1\n", KD_VERSION);
  free(keys);
  if (b.oom) {
    free(b.p);
    return NULL;
  }
  *len = b.len;
  return b.p;
}

/* MHD request handler: GET /metrics renders; anything else is 404. */
static enum MHD_Result on_http(void *cls, struct MHD_Connection *conn, const char *url,
                               const char *method, const char *version, const char *upload_data,
                               size_t *upload_data_size, void **req_cls) {
  (void)version, (void)upload_data, (void)upload_data_size, (void)req_cls;
  kd_metrics *m = cls;
  struct MHD_Response *resp;
  unsigned int status;
  if (strcmp(method, "GET") != 0 && strcmp(method, "HEAD") != 0) {
    static const char msg[] = "only GET /metrics\n";
    resp = MHD_create_response_from_buffer(sizeof msg - 1, (void *)msg, MHD_RESPMEM_PERSISTENT);
    status = MHD_HTTP_METHOD_NOT_ALLOWED;
  } else if (strcmp(url, "/metrics") == 0) {
    size_t len = 0;
    char *text = kd_metrics_render(m, &len);
    if (!text) {
      static const char msg[] = "out of memory\n";
      resp = MHD_create_response_from_buffer(sizeof msg - 1, (void *)msg, MHD_RESPMEM_PERSISTENT);
      status = MHD_HTTP_INTERNAL_SERVER_ERROR;
    } else {
      resp = MHD_create_response_from_buffer(len, text, MHD_RESPMEM_MUST_FREE);
      MHD_add_response_header(resp, "Content-Type", "text/plain; version=0.0.4; charset=utf-8");
      status = MHD_HTTP_OK;
    }
  } else {
    static const char msg[] = "not found: kdrank-serve serves GET /metrics\n";
    resp = MHD_create_response_from_buffer(sizeof msg - 1, (void *)msg, MHD_RESPMEM_PERSISTENT);
    status = MHD_HTTP_NOT_FOUND;
  }
  if (!resp) return MHD_NO;
  enum MHD_Result r = MHD_queue_response(conn, status, resp);
  MHD_destroy_response(resp);
  return r;
}

int kd_metrics_listen(kd_metrics *m, const char *hostport, int *port, struct kd_err *e) {
  const char *colon = strrchr(hostport, ':');
  char host[256];
  if (!colon || (size_t)(colon - hostport) >= sizeof host)
    return kd_err_set(e, KD_ERR_INVALID, "--metrics-listen: expected HOST:PORT, found \"%s\"", hostport);
  memcpy(host, hostport, (size_t)(colon - hostport));
  host[colon - hostport] = 0;
  char *end;
  long p = strtol(colon + 1, &end, 10);
  if (!colon[1] || *end || p < 0 || p > 65535)
    return kd_err_set(e, KD_ERR_INVALID, "--metrics-listen: port must be 0..65535, found \"%s\"", colon + 1);
  struct sockaddr_in sa;
  memset(&sa, 0, sizeof sa);
  sa.sin_family = AF_INET;
  sa.sin_port = htons((uint16_t)p);
  if (strcmp(host, "localhost") == 0) snprintf(host, sizeof host, "127.0.0.1");
  if (inet_pton(AF_INET, host[0] ? host : "0.0.0.0", &sa.sin_addr) != 1)
    return kd_err_set(e, KD_ERR_INVALID, "--metrics-listen: expected an IPv4 address, found \"%s\"", host);
  m->httpd = MHD_start_daemon(MHD_USE_INTERNAL_POLLING_THREAD | MHD_USE_ERROR_LOG, 0, NULL, NULL,
                              on_http, m, MHD_OPTION_SOCK_ADDR, (struct sockaddr *)&sa,
                              MHD_OPTION_CONNECTION_LIMIT, (unsigned int)64,
                              MHD_OPTION_CONNECTION_TIMEOUT, (unsigned int)30, MHD_OPTION_END);
  if (!m->httpd)
    return kd_err_set(e, KD_ERR_IO, "--metrics-listen %s: cannot listen (port busy or address invalid)",
                      hostport);
  const union MHD_DaemonInfo *di = MHD_get_daemon_info(m->httpd, MHD_DAEMON_INFO_BIND_PORT);
  *port = di ? di->port : (int)p;
  return KD_OK;
}

void kd_metrics_stop(kd_metrics *m) {
  if (m && m->httpd) {
    MHD_stop_daemon(m->httpd);
    m->httpd = NULL;
  }
}
