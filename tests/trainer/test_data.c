/* test_data.c - data in: schema errors name the column and field, malformed rows name their line
 * (stop on the first, or skip up to a limit and report the lines), gzip input, the binary cache
 * (used on a second load, ignored when the file changes, rejected when corrupt); exact AUC with
 * ties on hand-computed cases; metrics. Files live in a temp dir. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <zlib.h>

#include "kd_test.h"
#include "kdrank_train.h"

static char dir[256];

static void put(const char *name, const char *text) {
  char p[512];
  snprintf(p, sizeof p, "%s/%s", dir, name);
  FILE *f = fopen(p, "w");
  REQUIRE(f);
  fputs(text, f);
  fclose(f);
}
static const char *path(const char *name) {
  static char p[4][512];
  static int i;
  i = (i + 1) % 4;
  snprintf(p[i], sizeof p[i], "%s/%s", dir, name);
  return p[i];
}

static const char *SCHEMA =
    "{\"columns\": [\n"
    " {\"name\": \"id\", \"role\": \"id\"},\n"
    " {\"name\": \"user\", \"role\": \"sparse\", \"group\": \"context\", \"rows\": 100, \"dim\": 4},\n"
    " {\"name\": \"x\", \"role\": \"dense\", \"group\": \"candidate\", \"dim\": 2},\n"
    " {\"name\": \"tags\", \"role\": \"sparse\", \"group\": \"candidate\", \"rows\": 50, \"dim\": 2, \"sep\": \"|\"},\n"
    " {\"name\": \"click\", \"role\": \"label\", \"type\": \"binary\"},\n"
    " {\"name\": \"watch\", \"role\": \"label\", \"type\": \"regression\", \"transform\": \"log1p\"},\n"
    " {\"name\": \"note\", \"role\": \"ignore\"}]}\n";

static void test_schema_errors(void) {
  struct kd_schema s;
  struct kd_err e;
  CHECK(kd_schema_parse(SCHEMA, strlen(SCHEMA), "s.json", &s, &e) == KD_OK);
  CHECK(s.arch.n_features == 3 && s.arch.n_tasks == 2 && s.n_cols == 7);
  CHECK(s.arch.tasks[1].xform == KD_XFORM_LOG1P && s.cols[3].sep == '|');
  const char *bad_json = "{\"columns\": [\n {\"name\": \"id\", \"role\": \"id\"},\n oops]}";
  CHECK(kd_schema_parse(bad_json, strlen(bad_json), "s.json", &s, &e) == KD_ERR_INVALID);
  CHECKF(strstr(e.msg, "s.json:3") != NULL, "%s", e.msg);
  const char *bad_role = "{\"columns\": [{\"name\": \"a\", \"role\": \"label\", \"type\": \"binary\"},"
                         "{\"name\": \"u\", \"role\": \"spars\"}]}";
  CHECK(kd_schema_parse(bad_role, strlen(bad_role), "s.json", &s, &e) == KD_ERR_INVALID);
  CHECKF(strstr(e.msg, "column 1 'u'") && strstr(e.msg, "\"spars\""), "%s", e.msg);
  const char *no_rows = "{\"columns\": [{\"name\": \"a\", \"role\": \"label\", \"type\": \"binary\"},"
                        "{\"name\": \"u\", \"role\": \"sparse\", \"group\": \"context\"}]}";
  CHECK(kd_schema_parse(no_rows, strlen(no_rows), "s.json", &s, &e) == KD_ERR_INVALID);
  CHECKF(strstr(e.msg, "'u'") && strstr(e.msg, "rows"), "%s", e.msg);
  const char *bad_type = "{\"columns\": [{\"name\": \"a\", \"role\": \"label\", \"type\": \"ordinal\"}]}";
  CHECK(kd_schema_parse(bad_type, strlen(bad_type), "s.json", &s, &e) == KD_ERR_INVALID);
  CHECKF(strstr(e.msg, "ordinal"), "%s", e.msg);
  const char *dup = "{\"columns\": [{\"name\": \"a\", \"role\": \"ignore\"},{\"name\": \"a\", \"role\": \"ignore\"}]}";
  CHECK(kd_schema_parse(dup, strlen(dup), "s.json", &s, &e) == KD_ERR_INVALID);
  CHECKF(strstr(e.msg, "twice"), "%s", e.msg);
}

static const char *GOOD =
    "note\tid\tuser\tx\ttags\tclick\twatch\n"
    "a\t10\t1\t0.5,1\t3|4\t1\t2.5\n"
    "b\t11\t2\t-1,2\t\t0\t0\n"
    "c\t12\t1,2\t0,0\t7\t\t1\n";

static void test_rows(void) {
  struct kd_schema s;
  struct kd_err e;
  REQUIRE(kd_schema_parse(SCHEMA, strlen(SCHEMA), "s", &s, &e) == KD_OK);
  put("good.tsv", GOOD);
  struct kd_table t;
  struct kd_load_report r;
  struct kd_load_params lp = {.max_bad = 0, .use_cache = 0};
  REQUIRE(kd_table_load(path("good.tsv"), &s, lp, &t, &r, &e) == KD_OK);
  CHECK(t.n == 3 && r.bad == 0);
  CHECK(t.ids[0] == 10 && t.ids[2] == 12);
  CHECK(t.cols[1].dense[2] == -1.0f && t.cols[1].dense[3] == 2.0f);
  CHECK(t.cols[2].off[1] == 2 && t.cols[2].off[2] == 2 && t.cols[2].ids[2] == 7); /* empty cell: no ids */
  CHECK(t.cols[0].off[3] - t.cols[0].off[2] == 2);                                 /* "1,2": two ids */
  CHECK(t.labels[0] == 1.0f && fabsf(t.labels[1] - log1pf(2.5f)) < 1e-6f);
  CHECK(isnan(t.labels[2 * 2 + 0]));                                                  /* missing label */
  kd_table_free(&t);

  /* malformed rows: the error names the file and line */
  put("bad.tsv", "note\tid\tuser\tx\ttags\tclick\twatch\n"
                 "a\t1\t1\t0,1\t3\t1\t2\n"
                 "b\t2\t1\t0,1\t3\t2\t2\n"          /* line 3: binary label 2 */
                 "c\t3\t1\t0\t3\t1\t2\n"            /* line 4: dense dim 1 of 2 */
                 "d\t4\t1\t0,1\t3\t1\n"             /* line 5: 6 fields */
                 "e\t5\tu7\t0,1\t3\t1\t2\n"         /* line 6: non-integer id */
                 "f\t6\t1\t0,1\t3\t0\t-3\n"         /* line 7: log1p of -3 */
                 "g\t7\t1\t0,nan\t3\t0\t1\n");      /* line 8: NaN */
  CHECK(kd_table_load(path("bad.tsv"), &s, lp, &t, &r, &e) == KD_ERR_INVALID);
  CHECKF(strstr(e.msg, "bad.tsv:3:") && strstr(e.msg, "click") && strstr(e.msg, "'2'"), "%s", e.msg);
  lp.max_bad = 3;
  CHECK(kd_table_load(path("bad.tsv"), &s, lp, &t, &r, &e) == KD_ERR_INVALID);
  CHECKF(strstr(e.msg, "bad.tsv:6:") && strstr(e.msg, "too many"), "%s", e.msg);
  lp.max_bad = -1;
  REQUIRE(kd_table_load(path("bad.tsv"), &s, lp, &t, &r, &e) == KD_OK);
  CHECK(t.n == 1 && r.bad == 6);
  CHECK(r.bad_line[0] == 3 && r.bad_line[1] == 4 && r.bad_line[2] == 5 && r.bad_line[3] == 6 &&
        r.bad_line[4] == 7 && r.bad_line[5] == 8);
  CHECKF(strstr(r.bad_msg[1], "'x'") && strstr(r.bad_msg[2], "expected 7"), "%s / %s", r.bad_msg[1], r.bad_msg[2]);
  kd_table_free(&t);
  /* header missing a column */
  put("nohdr.tsv", "id\tuser\tx\tclick\twatch\n1\t1\t0,1\t1\t2\n");
  lp.max_bad = 0;
  CHECK(kd_table_load(path("nohdr.tsv"), &s, lp, &t, &r, &e) == KD_ERR_INVALID);
  CHECKF(strstr(e.msg, "nohdr.tsv:1:") && strstr(e.msg, "'tags'"), "%s", e.msg);
  put("empty.tsv", "");
  CHECK(kd_table_load(path("empty.tsv"), &s, lp, &t, &r, &e) == KD_ERR_INVALID);
  CHECKF(strstr(e.msg, "empty.tsv:1:"), "%s", e.msg);
  CHECK(kd_table_load(path("absent.tsv"), &s, lp, &t, &r, &e) == KD_ERR_NOT_FOUND);
}

