#!/bin/sh
# generate.sh — greedy generation speed: lora.c (base, adapter merged, adapter unmerged) against
# PyTorch 1.13 and llama.cpp, and against the machine's memory-bandwidth bound.
#
#   bench/generate.sh [--quick] [--rounds N] [--new N] [--prompt N] [--threads N]
#                     [--build DIR] [--work DIR] [--transposed]
#
# The workload: GPT-2 small (124M: 12 layers, 768 channels, 12 heads, vocabulary 50257, context
# 1024; random F32 weights from `lora init`), batch 1, a 64-token prompt (ids 37 i + 11 mod V),
# 128 new tokens, greedy, with a KV cache, 2 threads. Each implementation is a separate process
# that loads the model, warms up, and times one generation: prefill (the prompt in one forward)
# and decode (128 single-token forwards); tokens/s of each are reported separately.
#   lora.c base      build/bench/bench_generate run MODEL
#   lora.c merged    ... --adapter AD --mode merged  (lora_adapter_add, then lora_model_merge)
#   lora.c unmerged  ... --adapter AD --mode unmerged (the adapter applied at every step)
#                    AD: LoRA r = 8, alpha 16 on q,v, random non-zero A and B
#   lora.c base PASSIVE  base with OMP_WAIT_POLICY=PASSIVE, as PyTorch gets: on a machine
#                    whose cores are busy with other work, threads that spin at OpenMP's
#                    barriers (libgomp's default) lose time slices to each other
#   lora.c base Wt, lora.c merged Wt, lora.c unmerged Wt  (only with --transposed)
#                    base, merged and unmerged again with bench_generate's --transposed: the
#                    decoder keeps a transposed copy of the linears' weights
#                    (lora_decoder_set_transposed, one dot product per output); their "agree"
#                    is against the same row without it
#   PyTorch          /usr/bin/python3 bench/torch_generate.py MODEL (gpt2_ref's GPT-2 with a KV
#                    cache, torch.set_num_threads, inference_mode), as installed and with
#                    OMP_WAIT_POLICY=PASSIVE; the faster of the two is the PyTorch reference
#   llama.cpp        bench/llama_generate.c on `lora export gguf` (F32), against libllama of
#                    node-llama-cpp@3.22.1 from npm, installed as tests/interop/check_llama.sh
#                    does; skipped, with the reason, without node, npm, git, a C compiler or the
#                    registry
# The implementations run in --rounds rounds (default 3; --quick: 1 round of 32 new tokens),
# each round every implementation once, in an order rotated from round to round, so that noise
# on the machine falls on all of them; the table gives the median (and the range) per
# implementation.
#
# The bound: a decoded token reads every weight once, so tokens/s <= bandwidth / bytes per
# token, with bytes per token = 4 · (L · (C·3C + C·C + 2·C·F) + V·C) (F32: the four linear
# weights of every layer and the tied LM head wte; biases, layer norms and the KV cache are
# left out) and the bandwidth a STREAM-style triad a[i] = b[i] + s·c[i] over 3 x 256 MiB of
# doubles on the same thread count, best of 10 (3 with --quick), on 4 KiB pages and on
# transparent huge pages, measured before and after the runs (the highest is used). The triad
# counts 3 x 8 bytes per element as STREAM does (the write-allocate read is not counted), and a
# decoded token only reads, so a ratio a little above 1 is possible.
# The bandwidth of a shared machine drifts over minutes as its neighbours' load changes, so each
# run also gets its own bound: a short triad (3 x 128 MiB, best of 3) just before it, recorded
# with its result; the /adj column is the median over the rounds of decode ÷ that bound.
#
# Columns: decode tokens/s and its ratio to the bound (and to the adjacent bound), to lora.c base, to llama.cpp and to the
# PyTorch reference; "agree" is how many of the generated tokens are the same as lora.c base's
# (for the adapter: merged against unmerged) before the first difference — float rounding may
# break a near tie differently, so less than all is not by itself an error.
# Files (model, adapter, GGUF, the llama.cpp install, raw results) are kept in --work (default
# BUILD/bench/generate) and reused by the next run. Not a test.
set -u
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/.." && pwd)
build="$root/build"
work=""
rounds="" n_new="" n_prompt=64 threads=2 triad_reps=10 quick=0 transposed=0

