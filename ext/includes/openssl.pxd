# libssl / libcrypto declarations only (like uvloop's includes/uv.pxd).
# Functions that are macros in one OpenSSL version and functions in another
# go through compat.h.

from libc.stdint cimport uint32_t

cdef extern from "compat.h":
    # Callback types hold the GIL: our callbacks touch Python objects.
    ctypedef struct SSL
    ctypedef int (*alpn_select_cb_func)(SSL *ssl, const unsigned char **out, unsigned char *outlen,
                                        const unsigned char *inp, unsigned int inlen, void *arg) noexcept
    ctypedef int (*servername_cb_func)(SSL *s, int *al, void *arg) noexcept

cdef extern from "compat.h" nogil:
    ctypedef struct SSL_CTX
    ctypedef struct SSL
    ctypedef struct SSL_METHOD
    ctypedef struct SSL_SESSION
    ctypedef struct SSL_CIPHER
    ctypedef struct BIO
    ctypedef struct BIO_METHOD
    ctypedef struct X509
    ctypedef struct EVP_PKEY

    # ---- errors -------------------------------------------------------
    unsigned long ERR_get_error()
    unsigned long ERR_peek_error()
    int ERR_GET_LIB(unsigned long e)
    int ERR_GET_REASON(unsigned long e)
    enum:
        ERR_LIB_SSL
        SSL_R_HTTPS_PROXY_REQUEST
        SSL_R_HTTP_REQUEST
        SSL_R_NO_APPLICATION_PROTOCOL
        SSL_R_NO_SHARED_CIPHER
        SSL_R_NO_SUITABLE_DIGEST_ALGORITHM
        SSL_R_NO_SUITABLE_GROUPS
        SSL_R_NO_SUITABLE_KEY_SHARE
        SSL_R_NO_SUITABLE_SIGNATURE_ALGORITHM
        SSL_R_UNEXPECTED_EOF_WHILE_READING
        SSL_R_UNSUPPORTED_PROTOCOL
        SSL_R_VERSION_TOO_LOW
        SSL_R_WRONG_VERSION_NUMBER
    void ERR_clear_error()
    void ERR_error_string_n(unsigned long e, char *buf, size_t len)

    # ---- versions and options ------------------------------------------
    enum:
        TLS1_VERSION
        TLS1_1_VERSION
        TLS1_2_VERSION
        TLS1_3_VERSION

    enum:
        SSL_OP_NO_COMPRESSION
        SSL_OP_NO_RENEGOTIATION
        SSL_OP_CIPHER_SERVER_PREFERENCE
        SSL_OP_PRIORITIZE_CHACHA
        SSL_OP_NO_TICKET
        SSL_OP_SINGLE_ECDH_USE
        SSL_OP_NO_ANTI_REPLAY
        SSL_OP_IGNORE_UNEXPECTED_EOF

    enum:
        SSL_MODE_RELEASE_BUFFERS
        SSL_MODE_ENABLE_PARTIAL_WRITE
        SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER

    enum:
        SSL_SESS_CACHE_OFF
        SSL_SESS_CACHE_SERVER
        SSL_SESS_CACHE_CLIENT

    enum:
        SSL_ERROR_NONE
        SSL_ERROR_SSL
        SSL_ERROR_WANT_READ
        SSL_ERROR_WANT_WRITE
        SSL_ERROR_SYSCALL
        SSL_ERROR_ZERO_RETURN
        SSL_ERROR_WANT_X509_LOOKUP

    enum:
        SSL_TLSEXT_ERR_OK
        SSL_TLSEXT_ERR_ALERT_FATAL
        SSL_TLSEXT_ERR_NOACK
        SSL_AD_UNRECOGNIZED_NAME
        SSL_AD_NO_APPLICATION_PROTOCOL
        OPENSSL_NPN_NEGOTIATED
        TLSEXT_NAMETYPE_host_name

    enum:
        SSL_RECEIVED_SHUTDOWN
        SSL_SENT_SHUTDOWN

    const SSL_METHOD *TLS_server_method()
    const SSL_METHOD *TLS_client_method()

    # ---- SSL_CTX ------------------------------------------------------
    SSL_CTX *SSL_CTX_new(const SSL_METHOD *meth)
    void SSL_CTX_free(SSL_CTX *ctx)
    int SSL_CTX_up_ref(SSL_CTX *ctx)
    long SSL_CTX_set_options(SSL_CTX *ctx, long op)
    long SSL_CTX_clear_options(SSL_CTX *ctx, long op)
    long SSL_CTX_set_mode(SSL_CTX *ctx, long mode)
    int SSL_CTX_set_min_proto_version(SSL_CTX *ctx, int version)
    int SSL_CTX_set_max_proto_version(SSL_CTX *ctx, int version)
    int SSL_CTX_set_cipher_list(SSL_CTX *ctx, const char *s)
    int SSL_CTX_set_ciphersuites(SSL_CTX *ctx, const char *s)
    int SSL_CTX_set1_groups_list(SSL_CTX *ctx, const char *s)
    int SSL_CTX_set0_tmp_dh_pkey(SSL_CTX *ctx, EVP_PKEY *dhpkey)   # takes the key on success only
    int SSL_CTX_use_certificate(SSL_CTX *ctx, X509 *x)
    int SSL_CTX_add1_chain_cert(SSL_CTX *ctx, X509 *x)
    int SSL_CTX_use_PrivateKey(SSL_CTX *ctx, EVP_PKEY *pkey)
    int SSL_CTX_check_private_key(const SSL_CTX *ctx)
    int SSL_CTX_set_current_cert(SSL_CTX *ctx, long op)
    long SSL_CTX_set_session_cache_mode(SSL_CTX *ctx, long mode)
    long SSL_CTX_sess_set_cache_size(SSL_CTX *ctx, long t)
    long SSL_CTX_set_timeout(SSL_CTX *ctx, long t)
    int SSL_CTX_set_session_id_context(SSL_CTX *ctx, const unsigned char *sid_ctx, unsigned int sid_ctx_len)
    int SSL_CTX_set_num_tickets(SSL_CTX *ctx, size_t num_tickets)
    void SSL_CTX_set_verify(SSL_CTX *ctx, int mode, void *cb)
    int SSL_CTX_load_verify_locations(SSL_CTX *ctx, const char *CAfile, const char *CApath)
    int SSL_CTX_set_alpn_protos(SSL_CTX *ctx, const unsigned char *protos, unsigned int protos_len)
    long SSL_CTX_sess_number(SSL_CTX *ctx)

    void SSL_CTX_set_alpn_select_cb(SSL_CTX *ctx, alpn_select_cb_func cb, void *arg)
    long SSL_CTX_set_tlsext_servername_callback(SSL_CTX *ctx, servername_cb_func cb)
    long SSL_CTX_set_tlsext_servername_arg(SSL_CTX *ctx, void *arg)
    int SSL_select_next_proto(unsigned char **out, unsigned char *outlen,
                              const unsigned char *server, unsigned int server_len,
                              const unsigned char *client, unsigned int client_len)

    # ---- SSL ----------------------------------------------------------
    SSL *SSL_new(SSL_CTX *ctx)
    void SSL_free(SSL *ssl)
    SSL_CTX *SSL_set_SSL_CTX(SSL *ssl, SSL_CTX *ctx)
    SSL_CTX *SSL_get_SSL_CTX(const SSL *ssl)
    void SSL_set_accept_state(SSL *ssl)
    void SSL_set_connect_state(SSL *ssl)
    int SSL_set_fd(SSL *ssl, int fd)
    void SSL_set_bio(SSL *ssl, BIO *rbio, BIO *wbio)
    int SSL_do_handshake(SSL *ssl)
    int SSL_read(SSL *ssl, void *buf, int num)
    int SSL_write(SSL *ssl, const void *buf, int num)
    int SSL_shutdown(SSL *ssl)
    int SSL_get_shutdown(const SSL *ssl)
    void SSL_set_shutdown(SSL *ssl, int mode)
    int SSL_get_error(const SSL *ssl, int ret)
    int SSL_pending(const SSL *ssl)
    int SSL_has_pending(const SSL *s)
    void SSL_set_read_ahead(SSL *s, int yes)
    void SSL_set_default_read_buffer_len(SSL *s, size_t len)
    int SSL_is_init_finished(const SSL *ssl)
    int SSL_session_reused(const SSL *ssl)
    const char *SSL_get_version(const SSL *ssl)
    int SSL_version(const SSL *ssl)
    const SSL_CIPHER *SSL_get_current_cipher(const SSL *ssl)
    const char *SSL_CIPHER_get_name(const SSL_CIPHER *c)
    void SSL_get0_alpn_selected(const SSL *ssl, const unsigned char **data, unsigned int *len)
    const char *SSL_get_servername(const SSL *ssl, const int type)
    int SSL_set_tlsext_host_name(SSL *ssl, const char *name)
    int SSL_set_alpn_protos(SSL *ssl, const unsigned char *protos, unsigned int protos_len)
    SSL_SESSION *SSL_get1_session(SSL *ssl)
    int SSL_set_session(SSL *ssl, SSL_SESSION *session)
    void SSL_SESSION_free(SSL_SESSION *session)
    int SSL_SESSION_up_ref(SSL_SESSION *session)
    int SSL_set_ex_data(SSL *ssl, int idx, void *data)
    int SSL_CTX_set_ex_data(SSL_CTX *ctx, int idx, void *data)
    void *SSL_CTX_get_ex_data(const SSL_CTX *ctx, int idx)
    void *SSL_get_ex_data(const SSL *ssl, int idx)
    X509 *SSL_get_certificate(const SSL *ssl)
    X509 *SSL_get0_peer_certificate(const SSL *ssl)
    int SSL_set1_host(SSL *s, const char *hostname)
    void SSL_set_verify(SSL *s, int mode, void *cb)
    long SSL_get_verify_result(const SSL *ssl)
    int SSL_get_peer_signature_type_nid(const SSL *s, int *pnid)

    # ---- BIO ----------------------------------------------------------
    const BIO_METHOD *BIO_s_mem()
    BIO *BIO_new(const BIO_METHOD *type)
    BIO *BIO_new_mem_buf(const void *buf, int len)
    int BIO_free(BIO *a)
    int BIO_read(BIO *b, void *data, int dlen)
    int BIO_write(BIO *b, const void *data, int dlen)
    size_t BIO_ctrl_pending(BIO *b)
    long BIO_set_mem_eof_return(BIO *b, int v)

    # ---- PEM / X509 / keys --------------------------------------------
    X509 *PEM_read_bio_X509(BIO *bp, X509 **x, void *cb, void *u)
    X509 *PEM_read_bio_X509_AUX(BIO *bp, X509 **x, void *cb, void *u)
    EVP_PKEY *PEM_read_bio_PrivateKey(BIO *bp, EVP_PKEY **x, void *cb, void *u)
    EVP_PKEY *PEM_read_bio_Parameters(BIO *bp, EVP_PKEY **x)
    int EVP_PKEY_is_a(const EVP_PKEY *pkey, const char *name)
    void X509_free(X509 *a)
    cdef struct stack_st_X509
    stack_st_X509 *sk_X509_new_null()
    int sk_X509_push(stack_st_X509 *sk, X509 *x)
    void sk_X509_pop_free(stack_st_X509 *sk, void (*free_func)(X509 *))
    int SSL_use_cert_and_key(SSL *ssl, X509 *x509, EVP_PKEY *privatekey, stack_st_X509 *chain, int override)
    int SSL_CTX_use_cert_and_key(SSL_CTX *ctx, X509 *x509, EVP_PKEY *privatekey, stack_st_X509 *chain,
                                 int override)
    void SSL_certs_clear(SSL *s)
    int X509_check_private_key(const X509 *x, const EVP_PKEY *k)
    void EVP_PKEY_free(EVP_PKEY *pkey)
    int EVP_PKEY_get_base_id(const EVP_PKEY *pkey)
    enum:
        EVP_PKEY_RSA
        EVP_PKEY_EC
        EVP_PKEY_ED25519
        NID_undef

    enum:
        SSL_VERIFY_NONE
        SSL_VERIFY_PEER

    int OBJ_sn2nid(const char *s)
    const char *OBJ_nid2sn(int n)


