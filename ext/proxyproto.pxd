# The PROXY protocol (haproxy doc/proxy-protocol.txt), v1 text and v2 binary: a pure,
# byte-fed parser of the header a load balancer sends before the TLS ClientHello, and the
# encoder of the one we send to a backend before anything else.

cdef enum:
    PP_NEED_MORE = 0        # proxy_parse: a prefix of a header so far
    PP_MALFORMED = -1       # not a PROXY header, or a broken one: close
    PP_TOO_LONG = -2        # past PP_V1_MAX (v1) or PP_V2_MAX (v2): close
    PP_V1_MAX = 107         # the longest v1 line, CRLF included (spec 2.1)
    PP_V2_MAX = 4096        # our cap on a v2 header, TLVs included (the format allows 16 + 65535)
    PP_LOCAL = 0            # ProxyHeader.command: keep the real peer (v2 LOCAL, v1 UNKNOWN,
    PP_PROXY = 1            # a v2 family we do not relay); PP_PROXY: use the addresses

cdef struct ProxyHeader:
    int command
    int family              # AF_INET or AF_INET6 when PP_PROXY
    unsigned char src[16]
    unsigned char dst[16]
    int src_port
    int dst_port
    int version             # 1 or 2
    Py_ssize_t tlv_offset   # v2: where the TLVs start in the header, and their length
    Py_ssize_t tlv_length

cdef bytes proxy_header_for(int version, tuple facts)
cdef Py_ssize_t proxy_parse(const unsigned char *p, Py_ssize_t n, ProxyHeader *out) noexcept nogil
