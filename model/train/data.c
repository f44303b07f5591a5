/* data.c - example tables: JSON schema (cJSON), TSV/gzip parsing (zlib) with line-numbered bad-row
 * reports, and the binary cache of a parsed table keyed by the data fingerprint. */
#include <errno.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cjson/cJSON.h> /* cJSON: a well-kept Debian JSON library rather than a hand-written parser */
#include <zlib.h>        /* zlib: gzip input (and plain files, read transparently) */

#include "train_internal.h"

/* ---------------------------------------------------------------- hashing */
void kd_hash_init(struct kd_hash *h) { memset(h, 0, sizeof(*h)); h->acc = 0x243F6A8885A308D3ull; }

static uint64_t kd_mix64(uint64_t z) {
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return z ^ (z >> 31);
}

static void kd_hash_word(struct kd_hash *h, uint64_t w) {
  h->acc = kd_mix64(h->acc ^ (w + 0x9E3779B97F4A7C15ull)) + (h->acc << 7);
}

void kd_hash_update(struct kd_hash *h, const void *buf, size_t len) {
  const unsigned char *p = buf;
  h->total += len;
  while (len > 0) {
    if (h->n == 0 && len >= 8) {
      uint64_t w;
      memcpy(&w, p, 8);
      kd_hash_word(h, w);
      p += 8;
      len -= 8;
      continue;
    }
    h->pend[h->n++] = *p++;
    len--;
    if (h->n == 8) {
      uint64_t w;
      memcpy(&w, h->pend, 8);
      kd_hash_word(h, w);
      h->n = 0;
    }
  }
}

uint64_t kd_hash_final(struct kd_hash *h) {
  uint64_t w = 0;
  memcpy(&w, h->pend, h->n);
  kd_hash_word(h, w ^ ((uint64_t)h->n << 56));
  kd_hash_word(h, h->total);
  return kd_mix64(h->acc);
}

int kd_file_hash(const char *path, uint64_t *out, struct kd_err *e) {
  FILE *f = fopen(path, "rb");
  if (!f) return kd_err_set(e, KD_ERR_NOT_FOUND, "%s: cannot open: %s", path, strerror(errno));
  struct kd_hash h;
  kd_hash_init(&h);
  static const size_t CH = 1 << 20;
  unsigned char *buf = malloc(CH);
  if (!buf) {
    fclose(f);
    return kd_err_set(e, KD_ERR_NOMEM, "%s: out of memory hashing", path);
  }
  size_t got;
  while ((got = fread(buf, 1, CH, f)) > 0) kd_hash_update(&h, buf, got);
  int bad = ferror(f);
  free(buf);
  fclose(f);
  if (bad) return kd_err_set(e, KD_ERR_IO, "%s: read error", path);
  *out = kd_hash_final(&h);
  return KD_OK;
}

/* ---------------------------------------------------------------- schema */
static const char *kd_json_str(const cJSON *o, const char *key) {
  const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, key);
  return cJSON_IsString(v) ? v->valuestring : NULL;
}

/* Reads an integer field; absent -> def. Returns 0 or -1 (not a non-negative integer). */
static int kd_json_uint(const cJSON *o, const char *key, double def, double max, double *out) {
  const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, key);
  if (!v) {
    *out = def;
    return 0;
  }
  if (!cJSON_IsNumber(v) || v->valuedouble < 0 || v->valuedouble > max ||
      v->valuedouble != floor(v->valuedouble))
    return -1;
  *out = v->valuedouble;
  return 0;
}

