"""The access log (issue 15): real clients (curl, curl --http2, httpx, Python ssl) -> one line per
request with the fields of fastterm/accesslog.py; nginx's combined format; SIGUSR1 after a
rename (logrotate); off; and a handshake scan that the error log samples."""

from __future__ import annotations

import datetime
import json
import os
import pwd
import re
import shutil
import signal
import socket
import ssl
import subprocess
import tempfile
import time
from pathlib import Path

import httpx
import pytest
from harness import HOST, NAME, free_port, metrics, request_bytes, wait_for
from httpwire import Reader, read_response

from fastterm.accesslog import FIELDS


def curl(ft, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["curl", "-sS", "--cacert", ft.ca_file, "--resolve", f"{NAME}:{ft.https_port}:{HOST}",
                           "-o", "/dev/null", "-w", "%{http_code}", *args], check=False, capture_output=True,
                          text=True, timeout=20)


def httpx_client(ft) -> httpx.Client:
    """httpx on the loopback address, with the certificate's name as SNI and Host (``get``)."""
    return httpx.Client(verify=ft.client_context(alpn=None), timeout=10, headers={"host": NAME},
                        base_url=f"https://{HOST}:{ft.https_port}")


def get(client: httpx.Client, path: str) -> httpx.Response:
    return client.get(path, extensions={"sni_hostname": NAME})


def lines(path, count: int, timeout: float = 10.0) -> list[str]:
    """The log's lines once it has ``count`` of them (a worker flushes once a second)."""
    wait_for(lambda: os.path.exists(path) and len(Path(path).read_text().splitlines()) >= count, timeout)
    return Path(path).read_text().splitlines()


def records(path, count: int) -> list[dict]:
    found = [json.loads(line) for line in lines(path, count)]
    assert len(found) == count, found
    return found


def test_json_lines_for_http11_and_http2(fastterm, be, tmp_path):
    log = tmp_path / "access.log"
    ft = fastterm(be.address, top={"access_log": str(log)})
    assert curl(ft, "--http1.1", "-A", "probe/1", "-e", "https://ref.example/", ft.url("/one?x=1")).stdout == "200"
    assert curl(ft, "--http2", ft.url("/two")).stdout == "200"
    one, two = records(log, 2)
    assert list(one) == list(FIELDS)
    assert one["method"] == "GET" and one["path"] == "/one?x=1" and one["protocol"] == "HTTP/1.1"
    assert one["status"] == 200 and one["alpn"] == "http/1.1" and one["sni"] == NAME
    assert one["user_agent"] == "probe/1" and one["referer"] == "https://ref.example/"
    assert one["client"] == HOST and one["upstream"] == be.address
    assert one["tls_version"] in ("TLSv1.2", "TLSv1.3") and one["cipher"]
    assert one["session_reused"] is False
    assert one["body_bytes_out"] == len("ok /one?x=1")   # keepalive_handler's body
    assert one["bytes_out"] > one["body_bytes_out"]    # its head too
    assert one["bytes_in"] > len("GET /one?x=1 HTTP/1.1\r\n")
    assert one["upstream_time"] is not None and one["request_time"] >= one["upstream_time"] >= 0
    assert one["handshake_time"] >= 0
    datetime.datetime.fromisoformat(one["time"])
    assert two["protocol"] == "HTTP/2.0" and two["alpn"] == "h2" and two["path"] == "/two"
    assert two["status"] == 200 and two["body_bytes_out"] == len("ok /two") and two["upstream"] == be.address
    assert two["bytes_out"] > two["body_bytes_out"] + 9 and two["bytes_in"] > 9   # frames, 9-byte headers each


