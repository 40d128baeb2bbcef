#!/bin/sh
# bench/run --quick end to end on tiny stand-in models (every section, the PyTorch side when
# /usr/bin/python3 has torch): the suite runs, prints each section's table, and saves its raw
# results. Checks the form of the output, not the figures.
# usage: test_bench_run.sh SOURCE_DIR BUILD_DIR WORKDIR
set -u
src=$1 build=$2 work=$3
pass=0 fail=0
ok()  { pass=$((pass + 1)); }
bad() { fail=$((fail + 1)); echo "FAIL: $*" >&2; }
rm -rf "$work" && mkdir -p "$work"
# context 1024 for the sequence-length sweep; small enough to run in seconds
"$build/lora" init --out "$work/m" --vocab 300 --n-layer 2 --n-embd 64 --n-head 2 \
    --n-positions 1024 >/dev/null || { echo "cannot make model" >&2; exit 1; }
torch=""
/usr/bin/python3 -c 'import torch' 2>/dev/null || torch="--no-torch"

out=$("$src/bench/run" --quick --threads 2 --build "$build" --gpt2-model "$work/m" \
      --default-model "$work/m" --json "$work/results.json" $torch 2>"$work/log")
rc=$?
[ $rc -eq 0 ] && ok || bad "bench/run exit $rc: $(tail -5 "$work/log")"
for want in "== machine (threads 2) ==" "FMA peak GFLOP/s" "== training step vs PyTorch" \
            "gpt2s lora q,v" "default lora q,v" "== utilisation" "FULL T x T square" \
            "== where the time goes: gpt2s lora q,v B=4 T=128" "matmul" "(untimed)" \
            "== cost growth: LoRA rank" "r=64 / r=1 =" "== cost growth: sequence length" \
            "1x1024" "== cost growth: threads" "speed-up" "== memory" "worst |error|" \
            "== activation checkpointing" "step x" "== generation =="; do
    echo "$out" | grep -qF -- "$want" && ok || bad "output lacks '$want'"
done
if [ -z "$torch" ]; then
    # a PyTorch figure in the ratio column of the train table
    echo "$out" | grep -E "^gpt2s lora q,v +4x128( +[0-9.]+){4} +[0-9.]+x" \
        >/dev/null && ok || bad "no PyTorch figures in: $out"
fi
/usr/bin/python3 -c 'import json,sys; d=json.load(open(sys.argv[1])); \
    assert d["quick"] and len(d["runs"]) >= 14; \
    assert all("cmd" in r for r in d["runs"])' "$work/results.json" && ok \
    || bad "results.json incomplete"

# sections and usage
out=$("$src/bench/run" --quick --sections memory --build "$build" --gpt2-model "$work/m" \
      --default-model "$work/m" --json "$work/r2.json" 2>/dev/null)
echo "$out" | grep -q "== memory" && ok || bad "--sections memory alone: $out"
echo "$out" | grep -q "== training step" && bad "--sections memory ran train" || ok
"$src/bench/run" --sections nope --build "$build" >/dev/null 2>&1
[ $? -eq 2 ] && ok || bad "unknown section accepted"
"$src/bench/run" --list | grep -qx generate && ok || bad "--list"

echo "test_bench_run: $pass passed, $fail failed"
[ $fail -eq 0 ]
