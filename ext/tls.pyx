# TLS engine: TLSContext owns one SSL_CTX, TLSConnection owns one SSL.
#
# Ownership (uvloop handle.pyx style): pointers are NULL until the factory
# finishes, __dealloc__ frees each exactly once. A TLSConnection keeps a Python
# reference to its TLSContext, so the SSL_CTX (and the ClientHello/SNI/ALPN
# callback arguments, which are borrowed TLSContext pointers) outlive every SSL.
#
# Server blocks: the listener's default context is the one every SSL starts on
# (OpenSSL's session_ctx: session cache, ticket keys). The ClientHello callback
# moves the connection to the context SNI names and applies that server's
# settings before OpenSSL negotiates anything or looks a session up; each
# context's session ID context keeps its sessions from resuming anywhere else.

import socket

from libc.string cimport memcpy
from cpython.bytes cimport PyBytes_FromStringAndSize, PyBytes_AS_STRING

import logging
import sys

_tls_log = logging.getLogger("fastterm.tls")

_PROTOCOL_VERSIONS = {"TLSv1.2": TLS1_2_VERSION, "TLSv1.3": TLS1_3_VERSION}
_REFUSED_PROTOCOLS = ("SSLv2", "SSLv3", "TLSv1", "TLSv1.1")

# Live OpenSSL objects owned by this process (uvloop's UVLOOP_DEBUG counters, always on:
# two integer updates per connection). Tests assert they return to their baseline.
cdef long _live_ctx = 0
cdef long _live_ssl = 0


def live_objects():
    """``{"SSL_CTX": n, "SSL": n}`` currently owned by TLSContext / TLSConnection objects."""
    return {"SSL_CTX": _live_ctx, "SSL": _live_ssl}


WANT_READ = TLS_WANT_READ
WANT_WRITE = TLS_WANT_WRITE
CLOSED = TLS_CLOSED
EOF = TLS_EOF
FAILED = TLS_FAILED


cdef bytes _alpn_wire(protocols):
    protocols = list(protocols)
    if "http/1.1" in protocols and "http/1.0" not in protocols:
        # An HTTP/1.1 server serves HTTP/1.0 clients too (curl -0 offers only http/1.0);
        # nginx accepts both.
        protocols.append("http/1.0")
    out = bytearray()
    for proto in protocols:
        raw = proto.encode("ascii") if isinstance(proto, str) else bytes(proto)
        if not 0 < len(raw) < 256:
            raise ConfigError(f"invalid ALPN protocol name {proto!r}")
        out.append(len(raw))
        out += raw
    return bytes(out)


cdef bint _client_hello_name(SSL *ssl, const unsigned char **name, size_t *name_len) noexcept:
    """The host_name of the ClientHello's server_name extension (RFC 6066 §3); OpenSSL
    parses it only after the session lookup, so the ClientHello callback reads it raw.
    Anything malformed reads as no name: OpenSSL then rejects the extension itself."""
    cdef const unsigned char *ext
    cdef size_t n = 0, length
    if not SSL_client_hello_get0_ext(ssl, TLSEXT_TYPE_server_name, &ext, &n) or n < 5:
        return False
    # ServerNameList: uint16 length, then NameType (0 = host_name), uint16 length, name.
    if <size_t>((ext[0] << 8) | ext[1]) != n - 2 or ext[2] != TLSEXT_NAMETYPE_host_name:
        return False
    length = (ext[3] << 8) | ext[4]
    if length == 0 or length > n - 5 or memchr(ext + 5, 0, length) != NULL:
        return False
    name[0] = ext + 5
    name_len[0] = length
    return True


# ACME TLS-ALPN-01 (RFC 8737): the directories where the ACME agent (fastterm/certs/acme.py)
# leaves NAME.crt + NAME.key for each pending name; empty: the challenge path is off.
cdef list _acme_dirs = []
# The ClientHello's ALPN extension offering acme-tls/1 alone (RFC 8737 §3: the validator
# offers no other protocol): uint16 list length, uint8 name length, name.
cdef bytes _ACME_ALPN_EXT = b"\x00\x0b\x0aacme-tls/1"
cdef bytes _ACME_NAME_CHARS = b"abcdefghijklmnopqrstuvwxyz0123456789-."


def set_acme_challenge_dirs(dirs):
    """Where a worker finds TLS-ALPN-01 challenge certificates (fastterm/certs/acme.py)."""
    global _acme_dirs
    _acme_dirs = [os.fsencode(d) for d in dirs]


cdef bint _offers_only_acme_tls(SSL *ssl) noexcept:
    cdef const unsigned char *ext
    cdef size_t n = 0
    if not SSL_client_hello_get0_ext(ssl, TLSEXT_TYPE_application_layer_protocol_negotiation, &ext, &n):
        return False
    return n == 13 and memcmp(ext, PyBytes_AS_STRING(_ACME_ALPN_EXT), 13) == 0


cdef object _acme_identity(TLSContext current, bytes name):
    """The challenge certificate for ``name`` as an Identity on ``current``, or None. A rare
    path (a CA validating), so the files are read at handshake time; a name that is not a
    plain lowercase DNS name names no file."""
    name = name.lower().rstrip(b".")
    if not name or name.startswith(b".") or b".." in name or name.strip(_ACME_NAME_CHARS):
        return None
    for directory in _acme_dirs:
        base = os.path.join(directory, name)
        try:
            with open(base + b".crt", "rb") as f:
                chain = f.read()
            with open(base + b".key", "rb") as f:
                key = f.read()
        except OSError:
            continue
        return Identity(current, [(chain, key)])
    return None


cdef int _acme_hello(SSL *ssl, int *alert, TLSContext current) noexcept:
    """A TLS-ALPN-01 validation: the challenge certificate of the name, if one is pending
    (ALPN then selects acme-tls/1 and the connection closes after the handshake, ext/loop.pyx);
    otherwise the handshake fails with unrecognized_name."""
    cdef const unsigned char *name
    cdef size_t name_len
    cdef Identity identity
    if not _client_hello_name(ssl, &name, &name_len):
        alert[0] = SSL_AD_UNRECOGNIZED_NAME
        return SSL_CLIENT_HELLO_ERROR
    try:
        found = _acme_identity(current, PyBytes_FromStringAndSize(<const char *>name, name_len))
    except BaseException:
        found = None
    if found is None:
        alert[0] = SSL_AD_UNRECOGNIZED_NAME
        return SSL_CLIENT_HELLO_ERROR
    identity = <Identity>found
    if not identity.apply(ssl):
        alert[0] = SSL_AD_INTERNAL_ERROR
        return SSL_CLIENT_HELLO_ERROR
    return SSL_CLIENT_HELLO_SUCCESS


cdef bytes _sni_key(str name):
    """A server name as the SNI map holds it: lowercase bytes, IDNA for a non-ASCII name (the
    A-label a client sends; the Host map does the same, ext/exchange.pyx SiteTable)."""
    return name.lower().encode("idna" if not name.isascii() else "ascii")


cdef object _tail_or_regex(bytes key, dict tail, list regex):
    """nginx's server_name after the exact and *.suffix names (ngx_http_find_virtual_server):
    the longest "prefix.*" (one label at least after its dot), then the first regex found in
    the name; None when neither matches. Host (ext/exchange.pyx SiteTable) and SNI alike."""
    cdef Py_ssize_t dot = key.rfind(b".", 0, len(key) - 1) if len(key) > 1 else -1
    while dot > 0 and tail:
        found = tail.get(key[:dot + 1])
        if found is not None:
            return found
        dot = key.rfind(b".", 0, dot)
    for pattern, value in regex:
        if pattern.search(key) is not None:
            return value
    return None


