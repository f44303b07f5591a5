#!/usr/bin/env bash
# test_labelstore_cli.sh - kd-labelstore list/show/verify on a real SQLite store written by
# kd-labelstore-bench, including its errors and a tampered label caught by verify.
# Usage: test_labelstore_cli.sh KD_LABELSTORE KD_LABELSTORE_BENCH
set -u
cli="$1"; bench="$2"
tmp="$(mktemp -d /tmp/kd-labelstore-cli.XXXXXX)"
trap 'rm -rf "$tmp"' EXIT
fails=0
check() { # check NAME EXPECTED_STATUS EXPECTED_SUBSTRING -- COMMAND...
  local name="$1" want="$2" sub="$3"; shift 4
  local out st
  out="$("$@" 2>&1)"; st=$?
  if [ "$st" -ne "$want" ] || ! grep -qF -- "$sub" <<<"$out"; then
    echo "FAIL $name: exit $st (want $want), output lacks '$sub':"; echo "$out" | head -20; fails=$((fails+1))
  else
    echo "ok   $name"
  fi
}
db="$tmp/labels.db"
"$bench" --sqlite "$db" --rows 1000 --tasks 3 --reps 1 >/dev/null || { echo "FAIL: bench could not write the store"; exit 1; }
version="$("$cli" list "$db" | awk 'NR==2 {print $1}')"
check list 0 "task0,task1,task2" -- "$cli" list "$db"
check list-state 0 "COMPLETE" -- "$cli" list "sqlite:$db"
check show 0 "rows             1000" -- "$cli" show "$db@$version"
check show-fp 0 "data_fingerprint bench:1000" -- "$cli" show "$db@$version"
check verify 0 "$version: OK: 1000 rows, example ids 0..999" -- "$cli" verify "$db@$version"
check verify-missing 1 "no label version 'nope'" -- "$cli" verify "$db@nope"
check list-missing-file 1 "read-only" -- "$cli" list "$tmp/absent.db"
check show-no-pin 1 "expected STORE@VERSION" -- "$cli" show "$db"
check bad-scheme 1 "unknown URI scheme 'mysql'" -- "$cli" list "mysql://x/y"
check usage 2 "usage" -- "$cli" frobnicate "$db"
# a client that drops the guard trigger and edits a label: verify catches it
/usr/bin/python3 - "$db" "$version" <<'PY'
import sqlite3, sys
c = sqlite3.connect(sys.argv[1])
c.execute("DROP TRIGGER kd_labels_no_update")
c.execute("UPDATE kd_labels SET logits = zeroblob(12) WHERE example_id = 500 AND vid = "
          "(SELECT id FROM kd_label_versions WHERE version = ?)", (sys.argv[2],))
c.commit()
PY
check verify-tampered 1 "content digest" -- "$cli" verify "$db@$version"
echo "$fails failed"
[ "$fails" -eq 0 ]
