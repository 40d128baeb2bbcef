#!/bin/sh
# `lora bench` on a tiny model: the report and its JSON form, the profile, the machine peaks,
# and the command-line contract. Checks the form and consistency of the figures, not speed.
# usage: test_bench.sh LORA MAKE_TINY_MODEL WORKDIR
set -u
lora=$1 mk=$2 work=$3
pass=0 fail=0
ok()  { pass=$((pass + 1)); }
bad() { fail=$((fail + 1)); echo "FAIL: $*" >&2; }
rm -rf "$work" && mkdir -p "$work"
"$mk" "$work/m" || { echo "cannot make model" >&2; exit 1; }

# the human report, with the profile and the machine peaks
out=$("$lora" bench "$work/m" --batch 2 --seq-len 8 --steps 3 --warmup 1 --threads 1 \
      --profile 2>&1)
[ $? -eq 0 ] && ok || bad "bench failed: $out"
for want in "method     lora r=8 alpha=16 targets=q,v dropout=0.1" "B=2 T=8 (16 tokens per step)" \
            "1 warm-up + 3 timed steps" "tokens/s" "GFLOP per step" "% of the FMA peak" \
            "% of sgemm 1024^3" "peak RSS" "estimate" "where a step's time goes" "matmul" \
            "attention" "adapter" "optimizer" "(untimed)"; do
    echo "$out" | grep -qF -- "$want" && ok || bad "report lacks '$want'"
done
# LoRA leaves W0 frozen: no dW row in the profile
echo "$out" | grep -q "^  matmul_dw" && bad "LoRA profile has a matmul_dw row" || ok

# JSON: one object with the figures bench/run reads
js=$("$lora" bench "$work/m" --method full --batch 2 --seq-len 8 --steps 2 --warmup 0 \
     --no-peak --json --profile 2>&1)
[ $? -eq 0 ] && ok || bad "bench --json failed: $js"
[ "$(printf '%s\n' "$js" | wc -l)" -eq 1 ] && ok || bad "--json is not one line: $js"
for key in '"method":"full"' '"B":2' '"T":8' '"steps":2' '"step_s":[' '"tokens_per_s":' \
           '"flops":{"linear":' '"rss_peak_bytes":' '"estimate":{"weights_bytes":' \
           '"profile":{"forward":{' '"matmul_dw":' '"fma_gflops":0'; do
    echo "$js" | grep -qF -- "$key" && ok || bad "JSON lacks $key: $js"
done
if /usr/bin/python3 -c 'import json,sys; d=json.loads(sys.stdin.read()); \
    assert len(d["step_s"]) == 2 and d["tokens_per_s"] > 0 and d["rss_peak_bytes"] > 0; \
    assert abs(d["flops"]["total"] - d["flops"]["forward"] - d["flops"]["backward"]) < 1; \
    assert d["profile"]["backward"]["matmul_dw"] > 0' <<EOT 2>/dev/null
$js
EOT
then ok; else bad "JSON figures inconsistent: $js"; fi

# OpenMP threads wait passively unless the user chose a policy (the binary re-executes itself)
for policy in "" ACTIVE; do
    want=${policy:-PASSIVE}
    js=$(env -u OMP_WAIT_POLICY ${policy:+OMP_WAIT_POLICY=$policy} "$lora" bench "$work/m" \
         --batch 1 --seq-len 4 --steps 1 --warmup 0 --no-peak --json 2>&1)
    echo "$js" | grep -qF "\"omp_wait_policy\":\"$want\"" && ok ||
        bad "OMP_WAIT_POLICY '${policy}' should run as $want: $js"
done

# the other methods run
for m in bitfit adalora; do
    "$lora" bench "$work/m" --method $m --batch 1 --seq-len 4 --steps 1 --warmup 0 --no-peak \
        >/dev/null 2>&1 && ok || bad "--method $m failed"
done
"$lora" bench "$work/m" --targets all --r 2 --batch 1 --seq-len 4 --steps 1 --no-peak \
    --json | grep -qF '"targets":"c_attn,c_proj,c_fc,mlp.c_proj"' && ok || bad "--targets all"

