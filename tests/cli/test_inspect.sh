#!/bin/sh
# `lora inspect` on a good model, a corrupt one, and bad options.
# usage: test_inspect.sh LORA MAKE_TINY_MODEL WORKDIR
set -u
lora=$1 mk=$2 work=$3
pass=0 fail=0
ok()  { pass=$((pass + 1)); }
bad() { fail=$((fail + 1)); echo "FAIL: $*" >&2; }
rm -rf "$work" && mkdir -p "$work"
"$mk" "$work/m" || { echo "cannot make model" >&2; exit 1; }

out=$("$lora" inspect "$work/m" --method lora --r 4 --batch 2 --seq-len 16 2>&1)
[ $? -eq 0 ] && ok || bad "inspect on a good model failed: $out"
for want in "n_layer      2" "n_embd       32" "parameters" "transformer.h.1.mlp.c_proj.weight" \
            "F32" "training memory estimate (method lora, r=4, B=2, T=16)" "total"; do
    echo "$out" | grep -qF "$want" && ok || bad "inspect output lacks '$want'"
done

# --checkpoint-activations: fewer activation bytes, said in the header
acts() { "$lora" inspect "$work/m" --batch 64 --seq-len 16 --no-tensors "$@" |
         sed -n 's/^  activations *\([0-9.]*\) MiB$/\1/p'; }
a0=$(acts) a1=$(acts --checkpoint-activations)
awk -v a="$a0" -v b="$a1" 'BEGIN { exit !(a > 0 && b > 0 && b < a) }' && ok ||
    bad "checkpointed activations $a1 MiB, not fewer than $a0 MiB"
"$lora" inspect "$work/m" --no-tensors --checkpoint-activations |
    grep -qF "activations checkpointed)" && ok || bad "the estimate's header lacks the option"

# corrupt: truncated weights
cp -r "$work/m" "$work/trunc"
truncate -s 5000 "$work/trunc/model.safetensors"
err=$("$lora" inspect "$work/trunc" 2>&1 >/dev/null); rc=$?
[ $rc -eq 1 ] && ok || bad "truncated model: exit $rc, want 1"
[ "$(printf '%s\n' "$err" | wc -l)" -eq 1 ] && ok || bad "truncated model: not one line: $err"
echo "$err" | grep -q "trunc/model.safetensors" && ok || bad "error does not name the file: $err"

# corrupt: header length past the end of the file
cp -r "$work/m" "$work/hdr"
printf '\377\377\377\377\000\000\000\000' | dd of="$work/hdr/model.safetensors" conv=notrunc 2>/dev/null
err=$("$lora" inspect "$work/hdr" 2>&1 >/dev/null); rc=$?
[ $rc -eq 1 ] && ok || bad "bad header length: exit $rc"
echo "$err" | grep -q "hdr/model.safetensors" && ok || bad "bad header: $err"

# corrupt: config.json
cp -r "$work/m" "$work/cfg"
printf '{"n_layer": 2, "n_head": ' > "$work/cfg/config.json"
err=$("$lora" inspect "$work/cfg" 2>&1 >/dev/null); rc=$?
[ $rc -eq 1 ] && ok || bad "bad config: exit $rc"
echo "$err" | grep -q "cfg/config.json" && ok || bad "bad config: $err"

# missing directory, options
"$lora" inspect "$work/nope" >/dev/null 2>&1; [ $? -eq 1 ] && ok || bad "missing dir"
"$lora" inspect "$work/m" --bogus >/dev/null 2>&1; [ $? -eq 2 ] && ok || bad "unknown option"
"$lora" inspect "$work/m" --r -3 >/dev/null 2>&1; [ $? -eq 2 ] && ok || bad "negative rank"
"$lora" inspect "$work/m" --seq-len 99 >/dev/null 2>&1; [ $? -eq 1 ] && ok || bad "T > n_positions"
"$lora" inspect --help | grep -q "usage: lora inspect" && ok || bad "--help"
"$lora" frobnicate >/dev/null 2>&1; [ $? -eq 2 ] && ok || bad "unknown command"
"$lora" --help | grep -q inspect && ok || bad "lora --help"

echo "test_inspect: $pass passed, $fail failed"
[ $fail -eq 0 ]
