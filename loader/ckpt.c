/* ckpt.c - the checkpoint file (loader/FORMAT.md): atomic writer and fully verifying reader.
 * The reader trusts nothing in the file: every size, offset and count is bound-checked before it
 * is used, every CRC is verified, and the tensor table must match the architecture's own
 * kd_arch_tensor() table exactly. Any input either opens or yields a message naming the file,
 * what was wrong, the expected and the found value; it never reads outside the file. */
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <limits.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "kdrank_loader.h"
#include "loader_internal.h"

struct kd_ckpt {
  char *name;                /* file name, for messages */
  const unsigned char *base; /* the whole file (mmap or an aligned copy) */
  size_t len;
  int mapped;                /* 1: munmap base */
  void *owned;               /* open_mem's aligned copy, freed on close */
  uint32_t minor;
  uint32_t crc;              /* CRC32C over header + metadata + table */
  uint32_t n_meta;
  struct kd_meta *meta;      /* [n_meta], file order */
  char *strs;                /* keys and string values, NUL terminated */
  uint32_t *sorted;          /* meta indices sorted by key, for lookups */
  struct kd_model *model;    /* views into base */
};

/* ---------------------------------------------------------------------------------------------
 * Shared helpers
 * ------------------------------------------------------------------------------------------- */

static int is_bad_float(const float *p, size_t n, size_t *at) {
  for (size_t i = 0; i < n; i++) {
    uint32_t b;
    memcpy(&b, &p[i], 4);
    if ((b & 0x7F800000u) == 0x7F800000u) {
      *at = i;
      return 1;
    }
  }
  return 0;
}

/* Strict UTF-8 (no overlongs, no surrogates, <= U+10FFFF) and no NUL. Returns 1 when valid. */
static int utf8_valid(const unsigned char *s, size_t n) {
  size_t i = 0;
  while (i < n) {
    unsigned c = s[i];
    if (c == 0) return 0;
    if (c < 0x80) { i++; continue; }
    size_t k;
    unsigned min;
    unsigned cp;
    if ((c & 0xE0) == 0xC0) { k = 1; min = 0x80; cp = c & 0x1F; }
    else if ((c & 0xF0) == 0xE0) { k = 2; min = 0x800; cp = c & 0x0F; }
    else if ((c & 0xF8) == 0xF0) { k = 3; min = 0x10000; cp = c & 0x07; }
    else return 0;
    if (n - i <= k) return 0;
    for (size_t j = 1; j <= k; j++) {
      if ((s[i + j] & 0xC0) != 0x80) return 0;
      cp = (cp << 6) | (s[i + j] & 0x3F);
    }
    if (cp < min || cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF)) return 0;
    i += k + 1;
  }
  return 1;
}

/* Metadata keys: 1..255 bytes of [A-Za-z0-9_.-]. */
static int key_valid(const char *k, size_t n) {
  if (n == 0 || n > KD_CKPT_KEY_MAX) return 0;
  for (size_t i = 0; i < n; i++) {
    char c = k[i];
    if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '_' ||
          c == '.' || c == '-'))
      return 0;
  }
  return 1;
}

static const char *meta_type_name(uint32_t t) {
  static const char *n[] = {"u32", "u64", "i64", "f32", "f64", "bool", "str"};
  return t < sizeof n / sizeof n[0] ? n[t] : "unknown";
}

static const char *kind_str(uint32_t k) { return k == KD_FEAT_SPARSE ? "sparse" : "dense"; }
static const char *group_str(uint32_t g) { return g == KD_GROUP_CANDIDATE ? "candidate" : "context"; }
static const char *ttype_str(uint32_t t) { return t == KD_TASK_REGRESSION ? "regression" : "binary"; }
static const char *xform_str(uint32_t x) { return x == KD_XFORM_LOG1P ? "log1p" : "identity"; }

static size_t meta_value_size(const struct kd_meta *m) {
  switch (m->type) {
  case KD_META_U32: case KD_META_F32: return 4;
  case KD_META_U64: case KD_META_I64: case KD_META_F64: return 8;
  case KD_META_BOOL: return 1;
  case KD_META_STR: return 8 + strlen(m->v.s);
  default: return 0;
  }
}

/* ---------------------------------------------------------------------------------------------
 * Writer
 * ------------------------------------------------------------------------------------------- */

/* A growable byte buffer for header + metadata + table. */
struct wbuf {
  unsigned char *p;
  size_t n, cap;
  int oom;
};

static unsigned char *wbuf_grow(struct wbuf *b, size_t add) {
  if (b->oom) return NULL;
  if (b->n + add > b->cap) {
    size_t cap = b->cap ? b->cap : 4096;
    while (cap < b->n + add) cap *= 2;
    unsigned char *q = realloc(b->p, cap);
    if (!q) { b->oom = 1; return NULL; }
    memset(q + b->cap, 0, cap - b->cap);
    b->p = q;
    b->cap = cap;
  }
  unsigned char *r = b->p + b->n;
  b->n += add;
  return r;
}

static void wbuf_meta(struct wbuf *b, const struct kd_meta *m) {
  size_t kl = strlen(m->key);
  unsigned char *p = wbuf_grow(b, 4 + kl + 4 + meta_value_size(m));
  if (!p) return;
  kd_st32(p, (uint32_t)kl);
  memcpy(p + 4, m->key, kl);
  p += 4 + kl;
  kd_st32(p, m->type);
  p += 4;
  switch (m->type) {
  case KD_META_U32: kd_st32(p, (uint32_t)m->v.u); break;
  case KD_META_U64: kd_st64(p, m->v.u); break;
  case KD_META_I64: kd_st64(p, (uint64_t)m->v.i); break;
  case KD_META_F32: { float f = (float)m->v.f; memcpy(p, &f, 4); break; }
  case KD_META_F64: memcpy(p, &m->v.f, 8); break;
  case KD_META_BOOL: p[0] = m->v.u ? 1 : 0; break;
  case KD_META_STR: { size_t sl = strlen(m->v.s); kd_st64(p, sl); memcpy(p + 8, m->v.s, sl); break; }
  }
}

static void put_str(struct wbuf *b, uint32_t *n, const char *key, const char *s) {
  struct kd_meta m = {.key = key, .type = KD_META_STR};
  m.v.s = s;
  wbuf_meta(b, &m);
  (*n)++;
}
static void put_u32(struct wbuf *b, uint32_t *n, const char *key, uint32_t v) {
  struct kd_meta m = {.key = key, .type = KD_META_U32};
  m.v.u = v;
  wbuf_meta(b, &m);
  (*n)++;
}
static void put_u64(struct wbuf *b, uint32_t *n, const char *key, uint64_t v) {
  struct kd_meta m = {.key = key, .type = KD_META_U64};
  m.v.u = v;
  wbuf_meta(b, &m);
  (*n)++;
}

