#!/bin/sh
# The test suite: installs dependencies, builds (warnings are errors), runs every ctest test,
# then rebuilds with AddressSanitizer + UndefinedBehaviorSanitizer and runs the suite again.
set -eu
cd "$(dirname "$0")/.."
LORA_CMAKE_FLAGS="-DLORA_WERROR=ON" sh scripts/setup.sh
ctest --test-dir build --output-on-failure -j2
cmake -S . -B build-asan -DCMAKE_BUILD_TYPE=RelWithDebInfo -DLORA_SANITIZE=ON -DLORA_WERROR=ON >/dev/null
cmake --build build-asan -j2
ASAN_OPTIONS=detect_leaks=1 UBSAN_OPTIONS=print_stacktrace=1 \
    ctest --test-dir build-asan --output-on-failure -j2 -LE slow
