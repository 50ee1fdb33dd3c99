# The headers of fastterm._core (uvloop's loop.pxd style): each ext/*.pxd in flow order.
cimport cython
from cpython.ref cimport PyObject
from includes.openssl cimport *
from includes.system cimport *
from includes.nghttp2 cimport *

include "shm.pxd"
include "tls.pxd"
include "http.pxd"
include "exchange.pxd"
include "upstream.pxd"
include "proxyproto.pxd"
include "loop.pxd"
include "backend_tls.pxd"
include "h1.pxd"
include "h2.pxd"
include "accesslog.pxd"
