# HTTP/1.1 framing for a proxy (RFC 9112), strict where leniency lets requests
# be smuggled: bare LF or CR, obs-fold, whitespace before the colon, NUL/CTL in values,
# Content-Length with Transfer-Encoding, differing Content-Length fields,
# Transfer-Encoding other than exactly "chunked", bad chunk sizes, chunk lines,
# extensions or trailers past their bounds -> 400. What is forwarded has one framing:
# a repeated identical Content-Length is marked dropped.
#
# Why not httptools here: llhttp reports neither where a field line starts and
# ends (we rewrite the block by copying kept lines) nor lets us stop between two
# pipelined requests, and its callbacks make a bytes object per header and per
# body chunk. tests/unit/test_http_framing.py runs httptools beside this parser
# as a reference on the messages both must accept.

from libc.stdlib cimport malloc, realloc, free
from libc.string cimport memcpy
from libc.stdint cimport uint64_t
from cpython.bytes cimport PyBytes_FromStringAndSize, PyBytes_AS_STRING, PyBytes_GET_SIZE
from cpython.bytearray cimport PyByteArray_AS_STRING, PyByteArray_GET_SIZE, PyByteArray_Resize

# tchar (RFC 9110 §5.6.2): ALPHA / DIGIT / "!#$%&'*+-.^_`|~"
cdef bint[256] _TCHAR
cdef bint[256] _NAME_CHAR     # tchar but "_": a field name's bytes until a CGI look-alike's "_"
cdef bint[256] _VCHAR_OR_WS   # field-value bytes: HTAB, SP, VCHAR, obs-text
cdef bint[256] _TARGET        # request-target bytes: VCHAR and obs-text, no SP/CTL
cdef char[256] _LOWER         # ASCII letters lowercased, every other byte as it is

cdef void _init_tables():
    cdef int c
    for c in range(256):
        _TCHAR[c] = (48 <= c <= 57 or 65 <= c <= 90 or 97 <= c <= 122
                     or c in b"!#$%&'*+-.^_`|~")
        _NAME_CHAR[c] = _TCHAR[c] and c != 95
        _VCHAR_OR_WS[c] = c == 9 or 32 <= c <= 126 or c >= 128
        _TARGET[c] = 33 <= c <= 126 or c >= 128
        _LOWER[c] = c + 32 if 65 <= c <= 90 else c

_init_tables()


cdef inline char _lower(char c) noexcept nogil:
    return _LOWER[<unsigned char>c]   # a load, where the range test was a compare and a branch


cdef inline bint _ieq(const char *p, int n, const char *lit, int litlen) noexcept nogil:
    """Case-insensitive compare of p[:n] with a lowercase literal."""
    cdef int i
    if n != litlen:
        return False
    for i in range(n):
        if _lower(p[i]) != lit[i]:
            return False
    return True


cdef int _header_kind(const char *name, int n) noexcept nogil:
    cdef char c = _lower(name[0])
    if c == b'h':
        if _ieq(name, n, "host", 4):
            return H_HOST
    elif c == b'c':
        if _ieq(name, n, "content-length", 14):
            return H_CONTENT_LENGTH
        if _ieq(name, n, "connection", 10):
            return H_CONNECTION
        if _ieq(name, n, "cf-connecting-ip", 16):
            return H_CLIENT_IDENTITY
    elif c == b't':
        if _ieq(name, n, "transfer-encoding", 17):
            return H_TRANSFER_ENCODING
        if _ieq(name, n, "te", 2):
            return H_TE
        if _ieq(name, n, "true-client-ip", 14):
            return H_CLIENT_IDENTITY
    elif c == b'k':
        if _ieq(name, n, "keep-alive", 10):
            return H_KEEP_ALIVE
    elif c == b'p':
        if _ieq(name, n, "proxy-connection", 16):
            return H_PROXY_CONNECTION
    elif c == b'u':
        if _ieq(name, n, "upgrade", 7):
            return H_UPGRADE
    elif c == b'x':
        if n > 12 and _ieq(name, 12, "x-forwarded-", 12):
            return _x_forwarded_kind(name + 12, n - 12)
        if _ieq(name, n, "x-real-ip", 9):
            return H_X_REAL_IP
        if _ieq(name, n, "x-client-ip", 11) or _ieq(name, n, "x-cluster-client-ip", 19) or \
                _ieq(name, n, "x-original-forwarded-for", 24) or _ieq(name, n, "x-url-scheme", 12):
            return H_CLIENT_IDENTITY
    elif c == b'f':
        if _ieq(name, n, "forwarded", 9):
            return H_FORWARDED
        if _ieq(name, n, "fastly-client-ip", 16) or _ieq(name, n, "front-end-https", 15):
            return H_CLIENT_IDENTITY
    elif c == b'e':
        if _ieq(name, n, "expect", 6):
            return H_EXPECT
        if _ieq(name, n, "early-data", 10):
            return H_EARLY_DATA
    elif c == b's':
        if _ieq(name, n, "strict-transport-security", 25):
            return H_HSTS
    return H_OTHER


