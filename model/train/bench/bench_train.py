"""bench_train.py - training throughput of kdrank-train against PyTorch 1.13 on this machine, in the
same run (the machine is shared and noisy: compare the ratio, not the absolute figures).

For each shape (ref-student, ref-teacher-2x layer widths, 64-wide embeddings on the synthetic
world's features) and each thread count (1, 2): kdrank-train fit for one epoch, then the same
network in PyTorch (Adam for dense weights + SparseAdam for embedding rows, the same batch size,
torch.set_num_threads(T)) for one epoch over the same training table. Reports examples/s, the
ratio, and the click test AUC of both after that epoch (equal quality check).
PyTorch's time excludes assembling batches (they are built before timing); kdrank's includes
everything inside its step (embedding gather from the table).

Both start from the same initialisation scheme (the model core's); each figure is the best of
--reps alternating runs.
usage: /usr/bin/python3 model/train/bench/bench_train.py --trainer build/model/train/kdrank-train
       [--rows 100000] [--batch 512] [--shapes ref-student,ref-teacher-2x] [--threads 1,2] [--reps 2]
"""
import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time

# PyTorch's OpenMP workers spin while waiting by default; on a shared machine that collapses its
# 2-thread throughput. PASSIVE makes them sleep instead: the setting most favourable to PyTorch here.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn as nn  # noqa: E402,F401

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "..", "..", "tests", "trainer"))
import torch_ref  # noqa: E402

WIDTHS = {"ref-student": ([256, 128], [64]), "ref-teacher-2x": ([512, 256], [128]),
          "ref-teacher-4x": ([1024, 512], [256])}
M64 = (1 << 64) - 1


def hash_rows(ids, rows):
    """kd_hash_row (splitmix64 of id, mod rows), vectorised."""
    with np.errstate(over="ignore"):
        z = ids.astype(np.uint64) + np.uint64(0x9E3779B97F4A7C15)
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        z ^= z >> np.uint64(31)
    return (z % np.uint64(rows)).astype(np.int64)


def load_split(path, schema, emb_dim):
    cols = schema["columns"]
    with open(path) as f:
        header = f.readline().rstrip("\n").split("\t")
        lines = [ln.rstrip("\n").split("\t") for ln in f if ln.strip()]
    pos = {c: i for i, c in enumerate(header)}
    man_feats, feat, labels, tasks = [], {}, [], []
    for c in cols:
        i = pos.get(c["name"])
        if c["role"] in ("sparse", "dense"):
            grp = 0 if c["group"] == "context" else 1
            sep = c.get("sep", ",")
            if c["role"] == "sparse":
                lists = [[int(v) for v in ln[i].split(sep)] if ln[i] else [] for ln in lines]
                off = np.zeros(len(lists) + 1, dtype=np.int64)
                off[1:] = np.cumsum([len(x) for x in lists])
                ids = np.array([v for x in lists for v in x], dtype=np.int64)
                feat[c["name"]] = (off, hash_rows(ids, c["rows"]))
                man_feats.append({"name": c["name"], "sparse": 1, "group": grp, "dim": emb_dim, "rows": c["rows"]})
            else:
                x = np.array([[float(v) for v in ln[i].split(sep)] for ln in lines], dtype=np.float32)
                feat[c["name"]] = x
                man_feats.append({"name": c["name"], "sparse": 0, "group": grp, "dim": c.get("dim", 1), "rows": 0})
        elif c["role"] == "label":
            y = np.array([float(ln[i]) if ln[i] else np.nan for ln in lines], dtype=np.float32)
            if c.get("transform") == "log1p":
                y = np.log1p(y)
            labels.append(y)
            tasks.append({"name": c["name"], "binary": int(c["type"] == "binary"), "weight": 1.0})
    d = torch_ref.Data.__new__(torch_ref.Data)
    d.n, d.feat, d.labels = len(lines), feat, np.stack(labels, axis=1)
    return d, man_feats, tasks


