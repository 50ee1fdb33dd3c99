# Shared TLS state across workers (DESIGN.md "Processes").
#
# Session cache: a fixed open-addressing table (FT_PROBE slots per bucket) in
# MAP_SHARED memory, guarded by one process-shared *robust* pthread mutex: the
# critical sections are a memcpy of at most ~1 KiB, far shorter than a handshake,
# so one lock is simpler than a lock-free design and not contended in measurement;
# robust because a worker SIGKILLed while holding it must not wedge the others
# (EOWNERDEAD -> pthread_mutex_consistent). A store zeroes the slot's expiry, writes
# the entry, and sets the expiry last (release order), so the slot a killed writer
# leaves half-written is a free one, never a live torn entry.
#
# Each worker also keeps the SSL_SESSION it last decoded (or stored) for a slot, with the
# stamp of the store that wrote the slot: a lookup still finds the entry in the shared
# table under the lock (so a session removed or replaced by any worker stops resuming
# everywhere), and only the d2i_SSL_SESSION of an entry this worker already decoded is
# skipped: ~4.5 us of a ~130 us resumed TLS 1.2 handshake (bench/PROFILE.md, round 2).
#
# Ticket keys: written only by the master under a seqlock. Each worker keeps its own
# copy (keys_seen), refreshed when the sequence moves, and searches that: one atomic
# load per ticket callback, no lock on the resumption path. The refresh gives up after
# FT_SEQLOCK_RETRIES reads: a master killed mid-write leaves the sequence odd for
# good, and the workers then keep the keys they last saw.
#
# OCSP responses: one slot per stapled certificate, written by the master only under a
# seqlock like the ticket keys; the status callback copies a slot out (one consistent
# read per handshake that asked for a staple) and staples it only before its nextUpdate,
# so a response the master could not refresh stops being stapled when it expires even
# if nobody clears it.

from libc.string cimport memcpy, memset, memcmp
from libc.stdlib cimport calloc, free


cdef enum:
    STAT_STORES = 0
    STAT_HITS = 1
    STAT_MISSES = 2
    STAT_EVICTIONS = 3


cdef inline unsigned int _hash(const unsigned char *sid, unsigned int n) noexcept nogil:
    cdef unsigned int h = 2166136261u
    cdef unsigned int i
    for i in range(n):
        h = (h ^ sid[i]) * 16777619u
    return h


# OpenSSL accepts early data only while the client's ticket age and its own agree within
# TICKET_AGE_ALLOWANCE (10 s, ssl/statem/extensions_srvr.c), counted in whole seconds: a
# ClientHello replayed more than about 11 s after it was first seen is refused by OpenSSL
# itself. Entries outlive that window with a margin.
REPLAY_TTL = 20.0
# 40 bytes an entry (32-byte client random, 8-byte expiry): 65536 entries map 2.5 MiB, touched
# only as entries are used; about 3,000 0-RTT handshakes a second fill it over the TTL (a
# bucket of 16 slots may fill sooner: that handshake's early data is refused, replay
# protection is never dropped). Measured: a
# record() costs 0.1-0.3 us under the lock (Python-call overhead included), far below the
# tens to hundreds of microseconds of CPU of the handshake it guards.
REPLAY_ENTRIES = 65536


cdef inline long long _monotonic() noexcept nogil:
    cdef timespec ts
    clock_gettime(CLOCK_MONOTONIC, &ts)
    return ts.tv_sec


