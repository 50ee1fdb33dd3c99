"""TLS 1.3 0-RTT early data (``[server.tls] early_data``): accepted once, Early-Data: 1 to the
backend, unsafe methods held until the handshake completes (RFC 8470), replays refused by the
shared replay table (RFC 8446 §8), and only on tickets this node issued.

The client is ``openssl s_client``: ``-sess_out`` after a full handshake, then ``-sess_in ...
-early_data FILE`` sends FILE as early data and reports what the server did with it. A replay
is made with a recording TCP relay on loopback: it captures every byte the client sent on a
0-RTT connection and sends them again, as they were, on a new connection.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import threading
import time

import pytest
from harness import HOST, NAME, free_port, metrics, response_bytes, wait_for

pytestmark = pytest.mark.skipif(shutil.which("openssl") is None, reason="needs openssl s_client")

EARLY = {"early_data": True}
ACCEPTED = "Early data was accepted"
REJECTED = "Early data was rejected"


def _request(method: str = "GET", target: str = "/", body: bytes = b"") -> bytes:
    head = f"{method} {target} HTTP/1.1\r\nHost: {NAME}\r\nConnection: close\r\n"
    if body or method == "POST":
        head += f"Content-Length: {len(body)}\r\n"
    return head.encode() + b"\r\n" + body


def s_client(port: int, ca_file: str, *, sess_out: str | None = None, sess_in: str | None = None,
             early: str | None = None, request: bytes = b"", alpn: str = "http/1.1",
             timeout: float = 10.0, until: bytes | None = None) -> str:
    """One s_client run (TLS 1.3, SNI www.example.com) until the server closes, or with
    ``until`` until its output has that (HTTP/2 keeps the connection); stdout and stderr."""
    cmd = ["openssl", "s_client", "-connect", f"{HOST}:{port}", "-servername", NAME, "-CAfile", ca_file,
           "-tls1_3", "-alpn", alpn, "-ign_eof"]
    if sess_out:
        cmd += ["-sess_out", sess_out]
    if sess_in:
        cmd += ["-sess_in", sess_in]
    if early:
        cmd += ["-early_data", early]
    if until is None:
        r = subprocess.run(cmd, input=request, capture_output=True, timeout=timeout, check=False)
        return (r.stdout + r.stderr).decode("latin-1")
    proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    out = bytearray()
    timer = threading.Timer(timeout, proc.kill)
    timer.start()
    try:
        while until not in out and (chunk := proc.stdout.read1(65536)):
            out += chunk
    finally:
        timer.cancel()
        proc.kill()
        proc.wait(5)
        proc.stdin.close()
        proc.stdout.close()
    return out.decode("latin-1")


def new_session(port: int, ca_file: str, path: str) -> None:
    """A full handshake and one request, the ticket saved in ``path``."""
    out = s_client(port, ca_file, sess_out=path, request=_request())
    assert "HTTP/1.1 200" in out, out[-3000:]


class Relay:
    """A TCP relay on loopback to ``port`` that records what the client sends (one connection)."""

    def __init__(self, port: int):
        self.target = port
        self.sock = socket.create_server((HOST, 0))
        self.sock.settimeout(10)
        self.port = self.sock.getsockname()[1]
        self.sent = bytearray()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        try:
            client, _ = self.sock.accept()
        except OSError:
            return
        server = socket.create_connection((HOST, self.target), timeout=10)

        def pump(src, dst, record):
            try:
                while data := src.recv(65536):
                    if record is not None:
                        record += data
                    dst.sendall(data)
            except OSError:
                pass
            try:
                dst.shutdown(socket.SHUT_WR)
            except OSError:
                pass

        back = threading.Thread(target=pump, args=(server, client, None), daemon=True)
        back.start()
        pump(client, server, self.sent)
        back.join(10)
        client.close()
        server.close()

    def close(self) -> None:
        self.sock.close()
        self.thread.join(10)


def replay(port: int, flight: bytes, timeout: float = 5.0) -> bytes:
    """Send a recorded client flight, as it was, on a new connection; close once the server
    answered (its ServerHello: it has judged the ClientHello), as an attacker without the
    keys can do no more. What came back first."""
    with socket.create_connection((HOST, port), timeout=timeout) as sock:
        sock.sendall(flight)
        try:
            return sock.recv(65536)
        except OSError:
            return b""


def counting_backend(raw_backend):
    """A backend answering 200 with the Early-Data field it saw, keeping every request."""
    def handler(conn):
        while (req := conn.read_request()) is not None:
            early = req.header("early-data") or "-"
            conn.send(response_bytes(200, f"early={early} {req.method} {req.target}".encode(),
                                     headers=[("Connection", "close")]))
            return
    return raw_backend(handler)



def test_early_data_accepted_and_marked(fastterm, raw_backend, tmp_path, write):
    be = counting_backend(raw_backend)
    admin = free_port()
    ft = fastterm(be.address, tls=EARLY, top={"admin": f"{HOST}:{admin}"})
    sess = str(tmp_path / "sess.pem")
    new_session(ft.https_port, ft.ca_file, sess)
    early = write("early.txt", _request(target="/early").decode())
    out = s_client(ft.https_port, ft.ca_file, sess_in=sess, early=early)
    assert ACCEPTED in out, out[-3000:]
    assert "HTTP/1.1 200" in out and "early=1 GET /early" in out, out[-3000:]
    assert [r.target for r in be.requests] == ["/", "/early"]
    assert be.requests[1].header("early-data") == "1"
    m = metrics(admin)
    assert m["fastterm_early_data_total{result=\"offered\"}"] == 1
    assert m["fastterm_early_data_total{result=\"accepted\"}"] == 1


def _replayed(fastterm, raw_backend, tmp_path, write, workers: int):
    """A 0-RTT GET through the recording relay, then its bytes again on new connections (to
    every worker, by trying until the other pid has seen one): (backend, admin port, ft)."""
    be = counting_backend(raw_backend)
    admin = free_port()
    ft = fastterm(be.address, tls=EARLY, workers=workers, top={"admin": f"{HOST}:{admin}"})
    sess = str(tmp_path / "sess.pem")
    new_session(ft.https_port, ft.ca_file, sess)
    early = write("early.txt", _request(target="/once").decode())
    relay = Relay(ft.https_port)
    out = s_client(relay.port, ft.ca_file, sess_in=sess, early=early)
    relay.close()
    assert ACCEPTED in out and "early=1 GET /once" in out, out[-3000:]
    flight = bytes(relay.sent)
    assert flight
    return be, admin, ft, flight


def test_replay_same_worker_refused(fastterm, raw_backend, tmp_path, write):
    be, admin, ft, flight = _replayed(fastterm, raw_backend, tmp_path, write, workers=1)
    for _ in range(3):
        replay(ft.https_port, flight)
    assert wait_for(lambda: metrics(admin)['fastterm_early_data_total{result="rejected_replay"}'] == 3)
    time.sleep(0.3)
    assert [r.target for r in be.requests] == ["/", "/once"], "a replayed early request reached the backend"
    m = metrics(admin)
    assert m['fastterm_early_data_total{result="accepted"}'] == 1
    assert m['fastterm_early_data_total{result="offered"}'] == 4


def test_replay_other_worker_refused(fastterm, raw_backend, tmp_path, write):
    """SO_REUSEPORT spreads new connections over both workers: with 8 replays both see some
    (a 1 in 128 chance that one worker gets them all; each replay is refused wherever it lands)."""
    be, admin, ft, flight = _replayed(fastterm, raw_backend, tmp_path, write, workers=2)
    for _ in range(8):
        replay(ft.https_port, flight)
    assert wait_for(lambda: metrics(admin)['fastterm_early_data_total{result="rejected_replay"}'] == 8)
    time.sleep(0.3)
    assert [r.target for r in be.requests] == ["/", "/once"], "a replayed early request reached the backend"
    per_worker = _worker_counters(admin)
    assert len(per_worker) == 2
    assert all(c["early_data_offered"] > 0 for c in per_worker), per_worker
    assert sum(c["early_data_accepted"] for c in per_worker) == 1


def _worker_counters(admin_port: int) -> list[dict]:
    import json

    with socket.create_connection((HOST, admin_port), timeout=5) as sock:
        sock.sendall(b"GET /status HTTP/1.1\r\nHost: admin\r\nConnection: close\r\n\r\n")
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    return [w["counters"] for w in json.loads(data.partition(b"\r\n\r\n")[2])["workers"]]


def test_post_in_early_data_waits_for_handshake(fastterm, raw_backend, tmp_path, write):
    be = counting_backend(raw_backend)
    admin = free_port()
    ft = fastterm(be.address, tls=EARLY, top={"admin": f"{HOST}:{admin}"})
    sess = str(tmp_path / "sess.pem")
    new_session(ft.https_port, ft.ca_file, sess)
    early = write("early.txt", _request("POST", "/submit", b"a=1").decode())
    out = s_client(ft.https_port, ft.ca_file, sess_in=sess, early=early)
    assert ACCEPTED in out, out[-3000:]
    assert "early=- POST /submit" in out, out[-3000:]
    post = be.requests[-1]
    assert post.method == "POST" and post.body == b"a=1" and not post.has("early-data")
    assert metrics(admin)["fastterm_early_data_requests_held_total"] == 1


def _fleet(fastterm, tmp_path, python, subprocess_env, backend, *tls):
    """Instances sharing one ticket-key file (a fleet), one per ``tls`` table: (instance, admin port)."""
    key = tmp_path / "fleet.key"
    r = subprocess.run([python, "-m", "fastterm", "keys", "new", str(key)], capture_output=True, text=True,
                       env=subprocess_env, timeout=30, check=False)
    assert r.returncode == 0, r.stderr
    nodes = []
    for t in tls:
        admin = free_port()
        nodes.append((fastterm(backend.address, tls=t, top={"sessions": {"ticket_key_file": [str(key)]},
                                                            "admin": f"{HOST}:{admin}"}), admin))
    return nodes


def test_early_data_off_refuses_it(fastterm, raw_backend, tmp_path, write, python, subprocess_env):
    """A ticket that allows early data (from a node with it on) offered where it is off: the
    session resumes, the early data is refused, the request sent after the handshake works."""
    be = counting_backend(raw_backend)
    (on, _), (off, _) = _fleet(fastterm, tmp_path, python, subprocess_env, be, EARLY, {"early_data": False})
    sess = str(tmp_path / "sess.pem")
    new_session(on.https_port, on.ca_file, sess)
    early = write("early.txt", _request(target="/early").decode())
    out = s_client(off.https_port, off.ca_file, sess_in=sess, early=early, request=_request(target="/late"))
    assert "Reused, TLSv1.3" in out and REJECTED in out, out[-3000:]
    assert "early=- GET /late" in out, out[-3000:]
    assert "/early" not in [r.target for r in be.requests]


def test_other_node_resumes_without_early_data(fastterm, raw_backend, tmp_path, write, python,
                                               subprocess_env):
    be = counting_backend(raw_backend)
    (a, _), (b, b_admin) = _fleet(fastterm, tmp_path, python, subprocess_env, be, EARLY, EARLY)
    sess = str(tmp_path / "from_a.pem")
    new_session(a.https_port, a.ca_file, sess)
    early = write("early.txt", _request(target="/fleet").decode())
    out = s_client(b.https_port, b.ca_file, sess_in=sess, early=early, request=_request(target="/after"))
    assert "Reused, TLSv1.3" in out, out[-3000:]
    assert REJECTED in out, out[-3000:]
    assert "early=- GET /after" in out, out[-3000:]
    assert "/fleet" not in [r.target for r in be.requests]
    m = metrics(b_admin)
    assert m['fastterm_early_data_total{result="rejected_other"}'] == 1   # not B's ticket
    assert m['fastterm_early_data_total{result="rejected_replay"}'] == 0
    # ... and A, which issued it, takes it
    out = s_client(a.https_port, a.ca_file, sess_in=sess, early=early)
    assert ACCEPTED in out and "early=1 GET /fleet" in out, out[-3000:]


def test_h2_early_data(fastterm, raw_backend, tmp_path, write):
    """An HTTP/2 client's preface, SETTINGS and a GET in early data (ALPN is in the session)."""
    pytest.importorskip("h2")
    import h2.config
    import h2.connection

    be = counting_backend(raw_backend)
    ft = fastterm(be.address, tls=EARLY)
    sess = str(tmp_path / "sess.pem")
    out = s_client(ft.https_port, ft.ca_file, sess_out=sess, alpn="h2", until=b"New Session Ticket arrived")
    assert "ALPN protocol: h2" in out, out[-3000:]
    assert wait_for(lambda: os.path.exists(sess)), out[-3000:]
    conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
    conn.initiate_connection()
    conn.send_headers(1, [(":method", "GET"), (":path", "/h2"), (":scheme", "https"),
                          (":authority", NAME)], end_stream=True)
    early = write("early.bin", "")
    with open(early, "wb") as f:
        f.write(conn.data_to_send())
    out = s_client(ft.https_port, ft.ca_file, sess_in=sess, early=early, alpn="h2", until=b"early=1 GET /h2")
    assert "early=1 GET /h2" in out, out[-3000:]
    assert wait_for(lambda: any(r.target == "/h2" for r in be.requests))
    req = next(r for r in be.requests if r.target == "/h2")
    assert req.header("early-data") == "1"