def run_kdrank(trainer, ddir, shape, threads, batch):
    sh, tw = WIDTHS[shape]
    cmd = [trainer, "fit", "--train", f"{ddir}/train.tsv", "--test", f"{ddir}/test.tsv", "--schema",
           f"{ddir}/schema.json", "--arch", shape, "--emb-dim", "64", "--epochs", "1", "--batch", str(batch),
           "--threads", str(threads), "--lr", "0.002", "--progress", "plain", "--summary", f"{ddir}/sum.json"]
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    with open(f"{ddir}/sum.json") as f:
        s = json.load(f)
    return s["examples_per_sec"], s["best"]["click"]["auc"], " ".join(cmd)


def run_torch(tr, te, man, threads, batch, seed=1):
    torch.set_num_threads(threads)
    torch.manual_seed(seed)
    net = torch_ref.Net(man)
    # the model core's initialisation scheme (kd_model_init_random): He-uniform weights, N(0, 0.05)
    # embeddings, U(-0.05, 0.05) biases, so both start from the same distribution
    with torch.no_grad():
        for name, p in net.named_parameters():
            if name.startswith("embs."):
                p.normal_(0.0, 0.05)
            elif p.dim() == 2:
                lim = (6.0 / p.shape[1]) ** 0.5
                p.uniform_(-lim, lim)
            else:
                p.uniform_(-0.05, 0.05)
    opts = torch_ref.optimizers(man, net)
    rng = np.random.default_rng(seed)
    perm = rng.permutation(tr.n)
    batches = [tr.batch(perm[s:s + batch], man) for s in range(0, tr.n, batch)]
    t0 = time.perf_counter()
    for b, y in batches:
        for o in opts:
            o.zero_grad()
        loss, _ = torch_ref.loss_fn(man, net(b), y)
        loss.backward()
        for o in opts:
            o.step()
    dt = time.perf_counter() - t0
    with torch.no_grad():
        b, y = te.batch(np.arange(te.n), man)
        z = net(b).numpy()
    k = [t["name"] for t in man["tasks"]].index("click")
    from torch_check import auc  # exact AUC with ties, as kd_auc
    return tr.n / dt, auc(z[:, k], te.labels[:, k])


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--trainer", required=True)
    ap.add_argument("--rows", type=int, default=100000)
    ap.add_argument("--batch", type=int, default=512)
    ap.add_argument("--shapes", default="ref-student,ref-teacher-2x")
    ap.add_argument("--threads", default="1,2")
    ap.add_argument("--reps", type=int, default=2)
    a = ap.parse_args()
    with tempfile.TemporaryDirectory() as ddir:
        subprocess.run([a.trainer, "synth", "--out", ddir, "--train", str(a.rows), "--test", "20000",
                        "--users", "20000", "--items", "5000"], check=True, stderr=subprocess.DEVNULL)
        with open(f"{ddir}/schema.json") as f:
            schema = json.load(f)
        tr, feats, tasks = load_split(f"{ddir}/train.tsv", schema, 64)
        te, _, _ = load_split(f"{ddir}/test.tsv", schema, 64)
        print(f"synthetic world: {tr.n} train / {te.n} test rows, batch {a.batch}, Adam lr 0.002, 1 epoch")
        print(f"{'shape':16} {'thr':>3} {'kdrank ex/s':>12} {'torch ex/s':>11} {'ratio':>6} "
              f"{'AUC kdrank':>10} {'AUC torch':>10}")
        for shape in a.shapes.split(","):
            sh, tw = WIDTHS[shape]
            man = {"features": feats, "tasks": tasks, "shared": sh, "tower": tw, "act_clip": 0.0,
                   "opt": "adam", "lr": 0.002, "beta1": 0.9, "beta2": 0.999, "eps": 1e-8}
            for t in [int(x) for x in a.threads.split(",")]:
                # alternate the two trainers and keep each one's best of --reps runs: the machine is shared
                kbest, tbest = (0, 0), (0, 0)
                for _ in range(a.reps):
                    kr, ka, _ = run_kdrank(a.trainer, ddir, shape, t, a.batch)
                    tr_rate, ta = run_torch(tr, te, man, t, a.batch)
                    kbest, tbest = max(kbest, (kr, ka)), max(tbest, (tr_rate, ta))
                print(f"{shape:16} {t:>3} {kbest[0]:>12.0f} {tbest[0]:>11.0f} {kbest[0] / tbest[0]:>6.2f} "
                      f"{kbest[1]:>10.4f} {tbest[1]:>10.4f}", flush=True)


if __name__ == "__main__":
    main()
