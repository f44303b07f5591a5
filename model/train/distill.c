/* distill.c - knowledge distillation's trainer side: teacher inference into a label store
 * (kd_label_run, the fast scoring path on every core) and the join of a pinned teacher version
 * onto a training table (kd_distill_attach: coverage, the soft-label columns). */
#include <math.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include "train_internal.h"
#include "kdrank_loader.h"
#include "kdrank_labelstore.h"

#define KD_LABEL_CHUNK 256

/* ---------------------------------------------------------------- teacher inference */
struct kd_label_job {
  const kd_plan *plan;
  const struct kd_arch *ta;       /* teacher arch */
  const struct kd_table *tab;
  const int32_t *map;             /* teacher feature -> table feature, -1: defaulted */
  const uint64_t *order;          /* rows grouped by their sparse id counts */
  uint64_t lo, hi;                /* this thread's slice of order */
  float *out;                     /* (tab->n, ta->n_tasks) by table row */
  uint32_t max_dim, max_k;
  struct kd_err err;
  int rc;
};

/* The number of ids row r has for teacher feature f (1 for a defaulted or empty one: id 0). */
static uint64_t kd_row_k(const struct kd_label_job *j, uint32_t f, uint64_t r) {
  int32_t tf = j->map[f];
  if (tf < 0) return 1;
  uint64_t k = j->tab->cols[tf].off[r + 1] - j->tab->cols[tf].off[r];
  return k ? k : 1;
}

/* 1 when rows r and q can share one kd_logits call: equal context values and equal id counts of
 * every sparse candidate feature. */
static int kd_rows_batchable(const struct kd_label_job *j, uint64_t r, uint64_t q) {
  const struct kd_arch *a = j->ta;
  for (uint32_t f = 0; f < a->n_features; f++) {
    const struct kd_feature *ft = &a->features[f];
    int32_t tf = j->map[f];
    if (ft->kind == KD_FEAT_SPARSE && kd_row_k(j, f, r) != kd_row_k(j, f, q)) return 0;
    if (ft->group != KD_GROUP_CONTEXT || tf < 0) continue;
    const struct kd_table_col *c = &j->tab->cols[tf];
    if (ft->kind == KD_FEAT_DENSE) {
      if (memcmp(c->dense + r * ft->dim, c->dense + q * ft->dim, ft->dim * sizeof(float))) return 0;
    } else {
      uint64_t nr = c->off[r + 1] - c->off[r];
      if (nr != c->off[q + 1] - c->off[q]) return 0;
      if (nr && memcmp(c->ids + c->off[r], c->ids + c->off[q], nr * sizeof(int64_t))) return 0;
    }
  }
  return 1;
}

/* Gathers feature f of row r (k ids or dim floats) into dst (defaulted: id 0 / zeros). */
static void kd_gather(const struct kd_label_job *j, uint32_t f, uint64_t r, uint64_t k, float *fd, int64_t *id) {
  const struct kd_feature *ft = &j->ta->features[f];
  int32_t tf = j->map[f];
  if (ft->kind == KD_FEAT_DENSE) {
    if (tf >= 0) memcpy(fd, j->tab->cols[tf].dense + r * ft->dim, ft->dim * sizeof(float));
    else memset(fd, 0, ft->dim * sizeof(float));
    return;
  }
  const struct kd_table_col *c = tf >= 0 ? &j->tab->cols[tf] : NULL;
  if (!c || c->off[r + 1] == c->off[r]) {
    for (uint64_t q = 0; q < k; q++) id[q] = 0;
    return;
  }
  memcpy(id, c->ids + c->off[r], k * sizeof(int64_t));
}

