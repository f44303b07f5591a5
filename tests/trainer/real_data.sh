#!/bin/sh
# real_data.sh - the converters on the real data sets in ../shared/data (never copied into the
# project): row counts and label rates checked against the source files with awk, the time split,
# and a ref-student-shaped model on MovieLens 100K beating the popularity baseline on `like`.
# Exit 0 pass, 1 fail, 77 skip (data absent). Usage: real_data.sh KDRANK_TRAIN DATA_DIR
set -u
B="$1"; data="$2"
ml="$data/ml-100k"; kr="$data/kuairand-1k/log_random_4_22_to_5_08_1k.csv"
if [ ! -f "$ml/u.data" ]; then echo "SKIP: $ml/u.data absent (the data sets live in ../shared/data)"; exit 77; fi
tmp=$(mktemp -d); trap 'rm -rf "$tmp"' EXIT
pass=0; fail=0
check() { if eval "$1"; then pass=$((pass + 1)); else fail=$((fail + 1)); echo "FAIL: $2"; fi; }

"$B" convert movielens --src "$ml" --out "$tmp/ml" >/dev/null || { echo "FAIL: convert movielens"; exit 1; }
# the split: train = ratings before t = 889237269 (data README), test = the rest, counted from the source
src_test=$(awk -F'\t' '$4 >= 889237269' "$ml/u.data" | wc -l)
train=$(($(wc -l < "$tmp/ml/train.tsv") - 1)); test=$(($(wc -l < "$tmp/ml/test.tsv") - 1))
check "[ $((train + test)) -eq 100000 ]" "movielens rows $train + $test, expected 100000"
check "[ $test -eq $src_test ]" "movielens test rows $test, expected $src_test (time >= 889237269)"
# like = rating >= 4: the converted label column against the source ratings
src_like=$(awk -F'\t' '$3 >= 4' "$ml/u.data" | wc -l)
col=$(head -1 "$tmp/ml/train.tsv" | tr '\t' '\n' | grep -n '^like$' | cut -d: -f1)
conv_like=$(tail -q -n +2 "$tmp/ml/train.tsv" "$tmp/ml/test.tsv" | cut -f"$col" | grep -c '^1$')
check "[ $conv_like -eq $src_like ]" "movielens like=1 rows $conv_like, expected $src_like"

base=$("$B" baseline --train "$tmp/ml/train.tsv" --test "$tmp/ml/test.tsv" --schema "$tmp/ml/schema.json" \
       --feature item_id --task like | sed -n 's/.*test AUC \([0-9.]*\).*/\1/p')
"$B" fit --train "$tmp/ml/train.tsv" --test "$tmp/ml/test.tsv" --schema "$tmp/ml/schema.json" --arch ref-student \
  --epochs 2 --early-metric auc:like --out "$tmp/ml/m.kdr" --summary "$tmp/ml/s.json" --progress plain >/dev/null
auc=$(/usr/bin/python3 -c "import json,sys; print(json.load(open(sys.argv[1]))['best']['like']['auc'])" "$tmp/ml/s.json")
echo "movielens like: popularity AUC $base, ref-student AUC $auc"
check "awk 'BEGIN{exit !($base > 0.6 && $auc > $base + 0.02)}'" "model AUC $auc not clearly above popularity $base"

if [ -f "$kr" ]; then
  "$B" convert kuairand --src "$data/kuairand-1k" --out "$tmp/kr" >/dev/null || { echo "FAIL: convert kuairand"; exit 1; }
  src_rows=$(($(wc -l < "$kr") - 1))
  rows=$(($(wc -l < "$tmp/kr/train.tsv") + $(wc -l < "$tmp/kr/test.tsv") - 2))
  check "[ $rows -le $src_rows ] && [ $rows -ge $((src_rows - 1)) ]" "kuairand rows $rows, expected $src_rows (one duplicate row may be dropped)"
else
  echo "SKIP part: $kr absent"
fi
echo "$pass passed, $fail failed"
[ $fail -eq 0 ]
