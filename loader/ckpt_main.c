/* ckpt_main.c - kdrank-ckpt: make, inspect, verify and score checkpoints from the command line.
 *   kdrank-ckpt random --preset NAME [--seed N] [--name MODEL] [--meta KEY=VALUE]... -o FILE
 *   kdrank-ckpt inspect FILE [--json]
 *   kdrank-ckpt verify FILE
 *   kdrank-ckpt score FILE --request REQ.json [--oracle] [--tasks a,b] [--kernel auto|scalar|avx2]
 *   kdrank-ckpt request (--preset NAME | --model FILE) --candidates N [--seed S] [--k K] [-o OUT]
 *   (--preset also accepts a checkpoint path)
 * `score` is the ground truth the server's answers are checked against. Exit status: 0 success,
 * 1 a rejected input (bad file, bad request), 2 bad usage. */
#include <errno.h>
#include <inttypes.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include <cjson/cJSON.h>

#include "ckpt_request.h"
#include "kdrank_loader.h"

static const char *usage_text =
    "usage:\n"
    "  kdrank-ckpt random --preset NAME [--seed N] [--name MODEL] [--meta KEY=VALUE]... -o FILE\n"
    "      writes a valid checkpoint with random weights (presets: %s)\n"
    "  kdrank-ckpt inspect FILE [--json]      format, architecture, provenance, tensor table\n"
    "  kdrank-ckpt verify FILE                exit 0 and \"OK ...\", or non-zero and the reason\n"
    "  kdrank-ckpt score FILE --request REQ.json [--oracle] [--tasks a,b] [--kernel auto|scalar|avx2]\n"
    "      scores a ScoreRequest given as proto3 JSON; prints {\"model\",\"tasks\",\"scores\"}\n"
    "      (--oracle: the scalar reference path; default: the fast path)\n"
    "  kdrank-ckpt request (--preset NAME | --model FILE) --candidates N [--seed S] [--k K] [-o OUT]\n"
    "      writes a random valid request for the model (k ids per sparse row; --preset also takes a FILE)\n";

static void usage(void) { fprintf(stderr, usage_text, kd_arch_preset_names()); }

/* CLI-only exit helpers. */
static int die_usage(const char *fmt, const char *arg) {
  fprintf(stderr, "kdrank-ckpt: ");
  fprintf(stderr, fmt, arg);
  fputc('\n', stderr);
  usage();
  return 2;
}
static int die_err(const struct kd_err *e) {
  fprintf(stderr, "kdrank-ckpt: error: %s\n", e->msg);
  return 1;
}

static int parse_u64(const char *s, uint64_t *out) {
  char *end;
  errno = 0;
  if (!s || !*s || *s == '-') return -1;
  unsigned long long v = strtoull(s, &end, 0);
  if (errno || *end) return -1;
  *out = v;
  return 0;
}

/* ------------------------------------------------------------------------------------------ */

#define MAX_USER_META 64

