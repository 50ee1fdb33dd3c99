"""``fastterm run --nginx nginx.conf``: real nginx configs served to real TLS clients.

The seed's shape (HSTS, X-Forwarded-Proto and X-Real-IP reaching the backend, the port-80
301), two SNI servers with their own certificates, reload re-reading the nginx file (and a
broken one leaving the running instance untouched), and ``check``/``convert`` exit codes.
"""

from __future__ import annotations

import signal
import socket
import ssl
import subprocess
import time
from pathlib import Path

import pytest
from h2wire import h2_client, h2_request
from harness import HOST, Fastterm, echo_json, free_port, header_map, response_bytes, wait_for
from httpwire import Reader, read_response, request_bytes

SEED = """\
upstream notes {{
    server {backend};
}}
server {{
listen {host}:{https} ssl;
server_name www.example.com;
ssl_certificate certs/www.crt;
ssl_certificate_key certs/www.key;
ssl_protocols TLSv1.2 TLSv1.3;
ssl_ciphers ECDHE-ECDSA-AES128-GCM-SHA256:ECDHE-RSA-AES128-GCM-SHA256:ECDHE-ECDSA-AES256-GCM-SHA384:ECDHE-RSA-AES256-GCM-SHA384:ECDHE-ECDSA-CHACHA20-POLY1305:ECDHE-RSA-CHACHA20-POLY1305:DHE-RSA-AES128-GCM-SHA256;
ssl_prefer_server_ciphers off;
ssl_session_timeout 1d;
ssl_session_cache shared:SSL:10m;
ssl_session_tickets off;
add_header Strict-Transport-Security "{hsts}" always;
location / {{
proxy_pass http://notes;
proxy_set_header X-Forwarded-Proto $scheme;
proxy_set_header X-Real-IP $remote_addr;
}}
}}
server {{
listen {host}:{http};
server_name www.example.com;
return 301 https://$host$request_uri;
}}
"""

TWO_SNI = """\
upstream app {{ server {backend}; }}
server {{
    listen {host}:{https} ssl;
    server_name www.example.com;
    ssl_certificate certs/www.crt;
    ssl_certificate_key certs/www.key;
    add_header Strict-Transport-Security "max-age=1" always;
    location / {{ proxy_pass http://app; }}
}}
server {{
    listen {host}:{https} ssl;
    server_name other.test;
    ssl_certificate certs/other.crt;
    ssl_certificate_key certs/other.key;
    add_header Strict-Transport-Security "max-age=2" always;
    location / {{ proxy_pass http://app; }}
}}
"""


PROXY_HEADERS = """\
upstream app {{ server {backend}; keepalive 4; }}
server {{
    listen {host}:{https} ssl http2;
    server_name www.example.com;
    ssl_certificate certs/www.crt;
    ssl_certificate_key certs/www.key;
    proxy_set_header Host $host;
    proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
    proxy_set_header X-Conn "$server_port $ssl_protocol $request_method $request_uri";
    location / {{ proxy_pass http://app; }}
    location /kept/ {{
        proxy_pass http://app;
        proxy_http_version 1.1;
        proxy_set_header Connection "";
    }}
}}
"""


@pytest.fixture
def certs(write, ec_leaf, other_leaf, intermediate):
    write("certs/www.crt", ec_leaf.cert_pem + intermediate.cert_pem)
    write("certs/www.key", ec_leaf.key_pem)
    write("certs/other.crt", other_leaf.cert_pem + intermediate.cert_pem)
    write("certs/other.key", other_leaf.key_pem)


@pytest.fixture
def cli(python, subprocess_env, tmp_path):
    def run(*args: str, timeout: float = 60) -> subprocess.CompletedProcess:
        return subprocess.run([python, "-m", "fastterm", *args], capture_output=True, text=True,
                              env=subprocess_env, cwd=tmp_path, timeout=timeout, check=False)

    return run


