"""Builds ext/ (one Cython module, ``fastterm._core``) against the system OpenSSL and libnghttp2.

Like uvloop, ``ext/_core.pyx`` includes the per-topic .pyx files so cdef calls
between the TLS engine, the HTTP framing and the proxy stay C calls.
Switches (environment): FASTTERM_DEBUG=1 (asserts, -O0 -g), FASTTERM_ASAN=1,
FASTTERM_ANNOTATE=1 (Cython HTML annotation), FASTTERM_FUZZ=1 (clang with libFuzzer's
coverage instrumentation for atheris; built beside the normal extension with
``build_ext -b DIR``, never in place: see bench/fuzz/build.sh).
"""

import os
import shlex
import subprocess

from Cython.Build import cythonize
from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext


def pkg_config(*args):
    try:
        out = subprocess.run(["pkg-config", *args, "openssl", "libnghttp2"], check=True, capture_output=True,
                             text=True)
    except (OSError, subprocess.CalledProcessError):
        return None
    return shlex.split(out.stdout)


cflags = pkg_config("--cflags") or []
libs = pkg_config("--libs") or ["-lssl", "-lcrypto", "-lnghttp2"]
extra_compile = ["-O2", "-Wno-unused-function", "-Wno-deprecated-declarations"] + cflags
extra_link = list(libs)
macros = [("OPENSSL_API_COMPAT", "0x30000000L"), ("OPENSSL_SUPPRESS_DEPRECATED", None)]
if os.environ.get("FASTTERM_DEBUG"):
    extra_compile += ["-O0", "-g3"]
if os.environ.get("FASTTERM_ASAN"):
    extra_compile += ["-fsanitize=address", "-fno-omit-frame-pointer", "-g"]
    extra_link += ["-fsanitize=address"]
if os.environ.get("FASTTERM_FUZZ"):
    # -fsanitize=fuzzer-no-link: sancov counters and comparison hooks that atheris's
    # libFuzzer reads; libFuzzer itself comes at run time (LD_PRELOAD, bench/fuzz/run.py).
    os.environ.setdefault("CC", "clang")
    extra_compile += ["-fsanitize=fuzzer-no-link", "-fno-omit-frame-pointer", "-g"]
    extra_link += ["-fsanitize=fuzzer-no-link"]


class BuildExt(build_ext):
    def finalize_options(self):
        super().finalize_options()
        if os.environ.get("FASTTERM_FUZZ") and self.inplace:
            # An instrumented fastterm/_core.so in place would break every normal import
            # (its sancov symbols resolve only under libFuzzer).
            raise SystemExit("FASTTERM_FUZZ=1: build with `build_ext -b DIR` (bench/fuzz/build.sh), not in place")


ext = Extension(
    "fastterm._core",
    ["fastterm/_core.pyx"],
    include_dirs=["ext", "ext/includes"],
    extra_compile_args=extra_compile,
    extra_link_args=extra_link,
    define_macros=macros,
)

setup(
    cmdclass={"build_ext": BuildExt},
    ext_modules=cythonize(
        [ext],
        language_level=3,
        annotate=bool(os.environ.get("FASTTERM_ANNOTATE")),
        compiler_directives={
            "boundscheck": False,
            "wraparound": False,
            "cdivision": True,
            "embedsignature": True,
        },
        include_path=["ext"],
    )
)
