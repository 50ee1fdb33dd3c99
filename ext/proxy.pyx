# The proxy data path. Client side: OpenSSL reads and writes the accepted
# socket itself (SSL_set_fd), as nginx, HAProxy and hitch do: no ciphertext
# copy. Client and listening sockets sit in the worker's own epoll set, which
# uvloop watches as one fd: a loop iteration costs one Python callback, and
# each ready connection is a C call (no uvloop handle per connection). Backend side: uvloop BufferedProtocol into one
# worker-owned buffer, whose bytes go to SSL_write without a Python object.
#
# Buffers belong to the worker and are lent per event; an idle connection
# holds only its SSL object (RELEASE_BUFFERS) and this small struct.

import asyncio
import ipaddress
import logging
import os
import socket

from libc.stdlib cimport malloc, free
from libc.string cimport memcpy
from cpython.bytes cimport PyBytes_FromStringAndSize, PyBytes_AS_STRING, PyBytes_GET_SIZE
from cpython.bytearray cimport PyByteArray_AS_STRING, PyByteArray_GET_SIZE

cdef enum:
    MAX_EVENTS = 256
    RBUF_SIZE = 65536
    BACKEND_BUF_SIZE = 65536
    MAX_RESPONSE_HEAD = 65536
    LINGER_SECONDS = 2
    MAX_ATTEMPTS = 3

_log = logging.getLogger("fastterm.proxy")

_PLAIN_BODY = (b"<html><head><title>400 The plain HTTP request was sent to HTTPS port</title></head>"
               b"<body><h1>400 Bad Request</h1>The plain HTTP request was sent to HTTPS port<hr>fastterm"
               b"</body></html>\r\n")
cdef bytes _PLAIN_HTTP_400 = (b"HTTP/1.1 400 Bad Request\r\nServer: fastterm\r\nContent-Type: text/html\r\n"
                              b"Content-Length: %d\r\nConnection: close\r\n\r\n" % len(_PLAIN_BODY)) + _PLAIN_BODY
_REASONS = {400: "Bad Request", 404: "Not Found", 408: "Request Timeout", 413: "Content Too Large",
            431: "Request Header Fields Too Large", 500: "Internal Server Error", 502: "Bad Gateway",
            503: "Service Unavailable", 504: "Gateway Timeout"}
COUNTER_NAMES = _COUNTER_NAMES = ("connections_total", "connections_open", "handshakes_full", "handshakes_resumed",
                  "handshakes_failed", "requests_total", "responses_1xx", "responses_2xx",
                  "responses_3xx", "responses_4xx", "responses_5xx", "backend_connects",
                  "backend_errors", "backend_reused", "bytes_in", "bytes_out",
                  "handshake_failed_protocol", "handshake_failed_no_shared_cipher",
                  "handshake_failed_no_application_protocol", "handshake_failed_eof",
                  "handshake_failed_timeout", "handshake_failed_http_request", "handshake_failed_other",
                  "tls_version_TLSv1.2", "tls_version_TLSv1.3", "cipher_aes128gcm", "cipher_aes256gcm",
                  "cipher_chacha20", "cipher_other")
# OpenSSL reason text -> failure counter (the reason strings are stable across 3.x).
_FAILURE_REASONS = (("unsupported protocol", N_HS_FAIL_PROTOCOL), ("wrong version number", N_HS_FAIL_PROTOCOL),
                    ("version too low", N_HS_FAIL_PROTOCOL), ("no shared cipher", N_HS_FAIL_CIPHER),
                    ("no suitable", N_HS_FAIL_CIPHER), ("no application protocol", N_HS_FAIL_ALPN),
                    ("http request", N_HS_FAIL_HTTP))


