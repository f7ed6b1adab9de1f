"""Resources: what each root's processes cost, short-lived and orphaned ones included.

One ledger, fed from three sides:

* membership, from the roots' typed events (its own cursors on their change
  logs, as every consumer has): ``joined`` makes a process a member of a root,
  ``exited`` says its final figures are due;
* the kernel's taskstats exit record of each exited process
  (:mod:`.taskstats`): its final CPU, IO, context switches and faults, exactly
  once per process, however short it lived;
* the live members' latest samples (:mod:`.sampler`, its own thread).

A root's counters are the final figures of its exited members plus the latest
contribution of its live ones. A process's contribution only grows: a sample
adds what it grew since the one before, and at its exit the final record
replaces the last sample (never by less), so no counter goes backwards,
whether a process exits between two samples or not. Everything is an integer
(CPU in microseconds), so moving a contribution from live to exited is exact.

Members that were already running when the ledger first heard of them (the
roots' first read at start, or a relist after falling behind) count from
their first sample: what they used before was not seen, and counting it at
once would make every rate() spike at each restart. Members that join as they
fork count from zero.

Memory, open files and threads are gauges over the live members' latest
samples.
"""

from __future__ import annotations

import logging
import os
import select
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from operator import add
from typing import NamedTuple

from .capabilities import PARTIAL, SUPPORTED, UNAVAILABLE, Capability
from .changelog import ChangeLog, EventSource, Relist, read_root
from .events import EventKind, RootEvent
from .identity import Identity, same_start
from .sampler import Sample, SampleRound, parse_io, parse_stat_figures
from .taskstats import TaskExit, TaskstatsListener, TaskstatsUnavailable

log = logging.getLogger(__name__)

# the counters, in this order everywhere (CPU in microseconds)
FIELDS = ("cpu_user_us", "cpu_system_us", "read_bytes", "write_bytes",
          "voluntary_ctx_switches", "involuntary_ctx_switches", "minor_faults",
          "major_faults")
N_FIELDS = len(FIELDS)
ZERO = (0,) * N_FIELDS
EXIT_WAIT_S = 5.0  # how long an exited member waits for its record, and a record for its member
FINISHED_KEEP_S = 10.0  # a finished process's final figures, for a root that hears of it late
MAX_PENDING_RECORDS = 100_000
APPLY_CHUNK = 500  # sampled processes applied per hold of the ledger's lock (see apply_round)
APPLY_PAUSE_S = 0.0002
TICKS = os.sysconf("SC_CLK_TCK")

UNACCOUNTED_NO_RECORD = "no_record"  # no exit record came: its last sample counts
UNACCOUNTED_REASONS = (UNACCOUNTED_NO_RECORD,)


class RootResources(NamedTuple):
    """One root's figures, as /metrics shows them."""

    name: str
    counters: tuple[int, ...]  # FIELDS: exited members' finals + live members' latest
    rss_bytes: int
    pss_bytes: int | None  # None unless resources.pss
    open_fds: int
    threads: int
    sampled: int  # live members with a sample


class ProcessUsage(NamedTuple):
    """One exited member's figures: ``counters`` in :data:`FIELDS` order, and its RSS at
    its last sample (0 if never sampled)."""

    counters: tuple[int, ...]
    rss_bytes: int


class ResourceStats(NamedTuple):
    """The ledger's own figures, as /metrics shows them."""

    roots: tuple[RootResources, ...]
    accounting: str  # supported | partial | unavailable
    reason: str
    exit_records: int  # whole-process records received
    exits_accounted: int  # exited members whose final figures came from a record
    exits_unaccounted: dict[str, int]
    records_lost: int  # the kernel dropped records (socket overrun)
    last_round_wall: float | None  # time.time() after the last sample round
    last_round_seconds: float
    sampler_cpu_seconds: float
    sampled_total: int  # member samples taken


