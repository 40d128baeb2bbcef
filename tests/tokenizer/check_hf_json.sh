#!/bin/sh
# check_hf_json.sh — the tokenizer.json that `lora tokenizer-train` writes, read by Hugging
# Face's JS tokenizers (npm @huggingface/tokenizers, fetched at test time into WORK_DIR), gives
# the same ids as `lora tokenize`.
#
#   check_hf_json.sh LORA_BINARY WORK_DIR
#
# Exits 77 (ctest SKIP_RETURN_CODE) when node/npm are missing or the package cannot be fetched.
set -u

lora=${1:?usage: check_hf_json.sh LORA_BINARY WORK_DIR}
work=${2:?usage: check_hf_json.sh LORA_BINARY WORK_DIR}
pkg_spec=@huggingface/tokenizers@0.2.0

skip() {
    echo "SKIP: $*"
    exit 77
}

command -v node >/dev/null 2>&1 || skip "node is not installed"
command -v npm >/dev/null 2>&1 || skip "npm is not installed"
here=$(cd "$(dirname "$0")" && pwd)
mkdir -p "$work" || exit 1
cjs="$work/package/dist/tokenizers.cjs"

if [ ! -f "$cjs" ]; then
    rm -rf "$work/package" "$work"/huggingface-tokenizers-*.tgz
    limit=""
    command -v timeout >/dev/null 2>&1 && limit="timeout 180"
    if ! (cd "$work" && $limit npm pack "$pkg_spec" --silent --fetch-timeout=30000 \
              --fetch-retries=1 >/dev/null 2>&1); then
        skip "cannot fetch $pkg_spec from the npm registry"
    fi
    tar -xzf "$work"/huggingface-tokenizers-0.2.0.tgz -C "$work" || skip "cannot unpack $pkg_spec"
fi

# A corpus: the varied test text, repeated with numbered lines so that merges have counts.
corpus="$work/corpus.txt"
i=0
while [ $i -lt 40 ]; do
    printf 'Line %d of the corpus. ' $i
    cat "$here/varied.txt"
    i=$((i + 1))
done >"$corpus"
"$lora" tokenizer-train --corpus "$corpus" --vocab 1000 --out "$work/tok" 2>"$work/train.log" || {
    echo "FAIL: lora tokenizer-train:"
    cat "$work/train.log"
    exit 1
}

exec node "$here/hf_tokenizers_check.js" "$cjs" "$lora" "$work/tok" "$here/varied.txt" "$corpus"
