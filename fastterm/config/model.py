"""The configuration model: frozen msgspec Structs shared by every front-end.

TOML (``toml.py``) and nginx (``nginx.py``) files both decode into ``Config``;
the worker and supervisor only ever see these objects, never raw files.
Defaults are the secure ones from DESIGN.md ("Defaults").
"""

from __future__ import annotations

from typing import Literal

import msgspec

# Mozilla "intermediate" TLS 1.2 cipher list (server side, v5.7).
INTERMEDIATE_CIPHERS = (
    "ECDHE-ECDSA-AES128-GCM-SHA256:ECDHE-RSA-AES128-GCM-SHA256:"
    "ECDHE-ECDSA-AES256-GCM-SHA384:ECDHE-RSA-AES256-GCM-SHA384:"
    "ECDHE-ECDSA-CHACHA20-POLY1305:ECDHE-RSA-CHACHA20-POLY1305:"
    "DHE-RSA-AES128-GCM-SHA256:DHE-RSA-AES256-GCM-SHA384:DHE-RSA-CHACHA20-POLY1305"
)
TLS13_CIPHERSUITES = "TLS_AES_128_GCM_SHA256:TLS_AES_256_GCM_SHA384:TLS_CHACHA20_POLY1305_SHA256"
# OpenSSL 3.0 also offers X448 and P-521 by default; the intermediate profile does not.
INTERMEDIATE_GROUPS = "X25519:P-256:P-384"

Protocol = Literal["TLSv1.2", "TLSv1.3"]


class Struct(msgspec.Struct, forbid_unknown_fields=True, frozen=True, kw_only=True):
    """Base: unknown keys are errors (like ``nginx -t``), objects are immutable.

    msgspec does not inherit ``kw_only``: a subclass that puts a required field after a
    defaulted one (``Route``) must repeat it.
    """


class TLSPolicy(Struct):
    protocols: list[Protocol] = msgspec.field(default_factory=lambda: ["TLSv1.2", "TLSv1.3"])
    ciphers: str = INTERMEDIATE_CIPHERS
    ciphersuites: str = TLS13_CIPHERSUITES
    groups: str = INTERMEDIATE_GROUPS
    prefer_server_ciphers: bool = True
    session_cache: bool = True
    session_timeout: float = 300.0
    session_tickets: bool = True
    alpn: list[str] = msgspec.field(default_factory=lambda: ["h2", "http/1.1"])
    dhparam: str | None = None  # PEM DH parameters file (nginx ssl_dhparam) for the TLS 1.2 DHE
    # suites; None: no DHE suite is negotiated, whatever ``ciphers`` lists (as nginx)
    # OCSP stapling (fastterm/certs/ocsp.py): the master fetches and verifies each certificate's
    # response, the workers staple it for clients that ask (nginx ssl_stapling*)
    stapling: bool = True  # staple where a certificate names a responder (AIA) or has an ocsp_file
    stapling_verify: bool = True  # false: staple responses whoever signed them, with a warning
    stapling_responder: str | None = None  # "http://host[:port]/path": asked instead of the AIA URL
    stapling_timeout: float = 5.0  # seconds a responder has to answer (nginx: resolver_timeout)
    trusted_certificate: str | None = None  # PEM certificates where a leaf's issuer is looked for
    # when its chain lacks it, and that a responder's certificate may chain to
    early_data: bool = False  # TLS 1.3 0-RTT (nginx ssl_early_data): each ClientHello's early data
    # accepted once (a shared replay table), on this node's tickets only; requests in it reach the
    # backend with Early-Data: 1, unsafe methods only after the handshake (RFC 8470). Per listener:
    # the servers sharing an address must agree (as session_cache)
    max_early_data: int = 16384  # bytes of early data a client may send (1 .. 512 KiB)
    early_data_unsafe: Literal["wait", "reject"] = "wait"  # an unsafe method (not GET, HEAD,
    # OPTIONS) in early data: "wait" forwards it once the handshake completes, "reject" answers
    # 425 Too Early at once (RFC 8470 §5.2) and the client sends it again. Per listener
    # Client certificates (nginx ssl_verify_client): "on" answers 400 to a request without a
    # valid one, "optional" to one with an invalid one, "optional_no_ca" takes unknown issuers too.
    # The backend gets X-SSL-Client-Verify (SUCCESS, FAILED:reason, NONE), -S-DN, -I-DN, -Serial
    # and -Fingerprint (nginx's $ssl_client_* formats; the names: Server.client_cert_headers); a
    # client's own X-SSL-Client-* never passes.
    # A route with ``proxy`` sends what its headers say instead (nginx's way: $ssl_client_* there)
    verify_client: Literal["off", "on", "optional", "optional_no_ca"] = "off"
    client_ca: str | None = None  # PEM CAs whose clients are accepted, named in the CertificateRequest
    # (nginx ssl_client_certificate); chains are completed from trusted_certificate as well
    verify_depth: int = 1  # CA certificates a client chain may have above the leaf (nginx ssl_verify_depth)