# H_CLIENT_IDENTITY: what a proxy in front says about the client or the URL it used. Apps
# and frameworks believe these when told a proxy sets them: the client address
# (True-Client-IP: Akamai, Cloudflare; CF-Connecting-IP; Fastly-Client-IP; X-Client-IP and
# X-Cluster-Client-IP, read by Rails' remote_ip; X-Original-Forwarded-For: ingress-nginx),
# the host, port and prefix of generated URLs and redirects (X-Forwarded-Host/-Port/-Prefix/
# -Server: werkzeug ProxyFix, Django USE_X_FORWARDED_HOST, Apache mod_proxy: Host-header
# poisoning, cache poisoning), the scheme (X-Forwarded-Protocol/-Scheme/-Ssl, X-Url-Scheme,
# Front-End-Https: Rack, IIS). From an untrusted peer they are forged, so they are dropped;
# X-Forwarded-Proto and X-Real-IP we always set ourselves.
cdef int _x_forwarded_kind(const char *rest, int n) noexcept nogil:
    """The kind of "X-Forwarded-" + rest."""
    if _ieq(rest, n, "for", 3):
        return H_X_FORWARDED_FOR
    if _ieq(rest, n, "proto", 5):
        return H_X_FORWARDED_PROTO
    if _ieq(rest, n, "host", 4) or _ieq(rest, n, "port", 4) or _ieq(rest, n, "server", 6) or \
            _ieq(rest, n, "prefix", 6) or _ieq(rest, n, "protocol", 8) or _ieq(rest, n, "scheme", 6) or \
            _ieq(rest, n, "ssl", 3):
        return H_CLIENT_IDENTITY
    return H_OTHER


cdef int _lookalike_kind(const char *name, int n) noexcept nogil:
    """A name with "_" is never one of ours; CGI and WSGI turn "_" and "-" into the same
    variable, so one that reads as a forwarding header with "-" counts as client identity."""
    cdef char folded[32]
    cdef int i, kind
    if n > 32:
        return H_OTHER
    for i in range(n):
        folded[i] = b'-' if name[i] == b'_' else name[i]
    kind = _header_kind(folded, n)
    if kind == H_X_FORWARDED_FOR or kind == H_X_REAL_IP or kind == H_X_FORWARDED_PROTO or \
            kind == H_FORWARDED or kind == H_CLIENT_IDENTITY:
        return H_CLIENT_IDENTITY
    return H_OTHER


cdef Py_ssize_t find_head_end(const char *p, Py_ssize_t n, Py_ssize_t scanned) noexcept nogil:
    """Offset just past the CRLFCRLF ending the header block, or -1.

    ``scanned``: bytes already searched in an earlier call (the search restarts
    three bytes before, so a terminator split across reads is found)."""
    cdef Py_ssize_t start = scanned - 3 if scanned > 3 else 0
    cdef Py_ssize_t i = start + 3
    cdef const char *hit
    # memchr from LF to LF (a call per line) instead of memmem, whose search for a
    # 4-byte needle took ~1,000 instructions for a 250-byte response head.
    while i < n:
        hit = <const char *>memchr(p + i, b'\n', n - i)
        if hit == NULL:
            return -1
        i = hit - p
        if p[i - 1] == b'\r' and p[i - 2] == b'\n' and p[i - 3] == b'\r':
            return i + 1
        i += 1
    return -1


cdef extern from *:
    """
    /* The first flagged byte of a word a byte-wise mask marks (its high bits), in memory
       order; 0 where the byte order is not known, and the bytes are then checked one at a
       time from the word's first. */
    static inline int ft_first_flagged(unsigned long long mask) {
    #if defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__
        return __builtin_ctzll(mask) >> 3;
    #else
        (void)mask;
        return 0;
    #endif
    }
    """
    int ft_first_flagged(unsigned long long mask) noexcept nogil


