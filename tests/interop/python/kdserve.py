"""kdserve.py - helpers for kdrank-serve's Python integration tests: build a model repository with
`kdrank-ckpt random`, start the real server on a port chosen at run time (parsed from its
"event=listening ... port=N" log line), generate grpcio stubs from proto/ at test time, and stop
the server with a signal. Every wait is bounded."""
import os
import re
import signal
import subprocess
import sys
import tempfile
import time

ARGS = {}  # filled by configure(): serve, ckpt, proto, wrapper


def configure(argv):
    """Parses --serve BIN --ckpt BIN --proto-dir DIR [--wrapper CMD] off argv; returns the rest."""
    rest = [argv[0]]
    i = 1
    while i < len(argv):
        a = argv[i]
        if a in ("--serve", "--ckpt", "--proto-dir", "--wrapper") and i + 1 < len(argv):
            ARGS[a[2:].replace("-", "_")] = argv[i + 1]
            i += 2
        else:
            rest.append(a)
            i += 1
    for k in ("serve", "ckpt", "proto_dir"):
        if k not in ARGS:
            sys.exit("usage: %s --serve BIN --ckpt BIN --proto-dir DIR [unittest args]" % argv[0])
    ARGS.setdefault("wrapper", os.environ.get("KD_SERVE_WRAPPER", ""))
    global SLOW
    SLOW = 10 if ARGS["wrapper"] else 1
    return rest


SLOW = 1  # time scale: 10 under a wrapper such as valgrind


_stubs = None


def stubs():
    """Generates the Python stubs of kdrank.proto and health.proto (once) and imports them."""
    global _stubs
    if _stubs:
        return _stubs
    out = tempfile.mkdtemp(prefix="kdstubs-")
    subprocess.run([sys.executable, "-m", "grpc_tools.protoc", "-I" + ARGS["proto_dir"],
                    "--python_out=" + out, "--grpc_python_out=" + out,
                    "kdrank.proto", "health.proto"], check=True, timeout=120)
    sys.path.insert(0, out)
    import kdrank_pb2, kdrank_pb2_grpc, health_pb2, health_pb2_grpc  # noqa: E402
    _stubs = (kdrank_pb2, kdrank_pb2_grpc, health_pb2, health_pb2_grpc)
    return _stubs


def ckpt(*args, timeout=300):
    """Runs kdrank-ckpt; returns stdout (raises with stderr on failure)."""
    p = subprocess.run([ARGS["ckpt"]] + [str(a) for a in args], capture_output=True, text=True,
                       timeout=timeout)
    if p.returncode != 0:
        raise RuntimeError("kdrank-ckpt %s failed: %s" % (" ".join(map(str, args)), p.stderr))
    return p.stdout


def add_model(repo, name, version, preset="tiny", seed=1, meta=()):
    """Writes repo/name/version/model.kdr with random weights; returns its path."""
    d = os.path.join(repo, name, str(version))
    os.makedirs(d, exist_ok=True)
    path = os.path.join(d, "model.kdr")
    args = ["random", "--preset", preset, "--seed", seed, "--name", name]
    for m in meta:
        args += ["--meta", m]
    ckpt(*(args + ["-o", path]))
    return path


def add_corrupt(repo, name, version):
    """Writes a model.kdr that cannot verify (a valid one with a flipped byte)."""
    path = add_model(repo, name, version, seed=99)
    with open(path, "r+b") as f:
        f.seek(os.path.getsize(path) // 2)
        b = f.read(1)
        f.seek(-1, 1)
        f.write(bytes([b[0] ^ 0xFF]))
    return path


class Server:
    """A running kdrank-serve. start() waits (bounded) for its listening line."""

    def __init__(self, repo, *extra, wait=60):
        self.dir = tempfile.mkdtemp(prefix="kdserve-")
        self.log_path = os.path.join(self.dir, "serve.log")
        cmd = [ARGS["serve"], "--model-repo", repo, "--listen", "127.0.0.1:0",
               "--metrics-listen", "127.0.0.1:0", "--threads", "2"] + [str(a) for a in extra]
        if ARGS["wrapper"]:
            cmd = ARGS["wrapper"].split() + cmd
            wait *= 4
        self.log = open(self.log_path, "w")
        self.proc = subprocess.Popen(cmd, stdout=self.log, stderr=subprocess.STDOUT)
        self.port = self.metrics_port = None
        deadline = time.time() + wait
        while time.time() < deadline and self.proc.poll() is None:
            text = self.text()
            m = re.search(r"event=metrics_listening .*port=(\d+)", text)
            if m:
                self.metrics_port = int(m.group(1))
            m = re.search(r"event=listening .*port=(\d+)", text)
            if m:
                self.port = int(m.group(1))
                return
            time.sleep(0.05)
        self.stop()
        raise RuntimeError("kdrank-serve did not start:\n" + self.text())

    def text(self):
        with open(self.log_path) as f:
            return f.read()

    def target(self):
        return "127.0.0.1:%d" % self.port

    def stop(self, sig=signal.SIGTERM, timeout=60):
        """Signals the server and waits for it; returns its exit code."""
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout=timeout * (4 if ARGS["wrapper"] else 1))
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=30)
        self.log.close()
        return self.proc.returncode


def run_serve(*args, timeout=60):
    """Runs kdrank-serve to completion (for flag errors, --help); returns (code, stdout+stderr)."""
    p = subprocess.run([ARGS["serve"]] + [str(a) for a in args], capture_output=True, text=True,
                       timeout=timeout)
    return p.returncode, p.stdout + p.stderr


def wait_for(pred, timeout=10.0, step=0.05):
    """Polls pred() until true or the timeout; returns its last value."""
    end = time.time() + timeout
    while True:
        v = pred()
        if v or time.time() >= end:
            return v
        time.sleep(step)
