# The HTTP/1.1 codec: plaintext from the client transport in, one Exchange per request,
# the backend's response bytes out. Requests are served one at a time in order; a
# pipelined request waits (in `held`, then in the kernel) until the one before it has
# been answered and its output taken by the client.

from cpython.ref cimport Py_REFCNT, _Py_REFCNT

cdef enum:
    SPARE_STREAMS = 64   # ended requests' streams a worker keeps for the next ones


cdef class H1Session(Codec):
    """One client connection's HTTP/1.1 requests, one after another."""

    def __cinit__(self, ClientConnection conn not None, ClientFacts facts not None):
        self.state = H1_IDLE
        self.close_after = self.worker.draining
        self.opened = self.worker.now

    cdef H1Stream _begin(self):
        """The stream of the request whose head came, with a new Exchange: a spare from the
        worker (an ended request's, of any connection) when nothing else refers to it or its
        Exchange any more (a pool's queue or a cancelled connect may, for a while; so may a
        caller up the stack), else new ones."""
        cdef Worker w = self.worker
        cdef H1Stream stream = self.stream
        if stream is not None:
            stream.exchange = Exchange.__new__(Exchange, self.facts)
            return stream
        while w.spare_streams:
            stream = <H1Stream>w.spare_streams.pop()
            # The Exchange's count through a borrowed pointer: Py_REFCNT(stream.exchange) counts
            # the temporary reference Cython takes to pass the attribute, never 1.
            if Py_REFCNT(stream) == 1 and stream.exchange is not None and \
                    _Py_REFCNT(<PyObject *>stream.exchange) == 1:
                stream.exchange.reset(self.facts)
                break
            stream = None
        if stream is None:
            stream = H1Stream.__new__(H1Stream)
            stream.worker = w
            stream.exchange = Exchange.__new__(Exchange, self.facts)
        stream.session = self
        self.stream = stream
        return stream

    cdef void _idle(self):
        """The response ended and the connection waits for its next request: its stream and
        Exchange go to the worker's spares (an idle keep-alive connection keeps neither, ~0.55
        KiB; a keep-alive request reuses them as one connection's used to)."""
        cdef Worker w = self.worker
        cdef H1Stream stream = self.stream
        self.stream = None
        self.state = H1_IDLE
        self.backend_full = False   # the ended request's backend (not pooled if it was full)
        self.deadline = w.now + w.keepalive_timeout
        if stream is not None:
            stream.request_head = None
            if stream.exchange is not None and len(w.spare_streams) < SPARE_STREAMS:
                w.spare_streams.append(stream)

    # ---- From the transport ---------------------------------------------------------
    cdef bint accepting(self):
        """Whether the transport may read more input now (else the kernel buffers it)."""
        if self.state == H1_IDLE or self.state == H1_HEAD:
            # A client with output still unsent gets no new request served: its pipelined
            # requests wait in the kernel, and their responses can't pile up here.
            return self.held is None and not self.conn.output_blocked()
        if self.state == H1_TUNNEL:
            return self.stream.backend is not None and not self.backend_full and self.held is None
        if self.state == H1_BODY:
            return (self.buffered is not None or self.stream.backend is not None and not self.backend_full) and \
                self.held is None
        return False

    cdef void on_data(self, const char *p, Py_ssize_t n):
        cdef Py_ssize_t i = 0, k
        cdef H1Stream stream
        cdef Worker w = self.worker
        while i < n and self.conn.state == C_OPEN and self.state != H1_CLOSING:
            if self.state == H1_TUNNEL:
                self._tunnel_data(p + i, n - i)
                break
            if self.state == H1_IDLE and i > 0 and self.conn.output_blocked():
                # Answers of our own (redirects) filled the client's output: the rest of
                # this read waits until it drains, so pipelining cannot grow the output.
                self._stash(p + i, n - i)
                break
            if self.state == H1_IDLE or self.state == H1_HEAD:
                k = self._feed_head(p + i, n - i)
            elif self.state == H1_BODY and (self.stream.backend is not None or self.dispatch_pending or
                                            self.buffered is not None):
                k = self._feed_body(p + i, n - i)
            else:
                # Not ours to process yet: a pipelined request, or body bytes while the
                # backend connects. Held until _resume(); reading stops meanwhile.
                self._stash(p + i, n - i)
                break
            if k < 0:
                return
            i += k
            if self.early_wait:
                self._stash(p + i, n - i)   # behind the held request, in order
                break
        if self.dispatch_pending and self.conn.state == C_OPEN:
            # The head and this read's validated body bytes leave in one write.
            self.dispatch_pending = False
            stream = self.stream
            stream.request_head = w.writer.take()
            stream.dispatch(False)

    cdef bint on_eof(self):
        """The client closed its side (or TLS failed): True keeps the connection for the
        response in flight (a half-close after a complete request), False closes it."""
        if self.state == H1_RESPONSE and self.stream.backend is not None and self.request_done:
            self.close_after = True
            return True
        if self.state == H1_TUNNEL and self.stream.backend is not None and \
                self.stream.backend.pool.tls is None:
            # a half-close goes on to the backend, whose answer still comes (RFC 9293 §3.6);
            # a TLS backend connection has no half-close of its own: the tunnel ends
            self.stream.backend.transport.write_eof()
            return True
        return False

    cdef void on_output_blocked(self):
        if self.stream is not None and self.stream.backend is not None:
            self.stream.backend.pause()

    cdef void on_handshake_done(self):
        cdef H1Stream stream = self.stream
        if self.early_retry:
            self.early_retry = False
            if stream is not None and stream.exchange is not None and stream.exchange.state == X_FORWARDING:
                stream.dispatch(True)
        if self.early_wait:
            self.early_wait = False
            self._resume()

    cdef void on_output_drained(self):
        """The client took everything: what waited for that goes on, with fresh deadlines
        (the time spent blocked on the client counted against send_timeout only)."""
        cdef Worker w = self.worker
        if self.stream is not None and self.stream.backend is not None:
            self.stream.deadline = w.now + self.stream.read_timeout
            self.stream.backend.resume()
        elif self.state == H1_IDLE:
            self.deadline = w.now + w.keepalive_timeout
            self._resume()

    cdef double next_deadline(self):
        """A request in flight times out on its stream's clock (connect, read), else the
        header or keep-alive timeout."""
        if self.state == H1_BODY or self.state == H1_RESPONSE or self.state == H1_TUNNEL:
            return self.stream.deadline
        return self.deadline

    cdef void expire(self):
        cdef int state = self.state
        cdef H1Stream stream = self.stream   # held: what it calls may end the request (_idle)
        if state == H1_TUNNEL:
            self.conn.close()   # nothing either way for read_timeout (nginx's proxy_read_timeout)
        elif state == H1_HEAD:
            self._refuse(408)
        elif (state == H1_BODY or state == H1_RESPONSE) and stream.connecting:
            stream.connect_timed_out()
        elif (state == H1_BODY or state == H1_RESPONSE) and stream.queued:
            stream.queue_timed_out()
        elif state == H1_BODY or state == H1_RESPONSE:
            if stream.exchange.state != X_FORWARDING:
                self.conn.close()
            elif state == H1_BODY and not self.request_done and not self.backend_full:
                # the client stopped sending its body (streamed, or buffered to send whole):
                # nginx's client_body_timeout closes, answering nothing
                self.conn.close()
            elif not stream.read_timed_out():   # else on to the next server (proxy_next_upstream)
                self._answer_error(504)
        elif state == H1_IDLE and self.held is None:
            self.state = H1_CLOSING
            self.conn.finish()
        else:
            self.conn.close()

    cdef void on_close(self):
        cdef H1Stream stream = self.stream
        self.held = None
        self.buffered = None
        self.head_buf = None
        if stream is None:
            return
        stream.drop_backend()
        if stream.exchange is not None:
            if self.worker.access_log is not None:
                self._log(stream.exchange, stream.exchange.status if stream.exchange.state ==
                          X_RESPONDING or stream.exchange.state == X_DONE else 499, None)
            stream.exchange.advance(E_ABORT)

    # ---- Request flow ---------------------------------------------------------------
    cdef Py_ssize_t _feed_head(self, const char *p, Py_ssize_t n) except -2:
        """Consume header-block bytes; returns bytes used, or -1 when the connection ended."""
        cdef Worker w = self.worker
        cdef Py_ssize_t end, have, start
        cdef const char *q
        cdef int status
        if self.head_buf is None:
            # Fast path: the whole block is in this read (RFC 9112 §2.2: skip leading CRLFs).
            start = 0
            while start + 1 < n and p[start] == b'\r' and p[start + 1] == b'\n' and self.state == H1_IDLE:
                start += 2
            end = find_head_end(p + start, n - start, 0)
            self.head_line_start = 0
            if end > 0:
                status = self._check_head_size(p + start, end)
                if status:
                    self._refuse(status)
                    return -1
                if self._on_head(p + start, <int>end) < 0:
                    return -1
                return start + end
            if check_line_endings(p, start, n):
                self._refuse(400)
                return -1
            status = self._check_head_size(p + start, n - start)
            if status:
                self._refuse(status)
                return -1
            self.head_buf = HeadBuffer()
            self.head_buf.add(p + start, n - start)
            self.state = H1_HEAD
            self.deadline = w.now + w.header_timeout
            return n
        have = self.head_buf.size()
        end = self.head_buf.add(p, n)
        q = self.head_buf.ptr()
        if end < 0:
            if check_line_endings(q, have - 1 if have > 0 else 0, have + n):
                self._refuse(400)
                return -1
            status = self._check_head_size(q, have + n)
        else:
            status = self._check_head_size(q, end)
        if status:
            self._refuse(status)
            return -1
        if end < 0:
            return n
        buf = self.head_buf   # keep alive while parsing
        self.head_buf = None
        if self._on_head(q, <int>end) < 0:
            return -1
        return end - have

    cdef int _check_head_size(self, const char *p, Py_ssize_t n) noexcept:
        """The status refusing a head (complete or not) of ``n`` bytes so far, or 0.
        Without a line limit: 431 past header_buffer_size (RFC 6585 §5). With one (nginx's
        large_client_header_buffers SIZE): nginx's statuses, 414 for a request line longer
        than it, 400 for a field line longer or for a head past all the buffers; the lines
        are scanned with memchr from where the last call stopped (head_line_start)."""
        cdef Worker w = self.worker
        cdef int status
        if w.header_line_size:
            status = check_line_sizes(p, &self.head_line_start, n, w.header_line_size)
            if status:
                return status
            return 400 if n > w.header_buffer_size else 0
        return 431 if n > w.header_buffer_size else 0

    cdef int _on_head(self, const char *p, int head_len) except -2:
        """A complete request header block: the Exchange decides, then dispatch."""
        cdef Worker w = self.worker
        cdef MessageHead head
        cdef H1Stream stream
        cdef Exchange ex
        cdef int status
        if self.conn.early and not early_safe(p, head_len) and self.conn.sites.early_reject:
            w.count(N_REQUESTS)
            self._refuse(425)   # RFC 8470 §5.2: never forwarded; the client sends it again
            return -1
        if self.conn.early and not early_safe(p, head_len):
            # Not forwarded before the handshake completes: a replayed flight could not make
            # it run twice, and it goes without Early-Data then (parsed again from held).
            self._stash(p, head_len)
            self.early_wait = True
            self.state = H1_IDLE
            w.count(N_EARLY_HELD)
            return 0
        stream = self._begin()
        ex = stream.exchange
        w.count(N_REQUESTS)
        ex.early = self.conn.early
        ex.started = w.now
        ex.out_mark = self.conn.sent
        self.head_in = head_len
        framer_init(&stream.req_body, BODY_NONE, 0)
        head.method_len = head.target_len = head.nheaders = 0
        status = parse_head(p, head_len, True, &head, w.slots, w.max_header_fields)
        if w.access_log is not None and head.method_len:   # a bad head's line is logged too
            ex.note_request(p, &head, w.slots)
        if status == 0:
            status = ex.request(p, &head, w.slots, w.writer, &w.request_limits, w.pathbuf)
        self.requests += 1
        self.last_by_client = ex.client_close   # the request's own word; the response may set it too
        if ex.client_close or w.draining or (w.keepalive_requests and self.requests >= w.keepalive_requests):
            self.close_after = True   # the response says Connection: close
        if w.keepalive_time and w.now - self.opened > w.keepalive_time:
            self.close_after = True   # nginx keepalive_time: the connection's last request
        if status:
            if (status == 301 and ex.location is not None or ex.answering and status != CLOSE_STATUS) and \
                    ex.body_mode == BODY_NONE and not self.close_after:
                self._redirect(ex, status)   # nginx keeps the connection after its own redirect, a return
                return 0 if self.conn.state == C_OPEN else -1
            self._refuse(status)
            return -1
        stream.routed()
        framer_init(&stream.req_body, ex.body_mode, ex.content_length)
        self.request_done = stream.req_body.done
        if ex.buffer_body:
            stream.req_body.stop_at_data = True
            self.buffered = bytearray()
            self.buffered_head = w.writer.take()
            if ex.continue_client:
                self.conn.send(b"HTTP/1.1 100 Continue\r\n\r\n", 25)
            self.state = H1_BODY
            stream.attempts = 0
            stream.deadline = w.now + w.body_timeout   # client_body_timeout while it is read
            return 0 if self.conn.state == C_OPEN else -1
        if ex.continue_client and not self.request_done:
            self.conn.send(b"HTTP/1.1 100 Continue\r\n\r\n", 25)
        self.state = H1_RESPONSE if self.request_done else H1_BODY
        stream.attempts = 0
        stream.deadline = w.now + stream.read_timeout
        if self.request_done:
            stream.request_head = w.writer.take()
            stream.dispatch(False)
        else:
            # Validate the body bytes of this read before the backend sees anything; the
            # head waits in the writer until then (on_data takes it, in this same call).
            self.dispatch_pending = True
        return 0 if self.conn.state == C_OPEN and self.state != H1_CLOSING else -1

    cdef Py_ssize_t _feed_body(self, const char *p, Py_ssize_t n) except -2:
        cdef Worker w = self.worker
        cdef H1Stream stream = self.stream   # held: dispatch may end the request (_idle)
        cdef Py_ssize_t k
        cdef long long limit
        stream.deadline = w.now + w.body_timeout   # a long upload is not a stalled one
        k = framer_feed(&stream.req_body, p, n)
        limit = stream.exchange.max_body   # the answering location's (nginx), else the global one
        if k < 0 or (limit and stream.req_body.total > limit):
            # Malformed chunked body (400) or one past client_max_body_size (413, as nginx
            # answers a chunked body that grows over the limit). When it came with its
            # head, the backend never hears of this request.
            self.close_after = True
            self.dispatch_pending = False
            self.buffered = None
            if stream.exchange.state == X_FORWARDING:
                self._refuse(400 if k < 0 else 413)
            else:
                self.conn.close()
            return -1
        if self.buffered is not None:
            if stream.req_body.data_len:
                bytearray_extend(self.buffered, p + stream.req_body.data_start, stream.req_body.data_len)
            if stream.req_body.done:
                self.request_done = True
                self.state = H1_RESPONSE
                stream.request_head = stream.exchange.buffered_head(
                    self.buffered_head, PyByteArray_GET_SIZE(self.buffered)) + bytes(self.buffered)
                self.buffered = None
                self.buffered_head = None
                stream.deadline = w.now + stream.read_timeout
                stream.dispatch(False)
            return k
        if k:
            if self.dispatch_pending:
                w.writer.put(p, k)
            else:
                stream.backend.send_body(p, k)
        if stream.req_body.done:
            self.request_done = True
            stream.deadline = w.now + stream.read_timeout
            if self.state == H1_BODY:
                self.state = H1_RESPONSE
        return k

    cdef void _stash(self, const char *p, Py_ssize_t n):
        if n <= 0:
            return
        if self.held is None:
            self.held = PyBytes_FromStringAndSize(p, n)
        else:
            self.held = self.held + PyBytes_FromStringAndSize(p, n)

    cdef void _resume(self):
        """Input processing may go on: replay held bytes, then read the socket again."""
        cdef bytes held
        if self.conn.state != C_OPEN or self.state == H1_CLOSING:
            return
        if self.state == H1_IDLE or self.state == H1_HEAD:
            if self.conn.output_blocked():
                return
        elif self.state == H1_TUNNEL:
            if self.stream.backend is None or self.backend_full:
                return
        elif not (self.state == H1_BODY and (self.buffered is not None or
                                             self.stream.backend is not None and not self.backend_full)):
            return
        if self.held is not None:
            held = self.held
            self.held = None
            self.on_data(PyBytes_AS_STRING(held), PyBytes_GET_SIZE(held))
        if self.conn.state == C_OPEN and self.accepting():
            self.conn.resume_input()

    cdef void _redirect(self, Exchange ex, int status):
        """Our own 301 (or a return's answer) to a request without a body; the next request may
        follow on this connection (pipelined ones wait while the client has output pending, see
        on_data)."""
        cdef Worker w = self.worker
        w.count_status(status)
        msg = ex.error_response(status, True)
        self.conn.send(PyBytes_AS_STRING(msg), PyBytes_GET_SIZE(msg))
        if w.access_log is not None:
            self._log(ex, status, msg)
        self._idle()

    cdef void _refuse(self, int status):
        """An answer of our own (error page, HSTS on it too); the connection closes after."""
        cdef H1Stream stream = self.stream
        cdef Exchange ex = stream.exchange if stream is not None else None
        if ex is None:
            stream = self._begin()
            ex = stream.exchange
            ex.out_mark = self.conn.sent
            self.head_in = 0
            framer_init(&stream.req_body, BODY_NONE, 0)
        if ex.state == X_NEW or ex.state == X_FORWARDING:
            ex.reject(status)
        else:
            ex.advance(E_ABORT)
        stream.drop_backend()
        self.worker.count_status(status)
        self.close_after = True
        self.held = None
        self.buffered = None
        self.state = H1_CLOSING
        msg = ex.error_response(status)
        if not msg:
            if self.worker.access_log is not None:
                self._log(ex, status, msg)
            self.conn.close()   # nginx's 444
            return
        self.conn.send(PyBytes_AS_STRING(msg), PyBytes_GET_SIZE(msg))
        if self.worker.access_log is not None:
            self._log(ex, status, msg)
        self.conn.finish()

    cdef void _answer_error(self, int status):
        """An error answered in place of the backend's response (502, 503, 504, an intercepted
        status). As nginx, the connection goes on when the request was read whole, unless the
        status is one nginx closes after (ngx_http_special_response_handler: 400, 413, 414,
        500, 501); else, and for an answer that closes (444), _refuse."""
        cdef Worker w = self.worker
        cdef Exchange ex = self.stream.exchange if self.stream is not None else None
        cdef bytes msg
        if ex is None or not self.request_done or self.close_after or w.draining or \
                status == 400 or status == 413 or status == 414 or status == 500 or status == 501 or \
                not (ex.state == X_FORWARDING or ex.state == X_FAILED):
            self._refuse(status)
            return
        if ex.state == X_FORWARDING:
            ex.reject(status)
        msg = ex.error_response(status, True)
        if not msg:
            self._refuse(status)
            return
        self.stream.drop_backend()
        w.count_status(status)
        self.conn.send(PyBytes_AS_STRING(msg), PyBytes_GET_SIZE(msg))
        if w.access_log is not None:
            self._log(ex, status, msg)
        self._idle()
        if self.conn.output_blocked():
            return   # on_output_drained() goes on with the next request
        if self.held is not None or not self.conn.reading:
            self._resume()

    # ---- Tunnel flow --------------------------------------------------------------------
    cdef void _tunnel(self):
        """The backend switched protocols: what the client sent after its request (held, the
        first bytes of the new protocol) goes to the backend, then whatever it sends. Each
        direction pauses the other as a response does (output_blocked, backend_full)."""
        cdef Worker w = self.worker
        self.state = H1_TUNNEL
        self.close_after = True
        self.stream.deadline = w.now + self.stream.read_timeout
        w.count(N_UPGRADES)
        self._resume()

    cdef void _tunnel_data(self, const char *p, Py_ssize_t n):
        cdef Worker w = self.worker
        if self.stream.backend is None:
            return
        self.stream.deadline = w.now + self.stream.read_timeout
        self.stream.backend.send_body(p, n)

    cdef void release(self):
        if self.stream is not None:
            self.stream.session = None
        self.conn = None

    cdef void _log(self, Exchange ex, int status, bytes answer):
        """The access log's line for ``ex``; ``answer``: an answer of our own (its head's size)."""
        if answer is not None:
            ex.head_sent = answer.find(b"\r\n\r\n") + 4 if answer else 0
        if self.conn is not None:
            self.worker.log_exchange(self.conn, ex, status, self.head_in + (self.stream.req_body.total if
                                     self.stream is not None else 0), self.conn.sent - ex.out_mark, False)

    cdef void _response_end(self, bint until_close):
        cdef Worker w = self.worker
        if w.access_log is not None:
            self._log(self.stream.exchange, self.stream.exchange.status, None)
        self.stream.request_head = None
        if until_close or not self.request_done:
            self.close_after = True   # ... or the backend answered before the body ended
        if self.close_after or w.draining:
            self.stream.exchange = None
            self.state = H1_CLOSING
            self.conn.input_done = self.last_by_client and self.request_done and self.held is None
            self.conn.finish()
            return
        self._idle()
        if self.conn.output_blocked():
            return   # on_output_drained() goes on with the next request
        if self.held is not None or not self.conn.reading:
            self._resume()