cdef int _client_hello_cb(SSL *ssl, int *alert, void *arg) noexcept:
    """SNI: move the connection to the server block the client names (the default otherwise).

    The ClientHello callback (SSL_CTX_set_client_hello_cb(3), where HAProxy switches too)
    runs before version and cipher negotiation and before ssl_get_prev_session compares a
    session's ID context with the connection's, so all of them see the chosen server.
    A second ClientHello (after a HelloRetryRequest) finds the chosen context current.
    """
    cdef TLSContext current = <TLSContext>arg
    cdef TLSContext chosen
    cdef Identity identity = None
    cdef const unsigned char *name
    cdef size_t name_len
    if _acme_dirs and _offers_only_acme_tls(ssl):
        return _acme_hello(ssl, alert, current)
    if not current.sni or not _client_hello_name(ssl, &name, &name_len):
        if current.reject_handshake:
            alert[0] = SSL_AD_UNRECOGNIZED_NAME
            return SSL_CLIENT_HELLO_ERROR
        return SSL_CLIENT_HELLO_SUCCESS
    try:
        found = current._select(<const char *>name, name_len)
    except BaseException:
        return SSL_CLIENT_HELLO_SUCCESS
    if type(found) is Identity:
        identity = <Identity>found
        chosen = identity.context
    else:
        chosen = <TLSContext>found
    if chosen.reject_handshake:
        # a block with no certificate to give (nginx ssl_reject_handshake on): the name is
        # unknown here, or no name was sent to the default of such a block (RFC 6066 §3)
        alert[0] = SSL_AD_UNRECOGNIZED_NAME
        return SSL_CLIENT_HELLO_ERROR
    # Fail closed: the connection would otherwise run under another server's settings
    # or certificate.
    if chosen is not current and not chosen._take_over(ssl, current):
        alert[0] = SSL_AD_INTERNAL_ERROR
        return SSL_CLIENT_HELLO_ERROR
    if identity is not None and not identity.apply(ssl):
        alert[0] = SSL_AD_INTERNAL_ERROR
        return SSL_CLIENT_HELLO_ERROR
    return SSL_CLIENT_HELLO_SUCCESS


cdef int _servername_cb(SSL *ssl, int *alert, void *arg) noexcept:
    """Runs after the session lookup, on the context the ClientHello callback chose.

    Accepting the name acknowledges it and records it in a new session. A new session
    gets this server's lifetime: OpenSSL gave it the listener default's (the session_ctx
    the connection started on).
    """
    cdef TLSContext ctx = <TLSContext>arg
    cdef SSL_SESSION *session
    if not SSL_session_reused(ssl):
        session = SSL_get_session(ssl)
        if session != NULL and SSL_SESSION_get_timeout(session) != ctx.session_timeout:
            SSL_SESSION_set_timeout(session, ctx.session_timeout)
    return SSL_TLSEXT_ERR_OK


cdef int _alpn_select_cb(SSL *ssl, const unsigned char **out, unsigned char *outlen,
                         const unsigned char *client, unsigned int client_len,
                         void *arg) noexcept:
    """Server preference order; a client whose list shares nothing gets
    no_application_protocol (RFC 7301 §3.2, as nginx does since 1.21.4)."""
    cdef TLSContext ctx = <TLSContext>arg
    cdef const unsigned char *ours = <const unsigned char *>PyBytes_AS_STRING(ctx.alpn_wire)
    cdef unsigned int ours_len = len(ctx.alpn_wire)
    if _acme_dirs and client_len == 11 and memcmp(client, PyBytes_AS_STRING(_ACME_ALPN_EXT) + 2, 11) == 0:
        # only a ClientHello that got its challenge certificate comes this far (_acme_hello)
        out[0] = client + 1
        outlen[0] = 10
        return SSL_TLSEXT_ERR_OK
    if ours_len == 0:
        return SSL_TLSEXT_ERR_NOACK
    if SSL_select_next_proto(<unsigned char **>out, outlen, ours, ours_len,
                             client, client_len) != OPENSSL_NPN_NEGOTIATED:
        return SSL_TLSEXT_ERR_ALERT_FATAL
    return SSL_TLSEXT_ERR_OK


cdef int _status_cb(SSL *ssl, void *arg) noexcept:
    """Staple the response of the certificate OpenSSL chose for this client (RSA or ECDSA:
    SSL_get_certificate(3) is that one in the status callback). Runs only when the client
    sent status_request; reads shared memory, never the network. Nothing unexpired to
    staple: no staple, the handshake goes on."""
    cdef TLSContext ctx = <TLSContext>arg
    cdef unsigned char der[FT_OCSP_DER_MAX]
    cdef unsigned char *copy
    cdef int n
    slot = ctx.ocsp_slots.get(<size_t>SSL_get_certificate(ssl))
    if slot is None or ctx.ocsp_store is None:
        return SSL_TLSEXT_ERR_NOACK
    n = ctx.ocsp_store.copy_ocsp(<int>slot, der)
    if n <= 0:
        return SSL_TLSEXT_ERR_NOACK
    copy = <unsigned char *>OPENSSL_malloc(n)
    if copy == NULL:
        return SSL_TLSEXT_ERR_NOACK
    memcpy(copy, der, n)
    if not SSL_set_tlsext_status_ocsp_resp(ssl, copy, n):   # the SSL frees copy from here
        return SSL_TLSEXT_ERR_NOACK
    return SSL_TLSEXT_ERR_OK


cdef X509 *_x509_from_der(bytes der) except NULL:
    cdef const unsigned char *p = <const unsigned char *>PyBytes_AS_STRING(der)
    cdef X509 *cert = d2i_X509(NULL, &p, len(der))
    if cert == NULL:
        raise_tls_error("invalid DER certificate")
    return cert


_OCSP_STATUS = {V_OCSP_CERTSTATUS_GOOD: "good", V_OCSP_CERTSTATUS_REVOKED: "revoked",
                V_OCSP_CERTSTATUS_UNKNOWN: "unknown"}


def verify_ocsp_response(bytes response not None, bytes leaf not None, bytes issuer not None,
                         trusted=(), bint verify=True, long clock_skew=300):
    """Check an OCSP response (DER) for ``leaf`` issued by ``issuer`` (DER certificates), as
    OCSP_basic_verify(3) and OCSP_check_validity(3) do; ``(status, this_update,
    next_update)``: "good", "revoked" or "unknown", unix seconds (next_update 0: none).
    TLSError with the reason when it must not be stapled.

    ``verify``: the signature must be the issuer's or a delegated responder's (a
    certificate the issuer gave the OCSP-signing purpose), its chain ending at the issuer
    or one of ``trusted`` (DER; nginx ssl_trusted_certificate). Off (nginx
    ``ssl_stapling_verify off``): the response is only parsed and checked against its own
    signer's key (OCSP_NOVERIFY, as nginx). The certificate ID, the status and the
    thisUpdate/nextUpdate window (``clock_skew`` seconds of leeway) are always checked."""
    cdef const unsigned char *p = <const unsigned char *>PyBytes_AS_STRING(response)
    cdef OCSP_RESPONSE *resp = NULL
    cdef OCSP_BASICRESP *basic = NULL
    cdef OCSP_CERTID *cid = NULL
    cdef X509 *leaf_x = NULL
    cdef X509 *issuer_x = NULL
    cdef X509 *extra = NULL
    cdef X509_STORE *store = NULL
    cdef stack_st_X509 *certs = NULL
    cdef ASN1_GENERALIZEDTIME *this_update = NULL
    cdef ASN1_GENERALIZEDTIME *next_update = NULL
    cdef ASN1_GENERALIZEDTIME *revoked_at = NULL
    cdef int status = -1, reason = -1, code
    ERR_clear_error()
    try:
        resp = d2i_OCSP_RESPONSE(NULL, &p, len(response))
        if resp == NULL:
            raise_tls_error("not a DER OCSP response")
        code = OCSP_response_status(resp)
        if code != OCSP_RESPONSE_STATUS_SUCCESSFUL:
            raise TLSError(f"the responder answered status {code} (not successful)", ())
        basic = OCSP_response_get1_basic(resp)
        if basic == NULL:
            raise_tls_error("no basic OCSP response")
        leaf_x = _x509_from_der(leaf)
        issuer_x = _x509_from_der(issuer)
        store = X509_STORE_new()
        certs = sk_X509_new_null()
        if store == NULL or certs == NULL:
            raise_tls_error("out of memory")
        # PARTIAL_CHAIN: the issuer is usually an intermediate, trusted here as the anchor.
        X509_STORE_set_flags(store, X509_V_FLAG_PARTIAL_CHAIN)
        if not X509_STORE_add_cert(store, issuer_x) or not sk_X509_push(certs, issuer_x):
            raise_tls_error("cannot add the issuer")
        for der in trusted:
            extra = _x509_from_der(der)
            code = X509_STORE_add_cert(store, extra)
            X509_free(extra)   # the store holds its own reference
            if not code:
                raise_tls_error("cannot add a trusted certificate")
        if OCSP_basic_verify(basic, certs, store, 0 if verify else OCSP_NOVERIFY) != 1:
            raise_tls_error("the response's signature does not verify")
        cid = OCSP_cert_to_id(NULL, leaf_x, issuer_x)
        if cid == NULL:
            raise_tls_error("cannot make the certificate ID")
        if not OCSP_resp_find_status(basic, cid, &status, &reason, &revoked_at, &this_update, &next_update):
            raise TLSError("the response is not about this certificate (certificate ID differs)",
                           drain_errors())
        if not OCSP_check_validity(this_update, next_update, clock_skew, -1):
            raise_tls_error("the response is outside its thisUpdate..nextUpdate window")
        return (_OCSP_STATUS.get(status, "unknown"), ft_asn1_time_unix(this_update),
                ft_asn1_time_unix(next_update))
    finally:
        if cid != NULL:
            OCSP_CERTID_free(cid)
        if certs != NULL:
            sk_X509_free(certs)      # the certificates are freed below
        if store != NULL:
            X509_STORE_free(store)
        if issuer_x != NULL:
            X509_free(issuer_x)
        if leaf_x != NULL:
            X509_free(leaf_x)
        if basic != NULL:
            OCSP_BASICRESP_free(basic)
        if resp != NULL:
            OCSP_RESPONSE_free(resp)
        ERR_clear_error()


