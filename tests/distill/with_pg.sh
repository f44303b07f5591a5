#!/usr/bin/env bash
# with_pg.sh - runs a command against a private, throw-away PostgreSQL server.
# Usage: tests/distill/with_pg.sh COMMAND [ARGS...]
#   Creates a data directory in a fresh temp dir, starts the Debian postgresql binaries on
#   127.0.0.1 and a port chosen at run time (unix socket in the temp dir), runs COMMAND with the
#   server's URI in $KD_PG_URI and every argument @PG_URI@ replaced by it, then stops the server
#   and removes the temp dir (trap, also on failure).
#   As root the server runs as the unprivileged user "postgres" (PostgreSQL refuses root).
#   KD_PG_OPTS: extra server options, e.g. "-c fsync=off" for tests.
# Exit: COMMAND's status; 77 (CTest SKIP) with the reason printed if the server binaries are absent.
set -euo pipefail

pgbin="${KD_PGBIN:-}"
if [ -z "$pgbin" ]; then
  for d in /usr/lib/postgresql/*/bin; do [ -x "$d/pg_ctl" ] && pgbin="$d"; done
fi
if [ -z "$pgbin" ] || [ ! -x "$pgbin/initdb" ] || [ ! -x "$pgbin/pg_ctl" ]; then
  echo "SKIP: PostgreSQL server binaries not found under /usr/lib/postgresql/*/bin (apt-get install postgresql, or deploy/setup.sh)"
  exit 77
fi
as=()
if [ "$(id -u)" -eq 0 ]; then
  if ! id postgres >/dev/null 2>&1; then
    echo "SKIP: running as root and there is no 'postgres' user to run the server as (apt-get install postgresql)"
    exit 77
  fi
  as=(runuser -u postgres --)
fi

dir="$(mktemp -d /tmp/kd-pg.XXXXXX)"
chmod 0755 "$dir"
[ ${#as[@]} -gt 0 ] && chown postgres: "$dir"
cleanup() {
  if [ -f "$dir/data/postmaster.pid" ]; then
    "${as[@]}" "$pgbin/pg_ctl" -D "$dir/data" -m immediate -w -t 30 stop >/dev/null 2>&1 || true
  fi
  rm -rf "$dir"
}
trap cleanup EXIT INT TERM

if ! "${as[@]}" "$pgbin/initdb" -D "$dir/data" -A trust -U kd -E UTF8 --no-sync >"$dir/initdb.log" 2>&1; then
  echo "with_pg.sh: initdb failed:" >&2; cat "$dir/initdb.log" >&2; exit 1
fi

# A free port: ask the kernel for one, and retry a few times if another process takes it first.
started=0
for attempt in 1 2 3 4 5; do
  port="$(/usr/bin/python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"
  if "${as[@]}" "$pgbin/pg_ctl" -D "$dir/data" -l "$dir/server.log" -w -t 60 \
       -o "-c listen_addresses=127.0.0.1 -p $port -k $dir ${KD_PG_OPTS:-}" start >/dev/null 2>&1; then
    started=1; break
  fi
done
if [ $started -ne 1 ]; then
  echo "with_pg.sh: the PostgreSQL server did not start; its log:" >&2; cat "$dir/server.log" >&2 || true; exit 1
fi

export KD_PG_URI="postgresql://kd@127.0.0.1:$port/postgres"
echo "with_pg.sh: PostgreSQL $("$pgbin/postgres" --version | awk '{print $3}') at $KD_PG_URI (data in $dir)"
args=()
for a in "$@"; do args+=("${a//@PG_URI@/$KD_PG_URI}"); done
status=0
"${args[@]}" || status=$?
exit $status
