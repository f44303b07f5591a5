#!/usr/bin/python3
"""test_ckpt_cli.py - the kdrank-ckpt command line, end to end.

random/verify/inspect exit codes and output; `score` (fast path) and `score --oracle` against each
other AND against an independent NumPy implementation that reads the checkpoint bytes following
loader/FORMAT.md and runs the network in float64 (so the document, the CLI's request binding and
the oracle are all checked); proto3 JSON forms (snake_case names, ids as numbers or strings,
tasks); every request error names its cause and exits 1.

usage: test_ckpt_cli.py PATH/TO/kdrank-ckpt
"""
import json
import math
import os
import shutil
import struct
import subprocess
import sys
import tempfile

import numpy as np

CLI = sys.argv[1]
# Tolerances: the fast path (sgemm, other summation order) vs the oracle; the oracle (float32) vs
# NumPy in float64. Relative, with an absolute floor of 1e-6.
FAST_RTOL = 1e-4
ORACLE_RTOL = 1e-5
failed = 0
passed = 0


def check(cond, what):
    global failed, passed
    if cond:
        passed += 1
    else:
        failed += 1
        print("CHECK failed:", what, file=sys.stderr)


def run(*args):
    return subprocess.run([CLI, *args], capture_output=True, text=True, timeout=600)


# ---- an independent reader of the format (FORMAT.md) and forward pass ----

