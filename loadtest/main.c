/* main.c - kdrank-load: the load generator users run to learn the p99 their ranking frontend will
 * see. Flags come from one table (name, type, default, help) that also drives --help. Scenarios:
 * steady, ramp (highest rate under --slo-p99), swap (publish a new version every K s while under
 * load), canary (observed split vs the configured weight). Exit 0 ok, 1 run failed, 2 bad usage,
 * 3 the scenario's check failed (ramp: no rate met the SLO; canary: split off; swap: errors). */
#include "load.h"

#include <cjson/cJSON.h> /* cJSON: the project's JSON library (Debian libcjson) */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

struct cfg {
  const char *target, *scenario, *model, *candidates, *replay, *pin_label, *json, *csv, *plot;
  const char *repo, *swap_ckpt, *swap_cmd, *canary_label;
  double rate, duration, warmup, deadline_ms, slo_p99_ms, ramp_start, ramp_step, ramp_factor, ramp_max, step_duration;
  double swap_every, swap_window, canary_weight;
  uint64_t connections, threads, closed, max_requests, max_inflight, keys, pool, seed, pin_version;
  int poisson, quiet;
};

enum opt_type { OPT_STR, OPT_DBL, OPT_U64, OPT_FLAG };
struct opt {
  const char *name;
  enum opt_type type;
  size_t off;
  const char *def;
  const char *help;
};
#define O(f) offsetof(struct cfg, f)
static const struct opt opts[] = {
    {"target", OPT_STR, O(target), NULL, "server address, e.g. ipv4:127.0.0.1:50051 (the only address contacted)"},
    {"scenario", OPT_STR, O(scenario), "steady", "steady | ramp | swap | canary"},
    {"rate", OPT_DBL, O(rate), "100", "open loop: requests/s asked (ramp: see --ramp-*)"},
    {"poisson", OPT_FLAG, O(poisson), "0", "open loop: Poisson arrivals instead of a constant rate"},
    {"closed", OPT_U64, O(closed), "0", "> 0: closed loop with N calls in flight (hides server stalls)"},
    {"connections", OPT_U64, O(connections), "4", "channels, each its own TCP connection"},
    {"threads", OPT_U64, O(threads), "2", "I/O threads (one completion queue each)"},
    {"duration", OPT_DBL, O(duration), "10", "seconds of schedule, warm-up included"},
    {"warmup", OPT_DBL, O(warmup), "1", "seconds at the start not measured"},
    {"max-requests", OPT_U64, O(max_requests), "10000000", "cap on calls issued"},
    {"max-inflight", OPT_U64, O(max_inflight), "2000", "open loop: cap on calls in flight (reported when hit)"},
    {"deadline-ms", OPT_DBL, O(deadline_ms), "2000", "per-call deadline"},
    {"model", OPT_STR, O(model), "", "model name (empty: the server's default)"},
    {"candidates", OPT_STR, O(candidates), "100", "candidates per request: N, A:B (uniform) or exp:MEAN"},
    {"pool", OPT_U64, O(pool), "64", "distinct random request bodies"},
    {"replay", OPT_STR, O(replay), NULL, "file of proto3-JSON ScoreRequests (e.g. from kdrank-ckpt request), drawn at random per call"},
    {"keys", OPT_U64, O(keys), "1000000", "routing keys drawn from a key space of this size (0: key 0)"},
    {"pin-version", OPT_U64, O(pin_version), "0", "pin requests to this version"},
    {"pin-label", OPT_STR, O(pin_label), NULL, "pin requests to this label (stable | canary)"},
    {"seed", OPT_U64, O(seed), "1", "random seed (request values, keys, Poisson schedule)"},
    {"json", OPT_STR, O(json), NULL, "write the full result as JSON to this file"},
    {"csv", OPT_STR, O(csv), NULL, "write the 1 s interval series as CSV to this file"},
    {"plot", OPT_STR, O(plot), NULL, "write PREFIX-spectrum.png and PREFIX-latency.png (gnuplot)"},
    {"slo-p99", OPT_DBL, O(slo_p99_ms), "10", "ramp: p99 objective in ms"},
    {"ramp-start", OPT_DBL, O(ramp_start), "100", "ramp: first rate"},
    {"ramp-step", OPT_DBL, O(ramp_step), "100", "ramp: rate added per step"},
    {"ramp-factor", OPT_DBL, O(ramp_factor), "0", "ramp: > 1: multiply the rate by this per step instead of adding"},
    {"ramp-max", OPT_DBL, O(ramp_max), "100000", "ramp: highest rate tried"},
    {"step-duration", OPT_DBL, O(step_duration), "5", "ramp: seconds per step (warm-up included)"},
    {"repo", OPT_STR, O(repo), NULL, "swap: model repository; versions published to REPO/MODEL/N/model.kdr"},
    {"swap-ckpt", OPT_STR, O(swap_ckpt), NULL, "swap: checkpoint file(s) to publish, comma-separated, cycled"},
    {"swap-cmd", OPT_STR, O(swap_cmd), NULL, "swap: shell command run instead of copying (gets KD_SWAP_N)"},
    {"swap-every", OPT_DBL, O(swap_every), "5", "swap: seconds between publications"},
    {"swap-window", OPT_DBL, O(swap_window), "2", "swap: seconds after a publication counted as inside"},
    {"canary-weight", OPT_DBL, O(canary_weight), "-1", "canary: configured share of traffic for the canary"},
    {"canary-label", OPT_STR, O(canary_label), "canary", "canary: the label the canary answers with"},
    {"quiet", OPT_FLAG, O(quiet), "0", "no human summary on stdout"},
};
#define N_OPTS (sizeof(opts) / sizeof(opts[0]))

