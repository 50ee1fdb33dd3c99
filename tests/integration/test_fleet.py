"""docs/fleet.md's claim: nodes that share a ticket-key file resume each other's sessions.

Two fastterm instances (two masters, as two machines would run) read the same
``sessions.ticket_key_file``; a round-robin TCP relay on loopback stands for the L4 balancer in
front (an NLB, IPVS, a Kubernetes Service), sending each new connection to the next instance.
A client's first connection lands on one instance and gets a ticket; its second, offering that
ticket, lands on the other and resumes (Python ssl ``session_reused``), and that instance's
counters say so. The control: instances with their own generated keys make the second
connection a full handshake.
"""

from __future__ import annotations

import itertools
import json
import socket
import ssl
import subprocess
import threading

import pytest
from harness import HOST, free_port
from httpwire import Reader, read_response


class RoundRobin:
    """A TCP relay: each accepted connection goes to the next upstream, bytes copied both ways."""

    def __init__(self, upstreams: list[int]):
        self.upstreams = itertools.cycle(upstreams)
        self.chosen: list[int] = []
        self.listener = socket.create_server((HOST, 0))
        self.listener.settimeout(0.2)
        self.port = self.listener.getsockname()[1]
        self.stopped = threading.Event()
        self.sockets: list[socket.socket] = []
        self.thread = threading.Thread(target=self._accept, daemon=True)
        self.thread.start()

    def _accept(self) -> None:
        while not self.stopped.is_set():
            try:
                client, _ = self.listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            port = next(self.upstreams)
            self.chosen.append(port)
            upstream = socket.create_connection((HOST, port), timeout=10)
            client.settimeout(10)
            self.sockets += [client, upstream]
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(a, b), daemon=True).start()

    @staticmethod
    def _pump(src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
            dst.shutdown(socket.SHUT_WR)
        except OSError:
            pass

    def close(self) -> None:
        self.stopped.set()
        self.listener.close()
        self.thread.join(timeout=5)
        for sock in self.sockets:
            sock.close()


@pytest.fixture
def balancer():
    made: list[RoundRobin] = []

    def make(upstreams: list[int]) -> RoundRobin:
        made.append(RoundRobin(upstreams))
        return made[-1]

    yield make
    for relay in made:
        relay.close()


def _handshakes(ft) -> tuple[int, int]:
    """(full, resumed) handshakes of one instance, from its admin /status."""
    with socket.create_connection((HOST, ft.admin_port), timeout=5) as sock:
        sock.sendall(b"GET /status HTTP/1.1\r\nHost: admin\r\nConnection: close\r\n\r\n")
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    workers = json.loads(data.partition(b"\r\n\r\n")[2])["workers"]
    return (sum(w["counters"]["handshakes_full"] for w in workers),
            sum(w["counters"]["handshakes_resumed"] for w in workers))


def _delta(before: tuple[int, int], after: tuple[int, int]) -> tuple[int, int]:
    return after[0] - before[0], after[1] - before[1]


def _fleet(fastterm, be, sessions: dict) -> list:
    nodes = []
    for _ in range(2):
        admin_port = free_port()
        ft = fastterm(be.address, admin=f"{HOST}:{admin_port}", top={"sessions": sessions})
        ft.admin_port = admin_port
        nodes.append(ft)
    return nodes


def _through(relay: RoundRobin, ctx: ssl.SSLContext, session=None) -> tuple[bool, ssl.SSLSession]:
    """One request through the relay: (resumed, the session to offer next)."""
    raw = socket.create_connection((HOST, relay.port), timeout=10)
    with ctx.wrap_socket(raw, server_hostname="www.example.com", session=session) as sock:
        sock.sendall(b"GET / HTTP/1.1\r\nHost: www.example.com\r\n\r\n")
        assert read_response(Reader(sock), "GET").status == 200
        return sock.session_reused, sock.session


@pytest.mark.parametrize("version", [ssl.TLSVersion.TLSv1_3, ssl.TLSVersion.TLSv1_2])
def test_a_ticket_from_one_node_resumes_on_the_other(fastterm, be, balancer, tmp_path, python, subprocess_env,
                                                     version):
    key_file = str(tmp_path / "ticket.key")     # what a Secret would hold, one file for both nodes
    subprocess.run([python, "-m", "fastterm", "keys", "new", key_file], check=True, timeout=30,
                   capture_output=True, env=subprocess_env)
    a, b = _fleet(fastterm, be, {"ticket_key_file": [key_file]})
    relay = balancer([a.https_port, b.https_port])
    ctx = a.client_context(maximum_version=version, minimum_version=version)
    before = _handshakes(a), _handshakes(b)      # the fixture's own start-up probes

    resumed, session = _through(relay, ctx)
    assert not resumed and session.has_ticket
    resumed, _ = _through(relay, ctx, session)
    assert relay.chosen == [a.https_port, b.https_port]
    assert resumed, "the ticket issued by node A did not resume on node B"
    assert _delta(before[0], _handshakes(a)) == (1, 0) and _delta(before[1], _handshakes(b)) == (0, 1)


def test_without_a_shared_key_file_the_other_node_does_a_full_handshake(fastterm, be, balancer):
    a, b = _fleet(fastterm, be, {})
    relay = balancer([a.https_port, b.https_port])
    ctx = a.client_context()
    before = _handshakes(b)
    _, session = _through(relay, ctx)
    resumed, _ = _through(relay, ctx, session)
    assert not resumed
    assert _delta(before, _handshakes(b)) == (1, 0)
