/* labelstore_pg.c - the PostgreSQL backend of the label store (libpq).
 *
 * Same tables as the SQLite backend (kd_label_meta, kd_label_versions, kd_labels with primary
 * key (vid, example_id) and logits bytea). Writes: one COPY ... FROM STDIN (FORMAT binary) per
 * batch, each its own transaction. Reads: one COPY (SELECT ... ORDER BY example_id) TO STDOUT
 * (FORMAT binary), parsed as it streams. Statement-level triggers with transition tables refuse
 * any change to a COMPLETE version from any client at a per-batch, not per-row, cost.
 * Writer lock: a session advisory lock (class "kdlb", key = hash of the version name), released by
 * the server when the writer's connection ends, crash included. Two version names with the same
 * 32-bit hash cannot be written at the same time (the second is told the version is busy).
 * Needs PostgreSQL 11 or newer. */
#include "labelstore_int.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <libpq-fe.h>

struct pg_writer {
  PGconn *c;
  unsigned char *buf; /* the COPY binary payload of one batch */
  size_t buf_cap;
};

struct pg_reader {
  PGconn *c;
  char *msg;   /* current CopyData message (PQfreemem) */
  size_t len, off;
  int header_seen, trailer_seen;
};

static const char SCHEMA[] =
    "SELECT pg_advisory_xact_lock(1801743458, 0);"
    "CREATE TABLE IF NOT EXISTS kd_label_meta(key text PRIMARY KEY, value text NOT NULL);"
    "INSERT INTO kd_label_meta(key, value) VALUES('schema_version', '1') ON CONFLICT DO NOTHING;"
    "CREATE TABLE IF NOT EXISTS kd_label_versions("
    " id bigserial PRIMARY KEY,"
    " version text NOT NULL UNIQUE,"
    " state text NOT NULL CHECK (state IN ('WRITING', 'COMPLETE')),"
    " teacher text NOT NULL,"
    " teacher_crc bigint NOT NULL,"
    " data_fingerprint text NOT NULL,"
    " tasks text NOT NULL,"
    " n_tasks int NOT NULL,"
    " expected_rows bigint NOT NULL,"
    " row_count bigint NOT NULL,"
    " digest bigint NOT NULL,"
    " created_unix bigint NOT NULL,"
    " completed_unix bigint NOT NULL,"
    " writer text NOT NULL);"
    "CREATE TABLE IF NOT EXISTS kd_labels("
    " vid bigint NOT NULL,"
    " example_id bigint NOT NULL,"
    " logits bytea NOT NULL,"
    " PRIMARY KEY (vid, example_id));"
    "CREATE OR REPLACE FUNCTION kd_label_versions_guard() RETURNS trigger LANGUAGE plpgsql AS $$"
    " BEGIN"
    "  IF OLD.state = 'COMPLETE' THEN"
    "   RAISE EXCEPTION 'kdrank: label version % is COMPLETE (immutable)', OLD.version;"
    "  END IF;"
    "  IF TG_OP = 'DELETE' THEN RETURN OLD; END IF;"
    "  RETURN NEW;"
    " END $$;"
    "DROP TRIGGER IF EXISTS kd_label_versions_guard ON kd_label_versions;"
    "CREATE TRIGGER kd_label_versions_guard BEFORE UPDATE OR DELETE ON kd_label_versions"
    " FOR EACH ROW EXECUTE FUNCTION kd_label_versions_guard();"
    /* one check per statement over the rows it touched (kd_rows: the transition table) */
    "CREATE OR REPLACE FUNCTION kd_labels_guard() RETURNS trigger LANGUAGE plpgsql AS $$"
    " BEGIN"
    "  IF EXISTS (SELECT 1 FROM (SELECT DISTINCT vid FROM kd_rows) r"
    "             LEFT JOIN kd_label_versions v ON v.id = r.vid"
    "             WHERE v.state IS DISTINCT FROM 'WRITING') THEN"
    "   RAISE EXCEPTION 'kdrank: labels of a COMPLETE (immutable) or unknown version cannot be %', lower(TG_OP);"
    "  END IF;"
    "  RETURN NULL;"
    " END $$;"
    "DROP TRIGGER IF EXISTS kd_labels_guard_insert ON kd_labels;"
    "CREATE TRIGGER kd_labels_guard_insert AFTER INSERT ON kd_labels REFERENCING NEW TABLE AS kd_rows"
    " FOR EACH STATEMENT EXECUTE FUNCTION kd_labels_guard();"
    "DROP TRIGGER IF EXISTS kd_labels_guard_update ON kd_labels;"
    "CREATE TRIGGER kd_labels_guard_update AFTER UPDATE ON kd_labels REFERENCING OLD TABLE AS kd_rows"
    " FOR EACH STATEMENT EXECUTE FUNCTION kd_labels_guard();"
    "DROP TRIGGER IF EXISTS kd_labels_guard_delete ON kd_labels;"
    "CREATE TRIGGER kd_labels_guard_delete AFTER DELETE ON kd_labels REFERENCING OLD TABLE AS kd_rows"
    " FOR EACH STATEMENT EXECUTE FUNCTION kd_labels_guard();"
    "CREATE OR REPLACE FUNCTION kd_labels_guard_truncate() RETURNS trigger LANGUAGE plpgsql AS $$"
    " BEGIN"
    "  IF EXISTS (SELECT 1 FROM kd_label_versions WHERE state = 'COMPLETE') THEN"
    "   RAISE EXCEPTION 'kdrank: the label store holds COMPLETE (immutable) versions; TRUNCATE refused';"
    "  END IF;"
    "  RETURN NULL;"
    " END $$;"
    "DROP TRIGGER IF EXISTS kd_labels_guard_truncate ON kd_labels;"
    "CREATE TRIGGER kd_labels_guard_truncate BEFORE TRUNCATE ON kd_labels"
    " FOR EACH STATEMENT EXECUTE FUNCTION kd_labels_guard_truncate();"
    "DROP TRIGGER IF EXISTS kd_label_versions_guard_truncate ON kd_label_versions;"
    "CREATE TRIGGER kd_label_versions_guard_truncate BEFORE TRUNCATE ON kd_label_versions"
    " FOR EACH STATEMENT EXECUTE FUNCTION kd_labels_guard_truncate();";