usage() { # usage [STATUS]: the synopsis; 0 for --help, 2 for a usage error
    sed -n '2,7p' "$0" | sed 's/^# \{0,1\}//'
    echo "(the comment at the top of $0 says more)"
    exit "${1:-2}"
}
while [ $# -gt 0 ]; do
    case "$1" in
    --quick) quick=1 ;;
    --rounds) rounds=${2:?}; shift ;;
    --new) n_new=${2:?}; shift ;;
    --prompt) n_prompt=${2:?}; shift ;;
    --threads) threads=${2:?}; shift ;;
    --build) build=${2:?}; shift ;;
    --work) work=${2:?}; shift ;;
    --transposed) transposed=1 ;;
    -h | --help) usage 0 ;;
    *) echo "generate.sh: unknown option $1" >&2; usage ;;
    esac
    shift
done
if [ $quick -eq 1 ]; then # explicit --rounds / --new still apply
    rounds=${rounds:-1} n_new=${n_new:-32} triad_reps=3
fi
rounds=${rounds:-3} n_new=${n_new:-128}
for v in "$rounds" "$n_new" "$n_prompt" "$threads"; do
    case "$v" in
    '' | *[!0-9]* | 0) echo "generate.sh: counts must be positive integers" >&2; exit 2 ;;
    esac
done
[ -n "$work" ] || work="$build/bench/generate"
lora="$build/lora"
bg="$build/bench/bench_generate"
for b in "$lora" "$bg"; do
    [ -x "$b" ] || { echo "generate.sh: $b is missing (build first: cmake --build $build)" >&2; exit 1; }
done
mkdir -p "$work" || exit 1
py=/usr/bin/python3

log() { echo "$*" >&2; }

# ---- inputs: the model, the adapter, the GGUF ----
model="$work/gpt2-124m"
if [ ! -f "$model/model.safetensors" ]; then
    log "making $model (GPT-2 small, random F32 weights)"
    rm -rf "$model"
    "$lora" init --out "$model" --vocab 50257 --n-layer 12 --n-embd 768 --n-head 12 \
        --n-positions 1024 >/dev/null || exit 1
fi
adapter="$work/lora-qv-r8"
if [ ! -f "$adapter/adapter_model.safetensors" ]; then
    log "making $adapter (LoRA r=8 on q,v)"
    "$bg" adapter "$model" "$adapter" --r 8 >/dev/null || exit 1
fi

