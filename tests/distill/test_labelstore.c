/* test_labelstore.c - the teacher label store's rules, against a real SQLite file or a real
 * PostgreSQL server: round trip, immutability (API and database triggers), completeness (no
 * partial reads, a live writer excludes others, a crashed writer's leftover is restarted), the
 * digest catching tampered labels, coverage join, two readers identical, bad URIs, a large batch.
 * Usage: test_labelstore --sqlite [--rows N]       (makes its own temp dir)
 *        test_labelstore --pg URI [--rows N]       (a fresh server: see with_pg.sh) */
#include "kd_test.h"
#include "kdrank_labelstore.h"

#include <libpq-fe.h>
#include <math.h>
#include <pthread.h>
#include <sqlite3.h>
#include <stdint.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static char g_uri[1024];
static char g_sqlite_path[512]; /* SQLite mode: the database file */
static char g_dir[256];
static int g_pg;

/* The label of (id, task): a deterministic spread of signs and magnitudes. */
static float label_of(int64_t id, uint32_t k, float salt) {
  uint64_t z = (uint64_t)id * 0x9E3779B97F4A7C15ull + k * 0xBF58476D1CE4E5B9ull;
  z ^= z >> 29;
  double u = (double)(z & 0xffffff) / 16777216.0; /* [0,1) */
  return (float)((u - 0.5) * 20.0 * (k + 1)) + salt;
}

static struct kd_label_manifest manifest(const char *version, uint32_t n_tasks, uint64_t expected) {
  struct kd_label_manifest m;
  memset(&m, 0, sizeof m);
  snprintf(m.version, sizeof m.version, "%s", version);
  snprintf(m.teacher, sizeof m.teacher, "teacher-2x.kdr");
  m.teacher_crc = 0xdeadbeefu;
  snprintf(m.data_fingerprint, sizeof m.data_fingerprint, "synth:seed=7:rows=%llu", (unsigned long long)expected);
  m.n_tasks = n_tasks;
  static const char *names[] = {"click", "watch_time", "like", "share", "t4", "t5", "t6", "t7"};
  for (uint32_t k = 0; k < n_tasks; k++) snprintf(m.tasks[k], sizeof m.tasks[k], "%s", names[k % 8]);
  m.row_count = expected;
  return m;
}

static kd_labelstore *open_store(uint32_t batch_rows) {
  struct kd_labelstore_params p = kd_labelstore_params_default();
  if (batch_rows) p.batch_rows = batch_rows;
  struct kd_err e = {0};
  kd_labelstore *s = kd_labelstore_open(g_uri, p, &e);
  if (!s) fprintf(stderr, "open %s: %s\n", g_uri, e.msg);
  return s;
}

/* Writes ids first, first+step, ... (n of them) with salt, in the given order (reverse if rev). */
static int write_version(kd_labelstore *s, const char *version, uint32_t nt, int64_t first, int64_t step, size_t n,
                         float salt, int rev) {
  struct kd_err e = {0};
  struct kd_label_manifest m = manifest(version, nt, n);
  kd_labelstore_writer *w = kd_labelstore_writer_begin(s, &m, &e);
  if (!w) {
    fprintf(stderr, "begin %s: %s\n", version, e.msg);
    return -1;
  }
  float lg[KD_MAX_TASKS];
  for (size_t i = 0; i < n; i++) {
    int64_t id = first + step * (int64_t)(rev ? n - 1 - i : i);
    for (uint32_t k = 0; k < nt; k++) lg[k] = label_of(id, k, salt);
    if (kd_labelstore_writer_put(w, id, lg, &e) != KD_OK) {
      fprintf(stderr, "put %s: %s\n", version, e.msg);
      kd_labelstore_writer_free(w);
      return -1;
    }
  }
  int rc = kd_labelstore_writer_commit(w, NULL, &e);
  if (rc) fprintf(stderr, "commit %s: %s\n", version, e.msg);
  kd_labelstore_writer_free(w);
  return rc;
}

/* Reads a whole version back and checks every label against label_of; returns rows or -1. */
static long long verify_version(kd_labelstore *s, const char *version, int64_t first, int64_t step, float salt) {
  struct kd_err e = {0};
  kd_labelstore_reader *r = kd_labelstore_reader_open(s, version, &e);
  if (!r) {
    fprintf(stderr, "reader_open %s: %s\n", version, e.msg);
    return -1;
  }
  const uint32_t nt = kd_labelstore_reader_manifest(r)->n_tasks;
  float lg[KD_MAX_TASKS];
  int64_t id;
  long long n = 0, bad = 0;
  int rc;
  while ((rc = kd_labelstore_reader_next(r, &id, lg, &e)) == 1) {
    if (id != first + step * n) bad++;
    for (uint32_t k = 0; k < nt; k++) {
      float want = label_of(id, k, salt);
      if (memcmp(&want, &lg[k], 4) != 0) bad++;
    }
    n++;
  }
  if (rc < 0) fprintf(stderr, "next %s: %s\n", version, e.msg);
  kd_labelstore_reader_free(r);
  if (bad) fprintf(stderr, "%s: %lld mismatches\n", version, bad);
  return rc < 0 || bad ? -1 : n;
}

/* Runs one SQL statement directly on the database (not through the store); 0 if it succeeded,
 * else 1 with the database's message in msg. */