class Certificate(Struct):
    """One chain + key: ``cert`` may be a combined PEM (HAProxy style) when ``key`` is unset."""

    cert: str
    key: str | None = None
    ocsp_file: str | None = None  # a DER OCSP response stapled instead of fetching one (nginx
    # ssl_stapling_file); unset: CERT.ocsp beside ``cert`` when it exists (HAProxy's convention)


class ProxyHeader(Struct):
    """One request field a route sends its backend (nginx ``proxy_set_header NAME VALUE``)."""

    name: str
    value: str  # literal text and $variables (nginx syntax: $host, ${http_x_id}, ...); "" or a value
    # that comes out empty at request time: the field is not sent


class ProxyRequest(Struct):
    """How a route rewrites the request head for its backend, nginx's way.

    The backend gets the request line in ``http_version``, then ``headers`` in order, then
    the body's Content-Length or Transfer-Encoding (a chunked body is read whole and sent with
    Content-Length, as nginx, when the client_max_body_size that applies to the route, its own,
    else its server's, else limits', bounds it), then the client's fields except those
    named in ``headers`` (set or emptied), Host, Connection, Keep-Alive, TE, Upgrade, Expect
    and names with "_" (unless ``underscores_in_headers``). Nothing else is added or removed:
    no X-Forwarded-* unless ``headers`` say so (nginx passes the client's own untouched).
    ``keepalive``: the backend connection goes back to its pool after the response (nginx:
    ``proxy_http_version 1.1``, ``Connection ""`` and ``keepalive N`` in the upstream); else it
    is closed. The nginx front-end writes the whole list, nginx's implicit ``Host $proxy_host``
    and ``Connection close`` included.
    """

    http_version: Literal["1.0", "1.1"] = "1.0"
    headers: list[ProxyHeader] = msgspec.field(name="header", default_factory=list)
    keepalive: bool = False
    real_ip_from: list[str] = msgspec.field(default_factory=list)  # nginx set_real_ip_from: from these
    # peers, $remote_addr is the address real_ip_header carries (X-Forwarded-For: its last one)
    real_ip_header: str = "X-Real-IP"
    hide_headers: list[str] = msgspec.field(default_factory=list)  # backend response fields not passed
    # to the client (nginx proxy_hide_header; the nginx front-end adds nginx's X-Pad and X-Accel-*)
    next_upstream: list[str] = msgspec.field(default_factory=lambda: ["error", "timeout"])  # nginx
    # proxy_next_upstream: when a request goes on to the upstream's next server: "error" (a failed
    # connect, a reset before the response head), "timeout" (connect or read, before the head),
    # "http_500" ... "http_429" (that response is dropped), "non_idempotent" (POST, PATCH, LOCK too,
    # when bodiless); a request sent to a server is replayed only when it has no body; []: never
    next_upstream_tries: int = 0  # servers tried at most per request; 0: each of the upstream's once
    next_upstream_timeout: float = 0.0  # seconds since the first try past which none starts; 0: none


class AddHeader(Struct):
    """One response field a server block or route adds (nginx ``add_header NAME VALUE [always]``):
    after the backend's own fields (one of the same name is kept: both go), and on fastterm's own
    answers."""

    name: str
    value: str  # literal text and $variables, as ProxyHeader's; a value that comes out empty: not sent
    always: bool = False  # on every status; else only on 200, 201, 204, 206, 301, 302, 303, 304, 307, 308


