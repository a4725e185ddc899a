#!/usr/bin/env bash
# Data-parallel training under mpirun (docs/distributed.md), on the tiny model:
#  - 2 ranks x batch 1 give the adapters of 1 rank x batch 1 x accumulation 2,
#    bit for bit (two chains: the sum over ranks is the sum one process makes),
#    with the same log and a sharded evaluation equal to the single-process one;
#  - resume under 2 ranks is bit-exact; resuming with other ranks x accumulation
#    is refused, the same chains per step with other ranks continue bit for bit;
#  - a rank that dies makes the job exit non-zero within a bounded time; an
#    error on one rank, or ranks whose adapters differ, stop every rank with
#    the message;
#  - SIGTERM to one rank stops every rank after the step, with a checkpoint.
# Usage: mpi_test.sh ALIGNPROP MPIEXEC ("none" when MPI was not compiled in).
set -uo pipefail
bin=$1
mpiexec=${2:-none}
if [ "$mpiexec" = none ] || [ ! -x "$mpiexec" ]; then
  echo "mpi: skipped: alignprop was built without MPI (install libopenmpi-dev and openmpi-bin, then reconfigure)"
  exit 77
fi
# Open MPI refuses root unless told; CI runs as root in a container: shared
# memory between the ranks only (no network), no ptrace-based single copy,
# more ranks than cores allowed, no binding (one thread per rank below).
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
export OMPI_MCA_btl=self,vader OMPI_MCA_btl_vader_single_copy_mechanism=none
export OMPI_MCA_rmaps_base_oversubscribe=1 OMPI_MCA_hwloc_base_binding_policy=none
export OMPI_MCA_plm=isolated
# under AddressSanitizer: Open MPI's libraries have no frame pointers, so the
# leak stacks of its allocations need the slow unwinder to reach the frames
# .ci/lsan.supp names
[ -n "${ASAN_OPTIONS:-}" ] && export ASAN_OPTIONS="$ASAN_OPTIONS:fast_unwind_on_malloc=0"
# one thread everywhere: results are bit-identical for the same thread count
export AP_NUM_THREADS=1 OMP_WAIT_POLICY=passive
run() { "$mpiexec" -np "$@"; }
fail=0
check() { # name, expected, actual
  if [ "$2" != "$3" ]; then echo "FAIL $1: expected '$2', got '$3'"; fail=1; else echo "ok $1"; fi
}
contains() { # name, needle, haystack
  case "$3" in *"$2"*) echo "ok $1";; *) echo "FAIL $1: '$2' not in '$3'"; fail=1;; esac
}
same() { # name, file a, file b
  if cmp -s "$2" "$3"; then echo "ok $1"; else echo "FAIL $1: $2 and $3 differ"; fail=1; fi
}
field() { # file, key -> the key's values, one line per log line
  sed -E "s/.*\"$2\": ([^,}]*).*/\1/" "$1" | tr '\n' ' '
}

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
$bin init --config tiny --seed 3 -o "$tmp/m" > /dev/null || { echo "FAIL init"; exit 1; }
printf 'a red circle\na blue square\na cat\n' > "$tmp/eval.txt"
tr="--model $tmp/m --reward brightness --batch 1 --sample-steps 2 --width 16 --height 16 --weights-dtype f32
    --seed 1 --lr 3e-2 --loss-coeff 1"

# 2 ranks x batch 1 = 1 rank x batch 1 x accumulation 2, after 5 steps
ev="--eval-prompts $tmp/eval.txt --eval-every 5"
out=$($bin train $tr $ev --steps 5 --accum 2 -o "$tmp/one" 2>&1); rc=$?
check "1 rank, accumulation 2 exits 0" 0 $rc
out=$(run 2 $bin train $tr $ev --steps 5 -o "$tmp/two" 2>&1); rc=$?
check "2 ranks exit 0" 0 $rc
contains "the global batch is printed" "global batch 2 = 2 ranks x batch 1 x accumulation 1" "$out"
check "only rank 0 reports" 1 "$(grep -c '^trained 5 steps' <<< "$out")"
same "2 ranks = accumulation 2: the same adapters, bit for bit" "$tmp/one/lora.safetensors" "$tmp/two/lora.safetensors"
same "... and the same optimizer state" "$tmp/one/optimizer.safetensors" "$tmp/two/optimizer.safetensors"
check "... and the same logged rewards (over both ranks' samples)" "$(field "$tmp/one/log.jsonl" reward_mean)" \
  "$(field "$tmp/two/log.jsonl" reward_mean)"
check "... and reward std" "$(field "$tmp/one/log.jsonl" reward_std)" "$(field "$tmp/two/log.jsonl" reward_std)"
check "the log says 2 ranks" "2 2 2 2 2 " "$(field "$tmp/two/log.jsonl" ranks)"
grep -q '"comm_seconds"' "$tmp/two/log.jsonl" || { echo "FAIL the log has no comm_seconds"; fail=1; }
same "the sharded evaluation = the single-process one (eval.jsonl)" "$tmp/one/eval.jsonl" "$tmp/two/eval.jsonl"
same "... and its grid" "$tmp/one/eval/step_000005.png" "$tmp/two/eval/step_000005.png"
check "evaluation counted every image once" 2 "$(grep -c '"images": 3' "$tmp/two/eval.jsonl")"
check "config.json records the ranks" 1 "$(grep -cE '"ranks":[[:space:]]*2' "$tmp/two/config.json")"

