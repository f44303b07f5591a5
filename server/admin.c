/* admin.c - the kdrank.v1.Admin service (ListModels, SetCanary, Promote, Rollback, Reload) on
 * its own gRPC server, address and thread: never on the serving workers' queues, so an admin
 * action that loads a version (seconds for a large checkpoint) never delays a Score call. Every
 * call must carry `authorization: Bearer <token>` (the token file's first line), else
 * UNAUTHENTICATED; every call is logged (event=admin_call) with its outcome. */
#include "admin.h"
#include "rpc.h"

#include <errno.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <grpc/byte_buffer.h>
#include <grpc/byte_buffer_reader.h>
#include <grpc/grpc_security.h>
#include <grpc/support/alloc.h>
#include <grpc/support/time.h>

#include "kdrank.pb-c.h"
#include "log.h"

enum { A_LIST = 0, A_CANARY, A_PROMOTE, A_ROLLBACK, A_RELOAD, A_UNKNOWN, A_COUNT };
static const char *const k_paths[A_UNKNOWN] = {
    "/kdrank.v1.Admin/ListModels", "/kdrank.v1.Admin/SetCanary", "/kdrank.v1.Admin/Promote",
    "/kdrank.v1.Admin/Rollback", "/kdrank.v1.Admin/Reload"};
static const char *const k_names[A_COUNT] = {"ListModels", "SetCanary", "Promote",
                                             "Rollback",   "Reload",    "unknown"};

enum { AC_POSTED = 1, AC_REPLYING = 2 };

struct acall {
  int method, state;
  struct kd_rpc rpc;
};

struct kd_admin {
  kd_registry *reg;
  const char *default_model;
  char token[512];
  grpc_server *server;
  grpc_completion_queue *cq;
  void *h[A_UNKNOWN];
  pthread_t thread;
  int started;
  atomic_int stopping;
  int port;
  struct acall calls[A_COUNT];
};

static int post(struct kd_admin *a, struct acall *c) {
  memset(c, 0, sizeof *c);
  c->method = (int)(c - a->calls);
  c->state = AC_POSTED;
  grpc_metadata_array_init(&c->rpc.md);
  grpc_call_error err;
  if (c->method < A_UNKNOWN) {
    err = grpc_server_request_registered_call(a->server, a->h[c->method], &c->rpc.call, &c->rpc.deadline,
                                              &c->rpc.md, &c->rpc.payload, a->cq, a->cq, c);
  } else {
    grpc_call_details_init(&c->rpc.details);
    err = grpc_server_request_call(a->server, &c->rpc.call, &c->rpc.details, &c->rpc.md, a->cq, a->cq, c);
  }
  return err == GRPC_CALL_OK ? 0 : -1;
}

static void finish(struct acall *c) {
  kd_rpc_release(&c->rpc, c->method == A_UNKNOWN);
  c->state = 0;
}

/* Constant-time comparison of the authorization header with "Bearer <token>". */
static int authorized(const struct kd_admin *a, const grpc_metadata_array *md) {
  char want[600];
  int wn = snprintf(want, sizeof want, "Bearer %s", a->token);
  for (size_t i = 0; i < md->count; i++) {
    const grpc_slice *k = &md->metadata[i].key, *v = &md->metadata[i].value;
    if (GRPC_SLICE_LENGTH(*k) != 13 || memcmp(GRPC_SLICE_START_PTR(*k), "authorization", 13) != 0) continue;
    size_t vn = GRPC_SLICE_LENGTH(*v);
    const unsigned char *p = GRPC_SLICE_START_PTR(*v);
    unsigned diff = vn != (size_t)wn;
    for (size_t j = 0; j < (size_t)wn; j++) diff |= (unsigned)(want[j] ^ (j < vn ? p[j] : 0));
    return diff == 0;
  }
  return 0;
}

/* Reads the whole payload into a malloc'd buffer (admin calls are rare and small). */
static uint8_t *payload_copy(grpc_byte_buffer *bb, size_t *len) {
  *len = 0;
  if (!bb) return calloc(1, 1);
  grpc_byte_buffer_reader rd;
  if (!grpc_byte_buffer_reader_init(&rd, bb)) return NULL;
  grpc_slice all = grpc_byte_buffer_reader_readall(&rd);
  grpc_byte_buffer_reader_destroy(&rd);
  *len = GRPC_SLICE_LENGTH(all);
  uint8_t *buf = malloc(*len + 1);
  if (buf) memcpy(buf, GRPC_SLICE_START_PTR(all), *len);
  grpc_slice_unref(all);
  return buf;
}

