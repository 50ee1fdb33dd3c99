# The worker's loop. Client side: OpenSSL reads and writes the accepted socket itself
# (SSL_set_fd), as nginx, HAProxy and hitch do: no ciphertext copy. Client and listening
# sockets sit in the worker's own epoll set, which uvloop watches as one fd: a loop
# iteration costs one Python callback, and each ready connection is a C call (no uvloop
# handle per connection). A bug met while handling one connection's event closes that
# connection, never the worker.
#
# Buffers belong to the worker and are lent per event; an idle connection holds only its
# SSL object (RELEASE_BUFFERS), this small struct and its codec's.
#
# The fd path won the foundation's measurement against uvloop + memory BIOs (server CPU per
# request, wrk -t1 on the other core: keep-alive 1 KiB 61.2 vs 66.8 us, bulk 1 MiB 1633 vs
# 1604 us), with no ciphertext copies; the memory-BIO engine stays for the sans-IO tests.

import logging
import resource
import socket

from libc.stdlib cimport malloc, free, realloc
from cpython.ref cimport Py_XINCREF, Py_XDECREF
from libc.string cimport memcpy, memmove, memset
from cpython.bytes cimport PyBytes_FromStringAndSize, PyBytes_AS_STRING, PyBytes_GET_SIZE
from cpython.bytearray cimport PyByteArray_AS_STRING, PyByteArray_GET_SIZE

cdef enum:
    MAX_EVENTS = 256
    RBUF_SIZE = 65536
    # read_ahead's buffer once the handshake is done: two full records (16 KiB and their
    # overhead) a read(), which _read_loop gathers into one on_data. OpenSSL's default is
    # one; four measured worse per CPU-second (uploads: 0.8x; bench/PROFILE.md, round 2).
    TLS_READ_BUF_SIZE = 2 * (16384 + 256)
    # a backend read: 128 KiB took 16 reads per MiB down to 8 (+2-4 % per CPU-second on 1 MiB
    # downloads; 256 KiB measured the same); a client that stops reading holds at most one
    BACKEND_BUF_SIZE = 131072
    LINGER_SECONDS = 2
    RELEASE_BATCH = 64         # closed connections waiting to be unlinked (Worker.release_later)
    ACCEPT_BACKOFF_MS = 500    # nginx waits 500 ms after EMFILE before accepting again

_log = logging.getLogger("fastterm.proxy")

_PLAIN_BODY = (b"<html><head><title>400 The plain HTTP request was sent to HTTPS port</title></head>"
               b"<body><h1>400 Bad Request</h1>The plain HTTP request was sent to HTTPS port<hr>fastterm"
               b"</body></html>\r\n")
cdef bytes _PLAIN_HTTP_400 = (b"HTTP/1.1 400 Bad Request\r\nServer: fastterm\r\nContent-Type: text/html\r\n"
                              b"Content-Length: %d\r\nConnection: close\r\n\r\n" % len(_PLAIN_BODY)) + _PLAIN_BODY
COUNTER_NAMES = _COUNTER_NAMES = ("connections_total", "connections_open", "handshakes_full", "handshakes_resumed",
                  "handshakes_failed", "requests_total", "responses_1xx", "responses_2xx",
                  "responses_3xx", "responses_4xx", "responses_5xx", "backend_connects",
                  "backend_errors", "backend_reused", "bytes_in", "bytes_out",
                  "handshake_failed_protocol", "handshake_failed_no_shared_cipher",
                  "handshake_failed_no_application_protocol", "handshake_failed_eof",
                  "handshake_failed_timeout", "handshake_failed_http_request", "handshake_failed_other",
                  "tls_version_TLSv1.2", "tls_version_TLSv1.3", "cipher_aes128gcm", "cipher_aes256gcm",
                  "cipher_chacha20", "cipher_other", "h2_connections", "h2_streams",
                  "h2_resets_received", "h2_goaway_sent", "h2_flood_closed",
                  "certificate_reloads", "certificate_reload_failures",
                  "early_data_offered", "early_data_accepted", "early_data_rejected_replay",
                  "early_data_rejected_other", "early_data_requests_held", "upgrades",
                  "proxy_headers_accepted", "proxy_headers_rejected_malformed",
                  "proxy_headers_rejected_untrusted")
# Failure kind (errors.pyx, by library and reason code) -> handshake failure counter.
cdef dict _FAILURE_COUNTERS = {TLS_FAIL_PROTOCOL: N_HS_FAIL_PROTOCOL, TLS_FAIL_CIPHER: N_HS_FAIL_CIPHER,
                               TLS_FAIL_ALPN: N_HS_FAIL_ALPN, TLS_FAIL_HTTP: N_HS_FAIL_HTTP}


