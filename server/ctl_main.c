/* ctl_main.c - kdrank-ctl: drives kdrank-serve's kdrank.v1.Admin service (a gRPC C core client).
 *   kdrank-ctl --addr HOST:PORT|unix:PATH --token-file FILE <command>
 *   list | canary MODEL VERSION WEIGHT | promote MODEL | rollback MODEL | reload [MODEL]
 * Prints each model's serving state (stable, canary, weight) and version records, one key=value
 * line each. Exit codes: 0 ok, 1 the call failed (status and message printed), 2 bad usage. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <grpc/byte_buffer.h>
#include <grpc/byte_buffer_reader.h>
#include "client.h"
#include <grpc/grpc.h>
#include <grpc/grpc_security.h>
#include <grpc/support/time.h>

#include "kdrank.pb-c.h"

static void usage(FILE *f) {
  fprintf(f,
          "Usage: kdrank-ctl --addr HOST:PORT|unix:PATH --token-file FILE [--timeout-ms N] COMMAND\n"
          "Drives kdrank-serve's admin service (kdrank-serve --admin-listen / --admin-token-file).\n"
          "Commands:\n"
          "  list                              models, stable/canary/weight, versions and states\n"
          "  canary MODEL VERSION WEIGHT       set the canary (VERSION 0: keep it, change WEIGHT in [0,1])\n"
          "  promote MODEL                     the canary becomes stable\n"
          "  rollback MODEL                    drop the canary, else return stable to the previous version\n"
          "  reload [MODEL]                    rescan the repository now (every model when none given)\n"
          "The address and token file may also come from KDRANK_ADMIN_ADDR / KDRANK_ADMIN_TOKEN_FILE.\n");
}

static void print_status(const Kdrank__V1__ModelStatus *s) {
  printf("model=%s stable=%lld canary=%lld canary_weight=%g previous_stable=%lld\n", s->model,
         (long long)s->stable_version, (long long)s->canary_version, s->canary_weight,
         (long long)s->previous_stable_version);
  for (size_t i = 0; i < s->n_versions; i++) {
    const Kdrank__V1__VersionInfo *v = s->versions[i];
    printf("  version=%lld state=%s label=%s since_unix_ms=%lld crc=%08x%s%s%s\n", (long long)v->version,
           v->state, v->label[0] ? v->label : "-", (long long)v->state_unix_ms, v->checkpoint_crc,
           v->error[0] ? " error=\"" : "", v->error, v->error[0] ? "\"" : "");
  }
}

/* One unary call; returns the status code, *resp the reply bytes (caller frees), msg the details. */
static int call(grpc_channel *ch, const char *method, const char *auth, const ProtobufCMessage *req,
                long long timeout_ms, grpc_slice *resp_out, char *msg, size_t mcap) {
  grpc_completion_queue *cq = grpc_completion_queue_create_for_pluck(NULL);
  gpr_timespec dl = gpr_time_add(gpr_now(GPR_CLOCK_REALTIME), gpr_time_from_millis(timeout_ms, GPR_TIMESPAN));
  grpc_slice mslice = grpc_slice_from_static_string(method);
  grpc_call *c = grpc_channel_create_call(ch, NULL, GRPC_PROPAGATE_DEFAULTS, cq, mslice, NULL, dl, NULL);
  size_t n = protobuf_c_message_get_packed_size(req);
  grpc_slice body = grpc_slice_malloc(n);
  protobuf_c_message_pack(req, GRPC_SLICE_START_PTR(body));
  grpc_metadata md;
  memset(&md, 0, sizeof md);
  md.key = grpc_slice_from_static_string("authorization");
  md.value = grpc_slice_from_copied_string(auth);
  int status = kd_client_unary(c, cq, body, &md, 1, resp_out, msg, mcap);
  grpc_slice_unref(body);
  grpc_slice_unref(md.value);
  grpc_call_unref(c);
  grpc_completion_queue_shutdown(cq);
  while (grpc_completion_queue_pluck(cq, NULL, gpr_inf_future(GPR_CLOCK_REALTIME), NULL).type != GRPC_QUEUE_SHUTDOWN) {
  }
  grpc_completion_queue_destroy(cq);
  return (int)status;
}

static int read_token(const char *path, char *out, size_t cap) {
  FILE *f = fopen(path, "r");
  if (!f) {
    fprintf(stderr, "kdrank-ctl: --token-file %s: %s\n", path, strerror(errno));
    return -1;
  }
  char line[1024] = "";
  char *ok = fgets(line, sizeof line, f);
  fclose(f);
  size_t n = ok ? strlen(line) : 0;
  while (n && (line[n - 1] == '\n' || line[n - 1] == '\r' || line[n - 1] == ' ')) line[--n] = 0;
  char *s = line;
  while (*s == ' ' || *s == '\t') s++;
  if (!*s || strlen(s) >= cap) {
    fprintf(stderr, "kdrank-ctl: --token-file %s: expected a token on the first line\n", path);
    return -1;
  }
  snprintf(out, cap, "%s", s);
  return 0;
}