static void *kd_label_worker(void *arg) {
  struct kd_label_job *j = arg;
  const struct kd_arch *a = j->ta;
  kd_scratch *s = kd_scratch_create(j->plan, KD_LABEL_CHUNK, &j->err);
  struct kd_column cols[KD_MAX_FEATURES];
  float *dense = NULL, *logits = NULL;
  int64_t *ids = NULL;
  if (!s) {
    j->rc = j->err.code;
    return NULL;
  }
  dense = calloc((size_t)KD_LABEL_CHUNK * j->max_dim * a->n_features + 1, sizeof *dense);
  ids = calloc((size_t)KD_LABEL_CHUNK * j->max_k * a->n_features + 1, sizeof *ids);
  logits = malloc((size_t)KD_LABEL_CHUNK * a->n_tasks * sizeof *logits);
  if (!dense || !ids || !logits) {
    j->rc = kd_err_set(&j->err, KD_ERR_NOMEM, "label: out of memory");
    goto done;
  }
  uint64_t i = j->lo;
  while (i < j->hi) {
    /* a chunk: consecutive rows of order sharing the context and the sparse id counts */
    uint64_t r0 = j->order[i], n = 1;
    while (i + n < j->hi && n < KD_LABEL_CHUNK && kd_rows_batchable(j, r0, j->order[i + n])) n++;
    size_t dpos = 0, ipos = 0;
    for (uint32_t f = 0; f < a->n_features; f++) {
      const struct kd_feature *ft = &a->features[f];
      uint64_t rows = ft->group == KD_GROUP_CONTEXT ? 1 : n;
      uint64_t k = ft->kind == KD_FEAT_SPARSE ? kd_row_k(j, f, r0) : 0;
      for (uint64_t q = 0; q < rows; q++)
        kd_gather(j, f, j->order[i + q], k, dense + dpos + q * ft->dim, ids + ipos + q * k);
      if (ft->kind == KD_FEAT_DENSE) {
        cols[f] = (struct kd_column){.floats = dense + dpos, .n_floats = (size_t)rows * ft->dim};
        dpos += (size_t)rows * ft->dim;
      } else {
        cols[f] = (struct kd_column){.ids = ids + ipos, .n_ids = (size_t)(rows * k)};
        ipos += (size_t)(rows * k);
      }
    }
    struct kd_input in = {.n_cand = (uint32_t)n, .cols = cols};
    int rc = kd_logits(j->plan, s, &in, logits, &j->err);
    if (rc) {
      j->rc = rc;
      goto done;
    }
    for (uint64_t q = 0; q < n; q++)
      memcpy(j->out + j->order[i + q] * a->n_tasks, logits + q * a->n_tasks, a->n_tasks * sizeof(float));
    i += n;
  }
done:
  free(dense);
  free(ids);
  free(logits);
  kd_scratch_free(s);
  return NULL;
}

/* Sort key of a row: a hash of its context values and sparse id counts (rows that can share a
 * kd_logits call become neighbours), then the row number. */
struct kd_rowkey {
  uint64_t key, row;
};
static int kd_rowkey_cmp(const void *x, const void *y) {
  const struct kd_rowkey *a = x, *b = y;
  if (a->key != b->key) return a->key < b->key ? -1 : 1;
  return a->row < b->row ? -1 : a->row > b->row;
}
struct kd_idrow {
  int64_t id;
  uint64_t row;
};
static int kd_idrow_cmp(const void *x, const void *y) {
  const struct kd_idrow *a = x, *b = y;
  if (a->id != b->id) return a->id < b->id ? -1 : 1;
  return a->row < b->row ? -1 : a->row > b->row;
}

