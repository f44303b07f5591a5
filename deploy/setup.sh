#!/usr/bin/env bash
# setup.sh - installs every Debian package kdrank's build, tests and demo need.
# Idempotent and non-interactive: installs only what is missing (apt-get update only then).
# Usage: deploy/setup.sh            (as root, or with sudo available)
set -euo pipefail

PKGS=(
  # build
  build-essential cmake pkg-config
  libgrpc-dev libprotobuf-c-dev protobuf-c-compiler libopenblas-dev libjemalloc-dev
  libcjson-dev libmicrohttpd-dev libsqlite3-dev libpq-dev zlib1g-dev
  # tests: real gRPC clients, reference math, real Prometheus and PostgreSQL, leak checks, plots
  python3 python3-grpcio python3-grpc-tools python3-numpy python3-torch python3-sklearn
  prometheus postgresql valgrind gnuplot-nox curl procps openssl
)
# Node.js for the grpc-js interop test: Debian's, unless a Node.js with npm is already installed
# (a Node.js from elsewhere conflicts with Debian's npm package).
if ! command -v node >/dev/null 2>&1 || ! command -v npm >/dev/null 2>&1; then
  PKGS+=(nodejs npm)
fi

missing=()
for p in "${PKGS[@]}"; do
  if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed"; then
    missing+=("$p")
  fi
done

if [ ${#missing[@]} -gt 0 ]; then
  SUDO=""
  if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi
  echo "setup: installing ${missing[*]}" >&2
  export DEBIAN_FRONTEND=noninteractive
  $SUDO apt-get update -q
  # Debian's prometheus and postgresql packages start services; tests start their own instances.
  $SUDO apt-get install -y -q --no-install-recommends "${missing[@]}"
else
  echo "setup: all ${#PKGS[@]} packages present" >&2
fi

# Node gRPC client for the interop tests (npm registry), installed into the tests' own folder.
here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
if [ -f "$here/tests/interop/node/package.json" ] && [ ! -d "$here/tests/interop/node/node_modules/@grpc/grpc-js" ]; then
  echo "setup: npm install (tests/interop/node)" >&2
  (cd "$here/tests/interop/node" && npm install --no-audit --no-fund --silent)
fi
