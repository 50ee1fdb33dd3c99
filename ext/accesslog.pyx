# The access log's lines, written where an exchange ends (Worker.log_exchange). Measured with
# `fastterm bench --access-log` (keep-alive, 1 worker): building a dict per request and
# encoding it with msgspec in Python cost a quarter of the requests/s; here a line is C
# appends to one buffer, the connection's part (address, SNI, TLS) is made once per
# connection, and msgspec encodes only values that need JSON escaping.

import datetime

import msgspec

from libc.stdlib cimport realloc

cdef object _json_encode = msgspec.json.encode
cdef bytes _NULL = b"null"
cdef bytes _DASH = b"-"
cdef bytes _HTTP10 = b"HTTP/1.0"
cdef bytes _HTTP11 = b"HTTP/1.1"
cdef bytes _HTTP20 = b"HTTP/2.0"
cdef const char *_HEX = b"0123456789ABCDEF"


cdef inline bint _plain(bytes b):
    """Bytes that go into a line as they are: printable ASCII without '"' or backslash."""
    cdef const unsigned char *p = <const unsigned char *>PyBytes_AS_STRING(b)
    cdef Py_ssize_t i, n = PyBytes_GET_SIZE(b)
    for i in range(n):
        if p[i] < 0x20 or p[i] >= 0x7f or p[i] == 0x22 or p[i] == 0x5c:
            return False
    return True


