#!/bin/sh
# check_cli.sh — `lora tokenizer-train` and `lora tokenize` end to end, with no network:
# train on a generated corpus, encode and decode it back byte for byte, and the exit codes of
# bad usage (2) and bad input (1).
#
#   check_cli.sh LORA_BINARY WORK_DIR
set -u
lora=${1:?usage: check_cli.sh LORA_BINARY WORK_DIR}
work=${2:?usage: check_cli.sh LORA_BINARY WORK_DIR}
passed=0
failed=0

check() { # check NAME CONDITION-EXIT-STATUS
    if [ "$2" -eq 0 ]; then
        passed=$((passed + 1))
        echo "ok   $1"
    else
        failed=$((failed + 1))
        echo "FAIL $1"
    fi
}

rm -rf "$work" && mkdir -p "$work" || exit 1
corpus="$work/corpus.txt"
i=0
while [ $i -lt 300 ]; do
    printf 'The quick brown fox %d jumps over the lazy dog. ' $i
    printf 'It'"'"'s a tokenizer test, isn'"'"'t it?\n'
    printf 'Caf\303\251 na\303\257ve r\303\251sum\303\251 \344\275\240\345\245\275 <|endoftext|>\n'
    i=$((i + 1))
done >"$corpus"
printf 'tail text with a byte \377 that is not UTF-8\n' >"$work/extra.txt"

"$lora" tokenizer-train --corpus "$corpus,$work/extra.txt" --vocab 300 --out "$work/tok" \
    2>"$work/train.log"
check "tokenizer-train succeeds" $?
grep -q "merges" "$work/train.log"
check "tokenizer-train reports progress on stderr" $?
for f in vocab.json merges.txt tokenizer.json; do
    test -s "$work/tok/$f"
    check "tokenizer-train wrote $f" $?
done

"$lora" tokenize --tokenizer "$work/tok" <"$corpus" >"$work/ids.txt"
check "tokenize succeeds" $?
test "$(wc -l <"$work/ids.txt")" -eq 1
check "ids come on one line" $?
"$lora" tokenize --tokenizer "$work/tok" --decode <"$work/ids.txt" >"$work/back.txt"
check "tokenize --decode succeeds" $?
cmp -s "$corpus" "$work/back.txt"
check "decode(encode(corpus)) is the corpus" $?
printf 'a\377b \300\200' | "$lora" tokenize --tokenizer "$work/tok" |
    "$lora" tokenize --tokenizer "$work/tok" --decode | od -An -c >"$work/bytes.txt"
printf 'a\377b \300\200' | od -An -c | cmp -s - "$work/bytes.txt"
check "bytes that are not UTF-8 round-trip" $?

eot=$(printf '<|endoftext|>' | "$lora" tokenize --tokenizer "$work/tok")
test "$eot" = "299"
check "<|endoftext|> is the last id ($eot)" $?
n=$(printf '<|endoftext|>' | "$lora" tokenize --tokenizer "$work/tok" --no-special | wc -w)
test "$n" -gt 1
check "--no-special encodes it as text" $?

"$lora" tokenize --bogus </dev/null >/dev/null 2>&1
test $? -eq 2
check "unknown option exits 2" $?
"$lora" tokenize </dev/null >/dev/null 2>&1
test $? -eq 2
check "missing --tokenizer exits 2" $?
"$lora" tokenize --tokenizer "$work/none" </dev/null >/dev/null 2>"$work/err.txt"
test $? -eq 1 && test "$(wc -l <"$work/err.txt")" -eq 1
check "missing tokenizer exits 1 with one line" $?
echo "1 2 999999" | "$lora" tokenize --tokenizer "$work/tok" --decode >/dev/null 2>&1
test $? -eq 1
check "an id past the vocabulary exits 1" $?
echo "1 x 2" | "$lora" tokenize --tokenizer "$work/tok" --decode >/dev/null 2>&1
test $? -eq 1
check "a word that is not an id exits 1" $?
"$lora" tokenize --help >/dev/null
check "tokenize --help exits 0" $?
"$lora" tokenizer-train --corpus "$corpus" --vocab 100 --out "$work/x" >/dev/null 2>&1
test $? -eq 2
check "--vocab below 257 exits 2" $?
"$lora" tokenizer-train --corpus "$work/missing.txt" --vocab 300 --out "$work/x" \
    >/dev/null 2>&1
test $? -eq 1
check "a missing corpus exits 1" $?

echo "tokenizer cli: $passed passed, $failed failed"
test "$failed" -eq 0
