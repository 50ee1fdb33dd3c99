# TLS to backends (re-encryption, mTLS). A connect to an upstream with a TLS context is:
# TCP connect (uvloop's sock_connect, as for a plain one), then a non-blocking client
# handshake on the socket in the worker's epoll set (SNI, name check, client certificate,
# the server's last session offered for resumption), and only then the BackendConnection,
# which writes the head. A handshake or verification failure is a failed connect: the
# request goes on to the next server like after a refused one, and finally gets 502; the
# log line carries OpenSSL's reason.

cdef enum:
    BACKEND_WRITE_HIGH = 65536     # pending plaintext past this pauses the request's sender


async def _tls_connect(Worker w, UpstreamPool pool, int server, bytes proxy=None):
    """``(transport, protocol)`` as loop.create_connection returns them, over TLS; ``proxy``:
    a PROXY header sent first, in the clear, before the ClientHello (as HAProxy does)."""
    loop = w.loop
    sock = await _connect_socket(w, pool, server)
    if proxy is not None:
        try:
            await loop.sock_sendall(sock, proxy)
        except BaseException:
            sock.close()
            raise
    transport = BackendTLSTransport(w, pool, server, sock)
    try:
        await transport.handshake_done
    except BaseException:
        transport.abort()
        raise
    protocol = BackendConnection(w, pool, server)
    transport.start(protocol)
    return transport, protocol


