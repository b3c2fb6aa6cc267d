"""Progress reporting for long steps (``partition``'s read and write).

On a terminal (or in a notebook) a tqdm bar that stays on screen at its
final count when the step ends.  Elsewhere (a log file, a pipe, a CI job) no
carriage returns: a plain line at most every ``LOG_INTERVAL_S`` seconds and
one when the step ends, with the final count.  Everything goes to stderr.
"""
from __future__ import annotations

import sys
import time

#: seconds between two progress lines outside a terminal
LOG_INTERVAL_S = 30.0


def _interactive(file) -> bool:
    if type(file).__module__.startswith("ipykernel"):  # a notebook cell: tqdm.auto draws a widget
        return True
    try:
        return bool(file.isatty())
    except (AttributeError, ValueError):
        return False


class _Silent:
    n = 0

    def update(self, k: int = 1) -> None:
        self.n += k

    def set_postfix_str(self, s: str) -> None:
        pass

    def close(self) -> None:
        pass


class LogLines:
    """A progress counter that writes plain lines: ``DESC: N/TOTAL UNIT
    (P%) [POSTFIX]``, at most every ``interval`` seconds, and a last one with
    the final count and the rate when closed (``interval``: default
    ``LOG_INTERVAL_S``)."""

    def __init__(self, desc: str, total: int | None, unit: str, file, interval: float | None = None):
        self.desc, self.total, self.unit, self.file = desc, total, unit, file
        self.interval = LOG_INTERVAL_S if interval is None else interval
        self.n = 0
        self.postfix = ""
        self._t0 = self._last = time.monotonic()
        self._closed = False

    def _count(self) -> str:
        if self.total is None:
            return f"{self.n:,} {self.unit}"
        pct = f" ({100 * self.n / self.total:.0f}%)" if self.total else ""
        return f"{self.n:,}/{self.total:,} {self.unit}{pct}"

    def _line(self, text: str) -> None:
        print(f"{self.desc}: {text}" + (f" [{self.postfix}]" if self.postfix else ""), file=self.file, flush=True)

    def update(self, k: int = 1) -> None:
        self.n += k
        now = time.monotonic()
        if now - self._last >= self.interval:
            self._last = now
            self._line(self._count())

    def set_postfix_str(self, s: str) -> None:
        self.postfix = s

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        dt = time.monotonic() - self._t0
        rate = f", {self.n / dt:,.0f} {self.unit}/s" if dt > 0 and self.n else ""
        self._line(f"{self._count()} in {dt:.1f} s{rate}")


class _Bar:
    """A context manager around a counter (tqdm, LogLines or nothing)."""

    def __init__(self, impl):
        self._impl = impl

    @property
    def n(self) -> int:
        return self._impl.n

    def update(self, k: int = 1) -> None:
        self._impl.update(k)

    def set_postfix_str(self, s: str) -> None:
        self._impl.set_postfix_str(s)

    def close(self) -> None:
        self._impl.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def bar(desc: str, *, total: int | None = None, unit: str = "it", enabled: bool = True, file=None) -> _Bar:
    """A progress counter for one step: ``with bar("partition: read", total=n, unit="ex") as b: b.update(k)``.
    ``total`` None: unknown.  ``file``: default stderr."""
    if not enabled:
        return _Bar(_Silent())
    file = sys.stderr if file is None else file
    if _interactive(file):
        from tqdm.auto import tqdm

        return _Bar(tqdm(total=total, desc=desc, unit=unit, leave=True, file=file))
    return _Bar(LogLines(desc, total, unit, file))


def note(text: str, *, enabled: bool = True, file=None) -> None:
    """One progress message, on its own line (above any live bar)."""
    if not enabled:
        return
    file = sys.stderr if file is None else file
    if _interactive(file):
        from tqdm.auto import tqdm

        tqdm.write(text, file=file)
    else:
        print(text, file=file, flush=True)
