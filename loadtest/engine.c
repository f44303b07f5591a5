/* engine.c - kdrank-load's run engine on the gRPC C core: C channels (each its own connection),
 * T I/O threads each draining its own completion queue, and a schedule thread that starts calls
 * at their intended times (open loop) — or the I/O threads restarting each finished call (closed
 * loop). Latency is taken from the INTENDED send time (coordinated omission corrected): when the
 * server stalls, every call that should have been sent during the stall counts its wait. */
#include "load.h"

#include <grpc/byte_buffer.h>
#include <grpc/byte_buffer_reader.h>
#include <grpc/grpc.h>
#include <grpc/grpc_security.h>
#include <grpc/support/time.h>
#include <errno.h>
#include <math.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <time.h>

#include "kdrank.pb-c.h"

#define ARENA_BYTES (8u << 20) /* response decode arena per I/O thread (max message 4 MiB) */

int kd_load_errf(struct kd_load_err *e, const char *fmt, ...) {
  if (e) {
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(e->msg, sizeof(e->msg), fmt, ap);
    va_end(ap);
  }
  return -1;
}

int64_t kd_load_now_ns(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

const char *kd_load_status_name(int code) {
  static const char *names[KD_LOAD_N_STATUS] = {
      "OK", "CANCELLED", "UNKNOWN", "INVALID_ARGUMENT", "DEADLINE_EXCEEDED", "NOT_FOUND",
      "ALREADY_EXISTS", "PERMISSION_DENIED", "RESOURCE_EXHAUSTED", "FAILED_PRECONDITION",
      "ABORTED", "OUT_OF_RANGE", "UNIMPLEMENTED", "INTERNAL", "UNAVAILABLE", "DATA_LOSS",
      "UNAUTHENTICATED"};
  return code >= 0 && code < KD_LOAD_N_STATUS ? names[code] : "?";
}

/* One call in flight. Slots are reused: open loop through a free stack, closed loop in place. */
struct slot {
  uint32_t idx, chan, body;
  int in_use;                /* guarded by run->mu (open loop) */
  grpc_call *call;
  grpc_metadata_array md_init, md_trail;
  grpc_byte_buffer *send, *recv;
  grpc_status_code status;
  grpc_slice details;
  int64_t intended_ns, sent_ns;
  uint8_t key_buf[11];
  /* release when a call starts, acquire when it completes: the gRPC core hands the slot from the
   * starting thread to the I/O thread, and this makes that edge explicit (and visible to TSan) */
  _Atomic uint32_t armed;
};

struct version_acc {
  int64_t version;
  char label[32];
  uint64_t ok;
  int64_t first_ns;
  struct kd_hist *lat;
};

/* Per I/O thread: its queue and everything it records (merged after the run, no locks). */
struct io_thread {
  struct kd_load_run *run;
  pthread_t tid;
  grpc_completion_queue *cq;
  uint64_t rng;
  uint8_t *arena;
  size_t arena_used;
  uint64_t ok, by_status[KD_LOAD_N_STATUS], bad, warm;
  struct kd_hist *lat, *service, *lat_in, *lat_out;
  struct kd_load_interval *iv; /* [run->n_iv] */
  struct version_acc ver[KD_LOAD_MAX_VERSIONS];
  uint32_t n_ver;
  uint64_t other_ver;
};

struct kd_load_run {
  struct kd_load_params p;
  const struct kd_load_pool *pool;
  uint32_t n_chan, n_io, n_slots, n_iv;
  grpc_channel **chan;
  void **method; /* registered Score per channel */
  struct io_thread *io;
  struct slot *slots;
  /* open loop free stack */
  pthread_mutex_t mu;
  pthread_cond_t cv;
  uint32_t *free_stack, n_free;
  _Atomic int64_t start_ns, end_ns; /* schedule end */
  _Atomic uint64_t issued;
  _Atomic uint32_t inflight;
  _Atomic uint32_t max_inflight_seen;
  _Atomic int stopping;
  uint64_t rng; /* schedule thread's */
  /* events and windows (mark) */
  pthread_mutex_t ev_mu;
  struct kd_load_event ev[KD_LOAD_MAX_EVENTS];
  uint32_t n_ev;
  _Atomic uint32_t n_win;
  int64_t win_start[KD_LOAD_MAX_EVENTS];
  uint64_t *asked; /* [n_iv], schedule thread only */
};

static uint64_t splitmix(uint64_t *s) {
  uint64_t z = (*s += 0x9E3779B97F4A7C15ull);
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return z ^ (z >> 31);
}
static double unif01(uint64_t *s) { return ((double)(splitmix(s) >> 11) + 0.5) / 9007199254740992.0; }

static struct kd_hist *hist3(void) {
  return kd_hist_new((struct kd_hist_params){KD_LOAD_LAT_LOW, KD_LOAD_LAT_HIGH, 3});
}
static struct kd_hist *hist2(void) {
  return kd_hist_new((struct kd_hist_params){KD_LOAD_LAT_LOW, KD_LOAD_LAT_HIGH, 2});
}

/* ---- protobuf-c arena allocator: response decoding allocates nothing per call ---- */
static void *arena_alloc(void *ad, size_t n) {
  struct io_thread *t = ad;
  size_t at = (t->arena_used + 15) & ~(size_t)15;
  if (at + n > ARENA_BYTES) return NULL;
  t->arena_used = at + n;
  return t->arena + at;
}
static void arena_free(void *ad, void *p) { (void)ad; (void)p; }

/* Routing key field (2, varint) prepended to the pooled body: protobuf accepts fields in any
 * order, so one shared body serves every key. Returns the bytes written. */
static size_t put_key(uint8_t *b, uint64_t key) {
  size_t n = 0;
  b[n++] = 0x10;
  do {
    uint8_t c = key & 0x7f;
    key >>= 7;
    b[n++] = c | (key ? 0x80 : 0);
  } while (key);
  return n;
}

/* Starts the call in slot s (intended time already set). Returns 0, or -1 if the core refused. */
static int call_start(struct kd_load_run *r, struct slot *s, uint64_t *rng) {
  const struct kd_load_pool *pool = r->pool;
  s->body = pool->n > 1 ? (uint32_t)(splitmix(rng) % pool->n) : 0;
  const struct kd_load_body *b = &pool->bodies[s->body];
  uint64_t key = 0;
  if (r->p.keys) {
    uint64_t k = splitmix(rng) % r->p.keys;
    key = splitmix(&k); /* a hashed id: the same key space value always gives the same key */
  }
  size_t kn = put_key(s->key_buf, key);
  grpc_slice sl[2] = {grpc_slice_from_copied_buffer((const char *)s->key_buf, kn),
                      grpc_slice_from_static_buffer(b->data, b->len)};
  s->send = grpc_raw_byte_buffer_create(sl, 2);
  grpc_slice_unref(sl[0]);
  grpc_slice_unref(sl[1]);
  s->recv = NULL;
  grpc_metadata_array_init(&s->md_init);
  grpc_metadata_array_init(&s->md_trail);
  s->details = grpc_empty_slice();
  s->status = GRPC_STATUS_UNKNOWN;
  struct io_thread *t = &r->io[s->chan % r->n_io];
  gpr_timespec dl = gpr_time_add(gpr_now(GPR_CLOCK_MONOTONIC),
                                 gpr_time_from_nanos((int64_t)(r->p.deadline_s * 1e9), GPR_TIMESPAN));
  grpc_call *c = grpc_channel_create_registered_call(r->chan[s->chan], NULL, GRPC_PROPAGATE_DEFAULTS,
                                                     t->cq, r->method[s->chan], dl, NULL);
  pthread_mutex_lock(&r->mu); /* the drain may cancel s->call: it reads it under mu */
  s->call = c;
  pthread_mutex_unlock(&r->mu);
  grpc_op ops[6];
  memset(ops, 0, sizeof(ops));
  ops[0].op = GRPC_OP_SEND_INITIAL_METADATA;
  ops[1].op = GRPC_OP_SEND_MESSAGE;
  ops[1].data.send_message.send_message = s->send;
  ops[2].op = GRPC_OP_SEND_CLOSE_FROM_CLIENT;
  ops[3].op = GRPC_OP_RECV_INITIAL_METADATA;
  ops[3].data.recv_initial_metadata.recv_initial_metadata = &s->md_init;
  ops[4].op = GRPC_OP_RECV_MESSAGE;
  ops[4].data.recv_message.recv_message = &s->recv;
  ops[5].op = GRPC_OP_RECV_STATUS_ON_CLIENT;
  ops[5].data.recv_status_on_client.trailing_metadata = &s->md_trail;
  ops[5].data.recv_status_on_client.status = &s->status;
  ops[5].data.recv_status_on_client.status_details = &s->details;
  uint32_t n = atomic_fetch_add(&r->inflight, 1) + 1;
  uint32_t m = atomic_load(&r->max_inflight_seen);
  while (n > m && !atomic_compare_exchange_weak(&r->max_inflight_seen, &m, n)) {}
  atomic_fetch_add(&r->issued, 1);
  s->sent_ns = kd_load_now_ns();
  atomic_store_explicit(&s->armed, 1, memory_order_release);
  if (grpc_call_start_batch(c, ops, 6, s, NULL) != GRPC_CALL_OK) {
    atomic_fetch_sub(&r->inflight, 1);
    pthread_mutex_lock(&r->mu);
    grpc_call_unref(s->call);
    s->call = NULL;
    pthread_mutex_unlock(&r->mu);
    grpc_byte_buffer_destroy(s->send);
    grpc_metadata_array_destroy(&s->md_init);
    grpc_metadata_array_destroy(&s->md_trail);
    return -1;
  }
  return 0;
}

static int in_window(struct kd_load_run *r, int64_t from, int64_t to) {
  uint32_t n = atomic_load_explicit(&r->n_win, memory_order_acquire);
  int64_t w = (int64_t)(r->p.window_s * 1e9);
  for (uint32_t i = 0; i < n; i++)
    if (from < r->win_start[i] + w && to >= r->win_start[i]) return 1;
  return 0;
}

static void record_version(struct io_thread *t, const Kdrank__V1__ScoreResponse *resp, int64_t now,
                           uint64_t lat) {
  const char *label = resp->version_label ? resp->version_label : "";
  for (uint32_t i = 0; i < t->n_ver; i++) {
    struct version_acc *v = &t->ver[i];
    if (v->version == resp->version && strcmp(v->label, label) == 0) {
      v->ok++;
      kd_hist_record(v->lat, lat);
      return;
    }
  }
  if (t->n_ver == KD_LOAD_MAX_VERSIONS) { t->other_ver++; return; }
  struct version_acc *v = &t->ver[t->n_ver];
  v->lat = hist3();
  if (!v->lat) { t->other_ver++; return; }
  t->n_ver++;
  v->version = resp->version;
  snprintf(v->label, sizeof(v->label), "%s", label);
  v->ok = 1;
  v->first_ns = now;
  kd_hist_record(v->lat, lat);
}

/* Handles a finished call on its I/O thread; releases everything the call owned. */
static void call_done(struct io_thread *t, struct slot *s) {
  struct kd_load_run *r = t->run;
  (void)atomic_load_explicit(&s->armed, memory_order_acquire);
  int64_t now = kd_load_now_ns(), start = atomic_load(&r->start_ns);
  uint64_t lat = (uint64_t)(now - s->intended_ns), svc = (uint64_t)(now - s->sent_ns);
  int measured = s->intended_ns >= start + (int64_t)(r->p.warmup_s * 1e9);
  int code = (int)s->status;
  Kdrank__V1__ScoreResponse *resp = NULL;
  if (code == GRPC_STATUS_OK) {
    ProtobufCAllocator al = {arena_alloc, arena_free, t};
    t->arena_used = 0;
    if (s->recv) {
      grpc_byte_buffer_reader rd;
      if (grpc_byte_buffer_reader_init(&rd, s->recv)) {
        grpc_slice one;
        if (s->recv->type == GRPC_BB_RAW && s->recv->data.raw.slice_buffer.count == 1 &&
            s->recv->data.raw.compression == GRPC_COMPRESS_NONE) {
          one = grpc_slice_ref(s->recv->data.raw.slice_buffer.slices[0]);
        } else {
          one = grpc_byte_buffer_reader_readall(&rd);
        }
        resp = kdrank__v1__score_response__unpack(&al, GRPC_SLICE_LENGTH(one), GRPC_SLICE_START_PTR(one));
        grpc_slice_unref(one);
        grpc_byte_buffer_reader_destroy(&rd);
      }
    } else {
      resp = kdrank__v1__score_response__unpack(&al, 0, NULL); /* empty message */
    }
    uint32_t n_cand = r->pool->bodies[s->body].n_cand;
    if (!resp || resp->n_tasks == 0 || resp->n_scores != (size_t)n_cand * resp->n_tasks) code = -1;
  }
  uint32_t iv = (uint32_t)((s->intended_ns - start) / 1000000000);
  if (iv >= r->n_iv) iv = r->n_iv - 1;
  if (code == GRPC_STATUS_OK) {
    t->iv[iv].ok++;
    if (!t->iv[iv].lat) t->iv[iv].lat = hist2();
    if (t->iv[iv].lat) kd_hist_record(t->iv[iv].lat, lat);
  } else {
    t->iv[iv].err++;
  }
  if (!measured) {
    t->warm++;
  } else if (code == GRPC_STATUS_OK) {
    t->ok++;
    kd_hist_record(t->lat, lat);
    kd_hist_record(t->service, svc);
    kd_hist_record(in_window(r, s->intended_ns, now) ? t->lat_in : t->lat_out, lat);
    record_version(t, resp, now, lat);
  } else if (code < 0) {
    t->bad++;
  } else {
    t->by_status[code < KD_LOAD_N_STATUS ? code : GRPC_STATUS_UNKNOWN]++;
  }
  grpc_byte_buffer_destroy(s->send);
  if (s->recv) grpc_byte_buffer_destroy(s->recv);
  grpc_metadata_array_destroy(&s->md_init);
  grpc_metadata_array_destroy(&s->md_trail);
  grpc_slice_unref(s->details);
  pthread_mutex_lock(&r->mu);
  grpc_call_unref(s->call);
  s->call = NULL;
  pthread_mutex_unlock(&r->mu);
  atomic_fetch_sub(&r->inflight, 1);

  if (r->p.closed) {
    /* closed loop: the next call starts as soon as this one ends (intended = now); after an
     * UNAVAILABLE (no server) wait 5 ms rather than spin on calls that fail at once */
    if (s->status == GRPC_STATUS_UNAVAILABLE) {
      struct timespec ts = {0, 5000000};
      nanosleep(&ts, NULL);
    }
    if (!atomic_load(&r->stopping) && kd_load_now_ns() < atomic_load(&r->end_ns) &&
        atomic_load(&r->issued) < r->p.max_requests) {
      s->intended_ns = kd_load_now_ns();
      if (call_start(r, s, &t->rng) == 0) return;
    }
    pthread_mutex_lock(&r->mu);
    s->in_use = 0;
    pthread_cond_broadcast(&r->cv);
    pthread_mutex_unlock(&r->mu);
    return;
  }
  pthread_mutex_lock(&r->mu);
  s->in_use = 0;
  r->free_stack[r->n_free++] = s->idx;
  pthread_cond_broadcast(&r->cv);
  pthread_mutex_unlock(&r->mu);
}

static void *io_main(void *arg) {
  struct io_thread *t = arg;
  for (;;) {
    grpc_event ev = grpc_completion_queue_next(t->cq, gpr_inf_future(GPR_CLOCK_MONOTONIC), NULL);
    if (ev.type == GRPC_QUEUE_SHUTDOWN) break;
    if (ev.type == GRPC_OP_COMPLETE) call_done(t, ev.tag);
  }
  return NULL;
}

double kd_load_run_elapsed(const struct kd_load_run *r) {
  int64_t s = atomic_load(&((struct kd_load_run *)r)->start_ns);
  return s ? (double)(kd_load_now_ns() - s) / 1e9 : 0.0;
}

void kd_load_run_mark(struct kd_load_run *r, const char *what, int window) {
  int64_t now = kd_load_now_ns(), s = atomic_load(&r->start_ns);
  pthread_mutex_lock(&r->ev_mu);
  if (r->n_ev < KD_LOAD_MAX_EVENTS) {
    struct kd_load_event *e = &r->ev[r->n_ev++];
    e->t_s = s ? (double)(now - s) / 1e9 : 0.0;
    e->window = window;
    snprintf(e->what, sizeof(e->what), "%s", what);
    uint32_t nw = atomic_load(&r->n_win);
    if (window && nw < KD_LOAD_MAX_EVENTS) {
      r->win_start[nw] = now;
      atomic_store_explicit(&r->n_win, nw + 1, memory_order_release);
    }
  }
  pthread_mutex_unlock(&r->ev_mu);
}

void kd_load_run_free(struct kd_load_run *r) {
  if (!r) return;
  for (uint32_t i = 0; i < r->n_io && r->io; i++) {
    struct io_thread *t = &r->io[i];
    if (t->cq) grpc_completion_queue_destroy(t->cq);
    free(t->arena);
    kd_hist_free(t->lat);
    kd_hist_free(t->service);
    kd_hist_free(t->lat_in);
    kd_hist_free(t->lat_out);
    for (uint32_t k = 0; t->iv && k < r->n_iv; k++) kd_hist_free(t->iv[k].lat);
    free(t->iv);
    for (uint32_t k = 0; k < t->n_ver; k++) kd_hist_free(t->ver[k].lat);
  }
  for (uint32_t i = 0; r->chan && i < r->n_chan; i++)
    if (r->chan[i]) grpc_channel_destroy(r->chan[i]);
  free(r->chan);
  free(r->method);
  free(r->io);
  free(r->slots);
  free(r->free_stack);
  free(r->asked);
  pthread_mutex_destroy(&r->mu);
  pthread_cond_destroy(&r->cv);
  pthread_mutex_destroy(&r->ev_mu);
  free(r);
  grpc_shutdown();
}

struct kd_load_run *kd_load_run_new(struct kd_load_params p, const struct kd_load_pool *pool,
                                    struct kd_load_err *e) {
  if (!p.target || !*p.target) { kd_load_errf(e, "--target: expected an address, found none"); return NULL; }
  if (p.connections < 1 || p.connections > 1024) { kd_load_errf(e, "--connections: expected 1..1024, found %u", p.connections); return NULL; }
  if (p.threads < 1 || p.threads > 64) { kd_load_errf(e, "--threads: expected 1..64, found %u", p.threads); return NULL; }
  if (!p.closed && !(p.rate > 0 && p.rate <= 1e7)) { kd_load_errf(e, "--rate: expected (0, 1e7] requests/s, found %g", p.rate); return NULL; }
  if (!(p.duration_s > 0 && p.duration_s <= 86400)) { kd_load_errf(e, "--duration: expected (0, 86400] s, found %g", p.duration_s); return NULL; }
  if (!(p.warmup_s >= 0 && p.warmup_s < p.duration_s)) { kd_load_errf(e, "--warmup: expected [0, duration), found %g", p.warmup_s); return NULL; }
  if (!(p.deadline_s > 0 && p.deadline_s <= 60)) { kd_load_errf(e, "--deadline-ms: expected (0, 60000], found %g", p.deadline_s * 1e3); return NULL; }
  if (p.max_requests < 1) { kd_load_errf(e, "--max-requests: expected >= 1, found 0"); return NULL; }
  if (p.max_inflight < 1 || p.max_inflight > 1000000) { kd_load_errf(e, "--max-inflight: expected 1..1000000, found %u", p.max_inflight); return NULL; }
  if (p.closed > 100000) { kd_load_errf(e, "--closed: expected 0..100000, found %u", p.closed); return NULL; }
  if (!pool || pool->n < 1) { kd_load_errf(e, "request pool is empty"); return NULL; }
  if (p.threads > p.connections) p.threads = p.connections;

  grpc_init();
  struct kd_load_run *r = calloc(1, sizeof(*r));
  if (!r) { grpc_shutdown(); kd_load_errf(e, "out of memory"); return NULL; }
  r->p = p;
  r->pool = pool;
  r->n_chan = p.connections;
  r->n_io = p.threads;
  r->n_slots = p.closed ? p.closed : p.max_inflight;
  r->n_iv = (uint32_t)ceil(p.duration_s) + 1;
  r->rng = p.seed ^ 0xA5A5A5A5DEADBEEFull;
  pthread_mutex_init(&r->mu, NULL);
  pthread_cond_init(&r->cv, NULL);
  pthread_mutex_init(&r->ev_mu, NULL);
  r->chan = calloc(r->n_chan, sizeof(*r->chan));
  r->method = calloc(r->n_chan, sizeof(*r->method));
  r->io = calloc(r->n_io, sizeof(*r->io));
  r->slots = calloc(r->n_slots, sizeof(*r->slots));
  r->free_stack = calloc(r->n_slots, sizeof(*r->free_stack));
  r->asked = calloc(r->n_iv, sizeof(*r->asked));
  if (!r->chan || !r->method || !r->io || !r->slots || !r->free_stack || !r->asked) goto oom;
  for (uint32_t i = 0; i < r->n_slots; i++) {
    r->slots[i].idx = i;
    r->slots[i].chan = i % r->n_chan;
    r->free_stack[i] = r->n_slots - 1 - i;
  }
  r->n_free = r->n_slots;
  for (uint32_t i = 0; i < r->n_io; i++) {
    struct io_thread *t = &r->io[i];
    t->run = r;
    t->rng = p.seed + 0x1000 * (i + 1);
    t->arena = malloc(ARENA_BYTES);
    t->lat = hist3();
    t->service = hist3();
    t->lat_in = hist3();
    t->lat_out = hist3();
    t->iv = calloc(r->n_iv, sizeof(*t->iv));
    if (!t->arena || !t->lat || !t->service || !t->lat_in || !t->lat_out || !t->iv) goto oom;
    t->cq = grpc_completion_queue_create_for_next(NULL);
  }
  /* one subchannel pool per channel: each channel is its own TCP connection */
  grpc_arg args[2];
  args[0].type = GRPC_ARG_INTEGER;
  args[0].key = GRPC_ARG_USE_LOCAL_SUBCHANNEL_POOL;
  args[0].value.integer = 1;
  args[1].type = GRPC_ARG_INTEGER;
  args[1].key = GRPC_ARG_MAX_RECEIVE_MESSAGE_LENGTH;
  args[1].value.integer = 4 << 20;
  grpc_channel_args ca = {2, args};
  grpc_channel_credentials *cred = grpc_insecure_credentials_create();
  for (uint32_t i = 0; i < r->n_chan; i++) {
    r->chan[i] = grpc_channel_create(p.target, cred, &ca);
    r->method[i] = grpc_channel_register_call(r->chan[i], "/kdrank.v1.Ranker/Score", NULL, NULL);
  }
  grpc_channel_credentials_release(cred);
  return r;
oom:
  kd_load_errf(e, "out of memory setting up %u connections / %u in flight", p.connections, r->n_slots);
  kd_load_run_free(r);
  return NULL;
}

static void sleep_until(int64_t t_ns) {
  struct timespec ts = {.tv_sec = t_ns / 1000000000, .tv_nsec = t_ns % 1000000000};
  while (clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, &ts, NULL) == EINTR) {}
}