static const char SELECT_MANIFEST[] =
    "SELECT id, version, state, teacher, teacher_crc, data_fingerprint, tasks, n_tasks, expected_rows, row_count,"
    " digest, created_unix, completed_unix FROM kd_label_versions";

static void pg_quiet(void *arg, const char *msg) {
  (void)arg;
  (void)msg;
}

/* libpq messages end in a newline and may span lines; keep the first line. */
static const char *pg_msg(const char *m, char *buf, size_t cap) {
  kd_ls_copy(buf, cap, m && *m ? m : "unknown error");
  buf[strcspn(buf, "\n")] = 0;
  return buf;
}

static int pg_fail_conn(struct kd_err *e, PGconn *c, const char *display, const char *what) {
  char b[400];
  return kd_err_set(e, KD_ERR_IO, "%s: PostgreSQL: %s: %s", display, what, pg_msg(PQerrorMessage(c), b, sizeof b));
}

static int pg_fail_res(struct kd_err *e, PGresult *r, PGconn *c, const char *display, const char *what) {
  char b[400];
  const char *m = r ? PQresultErrorMessage(r) : PQerrorMessage(c);
  return kd_err_set(e, KD_ERR_IO, "%s: PostgreSQL: %s: %s", display, what, pg_msg(m, b, sizeof b));
}

/* Runs sql (no parameters) and checks its status; clears the result. */
static int pg_exec(PGconn *c, const char *sql, ExecStatusType want, const char *display, const char *what,
                   struct kd_err *e) {
  PGresult *r = PQexec(c, sql);
  int rc = KD_OK;
  if (PQresultStatus(r) != want) rc = pg_fail_res(e, r, c, display, what);
  PQclear(r);
  return rc;
}

static int pg_connect(kd_labelstore *s, PGconn **out, struct kd_err *e) {
  /* dbname comes last so that settings in the URI override these defaults */
  const char *kw[] = {"connect_timeout", "application_name", "dbname", NULL};
  const char *val[] = {"10", "kdrank-labelstore", s->target, NULL};
  PGconn *c = PQconnectdbParams(kw, val, 1);
  *out = NULL;
  if (!c) return kd_err_set(e, KD_ERR_NOMEM, "%s: out of memory connecting", s->display);
  if (PQstatus(c) != CONNECTION_OK) {
    int rc = pg_fail_conn(e, c, s->display, "cannot connect");
    PQfinish(c);
    return rc;
  }
  PQsetNoticeProcessor(c, pg_quiet, NULL);
  *out = c;
  return KD_OK;
}