# ---- llama.cpp (as tests/interop/check_llama.sh installs it) ----
llama_skip=""
lw="$work/llama"
bins="$lw/npm/node_modules/@node-llama-cpp/linux-x64/bins/linux-x64"
bundle="$lw/npm/node_modules/node-llama-cpp/llama/gitRelease.bundle"
reader="$lw/llama_generate"
gguf="$work/gpt2-124m-f32.gguf"
setup_llama() {
    for tool in node npm git "${CC:-cc}"; do
        command -v "$tool" >/dev/null 2>&1 || { llama_skip="$tool is not installed"; return; }
    done
    if [ ! -f "$bins/libllama.v0.5.0.so" ] || [ ! -f "$bundle" ]; then
        log "installing node-llama-cpp@3.22.1 from npm into $lw/npm"
        mkdir -p "$lw/npm" || { llama_skip="cannot create $lw"; return; }
        [ -f "$lw/npm/package.json" ] || echo '{"private": true}' >"$lw/npm/package.json"
        limit=""
        command -v timeout >/dev/null 2>&1 && limit="timeout 600"
        if ! (cd "$lw/npm" && $limit npm install --ignore-scripts --omit=optional --no-audit \
                  --no-fund --silent --fetch-timeout=60000 --fetch-retries=1 \
                  node-llama-cpp@3.22.1 @node-llama-cpp/linux-x64@3.22.1 >"$lw/npm.log" 2>&1)
        then
            llama_skip="cannot install node-llama-cpp@3.22.1 from the npm registry (see $lw/npm.log)"
            return
        fi
        [ -f "$bins/libllama.v0.5.0.so" ] && [ -f "$bundle" ] || {
            llama_skip="node-llama-cpp@3.22.1 installed without libllama.v0.5.0.so or its git bundle"
            return
        }
    fi
    inc="$lw/include"
    if [ ! -f "$inc/include/llama.h" ] || [ ! -f "$inc/ggml/include/ggml.h" ]; then
        rm -rf "$lw/hdr.git" "$inc"
        mkdir -p "$inc" &&
            git init -q --bare "$lw/hdr.git" &&
            git -C "$lw/hdr.git" fetch -q "$bundle" HEAD &&
            git -C "$lw/hdr.git" archive FETCH_HEAD include/llama.h ggml/include |
            tar -x -C "$inc" || { llama_skip="cannot extract llama.h from $bundle"; return; }
    fi
    if [ ! -x "$reader" ] || [ -n "$(find "$here/llama_generate.c" -newer "$reader")" ]; then
        "${CC:-cc}" -std=c11 -O2 -I"$inc/include" -I"$inc/ggml/include" \
            "$here/llama_generate.c" -o "$reader" -L"$bins" -l:libllama.v0.5.0.so \
            -l:libggml.v0.5.0.so -l:libggml-base.so -Wl,-rpath,"$bins" 2>"$lw/cc.log" || {
            llama_skip="cannot build llama_generate.c against libllama (see $lw/cc.log)"
            return
        }
    fi
    if [ ! -f "$gguf" ]; then
        # the vocabulary is padded to the model's 50257 ids; any BPE tokenizer will do
        "$lora" export gguf --model "$model" --tokenizer "$root/models/default" \
            --out "$gguf" >/dev/null || { llama_skip="lora export gguf failed"; return; }
    fi
}
setup_llama

torch_skip=""
if [ ! -x "$py" ] || ! "$py" -c "import torch" 2>/dev/null; then
    torch_skip="$py has no torch"
fi

# ---- the implementations ----
# name|label|command; run from $root
impls="lorac_base|lora.c base|$bg run $model
lorac_merged|lora.c merged|$bg run $model --adapter $adapter --mode merged
lorac_unmerged|lora.c unmerged|$bg run $model --adapter $adapter --mode unmerged
lorac_passive|lora.c base PASSIVE|env OMP_WAIT_POLICY=PASSIVE $bg run $model"
if [ $transposed -eq 1 ]; then
    impls="$impls
lorac_base_t|lora.c base Wt|$bg run $model --transposed
lorac_merged_t|lora.c merged Wt|$bg run $model --adapter $adapter --mode merged --transposed
lorac_unmerged_t|lora.c unmerged Wt|$bg run $model --adapter $adapter --mode unmerged --transposed"
fi
if [ -z "$torch_skip" ]; then
    impls="$impls
torch|PyTorch 1.13|$py $here/torch_generate.py $model
torch_passive|PyTorch 1.13 PASSIVE|env OMP_WAIT_POLICY=PASSIVE $py $here/torch_generate.py $model"
fi
if [ -z "$llama_skip" ]; then
    impls="$impls
llama|llama.cpp|$reader $bins $gguf"
fi
n_impl=$(echo "$impls" | wc -l)
common="--prompt $n_prompt --new $n_new --threads $threads"

# Every reader starts from the same page cache, and no timed run reads the disk: the model and
# the GGUF are dropped from the cache (GNU dd's nocache flag; their pages are clean), then read
# once in order. Pages written by `lora init` or `lora export` stay in the cache in the small
# folios of the write path, and a mapping of those costs a 4 KiB page walk per page; read back,
# they come in large folios that a mapping covers with few entries.
for f in "$model/model.safetensors" "$gguf"; do
    [ -f "$f" ] || continue
    dd if="$f" iflag=nocache count=0 status=none 2>/dev/null
    dd if="$f" of=/dev/null bs=4M status=none
done

