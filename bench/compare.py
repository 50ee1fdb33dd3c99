#!/usr/bin/env python3
"""Kept for the commands that name it: ``python bench/compare.py ARGS`` is ``fastterm bench ARGS``.

The comparison grew into the user-facing command (the ``fastterm.bench`` package): the same pinned,
interleaved nginx-vs-fastterm runs per CPU-second, plus HAProxy, resumption, upload, latency
and idle-connection memory. See ``fastterm bench --help``.
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from fastterm.cli import main

if __name__ == "__main__":
    sys.exit(main(["bench", *sys.argv[1:]]))