@pytest.fixture
def nginx_mode(tmp_path, write, certs, ca_file, subprocess_env, python):
    """``nginx_mode(template, **fields) -> Fastterm``: the template with free ports filled in,
    served by ``python -m fastterm run --nginx FILE --pid-file FILE``."""
    started: list[Fastterm] = []

    def start(template: str, **fields) -> Fastterm:
        n = len(started)
        https_port, http_port = free_port(), free_port()
        path = write(f"nginx{n}.conf", template.format(host=HOST, https=https_port, http=http_port, **fields))
        output = str(tmp_path / f"fastterm{n}.out")
        with open(output, "wb") as out:
            proc = subprocess.Popen([python, "-m", "fastterm", "run", "--nginx", path,
                                     "--pid-file", str(tmp_path / f"fastterm{n}.pid")],
                                    stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                    env=subprocess_env, cwd=tmp_path)
        ft = Fastterm(proc, https_port, http_port if "{http}" in template else None, ca_file, output, output, path)
        started.append(ft)
        deadline = time.monotonic() + 15
        while True:
            if proc.poll() is not None:
                pytest.fail(f"fastterm exited with {proc.returncode}:\n{ft.log()}")
            if time.monotonic() > deadline:
                pytest.fail(f"fastterm did not serve within 15 s:\n{ft.log()}")
            try:
                ctx = ssl.create_default_context(cafile=ca_file)
                ctx.check_hostname = False
                ctx.wrap_socket(socket.create_connection((HOST, https_port), timeout=2)).close()
                if ft.http_port:
                    socket.create_connection((HOST, ft.http_port), timeout=1).close()
                return ft
            except (OSError, ssl.SSLError):
                time.sleep(0.05)

    yield start
    for ft in started:
        ft.stop()
    crashed = [ft.log() for ft in started if "Traceback (most recent call last)" in ft.log()]
    if crashed:
        pytest.fail("fastterm logged a traceback:\n" + crashed[0][-6000:], pytrace=False)


def get(ft: Fastterm, target: str = "/", sni: str = "www.example.com", host: str | None = None,
        headers: list[tuple[str, str]] | None = None):
    with ft.connect(server_hostname=sni) as sock:
        sock.sendall(request_bytes("GET", target, host or sni, headers))
        return read_response(Reader(sock)), sock.getpeercert()


def test_seed_config_serves_hsts_forwarded_headers_and_the_redirect(nginx_mode, demo_backend):
    ft = nginx_mode(SEED, backend=demo_backend, hsts="max-age=63072000")
    response, _ = get(ft, "/echo?q=1")
    assert response.header("Strict-Transport-Security") == "max-age=63072000"
    seen = header_map(echo_json(response))
    assert seen["x-forwarded-proto"] == ["https"]
    assert seen["x-real-ip"] == ["127.0.0.1"]

    with socket.create_connection((HOST, ft.http_port), timeout=5) as sock:
        sock.sendall(b"GET /a/b?c=d HTTP/1.1\r\nHost: www.example.com\r\n\r\n")
        redirect = read_response(Reader(sock))
    assert redirect.status == 301
    assert redirect.header("Location") == "https://www.example.com/a/b?c=d"   # $host$request_uri, port 443


def test_two_sni_servers_with_their_own_certificates(nginx_mode, demo_backend):
    ft = nginx_mode(TWO_SNI, backend=demo_backend)
    for sni, hsts in (("www.example.com", "max-age=1"), ("other.test", "max-age=2")):
        response, cert = get(ft, "/", sni=sni)
        names = [v for k, v in cert["subjectAltName"] if k == "DNS"]
        assert sni in names, (sni, names)
        assert response.status == 200
        assert response.header("Strict-Transport-Security") == hsts


def test_reload_rereads_the_nginx_file_and_a_broken_one_changes_nothing(nginx_mode, demo_backend, cli, tmp_path):
    # worker_shutdown_timeout: the drain deadline, so the stop at the end takes a second.
    main = "worker_shutdown_timeout 1s;\nevents {{}}\nhttp {{\n" + SEED + "}}\n"
    ft = nginx_mode(main, backend=demo_backend, hsts="max-age=1")
    path = Path(ft.config_path)
    pid_file = str(tmp_path / "fastterm0.pid")
    path.write_text(path.read_text().replace("max-age=1", "max-age=2"))
    assert cli("reload", "--nginx", str(path), "--pid-file", pid_file).returncode == 0
    assert wait_for(lambda: get(ft)[0].header("Strict-Transport-Security") == "max-age=2", timeout=10)

    path.write_text(path.read_text().replace("ssl_session_tickets off;",
                                             "ssl_session_tickets off;\nssl_crl crl.pem;"))
    refused = cli("reload", "--nginx", str(path), "--pid-file", pid_file)
    assert refused.returncode == 1
    assert f'{path}:{line_of(path, "ssl_crl crl.pem")}: "ssl_crl" is not supported yet' \
        in refused.stderr
    ft.proc.send_signal(signal.SIGHUP)        # the master validates it too, and keeps serving
    assert wait_for(lambda: "reload failed" in ft.log(), timeout=10), ft.log()
    assert get(ft)[0].header("Strict-Transport-Security") == "max-age=2"
    assert ft.alive()

    # Like nginx -s, the control commands read the configuration (a broken one is refused).
    path.write_text(path.read_text().replace("ssl_crl crl.pem;", ""))
    status = cli("status", "--nginx", str(path), "--pid-file", pid_file)
    assert status.returncode == 0 and f"master {ft.pid} running" in status.stdout
    assert cli("stop", "--nginx", str(path), "--pid-file", pid_file, "--wait").returncode == 0
    assert wait_for(lambda: not ft.alive(), timeout=10)


