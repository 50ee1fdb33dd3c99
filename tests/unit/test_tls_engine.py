"""The TLS engine, sans-IO: our TLSConnection wired to a peer in memory, no socket anywhere.

The peer is CPython's ``ssl`` over ``MemoryBIO`` (``SSLContext.wrap_bio``), or a second
TLSConnection. A pair is pumped like h11's ``ConnectionPair``: whatever one side wrote is
handed to the other until neither has anything to say. Each handshake also runs with the
ciphertext fed ONE BYTE AT A TIME (httptools' fragmented-bytes tests), since a socket may
hand us any split.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import socket
import ssl
import time
import warnings

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from fastterm._core import (
    CLOSED,
    EOF,
    FAILED,
    WANT_READ,
    Identity,
    TLSConnection,
    TLSContext,
    check_dhparam,
    live_objects,
)

from fastterm import ConfigError, TLSError
from fastterm.demo import issue_cert, make_ca

OK = 0
MiB = 1 << 20


# ---- PKI and contexts -------------------------------------------------------

@pytest.fixture(scope="module")
def wildcard_leaf(intermediate):
    return issue_cert(intermediate, ["*.wild.example.com"], "EC")


@pytest.fixture(scope="module")
def ca_file(ca, tmp_path_factory):
    path = tmp_path_factory.mktemp("pki") / "ca.pem"
    path.write_bytes(ca.cert_pem)
    return str(path)


@pytest.fixture(scope="module")
def other_ca_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("pki-other") / "ca.pem"
    path.write_bytes(make_ca("someone else's root").cert_pem)
    return str(path)


def server_context(*leaves, intermediate=None, **kwargs) -> TLSContext:
    ctx = TLSContext(**kwargs)
    for leaf in leaves:
        ctx.add_certificate(leaf.cert_pem + (intermediate.cert_pem if intermediate else b""), leaf.key_pem)
    return ctx


@pytest.fixture(scope="module")
def ec_server(ec_leaf, intermediate):
    return server_context(ec_leaf, intermediate=intermediate)


@pytest.fixture(scope="module")
def dual_server(ec_leaf, rsa_leaf, intermediate):
    """An ECDSA and an RSA certificate on one context (as the demo serves)."""
    return server_context(ec_leaf, rsa_leaf, intermediate=intermediate)


def client_context(ca_file=None, *, alpn=("http/1.1",), minimum=None, maximum=None,
                   ciphers=None) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    if ca_file:
        ctx.load_verify_locations(ca_file)
    else:
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    if alpn:
        ctx.set_alpn_protocols(list(alpn))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)   # TLSv1/TLSv1_1 members
        if minimum is not None:
            ctx.minimum_version = minimum
        if maximum is not None:
            ctx.maximum_version = maximum
    if ciphers:
        ctx.set_ciphers(ciphers)
    return ctx


def peer_cert(client: ssl.SSLObject) -> x509.Certificate:
    return x509.load_der_x509_certificate(client.getpeercert(binary_form=True))


def key_type(cert: x509.Certificate) -> str:
    key = cert.public_key()
    if isinstance(key, rsa.RSAPublicKey):
        return "RSA"
    if isinstance(key, ec.EllipticCurvePublicKey):
        return "EC"
    return type(key).__name__


def sans(cert: x509.Certificate) -> list[str]:
    return cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value.get_values_for_type(
        x509.DNSName)


# ---- Pumps ------------------------------------------------------------------

def chunks(data: bytes, one_byte: bool):
    if one_byte:
        return [data[i:i + 1] for i in range(len(data))]
    return [data] if data else []


class PyClientPair:
    """CPython ``ssl`` client (MemoryBIO) <-> our TLSConnection server."""

    def __init__(self, server_ctx: TLSContext, client_ctx: ssl.SSLContext, server_hostname=None,
                 session=None):
        self.incoming = ssl.MemoryBIO()     # server -> client ciphertext
        self.outgoing = ssl.MemoryBIO()     # client -> server ciphertext
        self.client = client_ctx.wrap_bio(self.incoming, self.outgoing, server_hostname=server_hostname,
                                          session=session)
        self.server = TLSConnection(server_ctx)
        self.server_status = None
        self.client_error: ssl.SSLError | None = None

    # client -> server
    def to_server(self, one_byte=False) -> int:
        """Feed the client's pending ciphertext to the server, stepping its handshake after
        each piece; returns the last handshake status (None when nothing was pending)."""
        data = self.outgoing.read()
        for piece in chunks(data, one_byte):
            self.server.feed(piece)
            if not self.server.handshake_done:
                self.server_status = self.server.do_handshake()
                if self.server_status == FAILED:
                    break
        return self.server_status

    # server -> client
    def to_client(self, one_byte=False) -> bool:
        data = self.server.data_to_send()
        for piece in chunks(data, one_byte):
            self.incoming.write(piece)
            if one_byte:
                self._client_step()
        return bool(data)

    def _client_step(self) -> bool:
        if self.client_error is not None:
            return False
        try:
            self.client.do_handshake()
            return True
        except (ssl.SSLWantReadError, ssl.SSLWantWriteError):
            return False
        except ssl.SSLError as err:
            self.client_error = err
            return False

    def handshake(self, one_byte=False) -> int:
        """Pump until both sides are done or one failed; returns the server's status."""
        self.server_status = self.server.do_handshake()    # WANT_READ: nothing received yet
        for _ in range(64 if not one_byte else 100000):
            client_done = self._client_step()
            self.to_server(one_byte)
            moved = self.to_client(one_byte)
            if self.server_status == FAILED or self.client_error is not None:
                self._client_step()   # let the client read the alert
                return self.server_status
            if client_done and self.server_status == OK and not moved:
                self.take_tickets()
                return OK
        raise AssertionError("handshake did not converge")

    def take_tickets(self):
        """TLS 1.3 sends session tickets after the handshake; a client read consumes them."""
        self.to_client()
        try:
            self.client.read(1)
        except ssl.SSLWantReadError:
            pass

    # application data
    def client_send(self, data: bytes, one_byte=False) -> bytes:
        self.client.write(data)
        self.to_server(one_byte)
        return self.server_read_all()

    def server_read_all(self) -> bytes:
        out = bytearray()
        while True:
            got = self.server.read(65536)
            if isinstance(got, int):
                self.last_read = got
                return bytes(out)
            out += got

    def server_send(self, data: bytes) -> bytes:
        view = memoryview(data)
        while view:
            n = self.server.write(view)
            assert n > 0, n
            view = view[n:]
        self.to_client()
        return self.client_read_all()

    def client_read_all(self) -> bytes:
        out = bytearray()
        while True:
            try:
                out += self.client.read(65536)
            except ssl.SSLWantReadError:
                return bytes(out)


