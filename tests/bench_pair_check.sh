#!/usr/bin/env bash
# launch/bench_pair.py end to end on a tiny problem: two settings of one binary, one pair
# per CPU order, each pair's rates read from bench-kernel's --metrics; and its errors for a
# bad --cpus and a failing side. Checks shapes, not speed. Exit 77 (ctest's "skipped")
# without taskset or with fewer than 2 CPUs.
#   tests/bench_pair_check.sh RINGATTN_BIN
set -euo pipefail
bin=$1
src=$(cd "$(dirname "$0")/.." && pwd)
fail() { echo "bench_pair_check: $*" >&2; exit 1; }
command -v taskset >/dev/null || { echo "no taskset: skipped"; exit 77; }
[[ $(nproc) -ge 2 ]] || { echo "fewer than 2 CPUs: skipped"; exit 77; }
py=$(command -v python3)

out=$("$py" "$src/launch/bench_pair.py" --a "$bin --dtype f32" --b "$bin --dtype bf16" \
  --rounds 1 -- --seq-len 256 --heads 2 --head-dim 32)
echo "$out"
[[ $(grep -c '^| [12] | [01] | [0-9.]* | [0-9.]* | [0-9.]* |$' <<<"$out") == 2 ]] ||
  fail "expected two pair rows"
grep -Eq '^B/A geometric mean [0-9.]+ over 2 pairs, 95% interval [0-9.]+-[0-9.]+$' <<<"$out" ||
  fail "no geometric mean line"

# Bad input: a clear error naming the option, no traceback.
err=$("$py" "$src/launch/bench_pair.py" --a "$bin" --b "$bin" --cpus 0 2>&1) &&
  fail "--cpus 0 was accepted"
grep -q -- "--cpus: expected two different CPU numbers" <<<"$err" || fail "--cpus error: $err"
err=$("$py" "$src/launch/bench_pair.py" --a "$bin" --b "$bin --head-dim 7" --rounds 1 2>&1) &&
  fail "a failing side was accepted"
grep -q "B failed" <<<"$err" || fail "failing side error: $err"
grep -q "Traceback" <<<"$err" && fail "traceback: $err"
err=$("$py" "$src/launch/bench_pair.py" --a "$bin" --b "$bin" --rounds 1 -- --head-dim 32,64 2>&1) &&
  fail "two problems were accepted"
grep -q "one problem" <<<"$err" || fail "two-problem error: $err"
echo "bench_pair_check: ok"
