"""At most one warning per key per period: a stranded run (its version loaded nowhere) refuses
every input it gets, and one line per input would bury the log it is meant to stand out in."""

from __future__ import annotations

import time
from collections.abc import Callable, Hashable
from dataclasses import dataclass


@dataclass(slots=True)
class _Window:
    opened: float
    held: int = 0


class LogLimit:
    """Lets a warning about a key through once per `period` seconds, counting the ones it holds
    back in between. Memory stays bounded: past `max_keys`, keys whose period is over go."""

    def __init__(
        self,
        period: float = 60.0,
        *,
        clock: Callable[[], float] = time.monotonic,
        max_keys: int = 10_000,
    ) -> None:
        self._period = period
        self._clock = clock
        self._max_keys = max_keys
        self._windows: dict[Hashable, _Window] = {}

    def admit(self, key: Hashable) -> int | None:
        """None: hold this warning back. Otherwise log it, saying how many were held back since
        the last one (0 the first time)."""
        now = self._clock()
        window = self._windows.get(key)
        if window is not None and now - window.opened < self._period:
            window.held += 1
            return None
        if window is None and len(self._windows) >= self._max_keys:
            self._forget_before(now - self._period)
        self._windows[key] = _Window(now)
        return 0 if window is None else window.held

    def _forget_before(self, cutoff: float) -> None:
        self._windows = {k: w for k, w in self._windows.items() if w.opened > cutoff}