/* *ver = the stored schema version, 0 if the tables are absent, -1 if the row is missing. */
static int pg_schema_version(kd_labelstore *s, PGconn *c, int *ver, struct kd_err *e) {
  PGresult *r = PQexec(c, "SELECT to_regclass('kd_label_meta') IS NOT NULL");
  if (PQresultStatus(r) != PGRES_TUPLES_OK || PQntuples(r) != 1) {
    int rc = pg_fail_res(e, r, c, s->display, "looking for the label tables");
    PQclear(r);
    return rc;
  }
  int present = PQgetvalue(r, 0, 0)[0] == 't';
  PQclear(r);
  if (!present) {
    *ver = 0;
    return KD_OK;
  }
  r = PQexec(c, "SELECT value FROM kd_label_meta WHERE key = 'schema_version'");
  if (PQresultStatus(r) != PGRES_TUPLES_OK) {
    int rc = pg_fail_res(e, r, c, s->display, "reading the schema version");
    PQclear(r);
    return rc;
  }
  *ver = PQntuples(r) == 0 ? -1 : atoi(PQgetvalue(r, 0, 0));
  PQclear(r);
  return KD_OK;
}

static int pg_open(kd_labelstore *s, struct kd_err *e) {
  PGconn *c;
  int rc = pg_connect(s, &c, e);
  if (rc) return rc;
  int ver;
  if ((rc = pg_schema_version(s, c, &ver, e))) goto fail_c;
  if (ver == 0 && !s->p.read_only) {
    /* Creating takes an exclusive lock on the tables, so it is done only when they are absent. */
    if ((rc = pg_exec(c, "BEGIN", PGRES_COMMAND_OK, s->display, "creating tables", e))) goto fail_c;
    PGresult *r = PQexec(c, SCHEMA);
    if (PQresultStatus(r) != PGRES_COMMAND_OK) {
      rc = pg_fail_res(e, r, c, s->display, "creating tables");
      PQclear(r);
      PQexec(c, "ROLLBACK");
      goto fail_c;
    }
    PQclear(r);
    if ((rc = pg_exec(c, "COMMIT", PGRES_COMMAND_OK, s->display, "creating tables", e))) goto fail_c;
    if ((rc = pg_schema_version(s, c, &ver, e))) goto fail_c;
  }
  if ((rc = kd_ls_check_schema(s, ver, e))) goto fail_c;
  s->impl = c;
  return KD_OK;

fail_c:
  PQfinish(c);
  return rc;
}

static void pg_close(kd_labelstore *s) {
  PQfinish(s->impl);
  s->impl = NULL;
}

static int pg_manifest_row(kd_labelstore *s, PGresult *r, int i, struct kd_label_manifest *m, int64_t *vid,
                           struct kd_err *e) {
  memset(m, 0, sizeof *m);
  *vid = strtoll(PQgetvalue(r, i, 0), NULL, 10);
  kd_ls_copy(m->version, sizeof m->version, PQgetvalue(r, i, 1));
  const char *state = PQgetvalue(r, i, 2);
  kd_ls_copy(m->teacher, sizeof m->teacher, PQgetvalue(r, i, 3));
  m->teacher_crc = (uint32_t)strtoll(PQgetvalue(r, i, 4), NULL, 10);
  kd_ls_copy(m->data_fingerprint, sizeof m->data_fingerprint, PQgetvalue(r, i, 5));
  m->state = kd_ls_state_parse(state);
  m->row_count = (uint64_t)strtoll(PQgetvalue(r, i, 9), NULL, 10);
  m->digest = (uint64_t)strtoll(PQgetvalue(r, i, 10), NULL, 10);
  m->created_unix = strtoll(PQgetvalue(r, i, 11), NULL, 10);
  m->completed_unix = strtoll(PQgetvalue(r, i, 12), NULL, 10);
  if (!m->state)
    return kd_err_set(e, KD_ERR_CORRUPT, "%s: version '%s': unknown state '%s'", s->display, m->version, state);
  int rc = kd_ls_tasks_split(PQgetvalue(r, i, 6), m, s->display, e);
  if (rc) return rc;
  long nt = strtol(PQgetvalue(r, i, 7), NULL, 10);
  if (nt != (long)m->n_tasks)
    return kd_err_set(e, KD_ERR_CORRUPT, "%s: version '%s': %u task names but n_tasks %ld", s->display, m->version,
                      m->n_tasks, nt);
  if (m->state == KD_LABEL_WRITING) m->row_count = (uint64_t)strtoll(PQgetvalue(r, i, 8), NULL, 10);
  return KD_OK;
}

