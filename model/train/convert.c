/* convert.c - converters from the public datasets to kdrank tables (TSV + schema), with a time
 * split. The data stays where it is; only the converted tables are written to the output dir.
 *   MovieLens 100K: like = rating >= 4 (binary), rating (regression); train before t = 889237269.
 *     context: user_id, age bucket, gender, occupation, zip prefix, user_stats (train-period count
 *     and smoothed like rate); candidate: item_id, genres (multi-valued), release year, item_stats
 *     (count, smoothed like rate and mean rating). Statistics of a row come only from events strictly
 *     earlier in time (as a server sees them), never from the row itself or later ones.
 *   KuaiRand-1K (random log): click, long_view (binary), play_time = play_time_ms / 1000 seconds
 *     (regression, log1p target); train before 2022-05-04. context: user_id, hour, weekday, tab;
 *     candidate: video_id, duration bucket, log duration (dense). */
#include <errno.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "train_internal.h"

#define KD_ML_SPLIT 889237269LL

static int64_t kd_str_id(const char *s) {
  struct kd_hash h;
  kd_hash_init(&h);
  kd_hash_update(&h, s, strlen(s));
  return (int64_t)(kd_hash_final(&h) >> 2);
}

static int kd_open_out(const char *dir, FILE **tr, FILE **te, struct kd_err *e) {
  char p1[4200], p2[4200];
  int rc = kd_mkdirs(dir, e);
  if (rc) return rc;
  snprintf(p1, sizeof p1, "%s/train.tsv", dir);
  snprintf(p2, sizeof p2, "%s/test.tsv", dir);
  *tr = fopen(p1, "w");
  *te = fopen(p2, "w");
  if (!*tr || !*te) {
    if (*tr) fclose(*tr);
    if (*te) fclose(*te);
    return kd_err_set(e, KD_ERR_IO, "%s: cannot create outputs: %s", dir, strerror(errno));
  }
  return KD_OK;
}

static int kd_close_out(FILE *tr, FILE *te, const char *dir, struct kd_err *e) {
  int bad = ferror(tr) || ferror(te);
  bad |= fclose(tr) != 0;
  bad |= fclose(te) != 0;
  return bad ? kd_err_set(e, KD_ERR_IO, "%s: write error", dir) : KD_OK;
}

struct kd_ml_user {
  int age, gender;
  int64_t occ, zip;
};
struct kd_ml_item {
  int year;
  char genres[64];
};
struct kd_ml_row {
  int u, i, r;
  long long ts;
  uint64_t line;
};
static int kd_ml_row_cmp(const void *a, const void *b) {
  const struct kd_ml_row *x = a, *y = b;
  if (x->ts != y->ts) return x->ts < y->ts ? -1 : 1;
  return x->line < y->line ? -1 : (x->line > y->line);
}