cdef class Worker:
    """Per-process state: lent buffers, limits, counters, the sweep timer."""

    def __cinit__(self):
        self.rbuf = <char *>malloc(RBUF_SIZE)
        self.slots = <HeaderSlot *>malloc(sizeof(HeaderSlot) * MAX_HEADER_SLOTS)
        self.events = <epoll_event *>malloc(sizeof(epoll_event) * MAX_EVENTS)
        self.epfd = -1
        if self.rbuf == NULL or self.slots == NULL or self.events == NULL:
            raise MemoryError()
        cdef int i
        for i in range(<int>N_COUNTERS):
            self.own_counters[i] = 0
        self.counters = self.own_counters

    def __init__(self, loop, limits):
        self.loop = loop
        self.backend_buf = bytearray(BACKEND_BUF_SIZE)
        self.backend_view = memoryview(self.backend_buf)
        self.client_buf = bytearray(RBUF_SIZE)
        self.backend_view_in = memoryview(self.client_buf)
        self.writer = HeadWriter(32768)
        self.clients = set()
        self.now = loop.time()
        self.draining = False
        self.header_buffer_size = limits.header_buffer_size
        self.max_header_fields = min(limits.max_header_fields, MAX_HEADER_SLOTS)
        self.client_max_body_size = limits.client_max_body_size
        self.header_timeout = limits.client_header_timeout
        self.keepalive_timeout = limits.keepalive_timeout
        self.connect_timeout = limits.backend_connect_timeout
        self.read_timeout = limits.backend_read_timeout
        self.sweep_handle = loop.call_later(1.0, self._sweep)
        self.by_fd = {}
        self.epfd = epoll_create1(EPOLL_CLOEXEC)
        if self.epfd < 0:
            raise OSError(errno, "epoll_create1 failed")
        loop.add_reader(self.epfd, self._on_events)

    def __dealloc__(self):
        free(self.rbuf)
        free(self.slots)
        free(self.events)
        if self.epfd >= 0:
            close(self.epfd)

    cdef int poll(self, int fd, unsigned int old_mask, unsigned int new_mask):
        """Change what we wait for on ``fd``. A socket we wait on for nothing leaves the
        set, so a hang-up can't wake a paused connection in a loop."""
        cdef epoll_event ev
        ev.events = new_mask
        ev.data.fd = fd
        if new_mask == old_mask:
            return 0
        if new_mask == 0:
            return epoll_ctl(self.epfd, EPOLL_CTL_DEL, fd, &ev)
        return epoll_ctl(self.epfd, EPOLL_CTL_ADD if old_mask == 0 else EPOLL_CTL_MOD, fd, &ev)

    def _on_events(self):
        cdef int n, i, fd
        cdef unsigned int ev
        cdef ClientConnection conn
        self.now = self.loop.time()   # deadlines set below count from now, not from the last sweep
        n = epoll_wait(self.epfd, self.events, MAX_EVENTS, 0)
        for i in range(n):
            fd = self.events[i].data.fd
            ev = self.events[i].events
            obj = self.by_fd.get(fd)
            if obj is None:
                continue
            if isinstance(obj, ClientConnection):
                conn = <ClientConnection>obj
                if ev & EPOLLOUT and conn.writing:
                    conn.on_writable()
                if ev & (EPOLLIN | EPOLLERR | EPOLLHUP) and conn.reading and conn.fd == fd:
                    conn.on_readable()
            else:
                (<Listener>obj).on_readable()

    cdef inline void count(self, int counter, long long n=1):
        self.counters[counter] += n

    def _sweep(self):
        """Timeouts: one pass a second over the connections finds those due before the next
        pass, and a loop timer expires each at its own deadline. Expiring at the pass all that
        were due (their deadlines counted from the pass's clock, so a second's worth shared
        one) closed them in batches; the clients of a slow-header flood reopen at once, and
        came back as a burst of full handshakes in one loop iteration, ahead of everyone's
        new connections: new-connection p99 x2 under 500 such connections, where nginx's
        per-connection timers keep it near x1.1. A deadline set between passes less than a
        second ahead (a timeout under 1 s) is still found only by the next pass."""
        cdef ClientConnection conn
        cdef double now = self.loop.time(), horizon = now + 1.0
        self.now = now
        for obj in list(self.clients):
            conn = <ClientConnection>obj
            if conn.deadline <= now:
                conn._expire()
            elif conn.deadline < horizon:
                self.loop.call_at(conn.deadline, conn._on_deadline, conn.deadline)
        self.sweep_handle = self.loop.call_at(horizon, self._sweep)

    def use_counter_slot(self, SharedState shared, int slot):
        """Count into shared memory so the master can add up every worker."""
        cdef int i
        self.shared = shared
        self.counters = <long long *>shared.region.workers[slot].counters
        for i in range(<int>N_COUNTERS):
            self.counters[i] += self.own_counters[i]

    def stats(self):
        return {name: self.counters[i] for i, name in enumerate(_COUNTER_NAMES)}

    def drain(self):
        """Stop reusing client connections: each one's next response carries
        ``Connection: close`` and it closes after it. Idle ones are left open (the
        caller closes them at its drain deadline): closing an idle keep-alive at once
        races with a request the client is sending, and that request would fail."""
        self.draining = True

    def close(self):
        if self.sweep_handle is not None:
            self.sweep_handle.cancel()
            self.sweep_handle = None
        for conn in list(self.clients):
            (<ClientConnection>conn).close()
        if self.epfd >= 0:
            self.loop.remove_reader(self.epfd)


cdef class ServerPolicy:
    """The HTTP side of one server block: routes, HSTS, trusted proxies."""

    def __init__(self, str name, routes, hsts=None, trusted_proxies=()):
        self.name = name
        self.routes = sorted(((p.encode(), pool) for p, pool in routes), key=lambda r: -len(r[0]))
        self.hsts_line = b"Strict-Transport-Security: " + hsts.encode("latin-1") + b"\r\n" if hsts else b""
        self.trusted = tuple(ipaddress.ip_network(n, strict=False) for n in trusted_proxies)

    cdef UpstreamPool route(self, const char *target, int n):
        cdef bytes prefix
        for prefix, pool in self.routes:
            if PyBytes_GET_SIZE(prefix) <= n and memcmp(target, PyBytes_AS_STRING(prefix),
                                                        PyBytes_GET_SIZE(prefix)) == 0:
                return pool
        return None

    cdef bint is_trusted(self, str ip):
        if not self.trusted:
            return False
        try:
            addr = ipaddress.ip_address(ip)
        except ValueError:
            return False
        return any(addr in net for net in self.trusted)


cdef class UpstreamPool:
    """Round-robin servers, each with a LIFO of idle keep-alive connections."""

    def __init__(self, str name, servers, int keepalive=32, double fail_timeout=10.0):
        self.name = name
        self.host_header = name.encode("ascii", "replace")   # nginx's $proxy_host
        self.servers = list(servers)
        self.idle = [[] for _ in self.servers]
        self.down_until = [0.0] * len(self.servers)
        self.rr = 0
        self.keepalive = keepalive
        self.fail_timeout = fail_timeout

    cdef int next_server(self, double now):
        """Round robin over servers not ejected; when all are, the one back soonest
        (nginx max_fails=1 fail_timeout=10s: a dead server costs one failed connect,
        not one per request)."""
        cdef int n = len(self.servers), k, s, best = -1
        for k in range(n):
            s = (self.rr + k) % n
            if self.down_until[s] <= now:
                self.rr = (s + 1) % n
                return s
            if best < 0 or self.down_until[s] < self.down_until[best]:
                best = s
        self.rr = (best + 1) % n
        return best

    cdef void mark_failed(self, int server, double now):
        self.down_until[server] = now + self.fail_timeout
        for conn in list(self.idle[server]):
            (<BackendConnection>conn).abort()

    def ejected(self, double now):
        return [self.servers[i] for i in range(len(self.servers)) if self.down_until[i] > now]

    cdef BackendConnection take_idle(self, int server):
        cdef list idle = self.idle[server]
        if idle:
            return idle.pop()
        return None

    cdef void release(self, BackendConnection conn):
        cdef list idle = self.idle[conn.server]
        conn.state = B_IDLE
        conn.client = None
        idle.append(conn)
        if len(idle) > self.keepalive:
            (<BackendConnection>idle.pop(0)).abort()

    def idle_count(self):
        return sum(len(i) for i in self.idle)