static int raw_sql(const char *sql, char *msg, size_t cap) {
  msg[0] = 0;
  if (g_pg) {
    PGconn *c = PQconnectdb(g_uri);
    int ok = PQstatus(c) == CONNECTION_OK;
    if (ok) {
      PGresult *r = PQexec(c, sql);
      ok = PQresultStatus(r) == PGRES_COMMAND_OK || PQresultStatus(r) == PGRES_TUPLES_OK;
      if (!ok) snprintf(msg, cap, "%s", PQresultErrorMessage(r));
      PQclear(r);
    } else {
      snprintf(msg, cap, "%s", PQerrorMessage(c));
    }
    PQfinish(c);
    return !ok;
  }
  sqlite3 *db = NULL;
  char *err = NULL;
  int rc = sqlite3_open(g_sqlite_path, &db);
  if (rc == SQLITE_OK) {
    sqlite3_busy_timeout(db, 5000);
    rc = sqlite3_exec(db, sql, NULL, NULL, &err);
  }
  if (rc != SQLITE_OK) snprintf(msg, cap, "%s", err ? err : sqlite3_errmsg(db));
  sqlite3_free(err);
  sqlite3_close(db);
  return rc != SQLITE_OK;
}

static void test_bad_uris(void) {
  struct kd_err e = {0};
  struct kd_labelstore_params p = kd_labelstore_params_default();
  CHECK(kd_labelstore_open("", p, &e) == NULL && e.code == KD_ERR_INVALID);
  CHECK(kd_labelstore_open(NULL, p, &e) == NULL && e.code == KD_ERR_INVALID);
  CHECK(kd_labelstore_open("mysql://u:secret@h/db", p, &e) == NULL && e.code == KD_ERR_UNSUPPORTED);
  CHECKF(strstr(e.msg, "unknown URI scheme 'mysql'") && !strstr(e.msg, "secret"), "%s", e.msg);
  CHECK(kd_labelstore_open("sqlite:", p, &e) == NULL && e.code == KD_ERR_INVALID);
  /* nothing listens on port 1: connection refused, reported with libpq's words, password hidden */
  CHECK(kd_labelstore_open("postgresql://kd:hunter2@127.0.0.1:1/postgres?connect_timeout=3", p, &e) == NULL);
  CHECKF(e.code == KD_ERR_IO && strstr(e.msg, "cannot connect") && strstr(e.msg, "127.0.0.1") &&
         !strstr(e.msg, "hunter2") && strstr(e.msg, "kd:***@"), "%s", e.msg);
  CHECK(kd_labelstore_open("postgres://127.0.0.1:1/x?connect_timeout=3", p, &e) == NULL && e.code == KD_ERR_IO);
  /* SQLite: a missing directory, a missing file opened read-only, a file that is not a database */
  char path[600];
  snprintf(path, sizeof path, "%s/no/such/dir/l.db", g_dir);
  CHECK(kd_labelstore_open(path, p, &e) == NULL && e.code == KD_ERR_IO);
  CHECKF(strstr(e.msg, path) != NULL, "%s", e.msg);
  struct kd_labelstore_params ro = p;
  ro.read_only = 1;
  snprintf(path, sizeof path, "%s/absent.db", g_dir);
  CHECK(kd_labelstore_open(path, ro, &e) == NULL && e.code == KD_ERR_NOT_FOUND);
  CHECK(access(path, F_OK) != 0); /* read-only created nothing */
  snprintf(path, sizeof path, "%s/garbage.db", g_dir);
  FILE *f = fopen(path, "w");
  REQUIRE(f);
  for (int i = 0; i < 200; i++) fputs("this is not a database ", f);
  fclose(f);
  CHECK(kd_labelstore_open(path, p, &e) == NULL && e.code == KD_ERR_IO);
  CHECKF(strstr(e.msg, "not a database") != NULL, "%s", e.msg);
  /* an existing database without the store's tables, opened read-only: nothing is created */
  if (g_pg) {
    char other[1100];
    const char *db = strrchr(g_uri, '/');
    snprintf(other, sizeof other, "%.*s/template1", (int)(db - g_uri), g_uri);
    CHECK(kd_labelstore_open(other, ro, &e) == NULL);
    CHECKF(e.code == KD_ERR_INVALID && strstr(e.msg, "not a kdrank label store"), "%s", e.msg);
    snprintf(other, sizeof other, "%.*s/no_such_db", (int)(db - g_uri), g_uri);
    CHECK(kd_labelstore_open(other, p, &e) == NULL);
    CHECKF(e.code == KD_ERR_IO && strstr(e.msg, "no_such_db") && strstr(e.msg, "does not exist"), "%s", e.msg);
  } else {
    snprintf(path, sizeof path, "%s/empty.db", g_dir);
    f = fopen(path, "w");
    REQUIRE(f);
    fclose(f);
    CHECK(kd_labelstore_open(path, ro, &e) == NULL);
    CHECKF(e.code == KD_ERR_INVALID && strstr(e.msg, "not a kdrank label store"), "%s", e.msg);
  }
  /* a batch size over the limit */
  struct kd_labelstore_params big = p;
  big.batch_rows = 1u << 30;
  CHECK(kd_labelstore_open(g_uri, big, &e) == NULL && e.code == KD_ERR_RANGE);
}

static void test_pin_parse(void) {
  struct kd_err e = {0};
  char store[256], ver[KD_LABEL_VERSION_MAX];
  CHECK(kd_labelstore_pin_parse("labels.db@t2x-w3", store, sizeof store, ver, &e) == KD_OK &&
        strcmp(store, "labels.db") == 0 && strcmp(ver, "t2x-w3") == 0);
  CHECK(kd_labelstore_pin_parse("postgresql://kd:pw@db.example:5432/labels?sslmode=disable@v1", store, sizeof store,
                                ver, &e) == KD_OK &&
        strcmp(store, "postgresql://kd:pw@db.example:5432/labels?sslmode=disable") == 0 && strcmp(ver, "v1") == 0);
  CHECK(kd_labelstore_pin_parse("labels.db", store, sizeof store, ver, &e) == KD_ERR_INVALID);
  CHECK(kd_labelstore_pin_parse("labels.db@", store, sizeof store, ver, &e) == KD_ERR_INVALID);
  CHECK(kd_labelstore_pin_parse("@v1", store, sizeof store, ver, &e) == KD_ERR_INVALID);
  CHECK(kd_labelstore_pin_parse("labels.db@v/1", store, sizeof store, ver, &e) == KD_ERR_INVALID);
  CHECK(kd_labelstore_pin_parse(NULL, store, sizeof store, ver, &e) == KD_ERR_INVALID);
  CHECK(kd_labelstore_pin_parse("labels.db@v1", store, 5, ver, &e) == KD_ERR_INVALID);
}

