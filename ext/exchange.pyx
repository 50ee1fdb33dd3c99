# One request/response through the proxy, sans-IO: no socket, no loop, no buffer of
# its own. A codec (HTTP/1.1 session, HTTP/2 stream) parses a head and feeds it here; the
# Exchange answers with a verdict and writes the head the other side gets.
#
# States and what moves them (_NEXT below is the whole table; anything else is a bug and
# raises, which closes that one connection):
#
#   X_NEW --request ok--> X_FORWARDING --final response head--> X_RESPONDING --end--> X_DONE
#     |                     |   ^  (1xx interim: stays)             |
#     |                     |   +-- a retry on another connection stays here too
#     +--request bad--> X_REJECTED <--body bad (400/413 found after the head)--+
#                           X_FORWARDING/X_RESPONDING --response bad, abort--> X_FAILED
#
# X_REJECTED and X_FAILED carry error_status; X_DONE carries the reuse decisions
# (backend_reusable, client_close). Terminal states take abort again and stay.
# A 101 to a request that asked to upgrade is a final head (``switched``): X_RESPONDING until the
# tunnel closes, its "body" the backend's bytes until close; a 101 nobody asked for is X_FAILED.

import ipaddress
from http import HTTPStatus
from urllib.parse import quote as _quote

from libc.stdio cimport snprintf
from cpython.unicode cimport PyUnicode_AsUTF8AndSize

CLOSE_STATUS = 444   # nginx's "return 444": the connection is closed, nothing sent


# the statuses nginx has a page for (ngx_http_special_response.c); a return of another one
# without text answers an empty body
_NGINX_PAGES = frozenset((301, 302, 303, 307, 308, *range(400, 417), 421, 429, *range(494, 498),
                          *range(500, 506), 507))


def _reason(int status):
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return "Error"


_REASONS = {301: "Moved Permanently", 302: "Moved Temporarily", 400: "Bad Request", 404: "Not Found", 405: "Not Allowed", 408: "Request Timeout", 421: "Misdirected Request",
            413: "Content Too Large", 425: "Too Early", 431: "Request Header Fields Too Large", 500: "Internal Server Error",
            502: "Bad Gateway", 503: "Service Unavailable", 504: "Gateway Timeout"}

cdef enum:
    R_FINAL = 0       # response(): a final head, rewritten into the writer
    R_INTERIM = 1     # a 1xx to pass on as it came (HTTP/1.1 clients)
    R_BAD = 2         # refused: answer 502
    R_TOO_EARLY = 3   # 425 to a request we sent in early data: send it again once the handshake
                      # is complete, without Early-Data (RFC 8470 §5.2), instead of passing it on
    R_INTERCEPT = 4   # an error status the route's error_pages answer (proxy_intercept_errors):
    #                   answer error_status, the backend's body is not read

cdef signed char _NEXT[<int>X_STATES][<int>X_EVENTS]


cdef void _table() noexcept:
    cdef int s, e
    for s in range(<int>X_STATES):
        for e in range(<int>X_EVENTS):
            _NEXT[s][e] = -1
    _NEXT[X_NEW][E_REQUEST_OK] = X_FORWARDING
    _NEXT[X_NEW][E_REQUEST_BAD] = X_REJECTED
    _NEXT[X_FORWARDING][E_REQUEST_BAD] = X_REJECTED
    _NEXT[X_FORWARDING][E_RESPONSE_INTERIM] = X_FORWARDING
    _NEXT[X_FORWARDING][E_RESPONSE_OK] = X_RESPONDING
    _NEXT[X_FORWARDING][E_RESPONSE_BAD] = X_FAILED
    _NEXT[X_RESPONDING][E_RESPONSE_END] = X_DONE
    for s in range(<int>X_STATES):
        _NEXT[s][E_ABORT] = s if s == X_DONE or s == X_REJECTED or s == X_FAILED else X_FAILED


_table()


# nginx variables a RequestRewrite reads per request; fastterm/config/plan.py folds the others in
# as literals ($scheme, $proxy_host, $server_name are constants of a route) or as HTTP_FIELD.
VARIABLES = {"host": V_HOST, "remote_addr": V_REMOTE_ADDR, "remote_port": V_REMOTE_PORT,
             "proxy_add_x_forwarded_for": V_PROXY_ADD_XFF, "request_uri": V_REQUEST_URI,
             "request_method": V_REQUEST_METHOD, "server_addr": V_SERVER_ADDR, "server_port": V_SERVER_PORT,
             "ssl_protocol": V_SSL_PROTOCOL, "ssl_cipher": V_SSL_CIPHER, "ssl_server_name": V_SSL_SERVER_NAME,
             "ssl_early_data": V_SSL_EARLY_DATA}
VARIABLES.update({"ssl_client_verify": V_SSL_CLIENT_VERIFY, "ssl_client_s_dn": V_SSL_CLIENT_S_DN,
                  "ssl_client_i_dn": V_SSL_CLIENT_I_DN, "ssl_client_serial": V_SSL_CLIENT_SERIAL,
                  "ssl_client_fingerprint": V_SSL_CLIENT_FINGERPRINT,
                  "ssl_client_escaped_cert": V_SSL_CLIENT_ESCAPED_CERT, "ssl_client_cert": V_SSL_CLIENT_CERT})
# the WebSocket map of nginx's docs, whatever the config names it (fastterm/config/nginx.py)
VARIABLES["connection_upgrade"] = V_CONNECTION_UPGRADE
LITERAL = V_LITERAL          # RequestRewrite template pieces that are not variables: text as it is,
HTTP_FIELD = V_HTTP         # and $http_NAME (the piece holds NAME)


cdef class RequestRewrite:
    """The request head a route's backend gets, nginx's way: the request line in its HTTP
    version, each template field (literal bytes and variable ids, so a request costs no
    Python object), then the body's framing, then the client's fields that no template
    names. Built once by fastterm/config/plan.py from a model.ProxyRequest."""

    def __cinit__(self):
        self.headers = NULL
        self.pieces = NULL

    def __init__(self, str http_version, headers, bytes host_fallback=b"", bint keepalive=False,
                 real_ip_from=(), str real_ip_header="X-Real-IP", hide_headers=(),
                 next_upstream=("error", "timeout"), int next_tries=0, double next_time_limit=0.0):
        """``headers``: [(name, [(V_LITERAL, bytes) | (V_HTTP, lowercase name) | (V_*, b"")])];
        ``hide_headers``: backend response fields dropped (nginx proxy_hide_header);
        ``next_upstream``: nginx proxy_next_upstream's words (``error``, ``timeout``,
        ``non_idempotent``, ``http_NNN``; empty: off)."""
        cdef int i = 0, k = 0
        if self.headers != NULL:
            raise RuntimeError("RequestRewrite is initialised once")
        text = bytearray()
        pieces = [piece for _, parts in headers for piece in parts]
        self.version_line = f" HTTP/{http_version}\r\n".encode("ascii")
        self.host_fallback = host_fallback
        self.keepalive = keepalive and http_version == "1.1"
        self.real_ip_from = tuple(ipaddress.ip_network(n, strict=False) for n in real_ip_from)
        self.real_ip_header = real_ip_header.lower().encode("ascii")
        self.hide = tuple(dict.fromkeys(n.lower().encode("ascii") for n in hide_headers))
        self.next_on_error = "error" in next_upstream
        self.next_on_timeout = "timeout" in next_upstream
        self.next_non_idempotent = "non_idempotent" in next_upstream
        self.next_statuses = tuple(int(w[5:]) for w in next_upstream if w.startswith("http_"))
        self.next_tries = next_tries
        self.next_time_limit = next_time_limit
        self.headers = <HeaderTemplate *>malloc(max(1, len(headers)) * sizeof(HeaderTemplate))
        self.pieces = <TemplatePiece *>malloc(max(1, len(pieces)) * sizeof(TemplatePiece))
        if self.headers == NULL or self.pieces == NULL:
            raise MemoryError()
        for name, parts in headers:
            raw = name.encode("latin-1")
            self.headers[i].name_start = len(text)
            self.headers[i].name_len = len(raw)
            self.headers[i].first_piece = k
            self.headers[i].npieces = len(parts)
            text += raw
            for var, data in parts:
                if not 0 <= var < V_COUNT:
                    raise ValueError(f"unknown variable id {var}")
                self.pieces[k].var = var
                self.pieces[k].start = len(text)
                self.pieces[k].len = len(data)
                text += data
                k += 1
            i += 1
        self.nheaders = i
        self.npieces = k
        self.text = bytes(text)

    def __dealloc__(self):
        free(self.headers)
        free(self.pieces)
        self.headers = NULL
        self.pieces = NULL

    cdef bint names_field(self, const char *name, int n):
        """Whether a template sets (or empties) the client field ``name``: then it is not passed."""
        cdef int i
        cdef const char *text = PyBytes_AS_STRING(self.text)
        for i in range(self.nheaders):
            if self.headers[i].name_len == n and strncasecmp(text + self.headers[i].name_start, name, n) == 0:
                return True
        return False

    cdef bint hides(self, const char *name, int n):
        """Whether the backend response field ``name`` is dropped (nginx proxy_hide_header)."""
        return _named(self.hide, name, n)


cdef bint _named(tuple names, const char *name, int n):
    """Whether ``name`` is one of ``names`` (bytes), ASCII case-insensitive."""
    cdef bytes h
    for h in names:
        if PyBytes_GET_SIZE(h) == n and strncasecmp(PyBytes_AS_STRING(h), name, n) == 0:
            return True
    return False


