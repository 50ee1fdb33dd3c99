# The HTTP/1.1 codec of a client connection: request heads cut from the plaintext,
# pipelining in order, keep-alive, bodies streamed, close rules. Each request is an
# Exchange, carried to the backend by an H1Stream; an idle connection keeps neither.

cdef enum H1State:
    H1_IDLE         # between requests (keep-alive) or before the first one
    H1_HEAD         # part of a request header block received
    H1_BODY         # request body streaming to the backend
    H1_RESPONSE     # request sent; response in progress
    H1_CLOSING      # the last response is out or going out; input is discarded
    H1_TUNNEL       # the backend answered 101: bytes both ways until close (WebSocket)


@cython.final   # direct calls to its own methods (the Codec ones stay virtual)
cdef class H1Session(Codec):
    cdef readonly H1Stream stream   # the current request's way to its backend; None while idle
    cdef int state
    cdef HeadBuffer head_buf        # only while a header block is incomplete
    cdef bytes held                 # input we could not process yet (pipelining, connect)
    cdef bint close_after           # close the connection after this response
    cdef bint last_by_client        # the request said it is the client's last (Connection: close, HTTP/1.0)
    cdef bint request_done          # the whole request body went to the backend
    cdef bint dispatch_pending      # head accepted; its head waits in the writer for this read's body
    cdef bytearray buffered         # a chunked body read whole before dispatch (Exchange.buffer_body)
    cdef bytes buffered_head        # ... and the head that waits for it
    cdef bint backend_full          # the backend's socket buffer is full: stop reading the client
    cdef int requests               # heads accepted on this connection (keepalive_requests)
    cdef double opened              # when the connection began (keepalive_time)
    cdef Py_ssize_t head_line_start # where the head's line being received began (header_line_size)
    cdef bint early_retry           # the backend said 425: the request goes again after the handshake
    cdef int head_in                # the current request head's bytes (the access log's bytes_in)
    cdef bint early_wait            # a request in early data with an unsafe method waits (in held)
                                    # for the handshake to complete (RFC 8470 §3)

    # Request flow
    cdef H1Stream _begin(self)
    cdef void _idle(self)
    cdef Py_ssize_t _feed_head(self, const char *p, Py_ssize_t n) except -2
    cdef int _check_head_size(self, const char *p, Py_ssize_t n) noexcept
    cdef int _on_head(self, const char *p, int head_len) except -2
    cdef Py_ssize_t _feed_body(self, const char *p, Py_ssize_t n) except -2
    cdef void _stash(self, const char *p, Py_ssize_t n)
    cdef void _resume(self)
    cdef void _redirect(self, Exchange ex, int status)
    cdef void _answer_error(self, int status)
    cdef void _refuse(self, int status)
    cdef void _response_end(self, bint until_close)
    cdef void _log(self, Exchange ex, int status, bytes answer)
    # Tunnel flow (after a 101)
    cdef void _tunnel(self)
    cdef void _tunnel_data(self, const char *p, Py_ssize_t n)


@cython.final   # direct calls to its own methods (the Stream ones stay virtual)
cdef class H1Stream(Stream):
    cdef H1Session session
    cdef BodyFramer req_body        # the request body's framing (here: an idle session keeps none)
