"""The clocks the core reads, behind one object so that tests can set them.

Three clocks matter here. The proc connector stamps events with
CLOCK_MONOTONIC; /proc's start times count clock ticks since boot
(CLOCK_BOOTTIME, which keeps counting through suspend); people want wall-clock
times (CLOCK_REALTIME). :class:`Clock` converts between them from two offsets,
read together and refreshed now and then: BOOTTIME - MONOTONIC moves only across
a suspend, REALTIME - MONOTONIC when the wall clock is set.

Wall-clock start times come from REALTIME - BOOTTIME plus the start ticks,
which is right to the clock tick; /proc/stat's ``btime`` is a whole second and
would put every start up to a second early.
"""

from __future__ import annotations

import os
import time

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
REFRESH_NS = 10_000_000_000  # how often the offsets are re-read


def boottime_offset_ns() -> int:
    """CLOCK_BOOTTIME minus CLOCK_MONOTONIC: add it to a connector timestamp to get boot time."""
    return time.clock_gettime_ns(time.CLOCK_BOOTTIME) - time.clock_gettime_ns(time.CLOCK_MONOTONIC)


def monotonic_to_ticks(ts_ns: int, offset_ns: int) -> int:
    """A connector (monotonic) timestamp as stat's start_ticks, exact to within one tick."""
    return (ts_ns + offset_ns) * CLOCK_TICKS // 1_000_000_000


class Clock:
    """The system clocks. Subclass (or use :class:`ManualClock`) to control time in tests."""

    def __init__(self) -> None:
        self._boot_ns = 0  # BOOTTIME - MONOTONIC
        self._real_ns = 0  # REALTIME - MONOTONIC
        self._read_at = -REFRESH_NS
        self.refresh()

    def monotonic_ns(self) -> int:
        """CLOCK_MONOTONIC, the connector's clock."""
        return time.monotonic_ns()

    def _offsets(self) -> tuple[int, int]:
        mono = time.clock_gettime_ns(time.CLOCK_MONOTONIC)
        boot = time.clock_gettime_ns(time.CLOCK_BOOTTIME)
        real = time.clock_gettime_ns(time.CLOCK_REALTIME)
        return boot - mono, real - mono

    def refresh(self, now_ns: int | None = None) -> None:
        """Re-read the offsets if the last reading is older than ``REFRESH_NS``."""
        now = self.monotonic_ns() if now_ns is None else now_ns
        if now - self._read_at >= REFRESH_NS:
            self._boot_ns, self._real_ns = self._offsets()
            self._read_at = now

    @property
    def boottime_offset_ns(self) -> int:
        """BOOTTIME - MONOTONIC, as last read."""
        return self._boot_ns

    def ticks(self, mono_ns: int) -> int:
        """A monotonic timestamp as clock ticks since boot (stat's start_ticks, within a tick)."""
        return (mono_ns + self._boot_ns) * CLOCK_TICKS // 1_000_000_000

    def wall(self, mono_ns: int) -> float:
        """A monotonic timestamp as wall-clock seconds since the epoch."""
        return (mono_ns + self._real_ns) / 1e9

    def now(self) -> float:
        """Wall-clock seconds now."""
        return self.wall(self.monotonic_ns())

    def started_at(self, start_ticks: int) -> float:
        """Wall-clock start of a process that started ``start_ticks`` after boot."""
        return (self._real_ns - self._boot_ns) / 1e9 + start_ticks / CLOCK_TICKS


class ManualClock(Clock):
    """A clock that moves only when told: for tests of the core without the kernel."""

    def __init__(self, mono_ns: int = 1_000_000_000_000, boot_offset_ns: int = 5_000_000_000,
                 real_offset_ns: int = 1_700_000_000_000_000_000) -> None:
        self.mono = mono_ns
        self._fixed = (boot_offset_ns, real_offset_ns)
        super().__init__()

    def monotonic_ns(self) -> int:
        return self.mono

    def _offsets(self) -> tuple[int, int]:
        return self._fixed

    def advance(self, seconds: float) -> int:
        """Move time forward; returns the new monotonic time in ns."""
        self.mono += int(seconds * 1e9)
        return self.mono

    def mono_at_ticks(self, ticks: int) -> int:
        """A monotonic timestamp (ns) that :meth:`ticks` maps to exactly ``ticks``."""
        return -(-ticks * 1_000_000_000 // CLOCK_TICKS) - self._boot_ns
