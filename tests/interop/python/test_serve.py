"""test_serve.py - kdrank-serve called by a real gRPC client (Python grpcio, Debian python3-grpcio):
scores against `kdrank-ckpt score` (bit-exact) and --oracle (tolerance), every error case with its
status code and message, health, metadata, deadlines, TLS and mTLS, graceful drain, busy port,
unknown method, metrics endpoint and configuration.
Run by CTest: /usr/bin/python3 test_serve.py --serve BIN --ckpt BIN --proto-dir DIR"""
import json
import re
import os
import shutil
import signal
import struct
import subprocess
import sys
import tempfile
import threading
import time
import unittest
import urllib.request

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import kdserve  # noqa: E402

sys.argv = kdserve.configure(sys.argv)
import grpc  # noqa: E402
from google.protobuf import json_format  # noqa: E402

pb, pbg, hp, hpg = kdserve.stubs()

ORACLE_ABS, ORACLE_REL = 1e-5, 1e-4  # fast path vs scalar oracle (model/ states the kernels' bound)


def f32(x):
    return struct.unpack("f", struct.pack("f", x))[0]


def make_request(model_file, n, seed, k=1, model=None):
    """A random valid request from kdrank-ckpt; returns (ScoreRequest, json path)."""
    path = tempfile.mktemp(prefix="kdreq-", suffix=".json")
    kdserve.ckpt("request", "--model", model_file, "--candidates", n, "--seed", seed, "--k", k,
                 "-o", path)
    with open(path) as f:
        req = json_format.Parse(f.read(), pb.ScoreRequest())
    if model is not None:
        req.model = model
    return req, path


def ckpt_scores(model_file, req_path, *extra):
    return json.loads(kdserve.ckpt("score", model_file, "--request", req_path, *extra))


def column(batch, name):
    for c in batch.columns:
        if c.name == name:
            return c
    raise KeyError(name)


