#!/bin/sh
# `lora generate` on a tiny random model with a small byte-level tokenizer: determinism, the
# limits (--max-new, the context), stop strings, beam search, prompts files, and the
# command-line contract.
# usage: test_generate.sh LORA MAKE_TINY_MODEL WORKDIR
set -u
lora=$1 mk=$2 work=$3
pass=0 fail=0
ok()  { pass=$((pass + 1)); }
bad() { fail=$((fail + 1)); echo "FAIL: $*" >&2; }
count() { echo "$1" | wc -w | tr -d ' '; }
rm -rf "$work" && mkdir -p "$work"
"$mk" "$work/m" || { echo "cannot make model" >&2; exit 1; }

# A byte-level BPE vocabulary with the tiny model's 61 ids: 60 single-byte tokens in GPT-2's
# byte-to-unicode spelling (U+0120 is the space, U+010A the newline; U+00C3 and U+00A9 are the
# two bytes of "é", so that UTF-8 can be split across tokens) and <|endoftext|> = 60.
# write_vocab DIR [EOS]: with EOS, <|endoftext|> takes id EOS and that id's token takes 60.
write_vocab() {
    dir=$1 eos=${2:-60}
    mkdir -p "$dir"
    {
        printf '{'
        i=0
        for ch in '\u0120' a b c d e f g h i j k l m n o p q r s t u v w x y z \
                  A B C D E F G H I J K L M N O P Q R S T U V W X Y Z . , ! '?' \
                  '\u00c3' '\u00a9' '\u010a'; do
            id=$i
            [ $i -eq "$eos" ] && id=60
            printf '"%s": %d, ' "$ch" $id
            i=$((i + 1))
        done
        printf '"<|endoftext|>": %d}\n' "$eos"
    } > "$dir/vocab.json"
    printf '#version: 0.2\n' > "$dir/merges.txt"
}
m="$work/m"
write_vocab "$m"

# greedy ids are deterministic, and --max-new is honoured
a=$("$lora" generate --model "$m" --prompt "hello" --greedy --ids --max-new 8 2>"$work/err")
rc=$?
[ $rc -eq 0 ] && ok || bad "greedy generate: exit $rc: $(cat "$work/err")"
b=$("$lora" generate --model "$m" --prompt "hello" --greedy --ids --max-new 8 2>/dev/null)
[ -n "$a" ] && [ "$a" = "$b" ] && ok || bad "greedy ids differ between runs: '$a' / '$b'"
n=$(count "$a")
[ "$n" -ge 1 ] && [ "$n" -le 8 ] && ok || bad "--max-new 8 gave $n ids: $a"
for id in $a; do
    [ "$id" -ge 0 ] && [ "$id" -lt 61 ] && ok || bad "id $id outside the vocabulary"
done
c=$("$lora" generate --model "$m" --prompt "hello" --greedy --ids --max-new 3 2>/dev/null)
want=$(echo "$a" | cut -d' ' -f1-3)
[ "$c" = "$want" ] && ok || bad "--max-new 3 gave '$c', want the first 3 of '$a'"
grep -q "prefill 5 tokens" "$work/err" && ok || bad "no prefill timing: $(cat "$work/err")"
grep -q "tokens/s" "$work/err" && ok || bad "no tokens/s line: $(cat "$work/err")"
[ "$(wc -l < "$work/err")" -eq 1 ] && ok || bad "stderr is not one line: $(cat "$work/err")"
z=$("$lora" generate --model "$m" --prompt "hello" --greedy --ids --max-new 0 2>/dev/null)
[ -z "$z" ] && ok || bad "--max-new 0 printed '$z'"

# --temperature 0 is greedy; sampling is reproducible for a seed
t0=$("$lora" generate --model "$m" --prompt "hello" --temperature 0 --ids --max-new 8 2>/dev/null)
[ "$t0" = "$a" ] && ok || bad "--temperature 0 gave '$t0', greedy '$a'"
sample() {
    "$lora" generate --model "$m" --prompt hi --top-k 20 --top-p 0.9 --ids --max-new 10 "$@"
}
s1=$(sample --seed 7 2>/dev/null)
s2=$(sample --seed 7 2>/dev/null)
[ -n "$s1" ] && [ "$s1" = "$s2" ] && ok || bad "sampling with one seed differs: '$s1' / '$s2'"