static int cmd_random(int argc, char **argv) {
  const char *preset = NULL, *out = NULL, *name = NULL;
  uint64_t seed = 1;
  struct kd_meta meta[MAX_USER_META + 8];
  char *owned[MAX_USER_META];
  uint32_t n_meta = 0, n_owned = 0;
  char fp[64];
  for (int i = 0; i < argc; i++) {
    if (!strcmp(argv[i], "--preset") && i + 1 < argc) preset = argv[++i];
    else if (!strcmp(argv[i], "--seed") && i + 1 < argc) {
      if (parse_u64(argv[++i], &seed)) return die_usage("--seed: expected an unsigned integer, found \"%s\"", argv[i]);
    } else if (!strcmp(argv[i], "-o") && i + 1 < argc) out = argv[++i];
    else if (!strcmp(argv[i], "--name") && i + 1 < argc) name = argv[++i];
    else if (!strcmp(argv[i], "--meta") && i + 1 < argc) {
      if (n_owned == MAX_USER_META) return die_usage("--meta: at most 64, found more (%s)", argv[i + 1]);
      char *kv = strdup(argv[++i]);
      char *eq = kv ? strchr(kv, '=') : NULL;
      if (!eq) { free(kv); return die_usage("--meta: expected KEY=VALUE, found \"%s\"", argv[i]); }
      *eq = 0;
      owned[n_owned++] = kv;
    } else return die_usage("random: unknown or incomplete argument \"%s\"", argv[i]);
  }
  int rc = 2;
  struct kd_model *m = NULL;
  if (!preset || !out) {
    rc = die_usage("random: %s", "--preset and -o are required");
    goto done;
  }
  struct kd_err e = {0};
  struct kd_arch a;
  if (kd_arch_preset(preset, &a, &e) != KD_OK) { rc = die_err(&e); goto done; }
  m = kd_model_alloc(&a, &e);
  if (!m) { rc = die_err(&e); goto done; }
  kd_model_init_random(m, seed);
  /* Default provenance; --meta entries with the same key replace them. */
  snprintf(fp, sizeof fp, "random:seed=%" PRIu64, seed);
  static const char *defk[] = {"provenance.trainer_version", "provenance.teacher_id", "provenance.teacher_version",
                               "provenance.distill_mode", "provenance.data_fingerprint", "provenance.metrics"};
  const char *defv[] = {"kdrank-ckpt random " KD_VERSION, "", "", "none", fp, "{}"};
  for (size_t d = 0; d < sizeof defk / sizeof defk[0]; d++) {
    int overridden = 0;
    for (uint32_t j = 0; j < n_owned; j++) overridden |= !strcmp(owned[j], defk[d]);
    if (overridden) continue;
    meta[n_meta].key = defk[d];
    meta[n_meta].type = KD_META_STR;
    meta[n_meta++].v.s = defv[d];
  }
  if (name) {
    meta[n_meta].key = "general.name";
    meta[n_meta].type = KD_META_STR;
    meta[n_meta++].v.s = name;
  }
  for (uint32_t j = 0; j < n_owned; j++) {
    meta[n_meta].key = owned[j];
    meta[n_meta].type = KD_META_STR;
    meta[n_meta++].v.s = owned[j] + strlen(owned[j]) + 1;
  }
  if (kd_ckpt_write(out, m, meta, n_meta, &e) != KD_OK) { rc = die_err(&e); goto done; }
  printf("wrote %s: preset %s, seed %" PRIu64 ", %" PRIu64 " parameters\n", out, preset, seed, kd_arch_numel(&a));
  rc = 0;
done:
  kd_model_free(m);
  for (uint32_t j = 0; j < n_owned; j++) free(owned[j]);
  return rc;
}

/* ------------------------------------------------------------------------------------------ */

static void meta_value_str(const struct kd_meta *m, char *buf, size_t cap) {
  switch (m->type) {
  case KD_META_U32: case KD_META_U64: snprintf(buf, cap, "%" PRIu64, m->v.u); break;
  case KD_META_I64: snprintf(buf, cap, "%" PRId64, m->v.i); break;
  case KD_META_F32: snprintf(buf, cap, "%.9g", m->v.f); break;
  case KD_META_F64: snprintf(buf, cap, "%.17g", m->v.f); break;
  case KD_META_BOOL: snprintf(buf, cap, "%s", m->v.u ? "true" : "false"); break;
  case KD_META_STR: /* long values (metrics JSON) are cut; inspect --json shows them whole */
    if (strlen(m->v.s) > 200) snprintf(buf, cap, "\"%.180s...\" (%zu bytes)", m->v.s, strlen(m->v.s));
    else snprintf(buf, cap, "\"%s\"", m->v.s);
    break;
  default: snprintf(buf, cap, "?");
  }
}

static cJSON *meta_json(const struct kd_meta *m) {
  switch (m->type) {
  case KD_META_U32: case KD_META_U64: return cJSON_CreateNumber((double)m->v.u);
  case KD_META_I64: return cJSON_CreateNumber((double)m->v.i);
  case KD_META_F32: case KD_META_F64: return isfinite(m->v.f) ? cJSON_CreateNumber(m->v.f) : cJSON_CreateNull();
  case KD_META_BOOL: return cJSON_CreateBool(m->v.u != 0);
  default: return cJSON_CreateString(m->v.s);
  }
}

