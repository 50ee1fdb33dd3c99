# The PROXY protocol, haproxy's doc/proxy-protocol.txt. Receiving: ``proxy_parse`` is pure
# and nogil, fed whatever arrived so far (byte by byte too): it answers "need more", "bad",
# or the header's length and addresses; the transport (loop.pyx) reads the header off the
# socket before the TLS handshake starts. Sending: ``proxy_header`` builds the v1 line or
# the v2 block (with TLVs: ALPN, authority, SSL) once per backend connection, in Python:
# it is not per byte.

from libc.string cimport memcmp, memcpy, memset

cdef bytes _V2_SIG_B = b"\r\n\r\n\x00\r\nQUIT\n"   # spec 2.2: 12 bytes
cdef const unsigned char *_V2_SIG = <const unsigned char *>PyBytes_AS_STRING(_V2_SIG_B)
cdef enum:
    V2_SIG_LEN = 12
    PP2_TYPE_ALPN = 0x01
    PP2_TYPE_AUTHORITY = 0x02
    PP2_TYPE_SSL = 0x20
    PP2_SUBTYPE_SSL_VERSION = 0x21
    PP2_SUBTYPE_SSL_CN = 0x22
    PP2_SUBTYPE_SSL_CIPHER = 0x23
    PP2_SUBTYPE_SSL_SIG_ALG = 0x24
    PP2_SUBTYPE_SSL_KEY_ALG = 0x25
    PP2_CLIENT_SSL = 0x01
    PP2_CLIENT_CERT_CONN = 0x02
    PP2_CLIENT_CERT_SESS = 0x04


cdef inline bint _prefix_of(const unsigned char *p, Py_ssize_t n, const unsigned char *what,
                            Py_ssize_t wn) noexcept nogil:
    """``p[:n]`` and ``what`` agree on their common length."""
    return memcmp(p, what, n if n < wn else wn) == 0


cdef Py_ssize_t _v1_field(const unsigned char *p, Py_ssize_t i, Py_ssize_t end, char *buf,
                          Py_ssize_t size) noexcept nogil:
    """Copy the field at ``i`` (up to one space or ``end``) into ``buf`` NUL-terminated;
    the index after it, or -1 when it is empty or too long."""
    cdef Py_ssize_t k = 0
    while i < end and p[i] != b' ':
        if k + 1 >= size:
            return -1
        buf[k] = <char>p[i]
        k += 1
        i += 1
    if k == 0:
        return -1
    buf[k] = 0
    return i


cdef int _v1_port(const char *s) noexcept nogil:
    """A decimal port 0..65535 (1 to 5 digits), or -1."""
    cdef int v = 0, k = 0
    while s[k] != 0:
        if s[k] < b'0' or s[k] > b'9' or k >= 5:
            return -1
        v = v * 10 + (s[k] - 48)   # '0'
        k += 1
    return v if k > 0 and v <= 65535 else -1


cdef Py_ssize_t _parse_v1(const unsigned char *p, Py_ssize_t n, ProxyHeader *out) noexcept nogil:
    cdef Py_ssize_t end = -1, i, lim = n if n < PP_V1_MAX else PP_V1_MAX
    cdef char field[48]
    cdef int af
    for i in range(1, lim):
        if p[i] == b'\n':
            if p[i - 1] != b'\r':
                return PP_MALFORMED
            end = i - 1
            break
    if end < 0:
        return PP_TOO_LONG if n >= PP_V1_MAX else PP_NEED_MORE
    out.version = 1
    if end >= 13 and memcmp(p + 6, b"UNKNOWN", 7) == 0:
        out.command = PP_LOCAL   # spec 2.1: whatever follows UNKNOWN is ignored
        return end + 2
    if end < 11 or memcmp(p + 6, b"TCP", 3) != 0 or p[10] != b' ':
        return PP_MALFORMED
    if p[9] == b'4':
        af = AF_INET
    elif p[9] == b'6':
        af = AF_INET6
    else:
        return PP_MALFORMED
    out.command = PP_PROXY
    out.family = af
    i = _v1_field(p, 11, end, field, sizeof(field))
    if i < 0 or i >= end or inet_pton(af, field, out.src) != 1:
        return PP_MALFORMED
    i = _v1_field(p, i + 1, end, field, sizeof(field))
    if i < 0 or i >= end or inet_pton(af, field, out.dst) != 1:
        return PP_MALFORMED
    i = _v1_field(p, i + 1, end, field, sizeof(field))
    if i < 0 or i >= end:
        return PP_MALFORMED
    out.src_port = _v1_port(field)
    i = _v1_field(p, i + 1, end, field, sizeof(field))
    if i != end:
        return PP_MALFORMED
    out.dst_port = _v1_port(field)
    if out.src_port < 0 or out.dst_port < 0:
        return PP_MALFORMED
    return end + 2


