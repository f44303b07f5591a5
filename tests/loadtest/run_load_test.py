#!/usr/bin/python3
"""run_load_test.py - kdrank-load against the real Python gRPC test peer (peer_server.py).
  co     : the peer stalls every call for 200 ms mid-run; the open-loop run must show it in its
           high percentiles (latency from the intended send time), a closed-loop run hides it
           from p99 (only the few calls in flight wait) but still sees it in its max.
  errors : the peer fails 25% of calls with UNAVAILABLE; the client's count must equal the
           server's exactly and the share must be within 4 binomial standard deviations.
  replay : requests replayed from a proto3-JSON file reach the server unchanged; a bad file is
           rejected with a message naming the request and the feature.
  swap   : the swap scenario publishes versions into a repository the peer watches: atomic
           copies, publish events, the answering version switching, in/out-of-window split.
  ramp   : against a peer with a known capacity (one call at a time, 12 ms each: 83/s), the highest
           rate meeting the p99 SLO is below capacity and the ramp stops at the first failing step.
  cap    : asked twice the peer's capacity with --max-inflight 4: the cap is hit and reported, never
           exceeded, and the wait shows in the latency from intended send times only.
  serve  : against kdrank-serve itself (tiny model): random requests and kdrank-ckpt requests replayed,
           no errors, every answer from version 1. Usage: run_load_test.py serve LOAD PROTO SERVE CKPT
  canary : the peer answers 30% of routing keys as "canary"; --scenario canary must pass, and a
           wrong --canary-weight must fail (exit 3).
Usage: run_load_test.py TEST KDRANK_LOAD PROTO_DIR"""
import atexit, json, math, os, subprocess, sys, tempfile, time

HERE = os.path.dirname(os.path.abspath(__file__))


class Peer:
    def __init__(self, proto, *args):
        self.stats = tempfile.mktemp(suffix=".json", prefix="kd_peer_")
        self.p = subprocess.Popen(["/usr/bin/python3", os.path.join(HERE, "peer_server.py"), "--proto", proto,
                                   "--stats", self.stats] + list(args), stdout=subprocess.PIPE, text=True)
        line = self.p.stdout.readline()
        if not line.startswith("PORT "):
            self.p.kill()
            sys.exit("peer_server did not start: %r" % line)
        self.target = "ipv4:127.0.0.1:%d" % int(line.split()[1])
        atexit.register(self.kill)  # a failing test must not leave its server behind

    def kill(self):
        if self.p.poll() is None:
            self.p.kill()
            self.p.wait()

    def stop(self):
        self.p.terminate()
        self.p.wait(timeout=10)
        with open(self.stats) as f:
            s = json.load(f)
        os.unlink(self.stats)
        return s


def load(binary, target, *args, expect_rc=0):
    out = tempfile.mktemp(suffix=".json", prefix="kd_load_")
    cmd = [binary, "--target", target, "--json", out, "--quiet"] + [str(x) for x in args]
    t0 = time.monotonic()
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=25)
    if r.returncode != expect_rc:
        sys.exit("FAIL: %s exited %d (expected %d): %s" % (" ".join(cmd), r.returncode, expect_rc, r.stderr))
    with open(out) as f:
        j = json.load(f)
    os.unlink(out)
    print("ran %s in %.1f s" % (" ".join(cmd[3:]), time.monotonic() - t0))
    return j


failures = 0


def check(cond, what):
    global failures
    print(("ok    " if cond else "FAIL  ") + what)
    if not cond:
        failures += 1