cdef EVP_PKEY *_read_dhparam(bytes pem) except NULL:
    """PEM "DH PARAMETERS" (nginx ssl_dhparam, openssl dhparam) -> a new EVP_PKEY the caller
    owns; TLSError with OpenSSL's reason otherwise."""
    cdef BIO *bio
    cdef EVP_PKEY *pkey
    ERR_clear_error()
    bio = BIO_new_mem_buf(PyBytes_AS_STRING(pem), len(pem))
    if bio == NULL:
        raise_tls_error("BIO_new_mem_buf failed")
    pkey = PEM_read_bio_Parameters(bio, NULL)
    BIO_free(bio)
    if pkey == NULL:
        raise_tls_error("no DH parameters in PEM data")
    if not EVP_PKEY_is_a(pkey, b"DH"):
        EVP_PKEY_free(pkey)
        ERR_clear_error()
        raise TLSError("the PEM parameters are not DH parameters", ())
    return pkey


def check_dhparam(bytes pem not None):
    """Raise TLSError unless ``pem`` holds DH parameters a context accepts (``fastterm
    check``: the size against OpenSSL's security level too)."""
    cdef SSL_CTX *ctx
    cdef EVP_PKEY *pkey = _read_dhparam(pem)
    ctx = SSL_CTX_new(TLS_server_method())
    if ctx == NULL:
        EVP_PKEY_free(pkey)
        raise_tls_error("SSL_CTX_new failed")
    if not SSL_CTX_set0_tmp_dh_pkey(ctx, pkey):
        EVP_PKEY_free(pkey)
        SSL_CTX_free(ctx)
        raise_tls_error("DH parameters refused")
    SSL_CTX_free(ctx)   # frees pkey, which it owns now


cdef int _read_chain(bytes chain_pem, bytes key_pem, X509 **leaf, EVP_PKEY **pkey,
                     stack_st_X509 **chain) except -1:
    """Parse a leaf, the chain after it and its key, checked to be a pair; the caller owns
    the three after a return, nothing is left allocated after a raise."""
    cdef BIO *bio = NULL
    cdef X509 *cert = NULL
    leaf[0] = NULL
    pkey[0] = NULL
    chain[0] = NULL
    ERR_clear_error()
    try:
        bio = BIO_new_mem_buf(PyBytes_AS_STRING(key_pem), len(key_pem))
        if bio == NULL:
            raise_tls_error("BIO_new_mem_buf failed")
        pkey[0] = PEM_read_bio_PrivateKey(bio, NULL, NULL, NULL)
        BIO_free(bio)
        bio = NULL
        if pkey[0] == NULL:
            raise_tls_error("no private key in PEM data")
        bio = BIO_new_mem_buf(PyBytes_AS_STRING(chain_pem), len(chain_pem))
        if bio == NULL:
            raise_tls_error("BIO_new_mem_buf failed")
        leaf[0] = PEM_read_bio_X509_AUX(bio, NULL, NULL, NULL)
        if leaf[0] == NULL:
            raise_tls_error("no certificate in PEM data")
        # Checked here: with an RSA and an ECDSA certificate on one context,
        # SSL_CTX_check_private_key would match the key against the other slot.
        if not X509_check_private_key(leaf[0], pkey[0]):
            raise_tls_error("private key does not match the certificate")
        chain[0] = sk_X509_new_null()
        if chain[0] == NULL:
            raise_tls_error("sk_X509_new_null failed")
        while True:
            cert = PEM_read_bio_X509(bio, NULL, NULL, NULL)
            if cert == NULL:
                break
            if not sk_X509_push(chain[0], cert):
                X509_free(cert)
                raise_tls_error("sk_X509_push failed")
        ERR_clear_error()  # the chain loop ends on "no start line"
    except BaseException:
        if leaf[0] != NULL:
            X509_free(leaf[0])
        if pkey[0] != NULL:
            EVP_PKEY_free(pkey[0])
        if chain[0] != NULL:
            sk_X509_pop_free(chain[0], X509_free)
        leaf[0] = NULL
        pkey[0] = NULL
        chain[0] = NULL
        raise
    finally:
        if bio != NULL:
            BIO_free(bio)
    return 0


cdef str _key_type(EVP_PKEY *pkey):
    cdef int key_id = EVP_PKEY_get_base_id(pkey)
    return "RSA" if key_id == EVP_PKEY_RSA else "EC" if key_id == EVP_PKEY_EC else OBJ_nid2sn(key_id).decode()


