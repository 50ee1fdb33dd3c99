"""Every corpus config, every case: nginx and fastterm must agree, or the allow-list says why not.

Tests, in corpus order (``conftest.py`` keeps each config's tests together, so its nginx +
fastterm pair starts once):

- ``test_fastterm_starts[CONFIG]``: fastterm takes the config (``run --nginx``); when it
  does not, this fails with fastterm's message and the config's cases are skipped;
- ``test_case[CONFIG:CASE]``: the case on both, every differing field is allow-listed
  (``allowlist.py``) or a known bug (``known_bugs.py``), else the test fails listing them;
- ``test_known_bug[NAME]``: a known bug's witness case; fails while the bug is there;
- ``test_check_names_unsupported[CONFIG]``: for a config marked ``# diff: unsupported``
  (features of other issues), ``fastterm check --nginx`` names one of those directives at
  its file:line and none other (it stops at the first error, like nginx -t) and exits 1;
  the config's cases run against nginx alone.
"""

from __future__ import annotations

import re
import subprocess

import diffharness as dh
import pytest
from allowlist import ALLOWED, UNSUPPORTED
from cases import cases_for
from known_bugs import BUGS

CORPUS = dh.load_corpus()
BY_NAME = {cfg.name: cfg for cfg in CORPUS}
CASES = {cfg.name: cases_for(cfg) for cfg in CORPUS}


def _compared(diff_session, cfg: dh.CorpusConfig, case: dh.Case, bugs: list) -> list[dh.Difference]:
    pair = diff_session.get(cfg)
    if pair.nginx_error:
        pytest.fail(f"nginx did not start with {cfg.name}: {pair.nginx_error}", pytrace=False)
    if pair.fastterm_error:
        pytest.skip(f"fastterm refused {cfg.name}: see test_fastterm_starts[{cfg.name}]")
    if not pair.fastterm.alive():
        pytest.fail(f"fastterm died:\n{pair.fastterm.log()}", pytrace=False)
    ctx = diff_session.ctx(cfg)
    nginx_obs = dh.case_runner(case, pair.nginx, ctx)
    fastterm_obs = dh.case_runner(case, pair.fastterm, ctx)
    crashed = pair.crashed()
    if crashed:
        pytest.fail(f"fastterm logged a traceback:\n{crashed}", pytrace=False)
    diffs = dh.compare(cfg.name, case.id, nginx_obs, fastterm_obs, ALLOWED, bugs)
    return diffs, nginx_obs, fastterm_obs


@pytest.mark.parametrize("cfg", [pytest.param(c, id=c.name) for c in CORPUS if not c.unsupported])
def test_fastterm_starts(diff_session, cfg: dh.CorpusConfig):
    pair = diff_session.get(cfg)
    if pair.nginx_error:
        pytest.fail(f"nginx did not start with {cfg.name}: {pair.nginx_error}", pytrace=False)
    if pair.fastterm_error:
        emerg = [line for line in pair.fastterm_error.splitlines() if "[emerg]" in line]
        pytest.fail(f"fastterm refused {cfg.name}: " + ("\n".join(emerg) or pair.fastterm_error),
                    pytrace=False)


@pytest.mark.parametrize(("cfg", "case"), [pytest.param(cfg, case, id=f"{cfg.name}:{case.id}")
                                           for cfg in CORPUS for case in CASES[cfg.name]])
def test_case(diff_session, cfg: dh.CorpusConfig, case: dh.Case):
    if cfg.unsupported or dh.NGINX_ONLY:
        pair = diff_session.get(cfg)
        if pair.nginx_error:
            pytest.fail(f"nginx did not start with {cfg.name}: {pair.nginx_error}", pytrace=False)
        assert dh.case_runner(case, pair.nginx, diff_session.ctx(cfg)), "nginx answered nothing"
        return
    diffs, nginx_obs, fastterm_obs = _compared(diff_session, cfg, case, BUGS)
    diff_session.record(cfg.name, case.id, diffs)
    bad = [d for d in diffs if d.allowed_by is None and d.bug is None]
    if bad:
        pytest.fail(dh.format_differences(cfg.name, case.id, bad, nginx_obs, fastterm_obs), pytrace=False)


BUG_NAMES = list(dict.fromkeys(b.name for b in BUGS))


@pytest.mark.parametrize("name", [pytest.param(n, marks=pytest.mark.xfail(
    strict=True, reason="a known bug (known_bugs.py): nginx semantics issue 10 asks for, not built yet"))
    for n in BUG_NAMES])
def test_known_bug(diff_session, name: str):
    """Fails while the bug is there (strict xfail: the day it passes, the suite says so and
    its entries in known_bugs.py go)."""
    entries = [b for b in BUGS if b.name == name]
    witness_cfg, witness_case = entries[0].witness
    cfg = BY_NAME[witness_cfg]
    case = next((c for c in CASES[cfg.name] if c.id == witness_case), None)
    assert case is not None, f"{name}: no case {witness_case!r} in {witness_cfg}"
    diffs, nginx_obs, fastterm_obs = _compared(diff_session, cfg, case, entries)
    still = [d for d in diffs if d.bug is not None]
    if still:
        pytest.fail(f"{name}: {entries[0].reason}\n" + dh.format_differences(
            cfg.name, case.id, still, nginx_obs, fastterm_obs, "from this bug"), pytrace=False)


@pytest.mark.parametrize("cfg", [pytest.param(c, id=c.name) for c in CORPUS if c.unsupported])
def test_check_names_unsupported(diff_session, cfg: dh.CorpusConfig):
    """``fastterm check --nginx`` names the first unsupported directive at its file:line, exit 1."""
    reasons = UNSUPPORTED.get(cfg.name, {})
    assert sorted(reasons) == sorted(cfg.unsupported), (
        f"allowlist.UNSUPPORTED[{cfg.name!r}] must give a reason for exactly {cfg.unsupported}")
    side = dh.prepare("check", cfg, diff_session.base, diff_session.pki, diff_session.backends)
    res = subprocess.run(dh.fastterm_command("check", "--nginx", str(side.conf)), check=False,
                         capture_output=True, text=True, timeout=60, env=dh.fastterm_env(), cwd=side.run)
    out = res.stdout + res.stderr
    if res.returncode == 0:
        pytest.fail(f"fastterm now accepts {cfg.name}: drop its `# diff: unsupported` line and the "
                    f"allowlist.UNSUPPORTED entry, so that its cases are compared\n{out}", pytrace=False)
    assert res.returncode == 1, out
    # `FILE:LINE: "DIRECTIVE [ARGS]" is not supported yet[: why]`, the first error, like nginx -t
    named = re.findall(r'^fastterm: \[emerg\] (\S+):(\d+): "([a-z0-9_]+)[^"]*" is not supported yet', out,
                       re.MULTILINE)
    assert named, out
    for path, line, directive in named:
        assert directive in cfg.unsupported, (directive, out)
        assert path == str(side.conf), out
        assert int(line) - dh.SNIPPET_OFFSET in dh.directive_lines(cfg.text, directive), out
