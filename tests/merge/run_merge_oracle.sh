#!/bin/sh
# `lora merge` outputs checked by the PyTorch oracle (tests/oracle/merge_check.py): the merged
# directory's logits equal base + adapters computed in PyTorch and the engine's unmerged logits.
# usage: run_merge_oracle.sh LORA MAKE_TINY_MODEL MERGE_HELPER WORKDIR [PYTHON]
set -eu
lora=$1 mk=$2 helper=$3 work=$4
py=${5:-/usr/bin/python3}
here=$(cd "$(dirname "$0")/../oracle" && pwd)
if ! "$py" -c 'import torch' 2>/dev/null; then
    echo "SKIP: PyTorch is not importable by $py (apt-get install python3-torch)"
    exit 77
fi
rm -rf "$work" && mkdir -p "$work"
m="$work/base"
"$mk" "$m"
for k in qv all rslora adalora; do "$helper" adapter "$m" "$work/ad_$k" $k 3; done
check() { # NAME ADAPTER[:S]...
    name=$1
    shift
    args=""
    for a in "$@"; do args="$args --adapter $a"; done
    "$lora" merge --model "$m" $args --out "$work/out_$name" 2>/dev/null
    "$helper" logits "$m" "$work/exp_$name.safetensors" "$@" >/dev/null
    "$py" "$here/merge_check.py" --base "$m" --merged "$work/out_$name" \
        --expected "$work/exp_$name.safetensors" $args
}
check qv "$work/ad_qv"
check all "$work/ad_all"
check rslora "$work/ad_rslora"
check adalora "$work/ad_adalora"
check two "$work/ad_all:0.7" "$work/ad_qv:0.3"