class Answer(Struct):
    """A response fastterm makes itself instead of proxying (nginx ``return``)."""

    status: int
    location: str | None = None  # 301, 302, 303, 307, 308: the target ($variables; "/..." made absolute
    # with https://$host and the listen port unless 443, as nginx's header filter does)
    text: str | None = None      # other statuses: the text/plain body ($variables); None: the status page
    # (444: the connection is closed, nothing sent)
    add_headers: list[AddHeader] | None = msgspec.field(name="add_header", default=None)  # an error_page
    # answer's own (nginx: the named location's); None: the server block's


class ErrorPage(Struct):
    """nginx ``error_page CODE... [=[RESPONSE]] URL|@named``: an answer of one of ``codes`` (fastterm's
    own, and a backend's where the route has ``intercept_errors``) becomes a redirect to ``redirect``
    (status 302 unless ``status``) or ``answer`` (with ``status`` in place of its own when set)."""

    codes: list[int]
    status: int | None = None
    redirect: str | None = None   # an absolute URL (http:// or https://)
    answer: Answer | None = None


class Route(Struct, kw_only=True):
    path: str = "/"
    upstream: str = ""   # "" only with ``answer``
    answer: Answer | None = msgspec.field(name="return", default=None)  # answered, not proxied (nginx return)
    add_headers: list[AddHeader] | None = msgspec.field(name="add_header", default=None)  # None: the server's
    error_pages: list[ErrorPage] | None = msgspec.field(name="error_page", default=None)  # None: the server's
    intercept_errors: bool = False  # a backend status error_pages name is answered by them (nginx
    # proxy_intercept_errors on)
    exact: bool = False  # the path matches only itself (query aside), before any prefix (nginx location =)
    proxy: ProxyRequest | None = None  # None: fastterm's own forwarding (DESIGN.md, "Forwarded headers")
    slash_redirect: bool = False  # a path ending in "/": a request for it without that "/" (which no
    # route names) is answered 301 to https://$host[:port]PATH[?args] (nginx's location /dir/ + proxy_pass)
    redirect_from: str = ""  # a backend's Location that starts with this gets redirect_to in its place
    redirect_to: str = "/"   # (nginx proxy_redirect); one that then starts with "/" is made absolute
    # on the client's side: https://$host[:port] (the listen port unless 443). "": passed unchanged
    regex: Literal["", "~", "~*"] = ""  # "~": ``path`` is a regular expression (Python re on bytes,
    # unanchored) searched in the normalised path; "~*" the same, ASCII case-insensitive. Regex
    # routes are tried in order after the longest prefix, the first match wins (nginx location ~)
    no_regex: bool = False  # this prefix, when it is the longest match, wins over every regex route
    # (nginx location ^~)
    upstream_path: str | None = None  # the backend's target: this in place of the matched ``path``,
    # then the rest of the normalised path (re-escaped when the client's had %-escapes) and the
    # query (nginx proxy_pass http://up/URI); None: the client's target as it came
    client_max_body_size: int | None = None  # a larger body is answered 413 before the backend hears
    # of it; 0: no limit; None: the server's, else limits.client_max_body_size (nginx's inheritance)
    connect_timeout: float | None = None  # seconds a backend connect may take here (nginx
    # proxy_connect_timeout of the location); None: the upstream's
    read_timeout: float | None = None  # between two reads of the response, 504 before its head (nginx
    # proxy_read_timeout); None: the upstream's
    send_timeout: float | None = None  # a backend that takes nothing of the request body for this long:
    # 504 (nginx proxy_send_timeout); None: the upstream's


class UpstreamTLS(Struct):
    """TLS from fastterm to an upstream's servers (re-encryption; HAProxy ``server ... ssl``,
    nginx ``proxy_pass https://`` + ``proxy_ssl_*``)."""

    verify: Literal["required", "none"] = "required"  # HAProxy verify; "none": nothing checked
    ca_file: str | None = None  # trusted CAs (PEM); None: the system trust store
    verify_depth: int | None = None  # chain length limit (nginx proxy_ssl_verify_depth); None: OpenSSL's
    server_name: str | None = None  # checked against the certificate, and the SNI; None: each server's host
    sni: bool = True  # send server_name as SNI (nginx proxy_ssl_server_name)
    cert: str | None = None  # client certificate (mTLS), a combined PEM when ``key`` is unset
    key: str | None = None
    protocols: list[Protocol] = msgspec.field(default_factory=lambda: ["TLSv1.2", "TLSv1.3"])
    ciphers: str | None = None  # TLS 1.2 cipher list; None: OpenSSL's default
    session_reuse: bool = True  # resume each server's last session on a new connection