static int pg_manifest_get_conn(kd_labelstore *s, PGconn *c, const char *version, const char *lock,
                                struct kd_label_manifest *m, int64_t *vid, struct kd_err *e) {
  char sql[512];
  snprintf(sql, sizeof sql, "%s WHERE version = $1%s", SELECT_MANIFEST, lock);
  const char *vals[1] = {version};
  PGresult *r = PQexecParams(c, sql, 1, NULL, vals, NULL, NULL, 0);
  int rc;
  if (PQresultStatus(r) != PGRES_TUPLES_OK)
    rc = pg_fail_res(e, r, c, s->display, "reading a manifest");
  else if (PQntuples(r) == 0)
    rc = kd_err_set(e, KD_ERR_NOT_FOUND, "%s: no label version '%s'", s->display, version);
  else
    rc = pg_manifest_row(s, r, 0, m, vid, e);
  PQclear(r);
  return rc;
}

static int pg_manifest_get(kd_labelstore *s, const char *version, struct kd_label_manifest *m, int64_t *vid,
                           struct kd_err *e) {
  return pg_manifest_get_conn(s, s->impl, version, "", m, vid, e);
}

static int pg_list(kd_labelstore *s, struct kd_label_manifest **out, size_t *n, struct kd_err *e) {
  char sql[512];
  snprintf(sql, sizeof sql, "%s ORDER BY version COLLATE \"C\"", SELECT_MANIFEST);
  PGresult *r = PQexec(s->impl, sql);
  int rc = KD_OK;
  if (PQresultStatus(r) != PGRES_TUPLES_OK) {
    rc = pg_fail_res(e, r, s->impl, s->display, "listing versions");
    PQclear(r);
    return rc;
  }
  int cnt = PQntuples(r);
  struct kd_label_manifest *arr = NULL;
  if (cnt > 0) {
    arr = calloc((size_t)cnt, sizeof *arr);
    if (!arr) rc = kd_err_set(e, KD_ERR_NOMEM, "%s: out of memory listing versions", s->display);
  }
  for (int i = 0; rc == KD_OK && i < cnt; i++) {
    int64_t vid;
    rc = pg_manifest_row(s, r, i, &arr[i], &vid, e);
  }
  PQclear(r);
  if (rc) {
    free(arr);
    return rc;
  }
  *out = arr;
  *n = (size_t)cnt;
  return KD_OK;
}

/* ---- writer ------------------------------------------------------------------------------- */

