/* labelstore_sqlite.c - the SQLite backend of the label store: one file in WAL mode.
 *
 * Tables: kd_label_meta (schema version), kd_label_versions (one row per version: the manifest),
 * kd_labels (vid, example_id, logits BLOB) WITHOUT ROWID with primary key (vid, example_id), so
 * a version is one contiguous, id-ordered range of the B-tree: writes in id order append and
 * reads are a range scan. Triggers refuse any change to a COMPLETE version from any client.
 * Writer lock: an OFD write lock on one byte (at the version name's hash) of the side file
 * PATH.writer-lock; the kernel drops it when the writer's process dies, which is how a crashed
 * writer's leftover is recognised. Limits: the file should be on a local file system (SQLite's
 * own locking and the OFD lock are not reliable over NFS). */
#include "labelstore_int.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <sqlite3.h>

struct sq_writer {
  sqlite3 *db;
  sqlite3_stmt *ins;
  int lock_fd;
};

struct sq_reader {
  sqlite3 *db;
  sqlite3_stmt *sel;
};

static const char SCHEMA[] =
    "CREATE TABLE IF NOT EXISTS kd_label_meta(key TEXT PRIMARY KEY, value TEXT NOT NULL);"
    "INSERT OR IGNORE INTO kd_label_meta(key, value) VALUES('schema_version', '1');"
    "CREATE TABLE IF NOT EXISTS kd_label_versions("
    " id INTEGER PRIMARY KEY,"
    " version TEXT NOT NULL UNIQUE,"
    " state TEXT NOT NULL CHECK(state IN ('WRITING', 'COMPLETE')),"
    " teacher TEXT NOT NULL,"
    " teacher_crc INTEGER NOT NULL,"
    " data_fingerprint TEXT NOT NULL,"
    " tasks TEXT NOT NULL,"
    " n_tasks INTEGER NOT NULL,"
    " expected_rows INTEGER NOT NULL,"
    " row_count INTEGER NOT NULL,"
    " digest INTEGER NOT NULL,"
    " created_unix INTEGER NOT NULL,"
    " completed_unix INTEGER NOT NULL,"
    " writer TEXT NOT NULL);"
    "CREATE TABLE IF NOT EXISTS kd_labels("
    " vid INTEGER NOT NULL,"
    " example_id INTEGER NOT NULL,"
    " logits BLOB NOT NULL,"
    " PRIMARY KEY(vid, example_id)) WITHOUT ROWID;"
    "CREATE TRIGGER IF NOT EXISTS kd_label_versions_no_update BEFORE UPDATE ON kd_label_versions"
    " WHEN OLD.state = 'COMPLETE' BEGIN"
    " SELECT RAISE(ABORT, 'kdrank: label version is COMPLETE (immutable)'); END;"
    "CREATE TRIGGER IF NOT EXISTS kd_label_versions_no_delete BEFORE DELETE ON kd_label_versions"
    " WHEN OLD.state = 'COMPLETE' BEGIN"
    " SELECT RAISE(ABORT, 'kdrank: label version is COMPLETE (immutable)'); END;"
    "CREATE TRIGGER IF NOT EXISTS kd_labels_no_insert BEFORE INSERT ON kd_labels"
    " WHEN (SELECT state FROM kd_label_versions WHERE id = NEW.vid) IS NOT 'WRITING' BEGIN"
    " SELECT RAISE(ABORT, 'kdrank: label version is COMPLETE (immutable) or unknown: labels can only be added to a WRITING version'); END;"
    "CREATE TRIGGER IF NOT EXISTS kd_labels_no_update BEFORE UPDATE ON kd_labels"
    " WHEN (SELECT state FROM kd_label_versions WHERE id = OLD.vid) = 'COMPLETE' BEGIN"
    " SELECT RAISE(ABORT, 'kdrank: label version is COMPLETE (immutable)'); END;"
    "CREATE TRIGGER IF NOT EXISTS kd_labels_no_delete BEFORE DELETE ON kd_labels"
    " WHEN (SELECT state FROM kd_label_versions WHERE id = OLD.vid) = 'COMPLETE' BEGIN"
    " SELECT RAISE(ABORT, 'kdrank: label version is COMPLETE (immutable)'); END;";

