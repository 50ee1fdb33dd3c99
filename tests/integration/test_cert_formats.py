"""Each certificate layout users bring, served to ``openssl s_client -servername`` and Python
``ssl``: the expected leaf, then its chain (nginx ``.crt`` + ``.key``, HAProxy's combined
``.pem`` in any block order, a Let's Encrypt ``live/DOMAIN/`` directory, a PEM directory)."""

from __future__ import annotations

import re
import subprocess

import pytest
from harness import HOST, NAME

pytestmark = pytest.mark.timeout(60)


def _shown_chain(ft, name: str) -> list[str]:
    """The subjects s_client printed for the chain the server sent (leaf first)."""
    out = subprocess.run(["openssl", "s_client", "-connect", f"{HOST}:{ft.https_port}", "-servername", name,
                          "-showcerts", "-CAfile", ft.ca_file, "-verify_return_error"],
                         stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=15, check=False)
    assert "Verify return code: 0 (ok)" in out.stdout, out.stdout + out.stderr
    return re.findall(r"^ *\d+ s:(.*)$", out.stdout, re.MULTILINE)


def _layout(kind: str, tmp_path, write, leaf, other, intermediate) -> dict:
    if kind == "nginx":
        return {"cert": write("certs/site.crt", leaf.cert_pem + intermediate.cert_pem),
                "key": write("certs/site.key", leaf.key_pem)}
    if kind == "haproxy-key-first":
        return {"cert": write("certs/site.pem", leaf.key_pem + intermediate.cert_pem + leaf.cert_pem)}
    if kind == "letsencrypt":
        live = tmp_path / "letsencrypt" / "live" / NAME
        archive = tmp_path / "letsencrypt" / "archive" / NAME
        archive.mkdir(parents=True)
        live.mkdir(parents=True)
        (archive / "fullchain1.pem").write_bytes(leaf.cert_pem + intermediate.cert_pem)
        (archive / "privkey1.pem").write_bytes(leaf.key_pem)
        (live / "fullchain.pem").symlink_to(f"../../archive/{NAME}/fullchain1.pem")
        (live / "privkey.pem").symlink_to(f"../../archive/{NAME}/privkey1.pem")
        return {"cert": str(live)}
    directory = tmp_path / "haproxy-dir"
    directory.mkdir()
    (directory / "00-other.pem").write_bytes(other.cert_pem + other.key_pem + intermediate.cert_pem)
    (directory / "www.pem").write_bytes(intermediate.cert_pem + leaf.cert_pem)
    (directory / "www.pem.key").write_bytes(leaf.key_pem)
    return {"cert": str(directory)}


@pytest.mark.parametrize("kind", ["nginx", "haproxy-key-first", "letsencrypt", "pem-directory"])
def test_layout_serves_leaf_then_chain(fastterm, be, tmp_path, write, ec_leaf, other_leaf, intermediate, kind):
    entry = _layout(kind, tmp_path, write, ec_leaf, other_leaf, intermediate)
    ft = fastterm(be.address, certificates=[entry])
    shown = _shown_chain(ft, NAME)
    assert len(shown) == 2, shown
    assert "www.example.com" in shown[0] and "fastterm test intermediate" in shown[1]
    with ft.connect() as sock:   # Python ssl verifies the name and the chain
        assert sock.version() in ("TLSv1.3", "TLSv1.2")
    if kind == "pem-directory":
        assert "other.test" in _shown_chain(ft, "other.test")[0]
