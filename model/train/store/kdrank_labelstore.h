/* kdrank_labelstore.h - the teacher label store's contract: versions, writers, readers.
 *
 * A teacher scores a data set once; many student trainers read the result. The store keeps, per
 * teacher VERSION, one float32 logit per task per example, keyed by (version, example id), and a
 * MANIFEST describing the version (teacher checkpoint CRC, data fingerprint, tasks, row count,
 * times, state, content digest).
 *
 * Backends, chosen by the URI given to kd_labelstore_open():
 *   PATH, sqlite:PATH                SQLite, one file (the embedded default). WAL mode: any number
 *                                    of readers run while a writer writes another version.
 *   postgresql://..., postgres://... PostgreSQL through libpq (the shared store for a fleet of
 *                                    trainers). Any libpq connection URI; a connect_timeout of 10 s
 *                                    is added unless the URI sets one.
 *
 * Versions are named by ONE string (e.g. "ml100k-t2x-w0042"): 1..63 characters from
 * [A-Za-z0-9._:+-], starting with a letter or digit. It is what a student pins (`STORE@VERSION`,
 * hence no '@' or '/') and what its checkpoint provenance records; a teacher id and a window
 * number, if wanted, are encoded in the name by the caller.
 *
 * The rules the store enforces:
 *   - A version is WRITING from kd_labelstore_writer_begin() until kd_labelstore_writer_commit()
 *     turns it COMPLETE in one transaction. COMPLETE is final: the version's labels and manifest
 *     can never be written, rewritten or deleted again (refused by the API, and by triggers in the
 *     database against other clients).
 *   - Only COMPLETE versions can be read (kd_labelstore_reader_open refuses WRITING ones): no
 *     partial reads.
 *   - At most one live writer per version. A writer holds a lock that the operating system (SQLite:
 *     an OFD byte lock on the side file PATH.writer-lock) or the server (PostgreSQL: a session
 *     advisory lock) releases when the writer's process dies. A WRITING version whose lock is free
 *     is the leftover of a crashed writer: the next kd_labelstore_writer_begin() of that version
 *     discards its rows and starts it afresh. A WRITING version whose lock is held is refused.
 *   - Commit checks that the rows stored equal the rows put (and the expected count, if declared)
 *     and records an order-independent 64-bit digest of the content. Every full read recomputes
 *     the digest and the count and fails with KD_ERR_CORRUPT if either differs, so two readers of a
 *     version either see the same labels or get an error.
 *
 * Logits: per example n_tasks float32, little-endian, in one BLOB (SQLite) / bytea (PostgreSQL)
 * in the manifest's task order. They must be finite (NaN/Inf are refused at put).
 *
 * Errors: functions return enum kd_status (KD_OK = 0, negative on error) and fill struct kd_err
 * (may be NULL) with a message naming the store, version, field, expected and found. Codes:
 *   KD_ERR_INVALID     bad argument, bad manifest, a database without the store's tables (read-
 *                      only open), or a refused state change (version COMPLETE and therefore
 *                      immutable; version WRITING and therefore unreadable; version busy with a
 *                      live writer; store opened read-only)
 *   KD_ERR_NOT_FOUND   no such version / no such SQLite file (read-only open)
 *   KD_ERR_UNSUPPORTED bad URI scheme, or a store schema version this build does not read
 *   KD_ERR_IO          the database failed (server unreachable, SQL error, disk full)
 *   KD_ERR_CORRUPT     stored content fails a check (blob size, count, digest, manifest fields)
 *   KD_ERR_RANGE       params.batch_rows over 2^24
 *   KD_ERR_NOMEM       out of memory
 *
 * Thread safety: writers and readers own their own database connection; each is used by one
 * thread at a time, and different ones may run in different threads and processes at once.
 * kd_labelstore_writer_begin and kd_labelstore_reader_open only read the store handle, so any
 * number of threads may call them on one store at once; kd_labelstore_manifest_get and
 * kd_labelstore_list use the store's own connection: one thread at a time. A store handle must
 * outlive the writers and readers made from it.
 */
#ifndef KDRANK_LABELSTORE_H
#define KDRANK_LABELSTORE_H

#include <stddef.h>
#include <stdint.h>

#include "kdrank_model.h" /* enum kd_status, struct kd_err, KD_NAME_MAX, KD_MAX_TASKS */

