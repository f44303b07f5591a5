/* ckpt_request.h - private to kdrank-ckpt: ScoreRequest as proto3 JSON (parse, bind to a model,
 * generate random valid requests). */
#ifndef KD_CKPT_REQUEST_H
#define KD_CKPT_REQUEST_H

#include <stdint.h>
#include <stdio.h>

#include "kdrank_model.h"

struct kd_req_col {
  char *name;
  float *floats; /* [n_floats] */
  size_t n_floats;
  int64_t *ids;  /* [n_ids] */
  size_t n_ids;
};

struct kd_req_batch {
  uint32_t count;
  uint32_t n_cols;
  struct kd_req_col *cols; /* [n_cols] */
};

struct kd_req {
  char *model;            /* "" when absent */
  uint64_t routing_key;
  struct kd_req_batch ctx, cand;
  uint32_t n_tasks;
  char **tasks;           /* [n_tasks] */
};

/* Parses a ScoreRequest in the proto3 JSON mapping (lowerCamel or original snake_case field
 * names; int64/uint64/uint32 as numbers or strings; floats as numbers or "NaN"/"Infinity"/
 * "-Infinity"; null = default). Unknown fields are rejected. src names the input in messages.
 * On error r is left empty (nothing to free). */
int kd_req_parse(const char *json, size_t len, const char *src, struct kd_req *r, struct kd_err *e);
void kd_req_free(struct kd_req *r);

/* Binds the request's columns to a's features: cols[a->n_features] point into r. Errors name the
 * column: unknown, given twice, in the wrong group, or a feature without a column. context.count
 * must be 1. Lengths are left to kd_input_check. */
int kd_req_bind(const struct kd_req *r, const struct kd_arch *a, struct kd_column *cols, struct kd_err *e);

/* Writes a random valid request for a as JSON to out: n_cand candidates, k ids per sparse row,
 * dense values uniform in [-1, 1], ids uniform over int64 (printed as strings); deterministic
 * for (a, n_cand, k, seed). model: the "model" field. */
int kd_req_write_random(FILE *out, const struct kd_arch *a, const char *model, uint32_t n_cand, uint32_t k,
                        uint64_t seed, struct kd_err *e);

/* Prints a float for JSON so that it parses back to the same float: %.9g, or the proto3 JSON
 * strings "NaN", "Infinity", "-Infinity". */
void kd_json_float(FILE *out, float v);

#endif