cdef class ResponsePolicy:
    """What a route or server block adds to its responses and answers itself, nginx's way:
    add_header (ngx_http_headers_filter_module), return (ngx_http_rewrite_module), error_page
    and proxy_intercept_errors (ngx_http_special_response.c). Built by fastterm/config/plan.py."""

    def __init__(self, fields, always, int answer_status=0, bint answer_location=False,
                 bint answer_has_value=False, error_pages=None, bint intercept=False,
                 bytes host_fallback=b""):
        """``fields``: [(name, pieces)] as RequestRewrite takes them, the add_header lines (one
        ``always`` flag each) and then, with ``answer_has_value``, the answer's location or text.
        ``error_pages``: {status: (overwrite, redirect bytes or None, ResponsePolicy or None)}."""
        cdef int i
        self.fields = RequestRewrite("1.1", fields, host_fallback)
        self.nadd = len(always)
        self.always = tuple(bool(a) for a in always)
        self.variables = any(var != V_LITERAL for _, parts in fields for var, _ in parts)
        self.answer_status = answer_status
        self.answer_location = answer_location
        self.answer_has_value = answer_has_value
        self.error_pages = dict(error_pages or {})
        self.intercept = intercept
        always_lines, success_lines = [], []
        for i, (name, parts) in enumerate(fields):
            value = b"".join(data for _, data in parts)
            if i >= self.nadd:
                self.answer_static = value
            elif value and all(var == V_LITERAL for var, _ in parts):   # else only as a request expands it
                (always_lines if self.always[i] else success_lines).append(name.encode("latin-1") + b": " + value +
                                                                           b"\r\n")
        self.always_lines = b"".join(always_lines)
        self.success_lines = b"".join(success_lines)


cdef class Timeouts:
    def __init__(self, double connect, double read, double send):
        self.connect = connect
        self.read = read
        self.send = send


cdef class ServerPolicy:
    """The HTTP side of one server block: routes, HSTS, trusted proxies."""

    def __init__(self, str name, routes, hsts=None, trusted_proxies=(), bytes tls_policy=b"",
                 bint misdirected=True, ResponsePolicy resp=None):
        """``routes``: [(prefix, UpstreamPool)] or [(prefix, UpstreamPool, RequestRewrite or None)],
        a fourth element True: the prefix without its trailing "/" is redirected to it (nginx);
        a fifth and sixth: a backend Location starting with the fifth gets the sixth instead
        (nginx proxy_redirect; "" none), made absolute when it starts with "/"; a seventh True:
        the path matches only itself (nginx location =), before any prefix; an eighth, a dict
        (fastterm/config/plan.py _matching): ``regex`` (a compiled bytes pattern: tried in order
        after the longest prefix unless that one has ``no_regex``), ``upstream_path`` (replaces
        the matched prefix upstream), ``max_body`` (-1: the server's ``max_body``, then the
        limits'), ``response``, the route's ResponsePolicy (None: ``resp``, the server
        level's; a route that answers has no pool) and ``timeouts`` (Timeouts; None: the worker's).
        ``misdirected``: a request for this block on a connection negotiated under another
        block's TLS policy is answered 421 (model.Server.misdirected_request)."""
        self.name = name
        self.tls_policy = tls_policy
        self.misdirected = misdirected
        compiled = [((r[0].encode(), r[1], r[2] if len(r) > 2 else None,
                      r[4].encode("latin-1") if len(r) > 4 else b"",
                      r[5].encode("latin-1") if len(r) > 5 else b"", *_route_options(r, resp)), len(r) > 6 and r[6])
                    for r in routes]
        self.regex_routes = [(r[7]["regex"], c) for r, (c, _) in zip(routes, compiled)
                             if len(r) > 7 and r[7].get("regex") is not None]
        by_regex = {id(c) for _, c in self.regex_routes}
        self.routes = sorted((c for c, exact in compiled if not exact and id(c) not in by_regex),
                             key=lambda r: -len(r[0]))
        self.exact_routes = [c for c, exact in compiled if exact]
        self.max_body = -1
        self.rewrites_path = any(c[5] is not None for c, _ in compiled)
        self.slash_redirects = [r[0].encode()[:len(r[0].encode()) - 1] for r in routes
                                if len(r) > 3 and r[3] and len(r[0]) > 1 and r[0].endswith("/")]
        self.hsts = hsts.encode("latin-1") if hsts else b""
        self.hsts_line = b"Strict-Transport-Security: " + self.hsts + b"\r\n" if hsts else b""
        self.trusted = tuple(ipaddress.ip_network(n, strict=False) for n in trusted_proxies)
        self.resp = resp
        self.set_client_cert_headers()

    def set_client_cert_headers(self, verify="X-SSL-Client-Verify", subject="X-SSL-Client-S-DN",
                                issuer="X-SSL-Client-I-DN", serial="X-SSL-Client-Serial",
                                fingerprint="X-SSL-Client-Fingerprint"):
        """The names of the fields that carry the client certificate to the backend
        (model.ClientCertHeaders, whose defaults these are; "": not sent)."""
        names = (verify, subject, issuer, serial, fingerprint)
        self.client_cert_lines = tuple(b"\r\n" + n.encode("ascii") + b": " if n else b"" for n in names)
        self.client_cert_strip = tuple(n.lower().encode("ascii") for n in names
                                       if n and not n.lower().startswith("x-ssl-client-"))

    cdef tuple route(self, const char *path, int n):
        cdef tuple r
        cdef bytes prefix
        for r in self.routes:
            prefix = <bytes>r[0]
            if PyBytes_GET_SIZE(prefix) <= n and memcmp(path, PyBytes_AS_STRING(prefix),
                                                        PyBytes_GET_SIZE(prefix)) == 0:
                return r
        return None

    cdef tuple regex(self, const char *path, int n):
        """The first regex route whose pattern is found in the normalised path (nginx)."""
        cdef bytes subject = PyBytes_FromStringAndSize(path, n)
        for pattern, r in self.regex_routes:
            if pattern.search(subject) is not None:
                return r
        return None

    cdef tuple exact(self, const char *path, int n):
        cdef tuple r
        cdef bytes name
        for r in self.exact_routes:
            name = <bytes>r[0]
            if PyBytes_GET_SIZE(name) == n and memcmp(path, PyBytes_AS_STRING(name), n) == 0:
                return r
        return None

    cdef bint is_trusted(self, str ip):
        if not self.trusted:
            return False
        try:
            addr = ipaddress.ip_address(ip)
        except ValueError:
            return False
        return any(addr in net for net in self.trusted)


def _route_options(tuple r, ResponsePolicy resp):
    """A route's eighth element (fastterm/config/plan.py _matching) -> the compiled tuple's
    tail: (upstream_path bytes or None, max_body, no_regex, ResponsePolicy: the route's, else
    the server level's ``resp``, Timeouts or None)."""
    options = r[7] if len(r) > 7 else {}
    upstream_path = options.get("upstream_path")
    response = options.get("response")
    return (upstream_path.encode("ascii") if upstream_path is not None else None,
            options.get("max_body", -1), bool(options.get("no_regex", False)),
            response if response is not None else resp, options.get("timeouts"))


cdef class SiteTable:
    def __init__(self, dict names not None, ServerPolicy default not None, bint no_host_default=False,
                 regex=()):
        """``names``: server name -> ServerPolicy (``*.example.com`` and ``www.example.*`` for
        wildcards); ``regex``: [(compiled bytes pattern, ServerPolicy)], tried in order after them.
        ``no_host_default``: a request that names no host goes to ``default``, not to the
        block SNI chose (nginx; model.Server.no_host)."""
        self.exact = {}
        self.wildcard = {}
        self.tail = {}
        self.regex = list(regex)
        self.default = default
        self.no_host_default = no_host_default
        for policy in (*names.values(), default):
            # a RequestRewrite's variables and a slash redirect's port read the connection
            self.connection_facts |= any(r[2] is not None for r in (<ServerPolicy>policy).routes) or \
                any(r[2] is not None for r in (<ServerPolicy>policy).exact_routes) or \
                any(r[2] is not None for _, r in (<ServerPolicy>policy).regex_routes) or \
                bool((<ServerPolicy>policy).slash_redirects)
            # a return's relative target and $server_port read the listen port
            self.connection_facts |= any(r[8] is not None and ((<ResponsePolicy>r[8]).variables or
                                                               (<ResponsePolicy>r[8]).answer_status)
                                         for r in (*(<ServerPolicy>policy).routes,
                                                   *(<ServerPolicy>policy).exact_routes,
                                                   *(r for _, r in (<ServerPolicy>policy).regex_routes))) or \
                ((<ServerPolicy>policy).resp is not None and (<ServerPolicy>policy).resp.answer_status != 0)
            self.client_certs |= (<ServerPolicy>policy).verify_client != VERIFY_CLIENT_OFF
        for name, policy in names.items():
            key = name.lower().rstrip(".").encode("idna" if not name.isascii() else "ascii")
            if key.startswith(b"*."):
                self.wildcard.setdefault(key[1:], policy)
            elif key.endswith(b".*"):
                self.tail.setdefault(key[:len(key) - 1], policy)
            else:
                self.exact.setdefault(key, policy)

    cdef ServerPolicy lookup(self, const char *host, int n):
        cdef bytes key = PyBytes_FromStringAndSize(host, n).lower().rstrip(b".")
        found = self.exact.get(key)
        if found is None and self.wildcard:
            # nginx: the longest matching "*.suffix" wins; *.example.com matches a.b.example.com
            dot = key.find(b".")
            while found is None and dot > 0:
                found = self.wildcard.get(key[dot:])
                dot = key.find(b".", dot + 1)
        if found is None and (self.tail or self.regex):
            found = _tail_or_regex(key, self.tail, self.regex)
        return self.default if found is None else found

    def select(self, str name):
        """The server block for a name (tests and ``fastterm check``)."""
        raw = name.encode()
        return self.lookup(raw, len(raw))


@cython.no_gc   # bytes only: nothing that leads back, no GC header
cdef class ConnectionFacts:
    def __cinit__(self):
        self.peer_port_b = self.server_addr_b = self.server_port_b = b""
        self.ssl_protocol_b = self.ssl_cipher_b = self.ssl_server_name_b = b""
        self.client_verify_b = b"NONE"
        self.client_s_dn_b = self.client_i_dn_b = self.client_serial_b = b""
        self.client_fingerprint_b = self.client_pem_b = b""


