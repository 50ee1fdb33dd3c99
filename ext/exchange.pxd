# One request/response through the proxy, sans-IO (h11 style): fed parsed heads, it
# answers verdicts. Policy (server blocks, routes) is read from tables built in Python.

cdef enum:
    # Exchange states
    X_NEW           # nothing received yet
    X_REJECTED      # the request was refused: answer error_status, no backend hears of it
    X_FORWARDING    # request accepted: route, upstream and rewritten head decided
    X_RESPONDING    # the response head was accepted and rewritten: its body is framed
    X_DONE          # the response ended; reuse decisions are final
    X_FAILED        # the backend's response was unusable (502), or the exchange was aborted
    X_STATES

cdef enum:
    # what moves an Exchange from one state to the next
    E_REQUEST_BAD
    E_REQUEST_OK
    E_RESPONSE_INTERIM
    E_RESPONSE_OK
    E_RESPONSE_BAD
    E_RESPONSE_END
    E_ABORT
    X_EVENTS


cdef enum:
    # Exchange.cert_failure: why a request is answered 400 for its client certificate (nginx's pages)
    CERT_NONE_SENT = 1              # ssl_verify_client on, and none came
    CERT_INVALID = 2                # one came and did not verify


ctypedef struct RequestLimits:
    long long max_body              # client_max_body_size, 0: none
    bint underscores_in_headers     # keep request fields with "_" in the name (nginx: off)
    int keepalive_header            # "Keep-Alive: timeout=N" on HTTP/1.1 responses that keep the connection


cdef enum:
    # why a request might go on to the next server (Exchange.next_upstream); a status is itself
    NEXT_ERROR = 1
    NEXT_TIMEOUT = 2


cdef enum:
    # what a RequestRewrite template piece stands for (VARIABLES in exchange.pyx names them)
    V_LITERAL
    V_HOST              # $host: the target's or Host's name, lowercased, no port; else server_name
    V_HTTP              # $http_NAME: the client's first NAME field (X-Forwarded-For, Cookie: all, joined)
    V_REMOTE_ADDR
    V_REMOTE_PORT
    V_PROXY_ADD_XFF     # the client's X-Forwarded-For fields joined, then ", " and $remote_addr
    V_REQUEST_URI
    V_REQUEST_METHOD
    V_SERVER_ADDR
    V_SERVER_PORT
    V_SSL_PROTOCOL
    V_SSL_CIPHER
    V_SSL_SERVER_NAME
    V_SSL_EARLY_DATA    # "1" while the handshake is not complete (the request came in 0-RTT data)
    V_SSL_CLIENT_VERIFY         # the client certificate, nginx's $ssl_client_*: SUCCESS, FAILED:why, NONE
    V_SSL_CLIENT_S_DN           # subject and issuer, RFC 2253
    V_SSL_CLIENT_I_DN
    V_SSL_CLIENT_SERIAL
    V_SSL_CLIENT_FINGERPRINT    # SHA-1, lowercase hex
    V_SSL_CLIENT_ESCAPED_CERT   # PEM, %-escaped
    V_SSL_CLIENT_CERT           # PEM, a tab after each inner newline (nginx's deprecated form)
    V_CONNECTION_UPGRADE        # nginx's map $http_upgrade { default upgrade; '' close; }: "upgrade" or "close"
    V_COUNT
    # the most a rewritten request head may take (it is bounded by the client's head and
    # the templates, which may repeat a field): past it the request is refused with 431
    PROXY_HEAD_MAX = 65536


ctypedef struct TemplatePiece:
    int var                         # V_*
    int start                       # V_LITERAL: its bytes in RequestRewrite.text; V_HTTP: the field
    int len                         # name, lowercase with "_" for "-" (nginx's $http_ spelling)

ctypedef struct HeaderTemplate:
    int name_start                  # the field name as the config writes it, in text
    int name_len
    int first_piece
    int npieces


cdef class RequestRewrite:
    """A route's request head for its backend, nginx's way (model.ProxyRequest), compiled."""
    cdef bytes text                 # every literal and field name, once
    cdef bytes version_line         # b" HTTP/1.0\r\n"
    cdef bytes host_fallback        # $host without a Host: the server block's first name
    cdef readonly bint keepalive    # the backend connection may be reused after the response
    cdef object real_ip_from        # tuple of ip networks (nginx set_real_ip_from), or ()
    cdef bytes real_ip_header       # lowercase; its address replaces $remote_addr from those peers
    cdef tuple hide                 # lowercase names of backend response fields not passed on
    # nginx proxy_next_upstream: when a request goes on to the upstream's next server
    cdef readonly bint next_on_error        # a connect failure, or a reset before the response head
    cdef readonly bint next_on_timeout      # a connect or read timeout before the response head
    cdef readonly bint next_non_idempotent  # also POST, LOCK, PATCH (bodiless) once sent
    cdef readonly tuple next_statuses       # response statuses that go on (http_500, ...)
    cdef readonly int next_tries            # proxy_next_upstream_tries, 0: the upstream's servers
    cdef readonly double next_time_limit    # proxy_next_upstream_timeout (s), 0: none
    cdef int nheaders
    cdef int npieces
    cdef HeaderTemplate *headers
    cdef TemplatePiece *pieces
    cdef bint names_field(self, const char *name, int n)
    cdef bint hides(self, const char *name, int n)