class OurPair:
    """Our TLSConnection client <-> a server that is ours, or CPython's ``ssl`` (MemoryBIO)."""

    def __init__(self, client_ctx: TLSContext, server, server_hostname=None):
        self.client = TLSConnection(client_ctx, server_hostname=server_hostname)
        if isinstance(server, TLSContext):
            self.server = TLSConnection(server)
            self.py_server = False
        else:
            self.s_in, self.s_out = ssl.MemoryBIO(), ssl.MemoryBIO()
            self.server = server.wrap_bio(self.s_in, self.s_out, server_side=True)
            self.py_server = True
        self.client_status = None
        self.server_status = None

    def _server_step(self):
        if self.server_status == FAILED or isinstance(self.server_status, ssl.SSLError):
            return   # keep the first failure and its reason
        if not self.py_server:
            self.server_status = self.server.do_handshake()
            return
        try:
            self.server.do_handshake()
            self.server_status = OK
        except ssl.SSLWantReadError:
            self.server_status = WANT_READ
        except ssl.SSLError as err:
            self.server_status = err

    def _server_out(self) -> bytes:
        return self.s_out.read() if self.py_server else self.server.data_to_send()

    def _server_in(self, data: bytes):
        if self.py_server:
            self.s_in.write(data)
        else:
            self.server.feed(data)

    def handshake(self, one_byte=False):
        for _ in range(64 if not one_byte else 100000):
            if not self.client.handshake_done or self.client_status is None:
                self.client_status = self.client.do_handshake()
            out = self.client.data_to_send()
            for piece in chunks(out, one_byte):
                self._server_in(piece)
                self._server_step()
            if not out:
                self._server_step()
            back = self._server_out()
            for piece in chunks(back, one_byte):
                self.client.feed(piece)
                if not self.client.handshake_done:
                    self.client_status = self.client.do_handshake()
            if self.client_status == FAILED:
                self._server_in(self.client.data_to_send())
                self._server_step()
                return self.client_status
            if self.client_status == OK and self.server_status == OK and not out and not back:
                return OK
            if isinstance(self.server_status, ssl.SSLError) or self.server_status == FAILED:
                return self.server_status
        raise AssertionError("handshake did not converge")


def handshake(server_ctx, client_ctx, one_byte=False, **kwargs) -> PyClientPair:
    pair = PyClientPair(server_ctx, client_ctx, **kwargs)
    status = pair.handshake(one_byte)
    assert status == OK, (status, pair.server.error, pair.client_error)
    assert pair.server.handshake_done
    return pair


BYTE_SPLITS = pytest.mark.parametrize("one_byte", [False, True], ids=["whole", "byte-by-byte"])


# ---- Protocol versions and ciphers -----------------------------------------

@BYTE_SPLITS
def test_tls13_negotiated(ec_server, ca_file, one_byte):
    pair = handshake(ec_server, client_context(ca_file), one_byte, server_hostname="www.example.com")
    assert pair.server.version == "TLSv1.3" == pair.client.version()
    assert pair.server.cipher == pair.client.cipher()[0]
    assert pair.server.cipher.startswith("TLS_")
    assert pair.server.alpn == "http/1.1" == pair.client.selected_alpn_protocol()
    assert pair.server.server_name == "www.example.com"
    assert pair.server.session_reused is False
    assert pair.server.error is None


@BYTE_SPLITS
def test_tls12_negotiated(ec_server, ca_file, one_byte):
    client = client_context(ca_file, maximum=ssl.TLSVersion.TLSv1_2)
    pair = handshake(ec_server, client, one_byte, server_hostname="www.example.com")
    assert pair.server.version == "TLSv1.2" == pair.client.version()
    assert pair.server.cipher == pair.client.cipher()[0]
    assert pair.server.cipher.startswith("ECDHE-ECDSA-")


def test_tls12_cipher_from_client_list(ec_server):
    client = client_context(maximum=ssl.TLSVersion.TLSv1_2, ciphers="ECDHE-ECDSA-AES128-GCM-SHA256")
    assert handshake(ec_server, client).server.cipher == "ECDHE-ECDSA-AES128-GCM-SHA256"


def test_tls12_server_order_but_chacha_when_client_prefers_it(ec_server):
    aes_first = client_context(maximum=ssl.TLSVersion.TLSv1_2,
                               ciphers="ECDHE-ECDSA-AES256-GCM-SHA384:ECDHE-ECDSA-CHACHA20-POLY1305")
    chacha_first = client_context(maximum=ssl.TLSVersion.TLSv1_2,
                                  ciphers="ECDHE-ECDSA-CHACHA20-POLY1305:ECDHE-ECDSA-AES256-GCM-SHA384")
    assert handshake(ec_server, aes_first).server.cipher == "ECDHE-ECDSA-AES256-GCM-SHA384"
    assert handshake(ec_server, chacha_first).server.cipher == "ECDHE-ECDSA-CHACHA20-POLY1305"


def test_server_cipher_list_is_applied(ec_leaf, intermediate):
    ctx = server_context(ec_leaf, intermediate=intermediate, ciphers="ECDHE-ECDSA-AES128-GCM-SHA256",
                         ciphersuites="TLS_CHACHA20_POLY1305_SHA256")
    assert handshake(ctx, client_context(maximum=ssl.TLSVersion.TLSv1_2)).server.cipher == \
        "ECDHE-ECDSA-AES128-GCM-SHA256"
    assert handshake(ctx, client_context()).server.cipher == "TLS_CHACHA20_POLY1305_SHA256"


def test_tls13_only_refuses_tls12_client(ec_leaf):
    ctx = server_context(ec_leaf, protocols=("TLSv1.3",))
    pair = PyClientPair(ctx, client_context(maximum=ssl.TLSVersion.TLSv1_2))
    assert pair.handshake() == FAILED
    assert "protocol" in pair.server.error
    assert pair.client_error is not None


def test_tls12_only_context(ec_leaf):
    ctx = server_context(ec_leaf, protocols=("TLSv1.2",))
    assert handshake(ctx, client_context()).server.version == "TLSv1.2"


@pytest.mark.parametrize("maximum", ["TLSv1", "TLSv1_1"])
def test_old_protocol_client_refused(ec_server, maximum):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        version = getattr(ssl.TLSVersion, maximum)
    # SECLEVEL=0: OpenSSL 3 would otherwise refuse to even offer TLS 1.0/1.1.
    client = client_context(minimum=ssl.TLSVersion.MINIMUM_SUPPORTED, maximum=version,
                            ciphers="DEFAULT:@SECLEVEL=0")
    pair = PyClientPair(ec_server, client)
    assert pair.handshake() == FAILED
    assert "protocol" in pair.server.error, pair.server.error
    assert "error:" in pair.server.error          # the OpenSSL error string itself
    assert not pair.server.handshake_done
    assert pair.server.version is None
    assert isinstance(pair.client_error, ssl.SSLError)   # it got the protocol_version alert


# ---- DHE (tls.dhparam, nginx ssl_dhparam) -----------------------------------

DHE_OFFER = "DHE-RSA-AES128-GCM-SHA256"
WITH_DHE = "ECDHE-RSA-AES128-GCM-SHA256:DHE-RSA-AES256-GCM-SHA384:DHE-RSA-AES128-GCM-SHA256"


def test_dhe_not_negotiated_without_dhparam(rsa_leaf):
    """As nginx: DHE suites in the cipher list are not offered without DH parameters."""
    ctx = server_context(rsa_leaf, ciphers=WITH_DHE)
    pair = PyClientPair(ctx, client_context(maximum=ssl.TLSVersion.TLSv1_2, ciphers=DHE_OFFER))
    assert pair.handshake() == FAILED
    assert "no shared cipher" in pair.server.error, pair.server.error
    assert handshake(ctx, client_context(maximum=ssl.TLSVersion.TLSv1_2)).server.cipher.startswith("ECDHE-")


