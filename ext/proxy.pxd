# The only uvloop glue: client connections (OpenSSL on the raw fd, uvloop as
# the epoll loop), backend connections (uvloop BufferedProtocol), upstream pools.

cdef enum ClientState:
    C_HANDSHAKE     # TLS handshake in progress
    C_IDLE          # between requests (keep-alive) or before the first one
    C_HEAD          # part of a request header block received
    C_BODY          # request body streaming to the backend
    C_RESPONSE      # request sent; response in progress
    C_LINGER        # response sent, close_notify sent, discarding input until EOF
    C_CLOSED

cdef enum BackendState:
    B_IDLE          # in its pool
    B_HEAD          # waiting for (more of) a response header block
    B_BODY          # response body streaming to the client
    B_CLOSED

cdef enum:
    N_CONNECTIONS
    N_CONNECTIONS_OPEN
    N_HANDSHAKES_FULL
    N_HANDSHAKES_RESUMED
    N_HANDSHAKES_FAILED
    N_REQUESTS
    N_RESPONSES_1XX
    N_RESPONSES_2XX
    N_RESPONSES_3XX
    N_RESPONSES_4XX
    N_RESPONSES_5XX
    N_BACKEND_CONNECTS
    N_BACKEND_ERRORS
    N_BACKEND_REUSED
    N_BYTES_IN
    N_BYTES_OUT
    N_HS_FAIL_PROTOCOL
    N_HS_FAIL_CIPHER
    N_HS_FAIL_ALPN
    N_HS_FAIL_EOF
    N_HS_FAIL_TIMEOUT
    N_HS_FAIL_HTTP
    N_HS_FAIL_OTHER
    N_TLS12
    N_TLS13
    N_CIPHER_AES128GCM
    N_CIPHER_AES256GCM
    N_CIPHER_CHACHA20
    N_CIPHER_OTHER
    N_COUNTERS


cdef class Worker:
    cdef object loop
    cdef char *rbuf                 # plaintext from SSL_read, lent per event
    cdef bytearray backend_buf      # backend receive buffer, lent per event
    cdef object backend_view
    cdef bytearray client_buf       # memory-BIO mode: ciphertext in, lent per event
    cdef public object backend_view_in
    cdef HeadWriter writer
    cdef HeaderSlot *slots
    cdef readonly set clients
    cdef public double now          # loop time, taken when the loop hands us events or a timer
    cdef long long own_counters[<int>N_COUNTERS]
    cdef long long *counters        # own_counters, or this worker's slot in shared memory
    cdef SharedState shared         # keeps the mapping alive while counters points into it
    cdef public bint draining
    cdef object sweep_handle
    cdef object log
    # limits
    cdef int header_buffer_size
    cdef int max_header_fields
    cdef long long client_max_body_size
    cdef double header_timeout
    cdef double keepalive_timeout
    cdef double connect_timeout
    cdef double read_timeout

    cdef int epfd                   # our epoll set of client and listening sockets
    cdef epoll_event *events
    cdef dict by_fd                 # fd -> ClientConnection or Listener

    cdef inline void count(self, int counter, long long n=*)
    cdef int poll(self, int fd, unsigned int old_mask, unsigned int new_mask)


cdef class ServerPolicy:
    cdef readonly str name
    cdef bytes hsts_line
    cdef list routes                # [(prefix bytes, UpstreamPool)], longest first
    cdef object trusted             # tuple of ip networks
    cdef UpstreamPool route(self, const char *target, int n)
    cdef bint is_trusted(self, str ip)


cdef class UpstreamPool:
    cdef readonly str name
    cdef bytes host_header          # Host for requests that came without one (HTTP/1.0)
    cdef list servers               # [(host, port)]
    cdef list idle                  # per server: [BackendConnection]
    cdef int rr
    cdef int keepalive
    cdef list down_until            # per server: ejected until (loop time) after a failure
    cdef double fail_timeout
    cdef BackendConnection take_idle(self, int server)
    cdef int next_server(self, double now)
    cdef void mark_failed(self, int server, double now)
    cdef void release(self, BackendConnection conn)