cdef class TLSContext:
    """One SSL_CTX: certificates, protocol floor/ceiling, ciphers, ALPN, SNI, sessions.

    ``session_id_context`` (server side, up to 32 bytes) scopes sessions: one resumes only
    on a context with the same value. Contexts that must resume each other's sessions
    (workers, the next generation after a reload) pass the same bytes; by default a
    context gets its own random one.
    """

    def __cinit__(self):
        self.ctx = NULL
        self.sni = {}
        self.sni_tail = {}
        self.sni_regex = []
        self.key_types = []
        self.alpn_wire = b""
        self.groups = None
        self.leaves = []
        self.ocsp_slots = {}

    def __init__(self, *, bint server_side=True, protocols=("TLSv1.2", "TLSv1.3"),
                 str ciphers=None, str ciphersuites=None, str groups=None,
                 bint prefer_server_ciphers=True, bint session_cache=True,
                 double session_timeout=300.0, bint session_tickets=True, alpn=("http/1.1",),
                 str cafile=None, bytes session_id_context=None, SharedState shared=None,
                 bytes dhparam=None, verify=None, int verify_depth=-1, bint early_data=False,
                 unsigned int max_early_data=16384, int verify_client=VERIFY_CLIENT_OFF, str client_ca=None,
                 str trusted_certificate=None):
        """``shared``: the session cache and ticket keys the workers share (the master's
        SharedState), or None for this process's own cache and per-context ticket keys.
        ``dhparam``: PEM DH parameters for the TLS 1.2 DHE suites (nginx ssl_dhparam);
        without them OpenSSL offers no DHE suite whatever ``ciphers`` lists, as nginx.
        Client mode: ``verify`` True checks the server's chain (against ``cafile``, else the
        system trust store) and name, False checks nothing, None (the default) verifies when
        ``cafile`` is given; ``verify_depth`` >= 0 limits the chain (nginx proxy_ssl_verify_depth).
        ``early_data``: TLS 1.3 0-RTT, up to ``max_early_data`` bytes, accepted once per
        ClientHello (the replay table) and only on tickets this node issued.
        Server mode: ``verify_client`` asks clients for a certificate (nginx ssl_verify_client),
        accepted from ``client_ca``'s CAs (their names go in the CertificateRequest), chains
        completed from ``trusted_certificate``, at most ``verify_depth`` deep (nginx: 1)."""
        cdef long options
        cdef EVP_PKEY *dh
        self.server_side = server_side
        for proto in protocols:
            if proto in _REFUSED_PROTOCOLS:
                raise ConfigError(f"protocol {proto} is refused: fastterm speaks TLSv1.2 and TLSv1.3 only")
            if proto not in _PROTOCOL_VERSIONS:
                raise ConfigError(f"unknown protocol {proto!r} (expected TLSv1.2 or TLSv1.3)")
        if not protocols:
            raise ConfigError("no protocol enabled")
        versions = sorted(_PROTOCOL_VERSIONS[p] for p in protocols)
        self.min_version = versions[0]
        self.max_version = versions[len(versions) - 1]

        ERR_clear_error()
        self.ctx = SSL_CTX_new(TLS_server_method() if server_side else TLS_client_method())
        if self.ctx == NULL:
            raise_tls_error("SSL_CTX_new failed")
        global _live_ctx
        _live_ctx += 1
        if not SSL_CTX_set_min_proto_version(self.ctx, self.min_version) or \
                not SSL_CTX_set_max_proto_version(self.ctx, self.max_version):
            raise_tls_error("cannot set protocol versions")

        options = SSL_OP_NO_COMPRESSION | SSL_OP_NO_RENEGOTIATION
        if prefer_server_ciphers:
            # PRIORITIZE_CHACHA: clients that put ChaCha20 first (no AES hardware) still get it.
            options |= SSL_OP_CIPHER_SERVER_PREFERENCE | SSL_OP_PRIORITIZE_CHACHA
        if not session_tickets:
            options |= SSL_OP_NO_TICKET
        if server_side:
            # A client that closes without close_notify is a normal HTTP ending (framing
            # protects the data); without this OpenSSL 3 sends a fatal alert and drops
            # the session from the cache.
            options |= SSL_OP_IGNORE_UNEXPECTED_EOF
        if server_side and early_data:
            # OpenSSL's own anti-replay makes tickets stateful and single-use in this
            # process's cache, so a ticket would not resume on another worker or node
            # (nginx and HAProxy switch it off too). Ours is the shared replay table.
            options |= SSL_OP_NO_ANTI_REPLAY
        SSL_CTX_set_options(self.ctx, options)
        # RELEASE_BUFFERS: an idle connection gives its 34 KiB of record buffers back.
        # PARTIAL_WRITE + MOVING_WRITE_BUFFER: a short socket write returns a count, and the
        # retry may come from another address (our pending-output copy).
        SSL_CTX_set_mode(self.ctx, SSL_MODE_RELEASE_BUFFERS | SSL_MODE_ENABLE_PARTIAL_WRITE
                         | SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER)

        if ciphers is not None and not SSL_CTX_set_cipher_list(self.ctx, ciphers.encode()):
            raise_tls_error(f"invalid TLSv1.2 cipher list {ciphers!r}")
        if ciphersuites is not None and not SSL_CTX_set_ciphersuites(self.ctx, ciphersuites.encode()):
            raise_tls_error(f"invalid TLSv1.3 ciphersuites {ciphersuites!r}")
        if groups is not None:
            self.groups = groups.encode()
            if not SSL_CTX_set1_groups_list(self.ctx, self.groups):
                raise_tls_error(f"invalid key-exchange groups {groups!r}")
        if dhparam is not None:
            dh = _read_dhparam(dhparam)
            if not SSL_CTX_set0_tmp_dh_pkey(self.ctx, dh):   # the SSL_CTX owns dh from here
                EVP_PKEY_free(dh)
                raise_tls_error("DH parameters refused")
        self.options = SSL_CTX_get_options(self.ctx)
        self.session_timeout = <long>session_timeout

        self.alpn_wire = _alpn_wire(alpn or ())
        if server_side:
            if session_cache:
                SSL_CTX_set_session_cache_mode(self.ctx, SSL_SESS_CACHE_SERVER)
                SSL_CTX_sess_set_cache_size(self.ctx, 20480)
            else:
                SSL_CTX_set_session_cache_mode(self.ctx, SSL_SESS_CACHE_OFF)
            SSL_CTX_set_timeout(self.ctx, self.session_timeout)
            # One TLS 1.3 ticket per handshake, not OpenSSL's default two: a browser resumes one
            # connection per ticket at most, and each ticket costs an encryption, a record and
            # a session-cache store (SSL_CTX_set_num_tickets(3); nginx and HAProxy send two).
            SSL_CTX_set_num_tickets(self.ctx, 1)
            if session_id_context is None:
                session_id_context = os.urandom(SSL_MAX_SID_CTX_LENGTH)
            if not SSL_CTX_set_session_id_context(
                    self.ctx, <const unsigned char *>PyBytes_AS_STRING(session_id_context),
                    len(session_id_context)):
                raise_tls_error("invalid session ID context")
            SSL_CTX_set_client_hello_cb(self.ctx, _client_hello_cb, <void *>self)
            SSL_CTX_set_alpn_select_cb(self.ctx, _alpn_select_cb, <void *>self)
            SSL_CTX_set_tlsext_servername_callback(self.ctx, _servername_cb)
            SSL_CTX_set_tlsext_servername_arg(self.ctx, <void *>self)
            self._setup_early_data(shared, early_data, max_early_data)
            self._setup_client_verify(verify_client, client_ca, trusted_certificate, verify_depth)
            # Under the supervisor: the cache and ticket keys live in shared memory. The
            # ticket keys go on every context: a server block with tickets on behind a
            # default without them still encrypts under the default's (OpenSSL uses the
            # session_ctx's) and must use the shared keys.
            if shared is not None:
                self.shared = shared
                SSL_CTX_set_ex_data(self.ctx, 0, <void *>self)   # the callbacks' way back
                attach_shared(self.ctx, session_cache)
        else:
            SSL_CTX_set_session_cache_mode(self.ctx, SSL_SESS_CACHE_CLIENT)
            if self.alpn_wire and SSL_CTX_set_alpn_protos(
                    self.ctx, <const unsigned char *>PyBytes_AS_STRING(self.alpn_wire),
                    len(self.alpn_wire)) != 0:
                raise_tls_error("cannot set ALPN protocols")
            if verify is None:
                verify = cafile is not None
            if verify:
                if cafile is not None:
                    if not SSL_CTX_load_verify_locations(self.ctx, cafile.encode(), NULL):
                        raise_tls_error(f"cannot load CA file {cafile!r}")
                elif not SSL_CTX_set_default_verify_paths(self.ctx):
                    raise_tls_error("cannot load the system trust store")
                SSL_CTX_set_verify(self.ctx, SSL_VERIFY_PEER, NULL)
                if verify_depth >= 0:
                    SSL_CTX_set_verify_depth(self.ctx, verify_depth)
                self.verify = True
            # Each new session (a TLS 1.3 ticket arrives after the handshake) is kept by its
            # connection for the caller to resume the next one with (TLSConnection.take_session).
            SSL_CTX_sess_set_new_cb(self.ctx, _client_new_session_cb)
        ERR_clear_error()

    def __dealloc__(self):
        global _live_ctx
        if self.ctx != NULL:
            SSL_CTX_free(self.ctx)
            self.ctx = NULL
            _live_ctx -= 1

    def add_certificate(self, bytes chain_pem not None, bytes key_pem not None):
        """Load a leaf + chain and its key. One certificate per key type (RSA, ECDSA):
        OpenSSL then gives ECDSA-capable clients the ECDSA one."""
        cdef X509 *leaf
        cdef EVP_PKEY *pkey
        cdef stack_st_X509 *chain
        _read_chain(chain_pem, key_pem, &leaf, &pkey, &chain)
        try:
            if SSL_CTX_use_cert_and_key(self.ctx, leaf, pkey, chain, 1) != 1:
                raise_tls_error("cannot use the certificate and key")
            # The SSL_CTX holds leaf now, and every SSL made from it the same pointer:
            # SSL_get_certificate in the status callback names it.
            self.leaves.append(<size_t>leaf)
            self.key_types.append(_key_type(pkey))
        finally:
            X509_free(leaf)
            EVP_PKEY_free(pkey)
            sk_X509_pop_free(chain, X509_free)

    def staple(self, int position, int slot, SharedState store not None):
        """Staple the OCSP response kept in ``slot`` of ``store`` (the master's shared memory)
        for the ``position``-th certificate added, when a client asks (status_request)."""
        if not 0 <= slot < FT_OCSP_SLOTS:
            raise ValueError(f"OCSP slot {slot} out of range")
        self.staple_from(store)
        self.ocsp_slots[self.leaves[position]] = slot

    def staple_from(self, SharedState store not None):
        """Answer status_request from ``store``'s OCSP slots (one shared region per context)."""
        if self.ocsp_store is not None and self.ocsp_store is not store:
            raise ValueError("a context staples from one shared region")
        self.ocsp_store = store
        SSL_CTX_set_tlsext_status_cb(self.ctx, _status_cb)
        SSL_CTX_set_tlsext_status_arg(self.ctx, <void *>self)

    def set_sni(self, dict names not None, regex=()):
        """``{"example.com": ctx, "*.example.com": ctx2, "www.example.*": ctx3}`` and ``regex``,
        [(compiled bytes pattern, ctx)] tried in order after them (nginx's server_name order);
        unknown names keep this (default) context.

        A named context's certificates, protocols, ciphers, TLS 1.3 suites, groups (unset:
        this context's), options (server order, tickets), session lifetime and ALPN apply
        to its connections. The session cache is this context's for all of them: OpenSSL
        keeps it on the context a connection started on.
        """
        self.sni = {_sni_key(k): v for k, v in names.items() if not k.endswith(".*")}
        self.sni_wildcards = any(k.startswith(b"*.") for k in self.sni)
        self.sni_tail = {_sni_key(k[:len(k) - 1]): v for k, v in names.items() if k.endswith(".*")}
        self.sni_regex = list(regex)

    cdef int _setup_early_data(self, SharedState shared, bint early_data,
                               unsigned int max_early_data) except -1:
        """Every ticket names the node that issued it (SSL_SESSION_set1_ticket_appdata, the
        listener default's callback: OpenSSL calls the session_ctx's); with ``early_data``
        this context accepts 0-RTT, each ClientHello once."""
        self.replay = shared.replay if shared is not None else process_replay_table()
        SSL_CTX_set_session_ticket_cb(self.ctx, _gen_ticket_cb, _dec_ticket_cb, <void *>self)
        if not early_data:
            return 0
        self.max_early_data = max_early_data
        # recv_max: what OpenSSL reads before it fails the connection; the same figure, so a
        # client never sends more than we take (RFC 8446 §4.2.10).
        if not SSL_CTX_set_max_early_data(self.ctx, max_early_data) or \
                not SSL_CTX_set_recv_max_early_data(self.ctx, max_early_data):
            raise_tls_error("cannot set max_early_data")
        SSL_CTX_set_allow_early_data_cb(self.ctx, _allow_early_data_cb, <void *>self)
        return 0

    cdef int _setup_client_verify(self, int mode, str client_ca, str trusted, int depth) except -1:
        """nginx's ngx_ssl_client_certificate: SSL_VERIFY_PEER without FAIL_IF_NO_PEER_CERT
        and a callback that accepts every chain, so the handshake completes and the request
        is answered 400 when the block wants a (valid) certificate."""
        cdef stack_st_X509_NAME *names
        if mode == VERIFY_CLIENT_OFF:
            return 0
        if mode not in (VERIFY_CLIENT_ON, VERIFY_CLIENT_OPTIONAL, VERIFY_CLIENT_OPTIONAL_NO_CA):
            raise ConfigError(f"unknown verify_client mode {mode}")
        self.verify_client = mode
        if client_ca is not None:
            if not SSL_CTX_load_verify_locations(self.ctx, client_ca.encode(), NULL):
                raise_tls_error(f"cannot load client CA file {client_ca!r}")
            names = SSL_load_client_CA_file(client_ca.encode())
            if names == NULL:
                raise_tls_error(f"no certificate in client CA file {client_ca!r}")
            SSL_CTX_set_client_CA_list(self.ctx, names)   # the SSL_CTX owns names from here
        if trusted is not None and not SSL_CTX_load_verify_locations(self.ctx, trusted.encode(), NULL):
            raise_tls_error(f"cannot load trusted certificates {trusted!r}")
        SSL_CTX_set_verify(self.ctx, SSL_VERIFY_PEER, <void *>_client_verify_cb)
        SSL_CTX_set_verify_depth(self.ctx, depth if depth >= 0 else 1)
        return 0

    cdef bint _take_over(self, SSL *ssl, TLSContext current) noexcept:
        """Move ``ssl`` from ``current`` to this context. SSL_set_SSL_CTX(3) brings the
        certificates and the session ID context, and an SSL reads its cipher lists from
        its current SSL_CTX; what SSL_new copied from ``current`` (versions, options,
        groups) is set here."""
        if SSL_set_SSL_CTX(ssl, self.ctx) == NULL:
            return False
        SSL_clear_options(ssl, SSL_get_options(ssl) & ~self.options)
        SSL_set_options(ssl, self.options)
        if self.min_version != current.min_version and not SSL_set_min_proto_version(ssl, self.min_version):
            return False
        if self.max_version != current.max_version and not SSL_set_max_proto_version(ssl, self.max_version):
            return False
        if self.groups is not None and self.groups != current.groups and \
                not SSL_set1_groups_list(ssl, self.groups):
            return False
        # SSL_new copied the verify mode and depth too (nginx's servername callback sets them)
        SSL_set_verify(ssl, SSL_CTX_get_verify_mode(self.ctx), <void *>SSL_CTX_get_verify_callback(self.ctx))
        SSL_set_verify_depth(ssl, SSL_CTX_get_verify_depth(self.ctx))
        return True

    cdef object _select(self, const char *name, size_t n):
        """The ClientHello callback's lookup, once per handshake: the name lowercased and
        without its trailing dots into one bytes key, and a dict lookup on it (no str
        decoded, no method called where the name is found or no wildcard is configured)."""
        cdef char buf[256]
        cdef size_t i
        cdef char c
        cdef bytes key
        cdef Py_ssize_t dot
        if n < sizeof(buf):
            for i in range(n):
                c = name[i]
                buf[i] = c + 32 if b'A' <= c <= b'Z' else c
            while n > 0 and buf[n - 1] == b'.':
                n -= 1
            key = PyBytes_FromStringAndSize(buf, n)
        else:
            key = PyBytes_FromStringAndSize(name, n).lower().rstrip(b".")
        found = self.sni.get(key)
        if found is None and self.sni_wildcards:
            dot = key.find(b".")
            while found is None and dot > 0:
                # nginx's server_name rule: the longest "*.suffix" wins, at any depth
                found = self.sni.get(b"*" + key[dot:])
                dot = key.find(b".", dot + 1)
        if found is None and (self.sni_tail or self.sni_regex):
            found = _tail_or_regex(key, self.sni_tail, self.sni_regex)
        return self if found is None else found

    def sni_entries(self):
        """What the SNI map can select (contexts and Identities), for tools and benchmarks."""
        return list(self.sni.values())

    def select(self, str name):
        """The context (or Identity) SNI ``name`` selects: exact, the longest ``*.suffix``, the
        longest ``prefix.*``, the first regex, then this one."""
        raw = name.encode()
        return self._select(raw, len(raw))

    @property
    def sessions_cached(self):
        return SSL_CTX_sess_number(self.ctx)