cdef class ReplayTable:
    """Single-use record of the ClientHello randoms whose early data was accepted (RFC 8446
    §8.2, "ClientHello recording"), shared by the workers through fork(). The random is
    covered by the PSK binder, so a replayed flight carries the same one; a client that
    picks a new random sends a new ClientHello, and a new binder only a ticket holder
    can make. Open addressing, FT_REPLAY_PROBE slots from a hash keyed with this node's
    random id (a client cannot aim its randoms at one bucket); no free slot: full."""

    def __cinit__(self, unsigned int entries=REPLAY_ENTRIES, double ttl=REPLAY_TTL):
        cdef pthread_mutexattr_t attr
        cdef bytes node_id = os.urandom(16)
        if entries < FT_REPLAY_PROBE:
            entries = FT_REPLAY_PROBE
        self.size = sizeof(ft_replay) + entries * sizeof(ft_replay_entry)
        # MAP_ANONYMOUS pages are zero (every entry free) and only those touched cost memory.
        self.table = <ft_replay *>mmap(NULL, self.size, PROT_READ | PROT_WRITE,
                                        MAP_SHARED | MAP_ANONYMOUS, -1, 0)
        if <void *>self.table == MAP_FAILED:
            self.table = NULL
            raise MemoryError(f"mmap of {self.size} bytes failed")
        self.table.magic = FT_REPLAY_MAGIC
        self.table.nentries = entries
        memcpy(self.table.node_id, <const char *>node_id, 16)
        self.ttl = ttl
        pthread_mutexattr_init(&attr)
        pthread_mutexattr_setpshared(&attr, PTHREAD_PROCESS_SHARED)
        pthread_mutexattr_setrobust(&attr, PTHREAD_MUTEX_ROBUST)
        if pthread_mutex_init(&self.table.lock, &attr) != 0:
            raise OSError("pthread_mutex_init failed")

    def __dealloc__(self):
        if self.table != NULL:
            munmap(self.table, self.size)
            self.table = NULL

    cdef int record(self, const unsigned char *random) noexcept nogil:
        """REPLAY_FRESH (recorded now), REPLAY_SEEN or REPLAY_FULL for a 32-byte client random."""
        cdef unsigned int h = 2166136261u, base, i
        cdef ft_replay_entry *e
        cdef ft_replay_entry *free_slot = NULL
        cdef long long now = _monotonic()
        cdef int verdict = REPLAY_FULL, r
        for i in range(16):
            h = (h ^ self.table.node_id[i]) * 16777619u
        for i in range(FT_CLIENT_RANDOM):
            h = (h ^ random[i]) * 16777619u
        base = h % self.table.nentries
        r = pthread_mutex_lock(&self.table.lock)
        if r == EOWNERDEAD:
            pthread_mutex_consistent(&self.table.lock)   # a worker killed holding it
        elif r != 0:
            return REPLAY_FULL   # not recorded, so not accepted
        for i in range(FT_REPLAY_PROBE):
            e = &self.table.entries[(base + i) % self.table.nentries]
            if e.expires > now:
                if memcmp(e.random, random, FT_CLIENT_RANDOM) == 0:
                    verdict = REPLAY_SEEN
                    break
            elif free_slot == NULL:
                free_slot = e
        if verdict != REPLAY_SEEN and free_slot != NULL:
            memcpy(free_slot.random, random, FT_CLIENT_RANDOM)
            free_slot.expires = now + <long long>self.ttl
            verdict = REPLAY_FRESH
        self.table.stats[verdict] += 1
        pthread_mutex_unlock(&self.table.lock)
        return verdict

    cdef bint issued_here(self, const unsigned char *node_id, size_t n) noexcept nogil:
        return n == 16 and memcmp(node_id, self.table.node_id, 16) == 0

    def check(self, bytes random not None):
        """The verdict the allow-early-data callback gets for ``random`` (recording it)."""
        if len(random) != FT_CLIENT_RANDOM:
            raise ValueError("a client random is 32 bytes")
        return self.record(random)

    @property
    def node_id(self):
        """What this node's tickets carry as app data: only they may carry early data here."""
        return (<char *>self.table.node_id)[:16]

    @property
    def entry_size(self):
        return sizeof(ft_replay_entry)

    @property
    def capacity(self):
        return self.table.nentries

    @property
    def mapped_bytes(self):
        return self.size

    def stats(self):
        return {"recorded": self.table.stats[0], "replays": self.table.stats[1],
                "full": self.table.stats[2], "capacity": self.table.nentries}


cdef ReplayTable _own_replay = None


cdef ReplayTable process_replay_table():
    """Without a supervisor (tests, ``run --single``): one table for this process's contexts."""
    global _own_replay
    if _own_replay is None:
        _own_replay = ReplayTable()
    return _own_replay