cdef inline uint64_t _below_or_del(const char *p, uint64_t below) noexcept nogil:
    """The high bit of each of the 8 bytes at ``p`` that is below ``below`` (<= 0x80, as
    0x20 times 0x0101010101010101) or is DEL; obs-text (>= 0x80) is never marked. "Bit
    Twiddling Hacks" hasless() and haszero(x ^ 0x7f): exact up to the first marked byte,
    which is all the callers read (ft_first_flagged)."""
    cdef uint64_t x, y
    memcpy(&x, p, 8)
    y = x ^ 0x7f7f7f7f7f7f7f7fULL
    return (((x - below) & ~x) | ((y - 0x0101010101010101ULL) & ~y)) & 0x8080808080808080ULL


cdef int check_line_endings(const char *p, Py_ssize_t start, Py_ssize_t end) noexcept nogil:
    """400 when p[start:end] holds an LF without its CR or a CR without its LF, anywhere
    in the block: start line, field lines (a bare-LF block is refused at once instead of
    waiting for a CRLFCRLF that never comes). A CR that ends the range is judged with the
    next bytes (callers re-check from one byte before them)."""
    cdef const char *q = p + start
    cdef const char *stop = p + end
    while q < stop:
        q = <const char *>memchr(q, 10, stop - q)
        if q == NULL:
            break
        if q == p or (q - 1)[0] != 13:
            return 400
        q += 1
    q = p + start
    while q < stop:
        q = <const char *>memchr(q, 13, stop - q)
        if q == NULL:
            return 0
        if q + 1 < stop and (q + 1)[0] != 10:
            return 400
        q += 1
    return 0


cdef int check_line_sizes(const char *p, Py_ssize_t *line_start, Py_ssize_t end,
                          Py_ssize_t line_max) noexcept nogil:
    """nginx's large_client_header_buffers rule per line (ngx_http_alloc_large_header_buffer:
    a line must fit in one buffer of SIZE bytes): 414 when the request line, with its CRLF,
    is longer than ``line_max``, 400 for a field line, else 0. Scans the lines of
    ``p[*line_start:end]``, ``*line_start`` being where a line begins (offset 0: the request
    line); on return it is where the last, incomplete line began, so a head that arrives in
    pieces is scanned once. An incomplete line judged already too long counts too."""
    cdef const char *q = p + line_start[0]
    cdef const char *stop = p + end
    cdef const char *lf
    while q < stop:
        lf = <const char *>memchr(q, 10, stop - q)
        if lf == NULL:
            break
        if lf + 1 - q > line_max:
            return 414 if q == p else 400
        q = lf + 1
    line_start[0] = q - p
    if stop - q >= line_max:   # no LF yet: the line will be longer than line_max
        return 414 if q == p else 400
    return 0


cdef bint[256] _HOST_CHAR     # reg-name / IP-literal / port bytes

cdef void _init_host_table():
    cdef int c
    for c in range(256):
        _HOST_CHAR[c] = (48 <= c <= 57 or 65 <= c <= 90 or 97 <= c <= 122
                         or c in b"-._~!$&'()*+,;=:[]%")

_init_host_table()


cdef bint _valid_host(const char *p, int n) noexcept nogil:
    cdef int i
    for i in range(n):
        if not _HOST_CHAR[<unsigned char>p[i]]:
            return False
    return True


cdef bint _final_coding_chunked(const char *p, int n) noexcept nogil:
    """Is "chunked" the last coding of a Transfer-Encoding list ("gzip, chunked")?"""
    cdef int end = n, start
    while end > 0 and (p[end - 1] == b' ' or p[end - 1] == b'\t'):
        end -= 1
    start = end
    while start > 0 and p[start - 1] != b',' and p[start - 1] != b' ' and p[start - 1] != b'\t':
        start -= 1
    return _ieq(p + start, end - start, "chunked", 7)


cdef int _chunked_count(const char *p, int n) noexcept nogil:
    """How many codings of a Transfer-Encoding list are "chunked"."""
    cdef int i = 0, start, end, count = 0
    while i < n:
        while i < n and (p[i] == b' ' or p[i] == b'\t' or p[i] == b','):
            i += 1
        start = i
        while i < n and p[i] != b',':
            i += 1
        end = i
        while end > start and (p[end - 1] == b' ' or p[end - 1] == b'\t'):
            end -= 1
        if _ieq(p + start, end - start, "chunked", 7):
            count += 1
    return count


cdef int _parse_content_length(const char *p, int n, long long *out) noexcept nogil:
    cdef long long v = 0
    cdef int i
    if n == 0 or n > 18:
        return -1
    for i in range(n):
        if not 48 <= p[i] <= 57:
            return -1
        v = v * 10 + (p[i] - 48)
    out[0] = v
    return 0