static const char SELECT_MANIFEST[] =
    "SELECT id, version, state, teacher, teacher_crc, data_fingerprint, tasks, n_tasks, expected_rows, row_count,"
    " digest, created_unix, completed_unix FROM kd_label_versions";

static int sq_fail(struct kd_err *e, sqlite3 *db, const char *display, const char *what) {
  return kd_err_set(e, KD_ERR_IO, "%s: SQLite: %s: %s", display, what, db ? sqlite3_errmsg(db) : "no connection");
}

static int sq_exec(sqlite3 *db, const char *sql, const char *display, const char *what, struct kd_err *e) {
  char *msg = NULL;
  if (sqlite3_exec(db, sql, NULL, NULL, &msg) != SQLITE_OK) {
    kd_err_set(e, KD_ERR_IO, "%s: SQLite: %s: %s", display, what, msg ? msg : sqlite3_errmsg(db));
    sqlite3_free(msg);
    return KD_ERR_IO;
  }
  return KD_OK;
}

/* Opens a connection with the store's mode and busy timeout. */
static int sq_connect(kd_labelstore *s, sqlite3 **out, struct kd_err *e) {
  *out = NULL;
  int flags = s->p.read_only ? SQLITE_OPEN_READONLY : (SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE);
  struct stat st;
  if (s->p.read_only && stat(s->target, &st) != 0)
    return kd_err_set(e, KD_ERR_NOT_FOUND, "label store %s: %s (opened read-only, so it is not created)", s->display,
                      strerror(errno));
  sqlite3 *db = NULL;
  if (sqlite3_open_v2(s->target, &db, flags | SQLITE_OPEN_NOMUTEX, NULL) != SQLITE_OK) {
    int rc = sq_fail(e, db, s->display, "cannot open");
    sqlite3_close(db);
    return rc;
  }
  sqlite3_busy_timeout(db, (int)s->p.timeout_ms);
  *out = db;
  return KD_OK;
}

static int sq_open(kd_labelstore *s, struct kd_err *e) {
  sqlite3 *db;
  int rc = sq_connect(s, &db, e);
  if (rc) return rc;
  if (!s->p.read_only) {
    /* WAL: readers never block the writer and the writer never blocks readers. */
    if ((rc = sq_exec(db, "PRAGMA journal_mode=WAL", s->display, "setting WAL mode", e))) goto fail_db;
    if ((rc = sq_exec(db, "BEGIN IMMEDIATE", s->display, "creating tables", e))) goto fail_db;
    if ((rc = sq_exec(db, SCHEMA, s->display, "creating tables", e))) {
      sqlite3_exec(db, "ROLLBACK", NULL, NULL, NULL);
      goto fail_db;
    }
    if ((rc = sq_exec(db, "COMMIT", s->display, "creating tables", e))) goto fail_db;
  }
  sqlite3_stmt *st = NULL;
  if (sqlite3_prepare_v2(db, "SELECT value FROM kd_label_meta WHERE key = 'schema_version'", -1, &st, NULL) !=
      SQLITE_OK) {
    rc = kd_err_set(e, KD_ERR_INVALID, "label store %s is not a kdrank label store (%s)", s->display,
                    sqlite3_errmsg(db));
    goto fail_db;
  }
  int step = sqlite3_step(st);
  int ver = step == SQLITE_ROW ? sqlite3_column_int(st, 0) : 0;
  sqlite3_finalize(st);
  if ((rc = kd_ls_check_schema(s, step == SQLITE_ROW ? ver : 0, e))) goto fail_db;
  s->impl = db;
  return KD_OK;

fail_db:
  sqlite3_close(db);
  return rc;
}

static void sq_close(kd_labelstore *s) {
  sqlite3_close(s->impl);
  s->impl = NULL;
}