cdef class HealthTable:
    """The active health checks' verdicts (fastterm/health.py), shared through fork(): the
    master writes a server's word when its state changes, a worker reads it (one atomic load)
    each time it weighs that server. A word that was never written (0) is up."""

    def __cinit__(self):
        self.slots = <uint64_t *>mmap(NULL, FT_HEALTH_SLOTS * sizeof(uint64_t), PROT_READ | PROT_WRITE,
                                      MAP_SHARED | MAP_ANONYMOUS, -1, 0)
        if <void *>self.slots == MAP_FAILED:
            self.slots = NULL
            raise MemoryError("mmap of the health table failed")

    def __dealloc__(self):
        if self.slots != NULL:
            munmap(self.slots, FT_HEALTH_SLOTS * sizeof(uint64_t))
            self.slots = NULL

    capacity = FT_HEALTH_SLOTS

    def set(self, int slot, bint up):
        """Master only: the server of ``slot`` is up (or down); a change to up counts once."""
        cdef uint64_t v
        if not 0 <= slot < FT_HEALTH_SLOTS:
            raise ValueError(f"health slot {slot} out of range (0..{FT_HEALTH_SLOTS - 1})")
        v = ft_load_acquire(&self.slots[slot])
        if up and v & FT_HEALTH_DOWN:
            ft_store_release(&self.slots[slot], (v & ~(<uint64_t>FT_HEALTH_DOWN)) + 2)
        elif not up:
            ft_store_release(&self.slots[slot], v | FT_HEALTH_DOWN)

    def reset(self, int slot):
        """Master only: a slot given to another server starts up, with no history."""
        if 0 <= slot < FT_HEALTH_SLOTS:
            ft_store_release(&self.slots[slot], 0)

    def up(self, int slot):
        return not self.read(slot) & FT_HEALTH_DOWN

    def word(self, int slot):
        return self.read(slot)