cdef class Worker:
    """Per-process state: lent buffers, limits, counters, timers, accept control."""

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

    def __init__(self, loop, limits, pools=()):
        self.loop = loop
        self.pathbuf = <char *>malloc(limits.header_buffer_size)
        if self.pathbuf == NULL:
            raise MemoryError()
        self.backend_buf = bytearray(BACKEND_BUF_SIZE)
        self.writer = HeadWriter(32768)
        self.frames = HeadWriter(65536 + 16384)
        self.pools = list(pools)
        self.tick()
        self.draining = False
        self.header_buffer_size = limits.header_buffer_size
        self.header_line_size = limits.header_line_size
        self.max_header_fields = min(limits.max_header_fields, MAX_HEADER_SLOTS)
        self.client_max_body_size = limits.client_max_body_size
        self.request_limits.max_body = limits.client_max_body_size
        self.request_limits.underscores_in_headers = limits.underscores_in_headers
        self.request_limits.keepalive_header = limits.keepalive_header
        self.header_timeout = limits.client_header_timeout
        self.keepalive_timeout = limits.keepalive_timeout
        self.connect_timeout = limits.backend_connect_timeout
        self.read_timeout = limits.backend_read_timeout
        self.send_timeout = limits.send_timeout
        self.h2_max_streams = limits.http2_max_concurrent_streams
        self.h2_max_requests = limits.http2_max_requests
        self.keepalive_requests = limits.keepalive_requests
        self.keepalive_time = limits.keepalive_time
        self.body_timeout = limits.client_body_timeout if limits.client_body_timeout is not None \
            else limits.backend_read_timeout
        self.backend_send_timeout = limits.backend_send_timeout if limits.backend_send_timeout is not None \
            else limits.backend_read_timeout
        self.sweep_handle = loop.call_later(1.0, self._sweep)
        self.hs_log_rate = 10
        self.access_log = None
        self.closed = []
        self.spare_streams = []
        self.listeners = []
        self.max_clients = limits.worker_connections or _auto_worker_connections()
        self.epfd = epoll_create1(EPOLL_CLOEXEC)
        if self.epfd < 0:
            raise OSError(errno, "epoll_create1 failed")
        loop.add_reader(self.epfd, self._on_events)

    def __dealloc__(self):
        cdef int fd
        for fd in range(self.by_fd_size):
            Py_XDECREF(self.by_fd[fd])
        free(self.by_fd)
        free(self.rbuf)
        free(self.pathbuf)
        free(self.slots)
        free(self.events)
        if self.epfd >= 0:
            close(self.epfd)

    cdef int fd_set(self, int fd, object obj) except -1:
        """``obj`` owns ``fd`` in our epoll set: the array grows to the highest fd (the kernel
        hands out the lowest free one, so it stays about as long as the connections open)."""
        cdef int size = self.by_fd_size
        cdef PyObject **grown
        if fd >= size:
            size = max(fd + 1, 2 * size, 64)
            grown = <PyObject **>realloc(self.by_fd, size * sizeof(PyObject *))
            if grown == NULL:
                raise MemoryError()
            memset(grown + self.by_fd_size, 0, (size - self.by_fd_size) * sizeof(PyObject *))
            self.by_fd = grown
            self.by_fd_size = size
        Py_XINCREF(<PyObject *>obj)
        Py_XDECREF(self.by_fd[fd])
        self.by_fd[fd] = <PyObject *>obj
        return 0

    cdef object fd_get(self, int fd):
        if 0 <= fd < self.by_fd_size and self.by_fd[fd] != NULL:
            return <object>self.by_fd[fd]
        return None

    cdef void fd_clear(self, int fd):
        cdef PyObject *obj
        if 0 <= fd < self.by_fd_size:
            obj = self.by_fd[fd]
            self.by_fd[fd] = NULL
            Py_XDECREF(obj)

    cdef list client_list(self):
        """The open client connections, for a pass that may close some of them."""
        cdef list out = []
        cdef int fd
        for fd in range(self.by_fd_size):
            if self.by_fd[fd] != NULL and isinstance(<object>self.by_fd[fd], ClientConnection):
                out.append(<object>self.by_fd[fd])
        return out

    @property
    def clients(self):
        return self.client_list()

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
        self.tick()   # deadlines set below count from now, not from the last sweep
        n = epoll_wait(self.epfd, self.events, MAX_EVENTS, 0)
        for i in range(n):
            fd = self.events[i].data.fd
            ev = self.events[i].events
            obj = self.fd_get(fd)
            if obj is None:
                continue
            if isinstance(obj, ClientConnection):
                conn = <ClientConnection>obj
                try:
                    if ev & EPOLLOUT and conn.writing:
                        conn.on_writable()
                    if ev & (EPOLLIN | EPOLLERR | EPOLLHUP) and conn.reading and conn.fd == fd:
                        conn.on_readable()
                except Exception:
                    _log.exception("closing the connection from %s after an internal error", conn.peer_ip)
                    conn.close()
            elif isinstance(obj, BackendPlainTransport):
                (<BackendPlainTransport>obj).on_events(ev)
            elif isinstance(obj, BackendTLSTransport):
                (<BackendTLSTransport>obj).on_events(ev)
            else:
                (<Listener>obj).on_readable()

    cdef inline void count(self, int counter, long long n=1) noexcept:
        self.counters[counter] += n

    cdef inline void tick(self) noexcept:
        """``now`` from CLOCK_MONOTONIC, the clock of the loop's timers (libuv's uv_now), with
        no Python call: every backend read and client event takes it."""
        cdef timespec ts
        clock_gettime(CLOCK_MONOTONIC, &ts)
        self.now = ts.tv_sec + ts.tv_nsec * 1e-9

    cdef void count_status(self, int status):
        if status >= 500:
            self.count(N_RESPONSES_5XX)
        elif status >= 400:
            self.count(N_RESPONSES_4XX)
        elif status >= 300:
            self.count(N_RESPONSES_3XX)
        elif status >= 200:
            self.count(N_RESPONSES_2XX)
        else:
            self.count(N_RESPONSES_1XX)

    def _sweep(self):
        """Timeouts: one pass a second over the connections finds those due before the next
        pass, and each then expires at its own deadline. Expiring them all at the pass made
        the clients of a second's worth of connections (a slow-header flood: each one closed
        at the header timeout and reopened) come back together, a burst of full handshakes
        in one loop iteration in front of everyone's new connections: p99 x3 where nginx,
        with per-connection timers, stays within 1.3x. A deadline set less than a second
        ahead between passes (a timeout under 1 s) is still found only by the next pass."""
        cdef ClientConnection conn
        cdef double now, horizon, due
        self.tick()
        now = self.now
        horizon = now + 1.0
        for obj in self.client_list():
            conn = <ClientConnection>obj
            due = conn.next_deadline()
            if due <= now:
                self._expire(conn)
            elif due < horizon:
                self.loop.call_at(due, self._on_deadline, conn, due)
        for pool in self.pools:
            (<UpstreamPool>pool).tick(now)
        if self.access_log is not None:
            self._flush_access_log()
        if self.hs_log_skipped and now >= self.hs_log_next:
            self.handshake_log_summary()
        self.release_closed()
        self.sweep_handle = self.loop.call_at(horizon, self._sweep)

    def _on_deadline(self, ClientConnection conn, double due):
        """The timer the sweep set: expire, unless the deadline moved since (it is then the
        next sweep's) or the connection is gone."""
        if conn.state != C_CLOSED and conn.next_deadline() == due:
            self.tick()
            self._expire(conn)

    def _expire(self, ClientConnection conn):
        try:
            conn.expire()
        except Exception:
            _log.exception("closing the connection from %s after an internal error", conn.peer_ip)
            conn.close()

    cdef void release_later(self, ClientConnection conn):
        """A closed connection's codec and streams point at each other and at it; they are
        unlinked later, when none of their methods is on the stack (so nothing waits for the
        cyclic GC, and nothing is freed under a running method): before the next accept
        (Listener.on_readable, which the event pass calls with no codec on the stack), at
        the end of the next sweep, or on the next loop pass once RELEASE_BATCH wait. A
        call_soon per closed connection (a uvloop Handle, an idle-handle start and stop, a
        Python call) was ~1 % of a one-request connection's CPU."""
        self.closed.append(conn)
        if len(self.closed) >= RELEASE_BATCH and not self.release_scheduled:
            self.release_scheduled = True
            self.loop.call_soon(self._release_closed)

    def _release_closed(self):
        self.release_scheduled = False
        self.release_closed()

    cdef void release_closed(self):
        cdef ClientConnection conn
        if not self.closed:
            return
        closed, self.closed = self.closed, []
        for obj in closed:
            conn = <ClientConnection>obj
            if conn.session is not None:
                conn.session.release()
                conn.session = None

    def use_counter_slot(self, SharedState shared, int slot):
        """Count into shared memory so the master can add up every worker."""
        cdef int i
        self.shared = shared
        self.counters = <long long *>shared.region.workers[slot].counters
        for i in range(<int>N_COUNTERS):
            self.counters[i] += self.own_counters[i]

    def count_certificate_reload(self, bint ok):
        """A certificate that changed on disk was served (``ok``) or refused (certs/watch.py)."""
        self.count(N_CERT_RELOADS if ok else N_CERT_RELOAD_FAILURES)

    def stats(self):
        return {name: self.counters[i] for i, name in enumerate(_COUNTER_NAMES)}

    def drain(self):
        """Stop reusing client connections: each one's next response carries
        ``Connection: close`` and it closes after it. Idle ones are left open (the
        caller closes them at its drain deadline): closing an idle keep-alive at once
        races with a request the client is sending, and that request would fail. HTTP/2
        sessions send GOAWAY: their streams finish, then they close."""
        cdef ClientConnection conn
        self.draining = True
        for obj in self.client_list():
            conn = <ClientConnection>obj
            if conn.session is not None and conn.state == C_OPEN:
                conn.session.drain()

    def close(self):
        if self.sweep_handle is not None:
            self.sweep_handle.cancel()
            self.sweep_handle = None
        for conn in self.client_list():
            (<ClientConnection>conn).close()
        if self.access_log is not None:
            self._flush_access_log()
        if self.epfd >= 0:
            self.loop.remove_reader(self.epfd)

    # ---- Accept control -------------------------------------------------------------
    cdef void pause_accepting(self):
        """New connections wait in the kernel's accept queue (other workers' sockets of the
        SO_REUSEPORT group keep accepting theirs)."""
        self.accept_paused = True
        for listener in self.listeners:
            (<Listener>listener).watch(False)

    cdef void resume_accepting(self):
        self.accept_paused = False
        for listener in self.listeners:
            (<Listener>listener).watch(True)

    cdef void out_of_fds(self):
        """EMFILE/ENFILE: the queue stays readable, so polling it would spin; back off."""
        if self.now >= self.fd_log_next:
            self.fd_log_next = self.now + 10
            _log.error("accept: out of file descriptors (%d connections open, RLIMIT_NOFILE %d):"
                       " not accepting for %d ms", self.nclients,
                       resource.getrlimit(resource.RLIMIT_NOFILE)[0], ACCEPT_BACKOFF_MS)
        self.pause_accepting()
        if not self.accept_backoff:
            self.accept_backoff = True
            self.loop.call_later(ACCEPT_BACKOFF_MS / 1000.0, self._backoff_done)

    def _backoff_done(self):
        self.accept_backoff = False
        if self.nclients < self.max_clients:
            self.resume_accepting()

    cdef void client_closed(self):
        if self.accept_paused and not self.accept_backoff and self.nclients < self.max_clients:
            self.resume_accepting()

    cdef bint handshake_log_allowed(self):
        """At most hs_log_rate failed-handshake lines a second (a scan fails thousands), then
        one line a second saying how many were not logged: a scan cannot fill the disk. The
        handshake_failed_* counters count every one."""
        if self.now >= self.hs_log_next:
            if self.hs_log_skipped:
                self.handshake_log_summary()
            self.hs_log_next = self.now + 1.0
            self.hs_log_lines = 0
        if self.hs_log_lines < self.hs_log_rate:
            self.hs_log_lines += 1
            return True
        self.hs_log_skipped += 1
        return False

    cdef void handshake_log_summary(self):
        _log.warning("%d more failed handshakes not logged (at most %d lines a second)", self.hs_log_skipped,
                     self.hs_log_rate)
        self.hs_log_skipped = 0

    # ---- Access log -----------------------------------------------------------------
    cdef void log_exchange(self, ClientConnection conn, Exchange ex, int status, long long bytes_in,
                           long long bytes_out, bint http2):
        """One request ended (answered, or its client went away: 499, nginx's status for that):
        its line, once. Called only while access_log is set."""
        if ex.logged or conn is None:
            return
        ex.logged = True
        self.tick()
        try:
            (<AccessLog>self.access_log).line(
                conn, ex, status, bytes_in, bytes_out, http2, self.now - ex.started if ex.started else 0.0,
                (ex.upstream_end or self.now) - ex.upstream_start if ex.upstream_server >= 0 else -1.0)
        except Exception:
            _log.exception("access log: the line of a request from %s is lost", conn.peer_ip)

    def set_access_log(self, AccessLog access_log):
        self.access_log = access_log

    def _flush_access_log(self):
        try:
            self.access_log.flush()
        except Exception:
            _log.exception("access log: flush failed")

    def reopen_access_log(self):
        """SIGUSR1 (logrotate): the buffered lines to the old file, then the path anew."""
        if self.access_log is not None:
            try:
                self.access_log.reopen()
            except OSError as exc:
                _log.error("access log %s: cannot reopen: %s", self.access_log.path, exc.strerror)