cdef class AccessLog:
    """One worker's access log: lines in a buffer, one ``write(2)`` of whole lines per flush
    (past LOG_BUFFER, and once a second from the worker's sweep) on an O_APPEND descriptor, so
    workers sharing the file never interleave within a line. ``pieces``: a compiled nginx
    template ([(literal, LV_*)], fastterm/accesslog.py), or None for JSON lines."""

    def __cinit__(self, str path, list pieces=None):
        self.fd = -1
        self.second = -1
        self.path = path
        self.pieces = pieces
        self.cap = 2 * LOG_BUFFER
        self.buf = <char *>malloc(self.cap)
        if self.buf == NULL:
            raise MemoryError()
        self._open()

    def __dealloc__(self):
        free(self.buf)
        if self.fd >= 0:
            close(self.fd)

    def _open(self):
        self.fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o644)

    def reopen(self):
        """SIGUSR1 (logrotate moved the file): what is buffered goes to the old file, then the
        path is opened anew; if that fails the old file is kept."""
        old = self.fd
        self.flush()
        self._open()
        if old >= 0:
            close(old)

    def flush(self):
        """The buffered lines, written from the buffer itself (a short write goes on from where
        it stopped, so no line is cut). A failing file (disk full) loses them, said once until a
        write succeeds: the loop never waits on the log and its memory stays bounded."""
        cdef Py_ssize_t done = 0
        cdef ssize_t n
        if self.len == 0 or self.fd < 0:
            return
        while done < self.len:
            n = write(self.fd, self.buf + done, self.len - done)
            if n < 0 and errno == EINTR:
                continue
            if n <= 0:
                code = errno if n < 0 else 0
                self.len = 0
                if not self.failed:
                    self.failed = True
                    _log.error("access log %s: %s: lines lost", self.path,
                               os.strerror(code) if code else "nothing written")
                return
            done += n
        self.len = 0
        self.failed = False

    def close(self):
        self.flush()
        if self.fd >= 0:
            close(self.fd)
            self.fd = -1

    # ---- Appends --------------------------------------------------------------------
    cdef int put(self, const char *p, Py_ssize_t n) except -1:
        cdef char *grown
        if self.len + n > self.cap:
            grown = <char *>realloc(self.buf, self.len + n + LOG_BUFFER)
            if grown == NULL:
                raise MemoryError()
            self.buf = grown
            self.cap = self.len + n + LOG_BUFFER
        memcpy(self.buf + self.len, p, n)
        self.len += n
        return 0

    cdef int put_bytes(self, bytes b) except -1:
        return self.put(PyBytes_AS_STRING(b), PyBytes_GET_SIZE(b))

    cdef int put_int(self, long long v) except -1:
        """Decimal digits by hand: snprintf was a tenth of a line's cost."""
        cdef char text[24]
        cdef int i = 24
        cdef bint negative = v < 0
        cdef unsigned long long u = <unsigned long long>(-v) if negative else <unsigned long long>v
        while True:
            i -= 1
            text[i] = <char>(48 + u % 10)
            u //= 10
            if u == 0:
                break
        if negative:
            i -= 1
            text[i] = b'-'
        return self.put(text + i, 24 - i)

    cdef int put_seconds(self, double v) except -1:
        """Seconds with milliseconds, as nginx writes $request_time ("0.003")."""
        cdef long long ms = <long long>(v * 1000 + 0.5) if v > 0 else 0
        cdef char frac[4]
        self.put_int(ms // 1000)
        frac[0] = b'.'
        frac[1] = <char>(48 + ms // 100 % 10)
        frac[2] = <char>(48 + ms // 10 % 10)
        frac[3] = <char>(48 + ms % 10)
        return self.put(frac, 4)

    cdef int put_json_text(self, bytes b) except -1:
        """A JSON string of the request's bytes (an invalid UTF-8 byte as \\xHH), or null."""
        if b is None:
            return self.put_bytes(_NULL)
        if _plain(b):
            self.put(b'"', 1)
            self.put_bytes(b)
            return self.put(b'"', 1)
        return self.put_bytes(_json_encode(b.decode("utf-8", "backslashreplace")))

    cdef int put_escaped(self, bytes b) except -1:
        """nginx's escaping of a value (ngx_http_log_escape): '"', backslash and bytes outside
        0x20..0x7e as \\xHH; none or empty: "-"."""
        cdef const unsigned char *p
        cdef Py_ssize_t i
        cdef char esc[4]
        if b is None or PyBytes_GET_SIZE(b) == 0:
            return self.put(b"-", 1)
        if _plain(b):
            return self.put_bytes(b)
        p = <const unsigned char *>PyBytes_AS_STRING(b)
        esc[0] = b'\\'
        esc[1] = b'x'
        for i in range(PyBytes_GET_SIZE(b)):
            if p[i] < 0x20 or p[i] >= 0x7f or p[i] == 0x22 or p[i] == 0x5c:
                esc[2] = _HEX[p[i] >> 4]
                esc[3] = _HEX[p[i] & 15]
                self.put(esc, 4)
            else:
                self.put(<const char *>p + i, 1)
        return 0

    cdef double clock(self) except -1:
        """The wall clock now, and its formatted second, made once a second (as nginx caches it)."""
        cdef timespec ts
        cdef double now
        cdef long second
        clock_gettime(CLOCK_REALTIME, &ts)
        now = ts.tv_sec + ts.tv_nsec * 1e-9
        second = ts.tv_sec
        if second != self.second:
            self.second = second
            stamp = datetime.datetime.fromtimestamp(second).astimezone()
            iso = stamp.isoformat().encode()
            self.iso_head, self.iso_tail = iso[:19], iso[19:]
            self.local = stamp.strftime("%d/%b/%Y:%H:%M:%S %z").encode()
        return now

    # ---- Lines ----------------------------------------------------------------------
    cdef int line(self, ClientConnection conn, Exchange ex, int status, long long bytes_in, long long bytes_out,
                  bint http2, double elapsed, double upstream_time) except -1:
        """One request's line; ``upstream_time`` < 0: no backend was tried."""
        cdef double now = self.clock()
        cdef UpstreamPool pool = ex.pool
        cdef bytes upstream = None
        if pool is not None and ex.upstream_server >= 0:
            if pool.log_names is None:
                pool.log_names = [(f"[{h}]:{p}" if ":" in h else f"{h}:{p}").encode() for h, p in pool.servers]
            upstream = pool.log_names[ex.upstream_server]
        protocol = _HTTP20 if http2 else _HTTP10 if ex.http10 else _HTTP11
        if conn.log_cache is None:
            conn.log_cache = self._connection_part(*conn._log_tls(), conn.hs_time)
        if self.pieces is None:
            self._json(<bytes>conn.log_cache, ex.log_method, ex.log_target, protocol, status, bytes_in, bytes_out,
                       ex.head_sent, upstream, upstream_time, elapsed, ex.log_referer, ex.log_agent, now, ex.early)
        else:
            self._template(<tuple>conn.log_cache, ex.log_method, ex.log_target, protocol, status, bytes_in,
                           bytes_out, ex.head_sent, upstream, upstream_time, elapsed, ex.log_referer, ex.log_agent,
                           now, ex.early)
        if self.len >= LOG_BUFFER:
            self.flush()
        return 0

    def plain(self, str client, bytes method, bytes target, bint http10, int status, long long bytes_in,
              long long bytes_out, long long head_sent, bytes referer, bytes agent, double elapsed):
        """A request on a plain-HTTP listener (fastterm/redirect.py): no TLS, no upstream."""
        cdef double now = self.clock()
        part = self._connection_part(client, None, None, None, None, None, -1.0)
        protocol = _HTTP10 if http10 else _HTTP11
        if self.pieces is None:
            self._json(part, method, target, protocol, status, bytes_in, bytes_out, head_sent, None, -1.0,
                       elapsed, referer, agent, now)
        else:
            self._template(part, method, target, protocol, status, bytes_in, bytes_out, head_sent, None, -1.0,
                           elapsed, referer, agent, now)
        if self.len >= LOG_BUFFER:
            self.flush()

    def _connection_part(self, client, sni, version, cipher, reused, alpn, double hs_time):
        """What every line of one connection says of it, made once: JSON text, or a template's values."""
        if self.pieces is None:
            return b"".join([
                b'","client":', _json_encode(client), b',"sni":', _json_encode(sni),
                b',"tls_version":', _json_encode(version), b',"cipher":', _json_encode(cipher),
                b',"session_reused":', _json_encode(reused), b',"alpn":', _json_encode(alpn),
                b',"handshake_time":', b"%.3f" % hs_time if hs_time >= 0 else _NULL, b',"method":'])
        texts = [(x or "-").encode("ascii", "backslashreplace") for x in (client, sni, version, cipher, alpn)]
        return tuple(texts + [b"r" if reused else b"." if reused is not None else _DASH,   # nginx's $ssl_session_reused
                              b"%.3f" % hs_time if hs_time >= 0 else _DASH])

    cdef int _json(self, bytes part, bytes method, bytes target, bytes protocol, int status, long long bytes_in,
                   long long bytes_out, long long head_sent, bytes upstream, double upstream_time, double elapsed,
                   bytes referer, bytes agent, double now, bint early=False) except -1:
        cdef char ms[4]
        cdef int m = <int>(<long long>(now * 1000) % 1000)
        self.put(b'{"time":"', 9)
        self.put_bytes(self.iso_head)
        ms[0] = b'.'
        ms[1] = <char>(48 + m // 100)
        ms[2] = <char>(48 + m // 10 % 10)
        ms[3] = <char>(48 + m % 10)
        self.put(ms, 4)
        self.put_bytes(self.iso_tail)
        self.put_bytes(part)
        self.put_json_text(method)
        self.put(b',"path":', 8)
        self.put_json_text(target)
        self.put(b',"protocol":"', 13)
        self.put_bytes(protocol)
        self.put(b'","status":', 11)
        self.put_int(status)
        self.put(b',"bytes_in":', 12)
        self.put_int(bytes_in)
        self.put(b',"bytes_out":', 13)
        self.put_int(bytes_out)
        self.put(b',"body_bytes_out":', 18)
        self.put_int(bytes_out - head_sent if bytes_out > head_sent else 0)
        self.put(b',"upstream":', 12)
        if upstream is None:
            self.put_bytes(_NULL)
        else:
            self.put(b'"', 1)
            self.put_bytes(upstream)
            self.put(b'"', 1)
        self.put(b',"upstream_time":', 17)
        if upstream_time < 0:
            self.put_bytes(_NULL)
        else:
            self.put_seconds(upstream_time)
        self.put(b',"request_time":', 16)
        self.put_seconds(elapsed)
        if early:
            self.put(b',"early_data":true', 18)
        else:
            self.put(b',"early_data":false', 19)
        self.put(b',"referer":', 11)
        self.put_json_text(referer)
        self.put(b',"user_agent":', 14)
        self.put_json_text(agent)
        return self.put(b"}\n", 2)

    cdef int _template(self, tuple part, bytes method, bytes target, bytes protocol, int status,
                       long long bytes_in, long long bytes_out, long long head_sent, bytes upstream,
                       double upstream_time, double elapsed, bytes referer, bytes agent, double now,
                       bint early=False) except -1:
        cdef int var
        for literal, v in self.pieces:
            self.put_bytes(<bytes>literal)
            var = <int>v
            if var == LV_NONE:
                continue
            if var == LV_REMOTE_ADDR:
                self.put_bytes(<bytes>part[0])
            elif var == LV_REMOTE_USER:
                self.put(b"-", 1)
            elif var == LV_TIME_LOCAL:
                self.put_bytes(self.local)
            elif var == LV_TIME_ISO8601:
                self.put_bytes(self.iso_head)
                self.put_bytes(self.iso_tail)
            elif var == LV_MSEC:
                self.put_seconds(now)
            elif var == LV_REQUEST:
                if method is None:
                    self.put(b"-", 1)
                else:
                    self.put_escaped(method)
                    self.put(b" ", 1)
                    self.put_escaped(target)
                    self.put(b" ", 1)
                    self.put_bytes(protocol)
            elif var == LV_REQUEST_METHOD:
                self.put_escaped(method)
            elif var == LV_REQUEST_URI:
                self.put_escaped(target)
            elif var == LV_SERVER_PROTOCOL:
                self.put_bytes(protocol)
            elif var == LV_STATUS:
                self.put_int(status)
            elif var == LV_BODY_BYTES_SENT:
                self.put_int(bytes_out - head_sent if bytes_out > head_sent else 0)
            elif var == LV_BYTES_SENT:
                self.put_int(bytes_out)
            elif var == LV_REQUEST_LENGTH:
                self.put_int(bytes_in)
            elif var == LV_REQUEST_TIME:
                self.put_seconds(elapsed)
            elif var == LV_HTTP_REFERER:
                self.put_escaped(referer)
            elif var == LV_HTTP_USER_AGENT:
                self.put_escaped(agent)
            elif var == LV_SSL_PROTOCOL:
                self.put_bytes(<bytes>part[2])
            elif var == LV_SSL_CIPHER:
                self.put_bytes(<bytes>part[3])
            elif var == LV_SSL_SERVER_NAME:
                self.put_bytes(<bytes>part[1])
            elif var == LV_SSL_SESSION_REUSED:
                self.put_bytes(<bytes>part[5])
            elif var == LV_SSL_ALPN_PROTOCOL:
                self.put_bytes(<bytes>part[4])
            elif var == LV_UPSTREAM_ADDR:
                self.put_bytes(upstream if upstream is not None else _DASH)
            elif var == LV_UPSTREAM_RESPONSE_TIME:
                if upstream_time < 0:
                    self.put(b"-", 1)
                else:
                    self.put_seconds(upstream_time)
            elif var == LV_SSL_HANDSHAKE_TIME:
                self.put_bytes(<bytes>part[6])
            elif var == LV_SSL_EARLY_DATA:
                self.put(b"1" if early else b"-", 1)
        return self.put(b"\n", 1)