int kd_schema_parse(const char *json, size_t len, const char *name, struct kd_schema *s,
                    struct kd_err *e) {
  memset(s, 0, sizeof(*s));
  cJSON *root = cJSON_ParseWithLength(json, len);
  if (!root) {
    const char *at = cJSON_GetErrorPtr();
    long off = at && at >= json && at <= json + len ? (long)(at - json) : -1;
    int line = 1;
    for (long i = 0; i < off; i++) line += json[i] == '\n';
    return kd_err_set(e, KD_ERR_INVALID, "%s:%d: schema is not valid JSON (near byte %ld)", name,
                      line, off);
  }
  int rc = KD_OK;
  const cJSON *cols = cJSON_GetObjectItemCaseSensitive(root, "columns");
  if (!cJSON_IsArray(cols)) {
    rc = kd_err_set(e, KD_ERR_INVALID, "%s: expected an array \"columns\", found %s", name,
                    cols ? "another type" : "nothing");
    goto done;
  }
  struct kd_arch *a = &s->arch;
  snprintf(a->name, sizeof a->name, "schema");
  int n_id = 0, ci = 0;
  const cJSON *c;
  cJSON_ArrayForEach(c, cols) {
    if (s->n_cols >= KD_MAX_COLS) {
      rc = kd_err_set(e, KD_ERR_RANGE, "%s: more than %d columns", name, KD_MAX_COLS);
      goto done;
    }
    struct kd_schema_col *sc = &s->cols[s->n_cols];
    sc->index = -1;
    sc->sep = ',';
    const char *cname = cJSON_IsObject(c) ? kd_json_str(c, "name") : NULL;
    const char *role = cJSON_IsObject(c) ? kd_json_str(c, "role") : NULL;
    if (!cname || !*cname || strlen(cname) >= KD_NAME_MAX) {
      rc = kd_err_set(e, KD_ERR_INVALID,
                      "%s: column %d: expected \"name\" (a string of 1..%d chars), found %s", name,
                      ci, KD_NAME_MAX - 1, cname ? "a bad length" : "none");
      goto done;
    }
    for (uint32_t j = 0; j < s->n_cols; j++)
      if (strcmp(s->cols[j].name, cname) == 0) {
        rc = kd_err_set(e, KD_ERR_INVALID, "%s: column %d '%s': name used twice", name, ci, cname);
        goto done;
      }
    snprintf(sc->name, sizeof sc->name, "%s", cname);
    if (!role) {
      rc = kd_err_set(e, KD_ERR_INVALID,
                      "%s: column %d '%s': expected \"role\" (id|label|dense|sparse|ignore), found none",
                      name, ci, cname);
      goto done;
    }
    const char *sep = kd_json_str(c, "sep");
    if (sep) {
      if (strlen(sep) != 1 || sep[0] == '\t' || sep[0] == '\n' || sep[0] == '-' || sep[0] == '.') {
        rc = kd_err_set(e, KD_ERR_INVALID,
                        "%s: column %d '%s': \"sep\" must be one character other than tab, newline,"
                        " '-' or '.', found \"%s\"", name, ci, cname, sep);
        goto done;
      }
      sc->sep = sep[0];
    }
    if (strcmp(role, "ignore") == 0) {
      sc->role = KD_COL_IGNORE;
    } else if (strcmp(role, "id") == 0) {
      sc->role = KD_COL_ID;
      if (++n_id > 1) {
        rc = kd_err_set(e, KD_ERR_INVALID, "%s: column %d '%s': a second id column", name, ci, cname);
        goto done;
      }
    } else if (strcmp(role, "label") == 0) {
      if (a->n_tasks >= KD_MAX_TASKS) {
        rc = kd_err_set(e, KD_ERR_RANGE, "%s: more than %d labels", name, KD_MAX_TASKS);
        goto done;
      }
      struct kd_task *t = &a->tasks[a->n_tasks];
      const char *type = kd_json_str(c, "type");
      const char *xf = kd_json_str(c, "transform");
      snprintf(t->name, sizeof t->name, "%s", cname);
      t->served = 1;
      if (type && strcmp(type, "binary") == 0) {
        t->type = KD_TASK_BINARY;
      } else if (type && strcmp(type, "regression") == 0) {
        t->type = KD_TASK_REGRESSION;
      } else {
        rc = kd_err_set(e, KD_ERR_INVALID,
                        "%s: column %d '%s': expected \"type\" binary|regression, found %s%s%s", name,
                        ci, cname, type ? "\"" : "none", type ? type : "", type ? "\"" : "");
        goto done;
      }
      if (!xf || strcmp(xf, "identity") == 0 || strcmp(xf, "none") == 0) {
        t->xform = KD_XFORM_IDENTITY;
      } else if (strcmp(xf, "log1p") == 0 && t->type == KD_TASK_REGRESSION) {
        t->xform = KD_XFORM_LOG1P;
      } else {
        rc = kd_err_set(e, KD_ERR_INVALID,
                        "%s: column %d '%s': expected \"transform\" identity|log1p (regression "
                        "only), found \"%s\"", name, ci, cname, xf);
        goto done;
      }
      sc->role = KD_COL_LABEL;
      sc->index = (int32_t)a->n_tasks++;
    } else if (strcmp(role, "dense") == 0 || strcmp(role, "sparse") == 0) {
      if (a->n_features >= KD_MAX_FEATURES) {
        rc = kd_err_set(e, KD_ERR_RANGE, "%s: more than %d features", name, KD_MAX_FEATURES);
        goto done;
      }
      struct kd_feature *f = &a->features[a->n_features];
      snprintf(f->name, sizeof f->name, "%s", cname);
      f->kind = role[0] == 's' ? KD_FEAT_SPARSE : KD_FEAT_DENSE;
      const char *grp = kd_json_str(c, "group");
      if (grp && strcmp(grp, "context") == 0) {
        f->group = KD_GROUP_CONTEXT;
      } else if (grp && strcmp(grp, "candidate") == 0) {
        f->group = KD_GROUP_CANDIDATE;
      } else {
        rc = kd_err_set(e, KD_ERR_INVALID,
                        "%s: column %d '%s': expected \"group\" context|candidate, found %s", name,
                        ci, cname, grp ? grp : "none");
        goto done;
      }
      double dim, rows;
      if (kd_json_uint(c, "dim", f->kind == KD_FEAT_DENSE ? 1 : 16, 4096, &dim) || dim < 1) {
        rc = kd_err_set(e, KD_ERR_INVALID,
                        "%s: column %d '%s': expected \"dim\" an integer in 1..4096", name, ci, cname);
        goto done;
      }
      f->dim = (uint32_t)dim;
      if (f->kind == KD_FEAT_SPARSE) {
        if (kd_json_uint(c, "rows", 0, 1e9, &rows) || rows < 1) {
          rc = kd_err_set(e, KD_ERR_INVALID,
                          "%s: column %d '%s': expected \"rows\" (hash buckets) an integer in 1..1e9",
                          name, ci, cname);
          goto done;
        }
        f->rows = (uint64_t)rows;
      }
      sc->role = KD_COL_FEATURE;
      sc->index = (int32_t)a->n_features++;
    } else {
      rc = kd_err_set(e, KD_ERR_INVALID,
                      "%s: column %d '%s': expected \"role\" id|label|dense|sparse|ignore, found \"%s\"",
                      name, ci, cname, role);
      goto done;
    }
    s->n_cols++;
    ci++;
  }
  if (a->n_tasks == 0 || a->n_features == 0) {
    rc = kd_err_set(e, KD_ERR_INVALID, "%s: expected at least one label and one feature, found %u and %u",
                    name, a->n_tasks, a->n_features);
    goto done;
  }
  /* The canonical content: the parsed fields, not the text (whitespace does not matter). */
  struct kd_hash h;
  kd_hash_init(&h);
  for (uint32_t i = 0; i < s->n_cols; i++) {
    kd_hash_update(&h, s->cols[i].name, strlen(s->cols[i].name) + 1);
    kd_hash_update(&h, &s->cols[i].role, sizeof s->cols[i].role);
    kd_hash_update(&h, &s->cols[i].sep, 1);
  }
  for (uint32_t i = 0; i < a->n_features; i++) {
    const struct kd_feature *f = &a->features[i];
    uint64_t v[4] = {f->kind, f->group, f->dim, f->rows};
    kd_hash_update(&h, v, sizeof v);
  }
  for (uint32_t i = 0; i < a->n_tasks; i++) {
    uint64_t v[2] = {a->tasks[i].type, a->tasks[i].xform};
    kd_hash_update(&h, v, sizeof v);
  }
  s->hash = kd_hash_final(&h);
done:
  cJSON_Delete(root);
  return rc;
}

