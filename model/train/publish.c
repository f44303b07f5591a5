/* publish.c - places a checkpoint as the next version of a model in a repository:
 * REPO/MODEL/<version>/model.kdr. The copy is made in a temp dir inside REPO/MODEL, fsynced, and
 * the directory renamed to the version number (atomic on POSIX), then the parent is fsynced: a
 * reader sees either no version N or a complete one. */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "train_internal.h"
#include "kdrank_loader.h"

static int kd_copy_file(const char *from, const char *to, struct kd_err *e) {
  int in = open(from, O_RDONLY), out = -1, rc = KD_OK;
  if (in < 0) return kd_err_set(e, KD_ERR_NOT_FOUND, "%s: cannot open: %s", from, strerror(errno));
  out = open(to, O_WRONLY | O_CREAT | O_EXCL, 0644);
  if (out < 0) {
    rc = kd_err_set(e, KD_ERR_IO, "%s: cannot create: %s", to, strerror(errno));
    goto done;
  }
  char buf[1 << 16];
  for (;;) {
    ssize_t n = read(in, buf, sizeof buf);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) {
      rc = kd_err_set(e, KD_ERR_IO, "%s: read error: %s", from, strerror(errno));
      goto done;
    }
    if (n == 0) break;
    for (ssize_t off = 0; off < n;) {
      ssize_t w = write(out, buf + off, (size_t)(n - off));
      if (w < 0 && errno == EINTR) continue;
      if (w < 0) {
        rc = kd_err_set(e, KD_ERR_IO, "%s: write error: %s", to, strerror(errno));
        goto done;
      }
      off += w;
    }
  }
  if (fsync(out)) rc = kd_err_set(e, KD_ERR_IO, "%s: fsync: %s", to, strerror(errno));
done:
  close(in);
  if (out >= 0 && close(out) && !rc) rc = kd_err_set(e, KD_ERR_IO, "%s: close: %s", to, strerror(errno));
  return rc;
}

/* Largest all-digit entry name in dir (0 when none). */
static uint64_t kd_max_version(const char *dir) {
  DIR *d = opendir(dir);
  if (!d) return 0;
  uint64_t mx = 0;
  struct dirent *de;
  while ((de = readdir(d)) != NULL) {
    const char *s = de->d_name;
    if (!*s || strspn(s, "0123456789") != strlen(s) || strlen(s) > 18) continue;
    uint64_t v = strtoull(s, NULL, 10);
    if (v > mx) mx = v;
  }
  closedir(d);
  return mx;
}

int kd_publish(const char *file, const char *repo, const char *model, uint64_t *version_out, struct kd_err *e) {
  if (!model || !*model || strchr(model, '/') || !strcmp(model, ".") || !strcmp(model, ".."))
    return kd_err_set(e, KD_ERR_INVALID, "--model '%s': expected a plain name", model ? model : "");
  kd_ckpt *ck = kd_ckpt_open(file, e);
  if (!ck) return e ? e->code : KD_ERR_CORRUPT;
  kd_ckpt_close(ck);
  char mdir[4200], tmp[4300], final[4300], dst[4400];
  snprintf(mdir, sizeof mdir, "%s/%s", repo, model);
  int rc = kd_mkdirs(mdir, e);
  if (rc) return rc;
  snprintf(tmp, sizeof tmp, "%s/.publish-%d-%ld", mdir, (int)getpid(), (long)time(NULL));
  if (mkdir(tmp, 0755)) return kd_err_set(e, KD_ERR_IO, "%s: cannot create: %s", tmp, strerror(errno));
  snprintf(dst, sizeof dst, "%s/model.kdr", tmp);
  if ((rc = kd_copy_file(file, dst, e))) goto fail;
  kd_fsync_dir(tmp);
  for (int attempt = 0; attempt < 100; attempt++) {
    uint64_t v = kd_max_version(mdir) + 1;
    snprintf(final, sizeof final, "%s/%llu", mdir, (unsigned long long)v);
    /* rename(2) of a directory onto an existing non-empty one fails (EEXIST/ENOTEMPTY): versions
     * are only ever created by this rename, so an existing N is a complete one */
    if (rename(tmp, final) == 0) {
      kd_fsync_dir(mdir);
      if (version_out) *version_out = v;
      return KD_OK;
    }
    if (errno != EEXIST && errno != ENOTEMPTY) {
      rc = kd_err_set(e, KD_ERR_IO, "%s -> %s: rename failed: %s", tmp, final, strerror(errno));
      goto fail;
    }
    /* another publisher took version v in the meantime: look again */
  }
  rc = kd_err_set(e, KD_ERR_IO, "%s: could not claim a version after 100 attempts", mdir);
fail:
  unlink(dst);
  rmdir(tmp);
  return rc;
}
