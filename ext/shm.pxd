# Shared memory made by the master before fork: session cache, ticket keys,
# per-worker counters. Layout in includes/shm.h.

cdef extern from "includes/shm.h" nogil:
    enum:
        FT_MAGIC
        FT_TICKET_KEYS
        FT_WORKER_SLOTS
        FT_COUNTERS
        FT_SESSION_ID_MAX
        FT_SESSION_DER_MAX
        FT_PROBE
    ctypedef struct ft_ticket_key:
        unsigned char name[16]
        unsigned char hmac[32]
        unsigned char aes[32]
    ctypedef struct ft_ticket_keys:
        unsigned long long seq
        unsigned int count
        ft_ticket_key keys[FT_TICKET_KEYS]
    ctypedef struct ft_worker_slot:
        unsigned int used
        unsigned int pid
        unsigned int generation
        long long counters[FT_COUNTERS]
    ctypedef struct ft_session:
        long long expires
        unsigned int der_len
        unsigned int id_len
        unsigned char id[FT_SESSION_ID_MAX]
        unsigned char der[FT_SESSION_DER_MAX]
    ctypedef struct ft_shared:
        unsigned int magic
        unsigned int nsessions
        pthread_mutex_t lock
        long long session_stats[4]
        ft_ticket_keys tickets
        long long retired[FT_COUNTERS]
        ft_worker_slot workers[FT_WORKER_SLOTS]
        ft_session sessions[1]
    unsigned long long ft_load_acquire(const unsigned long long *p)
    void ft_store_release(unsigned long long *p, unsigned long long v)
    void ft_fence()
    int ft_ticket_crypto_init(EVP_CIPHER_CTX *ctx, EVP_MAC_CTX *hctx, const unsigned char *aes,
                              const unsigned char *hmac, const unsigned char *iv, int enc)


cdef class SharedState:
    cdef ft_shared *region
    cdef size_t size
    cdef int owner_pid

    cdef int lock(self) nogil
    cdef void unlock(self) nogil
    cdef int store_session(self, const unsigned char *sid, unsigned int sid_len,
                           const unsigned char *der, int der_len, long long expires) nogil
    cdef SSL_SESSION *find_session(self, const unsigned char *sid, int sid_len) nogil
    cdef void remove_session(self, const unsigned char *sid, unsigned int sid_len) nogil
    cdef int read_ticket_key(self, const unsigned char *name, ft_ticket_key *out) nogil
