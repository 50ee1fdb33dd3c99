"""Port 80 with nginx's ``return`` semantics (a ``[[redirect]]`` with ``location`` or ``text``):
keep-alive and its bounds, pipelining, server blocks by host, through real clients (curl,
http.client, raw sockets). fastterm's own redirect (``listen`` + ``https_port`` only) is in
test_proxy_http.py and test_hardening_proxy.py."""

from __future__ import annotations

import http.client
import signal
import socket
import subprocess
import time

import pytest
from harness import HOST, wait_for
from httpwire import Reader, closed_by_peer, read_response

NGINX_LIKE = {"location": "https://$host$request_uri", "keepalive_requests": 1000}


@pytest.fixture
def plain(fastterm, demo_backend):
    def start(redirects=(NGINX_LIKE,), **options):
        return fastterm(demo_backend, redirects=list(redirects), **options)
    return start


def test_http_client_reuses_the_connection(plain):
    ft = plain()
    conn = http.client.HTTPConnection(HOST, ft.http_port, timeout=5)
    try:
        for i in range(3):
            conn.request("GET", f"/p{i}?q=1", headers={"Host": "Example.COM:80"})
            r = conn.getresponse()
            r.read()
            assert r.status == 301
            assert r.getheader("Location") == f"https://example.com/p{i}?q=1"
            assert r.getheader("Connection") == "keep-alive"
            if i == 0:
                sock = conn.sock
            assert conn.sock is sock, "the connection was not kept"
    finally:
        conn.close()


def test_curl_reuses_the_connection_for_two_urls(plain):
    ft = plain()
    url = f"http://127.0.0.1:{ft.http_port}"
    out = subprocess.run(["curl", "-sv", "--max-time", "5", "-H", "Host: a.test", f"{url}/one", f"{url}/two"],
                         capture_output=True, timeout=10, check=False)
    err = out.stderr.decode("latin-1")
    assert out.returncode == 0, err
    assert "Re-using existing connection" in err or "Reusing existing connection" in err, err
    assert "Location: https://a.test/two" in err, err


def test_pipelined_requests_are_answered_in_order(plain):
    ft = plain()
    reqs = b"".join(b"GET /%d HTTP/1.1\r\nHost: a.test\r\n\r\n" % i for i in range(50))
    reqs += b"POST /body HTTP/1.1\r\nHost: a.test\r\nContent-Length: 4\r\n\r\nGET "
    reqs += b"POST /chunked HTTP/1.1\r\nHost: a.test\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n"
    reqs += b"GET /last HTTP/1.1\r\nHost: a.test\r\nConnection: close\r\n\r\n"
    with socket.create_connection((HOST, ft.http_port), timeout=5) as s:
        s.sendall(reqs)
        rd = Reader(s)
        targets = [f"/{i}" for i in range(50)] + ["/body", "/chunked", "/last"]
        for target in targets:
            r = read_response(rd)
            assert r.header("Location") == f"https://a.test{target}"
        assert r.header("Connection") == "close"
        assert rd.read_to_eof() == b""


def test_keepalive_requests_caps_a_connection(plain):
    ft = plain([dict(NGINX_LIKE, keepalive_requests=3)])
    with socket.create_connection((HOST, ft.http_port), timeout=5) as s:
        rd = Reader(s)
        for i in range(3):
            s.sendall(b"GET /%d HTTP/1.1\r\nHost: a.test\r\n\r\n" % i)
            r = read_response(rd)
            assert r.status == 301
            assert r.header("Connection") == ("close" if i == 2 else "keep-alive")
        assert closed_by_peer(s, timeout=3)


def test_idle_keepalive_connection_closes_after_keepalive_timeout(plain):
    ft = plain([dict(NGINX_LIKE, keepalive_timeout=1.0)])
    with socket.create_connection((HOST, ft.http_port), timeout=5) as s:
        s.sendall(b"GET / HTTP/1.1\r\nHost: a.test\r\n\r\n")
        read_response(Reader(s))
        start = time.monotonic()
        assert closed_by_peer(s, timeout=4)
        assert 0.8 < time.monotonic() - start < 3


def test_next_head_has_client_header_timeout(plain):
    """After an answer, a dripped second head is closed by client_header_timeout (2 s here)."""
    ft = plain()
    with socket.create_connection((HOST, ft.http_port), timeout=5) as s:
        s.sendall(b"GET / HTTP/1.1\r\nHost: a.test\r\n\r\n")
        read_response(Reader(s))
        start = time.monotonic()
        with pytest.raises(OSError):
            for ch in b"GET / HTTP/1.1\r\nHost: a.test\r\nX-Drip: " + b"x" * 40:
                s.sendall(bytes([ch]))
                time.sleep(0.25)
        assert time.monotonic() - start < 5


