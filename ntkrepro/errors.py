"""User-facing errors: each carries one line saying what is wrong and how to fix it."""


class NtkreproError(Exception):
    """Base class; the command line prints `str(err)` as one line and exits non-zero."""


class ConfigError(NtkreproError, ValueError):
    """A configuration value is impossible (width < 1, unknown activation, ...)."""


class DataError(NtkreproError):
    """A data set cannot be found or cannot supply what the configuration asks for."""