static int sq_manifest_row(kd_labelstore *s, sqlite3_stmt *st, struct kd_label_manifest *m, int64_t *vid,
                           struct kd_err *e) {
  memset(m, 0, sizeof *m);
  *vid = sqlite3_column_int64(st, 0);
  const char *ver = (const char *)sqlite3_column_text(st, 1);
  const char *state = (const char *)sqlite3_column_text(st, 2);
  const char *teacher = (const char *)sqlite3_column_text(st, 3);
  const char *fp = (const char *)sqlite3_column_text(st, 5);
  const char *tasks = (const char *)sqlite3_column_text(st, 6);
  kd_ls_copy(m->version, sizeof m->version, ver ? ver : "");
  kd_ls_copy(m->teacher, sizeof m->teacher, teacher ? teacher : "");
  kd_ls_copy(m->data_fingerprint, sizeof m->data_fingerprint, fp ? fp : "");
  m->teacher_crc = (uint32_t)sqlite3_column_int64(st, 4);
  m->state = kd_ls_state_parse(state);
  m->row_count = (uint64_t)sqlite3_column_int64(st, 9);
  m->digest = (uint64_t)sqlite3_column_int64(st, 10);
  m->created_unix = sqlite3_column_int64(st, 11);
  m->completed_unix = sqlite3_column_int64(st, 12);
  if (!m->state)
    return kd_err_set(e, KD_ERR_CORRUPT, "%s: version '%s': unknown state '%s'", s->display, m->version,
                      state ? state : "(null)");
  int rc = kd_ls_tasks_split(tasks ? tasks : "", m, s->display, e);
  if (rc) return rc;
  if ((int64_t)m->n_tasks != sqlite3_column_int64(st, 7))
    return kd_err_set(e, KD_ERR_CORRUPT, "%s: version '%s': %u task names but n_tasks %lld", s->display, m->version,
                      m->n_tasks, (long long)sqlite3_column_int64(st, 7));
  if (m->state == KD_LABEL_WRITING) m->row_count = (uint64_t)sqlite3_column_int64(st, 8);
  return KD_OK;
}

static int sq_manifest_get_db(kd_labelstore *s, sqlite3 *db, const char *version, struct kd_label_manifest *m,
                              int64_t *vid, struct kd_err *e) {
  char sql[512];
  snprintf(sql, sizeof sql, "%s WHERE version = ?1", SELECT_MANIFEST);
  sqlite3_stmt *st = NULL;
  if (sqlite3_prepare_v2(db, sql, -1, &st, NULL) != SQLITE_OK) return sq_fail(e, db, s->display, "reading a manifest");
  sqlite3_bind_text(st, 1, version, -1, SQLITE_STATIC);
  int step = sqlite3_step(st);
  int rc;
  if (step == SQLITE_ROW)
    rc = sq_manifest_row(s, st, m, vid, e);
  else if (step == SQLITE_DONE)
    rc = kd_err_set(e, KD_ERR_NOT_FOUND, "%s: no label version '%s'", s->display, version);
  else
    rc = sq_fail(e, db, s->display, "reading a manifest");
  sqlite3_finalize(st);
  return rc;
}

static int sq_manifest_get(kd_labelstore *s, const char *version, struct kd_label_manifest *m, int64_t *vid,
                           struct kd_err *e) {
  return sq_manifest_get_db(s, s->impl, version, m, vid, e);
}

