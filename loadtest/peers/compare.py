#!/usr/bin/python3
"""compare.py - kdrank-serve against peer servers on the same model and the same load.

For each server: start it on 127.0.0.1 (free port), check its scores equal kdrank's reference
(`kdrank-ckpt score --oracle`) on a request of --candidates candidates, then drive it with
kdrank-load (open loop, latency from intended send times):
  * max sustainable rate: doubling steps then bisection; a rate is sustained when p99 <= --slo-p99,
    no errors and >= 95% of the asked rate completes;
  * p50/p99 at one fixed rate (--fixed-rate, default: half the lowest sustained rate), and the
    server process's CPU time per request (utime+stime from /proc over that run).
Prints one table with kdrank's ratio to each peer. Peers: "torch" (torch_peer.py: Python grpcio +
PyTorch, weights exported by export_ckpt.py) and "node" (node_peer/node_peer.js: Node
@grpc/grpc-js + onnxruntime-node on the ONNX graph export_onnx.py makes from the same weights;
needs `ONNXRUNTIME_NODE_INSTALL=skip npm install` in node_peer/ once).
Usage: compare.py --build BUILD [--preset ref-student | --ckpt FILE] [--candidates 500] [--slo-p99 MS]"""
import argparse, json, os, queue, re, shutil, subprocess, sys, tempfile, threading, time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.abspath(os.path.join(HERE, "..", ".."))
TICK = os.sysconf("SC_CLK_TCK")


def log(*a):
    print(*a, file=sys.stderr, flush=True)


def cpu_seconds(pid):
    with open("/proc/%d/stat" % pid) as f:
        rest = f.read().rsplit(")", 1)[1].split()
    return (int(rest[11]) + int(rest[12])) / TICK


class Server:
    def __init__(self, name, cmd, port_re, stream):
        self.name = name
        self.p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        self.tail = []
        found = queue.Queue()

        def drain(f, watch):  # keep reading so the server never blocks on a full pipe
            for line in f:
                if watch and found.empty():
                    self.tail = (self.tail + [line])[-20:]
                    m = re.search(port_re, line)
                    if m:
                        found.put(int(m.group(1)))
            if watch:
                found.put(None)

        for f, watch in ((self.p.stdout, stream == "stdout"), (self.p.stderr, stream == "stderr")):
            threading.Thread(target=drain, args=(f, watch), daemon=True).start()
        try:
            port = found.get(timeout=120)
        except queue.Empty:
            port = None
        if port is None:
            self.p.kill()
            sys.exit("%s did not start: %s" % (name, "".join(self.tail)))
        self.target = "ipv4:127.0.0.1:%d" % port

    def stop(self):
        if self.p.poll() is None:
            self.p.terminate()
            try:
                self.p.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.p.kill()
                self.p.wait()


def check_scores(server, req_json, want, pb, pbg, tol):
    import grpc
    from google.protobuf import json_format
    req = json_format.Parse(open(req_json).read(), pb.ScoreRequest())
    req.model = ""
    with grpc.insecure_channel(server.target.replace("ipv4:", "")) as ch:
        resp = pbg.RankerStub(ch).Score(req, timeout=30)
    got = list(resp.scores)
    if len(got) != len(want["scores"]) or list(resp.tasks) != want["tasks"]:
        return False, "shape: %d scores %s, kdrank %d %s" % (len(got), list(resp.tasks), len(want["scores"]), want["tasks"])
    worst = max(abs(a - b) / max(1.0, abs(b)) for a, b in zip(got, want["scores"]))
    return worst <= tol, "max |diff|/max(1,|ref|) = %.2e over %d scores (tolerance %.0e)" % (worst, len(got), tol)


def run_load(a, server, rate, duration, extra=()):
    out = tempfile.mktemp(suffix=".json", prefix="kd_cmp_")
    cmd = [a.load, "--target", server.target, "--rate", str(rate), "--duration", str(duration), "--warmup", "1",
           "--candidates", str(a.candidates), "--pool", "16", "--connections", str(a.connections), "--threads", "1",
           "--deadline-ms", "2000", "--max-inflight", "500", "--json", out, "--quiet"] + list(extra)
    cpu0 = cpu_seconds(server.p.pid)
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=duration + 60)
    cpu1 = cpu_seconds(server.p.pid)
    if r.returncode != 0 or not os.path.exists(out):
        sys.exit("kdrank-load failed (%d): %s" % (r.returncode, r.stderr))
    with open(out) as f:
        j = json.load(f)
    os.unlink(out)
    j["server_cpu_s"] = cpu1 - cpu0
    return j


def sustained(j, rate, slo):
    return (j["errors"] == 0 and j["ok"] > 0 and j["latency"]["p99_ms"] <= slo and j["achieved_rate"] >= 0.95 * rate
            and j["inflight_cap_hits"] == 0)


