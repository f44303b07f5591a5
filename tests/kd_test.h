/* kd_test.h - a tiny assert set for kdrank's C tests (run under CTest; exit code is the verdict).
 * CHECK(cond) records a failure with file:line and goes on; REQUIRE(cond) stops the test.
 * Each test binary ends with KD_TEST_END(), which prints "N passed, N failed" and exits. */
#ifndef KD_TEST_H
#define KD_TEST_H
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static int kd_test_pass_, kd_test_fail_;
#define CHECK(c) do { if (c) kd_test_pass_++; else { kd_test_fail_++; \
  fprintf(stderr, "%s:%d: CHECK failed: %s\n", __FILE__, __LINE__, #c); } } while (0)
#define CHECKF(c, ...) do { if (c) kd_test_pass_++; else { kd_test_fail_++; \
  fprintf(stderr, "%s:%d: CHECK failed: %s: ", __FILE__, __LINE__, #c); \
  fprintf(stderr, __VA_ARGS__); fputc('\n', stderr); } } while (0)
#define REQUIRE(c) do { if (c) kd_test_pass_++; else { \
  fprintf(stderr, "%s:%d: REQUIRE failed: %s\n", __FILE__, __LINE__, #c); exit(1); } } while (0)
#define KD_TEST_END() do { printf("checks: %d passed, %d failed\n", kd_test_pass_, kd_test_fail_); \
  return kd_test_fail_ ? 1 : 0; } while (0)
#endif
