/* client.h - one blocking unary gRPC call on the C core, for kdrank's own command-line clients
 * (kdrank-ctl, kdrank-bench-serve, kdrank-bench-swap). */
#ifndef KD_CLIENT_H
#define KD_CLIENT_H

#include <stddef.h>

#include <grpc/grpc.h>

/* Runs the unary call `call` (created by the caller on cq, a pluck queue, and unreffed by the
 * caller afterwards): sends body (not consumed) with the n_md metadata entries, waits for the
 * reply. Returns the gRPC status code; *out gets the reply bytes (an empty slice when none; the
 * caller unrefs it) and msg, when not NULL, the status details. */
int kd_client_unary(grpc_call *call, grpc_completion_queue *cq, grpc_slice body, grpc_metadata *md, size_t n_md,
                    grpc_slice *out, char *msg, size_t mcap);

#endif
