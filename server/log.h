/* log.h - structured logs: one line per event to stderr, "ts=... level=... event=... key=value...".
 * Thread-safe (one write(2) per line, so lines from different threads never interleave). */
#ifndef KD_SERVE_LOG_H
#define KD_SERVE_LOG_H

#include "kdrank_loader.h" /* enum kd_log_level */

/* Sets the threshold: events above it are dropped. */
void kd_log_set_level(int level);
int kd_log_level(void);
/* Parses "error|warn|info|debug"; returns the level or -1. */
int kd_log_parse_level(const char *s);
/* Logs `event` with printf-style key=value pairs (the caller quotes values containing spaces). */
void kd_log(int level, const char *event, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
/* Adapter for the registry's logger callback. */
void kd_log_registry(void *ctx, int level, const char *event, const char *kv);

#endif
