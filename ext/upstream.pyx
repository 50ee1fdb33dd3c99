# The backend side. Plain backend connections sit in the worker's own epoll set, as client
# connections do (BackendPlainTransport): a response read is one recv() into one
# worker-owned buffer and C calls, whose bytes go to the client without a Python object; a
# request is one send(). The response head is judged and rewritten by the stream's Exchange.
#
# Pools keep idle keep-alive connections for the concurrency recent load needed: the most
# connections busy at once in the last ten seconds (at least `keepalive`, at most
# `keepalive_max` per server); an idle one unused for `keepalive_timeout` is closed. A fixed
# idle cap made 74% of requests pay a new backend connection at 1,000 clients.

import asyncio
import collections
import encodings.idna  # noqa: F401  sock_connect's host codec, imported before a privilege drop
import socket

cdef enum:
    PEAK_SECONDS = 10
    MAX_RESPONSE_HEAD = 65536


cdef class UpstreamPool:
    """Round-robin servers with passive ejection, each with a LIFO of idle connections."""

    def __init__(self, str name, servers, int keepalive=32, double fail_timeout=10.0, int tries=3,
                 int keepalive_max=1024, double keepalive_timeout=60.0, int max_conns=1024):
        self.name = name
        self.host_header = name.encode("ascii", "replace")   # nginx's $proxy_host
        self.servers = list(servers)
        self.idle = [[] for _ in self.servers]
        self.down_until = [0.0] * len(self.servers)
        self.keepalive = keepalive
        self.keepalive_max = max(keepalive, keepalive_max)
        self.keepalive_timeout = keepalive_timeout
        self.tries = max(1, tries)
        self.idle_cap = keepalive
        self.max_conns = max_conns
        if max_conns:
            self.keepalive_max = min(self.keepalive_max, max_conns)
        self.open = [0] * len(self.servers)
        self.waiting = collections.deque()
        self.set_balancing([1] * len(self.servers), [False] * len(self.servers), [1] * len(self.servers),
                           [fail_timeout] * len(self.servers), False)

    def set_balancing(self, weights, backup, max_fails, fail_timeouts, bint least_conn):
        """Per server: weight, backup, max_fails, fail_timeout (nginx's ``server`` parameters);
        ``least_conn``: the server with the fewest active requests per weight first."""
        n = len(self.servers)
        self.weight = [max(1, int(w)) for w in weights]
        self.effective = list(self.weight)
        self.current = [0] * n
        self.backup = [bool(b) for b in backup]
        self.max_fails = [max(0, int(m)) for m in max_fails]
        self.fail_timeouts = [float(t) for t in fail_timeouts]
        self.fails = [0] * n
        self.checked = [0.0] * n
        self.accessed = [0.0] * n
        self.active = [0] * n
        self.least_conn = least_conn

    def set_tls(self, TLSContext context not None, names, sni, bint session_reuse=True):
        """Connect to every server with TLS: ``names`` (one per server) checked against its
        certificate when ``context`` verifies, ``sni`` (one per server, None: no SNI) sent."""
        self.tls = context
        self.tls_names = list(names)
        self.tls_sni = list(sni)
        self.tls_reuse = session_reuse
        self.tls_sessions = [None] * len(self.servers)

    def set_health(self, HealthTable table not None, slots):
        """Servers marked down in ``table`` (one slot per server, -1: not checked) are skipped."""
        self.health = table
        self.health_slot = [int(s) for s in slots]
        self.health_ups = [-1] * len(self.servers)

    cdef bint _checked_up(self, int server):
        """Not marked down by the active check; one that came up again since last seen has its
        passive-ejection state cleared (DESIGN.md: active checks bring a server back)."""
        cdef int slot
        cdef uint64_t word
        if self.health is None:
            return True
        slot = self.health_slot[server]
        if slot < 0:
            return True
        word = self.health.read(slot)
        if <long long>(word >> 1) != <long long>self.health_ups[server]:
            if <long long>self.health_ups[server] >= 0:
                self.fails[server] = 0
                self.down_until[server] = 0.0
                self.effective[server] = self.weight[server]
            self.health_ups[server] = <long long>(word >> 1)
        return not word & FT_HEALTH_DOWN

    cdef bint _usable(self, int server, double now, unsigned long long tried):
        """Not tried by this request, not down by the active check, and not out after
        max_fails failures within fail_timeout."""
        cdef int max_fails = self.max_fails[server]
        if tried & (1ULL << (server & 63)) or not self._checked_up(server):
            return False
        return not (max_fails and <int>self.fails[server] >= max_fails and
                    now - <double>self.checked[server] <= <double>self.fail_timeouts[server])

    cdef int _pick(self, double now, unsigned long long tried, bint backup):
        """nginx's peer choice among the primary (or the backup) servers: smooth weighted
        round robin (ngx_http_upstream_get_peer); least_conn first keeps those with the fewest
        active requests per weight (ngx_http_upstream_get_least_conn_peer). -1: none usable."""
        cdef int n = len(self.servers), s, best = -1, total = 0, fewest = -1, ties = 0
        cdef int eff
        if self.least_conn:
            for s in range(n):
                if self.backup[s] != backup or not self._usable(s, now, tried):
                    continue
                if fewest < 0 or <int>self.active[s] * <int>self.weight[fewest] < \
                        <int>self.active[fewest] * <int>self.weight[s]:
                    fewest, ties = s, 1
                elif <int>self.active[s] * <int>self.weight[fewest] == <int>self.active[fewest] * <int>self.weight[s]:
                    ties += 1
            if ties == 1:
                best = fewest
        if best < 0:
            for s in range(n):
                if self.backup[s] != backup or not self._usable(s, now, tried):
                    continue
                if fewest >= 0 and <int>self.active[s] * <int>self.weight[fewest] != \
                        <int>self.active[fewest] * <int>self.weight[s]:
                    continue   # least_conn: not among the fewest
                eff = self.effective[s]
                self.current[s] = <int>self.current[s] + eff
                total += eff
                if eff < <int>self.weight[s]:
                    self.effective[s] = eff + 1
                if best < 0 or <int>self.current[s] > <int>self.current[best]:
                    best = s
            if best < 0:
                return -1
            self.current[best] = <int>self.current[best] - total
        if now - <double>self.checked[best] > <double>self.fail_timeouts[best]:
            self.checked[best] = now   # a failed server back after fail_timeout: its success clears it
        return best

    cdef int next_server(self, double now, unsigned long long tried=0):
        """A primary server, else a backup one (only when no primary is usable); when none is,
        the one back soonest (nginx max_fails=1 fail_timeout=10s: a dead server costs one
        failed connect, not one per request) among those the active check has not taken down;
        -1 when it took every one down (Stream.dispatch answers 503)."""
        cdef int n = len(self.servers), s, best
        best = self._pick(now, tried, False)
        if best < 0:
            best = self._pick(now, tried, True)
        if best >= 0:
            return best
        for s in range(n):
            if not tried & (1ULL << (s & 63)) and self._checked_up(s) and (
                    best < 0 or self.down_until[s] < self.down_until[best]):
                best = s
        if best < 0:   # every server tried by this request
            for s in range(n):
                if self._checked_up(s) and (best < 0 or self.down_until[s] < self.down_until[best]):
                    best = s
        return best   # -1: every server down by the active check (503 at once)

    cdef void mark_failed(self, int server, double now):
        """nginx's failure accounting (ngx_http_upstream_free_round_robin_peer): counted,
        the weight lowered; out for fail_timeout at max_fails, its idle connections closed."""
        cdef int max_fails = self.max_fails[server]
        self.fails[server] = <int>self.fails[server] + 1
        self.checked[server] = now
        self.accessed[server] = now
        if max_fails:
            self.effective[server] = max(0, <int>self.effective[server] - <int>self.weight[server] // max_fails)
            if <int>self.fails[server] >= max_fails:
                self.down_until[server] = now + <double>self.fail_timeouts[server]
                for conn in list(self.idle[server]):
                    (<BackendConnection>conn).abort()

    cdef void note_success(self, int server):
        """A response came whole: failures counted before a retry after fail_timeout are cleared."""
        if <double>self.accessed[server] < <double>self.checked[server]:
            self.fails[server] = 0

    # Python API of the balancing (unit tests)
    def choose(self, double now, unsigned long long tried=0):
        return self.next_server(now, tried)

    def failed(self, int server, double now):
        self.mark_failed(server, now)

    def succeeded(self, int server):
        self.note_success(server)

    def set_active(self, int server, int n):
        self.active[server] = n

    def ejected(self, double now):
        return [self.servers[i] for i in range(len(self.servers)) if self.down_until[i] > now]

    cdef BackendConnection take_idle(self, int server):
        cdef list idle = self.idle[server]
        if idle:
            return idle.pop()
        return None

    cdef bint hand_over(self, BackendConnection conn, double now):
        """A connection free again goes to the first request waiting for one, if any."""
        cdef Stream stream
        while self.waiting:
            stream = <Stream>self.waiting.popleft()
            if not stream.queued:
                continue   # gone meanwhile (answered, reset, closed)
            stream.queued = False
            stream.worker.count(N_BACKEND_REUSED)
            conn.attach(stream)
            conn.write(stream.request_head)
            stream.deadline = now + stream.read_timeout
            stream.backend_ready()
            return True
        return False

    cdef void closed_one(self, int server):
        """A connection of ``server`` closed (or a connect failed): a waiting request may
        open the one that frees."""
        cdef Stream stream
        self.open[server] -= 1
        while self.waiting:
            stream = <Stream>self.waiting.popleft()
            if stream.queued:
                stream.queued = False
                stream._connect(server)
                return

    cdef void release(self, BackendConnection conn, double now):
        """Back to the idle list after a complete exchange (or to a request waiting for a
        connection), or closed past the idle cap."""
        cdef list idle = self.idle[conn.server]
        cdef int n = len(self.servers)
        conn.detach()
        if self.send_proxy:
            conn.abort()   # its PROXY header named one client: never another's (nor pooled)
            return
        if self.waiting and self.hand_over(conn, now):
            return
        # This second's peak counts at once: a burst keeps its connections before the tick.
        if len(idle) >= min(self.keepalive_max, max(self.idle_cap, (self.window_peak + n - 1) // n)):
            conn.abort()
            return
        conn.state = B_IDLE
        conn.idle_since = now
        idle.append(conn)

    cdef void tick(self, double now):
        """Once a second: the idle cap follows the last ten seconds' peak; stale idle
        connections (oldest first in each list) are closed."""
        cdef int i, peak = 0, per_server
        cdef list idle
        self.peaks[self.peak_slot] = self.window_peak
        self.peak_slot = (self.peak_slot + 1) % PEAK_SECONDS
        self.window_peak = self.busy + self.connecting
        for i in range(PEAK_SECONDS):
            if self.peaks[i] > peak:
                peak = self.peaks[i]
        per_server = (peak + len(self.servers) - 1) // len(self.servers)
        self.idle_cap = min(self.keepalive_max, max(self.keepalive, per_server))
        for idle in self.idle:
            while idle and ((<BackendConnection>idle[0]).idle_since + self.keepalive_timeout <= now
                            or len(idle) > self.idle_cap):
                (<BackendConnection>idle[0]).abort()

    cdef void note_demand(self):
        """Requests with a connection, or waiting for one being made, count towards the peak:
        a burst's connects finish one by one, so counting attached ones alone undercounts."""
        if self.busy + self.connecting > self.window_peak:
            self.window_peak = self.busy + self.connecting

    def _connect_done(self, fut, int server):
        """A connect that made no connection frees its place at once (one that did counts
        until its BackendConnection closes)."""
        self.connecting -= 1
        self.active[server] = <int>self.active[server] - 1
        if fut.cancelled() or fut.exception() is not None:
            self.closed_one(server)

    def idle_count(self):
        return sum(len(i) for i in self.idle)


cdef class Stream:
    """Getting a backend connection for one exchange (pooled, or connected now), retrying
    on another server when that is safe, and losing it. The subclass (the HTTP/1.1 session,
    an HTTP/2 stream) frames the response for its client through the hooks at the end."""

    # ---- Connection flow ------------------------------------------------------------
    cdef void routed(self):
        """The exchange has its route: its backend timeouts for every deadline that follows."""
        cdef Timeouts t = self.exchange.timeouts
        if t is None:
            self.connect_timeout = self.worker.connect_timeout
            self.read_timeout = self.worker.read_timeout
            self.backend_send_timeout = self.worker.backend_send_timeout
        else:
            self.connect_timeout = t.connect
            self.read_timeout = t.read
            self.backend_send_timeout = t.send

    cdef void dispatch(self, bint fresh):
        """Send the request head to a pooled backend connection, or connect one."""
        cdef Worker w = self.worker
        cdef UpstreamPool pool = self.exchange.pool
        cdef int server
        cdef BackendConnection conn = None
        if self.attempts == 0:
            self.tried = 0
            self.first_try = w.now
            self.exchange.upstream_start = w.now
        server = pool.next_server(w.now, self.tried)
        if server < 0:
            self.answer_error(503)
            return
        self.exchange.upstream_server = server
        self.tried |= 1ULL << (server & 63)
        self.attempts += 1
        if not fresh:
            conn = pool.take_idle(server)
        if conn is None:
            if pool.max_conns and pool.open[server] >= pool.max_conns:
                # The pool is at max_conns: wait for a connection to come free (HAProxy's queue)
                # rather than open more; as long as a connect may take, then 503.
                self.queued = True
                self.tried_server = server
                self.deadline = w.now + self.connect_timeout
                pool.waiting.append(self)
                pool.note_demand()
                return
            self._connect(server)
            return
        w.count(N_BACKEND_REUSED)
        conn.attach(self)
        conn.write(self.request_head)

    cdef void _connect(self, int server):
        cdef Worker w = self.worker
        cdef UpstreamPool pool = self.exchange.pool
        self.connecting = True
        self.tried_server = server
        self.deadline = w.now + self.connect_timeout
        w.count(N_BACKEND_CONNECTS)
        if pool.tls is not None:
            self.connect_fut = asyncio.ensure_future(_tls_connect(w, pool, server, proxy_header_for(
                pool.send_proxy, self.exchange.facts.proxy_facts) if pool.send_proxy else None))
        else:
            self.connect_fut = asyncio.ensure_future(_plain_connect(w, pool, server))
        pool.open[server] += 1
        pool.connecting += 1
        pool.active[server] = <int>pool.active[server] + 1
        pool.note_demand()
        self.connect_fut.add_done_callback(lambda f: pool._connect_done(f, server))
        self.connect_fut.add_done_callback(self._on_connected)

    def _on_connected(self, fut):
        cdef BackendConnection conn
        cdef Worker w = self.worker
        if fut.cancelled():
            return
        exc = fut.exception()
        if fut is not self.connect_fut or self.exchange is None or self.exchange.state != X_FORWARDING:
            # A connect that finished as its timeout fired (cancel() came too late, and the
            # request already went on to another server), or for a request that is gone.
            if exc is None:
                fut.result()[0].close()
            return
        self.connect_fut = None
        self.connecting = False
        if exc is not None:
            w.count(N_BACKEND_ERRORS)
            host, port = self.exchange.pool.servers[self.tried_server]
            _log.warning("upstream %s: connect to %s:%s failed: %s", self.exchange.pool.name, host, port, exc)
            self.next_server_or(502)
            return
        conn = fut.result()[1]
        if conn.state == B_CLOSED:
            # Accepted, then closed or reset before this callback ran (a backend whose
            # listener is going away): nothing was sent, so this is a failed connect.
            w.count(N_BACKEND_ERRORS)
            host, port = self.exchange.pool.servers[self.tried_server]
            _log.warning("upstream %s: %s:%s closed the connection at once", self.exchange.pool.name, host, port)
            self.next_server_or(502)
            return
        conn.attach(self)
        if self.exchange.pool.send_proxy and self.exchange.pool.tls is None:
            conn.write(proxy_header_for(self.exchange.pool.send_proxy, self.exchange.facts.proxy_facts))
        conn.write(self.request_head)
        self.deadline = w.now + self.read_timeout
        self.backend_ready()

    cdef void next_server_or(self, int status):
        """A connect failed or timed out (nothing was sent): eject that server and try
        another at once, or answer ``status``."""
        cdef UpstreamPool pool = self.exchange.pool
        self.connecting = False
        self.worker.tick()
        pool.mark_failed(self.tried_server, self.worker.now)
        if self.exchange.next_upstream(NEXT_TIMEOUT if status == 504 else NEXT_ERROR, False, self.attempts,
                                       self.worker.now - self.first_try):
            self.dispatch(True)
        else:
            self.answer_error(status)

    cdef void connect_timed_out(self):
        cdef UpstreamPool pool = self.exchange.pool
        if self.connect_fut is not None:
            self.connect_fut.cancel()
            self.connect_fut = None
        _log.warning("upstream %s: connect to %s:%s timed out", pool.name, *pool.servers[self.tried_server])
        self.next_server_or(504)

    cdef void queue_timed_out(self):
        _log.warning("upstream %s: no connection free within %g s (max_conns %d)", self.exchange.pool.name,
                     self.connect_timeout, self.exchange.pool.max_conns)
        self.queued = False
        self.answer_error(503)

    cdef void backend_failed(self, bint got_bytes, int server, bint fresh):
        """The backend connection closed or reset before the response ended."""
        cdef Worker w = self.worker
        self.backend = None
        w.count(N_BACKEND_ERRORS)
        if fresh and not got_bytes:
            # A new connection reset before answering: the server is failing (a pooled one
            # may just have been closed by the backend's keep-alive timeout).
            w.tick()
            self.exchange.pool.mark_failed(server, w.now)
        if self.exchange.rewrite is None and self.exchange.may_retry(got_bytes, self.attempts) or \
                self.exchange.rewrite is not None and not got_bytes and self.exchange.next_upstream(
                    NEXT_ERROR, True, self.attempts - (not fresh), w.now - self.first_try):
            # A pooled keep-alive connection the backend had already closed: retry fresh
            # (nginx does not count that try); nginx routes: proxy_next_upstream error.
            self.dispatch(True)
        elif self.exchange.state == X_FORWARDING:
            self.answer_error(502)
        else:
            self.reset()

    cdef void drop_backend(self):
        """Abandon the backend side: its connection can't be reused mid-exchange."""
        if self.backend is not None:
            self.backend.abort()
            self.backend = None
        if self.connect_fut is not None:
            self.connect_fut.cancel()
            self.connect_fut = None
        self.connecting = False
        self.queued = False   # the pool's queue skips it

    cdef void too_early(self):
        """The backend answered 425 to this request sent in early data: the same head
        without its last field (Early-Data: 1) on a new connection, once the client's
        handshake is complete (RFC 8470 §5.2)."""
        cdef Py_ssize_t n = PyBytes_GET_SIZE(self.request_head)
        self.request_head = self.request_head[:n - 17] + b"\r\n"   # drop "Early-Data: 1\r\n"
        if not self.wait_for_handshake():
            self.dispatch(True)

    cdef bint read_timed_out(self):
        """No response head within the read timeout: on to the next server when the route's
        proxy_next_upstream says timeout (nginx), True; else False and the codec answers 504."""
        cdef Worker w = self.worker
        cdef BackendConnection conn = self.backend
        if conn is None or self.exchange is None or self.exchange.state != X_FORWARDING or \
                self.exchange.rewrite is None or \
                not self.exchange.next_upstream(NEXT_TIMEOUT, True, self.attempts, w.now - self.first_try):
            return False
        _log.warning("upstream %s: %s:%s timed out reading the response head", self.exchange.pool.name,
                     *self.exchange.pool.servers[conn.server])
        self.exchange.pool.mark_failed(conn.server, w.now)
        self.drop_backend()
        self.retry_now()
        return True

    cdef void retry_now(self):
        """The request again, on a fresh connection to the next server, with a fresh read deadline."""
        self.dispatch(True)
        if not self.connecting and not self.queued:
            self.deadline = self.worker.now + self.read_timeout

    # ---- What the codec's stream implements -----------------------------------------
    cdef bint wait_for_handshake(self):
        """True when the client's handshake is not complete yet: the codec dispatches this
        stream again once it is (on_handshake_done)."""
        return False

    cdef void backend_ready(self):
        """A connect completed and the request head went out."""

    cdef bint closing(self):
        return False

    cdef bint request_sent(self):
        return True

    cdef void backend_writable(self, bint writable):
        """The backend's socket buffer filled up (False) or drained (True)."""

    cdef void response_interim(self, const char *p, Py_ssize_t n):
        """A 1xx head, as the backend sent it."""

    cdef Py_ssize_t response_head(self, HeadWriter head, const char *body, Py_ssize_t k):
        """The rewritten final head (in ``head``) and the first ``k`` body bytes of this
        read; returns how many of those went out with it."""
        return 0

    cdef void response_data(self, const char *p, Py_ssize_t n):
        """Body bytes for the client (chunk data only when the exchange de-chunks)."""

    cdef void response_trailers(self, bytes section):
        """The trailer fields of a chunked response that was de-chunked (``name: value``
        lines, CRLF each, the empty line last); HTTP/1.1 clients get them in the chunks."""

    cdef void response_end(self, bint until_close):
        """The response ended (with the backend's close, when ``until_close``)."""

    cdef void answer_error(self, int status):
        """Nothing was sent to the client yet: answer ``status`` ourselves."""

    cdef void reset(self):
        """The response had started when the backend failed: the client can't be told
        in-band; end its stream (HTTP/1.1: close the connection)."""


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
        if isinstance(transport, BackendPlainTransport):
            self.plain = transport

    cdef Py_ssize_t read_size(self):
        """How much one read may bring: an HTTP/2 stream pauses its backend past H2_OUT_MAX,
        so one read of 64 KiB over it at most."""
        cdef Stream stream = self.stream
        if stream is not None and stream.exchange is not None and stream.exchange.facts.http2:
            return H2_OUT_MAX
        return BACKEND_BUF_SIZE

    cdef void write(self, bytes data):
        if self.plain is not None:
            self.plain.send(PyBytes_AS_STRING(data), PyBytes_GET_SIZE(data))
        else:
            self.transport.write(data)

    def eof_received(self):
        try:
            self._lost()
        except Exception:
            self._internal_error()
        return False

    def connection_lost(self, exc):
        try:
            self._lost()
        except Exception:
            self._internal_error()

    def _internal_error(self):
        """A bug met on this backend connection closes it and its client's stream, never
        the worker (the same boundary as the client side's event dispatch)."""
        cdef Stream stream = self.stream
        _log.exception("upstream %s: closing a backend connection after an internal error", self.pool.name)
        self.abort()
        if stream is not None:
            stream.backend = None
            stream.reset()

    def pause_writing(self):
        if self.stream is not None:
            self.stream.backend_writable(False)

    def resume_writing(self):
        if self.stream is not None:
            self.stream.backend_writable(True)

    def _lost(self):
        cdef Stream stream = self.stream
        cdef int state = self.state
        cdef list idle
        if state == B_CLOSED:
            return
        self.detach()
        self.state = B_CLOSED
        self.pool.closed_one(self.server)
        if self.transport is not None:
            self.transport.close()
        if state == B_IDLE:
            idle = self.pool.idle[self.server]
            if self in idle:
                idle.remove(self)
            return
        if stream is None:
            return
        if state == B_BODY and self.body.mode == BODY_UNTIL_CLOSE:
            stream.backend = None
            stream.exchange.response_end()
            stream.response_end(True)
            return
        stream.backend_failed(self.got_bytes, self.server, self.requests == 1)

    cdef void attach(self, Stream stream):
        self.requests += 1
        self.stream = stream
        stream.backend = self
        self.state = B_HEAD
        self.head_buf = None
        self.got_bytes = False
        self.attached = True
        self.pool.busy += 1
        self.pool.active[self.server] = <int>self.pool.active[self.server] + 1
        self.pool.note_demand()

    cdef void detach(self):
        self.stream = None
        if self.attached:
            self.attached = False
            self.pool.busy -= 1
            self.pool.active[self.server] = <int>self.pool.active[self.server] - 1

    cdef void _on_data(self, const char *p, Py_ssize_t n):
        cdef Py_ssize_t i = 0, k, used
        cdef Stream stream = self.stream
        cdef HeadWriter out
        if stream is None or self.state == B_IDLE:
            self.abort()   # bytes nobody asked for: this connection cannot be trusted again
            return
        self.got_bytes = True
        stream.deadline = self.worker.now + stream.read_timeout
        while self.stream is not None:
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
                    if self.head_pending:   # the client has heard nothing yet: 502
                        self.head_pending = False
                        self.worker.writer.len = 0
                        self._bad_response("malformed chunked body")
                        return
                    _log.warning("upstream %s: malformed chunked response", self.pool.name)
                    self.abort()
                    stream.backend = None
                    stream.reset()
                    return
                if self.head_pending:
                    self.head_pending = False
                    self.worker.count_status(stream.exchange.status)
                    out = self.worker.writer
                    if k and not self.body.stop_at_data:
                        used = stream.response_head(out, p + i, k)
                        i += used
                        k -= used
                    else:
                        stream.response_head(out, NULL, 0)
                    out.len = 0
                    if self.stream is None:
                        return
                if k and self.body.stop_at_data:
                    if self.body.data_len:   # de-chunked: only the chunk data goes out
                        stream.response_data(p + i + self.body.data_start, self.body.data_len)
                        if self.stream is None:
                            return
                    if self.body.trailer_n and stream.exchange.facts.http2:
                        if self.trailers is None:
                            self.trailers = bytearray()
                        bytearray_extend(self.trailers, p + i + self.body.trailer_at, self.body.trailer_n)
                    i += k
                elif k:
                    stream.response_data(p + i, k)
                    if self.stream is None:
                        return   # the client went away during the write
                    i += k
                if self.body.done:
                    if i < n:
                        stream.exchange.backend_reusable = False   # bytes past the response
                    if self.trailers is not None:
                        section, self.trailers = bytes(self.trailers), None
                        stream.response_trailers(section)
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
        buf = self.head_buf   # keep alive while parsing
        self.head_buf = None
        if self._on_head(q, <int>end) < 0:
            return -1
        return end - have

    cdef void _bad_response(self, str why):
        cdef Stream stream = self.stream
        _log.warning("upstream %s: invalid response: %s", self.pool.name, why)
        self.worker.count(N_BACKEND_ERRORS)
        self.abort()
        if stream is not None:
            stream.backend = None
            stream.answer_error(502)

    cdef int _on_head(self, const char *p, int head_len):
        cdef Worker w = self.worker
        cdef Stream stream = self.stream
        cdef Exchange ex = stream.exchange
        cdef MessageHead head
        cdef int r
        if parse_head(p, head_len, False, &head, w.slots, MAX_HEADER_SLOTS):
            ex._bad("malformed header block")
            self._bad_response(ex.failure)
            return -1
        if head.status >= 200 and ex.rewrite is not None and head.status in ex.rewrite.next_statuses and \
                ex.next_upstream(head.status, True, stream.attempts, w.now - stream.first_try):
            # nginx proxy_next_upstream http_NNN: this response is dropped, the next server asked
            # (403 and 404 are not failures of the server, the others are).
            _log.warning("upstream %s: %s:%s answered %d, trying the next server", self.pool.name,
                         *self.pool.servers[self.server], head.status)
            if head.status != 403 and head.status != 404:
                self.pool.mark_failed(self.server, w.now)
            self.abort()
            stream.backend = None
            stream.retry_now()
            return -1
        r = ex.response(p, &head, w.slots, w.writer, stream.closing())
        if r == R_INTERIM:
            stream.response_interim(p, head_len)
            return 0
        if r == R_BAD:
            self._bad_response(ex.failure)
            return -1
        if r == R_TOO_EARLY:
            self.abort()   # its body is not wanted: the connection can't be reused
            stream.backend = None
            stream.too_early()
            return -1
        if r == R_INTERCEPT:
            self.abort()   # its body is not wanted: the connection cannot be reused
            if stream is not None:
                stream.backend = None
                stream.answer_error(ex.error_status)
            return -1
        framer_init(&self.body, ex.response_mode, head.content_length)
        self.body.stop_at_data = ex.dechunk
        self.state = B_BODY
        self.head_pending = True   # sent by _on_data, with the first body bytes
        return 0

    cdef void _done(self):
        cdef Stream stream = self.stream
        if stream is None:
            return
        stream.exchange.upstream_end = self.worker.now
        stream.exchange.response_end()
        stream.backend = None
        self.pool.note_success(self.server)
        if stream.exchange.backend_reusable and stream.request_sent() and self.state != B_CLOSED \
                and not self._unsent():
            self.resume()   # an idle connection must see the backend close it
            self.pool.release(self, self.worker.now)
        else:
            self.abort()
        stream.response_end(False)

    cdef bint _unsent(self):
        """The transport still holds some of the request: the backend answered before reading
        all of it and may never read the rest. Not pooled (nginx pools only a connection whose
        request was sent): a paused transport would not tell the next stream to pause, and
        the next request would wait behind bytes nobody reads."""
        if self.plain is not None:
            return self.plain.pending_out is not None
        return self.transport is not None and self.transport.get_write_buffer_size() > 0

    cdef void send_body(self, const char *p, Py_ssize_t n):
        """Request body (or tunnel) bytes for the backend. Plain: into the socket at once
        while the transport holds nothing unsent (no bytes object, no copy); what the socket
        does not take is buffered there and pauses the sender. TLS: through the transport."""
        if self.plain is not None:
            self.plain.send(p, n)
        elif n > 0:
            self.transport.write(PyBytes_FromStringAndSize(p, n))

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
        self.detach()
        if self.state != B_CLOSED:
            self.state = B_CLOSED
            self.pool.closed_one(self.server)
        if self.transport is not None:
            self.transport.abort()


def _numeric_address(str host, int port):
    """An IP address needs no resolver (as in loop.create_connection): no executor round."""
    for family in (socket.AF_INET, socket.AF_INET6):
        try:
            socket.inet_pton(family, host)
        except OSError:
            continue
        addr = (host, port) if family == socket.AF_INET else (host, port, 0, 0)
        return [(family, socket.SOCK_STREAM, socket.IPPROTO_TCP, "", addr)]
    return None


async def _connect_socket(Worker w, UpstreamPool pool, int server):
    """A connected non-blocking TCP socket (TCP_NODELAY) to ``server``, its addresses tried in turn."""
    host, port = pool.servers[server]
    loop = w.loop
    error = None
    infos = _numeric_address(host, port)
    if infos is None:
        infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM, proto=socket.IPPROTO_TCP)
    for family, _, proto, _, addr in infos:
        sock = socket.socket(family, socket.SOCK_STREAM, proto)
        try:
            sock.setblocking(False)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            await loop.sock_connect(sock, addr)
        except OSError as exc:
            sock.close()
            error = exc
            continue
        except BaseException:
            sock.close()
            raise
        return sock
    raise error if error is not None else OSError(f"{host}: no address")


async def _plain_connect(Worker w, UpstreamPool pool, int server):
    """``(transport, protocol)`` as loop.create_connection returns them, in the worker's epoll."""
    sock = await _connect_socket(w, pool, server)
    transport = BackendPlainTransport(w, sock)
    protocol = BackendConnection(w, pool, server)
    transport.start(protocol)
    return transport, protocol


cdef class BackendPlainTransport:
    """The calls a BackendConnection makes on its transport (write, write_eof, pause/resume
    reading, close, abort), on a plain TCP socket in the worker's epoll set. Closing is as
    on a uvloop transport: close() reports connection_lost from the loop, not inside it."""

    def __cinit__(self):
        self.fd = -1

    def __init__(self, Worker worker, sock):
        self.worker = worker
        self.fd = sock.detach()   # ours to close

    def __dealloc__(self):
        if self.fd >= 0:
            close(self.fd)   # never started (start() registers it; closing unregisters it)

    def start(self, BackendConnection protocol):
        self.protocol = protocol
        protocol.connection_made(self)
        self.worker.fd_set(self.fd, self)
        self._interest()

    cdef void _interest(self):
        """Read unless paused; wait for writability while output waits. A socket waited on
        for nothing leaves the set (a hang-up can't wake a paused one in a loop)."""
        cdef unsigned int mask = 0 if self.paused else EPOLLIN
        if self.pending_out is not None:
            mask |= EPOLLOUT
        if mask != self.mask and not self.closed:
            self.worker.poll(self.fd, self.mask, mask)
            self.mask = mask

    cdef void on_events(self, unsigned int ev):
        """The worker's epoll reported ``ev``. A bug met here closes this connection and its
        client's stream (BackendConnection._internal_error), never the worker."""
        cdef BackendConnection protocol = self.protocol   # alive while its methods run
        try:
            if ev & (EPOLLOUT | EPOLLERR | EPOLLHUP) and self.pending_out is not None:
                self._flush()
            if ev & (EPOLLIN | EPOLLERR | EPOLLHUP) and not self.paused and not self.closed:
                self._read()
        except Exception:
            if protocol is not None:
                protocol._internal_error()

    cdef void _read(self):
        cdef BackendConnection protocol = self.protocol
        cdef char *buf = PyByteArray_AS_STRING(self.worker.backend_buf)
        cdef Py_ssize_t size
        cdef ssize_t n
        cdef int i
        for i in range(4):   # a full read may have more behind it; then the next event
            size = protocol.read_size()
            n = recv(self.fd, buf, size, 0)
            if n > 0:
                protocol._on_data(buf, n)
                if n < size or self.closed or self.paused:
                    return
                continue
            if n < 0 and (errno == EAGAIN or errno == EINTR):
                return
            # EOF (the protocol decides: a body until close ends here), or a reset
            self._shutdown()
            self.protocol = None
            if n == 0:
                protocol.eof_received()
            else:
                protocol.connection_lost(ConnectionResetError(errno, "backend connection lost"))
            return

    def write(self, data):
        cdef bytes raw = data if type(data) is bytes else bytes(data)
        self.send(PyBytes_AS_STRING(raw), PyBytes_GET_SIZE(raw))

    cdef void send(self, const char *p, Py_ssize_t n):
        """Into the socket at once while nothing waits; the rest waits in ``pending_out``
        (EPOLLOUT on), and past BACKEND_WRITE_HIGH the protocol is told pause_writing()."""
        cdef ssize_t r
        if self.closed or n <= 0:
            return
        if self.pending_out is None:
            r = send(self.fd, p, n, MSG_NOSIGNAL)
            if r == n:
                return
            if r < 0:
                if errno != EAGAIN and errno != EINTR:
                    # As a uvloop transport: the protocol hears of it from the loop, not inside write().
                    self.worker.loop.call_soon(self._report_lost)
                    self._shutdown()
                    return
                r = 0
            p += r
            n -= r
            self.pending_out = bytearray()
            self._interest()
        bytearray_extend(self.pending_out, p, n)
        if not self.write_paused and PyByteArray_GET_SIZE(self.pending_out) > BACKEND_WRITE_HIGH:
            self.write_paused = True
            self.protocol.pause_writing()

    cdef void _flush(self):
        cdef BackendConnection protocol = self.protocol
        cdef const char *p = PyByteArray_AS_STRING(self.pending_out)
        cdef Py_ssize_t off = 0, n = PyByteArray_GET_SIZE(self.pending_out)
        cdef ssize_t r
        while off < n:
            r = send(self.fd, p + off, n - off, MSG_NOSIGNAL)
            if r > 0:
                off += r
            elif r < 0 and errno == EINTR:
                continue
            elif r < 0 and errno == EAGAIN:
                del self.pending_out[:off]
                return
            else:
                self._shutdown()
                self.protocol = None
                protocol.connection_lost(ConnectionResetError(errno, "backend connection lost"))
                return
        self.pending_out = None
        if self.eof_pending:
            shutdown(self.fd, SHUT_WR)
        self._interest()
        if self.write_paused:
            self.write_paused = False
            protocol.resume_writing()

    def write_eof(self):
        """Half-close once what waits is sent (a tunnel's client half-closed)."""
        if self.closed or self.eof_pending:
            return
        self.eof_pending = True
        if self.pending_out is None:
            shutdown(self.fd, SHUT_WR)

    def pause_reading(self):
        self.paused = True
        self._interest()

    def resume_reading(self):
        self.paused = False
        self._interest()

    def is_closing(self):
        return self.closed

    def _report_lost(self):
        cdef BackendConnection protocol = self.protocol
        self.protocol = None
        if protocol is not None:
            protocol.connection_lost(None)

    cdef void _shutdown(self):
        """Close the socket once: out of the epoll set and the fd table first, so a reused
        fd never dispatches here."""
        cdef int fd = self.fd
        cdef Worker w = self.worker
        if self.closed:
            return
        self.closed = True
        self.fd = -1
        self.pending_out = None
        if self.mask:
            w.poll(fd, self.mask, 0)
            self.mask = 0
        if w.fd_get(fd) is self:
            w.fd_clear(fd)
        close(fd)

    def close(self):
        """As a uvloop transport: the protocol hears connection_lost from the loop (a
        BackendConnection that closed it itself ignores it; one nobody attached counts it)."""
        if self.closed:
            return
        if self.protocol is not None:
            self.worker.loop.call_soon(self._report_lost)
        self._shutdown()

    def abort(self):
        self.close()