cdef class Listener:
    cdef Worker worker
    cdef readonly object sock
    cdef int fd
    cdef readonly TLSContext context
    cdef bint active

    cdef void on_readable(self)


cdef class ClientConnection:
    cdef Worker worker
    cdef int fd
    cdef TLSConnection tls
    cdef TLSContext context
    cdef str peer_ip
    cdef bytes peer_ip_b
    cdef int state
    cdef ServerPolicy server
    cdef bint trusted
    cdef HeadBuffer head_buf        # only while a header block is incomplete
    cdef BodyFramer req_body
    cdef bytes held                 # input we could not process yet (pipelining, connect)
    cdef bytearray pending_out      # plaintext SSL_write could not take yet
    cdef bint reading               # reader registered with the loop
    cdef bint writing               # writer registered with the loop
    cdef bint read_wants_write
    cdef bint backend_full
    cdef double deadline
    cdef bint close_after
    cdef bint http10
    cdef bint head_request
    cdef bint retryable
    cdef bint request_done
    cdef bint response_started
    cdef bint connecting
    cdef int attempts
    cdef int tried_server
    cdef object connect_fut
    cdef BackendConnection backend
    cdef UpstreamPool pool
    cdef bytes request_head
    cdef bint dispatch_pending      # head parsed; waiting for this read's body bytes
    cdef bytes host_cache           # last Host that picked self.server (keep-alive)
    cdef int host_len
    cdef bint dechunk               # HTTP/1.0 client, chunked response: send the data only

    cdef void start(self)
    cdef void on_readable(self)
    cdef void on_writable(self)
    cdef unsigned int _mask(self)
    cdef void _interest(self, bint reading, bint writing)
    cdef void _want_write(self, bint on)
    cdef void _want_read(self, bint on)
    cdef bint _accepting_or_held(self)
    # Handshake flow
    cdef void _handshake(self)
    cdef void _count_handshake(self, int result)
    # Request flow
    cdef void _read_loop(self)
    cdef bint _accepting(self)
    cdef void _on_plaintext(self, const char *p, Py_ssize_t n)
    cdef Py_ssize_t _feed_head(self, const char *p, Py_ssize_t n)
    cdef int _on_head(self, const char *p, int head_len)
    cdef void _dispatch(self, bint fresh)
    cdef ServerPolicy _server_for_host(self, const char *host, int n)
    cdef void _connect(self, int server)
    cdef void _next_server_or(self, int status)
    cdef void _resume(self)
    cdef void _stash(self, const char *p, Py_ssize_t n)
    # Response flow
    cdef void send(self, const char *p, Py_ssize_t n)
    cdef void _flush(self)
    cdef void on_response_head(self, int status)
    cdef void on_response_done(self)
    cdef void on_backend_failed(self, bint got_bytes, int server, bint fresh)
    cdef void error_response(self, int status)
    # Shutdown flow
    cdef void _finish(self)
    cdef void _linger(self)
    cdef void _drop_upstream(self)
    cdef void close(self)
    cdef void _expire(self)


cdef class BackendConnection:
    cdef Worker worker
    cdef UpstreamPool pool
    cdef int server
    cdef object transport
    cdef ClientConnection client
    cdef int state
    cdef HeadBuffer head_buf
    cdef BodyFramer body
    cdef bint reusable
    cdef bint got_bytes
    cdef bint reading_paused
    cdef bint head_pending          # the rewritten head waits in worker.writer
    cdef int requests               # requests sent on this connection

    cdef void attach(self, ClientConnection client)
    cdef void _on_data(self, const char *p, Py_ssize_t n)
    cdef Py_ssize_t _feed_head(self, const char *p, Py_ssize_t n)
    cdef int _on_head(self, const char *p, int head_len)
    cdef void _done(self)
    cdef void _bad_response(self, str why)
    cdef void pause(self)
    cdef void resume(self)
    cdef void abort(self)


cdef class BIOClientConnection(ClientConnection):
    """The measured alternative: uvloop BufferedProtocol + memory BIOs (ciphertext
    copied into OpenSSL's BIO on the way in and into a bytes object on the way out)."""
    cdef object transport
    cdef void _push_ciphertext(self)
