"""test_prometheus.py - a real Prometheus (Debian `prometheus`) scrapes kdrank-serve's /metrics;
the test queries Prometheus' HTTP API for kdrank series (so the exposition format is accepted by
the real parser, not just by our own reading of it).
Run by CTest: /usr/bin/python3 test_prometheus.py --serve BIN --ckpt BIN --proto-dir DIR"""
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import unittest
import urllib.parse
import urllib.request

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import kdserve  # noqa: E402

sys.argv = kdserve.configure(sys.argv)
import grpc  # noqa: E402
from google.protobuf import json_format  # noqa: E402

pb, pbg, hp, hpg = kdserve.stubs()
PROMETHEUS = shutil.which("prometheus") or "/usr/bin/prometheus"


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


class PrometheusTest(unittest.TestCase):
    def setUp(self):
        if not os.path.exists(PROMETHEUS):
            self.skipTest("prometheus binary absent (apt-get install prometheus)")
        self.dir = tempfile.mkdtemp(prefix="kdprom-")
        self.repo = os.path.join(self.dir, "repo")
        self.model = kdserve.add_model(self.repo, "tiny", 4, seed=31)
        self.srv = kdserve.Server(self.repo)
        self.prom = None

    def tearDown(self):
        if self.prom and self.prom.poll() is None:
            self.prom.terminate()
            try:
                self.prom.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.prom.kill()
                self.prom.wait(timeout=10)
        self.assertEqual(self.srv.stop(), 0)
        shutil.rmtree(self.dir, ignore_errors=True)

    def api(self, path, **params):
        url = "http://127.0.0.1:%d/api/v1/%s?%s" % (self.prom_port, path, urllib.parse.urlencode(params))
        with urllib.request.urlopen(url, timeout=10) as r:
            return json.loads(r.read())

    def query(self, expr):
        try:
            res = self.api("query", query=expr)
        except OSError:
            return None
        return res["data"]["result"] if res.get("status") == "success" else None

    def test_prometheus_scrapes_kdrank(self):
        cfg = os.path.join(self.dir, "prometheus.yml")
        with open(cfg, "w") as f:
            f.write("global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n"
                    "scrape_configs:\n  - job_name: kdrank\n    static_configs:\n"
                    "      - targets: ['127.0.0.1:%d']\n" % self.srv.metrics_port)
        self.prom_port = free_port()
        self.prom = subprocess.Popen(
            [PROMETHEUS, "--config.file=" + cfg, "--storage.tsdb.path=" + os.path.join(self.dir, "tsdb"),
             "--web.listen-address=127.0.0.1:%d" % self.prom_port],
            stdout=subprocess.DEVNULL, stderr=open(os.path.join(self.dir, "prometheus.log"), "w"))
        # Traffic: 5 good calls and 2 bad ones.
        req_path = os.path.join(self.dir, "req.json")
        kdserve.ckpt("request", "--model", self.model, "--candidates", 10, "--seed", 3, "-o", req_path)
        with open(req_path) as f:
            req = json_format.Parse(f.read(), pb.ScoreRequest())
        with grpc.insecure_channel(self.srv.target()) as ch:
            st = pbg.RankerStub(ch)
            for _ in range(5):
                st.Score(req, timeout=10)
            for _ in range(2):
                with self.assertRaises(grpc.RpcError):
                    st.Score(pb.ScoreRequest(model="tiny"), timeout=10)

        def scraped():
            r = self.query('kdrank_requests_total{job="kdrank",method="Score",code="OK"}')
            return r if r and float(r[0]["value"][1]) >= 5 else None
        res = kdserve.wait_for(scraped, timeout=60, step=0.5)
        with open(os.path.join(self.dir, "prometheus.log")) as f:
            log = f.read()
        self.assertTrue(res, "Prometheus never saw the Score counter; its log:\n" + log[-3000:])
        self.assertEqual(res[0]["metric"]["model"], "tiny")
        self.assertEqual(res[0]["metric"]["version"], "4")
        targets = self.api("targets")["data"]["activeTargets"]
        self.assertEqual([t["health"] for t in targets], ["up"], targets)
        self.assertEqual(targets[0]["lastError"], "")
        bad = self.query('kdrank_requests_total{method="Score",code="INVALID_ARGUMENT"}')
        self.assertTrue(bad and float(bad[0]["value"][1]) == 2, bad)
        cand = self.query('kdrank_candidates_scored_total{model="tiny",version="4"}')
        self.assertEqual(float(cand[0]["value"][1]), 50)
        # Histograms are real histograms to Prometheus: a quantile can be computed from them.
        for h in ("decode", "queue", "score", "encode", "total", "reply"):
            q = self.query('histogram_quantile(0.5, sum by (le) (kdrank_%s_seconds_bucket{model="tiny"}))' % h)
            self.assertTrue(q, h)
            v = float(q[0]["value"][1])
            self.assertTrue(0 < v < 1.0, (h, v))
        loads = self.query('kdrank_model_loads_total{model="tiny",result="ok"}')
        self.assertEqual(float(loads[0]["value"][1]), 1)
        self.assertEqual(float(self.query("kdrank_inflight_calls")[0]["value"][1]), 0)


if __name__ == "__main__":
    unittest.main(verbosity=2)
