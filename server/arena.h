/* arena.h - a per-worker bump allocator behind a ProtobufCAllocator: request decode and response
 * building allocate from it, kd_arena_reset() forgets everything at the end of a call. Memory
 * grows in chunks up to a cap and is kept across calls (no malloc per call in steady state); a
 * call that needed more than `retain` bytes makes the next reset give the excess back. */
#ifndef KD_SERVE_ARENA_H
#define KD_SERVE_ARENA_H

#include <stddef.h>

#include <protobuf-c/protobuf-c.h>

struct kd_arena_chunk;

struct kd_arena {
  struct kd_arena_chunk *head; /* chunk being filled; older chunks follow */
  size_t used_total;           /* bytes handed out since the last reset */
  size_t held;                 /* bytes held in chunks */
  size_t cap;                  /* most bytes ever held; an allocation past it fails */
  size_t retain;               /* bytes kept across resets */
  int failed;                  /* an allocation failed since the last reset (cap reached) */
  ProtobufCAllocator pb;       /* allocator_data = this arena */
};

/* Initialises the arena with one chunk of `retain` bytes. Returns 0 or -1 (out of memory). */
int kd_arena_init(struct kd_arena *a, size_t retain, size_t cap);
void kd_arena_free(struct kd_arena *a);
/* 16-byte aligned memory valid until the next reset, or NULL when the cap is reached. */
void *kd_arena_alloc(struct kd_arena *a, size_t n);
/* Forgets every allocation; keeps up to `retain` bytes of chunks. */
void kd_arena_reset(struct kd_arena *a);

#endif
