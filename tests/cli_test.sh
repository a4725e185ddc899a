#!/usr/bin/env bash
# The command-line tool as a user runs it: outputs, exit codes, error messages.
set -uo pipefail
bin=$1
fail=0
check() { # name, expected, actual
  if [ "$2" != "$3" ]; then echo "FAIL $1: expected '$2', got '$3'"; fail=1; else echo "ok $1"; fi
}
contains() { # name, needle, haystack
  case "$3" in *"$2"*) echo "ok $1";; *) echo "FAIL $1: '$2' not in '$3'"; fail=1;; esac
}

check "version" "alignprop 0.1.0" "$($bin version)"
# with no wait policy given, the tool chooses one and starts itself again (docs/core.md)
check "version, wait policy chosen by the tool" "alignprop 0.1.0" \
  "$(env -u OMP_WAIT_POLICY -u GOMP_SPINCOUNT -u AP_KEEP_WAIT_POLICY $bin version)"
out=$($bin frobnicate 2>&1); rc=$?
check "unknown command exits 2" 2 $rc
contains "unknown command named" "frobnicate" "$out"

check "tokenize cat" "49406 320 1125 539 320 2368 49407" "$($bin tokenize --prompt 'a photo of a cat')"
check "tokenize astronaut" "49406 550 18376 6765 320 4558 525 518 3293 269 49407" \
  "$($bin tokenize --prompt 'An astronaut riding a horse on the moon.')"
n=$($bin tokenize --all --prompt '' | wc -w)
check "tokenize pads to 77" 77 "$n"
long=$(printf 'cat %.0s' $(seq 100))
out=$($bin tokenize --prompt "$long" 2>&1 >/dev/null)
contains "tokenize warns on truncation" "only the first 75" "$out"
out=$($bin tokenize --bogus 2>&1); rc=$?
check "tokenize bad flag exits 2" 2 $rc
contains "tokenize bad flag named" "--bogus" "$out"
out=$($bin tokenize --prompt x --tokenizer /nonexistent 2>&1); rc=$?
check "tokenize missing folder exits 1" 1 $rc
contains "tokenize missing folder named" "/nonexistent" "$out"

# init, inspect, sample on a tiny model in both layouts
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
out=$($bin init --config tiny --seed 3 -o "$tmp/m" 2>&1); rc=$?
check "init exits 0" 0 $rc
for f in model_index.json unet/config.json unet/diffusion_pytorch_model.safetensors vae/config.json \
         vae/diffusion_pytorch_model.safetensors text_encoder/config.json text_encoder/model.safetensors \
         tokenizer/vocab.json tokenizer/merges.txt scheduler/scheduler_config.json model.safetensors; do
  [ -f "$tmp/m/$f" ] || { echo "FAIL init wrote no $f"; fail=1; }
done
out=$($bin inspect "$tmp/m" 2>&1)
contains "inspect folder format" "diffusers folder" "$out"
contains "inspect folder unet" "unet: channels 32(attn) 64" "$out"
out=$($bin inspect "$tmp/m/model.safetensors" 2>&1)
contains "inspect single file" "Stable Diffusion 1.x family" "$out"
contains "inspect single file params" "text encoder: width 32, 2 layers" "$out"
out=$($bin init --config huge -o "$tmp/x" 2>&1); rc=$?
check "init bad config exits 1" 1 $rc
contains "init bad config named" "huge" "$out"
for src in "$tmp/m" "$tmp/m/model.safetensors"; do
  out=$($bin sample --model "$src" --prompt "a red circle" --steps 2 --width 16 --height 16 --batch 2 \
        --weights-dtype f32 --seed 5 --dump "$tmp/dump" -o "$tmp/s.png" 2>&1); rc=$?
  check "sample from $(basename $src) exits 0" 0 $rc
  [ -s "$tmp/s.png" ] || { echo "FAIL sample wrote no PNG"; fail=1; }
  md5sum "$tmp/dump/image.safetensors" | cut -d' ' -f1 >> "$tmp/sums"
done
for f in token_ids text_embeddings latents_init latents_001 latents_002 image; do
  [ -f "$tmp/dump/$f.safetensors" ] || { echo "FAIL --dump wrote no $f"; fail=1; }
