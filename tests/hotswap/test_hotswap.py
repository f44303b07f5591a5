"""test_hotswap.py - kdrank-serve hot-swap and canary, driven by real gRPC clients (Python grpcio)
against the real server over a real model repository:
- stress: client threads score continuously while versions are published every few ms and the
  canary weight changes: zero failed calls, every response's scores equal `kdrank-ckpt score` of
  the version it claims;
- corrupt, truncated, wrong-shape and half-written (slowly written under the final name) versions
  are rejected (FAILED with their error) while the old version keeps serving;
- canary split: weight 0.2 over 20k distinct keys -> 0.2 +- 0.01, each key sticks to one version;
  requests without a key split per request;
- Promote / Rollback are atomic and survive a restart (serving.json);
- the Admin service refuses a missing or wrong bearer token and works with the right one
  (grpcio and kdrank-ctl).
Usage: test_hotswap.py --serve BIN --ckpt BIN --ctl BIN --proto-dir DIR [unittest args]"""
import json
import os
import random
import shutil
import struct
import subprocess
import sys
import tempfile
import threading
import time
import unittest

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "interop", "python"))
import kdserve  # noqa: E402

CTL = None
argv = []
for i, a in enumerate(sys.argv):
    if a == "--ctl" and i + 1 < len(sys.argv):
        CTL = sys.argv[i + 1]
argv = [a for i, a in enumerate(sys.argv) if not (a == "--ctl" or (i > 0 and sys.argv[i - 1] == "--ctl"))]
sys.argv = kdserve.configure(argv)

import grpc  # noqa: E402
from google.protobuf import json_format  # noqa: E402

pb, pbg, hp, hpg = kdserve.stubs()
TOKEN = "s3cret-token-%d" % os.getpid()
SLOW = int(os.environ.get("KD_TEST_SLOW", "1"))  # >1 under sanitizers: fewer iterations


def token_file():
    d = tempfile.mkdtemp(prefix="kdtok-")
    p = os.path.join(d, "token")
    with open(p, "w") as f:
        f.write(TOKEN + "\n")
    return p


def admin_port(srv):
    m = __import__("re").search(r"event=admin_listening .*port=(\d+)", srv.text())
    assert m, srv.text()
    return int(m.group(1))


def auth(tok=TOKEN):
    return (("authorization", "Bearer " + tok),)


def make_seed_files(n, preset="tiny"):
    """n checkpoints with distinct weights (seeds 101..); returns their paths."""
    d = tempfile.mkdtemp(prefix="kdseeds-")
    out = []
    for k in range(n):
        p = os.path.join(d, "s%d.kdr" % k)
        kdserve.ckpt("random", "--preset", preset, "--seed", 101 + k, "--name", "m", "-o", p)
        out.append(p)
    return out


def request_for(model_file, n=3, seed=5):
    path = tempfile.mktemp(prefix="kdreq-", suffix=".json")
    kdserve.ckpt("request", "--model", model_file, "--candidates", n, "--seed", seed, "-o", path)
    with open(path) as f:
        req = json_format.Parse(f.read(), pb.ScoreRequest())
    return req, path


def expected_scores(model_file, req_path):
    """The scores `kdrank-ckpt score` gives, as float32 values (the server's are bit-exact)."""
    out = json.loads(kdserve.ckpt("score", model_file, "--request", req_path))
    vals = out["scores"] if isinstance(out, dict) else out
    return [struct.unpack("f", struct.pack("f", x))[0] for x in vals]


def publish(repo, model, version, src):
    """Atomic publication: copy into a hidden directory, then rename it to the version."""
    tmp = os.path.join(repo, model, ".publish-%d" % version)
    os.makedirs(tmp, exist_ok=True)
    shutil.copyfile(src, os.path.join(tmp, "model.kdr"))
    os.rename(tmp, os.path.join(repo, model, str(version)))


def crc32c(data, crc=0):
    """CRC32C (Castagnoli), as the checkpoint format stores it."""
    global _CRC_TABLE
    if "_CRC_TABLE" not in globals():
        t = []
        for i in range(256):
            c = i
            for _ in range(8):
                c = (c >> 1) ^ 0x82F63B78 if c & 1 else c >> 1
            t.append(c)
        _CRC_TABLE = t
    crc ^= 0xFFFFFFFF
    for b in data:
        crc = _CRC_TABLE[(crc ^ b) & 0xFF] ^ (crc >> 8)
    return crc ^ 0xFFFFFFFF