#ifdef __cplusplus
extern "C" {
#endif

#define KD_LABEL_VERSION_MAX 64      /* version name, including the NUL */
#define KD_LABEL_FINGERPRINT_MAX 128 /* data fingerprint, including the NUL */
#define KD_LABEL_TEACHER_MAX 256     /* teacher description, including the NUL */

enum kd_label_state { KD_LABEL_WRITING = 1, KD_LABEL_COMPLETE = 2 };

/* One teacher version's manifest. In kd_labelstore_writer_begin() the caller fills version,
 * teacher, teacher_crc, data_fingerprint, n_tasks, tasks and (optionally) row_count as the
 * EXPECTED number of rows (0: not declared); the store fills the rest. Read back, row_count is the
 * number of rows stored. */
struct kd_label_manifest {
  char version[KD_LABEL_VERSION_MAX];
  char teacher[KD_LABEL_TEACHER_MAX];              /* free text, e.g. the checkpoint's name; may be "" */
  uint32_t teacher_crc;                            /* CRC of the teacher checkpoint file */
  char data_fingerprint[KD_LABEL_FINGERPRINT_MAX]; /* identifies the data set scored; non-empty */
  uint32_t n_tasks;                                /* 1..KD_MAX_TASKS */
  char tasks[KD_MAX_TASKS][KD_NAME_MAX];           /* (n_tasks) logit order; unique, [A-Za-z0-9_.-] */
  uint64_t row_count;
  int64_t created_unix;   /* seconds since the epoch, set by begin */
  int64_t completed_unix; /* set by commit; 0 while WRITING */
  uint32_t state;         /* enum kd_label_state */
  uint64_t digest;        /* order-independent digest of (example id, logits) rows; 0 while WRITING */
};

struct kd_labelstore_params {
  uint32_t read_only;  /* 1: never create or change anything (SQLite file must exist) */
  uint32_t batch_rows; /* rows per write transaction / COPY; 0 = 65536 */
  uint32_t timeout_ms; /* SQLite: busy timeout; 0 = 10000 */
};

typedef struct kd_labelstore kd_labelstore;
typedef struct kd_labelstore_writer kd_labelstore_writer;
typedef struct kd_labelstore_reader kd_labelstore_reader;

/* Default parameters (read-write, 65536-row batches, 10 s busy timeout). */
struct kd_labelstore_params kd_labelstore_params_default(void);

/* Opens the store at uri (see the backends above), creating its tables if absent unless
 * p.read_only. Checks that the database is reachable and that its schema version is one this
 * build reads. Returns a handle to free with kd_labelstore_close(), or NULL with e filled:
 * KD_ERR_UNSUPPORTED (unknown scheme, newer schema), KD_ERR_NOT_FOUND (read-only, no such file),
 * KD_ERR_IO (cannot open/connect: the message carries the database's own words). */
kd_labelstore *kd_labelstore_open(const char *uri, struct kd_labelstore_params p, struct kd_err *e);

/* Closes the store. Every writer and reader made from it must be freed first. NULL is a no-op. */
void kd_labelstore_close(kd_labelstore *s);

/* "sqlite" or "postgresql". */
const char *kd_labelstore_backend(const kd_labelstore *s);

/* Fills *out with the manifest of version (any state). KD_ERR_NOT_FOUND if absent. */
int kd_labelstore_manifest_get(kd_labelstore *s, const char *version, struct kd_label_manifest *out,
                               struct kd_err *e);

/* Lists every version, ordered by name: *out is a malloc'd array of *n manifests (NULL when 0)
 * that the caller frees with free(). */
int kd_labelstore_list(kd_labelstore *s, struct kd_label_manifest **out, size_t *n, struct kd_err *e);

/* Checks a version name against the rules above; KD_OK or KD_ERR_INVALID naming the bad char. */
int kd_labelstore_version_check(const char *version, struct kd_err *e);

/* Splits a pin "STORE@VERSION" (as in `--labels STORE@VERSION`) at its LAST '@' (a version never
 * contains one; a PostgreSQL URI may): store[store_cap] gets the URI, version[KD_LABEL_VERSION_MAX]
 * the checked version name. KD_ERR_INVALID if there is no '@', either side is empty, the version
 * is malformed, or the URI does not fit in store_cap. */
int kd_labelstore_pin_parse(const char *pin, char *store, size_t store_cap, char *version, struct kd_err *e);

/* ---- writing ------------------------------------------------------------------------------ */

/* Starts writing the version m->version (see struct kd_label_manifest for the fields read).
 * The writer owns a connection, a lock, two p.batch_rows-row buffers and a flush thread.
 * Refused with KD_ERR_INVALID if the version is COMPLETE (immutable), if another live writer
 * holds it, if the store is read-only or if the manifest is malformed. A WRITING leftover of a
 * crashed writer is discarded (its rows deleted) and restarted. Returns a writer owning its own
 * connection, or NULL. */
kd_labelstore_writer *kd_labelstore_writer_begin(kd_labelstore *s, const struct kd_label_manifest *m,
                                                 struct kd_err *e);

/* Adds one example's logits (n_tasks floats, manifest order, copied). Rows are buffered and
 * written in transactions of p.batch_rows rows (SQLite: a prepared INSERT; PostgreSQL: COPY
 * binary) by the writer's own thread while put fills a second buffer, so put blocks only when
 * both buffers are full, and a database error (e.g. a duplicate example id) surfaces at a later
 * put or at commit. KD_ERR_INVALID for a non-finite logit (nothing is stored for that call).
 * After any database error the writer is failed: every further call returns that error; free it. */
int kd_labelstore_writer_put(kd_labelstore_writer *w, int64_t example_id, const float *logits,
                             struct kd_err *e);

/* Writes the buffered rows and marks the version COMPLETE in one transaction after checking that
 * the rows stored equal the rows put (and the declared expected count, if any): KD_ERR_CORRUPT /
 * KD_ERR_INVALID otherwise, and the version stays WRITING. Fills *out (may be NULL) with the final
 * manifest. Free the writer afterwards either way. */
int kd_labelstore_writer_commit(kd_labelstore_writer *w, struct kd_label_manifest *out, struct kd_err *e);

/* Rows put so far. */
uint64_t kd_labelstore_writer_rows(const kd_labelstore_writer *w);

/* Frees the writer. If it was not committed, its version's rows are discarded (best effort; a
 * leftover is discarded by the next begin anyway) and the writer lock is released. NULL: no-op. */
void kd_labelstore_writer_free(kd_labelstore_writer *w);

/* ---- reading ------------------------------------------------------------------------------ */

/* Opens version for reading. KD_ERR_NOT_FOUND if absent; KD_ERR_INVALID if it is not COMPLETE.
 * Returns a reader owning its own connection (free with kd_labelstore_reader_free), or NULL. */
kd_labelstore_reader *kd_labelstore_reader_open(kd_labelstore *s, const char *version, struct kd_err *e);

/* The version's manifest (valid until the reader is freed). */
const struct kd_label_manifest *kd_labelstore_reader_manifest(const kd_labelstore_reader *r);

/* Streams the version in ascending example id order: fills *example_id and logits (n_tasks
 * floats) and returns 1; returns 0 at the end (after checking the row count and the digest against
 * the manifest: KD_ERR_CORRUPT if they differ); negative kd_status on error. */
int kd_labelstore_reader_next(kd_labelstore_reader *r, int64_t *example_id, float *logits, struct kd_err *e);

/* Coverage of a trainer's examples by the version: */
struct kd_label_coverage {
  uint64_t n_examples; /* the trainer's examples */
  uint64_t n_labelled; /* of those, how many have a label */
  uint64_t n_stored;   /* rows in the version */
  double fraction;     /* n_labelled / n_examples (1 when n_examples is 0) */
};

/* Joins the trainer's example ids ids[0..n) (strictly ascending; KD_ERR_INVALID naming the first
 * index that is not) against the version in one streaming pass. For every i: found[i] = 1 and
 * logits[i*n_tasks ..] = the label when labelled, else found[i] = 0 and the logits are NaN.
 * logits (n, n_tasks) and found (n) may be NULL when only the coverage is wanted. The pass reads
 * the whole version and verifies it like reader_next. Must be called on a fresh reader (before any
 * reader_next); the reader is at its end afterwards. */
int kd_labelstore_reader_join(kd_labelstore_reader *r, const int64_t *ids, size_t n, float *logits,
                              uint8_t *found, struct kd_label_coverage *cov, struct kd_err *e);

/* Frees the reader (any stream in progress is cancelled). NULL is a no-op. */
void kd_labelstore_reader_free(kd_labelstore_reader *r);

#ifdef __cplusplus
}
#endif
#endif