/* The open-loop schedule: intended times t_k; waits for the in-flight cap without moving them. */
static void schedule_open(struct kd_load_run *r, uint64_t *cap_hits, double *cap_wait_s, uint64_t *unsent) {
  int64_t start = atomic_load(&r->start_ns), end = atomic_load(&r->end_ns);
  double t = 0.0; /* seconds since start of the next intended send */
  for (;;) {
    int64_t intended = start + (int64_t)(t * 1e9);
    if (intended >= end || atomic_load(&r->issued) >= r->p.max_requests) break;
    if (kd_load_now_ns() < intended) sleep_until(intended);
    pthread_mutex_lock(&r->mu);
    if (r->n_free == 0) {
      int64_t w0 = kd_load_now_ns();
      (*cap_hits)++;
      while (r->n_free == 0) {
        struct timespec ts;
        clock_gettime(CLOCK_REALTIME, &ts);
        ts.tv_nsec += 10000000;
        if (ts.tv_nsec >= 1000000000) { ts.tv_sec++; ts.tv_nsec -= 1000000000; }
        pthread_cond_timedwait(&r->cv, &r->mu, &ts);
        if (kd_load_now_ns() >= end) break;
      }
      *cap_wait_s += (double)(kd_load_now_ns() - w0) / 1e9;
      if (r->n_free == 0) {
        pthread_mutex_unlock(&r->mu);
        /* the schedule ended while waiting for the cap: count what was never sent */
        for (; intended < end && atomic_load(&r->issued) + *unsent < r->p.max_requests; (*unsent)++) {
          t += r->p.poisson ? -log(unif01(&r->rng)) / r->p.rate : 1.0 / r->p.rate;
          intended = start + (int64_t)(t * 1e9);
        }
        break;
      }
    }
    struct slot *s = &r->slots[r->free_stack[--r->n_free]];
    s->in_use = 1;
    pthread_mutex_unlock(&r->mu);
    s->intended_ns = intended;
    uint32_t iv = (uint32_t)((intended - start) / 1000000000);
    r->asked[iv < r->n_iv ? iv : r->n_iv - 1]++;
    if (call_start(r, s, &r->rng) != 0) {
      pthread_mutex_lock(&r->mu);
      s->in_use = 0;
      r->free_stack[r->n_free++] = s->idx;
      pthread_mutex_unlock(&r->mu);
    }
    t += r->p.poisson ? -log(unif01(&r->rng)) / r->p.rate : 1.0 / r->p.rate;
  }
}

