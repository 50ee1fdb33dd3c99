"""A real browser through fastterm: headless Chromium (Debian ``chromium``, which ./bootstrap
installs) loads a page with a stylesheet, a script and an image, negotiates h2, and the page
reports each load's ``nextHopProtocol`` (Resource Timing) into the DOM that ``--dump-dom``
prints.

Chromium trusts the test leaf by its SPKI hash (``--ignore-certificate-errors-spki-list``,
honoured with a ``--user-data-dir``) and resolves the test name to loopback
(``--host-resolver-rules``): nothing leaves the machine.
"""

from __future__ import annotations

import base64
import hashlib
import html
import json
import re
import shutil
import subprocess

import pytest
from cryptography.hazmat.primitives import serialization
from harness import NAME, response_bytes

PAGE = b"""<!doctype html>
<html><head><link rel="stylesheet" href="/style.css"><script src="/app.js"></script></head>
<body><img id="img" src="/pixel.svg"><pre id="result">pending</pre>
<script>
window.addEventListener("load", () => {
  const img = document.getElementById("img");
  document.getElementById("result").textContent = JSON.stringify({
    page: performance.getEntriesByType("navigation")[0].nextHopProtocol,
    resources: performance.getEntriesByType("resource").map(
      e => ({path: new URL(e.name).pathname, protocol: e.nextHopProtocol})),
    script: window.appLoaded === true,
    style: getComputedStyle(document.body).getPropertyValue("--loaded").trim(),
    image: img.complete && img.naturalWidth > 0,
  });
});
</script></body></html>
"""
SUBRESOURCES = {
    "/style.css": ("text/css", b"body { --loaded: yes; }\n"),
    "/app.js": ("application/javascript", b"window.appLoaded = true;\n"),
    "/pixel.svg": ("image/svg+xml", b'<svg xmlns="http://www.w3.org/2000/svg" width="2" height="2"></svg>\n'),
}
FILES = {"/": ("text/html; charset=utf-8", PAGE), **SUBRESOURCES}


def site_handler(conn) -> None:
    """The page and its subresources; 404 for anything else (Chromium asks for a favicon)."""
    while (req := conn.read_request()) is not None:
        if req.target in FILES:
            kind, body = FILES[req.target]
            conn.send(response_bytes(200, body, [("Content-Type", kind)]))
        else:
            conn.send(response_bytes(404, b"no\n", [("Content-Type", "text/plain")], reason="Not Found"))


def chromium() -> str:
    """The browser, or a skip saying why it cannot run here."""
    exe = next(filter(None, map(shutil.which, ("chromium", "chromium-browser", "google-chrome"))), None)
    if exe is None:
        pytest.skip("chromium is not installed (./bootstrap setup installs it: apt-get install chromium)")
    try:
        probe = subprocess.run([exe, "--headless=new", "--no-sandbox", "--disable-gpu", "--dump-dom", "about:blank"],
                               capture_output=True, text=True, timeout=60, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        pytest.skip(f"chromium cannot run here: {exc}")
    if "<html>" not in probe.stdout:
        pytest.skip(f"chromium cannot run here (exit {probe.returncode}): {probe.stderr.strip()[-300:]}")
    return exe


def spki_hash(issued) -> str:
    der = issued.cert.public_key().public_bytes(serialization.Encoding.DER,
                                                serialization.PublicFormat.SubjectPublicKeyInfo)
    return base64.b64encode(hashlib.sha256(der).digest()).decode()


def test_chromium_loads_a_page_and_its_subresources_over_h2(fastterm, raw_backend, ec_leaf, tmp_path):
    exe = chromium()
    backend = raw_backend(site_handler)
    ft = fastterm(backend.address)
    res = subprocess.run([exe, "--headless=new", "--no-sandbox", "--disable-gpu", "--no-first-run",
                          "--disable-extensions", "--disable-background-networking",
                          f"--user-data-dir={tmp_path / 'chromium'}",
                          f"--ignore-certificate-errors-spki-list={spki_hash(ec_leaf)}",
                          f"--host-resolver-rules=MAP {NAME} 127.0.0.1",
                          "--virtual-time-budget=10000", "--dump-dom", ft.url("/")],
                         capture_output=True, text=True, timeout=90, check=False)
    m = re.search(r'<pre id="result">(.*?)</pre>', res.stdout, re.DOTALL)
    assert m and m.group(1) != "pending", f"exit {res.returncode}:\n{res.stdout[-2000:]}\n{res.stderr[-2000:]}"
    result = json.loads(html.unescape(m.group(1)))
    assert result["page"] == "h2", result
    assert {r["path"]: r["protocol"] for r in result["resources"]} == {path: "h2" for path in SUBRESOURCES}, result
    assert result["script"] and result["style"] == "yes" and result["image"], result
    forwarded = [r for r in backend.requests if r.target in FILES]
    assert sorted(r.target for r in forwarded) == sorted(FILES), [r.target for r in backend.requests]
    assert all(r.header("x-forwarded-proto") == "https" and r.header("host") == f"{NAME}:{ft.https_port}"
               for r in forwarded), [r.headers for r in forwarded]