cdef void _connection_tokens(const char *p, int start, int n, MessageHead *head,
                             HeaderSlot *slots, int nslots) noexcept nogil:
    """Connection: close / keep-alive / upgrade, and any other token names a
    hop-by-hop field to drop (RFC 9110 §7.6.1)."""
    cdef int i = start, end = start + n, tok, toklen, j
    while i < end:
        while i < end and (p[i] == b' ' or p[i] == b'\t' or p[i] == b','):
            i += 1
        tok = i
        while i < end and p[i] != b',' and p[i] != b' ' and p[i] != b'\t':
            i += 1
        toklen = i - tok
        if toklen == 0:
            continue
        if _ieq(p + tok, toklen, "close", 5):
            head.conn_close = True
        elif _ieq(p + tok, toklen, "keep-alive", 10):
            head.conn_keep_alive = True
        elif _ieq(p + tok, toklen, "upgrade", 7):
            head.conn_upgrade = True
        else:
            for j in range(nslots):
                if slots[j].name_len == toklen and slots[j].kind == H_OTHER:
                    if strncasecmp(p + slots[j].line_start, p + tok, toklen) == 0:
                        slots[j].drop = True


cdef int parse_head(const char *p, int n, bint is_request, MessageHead *head,
                    HeaderSlot *slots, int max_slots) noexcept nogil:
    """Parse a complete header block p[:n] (ending in CRLFCRLF) in place.

    Returns 0, or the status to answer with: 400 malformed, 431 too many fields
    (requests); for responses any error is 502."""
    cdef int i = 0, j, line, name_end, vs, ve, count = 0, bad
    cdef bint underscore
    cdef long long cl
    cdef uint64_t mask
    cdef int te_count = 0, chunked_codings = 0
    bad = 400 if is_request else 502
    head.is_request = is_request
    head.nheaders = 0
    head.content_length = -1
    head.chunked = head.te_present = head.cl_seen = False
    head.conn_close = head.conn_keep_alive = head.conn_upgrade = False
    head.expect_continue = False
    head.host_index = -1
    head.hsts_index = -1
    head.status = 0
    head.head_len = n
    head.error = 0

    # Every CR and LF is checked where the grammar meets it (request line, status line,
    # field lines), so no separate pass over the block is needed.
    if is_request:
        # method SP request-target SP HTTP-version CRLF
        while i < n and _TCHAR[<unsigned char>p[i]]:
            i += 1
        if i == 0 or i >= n or p[i] != b' ':
            head.error = bad
            return bad
        head.method_start = 0
        head.method_len = i
        i += 1
        head.target_start = i
        while i + 8 <= n:
            mask = _below_or_del(p + i, 0x2121212121212121ULL)   # SP, CTL or DEL ends the target
            if mask:
                i += ft_first_flagged(mask)
                break
            i += 8
        while i < n and _TARGET[<unsigned char>p[i]]:
            i += 1
        head.target_len = i - head.target_start
        if head.target_len == 0 or i >= n or p[i] != b' ':
            head.error = bad
            return bad
        i += 1
        if n - i < 10 or memcmp(p + i, b"HTTP/1.", 7) != 0 or p[i + 9] != b'\n' or p[i + 8] != b'\r':
            head.error = bad
            return bad
        if p[i + 7] == b'1':
            head.version = 11
        elif p[i + 7] == b'0':
            head.version = 10
        else:
            head.error = bad
            return bad
        i += 10
    else:
        # HTTP-version SP 3DIGIT SP [reason] CRLF
        if n < 14 or memcmp(p, b"HTTP/1.", 7) != 0 or p[8] != b' ':
            head.error = bad
            return bad
        head.version = 11 if p[7] == b'1' else 10 if p[7] == b'0' else 0
        if head.version == 0:
            head.error = bad
            return bad
        for j in range(9, 12):
            if not 48 <= p[j] <= 57:
                head.error = bad
                return bad
        head.status = (p[9] - 48) * 100 + (p[10] - 48) * 10 + (p[11] - 48)
        if head.status < 100 or (p[12] != b' ' and p[12] != b'\r'):
            head.error = bad
            return bad
        i = 12
        while i < n and p[i] != b'\r':
            if p[i] != b'\t' and (<unsigned char>p[i] < 32 or p[i] == 127):
                head.error = bad
                return bad
            i += 1
        if i + 1 >= n or p[i + 1] != b'\n':
            head.error = bad   # a bare CR after the reason phrase
            return bad
        i += 2
    head.line_end = i

    while i < n - 2:
        line = i
        if p[i] == b' ' or p[i] == b'\t':
            head.error = bad   # obs-fold (RFC 9112 §5.2): refused
            return bad
        underscore = False
        while i < n and _NAME_CHAR[<unsigned char>p[i]]:
            i += 1
        if i < n and p[i] == b'_':
            underscore = True
            while i < n and _TCHAR[<unsigned char>p[i]]:
                i += 1
        name_end = i
        if name_end == line or i >= n or p[i] != b':':
            head.error = bad   # empty name, bad byte in the name or whitespace before ':'
            return bad
        i += 1
        while i < n and (p[i] == b' ' or p[i] == b'\t'):
            i += 1
        vs = i
        while i < n:
            if i + 8 <= n:
                # eight bytes a step, to the first CTL or DEL (the CR ending the value)
                mask = _below_or_del(p + i, 0x2020202020202020ULL)
                if mask == 0:
                    i += 8
                    continue
                i += ft_first_flagged(mask)
            if p[i] == b'\r':
                break
            if not _VCHAR_OR_WS[<unsigned char>p[i]]:
                head.error = bad   # NUL, bare CR handled below, other CTL
                return bad
            i += 1
        if i + 1 >= n or p[i + 1] != b'\n':
            head.error = bad
            return bad
        ve = i
        while ve > vs and (p[ve - 1] == b' ' or p[ve - 1] == b'\t'):
            ve -= 1
        i += 2
        if count >= max_slots:
            head.error = 431 if is_request else 502
            return head.error
        slots[count].line_start = line
        slots[count].line_end = i
        slots[count].name_len = name_end - line
        slots[count].value_start = vs
        slots[count].value_len = ve - vs
        slots[count].underscore = underscore
        if underscore:
            slots[count].kind = _lookalike_kind(p + line, name_end - line)
        else:
            slots[count].kind = _header_kind(p + line, name_end - line)
        slots[count].drop = False
        count += 1
    head.nheaders = count

    for j in range(count):
        kind = slots[j].kind
        if kind == H_HOST:
            if head.host_index >= 0 or not _valid_host(p + slots[j].value_start, slots[j].value_len):
                head.error = bad   # two Host fields, or not a uri-host[:port] (RFC 9112 §3.2)
                return bad
            head.host_index = j
        elif kind == H_CONTENT_LENGTH:
            if _parse_content_length(p + slots[j].value_start, slots[j].value_len, &cl) < 0:
                head.error = bad
                return bad
            if head.content_length >= 0:
                if head.content_length != cl:
                    head.error = bad
                    return bad
                slots[j].drop = True   # RFC 9112 §6.3: identical fields forwarded as one
            head.content_length = cl
            head.cl_seen = True
        elif kind == H_TRANSFER_ENCODING:
            te_count += 1
            head.te_present = True
            if is_request:
                head.chunked = _ieq(p + slots[j].value_start, slots[j].value_len, "chunked", 7)
            else:
                head.chunked = _final_coding_chunked(p + slots[j].value_start, slots[j].value_len)
                chunked_codings += _chunked_count(p + slots[j].value_start, slots[j].value_len)
            if is_request and (not head.chunked or te_count > 1):
                head.error = bad
                return bad
        elif kind == H_CONNECTION or kind == H_PROXY_CONNECTION:
            _connection_tokens(p, slots[j].value_start, slots[j].value_len, head, slots, count)
        elif kind == H_EXPECT:
            if _ieq(p + slots[j].value_start, slots[j].value_len, "100-continue", 12):
                head.expect_continue = True
        elif kind == H_HSTS:
            head.hsts_index = j

    if is_request:
        if head.te_present and (head.content_length >= 0 or head.version == 10):
            head.error = bad
            return bad
        if head.version == 11 and head.host_index < 0:
            head.error = bad
            return bad
    else:
        if chunked_codings > 1:
            head.error = bad   # RFC 9112 §7.1: chunked is applied once; a client could unframe twice
            return bad
        if head.te_present:
            head.content_length = -1   # RFC 9112 §6.3: Transfer-Encoding overrides
    return 0


