"""What a route or server block adds to responses and answers itself (model.AddHeader, Answer,
ErrorPage; nginx add_header, return, error_page, keepalive_timeout's header), sans-IO: the
model compiled by plan.py, heads fed to the Exchange. TOML carries the same fields."""

from __future__ import annotations

import pytest
from fastterm._core import ClientFacts, Exchange, SiteTable, UpstreamPool

from fastterm.config.model import AddHeader, Answer, Certificate, Config, ErrorPage, Route, Server, Upstream
from fastterm.config.plan import _server_policy

R_FINAL, R_INTERCEPT = 0, 4


def server(**kw) -> Server:
    kw.setdefault("routes", [Route(path="/", upstream="notes")])
    return Server(listen=["127.0.0.1:8443"], certificates=[Certificate(cert="x.pem")],
                  server_names=["api.example.com"], **kw)


def exchange(model: Server, port: int = 8443) -> Exchange:
    pools = {"notes": UpstreamPool("notes", [("127.0.0.1", 1)])}
    policy = _server_policy(model, pools, 0)
    facts = ClientFacts("192.0.2.7", SiteTable({"api.example.com": policy}, policy))
    facts.connection(peer_port=50000, server_addr="127.0.0.1", server_port=port)
    return Exchange(facts)


def head(*lines: str) -> bytes:
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


def fields(raw: bytes) -> list[tuple[str, str]]:
    lines = raw.split(b"\r\n\r\n", 1)[0].decode("latin-1").split("\r\n")[1:]
    return [tuple(x.strip() for x in line.split(":", 1)) for line in lines if line]


def status_of(raw: bytes) -> int:
    return int(raw.split(b" ", 2)[1])


def proxied(model: Server, target: str, response: bytes, **kw) -> list[tuple[str, str]]:
    ex = exchange(model)
    status, _ = ex.feed_request(head(f"GET {target} HTTP/1.1", "Host: api.example.com"), **kw)
    assert status == 0
    r, out = ex.feed_response(response)
    assert r == R_FINAL
    return fields(out)


HEADERS = [AddHeader(name="Strict-Transport-Security", value="max-age=1", always=True),
           AddHeader(name="X-Content-Type-Options", value="nosniff")]


@pytest.mark.parametrize("status, added", [
    (200, ["max-age=1", "nosniff"]), (204, ["max-age=1", "nosniff"]), (304, ["max-age=1", "nosniff"]),
    (308, ["max-age=1", "nosniff"]), (404, ["max-age=1"]), (500, ["max-age=1"]), (202, ["max-age=1"]),
])
def test_add_header_always_or_on_nginx_success_statuses(status, added):
    got = proxied(server(add_headers=HEADERS), "/", head(f"HTTP/1.1 {status} X", "Content-Length: 0"))
    assert [v for n, v in got if n in ("Strict-Transport-Security", "X-Content-Type-Options")] == added


def test_a_backend_field_of_the_same_name_is_kept_beside_ours():
    got = proxied(server(add_headers=HEADERS), "/", head("HTTP/1.1 200 OK", "Content-Length: 0",
                                                         "Strict-Transport-Security: max-age=9"))
    assert [v for n, v in got if n == "Strict-Transport-Security"] == ["max-age=9", "max-age=1"]


def test_hsts_still_replaces_the_backends():
    """TOML's ``hsts`` keeps its meaning: one Strict-Transport-Security, fastterm's."""
    got = proxied(server(hsts="max-age=5"), "/", head("HTTP/1.1 200 OK", "Content-Length: 0",
                                                      "Strict-Transport-Security: max-age=9"))
    assert [v for n, v in got if n == "Strict-Transport-Security"] == ["max-age=5"]


def test_a_route_with_its_own_add_header_loses_the_servers():
    model = server(add_headers=HEADERS, routes=[
        Route(path="/", upstream="notes"),
        Route(path="/framed/", upstream="notes", add_headers=[AddHeader(name="X-Frame-Options", value="DENY")])])
    ok = head("HTTP/1.1 200 OK", "Content-Length: 0")
    assert [n for n, _ in proxied(model, "/framed/a", ok)] == ["Content-Length", "X-Frame-Options"]
    assert [n for n, _ in proxied(model, "/a", ok)] == ["Content-Length", "Strict-Transport-Security",
                                                        "X-Content-Type-Options"]