cdef ConnectionFacts _NO_CONNECTION_FACTS = ConnectionFacts()


@cython.no_gc   # it holds strings and configuration, nothing that leads back: no GC header (16 B)
cdef class ClientFacts:
    def __init__(self, str peer_ip, SiteTable sites not None, ServerPolicy tls_server=None, bint http2=False):
        self.http2 = http2
        self.peer_ip = peer_ip
        self.sites = sites
        self.tls_server = tls_server if tls_server is not None else sites.default
        self.more = _NO_CONNECTION_FACTS

    cdef ConnectionFacts _own(self):
        """``more``, this connection's own from the first fact set on it."""
        if self.more is _NO_CONNECTION_FACTS:
            self.more = ConnectionFacts()
        return self.more

    def connection(self, int peer_port=0, str server_addr="", int server_port=0, str ssl_protocol="",
                   str ssl_cipher="", str ssl_server_name=""):
        """What nginx's $remote_port, $server_addr, $server_port and $ssl_* read (the transport
        sets it where SiteTable.connection_facts; tests call this)."""
        cdef ConnectionFacts facts = self._own()
        facts.peer_port_b = str(peer_port).encode() if peer_port else b""
        facts.server_addr_b = server_addr.encode("ascii")
        facts.server_port_b = str(server_port).encode() if server_port else b""
        facts.ssl_protocol_b = ssl_protocol.encode("ascii")
        facts.ssl_cipher_b = ssl_cipher.encode("ascii")
        facts.ssl_server_name_b = ssl_server_name.encode("ascii", "replace")

    def client_certificate(self, tuple cert):
        """The client's certificate as ext/tls.pyx client_certificate gives it (None: none
        sent): what nginx's $ssl_client_* read and ssl_verify_client judges."""
        cdef ConnectionFacts facts = self._own()
        facts.client_cert = cert is not None
        if cert is None:
            facts.client_verify_result = 0
            facts.client_verify_b = b"NONE"
            facts.client_s_dn_b = facts.client_i_dn_b = facts.client_serial_b = b""
            facts.client_fingerprint_b = facts.client_pem_b = b""
            return
        facts.client_verify_result, facts.client_s_dn_b, facts.client_i_dn_b, facts.client_serial_b, \
            facts.client_fingerprint_b, facts.client_pem_b = cert
        facts.client_verify_b = b"SUCCESS" if facts.client_verify_result == X509_V_OK else \
            b"FAILED:" + X509_verify_cert_error_string(facts.client_verify_result)

    cdef const char *peer_ip_chars(self, int *n) except NULL:
        """The peer's address as bytes with no copy: an ASCII str holds them (no bytes object
        kept per connection)."""
        cdef Py_ssize_t size
        cdef const char *p = PyUnicode_AsUTF8AndSize(self.peer_ip, &size)
        n[0] = <int>size
        return p

    cdef ServerPolicy server_for(self, const char *host, int n):
        """nginx semantics: SNI picked the certificate, Host picks the server block."""
        cdef int end = n
        if n > 0 and host[0] == b'[':
            return self.tls_server   # an IP literal names no server block
        while end > 0 and host[end - 1] != b':':
            end -= 1
        if end == 0:
            end = n
        else:
            end -= 1   # strip :port
        if self.last_host is not None and PyBytes_GET_SIZE(self.last_host) == end and \
                memcmp(PyBytes_AS_STRING(self.last_host), host, end) == 0:
            return self.last_server
        self.last_host = PyBytes_FromStringAndSize(host, end)
        self.last_server = self.sites.lookup(host, end)
        return self.last_server

    cdef bint real_ip_from(self, RequestRewrite rewrite):
        """Whether ``rewrite``'s real_ip_from holds the peer (nginx's realip module)."""
        if rewrite is not self.last_rewrite:
            self.last_rewrite = rewrite
            try:
                addr = ipaddress.ip_address(self.peer_ip)
            except ValueError:
                self.last_real_ip = False
            else:
                self.last_real_ip = any(addr in net for net in rewrite.real_ip_from)
        return self.last_real_ip

    cdef bint trusts(self, ServerPolicy server) except -1:
        """Whether ``server``'s trusted_proxies hold the peer: its forwarded headers are kept."""
        if server is not self.trust_server:
            self.trust_server = server
            self.last_trusted = server.is_trusted(self.peer_ip)
        return self.last_trusted


