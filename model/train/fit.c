/* fit.c - the training run: data in, arch from schema + widths, epochs of shuffled mini-batches,
 * evaluation on the held-out set each epoch, early stopping, the best model kept and written as a
 * checkpoint (atomically) with provenance, progress on a terminal, and a JSON run summary. */
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <cjson/cJSON.h>

#include "train_internal.h"
#include "kdrank_loader.h"

void kd_fit_defaults(struct kd_fit_config *c) {
  memset(c, 0, sizeof *c);
  c->arch = "ref-student";
  c->n_tower = -1;
  c->act_clip = -1;
  c->epochs = 5;
  c->batch = 512;
  c->threads = 2;
  c->seed = 1;
  c->opt = kd_opt_defaults(KD_OPT_ADAM);
  for (int k = 0; k < KD_MAX_TASKS; k++) c->task_weight[k] = 1.0f;
  c->load.max_bad = 0;
  c->load.use_cache = 1;
  c->progress = -1;
}

int kd_arch_from_schema(const struct kd_schema *s, const struct kd_fit_config *c, struct kd_arch *out,
                        struct kd_err *e) {
  struct kd_arch p;
  int rc = kd_arch_preset(c->arch ? c->arch : "ref-student", &p, e);
  if (rc) return rc;
  *out = s->arch;
  snprintf(out->name, sizeof out->name, "%s", c->n_shared || c->n_tower >= 0 ? "custom" : p.name);
  out->n_shared = p.n_shared;
  memcpy(out->shared, p.shared, sizeof p.shared);
  out->n_tower = p.n_tower;
  memcpy(out->tower, p.tower, sizeof p.tower);
  out->act_clip = p.act_clip;
  if (c->n_shared) {
    out->n_shared = c->n_shared;
    memcpy(out->shared, c->shared, sizeof c->shared);
  }
  if (c->n_tower >= 0) {
    out->n_tower = (uint32_t)c->n_tower;
    memcpy(out->tower, c->tower, sizeof c->tower);
  }
  if (c->act_clip >= 0) out->act_clip = c->act_clip;
  if (c->emb_dim)
    for (uint32_t f = 0; f < out->n_features; f++)
      if (out->features[f].kind == KD_FEAT_SPARSE) out->features[f].dim = c->emb_dim;
  return kd_arch_validate(out, e);
}

/* The early-stopping metric of an epoch; sets *higher when larger is better. */
static int kd_pick_metric(const char *spec, const struct kd_arch *a, const struct kd_task_metrics *tm,
                          double eval_loss, double *val, int *higher, struct kd_err *e) {
  if (!spec || !strcmp(spec, "loss")) {
    *val = eval_loss;
    *higher = 0;
    return KD_OK;
  }
  const char *colon = strchr(spec, ':');
  if (!colon) return kd_err_set(e, KD_ERR_INVALID, "--early-metric '%s': expected loss or auc|logloss|rmse:<task>", spec);
  char task[KD_NAME_MAX];
  snprintf(task, sizeof task, "%s", colon + 1);
  int k = kd_arch_find_task(a, task);
  if (k < 0) return kd_err_set(e, KD_ERR_NOT_FOUND, "--early-metric '%s': no task '%s'", spec, task);
  size_t ml = (size_t)(colon - spec);
  if (ml == 3 && !strncmp(spec, "auc", 3)) {
    *val = tm[k].auc;
    *higher = 1;
  } else if (ml == 7 && !strncmp(spec, "logloss", 7)) {
    *val = tm[k].logloss;
    *higher = 0;
  } else if (ml == 4 && !strncmp(spec, "rmse", 4)) {
    *val = tm[k].rmse;
    *higher = 0;
  } else {
    return kd_err_set(e, KD_ERR_INVALID, "--early-metric '%s': expected auc, logloss or rmse before ':'", spec);
  }
  return KD_OK;
}