static void usage(FILE *f) {
  fprintf(f, "usage: kdrank-load --target ipv4:HOST:PORT [options]\n\noptions (default in brackets):\n");
  for (size_t i = 0; i < N_OPTS; i++)
    fprintf(f, "  --%-15s %s%s%s%s\n", opts[i].name, opts[i].help, opts[i].def ? " [" : "",
            opts[i].def ? opts[i].def : "", opts[i].def ? "]" : "");
}

static int set_opt(struct cfg *c, const struct opt *o, const char *v) {
  char *p = (char *)c + o->off, *end = NULL;
  errno = 0;
  switch (o->type) {
  case OPT_STR: *(const char **)p = v; return 0;
  case OPT_FLAG: *(int *)p = strcmp(v, "0") != 0; return 0;
  case OPT_DBL: {
    double d = strtod(v, &end);
    if (end == v || *end || errno || !isfinite(d)) break;
    *(double *)p = d;
    return 0;
  }
  case OPT_U64: {
    if (*v == '-') break;
    unsigned long long u = strtoull(v, &end, 10);
    if (end == v || *end || errno) break;
    *(uint64_t *)p = u;
    return 0;
  }
  }
  fprintf(stderr, "kdrank-load: --%s: expected a %s, found \"%s\"\n", o->name,
          o->type == OPT_DBL ? "number" : "non-negative integer", v);
  return -1;
}

