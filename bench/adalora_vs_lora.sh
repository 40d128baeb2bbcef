#!/bin/sh
# AdaLoRA against LoRA at the same final budget on the demo task, over several seeds.
#
# For each seed runs `lora demo` twice on the embedded model: LoRA r = R on q,v, and AdaLoRA on
# q,v starting from 1.5 R and pruned to an average of R per site (the demo's AdaLoRA schedule:
# t_init = steps/10, t_final = steps/5, delta_t = 10). Prints each run's final validation loss
# (the dev split, from metrics.jsonl), BLEU and slot error rate, then the means.
#
# usage: bench/adalora_vs_lora.sh [--r R] [--seeds "1 2 3"] [--steps N] [--out DIR]
#                                 [--lr-lora LR] [--lr-adalora LR] [--methods "lora adalora"]
set -eu
root=$(cd "$(dirname "$0")/.." && pwd)
lora=${LORA_BIN:-$root/build/lora}
r=2
seeds="1 2 3"
steps=700
out=${TMPDIR:-/tmp}/lora-adalora-vs-lora
lr_ada=""
lr_lora=""
methods="lora adalora"
while [ $# -gt 0 ]; do
    case $1 in
    --r) r=$2; shift 2 ;;
    --seeds) seeds=$2; shift 2 ;;
    --steps) steps=$2; shift 2 ;;
    --out) out=$2; shift 2 ;;
    --lr-adalora) lr_ada=$2; shift 2 ;;
    --lr-lora) lr_lora=$2; shift 2 ;;
    --methods) methods=$2; shift 2 ;;
    -h | --help) sed -n '2,10p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "adalora_vs_lora.sh: unknown option $1" >&2; exit 2 ;;
    esac
done
[ -x "$lora" ] || { echo "adalora_vs_lora.sh: build first ($lora missing)" >&2; exit 1; }
mkdir -p "$out"

last_val() { grep '"val_loss"' "$1" | tail -1 | sed 's/.*"val_loss": \([0-9.e+-]*\).*/\1/'; }
field() { sed -n "s/^| $2 | [^|]* | \([0-9.]*\) |.*/\1/p" "$1" | head -1; }

printf '%-8s %-5s %10s %8s %8s\n' method seed val_loss BLEU SER% | tee "$out/table.txt"
for seed in $seeds; do
    for method in $methods; do
        d="$out/$method-$seed"
        rm -rf "$d"
        lr_opt=""
        [ "$method" = adalora ] && [ -n "$lr_ada" ] && lr_opt="--lr $lr_ada"
        [ "$method" = lora ] && [ -n "$lr_lora" ] && lr_opt="--lr $lr_lora"
        # shellcheck disable=SC2086
        "$lora" demo --method "$method" --r "$r" --steps "$steps" --seed "$seed" --quiet \
            $lr_opt --out "$d" > "$d.log" 2>&1 || { echo "run failed: see $d.log" >&2; exit 1; }
        m=$(ls "$d"/*/metrics.jsonl | head -1)
        printf '%-8s %-5s %10s %8s %8s\n' "$method" "$seed" "$(last_val "$m")" \
            "$(field "$d/report.md" BLEU)" "$(field "$d/report.md" 'slot error rate (%)')" |
            tee -a "$out/table.txt"
    done
done
awk 'NR > 1 { n[$1]++; v[$1] += $3; b[$1] += $4; s[$1] += $5 }
     END { for (k in n) printf "mean %-8s val_loss %.4f  BLEU %.4f  SER %.1f%%  (%d seeds)\n",
                                k, v[k] / n[k], b[k] / n[k], s[k] / n[k], n[k] }' "$out/table.txt"
