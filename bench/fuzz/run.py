#!/usr/bin/env python3
"""Run one fuzz target (or ``all``) under atheris (libFuzzer); flags go to libFuzzer.

    bench/fuzz/run.py TARGET [-runs=N] [-seed=S] [libFuzzer flags] [INPUT_FILE...]
    bench/fuzz/run.py --asan TARGET ...   the clang/ASan build from bench/fuzz/build.sh

Targets: request_head, response_head, chunked (ext/http.pyx), tls_server (ext/tls.pyx).
Without --asan the target runs on the extension that ``import fastterm._core`` finds (the
normal build: no native coverage feedback, what CI's short run uses). With --asan the
script re-executes itself with build/fuzz's libFuzzer+ASan runtime preloaded and imports
the instrumented extension from build/fuzz/asan; the normal build is left alone.
New inputs go to build/fuzz/corpus/TARGET (--corpus-out), never into the committed seeds
under bench/fuzz/corpus/TARGET; a crash is written to bench/fuzz/crashes/TARGET-crash-*.
Given INPUT_FILEs, libFuzzer runs just those (a reproducer).
"""

from __future__ import annotations

import argparse
import importlib
import os
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent
BUILD = Path(os.environ.get("FASTTERM_FUZZ_BUILD", ROOT / "build" / "fuzz"))
RUNTIME = BUILD / "rt" / "asan_with_fuzzer.so"
TARGETS = ("request_head", "response_head", "chunked", "tls_server")
# The 16 KiB request header buffer is the product's default (README "Defaults").
MAX_LEN = {"request_head": 16384, "response_head": 16384, "chunked": 8192, "tls_server": 8192}


def asan_env() -> dict:
    env = dict(os.environ)
    env["LD_PRELOAD"] = str(RUNTIME)
    # CPython keeps memory alive at exit; PYTHONMALLOC=malloc puts every bytes object the
    # parsers read under ASan's redzones (pymalloc would hide small overruns).
    env["ASAN_OPTIONS"] = env.get("ASAN_OPTIONS", "detect_leaks=0")
    env["PYTHONMALLOC"] = "malloc"
    env["FASTTERM_FUZZ_ASAN_CHILD"] = "1"
    return env


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("target", choices=TARGETS + ("all",))
    parser.add_argument("--asan", action="store_true", help="use the instrumented ASan build (build.sh)")
    parser.add_argument("--corpus-out", type=Path, help="where new inputs go (default build/fuzz/corpus/TARGET)")
    args, rest = parser.parse_known_args()
    if args.target == "all":
        for target in TARGETS:
            cmd = [sys.executable, __file__, target, *(["--asan"] if args.asan else []), *rest]
            if args.corpus_out:
                cmd += ["--corpus-out", str(args.corpus_out / target)]
            print(f"run.py: {target}", file=sys.stderr, flush=True)
            rc = subprocess.run(cmd, check=False).returncode
            if rc:
                return rc
        return 0
    if args.asan and not os.environ.get("FASTTERM_FUZZ_ASAN_CHILD"):
        if not RUNTIME.exists():
            sys.exit(f"run.py: {RUNTIME} missing: run bench/fuzz/build.sh first")
        os.execve(sys.executable, [sys.executable, __file__, *sys.argv[1:]], asan_env())

    import atheris

    import fastterm

    if args.asan:
        fastterm.__path__.insert(0, str(BUILD / "asan" / "fastterm"))
    sys.path[:0] = [str(HERE), str(ROOT)]
    core = importlib.import_module("fastterm._core")
    print(f"run.py: {args.target} on {core.__file__}", file=sys.stderr, flush=True)
    if args.asan and not core.__file__.startswith(str(BUILD)):
        sys.exit("run.py: the instrumented extension was not imported")
    target = importlib.import_module(args.target)

    crashes = HERE / "crashes"
    crashes.mkdir(exist_ok=True)
    flags = [f"-max_len={MAX_LEN[args.target]}", "-timeout=10", f"-artifact_prefix={crashes}/{args.target}-"]
    if not any(not a.startswith("-") for a in rest):
        out = args.corpus_out or BUILD / "corpus" / args.target
        out.mkdir(parents=True, exist_ok=True)
        rest = rest + [str(out), str(HERE / "corpus" / args.target)]
    atheris.Setup([sys.argv[0], *flags, *rest], target.one_input)
    atheris.Fuzz()
    return 0


if __name__ == "__main__":
    sys.exit(main())