def wrong_shape_copy(src, dst):
    """A copy of src whose first 2-D tensor records its shape transposed (same byte size), with
    every CRC re-sealed: only the shape-vs-architecture check can reject it."""
    with open(src, "rb") as fh:
        b = bytearray(fh.read())
    hsize, = struct.unpack_from("<I", b, 12)
    fsize, moff, msize = struct.unpack_from("<QQQ", b, 16)
    nt, = struct.unpack_from("<I", b, 44)
    toff, tsize = struct.unpack_from("<QQ", b, 48)
    esize, = struct.unpack_from("<I", b, 64)
    for i in range(nt):
        r = toff + i * esize
        ndim, = struct.unpack_from("<I", b, r + 100)
        s0, s1 = struct.unpack_from("<QQ", b, r + 104)
        if ndim == 2 and s0 != s1:
            struct.pack_into("<QQ", b, r + 104, s1, s0)
            break
    struct.pack_into("<I", b, 92, crc32c(bytes(b[toff:toff + tsize])))
    struct.pack_into("<I", b, 124, 0)
    struct.pack_into("<I", b, 124, crc32c(bytes(b[:hsize])))
    c = crc32c(bytes(b[:hsize]))
    c = crc32c(bytes(b[moff:moff + msize]), c)
    c = crc32c(bytes(b[toff:toff + tsize]), c)
    struct.pack_into("<I", b, fsize - 8, c)
    with open(dst, "wb") as f:
        f.write(b)


class Fleet:
    """A repository with model m (versions from seed files) and a running server with Admin."""

    def __init__(self, seeds, versions, *extra):
        self.repo = tempfile.mkdtemp(prefix="kdhot-")
        os.makedirs(os.path.join(self.repo, "m"))
        for v in versions:
            publish(self.repo, "m", v, seeds[(v - 1) % len(seeds)])
        self.tok = token_file()
        self.extra = extra
        self.start()

    def start(self):
        self.srv = kdserve.Server(self.repo, "--admin-token-file", self.tok, "--rescan-interval-ms", 200,
                                  *self.extra)
        self.ch = grpc.insecure_channel(self.srv.target())
        self.ranker = pbg.RankerStub(self.ch)
        self.ach = grpc.insecure_channel("127.0.0.1:%d" % admin_port(self.srv))
        self.admin = pbg.AdminStub(self.ach)

    def stop(self):
        self.ch.close()
        self.ach.close()
        code = self.srv.stop()
        assert code == 0, "server exit code %s\n%s" % (code, self.srv.text()[-4000:])

    def status(self):
        return self.admin.ListModels(pb.ListModelsRequest(), metadata=auth(), timeout=30).models[0]

    def versions(self):
        return {v.version: v for v in self.status().versions}


