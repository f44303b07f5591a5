/* config.c - the option table and its three readers: flags, config file, --help/sample. */
#include "config.h"

#include <errno.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>

#include "log.h"

enum opt_type { OPT_STR, OPT_INT, OPT_ENUM };

struct opt {
  const char *name;     /* flag --name, config key name */
  int type;             /* enum opt_type */
  const char *def;      /* default, as text */
  long long min, max;   /* OPT_INT bounds (inclusive) */
  const char *choices;  /* OPT_ENUM: "a|b|c" */
  size_t off;           /* field in struct kd_serve_config */
  const char *help;
};

#define F(field) offsetof(struct kd_serve_config, field)
static const struct opt k_opts[] = {
    {"config", OPT_STR, "", 0, 0, NULL, F(config),
     "Read options from this file (\"name = value\" lines, '#' comments); flags win over it."},
    {"model-repo", OPT_STR, "", 0, 0, NULL, F(model_repo),
     "Model repository: DIR/<model>/<version>/model.kdr; the latest valid version of each model is "
     "loaded at start-up. Required."},
    {"default-model", OPT_STR, "", 0, 0, NULL, F(default_model),
     "Model used when a request leaves `model` empty. Empty: the repository's only model, if it has "
     "exactly one."},
    {"listen", OPT_STR, "0.0.0.0:50051", 0, 0, NULL, F(listen),
     "gRPC address HOST:PORT. Port 0 picks a free port and logs it (event=listening port=N)."},
    {"metrics-listen", OPT_STR, "127.0.0.1:9464", 0, 0, NULL, F(metrics_listen),
     "Prometheus /metrics HTTP address HOST:PORT (port 0: pick one, logged as "
     "event=metrics_listening); empty: no metrics endpoint."},
    {"threads", OPT_INT, "0", 0, 256, NULL, F(threads),
     "Worker threads, one completion queue each, calls handled inline. 0: one per CPU."},
    {"prepost", OPT_INT, "8", 1, 1024, NULL, F(prepost),
     "Score requests kept posted per worker thread (calls the core can hand over without waiting)."},
    {"max-candidates", OPT_INT, "1000", 1, 1000000, NULL, F(max_candidates),
     "Largest candidates.count accepted; larger requests get INVALID_ARGUMENT."},
    {"max-message-bytes", OPT_INT, "4194304", 1024, 1073741824, NULL, F(max_message_bytes),
     "Largest request or response message; larger ones get RESOURCE_EXHAUSTED."},
    {"keepalive-time-ms", OPT_INT, "7200000", 1000, 2147483647, NULL, F(keepalive_time_ms),
     "Send an HTTP/2 keepalive ping after this long without activity on a connection."},
    {"keepalive-timeout-ms", OPT_INT, "20000", 100, 2147483647, NULL, F(keepalive_timeout_ms),
     "Close the connection when a keepalive ping is not acknowledged within this time."},
    {"keepalive-min-ping-ms", OPT_INT, "300000", 0, 2147483647, NULL, F(keepalive_min_ping_ms),
     "Shortest interval between client pings without data the server accepts (faster: GOAWAY "
     "too_many_pings)."},
    {"drain-timeout-ms", OPT_INT, "10000", 0, 3600000, NULL, F(drain_timeout_ms),
     "On SIGTERM/SIGINT: stop accepting, wait this long for in-flight calls, then cancel them."},
    {"log-level", OPT_ENUM, "info", 0, 0, "error|warn|info|debug", F(log_level),
     "Structured log (key=value lines on stderr) threshold."},
    {"kernel", OPT_ENUM, "auto", 0, 0, "auto|scalar|avx2", F(kernel),
     "Scoring kernel (auto: AVX2+FMA when the CPU has it). Scores are bit-identical to kdrank-ckpt "
     "score with the same kernel."},
    {"tls-cert", OPT_STR, "", 0, 0, NULL, F(tls_cert),
     "PEM server certificate chain; with --tls-key enables TLS. Empty: plaintext."},
    {"tls-key", OPT_STR, "", 0, 0, NULL, F(tls_key), "PEM private key of --tls-cert."},
    {"tls-client-ca", OPT_STR, "", 0, 0, NULL, F(tls_client_ca),
     "PEM CA bundle: when set, clients must present a certificate it signed (mutual TLS)."},
    {"test-delay-ms", OPT_INT, "0", 0, 60000, NULL, F(test_delay_ms),
     "Testing only: sleep this long before scoring each Score call (drain and deadline tests). "
     "Keep 0 in production."},
    {"admin-listen", OPT_STR, "127.0.0.1:0", 0, 0, NULL, F(admin_listen),
     "kdrank.v1.Admin address: HOST:PORT (port 0: pick one, logged as event=admin_listening) or "
     "unix:/path/to/socket. Keep it private: loopback or a unix socket."},
    {"admin-token-file", OPT_STR, "", 0, 0, NULL, F(admin_token_file),
     "File holding the Admin bearer token (first line; clients send `authorization: Bearer "
     "<token>`). Empty: the Admin service is not started."},
    {"rescan-interval-ms", OPT_INT, "5000", 0, 86400000, NULL, F(rescan_interval_ms),
     "Rescan the model repository this often (a fallback for missed inotify events); 0: inotify "
     "and Admin Reload only."},
    {"keep-versions", OPT_INT, "2", 1, 16, NULL, F(keep_versions),
     "Versions kept loaded per model: stable and canary always, then the newest others up to this "
     "count (2: stable + canary, or a warm rollback target); older ones are unloaded."},
    {"auto-promote", OPT_INT, "1", 0, 1, NULL, F(auto_promote),
     "1: a new version found in the repository becomes stable once it verifies and warms up. 0: it "
     "is only loaded; go live with Admin SetCanary / Promote."},
};
#undef F
#define N_OPTS (sizeof k_opts / sizeof k_opts[0])