cdef class Identity:
    """A certificate a context serves to some names without owning it: SNI picks it, the
    ClientHello callback puts its chain and key on the connection (SSL_use_cert_and_key).

    A file of a PEM directory costs its PEM text until a client first names it, then its
    X509, key and chain (a few KiB), never an SSL_CTX of its own (~20 KiB). Parsing waits
    for that first handshake because OpenSSL 3.0 takes ~2 ms to decode a certificate and
    key (its decoder framework), which made 10,000 of them a 20 s start; the files were
    checked when the plan was built (certs/store.py). Up to two chains, one per key type
    (RSA, ECDSA), as a context holds.
    """

    def __cinit__(self):
        self.count = 0
        self.key_types = []

    def __init__(self, TLSContext context not None, list chains not None):
        """``chains``: ``[(chain_pem, key_pem), ...]``, leaf first in each chain."""
        if not 1 <= len(chains) <= 2:
            raise ValueError("an identity holds one or two chains (RSA, ECDSA)")
        self.context = context
        self.pems = list(chains)
        self.slots = [-1] * len(chains)

    def __dealloc__(self):
        self._free()

    def staple(self, int position, int slot, SharedState store not None):
        """Staple the OCSP response in ``slot`` of ``store`` for the ``position``-th chain
        (certs/ocsp.py), as TLSContext.staple does for its own certificates: the context's
        status callback finds it by the leaf this identity put on the connection."""
        if not 0 <= slot < FT_OCSP_SLOTS:
            raise ValueError(f"OCSP slot {slot} out of range")
        self.context.staple_from(store)
        self.slots[position] = slot
        if self.pems is None:
            self._register_staples()

    cdef void _register_staples(self):
        cdef int i
        for i in range(self.count):
            if self.slots[i] >= 0:
                self.context.ocsp_slots[<size_t>self.leaves[i]] = self.slots[i]

    cdef void _free(self) noexcept:
        cdef int i
        if self.context is not None and self.context.ocsp_slots:
            # a freed X509's address may be another's next: its slot must not stay behind
            for i in range(self.count):
                self.context.ocsp_slots.pop(<size_t>self.leaves[i], None)
        for i in range(self.count):
            if self.leaves[i] != NULL:
                X509_free(self.leaves[i])
            if self.keys[i] != NULL:
                EVP_PKEY_free(self.keys[i])
            if self.chains[i] != NULL:
                sk_X509_pop_free(self.chains[i], X509_free)
        self.count = 0

    def load(self):
        """Parse the chains now (the first handshake does it otherwise); TLSError says why not."""
        cdef int i
        if self.pems is None:
            return
        try:
            for chain_pem, key_pem in self.pems:
                i = self.count
                _read_chain(chain_pem, key_pem, &self.leaves[i], &self.keys[i], &self.chains[i])
                self.count += 1
                self.key_types.append(_key_type(self.keys[i]))
        except BaseException:
            self._free()
            self.key_types = []
            raise
        self.pems = None
        self._register_staples()

    cdef bint apply(self, SSL *ssl) noexcept:
        """Serve this identity's chains on ``ssl``, and no other certificate (the context's
        own would still answer a client that cannot take this one's key type)."""
        cdef int i
        if self.pems is not None:
            try:
                self.load()
            except BaseException:
                _log_identity_failure(self)
                return False
        SSL_certs_clear(ssl)
        for i in range(self.count):
            if SSL_use_cert_and_key(ssl, self.leaves[i], self.keys[i], self.chains[i], 1) != 1:
                return False
        return True