# resume under 2 ranks (DDIM noise and a random truncation use every stream)
rs="$tr --eta 0.5 --truncation rand:1:2"
run 2 $bin train $rs --steps 6 -o "$tmp/full" > /dev/null 2>&1
run 2 $bin train $rs --steps 3 -o "$tmp/part" > /dev/null 2>&1
out=$(run 2 $bin train $rs --steps 6 --resume "$tmp/part" 2>&1); rc=$?
check "resume under 2 ranks exits 0" 0 $rc
same "resume under 2 ranks is bit-exact" "$tmp/full/lora.safetensors" "$tmp/part/lora.safetensors"
same "... optimizer state too" "$tmp/full/optimizer.safetensors" "$tmp/part/optimizer.safetensors"
check "the resumed log has one line per step" 6 "$(wc -l < "$tmp/part/log.jsonl")"
grep -qE '"ranks":[[:space:]]*2' "$tmp/part/checkpoints/step_000006/state.json" || { echo "FAIL state.json has no ranks"; fail=1; }
# other ranks x accumulation: refused; the same chains per step: continues
run 2 $bin train $tr --steps 2 -o "$tmp/r2" > /dev/null 2>&1
out=$($bin train $tr --steps 4 --resume "$tmp/r2" 2>&1); rc=$?
check "resume with 1 rank x accumulation 1 of a 2-rank run exits 1" 1 $rc
contains "... naming the chains per step" "2 rank(s) x accumulation 1 = 2 chains per step, this run has 1 x 1 = 1" "$out"
out=$($bin train $tr --steps 5 --accum 2 --resume "$tmp/r2" 2>&1); rc=$?
check "resume of a 2-rank run with 1 rank x accumulation 2 exits 0" 0 $rc
same "... and continues bit for bit" "$tmp/one/lora.safetensors" "$tmp/r2/lora.safetensors"

# a rank that dies: the job ends, non-zero, in bounded time
t0=$(date +%s)
out=$(AP_TEST_DIST_EXIT=1:2 timeout 120 "$mpiexec" -np 2 $bin train $tr --steps 100000 -o "$tmp/dead" 2>&1); rc=$?
t1=$(date +%s)
[ $rc -ne 0 ] && [ $rc -ne 124 ]; check "a dead rank ends the job non-zero (rc $rc)" 0 $?
[ $((t1 - t0)) -lt 60 ]; check "... within 60 s ($((t1 - t0)) s)" 0 $?

# an error on one rank (MPMD: rank 1 gets a model that does not exist): every
# rank stops, and rank 0 reports rank 1's message
out=$(timeout 120 "$mpiexec" -np 1 $bin train $tr --steps 2 -o "$tmp/err" : -np 1 $bin train $tr --steps 2 \
      --model "$tmp/nomodel" -o "$tmp/err" 2>&1); rc=$?
check "an error on rank 1 ends the job with 1" 1 $rc
contains "... and rank 0 reports rank 1's message" "alignprop train: rank 1 of 2: $tmp/nomodel" "$out"
# ranks that drift apart (rank 1 with another learning rate) are caught by the
# per-step hash of adapters, moments and streams
out=$(timeout 120 "$mpiexec" -np 1 $bin train $tr --steps 2 -o "$tmp/drift" : -np 1 $bin train $tr --steps 2 \
      --lr 0.5 -o "$tmp/drift" 2>&1); rc=$?
check "ranks holding different adapters end the job with 1" 1 $rc
contains "... naming the rank" "after step 1 rank 1 holds other adapters" "$out"

# SIGTERM to one rank: every rank stops after the step, rank 0 checkpoints
"$mpiexec" -np 2 $bin train $tr --steps 100000 --save-every 0 -o "$tmp/stop" > "$tmp/stop.out" 2>&1 &
mp=$! # mpirun: the ranks are its children
for i in $(seq 100); do [ -s "$tmp/stop/log.jsonl" ] && break; sleep 0.2; done
rank1=$(pgrep -P $mp | sort -n | tail -1)
[ -n "$rank1" ] && kill -TERM "$rank1"
wait $mp; rc=$?
check "SIGTERM to one rank stops the job with 143" 143 $rc
contains "... saying so" "interrupted (SIGTERM)" "$(cat "$tmp/stop.out")"
ls "$tmp"/stop/checkpoints/step_*/DONE > /dev/null 2>&1 || { echo "FAIL SIGTERM left no complete checkpoint"; fail=1; }

[ $fail -eq 0 ] && echo "mpi: all passed" || echo "mpi: failures"
exit $fail
