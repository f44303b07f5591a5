/* report.c - kdrank-load's outputs: the human summary, JSON (cJSON), the per-interval CSV and the
 * gnuplot PNGs (latency percentile spectrum; latency over time with swap/canary events marked). */
#include "load.h"

#include <cjson/cJSON.h> /* cJSON: the project's JSON library (Debian libcjson) */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>

static const double pcts[] = {50, 90, 99, 99.9, 99.99};
static const char *pct_names[] = {"p50", "p90", "p99", "p99.9", "p99.99"};
#define NPCT 5

static double ms(uint64_t ns) { return (double)ns / 1e6; }

static void text_hist(FILE *f, const char *what, const struct kd_hist *h) {
  fprintf(f, "  %-34s", what);
  if (!kd_hist_count(h)) { fprintf(f, " (no samples)\n"); return; }
  for (int i = 0; i < NPCT; i++) fprintf(f, " %s %.3f", pct_names[i], ms(kd_hist_percentile(h, pcts[i])));
  fprintf(f, " max %.3f mean %.3f ms (n=%llu)\n", ms(kd_hist_max(h)), kd_hist_mean(h) / 1e6,
          (unsigned long long)kd_hist_count(h));
}

void kd_load_report_text(void *fp, const struct kd_load_result *r, struct kd_load_report_info ri) {
  FILE *f = fp;
  fprintf(f, "kdrank-load %s: target %s, %s", ri.scenario, ri.target, r->closed ? "closed loop" : "open loop");
  if (!r->closed) fprintf(f, " %.1f req/s asked", r->asked_rate);
  fprintf(f, ", %.1f s (%.1f s warm-up excluded)\n", r->duration_s, r->warmup_s);
  if (ri.pool)
    fprintf(f, "model \"%s\" v%lld (%s): %.1f candidates/request, %.1f KB/request, %u distinct bodies\n",
            ri.pool->model, (long long)ri.pool->version, ri.pool->architecture, ri.pool->mean_cand,
            ri.pool->mean_bytes / 1024, ri.pool->n);
  uint64_t measured = r->ok + r->errors;
  double achieved = r->measured_s > 0 ? (double)r->ok / r->measured_s : 0;
  fprintf(f, "calls: %llu issued, %llu in warm-up, %llu measured: %llu ok, %llu errors (%.2f%%)\n",
          (unsigned long long)r->issued, (unsigned long long)r->warmup_calls, (unsigned long long)measured,
          (unsigned long long)r->ok, (unsigned long long)r->errors,
          measured ? 100.0 * (double)r->errors / (double)measured : 0.0);
  if (r->closed) fprintf(f, "throughput: %.1f ok/s achieved\n", achieved);
  else fprintf(f, "throughput: %.1f ok/s achieved of %.1f asked (%.1f%%)\n", achieved, r->asked_rate,
               r->asked_rate > 0 ? 100.0 * achieved / r->asked_rate : 0.0);
  fprintf(f, "latency (ms):\n");
  text_hist(f, r->closed ? "closed loop (from send)" : "from intended send (CO corrected)", r->lat);
  if (!r->closed) text_hist(f, "from actual send (uncorrected)", r->service);
  if (r->cap_hits)
    fprintf(f, "in-flight cap HIT %llu times (schedule waited %.3f s in total); max in flight %llu\n",
            (unsigned long long)r->cap_hits, r->cap_wait_s, (unsigned long long)r->max_seen_inflight);
  else fprintf(f, "max in flight %llu (cap never hit)\n", (unsigned long long)r->max_seen_inflight);
  if (r->unsent)
    fprintf(f, "%llu calls scheduled before the end were never sent (the cap stayed full): the figures "
               "above understate the latency they would have seen\n", (unsigned long long)r->unsent);
  if (r->errors) {
    fprintf(f, "errors by status:");
    for (int c = 0; c < KD_LOAD_N_STATUS; c++)
      if (r->by_status[c]) fprintf(f, " %s %llu", kd_load_status_name(c), (unsigned long long)r->by_status[c]);
    if (r->bad_response) fprintf(f, " BAD_RESPONSE %llu", (unsigned long long)r->bad_response);
    fprintf(f, "\n");
  }
  if (r->cancelled_at_end) fprintf(f, "%llu calls still in flight at the end were cancelled\n", (unsigned long long)r->cancelled_at_end);
  if (r->n_versions) {
    fprintf(f, "by version:\n");
    for (uint32_t i = 0; i < r->n_versions; i++) {
      const struct kd_load_version *v = &r->versions[i];
      char what[80];
      snprintf(what, sizeof(what), "v%lld %s: %.2f%% of ok, first at %.2f s", (long long)v->version,
               v->label[0] ? v->label : "-", r->ok ? 100.0 * (double)v->ok / (double)r->ok : 0.0, v->first_seen_s);
      text_hist(f, what, v->lat);
    }
  }
  int windows = 0;
  for (uint32_t i = 0; i < r->n_events; i++) windows += r->events[i].window;
  if (windows) {
    fprintf(f, "swap windows (%d):\n", windows);
    text_hist(f, "inside a window", r->lat_in);
    text_hist(f, "outside", r->lat_out);
  }
  for (uint32_t i = 0; i < r->n_events; i++) fprintf(f, "event at %.3f s: %s\n", r->events[i].t_s, r->events[i].what);
}

