"""nginx.conf -> ``Config``: the nginx front-end (``fastterm run|check|convert --nginx FILE``).

The text is read by crossplane (nginxinc's parser: nginx's lexing, includes, file:line),
then every directive is sorted into one of three kinds, and never silently dropped:

(a) mapped with nginx's meaning onto the model (the same ``Config`` fastterm.toml gives;
    nothing behind the model knows which front-end made it);
(b) accepted with one warning, because it has no effect on a terminator that serves no
    files or because fastterm does the job its own way (``IGNORED`` below says why for each);
(c) refused: ``FILE:LINE: "directive" is not supported yet`` and exit 1, like an error of
    ``nginx -t``. A mapped directive whose value fastterm cannot reproduce is refused the
    same way (``proxy_set_header X-Foo $uri``, ``error_page 502 /50x.html``).

What maps (nginx -> model):

- ``user NAME [GROUP]`` -> ``user``, ``group`` (no GROUP: the group named as the user, nginx's
  rule); started as root, the workers run as them (``fastterm/privileges.py``).
- ``worker_processes`` -> ``workers`` (absent: 1, nginx's default); ``worker_shutdown_timeout``
  -> ``limits.drain_timeout``; ``events { worker_connections }`` -> ``limits.worker_connections``
  (nginx counts backend connections in it too; fastterm counts clients; absent: fastterm's own
  figure from RLIMIT_NOFILE rather than nginx's 512).
- ``server`` with ``listen ... ssl`` -> ``[[server]]``: ``listen`` (``443 ssl``, ``[::]:443 ssl``,
  ``default_server``, ``http2``, ``reuseport``, ``bind``, ``ipv6only=on``: fastterm always binds
  each address with SO_REUSEPORT and IPv6-only sockets), ``http2 on|off``, ``server_name`` (exact,
  ``*.example.com``, ``.example.com`` = both, ``www.example.*``, ``~regex``, ``_``; nginx's order for
  the Host's block and the SNI certificate alike: exact, the longest ``*.suffix``, the longest
  ``prefix.*``, the regexes in config order, caseless when the pattern has an upper-case letter;
  their captures as variables are refused), ``ssl_certificate``/``ssl_certificate_key``
  (several; relative paths against the main file's directory, as nginx's conf prefix),
  ``ssl_protocols`` (TLSv1/TLSv1.1/SSLv3 dropped with a warning: fastterm refuses them),
  ``ssl_ciphers``, ``ssl_prefer_server_ciphers`` (default off, as nginx), ``ssl_conf_command
  Ciphersuites``, ``ssl_ecdh_curve``, ``ssl_dhparam FILE`` (-> ``tls.dhparam``: the TLS 1.2 DHE
  suites; without it none is negotiated whatever ``ssl_ciphers`` lists, as nginx; a missing or
  bad file is an error at its line), ``ssl_session_cache shared:NAME:SIZE|off|none`` (default
  none: no session cache, as nginx), ``ssl_session_timeout``, ``ssl_session_tickets``,
  ``ssl_session_ticket_key`` (-> ``sessions.ticket_key_file``), ``ssl_early_data`` (-> ``tls.early_data``,
  16 KiB as nginx; the address's default server's applies, as in nginx; fastterm adds replay
  protection nginx lacks and holds unsafe methods until the handshake completes), ``set_real_ip_from`` +
  ``real_ip_header`` -> each route's ``proxy.real_ip_from``/``real_ip_header`` (nginx's
  $remote_addr from those peers).
- ``add_header NAME VALUE [always]`` (http, server, location) -> ``add_headers`` of the server
  and of each location that has its own (nginx's rule: a level with any ``add_header`` inherits
  none of its parent's): after the backend's fields (one of the same name is kept, both go),
  on fastterm's own answers too, without ``always`` only on 200, 201, 204, 206, 301, 302, 303,
  304, 307, 308; values with the variables of ``proxy_set_header`` below; an empty value adds
  nothing. ``Strict-Transport-Security`` is one of them (not ``hsts``, which replaces a
  backend's). ``ETag``/``Last-Modified`` (nginx replaces those) are refused.
- ``return`` in a TLS server (-> ``answer``: every request, before any location) or location
  (-> a route with ``answer``): ``CODE URL`` (301, 302, 303, 307, 308; a target starting with
  ``/`` made absolute as ``https://$host[:listen port unless 443]``), ``URL`` (302), ``CODE
  "text"`` (text/plain) and ``CODE`` (nginx's page, or an empty body where nginx has none;
  444 closes), values with the variables of ``proxy_set_header``; the connection goes on.
- ``error_page CODE... [=[RESPONSE]] URL|@name`` (http, server, location; a level with any
  replaces its parent's) -> ``error_pages``: fastterm's own answers (502/503/504 of a failing
  backend, 4xx of validation, a return) with one of the codes become a redirect to the
  absolute URL (302, or ``=301``/``=303``/``=307``/``=308``), or the ``return`` of the named
  location ``location @name { return ...; add_header ...; }`` (its add_header, else the
  server's), with the error's status, ``=CODE``'s, or (``=``) the named return's own; no
  variables in them. ``proxy_intercept_errors on`` -> the route's ``intercept_errors``: a
  backend status with an error_page is answered by it. A local URI (``error_page 502
  /50x.html``) would serve a file: refused.
- ``location = /path`` -> an exact route (it wins over every prefix, on the normalised path).
- ``location /prefix`` and ``location ^~ /prefix`` -> routes (longest prefix wins, on the
  normalised path, as nginx; ``^~`` -> ``no_regex``: as the longest prefix it is not overridden
  by a regex) with ``proxy_pass http://UPSTREAM`` or ``http://host:port`` (an implicit upstream
  named ``host:port``, nginx's ``$proxy_host``), with or without a URI part (``proxy_pass
  http://up/api/`` -> ``upstream_path``: the matched prefix replaced, the rest of the decoded,
  normalised path re-escaped when the client's had %-escapes, nginx's ngx_escape_uri; proxy_redirect
  default then maps the URL back to the location's name).
- ``location ~ RE`` / ``location ~* RE`` -> regex routes (``regex``), tried in config order
  after the longest prefix, first match wins, on the decoded, normalised path, as nginx: Python
  ``re`` on bytes (PCRE without UTF; ``(?<name>`` read as ``(?P<name>``); PCRE constructs that
  Python reads otherwise or not at all are refused by name (``\\Z``, ``\\h``, ``\\v``, ``\\R``,
  ``\\K``, ``\\Q``, ``\\p``, ``\\x{}``, POSIX classes, ``(?|``, recursion, verbs, ``{,n}``); a
  URI part in their ``proxy_pass`` is nginx's error ("cannot have URI part").
- ``client_max_body_size`` -> per route and per server (nginx's inheritance: a location's own,
  else its server's, else http's, else 1m; 0: no limit): a larger Content-Length, or a chunked or
  HTTP/2 body growing past it, is answered 413 before the backend hears of it.
- ``upstream NAME { [least_conn;] server host:port [weight=N] [max_fails=N] [fail_timeout=T]
  [backup]; keepalive N; keepalive_timeout T; }`` -> ``[[upstream]]`` (``tries``: one per
  server, as nginx's ``proxy_next_upstream_tries 0``; ``max_conns`` 0: nginx queues nothing and
  caps nothing; nginx's smooth weighted round robin, least_conn, backup servers only while
  every other one is out, max_fails failures within fail_timeout take a server out).
- ``proxy_pass https://UPSTREAM`` or ``https://host[:port]`` (TLS to the backend) with
  ``proxy_ssl_verify`` (default off, as nginx; ``check`` names the safer setting),
  ``proxy_ssl_trusted_certificate`` (required by verify on), ``proxy_ssl_verify_depth`` (1),
  ``proxy_ssl_server_name`` (off: no SNI), ``proxy_ssl_name`` (``$proxy_host`` without its
  port), ``proxy_ssl_certificate`` + ``proxy_ssl_certificate_key`` (mTLS),
  ``proxy_ssl_session_reuse`` (on), ``proxy_ssl_protocols`` (TLSv1/TLSv1.1 dropped with a
  warning; absent: TLSv1.2 TLSv1.3), ``proxy_ssl_ciphers`` -> the upstream's ``tls`` table. The
  settings belong to the upstream in fastterm: two locations that reach one upstream with
  different ones are refused.
- ``server`` without ``ssl`` whose ``return`` (on the server or in its one ``location /``) is
  ``CODE URL`` (301, 302, 303, 307, 308), ``URL`` (302), ``CODE "text"`` or ``CODE`` (2xx, 4xx,
  5xx; 444 closes) -> a ``[[redirect]]`` each, with its ``server_name``s, ``default_server``,
  ``keepalive_requests`` (1000) and ``keepalive_timeout`` (75s; 0: close; a second value: the
  ``Keep-Alive: timeout=N`` header): nginx's semantics
  (``fastterm/redirect.py``; variables ``$scheme``, ``$host``, ``$http_host``, ``$server_name``,
  ``$server_port``, ``$request_uri``, ``$uri``, ``$args``, ``$query_string``, ``$is_args``).
- ``proxy_connect_timeout``, ``proxy_read_timeout`` (504 before the response head),
  ``proxy_send_timeout`` (60s each: a backend that takes nothing of the request body for so long,
  504) -> per route (nginx's inheritance: the location's, else the server's, else http's).
- Limits are global in fastterm, so each must have one value over every server and location
  (else "not supported yet"): ``client_header_timeout`` (60s), ``keepalive_timeout TIMEOUT
  [HEADER_TIMEOUT]`` (75s; the second -> ``keepalive_header``: ``Keep-Alive: timeout=N`` on
  HTTP/1.1 responses that keep the connection), ``send_timeout`` (60s), ``client_body_timeout`` (60s: a
  request body the client sends nothing of for so long, streamed or read whole before it is sent:
  the connection is closed unanswered, as nginx; HTTP/2: the stream is reset), ``underscores_in_headers``,
  ``large_client_header_buffers N SIZE`` -> ``header_buffer_size`` = N x SIZE and
  ``header_line_size`` = SIZE (4 8k; nginx's statuses: a request line longer than SIZE 414, a
  field line longer than SIZE or a head past N x SIZE 400; nginx packs whole lines into its
  buffers after the first client_header_buffer_size, so its head limit is within a line of N x SIZE),
  ``http2_max_concurrent_streams`` (128), ``keepalive_requests`` (1000) -> requests per
  HTTP/1.1 connection and streams per HTTP/2 connection, ``keepalive_time`` (1h) -> the age of an
  HTTP/1.1 connection past which a new request is its last (Connection: close).
- ``proxy_redirect default`` (also nginx's default) and ``off`` -> each route's ``redirect_from``
  (``http://UPSTREAM/`` as proxy_pass writes it, or "") and ``redirect_to`` ``/``: a backend's
  Location under proxy_pass's URL comes back on the client's https://$host[:port].
- ``proxy_set_header`` and ``proxy_http_version`` -> each route's ``proxy`` (model.ProxyRequest),
  nginx's upstream request exactly: HTTP/1.0 unless ``proxy_http_version 1.1``; the level's
  ``proxy_set_header`` lines in order (a level with any does not inherit its parent's), then
  nginx's implicit ``Host $proxy_host`` and ``Connection close`` unless set; the client's fields
  pass as nginx passes them (no X-Forwarded-* added, the client's own kept); a value that comes
  out empty is not sent; the backend connection is reused only with ``proxy_http_version 1.1``,
  ``Connection ""`` and ``keepalive N`` in the upstream. Values: literals and ``$scheme``,
  ``$host``, ``$http_NAME``, ``$remote_addr``, ``$remote_port``, ``$proxy_add_x_forwarded_for``,
  ``$request_uri``, ``$request_method``, ``$server_addr``, ``$server_port``, ``$server_name``,
  ``$ssl_protocol``, ``$ssl_cipher``, ``$ssl_server_name``, ``$ssl_early_data`` ("1" while the
  handshake is not complete, i.e. for a request that came in 0-RTT data, else ""), ``$proxy_host``.
- ``proxy_next_upstream`` (default ``error timeout``), ``proxy_next_upstream_tries`` (0: each
  server once) and ``proxy_next_upstream_timeout`` (0: none) -> each route's ``proxy.next_upstream``,
  ``next_upstream_tries``, ``next_upstream_timeout``: ``error`` (a refused or failed connect, a reset
  before the response head), ``timeout`` (connect or proxy_read_timeout before the head), ``http_500``,
  ``http_502``, ``http_503``, ``http_504``, ``http_403``, ``http_404``, ``http_429`` (that response is
  dropped and the next server asked; the last one's is passed; 403/404 do not count as failures for
  max_fails), ``non_idempotent``, ``off``. A request that reached a server goes on only when it is
  bodiless and idempotent, or ``non_idempotent`` is set; a stale keep-alive connection is a free
  try, as nginx's. ``invalid_header`` and ``updating`` are refused.
- ``proxy_hide_header NAME`` and ``proxy_pass_header NAME`` -> each route's ``proxy.hide_headers``:
  the backend response fields nginx keeps from the client (``Server``, ``X-Pad``, ``X-Accel-*``
  by default), plus the level's ``proxy_hide_header`` names, less its ``proxy_pass_header`` ones
  (each list from the nearest level that has any, as nginx). ``Date`` is always passed: nginx
  writes its own in place of the backend's, fastterm has none of its own and passes the
  backend's; fastterm adds no ``Server`` of its own to a proxied response.
- OCSP stapling (fastterm/certs/ocsp.py): ``ssl_stapling on|off`` -> ``tls.stapling`` (default
  off, as nginx), ``ssl_stapling_verify`` -> ``tls.stapling_verify`` (default off, as nginx: a
  warning says responses are stapled unchecked), ``ssl_stapling_responder http://...`` ->
  ``tls.stapling_responder`` (instead of the certificate's AIA URL), ``ssl_stapling_file`` -> each
  certificate's ``ocsp_file`` (read only with ``ssl_stapling on``, as nginx; a missing file is an
  error at its line), ``ssl_trusted_certificate`` -> ``tls.trusted_certificate`` (where a leaf's
  issuer and a responder's chain are looked for; always read, a missing file is an error);
  responders get nginx's 60 s. Differences: fastterm fetches at start-up rather than on the first
  handshake, staples a "revoked" response (nginx staples only "good" ones), and checks an
  ``ssl_stapling_file`` response's certificate ID and nextUpdate (nginx staples it as is).
- Client certificates: ``ssl_verify_client on|off|optional|optional_no_ca`` -> ``tls.verify_client``
  (the handshake completes, a request without the certificate it wants is answered 400 with
  nginx's text), ``ssl_client_certificate`` -> ``tls.client_ca``, ``ssl_verify_depth`` (1) ->
  ``tls.verify_depth``, ``ssl_trusted_certificate`` completes client chains too; the variables
  ``$ssl_client_verify``, ``$ssl_client_s_dn``, ``$ssl_client_i_dn``, ``$ssl_client_serial``,
  ``$ssl_client_fingerprint``, ``$ssl_client_escaped_cert`` and ``$ssl_client_cert`` in
  ``proxy_set_header``, in nginx's formats. No X-SSL-Client-* field is added (nginx adds none).
- ``access_log PATH [FORMAT] [buffer=SIZE] [flush=TIME]`` and ``access_log off`` -> ``access_log``
  (one file: the same value for every TLS server and location, else refused; buffer/flush warn,
  fastterm buffers 64k and flushes each second; no access_log line: no log, where nginx would
  write its compiled-in logs/access.log; syslog:, variables in the path, gzip and if= are refused);
  FORMAT ``combined`` (the default, nginx's) or a ``log_format NAME [escape=default] STRING...``
  whose variables fastterm logs (``fastterm/accesslog.py`` VARIABLES: $remote_addr, $time_local,
  $request, $status, $body_bytes_sent, $http_referer, $http_user_agent, $request_time,
  $upstream_addr, $upstream_response_time, $ssl_protocol, $ssl_cipher, $ssl_server_name, ...) ->
  ``access_log_format`` (the template, nginx's escaping); another variable or escape=json|none is
  refused at the log_format line. Port-80 servers log with the same format (no TLS facts).
- ``ssl_reject_handshake on|off`` -> ``reject_handshake``: a handshake this server would take
  fails with unrecognized_name (a default server with it refuses unknown names and clients
  that send none); such a server needs no ``ssl_certificate`` nor locations.
- nginx's ACME module (ngx_http_acme_module, nginx 1.29+): ``acme_issuer NAME { }`` -> an ``Acme``:
  ``uri`` (mandatory, https) -> ``directory``, ``contact`` (one; ``mailto:`` stripped) -> ``email``,
  ``accept_terms_of_service`` -> ``accept_terms`` (absent: false, as nginx), ``state_path`` (relative
  to the main file's directory; absent: ``NAME`` under fastterm's state directory rather than
  nginx's ``acme_NAME``; nginx's files there are not read) -> ``state_dir``,
  ``ssl_trusted_certificate`` -> ``ca_file``, ``challenge http-01|tls-alpn-01`` (``http``,
  ``tls-alpn``) -> ``challenge``. ``acme_certificate NAME [IDENTIFIER...] [key=ecdsa:256|rsa:2048]``
  in a server whose ``ssl_certificate``/``ssl_certificate_key`` are ``$acme_certificate``/
  ``$acme_certificate_key`` -> its ``acme`` with ``names`` (the identifiers, else its
  ``server_name``s read as the module reads them: ``.example.com`` is www.example.com and
  example.com, IP addresses in canonical form, regexes skipped with a warning) and ``key_type``;
  the server's other ``ssl_certificate`` files are kept beside it. http-01 needs a server without
  ``ssl``: its ``[[redirect]]`` is where the CA's request is answered (a warning when none
  listens on port 80). The module's rule that http {} has a ``resolver`` is kept.
- certbot's webroot on a plain server, ``location [^~] /.well-known/acme-challenge/ { root DIR; }``
  beside the ``location /`` that returns -> ``acme_challenge_dir`` (one DIR for all port-80
  servers; a server-level ``return``, which nginx answers first, is refused with it).
- Values equal to fastterm's behaviour are accepted for: ``merge_slashes on``, ``port_in_redirect on``,
  ``server_name_in_redirect off``, ``absolute_redirect on``, ``ignore_invalid_headers on``,
  ``tcp_nodelay on``, ``real_ip_recursive off``, ``gzip off``,
  ``keepalive_disable none``, ``chunked_transfer_encoding on``.

What warns, (b) in full in ``IGNORED``: nginx's own process and log settings (``pid``,
``daemon``, ``master_process``, ``error_log``, ``worker_rlimit_nofile``, ``worker_cpu_affinity``,
``load_module``, events' ``use``/``multi_accept``/``accept_mutex``), file serving (``root``,
``index``, ``alias``, ``sendfile``, ``tcp_nopush``, ``aio``, ``open_file_cache*``, ``types``,
``default_type``, ``etag``), buffers and temp files fastterm does not have because it streams
(``proxy_buffering``, ``proxy_buffer_size``, ``proxy_buffers``, ``proxy_request_buffering``,
``client_body_buffer_size``, ``client_header_buffer_size``, ``*_temp_path``), nginx's hash
table sizes, what nginx itself calls obsolete (``http2_max_requests``, ``http2_max_field_size``,
``http2_idle_timeout``, ...), ``open_log_file_cache``,
``resolver`` and ``resolver_timeout`` (parsed as nginx does; nginx uses them to look up OCSP
responders and ACME servers, which fastterm does with the system resolver, getaddrinfo, at each
fetch: an IP address needs no lookup, and tests name only 127.0.0.1), ``acme_shared_zone``,
``ssl_certificate_cache``, ``account_key ALG`` (fastterm makes its own account key), ``zone``, ``server_tokens``, ``lingering_*``, and ``listen`` options
without effect (``deferred``, ``backlog=``).

What is refused, (c): every other directive nginx knows, among them ``ssl_crl``, ``proxy_ssl_crl``, ``proxy_ssl_password_file``,
``proxy_ssl_conf_command``, ``proxy_ssl_name`` with variables other than ``$proxy_host``,
``proxy_pass`` with variables or a query in its URI part, nested locations, named locations
that do more than ``return``, regex and suffix-wildcard ``server_name`` on a server without
``ssl``, ``error_page`` to a local URI or with variables, ``proxy_set_header`` with other variables,
``proxy_next_upstream invalid_header|updating``,
upstream ``down``/``max_conns``/``hash``/
``keepalive_requests``, ``gzip on``, ``if``/``rewrite``/``set``/``map``, ``limit_*``, ``auth_*``,
``allow``/``deny``, ``listen ... proxy_protocol`` other than with ``ssl``, ``set_real_ip_from`` and
``real_ip_header proxy_protocol`` in its server (then fastterm's ``accept_proxy``: the header is
taken only from those peers, others are closed), of the ACME module ``ssl_verify off``,
``state_path off``, ``account_key FILE``, ``external_account_key``, ``preferred_chain``, ``profile``,
``common_name_in_csr on``, several or non-mailto ``contact``s, wildcard names (dns-01), other
``key=`` values, ``$acme_certificate`` without ``acme_certificate``, and plain-HTTP proxying (a
server without ``ssl`` may only ``return``; other statuses, other variables in it). Each has its reason in ``UNSUPPORTED`` or in the
error. Bad input is an error at file:line too: unbalanced braces, a missing ``;``, an unknown
directive, a directive out of its context or with the wrong argument count (crossplane's
table), an unknown ``$variable``, an include loop, a missing include or certificate file.

Paths: ``include`` globs and ``ssl_certificate`` paths are relative to the directory of the
main file, nginx's conf prefix (``nginx -c FILE``), not to the including file: Debian's
``sites-enabled/*`` say ``include snippets/x.conf;`` and mean ``/etc/nginx/snippets``. A file
whose top level has server or upstream blocks but no ``http`` (a conf.d file) is read as the
inside of ``http {}``.

Deliberate choices where nginx's default is not what fastterm gives (documented, not hidden):
``ssl_protocols`` absent -> TLSv1.2 TLSv1.3 (nginx >= 1.23.4's default; 1.22's lacks TLSv1.3
and offers TLSv1/1.1, which fastterm refuses; ``proxy_ssl_protocols`` absent likewise); ``ssl_ciphers`` absent -> Mozilla intermediate
(nginx: ``HIGH:!aNULL:!MD5``, which adds CBC and non-forward-secret suites); ``ssl_ecdh_curve``
absent or ``auto`` -> X25519:P-256:P-384 (OpenSSL's default adds X448 and P-521); TLS 1.3
suites absent -> OpenSSL's default order, as nginx.

Where nginx applies a setting per listen address rather than per server block, so does this
front-end: a non-default server's ``ssl_protocols`` and ``ssl_session_cache`` have no effect in
nginx (OpenSSL has chosen the version and the session cache before SNI picks the server), so
the default server's are used, with a warning.

Known runtime differences for mapped directives (fastterm's engine, not this file; the
differential tests allow-list them): see ``RUNTIME_DIFFERENCES``.
"""

