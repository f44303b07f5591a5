/* registry_internal.h - the registry's private structures, shared by registry.c (versions,
 * routing, policy, persistence, admin operations) and watch.c (inotify + rescan loader thread,
 * deferred frees). Private to loader/. */
#ifndef KD_REGISTRY_INTERNAL_H
#define KD_REGISTRY_INTERNAL_H

#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>

#include "kdrank_loader.h"

#define KD_REG_MAX_RECORDS 32 /* version records kept per model (newest first) */

enum { KD_VSTATE_LOADING = 0, KD_VSTATE_AVAILABLE = 1, KD_VSTATE_FAILED = 2, KD_VSTATE_UNLOADING = 3 };

struct kd_version {
  atomic_uint refs;          /* the registry's reference (while AVAILABLE) + one per reader */
  atomic_int role;           /* 0 none, 1 stable, 2 canary (kd_version_label) */
  kd_registry *reg;          /* NULL while being built */
  uint32_t model_index;
  const char *model_name;    /* points into the slot (outlives every version) */
  int64_t number;
  int64_t loaded_unix_ms;
  uint32_t crc;              /* kd_ckpt_crc of the checkpoint */
  uint64_t file_bytes;
  uint32_t n_meta;
  struct kd_meta *meta;      /* [n_meta] copies, keys and strings in the same block */
  kd_plan *plan;             /* weights laid out for the fast path (its own copy) */
  uint32_t n_scratch;
  kd_scratch **scratch;      /* [n_scratch] */
  struct kd_version *next_dead; /* deferred-free stack (watch.c) */
};

struct reg_file_id {
  uint64_t dev, ino, size;
  int64_t mtime_ns;
};

/* What the registry knows of one version. */
struct reg_rec {
  int64_t version;
  int state;                 /* KD_VSTATE_* */
  char error[256];
  int64_t state_ms, loading_ms, available_ms, failed_ms, unloading_ms, loaded_ms;
  uint32_t crc;
  struct reg_file_id fid;    /* of the file last tried (FAILED: retried when it changes) */
  struct kd_version *v;      /* AVAILABLE: the registry's reference */
  struct kd_version *dying;  /* UNLOADING: the version whose last reader has not released yet */
};

struct kd_slot {
  char name[KD_NAME_MAX];
  uint64_t name_hash;
  /* mu: readers' choose + increment, every pointer/record/weight change (short sections only). */
  pthread_mutex_t mu;
  _Atomic(struct kd_version *) stable; /* NULL when none */
  _Atomic(struct kd_version *) canary; /* NULL when none */
  double weight;             /* canary share in [0, 1] (mu) */
  uint64_t threshold;        /* hash < threshold -> canary (mu) */
  int64_t prev_stable;       /* for Rollback (mu + ctl) */
  int64_t newest_seen;       /* highest version ever tried (ctl) */
  uint32_t n_recs;
  struct reg_rec recs[KD_REG_MAX_RECORDS]; /* newest first (mu) */
  atomic_uint_fast64_t loads_ok, loads_failed;
};

struct kd_registry {
  struct kd_registry_params p;
  char *repo;
  uint32_t keep;             /* keep-latest-N loaded versions */
  uint32_t n_models;
  struct kd_slot *slots;     /* [n_models], sorted by name */
  int mutexes_ready;
  /* ctl: serialises every change (loads, publishes, policy, admin operations, persistence). */
  pthread_mutex_t ctl;
  /* background thread (watch.c) */
  atomic_int watching;       /* 1 while the thread runs: last releases defer frees to it */
  pthread_t thread;
  int ino_fd;                /* inotify, -1 when unavailable */
  int wake_fd[2];            /* self-pipe: stop, deferred frees */
  atomic_int stop;
  _Atomic(struct kd_version *) dead; /* versions whose last reference is gone */
  struct kd_registry_watch_params wp;
};

void reg_log(const kd_registry *r, int level, const char *event, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
void reg_version_destroy(struct kd_version *v);
struct kd_version *reg_load(kd_registry *r, uint32_t mi, int64_t number, struct kd_err *e);
void reg_apply_policy(kd_registry *r, uint32_t mi);
void reg_persist(kd_registry *r, uint32_t mi);
void reg_set_stable(kd_registry *r, uint32_t mi, struct kd_version *v);
void reg_set_canary(kd_registry *r, uint32_t mi, struct kd_version *v, double w);
int reg_list_versions(kd_registry *r, uint32_t mi, int64_t **out);
int reg_scan_model(kd_registry *r, uint32_t mi, int ignore_seen);
/* watch.c */
void reg_defer_free(kd_registry *r, struct kd_version *v);
void reg_reap(kd_registry *r);

#endif