static const struct opt *opt_find(const char *name, size_t len) {
  for (size_t i = 0; i < N_OPTS; i++)
    if (strlen(k_opts[i].name) == len && strncmp(k_opts[i].name, name, len) == 0) return &k_opts[i];
  return NULL;
}

/* Stores text into the option's field after checking type and bounds. where names the source. */
static int opt_set(const struct opt *o, const char *val, struct kd_serve_config *cfg,
                   const char *where, struct kd_err *e) {
  char *field = (char *)cfg + o->off;
  if (o->type == OPT_INT) {
    char *end;
    errno = 0;
    long long v = strtoll(val, &end, 10);
    if (!val[0] || *end || errno)
      return kd_err_set(e, KD_ERR_INVALID, "%s%s: expected an integer in [%lld, %lld], found \"%s\"",
                        where, o->name, o->min, o->max, val);
    if (v < o->min || v > o->max)
      return kd_err_set(e, KD_ERR_INVALID, "%s%s: expected an integer in [%lld, %lld], found %lld",
                        where, o->name, o->min, o->max, v);
    *(long long *)field = v;
    return KD_OK;
  }
  if (strlen(val) >= KD_CFG_STR_MAX)
    return kd_err_set(e, KD_ERR_INVALID, "%s%s: value longer than %d bytes", where, o->name,
                      KD_CFG_STR_MAX - 1);
  if (o->type == OPT_ENUM) {
    const char *c = o->choices;
    size_t n = strlen(val);
    int ok = 0;
    while (*c) {
      const char *bar = strchr(c, '|');
      size_t len = bar ? (size_t)(bar - c) : strlen(c);
      if (len == n && strncmp(c, val, n) == 0) ok = 1;
      c += len + (bar ? 1 : 0);
    }
    if (!ok)
      return kd_err_set(e, KD_ERR_INVALID, "%s%s: expected one of %s, found \"%s\"", where, o->name,
                        o->choices, val);
  }
  snprintf(field, KD_CFG_STR_MAX, "%s", val);
  return KD_OK;
}

/* Trims spaces at both ends in place. */
static char *trim(char *s) {
  while (*s == ' ' || *s == '\t') s++;
  size_t n = strlen(s);
  while (n && (s[n - 1] == ' ' || s[n - 1] == '\t' || s[n - 1] == '\n' || s[n - 1] == '\r')) s[--n] = 0;
  return s;
}

static int config_file_read(const char *path, struct kd_serve_config *cfg, struct kd_err *e) {
  FILE *f = fopen(path, "r");
  if (!f) return kd_err_set(e, KD_ERR_IO, "--config %s: cannot open: %s", path, strerror(errno));
  char line[4096];
  int ln = 0, rc = KD_OK;
  while (rc == KD_OK && fgets(line, sizeof line, f)) {
    ln++;
    char *hash = strchr(line, '#');
    if (hash) *hash = 0;
    char *s = trim(line);
    if (!*s) continue;
    char *eq = strchr(s, '=');
    if (!eq) {
      rc = kd_err_set(e, KD_ERR_INVALID, "%s:%d: expected \"name = value\", found \"%s\"", path, ln, s);
      break;
    }
    *eq = 0;
    char *key = trim(s), *val = trim(eq + 1);
    const struct opt *o = opt_find(key, strlen(key));
    if (!o || strcmp(key, "config") == 0) {
      rc = kd_err_set(e, KD_ERR_INVALID, "%s:%d: unknown option \"%s\" (see kdrank-serve --help)",
                      path, ln, key);
      break;
    }
    char where[1200];
    snprintf(where, sizeof where, "%s:%d: ", path, ln);
    rc = opt_set(o, val, cfg, where, e);
  }
  fclose(f);
  return rc;
}