static int sq_list(kd_labelstore *s, struct kd_label_manifest **out, size_t *n, struct kd_err *e) {
  sqlite3 *db = s->impl;
  char sql[512];
  snprintf(sql, sizeof sql, "%s ORDER BY version", SELECT_MANIFEST);
  sqlite3_stmt *st = NULL;
  if (sqlite3_prepare_v2(db, sql, -1, &st, NULL) != SQLITE_OK) return sq_fail(e, db, s->display, "listing versions");
  size_t cap = 0, cnt = 0;
  struct kd_label_manifest *arr = NULL;
  int step, rc = KD_OK;
  while ((step = sqlite3_step(st)) == SQLITE_ROW) {
    if (cnt == cap) {
      size_t nc = cap ? cap * 2 : 8;
      struct kd_label_manifest *na = realloc(arr, nc * sizeof *arr);
      if (!na) {
        rc = kd_err_set(e, KD_ERR_NOMEM, "%s: out of memory listing versions", s->display);
        goto done;
      }
      arr = na;
      cap = nc;
    }
    int64_t vid;
    if ((rc = sq_manifest_row(s, st, &arr[cnt], &vid, e))) goto done;
    cnt++;
  }
  if (step != SQLITE_DONE) rc = sq_fail(e, db, s->display, "listing versions");
done:
  sqlite3_finalize(st);
  if (rc) {
    free(arr);
    return rc;
  }
  *out = arr;
  *n = cnt;
  return KD_OK;
}

/* ---- writer ------------------------------------------------------------------------------- */

/* Takes the version's writer lock: an OFD lock, owned by the open file description, so another
 * handle in this process conflicts too, and the kernel releases it when the process dies. */
static int sq_lock(kd_labelstore_writer *w, struct sq_writer *x, struct kd_err *e) {
  kd_labelstore *s = w->s;
  size_t n = strlen(s->target) + sizeof ".writer-lock";
  char *path = malloc(n);
  if (!path) return kd_err_set(e, KD_ERR_NOMEM, "%s: out of memory", s->display);
  snprintf(path, n, "%s.writer-lock", s->target);
  x->lock_fd = open(path, O_RDWR | O_CREAT | O_CLOEXEC, 0644);
  if (x->lock_fd < 0) {
    int rc = kd_err_set(e, KD_ERR_IO, "%s: cannot open the writer lock file %s: %s", s->display, path,
                        strerror(errno));
    free(path);
    return rc;
  }
  struct flock fl = {0};
  fl.l_type = F_WRLCK;
  fl.l_whence = SEEK_SET;
  fl.l_start = (off_t)kd_ls_version_hash(w->m.version);
  fl.l_len = 1;
  if (fcntl(x->lock_fd, F_OFD_SETLK, &fl) != 0) {
    int busy = errno == EAGAIN || errno == EACCES;
    int rc = busy ? kd_err_set(e, KD_ERR_INVALID, "%s: label version '%s' is being written by another live writer "
                               "(lock held in %s)", s->display, w->m.version, path)
                  : kd_err_set(e, KD_ERR_IO, "%s: cannot lock %s: %s", s->display, path, strerror(errno));
    free(path);
    close(x->lock_fd);
    x->lock_fd = -1;
    return rc;
  }
  free(path);
  return KD_OK;
}