# --prompt-file and a prompt with a special token
printf 'hello' > "$work/prompt.txt"
f=$("$lora" generate --model "$m" --tokenizer "$m" --prompt-file "$work/prompt.txt" --greedy \
    --ids --max-new 8 2>/dev/null)
[ "$f" = "$a" ] && ok || bad "--prompt-file gave '$f', --prompt '$a'"
"$lora" generate --model "$m" --prompt "<|endoftext|>ab" --greedy --max-new 2 >/dev/null 2>&1 \
    && ok || bad "prompt with <|endoftext|>"

# text: what --ids says, decoded; a stop string is not printed and ends the output
txt=$("$lora" generate --model "$m" --prompt "Hello" --greedy --max-new 12 2>/dev/null; echo x)
txt=${txt%x}
[ -n "$txt" ] && ok || bad "no text generated"
if [ ${#txt} -ge 4 ]; then
    stop=$(printf '%s' "$txt" | cut -c3-4)
    before=${txt%%"$stop"*}
    got=$("$lora" generate --model "$m" --prompt "Hello" --greedy --max-new 12 --stop "$stop" \
          --stop "never-there" 2>/dev/null; echo x)
    got=${got%x}
    [ "$got" = "$before" ] && ok || bad "--stop '$stop': got '$got', want '$before' (of '$txt')"
fi

# the context: 16 positions. A 10-token prompt leaves room for 7 new tokens (the last one drawn
# is never fed back), then generation stops with a note on stderr.
long=$("$lora" generate --model "$m" --prompt abcdefghij --greedy --ids --max-new 50 2>"$work/err")
rc=$?
[ $rc -eq 0 ] && ok || bad "context-full run: exit $rc"
n=$(count "$long")
if grep -q "context full" "$work/err"; then
    [ "$n" -eq 7 ] && ok || bad "context full after $n tokens, want 7: $long"
else
    [ "$n" -lt 7 ] && ok || bad "$n tokens and no context-full note: $(cat "$work/err")"
fi

# <|endoftext|> ends generation and is not printed: a tokenizer whose end-of-text id is the
# second greedy token of that run stops right after the first
first=$(echo "$long" | cut -d' ' -f1) second=$(echo "$long" | cut -d' ' -f2)
if [ "$second" -gt 10 ] && [ "$second" -lt 60 ]; then  # not one of the prompt's ids 1..10
    write_vocab "$work/tok_eos" "$second"
    e=$("$lora" generate --model "$m" --tokenizer "$work/tok_eos" --prompt "abcdefghij" --greedy \
        --ids --max-new 50 2>/dev/null)
    [ "$e" = "$first" ] && ok || bad "stop at <|endoftext|>=$second: got '$e', want '$first'"
fi

# a prompt longer than the context: one line, exit 1
err=$("$lora" generate --model "$m" --prompt "abcdefghijklmnopqrstuvwxyz" --greedy 2>&1 >/dev/null)
rc=$?
[ $rc -eq 1 ] && ok || bad "prompt longer than the context: exit $rc"
[ "$(printf '%s\n' "$err" | wc -l)" -eq 1 ] && ok || bad "not one line: $err"
echo "$err" | grep -q "n_positions=16" && ok || bad "does not say the context: $err"

# beam search: deterministic, within --max-new and the vocabulary, printed at the end
b4=$("$lora" generate --model "$m" --prompt "hello" --beams 4 --ids --max-new 8 2>"$work/err")
rc=$?
[ $rc -eq 0 ] && ok || bad "--beams 4: exit $rc: $(cat "$work/err")"
b4b=$("$lora" generate --model "$m" --prompt "hello" --beams 4 --ids --max-new 8 2>/dev/null)
[ -n "$b4" ] && [ "$b4" = "$b4b" ] && ok || bad "--beams 4 differs between runs: '$b4' / '$b4b'"
n=$(count "$b4")
[ "$n" -ge 1 ] && [ "$n" -le 8 ] && ok || bad "--beams 4 --max-new 8 gave $n ids: $b4"
for id in $b4; do
    [ "$id" -ge 0 ] && [ "$id" -lt 60 ] && ok || bad "beam id $id outside the vocabulary"
done
[ "$(wc -l < "$work/err")" -eq 1 ] && ok || bad "--beams stderr is not one line: $(cat "$work/err")"
grep -q "beam search (4 beams)" "$work/err" && ok || bad "no beam timing: $(cat "$work/err")"
lp=$("$lora" generate --model "$m" --prompt "hello" --beams 4 --ids --max-new 8 \
     --length-penalty 0.9 --no-repeat-ngram 4 --early-stopping heuristic 2>/dev/null)
[ -n "$lp" ] && ok || bad "--length-penalty --no-repeat-ngram --early-stopping"

# --no-repeat-ngram 1 with greedy: no id of the prompt (h e l o = 8 5 12 15) or the output repeats
nr=$("$lora" generate --model "$m" --prompt "hello" --greedy --no-repeat-ngram 1 --ids \
     --max-new 12 2>/dev/null)
dups=$(printf '8\n5\n12\n15\n%s\n' "$(echo "$nr" | tr ' ' '\n')" | sort | uniq -d | wc -l)
[ -n "$nr" ] && [ "$dups" -eq 0 ] && ok || bad "--no-repeat-ngram 1 repeated an id: $nr"

# a stop string ends a beam and is not printed
bt=$("$lora" generate --model "$m" --prompt "Hello" --beams 3 --max-new 12 --stop "e" \
     2>/dev/null; echo x)
bt=${bt%x}
case "$bt" in *e*) bad "--beams with --stop e printed '$bt'" ;; *) ok ;; esac