/* Appends the architecture as arch.* keys (FORMAT.md, "Architecture keys"). */
static void put_arch(struct wbuf *b, uint32_t *n, const struct kd_arch *a) {
  char k[128];
  put_str(b, n, "arch.name", a->name);
  struct kd_meta clip = {.key = "arch.act_clip", .type = KD_META_F32};
  clip.v.f = a->act_clip;
  wbuf_meta(b, &clip);
  (*n)++;
  put_u32(b, n, "arch.n_features", a->n_features);
  for (uint32_t i = 0; i < a->n_features; i++) {
    const struct kd_feature *f = &a->features[i];
    snprintf(k, sizeof k, "arch.feature.%u.name", i); put_str(b, n, k, f->name);
    snprintf(k, sizeof k, "arch.feature.%u.kind", i); put_str(b, n, k, kind_str(f->kind));
    snprintf(k, sizeof k, "arch.feature.%u.group", i); put_str(b, n, k, group_str(f->group));
    snprintf(k, sizeof k, "arch.feature.%u.dim", i); put_u32(b, n, k, f->dim);
    snprintf(k, sizeof k, "arch.feature.%u.rows", i); put_u64(b, n, k, f->rows);
  }
  put_u32(b, n, "arch.n_shared", a->n_shared);
  for (uint32_t l = 0; l < a->n_shared; l++) {
    snprintf(k, sizeof k, "arch.shared.%u.width", l); put_u32(b, n, k, a->shared[l]);
  }
  put_u32(b, n, "arch.n_tower", a->n_tower);
  for (uint32_t j = 0; j < a->n_tower; j++) {
    snprintf(k, sizeof k, "arch.tower.%u.width", j); put_u32(b, n, k, a->tower[j]);
  }
  put_u32(b, n, "arch.n_tasks", a->n_tasks);
  for (uint32_t t = 0; t < a->n_tasks; t++) {
    const struct kd_task *tk = &a->tasks[t];
    snprintf(k, sizeof k, "arch.task.%u.name", t); put_str(b, n, k, tk->name);
    snprintf(k, sizeof k, "arch.task.%u.type", t); put_str(b, n, k, ttype_str(tk->type));
    snprintf(k, sizeof k, "arch.task.%u.xform", t); put_str(b, n, k, xform_str(tk->xform));
    struct kd_meta s = {.type = KD_META_BOOL};
    snprintf(k, sizeof k, "arch.task.%u.served", t);
    s.key = k;
    s.v.u = tk->served ? 1 : 0;
    wbuf_meta(b, &s);
    (*n)++;
  }
}

/* Checks the caller's metadata: key syntax, reserved namespaces, types, strings, duplicates. */
static int check_user_meta(const char *path, const struct kd_meta *meta, uint32_t n_meta,
                           struct kd_err *e) {
  if (n_meta && !meta) return kd_err_set(e, KD_ERR_INVALID, "%s: metadata: %u entries but no array", path, n_meta);
  for (uint32_t i = 0; i < n_meta; i++) {
    const struct kd_meta *m = &meta[i];
    if (!m->key || !key_valid(m->key, strlen(m->key)))
      return kd_err_set(e, KD_ERR_INVALID,
                        "%s: metadata entry %u: key expected 1..255 chars of [A-Za-z0-9_.-], found \"%s\"",
                        path, i, m->key ? m->key : "(null)");
    if (!strncmp(m->key, "arch.", 5) || (!strncmp(m->key, "general.", 8) && strcmp(m->key, "general.name")))
      return kd_err_set(e, KD_ERR_INVALID,
                        "%s: metadata key \"%s\": the arch.* and general.* keys are written from the model "
                        "(only general.name may be given)", path, m->key);
    if (m->type > KD_META_STR)
      return kd_err_set(e, KD_ERR_INVALID, "%s: metadata key \"%s\": type expected 0..6, found %u", path,
                        m->key, m->type);
    if (m->type == KD_META_STR) {
      if (!m->v.s) return kd_err_set(e, KD_ERR_INVALID, "%s: metadata key \"%s\": string value is NULL", path, m->key);
      if (!utf8_valid((const unsigned char *)m->v.s, strlen(m->v.s)))
        return kd_err_set(e, KD_ERR_INVALID, "%s: metadata key \"%s\": value is not valid UTF-8", path, m->key);
    }
    if (!strcmp(m->key, "general.name") && (m->type != KD_META_STR || !m->v.s[0]))
      return kd_err_set(e, KD_ERR_INVALID, "%s: metadata key general.name: expected a non-empty string, found %s", path,
                        m->type != KD_META_STR ? meta_type_name(m->type) : "\"\"");
    for (uint32_t j = 0; j < i; j++)
      if (!strcmp(meta[j].key, m->key))
        return kd_err_set(e, KD_ERR_INVALID, "%s: metadata key \"%s\" given twice (entries %u and %u)", path,
                          m->key, j, i);
  }
  return KD_OK;
}

static int write_all(int fd, const void *buf, size_t n) {
  const unsigned char *p = buf;
  while (n) {
    ssize_t w = write(fd, p, n > (1u << 30) ? (1u << 30) : n);
    if (w < 0) {
      if (errno == EINTR) continue;
      return -1;
    }
    if (w == 0) { errno = EIO; return -1; }
    p += w;
    n -= (size_t)w;
  }
  return 0;
}

static size_t align_up(size_t x, size_t a) { return (x + a - 1) / a * a; }