cdef class Listener:
    """One listening socket of this worker; accepts in C, no Python socket per connection."""

    def __init__(self, Worker worker, sock, TLSContext context):
        self.worker = worker
        self.sock = sock
        self.fd = sock.fileno()
        self.context = context
        self.active = False

    def start(self):
        self.sock.setblocking(False)
        self.worker.by_fd[self.fd] = self
        self.worker.poll(self.fd, 0, EPOLLIN)
        self.active = True

    def stop(self):
        if self.active:
            self.worker.poll(self.fd, EPOLLIN, 0)
            self.worker.by_fd.pop(self.fd, None)
            self.active = False

    cdef void on_readable(self):
        cdef sockaddr_storage addr
        cdef socklen_t alen
        cdef int fd, one = 1, i
        cdef char text[INET6_ADDRSTRLEN + 1]
        cdef const void *src
        cdef ClientConnection conn
        for i in range(64):
            alen = sizeof(addr)
            fd = accept4(self.fd, <sockaddr *>&addr, &alen, SOCK_NONBLOCK | SOCK_CLOEXEC)
            if fd < 0:
                if errno == EMFILE or errno == ENFILE:
                    _log.error("accept: out of file descriptors")
                return
            setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one))
            if addr.ss_family == AF_INET6:
                src = &(<sockaddr_in6 *>&addr).sin6_addr
            else:
                src = &(<sockaddr_in *>&addr).sin_addr
            if inet_ntop(addr.ss_family, src, text, sizeof(text)) == NULL:
                text[0] = 0
            conn = ClientConnection.__new__(ClientConnection)
            conn.worker = self.worker
            conn.fd = fd
            conn.context = self.context
            conn.peer_ip_b = <bytes>text
            conn.peer_ip = conn.peer_ip_b.decode("ascii")
            try:
                conn.start()
            except Exception:
                _log.exception("cannot start connection")
                close(fd)


