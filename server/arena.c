/* arena.c - per-worker bump allocator for protobuf-c (see arena.h). */
#include "arena.h"

#include <stdint.h>
#include <stdlib.h>

struct kd_arena_chunk {
  struct kd_arena_chunk *next;
  size_t size, used;
  _Alignas(16) unsigned char data[];
};

static struct kd_arena_chunk *chunk_new(size_t size) {
  struct kd_arena_chunk *c = malloc(sizeof *c + size);
  if (!c) return NULL;
  c->next = NULL;
  c->size = size;
  c->used = 0;
  return c;
}

static void *pb_alloc(void *data, size_t n) { return kd_arena_alloc(data, n); }
static void pb_free(void *data, void *p) { (void)data; (void)p; /* freed by reset */ }

int kd_arena_init(struct kd_arena *a, size_t retain, size_t cap) {
  a->head = chunk_new(retain);
  a->used_total = 0;
  a->held = retain;
  a->cap = cap < retain ? retain : cap;
  a->retain = retain;
  a->failed = 0;
  a->pb.alloc = pb_alloc;
  a->pb.free = pb_free;
  a->pb.allocator_data = a;
  return a->head ? 0 : -1;
}

void kd_arena_free(struct kd_arena *a) {
  for (struct kd_arena_chunk *c = a->head, *n; c; c = n) {
    n = c->next;
    free(c);
  }
  a->head = NULL;
  a->held = 0;
}

void *kd_arena_alloc(struct kd_arena *a, size_t n) {
  size_t need = (n + 15) & ~(size_t)15;
  if (need < n) return NULL; /* overflow */
  struct kd_arena_chunk *c = a->head;
  if (!c || c->size - c->used < need) {
    size_t grow = a->held > need ? a->held : need; /* double, at least what is asked */
    if (a->held + grow > a->cap) grow = need;
    if (need > a->cap || a->held + grow > a->cap) {
      a->failed = 1;
      return NULL;
    }
    struct kd_arena_chunk *nc = chunk_new(grow);
    if (!nc) {
      a->failed = 1;
      return NULL;
    }
    nc->next = c;
    a->head = c = nc;
    a->held += grow;
  }
  void *p = c->data + c->used;
  c->used += need;
  a->used_total += need;
  return p;
}

void kd_arena_reset(struct kd_arena *a) {
  a->failed = 0;
  a->used_total = 0;
  if (a->head && a->head->next) {
    /* Several chunks: keep the largest if it is within `retain`, else one chunk of `retain`. */
    struct kd_arena_chunk *keep = NULL;
    for (struct kd_arena_chunk *c = a->head; c; c = c->next)
      if (c->size <= a->retain && (!keep || c->size > keep->size)) keep = c;
    for (struct kd_arena_chunk *c = a->head, *n; c; c = n) {
      n = c->next;
      if (c != keep) free(c);
    }
    a->head = keep ? keep : chunk_new(a->retain);
    if (a->head) a->head->next = NULL;
    a->held = a->head ? a->head->size : 0;
  } else if (a->head && a->head->size > a->retain) {
    free(a->head);
    a->head = chunk_new(a->retain);
    a->held = a->head ? a->retain : 0;
  }
  if (a->head) a->head->used = 0;
}