static void test_manifest_checks(kd_labelstore *s) {
  struct kd_err e = {0};
  struct kd_label_manifest m = manifest("ok-1", 2, 0);
  const char *bad_versions[] = {"", "a/b", "a@b", "-lead", "sp ace", "x\n"};
  for (size_t i = 0; i < sizeof bad_versions / sizeof *bad_versions; i++) {
    snprintf(m.version, sizeof m.version, "%s", bad_versions[i]);
    CHECKF(kd_labelstore_writer_begin(s, &m, &e) == NULL && e.code == KD_ERR_INVALID, "version '%s'", bad_versions[i]);
  }
  m = manifest("ok-1", 2, 0);
  snprintf(m.tasks[1], sizeof m.tasks[1], "click"); /* duplicate */
  CHECK(kd_labelstore_writer_begin(s, &m, &e) == NULL && e.code == KD_ERR_INVALID && strstr(e.msg, "twice"));
  m = manifest("ok-1", 2, 0);
  snprintf(m.tasks[1], sizeof m.tasks[1], "a,b");
  CHECK(kd_labelstore_writer_begin(s, &m, &e) == NULL && e.code == KD_ERR_INVALID);
  m = manifest("ok-1", 0, 0);
  CHECK(kd_labelstore_writer_begin(s, &m, &e) == NULL && e.code == KD_ERR_INVALID);
  m = manifest("ok-1", 2, 0);
  m.n_tasks = KD_MAX_TASKS + 1;
  CHECK(kd_labelstore_writer_begin(s, &m, &e) == NULL && e.code == KD_ERR_INVALID);
  m = manifest("ok-1", 2, 0);
  m.data_fingerprint[0] = 0;
  CHECK(kd_labelstore_writer_begin(s, &m, &e) == NULL && e.code == KD_ERR_INVALID);
  struct kd_label_manifest got;
  CHECK(kd_labelstore_manifest_get(s, "ok-1", &got, &e) == KD_ERR_NOT_FOUND); /* nothing was created */
  CHECK(kd_labelstore_reader_open(s, "never-written", &e) == NULL && e.code == KD_ERR_NOT_FOUND);
}

static void test_round_trip(kd_labelstore *s) {
  struct kd_err e = {0};
  const size_t n = 1000;
  /* put in descending id order: the reader must still stream ascending */
  time_t t0 = time(NULL);
  REQUIRE(write_version(s, "rt-1", 3, -500, 1, n, 0.25f, 1) == KD_OK);
  struct kd_label_manifest m;
  REQUIRE(kd_labelstore_manifest_get(s, "rt-1", &m, &e) == KD_OK);
  CHECK(m.state == KD_LABEL_COMPLETE);
  CHECK(m.row_count == n);
  CHECK(m.n_tasks == 3 && strcmp(m.tasks[0], "click") == 0 && strcmp(m.tasks[1], "watch_time") == 0 &&
        strcmp(m.tasks[2], "like") == 0);
  CHECK(m.teacher_crc == 0xdeadbeefu);
  CHECK(strcmp(m.teacher, "teacher-2x.kdr") == 0);
  CHECK(strcmp(m.data_fingerprint, "synth:seed=7:rows=1000") == 0);
  CHECK(m.created_unix >= t0 - 1 && m.completed_unix >= m.created_unix && m.completed_unix <= time(NULL) + 1);
  CHECK(m.digest != 0);
  CHECK(verify_version(s, "rt-1", -500, 1, 0.25f) == (long long)n);

  /* a second version of the same teacher, independent of the first */
  REQUIRE(write_version(s, "rt-2", 1, 10, 3, 77, -1.0f, 0) == KD_OK);
  CHECK(verify_version(s, "rt-2", 10, 3, -1.0f) == 77);
  CHECK(verify_version(s, "rt-1", -500, 1, 0.25f) == (long long)n);

  struct kd_label_manifest *all = NULL;
  size_t cnt = 0;
  REQUIRE(kd_labelstore_list(s, &all, &cnt, &e) == KD_OK);
  int seen1 = 0, seen2 = 0;
  for (size_t i = 0; i < cnt; i++) {
    if (strcmp(all[i].version, "rt-1") == 0) seen1 = all[i].row_count == n;
    if (strcmp(all[i].version, "rt-2") == 0) seen2 = all[i].row_count == 77 && all[i].n_tasks == 1;
    if (i) CHECK(strcmp(all[i - 1].version, all[i].version) < 0);
  }
  free(all);
  CHECK(seen1 && seen2);

  /* an empty version is legal (a data set with no rows) */
  REQUIRE(write_version(s, "rt-empty", 2, 0, 1, 0, 0.0f, 0) == KD_OK);
  CHECK(verify_version(s, "rt-empty", 0, 1, 0.0f) == 0);

  /* extreme ids survive */
  struct kd_label_manifest mx = manifest("rt-extreme", 1, 2);
  kd_labelstore_writer *w = kd_labelstore_writer_begin(s, &mx, &e);
  REQUIRE(w);
  float a = 1.5f, b = -2.5f;
  CHECK(kd_labelstore_writer_put(w, INT64_MAX, &a, &e) == KD_OK);
  CHECK(kd_labelstore_writer_put(w, INT64_MIN, &b, &e) == KD_OK);
  CHECK(kd_labelstore_writer_commit(w, NULL, &e) == KD_OK);
  kd_labelstore_writer_free(w);
  kd_labelstore_reader *r = kd_labelstore_reader_open(s, "rt-extreme", &e);
  REQUIRE(r);
  int64_t id;
  float v;
  CHECK(kd_labelstore_reader_next(r, &id, &v, &e) == 1 && id == INT64_MIN && v == -2.5f);
  CHECK(kd_labelstore_reader_next(r, &id, &v, &e) == 1 && id == INT64_MAX && v == 1.5f);
  CHECK(kd_labelstore_reader_next(r, &id, &v, &e) == 0);
  kd_labelstore_reader_free(r);
}

