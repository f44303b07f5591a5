/* util.c - the trainer's small helpers: atomic file writes, directories, PRNG, clock. */
#include <errno.h>
#include <fcntl.h>
#include <libgen.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "train_internal.h"

int kd_fsync_dir(const char *dir) {
  int fd = open(dir, O_RDONLY | O_DIRECTORY);
  if (fd < 0) return -1;
  int rc = fsync(fd);
  close(fd);
  return rc;
}

int kd_write_file_atomic(const char *path, const void *buf, size_t len, struct kd_err *e) {
  char tmp[4200], dcopy[4200];
  snprintf(tmp, sizeof tmp, "%s.tmp.%d", path, (int)getpid());
  int fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC, 0644);
  if (fd < 0) return kd_err_set(e, KD_ERR_IO, "%s: cannot create: %s", tmp, strerror(errno));
  const char *p = buf;
  size_t left = len;
  while (left > 0) {
    ssize_t w = write(fd, p, left);
    if (w < 0) {
      if (errno == EINTR) continue;
      int er = errno;
      close(fd);
      unlink(tmp);
      return kd_err_set(e, KD_ERR_IO, "%s: write failed: %s", tmp, strerror(er));
    }
    p += w;
    left -= (size_t)w;
  }
  if (fsync(fd) || close(fd) || rename(tmp, path)) {
    int er = errno;
    unlink(tmp);
    return kd_err_set(e, KD_ERR_IO, "%s: cannot write: %s", path, strerror(er));
  }
  snprintf(dcopy, sizeof dcopy, "%s", path);
  kd_fsync_dir(dirname(dcopy));
  return KD_OK;
}

int kd_mkdirs(const char *dir, struct kd_err *e) {
  char buf[4096];
  if (snprintf(buf, sizeof buf, "%s", dir) >= (int)sizeof buf)
    return kd_err_set(e, KD_ERR_RANGE, "%s: path too long", dir);
  for (char *p = buf + 1; *p; p++) {
    if (*p != '/') continue;
    *p = 0;
    if (mkdir(buf, 0755) && errno != EEXIST)
      return kd_err_set(e, KD_ERR_IO, "%s: cannot create directory: %s", buf, strerror(errno));
    *p = '/';
  }
  if (mkdir(buf, 0755) && errno != EEXIST)
    return kd_err_set(e, KD_ERR_IO, "%s: cannot create directory: %s", buf, strerror(errno));
  return KD_OK;
}

double kd_rng_normal(struct kd_rng *r) {
  double u1 = kd_rng_unif(r), u2 = kd_rng_unif(r);
  if (u1 < 1e-300) u1 = 1e-300;
  return sqrt(-2.0 * log(u1)) * cos(6.283185307179586 * u2);
}

void kd_shuffle_u64(uint64_t *v, uint64_t n, struct kd_rng *r) {
  for (uint64_t i = n; i > 1; i--) {
    uint64_t j = kd_rng_u64(r) % i;
    uint64_t t = v[i - 1];
    v[i - 1] = v[j];
    v[j] = t;
  }
}

double kd_now(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}
