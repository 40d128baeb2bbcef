#!/bin/sh
# PEFT adapter directories both ways against the PyTorch side.
# usage: run_peft_oracle.sh TEST_BINARY OUT_DIR [PYTHON]
set -eu
bin=$1
out=$2
py=${3:-/usr/bin/python3}
here=$(cd "$(dirname "$0")" && pwd)
if ! "$py" -c 'import torch' 2>/dev/null; then
    echo "SKIP: PyTorch is not importable by $py (apt-get install python3-torch)"
    exit 77
fi
rm -rf "$out"
"$py" "$here/make_cases.py" --out "$out" >/dev/null
model="$out/models/tiny"
"$py" "$here/peft_check.py" make-fixture --model "$model" --out "$out/peft_fixture"
"$bin" read "$model" "$out/peft_fixture"
"$bin" write "$model" "$out/written"
for a in qv all_rslora qkv_mlp; do
    "$py" "$here/peft_check.py" check --model "$model" --adapter "$out/written/$a"
done