static void merge_result(struct kd_load_run *r, struct kd_load_result *res) {
  for (uint32_t i = 0; i < r->n_io; i++) {
    struct io_thread *t = &r->io[i];
    res->ok += t->ok;
    res->warmup_calls += t->warm;
    res->bad_response += t->bad;
    res->errors += t->bad;
    for (int c = 0; c < KD_LOAD_N_STATUS; c++) {
      res->by_status[c] += t->by_status[c];
      res->errors += t->by_status[c];
    }
    kd_hist_merge(res->lat, t->lat);
    kd_hist_merge(res->service, t->service);
    kd_hist_merge(res->lat_in, t->lat_in);
    kd_hist_merge(res->lat_out, t->lat_out);
    for (uint32_t k = 0; k < r->n_iv; k++) {
      res->iv[k].ok += t->iv[k].ok;
      res->iv[k].err += t->iv[k].err;
      if (t->iv[k].lat) {
        if (!res->iv[k].lat) res->iv[k].lat = hist2();
        if (res->iv[k].lat) kd_hist_merge(res->iv[k].lat, t->iv[k].lat);
      }
    }
    res->other_versions += t->other_ver;
    for (uint32_t k = 0; k < t->n_ver; k++) {
      struct version_acc *v = &t->ver[k];
      struct kd_load_version *d = NULL;
      for (uint32_t j = 0; j < res->n_versions; j++)
        if (res->versions[j].version == v->version && strcmp(res->versions[j].label, v->label) == 0)
          d = &res->versions[j];
      if (!d) {
        if (res->n_versions == KD_LOAD_MAX_VERSIONS) { res->other_versions += v->ok; continue; }
        d = &res->versions[res->n_versions++];
        d->version = v->version;
        snprintf(d->label, sizeof(d->label), "%s", v->label);
        d->first_seen_s = 1e300;
        d->lat = hist3();
      }
      d->ok += v->ok;
      double fs = (double)(v->first_ns - atomic_load(&r->start_ns)) / 1e9;
      if (fs < d->first_seen_s) d->first_seen_s = fs;
      if (d->lat) kd_hist_merge(d->lat, v->lat);
    }
  }
  for (uint32_t k = 0; k < r->n_iv; k++) res->iv[k].asked = r->asked[k];
  /* versions by first appearance; a new version's first answer is an event on the plots */
  for (uint32_t i = 1; i < res->n_versions; i++)
    for (uint32_t j = i; j > 0 && res->versions[j].first_seen_s < res->versions[j - 1].first_seen_s; j--) {
      struct kd_load_version tmp = res->versions[j];
      res->versions[j] = res->versions[j - 1];
      res->versions[j - 1] = tmp;
    }
  pthread_mutex_lock(&r->ev_mu);
  for (uint32_t i = 0; i < r->n_ev; i++) res->events[res->n_events++] = r->ev[i];
  pthread_mutex_unlock(&r->ev_mu);
  /* the first version seen is the starting point, not an event */
  for (uint32_t i = 1; i < res->n_versions && res->n_events < KD_LOAD_MAX_EVENTS; i++) {
    struct kd_load_event *ev = &res->events[res->n_events++];
    ev->t_s = res->versions[i].first_seen_s;
    ev->window = 0;
    snprintf(ev->what, sizeof(ev->what), "first answer from v%lld%s%s", (long long)res->versions[i].version,
             res->versions[i].label[0] ? " " : "", res->versions[i].label);
  }
}