from __future__ import annotations

import ipaddress
import os
import re
import socket
from collections.abc import Callable
from dataclasses import dataclass, field

import crossplane
import msgspec
from crossplane import analyzer as _cp
from crossplane.errors import NgxParserDirectiveError, NgxParserSyntaxError

from fastterm.accesslog import COMBINED, compile_format
from fastterm.certs.store import load_certificate
from fastterm.config.model import (
    INTERMEDIATE_CIPHERS,
    INTERMEDIATE_GROUPS,
    Acme,
    AddHeader,
    Answer,
    Certificate,
    Config,
    ErrorPage,
    Limits,
    ProxyHeader,
    ProxyRequest,
    Redirect,
    Route,
    Server,
    Sessions,
    TLSPolicy,
    Upstream,
    UpstreamTLS,
)
from fastterm.errors import ConfigError
from fastterm.privileges import resolve
from fastterm.redirect import CLOSE_WITHOUT_RESPONSE, REDIRECT_CODES, compile_template

Warn = Callable[..., None]   # warn(message, level="warn"|"notice")

# OpenSSL 3's default TLS 1.3 suites, in its order: what nginx offers without ssl_conf_command.
OPENSSL_CIPHERSUITES = "TLS_AES_256_GCM_SHA384:TLS_CHACHA20_POLY1305_SHA256:TLS_AES_128_GCM_SHA256"
REFUSED_PROTOCOLS = ("SSLv2", "SSLv3", "TLSv1", "TLSv1.1")

RUNTIME_DIFFERENCES = """\
- An HTTP/2 client's Expect: 100-continue goes to the backend (nginx answers 100 itself).
- An answer of fastterm's own (an error, a return, a redirect, the 301 from /dir to /dir/) to
  a request with a body closes the connection (nginx reads and discards the body and keeps the
  connection).
- add_header lines whose values have variables are left out of answers to requests refused
  before a server block is chosen (a malformed head).
- Responses: nginx replaces the backend's Server and Date with its own; fastterm drops the
  backend's Server (proxy_hide_header's default) and passes its Date; error pages differ in body
  and Server header (fastterm vs nginx/1.x).
- A backend's X-Accel-Redirect is dropped (nginx's default hiding); nginx also acts on it (an
  internal redirect), and on X-Accel-Limit-Rate/-Buffering/-Charset/-Expires, fastterm does not.
- A request head over 256 fields: 431 (nginx counts no fields). Over N x SIZE of
  large_client_header_buffers: 400 (nginx too, but it packs whole lines into its buffers after
  the first client_header_buffer_size one, so its limit is within a line of N x SIZE).
- HTTP/2: nginx ends the connection (GOAWAY ENHANCE_YOUR_CALM) for a field whose HPACK-encoded
  name or value is longer than large_client_header_buffers' SIZE; fastterm (nghttp2 gives it
  decoded fields) answers the stream 431 when its decoded list passes N x SIZE.
- keepalive_time applies to HTTP/1.1 only (nginx also ends an HTTP/2 connection past it).
- proxy_redirect rewrites Location only (nginx also rewrites Refresh).
- No matching location: fastterm 404s; nginx serves files from its root.
- Port 80 (return): the status pages' bodies differ; add_header lines are not applied; a text
  body is text/plain whatever the URI's extension (nginx: its types, else default_type); a
  request with Expect: 100-continue and a body is answered and closed (nginx reads the body);
  a head over 16 KiB gets 431 (nginx: large_client_header_buffers, 400/414 per line).
- ssl_prefer_server_ciphers on: fastterm also sets SSL_OP_PRIORITIZE_CHACHA.
- ssl_session_cache none and off both turn the cache off (nginx none still hands out
  session IDs that never resume).
- A chunked request body (an HTTP/2 one without content-length) is read whole and sent with
  Content-Length, as nginx (proxy_request_buffering on), but in memory up to the location's
  client_max_body_size (nginx: a temp file past client_body_buffer_size); where that is 0 (no
  limit) it is streamed chunked instead.
- A backend failing: a single server is skipped for fail_timeout in fastterm only when another
  is up. proxy_next_upstream replays no request with a body once it was sent (nginx, which keeps
  the body: on to the next server when non_idempotent or the method is idempotent).
- Upstream host names are resolved per connection (nginx: once at start, every address).
- Every server of an upstream out (max_fails): fastterm tries the one back soonest; nginx answers
  502 at once and marks them all up again.
- proxy_ssl_verify on: fastterm fails the handshake itself; nginx completes it, then checks the
  result and closes (both: the next server, then 502). An IP address as proxy_ssl_name is
  checked against the certificate's IP addresses (nginx: as a DNS name).
"""

# ---- crossplane ---------------------------------------------------------------------------
# crossplane 0.5.8 predates these; its analyzer then checks their context and arguments too.
_HTTP_MS = _cp.NGX_HTTP_MAIN_CONF | _cp.NGX_HTTP_SRV_CONF
for _name, _masks in {
    "http2": [_HTTP_MS | _cp.NGX_CONF_FLAG],                                    # nginx 1.25.1
    "ssl_conf_command": [_HTTP_MS | _cp.NGX_CONF_TAKE2],                        # 1.19.4
    "ssl_reject_handshake": [_HTTP_MS | _cp.NGX_CONF_FLAG],                     # 1.19.4
    "keepalive_time": [_HTTP_MS | _cp.NGX_HTTP_LOC_CONF | _cp.NGX_CONF_TAKE1],  # 1.19.10
    "proxy_ssl_conf_command": [_HTTP_MS | _cp.NGX_HTTP_LOC_CONF | _cp.NGX_CONF_TAKE2],
    "ssl_certificate_cache": [_HTTP_MS | _cp.NGX_CONF_TAKE123],                 # 1.27.4
}.items():
    _cp.DIRECTIVES.setdefault(_name, _masks)

# nginx's ACME module (ngx_http_acme_module, nginx 1.29+, github.com/nginx/nginx-acme): its
# directives, and a context of its own for the inside of "acme_issuer NAME { }", which
# crossplane has no bit for.
_ACME_ISSUER_CONF = 1 << 32
_cp.CONTEXTS.setdefault(("http", "acme_issuer"), _ACME_ISSUER_CONF)
for _name, _mask in {
    "acme_issuer": _cp.NGX_HTTP_MAIN_CONF | _cp.NGX_CONF_BLOCK | _cp.NGX_CONF_TAKE1,
    "acme_shared_zone": _cp.NGX_HTTP_MAIN_CONF | _cp.NGX_CONF_TAKE1,
    "acme_certificate": _cp.NGX_HTTP_SRV_CONF | _cp.NGX_CONF_1MORE,
    "uri": _ACME_ISSUER_CONF | _cp.NGX_CONF_TAKE1,
    "account_key": _ACME_ISSUER_CONF | _cp.NGX_CONF_TAKE1,
    "challenge": _ACME_ISSUER_CONF | _cp.NGX_CONF_TAKE1,
    "common_name_in_csr": _ACME_ISSUER_CONF | _cp.NGX_CONF_FLAG,
    "contact": _ACME_ISSUER_CONF | _cp.NGX_CONF_TAKE1,
    "external_account_key": _ACME_ISSUER_CONF | _cp.NGX_CONF_TAKE2,
    "preferred_chain": _ACME_ISSUER_CONF | _cp.NGX_CONF_TAKE1,
    "profile": _ACME_ISSUER_CONF | _cp.NGX_CONF_TAKE12,
    "ssl_trusted_certificate": _ACME_ISSUER_CONF | _cp.NGX_CONF_TAKE1,
    "ssl_verify": _ACME_ISSUER_CONF | _cp.NGX_CONF_FLAG,
    "state_path": _ACME_ISSUER_CONF | _cp.NGX_CONF_TAKE1,
    "accept_terms_of_service": _ACME_ISSUER_CONF | _cp.NGX_CONF_NOARGS,
}.items():
    _masks = _cp.DIRECTIVES.setdefault(_name, [])
    if _mask not in _masks:
        _masks.append(_mask)

# Blocks whose lines are data, not directives.
_OPAQUE_BLOCKS = {"types", "map", "geo", "split_clients", "match", "charset_map", "perl_set"}


@dataclass
class Node:
    """One directive, includes expanded: where it is, its arguments (nginx's unescaping)."""

    name: str
    args: list[str]
    file: str
    line: int
    block: list[Node] | None = None

    def error(self, message: str) -> ConfigError:
        return ConfigError(_one_line(message), file=self.file, line=self.line)

    def unsupported(self, why: str = "", what: str | None = None) -> ConfigError:
        return self.error(f'"{what or self.name}" is not supported yet' + (f": {why}" if why else ""))

    def invalid(self, value: str | None = None) -> ConfigError:
        value = self.args[0] if value is None and self.args else value
        return self.error(f'invalid value "{value}" in "{self.name}" directive')

    @property
    def where(self) -> str:
        return f"{self.file}:{self.line}"


_NGINX_ESCAPES = {'"': '"', "'": "'", "\\": "\\", "t": "\t", "r": "\r", "n": "\n"}
_ESCAPE_RE = re.compile(r"\\(.)", re.DOTALL)
_ERRNO_RE = re.compile(r"^\[Errno \d+\] ([^:]+): '(.*)'$")
_CP_WHERE_RE = re.compile(r" in [^ ]*?(:\d+)?$")


def _one_line(message: str) -> str:
    """Errors are one line, whatever a directive name holds (a backslash-newline, say)."""
    return message.replace("\r", "\\r").replace("\n", "\\n")


def _unescape(arg: str) -> str:
    """nginx's lexer turns ``\\"``, ``\\'``, ``\\\\``, ``\\t``, ``\\r``, ``\\n`` into characters and
    keeps other backslashes (regexes); crossplane keeps them all."""
    return _ESCAPE_RE.sub(lambda m: _NGINX_ESCAPES.get(m[1], m[0]), arg)


def _parse_error(err: dict, path: str) -> ConfigError:
    message = _CP_WHERE_RE.sub("", err["error"])
    if not message:
        # crossplane ran out of tokens inside a directive (its StopIteration has no text).
        fname = err.get("file") or path
        with open(fname, encoding="utf-8", errors="replace") as f:
            lines = f.read().count("\n") + 1
        return ConfigError('unexpected end of file, expecting ";" or "}"', file=fname, line=lines)
    errno = _ERRNO_RE.match(message)
    if errno:
        strerror, name = errno.groups()
        if err.get("line") is None and os.path.abspath(name) == os.path.abspath(path):
            return ConfigError(f"cannot read configuration: {strerror}", file=path)
        message = f'open() "{name}" failed ({strerror})'
    return ConfigError(_one_line(message), file=err.get("file") or path, line=err.get("line"))