cdef class ResponsePolicy:
    """What one route or server block adds to responses and answers itself (nginx add_header,
    return, error_page, proxy_intercept_errors), compiled (model.AddHeader, Answer, ErrorPage)."""
    cdef RequestRewrite fields      # the add_header values, then the answer's location or text
    cdef int nadd                   # how many of fields are add_header lines
    cdef tuple always               # per add_header line: added whatever the status
    cdef readonly bint variables    # a value reads the request: expanded per request
    cdef bytes always_lines         # without variables: the "Name: value\r\n" lines with always ...
    cdef bytes success_lines        # ... and without (200, 201, 204, 206, 301, 302, 303, 304, 307, 308)
    cdef readonly int answer_status # a return: its status; 0: proxied
    cdef bint answer_location       # the answer value is a redirect target (else a text body, or none)
    cdef bint answer_has_value
    cdef bytes answer_static        # the answer value without variables
    cdef dict error_pages           # status -> (overwrite: -1 none, 0 "=", N; redirect URL or None;
    #                                 ResponsePolicy of the answer or None)
    cdef bint intercept             # a backend status error_pages names is answered by them


cdef class Timeouts:
    """A route's backend timeouts in seconds, resolved by fastterm/config/plan.py (the route's,
    else its upstream's, else the limits'): read by the stream once the request is routed."""
    cdef readonly double connect    # nginx proxy_connect_timeout (and the wait for a max_conns slot)
    cdef readonly double read       # proxy_read_timeout
    cdef readonly double send       # proxy_send_timeout


cdef class ServerPolicy:
    cdef readonly str name
    cdef ResponsePolicy resp        # the server level's (routes without their own, no route), or None
    cdef bytes hsts_line
    cdef list routes                # [(prefix bytes, UpstreamPool, RequestRewrite, redirect_from, redirect_to,
    #                                 upstream_path, max_body, no_regex, ResponsePolicy, Timeouts)], longest first
    cdef list slash_redirects       # prefixes without their "/" that redirect to it (nginx), or []
    cdef list exact_routes          # [route tuple] matched by the whole path only (nginx location =)
    cdef list regex_routes          # [(compiled bytes pattern, route tuple)] in config order (nginx location ~)
    cdef bint rewrites_path         # a route has an upstream_path (its target wants the route's length)
    cdef public long long max_body  # client_max_body_size of the block for routes that set none; -1: limits'
    cdef object trusted             # tuple of ip networks
    cdef bytes tls_policy           # its [server.tls], encoded: blocks that share it share connections
    cdef bint misdirected           # 421 for it on a connection under another tls_policy (not nginx)
    cdef public int verify_client   # VERIFY_CLIENT_*: 400 without the certificate it wants (nginx);
    cdef public bint client_headers  # and X-SSL-Client-* to the backend (fastterm's own forwarding)
    cdef tuple client_cert_lines    # b"\r\nName: " for verify, subject, issuer, serial, fingerprint; b"": not sent
    cdef tuple client_cert_strip    # lowercase names of them outside X-SSL-Client-*: a client's own never passes
    cdef readonly bytes hsts        # the Strict-Transport-Security value, or b""
    cdef tuple route(self, const char *path, int n)    # (prefix, UpstreamPool, RequestRewrite or None)
    cdef tuple exact(self, const char *path, int n)
    cdef tuple regex(self, const char *path, int n)
    cdef bint is_trusted(self, str ip)