class HealthCheck(Struct):
    """Active health checks of an upstream's servers, run by the master (fastterm/health.py;
    HAProxy ``server ... check inter 2s rise 2 fall 3``). Every server starts up; ``fall``
    failed checks in a row mark it down (no worker sends it requests; every server down: 503 at
    once), ``rise`` good ones bring it back, its passive-ejection state cleared."""

    kind: Literal["tcp", "http"] = "tcp"  # tcp: the connect (and TLS handshake, for TLS upstreams)
    # succeeds; http: a GET of ``path`` answers a status in ``expect``
    path: str = "/"  # http: the request target
    expect: str = "200-399"  # http: statuses that pass: "200", "200-399", "200-299,301,302"
    host: str | None = None  # http: the Host header; None: the server's host
    interval: float = 2.0  # seconds between checks of one server (HAProxy inter)
    timeout: float = 1.0  # a check not done in this long (connect, handshake, answer) failed
    rise: int = 2  # good checks in a row that bring a down server up
    fall: int = 3  # failed checks in a row that take an up server down


class Upstream(Struct):
    name: str
    servers: list[str]  # "host:port" or "https://host:port", then nginx-style parameters:
    # "weight=N", "backup", "max_fails=N", "fail_timeout=SECONDS", and HAProxy's "check" (when any
    # server says it, only those are actively checked: ``check``'s values, else HAProxy's defaults)
    # with its own "inter=SECONDS", "rise=N", "fall=N"
    tls: UpstreamTLS | None = None  # set (or https:// servers): TLS to every server
    balance: Literal["round_robin", "least_conn"] = "round_robin"  # smooth weighted round robin (nginx)
    keepalive: int = 32  # idle backend connections always kept per server (and worker)
    keepalive_max: int = 1024  # ... at most, when recent load needed that many at once
    max_conns: int = 1024  # connections per server (and worker); past them requests wait (503 after
    # backend_connect_timeout); 0: no cap
    keepalive_timeout: float = 60.0  # an idle backend connection unused this long is closed (nginx)
    fail_timeout: float = 10.0  # a server that failed max_fails times is skipped this long (nginx)
    tries: int = 3  # attempts per request on connect failure/reset (nginx proxy_next_upstream_tries)
    connect_timeout: float | None = None  # for the routes to it that set none; None:
    read_timeout: float | None = None     # limits.backend_connect_timeout, backend_read_timeout,
    send_timeout: float | None = None     # backend_send_timeout (else the read timeout that applies)
    check: HealthCheck | None = None  # active health checks ([upstream.check]); None: passive only
    # Each backend connection starts with a PROXY header naming the client (HAProxy send-proxy,
    # send-proxy-v2; v2 with ALPN, SNI and SSL TLVs), before the TLS ClientHello when tls is set.
    # Such a connection describes one client: it serves one request and closes (never pooled).
    send_proxy: Literal["v1", "v2"] | None = None


class ClientCertHeaders(Struct):
    """The request fields that carry a client certificate to the backend (fastterm's own forwarding,
    on a block with ``tls.verify_client``; nginx's $ssl_client_* formats); "": not sent. A client's
    own field of one of these names, or any X-SSL-Client-*, never passes."""

    verify: str = "X-SSL-Client-Verify"            # SUCCESS, FAILED:reason, NONE
    subject: str = "X-SSL-Client-S-DN"             # RFC 2253
    issuer: str = "X-SSL-Client-I-DN"
    serial: str = "X-SSL-Client-Serial"            # hex
    fingerprint: str = "X-SSL-Client-Fingerprint"  # SHA-1, lowercase hex


class Acme(Struct):
    """Certificates obtained and renewed over ACME (RFC 8555) for a server's names
    (``fastterm/certs/acme.py``); nginx's ``acme_issuer`` block maps to one."""

    directory: str = "https://acme-v02.api.letsencrypt.org/directory"  # nginx acme_issuer uri
    email: str | None = None       # the account's contact (nginx contact, without mailto:)
    accept_terms: bool = True      # agree to the CA's terms of service (nginx accept_terms_of_service)
    ca_file: str | None = None     # PEM roots that verify the directory's HTTPS; None: the system
    # store (nginx acme_issuer ssl_trusted_certificate)
    state_dir: str = "/var/lib/fastterm/acme"  # account key, keys, chains (0600/0700, atomic writes)
    challenge: Literal["http-01", "tls-alpn-01"] = "http-01"
    key_type: Literal["ecdsa", "rsa"] = "ecdsa"   # P-256 or RSA-2048 certificate keys
    names: list[str] = msgspec.field(default_factory=list)  # the names on the certificate; empty:
    # the server's exact server_names