cdef int request_body_mode(MessageHead *head) noexcept nogil:
    if head.chunked:
        return BODY_CHUNKED
    if head.content_length > 0:
        return BODY_LENGTH
    return BODY_NONE


cdef int response_body_mode(MessageHead *head, bint head_request) noexcept nogil:
    """RFC 9112 §6.3 for a response."""
    if head_request or head.status < 200 or head.status == 204 or head.status == 304:
        return BODY_NONE
    if head.te_present:
        return BODY_CHUNKED if head.chunked else BODY_UNTIL_CLOSE
    if head.content_length >= 0:
        return BODY_LENGTH if head.content_length > 0 else BODY_NONE
    return BODY_UNTIL_CLOSE


cdef void framer_init(BodyFramer *f, int mode, long long length) noexcept nogil:
    f.mode = mode
    f.chunk_state = CH_SIZE
    f.remaining = length if mode == BODY_LENGTH else 0
    f.size_digits = 0
    f.line_len = 0
    f.ext_len = 0
    f.trailer_len = 0
    f.trailer_fields = 0
    f.total = 0
    f.stop_at_data = False
    f.data_start = 0
    f.data_len = 0
    f.trailer_n = 0
    f.done = mode == BODY_NONE
    f.error = False


cdef inline int _hexval(char c) noexcept nogil:
    if 48 <= c <= 57:
        return c - 48
    if 97 <= c <= 102:
        return c - 87
    if 65 <= c <= 70:
        return c - 55
    return -1


