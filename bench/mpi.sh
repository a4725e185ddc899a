#!/usr/bin/env bash
# bench/mpi.sh: data-parallel training on one machine. The same global batch
# (GLOBAL images per step, batch 1 per chain) trained by
#   - one process with THREADS threads and accumulation GLOBAL, and
#   - THREADS ranks (mpirun) with one thread each and accumulation GLOBAL/THREADS,
# on the small model config: images per second (median over the steps after the
# first) and the time in communication (comm_seconds of log.jsonl: the gradient
# allreduce and the gathering of the rewards). Prints a Markdown table.
#
#   bench/mpi.sh [build/alignprop] [--config small] [--size 64] [--sample-steps 4] [--steps 6] [--global 4]
set -euo pipefail
bin=build/alignprop
config=small size=64 ssteps=4 steps=6 global=4 threads=2
[ $# -gt 0 ] && [ "${1#--}" = "$1" ] && { bin=$1; shift; }
while [ $# -gt 0 ]; do
  case $1 in
    --config) config=$2;; --size) size=$2;; --sample-steps) ssteps=$2;; --steps) steps=$2;;
    --global) global=$2;; --threads) threads=$2;;
    *) echo "bench/mpi.sh: unknown option $1" >&2; exit 2;;
  esac
  shift 2
done
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
export OMPI_MCA_btl=self,vader OMPI_MCA_btl_vader_single_copy_mechanism=none OMPI_MCA_plm=isolated
export OMP_WAIT_POLICY=passive
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
"$bin" init --config "$config" --seed 1 -o "$tmp/m" > /dev/null
tr=(--model "$tmp/m" --reward brightness --batch 1 --sample-steps "$ssteps" --width "$size" --height "$size"
    --steps "$steps" --save-every 0 --seed 1)
median() { sort -g | awk '{a[NR]=$1} END {print (NR%2) ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2}'; }
col() { # log, key -> values of steps 2.. (step 1 warms caches up)
  tail -n +2 "$1" | sed -E "s/.*\"$2\": ([^,}]*).*/\1/"
}
AP_NUM_THREADS=$threads "$bin" train "${tr[@]}" --accum "$global" -o "$tmp/one" > /dev/null
AP_NUM_THREADS=1 mpirun -np "$threads" --bind-to core "$bin" train "${tr[@]}" --accum $((global / threads)) \
  -o "$tmp/ranks" > /dev/null
echo "| run | config | image | sample steps | global batch | images/s (median) | comm s/step (median) | step s (median) |"
echo "|---|---|---|---|---|---|---|---|"
for r in one ranks; do
  if [ $r = one ]; then what="1 process x $threads threads"; else what="$threads ranks x 1 thread"; fi
  echo "| $what | $config | ${size}x${size} | $ssteps | $global | $(col "$tmp/$r/log.jsonl" images_per_second | median) |" \
       "$(col "$tmp/$r/log.jsonl" comm_seconds | median) | $(col "$tmp/$r/log.jsonl" seconds | median) |"
done
