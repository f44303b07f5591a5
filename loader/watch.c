/* watch.c - the registry's background thread: watches the repository with inotify (new version
 * directories renamed or created into a model directory, files closed after writing), rescans it
 * periodically as a fallback, loads new versions (verify + plan + warm-up, never on a serving
 * thread) and publishes them, and frees versions whose last reader has gone (plan, metadata,
 * scratches freed, then the allocator is asked to return memory). One thread does all of it, so
 * loads are serialised and a free never waits behind a serving call. */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <malloc.h>
#include <poll.h>
#include <pthread.h>
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/inotify.h>
#include <sys/resource.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#include "registry_internal.h"

void reg_defer_free(kd_registry *r, struct kd_version *v) {
  struct kd_version *head = atomic_load_explicit(&r->dead, memory_order_relaxed);
  do {
    v->next_dead = head;
  } while (!atomic_compare_exchange_weak_explicit(&r->dead, &head, v, memory_order_release,
                                                  memory_order_relaxed));
  char c = 'f';
  ssize_t w = write(r->wake_fd[1], &c, 1); /* non-blocking; a full pipe already means "wake" */
  (void)w;
}

void reg_reap(kd_registry *r) {
  struct kd_version *v = atomic_exchange_explicit(&r->dead, NULL, memory_order_acquire);
  if (!v) return;
  while (v) {
    struct kd_version *next = v->next_dead;
    reg_version_destroy(v);
    v = next;
  }
  /* Return the freed memory (plan, scratches: the bulk of a version) to the system. */
  if (r->wp.trim) r->wp.trim();
  else malloc_trim(0);
}

/* Adds inotify watches on the repository, every model directory and every version directory
 * (inotify_add_watch on a watched path just returns its descriptor). */
static void watch_tree(kd_registry *r) {
  if (r->ino_fd < 0) return;
  const uint32_t dir_mask = IN_CREATE | IN_MOVED_TO | IN_CLOSE_WRITE | IN_DELETE | IN_MOVED_FROM;
  inotify_add_watch(r->ino_fd, r->repo, IN_CREATE | IN_MOVED_TO | IN_ONLYDIR);
  for (uint32_t i = 0; i < r->n_models; i++) {
    char dir[PATH_MAX];
    snprintf(dir, sizeof dir, "%s/%s", r->repo, r->slots[i].name);
    inotify_add_watch(r->ino_fd, dir, dir_mask | IN_ONLYDIR);
    DIR *d = opendir(dir);
    struct dirent *de;
    while (d && (de = readdir(d))) {
      if (de->d_name[0] == '.' || de->d_name[0] < '1' || de->d_name[0] > '9') continue;
      char vd[PATH_MAX + 300];
      snprintf(vd, sizeof vd, "%s/%s", dir, de->d_name);
      inotify_add_watch(r->ino_fd, vd, IN_CLOSE_WRITE | IN_MOVED_TO | IN_CREATE | IN_ONLYDIR);
    }
    if (d) closedir(d);
  }
}

static uint64_t mono_ms(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000;
}

/* One pass over every model (caller: the background thread). */
static void scan_all(kd_registry *r, const char *why) {
  pthread_mutex_lock(&r->ctl);
  watch_tree(r);
  int published = 0;
  for (uint32_t i = 0; i < r->n_models; i++) published += reg_scan_model(r, i, 0);
  pthread_mutex_unlock(&r->ctl);
  reg_log(r, KD_LOG_DEBUG, "repo_rescanned", "reason=%s published=%d", why, published);
}