def test_co(binary, proto):
    common = ["--duration", 3, "--warmup", 0.5, "--candidates", 20, "--connections", 2]
    peer = Peer(proto, "--pause-at", "1.5", "--pause-ms", "200")
    op = load(binary, peer.target, "--rate", 300, *common)
    s = peer.stop()
    check(s["paused_calls"] > 0, "open loop: the peer stalled %d calls" % s["paused_calls"])
    lat = op["latency"]
    print("open loop latency: p50 %.2f p90 %.2f p99 %.2f p99.9 %.2f max %.2f ms (n=%d)" % (
        lat["p50_ms"], lat["p90_ms"], lat["p99_ms"], lat["p99.9_ms"], lat["max_ms"], lat["count"]))
    # ~60 of ~750 measured calls are scheduled inside the 200 ms stall: the slowest 1% waited most of it
    check(lat["p99_ms"] >= 100, "open loop: p99 %.1f ms >= 100 ms (the stall shows)" % lat["p99_ms"])
    check(lat["max_ms"] >= 150, "open loop: max %.1f ms >= 150 ms" % lat["max_ms"])
    check(lat["p50_ms"] < lat["p99_ms"] / 2, "open loop: p50 %.1f ms well under p99 (the stall is in the tail)" % lat["p50_ms"])
    check(op["errors"] == 0, "open loop: no errors (%d)" % op["errors"])

    peer = Peer(proto, "--pause-at", "1.5", "--pause-ms", "200")
    cl = load(binary, peer.target, "--closed", 2, *common)
    s = peer.stop()
    check(s["paused_calls"] > 0, "closed loop: the peer stalled %d calls" % s["paused_calls"])
    lat = cl["latency"]
    print("closed loop latency: p50 %.2f p90 %.2f p99 %.2f p99.9 %.2f max %.2f ms (n=%d)" % (
        lat["p50_ms"], lat["p90_ms"], lat["p99_ms"], lat["p99.9_ms"], lat["max_ms"], lat["count"]))
    check(lat["count"] >= 300, "closed loop: %d calls measured" % lat["count"])
    check(lat["p99_ms"] < 50, "closed loop: p99 %.1f ms < 50 ms (the stall is hidden)" % lat["p99_ms"])
    check(lat["max_ms"] >= 150, "closed loop: max %.1f ms >= 150 ms (but it happened)" % lat["max_ms"])


def test_errors(binary, proto):
    peer = Peer(proto, "--fail-share", "0.25", "--fail-code", "UNAVAILABLE", "--seed", "11")
    d = tempfile.mkdtemp(prefix="kd_out_")
    csv, plot = os.path.join(d, "run.csv"), os.path.join(d, "run")
    j = load(binary, peer.target, "--rate", 500, "--duration", 2.5, "--warmup", 0, "--candidates", "5:50",
             "--connections", 3, "--csv", csv, "--plot", plot)
    s = peer.stop()
    n = j["ok"] + j["errors"]
    unavail = j["errors_by_status"].get("UNAVAILABLE", 0)
    print("client: issued %d ok %d errors %s; server: calls %d ok %d failed %d invalid %d" % (
        j["issued"], j["ok"], j["errors_by_status"], s["calls"], s["ok"], s["failed"], s["invalid"]))
    check(n == j["issued"] and n > 800, "every issued call accounted for (%d of %d)" % (n, j["issued"]))
    check(unavail == j["errors"], "all errors are UNAVAILABLE (%d of %d)" % (unavail, j["errors"]))
    check(unavail == s["failed"], "client UNAVAILABLE %d == server injected failures %d" % (unavail, s["failed"]))
    check(j["ok"] == s["ok"] and s["invalid"] == 0, "client ok %d == server ok %d, %d rejected as invalid" % (
        j["ok"], s["ok"], s["invalid"]))
    share, sd = unavail / n, math.sqrt(0.25 * 0.75 / n)
    check(abs(share - 0.25) <= 4 * sd, "error share %.4f within 4 sd (%.4f) of 0.25" % (share, sd))
    by_iv = sum(iv["err"] for iv in j["intervals"])
    check(by_iv == j["errors"], "per-interval errors sum %d == total %d" % (by_iv, j["errors"]))
    with open(csv) as f:
        rows = [l.strip().split(",") for l in f]
    hdr = rows[0]
    col = {k: i for i, k in enumerate(hdr)}
    check(hdr[:5] == ["second", "warmup", "asked", "ok", "err"], "CSV header %s" % hdr)
    check(sum(int(r[col["ok"]]) for r in rows[1:]) == j["ok"] and sum(int(r[col["err"]]) for r in rows[1:]) == j["errors"]
          and sum(int(r[col["asked"]]) for r in rows[1:]) == j["issued"], "CSV series sums to the totals")
    for png in (plot + "-spectrum.png", plot + "-latency.png"):
        with open(png, "rb") as f:
            check(f.read(8) == b"\x89PNG\r\n\x1a\n" and os.path.getsize(png) > 5000, "%s is a PNG plot" % os.path.basename(png))