def read(path: str) -> list[Node]:
    """The main file's directives, includes expanded, each checked by crossplane's analyzer for
    context and argument count (nginx's directive table) in the context it lands in."""
    if not os.path.isfile(path):
        reason = "Is a directory" if os.path.isdir(path) else "No such file or directory"
        raise ConfigError(f"cannot read configuration: {reason}", file=path)
    # Contexts, argument counts and unknown directives are checked below, once each include is
    # placed in the context it lands in (crossplane checks only from the top of each file).
    payload = crossplane.parse(path, catch_errors=True, strict=False, check_ctx=False, check_args=False)
    if payload["errors"]:
        raise _parse_error(payload["errors"][0], path)
    configs = payload["config"]
    for conf in configs:
        _check_terminators(conf["file"])
    ctx = ("http",) if is_conf_d({stmt["directive"] for stmt in configs[0]["parsed"]}) else ()
    return _expand(configs, 0, ctx, (0,))


def is_conf_d(top: set[str]) -> bool:
    """A conf.d file (server or upstream blocks at the top, no http block) is read as the inside
    of http {}, as nginx.conf's "include conf.d/*.conf;" would."""
    return bool(top & {"server", "upstream"}) and "http" not in top


def _check_terminators(fname: str) -> None:
    """A directive must end with ";" or open a block: ``proxy_pass http://a }`` is a missing ";"
    (crossplane's payload does not say how a directive ended, its token stream does). The whole
    stream is read, so braces are balanced too: crossplane's parser stops at a stray top-level
    "}" and drops the rest of the file without a word."""
    try:
        _terminators(fname)
    except NgxParserSyntaxError as exc:
        raise ConfigError(exc.strerror, file=fname, line=exc.lineno) from None


def _terminators(fname: str) -> None:
    with open(fname, encoding="utf-8", errors="replace") as f:
        text = f.read()
    last = text.rstrip().rsplit("\n", 1)[-1].strip()
    if text and not text[-1].isspace() and last[-1:] not in (";", "{", "}") and not last.startswith("#"):
        # crossplane's lexer drops a last word that no whitespace follows.
        raise ConfigError('unexpected end of file, expecting ";" or "}"', file=fname,
                          line=text.count("\n") + 1)
    start: tuple[str, int] | None = None
    for token, line, quoted in crossplane.lex(fname):
        if not quoted and token.startswith("#"):
            continue
        if not quoted and token in ("{", ";"):
            start = None
        elif not quoted and token == "}":
            if start is not None:
                raise ConfigError(_one_line(f'"{start[0]}" directive is not terminated by ";"'), file=fname,
                                  line=start[1])
        elif start is None:
            start = (token, line)


def _expand(configs: list[dict], index: int, ctx: tuple[str, ...], stack: tuple[int, ...]) -> list[Node]:
    fname = configs[index]["file"]
    nodes: list[Node] = []
    for stmt in configs[index]["parsed"]:
        nodes.extend(_node(configs, fname, stmt, ctx, stack))
    return nodes


def _node(configs: list[dict], fname: str, stmt: dict, ctx: tuple[str, ...], stack: tuple[int, ...]):
    term = "{" if "block" in stmt else ";"
    try:
        _cp.analyze(fname, stmt, term, ctx, strict=True, check_ctx=True, check_args=True)
    except NgxParserDirectiveError as exc:
        raise ConfigError(_one_line(exc.strerror), file=fname, line=exc.lineno) from None
    if stmt["directive"] == "include":
        nodes = []
        for i in stmt.get("includes", []):
            if i in stack:
                chain = " -> ".join(configs[j]["file"] for j in (*stack[stack.index(i):], i))
                raise ConfigError(f"include loop: {chain}", file=fname, line=stmt["line"])
            nodes.extend(_expand(configs, i, ctx, (*stack, i)))
        return nodes
    node = Node(stmt["directive"], [_unescape(a) for a in stmt["args"]], fname, stmt["line"])
    if "block" in stmt:
        if stmt["directive"] in _OPAQUE_BLOCKS:
            node.block = [Node(s["directive"], s["args"], fname, s["line"]) for s in stmt["block"]]
        else:
            inner = _cp.enter_block_ctx(stmt, ctx)
            node.block = [n for s in stmt["block"] for n in _node(configs, fname, s, inner, stack)]
    return [node]


# ---- values ----------------------------------------------------------------------------------
_TIME_UNITS = {"y": 365 * 86400, "M": 30 * 86400, "w": 7 * 86400, "d": 86400, "h": 3600, "m": 60,
               "s": 1, "ms": 0.001}
_TIME_ORDER = ["y", "M", "w", "d", "h", "m", "s", "ms"]
_TIME_PART_RE = re.compile(r"(\d+)(ms|[yMwdhms]?)\s*")
_SIZE_RE = re.compile(r"(\d+)([kKmMgG]?)")


def parse_time(node: Node, text: str | None = None) -> float:
    """nginx time syntax (ngx_parse_time): ``30``, ``300s``, ``10m``, ``1d``, ``500ms``,
    ``1h 30m`` (units in decreasing order), -> seconds."""
    text = node.args[0] if text is None else text
    pos, total, last = 0, 0.0, -1
    if not text:
        raise node.invalid(text)
    while pos < len(text):
        m = _TIME_PART_RE.match(text, pos)
        if not m:
            raise node.invalid(text)
        unit = m[2] or "s"
        rank = _TIME_ORDER.index(unit)
        if rank <= last or (not m[2] and m.end() != len(text)):
            raise node.invalid(text)
        last = rank
        total += int(m[1]) * _TIME_UNITS[unit]
        pos = m.end()
    return float(total)


def parse_size(node: Node, text: str | None = None) -> int:
    """nginx size syntax (ngx_parse_offset): ``512``, ``8k``, ``10m``, ``1g`` -> bytes."""
    text = node.args[0] if text is None else text
    m = _SIZE_RE.fullmatch(text)
    if not m:
        raise node.invalid(text)
    return int(m[1]) * {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30}[m[2].lower()]


def parse_flag(node: Node) -> bool:
    value = node.args[0].lower()
    if value not in ("on", "off"):
        raise node.error(f'invalid value "{node.args[0]}" in "{node.name}" directive, it must be "on" or "off"')
    return value == "on"


def _number(node: Node, text: str) -> int:
    if not text.isdigit():
        raise node.invalid(text)
    return int(text)


# ---- variables -------------------------------------------------------------------------------
def _words(text: str) -> frozenset[str]:
    return frozenset(text.split())


# nginx's variables (http core, ssl, proxy, upstream, realip, http2 and the common modules):
# a name outside these and the prefixes below is "unknown" to nginx -t too.
KNOWN_VARIABLES = _words("""
args binary_remote_addr body_bytes_sent bytes_sent connection connection_requests connection_time
content_length content_type document_root document_uri host hostname https is_args limit_rate msec
nginx_version pid pipe proxy_protocol_addr proxy_protocol_port proxy_protocol_server_addr
proxy_protocol_server_port query_string realpath_root remote_addr remote_port remote_user request
request_body request_body_file request_completion request_filename request_id request_length
request_method request_time request_uri scheme server_addr server_name server_port server_protocol
status time_iso8601 time_local tcpinfo_rtt tcpinfo_rttvar tcpinfo_snd_cwnd tcpinfo_rcv_space uri
ssl_cipher ssl_ciphers ssl_client_escaped_cert ssl_client_cert ssl_client_fingerprint ssl_client_i_dn
ssl_client_i_dn_legacy ssl_client_raw_cert ssl_client_s_dn ssl_client_s_dn_legacy ssl_client_serial
ssl_client_v_end ssl_client_v_remain ssl_client_v_start ssl_client_verify ssl_curve ssl_curves
ssl_early_data ssl_protocol ssl_server_name ssl_session_id ssl_session_reused ssl_alpn_protocol
proxy_host proxy_port proxy_add_x_forwarded_for upstream_addr upstream_bytes_received
upstream_bytes_sent upstream_cache_status upstream_connect_time upstream_header_time
upstream_queue_time upstream_response_length upstream_response_time upstream_status
realip_remote_addr realip_remote_port http2 gzip_ratio limit_conn_status limit_req_status
connections_active connections_reading connections_writing connections_waiting invalid_referer
secure_link secure_link_expires uid_got uid_reset uid_set msie modern_browser ancient_browser
date_local date_gmt fastcgi_script_name fastcgi_path_info acme_certificate acme_certificate_key
""")
KNOWN_PREFIXES = ("http_", "sent_http_", "sent_trailer_", "cookie_", "arg_", "upstream_http_",
                  "upstream_cookie_", "upstream_trailer_")
_VARIABLE_RE = re.compile(r"\$(?:\{([A-Za-z0-9_]+)\}|([A-Za-z0-9_]+))")
# Which arguments nginx compiles as complex values (where "$name" is a variable), by directive.
_VARIABLE_ARGS: dict[str, slice] = {
    "proxy_set_header": slice(1, 2), "add_header": slice(1, 2), "add_trailer": slice(1, 2),
    "return": slice(-1, None), "proxy_pass": slice(0, 1), "log_format": slice(1, None),
    "access_log": slice(0, 1), "ssl_certificate": slice(0, 1), "ssl_certificate_key": slice(0, 1),
    "root": slice(0, 1), "alias": slice(0, 1), "proxy_redirect": slice(0, None), "set": slice(1, 2),
    "try_files": slice(0, None), "error_page": slice(-1, None), "proxy_cookie_domain": slice(0, None),
    "proxy_cookie_path": slice(0, None),
}
# Directives that define variables (their first variable-looking argument).
_DEFINING = {"map": 1, "geo": -1, "split_clients": 1, "set": 0, "perl_set": 0, "js_set": 0}


# a named group of a regex location or server name: nginx defines a variable of that name
_NAMED_GROUP_RE = re.compile(r"\(\?P?<([A-Za-z_][A-Za-z0-9_]*)>|\(\?'([A-Za-z_][A-Za-z0-9_]*)'")


def _variables(nodes: list[Node], defined: set[str]) -> None:
    for node in nodes:
        if node.name in _DEFINING and node.args:
            m = _VARIABLE_RE.fullmatch(node.args[_DEFINING[node.name]])
            if m:
                defined.add(m[1] or m[2])
        if node.name in ("location", "server_name"):
            for arg in node.args:
                if node.name == "location" or arg.startswith("~"):
                    defined.update(m[1] or m[2] for m in _NAMED_GROUP_RE.finditer(arg))
        if node.block and node.name not in _OPAQUE_BLOCKS:
            _variables(node.block, defined)


def check_variables(node: Node, defined: set[str]) -> None:
    where = _VARIABLE_ARGS.get(node.name)
    if where is None:
        return
    for arg in node.args[where]:
        for m in _VARIABLE_RE.finditer(arg):
            name = m[1] or m[2]
            if name.isdigit() or name in KNOWN_VARIABLES or name in defined or \
                    name.startswith(KNOWN_PREFIXES):
                continue
            raise node.error(f'unknown "{name}" variable')


# ---- the directive table ------------------------------------------------------------------
# (a) mapped: read by the builder below.
MAPPED = {
    "http", "server", "location", "upstream", "events",
    "user", "worker_processes", "worker_shutdown_timeout", "worker_connections",
    "listen", "server_name", "return", "http2",
    "ssl_certificate", "ssl_certificate_key", "ssl_protocols", "ssl_ciphers", "ssl_prefer_server_ciphers",
    "ssl_conf_command", "ssl_ecdh_curve", "ssl_dhparam", "ssl_session_cache", "ssl_session_timeout",
    "ssl_session_tickets", "ssl_session_ticket_key", "ssl_early_data", "ssl_reject_handshake", "add_header",
    "ssl_stapling", "ssl_stapling_verify", "ssl_stapling_file", "ssl_stapling_responder", "ssl_trusted_certificate",
    "proxy_pass", "proxy_set_header", "proxy_http_version", "error_page", "proxy_intercept_errors",
    "client_max_body_size", "client_header_timeout", "keepalive_timeout", "send_timeout",
    "proxy_connect_timeout", "proxy_read_timeout", "underscores_in_headers", "large_client_header_buffers",
    "http2_max_concurrent_streams", "keepalive_requests", "set_real_ip_from", "real_ip_header", "keepalive_time",
    "client_body_timeout", "proxy_send_timeout",
    "proxy_ssl_certificate", "proxy_ssl_certificate_key", "proxy_ssl_verify", "proxy_ssl_trusted_certificate",
    "proxy_ssl_verify_depth", "proxy_ssl_server_name", "proxy_ssl_name", "proxy_ssl_session_reuse",
    "proxy_ssl_protocols", "proxy_ssl_ciphers", "proxy_hide_header", "proxy_pass_header",
    "proxy_next_upstream", "proxy_next_upstream_tries", "proxy_next_upstream_timeout",
    "ssl_verify_client", "ssl_client_certificate", "ssl_verify_depth",
    "access_log", "log_format",
    # upstream { }
    "keepalive", "least_conn",
    # nginx's ACME module: acme_issuer NAME { ... } and acme_certificate in a server
    "acme_issuer", "acme_certificate", "uri", "contact", "state_path", "challenge", "accept_terms_of_service",
    "account_key",
}
# Accepted when the value is what fastterm does anyway: directive -> accepted values (lowercase).
EQUAL = {
    "proxy_redirect": {"off", "default"},
    "merge_slashes": {"on"}, "port_in_redirect": {"on"}, "server_name_in_redirect": {"off"},
    "absolute_redirect": {"on"}, "ignore_invalid_headers": {"on"}, "tcp_nodelay": {"on"},
    "real_ip_recursive": {"off"}, "gzip": {"off"}, "keepalive_disable": {"none"},
    "chunked_transfer_encoding": {"on"}, "proxy_pass_request_headers": {"on"},
    "proxy_pass_request_body": {"on"}, "proxy_ignore_client_abort": {"off"},
    "ssl_verify": {"on"}, "common_name_in_csr": {"off"},   # in acme_issuer { }
}
_FILES = "fastterm serves no files"
_OBSOLETE = "obsolete since nginx 1.19.7 (nginx ignores it too)"
# (b) accepted with a warning: directive -> why it has no effect on fastterm.
IGNORED = {
    "pid": "fastterm keeps its own pid file",
    "daemon": "fastterm stays in the foreground (run it under systemd or a container runtime)",
    "master_process": "fastterm always runs a master with workers (run --single for one process)",
    "error_log": "fastterm logs to stderr (or fastterm.toml's error_log)",
    "open_log_file_cache": "fastterm's access log is one file, kept open (reopened on SIGUSR1)",
    "worker_rlimit_nofile": "fastterm raises RLIMIT_NOFILE to the hard limit itself",
    "worker_cpu_affinity": "workers are not pinned", "worker_priority": "workers keep their priority",
    "worker_rlimit_core": "no core file limit is set", "working_directory": "no working directory is set",
    "pcre_jit": "fastterm has no regular expressions", "timer_resolution": "fastterm's timers are exact",
    "load_module": "fastterm has its modules built in", "lock_file": "fastterm needs no accept lock",
    "thread_pool": "fastterm reads no files", "env": "fastterm keeps its environment",
    "use": "fastterm always uses epoll", "multi_accept": "each worker accepts what is queued",
    "accept_mutex": "workers accept on their own SO_REUSEPORT sockets",
    "accept_mutex_delay": "workers accept on their own SO_REUSEPORT sockets",
    "worker_aio_requests": _FILES, "debug_connection": "no debug log per client",
    "root": _FILES, "index": _FILES, "alias": _FILES, "sendfile": _FILES, "sendfile_max_chunk": _FILES,
    "tcp_nopush": _FILES, "aio": _FILES, "aio_write": _FILES, "directio": _FILES, "read_ahead": _FILES,
    "output_buffers": _FILES, "open_file_cache": _FILES, "open_file_cache_errors": _FILES,
    "open_file_cache_min_uses": _FILES, "open_file_cache_valid": _FILES, "disable_symlinks": _FILES,
    "log_not_found": _FILES, "log_subrequest": "fastterm makes no subrequests", "etag": _FILES,
    "if_modified_since": _FILES, "default_type": _FILES, "types": _FILES, "autoindex": _FILES,
    "client_body_temp_path": "fastterm streams bodies, it writes no temp files",
    "proxy_temp_path": "fastterm streams bodies, it writes no temp files",
    "fastcgi_temp_path": "fastterm speaks no FastCGI", "uwsgi_temp_path": "fastterm speaks no uwsgi",
    "scgi_temp_path": "fastterm speaks no SCGI",
    "proxy_max_temp_file_size": "fastterm streams bodies, it writes no temp files",
    "proxy_temp_file_write_size": "fastterm streams bodies, it writes no temp files",
    "client_body_buffer_size": "fastterm streams request bodies with a length and reads a chunked one "
                               "whole in memory, up to client_max_body_size",
    "client_body_in_file_only": "fastterm streams request bodies",
    "client_body_in_single_buffer": "fastterm streams request bodies",
    "client_header_buffer_size": "fastterm sizes its buffers itself (large_client_header_buffers "
                                 "sets the limit)",
    "connection_pool_size": "fastterm sizes its buffers itself",
    "request_pool_size": "fastterm sizes its buffers itself",
    "proxy_buffer_size": "fastterm streams responses (as proxy_buffering off)",
    "proxy_buffers": "fastterm streams responses (as proxy_buffering off)",
    "proxy_busy_buffers_size": "fastterm streams responses (as proxy_buffering off)",
    "proxy_buffering": "fastterm streams responses (as proxy_buffering off)",
    "proxy_request_buffering": "fastterm streams request bodies with a length (as proxy_request_buffering "
                               "off) and reads a chunked one whole, sent with Content-Length (as on)",
    "ssl_buffer_size": "fastterm sizes TLS records itself",
    "http2_chunk_size": "fastterm sizes HTTP/2 frames itself",
    "http2_body_preread_size": "fastterm's HTTP/2 windows follow the backend",
    "http2_recv_buffer_size": "fastterm sizes its buffers itself",
    "http2_streams_index_size": "fastterm sizes its tables itself",
    "http2_max_requests": _OBSOLETE + "; use keepalive_requests", "http2_max_field_size": _OBSOLETE,
    "http2_max_header_size": _OBSOLETE, "http2_idle_timeout": _OBSOLETE, "http2_recv_timeout": _OBSOLETE,
    "types_hash_max_size": "an nginx hash table size", "types_hash_bucket_size": "an nginx hash table size",
    "server_names_hash_max_size": "an nginx hash table size",
    "server_names_hash_bucket_size": "an nginx hash table size",
    "variables_hash_max_size": "an nginx hash table size",
    "variables_hash_bucket_size": "an nginx hash table size",
    "map_hash_max_size": "an nginx hash table size", "map_hash_bucket_size": "an nginx hash table size",
    "proxy_headers_hash_max_size": "an nginx hash table size",
    "proxy_headers_hash_bucket_size": "an nginx hash table size",
    "server_tokens": "fastterm's own responses say Server: fastterm; a backend's is hidden (proxy_hide_header)",
    "lingering_close": "fastterm closes after the response", "lingering_time": "fastterm closes after the response",
    "lingering_timeout": "fastterm closes after the response",
    "reset_timedout_connection": "timed-out clients are closed",
    "resolver": "fastterm looks OCSP responders and ACME servers up with the system resolver (an IP address "
                "needs none)",
    "resolver_timeout": "fastterm looks OCSP responders and ACME servers up with the system resolver (an IP "
                        "address needs none)",
    "acme_shared_zone": "fastterm keeps ACME certificates and challenge tokens in the issuer's state_path and "
                        "its own memory, no shared zone",
    "ssl_certificate_cache": "fastterm reads each certificate once, and again when its file changes",
    "zone": "backend state stays per worker, as nginx's without zone",
}
# nginx's ngx_http_proxy_hide_headers: backend response fields the client never sees unless
# proxy_pass_header names them (Date and Server: nginx writes its own instead).
_HIDDEN_BY_DEFAULT = ("Server", "X-Pad", "X-Accel-Expires", "X-Accel-Redirect", "X-Accel-Limit-Rate",
                      "X-Accel-Buffering", "X-Accel-Charset")