static cJSON *json_hist(const struct kd_hist *h) {
  cJSON *o = cJSON_CreateObject();
  cJSON_AddNumberToObject(o, "count", (double)kd_hist_count(h));
  for (int i = 0; i < NPCT; i++) {
    char k[32];
    snprintf(k, sizeof(k), "%s_ms", pct_names[i]);
    cJSON_AddNumberToObject(o, k, ms(kd_hist_percentile(h, pcts[i])));
  }
  cJSON_AddNumberToObject(o, "max_ms", ms(kd_hist_max(h)));
  cJSON_AddNumberToObject(o, "min_ms", ms(kd_hist_min(h)));
  cJSON_AddNumberToObject(o, "mean_ms", kd_hist_mean(h) / 1e6);
  return o;
}

void *kd_load_report_json(const struct kd_load_result *r, struct kd_load_report_info ri) {
  cJSON *o = cJSON_CreateObject();
  cJSON_AddStringToObject(o, "scenario", ri.scenario);
  cJSON_AddStringToObject(o, "target", ri.target);
  cJSON_AddStringToObject(o, "mode", r->closed ? "closed" : "open");
  cJSON_AddNumberToObject(o, "asked_rate", r->asked_rate);
  cJSON_AddNumberToObject(o, "duration_s", r->duration_s);
  cJSON_AddNumberToObject(o, "warmup_s", r->warmup_s);
  cJSON_AddNumberToObject(o, "elapsed_s", r->elapsed_s);
  if (ri.pool) {
    cJSON *m = cJSON_AddObjectToObject(o, "model");
    cJSON_AddStringToObject(m, "name", ri.pool->model);
    cJSON_AddNumberToObject(m, "version", (double)ri.pool->version);
    cJSON_AddStringToObject(m, "architecture", ri.pool->architecture);
    cJSON_AddNumberToObject(m, "mean_candidates", ri.pool->mean_cand);
    cJSON_AddNumberToObject(m, "mean_request_bytes", ri.pool->mean_bytes);
  }
  cJSON_AddNumberToObject(o, "issued", (double)r->issued);
  cJSON_AddNumberToObject(o, "warmup_calls", (double)r->warmup_calls);
  cJSON_AddNumberToObject(o, "ok", (double)r->ok);
  cJSON_AddNumberToObject(o, "errors", (double)r->errors);
  cJSON_AddNumberToObject(o, "achieved_rate", r->measured_s > 0 ? (double)r->ok / r->measured_s : 0);
  cJSON *es = cJSON_AddObjectToObject(o, "errors_by_status");
  for (int c = 0; c < KD_LOAD_N_STATUS; c++)
    if (r->by_status[c]) cJSON_AddNumberToObject(es, kd_load_status_name(c), (double)r->by_status[c]);
  if (r->bad_response) cJSON_AddNumberToObject(es, "BAD_RESPONSE", (double)r->bad_response);
  cJSON_AddNumberToObject(o, "cancelled_at_end", (double)r->cancelled_at_end);
  cJSON_AddNumberToObject(o, "inflight_cap_hits", (double)r->cap_hits);
  cJSON_AddNumberToObject(o, "inflight_cap_wait_s", r->cap_wait_s);
  cJSON_AddNumberToObject(o, "max_inflight", (double)r->max_seen_inflight);
  cJSON_AddNumberToObject(o, "unsent_at_end", (double)r->unsent);
  cJSON_AddItemToObject(o, "latency", json_hist(r->lat));
  cJSON_AddItemToObject(o, "service_time", json_hist(r->service));
  cJSON_AddItemToObject(o, "latency_in_windows", json_hist(r->lat_in));
  cJSON_AddItemToObject(o, "latency_outside_windows", json_hist(r->lat_out));
  cJSON *vs = cJSON_AddArrayToObject(o, "versions");
  for (uint32_t i = 0; i < r->n_versions; i++) {
    cJSON *v = json_hist(r->versions[i].lat);
    cJSON_AddNumberToObject(v, "version", (double)r->versions[i].version);
    cJSON_AddStringToObject(v, "label", r->versions[i].label);
    cJSON_AddNumberToObject(v, "ok", (double)r->versions[i].ok);
    cJSON_AddNumberToObject(v, "first_seen_s", r->versions[i].first_seen_s);
    cJSON_AddItemToArray(vs, v);
  }
  cJSON_AddNumberToObject(o, "other_versions", (double)r->other_versions);
  cJSON *ev = cJSON_AddArrayToObject(o, "events");
  for (uint32_t i = 0; i < r->n_events; i++) {
    cJSON *e = cJSON_CreateObject();
    cJSON_AddNumberToObject(e, "t_s", r->events[i].t_s);
    cJSON_AddStringToObject(e, "what", r->events[i].what);
    cJSON_AddBoolToObject(e, "window", r->events[i].window);
    cJSON_AddItemToArray(ev, e);
  }
  cJSON *iv = cJSON_AddArrayToObject(o, "intervals");
  for (uint32_t i = 0; i < r->n_intervals; i++) {
    const struct kd_load_interval *x = &r->iv[i];
    if (!x->asked && !x->ok && !x->err) continue;
    cJSON *e = cJSON_CreateObject();
    cJSON_AddNumberToObject(e, "t_s", i);
    cJSON_AddNumberToObject(e, "asked", (double)x->asked);
    cJSON_AddNumberToObject(e, "ok", (double)x->ok);
    cJSON_AddNumberToObject(e, "err", (double)x->err);
    if (x->lat) {
      cJSON_AddNumberToObject(e, "p50_ms", ms(kd_hist_percentile(x->lat, 50)));
      cJSON_AddNumberToObject(e, "p99_ms", ms(kd_hist_percentile(x->lat, 99)));
      cJSON_AddNumberToObject(e, "max_ms", ms(kd_hist_max(x->lat)));
    }
    cJSON_AddItemToArray(iv, e);
  }
  return o;
}

