# The headers of the one extension module (uvloop's loop.pxd style).
from includes.openssl cimport *
from includes.system cimport *

include "tls.pxd"
