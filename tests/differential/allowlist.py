"""The differences between nginx and fastterm that are known and accepted, each with its reason.

The rule: every field that differs between nginx and fastterm on a case fails that case's
test, unless an entry here covers it. An entry names the field (an ``fnmatch`` pattern over
the observation's field names, e.g. ``backend.header:connection``), optionally narrows it
to configs and cases (patterns over the config's file stem and the case id), to responses
the proxy generated itself (``generated=True``: no backend saw a request, on either side),
and to the exact values each side showed (``nginx=`` / ``fastterm=``; ``ANY`` matches
anything, ``None`` means the field was absent). It must say why the difference is right,
or which issue will remove it.

A difference that is a fastterm bug does not belong here: it stays a failing test.

``UNSUPPORTED`` lists, per corpus config, why a directive it carries is not supported yet
(the test asserts ``fastterm check --nginx`` names it with file:line); an entry goes when
the feature lands, and the config's ``# diff: unsupported`` line with it.
"""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass


class _Any:
    def __repr__(self) -> str:
        return "ANY"


ANY = _Any()


@dataclass(frozen=True)
class Allowed:
    field: str
    reason: str
    config: str = "*"
    case: str = "*"
    generated: bool | None = None
    nginx: object = ANY
    fastterm: object = ANY

    def covers(self, config: str, case: str, field: str, nginx_value, fastterm_value,
               generated: bool) -> bool:
        if not (fnmatch.fnmatchcase(field, self.field) and fnmatch.fnmatchcase(config, self.config)
                and fnmatch.fnmatchcase(case, self.case)):
            return False
        if self.generated is not None and self.generated != generated:
            return False
        for want, got in ((self.nginx, nginx_value), (self.fastterm, fastterm_value)):
            if want is not ANY and want != got:
                return False
        return True


ALLOWED: list[Allowed] = [
]


# config stem -> directive -> why it is not supported yet (and where it lands).
UNSUPPORTED: dict[str, dict[str, str]] = {
    "seed_api": {
        "ssl_stapling": "OCSP stapling lands with the certificates issue (#11)",
        "ssl_stapling_verify": "OCSP stapling lands with the certificates issue (#11)",
    },
}