static void test_immutability(kd_labelstore *s) {
  struct kd_err e = {0};
  REQUIRE(write_version(s, "imm-1", 2, 0, 1, 300, 0.0f, 0) == KD_OK);
  struct kd_label_manifest before;
  REQUIRE(kd_labelstore_manifest_get(s, "imm-1", &before, &e) == KD_OK);

  /* the API refuses a second write, with the same or another manifest */
  struct kd_label_manifest m = manifest("imm-1", 2, 300);
  CHECK(kd_labelstore_writer_begin(s, &m, &e) == NULL);
  CHECKF(e.code == KD_ERR_INVALID && strstr(e.msg, "COMPLETE") && strstr(e.msg, "imm-1"), "%s", e.msg);
  m = manifest("imm-1", 4, 0);
  CHECK(kd_labelstore_writer_begin(s, &m, &e) == NULL && e.code == KD_ERR_INVALID);

  /* a committed writer refuses more puts */
  struct kd_label_manifest m2 = manifest("imm-2", 1, 0);
  kd_labelstore_writer *w = kd_labelstore_writer_begin(s, &m2, &e);
  REQUIRE(w);
  float x = 1.0f;
  CHECK(kd_labelstore_writer_put(w, 1, &x, &e) == KD_OK);
  CHECK(kd_labelstore_writer_commit(w, NULL, &e) == KD_OK);
  CHECK(kd_labelstore_writer_put(w, 2, &x, &e) == KD_ERR_INVALID && strstr(e.msg, "COMPLETE"));
  CHECK(kd_labelstore_writer_commit(w, NULL, &e) == KD_ERR_INVALID);
  kd_labelstore_writer_free(w); /* must not discard a committed version */
  struct kd_label_manifest g;
  CHECK(kd_labelstore_manifest_get(s, "imm-2", &g, &e) == KD_OK && g.state == KD_LABEL_COMPLETE && g.row_count == 1);
  kd_labelstore_reader *r = kd_labelstore_reader_open(s, "imm-2", &e);
  REQUIRE(r);
  int64_t rid;
  float rv;
  CHECK(kd_labelstore_reader_next(r, &rid, &rv, &e) == 1 && rid == 1 && rv == 1.0f);
  CHECK(kd_labelstore_reader_next(r, &rid, &rv, &e) == 0);
  kd_labelstore_reader_free(r);

  /* other clients: the database's triggers refuse changes to a COMPLETE version */
  char sql[512], msg[512];
  long long vid = -1;
  {
    if (g_pg) {
      PGconn *c = PQconnectdb(g_uri);
      PGresult *r = PQexec(c, "SELECT id FROM kd_label_versions WHERE version = 'imm-1'");
      if (PQresultStatus(r) == PGRES_TUPLES_OK && PQntuples(r) == 1) vid = atoll(PQgetvalue(r, 0, 0));
      PQclear(r);
      PQfinish(c);
    } else {
      sqlite3 *db = NULL;
      sqlite3_stmt *st = NULL;
      sqlite3_open(g_sqlite_path, &db);
      if (sqlite3_prepare_v2(db, "SELECT id FROM kd_label_versions WHERE version = 'imm-1'", -1, &st, NULL) ==
              SQLITE_OK && sqlite3_step(st) == SQLITE_ROW)
        vid = sqlite3_column_int64(st, 0);
      sqlite3_finalize(st);
      sqlite3_close(db);
    }
  }
  REQUIRE(vid >= 0);
  const char *blob = g_pg ? "'\\x0000803f0000803f'::bytea" : "x'0000803f0000803f'";
  snprintf(sql, sizeof sql, "UPDATE kd_labels SET logits = %s WHERE vid = %lld AND example_id = 5", blob, vid);
  CHECKF(raw_sql(sql, msg, sizeof msg) && strstr(msg, "COMPLETE"), "update: %s", msg);
  snprintf(sql, sizeof sql, "DELETE FROM kd_labels WHERE vid = %lld AND example_id = 5", vid);
  CHECKF(raw_sql(sql, msg, sizeof msg) && strstr(msg, "COMPLETE"), "delete: %s", msg);
  snprintf(sql, sizeof sql, "INSERT INTO kd_labels(vid, example_id, logits) VALUES(%lld, 100000, %s)", vid, blob);
  CHECKF(raw_sql(sql, msg, sizeof msg) && strstr(msg, "COMPLETE"), "insert: %s", msg);
  snprintf(sql, sizeof sql, "UPDATE kd_label_versions SET state = 'WRITING' WHERE id = %lld", vid);
  CHECKF(raw_sql(sql, msg, sizeof msg) && strstr(msg, "COMPLETE"), "reopen: %s", msg);
  snprintf(sql, sizeof sql, "DELETE FROM kd_label_versions WHERE id = %lld", vid);
  CHECKF(raw_sql(sql, msg, sizeof msg) && strstr(msg, "COMPLETE"), "drop: %s", msg);
  if (g_pg) CHECKF(raw_sql("TRUNCATE kd_labels", msg, sizeof msg) && strstr(msg, "COMPLETE"), "truncate: %s", msg);
  struct kd_label_manifest after;
  REQUIRE(kd_labelstore_manifest_get(s, "imm-1", &after, &e) == KD_OK);
  CHECK(memcmp(&before, &after, sizeof before) == 0);
  CHECK(verify_version(s, "imm-1", 0, 1, 0.0f) == 300);
}

