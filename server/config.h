/* config.h - kdrank-serve's configuration: ONE declarative table (name, type, default, bounds,
 * help) drives the command-line flags, the config file (name = value lines), --help and the
 * generated sample config (deploy/kdrank-serve.conf), so they cannot drift apart. */
#ifndef KD_SERVE_CONFIG_H
#define KD_SERVE_CONFIG_H

#include <stdio.h>

#include "kdrank_model.h"

#define KD_CFG_STR_MAX 1024

struct kd_serve_config {
  char config[KD_CFG_STR_MAX];
  char model_repo[KD_CFG_STR_MAX];
  char default_model[KD_CFG_STR_MAX];
  char listen[KD_CFG_STR_MAX];
  char metrics_listen[KD_CFG_STR_MAX];
  long long threads;
  long long prepost;
  long long max_candidates;
  long long max_message_bytes;
  long long keepalive_time_ms;
  long long keepalive_timeout_ms;
  long long keepalive_min_ping_ms;
  long long drain_timeout_ms;
  char log_level[KD_CFG_STR_MAX];
  char kernel[KD_CFG_STR_MAX];
  char tls_cert[KD_CFG_STR_MAX];
  char tls_key[KD_CFG_STR_MAX];
  char tls_client_ca[KD_CFG_STR_MAX];
  long long test_delay_ms;
  char admin_listen[KD_CFG_STR_MAX];
  char admin_token_file[KD_CFG_STR_MAX];
  long long rescan_interval_ms;
  long long keep_versions;
  long long auto_promote;
};

/* What the command line asked for besides running. */
enum kd_cfg_action { KD_CFG_RUN = 0, KD_CFG_HELP = 1, KD_CFG_VERSION = 2, KD_CFG_PRINT = 3 };

/* Fills cfg from defaults, then the --config file (if any), then the flags (flags win). Returns
 * KD_OK with *action set, or an error naming the flag or file:line, the expected and found value. */
int kd_config_parse(int argc, char **argv, struct kd_serve_config *cfg, int *action,
                    struct kd_err *e);
/* --help text: every option with its type, default, bounds and help. */
void kd_config_help(FILE *f, const char *prog);
/* The sample config file (every option, commented, at its default). */
void kd_config_print_sample(FILE *f);
/* Logs every option's effective value (one "config" event). */
void kd_config_log(const struct kd_serve_config *cfg);

#endif
