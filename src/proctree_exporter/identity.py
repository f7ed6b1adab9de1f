"""Process identity: (pid, start_ticks), which survives PID reuse.

A pid alone names whichever process holds it now; with the start time (clock
ticks since boot, /proc/PID/stat field 22) it names one process for ever. A
start time read from /proc is exact. One derived from a FORK event's
timestamp (no /proc read on the fork path) is exact to within one tick, so
such an identity matches a /proc start one tick either side. That rule lives
here and nowhere else.
"""

from __future__ import annotations

from typing import NamedTuple

TICK_TOLERANCE = 1  # ticks a start derived from an event timestamp may be off by


def same_start(known: int, seen: int, exact: bool = False) -> bool:
    """Whether a process whose start reads ``seen`` is the one known to start at ``known``.

    ``exact``: ``known`` was read from /proc (not derived from a timestamp).
    """
    return seen == known if exact else -TICK_TOLERANCE <= seen - known <= TICK_TOLERANCE


class Identity(NamedTuple):
    """One process for ever: its pid and its start time in clock ticks since boot.

    A tuple, so ``pid, start = identity`` works and plain ``(pid, start)``
    tuples compare and hash equal to it.
    """

    pid: int
    start_ticks: int

    def matches(self, pid: int, start_ticks: int, *, exact: bool = False) -> bool:
        """Whether ``(pid, start_ticks)`` names this process (see :func:`same_start`)."""
        return pid == self.pid and same_start(self.start_ticks, start_ticks, exact)
