# cython: language_level=3
# fastterm._core: the hot path. One module so calls between the TLS engine,
# the HTTP framing, the exchange, the codecs and the loop stay C calls (uvloop's loop.pyx layout).

cimport cython
from includes.openssl cimport *
from includes.system cimport *
from includes.nghttp2 cimport *

import os

include "errors.pyx"
include "shm.pyx"
include "tls.pyx"
include "http.pyx"
include "exchange.pyx"
include "upstream.pyx"
include "proxyproto.pyx"
include "loop.pyx"
include "backend_tls.pyx"
include "h1.pyx"
include "h2.pyx"
include "accesslog.pyx"
