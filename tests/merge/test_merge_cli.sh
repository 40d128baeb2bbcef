#!/bin/sh
# `lora merge` and `lora generate --adapter DIR[:SCALE] --merge` on tiny random models with
# adapters written by our own code: the merged directory is complete (tokenizer files copied),
# loads in our loader with the logits of base + adapters, keeps or changes the dtype as asked,
# and bad input (missing or malformed adapter, another base model, an occupied --out, a full
# disk) fails with one line and leaves no output behind.
# usage: test_merge_cli.sh LORA MAKE_TINY_MODEL MERGE_HELPER WORKDIR
set -u
lora=$1 mk=$2 helper=$3 work=$4
pass=0 fail=0
ok()  { pass=$((pass + 1)); }
bad() { fail=$((fail + 1)); echo "FAIL: $*" >&2; }
rm -rf "$work" && mkdir -p "$work"
m="$work/base"
"$mk" "$m" || { echo "cannot make model" >&2; exit 1; }

# a byte-level vocabulary for the tiny model's 61 ids (as test_generate.sh), and the other
# tokenizer-side files a merged directory must carry
{
    printf '{'
    i=0
    for ch in '\u0120' a b c d e f g h i j k l m n o p q r s t u v w x y z \
              A B C D E F G H I J K L M N O P Q R S T U V W X Y Z . , ! '?' \
              '\u00c3' '\u00a9' '\u010a'; do
        printf '"%s": %d, ' "$ch" $i
        i=$((i + 1))
    done
    printf '"<|endoftext|>": 60}\n'
} > "$m/vocab.json"
printf '#version: 0.2\n' > "$m/merges.txt"
printf '{"model_max_length": 16}\n' > "$m/tokenizer_config.json"
printf '{"eos_token": "<|endoftext|>"}\n' > "$m/special_tokens_map.json"
printf '{"eos_token_id": 60, "bos_token_id": 60}\n' > "$m/generation_config.json"

for k in qv all rslora adalora; do
    "$helper" adapter "$m" "$work/ad_$k" $k 3 || bad "cannot write the $k adapter"
done

# ---- one adapter: a complete directory with the right logits ----
"$lora" merge --model "$m" --adapter "$work/ad_qv" --out "$work/out_qv" 2>"$work/err"
rc=$?
[ $rc -eq 0 ] && ok || bad "merge qv: exit $rc: $(cat "$work/err")"
grep -q "merged into" "$work/err" && ok || bad "no summary line: $(cat "$work/err")"
for f in config.json model.safetensors vocab.json merges.txt tokenizer_config.json \
         special_tokens_map.json generation_config.json; do
    [ -f "$work/out_qv/$f" ] && ok || bad "merged directory lacks $f"
done
for f in vocab.json merges.txt tokenizer_config.json special_tokens_map.json \
         generation_config.json; do
    cmp -s "$m/$f" "$work/out_qv/$f" && ok || bad "$f is not a copy of the base's"
done
[ -z "$(ls "$work" | grep '\.tmp\.')" ] && ok || bad "a temporary was left: $(ls "$work")"
"$helper" logits "$m" "$work/exp_qv.safetensors" "$work/ad_qv" || bad "logits qv"
"$helper" compare "$work/out_qv" "$work/exp_qv.safetensors" 1e-5 && ok || bad "merged qv logits"
[ "$("$helper" dtype "$work/out_qv")" = "F32" ] && ok || bad "an F32 base did not give F32"

# ---- every kind, two adapters with scales, --scale ----
for k in all rslora adalora; do
    "$lora" merge --model "$m" --adapter "$work/ad_$k" --out "$work/out_$k" 2>"$work/err" \
        && ok || bad "merge $k: $(cat "$work/err")"
    "$helper" logits "$m" "$work/exp_$k.safetensors" "$work/ad_$k" || bad "logits $k"
    "$helper" compare "$work/out_$k" "$work/exp_$k.safetensors" 1e-5 && ok || bad "merged $k logits"
done
"$lora" merge --model "$m" --adapter "$work/ad_all:0.7" --adapter "$work/ad_qv:0.3" \
    --out "$work/out_two" 2>"$work/err" && ok || bad "merge two: $(cat "$work/err")"
"$helper" logits "$m" "$work/exp_two.safetensors" "$work/ad_all:0.7" "$work/ad_qv:0.3" \
    || bad "logits two"
"$helper" compare "$work/out_two" "$work/exp_two.safetensors" 1e-5 && ok || bad "two adapters"
"$lora" merge --model "$m" --adapter "$work/ad_qv" --scale 0.5 --out "$work/out_half" \
    2>"$work/err" && ok || bad "merge --scale: $(cat "$work/err")"
"$helper" logits "$m" "$work/exp_half.safetensors" "$work/ad_qv:0.5" || bad "logits half"
"$helper" compare "$work/out_half" "$work/exp_half.safetensors" 1e-5 && ok || bad "--scale 0.5"

# ---- dtypes: --dtype f16, and an F16 base stays F16 ----
"$lora" merge --model "$m" --adapter "$work/ad_qv" --dtype f16 --out "$work/out_f16" \
    2>"$work/err" && ok || bad "merge --dtype f16: $(cat "$work/err")"
[ "$("$helper" dtype "$work/out_f16")" = "F16" ] && ok || bad "--dtype f16 is not F16 on disk"
"$helper" compare "$work/out_f16" "$work/exp_qv.safetensors" 2e-2 && ok || bad "f16 logits"
"$mk" "$work/base16" f16 || bad "cannot make an f16 model"
"$helper" adapter "$work/base16" "$work/ad16" qv 4 || bad "adapter for the f16 base"
"$lora" merge --model "$work/base16" --adapter "$work/ad16" --out "$work/out_b16" \
    2>"$work/err" && ok || bad "merge on an f16 base: $(cat "$work/err")"
