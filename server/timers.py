"""Repeating timers for the socket loop (poll timeout = time to the nearest deadline)."""

from __future__ import annotations

import logging
import time
from typing import Callable

log = logging.getLogger(__name__)


class Timers:
    """A few repeating callbacks, run from the loop, never from a signal or another thread."""

    def __init__(self):
        self._timers: list[list] = []   # [deadline, interval, callback]

    def every(self, seconds: float, callback: Callable[[], None], *, now: bool = False) -> None:
        """Run ``callback`` every ``seconds`` (first at once when ``now``)."""
        start = time.monotonic()
        self._timers.append([start if now else start + seconds, seconds, callback])

    def ms_to_next(self) -> int:
        """Milliseconds until the nearest deadline (0 if one is due), for ``poll``."""
        if not self._timers:
            return 1000
        left = min(t[0] for t in self._timers) - time.monotonic()
        return max(0, int(left * 1000) + 1)

    def run_due(self) -> None:
        """Run every callback whose deadline has passed; one failing does not stop the rest."""
        now = time.monotonic()
        for timer in self._timers:
            if timer[0] <= now:
                timer[0] = now + timer[1]
                try:
                    timer[2]()
                except Exception:  # a timer bug must not kill the loop; it runs again later
                    log.exception("timer %s failed", getattr(timer[2], "__name__", timer[2]))