int kd_ckpt_write(const char *path, const struct kd_model *m, const struct kd_meta *meta,
                  uint32_t n_meta, struct kd_err *e) {
  struct wbuf b = {0};
  char *tmp = NULL;
  int fd = -1, rc;
  if (!path || !*path) return kd_err_set(e, KD_ERR_INVALID, "checkpoint write: empty path");
  if (!m) return kd_err_set(e, KD_ERR_INVALID, "%s: checkpoint write: no model", path);
  const struct kd_arch *a = &m->arch;
  struct kd_err ae = {0};
  if (kd_arch_validate(a, &ae) != KD_OK)
    return kd_err_set(e, KD_ERR_INVALID, "%s: architecture: %s", path, ae.msg);
  size_t anl = strnlen(a->name, KD_NAME_MAX);
  if (anl == 0 || anl >= KD_NAME_MAX || !utf8_valid((const unsigned char *)a->name, anl))
    return kd_err_set(e, KD_ERR_INVALID, "%s: architecture name: expected 1..%d bytes of UTF-8, found %s", path,
                      KD_NAME_MAX - 1, anl == 0 ? "an empty name" : "other bytes");
  uint32_t nt = kd_arch_n_tensors(a);
  if (m->n_tensors != nt)
    return kd_err_set(e, KD_ERR_INVALID, "%s: model tensors: expected %u (architecture), found %u", path, nt,
                      m->n_tensors);
  if ((rc = check_user_meta(path, meta, n_meta, e)) != KD_OK) return rc;

  /* Tensor shapes, and no NaN/Inf anywhere. */
  struct kd_tensor_info ti;
  for (uint32_t i = 0; i < nt; i++) {
    if (kd_arch_tensor(a, i, &ti) != KD_OK)
      return kd_err_set(e, KD_ERR_INVALID, "%s: tensor %u: not in the architecture's table", path, i);
    if (!m->t[i]) return kd_err_set(e, KD_ERR_INVALID, "%s: tensor '%s': no data (NULL)", path, ti.name);
    size_t at;
    if (is_bad_float(m->t[i], ti.numel, &at))
      return kd_err_set(e, KD_ERR_INVALID, "%s: tensor '%s' element %zu: expected a finite float, found %g",
                        path, ti.name, at, (double)m->t[i][at]);
  }

  /* Metadata: general.*, arch.*, then the caller's keys in order. */
  const char *gname = a->name;
  for (uint32_t i = 0; i < n_meta; i++)
    if (!strcmp(meta[i].key, "general.name")) gname = meta[i].v.s;
  uint32_t nm = 0;
  unsigned char *h = wbuf_grow(&b, KD_CKPT_HEADER_SIZE);
  put_str(&b, &nm, "general.name", gname);
  put_str(&b, &nm, "general.writer", "kdrank " KD_VERSION);
  put_arch(&b, &nm, a);
  for (uint32_t i = 0; i < n_meta; i++) {
    if (strcmp(meta[i].key, "general.name")) {
      wbuf_meta(&b, &meta[i]);
      nm++;
    }
  }
  size_t meta_off = KD_CKPT_HEADER_SIZE, meta_size = b.n - meta_off;
  /* Table after the metadata, 8-aligned. */
  size_t tab_off = align_up(b.n, 8);
  size_t tab_size = (size_t)nt * KD_CKPT_ENTRY_SIZE;
  if (!wbuf_grow(&b, tab_off - b.n + tab_size)) goto oom;
  size_t doff = align_up(b.n, KD_CKPT_ALIGN), dpos = 0;
  for (uint32_t i = 0; i < nt; i++) {
    kd_arch_tensor(a, i, &ti);
    unsigned char *r = b.p + tab_off + (size_t)i * KD_CKPT_ENTRY_SIZE;
    memset(r, 0, KD_CKPT_ENTRY_SIZE);
    snprintf((char *)r + KD_E_NAME, KD_CKPT_TNAME, "%s", ti.name);
    kd_st32(r + KD_E_DTYPE, KD_CKPT_DTYPE_F32);
    kd_st32(r + KD_E_NDIM, ti.ndim);
    for (uint32_t d = 0; d < ti.ndim && d < 2; d++) kd_st64(r + KD_E_SHAPE + 8 * d, ti.shape[d]);
    kd_st64(r + KD_E_OFFSET, dpos);
    kd_st64(r + KD_E_SIZE, ti.numel * 4);
    kd_st32(r + KD_E_CRC, kd_crc32c(0, m->t[i], ti.numel * 4));
    dpos = align_up(dpos + ti.numel * 4, KD_CKPT_ALIGN);
  }
  size_t data_size = dpos, file_size = doff + data_size + KD_CKPT_END_SIZE;
  h = b.p;
  memcpy(h + KD_H_MAGIC, KD_CKPT_MAGIC, 4);
  kd_st16(h + KD_H_MAJOR, KD_CKPT_MAJOR);
  kd_st16(h + KD_H_MINOR, KD_CKPT_MINOR);
  kd_st32(h + KD_H_BOM, KD_CKPT_BOM);
  kd_st32(h + KD_H_HEADER_SIZE, KD_CKPT_HEADER_SIZE);
  kd_st64(h + KD_H_FILE_SIZE, file_size);
  kd_st64(h + KD_H_META_OFF, meta_off);
  kd_st64(h + KD_H_META_SIZE, meta_size);
  kd_st32(h + KD_H_N_META, nm);
  kd_st32(h + KD_H_N_TENSORS, nt);
  kd_st64(h + KD_H_TAB_OFF, tab_off);
  kd_st64(h + KD_H_TAB_SIZE, tab_size);
  kd_st32(h + KD_H_ENTRY_SIZE, KD_CKPT_ENTRY_SIZE);
  kd_st32(h + KD_H_ALIGN, KD_CKPT_ALIGN);
  kd_st64(h + KD_H_DATA_OFF, doff);
  kd_st64(h + KD_H_DATA_SIZE, data_size);
  kd_st32(h + KD_H_META_CRC, kd_crc32c(0, b.p + meta_off, meta_size));
  kd_st32(h + KD_H_TAB_CRC, kd_crc32c(0, b.p + tab_off, tab_size));
  kd_st32(h + KD_H_CRC, kd_ckpt_header_crc(h, KD_CKPT_HEADER_SIZE));
  uint32_t scrc = kd_crc32c(0, b.p, KD_CKPT_HEADER_SIZE);
  scrc = kd_crc32c(scrc, b.p + meta_off, meta_size);
  scrc = kd_crc32c(scrc, b.p + tab_off, tab_size);
  unsigned char end[KD_CKPT_END_SIZE] = {0};
  memcpy(end, KD_CKPT_END_MAGIC, 8);
  kd_st32(end + 8, scrc);
  /* Pad the prefix to the data offset (zeros). */
  if (!wbuf_grow(&b, doff - b.n)) goto oom;

  /* Temp file in the same directory, so rename() is atomic on the same file system. */
  const char *slash = strrchr(path, '/');
  size_t dlen = slash ? (size_t)(slash - path) : 0;
  const char *base = slash ? slash + 1 : path;
  if (!*base) { rc = kd_err_set(e, KD_ERR_INVALID, "%s: checkpoint path names a directory", path); goto fail; }
  size_t tl = dlen + strlen(base) + 32;
  tmp = malloc(tl);
  if (!tmp) goto oom;
  if (slash) snprintf(tmp, tl, "%.*s/.%s.tmp.XXXXXX", (int)dlen, path, base);
  else snprintf(tmp, tl, ".%s.tmp.XXXXXX", base);
  fd = mkostemp(tmp, O_CLOEXEC);
  if (fd < 0) {
    rc = kd_err_set(e, KD_ERR_IO, "%s: creating temp file %s: %s", path, tmp, strerror(errno));
    free(tmp);
    tmp = NULL;
    goto fail;
  }
  if (fchmod(fd, 0644) != 0) { rc = kd_err_set(e, KD_ERR_IO, "%s: chmod %s: %s", path, tmp, strerror(errno)); goto fail; }
  if (write_all(fd, b.p, doff) != 0) goto ioerr;
  static const unsigned char zeros[KD_CKPT_ALIGN];
  for (uint32_t i = 0; i < nt; i++) {
    kd_arch_tensor(a, i, &ti);
    size_t bytes = ti.numel * 4;
    if (write_all(fd, m->t[i], bytes) != 0) goto ioerr;
    size_t pad = align_up(bytes, KD_CKPT_ALIGN) - bytes;
    if (pad && write_all(fd, zeros, pad) != 0) goto ioerr;
  }
  if (write_all(fd, end, sizeof end) != 0) goto ioerr;
  if (fsync(fd) != 0) goto ioerr;
  if (close(fd) != 0) { fd = -1; goto ioerr; }
  fd = -1;
  if (rename(tmp, path) != 0) {
    rc = kd_err_set(e, KD_ERR_IO, "%s: rename from %s: %s", path, tmp, strerror(errno));
    goto fail;
  }
  free(tmp);
  tmp = NULL;
  /* Make the rename durable. */
  {
    char *dir = slash ? strndup(path, dlen ? dlen : 1) : strdup(".");
    if (!dir) goto oom;
    int dfd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (dfd < 0 || fsync(dfd) != 0) {
      rc = kd_err_set(e, KD_ERR_IO, "%s: fsync of directory %s: %s", path, dir, strerror(errno));
      if (dfd >= 0) close(dfd);
      free(dir);
      goto fail;
    }
    close(dfd);
    free(dir);
  }
  free(b.p);
  return KD_OK;

ioerr:
  rc = kd_err_set(e, KD_ERR_IO, "%s: writing %s: %s", path, tmp, strerror(errno));
  goto fail;
oom:
  rc = kd_err_set(e, KD_ERR_NOMEM, "%s: out of memory while writing the checkpoint", path);
fail:
  if (fd >= 0) close(fd);
  if (tmp) {
    unlink(tmp);
    free(tmp);
  }
  free(b.p);
  return rc;
}