def read_ckpt(path):
    b = open(path, "rb").read()
    assert b[:4] == b"KDRK", "magic"
    (major, minor, bom, hsize, fsize, moff, msize, n_meta, nt, toff, tsize, esize, align, doff,
     dsize) = struct.unpack_from("<HHIIQQQIIQQIIQQ", b, 4)
    assert (major, bom, fsize, align) == (1, 0x0A0B0C0D, len(b), 64)
    meta, p = {}, moff
    for _ in range(n_meta):
        (kl,) = struct.unpack_from("<I", b, p)
        key = b[p + 4:p + 4 + kl].decode()
        p += 4 + kl
        (t,) = struct.unpack_from("<I", b, p)
        p += 4
        fmt = {0: "<I", 1: "<Q", 2: "<q", 3: "<f", 4: "<d"}.get(t)
        if fmt:
            (v,) = struct.unpack_from(fmt, b, p)
            p += struct.calcsize(fmt)
        elif t == 5:
            v, p = bool(b[p]), p + 1
        else:
            (n,) = struct.unpack_from("<Q", b, p)
            v, p = b[p + 8:p + 8 + n].decode(), p + 8 + n
        meta[key] = v
    assert p == moff + msize
    tensors = {}
    for i in range(nt):
        r = toff + i * esize
        name = b[r:r + 96].split(b"\0")[0].decode()
        dtype, ndim = struct.unpack_from("<II", b, r + 96)
        shape = struct.unpack_from("<4Q", b, r + 104)[:ndim]
        off, size = struct.unpack_from("<QQ", b, r + 136)
        assert dtype == 0 and (doff + off) % 64 == 0
        tensors[name] = np.frombuffer(b, dtype="<f4", count=size // 4, offset=doff + off).reshape(shape)
    return meta, tensors


M64 = (1 << 64) - 1


def hash_row(i, rows):
    z = (i + 0x9E3779B97F4A7C15) & M64
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & M64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & M64
    z ^= z >> 31
    return z % rows


def np_score(path, req, task_names=None):
    meta, T = read_ckpt(path)
    nf = meta["arch.n_features"]
    feats = [{k: meta[f"arch.feature.{i}.{k}"] for k in ("name", "kind", "group", "dim", "rows")} for i in range(nf)]
    cols = {}
    for g, batch in (("context", req["context"]), ("candidate", req["candidates"])):
        for c in batch["columns"]:
            cols[c["name"]] = c
    n = int(req["candidates"]["count"])
    parts = {"context": [], "candidate": []}
    for f in feats:
        c = cols[f["name"]]
        rows = 1 if f["group"] == "context" else n
        if f["kind"] == "dense":
            v = np.array([float(x) for x in c["floats"]], dtype=np.float32).astype(np.float64)
            parts[f["group"]].append(v.reshape(rows, f["dim"]))
        else:
            ids = [int(x) for x in c["ids"]]
            k = len(ids) // rows
            E = T["emb." + f["name"]].astype(np.float64)
            out = np.zeros((rows, f["dim"]))
            for r in range(rows):
                for j in range(k):
                    out[r] += E[hash_row(ids[r * k + j], f["rows"])]
            parts[f["group"]].append(out / k)
    ctx = np.concatenate(parts["context"], axis=1) if parts["context"] else np.zeros((1, 0))
    x = np.concatenate([np.repeat(ctx, n, axis=0)] + parts["candidate"], axis=1)
    clip = meta["arch.act_clip"]

    def act(h):
        h = np.maximum(h, 0)
        return np.minimum(h, clip) if clip > 0 else h

    h = x
    for l in range(meta["arch.n_shared"]):
        h = act(h @ T[f"shared.{l}.weight"].astype(np.float64).T + T[f"shared.{l}.bias"])
    names = [meta[f"arch.task.{t}.name"] for t in range(meta["arch.n_tasks"])]
    if task_names is None:
        task_names = [nm for t, nm in enumerate(names) if meta[f"arch.task.{t}.served"]]
    out = []
    for nm in task_names:
        t = names.index(nm)
        g = h
        nt_ = meta["arch.n_tower"]
        for j in range(nt_):
            g = act(g @ T[f"tower.{nm}.{j}.weight"].astype(np.float64).T + T[f"tower.{nm}.{j}.bias"])
        logit = (g @ T[f"tower.{nm}.{nt_}.weight"].astype(np.float64).T + T[f"tower.{nm}.{nt_}.bias"])[:, 0]
        if meta[f"arch.task.{t}.type"] == "binary":
            out.append(1 / (1 + np.exp(-logit)))
        elif meta[f"arch.task.{t}.xform"] == "log1p":
            out.append(np.expm1(logit))
        else:
            out.append(logit)
    return task_names, np.stack(out, axis=1).reshape(-1)


def close(a, b, rtol, atol=1e-6):
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if a.shape != b.shape:
        return False, float("inf")
    err = np.abs(a - b) / (np.abs(b) + atol / rtol)
    return bool(np.all(np.abs(a - b) <= rtol * np.abs(b) + atol)), float(err.max() if err.size else 0)


def score(path, reqfile, *extra):
    r = run("score", path, "--request", reqfile, *extra)
    check(r.returncode == 0, f"score {path} {reqfile} {extra}: rc {r.returncode} {r.stderr}")
    return json.loads(r.stdout) if r.returncode == 0 else None


def write_json(d, name, obj):
    p = os.path.join(d, name)
    with open(p, "w") as f:
        json.dump(obj, f)
    return p


def main():
    d = tempfile.mkdtemp(prefix="kdt-cli-", dir=".")
    try:
        tiny = os.path.join(d, "tiny.kdrk")
        r = run("random", "--preset", "tiny", "--seed", "3", "--name", "feed-ranker", "--meta",
                "provenance.teacher_id=teacher-4x@7", "-o", tiny)
        check(r.returncode == 0 and "wrote" in r.stdout, f"random: {r.returncode} {r.stderr}")

        # verify
        r = run("verify", tiny)
        check(r.returncode == 0 and r.stdout.startswith("OK " + tiny), f"verify: {r.stdout} {r.stderr}")
        check("model feed-ranker, architecture tiny" in r.stdout, r.stdout)
        crc = r.stdout.strip().split("crc ")[-1]
        b = bytearray(open(tiny, "rb").read())
        bad = os.path.join(d, "bad.kdrk")
        b[os.path.getsize(tiny) // 2] ^= 0x04
        open(bad, "wb").write(b)
        r = run("verify", bad)
        check(r.returncode == 1 and r.stdout.startswith("FAIL ") and "data CRC32C" in r.stdout, r.stdout)
        r = run("verify", os.path.join(d, "missing.kdrk"))
        check(r.returncode == 1 and "open:" in r.stdout, r.stdout)
        r = run("verify")
        check(r.returncode == 2, f"verify without a file: rc {r.returncode}")
        r = run("random", "--preset", "nope", "-o", os.path.join(d, "x.kdrk"))
        check(r.returncode == 1 and "unknown preset 'nope'" in r.stderr, r.stderr)
        r = run("frobnicate")
        check(r.returncode == 2 and "usage" in r.stderr, r.stderr)

        # inspect, against the independent reader
        meta, T = read_ckpt(tiny)
        r = run("inspect", tiny, "--json")
        check(r.returncode == 0, r.stderr)
        j = json.loads(r.stdout)
        check(j["model"] == "feed-ranker" and j["architecture"] == "tiny", str(j)[:200])
        check(j["crc"] == crc, f"inspect crc {j['crc']} verify crc {crc}")
        check(j["file_size"] == os.path.getsize(tiny), "file_size")
        check(j["format_version"] == "1.0", j["format_version"])
        check([t["name"] for t in j["tensors"]] == list(T.keys()), "tensor order")
        check(j["params"] == sum(v.size for v in T.values()), "params")
        check([t["name"] for t in j["tasks"]] == ["click", "like", "watch_time", "satisfied"], "tasks")
        check(j["tasks"][2]["transform"] == "expm1" and j["tasks"][0]["transform"] == "sigmoid", "transforms")
        check([f["name"] for f in j["features"]] == [meta[f"arch.feature.{i}.name"] for i in range(meta["arch.n_features"])], "features")
        check(j["metadata"]["provenance.teacher_id"] == "teacher-4x@7" == meta["provenance.teacher_id"], "provenance")
        check(meta["provenance.distill_mode"] == "none" and meta["general.name"] == "feed-ranker", "default provenance")
        r = run("inspect", tiny)
        check(r.returncode == 0 and "provenance.teacher_id" in r.stdout and "tower.click.1.bias" in r.stdout, r.stdout[:300])

        # score: fast vs oracle vs NumPy, several shapes
        worst_fast = worst_np = 0.0
        for n, k in ((1, 1), (7, 3), (64, 2), (300, 1)):
            rq = os.path.join(d, f"req-{n}-{k}.json")
            r = run("request", "--model", tiny, "--candidates", str(n), "--k", str(k), "--seed", str(n), "-o", rq)
            check(r.returncode == 0, r.stderr)
            req = json.load(open(rq))
            fast, orc = score(tiny, rq), score(tiny, rq, "--oracle")
            if not fast or not orc:
                continue
            check(fast["model"] == "feed-ranker" and fast["tasks"] == orc["tasks"], str(fast)[:100])
            check(len(orc["scores"]) == n * 4, "score count")
            ok, err = close(fast["scores"], orc["scores"], FAST_RTOL)
            worst_fast = max(worst_fast, err)
            check(ok, f"fast vs oracle n={n}: max rel err {err}")
            names, ref = np_score(tiny, req)
            check(names == orc["tasks"], f"{names} {orc['tasks']}")
            ok, err = close(orc["scores"], ref, ORACLE_RTOL)
            worst_np = max(worst_np, err)
            check(ok, f"oracle vs numpy n={n}: max rel err {err}")
        print(f"tiny: fast vs oracle max rel err {worst_fast:.3g}; oracle vs numpy max rel err {worst_np:.3g}")

        rq = os.path.join(d, "req-7-3.json")
        req = json.load(open(rq))
        base = score(tiny, rq, "--oracle")
        # each kernel of the fast path (avx2 only where the CPU has it)
        avx2 = "avx2" in open("/proc/cpuinfo").read() and "fma" in open("/proc/cpuinfo").read()
        for kern in ["scalar", "avx2"] if avx2 else ["scalar"]:
            sk = score(tiny, rq, "--kernel", kern)
            if sk and base:
                ok, err = close(sk["scores"], base["scores"], FAST_RTOL)
                check(ok, f"--kernel {kern} vs oracle: {err}")
        res = run("score", tiny, "--request", rq, "--kernel", "sse9")
        check(res.returncode == 2 and "--kernel: expected auto, scalar or avx2" in res.stderr, res.stderr)
        # --tasks selects and orders columns
        sub = score(tiny, rq, "--oracle", "--tasks", "watch_time,click")
        if base and sub:
            full = np.array(base["scores"]).reshape(7, 4)
            check(sub["tasks"] == ["watch_time", "click"], sub["tasks"])
            check(np.array_equal(np.array(sub["scores"]).reshape(7, 2), full[:, [2, 0]]), "--tasks columns")
        # tasks in the request
        req2 = dict(req, tasks=["like"])
        s2 = score(tiny, write_json(d, "t.json", req2), "--oracle")
        if base and s2:
            check(s2["tasks"] == ["like"] and s2["scores"] == [row[1] for row in np.array(base["scores"]).reshape(7, 4).tolist()], "request tasks")
        # snake_case names and ids as JSON numbers give the same answer
        req3 = json.loads(json.dumps(req))
        req3["routing_key"] = req3.pop("routingKey")
        for batch in (req3["context"], req3["candidates"]):
            for c in batch["columns"]:
                if "ids" in c:
                    c["ids"] = [int(x) % 1000 for x in c["ids"]]
        req4 = json.loads(json.dumps(req3))
        for batch in (req4["context"], req4["candidates"]):
            for c in batch["columns"]:
                if "ids" in c:
                    c["ids"] = [str(x) for x in c["ids"]]
        s3 = score(tiny, write_json(d, "snake.json", req3), "--oracle")
        s4 = score(tiny, write_json(d, "strids.json", req4), "--oracle")
        check(s3 is not None and s3 == s4, "ids as numbers == ids as strings (snake_case names)")
        if s3:
            ok, err = close(s3["scores"], np_score(tiny, req3)[1], ORACLE_RTOL)
            check(ok, f"snake_case request vs numpy: {err}")
        # floats printed with %.9g parse back to the same float32
        if base:
            s = np.array(base["scores"], dtype=np.float32)
            check(all(float(np.float32(float("%.9g" % v))) == float(v) for v in s), "%.9g round trip")

        # request errors: exit 1 and a message naming the cause
        def bad_req(mut, want):
            rr = json.loads(json.dumps(req))
            mut(rr)
            p = write_json(d, "bad.json", rr)
            res = run("score", tiny, "--request", p)
            check(res.returncode == 1 and want in res.stderr, f"want '{want}', got rc {res.returncode}: {res.stderr.strip()}")

        bad_req(lambda r: r["candidates"]["columns"].append({"name": "nope", "floats": [1]}),
                "candidates column 'nope': expected a feature of model tiny, found no such feature")
        bad_req(lambda r: r["candidates"]["columns"].pop(0), "candidates: column for feature 'item_id' (sparse, dim 8): expected, found none")
        bad_req(lambda r: r["context"]["columns"].append(r["candidates"]["columns"].pop()),
                "context column 'item_dense': expected under candidates")
        bad_req(lambda r: r["candidates"]["columns"].append(dict(r["candidates"]["columns"][0])),
                "candidates column 'item_id': expected once, found twice")
        bad_req(lambda r: r["context"].update(count=2), "context.count: expected 1, found 2")
        bad_req(lambda r: r["candidates"].update(count=8), "candidates column 'item_id': 21 ids, expected a positive multiple of 8 rows")
        bad_req(lambda r: r.update(candidate={}), "unknown field \"candidate\"")
        bad_req(lambda r: r.update(tasks=["nope"]), "tasks[0] 'nope': expected a served task of tiny, found no such task")
        bad_req(lambda r: r["candidates"]["columns"][2].update(floats=[0.5] * 20), "candidates column 'item_dense': 20 floats, expected 21")
        bad_req(lambda r: r["candidates"]["columns"][0].update(ids=[2 ** 60] * 21), "expected an integer (as a string beyond 2^53)")
        bad_req(lambda r: r["candidates"]["columns"][0].update(ids=["12x"] * 21), "ids[0]: expected an integer")
        bad_req(lambda r: r["candidates"]["columns"][2].update(floats=[1e39] * 21), "expected a value within float range")
        bad_req(lambda r: r.update(routingKey=-1), "routingKey: expected 0..")
        p = os.path.join(d, "broken.json")
        open(p, "w").write('{"context": {"count": 1,')
        res = run("score", tiny, "--request", p)
        check(res.returncode == 1 and "not valid JSON" in res.stderr, res.stderr)
        res = run("score", tiny, "--request", rq, "--tasks", "nope")
        check(res.returncode == 1 and "--tasks: 'nope'" in res.stderr, res.stderr)
        # NaN inputs are scored as given (the server validates); the output stays valid JSON
        rr = json.loads(json.dumps(req))
        rr["candidates"]["columns"][2]["floats"][0] = "NaN"
        s = score(tiny, write_json(d, "nan.json", rr), "--oracle")
        check(s is not None and len(s["scores"]) == 28, "NaN input gives a JSON answer")

        # ref-student: fast vs oracle vs NumPy on one request
        st = os.path.join(d, "student.kdrk")
        r = run("random", "--preset", "ref-student", "--seed", "5", "-o", st)
        check(r.returncode == 0, r.stderr)
        rq = os.path.join(d, "req-student.json")
        check(run("request", "--model", st, "--candidates", "33", "--k", "2", "-o", rq).returncode == 0, "request student")
        fast, orc = score(st, rq), score(st, rq, "--oracle")
        if fast and orc:
            ok, e1 = close(fast["scores"], orc["scores"], FAST_RTOL)
            check(ok, f"student fast vs oracle {e1}")
            ok, e2 = close(orc["scores"], np_score(st, json.load(open(rq)))[1], ORACLE_RTOL)
            check(ok, f"student oracle vs numpy {e2}")
            print(f"ref-student: fast vs oracle max rel err {e1:.3g}; oracle vs numpy max rel err {e2:.3g}")
        r = run("request", "--preset", tiny, "--candidates", "3")
        check(r.returncode == 0 and json.loads(r.stdout)["model"] == "feed-ranker", "request --preset FILE")
        r = run("request", "--preset", "nope", "--candidates", "3")
        check(r.returncode == 1 and "unknown preset 'nope'" in r.stderr, r.stderr)
        r = run("request", "--preset", "ref-student", "--candidates", "2")
        check(r.returncode == 0 and json.loads(r.stdout)["candidates"]["count"] == 2, "request --preset to stdout")
    finally:
        shutil.rmtree(d, ignore_errors=True)
    print(f"checks: {passed} passed, {failed} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