def test_canary(binary, proto):
    peer = Peer(proto, "--version", "4", "--canary-version", "5", "--canary-weight", "0.3")
    args = ["--scenario", "canary", "--rate", 400, "--duration", 2.5, "--warmup", 0.5, "--candidates", 10]
    j = load(binary, peer.target, *args, "--canary-weight", 0.3)
    bad = load(binary, peer.target, *args, "--canary-weight", 0.6, expect_rc=3)
    peer.stop()
    c = j["check"]
    check(c["pass"] and abs(c["observed_share"] - 0.3) < 0.06, "canary split %.3f vs 0.3 passes" % c["observed_share"])
    check(not bad["check"]["pass"], "a wrong configured weight (0.6) is reported")
    vers = {(v["version"], v["label"]): v["ok"] for v in j["versions"]}
    check(set(vers) == {(4, "stable"), (5, "canary")}, "per-version breakdown: %s" % vers)
    check(sum(vers.values()) == j["ok"], "per-version counts sum to ok")


def test_replay(binary, proto):
    d = tempfile.mkdtemp(prefix="kd_replay_")
    good = os.path.join(d, "good.json")
    reqs = []
    for n, first in ((3, 111), (7, 222)):
        reqs.append({"model": "ignored", "routingKey": "5",
                     "context": {"count": 1, "columns": [{"name": "user_dense", "floats": [0.5, 1, 2, 3]},
                                                         {"name": "user_id", "ids": ["-42"]}]},
                     "candidates": {"count": n, "columns": [
                         {"name": "item_dense", "floats": [0.25] * (3 * n)},
                         {"name": "item_id", "ids": [str(first)] + [str(9000000000 + i) for i in range(1, n)]}]}})
    with open(good, "w") as f:  # pretty-printed and concatenated, as kdrank-ckpt request writes them
        f.write(json.dumps(reqs[0], indent=2) + "\n" + json.dumps(reqs[1]) + "\n")
    peer = Peer(proto)
    j = load(binary, peer.target, "--replay", good, "--rate", 200, "--duration", 2, "--warmup", 0)
    bad = os.path.join(d, "bad.json")
    reqs[1]["candidates"]["columns"][0]["name"] = "no_such_feature"
    with open(bad, "w") as f:
        f.write(json.dumps(reqs[0]) + json.dumps(reqs[1]))
    r = subprocess.run([binary, "--target", peer.target, "--replay", bad, "--duration", "1"], capture_output=True,
                       text=True, timeout=20)
    s = peer.stop()
    counts = {int(k): v for k, v in s["cand_counts"].items()}
    firsts = {int(k): v for k, v in s["first_item_ids"].items()}
    check(j["errors"] == 0 and s["invalid"] == 0, "replayed requests valid (%d errors, %d invalid)" % (
        j["errors"], s["invalid"]))
    check(set(counts) == {3, 7} and sum(counts.values()) == j["ok"], "server saw only the replayed counts: %s" % counts)
    check(set(firsts) == {111, 222}, "server saw the replayed ids: %s" % firsts)
    check(min(counts.values()) > 0.3 * j["ok"], "both requests drawn (%s)" % counts)
    check(r.returncode == 1 and "request #2" in r.stderr and "no_such_feature" in r.stderr,
          "bad replay file rejected naming request and feature: %r" % r.stderr.strip())


