"""``python -m fastterm.bench ARGS`` is ``fastterm bench ARGS``; ``python -m fastterm.bench
client KIND ...`` runs one load generator (see ``fastterm.bench.clients``)."""

import argparse
import sys

import fastterm.bench
from fastterm.bench import add_arguments, main
from fastterm.bench.clients import client_main

if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "client":
        sys.exit(client_main(sys.argv[2:]))
    _parser = argparse.ArgumentParser(prog="python -m fastterm.bench",
                                      description=fastterm.bench.__doc__.split("\n\n")[0])
    add_arguments(_parser)
    sys.exit(main(_parser.parse_args()))