@BYTE_SPLITS
def test_dhe_negotiated_with_dhparam(rsa_leaf, dhparam_pem, one_byte):
    ctx = server_context(rsa_leaf, ciphers=WITH_DHE, dhparam=dhparam_pem)
    pair = handshake(ctx, client_context(maximum=ssl.TLSVersion.TLSv1_2, ciphers=DHE_OFFER), one_byte)
    assert pair.server.cipher == DHE_OFFER == pair.client.cipher()[0]
    assert pair.server.version == "TLSv1.2"
    # server order: ECDHE first still, DHE only for clients without it
    assert handshake(ctx, client_context(maximum=ssl.TLSVersion.TLSv1_2)).server.cipher.startswith("ECDHE-")


def test_dhparam_of_the_sni_context_applies(ec_leaf, rsa_leaf, dhparam_pem):
    default = server_context(ec_leaf)
    default.set_sni({"rsa.example.com": server_context(rsa_leaf, ciphers=WITH_DHE, dhparam=dhparam_pem)})
    client = client_context(maximum=ssl.TLSVersion.TLSv1_2, ciphers=DHE_OFFER)
    assert handshake(default, client, server_hostname="rsa.example.com").server.cipher == DHE_OFFER


@pytest.mark.parametrize(("pem", "reason"), [
    (b"", "no DH parameters"),
    (b"-----BEGIN DH PARAMETERS-----\nnot base64\n-----END DH PARAMETERS-----\n", "no DH parameters"),
    (b"-----BEGIN EC PARAMETERS-----\nBggqhkjOPQMBBw==\n-----END EC PARAMETERS-----\n", "not DH parameters"),
], ids=["empty", "garbage", "ec-parameters"])
def test_bad_dhparam_is_a_tls_error(rsa_leaf, pem, reason):
    base = live_objects()["SSL_CTX"]
    with pytest.raises(TLSError, match=reason):
        check_dhparam(pem)
    with pytest.raises(TLSError, match=reason):
        server_context(rsa_leaf, dhparam=pem)
    assert live_objects()["SSL_CTX"] == base


def test_check_dhparam_accepts_ffdhe2048(dhparam_pem):
    check_dhparam(dhparam_pem)


# ---- Certificate choice: RSA vs ECDSA ---------------------------------------

def test_key_types_listed(dual_server):
    assert dual_server.key_types == ["EC", "RSA"]


@pytest.mark.parametrize("order", ["ec-first", "rsa-first"])
@pytest.mark.parametrize("client_cipher, expected", [
    ("ECDHE-RSA-AES128-GCM-SHA256", "RSA"),
    ("ECDHE-ECDSA-AES128-GCM-SHA256", "EC"),
], ids=["rsa-only-client", "ecdsa-only-client"])
def test_certificate_by_client_capability_tls12(ec_leaf, rsa_leaf, intermediate, ca_file, order,
                                                client_cipher, expected):
    leaves = (ec_leaf, rsa_leaf) if order == "ec-first" else (rsa_leaf, ec_leaf)
    ctx = server_context(*leaves, intermediate=intermediate)
    # The CA file verifies the chain: each certificate must carry its own intermediate.
    client = client_context(ca_file, maximum=ssl.TLSVersion.TLSv1_2, ciphers=client_cipher)
    host = "www.example.com" if expected == "EC" else "rsa.example.com"
    pair = handshake(ctx, client, server_hostname=host)
    assert key_type(peer_cert(pair.client)) == expected
    assert pair.server.cipher == client_cipher


def test_ecdsa_capable_tls13_client_gets_ecdsa(dual_server):
    pair = handshake(dual_server, client_context())
    assert pair.server.version == "TLSv1.3"
    assert key_type(peer_cert(pair.client)) == "EC"


def test_rsa_only_context_serves_tls13(rsa_leaf, intermediate, ca_file):
    ctx = server_context(rsa_leaf, intermediate=intermediate)
    pair = handshake(ctx, client_context(ca_file), server_hostname="rsa.example.com")
    assert key_type(peer_cert(pair.client)) == "RSA"


# ---- ALPN -------------------------------------------------------------------

def test_alpn_server_preference(ec_leaf):
    ctx = server_context(ec_leaf, alpn=("h2", "http/1.1"))
    pair = handshake(ctx, client_context(alpn=("http/1.1", "h2")))
    assert pair.server.alpn == "h2" == pair.client.selected_alpn_protocol()


def test_alpn_client_without_alpn(ec_server):
    pair = handshake(ec_server, client_context(alpn=()))
    assert pair.server.alpn is None
    assert pair.client.selected_alpn_protocol() is None


def test_alpn_server_without_alpn_does_not_ack(ec_leaf):
    ctx = server_context(ec_leaf, alpn=())
    pair = handshake(ctx, client_context(alpn=("h2", "http/1.1")))
    assert pair.server.alpn is None
    assert pair.client.selected_alpn_protocol() is None


@pytest.mark.parametrize("maximum", [None, ssl.TLSVersion.TLSv1_2], ids=["tls13", "tls12"])
def test_alpn_no_overlap_fails(ec_server, maximum):
    pair = PyClientPair(ec_server, client_context(alpn=("h2", "spdy/3"), maximum=maximum))
    assert pair.handshake() == FAILED
    assert "application protocol" in pair.server.error, pair.server.error
    assert "NO_APPLICATION_PROTOCOL" in str(pair.client_error).upper().replace(" ", "_")


@pytest.mark.parametrize("bad", ["", "x" * 256, b""])
def test_alpn_invalid_name_is_config_error(bad):
    with pytest.raises(ConfigError):
        TLSContext(alpn=("http/1.1", bad))


# ---- SNI --------------------------------------------------------------------

@pytest.fixture(scope="module")
def sni_server(ec_leaf, rsa_leaf, wildcard_leaf, intermediate):
    default = server_context(ec_leaf, intermediate=intermediate)
    rsa_ctx = server_context(rsa_leaf, intermediate=intermediate)
    wild_ctx = server_context(wildcard_leaf, intermediate=intermediate)
    default.set_sni({"RSA.example.com": rsa_ctx, "*.wild.example.com": wild_ctx})
    return default, rsa_ctx, wild_ctx


def test_select_exact_wildcard_default(sni_server):
    default, rsa_ctx, wild_ctx = sni_server
    assert default.select("rsa.example.com") is rsa_ctx
    assert default.select("RSA.EXAMPLE.COM") is rsa_ctx       # names are case-insensitive
    assert default.select("rsa.example.com.") is rsa_ctx      # absolute form
    assert default.select("a.wild.example.com") is wild_ctx
    assert default.select("A.Wild.Example.Com") is wild_ctx
    assert default.select("wild.example.com") is default      # "*." needs one more label
    assert default.select("a.b.wild.example.com") is wild_ctx  # or more: nginx's server_name rule
    assert default.select("www.example.com") is default
    assert default.select("unknown.test") is default
    assert default.select("localhost") is default
    assert default.select("") is default


def test_longest_sni_wildcard_wins(ec_leaf, wildcard_leaf, intermediate):
    default = server_context(ec_leaf, intermediate=intermediate)
    outer = server_context(wildcard_leaf, intermediate=intermediate)
    inner = server_context(wildcard_leaf, intermediate=intermediate)
    default.set_sni({"*.example.com": outer, "*.wild.example.com": inner})
    assert default.select("a.example.com") is outer
    assert default.select("a.b.example.com") is outer
    assert default.select("a.wild.example.com") is inner
    assert default.select("x.a.wild.example.com") is inner
    assert default.select("example.com") is default


