#!/bin/sh
# End to end: `lora train` on a tiny random GPT-2 (from the PyTorch oracle's generator) with a
# byte-level tokenizer and a small prompt/completion task.
#  - the validation loss goes down over 200 steps;
#  - the saved adapter, read by the PyTorch reference with PEFT's key names, gives our logits;
#  - --stop-after 100 then --resume reproduces steps 101-200 exactly (metrics and adapter bytes),
#    with --checkpoint-activations on the first half;
#  - SIGKILL during checkpointing never leaves a broken checkpoint;
#  - bad input: malformed JSONL, empty data, broken merges, unwritable output, bad options.
# usage: test_train.sh LORA TEST_PEFT_ORACLE ST_CHECK WORKDIR [PYTHON]
set -u
lora=$1 peft=$2 stcheck=$3 work=$4 py=${5:-/usr/bin/python3}
here=$(cd "$(dirname "$0")" && pwd)
oracle="$here/../oracle"
if ! "$py" -c 'import torch' 2>/dev/null; then
    echo "SKIP: PyTorch is not importable by $py (apt-get install python3-torch)"
    exit 77
fi
pass=0 fail=0
ok()  { pass=$((pass + 1)); }
bad() { fail=$((fail + 1)); echo "FAIL: $*" >&2; }
rm -rf "$work" && mkdir -p "$work"
"$py" "$oracle/make_cases.py" --out "$work/oc" >/dev/null || { echo "oracle failed"; exit 1; }
model="$work/model"
cp -r "$work/oc/models/tiny" "$model"
python3 "$here/make_task.py" tokenizer "$model"
python3 "$here/make_task.py" data "$work/data"

common="--model $model --data $work/data/train.jsonl --val $work/data/val.jsonl --steps 200
        --batch 8 --seq-len 32 --lr 1e-2 --warmup 10 --eval-every 50 --r 8 --alpha 16
        --targets q,v --dropout 0.1 --seed 3 --threads 2 --quiet --log-every 1"
# shellcheck disable=SC2086
"$lora" train $common --out "$work/A" --save-every 100 2>"$work/A.log" && ok || { bad "train A"; cat "$work/A.log" >&2; }
first=$(grep '"step": 0, "val_loss"' "$work/A/metrics.jsonl" | sed 's/.*"val_loss": \([0-9.e+-]*\).*/\1/')
last=$(grep '"step": 200, "val_loss"' "$work/A/metrics.jsonl" | sed 's/.*"val_loss": \([0-9.e+-]*\).*/\1/')
echo "validation loss: step 0 $first -> step 200 $last"
# A random tiny model's frozen tied head and LayerNorm cap how peaked its outputs can get (full
# fine-tuning reaches ~1.6 here, LoRA ~5.6), so the check is a clear drop, not a low value.
awk -v a="$first" -v b="$last" 'BEGIN { exit !(b < a - 0.3) }' && ok || bad "val loss did not fall: $first -> $last"
for f in adapter_config.json adapter_model.safetensors metrics.jsonl checkpoint.safetensors train_args.json; do
    [ -s "$work/A/$f" ] && ok || bad "missing $f"
done
grep -q '"peft_type":[[:space:]]*"LORA"' "$work/A/adapter_config.json" && ok || bad "adapter_config.json"

# lora eval with adapters: A helps, A:0 is the base, two halves of A are A
evloss() { "$lora" eval --model "$model" --data "$work/data/val.jsonl" --seq-len 32 "$@" |
           sed 's/.*"loss": \([0-9.e+-]*\).*/\1/'; }