done
out=$($bin inspect "$tmp/dump/token_ids.safetensors" --tensors 2>&1)
contains "--dump token ids are i32 [4,77]" "token_ids I32 [4,77]" "$out"
check "both layouts sample the same image" 1 "$(sort -u "$tmp/sums" | wc -l)"
out=$($bin sample --model "$tmp/m" --prompt x --steps 2 --width 17 --height 16 -o "$tmp/s.png" 2>&1); rc=$?
check "sample bad size exits 1" 1 $rc
contains "sample bad size named" "17x16" "$out"
out=$($bin sample --model "$tmp/m" --prompt x --sampler plms -o "$tmp/s.png" 2>&1); rc=$?
check "sample bad sampler exits 2" 2 $rc
contains "sample bad sampler named" "plms" "$out"
out=$($bin sample --model "$tmp/nope" --prompt x -o "$tmp/s.png" 2>&1); rc=$?
check "sample missing model exits 1" 1 $rc
contains "sample missing model named" "$tmp/nope" "$out"

# inspect on both layouts of a model made by init (the numbers must agree with
# what init reports and between the layouts)
here=$(cd "$(dirname "$0")" && pwd)
init_out=$($bin init --config tiny --seed 5 -o "$tmp/tiny"); rc=$?
check "init tiny exits 0" 0 $rc
counts=$(echo "$init_out" | sed -n 's/^parameters: unet \([0-9]*\), vae \([0-9]*\), text encoder \([0-9]*\)$/\1 \2 \3/p')
read -r pu pv pt <<< "$counts"
out_dir=$($bin inspect "$tmp/tiny" 2>&1); rc=$?
check "inspect folder exits 0" 0 $rc
contains "inspect folder format" "$tmp/tiny: diffusers folder" "$out_dir"
contains "inspect folder architecture" "architecture: Stable Diffusion 1.x family" "$out_dir"
contains "inspect folder unet" "unet: channels 32(attn) 64, 1 layers per block, 2 heads, context 32: $pu parameters" "$out_dir"
contains "inspect folder vae" "vae: channels 16 32, latent 4, scale 0.18215: $pv parameters" "$out_dir"
contains "inspect folder text" "text encoder: width 32, 2 layers, 2 heads, vocab 49408: $pt parameters" "$out_dir"
out_file=$($bin inspect "$tmp/tiny/model.safetensors" 2>&1); rc=$?
check "inspect single file exits 0" 0 $rc
contains "inspect single file format" "model.safetensors: safetensors, " "$out_file"
contains "inspect single file total" " tensors, $((pu + pv + pt)) parameters" "$out_file"
contains "inspect single file dtypes" "  F32: " "$out_file"
check "inspect layouts agree" "$(echo "$out_dir" | grep -E '^  (unet|vae|text encoder):')" \
  "$(echo "$out_file" | grep -E '^  (unet|vae|text encoder):')"
n_listed=$($bin inspect "$tmp/tiny/model.safetensors" --tensors | grep -c '^model\.diffusion_model\.')
n_all=$($bin inspect "$tmp/tiny/model.safetensors" --tensors | grep -c ' \[')
[ "$n_listed" -gt 0 ]; check "inspect --tensors lists UNet tensors" 0 $?
contains "inspect --tensors lists every tensor" "safetensors, $n_all tensors" "$out_file"
$bin init --config tiny --seed 5 --dtype bf16 -o "$tmp/bf16" > /dev/null
out=$($bin inspect "$tmp/bf16/model.safetensors" 2>&1)
contains "inspect bf16 weights" "  BF16: " "$out"
contains "inspect bf16 biases stay f32" "  F32: " "$out"
out=$($bin inspect "$here/ref/sd/tiny_seed1.safetensors" 2>&1); rc=$?
check "inspect plain tensor file exits 0" 0 $rc
contains "inspect plain tensor file" "not a Stable Diffusion checkpoint" "$out"
out=$($bin inspect "$here/ref/torch/lightning.ckpt" 2>&1)
contains "inspect torch checkpoint format" "PyTorch checkpoint (zip)" "$out"
out=$($bin inspect "$tmp/nothing" 2>&1); rc=$?
check "inspect missing path exits 1" 1 $rc
contains "inspect missing path named" "$tmp/nothing" "$out"
mkdir "$tmp/empty"
out=$($bin inspect "$tmp/empty" 2>&1); rc=$?
check "inspect folder without model_index.json exits 1" 1 $rc
contains "inspect folder without model_index.json" "model_index.json" "$out"

