# Sans-IO HTTP/1.1 framing: header blocks parsed in place (offsets, no Python
# object per header), bodies framed by a byte-counting state machine whose
# output is the caller's own input slices (forwarded raw, never copied here).

cdef enum:
    MAX_HEADER_SLOTS = 256
    # Chunked framing has no size of its own (RFC 9112 §7.1): bounded here, or extension
    # bytes nobody reads stream past client_max_body_size (CVE-2024-22019).
    CHUNK_LINE_MAX = 4096           # one chunk-size line, extensions and CRLF included (Twisted's)
    CHUNK_EXT_MAX = 16384           # extension bytes in one body (Node's and hyper's 16 KiB)
    TRAILER_SECTION_MAX = 16384     # the trailer section, like the default header block
    TRAILER_FIELDS_MAX = 100

cdef enum HeaderKind:
    H_OTHER
    H_HOST
    H_CONTENT_LENGTH
    H_TRANSFER_ENCODING
    H_CONNECTION
    H_KEEP_ALIVE
    H_PROXY_CONNECTION
    H_TE
    H_UPGRADE
    H_X_FORWARDED_FOR
    H_FORWARDED
    H_X_REAL_IP
    H_X_FORWARDED_PROTO
    H_EXPECT
    H_HSTS
    H_EARLY_DATA
    H_CLIENT_IDENTITY   # what an edge proxy says about the client (X-Forwarded-Host, True-Client-IP ...)

ctypedef struct HeaderSlot:
    int line_start      # first byte of the field line
    int line_end        # just past its CRLF
    int name_len
    int value_start
    int value_len
    int kind
    bint drop           # not forwarded: named in Connection (hop-by-hop), or a repeated Content-Length
    bint underscore     # the name has "_": a CGI look-alike of the "-" name (nginx underscores_in_headers)

ctypedef struct MessageHead:
    bint is_request
    int method_start
    int method_len
    int target_start
    int target_len
    int version         # 10 or 11
    int status          # responses
    int line_end        # just past the start line's CRLF
    int head_len        # just past the blank line
    int nheaders
    long long content_length   # -1: absent
    bint chunked
    bint te_present
    bint cl_seen
    bint conn_close
    bint conn_keep_alive
    bint conn_upgrade
    bint expect_continue
    int host_index      # slot of Host, -1 when absent
    int hsts_index
    int error           # HTTP status to answer with when parsing failed (400, 431, 502)

cdef enum BodyMode:
    BODY_NONE
    BODY_LENGTH
    BODY_CHUNKED
    BODY_UNTIL_CLOSE

cdef enum ChunkState:
    CH_SIZE
    CH_SIZE_WS
    CH_EXT_PRE
    CH_EXT_NAME
    CH_EXT_AFTER_NAME
    CH_EXT_VAL_PRE
    CH_EXT_TOKEN
    CH_EXT_QUOTED
    CH_EXT_QUOTED_ESC
    CH_EXT_AFTER_VAL
    CH_EXT_QEND
    CH_SIZE_LF
    CH_DATA
    CH_DATA_CR
    CH_DATA_LF
    CH_TRAILER_START
    CH_TRAILER_LINE
    CH_TRAILER_VALUE
    CH_TRAILER_LF
    CH_FINAL_LF
    CH_DONE

ctypedef struct BodyFramer:
    int mode
    int chunk_state
    long long remaining     # BODY_LENGTH: bytes left; BODY_CHUNKED: bytes left in this chunk
    long long total         # payload bytes so far (chunk data only, without the framing)
    int size_digits
    int line_len            # bytes of this chunk-size line so far
    int ext_len             # chunk-extension bytes (with their BWS) in this body
    int trailer_len
    int trailer_fields
    bint done
    bint error
    bint stop_at_data       # return after each run of chunk data (de-chunking)
    Py_ssize_t data_start   # with stop_at_data: where that run began in the last input
    Py_ssize_t data_len
    Py_ssize_t trailer_at   # the trailer section's bytes in the last input (for de-chunking
    Py_ssize_t trailer_n    # towards HTTP/2, where trailers become a HEADERS frame)

cdef Py_ssize_t find_head_end(const char *p, Py_ssize_t n, Py_ssize_t scanned) noexcept nogil
cdef int check_line_endings(const char *p, Py_ssize_t start, Py_ssize_t end) noexcept nogil
cdef int check_line_sizes(const char *p, Py_ssize_t *line_start, Py_ssize_t end,
                          Py_ssize_t line_max) noexcept nogil
cdef int parse_head(const char *p, int n, bint is_request, MessageHead *head,
                    HeaderSlot *slots, int max_slots) noexcept nogil
cdef void framer_init(BodyFramer *f, int mode, long long length) noexcept nogil
cdef Py_ssize_t framer_feed(BodyFramer *f, const char *p, Py_ssize_t n) noexcept nogil
cdef int request_body_mode(MessageHead *head) noexcept nogil
cdef int response_body_mode(MessageHead *head, bint head_request) noexcept nogil


@cython.final   # direct calls, and put() inline: ~30 of them build each request and response head
cdef class HeadWriter:
    """A scratch buffer for one rewritten header block (one per worker, reused)."""
    cdef char *buf
    cdef Py_ssize_t cap
    cdef Py_ssize_t len

    cdef int reserve(self, Py_ssize_t extra) except -1
    cdef inline int put(self, const char *p, Py_ssize_t n) except -1
    cdef int put_bytes(self, bytes b) except -1
    cdef bytes take(self)


cdef int bytearray_extend(bytearray buf, const char *p, Py_ssize_t n) except -1


@cython.final   # direct calls (a final class's methods skip the vtable and may be inlined)
cdef class HeadBuffer:
    """A header block that arrives in pieces (a block read whole is parsed in place)."""
    cdef bytearray data
    cdef Py_ssize_t scanned

    cdef Py_ssize_t add(self, const char *p, Py_ssize_t n) except -2
    cdef const char *ptr(self) noexcept
    cdef Py_ssize_t size(self) noexcept
