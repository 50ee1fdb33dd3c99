"""Certificates that change on disk: new handshakes get them, no reload, no restart.

Through ``fastterm run -c`` and Python ``ssl`` clients: a renewed file, a certbot-style
``live/`` symlink swap (RSA to ECDSA included), a PEM directory (HAProxy ``crt DIR``) that
gains and loses files under load, and the bad renewals that must leave the old certificate
serving (truncated, mismatched key, expired, for another name).
"""

from __future__ import annotations

import os
import socket
import ssl
import threading
import time
from datetime import UTC, datetime, timedelta

import pytest
from harness import HOST, NAME, keepalive_handler, wait_for
from httpwire import Reader, read_response, request_bytes

from fastterm.demo import issue_cert

pytestmark = pytest.mark.timeout(120)


def _replace(path: str, data: bytes) -> None:
    """Write ``data`` to ``path`` the way deploy tools do: a temporary file renamed over it."""
    tmp = path + ".tmp"
    with open(tmp, "wb") as f:
        f.write(data)
    os.replace(tmp, path)


def _serial(ft, name: str | None = NAME) -> int:
    """The serial of the leaf a fresh handshake with SNI ``name`` gets."""
    ctx = ssl.create_default_context(cafile=ft.ca_file)
    ctx.check_hostname = False
    with socket.create_connection((HOST, ft.https_port), timeout=5) as raw, \
            ctx.wrap_socket(raw, server_hostname=name) as tls:
        from cryptography import x509

        return x509.load_der_x509_certificate(tls.getpeercert(binary_form=True)).serial_number


def _get(sock: ssl.SSLSocket, target: str = "/") -> int:
    sock.sendall(request_bytes("GET", target, NAME))
    return read_response(Reader(sock), "GET").status


def _waits_for_serial(ft, serial: int, name: str | None = NAME, timeout: float = 10.0) -> float:
    start = time.monotonic()
    assert wait_for(lambda: _serial(ft, name) == serial, timeout=timeout, step=0.05), \
        f"no handshake served serial {serial:x} within {timeout} s:\n{ft.log()[-3000:]}"
    return time.monotonic() - start


@pytest.fixture
def renewable(write, intermediate):
    """Files of a certificate for www.example.com that a test rewrites."""
    first = issue_cert(intermediate, [NAME, "example.com"], "EC")
    cert = write("certs/renew.crt", first.cert_pem + intermediate.cert_pem)
    key = write("certs/renew.key", first.key_pem)
    return {"cert": cert, "key": key}, first


def test_renewed_files_serve_new_handshakes_and_old_connections_keep_theirs(fastterm, be, renewable, intermediate):
    entry, first = renewable
    ft = fastterm(be.address, certificates=[entry])
    assert _serial(ft) == first.cert.serial_number
    kept = ft.connect()
    assert _get(kept) == 200
    second = issue_cert(intermediate, [NAME, "example.com"], "EC")
    _replace(entry["key"], second.key_pem)
    _replace(entry["cert"], second.cert_pem + intermediate.cert_pem)
    _waits_for_serial(ft, second.cert.serial_number)
    # the connection made before the change goes on, on its own certificate
    assert _get(kept) == 200
    from cryptography import x509

    assert x509.load_der_x509_certificate(kept.getpeercert(binary_form=True)).serial_number == \
        first.cert.serial_number
    kept.close()
    assert ft.alive()
    assert "serves new handshakes" in ft.log()


@pytest.mark.parametrize("bad", ["truncated", "mismatched_key", "expired", "other_name", "removed"])
def test_a_bad_renewal_leaves_the_old_certificate_serving(fastterm, be, renewable, intermediate, bad):
    entry, first = renewable
    ft = fastterm(be.address, certificates=[entry])
    second = issue_cert(intermediate, [NAME, "example.com"], "EC")
    if bad == "truncated":
        _replace(entry["cert"], (second.cert_pem + intermediate.cert_pem)[:300])
        _replace(entry["key"], second.key_pem)
        why = "no certificate found"
    elif bad == "mismatched_key":
        _replace(entry["cert"], second.cert_pem + intermediate.cert_pem)   # key stays the first one's
        why = "does not match"
    elif bad == "expired":
        past = datetime.now(UTC) - timedelta(days=30)
        old = issue_cert(intermediate, [NAME], "EC", not_before=past, not_after=past + timedelta(days=1))
        _replace(entry["key"], old.key_pem)
        _replace(entry["cert"], old.cert_pem + intermediate.cert_pem)
        why = "expired"
    elif bad == "other_name":
        other = issue_cert(intermediate, ["nothing.example.net"], "EC")
        _replace(entry["key"], other.key_pem)
        _replace(entry["cert"], other.cert_pem + intermediate.cert_pem)
        why = "none of"
    else:
        os.unlink(entry["cert"])
        why = "no such file"
    assert wait_for(lambda: "certificate change refused" in ft.log(), timeout=10), ft.log()[-3000:]
    assert why in ft.log()
    assert _serial(ft) == first.cert.serial_number
    with ft.connect() as sock:
        assert _get(sock) == 200
    # a good file afterwards is taken
    _replace(entry["key"], second.key_pem)
    _replace(entry["cert"], second.cert_pem + intermediate.cert_pem)
    _waits_for_serial(ft, second.cert.serial_number)