/* ---------------------------------------------------------------------------------------------
 * Reader
 * ------------------------------------------------------------------------------------------- */

#define FAIL(code, ...) do { rc = kd_err_set(e, code, __VA_ARGS__); goto fail; } while (0)

static void hexdump(char *out, size_t cap, const unsigned char *p, size_t n) {
  size_t o = 0;
  out[0] = 0;
  for (size_t i = 0; i < n && o + 4 < cap; i++) o += (size_t)snprintf(out + o, cap - o, "%s%02X", i ? " " : "", p[i]);
}

static int cmp_key(const void *x, const void *y, void *ctx) {
  const struct kd_meta *m = ctx;
  uint32_t a = *(const uint32_t *)x, b = *(const uint32_t *)y;
  int c = strcmp(m[a].key, m[b].key);
  return c ? c : (a < b ? -1 : a > b);
}

/* Parses the metadata section into c->meta (strings copied, NUL terminated). */
static int parse_meta(kd_ckpt *c, const unsigned char *p, uint64_t size, uint32_t n, struct kd_err *e) {
  int rc = KD_OK;
  const char *f = c->name;
  /* The smallest entry is 4 (key len) + 1 (key) + 4 (type) + 1 (bool) = 10 bytes. */
  if (n > size / 10)
    return kd_err_set(e, KD_ERR_CORRUPT, "%s: metadata: %u entries cannot fit in %" PRIu64 " bytes", f, n, size);
  c->meta = calloc(n ? n : 1, sizeof *c->meta);
  c->sorted = calloc(n ? n : 1, sizeof *c->sorted);
  c->strs = malloc(size + 2 * (size_t)n + 1);
  if (!c->meta || !c->sorted || !c->strs) return kd_err_set(e, KD_ERR_NOMEM, "%s: out of memory for metadata", f);
  uint64_t pos = 0;
  size_t sp = 0;
  for (uint32_t i = 0; i < n; i++) {
    struct kd_meta *m = &c->meta[i];
    if (size - pos < 4) FAIL(KD_ERR_CORRUPT, "%s: metadata entry %u at offset %" PRIu64 ": key length: expected 4 bytes, found %" PRIu64 " left", f, i, pos, size - pos);
    uint32_t kl = kd_ld32(p + pos);
    pos += 4;
    if (kl == 0 || kl > KD_CKPT_KEY_MAX)
      FAIL(KD_ERR_CORRUPT, "%s: metadata entry %u: key length expected 1..%u, found %u", f, i, KD_CKPT_KEY_MAX, kl);
    if (size - pos < kl) FAIL(KD_ERR_CORRUPT, "%s: metadata entry %u: key of %u bytes runs past the section end", f, i, kl);
    if (!key_valid((const char *)p + pos, kl))
      FAIL(KD_ERR_CORRUPT, "%s: metadata entry %u: key expected chars [A-Za-z0-9_.-], found other bytes", f, i);
    memcpy(c->strs + sp, p + pos, kl);
    c->strs[sp + kl] = 0;
    m->key = c->strs + sp;
    sp += kl + 1;
    pos += kl;
    if (size - pos < 4) FAIL(KD_ERR_CORRUPT, "%s: metadata key \"%s\": type runs past the section end", f, m->key);
    m->type = kd_ld32(p + pos);
    pos += 4;
    uint64_t vsz;
    switch (m->type) {
    case KD_META_U32: case KD_META_F32: vsz = 4; break;
    case KD_META_U64: case KD_META_I64: case KD_META_F64: vsz = 8; break;
    case KD_META_BOOL: vsz = 1; break;
    case KD_META_STR: vsz = 8; break;
    default: FAIL(KD_ERR_CORRUPT, "%s: metadata key \"%s\": type expected 0..6, found %u", f, m->key, m->type);
    }
    if (size - pos < vsz)
      FAIL(KD_ERR_CORRUPT, "%s: metadata key \"%s\": %s value runs past the section end", f, m->key, meta_type_name(m->type));
    const unsigned char *v = p + pos;
    pos += vsz;
    switch (m->type) {
    case KD_META_U32: m->v.u = kd_ld32(v); break;
    case KD_META_U64: m->v.u = kd_ld64(v); break;
    case KD_META_I64: m->v.i = (int64_t)kd_ld64(v); break;
    case KD_META_F32: { float x; memcpy(&x, v, 4); m->v.f = x; break; }
    case KD_META_F64: memcpy(&m->v.f, v, 8); break;
    case KD_META_BOOL:
      if (v[0] > 1) FAIL(KD_ERR_CORRUPT, "%s: metadata key \"%s\": bool expected 0 or 1, found %u", f, m->key, v[0]);
      m->v.u = v[0];
      break;
    case KD_META_STR: {
      uint64_t sl = kd_ld64(v);
      if (sl > size - pos)
        FAIL(KD_ERR_CORRUPT, "%s: metadata key \"%s\": string of %" PRIu64 " bytes runs past the section end (%" PRIu64 " left)", f, m->key, sl, size - pos);
      if (!utf8_valid(p + pos, sl))
        FAIL(KD_ERR_CORRUPT, "%s: metadata key \"%s\": string expected valid UTF-8 without NUL, found other bytes", f, m->key);
      memcpy(c->strs + sp, p + pos, sl);
      c->strs[sp + sl] = 0;
      m->v.s = c->strs + sp;
      sp += sl + 1;
      pos += sl;
      break;
    }
    }
  }
  if (pos != size)
    FAIL(KD_ERR_CORRUPT, "%s: metadata: %u entries end at byte %" PRIu64 ", expected the section size %" PRIu64, f, n, pos, size);
  for (uint32_t i = 0; i < n; i++) c->sorted[i] = i;
  qsort_r(c->sorted, n, sizeof *c->sorted, cmp_key, c->meta);
  for (uint32_t i = 1; i < n; i++)
    if (!strcmp(c->meta[c->sorted[i]].key, c->meta[c->sorted[i - 1]].key))
      FAIL(KD_ERR_CORRUPT, "%s: metadata key \"%s\": expected once, found twice (entries %u and %u)", f,
           c->meta[c->sorted[i]].key, c->sorted[i - 1], c->sorted[i]);
  c->n_meta = n;
fail:
  return rc;
}