def test_backend_425_is_retried_once_after_the_handshake(fastterm, raw_backend, tmp_path, write):
    """RFC 8470 §5.2: the backend refuses the early request (425 Too Early); fastterm sends it
    again without Early-Data once the handshake is complete, and the client gets that answer."""
    def handler(conn):
        while (req := conn.read_request()) is not None:
            if req.has("early-data"):
                conn.send(response_bytes(425, b"too early", reason="Too Early"))
                continue
            conn.send(response_bytes(200, f"late {req.target}".encode(), headers=[("Connection", "close")]))
            return
    be = raw_backend(handler)
    ft = fastterm(be.address, tls=EARLY)
    sess = str(tmp_path / "sess.pem")
    new_session(ft.https_port, ft.ca_file, sess)
    early = write("early.txt", _request(target="/careful").decode())
    out = s_client(ft.https_port, ft.ca_file, sess_in=sess, early=early)
    assert ACCEPTED in out, out[-3000:]
    assert "HTTP/1.1 200" in out and "late /careful" in out and "425" not in out, out[-3000:]
    careful = [r for r in be.requests if r.target == "/careful"]
    assert [r.header("early-data") for r in careful] == ["1", None]


def test_h2_post_in_early_data_waits_for_handshake(fastterm, raw_backend, tmp_path, write):
    pytest.importorskip("h2")
    import h2.config
    import h2.connection

    be = counting_backend(raw_backend)
    ft = fastterm(be.address, tls=EARLY)
    sess = str(tmp_path / "sess.pem")
    s_client(ft.https_port, ft.ca_file, sess_out=sess, alpn="h2", until=b"New Session Ticket arrived")
    assert wait_for(lambda: os.path.exists(sess))
    conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
    conn.initiate_connection()
    conn.send_headers(1, [(":method", "POST"), (":path", "/h2post"), (":scheme", "https"),
                          (":authority", NAME), ("content-length", "3")])
    conn.send_data(1, b"a=1", end_stream=True)
    early = write("early.bin", conn.data_to_send())
    out = s_client(ft.https_port, ft.ca_file, sess_in=sess, early=early, alpn="h2", until=b"POST /h2post")
    assert "early=- POST /h2post" in out, out[-3000:]
    post = next(r for r in be.requests if r.target == "/h2post")
    assert post.body == b"a=1" and not post.has("early-data")


