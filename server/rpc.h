/* rpc.h - the gRPC C-core resources of one server-side call, shared by the Ranker workers
 * (server.c) and the Admin thread (admin.c), and their release. */
#ifndef KD_RPC_H
#define KD_RPC_H

#include <grpc/grpc.h>

struct kd_rpc {
  grpc_call *call;
  gpr_timespec deadline;
  grpc_metadata_array md;
  grpc_byte_buffer *payload;  /* registered methods: the request message (may be NULL = empty) */
  grpc_call_details details;  /* generic request only */
  grpc_byte_buffer *resp;
  grpc_slice status_details;
  int have_details;
  int cancelled;
};

/* Releases everything r holds (byte buffers, metadata, the details of a generic request when
 * generic != 0, the status-details slice, the call reference), whatever the call's outcome, and
 * leaves r empty. */
void kd_rpc_release(struct kd_rpc *r, int generic);

#endif
