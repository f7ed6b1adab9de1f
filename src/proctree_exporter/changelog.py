"""The change log: each root's typed events in order, the one outlet of the core.

The collector thread appends (it is the only writer); any number of readers,
each with its own cursor (the ``seq`` of the last event it has read), take the
events after their cursor without a lock: the log is a ring of fixed capacity,
and the writer moves the log's start past a slot before it overwrites it, so a
reader can tell an event it wanted from one that overwrote it meanwhile, and
counts what it lost. The ring holds each event as a record, a tuple of the fields
its kind sets (about half the memory of a RootEvent); readers get RootEvents.

Two bounds, whichever is hit first: ``max_events`` (the root's
``change_log_size``) and ``max_bytes`` of memory (``change_log_max_bytes``), as
estimated per event by :func:`event_bytes` in O(1) from its kind and the lengths
of its strings. Past either, the oldest events are dropped (their slots emptied,
so their memory is freed at once), and a reader behind them is told how many it
lost, the same way for both.

A reader that lost events (or a new one) rebuilds its view from a
:class:`Relist`, the root's state as typed events at one position of its log,
and reads on from there. :class:`EventSource` is everything a consumer needs
of the core, so consumers never touch the tree, its lock or /proc.
"""

from __future__ import annotations

import secrets
import threading
from array import array
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from operator import itemgetter
from typing import Any, Protocol

from .events import EventKind, RootEvent
from .rootspec import RootSpec

# How the log holds an event: not the 35-slot RootEvent (328 bytes, most of them None)
# but a record, a plain tuple of what its kind sets: (kind, ts, pid, start_ticks, comm,
# *the kind's fields below, in this order), trailing Nones left off. ``root`` is the
# log's; ``seq`` is where it sits in the ring. A reader gets the same RootEvent back
# (:func:`expand`); an event carrying a field its kind does not set here is kept whole.
LAYOUT: dict[EventKind, tuple[str, ...]] = {
    EventKind.JOINED: ("exe", "uid", "ppid", "lineage_ppid", "lineage_start",
                       "lineage_known", "lineage_source", "depth", "started_at",
                       "cmdline", "ancestors"),
    EventKind.EXEC: ("exe", "uid", "prev_comm", "prev_exe", "cmdline", "prev_cmdline"),
    EventKind.REPARENTED: ("ppid", "prev_ppid"),
    EventKind.EXITED: ("depth", "exit_code", "exit_signal", "core_dumped"),
    EventKind.CLASS: ("old_class", "new_class", "other_pid", "other_start_ticks",
                      "other_comm", "ppid", "seconds"),
    EventKind.ACTION: ("signal", "outcome"),
    EventKind.RESTART: (),
    EventKind.ROOT_UP: ("instances",),
    EventKind.ROOT_DOWN: ("instances",),
    EventKind.ROOT_REMOVED: (),
    EventKind.LEFT: (),
    EventKind.LOST: ("count",),
}
Record = tuple[Any, ...]
_COMMON = ("kind", "ts", "pid", "start_ticks", "comm")
_NFIELDS = len(RootEvent._fields)
_NONES = (None,) * _NFIELDS
_new_event = tuple.__new__
# per kind: the record's fields out of a RootEvent; the fields it must leave None (and
# how many); RootEvent's fields out of (the record padded to its length, root, seq, None)
_PACK: dict[EventKind, Callable[[RootEvent], Record]] = {}
_REST: dict[EventKind, tuple[Callable[[RootEvent], Record], int]] = {}
_UNPACK: dict[EventKind, tuple[int, Callable[[Record], Record]]] = {}
for _kind, _layout in LAYOUT.items():
    _names = _COMMON + _layout
    _PACK[_kind] = itemgetter(*(RootEvent._fields.index(f) for f in _names))
    _rest = [i for i, f in enumerate(RootEvent._fields) if f not in (*_names, "root", "seq")]
    _REST[_kind] = (itemgetter(*_rest, _rest[0]), len(_rest) + 1)  # a tuple, even of one
    _n = len(_names)
    _UNPACK[_kind] = (_n, itemgetter(*(
        _names.index(f) if f in _names else {"root": _n, "seq": _n + 1}.get(f, _n + 2)
        for f in RootEvent._fields)))
del _kind, _layout, _names, _rest, _n
# where a join's and an exec's strings sit in their records
_J_EXE, _J_CMDLINE, _J_ANCESTORS = (5 + LAYOUT[EventKind.JOINED].index(f)
                                    for f in ("exe", "cmdline", "ancestors"))
_X_STRINGS = (4, *(5 + LAYOUT[EventKind.EXEC].index(f) for f in ("exe", "cmdline")))