static void test_gzip_and_cache(void) {
  struct kd_schema s;
  struct kd_err e;
  REQUIRE(kd_schema_parse(SCHEMA, strlen(SCHEMA), "s", &s, &e) == KD_OK);
  gzFile gz = gzopen(path("good.tsv.gz"), "wb");
  REQUIRE(gz);
  gzputs(gz, GOOD);
  gzclose(gz);
  struct kd_table a, b;
  struct kd_load_report r;
  struct kd_load_params lp = {.max_bad = 0, .use_cache = 1};
  REQUIRE(kd_table_load(path("good.tsv.gz"), &s, lp, &a, &r, &e) == KD_OK);
  CHECK(a.n == 3 && !r.from_cache);
  CHECK(access(r.cache_path, F_OK) == 0);
  REQUIRE(kd_table_load(path("good.tsv.gz"), &s, lp, &b, &r, &e) == KD_OK);
  CHECK(r.from_cache && b.n == 3 && b.fingerprint == a.fingerprint);
  CHECK(memcmp(a.ids, b.ids, 3 * 8) == 0 && memcmp(a.cols[1].dense, b.cols[1].dense, 6 * 4) == 0);
  CHECK(memcmp(a.cols[2].off, b.cols[2].off, 4 * 8) == 0 && b.cols[2].ids[2] == 7);
  CHECK(memcmp(a.labels, b.labels, 6 * 4) == 0 || (isnan(a.labels[4]) && isnan(b.labels[4])));
  kd_table_free(&b);
  /* a corrupt cache is not used (the data is parsed again) */
  FILE *f = fopen(r.cache_path, "r+b");
  REQUIRE(f);
  fseek(f, 60, SEEK_SET);
  fputc(0x5a, f);
  fclose(f);
  REQUIRE(kd_table_load(path("good.tsv.gz"), &s, lp, &b, &r, &e) == KD_OK);
  CHECK(!r.from_cache && b.n == 3);
  kd_table_free(&b);
  /* a changed file changes the fingerprint: the cache is not used */
  gz = gzopen(path("good.tsv.gz"), "wb");
  gzputs(gz, GOOD);
  gzputs(gz, "d\t13\t5\t1,1\t1\t0\t0\n");
  gzclose(gz);
  REQUIRE(kd_table_load(path("good.tsv.gz"), &s, lp, &b, &r, &e) == KD_OK);
  CHECK(!r.from_cache && b.n == 4 && b.fingerprint != a.fingerprint);
  kd_table_free(&b);
  kd_table_free(&a);
}