res="$work/results"
rm -rf "$res"
mkdir -p "$res" || exit 1

triad() { # best GB/s, then 4 KiB pages and huge pages on stderr's log
    out=$("$bg" triad --threads "$threads" --reps "$triad_reps") || return 1
    log "  $out"
    echo "$out" | sed 's/.*triad_4k_gbs=\([0-9.]*\) triad_huge_gbs=\([0-9.]*\).*/\1 \2/'
}
load_start=$(cut -d' ' -f1-3 /proc/loadavg 2>/dev/null || echo "?")
log "triad bandwidth ($threads threads)"
tr1=$(triad) || exit 1

r=0
while [ $r -lt "$rounds" ]; do
    i=0
    while [ $i -lt "$n_impl" ]; do
        line=$(echo "$impls" | sed -n "$(( (r + i) % n_impl + 1 ))p")
        name=${line%%|*}
        rest=${line#*|}
        label=${rest%%|*}
        cmd=${rest#*|}
        log "round $((r + 1))/$rounds: $label"
        # the bandwidth of this moment: a short triad right before the run, kept with its result
        adj=$("$bg" triad --threads "$threads" --reps 3 --mib 128 2>>"$res/$name.err" |
              sed -n 's/^triad_gbs=\([0-9.]*\).*/\1/p')
        # shellcheck disable=SC2086
        if out=$(cd "$root" && $cmd $common 2>>"$res/$name.err"); then
            echo "$out triad_adj_gbs=${adj:-0}" >>"$res/$name.txt"
        else
            log "  $label failed: $(tail -2 "$res/$name.err")"
        fi
        i=$((i + 1))
    done
    r=$((r + 1))
done

tr2=$(triad) || exit 1
load_end=$(cut -d' ' -f1-3 /proc/loadavg 2>/dev/null || echo "?")
# the best of both measurements, per page size; the bound uses the higher of the two sizes
set -- $tr1 $tr2
bw4k=$(awk -v a="$1" -v b="$3" 'BEGIN { print (a > b ? a : b) }')
bwhuge=$(awk -v a="$2" -v b="$4" 'BEGIN { print (a > b ? a : b) }')
bw=$(awk -v a="$bw4k" -v b="$bwhuge" 'BEGIN { print (a > b ? a : b) }')
bytes=$("$bg" bytes "$model" | sed 's/.*bytes_per_token=\([0-9]*\).*/\1/')

# ---- the table ----
# per implementation: median / min / max of decode, median prefill, tokens of the first run
stats() { # FILE KEY -> "median min max n"
    sed -n "s/.*$2=\([0-9.]*\).*/\1/p" "$1" | sort -g |
        awk '{ v[NR] = $1 } END {
            if (NR == 0) { print "- - - 0"; exit }
            m = NR % 2 ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2
            print m, v[1], v[NR], NR }'
}
tokens() { sed -n '1s/.*tokens=\([0-9,]*\).*/\1/p' "$1" 2>/dev/null; }
# median over the runs of decode tokens/s ÷ the bound from the triad taken just before each run
adjratio() { # FILE -> ratio, or -
    awk -v by="$bytes" '{
        d = ""; t = ""
        for (i = 1; i <= NF; i++) {
            if ($i ~ /^decode_tps=/) d = substr($i, 12)
            if ($i ~ /^triad_adj_gbs=/) t = substr($i, 15)
        }
        if (d != "" && t + 0 > 0) print d / (t * 1e9 / by)
    }' "$1" | sort -g | awk '{ v[NR] = $1 } END {
        if (NR == 0) { print "-"; exit }
        printf "%.3f", NR % 2 ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2 }'
}
agree() { # TOKENS_A TOKENS_B -> count of equal leading tokens
    echo "$1 $2" | awk '{ n = split($1, a, ","); split($2, b, ",")
        for (i = 1; i <= n && a[i] == b[i]; i++); print i - 1 "/" n }'
}
dec() { stats "$res/$1.txt" decode_tps 2>/dev/null | cut -d' ' -f1; }
base_tps=$(dec lorac_base)
llama_tps=$( [ -f "$res/llama.txt" ] && dec llama || echo -)
t1=$( [ -f "$res/torch.txt" ] && dec torch || echo -)
t2=$( [ -f "$res/torch_passive.txt" ] && dec torch_passive || echo -)
torch_tps=$(awk -v a="$t1" -v b="$t2" 'BEGIN {
    if (a == "-" && b == "-") print "-"; else if (b == "-" || (a != "-" && a + 0 >= b + 0)) print a; else print b }')
