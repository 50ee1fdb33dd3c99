# The HTTP/2 codec (RFC 9113) on libnghttp2: the client's bytes go through
# nghttp2_session_mem_recv, the frames it answers come out of nghttp2_session_mem_send and
# are written by the client transport; nothing is written to the socket by nghttp2 itself.
#
# Each stream's header fields are written down as an HTTP/1.1 request head, which the same
# parser and Exchange as HTTP/1.1 judge (validation, routing, forwarded headers), so nothing
# HTTP-semantic is written twice. The response head the Exchange rewrites is turned back
# into HTTP/2 fields; the body (chunk data only) waits in the stream until nghttp2 pulls it.
#
# Bounds: a client may send per stream what our window allows (DATA is acknowledged by
# WINDOW_UPDATE only once the backend took it), at most http2_max_concurrent_streams streams at
# once and http2_max_requests in all (then GOAWAY); a response's body is held up to
# H2_OUT_MAX per stream (then its backend is paused); nghttp2 closes a session that floods
# it with SETTINGS, PINGs, CONTINUATIONs or resets (CVE-2023-44487, CVE-2024-27316).
# Streams are dispatched to backends after the read they arrived in: a stream opened and
# reset in one read (Rapid Reset) never reaches a backend.

from libc.stdint cimport int32_t, uint8_t, uint32_t

cdef enum:
    H2_WINDOW = 65535                   # per-stream window we advertise (the RFC's default)
    H2_CONNECTION_WINDOW = 1048576      # the connection's: what all streams together may have in flight
    H2_OUT_MAX = 65536                  # response bytes held per stream before its backend pauses
    H2_MAX_SETTINGS = 32                # entries in one SETTINGS frame
    H2_MAX_OUTBOUND_ACK = 1000          # queued SETTINGS/PING ACKs (a client that never reads them)
    H2_RESET_BURST = 1000               # RST_STREAMs tolerated at once ...
    H2_RESET_RATE = 33                  # ... and per second after that
    H2_MAX_CONTINUATIONS = 8            # CONTINUATION frames after one HEADERS

cdef nghttp2_session_callbacks *_h2_callbacks = NULL
# Fields that can't be trailers (framing, routing, connection-specific: RFC 9110 §6.5.1,
# RFC 9113 §8.2.2).
_NOT_TRAILERS = frozenset((b"content-length", b"transfer-encoding", b"host", b"connection", b"keep-alive",
                           b"proxy-connection", b"te", b"upgrade", b"trailer", b"content-type",
                           b"content-encoding", b"authorization", b"set-cookie", b"cache-control"))


cdef H2Stream _stream_of(nghttp2_session *ng, int32_t stream_id):
    cdef void *p = nghttp2_session_get_stream_user_data(ng, stream_id)
    return None if p == NULL else <H2Stream>p


cdef int _on_begin_headers(nghttp2_session *ng, const nghttp2_frame *frame, void *user_data) noexcept:
    cdef H2Session session = <H2Session>user_data
    cdef H2Stream stream
    if frame.hd.type != NGHTTP2_HEADERS or frame.headers.cat != NGHTTP2_HCAT_REQUEST:
        return 0
    try:
        stream = H2Stream(session, frame.hd.stream_id)
        session.streams[frame.hd.stream_id] = stream
        nghttp2_session_set_stream_user_data(ng, frame.hd.stream_id, <void *>stream)
        session.opened += 1
        if session.opened >= session.worker.h2_max_requests and not session.goaway:
            session.goaway = True   # this one is served; later ones go to a new connection
            nghttp2_submit_goaway(ng, NGHTTP2_FLAG_NONE, frame.hd.stream_id, NGHTTP2_NO_ERROR, NULL, 0)
            session.worker.count(N_H2_GOAWAY)
    except BaseException as exc:
        session.error = repr(exc)
        return NGHTTP2_ERR_CALLBACK_FAILURE
    return 0


cdef int _on_header(nghttp2_session *ng, const nghttp2_frame *frame, const uint8_t *name, size_t namelen,
                    const uint8_t *value, size_t valuelen, uint8_t flags, void *user_data) noexcept:
    cdef H2Session session = <H2Session>user_data
    cdef H2Stream stream = _stream_of(ng, frame.hd.stream_id)
    if stream is None:
        return 0
    if frame.headers.cat != NGHTTP2_HCAT_REQUEST:
        # Trailers, before or after the head went out: counted against the header cap (an
        # HPACK bomb in trailers is as big), never forwarded and never read as fields.
        stream.header_bytes += namelen + valuelen + 32
        return 0
    try:
        return stream.on_header(name, namelen, value, valuelen)
    except BaseException as exc:
        session.error = repr(exc)
        return NGHTTP2_ERR_CALLBACK_FAILURE