static void test_auc(void) {
  /* hand-computed: pairs (pos, neg): (0.35 vs 0.1, 0.4) -> 1 of 2; (0.8 vs both) -> 2 of 2: 3/4 */
  float s1[4] = {0.1f, 0.4f, 0.35f, 0.8f}, y1[4] = {0, 0, 1, 1};
  CHECK(fabs(kd_auc(s1, y1, 4) - 0.75) < 1e-12);
  /* ties count one half: pos 0.5 vs neg 0.5 -> 0.5; pos 0.5 vs neg 0.2 -> 1; (0.5 + 1) / 2 */
  float s2[3] = {0.5f, 0.5f, 0.2f}, y2[3] = {1, 0, 0};
  CHECK(fabs(kd_auc(s2, y2, 3) - 0.75) < 1e-12);
  float s3[4] = {1, 1, 1, 1}, y3[4] = {1, 0, 1, 0};
  CHECK(fabs(kd_auc(s3, y3, 4) - 0.5) < 1e-12);
  float y4[4] = {1, 1, 1, 1};
  CHECK(isnan(kd_auc(s3, y4, 4)));
  /* missing labels are skipped; perfect ranking */
  float s5[5] = {0.9f, 0.1f, 0.5f, 0.7f, 0.2f}, y5[5] = {1, 0, NAN, 1, 0};
  CHECK(fabs(kd_auc(s5, y5, 5) - 1.0) < 1e-12);
  /* metrics: logits 0 -> p 0.5: log loss ln 2, calibration 0.5 / mean label */
  float z[4] = {0, 0, 0, 0}, y[4] = {1, 0, 0, 0};
  struct kd_task_metrics m;
  kd_metrics_task(KD_TASK_BINARY, z, 1, y, 1, 4, &m);
  CHECK(fabs(m.logloss - log(2.0)) < 1e-9 && fabs(m.calib - 2.0) < 1e-9 && m.n == 4);
  float zr[3] = {1, 2, 3}, yr[3] = {1, 1, 1};
  kd_metrics_task(KD_TASK_REGRESSION, zr, 1, yr, 1, 3, &m);
  CHECK(fabs(m.rmse - sqrt(5.0 / 3.0)) < 1e-9 && fabs(m.calib - 2.0) < 1e-9);
}