static const struct kd_meta *find(const kd_ckpt *c, const char *key) {
  size_t lo = 0, hi = c->n_meta;
  while (lo < hi) {
    size_t mid = (lo + hi) / 2;
    const struct kd_meta *m = &c->meta[c->sorted[mid]];
    int r = strcmp(m->key, key);
    if (!r) return m;
    if (r < 0) lo = mid + 1;
    else hi = mid;
  }
  return NULL;
}

/* Fetches a required key of a type. */
static int need(const kd_ckpt *c, const char *key, uint32_t type, const struct kd_meta **out, struct kd_err *e) {
  const struct kd_meta *m = find(c, key);
  if (!m) return kd_err_set(e, KD_ERR_CORRUPT, "%s: metadata key \"%s\": expected (%s), found none", c->name, key, meta_type_name(type));
  if (m->type != type)
    return kd_err_set(e, KD_ERR_CORRUPT, "%s: metadata key \"%s\": type expected %s, found %s", c->name, key,
                      meta_type_name(type), meta_type_name(m->type));
  *out = m;
  return KD_OK;
}

static int need_u32(const kd_ckpt *c, const char *key, uint32_t max, uint32_t *out, struct kd_err *e) {
  const struct kd_meta *m;
  int rc = need(c, key, KD_META_U32, &m, e);
  if (rc) return rc;
  if (m->v.u > max)
    return kd_err_set(e, KD_ERR_CORRUPT, "%s: metadata key \"%s\": expected at most %u, found %" PRIu64, c->name, key, max, m->v.u);
  *out = (uint32_t)m->v.u;
  return KD_OK;
}

static int need_name(const kd_ckpt *c, const char *key, char *out, struct kd_err *e) {
  const struct kd_meta *m;
  int rc = need(c, key, KD_META_STR, &m, e);
  if (rc) return rc;
  size_t n = strlen(m->v.s);
  if (n == 0 || n >= KD_NAME_MAX)
    return kd_err_set(e, KD_ERR_CORRUPT, "%s: metadata key \"%s\": name length expected 1..%d, found %zu", c->name,
                      key, KD_NAME_MAX - 1, n);
  memcpy(out, m->v.s, n + 1);
  return KD_OK;
}

/* Maps a string key onto one of two enum values. */
static int need_enum(const kd_ckpt *c, const char *key, const char *s0, const char *s1, uint32_t *out, struct kd_err *e) {
  const struct kd_meta *m;
  int rc = need(c, key, KD_META_STR, &m, e);
  if (rc) return rc;
  if (!strcmp(m->v.s, s0)) *out = 0;
  else if (!strcmp(m->v.s, s1)) *out = 1;
  else return kd_err_set(e, KD_ERR_CORRUPT, "%s: metadata key \"%s\": expected \"%s\" or \"%s\", found \"%s\"", c->name, key, s0, s1, m->v.s);
  return KD_OK;
}

/* Rebuilds the architecture from the arch.* keys and validates it. */
static int parse_arch(const kd_ckpt *c, struct kd_arch *a, struct kd_err *e) {
  char k[128];
  int rc;
  const struct kd_meta *m;
  memset(a, 0, sizeof *a);
  if ((rc = need_name(c, "arch.name", a->name, e))) return rc;
  if ((rc = need(c, "arch.act_clip", KD_META_F32, &m, e))) return rc;
  if (!(m->v.f >= 0) || isinf(m->v.f))
    return kd_err_set(e, KD_ERR_CORRUPT, "%s: metadata key \"arch.act_clip\": expected a finite value >= 0, found %g", c->name, m->v.f);
  a->act_clip = (float)m->v.f;
  if ((rc = need_u32(c, "arch.n_features", KD_MAX_FEATURES, &a->n_features, e))) return rc;
  for (uint32_t i = 0; i < a->n_features; i++) {
    struct kd_feature *f = &a->features[i];
    snprintf(k, sizeof k, "arch.feature.%u.name", i); if ((rc = need_name(c, k, f->name, e))) return rc;
    snprintf(k, sizeof k, "arch.feature.%u.kind", i); if ((rc = need_enum(c, k, "dense", "sparse", &f->kind, e))) return rc;
    snprintf(k, sizeof k, "arch.feature.%u.group", i); if ((rc = need_enum(c, k, "context", "candidate", &f->group, e))) return rc;
    snprintf(k, sizeof k, "arch.feature.%u.dim", i); if ((rc = need_u32(c, k, UINT32_MAX, &f->dim, e))) return rc;
    snprintf(k, sizeof k, "arch.feature.%u.rows", i); if ((rc = need(c, k, KD_META_U64, &m, e))) return rc;
    f->rows = m->v.u;
  }
  if ((rc = need_u32(c, "arch.n_shared", KD_MAX_LAYERS, &a->n_shared, e))) return rc;
  for (uint32_t l = 0; l < a->n_shared; l++) {
    snprintf(k, sizeof k, "arch.shared.%u.width", l); if ((rc = need_u32(c, k, UINT32_MAX, &a->shared[l], e))) return rc;
  }
  if ((rc = need_u32(c, "arch.n_tower", KD_MAX_LAYERS, &a->n_tower, e))) return rc;
  for (uint32_t j = 0; j < a->n_tower; j++) {
    snprintf(k, sizeof k, "arch.tower.%u.width", j); if ((rc = need_u32(c, k, UINT32_MAX, &a->tower[j], e))) return rc;
  }
  if ((rc = need_u32(c, "arch.n_tasks", KD_MAX_TASKS, &a->n_tasks, e))) return rc;
  for (uint32_t t = 0; t < a->n_tasks; t++) {
    struct kd_task *tk = &a->tasks[t];
    snprintf(k, sizeof k, "arch.task.%u.name", t); if ((rc = need_name(c, k, tk->name, e))) return rc;
    snprintf(k, sizeof k, "arch.task.%u.type", t); if ((rc = need_enum(c, k, "binary", "regression", &tk->type, e))) return rc;
    snprintf(k, sizeof k, "arch.task.%u.xform", t); if ((rc = need_enum(c, k, "identity", "log1p", &tk->xform, e))) return rc;
    snprintf(k, sizeof k, "arch.task.%u.served", t); if ((rc = need(c, k, KD_META_BOOL, &m, e))) return rc;
    tk->served = (uint32_t)m->v.u;
  }
  struct kd_err ae = {0};
  if (kd_arch_validate(a, &ae) != KD_OK)
    return kd_err_set(e, KD_ERR_CORRUPT, "%s: architecture in metadata: %s", c->name, ae.msg);
  return KD_OK;
}

struct span {
  uint64_t off, size;
};
static int cmp_span(const void *x, const void *y) {
  const struct span *a = x, *b = y;
  return a->off < b->off ? -1 : a->off > b->off;
}