@cython.freelist(64)
cdef class Exchange:
    """One request and its response; see the table at the top of this file. An idle keep-alive
    connection holds none (ext/h1.pyx _idle)."""

    def __cinit__(self, ClientFacts facts not None):
        self.facts = facts
        self.state = X_NEW
        self.body_mode = BODY_NONE
        self.content_length = -1
        self.upstream_server = -1

    cdef void reset(self, ClientFacts facts) noexcept:
        """Back to X_NEW for another request (of any connection: the worker keeps the streams
        and Exchanges of ended requests for the next ones, ext/h1.pyx _begin)."""
        self.facts = facts
        self.state = X_NEW
        self.remote = NULL
        self.remote_len = 0
        self.error_status = 0
        self.server = None
        self.pool = None
        self.timeouts = None
        self.rewrite = None
        self.body_mode = BODY_NONE
        self.content_length = -1
        self.retryable = self.head_request = self.http10 = self.client_close = self.continue_client = False
        self.upgrade = self.switched = False
        self.status = 0
        self.response_mode = BODY_NONE
        self.dechunk = self.backend_reusable = False
        self.failure = None
        self.location = None
        self.redirect_from = self.redirect_to = self.host_name = None
        self.upstream_target = None
        self.max_body = 0
        self.keepalive_header = 0
        self.framing_at = 0
        self.early = self.early_marked = False
        self.resp = None
        self.added_always = self.added_success = self.answer_value = None
        self.answering = False
        self.buffer_body = False
        self.cert_failure = 0
        self.started = self.upstream_start = self.upstream_end = 0
        self.out_mark = self.head_sent = 0
        self.upstream_server = -1
        self.logged = False
        self.log_method = self.log_target = self.log_referer = self.log_agent = None


    cdef void note_request(self, const char *p, MessageHead *head, HeaderSlot *slots):
        """The request line's method and target, Referer and User-Agent, for the access log
        (nginx's combined format has them), copied while the head is still in the read buffer."""
        cdef int j
        cdef const char *name
        self.log_method = PyBytes_FromStringAndSize(p + head.method_start, head.method_len)
        self.log_target = PyBytes_FromStringAndSize(p + head.target_start, head.target_len)
        for j in range(head.nheaders):
            name = p + slots[j].line_start
            if slots[j].name_len == 7 and strncasecmp(name, b"referer", 7) == 0:
                self.log_referer = PyBytes_FromStringAndSize(p + slots[j].value_start, slots[j].value_len)
            elif slots[j].name_len == 10 and strncasecmp(name, b"user-agent", 10) == 0:
                self.log_agent = PyBytes_FromStringAndSize(p + slots[j].value_start, slots[j].value_len)

    cdef int advance(self, int event) except -1:
        cdef int nxt = _NEXT[self.state][event]
        if nxt < 0:
            raise RuntimeError(f"exchange: event {event} in state {self.state}")
        self.state = nxt
        return 0

    cdef int reject(self, int status) except -1:
        """A request (head, or a body found bad after it) refused with ``status``."""
        self.advance(E_REQUEST_BAD)
        self.error_status = status
        return status

    cdef int request(self, const char *p, MessageHead *head, HeaderSlot *slots, HeadWriter out,
                     RequestLimits *limits, char *scratch) except -1:
        """Validate and route a parsed request head (``_request``), then expand what its response
        policy reads from the request while the head is still at hand: add_header values with
        variables, a return's location or text."""
        cdef int status = self._request(p, head, slots, out, limits, scratch)
        self.keepalive_header = limits.keepalive_header
        if self.resp is not None and (self.resp.variables or self.answering):
            self._response_values(p, head, slots)
        return status

    cdef int _request(self, const char *p, MessageHead *head, HeaderSlot *slots, HeadWriter out,
                      RequestLimits *limits, char *scratch) except -1:
        """Validate and route a parsed request head; on 0 the head the backend gets is in
        ``out``, else the return is the status to answer (nothing reaches a backend).
        ``scratch`` holds a normalised path (as long as the head)."""
        cdef ServerPolicy server
        cdef UpstreamPool pool
        cdef tuple route
        cdef const char *target = p + head.target_start
        cdef const char *abs_host = NULL   # an absolute-form target's host (nginx's $host first)
        cdef int target_len = head.target_len, path, route_len, j, kind, abs_host_len = 0
        cdef const char *path_at
        cdef const char *remote
        cdef int remote_len
        cdef bint exact, trusted, upgrade
        self.http10 = head.version == 10
        self.head_request = head.method_len == 4 and memcmp(p, b"HEAD", 4) == 0
        self.client_close = (head.conn_close or self.http10) and not self.facts.http2
        self.max_body = limits.max_body
        self.upstream_target = None
        if target[0] != b'/':
            if target[0] == b'*' and target_len == 1:
                target, target_len = b"/", 1
            else:
                # absolute-form (RFC 9112 §3.2.2): route and forward its origin-form path.
                path = _origin_form(target, target_len)
                if path < 0:
                    return self.reject(400)
                abs_host_len = 8 if target[4] == b's' or target[4] == b'S' else 7
                abs_host = target + abs_host_len
                abs_host_len = path - abs_host_len
                if abs_host_len == 0:
                    return self.reject(400)   # RFC 3986 §3.2.2: an http(s) URI has a host
                target += path
                target_len -= path
        if head.method_len == 5 and memcmp(p, b"TRACE", 5) == 0:
            return self.reject(405)   # as nginx: TRACE would echo credentials back (XST)
        if abs_host != NULL:
            # RFC 9112 §3.2.2: an absolute-form target's host is the request's, whatever Host says
            # (nginx too: it picks the server block and $host).
            server = self.facts.server_for(abs_host, abs_host_len)
        elif head.host_index >= 0:
            server = self.facts.server_for(p + slots[head.host_index].value_start,
                                           slots[head.host_index].value_len)
        elif self.facts.sites.no_host_default:
            server = self.facts.sites.default   # nginx: no Host (HTTP/1.0), the address's default server
        else:
            server = self.facts.tls_server
        if server is not self.facts.tls_server and server.misdirected and \
                server.tls_policy != self.facts.tls_server.tls_policy:
            # The connection was negotiated under another block's TLS policy (say TLS 1.2
            # where this block wants 1.3 only): RFC 9110 §15.5.20, the client retries on a
            # connection of its own. Blocks with the same policy share connections. (nginx
            # serves the request by the Host's block whatever the TLS: misdirected off.)
            return self.reject(421)
        self.server = server
        self.resp = server.resp
        # nginx checks the client certificate before any rewrite phase (a return too)
        if server.verify_client != VERIFY_CLIENT_OFF:
            if abs_host == NULL and head.host_index >= 0:
                if _sni_differs(self.facts, p + slots[head.host_index].value_start, slots[head.host_index].value_len):
                    return self.reject(421)
            elif _sni_differs(self.facts, abs_host, abs_host_len):
                return self.reject(421)
            if self._client_refused(server):
                return self.reject(400)
        if server.resp is not None and server.resp.answer_status:
            return self._answer(server.resp, head)   # nginx: a server-level return, before any location
        trusted = self.facts.trusts(server)   # whose trusted_proxies: the Host-chosen block's
        if _needs_normalizing(target, target_len):
            # Route on the normalised path (as nginx matches locations on $uri), so
            # /api/../admin cannot reach the /api upstream; the target goes on unchanged.
            route_len = _normalize_path(target, target_len, scratch)
            if route_len < 0:
                return self.reject(400)
            path_at = scratch
        else:
            path_at = target
            route_len = -1
            if server.exact_routes or server.slash_redirects or server.regex_routes or server.rewrites_path:
                route_len = 0
                while route_len < target_len and target[route_len] != b'?':
                    route_len += 1
        # nginx: an exact location (location = /path) wins over every prefix, on $uri
        route = server.exact(path_at, route_len) if server.exact_routes else None
        exact = route is not None
        if not exact:
            route = server.route(path_at, route_len) if path_at == scratch else server.route(target, target_len)
        slash = None
        if server.slash_redirects and not exact and \
                (route is None or PyBytes_GET_SIZE(<bytes>route[0]) < route_len):
            # nginx (auto_redirect): a location /dir/ that proxies answers exactly /dir, which
            # no location names, with 301 to /dir/ (ngx_http_core_find_static_location)
            for prefix in server.slash_redirects:
                if PyBytes_GET_SIZE(<bytes>prefix) == route_len and \
                        memcmp(PyBytes_AS_STRING(<bytes>prefix), path_at, route_len) == 0:
                    slash = <bytes>prefix
                    break
        if slash is None and not exact and server.regex_routes and (route is None or not route[7]):
            # nginx: regex locations in config order, unless the longest prefix is ^~
            route = server.regex(path_at, route_len) or route
        if slash is not None:
            # nginx answers the redirect in the /dir/ location's context: its add_header, error_page
            for r in server.routes:
                if PyBytes_GET_SIZE(<bytes>r[0]) == PyBytes_GET_SIZE(slash) + 1 and \
                        memcmp(PyBytes_AS_STRING(<bytes>r[0]), PyBytes_AS_STRING(slash), PyBytes_GET_SIZE(slash)) == 0:
                    self.resp = r[8]
                    break
        elif route is not None:
            self.resp = route[8]   # a 413 below is answered in the location's context too (nginx)
        if self._over_limit(server, route, slash, head):
            return self.reject(413)   # nginx checks the location's limit before its auto redirect, its return
        if slash is not None:
            self._slash_location(slash, route, target, target_len, p, head, slots, abs_host, abs_host_len)
            self.body_mode = request_body_mode(head)   # none: the connection may go on
            return self.reject(301)
        if route is None:
            self.answering = True   # as nginx's 404 (no file): the connection may go on
            self.body_mode = request_body_mode(head)
            return self.reject(404)
        if self.resp is not None and self.resp.answer_status:
            return self._answer(self.resp, head)   # the location's return (nginx's rewrite phase)
        if route[5] is not None:
            self.upstream_target = _upstream_target(<bytes>route[5], PyBytes_GET_SIZE(<bytes>route[0]),
                                                    path_at, route_len, target, target_len)
        pool = <UpstreamPool>route[1]
        self.pool = pool
        self.timeouts = <Timeouts>route[9]
        self.body_mode = request_body_mode(head)
        self.content_length = head.content_length
        self.retryable = self.body_mode == BODY_NONE and _idempotent(p, head.method_len)
        # RFC 9110 §7.8, as nginx: an HTTP/1.1 GET without a body may switch protocols (WebSocket,
        # RFC 6455 §4.1); its Upgrade goes to the backend, whose 101 turns the connection into a tunnel
        upgrade = head.conn_upgrade and head.version == 11 and not self.facts.http2 and \
            self.body_mode == BODY_NONE and head.method_len == 3 and memcmp(p, b"GET", 3) == 0 and \
            _has_kind(head, slots, H_UPGRADE)
        if PyBytes_GET_SIZE(<bytes>route[3]):
            # proxy_redirect: the response's Location may want $host. A reference to the
            # name server_for keeps (keep-alive requests repeat it), not a copy.
            self.redirect_from = <bytes>route[3]
            self.redirect_to = <bytes>route[4]
            if abs_host != NULL and abs_host_len and abs_host[0] == b'[':
                self.host_name = PyBytes_FromStringAndSize(abs_host, _host_end(abs_host, abs_host_len))
            elif abs_host == NULL and head.host_index >= 0 and slots[head.host_index].value_len and \
                    p[slots[head.host_index].value_start] == b'[':
                self.host_name = PyBytes_FromStringAndSize(p + slots[head.host_index].value_start, _host_end(
                    p + slots[head.host_index].value_start, slots[head.host_index].value_len))
            elif abs_host != NULL or head.host_index >= 0:
                self.host_name = self.facts.last_host
        if route[2] is not None:
            self.rewrite = <RequestRewrite>route[2]
            if abs_host == NULL and head.host_index >= 0:
                abs_host = p + slots[head.host_index].value_start
                abs_host_len = slots[head.host_index].value_len
            return self._rewritten_head(p, head, slots, out, limits, target, target_len, abs_host, abs_host_len,
                                        upgrade)

        # The request line in origin-form, always HTTP/1.1 to the backend (nginx's
        # proxy_http_version 1.1): an HTTP/1.0 client must not cost a backend connection per
        # request; its response is de-chunked if need be and its connection closed.
        out.len = 0
        out.put(p, head.target_start)
        if self.upstream_target is not None:
            out.put_bytes(self.upstream_target)
        else:
            out.put(target, target_len)
        out.put(b" HTTP/1.1\r\n", 11)
        if abs_host != NULL:
            # RFC 9112 §3.2.2: a proxy sends the absolute-form target's host as Host, not the client's
            out.put(b"Host: ", 6)
            out.put(abs_host, abs_host_len)
            out.put(b"\r\n", 2)
        elif head.host_index < 0:
            out.put(b"Host: ", 6)
            out.put_bytes(pool.host_header)
            out.put(b"\r\n", 2)
        for j in range(head.nheaders):
            kind = slots[j].kind
            if slots[j].drop or (kind == H_HOST and abs_host != NULL) or kind == H_CONNECTION or \
                    kind == H_KEEP_ALIVE or kind == H_PROXY_CONNECTION or kind == H_TE or \
                    (kind == H_UPGRADE and not upgrade) or \
                    kind == H_X_REAL_IP or kind == H_X_FORWARDED_PROTO or kind == H_X_FORWARDED_FOR or \
                    ((kind == H_FORWARDED or kind == H_CLIENT_IDENTITY) and not trusted) or \
                    (slots[j].underscore and not limits.underscores_in_headers) or \
                    (slots[j].name_len > 13 and strncasecmp(p + slots[j].line_start, b"x-ssl-client-", 13) == 0) or \
                    (server.client_cert_strip and _named(server.client_cert_strip, p + slots[j].line_start,
                                                         slots[j].name_len)):
                continue   # X-SSL-Client-* and the configured names: ours alone, whoever the peer
            out.put(p + slots[j].line_start, slots[j].line_end - slots[j].line_start)
        if upgrade:
            out.put(b"Connection: upgrade\r\n", 21)
            self.upgrade = True
        # One X-Forwarded-For: a trusted proxy's chain (every field, in order), then the peer.
        out.put(b"X-Forwarded-For: ", 17)
        if trusted:
            for j in range(head.nheaders):
                if slots[j].kind == H_X_FORWARDED_FOR and slots[j].value_len:
                    out.put(p + slots[j].value_start, slots[j].value_len)
                    out.put(b", ", 2)
        remote = self.facts.peer_ip_chars(&remote_len)
        out.put(remote, remote_len)
        out.put(b"\r\nX-Forwarded-Proto: https\r\nX-Real-IP: ", 39)
        out.put(remote, remote_len)
        if self.server.client_headers:
            self._client_headers(out)
        if self.early and not _has_kind(head, slots, H_EARLY_DATA):
            # RFC 8470 §5.1: a request received in early data is forwarded with Early-Data: 1
            # (a client's own field already says so: it is passed as it is)
            out.put(b"\r\nEarly-Data: 1", 15)
            self.early_marked = True
        out.put(b"\r\n\r\n", 4)
        self.advance(E_REQUEST_OK)
        return 0

    cdef bint _client_refused(self, ServerPolicy server):
        """nginx's ngx_http_process_request: a certificate that did not verify (optional_no_ca:
        but for an unknown issuer), or none where ssl_verify_client is on."""
        cdef ConnectionFacts facts = self.facts.more
        if facts.client_verify_result != X509_V_OK and (server.verify_client != VERIFY_CLIENT_OPTIONAL_NO_CA or
                                                        not verify_error_optional(facts.client_verify_result)):
            self.cert_failure = CERT_INVALID
        elif server.verify_client == VERIFY_CLIENT_ON and not facts.client_cert:
            self.cert_failure = CERT_NONE_SENT
        return self.cert_failure != 0

    cdef int _client_headers(self, HeadWriter out) except -1:
        """X-SSL-Client-* (or the names the server block gives them): the client certificate as
        nginx's variables give it (fastterm's own forwarding, on a block that verifies clients)."""
        cdef ConnectionFacts facts = self.facts.more
        cdef tuple lines = self.server.client_cert_lines
        if PyBytes_GET_SIZE(<bytes>lines[0]):
            out.put_bytes(<bytes>lines[0])
            out.put_bytes(facts.client_verify_b)
        if not facts.client_cert:
            return 0
        for i, value in enumerate((facts.client_s_dn_b, facts.client_i_dn_b, facts.client_serial_b,
                                   facts.client_fingerprint_b), 1):
            if PyBytes_GET_SIZE(<bytes>lines[i]):
                out.put_bytes(<bytes>lines[i])
                out.put_bytes(<bytes>value)
        return 0

    cdef bint _over_limit(self, ServerPolicy server, tuple route, bytes slash, MessageHead *head) except -1:
        """Whether a Content-Length is past the limit of the route that answers (nginx's
        client_max_body_size of the location, else the server's, else the global one); the
        limit stays in ``max_body`` for a chunked body (the codec counts it as it grows)."""
        cdef long long limit = -1
        cdef tuple r
        if slash is not None:
            for r in server.routes:   # the /dir/ location answers the redirect
                if PyBytes_GET_SIZE(<bytes>r[0]) == PyBytes_GET_SIZE(slash) + 1 and \
                        memcmp(PyBytes_AS_STRING(<bytes>r[0]), PyBytes_AS_STRING(slash), PyBytes_GET_SIZE(slash)) == 0:
                    limit = r[6]
                    break
        elif route is not None:
            limit = route[6]
        if limit < 0:
            limit = server.max_body
        if limit >= 0:
            self.max_body = limit
        return self.max_body > 0 and head.content_length > self.max_body

    cdef int _slash_location(self, bytes prefix, tuple route, const char *target, int target_len,
                             const char *p, MessageHead *head, HeaderSlot *slots, const char *host,
                             int host_len) except -1:
        """``location`` for nginx's /dir -> /dir/ redirect: absolute, as nginx's header filter
        makes it (https://$host, the listen port unless 443, the location's name, ?args).
        Python bytes: a rare answer, off the proxying path; as long as the head at most."""
        cdef int end, q = 0
        cdef bytes port = self.facts.more.server_port_b
        if host == NULL and head.host_index >= 0:
            host = p + slots[head.host_index].value_start
            host_len = slots[head.host_index].value_len
        if host != NULL and host_len > 0:
            end = _host_end(host, host_len)
            name = PyBytes_FromStringAndSize(host, end).lower()
        elif route is not None and route[2] is not None:
            name = (<RequestRewrite>route[2]).host_fallback
        else:
            name = self.server.name.split(",")[0].encode("idna" if not self.server.name.isascii() else "ascii")
        while q < target_len and target[q] != b'?':
            q += 1
        location = b"https://" + name + (b":" + port if port and port != b"443" else b"") + prefix + b"/"
        if target_len - q > 1:
            location += PyBytes_FromStringAndSize(target + q, target_len - q)
        self.location = location
        return 0

    cdef int _rewritten_head(self, const char *p, MessageHead *head, HeaderSlot *slots, HeadWriter out,
                             RequestLimits *limits, const char *target, int target_len,
                             const char *host, int host_len, bint upgrade) except -1:
        """The backend's head under the route's RequestRewrite (model.ProxyRequest says what
        goes): nginx's proxy module, ngx_http_proxy_create_request. ``host``: where $host
        comes from (the absolute-form target's host, else Host; NULL: the server's name).
        ``upgrade``: the client asks to switch protocols; as nginx, it is tunnelled only when
        the templates pass an Upgrade field (proxy_set_header Upgrade $http_upgrade)."""
        cdef RequestRewrite rw = self.rewrite
        cdef const char *text = PyBytes_AS_STRING(rw.text)
        cdef HeaderTemplate *t
        cdef int i, k, j, kind
        cdef Py_ssize_t mark, value_at
        cdef char number[24]
        # nginx answers Expect: 100-continue itself and does not forward it (HTTP/1.1 clients;
        # an HTTP/2 client's goes to the backend, whose 100 comes back as interim HEADERS)
        self.continue_client = head.expect_continue and not self.http10 and not self.facts.http2 and \
            self.body_mode != BODY_NONE
        self.remote = self.facts.peer_ip_chars(&self.remote_len)
        if rw.real_ip_from and self.facts.real_ip_from(rw):
            _real_ip(self, p, head, slots, rw.real_ip_header)
        out.len = 0
        out.put(p, head.target_start)   # the method and its space
        if self.upstream_target is not None:
            out.put_bytes(self.upstream_target)   # $request_uri below stays the client's
        else:
            out.put(target, target_len)
        out.put_bytes(rw.version_line)
        for i in range(rw.nheaders):
            t = &rw.headers[i]
            mark = out.len
            out.put(text + t.name_start, t.name_len)
            out.put(b": ", 2)
            value_at = out.len
            for k in range(t.first_piece, t.first_piece + t.npieces):
                self._expand(rw, &rw.pieces[k], p, head, slots, out, target, target_len, host, host_len)
                if out.len > PROXY_HEAD_MAX:
                    return self.reject(431)   # a piece is at most the client's head: the writer stays bounded
            if out.len == value_at:
                out.len = mark   # nginx: a field whose value comes out empty is not sent
                continue
            if upgrade and t.name_len == 7 and strncasecmp(text + t.name_start, b"upgrade", 7) == 0:
                self.upgrade = True
            out.put(b"\r\n", 2)
        if self.body_mode == BODY_LENGTH:
            out.put(b"Content-Length: ", 16)
            out.put(number, snprintf(number, sizeof(number), "%lld", head.content_length))
            out.put(b"\r\n", 2)
        elif self.body_mode == BODY_CHUNKED and self.max_body:
            # nginx (proxy_request_buffering on) reads a chunked body whole and sends it with
            # Content-Length (an HTTP/1.0 backend knows no chunks): the codec buffers it, in
            # memory, up to the answering route's client_max_body_size (``max_body``; nginx: a
            # temp file past client_body_buffer_size)
            self.buffer_body = True
            self.framing_at = out.len
        elif self.body_mode == BODY_CHUNKED:
            out.put(b"Transfer-Encoding: chunked\r\n", 28)
        for j in range(head.nheaders):
            kind = slots[j].kind
            # nginx's own list (ngx_http_proxy_headers): Host, Connection, Keep-Alive, TE,
            # Upgrade and the framing are its to write; a field named in Connection passes.
            if kind == H_HOST or kind == H_CONNECTION or kind == H_KEEP_ALIVE or kind == H_TE or \
                    kind == H_UPGRADE or kind == H_CONTENT_LENGTH or kind == H_TRANSFER_ENCODING or \
                    (kind == H_EXPECT and self.continue_client) or \
                    (slots[j].underscore and not limits.underscores_in_headers) or \
                    rw.names_field(p + slots[j].line_start, slots[j].name_len):
                continue
            out.put(p + slots[j].line_start, slots[j].line_end - slots[j].line_start)
        out.put(b"\r\n", 2)
        if out.len > PROXY_HEAD_MAX:
            return self.reject(431)
        self.advance(E_REQUEST_OK)
        return 0

    cdef int _expand(self, RequestRewrite rw, TemplatePiece *piece, const char *p, MessageHead *head,
                     HeaderSlot *slots, HeadWriter out, const char *target, int target_len, const char *host,
                     int host_len) except -1:
        cdef const char *text = PyBytes_AS_STRING(rw.text)
        cdef ClientFacts facts = self.facts
        cdef int var = piece.var, j, end, n = 0
        cdef bint joined
        if var == V_LITERAL:
            out.put(text + piece.start, piece.len)
        elif var == V_HOST:
            if host == NULL or host_len == 0:
                out.put_bytes(rw.host_fallback)
                return 0
            end = _host_end(host, host_len)
            out.reserve(end)
            for j in range(end):
                out.buf[out.len + j] = _lower(host[j])
            out.len += end
        elif var == V_HTTP or var == V_PROXY_ADD_XFF:
            # nginx 1.22: X-Forwarded-For and Cookie fields joined (", ", "; "), others the first
            joined = var == V_PROXY_ADD_XFF or (piece.len == 15 and memcmp(text + piece.start, b"x_forwarded_for", 15) == 0) \
                or (piece.len == 6 and memcmp(text + piece.start, b"cookie", 6) == 0)
            for j in range(head.nheaders):
                if var == V_PROXY_ADD_XFF:
                    if slots[j].kind != H_X_FORWARDED_FOR:
                        continue
                elif not _http_name_is(p + slots[j].line_start, slots[j].name_len, text + piece.start, piece.len):
                    continue
                if n:
                    out.put(b"; " if piece.len == 6 and var == V_HTTP else b", ", 2)
                out.put(p + slots[j].value_start, slots[j].value_len)
                n += 1
                if not joined:
                    break
            if var == V_PROXY_ADD_XFF:
                if n:
                    out.put(b", ", 2)
                out.put(self.remote, self.remote_len)
        elif var == V_REMOTE_ADDR:
            out.put(self.remote, self.remote_len)
        elif var == V_REMOTE_PORT:
            out.put_bytes(facts.more.peer_port_b)
        elif var == V_REQUEST_URI:
            out.put(target, target_len)
        elif var == V_REQUEST_METHOD:
            out.put(p + head.method_start, head.method_len)
        elif var == V_SERVER_ADDR:
            out.put_bytes(facts.more.server_addr_b)
        elif var == V_SERVER_PORT:
            out.put_bytes(facts.more.server_port_b)
        elif var == V_SSL_PROTOCOL:
            out.put_bytes(facts.more.ssl_protocol_b)
        elif var == V_SSL_CIPHER:
            out.put_bytes(facts.more.ssl_cipher_b)
        elif var == V_SSL_SERVER_NAME:
            out.put_bytes(facts.more.ssl_server_name_b)
        elif var == V_CONNECTION_UPGRADE:
            for j in range(head.nheaders):
                if slots[j].kind == H_UPGRADE and slots[j].value_len:
                    out.put(b"upgrade", 7)
                    return 0
            out.put(b"close", 5)
        elif var == V_SSL_EARLY_DATA and self.early:
            out.put(b"1", 1)   # nginx: "1" while SSL_is_init_finished() is false, else ""
        elif var >= V_SSL_CLIENT_VERIFY:
            _client_variable(facts, var, out)
        return 0

    cdef int response(self, const char *p, MessageHead *head, HeaderSlot *slots, HeadWriter out,
                      bint close_client) except -1:
        """A parsed response head: R_FINAL (the client's head is in ``out``), R_INTERIM (pass
        it on as it is), or R_BAD (answer 502; ``failure`` says why). ``close_client``: the
        codec closes the client connection after this response (drain, pipelining rules)."""
        cdef int j, kind
        cdef bytes hsts = self.server.hsts_line
        cdef bytes rf = self.redirect_from
        cdef Py_ssize_t rf_len = PyBytes_GET_SIZE(rf) if rf is not None else 0
        cdef bint rewrote = False
        cdef char number[24]
        if head.status == 101:
            if not self.upgrade:
                return self._bad("unexpected 101 Switching Protocols")
            return self._switching(p, head, slots, out)
        if head.status < 200:
            self.advance(E_RESPONSE_INTERIM)   # 100 Continue, 103 Early Hints
            return R_INTERIM
        if head.te_present and head.cl_seen:
            # RFC 9112 §6.3: a response splitting attempt, or a broken backend.
            return self._bad("both Content-Length and Transfer-Encoding")
        if head.status == 425 and self.early_marked and self.retryable:
            # Once: the retry goes without Early-Data. (nginx routes, which write their own
            # fields, pass the 425 on, as nginx does.)
            self.early = self.early_marked = False
            return R_TOO_EARLY
        self.status = head.status
        if self.resp is not None and self.resp.intercept and head.status >= 300 and \
                head.status in self.resp.error_pages:
            # nginx's proxy_intercept_errors: the error_page answers instead of the backend
            self.advance(E_RESPONSE_BAD)
            self.failure = "intercepted"
            self.error_status = head.status
            return R_INTERCEPT
        self.response_mode = response_body_mode(head, self.head_request)
        self.backend_reusable = head.version == 11 and not head.conn_close and \
            self.response_mode != BODY_UNTIL_CLOSE and (self.rewrite is None or self.rewrite.keepalive)
        # HTTP/2 frames the body itself (DATA, END_STREAM): chunk data only, and no close rule.
        self.dechunk = (self.http10 or self.facts.http2) and self.response_mode == BODY_CHUNKED
        if not self.facts.http2 and (self.response_mode == BODY_UNTIL_CLOSE or self.dechunk or close_client):
            self.client_close = True   # an HTTP/1.0 client reads such a body until close
        out.len = 0
        out.put(p, head.line_end)
        for j in range(head.nheaders):
            kind = slots[j].kind
            if slots[j].drop or kind == H_CONNECTION or kind == H_KEEP_ALIVE or \
                    kind == H_PROXY_CONNECTION or kind == H_UPGRADE or (kind == H_HSTS and hsts) or \
                    (kind == H_TRANSFER_ENCODING and (self.dechunk or self.facts.http2)):
                continue
            if self.rewrite is not None and self.rewrite.hide and \
                    self.rewrite.hides(p + slots[j].line_start, slots[j].name_len):
                continue
            if rf_len and slots[j].name_len == 8 and strncasecmp(p + slots[j].line_start, b"location", 8) == 0 \
                    and slots[j].value_len >= rf_len and \
                    memcmp(p + slots[j].value_start, PyBytes_AS_STRING(rf), rf_len) == 0:
                self._redirected(p + slots[j].value_start + rf_len, slots[j].value_len - <int>rf_len, out)
                rewrote = True
                continue
            out.put(p + slots[j].line_start, slots[j].line_end - slots[j].line_start)
        if rewrote and out.len > PROXY_HEAD_MAX:
            return self._bad("the rewritten response head is too large")
        if hsts:
            out.put_bytes(hsts)
        if self.resp is not None:
            # nginx's add_header: after the backend's fields, a field of the same name kept too
            out.put_bytes(self.added_always if self.added_always is not None else self.resp.always_lines)
            if self._safe_status(head.status):
                out.put_bytes(self.added_success if self.added_success is not None else self.resp.success_lines)
        if self.client_close:
            out.put(b"Connection: close\r\n", 19)
        elif self.keepalive_header and not self.facts.http2:
            # nginx keepalive_timeout's second value (ngx_http_header_filter)
            out.put(b"Keep-Alive: timeout=", 20)
            out.put(number, snprintf(number, sizeof(number), "%d", self.keepalive_header))
            out.put(b"\r\n", 2)
        out.put(b"\r\n", 2)
        self.advance(E_RESPONSE_OK)
        return R_FINAL

    cdef int _switching(self, const char *p, MessageHead *head, HeaderSlot *slots, HeadWriter out) except -1:
        """The backend's 101 to a request that asked to upgrade: its head goes to the client
        with its Upgrade and Connection fields (RFC 9110 §15.2.2), then both directions are
        bytes until close (the codec tunnels them); the backend connection is never reused."""
        cdef int j, kind
        self.status = 101
        self.switched = True
        self.response_mode = BODY_UNTIL_CLOSE
        self.backend_reusable = False
        self.client_close = True
        out.len = 0
        out.put(p, head.line_end)
        for j in range(head.nheaders):
            kind = slots[j].kind
            if slots[j].drop or kind == H_KEEP_ALIVE or kind == H_PROXY_CONNECTION or \
                    kind == H_CONTENT_LENGTH or kind == H_TRANSFER_ENCODING:
                continue
            if self.rewrite is not None and self.rewrite.hide and \
                    self.rewrite.hides(p + slots[j].line_start, slots[j].name_len):
                continue
            out.put(p + slots[j].line_start, slots[j].line_end - slots[j].line_start)
        out.put(b"\r\n", 2)
        self.advance(E_RESPONSE_OK)
        return R_FINAL

    cdef int _redirected(self, const char *rest, int n, HeadWriter out) except -1:
        """nginx's proxy_redirect (ngx_http_proxy_rewrite): Location is redirect_to and the
        rest of the backend's value; one starting with "/" made absolute as nginx's header
        filter does (https://$host, the listen port unless 443)."""
        cdef bytes to = self.redirect_to, name = self.host_name, port = self.facts.more.server_port_b
        cdef int j, end
        cdef const char *h
        out.put(b"Location: ", 10)
        if PyBytes_GET_SIZE(to) and PyBytes_AS_STRING(to)[0] == b'/':
            if name is None or PyBytes_GET_SIZE(name) == 0:
                name = self.rewrite.host_fallback if self.rewrite is not None else \
                    self.server.name.split(",")[0].encode("idna" if not self.server.name.isascii() else "ascii")
            h = PyBytes_AS_STRING(name)
            end = <int>PyBytes_GET_SIZE(name)
            while end > 0 and h[end - 1] == b'.':
                end -= 1
            out.put(b"https://", 8)
            out.reserve(end)
            for j in range(end):
                out.buf[out.len + j] = _lower(h[j])
            out.len += end
            if PyBytes_GET_SIZE(port) and port != b"443":
                out.put(b":", 1)
                out.put_bytes(port)
        out.put_bytes(to)
        out.put(rest, n)
        out.put(b"\r\n", 2)
        return 0

    cdef int _bad(self, str why) except -1:
        self.advance(E_RESPONSE_BAD)
        self.failure = why
        self.error_status = 502
        return R_BAD

    cdef bytes buffered_head(self, bytes head, long long length):
        """The backend head for a body read whole (``buffer_body``): its Content-Length where
        the framing goes; the body is then sent as BODY_LENGTH."""
        self.body_mode = BODY_LENGTH
        self.content_length = length
        return head[:self.framing_at] + b"Content-Length: %d\r\n" % length + head[self.framing_at:]

    cdef bint _safe_status(self, int status):
        """The statuses nginx's add_header without ``always`` applies to (ngx_http_headers_filter)."""
        return status == 200 or status == 201 or status == 204 or status == 206 or status == 301 or \
            status == 302 or status == 303 or status == 304 or status == 307 or status == 308

    cdef int _answer(self, ResponsePolicy resp, MessageHead *head) except -1:
        """A return: the request is answered by its status (request() expands its value)."""
        self.resp = resp
        self.answering = True
        self.body_mode = request_body_mode(head)   # none: the connection may go on
        return self.reject(resp.answer_status)

    cdef int _response_values(self, const char *p, MessageHead *head, HeaderSlot *slots) except -1:
        """The add_header lines and the return value of ``resp`` for this request: $host from the
        absolute-form target or Host, $request_uri the target as sent. Python bytes: only for
        policies with variables, or a return (an answer of our own)."""
        cdef ResponsePolicy resp = self.resp
        cdef RequestRewrite rw = resp.fields
        cdef HeaderTemplate *t
        cdef HeadWriter w
        cdef const char *target = p + head.target_start
        cdef const char *host = NULL
        cdef const char *text = PyBytes_AS_STRING(rw.text)
        cdef int host_len = 0, path, i, k
        cdef Py_ssize_t mark, value_at
        if not resp.variables:
            value = resp.answer_static
        else:
            if target[0] != b'/' and head.target_len > 1:
                path = _origin_form(target, head.target_len)
                if path > 0:
                    host = target + (8 if target[4] == b's' or target[4] == b'S' else 7)
                    host_len = <int>(target + path - host)
            if host == NULL and head.host_index >= 0:
                host = p + slots[head.host_index].value_start
                host_len = slots[head.host_index].value_len
            if self.rewrite is None or self.state != X_FORWARDING:
                self.remote = self.facts.peer_ip_chars(&self.remote_len)   # else the rewrite's (realip)
            w = HeadWriter(256)
            always, success, value = [], [], None
            for i in range(rw.nheaders):
                t = &rw.headers[i]
                mark = w.len
                if i < resp.nadd:
                    w.put(text + t.name_start, t.name_len)
                    w.put(b": ", 2)
                value_at = w.len
                for k in range(t.first_piece, t.first_piece + t.npieces):
                    self._expand(rw, &rw.pieces[k], p, head, slots, w, target, head.target_len, host, host_len)
                    if w.len - mark > PROXY_HEAD_MAX:
                        w.len = value_at   # a value past any head's size (a huge $http_ field): left out
                        break
                if i >= resp.nadd:
                    value = PyBytes_FromStringAndSize(w.buf + value_at, w.len - value_at)
                elif w.len > value_at:   # nginx: an empty value adds no field
                    w.put(b"\r\n", 2)
                    (always if resp.always[i] else success).append(PyBytes_FromStringAndSize(w.buf + mark,
                                                                                              w.len - mark))
                w.len = mark
            self.added_always = b"".join(always)
            self.added_success = b"".join(success)
        if self.answering:
            if resp.answer_location and value is not None and value.startswith(b"/"):
                if head.host_index >= 0 and slots[head.host_index].value_len:
                    host = p + slots[head.host_index].value_start
                    self.host_name = PyBytes_FromStringAndSize(host, _host_end(host, slots[head.host_index].value_len))
                value = self._absolute(value)
            self.answer_value = value
        return 0

    cdef bytes _absolute(self, bytes location):
        """A relative redirect target made absolute as nginx's header filter does: https://$host
        (the server's first name without a Host), the listen port unless 443."""
        cdef bytes name = self.host_name, port = self.facts.more.server_port_b
        if name is None or not name:
            name = self.server.name.split(",")[0].encode("idna" if not self.server.name.isascii() else "ascii") \
                if self.server is not None else b""
        return b"https://" + name.lower().rstrip(b".") + (b":" + port if port and port != b"443" else b"") + location

    cdef tuple own_answer(self, int status):
        """(status, [(name, value)], body) of an answer fastterm makes itself (an error, a
        redirect, a return), after error_page and with add_header, as nginx's
        ngx_http_special_response_handler and headers filter: status 0 closes the connection
        without an answer (nginx's 444)."""
        cdef ServerPolicy server = self.server if self.server is not None else self.facts.tls_server
        cdef ResponsePolicy resp = self.resp if self.resp is not None else server.resp
        cdef ResponsePolicy page_resp = None
        location = self.location if status == 301 else None
        text = None
        always, success = None, None
        if resp is not None:
            always = self.added_always if self.added_always is not None else resp.always_lines
            success = self.added_success if self.added_success is not None else resp.success_lines
            if self.answering and self.answer_value is not None:
                if resp.answer_location:
                    location = self.answer_value
                else:
                    text = self.answer_value
            page = resp.error_pages.get(status) if resp.error_pages else None
            if page is not None:
                overwrite, redirect, page_resp = page
                if redirect is not None:
                    status = overwrite if overwrite in (301, 303, 307, 308) else 302
                    location, text = redirect, None
                else:
                    # nginx: the named location answers; its status unless "=" left it the error's
                    status = page_resp.answer_status if overwrite == 0 else status if overwrite < 0 else overwrite
                    location = text = None
                    if page_resp.answer_has_value:
                        if page_resp.answer_location:
                            location = self._absolute(page_resp.answer_static) \
                                if page_resp.answer_static.startswith(b"/") else page_resp.answer_static
                        else:
                            text = page_resp.answer_static
                    always, success = page_resp.always_lines, page_resp.success_lines
                    if page_resp.answer_status == CLOSE_STATUS:
                        return 0, None, None
        if status == CLOSE_STATUS:
            return 0, None, None
        if text is not None:
            body, ctype = text, b"text/plain"
        elif 200 <= status < 300:
            body, ctype = b"", b"text/plain"   # nginx: "return 200;" sends no body
        elif (self.answering or page_resp is not None) and status not in _NGINX_PAGES:
            body, ctype = b"", None   # nginx has no page for it (ngx_http_error_pages): nothing
        else:
            body, ctype = self.error_body(status), b"text/html"
        fields = [(b"Server", b"fastterm")]
        if ctype is not None:
            fields.append((b"Content-Type", ctype))
        fields.append((b"Content-Length", str(len(body)).encode()))
        if location is not None and (300 <= status < 400 or status == 201):
            fields.append((b"Location", location))
        if server.hsts:
            fields.append((b"Strict-Transport-Security", server.hsts))
        for lines in (always, success if self._safe_status(status) else None):
            if lines:
                for line in lines.split(b"\r\n")[:-1]:
                    name, _, value = line.partition(b": ")
                    fields.append((name, value))
        return status, fields, body

    cdef int response_end(self) except -1:
        return self.advance(E_RESPONSE_END)

    cdef bint may_retry(self, bint got_bytes, int attempts):
        """A reset before any response byte on an idempotent, bodiless request: replaying it
        on a fresh connection is safe (RFC 9110 §9.2.2)."""
        return not got_bytes and self.retryable and attempts < self.pool.tries

    cdef bint next_upstream(self, int cause, bint sent, int attempts, double elapsed):
        """Whether this request goes on to another server after ``cause`` (NEXT_ERROR,
        NEXT_TIMEOUT or a response status; ``sent``: the request reached the backend). nginx's
        proxy_next_upstream for a route with a RequestRewrite: its causes, a request sent only
        when bodiless and idempotent (or ``non_idempotent``), within next_tries servers and
        next_time_limit seconds. fastterm's own routes: a failed connect (resets: may_retry)."""
        cdef RequestRewrite rw = self.rewrite
        cdef int limit = min(self.pool.tries, len(self.pool.servers))
        if rw is None:
            return attempts < limit and not sent   # a connect that failed or timed out
        if rw.next_tries and rw.next_tries < limit:
            limit = rw.next_tries
        if attempts >= limit or rw.next_time_limit and elapsed >= rw.next_time_limit:
            return False
        if sent and not (self.retryable or rw.next_non_idempotent and self.body_mode == BODY_NONE):
            return False
        if cause == NEXT_ERROR:
            return rw.next_on_error
        if cause == NEXT_TIMEOUT:
            return rw.next_on_timeout
        return cause in rw.next_statuses

    cdef bytes error_body(self, int status):
        reason = _REASONS.get(status) or _reason(status)
        if self.cert_failure:
            # nginx's pages for its internal 496 / 495 (sent as 400)
            why = "No required SSL certificate was sent" if self.cert_failure == CERT_NONE_SENT else \
                "The SSL certificate error"
            return f"<html><head><title>400 {why}</title></head><body><h1>400 Bad Request</h1>{why}" \
                   f"<hr>fastterm</body></html>\r\n".encode()
        return f"<html><head><title>{status} {reason}</title></head><body><h1>{status} {reason}</h1>" \
               f"<hr>fastterm</body></html>\r\n".encode()

    cdef bytes error_response(self, int status, bint keep_alive=False):
        """A response fastterm makes itself, as HTTP/1.1 bytes (own_answer says what); b"": close
        without one. ``keep_alive``: the connection goes on after it (an answer to a request
        with no body)."""
        status, fields, body = self.own_answer(status)
        if status == 0:
            return b""
        reason = _REASONS.get(status) or _reason(status)
        msg = f"HTTP/1.1 {status} {reason}\r\n".encode() + b"".join(name + b": " + value + b"\r\n"
                                                                  for name, value in fields)
        if keep_alive and self.keepalive_header:
            msg += b"Keep-Alive: timeout=%d\r\n" % self.keepalive_header
        msg += b"\r\n" if keep_alive else b"Connection: close\r\n\r\n"
        return msg if self.head_request else msg + body

    # ---- Python face, for the unit tests ------------------------------------------------
    def feed_request(self, bytes raw, long long max_body=0, int max_headers=100, bint underscores=False,
                     int keepalive_header=0):
        """Parse ``raw`` (one complete head) and decide: (0, upstream head) or (status, None)."""
        cdef RequestLimits limits
        cdef MessageHead head
        cdef HeaderSlot slots[MAX_HEADER_SLOTS]
        cdef HeadWriter out = HeadWriter(4096)
        cdef bytes scratch = bytes(len(raw))
        cdef int status = parse_head(raw, len(raw), True, &head, slots, min(max_headers, MAX_HEADER_SLOTS))
        if status:
            return self.reject(status), None
        limits.max_body = max_body
        limits.underscores_in_headers = underscores
        limits.keepalive_header = keepalive_header
        status = self.request(raw, &head, slots, out, &limits, <char *>PyBytes_AS_STRING(scratch))
        return status, (out.take() if status == 0 else None)

    def feed_response(self, bytes raw, bint close_client=False):
        """(R_FINAL, client head) / (R_INTERIM, None) / (R_BAD, None) / (R_TOO_EARLY, None) for
        one complete head."""
        cdef MessageHead head
        cdef HeaderSlot slots[MAX_HEADER_SLOTS]
        cdef HeadWriter out = HeadWriter(4096)
        cdef int r
        if parse_head(raw, len(raw), False, &head, slots, MAX_HEADER_SLOTS):
            return self._bad("malformed header block"), None
        r = self.response(raw, &head, slots, out, close_client)
        return r, (out.take() if r == R_FINAL else None)

    def end(self):
        self.response_end()

    def error_page(self, int status, bint keep_alive=False):
        return self.error_response(status, keep_alive)

    def abort(self):
        self.advance(E_ABORT)

    @property
    def verdict(self):
        """The state's name and what was decided, for tests."""
        return {"state": ("new", "rejected", "forwarding", "responding", "done", "failed")[self.state],
                "error_status": self.error_status, "server": self.server.name if self.server else None,
                "upstream": self.pool.name if self.pool is not None else None,
                "retryable": self.retryable, "client_close": self.client_close,
                "backend_reusable": self.backend_reusable, "dechunk": self.dechunk,
                "body_mode": ("none", "length", "chunked", "until-close")[self.body_mode],
                "response_mode": ("none", "length", "chunked", "until-close")[self.response_mode],
                "failure": self.failure}