static const char *served_transform(const struct kd_task *t) {
  if (t->type == KD_TASK_BINARY) return "sigmoid";
  return t->xform == KD_XFORM_LOG1P ? "expm1" : "identity";
}

static int cmd_inspect(int argc, char **argv) {
  const char *path = NULL;
  int json = 0;
  for (int i = 0; i < argc; i++) {
    if (!strcmp(argv[i], "--json")) json = 1;
    else if (!path && argv[i][0] != '-') path = argv[i];
    else return die_usage("inspect: unknown argument \"%s\"", argv[i]);
  }
  if (!path) return die_usage("inspect: %s", "FILE is required");
  struct kd_err e = {0};
  kd_ckpt *c = kd_ckpt_open(path, &e);
  if (!c) return die_err(&e);
  const struct kd_model *m = kd_ckpt_model(c);
  const struct kd_arch *a = &m->arch;
  const struct kd_meta *gn = kd_ckpt_meta_find(c, "general.name");
  const struct kd_meta *wr = kd_ckpt_meta_find(c, "general.writer");
  uint64_t params = kd_arch_numel(a);
  uint32_t nt = kd_arch_n_tensors(a);
  char crcs[16];
  snprintf(crcs, sizeof crcs, "0x%08X", kd_ckpt_crc(c));
  if (json) {
    cJSON *o = cJSON_CreateObject();
    cJSON_AddStringToObject(o, "file", path);
    cJSON_AddNumberToObject(o, "file_size", (double)kd_ckpt_file_size(c));
    char ver[32];
    snprintf(ver, sizeof ver, "1.%u", kd_ckpt_format_minor(c));
    cJSON_AddStringToObject(o, "format_version", ver);
    cJSON_AddStringToObject(o, "crc", crcs);
    cJSON_AddStringToObject(o, "model", gn->v.s);
    cJSON_AddStringToObject(o, "architecture", a->name);
    cJSON_AddNumberToObject(o, "params", (double)params);
    cJSON_AddNumberToObject(o, "act_clip", a->act_clip);
    cJSON *fs = cJSON_AddArrayToObject(o, "features");
    for (uint32_t i = 0; i < a->n_features; i++) {
      const struct kd_feature *f = &a->features[i];
      cJSON *x = cJSON_CreateObject();
      cJSON_AddStringToObject(x, "name", f->name);
      cJSON_AddStringToObject(x, "kind", f->kind == KD_FEAT_SPARSE ? "sparse" : "dense");
      cJSON_AddStringToObject(x, "group", f->group == KD_GROUP_CANDIDATE ? "candidate" : "context");
      cJSON_AddNumberToObject(x, "dim", f->dim);
      cJSON_AddNumberToObject(x, "rows", (double)f->rows);
      cJSON_AddItemToArray(fs, x);
    }
    cJSON *sh = cJSON_AddArrayToObject(o, "shared");
    for (uint32_t l = 0; l < a->n_shared; l++) cJSON_AddItemToArray(sh, cJSON_CreateNumber(a->shared[l]));
    cJSON *tw = cJSON_AddArrayToObject(o, "tower");
    for (uint32_t l = 0; l < a->n_tower; l++) cJSON_AddItemToArray(tw, cJSON_CreateNumber(a->tower[l]));
    cJSON *ts = cJSON_AddArrayToObject(o, "tasks");
    for (uint32_t i = 0; i < a->n_tasks; i++) {
      const struct kd_task *t = &a->tasks[i];
      cJSON *x = cJSON_CreateObject();
      cJSON_AddStringToObject(x, "name", t->name);
      cJSON_AddStringToObject(x, "type", t->type == KD_TASK_REGRESSION ? "regression" : "binary");
      cJSON_AddStringToObject(x, "transform", served_transform(t));
      cJSON_AddBoolToObject(x, "served", t->served != 0);
      cJSON_AddItemToArray(ts, x);
    }
    cJSON *md = cJSON_AddObjectToObject(o, "metadata");
    for (uint32_t i = 0; i < kd_ckpt_n_meta(c); i++) {
      const struct kd_meta *mm = kd_ckpt_meta_at(c, i);
      if (strncmp(mm->key, "arch.", 5)) cJSON_AddItemToObject(md, mm->key, meta_json(mm));
    }
    cJSON *tt = cJSON_AddArrayToObject(o, "tensors");
    for (uint32_t i = 0; i < nt; i++) {
      struct kd_tensor_info ti;
      kd_arch_tensor(a, i, &ti);
      cJSON *x = cJSON_CreateObject();
      cJSON_AddStringToObject(x, "name", ti.name);
      cJSON_AddStringToObject(x, "dtype", "f32");
      cJSON *s = cJSON_AddArrayToObject(x, "shape");
      for (uint32_t d = 0; d < ti.ndim; d++) cJSON_AddItemToArray(s, cJSON_CreateNumber((double)ti.shape[d]));
      cJSON_AddNumberToObject(x, "bytes", (double)(ti.numel * 4));
      snprintf(crcs, sizeof crcs, "0x%08X", kd_crc32c(0, m->t[i], ti.numel * 4));
      cJSON_AddStringToObject(x, "crc32c", crcs);
      cJSON_AddItemToArray(tt, x);
    }
    char *s = cJSON_Print(o);
    if (s) puts(s);
    free(s);
    cJSON_Delete(o);
  } else {
    printf("file          %s (%" PRIu64 " bytes)\n", path, kd_ckpt_file_size(c));
    printf("format        kdrank checkpoint 1.%u, little-endian, crc 0x%08X%s%s\n", kd_ckpt_format_minor(c),
           kd_ckpt_crc(c), wr && wr->type == KD_META_STR ? ", written by " : "", wr && wr->type == KD_META_STR ? wr->v.s : "");
    printf("model         %s (architecture %s)\n", gn->v.s, a->name);
    printf("parameters    %" PRIu64 " (%.1f MiB f32)\n", params, (double)params * 4 / 1048576.0);
    printf("features      %u: context %u wide, candidate %u wide\n", a->n_features, kd_arch_ctx_width(a),
           kd_arch_cand_width(a));
    for (uint32_t i = 0; i < a->n_features; i++) {
      const struct kd_feature *f = &a->features[i];
      printf("  %-24s %-9s %-6s dim %-5u", f->name, f->group == KD_GROUP_CANDIDATE ? "candidate" : "context",
             f->kind == KD_FEAT_SPARSE ? "sparse" : "dense", f->dim);
      if (f->kind == KD_FEAT_SPARSE) printf(" rows %" PRIu64, f->rows);
      putchar('\n');
    }
    printf("shared        %u", kd_arch_ctx_width(a) + kd_arch_cand_width(a));
    for (uint32_t l = 0; l < a->n_shared; l++) printf(" -> %u", a->shared[l]);
    printf("\ntowers        %u", a->shared[a->n_shared - 1]);
    for (uint32_t l = 0; l < a->n_tower; l++) printf(" -> %u", a->tower[l]);
    printf(" -> 1 (per task)\n");
    if (a->act_clip > 0) printf("act_clip      %g\n", (double)a->act_clip);
    else printf("act_clip      off\n");
    printf("tasks         %u\n", a->n_tasks);
    for (uint32_t i = 0; i < a->n_tasks; i++) {
      const struct kd_task *t = &a->tasks[i];
      printf("  %-24s %-10s %-8s %s\n", t->name, t->type == KD_TASK_REGRESSION ? "regression" : "binary",
             served_transform(t), t->served ? "served" : "not served");
    }
    printf("metadata\n");
    char buf[256];
    for (uint32_t i = 0; i < kd_ckpt_n_meta(c); i++) {
      const struct kd_meta *mm = kd_ckpt_meta_at(c, i);
      if (!strncmp(mm->key, "arch.", 5)) continue;
      meta_value_str(mm, buf, sizeof buf);
      printf("  %-32s %s\n", mm->key, buf);
    }
    printf("tensors       %u\n", nt);
    printf("  %-36s %-16s %12s  %s\n", "name", "shape", "bytes", "crc32c");
    for (uint32_t i = 0; i < nt; i++) {
      struct kd_tensor_info ti;
      kd_arch_tensor(a, i, &ti);
      char sh[48];
      if (ti.ndim == 1) snprintf(sh, sizeof sh, "(%" PRIu64 ")", ti.shape[0]);
      else snprintf(sh, sizeof sh, "(%" PRIu64 ", %" PRIu64 ")", ti.shape[0], ti.shape[1]);
      printf("  %-36s %-16s %12" PRIu64 "  0x%08X\n", ti.name, sh, ti.numel * 4, kd_crc32c(0, m->t[i], ti.numel * 4));
    }
  }
  kd_ckpt_close(c);
  return 0;
}

