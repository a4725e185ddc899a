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

[ $fail -eq 0 ] && echo "cli: all passed" || echo "cli: failures"
exit $fail
