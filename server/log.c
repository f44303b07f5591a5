/* log.c - structured key=value log lines to stderr (see log.h). */
#include "log.h"

#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

static atomic_int g_level = KD_LOG_INFO;
static const char *const k_names[] = {"error", "warn", "info", "debug"};

void kd_log_set_level(int level) { atomic_store(&g_level, level); }
int kd_log_level(void) { return atomic_load(&g_level); }

int kd_log_parse_level(const char *s) {
  for (int i = 0; i < 4; i++)
    if (strcmp(s, k_names[i]) == 0) return i;
  return -1;
}

/* Writes the line prefix, the caller's key=values and a newline with one write(2). */
static void log_emit(int level, const char *event, const char *fmt, va_list ap) {
  char line[2048];
  struct timespec ts;
  struct tm tm;
  clock_gettime(CLOCK_REALTIME, &ts);
  gmtime_r(&ts.tv_sec, &tm);
  int n = snprintf(line, sizeof line, "ts=%04d-%02d-%02dT%02d:%02d:%02d.%06ldZ level=%s event=%s",
                   tm.tm_year + 1900, tm.tm_mon + 1, tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec,
                   ts.tv_nsec / 1000, k_names[level < 0 ? 0 : level > 3 ? 3 : level], event);
  if (fmt && fmt[0] && n < (int)sizeof line - 2) {
    line[n++] = ' ';
    int m = vsnprintf(line + n, sizeof line - (size_t)n, fmt, ap);
    n = m < 0 ? n : (n + m < (int)sizeof line - 1 ? n + m : (int)sizeof line - 2);
  }
  line[n++] = '\n';
  ssize_t w = write(STDERR_FILENO, line, (size_t)n);
  (void)w;
}

void kd_log(int level, const char *event, const char *fmt, ...) {
  if (level > atomic_load_explicit(&g_level, memory_order_relaxed)) return;
  va_list ap;
  va_start(ap, fmt);
  log_emit(level, event, fmt, ap);
  va_end(ap);
}

void kd_log_registry(void *ctx, int level, const char *event, const char *kv) {
  (void)ctx;
  kd_log(level, event, "%s", kv);
}