def test_a_client_that_does_not_read_is_not_buffered_for(plain):
    """Pipelined requests from a client that reads no answers: fastterm stops reading (the
    kernel buffers fill and the client's send blocks) and closes it after send_timeout."""
    ft = plain(limits={"send_timeout": 2})
    request = b"GET /" + b"x" * 900 + b" HTTP/1.1\r\nHost: a.test\r\n\r\n"
    s = socket.create_connection((HOST, ft.http_port), timeout=5)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    s.settimeout(3)
    sent = 0
    with pytest.raises(OSError):
        while sent < 200 << 20:
            s.sendall(request * 64)
            sent += len(request) * 64
    assert sent < 16 << 20, f"fastterm read {sent} bytes of requests nobody read answers to"
    assert closed_by_peer(s, timeout=6)
    s.close()
    with socket.create_connection((HOST, ft.http_port), timeout=5) as other:
        other.sendall(b"GET /ok HTTP/1.1\r\nHost: a.test\r\n\r\n")
        assert read_response(Reader(other)).status == 301


def test_server_blocks_by_host_and_text_answers(plain):
    ft = plain([
        {"server_names": ["a.test"], "status": 302, "location": "https://$server_name:8443$uri$is_args$args",
         "keepalive_requests": 10},
        {"server_names": ["_"], "default_server": True, "status": 404, "text": "no site $host\n",
         "keepalive_requests": 10},
        {"server_names": ["*.b.test"], "status": 308, "location": "/moved$request_uri", "keepalive_requests": 10},
    ])
    conn = http.client.HTTPConnection(HOST, ft.http_port, timeout=5)
    try:
        def get(target, host):
            conn.request("GET", target, headers={"Host": host})
            r = conn.getresponse()
            return r.status, r.getheader("Location"), r.getheader("Content-Type"), r.read()

        assert get("/x/../y%20z?q", "A.test") == (302, "https://a.test:8443/y z?q", "text/html", get("/", "a.test")[3])
        assert get("/x", "other.test") == (404, None, "text/plain", b"no site other.test\n")
        assert get("/x", "deep.c.b.test")[:2] == (308, f"http://deep.c.b.test:{ft.http_port}/moved/x")
        assert get("http://a.test/abs", "other.test")[:2] == (302, "https://a.test:8443/abs")
    finally:
        conn.close()


def test_reload_answers_the_next_request_then_closes(plain):
    """Draining (reload): a keep-alive connection's next answer says Connection: close and the
    connection closes after it; a new connection goes to the new workers."""
    ft = plain(limits={"drain_timeout": 10})
    with socket.create_connection((HOST, ft.http_port), timeout=5) as s:
        rd = Reader(s)
        s.sendall(b"GET /1 HTTP/1.1\r\nHost: a.test\r\n\r\n")
        assert read_response(rd).header("Connection") == "keep-alive"
        ft.proc.send_signal(signal.SIGHUP)
        assert wait_for(lambda: "reloaded: generation 2 serving" in ft.log(), timeout=10)
        time.sleep(0.5)   # the old worker's SIGTERM handler runs
        s.sendall(b"GET /2 HTTP/1.1\r\nHost: a.test\r\n\r\n")
        r = read_response(rd)
        assert (r.status, r.header("Connection")) == (301, "close")
        assert rd.read_to_eof() == b""
    with socket.create_connection((HOST, ft.http_port), timeout=5) as s:
        s.sendall(b"GET /3 HTTP/1.1\r\nHost: a.test\r\n\r\n")
        assert read_response(Reader(s)).header("Connection") == "keep-alive"


def test_many_pipelined_requests_in_one_write(plain):
    """20,000 requests (1.2 MB) in one write, read while they are sent: all answered, in order."""
    count = 20000
    ft = plain([dict(NGINX_LIKE, keepalive_requests=count + 1)])
    reqs = b"".join(b"GET /%d HTTP/1.1\r\nHost: a.test\r\n\r\n" % i for i in range(count))
    start = time.monotonic()
    with socket.create_connection((HOST, ft.http_port), timeout=10) as s:
        import threading

        sender = threading.Thread(target=s.sendall, args=(reqs,))
        sender.start()
        rd = Reader(s)
        for i in range(count):
            r = read_response(rd)
            assert r.header("Location") == f"https://a.test/{i}"
        sender.join(timeout=10)
    assert time.monotonic() - start < 20
    assert not sender.is_alive()


def test_a_head_over_the_limit_is_refused_even_in_one_write(plain):
    ft = plain()
    with socket.create_connection((HOST, ft.http_port), timeout=5) as s:
        s.sendall(b"GET / HTTP/1.1\r\nHost: a.test\r\nX-Big: " + b"b" * 20000 + b"\r\n\r\n")
        rd = Reader(s)
        assert read_response(rd).status == 431
        assert rd.read_to_eof() == b""