cdef bint _sni_differs(ClientFacts facts, const char *host, int n) noexcept:
    """nginx's ngx_http_set_virtual_server: on a block that verifies clients, a request whose
    host (none: "") is not the name the client sent in SNI is answered 421 (the certificate
    was checked for that name's block)."""
    cdef Py_ssize_t sni_len = PyBytes_GET_SIZE(facts.more.ssl_server_name_b)
    if sni_len == 0:
        return False
    if host != NULL and n > 0:
        n = _host_end(host, n)
    else:
        n = 0
    return n != sni_len or strncasecmp(host, PyBytes_AS_STRING(facts.more.ssl_server_name_b), n) != 0


cdef int _client_variable(ClientFacts facts, int var, HeadWriter out) except -1:
    """$ssl_client_*: empty without a certificate but $ssl_client_verify (NONE)."""
    if var == V_SSL_CLIENT_VERIFY:
        out.put_bytes(facts.more.client_verify_b)
    elif var == V_SSL_CLIENT_S_DN:
        out.put_bytes(facts.more.client_s_dn_b)
    elif var == V_SSL_CLIENT_I_DN:
        out.put_bytes(facts.more.client_i_dn_b)
    elif var == V_SSL_CLIENT_SERIAL:
        out.put_bytes(facts.more.client_serial_b)
    elif var == V_SSL_CLIENT_FINGERPRINT:
        out.put_bytes(facts.more.client_fingerprint_b)
    elif var == V_SSL_CLIENT_ESCAPED_CERT:
        # ngx_escape_uri(NGX_ESCAPE_URI_COMPONENT): all but letters, digits and -._~
        out.put_bytes(_quote(facts.more.client_pem_b, safe=b"-._~").encode("ascii"))
    elif var == V_SSL_CLIENT_CERT and facts.more.client_pem_b:
        # ngx_ssl_get_certificate: the PEM without its last newline, a tab after each other one
        out.put_bytes(facts.more.client_pem_b[:-1].replace(b"\n", b"\n\t"))
    return 0