static int all_zero(const unsigned char *p, uint64_t n, uint64_t *at) {
  for (uint64_t i = 0; i < n; i++)
    if (p[i]) { *at = i; return 0; }
  return 1;
}

static void fmt_shape(char *out, size_t cap, uint32_t ndim, const uint64_t *s) {
  if (ndim == 1) snprintf(out, cap, "(%" PRIu64 ")", s[0]);
  else if (ndim == 2) snprintf(out, cap, "(%" PRIu64 ", %" PRIu64 ")", s[0], s[1]);
  else snprintf(out, cap, "(%u dims)", ndim);
}

/* Verifies c->base[0, len) completely and builds the model. */
static int ckpt_verify(kd_ckpt *c, struct kd_err *e) {
  const unsigned char *p = c->base;
  const uint64_t len = c->len;
  const char *f = c->name;
  char hx[64];
  int rc = KD_OK;
  struct span *spans = NULL;
  float **ptrs = NULL;

  if (len < 4) FAIL(KD_ERR_CORRUPT, "%s: not a kdrank checkpoint: expected at least the 4-byte magic \"KDRK\", found a %" PRIu64 "-byte file", f, len);
  if (memcmp(p, KD_CKPT_MAGIC, 4)) {
    hexdump(hx, sizeof hx, p, 4);
    FAIL(KD_ERR_CORRUPT, "%s: not a kdrank checkpoint: magic expected \"KDRK\" (4B 44 52 4B), found %s", f, hx);
  }
  if (len < KD_CKPT_HEADER_SIZE)
    FAIL(KD_ERR_CORRUPT, "%s: truncated: the header needs %u bytes, found a %" PRIu64 "-byte file", f, KD_CKPT_HEADER_SIZE, len);
  uint32_t bom = kd_ld32(p + KD_H_BOM);
  if (bom == KD_CKPT_BOM_SWAPPED)
    FAIL(KD_ERR_UNSUPPORTED, "%s: byte order: expected a little-endian file (BOM 0x%08X), found a big-endian one (0x%08X)", f, KD_CKPT_BOM, bom);
  if (bom != KD_CKPT_BOM)
    FAIL(KD_ERR_CORRUPT, "%s: byte-order mark: expected 0x%08X, found 0x%08X", f, KD_CKPT_BOM, bom);
  uint32_t major = kd_ld16(p + KD_H_MAJOR);
  c->minor = kd_ld16(p + KD_H_MINOR);
  if (major != KD_CKPT_MAJOR)
    FAIL(KD_ERR_UNSUPPORTED, "%s: format major version: expected %u, found %u (version %u.%u; %s)", f, KD_CKPT_MAJOR,
         major, major, c->minor, major > KD_CKPT_MAJOR ? "written by a newer kdrank" : "not a version any kdrank wrote");
  uint32_t hsize = kd_ld32(p + KD_H_HEADER_SIZE);
  if (hsize < KD_CKPT_HEADER_SIZE || hsize > KD_CKPT_HEADER_MAX || hsize % 8)
    FAIL(KD_ERR_CORRUPT, "%s: header size: expected %u..%u and a multiple of 8, found %u", f, KD_CKPT_HEADER_SIZE, KD_CKPT_HEADER_MAX, hsize);
  if (len < hsize) FAIL(KD_ERR_CORRUPT, "%s: truncated: the header needs %u bytes, found a %" PRIu64 "-byte file", f, hsize, len);
  uint32_t hcrc = kd_ckpt_header_crc(p, hsize), hstored = kd_ld32(p + KD_H_CRC);
  if (hcrc != hstored)
    FAIL(KD_ERR_CORRUPT, "%s: header CRC32C: expected 0x%08X (stored), found 0x%08X (computed over bytes 0..%u): the header is damaged", f, hstored, hcrc, hsize - 1);

  uint64_t fsize = kd_ld64(p + KD_H_FILE_SIZE);
  if (len < fsize) FAIL(KD_ERR_CORRUPT, "%s: truncated: the header records %" PRIu64 " bytes, found a %" PRIu64 "-byte file", f, fsize, len);
  if (len > fsize) FAIL(KD_ERR_CORRUPT, "%s: trailing data: the header records %" PRIu64 " bytes, found a %" PRIu64 "-byte file", f, fsize, len);
  uint32_t align = kd_ld32(p + KD_H_ALIGN), esize = kd_ld32(p + KD_H_ENTRY_SIZE);
  if (align != KD_CKPT_ALIGN) FAIL(KD_ERR_CORRUPT, "%s: alignment: expected %u, found %u", f, KD_CKPT_ALIGN, align);
  if (esize < KD_CKPT_ENTRY_SIZE || esize > KD_CKPT_ENTRY_MAX || esize % 8)
    FAIL(KD_ERR_CORRUPT, "%s: tensor table entry size: expected %u..%u and a multiple of 8, found %u", f, KD_CKPT_ENTRY_SIZE, KD_CKPT_ENTRY_MAX, esize);

  /* Sections: header | metadata | table | data | end marker, in this order, inside the file. */
  uint64_t moff = kd_ld64(p + KD_H_META_OFF), msize = kd_ld64(p + KD_H_META_SIZE);
  uint64_t toff = kd_ld64(p + KD_H_TAB_OFF), tsize = kd_ld64(p + KD_H_TAB_SIZE);
  uint64_t doff = kd_ld64(p + KD_H_DATA_OFF), dsize = kd_ld64(p + KD_H_DATA_SIZE);
  uint32_t n_meta = kd_ld32(p + KD_H_N_META), nt = kd_ld32(p + KD_H_N_TENSORS);
  if (fsize < (uint64_t)hsize + KD_CKPT_END_SIZE)
    FAIL(KD_ERR_CORRUPT, "%s: file size: expected at least %u (header + end marker), found %" PRIu64, f, hsize + KD_CKPT_END_SIZE, fsize);
  uint64_t end_off = fsize - KD_CKPT_END_SIZE;
  if (moff < hsize || moff > end_off || msize > end_off - moff)
    FAIL(KD_ERR_CORRUPT, "%s: metadata section [%" PRIu64 ", +%" PRIu64 "): expected inside [%u, %" PRIu64 ")", f, moff, msize, hsize, end_off);
  if (toff < moff + msize || toff > end_off || tsize > end_off - toff)
    FAIL(KD_ERR_CORRUPT, "%s: tensor table section [%" PRIu64 ", +%" PRIu64 "): expected inside [%" PRIu64 ", %" PRIu64 ") (after the metadata)", f, toff, tsize, moff + msize, end_off);
  if (doff < toff + tsize || doff > end_off || dsize != end_off - doff)
    FAIL(KD_ERR_CORRUPT, "%s: data section [%" PRIu64 ", +%" PRIu64 "): expected to start at or after %" PRIu64 " and end at the end marker (%" PRIu64 ")", f, doff, dsize, toff + tsize, end_off);
  if (doff % KD_CKPT_ALIGN)
    FAIL(KD_ERR_CORRUPT, "%s: data offset: expected a multiple of %u, found %" PRIu64, f, KD_CKPT_ALIGN, doff);
  if (tsize != (uint64_t)nt * esize)
    FAIL(KD_ERR_CORRUPT, "%s: tensor table size: expected %u tensors x %u bytes = %" PRIu64 ", found %" PRIu64, f, nt, esize, (uint64_t)nt * esize, tsize);
  uint64_t at;
  if (!all_zero(p + hsize, moff - hsize, &at) || !all_zero(p + moff + msize, toff - moff - msize, &at) ||
      !all_zero(p + toff + tsize, doff - toff - tsize, &at))
    FAIL(KD_ERR_CORRUPT, "%s: padding between sections: expected zero bytes, found a non-zero byte", f);

  uint32_t mcrc = kd_crc32c(0, p + moff, msize), mstored = kd_ld32(p + KD_H_META_CRC);
  if (mcrc != mstored)
    FAIL(KD_ERR_CORRUPT, "%s: metadata CRC32C: expected 0x%08X (stored), found 0x%08X (computed over bytes %" PRIu64 "..%" PRIu64 "): the metadata is damaged", f, mstored, mcrc, moff, moff + msize - 1);
  uint32_t tcrc = kd_crc32c(0, p + toff, tsize), tstored = kd_ld32(p + KD_H_TAB_CRC);
  if (tcrc != tstored)
    FAIL(KD_ERR_CORRUPT, "%s: tensor table CRC32C: expected 0x%08X (stored), found 0x%08X (computed over bytes %" PRIu64 "..%" PRIu64 "): the tensor table is damaged", f, tstored, tcrc, toff, toff + tsize - 1);
  const unsigned char *end = p + end_off;
  if (memcmp(end, KD_CKPT_END_MAGIC, 8)) {
    hexdump(hx, sizeof hx, end, 8);
    FAIL(KD_ERR_CORRUPT, "%s: end marker at offset %" PRIu64 ": expected \"KDRK-END\", found %s", f, end_off, hx);
  }
  if (kd_ld32(end + 12) != 0)
    FAIL(KD_ERR_CORRUPT, "%s: end marker at offset %" PRIu64 ": reserved bytes 12..15 expected 0, found 0x%08X", f, end_off, kd_ld32(end + 12));
  c->crc = kd_crc32c(kd_crc32c(kd_crc32c(0, p, hsize), p + moff, msize), p + toff, tsize);
  if (kd_ld32(end + 8) != c->crc)
    FAIL(KD_ERR_CORRUPT, "%s: end marker CRC32C of header+metadata+table: expected 0x%08X (stored), found 0x%08X (computed)", f, kd_ld32(end + 8), c->crc);

  if ((rc = parse_meta(c, p + moff, msize, n_meta, e))) goto fail;
  struct kd_arch arch;
  if ((rc = parse_arch(c, &arch, e))) goto fail;
  const struct kd_meta *gn = find(c, "general.name");
  if (!gn || gn->type != KD_META_STR || !gn->v.s[0])
    FAIL(KD_ERR_CORRUPT, "%s: metadata key \"general.name\": expected a non-empty string, found %s", f, gn ? "another value" : "none");

  uint32_t want = kd_arch_n_tensors(&arch);
  if (nt != want)
    FAIL(KD_ERR_CORRUPT, "%s: tensor count: expected %u (architecture %s), found %u", f, want, arch.name, nt);
  spans = calloc(nt ? nt : 1, sizeof *spans);
  ptrs = calloc(nt ? nt : 1, sizeof *ptrs);
  if (!spans || !ptrs) FAIL(KD_ERR_NOMEM, "%s: out of memory", f);
  for (uint32_t i = 0; i < nt; i++) {
    const unsigned char *r = p + toff + (uint64_t)i * esize;
    struct kd_tensor_info ti;
    if (kd_arch_tensor(&arch, i, &ti) != KD_OK) FAIL(KD_ERR_CORRUPT, "%s: tensor %u: not in the architecture's table", f, i);
    char nm[KD_CKPT_TNAME + 1];
    memcpy(nm, r + KD_E_NAME, KD_CKPT_TNAME);
    nm[KD_CKPT_TNAME] = 0;
    if (memchr(r + KD_E_NAME, 0, KD_CKPT_TNAME) == NULL)
      FAIL(KD_ERR_CORRUPT, "%s: tensor %u: name expected NUL-terminated within %u bytes, found none", f, i, KD_CKPT_TNAME);
    for (size_t j = 0; nm[j]; j++)
      if ((unsigned char)nm[j] < 0x20 || (unsigned char)nm[j] > 0x7E) nm[j] = '?';
    if (strcmp(nm, ti.name)) FAIL(KD_ERR_CORRUPT, "%s: tensor %u: name expected \"%s\", found \"%s\"", f, i, ti.name, nm);
    uint32_t dtype = kd_ld32(r + KD_E_DTYPE), ndim = kd_ld32(r + KD_E_NDIM);
    if (dtype != KD_CKPT_DTYPE_F32) FAIL(KD_ERR_CORRUPT, "%s: tensor '%s': dtype expected 0 (f32), found %u", f, nm, dtype);
    uint64_t shape[KD_CKPT_MAX_DIMS];
    for (uint32_t d = 0; d < KD_CKPT_MAX_DIMS; d++) shape[d] = kd_ld64(r + KD_E_SHAPE + 8 * d);
    char se[64], sf[64];
    fmt_shape(se, sizeof se, ti.ndim, ti.shape);
    if (ndim != ti.ndim) {
      FAIL(KD_ERR_CORRUPT, "%s: tensor '%s': ndim expected %u %s, found %u", f, nm, ti.ndim, se, ndim);
    }
    int same = 1;
    for (uint32_t d = 0; d < KD_CKPT_MAX_DIMS; d++) same &= shape[d] == (d < ndim ? ti.shape[d] : 0);
    if (!same) {
      fmt_shape(sf, sizeof sf, ndim, shape);
      FAIL(KD_ERR_CORRUPT, "%s: tensor '%s': shape expected %s (architecture %s), found %s", f, nm, se, arch.name, sf);
    }
    uint64_t numel = 1, bytes;
    for (uint32_t d = 0; d < ndim; d++)
      if (__builtin_mul_overflow(numel, shape[d], &numel)) FAIL(KD_ERR_CORRUPT, "%s: tensor '%s': shape %s overflows", f, nm, se);
    if (__builtin_mul_overflow(numel, 4, &bytes)) FAIL(KD_ERR_CORRUPT, "%s: tensor '%s': shape %s overflows", f, nm, se);
    uint64_t off = kd_ld64(r + KD_E_OFFSET), sz = kd_ld64(r + KD_E_SIZE);
    if (sz != bytes) FAIL(KD_ERR_CORRUPT, "%s: tensor '%s': size expected %" PRIu64 " bytes (%s f32), found %" PRIu64, f, nm, bytes, se, sz);
    if (off % KD_CKPT_ALIGN) FAIL(KD_ERR_CORRUPT, "%s: tensor '%s': offset expected a multiple of %u, found %" PRIu64, f, nm, KD_CKPT_ALIGN, off);
    if (off > dsize || sz > dsize - off)
      FAIL(KD_ERR_CORRUPT, "%s: tensor '%s': bytes [%" PRIu64 ", +%" PRIu64 ") expected inside the data section of %" PRIu64 " bytes", f, nm, off, sz, dsize);
    spans[i].off = off;
    spans[i].size = sz;
    ptrs[i] = (float *)(uintptr_t)(p + doff + off);
  }
  /* No two tensors overlap, and every byte of the data section not in a tensor is zero. */
  qsort(spans, nt, sizeof *spans, cmp_span);
  uint64_t cur = 0;
  for (uint32_t i = 0; i < nt; i++) {
    if (spans[i].off < cur)
      FAIL(KD_ERR_CORRUPT, "%s: tensor data: tensors overlap (one at data offset %" PRIu64 " starts before the previous one ends at %" PRIu64 ")", f, spans[i].off, cur);
    if (!all_zero(p + doff + cur, spans[i].off - cur, &at))
      FAIL(KD_ERR_CORRUPT, "%s: tensor padding at data offset %" PRIu64 ": expected zero, found 0x%02X", f, cur + at, p[doff + cur + at]);
    cur = spans[i].off + spans[i].size;
  }
  if (!all_zero(p + doff + cur, dsize - cur, &at))
    FAIL(KD_ERR_CORRUPT, "%s: tensor padding at data offset %" PRIu64 ": expected zero, found 0x%02X", f, cur + at, p[doff + cur + at]);
  for (uint32_t i = 0; i < nt; i++) {
    const unsigned char *r = p + toff + (uint64_t)i * esize;
    const char *nm = (const char *)r + KD_E_NAME; /* verified equal to the expected name */
    uint64_t sz = kd_ld64(r + KD_E_SIZE);
    uint32_t want_crc = kd_ld32(r + KD_E_CRC), got = kd_crc32c(0, ptrs[i], sz);
    if (got != want_crc)
      FAIL(KD_ERR_CORRUPT, "%s: tensor '%s' data CRC32C: expected 0x%08X (stored), found 0x%08X (computed): the weights are damaged", f, nm, want_crc, got);
    size_t bad;
    if (is_bad_float(ptrs[i], sz / 4, &bad))
      FAIL(KD_ERR_CORRUPT, "%s: tensor '%s' element %zu: expected a finite weight, found %g", f, nm, bad, (double)ptrs[i][bad]);
  }
  struct kd_err me = {0};
  c->model = kd_model_view(&arch, ptrs, &me);
  if (!c->model) FAIL(me.code ? me.code : KD_ERR_NOMEM, "%s: model view: %s", f, me.msg);

fail:
  free(spans);
  free(ptrs);
  return rc;
}