int kd_load_run_go(struct kd_load_run *r, struct kd_load_result *res, struct kd_load_err *e) {
  memset(res, 0, sizeof(*res));
  res->lat = hist3();
  res->service = hist3();
  res->lat_in = hist3();
  res->lat_out = hist3();
  res->iv = calloc(r->n_iv, sizeof(*res->iv));
  res->n_intervals = r->n_iv;
  if (!res->lat || !res->service || !res->lat_in || !res->lat_out || !res->iv) {
    kd_load_result_free(res);
    return kd_load_errf(e, "out of memory");
  }
  prctl(PR_SET_TIMERSLACK, 1UL, 0, 0, 0); /* the schedule thread wakes within a few us */
  uint32_t started = 0;
  for (; started < r->n_io; started++)
    if (pthread_create(&r->io[started].tid, NULL, io_main, &r->io[started]) != 0) break;
  /* connect every channel first (up to 3 s; the I/O threads' queues drive the
   * connection attempts) so connection set-up is not in the schedule */
  int64_t conn_limit = kd_load_now_ns() + 3000000000ll;
  for (uint32_t i = 0; i < r->n_chan; i++) {
    while (grpc_channel_check_connectivity_state(r->chan[i], 1) != GRPC_CHANNEL_READY &&
           kd_load_now_ns() < conn_limit) {
      struct timespec ts = {0, 2000000};
      nanosleep(&ts, NULL);
    }
  }
  int64_t start = kd_load_now_ns();
  atomic_store(&r->start_ns, start);
  atomic_store(&r->end_ns, start + (int64_t)(r->p.duration_s * 1e9));
  uint64_t cap_hits = 0, unsent = 0;
  double cap_wait = 0;
  if (started < r->n_io) {
    atomic_store(&r->stopping, 1);
  } else if (r->p.closed) {
    for (uint32_t i = 0; i < r->n_slots; i++) {
      struct slot *s = &r->slots[i];
      pthread_mutex_lock(&r->mu);
      s->in_use = 1;
      pthread_mutex_unlock(&r->mu);
      s->intended_ns = kd_load_now_ns();
      if (call_start(r, s, &r->io[s->chan % r->n_io].rng) != 0) {
        pthread_mutex_lock(&r->mu);
        s->in_use = 0;
        pthread_mutex_unlock(&r->mu);
      }
    }
    sleep_until(atomic_load(&r->end_ns));
  } else {
    schedule_open(r, &cap_hits, &cap_wait, &unsent);
  }
  atomic_store(&r->stopping, 1);
  /* drain: every call ends by its deadline; past deadline + 1 s cancel what is left */
  int64_t limit = kd_load_now_ns() + (int64_t)((r->p.deadline_s + 1.0) * 1e9);
  pthread_mutex_lock(&r->mu);
  for (;;) {
    uint32_t busy = 0;
    for (uint32_t i = 0; i < r->n_slots; i++) busy += r->slots[i].in_use != 0;
    if (!busy) break;
    if (kd_load_now_ns() >= limit) {
      for (uint32_t i = 0; i < r->n_slots; i++)
        if (r->slots[i].in_use && r->slots[i].call) {
          grpc_call_cancel(r->slots[i].call, NULL);
          res->cancelled_at_end++;
        }
      limit = INT64_MAX;
    }
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    ts.tv_nsec += 20000000;
    if (ts.tv_nsec >= 1000000000) { ts.tv_sec++; ts.tv_nsec -= 1000000000; }
    pthread_cond_timedwait(&r->cv, &r->mu, &ts);
  }
  pthread_mutex_unlock(&r->mu);
  double elapsed = (double)(kd_load_now_ns() - start) / 1e9;
  for (uint32_t i = 0; i < r->n_io; i++) grpc_completion_queue_shutdown(r->io[i].cq);
  for (uint32_t i = 0; i < started; i++) pthread_join(r->io[i].tid, NULL);
  if (started < r->n_io) {
    kd_load_result_free(res);
    return kd_load_errf(e, "could not start I/O thread %u", started);
  }
  merge_result(r, res);
  res->closed = r->p.closed ? 1 : 0;
  res->asked_rate = r->p.closed ? 0 : r->p.rate;
  res->duration_s = r->p.duration_s;
  res->warmup_s = r->p.warmup_s;
  res->measured_s = r->p.duration_s - r->p.warmup_s;
  res->elapsed_s = elapsed;
  res->issued = atomic_load(&r->issued);
  res->cap_hits = cap_hits;
  res->cap_wait_s = cap_wait;
  res->unsent = unsent;
  res->max_seen_inflight = atomic_load(&r->max_inflight_seen);
  return 0;
}

void kd_load_result_free(struct kd_load_result *res) {
  kd_hist_free(res->lat);
  kd_hist_free(res->service);
  kd_hist_free(res->lat_in);
  kd_hist_free(res->lat_out);
  for (uint32_t i = 0; res->iv && i < res->n_intervals; i++) kd_hist_free(res->iv[i].lat);
  free(res->iv);
  for (uint32_t i = 0; i < res->n_versions; i++) kd_hist_free(res->versions[i].lat);
  memset(res, 0, sizeof(*res));
}