cdef bint _chunk_ext_step(BodyFramer *f, char c) noexcept nogil:
    """One byte of chunk extensions (RFC 9112 §7.1.1); False on a grammar error."""
    cdef int st = f.chunk_state
    cdef unsigned char u = <unsigned char>c
    cdef bint ws = c == b' ' or c == b'\t'
    if st == CH_EXT_QUOTED:
        if c == b'"':
            f.chunk_state = CH_EXT_QEND
        elif c == b'\\':
            f.chunk_state = CH_EXT_QUOTED_ESC
        elif not _VCHAR_OR_WS[u]:
            return False
        return True
    if st == CH_EXT_QUOTED_ESC:
        f.chunk_state = CH_EXT_QUOTED
        return _VCHAR_OR_WS[u]
    # CRLF may follow a name or a value directly, never whitespace (BWS only before ";").
    if c == b'\r' and (st == CH_EXT_NAME or st == CH_EXT_TOKEN or st == CH_EXT_QEND):
        f.chunk_state = CH_SIZE_LF
        return True
    if st == CH_EXT_PRE:
        if _TCHAR[u]:
            f.chunk_state = CH_EXT_NAME
            return True
        return ws
    if st == CH_EXT_VAL_PRE:
        if c == b'"':
            f.chunk_state = CH_EXT_QUOTED
            return True
        if _TCHAR[u]:
            f.chunk_state = CH_EXT_TOKEN
            return True
        return ws
    if c == b';':
        f.chunk_state = CH_EXT_PRE
        return True
    if st == CH_EXT_QEND:
        if ws:
            f.chunk_state = CH_EXT_AFTER_VAL
            return True
        return False
    if st == CH_EXT_NAME or st == CH_EXT_TOKEN:
        if _TCHAR[u]:
            return True
        if ws:
            f.chunk_state = CH_EXT_AFTER_NAME if st == CH_EXT_NAME else CH_EXT_AFTER_VAL
            return True
        if c == b'=' and st == CH_EXT_NAME:
            f.chunk_state = CH_EXT_VAL_PRE
            return True
        return False
    if st == CH_EXT_AFTER_NAME:
        if c == b'=':
            f.chunk_state = CH_EXT_VAL_PRE
            return True
        return ws
    # CH_EXT_AFTER_VAL
    return ws