_TOKEN = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")
# (c) refused, with a reason where it helps; any other directive nginx knows is refused too.
UNSUPPORTED = {
    "ssl_crl": "client certificates (certificate revocation lists)",
    "ssl_password_file": "encrypted keys", "ssl": "removed in nginx 1.25.1: use \"listen ... ssl\"",
    "gzip": "fastterm does not compress",
    "proxy_redirect": "proxy_redirect other than default and off",
    "if": "conditions", "rewrite": "URI rewriting", "set": "variables", "map": "variables",
    "try_files": _FILES, "keepalive_disable": "fastterm keeps every client alive",
    # in acme_issuer { }
    "ssl_verify": "fastterm always verifies the ACME server's certificate (ssl_trusted_certificate names its CA)",
    "common_name_in_csr": "fastterm's certificate requests carry the names in subjectAltName only",
    "external_account_key": "external account binding (RFC 8555 section 7.3.4)",
    "preferred_chain": "fastterm serves the chain the CA offers first",
    "profile": "certificate profiles (draft-ietf-acme-profiles)",
}


def _strip_port(name: str) -> str:
    """The TLS name without a port, as ngx_http_upstream_ssl_name cuts it ("[::1]:8443" -> "::1")."""
    if name.startswith("[") and "]" in name:
        return name[1:name.index("]")]
    return name.partition(":")[0]


def _check_resolver(node: Node) -> None:
    """``resolver ADDRESS ... [valid=TIME] [ipv4=on|off] [ipv6=on|off] [status_zone=NAME]``: parsed
    as nginx would; nginx uses it only for OCSP responders, which fastterm looks up with the system
    resolver."""
    for arg in node.args:
        key, sep, value = arg.partition("=")
        if sep and key == "valid":
            parse_time(node, value)
        elif sep and key in ("ipv4", "ipv6"):
            if value not in ("on", "off"):
                raise node.invalid(arg)
        elif sep and key == "status_zone":
            continue
        elif sep or not arg or arg.startswith(":"):
            raise node.error(f'invalid parameter "{arg}"')


def _check_acme_shared_zone(node: Node) -> None:
    """``acme_shared_zone zone=NAME:SIZE``, as nginx's ACME module reads it."""
    if not node.args[0].startswith("zone="):
        raise node.error('"acme_shared_zone" must have "zone" parameter')
    name, sep, size = node.args[0].removeprefix("zone=").rpartition(":")
    if not sep or not name:
        raise node.invalid()
    parse_size(node, size)


def _check_certificate_cache(node: Node) -> None:
    """``ssl_certificate_cache off | max=N [inactive=TIME] [valid=TIME]`` (nginx 1.27.4)."""
    if node.args == ["off"]:
        return
    seen = set()
    for arg in node.args:
        key, sep, value = arg.partition("=")
        if key == "max" and sep and value.isdigit() and int(value) > 0:
            seen.add(key)
        elif key in ("inactive", "valid") and sep:
            parse_time(node, value)
        else:
            raise node.error(f'invalid parameter "{arg}"')
    if "max" not in seen:
        raise node.error('"ssl_certificate_cache" must have "max" parameter')


_ARGUMENT_CHECKS: dict[str, Callable[[Node], None]] = {
    "resolver": _check_resolver,
    "resolver_timeout": lambda node: parse_time(node) and None,
    "acme_shared_zone": _check_acme_shared_zone,
    "ssl_certificate_cache": _check_certificate_cache,
}


def _upgrade_map(node: Node) -> str | None:
    """The variable a ``map $http_upgrade $NAME { default upgrade; '' close; }`` defines (nginx's
    WebSocket proxying example: its one map fastterm reads), else None."""
    if node.name != "map" or len(node.args) != 2 or node.args[0] != "$http_upgrade" or node.block is None:
        return None
    m = _VARIABLE_RE.fullmatch(node.args[1])
    entries = sorted(tuple(n.name.strip("'\"") for n in (e,)) + tuple(e.args) for e in node.block)
    return (m[1] or m[2]) if m and entries == [("", "close"), ("default", "upgrade")] else None


def classify(nodes: list[Node], warn: Warn, defined: set[str], warned: set[int]) -> None:
    """Sort every directive into (a), (b) or (c), in file order: warn for (b), raise for (c)."""
    for node in nodes:
        check_variables(node, defined)
        name = node.name
        if _upgrade_map(node):
            continue
        if name in EQUAL and node.args:
            if " ".join(node.args).lower() in EQUAL[name]:
                continue
            if name not in IGNORED:
                raise node.unsupported(UNSUPPORTED.get(name, ""), f"{name} {' '.join(node.args)}")
        if name in MAPPED:
            if _challenge_path(node):
                # its root is acme_challenge_dir on a plain server (redirects below), not ignored
                warned.update(id(n) for n in node.block or () if n.name == "root")
            if node.block is not None and name not in _OPAQUE_BLOCKS:
                classify(node.block, warn, defined, warned)
            continue
        if name in IGNORED:
            if name in _ARGUMENT_CHECKS:
                _ARGUMENT_CHECKS[name](node)
            if id(node) not in warned:
                warned.add(id(node))
                warn(f'{node.where}: "{name}" is ignored: {IGNORED[name]}')
            continue
        raise node.unsupported(UNSUPPORTED.get(name, ""))


# ---- levels and inheritance ---------------------------------------------------------------
# Directives that may appear more than once on one level (nginx arrays); any other repeated
# directive is '"x" directive is duplicate', as nginx says.
_REPEATABLE = {"listen", "server_name", "location", "server", "upstream", "proxy_set_header", "add_header",
               "ssl_certificate", "ssl_certificate_key", "ssl_conf_command", "ssl_session_ticket_key",
               "set_real_ip_from", "include", "types", "error_page", "access_log", "error_log",
               "load_module", "env", "log_format", "map", "resolver", "allow", "deny", "zone", "return",
               "if", "rewrite", "set", "proxy_hide_header", "proxy_pass_header", "acme_issuer", "contact", "uri"}


class Level:
    """One block (http, server, location, upstream): its directives by name, and its parent,
    for nginx's inheritance (a level that sets a directive replaces the parent's value)."""

    def __init__(self, nodes: list[Node], parent: Level | None = None, node: Node | None = None):
        self.node = node
        self.parent = parent
        self.nodes = nodes
        self.by_name: dict[str, list[Node]] = {}
        for n in nodes:
            same = self.by_name.setdefault(n.name, [])
            if same and n.name not in _REPEATABLE:
                raise n.error(f'"{n.name}" directive is duplicate')
            same.append(n)

    def own(self, name: str) -> list[Node]:
        return self.by_name.get(name, [])

    def find(self, name: str) -> Node | None:
        """The directive as this level sees it: its own, else the nearest parent's."""
        level: Level | None = self
        while level is not None:
            if name in level.by_name:
                return level.by_name[name][-1]
            level = level.parent
        return None

    def find_all(self, name: str) -> list[Node]:
        """An array directive (add_header, proxy_set_header, ...): the nearest level that has any."""
        level: Level | None = self
        while level is not None:
            if name in level.by_name:
                return level.by_name[name]
            level = level.parent
        return []


# ---- listen ---------------------------------------------------------------------------------
@dataclass
class Listen:
    addr: tuple[str, int]
    ssl: bool
    default: bool
    http2: bool
    node: Node
    proxy_protocol: bool = False   # listen ... proxy_protocol: each connection starts with a PROXY header

    @property
    def text(self) -> str:
        host, port = self.addr
        return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


_LISTEN_ACCEPTED = {"reuseport": "", "bind": "", "ipv6only=on": "", "deferred": "TCP_DEFER_ACCEPT",
                    "backlog": "fastterm's listen backlog is 1024", "rcvbuf": "kernel default buffers",
                    "sndbuf": "kernel default buffers"}


def parse_listen(node: Node, warn: Warn) -> Listen:
    address = node.args[0]
    if address.startswith("unix:"):
        raise node.unsupported("unix sockets", f"listen {address}")
    host, port = address, "80"
    if address.startswith("["):
        close = address.find("]")
        if close < 0:
            raise node.error(f'invalid host in "{address}" of the "listen" directive')
        host, rest = address[1:close], address[close + 1:]
        if rest:
            if not rest.startswith(":"):
                raise node.error(f'invalid host in "{address}" of the "listen" directive')
            port = rest[1:]
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise node.error(f'invalid host in "{address}" of the "listen" directive') from None
    elif address.isdigit():
        host, port = "0.0.0.0", address
    elif ":" in address:
        host, _, port = address.rpartition(":")
    if host == "*":
        host = "0.0.0.0"
    if not host or (":" in host and not address.startswith("[")):
        raise node.error(f'invalid host in "{address}" of the "listen" directive')
    if not port.isdigit() or not 0 < int(port) < 65536:
        raise node.error(f'invalid port in "{address}" of the "listen" directive')
    ssl = default = http2 = proxy_protocol = False
    for param in node.args[1:]:
        key = param.split("=", 1)[0]
        if param == "ssl":
            ssl = True
        elif param in ("default_server", "default"):
            default = True
        elif param == "http2":
            http2 = True
        elif param == "proxy_protocol":
            proxy_protocol = True
        elif param in _LISTEN_ACCEPTED or key in ("backlog", "rcvbuf", "sndbuf"):
            reason = _LISTEN_ACCEPTED.get(param) or _LISTEN_ACCEPTED.get(key)
            if reason:
                warn(f'{node.where}: "listen ... {param}" is ignored: {reason}')
        elif key in ("so_keepalive", "fastopen", "accept_filter", "setfib", "quic",
                     "ipv6only", "http3"):
            raise node.unsupported("", f"listen ... {param}")
        else:
            raise node.error(f'invalid parameter "{param}"')
    return Listen((host, int(port)), ssl, default, http2, node, proxy_protocol)


# ---- the builder ----------------------------------------------------------------------------
@dataclass
class _Location:
    level: Level
    path: str
    node: Node
    exact: bool = False     # location = PATH
    regex: str = ""         # location ~ RE / ~* RE: "~" or "~*"
    no_regex: bool = False  # location ^~ PATH


@dataclass
class _Server:
    level: Level
    node: Node
    listens: list[Listen]
    names: dict[str, Node]      # server name -> the server_name line it is on
    locations: list[_Location] = field(default_factory=list)
    tls: bool = False
    named: dict[str, Level] = field(default_factory=dict)   # location @name


_PASS_RE = re.compile(r"(?i)(https?)://(\[[^\]]*\]|[^/:]+)(?::(\d+))?(/.*)?")


