"""Bounded retries with exponential backoff for filesystem calls.

Transient failures (connection resets, timeouts, throttling: OSErrors that
are not about a missing path or permissions) are retried up to ``ATTEMPTS``
times; then the call fails with an ``IOError`` that names the operation and
the path, and chains the last error.
"""
from __future__ import annotations

import time

ATTEMPTS = 4
BASE_DELAY = 0.2  # seconds; doubles after each failure

_PERMANENT = (FileNotFoundError, FileExistsError, PermissionError, IsADirectoryError, NotADirectoryError)


class RetryError(IOError):
    """A filesystem call kept failing; the message names what and where."""


def is_transient(e: BaseException) -> bool:
    return isinstance(e, (OSError, TimeoutError, ConnectionError)) and not isinstance(e, _PERMANENT)


def retry(fn, *args, what: str, attempts: int | None = None, base_delay: float | None = None, **kwargs):
    """``fn(*args, **kwargs)``, retried on transient errors."""
    attempts = ATTEMPTS if attempts is None else attempts
    delay = BASE_DELAY if base_delay is None else base_delay
    for attempt in range(1, attempts + 1):
        try:
            return fn(*args, **kwargs)
        except BaseException as e:  # noqa: BLE001 - classified below
            if not is_transient(e):
                raise
            if attempt == attempts:
                raise RetryError(f"{what}: failed {attempts} times, giving up: {type(e).__name__}: {e}") from e
            time.sleep(delay)
            delay *= 2