int kd_label_run(struct kd_label_config *c, struct kd_err *e) {
  kd_ckpt *ck = NULL;
  kd_plan *plan = NULL;
  struct kd_schema s;
  struct kd_table tab = {0};
  struct kd_rowkey *keys = NULL;
  uint64_t *order = NULL;
  struct kd_idrow *byid = NULL;
  float *out = NULL;
  kd_labelstore *st = NULL;
  kd_labelstore_writer *w = NULL;
  int32_t map[KD_MAX_FEATURES];
  char schema_buf[1024];
  int rc;
  if (!c->teacher_path || !c->data_path || !c->store || !c->version)
    return kd_err_set(e, KD_ERR_INVALID, "label: --teacher, --data, --store and --teacher-version are required");
  if ((rc = kd_labelstore_version_check(c->version, e))) return rc;
  uint32_t threads = c->threads ? c->threads : 2;
  if (threads > 64) return kd_err_set(e, KD_ERR_INVALID, "label: --threads %u, expected 1..64", threads);
  const char *schema_path = c->schema_path;
  if (!schema_path) {
    const char *sl = strrchr(c->data_path, '/');
    int dl = sl ? (int)(sl - c->data_path + 1) : 0;
    snprintf(schema_buf, sizeof schema_buf, "%.*sschema.json", dl, c->data_path);
    schema_path = schema_buf;
  }
  double t0 = kd_now();
  if (!(ck = kd_ckpt_open(c->teacher_path, e))) return e ? e->code : KD_ERR_IO;
  const struct kd_model *tm = kd_ckpt_model(ck);
  const struct kd_arch *ta = &tm->arch;
  if ((rc = kd_schema_load(schema_path, &s, e))) goto done;
  struct kd_load_report rep;
  if ((rc = kd_table_load(c->data_path, &s, c->load, &tab, &rep, e))) goto done;
  /* feature mapping by name; kind and width must agree, else the teacher's feature is defaulted */
  c->mapped = c->defaulted = 0;
  uint32_t max_dim = 1, max_k = 1;
  for (uint32_t f = 0; f < ta->n_features; f++) {
    const struct kd_feature *ft = &ta->features[f];
    int df = kd_arch_find_feature(&s.arch, ft->name);
    map[f] = -1;
    if (df >= 0 && s.arch.features[df].kind == ft->kind &&
        (ft->kind == KD_FEAT_SPARSE || s.arch.features[df].dim == ft->dim))
      map[f] = df;
    if (map[f] >= 0) c->mapped++;
    else {
      c->defaulted++;
      if (!c->quiet)
        fprintf(stderr, "label: teacher feature '%s' %s in the data: defaulted (%s)\n", ft->name,
                df < 0 ? "absent" : "of another kind or width", ft->kind == KD_FEAT_DENSE ? "zeros" : "id 0");
    }
    if (ft->kind == KD_FEAT_DENSE && ft->dim > max_dim) max_dim = ft->dim;
    if (ft->kind == KD_FEAT_SPARSE && map[f] >= 0) {
      const struct kd_table_col *col = &tab.cols[map[f]];
      for (uint64_t r = 0; r < tab.n; r++)
        if (col->off[r + 1] - col->off[r] > max_k) max_k = (uint32_t)(col->off[r + 1] - col->off[r]);
    }
  }
  if (!(plan = kd_plan_create(tm, (struct kd_plan_params){0}, e))) {
    rc = e ? e->code : KD_ERR_NOMEM;
    goto done;
  }
  /* group rows that can share a call */
  keys = malloc((tab.n + 1) * sizeof *keys);
  order = malloc((tab.n + 1) * sizeof *order);
  byid = malloc((tab.n + 1) * sizeof *byid);
  out = malloc((tab.n * ta->n_tasks + 1) * sizeof *out);
  if (!keys || !order || !byid || !out) {
    rc = kd_err_set(e, KD_ERR_NOMEM, "label: out of memory for %llu rows", (unsigned long long)tab.n);
    goto done;
  }
  struct kd_label_job proto = {.plan = plan, .ta = ta, .tab = &tab, .map = map, .out = out, .order = order,
                               .max_dim = max_dim, .max_k = max_k};
  for (uint64_t r = 0; r < tab.n; r++) {
    struct kd_hash h;
    kd_hash_init(&h);
    for (uint32_t f = 0; f < ta->n_features; f++) {
      const struct kd_feature *ft = &ta->features[f];
      if (ft->kind == KD_FEAT_SPARSE) {
        uint64_t k = kd_row_k(&proto, f, r);
        kd_hash_update(&h, &k, sizeof k);
      }
      if (ft->group != KD_GROUP_CONTEXT || map[f] < 0) continue;
      const struct kd_table_col *col = &tab.cols[map[f]];
      if (ft->kind == KD_FEAT_DENSE) kd_hash_update(&h, col->dense + r * ft->dim, ft->dim * sizeof(float));
      else kd_hash_update(&h, col->ids + col->off[r], (col->off[r + 1] - col->off[r]) * sizeof(int64_t));
    }
    keys[r] = (struct kd_rowkey){kd_hash_final(&h), r};
  }
  qsort(keys, tab.n, sizeof *keys, kd_rowkey_cmp);
  for (uint64_t r = 0; r < tab.n; r++) order[r] = keys[r].row;
  double t_score = kd_now();
  /* OpenBLAS single-threaded inside each worker: the parallelism is ours */
  int blas_before = kd_blas_threads();
  kd_blas_set_threads(1);
  struct kd_label_job jobs[64];
  pthread_t th[64];
  uint32_t started = 0;
  for (uint32_t q = 0; q < threads; q++) {
    jobs[q] = proto;
    jobs[q].lo = tab.n * q / threads;
    jobs[q].hi = tab.n * (q + 1) / threads;
    if (pthread_create(&th[q], NULL, kd_label_worker, &jobs[q])) {
      jobs[q].rc = kd_err_set(&jobs[q].err, KD_ERR_IO, "label: cannot start a thread");
      break;
    }
    started++;
  }
  for (uint32_t q = 0; q < started; q++) pthread_join(th[q], NULL);
  kd_blas_set_threads(blas_before);
  for (uint32_t q = 0; q < threads; q++)
    if (jobs[q].rc) {
      rc = jobs[q].rc;
      if (e) *e = jobs[q].err;
      goto done;
    }
  double score_s = kd_now() - t_score;
  /* write in example id order; a repeated id is labelled once (its first row) */
  for (uint64_t r = 0; r < tab.n; r++) byid[r] = (struct kd_idrow){tab.ids[r], r};
  qsort(byid, tab.n, sizeof *byid, kd_idrow_cmp);
  uint64_t uniq = 0;
  for (uint64_t r = 0; r < tab.n; r++) uniq += r == 0 || byid[r].id != byid[r - 1].id;
  c->duplicates = tab.n - uniq;
  if (!(st = kd_labelstore_open(c->store, kd_labelstore_params_default(), e))) {
    rc = e ? e->code : KD_ERR_IO;
    goto done;
  }
  struct kd_label_manifest m;
  memset(&m, 0, sizeof m);
  snprintf(m.version, sizeof m.version, "%s", c->version);
  const struct kd_meta *nm = kd_ckpt_meta_find(ck, "general.name");
  snprintf(m.teacher, sizeof m.teacher, "%s (%s)", nm && nm->type == KD_META_STR ? nm->v.s : ta->name,
           c->teacher_path);
  m.teacher_crc = kd_ckpt_crc(ck);
  snprintf(m.data_fingerprint, sizeof m.data_fingerprint, "%016llx", (unsigned long long)tab.fingerprint);
  m.n_tasks = ta->n_tasks;
  for (uint32_t k = 0; k < ta->n_tasks; k++) snprintf(m.tasks[k], KD_NAME_MAX, "%s", ta->tasks[k].name);
  m.row_count = uniq;
  double t_write = kd_now();
  if (!(w = kd_labelstore_writer_begin(st, &m, e))) {
    rc = e ? e->code : KD_ERR_IO;
    goto done;
  }
  for (uint64_t r = 0; r < tab.n; r++) {
    if (r > 0 && byid[r].id == byid[r - 1].id) continue;
    if ((rc = kd_labelstore_writer_put(w, byid[r].id, out + byid[r].row * ta->n_tasks, e))) goto done;
  }
  struct kd_label_manifest fin;
  if ((rc = kd_labelstore_writer_commit(w, &fin, e))) goto done;
  double write_s = kd_now() - t_write;
  c->rows = uniq;
  c->seconds = kd_now() - t0;
  c->labels_per_sec = c->seconds > 0 ? (double)uniq / c->seconds : 0;
  if (!c->quiet) {
    fprintf(stderr,
            "label: %llu examples (%llu repeated ids skipped), %u teacher tasks, %llu features mapped, "
            "%llu defaulted\n",
            (unsigned long long)uniq, (unsigned long long)c->duplicates, ta->n_tasks,
            (unsigned long long)c->mapped, (unsigned long long)c->defaulted);
    fprintf(stderr,
            "label: scoring %.2f s (%.0f labels/s, %u threads), store write %.2f s (%.0f labels/s), "
            "total %.2f s (%.0f labels/s)\n",
            score_s, score_s > 0 ? (double)tab.n / score_s : 0, threads, write_s,
            write_s > 0 ? (double)uniq / write_s : 0, c->seconds, c->labels_per_sec);
    fprintf(stderr, "label: version %s complete in %s (teacher crc %08x, data %s)\n", fin.version, c->store,
            fin.teacher_crc, fin.data_fingerprint);
  }
  rc = KD_OK;
done:
  kd_labelstore_writer_free(w);
  kd_labelstore_close(st);
  kd_plan_free(plan);
  kd_ckpt_close(ck);
  kd_table_free(&tab);
  free(keys);
  free(order);
  free(byid);
  free(out);
  return rc;
}