cdef void _real_ip(Exchange ex, const char *p, MessageHead *head, HeaderSlot *slots, bytes header) noexcept:
    """nginx's realip module (real_ip_recursive off): $remote_addr becomes the address in the
    request's ``header`` field, the last one of X-Forwarded-For (its fields joined); a value
    that is no address leaves the peer's."""
    cdef const char *name = PyBytes_AS_STRING(header)
    cdef int n = <int>PyBytes_GET_SIZE(header), j, last = -1, start, end
    cdef bint xff = n == 15 and memcmp(name, b"x-forwarded-for", 15) == 0
    cdef char text[INET6_ADDRSTRLEN + 1]
    cdef unsigned char binary[16]
    for j in range(head.nheaders):
        if slots[j].name_len == n and strncasecmp(p + slots[j].line_start, name, n) == 0:
            last = j
            if not xff:
                break   # another field: its first (nginx's headers_in lookup)
    if last < 0:
        return
    start = slots[last].value_start
    end = start + slots[last].value_len
    if xff:
        while end > start and (p[end - 1] == b' ' or p[end - 1] == b','):
            end -= 1
        j = end
        while j > start and p[j - 1] != b',':
            j -= 1
        start = j
        while start < end and p[start] == b' ':
            start += 1
    if end - start <= 0 or end - start > INET6_ADDRSTRLEN:
        return
    memcpy(text, p + start, end - start)
    text[end - start] = 0
    if inet_pton(AF_INET, text, binary) == 1 or inet_pton(AF_INET6, text, binary) == 1:
        ex.remote = p + start
        ex.remote_len = end - start