def test_own_answers_are_logged(fastterm, be, tmp_path, refused_address):
    """fastterm's own statuses (a 400 never forwarded, a 502 of a dead backend) have lines too,
    the 502 with the upstream it tried; an httpx client."""
    log = tmp_path / "access.log"
    ft = fastterm(upstreams=[{"name": "app", "servers": [be.address]}, {"name": "dead", "servers": [refused_address]}],
                  routes=[{"path": "/", "upstream": "app"}, {"path": "/dead/", "upstream": "dead"}],
                  top={"access_log": str(log)})
    with ft.connect() as sock:
        sock.sendall(b"GET /bad HTTP/1.1\r\nHost: " + NAME.encode() + b"\r\nX\x01: y\r\n\r\n")
        assert read_response(Reader(sock), "GET").status == 400
    with httpx_client(ft) as client:
        assert get(client, "/dead/x").status_code == 502
    assert curl(ft, "--http2", ft.url("/dead/h2")).stdout == "502"
    bad, dead, dead_h2 = records(log, 3)
    assert bad["status"] == 400 and bad["method"] == "GET" and bad["path"] == "/bad" and bad["upstream"] is None
    assert bad["body_bytes_out"] > 0
    assert dead["status"] == 502 and dead["path"] == "/dead/x" and dead["upstream"] == refused_address
    assert dead["user_agent"].startswith("python-httpx/")
    assert dead_h2["status"] == 502 and dead_h2["protocol"] == "HTTP/2.0" and dead_h2["upstream"] == refused_address
    assert dead_h2["body_bytes_out"] > 0


def test_port_80_redirects_are_logged(fastterm, be, tmp_path):
    """The plain-HTTP listener's redirects: a line each, without TLS facts or upstream."""
    log = tmp_path / "access.log"
    ft = fastterm(be.address, top={"access_log": str(log)})
    out = subprocess.run(["curl", "-sS", "-o", "/dev/null", "-w", "%{http_code}", "-A", "plain/1",
                          f"http://{HOST}:{ft.http_port}/old?a=1"], check=False, capture_output=True, text=True,
                         timeout=20)
    assert out.stdout == "301", out
    (record,) = records(log, 1)
    assert record["status"] == 301 and record["path"] == "/old?a=1" and record["user_agent"] == "plain/1"
    assert record["sni"] is None and record["tls_version"] is None and record["session_reused"] is None
    assert record["upstream"] is None and record["protocol"] == "HTTP/1.1" and record["client"] == HOST
    assert record["bytes_out"] > record["body_bytes_out"] > 0


def test_session_reused_on_a_resumed_handshake(fastterm, be, tmp_path):
    log = tmp_path / "access.log"
    ft = fastterm(be.address, top={"access_log": str(log)})
    ctx = ft.client_context(maximum_version=ssl.TLSVersion.TLSv1_2)
    session = None
    for _ in range(2):
        raw = socket.create_connection((HOST, ft.https_port), timeout=5)
        with ctx.wrap_socket(raw, server_hostname=NAME, session=session) as sock:
            sock.sendall(request_bytes("GET", "/", NAME, None, b""))
            assert read_response(Reader(sock), "GET").status == 200
            session = sock.session
            reused = sock.session_reused
    assert reused
    first, second = records(log, 2)
    assert first["session_reused"] is False and second["session_reused"] is True
    assert first["tls_version"] == second["tls_version"] == "TLSv1.2"


def test_request_bytes_are_escaped(fastterm, be, tmp_path):
    """A quote, a backslash and a byte that is not UTF-8 in the target: a JSON string that
    reads back as the bytes' text, and nginx's \\xHH in the combined format."""
    logs = {fmt: tmp_path / f"{fmt}.log" for fmt in ("json", "combined")}
    for fmt, log in logs.items():
        ft = fastterm(be.address, top={"access_log": str(log), "access_log_format": fmt})
        with ft.connect() as sock:
            sock.sendall(b'GET /q"\\\xff HTTP/1.1\r\nHost: ' + NAME.encode() + b"\r\nUser-Agent: a\tb\r\n\r\n")
            read_response(Reader(sock), "GET")
    (record,) = records(logs["json"], 1)
    assert record["path"] == '/q"\\\\xff' and record["user_agent"] == "a\tb"
    (line,) = lines(logs["combined"], 1)
    assert '"GET /q\\x22\\x5C\\xFF HTTP/1.1"' in line and line.endswith('"a\\x09b"')


# nginx's combined format, as log parsers (goaccess, fail2ban's nginx filters) read it
_COMBINED = re.compile(r'^(\S+) - (\S+) \[([^\]]+)\] "([^"]*)" (\d{3}) (\d+) "([^"]*)" "([^"]*)"$')


