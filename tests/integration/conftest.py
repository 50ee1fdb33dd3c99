"""Integration fixtures: fastterm as users run it, backends, clients; loopback only.

- ``fastterm(...)`` writes a fastterm.toml into tmp_path and starts
  ``python -m fastterm run -c FILE`` on free loopback ports; teardown sends SIGTERM,
  then SIGKILL, to that PID only.
- ``demo_backend``: ``python -m fastterm.backend --port 0`` (JSON echo, /bytes, /chunked...).
- ``be`` and ``ft``: a keep-alive raw backend and fastterm in front of it, the pair most
  tests need (modules override either).
- ``raw_backend(handler)``: an in-process threaded backend with plain sockets for what the
  demo cannot do (reset, close mid-response, hang, close-delimited, malformed); it
  records every byte it received and counts accepted connections.
"""

from __future__ import annotations

import os
import socket
import ssl
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from harness import (
    HOST,
    HSTS,
    NAME,
    TEST_LIMITS,
    BackendConn,
    Fastterm,
    RawBackend,
    cert_entry,
    free_port,
    keepalive_handler,
    to_toml,
)

from fastterm.demo import Issued

REPO_ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def ca_file(write, ca: Issued) -> str:
    return write("certs/ca.crt", ca.cert_pem)


@pytest.fixture
def ec_cert(write, ec_leaf, intermediate) -> dict:
    return cert_entry(write, ec_leaf, intermediate, "www-ec")


@pytest.fixture
def fastterm(tmp_path: Path, write, ca_file: str, ec_cert: dict, subprocess_env, python):
    """Factory: ``fastterm(upstream="127.0.0.1:PORT", **options) -> Fastterm`` (started).

    Options: ``servers`` (full list of server tables; replaces the default one), or for the
    default server ``server_names``, ``certificates``, ``tls``, ``hsts``, ``routes``,
    ``trusted_proxies``; ``limits`` (merged over TEST_LIMITS), ``upstreams`` (full list),
    ``keepalive`` (backend pool size), ``redirect`` (bool), ``https_port_in_redirect``,
    ``redirects`` (the [[redirect]] tables, each on the test's plain-HTTP port), ``workers``
    (1 by default: one backend pool, one process to watch), ``single`` (``run --single``: no
    master), ``command_prefix`` (e.g. prlimit), ``admin`` (its address; the pid and token files
    then go in tmp_path), ``top`` (more top-level keys: ``sessions``, ...). Every server of ``servers``
    listens on the test port, then on the addresses of its own ``listen``.
    """
    started: list[Fastterm] = []

    def start(upstream: str | list[str] | None = None, *, servers: list[dict] | None = None,
              server_names=(NAME, "example.com"), certificates: list[dict] | None = None,
              tls: dict | None = None, hsts: str | None = HSTS, routes: list[dict] | None = None,
              trusted_proxies: list[str] | None = None, limits: dict | None = None,
              upstreams: list[dict] | None = None, keepalive: int | None = None,
              redirect: bool = True, https_port_in_redirect: int | None = None,
              redirects: list[dict] | None = None,
              log_level: str = "info", workers: int = 1, command_prefix: list[str] = (), single: bool = False,
              admin: str | None = None, top: dict | None = None) -> Fastterm:
        n = len(started)
        https_port = free_port()
        http_port = free_port() if redirect else None
        listen = f"{HOST}:{https_port}"
        if upstreams is None:
            servers_list = upstream if isinstance(upstream, list) else [upstream or f"{HOST}:1"]
            up = {"name": "app", "servers": servers_list}
            if keepalive is not None:
                up["keepalive"] = keepalive
            upstreams = [up]
        if servers is None:
            server = {"listen": [listen], "server_names": list(server_names), "default_server": True}
            if hsts:
                server["hsts"] = hsts
            if trusted_proxies is not None:
                server["trusted_proxies"] = trusted_proxies
            if tls:
                server["tls"] = tls
            server["certificate"] = certificates or [ec_cert]
            server["route"] = routes if routes is not None else [{"path": "/", "upstream": "app"}]
            servers = [server]
        else:
            servers = [dict(s, listen=[listen, *s.get("listen", [])]) for s in servers]
        config = {
            "workers": workers,
            "log_level": log_level,
            "error_log": str(tmp_path / f"error{n}.log"),
            "limits": dict(TEST_LIMITS, **(limits or {})),
            "upstream": upstreams,
            "server": servers,
            **(top or {}),
        }
        if admin:
            config["admin"] = admin
            config["pid_file"] = str(tmp_path / f"fastterm{n}.pid")   # its token file goes beside it
        if redirect:
            config["redirect"] = [dict(r, listen=[f"{HOST}:{http_port}"]) for r in redirects] if redirects else \
                [{"listen": [f"{HOST}:{http_port}"], "https_port": https_port_in_redirect or https_port}]
        config_path = write(f"fastterm{n}.toml", to_toml(config) + "\n")
        output_file = str(tmp_path / f"fastterm{n}.out")
        with open(output_file, "wb") as out:
            proc = subprocess.Popen([*command_prefix, python, "-m", "fastterm", "run", "-c", config_path,
                                     *(["--single"] if single else [])],
                                    stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                    env=subprocess_env, cwd=tmp_path)
        ft = Fastterm(proc, https_port, http_port, ca_file, config["error_log"], output_file,
                      config_path)
        started.append(ft)
        deadline = time.monotonic() + 15
        ports = [p for p in (https_port, http_port) if p]
        while ports:
            if proc.poll() is not None:
                pytest.fail(f"fastterm exited with {proc.returncode}:\n{ft.log()}\n--- config:\n"
                            f"{Path(config_path).read_text()}")
            if time.monotonic() > deadline:
                pytest.fail(f"fastterm did not listen on {ports} within 15 s:\n{ft.log()}")
            try:
                if ports[0] == https_port:
                    # A full handshake: a master's socket accepts before its worker serves.
                    ctx = ssl.create_default_context(cafile=ca_file)
                    ctx.check_hostname = False
                    raw = socket.create_connection((HOST, https_port), timeout=2)
                    try:
                        ctx.wrap_socket(raw, server_hostname=None).close()
                    except ssl.SSLError as exc:
                        if "UNRECOGNIZED_NAME" not in str(exc):   # a reject_handshake default answered
                            raise
                else:
                    socket.create_connection((HOST, ports[0]), timeout=0.5).close()
                ports.pop(0)
            except (OSError, ssl.SSLError):
                time.sleep(0.05)
        return ft

    yield start
    for ft in started:
        ft.stop()
    # DESIGN "Errors": never a worker crash. A traceback in the log fails the test that caused it.
    crashed = [ft.log() for ft in started if "Traceback (most recent call last)" in ft.log()]
    if crashed:
        pytest.fail("fastterm logged a traceback:\n" + crashed[0][-6000:], pytrace=False)


