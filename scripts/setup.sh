#!/bin/sh
# Installs lora.c's dependencies (Debian 12, as root) and builds it into build/.
# Idempotent: packages already present are left alone; the build is incremental.
set -eu
cd "$(dirname "$0")/.."
pkgs="build-essential cmake pkg-config libopenblas-openmp-dev libcjson-dev libpcre2-dev
      gnuplot-nox python3-torch python3-numpy python3-nltk"
missing=""
for p in $pkgs; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing="$missing $p"
done
# node and npm (test references only) may come from elsewhere than Debian: any will do
command -v node >/dev/null 2>&1 || missing="$missing nodejs"
command -v npm >/dev/null 2>&1 || missing="$missing npm"
if [ -n "$missing" ]; then
    echo "installing:$missing" >&2
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -q >&2
    # shellcheck disable=SC2086
    apt-get install -y -q --no-install-recommends $missing >&2
fi
cmake -S . -B build -DCMAKE_BUILD_TYPE=Release ${LORA_CMAKE_FLAGS:-} >/dev/null
cmake --build build -j2