int kd_convert_movielens(const char *src, const char *dir, struct kd_err *e) {
  char path[4200], line[4096];
  struct kd_ml_user *users = calloc(4096, sizeof *users);
  struct kd_ml_item *items = calloc(4096, sizeof *items);
  FILE *f = NULL, *tr = NULL, *te = NULL;
  int rc = KD_OK;
  if (!users || !items) {
    rc = kd_err_set(e, KD_ERR_NOMEM, "out of memory");
    goto done;
  }
  /* u.user: id|age|gender|occupation|zip */
  snprintf(path, sizeof path, "%s/u.user", src);
  if (!(f = fopen(path, "r"))) {
    rc = kd_err_set(e, KD_ERR_NOT_FOUND, "%s: cannot open: %s", path, strerror(errno));
    goto done;
  }
  uint64_t ln = 0;
  while (fgets(line, sizeof line, f)) {
    ln++;
    char occ[64], zip[32], g;
    int id, age;
    if (sscanf(line, "%d|%d|%c|%63[^|]|%31[^|\r\n]", &id, &age, &g, occ, zip) != 5 || id < 1 || id >= 4096) {
      rc = kd_err_set(e, KD_ERR_INVALID, "%s:%llu: expected id|age|gender|occupation|zip", path,
                      (unsigned long long)ln);
      goto done;
    }
    static const int cut[] = {18, 25, 35, 45, 50, 56};
    int b = 0;
    while (b < 6 && age >= cut[b]) b++;
    users[id].age = b;
    users[id].gender = g == 'F';
    users[id].occ = kd_str_id(occ);
    zip[3] = zip[0] && zip[1] && zip[2] ? 0 : zip[3];
    users[id].zip = kd_str_id(zip);
  }
  fclose(f);
  /* u.item: id|title|release date|video date|url|19 flags (Latin-1; we read bytes only) */
  snprintf(path, sizeof path, "%s/u.item", src);
  if (!(f = fopen(path, "r"))) {
    rc = kd_err_set(e, KD_ERR_NOT_FOUND, "%s: cannot open: %s", path, strerror(errno));
    goto done;
  }
  ln = 0;
  while (fgets(line, sizeof line, f)) {
    ln++;
    char *fld[32];
    int nf = 0;
    char *p = line;
    for (;;) {
      fld[nf++] = p;
      char *bar = strchr(p, '|');
      if (!bar || nf == 32) break;
      *bar = 0;
      p = bar + 1;
    }
    int id = atoi(fld[0]);
    if (nf != 24 || id < 1 || id >= 4096) {
      rc = kd_err_set(e, KD_ERR_INVALID, "%s:%llu: expected 24 '|'-separated fields, found %d", path,
                      (unsigned long long)ln, nf);
      goto done;
    }
    size_t dl = strlen(fld[2]);
    items[id].year = dl >= 4 ? atoi(fld[2] + dl - 4) : 0;
    char *gs = items[id].genres;
    gs[0] = 0;
    for (int g = 0; g < 19; g++)
      if (fld[5 + g][0] == '1') {
        size_t l = strlen(gs);
        snprintf(gs + l, sizeof items[id].genres - l, "%s%d", l ? "," : "", g);
      }
    if (!gs[0]) snprintf(gs, sizeof items[id].genres, "0");
  }
  fclose(f);
  f = NULL;
  /* u.data: user item rating time */
  snprintf(path, sizeof path, "%s/u.data", src);
  if (!(f = fopen(path, "r"))) {
    rc = kd_err_set(e, KD_ERR_NOT_FOUND, "%s: cannot open: %s", path, strerror(errno));
    goto done;
  }
  /* read all ratings, then walk them in time order: a row's statistics (counts, smoothed like rate,
   * mean rating of its user and item) come only from events strictly earlier in time, as a serving
   * system would see them; its own label and anything at or after its timestamp never enter.
   * Model weights are trained on train-period rows only. */
  struct kd_ml_row *all = NULL;
  size_t n_all = 0, cap_all = 0;
  double *ic = calloc(4096, sizeof *ic), *il = calloc(4096, sizeof *il), *ir = calloc(4096, sizeof *ir);
  double *uc = calloc(4096, sizeof *uc), *ul = calloc(4096, sizeof *ul), gl = 0, gr = 0, gn = 0;
  if (!ic || !il || !ir || !uc || !ul) {
    rc = kd_err_set(e, KD_ERR_NOMEM, "out of memory");
    goto done_ml;
  }
  ln = 0;
  while (fgets(line, sizeof line, f)) {
    ln++;
    struct kd_ml_row row;
    if (sscanf(line, "%d\t%d\t%d\t%lld", &row.u, &row.i, &row.r, &row.ts) != 4 || row.u < 1 || row.u >= 4096 ||
        row.i < 1 || row.i >= 4096 || row.r < 1 || row.r > 5) {
      rc = kd_err_set(e, KD_ERR_INVALID, "%s:%llu: expected user item rating(1-5) time", path,
                      (unsigned long long)ln);
      goto done_ml;
    }
    row.line = ln;
    if (n_all == cap_all) {
      cap_all = cap_all ? cap_all * 2 : 4096;
      struct kd_ml_row *na = realloc(all, cap_all * sizeof *na);
      if (!na) {
        rc = kd_err_set(e, KD_ERR_NOMEM, "out of memory");
        goto done_ml;
      }
      all = na;
    }
    all[n_all++] = row;
  }
  qsort(all, n_all, sizeof *all, kd_ml_row_cmp);
  if ((rc = kd_open_out(dir, &tr, &te, e))) goto done_ml;
  const char *hdr = "id\tuser_id\tage\tgender\toccupation\tzip3\tuser_stats\titem_id\tgenres\tyear"
                    "\titem_stats\tlike\trating\n";
  fputs(hdr, tr);
  fputs(hdr, te);
  const double m = 5.0;
  for (size_t g0 = 0, g1; g0 < n_all; g0 = g1) {
    /* one group of equal timestamps: write all its rows, then add them to the statistics */
    for (g1 = g0; g1 < n_all && all[g1].ts == all[g0].ts; g1++) {
      const struct kd_ml_row *w = &all[g1];
      int u = w->u, i = w->i, r = w->r;
      double pl = gn ? gl / gn : 0.55, pr = gn ? gr / gn : 3.5;
      fprintf(w->ts < KD_ML_SPLIT ? tr : te,
              "%llu\t%d\t%d\t%d\t%lld\t%lld\t%.4f,%.4f\t%d\t%s\t%d\t%.4f,%.4f,%.4f\t%d\t%d\n",
              (unsigned long long)w->line, u, users[u].age, users[u].gender, (long long)users[u].occ,
              (long long)users[u].zip, log1p(uc[u]) / 6.0, (ul[u] + m * pl) / (uc[u] + m) - pl, i,
              items[i].genres, items[i].year, log1p(ic[i]) / 6.0, (il[i] + m * pl) / (ic[i] + m) - pl,
              (ir[i] + m * pr) / (ic[i] + m) - pr, r >= 4, r);
    }
    for (size_t q = g0; q < g1; q++) {
      int u = all[q].u, i = all[q].i, r = all[q].r;
      ic[i] += 1; il[i] += r >= 4; ir[i] += r;
      uc[u] += 1; ul[u] += r >= 4;
      gl += r >= 4; gr += r; gn += 1;
    }
  }
done_ml:
  free(all);
  free(ic); free(il); free(ir); free(uc); free(ul);
  if (rc) goto done;
  rc = kd_close_out(tr, te, dir, e);
  tr = te = NULL;
  if (rc) goto done;
  struct kd_schema s;
  memset(&s, 0, sizeof s);
  kd_sc(&s, "id", KD_COL_ID, -1);
  kd_sf(&s, "user_id", KD_FEAT_SPARSE, KD_GROUP_CONTEXT, 16, 4096);
  kd_sf(&s, "age", KD_FEAT_SPARSE, KD_GROUP_CONTEXT, 4, 16);
  kd_sf(&s, "gender", KD_FEAT_SPARSE, KD_GROUP_CONTEXT, 2, 4);
  kd_sf(&s, "occupation", KD_FEAT_SPARSE, KD_GROUP_CONTEXT, 4, 64);
  kd_sf(&s, "zip3", KD_FEAT_SPARSE, KD_GROUP_CONTEXT, 4, 2048);
  kd_sf(&s, "user_stats", KD_FEAT_DENSE, KD_GROUP_CONTEXT, 2, 0);
  kd_sf(&s, "item_id", KD_FEAT_SPARSE, KD_GROUP_CANDIDATE, 16, 8192);
  kd_sf(&s, "genres", KD_FEAT_SPARSE, KD_GROUP_CANDIDATE, 8, 64);
  kd_sf(&s, "year", KD_FEAT_SPARSE, KD_GROUP_CANDIDATE, 4, 256);
  kd_sf(&s, "item_stats", KD_FEAT_DENSE, KD_GROUP_CANDIDATE, 3, 0);
  kd_st(&s, "like", KD_TASK_BINARY, KD_XFORM_IDENTITY);
  kd_st(&s, "rating", KD_TASK_REGRESSION, KD_XFORM_IDENTITY);
  snprintf(path, sizeof path, "%s/schema.json", dir);
  rc = kd_schema_write(path, &s, e);
done:
  if (f) fclose(f);
  if (tr) fclose(tr);
  if (te) fclose(te);
  free(users);
  free(items);
  return rc;
}