# ---- sessions and tickets (shared cache, shared ticket keys) ---------------
cdef extern from "compat.h":
    ctypedef struct EVP_CIPHER_CTX
    ctypedef struct EVP_MAC_CTX
    ctypedef int (*new_session_cb_func)(SSL *ssl, SSL_SESSION *sess) noexcept
    ctypedef void (*remove_session_cb_func)(SSL_CTX *ctx, SSL_SESSION *sess) noexcept
    ctypedef SSL_SESSION *(*get_session_cb_func)(SSL *ssl, const unsigned char *data, int len,
                                                 int *copy) noexcept
    ctypedef int (*ticket_key_cb_func)(SSL *s, unsigned char *key_name, unsigned char *iv,
                                       EVP_CIPHER_CTX *ctx, EVP_MAC_CTX *hctx, int enc) noexcept

cdef extern from "compat.h" nogil:
    enum:
        SSL_SESS_CACHE_NO_INTERNAL
        SSL_SESS_CACHE_NO_AUTO_CLEAR
        EVP_MAX_IV_LENGTH
    void SSL_CTX_sess_set_new_cb(SSL_CTX *ctx, new_session_cb_func cb)
    void SSL_CTX_sess_set_remove_cb(SSL_CTX *ctx, remove_session_cb_func cb)
    void SSL_CTX_sess_set_get_cb(SSL_CTX *ctx, get_session_cb_func cb)
    int SSL_CTX_set_tlsext_ticket_key_evp_cb(SSL_CTX *ctx, ticket_key_cb_func cb)
    const unsigned char *SSL_SESSION_get_id(const SSL_SESSION *s, unsigned int *len)
    long SSL_SESSION_get_time(const SSL_SESSION *s)
    long SSL_SESSION_get_timeout(const SSL_SESSION *s)
    int i2d_SSL_SESSION(SSL_SESSION *inp, unsigned char **pp)
    SSL_SESSION *d2i_SSL_SESSION(SSL_SESSION **a, const unsigned char **pp, long length)
    int RAND_bytes(unsigned char *buf, int num)