cdef class SharedState:
    """The master's shared region; workers inherit the mapping through fork()."""

    def __cinit__(self, size_t session_cache_size=10 * 1024 * 1024):
        cdef pthread_mutexattr_t attr
        cdef size_t n = session_cache_size // sizeof(ft_session)
        if n < FT_PROBE:
            n = FT_PROBE
        self.size = sizeof(ft_shared) + n * sizeof(ft_session)
        self.region = <ft_shared *>mmap(NULL, self.size, PROT_READ | PROT_WRITE,
                                         MAP_SHARED | MAP_ANONYMOUS, -1, 0)
        if <void *>self.region == MAP_FAILED:
            self.region = NULL
            raise MemoryError(f"mmap of {self.size} bytes failed")
        memset(self.region, 0, self.size)
        self.region.magic = FT_MAGIC
        self.region.nsessions = <unsigned int>n
        pthread_mutexattr_init(&attr)
        pthread_mutexattr_setpshared(&attr, PTHREAD_PROCESS_SHARED)
        pthread_mutexattr_setrobust(&attr, PTHREAD_MUTEX_ROBUST)
        if pthread_mutex_init(&self.region.lock, &attr) != 0:
            raise OSError("pthread_mutex_init failed")
        self.owner_pid = os.getpid()
        self.abandon_after = -1
        self.replay = ReplayTable()
        memset(&self.keys_seen, 0, sizeof(ft_ticket_keys))
        self.local = NULL

    def __dealloc__(self):
        cdef int i
        if self.local != NULL:
            for i in range(FT_LOCAL_SESSIONS):
                if self.local[i].session != NULL:
                    SSL_SESSION_free(self.local[i].session)
            free(self.local)
            self.local = NULL
        if self.region != NULL:
            munmap(self.region, self.size)
            self.region = NULL

    # ---- session cache --------------------------------------------------
    cdef int lock(self) noexcept nogil:
        cdef int r = pthread_mutex_lock(&self.region.lock)
        if r == EOWNERDEAD:
            pthread_mutex_consistent(&self.region.lock)
            return 0
        return r

    cdef void unlock(self) noexcept nogil:
        pthread_mutex_unlock(&self.region.lock)

    cdef uint64_t store_session(self, const unsigned char *sid, unsigned int sid_len,
                                const unsigned char *der, int der_len, long long expires,
                                unsigned int *index) noexcept nogil:
        """Write the entry; its stamp (0: not stored) and slot index (``index``)."""
        cdef unsigned int base, i, victim
        cdef ft_session *s
        cdef ft_session *slot = NULL
        cdef long long now = time(NULL), oldest = 0
        cdef uint64_t stamp
        if sid_len == 0 or sid_len > FT_SESSION_ID_MAX or der_len <= 0 or der_len > FT_SESSION_DER_MAX:
            return 0
        base = _hash(sid, sid_len) % self.region.nsessions
        if self.lock() != 0:
            return 0
        for i in range(FT_PROBE):
            s = &self.region.sessions[(base + i) % self.region.nsessions]
            if s.expires != 0 and s.id_len == sid_len and memcmp(s.id, sid, sid_len) == 0:
                slot = s
                break
            if slot == NULL and s.expires <= now:
                slot = s
        if slot == NULL:
            # Every slot of the bucket is live: evict the one that expires first.
            for i in range(FT_PROBE):
                s = &self.region.sessions[(base + i) % self.region.nsessions]
                if slot == NULL or s.expires < oldest:
                    slot = s
                    oldest = s.expires
            self.region.session_stats[<int>STAT_EVICTIONS] += 1
        ft_store_relaxed_i64(&slot.expires, 0)
        ft_fence()                                 # free before any byte of it changes
        slot.id_len = sid_len
        memcpy(slot.id, sid, sid_len)
        slot.der_len = der_len
        if 0 <= self.abandon_after < der_len:
            memcpy(slot.der, der, self.abandon_after)
            return 0
        memcpy(slot.der, der, der_len)
        self.region.session_stats[<int>STAT_STORES] += 1
        stamp = <uint64_t>self.region.session_stats[<int>STAT_STORES]
        slot.stamp = stamp
        ft_store_release_i64(&slot.expires, expires)   # live only once whole
        self.unlock()
        index[0] = <unsigned int>(slot - self.region.sessions)
        return stamp

    cdef void keep_local(self, unsigned int index, uint64_t stamp, SSL_SESSION *session) noexcept nogil:
        """Hold a reference to ``session`` as this process's copy of slot ``index`` at ``stamp``."""
        cdef ft_local_session *e
        if self.local == NULL:
            self.local = <ft_local_session *>calloc(FT_LOCAL_SESSIONS, sizeof(ft_local_session))
            if self.local == NULL:
                return
        e = &self.local[index % FT_LOCAL_SESSIONS]
        if e.session != NULL:
            SSL_SESSION_free(e.session)
        SSL_SESSION_up_ref(session)
        e.session = session
        e.stamp = stamp

    cdef int _live_index(self, const unsigned char *sid, int sid_len) noexcept nogil:
        """The slot of the live entry for ``sid``, or -1; the caller holds the lock."""
        cdef unsigned int base, i, index
        cdef ft_session *s
        cdef long long now = time(NULL)
        base = _hash(sid, sid_len) % self.region.nsessions
        for i in range(FT_PROBE):
            index = (base + i) % self.region.nsessions
            s = &self.region.sessions[index]
            if (ft_load_acquire_i64(&s.expires) > now and s.id_len == <unsigned int>sid_len
                    and memcmp(s.id, sid, sid_len) == 0):
                return <int>index
        return -1

    cdef int copy_session(self, const unsigned char *sid, int sid_len, unsigned char *der) noexcept nogil:
        """The live entry for ``sid`` copied into ``der`` (FT_SESSION_DER_MAX bytes): its length, or 0."""
        cdef int index, der_len = 0
        if sid_len <= 0 or sid_len > FT_SESSION_ID_MAX or self.lock() != 0:
            return 0
        index = self._live_index(sid, sid_len)
        if index >= 0:
            der_len = self.region.sessions[index].der_len
            memcpy(der, self.region.sessions[index].der, der_len)
        self.region.session_stats[<int>(STAT_HITS if der_len else STAT_MISSES)] += 1
        self.unlock()
        return der_len

    cdef SSL_SESSION *find_session(self, const unsigned char *sid, int sid_len) noexcept nogil:
        """A new reference to the live session ``sid``: this process's decoded copy of its
        entry when it has one, else decoded from the shared table (and kept); NULL if none."""
        cdef unsigned char der[FT_SESSION_DER_MAX]
        cdef const unsigned char *p = der
        cdef int index
        cdef ft_session *s
        cdef ft_local_session *e
        cdef SSL_SESSION *session = NULL
        cdef int der_len = 0
        cdef uint64_t stamp = 0
        if sid_len <= 0 or sid_len > FT_SESSION_ID_MAX or self.lock() != 0:
            return NULL
        index = self._live_index(sid, sid_len)
        if index >= 0:
            s = &self.region.sessions[index]
            stamp = s.stamp
            if self.local != NULL:
                e = &self.local[index % FT_LOCAL_SESSIONS]
                if e.session != NULL and e.stamp == stamp and SSL_SESSION_is_resumable(e.session):
                    session = e.session
            if session == NULL:
                der_len = s.der_len
                memcpy(der, s.der, der_len)
        self.region.session_stats[<int>(STAT_HITS if index >= 0 else STAT_MISSES)] += 1
        self.unlock()
        if session != NULL:
            SSL_SESSION_up_ref(session)
            return session
        if der_len == 0:
            return NULL
        session = d2i_SSL_SESSION(NULL, &p, der_len)
        if session != NULL:
            self.keep_local(<unsigned int>index, stamp, session)
        return session

    cdef void remove_session(self, const unsigned char *sid, unsigned int sid_len) noexcept nogil:
        cdef unsigned int base, i
        cdef ft_session *s
        if sid_len == 0 or sid_len > FT_SESSION_ID_MAX:
            return
        base = _hash(sid, sid_len) % self.region.nsessions
        if self.lock() != 0:
            return
        for i in range(FT_PROBE):
            s = &self.region.sessions[(base + i) % self.region.nsessions]
            if s.expires != 0 and s.id_len == sid_len and memcmp(s.id, sid, sid_len) == 0:
                s.expires = 0
                break
        self.unlock()

    def store(self, bytes sid not None, bytes der not None, long long expires):
        """Cache ``der`` under ``sid`` until ``expires`` (unix seconds), as the new-session
        callback does; for tests and debugging."""
        cdef unsigned int index
        return bool(self.store_session(sid, len(sid), der, len(der), expires, &index))

    def session(self, bytes sid not None):
        """The DER the get-session callback would decode for ``sid``, or None."""
        cdef unsigned char der[FT_SESSION_DER_MAX]
        cdef int n = self.copy_session(sid, len(sid), der)
        return (<char *>der)[:n] if n else None

    def abandon_next_write(self, long nbytes):
        """Test hook: the next session store or ticket-key write stops after ``nbytes`` of its
        data and returns as if its process had been SIGKILLed there (a store keeps the lock)."""
        self.abandon_after = nbytes

    # ---- ticket keys ----------------------------------------------------
    def set_ticket_keys(self, keys):
        """Master only: ``keys`` are 80-byte nginx-format keys, the first one encrypts."""
        cdef ft_ticket_keys *t = &self.region.tickets
        cdef uint64_t seq
        cdef bytes raw
        cdef int i
        keys = list(keys)[:FT_TICKET_KEYS]
        for k in keys:
            if len(k) != 80:
                raise ValueError("a ticket key is 80 bytes (name, HMAC key, AES key)")
        seq = ft_load_acquire(&t.seq)
        ft_store_release(&t.seq, seq + 1)          # odd: readers retry
        ft_fence()
        for i, k in enumerate(keys):
            raw = bytes(k)
            if 0 <= self.abandon_after < 80:
                memcpy(&t.keys[i], <const char *>raw, self.abandon_after)
                return
            memcpy(&t.keys[i], <const char *>raw, 80)
        t.count = len(keys)
        ft_fence()
        ft_store_release(&t.seq, seq + 2)

    def ticket_key_names(self):
        cdef ft_ticket_keys *t = &self.region.tickets
        return [(<char *>t.keys[i].name)[:16] for i in range(t.count)]

    cdef bint refresh_ticket_keys(self) noexcept nogil:
        """Bring keys_seen up to date with the shared keys; False when no consistent copy
        could be read (keys_seen then keeps the last good keys, none if it never had any)."""
        cdef ft_ticket_keys *t = &self.region.tickets
        cdef ft_ticket_keys copy
        cdef uint64_t seq
        cdef int attempt
        for attempt in range(FT_SEQLOCK_RETRIES):
            seq = ft_load_acquire(&t.seq)
            if seq == self.keys_seen.seq:
                return True
            if seq & 1:
                continue
            memcpy(&copy, t, sizeof(ft_ticket_keys))
            ft_fence()
            if ft_load_acquire(&t.seq) == seq:
                copy.seq = seq
                if copy.count > FT_TICKET_KEYS:
                    copy.count = FT_TICKET_KEYS
                memcpy(&self.keys_seen, &copy, sizeof(ft_ticket_keys))
                return True
        return False

    cdef int read_ticket_key(self, const unsigned char *name, ft_ticket_key *out) noexcept nogil:
        """Copy the key named ``name`` (or the encrypting key when NULL) into ``out``.
        Returns its index (0 = the current encrypting key), or -1."""
        cdef unsigned int i
        self.refresh_ticket_keys()
        for i in range(self.keys_seen.count):
            if name == NULL or memcmp(self.keys_seen.keys[i].name, name, 16) == 0:
                memcpy(out, &self.keys_seen.keys[i], sizeof(ft_ticket_key))
                return i
        return -1

    def ticket_key(self, bytes name=None):
        """``(index, key)`` as the ticket callback would find it (the encrypting key when
        ``name`` is None), or None."""
        cdef ft_ticket_key key
        cdef const unsigned char *wanted = NULL
        cdef int index
        if name is not None:
            if len(name) != 16:
                raise ValueError("a ticket key name is 16 bytes")
            wanted = name
        index = self.read_ticket_key(wanted, &key)
        return None if index < 0 else (index, (<char *>&key)[:sizeof(ft_ticket_key)])

    # ---- OCSP responses -------------------------------------------------
    def set_ocsp(self, int slot, bytes der, long long expires):
        """Master only: ``der`` is stapled from ``slot`` until ``expires`` (unix seconds);
        None (or ``expires`` 0) stops stapling it."""
        cdef ft_ocsp *o
        cdef uint64_t seq
        if not 0 <= slot < FT_OCSP_SLOTS:
            raise ValueError(f"OCSP slot {slot} out of range (0..{FT_OCSP_SLOTS - 1})")
        if der is not None and len(der) > FT_OCSP_DER_MAX:
            raise ValueError(f"OCSP response of {len(der)} bytes: at most {FT_OCSP_DER_MAX} are shared")
        o = &self.region.ocsp[slot]
        seq = ft_load_acquire(&o.seq)
        ft_store_release(&o.seq, seq + 1)
        ft_fence()
        if der is None or expires <= 0:
            o.der_len = 0
            o.expires = 0
        else:
            memcpy(o.der, <const char *>der, len(der))
            o.der_len = len(der)
            o.expires = expires
        ft_fence()
        ft_store_release(&o.seq, seq + 2)

    def set_ocsp_key(self, int slot, bytes key):
        """Master only: ``slot`` is for the certificate ``key`` names (certs/ocsp.py
        fingerprint, 32 bytes; b"": for none), so a worker that loaded that certificate
        anew (certs/watch.py) finds its slot (``find_ocsp_slot``)."""
        cdef ft_ocsp *o
        cdef uint64_t seq
        if not 0 <= slot < FT_OCSP_SLOTS:
            raise ValueError(f"OCSP slot {slot} out of range (0..{FT_OCSP_SLOTS - 1})")
        if len(key) not in (0, FT_OCSP_KEY_LEN):
            raise ValueError(f"an OCSP slot key is {FT_OCSP_KEY_LEN} bytes")
        o = &self.region.ocsp[slot]
        seq = ft_load_acquire(&o.seq)
        ft_store_release(&o.seq, seq + 1)
        ft_fence()
        memset(o.key, 0, FT_OCSP_KEY_LEN)
        if key:
            memcpy(o.key, <const char *>key, FT_OCSP_KEY_LEN)
        ft_fence()
        ft_store_release(&o.seq, seq + 2)

    def find_ocsp_slot(self, bytes key not None):
        """The slot the master keeps for certificate ``key``, or -1 (not yet, or never)."""
        cdef ft_ocsp *o
        cdef uint64_t seq
        cdef int slot, attempt
        cdef bint same
        if len(key) != FT_OCSP_KEY_LEN:
            return -1
        for slot in range(FT_OCSP_SLOTS):
            o = &self.region.ocsp[slot]
            for attempt in range(FT_SEQLOCK_RETRIES):
                seq = ft_load_acquire(&o.seq)
                if seq & 1:
                    continue
                same = memcmp(o.key, <const char *>key, FT_OCSP_KEY_LEN) == 0
                ft_fence()
                if ft_load_acquire(&o.seq) == seq:
                    if same:
                        return slot
                    break
        return -1

    cdef int copy_ocsp(self, int slot, unsigned char *der) noexcept nogil:
        """The response of ``slot`` copied into ``der`` (FT_OCSP_DER_MAX bytes) while it is
        unexpired: its length, else 0 (none, expired, or no consistent read)."""
        cdef ft_ocsp *o
        cdef uint64_t seq
        cdef unsigned int n
        cdef long long expires
        cdef int attempt
        if slot < 0 or slot >= FT_OCSP_SLOTS:
            return 0
        o = &self.region.ocsp[slot]
        for attempt in range(FT_SEQLOCK_RETRIES):
            seq = ft_load_acquire(&o.seq)
            if seq & 1:
                continue
            n = o.der_len
            expires = o.expires
            if n > FT_OCSP_DER_MAX:
                n = 0
            if n:
                memcpy(der, o.der, n)
            ft_fence()
            if ft_load_acquire(&o.seq) == seq:
                return <int>n if n and expires > time(NULL) else 0
        return 0

    def ocsp(self, int slot):
        """What the status callback would staple from ``slot`` now, or None."""
        cdef unsigned char der[FT_OCSP_DER_MAX]
        cdef int n = self.copy_ocsp(slot, der)
        return (<char *>der)[:n] if n else None

    # ---- counters -------------------------------------------------------
    def claim_slot(self, int pid, int generation):
        """Master: a counter slot for a new worker."""
        cdef int i
        for i in range(FT_WORKER_SLOTS):
            if not self.region.workers[i].used:
                memset(&self.region.workers[i], 0, sizeof(ft_worker_slot))
                self.region.workers[i].used = 1
                self.region.workers[i].pid = pid
                self.region.workers[i].generation = generation
                return i
        raise RuntimeError("no free worker slot")

    def free_slots(self):
        """Counter slots left for new workers."""
        return sum(not self.region.workers[i].used for i in range(FT_WORKER_SLOTS))

    def set_slot_pid(self, int slot, int pid):
        self.region.workers[slot].pid = pid

    def release_slot(self, int slot):
        """Master: fold an exited worker's counters into the retired totals."""
        cdef int i
        for i in range(FT_COUNTERS):
            self.region.retired[i] += self.region.workers[slot].counters[i]
        self.region.workers[slot].used = 0

    def totals(self):
        """Counter totals over live and exited workers, by index."""
        cdef int i, j
        out = [self.region.retired[i] for i in range(FT_COUNTERS)]
        for j in range(FT_WORKER_SLOTS):
            if self.region.workers[j].used:
                for i in range(FT_COUNTERS):
                    out[i] += self.region.workers[j].counters[i]
        return out

    def slot_counters(self, int slot):
        return [self.region.workers[slot].counters[i] for i in range(FT_COUNTERS)]

    def session_stats(self):
        s = self.region.session_stats
        return {"stores": s[0], "hits": s[1], "misses": s[2], "evictions": s[3],
                "capacity": self.region.nsessions}


