"""systemd's ``Type=notify`` protocol from the master (fastterm/notify.py), on a socket the test binds.

The test plays systemd: an AF_UNIX datagram socket whose address goes into ``NOTIFY_SOCKET``
(a path, and an abstract ``@name``), SO_PASSCRED on so that each datagram carries its sender's
pid as systemd checks it for ``NotifyAccess=main``. Across start, a reload (SIGHUP), a reload
that fails and a graceful stop, the master says READY=1 (only once its workers serve),
RELOADING=1 with MONOTONIC_USEC then READY=1, and STOPPING=1, each with a STATUS= line;
the admin endpoint's GET /ready agrees (200 serving, 503 draining).
"""

from __future__ import annotations

import json
import os
import secrets
import signal
import socket
import struct
import time
from pathlib import Path

import pytest


class FakeSystemd:
    def __init__(self, address: str, bind_to: str | bytes):
        self.address = address
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(bind_to)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)

    def next(self, timeout: float = 15.0) -> tuple[int, dict[str, str]]:
        """The next datagram: (sender pid, its KEY=VALUE fields)."""
        self.sock.settimeout(timeout)
        data, ancillary, _flags, _addr = self.sock.recvmsg(4096, socket.CMSG_SPACE(12))
        pid = next(struct.unpack("=iII", cdata)[0] for level, kind, cdata in ancillary
                   if level == socket.SOL_SOCKET and kind == socket.SCM_CREDENTIALS)
        fields = dict(line.split("=", 1) for line in data.decode().splitlines() if line)
        return pid, fields

    def until(self, key: str, timeout: float = 15.0) -> list[tuple[int, dict[str, str]]]:
        """Every message up to and including the first that has ``key``."""
        seen = []
        deadline = time.monotonic() + timeout
        while not seen or key not in seen[-1][1]:
            seen.append(self.next(max(0.1, deadline - time.monotonic())))
        return seen


@pytest.fixture(params=["path", "abstract"])
def systemd(request, tmp_path):
    if request.param == "path":
        path = str(tmp_path / "notify.sock")
        fake = FakeSystemd(path, path)
    else:
        name = f"fastterm-test-{secrets.token_hex(6)}"
        fake = FakeSystemd(f"@{name}", b"\0" + name.encode())
    yield fake
    fake.sock.close()


def test_ready_reloading_stopping_from_the_master_only(supervised, systemd):
    sup = supervised(start=False)
    sup.env = dict(sup.env, NOTIFY_SOCKET=systemd.address)
    sup.start()

    messages = systemd.until("READY")
    assert {pid for pid, _ in messages} == {sup.pid}     # NotifyAccess=main: never a worker
    ready = messages[-1][1]
    assert ready["READY"] == "1"
    assert ready["STATUS"].startswith("generation 1: 2 workers serving on 127.0.0.1:")
    assert sup.request("/").status == 200                  # READY=1 meant serving
    code, body = sup.admin("GET", "/ready")
    assert code == 200 and json.loads(body)["workers_serving"] == 2

    before = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    os.kill(sup.pid, signal.SIGHUP)
    pid, reloading = systemd.next()
    assert pid == sup.pid and reloading["RELOADING"] == "1" and reloading["STATUS"] == "reloading"
    # systemd 253+ pairs the reload with its job by this CLOCK_MONOTONIC stamp.
    assert before <= int(reloading["MONOTONIC_USEC"]) <= time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    pid, ready = systemd.until("READY")[-1]
    assert pid == sup.pid and ready["STATUS"].startswith("generation 2: 2 workers serving")
    assert sup.status()["generation"] == 2
    assert sup.request("/").status == 200

    good = Path(sup.config_path).read_text()
    sup.write_raw_config(good + "\nthis is not toml\n")
    os.kill(sup.pid, signal.SIGHUP)
    assert "RELOADING" in systemd.next()[1]
    _pid, failed = systemd.until("READY")[-1]
    assert failed["STATUS"].startswith("reload failed, generation 2 keeps serving: ")
    sup.write_raw_config(good)

    # An idle keep-alive client holds the drain open (until drain_timeout): meanwhile the
    # readiness probe says 503, so that a balancer takes this instance out first.
    with sup.connect() as idle:
        assert sup.get(idle).status == 200
        os.kill(sup.pid, signal.SIGTERM)
        pid, stopping = systemd.until("STOPPING")[-1]
        assert pid == sup.pid and stopping["STOPPING"] == "1"
        assert stopping["STATUS"] == "graceful stop: 2 workers draining"
        code, body = sup.admin("GET", "/ready")
        assert code == 503 and json.loads(body)["stopping"] is True
    assert sup.proc.wait(timeout=15) == 0