class AdminAuthTest(unittest.TestCase):
    def test_token(self):
        seeds = make_seed_files(2)
        f = Fleet(seeds, [1, 2])
        try:
            for md in [(), auth("wrong-token"), (("authorization", TOKEN),), (("authorization", "Bearer"),)]:
                with self.assertRaises(grpc.RpcError) as cm:
                    f.admin.ListModels(pb.ListModelsRequest(), metadata=md, timeout=10)
                self.assertEqual(cm.exception.code(), grpc.StatusCode.UNAUTHENTICATED, md)
            with self.assertRaises(grpc.RpcError) as cm:
                f.admin.Promote(pb.ModelRequest(model="m"), metadata=auth("nope"), timeout=10)
            self.assertEqual(cm.exception.code(), grpc.StatusCode.UNAUTHENTICATED)
            st = f.status()
            self.assertEqual((st.model, st.stable_version, st.canary_version), ("m", 2, 0))
            # Admin is not served on the scoring address, and Score is not served on the admin one.
            with self.assertRaises(grpc.RpcError) as cm:
                pbg.AdminStub(f.ch).ListModels(pb.ListModelsRequest(), metadata=auth(), timeout=10)
            self.assertEqual(cm.exception.code(), grpc.StatusCode.UNIMPLEMENTED)
            # Errors of authorised calls.
            for call, code in [(lambda: f.admin.SetCanary(pb.SetCanaryRequest(model="m", version=1, weight=1.5), metadata=auth()), grpc.StatusCode.INVALID_ARGUMENT),
                               (lambda: f.admin.SetCanary(pb.SetCanaryRequest(model="zz", version=1, weight=0.5), metadata=auth()), grpc.StatusCode.NOT_FOUND),
                               (lambda: f.admin.SetCanary(pb.SetCanaryRequest(model="m", version=7, weight=0.5), metadata=auth()), grpc.StatusCode.NOT_FOUND),
                               (lambda: f.admin.Promote(pb.ModelRequest(model="m"), metadata=auth()), grpc.StatusCode.FAILED_PRECONDITION)]:
                with self.assertRaises(grpc.RpcError) as cm:
                    call()
                self.assertEqual(cm.exception.code(), code)
            # kdrank-ctl with the right and a wrong token.
            addr = "127.0.0.1:%d" % admin_port(f.srv)
            p = subprocess.run([CTL, "--addr", addr, "--token-file", f.tok, "canary", "m", "1", "0.25"],
                               capture_output=True, text=True, timeout=60)
            self.assertEqual(p.returncode, 0, p.stderr)
            self.assertIn("stable=2 canary=1 canary_weight=0.25", p.stdout)
            bad = os.path.join(os.path.dirname(f.tok), "bad")
            with open(bad, "w") as fh:
                fh.write("not-the-token\n")
            p = subprocess.run([CTL, "--addr", addr, "--token-file", bad, "list"], capture_output=True,
                               text=True, timeout=60)
            self.assertEqual(p.returncode, 1)
            self.assertIn("status 16", p.stderr)
            p = subprocess.run([CTL, "--addr", addr, "--token-file", f.tok, "list"], capture_output=True,
                               text=True, timeout=60)
            self.assertEqual(p.returncode, 0, p.stderr)
            self.assertIn("version=1 state=AVAILABLE label=canary", p.stdout)
            self.assertIn("admin_call method=SetCanary model=m version=1 weight=0.25", f.srv.text())
            self.assertIn("code=UNAUTHENTICATED", f.srv.text())
        finally:
            f.stop()


