#!/usr/bin/env python3
"""(Re)write the seed corpus bench/fuzz/corpus/TARGET/NAME from each target's ``seeds()``:
the framing test corpus (tests/unit/test_http_framing.py) and real ClientHellos."""

from __future__ import annotations

import importlib
import shutil
import sys

from run import HERE, ROOT, TARGETS


def main() -> int:
    sys.path[:0] = [str(HERE), str(ROOT)]
    for name in sys.argv[1:] or TARGETS:
        seeds = importlib.import_module(name).seeds()
        folder = HERE / "corpus" / name
        shutil.rmtree(folder, ignore_errors=True)
        folder.mkdir(parents=True)
        for seed, data in seeds.items():
            (folder / seed).write_bytes(data)
        print(f"{folder.relative_to(ROOT)}: {len(seeds)} seeds, {sum(map(len, seeds.values()))} bytes")
    return 0


if __name__ == "__main__":
    sys.exit(main())