cdef Py_ssize_t framer_feed(BodyFramer *f, const char *p, Py_ssize_t n) noexcept nogil:
    """How many of p[:n] belong to this body (forward them raw); sets f.done at
    its end and f.error (returning -1) on a malformed chunked encoding."""
    cdef Py_ssize_t i = 0, take
    cdef int h
    cdef char c
    f.data_len = 0
    f.trailer_n = 0
    if f.done:
        return 0
    if f.mode == BODY_UNTIL_CLOSE:
        f.total += n
        return n
    if f.mode == BODY_LENGTH:
        take = n if n < f.remaining else f.remaining
        f.remaining -= take
        f.total += take
        if f.remaining == 0:
            f.done = True
        return take
    # chunked (RFC 9112 §7.1)
    while i < n:
        st = f.chunk_state
        if st == CH_DATA:
            take = n - i
            if take > f.remaining:
                take = f.remaining
            f.data_start = i
            f.data_len = take
            i += take
            f.remaining -= take
            f.total += take
            if f.remaining == 0:
                f.chunk_state = CH_DATA_CR
            if f.stop_at_data:
                return i
            continue
        c = p[i]
        i += 1
        if st < CH_DATA:
            f.line_len += 1
            if f.line_len > CHUNK_LINE_MAX:
                f.error = True
                return -1
        elif st >= CH_TRAILER_START:
            f.trailer_len += 1
            if f.trailer_len > TRAILER_SECTION_MAX:
                f.error = True
                return -1
            if f.trailer_n == 0:
                f.trailer_at = i - 1
            f.trailer_n = i - f.trailer_at
        if st == CH_SIZE:
            h = _hexval(c)
            if h >= 0:
                if f.size_digits >= 15:
                    f.error = True
                    return -1
                f.remaining = f.remaining * 16 + h
                f.size_digits += 1
            elif f.size_digits == 0:
                f.error = True
                return -1
            elif c == b'\r':
                f.chunk_state = CH_SIZE_LF
            elif c == b';':
                f.chunk_state = CH_EXT_PRE
            elif c == b' ' or c == b'\t':
                f.chunk_state = CH_SIZE_WS
            else:
                f.error = True
                return -1
        elif st == CH_SIZE_WS:
            # BWS after the size: only more whitespace then ';' may follow, so
            # "5 x" or "0 5" can't be read as another size by a lenient backend.
            if c == b';':
                f.chunk_state = CH_EXT_PRE
            elif c != b' ' and c != b'\t':
                f.error = True
                return -1
        elif st >= CH_EXT_PRE and st <= CH_EXT_QEND:
            # chunk-ext = *( BWS ";" BWS name [ BWS "=" BWS ( token / quoted-string ) ] )
            if not _chunk_ext_step(f, c):
                f.error = True
                return -1
        elif st == CH_SIZE_LF:
            if c != b'\n':
                f.error = True
                return -1
            # Extensions are forwarded raw, never read: bounded per body, not by
            # client_max_body_size (payload only, as nginx counts it).
            f.ext_len += f.line_len - f.size_digits - 2
            if f.ext_len > CHUNK_EXT_MAX:
                f.error = True
                return -1
            f.line_len = 0
            f.size_digits = 0
            f.chunk_state = CH_DATA if f.remaining > 0 else CH_TRAILER_START
        elif st == CH_DATA_CR:
            if c != b'\r':
                f.error = True
                return -1
            f.chunk_state = CH_DATA_LF
        elif st == CH_DATA_LF:
            if c != b'\n':
                f.error = True
                return -1
            f.chunk_state = CH_SIZE
        elif st == CH_TRAILER_START:
            # Trailer fields obey the header-field grammar (RFC 9112 §7.1.2).
            if c == b'\r':
                f.chunk_state = CH_FINAL_LF
            elif _TCHAR[<unsigned char>c]:
                f.trailer_fields += 1
                if f.trailer_fields > TRAILER_FIELDS_MAX:
                    f.error = True
                    return -1
                f.chunk_state = CH_TRAILER_LINE
            else:
                f.error = True
                return -1
        elif st == CH_TRAILER_LINE:
            if c == b':':
                f.chunk_state = CH_TRAILER_VALUE
            elif not _TCHAR[<unsigned char>c]:
                f.error = True
                return -1
        elif st == CH_TRAILER_VALUE:
            if c == b'\r':
                f.chunk_state = CH_TRAILER_LF
            elif not _VCHAR_OR_WS[<unsigned char>c]:
                f.error = True
                return -1
        elif st == CH_TRAILER_LF:
            if c != b'\n':
                f.error = True
                return -1
            f.chunk_state = CH_TRAILER_START
        elif st == CH_FINAL_LF:
            if c != b'\n':
                f.error = True
                return -1
            f.chunk_state = CH_DONE
            f.done = True
            return i
    return i


cdef class HeadWriter:
    def __cinit__(self, Py_ssize_t capacity=32768):
        self.buf = <char *>malloc(capacity)
        if self.buf == NULL:
            raise MemoryError()
        self.cap = capacity
        self.len = 0

    def __dealloc__(self):
        free(self.buf)
        self.buf = NULL

    cdef int reserve(self, Py_ssize_t extra) except -1:
        cdef char *grown
        cdef Py_ssize_t cap = self.cap
        if self.len + extra <= cap:
            return 0
        while cap < self.len + extra:
            cap *= 2
        grown = <char *>realloc(self.buf, cap)
        if grown == NULL:
            raise MemoryError()
        self.buf = grown
        self.cap = cap
        return 0

    cdef inline int put(self, const char *p, Py_ssize_t n) except -1:
        if self.len + n > self.cap:
            self.reserve(n)
        memcpy(self.buf + self.len, p, n)
        self.len += n
        return 0

    cdef int put_bytes(self, bytes b) except -1:
        return self.put(PyBytes_AS_STRING(b), PyBytes_GET_SIZE(b))

    cdef bytes take(self):
        out = PyBytes_FromStringAndSize(self.buf, self.len)
        self.len = 0
        return out


