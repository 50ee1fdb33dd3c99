"""Certificate files beyond one pair: PEM directories, what a renewal may bring, ``fastterm certs``."""

from __future__ import annotations

import json
import os
import subprocess
from datetime import UTC, datetime, timedelta

import pytest

from fastterm.certs.store import directory_entries, files_signature, inventory, load_server_certificates
from fastterm.certs.watch import check_renewal
from fastterm.config.model import Certificate, Server
from fastterm.demo import issue_cert
from fastterm.errors import ConfigError


def _pem(issued, intermediate) -> bytes:
    return issued.cert_pem + intermediate.cert_pem + issued.key_pem


def test_directory_entries_skip_companions_and_dot_files(tmp_path):
    for name in ("b.pem", "a.pem", "a.pem.key", "a.pem.ocsp", "a.pem.issuer", "a.pem.sctl", ".hidden.pem"):
        (tmp_path / name).write_bytes(b"")
    (tmp_path / "sub").mkdir()
    assert directory_entries(str(tmp_path)) == [str(tmp_path / "a.pem"), str(tmp_path / "b.pem")]


def test_directory_files_and_key_beside_them(tmp_path, intermediate):
    one = issue_cert(intermediate, ["one.example.test"], "EC")
    two = issue_cert(intermediate, ["two.example.test", "*.two.example.test"], "EC")
    (tmp_path / "one.pem").write_bytes(_pem(one, intermediate))
    (tmp_path / "two.pem").write_bytes(two.cert_pem + intermediate.cert_pem)
    (tmp_path / "two.pem.key").write_bytes(two.key_pem)
    found = load_server_certificates([Certificate(cert=str(tmp_path))])
    assert found.own == [] and found.directories == [str(tmp_path)]
    assert {path: ck.names for path, ck in found.files.items()} == {
        str(tmp_path / "one.pem"): ("one.example.test",),
        str(tmp_path / "two.pem"): ("two.example.test", "*.two.example.test")}
    assert list(found.identities()) == [str(tmp_path / "one.pem"), str(tmp_path / "two.pem")]


def test_a_bad_file_in_a_directory_is_named(tmp_path, intermediate):
    (tmp_path / "good.pem").write_bytes(_pem(issue_cert(intermediate, ["g.example.test"], "EC"), intermediate))
    (tmp_path / "bad.pem").write_bytes(b"-----BEGIN CERTIFICATE-----\nnope\n")
    with pytest.raises(ConfigError, match="bad.pem"):
        load_server_certificates([Certificate(cert=str(tmp_path))])


def test_an_empty_directory_is_refused(tmp_path):
    with pytest.raises(ConfigError, match="holds no certificate"):
        load_server_certificates([Certificate(cert=str(tmp_path))])


def test_signature_changes_with_content_and_with_a_symlink_swap(tmp_path, intermediate):
    a = tmp_path / "a.pem"
    b = tmp_path / "b.pem"
    a.write_bytes(_pem(issue_cert(intermediate, ["x.example.test"], "EC"), intermediate))
    b.write_bytes(_pem(issue_cert(intermediate, ["x.example.test"], "EC"), intermediate))
    link = tmp_path / "live.pem"
    link.symlink_to(a)
    certs = [Certificate(cert=str(link))]
    first = files_signature(certs)
    assert files_signature(certs) == first
    tmp = tmp_path / "live.new"
    tmp.symlink_to(b)
    os.replace(tmp, link)
    assert files_signature(certs) != first
    link.unlink()
    assert files_signature(certs)[0] == (None, None)


def _server(names=("www.example.com",)):
    return Server(listen=["127.0.0.1:8443"], server_names=list(names), certificates=[Certificate(cert="x")])


def _found(tmp_path, issued, intermediate, name="c.pem"):
    path = tmp_path / name
    path.write_bytes(_pem(issued, intermediate))
    return load_server_certificates([Certificate(cert=str(path))])