bound=$(awk -v bw="$bw" -v by="$bytes" 'BEGIN { printf "%.2f", bw * 1e9 / by }')

echo
echo "Greedy generation, GPT-2 small (124M, F32), batch 1, prompt $n_prompt, $n_new new tokens,"
echo "KV cache, $threads threads; $rounds round(s) interleaved; median (min-max) of the rounds."
echo "machine: $(nproc) cores; load average $load_start at the start, $load_end at the end"
echo "bandwidth bound: $bytes bytes/token (4·(L·(C·3C + C·C + 2·C·F) + V·C)) / triad $bw GB/s"
echo "  = $bound tokens/s (triad on $threads threads: $bw4k GB/s on 4 KiB pages, $bwhuge GB/s on huge pages)"
printf '%-22s %9s %9s %-17s %7s %7s %7s %7s %7s %8s\n' implementation prefill decode "(min-max)" \
    "/bound" "/adj" "/base" "/llama" "/torch" agree
printf '%-22s %9s %9s %-17s %7s %7s %7s %7s %7s %8s\n' "" "tok/s" "tok/s" "" "" "" "" "" "" ""
base_tok=$(tokens "$res/lorac_base.txt")
echo "$impls" | while IFS='|' read -r name label cmd; do
    f="$res/$name.txt"
    # shellcheck disable=SC2046
    set -- $(stats "$f" decode_tps)
    med=$1 lo=$2 hi=$3 n=$4
    pre=$(stats "$f" prefill_tps | cut -d' ' -f1)
    if [ "$n" = 0 ]; then
        printf '%-22s %9s %9s %s\n' "$label" - - "(failed: see $res/$name.err)"
        continue
    fi
    ref=$base_tok
    [ "$name" = lorac_merged ] && ref=$(tokens "$res/lorac_unmerged.txt")
    [ "$name" = lorac_unmerged ] && ref=$(tokens "$res/lorac_merged.txt")
    [ "$name" = lorac_merged_t ] && ref=$(tokens "$res/lorac_merged.txt")
    [ "$name" = lorac_unmerged_t ] && ref=$(tokens "$res/lorac_unmerged.txt")
    ag=$(agree "$(tokens "$f")" "$ref")
    adj=$(adjratio "$f")
    awk -v l="$label" -v p="$pre" -v m="$med" -v lo="$lo" -v hi="$hi" -v bd="$bound" \
        -v adj="$adj" -v b="$base_tps" -v ll="$llama_tps" -v t="$torch_tps" -v ag="$ag" 'BEGIN {
        r = sprintf("(%.1f-%.1f)", lo, hi)
        printf "%-22s %9.1f %9.2f %-17s %7.3f %7s %7s %7s %7s %8s\n", l, p, m, r, m / bd, adj,
            (b == "-" || b == "") ? "-" : sprintf("%.3f", m / b),
            ll == "-" ? "-" : sprintf("%.3f", m / ll),
            t == "-" ? "-" : sprintf("%.3f", m / t), ag }'
done
[ $transposed -eq 1 ] && echo "Wt: with the decoder's transposed weights (--transposed)"
[ -n "$torch_skip" ] && echo "PyTorch: skipped ($torch_skip)"
[ -n "$llama_skip" ] && echo "llama.cpp: skipped ($llama_skip)"
echo "/bound: against the best triad of the run; /adj: median over the rounds of decode tokens/s"
echo "against the bound from a short triad (3 x 128 MiB, best of 3) taken just before that run"
echo "/torch is against the faster PyTorch row ($torch_tps tokens/s); raw results in $res"
exit 0