def test_sni_suffix_wildcard_and_regex_names_in_nginx_order(ec_leaf, rsa_leaf, wildcard_leaf, intermediate):
    """After the exact and *.suffix names: the longest prefix.*, then the regexes in order; a
    handshake moves to the chosen context (its certificate), selected_context finds it."""
    from fastterm.config.plan import server_name_regex

    default, tail, regex, head = (server_context(leaf, intermediate=intermediate)
                                  for leaf in (ec_leaf, rsa_leaf, wildcard_leaf, wildcard_leaf))
    default.set_sni({"app.example.*": tail, "*.b.example.com": head},
                    [(server_name_regex(r"~^app\d*\."), regex), (server_name_regex(r"~^WWW\."), tail)])
    for name, chosen in (("app.example.org", tail), ("APP.example.co.uk.", tail), ("app7.x.test", regex),
                         ("app.b.example.com", head), ("www.other.test", tail), ("app.example", regex),
                         ("other.test", default)):
        assert default.select(name) is chosen, name
    pair = handshake(default, client_context(), False, server_hostname="app7.x.test")
    assert pair.server.selected_context is regex
    assert "*.wild.example.com" in sans(peer_cert(pair.client))


@BYTE_SPLITS
@pytest.mark.parametrize("name, which, expected_san", [
    ("rsa.example.com", 1, "rsa.example.com"),
    ("Rsa.Example.Com", 1, "rsa.example.com"),
    ("a.wild.example.com", 2, "*.wild.example.com"),
    ("www.example.com", 0, "www.example.com"),
    ("nobody.test", 0, "www.example.com"),
])
def test_sni_picks_the_context(sni_server, ca_file, name, which, expected_san, one_byte):
    client = client_context(ca_file)
    client.check_hostname = which != 0 or name == "www.example.com"
    pair = handshake(sni_server[0], client, one_byte, server_hostname=name)
    assert pair.server.selected_context is sni_server[which]
    assert pair.server.server_name == name
    assert expected_san in sans(peer_cert(pair.client))
    assert pair.server.alpn == "http/1.1"


def test_no_sni_gets_default(sni_server):
    pair = handshake(sni_server[0], client_context())
    assert pair.server.server_name is None
    assert pair.server.selected_context is sni_server[0]
    assert "www.example.com" in sans(peer_cert(pair.client))


def test_set_sni_replaces_the_map(ec_leaf, rsa_leaf):
    default = server_context(ec_leaf)
    other = server_context(rsa_leaf)
    default.set_sni({"a.test": other})
    default.set_sni({"b.test": other})
    assert default.select("a.test") is default
    assert default.select("b.test") is other


def test_sni_choice_travels_with_the_connection(sni_server):
    """The context SNI chose is the connection's (the HTTP policy of the server block is
    looked up by name in the worker's SiteTable: the TLS engine knows nothing of HTTP)."""
    default, rsa_ctx, _ = sni_server
    pair = handshake(default, client_context(), server_hostname="rsa.example.com")
    assert pair.server.selected_context is rsa_ctx


# ---- Identities: a certificate served by another context (PEM directories) --------------

@pytest.fixture
def identity_server(ec_leaf, rsa_leaf, other_leaf, intermediate):
    """The default context serves ec_leaf; rsa.example.com and other.example.org get Identities
    on it (one chain each) and www.two.test one with both key types (other.test + RSA)."""
    default = server_context(ec_leaf, intermediate=intermediate)
    chain = lambda leaf: (leaf.cert_pem + intermediate.cert_pem, leaf.key_pem)
    rsa = Identity(default, [chain(rsa_leaf)])
    other = Identity(default, [chain(other_leaf)])
    both = Identity(default, [chain(other_leaf), chain(rsa_leaf)])
    default.set_sni({"rsa.example.com": rsa, "other.example.org": other, "www.two.test": both})
    return default, rsa, other, both


@BYTE_SPLITS
def test_identity_serves_its_chain_on_the_same_context(identity_server, ca_file, one_byte):
    default, rsa, other, _ = identity_server
    assert default.select("rsa.example.com") is rsa and rsa.context is default
    for name, want in (("rsa.example.com", "rsa.example.com"), ("www.example.com", "www.example.com")):
        pair = handshake(default, client_context(ca_file), one_byte, server_hostname=name)
        assert want in sans(peer_cert(pair.client))
        assert pair.server.selected_context is default
    assert rsa.key_types == ["RSA"]   # parsed by the first handshake that named it
    assert other.key_types == []      # never named: still PEM text


def test_identity_replaces_every_certificate_of_the_context(ec_leaf, rsa_leaf, intermediate):
    """A client that takes only RSA, naming an ECDSA-only identity on a context that has an
    RSA certificate of its own, must not get the context's: the handshake fails instead."""
    default = server_context(ec_leaf, rsa_leaf, intermediate=intermediate)
    ec_only = Identity(default, [(ec_leaf.cert_pem + intermediate.cert_pem, ec_leaf.key_pem)])
    default.set_sni({"ec.only.test": ec_only})
    client = client_context(maximum=ssl.TLSVersion.TLSv1_2, ciphers="ECDHE-RSA-AES128-GCM-SHA256")
    pair = PyClientPair(default, client, server_hostname="ec.only.test")
    assert pair.handshake() == FAILED
    pair = handshake(default, client, server_hostname="www.example.com")   # the context's own RSA
    assert "rsa.example.com" in sans(peer_cert(pair.client))


def test_identity_with_both_key_types_gives_each_client_its_own(identity_server, ca_file):
    default, _, _, both = identity_server
    rsa_client = client_context(ca_file, maximum=ssl.TLSVersion.TLSv1_2, ciphers="ECDHE-RSA-AES128-GCM-SHA256")
    rsa_client.check_hostname = False
    pair = handshake(default, rsa_client, server_hostname="www.two.test")
    assert "rsa.example.com" in sans(peer_cert(pair.client))
    ec_client = client_context(ca_file)
    ec_client.check_hostname = False
    pair = handshake(default, ec_client, server_hostname="www.two.test")
    assert "other.test" in sans(peer_cert(pair.client))
    assert both.key_types == ["EC", "RSA"]


def test_identity_that_openssl_refuses_fails_its_handshake_only(ec_leaf, rsa_leaf, intermediate, ca_file):
    default = server_context(ec_leaf, intermediate=intermediate)
    broken = Identity(default, [(ec_leaf.cert_pem, rsa_leaf.key_pem)])   # key of another certificate
    with pytest.raises(TLSError, match="does not match"):
        broken.load()
    broken = Identity(default, [(ec_leaf.cert_pem, rsa_leaf.key_pem)])
    default.set_sni({"broken.test": broken})
    pair = PyClientPair(default, client_context(), server_hostname="broken.test")
    assert pair.handshake() == FAILED
    assert "www.example.com" in sans(peer_cert(handshake(default, client_context()).client))
    with pytest.raises(ValueError):
        Identity(default, [])


# ---- Session resumption -----------------------------------------------------

def resume(server_ctx, client_ctx, host=None, one_byte=False):
    first = handshake(server_ctx, client_ctx, server_hostname=host)
    assert first.server.session_reused is False
    session = first.client.session
    assert session is not None
    second = handshake(server_ctx, client_ctx, one_byte, server_hostname=host, session=session)
    return first, second


