# The access log's line writer: a request's fields, from the Exchange and its connection, as
# a JSON line or an nginx log_format template, into a per-worker buffer flushed in whole lines
# (fastterm/accesslog.py compiles the formats and opens the file).

cdef enum:
    # the variables of a template (fastterm/accesslog.py VARIABLES, in this order)
    LV_REMOTE_ADDR
    LV_REMOTE_USER
    LV_TIME_LOCAL
    LV_TIME_ISO8601
    LV_MSEC
    LV_REQUEST
    LV_REQUEST_METHOD
    LV_REQUEST_URI
    LV_SERVER_PROTOCOL
    LV_STATUS
    LV_BODY_BYTES_SENT
    LV_BYTES_SENT
    LV_REQUEST_LENGTH
    LV_REQUEST_TIME
    LV_HTTP_REFERER
    LV_HTTP_USER_AGENT
    LV_SSL_PROTOCOL
    LV_SSL_CIPHER
    LV_SSL_SERVER_NAME
    LV_SSL_SESSION_REUSED
    LV_SSL_ALPN_PROTOCOL
    LV_UPSTREAM_ADDR
    LV_UPSTREAM_RESPONSE_TIME
    LV_SSL_HANDSHAKE_TIME
    LV_SSL_EARLY_DATA
    LV_NONE             # a literal piece only
    LOG_BUFFER = 65536  # nginx buffer=64k: flushed past it, and once a second


cdef class AccessLog:
    cdef readonly str path
    cdef int fd
    cdef char *buf                  # lines not written yet (grows past LOG_BUFFER for one long line)
    cdef Py_ssize_t len
    cdef Py_ssize_t cap
    cdef list pieces                # a template: [(literal bytes, LV_*)]; None: JSON lines
    cdef long second                # the wall-clock second of the cached times
    cdef bytes iso_head             # b"2026-12-03T11:39:32" ...
    cdef bytes iso_tail             # ... b"+00:00"
    cdef bytes local                # nginx $time_local
    cdef bint failed                # the last write failed (said once)

    cdef int put(self, const char *p, Py_ssize_t n) except -1
    cdef int put_bytes(self, bytes b) except -1
    cdef int put_int(self, long long v) except -1
    cdef int put_seconds(self, double v) except -1
    cdef int put_json_text(self, bytes b) except -1
    cdef int put_escaped(self, bytes b) except -1
    cdef double clock(self) except -1
    cdef int line(self, ClientConnection conn, Exchange ex, int status, long long bytes_in, long long bytes_out,
                  bint http2, double elapsed, double upstream_time) except -1
    cdef int _json(self, bytes part, bytes method, bytes target, bytes protocol, int status, long long bytes_in,
                   long long bytes_out, long long head_sent, bytes upstream, double upstream_time, double elapsed,
                   bytes referer, bytes agent, double now, bint early=*) except -1
    cdef int _template(self, tuple part, bytes method, bytes target, bytes protocol, int status,
                       long long bytes_in, long long bytes_out, long long head_sent, bytes upstream,
                       double upstream_time, double elapsed, bytes referer, bytes agent, double now,
                       bint early=*) except -1