static grpc_byte_buffer *pack(const ProtobufCMessage *m) {
  size_t n = protobuf_c_message_get_packed_size(m);
  grpc_slice s = grpc_slice_malloc(n);
  protobuf_c_message_pack(m, GRPC_SLICE_START_PTR(s));
  grpc_byte_buffer *bb = grpc_raw_byte_buffer_create(&s, 1);
  grpc_slice_unref(s);
  return bb;
}

/* Storage for one ModelStatus message. */
struct status_buf {
  Kdrank__V1__ModelStatus st;
  struct kd_version_info vi[32];
  Kdrank__V1__VersionInfo v[32];
  Kdrank__V1__VersionInfo *vp[32];
};

static void status_fill(struct kd_admin *a, uint32_t mi, struct status_buf *b) {
  Kdrank__V1__ModelStatus init = KDRANK__V1__MODEL_STATUS__INIT;
  b->st = init;
  struct kd_model_status ms;
  kd_registry_status(a->reg, mi, &ms);
  b->st.model = (char *)kd_registry_model_name(a->reg, mi);
  b->st.stable_version = ms.stable_version;
  b->st.canary_version = ms.canary_version;
  b->st.canary_weight = ms.canary_weight;
  b->st.previous_stable_version = ms.previous_stable;
  uint32_t n = kd_registry_versions(a->reg, mi, b->vi, 32);
  for (uint32_t i = 0; i < n; i++) {
    Kdrank__V1__VersionInfo x = KDRANK__V1__VERSION_INFO__INIT;
    x.version = b->vi[i].version;
    x.state = b->vi[i].state;
    x.label = b->vi[i].label;
    x.error = b->vi[i].error;
    x.loaded_unix_ms = b->vi[i].loaded_unix_ms;
    x.checkpoint_crc = b->vi[i].checkpoint_crc;
    x.state_unix_ms = b->vi[i].state_unix_ms;
    x.loading_unix_ms = b->vi[i].loading_unix_ms;
    x.available_unix_ms = b->vi[i].available_unix_ms;
    x.failed_unix_ms = b->vi[i].failed_unix_ms;
    x.unloading_unix_ms = b->vi[i].unloading_unix_ms;
    b->v[i] = x;
    b->vp[i] = &b->v[i];
  }
  b->st.n_versions = n;
  b->st.versions = b->vp;
}

static int code_of(int kd) {
  switch (kd) {
  case KD_ERR_NOT_FOUND: return GRPC_STATUS_NOT_FOUND;
  case KD_ERR_INVALID: return GRPC_STATUS_INVALID_ARGUMENT;
  case KD_REG_PRECONDITION: return GRPC_STATUS_FAILED_PRECONDITION;
  default: return GRPC_STATUS_INTERNAL;
  }
}

/* Handles one authorised call; fills c->rpc.resp; returns the status code (msg for errors) and a
 * short description of the action for the log. */