cdef int _on_frame_recv(nghttp2_session *ng, const nghttp2_frame *frame, void *user_data) noexcept:
    cdef H2Session session = <H2Session>user_data
    cdef H2Stream stream
    cdef int kind = frame.hd.type
    try:
        if kind == NGHTTP2_RST_STREAM:
            session.worker.count(N_H2_RESETS)
            return 0
        if kind == NGHTTP2_PING and frame.hd.flags & NGHTTP2_FLAG_ACK and session.notice and not session.goaway:
            # A round trip after the shutdown notice: whatever the client opened before it read
            # the notice has arrived, so the final GOAWAY names it (RFC 9113 §6.8).
            session.shutdown(NGHTTP2_NO_ERROR)
            return 0
        if kind != NGHTTP2_HEADERS and kind != NGHTTP2_DATA:
            return 0
        stream = _stream_of(ng, frame.hd.stream_id)
        if stream is None:
            return 0
        stream.wire_in += frame.hd.length + 9   # the access log's bytes_in: frames as they came
        if kind == NGHTTP2_HEADERS and frame.headers.cat == NGHTTP2_HCAT_REQUEST:
            stream.bodiless = stream.end_stream = (frame.hd.flags & NGHTTP2_FLAG_END_STREAM) != 0
            stream.request_head_done()
        elif frame.hd.flags & NGHTTP2_FLAG_END_STREAM:
            stream.request_end()   # the last DATA, or trailers (which are not forwarded)
    except BaseException as exc:
        session.error = repr(exc)
        return NGHTTP2_ERR_CALLBACK_FAILURE
    return 0


cdef int _on_frame_send(nghttp2_session *ng, const nghttp2_frame *frame, void *user_data) noexcept:
    """nghttp2 ends a session it judged a flood on its own, with a GOAWAY of its choosing:
    ENHANCE_YOUR_CALM (SETTINGS, PING ACKs piling up) or INTERNAL_ERROR (resets over the
    rate, in 1.52's backport of the Rapid Reset fix). Ours carry NO_ERROR. Count it here."""
    cdef H2Session session = <H2Session>user_data
    cdef H2Stream stream
    if frame.hd.type == NGHTTP2_GOAWAY and (frame.goaway.error_code == NGHTTP2_ENHANCE_YOUR_CALM or
                                            frame.goaway.error_code == NGHTTP2_INTERNAL_ERROR):
        session.count_flood()
    elif (frame.hd.type == NGHTTP2_HEADERS or frame.hd.type == NGHTTP2_DATA) and \
            session.worker.access_log is not None:
        stream = _stream_of(ng, frame.hd.stream_id)
        if stream is not None:
            stream.wire_out += frame.hd.length + 9   # the access log's bytes_out: frames as they went
    return 0


cdef int _on_data_chunk(nghttp2_session *ng, uint8_t flags, int32_t stream_id, const uint8_t *data,
                        size_t n, void *user_data) noexcept:
    cdef H2Session session = <H2Session>user_data
    cdef H2Stream stream = _stream_of(ng, stream_id)
    if stream is None:
        nghttp2_session_consume(ng, stream_id, n)   # a stream we reset: the window still counts
        return 0
    try:
        stream.request_data(data, n)
    except BaseException as exc:
        session.error = repr(exc)
        return NGHTTP2_ERR_CALLBACK_FAILURE
    return 0


cdef int _on_stream_close(nghttp2_session *ng, int32_t stream_id, uint32_t error_code, void *user_data) noexcept:
    cdef H2Session session = <H2Session>user_data
    cdef H2Stream stream
    try:
        stream = session.streams.pop(stream_id, None)
        if stream is not None:
            stream.closed(error_code)
        if not session.streams:
            session.deadline = session.worker.now + session.worker.keepalive_timeout
    except BaseException as exc:
        session.error = repr(exc)
        return NGHTTP2_ERR_CALLBACK_FAILURE
    return 0


cdef ssize_t _read_body(nghttp2_session *ng, int32_t stream_id, uint8_t *buf, size_t length,
                        uint32_t *data_flags, nghttp2_data_source *source, void *user_data) noexcept:
    """nghttp2 pulls the next DATA payload of a response: what the backend sent so far."""
    cdef H2Stream stream = <H2Stream>source.ptr
    cdef Py_ssize_t have = PyByteArray_GET_SIZE(stream.out)
    cdef Py_ssize_t n = have if <size_t>have < length else <Py_ssize_t>length
    if n == 0:
        if stream.out_eof:
            data_flags[0] |= NGHTTP2_DATA_FLAG_EOF
            if stream.trailers and stream.submit_trailers() == 0:
                data_flags[0] |= NGHTTP2_DATA_FLAG_NO_END_STREAM
            return 0
        stream.deferred = True
        return NGHTTP2_ERR_DEFERRED
    memcpy(buf, PyByteArray_AS_STRING(stream.out), n)
    stream.sent_body += n
    try:
        del stream.out[:n]
    except BaseException:
        return NGHTTP2_ERR_TEMPORAL_CALLBACK_FAILURE
    if stream.out_eof and n == have:
        data_flags[0] |= NGHTTP2_DATA_FLAG_EOF
        if stream.trailers and stream.submit_trailers() == 0:
            data_flags[0] |= NGHTTP2_DATA_FLAG_NO_END_STREAM   # END_STREAM goes on the trailers
    if have - n:
        stream.deadline = stream.worker.now + stream.worker.send_timeout   # progress
    elif stream.backend is not None:
        stream.deadline = stream.worker.now + stream.read_timeout
    if stream.backend is not None and have - n < H2_OUT_MAX // 2:
        stream.backend.resume()
    return n


