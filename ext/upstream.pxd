# The backend side: upstream pools (balancing, passive ejection, keep-alive connections
# kept for the concurrency recent load needed), backend connections (plain HTTP/1.1, on a
# BackendPlainTransport in the worker's epoll set, or TLS), and the Stream base through which one exchange's
# codec stream gets, keeps and loses a backend connection.

cdef enum BackendState:
    B_IDLE          # in its pool
    B_HEAD          # waiting for (more of) a response header block
    B_BODY          # response body streaming to the client
    B_CLOSED


cdef class UpstreamPool:
    cdef readonly str name
    cdef list log_names             # the servers as the access log names them (b"host:port"), once
    cdef bytes host_header          # Host for requests that came without one (HTTP/1.0)
    cdef list servers               # [(host, port)]
    cdef list idle                  # per server: [BackendConnection], oldest first
    cdef int keepalive              # idle connections always kept per server
    cdef int keepalive_max          # ... and at most, however busy recent load was
    cdef double keepalive_timeout   # an idle connection unused this long is closed
    cdef readonly int tries         # attempts per request (nginx proxy_next_upstream_tries)
    cdef list down_until            # per server: ejected until (loop time) after max_fails failures
    # Balancing (nginx's round robin and least_conn, per server): smooth weighted round robin
    cdef bint least_conn
    cdef list weight
    cdef list effective             # effective_weight: lowered by failures, regained per pick
    cdef list current               # current_weight of the smooth round robin
    cdef list backup                # used only when no primary server is up
    cdef list max_fails             # failures within fail_timeout that take a server out; 0: never
    cdef list fail_timeouts
    cdef list fails
    cdef list checked               # when a failure was counted, or the server tried again
    cdef list accessed              # when the last failure was counted
    cdef list active                # requests on a connection of the server, or connecting to it
    cdef int busy                   # connections serving a request now
    cdef int connecting             # connects in flight (each for a request waiting on it)
    cdef int window_peak            # the most busy + connecting at once in this second
    cdef int[10] peaks              # ... in each of the last ten seconds
    cdef int peak_slot
    cdef int idle_cap               # per server: max(keepalive, recent peak), <= keepalive_max
    cdef readonly int max_conns     # connections per server (busy, idle, connecting); 0: no cap
    cdef list open                  # per server: connections open or being opened
    cdef object waiting             # deque of Streams waiting for a connection (at max_conns)
    # TLS to the servers (re-encryption); tls None: plain TCP
    cdef readonly TLSContext tls
    cdef list tls_sni               # per server: the SNI name, or None
    cdef list tls_names             # per server: the name the certificate must match
    cdef bint tls_reuse             # resume each server's last session
    cdef list tls_sessions          # per server: its last TLSSession, or None
    # Active health checks (fastterm/health.py); health None: none configured
    cdef HealthTable health
    cdef list health_slot           # per server: its word in the table, -1: not checked
    cdef list health_ups            # per server: the up count last seen
    cdef public int send_proxy      # PROXY protocol version each connection starts with; 0: none

    cdef BackendConnection take_idle(self, int server)
    cdef int next_server(self, double now, unsigned long long tried=*)
    cdef int _pick(self, double now, unsigned long long tried, bint backup)
    cdef bint _usable(self, int server, double now, unsigned long long tried)
    cdef bint _checked_up(self, int server)
    cdef void mark_failed(self, int server, double now)
    cdef void note_success(self, int server)
    cdef void release(self, BackendConnection conn, double now)
    cdef void tick(self, double now)
    cdef void note_demand(self)
    cdef bint hand_over(self, BackendConnection conn, double now)
    cdef void closed_one(self, int server)


cdef class Stream:
    """One exchange's link to its backend; a codec's stream subclasses it."""
    cdef Worker worker
    cdef Exchange exchange
    cdef BackendConnection backend
    cdef object connect_fut
    cdef bint connecting
    cdef bint queued                # waiting in the pool for a connection (max_conns reached)
    cdef int attempts
    cdef int tried_server
    cdef unsigned long long tried   # servers this request tried (bit server % 64)
    cdef bytes request_head         # what every attempt sends first
    cdef double deadline            # connect, then read: the codec's sweep checks it
    cdef double first_try           # when the first attempt began (proxy_next_upstream_timeout)
    cdef double connect_timeout     # the routed request's (Exchange.timeouts, else the worker's)
    cdef double read_timeout
    cdef double backend_send_timeout  # proxy_send_timeout

    # Connection flow
    cdef void routed(self)
    cdef void dispatch(self, bint fresh)
    cdef void _connect(self, int server)
    cdef void next_server_or(self, int status)
    cdef void connect_timed_out(self)
    cdef void queue_timed_out(self)
    cdef void backend_failed(self, bint got_bytes, int server, bint fresh)
    cdef void drop_backend(self)
    cdef void too_early(self)
    cdef bint read_timed_out(self)
    cdef void retry_now(self)
    # What the codec's stream implements
    cdef bint wait_for_handshake(self)
    cdef void backend_ready(self)
    cdef bint closing(self)         # the client connection closes after this response
    cdef bint request_sent(self)    # the whole request body went to the backend
    cdef void backend_writable(self, bint writable)
    cdef void response_interim(self, const char *p, Py_ssize_t n)
    cdef Py_ssize_t response_head(self, HeadWriter head, const char *body, Py_ssize_t k)
    cdef void response_data(self, const char *p, Py_ssize_t n)
    cdef void response_trailers(self, bytes section)
    cdef void response_end(self, bint until_close)
    cdef void answer_error(self, int status)
    cdef void reset(self)


cdef class BackendConnection:
    cdef Worker worker
    cdef UpstreamPool pool
    cdef int server
    cdef object transport
    cdef BackendPlainTransport plain  # the transport when plain TCP (C calls); None: TLS
    cdef Stream stream
    cdef int state
    cdef HeadBuffer head_buf
    cdef BodyFramer body
    cdef bytearray trailers         # a de-chunked response's trailer section, for HTTP/2
    cdef bint got_bytes
    cdef bint reading_paused
    cdef bint head_pending          # the rewritten head waits in worker.writer
    cdef bint attached              # counted in pool.busy
    cdef int requests               # requests sent on this connection
    cdef double idle_since

    cdef Py_ssize_t read_size(self)
    cdef void write(self, bytes data)
    cdef void attach(self, Stream stream)
    cdef void detach(self)
    cdef void _on_data(self, const char *p, Py_ssize_t n)
    cdef Py_ssize_t _feed_head(self, const char *p, Py_ssize_t n)
    cdef int _on_head(self, const char *p, int head_len)
    cdef void _done(self)
    cdef bint _unsent(self)
    cdef void _bad_response(self, str why)
    cdef void send_body(self, const char *p, Py_ssize_t n)
    cdef void pause(self)
    cdef void resume(self)
    cdef void abort(self)


cdef class BackendPlainTransport:
    cdef Worker worker
    cdef BackendConnection protocol
    cdef int fd                     # in the worker's epoll set and fd table; -1: closed
    cdef unsigned int mask          # what the epoll set waits for on fd
    cdef bytearray pending_out      # what send() could not take yet
    cdef bint paused                # pause_reading()
    cdef bint write_paused          # the protocol was told pause_writing()
    cdef bint eof_pending           # write_eof(): half-close once pending_out is sent
    cdef bint closed

    cdef void _interest(self)
    cdef void on_events(self, unsigned int ev)
    cdef void _read(self)
    cdef void send(self, const char *p, Py_ssize_t n)
    cdef void _flush(self)
    cdef void _shutdown(self)