def line_of(path: Path, needle: str) -> int:
    return next(i for i, line in enumerate(path.read_text().splitlines(), start=1) if needle in line)


def test_check_exit_codes(cli, write, certs, demo_backend):
    good = write("good.conf", SEED.format(host=HOST, https=free_port(), http=free_port(), backend=demo_backend,
                                          hsts="max-age=1"))
    result = cli("check", "--nginx", good)
    assert result.returncode == 0, result.stderr
    assert f"fastterm: configuration file {good} test is successful" in result.stdout

    broken = write("broken.conf", Path(good).read_text().replace("proxy_pass http://notes;",
                                                                 "proxy_pass http://notes"))
    result = cli("check", "--nginx", broken)
    assert result.returncode == 1
    line = line_of(Path(broken), "proxy_pass")
    # The next line's words become proxy_pass arguments, as nginx reads it too.
    assert f'fastterm: [emerg] {broken}:{line}: invalid number of arguments in "proxy_pass" directive' \
        in result.stderr
    assert f"fastterm: configuration file {broken} test failed" in result.stderr
    assert "Traceback" not in result.stderr

    unsupported = write("crl.conf", Path(good).read_text().replace("ssl_session_tickets off;", "ssl_crl crl.pem;"))
    result = cli("check", "--nginx", unsupported)
    assert result.returncode == 1 and '"ssl_crl" is not supported yet' in result.stderr

    with_warning = write("warn.conf", "worker_processes 1;\npid /run/nginx.pid;\nevents {}\nhttp {\n"
                         + Path(good).read_text() + "}\n")
    result = cli("check", "--nginx", with_warning)
    assert result.returncode == 0, result.stderr
    assert f'fastterm: [warn] {with_warning}:2: "pid" is ignored' in result.stderr

    assert cli("check", "--nginx", good, "-c", good).returncode == 2      # one or the other
    assert cli("check").returncode == 2


def test_convert_prints_a_toml_that_checks(cli, write, certs, demo_backend):
    good = write("site.conf", TWO_SNI.format(host=HOST, https=free_port(), backend=demo_backend))
    result = cli("convert", "--nginx", good)
    assert result.returncode == 0, result.stderr
    toml = write("converted.toml", result.stdout)
    checked = cli("check", "-c", toml)
    assert checked.returncode == 0, checked.stderr + result.stdout


@pytest.mark.parametrize("client", ["h1", "h2"])
def test_upstream_request_is_nginx_s(nginx_mode, demo_backend, client):
    """nginx's proxy module: HTTP/1.0 and Connection: close unless proxy_http_version 1.1 and
    Connection ""; the config's fields in order, then the client's; no X-Forwarded-* of ours."""
    ft = nginx_mode(PROXY_HEADERS, backend=demo_backend)
    fields = [("X-Forwarded-For", "203.0.113.7"), ("X-Custom", "kept")]
    if client == "h1":
        response, _ = get(ft, "/echo?q=1", host="WWW.Example.com:8443", headers=fields)
    else:
        response = h2_request(ft, "GET", "/echo?q=1", host="WWW.Example.com:8443", headers=fields)
    echo = echo_json(response)
    assert echo["version"] == "1.0"
    assert [(n.lower(), v) for n, v in echo["headers"]] == [
        ("host", "www.example.com"), ("x-forwarded-for", "203.0.113.7, 127.0.0.1"),
        ("x-conn", f"{ft.https_port} TLSv1.3 GET /echo?q=1"), ("connection", "close"), ("x-custom", "kept")]
    kept = echo_json(get(ft, "/kept/echo")[0])
    assert kept["version"] == "1.1"
    assert "connection" not in header_map(kept) and "x-real-ip" not in header_map(kept)