def from_sample(s: Sample) -> tuple[int, ...]:
    """A :class:`~.sampler.Sample`'s figures as the ledger counts them."""
    return (round(s.cpu_user_seconds * 1e6), round(s.cpu_system_seconds * 1e6),
            s.read_bytes or 0, s.write_bytes or 0, s.voluntary_ctx_switches,
            s.involuntary_ctx_switches, s.minor_faults, s.major_faults)


def from_record(r: TaskExit) -> tuple[int, ...]:
    """A taskstats exit record's figures as the ledger counts them."""
    return (r.cpu_user_us, r.cpu_system_us, r.read_bytes, r.write_bytes,
            r.voluntary_ctx_switches, r.involuntary_ctx_switches, r.minor_faults,
            r.major_faults)


class _Root:
    __slots__ = (
        "depth_limited",
        "exited",
        "fds",
        "listed",
        "live",
        "log",
        "name",
        "pss",
        "rss",
        "sampled",
        "seq",
        "threads",
    )

    def __init__(self, name: str) -> None:
        self.name = name
        self.exited = [0] * N_FIELDS
        self.live = [0] * N_FIELDS
        self.rss = self.pss = self.fds = self.threads = self.sampled = 0
        self.log: ChangeLog | None = None
        self.seq = 0
        self.listed: Callable[[int], bool] = lambda depth: True
        self.depth_limited = False  # max_depth: a member's children may be no members


class _Proc:
    __slots__ = (
        "absorbed",
        "applied",
        "base",
        "gauges",
        "ident",
        "kids_base",
        "kids_sync",
        "last",
        "ppid",
        "reaper",
        "roots",
        "start_wall",
    )

    def __init__(self, ident: Identity, counted_from_zero: bool) -> None:
        self.ident = ident
        self.roots: list[_Root] = []
        self.base: tuple[int, ...] | None = ZERO if counted_from_zero else None
        self.last: tuple[int, ...] = ZERO  # contribution so far (figures minus base)
        self.gauges = (0, 0, 0, 0)  # rss, pss, fds, threads
        self.start_wall = 0.0
        self.ppid = 0
        self.reaper: _Proc | None = None  # the live member that will reap it
        # as a reaper: its children's CPU (cutime, cstime in µs) when first read, the
        # exit-record CPU of member children it reaped since, and the correction given
        self.kids_base: tuple[int, int] | None = None
        self.kids_sync = 0  # the sync that read kids_base
        self.absorbed = [0, 0]
        self.applied = [0, 0]


@dataclass
class _Counts:
    exit_records: int = 0
    accounted: int = 0
    unaccounted: dict[str, int] = field(
        default_factory=lambda: dict.fromkeys(UNACCOUNTED_REASONS, 0))
    sampled_total: int = 0