# train: a run directory, and its adapters load into sample
out=$($bin train --model "$tmp/m" --reward brightness --prompts builtin:simple_animals --steps 2 --batch 1 \
      --sample-steps 2 --width 16 --height 16 --weights-dtype f32 --seed 1 -o "$tmp/run" 2>&1); rc=$?
check "train exits 0" 0 $rc
for f in config.json log.jsonl lora.safetensors optimizer.safetensors; do
  [ -s "$tmp/run/$f" ] || { echo "FAIL train wrote no $f"; fail=1; }
done
check "train logs one line per step" 2 "$(wc -l < "$tmp/run/log.jsonl")"
out=$($bin sample --model "$tmp/m" --prompt "a cat" --steps 2 --width 16 --height 16 --lora "$tmp/run/lora.safetensors" \
      -o "$tmp/l.png" 2>&1); rc=$?
check "sample with the trained LoRA exits 0" 0 $rc
contains "sample merged the trained LoRA" "kohya keys): 32 modules" "$out"
out=$($bin sample --model "$tmp/m" --prompt "a cat" --steps 2 --width 16 --height 16 --lora "$tmp/run/lora.safetensors:0.5" \
      -o "$tmp/l.png" 2>&1)
contains "--lora FILE:SCALE takes the strength" "strength 0.5" "$out"
out=$($bin train --model "$tmp/m" --reward brightnes -o "$tmp/run2" 2>&1); rc=$?
check "train unknown reward exits 1" 1 $rc
contains "train unknown reward named" "brightnes" "$out"
out=$($bin train --model "$tmp/m" --reward brightness --truncation fixed:0 -o "$tmp/run2" 2>&1); rc=$?
check "train bad truncation exits 2" 2 $rc
contains "train bad truncation named" "fixed:0" "$out"
out=$($bin train --model "$tmp/m" --reward brightness --steps abc -o "$tmp/run2" 2>&1); rc=$?
check "train bad number exits 2" 2 $rc
contains "train bad number named" "--steps abc" "$out"

# evaluation during training: before, every N steps and at the end, with grids
printf 'a red circle\na blue square\n' > "$tmp/evalp.txt"
out=$($bin train --model "$tmp/m" --reward brightness --steps 3 --sample-steps 2 --width 16 --height 16 \
      --weights-dtype f32 --eval-prompts "$tmp/evalp.txt" --eval-every 2 --eval-per-prompt 2 --out "$tmp/run_e" 2>&1); rc=$?
check "train with evaluation exits 0" 0 $rc
check "eval.jsonl has steps 0, 2 and 3" "0 2 3" "$(sed -E 's/^\{"step": ([0-9]+).*/\1/' "$tmp/run_e/eval.jsonl" | tr '\n' ' ' | sed 's/ $//')"
for s in 000000 000002 000003; do
  [ -s "$tmp/run_e/eval/step_$s.png" ] || { echo "FAIL no eval grid for step $s"; fail=1; }
done
contains "eval lines count 4 images" '"images": 4' "$(head -1 "$tmp/run_e/eval.jsonl")"
[ -s "$tmp/run_e/report.html" ] || { echo "FAIL train wrote no report.html"; fail=1; }
rep=$(cat "$tmp/run_e/report.html")
contains "report names the reward change" "Evaluation reward:" "$rep"
contains "report has the curves" "<polyline" "$rep"
check "report embeds the 3 evaluation grids" 3 "$(grep -o 'data:image/png;base64,iVBOR' "$tmp/run_e/report.html" | wc -l)"
grep -q 'src="http\|href="http' "$tmp/run_e/report.html" && { echo "FAIL report refers to the network"; fail=1; }

# a random truncation that can detach every step still trains (such chains add no gradient)
out=$($bin train --model "$tmp/m" --reward brightness --steps 3 --sample-steps 2 --width 16 --height 16 \
      --truncation rand-step:1:2 --weights-dtype f32 --out "$tmp/run_rs" 2>&1); rc=$?
check "train with rand-step truncation exits 0" 0 $rc

