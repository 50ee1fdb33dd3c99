# Shared memory made by the master before fork: session cache, ticket keys,
# per-worker counters. Layout in includes/shm.h.

from libc.stdint cimport int64_t, uint64_t, uint32_t

cdef extern from "includes/shm.h" nogil:
    enum:
        FT_MAGIC
        FT_TICKET_KEYS
        FT_WORKER_SLOTS
        FT_COUNTERS
        FT_SESSION_ID_MAX
        FT_SESSION_DER_MAX
        FT_PROBE
        FT_LOCAL_SESSIONS
        FT_SEQLOCK_RETRIES
        FT_OCSP_SLOTS
        FT_OCSP_DER_MAX
        FT_OCSP_KEY_LEN
    ctypedef struct ft_ticket_key:
        unsigned char name[16]
        unsigned char hmac[32]
        unsigned char aes[32]
    ctypedef struct ft_ticket_keys:
        uint64_t seq
        unsigned int count
        ft_ticket_key keys[FT_TICKET_KEYS]
    ctypedef struct ft_worker_slot:
        unsigned int used
        unsigned int pid
        unsigned int generation
        int64_t counters[FT_COUNTERS]
    ctypedef struct ft_session:
        int64_t expires
        uint64_t stamp
        unsigned int der_len
        unsigned int id_len
        unsigned char id[FT_SESSION_ID_MAX]
        unsigned char der[FT_SESSION_DER_MAX]
    ctypedef struct ft_ocsp:
        uint64_t seq
        int64_t expires
        unsigned int der_len
        unsigned char key[FT_OCSP_KEY_LEN]
        unsigned char der[FT_OCSP_DER_MAX]
    ctypedef struct ft_shared:
        unsigned int magic
        unsigned int nsessions
        pthread_mutex_t lock
        int64_t session_stats[4]
        ft_ticket_keys tickets
        int64_t retired[FT_COUNTERS]
        ft_worker_slot workers[FT_WORKER_SLOTS]
        ft_ocsp ocsp[FT_OCSP_SLOTS]
        ft_session sessions[1]
    enum:
        FT_REPLAY_MAGIC
        FT_REPLAY_PROBE
        FT_CLIENT_RANDOM
    ctypedef struct ft_replay_entry:
        int64_t expires
        unsigned char random[FT_CLIENT_RANDOM]
    ctypedef struct ft_replay:
        unsigned int magic
        unsigned int nentries
        pthread_mutex_t lock
        unsigned char node_id[16]
        int64_t stats[3]
        ft_replay_entry entries[1]
    enum:
        FT_HEALTH_SLOTS
        FT_HEALTH_DOWN
    uint64_t ft_load_acquire(const uint64_t *p)
    void ft_store_release(uint64_t *p, uint64_t v)
    void ft_fence()
    int64_t ft_load_acquire_i64(const int64_t *p)
    void ft_store_relaxed_i64(int64_t *p, int64_t v)
    void ft_store_release_i64(int64_t *p, int64_t v)
    int ft_ticket_crypto_init(EVP_CIPHER_CTX *ctx, EVP_MAC_CTX *hctx, const unsigned char *aes,
                              const unsigned char *hmac, const unsigned char *iv, int enc)


cdef enum:
    # ReplayTable.record(): what a ClientHello random's sighting means
    REPLAY_FRESH = 0        # first sighting, now recorded: its early data may be accepted
    REPLAY_SEEN = 1         # recorded before and not expired: a replay
    REPLAY_FULL = 2         # no free slot for it: early data is refused (the safe default)


cdef class ReplayTable:
    cdef ft_replay *table
    cdef size_t size
    cdef readonly double ttl         # seconds an entry is kept

    cdef int record(self, const unsigned char *random) noexcept nogil
    cdef bint issued_here(self, const unsigned char *node_id, size_t n) noexcept nogil


cdef class HealthTable:
    cdef uint64_t *slots             # FT_HEALTH_SLOTS words: bit 0 down, above it the up count

    cdef inline uint64_t read(self, int slot) noexcept nogil:
        return ft_load_acquire(&self.slots[slot])


ctypedef struct ft_local_session:
    SSL_SESSION *session             # this process's reference, or NULL
    uint64_t stamp                   # the ft_session.stamp it was decoded from (or stored as)


cdef class SharedState:
    cdef readonly ReplayTable replay  # the 0-RTT replay table every worker shares
    cdef ft_shared *region
    cdef size_t size
    cdef int owner_pid
    cdef long abandon_after          # test hook: see abandon_next_write()
    cdef ft_ticket_keys keys_seen    # this process's last consistent copy of the shared keys
    cdef ft_local_session *local     # FT_LOCAL_SESSIONS, by slot index; allocated on first use

    cdef int lock(self) noexcept nogil
    cdef void unlock(self) noexcept nogil
    cdef uint64_t store_session(self, const unsigned char *sid, unsigned int sid_len,
                                const unsigned char *der, int der_len, long long expires,
                                unsigned int *index) noexcept nogil
    cdef void keep_local(self, unsigned int index, uint64_t stamp, SSL_SESSION *session) noexcept nogil
    cdef int _live_index(self, const unsigned char *sid, int sid_len) noexcept nogil
    cdef int copy_session(self, const unsigned char *sid, int sid_len, unsigned char *der) noexcept nogil
    cdef SSL_SESSION *find_session(self, const unsigned char *sid, int sid_len) noexcept nogil
    cdef void remove_session(self, const unsigned char *sid, unsigned int sid_len) noexcept nogil
    cdef bint refresh_ticket_keys(self) noexcept nogil
    cdef int read_ticket_key(self, const unsigned char *name, ft_ticket_key *out) noexcept nogil
    cdef int copy_ocsp(self, int slot, unsigned char *der) noexcept nogil