cdef int _host_end(const char *host, int host_len) noexcept:
    """The length of a Host value's name: its :port and trailing dots off (nginx's $host)."""
    cdef int end = host_len
    if host[0] == b'[':
        while end > 0 and host[end - 1] != b']':
            end -= 1
        if end == 0:
            end = host_len
    else:
        while end > 0 and host[end - 1] != b':':
            end -= 1
        end = end - 1 if end > 0 else host_len
    while end > 0 and host[end - 1] == b'.':
        end -= 1
    return end


cdef bint _http_name_is(const char *field, int n, const char *var, int m) noexcept:
    """Whether a field name is the one a $http_NAME variable names (lowercase, "-" as "_")."""
    cdef int i
    cdef char c
    if n != m:
        return False
    for i in range(n):
        c = _lower(field[i])
        if c == b'-':
            c = b'_'
        if c != var[i]:
            return False
    return True


cdef bint _has_kind(MessageHead *head, HeaderSlot *slots, int kind) noexcept:
    cdef int j
    for j in range(head.nheaders):
        if slots[j].kind == kind:
            return True
    return False


cdef bint early_safe(const char *m, Py_ssize_t n) noexcept:
    """Whether a request line starting at ``m`` has a method RFC 8470 §3 lets through before
    the handshake completes: safe ones (GET, HEAD, OPTIONS; TRACE is refused anyway)."""
    return (n >= 4 and memcmp(m, b"GET ", 4) == 0) or (n >= 5 and memcmp(m, b"HEAD ", 5) == 0) or \
        (n >= 8 and memcmp(m, b"OPTIONS ", 8) == 0)