def test_swap(binary, proto):
    repo = tempfile.mkdtemp(prefix="kd_repo_")
    os.mkdir(os.path.join(repo, "m"))
    src = [os.path.join(repo, "a.kdr"), os.path.join(repo, "b.kdr")]
    for i, path in enumerate(src):
        with open(path, "wb") as f:
            f.write(os.urandom(50000 + i))
    peer = Peer(proto, "--repo", os.path.join(repo, "m"), "--version", "0")
    j = load(binary, peer.target, "--scenario", "swap", "--model", "m", "--repo", repo, "--swap-ckpt", ",".join(src),
             "--swap-every", 1, "--swap-window", 0.5, "--rate", 300, "--duration", 4.5, "--warmup", 0.5,
             "--candidates", 10)
    peer.stop()
    c = j["check"]
    pubs = [e for e in j["events"] if e["window"]]
    check(c["published"] == 3 and c["publish_failed"] == 0, "3 versions published (%d, %d failed)" % (
        c["published"], c["publish_failed"]))
    check([e["what"] for e in pubs] == ["publish v1", "publish v2", "publish v3"], "publish events: %s" % pubs)
    dirs = sorted(os.listdir(os.path.join(repo, "m")))
    check(dirs == ["1", "2", "3"], "repository holds exactly versions 1..3, no temporaries: %s" % dirs)
    for v in (1, 2, 3):
        with open(os.path.join(repo, "m", str(v), "model.kdr"), "rb") as f, open(src[(v - 1) % 2], "rb") as g:
            check(f.read() == g.read(), "version %d is a byte copy of %s" % (v, src[(v - 1) % 2]))
    seen = sorted(v["version"] for v in j["versions"])
    check(seen == [0, 1, 2, 3], "answers from versions %s" % seen)
    firsts = {v["version"]: v["first_seen_s"] for v in j["versions"]}
    for e, v in zip(pubs, (1, 2, 3)):
        check(e["t_s"] <= firsts[v] <= e["t_s"] + 0.5, "v%d first answered %.2f s, published %.2f s" % (
            v, firsts[v], e["t_s"]))
    nin, nout = j["latency_in_windows"]["count"], j["latency_outside_windows"]["count"]
    check(nin > 0 and nout > 0 and nin + nout == j["ok"], "in/out windows split %d + %d == %d" % (nin, nout, j["ok"]))
    check(0.2 < nin / j["ok"] < 0.55, "about 3 x 0.5 s of 4 s inside windows (%.2f)" % (nin / j["ok"]))
    check(j["errors"] == 0, "no errors during swaps")


def test_ramp(binary, proto):
    # A ramp judges p99 per 2 s step on a shared 2-core machine: a scheduling stall of the Python
    # peer can fail a low step by itself. One retry; the test fails only if both attempts fail.
    global failures
    before = failures
    ramp_once(binary, proto)
    if failures > before:
        print("ramp: attempt 1 failed %d checks; one retry" % (failures - before))
        failures = before
        ramp_once(binary, proto)


def ramp_once(binary, proto):
    # the peer serves one call at a time for 12 ms: capacity 83 calls/s. Steps 20, 40, 80, 160/s:
    # below capacity p99 stays far under the 200 ms SLO (even on a loaded machine); at 160/s the
    # queue, measured from intended send times, grows by ~77 calls/s and p99 passes the SLO.
    peer = Peer(proto, "--service-ms", "12")
    j = load(binary, peer.target, "--scenario", "ramp", "--ramp-start", 20, "--ramp-factor", 2, "--ramp-max", 400,
             "--step-duration", 2, "--warmup", 0.5, "--slo-p99", 200, "--candidates", 5, "--connections", 2,
             "--deadline-ms", 1000)
    peer.stop()
    c = j["check"]
    steps = [(round(s["asked_rate"]), round(s["p99_ms"], 1), s["meets_slo"]) for s in c["steps"]]
    print("steps (rate, p99 ms, meets SLO): %s" % steps)
    check(20 <= c["max_rate_meeting_slo"] < 83, "max rate under the SLO %.0f in [20, 83)" % c["max_rate_meeting_slo"])
    check(all(s["meets_slo"] for s in c["steps"][:-1]) and not c["steps"][-1]["meets_slo"],
          "the ramp stops at its first failing step")
    check(c["steps"][-1]["asked_rate"] >= 80, "the failing step is at or past capacity (%.0f)" % c["steps"][-1]["asked_rate"])
    check(c["steps"][-1]["p99_ms"] > 200 or c["steps"][-1]["achieved_rate"] < 0.95 * c["steps"][-1]["asked_rate"],
          "the failing step misses the SLO or the asked rate (p99 %.1f ms)" % c["steps"][-1]["p99_ms"])


