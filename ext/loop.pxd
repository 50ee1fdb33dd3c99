# The worker's loop: its own epoll set of client and listening sockets (watched by uvloop
# as one fd), timers, lent buffers, counters, accept control, and the client transport
# (TLS on the accepted fd: handshake, read, write, backpressure, close).

cdef enum ConnState:
    C_HANDSHAKE     # TLS handshake in progress
    C_OPEN          # the codec has the connection
    C_LINGER        # last response sent, close_notify sent, discarding input until EOF
    C_CLOSED
    C_PROXY         # accept_proxy: reading the PROXY header, before the handshake

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
    N_H2_CONNECTIONS
    N_H2_STREAMS
    N_H2_RESETS
    N_H2_GOAWAY
    N_H2_FLOOD
    N_CERT_RELOADS
    N_CERT_RELOAD_FAILURES
    N_EARLY_OFFERED         # 0-RTT: handshakes whose client sent early data
    N_EARLY_ACCEPTED
    N_EARLY_REPLAY          # refused: the ClientHello was seen before (replay table)
    N_EARLY_REJECTED        # refused for any other reason (foreign ticket, table full, OpenSSL's checks)
    N_EARLY_HELD            # requests in early data held until the handshake completed (unsafe methods)
    N_UPGRADES              # HTTP/1.1 connections switched to a tunnel by a backend's 101 (WebSocket)
    N_PROXY_ACCEPTED        # accept_proxy: PROXY headers taken
    N_PROXY_MALFORMED       # ... refused: not a PROXY header, too long, or not complete in time
    N_PROXY_UNTRUSTED       # ... refused: the peer is not in proxy_trusted
    N_COUNTERS


cdef class Worker:
    cdef object loop
    cdef char *rbuf                 # plaintext from SSL_read, lent per event
    cdef char *pathbuf              # a target's normalised path, for routing (header_buffer_size)
    cdef bytearray backend_buf      # backend receive buffer, lent per event
    cdef HeadWriter writer          # one rewritten head at a time, filled and sent in one call
    cdef HeadWriter frames          # HTTP/2 frames gathered for one write
    cdef HeaderSlot *slots
    cdef readonly int nclients      # ClientConnections in by_fd
    cdef list pools                 # UpstreamPools, ticked by the sweep
    cdef public double now          # loop time, taken when the loop hands us events or a timer
    cdef long long own_counters[<int>N_COUNTERS]
    cdef long long *counters        # own_counters, or this worker's slot in shared memory
    cdef SharedState shared         # keeps the mapping alive while counters points into it
    cdef public bint draining
    cdef object sweep_handle
    # limits
    cdef int header_buffer_size
    cdef int header_line_size       # nginx large_client_header_buffers SIZE (0: no line limit)
    cdef int max_header_fields
    cdef long long client_max_body_size
    cdef RequestLimits request_limits
    cdef double header_timeout
    cdef double keepalive_timeout
    cdef double connect_timeout
    cdef double read_timeout
    cdef double body_timeout       # client_body_timeout: a request body stalled by the client
    cdef double backend_send_timeout  # proxy_send_timeout: a request body the backend takes nothing of
    cdef double send_timeout
    cdef int h2_max_streams
    cdef int h2_max_requests
    cdef int keepalive_requests    # HTTP/1.1 requests per connection (0: no cap)
    cdef double keepalive_time     # HTTP/1.1 connection lifetime for new requests (0: none)
    # accept control
    cdef list listeners             # this worker's accepting Listeners, paused together
    cdef readonly int max_clients   # worker_connections
    cdef bint accept_paused         # at max_clients, or backing off after EMFILE
    cdef bint accept_backoff        # the EMFILE back-off timer runs
    cdef double fd_log_next         # rate limits of the two noisy log lines
    cdef double hs_log_next         # failed handshakes: the current second's window ends then ...
    cdef int hs_log_lines           # ... lines written in it (at most hs_log_rate) ...
    cdef int hs_log_skipped         # ... and failures not logged since the last summary line
    cdef public int hs_log_rate
    cdef readonly object access_log # an AccessLog (accesslog.pyx, set_access_log); None: off, nothing collected

    cdef int epfd                   # our epoll set of client, listening and backend sockets
    cdef epoll_event *events
    cdef PyObject **by_fd           # fd -> ClientConnection, Listener or a backend transport (a
                                    # reference each), or NULL:
    cdef int by_fd_size             # an array, ~8 B a connection where a set and a dict took ~170
    cdef list closed                # closed connections whose codecs are not unlinked yet (release_later)
    cdef list spare_streams         # H1Streams (and their Exchanges) of ended requests, for the next ones
    cdef bint release_scheduled

    cdef int fd_set(self, int fd, object obj) except -1
    cdef object fd_get(self, int fd)
    cdef void fd_clear(self, int fd)
    cdef list client_list(self)
    cdef inline void count(self, int counter, long long n=*) noexcept
    cdef inline void tick(self) noexcept
    cdef void count_status(self, int status)
    cdef int poll(self, int fd, unsigned int old_mask, unsigned int new_mask)
    cdef void pause_accepting(self)
    cdef void resume_accepting(self)
    cdef void out_of_fds(self)
    cdef void client_closed(self)
    cdef bint handshake_log_allowed(self)
    cdef void handshake_log_summary(self)
    cdef void log_exchange(self, ClientConnection conn, Exchange ex, int status, long long bytes_in,
                           long long bytes_out, bint http2)
    cdef void release_later(self, ClientConnection conn)
    cdef void release_closed(self)