static int pg_writer_begin(kd_labelstore_writer *w, struct kd_err *e) {
  kd_labelstore *s = w->s;
  struct pg_writer *x = calloc(1, sizeof *x);
  if (!x) return kd_err_set(e, KD_ERR_NOMEM, "%s: out of memory", s->display);
  const size_t row_bytes = 2 + 4 + 8 + 4 + 8 + 4 + (size_t)w->m.n_tasks * 4;
  x->buf_cap = 19 + row_bytes * w->cap + 2;
  x->buf = malloc(x->buf_cap);
  if (!x->buf) {
    size_t cap = x->buf_cap;
    free(x);
    return kd_err_set(e, KD_ERR_NOMEM, "%s: out of memory for a %zu-byte COPY buffer", s->display, cap);
  }
  int rc = pg_connect(s, &x->c, e);
  if (rc) goto fail_x;

  char key[32], buf[64];
  snprintf(key, sizeof key, "%d", (int32_t)kd_ls_version_hash(w->m.version));
  snprintf(buf, sizeof buf, "SELECT pg_try_advisory_lock(%d, $1::int)", KD_LS_PG_LOCK_CLASS);
  const char *kv[1] = {key};
  PGresult *r = PQexecParams(x->c, buf, 1, NULL, kv, NULL, NULL, 0);
  if (PQresultStatus(r) != PGRES_TUPLES_OK || PQntuples(r) != 1) {
    rc = pg_fail_res(e, r, x->c, s->display, "taking the writer lock");
    PQclear(r);
    goto fail_c;
  }
  int got = PQgetvalue(r, 0, 0)[0] == 't';
  PQclear(r);
  if (!got) {
    rc = kd_err_set(e, KD_ERR_INVALID, "%s: label version '%s' is being written by another live writer (advisory "
                    "lock %d,%s held)", s->display, w->m.version, KD_LS_PG_LOCK_CLASS, key);
    goto fail_c;
  }

  if ((rc = pg_exec(x->c, "BEGIN", PGRES_COMMAND_OK, s->display, "starting a version", e))) goto fail_c;
  struct kd_label_manifest old;
  int64_t vid = 0;
  struct kd_err e2;
  rc = pg_manifest_get_conn(s, x->c, w->m.version, " FOR UPDATE", &old, &vid, &e2);
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
  char tasks[KD_MAX_TASKS * KD_NAME_MAX], tag[192], crc[24], nt[16], exp[24], created[24], vids[24];
  kd_ls_tasks_join(&w->m, tasks, sizeof tasks);
  kd_ls_writer_tag(tag, sizeof tag);
  snprintf(crc, sizeof crc, "%u", w->m.teacher_crc);
  snprintf(nt, sizeof nt, "%u", w->m.n_tasks);
  snprintf(exp, sizeof exp, "%llu", (unsigned long long)w->m.row_count);
  snprintf(created, sizeof created, "%lld", (long long)w->m.created_unix);
  snprintf(vids, sizeof vids, "%lld", (long long)vid);
  const char *vals[9] = {vids, w->m.teacher, crc, w->m.data_fingerprint, tasks, nt, exp, created, tag};
  if (rc == KD_OK) {
    /* A WRITING version whose lock we now hold: its writer died. Discard and restart it. */
    r = PQexecParams(x->c, "DELETE FROM kd_labels WHERE vid = $1", 1, NULL, vals, NULL, NULL, 0);
    if (PQresultStatus(r) != PGRES_COMMAND_OK) {
      rc = pg_fail_res(e, r, x->c, s->display, "discarding a crashed writer's rows");
      PQclear(r);
      goto fail_txn;
    }
    PQclear(r);
    r = PQexecParams(x->c,
                     "UPDATE kd_label_versions SET teacher = $2, teacher_crc = $3, data_fingerprint = $4,"
                     " tasks = $5, n_tasks = $6, expected_rows = $7, row_count = 0, digest = 0, created_unix = $8,"
                     " completed_unix = 0, writer = $9 WHERE id = $1 AND state = 'WRITING' RETURNING id",
                     9, NULL, vals, NULL, NULL, 0);
  } else {
    vals[0] = w->m.version;
    r = PQexecParams(x->c,
                     "INSERT INTO kd_label_versions(version, state, teacher, teacher_crc, data_fingerprint, tasks,"
                     " n_tasks, expected_rows, row_count, digest, created_unix, completed_unix, writer)"
                     " VALUES($1, 'WRITING', $2, $3, $4, $5, $6, $7, 0, 0, $8, 0, $9) RETURNING id",
                     9, NULL, vals, NULL, NULL, 0);
  }
  if (PQresultStatus(r) != PGRES_TUPLES_OK || PQntuples(r) != 1) {
    rc = pg_fail_res(e, r, x->c, s->display, "starting a version");
    PQclear(r);
    goto fail_txn;
  }
  vid = strtoll(PQgetvalue(r, 0, 0), NULL, 10);
  PQclear(r);
  if ((rc = pg_exec(x->c, "COMMIT", PGRES_COMMAND_OK, s->display, "starting a version", e))) goto fail_c;
  w->vid = vid;
  w->impl = x;
  return KD_OK;

fail_txn:
  PQclear(PQexec(x->c, "ROLLBACK"));
fail_c:
  PQfinish(x->c); /* also releases the advisory lock */
fail_x:
  free(x->buf);
  free(x);
  return rc;
}

static unsigned char *put_be16(unsigned char *p, uint16_t v) {
  p[0] = (unsigned char)(v >> 8);
  p[1] = (unsigned char)v;
  return p + 2;
}
static unsigned char *put_be32(unsigned char *p, uint32_t v) {
  for (int i = 0; i < 4; i++) p[i] = (unsigned char)(v >> (24 - 8 * i));
  return p + 4;
}
static unsigned char *put_be64(unsigned char *p, uint64_t v) {
  for (int i = 0; i < 8; i++) p[i] = (unsigned char)(v >> (56 - 8 * i));
  return p + 8;
}
static uint16_t get_be16(const unsigned char *p) { return (uint16_t)((p[0] << 8) | p[1]); }
static uint32_t get_be32(const unsigned char *p) {
  return ((uint32_t)p[0] << 24) | ((uint32_t)p[1] << 16) | ((uint32_t)p[2] << 8) | p[3];
}
static uint64_t get_be64(const unsigned char *p) { return ((uint64_t)get_be32(p) << 32) | get_be32(p + 4); }

