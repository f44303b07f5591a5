/* main.c - kdrank-serve: configuration, start-up (registry, metrics, gRPC server), then wait for
 * SIGTERM/SIGINT (handler + self-pipe) and drain. Exit codes: 0 clean (or drained) exit, 1 start-up error,
 * 2 bad command line. */
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <malloc.h>
#include <poll.h>

#include <grpc/grpc.h>

#include "admin.h"

#include "config.h"
#include "log.h"
#include "metrics.h"
#include "serve.h"

/* Stop signals: the handler writes the signal number to a pipe that main reads. A handler (not
 * only a blocked mask + sigwait) is needed because threads created before main (OpenBLAS starts its
 * pool in a library constructor) do not inherit our mask: a SIGTERM delivered to one of them while
 * main is not waiting would take the default action and kill the process mid-drain. */
static int g_sigpipe[2] = {-1, -1};

static void on_stop_signal(int sig) {
  int saved = errno;
  unsigned char c = (unsigned char)sig;
  ssize_t w = write(g_sigpipe[1], &c, 1);
  (void)w;
  errno = saved;
}

/* jemalloc's control entry point when jemalloc is linked (release builds), NULL otherwise. */
extern int mallctl(const char *name, void *oldp, size_t *oldlenp, void *newp, size_t newlen)
    __attribute__((weak));

/* Returns freed memory to the OS after a retired version is freed (background thread): jemalloc
 * purges every arena's dirty pages; glibc's malloc trims its heaps. */
static void trim_memory(void) {
  if (mallctl) {
    mallctl("arena.4096.purge", NULL, NULL, NULL, 0); /* 4096 = MALLCTL_ARENAS_ALL */
  } else {
    malloc_trim(0);
  }
}

static int kernel_of(const char *s) {
  if (strcmp(s, "scalar") == 0) return KD_KERNEL_SCALAR;
  if (strcmp(s, "avx2") == 0) return KD_KERNEL_AVX2;
  return KD_KERNEL_AUTO;
}