def test_tls12_clients_unaffected(fastterm, raw_backend):
    """SSL_read_early_data comes first on every connection: a TLS 1.2 handshake goes through it."""
    import ssl

    be = counting_backend(raw_backend)
    ft = fastterm(be.address, tls=EARLY)
    ctx = ft.client_context(maximum_version=ssl.TLSVersion.TLSv1_2)
    from httpwire import Reader, read_response, request_bytes

    for _ in range(2):
        with ft.connect(ctx=ctx) as sock:
            assert sock.version() == "TLSv1.2"
            sock.sendall(request_bytes("GET", "/v12", NAME, [("Connection", "close")]))
            resp = read_response(Reader(sock), "GET")
            assert resp.status == 200 and resp.body == b"early=- GET /v12"


def test_keepalive_after_early_data(fastterm, raw_backend, tmp_path, write):
    """A keep-alive GET in early data, then a request after the handshake on the same
    connection: the first carries Early-Data: 1, the second does not."""
    def handler(conn):
        while (req := conn.read_request()) is not None:
            early = req.header("early-data") or "-"
            conn.send(response_bytes(200, f"early={early} {req.target}".encode()))
    be = raw_backend(handler)
    ft = fastterm(be.address, tls=EARLY)
    sess = str(tmp_path / "sess.pem")
    new_session(ft.https_port, ft.ca_file, sess)
    first = f"GET /first HTTP/1.1\r\nHost: {NAME}\r\n\r\n"
    early = write("early.txt", first)
    out = s_client(ft.https_port, ft.ca_file, sess_in=sess, early=early, request=_request(target="/second"))
    assert ACCEPTED in out, out[-3000:]
    assert out.index("early=1 /first") < out.index("early=- /second"), out[-3000:]


