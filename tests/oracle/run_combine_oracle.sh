#!/bin/sh
# The `lora combine` oracle: adapters made by the engine (and two laid out as PEFT saves them)
# are combined by the CLI, and combine_check.py compares each result with PEFT's semantics.
# usage: run_combine_oracle.sh LORA COMBINE_FIXTURE OUT_DIR [PYTHON]
set -eu
lora=$1
fixture=$2
out=$3
py=${4:-/usr/bin/python3}
here=$(cd "$(dirname "$0")" && pwd)
if ! "$py" -c 'import torch' 2>/dev/null; then
    echo "SKIP: PyTorch is not importable by $py (apt-get install python3-torch)"
    exit 77
fi
rm -rf "$out"
mkdir -p "$out"
"$fixture" make "$out"
model="$out/model"
"$py" "$here/combine_check.py" make-peft --model "$model" --out "$out"

n=0
# case EXPECT_SLICES HOW [--r R] -- ADAPTER WEIGHT ...
case_() {
    slices=$1
    how=$2
    shift 2
    r=""
    if [ "$1" = "--r" ]; then
        r=$2
        shift 2
    fi
    shift # --
    n=$((n + 1))
    dst="$out/out$n"
    cargs=""
    while [ $# -gt 0 ]; do
        cargs="$cargs --adapter $out/$1 --weight $2"
        shift 2
    done
    # shellcheck disable=SC2086
    "$lora" combine $cargs --how "$how" ${r:+--r $r} --out "$dst" >/dev/null
    "$fixture" logits "$model" "$dst" "$dst.logits.safetensors"
    # shellcheck disable=SC2086
    "$py" "$here/combine_check.py" check --how "$how" $cargs ${r:+--r $r} --out "$dst" \
        --model "$model" --logits "$dst.logits.safetensors" --expect-slices "$slices"
}

case_ ""            cat           -- a_qv 0.7 b_qv -0.3
case_ "0:q,v;1:q,v" linear        -- a_qv 0.7 b_qv -0.3
case_ ""            linear        -- a_qv 1.5 c_qk 0.5
case_ "0:q,v;1:q,v" linear        -- d_mix 0.6 e_qv2 0.4
case_ ""            svd --r 3     -- a_qv 0.7 b_qv -0.3
case_ ""            svd --r 16    -- a_qv 0.7 b_qv -0.3
case_ ""            svd           -- a_qv 0.7 d_mix 1.0
case_ ""            cat           -- a_qv 1.0 c_qk -2.0 d_mix 0.5
case_ "0:q,v;1:q,v" svd           -- d_mix -0.5
case_ ""            cat           -- p1 0.7 p2 0.3
case_ ""            linear        -- p1 0.5 p2 1.5
case_ ""            svd --r 5     -- p1 1.0 p2 -1.0
echo "combine oracle: $n cases passed"