static const unsigned char COPY_SIG[11] = {'P', 'G', 'C', 'O', 'P', 'Y', '\n', 0xff, '\r', '\n', 0};

static int pg_writer_flush(kd_labelstore_writer *w, const int64_t *ids, const float *logits, size_t n,
                           struct kd_err *e) {
  struct pg_writer *x = w->impl;
  kd_labelstore *s = w->s;
  const uint32_t bytes = w->m.n_tasks * 4;
  unsigned char *p = x->buf;
  memcpy(p, COPY_SIG, 11);
  p = put_be32(p + 11, 0); /* flags */
  p = put_be32(p, 0);      /* header extension length */
  for (size_t i = 0; i < n; i++) {
    p = put_be16(p, 3);
    p = put_be64(put_be32(p, 8), (uint64_t)w->vid);
    p = put_be64(put_be32(p, 8), (uint64_t)ids[i]);
    p = put_be32(p, bytes);
    memcpy(p, logits + i * w->m.n_tasks, bytes); /* already little-endian */
    p += bytes;
  }
  p = put_be16(p, 0xffff); /* trailer */

  PGresult *r = PQexec(x->c, "COPY kd_labels(vid, example_id, logits) FROM STDIN (FORMAT binary)");
  if (PQresultStatus(r) != PGRES_COPY_IN) {
    int rc = pg_fail_res(e, r, x->c, s->display, "starting COPY");
    PQclear(r);
    return rc;
  }
  PQclear(r);
  /* sent in pieces: PQputCopyData takes an int length, and a batch can exceed 2 GiB */
  for (const unsigned char *q = x->buf; q < p;) {
    size_t piece = (size_t)(p - q) < ((size_t)1 << 20) ? (size_t)(p - q) : ((size_t)1 << 20);
    if (PQputCopyData(x->c, (const char *)q, (int)piece) != 1) {
      int rc = pg_fail_conn(e, x->c, s->display, "sending COPY data");
      PQputCopyEnd(x->c, "kdrank: send failed");
      for (PGresult *fr; (fr = PQgetResult(x->c));) PQclear(fr);
      return rc;
    }
    q += piece;
  }
  if (PQputCopyEnd(x->c, NULL) != 1) return pg_fail_conn(e, x->c, s->display, "ending COPY");
  int rc = KD_OK;
  while ((r = PQgetResult(x->c))) {
    if (rc == KD_OK && PQresultStatus(r) != PGRES_COMMAND_OK) {
      const char *state = PQresultErrorField(r, PG_DIAG_SQLSTATE);
      if (state && strcmp(state, "23505") == 0) { /* unique_violation */
        char b[400];
        const char *detail = PQresultErrorField(r, PG_DIAG_MESSAGE_DETAIL);
        rc = kd_err_set(e, KD_ERR_INVALID, "%s: label version '%s': an example id was put twice (%s)", s->display,
                        w->m.version, pg_msg(detail, b, sizeof b));
      } else {
        rc = pg_fail_res(e, r, x->c, s->display, "writing labels (COPY)");
      }
    }
    PQclear(r);
  }
  return rc;
}

