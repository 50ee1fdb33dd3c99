"""nginx's proxy_next_upstream in ``fastterm run --nginx``, with real backends: a read timeout
and a listed status go on to the next server, ``off`` and a POST do not, and the last server's
answer is passed (tests/differential/configs/next_upstream.conf compares more with nginx)."""

from __future__ import annotations

import time

import pytest
from h2wire import h2_request
from harness import response_bytes
from test_nginx_mode import certs, get, nginx_mode  # noqa: F401  (fixtures and the client)

CONFIG = """\
proxy_read_timeout 1s;
upstream slow_first {{ server {slow}; server {good}; }}
upstream slow_first_off {{ server {slow}; server {good}; }}
upstream bad_first {{ server {bad}; server {good}; }}
upstream bad_first_h2 {{ server {bad}; server {good}; }}
upstream bad_first_post {{ server {bad}; server {good}; }}
upstream bad_only {{ server {bad}; server {bad2}; }}
server {{
    listen {host}:{https} ssl http2;
    server_name www.example.com;
    ssl_certificate certs/www.crt;
    ssl_certificate_key certs/www.key;
    location /timeout/ {{ proxy_pass http://slow_first; }}
    location /timeout-off/ {{ proxy_next_upstream off; proxy_pass http://slow_first_off; }}
    location /status/ {{ proxy_next_upstream error timeout http_503; proxy_pass http://bad_first; }}
    location /status-h2/ {{ proxy_next_upstream http_503; proxy_pass http://bad_first_h2; }}
    location /post/ {{ proxy_next_upstream http_503; proxy_pass http://bad_first_post; }}
    location /last/ {{ proxy_next_upstream http_503; proxy_pass http://bad_only; }}
}}
"""


@pytest.fixture
def backends(raw_backend):
    def slow(conn):
        if conn.read_request() is not None:
            time.sleep(2.5)   # past proxy_read_timeout, then gone

    def good(conn):
        while (req := conn.read_request()) is not None:
            conn.send(response_bytes(200, f"good {req.target}".encode()))

    def bad(conn):
        while (req := conn.read_request()) is not None:
            conn.send(response_bytes(503, f"bad {req.target}".encode()))

    return {"slow": raw_backend(slow), "good": raw_backend(good), "bad": raw_backend(bad),
            "bad2": raw_backend(bad)}


@pytest.fixture
def ft(request, backends):
    start = request.getfixturevalue("nginx_mode")   # test_nginx_mode's fixture, imported above
    return start(CONFIG, **{name: be.address for name, be in backends.items()})


def targets(be) -> list[str]:
    return [r.target for r in be.requests]


def test_a_read_timeout_goes_on_to_the_next_server(ft, backends):
    response, _ = get(ft, "/timeout/a")
    assert (response.status, response.body) == (200, b"good /timeout/a")
    assert targets(backends["slow"]) == ["/timeout/a"]


def test_off_answers_504_at_the_read_timeout(ft, backends):
    response, _ = get(ft, "/timeout-off/a")
    assert response.status == 504
    assert targets(backends["slow"]) == ["/timeout-off/a"]
    assert targets(backends["good"]) == []


def test_a_listed_status_is_dropped_and_the_next_server_answers(ft, backends):
    response, _ = get(ft, "/status/a")
    assert (response.status, response.body) == (200, b"good /status/a")
    response = h2_request(ft, "GET", "/status-h2/b", host="www.example.com")
    assert (response.status, response.body) == (200, b"good /status-h2/b")
    assert targets(backends["bad"]) == ["/status/a", "/status-h2/b"]


def test_a_post_is_not_replayed_without_non_idempotent(ft, backends):
    with ft.connect(server_hostname="www.example.com") as sock:
        sock.sendall(b"POST /post/a HTTP/1.1\r\nHost: www.example.com\r\nContent-Length: 0\r\n\r\n")
        data = sock.recv(65536)
    assert data.startswith(b"HTTP/1.1 503 ")
    assert targets(backends["bad"]) == ["/post/a"] and targets(backends["good"]) == []


def test_the_last_servers_answer_is_passed(ft, backends):
    response, _ = get(ft, "/last/a")
    assert (response.status, response.body) == (503, b"bad /last/a")
    assert len(backends["bad"].requests) + len(backends["bad2"].requests) == 2
