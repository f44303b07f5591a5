#!/usr/bin/env bash
# run_swap_bench.sh - kdrank-serve p99 and RSS across 100 hot swaps (server/HOTSWAP.md).
# Builds a temporary repository with ref-student version 1, starts kdrank-serve on run-time ports,
# runs kdrank-bench-swap: a steady phase, then 100 publications (two checkpoints with different
# weights, alternated), while closed-loop clients score; prints both phases' p99, the ratio and
# the server's RSS before and after. Usage:
#   server/bench/run_swap_bench.sh [BUILD_DIR] [SWAPS] [EVERY_MS]    (default build 100 300)
# Environment: KD_BENCH_PRESET (ref-student), KD_BENCH_THREADS (server threads, 2),
# KD_BENCH_CLIENTS (1), KD_BENCH_CANDIDATES (100), KD_BENCH_STEADY_S (20).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
build="${1:-$root/build}"
swaps="${2:-100}"
every="${3:-300}"
preset="${KD_BENCH_PRESET:-ref-student}"
tmp="$(mktemp -d)"
trap 'kill "${pid:-}" 2>/dev/null || true; rm -rf "$tmp"' EXIT
mkdir -p "$tmp/repo/student/1" "$tmp/ck"
"$build/loader/kdrank-ckpt" random --preset "$preset" --seed 1 --name student -o "$tmp/repo/student/1/model.kdr" >/dev/null
"$build/loader/kdrank-ckpt" random --preset "$preset" --seed 2 --name student -o "$tmp/ck/a.kdr" >/dev/null
"$build/loader/kdrank-ckpt" random --preset "$preset" --seed 3 --name student -o "$tmp/ck/b.kdr" >/dev/null
"$build/server/kdrank-serve" --model-repo "$tmp/repo" --listen 127.0.0.1:0 --metrics-listen 127.0.0.1:0 \
  --threads "${KD_BENCH_THREADS:-2}" --rescan-interval-ms 1000 2>"$tmp/serve.log" &
pid=$!
for _ in $(seq 1 200); do grep -q "event=listening" "$tmp/serve.log" && break; sleep 0.1; done
port=$(sed -n 's/.*event=listening .*port=\([0-9]*\).*/\1/p' "$tmp/serve.log")
[ -n "$port" ] || { cat "$tmp/serve.log"; exit 1; }
echo "cpu: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //'), $(nproc) cores; server threads ${KD_BENCH_THREADS:-2}; preset $preset, checkpoint $(stat -c %s "$tmp/ck/a.kdr") bytes"
"$build/server/kdrank-bench-swap" --target "ipv4:127.0.0.1:$port" --pid "$pid" --repo "$tmp/repo" \
  --model student --ckpts "$tmp/ck/a.kdr,$tmp/ck/b.kdr" --swaps "$swaps" --every-ms "$every" \
  --clients "${KD_BENCH_CLIENTS:-1}" --candidates "${KD_BENCH_CANDIDATES:-100}" --steady-s "${KD_BENCH_STEADY_S:-20}"
echo "server: $(grep -c 'event=model_loaded' "$tmp/serve.log") loads, $(grep -c 'event=model_unloaded' "$tmp/serve.log") unloads, $(grep -c 'event=model_load_failed' "$tmp/serve.log") failed; load_ms: $(grep -o 'load_ms=[0-9]*' "$tmp/serve.log" | sed 's/load_ms=//' | sort -n | awk '{a[NR]=$1} END {if (NR) printf "median %d max %d", a[int((NR+1)/2)], a[NR]}')"
kill -TERM "$pid"
wait "$pid"