# ---- OpenSSL callbacks (noexcept: failures become "not cached" / full handshake) ----

cdef SharedState _state_of(SSL_CTX *ctx):
    """The SharedState of the TLSContext that owns ``ctx`` (its app data), or None."""
    cdef void *owner = SSL_CTX_get_ex_data(ctx, 0)
    return None if owner == NULL else (<TLSContext>owner).shared


cdef int _new_session_cb(SSL *ssl, SSL_SESSION *sess) noexcept:
    cdef unsigned int sid_len = 0
    cdef const unsigned char *sid
    cdef unsigned char der[FT_SESSION_DER_MAX]
    cdef unsigned char *p = der
    cdef int der_len
    cdef unsigned long long options
    cdef unsigned int index = 0
    cdef uint64_t stamp
    cdef SharedState shared = _state_of(SSL_get_SSL_CTX(ssl))
    if shared is None:
        return 0
    options = SSL_get_options(ssl)
    if SSL_version(ssl) == TLS1_3_VERSION and not options & SSL_OP_NO_TICKET and \
            (options & SSL_OP_NO_ANTI_REPLAY or SSL_get_max_early_data(ssl) == 0):
        # A stateless TLS 1.3 ticket carries its session: OpenSSL never looks it up in the
        # cache, so storing it would cost an i2d and a slot per ticket for nothing. OpenSSL
        # makes the ticket stateful (a cache key, to be stored) without tickets, or with early
        # data under its own anti-replay (tls_construct_new_session_ticket's test, mirrored).
        return 0
    der_len = i2d_SSL_SESSION(sess, NULL)
    if der_len <= 0 or der_len > FT_SESSION_DER_MAX:
        return 0
    i2d_SSL_SESSION(sess, &p)
    sid = SSL_SESSION_get_id(sess, &sid_len)
    stamp = shared.store_session(sid, sid_len, der, der_len,
                                 SSL_SESSION_get_time(sess) + SSL_SESSION_get_timeout(sess), &index)
    if stamp:
        # A resumption that comes back to this worker skips the d2i (keep_local takes its
        # own reference: OpenSSL keeps the one of this callback, we return 0).
        shared.keep_local(index, stamp, sess)
    return 0


