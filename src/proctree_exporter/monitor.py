"""The Python API: watch process trees from inside your own program, without HTTP.

::

    from proctree_exporter import Monitor

    with Monitor() as mon:
        job = mon.attach(pid=child.pid)        # or comm=, exe=, cmdline=, cgroup=, pidfile=
        ...
        obs = job.observe()                    # what changed since the previous observe()
        for ev in job.events(timeout=1.0):     # or job.subscribe(callback)
            print(ev.kind, ev.pid, ev.reason)
        job.confidence.level                   # "exact", or "degraded" (and why)
        job.kill_tree(grace_seconds=5)         # SIGTERM, then SIGKILL: orphans included

:class:`Monitor` runs the collector thread in your process (the proc connector,
or /proc polling where that is unavailable); :meth:`Monitor.attach` starts
watching a root and returns a :class:`Root` handle. Every handle reads the
root's typed events through cursors of its own, so handles never disturb one
another, and a slow reader never slows the collector.
"""

from __future__ import annotations

import logging
import re
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from .capabilities import Capability, negotiate
from .changelog import EventSource, lost_event
from .classification import EXITED, Confidence
from .clock import Clock
from .collector import Collector, CollectorSettings
from .config import ConfigError, RootConfig  # the config model validates attached roots
from .control import KillReport, kill_process, kill_tree
from .events import EventKind, RootEvent
from .identity import Identity
from .membership import Roots
from .mirror import MemberInfo, RootMirror
from .procfs import ProcFS
from .tree import PidTree, ProcessView, TreeNode, forest

log = logging.getLogger(__name__)


class MonitorError(RuntimeError):
    """The monitor could not start (no event source), or was used after close()."""


@dataclass(frozen=True, slots=True)
class Delta:
    """Members added and removed between two observations (by identity)."""

    added: tuple[MemberInfo, ...]
    removed: tuple[MemberInfo, ...]
    complete: bool  # False when events were lost since the previous observation
    # joined and left between the two observations: in neither list above, kept
    # here (as they were when they left) for consumers that want every process
    transient: tuple[MemberInfo, ...] = ()


@dataclass(frozen=True, slots=True)
class Observation:
    """What :meth:`Root.observe` returns: one root at one moment, and what changed."""

    root: str
    ts: float
    root_alive: bool
    instances: tuple[Identity, ...]
    members: Mapping[Identity, MemberInfo]  # live members (capped by max_members)
    delta: Delta
    spawned: int  # joined since the previous observation, short-lived included
    exited: int
    spawned_total: int
    exited_total: int
    classes: Mapping[str, int]  # live members by class (zombies included), and exited
    events: tuple[RootEvent, ...]  # every event since the previous observation
    tombstones: tuple[MemberInfo, ...]  # exited members still kept (zombies included)
    truncated: bool
    warnings: tuple[str, ...] = field(default=())


class Subscription:
    """A callback fed a root's events in order on a thread of its own (see
    :meth:`Root.subscribe`). :meth:`cancel` stops it."""

    def __init__(self, stream: Callable[[threading.Event], Iterator[RootEvent]],
                 callback: Callable[[RootEvent], object], name: str) -> None:
        self._stop = threading.Event()
        self._stream = stream
        self._callback = callback
        self.errors = 0  # callbacks that raised (each logged)
        self._thread = threading.Thread(target=self._run, name=f"proctree-sub-{name}",
                                        daemon=True)
        self._thread.start()

    def _run(self) -> None:
        for ev in self._stream(self._stop):
            try:
                self._callback(ev)
            except Exception:
                self.errors += 1
                log.exception("subscription callback failed on %s event", ev.kind)

    @property
    def active(self) -> bool:
        """Whether events are still being delivered."""
        return self._thread.is_alive()

    def cancel(self, timeout: float | None = 2.0) -> None:
        """Stop delivering (waits for a callback in progress)."""
        self._stop.set()
        if self._thread is not threading.current_thread():
            self._thread.join(timeout)