def test_add_header_variables_and_an_empty_value():
    model = server(add_headers=[AddHeader(name="X-Seen", value="$host:$server_port $request_uri $remote_addr",
                                          always=True),
                                AddHeader(name="X-Empty", value="$http_x_none", always=True)])
    got = proxied(model, "/p?q=1", head("HTTP/1.1 502 Bad", "Content-Length: 0"))
    assert ("X-Seen", "api.example.com:8443 /p?q=1 192.0.2.7") in got
    assert "X-Empty" not in [n for n, _ in got]


def test_own_answers_carry_add_header():
    ex = exchange(server(add_headers=HEADERS))
    assert ex.feed_request(head("GET / HTTP/1.1", "Host: api.example.com"))[0] == 0
    ex.abort()
    page = ex.error_page(502)
    assert status_of(page) == 502
    assert [n for n, _ in fields(page) if n.startswith(("Strict", "X-Content"))] == ["Strict-Transport-Security"]


def test_keepalive_header_on_responses_that_keep_the_connection():
    got = proxied(server(), "/", head("HTTP/1.1 200 OK", "Content-Length: 0"), keepalive_header=25)
    assert ("Keep-Alive", "timeout=25") in got
    ex = exchange(server())
    ex.feed_request(head("GET / HTTP/1.1", "Host: api.example.com", "Connection: close"), keepalive_header=25)
    _, out = ex.feed_response(head("HTTP/1.1 200 OK", "Content-Length: 0"))
    assert "Keep-Alive" not in [n for n, _ in fields(out)]


def answered(model: Server, target: str, host: str = "api.example.com", method: str = "GET"):
    ex = exchange(model)
    status, up = ex.feed_request(head(f"{method} {target} HTTP/1.1", f"Host: {host}"))
    assert up is None and ex.answering
    return status, ex.error_page(status, True)


@pytest.mark.parametrize("answer, target, status, location", [
    (Answer(status=302, location="/login"), "/signin", 302, "https://api.example.com:8443/login"),
    (Answer(status=301, location="https://$host/new$request_uri"), "/old/x?y=1", 301,
     "https://api.example.com/new/old/x?y=1"),
    (Answer(status=308, location="$scheme://$server_name/moved"), "/perm", 308, "https://api.example.com/moved"),
])
def test_return_redirects(answer, target, status, location):
    model = server(routes=[Route(path="/", upstream="notes"), Route(path=target.split("?")[0], answer=answer)])
    got_status, page = answered(model, target)
    assert got_status == status and status_of(page) == status
    assert ("Location", location) in fields(page)
    assert b"Connection: close" not in page


def test_return_text_and_bodiless_statuses():
    model = server(routes=[Route(path="/text", answer=Answer(status=200, text="host=$host\n")),
                           Route(path="/teapot", answer=Answer(status=418)),
                           Route(path="/gone", answer=Answer(status=410))])
    _, page = answered(model, "/text")
    assert page.endswith(b"\r\n\r\nhost=api.example.com\n") and ("Content-Type", "text/plain") in fields(page)
    _, page = answered(model, "/teapot")    # nginx has no page for 418: an empty body
    assert page.endswith(b"\r\n\r\n") and ("Content-Length", "0") in fields(page)
    assert "Content-Type" not in [n for n, _ in fields(page)]
    _, page = answered(model, "/gone")
    assert ("Content-Type", "text/html") in fields(page)


def test_return_444_closes_without_an_answer():
    model = server(routes=[Route(path="/", answer=Answer(status=444))])
    status, page = answered(model, "/")
    assert status == 444 and page == b""


def test_server_level_return_answers_every_path():
    model = server(answer=Answer(status=503, text="maintenance"))
    status, page = answered(model, "/any/path")
    assert status == 503 and page.endswith(b"maintenance")


DOWN = Answer(status=503, text="down\n", add_headers=[AddHeader(name="Retry-After", value="30", always=True)])