cdef class ClientConnection:
    """One client TLS connection and the request/response in flight on it."""

    def __cinit__(self):
        self.fd = -1
        self.state = C_CLOSED
        framer_init(&self.req_body, BODY_NONE, 0)

    cdef void start(self):
        cdef Worker w = self.worker
        self.tls = TLSConnection(self.context, self.fd)
        self.state = C_HANDSHAKE
        self.deadline = w.now + w.header_timeout
        w.clients.add(self)
        w.count(N_CONNECTIONS)
        w.count(N_CONNECTIONS_OPEN)
        w.by_fd[self.fd] = self
        self._want_read(True)
        self._handshake()

    cdef void on_readable(self):
        if self.state == C_HANDSHAKE:
            self._handshake()
        elif self.state == C_LINGER:
            self._linger()
        else:
            self._read_loop()

    cdef void on_writable(self):
        if self.state == C_HANDSHAKE:
            self._handshake()
            return
        self._flush()
        if self.read_wants_write and self.state != C_CLOSED:
            self.read_wants_write = False
            self._read_loop()

    cdef unsigned int _mask(self):
        return (EPOLLIN if self.reading else 0) | (EPOLLOUT if self.writing else 0)

    cdef void _interest(self, bint reading, bint writing):
        cdef unsigned int old = self._mask()
        self.reading = reading
        self.writing = writing
        if self.fd >= 0:
            self.worker.poll(self.fd, old, self._mask())

    cdef void _want_write(self, bint on):
        self._interest(self.reading, on)

    cdef void _want_read(self, bint on):
        self._interest(on, self.writing)

    # ---- Handshake flow -------------------------------------------------
    cdef void _handshake(self):
        cdef Worker w = self.worker
        cdef int r = self.tls.handshake()
        if r == TLS_OK:
            self._want_write(False)
            self._count_handshake(r)
            self.server = _context_of(self.tls.ssl, self.context).server
            self.trusted = self.server.is_trusted(self.peer_ip)
            self.state = C_IDLE
            if w.draining:
                self.close_after = True
            self._read_loop()
        elif r == TLS_WANT_READ:
            self._want_write(False)
        elif r == TLS_WANT_WRITE:
            self._want_write(True)
        else:
            self._count_handshake(r)
            if r == TLS_EOF or r == TLS_CLOSED:
                _log.debug("%s closed the connection during the handshake", self.peer_ip)
            else:
                _log.info("handshake failed from %s: %s", self.peer_ip, self.tls.error)
                if self.tls.error and "http request" in self.tls.error:
                    # Plain HTTP on the TLS port: say so in plain HTTP, as nginx does.
                    send(self.fd, PyBytes_AS_STRING(_PLAIN_HTTP_400), len(_PLAIN_HTTP_400), MSG_NOSIGNAL)
                    self._finish()
                    return
            self.close()

    cdef void _count_handshake(self, int result):
        cdef Worker w = self.worker
        cdef const char *name
        cdef int counter = N_HS_FAIL_OTHER
        if result == TLS_OK:
            w.count(N_HANDSHAKES_RESUMED if SSL_session_reused(self.tls.ssl) else N_HANDSHAKES_FULL)
            w.count(N_TLS13 if SSL_version(self.tls.ssl) == TLS1_3_VERSION else N_TLS12)
            name = SSL_CIPHER_get_name(SSL_get_current_cipher(self.tls.ssl))
            if strstr(name, "CHACHA20") != NULL:
                w.count(N_CIPHER_CHACHA20)
            elif strstr(name, "AES_128_GCM") != NULL or strstr(name, "AES128-GCM") != NULL:
                w.count(N_CIPHER_AES128GCM)
            elif strstr(name, "AES_256_GCM") != NULL or strstr(name, "AES256-GCM") != NULL:
                w.count(N_CIPHER_AES256GCM)
            else:
                w.count(N_CIPHER_OTHER)
            return
        w.count(N_HANDSHAKES_FAILED)
        if result == TLS_EOF or result == TLS_CLOSED:
            counter = N_HS_FAIL_EOF
        elif result == TLS_WANT_READ:
            counter = N_HS_FAIL_TIMEOUT
        else:
            error = self.tls.error or ""
            for text, reason in _FAILURE_REASONS:
                if text in error:
                    counter = reason
                    break
        w.count(counter)

    # ---- Request flow ---------------------------------------------------
    cdef bint _accepting(self):
        if self.state == C_IDLE or self.state == C_HEAD:
            return self.held is None
        if self.state == C_BODY:
            return self.backend is not None and not self.backend_full and self.held is None
        return False

    cdef void _read_loop(self):
        cdef Worker w = self.worker
        cdef int n
        while self.state != C_CLOSED and self.state != C_LINGER:
            if not self._accepting():
                self._want_read(False)   # resumed by _resume(); the kernel buffers meanwhile
                return
            n = self.tls.read_into(w.rbuf, RBUF_SIZE)
            if n > 0:
                w.count(N_BYTES_IN, n)
                self._on_plaintext(w.rbuf, n)
                if n < RBUF_SIZE and self.fd >= 0 and self.tls is not None and \
                        not SSL_has_pending(self.tls.ssl):
                    # OpenSSL holds nothing more; the loop polls level-triggered, so the
                    # socket wakes us again if it has more: saves a read() per event.
                    return
                continue
            if n == TLS_WANT_READ:
                return
            if n == TLS_WANT_WRITE:
                self.read_wants_write = True
                self._want_write(True)
                return
            # close_notify, EOF or error from the client
            if n == TLS_FAILED:
                _log.debug("TLS error from %s: %s", self.peer_ip, self.tls.error)
            if self.state == C_RESPONSE and self.backend is not None and self.request_done:
                # Half-close after a complete request: finish the response, then close.
                self.close_after = True
                self._want_read(False)
                return
            self.close()
            return

    cdef void _stash(self, const char *p, Py_ssize_t n):
        if n <= 0:
            return
        if self.held is None:
            self.held = PyBytes_FromStringAndSize(p, n)
        else:
            self.held = self.held + PyBytes_FromStringAndSize(p, n)

    cdef void _on_plaintext(self, const char *p, Py_ssize_t n):
        cdef Py_ssize_t i = 0, k
        cdef Worker w = self.worker
        while i < n and self.state != C_CLOSED:
            if self.state == C_IDLE or self.state == C_HEAD:
                k = self._feed_head(p + i, n - i)
                if k < 0:
                    return
                i += k
            elif self.state == C_BODY and (self.backend is not None or self.dispatch_pending):
                self.deadline = w.now + w.read_timeout   # a long upload is not a stalled one
                k = framer_feed(&self.req_body, p + i, n - i)
                if k < 0 or (w.client_max_body_size and self.req_body.total > w.client_max_body_size):
                    # Malformed chunked body (400) or one past client_max_body_size (413, as
                    # nginx answers a chunked body that grows over the limit). When it came
                    # with its head, the backend never hears of this request.
                    self.close_after = True
                    self.dispatch_pending = False
                    if self.response_started:
                        self.close()
                    else:
                        self.error_response(400 if k < 0 else 413)
                    return
                if k:
                    if self.dispatch_pending:
                        # Validated body bytes that came with the head leave with it, in one
                        # write: they join the head still in the worker's writer (one copy).
                        w.writer.put(p + i, k)
                    else:
                        self.backend.transport.write(PyBytes_FromStringAndSize(p + i, k))
                    i += k
                if self.req_body.done:
                    self.request_done = True
                    if self.state == C_BODY:
                        self.state = C_RESPONSE
            else:
                # Not ours to process yet: a pipelined request, or body bytes while the
                # backend connects. Held until _resume(); reading stops meanwhile.
                self._stash(p + i, n - i)
                break
        if self.dispatch_pending and self.state != C_CLOSED:
            self.dispatch_pending = False
            self.request_head = w.writer.take()
            self._dispatch(False)

    cdef Py_ssize_t _feed_head(self, const char *p, Py_ssize_t n):
        """Consume header-block bytes; returns bytes used, or -1 when the connection ended."""
        cdef Worker w = self.worker
        cdef Py_ssize_t end, have, start
        cdef const char *q
        if self.head_buf is None:
            # Fast path: the whole block is in this read (RFC 9112 §2.2: skip leading CRLFs).
            start = 0
            while start + 1 < n and p[start] == b'\r' and p[start + 1] == b'\n' and self.state == C_IDLE:
                start += 2
            end = find_head_end(p + start, n - start, 0)
            if end > 0:
                if end > w.header_buffer_size:
                    self.error_response(431)
                    return -1
                if self._on_head(p + start, <int>end) < 0:
                    return -1
                return start + end
            if check_line_endings(p, start, n):
                self.error_response(400)
                return -1
            if n - start > w.header_buffer_size:
                self.error_response(431)
                return -1
            self.head_buf = HeadBuffer()
            self.head_buf.add(p + start, n - start)
            self.state = C_HEAD
            self.deadline = w.now + w.header_timeout
            return n
        have = self.head_buf.size()
        end = self.head_buf.add(p, n)
        q = self.head_buf.ptr()
        if end < 0:
            if check_line_endings(q, have - 1 if have > 0 else 0, have + n):
                self.error_response(400)
                return -1
            if have + n > w.header_buffer_size:
                self.error_response(431)
                return -1
            return n
        if end > w.header_buffer_size:
            self.error_response(431)
            return -1
        buf = self.head_buf   # keep alive while parsing
        self.head_buf = None
        if self._on_head(q, <int>end) < 0:
            return -1
        return end - have

    cdef int _on_head(self, const char *p, int head_len):
        """A complete request header block: validate, route, rewrite, dispatch."""
        cdef Worker w = self.worker
        cdef MessageHead head
        cdef HeaderSlot *slots = w.slots
        cdef HeadWriter out = w.writer
        cdef int j, status, kind
        cdef bint first_xff = True
        cdef UpstreamPool pool
        cdef const char *target
        cdef int target_len, path
        status = parse_head(p, head_len, True, &head, slots, w.max_header_fields)
        w.count(N_REQUESTS)
        self.http10 = head.version == 10
        if status:
            self.error_response(status)
            return -1
        if w.client_max_body_size and head.content_length > w.client_max_body_size:
            self.error_response(413)
            return -1
        target = p + head.target_start
        target_len = head.target_len
        if target[0] != b'/':
            if target[0] == b'*' and target_len == 1:
                target, target_len = b"/", 1
            else:
                # absolute-form (RFC 9112 §3.2.2): route and forward its origin-form path.
                path = _origin_form(target, target_len)
                if path < 0:
                    self.error_response(400)
                    return -1
                target += path
                target_len -= path
        if head.host_index >= 0:
            # nginx semantics: SNI picked the certificate, Host picks the server block.
            self.server = self._server_for_host(p + slots[head.host_index].value_start,
                                                slots[head.host_index].value_len)
        pool = self.server.route(target, target_len)
        if pool is None:
            self.error_response(404)
            return -1
        self.head_request = head.method_len == 4 and memcmp(p, b"HEAD", 4) == 0
        self.retryable = request_body_mode(&head) == BODY_NONE and _idempotent(p, head.method_len)
        if head.conn_close or self.http10 or w.draining:
            self.close_after = True

        # The request line, in origin-form, always HTTP/1.1 to the backend (nginx's
        # proxy_http_version 1.1): an HTTP/1.0 client must not cost a backend connection
        # per request; its response is de-chunked if need be and its connection closed.
        out.len = 0
        out.put(p, head.target_start)
        out.put(target, target_len)
        out.put(b" HTTP/1.1\r\n", 11)
        if head.host_index < 0:
            out.put(b"Host: ", 6)
            out.put_bytes(pool.host_header)
            out.put(b"\r\n", 2)
        for j in range(head.nheaders):
            kind = slots[j].kind
            if slots[j].drop or kind == H_CONNECTION or kind == H_KEEP_ALIVE or \
                    kind == H_PROXY_CONNECTION or kind == H_TE or kind == H_UPGRADE or \
                    kind == H_X_REAL_IP or kind == H_X_FORWARDED_PROTO:
                continue
            if kind == H_X_FORWARDED_FOR:
                if self.trusted and slots[j].value_len:
                    if first_xff:
                        out.put(b"X-Forwarded-For: ", 17)
                    else:
                        out.put(b", ", 2)
                    out.put(p + slots[j].value_start, slots[j].value_len)
                    first_xff = False
                continue
            if kind == H_FORWARDED and not self.trusted:
                continue
            out.put(p + slots[j].line_start, slots[j].line_end - slots[j].line_start)
        if first_xff:
            out.put(b"X-Forwarded-For: ", 17)
        else:
            out.put(b", ", 2)
        out.put_bytes(self.peer_ip_b)
        out.put(b"\r\nX-Forwarded-Proto: https\r\nX-Real-IP: ", 39)
        out.put_bytes(self.peer_ip_b)
        out.put(b"\r\n\r\n", 4)

        framer_init(&self.req_body, request_body_mode(&head), head.content_length)
        self.request_done = self.req_body.done
        self.state = C_RESPONSE if self.request_done else C_BODY
        self.response_started = False
        self.pool = pool
        self.attempts = 0
        self.deadline = w.now + w.read_timeout
        if self.request_done:
            self.request_head = out.take()
            self._dispatch(False)
        else:
            # Validate the body bytes of this read before the backend sees anything; the
            # head waits in the writer until then (_on_plaintext takes it).
            self.dispatch_pending = True
        return 0 if self.state != C_CLOSED else -1

    cdef ServerPolicy _server_for_host(self, const char *host, int n):
        cdef int end = n
        cdef TLSContext ctx
        if n > 0 and host[0] == b'[':
            return self.server   # an IP literal names no server block
        while end > 0 and host[end - 1] != b':':
            end -= 1
        if end == 0:
            end = n
        else:
            end -= 1   # strip :port
        if self.host_len == end and self.host_cache is not None and \
                memcmp(PyBytes_AS_STRING(self.host_cache), host, end) == 0:
            return self.server
        self.host_cache = PyBytes_FromStringAndSize(host, end)
        self.host_len = end
        ctx = self.context._select(self.host_cache)
        return ctx.server if ctx.server is not None else self.server

    cdef void _dispatch(self, bint fresh):
        """Send the request head to a pooled backend connection, or connect one."""
        cdef Worker w = self.worker
        cdef int server = self.pool.next_server(self.worker.now)
        cdef BackendConnection conn = None
        self.attempts += 1
        if not fresh:
            conn = self.pool.take_idle(server)
        if conn is None:
            self._connect(server)
            return
        w.count(N_BACKEND_REUSED)
        conn.attach(self)
        conn.transport.write(self.request_head)

    cdef void _connect(self, int server):
        cdef Worker w = self.worker
        host, port = self.pool.servers[server]
        pool = self.pool
        self.connecting = True
        self.tried_server = server
        self.deadline = w.now + w.connect_timeout
        w.count(N_BACKEND_CONNECTS)
        self.connect_fut = asyncio.ensure_future(w.loop.create_connection(
            lambda: _BackendProtocol(w, pool, server), host, port))
        self.connect_fut.add_done_callback(self._on_connected)

    def _on_connected(self, fut):
        cdef BackendConnection conn
        cdef Worker w = self.worker
        self.connect_fut = None
        if fut.cancelled():
            return
        exc = fut.exception()
        if self.state == C_CLOSED or self.pool is None:
            if exc is None:
                fut.result()[0].close()
            return
        self.connecting = False
        if exc is not None:
            w.count(N_BACKEND_ERRORS)
            host, port = self.pool.servers[self.tried_server]
            _log.warning("upstream %s: connect to %s:%s failed: %s", self.pool.name, host, port, exc)
            self._next_server_or(502)
            return
        conn = fut.result()[1]
        conn.attach(self)
        conn.transport.write(self.request_head)
        self.deadline = w.now + w.read_timeout
        self._resume()

    cdef void _next_server_or(self, int status):
        """A connect failed or timed out (nothing was sent): eject that server and try
        another at once, or answer ``status``."""
        cdef Worker w = self.worker
        self.connecting = False
        self.pool.mark_failed(self.tried_server, w.loop.time())
        if self.attempts < min(MAX_ATTEMPTS, len(self.pool.servers)):
            self._dispatch(True)
        else:
            self.error_response(status)

    cdef void _resume(self):
        """Input processing may go on: replay held bytes, then read the socket again."""
        cdef bytes held
        if self.state == C_CLOSED or self.state == C_LINGER or not self._accepting_or_held():
            return
        if self.held is not None:
            held = self.held
            self.held = None
            self._on_plaintext(PyBytes_AS_STRING(held), PyBytes_GET_SIZE(held))
        if self.state != C_CLOSED and self._accepting():
            self._want_read(True)
            self._read_loop()

    cdef bint _accepting_or_held(self):
        if self.state == C_IDLE or self.state == C_HEAD:
            return True
        return self.state == C_BODY and self.backend is not None and not self.backend_full

    # ---- Response flow --------------------------------------------------
    cdef void send(self, const char *p, Py_ssize_t n):
        """Plaintext to the client; what the socket cannot take now waits in pending_out
        and the backend stops reading until it drains."""
        cdef int r
        if self.state == C_CLOSED:
            return
        self.worker.count(N_BYTES_OUT, n)
        if self.pending_out is not None:
            bytearray_extend(self.pending_out, p, n)
            return
        while n > 0:
            r = self.tls.write_from(p, n if n < 0x40000000 else 0x40000000)
            if r > 0:
                p += r
                n -= r
                continue
            if r == TLS_WANT_WRITE or r == TLS_WANT_READ:
                self.pending_out = bytearray()
                bytearray_extend(self.pending_out, p, n)
                self._want_write(True)
                if self.backend is not None:
                    self.backend.pause()
                return
            _log.debug("write to %s failed: %s", self.peer_ip, self.tls.error)
            self.close()
            return

    cdef void _flush(self):
        cdef int r
        cdef Py_ssize_t n, off = 0
        cdef const char *p
        if self.pending_out is None:
            self._want_write(False)
            return
        p = PyByteArray_AS_STRING(self.pending_out)
        n = PyByteArray_GET_SIZE(self.pending_out)
        while off < n:
            r = self.tls.write_from(p + off, n - off)
            if r > 0:
                off += r
                continue
            if r == TLS_WANT_WRITE or r == TLS_WANT_READ:
                del self.pending_out[:off]
                return
            self.close()
            return
        self.pending_out = None
        self._want_write(False)
        if self.state == C_LINGER:
            self._finish()
            return
        if self.backend is not None:
            self.backend.resume()

    cdef void on_response_head(self, int status):
        cdef Worker w = self.worker
        self.response_started = True
        if status >= 500:
            w.count(N_RESPONSES_5XX)
        elif status >= 400:
            w.count(N_RESPONSES_4XX)
        elif status >= 300:
            w.count(N_RESPONSES_3XX)
        elif status >= 200:
            w.count(N_RESPONSES_2XX)
        else:
            w.count(N_RESPONSES_1XX)

    cdef void on_response_done(self):
        cdef Worker w = self.worker
        self.backend = None
        self.pool = None
        self.request_head = None
        if not self.request_done:
            self.close_after = True   # the backend answered before the body ended
        if self.close_after or w.draining:
            self._finish()
            return
        self.state = C_IDLE
        self.deadline = w.now + w.keepalive_timeout
        if self.held is not None or not self.reading:
            self._resume()

    cdef void on_backend_failed(self, bint got_bytes, int server, bint fresh):
        """The backend connection closed or reset before the response ended."""
        cdef Worker w = self.worker
        self.backend = None
        w.count(N_BACKEND_ERRORS)
        if fresh and not got_bytes:
            # A new connection reset before answering: the server is failing (a pooled one
            # may just have been closed by the backend's keep-alive timeout).
            self.pool.mark_failed(server, w.loop.time())
        if not got_bytes and self.retryable and self.attempts < MAX_ATTEMPTS:
            # A pooled keep-alive connection the backend had already closed: retry fresh.
            self._dispatch(True)
            return
        if not self.response_started:
            self.error_response(502)
        else:
            self.close()

    cdef void error_response(self, int status):
        """A response fastterm makes itself; HSTS on it too (nginx `add_header ... always`)."""
        cdef Worker w = self.worker
        if self.state == C_CLOSED:
            return
        self._drop_upstream()
        reason = _REASONS.get(status, "Error")
        body = f"<html><head><title>{status} {reason}</title></head><body><h1>{status} {reason}</h1>" \
               f"<hr>fastterm</body></html>\r\n".encode()
        hsts = self.server.hsts_line if self.server is not None else b""
        msg = (f"HTTP/1.1 {status} {reason}\r\nServer: fastterm\r\nContent-Type: text/html\r\n"
               f"Content-Length: {len(body)}\r\n").encode() + hsts + b"Connection: close\r\n\r\n"
        if not self.head_request:
            msg += body
        self.on_response_head(status)
        self.response_started = True
        self.close_after = True
        self.held = None
        self.send(PyBytes_AS_STRING(msg), len(msg))
        self._finish()

    # ---- Shutdown flow --------------------------------------------------
    cdef void _finish(self):
        """Orderly close: flush, close_notify, half-close, then discard input briefly
        (lingering close) so the client reads our last response instead of a RST."""
        cdef Worker w = self.worker
        if self.state == C_CLOSED:
            return
        if self.state != C_LINGER:
            self.state = C_LINGER
            self.deadline = w.now + LINGER_SECONDS
            self.held = None
            self._want_read(True)
        if self.pending_out is not None:
            return   # _flush() calls back when the socket took the rest
        if self.tls is not None:
            self.tls.send_close_notify()
        shutdown(self.fd, SHUT_WR)
        self._linger()

    cdef void _linger(self):
        cdef Worker w = self.worker
        cdef ssize_t r
        if self.pending_out is not None:
            return
        while True:
            r = recv(self.fd, w.rbuf, RBUF_SIZE, 0)
            if r > 0:
                continue
            if r < 0 and (errno == EAGAIN or errno == EINTR):  # EWOULDBLOCK == EAGAIN on Linux
                return
            self.close()
            return

    def _on_deadline(self, double deadline):
        """The timer the sweep set: expire, unless the deadline moved since (it is then
        the next sweep's) or the connection is gone."""
        cdef Worker w = self.worker
        if self.state != C_CLOSED and self.deadline == deadline:
            w.now = w.loop.time()
            self._expire()

    cdef void _expire(self):
        cdef int state = self.state
        if state == C_HANDSHAKE:
            self._count_handshake(TLS_WANT_READ)
            self.close()
        elif state == C_HEAD:
            self.error_response(408)
        elif (state == C_BODY or state == C_RESPONSE) and self.connecting:
            if self.connect_fut is not None:
                self.connect_fut.cancel()
                self.connect_fut = None
            _log.warning("upstream %s: connect to %s:%s timed out", self.pool.name,
                         *self.pool.servers[self.tried_server])
            self._next_server_or(504)
        elif state == C_BODY or state == C_RESPONSE:
            if not self.response_started:
                self.error_response(504)
            else:
                self.close()
        elif state == C_IDLE and self.held is None:
            self._finish()
        else:
            self.close()

    cdef void _drop_upstream(self):
        """Abandon the request's backend side: its connection can't be reused mid-exchange."""
        if self.backend is not None:
            self.backend.abort()
            self.backend = None
        if self.connect_fut is not None:
            self.connect_fut.cancel()
            self.connect_fut = None

    cdef void close(self):
        cdef Worker w = self.worker
        if self.state == C_CLOSED:
            return
        self.state = C_CLOSED
        self._interest(False, False)
        self._drop_upstream()
        self.tls = None       # SSL_free
        if self.fd >= 0:
            if w.by_fd.get(self.fd) is self:
                del w.by_fd[self.fd]
            close(self.fd)
            self.fd = -1
        self.held = None
        self.pending_out = None
        self.head_buf = None
        w.clients.discard(self)
        w.count(N_CONNECTIONS_OPEN, -1)

    @property
    def peer(self):
        return self.peer_ip