static cJSON *kd_metrics_json(const struct kd_arch *a, const struct kd_task_metrics *tm, double eval_loss) {
  cJSON *o = cJSON_CreateObject();
  cJSON_AddNumberToObject(o, "loss", eval_loss);
  for (uint32_t k = 0; k < a->n_tasks; k++) {
    cJSON *t = cJSON_AddObjectToObject(o, a->tasks[k].name);
    cJSON_AddNumberToObject(t, "n", (double)tm[k].n);
    if (a->tasks[k].type == KD_TASK_BINARY) {
      cJSON_AddNumberToObject(t, "auc", isnan(tm[k].auc) ? -1 : tm[k].auc);
      cJSON_AddNumberToObject(t, "logloss", tm[k].logloss);
    } else {
      cJSON_AddNumberToObject(t, "rmse", tm[k].rmse);
    }
    cJSON_AddNumberToObject(t, "calibration", isnan(tm[k].calib) ? -1 : tm[k].calib);
    cJSON_AddNumberToObject(t, "mean_label", tm[k].mean_label);
    cJSON_AddNumberToObject(t, "mean_pred", tm[k].mean_pred);
  }
  return o;
}

static const char *kd_opt_name(uint32_t k) {
  static const char *n[] = {"adam", "adagrad", "clippy", "sgd"};
  return k < 4 ? n[k] : "?";
}
static const char *kd_sched_name(uint32_t k) {
  static const char *n[] = {"constant", "cosine", "linear", "invsqrt"};
  return k < 4 ? n[k] : "?";
}

static cJSON *kd_config_json(const struct kd_fit_config *c, const struct kd_arch *a) {
  cJSON *o = cJSON_CreateObject();
  cJSON_AddStringToObject(o, "train", c->train_path);
  cJSON_AddStringToObject(o, "test", c->test_path ? c->test_path : "");
  cJSON_AddStringToObject(o, "schema", c->schema_path);
  cJSON_AddStringToObject(o, "arch", a->name);
  cJSON *sh = cJSON_AddArrayToObject(o, "shared");
  for (uint32_t l = 0; l < a->n_shared; l++) cJSON_AddItemToArray(sh, cJSON_CreateNumber(a->shared[l]));
  cJSON *tw = cJSON_AddArrayToObject(o, "tower");
  for (uint32_t j = 0; j < a->n_tower; j++) cJSON_AddItemToArray(tw, cJSON_CreateNumber(a->tower[j]));
  cJSON_AddNumberToObject(o, "act_clip", a->act_clip);
  cJSON_AddNumberToObject(o, "params", (double)kd_arch_numel(a));
  cJSON_AddNumberToObject(o, "epochs", c->epochs);
  cJSON_AddNumberToObject(o, "batch", c->batch);
  cJSON_AddNumberToObject(o, "threads", c->threads);
  cJSON_AddNumberToObject(o, "seed", (double)c->seed);
  cJSON *op = cJSON_AddObjectToObject(o, "optimizer");
  cJSON_AddStringToObject(op, "kind", kd_opt_name(c->opt.kind));
  cJSON_AddNumberToObject(op, "lr", c->opt.lr);
  cJSON_AddStringToObject(op, "schedule", kd_sched_name(c->opt.sched));
  cJSON_AddNumberToObject(op, "warmup", (double)c->opt.warmup);
  cJSON_AddNumberToObject(op, "weight_decay", c->opt.weight_decay);
  cJSON_AddNumberToObject(op, "grad_clip", c->opt.grad_clip);
  if (c->opt.kind == KD_OPT_CLIPPY) {
    cJSON_AddNumberToObject(op, "clippy_rel", c->opt.clippy_rel);
    cJSON_AddNumberToObject(op, "clippy_acc", c->opt.clippy_acc);
    cJSON_AddNumberToObject(op, "clippy_abs", c->opt.clippy_abs);
  }
  cJSON *tw2 = cJSON_AddObjectToObject(o, "task_weights");
  for (uint32_t k = 0; k < a->n_tasks; k++) cJSON_AddNumberToObject(tw2, a->tasks[k].name, c->task_weight[k]);
  cJSON_AddStringToObject(o, "early_metric", c->early_metric ? c->early_metric : "loss");
  cJSON_AddNumberToObject(o, "patience", c->patience);
  return o;
}

static int kd_write_ckpt(const char *path, const struct kd_model *m, const char *fp, const char *metrics,
                         const char *config, struct kd_err *e) {
  struct kd_meta meta[5];
  meta[0] = (struct kd_meta){.key = "provenance.trainer_version", .type = KD_META_STR, .v.s = KD_TRAIN_VERSION};
  meta[1] = (struct kd_meta){.key = "provenance.data_fingerprint", .type = KD_META_STR, .v.s = fp};
  meta[2] = (struct kd_meta){.key = "provenance.metrics", .type = KD_META_STR, .v.s = metrics};
  meta[3] = (struct kd_meta){.key = "provenance.config", .type = KD_META_STR, .v.s = config};
  meta[4] = (struct kd_meta){.key = "provenance.created_unix", .type = KD_META_I64, .v.i = (int64_t)time(NULL)};
  return kd_ckpt_write(path, m, meta, 5, e);
}