static int parse_args(int argc, char **argv, struct cfg *c) {
  memset(c, 0, sizeof(*c));
  for (size_t i = 0; i < N_OPTS; i++)
    if (opts[i].def && set_opt(c, &opts[i], opts[i].def) != 0) return -1;
  for (int i = 1; i < argc; i++) {
    const char *a = argv[i];
    if (!strcmp(a, "-h") || !strcmp(a, "--help")) { usage(stdout); exit(0); }
    if (strncmp(a, "--", 2) != 0) { fprintf(stderr, "kdrank-load: unexpected argument \"%s\"\n", a); return -1; }
    a += 2;
    const char *eq = strchr(a, '=');
    size_t n = eq ? (size_t)(eq - a) : strlen(a);
    const struct opt *o = NULL;
    for (size_t k = 0; k < N_OPTS; k++)
      if (strlen(opts[k].name) == n && !strncmp(opts[k].name, a, n)) o = &opts[k];
    if (!o) { fprintf(stderr, "kdrank-load: unknown option --%.*s (see --help)\n", (int)n, a); return -1; }
    const char *v = eq ? eq + 1 : NULL;
    if (!v && o->type == OPT_FLAG) v = "1";
    if (!v) {
      if (i + 1 >= argc) { fprintf(stderr, "kdrank-load: --%s needs a value\n", o->name); return -1; }
      v = argv[++i];
    }
    if (set_opt(c, o, v) != 0) return -1;
  }
  if (!c->target) { fprintf(stderr, "kdrank-load: --target is required\n"); usage(stderr); return -1; }
  /* integer flags narrower than 64 bits: reject what would not fit rather than wrap */
  const struct { const char *name; uint64_t v, max; } lim[] = {
      {"connections", c->connections, 1024}, {"threads", c->threads, 64}, {"closed", c->closed, 100000},
      {"max-inflight", c->max_inflight, 1000000}, {"pool", c->pool, 100000}};
  for (size_t i = 0; i < sizeof(lim) / sizeof(lim[0]); i++)
    if (lim[i].v > lim[i].max) {
      fprintf(stderr, "kdrank-load: --%s: expected at most %llu, found %llu\n", lim[i].name,
              (unsigned long long)lim[i].max, (unsigned long long)lim[i].v);
      return -1;
    }
  if (c->pin_version > INT64_MAX) { fprintf(stderr, "kdrank-load: --pin-version: too large\n"); return -1; }
  return 0;
}

static int parse_candidates(const char *s, struct kd_load_req_params *p) {
  char *end;
  if (!strncmp(s, "exp:", 4)) {
    p->cand_dist = KD_LOAD_CAND_EXP;
    p->cand_a = strtod(s + 4, &end);
    p->cand_b = 0;
    return *end || !(p->cand_a >= 1) ? -1 : 0;
  }
  p->cand_a = strtod(s, &end);
  if (*end == ':') {
    p->cand_dist = KD_LOAD_CAND_UNIFORM;
    p->cand_b = strtod(end + 1, &end);
    return *end || !(p->cand_a >= 1) || !(p->cand_b >= p->cand_a) ? -1 : 0;
  }
  p->cand_dist = KD_LOAD_CAND_FIXED;
  return *end || !(p->cand_a >= 1) ? -1 : 0;
}

static struct kd_load_params run_params(const struct cfg *c) {
  return (struct kd_load_params){
      .target = c->target, .connections = (uint32_t)c->connections, .threads = (uint32_t)c->threads,
      .rate = c->rate, .poisson = c->poisson, .closed = (uint32_t)c->closed, .duration_s = c->duration,
      .warmup_s = c->warmup, .max_requests = c->max_requests, .max_inflight = (uint32_t)c->max_inflight,
      .deadline_s = c->deadline_ms / 1e3, .keys = c->keys, .seed = c->seed, .window_s = c->swap_window};
}

/* One run of p over pool; with a publisher for the swap scenario. */
struct swap_ctx {
  const struct cfg *c;
  struct kd_load_run *run;
  _Atomic int stop;
  int published, failed;
  char err[16384]; /* room for two full paths and a reason */
};

/* Highest numeric version directory in dir (0 if none). */
static long long highest_version(const char *dir) {
  DIR *d = opendir(dir);
  long long best = 0;
  if (!d) return 0;
  struct dirent *de;
  while ((de = readdir(d))) {
    char *end;
    long long v = strtoll(de->d_name, &end, 10);
    if (*end == 0 && end != de->d_name && v > best) best = v;
  }
  closedir(d);
  return best;
}