cdef class SiteTable:
    """One listener's server blocks by name, nginx's order: exact names, the longest *.suffix,
    the longest prefix.*, the regexes in order, then the default."""
    cdef dict exact                 # lower-case name (bytes) -> ServerPolicy
    cdef dict wildcard              # ".suffix" (bytes) -> ServerPolicy
    cdef dict tail                  # "prefix." (bytes) -> ServerPolicy (nginx www.example.*)
    cdef list regex                 # [(compiled bytes pattern, ServerPolicy)] (nginx server_name ~RE)
    cdef readonly ServerPolicy default
    cdef readonly bint no_host_default  # a request naming no host goes to default, not SNI's (nginx)
    cdef public bint connection_facts   # a route has a RequestRewrite: ClientFacts want the connection's
    cdef public bint early_reject       # an unsafe method in early data gets 425 (tls.early_data_unsafe)
    cdef public bint client_certs       # a block verifies clients: ClientFacts want the certificate
    cdef public bint send_proxy         # an upstream sends PROXY headers: ClientFacts want proxy_facts
    cdef ServerPolicy lookup(self, const char *host, int n)


cdef class ConnectionFacts:
    """What nginx's variables and ssl_verify_client read from the connection: most connections
    need none of it and share one empty instance (ClientFacts.more)."""
    # ($remote_port, $server_addr, $ssl_*): set by the transport only where a route's
    # RequestRewrite may ask (SiteTable.connection_facts)
    cdef bytes peer_port_b
    cdef bytes server_addr_b
    cdef bytes server_port_b
    cdef bytes ssl_protocol_b
    cdef bytes ssl_cipher_b
    cdef bytes ssl_server_name_b
    # the client's certificate (set where SiteTable.connection_facts or client_certs)
    cdef bint client_cert           # the client sent one (this handshake or the resumed session's)
    cdef long client_verify_result  # SSL_get_verify_result: X509_V_OK or the X509_V_ERR_*
    cdef bytes client_verify_b      # nginx's $ssl_client_verify
    cdef bytes client_s_dn_b
    cdef bytes client_i_dn_b
    cdef bytes client_serial_b
    cdef bytes client_fingerprint_b
    cdef bytes client_pem_b


@cython.final   # direct calls: nothing subclasses it
cdef class ClientFacts:
    """What one client connection knows that a request's verdict depends on; shared by the
    exchanges of that connection (one after another on HTTP/1.1, side by side on HTTP/2)."""
    cdef readonly str peer_ip
    cdef SiteTable sites
    cdef ServerPolicy tls_server    # the server block SNI chose: requests without Host
    cdef ServerPolicy last_server   # the last one a Host chose (for last_host)
    cdef ServerPolicy trust_server  # the last one asked whether it trusts the peer (last_trusted)
    cdef RequestRewrite last_rewrite  # the last one asked whether its real_ip_from holds the peer
    cdef bint last_real_ip
    cdef bint last_trusted
    cdef bytes last_host            # the Host that chose it (keep-alive requests repeat it)
    cdef readonly bint http2        # the client speaks HTTP/2: bodies framed by DATA, no close rules
    cdef ConnectionFacts more       # what nginx's variables read (shared, empty, where none is wanted)
    cdef public tuple proxy_facts   # what a PROXY header names (SiteTable.send_proxy; proxyproto.pyx)
    cdef ConnectionFacts _own(self)
    cdef const char *peer_ip_chars(self, int *n) except NULL
    cdef ServerPolicy server_for(self, const char *host, int n)
    cdef bint trusts(self, ServerPolicy server) except -1
    cdef bint real_ip_from(self, RequestRewrite rewrite)