def max_rate(a, server):
    """Returns (highest sustained rate, server CPU ms per request during that step)."""
    lo, hi, rate, cpu = 0.0, None, a.start_rate, {}
    while rate <= a.max_rate:
        j = run_load(a, server, rate, a.step_duration)
        ok = sustained(j, rate, a.slo_p99)
        log("  %-7s %8.1f req/s: p99 %8.2f ms, achieved %8.1f, errors %d -> %s" % (
            server.name, rate, j["latency"]["p99_ms"], j["achieved_rate"], j["errors"], "ok" if ok else "no"))
        cpu[rate] = 1000.0 * j["server_cpu_s"] / max(1, j["issued"])
        if not ok:
            hi = rate
            break
        lo, rate = rate, rate * 2
    if hi is None:
        return lo, cpu.get(lo, 0.0)
    for _ in range(a.bisect):
        if lo == 0:
            mid = hi / 2
        else:
            mid = (lo + hi) / 2
        j = run_load(a, server, round(mid, 1), a.step_duration)
        ok = sustained(j, mid, a.slo_p99)
        cpu[mid] = 1000.0 * j["server_cpu_s"] / max(1, j["issued"])
        log("  %-7s %8.1f req/s: p99 %8.2f ms, achieved %8.1f, errors %d -> %s" % (
            server.name, mid, j["latency"]["p99_ms"], j["achieved_rate"], j["errors"], "ok" if ok else "no"))
        if ok:
            lo = mid
        else:
            hi = mid
    return lo, cpu.get(lo, 0.0)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--build", required=True, help="build dir with server/kdrank-serve, loader/kdrank-ckpt, loadtest/kdrank-load")
    ap.add_argument("--preset", default="ref-student")
    ap.add_argument("--ckpt", default=None, help="checkpoint to serve (default: kdrank-ckpt random --preset)")
    ap.add_argument("--candidates", type=int, default=500)
    ap.add_argument("--slo-p99", type=float, default=100.0, help="ms")
    ap.add_argument("--fixed-rate", type=float, default=0, help="req/s (0: half the lowest sustained rate)")
    ap.add_argument("--start-rate", type=float, default=10)
    ap.add_argument("--max-rate", type=float, default=20000)
    ap.add_argument("--bisect", type=int, default=3)
    ap.add_argument("--step-duration", type=float, default=5)
    ap.add_argument("--fixed-duration", type=float, default=8)
    ap.add_argument("--connections", type=int, default=4)
    ap.add_argument("--servers", default="kdrank,torch,node")
    ap.add_argument("--kdrank-threads", type=int, default=0)
    # 1: on the 2-CPU test machine one intra-op thread scored a 500-candidate ref-student request in
    # 14.5 ms and two in 72.7 ms (their spinning competes with the gRPC threads)
    ap.add_argument("--torch-threads", type=int, default=1)
    ap.add_argument("--tolerance", type=float, default=1e-4)
    ap.add_argument("--json", default=None)
    a = ap.parse_args()
    b = os.path.abspath(a.build)
    serve, ckpt_tool, a.load = (os.path.join(b, "server", "kdrank-serve"), os.path.join(b, "loader", "kdrank-ckpt"),
                                os.path.join(b, "loadtest", "kdrank-load"))
    for f in (serve, ckpt_tool, a.load):
        if not os.access(f, os.X_OK):
            sys.exit("missing %s: build kdrank first (cmake --build %s)" % (f, a.build))
    work = tempfile.mkdtemp(prefix="kd_compare_")
    servers = []
    try:
        repo = os.path.join(work, "repo")
        os.makedirs(os.path.join(repo, "m", "1"))
        ck = os.path.join(repo, "m", "1", "model.kdr")
        if a.ckpt:
            shutil.copyfile(a.ckpt, ck)
        else:
            subprocess.run([ckpt_tool, "random", "--preset", a.preset, "--seed", "1", "--name", "m", "-o", ck],
                           check=True, capture_output=True)
        npz = os.path.join(work, "model.npz")
        subprocess.run(["/usr/bin/python3", os.path.join(HERE, "export_ckpt.py"), "--ckpt-tool", ckpt_tool, ck, npz],
                       check=True, capture_output=True)
        req = os.path.join(work, "req.json")
        subprocess.run([ckpt_tool, "request", "--model", ck, "--candidates", str(a.candidates), "--seed", "5", "-o", req],
                       check=True, capture_output=True)
        want = json.loads(subprocess.run([ckpt_tool, "score", ck, "--request", req, "--oracle"], check=True,
                                         capture_output=True, text=True).stdout)
        sys.path.insert(0, HERE)
        import torch_peer
        pb, pbg = torch_peer.load_stubs(os.path.join(ROOT, "proto"))
        names = a.servers.split(",")
        for name in names:
            if name not in ("kdrank", "torch", "node"):
                sys.exit("unknown server %s (kdrank, torch, node)" % name)
        onnx = os.path.join(work, "model.onnx")
        if "node" in names:
            if not os.path.isdir(os.path.join(HERE, "node_peer", "node_modules")):
                sys.exit("node peer: run `ONNXRUNTIME_NODE_INSTALL=skip npm install` in %s first" %
                         os.path.join(HERE, "node_peer"))
            subprocess.run(["/usr/bin/python3", os.path.join(HERE, "export_onnx.py"), npz, onnx], check=True,
                           capture_output=True)

        def start(name):  # one server at a time, so they never compete for the CPUs
            if name == "kdrank":
                s = Server("kdrank", [serve, "--model-repo", repo, "--listen", "127.0.0.1:0", "--metrics-listen", "",
                                      "--threads", str(a.kdrank_threads), "--max-candidates",
                                      str(max(1000, a.candidates))], r"event=listening.*port=(\d+)", "stderr")
            elif name == "node":
                s = Server("node", ["node", os.path.join(HERE, "node_peer", "node_peer.js"), onnx,
                                    os.path.join(ROOT, "proto")], r"^PORT (\d+)", "stdout")
            else:
                s = Server("torch", ["/usr/bin/python3", os.path.join(HERE, "torch_peer.py"), "--npz", npz, "--proto",
                                     os.path.join(ROOT, "proto"), "--torch-threads", str(a.torch_threads)],
                           r"^PORT (\d+)", "stdout")
            servers.append(s)
            return s

        def stop(s):
            s.stop()
            servers.remove(s)

        rows = {}
        for name in names:
            s = start(name)
            ok, msg = check_scores(s, req, want, pb, pbg, a.tolerance)
            log("%s: scores vs kdrank-ckpt --oracle: %s (%s)" % (name, "EQUAL" if ok else "DIFFERENT", msg))
            if not ok:
                sys.exit("%s's scores differ from kdrank's: not comparing speed" % name)
            log("%s: searching the max rate with p99 <= %.1f ms at %d candidates/request" % (name, a.slo_p99, a.candidates))
            mr, mc = max_rate(a, s)
            rows[name] = {"score_check": msg, "max_rate": mr, "cpu_ms_per_req_at_max": mc}
            stop(s)
        fixed = a.fixed_rate or max(1.0, round(min(r["max_rate"] for r in rows.values()) / 2, 1))
        for name in names:
            s = start(name)
            j = run_load(a, s, fixed, a.fixed_duration)
            stop(s)
            r = rows[name]
            r.update(fixed_rate=fixed, p50_ms=j["latency"]["p50_ms"], p99_ms=j["latency"]["p99_ms"],
                     errors=j["errors"], ok=j["ok"], cpu_ms_per_req=1000.0 * j["server_cpu_s"] / max(1, j["issued"]))
            log("%s at %.1f req/s: p50 %.2f p99 %.2f ms, %.2f ms CPU/request" % (name, fixed, r["p50_ms"], r["p99_ms"],
                                                                              r["cpu_ms_per_req"]))
    finally:
        for s in list(servers):
            s.stop()
        shutil.rmtree(work, ignore_errors=True)
    print("model %s, %d candidates/request, p99 SLO %.1f ms, %d CPUs, client kdrank-load (open loop, %d connections)" % (
        a.ckpt or a.preset, a.candidates, a.slo_p99, os.cpu_count(), a.connections))
    hdr = ("| server | max rate @ p99 <= %g ms (req/s) | p50 @ %g req/s (ms) | p99 @ %g req/s (ms) "
           "| CPU/request @ max rate (ms) |" % (a.slo_p99, fixed, fixed))
    print(hdr)
    print("|---|---|---|---|---|")
    for n, r in rows.items():
        print("| %s | %.1f | %.2f | %.2f | %.2f |" % (n, r["max_rate"], r["p50_ms"], r["p99_ms"], r["cpu_ms_per_req_at_max"]))
    if "kdrank" in rows:
        k = rows["kdrank"]
        for n, r in rows.items():
            if n == "kdrank":
                continue
            div = lambda x, y: x / y if y else float("inf")
            print("| kdrank vs %s | %.2fx | %.2fx lower | %.2fx lower | %.2fx less |" % (
                n, div(k["max_rate"], r["max_rate"]), div(r["p50_ms"], k["p50_ms"]), div(r["p99_ms"], k["p99_ms"]),
                div(r["cpu_ms_per_req_at_max"], k["cpu_ms_per_req_at_max"])))
    if a.json:
        with open(a.json, "w") as f:
            json.dump({"candidates": a.candidates, "slo_p99_ms": a.slo_p99, "fixed_rate": fixed, "servers": rows}, f, indent=1)


if __name__ == "__main__":
    main()