static int sq_writer_begin(kd_labelstore_writer *w, struct kd_err *e) {
  kd_labelstore *s = w->s;
  struct sq_writer *x = calloc(1, sizeof *x);
  if (!x) return kd_err_set(e, KD_ERR_NOMEM, "%s: out of memory", s->display);
  x->lock_fd = -1;
  int rc = sq_connect(s, &x->db, e);
  if (rc) goto fail_x;
  if ((rc = sq_lock(w, x, e))) goto fail_db;
  /* Batches of a WRITING version need not survive a power cut one by one (the version is restarted
   * then), so they are not synced; commit switches to FULL, and syncing the WAL at the COMPLETE
   * transaction makes every earlier frame of the WAL durable with it. */
  if ((rc = sq_exec(x->db, "PRAGMA synchronous=NORMAL", s->display, "setting up the writer", e))) goto fail_lock;
  char tasks[KD_MAX_TASKS * KD_NAME_MAX];
  kd_ls_tasks_join(&w->m, tasks, sizeof tasks);
  char tag[192];
  kd_ls_writer_tag(tag, sizeof tag);

  if ((rc = sq_exec(x->db, "BEGIN IMMEDIATE", s->display, "starting a version", e))) goto fail_lock;
  struct kd_label_manifest old;
  int64_t vid = 0;
  struct kd_err e2;
  rc = sq_manifest_get_db(s, x->db, w->m.version, &old, &vid, &e2);
  if (rc == KD_OK && old.state == KD_LABEL_COMPLETE) {
    rc = kd_err_set(e, KD_ERR_INVALID, "%s: label version '%s' is COMPLETE (immutable, %llu rows): writing it "
                    "again is refused; write a new version", s->display, w->m.version,
                    (unsigned long long)old.row_count);
    goto fail_txn;
  }
  if (rc != KD_OK && rc != KD_ERR_NOT_FOUND) {
    *e = e2;
    goto fail_txn;
  }
  sqlite3_stmt *st = NULL;
  if (rc == KD_OK) {
    /* A WRITING version whose lock we now hold: its writer died. Discard and restart it. */
    char del[128];
    snprintf(del, sizeof del, "DELETE FROM kd_labels WHERE vid = %lld", (long long)vid);
    if ((rc = sq_exec(x->db, del, s->display, "discarding a crashed writer's rows", e))) goto fail_txn;
    rc = sqlite3_prepare_v2(x->db,
                            "UPDATE kd_label_versions SET teacher = ?2, teacher_crc = ?3, data_fingerprint = ?4,"
                            " tasks = ?5, n_tasks = ?6, expected_rows = ?7, row_count = 0, digest = 0,"
                            " created_unix = ?8, completed_unix = 0, writer = ?9 WHERE id = ?1 AND state = 'WRITING'",
                            -1, &st, NULL);
  } else {
    rc = sqlite3_prepare_v2(x->db,
                            "INSERT INTO kd_label_versions(id, version, state, teacher, teacher_crc,"
                            " data_fingerprint, tasks, n_tasks, expected_rows, row_count, digest, created_unix,"
                            " completed_unix, writer) VALUES(NULL, ?10, 'WRITING', ?2, ?3, ?4, ?5, ?6, ?7, 0, 0,"
                            " ?8, 0, ?9)",
                            -1, &st, NULL);
  }
  if (rc != SQLITE_OK) {
    rc = sq_fail(e, x->db, s->display, "starting a version");
    goto fail_txn;
  }
  if (vid) sqlite3_bind_int64(st, 1, vid);
  sqlite3_bind_text(st, 2, w->m.teacher, -1, SQLITE_STATIC);
  sqlite3_bind_int64(st, 3, w->m.teacher_crc);
  sqlite3_bind_text(st, 4, w->m.data_fingerprint, -1, SQLITE_STATIC);
  sqlite3_bind_text(st, 5, tasks, -1, SQLITE_STATIC);
  sqlite3_bind_int64(st, 6, w->m.n_tasks);
  sqlite3_bind_int64(st, 7, (int64_t)w->m.row_count);
  sqlite3_bind_int64(st, 8, w->m.created_unix);
  sqlite3_bind_text(st, 9, tag, -1, SQLITE_STATIC);
  if (!vid) sqlite3_bind_text(st, 10, w->m.version, -1, SQLITE_STATIC);
  int step = sqlite3_step(st);
  sqlite3_finalize(st);
  if (step != SQLITE_DONE || sqlite3_changes(x->db) != 1) {
    rc = sq_fail(e, x->db, s->display, "starting a version");
    goto fail_txn;
  }
  if (!vid) vid = sqlite3_last_insert_rowid(x->db);
  if ((rc = sq_exec(x->db, "COMMIT", s->display, "starting a version", e))) goto fail_txn;
  if (sqlite3_prepare_v2(x->db, "INSERT INTO kd_labels(vid, example_id, logits) VALUES(?1, ?2, ?3)", -1, &x->ins,
                         NULL) != SQLITE_OK) {
    rc = sq_fail(e, x->db, s->display, "preparing the insert");
    goto fail_lock;
  }
  w->vid = vid;
  w->impl = x;
  return KD_OK;

fail_txn:
  sqlite3_exec(x->db, "ROLLBACK", NULL, NULL, NULL);
fail_lock:
  close(x->lock_fd);
fail_db:
  sqlite3_close(x->db);
fail_x:
  free(x);
  return rc;
}