def send(ft: Fastterm, raw: bytes, sni: str = "www.example.com"):
    with ft.connect(server_hostname=sni) as sock:
        sock.sendall(raw)
        return read_response(Reader(sock))


def test_server_block_by_host_nginx_s_way(nginx_mode, demo_backend):
    """nginx's server selection: no Host (HTTP/1.0) -> the address's default server whatever the
    SNI; an absolute-form target's host beats Host; a Host naming a block with other TLS
    settings is served by it (no 421). The HSTS value says which block answered."""
    ft = nginx_mode(TWO_SNI.replace("server_name other.test;",
                                    "server_name other.test;\n    ssl_ciphers ECDHE-ECDSA-AES256-GCM-SHA384;"),
                    backend=demo_backend)
    no_host = send(ft, request_bytes("GET", "/echo", None, version="HTTP/1.0"), sni="other.test")
    assert no_host.status == 200 and no_host.header("Strict-Transport-Security") == "max-age=1"
    absolute = send(ft, request_bytes("GET", "https://other.test/echo", "www.example.com"))
    assert absolute.status == 200 and absolute.header("Strict-Transport-Security") == "max-age=2"
    assert echo_json(absolute)["path"] == "/echo"
    other = send(ft, request_bytes("GET", "/echo", "other.test"))
    assert other.status == 200 and other.header("Strict-Transport-Security") == "max-age=2"


SLASH = """\
upstream app {{ server {backend}; }}
server {{
    listen {host}:{https} ssl http2;
    server_name www.example.com;
    ssl_certificate certs/www.crt;
    ssl_certificate_key certs/www.key;
    add_header Strict-Transport-Security "max-age=1" always;
    location / {{ proxy_pass http://app; }}
    location /dir/ {{ proxy_pass http://app; }}
}}
"""


@pytest.mark.parametrize("client", ["h1", "h2"])
def test_location_dir_redirects_dir_to_dir_slash(nginx_mode, demo_backend, client):
    """nginx's automatic redirect: /dir -> 301 https://HOST:PORT/dir/?args, HSTS on it."""
    ft = nginx_mode(SLASH, backend=demo_backend)
    if client == "h1":
        response, _ = get(ft, "/dir?q=1", host="WWW.example.com")
    else:
        response = h2_request(ft, "GET", "/dir?q=1", host="WWW.example.com")
    assert response.status == 301
    assert response.header("Location") == f"https://www.example.com:{ft.https_port}/dir/?q=1"
    assert response.header("Strict-Transport-Security") == "max-age=1"
    assert echo_json(get(ft, "/dir/echo")[0])["path"] == "/dir/echo"


def test_dir_redirect_keeps_the_connection_and_pipelining(nginx_mode, demo_backend):
    """As nginx: the 301 says nothing of Connection and the connection goes on; pipelined
    requests behind redirects are answered in order, the proxied one by the backend."""
    ft = nginx_mode(SLASH, backend=demo_backend)
    with ft.connect() as s:
        rd = Reader(s)
        s.sendall(b"".join(request_bytes("GET", "/dir", "www.example.com") for _ in range(50))
                  + request_bytes("GET", "/dir/echo", "www.example.com"))
        redirects = [read_response(rd) for _ in range(50)]
        assert {(r.status, r.header("Connection")) for r in redirects} == {(301, None)}
        assert echo_json(read_response(rd))["path"] == "/dir/echo"
        s.sendall(request_bytes("GET", "/dir", "www.example.com", [("Connection", "close")]))
        last = read_response(rd)
        assert last.status == 301 and last.header("Connection") == "close"


REDIRECTS = """\
upstream app {{ server {backend}; }}
server {{
    listen {host}:{https} ssl http2;
    server_name www.example.com;
    ssl_certificate certs/www.crt;
    ssl_certificate_key certs/www.key;
    location / {{ proxy_pass http://app; }}
    location /off/ {{ proxy_pass http://app; proxy_redirect off; }}
    location /direct/ {{ proxy_pass http://{backend}; proxy_redirect default; }}
}}
"""


