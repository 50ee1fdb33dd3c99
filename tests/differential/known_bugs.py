"""Differences this suite found that are fastterm bugs: nginx semantics that issue 10 asks the
nginx front-end to reproduce ("nginx semantics to reproduce", "The subset"), which fastterm
does not yet. Several are listed in ``fastterm/config/nginx.py`` RUNTIME_DIFFERENCES: written
down there, but not deliberate choices the issue accepts, so they are bugs here, not allow-list
entries.

Each name is one failing test, ``test_known_bug[NAME]``: it runs the name's witness case
(config + case id) on both servers and fails while the entry's fields differ there. The same
entries keep those differences from failing every other case they show up in, so that a new
difference stands out as its own failure instead of drowning among hundreds. When the fix
lands, ``test_known_bug[NAME]`` passes: delete the entries, and every case is compared on those
fields again.

Entries match like allow-list entries (``field``, ``config``, ``case``, ``nginx``,
``fastterm``, ``when``); keep them as narrow as the bug.
"""

from __future__ import annotations

from dataclasses import dataclass

from allowlist import Allowed


@dataclass(frozen=True)
class Bug(Allowed):
    name: str = ""
    witness: tuple[str, str] = ("", "")   # (config stem, case id)


BUGS: list[Bug] = []