@pytest.mark.parametrize("page, want_status, want", [
    (ErrorPage(codes=[502], redirect="https://status.example.com/"), 302, ("Location", "https://status.example.com/")),
    (ErrorPage(codes=[502], status=301, redirect="https://s.example/"), 301, ("Location", "https://s.example/")),
    (ErrorPage(codes=[502], answer=DOWN), 502, ("Retry-After", "30")),          # the error's status kept
    (ErrorPage(codes=[502], status=0, answer=DOWN), 503, ("Retry-After", "30")),  # "=": the answer's own
    (ErrorPage(codes=[502], status=200, answer=DOWN), 200, ("Retry-After", "30")),
])
def test_error_pages_on_our_own_errors(page, want_status, want):
    ex = exchange(server(add_headers=HEADERS, error_pages=[page]))
    assert ex.feed_request(head("GET / HTTP/1.1", "Host: api.example.com"))[0] == 0
    ex.abort()
    answer = ex.error_page(502)
    assert status_of(answer) == want_status and want in fields(answer)
    if page.answer is not None:
        assert answer.endswith(b"down\n")
        assert "Strict-Transport-Security" not in [n for n, _ in fields(answer)]   # the named location's own


def test_intercept_errors_only_for_statuses_with_a_page():
    model = server(routes=[Route(path="/", upstream="notes", intercept_errors=True,
                                 error_pages=[ErrorPage(codes=[404], status=410, answer=Answer(status=410, text="gone"))])])
    ex = exchange(model)
    ex.feed_request(head("GET /x HTTP/1.1", "Host: api.example.com"))
    r, _ = ex.feed_response(head("HTTP/1.1 404 Not Found", "Content-Length: 3"))
    assert r == R_INTERCEPT and ex.error_status == 404
    page = ex.error_page(ex.error_status)
    assert status_of(page) == 410 and page.endswith(b"gone")
    ex = exchange(model)
    ex.feed_request(head("GET /x HTTP/1.1", "Host: api.example.com"))
    assert ex.feed_response(head("HTTP/1.1 500 Oops", "Content-Length: 0"))[0] == R_FINAL


def test_toml_round_trip_and_errors_at_their_line(tmp_path):
    from fastterm.config.toml import dump_config, load_config
    from fastterm.errors import ConfigError

    model = server(add_headers=HEADERS, error_pages=[ErrorPage(codes=[502, 504], answer=DOWN)],
                   routes=[Route(path="/", upstream="notes", intercept_errors=True),
                           Route(path="/old", answer=Answer(status=301, location="https://$host/new"))])
    model = Server(**{**{f: getattr(model, f) for f in model.__struct_fields__},
                      "certificates": [Certificate(cert=str(tmp_path / "x.pem"))]})
    config = Config(servers=[model], upstreams=[Upstream(name="notes", servers=["127.0.0.1:81"])])
    path = tmp_path / "fastterm.toml"
    text = dump_config(config)
    path.write_text(text)
    assert load_config(str(path)) == config
    path.write_text(text + "\n[limits]\nkeepalive_header = 20\n")
    assert load_config(str(path)).limits.keepalive_header == 20
    for old, new, why in (('status = 301', 'status = 305', "status 305"),
                          ('"https://$host/new"', '"https://$uri"', r"\$uri"),
                          ('codes = [', 'codes = [200, ', "between 300 and 599")):
        assert old in text
        path.write_text(text.replace(old, new))
        with pytest.raises(ConfigError, match=why) as info:
            load_config(str(path))
        assert info.value.line is not None


def test_a_chunked_body_is_read_whole_under_nginx_s_rewrite_when_bounded():
    """nginx's proxy_request_buffering: the codec buffers the body (up to client_max_body_size)
    and the head gets its Content-Length then; with no limit it goes chunked."""
    from fastterm.config.model import ProxyRequest

    model = server(routes=[Route(path="/", upstream="notes", proxy=ProxyRequest())])
    raw = head("POST / HTTP/1.1", "Host: api.example.com", "Transfer-Encoding: chunked", "X-A: 1")
    ex = exchange(model)
    status, up = ex.feed_request(raw, max_body=1024)
    assert status == 0 and ex.buffer_body
    assert "Transfer-Encoding" not in [n for n, _ in fields(up)]
    ex = exchange(model)
    status, up = ex.feed_request(raw)
    assert status == 0 and not ex.buffer_body
    assert ("Transfer-Encoding", "chunked") in fields(up)