cdef int _fill_nv(nghttp2_nv *nva, list fields) except -1:
    """(name, value) bytes pairs as nghttp2 fields, pointing into the bytes (nghttp2 copies
    them at submit)."""
    cdef Py_ssize_t i
    cdef bytes name, value
    for i in range(len(fields)):
        name, value = fields[i]
        nva[i].name = <uint8_t *>PyBytes_AS_STRING(name)
        nva[i].namelen = PyBytes_GET_SIZE(name)
        nva[i].value = <uint8_t *>PyBytes_AS_STRING(value)
        nva[i].valuelen = PyBytes_GET_SIZE(value)
        nva[i].flags = NGHTTP2_NV_FLAG_NONE
    return 0


cdef void _init_callbacks() noexcept:
    global _h2_callbacks
    nghttp2_session_callbacks_new(&_h2_callbacks)
    nghttp2_session_callbacks_set_on_begin_headers_callback(_h2_callbacks, _on_begin_headers)
    nghttp2_session_callbacks_set_on_header_callback(_h2_callbacks, _on_header)
    nghttp2_session_callbacks_set_on_frame_recv_callback(_h2_callbacks, _on_frame_recv)
    nghttp2_session_callbacks_set_on_frame_send_callback(_h2_callbacks, _on_frame_send)
    nghttp2_session_callbacks_set_on_data_chunk_recv_callback(_h2_callbacks, _on_data_chunk)
    nghttp2_session_callbacks_set_on_stream_close_callback(_h2_callbacks, _on_stream_close)


_init_callbacks()


