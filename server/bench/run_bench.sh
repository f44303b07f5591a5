#!/usr/bin/env bash
# run_bench.sh - kdrank-serve latency breakdown and memory with ref-student (see server/README.md).
# Builds a temporary repository (kdrank-ckpt random: ref-student as "student", tiny as the floor
# model), starts kdrank-serve on run-time ports, runs kdrank-bench-serve against it, stops it.
# Usage: server/bench/run_bench.sh [BUILD_DIR] [ITERS]     (default build, 300)
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
build="${1:-$root/build}"
iters="${2:-300}"
tmp="$(mktemp -d)"
trap 'kill "${pid:-}" 2>/dev/null || true; rm -rf "$tmp"' EXIT
mkdir -p "$tmp/repo/student/1" "$tmp/repo/tiny/1"
"$build/loader/kdrank-ckpt" random --preset ref-student --seed 1 --name student -o "$tmp/repo/student/1/model.kdr" >/dev/null
"$build/loader/kdrank-ckpt" random --preset tiny --seed 2 --name tiny -o "$tmp/repo/tiny/1/model.kdr" >/dev/null
"$build/server/kdrank-serve" --model-repo "$tmp/repo" --listen 127.0.0.1:0 --metrics-listen 127.0.0.1:0 \
  --threads "${KD_BENCH_THREADS:-2}" 2>"$tmp/serve.log" &
pid=$!
for _ in $(seq 1 200); do grep -q "event=listening" "$tmp/serve.log" && break; sleep 0.1; done
port=$(sed -n 's/.*event=listening .*port=\([0-9]*\).*/\1/p' "$tmp/serve.log")
mport=$(sed -n 's/.*event=metrics_listening .*port=\([0-9]*\).*/\1/p' "$tmp/serve.log")
[ -n "$port" ] || { cat "$tmp/serve.log"; exit 1; }
grep -o 'event=model_loaded model=student.*' "$tmp/serve.log"
echo "cpu: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //'), $(nproc) cores; server threads ${KD_BENCH_THREADS:-2}"
"$build/server/kdrank-bench-serve" --target "ipv4:127.0.0.1:$port" --metrics-port "$mport" --pid "$pid" \
  --iters "$iters" --ckpt-bytes "$(stat -c %s "$tmp/repo/student/1/model.kdr")"
kill -TERM "$pid"
wait "$pid"
