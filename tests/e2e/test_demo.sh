#!/bin/sh
# `lora demo` end to end on a small random model (the pipeline, not the scores): task
# generation, decoding before and after, a short LoRA run, the report files; and bad options.
# usage: test_demo.sh LORA WORKDIR
set -u
lora=$1 work=$2
here=$(cd "$(dirname "$0")" && pwd)
pass=0 fail=0
ok()  { pass=$((pass + 1)); }
bad() { fail=$((fail + 1)); echo "FAIL: $*" >&2; }
rm -rf "$work" && mkdir -p "$work"
python3 "$here/make_task.py" tokenizer "$work/tok"
"$lora" init --tokenizer "$work/tok" --n-layer 1 --n-embd 32 --n-head 2 --n-positions 512 \
    --out "$work/model" 2>/dev/null && ok || bad "init"
"$lora" demo --model "$work/model" --out "$work/out" --steps 4 --batch 2 --test 3 --beams 2 \
    --quiet > "$work/stdout.txt" 2> "$work/stderr.txt"; rc=$?
[ "$rc" -eq 0 ] && ok || { bad "demo exit $rc"; cat "$work/stderr.txt" >&2; }
for want in "BLEU" "ROUGE-L" "slot error rate" "trainable parameters" "peak memory" "training time" "MR:" "before:" "after:"; do
    grep -q "$want" "$work/stdout.txt" && ok || bad "report lacks '$want'"
done
for f in data/train.jsonl data/test.jsonl adapter/adapter_config.json adapter/adapter_model.safetensors \
         adapter/metrics.jsonl report.md test.before.txt test.after.txt; do
    [ -s "$work/out/$f" ] && ok || bad "missing $f"
done
[ "$(wc -l < "$work/out/test.after.txt")" -eq 3 ] && ok || bad "test.after.txt lines"
grep -q "^\[3/5\] fine-tuning with LoRA (r = 4 on q and v" "$work/stderr.txt" && ok || bad "stage lines"
# AdaLoRA runs the same comparison
"$lora" demo --model "$work/model" --out "$work/ada" --method adalora --steps 20 --batch 2 \
    --test 2 --beams 1 --quiet > "$work/ada.txt" 2> "$work/ada.err"; rc=$?
[ "$rc" -eq 0 ] && ok || { bad "adalora demo exit $rc"; cat "$work/ada.err" >&2; }
grep -q "AdaLoRA" "$work/ada.txt" && grep -q "BLEU" "$work/ada.txt" && ok || bad "adalora report"
grep -q '"peft_type":[[:space:]]*"ADALORA"' "$work/ada/adapter/adapter_config.json" && ok || bad "adalora adapter"
"$lora" demo --bogus >/dev/null 2>&1; [ $? -eq 2 ] && ok || bad "unknown option"
"$lora" demo --method nope >/dev/null 2>&1; [ $? -eq 2 ] && ok || bad "bad method"
"$lora" demo --model "$work/nope" --out "$work/out2" >/dev/null 2>"$work/err.txt"; rc=$?
[ "$rc" -eq 1 ] && grep -q "nope" "$work/err.txt" && ok || bad "missing model: exit $rc"
"$lora" demo --help | grep -q "usage: lora demo" && ok || bad "--help"
echo "test_demo: $pass passed, $fail failed"
[ "$fail" -eq 0 ]