int kd_load_report_csv(const char *path, const struct kd_load_result *r, struct kd_load_err *e) {
  FILE *f = fopen(path, "w");
  if (!f) return kd_load_errf(e, "--csv %s: cannot create", path);
  fprintf(f, "second,warmup,asked,ok,err,p50_ms,p90_ms,p99_ms,p999_ms,max_ms\n");
  for (uint32_t i = 0; i < r->n_intervals; i++) {
    const struct kd_load_interval *x = &r->iv[i];
    if (!x->asked && !x->ok && !x->err) continue;
    fprintf(f, "%u,%d,%llu,%llu,%llu", i, (double)i < r->warmup_s, (unsigned long long)x->asked,
            (unsigned long long)x->ok, (unsigned long long)x->err);
    if (x->lat)
      fprintf(f, ",%.4f,%.4f,%.4f,%.4f,%.4f\n", ms(kd_hist_percentile(x->lat, 50)), ms(kd_hist_percentile(x->lat, 90)),
              ms(kd_hist_percentile(x->lat, 99)), ms(kd_hist_percentile(x->lat, 99.9)), ms(kd_hist_max(x->lat)));
    else fprintf(f, ",,,,,\n");
  }
  if (fclose(f) != 0) return kd_load_errf(e, "--csv %s: write failed", path);
  return 0;
}