class _Builder:
    def __init__(self, path: str, warn: Warn):
        self.path = path
        self.prefix = os.path.dirname(os.path.abspath(path))
        self._warn = warn
        self._said: set[str] = set()
        self.upstream_blocks: dict[str, Upstream] = {}
        self.upstreams: dict[str, Upstream] = {}
        self.keepalive_upstreams: set[str] = set()   # the blocks with "keepalive N"
        self.upgrade_maps: set[str] = set()   # variables of the WebSocket map (_upgrade_map)
        # upstream -> (its TLS settings or None, the first proxy_pass naming it)
        self.upstream_tls: dict[str, tuple[UpstreamTLS | None, Node]] = {}
        self.acme_issuers: dict[str, Acme] = {}   # acme_issuer NAME { } (names empty)
        self.acme_orders: list[tuple[Node, Acme]] = []   # each acme_certificate and what it maps to
        self.challenge_dir: str | None = None   # the root of the plain servers' challenge location

    def warn(self, message: str, level: str = "warn") -> None:
        if message not in self._said:
            self._said.add(message)
            self._warn(message, level=level)

    def absolute(self, path: str) -> str:
        return os.path.normpath(os.path.join(self.prefix, os.path.expanduser(path)))

    # -- top level -----------------------------------------------------------------------
    def build(self, nodes: list[Node]) -> Config:
        defined: set[str] = set()
        _variables(nodes, defined)
        classify(nodes, self.warn, defined, set())
        main = Level(nodes)
        http_nodes = main.own("http")
        if is_conf_d(set(main.by_name)):
            main, http = Level([]), main
        elif http_nodes:
            http = Level(http_nodes[0].block or [], node=http_nodes[0])
        else:
            http = Level([])
        events = main.own("events")
        events_level = Level(events[0].block or []) if events else Level([])

        self.upgrade_maps = {v for v in map(_upgrade_map, http.own("map")) if v}
        self.acme_issuers = self.issuers(http)
        for node in http.own("upstream"):
            self.upstream_block(node)
        servers = [self.server(node, http) for node in http.own("server")]
        self.mark_tls(servers)
        tls_servers = [s for s in servers if s.tls]
        if not tls_servers:
            where = http.node or (nodes[0] if nodes else None)
            raise ConfigError('no server with "listen ... ssl" defined', file=where.file if where else self.path,
                              line=where.line if where else None)
        self.check_defaults(tls_servers)
        redirects = self.redirects([s for s in servers if not s.tls])
        model_servers = [self.tls_server(s, tls_servers) for s in tls_servers]
        self.check_challenges([s for s in servers if not s.tls])
        limits = self.limits(main, events_level, http, tls_servers, [s for s in servers if not s.tls])
        sessions = self.sessions(tls_servers)
        workers = self.workers(main)
        user, group = self.user(main)
        upstreams = list(self.upstream_blocks.values()) + [u for n, u in self.upstreams.items()
                                                            if n not in self.upstream_blocks]
        upstreams = [msgspec.structs.replace(u, tls=self.upstream_tls[u.name][0]) if u.name in self.upstream_tls
                     else u for u in upstreams]
        access_log, access_format = self.access_log(http, tls_servers)
        return Config(servers=model_servers, upstreams=upstreams, redirects=redirects, limits=limits,
                      sessions=sessions, workers=workers, acme_challenge_dir=self.challenge_dir,
                      user=user, group=group, access_log=access_log, access_log_format=access_format)

    def user(self, main: Level) -> tuple[str | None, str | None]:
        """``user NAME [GROUP]``: without GROUP, nginx takes the group of the same name (on
        Debian ``user nobody;`` then fails: the group is ``nogroup``)."""
        node = main.find("user")
        if node is None:
            return None, None
        name, group = node.args[0], node.args[1] if len(node.args) > 1 else node.args[0]
        try:
            resolve(name, group)
        except ConfigError as exc:
            raise node.error(exc.message) from None
        return name, group

    # -- access log ----------------------------------------------------------------------
    def access_log(self, http: Level, tls: list[_Server]) -> tuple[str | None, str]:
        """``access_log PATH [FORMAT] [buffer=] [flush=]`` / ``off`` and ``log_format`` -> the one
        access log of the model (path, format): its value must be the same for every TLS server and
        location, as fastterm writes one log (port-80 servers write their answers into it too)."""
        formats: dict[str, tuple[str, Node | None]] = {"combined": (COMBINED, None)}
        for node in http.own("log_format"):
            name, *parts = node.args
            if name in formats:
                raise node.error(f'duplicate "log_format" name "{name}"')
            if parts and parts[0].startswith("escape="):
                if parts[0] != "escape=default":
                    raise node.unsupported("fastterm escapes values as nginx's escape=default",
                                           f"log_format {parts[0]}")
                parts = parts[1:]
            formats[name] = ("".join(parts), node)
        levels = [s.level for s in tls] + [loc.level for s in tls for loc in s.locations]
        seen: list[tuple[tuple[str | None, str], Node | None]] = []
        for level in levels:
            nodes = level.find_all("access_log")
            seen.append((self._access_log_value(nodes, formats), nodes[0] if nodes else None))
        first, first_node = seen[0]
        for value, node in seen[1:]:
            if value != first:
                where = node or first_node
                raise where.unsupported(
                    f"a value differing between servers or locations ({first_node.where if first_node else 'none'}"
                    f" vs {node.where if node else 'none'}): fastterm writes one access log", "access_log")
        return first

    def _access_log_value(self, nodes: list[Node], formats: dict) -> tuple[str | None, str]:
        """One level's access_log lines -> (path or None, format for the model). No line: no log
        (nginx's compiled-in default, logs/access.log, is not written)."""
        logs = [n for n in nodes if n.args != ["off"]]
        if not logs:
            return None, "json"
        if len(logs) > 1:
            raise logs[1].unsupported("fastterm writes one access log", "access_log (a second one)")
        node = logs[0]
        path, *params = node.args
        if path.startswith("syslog:") or "$" in path:
            raise node.unsupported("a file without variables is", f"access_log {path}")
        name = "combined"
        if params and "=" not in params[0]:
            name = params.pop(0)
        for param in params:
            key = param.partition("=")[0]
            if key in ("buffer", "flush"):
                self.warn(f'{node.where}: "access_log ... {param}" is ignored: fastterm buffers 64k and '
                          'flushes each second')
            else:
                raise node.unsupported("", f"access_log ... {param}")
        if name not in formats:
            raise node.error(f'unknown log format "{name}"')
        template, where = formats[name]
        if name == "combined" or " ".join(template.split()) == " ".join(COMBINED.split()):
            return self.absolute(path), "combined"
        try:
            compile_format(template)
        except ValueError as exc:
            raise where.unsupported(str(exc), f"log_format {name}") from None
        return self.absolute(path), template

    def workers(self, main: Level) -> int | str:
        node = main.find("worker_processes")
        if node is None:
            return 1
        if node.args[0] == "auto":
            return "auto"
        count = _number(node, node.args[0])
        if not 1 <= count <= 256:
            raise node.error(f'"worker_processes" {count} is not supported: fastterm runs 1 to 256 workers')
        return count

    # -- upstreams -----------------------------------------------------------------------
    def upstream_block(self, node: Node) -> None:
        name = node.args[0]
        if name.lower() in {n.lower() for n in self.upstream_blocks}:
            raise node.error(f'duplicate upstream "{name}"')
        level = Level(node.block or [], node=node)
        for n in level.nodes:
            if n.name in MAPPED and n.name not in ("server", "keepalive", "keepalive_timeout", "least_conn"):
                raise n.unsupported("", f"{n.name} (in upstream)")
        servers = [self.upstream_server(srv) for srv in level.own("server")]
        if not servers:
            raise node.error(f'no servers are inside upstream "{name}"')
        if all("backup" in s.split()[1:] for s in servers):
            raise node.error(f'no servers in upstream "{name}"')   # nginx counts the primary ones
        options: dict = {"tries": len(servers), "max_conns": 0}
        timeouts = {w for s in servers for w in s.split()[1:] if w.startswith("fail_timeout=")}
        if len(timeouts) == 1 and all(next(iter(timeouts)) in s.split() for s in servers):
            # one value for all: the upstream's (nginx's default is 10s)
            options["fail_timeout"] = float(next(iter(timeouts)).partition("=")[2])
            servers = [" ".join(w for w in s.split() if not w.startswith("fail_timeout=")) for s in servers]
        if level.own("least_conn"):
            options["balance"] = "least_conn"
        keepalive = level.find("keepalive")
        if keepalive:
            count = _number(keepalive, keepalive.args[0])
            if count < 1:
                raise keepalive.invalid()
            options.update(keepalive=count, keepalive_max=count)
            self.keepalive_upstreams.add(name)
        timeout = level.find("keepalive_timeout")
        if timeout:
            options["keepalive_timeout"] = parse_time(timeout)
        self.upstream_blocks[name] = Upstream(name=name, servers=servers, **options)

    def upstream_server(self, node: Node) -> str:
        """``server ADDRESS [weight=N] [max_fails=N] [fail_timeout=T] [backup]`` -> the model's
        server string (the same parameters, fail_timeout in seconds)."""
        address = node.args[0]
        if address.startswith("unix:"):
            raise node.unsupported("unix sockets", "server unix:")
        text = self.host_port(node, address)
        params = []
        for param in node.args[1:]:
            key, eq, value = param.partition("=")
            if key in ("weight", "max_fails") and eq:
                if not value.isdigit() or key == "weight" and int(value) == 0:
                    raise node.error(f'invalid parameter "{param}"')
                if key == "weight" and int(value) > 1000:
                    raise node.unsupported("weights up to 1000", f"server ... {param}")
                if int(value) != 1:   # both default to 1
                    params.append(f"{key}={int(value)}")
            elif key == "fail_timeout" and eq:
                params.append(f"fail_timeout={parse_time(node, value):g}")
            elif param == "backup":
                params.append("backup")
            elif key in ("max_conns", "down", "resolve", "service", "route", "slow_start", "drain"):
                raise node.unsupported("", f"server ... {param}")
            else:
                raise node.error(f'invalid parameter "{param}"')
        return " ".join([text, *params])

    def host_port(self, node: Node, address: str, default_port: int = 80) -> str:
        """``host[:port]`` -> ``host:port`` / ``[v6]:port``; a name must resolve, as nginx checks."""
        if address.startswith("["):
            close = address.find("]")
            host, rest = address[1:close], address[close + 1:]
            port = rest[1:] if rest.startswith(":") else str(default_port)
        else:
            host, sep, port = address.rpartition(":")
            if not sep:
                host, port = address, str(default_port)
        if not port.isdigit() or not 0 < int(port) < 65536 or not host:
            raise node.error(f'invalid host or port in "{address}"')
        try:
            ipaddress.ip_address(host)
        except ValueError:
            try:
                socket.getaddrinfo(host, int(port), type=socket.SOCK_STREAM)
            except (OSError, UnicodeError):
                raise node.error(f'host not found in upstream "{address}"') from None
        return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"

    def proxy_pass(self, node: Node, regex: bool = False) -> tuple[str, str | None]:
        """The upstream a ``proxy_pass`` names (an upstream block, or an implicit one per
        host:port) and its URI part (None: the client's URI goes as it came)."""
        url = node.args[0]
        if "$" in url:
            raise node.unsupported("variables in the URL", f"proxy_pass {url}")
        m = _PASS_RE.fullmatch(url)
        if not m:
            if url.lower().startswith(("http://unix:", "https://unix:")):
                raise node.unsupported("unix sockets", f"proxy_pass {url}")
            raise node.error(f'invalid URL prefix in "{url}"')
        scheme, host, port, uri = m.groups()
        https = scheme.lower() == "https"
        if uri is not None and regex:
            raise node.error('"proxy_pass" cannot have URI part in location given by regular expression, '
                             'or inside named location, or inside "if" statement, or inside "limit_except" block')
        if uri is not None and (not uri.isascii() or any(c in uri for c in " #\r\n\0")):
            raise node.unsupported("a URI part with spaces, '#' or characters past ASCII", f"proxy_pass {url}")
        if uri is not None and "?" in uri:
            raise node.unsupported("a URI part with a query", f"proxy_pass {url}")
        if port is None:
            block = next((n for n in self.upstream_blocks if n.lower() == host.lower()), None)
            if block is not None:
                return block, uri
        elif host.lower() in {n.lower() for n in self.upstream_blocks}:
            raise node.error(f'upstream "{host}" may not have port {port}')
        address = self.host_port(node, host + (f":{port}" if port else ""), 443 if https else 80)
        name = address.removesuffix(":443" if https else ":80")    # nginx's $proxy_host
        if name not in self.upstreams:
            self.upstreams[name] = Upstream(name=name, servers=[address], tries=1, max_conns=0)
        return name, uri

    def proxy_tls(self, level: Level, upstream: str, node: Node) -> None:
        """``proxy_pass https://`` -> the upstream's TLS settings from the ``proxy_ssl_*`` the
        location sees. fastterm keeps them per upstream: two locations that reach one upstream
        with different ones are refused."""
        tls = self.proxy_ssl(level, upstream, node) if node.args[0].lower().startswith("https://") else None
        seen = self.upstream_tls.setdefault(upstream, (tls, node))
        if seen[0] != tls:
            raise node.unsupported(f'upstream "{upstream}" is reached at {seen[1].where} with other TLS settings '
                                   "(scheme or proxy_ssl_*): fastterm keeps TLS settings per upstream", "proxy_pass")

    def proxy_ssl(self, level: Level, upstream: str, node: Node) -> UpstreamTLS:
        """nginx's proxy_ssl_* with nginx's defaults: no verification, no SNI, the name
        $proxy_host without its port, session reuse on."""
        def flag(name: str, default: bool) -> bool:
            n = level.find(name)
            return default if n is None else n.args[0].lower() == "on"

        verify = flag("proxy_ssl_verify", False)
        trusted = level.find("proxy_ssl_trusted_certificate")
        ca_file = None
        if verify:
            if trusted is None:
                where = level.find("proxy_ssl_verify")
                raise where.error('no "proxy_ssl_trusted_certificate" for "proxy_ssl_verify"')
            ca_file = self.absolute(trusted.args[0])
            if not os.access(ca_file, os.R_OK):
                raise trusted.error(f'cannot read "{ca_file}" (proxy_ssl_trusted_certificate)')
        else:
            self.warn(f'{node.where}: "proxy_pass https://" without "proxy_ssl_verify on": the backend\'s '
                      'certificate is not checked (nginx\'s default); the safer setting is "proxy_ssl_verify on" '
                      'with "proxy_ssl_trusted_certificate"')
        depth = level.find("proxy_ssl_verify_depth")
        cert, key = level.find("proxy_ssl_certificate"), level.find("proxy_ssl_certificate_key")
        cert_path = key_path = None
        if cert is not None:
            if key is None:
                raise cert.error(f'no "proxy_ssl_certificate_key" is defined for certificate "{cert.args[0]}"')
            cert_path, key_path = self.absolute(cert.args[0]), self.absolute(key.args[0])
            try:
                load_certificate(cert_path, key_path)
            except ConfigError as exc:
                raise cert.error(f'cannot load certificate "{cert_path}": {exc.message}') from None
        name_node = level.find("proxy_ssl_name")
        name = upstream if name_node is None else name_node.args[0]
        if "$" in name and name != "$proxy_host":
            raise name_node.unsupported("variables other than $proxy_host", f"proxy_ssl_name {name}")
        if name == "$proxy_host":
            name = upstream
        name = _strip_port(name)
        protocols = ["TLSv1.2", "TLSv1.3"]
        proto_node = level.find("proxy_ssl_protocols")
        if proto_node is not None:
            protocols = []
            for proto in proto_node.args:
                if proto in REFUSED_PROTOCOLS:
                    self.warn(f'{proto_node.where}: "proxy_ssl_protocols {proto}" is ignored: fastterm refuses '
                              f"{proto}, deprecated by RFC 8996")
                elif proto in ("TLSv1.2", "TLSv1.3"):
                    protocols.append(proto)
                else:
                    raise proto_node.error(f'invalid value "{proto}" in "proxy_ssl_protocols" directive')
            if not protocols:
                raise proto_node.error('"proxy_ssl_protocols" leaves no protocol fastterm speaks: add TLSv1.2 '
                                       "and/or TLSv1.3")
        ciphers = level.find("proxy_ssl_ciphers")
        return UpstreamTLS(
            verify="required" if verify else "none", ca_file=ca_file,
            verify_depth=(_number(depth, depth.args[0]) if depth is not None else 1) if verify else None,
            server_name=name, sni=flag("proxy_ssl_server_name", False), cert=cert_path, key=key_path,
            protocols=list(dict.fromkeys(protocols)),
            ciphers=None if ciphers is None or ciphers.args[0] == "DEFAULT" else ciphers.args[0],
            session_reuse=flag("proxy_ssl_session_reuse", True))

    # -- servers -------------------------------------------------------------------------
    def server(self, node: Node, http: Level) -> _Server:
        level = Level(node.block or [], http, node)
        listens = [parse_listen(n, self.warn) for n in level.own("listen")]
        if not listens:
            listens = [Listen(("0.0.0.0", 80), False, False, False, node)]    # nginx: listen *:80
        names: dict[str, Node] = {}
        for n in level.own("server_name"):
            for name in n.args:
                for one in self.server_name(n, name):
                    names.setdefault(one, n)
        server = _Server(level, node, listens, names)
        for loc in level.own("location"):
            if len(loc.args) == 1 and loc.args[0].startswith("@"):
                server.named[loc.args[0][1:]] = self.named_location(loc, level)
                continue
            server.locations.append(self.location(loc, level))
        return server

    def server_name(self, node: Node, name: str) -> list[str]:
        """nginx's forms: exact, ``*.suffix``, ``.suffix`` (both), ``prefix.*``, ``~regex`` (kept
        as written: caseless when it has an upper-case letter, as nginx compiles it)."""
        if name.startswith("~"):
            from fastterm.config.plan import check_server_name, pcre_to_python

            try:
                pcre_to_python(name[1:])
            except ValueError as exc:
                raise node.unsupported(str(exc), f"server_name {name}") from None
            try:
                check_server_name(name)
            except ValueError as exc:
                raise node.error(f'"server_name": {exc}') from None
            return [name]
        name = name.lower()
        if "$" in name:
            raise node.unsupported("variables", f"server_name {name}")
        if name.startswith("."):
            return [name[1:], "*" + name]
        if "*" in name and not (name.startswith("*.") or name.endswith(".*")) or name.count("*") > 1 or \
                name in ("*.", ".*"):
            raise node.error(f'invalid server name or wildcard "{name}"')
        return [name] if name else []

    def named_location(self, node: Node, server: Level) -> Level:
        """``location @name``: what error_page may send a request to; fastterm answers its
        ``return`` (with its add_header), nothing else."""
        level = Level(node.block or [], server, node)
        for n in level.nodes:
            if n.name not in ("return", "add_header") and n.name not in IGNORED:
                raise n.unsupported("a named location only returns", f"{n.name} (in location {node.args[0]})")
        return level

    def location(self, node: Node, server: Level) -> _Location:
        args = list(node.args)
        for modifier in ("^~", "~*", "=", "~"):
            if len(args) == 1 and args[0].startswith(modifier) and len(args[0]) > len(modifier):
                args = [modifier, args[0][len(modifier):]]
                break
        exact = len(args) == 2 and args[0] == "="
        if len(args) == 2 and args[0] in ("^~", "="):
            path = args[1]
        elif len(args) == 1 and not args[0].startswith("@"):
            path = args[0]
        elif len(args) == 2 and args[0] in ("~", "~*"):
            return self.regex_location(node, server, args[0], args[1])
        elif len(args) == 1:
            raise node.unsupported("named locations", f"location {args[0]}")
        else:
            raise node.error(f'invalid location modifier "{args[0]}"')
        if not path.startswith("/"):
            raise node.unsupported("prefixes that do not start with /", f"location {path}")
        level = Level(node.block or [], server, node)
        for inner in level.own("location"):
            raise inner.unsupported("nested locations", "location")
        return _Location(level, path, node, exact, no_regex=args[0] == "^~")

    def regex_location(self, node: Node, server: Level, modifier: str, pattern: str) -> _Location:
        """``location ~ RE`` / ``~* RE``: Python re where it reads the PCRE pattern the same way;
        a construct it does not share is refused by name, one that does not compile is nginx's
        error (``pcre2_compile() failed``)."""
        from fastterm.config.plan import location_regex, pcre_to_python

        try:
            pcre_to_python(pattern)
        except ValueError as exc:
            raise node.unsupported(str(exc), f"location {modifier} {pattern}") from None
        try:
            location_regex(pattern, modifier == "~*")
        except ValueError as exc:
            raise node.error(f'"location {modifier}": {exc}') from None
        level = Level(node.block or [], server, node)
        for inner in level.own("location"):
            raise inner.unsupported("nested locations", "location")
        return _Location(level, pattern, node, regex=modifier)

    def check_defaults(self, servers: list[_Server]) -> None:
        """nginx: the default server of an address is its default_server, else the first; fastterm's
        default_server flag is per server block, so it must pick the same."""
        by_addr: dict[tuple[str, int], list[tuple[_Server, Listen]]] = {}
        for server in servers:
            for listen in server.listens:
                by_addr.setdefault(listen.addr, []).append((server, listen))
        for addr, entries in by_addr.items():
            defaults = [(s, listen) for s, listen in entries if listen.default]
            if len(defaults) > 1:
                raise defaults[1][1].node.error(f"a duplicate default server for {defaults[1][1].text}")
            nginx_default = defaults[0][0] if defaults else entries[0][0]
            marked = [s for s, _ in entries if any(listen.default for listen in s.listens)]
            ours = marked[0] if marked else entries[0][0]
            if ours is not nginx_default:
                listen = next(listen for listen in ours.listens if listen.default)
                here = next(x for _, x in entries if x.addr == addr)
                raise listen.node.unsupported(
                    f"this server is default_server on {listen.text} but not on {here.text}, "
                    "and fastterm's default_server applies to every address of a server block",
                    "listen ... default_server")

    def mark_tls(self, servers: list[_Server]) -> None:
        ssl_addrs = {listen.addr for s in servers for listen in s.listens if listen.ssl}
        for server in servers:
            flags = {listen.addr in ssl_addrs for listen in server.listens}
            if flags == {True, False}:
                plain = next(listen for listen in server.listens if listen.addr not in ssl_addrs)
                raise plain.node.unsupported(
                    "a server block listening with and without ssl: fastterm serves plain HTTP only as "
                    "the redirect to https", f"listen {plain.node.args[0]}")
            server.tls = flags == {True}

    # -- redirects -----------------------------------------------------------------------
    def redirects(self, plain: list[_Server]) -> list[Redirect]:
        """Each server without ``ssl`` -> a ``[[redirect]]`` block answering its ``return`` with
        nginx's semantics (``fastterm/redirect.py``); the Host picks among those of an address."""
        self.check_defaults(plain)
        out = []
        first: Node | None = None
        for server in plain:
            for loc in server.locations:
                root = self.challenge_webroot(loc)
                if root is None:
                    continue
                if first is not None and root != self.challenge_dir:
                    raise loc.node.unsupported(
                        f"a challenge location whose root differs from the one at {first.where}: fastterm "
                        "serves one acme_challenge_dir on every port-80 server", "location")
                first, self.challenge_dir = first or loc.node, root
        for server in plain:
            ret = self.redirect_return(server)
            status, location, text = self.return_answer(ret)
            self.unique_names(server, plain)    # nginx's warning; the first server keeps the name
            for name, node in server.names.items():
                if name.startswith("~") or name.endswith(".*"):
                    raise node.unsupported("on a server without \"listen ... ssl\" (its return picks by exact "
                                           "and *.suffix names)", f"server_name {name}")
            for n in server.level.find_all("error_page"):
                if str(status) in n.args[:-1]:
                    raise n.unsupported("on a server without \"listen ... ssl\" (its return's status)",
                                        "error_page")
            for n in server.level.find_all("add_header"):
                self.warn(f'{n.where}: "add_header" has no effect on the redirect server at '
                          f"{server.node.where}: fastterm's redirect sends no extra headers")
            for n in server.level.nodes:
                if n.name in MAPPED - {"listen", "server_name", "return", "location", "client_header_timeout",
                                       "keepalive_timeout", "keepalive_requests"}:
                    self.warn(f'{n.where}: "{n.name}" has no effect on a server without "listen ... ssl" '
                              "that only redirects")
            requests = server.level.find("keepalive_requests")
            keepalive_requests = _positive(lambda n: _number(n, n.args[0]))(requests) if requests else 1000
            idle = server.level.find("keepalive_timeout")
            keepalive_timeout, keepalive_header = 75.0, 0
            if idle is not None:
                keepalive_timeout = parse_time(idle)
                if len(idle.args) > 1:
                    keepalive_header = int(parse_time(idle, idle.args[1]))
                if keepalive_timeout == 0:     # nginx: keep-alive off
                    keepalive_requests, keepalive_timeout = 0, 75.0
            for listen in server.listens:
                if listen.proxy_protocol:
                    raise listen.node.unsupported("the PROXY protocol on a server without ssl",
                                                  "listen ... proxy_protocol")
            out.append(Redirect(listen=[listen.text for listen in server.listens], server_names=list(server.names),
                                default_server=any(listen.default for listen in server.listens), status=status,
                                location=location, text=text, keepalive_requests=keepalive_requests,
                                keepalive_timeout=keepalive_timeout, keepalive_header=keepalive_header))
        return out

    def return_answer(self, ret: Node) -> tuple[int, str | None, str | None]:
        """``return CODE URL`` / ``return CODE [TEXT]`` / ``return URL`` (302), as
        ngx_http_rewrite_return reads them -> (status, location, text)."""
        args = ret.args
        shown = "return " + " ".join(args)
        if len(args) == 1 and args[0].startswith(("http://", "https://", "$scheme")):
            status, value = 302, args[0]
        else:
            if not args[0].isdigit() or int(args[0]) > 999:
                raise ret.error(f'invalid return code "{args[0]}"')
            status, value = int(args[0]), (args[1] if len(args) > 1 else None)
        if value is not None:
            try:
                compile_template(value)
            except ValueError as exc:
                raise ret.unsupported("variables other than $scheme, $host, $http_host, $server_name, "
                                      "$server_port, $request_uri, $uri, $args, $query_string, $is_args",
                                      f"return ... ${exc.args[0]}") from None
        if status in REDIRECT_CODES:
            if value is None:
                raise ret.unsupported("a redirect without a URL", shown)
            return status, value, None
        if status == CLOSE_WITHOUT_RESPONSE:
            return status, None, None
        if 200 <= status < 300 or 400 <= status <= 599:
            return status, None, value
        raise ret.unsupported(f"status {status}: fastterm answers 2xx, 301, 302, 303, 307, 308, 4xx, 5xx",
                              shown)

    def redirect_return(self, server: _Server) -> Node:
        """The ``return`` of a plain server: on the server level, or in its one ``location /``
        (beside a certbot webroot location, ``challenge_webroot``: a server-level return would
        answer before it)."""
        level = server.level
        returns = level.own("return")
        if returns and not server.locations:
            return returns[0]
        locations = [loc for loc in server.locations if self.challenge_webroot(loc) is None]
        if not returns and len(locations) == 1 and locations[0].path == "/":
            loc = locations[0].level
            inner = loc.own("return")
            others = [n for n in loc.nodes if n.name != "return" and n.name not in IGNORED]
            if inner and not others:
                return inner[0]
        raise server.node.unsupported("a server without \"listen ... ssl\" is supported only with a \"return\" "
                                      "(on the server, or in its one \"location /\")", "server")

    def challenge_webroot(self, loc: _Location) -> str | None:
        """``location [^~] /.well-known/acme-challenge/ { root DIR; }`` on a plain server (certbot
        --webroot -w DIR writes the tokens there): DIR, fastterm's ``acme_challenge_dir``; None
        for any other location."""
        if loc.regex or loc.exact or not _challenge_path(loc.node):
            return None
        if any(n.name != "root" and n.name not in IGNORED for n in loc.level.nodes):
            return None
        root = loc.level.find("root")
        if root is None:
            raise loc.node.unsupported('a challenge location without "root" (nginx\'s default: html under its '
                                       "prefix)", "location")
        if "$" in root.args[0]:
            raise root.unsupported("variables", "root")
        return self.absolute(root.args[0])

    # -- TLS servers ---------------------------------------------------------------------
    def tls_server(self, s: _Server, all_tls: list[_Server]) -> Server:
        level = s.level
        answer = self.answer(level.own("return")[0]) if level.own("return") else None
        reject = level.find("ssl_reject_handshake")
        reject = reject is not None and parse_flag(reject)
        if not s.locations and answer is None and not reject:
            raise s.node.unsupported('a server without a "location" that has "proxy_pass": ' + _FILES,
                                     "server")
        names = self.unique_names(s, all_tls)
        routes, seen = [], {}
        for loc in s.locations:
            if not loc.regex and (loc.exact, loc.path) in seen:
                raise loc.node.error(f'duplicate location "{loc.path}"')
            if not loc.regex:
                seen[(loc.exact, loc.path)] = loc
            proxy = loc.level.own("proxy_pass")
            if loc.level.own("return"):
                routes.append(self.answer_route(loc, s))
                continue
            if not proxy:
                raise loc.node.unsupported('a location without "proxy_pass" or "return": ' + _FILES, "location")
            upstream, uri = self.proxy_pass(proxy[0], regex=bool(loc.regex))
            self.proxy_tls(loc.level, upstream, proxy[0])
            # proxy_redirect default (nginx's default): for a proxy_pass without a URI part, the
            # pattern is its URL and "/", the replacement "/"; with one, the URL and the
            # location's name (ngx_http_proxy_merge_loc_conf)
            redirect = loc.level.find("proxy_redirect")
            off = redirect is not None and redirect.args[0].lower() == "off"
            redirect_from, redirect_to = (proxy[0].args[0] + "/", "/") if uri is None else (proxy[0].args[0], loc.path)
            # nginx's auto_redirect (ngx_http_proxy_pass): /dir answered 301 to /dir/
            routes.append(Route(path=loc.path, upstream=upstream, proxy=self.proxy_request(loc.level, upstream),
                                slash_redirect=not loc.regex and len(loc.path) > 1 and loc.path.endswith("/"),
                                redirect_from="" if off else redirect_from, redirect_to=redirect_to,
                                exact=loc.exact, regex=loc.regex, no_regex=loc.no_regex, upstream_path=uri,
                                client_max_body_size=_body_limit(loc.level), **_proxy_timeouts(loc.level),
                                **self.route_responses(loc, s)))
        acme = self.server_acme(s)
        return Server(
            listen=[listen.text for listen in s.listens], certificates=self.certificates(s, reject, acme),
            server_names=names, default_server=any(listen.default for listen in s.listens),
            tls=self.tls_policy(s, all_tls), routes=routes,
            add_headers=self.add_headers(level), error_pages=self.error_pages(level, s), answer=answer,
            no_host="default", misdirected_request=False, client_max_body_size=_body_limit(level),
            reject_handshake=reject, acme=acme, **self.proxy_protocol(s))

    def proxy_protocol(self, s: _Server) -> dict:
        """``listen ... proxy_protocol`` with ``set_real_ip_from`` and ``real_ip_header proxy_protocol``
        in the server: fastterm's accept_proxy, the header taken from those peers and its source the
        client's $remote_addr (the locations' realip done once, at accept). nginx also takes the
        header from any other peer and keeps that peer as $remote_addr; fastterm closes such a
        connection unheard (an untrusted peer cannot name a client)."""
        listens = [listen for listen in s.listens if listen.proxy_protocol]
        if not listens:
            return {}
        header = s.level.find("real_ip_header")
        trusted = s.level.find_all("set_real_ip_from")
        if header is None or header.args[0].lower() != "proxy_protocol" or not trusted:
            raise listens[0].node.unsupported(
                'the PROXY protocol without "set_real_ip_from" and "real_ip_header proxy_protocol" in '
                "its server (fastterm takes PROXY headers only from the peers set_real_ip_from names)",
                "listen ... proxy_protocol")
        nets = []
        for n in trusted:
            if n.args[0].startswith("unix:"):
                raise n.unsupported("unix sockets", "set_real_ip_from unix:")
            try:
                nets.append(str(ipaddress.ip_network(n.args[0], strict=False)))
            except ValueError:
                raise n.invalid() from None
        return {"accept_proxy": True, "proxy_trusted": list(dict.fromkeys(nets))}

    def route_responses(self, loc: _Location, s: _Server) -> dict:
        """A location's add_header, error_page and proxy_intercept_errors where they differ from
        its server's (nginx's inheritance: a level with any add_header or error_page keeps only
        its own)."""
        options: dict = {}
        if loc.level.own("add_header"):
            options["add_headers"] = self.add_headers(loc.level)
        if loc.level.own("error_page"):
            options["error_pages"] = self.error_pages(loc.level, s)
        intercept = loc.level.find("proxy_intercept_errors")
        if intercept is not None and parse_flag(intercept):
            options["intercept_errors"] = True
        return options

    def answer_route(self, loc: _Location, s: _Server) -> Route:
        """A location that returns (nginx's rewrite phase runs before proxy_pass would)."""
        options = self.route_responses(loc, s)
        options.pop("intercept_errors", None)
        return Route(path=loc.path, exact=loc.exact, regex=loc.regex, no_regex=loc.no_regex,
                     client_max_body_size=_body_limit(loc.level), answer=self.answer(loc.level.own("return")[0]),
                     **options)

    def unique_names(self, s: _Server, servers: list[_Server]) -> list[str]:
        """nginx warns 'conflicting server name ... ignored' and keeps the first server's."""
        mine = {listen.addr for listen in s.listens}
        taken: set[str] = set()
        for other in servers:
            if other is s:
                break
            if mine & {listen.addr for listen in other.listens}:
                taken.update(other.names)
        kept = []
        for name, node in s.names.items():
            if name in taken:
                self.warn(f'{node.where}: conflicting server name "{name}", ignored')
            else:
                kept.append(name)
        return kept

    def certificates(self, s: _Server, reject: bool = False, acme: Acme | None = None) -> list[Certificate]:
        """``ssl_certificate`` + ``ssl_certificate_key`` pairs -> files; the pair
        ``$acme_certificate`` + ``$acme_certificate_key`` is the server's ``acme`` instead."""
        certs = s.level.find_all("ssl_certificate")
        keys = s.level.find_all("ssl_certificate_key")
        if not certs and reject:
            return []   # ssl_reject_handshake on: no handshake reaches a certificate here
        if not certs:
            listen = next(listen for listen in s.listens if listen.ssl) if any(
                listen.ssl for listen in s.listens) else s.listens[0]
            raise listen.node.error(f'no "ssl_certificate" is defined for the "listen ... ssl" directive '
                                    f"of the server at {s.node.where}")
        result = []
        for i, cert in enumerate(certs):
            if i >= len(keys):
                raise cert.error(f'no "ssl_certificate_key" is defined for certificate "{cert.args[0]}"')
            key = keys[i]
            if self.acme_pair(s, cert, key, acme):
                continue
            for n in (cert, key):
                if "$" in n.args[0] or n.args[0].startswith("data:"):
                    raise n.unsupported("variables and data: values", n.name)
            cert_path, key_path = self.absolute(cert.args[0]), self.absolute(key.args[0])
            for n, p in ((cert, cert_path), (key, key_path)):
                if not os.path.isfile(p):
                    raise n.error(f'cannot load {"certificate" if n is cert else "certificate key"} "{p}": '
                                  "No such file or directory")
            try:
                load_certificate(cert_path, key_path)
            except ConfigError as exc:
                raise cert.error(f'cannot load certificate "{cert_path}": {exc.message}') from None
            result.append(Certificate(cert=cert_path, key=key_path, ocsp_file=self.stapling_file(s)))
        if acme is not None and not any(_acme_variable(c, "acme_certificate") for c in certs):
            order = s.level.own("acme_certificate")[0]
            raise order.unsupported('a server whose "ssl_certificate" is not "$acme_certificate": nginx obtains '
                                    "this certificate and serves it nowhere, fastterm serves what it obtains",
                                    "acme_certificate")
        return result

    def acme_pair(self, s: _Server, cert: Node, key: Node, acme: Acme | None) -> bool:
        """Whether this pair is ``$acme_certificate`` + ``$acme_certificate_key`` (the
        certificate ``acme_certificate`` obtains); half of it, or either without an
        ``acme_certificate`` in the server, is an error at its line."""
        is_cert, is_key = _acme_variable(cert, "acme_certificate"), _acme_variable(key, "acme_certificate_key")
        if not (is_cert or is_key):
            return False
        if not is_key:
            raise key.error('"ssl_certificate $acme_certificate" goes with "ssl_certificate_key $acme_certificate_key"')
        if not is_cert:
            raise cert.error('"ssl_certificate_key $acme_certificate_key" goes with "ssl_certificate $acme_certificate"')
        if acme is None:
            raise cert.error(f'"$acme_certificate" without "acme_certificate" in the server at {s.node.where} '
                             "(nginx's variable is empty there: no certificate)")
        return True

    def stapling_file(self, s: _Server) -> str | None:
        """``ssl_stapling_file`` (read by nginx only with ``ssl_stapling on``): every certificate
        of the server staples it."""
        node = s.level.find("ssl_stapling_file")
        stapling = s.level.find("ssl_stapling")
        if node is None or stapling is None or not parse_flag(stapling):
            return None
        path = self.absolute(node.args[0])
        if not os.path.isfile(path):
            raise node.error(f'BIO_new_file("{path}") failed (No such file or directory)')
        return path

    def stapling(self, s: _Server) -> dict:
        """The ``tls.stapling*`` and ``trusted_certificate`` of a server, nginx's defaults
        (``ssl_stapling off``, ``ssl_stapling_verify off``, a 60 s responder timeout)."""
        level = s.level
        stapling, verify = level.find("ssl_stapling"), level.find("ssl_stapling_verify")
        responder, trusted = level.find("ssl_stapling_responder"), level.find("ssl_trusted_certificate")
        trusted_path = None
        if trusted is not None:
            from fastterm.certs.ocsp import read_trusted

            trusted_path = self.absolute(trusted.args[0])
            try:
                read_trusted(trusted_path)
            except ConfigError as exc:
                raise trusted.error(f'cannot load "{trusted_path}": {exc.message}') from None
        url = None
        if responder is not None:
            url = responder.args[0]
            if url.lower().startswith("https://"):
                raise responder.unsupported("https:// OCSP responders (nginx refuses them too)",
                                            f"ssl_stapling_responder {url}")
            if not url.lower().startswith("http://") or len(url) <= len("http://"):
                raise responder.error(f'invalid URL prefix in "{url}"')
        return {"stapling": parse_flag(stapling) if stapling else False,
                "stapling_verify": parse_flag(verify) if verify else False,
                "stapling_responder": url, "stapling_timeout": 60.0, "trusted_certificate": trusted_path}

    def protocols(self, s: _Server) -> tuple[list[str], Node | None]:
        node = s.level.find("ssl_protocols")
        if node is None:
            return ["TLSv1.2", "TLSv1.3"], None
        kept = []
        for proto in node.args:
            if proto in REFUSED_PROTOCOLS:
                self.warn(f'{node.where}: "ssl_protocols {proto}" is ignored: fastterm refuses {proto}, '
                          "deprecated by RFC 8996")
            elif proto in ("TLSv1.2", "TLSv1.3"):
                kept.append(proto)
            else:
                raise node.error(f'invalid value "{proto}" in "ssl_protocols" directive')
        if not kept:
            raise node.error('"ssl_protocols" leaves no protocol fastterm serves: add TLSv1.2 and/or TLSv1.3')
        return list(dict.fromkeys(kept)), node

    def session_cache(self, s: _Server) -> tuple[bool, dict[str, int], Node | None]:
        node = s.level.find("ssl_session_cache")
        if node is None:
            return False, {}, None
        zones: dict[str, int] = {}
        for arg in node.args:
            if arg in ("off", "none"):
                if len(node.args) > 1:
                    raise node.invalid(arg)
                return False, {}, node
            if arg.startswith("builtin"):
                raise node.unsupported("fastterm's cache is shared by all workers: use shared:NAME:SIZE",
                                       "ssl_session_cache builtin")
            parts = arg.split(":")
            if len(parts) != 3 or parts[0] != "shared" or not parts[1]:
                raise node.invalid(arg)
            zones[parts[1]] = parse_size(node, parts[2])
        return True, zones, node

    def alpn(self, s: _Server, all_tls: list[_Server]) -> list[str]:
        h2_addrs = {listen.addr for t in all_tls for listen in t.listens if listen.http2}
        flags = {listen.addr in h2_addrs for listen in s.listens}
        if len(flags) > 1:
            raise s.listens[0].node.unsupported(
                "a server block on addresses with and without http2: fastterm's ALPN is per server block",
                "listen ... http2")
        node = s.level.find("http2")
        h2 = flags == {True} or (node is not None and parse_flag(node))
        return ["h2", "http/1.1"] if h2 else ["http/1.1"]

    def tls_policy(self, s: _Server, all_tls: list[_Server]) -> TLSPolicy:
        level = s.level
        protocols, _ = self.protocols(s)
        cache, _, _ = self.session_cache(s)
        default = self.address_default(s, all_tls)
        if default is not s:
            for what, mine, theirs in (("ssl_protocols", protocols, self.protocols(default)[0]),
                                       ("ssl_session_cache", cache, self.session_cache(default)[0]),
                                       ("ssl_early_data", self.early_data(s), self.early_data(default))):
                if mine != theirs:
                    node = level.find(what) or s.node
                    self.warn(f'{node.where}: "{what}" of a server that is not the default of its address '
                              f"has no effect, as in nginx (OpenSSL applies the default server's, at "
                              f"{default.node.where})")
            protocols, cache = self.protocols(default)[0], self.session_cache(default)[0]
        ciphers = level.find("ssl_ciphers")
        prefer = level.find("ssl_prefer_server_ciphers")
        curve = level.find("ssl_ecdh_curve")
        timeout = level.find("ssl_session_timeout")
        tickets = level.find("ssl_session_tickets")
        dhparam = level.find("ssl_dhparam")
        dhparam_path = None
        if dhparam is not None:
            from fastterm.config.plan import read_dhparam

            dhparam_path = self.absolute(dhparam.args[0])
            try:
                read_dhparam(dhparam_path)
            except ValueError as exc:
                raise dhparam.error(str(exc)) from None
        suites = OPENSSL_CIPHERSUITES
        for cmd in level.find_all("ssl_conf_command"):
            if cmd.args[0].lower() != "ciphersuites":
                raise cmd.unsupported("only Ciphersuites", f"ssl_conf_command {cmd.args[0]}")
            suites = cmd.args[1]
        return TLSPolicy(
            protocols=protocols, ciphers=ciphers.args[0] if ciphers else INTERMEDIATE_CIPHERS,
            ciphersuites=suites,
            groups=curve.args[0] if curve and curve.args[0] != "auto" else INTERMEDIATE_GROUPS,
            prefer_server_ciphers=parse_flag(prefer) if prefer else False, session_cache=cache,
            session_timeout=parse_time(timeout) if timeout else 300.0,
            session_tickets=parse_flag(tickets) if tickets else True, alpn=self.alpn(s, all_tls),
            dhparam=dhparam_path, **self.stapling(s), early_data=self.early_data(default),
            **self.client_verify(s))

    def client_verify(self, s: _Server) -> dict:
        """``ssl_verify_client`` (off), ``ssl_client_certificate`` (read only when verifying, as
        nginx; needed but for optional_no_ca) and ``ssl_verify_depth`` (1)."""
        level = s.level
        node, ca, depth = level.find("ssl_verify_client"), level.find("ssl_client_certificate"), \
            level.find("ssl_verify_depth")
        mode = node.args[0] if node is not None else "off"
        if mode not in ("on", "off", "optional", "optional_no_ca"):
            raise node.error(f'invalid value "{mode}" in "ssl_verify_client" directive, it must be "on", '
                             f'"off", "optional" or "optional_no_ca"')
        verify_depth = _number(depth, depth.args[0]) if depth is not None else 1
        if mode == "off":
            return {"verify_depth": verify_depth}
        ca_path = None
        if ca is not None:
            from fastterm.config.toml import client_ca_problem

            ca_path = self.absolute(ca.args[0])
            problem = client_ca_problem(ca_path)
            if problem:
                raise ca.error(f'SSL_CTX_load_verify_locations("{ca_path}") failed ({problem})')
        elif mode != "optional_no_ca":
            raise node.error('no ssl_client_certificate for ssl_verify_client')
        return {"verify_client": mode, "client_ca": ca_path, "verify_depth": verify_depth}

    def early_data(self, s: _Server) -> bool:
        """``ssl_early_data`` (off by default). Like ssl_protocols it is the address's default
        server's: OpenSSL copies max_early_data into the connection before SNI switches it."""
        node = s.level.find("ssl_early_data")
        return parse_flag(node) if node is not None else False

    def address_default(self, s: _Server, all_tls: list[_Server]) -> _Server:
        """The default server of ``s``'s addresses (one server for all of them, else refused)."""
        found = set()
        for listen in s.listens:
            on_addr = [t for t in all_tls if any(x.addr == listen.addr for x in t.listens)]
            marked = [t for t in on_addr if any(x.addr == listen.addr and x.default for x in t.listens)]
            found.add(id((marked or on_addr)[0]))
            default = (marked or on_addr)[0]
        if len(found) > 1:
            raise s.listens[0].node.unsupported("a server whose addresses have different default servers",
                                                "listen")
        return default

    def add_headers(self, level: Level) -> list[AddHeader]:
        """``add_header NAME VALUE [always]`` as a level sees them: its own, else its nearest
        parent's (nginx merges the array only into levels that define none)."""
        from fastterm.config.plan import check_add_headers

        headers = []
        for n in level.find_all("add_header"):
            if len(n.args) == 3 and n.args[2] != "always":
                raise n.error(f'invalid parameter "{n.args[2]}"')
            if len(n.args) not in (2, 3):
                raise n.error('invalid number of arguments in "add_header" directive')
            name = n.args[0]
            if name.lower() in ("last-modified", "etag"):
                raise n.unsupported("nginx replaces the backend's field", f"add_header {name}")
            header = AddHeader(name=name, value=n.args[1], always=len(n.args) == 3)
            try:
                check_add_headers([header])
            except ValueError as exc:
                raise n.unsupported(str(exc), f"add_header {name} {n.args[1]}") from None
            headers.append(header)
        return headers

    def answer(self, ret: Node, named: bool = False) -> Answer:
        """``return CODE [URL|TEXT]`` / ``return URL`` in a TLS server or location, as
        ngx_http_rewrite_return reads it. ``named``: in a named location (static values only)."""
        from fastterm.config.plan import check_answer

        args = ret.args
        shown = "return " + " ".join(args)
        if len(args) == 1 and args[0].startswith(("http://", "https://", "$scheme")):
            status, value = 302, args[0]
        else:
            if not args[0].isdigit() or int(args[0]) > 999:
                raise ret.error(f'invalid return code "{args[0]}"')
            status, value = int(args[0]), (args[1] if len(args) > 1 else None)
        if status in REDIRECT_CODES:
            if value is None:
                raise ret.unsupported("a redirect without a URL", shown)
            answer = Answer(status=status, location=value)
        elif status == CLOSE_WITHOUT_RESPONSE or 200 <= status < 300 or 400 <= status <= 599:
            answer = Answer(status=status, text=value if status != CLOSE_WITHOUT_RESPONSE else None)
        else:
            raise ret.unsupported(f"status {status}: fastterm answers 2xx, 301, 302, 303, 307, 308, 4xx, 5xx",
                                  shown)
        if named and value is not None and "$" in value:
            raise ret.unsupported("variables in a named location's return", shown)
        try:
            check_answer(answer)
        except ValueError as exc:
            raise ret.unsupported(str(exc), shown) from None
        return answer

    def error_pages(self, level: Level, s: _Server) -> list[ErrorPage]:
        """``error_page CODE... [=[RESPONSE]] URL|@named`` as a level sees them (nginx's array
        rule): an absolute URL is a redirect, ``@named`` a named location that returns; a local
        URI would serve a file (refused)."""
        pages = []
        for n in level.find_all("error_page"):
            args = list(n.args)
            target = args.pop()
            status = None
            if args and args[-1].startswith("="):
                given = args.pop()[1:]
                if given and not given.isdigit():
                    raise n.error(f'invalid value "={given}"')
                status = int(given) if given else 0
            if not args:
                raise n.error('invalid number of arguments in "error_page" directive')
            codes = []
            for code in args:
                if not code.isdigit() or not 300 <= int(code) <= 599:
                    raise n.error(f'value "{code}" must be between 300 and 599')
                codes.append(int(code))
            if "$" in target:
                raise n.unsupported("variables", f"error_page ... {target}")
            if target.startswith("@"):
                loc = s.named.get(target[1:])
                if loc is None:
                    raise n.error(f'could not find named location "{target}"')
                returns = loc.own("return")
                if not returns:
                    raise n.unsupported("a named location that does not return", f"location {target}")
                answer = self.answer(returns[0], named=True)
                own = loc.own("add_header")
                headers = self.add_headers(loc) if own else None
                if any("$" in h.value for h in headers or ()):
                    raise own[0].unsupported("variables in a named location", "add_header")
                pages.append(ErrorPage(codes=codes, status=status,
                                       answer=msgspec.structs.replace(answer, add_headers=headers)))
            elif target.lower().startswith(("http://", "https://")):
                pages.append(ErrorPage(codes=codes, status=status, redirect=target))
            else:
                raise n.unsupported(_FILES + " (error_page to a local URI serves files)", f"error_page ... {target}")
        return pages

    def proxy_request(self, loc: Level, upstream: str) -> ProxyRequest:
        """nginx's upstream request (ngx_http_proxy_merge_headers): the level's proxy_set_header
        lines (a level with any does not inherit its parent's), then nginx's implicit ``Host
        $proxy_host`` and ``Connection close`` unless set; the backend connection is kept only
        with proxy_http_version 1.1, ``Connection ""`` and an upstream with ``keepalive``."""
        from fastterm.config.plan import template_parts

        version = loc.find("proxy_http_version")
        http_version = version.args[0] if version is not None else "1.0"
        if http_version not in ("1.0", "1.1"):
            raise version.error(f'invalid value "{http_version}" in "proxy_http_version" directive, it must '
                                'be "1.0" or "1.1"')
        headers: list[ProxyHeader] = []
        for n in loc.find_all("proxy_set_header"):
            name, value = n.args[0], n.args[1]
            m = _VARIABLE_RE.fullmatch(value)
            if m and (m[1] or m[2]) in self.upgrade_maps:
                value = "$connection_upgrade"
            if name.lower() in ("content-length", "transfer-encoding"):
                raise n.unsupported("fastterm frames the request body itself", f"proxy_set_header {name}")
            try:
                template_parts(value)
            except ValueError as exc:
                raise n.unsupported(str(exc), f"proxy_set_header {name} {value}") from None
            headers.append(ProxyHeader(name=name, value=value))
        named = {h.name.lower(): h.value for h in headers}
        for name, value in (("Host", "$proxy_host"), ("Connection", "close")):
            if name.lower() not in named:
                headers.append(ProxyHeader(name=name, value=value))
        keepalive = http_version == "1.1" and named.get("connection") == "" and upstream in self.keepalive_upstreams
        real_ip: dict = {}
        real = loc.find_all("set_real_ip_from")
        if real:
            for n in real:
                if n.args[0].startswith("unix:"):
                    raise n.unsupported("unix sockets", "set_real_ip_from unix:")
                try:
                    real_ip.setdefault("real_ip_from", []).append(str(ipaddress.ip_network(n.args[0], strict=False)))
                except ValueError:
                    raise n.invalid() from None
            header = loc.find("real_ip_header")
            if header is not None and header.args[0].lower() == "proxy_protocol":
                return ProxyRequest(http_version=http_version, headers=headers, keepalive=keepalive,
                                    hide_headers=self.hide_headers(loc), **self.next_upstream(loc))
            real_ip["real_ip_from"] = list(dict.fromkeys(real_ip["real_ip_from"]))
            real_ip["real_ip_header"] = header.args[0] if header is not None else "X-Real-IP"
        return ProxyRequest(http_version=http_version, headers=headers, keepalive=keepalive,
                            hide_headers=self.hide_headers(loc), **self.next_upstream(loc), **real_ip)

    def next_upstream(self, loc: Level) -> dict:
        """``proxy_next_upstream`` (default ``error timeout``; ``off`` wins over the rest, as
        nginx), ``proxy_next_upstream_tries`` and ``proxy_next_upstream_timeout`` (0: no limit)."""
        from fastterm.config.plan import NEXT_UPSTREAM

        got: dict = {}
        node = loc.find("proxy_next_upstream")
        if node is not None:
            words = [a.lower() for a in node.args]
            for word in words:
                if word in ("invalid_header", "updating"):
                    raise node.unsupported("", f"proxy_next_upstream {word}")
                if word not in NEXT_UPSTREAM and word != "off":
                    raise node.error(f'invalid value "{word}" in "proxy_next_upstream" directive')
            got["next_upstream"] = [] if "off" in words else list(dict.fromkeys(words))
        tries = loc.find("proxy_next_upstream_tries")
        if tries is not None:
            got["next_upstream_tries"] = _number(tries, tries.args[0])
        timeout = loc.find("proxy_next_upstream_timeout")
        if timeout is not None:
            got["next_upstream_timeout"] = parse_time(timeout)
        return got

    def hide_headers(self, loc: Level) -> list[str]:
        """nginx's hidden backend response fields (ngx_http_upstream_hide_headers_hash): its
        defaults and the ``proxy_hide_header`` lines, less the ``proxy_pass_header`` ones; each
        list is the nearest level's that has any. Date is never dropped: nginx writes its own in
        its place, fastterm has none and passes the backend's."""
        passed = {n.args[0].lower() for n in loc.find_all("proxy_pass_header")}
        names = [*_HIDDEN_BY_DEFAULT, *(n.args[0] for n in loc.find_all("proxy_hide_header"))]
        return list(dict.fromkeys(name for name in names
                                  if _TOKEN.fullmatch(name) and name.lower() not in passed and name.lower() != "date"))

    # -- ACME (nginx's ngx_http_acme_module) -----------------------------------------------
    def issuers(self, http: Level) -> dict[str, Acme]:
        """Each ``acme_issuer NAME { }`` -> an ``Acme`` without names (``acme_certificate``
        adds them per server). nginx's module refuses issuers without a ``resolver`` in http {}."""
        issuers: dict[str, Acme] = {}
        for node in http.own("acme_issuer"):
            if node.args[0] in issuers:
                raise node.error('"acme_issuer" directive is duplicate')
            issuers[node.args[0]] = self.acme_issuer(node)
        if issuers and not http.own("resolver"):
            raise http.own("acme_issuer")[0].error(
                'acme_issuer: "resolver" is not configured (nginx\'s ACME module needs one in http {}; '
                "fastterm itself uses the system resolver)")
        return issuers

    def acme_issuer(self, node: Node) -> Acme:
        """``uri`` (mandatory, the last one wins as in nginx) -> directory, ``contact`` -> email,
        ``state_path`` -> state_dir (absent: one directory per issuer under fastterm's),
        ``ssl_trusted_certificate`` -> ca_file, ``challenge``, ``accept_terms_of_service``."""
        name = node.args[0]
        level = Level(node.block or [], node=node)
        uri = level.find("uri")
        if uri is None:
            raise node.error(f'acme_issuer "{name}": "uri" is missing')
        directory = uri.args[0]
        m = _ACME_URI_RE.fullmatch(directory)
        if not m:
            raise uri.invalid()
        if m[1].lower() == "http":
            raise uri.unsupported("an ACME directory over plain http (RFC 8555 section 6.1: HTTPS)", f"uri {directory}")
        options: dict = {"directory": directory, "accept_terms": bool(level.own("accept_terms_of_service"))}
        contacts = level.own("contact")
        if len(contacts) > 1:
            raise contacts[1].unsupported("more than one contact: fastterm's ACME account has one e-mail address",
                                          "contact")
        if contacts:
            options["email"] = _acme_contact(contacts[0])
        state = level.find("state_path")
        if state is not None and state.args[0] == "off":
            raise state.unsupported("fastterm keeps the account key and the certificates on disk: name a directory",
                                    "state_path off")
        if state is not None:
            options["state_dir"] = self.absolute(state.args[0])
        elif "/" in name or name in (".", ".."):
            raise node.error(f'acme_issuer "{name}" without "state_path": its name is the name of its directory')
        else:
            options["state_dir"] = os.path.join(Acme().state_dir, name)
        challenge = level.find("challenge")
        if challenge is not None:
            options["challenge"] = _ACME_CHALLENGES.get(challenge.args[0])
            if options["challenge"] is None:
                raise challenge.error(f"unsupported challenge: {challenge.args[0]}")
        trusted = level.find("ssl_trusted_certificate")
        if trusted is not None:
            from fastterm.certs.ocsp import read_trusted

            options["ca_file"] = self.absolute(trusted.args[0])
            try:
                read_trusted(options["ca_file"])
            except ConfigError as exc:
                raise trusted.error(f'cannot load "{options["ca_file"]}": {exc.message}') from None
        account = level.find("account_key")
        if account is not None:
            if _acme_key(account, account.args[0]) is None:
                raise account.unsupported("an account key from a file: fastterm makes its own and keeps it in "
                                          "state_path", "account_key FILE")
            self.warn(f'{account.where}: "account_key {account.args[0]}" is ignored: fastterm makes its own '
                      "account key and keeps it in state_path")
        return Acme(**options)

    def server_acme(self, s: _Server) -> Acme | None:
        """``acme_certificate ISSUER [NAME...] [key=ecdsa:256|rsa:2048]`` -> the server's ``acme``:
        its issuer's settings, the names given, else those of ``server_name`` (nginx's reading:
        ``.example.com`` is www.example.com and example.com; regexes are skipped with a warning)."""
        orders = s.level.own("acme_certificate")
        if not orders:
            return None
        node = orders[0]
        acme = self.acme_issuers.get(node.args[0])
        if acme is None:
            raise node.error(f'issuer "{node.args[0]}" is missing')
        key_type, names = "ecdsa", []
        for arg in node.args[1:]:
            if arg.startswith("key="):
                kind = _acme_key(node, arg[4:])
                if kind is None:
                    raise node.error('"acme_certificate" directive invalid "key" value')
                if kind not in (("ecdsa", 256), ("rsa", 2048)):
                    raise node.unsupported("certificate keys other than ecdsa:256 (P-256) and rsa:2048",
                                           f"acme_certificate ... {arg}")
                key_type = kind[0]
            elif not arg:
                raise node.invalid(arg)
            else:
                names += _acme_identifier(node, arg)
        if not names:
            for n in s.level.own("server_name"):
                for arg in n.args:
                    if arg.startswith("~"):
                        self.warn(f'{n.where}: "acme_certificate": unsupported regular expression in server_name: {arg}')
                    elif arg:
                        names += _acme_identifier(n, arg)
            if not names:
                raise node.error('"acme_certificate": no identifiers found in "server_name"')
        acme = msgspec.structs.replace(acme, key_type=key_type, names=list(dict.fromkeys(names)))
        if acme.challenge == "tls-alpn-01" and all(listen.addr[1] != 443 for listen in s.listens):
            self.warn(f'{node.where}: the CA asks for tls-alpn-01 on port 443, where the server at {s.node.where} '
                      "does not listen (fine if port 443 is forwarded to it)")
        self.acme_orders.append((node, acme))
        return acme

    def check_challenges(self, plain: list[_Server]) -> None:
        """http-01: the CA asks ``http://NAME/.well-known/acme-challenge/TOKEN`` on port 80,
        answered on the plain-HTTP servers (the ``[[redirect]]`` listeners, as nginx's module
        answers on its plain servers), so there must be one."""
        http01 = [node for node, acme in self.acme_orders if acme.challenge == "http-01"]
        if not http01:
            return
        ports = sorted({listen.addr[1] for s in plain for listen in s.listens})
        if not ports:
            raise http01[0].error('"acme_certificate" with the http-01 challenge needs a server without ssl: the CA '
                                  "asks for its token over http on port 80 (add a server with \"listen 80\")")
        if 80 not in ports:
            self.warn(f'{http01[0].where}: the CA asks for http-01 tokens on port 80, where no server listens '
                      f"(only {', '.join(map(str, ports))}; fine if port 80 is forwarded there)")

    # -- global settings -----------------------------------------------------------------
    def limits(self, main: Level, events: Level, http: Level, tls: list[_Server], plain: list[_Server]) -> Limits:
        values: dict = {}
        for spec in _LIMITS:
            name, scope, default, parse, fld = spec
            scopes = [loc.level for s in tls for loc in s.locations] if scope == "location" else \
                [s.level for s in tls] + ([s.level for s in plain] if name == "client_header_timeout" else [])
            seen: list[tuple[object, Node | None]] = []
            for level in scopes:
                node = level.find(name)
                seen.append((default if node is None else parse(node), node))
            first, first_node = seen[0]
            for value, node in seen[1:]:
                if value != first:
                    where = node or first_node
                    raise where.unsupported(
                        f"a value differing between servers or locations ({first_node.where if first_node else 'default'}"
                        f" vs {node.where if node else 'default'}): fastterm's limits are global", name)
            if isinstance(first, tuple):    # one field each
                values.update(zip(fld, first))
            else:
                for one in (fld,) if isinstance(fld, str) else fld:
                    values[one] = first
        connections = events.find("worker_connections")
        if connections is not None:
            values["worker_connections"] = _number(connections, connections.args[0])
        drain = main.find("worker_shutdown_timeout")
        if drain is not None:
            values["drain_timeout"] = parse_time(drain)
        # nginx counts no header fields, only their bytes: fastterm's ceiling (ext/http.pxd
        # MAX_HEADER_SLOTS) instead of its own default of 100.
        values["max_header_fields"] = MAX_HEADER_FIELDS
        # per route and server in the model; the http level's for what a TOML reader sees
        values["client_max_body_size"] = _body_limit(http)
        values.update({f"backend_{name}": value for name, value in _proxy_timeouts(http).items()})
        return Limits(**values)

    def sessions(self, tls: list[_Server]) -> Sessions:
        zones: dict[str, tuple[int, Node]] = {}
        key_sets: list[tuple[list[str], Node | None]] = []
        for s in tls:
            _, found, node = self.session_cache(s)
            for name, size in found.items():
                other = zones.setdefault(name, (size, node))
                if other[0] != size:
                    raise node.error(f'the size {size} of shared memory zone "{name}" conflicts with already '
                                     f"declared size {other[0]}")
            keys = s.level.find_all("ssl_session_ticket_key")
            for n in keys:
                if not os.path.isfile(self.absolute(n.args[0])):
                    raise n.error(f'open() "{self.absolute(n.args[0])}" failed (No such file or directory)')
            key_sets.append(([self.absolute(n.args[0]) for n in keys], keys[0] if keys else None))
        first = key_sets[0][0]
        for keys, node in key_sets[1:]:
            if keys != first:
                raise (node or key_sets[0][1]).unsupported(
                    "ticket keys differing between servers: fastterm's ticket keys are shared by all",
                    "ssl_session_ticket_key")
        options: dict = {"ticket_key_file": first}
        if zones:
            options["cache_size"] = sum(size for size, _ in zones.values())
        return Sessions(**options)