/* A client that bypasses the triggers (drops them) and edits labels is caught by the digest. */
static void test_tamper_detected(void) {
  kd_labelstore *s = open_store(0);
  REQUIRE(s);
  REQUIRE(write_version(s, "tamper-1", 2, 0, 1, 50, 0.0f, 0) == KD_OK);
  char msg[512];
  const char *sql = g_pg
      ? "BEGIN; ALTER TABLE kd_labels DISABLE TRIGGER USER;"
        " UPDATE kd_labels SET logits = '\\x0000803f0000803f'::bytea WHERE example_id = 7 AND"
        " vid = (SELECT id FROM kd_label_versions WHERE version = 'tamper-1');"
        " ALTER TABLE kd_labels ENABLE TRIGGER USER; COMMIT;"
      : "DROP TRIGGER kd_labels_no_update;"
        " UPDATE kd_labels SET logits = x'0000803f0000803f' WHERE example_id = 7 AND"
        " vid = (SELECT id FROM kd_label_versions WHERE version = 'tamper-1');";
  CHECKF(raw_sql(sql, msg, sizeof msg) == 0, "%s", msg);
  struct kd_err e = {0};
  kd_labelstore_reader *r = kd_labelstore_reader_open(s, "tamper-1", &e);
  REQUIRE(r);
  int64_t id;
  float lg[2];
  int rc;
  long n = 0;
  while ((rc = kd_labelstore_reader_next(r, &id, lg, &e)) == 1) n++;
  CHECKF(rc == KD_ERR_CORRUPT && strstr(e.msg, "digest"), "rc %d: %s", rc, e.msg);
  CHECK(n == 50);
  kd_labelstore_reader_free(r);

  /* a logits value of the wrong size, and a malformed task list, are reported, not trusted */
  REQUIRE(write_version(s, "tamper-2", 2, 0, 1, 20, 0.0f, 0) == KD_OK);
  sql = g_pg
      ? "BEGIN; ALTER TABLE kd_labels DISABLE TRIGGER USER; ALTER TABLE kd_label_versions DISABLE TRIGGER USER;"
        " UPDATE kd_labels SET logits = '\\x0000803f'::bytea WHERE example_id = 3 AND"
        " vid = (SELECT id FROM kd_label_versions WHERE version = 'tamper-2');"
        " UPDATE kd_label_versions SET tasks = 'a,,b' WHERE version = 'tamper-1';"
        " ALTER TABLE kd_labels ENABLE TRIGGER USER; ALTER TABLE kd_label_versions ENABLE TRIGGER USER; COMMIT;"
      : "DROP TRIGGER kd_label_versions_no_update;"
        " UPDATE kd_labels SET logits = x'0000803f' WHERE example_id = 3 AND"
        " vid = (SELECT id FROM kd_label_versions WHERE version = 'tamper-2');"
        " UPDATE kd_label_versions SET tasks = 'a,,b' WHERE version = 'tamper-1';";
  CHECKF(raw_sql(sql, msg, sizeof msg) == 0, "%s", msg);
  r = kd_labelstore_reader_open(s, "tamper-2", &e);
  REQUIRE(r);
  n = 0;
  while ((rc = kd_labelstore_reader_next(r, &id, lg, &e)) == 1) n++;
  CHECKF(rc == KD_ERR_CORRUPT && strstr(e.msg, "example 3 has 4 logit bytes, expected 8"), "rc %d: %s", rc, e.msg);
  CHECK(n == 3);
  kd_labelstore_reader_free(r);
  struct kd_label_manifest m;
  CHECK(kd_labelstore_manifest_get(s, "tamper-1", &m, &e) == KD_ERR_CORRUPT && strstr(e.msg, "malformed"));
  CHECK(kd_labelstore_reader_open(s, "tamper-1", &e) == NULL && e.code == KD_ERR_CORRUPT);
  struct kd_label_manifest *all = NULL;
  size_t cnt = 0;
  CHECK(kd_labelstore_list(s, &all, &cnt, &e) == KD_ERR_CORRUPT && all == NULL);
  kd_labelstore_close(s);
}

