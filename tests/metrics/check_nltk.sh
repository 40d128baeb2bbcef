#!/bin/sh
# check_nltk.sh LORA_BIN WORKDIR — compares `lora score` BLEU and NIST with NLTK's corpus_bleu and
# corpus_nist on a generated test set (perturbed references as outputs). Exit 77 (skipped) when
# /usr/bin/python3 cannot import NLTK (Debian: apt-get install python3-nltk).
set -eu

if [ $# -ne 2 ]; then
    echo "usage: $0 LORA_BIN WORKDIR" >&2
    exit 2
fi
LORA=$1
WORK=$2
HERE=$(cd "$(dirname "$0")" && pwd)
PY=/usr/bin/python3

if [ ! -x "$PY" ] || ! "$PY" -c 'import nltk.translate.bleu_score, nltk.translate.nist_score' \
    >/dev/null 2>&1; then
    echo "SKIP: python3-nltk is not importable by $PY"
    exit 77
fi

rm -rf "$WORK"
mkdir -p "$WORK"
"$LORA" data e2e --seed 11 --out "$WORK/data" --train 10 --dev 10 --test 300 >/dev/null
"$PY" "$HERE/nltk_check.py" prepare "$WORK/data/test.refs.txt" "$WORK"
for hyps in hyps short; do
    for refs in multi single; do
        "$LORA" score --refs "$WORK/$refs.refs.txt" --hyps "$WORK/$hyps.txt" --json \
            >"$WORK/$hyps.$refs.json"
    done
done
"$PY" "$HERE/nltk_check.py" compare "$WORK"
