#!/usr/bin/python3
"""torch_peer.py - the peer kdrank is compared with: a Python grpcio server implementing
kdrank.v1.Ranker (Score, GetModelMetadata) that scores with PyTorch, loading the weights exported
from a kdrank checkpoint by export_ckpt.py. It computes what kdrank computes (model/score_ref.c):
context features then candidate features, each group in spec order (sparse: embedding rows
kd_hash_row(id, rows), mean-pooled over the k ids of a row), the shared ReLU layers (clipped at
act_clip when > 0), one ReLU tower per task and a linear head, then sigmoid / expm1 / identity.
Prints "PORT <n>" once serving. Usage: torch_peer.py --npz MODEL.npz --proto DIR [--port 0]"""
import argparse, json, os, signal, sys, tempfile, threading, time
from concurrent import futures

import grpc
import numpy as np
import torch

M64 = np.uint64(0xFFFFFFFFFFFFFFFF)


def load_stubs(proto_dir):
    out = tempfile.mkdtemp(prefix="kd_torch_stubs_")
    from grpc_tools import protoc
    if protoc.main(["protoc", "-I" + proto_dir, "--python_out=" + out, "--grpc_python_out=" + out,
                    os.path.join(proto_dir, "kdrank.proto")]) != 0:
        sys.exit("protoc failed on %s/kdrank.proto" % proto_dir)
    sys.path.insert(0, out)
    import kdrank_pb2, kdrank_pb2_grpc
    return kdrank_pb2, kdrank_pb2_grpc


def hash_rows(ids, rows):
    """kd_hash_row (model/kdrank_model.h) on an int64 array: splitmix64 finaliser, mod rows."""
    with np.errstate(over="ignore"):
        z = ids.astype(np.int64).view(np.uint64) + np.uint64(0x9E3779B97F4A7C15)
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        z ^= z >> np.uint64(31)
    return (z % np.uint64(rows)).astype(np.int64)


class Model:
    def __init__(self, npz):
        d = np.load(npz)
        self.arch = json.loads(bytes(d["__arch__"]).decode())
        t = {k: torch.from_numpy(d[k].copy()) for k in d.files if k != "__arch__"}
        a = self.arch
        self.features = a["features"]
        self.clip = float(a.get("act_clip", 0) or 0)
        self.emb = {f["name"]: t["emb." + f["name"]] for f in self.features if f["kind"] == "sparse"}
        self.shared = [(t["shared.%d.weight" % l], t["shared.%d.bias" % l]) for l in range(len(a["shared"]))]
        nt = len(a["tower"])
        self.towers = {tk["name"]: [(t["tower.%s.%d.weight" % (tk["name"], j)], t["tower.%s.%d.bias" % (tk["name"], j)])
                                    for j in range(nt + 1)] for tk in a["tasks"]}
        self.tasks = a["tasks"]
        self.served = [tk["name"] for tk in self.tasks if tk["served"]]
        self.by_name = {tk["name"]: tk for tk in self.tasks}

    def act(self, x):
        x = torch.relu(x)
        return torch.clamp(x, max=self.clip) if self.clip > 0 else x

    def group(self, batch, grp, rows):
        cols = {c.name: c for c in batch.columns}
        parts = []
        for f in self.features:
            if f["group"] != grp:
                continue
            c = cols.get(f["name"])
            if c is None:
                raise ValueError("feature %s: missing" % f["name"])
            if f["kind"] == "dense":
                v = np.fromiter(c.floats, dtype=np.float32, count=len(c.floats))
                if v.size != rows * f["dim"]:
                    raise ValueError("feature %s: expected %d floats, found %d" % (f["name"], rows * f["dim"], v.size))
                parts.append(torch.from_numpy(v).view(rows, f["dim"]))
            else:
                ids = np.asarray(c.ids, dtype=np.int64)
                if ids.size == 0 or ids.size % rows:
                    raise ValueError("feature %s: expected a multiple of %d ids, found %d" % (f["name"], rows, ids.size))
                k = ids.size // rows
                r = torch.from_numpy(hash_rows(ids, f["rows"]))
                parts.append(self.emb[f["name"]].index_select(0, r).view(rows, k, f["dim"]).mean(1))
        return torch.cat(parts, 1) if parts else torch.zeros(rows, 0)

    @torch.inference_mode()
    def score(self, req, tasks):
        n = req.candidates.count
        if req.context.count != 1:
            raise ValueError("context.count must be 1")
        ctx = self.group(req.context, "context", 1)
        cand = self.group(req.candidates, "candidate", n)
        x = torch.cat([ctx.expand(n, ctx.shape[1]), cand], 1)
        for w, b in self.shared:
            x = self.act(torch.addmm(b, x, w.t()))
        out = []
        for name in tasks:
            h = x
            layers = self.towers[name]
            for w, b in layers[:-1]:
                h = self.act(torch.addmm(b, h, w.t()))
            w, b = layers[-1]
            z = torch.addmm(b, h, w.t())[:, 0]
            tk = self.by_name[name]
            if tk["type"] == "binary":
                z = torch.sigmoid(z)
            elif tk["transform"] == "expm1":
                z = torch.expm1(z)
            out.append(z)
        return torch.stack(out, 1).reshape(-1).tolist()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--npz", required=True)
    ap.add_argument("--proto", required=True)
    ap.add_argument("--port", type=int, default=0)
    ap.add_argument("--workers", type=int, default=8, help="grpcio handler threads")
    ap.add_argument("--torch-threads", type=int, default=1)
    ap.add_argument("--version", type=int, default=1)
    a = ap.parse_args()
    torch.set_num_threads(a.torch_threads)
    pb, pbg = load_stubs(a.proto)
    m = Model(a.npz)
    kinds = {"dense": 0, "sparse": 1}
    groups = {"context": 0, "candidate": 1}

    class Ranker(pbg.RankerServicer):
        def Score(self, req, ctx):
            tasks = list(req.tasks) or m.served
            for t in tasks:
                if t not in m.served:
                    ctx.abort(grpc.StatusCode.INVALID_ARGUMENT, "task %s is not served" % t)
            try:
                scores = m.score(req, tasks)
            except ValueError as e:
                ctx.abort(grpc.StatusCode.INVALID_ARGUMENT, str(e))
            return pb.ScoreResponse(model=m.arch["model"], version=a.version, version_label="stable",
                                    tasks=tasks, scores=scores)

        def GetModelMetadata(self, req, ctx):
            return pb.ModelMetadata(
                model=m.arch["model"], version=a.version, version_label="stable", architecture=m.arch["architecture"],
                features=[pb.FeatureSpec(name=f["name"], kind=kinds[f["kind"]], group=groups[f["group"]], dim=f["dim"],
                                         rows=f["rows"]) for f in m.features],
                tasks=[pb.TaskSpec(name=t["name"], type=0 if t["type"] == "binary" else 1, served=t["served"],
                                   transform=t["transform"]) for t in m.tasks],
                max_candidates=10000)

    server = grpc.server(futures.ThreadPoolExecutor(max_workers=a.workers), options=[("grpc.so_reuseport", 0)])
    pbg.add_RankerServicer_to_server(Ranker(), server)
    port = server.add_insecure_port("127.0.0.1:%d" % a.port)
    if port == 0:
        sys.exit("torch_peer: cannot bind 127.0.0.1:%d" % a.port)
    server.start()
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    print("PORT %d" % port, flush=True)
    while not stop.wait(0.2):
        pass
    server.stop(0)


if __name__ == "__main__":
    main()