# ---- server blocks: the ClientHello callback and per-connection settings ---
cdef extern from "compat.h":
    ctypedef int (*client_hello_cb_func)(SSL *s, int *al, void *arg) noexcept

cdef extern from "compat.h" nogil:
    enum:
        SSL_CLIENT_HELLO_SUCCESS
        SSL_CLIENT_HELLO_ERROR
        SSL_AD_INTERNAL_ERROR
        TLSEXT_TYPE_server_name
        TLSEXT_TYPE_application_layer_protocol_negotiation
        SSL_MAX_SID_CTX_LENGTH
    void SSL_CTX_set_client_hello_cb(SSL_CTX *ctx, client_hello_cb_func cb, void *arg)
    int SSL_client_hello_get0_ext(SSL *s, unsigned int type, const unsigned char **out, size_t *outlen)
    unsigned long long SSL_CTX_get_options(const SSL_CTX *ctx)
    unsigned long long SSL_get_options(const SSL *s)
    unsigned long long SSL_set_options(SSL *s, unsigned long long op)
    unsigned long long SSL_clear_options(SSL *s, unsigned long long op)
    int SSL_set_min_proto_version(SSL *s, int version)
    int SSL_set_max_proto_version(SSL *s, int version)
    int SSL_set1_groups_list(SSL *s, const char *groups)
    SSL_SESSION *SSL_get_session(const SSL *ssl)
    long SSL_SESSION_set_timeout(SSL_SESSION *s, long t)


