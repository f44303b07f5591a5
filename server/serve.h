/* serve.h - kdrank-serve internals shared by server.c (gRPC plumbing), handlers.c (Score,
 * GetModelMetadata, Health) and main.c. Private to server/. */
#ifndef KD_SERVE_H
#define KD_SERVE_H

#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>

#include <grpc/grpc.h>

#include "arena.h"
#include "config.h"
#include "kdrank_loader.h"
#include "rpc.h"
#include "metrics.h"

#define KD_SERVE_MSG_MAX 1024 /* status message bytes */

struct kd_server;

/* One call context: posted as a request, then handled inline, then replied to. Reused. */
struct kd_call {
  struct kd_worker *w;
  int method;                 /* enum kd_method */
  int state;                  /* CALL_* in server.c */
  struct kd_rpc rpc;
  int code;                   /* status sent */
  struct kd_series *series;   /* metrics series of the call */
  uint64_t t_dequeue;         /* ns, CLOCK_MONOTONIC */
  uint64_t t_reply;           /* ns: reply batch handed to gRPC */
  struct kd_call *next_free, *next_all;
  /* Health/Watch streams (worker-owned; see server.c). */
  char watch_service[128];
  int watch_last;             /* last status sent, -1 none */
  int watch_started, watch_sending, watch_ending, watch_closed;
  struct kd_call *next_watch;
};

/* One worker thread: its completion queue, arena, output buffer and metrics. */
struct kd_worker {
  uint32_t id;
  struct kd_server *srv;
  grpc_completion_queue *cq;
  pthread_t thread;
  int started;                /* thread running */
  struct kd_arena arena;
  float *out;                 /* max_candidates x KD_MAX_TASKS scores */
  struct kd_wmetrics *m;
  struct kd_call *free_list, *all;
  struct kd_call *watchers;   /* open Health/Watch streams of this worker */
};

struct kd_server {
  const struct kd_serve_config *cfg;
  kd_registry *reg;
  kd_metrics *metrics;
  const char *default_model;  /* NULL: none */
  grpc_server *server;
  void *h_score, *h_metadata, *h_check, *h_watch; /* registered method handles */
  uint32_t n_workers;
  struct kd_worker *workers;
  atomic_int draining;        /* set on SIGTERM: no more re-posting; health NOT_SERVING */
  int port;
};

/* Monotonic clock in ns. */
uint64_t kd_now_ns(void);

/* Handlers (handlers.c). Each reads c->payload, fills *resp (NULL on error) and returns the gRPC
 * status code, with msg set for a non-OK code. They use only the worker's arena and buffers. */
int kd_handle_score(struct kd_worker *w, struct kd_call *c, grpc_byte_buffer **resp, char *msg);
int kd_handle_metadata(struct kd_worker *w, struct kd_call *c, grpc_byte_buffer **resp, char *msg);
int kd_handle_check(struct kd_worker *w, struct kd_call *c, grpc_byte_buffer **resp, char *msg);
/* Health of a service name: grpc.health.v1 SERVING (1), NOT_SERVING (2) or SERVICE_UNKNOWN (3). */
int kd_health_status(struct kd_server *s, const char *service);
/* Decodes a Watch request's service name into c->watch_service. Returns a gRPC code. */
int kd_watch_decode(struct kd_worker *w, struct kd_call *c, char *msg);
/* A packed HealthCheckResponse with this status. */
grpc_byte_buffer *kd_health_message(int status);

/* Server lifecycle (server.c). Start: create, bind, spawn workers; *port gets the bound port. */
struct kd_server *kd_server_start(const struct kd_serve_config *cfg, kd_registry *reg,
                                  kd_metrics *metrics, const char *default_model, int n_workers,
                                  struct kd_err *e);
/* Graceful drain: stop accepting, wait up to timeout_ms for in-flight calls, then cancel the
 * rest, stop the workers and free everything. Returns the number of calls cancelled (0 or 1:
 * whether the timeout hit). */
int kd_server_stop(struct kd_server *s, int64_t timeout_ms);

#endif