cdef void _log_identity_failure(Identity identity) noexcept:
    """Called inside ``except``: the parse error of a certificate that passed store.py's checks."""
    try:
        _tls_log.error("certificate refused by OpenSSL, handshake failed: %s", sys.exc_info()[1])
    except BaseException:
        pass
cdef int _client_new_session_cb(SSL *ssl, SSL_SESSION *session) noexcept:
    """Client mode: the connection keeps the newest resumable session (returning 1 takes
    OpenSSL's reference, SSL_CTX_sess_set_new_cb(3)); the SSL's ex_data 0 is its owner."""
    cdef void *owner = SSL_get_ex_data(ssl, 0)
    cdef TLSConnection conn
    if owner == NULL or not SSL_SESSION_is_resumable(session):
        return 0
    conn = <TLSConnection>owner
    if conn.fresh_session != NULL:
        SSL_SESSION_free(conn.fresh_session)
    conn.fresh_session = session
    return 1


cdef bint _is_ip_literal(str name):
    try:
        socket.inet_pton(socket.AF_INET6 if ":" in name else socket.AF_INET, name)
    except OSError:
        return False
    return True


cdef class TLSSession:
    """Owns one SSL_SESSION reference (freed once, in __dealloc__)."""

    def __cinit__(self):
        self.session = NULL

    def __dealloc__(self):
        if self.session != NULL:
            SSL_SESSION_free(self.session)
            self.session = NULL