class ServeTest(unittest.TestCase):
    """One server over a repository: tiny v1 (valid), v2 (valid, newest valid), v3 (corrupt);
    student (ref-student) v1."""

    @classmethod
    def setUpClass(cls):
        cls.repo = tempfile.mkdtemp(prefix="kdrepo-")
        kdserve.add_model(cls.repo, "tiny", 1, seed=11)
        cls.tiny = kdserve.add_model(cls.repo, "tiny", 2, seed=12,
                                     meta=["provenance.teacher_id=teacher-a"])
        kdserve.add_corrupt(cls.repo, "tiny", 3)
        cls.student = kdserve.add_model(cls.repo, "student", 1, preset="ref-student", seed=13)
        cls.srv = kdserve.Server(cls.repo, "--default-model", "tiny", "--max-candidates", 1000)
        cls.ch = grpc.insecure_channel(cls.srv.target())
        cls.ranker = pbg.RankerStub(cls.ch)
        cls.health = hpg.HealthStub(cls.ch)

    @classmethod
    def tearDownClass(cls):
        cls.ch.close()
        code = cls.srv.stop()
        assert code == 0, "server exit code %s\n%s" % (code, cls.srv.text())
        shutil.rmtree(cls.repo, ignore_errors=True)

    def score_err(self, req, timeout=10):
        with self.assertRaises(grpc.RpcError) as cm:
            self.ranker.Score(req, timeout=timeout)
        return cm.exception.code(), cm.exception.details()

    def assertError(self, req, code, *needles):
        got, msg = self.score_err(req)
        self.assertEqual(got, code, msg)
        for n in needles:
            self.assertIn(n, msg)

    # ---- scores ----
    def check_scores(self, model_file, model, n, seed, k=1, tasks=None):
        req, path = make_request(model_file, n, seed, k, model=model)
        extra = []
        if tasks:
            req.tasks[:] = tasks
            extra = ["--tasks", ",".join(tasks)]
        r = self.ranker.Score(req, timeout=30)
        want = ckpt_scores(model_file, path, *extra)
        oracle = ckpt_scores(model_file, path, "--oracle", *extra)
        self.assertEqual(list(r.tasks), want["tasks"])
        self.assertEqual(len(r.scores), n * len(want["tasks"]))
        for i, (got, w, o) in enumerate(zip(r.scores, want["scores"], oracle["scores"])):
            self.assertEqual(got, f32(w), "score %d: server %r, kdrank-ckpt score %r" % (i, got, w))
            self.assertLessEqual(abs(got - o), ORACLE_ABS + ORACLE_REL * abs(o),
                                 "score %d: server %r, oracle %r" % (i, got, o))
        os.unlink(path)
        return r

    def test_scores_equal_kdrank_ckpt_tiny(self):
        for n, seed, k in ((1, 1, 1), (7, 2, 3), (100, 3, 2), (1000, 4, 1)):
            r = self.check_scores(self.tiny, "tiny", n, seed, k)
            self.assertEqual((r.model, r.version, r.version_label), ("tiny", 2, "stable"))

    def test_scores_equal_kdrank_ckpt_ref_student(self):
        r = self.check_scores(self.student, "student", 100, 5, 2)
        self.assertEqual((r.model, r.version), ("student", 1))

    def test_task_subset(self):
        r = self.check_scores(self.tiny, "tiny", 5, 6, 1, tasks=["watch_time", "click"])
        self.assertEqual(list(r.tasks), ["watch_time", "click"])

    def test_default_model_and_pins(self):
        req, path = make_request(self.tiny, 3, 7, model="")
        r = self.ranker.Score(req, timeout=10)
        self.assertEqual((r.model, r.version), ("tiny", 2))
        req.version = 2
        self.assertEqual(self.ranker.Score(req, timeout=10).version, 2)
        req.version_label = "stable"
        self.assertEqual(self.ranker.Score(req, timeout=10).version_label, "stable")
        os.unlink(path)

    def test_concurrent_clients(self):
        req, path = make_request(self.tiny, 20, 8, model="tiny")
        want = [f32(x) for x in ckpt_scores(self.tiny, path)["scores"]]
        errors = []

        def worker():
            ch = grpc.insecure_channel(self.srv.target(), options=[("grpc.use_local_subchannel_pool", 1)])
            st = pbg.RankerStub(ch)
            for _ in range(50):
                r = st.Score(req, timeout=10)
                if list(r.scores) != want:
                    errors.append("mismatch")
            ch.close()
        ts = [threading.Thread(target=worker) for _ in range(4)]
        [t.start() for t in ts]
        [t.join(60) for t in ts]
        self.assertEqual(errors, [])
        os.unlink(path)

    # ---- errors ----
    def base(self, n=3, seed=9):
        req, path = make_request(self.tiny, n, seed, model="tiny")
        os.unlink(path)
        return req

    def test_unknown_model(self):
        req = self.base()
        req.model = "nope"
        self.assertError(req, grpc.StatusCode.NOT_FOUND, 'model "nope" not found', "student, tiny")

    def test_unloaded_version_and_labels(self):
        req = self.base()
        req.version = 1
        self.assertError(req, grpc.StatusCode.NOT_FOUND, 'version 1 of model "tiny" is not loaded',
                         "loaded: 2")
        req.version = 0
        self.assertError(req, grpc.StatusCode.INVALID_ARGUMENT, "version: expected a positive", "found 0")
        req.version_label = "canary"
        self.assertError(req, grpc.StatusCode.NOT_FOUND, "no canary")
        req.version_label = "blue"
        self.assertError(req, grpc.StatusCode.NOT_FOUND, 'version_label "blue"', '"stable" or "canary"')

    def test_counts(self):
        req = self.base()
        req.context.count = 2
        self.assertError(req, grpc.StatusCode.INVALID_ARGUMENT, "context.count: expected 1, found 2")
        req = self.base()
        req.ClearField("context")
        self.assertError(req, grpc.StatusCode.INVALID_ARGUMENT, "context.count: expected 1, found 0")
        req = self.base()
        req.candidates.count = 0
        self.assertError(req, grpc.StatusCode.INVALID_ARGUMENT, "candidates.count: expected 1..1000, found 0")
        req = self.base()
        req.candidates.count = 1001
        self.assertError(req, grpc.StatusCode.INVALID_ARGUMENT, "candidates.count: expected 1..1000, found 1001")

    def test_feature_errors(self):
        req = self.base()
        req.candidates.columns.add(name="bogus", floats=[1, 2, 3])
        self.assertError(req, grpc.StatusCode.INVALID_ARGUMENT, '"bogus": unknown feature',
                         "candidates features: item_id, item_tags, item_dense")
        req = self.base()
        cols = [c for c in req.candidates.columns if c.name != "item_dense"]
        del req.candidates.columns[:]
        req.candidates.columns.extend(cols)
        self.assertError(req, grpc.StatusCode.INVALID_ARGUMENT, 'candidates: missing feature "item_dense"',
                         "dense, dim 3")
        req = self.base()
        column(req.candidates, "item_dense").floats.pop()
        self.assertError(req, grpc.StatusCode.INVALID_ARGUMENT, '"item_dense"',
                         "expected count x dim = 3 x 3 = 9 floats, found 8")
        req = self.base()
        column(req.candidates, "item_id").ids.append(5)
        self.assertError(req, grpc.StatusCode.INVALID_ARGUMENT, '"item_id"',
                         "positive multiple of count = 3 ids", "found 4")
        req = self.base()
        column(req.candidates, "item_dense").ids.append(5)
        self.assertError(req, grpc.StatusCode.INVALID_ARGUMENT, "dense feature (dim 3)", "found 1 ids")
        req = self.base()
        column(req.candidates, "item_id").floats.append(1.0)
        self.assertError(req, grpc.StatusCode.INVALID_ARGUMENT, "sparse feature", "found 1 floats")
        req = self.base()
        req.candidates.columns.add().CopyFrom(column(req.context, "user_id"))
        self.assertError(req, grpc.StatusCode.INVALID_ARGUMENT, '"user_id": a context feature',
                         "expected in context, found in candidates")
        req = self.base()
        req.candidates.columns.add().CopyFrom(column(req.candidates, "item_id"))
        self.assertError(req, grpc.StatusCode.INVALID_ARGUMENT, '"item_id": duplicate column')

    def test_non_finite_dense_rejected(self):
        for bad, word in ((float("nan"), "NaN"), (float("inf"), "Inf"), (float("-inf"), "Inf")):
            req = self.base()
            column(req.candidates, "item_dense").floats[4] = bad
            self.assertError(req, grpc.StatusCode.INVALID_ARGUMENT,
                             '"item_dense": floats[4] (row 1, element 1) is ' + word, "must be finite")
            req = self.base()
            column(req.context, "context_dense").floats[0] = bad
            self.assertError(req, grpc.StatusCode.INVALID_ARGUMENT, 'context.columns', '"context_dense"', word)

    def test_task_errors(self):
        req = self.base()
        req.tasks.append("bogus")
        self.assertError(req, grpc.StatusCode.INVALID_ARGUMENT, 'tasks[0] "bogus": unknown task',
                         "served tasks: click, like, watch_time, satisfied")
        req = self.base()
        req.tasks[:] = ["click", "click"]
        self.assertError(req, grpc.StatusCode.INVALID_ARGUMENT, 'tasks[1] "click": duplicate')

    def test_garbage_and_empty_payloads(self):
        call = self.ch.unary_unary("/kdrank.v1.Ranker/Score")
        for payload in (b"\xff\xff\xff\xff", b"\x0a\x05ab", b"\x2a\xff\xff\xff\xff\x0f"):
            with self.assertRaises(grpc.RpcError) as cm:
                call(payload, timeout=10)
            self.assertEqual(cm.exception.code(), grpc.StatusCode.INVALID_ARGUMENT, cm.exception.details())
            self.assertIn("not a valid kdrank.v1.ScoreRequest", cm.exception.details())
        with self.assertRaises(grpc.RpcError) as cm:  # the empty message is valid proto: default model
            call(b"", timeout=10)
        self.assertEqual(cm.exception.code(), grpc.StatusCode.INVALID_ARGUMENT)
        self.assertIn("context.count: expected 1, found 0", cm.exception.details())

    def test_mutated_requests(self):
        """Bounded mutation run: flipped, truncated, duplicated and inserted bytes of valid requests.
        Every reply is a status (never a crash or hang); the server stays healthy."""
        import random
        rnd = random.Random(1234)
        seeds = [make_request(self.tiny, n, 40 + n, k, model="tiny") for n, k in ((1, 1), (4, 2), (9, 3))]
        blobs = []
        for req, path in seeds:
            blobs.append(req.SerializeToString())
            os.unlink(path)
        call = self.ch.unary_unary("/kdrank.v1.Ranker/Score")
        allowed = {grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.NOT_FOUND, grpc.StatusCode.RESOURCE_EXHAUSTED,
                   grpc.StatusCode.UNAVAILABLE}
        seen = {}
        for i in range(600 // kdserve.SLOW):
            b = bytearray(rnd.choice(blobs))
            for _ in range(rnd.randint(1, 4)):
                op, at = rnd.randrange(4), rnd.randrange(len(b))
                if op == 0:
                    b[at] ^= 1 << rnd.randrange(8)
                elif op == 1:
                    del b[at:at + rnd.randint(1, 16)]
                elif op == 2:
                    b[at:at] = b[at:at + rnd.randint(1, 32)]
                else:
                    b[at:at] = bytes(rnd.randrange(256) for _ in range(rnd.randint(1, 8)))
            try:
                call(bytes(b), timeout=10 * kdserve.SLOW)
                code = grpc.StatusCode.OK
            except grpc.RpcError as e:
                code = e.code()
                self.assertIn(code, allowed, "mutant %d: %s %s" % (i, code, e.details()))
            seen[code] = seen.get(code, 0) + 1
        self.assertIn(grpc.StatusCode.INVALID_ARGUMENT, seen)
        self.assertEqual(self.health.Check(hp.HealthCheckRequest(), timeout=10).status, hp.HealthCheckResponse.SERVING)

    def test_oversized_message(self):
        req = self.base()
        column(req.candidates, "item_dense").floats.extend([0.5] * (5 << 20 >> 2))  # > 4 MiB
        got, msg = self.score_err(req)
        self.assertEqual(got, grpc.StatusCode.RESOURCE_EXHAUSTED, msg)

    def test_unknown_method(self):
        for m in ("/kdrank.v1.Ranker/Nope", "/other.Svc/Call", "/grpc.health.v1.Health/Nope"):
            with self.assertRaises(grpc.RpcError) as cm:
                self.ch.unary_unary(m)(b"", timeout=10)
            self.assertEqual(cm.exception.code(), grpc.StatusCode.UNIMPLEMENTED)
            self.assertIn("unknown method " + m, cm.exception.details())

    # ---- health and metadata ----
    def test_health(self):
        S = hp.HealthCheckResponse.SERVING
        for svc in ("", "kdrank.v1.Ranker", "tiny", "student"):
            self.assertEqual(self.health.Check(hp.HealthCheckRequest(service=svc), timeout=10).status, S, svc)
        with self.assertRaises(grpc.RpcError) as cm:
            self.health.Check(hp.HealthCheckRequest(service="nope"), timeout=10)
        self.assertEqual(cm.exception.code(), grpc.StatusCode.NOT_FOUND)
        self.assertIn('unknown service "nope"', cm.exception.details())

    def test_health_watch(self):
        S, U = hp.HealthCheckResponse.SERVING, hp.HealthCheckResponse.SERVICE_UNKNOWN
        for svc, want in (("", S), ("tiny", S), ("nope", U)):
            stream = self.health.Watch(hp.HealthCheckRequest(service=svc), timeout=30)
            self.assertEqual(next(stream).status, want, svc)
            stream.cancel()
        # Many streams opened and dropped: none leaks a call (the server stays responsive).
        streams = [self.health.Watch(hp.HealthCheckRequest(), timeout=30) for _ in range(20)]
        for st in streams:
            self.assertEqual(next(st).status, S)
            st.cancel()
        self.assertEqual(self.health.Check(hp.HealthCheckRequest(), timeout=10).status, S)

    def test_metadata(self):
        m = self.ranker.GetModelMetadata(pb.GetModelMetadataRequest(model="tiny"), timeout=10)
        info = json.loads(kdserve.ckpt("inspect", self.tiny, "--json"))
        self.assertEqual((m.model, m.version, m.version_label, m.max_candidates), ("tiny", 2, "stable", 1000))
        text = json.dumps(info)
        for f in m.features:
            self.assertIn('"%s"' % f.name, text)
        self.assertEqual([f.name for f in m.features], ["user_id", "context_dense", "item_id", "item_tags", "item_dense"])
        self.assertEqual([(t.name, t.transform) for t in m.tasks],
                         [("click", "sigmoid"), ("like", "sigmoid"), ("watch_time", "expm1"), ("satisfied", "sigmoid")])
        self.assertEqual(m.provenance["teacher_id"], "teacher-a")
        states = {v.version: (v.state, v.label) for v in m.versions}
        self.assertEqual(states[2], ("AVAILABLE", "stable"))
        self.assertEqual(states[3][0], "FAILED")
        failed = [v for v in m.versions if v.version == 3][0]
        self.assertIn("model.kdr", failed.error)
        self.assertNotIn(1, states)  # older versions are not tried once a newer one verifies
        d = self.ranker.GetModelMetadata(pb.GetModelMetadataRequest(), timeout=10)  # default model
        self.assertEqual(d.model, "tiny")
        with self.assertRaises(grpc.RpcError) as cm:
            self.ranker.GetModelMetadata(pb.GetModelMetadataRequest(model="x"), timeout=10)
        self.assertEqual(cm.exception.code(), grpc.StatusCode.NOT_FOUND)

    def test_metrics_endpoint(self):
        req = self.base()
        self.ranker.Score(req, timeout=10)
        text = urllib.request.urlopen("http://127.0.0.1:%d/metrics" % self.srv.metrics_port, timeout=10).read().decode()
        self.assertRegex(text, r'kdrank_requests_total\{method="Score",model="tiny",version="2",version_label="stable",code="OK"\} [1-9]')
        self.assertRegex(text, r'kdrank_score_seconds_count\{model="tiny",version="2",version_label="stable"\} [1-9]')
        self.assertRegex(text, r'kdrank_candidates_scored_total\{model="tiny",version="2",version_label="stable"\} [1-9]')
        self.assertIn('kdrank_model_loads_total{model="tiny",result="failed"} 1', text)
        self.assertIn('kdrank_model_loads_total{model="tiny",result="ok"} 1', text)
        self.assertIn('kdrank_model_version{model="tiny"} 2', text)
        self.assertIn("kdrank_inflight_calls", text)
        with self.assertRaises(urllib.error.HTTPError):
            urllib.request.urlopen("http://127.0.0.1:%d/nope" % self.srv.metrics_port, timeout=10)


class UnavailableTest(unittest.TestCase):
    """A repository whose only model has no version that verifies: the server starts, reports
    NOT_SERVING and answers UNAVAILABLE."""

    def test_unavailable(self):
        repo = tempfile.mkdtemp(prefix="kdrepo-")
        kdserve.add_corrupt(repo, "broken", 1)
        os.makedirs(os.path.join(repo, "broken", "notaversion"))
        srv = kdserve.Server(repo)
        try:
            with grpc.insecure_channel(srv.target()) as ch:
                h = hpg.HealthStub(ch)
                NS = hp.HealthCheckResponse.NOT_SERVING
                self.assertEqual(h.Check(hp.HealthCheckRequest(), timeout=10).status, NS)
                self.assertEqual(h.Check(hp.HealthCheckRequest(service="broken"), timeout=10).status, NS)
                with self.assertRaises(grpc.RpcError) as cm:
                    pbg.RankerStub(ch).Score(pb.ScoreRequest(model="broken"), timeout=10)
                self.assertEqual(cm.exception.code(), grpc.StatusCode.UNAVAILABLE)
                self.assertIn('model "broken" has no available version', cm.exception.details())
            text = srv.text()
            self.assertIn("event=model_load_failed model=broken version=1", text)
            self.assertIn('entry="notaversion"', text)
        finally:
            self.assertEqual(srv.stop(), 0)
            shutil.rmtree(repo, ignore_errors=True)


class LifecycleTest(unittest.TestCase):
    """Deadlines, drain, busy port, limits, configuration, TLS: each with its own server."""

    @classmethod
    def setUpClass(cls):
        cls.repo = tempfile.mkdtemp(prefix="kdrepo-")
        cls.tiny = kdserve.add_model(cls.repo, "tiny", 1, seed=21)
        cls.req, path = make_request(cls.tiny, 4, 22, model="tiny")
        cls.want = [f32(x) for x in ckpt_scores(cls.tiny, path)["scores"]]
        os.unlink(path)

    @classmethod
    def tearDownClass(cls):
        shutil.rmtree(cls.repo, ignore_errors=True)

    def metrics(self, srv):
        return urllib.request.urlopen("http://127.0.0.1:%d/metrics" % srv.metrics_port, timeout=10).read().decode()

    def test_deadline_not_scored(self):
        srv = kdserve.Server(self.repo, "--test-delay-ms", 400 * kdserve.SLOW)
        try:
            with grpc.insecure_channel(srv.target()) as ch:
                st = pbg.RankerStub(ch)
                st.Score(self.req, timeout=10 * kdserve.SLOW)  # connected and warm
                with self.assertRaises(grpc.RpcError) as cm:
                    st.Score(self.req, timeout=0.1 * kdserve.SLOW)
                self.assertEqual(cm.exception.code(), grpc.StatusCode.DEADLINE_EXCEEDED)
                # The server saw the deadline pass and did not score: no candidates counted.
                ok = kdserve.wait_for(lambda: 'code="DEADLINE_EXCEEDED"} 1' in self.metrics(srv))
                self.assertTrue(ok, self.metrics(srv))
                self.assertRegex(self.metrics(srv), r"kdrank_candidates_scored_total\{[^}]*\} 4\n")
                r = st.Score(self.req, timeout=10 * kdserve.SLOW)  # a generous deadline is served
                self.assertEqual(list(r.scores), self.want)
        finally:
            self.assertEqual(srv.stop(), 0)

    def test_graceful_drain(self):
        srv = kdserve.Server(self.repo, "--test-delay-ms", 1500, "--drain-timeout-ms", 10000)
        result = {}
        ch = grpc.insecure_channel(srv.target())
        st = pbg.RankerStub(ch)
        watch = hpg.HealthStub(ch).Watch(hp.HealthCheckRequest(service="tiny"), timeout=60 * kdserve.SLOW)
        self.assertEqual(next(watch).status, hp.HealthCheckResponse.SERVING)
        fut = st.Score.future(self.req, timeout=30 * kdserve.SLOW)
        # SIGTERM once the call is in the server's handler (the in-flight gauge says so).
        self.assertTrue(kdserve.wait_for(lambda: "kdrank_inflight_calls 1" in self.metrics(srv), 10 * kdserve.SLOW))
        srv.proc.send_signal(signal.SIGTERM)
        self.assertTrue(kdserve.wait_for(lambda: "event=draining" in srv.text(), 10 * kdserve.SLOW))
        # A new connection is refused while the in-flight call finishes.
        with grpc.insecure_channel(srv.target()) as ch2:
            with self.assertRaises(grpc.RpcError) as cm:
                pbg.RankerStub(ch2).Score(self.req, timeout=5)
            result["new"] = cm.exception.code()
        r = fut.result(timeout=30 * kdserve.SLOW)
        self.assertEqual(list(r.scores), self.want)
        # The Watch stream saw NOT_SERVING and was ended with OK by the drain.
        rest = [m.status for m in watch]
        self.assertEqual(rest, [hp.HealthCheckResponse.NOT_SERVING])
        self.assertEqual(watch.code(), grpc.StatusCode.OK)
        # Refused: the listener is closing (UNAVAILABLE) or the core kills the not-yet-matched call
        # of a connection accepted during shutdown (CANCELLED); either way it is never handled.
        self.assertIn(result["new"], (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.CANCELLED))
        self.assertEqual(srv.stop(), 0)
        text = srv.text()
        self.assertIn("event=drained", text)
        self.assertIn("cancelled_calls=no", text)
        ch.close()

    def test_busy_port(self):
        srv = kdserve.Server(self.repo)
        try:
            code, out = kdserve.run_serve("--model-repo", self.repo, "--listen", srv.target(),
                                          "--metrics-listen", "")
            self.assertEqual(code, 1, out)
            self.assertIn("cannot bind", out)
            code, out = kdserve.run_serve("--model-repo", self.repo, "--listen", "127.0.0.1:0",
                                          "--metrics-listen", "127.0.0.1:%d" % srv.metrics_port)
            self.assertEqual(code, 1, out)
            self.assertIn("--metrics-listen", out)
        finally:
            self.assertEqual(srv.stop(), 0)

    def test_sigint_and_limits(self):
        srv = kdserve.Server(self.repo, "--max-candidates", 3, "--max-message-bytes", 4096)
        try:
            with grpc.insecure_channel(srv.target()) as ch:
                st = pbg.RankerStub(ch)
                with self.assertRaises(grpc.RpcError) as cm:
                    st.Score(self.req, timeout=10)
                self.assertEqual(cm.exception.code(), grpc.StatusCode.INVALID_ARGUMENT)
                self.assertIn("candidates.count: expected 1..3, found 4", cm.exception.details())
                big = pb.ScoreRequest()
                big.CopyFrom(self.req)
                column(big.candidates, "item_dense").floats.extend([0.0] * 2000)
                with self.assertRaises(grpc.RpcError) as cm:
                    st.Score(big, timeout=10)
                self.assertEqual(cm.exception.code(), grpc.StatusCode.RESOURCE_EXHAUSTED)
        finally:
            self.assertEqual(srv.stop(signal.SIGINT), 0)
        self.assertIn("event=signal signal=SIGINT", srv.text())

    def test_config_file_help_and_bad_flags(self):
        code, out = kdserve.run_serve("--help")
        self.assertEqual(code, 0)
        code2, sample = kdserve.run_serve("--print-config")
        self.assertEqual(code2, 0)
        names = [m.group(1) for m in re.finditer(r"^(?:# )?([a-z][a-z0-9-]*) = ", sample, re.M)]
        self.assertGreaterEqual(len(names), 18)
        for n in names + ["config"]:
            self.assertIn("--" + n + "=", out)
        for n in ("model-repo", "listen", "metrics-listen", "threads", "max-candidates",
                  "max-message-bytes", "keepalive-time-ms", "drain-timeout-ms", "log-level",
                  "tls-cert", "tls-key", "tls-client-ca"):
            self.assertIn(n, names)
        code, out = kdserve.run_serve("--threads", "-1", "--model-repo", self.repo)
        self.assertEqual(code, 2)
        self.assertIn("threads: expected an integer in [0, 256], found -1", out)
        code, out = kdserve.run_serve("--bogus=1")
        self.assertEqual(code, 2)
        self.assertIn('unknown option "--bogus"', out)
        code, out = kdserve.run_serve("--log-level", "loud", "--model-repo", self.repo)
        self.assertEqual(code, 2)
        self.assertIn("expected one of error|warn|info|debug", out)
        code, out = kdserve.run_serve("--listen", "127.0.0.1:0")
        self.assertEqual(code, 2)
        self.assertIn("--model-repo DIR is required", out)
        d = tempfile.mkdtemp()
        bad = os.path.join(d, "bad.conf")
        with open(bad, "w") as f:
            f.write("# comment\nthreads = 1\nnope = 3\n")
        code, out = kdserve.run_serve("--config", bad)
        self.assertEqual(code, 2)
        self.assertIn(bad + ':3: unknown option "nope"', out)
        good = os.path.join(d, "good.conf")
        with open(good, "w") as f:
            f.write(sample.replace("prepost = 8", "prepost = 3").replace("log-level = info", "log-level = debug"))
        srv = kdserve.Server(self.repo, "--config", good, "--max-candidates", 7)
        try:
            text = srv.text()
            self.assertIn("prepost=3 ", text)
            self.assertIn("max-candidates=7 ", text)
            self.assertIn('log-level="debug"', text)
        finally:
            self.assertEqual(srv.stop(), 0)
        shutil.rmtree(d, ignore_errors=True)

    # ---- TLS ----
    def openssl(self, *args):
        subprocess.run(["openssl"] + list(args), check=True, capture_output=True, timeout=60)

    def make_pki(self, d):
        """A CA, a server certificate for 127.0.0.1/localhost and a client certificate."""
        p = lambda n: os.path.join(d, n)  # noqa: E731
        self.openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=kdrank-test-ca",
                     "-keyout", p("ca.key"), "-out", p("ca.pem"))
        ext = p("ext.cnf")
        with open(ext, "w") as f:
            f.write("subjectAltName=IP:127.0.0.1,DNS:localhost\n")
        for who in ("server", "client"):
            self.openssl("req", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=" + who, "-keyout", p(who + ".key"),
                         "-out", p(who + ".csr"))
            self.openssl("x509", "-req", "-in", p(who + ".csr"), "-CA", p("ca.pem"), "-CAkey", p("ca.key"),
                         "-CAcreateserial", "-days", "2", "-extfile", ext, "-out", p(who + ".pem"))
        return {n: open(p(n), "rb").read() for n in ("ca.pem", "server.pem", "server.key", "client.pem", "client.key")}

    def test_tls_and_mtls(self):
        d = tempfile.mkdtemp(prefix="kdpki-")
        pki = self.make_pki(d)
        p = lambda n: os.path.join(d, n)  # noqa: E731
        srv = kdserve.Server(self.repo, "--tls-cert", p("server.pem"), "--tls-key", p("server.key"))
        try:
            self.assertIn("tls=tls", srv.text())
            creds = grpc.ssl_channel_credentials(root_certificates=pki["ca.pem"])
            with grpc.secure_channel(srv.target(), creds) as ch:
                self.assertEqual(list(pbg.RankerStub(ch).Score(self.req, timeout=10).scores), self.want)
            with grpc.insecure_channel(srv.target()) as ch:  # plaintext to a TLS port fails
                with self.assertRaises(grpc.RpcError) as cm:
                    pbg.RankerStub(ch).Score(self.req, timeout=5)
                self.assertEqual(cm.exception.code(), grpc.StatusCode.UNAVAILABLE)
        finally:
            self.assertEqual(srv.stop(), 0)
        srv = kdserve.Server(self.repo, "--tls-cert", p("server.pem"), "--tls-key", p("server.key"),
                             "--tls-client-ca", p("ca.pem"))
        try:
            self.assertIn("tls=mtls", srv.text())
            creds = grpc.ssl_channel_credentials(root_certificates=pki["ca.pem"], private_key=pki["client.key"],
                                                 certificate_chain=pki["client.pem"])
            with grpc.secure_channel(srv.target(), creds) as ch:
                self.assertEqual(list(pbg.RankerStub(ch).Score(self.req, timeout=10).scores), self.want)
            no_cert = grpc.ssl_channel_credentials(root_certificates=pki["ca.pem"])
            with grpc.secure_channel(srv.target(), no_cert) as ch:
                with self.assertRaises(grpc.RpcError) as cm:
                    pbg.RankerStub(ch).Score(self.req, timeout=5)
                self.assertEqual(cm.exception.code(), grpc.StatusCode.UNAVAILABLE)
        finally:
            self.assertEqual(srv.stop(), 0)
        code, out = kdserve.run_serve("--model-repo", self.repo, "--listen", "127.0.0.1:0", "--metrics-listen", "",
                                      "--tls-cert", p("server.pem"))
        self.assertEqual(code, 1)
        self.assertIn("TLS needs both --tls-cert and --tls-key", out)
        shutil.rmtree(d, ignore_errors=True)


if __name__ == "__main__":
    unittest.main(verbosity=2)
