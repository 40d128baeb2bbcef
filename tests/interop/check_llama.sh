#!/bin/sh
# check_llama.sh — llama.cpp as a real reader of `lora export gguf`.
#
#   check_llama.sh LORA GGUF_HELPER WORK_DIR BASE_MODEL_DIR
#
# Installs llama.cpp from npm (node-llama-cpp@3.22.1 + @node-llama-cpp/linux-x64@3.22.1: the
# prebuilt CPU libllama of llama.cpp release v0.5.0) into WORK_DIR, extracts llama.h and the
# ggml headers from the package's git bundle of that release (never committed), and builds
# llama_logits.c against libllama. Then, on a tiny random GPT-2 with a byte-level tokenizer:
#   - the base model exported as GGUF (F32 and F16);
#   - a LoRA adapter on q,v (exported as attn_qkv with stacked A and block B) and one on all
#     linears with rsLoRA, both with random non-zero B, at user scales 1.0 and 0.5;
# llama.cpp's logits at every position must have the same argmax as ours (from the Hugging Face
# directory and the PEFT adapter) and differ by at most TOL (ggml's GELU uses an F16 table).
# Then on BASE_MODEL_DIR (the demo's models/default, exported as GGUF): an AdaLoRA adapter
# trained briefly on `lora data e2e` with init_r 6 > target_r 2, so that the final mask prunes
# (`lora inspect` must report pruned triplets), exported folded into LoRA form, at user scales
# 1.0 and 0.5, the same criteria.
# Negative controls that the comparison must detect: the q,v adapter and the AdaLoRA adapter
# with alpha halved, and the model with attn_output weights left in the Conv1D layout (square,
# so llama.cpp loads it).
# Exits 77 (ctest SKIP_RETURN_CODE) when node, npm, git or a C compiler is missing or the
# packages cannot be fetched; 1 when anything differs.
set -u
lora=${1:?usage: check_llama.sh LORA GGUF_HELPER WORK_DIR BASE_MODEL_DIR}
helper=${2:?usage: check_llama.sh LORA GGUF_HELPER WORK_DIR BASE_MODEL_DIR}
work=${3:?usage: check_llama.sh LORA GGUF_HELPER WORK_DIR BASE_MODEL_DIR}
base=${4:-}
TOL=${LORA_LLAMA_TOL:-1e-2}
CONTROL_MIN=0.1

skip() {
    echo "SKIP: $*"
    exit 77
}
for tool in node npm git; do
    command -v "$tool" >/dev/null 2>&1 || skip "$tool is not installed"
done
cc=${CC:-cc}
command -v "$cc" >/dev/null 2>&1 || skip "no C compiler ($cc)"
here=$(cd "$(dirname "$0")" && pwd)
mkdir -p "$work" || exit 1

# ---- llama.cpp from npm ----
npmdir="$work/npm"
bins="$npmdir/node_modules/@node-llama-cpp/linux-x64/bins/linux-x64"
bundle="$npmdir/node_modules/node-llama-cpp/llama/gitRelease.bundle"
if [ ! -f "$bins/libllama.v0.5.0.so" ] || [ ! -f "$bundle" ]; then
    mkdir -p "$npmdir" || exit 1
    [ -f "$npmdir/package.json" ] || echo '{"private": true}' >"$npmdir/package.json"
    limit=""
    command -v timeout >/dev/null 2>&1 && limit="timeout 600"
    if ! (cd "$npmdir" && $limit npm install --ignore-scripts --omit=optional --no-audit \
              --no-fund --silent --fetch-timeout=60000 --fetch-retries=1 \
              node-llama-cpp@3.22.1 @node-llama-cpp/linux-x64@3.22.1 >"$work/npm.log" 2>&1); then
        skip "cannot install node-llama-cpp@3.22.1 from the npm registry (see $work/npm.log)"
    fi
    [ -f "$bins/libllama.v0.5.0.so" ] && [ -f "$bundle" ] ||
        skip "node-llama-cpp@3.22.1 installed without libllama.v0.5.0.so or its git bundle"