static int fsync_path(const char *path) {
  int fd = open(path, O_RDONLY);
  if (fd < 0) return -1;
  int rc = fsync(fd);
  close(fd);
  return rc;
}

/* Publishes src as the next version: copy into REPO/MODEL/.publish-N/model.kdr, fsync, rename the
 * directory to REPO/MODEL/N (atomic: a scanner never sees a half-written version), fsync the dir. */
static int publish_copy(const char *repo, const char *model, const char *src, long long *ver, char *err, size_t en) {
  char mdir[4096], tmp[4200], file[4300], fin[4200];
  snprintf(mdir, sizeof(mdir), "%s/%s", repo, model && *model ? model : "default");
  long long v = highest_version(mdir) + 1;
  snprintf(tmp, sizeof(tmp), "%s/.publish-%lld", mdir, v);
  snprintf(file, sizeof(file), "%s/model.kdr", tmp);
  snprintf(fin, sizeof(fin), "%s/%lld", mdir, v);
  if (mkdir(tmp, 0755) != 0 && errno != EEXIST) { snprintf(err, en, "mkdir %s: %s", tmp, strerror(errno)); return -1; }
  int in = open(src, O_RDONLY), out = open(file, O_WRONLY | O_CREAT | O_TRUNC, 0644);
  if (in < 0 || out < 0) {
    snprintf(err, en, "copy %s -> %s: %s", src, file, strerror(errno));
    if (in >= 0) close(in);
    if (out >= 0) close(out);
    return -1;
  }
  char buf[1 << 16];
  ssize_t n;
  int rc = 0;
  while ((n = read(in, buf, sizeof(buf))) > 0)
    if (write(out, buf, (size_t)n) != n) { rc = -1; break; }
  if (n < 0 || fsync(out) != 0) rc = -1;
  close(in);
  if (close(out) != 0) rc = -1;
  if (rc != 0) { snprintf(err, en, "copy %s -> %s failed", src, file); return -1; }
  if (rename(tmp, fin) != 0) { snprintf(err, en, "rename %s -> %s: %s", tmp, fin, strerror(errno)); return -1; }
  fsync_path(mdir);
  *ver = v;
  return 0;
}

static void *swap_main(void *arg) {
  struct swap_ctx *s = arg;
  const struct cfg *c = s->c;
  double next = c->warmup + c->swap_every;
  int k = 0;
  while (!atomic_load(&s->stop)) {
    double now = kd_load_run_elapsed(s->run);
    if (now < next) {
      struct timespec ts = {0, 20000000};
      nanosleep(&ts, NULL);
      continue;
    }
    if (next > c->duration - 0.5) break;
    next += c->swap_every;
    char what[96];
    long long v = 0;
    int rc = 0;
    if (c->swap_cmd) {
      char env[32];
      snprintf(env, sizeof(env), "%d", k + 1);
      setenv("KD_SWAP_N", env, 1);
      int st = system(c->swap_cmd);
      rc = st == -1 || !WIFEXITED(st) || WEXITSTATUS(st) != 0 ? -1 : 0;
      if (rc) snprintf(s->err, sizeof(s->err), "--swap-cmd exited with %d", WIFEXITED(st) ? WEXITSTATUS(st) : -1);
      snprintf(what, sizeof(what), "swap #%d (command)", k + 1);
    } else {
      /* pick the k-th checkpoint of the comma-separated list */
      char list[4096], *tok, *save = NULL;
      snprintf(list, sizeof(list), "%s", c->swap_ckpt);
      int n = 0;
      for (tok = strtok_r(list, ",", &save); tok; tok = strtok_r(NULL, ",", &save)) n++;
      snprintf(list, sizeof(list), "%s", c->swap_ckpt);
      save = NULL;
      tok = strtok_r(list, ",", &save);
      for (int i = 0; i < k % n; i++) tok = strtok_r(NULL, ",", &save);
      rc = publish_copy(c->repo, c->model, tok, &v, s->err, sizeof(s->err));
      snprintf(what, sizeof(what), "publish v%lld", v);
    }
    k++;
    if (rc != 0) { s->failed++; continue; }
    s->published++;
    kd_load_run_mark(s->run, what, 1);
  }
  return NULL;
}