cdef bint _idempotent(const char *m, int n) noexcept:
    """Methods safe to replay on another connection (RFC 9110 §9.2.2), bodiless here."""
    if n == 3:
        return memcmp(m, b"GET", 3) == 0
    if n == 4:
        return memcmp(m, b"HEAD", 4) == 0
    if n == 7:
        return memcmp(m, b"OPTIONS", 7) == 0
    if n == 5:
        return memcmp(m, b"TRACE", 5) == 0
    return False


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


cdef class BackendConnection:
    """One keep-alive connection to an upstream server (plain HTTP/1.1)."""

    def __init__(self, Worker worker, UpstreamPool pool, int server):
        self.worker = worker
        self.pool = pool
        self.server = server
        self.state = B_IDLE
        framer_init(&self.body, BODY_NONE, 0)

    def connection_made(self, transport):
        self.transport = transport

    def get_buffer(self, sizehint):
        return self.worker.backend_view

    def buffer_updated(self, Py_ssize_t n):
        self._on_data(PyByteArray_AS_STRING(self.worker.backend_buf), n)

    def eof_received(self):
        self._lost()
        return False

    def connection_lost(self, exc):
        self._lost()

    def pause_writing(self):
        if self.client is not None:
            self.client.backend_full = True

    def resume_writing(self):
        if self.client is not None:
            self.client.backend_full = False
            self.client._resume()

    def _lost(self):
        cdef ClientConnection client = self.client
        cdef int state = self.state
        cdef list idle
        if state == B_CLOSED:
            return
        self.state = B_CLOSED
        self.client = None
        if self.transport is not None:
            self.transport.close()
        if state == B_IDLE:
            idle = self.pool.idle[self.server]
            if self in idle:
                idle.remove(self)
            return
        if client is None:
            return
        if state == B_BODY and self.body.mode == BODY_UNTIL_CLOSE:
            client.close_after = True
            client.on_response_done()
            return
        client.on_backend_failed(self.got_bytes, self.server, self.requests == 1)

    cdef void attach(self, ClientConnection client):
        self.requests += 1
        self.client = client
        client.backend = self
        client.backend_full = False
        self.state = B_HEAD
        self.head_buf = None
        self.got_bytes = False
        self.reusable = False
        if self.reading_paused:
            self.resume()

    cdef void _on_data(self, const char *p, Py_ssize_t n):
        cdef Py_ssize_t i = 0, k
        cdef ClientConnection client = self.client
        cdef HeadWriter out
        if client is None or self.state == B_IDLE:
            self.abort()   # bytes nobody asked for: this connection cannot be trusted again
            return
        self.got_bytes = True
        client.deadline = self.worker.now + self.worker.read_timeout
        while self.client is not None:
            if self.state == B_HEAD:
                if i >= n:
                    return
                k = self._feed_head(p + i, n - i)
                if k < 0:
                    return
                i += k
            elif self.state == B_BODY:
                k = framer_feed(&self.body, p + i, n - i)
                if k < 0:
                    _log.warning("upstream %s: malformed chunked response", self.pool.name)
                    self.abort()
                    client.close()
                    return
                if self.head_pending:
                    # Head and a small first body slice leave in one SSL_write: one record,
                    # one syscall (the copy of <= 16 KiB is cheaper than either).
                    self.head_pending = False
                    out = self.worker.writer
                    if 0 < k <= 16384 and not self.body.stop_at_data:
                        out.put(p + i, k)
                        i += k
                        k = 0
                    client.send(out.buf, out.len)
                    out.len = 0
                    if self.client is None:
                        return
                if k and self.body.stop_at_data:
                    if self.body.data_len:   # de-chunked: only the chunk data goes out
                        client.send(p + i + self.body.data_start, self.body.data_len)
                        if self.client is None:
                            return
                    i += k
                elif k:
                    client.send(p + i, k)
                    if self.client is None:
                        return   # the client went away during the write
                    i += k
                if self.body.done:
                    if i < n:
                        self.reusable = False   # bytes past the response: do not reuse
                    self._done()
                    return
                if i >= n:
                    return
            else:
                return

    cdef Py_ssize_t _feed_head(self, const char *p, Py_ssize_t n):
        cdef Py_ssize_t end, have
        cdef const char *q
        if self.head_buf is None:
            end = find_head_end(p, n, 0)
            if end > 0:
                if self._on_head(p, <int>end) < 0:
                    return -1
                return end
            self.head_buf = HeadBuffer()
            self.head_buf.add(p, n)
            return n
        have = self.head_buf.size()
        end = self.head_buf.add(p, n)
        q = self.head_buf.ptr()
        if end < 0:
            if have + n > MAX_RESPONSE_HEAD:
                self._bad_response("header block too large")
                return -1
            return n
        buf = self.head_buf
        self.head_buf = None
        if self._on_head(q, <int>end) < 0:
            return -1
        return end - have

    cdef void _bad_response(self, str why):
        cdef ClientConnection client = self.client
        _log.warning("upstream %s: invalid response: %s", self.pool.name, why)
        self.abort()
        if client is not None:
            client.backend = None
            client.error_response(502)

    cdef int _on_head(self, const char *p, int head_len):
        cdef Worker w = self.worker
        cdef ClientConnection client = self.client
        cdef MessageHead head
        cdef HeaderSlot *slots = w.slots
        cdef HeadWriter out = w.writer
        cdef int j, kind, mode
        cdef bytes hsts = client.server.hsts_line
        if parse_head(p, head_len, False, &head, slots, MAX_HEADER_SLOTS):
            self._bad_response("malformed header block")
            return -1
        if head.status == 101:
            self._bad_response("unexpected 101 Switching Protocols")
            return -1
        if head.status < 200:
            # Interim (100 Continue, 103 Early Hints): pass on to HTTP/1.1 clients.
            if not client.http10:
                client.send(p, head_len)
            return 0
        if head.te_present and head.cl_seen:
            # RFC 9112 §6.3: a response splitting attempt, or a broken backend.
            self._bad_response("both Content-Length and Transfer-Encoding")
            return -1
        mode = response_body_mode(&head, client.head_request)
        self.reusable = head.version == 11 and not head.conn_close and mode != BODY_UNTIL_CLOSE
        client.dechunk = client.http10 and mode == BODY_CHUNKED
        if mode == BODY_UNTIL_CLOSE or client.dechunk:
            client.close_after = True   # an HTTP/1.0 client reads the body until close
        out.len = 0
        out.put(p, head.line_end)
        for j in range(head.nheaders):
            kind = slots[j].kind
            if slots[j].drop or kind == H_CONNECTION or kind == H_KEEP_ALIVE or \
                    kind == H_PROXY_CONNECTION or kind == H_UPGRADE or (kind == H_HSTS and hsts) or \
                    (kind == H_TRANSFER_ENCODING and client.dechunk):
                continue
            out.put(p + slots[j].line_start, slots[j].line_end - slots[j].line_start)
        if hsts:
            out.put_bytes(hsts)
        if client.close_after or w.draining:
            client.close_after = True
            out.put(b"Connection: close\r\n", 19)
        out.put(b"\r\n", 2)
        client.on_response_head(head.status)
        framer_init(&self.body, mode, head.content_length)
        self.body.stop_at_data = client.dechunk
        self.state = B_BODY
        self.head_pending = True   # sent by _on_data, with the first body bytes
        return 0

    cdef void _done(self):
        cdef ClientConnection client = self.client
        if client is None:
            return
        if self.reusable and client.request_done and self.state != B_CLOSED:
            self.pool.release(self)
        else:
            self.abort()
        client.on_response_done()

    cdef void pause(self):
        if not self.reading_paused and self.transport is not None:
            self.reading_paused = True
            self.transport.pause_reading()

    cdef void resume(self):
        if self.reading_paused and self.transport is not None:
            self.reading_paused = False
            self.transport.resume_reading()

    cdef void abort(self):
        cdef list idle
        if self.state == B_IDLE:
            idle = self.pool.idle[self.server]
            if self in idle:
                idle.remove(self)
        self.state = B_CLOSED
        self.client = None
        if self.transport is not None:
            self.transport.abort()