def test_cap(binary, proto):
    # capacity 100/s (10 ms per call, one at a time), asked 200/s with at most 4 calls in flight:
    # the schedule must wait, say so, never exceed the cap, and still count from intended times
    peer = Peer(proto, "--service-ms", "10")
    j = load(binary, peer.target, "--rate", 200, "--duration", 2, "--warmup", 0, "--max-inflight", 4,
             "--candidates", 5, "--deadline-ms", 5000)
    s = peer.stop()
    lat, svc = j["latency"], j["service_time"]
    print("cap hits %d, waited %.2f s, max in flight %d; p99 %.1f ms corrected, %.1f ms from actual send" % (
        j["inflight_cap_hits"], j["inflight_cap_wait_s"], j["max_inflight"], lat["p99_ms"], svc["p99_ms"]))
    check(j["inflight_cap_hits"] > 0 and j["inflight_cap_wait_s"] > 0.5, "the cap was hit and reported")
    check(j["max_inflight"] == 4, "never more than 4 calls in flight (%d)" % j["max_inflight"])
    check(j["achieved_rate"] < 120, "achieved %.0f/s is the server's capacity, not the asked 200/s" % j["achieved_rate"])
    check(lat["p99_ms"] > 500, "from intended send the wait shows (p99 %.1f ms)" % lat["p99_ms"])
    check(svc["p99_ms"] < lat["p99_ms"] / 4, "from actual send it is hidden (p99 %.1f ms)" % svc["p99_ms"])
    check(j["issued"] == s["calls"] and j["errors"] == 0, "every issued call reached the server once")
    check(abs(j["issued"] + j["unsent_at_end"] - 400) <= 1, "issued %d + never sent %d == the 400 scheduled" % (
        j["issued"], j["unsent_at_end"]))


def test_cli(binary, proto):
    """Bad flags exit 2 naming the flag; no server exits 1 at once naming the address."""
    def run(*args):
        return subprocess.run([binary] + [str(x) for x in args], capture_output=True, text=True, timeout=20)
    for args, needle in ((["--rate", "1"], "--target is required"),
                         (["--target", "ipv4:127.0.0.1:1", "--rate", "abc"], "--rate: expected a number"),
                         (["--target", "ipv4:127.0.0.1:1", "--max-inflight", 4294967297], "--max-inflight: expected at most"),
                         (["--target", "ipv4:127.0.0.1:1", "--candidates", "9:3"], "--candidates"),
                         (["--target", "ipv4:127.0.0.1:1", "--scenario", "x"], "--scenario"),
                         (["--target", "ipv4:127.0.0.1:1", "--scenario", "swap"], "swap: needs"),
                         (["--target", "ipv4:127.0.0.1:1", "--scenario", "canary"], "--canary-weight"),
                         (["--target", "ipv4:127.0.0.1:1", "--bogus", "1"], "unknown option --bogus")):
        r = run(*args)
        check(r.returncode == 2 and needle in r.stderr, "%s -> exit %d, %r" % (args, r.returncode, r.stderr.strip()[:120]))
    t0 = time.monotonic()
    r = run("--target", "ipv4:127.0.0.1:1", "--duration", 1)
    check(r.returncode == 1 and "ipv4:127.0.0.1:1" in r.stderr and "UNAVAILABLE" in r.stderr and
          time.monotonic() - t0 < 10, "no server: exit %d in %.1f s: %r" % (r.returncode, time.monotonic() - t0,
                                                                          r.stderr.strip()[:120]))
    r = run("--help")
    check(r.returncode == 0 and "--slo-p99" in r.stdout, "--help lists the options")