static int handle(struct kd_admin *a, struct acall *c, char *msg, size_t mcap, char *what, size_t wcap) {
  size_t len;
  uint8_t *data = payload_copy(c->rpc.payload, &len);
  if (!data) {
    snprintf(msg, mcap, "request: unreadable payload");
    return GRPC_STATUS_INVALID_ARGUMENT;
  }
  int code = GRPC_STATUS_OK, rc = KD_OK;
  struct kd_err e = {0};
  const char *model = NULL;
  ProtobufCMessage *req = NULL;
  switch (c->method) {
  case A_LIST: req = (ProtobufCMessage *)kdrank__v1__list_models_request__unpack(NULL, len, data); break;
  case A_CANARY: req = (ProtobufCMessage *)kdrank__v1__set_canary_request__unpack(NULL, len, data); break;
  default: req = (ProtobufCMessage *)kdrank__v1__model_request__unpack(NULL, len, data); break;
  }
  free(data);
  if (!req) {
    snprintf(msg, mcap, "request: %zu bytes are not a valid %s request", len, k_names[c->method]);
    return GRPC_STATUS_INVALID_ARGUMENT;
  }
  if (c->method == A_LIST) {
    uint32_t nm = kd_registry_n_models(a->reg);
    struct status_buf *bufs = calloc(nm + 1, sizeof *bufs);
    Kdrank__V1__ModelStatus **sp = calloc(nm + 1, sizeof *sp);
    if (!bufs || !sp) {
      snprintf(msg, mcap, "out of memory");
      code = GRPC_STATUS_RESOURCE_EXHAUSTED;
    } else {
      for (uint32_t i = 0; i < nm; i++) {
        status_fill(a, i, &bufs[i]);
        sp[i] = &bufs[i].st;
      }
      Kdrank__V1__ListModelsResponse out = KDRANK__V1__LIST_MODELS_RESPONSE__INIT;
      out.n_models = nm;
      out.models = sp;
      c->rpc.resp = pack(&out.base);
      snprintf(what, wcap, "models=%u", nm);
    }
    free(bufs);
    free(sp);
    protobuf_c_message_free_unpacked(req, NULL);
    return code;
  }
  if (c->method == A_CANARY) {
    Kdrank__V1__SetCanaryRequest *r = (Kdrank__V1__SetCanaryRequest *)req;
    model = r->model && r->model[0] ? r->model : a->default_model;
    snprintf(what, wcap, "model=%s version=%lld weight=%g", model ? model : "", (long long)r->version, r->weight);
    rc = kd_registry_set_canary(a->reg, model, r->version, r->weight, &e);
  } else {
    Kdrank__V1__ModelRequest *r = (Kdrank__V1__ModelRequest *)req;
    model = r->model && r->model[0] ? r->model : (c->method == A_RELOAD ? NULL : a->default_model);
    snprintf(what, wcap, "model=%s", model ? model : "*");
    if (c->method == A_PROMOTE) rc = kd_registry_promote(a->reg, model, &e);
    else if (c->method == A_ROLLBACK) rc = kd_registry_rollback(a->reg, model, &e);
    else rc = kd_registry_reload(a->reg, model, &e);
  }
  if (rc != KD_OK) {
    snprintf(msg, mcap, "%s", e.msg);
    code = code_of(rc);
  } else {
    int mi = model ? kd_registry_find(a->reg, model) : (a->default_model ? kd_registry_find(a->reg, a->default_model) : 0);
    if (mi < 0 || (uint32_t)mi >= kd_registry_n_models(a->reg)) {
      Kdrank__V1__ModelStatus empty = KDRANK__V1__MODEL_STATUS__INIT;
      c->rpc.resp = pack(&empty.base);
    } else {
      struct status_buf *b = calloc(1, sizeof *b);
      if (b) {
        status_fill(a, (uint32_t)mi, b);
        c->rpc.resp = pack(&b->st.base);
        free(b);
      } else {
        snprintf(msg, mcap, "out of memory");
        code = GRPC_STATUS_RESOURCE_EXHAUSTED;
      }
    }
  }
  protobuf_c_message_free_unpacked(req, NULL);
  return code;
}

static void reply(struct acall *c, int code, const char *msg) {
  grpc_op ops[4];
  memset(ops, 0, sizeof ops);
  size_t n = 0;
  ops[n++].op = GRPC_OP_SEND_INITIAL_METADATA;
  if (c->rpc.resp) {
    ops[n].op = GRPC_OP_SEND_MESSAGE;
    ops[n].data.send_message.send_message = c->rpc.resp;
    n++;
  }
  ops[n].op = GRPC_OP_SEND_STATUS_FROM_SERVER;
  ops[n].data.send_status_from_server.status = (grpc_status_code)code;
  if (code != GRPC_STATUS_OK && msg[0]) {
    c->rpc.status_details = grpc_slice_from_copied_string(msg);
    c->rpc.have_details = 1;
    ops[n].data.send_status_from_server.status_details = &c->rpc.status_details;
  }
  n++;
  ops[n].op = GRPC_OP_RECV_CLOSE_ON_SERVER;
  ops[n].data.recv_close_on_server.cancelled = &c->rpc.cancelled;
  n++;
  c->state = AC_REPLYING;
  if (grpc_call_start_batch(c->rpc.call, ops, n, c, NULL) != GRPC_CALL_OK) {
    kd_log(KD_LOG_ERROR, "admin_reply_failed", "method=%s", k_names[c->method]);
    finish(c); /* this context is not re-posted (the core refused the batch) */
  }
}

