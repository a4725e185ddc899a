#!/usr/bin/env bash
# bench/demo.sh: issue 6's demo targets, measured. Runs `alignprop demo` (its
# defaults, or the options given) and prints, as a Markdown table row, the
# fraction of held-out images with the target count before and after by both
# readings, the gains in points (target: at least +30) and the wall time
# (target: about 5 minutes on 2 cores).
#
#   bench/demo.sh [build/alignprop] [demo options...]
#   bench/demo.sh [build/alignprop] --waits [STEPS]
#
# --waits times STEPS (12) demo steps with 8 evaluation images each side under
# OpenMP wait settings (passive, GOMP_SPINCOUNT 300, 3000, 30000), first on the
# machine as it is, then with one core held by a busy loop: the table of
# docs/core.md. Run it on an otherwise idle machine.
set -euo pipefail
bin=build/alignprop
[ $# -gt 0 ] && [ "${1#--}" = "$1" ] && { bin=$1; shift; }
tmp=$(mktemp -d)
busy=
trap 'rm -rf "$tmp"; [ -n "$busy" ] && kill "$busy" 2>/dev/null; true' EXIT

if [ "${1:-}" = --waits ]; then
  steps=${2:-12}
  run() { # wait setting -> seconds
    local env=(env -u OMP_WAIT_POLICY -u GOMP_SPINCOUNT AP_KEEP_WAIT_POLICY=1 AP_NUM_THREADS=2)
    if [ "$1" = passive ]; then env+=(OMP_WAIT_POLICY=passive); else env+=(GOMP_SPINCOUNT="$1"); fi
    rm -rf "$tmp/w"
    local t0 t1
    t0=$(date +%s.%N)
    "${env[@]}" "$bin" demo -o "$tmp/w" --steps "$steps" --eval-per-prompt 1 > /dev/null
    t1=$(date +%s.%N)
    awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.1f s", b - a }'
  }
  settings=(passive 300 3000 30000)
  declare -A idle
  for w in "${settings[@]}"; do idle[$w]=$(run "$w"); done
  sh -c 'while :; do :; done' &
  busy=$!
  echo "| waits | as it is | one core busy |"
  echo "|---|---|---|"
  for w in "${settings[@]}"; do echo "| $w | ${idle[$w]} | $(run "$w") |"; done
  exit 0
fi

t0=$(date +%s.%N)
out=$("$bin" demo -o "$tmp/demo" "$@")
t1=$(date +%s.%N)
echo "$out" | grep -E "^model|^training" >&2
# "  exactly 3 shapes (reward model)   7.0%    42.2%" -> 7.0 42.2
read -r mb ma < <(echo "$out" | awk '/shapes \(reward model\)/ { gsub("%", ""); print $(NF-1), $NF }')
read -r pb pa < <(echo "$out" | awk '/shapes \(pixel count\)/ { gsub("%", ""); print $(NF-1), $NF }')
images=$(echo "$out" | awk '/held-out images/ { print $1 }')
[ -n "$mb" ] && [ -n "$pb" ] || { echo "bench/demo.sh: no count table in the demo's output" >&2; exit 1; }
awk -v mb="$mb" -v ma="$ma" -v pb="$pb" -v pa="$pa" -v n="$images" -v a="$t0" -v b="$t1" 'BEGIN {
  print "| images | counting model | gain | pixel count | gain | wall time |"
  print "|---|---|---|---|---|---|"
  printf "| %d | %.1f%% -> %.1f%% | %+.1f | %.1f%% -> %.1f%% | %+.1f | %.0f s |\n", n, mb, ma, ma - mb, pb, pa, pa - pb, b - a
  printf "targets: gains of at least +30 points (%s, %s); about 300 s on 2 cores (%.2fx)\n",
         ((ma - mb >= 30) ? "met" : "NOT met"), ((pa - pb >= 30) ? "met" : "NOT met"), (b - a) / 300
}'