static kd_ckpt *ckpt_new(const char *name, struct kd_err *e) {
  kd_ckpt *c = calloc(1, sizeof *c);
  if (c) c->name = strdup(name ? name : "(memory)");
  if (!c || !c->name) {
    free(c);
    kd_err_set(e, KD_ERR_NOMEM, "%s: out of memory", name ? name : "(memory)");
    return NULL;
  }
  return c;
}

kd_ckpt *kd_ckpt_open(const char *path, struct kd_err *e) {
  if (!path) { kd_err_set(e, KD_ERR_INVALID, "checkpoint open: no path"); return NULL; }
  int fd = open(path, O_RDONLY | O_CLOEXEC);
  if (fd < 0) {
    kd_err_set(e, errno == ENOENT ? KD_ERR_NOT_FOUND : KD_ERR_IO, "%s: open: %s", path, strerror(errno));
    return NULL;
  }
  struct stat st;
  if (fstat(fd, &st) != 0) {
    kd_err_set(e, KD_ERR_IO, "%s: stat: %s", path, strerror(errno));
    close(fd);
    return NULL;
  }
  if (!S_ISREG(st.st_mode)) {
    kd_err_set(e, KD_ERR_INVALID, "%s: expected a regular file, found another kind (directory, device...)", path);
    close(fd);
    return NULL;
  }
  kd_ckpt *c = ckpt_new(path, e);
  if (!c) { close(fd); return NULL; }
  c->len = (size_t)st.st_size;
  if (c->len) {
    void *m = mmap(NULL, c->len, PROT_READ, MAP_PRIVATE, fd, 0);
    if (m == MAP_FAILED) {
      kd_err_set(e, KD_ERR_IO, "%s: mmap of %zu bytes: %s", path, c->len, strerror(errno));
      close(fd);
      kd_ckpt_close(c);
      return NULL;
    }
    c->base = m;
    c->mapped = 1;
  } else {
    c->base = (const unsigned char *)"";
  }
  close(fd);
  if (ckpt_verify(c, e) != KD_OK) {
    kd_ckpt_close(c);
    return NULL;
  }
  return c;
}

