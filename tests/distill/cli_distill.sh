#!/bin/sh
# cli_distill.sh - kdrank-train's distillation command line: bad flags and bad pins are refused with
# a message naming the problem and exit status 1; a working label + fit prints the rate and coverage.
# Usage: cli_distill.sh KDRANK_TRAIN
set -u
B="$1"
dir="$(mktemp -d /tmp/kd-cli-distill.XXXXXX)"
trap 'rm -rf "$dir"' EXIT
fails=0
# expect STATUS PATTERN CMD...: runs CMD, checks its exit status and that stderr+stdout match PATTERN
expect() {
  want="$1" pat="$2"; shift 2
  out="$("$@" 2>&1)"; rc=$?
  if [ "$rc" -ne "$want" ] || ! printf '%s' "$out" | grep -q -- "$pat"; then
    echo "FAIL: $* -> status $rc (want $want), output: $out"; fails=$((fails + 1))
  else
    echo "ok: $*"
  fi
}
"$B" synth --out "$dir/d" --train 2000 --test 500 --users 100 --items 50 >/dev/null 2>&1 || { echo "synth failed"; exit 1; }
F="--train $dir/d/train.tsv --test $dir/d/test.tsv --schema $dir/d/schema.json --arch tiny --epochs 1 --quiet"
"$B" fit $F --out "$dir/t.kdr" >/dev/null 2>&1 || { echo "teacher fit failed"; exit 1; }
expect 1 "required" "$B" label --teacher "$dir/t.kdr" --data "$dir/d/train.tsv" --store "$dir/l.db"
expect 1 "unknown flag" "$B" label --teacher "$dir/t.kdr" --bogus 1
expect 1 "version" "$B" label --teacher "$dir/t.kdr" --data "$dir/d/train.tsv" --store "$dir/l.db" --teacher-version "a/b"
expect 1 "No such file\|not found\|cannot" "$B" label --teacher "$dir/none.kdr" --data "$dir/d/train.tsv" --store "$dir/l.db" --teacher-version v1
expect 0 "labels_per_sec" "$B" label --teacher "$dir/t.kdr" --data "$dir/d/train.tsv" --store "$dir/l.db" --teacher-version v1
expect 1 "immutable" "$B" label --teacher "$dir/t.kdr" --data "$dir/d/train.tsv" --store "$dir/l.db" --teacher-version v1
expect 1 "needs --labels" "$B" fit $F --distill aux
expect 1 "distill" "$B" fit $F --distill sideways --labels "$dir/l.db@v1"
expect 1 "@" "$B" fit $F --distill aux --labels "$dir/l.db"
expect 1 "no task 'nope'" "$B" fit $F --distill aux --labels "$dir/l.db@v1" --distill-tasks nope
expect 1 "alpha" "$B" fit $F --distill direct --labels "$dir/l.db@v1" --alpha 1.5
expect 1 "aux-heads" "$B" fit $F --distill aux --labels "$dir/l.db@v1" --aux-heads maybe
expect 1 "lambda" "$B" fit $F --distill aux --labels "$dir/l.db@v1" --lambda nope=1
expect 1 "v2" "$B" fit $F --distill aux --labels "$dir/l.db@v2"
expect 0 "coverage 1.000000" "$B" fit $F --distill aux --labels "$dir/l.db@v1" --lambda click=0.5 --temperature 2 --out "$dir/s.kdr"
[ "$fails" -eq 0 ] || { echo "$fails failure(s)"; exit 1; }
echo "all passed"