static int sq_writer_flush(kd_labelstore_writer *w, const int64_t *ids, const float *logits, size_t n,
                           struct kd_err *e) {
  struct sq_writer *x = w->impl;
  kd_labelstore *s = w->s;
  const size_t bytes = (size_t)w->m.n_tasks * sizeof(float);
  int rc = sq_exec(x->db, "BEGIN IMMEDIATE", s->display, "writing labels", e);
  if (rc) return rc;
  sqlite3_bind_int64(x->ins, 1, w->vid);
  for (size_t i = 0; i < n; i++) {
    sqlite3_bind_int64(x->ins, 2, ids[i]);
    sqlite3_bind_blob(x->ins, 3, logits + i * w->m.n_tasks, (int)bytes, SQLITE_STATIC);
    int step = sqlite3_step(x->ins);
    sqlite3_reset(x->ins);
    if (step != SQLITE_DONE) {
      if (sqlite3_extended_errcode(x->db) == SQLITE_CONSTRAINT_PRIMARYKEY)
        rc = kd_err_set(e, KD_ERR_INVALID, "%s: label version '%s': example id %lld was put twice", s->display,
                        w->m.version, (long long)ids[i]);
      else
        rc = sq_fail(e, x->db, s->display, "writing labels");
      sqlite3_exec(x->db, "ROLLBACK", NULL, NULL, NULL);
      return rc;
    }
  }
  return sq_exec(x->db, "COMMIT", s->display, "writing labels", e);
}

static int sq_writer_commit(kd_labelstore_writer *w, struct kd_err *e) {
  struct sq_writer *x = w->impl;
  kd_labelstore *s = w->s;
  /* The completing transaction must survive a power cut once it returns. */
  int rc = sq_exec(x->db, "PRAGMA synchronous=FULL", s->display, "committing", e);
  if (rc) return rc;
  if ((rc = sq_exec(x->db, "BEGIN IMMEDIATE", s->display, "committing", e))) return rc;
  sqlite3_stmt *st = NULL;
  if (sqlite3_prepare_v2(x->db, "SELECT count(*) FROM kd_labels WHERE vid = ?1", -1, &st, NULL) != SQLITE_OK) {
    rc = sq_fail(e, x->db, s->display, "counting rows");
    goto fail_txn;
  }
  sqlite3_bind_int64(st, 1, w->vid);
  int step = sqlite3_step(st);
  int64_t stored = step == SQLITE_ROW ? sqlite3_column_int64(st, 0) : -1;
  sqlite3_finalize(st);
  if (step != SQLITE_ROW) {
    rc = sq_fail(e, x->db, s->display, "counting rows");
    goto fail_txn;
  }
  if ((uint64_t)stored != w->n_put) {
    rc = kd_err_set(e, KD_ERR_CORRUPT, "%s: label version '%s': %lld rows stored but %llu put; the version stays "
                    "WRITING", s->display, w->m.version, (long long)stored, (unsigned long long)w->n_put);
    goto fail_txn;
  }
  int64_t now = (int64_t)time(NULL);
  if (sqlite3_prepare_v2(x->db, "UPDATE kd_label_versions SET state = 'COMPLETE', row_count = ?2, digest = ?3,"
                         " completed_unix = ?4 WHERE id = ?1 AND state = 'WRITING'", -1, &st, NULL) != SQLITE_OK) {
    rc = sq_fail(e, x->db, s->display, "completing the version");
    goto fail_txn;
  }
  sqlite3_bind_int64(st, 1, w->vid);
  sqlite3_bind_int64(st, 2, stored);
  sqlite3_bind_int64(st, 3, (int64_t)w->digest);
  sqlite3_bind_int64(st, 4, now);
  step = sqlite3_step(st);
  sqlite3_finalize(st);
  if (step != SQLITE_DONE || sqlite3_changes(x->db) != 1) {
    rc = step != SQLITE_DONE ? sq_fail(e, x->db, s->display, "completing the version")
                             : kd_err_set(e, KD_ERR_INVALID, "%s: label version '%s' is no longer WRITING",
                                          s->display, w->m.version);
    goto fail_txn;
  }
  if ((rc = sq_exec(x->db, "COMMIT", s->display, "completing the version", e))) goto fail_txn;
  w->m.state = KD_LABEL_COMPLETE;
  w->m.row_count = (uint64_t)stored;
  w->m.digest = w->digest;
  w->m.completed_unix = now;
  return KD_OK;

fail_txn:
  sqlite3_exec(x->db, "ROLLBACK", NULL, NULL, NULL);
  return rc;
}