[ "$("$helper" dtype "$work/out_b16")" = "F16" ] && ok || bad "an F16 base did not stay F16"
"$lora" merge --model "$m" --adapter "$work/ad_qv" --dtype bf16 --out "$work/out_bf16" \
    2>/dev/null && ok || bad "merge --dtype bf16"
[ "$("$helper" dtype "$work/out_bf16")" = "BF16" ] && ok || bad "--dtype bf16 is not BF16"

# ---- generate: --adapter DIR:SCALE repeated, --merge gives the same tokens ----
g() { "$lora" generate --model "$@" --prompt "hello world" --greedy --ids --max-new 10 2>"$work/gerr"; }
u=$(g "$m" --adapter "$work/ad_all:0.7" --adapter "$work/ad_qv:0.3")
[ $? -eq 0 ] && [ -n "$u" ] && ok || bad "generate with two adapters: $(cat "$work/gerr")"
v=$(g "$m" --adapter "$work/ad_all:0.7" --adapter "$work/ad_qv:0.3" --merge)
[ $? -eq 0 ] && ok || bad "generate --merge: $(cat "$work/gerr")"
[ "$u" = "$v" ] && ok || bad "--merge changed the tokens: '$u' / '$v'"
w=$(g "$work/out_two" --tokenizer "$m")
[ "$u" = "$w" ] && ok || bad "the merged directory generates other tokens: '$u' / '$w'"
b=$(g "$m")
[ "$u" != "$b" ] && ok || bad "the adapters do not change the greedy tokens: '$u'"
"$lora" generate --model "$m" --merge --prompt hi --greedy 2>"$work/gerr" >/dev/null
[ $? -eq 2 ] && ok || bad "--merge without --adapter is not a usage error"

# ---- bad input: exit 1, one line, nothing written ----
expect_fail() { # NAME PATTERN ARGS... : exit 1, one stderr line matching PATTERN, no output dir
    name=$1 pat=$2
    shift 2
    "$lora" merge "$@" --out "$work/bad_out" 2>"$work/err" >/dev/null
    rc=$?
    [ $rc -eq 1 ] && ok || bad "$name: exit $rc, want 1: $(cat "$work/err")"
    grep -q "$pat" "$work/err" && ok || bad "$name: message lacks '$pat': $(cat "$work/err")"
    [ "$(wc -l < "$work/err")" -eq 1 ] && ok || bad "$name: stderr is not one line"
    [ ! -e "$work/bad_out" ] && ok || bad "$name: left $work/bad_out"
}
expect_fail "missing adapter" "nope/adapter_config.json" --model "$m" --adapter "$work/nope"
mkdir -p "$work/malformed" && cp "$work/ad_qv/"* "$work/malformed/"
printf '{"peft_type": "LORA", "r": ' > "$work/malformed/adapter_config.json"
expect_fail "malformed adapter_config.json" "adapter_config.json" --model "$m" \
    --adapter "$work/malformed"
"$helper" base "$work/other" 48 && "$helper" adapter "$work/other" "$work/ad_other" qv 5 \
    || bad "cannot make the other base's adapter"
expect_fail "another base model" "another base model" --model "$m" --adapter "$work/ad_other"
expect_fail "missing model" "config.json" --model "$work/no_model" --adapter "$work/ad_qv"
mkdir -p "$work/occupied" && echo keep > "$work/occupied/file"
"$lora" merge --model "$m" --adapter "$work/ad_qv" --out "$work/occupied" 2>"$work/err"
[ $? -eq 1 ] && grep -q "not empty" "$work/err" && ok || bad "occupied --out: $(cat "$work/err")"
[ "$(ls "$work/occupied")" = "file" ] && ok || bad "occupied --out was changed"
mkdir -p "$work/empty_out"
"$lora" merge --model "$m" --adapter "$work/ad_qv" --out "$work/empty_out" 2>/dev/null \
    && [ -f "$work/empty_out/model.safetensors" ] && ok || bad "an empty --out is not usable"

# a full disk: no output directory and no temporary left
(trap '' XFSZ; ulimit -f 40; "$lora" merge --model "$m" --adapter "$work/ad_all" \
    --out "$work/full" 2>"$work/err")
rc=$?
[ $rc -eq 1 ] && ok || bad "full disk: exit $rc: $(cat "$work/err")"
grep -q "model.safetensors" "$work/err" && ok || bad "full disk message: $(cat "$work/err")"
[ ! -e "$work/full" ] && ok || bad "full disk left $work/full"
[ -z "$(ls "$work" | grep '^full')" ] && ok || bad "full disk left a temporary: $(ls "$work")"

# ---- the command-line contract ----
"$lora" merge --help >/dev/null && ok || bad "--help"
"$lora" merge --model "$m" --out "$work/x" 2>/dev/null
[ $? -eq 2 ] && ok || bad "no --adapter is not a usage error"
"$lora" merge --model "$m" --adapter "$work/ad_qv" 2>/dev/null
[ $? -eq 2 ] && ok || bad "no --out is not a usage error"
"$lora" merge --model "$m" --adapter "$work/ad_qv" --dtype f8 --out "$work/x" 2>/dev/null
[ $? -eq 2 ] && ok || bad "a bad --dtype is not a usage error"
"$lora" merge --model "$m" --adapter "$work/ad_qv" --scale abc --out "$work/x" 2>/dev/null
[ $? -eq 2 ] && ok || bad "a bad --scale is not a usage error"
[ ! -e "$work/x" ] && ok || bad "a usage error wrote output"

echo "test_merge_cli: $pass passed, $fail failed"
[ $fail -eq 0 ]