REJECT = {"early_data": True, "early_data_unsafe": "reject"}


def test_post_in_early_data_rejected_with_425(fastterm, raw_backend, tmp_path, write):
    """``early_data_unsafe = "reject"``: the POST in early data is answered 425 Too Early
    (RFC 8470 §5.2) before the handshake completes, and never reaches the backend; a GET in
    early data still goes through."""
    be = counting_backend(raw_backend)
    ft = fastterm(be.address, tls=REJECT)
    sess = str(tmp_path / "sess.pem")
    new_session(ft.https_port, ft.ca_file, sess)
    early = write("early.txt", _request("POST", "/submit", b"a=1").decode())
    out = s_client(ft.https_port, ft.ca_file, sess_in=sess, early=early)
    assert ACCEPTED in out, out[-3000:]
    assert "HTTP/1.1 425 Too Early" in out, out[-3000:]
    time.sleep(0.3)
    assert [r.target for r in be.requests] == ["/"], "a rejected early POST reached the backend"
    get = write("get.txt", _request(target="/safe").decode())
    out = s_client(ft.https_port, ft.ca_file, sess_in=sess, early=get)
    assert ACCEPTED in out and "early=1 GET /safe" in out, out[-3000:]


def test_post_after_the_handshake_not_rejected(fastterm, raw_backend, tmp_path, write):
    """Only early data is refused: the same POST sent after the handshake is forwarded."""
    be = counting_backend(raw_backend)
    ft = fastterm(be.address, tls=REJECT)
    sess = str(tmp_path / "sess.pem")
    new_session(ft.https_port, ft.ca_file, sess)
    out = s_client(ft.https_port, ft.ca_file, sess_in=sess, request=_request("POST", "/late", b"a=1"))
    assert "Reused, TLSv1.3" in out and "early=- POST /late" in out, out[-3000:]
    assert be.requests[-1].body == b"a=1"


