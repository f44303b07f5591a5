/* admin.h - the kdrank.v1.Admin gRPC service on its own address and thread (admin.c). Private to
 * server/. */
#ifndef KD_SERVE_ADMIN_H
#define KD_SERVE_ADMIN_H

#include <grpc/grpc.h>

#include "kdrank_loader.h"

struct kd_admin;

/* Reads the bearer token from token_file (first line), binds listen (HOST:PORT or unix:PATH;
 * *port gets the bound port, 0 for a unix socket... as gRPC reports it) and starts the admin
 * thread. grpc_init must have been called. NULL + e on error (bad token file, busy address).
 * default_model is used when a request leaves `model` empty. */
struct kd_admin *kd_admin_start(kd_registry *reg, const char *listen, const char *token_file,
                                const char *default_model, int *port, struct kd_err *e);
/* Stops accepting, lets a running admin call finish (2 s, then cancels it), joins the thread and
 * frees everything. NULL is a no-op. */
void kd_admin_stop(struct kd_admin *a);

#endif
