# TLSContext (one SSL_CTX) and TLSConnection (one SSL), sans-IO.

cdef enum:
    # Return codes of the hot-path calls: WANT_* are codes, never exceptions.
    TLS_OK = 0
    TLS_WANT_READ = -1
    TLS_WANT_WRITE = -2
    TLS_CLOSED = -3      # close_notify received
    TLS_EOF = -4         # transport closed without close_notify
    TLS_FAILED = -5      # protocol or syscall error; TLSConnection.error says why

cdef enum:
    # Why a handshake failed, from the first error's library and reason code (errors.pyx).
    TLS_FAIL_NONE
    TLS_FAIL_PROTOCOL    # no protocol version in common
    TLS_FAIL_CIPHER      # no cipher, group or signature algorithm in common
    TLS_FAIL_ALPN        # no application protocol in common
    TLS_FAIL_HTTP        # plain HTTP sent to the TLS port
    TLS_FAIL_EOF         # the peer closed mid-record
    TLS_FAIL_OTHER

cdef enum:
    # What the allow-early-data callback decided for a connection's 0-RTT data.
    EARLY_NONE           # not asked: no early data offered, or OpenSSL refused it first
    EARLY_ALLOWED        # first sighting of this ClientHello, ticket issued by this node
    EARLY_REPLAY         # the ClientHello was seen before (RFC 8446 §8): 1-RTT instead
    EARLY_FOREIGN        # a ticket from another node (the shared ticket-key file) or none
    EARLY_TABLE_FULL     # no room to record it: refused rather than unprotected

cdef enum:
    # nginx ssl_verify_client: what a request on a server block needs from the client's certificate
    VERIFY_CLIENT_OFF             # none asked for
    VERIFY_CLIENT_ON              # a valid one, else 400
    VERIFY_CLIENT_OPTIONAL        # none, or a valid one
    VERIFY_CLIENT_OPTIONAL_NO_CA  # none, or any, an unknown issuer included (verify_error_optional)

cdef tuple client_certificate(SSL *ssl)
cdef bint verify_error_optional(long result) noexcept


cdef class TLSContext:
    cdef SSL_CTX *ctx
    cdef bint server_side
    cdef readonly bint verify       # client mode: peer certificate and name checked
    cdef readonly int verify_client  # server mode: VERIFY_CLIENT_* (nginx ssl_verify_client)
    cdef public bint reject_handshake  # handshakes that end up here fail: unrecognized_name
    cdef bytes alpn_wire            # our ALPN list in wire format, preference order
    cdef dict sni                   # lowercased name or "*.suffix" (bytes) -> TLSContext or Identity
    cdef bint sni_wildcards         # sni has a "*.suffix" key
    cdef dict sni_tail              # b"prefix." -> TLSContext or Identity (nginx server_name www.example.*)
    cdef list sni_regex             # [(compiled bytes pattern, TLSContext or Identity)] in order (server_name ~RE)
    cdef readonly list key_types    # "RSA", "EC", ... one per certificate added
    cdef SharedState shared         # the workers' session cache and ticket keys, or None
    # What SSL_new copies from the SSL_CTX, re-applied when SNI moves a connection here.
    cdef int min_version
    cdef int max_version
    cdef unsigned long long options
    cdef bytes groups               # None: OpenSSL's default (or the listener's, once moved)
    cdef long session_timeout       # seconds; OpenSSL takes it from the listener's context
    # OCSP stapling flow
    cdef list leaves                # the X509 address of each certificate added, in order
    cdef dict ocsp_slots            # X509 address -> its response's slot in ocsp_store
    cdef SharedState ocsp_store     # where the master (or --single's own loop) keeps responses
    cdef readonly unsigned int max_early_data   # 0: early data off
    cdef ReplayTable replay         # the ClientHellos seen with early data; its node id marks tickets

    cdef int _setup_client_verify(self, int mode, str client_ca, str trusted, int depth) except -1
    cdef int _setup_early_data(self, SharedState shared, bint early_data,
                               unsigned int max_early_data) except -1
    # SNI flow
    cdef object _select(self, const char *name, size_t n)
    cdef bint _take_over(self, SSL *ssl, TLSContext current) noexcept


cdef class Identity:
    cdef readonly TLSContext context    # the settings it is served under
    cdef X509 *leaves[2]
    cdef EVP_PKEY *keys[2]
    cdef stack_st_X509 *chains[2]
    cdef int count
    cdef readonly list key_types
    cdef list pems                  # [(chain_pem, key_pem)] until parsed, then None
    cdef list slots                 # per chain: its OCSP slot in context.ocsp_store, or -1

    cdef void _free(self) noexcept
    cdef void _register_staples(self)
    cdef bint apply(self, SSL *ssl) noexcept
cdef class TLSSession:
    """A client-side SSL_SESSION kept to resume the next connection to the same server."""
    cdef SSL_SESSION *session


@cython.final   # direct calls: nothing subclasses it
cdef class TLSConnection:
    cdef SSL *ssl
    cdef BIO *rbio                  # memory mode only; owned by ssl
    cdef BIO *wbio                  # memory mode only; owned by ssl
    cdef readonly TLSContext context
    cdef readonly bint memory
    cdef public str error           # why the last TLS_FAILED happened
    cdef readonly int failure       # ... as a TLS_FAIL_* kind
    cdef bint fatal                 # a protocol error: the session must not be reused
    cdef SSL_SESSION *fresh_session # client mode: the server's newest session (ticket), owned
    cdef readonly int early_verdict # EARLY_*: the allow-early-data callback's decision
    cdef readonly bint early_reading    # SSL_read_early_data still comes before the handshake
    cdef bint early_accepted        # early data was accepted: writes before the handshake ends
                                    # go out as 0.5-RTT data (SSL_write_early_data)

    # Handshake flow
    cdef int handshake(self)
    cdef int read_early(self, char *buf, int size)
    # Data flow
    # except? -6: a value no return takes (bytes > 0 or a TLS_* code), so a WANT_READ that
    # ends every read loop costs no PyErr_Occurred()
    cdef int read_into(self, char *buf, int size) except? -6
    cdef int write_from(self, const char *buf, int size) except? -6
    # Shutdown flow
    cdef int send_close_notify(self)
    # Memory-BIO plumbing (memory mode)
    cdef int feed_ciphertext(self, const char *buf, int size) except -1
    cdef size_t ciphertext_pending(self)
    cdef int take_ciphertext(self, char *buf, int size)

    # Client sessions (resuming a backend)
    cdef TLSSession take_session(self)
    cdef int resume(self, TLSSession session)

    cdef int _status(self, int ret) except? -6