def test_h2_post_in_early_data_rejected_with_425(fastterm, raw_backend, tmp_path, write):
    pytest.importorskip("h2")
    import h2.config
    import h2.connection
    import h2.events

    be = counting_backend(raw_backend)
    ft = fastterm(be.address, tls=REJECT)
    sess = str(tmp_path / "sess.pem")
    s_client(ft.https_port, ft.ca_file, sess_out=sess, alpn="h2", until=b"New Session Ticket arrived")
    assert wait_for(lambda: os.path.exists(sess))
    conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
    conn.initiate_connection()
    conn.send_headers(1, [(":method", "POST"), (":path", "/h2post"), (":scheme", "https"),
                          (":authority", NAME), ("content-length", "3")])
    conn.send_data(1, b"a=1", end_stream=True)
    early = write("early.bin", "")
    with open(early, "wb") as f:
        f.write(conn.data_to_send())
    out = s_client(ft.https_port, ft.ca_file, sess_in=sess, early=early, alpn="h2", until=b"Too Early")
    assert "Too Early" in out, out[-3000:]   # the 425 page's body (HPACK hides the status)
    time.sleep(0.3)
    assert not any(r.target == "/h2post" for r in be.requests), "a rejected early POST reached the backend"


def test_answered_before_the_clients_finished_counts_as_resumed(fastterm, raw_backend, tmp_path, write):
    """A 0-RTT GET with Connection: close, 20 ms round trip: the answer goes out in 0.5-RTT data
    and the connection closes before the client's Finished arrives; the handshake still counts
    (resumed), once."""
    from fastterm.bench.clients import DelayRelay

    be = counting_backend(raw_backend)
    admin = free_port()
    ft = fastterm(be.address, tls=EARLY, top={"admin": f"{HOST}:{admin}"})
    sess = str(tmp_path / "sess.pem")
    new_session(ft.https_port, ft.ca_file, sess)
    early = write("early.txt", _request(target="/early").decode())
    relay = DelayRelay(HOST, ft.https_port, 0.01)
    for _ in range(3):
        out = s_client(relay.port, ft.ca_file, sess_in=sess, early=early)
        assert ACCEPTED in out and "early=1 GET /early" in out, out[-3000:]
    relay.sock.close()

    def counted() -> bool:
        m = metrics(admin)
        # full: the fixture's start-up probe and the ticket's handshake
        return m['fastterm_handshakes_total{kind="resumed"}'] == 3 and m['fastterm_handshakes_total{kind="full"}'] == 2

    assert wait_for(counted, timeout=5), metrics(admin)


