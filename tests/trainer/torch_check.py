"""torch_check.py - kdrank's trainer against PyTorch 1.13 on the same weights and mini-batches.

Runs torch_dump (C: synthetic data, a small multi-task network, 2 threads), then repeats the run in
PyTorch from the same initial weights with the same batches and optimizer (Adam + SparseAdam for
embedding rows, or Adagrad). Checks, with the tolerances stated below:
  - per-step total loss over the first SNAP steps: relative difference <= 1e-4;
  - every weight after SNAP steps: |w_c - w_torch| <= 2e-4 + 1e-3 |w_torch|;
  - test AUC of every binary task after the full run (all epochs): |AUC_c - AUC_torch| <= 0.002.
Exit 77 (CTest skip) with a printed reason if torch is missing.
"""
import argparse
import os
import subprocess
import sys

SNAP = 20
EPOCHS = 2

try:
    import numpy as np
    import torch
except ImportError as ex:  # pragma: no cover
    print(f"SKIP: PyTorch/numpy not importable by {sys.executable}: {ex}")
    sys.exit(77)

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import torch_ref  # noqa: E402


def auc(score, label):
    """Exact AUC with ties counted one half (average ranks), as kd_auc."""
    order = np.argsort(score, kind="mergesort")
    s, y = score[order], label[order]
    ranks = np.empty(len(s))
    i = 0
    while i < len(s):
        j = i
        while j < len(s) and s[j] == s[i]:
            j += 1
        ranks[i:j] = 0.5 * (i + 1 + j)
        i = j
    npos = y.sum()
    nneg = len(y) - npos
    return (ranks[y > 0.5].sum() - npos * (npos + 1) / 2) / (npos * nneg)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--dump", required=True)
    ap.add_argument("--opt", default="adam")
    ap.add_argument("--dir", required=True)
    a = ap.parse_args()
    os.makedirs(a.dir, exist_ok=True)
    subprocess.run([a.dump, a.dir, a.opt, str(SNAP), str(EPOCHS)], check=True)
    torch.set_num_threads(1)
    torch.manual_seed(0)
    man = torch_ref.load_manifest(a.dir)
    tr = torch_ref.Data(a.dir, "train", man)
    te = torch_ref.Data(a.dir, "test", man)
    net = torch_ref.Net(man)
    net.load_flat(np.fromfile(os.path.join(a.dir, "w0.bin"), dtype=np.float32))
    opts = torch_ref.optimizers(man, net)
    order = np.fromfile(os.path.join(a.dir, "order.bin"), dtype=np.int64).reshape(man["steps"], man["batch"])
    c_losses = np.fromfile(os.path.join(a.dir, "losses.bin"), dtype=np.float64)
    fails = 0
    worst = 0.0
    for s in range(man["steps"]):
        b, y = tr.batch(order[s], man)
        for o in opts:
            o.zero_grad()
        loss, _ = loss_fn_total(man, net, b, y)
        loss.backward()
        for o in opts:
            o.step()
        if s < SNAP:
            rel = abs(float(loss) - c_losses[s]) / max(1e-12, abs(float(loss)))
            worst = max(worst, rel)
            if rel > 1e-4:
                fails += 1
                print(f"step {s}: loss C {c_losses[s]:.7f} torch {float(loss):.7f} (rel {rel:.2e})")
        if s + 1 == SNAP:
            wc = np.fromfile(os.path.join(a.dir, "w_snap.bin"), dtype=np.float32)
            wt = net.flat()
            err = np.abs(wc - wt) - (2e-4 + 1e-3 * np.abs(wt))
            nbad = int((err > 0).sum())
            print(f"{a.opt}: after {SNAP} steps: loss max rel diff {worst:.2e}; weights max |diff| "
                  f"{np.abs(wc - wt).max():.2e} over {wt.size} ({nbad} outside tolerance)")
            if nbad:
                fails += 1
    with torch.no_grad():
        idx = np.arange(te.n)
        b, y = te.batch(idx, man)
        lt = net(b).numpy()
    lc = np.fromfile(os.path.join(a.dir, "test_logits.bin"), dtype=np.float32).reshape(te.n, len(man["tasks"]))
    for k, t in enumerate(man["tasks"]):
        if not t["binary"]:
            rmse_c = float(np.sqrt(((lc[:, k] - te.labels[:, k]) ** 2).mean()))
            rmse_t = float(np.sqrt(((lt[:, k] - te.labels[:, k]) ** 2).mean()))
            print(f"{a.opt}: {t['name']} test RMSE after {man['steps']} steps: C {rmse_c:.4f} torch {rmse_t:.4f}")
            continue
        ac, at = auc(lc[:, k], te.labels[:, k]), auc(lt[:, k], te.labels[:, k])
        ok = abs(ac - at) <= 0.002
        print(f"{a.opt}: {t['name']} test AUC after {man['steps']} steps: C {ac:.4f} torch {at:.4f} "
              f"(|diff| {abs(ac - at):.4f} {'<=' if ok else '>'} 0.002)")
        fails += not ok
    print("PASS" if fails == 0 else f"FAIL ({fails})")
    return 1 if fails else 0


def loss_fn_total(man, net, b, y):
    return torch_ref.loss_fn(man, net(b), y)


if __name__ == "__main__":
    sys.exit(main())