def test_combined_format_parses_like_nginx(fastterm, be, tmp_path):
    log = tmp_path / "access.log"
    ft = fastterm(be.address, top={"access_log": str(log), "access_log_format": "combined"})
    assert curl(ft, "--http1.1", "-A", 'agent "quoted"', ft.url("/c?q=1")).stdout == "200"
    assert curl(ft, "--http2", "-e", "https://r/", ft.url("/d")).stdout == "200"
    first, second = (_COMBINED.match(line) for line in lines(log, 2))
    assert first and second
    addr, user, when, request, status, body, referer, agent = first.groups()
    assert (addr, user, request, status, body, referer) == (HOST, "-", "GET /c?q=1 HTTP/1.1", "200", str(len("ok /c?q=1")), "-")
    assert agent == r"agent \x22quoted\x22"            # nginx's escaping of '"'
    datetime.datetime.strptime(when, "%d/%b/%Y:%H:%M:%S %z")
    assert second.group(4) == "GET /d HTTP/2.0" and second.group(7) == "https://r/"


@pytest.mark.skipif(not shutil.which("nginx") and not os.path.exists("/usr/sbin/nginx"), reason="nginx is not installed")
def test_combined_lines_are_nginx_lines(fastterm, be, tmp_path, ec_cert):
    """The same requests through nginx and fastterm, both logging combined: the lines are the
    same but for the time."""
    port = free_port()
    (tmp_path / "nginx").mkdir()
    conf = tmp_path / "nginx" / "nginx.conf"
    conf.write_text(f"""daemon off;
pid {tmp_path}/nginx/nginx.pid;
error_log {tmp_path}/nginx/error.log;
events {{ worker_connections 64; }}
http {{
    access_log {tmp_path}/nginx/access.log combined;
    client_body_temp_path {tmp_path}/nginx; proxy_temp_path {tmp_path}/nginx;
    fastcgi_temp_path {tmp_path}/nginx; uwsgi_temp_path {tmp_path}/nginx; scgi_temp_path {tmp_path}/nginx;
    server {{
        listen {HOST}:{port} ssl http2;
        server_name {NAME};
        ssl_certificate {ec_cert["cert"]};
        ssl_certificate_key {ec_cert["key"]};
        location / {{ proxy_pass http://{be.address}; proxy_http_version 1.1; proxy_set_header Connection ""; }}
    }}
}}
""")
    nginx = subprocess.Popen([shutil.which("nginx") or "/usr/sbin/nginx", "-p", str(tmp_path / "nginx"), "-c", str(conf),
                              "-e", str(tmp_path / "nginx" / "error.log")], stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL)
    try:
        ft = fastterm(be.address, top={"access_log": str(tmp_path / "ft.log"), "access_log_format": "combined"})
        assert wait_for(lambda: _listening(port), 10)
        requests = [("--http1.1", "-A", 'quote " and \\ and \u00e9', "/a?b=c"),   # é: two bytes nginx escapes
                    ("--http1.1", "-e", "https://ref.example/x", "/r"), ("--http1.1", "-I", "/head"),
                    ("--http2", "/two")]
        for *args, path in requests:
            for url in (ft.url(path), f"https://{NAME}:{port}{path}"):
                assert curl(ft, *args, "--resolve", f"{NAME}:{port}:{HOST}", url).stdout == "200"
        ours = lines(tmp_path / "ft.log", len(requests))
        wait_for(lambda: len((tmp_path / "nginx" / "access.log").read_text().splitlines()) >= len(requests), 10)
        theirs = (tmp_path / "nginx" / "access.log").read_text().splitlines()
    finally:
        nginx.terminate()
        nginx.wait(timeout=10)
    untimed = [re.sub(r"\[[^\]]+\]", "[T]", line, count=1) for line in ours]
    assert untimed == [re.sub(r"\[[^\]]+\]", "[T]", line, count=1) for line in theirs], (ours, theirs)


def _listening(port: int) -> bool:
    try:
        socket.create_connection((HOST, port), timeout=1).close()
        return True
    except OSError:
        return False