# ---- OCSP stapling: verifying a response (master) and stapling it (status callback) ---
cdef extern from "compat.h":
    ctypedef int (*status_cb_func)(SSL *s, void *arg) noexcept

cdef extern from "compat.h" nogil:
    ctypedef struct OCSP_RESPONSE
    ctypedef struct OCSP_BASICRESP
    ctypedef struct OCSP_CERTID
    ctypedef struct X509_STORE
    ctypedef struct EVP_MD
    ctypedef struct ASN1_GENERALIZEDTIME
    struct stack_st_X509                     # STACK_OF(X509)
    enum:
        OCSP_RESPONSE_STATUS_SUCCESSFUL
        V_OCSP_CERTSTATUS_GOOD
        V_OCSP_CERTSTATUS_REVOKED
        V_OCSP_CERTSTATUS_UNKNOWN
        OCSP_NOVERIFY
        X509_V_FLAG_PARTIAL_CHAIN
    OCSP_RESPONSE *d2i_OCSP_RESPONSE(OCSP_RESPONSE **a, const unsigned char **pp, long length)
    void OCSP_RESPONSE_free(OCSP_RESPONSE *r)
    int OCSP_response_status(OCSP_RESPONSE *resp)
    OCSP_BASICRESP *OCSP_response_get1_basic(OCSP_RESPONSE *resp)
    void OCSP_BASICRESP_free(OCSP_BASICRESP *b)
    int OCSP_basic_verify(OCSP_BASICRESP *bs, stack_st_X509 *certs, X509_STORE *st, unsigned long flags)
    OCSP_CERTID *OCSP_cert_to_id(const EVP_MD *dgst, const X509 *subject, const X509 *issuer)
    void OCSP_CERTID_free(OCSP_CERTID *id)
    int OCSP_resp_find_status(OCSP_BASICRESP *bs, OCSP_CERTID *id, int *status, int *reason,
                              ASN1_GENERALIZEDTIME **revtime, ASN1_GENERALIZEDTIME **thisupd,
                              ASN1_GENERALIZEDTIME **nextupd)
    int OCSP_check_validity(ASN1_GENERALIZEDTIME *thisupd, ASN1_GENERALIZEDTIME *nextupd, long sec, long maxsec)
    long long ft_asn1_time_unix(const ASN1_GENERALIZEDTIME *t)    # compat.h; 0: none or bad
    X509 *d2i_X509(X509 **a, const unsigned char **pp, long length)
    X509_STORE *X509_STORE_new()
    void X509_STORE_free(X509_STORE *st)
    int X509_STORE_add_cert(X509_STORE *st, X509 *x)
    int X509_STORE_set_flags(X509_STORE *st, unsigned long flags)
    stack_st_X509 *sk_X509_new_null()
    int sk_X509_push(stack_st_X509 *sk, X509 *x)
    void sk_X509_free(stack_st_X509 *sk)
    long SSL_CTX_set_tlsext_status_cb(SSL_CTX *ctx, status_cb_func cb)
    long SSL_CTX_set_tlsext_status_arg(SSL_CTX *ctx, void *arg)
    long SSL_set_tlsext_status_ocsp_resp(SSL *s, unsigned char *resp, long len)   # takes resp
    void *OPENSSL_malloc(size_t num)
