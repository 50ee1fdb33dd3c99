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


cdef int raise_tls_error(str message) except -1:
    raise TLSError(message, drain_errors())


cdef str error_text():
    """The queue as one log line (hitch style), or '' when it is empty."""
    return "; ".join(drain_errors())