static int pg_writer_commit(kd_labelstore_writer *w, struct kd_err *e) {
  struct pg_writer *x = w->impl;
  kd_labelstore *s = w->s;
  int rc = pg_exec(x->c, "BEGIN", PGRES_COMMAND_OK, s->display, "committing", e);
  if (rc) return rc;
  char vid[24], dig[24], now_s[24];
  int64_t now = (int64_t)time(NULL);
  snprintf(vid, sizeof vid, "%lld", (long long)w->vid);
  snprintf(dig, sizeof dig, "%lld", (long long)(int64_t)w->digest);
  snprintf(now_s, sizeof now_s, "%lld", (long long)now);
  const char *vals[4] = {vid, dig, now_s, NULL};
  PGresult *r = PQexecParams(x->c, "SELECT count(*) FROM kd_labels WHERE vid = $1", 1, NULL, vals, NULL, NULL, 0);
  if (PQresultStatus(r) != PGRES_TUPLES_OK || PQntuples(r) != 1) {
    rc = pg_fail_res(e, r, x->c, s->display, "counting rows");
    PQclear(r);
    goto fail_txn;
  }
  long long stored = strtoll(PQgetvalue(r, 0, 0), NULL, 10);
  PQclear(r);
  if ((uint64_t)stored != w->n_put) {
    rc = kd_err_set(e, KD_ERR_CORRUPT, "%s: label version '%s': %lld rows stored but %llu put; the version stays "
                    "WRITING", s->display, w->m.version, stored, (unsigned long long)w->n_put);
    goto fail_txn;
  }
  char cnt[24];
  snprintf(cnt, sizeof cnt, "%lld", stored);
  vals[3] = cnt;
  r = PQexecParams(x->c, "UPDATE kd_label_versions SET state = 'COMPLETE', row_count = $4, digest = $2,"
                   " completed_unix = $3 WHERE id = $1 AND state = 'WRITING'", 4, NULL, vals, NULL, NULL, 0);
  if (PQresultStatus(r) != PGRES_COMMAND_OK || strcmp(PQcmdTuples(r), "1") != 0) {
    rc = PQresultStatus(r) != PGRES_COMMAND_OK
             ? pg_fail_res(e, r, x->c, s->display, "completing the version")
             : kd_err_set(e, KD_ERR_INVALID, "%s: label version '%s' is no longer WRITING", s->display, w->m.version);
    PQclear(r);
    goto fail_txn;
  }
  PQclear(r);
  if ((rc = pg_exec(x->c, "COMMIT", PGRES_COMMAND_OK, s->display, "completing the version", e))) return rc;
  w->m.state = KD_LABEL_COMPLETE;
  w->m.row_count = (uint64_t)stored;
  w->m.digest = w->digest;
  w->m.completed_unix = now;
  return KD_OK;

fail_txn:
  PQclear(PQexec(x->c, "ROLLBACK"));
  return rc;
}

static void pg_writer_end(kd_labelstore_writer *w, int discard) {
  struct pg_writer *x = w->impl;
  if (!x) return;
  if (discard && PQstatus(x->c) == CONNECTION_OK) {
    char sql[256];
    snprintf(sql, sizeof sql,
             "BEGIN; DELETE FROM kd_labels WHERE vid = %lld;"
             " DELETE FROM kd_label_versions WHERE id = %lld AND state = 'WRITING'; COMMIT;",
             (long long)w->vid, (long long)w->vid);
    PGresult *r = PQexec(x->c, sql);
    if (PQresultStatus(r) != PGRES_COMMAND_OK) PQclear(PQexec(x->c, "ROLLBACK"));
    PQclear(r);
  }
  PQfinish(x->c); /* releases the advisory lock */
  free(x->buf);
  free(x);
  w->impl = NULL;
}

/* ---- reader ------------------------------------------------------------------------------- */

static int pg_reader_open(kd_labelstore_reader *r, const char *version, struct kd_err *e) {
  struct pg_reader *x = calloc(1, sizeof *x);
  if (!x) return kd_err_set(e, KD_ERR_NOMEM, "%s: out of memory", r->s->display);
  int rc = pg_connect(r->s, &x->c, e);
  if (rc == KD_OK) rc = pg_manifest_get_conn(r->s, x->c, version, "", &r->m, &r->vid, e);
  if (rc) {
    PQfinish(x->c);
    free(x);
    return rc;
  }
  r->impl = x;
  return KD_OK;
}

static int pg_reader_start(kd_labelstore_reader *r, struct kd_err *e) {
  struct pg_reader *x = r->impl;
  /* Stream through the primary key index, which is already in (vid, example_id) order: without
   * statistics (a version just committed) the planner may otherwise pick a scan plus a sort,
   * several times slower and buffering the whole version on the server first. Session-local. */
  int rc = pg_exec(x->c, "SET enable_sort = off; SET enable_bitmapscan = off", PGRES_COMMAND_OK, r->s->display,
                   "setting up the read", e);
  if (rc) return rc;
  char sql[256];
  snprintf(sql, sizeof sql,
           "COPY (SELECT example_id, logits FROM kd_labels WHERE vid = %lld ORDER BY example_id)"
           " TO STDOUT (FORMAT binary)", (long long)r->vid);
  PGresult *res = PQexec(x->c, sql);
  if (PQresultStatus(res) != PGRES_COPY_OUT) {
    rc = pg_fail_res(e, res, x->c, r->s->display, "reading labels (COPY)");
    PQclear(res);
    return rc;
  }
  PQclear(res);
  return KD_OK;
}