static void sq_writer_end(kd_labelstore_writer *w, int discard) {
  struct sq_writer *x = w->impl;
  if (!x) return;
  sqlite3_finalize(x->ins);
  if (discard) {
    char sql[256];
    snprintf(sql, sizeof sql,
             "BEGIN IMMEDIATE; DELETE FROM kd_labels WHERE vid = %lld;"
             " DELETE FROM kd_label_versions WHERE id = %lld AND state = 'WRITING'; COMMIT;",
             (long long)w->vid, (long long)w->vid);
    if (sqlite3_exec(x->db, sql, NULL, NULL, NULL) != SQLITE_OK) sqlite3_exec(x->db, "ROLLBACK", NULL, NULL, NULL);
  }
  sqlite3_close(x->db);
  close(x->lock_fd); /* releases the writer lock */
  free(x);
  w->impl = NULL;
}

/* ---- reader ------------------------------------------------------------------------------- */

static int sq_reader_open(kd_labelstore_reader *r, const char *version, struct kd_err *e) {
  struct sq_reader *x = calloc(1, sizeof *x);
  if (!x) return kd_err_set(e, KD_ERR_NOMEM, "%s: out of memory", r->s->display);
  int rc = sq_connect(r->s, &x->db, e);
  if (rc == KD_OK) rc = sq_manifest_get_db(r->s, x->db, version, &r->m, &r->vid, e);
  if (rc) {
    sqlite3_close(x->db);
    free(x);
    return rc;
  }
  r->impl = x;
  return KD_OK;
}

static int sq_reader_start(kd_labelstore_reader *r, struct kd_err *e) {
  struct sq_reader *x = r->impl;
  if (sqlite3_prepare_v2(x->db, "SELECT example_id, logits FROM kd_labels WHERE vid = ?1 ORDER BY example_id", -1,
                         &x->sel, NULL) != SQLITE_OK)
    return sq_fail(e, x->db, r->s->display, "reading labels");
  sqlite3_bind_int64(x->sel, 1, r->vid);
  return KD_OK;
}

static int sq_reader_row(kd_labelstore_reader *r, int64_t *id, const unsigned char **blob, size_t *len,
                         struct kd_err *e) {
  struct sq_reader *x = r->impl;
  int step = sqlite3_step(x->sel);
  if (step == SQLITE_DONE) return 0;
  if (step != SQLITE_ROW) return sq_fail(e, x->db, r->s->display, "reading labels");
  *id = sqlite3_column_int64(x->sel, 0);
  *blob = sqlite3_column_blob(x->sel, 1);
  *len = (size_t)sqlite3_column_bytes(x->sel, 1);
  return 1;
}

static void sq_reader_end(kd_labelstore_reader *r) {
  struct sq_reader *x = r->impl;
  if (!x) return;
  sqlite3_finalize(x->sel);
  sqlite3_close(x->db);
  free(x);
  r->impl = NULL;
}

const struct kd_ls_ops kd_ls_sqlite_ops = {
    .name = "sqlite",
    .open = sq_open,
    .close = sq_close,
    .manifest_get = sq_manifest_get,
    .list = sq_list,
    .writer_begin = sq_writer_begin,
    .writer_flush = sq_writer_flush,
    .writer_commit = sq_writer_commit,
    .writer_end = sq_writer_end,
    .reader_open = sq_reader_open,
    .reader_start = sq_reader_start,
    .reader_row = sq_reader_row,
    .reader_end = sq_reader_end,
};
