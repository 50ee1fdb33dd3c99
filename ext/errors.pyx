# OpenSSL's error queue -> fastterm.errors exceptions, in one place (CPython _ssl.c style:
# read the queue right after the failing call, then leave it empty for the next one).

from fastterm.errors import TLSError, ConfigError


cdef tuple drain_errors():
    """Pop every entry of this thread's OpenSSL error queue as ERR_error_string_n text."""
    cdef unsigned long code
    cdef char buf[256]
    reasons = []
    while True:
        code = ERR_get_error()
        if code == 0:
            break
        ERR_error_string_n(code, buf, sizeof(buf))
        reasons.append(buf.decode("latin-1"))
    return tuple(reasons)


cdef int failure_kind(unsigned long code) noexcept:
    """Classify an OpenSSL error by library and reason code (stable across 3.x, unlike
    the text)."""
    cdef int reason
    if code == 0 or ERR_GET_LIB(code) != ERR_LIB_SSL:
        return TLS_FAIL_OTHER
    reason = ERR_GET_REASON(code)
    if reason == SSL_R_UNSUPPORTED_PROTOCOL or reason == SSL_R_WRONG_VERSION_NUMBER or \
            reason == SSL_R_VERSION_TOO_LOW:
        return TLS_FAIL_PROTOCOL
    if reason == SSL_R_NO_SHARED_CIPHER or reason == SSL_R_NO_SUITABLE_KEY_SHARE or \
            reason == SSL_R_NO_SUITABLE_SIGNATURE_ALGORITHM or reason == SSL_R_NO_SUITABLE_GROUPS or \
            reason == SSL_R_NO_SUITABLE_DIGEST_ALGORITHM:
        return TLS_FAIL_CIPHER
    if reason == SSL_R_NO_APPLICATION_PROTOCOL:
        return TLS_FAIL_ALPN
    if reason == SSL_R_HTTP_REQUEST or reason == SSL_R_HTTPS_PROXY_REQUEST:
        return TLS_FAIL_HTTP
    if reason == SSL_R_UNEXPECTED_EOF_WHILE_READING:
        return TLS_FAIL_EOF
    return TLS_FAIL_OTHER


cdef int raise_tls_error(str message) except -1:
    raise TLSError(message, drain_errors())


cdef str error_text():
    """The queue as one log line (hitch style), or '' when it is empty."""
    return "; ".join(drain_errors())
