"""``python -m fastterm``: the same as the ``fastterm`` console script."""

import sys

from fastterm.cli import main

sys.exit(main())
