"""The Dockerfile's recipe, run here: no Docker engine, the same steps in fresh virtualenvs.

Read from the Dockerfile itself, so the two cannot drift apart: the build stage's ``COPY``
lines make the build context (minus what .dockerignore leaves out), its ``pip wheel`` builds
fastterm's wheel (the Cython core compiled in pip's isolated build environment against this
machine's libssl-dev and libnghttp2-dev) and the dependencies'; the runtime stage's ``pip
install --no-index`` installs them into a second, empty virtualenv. That install then must
link only libraries of the packages the runtime stage installs (plus libc), pass ``fastterm
check`` through its console script (the image's ENTRYPOINT) and serve a request.

Minutes (the core compiles from scratch): outside the default run, ``-m packaging``; the wheel
and the runtime virtualenv are built once for the module.
"""

from __future__ import annotations

import fnmatch
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]

pytestmark = [pytest.mark.packaging, pytest.mark.timeout(1200)]


def stages() -> list[list[str]]:
    """The Dockerfile's instructions (continuation lines joined), one list per FROM."""
    text = re.sub(r"\\\n", " ", (REPO_ROOT / "Dockerfile").read_text())
    found: list[list[str]] = []
    for line in text.splitlines():
        line = line.strip()
        if line.startswith("FROM "):
            found.append([])
        elif line and not line.startswith("#") and found:
            found[-1].append(line)
    return found


def ignored(relative: str, patterns: list[str]) -> bool:
    """.dockerignore's verdict (Go filepath.Match patterns, ``**`` any depth, ``!`` re-includes)."""
    verdict = False
    for pattern in patterns:
        negate = pattern.startswith("!")
        pattern = pattern.lstrip("!")
        for candidate in (pattern, pattern.removeprefix("**/")):
            if fnmatch.fnmatch(relative, candidate) or fnmatch.fnmatch(relative, candidate + "/*"):
                verdict = not negate
    return verdict


def build_context(dest: Path) -> None:
    patterns = [line.strip() for line in (REPO_ROOT / ".dockerignore").read_text().splitlines()
                if line.strip() and not line.startswith("#")]
    for instruction in stages()[0]:
        if not instruction.startswith("COPY "):
            continue
        *sources, target = shlex.split(instruction)[1:]
        for source in sources:
            origin = REPO_ROOT / source
            files = [origin] if origin.is_file() else [p for p in origin.rglob("*") if p.is_file()]
            for path in files:
                relative = str(path.relative_to(REPO_ROOT))
                if ignored(relative, patterns):
                    continue
                to = dest / (relative if origin.is_dir() or target.endswith("/") else target)
                if origin.is_dir():
                    to = dest / target / path.relative_to(origin)
                to.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(path, to)


def pip_command(stage: list[str], verb: str) -> list[str]:
    """The words after ``pip`` of the stage's ``pip VERB ...`` command (up to ``&&``)."""
    for instruction in stage:
        m = re.search(rf"\bpip ({verb} [^&]*)", instruction)
        if m and instruction.startswith("RUN "):
            return shlex.split(m.group(1))
    raise AssertionError(f"no pip {verb} in the Dockerfile's stage")


def run(*command, cwd=None, timeout=900) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    result = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout,
                            check=False)
    assert result.returncode == 0, f"{command}:\n{result.stdout[-4000:]}\n{result.stderr[-4000:]}"
    return result


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> Path:
    """The runtime virtualenv, with the wheels the build stage made; returns its bin/."""
    build_stage, runtime_stage = stages()
    work = tmp_path_factory.mktemp("packaging")
    context, wheels = work / "src", work / "wheels"
    build_context(context)
    assert not list(context.rglob("*.so")) and not list(context.rglob("_core.c")), "build outputs in the context"
    run(sys.executable, "-m", "venv", str(work / "build-venv"))
    wheel = [w if w != "/wheels" else str(wheels) for w in pip_command(build_stage, "wheel")]
    run(str(work / "build-venv" / "bin" / "python"), "-m", "pip", *wheel, cwd=context, timeout=1200)
    assert len(list(wheels.glob("fastterm-*.whl"))) == 1

    run(sys.executable, "-m", "venv", str(work / "venv"))
    install = pip_command(runtime_stage, "install")
    assert install[-1] == "/wheels/*.whl", install
    run(str(work / "venv" / "bin" / "python"), "-m", "pip", *install[:-1],
        *map(str, sorted(wheels.glob("*.whl"))))
    return work / "venv" / "bin"


@pytest.fixture(scope="module")
def python(installed) -> str:
    """The integration fixtures (fastterm, demo_backend) run the installed fastterm."""
    return str(installed / "python")


@pytest.fixture
def subprocess_env() -> dict[str, str]:
    """No PYTHONPATH: the installed package, not this checkout."""
    return {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}


def package_of(library: str) -> str:
    """The Debian package that ships ``library`` (as ldd names it, or under merged /usr)."""
    real = os.path.realpath(library)
    for path in dict.fromkeys([library, real, real.removeprefix("/usr"), "/usr" + library]):
        found = subprocess.run(["dpkg", "-S", path], capture_output=True, text=True, timeout=60, check=False)
        if found.returncode == 0:
            return found.stdout.split(":")[0]
    raise AssertionError(f"no package ships {library}")


def test_installed_core_links_only_the_runtime_stage_libraries(installed, python):
    where = run(python, "-c", "import fastterm._core as c, fastterm; print(c.__file__); print(fastterm.__file__)",
                cwd="/").stdout.split()
    assert all(path.startswith(str(installed.parent)) for path in where), where
    linked = run("ldd", where[0]).stdout
    assert "not found" not in linked, linked
    libraries = re.findall(r"=> (/\S+)", linked)
    assert any("libssl.so" in lib for lib in libraries) and any("libnghttp2.so" in lib for lib in libraries)
    if not shutil.which("dpkg"):
        pytest.skip("not Debian: no dpkg to name the packages")
    runtime = {w for line in stages()[1] for w in shlex.split(line)
               if line.startswith("RUN ") and "apt-get install" in line and re.fullmatch(r"lib[\w.+-]+", w)}
    packages = {package_of(lib) for lib in libraries}
    # Debian 13 renamed libssl3 and libnghttp2-14 for 64-bit time_t (libssl3t64, libnghttp2-14t64).
    assert {p.removesuffix("t64") for p in packages} <= runtime | {"libc6"}, (packages, runtime)


def test_installed_fastterm_checks_and_serves(installed, fastterm, be):
    ft = fastterm(be.address)
    check = run(str(installed / "fastterm"), "check", "-c", ft.config_path, cwd="/")
    assert "test is successful" in check.stderr + check.stdout
    assert ft.request("GET", "/").status == 200
    cmdline = Path(f"/proc/{ft.serving_pids()[0]}/environ").read_bytes()
    assert b"PYTHONPATH=" not in cmdline
