# The HTTP/2 codec of a client connection (ALPN h2) on a libnghttp2 server session fed and
# drained through memory buffers. Each stream is an Exchange forwarded as HTTP/1.1 over the
# upstream pools, through its own H2Stream.

cdef class H2Session(Codec):
    cdef nghttp2_session *ng
    cdef dict streams               # stream id -> H2Stream: owns them while nghttp2 points at them
    cdef list ready                 # streams whose request head arrived in this read
    cdef list early_held            # streams in early data with unsafe methods: forwarded once
                                    # the handshake completes (RFC 8470 §3)
    cdef int opened                 # streams opened on this connection (a cap, then GOAWAY)
    cdef bint goaway                # GOAWAY submitted: no new streams, close when none are left
    cdef bint notice                # the shutdown notice went first; the final GOAWAY follows its PING ACK
    cdef bint flooded               # closed for flooding (counted once)
    cdef bint in_recv               # inside nghttp2_session_mem_recv: flush afterwards
    cdef bint flush_scheduled       # a flush waits for the end of this loop pass
    cdef str error                  # why the session failed (for the log)

    cdef void flush(self)
    cdef void flush_soon(self)
    cdef void shutdown(self, unsigned int error_code)
    cdef void _dispatch_ready(self)
    cdef void count_flood(self)


cdef class H2Stream(Stream):
    cdef H2Session session
    cdef int id
    cdef bytearray head             # the request head, as HTTP/1.1, built from the header fields
    cdef bytes method
    cdef bytes path
    cdef bytes authority
    cdef bytes host
    cdef bytes cookie
    cdef Py_ssize_t header_bytes    # decoded header list size so far (HPACK bombs stop here)
    cdef int fields
    cdef int refuse                 # a status to answer instead of forwarding (400, 431, 405)
    cdef bint end_stream            # the client sent END_STREAM
    cdef bint bodiless              # ... on its HEADERS: no body at all
    cdef bint request_done          # ... and the backend has the whole body
    cdef bytearray body             # request body waiting for the backend (bounded by the window)
    cdef bytearray out              # response body waiting for nghttp2 to pull it
    cdef bint out_eof
    cdef bint deferred              # nghttp2 waits on us for DATA (resume it)
    cdef bint responded             # a final response was submitted
    cdef bint backend_full
    cdef bint has_length            # the client sent content-length
    cdef bint buffering             # the body is read whole before dispatch (Exchange.buffer_body)
    cdef list trailers              # the backend's trailer fields, sent after the last DATA
    cdef long long body_total
    cdef int sent_status            # the final response's status, 0: none was submitted
    cdef long long sent_body        # DATA payload bytes nghttp2 took for the client
    cdef long long wire_in          # its frames' bytes, received (HEADERS, DATA) ...
    cdef long long wire_out         # ... and sent (counted only while an access log is on)

    cdef int on_header(self, const uint8_t *name, size_t namelen, const uint8_t *value, size_t valuelen)
    cdef void request_head_done(self)
    cdef void forward(self)
    cdef void request_data(self, const uint8_t *data, size_t n)
    cdef void request_end(self)
    cdef void _send_body(self)
    cdef void _dispatch_buffered(self)
    cdef void _await_client(self)
    cdef void _submit(self, int status, list headers, bytes body)
    cdef int submit_trailers(self)
    cdef void closed(self, unsigned int error_code)
    cdef void log(self, ClientConnection conn)
    cdef void expire(self)