static int run_once(const struct cfg *c, struct kd_load_params p, const struct kd_load_pool *pool,
                    int swap, struct kd_load_result *res, struct swap_ctx *sw) {
  struct kd_load_err e = {{0}};
  struct kd_load_run *run = kd_load_run_new(p, pool, &e);
  if (!run) { fprintf(stderr, "kdrank-load: %s\n", e.msg); return -1; }
  pthread_t th;
  int have_th = 0;
  if (swap) {
    sw->c = c;
    sw->run = run;
    atomic_store(&sw->stop, 0);
    have_th = pthread_create(&th, NULL, swap_main, sw) == 0;
  }
  int rc = kd_load_run_go(run, res, &e);
  if (have_th) {
    atomic_store(&sw->stop, 1);
    pthread_join(th, NULL);
  }
  kd_load_run_free(run);
  if (rc != 0) fprintf(stderr, "kdrank-load: %s\n", e.msg);
  return rc;
}

static int write_json(const char *path, cJSON *o) {
  char *s = cJSON_Print(o);
  FILE *f = s ? fopen(path, "w") : NULL;
  int rc = f && fputs(s, f) >= 0 && fputc('\n', f) != EOF ? 0 : -1;
  if (f && fclose(f) != 0) rc = -1;
  free(s);
  if (rc) fprintf(stderr, "kdrank-load: --json %s: cannot write\n", path);
  return rc;
}

static int outputs(const struct cfg *c, const struct kd_load_result *r, struct kd_load_report_info ri, cJSON *extra) {
  int rc = 0;
  struct kd_load_err e = {{0}};
  if (!c->quiet) kd_load_report_text(stdout, r, ri);
  if (c->json) {
    cJSON *o = kd_load_report_json(r, ri);
    if (extra) cJSON_AddItemToObject(o, "check", extra);
    rc |= write_json(c->json, o);
    cJSON_Delete(o);
  } else {
    cJSON_Delete(extra);
  }
  if (c->csv && kd_load_report_csv(c->csv, r, &e) != 0) { fprintf(stderr, "kdrank-load: %s\n", e.msg); rc = -1; }
  if (c->plot && kd_load_report_plot(c->plot, r, &e) != 0) { fprintf(stderr, "kdrank-load: %s\n", e.msg); rc = -1; }
  return rc;
}