static int cmd_verify(int argc, char **argv) {
  if (argc != 1 || argv[0][0] == '-') return die_usage("verify: expected exactly one FILE, found %s", argc ? argv[argc - 1] : "none");
  struct kd_err e = {0};
  kd_ckpt *c = kd_ckpt_open(argv[0], &e);
  if (!c) {
    printf("FAIL %s\n", e.msg);
    return 1;
  }
  const struct kd_arch *a = &kd_ckpt_model(c)->arch;
  printf("OK %s: kdrank checkpoint 1.%u, model %s, architecture %s, %u tensors, %" PRIu64 " parameters, %" PRIu64
         " bytes, crc 0x%08X\n",
         argv[0], kd_ckpt_format_minor(c), kd_ckpt_meta_find(c, "general.name")->v.s, a->name, kd_arch_n_tensors(a),
         kd_arch_numel(a), kd_ckpt_file_size(c), kd_ckpt_crc(c));
  kd_ckpt_close(c);
  return 0;
}

/* ------------------------------------------------------------------------------------------ */

static char *read_file(const char *path, size_t *len, struct kd_err *e) {
  FILE *f = fopen(path, "rb");
  if (!f) { kd_err_set(e, KD_ERR_IO, "%s: open: %s", path, strerror(errno)); return NULL; }
  size_t cap = 1 << 16, n = 0;
  char *buf = malloc(cap);
  while (buf) {
    size_t r = fread(buf + n, 1, cap - n, f);
    n += r;
    if (n < cap) break;
    char *q = realloc(buf, cap *= 2);
    if (!q) { free(buf); buf = NULL; }
    else buf = q;
  }
  int err = ferror(f);
  fclose(f);
  if (!buf) { kd_err_set(e, KD_ERR_NOMEM, "%s: out of memory", path); return NULL; }
  if (err) { free(buf); kd_err_set(e, KD_ERR_IO, "%s: read error", path); return NULL; }
  *len = n;
  return buf;
}

