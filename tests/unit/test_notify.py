"""fastterm/notify.py on a real datagram socket: addresses, one line per field, no socket no-op."""

from __future__ import annotations

import secrets
import socket

from fastterm.notify import Notifier, notify_address


def test_addresses():
    assert notify_address("/run/systemd/notify") == "/run/systemd/notify"
    assert notify_address("@name") == b"\0name"
    assert notify_address(None) is None and notify_address("") is None
    assert notify_address("vsock:2:1234") is None


def test_a_value_with_a_newline_stays_one_field(tmp_path):
    name = f"fastterm-unit-{secrets.token_hex(6)}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as systemd:
        systemd.bind(b"\0" + name.encode())
        systemd.settimeout(5)
        notifier = Notifier({"NOTIFY_SOCKET": f"@{name}"})
        notifier.ready("reload failed: line one\nline two")
        assert systemd.recv(4096) == b"READY=1\nSTATUS=reload failed: line one line two\n"
        notifier.close_in_child()
        notifier.ready("after close")     # a worker's copy says nothing: the next datagram is the marker
        Notifier({"NOTIFY_SOCKET": f"@{name}"}).status("marker")
        assert systemd.recv(4096) == b"STATUS=marker\n"


def test_without_notify_socket_nothing_is_sent():
    notifier = Notifier({})
    assert notifier.sock is None
    notifier.ready("x")
    notifier.stopping("y")