cdef class H2Session(Codec):
    """One client connection's HTTP/2 streams, side by side."""

    def __cinit__(self, ClientConnection conn not None, ClientFacts facts not None):
        cdef nghttp2_option *opt = NULL
        cdef nghttp2_settings_entry settings[4]
        cdef int r
        self.streams = {}
        self.ready = []
        self.early_held = []
        if nghttp2_option_new(&opt) != 0:
            raise MemoryError()
        # WINDOW_UPDATE only once a backend took the bytes: an upload waits in the client.
        nghttp2_option_set_no_auto_window_update(opt, 1)
        nghttp2_option_set_max_settings(opt, H2_MAX_SETTINGS)
        nghttp2_option_set_max_outbound_ack(opt, H2_MAX_OUTBOUND_ACK)
        nghttp2_option_set_stream_reset_rate_limit(opt, H2_RESET_BURST, H2_RESET_RATE)
        nghttp2_option_set_max_continuations(opt, H2_MAX_CONTINUATIONS)
        r = nghttp2_session_server_new2(&self.ng, _h2_callbacks, <void *>self, opt)
        nghttp2_option_del(opt)
        if r != 0:
            raise MemoryError(nghttp2_strerror(r).decode())
        settings[0].settings_id = NGHTTP2_SETTINGS_MAX_CONCURRENT_STREAMS
        settings[0].value = self.worker.h2_max_streams
        settings[1].settings_id = NGHTTP2_SETTINGS_INITIAL_WINDOW_SIZE
        settings[1].value = H2_WINDOW
        settings[2].settings_id = NGHTTP2_SETTINGS_MAX_HEADER_LIST_SIZE
        settings[2].value = self.worker.header_buffer_size
        settings[3].settings_id = NGHTTP2_SETTINGS_ENABLE_PUSH
        settings[3].value = 0
        nghttp2_submit_settings(self.ng, NGHTTP2_FLAG_NONE, settings, 4)
        # 64 KiB for all streams would serialise concurrent uploads on one round trip each.
        nghttp2_session_set_local_window_size(self.ng, NGHTTP2_FLAG_NONE, 0, H2_CONNECTION_WINDOW)
        self.worker.count(N_H2_CONNECTIONS)
        if self.worker.draining:
            self.drain()

    def __dealloc__(self):
        if self.ng != NULL:
            nghttp2_session_del(self.ng)
            self.ng = NULL

    # ---- From the transport ---------------------------------------------------------
    cdef void start(self):
        self.flush()   # our SETTINGS: the server connection preface

    cdef bint accepting(self):
        return not self.conn.output_blocked()

    cdef void on_data(self, const char *p, Py_ssize_t n):
        cdef ssize_t r
        self.in_recv = True
        r = nghttp2_session_mem_recv(self.ng, <const uint8_t *>p, n)
        self.in_recv = False
        if r < 0:
            if r == NGHTTP2_ERR_FLOODED or r == NGHTTP2_ERR_TOO_MANY_CONTINUATIONS or \
                    r == NGHTTP2_ERR_TOO_MANY_SETTINGS:
                self.count_flood()
            _log.info("HTTP/2 session from %s closed: %s%s", self.facts.peer_ip,
                      nghttp2_strerror(<int>r).decode(), f" ({self.error})" if self.error else "")
            self.flush()   # the GOAWAY nghttp2 queued says why
            if self.conn is not None and self.conn.state == C_OPEN:
                self.conn.finish()
            return
        self._dispatch_ready()
        self.flush()

    cdef bint on_eof(self):
        return False

    cdef void on_handshake_done(self):
        cdef H2Stream stream
        held, self.early_held = self.early_held, []
        for obj in held:
            stream = <H2Stream>obj
            if stream.session is None or self.streams.get(stream.id) is not stream:
                continue
            if stream.exchange is None:
                stream.forward()
            elif stream.exchange.state == X_FORWARDING:
                stream.dispatch(True)   # a 425 to it in early data (Stream.too_early)
        self.flush()

    cdef void on_output_drained(self):
        self.flush()
        if self.conn is not None and self.conn.state == C_OPEN:
            self.conn.resume_input()

    cdef double next_deadline(self):
        """The soonest of the streams' deadlines (connect, read, a client that takes no
        DATA), or with no stream open the idle timeout."""
        cdef double due = self.deadline if not self.streams else 1e300
        for stream in self.streams.values():
            if (<H2Stream>stream).deadline < due:
                due = (<H2Stream>stream).deadline
        return due

    cdef void expire(self):
        cdef double now = self.worker.now
        for stream in list(self.streams.values()):
            if (<H2Stream>stream).deadline <= now:
                (<H2Stream>stream).expire()
        if not self.streams and self.deadline <= now:
            self.shutdown(NGHTTP2_NO_ERROR)   # idle: GOAWAY, then close
        self.flush()

    cdef void on_close(self):
        for stream in list(self.streams.values()):
            (<H2Stream>stream).drop_backend()
            if (<H2Stream>stream).exchange is not None:
                if self.worker.access_log is not None:
                    (<H2Stream>stream).log(self.conn)
                (<H2Stream>stream).exchange.advance(E_ABORT)

    cdef void release(self):
        """Called on the loop pass after the close: nghttp2 is not on the stack."""
        for stream in self.streams.values():
            (<H2Stream>stream).session = None
        self.streams.clear()
        self.ready = []
        self.early_held = []
        if self.ng != NULL:
            nghttp2_session_del(self.ng)
            self.ng = NULL
        self.conn = None

    # ---- Frames out -----------------------------------------------------------------
    cdef void flush_soon(self):
        """Frames made by backend events go out at the end of this loop pass, together: the
        responses of the streams answered in one pass share TLS records and a write."""
        if not self.flush_scheduled and self.ng != NULL:
            self.flush_scheduled = True
            self.worker.loop.call_soon(self._flush_now)

    def _flush_now(self):
        self.flush_scheduled = False
        try:
            self.flush()
        except Exception:
            _log.exception("closing the HTTP/2 session from %s after an internal error", self.facts.peer_ip)
            if self.conn is not None:
                self.conn.close()

    cdef void flush(self):
        """Write what nghttp2 has to send, while the client takes it, frames gathered into
        one write of up to 64 KiB (nghttp2 hands them out one by one); close when the session
        is over (GOAWAY sent and no stream left, or the client's GOAWAY)."""
        cdef const uint8_t *data
        cdef ssize_t n
        cdef HeadWriter out = self.worker.frames
        if self.ng == NULL or self.in_recv or self.conn is None:
            return
        while self.conn.state == C_OPEN and not self.conn.output_blocked():
            out.len = 0
            while out.len < 65536:
                n = nghttp2_session_mem_send(self.ng, &data)
                if n < 0:
                    _log.info("HTTP/2 session from %s failed: %s", self.facts.peer_ip,
                              nghttp2_strerror(<int>n).decode())
                    self.conn.close()
                    return
                if n == 0:
                    break
                out.put(<const char *>data, n)
            if out.len == 0:
                break
            self.conn.send(out.buf, out.len)
            if out.len < 65536:
                break
        if self.conn.state == C_OPEN and not self.conn.output_blocked() and \
                not nghttp2_session_want_read(self.ng) and not nghttp2_session_want_write(self.ng):
            self.conn.finish()

    cdef void shutdown(self, unsigned int error_code):
        if not self.goaway:
            self.goaway = True
            if not self.notice:
                self.worker.count(N_H2_GOAWAY)
        nghttp2_submit_goaway(self.ng, NGHTTP2_FLAG_NONE, nghttp2_session_get_last_proc_stream_id(self.ng),
                              error_code, NULL, 0)

    cdef void drain(self):
        """Reload or stop, gracefully (RFC 9113 §6.8): a GOAWAY notice (last stream 2^31-1)
        and a PING; at its ACK the final GOAWAY names the last stream we took. Those finish,
        then the connection closes (or at the drain deadline, if the client never answers)."""
        cdef uint8_t opaque[8]
        if not self.goaway and not self.notice and self.ng != NULL:
            self.notice = True
            self.worker.count(N_H2_GOAWAY)
            nghttp2_submit_shutdown_notice(self.ng)
            memset(opaque, 0, 8)
            nghttp2_submit_ping(self.ng, NGHTTP2_FLAG_NONE, opaque)
            self.flush()

    cdef void count_flood(self):
        if not self.flooded:
            self.flooded = True
            self.worker.count(N_H2_FLOOD)

    cdef void _dispatch_ready(self):
        cdef H2Stream stream
        ready, self.ready = self.ready, []
        for obj in ready:
            stream = <H2Stream>obj
            if stream.session is not None and self.streams.get(stream.id) is stream:
                stream.forward()


