# TLS to a backend (re-encryption): the transport under a BackendConnection when its
# upstream speaks TLS. OpenSSL reads and writes the backend socket itself (SSL_set_fd), in
# the worker's epoll set, as on the client side; the BackendConnection sees the same calls
# as from a uvloop transport.

cdef class BackendTLSTransport:
    cdef Worker worker
    cdef UpstreamPool pool
    cdef int server
    cdef object loop
    cdef object sock
    cdef int fd                     # in the worker's epoll set and fd table while open
    cdef unsigned int mask          # what the epoll set waits for on fd
    cdef TLSConnection tls
    cdef BackendConnection protocol
    cdef object handshake_done      # future: the handshake finished (or failed: its reason)
    cdef bytearray pending_out      # plaintext SSL_write could not take yet
    cdef bint handshaking
    cdef bint reader_on
    cdef bint writer_on
    cdef bint paused                # pause_reading()
    cdef bint write_paused          # the protocol was told pause_writing()
    cdef bint read_wants_write      # SSL_read needs the socket writable (a key update)
    cdef bint closed

    cdef void _reader(self, bint on)
    cdef void _writer(self, bint on)
    cdef void _interest(self)
    cdef void on_events(self, unsigned int ev)
    cdef void _readable(self)
    cdef void _writable(self)
    # Handshake flow
    cdef void _step_handshake(self)
    cdef void _keep_session(self)
    # Data flow
    cdef void _read_loop(self)
    cdef void _send(self, const char *p, Py_ssize_t n)
    cdef void _flush(self)
    cdef void _failed(self, str why)
    # Shutdown flow
    cdef void _shutdown(self, bint notify)