static void test_completeness(void) {
  struct kd_err e = {0};
  kd_labelstore *s = open_store(100); /* small batches: rows reach the database before commit */
  REQUIRE(s);
  struct kd_label_manifest m = manifest("wr-1", 2, 0);
  kd_labelstore_writer *w = kd_labelstore_writer_begin(s, &m, &e);
  REQUIRE(w);
  float lg[2] = {1, 2};
  for (int64_t i = 0; i < 250; i++) CHECK(kd_labelstore_writer_put(w, i, lg, &e) == KD_OK);
  CHECK(kd_labelstore_writer_rows(w) == 250);
  /* no partial reads */
  CHECK(kd_labelstore_reader_open(s, "wr-1", &e) == NULL);
  CHECKF(e.code == KD_ERR_INVALID && strstr(e.msg, "WRITING") && strstr(e.msg, "not COMPLETE"), "%s", e.msg);
  struct kd_label_manifest g;
  CHECK(kd_labelstore_manifest_get(s, "wr-1", &g, &e) == KD_OK && g.state == KD_LABEL_WRITING);
  /* a second writer of the same version, while the first is alive, is refused (another handle) */
  kd_labelstore *s2 = open_store(0);
  REQUIRE(s2);
  CHECK(kd_labelstore_writer_begin(s2, &m, &e) == NULL);
  CHECKF(e.code == KD_ERR_INVALID && strstr(e.msg, "another live writer"), "%s", e.msg);
  /* ... but another version can be written meanwhile */
  CHECK(write_version(s2, "wr-other", 1, 0, 1, 10, 0.0f, 0) == KD_OK);
  /* the rows are in the database but still invisible */
  CHECK(kd_labelstore_reader_open(s2, "wr-1", &e) == NULL && e.code == KD_ERR_INVALID);
  /* abandoning the writer discards the version */
  kd_labelstore_writer_free(w);
  CHECK(kd_labelstore_manifest_get(s, "wr-1", &g, &e) == KD_ERR_NOT_FOUND);
  /* and it can then be written normally */
  CHECK(write_version(s2, "wr-1", 2, 0, 1, 20, 0.0f, 0) == KD_OK);
  CHECK(verify_version(s2, "wr-1", 0, 1, 0.0f) == 20);

  /* commit checks the declared row count; the version stays WRITING */
  m = manifest("wr-count", 2, 10);
  w = kd_labelstore_writer_begin(s, &m, &e);
  REQUIRE(w);
  for (int64_t i = 0; i < 9; i++) CHECK(kd_labelstore_writer_put(w, i, lg, &e) == KD_OK);
  CHECK(kd_labelstore_writer_commit(w, NULL, &e) == KD_ERR_INVALID && strstr(e.msg, "declared 10"));
  CHECK(kd_labelstore_manifest_get(s, "wr-count", &g, &e) == KD_OK && g.state == KD_LABEL_WRITING);
  CHECK(kd_labelstore_reader_open(s, "wr-count", &e) == NULL);
  kd_labelstore_writer_free(w);

  /* a duplicate example id fails the batch and the writer */
  m = manifest("wr-dup", 2, 0);
  w = kd_labelstore_writer_begin(s, &m, &e);
  REQUIRE(w);
  CHECK(kd_labelstore_writer_put(w, 5, lg, &e) == KD_OK);
  CHECK(kd_labelstore_writer_put(w, 6, lg, &e) == KD_OK);
  CHECK(kd_labelstore_writer_put(w, 5, lg, &e) == KD_OK); /* buffered */
  int rc = kd_labelstore_writer_commit(w, NULL, &e);
  CHECKF(rc == KD_ERR_INVALID && strstr(e.msg, "twice"), "rc %d: %s", rc, e.msg);
  CHECK(kd_labelstore_writer_put(w, 7, lg, &e) == rc); /* failed for good */
  kd_labelstore_writer_free(w);
  CHECK(kd_labelstore_manifest_get(s, "wr-dup", &g, &e) == KD_ERR_NOT_FOUND);

  /* non-finite logits are refused at put, and nothing is stored for that call */
  m = manifest("wr-nan", 2, 0);
  w = kd_labelstore_writer_begin(s, &m, &e);
  REQUIRE(w);
  float bad[2] = {1.0f, NAN};
  CHECK(kd_labelstore_writer_put(w, 1, bad, &e) == KD_ERR_INVALID && strstr(e.msg, "watch_time") &&
        strstr(e.msg, "NaN"));
  bad[1] = INFINITY;
  CHECK(kd_labelstore_writer_put(w, 1, bad, &e) == KD_ERR_INVALID && strstr(e.msg, "infinite"));
  CHECK(kd_labelstore_writer_put(w, 1, lg, &e) == KD_OK);
  CHECK(kd_labelstore_writer_commit(w, NULL, &e) == KD_OK);
  kd_labelstore_writer_free(w);
  CHECK(kd_labelstore_manifest_get(s, "wr-nan", &g, &e) == KD_OK && g.row_count == 1);

  /* a read-only store refuses writers */
  struct kd_labelstore_params ro = kd_labelstore_params_default();
  ro.read_only = 1;
  kd_labelstore *sro = kd_labelstore_open(g_uri, ro, &e);
  REQUIRE(sro);
  m = manifest("ro-1", 1, 0);
  CHECK(kd_labelstore_writer_begin(sro, &m, &e) == NULL && e.code == KD_ERR_INVALID && strstr(e.msg, "read-only"));
  CHECK(verify_version(sro, "wr-1", 0, 1, 0.0f) == 20);
  kd_labelstore_close(sro);
  kd_labelstore_close(s2);
  kd_labelstore_close(s);
}

/* A writer process that dies mid-version leaves a WRITING leftover: unreadable, and the next
 * writer of that version discards it and starts afresh. */
