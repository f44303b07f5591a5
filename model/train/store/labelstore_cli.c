/* labelstore_cli.c - kd-labelstore: look into a teacher label store.
 *   kd-labelstore list STORE               one line per version: name, state, rows, tasks, created
 *   kd-labelstore show STORE@VERSION       the version's manifest
 *   kd-labelstore verify STORE@VERSION     reads the whole version, checks count and digest
 * STORE is a path, sqlite:PATH or postgresql://... The store is opened read-only. Exit 0 on
 * success, 1 on an error (printed), 2 on bad usage. */
#include "kdrank_labelstore.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static int usage(void) {
  fprintf(stderr, "usage: kd-labelstore list STORE\n"
                  "       kd-labelstore show STORE@VERSION\n"
                  "       kd-labelstore verify STORE@VERSION\n"
                  "STORE: PATH | sqlite:PATH | postgresql://...\n");
  return 2;
}

static int fail(const struct kd_err *e) {
  fprintf(stderr, "kd-labelstore: %s\n", e->msg);
  return 1;
}

static void fmt_time(int64_t t, char *out, size_t cap) {
  if (t <= 0) {
    snprintf(out, cap, "-");
    return;
  }
  time_t tt = (time_t)t;
  struct tm tm;
  gmtime_r(&tt, &tm);
  strftime(out, cap, "%Y-%m-%dT%H:%M:%SZ", &tm);
}

static void tasks_str(const struct kd_label_manifest *m, char *out, size_t cap) {
  size_t off = 0;
  out[0] = 0;
  for (uint32_t k = 0; k < m->n_tasks && off < cap; k++)
    off += (size_t)snprintf(out + off, cap - off, "%s%s", k ? "," : "", m->tasks[k]);
}

static kd_labelstore *open_ro(const char *uri, struct kd_err *e) {
  struct kd_labelstore_params p = kd_labelstore_params_default();
  p.read_only = 1;
  return kd_labelstore_open(uri, p, e);
}

int main(int argc, char **argv) {
  if (argc != 3) return usage();
  const char *cmd = argv[1];
  struct kd_err e = {0};
  if (strcmp(cmd, "list") == 0) {
    kd_labelstore *s = open_ro(argv[2], &e);
    if (!s) return fail(&e);
    struct kd_label_manifest *all;
    size_t n;
    int rc = kd_labelstore_list(s, &all, &n, &e);
    kd_labelstore_close(s);
    if (rc) return fail(&e);
    printf("%-32s %-8s %12s  %-20s  %s\n", "version", "state", "rows", "created", "tasks");
    for (size_t i = 0; i < n; i++) {
      char t[32], tasks[KD_MAX_TASKS * KD_NAME_MAX];
      fmt_time(all[i].created_unix, t, sizeof t);
      tasks_str(&all[i], tasks, sizeof tasks);
      printf("%-32s %-8s %12llu  %-20s  %s\n", all[i].version,
             all[i].state == KD_LABEL_COMPLETE ? "COMPLETE" : "WRITING", (unsigned long long)all[i].row_count, t,
             tasks);
    }
    free(all);
    return 0;
  }
  if (strcmp(cmd, "show") != 0 && strcmp(cmd, "verify") != 0) return usage();
  char uri[2048], version[KD_LABEL_VERSION_MAX];
  if (kd_labelstore_pin_parse(argv[2], uri, sizeof uri, version, &e)) return fail(&e);
  kd_labelstore *s = open_ro(uri, &e);
  if (!s) return fail(&e);
  int rc = 0;
  if (strcmp(cmd, "show") == 0) {
    struct kd_label_manifest m;
    if (kd_labelstore_manifest_get(s, version, &m, &e)) {
      rc = fail(&e);
    } else {
      char c[32], d[32], tasks[KD_MAX_TASKS * KD_NAME_MAX];
      fmt_time(m.created_unix, c, sizeof c);
      fmt_time(m.completed_unix, d, sizeof d);
      tasks_str(&m, tasks, sizeof tasks);
      printf("version          %s\nstate            %s\nteacher          %s\nteacher_crc      %08x\n"
             "data_fingerprint %s\ntasks            %s\nrows             %llu%s\ncreated          %s\n"
             "completed        %s\ndigest           %016llx\n",
             m.version, m.state == KD_LABEL_COMPLETE ? "COMPLETE" : "WRITING", m.teacher, m.teacher_crc,
             m.data_fingerprint, tasks, (unsigned long long)m.row_count,
             m.state == KD_LABEL_COMPLETE ? "" : " (expected; 0: not declared)", c, d,
             (unsigned long long)m.digest);
    }
  } else {
    kd_labelstore_reader *r = kd_labelstore_reader_open(s, version, &e);
    if (!r) {
      rc = fail(&e);
    } else {
      float lg[KD_MAX_TASKS];
      int64_t id, first = 0, last = 0;
      unsigned long long n = 0;
      int st;
      while ((st = kd_labelstore_reader_next(r, &id, lg, &e)) == 1) {
        if (n == 0) first = id;
        last = id;
        n++;
      }
      if (st < 0) {
        rc = fail(&e);
      } else {
        printf("%s: OK: %llu rows, example ids %lld..%lld, digest %016llx matches the manifest\n", version, n,
               (long long)first, (long long)last, (unsigned long long)kd_labelstore_reader_manifest(r)->digest);
      }
      kd_labelstore_reader_free(r);
    }
  }
  kd_labelstore_close(s);
  return rc;
}