kd_ckpt *kd_ckpt_open_mem(const void *buf, size_t len, const char *name, struct kd_err *e) {
  if (!buf && len) { kd_err_set(e, KD_ERR_INVALID, "%s: no buffer", name ? name : "(memory)"); return NULL; }
  kd_ckpt *c = ckpt_new(name, e);
  if (!c) return NULL;
  /* An aligned private copy: tensors are 64-byte aligned relative to the file start. */
  void *copy = aligned_alloc(KD_CKPT_ALIGN, align_up(len ? len : 1, KD_CKPT_ALIGN));
  if (!copy) {
    kd_err_set(e, KD_ERR_NOMEM, "%s: out of memory for a %zu-byte copy", c->name, len);
    kd_ckpt_close(c);
    return NULL;
  }
  if (len) memcpy(copy, buf, len);
  c->owned = copy;
  c->base = copy;
  c->len = len;
  if (ckpt_verify(c, e) != KD_OK) {
    kd_ckpt_close(c);
    return NULL;
  }
  return c;
}

void kd_ckpt_close(kd_ckpt *c) {
  if (!c) return;
  if (c->model) kd_model_free(c->model);
  if (c->mapped) munmap((void *)(uintptr_t)c->base, c->len);
  free(c->owned);
  free(c->meta);
  free(c->sorted);
  free(c->strs);
  free(c->name);
  free(c);
}

const struct kd_model *kd_ckpt_model(const kd_ckpt *c) { return c->model; }
uint32_t kd_ckpt_crc(const kd_ckpt *c) { return c->crc; }
uint64_t kd_ckpt_file_size(const kd_ckpt *c) { return c->len; }
uint32_t kd_ckpt_format_minor(const kd_ckpt *c) { return c->minor; }
uint32_t kd_ckpt_n_meta(const kd_ckpt *c) { return c->n_meta; }
const struct kd_meta *kd_ckpt_meta_at(const kd_ckpt *c, uint32_t i) { return i < c->n_meta ? &c->meta[i] : NULL; }
const struct kd_meta *kd_ckpt_meta_find(const kd_ckpt *c, const char *key) { return key ? find(c, key) : NULL; }