# ---------------------------------------------------------------------------------------
# demo backend


@pytest.fixture(scope="session")
def demo_backend(python):
    """``python -m fastterm.backend --port 0`` -> "127.0.0.1:PORT"."""
    env = dict(os.environ, PYTHONPATH=str(REPO_ROOT))
    proc = subprocess.Popen([python, "-m", "fastterm.backend", "--port", "0"], stdout=subprocess.PIPE,
                            text=True, env=env, cwd=REPO_ROOT)
    try:
        banner = proc.stdout.readline()
        assert "listening on http://" in banner, banner
        yield banner.strip().rsplit("http://", 1)[1]
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=5)


@pytest.fixture
def raw_backend():
    """Factory: ``raw_backend(handler=keepalive_handler) -> RawBackend`` (closed at teardown)."""
    made: list[RawBackend] = []

    def make(handler: Callable[[BackendConn], None] = keepalive_handler) -> RawBackend:
        b = RawBackend(handler)
        made.append(b)
        return b

    yield make
    for b in made:
        b.close()


@pytest.fixture
def be(raw_backend) -> RawBackend:
    """A keep-alive raw backend; a module whose backend must behave otherwise overrides it."""
    return raw_backend(keepalive_handler)


@pytest.fixture
def trust_split(fastterm, raw_backend, write, intermediate, ec_cert, other_leaf):
    """Two server blocks, two backends: www (the default) trusts 127.0.0.1 as a proxy,
    other.test trusts nobody -> (fastterm, www's backend, other.test's backend)."""
    a, b = raw_backend(), raw_backend()
    servers = [
        {"server_names": [NAME], "default_server": True, "certificate": [ec_cert],
         "trusted_proxies": ["127.0.0.1/32"], "route": [{"path": "/", "upstream": "a"}]},
        {"server_names": ["other.test"], "certificate": [cert_entry(write, other_leaf, intermediate, "other")],
         "route": [{"path": "/", "upstream": "b"}]},
    ]
    ft = fastterm(upstreams=[{"name": "a", "servers": [a.address]}, {"name": "b", "servers": [b.address]}],
                  servers=servers)
    return ft, a, b


@pytest.fixture
def demo(fastterm, demo_backend) -> Fastterm:
    """fastterm in front of the demo backend (JSON echo, /bytes, /chunked ...)."""
    return fastterm(demo_backend)


@pytest.fixture
def ft(fastterm, be) -> Fastterm:
    """fastterm in front of ``be`` (a module may override it, e.g. with the demo backend)."""
    return fastterm(be.address)


@pytest.fixture
def refused_address() -> str:
    """A loopback port nothing listens on."""
    return f"{HOST}:{free_port()}"