cdef class H1Stream(Stream):
    """The backend side of an HTTP/1.1 session's current request."""

    cdef bint wait_for_handshake(self):
        if self.session is not None and self.session.conn is not None and self.session.conn.early:
            self.session.early_retry = True
            return True
        return False

    cdef void backend_ready(self):
        if not self.session.request_done:   # the body is the client's to send: client_body_timeout
            self.deadline = self.worker.now + self.worker.body_timeout
        self.session._resume()

    cdef bint closing(self):
        return self.session.close_after or self.worker.draining

    cdef bint request_sent(self):
        return self.session.request_done

    cdef void backend_writable(self, bint writable):
        self.session.backend_full = not writable
        if not self.session.request_done:   # proxy_send_timeout, then client_body_timeout again
            self.deadline = self.worker.now + (self.backend_send_timeout if not writable else
                                               self.worker.body_timeout)
        if writable:
            self.session._resume()

    cdef void response_interim(self, const char *p, Py_ssize_t n):
        if not self.exchange.http10:   # 100 Continue, 103 Early Hints: HTTP/1.1 clients only
            self.session.conn.send(p, n)

    cdef Py_ssize_t response_head(self, HeadWriter head, const char *body, Py_ssize_t k):
        """Head and a small first body slice leave in one SSL_write: one record, one
        syscall (the copy of <= 16 KiB is cheaper than either)."""
        if self.exchange.client_close:
            self.session.close_after = True
        self.exchange.head_sent = head.len
        if 0 < k <= 16384:
            head.put(body, k)
            self.session.conn.send(head.buf, head.len)
        else:
            self.session.conn.send(head.buf, head.len)
            k = 0
        if self.exchange.switched and self.session is not None and self.session.conn is not None and \
                self.session.conn.state == C_OPEN:
            self.session._tunnel()
        return k

    cdef void response_data(self, const char *p, Py_ssize_t n):
        self.session.conn.send(p, n)

    cdef void response_end(self, bint until_close):
        self.session._response_end(until_close)

    cdef void answer_error(self, int status):
        self.session._answer_error(status)

    cdef void reset(self):
        self.session.conn.close()
