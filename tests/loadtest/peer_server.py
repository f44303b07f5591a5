#!/usr/bin/python3
"""peer_server.py - a small, controllable REAL gRPC server (Python grpcio) implementing
kdrank.v1.Ranker with a tiny fixed model, for kdrank-load's tests: it can stall every call for a
while mid-run (--pause-at/--pause-ms), fail a known share of calls with a given status
(--fail-share/--fail-code), and answer as a stable or canary version by routing key. It checks each
request against its own metadata (columns, lengths, counts) and rejects a malformed one with
INVALID_ARGUMENT, so the load generator's requests are verified too.

Prints "PORT <n>" on stdout once serving; on SIGTERM writes --stats FILE (JSON) and exits."""
import argparse, json, math, os, random, signal, subprocess, sys, tempfile, threading, time
from concurrent import futures

import grpc


def load_stubs(proto_dir):
    out = tempfile.mkdtemp(prefix="kd_peer_stubs_")
    from grpc_tools import protoc
    rc = protoc.main(["protoc", "-I" + proto_dir, "--python_out=" + out, "--grpc_python_out=" + out,
                      os.path.join(proto_dir, "kdrank.proto")])
    if rc != 0:
        sys.exit("protoc failed on %s/kdrank.proto" % proto_dir)
    sys.path.insert(0, out)
    import kdrank_pb2, kdrank_pb2_grpc
    return kdrank_pb2, kdrank_pb2_grpc


FEATURES = [  # name, kind, group, dim, rows
    ("user_dense", 0, 0, 4, 0),
    ("user_id", 1, 0, 8, 1000),
    ("item_dense", 0, 1, 3, 0),
    ("item_id", 1, 1, 8, 5000),
]
TASKS = [("click", 0, "sigmoid"), ("watch", 1, "identity")]
MAX_CAND = 2000


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--proto", required=True)
    ap.add_argument("--pause-at", type=float, default=-1, help="seconds after the first Score call")
    ap.add_argument("--pause-ms", type=float, default=200)
    ap.add_argument("--fail-share", type=float, default=0)
    ap.add_argument("--fail-code", default="UNAVAILABLE")
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--version", type=int, default=1)
    ap.add_argument("--canary-version", type=int, default=0)
    ap.add_argument("--canary-weight", type=float, default=0)
    ap.add_argument("--workers", type=int, default=64)
    ap.add_argument("--service-ms", type=float, default=0,
                    help="each call holds one global lock this long: capacity 1000/ms calls/s")
    ap.add_argument("--stats", default=None)
    ap.add_argument("--repo", default=None, help="serve the highest REPO/<n>/model.kdr version (polled)")
    a = ap.parse_args()
    pb, pbg = load_stubs(a.proto)
    fail_code = getattr(grpc.StatusCode, a.fail_code)
    lock = threading.Lock()
    st = {"calls": 0, "failed": 0, "invalid": 0, "ok": 0, "first_call": None, "paused_calls": 0,
          "cand_counts": {}, "first_item_ids": {}}
    rng = random.Random(a.seed)
    spec = {f[0]: f for f in FEATURES}

    def check(req):
        if req.context.count != 1:
            return "context.count must be 1, found %d" % req.context.count
        n = req.candidates.count
        if not (1 <= n <= MAX_CAND):
            return "candidates.count %d out of 1..%d" % (n, MAX_CAND)
        seen = set()
        for grp, batch, rows in ((0, req.context, 1), (1, req.candidates, n)):
            for c in batch.columns:
                f = spec.get(c.name)
                if f is None or f[2] != grp:
                    return "unknown feature %s in group %d" % (c.name, grp)
                if f[1] == 0 and len(c.floats) != rows * f[3]:
                    return "%s: expected %d floats, found %d" % (c.name, rows * f[3], len(c.floats))
                if f[1] == 1 and (len(c.ids) == 0 or len(c.ids) % rows):
                    return "%s: expected a multiple of %d ids, found %d" % (c.name, rows, len(c.ids))
                seen.add(c.name)
        if len(seen) != len(FEATURES):
            return "missing features: %s" % sorted(set(spec) - seen)
        return None

    cur = {"version": a.version}
    if a.repo:
        def watch():  # a version becomes current once its directory holds model.kdr
            while True:
                best = cur["version"]
                for d in os.listdir(a.repo):
                    if d.isdigit() and int(d) > best and os.path.exists(os.path.join(a.repo, d, "model.kdr")):
                        best = int(d)
                cur["version"] = best
                time.sleep(0.05)
        threading.Thread(target=watch, daemon=True).start()

    busy = threading.Lock()

    class Ranker(pbg.RankerServicer):
        def Score(self, req, ctx):
            now = time.monotonic()
            with lock:
                st["calls"] += 1
                if st["first_call"] is None:
                    st["first_call"] = now
                t0 = st["first_call"]
                fail = rng.random() < a.fail_share
            if a.pause_at >= 0:
                p0 = t0 + a.pause_at
                p1 = p0 + a.pause_ms / 1000.0
                if p0 <= now < p1:
                    with lock:
                        st["paused_calls"] += 1
                    time.sleep(p1 - now)
            if a.service_ms > 0:
                with busy:  # one call at a time
                    time.sleep(a.service_ms / 1000.0)
            if fail:
                with lock:
                    st["failed"] += 1
                ctx.abort(fail_code, "peer_server: injected failure")
            err = check(req)
            if err:
                with lock:
                    st["invalid"] += 1
                ctx.abort(grpc.StatusCode.INVALID_ARGUMENT, err)
            n = req.candidates.count
            cols = {c.name: c for c in req.candidates.columns}
            dense, ids = cols["item_dense"].floats, cols["item_id"].ids
            k = len(ids) // n
            scores = []
            for i in range(n):
                z = 0.1 * sum(dense[i * 3:(i + 1) * 3]) + (ids[i * k] % 7) / 7.0 - 0.5
                scores += [1.0 / (1.0 + math.exp(-z)), z]
            canary = a.canary_version and (req.routing_key % 10000) < a.canary_weight * 10000
            with lock:
                st["ok"] += 1
                st["cand_counts"][n] = st["cand_counts"].get(n, 0) + 1
                st["first_item_ids"][ids[0]] = st["first_item_ids"].get(ids[0], 0) + 1
            return pb.ScoreResponse(model="tiny-peer", version=a.canary_version if canary else cur["version"],
                                    version_label="canary" if canary else "stable",
                                    tasks=[t[0] for t in TASKS], scores=scores)

        def GetModelMetadata(self, req, ctx):
            return pb.ModelMetadata(
                model="tiny-peer", version=a.version, version_label="stable", architecture="peer-test",
                features=[pb.FeatureSpec(name=f[0], kind=f[1], group=f[2], dim=f[3], rows=f[4]) for f in FEATURES],
                tasks=[pb.TaskSpec(name=t[0], type=t[1], served=True, transform=t[2]) for t in TASKS],
                max_candidates=MAX_CAND)

    server = grpc.server(futures.ThreadPoolExecutor(max_workers=a.workers),
                         options=[("grpc.so_reuseport", 0)])
    pbg.add_RankerServicer_to_server(Ranker(), server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    print("PORT %d" % port, flush=True)
    deadline = time.monotonic() + 600  # never outlive a test by much
    while not stop.wait(0.1) and time.monotonic() < deadline:
        pass
    server.stop(0)
    if a.stats:
        with lock:
            s = dict(st)
        s.pop("first_call", None)
        with open(a.stats, "w") as f:
            json.dump(s, f)


if __name__ == "__main__":
    main()