_ACME_URI_RE = re.compile(r"(?i)(https?)://[^/?#\s]+[^\s]*")
_ACME_CHALLENGES = {"http": "http-01", "http-01": "http-01", "tls-alpn": "tls-alpn-01", "tls-alpn-01": "tls-alpn-01"}
_ACME_KEY_SIZES = {"ecdsa": ("256", "384", "521"), "rsa": ("2048", "3072", "4096")}
_DNS_LABEL = r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?"
_DNS_NAME_RE = re.compile(rf"(?=.{{1,253}}$)(?:{_DNS_LABEL}\.)*{_DNS_LABEL}")
_ACME_VARIABLE_RE = re.compile(r"\$(?:\{(\w+)\}|(\w+))")


def _challenge_path(node: Node) -> bool:
    """``location [^~] /.well-known/acme-challenge[/]``: where an ACME CA asks for http-01 tokens."""
    return node.name == "location" and len(node.args) in (1, 2) and node.args[:-1] in ([], ["^~"]) and \
        node.args[-1].rstrip("/") == "/.well-known/acme-challenge"


def _acme_variable(node: Node, name: str) -> bool:
    m = _ACME_VARIABLE_RE.fullmatch(node.args[0])
    return bool(m) and (m[1] or m[2]) == name


def _acme_key(node: Node, text: str) -> tuple[str, int] | None:
    """nginx's ACME module's ``ALG[:SIZE]`` (ecdsa 256, 384, 521; rsa 2048, 3072, 4096; the first
    without a size) -> (alg, size); None: not an algorithm (a file name)."""
    alg, sep, size = text.partition(":")
    if alg not in _ACME_KEY_SIZES:
        return None
    size = size if sep else _ACME_KEY_SIZES[alg][0]
    if size not in _ACME_KEY_SIZES[alg]:
        why = "unsupported curve" if alg == "ecdsa" else "unsupported key size"
        raise node.error(f'invalid value "{text}" in "{node.name}" directive: {why}')
    return alg, int(size)