def _proxy_peer_check(tuple trusted, str peer):
    """A fresh header buffer for a peer in ``trusted``; None (closed unheard) for the others."""
    try:
        addr = ipaddress.ip_address(peer)
    except ValueError:
        return None
    if addr.version == 6 and addr.ipv4_mapped is not None:
        addr = addr.ipv4_mapped
    return bytearray() if any(addr in net for net in trusted) else None


def _auto_worker_connections():
    """worker_connections = 0: seven eighths of the fd limit for clients, the rest kept for
    backend connections, listeners and files (so the limit is reached before EMFILE is)."""
    soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    if soft == resource.RLIM_INFINITY or soft > 1 << 20:
        soft = 1 << 20
    return max(16, soft - soft // 8)


cdef class Listener:
    """One listening socket of this worker; accepts in C, no Python socket per connection."""

    def __init__(self, Worker worker, sock, TLSContext context, SiteTable sites, proxy_trusted=None):
        """``proxy_trusted``: accept_proxy, the networks (ipaddress) whose connections start
        with a PROXY header; a peer outside them is closed unheard."""
        self.proxy_trusted = tuple(proxy_trusted) if proxy_trusted is not None else None
        self.worker = worker
        self.sock = sock
        self.fd = sock.fileno()
        self.context = context
        self.sites = sites
        self.active = False

    def start(self):
        self.sock.setblocking(False)
        # Linux copies TCP_NODELAY from the listening socket to each accepted one
        # (inet_csk_clone_lock): one setsockopt here instead of one per connection.
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.worker.fd_set(self.fd, self)
        self.worker.listeners.append(self)
        self.active = True
        self.watch(not self.worker.accept_paused)

    def serve(self, TLSContext context not None, SiteTable sites not None):
        """New connections from now on: a certificate changed (fastterm/certs/watch.py).
        Those accepted before keep the context and server blocks they started with; the
        spare streams of ended requests, which keep their last connection's, are dropped."""
        self.context = context
        self.sites = sites
        self.worker.spare_streams.clear()

    def stop(self):
        if self.active:
            self.watch(False)
            if self.worker.fd_get(self.fd) is self:
                self.worker.fd_clear(self.fd)
            self.worker.listeners.remove(self)
            self.active = False

    cdef void watch(self, bint on):
        if on != self.watching:
            self.worker.poll(self.fd, EPOLLIN if self.watching else 0, EPOLLIN if on else 0)
            self.watching = on

    cdef void on_readable(self):
        cdef sockaddr_storage addr
        cdef socklen_t alen
        cdef int fd, i, port
        cdef char text[INET6_ADDRSTRLEN + 1]
        cdef const void *src
        cdef ClientConnection conn
        cdef Worker w = self.worker
        w.release_closed()
        for i in range(64):
            if w.nclients >= w.max_clients:
                if w.now >= w.fd_log_next:
                    w.fd_log_next = w.now + 10
                    _log.warning("worker_connections (%d) reached: not accepting until one closes",
                                 w.max_clients)
                w.pause_accepting()
                return
            alen = sizeof(addr)
            fd = accept4(self.fd, <sockaddr *>&addr, &alen, SOCK_NONBLOCK | SOCK_CLOEXEC)
            if fd < 0:
                if errno == EMFILE or errno == ENFILE or errno == ENOBUFS or errno == ENOMEM:
                    w.out_of_fds()
                elif errno == ECONNABORTED:
                    continue   # that one gave up in the queue; the next may be there
                return
            if addr.ss_family == AF_INET6:
                src = &(<sockaddr_in6 *>&addr).sin6_addr
                port = ntohs((<sockaddr_in6 *>&addr).sin6_port)
            else:
                src = &(<sockaddr_in *>&addr).sin_addr
                port = ntohs((<sockaddr_in *>&addr).sin_port)
            if inet_ntop(addr.ss_family, src, text, sizeof(text)) == NULL:
                text[0] = 0
            peer_ip = text[:strlen(text)].decode("ascii")   # one str, no bytes object first
            conn = ClientConnection.__new__(ClientConnection)
            conn.worker = w
            conn.fd = fd
            conn.context = self.context
            conn.sites = self.sites
            conn.peer_ip = peer_ip
            conn.peer_port = port
            if self.proxy_trusted is not None:
                conn.proxy_in = _proxy_peer_check(self.proxy_trusted, conn.peer_ip)
                if conn.proxy_in is None:
                    w.count(N_PROXY_UNTRUSTED)
                    if w.handshake_log_allowed():
                        _log.warning("%s is not in proxy_trusted: closing its connection", conn.peer_ip)
                    close(fd)
                    conn.fd = -1
                    continue
            try:
                conn.start()
            except Exception:
                _log.exception("cannot start connection")
                conn.close()


cdef class Codec:
    def __cinit__(self, ClientConnection conn not None, ClientFacts facts not None):
        self.conn = conn
        self.worker = conn.worker
        self.facts = facts
        self.deadline = conn.deadline   # the first request is due within client_header_timeout of the accept

    cdef bint accepting(self):
        return False

    cdef void on_data(self, const char *p, Py_ssize_t n):
        pass

    cdef bint on_eof(self):
        return False

    cdef void on_output_blocked(self):
        pass

    cdef void on_output_drained(self):
        pass

    cdef double next_deadline(self):
        return self.deadline

    cdef void expire(self):
        self.conn.close()

    cdef void on_close(self):
        pass

    cdef void release(self):
        self.conn = None

    cdef void start(self):
        pass

    cdef void drain(self):
        """The worker drains (reload, stop). HTTP/1.1: its next response says close."""

    cdef void on_handshake_done(self):
        """The codec started on 0-RTT data and the handshake has now completed: what it held
        for that (requests with unsafe methods, RFC 8470 §3) goes on."""


cdef class ClientConnection:
    """One client TLS connection: the transport under its HTTP codec."""

    def __cinit__(self):
        self.fd = -1
        self.state = C_CLOSED

    cdef void start(self):
        cdef Worker w = self.worker
        w.count(N_CONNECTIONS)
        w.count(N_CONNECTIONS_OPEN)
        w.fd_set(self.fd, self)
        w.nclients += 1
        self.deadline = w.now + w.header_timeout
        if self.proxy_in is not None:
            self.state = C_PROXY
            self._want_read(True)
            self._read_proxy_header()
            return
        self._start_tls()

    cdef void _start_tls(self):
        """The handshake starts when the ClientHello is readable: a client's ClientHello comes
        after the accept (its connect returned on our SYN-ACK), so an SSL_do_handshake at
        once read nothing (EAGAIN) and returned WANT_READ; nginx also waits for the first
        read event. One read and one SSL_do_handshake less per connection."""
        self.hs_start = self.worker.now
        self.state = C_HANDSHAKE
        self.tls = TLSConnection(self.context, self.fd)
        self._want_read(True)

    cdef void on_readable(self):
        if self.state == C_HANDSHAKE:
            self._handshake()
        elif self.state == C_PROXY:
            self._read_proxy_header()
        elif self.state == C_LINGER:
            self._linger()
        elif self.state == C_OPEN:
            self._read_loop()

    cdef void on_writable(self):
        if self.state == C_HANDSHAKE:
            self._handshake()
            return
        self._flush()
        if self.read_wants_write and self.state == C_OPEN:
            self.read_wants_write = False
            self._read_loop()

    cdef void _interest(self, bint reading, bint writing):
        cdef unsigned int old = (EPOLLIN if self.reading else 0) | (EPOLLOUT if self.writing else 0)
        self.reading = reading
        self.writing = writing
        if self.fd >= 0:
            self.worker.poll(self.fd, old, (EPOLLIN if reading else 0) | (EPOLLOUT if writing else 0))

    cdef void _want_write(self, bint on):
        self._interest(self.reading, on)

    cdef void _want_read(self, bint on):
        self._interest(on, self.writing)

    cdef double next_deadline(self):
        """When this connection next has something to time out: output the client does not
        take (send_timeout), the handshake or lingering close, else its codec's deadline."""
        if self.output_blocked():
            return self.send_deadline
        if self.state == C_OPEN:
            return self.session.next_deadline()
        return self.deadline

    cdef void expire(self):
        cdef Worker w = self.worker
        if self.output_blocked():
            # Blocked on the client: its backend is paused by us, so only send_timeout counts.
            _log.info("%s took no output for %.0f s (send_timeout): closing", self.peer_ip, w.send_timeout)
            self.close()
        elif self.state == C_HANDSHAKE:
            self._count_handshake(TLS_WANT_READ)
            self.close()
        elif self.state == C_OPEN:
            self.session.expire()
        else:
            if self.state == C_PROXY:
                w.count(N_PROXY_MALFORMED)
                _log.info("%s sent no PROXY header within %.0f s: closing", self.peer_ip, w.header_timeout)
            self.close()

    # ---- Handshake flow -------------------------------------------------------------
    cdef ClientFacts _facts(self, ServerPolicy tls_server, bint http2, const char *sni):
        """The connection as its exchanges see it; what nginx's $server_addr, $ssl_* ... read only
        where a route rewrites heads nginx's way (a getsockname and a few bytes per connection)."""
        cdef ClientFacts facts = ClientFacts(self.peer_ip, self.sites, tls_server, http2)
        cdef const char *version
        cdef const SSL_CIPHER *cipher
        cert = None
        if self.sites.client_certs or self.sites.connection_facts or self.sites.send_proxy:
            cert = client_certificate(self.tls.ssl)
            facts.client_certificate(cert)
            if sni != NULL:
                facts._own().ssl_server_name_b = (<bytes>sni).rstrip(b".")   # the 421 rule of verifying blocks
        if self.sites.send_proxy:
            facts.proxy_facts = self._proxy_facts(sni, cert)
        if not self.sites.connection_facts:
            return facts
        server_addr, port = self._local_address()
        version = SSL_get_version(self.tls.ssl)
        cipher = SSL_get_current_cipher(self.tls.ssl)
        facts.connection(self.peer_port, server_addr, port,
                         (<bytes>version).decode("ascii") if version != NULL else "",
                         (<bytes>SSL_CIPHER_get_name(cipher)).decode("ascii") if cipher != NULL else "",
                         (<bytes>sni).decode("ascii", "replace") if sni != NULL else "")
        return facts

    cdef tuple _log_tls(self):
        """What the access log says of the connection: its address, SNI, protocol version,
        cipher, whether the session was resumed, the ALPN protocol (once, on its first line)."""
        cdef const char *name = NULL
        cdef const char *version
        cdef const SSL_CIPHER *cipher
        cdef const unsigned char *alpn = NULL
        cdef unsigned int alpn_len = 0
        if self.tls is None:
            return (self.peer_ip, None, None, None, None, None)
        name = SSL_get_servername(self.tls.ssl, TLSEXT_NAMETYPE_host_name)
        version = SSL_get_version(self.tls.ssl)
        cipher = SSL_get_current_cipher(self.tls.ssl)
        SSL_get0_alpn_selected(self.tls.ssl, &alpn, &alpn_len)
        return (self.peer_ip, (<bytes>name).decode("ascii", "replace") if name != NULL else None,
                (<bytes>version).decode("ascii") if version != NULL else None,
                (<bytes>SSL_CIPHER_get_name(cipher)).decode("ascii") if cipher != NULL else None,
                bool(SSL_session_reused(self.tls.ssl)),
                PyBytes_FromStringAndSize(<const char *>alpn, alpn_len).decode("ascii", "replace")
                if alpn_len else None)

    cdef tuple _local_address(self):
        """(address, port) the client connected to: nginx's $server_addr, a PROXY header's destination."""
        cdef sockaddr_storage addr
        cdef socklen_t alen = sizeof(addr)
        cdef char text[INET6_ADDRSTRLEN + 1]
        cdef int port = 0
        text[0] = 0
        if getsockname(self.fd, <sockaddr *>&addr, &alen) == 0:
            if addr.ss_family == AF_INET6:
                inet_ntop(AF_INET6, &(<sockaddr_in6 *>&addr).sin6_addr, text, sizeof(text))
                port = ntohs((<sockaddr_in6 *>&addr).sin6_port)
            else:
                inet_ntop(AF_INET, &(<sockaddr_in *>&addr).sin_addr, text, sizeof(text))
                port = ntohs((<sockaddr_in *>&addr).sin_port)
        return (<bytes>text).decode("ascii"), port

    cdef tuple _proxy_facts(self, const char *sni, tuple cert):
        """What proxyproto.proxy_header_for names: the client (the PROXY header's source when
        it came through one), the address it connected to, ALPN, SNI, version, cipher, and
        whether it sent a certificate (here, or in the session it resumed) and its verdict."""
        cdef const unsigned char *alpn = NULL
        cdef unsigned int alpn_len = 0
        cdef const char *version = SSL_get_version(self.tls.ssl)
        cdef const SSL_CIPHER *cipher = SSL_get_current_cipher(self.tls.ssl)
        SSL_get0_alpn_selected(self.tls.ssl, &alpn, &alpn_len)
        server_addr, port = self._local_address()
        if ":" in server_addr and server_addr.startswith("::ffff:") and ":" not in self.peer_ip:
            server_addr = server_addr[7:]   # an IPv4 client on a dual-stack listener: one family
        return (self.peer_ip, self.peer_port, server_addr, port,
                (<char *>alpn)[:alpn_len] if alpn != NULL else b"",
                (<bytes>sni).rstrip(b".") if sni != NULL else b"",
                (<bytes>version).decode("ascii") if version != NULL else "",
                (<bytes>SSL_CIPHER_get_name(cipher)).decode("ascii") if cipher != NULL else "",
                cert is not None, not SSL_session_reused(self.tls.ssl), cert[0] if cert is not None else 0)

    cdef bint _acme_validation(self):
        """A TLS-ALPN-01 validation handshake (ALPN acme-tls/1, ext/tls.pyx): no application
        data follows (RFC 8737 §3), so the connection closes; True when it was one."""
        cdef const unsigned char *alpn = NULL
        cdef unsigned int alpn_len = 0
        SSL_get0_alpn_selected(self.tls.ssl, &alpn, &alpn_len)
        if alpn_len == 10 and memcmp(alpn, b"acme-tls/1", 10) == 0:
            self.close()
            return True
        return False

    cdef void _open_session(self):
        """The codec ALPN chose, on the server block SNI chose (both known once the
        ClientHello is processed: before the handshake ends when early data is accepted)."""
        cdef const char *name = SSL_get_servername(self.tls.ssl, TLSEXT_NAMETYPE_host_name)
        cdef const unsigned char *alpn = NULL
        cdef unsigned int alpn_len = 0
        cdef ServerPolicy tls_server
        tls_server = self.sites.lookup(name, strlen(name)) if name != NULL else self.sites.default
        SSL_get0_alpn_selected(self.tls.ssl, &alpn, &alpn_len)
        SSL_set_default_read_buffer_len(self.tls.ssl, TLS_READ_BUF_SIZE)   # RELEASE_BUFFERS: taken when empty
        if alpn_len == 2 and memcmp(alpn, b"h2", 2) == 0:
            self.session = H2Session(self, self._facts(tls_server, True, name))
        else:
            self.session = H1Session(self, self._facts(tls_server, False, name))
        self.state = C_OPEN
        self.session.start()

    cdef int _read_early(self):
        """0-RTT: SSL_read_early_data comes before the handshake (SSL_read_early_data(3)). The
        first accepted bytes open the codec, which sees them at once (its requests carry
        Early-Data: 1, unsafe methods wait for the handshake); max_early_data bounds them,
        so they are taken whether or not the codec is accepting. TLS_OK when early data is
        over (the handshake goes on), else a TLS_* code to wait on."""
        cdef Worker w = self.worker
        cdef int n, i
        self.in_early_read = True
        try:
            for i in range(256):   # a record (<= 16 KiB) or a handshake step a call; bounded
                n = self.tls.read_early(w.rbuf, RBUF_SIZE)
                if n < 0:
                    return n
                if n > 0:
                    w.count(N_BYTES_IN, n)
                    if self.session is None:
                        self.early = True
                        self._count_early_data()
                        self._open_session()
                    if self.state == C_OPEN:
                        self.session.on_data(w.rbuf, n)
                    if self.state != C_OPEN:
                        return TLS_CLOSED   # the codec answered and closed (a bad request)
                if not self.tls.early_reading:
                    self._count_early_data()
                    return TLS_OK
            return TLS_WANT_READ
        finally:
            self.in_early_read = False

    cdef void _read_proxy_header(self):
        """accept_proxy: the header comes off the socket before OpenSSL reads any of it. The
        bytes there are peeked, and only the header's own are taken: the ClientHello behind
        it stays in the socket for the handshake. A prefix is taken into ``proxy_in`` (the
        socket would stay readable under the level-triggered poll otherwise)."""
        cdef Worker w = self.worker
        cdef ProxyHeader h
        cdef Py_ssize_t have = PyByteArray_GET_SIZE(self.proxy_in), r
        cdef ssize_t got
        cdef char text[INET6_ADDRSTRLEN + 1]
        memcpy(w.rbuf, PyByteArray_AS_STRING(self.proxy_in), have)
        got = recv(self.fd, w.rbuf + have, PP_V2_MAX + 1 - have, MSG_PEEK)
        if got < 0 and (errno == EAGAIN or errno == EINTR):
            return
        if got <= 0:
            _log.debug("%s closed the connection before its PROXY header ended", self.peer_ip)
            self.close()
            return
        r = proxy_parse(<const unsigned char *>w.rbuf, have + got, &h)
        if r < 0:
            w.count(N_PROXY_MALFORMED)
            _log.info("%s: %s PROXY header: closing", self.peer_ip,
                      "malformed" if r == PP_MALFORMED else "too long a")
            self.close()
            return
        # take the header's bytes (all of them when it is not complete yet)
        if recv(self.fd, w.rbuf + have, (r - have) if r > 0 else got, 0) != ((r - have) if r > 0 else got):
            self.close()
            return
        if r == PP_NEED_MORE:
            bytearray_extend(self.proxy_in, w.rbuf + have, got)
            return
        w.count(N_PROXY_ACCEPTED)
        self.proxy_in = None
        if h.command == PP_PROXY and inet_ntop(h.family, h.src, text, sizeof(text)) != NULL:
            self.peer_ip = (<bytes>text).decode("ascii")
            self.peer_port = h.src_port
        self._start_tls()
        if have + got > r:
            self._handshake()   # the ClientHello came behind the header: it is readable now

    cdef void _handshake(self):
        cdef Worker w = self.worker
        cdef int r = TLS_OK
        if self.tls.early_reading:
            r = self._read_early()
            if self.state != C_HANDSHAKE and self.state != C_OPEN:
                return
        if r == TLS_OK:
            r = self.tls.handshake()
        if r == TLS_OK:
            self._want_write(self.pending_out is not None)   # 0.5-RTT output may still wait
            self._count_handshake(r)
            if self._acme_validation():
                return
            if self.session is None:
                self._open_session()
            else:
                self.early = False
                if self.pending_out is not None:
                    self._flush()
                if self.state == C_OPEN:
                    self.session.on_handshake_done()
            if self.state == C_OPEN:
                self._read_loop()
        elif r == TLS_WANT_READ:
            self._want_write(self.pending_out is not None)
        elif r == TLS_WANT_WRITE:
            if self.state == C_OPEN:
                self.read_wants_write = True   # on_writable flushes, then comes back here
            self._want_write(True)
        else:
            self._count_handshake(r)
            if r == TLS_EOF or r == TLS_CLOSED:
                _log.debug("%s closed the connection during the handshake", self.peer_ip)
            else:
                if w.handshake_log_allowed():
                    _log.info("handshake failed from %s: %s", self.peer_ip, self.tls.error)
                if self.tls.failure == TLS_FAIL_HTTP:
                    # Plain HTTP on the TLS port: say so in plain HTTP, as nginx does.
                    send(self.fd, PyBytes_AS_STRING(_PLAIN_HTTP_400), len(_PLAIN_HTTP_400), MSG_NOSIGNAL)
                    self.finish()
                    return
            self.close()

    cdef void _count_handshake(self, int result):
        cdef Worker w = self.worker
        cdef const char *name
        if result == TLS_OK:
            w.tick()
            self.hs_time = w.now - self.hs_start
            w.count(N_HANDSHAKES_RESUMED if SSL_session_reused(self.tls.ssl) else N_HANDSHAKES_FULL)
            self._count_early_data()
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
        self._count_early_data()   # decided with the ClientHello: a replay fails at the client's Finished
        if result == TLS_EOF or result == TLS_CLOSED:
            w.count(N_HS_FAIL_EOF)
        elif result == TLS_WANT_READ:
            w.count(N_HS_FAIL_TIMEOUT)
        else:
            w.count(_FAILURE_COUNTERS.get(self.tls.failure, N_HS_FAIL_OTHER))

    cdef void _count_early_data(self):
        """Once per connection, as soon as OpenSSL has decided (with the ClientHello): an
        answer in 0.5-RTT data may end the connection before the handshake does."""
        cdef Worker w = self.worker
        cdef int status = SSL_get_early_data_status(self.tls.ssl)
        if self.early_counted or status == SSL_EARLY_DATA_NOT_SENT:
            return
        self.early_counted = True
        w.count(N_EARLY_OFFERED)
        if status == SSL_EARLY_DATA_ACCEPTED:
            w.count(N_EARLY_ACCEPTED)
        elif self.tls.early_verdict == EARLY_REPLAY:
            w.count(N_EARLY_REPLAY)
        else:
            w.count(N_EARLY_REJECTED)

    # ---- Input flow -----------------------------------------------------------------
    cdef void _read_loop(self):
        """SSL_read gives one record (<= 16 KiB) a call; the records OpenSSL already holds
        (read_ahead filled its buffer) are gathered into one ``on_data``: an upload's body
        goes to the backend in one write per rbuf instead of one per record."""
        cdef Worker w = self.worker
        cdef int n, got
        if self.early:
            # The codec runs on early data; the handshake has to complete before SSL_read.
            if not self.in_early_read:
                self._handshake()
            return
        while self.state == C_OPEN:
            if not self.session.accepting():
                self._want_read(False)   # resumed by resume_input(); the kernel buffers meanwhile
                return
            got = 0
            n = self.tls.read_into(w.rbuf, RBUF_SIZE)
            while n > 0:
                got += n
                if got == RBUF_SIZE or not SSL_has_pending(self.tls.ssl):
                    break
                n = self.tls.read_into(w.rbuf + got, RBUF_SIZE - got)
            if got:
                w.count(N_BYTES_IN, got)
                self.session.on_data(w.rbuf, got)
                if n > 0 and got < RBUF_SIZE and self.state == C_OPEN and not SSL_has_pending(self.tls.ssl):
                    # OpenSSL holds nothing more; the loop polls level-triggered, so the
                    # socket wakes us again if it has more: saves a read() per event.
                    return
                if n != TLS_WANT_READ:
                    continue   # full, or a status the next read gives again once the codec takes input
            if n == TLS_WANT_READ:
                return
            if n == TLS_WANT_WRITE:
                self.read_wants_write = True
                self._want_write(True)
                return
            # close_notify, EOF or error from the client
            if n == TLS_FAILED:
                _log.debug("TLS error from %s: %s", self.peer_ip, self.tls.error)
            if self.session.on_eof():
                self._want_read(False)   # the response in flight is finished first
                return
            self.close()
            return

    cdef void resume_input(self):
        """The codec takes input again: read what waits in OpenSSL and the socket."""
        if self.state == C_OPEN:
            self._want_read(True)
            self._read_loop()

    # ---- Output flow ----------------------------------------------------------------
    cdef void send(self, const char *p, Py_ssize_t n):
        """Plaintext to the client; what the socket cannot take now waits in pending_out
        and the codec pauses its backend until it drains, so pending_out holds at most what
        one backend read brought (nginx: one proxy buffer per connection)."""
        cdef int r
        cdef Worker w = self.worker
        if self.state == C_CLOSED:
            return
        w.count(N_BYTES_OUT, n)
        self.sent += n
        if self.pending_out is not None:
            bytearray_extend(self.pending_out, p, n)
            if self.session is not None:
                self.session.on_output_blocked()
            return
        while n > 0:
            r = self.tls.write_from(p, <int>min(n, 0x40000000))
            if r > 0:
                p += r
                n -= r
                continue
            if r == TLS_WANT_WRITE or r == TLS_WANT_READ:
                self.pending_out = bytearray()
                bytearray_extend(self.pending_out, p, n)
                self.send_deadline = w.now + w.send_timeout
                self._want_write(True)
                if self.session is not None:
                    self.session.on_output_blocked()
                return
            _log.debug("write to %s failed: %s", self.peer_ip, self.tls.error)
            self.close()
            return

    cdef bint output_blocked(self) noexcept:
        """Output waits for the client: no backend reads, no new requests meanwhile."""
        return self.pending_out is not None

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
            r = self.tls.write_from(p + off, <int>min(n - off, 0x40000000))
            if r > 0:
                off += r
                continue
            if r == TLS_WANT_WRITE or r == TLS_WANT_READ:
                if off:
                    del self.pending_out[:off]
                    self.send_deadline = self.worker.now + self.worker.send_timeout   # progress
                return
            self.close()
            return
        self.pending_out = None
        self._want_write(False)
        if self.state == C_LINGER:
            self.finish()
        elif self.state == C_OPEN:
            self.session.on_output_drained()

    # ---- Shutdown flow --------------------------------------------------------------
    cdef void finish(self):
        """Orderly close: flush, close_notify, half-close, then discard input briefly
        (lingering close) so the client reads our last response instead of a RST.

        With ``input_done`` (the client said its request was its last, RFC 9112 §9.6, and
        all of it was read) nothing more comes but its reply to our close_notify, sent after
        it read everything before it: the connection closes at once when the socket holds no
        unread input (a close with unread input sends RST at once), as nginx's
        ``lingering_close on`` does. Saves a shutdown, a recv and an epoll round per
        connection (one request per connection: the handshake benchmarks)."""
        cdef Worker w = self.worker
        cdef ssize_t r
        if self.state == C_CLOSED:
            return
        self.state = C_LINGER
        if self.output_blocked():
            # _flush() calls back when the client took the rest; until then send_timeout
            # governs and input is not read (it would only be discarded).
            self._want_read(False)
            return
        self.deadline = w.now + LINGER_SECONDS
        if self.tls is not None:
            self.tls.send_close_notify()
        if self.input_done and (self.tls is None or not SSL_has_pending(self.tls.ssl)):
            r = recv(self.fd, w.rbuf, RBUF_SIZE, 0)
            if r <= 0 and not (r < 0 and errno == EINTR):
                self.close()   # nothing unread (EAGAIN), or the client is gone already
                return
        self._want_read(True)
        shutdown(self.fd, SHUT_WR)
        self._linger()

    cdef void _linger(self):
        cdef Worker w = self.worker
        cdef ssize_t r
        while True:
            r = recv(self.fd, w.rbuf, RBUF_SIZE, 0)
            if r > 0:
                continue
            if r < 0 and (errno == EAGAIN or errno == EINTR):  # EWOULDBLOCK == EAGAIN on Linux
                return
            self.close()
            return

    cdef void close(self):
        cdef Worker w = self.worker
        cdef int fd
        if self.state == C_CLOSED:
            return
        self.state = C_CLOSED
        # close() below takes the socket out of the epoll set (its only descriptor: accepted
        # CLOEXEC, never duplicated): no EPOLL_CTL_DEL first.
        self.reading = self.writing = False
        if self.session is not None:
            self.session.on_close()
            w.release_later(self)
        if self.early and self.tls is not None:
            # answered in 0.5-RTT data and closed before the client's Finished came: OpenSSL took
            # the PSK and sent its Finished, so this is the resumed handshake it would complete
            self._count_handshake(TLS_OK)
        self.tls = None       # SSL_free
        fd = self.fd
        self.fd = -1
        self.pending_out = None
        w.count(N_CONNECTIONS_OPEN, -1)
        if fd >= 0:
            close(fd)
            if w.fd_get(fd) is self:
                w.nclients -= 1
                w.fd_clear(fd)   # may drop the last reference to self: nothing below reads it
        w.client_closed()

    @property
    def peer(self):
        return self.peer_ip
