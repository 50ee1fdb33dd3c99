"""``fastterm demo`` wiring, with a stand-in master: PKI, config, backend child started and reaped."""

from __future__ import annotations

import http.client
import json
import socket
import sys
import types

from fastterm import cli


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_demo_runs_the_worker_with_a_live_backend_and_stops_the_backend(tmp_path, monkeypatch, capsys):
    backend_port = free_port()
    seen = {}

    def run_master(path, config):
        seen["config"] = config
        conn = http.client.HTTPConnection("127.0.0.1", backend_port, timeout=10)
        conn.request("GET", "/from-worker")
        seen["echo"] = json.loads(conn.getresponse().read())
        conn.close()
        raise KeyboardInterrupt

    monkeypatch.setitem(sys.modules, "fastterm.supervisor", types.SimpleNamespace(run_master=run_master))
    state = tmp_path / "demo"
    assert cli.main(["demo", "--state-dir", str(state), "--https-port", "18443", "--http-port", "18080",
                     "--backend-port", str(backend_port)]) == 0

    assert seen["echo"]["path"] == "/from-worker"
    server = seen["config"].servers[0]
    assert server.listen == ["127.0.0.1:18443"]
    assert server.hsts == "max-age=63072000"
    assert [c.cert for c in server.certificates] == [str(state / "localhost-ecdsa.crt"),
                                                       str(state / "localhost-rsa.crt")]
    assert seen["config"].redirects[0].https_port == 18443
    assert (state / "ca.key").stat().st_mode & 0o077 == 0
    assert f"curl --cacert {state / 'ca.crt'} https://localhost:18443/" in capsys.readouterr().out
    with socket.socket() as sock:
        assert sock.connect_ex(("127.0.0.1", backend_port)) != 0, "backend child still running"