@pytest.mark.parametrize("maximum", [None, ssl.TLSVersion.TLSv1_2], ids=["tls13", "tls12"])
@pytest.mark.parametrize("tickets", [True, False], ids=["tickets", "session-id-cache"])
def test_session_resumption(ec_leaf, maximum, tickets):
    ctx = server_context(ec_leaf, session_tickets=tickets)
    client = client_context(maximum=maximum)
    first, second = resume(ctx, client)
    if maximum is not None:
        assert first.client.session.has_ticket is tickets
    assert second.server.session_reused is True
    assert second.client.session_reused is True
    assert second.server.version == first.server.version


def test_one_tls13_ticket_per_handshake(ec_leaf):
    """One NewSessionTicket, not OpenSSL's default two (SSL_CTX_set_num_tickets): each costs
    the server an encryption, a record and a session-cache store. Counted by the client's
    message callback (CPython's ``_msg_callback``, what its own ssl tests use)."""
    client = client_context()
    seen = []
    client._msg_callback = lambda _conn, direction, _version, _content, msg, _data: seen.append((direction, msg))
    pair = handshake(server_context(ec_leaf), client)
    pair.take_tickets()
    assert pair.client.version() == "TLSv1.3"
    assert seen.count(("read", ssl._TLSMessageType.NEWSESSION_TICKET)) == 1, seen
    assert pair.client.session.has_ticket


def test_session_id_cache_counts_sessions(ec_leaf):
    ctx = server_context(ec_leaf, session_tickets=False)
    pair = handshake(ctx, client_context(maximum=ssl.TLSVersion.TLSv1_2))
    assert pair.server.handshake_done
    assert ctx.sessions_cached == 1


@pytest.mark.parametrize("maximum", [None, ssl.TLSVersion.TLSv1_2], ids=["tls13", "tls12"])
@pytest.mark.parametrize("ending", ["server-close-notify", "client-close-notify", "client-eof", "dropped"])
def test_cached_session_survives_the_connection(ec_leaf, maximum, ending):
    """A session in the server cache must outlive the TLSConnection however the
    connection ended without a fatal alert. OpenSSL's SSL_free() removes the session of
    an SSL that never *sent* close_notify (ssl_clear_bad_session), so a server that frees
    the connection after the client closed first (the usual keep-alive ending) forgets
    the session unless it marks the SSL shut down first, as nginx's ngx_ssl_shutdown does
    with SSL_set_shutdown(SSL_SENT_SHUTDOWN|SSL_RECEIVED_SHUTDOWN). TLS 1.1+ no longer
    asks to invalidate a session on a truncated close (RFC 5246 §7.2.1)."""
    ctx = server_context(ec_leaf, session_tickets=False)
    client = client_context(maximum=maximum)
    pair = handshake(ctx, client)
    session = pair.client.session
    if ending == "server-close-notify":
        assert pair.server.shutdown() == OK
    elif ending == "client-close-notify":
        try:
            pair.client.unwrap()
        except ssl.SSLWantReadError:
            pass
        pair.to_server()
        assert pair.server.read() == CLOSED
    elif ending == "client-eof":
        pair.server.feed_eof()
        assert pair.server.read() == CLOSED
    cached = ctx.sessions_cached
    del pair   # the worker drops the TLSConnection: SSL_free
    assert ctx.sessions_cached == cached
    again = handshake(ctx, client, session=session)
    assert again.server.session_reused is True


def test_session_resumption_byte_by_byte(ec_leaf):
    ctx = server_context(ec_leaf)
    _, second = resume(ctx, client_context(), one_byte=True)
    assert second.server.session_reused is True


@pytest.mark.parametrize("maximum", [None, ssl.TLSVersion.TLSv1_2], ids=["tls13", "tls12"])
def test_no_cache_no_tickets_no_resumption(ec_leaf, maximum):
    ctx = server_context(ec_leaf, session_tickets=False, session_cache=False)
    _, second = resume(ctx, client_context(maximum=maximum))
    assert second.server.session_reused is False
    assert second.client.session_reused is False


def test_session_from_another_context_not_resumed(ec_leaf):
    ctx_a = server_context(ec_leaf)
    ctx_b = server_context(ec_leaf)
    client = client_context()
    first = handshake(ctx_a, client)
    second = handshake(ctx_b, client, session=first.client.session)
    assert second.server.session_reused is False


@pytest.mark.parametrize("tickets", [True, False], ids=["tickets", "session-id-cache"])
def test_session_survives_sni_switch(sni_server, tickets, ec_leaf, rsa_leaf, intermediate):
    """The ClientHello callback moves the connection to the context SNI names before
    OpenSSL looks the session up, so a session made there resumes there (its session ID
    context is that context's, not the listener default's)."""
    default = server_context(ec_leaf, intermediate=intermediate, session_tickets=tickets)
    rsa_ctx = server_context(rsa_leaf, intermediate=intermediate, session_tickets=tickets)
    default.set_sni({"rsa.example.com": rsa_ctx})
    _, second = resume(default, client_context(), host="rsa.example.com")
    assert second.server.session_reused is True
    assert second.server.selected_context is rsa_ctx


# ---- Server blocks: SNI picks the settings and the scope of sessions ----------------

def listener(ec_leaf, *others, **default_settings):
    """A listener's default context (www.example.com) and one context per ``others``
    entry (settings dict), named a.test, b.test, ... as separate server blocks are."""
    default = server_context(ec_leaf, **default_settings)
    blocks = [server_context(ec_leaf, **settings) for settings in others]
    default.set_sni({f"{chr(ord('a') + i)}.test": ctx for i, ctx in enumerate(blocks)})
    return default, *blocks


def refused(default, client, name) -> PyClientPair:
    pair = PyClientPair(default, client, server_hostname=name)
    assert pair.handshake() == FAILED
    assert pair.client_error is not None
    return pair


def test_server_block_protocols_apply(ec_leaf):
    """A TLS 1.3-only server block refuses a TLS 1.2 client that names it, while the
    listener's default (and a TLS 1.2-only block) serve TLS 1.2 on the same listener."""
    default, _, only12 = listener(ec_leaf, {"protocols": ("TLSv1.3",)}, {"protocols": ("TLSv1.2",)})
    tls12 = client_context(maximum=ssl.TLSVersion.TLSv1_2)
    assert "protocol" in refused(default, tls12, "a.test").server.error
    assert handshake(default, tls12, server_hostname="www.example.com").server.version == "TLSv1.2"
    pair = handshake(default, client_context(), server_hostname="b.test")
    assert pair.server.version == "TLSv1.2"
    assert pair.server.selected_context is only12
    assert handshake(default, client_context(), server_hostname="a.test").server.version == "TLSv1.3"


def test_server_block_tls12_ciphers_apply(ec_leaf):
    default, _ = listener(ec_leaf, {"ciphers": "ECDHE-ECDSA-CHACHA20-POLY1305"})
    aes_only = client_context(maximum=ssl.TLSVersion.TLSv1_2, ciphers="ECDHE-ECDSA-AES128-GCM-SHA256")
    assert "no shared cipher" in refused(default, aes_only, "a.test").server.error
    assert handshake(default, aes_only, server_hostname="www.example.com").server.cipher == \
        "ECDHE-ECDSA-AES128-GCM-SHA256"
    assert handshake(default, client_context(maximum=ssl.TLSVersion.TLSv1_2),
                     server_hostname="a.test").server.cipher == "ECDHE-ECDSA-CHACHA20-POLY1305"