cdef SSL_SESSION *_get_session_cb(SSL *ssl, const unsigned char *sid, int sid_len, int *copy) noexcept:
    cdef SharedState shared = _state_of(SSL_get_SSL_CTX(ssl))
    copy[0] = 0   # the returned session is ours to give away
    if shared is None:
        return NULL
    return shared.find_session(sid, sid_len)


cdef void _remove_session_cb(SSL_CTX *ctx, SSL_SESSION *sess) noexcept:
    cdef unsigned int sid_len = 0
    cdef const unsigned char *sid
    cdef SharedState shared = _state_of(ctx)
    if shared is None:
        return
    sid = SSL_SESSION_get_id(sess, &sid_len)
    shared.remove_session(sid, sid_len)


cdef int _ticket_key_cb(SSL *ssl, unsigned char *key_name, unsigned char *iv,
                        EVP_CIPHER_CTX *ctx, EVP_MAC_CTX *hctx, int enc) noexcept:
    """RFC 5077 tickets under the shared keys. Returns 1 (ok), 2 (ok, re-issue under
    the current key), 0 (decrypting: unknown key, full handshake; encrypting: no key, no
    ticket), -1 (error)."""
    cdef ft_ticket_key key
    cdef int index
    cdef SharedState shared = _state_of(SSL_get_SSL_CTX(ssl))
    if shared is None:
        return -1
    if enc:
        if shared.read_ticket_key(NULL, &key) < 0:
            return 0      # no key (never published, or torn): issue no ticket, serve on
        if RAND_bytes(iv, 16) != 1:
            return -1
        memcpy(key_name, key.name, 16)
        return 1 if ft_ticket_crypto_init(ctx, hctx, key.aes, key.hmac, iv, 1) else -1
    index = shared.read_ticket_key(key_name, &key)
    if index < 0:
        return 0
    if not ft_ticket_crypto_init(ctx, hctx, key.aes, key.hmac, iv, 0):
        return -1
    return 1 if index == 0 else 2


cdef void attach_shared(SSL_CTX *ctx, bint cache):
    """Wire an SSL_CTX to the shared cache and keys of its TLSContext (the callbacks find
    them through the context's app data: no process-wide state)."""
    if cache:
        # NO_INTERNAL: the shared table is the cache; a per-process copy would only
        # duplicate it (nginx does the same with ssl_session_cache shared).
        SSL_CTX_set_session_cache_mode(ctx, SSL_SESS_CACHE_SERVER | SSL_SESS_CACHE_NO_INTERNAL)
        SSL_CTX_sess_set_new_cb(ctx, _new_session_cb)
        SSL_CTX_sess_set_get_cb(ctx, _get_session_cb)
        SSL_CTX_sess_set_remove_cb(ctx, _remove_session_cb)
    SSL_CTX_set_tlsext_ticket_key_evp_cb(ctx, _ticket_key_cb)


def generate_ticket_key():
    """80 bytes from the CSPRNG: 16-byte name, 32-byte HMAC key, 32-byte AES key."""
    return os.urandom(80)