cdef Py_ssize_t _parse_v2(const unsigned char *p, Py_ssize_t n, ProxyHeader *out) noexcept nogil:
    cdef Py_ssize_t total, addr_len
    cdef int cmd, fam
    if n >= 13 and (p[12] >> 4) != 2:
        return PP_MALFORMED
    if n >= 13 and (p[12] & 0x0F) > 1:
        return PP_MALFORMED
    if n < 16:
        return PP_NEED_MORE
    total = 16 + ((<Py_ssize_t>p[14] << 8) | p[15])
    if total > PP_V2_MAX:
        return PP_TOO_LONG
    if n < total:
        return PP_NEED_MORE
    cmd = p[12] & 0x0F
    fam = p[13]
    out.version = 2
    out.command = PP_LOCAL
    addr_len = 0
    if fam == 0x11:      # TCP over IPv4
        addr_len = 12
    elif fam == 0x21:    # TCP over IPv6
        addr_len = 36
    elif (fam >> 4) == 1:
        addr_len = 12    # UDP and the like: skipped, the real peer is kept
    elif (fam >> 4) == 2:
        addr_len = 36
    elif (fam >> 4) == 3:
        addr_len = 216
    if total - 16 < addr_len:
        return PP_MALFORMED
    if cmd == 1 and (fam == 0x11 or fam == 0x21):
        out.command = PP_PROXY
        if fam == 0x11:
            out.family = AF_INET
            memcpy(out.src, p + 16, 4)
            memcpy(out.dst, p + 20, 4)
            out.src_port = (p[24] << 8) | p[25]
            out.dst_port = (p[26] << 8) | p[27]
        else:
            out.family = AF_INET6
            memcpy(out.src, p + 16, 16)
            memcpy(out.dst, p + 32, 16)
            out.src_port = (p[48] << 8) | p[49]
            out.dst_port = (p[50] << 8) | p[51]
    out.tlv_offset = 16 + addr_len
    out.tlv_length = total - out.tlv_offset
    return total


cdef Py_ssize_t proxy_parse(const unsigned char *p, Py_ssize_t n, ProxyHeader *out) noexcept nogil:
    """The header at ``p[:n]``: its length once complete, PP_NEED_MORE while ``p`` is a
    prefix of one, else PP_MALFORMED or PP_TOO_LONG. v1 and v2 told apart by the first byte
    (spec 2.2: 'P' vs '\\r'), so a byte or two suffice to reject a client that sends TLS."""
    memset(out, 0, sizeof(ProxyHeader))
    if n <= 0:
        return PP_NEED_MORE
    if p[0] == b'P':
        if not _prefix_of(p, n, <const unsigned char *>b"PROXY ", 6):
            return PP_MALFORMED
        return _parse_v1(p, n, out) if n > 6 else PP_NEED_MORE
    if not _prefix_of(p, n, _V2_SIG, V2_SIG_LEN):
        return PP_MALFORMED
    return _parse_v2(p, n, out) if n > V2_SIG_LEN else PP_NEED_MORE


cdef str _address_text(int family, const unsigned char *a):
    cdef char text[INET6_ADDRSTRLEN + 1]
    if inet_ntop(family, a, text, sizeof(text)) == NULL:
        return ""
    return (<bytes>text).decode("ascii")


def _tlvs(bytes block):
    """TLVs of a v2 block as [(type, value)]; PP2_TYPE_SSL's value is (client, verify, [sub-TLVs])."""
    cdef Py_ssize_t i = 0, n = len(block), k
    found = []
    while i < n:
        if i + 3 > n:
            raise ValueError("truncated TLV")
        k = (block[i + 1] << 8) | block[i + 2]
        if i + 3 + k > n:
            raise ValueError("truncated TLV")
        value = block[i + 3:i + 3 + k]
        if block[i] == PP2_TYPE_SSL:
            if k < 5:
                raise ValueError("short PP2_TYPE_SSL")
            value = (value[0], int.from_bytes(value[1:5], "big"), _tlvs(bytes(value[5:])))
        found.append((block[i], value))
        i += 3 + k
    return found