static int pg_bad_copy(kd_labelstore_reader *r, const char *what, struct kd_err *e) {
  return kd_err_set(e, KD_ERR_CORRUPT, "%s: label version '%s': malformed COPY stream after %llu rows: %s",
                    r->s->display, r->m.version, (unsigned long long)r->n_read, what);
}

static int pg_reader_row(kd_labelstore_reader *r, int64_t *id, const unsigned char **blob, size_t *len,
                         struct kd_err *e) {
  struct pg_reader *x = r->impl;
  for (;;) {
    if (x->msg && x->off < x->len) break;
    if (x->msg) {
      PQfreemem(x->msg);
      x->msg = NULL;
    }
    int n = PQgetCopyData(x->c, &x->msg, 0);
    if (n == -1) { /* end of COPY: collect the final status */
      x->msg = NULL;
      int rc = KD_OK;
      PGresult *res;
      while ((res = PQgetResult(x->c))) {
        if (rc == KD_OK && PQresultStatus(res) != PGRES_COMMAND_OK)
          rc = pg_fail_res(e, res, x->c, r->s->display, "reading labels (COPY)");
        PQclear(res);
      }
      if (rc) return rc;
      if (!x->trailer_seen) return pg_bad_copy(r, "no trailer", e);
      return 0;
    }
    if (n < 0) {
      x->msg = NULL;
      return pg_fail_conn(e, x->c, r->s->display, "reading labels (COPY)");
    }
    x->len = (size_t)n;
    x->off = 0;
  }
  const unsigned char *p = (const unsigned char *)x->msg + x->off;
  size_t left = x->len - x->off;
  if (!x->header_seen) {
    if (left < 19 || memcmp(p, COPY_SIG, 11) != 0) return pg_bad_copy(r, "bad header", e);
    uint32_t ext = get_be32(p + 15);
    if (left < 19 + (size_t)ext) return pg_bad_copy(r, "bad header extension", e);
    p += 19 + ext;
    left -= 19 + ext;
    x->off += 19 + ext;
    x->header_seen = 1;
    if (left == 0) return pg_reader_row(r, id, blob, len, e);
  }
  if (x->trailer_seen) return pg_bad_copy(r, "data after the trailer", e);
  if (left < 2) return pg_bad_copy(r, "truncated row", e);
  int16_t nf = (int16_t)get_be16(p);
  if (nf == -1) {
    x->trailer_seen = 1;
    x->off += 2;
    return pg_reader_row(r, id, blob, len, e);
  }
  if (nf != 2 || left < 2 + 4 + 8 + 4) return pg_bad_copy(r, "row is not (int8, bytea)", e);
  if (get_be32(p + 2) != 8) return pg_bad_copy(r, "example id is not 8 bytes", e);
  *id = (int64_t)get_be64(p + 6);
  uint32_t bl = get_be32(p + 14);
  if (bl == 0xffffffffu || (size_t)bl > left - 18) return pg_bad_copy(r, "logits field overruns the row", e);
  *blob = p + 18;
  *len = bl;
  x->off += 18 + (size_t)bl;
  return 1;
}

static void pg_reader_end(kd_labelstore_reader *r) {
  struct pg_reader *x = r->impl;
  if (!x) return;
  if (x->msg) PQfreemem(x->msg);
  PQfinish(x->c); /* a COPY still streaming is cut off; the server cancels it */
  free(x);
  r->impl = NULL;
}

const struct kd_ls_ops kd_ls_pg_ops = {
    .name = "postgresql",
    .open = pg_open,
    .close = pg_close,
    .manifest_get = pg_manifest_get,
    .list = pg_list,
    .writer_begin = pg_writer_begin,
    .writer_flush = pg_writer_flush,
    .writer_commit = pg_writer_commit,
    .writer_end = pg_writer_end,
    .reader_open = pg_reader_open,
    .reader_start = pg_reader_start,
    .reader_row = pg_reader_row,
    .reader_end = pg_reader_end,
};