def test_serve(binary, proto, serve, ckpt_tool):
    """kdrank-load against kdrank-serve itself: a tiny model, random and replayed requests."""
    import re, threading
    d = tempfile.mkdtemp(prefix="kd_serve_")
    os.makedirs(os.path.join(d, "repo", "tiny", "1"))
    ck = os.path.join(d, "repo", "tiny", "1", "model.kdr")
    subprocess.run([ckpt_tool, "random", "--preset", "tiny", "--name", "tiny", "-o", ck], check=True, capture_output=True)
    req = os.path.join(d, "req.json")
    with open(req, "w") as f:
        for seed, n in ((1, 3), (2, 40)):
            f.write(subprocess.run([ckpt_tool, "request", "--model", ck, "--candidates", str(n), "--seed", str(seed)],
                                   check=True, capture_output=True, text=True).stdout + "\n")
    p = subprocess.Popen([serve, "--model-repo", os.path.join(d, "repo"), "--listen", "127.0.0.1:0",
                          "--metrics-listen", "", "--threads", "1", "--drain-timeout-ms", "1000"],
                         stderr=subprocess.PIPE, text=True)
    atexit.register(lambda: p.poll() is None and (p.kill(), p.wait()))
    port = None
    for line in p.stderr:
        m = re.search(r"event=listening.*port=(\d+)", line)
        if m:
            port = int(m.group(1))
            break
    if port is None:
        sys.exit("kdrank-serve did not start")
    threading.Thread(target=lambda: [None for _ in p.stderr], daemon=True).start()
    target = "ipv4:127.0.0.1:%d" % port
    j = load(binary, target, "--rate", 200, "--duration", 2, "--warmup", 0.5, "--candidates", "1:200")
    r = load(binary, target, "--rate", 100, "--duration", 1.5, "--warmup", 0, "--replay", req)
    p.terminate()  # the server's own shutdown is tested in tests/server; here only do not leave it behind
    try:
        p.wait(timeout=15)
    except subprocess.TimeoutExpired:
        p.kill()
        p.wait()
    check(j["errors"] == 0 and j["ok"] == j["issued"] - j["warmup_calls"], "random requests: %d ok, %d errors %s" % (
        j["ok"], j["errors"], j["errors_by_status"]))
    check([(v["version"], v["ok"]) for v in j["versions"]] == [(1, j["ok"])], "every answer from version 1: %s" % (
        [(v["version"], v["label"], v["ok"]) for v in j["versions"]]))
    check(j["model"]["name"] == "tiny" and 1 <= j["model"]["mean_candidates"] <= 200, "metadata: %s" % j["model"])
    check(r["errors"] == 0 and r["ok"] == r["issued"], "replayed kdrank-ckpt requests: %d ok, %d errors %s" % (
        r["ok"], r["errors"], r["errors_by_status"]))
    check(abs(r["model"]["mean_candidates"] - 21.5) < 1e-9, "both replayed requests in the pool (mean %g)" % (
        r["model"]["mean_candidates"]))


if __name__ == "__main__":
    test, binary, proto = sys.argv[1], sys.argv[2], sys.argv[3]
    if test == "serve":
        test_serve(binary, proto, sys.argv[4], sys.argv[5])
        print("%d failed" % failures)
        sys.exit(1 if failures else 0)
    {"co": test_co, "errors": test_errors, "canary": test_canary, "replay": test_replay, "swap": test_swap, "ramp": test_ramp, "cap": test_cap, "cli": test_cli}[test](binary, proto)
    print("%d failed" % failures)
    sys.exit(1 if failures else 0)