def pack(ev: RootEvent, root: str) -> Record | RootEvent:
    """``ev`` as the log of root ``root`` holds it: a record (trailing Nones left off),
    or the event itself when it sets a field its kind's record has no place for, or
    names another root."""
    kind = ev[0]
    rest, unset = _REST[kind]
    if ev[1] != root or rest(ev).count(None) != unset:
        return ev
    rec = _PACK[kind](ev)
    n = len(rec)
    while n > 5 and rec[n - 1] is None:
        n -= 1
    return rec if n == len(rec) else rec[:n]


def expand(rec: Record | RootEvent, root: str, seq: int) -> RootEvent:
    """The RootEvent that record ``rec`` stands for, at ``seq`` of root ``root``'s log."""
    if type(rec) is RootEvent:
        return rec
    n, gather = _UNPACK[rec[0]]
    return _new_event(RootEvent, gather(rec + _NONES[: n - len(rec)] + (root, seq, None)))


# What an event costs in the log, in bytes as tracemalloc counts them (CPython 3.11;
# measured by bench/changelog.py, which prints how close the estimate comes). Every
# event: its record (a tuple: 40, and 8 per field held), its own ts (24), its ring slot
# and size record (12). A join also brings in its process's pid and start_ticks (which
# the process's later events share) and started_at; an instance's join, its
# ancestors. A class event may bring in the other process's pid and start, and a
# zombie's seconds. An event kept whole (see pack): its 35-slot tuple and its seq.
_RECORD_BYTES, _FIELD_BYTES = 40 + 24 + 12, 8
EVENT_BYTES = _RECORD_BYTES + 5 * _FIELD_BYTES  # an event that sets only the common fields
_KIND_BYTES = {kind: _RECORD_BYTES for kind in EventKind} | {
    EventKind.JOINED: _RECORD_BYTES + 80,
    EventKind.CLASS: _RECORD_BYTES + 32,
}
_WHOLE_BYTES = 40 + _FIELD_BYTES * _NFIELDS + 28  # the tuple and its seq
_ANCESTORS_BYTES = 40  # the tuple; each Ancestor (a 5-slot tuple) adds 8 + 80
_ANCESTOR_BYTES = 88
# a str: 49 bytes and one per character when ASCII, up to 4 per character otherwise
_STR_BYTES, _WIDE_STR_BYTES = 49, 80
_JOINED, _EXEC = EventKind.JOINED, EventKind.EXEC  # an enum's attribute costs a lookup


def _str_bytes(s: str | None) -> int:
    if s is None:
        return 0
    return _STR_BYTES + len(s) if s.isascii() else _WIDE_STR_BYTES + 4 * len(s)


def record_bytes(rec: Record | RootEvent) -> int:
    """An estimate of the memory ``rec`` holds in a change log, O(1), about 0.2 us
    (see :func:`event_bytes`)."""
    kind = rec[0]
    if type(rec) is RootEvent:  # kept whole
        ev: RootEvent = rec  # type: ignore[assignment]
        n = _WHOLE_BYTES + _KIND_BYTES[kind] - _RECORD_BYTES + 40 - 5 * _FIELD_BYTES
        if kind is _JOINED:
            n += _str_bytes(ev.exe) + _str_bytes(ev.cmdline)
            if ev.ancestors:
                n += _ANCESTORS_BYTES + _ANCESTOR_BYTES * len(ev.ancestors)
        elif kind is _EXEC:
            n += _str_bytes(ev.comm) + _str_bytes(ev.exe) + _str_bytes(ev.cmdline)
        return n
    size = len(rec)
    n = _KIND_BYTES[kind] + _FIELD_BYTES * size
    if kind is _JOINED:
        if size > _J_EXE:
            s = rec[_J_EXE]
            if s is not None:
                n += _STR_BYTES + len(s) if s.isascii() else _WIDE_STR_BYTES + 4 * len(s)
            if size > _J_CMDLINE:
                n += _str_bytes(rec[_J_CMDLINE])
                if size > _J_ANCESTORS and rec[_J_ANCESTORS]:
                    n += _ANCESTORS_BYTES + _ANCESTOR_BYTES * len(rec[_J_ANCESTORS])
    elif kind is _EXEC:
        for i in _X_STRINGS:  # comm, exe, cmdline, as far as held
            if i >= size:
                break
            s = rec[i]
            if s is not None:
                n += _STR_BYTES + len(s) if s.isascii() else _WIDE_STR_BYTES + 4 * len(s)
    return n


