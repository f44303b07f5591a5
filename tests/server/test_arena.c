/* test_arena.c - the per-worker decode arena: alignment, growth past the first chunk, the cap
 * (allocation fails, failed flag set, nothing else breaks), reset keeping `retain` bytes, and
 * protobuf-c decoding through it (a ScoreRequest packed and unpacked with the arena allocator). */
#include <stdint.h>
#include <string.h>

#include "arena.h"
#include "kd_test.h"
#include "kdrank.pb-c.h"

int main(void) {
  struct kd_arena a;
  REQUIRE(kd_arena_init(&a, 1024, 8192) == 0);
  void *p = kd_arena_alloc(&a, 3), *q = kd_arena_alloc(&a, 5);
  CHECK(p && q && ((uintptr_t)p & 15) == 0 && ((uintptr_t)q & 15) == 0 && q != p);
  memset(p, 1, 3);
  memset(q, 2, 5);
  /* Growth: more than the first chunk. */
  char *big = kd_arena_alloc(&a, 3000);
  CHECK(big != NULL && a.held > 1024);
  memset(big, 3, 3000);
  CHECK(((unsigned char *)p)[2] == 1 && ((unsigned char *)q)[4] == 2); /* earlier memory intact */
  /* Cap: 8192 bytes held at most. */
  CHECK(kd_arena_alloc(&a, 9000) == NULL && a.failed == 1);
  CHECK(a.held <= a.cap);
  CHECK(kd_arena_alloc(&a, SIZE_MAX - 4) == NULL); /* overflow-safe */
  /* Reset: back to one chunk of at most `retain` bytes; allocations work again. */
  kd_arena_reset(&a);
  CHECK(a.failed == 0 && a.used_total == 0 && a.held <= 1024);
  CHECK(kd_arena_alloc(&a, 1000) != NULL);
  kd_arena_reset(&a);

  /* protobuf-c through the arena. */
  Kdrank__V1__ScoreRequest r = KDRANK__V1__SCORE_REQUEST__INIT;
  Kdrank__V1__FeatureBatch b = KDRANK__V1__FEATURE_BATCH__INIT;
  Kdrank__V1__Column col = KDRANK__V1__COLUMN__INIT, *cols[1] = {&col};
  float f[6] = {1, 2, 3, 4, 5, 6};
  r.model = "m";
  b.count = 2;
  b.n_columns = 1;
  b.columns = cols;
  col.name = "x";
  col.n_floats = 6;
  col.floats = f;
  r.candidates = &b;
  uint8_t buf[256];
  size_t n = kdrank__v1__score_request__pack(&r, buf);
  struct kd_arena big_a;
  REQUIRE(kd_arena_init(&big_a, 4096, 1 << 20) == 0);
  Kdrank__V1__ScoreRequest *d = kdrank__v1__score_request__unpack(&big_a.pb, n, buf);
  REQUIRE(d);
  CHECK(strcmp(d->model, "m") == 0 && d->candidates->count == 2 && d->candidates->n_columns == 1);
  CHECK(d->candidates->columns[0]->n_floats == 6 && d->candidates->columns[0]->floats[5] == 6.0f);
  kdrank__v1__score_request__free_unpacked(d, &big_a.pb); /* a no-op free: memory goes at reset */
  /* A tiny cap makes decoding fail cleanly. */
  struct kd_arena tiny;
  REQUIRE(kd_arena_init(&tiny, 16, 16) == 0);
  CHECK(kdrank__v1__score_request__unpack(&tiny.pb, n, buf) == NULL && tiny.failed);
  kd_arena_free(&tiny);
  kd_arena_free(&big_a);
  kd_arena_free(&a);
  KD_TEST_END();
}