# --prompts-file: one line per prompt, in order, each what the prompt alone gives
printf 'hello\nabc\n\n' > "$work/prompts.txt"   # the third prompt is empty: starts from eos
pf=$("$lora" generate --model "$m" --prompts-file "$work/prompts.txt" --beams 4 --ids \
     --max-new 8 2>"$work/err")
rc=$?
[ $rc -eq 0 ] && ok || bad "--prompts-file: exit $rc: $(cat "$work/err")"
[ "$(printf '%s\n' "$pf" | wc -l)" -eq 3 ] && ok || bad "--prompts-file gave not 3 lines: $pf"
[ "$(printf '%s\n' "$pf" | sed -n 1p)" = "$b4" ] && ok || bad "line 1 '$pf' != alone '$b4'"
abc=$("$lora" generate --model "$m" --prompt "abc" --beams 4 --ids --max-new 8 2>/dev/null)
[ "$(printf '%s\n' "$pf" | sed -n 2p)" = "$abc" ] && ok || bad "line 2 of '$pf' != '$abc'"
grep -q "3 prompts" "$work/err" && ok || bad "no prompts timing: $(cat "$work/err")"
pf1=$("$lora" generate --model "$m" --prompts-file "$work/prompts.txt" --beams 4 --ids \
      --max-new 8 --batch 1 2>/dev/null)
[ "$pf1" = "$pf" ] && ok || bad "--batch 1 gave '$pf1', batched '$pf'"
# greedy over a prompts file (one search for all) = greedy streamed prompt by prompt
gf=$("$lora" generate --model "$m" --prompts-file "$work/prompts.txt" --greedy --ids \
     --max-new 8 2>/dev/null)
[ "$(printf '%s\n' "$gf" | sed -n 1p)" = "$a" ] && ok || bad "greedy line 1 '$gf' != '$a'"
# text lines: newlines in a completion become spaces; sampling runs one prompt at a time
tf=$("$lora" generate --model "$m" --prompts-file "$work/prompts.txt" --top-k 20 --seed 3 \
     --max-new 30 2>/dev/null)
[ "$(printf '%s\n' "$tf" | wc -l)" -eq 3 ] && ok || bad "sampled --prompts-file: not 3 lines"

# --transposed-weights: the same greedy text (streamed), ids, beams and prompts-file lines
g0=$("$lora" generate --model "$m" --prompt "Hello" --greedy --max-new 12 2>/dev/null)
g1=$("$lora" generate --model "$m" --prompt "Hello" --greedy --max-new 12 --transposed-weights \
     2>"$work/err")
rc=$?
[ $rc -eq 0 ] && [ -n "$g0" ] && [ "$g1" = "$g0" ] && ok \
    || bad "--transposed-weights greedy text '$g1' != '$g0' (exit $rc: $(cat "$work/err"))"
t1=$("$lora" generate --model "$m" --prompt "hello" --greedy --ids --max-new 8 \
     --transposed-weights 2>/dev/null)
[ "$t1" = "$a" ] && ok || bad "--transposed-weights greedy ids '$t1' != '$a'"
t4=$("$lora" generate --model "$m" --prompt "hello" --beams 4 --ids --max-new 8 \
     --transposed-weights 2>/dev/null)
