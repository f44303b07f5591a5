#!/usr/bin/env bash
# demo.sh - kdrank's main job end to end on embedded defaults (no external service):
#   setup -> build (Release) -> synthetic data -> teacher (2x the student) -> teacher labels into a
#   SQLite label store -> student with auxiliary distillation -> publish into a model repository ->
#   kdrank-serve on 127.0.0.1 (port chosen at run time) -> score a request with a real gRPC client
#   and compare with `kdrank-ckpt score` -> stop the server (SIGTERM, clean drain).
# Usage: deploy/demo.sh
# Environment:
#   KD_DEMO_FAST=1        small data and 1 epoch (the CTest run; about 10 s after the build)
#   KD_DEMO_BUILD_DIR=D   use an existing build in D (skips setup.sh and the Release build)
#   KD_DEMO_DIR=D         working directory (default: a fresh temp dir, removed on success)
# Exits non-zero on any failure, naming the step.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"

step=0
say() { step=$((step + 1)); echo; echo "== demo step $step: $*"; }
fail() { echo "demo: FAILED at step $step: $*" >&2; exit 1; }
trap 'rc=$?; [ $rc -ne 0 ] && echo "demo: FAILED at step $step (exit $rc)" >&2' EXIT

if [ "${KD_DEMO_FAST:-0}" = 1 ]; then
  n_train=20000 n_test=5000 users=500 items=300 epochs=1
else
  n_train=200000 n_test=50000 users=2000 items=1000 epochs=2
fi

if [ -n "${KD_DEMO_BUILD_DIR:-}" ]; then
  build="$KD_DEMO_BUILD_DIR"
  say "using the existing build in $build (KD_DEMO_BUILD_DIR)"
else
  build="$root/build-release"
  say "installing missing Debian packages (deploy/setup.sh)"
  "$root/deploy/setup.sh"
  say "building kdrank (Release) in $build"
  cmake -S "$root" -B "$build" -DCMAKE_BUILD_TYPE=Release >/dev/null
  cmake --build "$build" -j"$(nproc)" >/dev/null
fi
train="$build/model/train/kdrank-train"
ckpt="$build/loader/kdrank-ckpt"
serve="$build/server/kdrank-serve"
for b in "$train" "$ckpt" "$serve"; do [ -x "$b" ] || fail "$b was not built"; done

keep=1
if [ -n "${KD_DEMO_DIR:-}" ]; then work="$KD_DEMO_DIR"; mkdir -p "$work"; else work="$(mktemp -d /tmp/kdrank-demo.XXXXXX)"; keep=0; fi
echo "demo: working in $work"
server_pid=""
cleanup() {
  if [ -n "$server_pid" ] && kill -0 "$server_pid" 2>/dev/null; then kill -TERM "$server_pid" 2>/dev/null || true; fi
}
trap 'rc=$?; cleanup; [ $rc -ne 0 ] && echo "demo: FAILED at step $step (exit $rc); files kept in $work" >&2; exit $rc' EXIT

say "synthetic data: $n_train training and $n_test test examples (kdrank-train synth)"
"$train" synth --out "$work/data" --train "$n_train" --test "$n_test" --users "$users" --items "$items" --seed 1

say "teacher: 2x the student (preset ref-teacher-2x), trained on hard labels"
"$train" fit --train "$work/data/train.tsv" --test "$work/data/test.tsv" --schema "$work/data/schema.json" \
  --arch ref-teacher-2x --epochs "$epochs" --out "$work/teacher.kdr" --progress plain

say "teacher labels: one logit per task per training example into the SQLite store $work/labels.db, version teacher-2x-v1"
"$train" label --teacher "$work/teacher.kdr" --data "$work/data/train.tsv" --store "$work/labels.db" \
  --teacher-version teacher-2x-v1

say "student (ref-student) with auxiliary distillation of click and satisfied (aux heads kept, not served)"
"$train" fit --train "$work/data/train.tsv" --test "$work/data/test.tsv" --schema "$work/data/schema.json" \
  --arch ref-student --epochs "$epochs" --out "$work/student.kdr" --progress plain \
  --labels "$work/labels.db@teacher-2x-v1" --distill aux --distill-tasks click,satisfied

say "publishing the student into the model repository $work/repo as model 'student'"
"$train" publish "$work/student.kdr" --repo "$work/repo" --model student
"$ckpt" verify "$work/repo/student/1/model.kdr"
"$ckpt" inspect "$work/repo/student/1/model.kdr" | grep -E "provenance\.(teacher_version|distill_mode|distill_tasks|label_coverage)"

say "starting kdrank-serve on 127.0.0.1 (port 0: chosen at run time)"
"$serve" --model-repo "$work/repo" --listen 127.0.0.1:0 --metrics-listen "" 2>"$work/serve.log" &
server_pid=$!
port=""
for _ in $(seq 1 100); do
  port="$(sed -n 's/.*event=listening .*port=\([0-9]*\).*/\1/p' "$work/serve.log" | head -1)"
  [ -n "$port" ] && break
  kill -0 "$server_pid" 2>/dev/null || { cat "$work/serve.log" >&2; fail "kdrank-serve exited"; }
  sleep 0.1
done
[ -n "$port" ] || { cat "$work/serve.log" >&2; fail "kdrank-serve did not report its port within 10 s"; }
echo "demo: kdrank-serve pid $server_pid listening on 127.0.0.1:$port"

say "scoring a request of 5 candidates through gRPC (Python grpcio client) and with kdrank-ckpt score"
"$ckpt" request --model "$work/repo/student/1/model.kdr" --candidates 5 --seed 7 -o "$work/request.json"
"$ckpt" score "$work/repo/student/1/model.kdr" --request "$work/request.json" >"$work/expect.json"
echo "kdrank-ckpt score: $(cat "$work/expect.json")"
/usr/bin/python3 "$root/deploy/demo_client.py" --addr "127.0.0.1:$port" --request "$work/request.json" \
  --proto-dir "$root/proto" --model student --expect "$work/expect.json"

say "stopping kdrank-serve (SIGTERM: drain, exit 0)"
kill -TERM "$server_pid"
rc=0
for _ in $(seq 1 100); do kill -0 "$server_pid" 2>/dev/null || break; sleep 0.1; done
kill -0 "$server_pid" 2>/dev/null && fail "kdrank-serve did not stop within 10 s"
wait "$server_pid" || rc=$?
server_pid=""
[ "$rc" -eq 0 ] || fail "kdrank-serve exited with status $rc"
echo
echo "demo: OK (teacher -> labels -> aux-distilled student -> published -> served -> scores match)"
[ "$keep" = 0 ] && rm -rf "$work"
exit 0