class _BackendProtocol(BackendConnection, asyncio.BufferedProtocol):
    """uvloop recognises buffered protocols by class; the logic is in BackendConnection."""


cdef class BIOClientConnection(ClientConnection):
    """Kept to measure the design choice (FASTTERM_CLIENT_IO=bio); fd mode is the default."""

    cdef void start(self):
        cdef Worker w = self.worker
        self.tls = TLSConnection(self.context)
        self.state = C_HANDSHAKE
        self.deadline = w.now + w.header_timeout
        self.reading = True
        w.clients.add(self)
        w.count(N_CONNECTIONS)
        w.count(N_CONNECTIONS_OPEN)

    cdef void _push_ciphertext(self):
        cdef size_t n
        if self.transport is None or self.tls is None:
            return
        n = self.tls.ciphertext_pending()
        if n:
            out = PyBytes_FromStringAndSize(NULL, n)
            self.tls.take_ciphertext(PyBytes_AS_STRING(out), n)
            self.transport.write(out)

    cdef void _want_write(self, bint on):
        self.writing = False

    cdef void _want_read(self, bint on):
        if self.transport is None or on == self.reading:
            return
        self.reading = on
        if on:
            self.transport.resume_reading()
        else:
            self.transport.pause_reading()

    cdef void send(self, const char *p, Py_ssize_t n):
        ClientConnection.send(self, p, n)
        self._push_ciphertext()

    cdef void _finish(self):
        if self.state == C_CLOSED:
            return
        if self.tls is not None:
            self.tls.send_close_notify()
        self._push_ciphertext()
        self.state = C_LINGER
        self.transport.close()

    cdef void close(self):
        transport = self.transport
        ClientConnection.close(self)
        if transport is not None:
            transport.abort()
            self.transport = None

    # ---- BufferedProtocol -------------------------------------------------
    def connection_made(self, transport):
        self.transport = transport
        peer = transport.get_extra_info("peername")
        self.peer_ip = peer[0] if peer else ""
        self.peer_ip_b = self.peer_ip.encode("ascii")
        self.start()

    def get_buffer(self, sizehint):
        return self.worker.backend_view_in

    def buffer_updated(self, Py_ssize_t n):
        if self.state == C_CLOSED or self.tls is None:
            return
        self.tls.feed_ciphertext(PyByteArray_AS_STRING(self.worker.client_buf), n)
        if self.state == C_HANDSHAKE:
            self._handshake()
        elif self.state != C_LINGER:
            self._read_loop()
        self._push_ciphertext()

    def eof_received(self):
        if self.state == C_RESPONSE and self.request_done:
            self.close_after = True
            return True
        self.close()
        return False

    def connection_lost(self, exc):
        self.transport = None
        self.close()

    def pause_writing(self):
        if self.backend is not None:
            self.backend.pause()

    def resume_writing(self):
        if self.backend is not None:
            self.backend.resume()


class _BIOClientProtocol(BIOClientConnection, asyncio.BufferedProtocol):
    pass


def bio_protocol_factory(Worker worker, TLSContext context):
    """uvloop create_server() factory for the memory-BIO client path."""
    def make():
        cdef BIOClientConnection conn = _BIOClientProtocol()
        conn.worker = worker
        conn.context = context
        conn.peer_ip = ""
        conn.peer_ip_b = b""
        return conn
    return make