int kd_schema_load(const char *path, struct kd_schema *s, struct kd_err *e) {
  FILE *f = fopen(path, "rb");
  if (!f) return kd_err_set(e, KD_ERR_NOT_FOUND, "%s: cannot open schema: %s", path, strerror(errno));
  char *buf = NULL;
  size_t len = 0, cap = 0;
  int rc = KD_OK;
  for (;;) {
    if (len + 4096 > cap) {
      if (cap > (64u << 20)) {
        rc = kd_err_set(e, KD_ERR_RANGE, "%s: schema larger than 64 MiB", path);
        goto done;
      }
      cap = cap ? cap * 2 : 8192;
      char *nb = realloc(buf, cap);
      if (!nb) {
        rc = kd_err_set(e, KD_ERR_NOMEM, "%s: out of memory", path);
        goto done;
      }
      buf = nb;
    }
    size_t got = fread(buf + len, 1, cap - len, f);
    len += got;
    if (got == 0) break;
  }
  rc = kd_schema_parse(buf, len, path, s, e);
done:
  free(buf);
  fclose(f);
  return rc;
}

int kd_schema_write(const char *path, const struct kd_schema *s, struct kd_err *e) {
  cJSON *root = cJSON_CreateObject();
  cJSON *cols = cJSON_AddArrayToObject(root, "columns");
  const struct kd_arch *a = &s->arch;
  for (uint32_t i = 0; i < s->n_cols; i++) {
    const struct kd_schema_col *c = &s->cols[i];
    cJSON *o = cJSON_CreateObject();
    cJSON_AddStringToObject(o, "name", c->name);
    char sep[2] = {c->sep, 0};
    switch (c->role) {
    case KD_COL_ID: cJSON_AddStringToObject(o, "role", "id"); break;
    case KD_COL_LABEL: {
      const struct kd_task *t = &a->tasks[c->index];
      cJSON_AddStringToObject(o, "role", "label");
      cJSON_AddStringToObject(o, "type", t->type == KD_TASK_BINARY ? "binary" : "regression");
      if (t->xform == KD_XFORM_LOG1P) cJSON_AddStringToObject(o, "transform", "log1p");
      break;
    }
    case KD_COL_FEATURE: {
      const struct kd_feature *f = &a->features[c->index];
      cJSON_AddStringToObject(o, "role", f->kind == KD_FEAT_SPARSE ? "sparse" : "dense");
      cJSON_AddStringToObject(o, "group", f->group == KD_GROUP_CONTEXT ? "context" : "candidate");
      cJSON_AddNumberToObject(o, "dim", f->dim);
      if (f->kind == KD_FEAT_SPARSE) cJSON_AddNumberToObject(o, "rows", (double)f->rows);
      if (c->sep != ',') cJSON_AddStringToObject(o, "sep", sep);
      break;
    }
    default: cJSON_AddStringToObject(o, "role", "ignore"); break;
    }
    cJSON_AddItemToArray(cols, o);
  }
  char *txt = cJSON_Print(root);
  cJSON_Delete(root);
  if (!txt) return kd_err_set(e, KD_ERR_NOMEM, "%s: out of memory", path);
  int rc = kd_write_file_atomic(path, txt, strlen(txt), e);
  free(txt);
  return rc;
}