def _acme_contact(node: Node) -> str:
    """``contact admin@example.com`` or ``mailto:admin@example.com`` (nginx adds mailto: to a
    value without a scheme) -> the e-mail address."""
    value = node.args[0]
    scheme = re.match(r"[A-Za-z][A-Za-z0-9+.-]*:", value)
    if scheme and scheme[0].lower() != "mailto:":
        raise node.unsupported("contacts other than e-mail addresses (mailto:)", f"contact {value}")
    email = value[len(scheme[0]):] if scheme else value
    local, at, domain = email.rpartition("@")
    if not (local and at and domain) or any(c.isspace() for c in email):
        raise node.invalid(value)
    return email


def _acme_identifier(node: Node, text: str) -> list[str]:
    """One name for the certificate, as nginx's ACME module reads it: an IP address (canonical
    form), a DNS name (lowercased), ``.example.com`` for www.example.com and example.com.
    Wildcards are refused: a CA validates them only over dns-01, which neither fastterm nor
    nginx's module answers."""
    try:
        return [str(ipaddress.ip_address(text))]
    except ValueError:
        pass
    name = text.lower()
    host = name.removeprefix(".")
    if host.startswith("*."):
        raise node.unsupported("wildcard names (a CA validates them only over dns-01, which neither fastterm nor "
                               "nginx's ACME module answers)", f"{node.name} ... {text}")
    if not _DNS_NAME_RE.fullmatch(host):
        raise node.error(f'"acme_certificate": invalid server name "{text}"')
    return [f"www.{host}", host] if name.startswith(".") else [host]


