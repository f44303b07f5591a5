/* server.c - the gRPC C core plumbing of kdrank-serve: one completion queue per worker thread,
 * requests pre-posted on each, calls handled inline on the thread that dequeued them, one reply
 * batch per call, a generic request so unknown methods get UNIMPLEMENTED, Health/Watch streams
 * polled by their worker, graceful drain.
 * All gRPC core calls of the server live here (the core API is pinned to Debian's 1.51). */
#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <grpc/byte_buffer.h>
#include <grpc/grpc_security.h>
#include <grpc/support/time.h>

#include "log.h"
#include "serve.h"

enum { CALL_IDLE = 0, CALL_POSTED = 1, CALL_REPLYING = 2, CALL_WATCHING = 3 };

/* Health/Watch: the stream's close notification (RECV_CLOSE_ON_SERVER) completes with tag c|1;
 * sends complete with tag c. Only the owning worker touches its watchers. */
#define WATCH_POLL_MS 100

/* Requests kept posted per worker for the cheap methods (Score uses cfg->prepost). */
#define KD_PREPOST_SMALL 2

uint64_t kd_now_ns(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

/* A context from the worker's free list, or a new one (grows to the steady-state need once). */
static struct kd_call *call_get(struct kd_worker *w) {
  struct kd_call *c = w->free_list;
  if (c) {
    w->free_list = c->next_free;
  } else {
    c = calloc(1, sizeof *c);
    if (!c) return NULL;
    c->w = w;
    c->next_all = w->all;
    w->all = c;
  }
  c->next_free = NULL;
  return c;
}

static void call_put(struct kd_worker *w, struct kd_call *c) {
  c->state = CALL_IDLE;
  c->next_free = w->free_list;
  w->free_list = c;
}

/* Releases everything a finished (or never started) call holds and returns it to the free list. */
static void call_finish(struct kd_worker *w, struct kd_call *c) {
  kd_rpc_release(&c->rpc, c->method == KD_M_UNKNOWN);
  call_put(w, c);
}

void kd_rpc_release(struct kd_rpc *r, int generic) {
  if (r->payload) grpc_byte_buffer_destroy(r->payload);
  if (r->resp) grpc_byte_buffer_destroy(r->resp);
  r->payload = r->resp = NULL;
  grpc_metadata_array_destroy(&r->md);
  if (generic) grpc_call_details_destroy(&r->details);
  if (r->have_details) grpc_slice_unref(r->status_details);
  r->have_details = 0;
  if (r->call) grpc_call_unref(r->call);
  r->call = NULL;
}

/* Posts one request for `method` on the worker's queue. Returns 0 or -1 (server shut down). */
static int call_post(struct kd_worker *w, int method) {
  struct kd_server *s = w->srv;
  struct kd_call *c = call_get(w);
  if (!c) return -1;
  c->method = method;
  c->state = CALL_POSTED;
  c->rpc.call = NULL;
  c->rpc.payload = c->rpc.resp = NULL;
  c->rpc.cancelled = 0;
  c->code = 0;
  c->series = NULL;
  grpc_metadata_array_init(&c->rpc.md);
  grpc_call_error err;
  switch (method) {
  case KD_M_SCORE:
  case KD_M_METADATA:
  case KD_M_CHECK:
  case KD_M_WATCH: {
    void *h = method == KD_M_SCORE      ? s->h_score
              : method == KD_M_METADATA ? s->h_metadata
              : method == KD_M_CHECK    ? s->h_check
                                        : s->h_watch;
    err = grpc_server_request_registered_call(s->server, h, &c->rpc.call, &c->rpc.deadline, &c->rpc.md,
                                              &c->rpc.payload, w->cq, w->cq, c);
    break;
  }
  default:
    grpc_call_details_init(&c->rpc.details);
    err = grpc_server_request_call(s->server, &c->rpc.call, &c->rpc.details, &c->rpc.md, w->cq, w->cq, c);
    break;
  }
  if (err != GRPC_CALL_OK) {
    call_finish(w, c);
    return -1;
  }
  return 0;
}

/* Sends the whole reply in one batch: initial metadata, the message (if any), the status, and
 * the close notification. The completion comes back to this worker with tag c. */
static void call_reply(struct kd_worker *w, struct kd_call *c, int code, const char *msg) {
  grpc_op ops[4];
  memset(ops, 0, sizeof ops);
  size_t n = 0;
  ops[n].op = GRPC_OP_SEND_INITIAL_METADATA;
  ops[n].data.send_initial_metadata.count = 0;
  n++;
  if (c->rpc.resp) {
    ops[n].op = GRPC_OP_SEND_MESSAGE;
    ops[n].data.send_message.send_message = c->rpc.resp;
    n++;
  }
  ops[n].op = GRPC_OP_SEND_STATUS_FROM_SERVER;
  ops[n].data.send_status_from_server.trailing_metadata_count = 0;
  ops[n].data.send_status_from_server.status = (grpc_status_code)code;
  if (code != GRPC_STATUS_OK && msg && msg[0]) {
    c->rpc.status_details = grpc_slice_from_copied_string(msg);
    c->rpc.have_details = 1;
    ops[n].data.send_status_from_server.status_details = &c->rpc.status_details;
  }
  n++;
  ops[n].op = GRPC_OP_RECV_CLOSE_ON_SERVER;
  ops[n].data.recv_close_on_server.cancelled = &c->rpc.cancelled;
  n++;
  c->code = code;
  c->state = CALL_REPLYING;
  c->t_reply = kd_now_ns();
  grpc_call_error err = grpc_call_start_batch(c->rpc.call, ops, n, c, NULL);
  if (err != GRPC_CALL_OK) {
    kd_log(KD_LOG_ERROR, "reply_failed", "worker=%u grpc_call_error=%d", w->id, (int)err);
    if (c->method != KD_M_WATCH) atomic_fetch_sub_explicit(&w->m->inflight, 1, memory_order_relaxed);
    call_finish(w, c);
  }
}

/* Sends on a Watch stream: initial metadata (first time), a status message (status >= 0) and, when
 * end, the final OK status. One batch in flight per stream. */
static void watch_send(struct kd_worker *w, struct kd_call *c, int status, int end) {
  grpc_op ops[3];
  memset(ops, 0, sizeof ops);
  size_t n = 0;
  if (!c->watch_started) {
    ops[n++].op = GRPC_OP_SEND_INITIAL_METADATA;
    c->watch_started = 1;
  }
  if (status >= 0) {
    c->rpc.resp = kd_health_message(status);
    ops[n].op = GRPC_OP_SEND_MESSAGE;
    ops[n].data.send_message.send_message = c->rpc.resp;
    n++;
    c->watch_last = status;
  }
  if (end) {
    ops[n].op = GRPC_OP_SEND_STATUS_FROM_SERVER;
    ops[n].data.send_status_from_server.status = GRPC_STATUS_OK;
    n++;
    c->watch_ending = 1;
  }
  if (n == 0) return;
  c->watch_sending = 1;
  if (grpc_call_start_batch(c->rpc.call, ops, n, c, NULL) != GRPC_CALL_OK) {
    kd_log(KD_LOG_ERROR, "watch_send_failed", "worker=%u", w->id);
    c->watch_sending = 0;
    c->watch_ending = 1;
    if (c->rpc.resp) grpc_byte_buffer_destroy(c->rpc.resp);
    c->rpc.resp = NULL;
    grpc_call_cancel(c->rpc.call, NULL);
  }
}

/* Pushes health changes to this worker's Watch streams, ends them when draining, and recycles
 * the ones that are closed with no send in flight. */
static void watch_poll(struct kd_worker *w) {
  struct kd_server *s = w->srv;
  int draining = atomic_load_explicit(&s->draining, memory_order_acquire);
  for (struct kd_call **pc = &w->watchers; *pc;) {
    struct kd_call *c = *pc;
    if (c->watch_closed && !c->watch_sending) {
      *pc = c->next_watch;
      kd_metrics_count(kd_metrics_series(w->m, -1, 0), KD_M_WATCH,
                       c->rpc.cancelled ? GRPC_STATUS_CANCELLED : GRPC_STATUS_OK);
      call_finish(w, c);
      continue;
    }
    pc = &c->next_watch;
    if (c->watch_sending || c->watch_ending || c->watch_closed) continue;
    int st = kd_health_status(s, c->watch_service);
    if (draining)
      watch_send(w, c, st != c->watch_last ? st : -1, 1);
    else if (st != c->watch_last)
      watch_send(w, c, st, 0);
  }
}

/* A Watch call arrived: decode the service, arm the close notification, send the first status. */
static void watch_start(struct kd_worker *w, struct kd_call *c, char *msg) {
  int code = kd_watch_decode(w, c, msg);
  kd_arena_reset(&w->arena);
  c->series = kd_metrics_series(w->m, -1, 0);
  if (code != GRPC_STATUS_OK) {
    call_reply(w, c, code, msg);
    return;
  }
  c->state = CALL_WATCHING;
  c->watch_last = -1;
  c->watch_started = c->watch_sending = c->watch_ending = c->watch_closed = 0;
  grpc_op op;
  memset(&op, 0, sizeof op);
  op.op = GRPC_OP_RECV_CLOSE_ON_SERVER;
  op.data.recv_close_on_server.cancelled = &c->rpc.cancelled;
  if (grpc_call_start_batch(c->rpc.call, &op, 1, (void *)((uintptr_t)c | 1), NULL) != GRPC_CALL_OK) {
    call_finish(w, c);
    return;
  }
  c->next_watch = w->watchers;
  w->watchers = c;
  watch_send(w, c, kd_health_status(w->srv, c->watch_service), 0);
}

/* A new call arrived on c: re-post a request for its method first (so the core always has one
 * to hand over), then handle it inline and reply. */
static void call_arrived(struct kd_worker *w, struct kd_call *c) {
  struct kd_server *s = w->srv;
  c->t_dequeue = kd_now_ns();
  if (!atomic_load_explicit(&s->draining, memory_order_acquire)) call_post(w, c->method);
  char msg[KD_SERVE_MSG_MAX];
  msg[0] = 0;
  if (c->method == KD_M_WATCH) { /* a stream: not an in-flight call */
    watch_start(w, c, msg);
    return;
  }
  atomic_store_explicit(&w->m->inflight,
                        atomic_load_explicit(&w->m->inflight, memory_order_relaxed) + 1,
                        memory_order_relaxed);
  int code;
  switch (c->method) {
  case KD_M_SCORE:
    code = kd_handle_score(w, c, &c->rpc.resp, msg);
    break;
  case KD_M_METADATA:
    code = kd_handle_metadata(w, c, &c->rpc.resp, msg);
    break;
  case KD_M_CHECK:
    code = kd_handle_check(w, c, &c->rpc.resp, msg);
    break;
  default:
    code = GRPC_STATUS_UNIMPLEMENTED;
    snprintf(msg, sizeof msg, "unknown method %.*s (kdrank-serve serves /kdrank.v1.Ranker/Score, "
             "/kdrank.v1.Ranker/GetModelMetadata, /grpc.health.v1.Health/Check and Watch)",
             (int)GRPC_SLICE_LENGTH(c->rpc.details.method), (const char *)GRPC_SLICE_START_PTR(c->rpc.details.method));
    break;
  }
  kd_arena_reset(&w->arena);
  if (!c->series) c->series = kd_metrics_series(w->m, -1, 0);
  if (code != GRPC_STATUS_OK)
    kd_log(KD_LOG_DEBUG, "call_error", "worker=%u method=%d code=%d msg=\"%s\"", w->id, c->method,
           code, msg);
  call_reply(w, c, code, msg);
}

/* The reply batch of c completed: account for it and recycle the context. */
static void call_replied(struct kd_worker *w, struct kd_call *c) {
  int code = c->code;
  if (c->rpc.cancelled) {
    gpr_timespec now = gpr_now(GPR_CLOCK_MONOTONIC);
    gpr_timespec dl = gpr_convert_clock_type(c->rpc.deadline, GPR_CLOCK_MONOTONIC);
    code = (c->method != KD_M_UNKNOWN && gpr_time_cmp(now, dl) >= 0) ? GRPC_STATUS_DEADLINE_EXCEEDED
                                                                      : GRPC_STATUS_CANCELLED;
  }
  kd_metrics_count(c->series, c->method, code);
  if (c->method == KD_M_SCORE && c->series->model >= 0) {
    uint64_t t = kd_now_ns();
    kd_metrics_observe(c->series, KD_H_TOTAL, t - c->t_dequeue);
    kd_metrics_observe(c->series, KD_H_REPLY, t - c->t_reply);
  }
  if (c->method != KD_M_WATCH)
    atomic_store_explicit(&w->m->inflight,
                          atomic_load_explicit(&w->m->inflight, memory_order_relaxed) - 1,
                          memory_order_relaxed);
  call_finish(w, c);
}

static void *worker_main(void *arg) {
  struct kd_worker *w = arg;
  for (;;) {
    gpr_timespec dl = w->watchers ? gpr_time_add(gpr_now(GPR_CLOCK_MONOTONIC),
                                                 gpr_time_from_millis(WATCH_POLL_MS, GPR_TIMESPAN))
                                  : gpr_inf_future(GPR_CLOCK_MONOTONIC);
    grpc_event ev = grpc_completion_queue_next(w->cq, dl, NULL);
    if (ev.type == GRPC_QUEUE_SHUTDOWN) break;
    if (ev.type == GRPC_OP_COMPLETE) {
      uintptr_t tag = (uintptr_t)ev.tag;
      struct kd_call *c = (struct kd_call *)(tag & ~(uintptr_t)1);
      if (tag & 1) {                      /* a Watch stream closed */
        c->watch_closed = 1;
      } else if (c->state == CALL_POSTED) {
        if (!ev.success) { /* the server is shutting down: this request will never be matched */
          call_finish(w, c);
          continue;
        }
        call_arrived(w, c);
      } else if (c->state == CALL_REPLYING) {
        call_replied(w, c);
      } else if (c->state == CALL_WATCHING) { /* a Watch send completed */
        c->watch_sending = 0;
        if (c->rpc.resp) grpc_byte_buffer_destroy(c->rpc.resp);
        c->rpc.resp = NULL;
        if (!ev.success) c->watch_ending = 1;
      }
    }
    if (w->watchers) watch_poll(w);
  }
  return NULL;
}

/* Reads a whole (small) file into a NUL-terminated malloc'd string. */
static char *read_file(const char *path, const char *flag, struct kd_err *e) {
  FILE *f = fopen(path, "rb");
  if (!f) {
    kd_err_set(e, KD_ERR_IO, "--%s %s: cannot open: %s", flag, path, strerror(errno));
    return NULL;
  }
  size_t cap = 8192, len = 0;
  char *buf = malloc(cap);
  while (buf) {
    size_t n = fread(buf + len, 1, cap - len - 1, f);
    len += n;
    if (len < cap - 1) break;
    char *t = cap < (1u << 24) ? realloc(buf, cap * 2) : NULL;
    if (!t) {
      free(buf);
      buf = NULL;
      break;
    }
    buf = t;
    cap *= 2;
  }
  fclose(f);
  if (!buf) {
    kd_err_set(e, KD_ERR_RANGE, "--%s %s: unreadable or larger than 16 MiB", flag, path);
    return NULL;
  }
  buf[len] = 0;
  return buf;
}

/* Builds the listening credentials from the TLS flags (plaintext when none). */
static grpc_server_credentials *make_creds(const struct kd_serve_config *cfg, struct kd_err *e) {
  if (!cfg->tls_cert[0] && !cfg->tls_key[0]) {
    if (cfg->tls_client_ca[0]) {
      kd_err_set(e, KD_ERR_INVALID, "--tls-client-ca needs --tls-cert and --tls-key");
      return NULL;
    }
    return grpc_insecure_server_credentials_create();
  }
  if (!cfg->tls_cert[0] || !cfg->tls_key[0]) {
    kd_err_set(e, KD_ERR_INVALID, "TLS needs both --tls-cert and --tls-key (found only %s)",
               cfg->tls_cert[0] ? "--tls-cert" : "--tls-key");
    return NULL;
  }
  grpc_server_credentials *creds = NULL;
  char *cert = read_file(cfg->tls_cert, "tls-cert", e);
  char *key = cert ? read_file(cfg->tls_key, "tls-key", e) : NULL;
  char *ca = key && cfg->tls_client_ca[0] ? read_file(cfg->tls_client_ca, "tls-client-ca", e) : NULL;
  if (cert && key && (ca || !cfg->tls_client_ca[0])) {
    grpc_ssl_pem_key_cert_pair pair = {.private_key = key, .cert_chain = cert};
    creds = grpc_ssl_server_credentials_create_ex(
        ca, &pair, 1,
        ca ? GRPC_SSL_REQUEST_AND_REQUIRE_CLIENT_CERTIFICATE_AND_VERIFY
           : GRPC_SSL_DONT_REQUEST_CLIENT_CERTIFICATE,
        NULL);
    if (!creds)
      kd_err_set(e, KD_ERR_INVALID, "--tls-cert %s / --tls-key %s: gRPC rejected the PEM pair",
                 cfg->tls_cert, cfg->tls_key);
  }
  free(cert);
  free(key);
  free(ca);
  return creds;
}

static void workers_free(struct kd_server *s) {
  for (uint32_t i = 0; i < s->n_workers; i++) {
    struct kd_worker *w = &s->workers[i];
    for (struct kd_call *c = w->all, *n; c; c = n) {
      n = c->next_all;
      free(c);
    }
    w->all = w->free_list = NULL;
    if (w->cq) grpc_completion_queue_destroy(w->cq);
    kd_arena_free(&w->arena);
    free(w->out);
  }
  free(s->workers);
}

struct kd_server *kd_server_start(const struct kd_serve_config *cfg, kd_registry *reg,
                                  kd_metrics *metrics, const char *default_model, int n_workers,
                                  struct kd_err *e) {
  struct kd_server *s = calloc(1, sizeof *s);
  if (!s) {
    kd_err_set(e, KD_ERR_NOMEM, "server: out of memory");
    return NULL;
  }
  s->cfg = cfg;
  s->reg = reg;
  s->metrics = metrics;
  s->default_model = default_model;
  s->n_workers = (uint32_t)n_workers;
  atomic_init(&s->draining, 0);

  grpc_arg args[7];
  memset(args, 0, sizeof args);
  const char *names[7] = {GRPC_ARG_ALLOW_REUSEPORT, GRPC_ARG_MAX_RECEIVE_MESSAGE_LENGTH,
                          GRPC_ARG_MAX_SEND_MESSAGE_LENGTH, GRPC_ARG_KEEPALIVE_TIME_MS,
                          GRPC_ARG_KEEPALIVE_TIMEOUT_MS,
                          GRPC_ARG_HTTP2_MIN_RECV_PING_INTERVAL_WITHOUT_DATA_MS,
                          GRPC_ARG_KEEPALIVE_PERMIT_WITHOUT_CALLS};
  long long vals[7] = {0, cfg->max_message_bytes, cfg->max_message_bytes, cfg->keepalive_time_ms,
                       cfg->keepalive_timeout_ms, cfg->keepalive_min_ping_ms, 1};
  for (int i = 0; i < 7; i++) {
    args[i].type = GRPC_ARG_INTEGER;
    args[i].key = (char *)names[i];
    args[i].value.integer = (int)vals[i];
  }
  grpc_channel_args ch_args = {.num_args = 7, .args = args};
  s->server = grpc_server_create(&ch_args, NULL);
  s->h_score = grpc_server_register_method(s->server, "/kdrank.v1.Ranker/Score", NULL,
                                           GRPC_SRM_PAYLOAD_READ_INITIAL_BYTE_BUFFER, 0);
  s->h_metadata = grpc_server_register_method(s->server, "/kdrank.v1.Ranker/GetModelMetadata", NULL,
                                              GRPC_SRM_PAYLOAD_READ_INITIAL_BYTE_BUFFER, 0);
  s->h_check = grpc_server_register_method(s->server, "/grpc.health.v1.Health/Check", NULL,
                                           GRPC_SRM_PAYLOAD_READ_INITIAL_BYTE_BUFFER, 0);
  s->h_watch = grpc_server_register_method(s->server, "/grpc.health.v1.Health/Watch", NULL,
                                           GRPC_SRM_PAYLOAD_READ_INITIAL_BYTE_BUFFER, 0);

  s->workers = calloc(s->n_workers, sizeof *s->workers);
  if (!s->workers) {
    kd_err_set(e, KD_ERR_NOMEM, "server: out of memory for %u workers", s->n_workers);
    goto fail_server;
  }
  /* Arena: keep 4 MiB across calls; allow what the largest message can decode to (varint ids
   * grow up to 8x) plus slack. */
  size_t retain = 4u << 20, cap = (size_t)cfg->max_message_bytes * 9 + (16u << 20);
  for (uint32_t i = 0; i < s->n_workers; i++) {
    struct kd_worker *w = &s->workers[i];
    w->id = i;
    w->srv = s;
    w->m = kd_metrics_worker(metrics, i);
    w->out = malloc((size_t)cfg->max_candidates * KD_MAX_TASKS * sizeof *w->out);
    if (!w->out || kd_arena_init(&w->arena, retain, cap) != 0) {
      kd_err_set(e, KD_ERR_NOMEM, "server: out of memory for worker %u buffers", i);
      goto fail_workers;
    }
    w->cq = grpc_completion_queue_create_for_next(NULL);
    grpc_server_register_completion_queue(s->server, w->cq, NULL);
  }

  grpc_server_credentials *creds = make_creds(cfg, e);
  if (!creds) goto fail_workers;
  s->port = grpc_server_add_http2_port(s->server, cfg->listen, creds);
  grpc_server_credentials_release(creds);
  if (s->port <= 0) {
    kd_err_set(e, KD_ERR_IO, "--listen %s: cannot bind (port in use, or not a valid HOST:PORT)",
               cfg->listen);
    goto fail_workers;
  }
  grpc_server_start(s->server);
  for (uint32_t i = 0; i < s->n_workers; i++) {
    struct kd_worker *w = &s->workers[i];
    int ok = 1;
    for (long long k = 0; k < cfg->prepost && ok; k++) ok = call_post(w, KD_M_SCORE) == 0;
    for (int k = 0; k < KD_PREPOST_SMALL && ok; k++)
      ok = call_post(w, KD_M_METADATA) == 0 && call_post(w, KD_M_CHECK) == 0;
    ok = ok && call_post(w, KD_M_WATCH) == 0 && call_post(w, KD_M_UNKNOWN) == 0;
    w->started = ok && pthread_create(&w->thread, NULL, worker_main, w) == 0;
    if (!w->started) {
      /* Fatal at start-up: shut down what exists (threads started so far are joined). */
      kd_err_set(e, KD_ERR_NOMEM, "server: cannot start worker %u", i);
      kd_server_stop(s, 0);
      return NULL;
    }
  }
  return s;

fail_workers:
  /* Not started: shut down the (unstarted) server so its queues can be destroyed. */
  {
    grpc_completion_queue *scq = grpc_completion_queue_create_for_pluck(NULL);
    grpc_server_shutdown_and_notify(s->server, scq, s);
    grpc_completion_queue_pluck(scq, s, gpr_inf_future(GPR_CLOCK_REALTIME), NULL);
    grpc_server_destroy(s->server);
    grpc_completion_queue_shutdown(scq);
    grpc_completion_queue_destroy(scq);
    for (uint32_t i = 0; i < s->n_workers; i++) {
      struct kd_worker *w = &s->workers[i];
      if (!w->cq) continue;
      grpc_completion_queue_shutdown(w->cq);
      while (grpc_completion_queue_next(w->cq, gpr_inf_future(GPR_CLOCK_MONOTONIC), NULL).type !=
             GRPC_QUEUE_SHUTDOWN) {
      }
    }
    workers_free(s);
    free(s);
    return NULL;
  }
fail_server:
  grpc_server_destroy(s->server);
  free(s);
  return NULL;
}

int kd_server_stop(struct kd_server *s, int64_t timeout_ms) {
  atomic_store_explicit(&s->draining, 1, memory_order_release);
  grpc_completion_queue *scq = grpc_completion_queue_create_for_pluck(NULL);
  uint64_t t0 = kd_now_ns();
  grpc_server_shutdown_and_notify(s->server, scq, s);
  kd_log(KD_LOG_INFO, "draining", "accepting=no timeout_ms=%lld", (long long)timeout_ms);
  gpr_timespec dl = gpr_time_add(gpr_now(GPR_CLOCK_MONOTONIC), gpr_time_from_millis(timeout_ms, GPR_TIMESPAN));
  grpc_event ev = grpc_completion_queue_pluck(scq, s, dl, NULL);
  int timed_out = ev.type != GRPC_OP_COMPLETE;
  if (timed_out) {
    kd_log(KD_LOG_WARN, "drain_timeout", "timeout_ms=%lld action=cancel_all_calls", (long long)timeout_ms);
    grpc_server_cancel_all_calls(s->server);
    grpc_completion_queue_pluck(scq, s, gpr_inf_future(GPR_CLOCK_MONOTONIC), NULL);
  }
  kd_log(KD_LOG_INFO, "drained", "ms=%.1f cancelled_calls=%s", (double)(kd_now_ns() - t0) / 1e6,
         timed_out ? "yes" : "no");
  grpc_server_destroy(s->server);
  grpc_completion_queue_shutdown(scq);
  grpc_completion_queue_destroy(scq);
  for (uint32_t i = 0; i < s->n_workers; i++) grpc_completion_queue_shutdown(s->workers[i].cq);
  for (uint32_t i = 0; i < s->n_workers; i++) {
    struct kd_worker *w = &s->workers[i];
    if (w->started) {
      pthread_join(w->thread, NULL);
    } else { /* never started (start-up failure): drain its queue here */
      grpc_event ev;
      while ((ev = grpc_completion_queue_next(w->cq, gpr_inf_future(GPR_CLOCK_MONOTONIC), NULL)).type !=
             GRPC_QUEUE_SHUTDOWN)
        if (ev.type == GRPC_OP_COMPLETE) call_finish(w, ev.tag);
    }
  }
  workers_free(s);
  free(s);
  return timed_out;
}
