/* test_ckpt_atomic.c - the writer never leaves a partial file under the final name:
 *  - a write that fails half-way (the file size limit hit: a real EFBIG from write(2)) keeps the
 *    previous checkpoint intact and leaves no temp file behind;
 *  - a target that is a directory, or in a missing directory, fails cleanly with a message;
 *  - a reader polling the final name while another process rewrites it 30 times only ever
 *    opens complete, valid checkpoints (one of the two versions);
 *  - a refused model (NaN) leaves the previous file untouched. */
#include <dirent.h>
#include <errno.h>
#include <math.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "ckpt_bytes.h"
#include "kd_test.h"
#include "kdrank_loader.h"

static char dir[64];

/* Entries in dir other than "." and ".." whose name contains sub (NULL: all). */
static int count_entries(const char *d, const char *sub) {
  DIR *dp = opendir(d);
  if (!dp) return -1;
  int n = 0;
  struct dirent *de;
  while ((de = readdir(dp))) {
    if (!strcmp(de->d_name, ".") || !strcmp(de->d_name, "..")) continue;
    if (!sub || strstr(de->d_name, sub)) n++;
  }
  closedir(dp);
  return n;
}

static struct kd_model *make(const char *preset, uint64_t seed) {
  struct kd_arch a;
  struct kd_err e = {0};
  REQUIRE(kd_arch_preset(preset, &a, &e) == KD_OK);
  struct kd_model *m = kd_model_alloc(&a, &e);
  REQUIRE(m);
  kd_model_init_random(m, seed);
  return m;
}

static double now(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + ts.tv_nsec * 1e-9;
}