cdef class H2Stream(Stream):
    """One HTTP/2 stream: its request head as HTTP/1.1, its body both ways."""

    cdef bint wait_for_handshake(self):
        if self.session.conn is not None and self.session.conn.early:
            self.session.early_held.append(self)
            return True
        return False

    def __cinit__(self, H2Session session, int stream_id):
        self.session = session
        self.worker = session.worker
        self.id = stream_id
        self.head = bytearray()
        self.out = bytearray()
        self.deadline = session.worker.now + session.worker.header_timeout

    cdef int on_header(self, const uint8_t *name, size_t namelen, const uint8_t *value, size_t valuelen):
        """One field (nghttp2 has checked it: lowercase name, no CR/LF/NUL, pseudo-fields
        first, no connection-specific fields, TE only "trailers"). The decoded list is
        capped at header_buffer_size, as HPACK lets a few bytes expand to much."""
        cdef const char *n = <const char *>name
        cdef bytes v
        self.header_bytes += namelen + valuelen + 32   # RFC 9113 §6.5.2's accounting
        if n[0] != b':':
            self.fields += 1   # as HTTP/1.1 counts field lines: pseudo-fields are its request line
        if self.refuse:
            return 0
        if self.header_bytes > self.worker.header_buffer_size or self.fields > self.worker.max_header_fields:
            self.refuse = 431
            return 0
        if n[0] == b':':
            v = PyBytes_FromStringAndSize(<const char *>value, valuelen)
            if namelen == 7 and memcmp(n, b":method", 7) == 0:
                self.method = v
            elif namelen == 5 and memcmp(n, b":path", 5) == 0:
                self.path = v
            elif namelen == 10 and memcmp(n, b":authority", 10) == 0:
                self.authority = v
            return 0
        if namelen == 6 and memcmp(n, b"cookie", 6) == 0:
            # RFC 9113 §8.2.3: crumbs join with "; " into one field for HTTP/1.1.
            v = PyBytes_FromStringAndSize(<const char *>value, valuelen)
            self.cookie = v if self.cookie is None else self.cookie + b"; " + v
            return 0
        if namelen == 4 and memcmp(n, b"host", 4) == 0:
            self.host = PyBytes_FromStringAndSize(<const char *>value, valuelen)
            return 0
        if namelen == 14 and memcmp(n, b"content-length", 14) == 0:
            self.has_length = True
        bytearray_extend(self.head, n, namelen)
        bytearray_extend(self.head, b": ", 2)
        bytearray_extend(self.head, <const char *>value, valuelen)
        bytearray_extend(self.head, b"\r\n", 2)
        return 0

    cdef void request_head_done(self):
        self.session.ready.append(self)

    cdef void forward(self):
        """After the read that brought the head: judge it as HTTP/1.1 and dispatch."""
        cdef Worker w = self.worker
        cdef MessageHead head
        cdef Exchange ex = Exchange(self.session.facts)
        cdef int status
        cdef bytes raw
        if self.responded:
            return   # answered while the head waited for its read to end (413 on the body)
        if self.session.conn.early and not self.refuse and self.method is not None and \
                not early_safe(self.method + b" ", len(self.method) + 1):
            if self.session.conn.sites.early_reject:
                w.count(N_REQUESTS)
                self.answer_error(425)   # RFC 8470 §5.2: never forwarded; the client sends it again
                return
            self.session.early_held.append(self)   # its body waits in self.body meanwhile
            w.count(N_EARLY_HELD)
            return
        self.exchange = ex
        ex.early = self.session.conn.early
        ex.started = w.now
        ex.log_method = self.method
        ex.log_target = self.path
        w.count(N_REQUESTS)
        w.count(N_H2_STREAMS)
        if not self.refuse:
            if self.method == b"CONNECT":
                self.refuse = 405   # no tunnels (yet)
            elif self.authority is not None and self.host is not None and self.host != self.authority:
                self.refuse = 400   # RFC 9113 §8.3.1
        if self.refuse:
            self.answer_error(self.refuse)
            return
        # A body without content-length goes to the backend chunked (RFC 9113 §8.2.2), even
        # when all of it came with the head: never unframed, or the backend would read the
        # body as the next request.
        framing = b"transfer-encoding: chunked\r\n" if not self.bodiless and not self.has_length else b""
        raw = (self.method + b" " + self.path + b" HTTP/1.1\r\nhost: " +
               (self.authority if self.authority is not None else self.host or b"") + b"\r\n" +
               bytes(self.head) +
               (b"cookie: " + self.cookie + b"\r\n" if self.cookie is not None else b"") +
               framing + b"\r\n")
        self.head = None
        status = parse_head(raw, len(raw), True, &head, w.slots, w.max_header_fields)
        if status == 0 and w.access_log is not None:
            ex.note_request(raw, &head, w.slots)
        if status == 0:
            status = ex.request(raw, &head, w.slots, w.writer, &w.request_limits, w.pathbuf)
        if status == 0 and ex.max_body and self.body_total > ex.max_body:
            status = 413   # the body that came with the head is already past the route's limit
        if status:
            self.answer_error(status)
            return
        self.routed()
        self.request_head = w.writer.take()
        self.deadline = w.now + (self.read_timeout if self.end_stream else w.body_timeout)
        self.request_done = False
        if ex.buffer_body:
            self.buffering = True
            if self.body is not None:   # what came with the head: its window opens again
                nghttp2_session_consume(self.session.ng, self.id, PyByteArray_GET_SIZE(self.body))
            if self.end_stream:
                self._dispatch_buffered()
            return
        self.dispatch(False)
        if self.backend is not None:
            self._send_body()

    cdef void request_data(self, const uint8_t *data, size_t n):
        cdef Worker w = self.worker
        cdef long long limit
        if self.responded and (self.exchange is None or self.exchange.state != X_FORWARDING):
            nghttp2_session_consume(self.session.ng, self.id, n)   # answered already: discard
            return
        self.deadline = w.now + w.body_timeout   # a long upload is not a stalled one
        if self.body is None:
            self.body = bytearray()
        bytearray_extend(self.body, <const char *>data, n)
        # the answering location's limit (nginx); before the head is routed (data of the same
        # read, bounded by the stream's window) forward() checks what came
        limit = self.exchange.max_body if self.exchange is not None else 0
        if limit and self.body_total + <long long>n > limit:
            self.body = None
            if self.exchange is None or self.exchange.state == X_FORWARDING:
                self.answer_error(413)
            else:
                nghttp2_submit_rst_stream(self.session.ng, NGHTTP2_FLAG_NONE, self.id, NGHTTP2_CANCEL)
            return
        self.body_total += n
        if self.buffering:
            nghttp2_session_consume(self.session.ng, self.id, n)   # bounded by client_max_body_size
        elif self.backend is not None and not self.backend_full:
            self._send_body()

    cdef void request_end(self):
        self.end_stream = True
        if self.buffering:
            self._dispatch_buffered()
            return
        if self.exchange is not None and self.exchange.state == X_FORWARDING and not self.backend_full:
            self.deadline = self.worker.now + self.read_timeout
        if self.backend is not None and not self.backend_full:
            self._send_body()

    cdef void _dispatch_buffered(self):
        """The whole body came (Exchange.buffer_body): head with its Content-Length, and body, in
        one write to the backend, as nginx sends a body it read whole."""
        cdef bytes data = bytes(self.body) if self.body is not None else b""
        self.buffering = False
        self.body = None
        self.request_head = self.exchange.buffered_head(self.request_head, len(data)) + data
        self.request_done = True
        self.deadline = self.worker.now + self.read_timeout
        self.dispatch(False)

    cdef void _send_body(self):
        """What came of the request body goes to the backend (chunked when the client gave no
        Content-Length); the client's window grows by as much."""
        cdef Py_ssize_t n = PyByteArray_GET_SIZE(self.body) if self.body is not None else 0
        cdef bytearray body
        if self.backend is None or self.exchange is None or self.session is None:
            return
        if n:
            body = self.body
            self.body = None
            if self.exchange.body_mode == BODY_CHUNKED:
                body = bytearray(b"%x\r\n" % n) + body
                body += b"\r\n"
            # Straight from the buffer (a plain backend's socket takes it without a bytes copy).
            self.backend.send_body(PyByteArray_AS_STRING(body), PyByteArray_GET_SIZE(body))
            nghttp2_session_consume(self.session.ng, self.id, n)
        if self.end_stream and not self.request_done:
            if self.exchange.body_mode == BODY_CHUNKED:
                self.backend.write(b"0\r\n\r\n")
            self.request_done = True

    cdef void _submit(self, int status, list headers, bytes body):
        """A final response: ``headers`` are (name, value) bytes with lowercase names; the
        body is ``body``, or (None) what the backend sends, pulled by nghttp2 from ``out``."""
        cdef nghttp2_nv *nva
        cdef nghttp2_data_provider prd
        cdef list fields = [(b":status", str(status).encode())] + headers
        cdef Py_ssize_t count = len(fields)
        cdef int r
        nva = <nghttp2_nv *>malloc(sizeof(nghttp2_nv) * count)
        if nva == NULL:
            raise MemoryError()
        try:
            _fill_nv(nva, fields)
            if body is not None:
                self.out = bytearray(body)
                self.out_eof = True
            prd.source.ptr = <void *>self
            prd.read_callback = _read_body
            has_body = body is not None and len(body) > 0 or \
                body is None and self.exchange.response_mode != BODY_NONE
            r = nghttp2_submit_response(self.session.ng, self.id, nva, count, &prd if has_body else NULL)
        finally:
            free(nva)   # nghttp2 copied the fields
        self.responded = True
        self.sent_status = status
        if r != 0:
            _log.debug("HTTP/2 stream %d: cannot respond: %s", self.id, nghttp2_strerror(r).decode())

    cdef int submit_trailers(self):
        """The backend's trailers as a HEADERS frame ending the stream (from _read_body, at
        the last DATA, which nghttp2 allows)."""
        cdef list fields = self.trailers
        cdef nghttp2_nv *nva = <nghttp2_nv *>malloc(sizeof(nghttp2_nv) * len(fields))
        cdef int r
        if nva == NULL:
            return -1
        try:
            _fill_nv(nva, fields)
            r = nghttp2_submit_trailer(self.session.ng, self.id, nva, len(fields))
        finally:
            free(nva)
            self.trailers = None
        return r

    cdef void closed(self, unsigned int error_code):
        """nghttp2 closed the stream: the response went out, or a reset (either side)."""
        if self.exchange is not None and self.worker.access_log is not None and self.session is not None:
            self.log(self.session.conn)
        if self.exchange is not None and self.exchange.state != X_DONE and self.exchange.state != X_REJECTED:
            self.exchange.advance(E_ABORT)
        self.drop_backend()
        self.session = None

    cdef void log(self, ClientConnection conn):
        """The access log's line: the status submitted, or 499 when the stream ended before one."""
        self.exchange.head_sent = self.wire_out - self.sent_body if self.wire_out > self.sent_body else 0
        self.worker.log_exchange(conn, self.exchange, self.sent_status or 499, self.wire_in, self.wire_out, True)

    cdef void expire(self):
        if self.exchange is None:
            nghttp2_submit_rst_stream(self.session.ng, NGHTTP2_FLAG_NONE, self.id, NGHTTP2_CANCEL)
        elif self.connecting:
            self.connect_timed_out()
        elif self.queued:
            self.queue_timed_out()
        elif self.buffering or self.exchange.state == X_FORWARDING and not self.end_stream and not self.backend_full:
            # the client stopped sending its body, streamed or read whole before it is sent
            # (client_body_timeout): reset, answering nothing, as nginx
            self.buffering = False
            self.body = None
            self.drop_backend()
            nghttp2_submit_rst_stream(self.session.ng, NGHTTP2_FLAG_NONE, self.id, NGHTTP2_CANCEL)
        elif self.exchange.state == X_FORWARDING and self.read_timed_out():
            return   # on to the next server (proxy_next_upstream timeout), with its own deadline
        elif self.exchange.state == X_FORWARDING:
            self.answer_error(504)
        else:
            # A response the client takes nothing of (a zero window), or a stalled backend.
            self.drop_backend()
            nghttp2_submit_rst_stream(self.session.ng, NGHTTP2_FLAG_NONE, self.id, NGHTTP2_CANCEL)
        self.deadline = 1e300

    # ---- Stream hooks ---------------------------------------------------------------
    cdef void backend_ready(self):
        if not self.end_stream:   # the body is the client's to send: client_body_timeout
            self.deadline = self.worker.now + self.worker.body_timeout
        if self.session is not None:
            self._send_body()
            self.session.flush_soon()

    cdef bint closing(self):
        return False

    cdef bint request_sent(self):
        return self.request_done

    cdef void backend_writable(self, bint writable):
        self.backend_full = not writable
        if not self.request_done:   # proxy_send_timeout, then client_body_timeout (or the read) again
            self.deadline = self.worker.now + (self.backend_send_timeout if not writable else
                                               self.worker.body_timeout if not self.end_stream else
                                               self.read_timeout)
        if writable and self.session is not None:
            self._send_body()
            self.session.flush_soon()

    cdef void response_interim(self, const char *p, Py_ssize_t n):
        cdef nghttp2_nv nv
        cdef bytes code = PyBytes_FromStringAndSize(p + 9, 3)
        if self.session is None:
            return
        nv.name = <uint8_t *>b":status"
        nv.namelen = 7
        nv.value = <uint8_t *>PyBytes_AS_STRING(code)
        nv.valuelen = 3
        nv.flags = NGHTTP2_NV_FLAG_NONE
        nghttp2_submit_headers(self.session.ng, NGHTTP2_FLAG_NONE, self.id, NULL, &nv, 1, NULL)
        self.session.flush_soon()

    cdef Py_ssize_t response_head(self, HeadWriter head, const char *body, Py_ssize_t k):
        """The head the Exchange rewrote, as HTTP/2 fields (names lowercased)."""
        cdef MessageHead parsed
        cdef HeaderSlot *slots = self.worker.slots
        cdef int j
        cdef list headers = []
        if self.session is None:
            return 0
        parse_head(head.buf, <int>head.len, False, &parsed, slots, MAX_HEADER_SLOTS)
        for j in range(parsed.nheaders):
            headers.append((PyBytes_FromStringAndSize(head.buf + slots[j].line_start,
                                                      slots[j].name_len).lower(),
                            PyBytes_FromStringAndSize(head.buf + slots[j].value_start, slots[j].value_len)))
        self._submit(parsed.status, headers, None)
        if k:
            bytearray_extend(self.out, body, k)
        self.session.flush_soon()
        self._await_client()
        return k

    cdef void response_data(self, const char *p, Py_ssize_t n):
        if self.session is None:
            return
        bytearray_extend(self.out, p, n)
        if PyByteArray_GET_SIZE(self.out) >= H2_OUT_MAX and self.backend is not None:
            self.backend.pause()   # resumed as nghttp2 pulls the body (_read_body)
        if self.deferred:
            self.deferred = False
            nghttp2_session_resume_data(self.session.ng, self.id)
        self.session.flush_soon()
        self._await_client()

    cdef void _await_client(self):
        """Body bytes the client's window (or socket) does not take yet: send_timeout runs
        until it takes some (nginx resets a stream blocked on flow control that long)."""
        if self.out is not None and PyByteArray_GET_SIZE(self.out):
            self.deadline = self.worker.now + self.worker.send_timeout

    cdef void response_trailers(self, bytes section):
        """Fields of the trailer section (the framer checked their grammar); the ones HTTP/2
        forbids anywhere, and framing fields, are not passed on (RFC 9110 §6.5.1)."""
        cdef list fields = []
        for line in section.split(b"\r\n"):
            name, sep, value = line.partition(b":")
            name = name.lower()
            if not sep or name in _NOT_TRAILERS:
                continue
            fields.append((name, value.strip(b" \t")))
        self.trailers = fields or None

    cdef void response_end(self, bint until_close):
        if self.session is None:
            return
        self.out_eof = True
        self.request_head = None
        if self.deferred:
            self.deferred = False
            nghttp2_session_resume_data(self.session.ng, self.id)
        self.session.flush_soon()
        self._await_client()

    cdef void answer_error(self, int status):
        cdef Exchange ex = self.exchange
        cdef list headers
        cdef bytes body
        if self.session is None:
            return
        self.buffering = False
        self.drop_backend()
        if ex is None:
            ex = self.exchange = Exchange(self.session.facts)
            ex.log_method, ex.log_target = self.method, self.path
        if ex.state == X_NEW or ex.state == X_FORWARDING:
            ex.reject(status)
        else:
            ex.advance(E_ABORT)
        if self.responded:
            nghttp2_submit_rst_stream(self.session.ng, NGHTTP2_FLAG_NONE, self.id, NGHTTP2_INTERNAL_ERROR)
        else:
            self.worker.count_status(status)
            status, fields, body = ex.own_answer(status)
            if status == 0:   # nginx's 444: nothing sent
                nghttp2_submit_rst_stream(self.session.ng, NGHTTP2_FLAG_NONE, self.id, NGHTTP2_INTERNAL_ERROR)
            else:
                headers = [(name.lower(), value) for name, value in fields]
                self._submit(status, headers, body if not ex.head_request else b"")
        self.session.flush_soon()

    cdef void reset(self):
        if self.session is not None:
            nghttp2_submit_rst_stream(self.session.ng, NGHTTP2_FLAG_NONE, self.id, NGHTTP2_INTERNAL_ERROR)
            self.session.flush_soon()