e_base=$(evloss) e_a=$(evloss --adapter "$work/A") e_0=$(evloss --adapter "$work/A:0")
e_h=$(evloss --adapter "$work/A:0.5" --adapter "$work/A:0.5")
echo "eval: base $e_base, with A $e_a, A:0 $e_0, A:0.5 twice $e_h"
awk -v b="$e_base" -v a="$e_a" 'BEGIN { exit !(a < b - 0.3) }' && ok || bad "eval with A: $e_a vs base $e_base"
awk -v b="$e_base" -v a="$e_0" 'BEGIN { d = a - b; exit !(d < 1e-6 && d > -1e-6) }' && ok || bad "A:0 $e_0 vs base $e_base"
awk -v h="$e_h" -v a="$e_a" 'BEGIN { d = h - a; exit !(d < 1e-4 && d > -1e-4) }' && ok || bad "two halves $e_h vs A $e_a"

# the adapter in the PyTorch reference, PEFT semantics
"$peft" expect "$model" "$work/A" >/dev/null && ok || bad "expect"
"$py" "$oracle/peft_check.py" check --model "$model" --adapter "$work/A" && ok || bad "PEFT-semantics logits"

# exact resume; the first half recomputes its activations in backward (same results)
# shellcheck disable=SC2086
"$lora" train $common --out "$work/B" --save-every 100 --stop-after 100 --checkpoint-activations 2>"$work/B.log" && ok || bad "train B to 100"
grep -q '"step": 100,' "$work/B/metrics.jsonl" && ! grep -q '"step": 101,' "$work/B/metrics.jsonl" && ok || bad "B stopped at 100"
"$lora" train --resume "$work/B" --threads 2 --quiet 2>>"$work/B.log" && ok || { bad "resume B"; cat "$work/B.log" >&2; }
grep '"step"' "$work/A/metrics.jsonl" | sed 's/, "tokens_per_s".*//' > "$work/A.steps"
grep '"step"' "$work/B/metrics.jsonl" | sed 's/, "tokens_per_s".*//' > "$work/B.steps"
if cmp -s "$work/A.steps" "$work/B.steps"; then ok; else bad "resumed losses differ"; diff "$work/A.steps" "$work/B.steps" | head -5 >&2; fi
cmp -s "$work/A/adapter_model.safetensors" "$work/B/adapter_model.safetensors" && ok || bad "resumed adapter differs"
echo "resume: $(grep -c '"loss"' "$work/B.steps") step records identical to the uninterrupted run"

# SIGKILL: the checkpoint is always the previous one or the new one, never a broken file
# shellcheck disable=SC2086
"$lora" train $common --steps 100000 --save-every 1 --eval-every 0 --out "$work/K" 2>/dev/null &
kpid=$!
wait_for() { # FILE: up to 120 s, for a loaded machine
    i=0
    while [ ! -s "$1" ] && [ $i -lt 1200 ]; do sleep 0.1; i=$((i + 1)); done
}
wait_for "$work/K/checkpoint.safetensors"
kills=0
for delay in 0.7 0.3 0.5 0.9 0.4; do
    sleep "$delay"
    kill -9 "$kpid" 2>/dev/null; wait "$kpid" 2>/dev/null
    if [ -f "$work/K/checkpoint.safetensors" ]; then
        "$stcheck" "$work/K/checkpoint.safetensors" && ok || bad "broken checkpoint after SIGKILL"
        kills=$((kills + 1))
        "$lora" train --resume "$work/K" --threads 2 --quiet 2>/dev/null &
    else
        # shellcheck disable=SC2086
        "$lora" train $common --steps 100000 --save-every 1 --eval-every 0 --out "$work/K" 2>/dev/null &
    fi
    kpid=$!
done
# while a run holds K, a second run on K is refused
sleep 0.5
"$lora" train --resume "$work/K" --threads 1 --quiet >/dev/null 2>"$work/lock.txt"; rc=$?
[ "$rc" -eq 1 ] && grep -q "another training run" "$work/lock.txt" && ok || bad "second run on a busy directory: exit $rc: $(cat "$work/lock.txt")"
kill -9 "$kpid" 2>/dev/null; wait "$kpid" 2>/dev/null
[ "$kills" -ge 3 ] && ok || bad "only $kills checkpoints to check after SIGKILL"
echo "SIGKILL: $kills kills, checkpoint valid every time"