fi

# ---- headers from the release's git bundle, and the reader program ----
inc="$work/include"
if [ ! -f "$inc/include/llama.h" ] || [ ! -f "$inc/ggml/include/ggml.h" ]; then
    rm -rf "$work/hdr.git" "$inc"
    mkdir -p "$inc" || exit 1
    git init -q --bare "$work/hdr.git" &&
        git -C "$work/hdr.git" fetch -q "$bundle" HEAD &&
        git -C "$work/hdr.git" archive FETCH_HEAD include/llama.h ggml/include |
        tar -x -C "$inc" || {
        echo "FAIL: cannot extract llama.h and ggml/include from $bundle"
        exit 1
    }
fi
reader="$work/llama_logits"
if ! "$cc" -std=c11 -O1 -I"$inc/include" -I"$inc/ggml/include" "$here/llama_logits.c" \
        -o "$reader" -L"$bins" -l:libllama.v0.5.0.so -l:libggml.v0.5.0.so -l:libggml-base.so \
        -Wl,-rpath,"$bins" 2>"$work/cc.log"; then
    echo "FAIL: cannot build llama_logits against libllama:"
    cat "$work/cc.log"
    exit 1
fi

# ---- the comparisons ----
pass=0 fail=0
ok() { pass=$((pass + 1)); }
bad() {
    fail=$((fail + 1))
    echo "FAIL: $*"
}
# fixed ids: bytes, the two merged tokens, <|endoftext|>
ids="258 72 101 108 108 111 256 257 44 32 119 111 114 108 100 46 10 257 0 255 128 33 256 200
     17 99 257 258 65 90 97 122"
