"""OCSP response verification (OpenSSL's OCSP_basic_verify through ext/tls.pyx) and the shared
slots the status callback staples from. Responses are real, signed by keys made per session."""

from __future__ import annotations

import http.client
import time
from datetime import UTC, datetime, timedelta

import pytest
from fastterm._core import SharedState, verify_ocsp_response
from ocsp_pki import der, pki, response, with_aia

from fastterm.certs.ocsp import build_request, find_issuer, parse_http_response, responder_url
from fastterm.errors import TLSError

URL = "http://127.0.0.1:9/ocsp"


@pytest.fixture(scope="module")
def p():
    return pki(URL)


def verify(p, data, **kwargs):
    return verify_ocsp_response(data, der(p["leaf"]), der(p["issuer"]), **kwargs)


def test_good_signed_by_the_issuer(p):
    status, this_update, next_update = verify(p, response(p["leaf"], p["issuer"], p["issuer"]))
    assert status == "good"
    assert abs(this_update - (time.time() - 60)) < 5
    assert next_update - this_update == 86400


def test_issuer_signature_without_its_certificate_in_the_response(p):
    data = response(p["leaf"], p["issuer"], p["issuer"], include_signer=False)
    assert verify(p, data)[0] == "good"


def test_delegated_responder(p):
    assert verify(p, response(p["leaf"], p["issuer"], p["responder"]))[0] == "good"


def test_revoked(p):
    assert verify(p, response(p["leaf"], p["issuer"], p["issuer"], status="revoked"))[0] == "revoked"


def test_unknown(p):
    assert verify(p, response(p["leaf"], p["issuer"], p["issuer"], status="unknown"))[0] == "unknown"


def test_forged_signer_is_refused(p):
    forged = response(p["leaf"], p["issuer"], p["forger"])
    with pytest.raises(TLSError, match="signature does not verify"):
        verify(p, forged)


def test_forged_signer_passes_without_verification(p):
    forged = response(p["leaf"], p["issuer"], p["forger"])
    assert verify(p, forged, verify=False)[0] == "good"


def test_signer_without_ocsp_signing_is_refused(p):
    """A certificate the issuer signed for TLS is no delegated responder (RFC 6960 4.2.2.2),
    and neither is another CA's leaf."""
    server_cert = with_aia(p["issuer"], ["other.example.com"], None)
    with pytest.raises(TLSError):
        verify(p, response(p["leaf"], p["issuer"], server_cert))
    with pytest.raises(TLSError):
        verify(p, response(p["leaf"], p["issuer"], pki(URL)["leaf"]))


def test_response_about_another_certificate(p):
    other_leaf = pki(URL)
    data = response(other_leaf["leaf"], other_leaf["issuer"], other_leaf["issuer"])
    with pytest.raises(TLSError):
        verify(p, data)
    # our issuer, another leaf: signature fine, certificate ID not ours
    sibling = with_aia(p["issuer"], ["sibling.example.com"], URL)
    with pytest.raises(TLSError, match="certificate ID"):
        verify(p, response(sibling, p["issuer"], p["issuer"]))


def test_expired_response(p):
    old = datetime.now(UTC) - timedelta(days=3)
    data = response(p["leaf"], p["issuer"], p["issuer"], this_update=old, next_update=old + timedelta(days=1))
    with pytest.raises(TLSError, match="thisUpdate..nextUpdate"):
        verify(p, data)


def test_response_from_the_future(p):
    soon = datetime.now(UTC) + timedelta(hours=2)
    with pytest.raises(TLSError):
        verify(p, response(p["leaf"], p["issuer"], p["issuer"], this_update=soon))


@pytest.mark.parametrize("garbage", [b"", b"\x00", b"garbage" * 20, b"\x30\x03\x0a\x01\x01"])
def test_garbage(p, garbage):
    with pytest.raises(TLSError):
        verify(p, garbage)


def test_truncated(p):
    data = response(p["leaf"], p["issuer"], p["issuer"])
    for n in (1, len(data) // 2, len(data) - 1):
        with pytest.raises(TLSError):
            verify(p, data[:n])


def test_responder_error_status(p):
    # OCSPResponse ::= SEQUENCE { responseStatus ENUMERATED tryLater(3) }
    with pytest.raises(TLSError, match="status 3"):
        verify(p, b"\x30\x03\x0a\x01\x03")


def test_helpers(p):
    leaf, issuer = p["leaf"].cert, p["issuer"].cert
    assert responder_url(leaf) == URL
    assert responder_url(issuer) is None
    assert find_issuer(leaf, [p["root"].cert, p["other"].cert, issuer]) is issuer
    assert find_issuer(leaf, [p["root"].cert]) is None
    assert build_request(leaf, issuer)[:1] == b"\x30"
    body = parse_http_response(b"HTTP/1.0 200 OK\r\nContent-Type: application/ocsp-response\r\n"
                               b"Content-Length: 3\r\n\r\nabc")
    assert body == b"abc"
    with pytest.raises(ValueError, match="HTTP 500"):
        parse_http_response(b"HTTP/1.0 500 Oops\r\nContent-Length: 0\r\n\r\n")
    # still open: complete only once Content-Length bytes are in
    assert parse_http_response(b"HTTP/1.0 200 OK\r\nContent-Length: 3\r\n\r\nab", closed=False) is None
    assert parse_http_response(b"HTTP/1.0 200 OK\r\nContent-Length: 3\r\n\r\nabc", closed=False) == b"abc"
    assert parse_http_response(b"HTTP/1.0 200 OK\r\n\r\nabc", closed=False) is None
    assert parse_http_response(b"HTTP/1.0 200 OK\r\nContent-", closed=False) is None
    assert parse_http_response(b"HTTP/1.0 200 OK\r\n\r\nabc") == b"abc"
    with pytest.raises(http.client.IncompleteRead):
        parse_http_response(b"HTTP/1.0 200 OK\r\nContent-Length: 3\r\n\r\nab")


def test_stapling_responder_must_be_http(p, tmp_path):
    from fastterm.certs.ocsp import stapling_sites
    from fastterm.config.model import TLSPolicy
    from fastterm.errors import ConfigError

    with pytest.raises(ConfigError, match="only http:// responders"):
        stapling_sites(None, [], [], TLSPolicy(stapling_responder="https://ocsp.example.com/"), "server[0]")
    assert stapling_sites(None, [], [], TLSPolicy(stapling_responder="http://127.0.0.1:9/"), "server[0]") == []


def test_shared_slots(p):
    shared = SharedState(1 << 16)
    data = response(p["leaf"], p["issuer"], p["issuer"])
    assert shared.ocsp(0) is None
    shared.set_ocsp(3, data, int(time.time()) + 60)
    assert shared.ocsp(3) == data
    assert shared.ocsp(4) is None
    shared.set_ocsp(3, data, int(time.time()) - 1)   # past its nextUpdate: not stapled
    assert shared.ocsp(3) is None
    shared.set_ocsp(3, data, int(time.time()) + 60)
    shared.set_ocsp(3, None, 0)
    assert shared.ocsp(3) is None
    with pytest.raises(ValueError):
        shared.set_ocsp(256, data, 1)
    with pytest.raises(ValueError):
        shared.set_ocsp(0, b"x" * 5000, int(time.time()) + 60)