class CanarySplitTest(unittest.TestCase):
    def test_split_sticky(self):
        seeds = make_seed_files(2)
        f = Fleet(seeds, [1, 2])
        try:
            f.admin.SetCanary(pb.SetCanaryRequest(model="m", version=1, weight=0.2), metadata=auth(), timeout=30)
            req, _ = request_for(seeds[0], n=1)
            req.model = "m"
            rng = random.Random(7)
            keys = rng.sample(range(1, 1 << 62), 20000)

            def route(ks):
                out = {}
                for i in range(0, len(ks), 250):
                    futs = []
                    for k in ks[i:i + 250]:
                        r = pb.ScoreRequest()
                        r.CopyFrom(req)
                        r.routing_key = k
                        futs.append((k, f.ranker.Score.future(r, timeout=600)))
                    for k, fu in futs:
                        resp = fu.result()
                        out[k] = (resp.version, resp.version_label)
                return out

            first = route(keys)
            canary = sum(1 for v in first.values() if v == (1, "canary"))
            stable = sum(1 for v in first.values() if v == (2, "stable"))
            self.assertEqual(canary + stable, 20000)
            share = canary / 20000.0
            print("canary share over 20000 keys: %.4f" % share)
            self.assertLess(abs(share - 0.2), 0.01)
            # Sticky: the same keys (a sample of 4000) again go to the same version.
            again = route(keys[:4000])
            moved = sum(1 for k, v in again.items() if first[k] != v)
            self.assertEqual(moved, 0)
            # Key 0: split per request (both versions appear for the same empty key).
            req.routing_key = 0
            res = []
            for _ in range(4):  # 1000 calls, 250 in flight at a time
                futs = [f.ranker.Score.future(req, timeout=600) for _ in range(250)]
                res += [fu.result().version for fu in futs]
            share0 = res.count(1) / 1000.0
            print("canary share of 1000 key-0 requests: %.3f" % share0)
            self.assertTrue(0.12 < share0 < 0.28, share0)
            # Pins.
            r = pb.ScoreRequest()
            r.CopyFrom(req)
            r.version_label = "canary"
            resp = f.ranker.Score(r, timeout=30)
            self.assertEqual((resp.version, resp.version_label), (1, "canary"))
            r.version = 2
            resp = f.ranker.Score(r, timeout=30)
            self.assertEqual((resp.version, resp.version_label), (2, "stable"))
            # Weight 0 sends nothing to the canary; weight 1 everything.
            f.admin.SetCanary(pb.SetCanaryRequest(model="m", version=0, weight=1.0), metadata=auth(), timeout=30)
            self.assertEqual(set(v for v, _ in route(keys[:500]).values()), {1})
            f.admin.SetCanary(pb.SetCanaryRequest(model="m", version=0, weight=0.0), metadata=auth(), timeout=30)
            self.assertEqual(set(v for v, _ in route(keys[:500]).values()), {2})
            # Per-label metrics: both labels have request counts and a mean score per task.
            import urllib.request
            text = urllib.request.urlopen("http://127.0.0.1:%d/metrics" % f.srv.metrics_port, timeout=30).read().decode()
            self.assertIn('version_label="canary"', text)
            self.assertRegex(text, r'kdrank_task_score_mean\{model="m",version="1",version_label="canary",task="[^"]+"\} ')
            self.assertRegex(text, r'kdrank_total_seconds_bucket\{model="m",version="2",version_label="stable",le="\+Inf"\} [1-9]')
            self.assertIn('kdrank_model_version_state{model="m",version="1",state="AVAILABLE",label="canary"} 1', text)
        finally:
            f.stop()


class PromoteRollbackTest(unittest.TestCase):
    def test_promote_rollback_restart(self):
        seeds = make_seed_files(3)
        f = Fleet(seeds, [1, 2, 3], "--auto-promote", 0)
        req, _ = request_for(seeds[0], n=2)
        req.model = "m"
        try:
            st = f.status()
            self.assertEqual((st.stable_version, st.canary_version), (3, 0))  # first start: newest
            f.admin.SetCanary(pb.SetCanaryRequest(model="m", version=2, weight=0.5), metadata=auth(), timeout=30)
            # Clients keep scoring through Promote: after it returns, every call is on version 2.
            stop = threading.Event()
            errors, after = [], []
            promoted = threading.Event()

            def client():
                k = 1
                while not stop.is_set():
                    r = pb.ScoreRequest()
                    r.CopyFrom(req)
                    r.routing_key = k
                    k += 1
                    try:
                        resp = f.ranker.Score(r, timeout=30)
                        if promoted.is_set():
                            after.append((resp.version, resp.version_label))
                    except grpc.RpcError as e:
                        errors.append(e)
            ths = [threading.Thread(target=client) for _ in range(3)]
            for t in ths:
                t.start()
            time.sleep(0.3)
            st = f.admin.Promote(pb.ModelRequest(model="m"), metadata=auth(), timeout=30)
            promoted.set()
            time.sleep(0.3)
            stop.set()
            for t in ths:
                t.join()
            self.assertEqual(errors, [])
            self.assertGreater(len(after), 0)
            self.assertEqual(set(after), {(2, "stable")})
            self.assertEqual((st.stable_version, st.canary_version, st.previous_stable_version), (2, 0, 3))
            # Restart: the same state (not the newest version).
            f.stop()
            f.start()
            st = f.status()
            self.assertEqual((st.stable_version, st.canary_version), (2, 0))
            self.assertEqual(f.ranker.Score(req, timeout=30).version, 2)
            # Canary + restart keeps canary and weight.
            f.admin.SetCanary(pb.SetCanaryRequest(model="m", version=1, weight=0.3), metadata=auth(), timeout=30)
            f.stop()
            f.start()
            st = f.status()
            self.assertEqual((st.stable_version, st.canary_version, round(st.canary_weight, 6)), (2, 1, 0.3))
            # Rollback drops the canary; a second one returns stable to the previous version.
            st = f.admin.Rollback(pb.ModelRequest(model="m"), metadata=auth(), timeout=30)
            self.assertEqual((st.stable_version, st.canary_version), (2, 0))
            st = f.admin.Rollback(pb.ModelRequest(model="m"), metadata=auth(), timeout=30)
            self.assertEqual(st.stable_version, 3)
            resp = f.ranker.Score(req, timeout=30)
            self.assertEqual((resp.version, resp.version_label), (3, "stable"))
            f.stop()
            f.start()
            self.assertEqual(f.status().stable_version, 3)
            self.assertEqual(f.ranker.Score(req, timeout=30).version, 3)
            with open(os.path.join(f.repo, "m", "serving.json")) as fh:
                saved = json.load(fh)
            self.assertEqual((saved["stable"], saved["canary"]), (3, 0))
        finally:
            f.stop()