model="$work/model"
rm -rf "$model" "$work"/*.gguf "$work"/*.txt "$work/qv" "$work/all"
"$helper" model "$model" || exit 1

# run NAME OURS_ARGS... -- LLAMA_ARGS...: both sides' logits into NAME.ours.txt / NAME.llama.txt
run() {
    name=$1
    shift
    ours="" theirs=""
    while [ "$1" != "--" ]; do ours="$ours $1"; shift; done
    shift
    theirs="$*"
    # shellcheck disable=SC2086
    "$helper" logits $ours $ids >"$work/$name.ours.txt" || { bad "$name: our logits"; return 1; }
    # shellcheck disable=SC2086
    "$reader" "$bins" $theirs $ids >"$work/$name.llama.txt" 2>"$work/$name.llama.log" || {
        bad "$name: llama.cpp failed: $(tail -3 "$work/$name.llama.log")"
        return 1
    }
}
same() { # NAME: argmax everywhere and max-abs <= TOL
    if r=$("$helper" compare "$work/$1.ours.txt" "$work/$1.llama.txt" "$TOL"); then
        ok
        echo "$1: $r"
    else
        bad "$1: $r (tolerance $TOL)"
    fi
}
detected() { # NAME: the control must differ by at least CONTROL_MIN
    r=$("$helper" compare "$work/$1.ours.txt" "$work/$1.llama.txt" "$TOL")
    if "$helper" differ "$work/$1.ours.txt" "$work/$1.llama.txt" "$CONTROL_MIN" >/dev/null; then
        ok
        echo "$1 (negative control, detected): $r"
    else
        bad "$1: the negative control was NOT detected: $r"
    fi
}

"$lora" export gguf --model "$model" --out "$work/model.gguf" && ok || bad "export model"
run base "$model" -- "$work/model.gguf" && same base
"$lora" export gguf --model "$model" --dtype f16 --out "$work/model_f16.gguf" && ok ||
    bad "export model f16"
run base_f16 "$model" -- "$work/model_f16.gguf" && same base_f16

"$helper" adapter "$model" "$work/qv" q,v 4 8 0 1 || bad "make q,v adapter"
"$lora" export gguf --model "$model" --adapter "$work/qv" --out "$work/qv.gguf" && ok ||
    bad "export q,v adapter"
"$helper" adapter "$model" "$work/all" all 4 8 1 2 || bad "make all-linear adapter"
"$lora" export gguf --model "$model" --adapter "$work/all" --out "$work/all.gguf" && ok ||
    bad "export all-linear adapter"
for s in 1.0 0.5; do
    run "lora_qv_$s" "$model" --adapter "$work/qv" "$s" -- \
        "$work/model.gguf" --lora "$work/qv.gguf" "$s" && same "lora_qv_$s"
    run "lora_all_$s" "$model" --adapter "$work/all" "$s" -- \
        "$work/model.gguf" --lora "$work/all.gguf" "$s" && same "lora_all_$s"
done

# negative controls
"$helper" scale-alpha "$work/qv.gguf" "$work/qv_bad_alpha.gguf" 0.5 || bad "make control"
run control_alpha "$model" --adapter "$work/qv" 1.0 -- \
    "$work/model.gguf" --lora "$work/qv_bad_alpha.gguf" 1.0 && detected control_alpha
"$helper" untranspose "$work/model.gguf" "$work/model_untransposed.gguf" || bad "make control"
run control_transpose "$model" -- "$work/model_untransposed.gguf" && detected control_transpose

# ---- the demo's base model, adapters trained on e2e data: AdaLoRA (pruned), LoRA q,v ----
# init_r 6 > target_r 2, so the final mask drops triplets (sites of unequal rank, some with
# none); the adapter is exported folded (rank = kept triplets, B = P·Λ) and must give our
# AdaLoRA logits in llama.cpp.
if [ -z "$base" ] || [ ! -f "$base/config.json" ]; then
    bad "AdaLoRA: the base model directory '$base' is missing"
else
    rm -rf "$work/e2e" "$work/ada"
    if "$lora" data e2e --out "$work/e2e" --train 200 --dev 20 --test 3 >/dev/null &&
        "$lora" train --model "$base" --data "$work/e2e/train.jsonl" --method adalora \
            --init-r 6 --target-r 2 --targets q,v,c_proj,c_fc --alpha 12 --dropout 0 \
            --steps 10 --tinit 2 --tfinal 3 --delta-t 2 --batch 2 --seq-len 64 --lr 3e-2 \
            --warmup 2 --threads 2 --quiet --out "$work/ada" >"$work/ada_train.log" 2>&1; then
        ok
    else
        bad "AdaLoRA training run: $(tail -2 "$work/ada_train.log")"
    fi
    # and a trained LoRA q,v adapter on the same base and data (the demo's setting, r = 4)
    rm -rf "$work/qv_trained"
    if "$lora" train --model "$base" --data "$work/e2e/train.jsonl" --r 4 --alpha 32 \
        --targets q,v --dropout 0 --steps 10 --batch 2 --seq-len 64 --lr 3e-2 --warmup 2 \
        --threads 2 --quiet --out "$work/qv_trained" >"$work/qv_train.log" 2>&1; then
        ok
    else
        bad "LoRA training run: $(tail -2 "$work/qv_train.log")"
    fi
    # pruned: every site starts at rank 6 (12 per fused q,v module); some must end below
    if "$lora" inspect "$work/ada" >"$work/ada_inspect.txt" 2>&1 &&
        grep -q "pruned triplets  *[1-9]" "$work/ada_inspect.txt"; then
        ok
        grep -E "^(method|sites|kept|pruned)" "$work/ada_inspect.txt"
    else
        bad "AdaLoRA run pruned nothing or inspect failed: $(head -3 "$work/ada_inspect.txt")"
    fi
    # The input: the last 32 tokens of a training example (the end of the MR and the reference
    # sentence; consecutive lines share an MR, so each line gives a new window). A position
    # whose two largest logits lie within TOL is a tie that rounding may break either way, in
    # any reader; the example is the first one without such a position in OUR logits (base,
    # adapter at 1.0 and 0.5), chosen before llama.cpp runs.
    fixed_ids=$ids
    ids=""
    n=1
    while [ $n -le 60 ]; do
        cand=$(sed -n "${n}p" "$work/e2e/train.jsonl" |
            sed 's/^{"prompt":"\(.*\)","completion":"\(.*\)"}$/\1\2/' |
            "$lora" tokenize --tokenizer "$base" | tr ' ' '\n' | tail -32 | tr '\n' ' ')
        tied=0
        for a in "" "--adapter $work/ada 1.0" "--adapter $work/ada 0.5" \
            "--adapter $work/qv_trained 1.0" "--adapter $work/qv_trained 0.5"; do
            # shellcheck disable=SC2086
            "$helper" logits "$base" $a $cand >"$work/cand.txt" &&
                g=$("$helper" gap "$work/cand.txt") &&
                awk -v g="$g" -v t="$TOL" 'BEGIN { exit !(g > t) }' || tied=1
        done
        if [ $tied -eq 0 ] && [ "$(echo "$cand" | wc -w)" -eq 32 ]; then
            ids=$cand
            break
        fi
        n=$((n + 1))
    done
    [ -n "$ids" ] && ok || bad "no e2e example without near-tied logits among the first 60"
    echo "AdaLoRA input: e2e training example $n, ids $ids"
    "$lora" export gguf --model "$base" --out "$work/default.gguf" && ok || bad "export base"
    "$lora" export gguf --model "$base" --adapter "$work/ada" --out "$work/ada.gguf" && ok ||
        bad "export AdaLoRA adapter"
    run default "$base" -- "$work/default.gguf" && same default
    "$lora" export gguf --model "$base" --adapter "$work/qv_trained" \
        --out "$work/qv_trained.gguf" && ok || bad "export trained LoRA adapter"
    for s in 1.0 0.5; do
        run "adalora_$s" "$base" --adapter "$work/ada" "$s" -- \
            "$work/default.gguf" --lora "$work/ada.gguf" "$s" && same "adalora_$s"
        run "lora_qv_trained_$s" "$base" --adapter "$work/qv_trained" "$s" -- \
            "$work/default.gguf" --lora "$work/qv_trained.gguf" "$s" &&
            same "lora_qv_trained_$s"
    done
    # the comparison means something only if the adapter moves the logits well past TOL
    if r=$("$helper" differ "$work/default.ours.txt" "$work/adalora_1.0.ours.txt" 0.5); then
        ok
        echo "AdaLoRA adapter's own effect on our logits: $r"
    else
        bad "the AdaLoRA adapter barely changes the logits: $r"
    fi
    if r=$("$helper" differ "$work/default.ours.txt" "$work/lora_qv_trained_1.0.ours.txt" 0.5)
    then
        ok
        echo "trained LoRA adapter's own effect on our logits: $r"
    else
        bad "the trained LoRA adapter barely changes the logits: $r"
    fi
    "$helper" scale-alpha "$work/ada.gguf" "$work/ada_bad_alpha.gguf" 0.5 || bad "make control"
    run control_ada_alpha "$base" --adapter "$work/ada" 1.0 -- \
        "$work/default.gguf" --lora "$work/ada_bad_alpha.gguf" 1.0 && detected control_ada_alpha
    ids=$fixed_ids
fi

# our own loader reads the export back: generation from the GGUF works
"$lora" generate --model "$work/model.gguf" --tokenizer "$model" --greedy --max-new 8 \
    --prompt "hello" --ids >"$work/gen_gguf.txt" 2>/dev/null &&
    "$lora" generate --model "$model" --greedy --max-new 8 --prompt "hello" --ids \
        >"$work/gen_dir.txt" 2>/dev/null &&
    cmp -s "$work/gen_gguf.txt" "$work/gen_dir.txt" && ok ||
    bad "lora generate from the GGUF differs from the directory"

echo "$pass passed, $fail failed"
[ "$fail" -eq 0 ]