static int scenario_ramp(const struct cfg *c, const struct kd_load_pool *pool, struct kd_load_report_info ri) {
  if (!(c->ramp_start > 0 && c->ramp_step > 0 && c->ramp_max >= c->ramp_start && c->slo_p99_ms > 0 &&
        c->step_duration > c->warmup)) {
    fprintf(stderr, "kdrank-load: ramp: need --ramp-start > 0, --ramp-step > 0, --ramp-max >= start, "
                    "--slo-p99 > 0, --step-duration > --warmup\n");
    return 2;
  }
  cJSON *steps = cJSON_CreateArray();
  double best = 0;
  struct kd_load_result last = {0};
  int have_last = 0, rc = 0;
  if (!c->quiet) printf("%10s %10s %10s %10s %10s %8s  (ms; SLO p99 %.3f ms)\n", "asked", "achieved", "p50", "p99", "max", "errors", c->slo_p99_ms);
  for (double rate = c->ramp_start; rate <= c->ramp_max + 1e-9;
       rate = c->ramp_factor > 1 ? rate * c->ramp_factor : rate + c->ramp_step) {
    struct kd_load_params p = run_params(c);
    p.rate = rate;
    p.duration_s = c->step_duration;
    struct kd_load_result r;
    if (run_once(c, p, pool, 0, &r, NULL) != 0) { rc = 1; break; }
    double p99 = (double)kd_hist_percentile(r.lat, 99) / 1e6, ach = r.measured_s > 0 ? (double)r.ok / r.measured_s : 0;
    int pass = r.ok > 0 && r.errors == 0 && p99 <= c->slo_p99_ms && ach >= 0.95 * rate;
    if (!c->quiet)
      printf("%10.1f %10.1f %10.3f %10.3f %10.3f %8llu  %s\n", rate, ach, kd_hist_percentile(r.lat, 50) / 1e6, p99,
             kd_hist_max(r.lat) / 1e6, (unsigned long long)r.errors, pass ? "ok" : "FAILS SLO");
    cJSON *s = cJSON_CreateObject();
    cJSON_AddNumberToObject(s, "asked_rate", rate);
    cJSON_AddNumberToObject(s, "achieved_rate", ach);
    cJSON_AddNumberToObject(s, "p50_ms", kd_hist_percentile(r.lat, 50) / 1e6);
    cJSON_AddNumberToObject(s, "p99_ms", p99);
    cJSON_AddNumberToObject(s, "errors", (double)r.errors);
    cJSON_AddBoolToObject(s, "meets_slo", pass);
    cJSON_AddItemToArray(steps, s);
    if (have_last) kd_load_result_free(&last);
    last = r;
    have_last = 1;
    if (!pass) break;
    best = rate;
  }
  if (!c->quiet) {
    if (best > 0) printf("highest rate with p99 <= %.3f ms, no errors, >= 95%% achieved: %.1f req/s\n", c->slo_p99_ms, best);
    else printf("no rate met the SLO (p99 <= %.3f ms)\n", c->slo_p99_ms);
  }
  cJSON *chk = cJSON_CreateObject();
  cJSON_AddNumberToObject(chk, "slo_p99_ms", c->slo_p99_ms);
  cJSON_AddNumberToObject(chk, "max_rate_meeting_slo", best);
  cJSON_AddItemToObject(chk, "steps", steps);
  if (have_last) {
    struct cfg q = *c;
    q.quiet = 1;
    if (outputs(&q, &last, ri, chk) != 0) rc = 1;
    kd_load_result_free(&last);
  } else {
    cJSON_Delete(chk);
  }
  return rc ? rc : best > 0 ? 0 : 3;
}

