#!/usr/bin/env bash
# The CLIP rewards through the command-line tool: train --reward aesthetic and
# eval --reward hps / pickscore on a tiny SD model, with the tiny reward towers
# of tests/ref/clip_rewards/ (a models directory: clip-vit-large-patch14/,
# HPS_v2.1_compressed.pt, PickScore_v1/) found by --models-dir or AP_MODELS_DIR;
# the default loss, the missing-weights message, a bad --reward-resize.
set -uo pipefail
bin=$1
models=$2/tests/ref/clip_rewards
fail=0
check() { # name, expected, actual
  if [ "$2" != "$3" ]; then echo "FAIL $1: expected '$2', got '$3'"; fail=1; else echo "ok $1"; fi
}
contains() { # name, needle, haystack
  case "$3" in *"$2"*) echo "ok $1";; *) echo "FAIL $1: '$2' not in '$3'"; fail=1;; esac
}

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
unset AP_MODELS_DIR
$bin init --config tiny --seed 3 -o "$tmp/m" > /dev/null 2>&1 || { echo "FAIL init"; exit 1; }
small="--sample-steps 2 --width 16 --height 16 --weights-dtype f32"

# train --reward aesthetic: the default loss is target:10; the reward is the head's ~5
out=$($bin train --model "$tmp/m" --reward aesthetic --models-dir "$models" --steps 2 $small --seed 1 \
      -o "$tmp/run" 2>&1); rc=$?
check "train aesthetic exits 0" 0 $rc
[ $rc -eq 0 ] || echo "$out"
cfg() { tr -d ' \t\n' < "$1" 2>/dev/null; } # config.json without white space
contains "train aesthetic records target:10" '"loss":"target:10"' "$(cfg "$tmp/run/config.json")"
contains "train aesthetic records the resize" '"reward_resize":"bilinear"' "$(cfg "$tmp/run/config.json")"
check "train aesthetic logs 2 steps" 2 "$(wc -l < "$tmp/run/log.jsonl")"
r=$(sed -E 's/.*"reward_mean": ([-0-9.e]+).*/\1/' "$tmp/run/log.jsonl" | head -1)
check "aesthetic reward is on the head's scale" 1 "$(awk -v r="$r" 'BEGIN { print (r > 3 && r < 7) }')"
l=$(sed -E 's/.*"loss": ([-0-9.e]+).*/\1/' "$tmp/run/log.jsonl" | head -1)
check "the loss is 0.01 * |r - 10|" 1 "$(awk -v r="$r" -v l="$l" 'BEGIN { d = l - 0.01 * (10 - r); print (d < 1e-4 && d > -1e-4) }')"
# an explicit loss wins
out=$($bin train --model "$tmp/m" --reward aesthetic --loss maximize --models-dir "$models" --steps 1 $small \
      -o "$tmp/run2" 2>&1); rc=$?
check "train aesthetic --loss maximize exits 0" 0 $rc
contains "explicit loss recorded" '"loss":"maximize"' "$(cfg "$tmp/run2/config.json")"

# eval --reward hps through AP_MODELS_DIR, pickscore through --models-dir with bicubic resizing
printf 'a photo of a cat\nAn astronaut riding a horse on the moon.\n' > "$tmp/p.txt"
out=$(AP_MODELS_DIR="$models" $bin eval --model "$tmp/m" --reward hps --prompts "$tmp/p.txt" --steps 2 --width 16 \
      --height 16 --weights-dtype f32 2>&1); rc=$?
check "eval hps exits 0" 0 $rc
contains "eval hps reports the mean" "reward hps=1 over 2 images (2 prompts x 1 seeds): mean" "$out"
out=$($bin eval --model "$tmp/m" --reward "pickscore=1,hps=0.5" --models-dir "$models" --reward-resize bicubic \
      --prompts "$tmp/p.txt" --steps 2 --width 16 --height 16 2>&1); rc=$?
check "eval pickscore+hps exits 0" 0 $rc
contains "eval mixture reports the mean" "reward pickscore=1,hps=0.5 over 2 images" "$out"

# missing weights: a clear message, exit 1
mkdir "$tmp/empty"
out=$($bin eval --model "$tmp/m" --reward aesthetic --models-dir "$tmp/empty" --prompts "$tmp/p.txt" 2>&1); rc=$?
check "eval with missing weights exits 1" 1 $rc
contains "missing weights name the repo" "openai/clip-vit-large-patch14" "$out"
contains "missing weights name the folder" "$tmp/empty/clip-vit-large-patch14" "$out"
out=$($bin train --model "$tmp/m" --reward hps --models-dir "$tmp/empty" -o "$tmp/run3" 2>&1); rc=$?
check "train with missing weights exits 1" 1 $rc
contains "missing HPS names the file" "HPS_v2.1_compressed.pt" "$out"
out=$($bin eval --model "$tmp/m" --reward pickscore --models-dir "$models" --reward-resize area \
      --prompts "$tmp/p.txt" 2>&1); rc=$?
check "bad --reward-resize exits 1" 1 $rc
contains "bad --reward-resize named" "'area'" "$out"

exit $fail