def _body_limit(level: Level) -> int:
    """client_max_body_size as a server or location sees it (its own, else inherited; nginx's
    default 1m); 0: no limit."""
    node = level.find("client_max_body_size")
    return 1 << 20 if node is None else parse_size(node)


def _keepalive_timeout(node: Node) -> tuple[float, int]:
    """(idle timeout, the Keep-Alive: timeout=N header's N or 0): nginx's two values."""
    value = parse_time(node)
    if value == 0:
        raise node.unsupported("keep-alive off", "keepalive_timeout 0")
    header = int(parse_time(node, node.args[1])) if len(node.args) > 1 else 0
    return value, header


def _header_buffers(node: Node) -> tuple[int, int]:
    """(N x SIZE, SIZE): the head's total and the longest line (nginx: one buffer)."""
    number, size = _number(node, node.args[0]), parse_size(node, node.args[1])
    if number <= 0 or size <= 0:
        raise node.invalid()
    return number * size, size


def _positive(parse):
    def check(node: Node):
        value = parse(node)
        if value <= 0:
            raise node.invalid()
        return value
    return check


MAX_HEADER_FIELDS = 256   # ext/http.pxd MAX_HEADER_SLOTS: the most fields fastterm parses in one head

# (directive, scope, nginx default, parser, Limits field or fields): scope "location" means every location
# of every TLS server sees one value; "server" every TLS server.
_LIMITS = [
    ("client_header_timeout", "server", 60.0, _positive(parse_time), "client_header_timeout"),
    ("keepalive_timeout", "location", (75.0, 0), _keepalive_timeout, ("keepalive_timeout", "keepalive_header")),
    ("send_timeout", "location", 60.0, _positive(parse_time), "send_timeout"),
    ("underscores_in_headers", "server", False, parse_flag, "underscores_in_headers"),
    ("large_client_header_buffers", "server", (4 * 8192, 8192), _header_buffers,
     ("header_buffer_size", "header_line_size")),
    ("http2_max_concurrent_streams", "server", 128, lambda n: _number(n, n.args[0]),
     "http2_max_concurrent_streams"),
    ("keepalive_requests", "location", 1000, _positive(lambda n: _number(n, n.args[0])),
     ("keepalive_requests", "http2_max_requests")),
    ("keepalive_time", "location", 3600.0, _positive(parse_time), "keepalive_time"),
    ("client_body_timeout", "location", 60.0, _positive(parse_time), "client_body_timeout"),
]

# per location (Route fields), nginx's inheritance; the http level's are the limits'
_PROXY_TIMEOUTS = (("proxy_connect_timeout", "connect_timeout"), ("proxy_read_timeout", "read_timeout"),
                   ("proxy_send_timeout", "send_timeout"))


def _proxy_timeouts(level: Level) -> dict[str, float]:
    """A location's proxy_connect_timeout, proxy_read_timeout, proxy_send_timeout: its own, else its
    server's, else the http level's, else nginx's 60s."""
    values = {}
    for directive, name in _PROXY_TIMEOUTS:
        node = level.find(directive)
        values[name] = 60.0 if node is None else _positive(parse_time)(node)
    return values


def load_config(path: str, warn: Warn | None = None) -> Config:
    """Read, map and validate an nginx configuration; raise ``ConfigError`` at file:line.
    ``warn(message, level=...)`` hears each accepted-but-ignored directive once."""
    from fastterm.config.toml import KeyLines, _Checker

    try:
        config = _Builder(path, warn or (lambda message, level="warn": None)).build(read(path))
    except (ValueError, KeyError, IndexError, TypeError, AttributeError) as exc:
        # A shape of input this front-end did not foresee: an error for `check`, never a master
        # that dies on reload. The exception says what to fix here.
        raise ConfigError(f"cannot map this configuration ({type(exc).__name__}: {exc})", file=path) from exc
    # The TOML front-end's semantic checks on the same model: what `convert`'s output must pass.
    return _Checker(path, KeyLines("")).check(config)