int main(void) {
  snprintf(dir, sizeof dir, "kdt-at-XXXXXX");
  REQUIRE(mkdtemp(dir));
  char path[128];
  snprintf(path, sizeof path, "%s/model.kdrk", dir);
  struct kd_err e = {0};
  struct kd_model *m1 = make("tiny", 1), *m2 = make("tiny", 2);
  REQUIRE(kd_ckpt_write(path, m1, NULL, 0, &e) == KD_OK);
  size_t l1 = 0;
  unsigned char *v1 = kdt_read(path, &l1);
  REQUIRE(v1 && l1 > 100000);
  CHECK(count_entries(dir, NULL) == 1);
  struct stat st;
  REQUIRE(stat(path, &st) == 0);
  CHECK((st.st_mode & 0777) == 0644);

  /* 1. A write that fails half-way: RLIMIT_FSIZE below the file size, in a child process. */
  pid_t pid = fork();
  REQUIRE(pid >= 0);
  if (pid == 0) {
    signal(SIGXFSZ, SIG_IGN); /* write(2) then fails with EFBIG instead of killing us */
    struct rlimit rl = {.rlim_cur = 64 * 1024, .rlim_max = 64 * 1024};
    if (setrlimit(RLIMIT_FSIZE, &rl) != 0) _exit(3);
    struct kd_err ce = {0};
    int rc = kd_ckpt_write(path, m2, NULL, 0, &ce);
    fprintf(stderr, "child write over the size limit: %s (%s)\n", kd_status_name(rc), ce.msg);
    _exit(rc == KD_ERR_IO && strstr(ce.msg, "File too large") && strstr(ce.msg, path) ? 0 : 1);
  }
  int status = 0;
  REQUIRE(waitpid(pid, &status, 0) == pid);
  CHECKF(WIFEXITED(status) && WEXITSTATUS(status) == 0, "child status %d", status);
  size_t l = 0;
  unsigned char *now1 = kdt_read(path, &l);
  CHECK(now1 && l == l1 && !memcmp(now1, v1, l1)); /* the previous checkpoint, intact */
  free(now1);
  CHECK(count_entries(dir, ".tmp.") == 0);          /* no temp file left behind */
  CHECK(count_entries(dir, NULL) == 1);

  /* 2. A refused model leaves the previous file untouched. */
  kd_model_shared_b(m2, 0)[0] = NAN;
  CHECK(kd_ckpt_write(path, m2, NULL, 0, &e) == KD_ERR_INVALID);
  kd_model_shared_b(m2, 0)[0] = 0.25f;
  now1 = kdt_read(path, &l);
  CHECK(now1 && l == l1 && !memcmp(now1, v1, l1));
  free(now1);
  CHECK(count_entries(dir, NULL) == 1);

  /* 3. The target is a directory: rename fails, the directory and its content survive. */
  char sub[128], inside[160];
  snprintf(sub, sizeof sub, "%s/adir", dir);
  REQUIRE(mkdir(sub, 0755) == 0);
  snprintf(inside, sizeof inside, "%s/keep", sub);
  REQUIRE(kdt_write(inside, "x", 1) == 0);
  int rc = kd_ckpt_write(sub, m1, NULL, 0, &e);
  CHECKF(rc == KD_ERR_IO && strstr(e.msg, "rename from"), "%s", e.msg);
  CHECK(stat(inside, &st) == 0);
  CHECK(count_entries(dir, ".tmp.") == 0);
  /* A path ending in '/' names a directory. */
  char slash[160];
  snprintf(slash, sizeof slash, "%s/", dir);
  CHECK(kd_ckpt_write(slash, m1, NULL, 0, &e) == KD_ERR_INVALID);
  /* A missing directory. */
  char nodir[160];
  snprintf(nodir, sizeof nodir, "%s/missing/model.kdrk", dir);
  rc = kd_ckpt_write(nodir, m1, NULL, 0, &e);
  CHECKF(rc == KD_ERR_IO && strstr(e.msg, "creating temp file") && strstr(e.msg, "No such file"), "%s", e.msg);
  /* A read-only directory (root ignores permissions: skipped then). */
  if (geteuid() != 0) {
    char ro[128], rop[160];
    snprintf(ro, sizeof ro, "%s/ro", dir);
    REQUIRE(mkdir(ro, 0555) == 0);
    snprintf(rop, sizeof rop, "%s/model.kdrk", ro);
    rc = kd_ckpt_write(rop, m1, NULL, 0, &e);
    CHECKF(rc == KD_ERR_IO && strstr(e.msg, "Permission denied"), "%s", e.msg);
    rmdir(ro);
  } else {
    printf("read-only directory case skipped: running as root\n");
  }
  /* A relative path without a directory part writes in the working directory. */
  char cwd_name[64];
  snprintf(cwd_name, sizeof cwd_name, "kdt-at-rel-%d.kdrk", (int)getpid());
  CHECKF(kd_ckpt_write(cwd_name, m1, NULL, 0, &e) == KD_OK, "%s", e.msg);
  kd_ckpt *c = kd_ckpt_open(cwd_name, &e);
  CHECK(c != NULL);
  kd_ckpt_close(c);
  unlink(cwd_name);

  /* 4. A reader polling the final name during 30 rewrites only sees whole checkpoints. */
  c = kd_ckpt_open(path, &e);
  REQUIRE(c);
  uint32_t crc1 = kd_ckpt_crc(c);
  kd_ckpt_close(c);
  char p2[160];
  snprintf(p2, sizeof p2, "%s/other.kdrk", dir);
  REQUIRE(kd_ckpt_write(p2, m2, NULL, 0, &e) == KD_OK);
  c = kd_ckpt_open(p2, &e);
  REQUIRE(c);
  uint32_t crc2 = kd_ckpt_crc(c);
  kd_ckpt_close(c);
  unlink(p2);
  pid = fork();
  REQUIRE(pid >= 0);
  if (pid == 0) {
    for (int i = 0; i < 30; i++) {
      struct kd_err ce = {0};
      if (kd_ckpt_write(path, i % 2 ? m1 : m2, NULL, 0, &ce) != KD_OK) _exit(1);
    }
    _exit(0);
  }
  int opened = 0, bad = 0, seen1 = 0, seen2 = 0, done = 0;
  double t0 = now();
  while (!done && opened < 100000 && now() - t0 < 60) {
    if (waitpid(pid, &status, WNOHANG) == pid) done = 1;
    c = kd_ckpt_open(path, &e);
    if (!c) {
      bad++;
      fprintf(stderr, "reader: %s\n", e.msg);
      continue;
    }
    uint32_t crc = kd_ckpt_crc(c);
    seen1 |= crc == crc1;
    seen2 |= crc == crc2;
    bad += crc != crc1 && crc != crc2;
    kd_ckpt_close(c);
    opened++;
  }
  if (!done) REQUIRE(waitpid(pid, &status, 0) == pid);
  CHECK(WIFEXITED(status) && WEXITSTATUS(status) == 0);
  printf("reader during 30 rewrites: %d opens, %d bad (seen v1 %d, v2 %d)\n", opened, bad, seen1, seen2);
  CHECK(bad == 0);
  CHECK(opened > 0);
  CHECK(count_entries(dir, ".tmp.") == 0);

  unlink(path);
  rmdir(sub); /* not empty: remove its file first */
  unlink(inside);
  rmdir(sub);
  rmdir(dir);
  free(v1);
  kd_model_free(m1);
  kd_model_free(m2);
  KD_TEST_END();
}