/* Day of week (0 = Monday) of yyyymmdd. */
static int kd_weekday(int ymd) {
  struct tm tm;
  memset(&tm, 0, sizeof tm);
  tm.tm_year = ymd / 10000 - 1900;
  tm.tm_mon = ymd / 100 % 100 - 1;
  tm.tm_mday = ymd % 100;
  tm.tm_hour = 12;
  time_t t = timegm(&tm);
  struct tm out;
  gmtime_r(&t, &out);
  return (out.tm_wday + 6) % 7;
}

int kd_convert_kuairand(const char *src, const char *dir, struct kd_err *e) {
  char path[4200], line[4096];
  snprintf(path, sizeof path, "%s/log_random_4_22_to_5_08_1k.csv", src);
  FILE *f = fopen(path, "r"), *tr = NULL, *te = NULL;
  if (!f) return kd_err_set(e, KD_ERR_NOT_FOUND, "%s: cannot open: %s", path, strerror(errno));
  int rc = KD_OK;
  static const char *want[] = {"user_id", "video_id", "date", "hourmin", "is_click", "long_view",
                               "play_time_ms", "duration_ms", "tab"};
  int pos[9];
  if (!fgets(line, sizeof line, f)) {
    rc = kd_err_set(e, KD_ERR_INVALID, "%s:1: expected a header line", path);
    goto done;
  }
  {
    char *names[64];
    int nh = 0;
    char *p = line;
    line[strcspn(line, "\r\n")] = 0;
    for (;;) {
      names[nh++] = p;
      char *c = strchr(p, ',');
      if (!c || nh == 64) break;
      *c = 0;
      p = c + 1;
    }
    for (int w = 0; w < 9; w++) {
      pos[w] = -1;
      for (int h = 0; h < nh; h++)
        if (!strcmp(names[h], want[w])) pos[w] = h;
      if (pos[w] < 0) {
        rc = kd_err_set(e, KD_ERR_INVALID, "%s:1: header: column '%s' not found", path, want[w]);
        goto done;
      }
    }
  }
  if ((rc = kd_open_out(dir, &tr, &te, e))) goto done;
  const char *hdr = "id\tuser_id\thour\tweekday\ttab\tvideo_id\tduration_bucket\tlog_duration\tclick\t"
                    "long_view\tplay_time\n";
  fputs(hdr, tr);
  fputs(hdr, te);
  uint64_t ln = 1;
  while (fgets(line, sizeof line, f)) {
    ln++;
    long long v[64];
    int nf = 0;
    char *p = line;
    for (;;) {
      char *end;
      errno = 0;
      v[nf++] = strtoll(p, &end, 10);
      if (end == p || errno) {
        nf = -1;
        break;
      }
      if (*end != ',' || nf == 64) break;
      p = end + 1;
    }
    int ok = nf > 0;
    for (int w = 0; ok && w < 9; w++) ok = pos[w] < nf;
    if (!ok) {
      rc = kd_err_set(e, KD_ERR_INVALID, "%s:%llu: expected comma-separated integers", path,
                      (unsigned long long)ln);
      goto done;
    }
    long long date = v[pos[2]], dur = v[pos[7]], play = v[pos[6]];
    FILE *o = date < 20220504 ? tr : te;
    double dsec = dur > 0 ? dur / 1000.0 : 0;
    int bucket = dsec > 1 ? (int)floor(log2(dsec)) : 0;
    fprintf(o, "%llu\t%lld\t%lld\t%d\t%lld\t%lld\t%d\t%.4f\t%lld\t%lld\t%.3f\n", (unsigned long long)ln,
            v[pos[0]], v[pos[3]] / 100, kd_weekday((int)date), v[pos[8]], v[pos[1]], bucket,
            log1p(dsec) - 4.0, v[pos[4]], v[pos[5]], play > 0 ? play / 1000.0 : 0.0);
  }
  rc = kd_close_out(tr, te, dir, e);
  tr = te = NULL;
  if (rc) goto done;
  struct kd_schema s;
  memset(&s, 0, sizeof s);
  kd_sc(&s, "id", KD_COL_ID, -1);
  kd_sf(&s, "user_id", KD_FEAT_SPARSE, KD_GROUP_CONTEXT, 16, 4096);
  kd_sf(&s, "hour", KD_FEAT_SPARSE, KD_GROUP_CONTEXT, 4, 64);
  kd_sf(&s, "weekday", KD_FEAT_SPARSE, KD_GROUP_CONTEXT, 4, 16);
  kd_sf(&s, "tab", KD_FEAT_SPARSE, KD_GROUP_CONTEXT, 4, 32);
  kd_sf(&s, "video_id", KD_FEAT_SPARSE, KD_GROUP_CANDIDATE, 16, 32768);
  kd_sf(&s, "duration_bucket", KD_FEAT_SPARSE, KD_GROUP_CANDIDATE, 4, 32);
  kd_sf(&s, "log_duration", KD_FEAT_DENSE, KD_GROUP_CANDIDATE, 1, 0);
  kd_st(&s, "click", KD_TASK_BINARY, KD_XFORM_IDENTITY);
  kd_st(&s, "long_view", KD_TASK_BINARY, KD_XFORM_IDENTITY);
  kd_st(&s, "play_time", KD_TASK_REGRESSION, KD_XFORM_LOG1P);
  snprintf(path, sizeof path, "%s/schema.json", dir);
  rc = kd_schema_write(path, &s, e);
done:
  fclose(f);
  if (tr) fclose(tr);
  if (te) fclose(te);
  return rc;
}