/* ---------------------------------------------------------------- table memory */
static int kd_grow(void **p, uint64_t *cap, uint64_t need, size_t elem) {
  if (need <= *cap) return 0;
  uint64_t nc = *cap ? *cap : 1024;
  while (nc < need) nc *= 2;
  void *np = realloc(*p, nc * elem);
  if (!np) return -1;
  *p = np;
  *cap = nc;
  return 0;
}

/* Makes room for row count n (and ids for sparse features as needed by the caller). */
static int kd_table_reserve_rows(struct kd_table *t, const struct kd_arch *a, uint64_t n) {
  if (n <= t->cap) return 0;
  uint64_t nc = t->cap ? t->cap : 1024;
  while (nc < n) nc *= 2;
  int64_t *ids = realloc(t->ids, nc * sizeof *ids);
  if (!ids) return -1;
  t->ids = ids;
  float *lab = realloc(t->labels, nc * (a->n_tasks ? a->n_tasks : 1) * sizeof *lab);
  if (!lab) return -1;
  t->labels = lab;
  for (uint32_t f = 0; f < a->n_features; f++) {
    if (a->features[f].kind == KD_FEAT_DENSE) {
      float *d = realloc(t->cols[f].dense, nc * a->features[f].dim * sizeof *d);
      if (!d) return -1;
      t->cols[f].dense = d;
    } else {
      uint64_t *o = realloc(t->cols[f].off, (nc + 1) * sizeof *o);
      if (!o) return -1;
      if (!t->cols[f].off) o[0] = 0;
      t->cols[f].off = o;
    }
  }
  t->cap = nc;
  return 0;
}

int kd_table_alloc(struct kd_table *t, const struct kd_arch *a, uint64_t n, uint64_t ids_per_feature,
                   struct kd_err *e) {
  memset(t, 0, sizeof(*t));
  t->n_features = a->n_features;
  t->n_tasks = a->n_tasks;
  if (kd_table_reserve_rows(t, a, n ? n : 1)) goto nomem;
  for (uint32_t f = 0; f < a->n_features; f++)
    if (a->features[f].kind == KD_FEAT_SPARSE &&
        kd_grow((void **)&t->cols[f].ids, &t->id_cap[f], ids_per_feature ? ids_per_feature : 1,
                sizeof(int64_t)))
      goto nomem;
  return KD_OK;
nomem:
  kd_table_free(t);
  return kd_err_set(e, KD_ERR_NOMEM, "out of memory allocating a table of %llu rows",
                    (unsigned long long)n);
}

void kd_table_free(struct kd_table *t) {
  if (!t) return;
  free(t->ids);
  free(t->labels);
  for (uint32_t f = 0; f < KD_MAX_FEATURES; f++) {
    free(t->cols[f].dense);
    free(t->cols[f].off);
    free(t->cols[f].ids);
  }
  memset(t, 0, sizeof(*t));
}

/* ---------------------------------------------------------------- TSV parsing */
struct kd_linereader {
  gzFile gz;
  char *buf;      /* chunk buffer */
  size_t cap, len, pos;
  char *line;     /* assembled line */
  size_t lcap;
  int eof;
};

/* Returns the next line (without \n / \r\n), its length in *n; NULL at end. -1 in *n on error. */
static char *kd_lr_next(struct kd_linereader *r, size_t *n) {
  size_t ll = 0;
  for (;;) {
    if (r->pos == r->len) {
      if (r->eof) break;
      int got = gzread(r->gz, r->buf, (unsigned)r->cap);
      if (got < 0) {
        *n = (size_t)-1;
        return NULL;
      }
      if (got == 0) {
        r->eof = 1;
        break;
      }
      r->len = (size_t)got;
      r->pos = 0;
    }
    char *start = r->buf + r->pos;
    char *nl = memchr(start, '\n', r->len - r->pos);
    size_t take = nl ? (size_t)(nl - start) : r->len - r->pos;
    if (ll + take + 1 > r->lcap) {
      size_t nc = r->lcap ? r->lcap : 4096;
      while (nc < ll + take + 1) nc *= 2;
      char *np = realloc(r->line, nc);
      if (!np) {
        *n = (size_t)-1;
        return NULL;
      }
      r->line = np;
      r->lcap = nc;
    }
    memcpy(r->line + ll, start, take);
    ll += take;
    r->pos += take + (nl ? 1 : 0);
    if (nl) goto got;
  }
  if (ll == 0) {
    *n = 0;
    return NULL;
  }
got:
  if (ll > 0 && r->line[ll - 1] == '\r') ll--;
  r->line[ll] = 0;
  *n = ll;
  return r->line;
}