class Root:
    """A handle on one watched root. Made by :meth:`Monitor.attach`; also usable over
    any :class:`~.changelog.EventSource` (``Root(source, name)``)."""

    def __init__(self, source: EventSource, name: str,
                 on_detach: Callable[[Root], None] | None = None, *,
                 catch_up: Callable[[float], object] | None = None) -> None:
        source.log(name)  # KeyError now, not at the first look
        self.name = name
        self._source = source
        self._on_detach = on_detach
        self._catch_up = catch_up if catch_up is not None else (lambda _t: True)
        self._mirror = RootMirror(source, name)
        self._mirror.sync()  # the cursor exists from now on: nothing after this is missed
        self._spawned = self._mirror.spawned_total
        self._exited = self._mirror.exited_total
        self._first = True
        self._cursor = 0  # events(): from the root's first event on
        self._subs: list[Subscription] = []
        self._detached = False

    def __repr__(self) -> str:
        return f"Root({self.name!r})"

    def __enter__(self) -> Root:
        return self

    def __exit__(self, *exc: object) -> None:
        self.detach()

    # -- observe -----------------------------------------------------------------------

    def observe(self, members: bool = True) -> Observation:
        """The root now, and what changed since the previous call (the first call
        reports every member as added). O(changes since the previous call), plus
        O(members) for the listing when ``members`` is true.

        Counts are exact whatever happened meanwhile; ``delta`` lists what it can
        (``complete`` is False, with a warning, when events were lost because more
        changed than the root's change log holds between two calls).
        """
        mirror = self._mirror
        events = mirror.sync()
        return mirror.read(lambda m: self._observation(m, events, members))

    def _observation(self, m: RootMirror, events: list[RootEvent],
                     members: bool) -> Observation:
        spec = m.spec
        cap = spec.max_members if spec is not None else 10_000
        warnings: list[str] = []
        added: dict[Identity, None] = {}
        removed: dict[Identity, MemberInfo] = {}
        transient: dict[Identity, MemberInfo] = {}
        complete = True
        if self._first:
            added = dict.fromkeys(m.members)
            self._first = False
        for ev in events:
            kind = ev.kind
            if kind is EventKind.LOST:
                complete = False
                added = dict.fromkeys(i for i in added if i in m.members)
                warnings.append(f"{ev.count} changes fell off the change log since the "
                                f"previous observation: the delta is incomplete, counts are "
                                f"exact")
            elif kind is EventKind.JOINED and m.listed(ev.depth or 0):
                added[ev.identity] = None
            elif kind is EventKind.EXITED and m.listed(ev.depth or 0):
                ident = ev.identity
                info = m.exited.get(ident)
                if info is None:  # left the records already (no tombstones kept)
                    continue
                if ident in added:
                    del added[ident]  # born and gone between two observations
                    transient[ident] = info
                else:
                    removed[ident] = info
        count = len(m.members)
        truncated = count > cap or len(added) > cap
        added_infos = tuple(m.members[i] for i in list(added)[:cap] if i in m.members)
        listing: Mapping[Identity, MemberInfo] = MappingProxyType({})
        if members:
            listing = MappingProxyType({i.identity: i for i in m.listing(cap, zombies=False)})
        if truncated:
            warnings.append(f"{count} members, listing capped at {cap}")
        if not m.up:
            warnings.extend(self._source.warnings(self.name) if not m.removed else
                            (f"root {self.name!r} is no longer watched",))
        obs = Observation(
            root=self.name, ts=time.time(), root_alive=m.up,
            instances=tuple(m.instances), members=listing,
            delta=Delta(added=added_infos, removed=tuple(removed.values())[:cap],
                        complete=complete, transient=tuple(transient.values())[:cap]),
            spawned=m.spawned_total - self._spawned, exited=m.exited_total - self._exited,
            spawned_total=m.spawned_total, exited_total=m.exited_total,
            classes=MappingProxyType({**m.class_counts(), str(EXITED): len(m.tombstones())}),
            events=tuple(events),
            tombstones=tuple(m.exited.values()) if members else (),
            truncated=truncated, warnings=tuple(warnings))
        self._spawned, self._exited = m.spawned_total, m.exited_total
        return obs

    # -- events ------------------------------------------------------------------------

    def events(self, timeout: float | None = None) -> Iterator[RootEvent]:
        """The root's typed events in order, from the first one after :meth:`Monitor.attach`
        (or where the previous ``events()`` stopped), blocking for the next one.

        The iterator ends after ``timeout`` seconds without an event (None: never),
        and after the root's ``root_removed`` event. A reader that falls more than
        the change log holds behind gets one ``lost`` event saying how many it
        missed, then the oldest events still held.
        """
        stop = threading.Event()
        return self._stream(stop, timeout, shared=True)

    def _stream(self, stop: threading.Event, timeout: float | None = None, *,
                shared: bool = False, poll: float | None = None) -> Iterator[RootEvent]:
        source = self._source
        wakeup = source.wakeup
        cursor = self._cursor if shared else 0
        log_ = None
        idle_since = time.monotonic()
        while not stop.is_set():
            gen = wakeup.generation
            if log_ is None:
                try:
                    log_ = source.log(self.name)
                except KeyError:
                    return
            events, lost = log_.since(cursor, limit=1024)
            if lost:
                yield lost_event(self.name, cursor, lost, time.time())
            for ev in events:
                cursor = ev.seq
                if shared:
                    self._cursor = cursor
                yield ev
                if ev.kind is EventKind.ROOT_REMOVED:
                    return
            if events or lost:
                idle_since = time.monotonic()
                continue
            wait = poll
            if timeout is not None:
                left = timeout - (time.monotonic() - idle_since)
                if left <= 0:
                    return
                wait = left if wait is None else min(wait, left)
            wakeup.wait(gen, wait)

    def subscribe(self, callback: Callable[[RootEvent], object]) -> Subscription:
        """Call ``callback(event)`` for each of the root's events, in order, from the
        first one after attach, on a thread of its own (a slow callback delays only
        itself). A callback that raises is logged and counted; delivery goes on."""
        def stream(stop: threading.Event) -> Iterator[RootEvent]:
            return self._stream(stop, poll=0.2)

        sub = Subscription(stream, callback, self.name)
        self._subs.append(sub)
        return sub

    # -- confidence and control ------------------------------------------------------------

    @property
    def confidence(self) -> Confidence:
        """How sure the root is of its live members: ``.level`` is ``exact`` when every
        member below an instance was placed by a fork event, ``degraded`` when /proc
        placed some (``.inferred``: how many, by lineage source; ``.reason``: why)."""
        mirror = self._mirror
        mirror.sync()
        return mirror.read(lambda m: m.confidence())

    def kill_tree(self, grace_seconds: float = 5.0) -> KillReport:
        """End the root's whole tree, orphans included: SIGTERM to every live member
        (and to any that appears meanwhile), SIGKILL after ``grace_seconds`` to what is
        left (a ``cgroup`` root: its cgroup.kill). Each signal is checked against the
        member's identity, so no other process is reached. Returns what became of
        each process; ``complete`` says whether every one is gone."""
        return kill_tree(self._roots(), self.name, grace_s=grace_seconds,
                         catch_up=self._catch_up)

    def kill(self, pid: int, start_ticks: int | None = None,
             grace_seconds: float = 5.0) -> KillReport:
        """End one live member: SIGTERM, then SIGKILL after ``grace_seconds``.
        ``start_ticks`` (as :meth:`observe` lists it) pins the identity; without it,
        the member holding ``pid`` now. LookupError if it is not a live member."""
        roots = self._roots()
        if start_ticks is None:
            self._catch_up(1.0)
            with roots.tree.lock:
                node = roots.tree.get(pid)
                start_ticks = node.start_ticks if node is not None else -1
        return kill_process(roots, self.name, pid, start_ticks, grace_s=grace_seconds,
                            catch_up=self._catch_up)

    def _roots(self) -> Roots:
        if not isinstance(self._source, Roots):
            raise TypeError("kills need a Root from Monitor.attach")
        return self._source

    def detach(self) -> None:
        """Stop this handle's subscriptions and, when it was the root's last handle
        from :meth:`Monitor.attach`, stop watching the root."""
        if self._detached:
            return
        self._detached = True
        for sub in self._subs:
            sub.cancel()
        if self._on_detach is not None:
            self._on_detach(self)