@cython.no_gc   # it refers to its TLSContext and a str, neither leads back: no GC header (16 B)
cdef class TLSConnection:
    """One TLS connection, sans-IO: memory BIOs (``fd=-1``) or OpenSSL reading the socket.

    The cdef methods are the hot path and return TLS_* codes; the def methods wrap
    them for tests and tools.

    OpenSSL's error queue is empty whenever a call of this class returns: a failure drains
    it into ``error`` (_status), the calls that may succeed with entries left behind (the
    handshake, whose callbacks decode sessions and certificates; early data; SSL_shutdown;
    SSL_set_session) clear it after themselves. So SSL_read and SSL_write only peek before
    they run (ERR_peek_error, ~18 ns, where ERR_clear_error took ~100 ns, 3 a keep-alive
    request) and clear only what other code in the process left behind (Python's ssl in a
    health check, cryptography), so SSL_get_error sees only their own entries.
    """

    def __cinit__(self):
        self.ssl = NULL
        self.rbio = NULL
        self.wbio = NULL
        self.error = None
        self.fresh_session = NULL

    def __init__(self, TLSContext context not None, int fd=-1, str server_hostname=None,
                 str check_name=None):
        """Client mode: ``server_hostname`` is sent as SNI and, when the context verifies,
        checked against the certificate, unless ``check_name`` names another (an IP address
        is checked as one); ``server_hostname`` None sends no SNI."""
        self.context = context
        ERR_clear_error()
        self.ssl = SSL_new(context.ctx)
        if self.ssl == NULL:
            raise_tls_error("SSL_new failed")
        global _live_ssl
        _live_ssl += 1
        if fd >= 0:
            self.memory = False
            if not SSL_set_fd(self.ssl, fd):
                raise_tls_error("SSL_set_fd failed")
            # read_ahead: one read() fills OpenSSL's buffer with every record the kernel
            # has, instead of a read for each record header and another for its body.
            SSL_set_read_ahead(self.ssl, 1)
        else:
            self.memory = True
            self.rbio = BIO_new(BIO_s_mem())
            self.wbio = BIO_new(BIO_s_mem())
            if self.rbio == NULL or self.wbio == NULL:
                if self.rbio != NULL:
                    BIO_free(self.rbio)
                if self.wbio != NULL:
                    BIO_free(self.wbio)
                self.rbio = self.wbio = NULL
                raise_tls_error("BIO_new failed")
            BIO_set_mem_eof_return(self.rbio, -1)
            SSL_set_bio(self.ssl, self.rbio, self.wbio)  # ssl owns both from here
        if context.server_side:
            SSL_set_accept_state(self.ssl)
            # The allow-early-data callback's way back to this object (borrowed: we own the SSL).
            SSL_set_ex_data(self.ssl, 0, <void *>self)
            self.early_reading = context.max_early_data > 0
        else:
            SSL_set_ex_data(self.ssl, 0, <void *>self)   # borrowed: this object owns the SSL
            if server_hostname is not None:
                SSL_set_tlsext_host_name(self.ssl, server_hostname.encode())
            name = check_name if check_name is not None else server_hostname
            if context.verify and name is not None:
                if _is_ip_literal(name):
                    if not X509_VERIFY_PARAM_set1_ip_asc(SSL_get0_param(self.ssl), name.encode()):
                        raise_tls_error("X509_VERIFY_PARAM_set1_ip_asc failed")
                elif not SSL_set1_host(self.ssl, name.encode()):
                    raise_tls_error("SSL_set1_host failed")
            SSL_set_connect_state(self.ssl)
        ERR_clear_error()

    def __dealloc__(self):
        global _live_ssl
        if self.fresh_session != NULL:
            SSL_SESSION_free(self.fresh_session)
            self.fresh_session = NULL
        if self.ssl != NULL:
            if not self.fatal:
                # Without this SSL_free() treats the session as bad and drops it from
                # the cache whenever we did not send close_notify (nginx does the same).
                SSL_set_shutdown(self.ssl, SSL_SENT_SHUTDOWN | SSL_RECEIVED_SHUTDOWN)
            SSL_free(self.ssl)  # frees the memory BIOs too
            self.ssl = NULL
            _live_ssl -= 1

    # ---- Handshake flow -------------------------------------------------
    cdef int handshake(self):
        cdef int r
        ERR_clear_error()
        r = self._status(SSL_do_handshake(self.ssl))
        if r == TLS_OK:
            ERR_clear_error()   # what a callback met on the way (a session that did not decode)
        return r

    cdef int read_early(self, char *buf, int size):
        """SSL_read_early_data(3), the first reads of a server with early data on: bytes of
        0-RTT data (> 0), 0 (none now; ``early_reading`` False once early data is over, then
        handshake() goes on), or a TLS_* code. OpenSSL runs the handshake as far as it can
        meanwhile (its flight to the client goes out on the first call)."""
        cdef size_t n = 0
        cdef int r
        ERR_clear_error()
        r = SSL_read_early_data(self.ssl, buf, size, &n)
        if r == SSL_READ_EARLY_DATA_SUCCESS:
            ERR_clear_error()
            self.early_accepted = True
            return <int>n
        if r == SSL_READ_EARLY_DATA_FINISH:
            ERR_clear_error()
            self.early_reading = False
            return <int>n
        return self._status(0)

    # ---- Data flow ------------------------------------------------------
    cdef int read_into(self, char *buf, int size) except? -6:
        cdef int n
        if ERR_peek_error():
            ERR_clear_error()   # left by code outside this class: see the class docstring
        n = SSL_read(self.ssl, buf, size)
        if n > 0:
            return n
        return self._status(n)

    cdef int write_from(self, const char *buf, int size) except? -6:
        cdef int n
        cdef size_t written = 0
        if ERR_peek_error():
            ERR_clear_error()
        if self.early_accepted and not SSL_is_init_finished(self.ssl):
            # 0.5-RTT (RFC 8446 §2.3): an answer to early data before the client's Finished;
            # SSL_write would try to finish the handshake first and fail.
            if SSL_write_early_data(self.ssl, buf, size, &written):
                ERR_clear_error()
                return <int>written
            return self._status(0)
        n = SSL_write(self.ssl, buf, size)
        if n > 0:
            return n
        return self._status(n)

    # ---- Client sessions ------------------------------------------------
    cdef TLSSession take_session(self):
        """The session the server gave since the last call (None if none): its owner now."""
        cdef TLSSession out
        if self.fresh_session == NULL:
            return None
        out = TLSSession.__new__(TLSSession)
        out.session = self.fresh_session
        self.fresh_session = NULL
        return out

    cdef int resume(self, TLSSession session):
        """Offer ``session`` in the ClientHello (before the handshake); 0 if refused."""
        cdef int ok = SSL_set_session(self.ssl, session.session)
        if not ok:
            ERR_clear_error()
        return ok

    cdef int _status(self, int ret) except? -6:
        cdef int err = SSL_get_error(self.ssl, ret)
        if err == SSL_ERROR_NONE:
            return TLS_OK
        if err == SSL_ERROR_WANT_READ:
            return TLS_WANT_READ
        if err == SSL_ERROR_WANT_WRITE:
            return TLS_WANT_WRITE
        if err == SSL_ERROR_ZERO_RETURN:
            # With SSL_OP_IGNORE_UNEXPECTED_EOF a bare EOF reads as close_notify too.
            return TLS_CLOSED if SSL_is_init_finished(self.ssl) else TLS_EOF
        if err == SSL_ERROR_SYSCALL:
            self.failure = failure_kind(ERR_peek_error())
            text = error_text()
            if text:
                self.error = text
                return TLS_FAILED
            if ret == 0 or errno == 0:
                self.error = "unexpected EOF"
                return TLS_EOF
            self.error = f"socket error {errno}"
            return TLS_FAILED
        self.failure = failure_kind(ERR_peek_error())
        text = error_text()
        self.error = text or f"SSL error {err}"
        if not self.context.server_side and SSL_get_verify_result(self.ssl) != X509_V_OK:
            # "certificate verify failed" alone does not say what: X509_V_ERR_* does.
            self.error = "certificate verify failed: " + \
                X509_verify_cert_error_string(SSL_get_verify_result(self.ssl)).decode("latin-1")
        if self.failure == TLS_FAIL_EOF:
            return TLS_EOF
        self.fatal = True
        return TLS_FAILED

    # ---- Shutdown flow --------------------------------------------------
    cdef int send_close_notify(self):
        cdef int ret
        if not SSL_is_init_finished(self.ssl):
            return TLS_OK
        ERR_clear_error()
        ret = SSL_shutdown(self.ssl)
        if ret >= 0:
            ERR_clear_error()
            return TLS_OK
        return self._status(ret)

    # ---- Memory-BIO plumbing ---------------------------------------------
    cdef int feed_ciphertext(self, const char *buf, int size) except -1:
        if BIO_write(self.rbio, buf, size) != size:
            raise_tls_error("BIO_write failed")
        return 0

    cdef size_t ciphertext_pending(self):
        return BIO_ctrl_pending(self.wbio)

    cdef int take_ciphertext(self, char *buf, int size):
        cdef int n = BIO_read(self.wbio, buf, size)
        return n if n > 0 else 0

    # ---- Python API (tests, tools) ---------------------------------------
    def do_handshake(self):
        """TLS_OK (0) when done, else WANT_READ / WANT_WRITE / CLOSED / EOF / FAILED."""
        return self.handshake()

    def feed(self, data):
        """Memory mode: hand ciphertext received from the peer to OpenSSL."""
        cdef const unsigned char[:] view = memoryview(data).cast("B")
        if not self.memory:
            raise RuntimeError("feed() needs a memory-BIO connection")
        if view.shape[0]:
            self.feed_ciphertext(<const char *>&view[0], view.shape[0])

    def feed_eof(self):
        if self.memory:
            BIO_set_mem_eof_return(self.rbio, 0)

    def data_to_send(self):
        """Memory mode: the ciphertext OpenSSL produced for the peer."""
        cdef size_t n = self.ciphertext_pending()
        out = PyBytes_FromStringAndSize(NULL, n)
        if n:
            self.take_ciphertext(PyBytes_AS_STRING(out), n)
        return out

    def read(self, int size=65536):
        """Plaintext bytes, or an int code (WANT_READ, CLOSED, EOF, FAILED)."""
        buf = PyBytes_FromStringAndSize(NULL, size)
        cdef int n = self.read_into(PyBytes_AS_STRING(buf), size)
        if n > 0:
            return buf[:n]
        return n

    def write(self, data):
        """Bytes accepted (may be fewer than given), or an int code."""
        cdef const unsigned char[:] view = memoryview(data).cast("B")
        if view.shape[0] == 0:
            return 0
        return self.write_from(<const char *>&view[0], view.shape[0])

    def shutdown(self):
        return self.send_close_notify()

    @property
    def handshake_done(self):
        return bool(SSL_is_init_finished(self.ssl))

    @property
    def version(self):
        return SSL_get_version(self.ssl).decode() if SSL_is_init_finished(self.ssl) else None

    @property
    def cipher(self):
        cdef const SSL_CIPHER *c = SSL_get_current_cipher(self.ssl)
        return SSL_CIPHER_get_name(c).decode() if c != NULL else None

    @property
    def alpn(self):
        cdef const unsigned char *data = NULL
        cdef unsigned int n = 0
        SSL_get0_alpn_selected(self.ssl, &data, &n)
        return (<const char *>data)[:n].decode("ascii", "replace") if n else None

    @property
    def server_name(self):
        cdef const char *name = SSL_get_servername(self.ssl, TLSEXT_NAMETYPE_host_name)
        return name.decode("ascii", "replace") if name != NULL else None

    def take_client_session(self):
        """Python API of take_session (tests)."""
        return self.take_session()

    def resume_session(self, TLSSession session not None):
        return bool(self.resume(session))

    @property
    def session_reused(self):
        return bool(SSL_session_reused(self.ssl))

    @property
    def selected_context(self):
        """The TLSContext SNI chose (the one whose ``server`` policy applies)."""
        return _context_of(self.ssl, self.context)


