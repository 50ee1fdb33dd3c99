"""fastterm: a Cython-accelerated TLS terminator and HTTP/1.1 reverse proxy."""

from fastterm.errors import ConfigError, FasttermError, TLSError

__version__ = "0.1.0"
__all__ = ["ConfigError", "FasttermError", "TLSError", "__version__"]
