/* Layout of the region the master maps (MAP_SHARED) before forking workers.
 * Plain C so every process agrees on it byte for byte. */
#ifndef FASTTERM_SHM_H
#define FASTTERM_SHM_H

#include <stdint.h>
#include <pthread.h>
#include <openssl/evp.h>
#include <openssl/core_names.h>
#include <openssl/params.h>

#define FT_MAGIC 0x66747368u          /* "ftsh" */
#define FT_TICKET_KEYS 8
#define FT_WORKER_SLOTS 512
#define FT_COUNTERS 48
#define FT_SESSION_ID_MAX 32
#define FT_SESSION_DER_MAX 1200
#define FT_PROBE 8
#define FT_LOCAL_SESSIONS 1024        /* decoded sessions a worker keeps (by slot), ~1 KiB each */
#define FT_OCSP_SLOTS 256               /* stapled certificates; 1 MiB */
#define FT_OCSP_KEY_LEN 32            /* certs/ocsp.py fingerprint(): SHA-256 */
#define FT_OCSP_DER_MAX 4096          /* a response with its responder's certificate: ~1.5-2.5 KiB */
#define FT_SEQLOCK_RETRIES 1000       /* a write is a 640-byte memcpy: far fewer reads than this */

typedef struct {
    unsigned char name[16];
    unsigned char hmac[32];
    unsigned char aes[32];
} ft_ticket_key;                      /* nginx's 80-byte ssl_session_ticket_key order */

typedef struct {
    uint64_t seq;                     /* seqlock: odd while the master writes */
    uint32_t count;                   /* keys[0] encrypts; all decrypt */
    uint32_t pad;
    ft_ticket_key keys[FT_TICKET_KEYS];
} ft_ticket_keys;

typedef struct {
    uint32_t used;
    uint32_t pid;
    uint32_t generation;
    uint32_t pad;
    int64_t counters[FT_COUNTERS];
} ft_worker_slot;

typedef struct {
    int64_t expires;                  /* unix seconds; 0: free. Zeroed before the entry is
                                         written, set after: a writer killed between leaves
                                         a free slot, never a live torn one */
    uint64_t stamp;                   /* the store that wrote it (session_stats[0] then): a
                                         worker's decoded copy is this entry while equal */
    uint32_t der_len;
    uint32_t id_len;
    unsigned char id[FT_SESSION_ID_MAX];
    unsigned char der[FT_SESSION_DER_MAX];
} ft_session;

typedef struct {
    uint64_t seq;                     /* seqlock: odd while the master writes */
    int64_t expires;                  /* the response's nextUpdate, unix seconds; 0: nothing to staple */
    uint32_t der_len;
    uint32_t pad;
    unsigned char key[FT_OCSP_KEY_LEN]; /* which certificate (and stapling policy) the slot is for */
    unsigned char der[FT_OCSP_DER_MAX];
} ft_ocsp;                            /* one certificate's OCSP response, written by the master only */

typedef struct {
    uint32_t magic;
    uint32_t nsessions;
    pthread_mutex_t lock;             /* process-shared, robust: a killed worker can't wedge it */
    int64_t session_stats[4];         /* stores, hits, misses, evictions */
    ft_ticket_keys tickets;
    int64_t retired[FT_COUNTERS];     /* counters of workers that have exited */
    ft_worker_slot workers[FT_WORKER_SLOTS];
    ft_ocsp ocsp[FT_OCSP_SLOTS];
    ft_session sessions[];
} ft_shared;

/* The 0-RTT replay table (RFC 8446 §8): each ClientHello random whose early data was
 * accepted, kept until it is past OpenSSL's ticket-age window; a second sighting is a
 * replay. Its own mapping and lock: the session cache's lock is not held on this path. */
#define FT_REPLAY_MAGIC 0x66747270u   /* "ftrp" */
#define FT_REPLAY_PROBE 16
#define FT_CLIENT_RANDOM 32

typedef struct {
    int64_t expires;                  /* CLOCK_MONOTONIC seconds (one clock for all processes) */
    unsigned char random[FT_CLIENT_RANDOM];
} ft_replay_entry;                    /* 40 bytes */

typedef struct {
    uint32_t magic;
    uint32_t nentries;
    pthread_mutex_t lock;             /* process-shared, robust */
    unsigned char node_id[16];        /* this node's tickets carry it (ticket app data) */
    int64_t stats[3];                 /* recorded, replays, full */
    ft_replay_entry entries[];
} ft_replay;

/* Active health checks (fastterm/health.py): one word per checked (upstream, server), written
 * by the master only, read by every worker on each server choice. Bit 0: down; the bits above
 * count the times the server came up, so a worker that sees the count move clears its own
 * passive-ejection state for it ("active checks bring a server back"). Its own mapping. */
#define FT_HEALTH_SLOTS 4096
#define FT_HEALTH_DOWN 1u

static inline uint64_t ft_load_acquire(const uint64_t *p) { return __atomic_load_n(p, __ATOMIC_ACQUIRE); }
static inline void ft_store_release(uint64_t *p, uint64_t v) { __atomic_store_n(p, v, __ATOMIC_RELEASE); }
static inline void ft_fence(void) { __atomic_thread_fence(__ATOMIC_SEQ_CST); }
static inline int64_t ft_load_acquire_i64(const int64_t *p) { return __atomic_load_n(p, __ATOMIC_ACQUIRE); }
static inline void ft_store_relaxed_i64(int64_t *p, int64_t v) { __atomic_store_n(p, v, __ATOMIC_RELAXED); }
static inline void ft_store_release_i64(int64_t *p, int64_t v) { __atomic_store_n(p, v, __ATOMIC_RELEASE); }

/* The ticket callback's cipher + MAC set-up (RFC 5077 §4 recommended construction:
 * AES-256-CBC, HMAC-SHA256), kept in C because OSSL_PARAM arrays are macro territory. */
static int ft_ticket_crypto_init(EVP_CIPHER_CTX *ctx, EVP_MAC_CTX *hctx, const unsigned char *aes,
                                 const unsigned char *hmac, const unsigned char *iv, int enc)
{
    /* Fetched once per process and kept for its life: the legacy EVP_aes_256_cbc() makes every
     * Init fetch the cipher again by name under the provider store's lock (OpenSSL 3.0's
     * implicit fetch; openssl#21005: "pre-fetching algorithms avoids the majority of the losses"). */
    static EVP_CIPHER *cipher = NULL;
    OSSL_PARAM params[3];
    if (cipher == NULL)
        cipher = EVP_CIPHER_fetch(NULL, "AES-256-CBC", NULL);
    if (cipher == NULL)
        return 0;
    params[0] = OSSL_PARAM_construct_octet_string(OSSL_MAC_PARAM_KEY, (void *)hmac, 32);
    params[1] = OSSL_PARAM_construct_utf8_string(OSSL_MAC_PARAM_DIGEST, (char *)"SHA256", 0);
    params[2] = OSSL_PARAM_construct_end();
    if (enc) {
        if (EVP_EncryptInit_ex(ctx, cipher, NULL, aes, iv) != 1)
            return 0;
    } else {
        if (EVP_DecryptInit_ex(ctx, cipher, NULL, aes, iv) != 1)
            return 0;
    }
    return EVP_MAC_CTX_set_params(hctx, params) == 1;
}

#endif