cdef int bytearray_extend(bytearray buf, const char *p, Py_ssize_t n) except -1:
    """Append raw bytes to a bytearray in one copy (``buf += p[:n]`` makes a bytes first)."""
    cdef Py_ssize_t have = PyByteArray_GET_SIZE(buf)
    PyByteArray_Resize(buf, have + n)
    memcpy(PyByteArray_AS_STRING(buf) + have, p, n)
    return 0


cdef class HeadBuffer:
    def __cinit__(self):
        self.data = bytearray()
        self.scanned = 0

    cdef Py_ssize_t add(self, const char *p, Py_ssize_t n) except -2:
        """Append ``p[:n]``; the end of the header block in ``data``, or -1 while incomplete."""
        cdef Py_ssize_t have = PyByteArray_GET_SIZE(self.data)
        cdef Py_ssize_t end
        bytearray_extend(self.data, p, n)
        end = find_head_end(PyByteArray_AS_STRING(self.data), have + n, self.scanned)
        if end < 0:
            self.scanned = have + n
        return end

    cdef const char *ptr(self) noexcept:
        return PyByteArray_AS_STRING(self.data)

    cdef Py_ssize_t size(self) noexcept:
        return PyByteArray_GET_SIZE(self.data)


# ---- Python API for tests and the plain-HTTP redirect listener -------------

def parse_request_head(data, int max_headers=100):
    """Parse one complete request header block; returns a dict or raises ValueError(status)."""
    return _parse_py(data, True, max_headers)


def check_head_line_sizes(data, Py_ssize_t line_max):
    """``check_line_sizes`` over ``data`` from its start: 0, 400 or 414 (for tests)."""
    cdef bytes raw = bytes(data)
    cdef Py_ssize_t start = 0
    return check_line_sizes(PyBytes_AS_STRING(raw), &start, len(raw), line_max)


def parse_response_head(data):
    return _parse_py(data, False, MAX_HEADER_SLOTS)


cdef dict _parse_py(data, bint is_request, int max_headers):
    cdef bytes raw = bytes(data)
    cdef MessageHead head
    cdef HeaderSlot slots[MAX_HEADER_SLOTS]
    cdef const char *p = PyBytes_AS_STRING(raw)
    cdef Py_ssize_t end = find_head_end(p, len(raw), 0)
    if end < 0:
        if check_line_endings(p, 0, len(raw)):
            raise ValueError(400)
        raise ValueError("incomplete")
    if max_headers > MAX_HEADER_SLOTS:
        max_headers = MAX_HEADER_SLOTS
    if parse_head(p, end, is_request, &head, slots, max_headers):
        raise ValueError(head.error)
    headers = []
    dropped, identity, underscore = [], [], []
    for j in range(head.nheaders):
        s = slots[j]
        name = raw[s.line_start:s.line_start + s.name_len].decode("latin-1")
        headers.append((name, raw[s.value_start:s.value_start + s.value_len].decode("latin-1")))
        if s.drop:
            dropped.append(name)
        if s.kind == H_CLIENT_IDENTITY:
            identity.append(name)
        if s.underscore:
            underscore.append(name)
    out = {"version": "1.1" if head.version == 11 else "1.0", "headers": headers, "head_len": end,
           "dropped": dropped, "client_identity": identity, "underscore": underscore,
           "content_length": head.content_length if head.content_length >= 0 else None,
           "chunked": bool(head.chunked), "keep_alive_off": bool(head.conn_close),
           "expect_continue": bool(head.expect_continue)}
    if is_request:
        out["method"] = raw[head.method_start:head.method_start + head.method_len].decode("latin-1")
        out["target"] = raw[head.target_start:head.target_start + head.target_len].decode("latin-1")
        out["host"] = headers[head.host_index][1] if head.host_index >= 0 else None
    else:
        out["status"] = head.status
    return out


cdef class ChunkedDecoder:
    """Python face of the body framer for tests: feed bytes, learn how many belong to the body."""
    cdef BodyFramer f

    def __init__(self, str mode="chunked", long long length=0):
        framer_init(&self.f, BODY_CHUNKED if mode == "chunked" else BODY_LENGTH, length)

    def feed(self, data):
        cdef bytes raw = bytes(data)
        cdef Py_ssize_t n = framer_feed(&self.f, PyBytes_AS_STRING(raw), len(raw))
        if n < 0:
            raise ValueError(400)
        return n

    @property
    def done(self):
        return bool(self.f.done)
