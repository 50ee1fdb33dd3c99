"""Configuration: every front-end (``toml.py``, ``nginx.py``) reads its file into the one model
(``model.py``); ``ConfigSource`` is the one way in, for the CLI and for the master's reloads."""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

if TYPE_CHECKING:
    from fastterm.config.model import Config

Format = Literal["toml", "nginx"]
_FRONT_ENDS: dict[str, str] = {"toml": "fastterm.config.toml", "nginx": "fastterm.config.nginx"}


def _quiet(message: str, level: str = "warn") -> None:
    """Where warnings go when nobody listens."""


@dataclass(frozen=True)
class ConfigSource:
    """A configuration file and the front-end that reads it (``-c FILE`` or ``--nginx FILE``)."""

    path: str
    format: Format = "toml"

    def load(self, warn: Callable[..., None] = _quiet) -> Config:
        """Read, map and validate the file; ``ConfigError`` names file:line. ``warn(message,
        level="warn"|"notice")`` hears what is accepted with a warning (nginx directives
        without effect on fastterm)."""
        from fastterm.certs.acme import attach

        module = importlib.import_module(_FRONT_ENDS[self.format])
        if self.format == "toml":
            return attach(module.load_config(self.path))
        return attach(module.load_config(self.path, warn))

    @property
    def toml_path(self) -> str | None:
        """The file ``plan.build`` may read back for TOML key lines (None for nginx)."""
        return self.path if self.format == "toml" else None

    @property
    def flag(self) -> str:
        """How the command line names it: ``-c FILE`` or ``--nginx FILE``."""
        return "-c" if self.format == "toml" else "--nginx"


def load(path: str, fmt: Format = "toml", warn: Callable[..., None] = _quiet) -> Config:
    return ConfigSource(path, fmt).load(warn)