@pytest.mark.parametrize("client", ["h1", "h2"])
def test_proxy_redirect_default_rewrites_the_backend_s_location(nginx_mode, raw_backend, client):
    """proxy_redirect default (nginx's default): a Location under proxy_pass's URL comes back on
    the client's https://host:port; off passes it; other URLs pass."""
    def handler(conn):
        req = conn.read_request()
        if req is not None:
            target = "http://other.test/x" if req.target.endswith("/other") else \
                f"http://{be.address}/there" if req.target.startswith("/direct/") else "http://app/elsewhere?a=1"
            conn.send(response_bytes(302, b"", [("Location", target)]))

    be = raw_backend(handler)
    ft = nginx_mode(REDIRECTS, backend=be.address)

    def location(target: str) -> str | None:
        if client == "h1":
            response, _ = get(ft, target, host="WWW.example.com")
        else:
            response = h2_request(ft, "GET", target, host="WWW.example.com")
        assert response.status == 302
        return response.header("Location")

    assert location("/a") == f"https://www.example.com:{ft.https_port}/elsewhere?a=1"
    assert location("/direct/a") == f"https://www.example.com:{ft.https_port}/there"
    assert location("/off/a") == "http://app/elsewhere?a=1"
    assert location("/a/other") == "http://other.test/x"


EXACT = """\
upstream app {{ server {backend}; }}
server {{
    listen {host}:{https} ssl http2;
    server_name www.example.com;
    ssl_certificate certs/www.crt;
    ssl_certificate_key certs/www.key;
    location / {{ proxy_pass http://app; }}
    location = /exact {{ proxy_pass http://app; proxy_set_header X-Route exact; }}
}}
"""


@pytest.mark.parametrize("client", ["h1", "h2"])
def test_exact_location_wins_over_the_prefix(nginx_mode, demo_backend, client):
    ft = nginx_mode(EXACT, backend=demo_backend)

    def route(target: str) -> list[str]:
        if client == "h1":
            response, _ = get(ft, target)
        else:
            response = h2_request(ft, "GET", target, host="www.example.com")
        return header_map(echo_json(response)).get("x-route", [])

    assert route("/exact?q=1") == ["exact"]
    assert route("/exact/") == [] and route("/exactly") == []


BUFFERED = """\
upstream app {{ server {backend}; }}
server {{
    listen {host}:{https} ssl http2;
    server_name www.example.com;
    ssl_certificate certs/www.crt;
    ssl_certificate_key certs/www.key;
    client_max_body_size 300k;
    location / {{ proxy_pass http://app; }}
}}
"""


def chunked(body: bytes, size: int) -> bytes:
    return b"".join(b"%x\r\n%s\r\n" % (len(body[i:i + size]), body[i:i + size])
                    for i in range(0, len(body), size)) + b"0\r\n\r\n"


@pytest.mark.parametrize("client", ["h1", "h2"])
def test_chunked_body_goes_upstream_whole_with_content_length(nginx_mode, demo_backend, client):
    """nginx (proxy_request_buffering on) reads a body without a length whole and sends it to its
    HTTP/1.0 upstream with Content-Length; fastterm the same, within client_max_body_size (past
    it: 413, the backend hears nothing). 200 KiB: more than an HTTP/2 window, so the client's
    window must reopen while the body is held."""
    import hashlib

    ft = nginx_mode(BUFFERED, backend=demo_backend)
    body = bytes(range(256)) * 800
    if client == "h1":
        raw = request_bytes("POST", "/echo", "www.example.com", [("Transfer-Encoding", "chunked")]) + \
            chunked(body, 7000)
        response = send(ft, raw)
    else:
        with h2_client(ft, timeout=10) as c:
            response = c.get("POST", "/echo", body=body, length=False)
    echo = echo_json(response)
    assert echo["version"] == "1.0"
    assert header_map(echo)["content-length"] == [str(len(body))]
    assert "transfer-encoding" not in header_map(echo)
    assert (echo["body_length"], echo["body_sha256"]) == (len(body), hashlib.sha256(body).hexdigest())
    big = bytes(300 * 1024 + 1)
    if client == "h1":
        raw = request_bytes("POST", "/echo", "www.example.com", [("Transfer-Encoding", "chunked")]) + \
            chunked(big, 8192)
        assert send(ft, raw).status == 413
    else:
        with h2_client(ft, timeout=10) as c:
            sid = c.request("POST", "/echo", body=big, length=False)
            assert c.response(sid, 10).message().status == 413
