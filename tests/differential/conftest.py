"""Differential fixtures: one PKI, one set of echo backends, one nginx + fastterm pair at a time.

Cases are collected in corpus order, so the pair for a config is started once, serves all of
that config's cases, and is stopped when the first case of the next config asks for its own
(``Pairs.get``). A pair that failed to start fails each of its cases with the same message.
Everything runs under one ``/tmp`` directory (mode 0755: nginx runs as nobody when the
suite runs as root), removed at the end.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import diffharness as dh
import pytest

HERE = Path(__file__).resolve().parent


@dataclass
class Pair:
    config: dh.CorpusConfig
    nginx: dh.Side | None = None
    fastterm: dh.Side | None = None
    nginx_error: str | None = None
    fastterm_error: str | None = None

    def stop(self) -> None:
        for side in (self.nginx, self.fastterm):
            if side is not None:
                side.stop()

    def crashed(self) -> str | None:
        """fastterm's log when it shows a traceback (DESIGN "Errors": never a worker crash)."""
        if self.fastterm is not None and "Traceback (most recent call last)" in self.fastterm.log():
            return self.fastterm.log()
        return None


@dataclass
class Session:
    base: Path
    pki: dh.PKI
    backends: dh.Backends
    current: Pair | None = None
    compared: int = 0
    configs: set[str] = field(default_factory=set)
    allowed: dict[str, list[str]] = field(default_factory=dict)   # reason -> ["config / case / field"]
    bugs: dict[str, int] = field(default_factory=dict)            # known bug -> differences it covered
    failed: list[str] = field(default_factory=list)

    used: set[int] = field(default_factory=set)                   # id() of allow-list entries that matched

    def record(self, config: str, case: str, diffs: list) -> None:
        self.compared += 1
        self.configs.add(config)
        for d in diffs:
            if d.allowed_by is not None:
                self.used.add(id(d.allowed_by))
                self.allowed.setdefault(d.allowed_by.reason, []).append(f"{config} / {case} / {d.field}")
            elif d.bug is not None:
                self.bugs[d.bug.name] = self.bugs.get(d.bug.name, 0) + 1
            else:
                self.failed.append(f"{config}:{case}")

    def get(self, config: dh.CorpusConfig, *, fastterm: bool = True) -> Pair:
        if self.current is not None and self.current.config.name == config.name:
            return self.current
        if self.current is not None:
            self.current.stop()
        pair = self.current = Pair(config)
        nginx_text = None
        if config.nginx_config:
            nginx_text = (dh.CONFIGS / config.nginx_config).read_text()
        pair.nginx = dh.prepare("nginx", config, self.base, self.pki, self.backends, nginx_text)
        try:
            dh.start(pair.nginx)
        except RuntimeError as exc:
            pair.nginx_error = str(exc)
        if fastterm and not config.unsupported and not dh.NGINX_ONLY:
            pair.fastterm = dh.prepare("fastterm", config, self.base, self.pki, self.backends)
            try:
                dh.start(pair.fastterm)
            except RuntimeError as exc:
                pair.fastterm_error = str(exc)
        return pair

    def ctx(self, config: dh.CorpusConfig) -> dh.Ctx:
        return dh.Ctx(self.pki, self.backends, config)


@pytest.fixture(scope="session")
def diff_session():
    base = Path(tempfile.mkdtemp(prefix="fastterm-diff-"))
    os.chmod(base, 0o755)   # nginx (as nobody) reads certificates and writes logs below it
    pki = dh.make_pki(base / "certs")
    backends = dh.Backends(pki)
    session = Session(base, pki, backends)
    try:
        yield session
    finally:
        if session.current is not None:
            session.current.stop()
        backends.close()
        shutil.rmtree(base, ignore_errors=True)


_ORDER = {"test_fastterm_starts": 0, "test_check_names_unsupported": 0, "test_case": 1, "test_known_bug": 2}


def _sort_key(item):
    """(corpus position of the item's config, kind): each config's tests together."""
    import test_diff_corpus as t

    params = getattr(item, "callspec", None)
    params = params.params if params else {}
    if "cfg" in params:
        name = params["cfg"].name
    elif "name" in params:
        name = next((b.witness[0] for b in t.BUGS if b.name == params["name"]), "")   # none: pytest's empty set
    else:
        name = ""
    names = [c.name for c in t.CORPUS]
    return (names.index(name) if name in names else len(names), _ORDER.get(item.originalname, 3))


def pytest_collection_modifyitems(config, items):
    slots = [i for i, item in enumerate(items) if Path(str(item.fspath)).resolve().is_relative_to(HERE)]
    ours = sorted((items[i] for i in slots), key=_sort_key)
    for i, item in zip(slots, ours, strict=True):
        item.add_marker(pytest.mark.differential)
        items[i] = item


_SESSION_REF: list[Session] = []


@pytest.fixture(scope="session", autouse=True)
def _remember(diff_session):
    _SESSION_REF.append(diff_session)
    yield


def pytest_terminal_summary(terminalreporter):
    if not _SESSION_REF:
        return
    s = _SESSION_REF[0]
    tr = terminalreporter
    tr.section("differential: nginx vs fastterm")
    tr.write_line(f"{len(s.configs)} configs, {s.compared} cases compared, "
                  f"{sum(len(v) for v in s.allowed.values())} allow-listed differences, "
                  f"{sum(s.bugs.values())} differences from known bugs, "
                  f"{len(set(s.failed))} cases with other differences")
    for reason, where in sorted(s.allowed.items()):
        tr.write_line(f"  allowed x{len(where)}: {reason}")
    for name, n in sorted(s.bugs.items()):
        tr.write_line(f"  known bug x{n}: {name}")
    from allowlist import ALLOWED

    unused = [e for e in ALLOWED if id(e) not in s.used]
    if unused and s.compared:
        tr.write_line("  allow-list entries no compared case needed (stale, or outside this selection):")
        for e in unused:
            tr.write_line(f"    {e.field} [{e.config if isinstance(e.config, str) else 'configs...'} / {e.case}]")
