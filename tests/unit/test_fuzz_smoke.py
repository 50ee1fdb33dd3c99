"""CI's short seeded fuzz run: each bench/fuzz target for a bounded number of executions.

It runs the way a person runs it (``bench/fuzz/run.py TARGET -runs=N -seed=S``, a
subprocess under atheris's libFuzzer) on the normal, uninstrumented build: every seed of
bench/fuzz/corpus/TARGET, then mutations of them, go through the target's property checks,
so a parser change that breaks a property (or a seed) fails here in seconds. The long
coverage-guided runs on the ASan build are README's "Fuzzing".
"""

from __future__ import annotations

import subprocess
import sys

import pytest

from tests.conftest import REPO_ROOT

RUN = REPO_ROOT / "bench" / "fuzz" / "run.py"
TARGETS = ["request_head", "response_head", "chunked", "tls_server"]
RUNS = 3000


def fuzz(*args, tmp_path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(RUN), *args, f"-artifact_prefix={tmp_path}/", "--corpus-out", str(tmp_path / "corpus")],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=120, check=False)


@pytest.mark.parametrize("target", TARGETS)
def test_short_seeded_run(target, tmp_path):
    seeds = list((REPO_ROOT / "bench" / "fuzz" / "corpus" / target).iterdir())
    out = fuzz(target, f"-runs={RUNS}", "-seed=1", tmp_path=tmp_path)
    assert out.returncode == 0, out.stderr[-6000:]
    assert f"{len(seeds)} files found in {REPO_ROOT / 'bench' / 'fuzz' / 'corpus' / target}" in out.stderr
    assert f"Done {RUNS} runs" in out.stderr
    assert not list(tmp_path.glob("crash-*"))


def test_saved_reproducers_run(tmp_path):
    """The reproducers under bench/fuzz/crashes run through their target and pass (the
    finding each one shows is named in its target, to be dropped once ext/ is fixed)."""
    for path in sorted((REPO_ROOT / "bench" / "fuzz" / "crashes").iterdir()):
        out = fuzz(path.name.split("-")[0], str(path), tmp_path=tmp_path)
        assert out.returncode == 0, (path.name, out.stderr[-4000:])
        assert f"Executed {path}" in out.stderr