def event_bytes(ev: RootEvent) -> int:
    """An estimate of the memory ``ev`` holds in a change log, O(1).

    The strings counted are those a process's events bring in: a join's exe and
    command line, an exec's new comm, exe and command line. The comm every event
    carries, a class event's other comm and an exec's previous strings are the
    process's (or its parent's) already, and are not counted again. A forked
    child's exe and command line are its parent's strings, counted all the same, and
    so are strings the tree interns (a few dozen programs' comm and exe): the estimate
    errs high, by 12 to 32% on the storms bench/changelog.py measures (an event's fixed
    part is within a few bytes of what tracemalloc counts).
    """
    return record_bytes(pack(ev, ev.root))


class ChangeLog:
    """One root's events: the newest ``capacity`` (``max_events``) kept, and no more
    than ``max_bytes`` of them (estimated, :func:`event_bytes`; None: no byte bound),
    whichever is less (the newest event is always kept). Appended by one thread, read
    by any. Events are held as records (:func:`pack`), and given back as RootEvents."""

    def __init__(self, root: str, capacity: int, max_bytes: int | None = None) -> None:
        self.root = root
        self.max_events = capacity
        self.max_bytes = max_bytes
        self.seq = 0  # seq of the newest event; events are numbered from 1
        # tells this log from an earlier one of the same root (before a restart of the
        # exporter, or of the root by a reload), whose seqs meant other events
        self.epoch = secrets.token_hex(3)
        self.bytes = 0  # estimated bytes of the events held
        self._limit = max_bytes if max_bytes is not None else 1 << 62
        self._bytes_bound = False  # the byte bound has dropped events
        self._first = 1  # seq of the oldest event held
        # slot (seq - 1) % max_events holds event seq's record, or None once dropped
        # for bytes; a record does not carry its seq: see since() for how a reader
        # tells a slot it wanted from one overwritten meanwhile
        self._ring: list[Record | RootEvent | None] = []
        self._sizes = array("I")  # each slot's record_bytes

    @property
    def capacity(self) -> int:
        """How many events the log keeps: ``max_events``, or once the byte bound has
        dropped some, as many as it holds now (what a reader has to keep up with)."""
        return self.held if self._bytes_bound else self.max_events

    def append(self, event: RootEvent) -> None:
        """Add ``event``, whose ``seq`` must be ``self.seq + 1`` (ValueError), dropping
        the oldest events past either bound. Writer thread only; O(1) amortized."""
        if event.seq != self.seq + 1:
            raise ValueError(f"event seq {event.seq} does not follow {self.seq}")
        self.add(pack(event, self.root))

    def add(self, rec: Record | RootEvent) -> int:
        """Add the event record ``rec`` (:func:`pack`'s form: what the core appends
        without making a RootEvent) as the next seq, and return that seq."""
        seq = self.seq + 1
        size = record_bytes(rec)
        ring = self._ring
        total = self.bytes + size
        cap = self.max_events
        if len(ring) < cap:
            ring.append(rec)
            self._sizes.append(size)
        else:
            slot = (seq - 1) % cap
            if seq - self._first >= cap:  # the slot holds the oldest event: it falls off
                total -= self._sizes[slot]
                self._first = seq - cap + 1  # published before the slot is overwritten
            ring[slot] = rec
            self._sizes[slot] = size
        self.bytes = total
        self.seq = seq  # published after the slot is written
        if total > self._limit:
            self._shed()
        return seq

    def _shed(self) -> None:
        """Drop the oldest events until the rest fit ``max_bytes`` (the newest stays)."""
        self._bytes_bound = True
        ring, sizes, cap = self._ring, self._sizes, self.max_events
        while self.bytes > self._limit and self._first < self.seq:
            slot = (self._first - 1) % cap
            self.bytes -= sizes[slot]
            self._first += 1  # published before the slot is emptied
            ring[slot] = None

    @property
    def first_seq(self) -> int:
        """The oldest seq still held (``seq + 1`` when empty)."""
        return self._first

    @property
    def held(self) -> int:
        """How many events the log holds now."""
        return self.seq - self._first + 1

    def since(self, after: int, limit: int | None = None) -> tuple[list[RootEvent], int]:
        """Events with seq > ``after`` in order (at most ``limit``), and how many of
        those were lost (dropped before they could be read). O(events returned)."""
        end = self.seq
        if end <= after:
            return [], 0
        cap = self.max_events
        start = min(max(after + 1, self._first), end + 1)
        if limit is not None:
            end = min(end, start + limit - 1)
        ring = self._ring
        recs = [ring[(s - 1) % cap] for s in range(start, end + 1)]
        # the writer moves _first past a slot before it overwrites or empties it: any
        # slot read here below _first as it is now may hold a newer record, or None
        first = min(self._first, end + 1)
        if first > start:
            recs = recs[first - start:]
            start = first
        root = self.root
        out = [expand(r, root, s) for s, r in zip(range(start, end + 1), recs, strict=True)]
        return out, start - after - 1

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