int kd_load_report_plot(const char *prefix, const struct kd_load_result *r, struct kd_load_err *e) {
  char spec[1024], series[1024];
  snprintf(spec, sizeof(spec), "%s-spectrum.dat", prefix);
  snprintf(series, sizeof(series), "%s-latency.dat", prefix);
  FILE *f = fopen(spec, "w");
  if (!f) return kd_load_errf(e, "--plot %s: cannot create", spec);
  /* HDR-style spectrum: percentile p at x = 1/(1-p), halving the remaining tail each step */
  fprintf(f, "# percentile x=1/(1-p) corrected_ms uncorrected_ms\n");
  for (int k = 0; k <= 40 && kd_hist_count(r->lat); k++) {
    double q = 1.0 - pow(0.5, k / 2.0), p = 100.0 * q;
    if (1.0 / (1.0 - q) > (double)kd_hist_count(r->lat)) break;
    fprintf(f, "%.6f %.3f %.4f %.4f\n", p, 1.0 / (1.0 - q), ms(kd_hist_percentile(r->lat, p)),
            ms(kd_hist_percentile(r->service, p)));
  }
  fclose(f);
  f = fopen(series, "w");
  if (!f) return kd_load_errf(e, "--plot %s: cannot create", series);
  fprintf(f, "# second p50_ms p99_ms max_ms\n");
  for (uint32_t i = 0; i < r->n_intervals; i++)
    if (r->iv[i].lat)
      fprintf(f, "%u.5 %.4f %.4f %.4f\n", i, ms(kd_hist_percentile(r->iv[i].lat, 50)),
              ms(kd_hist_percentile(r->iv[i].lat, 99)), ms(kd_hist_max(r->iv[i].lat)));
  fclose(f);
  FILE *g = popen("gnuplot 2>&1", "w");
  if (!g) return kd_load_errf(e, "--plot: cannot run gnuplot (apt-get install gnuplot-nox)");
  fprintf(g, "set terminal pngcairo size 900,500 noenhanced\nset grid\n");
  fprintf(g, "set output '%s-spectrum.png'\nset title 'kdrank-load: latency by percentile'\n", prefix);
  fprintf(g, "set logscale x\nset xlabel 'percentile'\nset ylabel 'latency (ms)'\n");
  /* tic labels are gnuplot format strings: '%%%%' here is a literal percent sign there */
  fprintf(g, "set xtics ('50%%%%' 2, '90%%%%' 10, '99%%%%' 100, '99.9%%%%' 1000, '99.99%%%%' 10000, '99.999%%%%' 100000)\n");
  fprintf(g, "plot '%s' using 2:3 with linespoints title '%s'", spec,
          r->closed ? "closed loop" : "from intended send (corrected)");
  if (!r->closed) fprintf(g, ", '' using 2:4 with linespoints title 'from actual send (uncorrected)'");
  fprintf(g, "\nunset logscale x\nset xtics auto\n");
  fprintf(g, "set output '%s-latency.png'\nset title 'kdrank-load: latency over time (1 s intervals)'\n", prefix);
  fprintf(g, "set xlabel 'time since start (s)'\nset logscale y\n");
  for (uint32_t i = 0; i < r->n_events; i++) {
    fprintf(g, "set arrow from %.3f, graph 0 to %.3f, graph 1 nohead lc rgb '%s' dt 2\n", r->events[i].t_s,
            r->events[i].t_s, r->events[i].window ? "red" : "dark-green");
    char what[sizeof(r->events[i].what)];
    snprintf(what, sizeof(what), "%s", r->events[i].what);
    for (char *c = what; *c; c++) /* labels come from the server: keep gnuplot's quoting intact */
      if (*c == '"' || *c == '\\' || *c == '\n' || *c == '\'') *c = '_';
    fprintf(g, "set label \"%s\" at %.3f, graph 0.97 rotate by 90 right font ',7'\n", what, r->events[i].t_s);
  }
  if (r->warmup_s > 0) fprintf(g, "set object rect from 0, graph 0 to %.3f, graph 1 fc rgb '#eeeeee' behind\n", r->warmup_s);
  fprintf(g, "plot '%s' using 1:2 with linespoints title 'p50', '' using 1:3 with linespoints title 'p99', "
             "'' using 1:4 with lines title 'max'\n", series);
  int st = pclose(g);
  if (st == -1 || !WIFEXITED(st) || WEXITSTATUS(st) != 0)
    return kd_load_errf(e, "--plot: gnuplot failed (exit %d)", WIFEXITED(st) ? WEXITSTATUS(st) : -1);
  return 0;
}
