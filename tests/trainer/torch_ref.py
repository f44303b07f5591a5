"""torch_ref.py - the kdrank network in PyTorch 1.13, built from a torch_dump manifest.

Same math as model/kdrank_model.h: sparse features are mean-pooled EmbeddingBags over rows already
hashed by the C side, input x = [context features | candidate features] in spec order, shared
layers and per-task towers with clamp(relu(z), max=act_clip), one logit per task. Weights are
(out, in) like torch.nn.Linear, so the C tensors load as they are.
"""
import json
import os

import numpy as np
import torch
import torch.nn as nn


class Data:
    """One split of a dump: dense arrays, hashed sparse rows with offsets, labels."""

    def __init__(self, d, split, man):
        self.n = man["n_" + split]
        self.feat = {}
        for f in man["features"]:
            if f["sparse"]:
                off = np.fromfile(os.path.join(d, f"{split}_{f['name']}_off.bin"), dtype=np.int64)
                rows = np.fromfile(os.path.join(d, f"{split}_{f['name']}_rows.bin"), dtype=np.int64)
                self.feat[f["name"]] = (off, rows)
            else:
                x = np.fromfile(os.path.join(d, f"{split}_{f['name']}_dense.bin"), dtype=np.float32)
                self.feat[f["name"]] = x.reshape(self.n, f["dim"])
        nt = len(man["tasks"])
        self.labels = np.fromfile(os.path.join(d, f"{split}_labels.bin"), dtype=np.float32).reshape(self.n, nt)

    def batch(self, idx, man):
        """Tensors for rows idx: {feature: dense tensor | (ids, offsets)}, labels."""
        out = {}
        for f in man["features"]:
            v = self.feat[f["name"]]
            if f["sparse"]:
                off, rows = v
                a, b = off[idx], off[idx + 1]
                lens = b - a
                starts = np.concatenate([[0], np.cumsum(lens)[:-1]])
                flat = np.repeat(a - starts, lens) + np.arange(lens.sum())
                out[f["name"]] = (torch.from_numpy(rows[flat]), torch.from_numpy(starts.astype(np.int64)))
            else:
                out[f["name"]] = torch.from_numpy(v[idx])
        return out, torch.from_numpy(self.labels[idx])


class Net(nn.Module):
    def __init__(self, man, sparse=True):
        super().__init__()
        self.man = man
        self.clip = man["act_clip"]
        self.embs = nn.ModuleDict()
        width = 0
        for f in man["features"]:
            if f["sparse"]:
                self.embs[f["name"]] = nn.EmbeddingBag(f["rows"], f["dim"], mode="mean", sparse=sparse)
            width += f["dim"]
        self.order = [f for f in man["features"] if f["group"] == 0] + [f for f in man["features"] if f["group"] == 1]
        self.shared = nn.ModuleList()
        for w in man["shared"]:
            self.shared.append(nn.Linear(width, w))
            width = w
        self.towers = nn.ModuleList()
        for _ in man["tasks"]:
            layers, tw = nn.ModuleList(), width
            for w in man["tower"]:
                layers.append(nn.Linear(tw, w))
                tw = w
            layers.append(nn.Linear(tw, 1))
            self.towers.append(layers)

    def act(self, z):
        h = torch.relu(z)
        return torch.clamp(h, max=self.clip) if self.clip > 0 else h

    def forward(self, b):
        parts = []
        for f in self.order:
            v = b[f["name"]]
            parts.append(self.embs[f["name"]](v[0], v[1]) if f["sparse"] else v)
        h = torch.cat(parts, dim=1)
        for L in self.shared:
            h = self.act(L(h))
        outs = []
        for layers in self.towers:
            g = h
            for L in layers[:-1]:
                g = self.act(L(g))
            outs.append(layers[-1](g))
        return torch.cat(outs, dim=1)

    def tensors(self):
        """Parameters in kd_arch_tensor order (emb.*, shared.l.weight/bias, tower.k.j.weight/bias)."""
        t = [self.embs[f["name"]].weight for f in self.man["features"] if f["sparse"]]
        for L in self.shared:
            t += [L.weight, L.bias]
        for layers in self.towers:
            for L in layers:
                t += [L.weight, L.bias]
        return t

    def load_flat(self, flat):
        pos = 0
        with torch.no_grad():
            for p in self.tensors():
                n = p.numel()
                p.copy_(torch.from_numpy(flat[pos:pos + n].reshape(p.shape)))
                pos += n
        assert pos == flat.size, (pos, flat.size)

    def flat(self):
        return np.concatenate([p.detach().numpy().ravel() for p in self.tensors()])


def loss_fn(man, logits, y):
    total = 0.0
    per = []
    for k, t in enumerate(man["tasks"]):
        m = ~torch.isnan(y[:, k])
        if m.sum() == 0:
            per.append(0.0)
            continue
        z, yy = logits[m, k], y[m, k]
        if t["binary"]:
            l = nn.functional.binary_cross_entropy_with_logits(z, yy)
        else:
            l = ((z - yy) ** 2).mean()
        per.append(float(l))
        total = total + t["weight"] * l
    return total, per


def optimizers(man, net):
    emb = [p for n, p in net.named_parameters() if n.startswith("embs.")]
    dense = [p for n, p in net.named_parameters() if not n.startswith("embs.")]
    if man["opt"] == "adam":
        b = (man["beta1"], man["beta2"])
        return [torch.optim.Adam(dense, lr=man["lr"], betas=b, eps=man["eps"]),
                torch.optim.SparseAdam(emb, lr=man["lr"], betas=b, eps=man["eps"])]
    return [torch.optim.Adagrad(emb + dense, lr=man["lr"], initial_accumulator_value=man["init_acc"],
                                eps=man["adagrad_eps"])]


def load_manifest(d):
    with open(os.path.join(d, "manifest.json")) as f:
        return json.load(f)