def _certbot_live(tmp_path, issued, intermediate, version: int) -> None:
    """certbot's layout: archive/DOMAIN/{fullchainN,privkeyN}.pem, live/DOMAIN/ symlinks to them."""
    archive = tmp_path / "le" / "archive" / NAME
    live = tmp_path / "le" / "live" / NAME
    archive.mkdir(parents=True, exist_ok=True)
    live.mkdir(parents=True, exist_ok=True)
    (archive / f"fullchain{version}.pem").write_bytes(issued.cert_pem + intermediate.cert_pem)
    (archive / f"privkey{version}.pem").write_bytes(issued.key_pem)
    for link, target in (("fullchain.pem", f"fullchain{version}.pem"), ("privkey.pem", f"privkey{version}.pem")):
        tmp = live / (link + ".new")
        tmp.symlink_to(f"../../archive/{NAME}/{target}")
        os.replace(tmp, live / link)


def test_certbot_renewal_swaps_symlinks_rsa_to_ecdsa(fastterm, be, tmp_path, intermediate, rsa_leaf):
    """The renewal changes the key type too (certbot --key-type ecdsa): a new context, not a slot."""
    first = issue_cert(intermediate, [NAME], "RSA", key=rsa_leaf.key)
    _certbot_live(tmp_path, first, intermediate, 1)
    ft = fastterm(be.address, certificates=[{"cert": str(tmp_path / "le" / "live" / NAME)}], workers=2)
    assert _serial(ft) == first.cert.serial_number
    second = issue_cert(intermediate, [NAME], "EC")
    _certbot_live(tmp_path, second, intermediate, 2)
    _waits_for_serial(ft, second.cert.serial_number)
    # both workers take it (each polls on its own): then every new connection sees it
    assert wait_for(lambda: all(_serial(ft) == second.cert.serial_number for _ in range(20)), timeout=10)
    ctx = ssl.create_default_context(cafile=ft.ca_file)
    with socket.create_connection((HOST, ft.https_port), timeout=5) as raw, \
            ctx.wrap_socket(raw, server_hostname=NAME) as tls:
        assert "ECDSA" in tls.cipher()[0] or tls.version() == "TLSv1.3"


def _issue_dir(directory, intermediate, names: list[str]) -> dict[str, int]:
    serials = {}
    for name in names:
        issued = issue_cert(intermediate, [name], "EC")
        (directory / f"{name}.pem").write_bytes(issued.cert_pem + intermediate.cert_pem + issued.key_pem)
        serials[name] = issued.cert.serial_number
    return serials


def test_pem_directory_serves_each_name_and_follows_files_added_and_removed(fastterm, be, tmp_path, intermediate):
    directory = tmp_path / "haproxy-certs"
    directory.mkdir()
    serials = _issue_dir(directory, intermediate, ["a.example.test", "b.example.test", "c.example.test"])
    (directory / "a.example.test.pem.ocsp").write_bytes(b"not a certificate: skipped like HAProxy does")
    ft = fastterm(be.address, server_names=[], certificates=[{"cert": str(directory)}])
    for name, serial in serials.items():
        assert _serial(ft, name) == serial
    # unknown name: the first file, the directory's default (HAProxy)
    assert _serial(ft, "unknown.example.test") == serials["a.example.test"]
    added = _issue_dir(directory, intermediate, ["d.example.test"])
    _waits_for_serial(ft, added["d.example.test"], "d.example.test")
    os.unlink(directory / "b.example.test.pem")
    _waits_for_serial(ft, serials["a.example.test"], "b.example.test")
    assert _serial(ft, "c.example.test") == serials["c.example.test"]
    # requests are routed for a name that only the directory knows
    ctx = ssl.create_default_context(cafile=ft.ca_file)
    with socket.create_connection((HOST, ft.https_port), timeout=5) as raw, \
            ctx.wrap_socket(raw, server_hostname="d.example.test") as tls:
        tls.sendall(request_bytes("GET", "/d", "d.example.test"))
        assert read_response(Reader(tls), "GET").status == 200


