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

from libc.string cimport memcpy
from cpython.bytes cimport PyBytes_FromStringAndSize, PyBytes_AS_STRING

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


cdef int _client_hello_cb(SSL *ssl, int *alert, void *arg) noexcept:
    """SNI: move the connection to the server block the client names (the default otherwise).

    The ClientHello callback (SSL_CTX_set_client_hello_cb(3), where HAProxy switches too)
    runs before version and cipher negotiation and before ssl_get_prev_session compares a
    session's ID context with the connection's, so all of them see the chosen server.
    A second ClientHello (after a HelloRetryRequest) finds the chosen context current.
    """
    cdef TLSContext current = <TLSContext>arg
    cdef TLSContext chosen
    cdef const unsigned char *name
    cdef size_t name_len
    if not current.sni or not _client_hello_name(ssl, &name, &name_len):
        return SSL_CLIENT_HELLO_SUCCESS
    try:
        chosen = current._select(PyBytes_FromStringAndSize(<const char *>name, name_len))
    except BaseException:
        return SSL_CLIENT_HELLO_SUCCESS
    if chosen is not current and not chosen._take_over(ssl, current):
        # Fail closed: the connection would otherwise run under another server's settings.
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
    if ours_len == 0:
        return SSL_TLSEXT_ERR_NOACK
    if SSL_select_next_proto(<unsigned char **>out, outlen, ours, ours_len,
                             client, client_len) != OPENSSL_NPN_NEGOTIATED:
        return SSL_TLSEXT_ERR_ALERT_FATAL
    return SSL_TLSEXT_ERR_OK


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
        self.key_types = []
        self.alpn_wire = b""
        self.groups = None

    def __init__(self, *, bint server_side=True, protocols=("TLSv1.2", "TLSv1.3"),
                 str ciphers=None, str ciphersuites=None, str groups=None,
                 bint prefer_server_ciphers=True, bint session_cache=True,
                 double session_timeout=300.0, bint session_tickets=True, alpn=("http/1.1",),
                 str cafile=None, bytes session_id_context=None, SharedState shared=None,
                 bytes dhparam=None, bint early_data=False, unsigned int max_early_data=16384):
        """``shared``: the session cache and ticket keys the workers share (the master's
        SharedState), or None for this process's own cache and per-context ticket keys.
        ``dhparam``: PEM DH parameters for the TLS 1.2 DHE suites (nginx ssl_dhparam);
        without them OpenSSL offers no DHE suite whatever ``ciphers`` lists, as nginx.
        ``early_data``: TLS 1.3 0-RTT, up to ``max_early_data`` bytes, accepted once per
        ClientHello (the replay table) and only on tickets this node issued."""
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
            if cafile is not None:
                if not SSL_CTX_load_verify_locations(self.ctx, cafile.encode(), NULL):
                    raise_tls_error(f"cannot load CA file {cafile!r}")
                SSL_CTX_set_verify(self.ctx, SSL_VERIFY_PEER, NULL)
                self.verify = True
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
        cdef BIO *chain_bio = NULL
        cdef BIO *key_bio = NULL
        cdef X509 *leaf = NULL
        cdef X509 *cert = NULL
        cdef EVP_PKEY *pkey = NULL
        cdef int key_id
        ERR_clear_error()
        chain_bio = BIO_new_mem_buf(PyBytes_AS_STRING(chain_pem), len(chain_pem))
        key_bio = BIO_new_mem_buf(PyBytes_AS_STRING(key_pem), len(key_pem))
        try:
            if chain_bio == NULL or key_bio == NULL:
                raise_tls_error("BIO_new_mem_buf failed")
            leaf = PEM_read_bio_X509_AUX(chain_bio, NULL, NULL, NULL)
            if leaf == NULL:
                raise_tls_error("no certificate in PEM data")
            pkey = PEM_read_bio_PrivateKey(key_bio, NULL, NULL, NULL)
            if pkey == NULL:
                raise_tls_error("no private key in PEM data")
            key_id = EVP_PKEY_get_base_id(pkey)
            # Check the pair ourselves: with an RSA and an ECDSA certificate loaded,
            # SSL_CTX_check_private_key would match the key against the other slot.
            if not X509_check_private_key(leaf, pkey):
                raise_tls_error("private key does not match the certificate")
            if not SSL_CTX_use_certificate(self.ctx, leaf) or not SSL_CTX_use_PrivateKey(self.ctx, pkey):
                raise_tls_error("cannot use the certificate and key")
            while True:  # the chain attaches to the certificate just made current
                cert = PEM_read_bio_X509(chain_bio, NULL, NULL, NULL)
                if cert == NULL:
                    break
                if not SSL_CTX_add1_chain_cert(self.ctx, cert):
                    raise_tls_error("SSL_CTX_add1_chain_cert failed")
                X509_free(cert)
                cert = NULL
            ERR_clear_error()  # the chain loop ends on "no start line"
        finally:
            if cert != NULL:
                X509_free(cert)
            if leaf != NULL:
                X509_free(leaf)
            if pkey != NULL:
                EVP_PKEY_free(pkey)
            if chain_bio != NULL:
                BIO_free(chain_bio)
            if key_bio != NULL:
                BIO_free(key_bio)
        self.key_types.append("RSA" if key_id == EVP_PKEY_RSA else "EC" if key_id == EVP_PKEY_EC
                              else OBJ_nid2sn(key_id).decode())

    def set_sni(self, dict names not None):
        """``{"example.com": ctx, "*.example.com": ctx2}``; unknown names keep this (default) context.

        A named context's certificates, protocols, ciphers, TLS 1.3 suites, groups (unset:
        this context's), options (server order, tickets), session lifetime and ALPN apply
        to its connections. The session cache is this context's for all of them: OpenSSL
        keeps it on the context a connection started on.
        """
        self.sni = {k.lower(): v for k, v in names.items()}

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
        return True

    cdef TLSContext _select(self, const char *name):
        cdef bytes raw = name
        host = raw.decode("ascii", "replace").lower().rstrip(".")
        found = self.sni.get(host)
        dot = host.find(".")
        while found is None and dot > 0:
            # nginx's server_name rule: the longest "*.suffix" wins, at any depth
            found = self.sni.get("*" + host[dot:])
            dot = host.find(".", dot + 1)
        return self if found is None else found

    def select(self, str name):
        """The context SNI ``name`` selects (exact, then the longest ``*.suffix``, then this one)."""
        return self._select(name.encode())

    @property
    def sessions_cached(self):
        return SSL_CTX_sess_number(self.ctx)


