#!/usr/bin/python3
"""demo_client.py - a real gRPC client for the demo: generates the Python stubs of proto/kdrank.proto
with grpc_tools, reads a ScoreRequest in proto3 JSON (as `kdrank-ckpt request` writes it), sends it
to kdrank-serve's Ranker/Score and prints the reply as JSON {"model","version","tasks","scores"}.
With --expect FILE (the JSON of `kdrank-ckpt score`) it compares the scores and exits 1 when any
differs by more than --tol.
Usage: demo_client.py --addr HOST:PORT --request REQ.json --proto-dir DIR [--model NAME]
                      [--expect SCORE.json] [--tol 0]"""
import argparse
import json
import subprocess
import struct
import sys
import tempfile


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--addr", required=True)
    ap.add_argument("--request", required=True)
    ap.add_argument("--proto-dir", required=True)
    ap.add_argument("--model", default=None)
    ap.add_argument("--expect", default=None)
    ap.add_argument("--tol", type=float, default=0.0)
    a = ap.parse_args()
    out = tempfile.mkdtemp(prefix="kdstubs-")
    subprocess.run([sys.executable, "-m", "grpc_tools.protoc", "-I" + a.proto_dir, "--python_out=" + out,
                    "--grpc_python_out=" + out, "kdrank.proto"], check=True, timeout=120)
    sys.path.insert(0, out)
    import grpc
    from google.protobuf import json_format
    import kdrank_pb2
    import kdrank_pb2_grpc
    with open(a.request) as f:
        req = json_format.Parse(f.read(), kdrank_pb2.ScoreRequest())
    if a.model is not None:
        req.model = a.model
    with grpc.insecure_channel(a.addr) as ch:
        grpc.channel_ready_future(ch).result(timeout=10)
        rep = kdrank_pb2_grpc.RankerStub(ch).Score(req, timeout=10)
    got = {"model": rep.model, "version": rep.version, "tasks": list(rep.tasks), "scores": list(rep.scores)}
    print(json.dumps(got))
    if a.expect:
        with open(a.expect) as f:
            want = json.load(f)
        if want["tasks"] != got["tasks"] or len(want["scores"]) != len(got["scores"]):
            sys.exit("served tasks/scores %s differ in shape from kdrank-ckpt score %s" % (got["tasks"], want["tasks"]))
        # kdrank-ckpt prints float32 values with 9 significant digits: rounded back to float32 they are
        # the exact bits, so the same kernel on both sides must agree bit for bit (--tol relaxes it)
        f32 = lambda v: struct.unpack("f", struct.pack("f", v))[0]
        worst = max(abs(f32(x) - y) for x, y in zip(want["scores"], got["scores"]))
        if worst > a.tol:
            sys.exit("served scores differ from kdrank-ckpt score by %g (> %g)" % (worst, a.tol))
        print("server scores == kdrank-ckpt score (max |diff| %.3g over %d scores)" % (worst, len(got["scores"])))


if __name__ == "__main__":
    main()