/* Parses a whole cell [s, end) as a finite float. */
static int kd_parse_float(const char *s, const char *end, float *out) {
  char tmp[64];
  size_t n = (size_t)(end - s);
  if (n == 0 || n >= sizeof tmp) return -1;
  memcpy(tmp, s, n);
  tmp[n] = 0;
  char *ep;
  errno = 0;
  double v = strtod(tmp, &ep);
  if (*ep || !isfinite(v) || fabs(v) > 3.4e38) return -1;
  *out = (float)v;
  return 0;
}

static int kd_parse_i64(const char *s, const char *end, int64_t *out) {
  char tmp[32];
  size_t n = (size_t)(end - s);
  if (n == 0 || n >= sizeof tmp) return -1;
  memcpy(tmp, s, n);
  tmp[n] = 0;
  char *ep;
  errno = 0;
  long long v = strtoll(tmp, &ep, 10);
  if (*ep || errno) return -1;
  *out = v;
  return 0;
}

static void kd_cell_show(char *dst, size_t cap, const char *s, const char *end) {
  size_t n = (size_t)(end - s);
  if (n > 40) n = 40;
  snprintf(dst, cap, "'%.*s'%s", (int)n, s, (size_t)(end - s) > 40 ? "..." : "");
}

/* Parses one data row into row index t->n (not yet counted). On a bad cell fills msg. */
static int kd_parse_row(char *line, size_t len, const struct kd_schema *s, const int32_t *hdr_of_col,
                        uint32_t n_hdr, struct kd_table *t, char *msg, size_t msgcap) {
  const struct kd_arch *a = &s->arch;
  /* split */
  const char *fs[4 * KD_MAX_COLS + 1], *fe[4 * KD_MAX_COLS + 1];
  uint32_t nf = 0;
  const char *p = line, *end = line + len;
  for (;;) {
    const char *tab = memchr(p, '\t', (size_t)(end - p));
    if (nf < n_hdr) {
      fs[nf] = p;
      fe[nf] = tab ? tab : end;
    }
    nf++;
    if (!tab) break;
    p = tab + 1;
  }
  if (nf != n_hdr) {
    snprintf(msg, msgcap, "expected %u tab-separated fields (as the header), found %u", n_hdr, nf);
    return -1;
  }
  uint64_t r = t->n;
  char show[64];
  uint64_t ids_before[KD_MAX_FEATURES];
  for (uint32_t f = 0; f < a->n_features; f++)
    ids_before[f] = a->features[f].kind == KD_FEAT_SPARSE ? t->cols[f].off[r] : 0;
  t->ids[r] = (int64_t)r;
  for (uint32_t k = 0; k < a->n_tasks; k++) t->labels[r * a->n_tasks + k] = NAN;
  for (uint32_t c = 0; c < s->n_cols; c++) {
    const struct kd_schema_col *sc = &s->cols[c];
    const char *cs = fs[hdr_of_col[c]], *ce = fe[hdr_of_col[c]];
    switch (sc->role) {
    case KD_COL_ID:
      if (kd_parse_i64(cs, ce, &t->ids[r])) {
        kd_cell_show(show, sizeof show, cs, ce);
        snprintf(msg, msgcap, "column '%s' (id): expected an integer, found %s", sc->name, show);
        return -1;
      }
      break;
    case KD_COL_LABEL: {
      const struct kd_task *tk = &a->tasks[sc->index];
      float v;
      if (cs == ce) break; /* missing label */
      if (kd_parse_float(cs, ce, &v)) {
        kd_cell_show(show, sizeof show, cs, ce);
        snprintf(msg, msgcap, "column '%s' (label): expected a number, found %s", sc->name, show);
        return -1;
      }
      if (tk->type == KD_TASK_BINARY && v != 0.0f && v != 1.0f) {
        kd_cell_show(show, sizeof show, cs, ce);
        snprintf(msg, msgcap, "column '%s' (binary label): expected 0 or 1, found %s", sc->name, show);
        return -1;
      }
      if (tk->xform == KD_XFORM_LOG1P) {
        if (v <= -1.0f) {
          kd_cell_show(show, sizeof show, cs, ce);
          snprintf(msg, msgcap, "column '%s' (log1p label): expected a value > -1, found %s",
                   sc->name, show);
          return -1;
        }
        v = log1pf(v);
      }
      t->labels[r * a->n_tasks + (uint32_t)sc->index] = v;
      break;
    }
    case KD_COL_FEATURE: {
      const struct kd_feature *f = &a->features[sc->index];
      struct kd_table_col *col = &t->cols[sc->index];
      if (f->kind == KD_FEAT_DENSE) {
        uint32_t got = 0;
        const char *q = cs;
        while (q <= ce) {
          const char *sp = memchr(q, sc->sep, (size_t)(ce - q));
          const char *ve = sp ? sp : ce;
          float v;
          if (got >= f->dim || kd_parse_float(q, ve, &v)) {
            kd_cell_show(show, sizeof show, cs, ce);
            snprintf(msg, msgcap, "column '%s' (dense, dim %u): expected %u numbers separated by "
                     "'%c', found %s", sc->name, f->dim, f->dim, sc->sep, show);
            return -1;
          }
          col->dense[r * f->dim + got++] = v;
          if (!sp) break;
          q = sp + 1;
        }
        if (got != f->dim) {
          kd_cell_show(show, sizeof show, cs, ce);
          snprintf(msg, msgcap, "column '%s' (dense, dim %u): expected %u numbers, found %u in %s",
                   sc->name, f->dim, f->dim, got, show);
          return -1;
        }
      } else {
        uint64_t o = col->off[r];
        const char *q = cs;
        while (q < ce) {
          const char *sp = memchr(q, sc->sep, (size_t)(ce - q));
          const char *ve = sp ? sp : ce;
          int64_t v;
          if (kd_parse_i64(q, ve, &v)) {
            kd_cell_show(show, sizeof show, cs, ce);
            snprintf(msg, msgcap, "column '%s' (sparse): expected integer ids separated by '%c', "
                     "found %s", sc->name, sc->sep, show);
            col->off[r + 1] = ids_before[sc->index];
            return -1;
          }
          if (kd_grow((void **)&col->ids, &t->id_cap[sc->index], o + 1, sizeof(int64_t))) {
            snprintf(msg, msgcap, "out of memory");
            return -2;
          }
          col->ids[o++] = v;
          if (!sp) break;
          q = sp + 1;
        }
        col->off[r + 1] = o;
      }
      break;
    }
    default: break;
    }
  }
  return 0;
}

