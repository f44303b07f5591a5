#!/usr/bin/env bash
# test.sh - installs what the tests need, builds kdrank and runs the whole suite under CTest.
# Usage: deploy/test.sh [--asan|--tsan]   (build dirs: build/, build-asan/, build-tsan/)
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
"$root/deploy/setup.sh"
dir=build; opts=(-DCMAKE_BUILD_TYPE=Release)
case "${1:-}" in
  --asan) dir=build-asan; opts=(-DCMAKE_BUILD_TYPE=Debug -DKD_ASAN=ON) ;;
  --tsan) dir=build-tsan; opts=(-DCMAKE_BUILD_TYPE=Debug -DKD_TSAN=ON) ;;
  "") ;;
  *) echo "usage: $0 [--asan|--tsan]" >&2; exit 2 ;;
esac
cmake -S "$root" -B "$root/$dir" -DKD_WERROR=ON "${opts[@]}" >/dev/null
cmake --build "$root/$dir" -j"$(nproc)"
cd "$root/$dir"
ctest --output-on-failure -j2 --timeout 600
