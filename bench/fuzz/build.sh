#!/usr/bin/env bash
# Build what `bench/fuzz/run.py --asan` runs, beside the normal build (which stays as it is):
#   build/fuzz/asan/fastterm/_core*.so   the extension by clang, -fsanitize=address,fuzzer-no-link
#                                        (setup.py's FASTTERM_FUZZ=1 + FASTTERM_ASAN=1)
#   build/fuzz/rt/asan_with_fuzzer.so    clang's ASan runtime with its libFuzzer linked in, to
#                                        LD_PRELOAD (atheris's native_extension_fuzzing.md, option A)
# The wheel of atheris ships no such runtime; merging clang's own two archives (as atheris's
# setup_utils/merge_libfuzzer_sanitizer.sh does) keeps libFuzzer and the instrumentation of one
# LLVM version. Needs clang and compiler-rt: installed with apt when run as root.
# Environment: FASTTERM_FUZZ_BUILD (default build/fuzz), PYTHON (default .venv/bin/python).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "$ROOT"
OUT="${FASTTERM_FUZZ_BUILD:-$ROOT/build/fuzz}"
PY="${PYTHON:-$ROOT/.venv/bin/python}"
say() { printf 'fuzz build: %s\n' "$*" >&2; }

rt_dir() { echo "$(clang -print-resource-dir)/lib/linux"; }
have_toolchain() {
    command -v clang >/dev/null 2>&1 && [ -e "$(rt_dir)/libclang_rt.fuzzer_no_main-x86_64.a" ] \
        && [ -e "$(rt_dir)/libclang_rt.asan-x86_64.a" ]
}
if ! have_toolchain; then
    [ "$(id -u)" = 0 ] || { say "missing clang/compiler-rt: apt-get install -y clang libclang-rt-dev"; exit 1; }
    say "apt-get install clang libclang-rt-dev"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends clang libclang-rt-dev
fi
RT="$(rt_dir)"

mkdir -p "$OUT"
say "extension -> $OUT/asan ($(clang --version | head -1))"
FASTTERM_FUZZ=1 FASTTERM_ASAN=1 "$PY" setup.py -q build_ext --force -b "$OUT/asan" -t "$OUT/tmp-asan" \
    >"$OUT/build.log" 2>&1 || { tail -30 "$OUT/build.log" >&2; exit 1; }

say "runtime -> $OUT/rt/asan_with_fuzzer.so"
mkdir -p "$OUT/rt"
cp "$RT/libclang_rt.asan-x86_64.a" "$OUT/rt/asan.a"
# ASan's preinit object registers its init in .preinit_array, which a shared object may not have.
ar d "$OUT/rt/asan.a" asan_preinit.cpp.o
clang++ -shared -o "$OUT/rt/asan_with_fuzzer.so" -Wl,--whole-archive "$RT/libclang_rt.fuzzer_no_main-x86_64.a" \
    "$OUT/rt/asan.a" -Wl,--no-whole-archive -lpthread -ldl
rm "$OUT/rt/asan.a"
say "ready: bench/fuzz/run.py --asan TARGET"
