/* labelstore_int.h - private: the backend interface behind kdrank_labelstore.h and shared helpers.
 * labelstore.c holds everything backend-independent (argument and manifest checks, buffering,
 * the digest, decoding, the join); labelstore_sqlite.c and labelstore_pg.c move bytes. */
#ifndef KD_LABELSTORE_INT_H
#define KD_LABELSTORE_INT_H

#include <pthread.h>

#include "kdrank_labelstore.h"

#define KD_LS_SCHEMA_VERSION 1
#define KD_LS_DEFAULT_BATCH 65536u
#define KD_LS_DEFAULT_TIMEOUT_MS 10000u
/* PostgreSQL advisory lock class for writer locks: "kdlb" as an int4. */
#define KD_LS_PG_LOCK_CLASS 0x6b646c62

struct kd_ls_ops;

struct kd_labelstore {
  const struct kd_ls_ops *ops;
  struct kd_labelstore_params p;
  char *target;      /* SQLite: file path; PostgreSQL: the connection URI */
  char *display;     /* the target as printed in messages (password redacted) */
  void *impl;        /* backend: metadata connection */
};

struct kd_labelstore_writer {
  kd_labelstore *s;
  struct kd_label_manifest m; /* m.row_count: expected rows (0: undeclared) until commit */
  int64_t vid;                /* the version's row id in the store */
  uint64_t n_put;             /* rows accepted by put (buffered + written) */
  uint64_t digest;            /* running digest over the rows put */
  uint32_t committed;
  int failed;                 /* kd_status of the first database error, 0 if none */
  struct kd_err fail_err;
  /* Double buffering: put fills buffer `fill` while the flush thread writes the other one. */
  size_t n_buf, cap;          /* rows in buffer `fill`; rows per buffer */
  int64_t *ids[2];            /* (cap) */
  float *logits[2];           /* (cap, n_tasks) little-endian */
  int fill;
  void *impl;                 /* backend: connection, lock, statement */
  /* The flush thread. It alone uses the backend connection while a buffer is pending; the caller
   * uses it (commit, end) only once pending is -1. Fields below mu are guarded by it. */
  pthread_t thread;
  int thread_started;
  pthread_mutex_t mu;
  pthread_cond_t cv;
  int pending;                /* buffer handed to the thread, -1 if none */
  size_t n_pending;
  int stop;
  int t_rc;                   /* the thread's first error */
  struct kd_err t_err;
};

struct kd_labelstore_reader {
  kd_labelstore *s;
  struct kd_label_manifest m;
  int64_t vid;
  int started, done;
  uint64_t n_read, digest;
  int64_t last_id;
  void *impl;
};

/* A backend. Functions return kd_status and fill e; the common layer validates arguments. */
struct kd_ls_ops {
  const char *name;
  int (*open)(kd_labelstore *s, struct kd_err *e);    /* connect, create/check schema */
  void (*close)(kd_labelstore *s);
  /* manifest of version into *m and its row id into *vid; KD_ERR_NOT_FOUND if absent */
  int (*manifest_get)(kd_labelstore *s, const char *version, struct kd_label_manifest *m, int64_t *vid,
                      struct kd_err *e);
  int (*list)(kd_labelstore *s, struct kd_label_manifest **out, size_t *n, struct kd_err *e);
  /* writer: connect, take the version's writer lock, create or restart the WRITING row (w->vid) */
  int (*writer_begin)(kd_labelstore_writer *w, struct kd_err *e);
  /* write n buffered rows in one transaction */
  int (*writer_flush)(kd_labelstore_writer *w, const int64_t *ids, const float *logits, size_t n,
                      struct kd_err *e);
  /* count stored rows == w->n_put, mark COMPLETE with w->digest; fill w->m from the store */
  int (*writer_commit)(kd_labelstore_writer *w, struct kd_err *e);
  /* discard the rows if discard, release the lock, disconnect */
  void (*writer_end)(kd_labelstore_writer *w, int discard);
  /* reader: connect and load version's manifest into r->m and its row id into r->vid through
   * the reader's own connection (the store handle is only read, so threads may open readers from
   * one store at once); on error nothing is left open */
  int (*reader_open)(kd_labelstore_reader *r, const char *version, struct kd_err *e);
  /* start the ordered stream */
  int (*reader_start)(kd_labelstore_reader *r, struct kd_err *e);
  /* next row: 1 with *id, *blob (valid until the next call), *len; 0 at the end; <0 error */
  int (*reader_row)(kd_labelstore_reader *r, int64_t *id, const unsigned char **blob, size_t *len,
                    struct kd_err *e);
  void (*reader_end)(kd_labelstore_reader *r);
};

extern const struct kd_ls_ops kd_ls_sqlite_ops;
extern const struct kd_ls_ops kd_ls_pg_ops;

/* Shared helpers (labelstore.c). */
/* Task names joined by ',' (names never contain one) into out[cap]; KD_ERR_RANGE if too long. */
int kd_ls_tasks_join(const struct kd_label_manifest *m, char *out, size_t cap);
/* Splits a stored task list into m->tasks/m->n_tasks; KD_ERR_CORRUPT if malformed. */
int kd_ls_tasks_split(const char *s, struct kd_label_manifest *m, const char *display, struct kd_err *e);
/* "WRITING"/"COMPLETE" <-> enum kd_label_state (0 if unknown). */
const char *kd_ls_state_name(uint32_t state);
uint32_t kd_ls_state_parse(const char *s);
/* 32-bit FNV-1a of the version name: the writer lock's key. */
uint32_t kd_ls_version_hash(const char *version);
/* Checks a store's schema version read by a backend: ver <= 0 (no version row) -> KD_ERR_INVALID
 * "not a kdrank label store", another version -> KD_ERR_UNSUPPORTED; KD_OK when it is this build's. */
int kd_ls_check_schema(const kd_labelstore *s, int ver, struct kd_err *e);
/* "host:pid" of this process, for the manifest's writer column (diagnostics only). */
void kd_ls_writer_tag(char *out, size_t cap);
/* Copies src into dst[cap] (always NUL-terminated); 1 if it was truncated. */
int kd_ls_copy(char *dst, size_t cap, const char *src);

#endif
