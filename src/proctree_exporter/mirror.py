"""Mirrors: a consumer's own view of a root, built from the root's events alone.

A :class:`RootMirror` starts from a relist (the root's state as events at one
log position) and then applies the events after it, read through its own
cursor, at O(changes) per :meth:`RootMirror.sync`. It never sees the tree,
its nodes or its lock, and never reads /proc: the JSON API and tree page, the
``watch`` command and the Python API keep mirrors; OpenTelemetry reads events
the same way. A mirror that falls behind its log (more changes than the log
holds between two syncs) relists and says how many events it lost.

:class:`Mirrors` is a set of mirrors shared by many readers (the HTTP
server's), synced when read, and kept from falling behind by
:meth:`Mirrors.keep_up`.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable
from typing import Any, NamedTuple, TypeVar

from .changelog import ChangeLog, EventSource, Relist, lost_event
from .classification import (
    EXITED,
    HEALTHY,
    INFERRED_LINEAGE,
    ORPHANED,
    ZOMBIE,
    Confidence,
    ProcessClass,
    confidence_of,
    exit_reason,
)
from .events import Ancestor, EventKind, RootEvent
from .identity import Identity
from .rootspec import RootSpec
from .users import USER_NAMES

T = TypeVar("T")


class MemberInfo(NamedTuple):
    """One member of a root (live, or exited and still kept), as its events describe it."""

    pid: int
    start_ticks: int
    comm: str | None
    exe: str | None
    cmdline: str | None  # only for roots with capture_cmdline
    user: str
    ppid: int  # current parent
    lineage_ppid: int | None  # fork parent
    lineage_known: bool  # False: first seen under PID 1 or a younger parent (see README)
    lineage_source: str
    depth: int  # generations below its instance (0: an instance)
    cls: ProcessClass
    reason: str
    started_at: float  # wall-clock seconds
    exited_at: float | None = None
    exit_code: int | None = None
    exit_signal: int | None = None
    lineage_start: int | None = None  # the fork parent's start time (ticks since boot)

    @property
    def identity(self) -> Identity:
        """(pid, start_ticks)."""
        return Identity(self.pid, self.start_ticks)


def member_from(ev: RootEvent, user: Callable[[int | None], str] = USER_NAMES) -> MemberInfo:
    """A member as its ``joined`` event describes it."""
    return MemberInfo(ev.pid, ev.start_ticks, ev.comm, ev.exe, ev.cmdline, user(ev.uid),
                      ev.ppid if ev.ppid is not None else 0, ev.lineage_ppid,
                      bool(ev.lineage_known), ev.lineage_source or "", ev.depth or 0, HEALTHY,
                      "", ev.started_at or ev.ts, lineage_start=ev.lineage_start)


class RootMirror:
    """One root as its events describe it. Thread-safe: :meth:`sync` and :meth:`read`
    hold :attr:`lock`; read the attributes below only inside :meth:`read`."""

    def __init__(self, source: EventSource, name: str, *, history: int = 100) -> None:
        self.source = source
        self.name = name
        self.lock = threading.Lock()
        self.history = history
        self.spec: RootSpec | None = None
        self.seq = 0  # the last event applied
        self.removed = False  # the root is no longer watched
        self.relists = 0
        self.lost = 0  # events that fell off the log before this mirror read them
        self.members: dict[Identity, MemberInfo] = {}  # live, listed
        self.exited: dict[Identity, MemberInfo] = {}  # exited, still kept; oldest first
        self.instances: dict[Identity, MemberInfo] = {}  # live instances, listed or not
        self.ancestors: dict[Identity, tuple[Ancestor, ...]] = {}  # of each instance
        self.classes: dict[ProcessClass, int] = {}
        self.up = False
        self.had_instance = False
        self.spawned_total = 0
        self.exited_total = 0
        self.restarts_total = 0
        self.recent: deque[tuple[str, MemberInfo]] = deque(maxlen=history)  # added/removed
        self.events: deque[RootEvent] = deque(maxlen=history)  # class, restart, action
        # the event that gave each live or kept member its class (it names the other
        # process: the dead parent of an orphan, the parent not reaping a zombie)
        self.class_events: dict[Identity, RootEvent] = {}
        # per-member data a reader derives (e.g. encoded JSON), keyed by the member's
        # MemberInfo (no key object of its own), dropped when the member changes or
        # goes: readers fill it inside read()
        self.cache: dict[MemberInfo, Any] = {}
        self._log: ChangeLog | None = None
        self._ended = False  # the current log ended with root_removed
        self._user = USER_NAMES
        self._confidence: tuple[tuple[int, int], Confidence] | None = None

    # -- reading --------------------------------------------------------------------

    def read(self, fn: Callable[[RootMirror], T]) -> T:
        """Run ``fn(self)`` with the mirror locked (no sync runs meanwhile)."""
        with self.lock:
            return fn(self)

    @property
    def ended(self) -> bool:
        """The log followed so far ended with ``root_removed`` (the next sync follows a
        new root of the same name, if there is one)."""
        return self._ended

    def listed(self, depth: int) -> bool:
        """Whether a member at ``depth`` is shown (instances hide with include_root off)."""
        return depth > 0 or self.spec is None or self.spec.include_root

    # -- following the log -------------------------------------------------------------

    def sync(self) -> list[RootEvent]:
        """Apply the events since the last sync; return them in order.

        A ``lost`` event comes first when the mirror had to relist because the log
        moved on by more than it holds (``count`` events it never saw), and when
        the root was replaced by a new one of the same name (``count`` 0: a reset).
        A removed root's last event is ``root_removed``; after it, nothing.
        """
        with self.lock:
            if self.removed:
                return []
            out: list[RootEvent] = []
            if self._log is not None:
                out = self._drain(self._log)
                if out and out[-1].kind is EventKind.ROOT_REMOVED:
                    self._ended = True
                    return out
            try:
                log = self.source.log(self.name)
            except KeyError:
                return out + self._gone()
            if log is not self._log:
                first = self._log is None
                after = self.seq
                if not self._relist():
                    return out + self._gone()
                if not first:  # the root was replaced: a reset
                    out.append(lost_event(self.name, after, 0, time.time()))
                out.extend(self._drain(self._log))  # type: ignore[arg-type]
            return out

    def _drain(self, log: ChangeLog) -> list[RootEvent]:
        """Apply what ``log`` holds after the cursor (relisting if it lost some)."""
        out: list[RootEvent] = []
        while True:
            events, lost = log.since(self.seq)
            if lost:
                self.lost += lost
                after = self.seq
                if not self._relist():
                    return out
                out = [lost_event(self.name, after, lost, time.time())]
                if self._log is not log:
                    return out  # replaced meanwhile: the next sync reads the new log
                continue
            for ev in events:
                self._apply(ev)
                self.seq = ev.seq
                out.append(ev)
                if ev.kind is EventKind.ROOT_REMOVED:
                    return out
            return out

    def _gone(self) -> list[RootEvent]:
        self.removed = True
        if self._ended:
            return []  # its log said so already
        return [RootEvent(EventKind.ROOT_REMOVED, self.name, self.seq + 1, time.time(), 0, 0,
                          None)]

    def _relist(self) -> bool:
        try:
            rl = self.source.relist(self.name)
            log = self.source.log(self.name)
        except KeyError:
            return False
        self.load(rl, log)
        return True

    def load(self, rl: Relist, log: ChangeLog | None = None) -> None:
        """Replace the state with the relist's; then fill the history from the log."""
        self.relists += 1
        self.spec = rl.spec
        self.members.clear()
        self.exited.clear()
        self.instances.clear()
        self.ancestors.clear()
        self.cache.clear()
        self.class_events.clear()
        self.classes = {HEALTHY: 0, ORPHANED: 0, ZOMBIE: 0}
        self.recent.clear()
        self.events.clear()
        for ev in rl.events:
            self._apply(ev, counting=False, history=False)
        self.up = rl.up
        self.had_instance = rl.had_instance
        self.spawned_total = rl.spawned_total
        self.exited_total = rl.exited_total
        self.restarts_total = rl.restarts_total
        self.seq = rl.seq
        self._log = log
        self._ended = False
        if log is not None and self.history:
            for ev in log.since(max(rl.seq - 2 * self.history, 0))[0]:
                if ev.seq <= rl.seq:
                    self._remember(ev, None)

    # -- applying events ---------------------------------------------------------------

    def _remember(self, ev: RootEvent, info: MemberInfo | None) -> None:
        kind = ev.kind
        if kind in (EventKind.CLASS, EventKind.ACTION, EventKind.RESTART):
            self.events.append(ev)
        elif kind is EventKind.JOINED and self.listed(ev.depth or 0):
            self.recent.append(("added", info or member_from(ev, self._user)))
        elif kind is EventKind.EXITED and self.listed(ev.depth or 0):
            info = info or self.exited.get(ev.identity)
            if info is not None:
                self.recent.append(("removed", info))

    def _apply(self, ev: RootEvent, *, counting: bool = True, history: bool = True) -> None:
        kind = ev.kind
        ident = Identity(ev.pid, ev.start_ticks)
        info: MemberInfo | None = None
        if kind is EventKind.JOINED:
            info = member_from(ev, self._user)
            if self.cache:
                self._uncache(ident)
            if ev.depth == 0:
                self.instances[ident] = info
                self.ancestors[ident] = ev.ancestors or ()
            if self.listed(ev.depth or 0):
                self.members[ident] = info
                self.classes[HEALTHY] = self.classes.get(HEALTHY, 0) + 1
                if counting:
                    self.spawned_total += 1
        elif kind is EventKind.EXEC:
            self._update(ident, comm=ev.comm, exe=ev.exe or None, cmdline=ev.cmdline)
        elif kind is EventKind.REPARENTED:
            self._update(ident, ppid=ev.ppid)
        elif kind is EventKind.EXITED:
            self.instances.pop(ident, None)
            self.ancestors.pop(ident, None)
            member = self.members.pop(ident, None)
            if member is not None:
                cls = member.cls
                self.classes[cls if cls in (HEALTHY, ORPHANED) else HEALTHY] -= 1
                if counting:
                    self.exited_total += 1
                info = member._replace(
                    cls=EXITED,
                    reason=exit_reason(ev.pid, member.comm, ev.exit_code, ev.exit_signal),
                    exited_at=ev.ts, exit_code=ev.exit_code, exit_signal=ev.exit_signal)
                self.exited[ident] = info
                if self.cache:
                    self.cache.pop(member, None)
        elif kind is EventKind.CLASS:
            self._reclass(ident, ev)
        elif kind is EventKind.LEFT:
            self.class_events.pop(ident, None)
            gone = self.exited.pop(ident, None)
            if gone is not None and self.cache:
                self.cache.pop(gone, None)
        elif kind is EventKind.RESTART:
            if counting:
                self.restarts_total += 1
        elif kind is EventKind.ROOT_UP:
            self.up = True
            self.had_instance = True
        elif kind is EventKind.ROOT_DOWN:
            self.up = False
        if history:
            self._remember(ev, info)

    def _update(self, ident: Identity, **changes: Any) -> None:
        if self.cache:
            self._uncache(ident)
        for table in (self.members, self.instances, self.exited):
            m = table.get(ident)
            if m is not None:
                table[ident] = m._replace(**changes)

    def _uncache(self, ident: Identity) -> None:
        """Drop what readers derived from member ``ident`` as it is now."""
        for table in (self.members, self.exited):
            m = table.get(ident)
            if m is not None:
                self.cache.pop(m, None)

    def _reclass(self, ident: Identity, ev: RootEvent) -> None:
        new = ev.new_class or HEALTHY
        self.class_events[ident] = ev
        live = self.members.get(ident)
        if live is not None:
            self.classes[live.cls] -= 1
            self.classes[new] = self.classes.get(new, 0) + 1
            self.members[ident] = live._replace(cls=new, reason=ev.reason, ppid=(
                ev.ppid if ev.ppid is not None else live.ppid))
            if self.cache:
                self.cache.pop(live, None)
            return
        gone = self.exited.get(ident)
        if gone is None:
            return
        if self.listed(gone.depth):
            self.classes[ZOMBIE] += (new == ZOMBIE) - (gone.cls == ZOMBIE)
        if new == EXITED:  # a zombie reaped: how it ended is its reason again
            reason = exit_reason(gone.pid, gone.comm, gone.exit_code, gone.exit_signal)
        else:
            reason = ev.reason
        self.exited[ident] = gone._replace(cls=new, reason=reason)
        if self.cache:
            self.cache.pop(gone, None)

    # -- views -------------------------------------------------------------------------

    def class_counts(self) -> dict[str, int]:
        """Live listed members by class (healthy, orphaned) plus zombies."""
        return {str(k): v for k, v in self.classes.items()}

    def confidence(self) -> Confidence:
        """How sure the root is of its live members (see :meth:`.Roots.confidence`),
        from their joins; computed once per change of the root."""
        at = (self.seq, self.relists)
        if self._confidence is None or self._confidence[0] != at:
            self._confidence = (at, confidence_of(
                m.lineage_source for m in self.members.values()
                if m.depth > 0 and m.lineage_source in INFERRED_LINEAGE))
        return self._confidence[1]

    def zombies(self) -> list[MemberInfo]:
        """Exited members their parent has not reaped past the grace."""
        return [m for m in self.exited.values() if m.cls == ZOMBIE]

    def tombstones(self) -> list[MemberInfo]:
        """Exited members still kept, zombies excepted, oldest first."""
        return [m for m in self.exited.values() if m.cls != ZOMBIE]

    def listing(self, cap: int | None = None, *, zombies: bool = True) -> list[MemberInfo]:
        """Live members (then zombies); at most ``cap``, the shallowest and oldest first
        (default: the root's ``max_members``)."""
        cap = cap if cap is not None else (self.spec.max_members if self.spec else None)
        live = list(self.members.values())
        if cap is not None and len(live) > cap:
            live = sorted(live, key=lambda m: (m.depth, m.start_ticks))[:cap]
        if not zombies:
            return live
        room = None if cap is None else cap - len(live)
        dead = self.zombies()
        return live + (dead if room is None else dead[:room])

    def lineage_up(self, ident: Identity) -> list[MemberInfo]:
        """Lineage ancestors of a member inside the root, nearest first."""
        by_pid: dict[int, list[MemberInfo]] = {}
        for m in (*self.members.values(), *self.exited.values()):
            by_pid.setdefault(m.pid, []).append(m)
        out: list[MemberInfo] = []
        cur = self.members.get(ident) or self.exited.get(ident)
        seen = {ident}
        while cur is not None and cur.lineage_ppid is not None:
            # the parent is the process with that pid that started no later than it
            cands = [m for m in by_pid.get(cur.lineage_ppid, ())
                     if m.start_ticks <= cur.start_ticks + 1 and m.identity not in seen]
            if not cands:
                break
            cur = max(cands, key=lambda m: m.start_ticks)
            seen.add(cur.identity)
            out.append(cur)
        return out