def test_sigusr1_after_a_rename_starts_a_new_file_and_loses_no_line(fastterm, be, tmp_path):
    """logrotate's way: mv, then SIGUSR1 to the master, which forwards it to each worker; each
    line is whole and in exactly one of the two files."""
    log = tmp_path / "access.log"
    ft = fastterm(be.address, workers=2, top={"access_log": str(log)})
    with httpx_client(ft) as client:
        for i in range(30):
            assert get(client, f"/before/{i}").status_code == 200
        os.rename(log, tmp_path / "access.log.1")
        os.kill(ft.pid, signal.SIGUSR1)
        assert wait_for(lambda: log.exists(), 10)
        for i in range(30):
            assert get(client, f"/after/{i}").status_code == 200

    def both():
        return [json.loads(line) for p in (tmp_path / "access.log.1", log) if p.exists()
                for line in p.read_text().splitlines()]

    wait_for(lambda: len(both()) >= 60, 10)
    paths = sorted(r["path"] for r in both())
    assert paths == sorted([f"/before/{i}" for i in range(30)] + [f"/after/{i}" for i in range(30)])
    assert all(r["path"].startswith("/before/") for r in map(json.loads, (tmp_path / "access.log.1").read_text()
                                                            .splitlines()))
    assert any(r["path"].startswith("/after/") for r in map(json.loads, log.read_text().splitlines()))


@pytest.mark.skipif(os.geteuid() != 0, reason="the privilege drop needs root")
def test_workers_that_drop_root_write_and_reopen_a_log_in_a_root_directory(fastterm, be):
    """user = "nobody": the master makes the log file nobody's (nginx chowns its logs to its
    workers' user), in a directory that stays root's; after a rename and SIGUSR1 again."""
    nobody = pwd.getpwnam("nobody").pw_uid
    logdir = Path(tempfile.mkdtemp(prefix="fastterm-logs-"))
    try:
        os.chmod(logdir, 0o755)
        log = logdir / "access.log"
        ft = fastterm(be.address, workers=2, top={"user": "nobody", "group": "nogroup", "access_log": str(log)})
        assert curl(ft, ft.url("/first")).stdout == "200"
        assert [r["path"] for r in records(log, 1)] == ["/first"]
        assert log.stat().st_uid == nobody
        os.rename(log, logdir / "access.log.1")
        os.kill(ft.pid, signal.SIGUSR1)
        assert wait_for(lambda: log.exists(), 10)
        assert curl(ft, ft.url("/second")).stdout == "200"
        assert [r["path"] for r in records(log, 1)] == ["/second"]
        assert log.stat().st_uid == nobody and (logdir / "access.log.1").read_text().count("\n") == 1
    finally:
        shutil.rmtree(logdir)


def test_off_writes_nothing(fastterm, be, tmp_path):
    log = tmp_path / "off.log"
    ft = fastterm(be.address, top={"access_log": "off"})
    assert curl(ft, ft.url("/")).stdout == "200"
    ft.stop()
    assert not log.exists() and not (tmp_path / "off").exists()
    assert not any(p.name.endswith(".log") and p.name.startswith("access") for p in tmp_path.iterdir())


def test_handshake_scan_logs_a_bounded_number_of_lines(fastterm, be, tmp_path):
    """300 bad ClientHellos: at most handshake_log_rate lines a second, then summary lines that
    count the rest; the /metrics counter counts every one."""
    admin = free_port()
    ft = fastterm(be.address, admin=f"{HOST}:{admin}", top={"handshake_log_rate": 3})
    before = metrics(admin, "fastterm_handshakes_failed")
    started = time.monotonic()
    for _ in range(300):
        with socket.create_connection((HOST, ft.https_port), timeout=5) as sock:
            # a TLS record header, then a handshake that is not a ClientHello
            sock.sendall(b"\x16\x03\x01\x00\x08\x0f\x00\x00\x04abcd")
            try:
                sock.recv(100)
            except OSError:
                pass
    elapsed = time.monotonic() - started

    def failed() -> int:
        return sum(metrics(admin, "fastterm_handshakes_failed").values()) - sum(before.values())
    assert wait_for(lambda: failed() >= 300, 5) and failed() == 300, (before, failed())

    def tally():
        text = ft.log()
        logged = text.count("handshake failed from")
        skipped = sum(int(n) for n in re.findall(r"(\d+) more failed handshakes not logged", text))
        return logged, skipped

    wait_for(lambda: sum(tally()) >= 300, 10)   # the summary line comes within the next second
    logged, skipped = tally()
    assert logged + skipped == 300
    assert logged <= 3 * (int(elapsed) + 2)