static void kd_progress(const struct kd_fit_config *c, int tty, uint32_t epoch, uint64_t done, uint64_t total,
                        double t0, double run_loss) {
  double el = kd_now() - t0, rate = el > 0 ? (double)done / el : 0;
  double eta = rate > 0 ? (double)(total - done) / rate : 0;
  if (tty) {
    int w = 30, fill = total ? (int)((double)w * (double)done / (double)total) : 0;
    char bar[64];
    for (int i = 0; i < w; i++) bar[i] = i < fill ? '#' : '.';
    bar[w] = 0;
    fprintf(stderr, "\repoch %u [%s] %5.1f%% %9.0f ex/s ETA %4.0fs loss %.4f ", epoch + 1, bar,
            total ? 100.0 * (double)done / (double)total : 100.0, rate, eta, run_loss);
  } else {
    fprintf(stderr, "epoch %u: %llu/%llu examples, %.0f ex/s, ETA %.0fs, loss %.4f\n", epoch + 1,
            (unsigned long long)done, (unsigned long long)total, rate, eta, run_loss);
  }
  (void)c;
}

int kd_fit_run(struct kd_fit_config *c, struct kd_err *e) {
  struct kd_schema s;
  struct kd_table tr = {0}, te = {0};
  struct kd_model *m = NULL;
  kd_trainer *t = NULL;
  uint64_t *order = NULL, *test_rows = NULL;
  float *logits = NULL;
  void *best = NULL;
  cJSON *summary = NULL, *epochs_j = NULL, *best_metrics = NULL;
  char *best_metrics_txt = NULL, *config_txt = NULL;
  int rc;
  if (!c->train_path || !c->schema_path)
    return kd_err_set(e, KD_ERR_INVALID, "fit: --train and --schema are required");
  if (c->batch < 1 || c->epochs < 1)
    return kd_err_set(e, KD_ERR_INVALID, "fit: --batch and --epochs must be >= 1");
  if ((rc = kd_schema_load(c->schema_path, &s, e))) return rc;
  struct kd_load_report rep;
  if ((rc = kd_table_load(c->train_path, &s, c->load, &tr, &rep, e))) goto done;
  if (!c->quiet) {
    fprintf(stderr, "train: %llu rows from %s%s", (unsigned long long)tr.n, c->train_path,
            rep.from_cache ? " (cache)" : "");
    if (rep.bad) fprintf(stderr, ", %llu bad rows skipped", (unsigned long long)rep.bad);
    fputc('\n', stderr);
    for (uint64_t i = 0; i < rep.bad && i < KD_BAD_LINES_KEPT; i++)
      fprintf(stderr, "  %s:%llu: %s\n", c->train_path, (unsigned long long)rep.bad_line[i], rep.bad_msg[i]);
  }
  if (c->test_path) {
    if ((rc = kd_table_load(c->test_path, &s, c->load, &te, &rep, e))) goto done;
    if (!c->quiet)
      fprintf(stderr, "test: %llu rows from %s%s\n", (unsigned long long)te.n, c->test_path,
              rep.from_cache ? " (cache)" : "");
  }
  struct kd_arch a;
  if ((rc = kd_arch_from_schema(&s, c, &a, e))) goto done;
  if (!(m = kd_model_alloc(&a, e))) {
    rc = e ? e->code : KD_ERR_NOMEM;
    goto done;
  }
  kd_model_init_random(m, c->seed);
  struct kd_train_params tp;
  memset(&tp, 0, sizeof tp);
  tp.threads = c->threads;
  tp.max_batch = c->batch;
  tp.opt = c->opt;
  uint64_t steps_per_epoch = (tr.n + c->batch - 1) / c->batch;
  if (tp.opt.total_steps == 0) tp.opt.total_steps = steps_per_epoch * c->epochs;
  if (c->max_steps && tp.opt.total_steps > c->max_steps) tp.opt.total_steps = c->max_steps;
  for (uint32_t k = 0; k < a.n_tasks; k++) {
    struct kd_loss_term *lt = &tp.loss[tp.n_loss++];
    lt->task = lt->target = k;
    lt->source = KD_TARGET_LABEL;
    lt->weight = c->task_weight[k];
    lt->kind = a.tasks[k].type == KD_TASK_BINARY ? KD_LOSS_BCE
               : c->huber_delta[k] > 0            ? KD_LOSS_HUBER
                                                  : KD_LOSS_MSE;
    lt->delta = c->huber_delta[k];
  }
  if (!(t = kd_trainer_create(m, &tp, e))) {
    rc = e ? e->code : KD_ERR_NOMEM;
    goto done;
  }
  order = malloc(tr.n * sizeof *order);
  best = malloc(m->owned_bytes ? m->owned_bytes : 1);
  if (te.n) {
    test_rows = malloc(te.n * sizeof *test_rows);
    logits = malloc(te.n * a.n_tasks * sizeof *logits);
  }
  if (!order || !best || (te.n && (!test_rows || !logits))) {
    rc = kd_err_set(e, KD_ERR_NOMEM, "out of memory");
    goto done;
  }
  for (uint64_t i = 0; i < te.n; i++) test_rows[i] = i;
  char fp[64];
  snprintf(fp, sizeof fp, "%016llx-%016llx", (unsigned long long)tr.fingerprint,
           (unsigned long long)te.fingerprint);
  cJSON *cfg = kd_config_json(c, &a);
  config_txt = cJSON_PrintUnformatted(cfg);
  summary = cJSON_CreateObject();
  cJSON_AddStringToObject(summary, "trainer_version", KD_TRAIN_VERSION);
  cJSON_AddStringToObject(summary, "data_fingerprint", fp);
  cJSON_AddItemToObject(summary, "config", cfg);
  epochs_j = cJSON_AddArrayToObject(summary, "epochs");
  int tty = c->progress < 0 ? isatty(2) : c->progress;
  double best_val = NAN;
  int best_epoch = -1, higher = 0;
  uint32_t since_best = 0;
  uint64_t seen = 0;
  double train_time = 0;
  struct kd_task_metrics tm[KD_MAX_TASKS];
  for (uint32_t ep = 0; ep < c->epochs; ep++) {
    for (uint64_t i = 0; i < tr.n; i++) order[i] = i;
    struct kd_rng rng = {c->seed * 0x9E3779B97F4A7C15ull + ep + 1};
    kd_shuffle_u64(order, tr.n, &rng);
    double t0 = kd_now(), last_print = t0, run_loss = NAN;
    uint64_t ep_done = 0;
    for (uint64_t s0 = 0; s0 < tr.n; s0 += c->batch) {
      if (c->max_steps && kd_trainer_steps(t) >= c->max_steps) break;
      uint32_t n = (uint32_t)(tr.n - s0 < c->batch ? tr.n - s0 : c->batch);
      double loss;
      if ((rc = kd_trainer_step(t, &tr, order + s0, n, &loss, NULL, e))) goto done;
      run_loss = isnan(run_loss) ? loss : 0.98 * run_loss + 0.02 * loss;
      ep_done += n;
      double now = kd_now();
      if (!c->quiet && (now - last_print > (tty ? 0.2 : 10.0))) {
        kd_progress(c, tty, ep, ep_done, tr.n, t0, run_loss);
        last_print = now;
      }
    }
    double dt = kd_now() - t0;
    train_time += dt;
    seen += ep_done;
    if (!c->quiet) {
      kd_progress(c, tty, ep, ep_done, tr.n, t0, run_loss);
      if (tty) fputc('\n', stderr);
    }
    /* evaluation */
    double eval_loss = NAN;
    cJSON *ej = cJSON_CreateObject();
    cJSON_AddNumberToObject(ej, "epoch", ep + 1);
    cJSON_AddNumberToObject(ej, "train_loss", run_loss);
    cJSON_AddNumberToObject(ej, "examples_per_sec", dt > 0 ? (double)ep_done / dt : 0);
    if (te.n) {
      if ((rc = kd_trainer_predict(t, &te, test_rows, te.n, logits, e))) {
        cJSON_Delete(ej);
        goto done;
      }
      eval_loss = 0;
      for (uint32_t k = 0; k < a.n_tasks; k++) {
        kd_metrics_task(a.tasks[k].type, logits + k, a.n_tasks, te.labels + k, a.n_tasks, te.n, &tm[k]);
        double sl = 0;
        uint64_t cnt = 0;
        for (uint64_t i = 0; i < te.n; i++) {
          float y = te.labels[i * a.n_tasks + k], d;
          if (isnan(y)) continue;
          sl += kd_loss_eval(tp.loss[k].kind, tp.loss[k].delta, logits[i * a.n_tasks + k], y, &d);
          cnt++;
        }
        eval_loss += c->task_weight[k] * (cnt ? sl / (double)cnt : 0);
      }
      cJSON_AddItemToObject(ej, "test", kd_metrics_json(&a, tm, eval_loss));
      if (!c->quiet) {
        fprintf(stderr, "epoch %u: test loss %.5f", ep + 1, eval_loss);
        for (uint32_t k = 0; k < a.n_tasks; k++) {
          if (a.tasks[k].type == KD_TASK_BINARY)
            fprintf(stderr, " | %s auc %.4f logloss %.4f calib %.3f", a.tasks[k].name, tm[k].auc,
                    tm[k].logloss, tm[k].calib);
          else
            fprintf(stderr, " | %s rmse %.4f calib %.3f", a.tasks[k].name, tm[k].rmse, tm[k].calib);
        }
        fputc('\n', stderr);
      }
    }
    cJSON_AddItemToArray(epochs_j, ej);
    double val = NAN;
    if (te.n) {
      if ((rc = kd_pick_metric(c->early_metric, &a, tm, eval_loss, &val, &higher, e))) goto done;
    } else {
      val = run_loss;
      higher = 0;
    }
    int improved = best_epoch < 0 || (!isnan(val) && (isnan(best_val) || (higher ? val > best_val : val < best_val)));
    if (improved) {
      best_val = val;
      best_epoch = (int)ep;
      since_best = 0;
      memcpy(best, m->owned, m->owned_bytes);
      cJSON_Delete(best_metrics);
      best_metrics = te.n ? kd_metrics_json(&a, tm, eval_loss) : cJSON_CreateObject();
      cJSON_AddNumberToObject(best_metrics, "epoch", ep + 1);
      free(best_metrics_txt);
      best_metrics_txt = cJSON_PrintUnformatted(best_metrics);
      if (c->out_path && (rc = kd_write_ckpt(c->out_path, m, fp, best_metrics_txt, config_txt, e))) goto done;
    } else if (c->patience && ++since_best >= c->patience) {
      if (!c->quiet) fprintf(stderr, "early stop: no improvement for %u epochs\n", c->patience);
      break;
    }
    if (c->max_steps && kd_trainer_steps(t) >= c->max_steps) break;
  }
  memcpy(m->owned, best, m->owned_bytes); /* the model ends as the best epoch's */
  c->train_seconds = train_time;
  c->examples_per_sec = train_time > 0 ? (double)seen / train_time : 0;
  cJSON_AddNumberToObject(summary, "best_epoch", best_epoch + 1);
  cJSON_AddItemToObject(summary, "best", best_metrics);
  best_metrics = NULL;
  cJSON_AddNumberToObject(summary, "train_seconds", train_time);
  cJSON_AddNumberToObject(summary, "examples_per_sec", c->examples_per_sec);
  cJSON_AddNumberToObject(summary, "steps", (double)kd_trainer_steps(t));
  if (c->out_path) cJSON_AddStringToObject(summary, "checkpoint", c->out_path);
  if (!c->quiet && c->out_path) fprintf(stderr, "best epoch %d written to %s\n", best_epoch + 1, c->out_path);
  if (c->summary_path) {
    char *txt = cJSON_Print(summary);
    rc = txt ? kd_write_file_atomic(c->summary_path, txt, strlen(txt), e) : kd_err_set(e, KD_ERR_NOMEM, "out of memory");
    free(txt);
    if (rc) goto done;
  }
  rc = KD_OK;
done:
  cJSON_Delete(summary);
  cJSON_Delete(best_metrics);
  free(best_metrics_txt);
  free(config_txt);
  kd_trainer_free(t);
  kd_model_free(m);
  kd_table_free(&tr);
  kd_table_free(&te);
  free(order);
  free(test_rows);
  free(logits);
  free(best);
  return rc;
}