# lora mix: alpha 1 gives the first adapter, alpha 0 the second (same images through sample)
$bin train --model "$tmp/m" --reward saturation --steps 2 --sample-steps 2 --width 16 --height 16 --weights-dtype f32 \
  --seed 2 --out "$tmp/run_s" > /dev/null 2>&1
for al in 1 0; do
  out=$($bin lora mix "$tmp/run/lora.safetensors" "$tmp/run_s/lora.safetensors" --alpha $al -o "$tmp/mix$al.safetensors" 2>&1); rc=$?
  check "lora mix alpha $al exits 0" 0 $rc
done
img_of() { # lora file -> md5 of the decoded image
  $bin sample --model "$tmp/m" --prompt "a cat" --steps 2 --width 16 --height 16 --weights-dtype f32 --lora "$1" \
    --dump "$tmp/d_$2" -o "$tmp/x.png" > /dev/null 2>&1
  md5sum "$tmp/d_$2/image.safetensors" | cut -d' ' -f1
}
check "lora mix alpha 1 = first" "$(img_of "$tmp/run/lora.safetensors" a)" "$(img_of "$tmp/mix1.safetensors" b)"
check "lora mix alpha 0 = second" "$(img_of "$tmp/run_s/lora.safetensors" c)" "$(img_of "$tmp/mix0.safetensors" d)"
out=$($bin lora mix "$tmp/run/lora.safetensors" "$tmp/m/model.safetensors" --alpha 0.5 -o "$tmp/bad.safetensors" 2>&1); rc=$?
check "lora mix of different layouts exits 1" 1 $rc
[ -e "$tmp/bad.safetensors" ] && { echo "FAIL lora mix left a file after an error"; fail=1; }

# eval: a reward per prompt and the mean
printf 'a red circle\na blue square\n' > "$tmp/p.txt"
out=$($bin eval --model "$tmp/m" --reward brightness --prompts "$tmp/p.txt" --per-prompt 2 --steps 2 --width 16 \
      --height 16 --lora "$tmp/run/lora.safetensors" 2>&1); rc=$?
check "eval exits 0" 0 $rc
contains "eval reports the mean" "reward brightness=1 over 4 images (2 prompts x 2 seeds): mean" "$out"
# the jpeg reward reports libjpeg's exact size beside its estimate
out=$($bin eval --model "$tmp/m" --reward jpeg --prompts "$tmp/p.txt" --steps 2 --width 16 --height 16 2>&1); rc=$?
check "eval jpeg exits 0" 0 $rc
contains "eval jpeg reports the exact size" "jpeg_kb: mean" "$out"
contains "eval jpeg reports the estimate" "jpeg_kb_est: mean" "$out"
out=$($bin eval --model "$tmp/m" --reward nope --prompts "$tmp/p.txt" 2>&1); rc=$?
check "eval unknown reward exits 1" 1 $rc

# without a shipped model the demo runs what it can and says so
out=$(AP_DEMO_MODEL=/nonexistent $bin demo -o "$tmp/demo" 2>&1); rc=$?
check "fallback demo exits 0" 0 $rc
contains "demo says no demo model was found" "no shipped demo model found (looked at AP_DEMO_MODEL=/nonexistent)" "$out"
contains "demo says where its image is" "wrote $tmp/demo/samples.png" "$out"
[ -s "$tmp/demo/samples.png" ] || { echo "FAIL demo wrote no samples.png"; fail=1; }
# the AlignProp demo end to end, few steps, on the tiny model (the shipped one is exercised by make demo)
out=$($bin demo --model "$tmp/m" --steps 2 --eval-per-prompt 1 --sample-steps 3 -o "$tmp/demo2" 2>&1); rc=$?
check "demo exits 0" 0 $rc
contains "demo reports the target fraction" "exactly 3 shapes (pixel count)" "$out"
contains "demo reports the loss before and after" "loss mean |count - 3|" "$out"
for f in before.png after.png run/report.html run/lora.safetensors; do
  [ -s "$tmp/demo2/$f" ] || { echo "FAIL demo wrote no $f"; fail=1; }