# ---- client mode: verifying a backend, resuming its sessions --------------
cdef extern from "compat.h" nogil:
    ctypedef struct X509_VERIFY_PARAM
    enum:
        X509_V_OK
    const char *X509_verify_cert_error_string(long n)
    int X509_VERIFY_PARAM_set1_ip_asc(X509_VERIFY_PARAM *param, const char *ipasc)

cdef extern from "compat.h" nogil:
    int SSL_CTX_set_default_verify_paths(SSL_CTX *ctx)
    void SSL_CTX_set_verify_depth(SSL_CTX *ctx, int depth)
    X509_VERIFY_PARAM *SSL_get0_param(SSL *ssl)
    int SSL_SESSION_is_resumable(const SSL_SESSION *s)


# ---- TLS 1.3 early data (0-RTT) and ticket app data ------------------------
cdef extern from "compat.h":
    ctypedef int (*allow_early_data_cb_func)(SSL *s, void *arg) noexcept
    ctypedef int SSL_TICKET_STATUS
    ctypedef int SSL_TICKET_RETURN
    ctypedef int (*gen_ticket_cb_func)(SSL *s, void *arg) noexcept
    ctypedef SSL_TICKET_RETURN (*dec_ticket_cb_func)(SSL *s, SSL_SESSION *ss, const unsigned char *keyname,
                                                     size_t keyname_length, SSL_TICKET_STATUS status,
                                                     void *arg) noexcept