def test_server_block_tls13_ciphersuites_apply(ec_leaf):
    """OpenSSL picks the TLS 1.3 suite before it parses SNI: only a switch in the
    ClientHello callback gives the named server's suites."""
    default, _ = listener(ec_leaf, {"ciphersuites": "TLS_CHACHA20_POLY1305_SHA256"},
                          ciphersuites="TLS_AES_128_GCM_SHA256:TLS_AES_256_GCM_SHA384")
    assert handshake(default, client_context(), server_hostname="a.test").server.cipher == \
        "TLS_CHACHA20_POLY1305_SHA256"
    assert handshake(default, client_context(), server_hostname="www.example.com").server.cipher == \
        "TLS_AES_128_GCM_SHA256"


@pytest.mark.parametrize("maximum", [None, ssl.TLSVersion.TLSv1_2], ids=["tls13", "tls12"])
def test_server_block_groups_apply(ec_leaf, maximum):
    default, _ = listener(ec_leaf, {"groups": "P-384"}, groups="X25519:P-256:P-384")
    p256_only = client_context(maximum=maximum)
    p256_only.set_ecdh_curve("prime256v1")
    refused(default, p256_only, "a.test")
    assert handshake(default, p256_only, server_hostname="www.example.com").server.handshake_done


@BYTE_SPLITS
def test_server_block_hello_retry(ec_leaf, one_byte):
    """The client's first key share (X25519) is not one of the named server's groups:
    a HelloRetryRequest brings a second ClientHello, which finds that server current."""
    default, p384 = listener(ec_leaf, {"groups": "P-384"}, groups="X25519:P-256:P-384")
    pair = handshake(default, client_context(), one_byte, server_hostname="a.test")
    assert pair.server.version == "TLSv1.3"
    assert pair.server.selected_context is p384


def test_server_block_cipher_order_applies(ec_leaf):
    order = "ECDHE-ECDSA-AES128-GCM-SHA256:ECDHE-ECDSA-AES256-GCM-SHA384"
    default, _ = listener(ec_leaf, {"ciphers": order, "prefer_server_ciphers": False}, ciphers=order)
    client = client_context(maximum=ssl.TLSVersion.TLSv1_2,
                            ciphers="ECDHE-ECDSA-AES256-GCM-SHA384:ECDHE-ECDSA-AES128-GCM-SHA256")
    assert handshake(default, client, server_hostname="www.example.com").server.cipher == \
        "ECDHE-ECDSA-AES128-GCM-SHA256"
    assert handshake(default, client, server_hostname="a.test").server.cipher == "ECDHE-ECDSA-AES256-GCM-SHA384"


def test_server_block_tickets_apply(ec_leaf):
    """Tickets off in one server block: its TLS 1.2 clients get session IDs (which resume),
    the default's clients still get tickets."""
    default, _ = listener(ec_leaf, {"session_tickets": False})
    client = client_context(maximum=ssl.TLSVersion.TLSv1_2)
    first, second = resume(default, client, host="a.test")
    assert first.client.session.has_ticket is False
    assert second.server.session_reused is True
    assert handshake(default, client, server_hostname="www.example.com").client.session.has_ticket is True


@pytest.mark.parametrize("maximum", [None, ssl.TLSVersion.TLSv1_2], ids=["tls13", "tls12"])
def test_server_block_session_lifetime_applies(ec_leaf, maximum):
    """OpenSSL gives a new session the lifetime of the context the connection started on;
    the named server's replaces it (the ticket's lifetime hint, RFC 8446 §4.6.1, shows it)."""
    default, _ = listener(ec_leaf, {"session_timeout": 60}, session_timeout=300)
    client = client_context(maximum=maximum)
    assert handshake(default, client, server_hostname="a.test").client.session.ticket_lifetime_hint == 60
    assert handshake(default, client, server_hostname="www.example.com").client.session.ticket_lifetime_hint \
        == 300


def test_server_block_session_expires_with_its_lifetime(ec_leaf):
    default, _ = listener(ec_leaf, {"session_timeout": 1, "session_tickets": False})
    client = client_context(maximum=ssl.TLSVersion.TLSv1_2)
    session = handshake(default, client, server_hostname="a.test").client.session
    time.sleep(2.1)   # OpenSSL 3.0 keeps whole seconds: expired once now - time > 1
    assert handshake(default, client, server_hostname="a.test", session=session).server.session_reused is False


@pytest.mark.parametrize("maximum", [None, ssl.TLSVersion.TLSv1_2], ids=["tls13", "tls12"])
@pytest.mark.parametrize("tickets", [True, False], ids=["tickets", "session-id-cache"])
def test_session_stays_in_its_server_block(ec_leaf, maximum, tickets):
    """A session made under one server block's name gets a full handshake (no error) under
    another block's, the default's, or no name; under its own name it resumes."""
    default, a, b = listener(ec_leaf, {"session_tickets": tickets}, {"session_tickets": tickets},
                             session_tickets=tickets)
    client = client_context(maximum=maximum)
    _, again = resume(default, client, host="a.test")
    assert again.server.session_reused is True
    assert again.server.selected_context is a
    session = again.client.session
    for name, ctx in (("b.test", b), ("www.example.com", default), (None, default)):
        other = handshake(default, client, server_hostname=name, session=session)
        assert other.server.selected_context is ctx
        assert other.server.session_reused is False, name
        assert other.client.session_reused is False, name
    from_default = handshake(default, client, server_hostname="www.example.com").client.session
    assert handshake(default, client, server_hostname="a.test", session=from_default).server.session_reused \
        is False
    assert handshake(default, client, server_hostname="www.example.com",
                     session=from_default).server.session_reused is True


def test_same_session_id_context_is_one_scope(ec_leaf):
    """Two contexts given the same session ID context (what workers and reloads do) accept
    each other's sessions; a different one does not."""
    default, a, b = listener(ec_leaf, {"session_id_context": b"scope-a"}, {"session_id_context": b"scope-b"},
                             session_tickets=False)
    client = client_context(maximum=ssl.TLSVersion.TLSv1_2)
    session = handshake(default, client, server_hostname="a.test").client.session
    default.set_sni({"a.test": a, "b.test": server_context(ec_leaf, session_id_context=b"scope-a")})
    assert handshake(default, client, server_hostname="b.test", session=session).server.session_reused is True
    default.set_sni({"a.test": a, "b.test": b})
    assert handshake(default, client, server_hostname="b.test", session=session).server.session_reused is False


def test_session_id_context_too_long_is_tls_error():
    with pytest.raises(TLSError, match="session ID context"):
        TLSContext(session_id_context=b"x" * 33)


def test_server_block_alpn_applies(ec_leaf):
    default, _ = listener(ec_leaf, {"alpn": ("h2", "http/1.1")})
    client = client_context(alpn=("http/1.1", "h2"))
    assert handshake(default, client, server_hostname="a.test").server.alpn == "h2"
    assert handshake(default, client, server_hostname="www.example.com").server.alpn == "http/1.1"


# ---- Application data --------------------------------------------------------