def parse_proxy_header(data):
    """Python face of ``proxy_parse`` (tests, fuzzing): None while ``data`` is a prefix of a
    header, ValueError("malformed" | "too long"), else a dict: length, version, command
    ("PROXY" or "LOCAL"), and for PROXY the addresses; v2 TLVs too."""
    cdef ProxyHeader h
    cdef Py_ssize_t r
    cdef bytes raw = bytes(data)
    r = proxy_parse(<const unsigned char *>PyBytes_AS_STRING(raw), len(raw), &h)
    if r == PP_NEED_MORE:
        return None
    if r == PP_MALFORMED:
        raise ValueError("malformed")
    if r == PP_TOO_LONG:
        raise ValueError("too long")
    out = {"length": r, "version": h.version, "command": "PROXY" if h.command == PP_PROXY else "LOCAL"}
    if h.command == PP_PROXY:
        out.update(family=h.family, src=_address_text(h.family, h.src), src_port=h.src_port,
                   dst=_address_text(h.family, h.dst), dst_port=h.dst_port)
    if h.version == 2:
        out["tlvs"] = _tlvs(raw[h.tlv_offset:h.tlv_offset + h.tlv_length])
    return out


def _tlv(int kind, bytes value):
    return bytes((kind, len(value) >> 8, len(value) & 0xFF)) + value


def proxy_ssl_tlv(str version="", str cipher="", bint client_cert=False, bint cert_this_connection=True,
                  long verify=0, str sig_alg="", str key_alg=""):
    """PP2_TYPE_SSL (spec 2.2.5): PP2_CLIENT_SSL, the certificate flags when the client sent one
    (on this connection, or in the session it resumed), its verify result (0: verified or none
    asked), and the version and cipher (and, given, the signature and key algorithms)."""
    cdef int client = PP2_CLIENT_SSL
    if client_cert:
        client |= PP2_CLIENT_CERT_CONN if cert_this_connection else PP2_CLIENT_CERT_SESS
    sub = b""
    for kind, text in ((PP2_SUBTYPE_SSL_VERSION, version), (PP2_SUBTYPE_SSL_CIPHER, cipher),
                       (PP2_SUBTYPE_SSL_SIG_ALG, sig_alg), (PP2_SUBTYPE_SSL_KEY_ALG, key_alg)):
        if text:
            sub += _tlv(kind, text.encode("ascii"))
    return _tlv(PP2_TYPE_SSL, bytes((client,)) + (verify & 0xFFFFFFFF).to_bytes(4, "big") + sub)


cdef bytes proxy_header_for(int version, tuple facts):
    """The header of a backend connection for the client connection ``facts`` describes
    (ClientConnection._proxy_facts): its addresses, and for v2 the ALPN, SNI and SSL TLVs."""
    src, src_port, dst, dst_port, alpn, sni, tls_version, cipher, cert, cert_here, verify = facts
    if version == 1:
        return proxy_header(1, src, src_port, dst, dst_port)
    return proxy_header(2, src, src_port, dst, dst_port, alpn, sni,
                        proxy_ssl_tlv(tls_version, cipher, cert, cert_here, verify))


def proxy_header(int version, str src, int src_port, str dst, int dst_port, bytes alpn=b"",
                 bytes authority=b"", bytes ssl=b""):
    """The header a backend connection starts with (HAProxy send-proxy / send-proxy-v2):
    v1 "PROXY TCP4|TCP6 ..." or v2 PROXY over AF_INET/AF_INET6; v2 carries ALPN, the SNI
    (PP2_TYPE_AUTHORITY) and ``ssl`` (proxy_ssl_tlv). Addresses of two families (an IPv4
    client on an IPv6 listener) are sent as v1 UNKNOWN / v2 LOCAL: the spec has no mixed form."""
    cdef unsigned char a[16]
    cdef unsigned char b[16]
    six = ":" in src
    af = AF_INET6 if six else AF_INET
    same = (":" in dst) == six and inet_pton(af, src.encode("ascii"), a) == 1 and \
        inet_pton(af, dst.encode("ascii"), b) == 1
    if version == 1:
        if not same:
            return b"PROXY UNKNOWN\r\n"
        return b"PROXY %s %s %s %d %d\r\n" % (b"TCP6" if six else b"TCP4", src.encode("ascii"),
                                              dst.encode("ascii"), src_port, dst_port)
    if version != 2:
        raise ValueError(f"PROXY protocol version {version}")
    tlvs = (_tlv(PP2_TYPE_ALPN, alpn) if alpn else b"") + \
        (_tlv(PP2_TYPE_AUTHORITY, authority) if authority else b"") + ssl
    if not same:
        return _V2_SIG_B + bytes((0x20, 0x00)) + len(tlvs).to_bytes(2, "big") + tlvs
    n = 16 if six else 4
    body = (<char *>a)[:n] + (<char *>b)[:n] + src_port.to_bytes(2, "big") + dst_port.to_bytes(2, "big") + tlvs
    return _V2_SIG_B + bytes((0x21, 0x21 if six else 0x11)) + len(body).to_bytes(2, "big") + body