int main(int argc, char **argv) {
  static struct kd_serve_config cfg; /* static: ~20 KiB of option strings */
  struct kd_err e = {0};
  int action;
  /* Every worker scores its own calls: BLAS (used by the scalar fallback) must not start threads
   * of its own on top of them. */
  kd_blas_set_threads(1);
  if (kd_config_parse(argc, argv, &cfg, &action, &e) != KD_OK) {
    fprintf(stderr, "kdrank-serve: %s\n", e.msg);
    return 2;
  }
  if (action == KD_CFG_HELP) {
    kd_config_help(stdout, argv[0]);
    return 0;
  }
  if (action == KD_CFG_VERSION) {
    printf("kdrank-serve %s (gRPC core %s)\n", KD_VERSION, grpc_version_string());
    return 0;
  }
  if (action == KD_CFG_PRINT) {
    kd_config_print_sample(stdout);
    return 0;
  }
  if (!cfg.model_repo[0]) {
    fprintf(stderr, "kdrank-serve: --model-repo DIR is required (see --help)\n");
    return 2;
  }
  /* Stop signals: handled (see on_stop_signal) and blocked while gRPC's, libmicrohttpd's and our
   * threads are created, so they inherit the mask; main unblocks them once serving. */
  sigset_t stop;
  sigemptyset(&stop);
  sigaddset(&stop, SIGTERM);
  sigaddset(&stop, SIGINT);
  if (pipe2(g_sigpipe, O_CLOEXEC) != 0) {
    fprintf(stderr, "kdrank-serve: pipe: %s\n", strerror(errno));
    return 1;
  }
  struct sigaction sa;
  memset(&sa, 0, sizeof sa);
  sa.sa_handler = on_stop_signal;
  sa.sa_flags = SA_RESTART;
  sigemptyset(&sa.sa_mask);
  sigaction(SIGTERM, &sa, NULL);
  sigaction(SIGINT, &sa, NULL);
  pthread_sigmask(SIG_BLOCK, &stop, NULL);
  signal(SIGPIPE, SIG_IGN);

  kd_config_log(&cfg);
  int n_workers = cfg.threads > 0 ? (int)cfg.threads : (int)sysconf(_SC_NPROCESSORS_ONLN);
  if (n_workers < 1) n_workers = 1;
  int rc = 1;
  kd_metrics *metrics = NULL;
  struct kd_server *srv = NULL;
  struct kd_admin *admin = NULL;
  struct kd_registry_params rp = {.repo = cfg.model_repo,
                                  .max_cand = (uint32_t)cfg.max_candidates,
                                  .n_scratch = (uint32_t)n_workers,
                                  .kernel = kernel_of(cfg.kernel),
                                  .log = kd_log_registry,
                                  .keep_loaded = (uint32_t)cfg.keep_versions,
                                  .auto_promote = (int)cfg.auto_promote,
                                  .persist = 1};
  kd_registry *reg = kd_registry_open(rp, &e);
  if (!reg) {
    kd_log(KD_LOG_ERROR, "startup_failed", "error=\"%s\"", e.msg);
    return 1;
  }
  const char *default_model = NULL;
  if (cfg.default_model[0]) {
    if (kd_registry_find(reg, cfg.default_model) < 0) {
      kd_log(KD_LOG_ERROR, "startup_failed",
             "error=\"--default-model %s: no such model directory in %s\"", cfg.default_model,
             cfg.model_repo);
      goto out_reg;
    }
    default_model = cfg.default_model;
  } else if (kd_registry_n_models(reg) == 1) {
    default_model = kd_registry_model_name(reg, 0);
  }
  metrics = kd_metrics_create((uint32_t)n_workers, reg);
  if (!metrics) {
    kd_log(KD_LOG_ERROR, "startup_failed", "error=\"out of memory for metrics\"");
    goto out_reg;
  }
  if (cfg.metrics_listen[0]) {
    int mport = 0;
    if (kd_metrics_listen(metrics, cfg.metrics_listen, &mport, &e) != KD_OK) {
      kd_log(KD_LOG_ERROR, "startup_failed", "error=\"%s\"", e.msg);
      goto out_metrics;
    }
    kd_log(KD_LOG_INFO, "metrics_listening", "addr=%s port=%d path=/metrics", cfg.metrics_listen, mport);
  }
  struct kd_registry_watch_params wp = {.rescan_interval_ms = cfg.rescan_interval_ms,
                                        .trim = trim_memory};
  if (kd_registry_watch_start(reg, wp, &e) != KD_OK) {
    kd_log(KD_LOG_ERROR, "startup_failed", "error=\"%s\"", e.msg);
    goto out_metrics;
  }
  grpc_init();
  if (cfg.admin_token_file[0]) {
    int aport = 0;
    admin = kd_admin_start(reg, cfg.admin_listen, cfg.admin_token_file, default_model, &aport, &e);
    if (!admin) {
      kd_log(KD_LOG_ERROR, "startup_failed", "error=\"%s\"", e.msg);
      goto out_grpc;
    }
    kd_log(KD_LOG_INFO, "admin_listening", "addr=%s port=%d auth=bearer", cfg.admin_listen, aport);
  } else {
    kd_log(KD_LOG_WARN, "admin_disabled", "reason=\"no --admin-token-file\"");
  }
  srv = kd_server_start(&cfg, reg, metrics, default_model, n_workers, &e);
  if (!srv) {
    kd_log(KD_LOG_ERROR, "startup_failed", "error=\"%s\"", e.msg);
    goto out_grpc;
  }
  kd_log(KD_LOG_INFO, "listening", "addr=%s port=%d threads=%d tls=%s models=%u default_model=%s",
         cfg.listen, srv->port, n_workers,
         cfg.tls_cert[0] ? (cfg.tls_client_ca[0] ? "mtls" : "tls") : "off",
         kd_registry_n_models(reg), default_model ? default_model : "");
  pthread_sigmask(SIG_UNBLOCK, &stop, NULL);
  unsigned char sig = 0;
  /* Wait with a timed poll, not a blocking read: ThreadSanitizer defers a signal handler until the
   * thread next leaves the runtime, which a read() blocked forever never does (the drain would
   * never start under TSan). Four wake-ups a second cost nothing. */
  for (;;) {
    struct pollfd pf = {.fd = g_sigpipe[0], .events = POLLIN};
    int n = poll(&pf, 1, 250);
    if (n > 0 && read(g_sigpipe[0], &sig, 1) == 1) break;
  }
  kd_log(KD_LOG_INFO, "signal", "signal=%s", sig == SIGTERM ? "SIGTERM" : "SIGINT");
  kd_server_stop(srv, cfg.drain_timeout_ms);
  rc = 0;
out_grpc:
  kd_admin_stop(admin);
  grpc_shutdown();
  kd_registry_watch_stop(reg);
out_metrics:
  kd_metrics_free(metrics);
out_reg:
  kd_registry_free(reg);
  kd_log(KD_LOG_INFO, "exit", "code=%d", rc);
  close(g_sigpipe[0]);
  close(g_sigpipe[1]);
  return rc;
}