cdef extern from "compat.h" nogil:
    enum:
        SSL_READ_EARLY_DATA_ERROR
        SSL_READ_EARLY_DATA_SUCCESS
        SSL_READ_EARLY_DATA_FINISH
        SSL_EARLY_DATA_NOT_SENT
        SSL_EARLY_DATA_REJECTED
        SSL_EARLY_DATA_ACCEPTED
        SSL_TICKET_FATAL_ERR_MALLOC
        SSL_TICKET_FATAL_ERR_OTHER
        SSL_TICKET_NONE
        SSL_TICKET_EMPTY
        SSL_TICKET_NO_DECRYPT
        SSL_TICKET_SUCCESS
        SSL_TICKET_SUCCESS_RENEW
        SSL_TICKET_RETURN_ABORT
        SSL_TICKET_RETURN_IGNORE
        SSL_TICKET_RETURN_IGNORE_RENEW
        SSL_TICKET_RETURN_USE
        SSL_TICKET_RETURN_USE_RENEW
    int SSL_CTX_set_max_early_data(SSL_CTX *ctx, uint32_t max_early_data)
    uint32_t SSL_get_max_early_data(const SSL *s)
    int SSL_CTX_set_recv_max_early_data(SSL_CTX *ctx, uint32_t recv_max_early_data)
    int SSL_read_early_data(SSL *s, void *buf, size_t num, size_t *readbytes)
    int SSL_write_early_data(SSL *s, const void *buf, size_t num, size_t *written)
    int SSL_get_early_data_status(const SSL *s)
    void SSL_CTX_set_allow_early_data_cb(SSL_CTX *ctx, allow_early_data_cb_func cb, void *arg)
    int SSL_CTX_set_session_ticket_cb(SSL_CTX *ctx, gen_ticket_cb_func gen_cb, dec_ticket_cb_func dec_cb,
                                      void *arg)
    int SSL_SESSION_set1_ticket_appdata(SSL_SESSION *ss, const void *data, size_t len)
    int SSL_SESSION_get0_ticket_appdata(SSL_SESSION *ss, void **data, size_t *len)
    size_t SSL_get_client_random(const SSL *ssl, unsigned char *out, size_t outlen)


# ---- client certificates on the front (nginx ssl_verify_client, $ssl_client_*) ------------
cdef extern from "compat.h" nogil:
    ctypedef struct X509_NAME
    ctypedef struct X509_STORE_CTX
    ctypedef struct ASN1_INTEGER
    cdef struct stack_st_X509_NAME
    ctypedef int (*verify_cb_func)(int preverify_ok, X509_STORE_CTX *store) noexcept
    enum:
        XN_FLAG_RFC2253
        X509_V_ERR_DEPTH_ZERO_SELF_SIGNED_CERT
        X509_V_ERR_SELF_SIGNED_CERT_IN_CHAIN
        X509_V_ERR_UNABLE_TO_GET_ISSUER_CERT
        X509_V_ERR_UNABLE_TO_GET_ISSUER_CERT_LOCALLY
        X509_V_ERR_UNABLE_TO_VERIFY_LEAF_SIGNATURE
    stack_st_X509_NAME *SSL_load_client_CA_file(const char *file)
    void SSL_CTX_set_client_CA_list(SSL_CTX *ctx, stack_st_X509_NAME *name_list)
    int SSL_CTX_get_verify_mode(const SSL_CTX *ctx)
    int SSL_CTX_get_verify_depth(const SSL_CTX *ctx)
    verify_cb_func SSL_CTX_get_verify_callback(const SSL_CTX *ctx)
    void SSL_set_verify_depth(SSL *s, int depth)
    int SSL_get_verify_mode(const SSL *s)
    X509_NAME *X509_get_subject_name(const X509 *x)
    X509_NAME *X509_get_issuer_name(const X509 *x)
    ASN1_INTEGER *X509_get_serialNumber(X509 *x)
    int X509_NAME_print_ex(BIO *out, const X509_NAME *nm, int indent, unsigned long flags)
    int i2a_ASN1_INTEGER(BIO *bp, const ASN1_INTEGER *a)
    int PEM_write_bio_X509(BIO *bp, X509 *x)
    int X509_digest(const X509 *data, const EVP_MD *type, unsigned char *md, unsigned int *len)
    const EVP_MD *EVP_sha1()
    long BIO_get_mem_data(BIO *b, char **pp)