static void arrived(struct kd_admin *a, struct acall *c) {
  char msg[1024] = "", what[600] = "";
  int code;
  if (!authorized(a, &c->rpc.md)) {
    code = GRPC_STATUS_UNAUTHENTICATED;
    snprintf(msg, sizeof msg, "kdrank.v1.Admin needs metadata authorization: Bearer <token> "
             "with the token of --admin-token-file");
  } else if (c->method == A_UNKNOWN) {
    code = GRPC_STATUS_UNIMPLEMENTED;
    snprintf(msg, sizeof msg, "unknown method %.*s on the admin address (kdrank.v1.Admin: ListModels, "
             "SetCanary, Promote, Rollback, Reload)",
             (int)GRPC_SLICE_LENGTH(c->rpc.details.method), (const char *)GRPC_SLICE_START_PTR(c->rpc.details.method));
  } else {
    code = handle(a, c, msg, sizeof msg, what, sizeof what);
  }
  static const char *const codes[17] = {"OK", "CANCELLED", "UNKNOWN", "INVALID_ARGUMENT",
      "DEADLINE_EXCEEDED", "NOT_FOUND", "ALREADY_EXISTS", "PERMISSION_DENIED", "RESOURCE_EXHAUSTED",
      "FAILED_PRECONDITION", "ABORTED", "OUT_OF_RANGE", "UNIMPLEMENTED", "INTERNAL", "UNAVAILABLE",
      "DATA_LOSS", "UNAUTHENTICATED"};
  char *peer = grpc_call_get_peer(c->rpc.call);
  kd_log(code == GRPC_STATUS_OK ? KD_LOG_INFO : KD_LOG_WARN, "admin_call",
         "method=%s %s peer=%s code=%s%s%s%s", k_names[c->method], what, peer ? peer : "",
         codes[code >= 0 && code < 17 ? code : 2], msg[0] ? " error=\"" : "", msg, msg[0] ? "\"" : "");
  gpr_free(peer);
  reply(c, code, msg);
}

static void *admin_main(void *arg) {
  struct kd_admin *a = arg;
  for (;;) {
    grpc_event ev = grpc_completion_queue_next(a->cq, gpr_inf_future(GPR_CLOCK_MONOTONIC), NULL);
    if (ev.type == GRPC_QUEUE_SHUTDOWN) break;
    if (ev.type != GRPC_OP_COMPLETE || !ev.tag) continue;
    struct acall *c = ev.tag;
    if (c->state == AC_POSTED) {
      if (!ev.success) {
        finish(c);
        continue;
      }
      arrived(a, c);
    } else if (c->state == AC_REPLYING) {
      finish(c);
      if (!atomic_load(&a->stopping)) post(a, c);
    }
  }
  return NULL;
}

/* Reads the token: the file's first line, trimmed; it must not be empty. */
static int read_token(const char *path, char *out, size_t cap, struct kd_err *e) {
  FILE *f = fopen(path, "r");
  if (!f) return kd_err_set(e, KD_ERR_IO, "--admin-token-file %s: cannot open: %s", path, strerror(errno));
  char line[1024] = "";
  char *ok = fgets(line, sizeof line, f);
  fclose(f);
  size_t n = ok ? strlen(line) : 0;
  while (n && (line[n - 1] == '\n' || line[n - 1] == '\r' || line[n - 1] == ' ' || line[n - 1] == '\t')) line[--n] = 0;
  char *s = line;
  while (*s == ' ' || *s == '\t') s++;
  n = strlen(s);
  if (n == 0 || n >= cap)
    return kd_err_set(e, KD_ERR_INVALID, "--admin-token-file %s: expected a token of 1..%zu bytes on the first line, found %zu",
                      path, cap - 1, n);
  for (size_t i = 0; i < n; i++)
    if ((unsigned char)s[i] < 0x21 || (unsigned char)s[i] > 0x7e)
      return kd_err_set(e, KD_ERR_INVALID, "--admin-token-file %s: the token must be printable ASCII without spaces (byte %zu)",
                        path, i);
  memcpy(out, s, n + 1);
  return KD_OK;
}