/* Random bytes (tabs, NUL, newlines, high bytes, huge numbers) never crash the parser, and every
 * non-blank line is either a row or a reported bad row. Truncated caches are rejected. */
static void test_garbage(void) {
  struct kd_schema s;
  struct kd_err e;
  REQUIRE(kd_schema_parse(SCHEMA, strlen(SCHEMA), "s", &s, &e) == KD_OK);
  uint64_t st = 12345;
  for (int round = 0; round < 20; round++) {
    FILE *f = fopen(path("junk.tsv"), "wb");
    REQUIRE(f);
    fputs("note\tid\tuser\tx\ttags\tclick\twatch\n", f);
    static const char alpha[] = "0123456789\t\t\t,|-.eE+ nanINF\x01\xff";
    for (int l = 0; l < 200; l++) {
      int len = (int)(st = st * 6364136223846793005ull + 1442695040888963407ull) % 60;
      for (int c = 0; c < len; c++) {
        st = st * 6364136223846793005ull + 1442695040888963407ull;
        int pick = (int)((st >> 33) % (sizeof alpha - 1 + 4));
        fputc(pick < (int)sizeof alpha - 1 ? alpha[pick] : (pick == sizeof alpha - 1 ? 0 : (int)(st >> 50) & 0xff), f);
      }
      fputc('\n', f);
    }
    if (round % 4 == 0) for (int c = 0; c < 100000; c++) fputc('9', f); /* one very long line */
    fclose(f);
    struct kd_table t;
    struct kd_load_report r;
    struct kd_load_params lp = {.max_bad = -1, .use_cache = 0};
    int rc = kd_table_load(path("junk.tsv"), &s, lp, &t, &r, &e);
    CHECK(rc == KD_OK || rc == KD_ERR_INVALID);
    if (rc == KD_OK) {
      CHECK(t.n == r.rows);
      for (uint64_t i = 0; i < t.n; i++) CHECK(t.labels[i * 2] == 0 || t.labels[i * 2] == 1 || isnan(t.labels[i * 2]));
      kd_table_free(&t);
    }
  }
  /* a valid cache cut at every length from 0 to its size - 1 is rejected, never trusted */
  struct kd_table t;
  struct kd_load_report r;
  struct kd_load_params lp = {.max_bad = 0, .use_cache = 1};
  put("c.tsv", GOOD);
  REQUIRE(kd_table_load(path("c.tsv"), &s, lp, &t, &r, &e) == KD_OK);
  uint64_t fp = t.fingerprint;
  kd_table_free(&t);
  FILE *f = fopen(r.cache_path, "rb");
  REQUIRE(f);
  unsigned char buf[8192];
  size_t n = fread(buf, 1, sizeof buf, f);
  fclose(f);
  REQUIRE(n > 0 && n < sizeof buf);
  int bad = 0;
  for (size_t cut = 0; cut < n; cut++) {
    f = fopen(path("cut.kdcache"), "wb");
    fwrite(buf, 1, cut, f);
    fclose(f);
    if (kd_table_cache_read(path("cut.kdcache"), &s.arch, fp, &t, &e) == KD_OK) {
      bad++;
      kd_table_free(&t);
    }
  }
  CHECKF(bad == 0, "%d truncated caches accepted", bad);
}

int main(void) {
  snprintf(dir, sizeof dir, "/tmp/kd_test_data.XXXXXX");
  REQUIRE(mkdtemp(dir));
  test_schema_errors();
  test_rows();
  test_gzip_and_cache();
  test_auc();
  test_garbage();
  char cmd[300];
  snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
  if (system(cmd)) fprintf(stderr, "could not remove %s\n", dir);
  KD_TEST_END();
}