/* Resolves task names (the --tasks list, else the request's, else every served task). */
static int resolve_tasks(const struct kd_arch *a, const char *list, const struct kd_req *r, uint32_t *idx,
                         uint32_t *n, struct kd_err *e) {
  *n = 0;
  if (list) {
    char *copy = strdup(list), *save = NULL;
    if (!copy) return kd_err_set(e, KD_ERR_NOMEM, "out of memory");
    for (char *t = strtok_r(copy, ",", &save); t; t = strtok_r(NULL, ",", &save)) {
      int k = kd_arch_find_task(a, t);
      if (k < 0 || !a->tasks[k].served || *n == KD_MAX_TASKS) {
        kd_err_set(e, KD_ERR_NOT_FOUND, "--tasks: '%s': expected a served task of %s, found %s", t, a->name,
                   k < 0 ? "no such task" : !a->tasks[k].served ? "a task that is not served" : "too many tasks");
        free(copy);
        return e->code;
      }
      idx[(*n)++] = (uint32_t)k;
    }
    free(copy);
    if (*n == 0) return kd_err_set(e, KD_ERR_INVALID, "--tasks: expected at least one task name, found none");
    return KD_OK;
  }
  if (r->n_tasks) {
    if (r->n_tasks > KD_MAX_TASKS) return kd_err_set(e, KD_ERR_INVALID, "tasks: expected at most %d, found %u", KD_MAX_TASKS, r->n_tasks);
    for (uint32_t i = 0; i < r->n_tasks; i++) {
      int k = kd_arch_find_task(a, r->tasks[i]);
      if (k < 0 || !a->tasks[k].served)
        return kd_err_set(e, KD_ERR_NOT_FOUND, "tasks[%u] '%s': expected a served task of %s, found %s", i, r->tasks[i],
                          a->name, k < 0 ? "no such task" : "a task that is not served");
      idx[(*n)++] = (uint32_t)k;
    }
    return KD_OK;
  }
  for (uint32_t k = 0; k < a->n_tasks; k++)
    if (a->tasks[k].served) idx[(*n)++] = k;
  if (*n == 0) return kd_err_set(e, KD_ERR_INVALID, "model %s: expected a served task, found none", a->name);
  return KD_OK;
}