static int kd_table_parse_tsv(const char *path, const struct kd_schema *s, struct kd_load_params p,
                              struct kd_table *t, struct kd_load_report *rep, struct kd_err *e) {
  const struct kd_arch *a = &s->arch;
  int rc = KD_OK;
  struct kd_linereader lr = {0};
  lr.gz = gzopen(path, "rb");
  if (!lr.gz) return kd_err_set(e, KD_ERR_NOT_FOUND, "%s: cannot open: %s", path, strerror(errno));
  gzbuffer(lr.gz, 1 << 18);
  lr.cap = 1 << 20;
  lr.buf = malloc(lr.cap);
  if (!lr.buf || kd_table_alloc(t, a, 1024, 1024, e)) {
    rc = kd_err_set(e, KD_ERR_NOMEM, "%s: out of memory", path);
    goto done;
  }
  size_t len;
  char *line = kd_lr_next(&lr, &len);
  if (!line) {
    rc = kd_err_set(e, len == (size_t)-1 ? KD_ERR_IO : KD_ERR_INVALID,
                    "%s:1: expected a header line, found %s", path,
                    len == (size_t)-1 ? "a read/decompression error" : "an empty file");
    goto done;
  }
  /* header -> map schema columns to positions */
  int32_t hdr_of_col[KD_MAX_COLS];
  uint32_t n_hdr = 0;
  {
    char *names[4 * KD_MAX_COLS];
    char *q = line;
    for (;;) {
      char *tab = strchr(q, '\t');
      if (tab) *tab = 0;
      if (n_hdr >= 4 * KD_MAX_COLS) {
        rc = kd_err_set(e, KD_ERR_RANGE, "%s:1: header has more than %d columns", path, 4 * KD_MAX_COLS);
        goto done;
      }
      names[n_hdr++] = q;
      if (!tab) break;
      q = tab + 1;
    }
    for (uint32_t c = 0; c < s->n_cols; c++) {
      hdr_of_col[c] = -1;
      for (uint32_t h = 0; h < n_hdr; h++)
        if (strcmp(names[h], s->cols[c].name) == 0) {
          hdr_of_col[c] = (int32_t)h;
          break;
        }
      if (hdr_of_col[c] < 0 && s->cols[c].role != KD_COL_IGNORE) {
        rc = kd_err_set(e, KD_ERR_INVALID, "%s:1: header: schema column '%s' not found in the header",
                        path, s->cols[c].name);
        goto done;
      }
      if (hdr_of_col[c] < 0) hdr_of_col[c] = 0; /* ignored column: never read */
    }
  }
  uint64_t lineno = 1;
  char msg[400];
  while ((line = kd_lr_next(&lr, &len)) != NULL) {
    lineno++;
    if (len == 0) continue; /* blank lines (e.g. trailing) are not rows */
    if (kd_table_reserve_rows(t, a, t->n + 1)) {
      rc = kd_err_set(e, KD_ERR_NOMEM, "%s:%llu: out of memory", path, (unsigned long long)lineno);
      goto done;
    }
    int pr = kd_parse_row(line, len, s, hdr_of_col, n_hdr, t, msg, sizeof msg);
    if (pr == -2) {
      rc = kd_err_set(e, KD_ERR_NOMEM, "%s:%llu: out of memory", path, (unsigned long long)lineno);
      goto done;
    }
    if (pr < 0) {
      /* roll back the sparse offsets of this row */
      for (uint32_t f = 0; f < a->n_features; f++)
        if (a->features[f].kind == KD_FEAT_SPARSE) t->cols[f].off[t->n + 1] = t->cols[f].off[t->n];
      if (rep->bad < KD_BAD_LINES_KEPT) {
        rep->bad_line[rep->bad] = lineno;
        snprintf(rep->bad_msg[rep->bad], sizeof rep->bad_msg[0], "%.159s", msg);
      }
      rep->bad++;
      if (p.max_bad == 0 || (p.max_bad > 0 && rep->bad > (uint64_t)p.max_bad)) {
        rc = kd_err_set(e, KD_ERR_INVALID, "%s:%llu: %s%s", path, (unsigned long long)lineno, msg,
                        p.max_bad > 0 ? " (too many bad rows: over --max-bad)" : "");
        goto done;
      }
      continue;
    }
    t->n++;
  }
  if (len == (size_t)-1) {
    rc = kd_err_set(e, KD_ERR_IO, "%s:%llu: read or decompression error", path,
                    (unsigned long long)lineno + 1);
    goto done;
  }
  if (t->n == 0) {
    rc = kd_err_set(e, KD_ERR_INVALID, "%s: expected at least one valid row, found none", path);
    goto done;
  }
  rep->rows = t->n;
done:
  gzclose(lr.gz);
  free(lr.buf);
  free(lr.line);
  if (rc) kd_table_free(t);
  return rc;
}

