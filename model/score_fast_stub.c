/* score_fast_stub.c - placeholder fast path until score_fast.c lands: delegates to the oracle.
 * Compiled only when score_fast.c is absent (see model/CMakeLists.txt). */
#include <stdlib.h>

#include "kdrank_model.h"

struct kd_plan { struct kd_model *m; };
struct kd_scratch { uint32_t max; };

const char *kd_kernel_name(int k) { return k == KD_KERNEL_AVX2 ? "avx2" : k == KD_KERNEL_SCALAR ? "scalar" : "auto"; }
int kd_kernel_detect(void) { return KD_KERNEL_SCALAR; }
kd_plan *kd_plan_create(const struct kd_model *m, struct kd_plan_params p, struct kd_err *e) {
  (void)p;
  kd_plan *pl = calloc(1, sizeof *pl);
  if (!pl) { kd_err_set(e, KD_ERR_NOMEM, "out of memory"); return NULL; }
  pl->m = kd_model_alloc(&m->arch, e);
  if (!pl->m) { free(pl); return NULL; }
  for (uint32_t i = 0; i < m->n_tensors; i++) {
    struct kd_tensor_info ti;
    kd_arch_tensor(&m->arch, i, &ti);
    for (uint64_t j = 0; j < ti.numel; j++) pl->m->t[i][j] = m->t[i][j];
  }
  return pl;
}
void kd_plan_free(kd_plan *p) { if (p) { kd_model_free(p->m); free(p); } }
const struct kd_arch *kd_plan_arch(const kd_plan *p) { return &p->m->arch; }
size_t kd_plan_bytes(const kd_plan *p) { return p->m->owned_bytes; }
int kd_plan_kernel(const kd_plan *p) { (void)p; return KD_KERNEL_SCALAR; }
kd_scratch *kd_scratch_create(const kd_plan *p, uint32_t max_cand, struct kd_err *e) {
  (void)p;
  kd_scratch *s = calloc(1, sizeof *s);
  if (!s) { kd_err_set(e, KD_ERR_NOMEM, "out of memory"); return NULL; }
  s->max = max_cand;
  return s;
}
void kd_scratch_free(kd_scratch *s) { free(s); }
int kd_score(const kd_plan *p, kd_scratch *s, const struct kd_input *in, const uint32_t *tasks, uint32_t n_out,
             float *out, struct kd_err *e) {
  if (in->n_cand > s->max) return kd_err_set(e, KD_ERR_RANGE, "candidates: count %u over the maximum %u", in->n_cand, s->max);
  return kd_score_ref(p->m, in, tasks, n_out, out, e);
}
int kd_logits(const kd_plan *p, kd_scratch *s, const struct kd_input *in, float *out, struct kd_err *e) {
  uint32_t t[KD_MAX_TASKS];
  for (uint32_t i = 0; i < p->m->arch.n_tasks; i++) t[i] = i;
  if (in->n_cand > s->max) return kd_err_set(e, KD_ERR_RANGE, "candidates: count %u over the maximum %u", in->n_cand, s->max);
  return kd_logits_ref(p->m, in, t, p->m->arch.n_tasks, out, e);
}
