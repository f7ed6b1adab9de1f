"""Host-wide process states, sampled by a thread of their own.

The proc connector says when processes start and end, not whether they are
running, sleeping or stuck in D state, so those counts need a walk of every
/proc/PID/stat. That walk is O(processes); it runs here, every few seconds,
so that a scrape only reads the last result.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from .procfs import PROC, STATE_NAMES, AccessDenied, ProcessGone, iter_pids, read_stat


@dataclass(frozen=True, slots=True)
class HostStates:
    """Processes by state name at ``ts`` (wall clock), and how long the walk took."""

    ts: float
    by_state: dict[str, int] = field(default_factory=dict)
    walk_seconds: float = 0.0


def count_states(proc: str = PROC) -> dict[str, int]:
    """Walk /proc once: processes by state name (running, sleeping, zombie, ...)."""
    counts = dict.fromkeys(sorted(set(STATE_NAMES.values())), 0)
    for pid in iter_pids(proc):
        try:
            letter = read_stat(pid, proc).state
        except (ProcessGone, AccessDenied, ValueError):
            continue
        name = STATE_NAMES.get(letter, "other")
        counts[name] = counts.get(name, 0) + 1
    return counts


class HostStateSampler(threading.Thread):
    """Refreshes :attr:`latest` every ``interval_s`` until stopped."""

    def __init__(self, interval_s: float = 15.0, proc: str = PROC,
                 on_start: Callable[[], None] | None = None) -> None:
        super().__init__(name="proctree-host-states", daemon=True)
        self.interval_s = interval_s
        self.on_start = on_start  # run first in the thread (the daemon lowers its priority)
        self.proc = proc
        self.latest: HostStates | None = None
        self._stop_event = threading.Event()

    def sample(self) -> HostStates:
        """Walk /proc now and remember the result."""
        t0 = time.monotonic()
        by_state = count_states(self.proc)
        self.latest = HostStates(ts=time.time(), by_state=by_state,
                                 walk_seconds=time.monotonic() - t0)
        return self.latest

    def run(self) -> None:
        if self.on_start is not None:
            self.on_start()
        while True:
            self.sample()
            if self._stop_event.wait(self.interval_s):
                return

    def stop(self) -> None:
        """End the thread (returns at once; the thread exits within one walk)."""
        self._stop_event.set()