class Ledger:
    """Per-root resource figures, kept from events, exit records and samples.

    Thread-safe: every method takes :attr:`lock` (O(what it is given)), and
    :meth:`stats` is O(roots).
    """

    def __init__(self, source: EventSource, *, roots: Iterable[str] = (),
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.source = source
        self.only = frozenset(roots)  # empty: every root
        self.clock = clock
        self.lock = threading.Lock()
        self._roots: dict[str, _Root] = {}
        self._procs: dict[Identity, _Proc] = {}
        self._live_pid: dict[int, _Proc] = {}  # live members by pid: who reaps an exit
        self._dirty: dict[Identity, _Proc] = {}  # reapers to read at the end of a sync
        self._syncs = 0
        self.proc_dir = "/proc"
        self._awaiting: dict[Identity, float] = {}  # exited member -> deadline for its record
        self._awaiting_pid: dict[int, list[Identity]] = {}
        self._records: dict[int, list[tuple[TaskExit, float]]] = {}  # unmatched, by pid
        self._record_order: deque[tuple[float, int]] = deque()  # (received, pid), oldest first
        self._n_records = 0
        # (contribution, when, its last RSS)
        self._finished: dict[Identity, tuple[tuple[int, ...], float, int]] = {}
        self._finished_order: deque[tuple[float, Identity]] = deque()
        self._counts = _Counts()
        # (pss, duration_s) of the last round applied: never the round itself, whose
        # samples (one tuple subclass each, which the cyclic GC cannot untrack) would
        # otherwise live to be rescanned by every full collection until the next round
        self._round: tuple[bool, float] | None = None
        self._round_wall: float | None = None
        # each live member's own CPU seconds and RSS at the last round, replaced whole
        # each round: readers (the JSON API) take it without the lock
        self.latest: dict[Identity, tuple[float, int]] = {}
        self.rounds = 0
        self.sampler_cpu = lambda: 0.0
        self.records_lost = lambda: 0
        self.accounting = ("unavailable", "not started")

    # -- membership ----------------------------------------------------------------------

    def sync(self) -> None:
        """Apply the roots' events since the last sync, then settle what is due."""
        source = self.source
        names = [n for n in source.root_names() if not self.only or n in self.only]
        with self.lock:
            self._syncs += 1
            for name in [n for n in self._roots if n not in names]:
                self._drop_root(self._roots.pop(name))
            for name in names:
                root = self._roots.get(name)
                try:
                    log_, relist, events = read_root(source, name,
                                                     root.log if root else None,
                                                     root.seq if root else 0)
                except KeyError:  # removed meanwhile
                    dead = self._roots.pop(name, None)
                    if dead is not None:
                        self._drop_root(dead)
                    continue
                if relist is not None:
                    if root is None or root.log is not log_:  # a new root, or replaced
                        if root is not None:
                            self._drop_root(root)
                        root = self._roots[name] = _Root(name)
                    self._load(root, log_, relist)  # or fell behind: read it whole again
                assert root is not None
                for ev in events:
                    self._apply(root, ev, from_zero=True)
                    root.seq = ev.seq
            self._settle(self.clock())
            for reaper in self._dirty.values():
                self._correct(reaper)
            self._dirty.clear()

    def _load(self, root: _Root, log_: ChangeLog, rl: Relist) -> None:
        """Read a root whole: at first sight, or after falling behind its log."""
        root.log = log_
        root.seq = rl.seq
        include_root = rl.spec.include_root
        root.listed = lambda depth: depth > 0 or include_root
        root.depth_limited = rl.spec.max_depth is not None
        # the root's exited members (tombstones) were not seen live: nothing to count
        gone = {(ev.pid, ev.start_ticks) for ev in rl.events if ev.kind is EventKind.EXITED}
        live = set()
        for ev in rl.events:
            if ev.kind is EventKind.JOINED and (ev.pid, ev.start_ticks) not in gone:
                live.add(Identity(ev.pid, ev.start_ticks))
                self._apply(root, ev, from_zero=False)
        now = self.clock()
        for proc in self._procs.values():  # exited in the events this ledger missed
            if root in proc.roots and proc.ident not in live \
                    and proc.ident not in self._awaiting:
                self._await(proc.ident, now + EXIT_WAIT_S)

    def _apply(self, root: _Root, ev: RootEvent, *, from_zero: bool) -> None:
        kind = ev.kind
        if kind is EventKind.JOINED:
            if not root.listed(ev.depth or 0):
                return
            ident = Identity(ev.pid, ev.start_ticks)
            done = self._finished.get(ident)
            if done is not None:
                if from_zero:  # heard of in another root's log first, and finished
                    _add(root.exited, done[0])
                return
            proc = self._procs.get(ident)
            if proc is None:
                proc = self._procs[ident] = _Proc(ident, from_zero)
                proc.start_wall = ev.started_at or ev.ts
                proc.ppid = ev.ppid or 0
                self._live_pid[ident.pid] = proc
                parent = self._live_pid.get(proc.ppid)
                if parent is not None and parent is not proc and parent.kids_base is None:
                    # a member that forks will reap: what its children used so far
                    parent.kids_base = self._children_cpu(parent) or (0, 0)
                    parent.kids_sync = self._syncs
            elif root in proc.roots:
                return
            proc.roots.append(root)
            _add(root.live, proc.last)
            self._gauge(root, proc.gauges, +1)
        elif kind is EventKind.REPARENTED:
            proc = self._procs.get(Identity(ev.pid, ev.start_ticks))
            if proc is not None and ev.ppid is not None:
                proc.ppid = ev.ppid
        elif kind is EventKind.EXITED:
            ident = Identity(ev.pid, ev.start_ticks)
            proc = self._procs.get(ident)
            if proc is not None and ident not in self._awaiting:
                if self._live_pid.get(ident.pid) is proc:
                    del self._live_pid[ident.pid]
                parent = self._live_pid.get(proc.ppid)
                # a child that exited in the sync that first read its parent's children's
                # CPU may be in that reading already: its record alone counts
                if parent is not None and parent.kids_base is not None \
                        and parent.kids_sync < self._syncs:
                    proc.reaper = parent
                if proc.kids_base is not None:
                    self._correct(proc)  # a zombie still shows all its children used
                self._await(ident, self.clock() + EXIT_WAIT_S)
                self._match(proc)  # its record may be here already

    def _drop_root(self, root: _Root) -> None:
        """A root no longer watched: its processes are no longer sampled for it (nor at
        all, when it was their last root)."""
        for proc in list(self._procs.values()):
            if root in proc.roots:
                proc.roots.remove(root)
                if not proc.roots:
                    del self._procs[proc.ident]
                    self._unawait(proc.ident)

    # -- exit records --------------------------------------------------------------------

    def add_records(self, records: Iterable[TaskExit]) -> None:
        """Exit records as they came from the kernel (whole processes). O(records): a
        record whose member's exit was seen is matched now, others wait for it."""
        now = self.clock()
        with self.lock:
            for r in records:
                self._counts.exit_records += 1
                if self._n_records >= MAX_PENDING_RECORDS:
                    continue  # bounded: such a member is counted unaccounted at its deadline
                self._records.setdefault(r.pid, []).append((r, now))
                self._record_order.append((now, r.pid))
                self._n_records += 1
                for ident in self._awaiting_pid.get(r.pid, ()):
                    proc = self._procs.get(ident)
                    if proc is not None and self._match(proc):
                        break

    def _await(self, ident: Identity, deadline: float) -> None:
        self._awaiting[ident] = deadline
        self._awaiting_pid.setdefault(ident.pid, []).append(ident)

    def _match(self, proc: _Proc) -> bool:
        rec = self._take_record(proc)
        if rec is None:
            return False
        self._counts.accounted += 1
        self._finish(proc, from_record(rec))
        return True

    def _settle(self, now: float) -> None:
        """Match exited members with their records; give up on either past its time.
        O(members awaiting their record + records and finished processes expiring)."""
        for ident, deadline in list(self._awaiting.items()):
            proc = self._procs.get(ident)
            if proc is None:
                self._unawait(ident)
            elif not self._match(proc) and now >= deadline:
                self._counts.unaccounted[UNACCOUNTED_NO_RECORD] += 1
                self._finish(proc, None)
        order = self._record_order
        while order and now - order[0][0] >= EXIT_WAIT_S:
            t, pid = order.popleft()
            pending = self._records.get(pid)
            if pending and pending[0][1] == t:  # not taken by a member meanwhile
                del pending[0]
                self._n_records -= 1
                if not pending:
                    del self._records[pid]
        done = self._finished_order
        while done and now - done[0][0] > FINISHED_KEEP_S:
            _, ident = done.popleft()
            self._finished.pop(ident, None)

    def _take_record(self, proc: _Proc) -> TaskExit | None:
        pending = self._records.get(proc.ident.pid)
        if not pending:
            return None
        for i, (rec, _) in enumerate(pending):
            # a record of an earlier holder of the pid started at another time
            if rec.start_ticks is None or same_start(proc.ident.start_ticks, rec.start_ticks) \
                    or abs(rec.start_ticks - proc.ident.start_ticks) <= 2 * TICKS:
                del pending[i]
                self._n_records -= 1
                if not pending:
                    del self._records[proc.ident.pid]
                return rec
        return None

    def _finish(self, proc: _Proc, final: tuple[int, ...] | None) -> None:
        """``proc`` exited: its contribution moves from live to exited, as its final
        figures say (never less than its last sample)."""
        del self._procs[proc.ident]
        self._unawait(proc.ident)
        self._dirty.pop(proc.ident, None)
        if self._live_pid.get(proc.ident.pid) is proc:
            del self._live_pid[proc.ident.pid]
        last = proc.last
        if final is None:
            contribution = last
        else:
            base = proc.base if proc.base is not None else ZERO
            contribution = tuple(max(f - b, x) for f, b, x in zip(final, base, last, strict=True))
        for root in proc.roots:
            _sub(root.live, last)
            _add(root.exited, contribution)
            self._gauge(root, proc.gauges, -1)
        now = self.clock()
        self._finished[proc.ident] = (contribution, now, proc.gauges[0])
        self._finished_order.append((now, proc.ident))
        reaper = proc.reaper
        if reaper is not None and reaper.ident in self._procs:
            # its full CPU, exit path included, shows in its reaper's children's CPU:
            # what its record says now is counted once there
            reaper.absorbed[0] += contribution[0]
            reaper.absorbed[1] += contribution[1]
            self._dirty[reaper.ident] = reaper

    def _children_cpu(self, proc: _Proc) -> tuple[int, int] | None:
        """``proc``'s reaped children's CPU (cutime, cstime) in µs from /proc; None if it
        is gone or its pid names another process now."""
        try:
            with open(f"{self.proc_dir}/{proc.ident.pid}/stat", "rb") as f:
                fields = f.read().rsplit(b")", 1)[1].split()
            if not same_start(proc.ident.start_ticks, int(fields[19])):
                return None
            us = 1_000_000 // TICKS
            return int(fields[13]) * us, int(fields[14]) * us
        except (OSError, IndexError, ValueError):
            return None

    def _correct(self, reaper: _Proc) -> None:
        """Give ``reaper``'s roots what its reaped member children used beyond their
        exit records (their exit path), read from its children's CPU; never less."""
        base = reaper.kids_base
        now = self._children_cpu(reaper)
        if base is None or now is None:
            return
        delta = [0, 0]
        for i in (0, 1):
            target = now[i] - base[i] - reaper.absorbed[i]
            if target > reaper.applied[i]:
                delta[i] = target - reaper.applied[i]
                reaper.applied[i] = target
        if delta[0] or delta[1]:
            for root in reaper.roots:
                if not root.depth_limited:
                    root.exited[0] += delta[0]
                    root.exited[1] += delta[1]

    def _unawait(self, ident: Identity) -> None:
        if self._awaiting.pop(ident, None) is not None:
            idents = self._awaiting_pid.get(ident.pid)
            if idents is not None:
                idents.remove(ident)
                if not idents:
                    del self._awaiting_pid[ident.pid]

    def finish_from_proc(self, proc_dir: str = "/proc") -> None:
        """Without taskstats: read each exited member's figures while it is still a
        zombie (its parent has not reaped it yet); others keep their last sample."""
        with self.lock:
            for ident in list(self._awaiting):
                proc = self._procs.get(ident)
                if proc is None:
                    continue
                figures = _zombie_figures(ident, proc_dir)
                if figures is not None:
                    self._counts.accounted += 1
                    self._finish(proc, figures)

    # -- samples ---------------------------------------------------------------------------

    def live_identities(self) -> list[Identity]:
        """The live members to sample (any root)."""
        with self.lock:
            return [i for i in self._procs if i not in self._awaiting]

    def apply_round(self, rnd: SampleRound) -> None:
        """A sample round: each sampled member's contribution grows to its new figures.

        Applied ``APPLY_CHUNK`` processes per hold of :attr:`lock`: a 20,000-process
        round held it for about 100 ms at once, and every scrape in that time waited
        for :meth:`stats`. A reader between two chunks sees some processes' figures
        from this round and some from the last, as a round's reads are spread over
        its duration anyway; counters only grow.
        """
        samples = rnd.samples
        idents = list(samples)  # each Sample made as it is applied: see sampler.Samples
        for start in range(0, len(idents), APPLY_CHUNK):
            if start:
                # a Lock is not fair: released and taken straight back, a scrape waiting
                # in stats() would still wait for the whole round. Let it in.
                time.sleep(APPLY_PAUSE_S)
            with self.lock:
                for ident in idents[start:start + APPLY_CHUNK]:
                    proc = self._procs.get(ident)
                    if proc is None:
                        continue
                    s = samples[ident]
                    figures = from_sample(s)
                    if proc.base is None:
                        proc.base = figures  # already running when first heard of
                    now = tuple(max(f - b, x) for f, b, x in
                                zip(figures, proc.base, proc.last, strict=True))
                    delta = tuple(a - b for a, b in zip(now, proc.last, strict=True))
                    gauges = (s.rss_bytes, s.pss_bytes or 0, s.open_fds or 0, s.threads)
                    for root in proc.roots:
                        _add(root.live, delta)
                        self._gauge(root, proc.gauges, -1)
                        self._gauge(root, gauges, +1)
                    proc.last = now
                    proc.gauges = gauges
        procs = self._procs
        latest = {i: (s.cpu_user_seconds + s.cpu_system_seconds, s.rss_bytes)
                  for i, s in samples.items() if i in procs}
        with self.lock:
            self._counts.sampled_total += len(idents)
            self.latest = latest
            self.rounds += 1
            self._round = (rnd.pss, rnd.duration_s)
            self._round_wall = time.time()

    def _gauge(self, root: _Root, g: tuple[int, int, int, int], sign: int) -> None:
        if g[3] == 0 and g[0] == 0:
            return  # never sampled
        root.rss += sign * g[0]
        root.pss += sign * g[1]
        root.fds += sign * g[2]
        root.threads += sign * g[3]
        root.sampled += sign

    # -- reading -----------------------------------------------------------------------------

    def stats(self) -> ResourceStats:
        """Every root's figures and the ledger's own, now. O(roots)."""
        with self.lock:
            pss, duration_s = self._round if self._round is not None else (False, 0.0)
            roots = tuple(RootResources(
                r.name, tuple(map(add, r.exited, r.live)), r.rss,
                r.pss if pss else None, r.fds, r.threads, r.sampled)
                for r in self._roots.values())
            c = self._counts
            return ResourceStats(
                roots, self.accounting[0], self.accounting[1], c.exit_records, c.accounted,
                dict(c.unaccounted), self.records_lost(), self._round_wall,
                duration_s, self.sampler_cpu(),
                c.sampled_total)

    def final(self, ident: Identity) -> ProcessUsage | None:
        """What an exited member used while watched, once its final figures are in (kept
        ``FINISHED_KEEP_S``); None if they are not in yet, or it was no member.

        A reader that has just seen the member's exit (OpenTelemetry, ending its span)
        may be ahead of this ledger's own reading of the events: it catches up first.
        """
        for attempt in range(2):
            with self.lock:
                done = self._finished.get(ident)
                if done is not None:
                    return ProcessUsage(done[0], done[2])
            if attempt == 0:
                self.sync()
        return None

    def busy(self) -> bool:
        """Whether exits are being settled (members awaiting records, reapers to read)."""
        with self.lock:
            return bool(self._awaiting or self._dirty or self._recent_reapers())

    def _recent_reapers(self) -> bool:
        return bool(self._finished_order) and \
            self.clock() - self._finished_order[-1][0] < 1.0

    def sampled_once(self) -> bool:
        """Whether a sample round has been applied (counters are shown from then on)."""
        with self.lock:
            return self._round is not None


def _add(acc: list[int], values: tuple[int, ...]) -> None:
    for i, v in enumerate(values):
        acc[i] += v


def _sub(acc: list[int], values: tuple[int, ...]) -> None:
    for i, v in enumerate(values):
        acc[i] -= v


def _zombie_figures(ident: Identity, proc_dir: str) -> tuple[int, ...] | None:
    """An exited, unreaped process's final figures from /proc (None if reaped or not it)."""
    base = f"{proc_dir}/{ident.pid}"
    try:
        with open(f"{base}/stat", "rb") as f:
            st = parse_stat_figures(f.read())
        if st.state != "Z" or not same_start(ident.start_ticks, st.start_ticks):
            return None
        try:
            with open(f"{base}/io", "rb") as f:
                _, _, read_bytes, write_bytes = parse_io(f.read())
        except OSError:
            read_bytes = write_bytes = 0
    except (OSError, ValueError):
        return None
    us = 1_000_000 // TICKS
    return (st.utime_ticks * us, st.stime_ticks * us, read_bytes, write_bytes, 0, 0,
            st.minor_faults, st.major_faults)


SUPPORTED_REASON = ("taskstats exit records: every exited member's final CPU, IO, context "
                    "switches and faults, however short it lived; live members sampled")
PARTIAL_REASON = ("exited members read from /proc while their parent has not reaped them; "
                  "the others keep their last sample (proctree_resources_exits_unaccounted_total)")


def accounting_capability(enabled: bool, use_taskstats: bool,
                          listener_error: str | None = None) -> Capability:
    """How resources are accounted here: ``supported`` with taskstats, ``partial``
    without, ``unavailable`` when switched off."""
    if not enabled:
        return Capability("resource_accounting", UNAVAILABLE, "none", "resources.enabled is off")
    if not use_taskstats:
        return Capability("resource_accounting", PARTIAL, "procfs",
                          f"resources.taskstats is off: {PARTIAL_REASON}")
    if listener_error is not None:
        return Capability("resource_accounting", PARTIAL, "procfs",
                          f"no taskstats ({listener_error}): {PARTIAL_REASON}")
    return Capability("resource_accounting", SUPPORTED, "taskstats+procfs", SUPPORTED_REASON)


def probe(use_taskstats: bool = True) -> str | None:
    """Why taskstats exit records cannot be had here (None: they can)."""
    if not use_taskstats:
        return None
    try:
        TaskstatsListener().close()
    except TaskstatsUnavailable as exc:
        return str(exc.strerror or exc)
    return None


class Accountant:
    """The ledger's thread: exit records in as they come, events every 100 ms."""

    def __init__(self, ledger: Ledger, *, use_taskstats: bool = True) -> None:
        self.ledger = ledger
        self.listener: TaskstatsListener | None = None
        error = None
        if use_taskstats:
            try:
                self.listener = TaskstatsListener()
                ledger.records_lost = lambda: self.listener.lost if self.listener else 0
            except TaskstatsUnavailable as exc:
                error = str(exc.strerror or exc)
                log.warning("resource accounting without taskstats",
                            extra={"fields": {"reason": error}})
        self.capability = accounting_capability(True, use_taskstats, error)
        ledger.accounting = (self.capability.status, self.capability.reason)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="proctree-accounting",
                                        daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(2.0)
        if self.listener is not None:
            self.listener.close()

    def _run(self) -> None:
        ledger = self.ledger
        listener = self.listener
        next_sync = 0.0
        while not self._stop.is_set():
            try:
                if listener is not None:
                    ready, _, _ = select.select([listener.fileno()], [], [], 0.1)
                    if ready:
                        ledger.add_records(listener.read())
                else:
                    self._stop.wait(0.02)
                now = time.monotonic()
                if now >= next_sync:
                    # look often while exits are being settled: a reaper's children's CPU
                    # must be read before it exits itself, and without records exited
                    # members must be read from /proc before their parents reap them
                    busy = listener is None or ledger.busy()
                    next_sync = now + (0.02 if busy else 0.1)
                    ledger.sync()
                    if listener is None:
                        ledger.finish_from_proc()
            except Exception:  # never let one bad round end accounting
                log.exception("resource accounting round failed")
                self._stop.wait(1.0)