@cython.final   # direct calls: nothing subclasses it
cdef class Exchange:
    cdef int state
    cdef ClientFacts facts
    # request verdict
    cdef readonly int error_status  # X_REJECTED / X_FAILED: the status to answer with
    cdef ServerPolicy server
    cdef UpstreamPool pool
    cdef Timeouts timeouts          # the route's, or None: the worker's (limits)
    cdef RequestRewrite rewrite     # the route's, or None: fastterm's own forwarding
    cdef const char *remote         # while a RequestRewrite is applied: $remote_addr
    cdef int remote_len
    cdef int body_mode              # request body framing towards the backend
    cdef long long content_length
    cdef bint retryable             # idempotent and bodiless: may be replayed on another connection
    cdef bint head_request
    cdef bint http10
    cdef bint client_close          # the client asked for close (or is HTTP/1.0), or we decided to
    cdef readonly bint continue_client  # the codec answers the client's Expect: 100-continue itself
    cdef readonly bint upgrade      # Upgrade went to the backend (RFC 9110 §7.8): a 101 may switch
    cdef readonly bint switched     # the backend answered 101: the connection is a tunnel now
    # response verdict
    cdef int status
    cdef int response_mode          # response body framing as the backend sends it
    cdef bint dechunk               # the client gets chunk data only (HTTP/1.0 client)
    cdef bint backend_reusable
    cdef str failure                # why a response was refused (for the log)
    cdef readonly bytes location    # a 301 of our own (nginx's /dir -> /dir/): its Location
    cdef bytes redirect_from        # the route's proxy_redirect: a Location starting with it ...
    cdef bytes redirect_to          # ... gets this instead (nginx; None: passed as it is)
    cdef bytes host_name            # $host for it: ClientFacts.last_host, or None (the server's name)
    cdef readonly long long max_body  # the answering route's client_max_body_size, 0: none (codecs count chunks)
    cdef bytes upstream_target      # the route's upstream_path applied (nginx proxy_pass URI), or None
    cdef bint _over_limit(self, ServerPolicy server, tuple route, bytes slash, MessageHead *head) except -1
    cdef public bint early          # the request arrived in TLS 1.3 early data (set by the codec)
    cdef int cert_failure           # 400 for the client certificate: CERT_NONE_SENT or CERT_INVALID (its page)
    cdef bint _client_refused(self, ServerPolicy server)
    cdef int _client_headers(self, HeadWriter out) except -1
    cdef bint early_marked          # ... and we added Early-Data: 1 (the last field of the head)
    cdef ResponsePolicy resp        # the route's (or server block's) response policy, or None
    cdef bytes added_always         # its add_header lines as this request expands them, or None: static
    cdef bytes added_success
    cdef bytes answer_value         # its return's location (made absolute) or text, expanded
    cdef readonly bint answering    # the request is answered by a return, not proxied
    cdef int keepalive_header       # RequestLimits.keepalive_header, for its response
    cdef readonly bint buffer_body  # a chunked body the codec reads whole, then sends with Content-Length
    cdef Py_ssize_t framing_at      # where in the backend head that Content-Length goes
    # what the access log says of it (Worker.log_exchange): the numbers always (a store each),
    # the request's bytes only while a log is on (note_request)
    cdef double started             # loop time its head was complete; 0: none came (a 408)
    cdef long long out_mark         # ClientConnection.sent when it began: bytes_out counts from there
    cdef long long head_sent        # bytes of its response head (body_bytes_sent is the rest)
    cdef int upstream_server        # the server last tried in its pool, -1: none
    cdef double upstream_start      # when the first try began ...
    cdef double upstream_end        # ... and the backend's response ended (0: it did not)
    cdef bint logged                # its line is written (once, whichever way it ended)
    cdef bytes log_method
    cdef bytes log_target
    cdef bytes log_referer
    cdef bytes log_agent
    cdef void note_request(self, const char *p, MessageHead *head, HeaderSlot *slots)

    cdef void reset(self, ClientFacts facts) noexcept
    cdef int advance(self, int event) except -1
    cdef int reject(self, int status) except -1
    cdef int request(self, const char *p, MessageHead *head, HeaderSlot *slots, HeadWriter out,
                     RequestLimits *limits, char *scratch) except -1
    cdef int _request(self, const char *p, MessageHead *head, HeaderSlot *slots, HeadWriter out,
                      RequestLimits *limits, char *scratch) except -1
    cdef int _answer(self, ResponsePolicy resp, MessageHead *head) except -1
    cdef int _response_values(self, const char *p, MessageHead *head, HeaderSlot *slots) except -1
    cdef bytes _absolute(self, bytes location)
    cdef tuple own_answer(self, int status)
    cdef bytes buffered_head(self, bytes head, long long length)
    cdef int _slash_location(self, bytes prefix, tuple route, const char *target, int target_len,
                             const char *p, MessageHead *head, HeaderSlot *slots, const char *host,
                             int host_len) except -1
    cdef int _rewritten_head(self, const char *p, MessageHead *head, HeaderSlot *slots, HeadWriter out,
                             RequestLimits *limits, const char *target, int target_len,
                             const char *host, int host_len, bint upgrade) except -1
    cdef int _expand(self, RequestRewrite rw, TemplatePiece *piece, const char *p, MessageHead *head, HeaderSlot *slots,
                     HeadWriter out, const char *target, int target_len, const char *host, int host_len) except -1
    cdef int response(self, const char *p, MessageHead *head, HeaderSlot *slots, HeadWriter out,
                      bint close_client) except -1
    cdef int _switching(self, const char *p, MessageHead *head, HeaderSlot *slots, HeadWriter out) except -1
    cdef int _redirected(self, const char *rest, int n, HeadWriter out) except -1
    cdef int _bad(self, str why) except -1
    cdef bint _safe_status(self, int status)
    cdef int response_end(self) except -1
    cdef bint may_retry(self, bint got_bytes, int attempts)
    cdef bint next_upstream(self, int cause, bint sent, int attempts, double elapsed)
    cdef bytes error_response(self, int status, bint keep_alive=*)
    cdef bytes error_body(self, int status)