_SELECTORS = ("pid", "comm", "exe", "cmdline", "cgroup", "pidfile")


class Monitor:
    """Process-tree monitoring inside your program: the collector thread, and roots
    attached at run time. Use as a context manager, or :meth:`start` and :meth:`close`.

    ``source``: ``auto`` (the proc connector, else /proc polling), ``netlink`` or
    ``procfs``. The other options are those of config.yaml's ``collector:`` and
    ``tree:`` sections (see README).
    """

    def __init__(self, *, source: str = "auto", receive_buffer_bytes: int = 8 << 20,
                 poll_interval_seconds: float = 1.0, max_nodes: int = 50_000,
                 tombstone_ttl_seconds: float = 300.0, cmdline_max_chars: int = 4096,
                 read_cgroups: bool = False) -> None:
        if source not in ("auto", "netlink", "procfs"):
            raise ValueError("source must be auto, netlink or procfs")
        self._clock = Clock()
        self._tree = PidTree(max_nodes=max_nodes, tombstone_ttl_s=tombstone_ttl_seconds,
                             cmdline_max_chars=cmdline_max_chars, read_cgroups=read_cgroups,
                             reader=ProcFS(), clock=self._clock)
        self._settings = CollectorSettings(source=source,
                                           receive_buffer_bytes=receive_buffer_bytes,
                                           poll_interval_s=poll_interval_seconds)
        self._collector = Collector(self._tree, self._settings)
        self._roots = Roots(self._tree, clock=self._clock)
        self._handles: dict[str, list[Root]] = {}
        self._lock = threading.Lock()
        self._started = False
        self._closed = False

    def __enter__(self) -> Monitor:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def source(self) -> str:
        """``netlink`` or ``procfs`` once started."""
        return self._collector.stats.source

    def start(self, timeout: float = 60.0) -> Monitor:
        """Open the event source, seed the tree from /proc; return once ready."""
        if self._closed:
            raise MonitorError("the monitor is closed")
        if self._started:
            return self
        self._collector.start()
        if not self._collector.ready.wait(timeout):
            raise MonitorError(f"not ready after {timeout:g}s")
        if self._collector.failed is not None:
            raise MonitorError(f"cannot collect: {self._collector.failed}")
        self._roots.attach()
        self._started = True
        return self

    def close(self) -> None:
        """Stop every subscription and the collector thread."""
        if self._closed:
            return
        self._closed = True
        for handles in list(self._handles.values()):
            for handle in list(handles):
                handle.detach()
        self._collector.stop()

    def _check(self) -> None:
        if not self._started or self._closed:
            raise MonitorError("the monitor is not running: use it as a context manager "
                               "or call start()")

    # -- roots ---------------------------------------------------------------------------

    def attach(self, name: str | None = None, *, pid: int | str | None = None,
               comm: str | None = None, exe: str | None = None, cmdline: str | None = None,
               cgroup: str | None = None, pidfile: str | None = None,
               **options: Any) -> Root:
        """Watch a root chosen by exactly one selector and return a handle on it.

        ``options`` are a root's keys from config.yaml (``include_root``,
        ``max_depth``, ``max_members``, ``capture_cmdline``, ``cmdline_max_chars``,
        ``tombstone_ttl_seconds``, ``max_tombstones``, ``zombie_grace_seconds``),
        validated the same way (ValueError names the key). Members already
        there, orphans included, are found at once: every process started before
        the call (see :meth:`catch_up`). Attaching the same root twice (same name
        and settings) gives a second handle on it.
        """
        self._check()
        self.catch_up()
        chosen = {k: v for k, v in zip(_SELECTORS, (pid, comm, exe, cmdline, cgroup, pidfile),
                                       strict=True) if v is not None}
        if len(chosen) != 1:
            raise ValueError(f"give exactly one of {', '.join(_SELECTORS)}")
        ((select, match),) = chosen.items()
        name = name or _default_name(select, str(match))
        try:
            spec = RootConfig(name=name, select=select, match=match,
                              **options).spec(runtime=True)
        except (ValueError, ConfigError) as exc:
            raise ValueError(f"attach: {exc}") from None
        with self._lock:
            if name in self._roots.roots:
                if self._roots.roots[name].spec != spec:
                    raise ValueError(f"a different root named {name!r} is attached")
            else:
                with self._tree.lock:
                    self._tree.housekeeping(settle=True)  # exits settled: orphans classed at once
                    self._roots.add(spec)
            handle = Root(self._roots, name, on_detach=self._detached,
                          catch_up=self._collector.catch_up)
            self._handles.setdefault(name, []).append(handle)
        return handle

    def _detached(self, handle: Root) -> None:
        with self._lock:
            handles = self._handles.get(handle.name, [])
            if handle in handles:
                handles.remove(handle)
            if not handles:
                self._handles.pop(handle.name, None)
                if handle.name in self._roots.roots and not self._closed:
                    self._roots.remove(handle.name)

    def catch_up(self, timeout: float = 1.0) -> bool:
        """Return once every process event that happened before the call is applied
        (True), or after ``timeout`` during a storm that keeps the collector busy
        (False). The collector runs a little behind the kernel: call this between
        starting or ending a process and looking at it (``attach`` does). With the
        /proc polling source there is nothing to wait for: True at once.
        """
        self._check()
        return self._collector.catch_up(timeout)

    # -- the host's tree -------------------------------------------------------------------

    def tree(self, pid: int | None = None) -> list[TreeNode]:
        """The host's processes nested by fork lineage (exited ones still kept
        included), or with ``pid`` the live process holding it and its descendants.
        Copies the whole tree: O(processes)."""
        self._check()
        return forest(self._tree.snapshot(), pid)

    def process(self, pid: int) -> ProcessView | None:
        """The process holding ``pid`` now (live or unreaped), or None."""
        self._check()
        with self._tree.lock:
            node = self._tree.get(pid)
            return self._tree.view(node) if node is not None else None

    def ancestors(self, pid: int) -> list[ProcessView]:
        """The lineage ancestors of the process holding ``pid``, nearest first, up to
        PID 1 (fork parents, kept after they exit). Empty for an unknown pid."""
        self._check()
        tree = self._tree
        with tree.lock:
            node = tree.get(pid)
            return [tree.view(a) for a in tree.ancestors(node)] if node is not None else []

    def is_descendant(self, pid: int, ancestor: int | str) -> bool:
        """Whether the process holding ``pid`` descends by lineage from ``ancestor``
        (a pid, or a comm)."""
        self._check()
        return self._tree.is_descendant(pid, ancestor)

    def capabilities(self) -> list[Capability]:
        """What this host lets the monitor know, per category (see README)."""
        self._check()
        return negotiate(self._collector.stats, read_cgroups=self._tree.read_cgroups,
                         poll_interval_s=self._settings.poll_interval_s)


def _default_name(select: str, match: str) -> str:
    return (select + "-" + re.sub(r"[^A-Za-z0-9_.:-]", "_", match))[:64]