class Mirrors:
    """Mirrors of every root, shared by many readers; each synced when read."""

    def __init__(self, source: EventSource) -> None:
        self.source = source
        self._mirrors: dict[str, RootMirror] = {}
        self._lock = threading.Lock()

    def names(self) -> list[str]:
        """The roots being watched now."""
        return list(self.source.root_names())

    def get(self, name: str) -> RootMirror:
        """Root ``name``'s mirror, synced now (KeyError if the root is not watched)."""
        with self._lock:
            mirror = self._mirrors.get(name)
            if mirror is None or mirror.removed:
                if name not in self.source.root_names():
                    self._mirrors.pop(name, None)
                    raise KeyError(name)
                mirror = self._mirrors[name] = RootMirror(self.source, name)
        mirror.sync()
        if mirror.removed or mirror.ended:  # gone, or replaced: a fresh mirror, or KeyError
            with self._lock:
                if self._mirrors.get(name) is mirror:
                    del self._mirrors[name]
            return self.get(name)
        return mirror

    def keep_up(self) -> None:
        """Sync the mirrors whose log has moved on by half its capacity, so that none
        falls off its log between reads; drop mirrors of roots no longer watched."""
        with self._lock:
            mirrors = list(self._mirrors.items())
        for name, mirror in mirrors:
            try:
                log = self.source.log(name)
            except KeyError:
                with self._lock:
                    self._mirrors.pop(name, None)
                continue
            if log.seq - mirror.seq > log.capacity // 2 or mirror._log is not log:
                mirror.sync()

