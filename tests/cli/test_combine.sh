#!/bin/sh
# `lora combine` on the command line: --help, every usage error (exit 2) and every error from
# the files (exit 1), each with a one-line message naming the problem (and the file), and no
# output directory left behind; then one combination that works.
# usage: test_combine.sh LORA COMBINE_FIXTURE OUT_DIR
set -u
lora=$1
fixture=$2
out=$3
rm -rf "$out"
mkdir -p "$out"
"$fixture" make "$out" || exit 1
fail=0
n=0

# expect CODE PATTERN [PATTERN2] -- ARGS...: the exit code, and stderr matching each pattern
expect() {
    code=$1
    pat=$2
    shift 2
    pat2=""
    if [ "$1" != "--" ]; then
        pat2=$1
        shift
    fi
    shift
    n=$((n + 1))
    "$lora" combine "$@" >"$out/stdout" 2>"$out/stderr"
    rc=$?
    if [ "$rc" != "$code" ]; then
        echo "FAIL: combine $* exited $rc, want $code"; cat "$out/stderr"; fail=1; return
    fi
    for p in "$pat" "$pat2"; do
        [ -z "$p" ] && continue
        if ! grep -q -- "$p" "$out/stderr"; then
            echo "FAIL: combine $*: stderr lacks '$p':"; cat "$out/stderr"; fail=1
        fi
    done
    if [ -e "$out/res" ] || ls "$out" | grep -q 'res.tmp'; then
        echo "FAIL: combine $* left an output behind"; fail=1
        rm -rf "$out/res" "$out"/res.tmp.*
    fi
}

A="--adapter $out/a_qv"
B="--adapter $out/b_qv"
O="--out $out/res"

# --help
n=$((n + 1))
"$lora" combine --help >"$out/help" 2>&1 || { echo "FAIL: --help exit"; fail=1; }
for p in "linear|cat|svd" "sqrt|w_i s_i|" "cross terms" "lora_alpha" "AdaLoRA" "One adapter"; do
    grep -q -- "$p" "$out/help" || { echo "FAIL: --help lacks '$p'"; fail=1; }
done
"$lora" --help | grep -q "combine" || { echo "FAIL: lora --help lacks combine"; fail=1; }

# usage errors (2)
expect 2 "2 adapters but 1 weights" -- $A --weight 1 $B $O
expect 2 "2 adapters but 3 weights" -- $A --weight 1 $B --weight 1 --weight 2 $O
expect 2 "unknown combination 'sum' (linear, cat or svd)" -- $A --weight 1 $B --weight 1 --how sum $O
expect 2 "--weight must be a finite number, got 'x'" -- $A --weight x $O
expect 2 "--weight must be a finite number, got 'nan'" -- $A --weight nan $O
expect 2 "--r must be an integer in 1..65536, got 'abc'" -- $A --weight 1 $B --weight 1 --r abc $O
expect 2 "--r must be an integer in 1..65536, got '0'" -- $A --weight 1 $B --weight 1 --r 0 $O
expect 2 "option '--r' requires an argument" -- $A --weight 1 $B --weight 1 $O --r
expect 2 "--r applies to --how svd only" -- $A --weight 1 $B --weight 1 --how cat --r 4 $O
expect 2 "one adapter is combined linearly" -- $A --weight 1 --r 4 $O
expect 2 "--out is required" -- $A --weight 1
expect 2 "--adapter is required" -- --weight 1 $O
expect 2 "unexpected argument 'extra'" -- $A --weight 1 $O extra

# errors from the files (1), each naming the file
expect 1 "$out/e_qv2: r = 4 but $out/a_qv has r = 8; linear needs equal ranks" -- \
    $A --weight 1 --adapter "$out/e_qv2" --weight 1 --how linear $O
expect 1 "$out/f_proj: h.0.attn.c_proj has rank 4 but $out/d_mix has rank 2" "linear needs equal ranks" -- \
    --adapter "$out/d_mix" --weight 1 --adapter "$out/f_proj" --weight 1 --how linear $O
expect 1 "$out/w_qv: adapter for a base model with n_embd 48, but $out/a_qv is for n_embd 32" -- \
    $A --weight 1 --adapter "$out/w_qv" --weight 1 --how cat $O
expect 1 "$out/ada/adapter_config.json: an AdaLoRA adapter" -- \
    $A --weight 1 --adapter "$out/ada" --weight 1 --how cat $O
expect 1 "$out/a_qv: svd rank 33 is larger than h.0.attn.c_attn allows (min(in, out) = 32)" -- \
    $A --weight 1 $B --weight 1 --how svd --r 33 $O
expect 1 "$out/missing/adapter_config.json: cannot open" -- \
    $A --weight 1 --adapter "$out/missing" --weight 1 $O
expect 1 "$out/b_qv: exists and is not empty" -- $A --weight 1 $B --weight 1 --out "$out/b_qv"

# one that works (the default combination is svd, as in PEFT)
n=$((n + 1))
if "$lora" combine $A --weight 0.5 $B --weight 0.5 $O >"$out/stdout" 2>"$out/stderr"; then
    grep -q "combined 2 adapters (svd) into $out/res" "$out/stdout" || {
        echo "FAIL: success line:"; cat "$out/stdout"; fail=1; }
    [ -f "$out/res/adapter_config.json" ] && [ -f "$out/res/adapter_model.safetensors" ] || {
        echo "FAIL: files missing in $out/res"; fail=1; }
    grep -q '"r":	8' "$out/res/adapter_config.json" || { echo "FAIL: svd default r != 8"; fail=1; }
else
    echo "FAIL: a valid combine failed:"; cat "$out/stderr"; fail=1
fi
if [ $fail -ne 0 ]; then exit 1; fi
echo "cli_combine: $n checks passed"
