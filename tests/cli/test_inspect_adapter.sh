#!/bin/sh
# `lora inspect ADAPTER_DIR` on adapters our own training writes: an AdaLoRA run pruned from
# init_r 4 toward target_r 2 (the printed final ranks must be the true entries of its
# rank_pattern, q and v read from their halves of the fused c_attn list), the same adapter
# folded by `lora export lora` (ranks unchanged, a site that kept nothing shown as 1), a LoRA
# run (r, scaling, parameter count); --plot with and without gnuplot; bad input.
# usage: test_inspect_adapter.sh LORA MAKE_TINY_MODEL WORKDIR
set -u
lora=$1 mk=$2 work=$3
pass=0 fail=0
ok()  { pass=$((pass + 1)); }
bad() { fail=$((fail + 1)); echo "FAIL: $*" >&2; }
rm -rf "$work" && mkdir -p "$work"
m="$work/m"
"$mk" "$m" vocab=257 || { echo "cannot make model" >&2; exit 1; }

# a byte-level vocabulary: the 256 bytes in GPT-2's byte-to-unicode spelling (as JSON \u
# escapes), <|endoftext|> = 256, no merges; and some text
awk 'BEGIN {
    printf "{"
    for (b = 0; b < 256; b++) {
        if ((b >= 33 && b <= 126) || (b >= 161 && b <= 172) || (b >= 174 && b <= 255)) cp = b
        else cp = 256 + n++
        printf "\"\\u%04x\": %d, ", cp, b
    }
    printf "\"<|endoftext|>\": 256}\n"
}' > "$m/vocab.json"
printf '#version: 0.2\n' > "$m/merges.txt"
for s in "the cat sat on the mat." "a dog ran in the park." "we like green tea." \
         "she reads a book." "he plays the piano." "birds sing at dawn."; do
    printf '{"text": "%s"}\n' "$s"
done > "$work/data.jsonl"

train() { # OUT ARGS...: a short run on the tiny model
    out=$1
    shift
    "$lora" train --model "$m" --data "$work/data.jsonl" --batch 2 --seq-len 16 --lr 5e-2 \
        --warmup 0 --dropout 0 --threads 1 --quiet --out "$work/$out" "$@" \
        >"$work/$out.log" 2>&1 || bad "train $out: $(tail -2 "$work/$out.log")"
}
# rows of the rank table: "LAYER r1 r2 ..."
table() { awk '/per site \(rows: layers/ { on = 1; getline; next } on && NF { print }' "$1"; }

# ---- AdaLoRA, pruned ----
train ada --method adalora --init-r 4 --target-r 2 --targets q,v,c_fc --steps 10 --tinit 1 \
    --tfinal 2 --delta-t 1 --alpha 8
"$lora" inspect "$work/ada" >"$work/ada.txt" 2>&1 && ok || bad "inspect ada: $(cat "$work/ada.txt")"
grep -q "^method       AdaLoRA (peft_type ADALORA)" "$work/ada.txt" && ok || bad "ada: method"
# PEFT's module c_attn holds q and v: init_r 8 there, alpha scaled to keep 8 / (4 + 1e-5)
grep -q "^alpha        15.99998$" "$work/ada.txt" && ok || bad "ada: alpha"
grep -q "^scaling      1.999995 = alpha / (init_r + 1e-5), init_r 8$" "$work/ada.txt" && ok ||
    bad "ada: scaling: $(grep scaling "$work/ada.txt")"
grep -q "^sites        6, initial rank 4 each$" "$work/ada.txt" && ok ||
    bad "ada: sites: $(grep sites "$work/ada.txt")"
grep -q "^layer     q     v  c_fc$" "$work/ada.txt" && ok || bad "ada: table header"
# expected from adapter_config.json: c_attn's list is q's 4 entries then v's 4
awk -F'[][]' '/"transformer\.h\.[0-9]+\.(attn\.c_attn|mlp\.c_fc)\.lora_E"/ {
        split($1, k, "."); layer = k[3]; n = split($2, v, ",")
        a = 0; b = 0
        for (i = 1; i <= n; i++) if (v[i] ~ /true/) { if (i <= 4) a++; else b++ }
        if ($1 ~ /c_attn/) { q[layer] = a; vv[layer] = b } else fc[layer] = a + b
        if (layer + 1 > L) L = layer + 1
    }
    END { for (l = 0; l < L; l++) printf "%d %d %d %d\n", l, q[l], vv[l], fc[l] }' \
    "$work/ada/adapter_config.json" >"$work/want.txt"
table "$work/ada.txt" | awk '{ print $1, $2, $3, $4 }' >"$work/got.txt"
[ -s "$work/want.txt" ] && cmp -s "$work/want.txt" "$work/got.txt" && ok ||
    bad "ada: printed ranks differ from rank_pattern: want $(cat "$work/want.txt") got $(cat "$work/got.txt")"
