/* OpenSSL 3.0 vs 3.5 shims. Keep this file small: each entry says why it exists. */
#ifndef FASTTERM_COMPAT_H
#define FASTTERM_COMPAT_H

#include <openssl/ssl.h>
#include <openssl/err.h>
#include <openssl/pem.h>
#include <openssl/x509.h>
#include <openssl/evp.h>
#include <openssl/objects.h>
#include <openssl/rand.h>
#include <openssl/ocsp.h>
#include <time.h>
#include "shm.h"

/* SSL_OP_PRIORITIZE_CHACHA exists in both, but guard builds against forks. */
#ifndef SSL_OP_PRIORITIZE_CHACHA
#define SSL_OP_PRIORITIZE_CHACHA 0
#endif

/* SSL_OP_NO_ANTI_REPLAY is 1.1.1+; keep the name available everywhere. */
#ifndef SSL_OP_NO_ANTI_REPLAY
#define SSL_OP_NO_ANTI_REPLAY 0
#endif

/* An OCSP thisUpdate/nextUpdate as unix seconds (ASN1_TIME_to_tm gives UTC fields; timegm
 * reads them as UTC): the master compares it with time(), the workers with a staple's expiry. */
static inline long long ft_asn1_time_unix(const ASN1_GENERALIZEDTIME *t)
{
    struct tm tm;
    if (t == NULL || !ASN1_TIME_to_tm(t, &tm))
        return 0;
    return (long long)timegm(&tm);
}

#endif