def test_access_log_says_which_requests_came_in_early_data(fastterm, raw_backend, tmp_path, write):
    """The JSON line of a GET sent in 0-RTT data says early_data true; the next request on the
    same connection, after the handshake, false."""
    import json

    def handler(conn):
        while (req := conn.read_request()) is not None:
            conn.send(response_bytes(200, req.target.encode()))
    be = raw_backend(handler)
    log = tmp_path / "access.log"
    ft = fastterm(be.address, tls=EARLY, top={"access_log": str(log)})
    sess = str(tmp_path / "sess.pem")
    new_session(ft.https_port, ft.ca_file, sess)
    early = write("early.txt", f"GET /first HTTP/1.1\r\nHost: {NAME}\r\n\r\n")
    out = s_client(ft.https_port, ft.ca_file, sess_in=sess, early=early, request=_request(target="/second"))
    assert ACCEPTED in out, out[-3000:]

    def lines() -> dict:
        try:
            return {r["path"]: r for r in map(json.loads, log.read_text().splitlines())}
        except FileNotFoundError:
            return {}
    assert wait_for(lambda: {"/", "/first", "/second"} <= set(lines()), 5), log.read_text()
    seen = lines()
    assert (seen["/"]["early_data"], seen["/first"]["early_data"], seen["/second"]["early_data"]) == \
        (False, True, False), seen
    assert seen["/first"]["session_reused"] is True