int kd_config_parse(int argc, char **argv, struct kd_serve_config *cfg, int *action,
                    struct kd_err *e) {
  memset(cfg, 0, sizeof *cfg);
  *action = KD_CFG_RUN;
  for (size_t i = 0; i < N_OPTS; i++) {
    int rc = opt_set(&k_opts[i], k_opts[i].def, cfg, "default ", e);
    if (rc) return rc;
  }
  /* Two passes: the config file first (wherever --config appears), then every flag. */
  for (int pass = 0; pass < 2; pass++) {
    for (int i = 1; i < argc; i++) {
      const char *a = argv[i];
      if (strcmp(a, "--help") == 0 || strcmp(a, "-h") == 0) { *action = KD_CFG_HELP; return KD_OK; }
      if (strcmp(a, "--version") == 0) { *action = KD_CFG_VERSION; return KD_OK; }
      if (strcmp(a, "--print-config") == 0) { *action = KD_CFG_PRINT; continue; }
      if (strncmp(a, "--", 2) != 0)
        return kd_err_set(e, KD_ERR_INVALID, "argument %d: expected --name=value, found \"%s\"", i, a);
      const char *name = a + 2, *eq = strchr(name, '=');
      size_t len = eq ? (size_t)(eq - name) : strlen(name);
      const struct opt *o = opt_find(name, len);
      if (!o)
        return kd_err_set(e, KD_ERR_INVALID, "unknown option \"%.*s\" (see --help)", (int)len + 2, a);
      const char *val = eq ? eq + 1 : NULL;
      if (!val) {
        if (i + 1 >= argc)
          return kd_err_set(e, KD_ERR_INVALID, "--%s: expected a value after it", o->name);
        val = argv[++i];
      }
      int is_config = strcmp(o->name, "config") == 0;
      if (pass == 0 && is_config) {
        int rc = opt_set(o, val, cfg, "--", e);
        if (rc == KD_OK) rc = config_file_read(val, cfg, e);
        if (rc) return rc;
      } else if (pass == 1 && !is_config) {
        int rc = opt_set(o, val, cfg, "--", e);
        if (rc) return rc;
      }
    }
  }
  kd_log_set_level(kd_log_parse_level(cfg->log_level));
  return KD_OK;
}

/* "(integer in [0, 256], default 0)" and friends. */
static void opt_describe(const struct opt *o, char *buf, size_t cap) {
  if (o->type == OPT_INT)
    snprintf(buf, cap, "integer in [%lld, %lld], default %s", o->min, o->max, o->def);
  else if (o->type == OPT_ENUM)
    snprintf(buf, cap, "one of %s, default %s", o->choices, o->def);
  else
    snprintf(buf, cap, "string, default %s", o->def[0] ? o->def : "empty");
}

void kd_config_help(FILE *f, const char *prog) {
  fprintf(f,
          "Usage: %s --model-repo DIR [options]\n"
          "kdrank-serve: the kdrank.v1.Ranker gRPC server (plus grpc.health.v1.Health and a Prometheus\n"
          "/metrics endpoint). Options may also come from --config FILE (\"name = value\" lines).\n"
          "SIGTERM/SIGINT drain in-flight calls and exit 0.\n\nOptions:\n",
          prog);
  for (size_t i = 0; i < N_OPTS; i++) {
    char d[160];
    opt_describe(&k_opts[i], d, sizeof d);
    fprintf(f, "  --%s=%s\n      %s\n      (%s)\n", k_opts[i].name,
            k_opts[i].type == OPT_INT ? "N" : "VALUE", k_opts[i].help, d);
  }
  fprintf(f, "  --print-config\n      Print a sample config file with every option at its default.\n"
             "  --help, --version\n");
}

void kd_config_print_sample(FILE *f) {
  fprintf(f, "# kdrank-serve configuration. Generated by `kdrank-serve --print-config`; every option\n"
             "# is listed at its default. Format: \"name = value\", '#' starts a comment. Command-line\n"
             "# flags (--name=value) override this file. Use: kdrank-serve --config FILE\n");
  for (size_t i = 0; i < N_OPTS; i++) {
    const struct opt *o = &k_opts[i];
    if (strcmp(o->name, "config") == 0) continue;
    char d[160];
    opt_describe(o, d, sizeof d);
    fprintf(f, "\n# %s\n# (%s)\n%s%s = %s\n", o->help, d, o->def[0] ? "" : "# ", o->name, o->def);
  }
}

void kd_config_log(const struct kd_serve_config *cfg) {
  char buf[4096];
  size_t at = 0;
  for (size_t i = 0; i < N_OPTS && at < sizeof buf; i++) {
    const struct opt *o = &k_opts[i];
    const char *field = (const char *)cfg + o->off;
    if (o->type == OPT_INT)
      at += (size_t)snprintf(buf + at, sizeof buf - at, "%s%s=%lld", i ? " " : "", o->name,
                             *(const long long *)field);
    else
      at += (size_t)snprintf(buf + at, sizeof buf - at, "%s%s=\"%s\"", i ? " " : "", o->name, field);
  }
  kd_log(KD_LOG_INFO, "config", "%s", buf);
}