static void test_crashed_writer(void) {
  fflush(NULL);
  pid_t pid = fork();
  REQUIRE(pid >= 0);
  if (pid == 0) {
    kd_labelstore *s = open_store(1000);
    if (!s) _exit(2);
    struct kd_err e;
    struct kd_label_manifest m = manifest("crash-1", 2, 0);
    kd_labelstore_writer *w = kd_labelstore_writer_begin(s, &m, &e);
    if (!w) _exit(3);
    float lg[2];
    for (int64_t i = 0; i < 2500; i++) {
      lg[0] = label_of(i, 0, 9.0f);
      lg[1] = label_of(i, 1, 9.0f);
      if (kd_labelstore_writer_put(w, i, lg, &e)) _exit(4);
    }
    _exit(42); /* "crash": no commit, no free, no close */
  }
  int st = 0;
  REQUIRE(waitpid(pid, &st, 0) == pid);
  REQUIRE(WIFEXITED(st) && WEXITSTATUS(st) == 42);
  kd_labelstore *s = open_store(0);
  REQUIRE(s);
  struct kd_err e = {0};
  struct kd_label_manifest g;
  CHECK(kd_labelstore_manifest_get(s, "crash-1", &g, &e) == KD_OK && g.state == KD_LABEL_WRITING);
  CHECK(kd_labelstore_reader_open(s, "crash-1", &e) == NULL && e.code == KD_ERR_INVALID);
  /* restart: only the new rows are there afterwards */
  CHECK(write_version(s, "crash-1", 2, 100, 2, 500, -3.0f, 0) == KD_OK);
  CHECK(verify_version(s, "crash-1", 100, 2, -3.0f) == 500);
  kd_labelstore_close(s);
}

static void test_coverage(kd_labelstore *s) {
  struct kd_err e = {0};
  /* stored: even ids 0..1998 */
  REQUIRE(write_version(s, "cov-1", 2, 0, 2, 1000, 0.5f, 0) == KD_OK);
  /* the trainer's examples: -10..2009 (2020 ids), of which 1000 are labelled */
  size_t n = 2020;
  int64_t *ids = malloc(n * sizeof *ids);
  float *lg = malloc(n * 2 * sizeof *lg);
  uint8_t *found = malloc(n);
  REQUIRE(ids && lg && found);
  for (size_t i = 0; i < n; i++) ids[i] = (int64_t)i - 10;
  kd_labelstore_reader *r = kd_labelstore_reader_open(s, "cov-1", &e);
  REQUIRE(r);
  struct kd_label_coverage cov;
  REQUIRE(kd_labelstore_reader_join(r, ids, n, lg, found, &cov, &e) == KD_OK);
  CHECK(cov.n_examples == n && cov.n_labelled == 1000 && cov.n_stored == 1000);
  CHECK(fabs(cov.fraction - 1000.0 / 2020.0) < 1e-12);
  long bad = 0;
  for (size_t i = 0; i < n; i++) {
    int64_t id = ids[i];
    int want = id >= 0 && id <= 1998 && id % 2 == 0;
    if (found[i] != want) bad++;
    for (uint32_t k = 0; k < 2; k++) {
      float v = lg[i * 2 + k];
      if (want ? v != label_of(id, k, 0.5f) : !isnan(v)) bad++;
    }
  }
  CHECK(bad == 0);
  /* the reader is consumed; a second join is refused */
  CHECK(kd_labelstore_reader_join(r, ids, n, NULL, NULL, &cov, &e) == KD_ERR_INVALID);
  kd_labelstore_reader_free(r);

  /* coverage only; a full cover; an empty list; a list with no overlap */
  r = kd_labelstore_reader_open(s, "cov-1", &e);
  REQUIRE(r);
  for (size_t i = 0; i < 1000; i++) ids[i] = 2 * (int64_t)i;
  CHECK(kd_labelstore_reader_join(r, ids, 1000, NULL, NULL, &cov, &e) == KD_OK && cov.fraction == 1.0 &&
        cov.n_labelled == 1000);
  kd_labelstore_reader_free(r);
  r = kd_labelstore_reader_open(s, "cov-1", &e);
  REQUIRE(r);
  CHECK(kd_labelstore_reader_join(r, ids, 0, NULL, NULL, &cov, &e) == KD_OK && cov.n_examples == 0 &&
        cov.fraction == 1.0 && cov.n_stored == 1000);
  kd_labelstore_reader_free(r);
  r = kd_labelstore_reader_open(s, "cov-1", &e);
  REQUIRE(r);
  for (size_t i = 0; i < 100; i++) ids[i] = 2 * (int64_t)i + 1;
  CHECK(kd_labelstore_reader_join(r, ids, 100, NULL, found, &cov, &e) == KD_OK && cov.n_labelled == 0 &&
        cov.fraction == 0.0 && found[0] == 0 && found[99] == 0);
  kd_labelstore_reader_free(r);

  /* ids must be strictly ascending */
  r = kd_labelstore_reader_open(s, "cov-1", &e);
  REQUIRE(r);
  ids[0] = 4;
  ids[1] = 4;
  CHECK(kd_labelstore_reader_join(r, ids, 2, NULL, NULL, &cov, &e) == KD_ERR_INVALID && strstr(e.msg, "ids[1]"));
  /* a join after reading is refused */
  int64_t id;
  float row[2];
  CHECK(kd_labelstore_reader_next(r, &id, row, &e) == 1);
  ids[1] = 6;
  CHECK(kd_labelstore_reader_join(r, ids, 2, NULL, NULL, &cov, &e) == KD_ERR_INVALID && strstr(e.msg, "fresh"));
  kd_labelstore_reader_free(r);
  free(ids);
  free(lg);
  free(found);
}

