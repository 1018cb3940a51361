"""User-facing errors: each carries one line saying what is wrong and how to fix it."""
from __future__ import annotations

import argparse
import functools
import sys


class NtkreproError(Exception):
    """Base class; the command line prints `str(err)` as one line and exits non-zero."""


class ConfigError(NtkreproError, ValueError):
    """A configuration value is impossible (width < 1, unknown activation, ...)."""


class DataError(NtkreproError):
    """A data set cannot be found or cannot supply what the configuration asks for."""


class ArgumentParser(argparse.ArgumentParser):
    """argparse for the project's commands: a bad argument is one line `error: ...`, exit status 2
    (no usage dump; `--help` shows it)."""

    def error(self, message):
        self.exit(2, f"error: {message} (see {self.prog} --help)\n")


def one_line_errors(main):
    """Wrap a command's `main(argv) -> int`: `NtkreproError` -> one line `error: ...` on stderr, exit 2."""
    @functools.wraps(main)
    def wrapped(argv=None) -> int:
        try:
            return main(argv)
        except NtkreproError as err:
            print(f"error: {err}", file=sys.stderr, flush=True)
            return 2
    return wrapped