[ "$t4" = "$b4" ] && ok || bad "--transposed-weights --beams 4 '$t4' != '$b4'"
tgf=$("$lora" generate --model "$m" --prompts-file "$work/prompts.txt" --greedy --ids \
      --max-new 8 --transposed-weights 2>/dev/null)
[ "$tgf" = "$gf" ] && ok || bad "--transposed-weights --prompts-file '$tgf' != '$gf'"

# failures and usage
# status ARGS...: the exit status of lora generate, its output discarded
status() { "$lora" generate "$@" >/dev/null 2>&1; echo $?; }
[ "$(status --model "$work/nope" --prompt hi)" -eq 1 ] && ok || bad "missing model"
err=$("$lora" generate --model "$m" --adapter "$work/nope" --prompt hi 2>&1 >/dev/null); rc=$?
[ $rc -eq 1 ] && ok || bad "missing adapter: exit $rc"
[ "$(printf '%s\n' "$err" | wc -l)" -eq 1 ] && ok || bad "missing adapter: not one line: $err"
[ "$(status --model "$m" --tokenizer "$work" --prompt hi)" -eq 1 ] && ok || bad "no tokenizer"
"$lora" generate --model "$m" --prompt hi --bogus >/dev/null 2>"$work/err"; rc=$?
[ $rc -eq 2 ] && ok || bad "unknown option: exit $rc"
grep -q "usage: lora generate" "$work/err" && ok || bad "unknown option: no usage on stderr"
[ "$(status --prompt hi)" -eq 2 ] && ok || bad "no --model"
[ "$(status --model "$m")" -eq 2 ] && ok || bad "no prompt"
[ "$(status --model "$m" --prompt a --prompt-file "$work/prompt.txt")" -eq 2 ] && ok \
    || bad "both --prompt and --prompt-file"
[ "$(status --model "$m" --prompt a --top-p 0)" -eq 2 ] && ok || bad "--top-p 0"
[ "$(status --model "$m" --prompt a --max-new -1)" -eq 2 ] && ok || bad "--max-new -1"
[ "$(status --model "$m" --prompt a --temperature x)" -eq 2 ] && ok || bad "--temperature x"
[ "$(status --model "$m" --prompt a --stop "")" -eq 2 ] && ok || bad "empty --stop"
[ "$(status --model "$m" --prompt a --max-new)" -eq 2 ] && ok || bad "missing value"
[ "$(status --model "$m" --prompt a extra)" -eq 2 ] && ok || bad "stray argument"
[ "$(status --model "$m" --prompt a --beams 0)" -eq 2 ] && ok || bad "--beams 0"
[ "$(status --model "$m" --prompt a --beams 2 --top-k 5)" -eq 2 ] && ok || bad "--beams --top-k"
[ "$(status --model "$m" --prompt a --no-repeat-ngram 2)" -eq 2 ] && ok \
    || bad "--no-repeat-ngram while sampling"
[ "$(status --model "$m" --prompt a --length-penalty x)" -eq 2 ] && ok || bad "--length-penalty x"
[ "$(status --model "$m" --prompt a --early-stopping maybe)" -eq 2 ] && ok \
    || bad "--early-stopping maybe"
[ "$(status --model "$m" --prompt a --batch 2)" -eq 2 ] && ok || bad "--batch without a file"
[ "$(status --model "$m" --prompt a --transposed-weights=1)" -eq 2 ] && ok \
    || bad "--transposed-weights takes no value"
[ "$(status --model "$m" --prompt a --prompts-file "$work/prompts.txt")" -eq 2 ] && ok \
    || bad "--prompt with --prompts-file"
[ "$(status --model "$m" --prompts-file "$work/nope" --greedy)" -eq 1 ] && ok \
    || bad "missing prompts file"
printf 'ab\nabcdefghijklmnopqrstuvwxyz\n' > "$work/long.txt"
err=$("$lora" generate --model "$m" --prompts-file "$work/long.txt" --greedy 2>&1 >/dev/null)
rc=$?
[ $rc -eq 1 ] && echo "$err" | grep -q "long.txt:2" && ok || bad "long prompt in a file: $err"
"$lora" generate --help | grep -q "usage: lora generate" && ok || bad "--help"
"$lora" generate --help | grep -q -- "--transposed-weights" && ok \
    || bad "--help lists --transposed-weights"
"$lora" generate --help >/dev/null; [ $? -eq 0 ] && ok || bad "--help exit status"
"$lora" --help | grep -q generate && ok || bad "lora --help lists generate"

echo "test_generate: $pass passed, $fail failed"
[ $fail -eq 0 ]