int main(int argc, char **argv) {
  const char *addr = getenv("KDRANK_ADMIN_ADDR"), *token_file = getenv("KDRANK_ADMIN_TOKEN_FILE");
  long long timeout_ms = 60000;
  int i = 1;
  for (; i < argc && strncmp(argv[i], "--", 2) == 0; i++) {
    if (strcmp(argv[i], "--help") == 0 || strcmp(argv[i], "-h") == 0) {
      usage(stdout);
      return 0;
    }
    if (i + 1 >= argc) {
      fprintf(stderr, "kdrank-ctl: %s: expected a value after it\n", argv[i]);
      return 2;
    }
    if (strcmp(argv[i], "--addr") == 0) addr = argv[++i];
    else if (strcmp(argv[i], "--token-file") == 0) token_file = argv[++i];
    else if (strcmp(argv[i], "--timeout-ms") == 0) timeout_ms = strtoll(argv[++i], NULL, 10);
    else {
      fprintf(stderr, "kdrank-ctl: unknown option %s (see --help)\n", argv[i]);
      return 2;
    }
  }
  if (i >= argc || !addr || !token_file || timeout_ms <= 0) {
    usage(stderr);
    return 2;
  }
  const char *cmd = argv[i++];
  int nargs = argc - i;
  char **a = argv + i;
  const char *method = NULL;
  Kdrank__V1__ListModelsRequest lr = KDRANK__V1__LIST_MODELS_REQUEST__INIT;
  Kdrank__V1__SetCanaryRequest cr = KDRANK__V1__SET_CANARY_REQUEST__INIT;
  Kdrank__V1__ModelRequest mr = KDRANK__V1__MODEL_REQUEST__INIT;
  const ProtobufCMessage *req = NULL;
  if (strcmp(cmd, "list") == 0 && nargs == 0) {
    method = "/kdrank.v1.Admin/ListModels";
    req = &lr.base;
  } else if (strcmp(cmd, "canary") == 0 && nargs == 3) {
    char *end1, *end2;
    cr.model = a[0];
    cr.version = strtoll(a[1], &end1, 10);
    cr.weight = strtod(a[2], &end2);
    if (*end1 || *end2 || !a[1][0] || !a[2][0]) {
      fprintf(stderr, "kdrank-ctl: canary MODEL VERSION WEIGHT: expected an integer and a number, found \"%s\" \"%s\"\n",
              a[1], a[2]);
      return 2;
    }
    method = "/kdrank.v1.Admin/SetCanary";
    req = &cr.base;
  } else if ((strcmp(cmd, "promote") == 0 || strcmp(cmd, "rollback") == 0) && nargs == 1) {
    mr.model = a[0];
    method = cmd[0] == 'p' ? "/kdrank.v1.Admin/Promote" : "/kdrank.v1.Admin/Rollback";
    req = &mr.base;
  } else if (strcmp(cmd, "reload") == 0 && nargs <= 1) {
    mr.model = nargs ? a[0] : (char *)"";
    method = "/kdrank.v1.Admin/Reload";
    req = &mr.base;
  } else {
    fprintf(stderr, "kdrank-ctl: unknown command or wrong arguments: %s\n", cmd);
    usage(stderr);
    return 2;
  }
  char token[600], auth[700];
  if (read_token(token_file, token, sizeof token) != 0) return 2;
  snprintf(auth, sizeof auth, "Bearer %s", token);

  grpc_init();
  grpc_channel_credentials *creds = grpc_insecure_credentials_create();
  grpc_channel *ch = grpc_channel_create(addr, creds, NULL);
  grpc_channel_credentials_release(creds);
  grpc_slice resp;
  char msg[1024];
  int code = call(ch, method, auth, req, timeout_ms, &resp, msg, sizeof msg);
  int rc = 0;
  if (code != GRPC_STATUS_OK) {
    fprintf(stderr, "kdrank-ctl: %s: status %d: %s\n", method, code, msg);
    rc = 1;
  } else if (strcmp(cmd, "list") == 0) {
    Kdrank__V1__ListModelsResponse *r =
        kdrank__v1__list_models_response__unpack(NULL, GRPC_SLICE_LENGTH(resp), GRPC_SLICE_START_PTR(resp));
    if (!r) {
      fprintf(stderr, "kdrank-ctl: undecodable ListModelsResponse\n");
      rc = 1;
    } else {
      for (size_t k = 0; k < r->n_models; k++) print_status(r->models[k]);
      kdrank__v1__list_models_response__free_unpacked(r, NULL);
    }
  } else {
    Kdrank__V1__ModelStatus *s =
        kdrank__v1__model_status__unpack(NULL, GRPC_SLICE_LENGTH(resp), GRPC_SLICE_START_PTR(resp));
    if (!s) {
      fprintf(stderr, "kdrank-ctl: undecodable ModelStatus\n");
      rc = 1;
    } else {
      print_status(s);
      kdrank__v1__model_status__free_unpacked(s, NULL);
    }
  }
  grpc_slice_unref(resp);
  grpc_channel_destroy(ch);
  grpc_shutdown();
  return rc;
}
