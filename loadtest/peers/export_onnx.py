#!/usr/bin/python3
"""export_onnx.py - exports the model of an .npz (from export_ckpt.py) to ONNX for node_peer.js,
through the PyTorch peer's own model code (torch_peer.Model), so both peers compute the same thing.
Graph inputs, one per feature in spec order: dense (rows, dim) float32; sparse (rows, k) int64
embedding ROW indices (the caller hashes ids with kd_hash_row); rows = 1 for context features,
n for candidate features. Output "scores": (n, served tasks) with sigmoid / expm1 applied.
Also writes OUT.json: the architecture (features, tasks) for the peer's metadata.
Usage: export_onnx.py MODEL.npz OUT.onnx"""
import json, os, sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import torch_peer


class Graph(torch.nn.Module):
    def __init__(self, m):
        super().__init__()
        self.m = m

    def forward(self, *inputs):
        m = self.m
        ctx, cand = [], []
        for f, x in zip(m.features, inputs):
            v = x if f["kind"] == "dense" else torch.nn.functional.embedding(x, m.emb[f["name"]]).mean(1)
            (ctx if f["group"] == "context" else cand).append(v)
        c = torch.cat(cand, 1)
        h = torch.cat([torch.cat(ctx, 1).expand(c.shape[0], -1), c], 1) if ctx else c
        for w, b in m.shared:
            h = m.act(torch.addmm(b, h, w.t()))
        out = []
        for name in m.served:
            g = h
            layers = m.towers[name]
            for w, b in layers[:-1]:
                g = m.act(torch.addmm(b, g, w.t()))
            w, b = layers[-1]
            z = torch.addmm(b, g, w.t())
            tk = m.by_name[name]
            if tk["type"] == "binary":
                z = torch.sigmoid(z)
            elif tk["transform"] == "expm1":
                z = torch.exp(z) - 1  # ONNX (opset 13) has no Expm1
            out.append(z)
        return torch.cat(out, 1)


def main():
    npz, out = sys.argv[1], sys.argv[2]
    m = torch_peer.Model(npz)
    if not any(f["group"] == "candidate" for f in m.features):
        sys.exit("%s: the model has no candidate feature" % npz)
    args, names, axes = [], [], {}
    for f in m.features:
        rows = 1 if f["group"] == "context" else 3
        if f["kind"] == "dense":
            args.append(torch.zeros(rows, f["dim"]))
        else:
            args.append(torch.zeros(rows, 2, dtype=torch.long))
        names.append(f["name"])
        ax = {} if f["group"] == "context" else {0: "n"}
        if f["kind"] == "sparse":
            ax[1] = "k_" + f["name"]
        axes[f["name"]] = ax
    axes["scores"] = {0: "n"}
    torch.onnx.export(Graph(m), tuple(args), out, input_names=names, output_names=["scores"], dynamic_axes=axes,
                      opset_version=13)
    with open(os.path.splitext(out)[0] + ".json", "w") as f:
        json.dump(m.arch, f)
    print("exported %s -> %s" % (npz, out))


if __name__ == "__main__":
    main()