/* ---------------------------------------------------------------- the student's join */
int kd_distill_attach(const char *pin, const char *const *task_names, uint32_t n_names,
                      struct kd_table *tab, struct kd_distill_info *info, struct kd_err *e) {
  kd_labelstore *st = NULL;
  kd_labelstore_reader *r = NULL;
  struct kd_idrow *byid = NULL;
  int64_t *uids = NULL;
  float *lg = NULL;
  uint8_t *found = NULL;
  int rc;
  char store[1024], version[KD_LABEL_VERSION_MAX];
  if ((rc = kd_labelstore_pin_parse(pin, store, sizeof store, version, e))) return rc;
  struct kd_labelstore_params sp = kd_labelstore_params_default();
  sp.read_only = 1;
  if (!(st = kd_labelstore_open(store, sp, e))) return e ? e->code : KD_ERR_IO;
  if (!(r = kd_labelstore_reader_open(st, version, e))) {
    rc = e ? e->code : KD_ERR_IO;
    goto done;
  }
  const struct kd_label_manifest *m = kd_labelstore_reader_manifest(r);
  info->manifest_teacher_crc = m->teacher_crc;
  snprintf(info->teacher, sizeof info->teacher, "%s", m->teacher);
  snprintf(info->version, sizeof info->version, "%s", version);
  snprintf(info->backend, sizeof info->backend, "%s", kd_labelstore_backend(st));
  for (uint32_t q = 0; q < n_names; q++) {
    info->col[q] = -1;
    for (uint32_t k = 0; k < m->n_tasks; k++)
      if (!strcmp(m->tasks[k], task_names[q])) info->col[q] = (int32_t)k;
    if (info->col[q] < 0) {
      rc = kd_err_set(e, KD_ERR_NOT_FOUND, "--distill-tasks: task '%s' has no teacher logits in %s@%s", task_names[q],
                      store, version);
      goto done;
    }
  }
  /* sorted unique ids for the join, then back to table rows */
  byid = malloc((tab->n + 1) * sizeof *byid);
  uids = malloc((tab->n + 1) * sizeof *uids);
  tab->soft = malloc((tab->n * n_names + 1) * sizeof *tab->soft);
  if (!byid || !uids || !tab->soft) {
    rc = kd_err_set(e, KD_ERR_NOMEM, "labels: out of memory");
    goto done;
  }
  tab->n_soft = n_names;
  for (uint64_t i = 0; i < tab->n; i++) byid[i] = (struct kd_idrow){tab->ids[i], i};
  qsort(byid, tab->n, sizeof *byid, kd_idrow_cmp);
  uint64_t u = 0;
  for (uint64_t i = 0; i < tab->n; i++)
    if (i == 0 || byid[i].id != byid[i - 1].id) uids[u++] = byid[i].id;
  lg = malloc((u * m->n_tasks + 1) * sizeof *lg);
  found = malloc(u + 1);
  if (!lg || !found) {
    rc = kd_err_set(e, KD_ERR_NOMEM, "labels: out of memory");
    goto done;
  }
  struct kd_label_coverage cov;
  if ((rc = kd_labelstore_reader_join(r, uids, u, lg, found, &cov, e))) goto done;
  uint64_t labelled = 0;
  for (uint64_t i = 0, q = 0; i < tab->n; i++) {
    if (i > 0 && byid[i].id != byid[i - 1].id) q++;
    float *dst = tab->soft + byid[i].row * n_names;
    labelled += found[q];
    for (uint32_t k = 0; k < n_names; k++) dst[k] = found[q] ? lg[q * m->n_tasks + info->col[k]] : NAN;
  }
  info->n_examples = tab->n;
  info->n_labelled = labelled;
  info->n_stored = cov.n_stored;
  info->coverage = tab->n ? (double)labelled / (double)tab->n : 1.0;
  rc = KD_OK;
done:
  kd_labelstore_reader_free(r);
  kd_labelstore_close(st);
  free(byid);
  free(uids);
  free(lg);
  free(found);
  return rc;
}