done
contains "demo report names the reward change" "Evaluation reward:" "$(cat "$tmp/demo2/run/report.html" 2>/dev/null)"
# the shipped model: this build finds it (what make demo runs) and the demo runs on it
out=$(env -u AP_DEMO_MODEL $bin demo --steps 1 --eval-per-prompt 1 --sample-steps 2 -o "$tmp/demo4" 2>&1); rc=$?
check "demo on the shipped model exits 0" 0 $rc
contains "demo finds the shipped model" "assets/shapes64" "$out"
contains "demo on the shipped model prints its table" "exactly 3 shapes (reward model)" "$out"
[ -s "$tmp/demo4/after.png" ] || { echo "FAIL demo on the shipped model wrote no after.png"; fail=1; }
# with no wait policy given, the tool picks one of its two and the run says which (docs/core.md)
out=$(env -u OMP_WAIT_POLICY -u GOMP_SPINCOUNT -u AP_KEEP_WAIT_POLICY \
  $bin demo --model "$tmp/m" --steps 1 --eval-per-prompt 1 --sample-steps 2 -o "$tmp/demo5" 2>&1); rc=$?
check "demo with the tool's wait policy exits 0" 0 $rc
case "$out" in
  *"(waiting: spin 3000)"*|*"(waiting: passive)"*) echo "ok the tool chose a wait policy";;
  *) echo "FAIL the tool chose no wait policy: $(echo "$out" | grep waiting)"; fail=1;;
esac
out=$($bin demo --model "$tmp/nothing" --steps 2 2>&1); rc=$?
check "demo with a missing model exits 1" 1 $rc
contains "demo names the missing model" "$tmp/nothing" "$out"
out=$($bin demo --steps 0 2>&1); rc=$?
check "demo --steps 0 exits 2" 2 $rc
out=$($bin demo --model "$tmp/m" --truncation bogus:1 --steps 1 -o "$tmp/demo3" 2>&1); rc=$?
check "demo --truncation bogus exits 2" 2 $rc
contains "demo names the bad truncation" "--truncation" "$out"
contains "demo run records the count reward's gradient temperature" '"count_temperature":	4' "$(cat "$tmp/demo2/run/config.json" 2>/dev/null)"
out=$($bin train --model "$tmp/m" --reward count --count-temperature 0 -o "$tmp/ct" 2>&1); rc=$?
check "train --count-temperature 0 exits 2" 2 $rc
contains "train names the bad temperature flag" "--count-temperature" "$out"

# train: checkpoints, --resume, SIGTERM
tr="--model $tmp/m --reward brightness --batch 1 --sample-steps 2 --width 16 --height 16 --weights-dtype f32 --seed 1"
out=$($bin train $tr --steps 2 --save-every 1 --keep-checkpoints 1 -o "$tmp/rr" 2>&1); rc=$?
check "train with checkpoints exits 0" 0 $rc
[ -f "$tmp/rr/checkpoints/step_000002/DONE" ] || { echo "FAIL train wrote no complete step_000002"; fail=1; }
[ -e "$tmp/rr/checkpoints/step_000001" ] && { echo "FAIL --keep-checkpoints 1 kept step_000001"; fail=1; }
out=$($bin train $tr --steps 3 --resume "$tmp/rr" 2>&1); rc=$?
check "train --resume exits 0" 0 $rc
check "resumed log has one line per step" 3 "$(wc -l < "$tmp/rr/log.jsonl")"
out=$($bin train $tr --width 24 --steps 4 --resume -o "$tmp/rr" 2>&1); rc=$?
check "train --resume incompatible exits 1" 1 $rc
contains "train --resume incompatible names the field" "width" "$out"
$bin train $tr --steps 1000000 --save-every 0 -o "$tmp/rs" >/dev/null 2>"$tmp/rs.err" &
pid=$!
sleep 2
kill -TERM $pid
wait $pid; rc=$?
check "train stopped by SIGTERM exits 143" 143 $rc
contains "train says it was interrupted" "interrupted" "$(cat "$tmp/rs.err")"
ls "$tmp"/rs/checkpoints/step_*/DONE >/dev/null 2>&1 || { echo "FAIL SIGTERM left no complete checkpoint"; fail=1; }