/* ---------------------------------------------------------------- binary cache */
#define KD_CACHE_MAGIC "KDTCACH1"

struct kd_wbuf {
  FILE *f;
  struct kd_hash h;
  int bad;
};
static void kd_wb_put(struct kd_wbuf *w, const void *p, size_t n) {
  if (n == 0) return;
  if (fwrite(p, 1, n, w->f) != n) w->bad = 1;
  kd_hash_update(&w->h, p, n);
}

int kd_table_cache_write(const char *path, const struct kd_table *t, const struct kd_arch *a,
                         struct kd_err *e) {
  char tmp[4200];
  snprintf(tmp, sizeof tmp, "%s.tmp.%d", path, (int)getpid());
  struct kd_wbuf w = {0};
  kd_hash_init(&w.h);
  w.f = fopen(tmp, "wb");
  if (!w.f) return kd_err_set(e, KD_ERR_IO, "%s: cannot create: %s", tmp, strerror(errno));
  kd_wb_put(&w, KD_CACHE_MAGIC, 8);
  uint64_t hdr[4] = {a->n_features, a->n_tasks, t->fingerprint, t->n};
  kd_wb_put(&w, hdr, sizeof hdr);
  for (uint32_t f = 0; f < a->n_features; f++) {
    uint64_t fh[3] = {a->features[f].kind, a->features[f].dim,
                      a->features[f].kind == KD_FEAT_SPARSE ? t->cols[f].off[t->n] : 0};
    kd_wb_put(&w, fh, sizeof fh);
  }
  kd_wb_put(&w, t->ids, t->n * sizeof(int64_t));
  kd_wb_put(&w, t->labels, t->n * a->n_tasks * sizeof(float));
  for (uint32_t f = 0; f < a->n_features; f++) {
    if (a->features[f].kind == KD_FEAT_DENSE) {
      kd_wb_put(&w, t->cols[f].dense, t->n * a->features[f].dim * sizeof(float));
    } else {
      kd_wb_put(&w, t->cols[f].off, (t->n + 1) * sizeof(uint64_t));
      kd_wb_put(&w, t->cols[f].ids, t->cols[f].off[t->n] * sizeof(int64_t));
    }
  }
  uint64_t sum = kd_hash_final(&w.h);
  if (fwrite(&sum, 8, 1, w.f) != 1) w.bad = 1;
  if (fflush(w.f) || fsync(fileno(w.f))) w.bad = 1;
  if (fclose(w.f)) w.bad = 1;
  if (w.bad || rename(tmp, path)) {
    int er = errno;
    unlink(tmp);
    return kd_err_set(e, KD_ERR_IO, "%s: cannot write cache: %s", path, strerror(er));
  }
  return KD_OK;
}