# the estimate is the one `lora inspect` prints for the same method and shape
"$mk" "$work/big" vocab=20000 || { echo "cannot make model" >&2; exit 1; }
want=$("$lora" inspect "$work/big" --method full --batch 2 --seq-len 16 --no-tensors |
       sed -n 's/^  total *\([0-9.]*\) MiB$/\1/p')
got=$("$lora" bench "$work/big" --method full --batch 2 --seq-len 16 --steps 1 --warmup 0 \
      --no-peak | sed -n 's/^memory .* estimate \([0-9.]*\) MiB .*/\1/p')
[ -n "$want" ] && [ "$want" = "$got" ] && ok || bad "estimate '$got' MiB, inspect '$want' MiB"

# --checkpoint-activations: the same losses (the step is bit-identical), a smaller estimate,
# the one `lora inspect --checkpoint-activations` prints
ck() { "$lora" bench "$work/big" --batch 2 --seq-len 16 --steps 3 --warmup 0 --no-peak --json \
       --threads 1 "$@"; }
j0=$(ck) j1=$(ck --checkpoint-activations)
if /usr/bin/python3 -c 'import json,sys; a=json.loads(sys.argv[1]); b=json.loads(sys.argv[2]); \
    assert b["checkpoint_activations"] is True and a["checkpoint_activations"] is False; \
    assert a["loss_first"] == b["loss_first"] and a["loss_last"] == b["loss_last"]; \
    assert a["loss_last"] != a["loss_first"]; \
    assert b["estimate"]["activation_bytes"] < a["estimate"]["activation_bytes"]' "$j0" "$j1"
then ok; else bad "--checkpoint-activations: $j0 / $j1"; fi
want=$("$lora" inspect "$work/big" --batch 2 --seq-len 16 --no-tensors --checkpoint-activations |
       sed -n 's/^  total *\([0-9.]*\) MiB$/\1/p')
got=$("$lora" bench "$work/big" --batch 2 --seq-len 16 --steps 1 --warmup 0 --no-peak \
      --checkpoint-activations | sed -n 's/^memory .* estimate \([0-9.]*\) MiB .*/\1/p')
[ -n "$want" ] && [ "$want" = "$got" ] && ok || bad "checkpointed estimate '$got', inspect '$want'"

# the machine peaks alone
pk=$("$lora" bench --peak-only --threads 1 --json 2>&1)
echo "$pk" | grep -q '"fma_gflops":[0-9]' && echo "$pk" | grep -q '"sgemm_gflops":[0-9]' \
    && ok || bad "--peak-only: $pk"
"$lora" bench --peak-only --threads 1 | grep -q "^machine    FMA peak" && ok || bad "--peak-only report"

# the command-line contract
"$lora" bench --help | grep -q "usage: lora bench" && ok || bad "--help"
"$lora" --help | grep -q "bench" && ok || bad "lora --help lacks bench"
"$lora" bench "$work/m" --bogus >/dev/null 2>&1; [ $? -eq 2 ] && ok || bad "unknown option"
"$lora" bench "$work/m" --method nope >/dev/null 2>&1; [ $? -eq 2 ] && ok || bad "bad method"
"$lora" bench "$work/m" --steps 0 >/dev/null 2>&1; [ $? -eq 2 ] && ok || bad "--steps 0"
"$lora" bench "$work/m" --dropout 1 >/dev/null 2>&1; [ $? -eq 2 ] && ok || bad "--dropout 1"
"$lora" bench "$work/m" "$work/m" >/dev/null 2>&1; [ $? -eq 2 ] && ok || bad "two models"
"$lora" bench --peak-only "$work/m" >/dev/null 2>&1; [ $? -eq 2 ] && ok || bad "peak-only + model"
err=$("$lora" bench "$work/m" --seq-len 17 2>&1 >/dev/null); rc=$?
[ $rc -eq 2 ] && ok || bad "T > n_positions: exit $rc"
echo "$err" | grep -q "n_positions=16" && ok || bad "T > n_positions message: $err"
err=$("$lora" bench "$work/nope" 2>&1 >/dev/null); rc=$?
[ $rc -eq 1 ] && ok || bad "missing model: exit $rc"
[ "$(printf '%s\n' "$err" | wc -l)" -eq 1 ] && echo "$err" | grep -q "^lora bench: .*nope" \
    && ok || bad "missing model message: $err"

echo "test_bench: $pass passed, $fail failed"
[ $fail -eq 0 ]