cdef class BackendTLSTransport:
    """The calls a BackendConnection makes on its transport (write, pause/resume reading,
    close, abort), over an SSL on the socket; reads go into the worker's backend buffer."""

    def __cinit__(self):
        self.fd = -1

    def __init__(self, Worker worker, UpstreamPool pool, int server, sock):
        cdef TLSSession session
        self.worker = worker
        self.pool = pool
        self.server = server
        self.loop = worker.loop
        self.sock = sock
        self.fd = sock.fileno()
        self.handshake_done = self.loop.create_future()
        self.tls = TLSConnection(pool.tls, self.fd, pool.tls_sni[server], pool.tls_names[server])
        session = pool.tls_sessions[server]
        if session is not None:
            self.tls.resume(session)
        worker.fd_set(self.fd, self)
        self.handshaking = True
        self._step_handshake()

    cdef void _reader(self, bint on):
        if on != self.reader_on and not self.closed:
            self.reader_on = on
            self._interest()

    cdef void _writer(self, bint on):
        if on != self.writer_on and not self.closed:
            self.writer_on = on
            self._interest()

    cdef void _interest(self):
        cdef unsigned int mask = (EPOLLIN if self.reader_on else 0) | (EPOLLOUT if self.writer_on else 0)
        if mask != self.mask:
            self.worker.poll(self.fd, self.mask, mask)
            self.mask = mask

    cdef void on_events(self, unsigned int ev):
        """The worker's epoll reported ``ev`` (Worker._on_events)."""
        if ev & (EPOLLOUT | EPOLLERR | EPOLLHUP) and self.writer_on:
            self._writable()
        if ev & (EPOLLIN | EPOLLERR | EPOLLHUP) and self.reader_on and not self.closed:
            self._readable()

    def _on_readable(self):
        """Records OpenSSL already holds, read from the loop (they wake no epoll)."""
        self.worker.tick()
        self._readable()

    cdef void _readable(self):
        if self.closed:
            return
        try:
            if self.handshaking:
                self._step_handshake()
            elif self.protocol is not None:
                self._read_loop()
        except Exception:
            self._internal_error()

    cdef void _writable(self):
        if self.closed:
            return
        try:
            if self.handshaking:
                self._step_handshake()
                return
            self._flush()
            if self.read_wants_write and not self.closed:
                self.read_wants_write = False
                self._read_loop()
        except Exception:
            self._internal_error()

    def _internal_error(self):
        """A bug met on this connection closes it (and fails its request), never the worker."""
        _log.exception("upstream %s: closing a TLS backend connection after an internal error", self.pool.name)
        self._shutdown(False)
        if not self.handshake_done.done():
            self.handshake_done.set_exception(ConnectionError("internal error"))
        self._lost("internal error")

    # ---- Handshake flow -------------------------------------------------------------
    cdef void _step_handshake(self):
        cdef int r = self.tls.handshake()
        if r == TLS_WANT_READ:
            self._writer(False)
            self._reader(True)
            return
        if r == TLS_WANT_WRITE:
            self._writer(True)
            return
        self.handshaking = False
        if r == TLS_OK:
            # Quiet until start(): the BackendConnection takes what comes after this.
            self._reader(False)
            self._writer(False)
            self._keep_session()
            if not self.handshake_done.done():
                self.handshake_done.set_result(None)
            return
        why = self.tls.error or "the server closed the connection during the handshake"
        self._shutdown(False)
        if not self.handshake_done.done():
            self.handshake_done.set_exception(ConnectionError(f"TLS handshake: {why}"))

    cdef void _keep_session(self):
        """The server's newest session resumes the next connection to it (per server,
        per worker; nginx proxy_ssl_session_reuse)."""
        cdef TLSSession session = self.tls.take_session()
        if session is not None and self.pool.tls_reuse:
            self.pool.tls_sessions[self.server] = session

    def start(self, BackendConnection protocol):
        self.protocol = protocol
        protocol.connection_made(self)
        self._reader(True)
        if SSL_has_pending(self.tls.ssl):
            self.loop.call_soon(self._on_readable)

    # ---- Data flow ------------------------------------------------------------------
    cdef void _read_loop(self):
        cdef Worker w = self.worker
        cdef char *buf = PyByteArray_AS_STRING(w.backend_buf)
        cdef int n
        while not self.closed and not self.paused:
            n = self.tls.read_into(buf, BACKEND_BUF_SIZE)
            if self.tls.fresh_session != NULL:
                self._keep_session()
            if n > 0:
                try:
                    self.protocol._on_data(buf, n)
                except Exception:
                    self.protocol._internal_error()
                    return
                if self.closed or (n < BACKEND_BUF_SIZE and not SSL_has_pending(self.tls.ssl)):
                    return
                continue
            if n == TLS_WANT_READ:
                return
            if n == TLS_WANT_WRITE:
                self.read_wants_write = True
                self._writer(True)
                return
            if n == TLS_FAILED:
                self._failed(self.tls.error)
                return
            # close_notify or EOF: the protocol decides (a body until close ends here)
            protocol = self.protocol
            self._shutdown(False)
            protocol.eof_received()
            return

    def write(self, data):
        cdef bytes raw = data if type(data) is bytes else bytes(data)
        self._send(PyBytes_AS_STRING(raw), PyBytes_GET_SIZE(raw))

    cdef void _send(self, const char *p, Py_ssize_t n):
        cdef int r
        if self.closed or n == 0:
            return
        if self.pending_out is None:
            while n > 0:
                r = self.tls.write_from(p, <int>min(n, 0x40000000))
                if r > 0:
                    p += r
                    n -= r
                    continue
                if r == TLS_WANT_WRITE or r == TLS_WANT_READ:
                    break
                why = self.tls.error or "write failed"
                # As a uvloop transport: the protocol hears of it from the loop, not inside write().
                self.loop.call_soon(self._lost, why)
                self._shutdown(False)
                return
            if n == 0:
                return
            self.pending_out = bytearray()
            self._writer(True)
        bytearray_extend(self.pending_out, p, n)
        if not self.write_paused and PyByteArray_GET_SIZE(self.pending_out) > BACKEND_WRITE_HIGH:
            self.write_paused = True
            self.protocol.pause_writing()

    cdef void _flush(self):
        cdef int r
        cdef Py_ssize_t off = 0, n
        cdef const char *p
        if self.pending_out is not None:
            p = PyByteArray_AS_STRING(self.pending_out)
            n = PyByteArray_GET_SIZE(self.pending_out)
            while off < n:
                r = self.tls.write_from(p + off, <int>min(n - off, 0x40000000))
                if r > 0:
                    off += r
                    continue
                if r == TLS_WANT_WRITE or r == TLS_WANT_READ:
                    del self.pending_out[:off]
                    return
                self._failed(self.tls.error or "write failed")
                return
            self.pending_out = None
        if not self.read_wants_write:
            self._writer(False)
        if self.write_paused:
            self.write_paused = False
            self.protocol.resume_writing()

    def _lost(self, why):
        if self.protocol is not None:
            self.protocol.connection_lost(None if why is None else ConnectionError(why))

    cdef void _failed(self, str why):
        host, port = self.pool.servers[self.server]
        _log.warning("upstream %s: TLS error on the connection to %s:%s: %s", self.pool.name, host, port, why)
        self._shutdown(False)
        self._lost(why)

    def pause_reading(self):
        self.paused = True
        self._reader(False)

    def resume_reading(self):
        if not self.paused or self.closed:
            return
        self.paused = False
        self._reader(True)
        if SSL_has_pending(self.tls.ssl):
            # Records OpenSSL already read wake no epoll: read them now.
            self.loop.call_soon(self._on_readable)

    # ---- Shutdown flow --------------------------------------------------------------
    cdef void _shutdown(self, bint notify):
        """Close the socket once; with ``notify``, close_notify first (one SSL_shutdown, not
        waiting for the server's: nginx's proxy_ssl close)."""
        if self.closed:
            return
        self._reader(False)
        self._writer(False)
        self.closed = True
        if notify and not self.handshaking and self.pending_out is None:
            self.tls.send_close_notify()
        if self.worker.fd_get(self.fd) is self:
            self.worker.fd_clear(self.fd)   # before close: a reused fd never dispatches here
        self.sock.close()
        self.fd = -1
        self.tls = None   # SSL_free; the socket BIO does not own the fd
        self.pending_out = None

    def close(self):
        """As a uvloop transport: the protocol hears connection_lost from the loop (a
        BackendConnection that closed it itself ignores it; one nobody attached counts it)."""
        if not self.closed and self.protocol is not None:
            self.loop.call_soon(self._lost, None)
        self._shutdown(True)

    def abort(self):
        self.close()

    def is_closing(self):
        return self.closed

    def get_write_buffer_size(self):
        return 0 if self.pending_out is None else PyByteArray_GET_SIZE(self.pending_out)
