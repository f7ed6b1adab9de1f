"""The change log: each root's typed events in order, the one outlet of the core.

The collector thread appends (it is the only writer); any number of readers,
each with its own cursor (the ``seq`` of the last event it has read), take the
events after their cursor without a lock: the log is a ring of fixed capacity
whose slots hold events that carry their own ``seq``, so a reader can tell an
event it wanted from one that overwrote it meanwhile, and counts what it lost.

A reader that lost events (or a new one) rebuilds its view from a
:class:`Relist`, the root's state as typed events at one position of its log,
and reads on from there. :class:`EventSource` is everything a consumer needs
of the core, so consumers never touch the tree, its lock or /proc.
"""

from __future__ import annotations

import secrets
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from .events import EventKind, RootEvent
from .rootspec import RootSpec


class ChangeLog:
    """One root's events, newest ``capacity`` kept. Appended by one thread, read by any."""

    def __init__(self, root: str, capacity: int) -> None:
        self.root = root
        self.capacity = capacity
        self.seq = 0  # seq of the newest event; events are numbered from 1
        # tells this log from an earlier one of the same root (before a restart of the
        # exporter, or of the root by a reload), whose seqs meant other events
        self.epoch = secrets.token_hex(3)
        self._ring: list[RootEvent] = []

    def append(self, event: RootEvent) -> None:
        """Add ``event``, whose ``seq`` must be ``self.seq + 1``. Writer thread only."""
        ring = self._ring
        if len(ring) < self.capacity:
            ring.append(event)
        else:
            ring[(event.seq - 1) % self.capacity] = event
        self.seq = event.seq  # published after the slot is written

    @property
    def first_seq(self) -> int:
        """The oldest seq still held (``seq + 1`` when empty)."""
        return max(self.seq - len(self._ring) + 1, 1)

    def since(self, after: int, limit: int | None = None) -> tuple[list[RootEvent], int]:
        """Events with seq > ``after`` in order (at most ``limit``), and how many of
        those were lost (overwritten before they could be read). O(events returned)."""
        end = self.seq
        if end <= after:
            return [], 0
        cap = self.capacity
        start = max(after + 1, end - min(len(self._ring), cap) + 1)
        if limit is not None:
            end = min(end, start + limit - 1)
        ring = self._ring
        out = [ring[(s - 1) % cap] for s in range(start, end + 1)]
        # slots overwritten while we read hold newer events: drop up to the last such
        bad = -1
        for i, ev in enumerate(out):
            if ev.seq != start + i:
                bad = i
        if bad >= 0:
            out = out[bad + 1:]
        lost = (start - after - 1) + bad + 1
        return out, lost

    def tail(self, n: int) -> list[RootEvent]:
        """The newest ``n`` events (fewer if the log holds fewer)."""
        return self.since(max(self.seq - n, 0))[0]


class Wakeup:
    """Tells readers blocked in :meth:`wait` that some log moved on. Cheap to notify
    when nobody waits, so the collector notifies once per housekeeping round."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._generation = 0
        self._waiting = 0

    @property
    def generation(self) -> int:
        """Bumped on every :meth:`notify`."""
        return self._generation

    def notify(self) -> None:
        """Wake every waiter (collector thread)."""
        self._generation += 1
        if self._waiting:
            with self._cond:
                self._cond.notify_all()

    def wait(self, seen: int, timeout: float | None) -> int:
        """Block until the generation differs from ``seen`` or ``timeout`` passes;
        return the generation."""
        with self._cond:
            if self._generation != seen:
                return self._generation
            self._waiting += 1
            try:
                self._cond.wait(timeout)
            finally:
                self._waiting -= 1
            return self._generation


@dataclass(frozen=True, slots=True)
class Relist:
    """A root's whole state as typed events, true at position ``seq`` of its log.

    ``events`` describe every member, exited member still kept and tombstone:
    ``joined`` with its facts, then ``exited`` and the ``class`` events that hold
    for it, oldest first. Counters are the root's since it was added.
    """

    root: str
    seq: int
    spec: RootSpec
    up: bool
    events: tuple[RootEvent, ...]
    spawned_total: int
    exited_total: int
    restarts_total: int
    had_instance: bool


class EventSource(Protocol):
    """What consumers need of the core: the roots' names, their logs, relists."""

    wakeup: Wakeup

    def root_names(self) -> Sequence[str]:
        """The roots being watched now."""

    def log(self, name: str) -> ChangeLog:
        """The change log of root ``name`` (KeyError if there is none)."""

    def relist(self, name: str) -> Relist:
        """Root ``name``'s state now, with the log position it is true at (KeyError)."""

    def warnings(self, name: str) -> tuple[str, ...]:
        """Why root ``name`` is down, if the core knows (a bad pidfile, no match)."""


def read_root(source: EventSource, name: str, seen: ChangeLog | None, after: int
              ) -> tuple[ChangeLog, Relist | None, list[RootEvent]]:
    """What a reader holding its own cursor (``seen``, ``after``) on root ``name`` has
    to apply next: the root's log, a relist to start from when the log is not the one
    it read (a new root, or one replaced) or it fell behind, and the events after that,
    up to a ``root_removed``. KeyError if the root is not watched."""
    log = source.log(name)
    relist = None
    if log is not seen:
        relist = source.relist(name)
        after = relist.seq
    events, lost = log.since(after)
    if lost:
        relist = source.relist(name)
        events, _ = log.since(relist.seq)
    for i, ev in enumerate(events):
        if ev.kind is EventKind.ROOT_REMOVED:
            return log, relist, events[:i]
    return log, relist, events


def lost_event(root: str, after: int, count: int, ts: float) -> RootEvent:
    """The synthetic event a reader hands on when ``count`` events fell off the log."""
    return RootEvent(EventKind.LOST, root, after + count, ts, 0, 0, None, count=count)