class Server(Struct):
    """One TLS virtual server (an nginx ``server { listen 443 ssl; }`` block)."""

    listen: list[str]
    certificates: list[Certificate] = msgspec.field(name="certificate", default_factory=list)
    server_names: list[str] = msgspec.field(default_factory=list)  # exact, "*.example.com", "www.example.*"
    # or "~REGEX"; a Host and an SNI name choose in nginx's order: exact, the longest *.suffix, the
    # longest prefix.*, the regexes in order (caseless when it has an upper-case letter)
    default_server: bool = False
    tls: TLSPolicy = msgspec.field(default_factory=TLSPolicy)
    hsts: str | None = None  # value of Strict-Transport-Security, added to every response (a backend's replaced)
    add_headers: list[AddHeader] = msgspec.field(name="add_header", default_factory=list)  # routes without
    # their own, and answers no route gives (nginx add_header on the server level)
    error_pages: list[ErrorPage] = msgspec.field(name="error_page", default_factory=list)
    answer: Answer | None = msgspec.field(name="return", default=None)  # every request answered so,
    # before any route (nginx's return on the server level)
    routes: list[Route] = msgspec.field(name="route", default_factory=list)
    trusted_proxies: list[str] = msgspec.field(default_factory=list)
    # Which block answers a request that names no host (HTTP/1.0 without Host): "sni", the one
    # the handshake's SNI chose (fastterm); "default", the listener's default server (nginx).
    # Read from the listener's default server.
    no_host: Literal["sni", "default"] = "sni"
    reject_handshake: bool = False  # handshakes this block would serve fail with unrecognized_name
    # (nginx ssl_reject_handshake on): a default server with it refuses names no block has, and
    # clients that send none; it needs no certificate
    # A request whose Host names this block on a connection negotiated under another block's
    # TLS policy is answered 421 (RFC 9110 §15.5.20); off: served by this block (nginx).
    misdirected_request: bool = True
    client_max_body_size: int | None = None  # for its routes that set none, and requests no route
    # matches; None: limits.client_max_body_size
    client_cert_headers: ClientCertHeaders = msgspec.field(default_factory=ClientCertHeaders)
    # The PROXY protocol on its listen addresses (haproxy accept-proxy; read from the listener's
    # default server): each connection starts with a v1 or v2 header, read before the handshake
    # within limits.client_header_timeout; its source address is then the client's (forwarded
    # headers, logs). Only peers in proxy_trusted (networks, required) may connect there; others
    # are closed unheard, as are malformed headers (counted: proxy_headers_rejected_*).
    accept_proxy: bool = False
    proxy_trusted: list[str] = msgspec.field(default_factory=list)
    acme: Acme | None = None  # certificates for server_names over ACME instead of certificate files
    # (a temporary self-signed one serves before the first issuance); None: the top-level [acme]
    # when set and the block has no certificate


class Redirect(Struct):
    """A plain-HTTP server block. With only ``listen`` and ``https_port``: fastterm's own
    ``301 https://$host[:https_port]$request_uri`` and ``Connection: close``. With ``location``
    or ``text`` (nginx's ``return``; what the nginx front-end maps): nginx's semantics, the
    block chosen by host among those on its address (``fastterm/redirect.py``)."""

    listen: list[str]
    https_port: int = 443
    server_names: list[str] = msgspec.field(default_factory=list)   # exact or "*.example.com"
    default_server: bool = False     # the address's block for other hosts (else the first)
    status: int = 301
    location: str | None = None      # redirect target with nginx variables ($host, $request_uri, ...)
    text: str | None = None          # the text/plain body of a status that is not a redirect
    keepalive_requests: int = 0      # answers per connection; 0: close after each (fastterm's own)
    keepalive_timeout: float | None = None   # idle between requests; None: limits.keepalive_timeout
    keepalive_header: int = 0        # "Keep-Alive: timeout=N" on answers that keep the connection (nginx)