static int parse_kernel(const char *s) {
  if (!strcmp(s, "auto")) return KD_KERNEL_AUTO;
  if (!strcmp(s, "scalar")) return KD_KERNEL_SCALAR;
  if (!strcmp(s, "avx2")) return KD_KERNEL_AVX2;
  return -1;
}

static int cmd_score(int argc, char **argv) {
  const char *path = NULL, *req_path = NULL, *tasks = NULL;
  int oracle = 0, kernel = KD_KERNEL_AUTO;
  for (int i = 0; i < argc; i++) {
    if (!strcmp(argv[i], "--request") && i + 1 < argc) req_path = argv[++i];
    else if (!strcmp(argv[i], "--oracle")) oracle = 1;
    else if (!strcmp(argv[i], "--tasks") && i + 1 < argc) tasks = argv[++i];
    else if (!strcmp(argv[i], "--kernel") && i + 1 < argc) {
      if ((kernel = parse_kernel(argv[++i])) < 0) return die_usage("--kernel: expected auto, scalar or avx2, found \"%s\"", argv[i]);
    } else if (!path && argv[i][0] != '-') path = argv[i];
    else return die_usage("score: unknown or incomplete argument \"%s\"", argv[i]);
  }
  if (!path || !req_path) return die_usage("score: %s", "FILE and --request are required");
  struct kd_err e = {0};
  struct kd_req r = {0};
  kd_ckpt *c = NULL;
  kd_plan *plan = NULL;
  kd_scratch *scr = NULL;
  float *out = NULL;
  char *json = NULL;
  int rc = 1;
  size_t len;
  if (!(json = read_file(req_path, &len, &e))) goto fail;
  if (kd_req_parse(json, len, req_path, &r, &e) != KD_OK) goto fail;
  if (!(c = kd_ckpt_open(path, &e))) goto fail;
  const struct kd_model *m = kd_ckpt_model(c);
  const struct kd_arch *a = &m->arch;
  struct kd_column cols[KD_MAX_FEATURES];
  if (kd_req_bind(&r, a, cols, &e) != KD_OK) goto fail;
  struct kd_input in = {.n_cand = r.cand.count, .cols = cols};
  if (kd_input_check(a, &in, &e) != KD_OK) goto fail;
  uint32_t idx[KD_MAX_TASKS], n_out;
  if (resolve_tasks(a, tasks, &r, idx, &n_out, &e) != KD_OK) goto fail;
  out = malloc((size_t)in.n_cand * n_out * sizeof *out);
  if (!out) { kd_err_set(&e, KD_ERR_NOMEM, "out of memory for %u x %u scores", in.n_cand, n_out); goto fail; }
  if (oracle) {
    if (kd_score_ref(m, &in, idx, n_out, out, &e) != KD_OK) goto fail;
  } else {
    struct kd_plan_params pp = {.kernel = kernel, .flat = 0};
    if (!(plan = kd_plan_create(m, pp, &e))) goto fail;
    if (!(scr = kd_scratch_create(plan, in.n_cand, &e))) goto fail;
    if (kd_score(plan, scr, &in, idx, n_out, out, &e) != KD_OK) goto fail;
  }
  const struct kd_meta *gn = kd_ckpt_meta_find(c, "general.name");
  cJSON *ms = cJSON_CreateString(r.model[0] ? r.model : gn->v.s);
  char *msj = ms ? cJSON_PrintUnformatted(ms) : NULL;
  cJSON_Delete(ms);
  if (!msj) { kd_err_set(&e, KD_ERR_NOMEM, "out of memory"); goto fail; }
  printf("{\"model\":%s,\"tasks\":[", msj);
  free(msj);
  for (uint32_t t = 0; t < n_out; t++) printf("%s\"%s\"", t ? "," : "", a->tasks[idx[t]].name);
  printf("],\"scores\":[");
  for (size_t i = 0; i < (size_t)in.n_cand * n_out; i++) {
    if (i) putchar(',');
    kd_json_float(stdout, out[i]);
  }
  printf("]}\n");
  rc = 0;
fail:
  if (rc) die_err(&e);
  free(out);
  kd_scratch_free(scr);
  kd_plan_free(plan);
  kd_ckpt_close(c);
  kd_req_free(&r);
  free(json);
  return rc;
}