# ---- 0-RTT: the early-data decision and the node mark on tickets ----------------------

cdef int _allow_early_data_cb(SSL *ssl, void *arg) noexcept:
    """OpenSSL has resumed a session, verified the PSK binder and found the ticket age,
    ALPN, SNI and cipher fit for early data; we add: the ticket is this node's, and this
    ClientHello (its client random, under the binder) has not been seen before. 0 refuses
    early data only: the client sends it again after a 1-RTT handshake."""
    cdef TLSContext ctx = <TLSContext>arg
    cdef void *owner = SSL_get_ex_data(ssl, 0)
    cdef SSL_SESSION *session = SSL_get_session(ssl)
    cdef void *appdata = NULL
    cdef size_t appdata_len = 0
    cdef unsigned char random[FT_CLIENT_RANDOM]
    cdef int verdict = EARLY_FOREIGN, seen
    if ctx.replay is not None and session != NULL and \
            SSL_SESSION_get0_ticket_appdata(session, &appdata, &appdata_len) and \
            ctx.replay.issued_here(<const unsigned char *>appdata, appdata_len) and \
            SSL_get_client_random(ssl, random, FT_CLIENT_RANDOM) == FT_CLIENT_RANDOM:
        seen = ctx.replay.record(random)
        verdict = EARLY_ALLOWED if seen == REPLAY_FRESH else EARLY_REPLAY if seen == REPLAY_SEEN \
            else EARLY_TABLE_FULL
    if owner != NULL:
        (<TLSConnection>owner).early_verdict = verdict
    return 1 if verdict == EARLY_ALLOWED else 0


cdef int _gen_ticket_cb(SSL *ssl, void *arg) noexcept:
    """A new ticket (or cached session) carries this node's id: early data on it is
    accepted here only, so a flight replayed to another node of the fleet, which resumes
    it through the shared ticket-key file, degrades to 1-RTT there."""
    cdef TLSContext ctx = <TLSContext>arg
    cdef SSL_SESSION *session = SSL_get_session(ssl)
    if session == NULL or ctx.replay is None:
        return 1
    SSL_SESSION_set1_ticket_appdata(session, ctx.replay.table.node_id, 16)
    return 1


cdef SSL_TICKET_RETURN _dec_ticket_cb(SSL *ssl, SSL_SESSION *session, const unsigned char *keyname,
                                      size_t keyname_length, SSL_TICKET_STATUS status,
                                      void *arg) noexcept:
    """OpenSSL's own choices (SSL_CTX_set_session_ticket_cb(3)); the callback exists for the
    generating half."""
    if status == SSL_TICKET_SUCCESS:
        return SSL_TICKET_RETURN_USE
    if status == SSL_TICKET_SUCCESS_RENEW:
        return SSL_TICKET_RETURN_USE_RENEW
    if status == SSL_TICKET_FATAL_ERR_MALLOC or status == SSL_TICKET_FATAL_ERR_OTHER:
        return SSL_TICKET_RETURN_ABORT
    return SSL_TICKET_RETURN_IGNORE_RENEW


# ---- client certificates on the front (nginx ssl_verify_client, $ssl_client_*) ----------

VERIFY_CLIENT_MODES = {"off": VERIFY_CLIENT_OFF, "on": VERIFY_CLIENT_ON, "optional": VERIFY_CLIENT_OPTIONAL,
                       "optional_no_ca": VERIFY_CLIENT_OPTIONAL_NO_CA}


cdef int _client_verify_cb(int preverify_ok, X509_STORE_CTX *store) noexcept:
    """Every chain passes the handshake (nginx's ngx_ssl_verify_callback); the error stays in
    SSL_get_verify_result for the request to be judged by."""
    return 1


cdef bint verify_error_optional(long result) noexcept:
    """The errors ssl_verify_client optional_no_ca lets through (ngx_ssl_verify_error_optional)."""
    return result == X509_V_ERR_DEPTH_ZERO_SELF_SIGNED_CERT or result == X509_V_ERR_SELF_SIGNED_CERT_IN_CHAIN \
        or result == X509_V_ERR_UNABLE_TO_GET_ISSUER_CERT or result == X509_V_ERR_UNABLE_TO_GET_ISSUER_CERT_LOCALLY \
        or result == X509_V_ERR_UNABLE_TO_VERIFY_LEAF_SIGNATURE


cdef bytes _bio_text(BIO *bio):
    cdef char *data = NULL
    cdef long n = BIO_get_mem_data(bio, &data)
    return PyBytes_FromStringAndSize(data, n) if n > 0 else b""


cdef tuple client_certificate(SSL *ssl):
    """(verify result, subject DN, issuer DN, serial, SHA-1 fingerprint, PEM) of the client's
    certificate, in nginx's formats (ngx_ssl_get_subject_dn & co.: RFC 2253 names, the serial in
    i2a_ASN1_INTEGER's hex, the fingerprint lowercase hex); None without one. A resumed session
    brings the certificate and the result it had."""
    cdef X509 *cert = SSL_get0_peer_certificate(ssl)
    cdef BIO *bio
    cdef unsigned char md[20]
    cdef unsigned int md_len = 0
    if cert == NULL:
        return None
    out = [SSL_get_verify_result(ssl)]
    for part in range(4):
        bio = BIO_new(BIO_s_mem())
        if bio == NULL:
            raise MemoryError()
        try:
            if part == 0:
                X509_NAME_print_ex(bio, X509_get_subject_name(cert), 0, XN_FLAG_RFC2253)
            elif part == 1:
                X509_NAME_print_ex(bio, X509_get_issuer_name(cert), 0, XN_FLAG_RFC2253)
            elif part == 2:
                i2a_ASN1_INTEGER(bio, X509_get_serialNumber(cert))
            else:
                PEM_write_bio_X509(bio, cert)
            out.append(_bio_text(bio))
        finally:
            BIO_free(bio)
    if not X509_digest(cert, EVP_sha1(), md, &md_len):
        raise_tls_error("cannot digest the client certificate")
    out.insert(4, PyBytes_FromStringAndSize(<const char *>md, md_len).hex().encode("ascii"))
    ERR_clear_error()
    return tuple(out)


cdef TLSContext _context_of(SSL *ssl, TLSContext fallback):
    cdef SSL_CTX *current = SSL_get_SSL_CTX(ssl)
    if current == fallback.ctx:
        return fallback
    for ctx in fallback.sni.values():
        if (<TLSContext>ctx).ctx == current:
            return ctx
    for ctx in fallback.sni_tail.values():
        if (<TLSContext>ctx).ctx == current:
            return ctx
    for _, ctx in fallback.sni_regex:
        if (<TLSContext>ctx).ctx == current:
            return ctx
    return fallback