int main(int argc, char **argv) {
  struct cfg c;
  if (parse_args(argc, argv, &c) != 0) return 2;
  int sc = !strcmp(c.scenario, "steady") ? 0 : !strcmp(c.scenario, "ramp") ? 1 : !strcmp(c.scenario, "swap") ? 2
         : !strcmp(c.scenario, "canary") ? 3 : -1;
  if (sc < 0) { fprintf(stderr, "kdrank-load: --scenario: expected steady|ramp|swap|canary, found \"%s\"\n", c.scenario); return 2; }
  if (sc == 2 && !c.swap_cmd && !(c.repo && c.swap_ckpt)) {
    fprintf(stderr, "kdrank-load: swap: needs --repo DIR and --swap-ckpt FILE[,FILE..], or --swap-cmd CMD\n");
    return 2;
  }
  if (sc == 2 && !(c.swap_every > 0 && c.swap_window > 0)) { fprintf(stderr, "kdrank-load: swap: --swap-every and --swap-window must be > 0\n"); return 2; }
  if (sc == 3 && !(c.canary_weight >= 0 && c.canary_weight <= 1)) { fprintf(stderr, "kdrank-load: canary: --canary-weight in [0, 1] is required\n"); return 2; }
  struct kd_load_req_params rq = {.target = c.target, .model = c.model, .pool = (uint32_t)c.pool, .seed = c.seed,
                                  .replay = c.replay, .pin_version = (int64_t)c.pin_version, .pin_label = c.pin_label,
                                  .timeout_s = c.deadline_ms / 1e3 + 3};
  if (parse_candidates(c.candidates, &rq) != 0) {
    fprintf(stderr, "kdrank-load: --candidates: expected N, A:B (1 <= A <= B) or exp:MEAN, found \"%s\"\n", c.candidates);
    return 2;
  }
  signal(SIGPIPE, SIG_IGN);
  struct kd_load_pool pool;
  struct kd_load_err e = {{0}};
  if (kd_load_pool_build(rq, &pool, &e) != 0) { fprintf(stderr, "kdrank-load: %s\n", e.msg); return 1; }
  struct kd_load_report_info ri = {.scenario = c.scenario, .target = c.target, .pool = &pool};
  int rc = 0;
  if (sc == 1) {
    rc = scenario_ramp(&c, &pool, ri);
  } else {
    struct kd_load_result r;
    struct swap_ctx sw;
    memset(&sw, 0, sizeof(sw));
    if (run_once(&c, run_params(&c), &pool, sc == 2, &r, &sw) != 0) {
      rc = 1;
    } else {
      cJSON *chk = NULL;
      if (sc == 2) {
        chk = cJSON_CreateObject();
        cJSON_AddNumberToObject(chk, "published", sw.published);
        cJSON_AddNumberToObject(chk, "publish_failed", sw.failed);
        if (sw.failed) cJSON_AddStringToObject(chk, "publish_error", sw.err);
        cJSON_AddNumberToObject(chk, "p99_inside_ms", kd_hist_percentile(r.lat_in, 99) / 1e6);
        cJSON_AddNumberToObject(chk, "p99_outside_ms", kd_hist_percentile(r.lat_out, 99) / 1e6);
        cJSON_AddNumberToObject(chk, "errors", (double)r.errors);
        if (!c.quiet) printf("swap: %d published, %d failed%s%s; p99 inside windows %.3f ms, outside %.3f ms, %llu errors\n",
                             sw.published, sw.failed, sw.failed ? ": " : "", sw.failed ? sw.err : "",
                             kd_hist_percentile(r.lat_in, 99) / 1e6, kd_hist_percentile(r.lat_out, 99) / 1e6,
                             (unsigned long long)r.errors);
        if (sw.failed || r.errors) rc = 3;
      } else if (sc == 3) {
        uint64_t can = 0;
        for (uint32_t i = 0; i < r.n_versions; i++)
          if (!strcmp(r.versions[i].label, c.canary_label)) can += r.versions[i].ok;
        double n = (double)r.ok, share = n > 0 ? (double)can / n : 0, w = c.canary_weight;
        double sd = n > 0 ? sqrt(w * (1 - w) / n) : 0, z = sd > 0 ? (share - w) / sd : (share == w ? 0 : INFINITY);
        /* keys are drawn per call from a large key space, so per-call routing is ~binomial(n, w);
         * pass within 4 standard deviations, or 1 point absolute when n is huge */
        int pass = n > 0 && (fabs(z) <= 4 || fabs(share - w) <= 0.01);
        chk = cJSON_CreateObject();
        cJSON_AddNumberToObject(chk, "configured_weight", w);
        cJSON_AddNumberToObject(chk, "observed_share", share);
        cJSON_AddNumberToObject(chk, "canary_ok", (double)can);
        cJSON_AddNumberToObject(chk, "z", isfinite(z) ? z : 1e9);
        cJSON_AddBoolToObject(chk, "pass", pass);
        if (!c.quiet) printf("canary: observed %.2f%% (%llu of %llu ok calls answered \"%s\") vs configured %.2f%%: z = %.2f, %s\n",
                             100 * share, (unsigned long long)can, (unsigned long long)r.ok, c.canary_label, 100 * w,
                             z, pass ? "consistent" : "NOT CONSISTENT");
        if (!pass) rc = 3;
      }
      if (outputs(&c, &r, ri, chk) != 0 && rc == 0) rc = 1;
      kd_load_result_free(&r);
    }
  }
  kd_load_pool_free(&pool);
  return rc;
}
