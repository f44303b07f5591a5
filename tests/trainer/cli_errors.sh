#!/bin/sh
# cli_errors.sh - kdrank-train's command line on bad input: a malformed data row and a bad schema
# must fail (exit 1) with a message naming the file and line/column; bad flags name the flag.
# usage: cli_errors.sh KDRANK_TRAIN
set -u
T="$1"
D=$(mktemp -d /tmp/kd_cli.XXXXXX)
trap 'rm -rf "$D"' EXIT
fail=0
expect() { # expect NAME PATTERN CMD...
  name=$1; pat=$2; shift 2
  if "$@" >"$D/out" 2>"$D/err"; then echo "FAIL $name: exit 0"; fail=1; return; fi
  if ! grep -q -- "$pat" "$D/err"; then echo "FAIL $name: stderr lacks '$pat':"; cat "$D/err"; fail=1; return; fi
  echo "ok $name: $(head -1 "$D/err")"
}
printf '{"columns": [{"name": "y", "role": "label", "type": "binary"},\n {"name": "u", "role": "sparse", "group": "context", "rows": 10, "dim": 2},\n {"name": "i", "role": "dense", "group": "candidate"}]}\n' > "$D/s.json"
printf 'u\ty\ti\n1\t0\t0.5\n2\t1\t1\n3\tyes\t2\n4\t0\t3\n' > "$D/d.tsv"
expect bad_row "d.tsv:4: column 'y'" "$T" fit --train "$D/d.tsv" --schema "$D/s.json" --quiet --no-cache
printf '{"columns": [{"name": "y", "role": "label", "type": "binary"},\n {"name": "u", "role": "sparse", "group": "ctx", "rows": 10}]}\n' > "$D/bad.json"
expect bad_schema "column 1 'u'" "$T" fit --train "$D/d.tsv" --schema "$D/bad.json" --quiet
printf '{"columns": [\n{"name": "y", "role": "label"\n' > "$D/trunc.json"
expect bad_json "trunc.json:" "$T" fit --train "$D/d.tsv" --schema "$D/trunc.json" --quiet
expect bad_flag "--batch" "$T" fit --train "$D/d.tsv" --schema "$D/s.json" --batch -3
expect unknown_flag "--bogus" "$T" fit --train "$D/d.tsv" --schema "$D/s.json" --bogus 1
expect bad_publish "$D/d.tsv" "$T" publish "$D/d.tsv" --repo "$D/repo" --model m
# skipping the bad row works and says which line was skipped
if "$T" fit --train "$D/d.tsv" --schema "$D/s.json" --max-bad 1 --epochs 1 --progress plain --no-cache >"$D/out" 2>"$D/err" &&
   grep -q "d.tsv:4:" "$D/err"; then echo "ok skip_row"; else echo "FAIL skip_row"; cat "$D/err"; fail=1; fi
exit $fail