class BadVersionsTest(unittest.TestCase):
    def test_rejected_while_old_serves(self):
        seeds = make_seed_files(2)
        f = Fleet(seeds, [1])
        req, req_path = request_for(seeds[0], n=2)
        req.model = "m"
        want1 = expected_scores(seeds[0], req_path)
        want_new = expected_scores(seeds[1], req_path)
        stop = threading.Event()
        bad = []
        seen = []

        def client():
            while not stop.is_set():
                try:
                    resp = f.ranker.Score(req, timeout=30)
                    seen.append(resp.version)
                    if resp.version == 1 and list(resp.scores) != want1:
                        bad.append("v1 scores differ")
                except grpc.RpcError as e:
                    bad.append(str(e))
        th = threading.Thread(target=client)
        th.start()
        try:
            tmpd = tempfile.mkdtemp(prefix="kdbad-")
            # 2: one flipped byte (a tensor CRC fails).
            corrupt = os.path.join(tmpd, "c.kdr")
            shutil.copyfile(seeds[1], corrupt)
            with open(corrupt, "r+b") as fh:
                fh.seek(os.path.getsize(corrupt) // 2)
                b = fh.read(1)
                fh.seek(-1, 1)
                fh.write(bytes([b[0] ^ 0xFF]))
            publish(f.repo, "m", 2, corrupt)
            # 3: truncated.
            trunc = os.path.join(tmpd, "t.kdr")
            with open(seeds[1], "rb") as fh:
                data = fh.read()
            with open(trunc, "wb") as fh:
                fh.write(data[:len(data) * 2 // 3])
            publish(f.repo, "m", 3, trunc)
            # 4: a tensor whose shape disagrees with the architecture (CRCs re-sealed).
            ws = os.path.join(tmpd, "w.kdr")
            wrong_shape_copy(seeds[1], ws)
            publish(f.repo, "m", 4, ws)
            ok = kdserve.wait_for(lambda: all(v in f.versions() and f.versions()[v].state == "FAILED"
                                              for v in (2, 3, 4)), timeout=30)
            vs = f.versions()
            self.assertTrue(ok, vs)
            self.assertIn("CRC", vs[2].error.upper())
            self.assertTrue("truncat" in vs[3].error.lower() or "size" in vs[3].error.lower(), vs[3].error)
            self.assertIn("shape", vs[4].error)
            self.assertEqual(f.status().stable_version, 1)
            # 5: written slowly under its final name (no atomic publication): never loaded while
            # incomplete; once complete it verifies and goes live.
            d5 = os.path.join(f.repo, "m", "5")
            os.makedirs(d5)
            with open(seeds[1], "rb") as fh:
                data = fh.read()
            chunks = 12
            step = len(data) // chunks + 1
            with open(os.path.join(d5, "model.kdr"), "wb") as fh:
                for i in range(chunks):
                    fh.write(data[i * step:(i + 1) * step])
                    fh.flush()
                    os.fsync(fh.fileno())
                    time.sleep(0.08)
                    if i < chunks - 1:  # still incomplete: must not be live
                        st = f.status()
                        self.assertEqual(st.stable_version, 1, "a half-written file went live")
            live = kdserve.wait_for(lambda: f.status().stable_version == 5, timeout=30)
            self.assertTrue(live, f.versions())
            resp = f.ranker.Score(req, timeout=30)
            self.assertEqual((resp.version, list(resp.scores)), (5, want_new))
            text = f.srv.text()
            self.assertIn("event=model_load_failed model=m version=2", text)
            self.assertIn("event=model_load_failed model=m version=3", text)
            self.assertIn("event=model_load_failed model=m version=4", text)
        finally:
            stop.set()
            th.join()
            f.stop()
        self.assertEqual(bad, [])
        self.assertIn(1, seen)


class StressTest(unittest.TestCase):
    def test_publish_every_few_ms_under_load(self):
        n_seeds = 3
        seeds = make_seed_files(n_seeds)
        f = Fleet(seeds, [1, 2])
        req, req_path = request_for(seeds[0], n=4)
        req.model = "m"
        want = [expected_scores(s, req_path) for s in seeds]
        # Version v holds seeds[(v - 1) % n_seeds]: its scores are want[(v - 1) % n_seeds].
        for a in range(n_seeds):
            for b in range(a + 1, n_seeds):
                self.assertNotEqual(want[a], want[b])
        f.admin.SetCanary(pb.SetCanaryRequest(model="m", version=1, weight=0.3), metadata=auth(), timeout=30)
        stop = threading.Event()
        failures, mismatches, counts = [], [], {"ok": 0, "canary": 0}
        lock = threading.Lock()

        def client(tid):
            k = tid * 1000003 + 1
            ch = grpc.insecure_channel(f.srv.target())
            stub = pbg.RankerStub(ch)
            while not stop.is_set():
                r = pb.ScoreRequest()
                r.CopyFrom(req)
                r.routing_key = k if k % 5 else 0
                k += 7
                try:
                    resp = stub.Score(r, timeout=60)
                    if list(resp.scores) != want[(resp.version - 1) % n_seeds]:
                        mismatches.append((resp.version, resp.version_label))
                    with lock:
                        counts["ok"] += 1
                        counts["canary"] += resp.version_label == "canary"
                except grpc.RpcError as e:
                    failures.append("%s %s" % (e.code(), e.details()))
            ch.close()

        def weights():
            rng = random.Random(3)
            while not stop.is_set():
                try:
                    f.admin.SetCanary(pb.SetCanaryRequest(model="m", version=0, weight=rng.random()),
                                      metadata=auth(), timeout=30)
                except grpc.RpcError as e:
                    failures.append("admin %s %s" % (e.code(), e.details()))
                time.sleep(0.01)

        ths = [threading.Thread(target=client, args=(i,)) for i in range(4)] + [threading.Thread(target=weights)]
        for t in ths:
            t.start()
        n_pub = max(20, 120 // SLOW)
        try:
            for v in range(3, 3 + n_pub):
                publish(f.repo, "m", v, seeds[(v - 1) % n_seeds])
                time.sleep(0.005)
            last = 2 + n_pub
            live = kdserve.wait_for(lambda: f.status().stable_version == last, timeout=60)
            time.sleep(0.2)
        finally:
            stop.set()
            for t in ths:
                t.join()
        st = f.status()
        text = f.srv.text()
        f.stop()
        print("stress: %d publications, %d calls (%d canary), stable now %d, %d loads"
              % (n_pub, counts["ok"], counts["canary"], st.stable_version, text.count("event=model_loaded")))
        self.assertTrue(live, "last version never went live")
        self.assertEqual(failures, [])
        self.assertEqual(mismatches, [])
        self.assertGreater(counts["ok"], 100 // SLOW)
        self.assertGreater(counts["canary"], 0)
        # Memory was given back: every loaded version but the two the policy keeps (stable and the
        # canary) was unloaded while serving. Publications coalesce while a load runs (the loader
        # takes the newest), so the number of loads depends on the machine: at least 3 swaps.
        loads = text.count("event=model_loaded")
        self.assertGreaterEqual(loads, 5)
        self.assertGreaterEqual(text.count("event=model_unloaded"), loads - 2)
        loaded = [v for v in st.versions if v.state == "AVAILABLE"]
        self.assertLessEqual(len(loaded), 2)


if __name__ == "__main__":
    unittest.main(verbosity=2)