def test_directory_of_1000_certificates_changes_under_load_without_a_failed_request(
        fastterm, raw_backend, tmp_path, intermediate):
    be = raw_backend(keepalive_handler)
    directory = tmp_path / "many"
    directory.mkdir()
    names = [f"site{i}.example.test" for i in range(1000)]
    serials = _issue_dir(directory, intermediate, names)
    ft = fastterm(be.address, server_names=[], certificates=[{"cert": str(directory)}], workers=2)
    for name in (names[0], names[499], names[999]):
        assert _serial(ft, name) == serials[name]

    failures, done = [], threading.Event()
    counts = [0]

    def load():
        ctx = ssl.create_default_context(cafile=ft.ca_file)
        i = 0
        deadline = time.monotonic() + 60
        while not done.is_set() and time.monotonic() < deadline:
            name = names[(i * 7) % 500]   # names that stay in the directory
            i += 1
            try:
                with socket.create_connection((HOST, ft.https_port), timeout=5) as raw, \
                        ctx.wrap_socket(raw, server_hostname=name) as tls:
                    tls.sendall(request_bytes("GET", "/", name))
                    status = read_response(Reader(tls), "GET").status
                    if status != 200:
                        failures.append(f"{name}: {status}")
            except (OSError, ssl.SSLError) as exc:
                failures.append(f"{name}: {exc!r}")
            counts[0] += 1

    threads = [threading.Thread(target=load) for _ in range(2)]
    for t in threads:
        t.start()
    try:
        time.sleep(0.5)
        added = _issue_dir(directory, intermediate, [f"new{i}.example.test" for i in range(20)])
        for name in names[900:]:
            os.unlink(directory / f"{name}.pem")
        _waits_for_serial(ft, added["new19.example.test"], "new19.example.test")
        time.sleep(1.5)
    finally:
        done.set()
        for t in threads:
            t.join(30)
    assert counts[0] > 20
    assert failures == []
    # removed: the directory's default now, its first file by name
    assert _serial(ft, names[950]) == added["new0.example.test"]


def test_metrics_follow_a_renewal(fastterm, be, renewable, intermediate):
    """/metrics: the expiry of the certificate served now (the master follows the files too)
    and each worker's reloads and refusals."""
    import re
    import urllib.request

    from harness import free_port

    entry, first = renewable
    port = free_port()
    fastterm(be.address, certificates=[entry], workers=2, admin=f"{HOST}:{port}")

    def metrics() -> str:
        with urllib.request.urlopen(f"http://{HOST}:{port}/metrics", timeout=5) as r:
            return r.read().decode()

    def expiry() -> float:
        found = re.search(r'^fastterm_certificate_expiry_seconds\{certificate="www.example.com, example.com",'
                          r'source="[^"]+"\} (\S+)$', metrics(), re.MULTILINE)
        return float(found.group(1)) if found else -1

    now = datetime.now(UTC)
    assert abs(expiry() - (first.cert.not_valid_after_utc - now).total_seconds()) < 60
    later = issue_cert(intermediate, [NAME, "example.com"], "EC", not_after=now + timedelta(days=30))
    _replace(entry["key"], later.key_pem)
    _replace(entry["cert"], later.cert_pem + intermediate.cert_pem)
    assert wait_for(lambda: abs(expiry() - 30 * 86400) < 60, timeout=10), metrics()
    assert wait_for(lambda: "fastterm_certificate_reloads_total 2" in metrics(), timeout=10), metrics()
    _replace(entry["cert"], b"truncated")
    assert wait_for(lambda: "fastterm_certificate_reload_failures_total 2" in metrics(), timeout=10)
    assert abs(expiry() - 30 * 86400) < 60    # the one still served


@pytest.mark.parametrize("single", [False, True], ids=["master-workers", "single"])
def test_sigusr2_reads_certificates_now_without_a_new_generation(fastterm, be, renewable, intermediate, single):
    """certificate_check_interval = 0 (no polling): SIGUSR2 to the master (or to --single's
    process) swaps the changed block's contexts; the workers stay the same processes."""
    import signal

    entry, first = renewable
    ft = fastterm(be.address, certificates=[entry], workers=2 if not single else 1, single=single,
                  top={"certificate_check_interval": 0})
    workers = ft.serving_pids()
    second = issue_cert(intermediate, [NAME, "example.com"], "EC")
    _replace(entry["key"], second.key_pem)
    _replace(entry["cert"], second.cert_pem + intermediate.cert_pem)
    time.sleep(1.5)
    assert _serial(ft) == first.cert.serial_number   # nothing polls
    os.kill(ft.pid, signal.SIGUSR2)
    assert wait_for(lambda: all(_serial(ft) == second.cert.serial_number for _ in range(10)), timeout=10), ft.log()
    assert ft.serving_pids() == workers