def test_renewal_checks(tmp_path, intermediate):
    before = _found(tmp_path, issue_cert(intermediate, ["www.example.com"], "EC"), intermediate, "old.pem")
    renewed = _found(tmp_path, issue_cert(intermediate, ["www.example.com", "api.example.com"], "EC"), intermediate)
    check_renewal(_server(), before, renewed)
    wildcard = _found(tmp_path, issue_cert(intermediate, ["*.example.com"], "EC"), intermediate)
    check_renewal(_server(), before, wildcard)
    other = _found(tmp_path, issue_cert(intermediate, ["www.example.net"], "EC"), intermediate)
    with pytest.raises(ConfigError, match="none of www.example.com"):
        check_renewal(_server(), before, other)
    past = datetime.now(UTC) - timedelta(days=10)
    expired = _found(tmp_path, issue_cert(intermediate, ["www.example.com"], "EC", not_before=past,
                                          not_after=past + timedelta(days=1)), intermediate)
    with pytest.raises(ConfigError, match="expired"):
        check_renewal(_server(), before, expired)
    # a block whose old certificate was for none of its names (a default catch-all) takes any name
    check_renewal(_server(("_",)), before, other)


def test_inventory_lists_each_file_and_the_blocks_using_it(tmp_path, intermediate):
    good = tmp_path / "good.pem"
    good.write_bytes(_pem(issue_cert(intermediate, ["www.example.com"], "EC"), intermediate))
    directory = tmp_path / "dir"
    directory.mkdir()
    (directory / "d.pem").write_bytes(_pem(issue_cert(intermediate, ["d.example.test"], "EC"), intermediate))
    (directory / "broken.pem").write_bytes(b"garbage")
    servers = [Server(listen=["127.0.0.1:8443"], server_names=["www.example.com"],
                      certificates=[Certificate(cert=str(good)), Certificate(cert=str(directory))]),
               Server(listen=["127.0.0.1:9443"], server_names=["alt.example.com"],
                      certificates=[Certificate(cert=str(good))])]
    entries = {os.path.basename(e["source"].split(" + ")[0]): e for e in inventory(servers)}
    assert set(entries) == {"good.pem", "d.pem", "broken.pem"}
    assert entries["good.pem"]["servers"] == ["www.example.com", "alt.example.com"]
    assert entries["good.pem"]["names"] == ["www.example.com"]
    assert entries["good.pem"]["key"] == "EC 256"
    assert entries["good.pem"]["days_left"] > 300
    assert "fastterm test intermediate" in entries["good.pem"]["issuer"]
    assert "no certificate found" in entries["broken.pem"]["error"]


def test_certs_command(python, subprocess_env, tmp_path, write, ec_files):
    path = write("fastterm.toml", """\
[[upstream]]
name = "app"
servers = ["127.0.0.1:8081"]

[[server]]
listen = ["127.0.0.1:8443"]
server_names = ["www.example.com"]

[[server.certificate]]
cert = "certs/ec.crt"
key = "certs/ec.key"
""")
    run = lambda *extra: subprocess.run([python, "-m", "fastterm", "certs", "-c", path, *extra], check=False,
                                        capture_output=True, text=True, env=subprocess_env, cwd=tmp_path, timeout=60)
    text = run()
    assert text.returncode == 0, text.stderr
    assert "www.example.com" in text.stdout and "days left" in text.stdout and "EC 256" in text.stdout
    listed = json.loads(run("--json").stdout)
    assert listed[0]["servers"] == ["www.example.com"] and listed[0]["days_left"] > 0
    os.unlink(tmp_path / "certs" / "ec.key")
    broken = run()
    assert broken.returncode == 1
    assert "ERROR" in broken.stdout and "ec.key" in broken.stdout


def test_chain_out_of_order_is_named_and_served_in_order(tmp_path, intermediate):
    from fastterm.certs.store import chain_warnings, load_certificate

    leaf = issue_cert(intermediate, ["www.example.com"], "EC")
    path = tmp_path / "backwards.pem"
    path.write_bytes(intermediate.cert_pem + leaf.cert_pem + leaf.key_pem)
    ck = load_certificate(str(path))
    assert ck.chain_pem == leaf.cert_pem + intermediate.cert_pem
    assert chain_warnings(ck) and "not in order" in chain_warnings(ck)[0]
    path.write_bytes(leaf.cert_pem + intermediate.cert_pem + leaf.key_pem)
    assert chain_warnings(load_certificate(str(path))) == []