static void *watch_main(void *arg) {
  kd_registry *r = arg;
  /* Loads (CRC verification, plan layout, warm-up: ~0.6 s of CPU for a 78 MB checkpoint) compete
   * for the CPUs with the serving threads: this thread runs under SCHED_IDLE (it gets a CPU only
   * when no serving thread wants it; the kernel still runs it, slowly, on a saturated machine), or
   * nice 19 where SCHED_IDLE is refused. */
  struct sched_param sp = {.sched_priority = 0};
  if (pthread_setschedparam(pthread_self(), SCHED_IDLE, &sp) != 0 &&
      setpriority(PRIO_PROCESS, (id_t)syscall(SYS_gettid), 19) != 0)
    reg_log(r, KD_LOG_DEBUG, "loader_priority_unchanged", "error=\"%s\"", strerror(errno));
  uint64_t interval = (uint64_t)r->wp.rescan_interval_ms;
  uint64_t next_rescan = interval ? mono_ms() + interval : UINT64_MAX;
  char buf[8192] __attribute__((aligned(__alignof__(struct inotify_event))));
  while (!atomic_load_explicit(&r->stop, memory_order_acquire)) {
    struct pollfd pf[2] = {{.fd = r->wake_fd[0], .events = POLLIN}, {.fd = r->ino_fd, .events = POLLIN}};
    uint64_t now = mono_ms();
    int timeout = next_rescan == UINT64_MAX ? -1
                  : next_rescan <= now    ? 0
                                          : (int)(next_rescan - now < 3600000 ? next_rescan - now : 3600000);
    int n = poll(pf, r->ino_fd >= 0 ? 2 : 1, timeout);
    if (n < 0 && errno != EINTR) break;
    if (n > 0 && (pf[0].revents & POLLIN)) {
      char c[64];
      while (read(r->wake_fd[0], c, sizeof c) > 0) {
      }
    }
    reg_reap(r);
    if (atomic_load_explicit(&r->stop, memory_order_acquire)) break;
    int changed = 0;
    if (n > 0 && r->ino_fd >= 0 && (pf[1].revents & POLLIN)) {
      while (read(r->ino_fd, buf, sizeof buf) > 0) changed = 1; /* the content is not needed: rescan */
      if (changed) {
        /* Let a burst of events (a directory rename, then its file) settle into one scan. */
        struct timespec ts = {0, 2 * 1000000L};
        nanosleep(&ts, NULL);
        while (read(r->ino_fd, buf, sizeof buf) > 0) {
        }
      }
    }
    now = mono_ms();
    if (changed) scan_all(r, "inotify");
    else if (now >= next_rescan) scan_all(r, "interval");
    if (interval && (changed || now >= next_rescan)) next_rescan = mono_ms() + interval;
    reg_reap(r);
  }
  return NULL;
}

int kd_registry_watch_start(kd_registry *r, struct kd_registry_watch_params p, struct kd_err *e) {
  if (atomic_load(&r->watching)) return kd_err_set(e, KD_ERR_INVALID, "registry: already watching");
  r->wp = p;
  if (pipe2(r->wake_fd, O_CLOEXEC | O_NONBLOCK) != 0)
    return kd_err_set(e, KD_ERR_IO, "registry: pipe: %s", strerror(errno));
  r->ino_fd = p.no_inotify ? -1 : inotify_init1(IN_NONBLOCK | IN_CLOEXEC);
  if (!p.no_inotify && r->ino_fd < 0)
    reg_log(r, KD_LOG_WARN, "inotify_unavailable", "error=\"%s\" fallback=rescan_interval_ms=%lld",
            strerror(errno), (long long)p.rescan_interval_ms);
  pthread_mutex_lock(&r->ctl);
  watch_tree(r);
  pthread_mutex_unlock(&r->ctl);
  atomic_store(&r->stop, 0);
  atomic_store_explicit(&r->watching, 1, memory_order_release);
  if (pthread_create(&r->thread, NULL, watch_main, r) != 0) {
    atomic_store(&r->watching, 0);
    if (r->ino_fd >= 0) close(r->ino_fd);
    close(r->wake_fd[0]);
    close(r->wake_fd[1]);
    r->ino_fd = r->wake_fd[0] = r->wake_fd[1] = -1;
    return kd_err_set(e, KD_ERR_NOMEM, "registry: cannot start the watcher thread");
  }
  reg_log(r, KD_LOG_INFO, "repo_watching", "repo=%s inotify=%s rescan_interval_ms=%lld", r->repo,
          r->ino_fd >= 0 ? "yes" : "no", (long long)p.rescan_interval_ms);
  return KD_OK;
}

void kd_registry_watch_stop(kd_registry *r) {
  if (!r || !atomic_load(&r->watching)) return;
  atomic_store_explicit(&r->stop, 1, memory_order_release);
  char c = 's';
  ssize_t w = write(r->wake_fd[1], &c, 1);
  (void)w;
  pthread_join(r->thread, NULL);
  atomic_store_explicit(&r->watching, 0, memory_order_release);
  reg_reap(r); /* anything deferred while the thread was stopping */
  if (r->ino_fd >= 0) close(r->ino_fd);
  close(r->wake_fd[0]);
  close(r->wake_fd[1]);
  r->ino_fd = r->wake_fd[0] = r->wake_fd[1] = -1;
}