# the shapes dataset and the counting model
out=$($bin shapes --seed 2 -n 5 -o "$tmp/shp" 2>&1); rc=$?
check "shapes exits 0" 0 $rc
[ -s "$tmp/shp/grid.png" ] || { echo "FAIL shapes wrote no grid"; fail=1; }
check "shapes captions one line per image" 5 "$(wc -l < "$tmp/shp/captions.txt")"
out=$($bin shapes -n 0 -o "$tmp/shp" 2>&1); rc=$?
check "shapes -n 0 exits 2" 2 $rc
out=$($bin train-counter --steps 2 --batch 4 --eval 20 --seed 3 -o "$tmp/counter.safetensors" 2>&1); rc=$?
check "train-counter exits 0" 0 $rc
contains "train-counter reports held-out accuracy" "held-out" "$out"
[ -s "$tmp/counter.safetensors" ] || { echo "FAIL train-counter wrote no weights"; fail=1; }
out=$($bin train-counter --steps 2 2>&1); rc=$?
check "train-counter without -o exits 2" 2 $rc
out=$($bin train-counter --batch 0 -o x 2>&1); rc=$?
check "train-counter --batch 0 exits 2" 2 $rc
contains "train-counter bad batch named" "--batch" "$out"
# pretrain: both stages on the tiny config and the toy stream; the folder loads in sample and in train
pt="--config tiny --data toy --image-size 16 --batch 2 --vae-steps 3 --unet-steps 3 --scale-batches 1 --seed 1"
out=$($bin pretrain $pt --save-dtype f16 -o "$tmp/pt" 2>&1); rc=$?
check "pretrain exits 0" 0 $rc
for f in config.json log.jsonl model/model_index.json model/unet/diffusion_pytorch_model.safetensors \
         model/vae/config.json checkpoints/step_000006/DONE checkpoints/step_000003/DONE; do
  [ -f "$tmp/pt/$f" ] || { echo "FAIL pretrain wrote no $f"; fail=1; }
done
check "pretrain logs a line per step and the scale factor" 7 "$(wc -l < "$tmp/pt/log.jsonl")"
grep -q '"scaling_factor": 0.18215' "$tmp/pt/model/vae/config.json" && { echo "FAIL pretrain kept the default scale factor"; fail=1; }
out=$($bin inspect "$tmp/pt/model/unet/diffusion_pytorch_model.safetensors" 2>&1)
contains "pretrain --save-dtype f16 writes f16" "F16" "$out"
out=$($bin sample --model "$tmp/pt/model" --prompt "a red circle" --steps 2 --width 16 --height 16 -o "$tmp/pt.png" 2>&1); rc=$?
check "sample loads the pretrained model" 0 $rc
out=$($bin train --model "$tmp/pt/model" --reward brightness --steps 1 --sample-steps 2 --width 16 --height 16 \
      -o "$tmp/pt_train" 2>&1); rc=$?
check "train loads the pretrained model" 0 $rc
out=$($bin pretrain $pt --unet-steps 4 --resume "$tmp/pt" 2>&1); rc=$?
check "pretrain --resume to more steps exits 0" 0 $rc
check "the resumed log has one more step" 8 "$(wc -l < "$tmp/pt/log.jsonl")"
out=$($bin pretrain $pt --batch 3 --resume "$tmp/pt" 2>&1); rc=$?
check "pretrain --resume incompatible exits 1" 1 $rc
contains "pretrain --resume incompatible names the field" "batch" "$out"
out=$($bin pretrain $pt --stage decoder -o "$tmp/pt2" 2>&1); rc=$?
check "pretrain bad stage exits 2" 2 $rc
contains "pretrain bad stage named" "decoder" "$out"
out=$($bin pretrain $pt --data imagenet -o "$tmp/pt2" 2>&1); rc=$?
check "pretrain bad data exits 1" 1 $rc
contains "pretrain bad data named" "imagenet" "$out"
$bin pretrain $pt --vae-steps 1000000 --save-every 0 -o "$tmp/pts" >/dev/null 2>"$tmp/pts.err" &
pid=$!
sleep 2
kill -INT $pid
wait $pid; rc=$?
check "pretrain stopped by SIGINT exits 130" 130 $rc
contains "pretrain says it was interrupted" "interrupted" "$(cat "$tmp/pts.err")"
ls "$tmp"/pts/checkpoints/step_*/DONE >/dev/null 2>&1 || { echo "FAIL SIGINT left no complete pretrain checkpoint"; fail=1; }

[ $fail -eq 0 ] && echo "cli: all passed" || echo "cli: failures"
exit $fail