/* Two readers of one version, interleaved, see identical rows; a third on another store handle too. */
static void test_two_readers(kd_labelstore *s) {
  struct kd_err e = {0};
  REQUIRE(write_version(s, "two-1", 4, 1000, 7, 5000, 0.0f, 1) == KD_OK);
  kd_labelstore *s2 = open_store(0);
  REQUIRE(s2);
  kd_labelstore_reader *a = kd_labelstore_reader_open(s, "two-1", &e);
  kd_labelstore_reader *b = kd_labelstore_reader_open(s2, "two-1", &e);
  REQUIRE(a && b);
  CHECK(memcmp(kd_labelstore_reader_manifest(a), kd_labelstore_reader_manifest(b), sizeof(struct kd_label_manifest)) ==
        0);
  int64_t ia, ib;
  float la[4], lb[4];
  int ra, rb;
  long n = 0, diff = 0;
  do {
    ra = kd_labelstore_reader_next(a, &ia, la, &e);
    rb = kd_labelstore_reader_next(b, &ib, lb, &e);
    if (ra != rb || (ra == 1 && (ia != ib || memcmp(la, lb, sizeof la) != 0))) diff++;
    n += ra == 1;
  } while (ra == 1 && rb == 1 && n < 100000);
  CHECK(ra == 0 && rb == 0);
  CHECK(diff == 0 && n == 5000);
  kd_labelstore_reader_free(a);
  kd_labelstore_reader_free(b);
  kd_labelstore_close(s2);
}

/* Threads sharing one store handle: a writer writes a version while readers read another. The
 * threads only return results; the main thread checks them (the CHECK counters are not atomic). */
struct thr_job {
  kd_labelstore *s;
  int writer;
  long long result;
};

static void *thr_main(void *arg) {
  struct thr_job *j = arg;
  if (j->writer) {
    j->result = write_version(j->s, "thr-w", 3, 0, 1, 50000, 2.0f, 0);
  } else {
    j->result = 0;
    for (int rep = 0; rep < 3; rep++) {
      long long n = verify_version(j->s, "two-1", 1000, 7, 0.0f);
      if (n != 5000) j->result = -1;
    }
  }
  return NULL;
}

static void test_threads(kd_labelstore *s) {
  pthread_t th[4];
  struct thr_job jobs[4];
  for (int i = 0; i < 4; i++) {
    jobs[i].s = s;
    jobs[i].writer = i == 0;
    jobs[i].result = -2;
    REQUIRE(pthread_create(&th[i], NULL, thr_main, &jobs[i]) == 0);
  }
  for (int i = 0; i < 4; i++) pthread_join(th[i], NULL);
  CHECK(jobs[0].result == KD_OK);
  for (int i = 1; i < 4; i++) CHECK(jobs[i].result == 0);
  CHECK(verify_version(s, "thr-w", 0, 1, 2.0f) == 50000);
}

/* A large version in bounded time (CTest TIMEOUT bounds it; the time is printed, not asserted). */
static void test_large(kd_labelstore *s, size_t rows) {
  struct timespec t0, t1, t2;
  clock_gettime(CLOCK_MONOTONIC, &t0);
  REQUIRE(write_version(s, "big-1", 4, 0, 1, rows, 0.0f, 0) == KD_OK);
  clock_gettime(CLOCK_MONOTONIC, &t1);
  CHECK(verify_version(s, "big-1", 0, 1, 0.0f) == (long long)rows);
  clock_gettime(CLOCK_MONOTONIC, &t2);
  double w = (double)(t1.tv_sec - t0.tv_sec) + 1e-9 * (double)(t1.tv_nsec - t0.tv_nsec);
  double r = (double)(t2.tv_sec - t1.tv_sec) + 1e-9 * (double)(t2.tv_nsec - t1.tv_nsec);
  printf("large: %zu rows x 4 tasks written in %.2f s, read and verified in %.2f s\n", rows, w, r);
}

int main(int argc, char **argv) {
#ifdef __SANITIZE_THREAD__
  size_t rows = 100000; /* TSan makes SQLite's page handling ~100x slower; the threads are what it checks */
#else
  size_t rows = 1000000;
#endif
  const char *pg = NULL;
  int sq = 0;
  for (int i = 1; i < argc; i++) {
    if (strcmp(argv[i], "--sqlite") == 0) sq = 1;
    else if (strcmp(argv[i], "--pg") == 0 && i + 1 < argc) pg = argv[++i];
    else if (strcmp(argv[i], "--rows") == 0 && i + 1 < argc) rows = (size_t)strtoull(argv[++i], NULL, 10);
    else {
      fprintf(stderr, "usage: %s --sqlite | --pg URI [--rows N]\n", argv[0]);
      return 2;
    }
  }
  if (sq == !!pg) {
    fprintf(stderr, "usage: %s --sqlite | --pg URI [--rows N]\n", argv[0]);
    return 2;
  }
  snprintf(g_dir, sizeof g_dir, "/tmp/kd-labelstore-test.XXXXXX");
  REQUIRE(mkdtemp(g_dir));
  if (pg) {
    g_pg = 1;
    snprintf(g_uri, sizeof g_uri, "%s", pg);
  } else {
    snprintf(g_sqlite_path, sizeof g_sqlite_path, "%s/labels.db", g_dir);
    snprintf(g_uri, sizeof g_uri, "sqlite:%s", g_sqlite_path);
  }
  printf("label store tests on %s\n", pg ? "PostgreSQL" : g_uri);

  test_bad_uris();
  test_pin_parse();
  kd_labelstore *s = open_store(4096);
  REQUIRE(s);
  CHECK(strcmp(kd_labelstore_backend(s), pg ? "postgresql" : "sqlite") == 0);
  test_manifest_checks(s);
  test_round_trip(s);
  test_immutability(s);
  test_completeness();
  test_crashed_writer();
  test_coverage(s);
  test_two_readers(s);
  test_threads(s);
  kd_labelstore_close(s);
  s = open_store(0);
  REQUIRE(s);
  if (rows) test_large(s, rows);
  kd_labelstore_close(s);
  test_tamper_detected();

  char cmd[600];
  snprintf(cmd, sizeof cmd, "rm -rf '%s'", g_dir);
  if (system(cmd) != 0) fprintf(stderr, "could not remove %s\n", g_dir);
  KD_TEST_END();
}