cdef class TLSConnection:
    """One TLS connection, sans-IO: memory BIOs (``fd=-1``) or OpenSSL reading the socket.

    The cdef methods are the hot path and return TLS_* codes; the def methods wrap
    them for tests and tools.
    """

    def __cinit__(self):
        self.ssl = NULL
        self.rbio = NULL
        self.wbio = NULL
        self.error = None

    def __init__(self, TLSContext context not None, int fd=-1, str server_hostname=None):
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
            if server_hostname is not None:
                SSL_set_tlsext_host_name(self.ssl, server_hostname.encode())
                if context.verify and not SSL_set1_host(self.ssl, server_hostname.encode()):
                    raise_tls_error("SSL_set1_host failed")
            SSL_set_connect_state(self.ssl)

    def __dealloc__(self):
        global _live_ssl
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
        ERR_clear_error()
        return self._status(SSL_do_handshake(self.ssl))

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
            self.early_accepted = True
            return <int>n
        if r == SSL_READ_EARLY_DATA_FINISH:
            self.early_reading = False
            return <int>n
        return self._status(0)

    # ---- Data flow ------------------------------------------------------
    cdef int read_into(self, char *buf, int size):
        cdef int n
        ERR_clear_error()
        n = SSL_read(self.ssl, buf, size)
        if n > 0:
            return n
        return self._status(n)

    cdef int write_from(self, const char *buf, int size):
        cdef int n
        cdef size_t written = 0
        ERR_clear_error()
        if self.early_accepted and not SSL_is_init_finished(self.ssl):
            # 0.5-RTT (RFC 8446 §2.3): an answer to early data before the client's Finished;
            # SSL_write would try to finish the handshake first and fail.
            if SSL_write_early_data(self.ssl, buf, size, &written):
                return <int>written
            return self._status(0)
        n = SSL_write(self.ssl, buf, size)
        if n > 0:
            return n
        return self._status(n)

    cdef int _status(self, int ret):
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


cdef TLSContext _context_of(SSL *ssl, TLSContext fallback):
    cdef SSL_CTX *current = SSL_get_SSL_CTX(ssl)
    if current == fallback.ctx:
        return fallback
    for ctx in fallback.sni.values():
        if (<TLSContext>ctx).ctx == current:
            return ctx
    return fallback