class Limits(Struct):
    header_buffer_size: int = 16384  # a request head past it: 431 (400 with header_line_size)
    header_line_size: int = 0  # nginx large_client_header_buffers SIZE, and nginx's statuses (HTTP/1.1): a
    # request line longer than it (CRLF counted) 414, a field line longer 400, a head past
    # header_buffer_size 400; 0: no line limit, 431 for a head past header_buffer_size
    max_header_fields: int = 100
    client_max_body_size: int = 0  # 0: unlimited (streamed)
    client_header_timeout: float = 10.0
    keepalive_timeout: float = 75.0
    keepalive_header: int = 0  # HTTP/1.1 responses carry "Keep-Alive: timeout=N" (nginx keepalive_timeout's
    # second value); 0: not sent
    backend_connect_timeout: float = 5.0
    backend_read_timeout: float = 60.0
    drain_timeout: float = 30.0
    send_timeout: float = 60.0  # nginx send_timeout: a client that takes no output for this long is closed
    worker_connections: int = 0  # client connections per worker; 0: 7/8 of RLIMIT_NOFILE
    http2_max_concurrent_streams: int = 128  # nginx's default
    http2_max_requests: int = 10000  # streams per HTTP/2 connection, then GOAWAY (a new connection)
    keepalive_requests: int = 0  # HTTP/1.1 requests per client connection, the last one answered with
    # Connection: close (nginx keepalive_requests; its default 1000 comes with --nginx); 0: no cap
    underscores_in_headers: bool = False  # nginx's default: request fields with "_" in the name are dropped
    client_body_timeout: float | None = None  # a request body the client sends nothing of for this
    # long ends unanswered, as nginx client_body_timeout (HTTP/1.1 closes, HTTP/2 resets the stream);
    # None: backend_read_timeout
    backend_send_timeout: float | None = None  # a backend that takes nothing of the request body for
    # this long: 504 (nginx proxy_send_timeout); None: backend_read_timeout
    keepalive_time: float = 0.0  # HTTP/1.1: a request begun on a connection older than this is its last,
    # answered with Connection: close (nginx keepalive_time; its default 1h comes with --nginx); 0: none


class Sessions(Struct):
    """Resumption shared by all workers (nginx ``ssl_session_cache shared:SSL:10m``,
    ``ssl_session_ticket_key``)."""

    cache_size: int = 10 * 1024 * 1024   # bytes of shared memory for the session cache
    ticket_key_rotation: float = 3600.0  # seconds between new ticket-encryption keys
    ticket_key_file: list[str] = msgspec.field(default_factory=list)  # fleet keys: 80 bytes each,
    # the first encrypts; re-read when it changes; no automatic rotation then


class Config(Struct):
    servers: list[Server] = msgspec.field(name="server")
    upstreams: list[Upstream] = msgspec.field(name="upstream", default_factory=list)
    redirects: list[Redirect] = msgspec.field(name="redirect", default_factory=list)
    limits: Limits = msgspec.field(default_factory=Limits)
    acme: Acme | None = None  # the default for every server with neither certificates nor its own acme
    acme_challenge_dir: str | None = None  # files served at /.well-known/acme-challenge/ on the
    # port-80 listeners (certbot --webroot -w DIR keeps working beside fastterm)
    sessions: Sessions = msgspec.field(default_factory=Sessions)
    workers: int | Literal["auto"] = "auto"
    admin: str | None = None  # "127.0.0.1:9901" or "unix:/run/fastterm.sock": /status, /metrics
    pid_file: str | None = None
    user: str | None = None   # started as root: workers run as this user (nginx ``user``; fastterm/privileges.py)
    group: str | None = None  # and group (None: the user's primary group)
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    error_log: str | None = None
    access_log: str | None = None  # a file, one line per request (fastterm/accesslog.py); "off" or unset: none
    access_log_format: str = "json"  # "json" (msgspec JSON lines), "combined" (nginx's), or an nginx
    # log_format template of the variables fastterm logs (accesslog.VARIABLES)
    handshake_log_rate: int = 10  # failed-handshake lines a second per worker; the rest are counted in one
    # summary line a second (a scan cannot fill the disk; the /metrics counters count them all)
    certificate_check_interval: float = 1.0  # seconds between looks at the certificate files (0: never);
    # a changed certificate serves new handshakes without a reload (fastterm/certs/watch.py)
    admin_allow_remote: bool = False  # admin on a non-loopback TCP address (plain HTTP; GETs need no token)