kept=$(awk '{ s += $2 + $3 + $4 } END { print s }' "$work/want.txt")
[ "$kept" -lt 24 ] && ok || bad "ada: the run pruned nothing (kept $kept of 24)"
grep -q "^kept triplets    $kept of 24$" "$work/ada.txt" && ok || bad "ada: kept line"
grep -q "^pruned triplets  $((24 - kept))$" "$work/ada.txt" && ok || bad "ada: pruned line"
# parameters: the tensors cut to the kept triplets, lora_A (k, 32) + lora_E (k) + lora_B (out, k)
params=$(awk '{ qv = $2 + $3; fc = $4; s += qv * (32 + 1 + 96) + fc * (32 + 1 + 128) }
              END { print s }' "$work/want.txt")
grep -q "^parameters   $params$" "$work/ada.txt" && ok ||
    bad "ada: parameters, want $params: $(grep parameters "$work/ada.txt")"

# ---- the same adapter folded into plain LoRA ----
"$lora" export lora --model "$m" --adapter "$work/ada" --out "$work/ada_lora" && ok ||
    bad "export lora"
"$lora" inspect "$work/ada_lora" >"$work/ada_lora.txt" 2>&1 && ok || bad "inspect ada_lora"
grep -q "^method       LoRA (peft_type LORA)" "$work/ada_lora.txt" && ok || bad "folded: method"
grep -q "^scaling      1.999995 = alpha / r$" "$work/ada_lora.txt" && ok ||
    bad "folded: one scaling: $(grep scaling "$work/ada_lora.txt")"
awk '{ for (i = 2; i <= NF; i++) if ($i == 0) $i = 1; print }' "$work/want.txt" >"$work/want1.txt"
table "$work/ada_lora.txt" | awk '{ print $1, $2, $3, $4 }' >"$work/got1.txt"
cmp -s "$work/want1.txt" "$work/got1.txt" && ok ||
    bad "folded ranks: want $(cat "$work/want1.txt") got $(cat "$work/got1.txt")"
grep -q '"peft_type":	"LORA"' "$work/ada_lora/adapter_config.json" && ok || bad "folded config"
"$lora" generate --model "$m" --adapter "$work/ada_lora" --prompt "the" --greedy --ids \
    --max-new 4 >"$work/g1.txt" 2>/dev/null &&
    "$lora" generate --model "$m" --adapter "$work/ada" --prompt "the" --greedy --ids \
        --max-new 4 >"$work/g2.txt" 2>/dev/null && cmp -s "$work/g1.txt" "$work/g2.txt" && ok ||
    bad "generation with the folded adapter differs: $(cat "$work/g1.txt") / $(cat "$work/g2.txt")"

# ---- LoRA ----
train plain --method lora --r 3 --alpha 16 --targets q,v,c_proj --steps 2
"$lora" inspect "$work/plain" >"$work/plain.txt" 2>&1 && ok || bad "inspect plain"
grep -q "^method       LoRA (peft_type LORA)" "$work/plain.txt" && ok || bad "lora: method"
grep -q "^scaling      5.333333 = alpha / r$" "$work/plain.txt" && ok || bad "lora: scaling"
grep -q "^sites        6$" "$work/plain.txt" && ok || bad "lora: sites"
# per layer: c_attn (q,v fused) A (6, 32) + B (96, 6); c_proj A (3, 32) + B (32, 3)
grep -q "^parameters   1920$" "$work/plain.txt" && ok || bad "lora: parameters"
[ "$(table "$work/plain.txt" | tr -s ' ' | sed 's/^ //')" = "$(printf '0 3 3 3\n1 3 3 3')" ] && ok ||
    bad "lora: table $(table "$work/plain.txt")"
grep -q "^layer     q     v  c_proj$" "$work/plain.txt" && ok || bad "lora: table header"

# ---- --plot ----
if command -v gnuplot >/dev/null 2>&1; then
    "$lora" inspect "$work/ada" --plot "$work/ranks.png" >/dev/null 2>"$work/plot.err" && ok ||
        bad "--plot: $(cat "$work/plot.err")"
    [ "$(head -c 8 "$work/ranks.png" | od -An -tx1 | tr -d ' \n')" = "89504e470d0a1a0a" ] && ok ||
        bad "--plot did not write a PNG"
    ls "$work" | grep -q "ranks.png.tmp" && bad "--plot left a temporary file" || ok
else
    echo "gnuplot not installed: --plot drawing not checked"
fi
err=$(PATH=/nonexistent "$lora" inspect "$work/ada" --plot "$work/nognu.png" 2>&1 >/dev/null)
rc=$?
[ $rc -eq 1 ] && ok || bad "--plot without gnuplot: exit $rc"
echo "$err" | grep -q "gnuplot" && [ "$(printf '%s\n' "$err" | wc -l)" -eq 1 ] && ok ||
    bad "--plot without gnuplot: message '$err'"
[ ! -e "$work/nognu.png" ] && ok || bad "--plot without gnuplot wrote a file"

# ---- bad input and options ----
"$lora" inspect "$m" --plot "$work/x.png" >/dev/null 2>&1; [ $? -eq 2 ] && ok ||
    bad "--plot on a model directory"
"$lora" inspect "$work/ada" --r 4 >/dev/null 2>&1; [ $? -eq 2 ] && ok ||
    bad "model options on an adapter directory"
mkdir -p "$work/ia3"
printf '{"peft_type": "IA3", "r": 4, "lora_alpha": 8}' >"$work/ia3/adapter_config.json"
err=$("$lora" inspect "$work/ia3" 2>&1 >/dev/null); rc=$?
[ $rc -eq 1 ] && echo "$err" | grep -q "IA3" && ok || bad "IA3: exit $rc: $err"
cp -r "$work/ada" "$work/broken"
# layer 0's c_attn list made all false (all true if it kept nothing): it no longer matches the
# rows of the tensors
if [ "$(awk '$1 == 0 { print $2 + $3 }' "$work/want.txt")" -gt 0 ]; then
    sed '/h\.0\.attn\.c_attn\.lora_E/ s/true/false/g' "$work/ada/adapter_config.json"
else
    sed '/h\.0\.attn\.c_attn\.lora_E/ s/false/true/g' "$work/ada/adapter_config.json"
fi >"$work/broken/adapter_config.json"
err=$("$lora" inspect "$work/broken" 2>&1 >/dev/null); rc=$?
[ $rc -eq 1 ] && echo "$err" | grep -q "rank_pattern" && ok ||
    bad "a rank_pattern that disagrees with the tensors: exit $rc: $err"

echo "test_inspect_adapter: $pass passed, $fail failed"
[ $fail -eq 0 ]