int kd_table_cache_read(const char *path, const struct kd_arch *a, uint64_t fingerprint,
                        struct kd_table *t, struct kd_err *e) {
  memset(t, 0, sizeof(*t));
  FILE *f = fopen(path, "rb");
  if (!f) return kd_err_set(e, KD_ERR_NOT_FOUND, "%s: no cache", path);
  int rc = KD_OK;
  unsigned char *buf = NULL;
  struct stat st;
  if (fstat(fileno(f), &st) || st.st_size < 8 + 32 + 8) {
    rc = kd_err_set(e, KD_ERR_CORRUPT, "%s: cache too short", path);
    goto done;
  }
  size_t sz = (size_t)st.st_size;
  buf = malloc(sz);
  if (!buf) {
    rc = kd_err_set(e, KD_ERR_NOMEM, "%s: out of memory", path);
    goto done;
  }
  if (fread(buf, 1, sz, f) != sz) {
    rc = kd_err_set(e, KD_ERR_IO, "%s: read error", path);
    goto done;
  }
  struct kd_hash h;
  kd_hash_init(&h);
  kd_hash_update(&h, buf, sz - 8);
  uint64_t sum, hdr[4];
  memcpy(&sum, buf + sz - 8, 8);
  memcpy(hdr, buf + 8, sizeof hdr);
  if (memcmp(buf, KD_CACHE_MAGIC, 8) || sum != kd_hash_final(&h)) {
    rc = kd_err_set(e, KD_ERR_CORRUPT, "%s: cache magic or checksum mismatch", path);
    goto done;
  }
  if (hdr[0] != a->n_features || hdr[1] != a->n_tasks || hdr[2] != fingerprint) {
    rc = kd_err_set(e, KD_ERR_NOT_FOUND, "%s: cache is for other data (fingerprint %016llx, want %016llx)",
                    path, (unsigned long long)hdr[2], (unsigned long long)fingerprint);
    goto done;
  }
  uint64_t n = hdr[3];
  size_t pos = 8 + sizeof hdr;
  uint64_t nids[KD_MAX_FEATURES];
  size_t need = pos + (size_t)a->n_features * 24;
  if (need > sz - 8) goto corrupt;
  for (uint32_t i = 0; i < a->n_features; i++) {
    uint64_t fh[3];
    memcpy(fh, buf + pos, sizeof fh);
    pos += sizeof fh;
    if (fh[0] != a->features[i].kind || fh[1] != a->features[i].dim) goto corrupt;
    nids[i] = fh[2];
  }
  /* every size checked against the file before copying */
  {
    __uint128_t total = pos + (__uint128_t)n * 8 + (__uint128_t)n * a->n_tasks * 4;
    for (uint32_t i = 0; i < a->n_features; i++)
      total += a->features[i].kind == KD_FEAT_DENSE ? (__uint128_t)n * a->features[i].dim * 4
                                                     : (__uint128_t)(n + 1) * 8 + (__uint128_t)nids[i] * 8;
    if (total + 8 != sz) goto corrupt;
  }
  if (kd_table_alloc(t, a, n, 1, e)) {
    rc = e ? e->code : KD_ERR_NOMEM;
    goto done;
  }
  t->n = n;
  t->fingerprint = fingerprint;
  memcpy(t->ids, buf + pos, n * 8);
  pos += n * 8;
  memcpy(t->labels, buf + pos, n * a->n_tasks * 4);
  pos += n * a->n_tasks * 4;
  for (uint32_t i = 0; i < a->n_features; i++) {
    struct kd_table_col *c = &t->cols[i];
    if (a->features[i].kind == KD_FEAT_DENSE) {
      memcpy(c->dense, buf + pos, n * a->features[i].dim * 4);
      pos += n * a->features[i].dim * 4;
    } else {
      memcpy(c->off, buf + pos, (n + 1) * 8);
      pos += (n + 1) * 8;
      if (c->off[0] != 0 || c->off[n] != nids[i]) goto corrupt_t;
      for (uint64_t r = 0; r < n; r++)
        if (c->off[r + 1] < c->off[r]) goto corrupt_t;
      if (kd_grow((void **)&c->ids, &t->id_cap[i], nids[i] ? nids[i] : 1, 8)) {
        rc = kd_err_set(e, KD_ERR_NOMEM, "%s: out of memory", path);
        goto done_t;
      }
      memcpy(c->ids, buf + pos, nids[i] * 8);
      pos += nids[i] * 8;
    }
  }
  goto done;
corrupt_t:
  rc = kd_err_set(e, KD_ERR_CORRUPT, "%s: cache offsets are inconsistent", path);
done_t:
  kd_table_free(t);
  goto done;
corrupt:
  rc = kd_err_set(e, KD_ERR_CORRUPT, "%s: cache sizes do not match the file size %zu", path, sz);
done:
  free(buf);
  fclose(f);
  return rc;
}

int kd_table_load(const char *path, const struct kd_schema *s, struct kd_load_params p,
                  struct kd_table *t, struct kd_load_report *r, struct kd_err *e) {
  struct kd_load_report dummy;
  if (!r) r = &dummy;
  memset(r, 0, sizeof(*r));
  memset(t, 0, sizeof(*t));
  uint64_t fh;
  int rc = kd_file_hash(path, &fh, e);
  if (rc) return rc;
  uint64_t fp = kd_mix64(fh ^ kd_mix64(s->hash + 0x51ED27u));
  if (p.use_cache) {
    if (p.cache_dir) {
      const char *base = strrchr(path, '/');
      base = base ? base + 1 : path;
      snprintf(r->cache_path, sizeof r->cache_path, "%s/%s.%016llx.kdcache", p.cache_dir, base,
               (unsigned long long)fp);
    } else {
      snprintf(r->cache_path, sizeof r->cache_path, "%s.kdcache", path);
    }
    struct kd_err ce;
    if (kd_table_cache_read(r->cache_path, &s->arch, fp, t, &ce) == KD_OK) {
      r->from_cache = 1;
      r->rows = t->n;
      return KD_OK;
    }
  }
  rc = kd_table_parse_tsv(path, s, p, t, r, e);
  if (rc) return rc;
  t->fingerprint = fp;
  if (p.use_cache) {
    struct kd_err ce;
    if (kd_table_cache_write(r->cache_path, t, &s->arch, &ce))
      fprintf(stderr, "kdrank-train: warning: %s\n", ce.msg); /* a cache is an optimisation */
  }
  return KD_OK;
}
