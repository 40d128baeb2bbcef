#!/bin/sh
# `lora eval` on a tiny model whose vocabulary covers a byte-level tokenizer (256 bytes + EOS):
# the JSON fields, perplexity = exp(loss), batching not changing the numbers, malformed data and
# bad options.
# usage: test_eval.sh LORA MAKE_TINY_MODEL WORKDIR
set -u
lora=$1 mk=$2 work=$3
pass=0 fail=0
ok()  { pass=$((pass + 1)); }
bad() { fail=$((fail + 1)); echo "FAIL: $*" >&2; }
rm -rf "$work" && mkdir -p "$work"
"$mk" "$work/m" vocab=257 || { echo "cannot make model" >&2; exit 1; }
"$mk" "$work/small" || { echo "cannot make model" >&2; exit 1; }

# vocab.json: byte b is id b, spelled with GPT-2's byte-to-unicode character (as a \u escape),
# <|endoftext|> is 256; merges.txt has no merges.
{
    printf '{'
    i=0 n=0
    while [ $i -lt 256 ]; do
        if { [ $i -ge 33 ] && [ $i -le 126 ]; } || { [ $i -ge 161 ] && [ $i -le 172 ]; } ||
           [ $i -ge 174 ]; then
            cp=$i
        else
            cp=$((256 + n)); n=$((n + 1))
        fi
        printf '"\\u%04x": %d, ' $cp $i
        i=$((i + 1))
    done
    printf '"<|endoftext|>": 256}\n'
} > "$work/m/vocab.json"
printf '#version: 0.2\n' > "$work/m/merges.txt"

# 5 + 3 + 3 loss positions: "hello" + EOS; prompt "ab" masked, then c d EOS; "xyz" + EOS
cat > "$work/d.jsonl" <<'JSONL'
{"text": "hello"}

{"prompt": "ab", "completion": "cd"}
{"text": "xyz"}
JSONL

field() { printf '%s\n' "$1" | sed -n "s/.*\"$2\": *\([^,}]*\).*/\1/p"; }

out=$("$lora" eval --model "$work/m" --data "$work/d.jsonl" 2>"$work/err"); rc=$?
[ $rc -eq 0 ] && ok || bad "eval failed ($rc): $(cat "$work/err")"
[ "$(printf '%s\n' "$out" | wc -l)" -eq 1 ] && ok || bad "not one line: $out"
for f in loss perplexity token_accuracy tokens examples; do
    [ -n "$(field "$out" $f)" ] && ok || bad "no field $f in: $out"
done
loss=$(field "$out" loss) ppl=$(field "$out" perplexity) acc=$(field "$out" token_accuracy)
[ "$(field "$out" tokens)" = 11 ] && ok || bad "tokens: want 11: $out"
[ "$(field "$out" examples)" = 3 ] && ok || bad "examples: want 3: $out"
awk -v l="$loss" -v p="$ppl" \
    'BEGIN { e = exp(l); d = (p - e) / e; exit !(d < 1e-6 && d > -1e-6) }' \
    && ok || bad "perplexity $ppl is not exp($loss)"
awk -v a="$acc" 'BEGIN { exit !(a >= 0 && a <= 1) }' && ok || bad "accuracy $acc outside [0, 1]"
# a random model is close to uniform over 257 ids: ln 257 = 5.55
awk -v l="$loss" 'BEGIN { exit !(l > 4 && l < 7) }' && ok || bad "loss $loss far from ln 257"

# batch size and seq-len do not change the numbers (exact mean, causal trim)
for opt in "--batch 1" "--batch 2 --seq-len 8" "--batch 64"; do
    o2=$("$lora" eval --model "$work/m" --tokenizer "$work/m" --data "$work/d.jsonl" $opt 2>&1)
    l2=$(field "$o2" loss)
    awk -v a="$loss" -v b="$l2" 'BEGIN { d = a - b; exit !(b != "" && d < 1e-5 && d > -1e-5) }' \
        && ok || bad "$opt changes the loss: $loss vs $o2"
    [ "$(field "$o2" token_accuracy)" = "$acc" ] && ok || bad "$opt changes accuracy: $o2"
done

# truncation: --seq-len 3 keeps 4 ids per example: hell (3 loss positions), ab|cd (2), xyz EOS (3)
o3=$("$lora" eval --model "$work/m" --data "$work/d.jsonl" --seq-len 3 2>/dev/null)
[ "$(field "$o3" tokens)" = 8 ] && ok || bad "--seq-len 3: want 8 tokens: $o3"

# malformed line: exit 1, one line naming file and line
printf '{"text": "ok"}\n{"prompt": "x"}\n' > "$work/bad.jsonl"
err=$("$lora" eval --model "$work/m" --data "$work/bad.jsonl" 2>&1 >/dev/null); rc=$?
[ $rc -eq 1 ] && ok || bad "malformed line: exit $rc, want 1"
[ "$(printf '%s\n' "$err" | wc -l)" -eq 1 ] && ok || bad "malformed line: not one line: $err"
echo "$err" | grep -q "bad.jsonl:2:" && ok || bad "error lacks file:line: $err"
o4=$("$lora" eval --model "$work/m" --data "$work/bad.jsonl" --skip-bad 2>/dev/null); rc=$?
[ $rc -eq 0 ] && [ "$(field "$o4" examples)" = 1 ] && ok || bad "--skip-bad: $rc $o4"

# other failures and usage
printf '' > "$work/empty.jsonl"
err=$("$lora" eval --model "$work/m" --data "$work/empty.jsonl" 2>&1 >/dev/null); rc=$?
[ $rc -eq 1 ] && echo "$err" | grep -q "no examples" && ok || bad "empty data: $rc $err"
"$lora" eval --model "$work/m" --data "$work/nope.jsonl" >/dev/null 2>&1
[ $? -eq 1 ] && ok || bad "missing data file"
"$lora" eval --model "$work/small" --tokenizer "$work/m" --data "$work/d.jsonl" >/dev/null 2>&1
[ $? -eq 1 ] && ok || bad "tokenizer larger than the model's vocabulary"
"$lora" eval --model "$work/m" --adapter "$work/noadapter" --data "$work/d.jsonl" >/dev/null 2>&1
[ $? -eq 1 ] && ok || bad "missing adapter"
"$lora" eval --model "$work/m" --data "$work/d.jsonl" --seq-len 99 >/dev/null 2>&1
[ $? -eq 1 ] && ok || bad "seq-len > n_positions"
"$lora" eval --model "$work/m" --data "$work/d.jsonl" --bogus >/dev/null 2>&1
[ $? -eq 2 ] && ok || bad "unknown option"
"$lora" eval --model "$work/m" --data "$work/d.jsonl" --batch 0 >/dev/null 2>&1
[ $? -eq 2 ] && ok || bad "--batch 0"
"$lora" eval --model "$work/m" >/dev/null 2>&1
[ $? -eq 2 ] && ok || bad "missing --data"
"$lora" eval --help | grep -q "usage: lora eval" && ok || bad "--help"

echo "test_eval: $pass passed, $fail failed"
[ $fail -eq 0 ]