static int cmd_request(int argc, char **argv) {
  const char *preset = NULL, *model = NULL, *out = NULL;
  uint64_t n = 0, seed = 1, k = 1;
  for (int i = 0; i < argc; i++) {
    if (!strcmp(argv[i], "--preset") && i + 1 < argc) preset = argv[++i];
    else if (!strcmp(argv[i], "--model") && i + 1 < argc) model = argv[++i];
    else if (!strcmp(argv[i], "-o") && i + 1 < argc) out = argv[++i];
    else if (!strcmp(argv[i], "--candidates") && i + 1 < argc) {
      if (parse_u64(argv[++i], &n) || n == 0 || n > UINT32_MAX) return die_usage("--candidates: expected 1..2^32-1, found \"%s\"", argv[i]);
    } else if (!strcmp(argv[i], "--seed") && i + 1 < argc) {
      if (parse_u64(argv[++i], &seed)) return die_usage("--seed: expected an unsigned integer, found \"%s\"", argv[i]);
    } else if (!strcmp(argv[i], "--k") && i + 1 < argc) {
      if (parse_u64(argv[++i], &k) || k == 0 || k > 1024) return die_usage("--k: expected 1..1024, found \"%s\"", argv[i]);
    } else return die_usage("request: unknown or incomplete argument \"%s\"", argv[i]);
  }
  if (!!preset == !!model || !n) return die_usage("request: %s", "one of --preset/--model, and --candidates, are required");
  struct kd_err e = {0};
  struct kd_arch a;
  char name[KD_NAME_MAX + 1] = "";
  struct stat st;
  if (preset && kd_arch_preset(preset, &a, &e) != KD_OK && stat(preset, &st) == 0) {
    model = preset; /* --preset FILE: a checkpoint path */
    preset = NULL;
  }
  if (preset) {
    if (kd_arch_preset(preset, &a, &e) != KD_OK) return die_err(&e);
    snprintf(name, sizeof name, "%s", preset);
  } else {
    kd_ckpt *c = kd_ckpt_open(model, &e);
    if (!c) return die_err(&e);
    a = kd_ckpt_model(c)->arch;
    snprintf(name, sizeof name, "%s", kd_ckpt_meta_find(c, "general.name")->v.s);
    kd_ckpt_close(c);
  }
  FILE *f = out ? fopen(out, "w") : stdout;
  if (!f) {
    fprintf(stderr, "kdrank-ckpt: error: %s: %s\n", out, strerror(errno));
    return 1;
  }
  int rc = kd_req_write_random(f, &a, name, (uint32_t)n, (uint32_t)k, seed, &e);
  if (out && fclose(f) != 0 && rc == KD_OK) rc = kd_err_set(&e, KD_ERR_IO, "%s: %s", out, strerror(errno));
  if (rc != KD_OK) return die_err(&e);
  return 0;
}

int main(int argc, char **argv) {
  if (argc < 2 || !strcmp(argv[1], "--help") || !strcmp(argv[1], "-h")) {
    usage();
    return argc < 2 ? 2 : 0;
  }
  const char *cmd = argv[1];
  if (!strcmp(cmd, "random")) return cmd_random(argc - 2, argv + 2);
  if (!strcmp(cmd, "inspect")) return cmd_inspect(argc - 2, argv + 2);
  if (!strcmp(cmd, "verify")) return cmd_verify(argc - 2, argv + 2);
  if (!strcmp(cmd, "score")) return cmd_score(argc - 2, argv + 2);
  if (!strcmp(cmd, "request")) return cmd_request(argc - 2, argv + 2);
  return die_usage("unknown command \"%s\"", cmd);
}
