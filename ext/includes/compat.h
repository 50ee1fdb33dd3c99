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
#include "shm.h"

/* SSL_OP_PRIORITIZE_CHACHA exists in both, but guard builds against forks. */
#ifndef SSL_OP_PRIORITIZE_CHACHA
#define SSL_OP_PRIORITIZE_CHACHA 0
#endif

/* SSL_OP_NO_ANTI_REPLAY is 1.1.1+; keep the name available everywhere. */
#ifndef SSL_OP_NO_ANTI_REPLAY
#define SSL_OP_NO_ANTI_REPLAY 0
#endif

#endif