# Ctrl-C (SIGINT): a checkpoint, a clean exit 130, and the run resumes
# shellcheck disable=SC2086
"$lora" train $common --steps 100000 --save-every 1000 --eval-every 0 --out "$work/I" 2>"$work/int.txt" &
ipid=$!
wait_for "$work/I/metrics.jsonl"
kill -INT "$ipid"; wait "$ipid"; rc=$?
[ "$rc" -eq 130 ] && ok || bad "SIGINT: exit $rc, want 130"
"$stcheck" "$work/I/checkpoint.safetensors" && ok || bad "SIGINT: no valid checkpoint"
grep -q "lora train --resume" "$work/int.txt" && ok || bad "SIGINT: no resume hint"

# bad input: one line on stderr, non-zero exit, nothing half-written
check_err() { # expected-exit pattern description -- args
    want=$1 pat=$2 what=$3; shift 3
    "$lora" "$@" >/dev/null 2>"$work/err.txt"; rc=$?
    [ "$rc" -eq "$want" ] && ok || bad "$what: exit $rc, want $want"
    [ "$want" -eq 2 ] || { [ "$(wc -l < "$work/err.txt")" -eq 1 ] && ok || bad "$what: not one line: $(cat "$work/err.txt")"; }
    grep -q -- "$pat" "$work/err.txt" && ok || bad "$what: error lacks '$pat': $(cat "$work/err.txt")"
}
printf '{"prompt": "a", "completion": "b"}\n{"prompt": "a" "completion": "b"}\n' > "$work/bad.jsonl"
check_err 1 "bad.jsonl:2" "malformed JSONL" train --model "$model" --data "$work/bad.jsonl" --out "$work/o1" --steps 2 --quiet
: > "$work/empty.jsonl"
check_err 1 "empty.jsonl" "empty dataset" train --model "$model" --data "$work/empty.jsonl" --out "$work/o2" --steps 2 --quiet
mkdir -p "$work/badtok" && cp "$model/vocab.json" "$work/badtok/" && printf '#version: 0.2\nab\n' > "$work/badtok/merges.txt"
check_err 1 "merges.txt:2" "broken merges" train --model "$model" --tokenizer "$work/badtok" --data "$work/data/train.jsonl" --out "$work/o3" --steps 2 --quiet
mkdir -p "$work/ro" && chmod 500 "$work/ro"
if [ "$(id -u)" -ne 0 ]; then
    check_err 1 "ro" "unwritable output" train --model "$model" --data "$work/data/train.jsonl" --out "$work/ro/out" --steps 2 --quiet
else # root ignores permissions: use a path under a regular file instead
    check_err 1 "notadir" "unwritable output" train --model "$model" --data "$work/data/train.jsonl" --out "$work/A/metrics.jsonl/notadir" --steps 2 --quiet
fi
check_err 2 "exclusive" "steps and epochs" train --model "$model" --data x --out y --steps 2 --epochs 1
check_err 2 "do not apply" "lora option with full" train --model "$model" --data x --out y --method full --r 4
check_err 2 "saved options" "resume with options" train --resume "$work/B" --lr 1
check_err 2 "" "unknown option" train --bogus
# an adapter for another base model: names the tensor, both shapes, and hints at the mismatch
check_err 1 "another base model" "adapter for another base" generate --model "$work/oc/models/odd" --tokenizer "$model" --adapter "$work/A" --prompt "copy: abc =" --max-new 4
grep -q "lora_A.weight' has shape (16, 64) but the model expects (16, 54)" "$work/err.txt" && ok || bad "adapter mismatch message: $(cat "$work/err.txt")"
check_err 1 "another base model" "eval with a mismatched adapter" eval --model "$work/oc/models/odd" --tokenizer "$model" --adapter "$work/A" --data "$work/data/val.jsonl"
ls "$work"/o1 "$work"/o2 2>/dev/null | grep -q "adapter_model" && bad "half-written outputs" || ok

echo "test_train: $pass passed, $fail failed"
[ "$fail" -eq 0 ]
