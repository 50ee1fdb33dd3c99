"""The exceptions every layer raises; the Cython core maps OpenSSL's error queue onto these."""


class FasttermError(Exception):
    """Base of every fastterm error."""


class ConfigError(FasttermError):
    """A configuration or certificate problem, located like ``nginx -t`` does.

    ``str(err)`` reads ``file:line: directive: message`` when the location is known.
    """

    def __init__(self, message: str, *, file: str | None = None, line: int | None = None,
                 directive: str | None = None):
        self.message = message
        self.file = file
        self.line = line
        self.directive = directive
        super().__init__(self._format())

    def _format(self) -> str:
        where = ""
        if self.file:
            where = self.file if self.line is None else f"{self.file}:{self.line}"
            where += ": "
        what = f"{self.directive}: " if self.directive else ""
        return f"{where}{what}{self.message}"


class TLSError(FasttermError):
    """An OpenSSL failure; ``reasons`` holds each ``ERR_error_string_n`` entry of the queue."""

    def __init__(self, message: str, reasons: tuple[str, ...] = ()):
        self.reasons = reasons
        super().__init__(message if not reasons else f"{message}: {'; '.join(reasons)}")