cdef bint _idempotent(const char *m, int n) noexcept:
    """Methods safe to replay on another connection (RFC 9110 §9.2.2), bodiless here."""
    if n == 3:
        return memcmp(m, b"GET", 3) == 0
    if n == 4:
        return memcmp(m, b"HEAD", 4) == 0
    if n == 7:
        return memcmp(m, b"OPTIONS", 7) == 0
    return False   # TRACE, the fourth, is answered 405 before it gets here


cdef int _origin_form(const char *t, int n) noexcept:
    """Offset of the path in an absolute-form target ("https://host/p?q" -> 14), or -1."""
    cdef int i = 0
    if n > 7 and _ieq(t, 7, "http://", 7):
        i = 7
    elif n > 8 and _ieq(t, 8, "https://", 8):
        i = 8
    else:
        return -1
    while i < n and t[i] != b'/' and t[i] != b'?':
        i += 1
    if i >= n or t[i] != b'/':
        return -1
    return i


cdef bytes _upstream_target(bytes upstream_path, Py_ssize_t loc_len, const char *path, int path_len,
                            const char *target, int target_len):
    """nginx's proxy_pass with a URI part (ngx_http_proxy_create_request): the URI part, then
    what follows the location's name in the normalised path, escaped as ngx_escape_uri's
    NGX_ESCAPE_URI (controls, space, non-ASCII and "#%<>?\\^`{|}) when the client's path had a
    %-escape (else as it is), then ?args."""
    cdef int i = 0, q = 0
    cdef bint quoted = False
    cdef unsigned char c
    out = bytearray(upstream_path)
    while q < target_len and target[q] != b'?':
        if target[q] == b'%':
            quoted = True
        q += 1
    for i in range(<int>loc_len, path_len):
        c = <unsigned char>path[i]
        if quoted and (c <= 0x20 or c >= 0x7f or memchr(b'"#%<>?\\^`{|}', c, 12) != NULL):
            out += b"%%%02X" % c
        else:
            out.append(c)
    if target_len - q > 1:
        out += PyBytes_FromStringAndSize(target + q, target_len - q)
    return bytes(out)


cdef bint _needs_normalizing(const char *t, int n) noexcept:
    """A path with a %-escape, a dot segment or an empty one (up to the query)."""
    cdef int i
    for i in range(n):
        if t[i] == b'?':
            return False
        if t[i] == b'%':
            return True
        if t[i] == b'/' and i + 1 < n and (t[i + 1] == b'.' or t[i + 1] == b'/'):
            return True
    return False


cdef int _normalize_path(const char *t, int n, char *out) noexcept:
    """The path of an origin-form target as nginx matches it: %XX decoded, slashes merged,
    dot segments removed (RFC 3986 §5.2.4). Returns its length in ``out`` (at least n
    bytes), or -1 for what nginx answers 400: a bad escape, a NUL, '..' above the root."""
    cdef int i = 0, m = 0, r, e, w = 0, hi, lo
    cdef char c
    while i < n and t[i] != b'?':
        c = t[i]
        i += 1
        if c == b'%':
            if i + 1 >= n:
                return -1
            hi = _hexval(t[i])
            lo = _hexval(t[i + 1])
            if hi < 0 or lo < 0 or (hi == 0 and lo == 0):
                return -1
            c = <char>(hi * 16 + lo)
            i += 2
        if c == b'/' and m > 0 and out[m - 1] == b'/':
            continue
        out[m] = c
        m += 1
    if m == 0 or out[0] != b'/':
        return -1
    r = 0
    while r < m:
        e = r + 1
        while e < m and out[e] != b'/':
            e += 1
        if e - r == 2 and out[r + 1] == b'.':
            if e == m:
                out[w] = b'/'
                w += 1
        elif e - r == 3 and out[r + 1] == b'.' and out[r + 2] == b'.':
            if w == 0:
                return -1
            w -= 1
            while w > 0 and out[w] != b'/':
                w -= 1
            if e == m:
                out[w] = b'/'
                w += 1
        else:
            memmove(out + w, out + r, e - r)
            w += e - r
        r = e
    return w