struct kd_admin *kd_admin_start(kd_registry *reg, const char *listen, const char *token_file,
                                const char *default_model, int *port, struct kd_err *e) {
  struct kd_admin *a = calloc(1, sizeof *a);
  if (!a) {
    kd_err_set(e, KD_ERR_NOMEM, "admin: out of memory");
    return NULL;
  }
  a->reg = reg;
  a->default_model = default_model;
  atomic_init(&a->stopping, 0);
  if (read_token(token_file, a->token, sizeof a->token, e) != KD_OK) {
    free(a);
    return NULL;
  }
  grpc_arg arg = {.type = GRPC_ARG_INTEGER, .key = (char *)GRPC_ARG_ALLOW_REUSEPORT, .value.integer = 0};
  grpc_channel_args args = {.num_args = 1, .args = &arg};
  a->server = grpc_server_create(&args, NULL);
  for (int i = 0; i < A_UNKNOWN; i++)
    a->h[i] = grpc_server_register_method(a->server, k_paths[i], NULL, GRPC_SRM_PAYLOAD_READ_INITIAL_BYTE_BUFFER, 0);
  a->cq = grpc_completion_queue_create_for_next(NULL);
  grpc_server_register_completion_queue(a->server, a->cq, NULL);
  grpc_server_credentials *creds = grpc_insecure_server_credentials_create();
  a->port = grpc_server_add_http2_port(a->server, listen, creds);
  grpc_server_credentials_release(creds);
  if (a->port <= 0) {
    kd_err_set(e, KD_ERR_IO, "--admin-listen %s: cannot bind (in use, or not HOST:PORT / unix:PATH)", listen);
    grpc_server_destroy(a->server);
    grpc_completion_queue_shutdown(a->cq);
    while (grpc_completion_queue_next(a->cq, gpr_inf_future(GPR_CLOCK_MONOTONIC), NULL).type != GRPC_QUEUE_SHUTDOWN) {
    }
    grpc_completion_queue_destroy(a->cq);
    free(a);
    return NULL;
  }
  grpc_server_start(a->server);
  for (int i = 0; i < A_COUNT; i++) post(a, &a->calls[i]);
  a->started = pthread_create(&a->thread, NULL, admin_main, a) == 0;
  *port = a->port;
  if (!a->started) {
    kd_admin_stop(a);
    kd_err_set(e, KD_ERR_NOMEM, "admin: cannot start its thread");
    return NULL;
  }
  return a;
}

void kd_admin_stop(struct kd_admin *a) {
  if (!a) return;
  atomic_store(&a->stopping, 1);
  grpc_completion_queue *scq = grpc_completion_queue_create_for_pluck(NULL);
  grpc_server_shutdown_and_notify(a->server, scq, a);
  gpr_timespec dl = gpr_time_add(gpr_now(GPR_CLOCK_MONOTONIC), gpr_time_from_millis(2000, GPR_TIMESPAN));
  if (grpc_completion_queue_pluck(scq, a, dl, NULL).type != GRPC_OP_COMPLETE) {
    grpc_server_cancel_all_calls(a->server);
    grpc_completion_queue_pluck(scq, a, gpr_inf_future(GPR_CLOCK_MONOTONIC), NULL);
  }
  grpc_server_destroy(a->server);
  grpc_completion_queue_shutdown(scq);
  grpc_completion_queue_destroy(scq);
  grpc_completion_queue_shutdown(a->cq);
  if (a->started) {
    pthread_join(a->thread, NULL);
  } else {
    grpc_event ev;
    while ((ev = grpc_completion_queue_next(a->cq, gpr_inf_future(GPR_CLOCK_MONOTONIC), NULL)).type != GRPC_QUEUE_SHUTDOWN)
      if (ev.type == GRPC_OP_COMPLETE && ev.tag) finish(ev.tag);
  }
  for (int i = 0; i < A_COUNT; i++)
    if (a->calls[i].state) finish(&a->calls[i]);
  grpc_completion_queue_destroy(a->cq);
  free(a);
}