@BYTE_SPLITS
def test_data_both_ways(ec_server, one_byte):
    pair = handshake(ec_server, client_context())
    assert pair.server.read() == WANT_READ
    assert pair.client_send(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", one_byte) == \
        b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"
    assert pair.last_read == WANT_READ
    assert pair.server_send(b"HTTP/1.1 204 No Content\r\n\r\n") == b"HTTP/1.1 204 No Content\r\n\r\n"
    assert pair.server.write(b"") == 0


def test_read_respects_size(ec_server):
    pair = handshake(ec_server, client_context())
    pair.client.write(b"abcdefghij")
    pair.to_server()
    assert pair.server.read(3) == b"abc"
    assert pair.server.read(100) == b"defghij"
    assert pair.server.read(100) == WANT_READ


def records(ciphertext: bytes) -> list[tuple[int, int]]:
    """(content type, length) of each TLS record."""
    out, i = [], 0
    while i < len(ciphertext):
        assert i + 5 <= len(ciphertext)
        length = int.from_bytes(ciphertext[i + 3:i + 5], "big")
        out.append((ciphertext[i], length))
        i += 5 + length
    assert i == len(ciphertext)
    return out


@pytest.mark.parametrize("maximum", [None, ssl.TLSVersion.TLSv1_2], ids=["tls13", "tls12"])
def test_big_write_split_into_records(ec_server, maximum):
    pair = handshake(ec_server, client_context(maximum=maximum))
    pair.take_tickets()
    payload = bytes(range(256)) * (4 * 1024)     # 1 MiB
    written, view = 0, memoryview(payload)
    while written < len(payload):
        n = pair.server.write(view[written:])
        assert n > 0, (n, pair.server.error)
        written += n
    wire = pair.server.data_to_send()
    recs = records(wire)
    assert len(recs) >= MiB // 16384
    assert all(ctype == 23 for ctype, _ in recs)              # application_data
    assert max(length for _, length in recs) <= 16384 + 256   # RFC 8446 §5.2
    pair.incoming.write(wire)
    assert pair.client_read_all() == payload


def test_big_client_write_read_in_pieces(ec_server):
    pair = handshake(ec_server, client_context())
    payload = bytes(range(251)) * 4200                      # ~1 MiB, not a multiple of 16 KiB
    assert pair.client_send(payload) == payload


def test_close_notify_from_client(ec_server):
    pair = handshake(ec_server, client_context())
    pair.client.write(b"last words")
    try:
        pair.client.unwrap()
    except ssl.SSLWantReadError:
        pass
    pair.to_server()
    assert pair.server.read() == b"last words"
    assert pair.server.read() == CLOSED
    assert pair.server.read() == CLOSED


def test_close_notify_from_server(ec_server):
    pair = handshake(ec_server, client_context())
    pair.take_tickets()
    assert pair.server.shutdown() == OK
    alert = pair.server.data_to_send()
    assert records(alert) and records(alert)[0][0] in (21, 23)   # alert (1.3 hides it in 23)
    pair.incoming.write(alert)
    assert pair.client.read() == b""     # CPython's SSLObject: b"" means close_notify received
    pair.client.unwrap()                 # completes without waiting: both sides have closed


def test_shutdown_before_handshake_is_noop(ec_server):
    conn = TLSConnection(ec_server)
    assert conn.shutdown() == OK
    assert conn.data_to_send() == b""


def test_eof_without_close_notify(ec_server):
    """Server contexts set SSL_OP_IGNORE_UNEXPECTED_EOF (as nginx does): a client that
    just closes after the handshake is a clean end, read as CLOSED, and its session stays
    resumable (HTTP framing, not TLS, detects a truncated message)."""
    pair = handshake(ec_server, client_context())
    pair.server.feed_eof()
    assert pair.server.read() == CLOSED


def test_eof_during_handshake(ec_server):
    conn = TLSConnection(ec_server)
    assert conn.do_handshake() == WANT_READ
    conn.feed_eof()
    assert conn.do_handshake() == EOF


def test_truncated_record_is_want_read(ec_server):
    pair = handshake(ec_server, client_context())
    pair.client.write(b"hello")
    wire = pair.outgoing.read()
    pair.server.feed(wire[:-1])
    assert pair.server.read() == WANT_READ
    pair.server.feed(wire[-1:])
    assert pair.server.read() == b"hello"


# ---- Failures -----------------------------------------------------------------

@pytest.mark.parametrize("garbage, reason", [
    (b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", "http request"),
    (b"\x16\x03\x01\x00\x05hello", ""),
    (bytes(range(256)), ""),
    (b"\x00" * 64, ""),
], ids=["plain-http", "bad-handshake-body", "bytes", "zeros"])
def test_garbage_fails_with_openssl_reason(ec_server, garbage, reason):
    conn = TLSConnection(ec_server)
    conn.feed(garbage)
    assert conn.do_handshake() == FAILED
    assert conn.error and "error:" in conn.error and "SSL routines" in conn.error
    assert reason in conn.error
    assert conn.handshake_done is False
    assert conn.version is None


def test_garbage_after_handshake_fails(ec_server):
    pair = handshake(ec_server, client_context())
    pair.server.feed(b"\x17\x03\x03\x00\x20" + b"\x00" * 32)   # a record that does not decrypt
    assert pair.server.read() == FAILED
    assert "error:" in pair.server.error


def test_a_failure_leaves_no_error_for_other_connections(ec_server):
    """SSL_read and SSL_write clear no error queue before they run: every failure drains it
    (with its reason) into its own connection, so an established one still reads WANT_READ,
    reads and writes data, and the failing one keeps only what it met."""
    pair = handshake(ec_server, client_context())
    for garbage in (b"GET / HTTP/1.1\r\n\r\n", b"\x16\x03\x01\x00\x05hello"):
        bad = TLSConnection(ec_server)
        bad.feed(garbage)
        assert bad.do_handshake() == FAILED and "SSL routines" in bad.error
        assert pair.server.read() == WANT_READ
        assert pair.client_send(b"ping") == b"ping"
        assert pair.server_send(b"pong") == b"pong"
        assert pair.server.error is None
    broken = handshake(ec_server, client_context())
    broken.server.feed(b"\x17\x03\x03\x00\x20" + b"\x00" * 32)
    assert broken.server.read() == FAILED
    first = broken.server.error
    assert pair.server.read() == WANT_READ and pair.server.error is None
    assert pair.client_send(b"again") == b"again"
    other = TLSConnection(ec_server)
    other.feed(b"\x00" * 64)
    assert other.do_handshake() == FAILED
    assert first == broken.server.error and first not in other.error


def test_an_error_left_by_other_code_fails_no_connection(ec_server):
    """Code outside the engine (Python's ssl, cryptography) may leave entries in the thread's
    error queue; SSL_get_error would read them as the next SSL_read's own failure. The engine
    clears what it finds before each read and write: the connection reads WANT_READ, then
    data, and the entry left behind is nowhere in its error."""
    crypto = ctypes.CDLL(ctypes.util.find_library("crypto"))
    crypto.ERR_set_error.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_char_p]
    pair = handshake(ec_server, client_context())
    for send in (lambda: pair.server.read(), lambda: pair.server_send(b"pong")):
        crypto.ERR_new()
        crypto.ERR_set_error(20, 100, b"left behind")   # ERR_LIB_SSL, any reason
        assert crypto.ERR_peek_error() != 0
        result = send()
        assert result in (WANT_READ, b"pong") and pair.server.error is None
    assert pair.client_send(b"ping") == b"ping"
    assert crypto.ERR_peek_error() == 0


def test_mismatched_key_is_tls_error(ec_leaf, rsa_leaf, intermediate):
    other = issue_cert(intermediate, ["other.example.com"], "EC")
    ctx = TLSContext()
    with pytest.raises(TLSError) as info:
        ctx.add_certificate(ec_leaf.cert_pem, other.key_pem)
    assert "error:" in str(info.value) and "mismatch" in str(info.value)
    assert info.value.reasons and all(r.startswith("error:") for r in info.value.reasons)
    with pytest.raises(TLSError) as info:
        ctx.add_certificate(ec_leaf.cert_pem, rsa_leaf.key_pem)   # key of another type
    assert "mismatch" in str(info.value)
    assert ctx.key_types == []


def test_mismatch_leaves_error_queue_clean(ec_leaf, intermediate):
    other = issue_cert(intermediate, ["other.example.com"], "EC")
    ctx = TLSContext()
    with pytest.raises(TLSError):
        ctx.add_certificate(ec_leaf.cert_pem, other.key_pem)
    ctx.add_certificate(ec_leaf.cert_pem, ec_leaf.key_pem)
    assert handshake(ctx, client_context()).server.error is None


@pytest.mark.parametrize("chain, key", [(b"not pem", None), (None, b"not pem")])
def test_unparsable_pem_is_tls_error(ec_leaf, chain, key):
    with pytest.raises(TLSError):
        TLSContext().add_certificate(chain or ec_leaf.cert_pem, key or ec_leaf.key_pem)


@pytest.mark.parametrize("kwargs, what", [
    ({"ciphers": "NO-SUCH-CIPHER"}, "no cipher match"),
    ({"ciphersuites": "TLS_NOPE"}, "error:"),
    ({"groups": "P-999"}, "groups"),
])
def test_bad_cipher_config_is_tls_error(kwargs, what):
    with pytest.raises(TLSError) as info:
        TLSContext(**kwargs)
    assert what in str(info.value)


@pytest.mark.parametrize("protocols", [
    ("TLSv1.1",), ("TLSv1.2", "TLSv1.1"), ("TLSv1",), ("SSLv3",), ("TLSv1.4",), (),
])
def test_refused_protocols_are_config_errors(protocols):
    with pytest.raises(ConfigError):
        TLSContext(protocols=protocols)


def test_feed_needs_memory_mode(ec_server):
    a, b = socket.socketpair()
    with a, b:
        conn = TLSConnection(ec_server, fd=a.fileno())
        assert conn.memory is False
        with pytest.raises(RuntimeError):
            conn.feed(b"x")


def test_many_connections_freed(ec_server):
    for _ in range(2000):
        conn = TLSConnection(ec_server)
        conn.feed(b"\x16\x03\x01")
        conn.do_handshake()
    assert conn.context is ec_server


# ---- Our client -----------------------------------------------------------------

@pytest.fixture(scope="module")
def our_client(ca_file):
    return TLSContext(server_side=False, cafile=ca_file)


@BYTE_SPLITS
def test_our_client_our_server(our_client, ec_server, one_byte):
    pair = OurPair(our_client, ec_server, server_hostname="www.example.com")
    assert pair.handshake(one_byte) == OK, (pair.client.error, pair.server.error)
    assert pair.client.version == pair.server.version == "TLSv1.3"
    assert pair.client.cipher == pair.server.cipher
    assert pair.client.alpn == pair.server.alpn == "http/1.1"
    assert pair.server.server_name == "www.example.com"
    pair.client.write(b"ping")
    pair.server.feed(pair.client.data_to_send())
    assert pair.server.read() == b"ping"
    pair.server.write(b"pong")
    pair.client.feed(pair.server.data_to_send())
    assert pair.client.read() == b"pong"
    assert pair.client.shutdown() == OK
    pair.server.feed(pair.client.data_to_send())
    assert pair.server.read() == CLOSED


def test_our_client_tls12(ca_file, ec_server):
    client = TLSContext(server_side=False, cafile=ca_file, protocols=("TLSv1.2",))
    pair = OurPair(client, ec_server)
    assert pair.handshake() == OK
    assert pair.client.version == pair.server.version == "TLSv1.2"


def test_our_client_picks_rsa_or_ec(ca_file, dual_server):
    client = TLSContext(server_side=False, cafile=ca_file, protocols=("TLSv1.2",),
                        ciphers="ECDHE-RSA-AES128-GCM-SHA256")
    pair = OurPair(client, dual_server)
    assert pair.handshake() == OK
    assert pair.server.cipher == "ECDHE-RSA-AES128-GCM-SHA256"


def test_our_client_rejects_unknown_ca(other_ca_file, ec_server):
    client = TLSContext(server_side=False, cafile=other_ca_file)
    pair = OurPair(client, ec_server, server_hostname="www.example.com")
    assert pair.handshake() == FAILED
    assert "certificate verify failed" in pair.client.error


def test_our_client_without_cafile_does_not_verify(ec_server):
    pair = OurPair(TLSContext(server_side=False), ec_server)
    assert pair.handshake() == OK


def test_our_client_checks_the_host_name(our_client, ec_server):
    """A chain from a trusted CA for another name must not pass (RFC 6125; CPython's
    check_hostname, nginx's proxy_ssl_verify): otherwise any certificate the CA ever
    issued impersonates the backend."""
    pair = OurPair(our_client, ec_server, server_hostname="backend.internal")
    assert pair.handshake() == FAILED
    assert "verify" in (pair.client.error or "")


def test_our_client_alpn_no_overlap(ca_file, ec_server):
    client = TLSContext(server_side=False, cafile=ca_file, alpn=("h2",))
    pair = OurPair(client, ec_server)
    assert pair.handshake() == FAILED
    assert "application protocol" in pair.server.error
    assert "no application protocol" in pair.client.error


@pytest.fixture(scope="module")
def py_server(ec_leaf, intermediate, tmp_path_factory):
    d = tmp_path_factory.mktemp("pyserver")
    (d / "chain.pem").write_bytes(ec_leaf.cert_pem + intermediate.cert_pem)
    (d / "key.pem").write_bytes(ec_leaf.key_pem)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(d / "chain.pem", d / "key.pem")
    ctx.set_alpn_protocols(["http/1.1"])
    seen = []
    ctx.sni_callback = lambda sslobj, name, _ctx: seen.append(name)
    ctx.seen_names = seen
    return ctx


@BYTE_SPLITS
def test_our_client_python_server(our_client, py_server, one_byte):
    py_server.seen_names.clear()
    pair = OurPair(our_client, py_server, server_hostname="www.example.com")
    assert pair.handshake(one_byte) == OK, (pair.client.error, pair.server_status)
    assert py_server.seen_names == ["www.example.com"]
    assert pair.client.version == pair.server.version() == "TLSv1.3"
    assert pair.client.cipher == pair.server.cipher()[0]
    assert pair.client.alpn == pair.server.selected_alpn_protocol() == "http/1.1"
    pair.client.write(b"hello python")
    pair.s_in.write(pair.client.data_to_send())
    assert pair.server.read(100) == b"hello python"
    pair.server.write(b"x" * 100000)
    pair.client.feed(pair.s_out.read())
    got = bytearray()
    while True:
        chunk = pair.client.read()
        if isinstance(chunk, int):
            assert chunk == WANT_READ
            break
        got += chunk
    assert got == b"x" * 100000
    try:
        pair.server.unwrap()
    except ssl.SSLWantReadError:
        pass
    pair.client.feed(pair.s_out.read())
    assert pair.client.read() == CLOSED


def test_our_client_python_server_tls12(ca_file, py_server):
    client = TLSContext(server_side=False, cafile=ca_file, protocols=("TLSv1.2",))
    pair = OurPair(client, py_server)
    assert pair.handshake() == OK
    assert pair.client.version == "TLSv1.2"
