#!/bin/sh
# Generates the PyTorch reference cases and runs the engine against them.
# usage: run_oracle.sh TEST_BINARY OUT_DIR [PYTHON]
# Exit 77 (skipped) when PyTorch is not importable.
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
exec "$bin" "$out"