cdef class Listener:
    cdef Worker worker
    cdef readonly object sock
    cdef int fd
    cdef readonly TLSContext context
    cdef readonly SiteTable sites
    cdef bint active                # started and not stopped (draining)
    cdef bint watching              # in the epoll set
    cdef tuple proxy_trusted        # accept_proxy: networks that may send a PROXY header; None: off

    cdef void watch(self, bint on)
    cdef void on_readable(self)


cdef class Codec:
    """What the client transport drives: the HTTP/1.1 session or the HTTP/2 session that
    ALPN chose. The transport reads only while ``accepting()``; it reports output that
    blocked and drained, the client's EOF, and calls ``expire()`` at ``next_deadline()``."""
    cdef ClientConnection conn
    cdef ClientFacts facts
    cdef Worker worker
    cdef double deadline            # the codec's own (header, idle) timeout

    cdef bint accepting(self)
    cdef void on_data(self, const char *p, Py_ssize_t n)
    cdef bint on_eof(self)
    cdef void on_output_blocked(self)
    cdef void on_output_drained(self)
    cdef double next_deadline(self)
    cdef void expire(self)
    cdef void on_close(self)
    cdef void release(self)
    cdef void start(self)
    cdef void drain(self)
    cdef void on_handshake_done(self)


@cython.final   # direct calls: nothing subclasses it
cdef class ClientConnection:
    cdef Worker worker
    cdef int fd
    cdef TLSConnection tls
    cdef TLSContext context
    cdef SiteTable sites
    cdef str peer_ip
    cdef int peer_port
    cdef bytearray proxy_in         # accept_proxy: the PROXY header's bytes read so far
    cdef readonly int state
    cdef readonly Codec session     # the codec ALPN chose, once the handshake is done
    cdef bytearray pending_out      # plaintext SSL_write could not take yet (at most about
                                    # one backend read: the backend is paused meanwhile)
    cdef double send_deadline       # while pending_out: the client must take output by then
    cdef double deadline            # handshake, linger
    cdef readonly bint reading      # reader registered with the loop
    cdef bint writing               # writer registered with the loop
    cdef bint read_wants_write
    cdef readonly bint early        # the codec runs on 0-RTT data: the handshake is not complete
    cdef bint in_early_read         # inside _read_early (the codec's calls back must not recurse)
    cdef bint early_counted         # its early-data verdict is counted (once, when known)
    cdef long long sent             # plaintext bytes given to send(): each request's bytes_out
    cdef double hs_start            # loop time the handshake began, and how long it took
    cdef double hs_time
    cdef object log_cache           # the access log's part of each line about the connection (AccessLog)
    cdef bint input_done            # the codec read the client's last request whole (finish)

    cdef void start(self)
    cdef void on_readable(self)
    cdef void on_writable(self)
    cdef void _interest(self, bint reading, bint writing)
    cdef void _want_write(self, bint on)
    cdef void _want_read(self, bint on)
    cdef ClientFacts _facts(self, ServerPolicy tls_server, bint http2, const char *sni)
    cdef tuple _local_address(self)
    cdef tuple _log_tls(self)
    cdef tuple _proxy_facts(self, const char *sni, tuple cert)
    cdef double next_deadline(self)
    cdef void expire(self)
    # Handshake flow
    cdef void _start_tls(self)
    cdef void _read_proxy_header(self)
    cdef void _handshake(self)
    cdef void _count_handshake(self, int result)
    cdef int _read_early(self)
    cdef void _count_early_data(self)
    cdef bint _acme_validation(self)
    cdef void _open_session(self)
    # Input flow
    cdef void _read_loop(self)
    cdef void resume_input(self)
    # Output flow
    cdef void send(self, const char *p, Py_ssize_t n)
    cdef bint output_blocked(self) noexcept
    cdef void _flush(self)
    # Shutdown flow
    cdef void finish(self)
    cdef void _linger(self)
    cdef void close(self)
