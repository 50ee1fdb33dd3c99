"""Every corpus config, every case: nginx and fastterm must agree, or the allow-list says why not.

One test per (config, case); its id is ``CONFIG:CASE``. A config marked
``# diff: unsupported`` gets ``test_check_names_unsupported`` instead of comparisons, and
its cases run against nginx alone (the config stays a working nginx config until fastterm
catches up).
"""

from __future__ import annotations

import re
import subprocess

import diffharness as dh
import pytest
from allowlist import ALLOWED, UNSUPPORTED
from cases import cases_for

CORPUS = dh.load_corpus()
PARAMS = [pytest.param(cfg, case, id=f"{cfg.name}:{case.id}") for cfg in CORPUS for case in cases_for(cfg)]


@pytest.mark.parametrize(("cfg", "case"), PARAMS)
def test_case(diff_session, cfg: dh.CorpusConfig, case: dh.Case):
    pair = diff_session.get(cfg)
    if pair.nginx_error:
        pytest.fail(f"nginx did not start with {cfg.name}: {pair.nginx_error}", pytrace=False)
    ctx = diff_session.ctx(cfg)
    nginx_obs = dh.case_runner(case, pair.nginx, ctx)
    if cfg.unsupported or dh.NGINX_ONLY:
        assert nginx_obs, "nginx answered nothing"
        return
    if pair.fastterm_error:
        pytest.fail(f"fastterm did not start with {cfg.name}: {pair.fastterm_error}", pytrace=False)
    if not pair.fastterm.alive():
        pytest.fail(f"fastterm died:\n{pair.fastterm.log()}", pytrace=False)
    fastterm_obs = dh.case_runner(case, pair.fastterm, ctx)
    diff_session.compared += 1
    diff_session.configs.add(cfg.name)
    diffs = dh.compare(cfg.name, case.id, nginx_obs, fastterm_obs, ALLOWED)
    for d in diffs:
        if d.allowed_by is not None:
            diff_session.allowed.setdefault(d.allowed_by.reason, []).append(f"{cfg.name} / {case.id} / {d.field}")
    bad = [d for d in diffs if d.allowed_by is None]
    crashed = pair.crashed()
    if crashed:
        pytest.fail(f"fastterm logged a traceback:\n{crashed}", pytrace=False)
    if bad:
        diff_session.failed.append(f"{cfg.name}:{case.id}")
        pytest.fail(dh.format_differences(cfg.name, case.id, bad, nginx_obs, fastterm_obs), pytrace=False)


UNSUPPORTED_CONFIGS = [pytest.param(cfg, id=cfg.name) for cfg in CORPUS if cfg.unsupported]


@pytest.mark.parametrize("cfg", UNSUPPORTED_CONFIGS)
def test_check_names_unsupported(diff_session, cfg: dh.CorpusConfig):
    """``fastterm check --nginx`` names each unsupported directive at its file:line, exit 1."""
    reasons = UNSUPPORTED.get(cfg.name, {})
    assert sorted(reasons) == sorted(cfg.unsupported), (
        f"allowlist.UNSUPPORTED[{cfg.name!r}] must give a reason for exactly {cfg.unsupported}")
    side = dh.prepare("check", cfg, diff_session.base, diff_session.pki, diff_session.backends)
    res = subprocess.run(dh.fastterm_command("check", "--nginx", str(side.conf)), check=False,
                         capture_output=True,
                         text=True, timeout=60, env=dh.fastterm_env(), cwd=side.run)
    out = res.stdout + res.stderr
    if res.returncode == 0:
        pytest.fail(f"fastterm now accepts {cfg.name}: drop its `# diff: unsupported` line and the "
                    f"allowlist.UNSUPPORTED entry, so that its cases are compared\n{out}", pytrace=False)
    assert res.returncode == 1, out
    named = set(re.findall(r'"([a-z0-9_]+)" is not supported yet', out))
    assert named == set(cfg.unsupported), out
    for directive in cfg.unsupported:
        for line in dh.directive_lines(cfg.text, directive):
            where = f"{side.conf}:{line + dh.SNIPPET_OFFSET}"
            assert f'{where}: "{directive}" is not supported yet' in out, (where, out)
