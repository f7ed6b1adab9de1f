"""PidTree: every process on the host by identity (pid, start_ticks), with fork lineage.

Two parents are kept per process. ``parent`` is the *lineage* parent, the
process that forked it, kept after the kernel silently reparents the child to
PID 1 or a subreaper; ``ppid`` is the *current* parent as /proc reports it.
Descendants are found by lineage, so a root's children stay its children
after a wrapper exits.

Lifecycle of a node: born at FORK (or seeded from /proc), exited at EXIT
(still holding its pid until reaped), then either a zombie (the deferred
check finds it in state Z) or reaped, when it becomes a *tombstone*. Tombstones
are bounded by capacity and TTL; evicting one splices its lineage children
onto its own parent so that lineage questions keep their answers.

Threads are not nodes: a thread FORK/EXIT only moves the owner's thread count.

The collector thread is the only writer; it holds :attr:`PidTree.lock` while
applying a batch. Readers take the lock for the short time needed to copy.

The tree never opens a file or reads a clock by itself: /proc comes through an
injected reader (:class:`~.procfs.ProcFS`, or a fake in tests) and time through
an injected :class:`~.clock.Clock`, so its logic runs the same on plain event
sequences as on the kernel.
"""

from __future__ import annotations

import sys
import threading
from collections import OrderedDict, deque
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import NamedTuple

from . import netlink as nl
from .clock import Clock
from .identity import Identity, same_start
from .procfs import AccessDenied, ProcessGone, ProcessInfo, ProcFS
from .users import USER_NAMES

intern = sys.intern

# How lineage of a node was learned; anything but "fork" was inferred from ppid.
LINEAGE_FORK = "fork"  # a FORK event named the parent
LINEAGE_SNAPSHOT = "snapshot"  # ppid at start-up (may already be a reparenting)
LINEAGE_RESYNC = "resync"  # ppid at a resync after lost events
LINEAGE_LATE = "late"  # first seen at EXEC or via /proc, ppid at that time
LINEAGE_POLL = "poll"  # seen by the /proc polling fallback, ppid at that time
LINEAGE_RESTORED = "restored"  # an earlier run's state file named the fork parent


# the longest wait between two checks of an exit the kernel has not settled
RECHECK_MAX_NS = 250_000_000


class Node:
    """One process identity. Mutable, owned by the tree: copy via :meth:`PidTree.view`.

    ``start_ticks`` never changes once the node exists (consumers key on it);
    ``start_exact`` says whether it was read from /proc or derived from a FORK
    timestamp, which decides how strictly it matches (see :mod:`.identity`).
    """

    __slots__ = (
        "cgroup",
        "children",
        "cmdline",
        "comm",
        "core_dumped",
        "exe",
        "exit_code",
        "exit_inferred",
        "exit_ns",
        "exit_signal",
        "exited",
        "lineage_known",
        "lineage_source",
        "parent",
        "pid",
        "ppid",
        "reaped",
        "start_exact",
        "start_ticks",
        "state",
        "threads",
        "uid",
        "zombie_ns",
    )

    def __init__(self, pid: int, start_ticks: int, *, start_exact: bool, ppid: int,
                 parent: Node | None, lineage_source: str, comm: str | None = None,
                 cmdline: str | None = None, exe: str | None = None, uid: int | None = None,
                 cgroup: str | None = None, state: str = "R", threads: int = 1) -> None:
        self.pid = pid
        self.start_ticks = start_ticks
        self.start_exact = start_exact
        self.ppid = ppid
        self.parent = parent
        self.lineage_source = lineage_source
        # False when the fork parent cannot be known: first seen under PID 1 (perhaps
        # reparented before we looked) or under a parent younger than itself (certainly)
        self.lineage_known = True
        self.comm = comm
        self.cmdline = cmdline
        self.exe = exe
        self.uid = uid
        self.cgroup = cgroup
        self.state = state
        self.threads = threads
        self.children: dict[Node, None] | None = None  # lineage children, insertion ordered
        self.exited = False
        self.reaped = False
        self.exit_code: int | None = None
        self.exit_inferred = False  # exit concluded from /proc, not from an EXIT event
        self.exit_signal: int | None = None
        self.core_dumped = False
        self.exit_ns: int | None = None
        self.zombie_ns: int | None = None  # when the deferred check first saw state Z

    @property
    def identity(self) -> Identity:
        """(pid, start_ticks): unique across PID reuse."""
        return Identity(self.pid, self.start_ticks)

    def same_start(self, start_ticks: int) -> bool:
        """Whether /proc's start time names this process (see :mod:`.identity`)."""
        return same_start(self.start_ticks, start_ticks, self.start_exact)

    def __repr__(self) -> str:
        return f"Node({self.pid}, {self.start_ticks}, {self.comm!r}, exited={self.exited})"


class TreeListener:
    """What the tree tells downstream (root watchers) as it changes. No-ops here.

    Called by the collector thread with the tree lock held, once per change,
    so implementations must be O(1)-ish and must not call back into the tree's
    writing methods.
    """

    def spawned(self, node: Node) -> None:
        """A new process: forked, or first found by a resync or an EXEC."""

    def changed(self, node: Node, prev: tuple[str | None, str | None, str | None] | None) -> None:
        """comm, exe or cmdline changed (EXEC or COMM). ``prev`` is what they were
        (comm, exe, cmdline), or None for a process first seen at this EXEC."""

    def exited(self, node: Node) -> None:
        """The process exited (EXIT event, or concluded from /proc after loss)."""

    def zombie(self, node: Node) -> None:
        """An exited process was found unreaped (state Z)."""

    def reaped(self, node: Node) -> None:
        """The pid was freed: the node is a tombstone now."""

    def reparented(self, node: Node, prev_ppid: int) -> None:
        """The kernel gave a process a new current parent (``node.ppid``): a live one, or
        an exited one not yet reaped (whose new parent is the one that must reap it)."""

    def tick(self, now_ns: int) -> None:
        """Periodic work, after each housekeeping round (at least every 100 ms)."""


class ProcessView(NamedTuple):
    """An immutable copy of one process of the tree (CLI, Python API)."""

    pid: int
    start_ticks: int
    ppid: int
    lineage_ppid: int | None
    lineage_start: int | None
    lineage_source: str
    lineage_known: bool
    comm: str | None
    cmdline: str | None
    exe: str | None
    uid: int | None
    cgroup: str | None
    state: str
    threads: int
    exited: bool
    reaped: bool
    exit_code: int | None
    exit_signal: int | None
    exit_ns: int | None
    zombie: bool
    orphaned: bool  # alive while its lineage parent has exited

    @property
    def identity(self) -> Identity:
        """(pid, start_ticks)."""
        return Identity(self.pid, self.start_ticks)


class TreeNode(NamedTuple):
    """A process and its lineage children (see :func:`forest`)."""

    process: ProcessView
    children: tuple[TreeNode, ...]


@dataclass(slots=True)
class TreeStats:
    """Counters of what the tree has applied. Monotonic unless noted."""

    processes_forked: int = 0
    processes_exited: int = 0
    threads_created: int = 0
    threads_exited: int = 0
    threads_live: int = 0  # gauge: tasks of live processes, leaders included
    execs: int = 0
    exec_unread: int = 0  # EXEC whose process was gone before /proc could be read
    pid_reuse: int = 0  # a FORK or /proc found a new identity under a tracked pid
    missed_exits: int = 0  # processes that vanished without an EXIT (loss) and were retired
    stale_events: int = 0  # events older than the identity they name (queued before a resync)
    unknown_pid_events: int = 0  # events for pids the tree never saw
    evicted: int = 0  # tombstones dropped by capacity or TTL
    over_capacity: int = 0  # housekeeping rounds where live nodes alone exceeded capacity
    zombies_seen: int = 0
    reparented: int = 0  # current-parent changes observed (kernel reparenting)
    lineage_unknown: int = 0  # gauge: live processes whose fork parent is unknowable
    resync_added: int = 0
    resync_vanished: int = 0


@dataclass(frozen=True, slots=True)
class ReconcileResult:
    """What one reconcile against /proc changed."""

    added: int
    vanished: int
    reused: int
    reparented: int


class SavedProcess(NamedTuple):
    """One process as an earlier run knew it (see :meth:`PidTree.restore_lineage`)."""

    pid: int
    start_ticks: int
    parent: Identity | None  # its fork parent
    comm: str | None
    alive: bool  # alive when saved; else a dead ancestor kept as a lineage link


@dataclass
class LineageRestore:
    """What :meth:`PidTree.restore_lineage` did."""

    restored: dict[Identity, Node]  # saved identity -> the live node that is that process
    dropped: dict[str, int]  # saved live processes not restored, by reason
    links: int = 0  # dead ancestors put back as tombstones to carry lineage


DROP_EXITED = "exited"  # gone while the exporter was down
DROP_PID_REUSED = "pid_reused"  # its pid now names another process
DROP_INCONSISTENT = "inconsistent"  # its saved parent cannot be its parent (younger, a cycle)


class PidTree:
    """The host's processes by identity, updated from proc connector events."""

    def __init__(
        self,
        *,
        max_nodes: int = 50_000,
        tombstone_ttl_s: float = 300.0,
        cmdline_max_chars: int = 4096,
        read_cmdlines: bool = True,
        read_cgroups: bool = False,
        reap_check_delay_s: float = 0.02,
        zombie_recheck_s: float = 1.0,
        reader: ProcFS | None = None,
        clock: Clock | None = None,
    ) -> None:
        self.lock = threading.RLock()
        self.max_nodes = max_nodes
        self.tombstone_ttl_ns = int(tombstone_ttl_s * 1e9)
        self.cmdline_max_chars = cmdline_max_chars
        # an EXEC's command line costs as much as its comm and exe together: the
        # daemon reads it only while a root selects or captures by it
        self.read_cmdlines = read_cmdlines
        self.read_cgroups = read_cgroups
        self.reap_check_delay_ns = int(reap_check_delay_s * 1e9)
        self.zombie_recheck_ns = int(zombie_recheck_s * 1e9)
        self.reader = reader if reader is not None else ProcFS()
        self.clock = clock if clock is not None else Clock()
        # monotonic time of the event being applied (or of the housekeeping round):
        # listeners stamp what they report with it
        self.event_ns = self.clock.monotonic_ns()
        self.stats = TreeStats()
        self.listener = TreeListener()
        self.user_name = USER_NAMES
        # pid -> node whose pid the kernel still holds (running, exiting or zombie)
        self._live: dict[int, Node] = {}
        # reaped nodes in reap order. An OrderedDict, not a dict: evicting the oldest
        # over and over makes next(iter(dict)) walk every deleted slot before it
        self._tombstones: OrderedDict[Node, None] = OrderedDict()
        # exited nodes awaiting the check that tells reaped from zombie
        self._pending: deque[Node] = deque()
        # exits the kernel had not settled at their check: (due ns, tries, node), rechecked
        # with a doubling delay (a parent slow to reap under load cost a stat every round)
        self._recheck: deque[tuple[int, int, Node]] = deque()
        self._zombies: dict[int, Node] = {}
        self._zombie_checked_ns = 0
        # current parent pid -> its live children, to refresh them when it exits
        self._by_ppid: dict[int, set[Node]] = {}
        # nodes the last reconcile found gone: their EXIT may still be queued
        self._vanished: dict[int, Node] = {}
        self._handlers = {
            int(nl.What.FORK): self._on_fork,
            int(nl.What.EXEC): self._on_exec,
            int(nl.What.EXIT): self._on_exit,
            int(nl.What.COMM): self._on_comm,
            int(nl.What.UID): self._on_uid,
        }

    # -- reading -------------------------------------------------------------

    def __len__(self) -> int:
        return len(self._live) + len(self._tombstones)

    @property
    def live_count(self) -> int:
        """Nodes whose pid the kernel still holds (running, exiting or zombie)."""
        return len(self._live)

    @property
    def tombstone_count(self) -> int:
        """Reaped nodes kept for lineage and inspection."""
        return len(self._tombstones)

    @property
    def zombie_count(self) -> int:
        """Exited processes still unreaped (state Z) as of the last check."""
        return len(self._zombies)

    def get(self, pid: int) -> Node | None:
        """The node currently holding ``pid`` (alive, exiting or zombie)."""
        return self._live.get(pid)

    def find(self, pid: int) -> list[Node]:
        """Every node that held ``pid``, newest first (the live one, then tombstones).

        O(tombstones): for the API and tests, not the event path. Hold :attr:`lock`.
        """
        found = [n for n in reversed(self._tombstones) if n.pid == pid]
        live = self._live.get(pid)
        return [live, *found] if live is not None else found

    def enable_cgroups(self) -> None:
        """Start reading cgroups (at EXEC), and read them now for every live process.

        Off by default: the read costs about as much as the rest of an EXEC.
        """
        with self.lock:
            self.read_cgroups = True
            self._read_live("cgroup", self.reader.cgroup)

    def enable_cmdlines(self) -> None:
        """Start reading command lines (at EXEC), and read them now for every live process."""
        with self.lock:
            self.read_cmdlines = True
            self._read_live("cmdline",
                            lambda pid: self.reader.cmdline(pid, self.cmdline_max_chars))

    def _read_live(self, field: str, read: Callable[[int], str | None]) -> None:
        """Fill ``field`` of every live process that has none yet (a read switched on
        late); a process gone or refused keeps none."""
        for node in self._live.values():
            if getattr(node, field) is None and not node.exited:
                try:
                    setattr(node, field, read(node.pid))
                except (ProcessGone, AccessDenied, ValueError):
                    pass

    def known_starts(self) -> dict[int, int]:
        """pid -> start_ticks of every live node (for a cheap resync walk)."""
        with self.lock:
            return {pid: n.start_ticks for pid, n in self._live.items()}

    def nodes(self) -> Iterator[Node]:
        """All nodes, live first. Hold :attr:`lock` while iterating."""
        yield from self._live.values()
        yield from self._tombstones

    def live_nodes(self) -> Iterator[Node]:
        """The nodes holding a pid now (live, or exited and unreaped). Hold :attr:`lock`."""
        return iter(self._live.values())

    def view(self, node: Node) -> ProcessView:
        """An immutable copy of ``node``."""
        parent = node.parent
        return ProcessView(
            pid=node.pid,
            start_ticks=node.start_ticks,
            ppid=node.ppid,
            lineage_ppid=parent.pid if parent else None,
            lineage_start=parent.start_ticks if parent else None,
            lineage_source=node.lineage_source,
            lineage_known=node.lineage_known,
            comm=node.comm,
            cmdline=node.cmdline,
            exe=node.exe,
            uid=node.uid,
            cgroup=node.cgroup,
            state=node.state,
            threads=node.threads,
            exited=node.exited,
            reaped=node.reaped,
            exit_code=node.exit_code,
            exit_signal=node.exit_signal,
            exit_ns=node.exit_ns,
            zombie=node.zombie_ns is not None and not node.reaped,
            orphaned=(not node.exited and parent is not None and parent.exited),
        )

    def snapshot(self) -> list[ProcessView]:
        """Every node as an immutable view, taken under the lock."""
        with self.lock:
            return [self.view(n) for n in self.nodes()]

    def ancestors(self, node: Node) -> Iterator[Node]:
        """Lineage ancestors, nearest first; stops at pid 1 or 0, a self-loop or a cycle."""
        seen = {id(node)}
        cur = node.parent
        while cur is not None and id(cur) not in seen:
            yield cur
            if cur.pid <= 1:
                return
            seen.add(id(cur))
            cur = cur.parent

    def chain(self, pid: int) -> str:
        """``pid|comm|user;ppid|comm|user;...`` up to PID 1, by lineage.

        Pids the tree does not know, and ancestors past the first one whose
        lineage is unknown, continue through /proc's current parent.
        """
        parts: list[str] = []
        seen_pids: set[int] = set()
        with self.lock:
            cur = self._live.get(pid)
            seen_nodes: set[int] = set()
            while cur is not None:
                if id(cur) in seen_nodes:
                    return ";".join(parts)  # a cycle: stop where it closes
                seen_nodes.add(id(cur))
                seen_pids.add(cur.pid)
                parts.append(self._chain_part(cur.pid, cur.comm, cur.uid))
                if cur.pid <= 1:
                    return ";".join(parts)
                if cur.parent is None:
                    pid = cur.ppid
                    break
                cur = cur.parent
        while pid > 0 and pid not in seen_pids:
            seen_pids.add(pid)
            try:
                st = self.reader.stat(pid)
            except (ProcessGone, AccessDenied, ValueError):
                parts.append(self._chain_part(pid, None, None))
                break
            parts.append(self._chain_part(pid, st.comm, self.reader.uid(pid)))
            if pid == 1:
                break
            pid = st.ppid
        return ";".join(parts)

    def _chain_part(self, pid: int, comm: str | None, uid: int | None) -> str:
        return f"{pid}|{comm if comm is not None else '?'}|{self.user_name(uid)}"

    def descendants(self, pid: int, *, include_exited: bool = False) -> list[Node]:
        """Lineage descendants of the process holding ``pid`` (depth first, pre-order)."""
        with self.lock:
            root = self._live.get(pid)
            if root is None:
                return []
            out: list[Node] = []
            stack = list(reversed(root.children or ()))
            seen = {id(root)}
            while stack:
                n = stack.pop()
                if id(n) in seen:
                    continue
                seen.add(id(n))
                if include_exited or not n.exited:
                    out.append(n)
                if n.children:
                    stack.extend(reversed(n.children))
            return out

    def is_descendant(self, pid: int, ancestor: int | str) -> bool:
        """Whether the process holding ``pid`` descends (by lineage) from ``ancestor``.

        ``ancestor`` is a pid or a comm.
        """
        with self.lock:
            node = self._live.get(pid)
            if node is None:
                return False
            for anc in self.ancestors(node):
                if (anc.comm == ancestor) if isinstance(ancestor, str) else (anc.pid == ancestor):
                    return True
            return False

    # -- writing: events -------------------------------------------------------

    def apply(self, event: nl.Event) -> None:
        """Apply one connector event. Call with :attr:`lock` held."""
        self.apply_record(event.record())

    def apply_record(self, rec: tuple) -> None:
        """Apply one event as :func:`.netlink.parse_records` gives it (the collector's
        path: no event object is built). Call with :attr:`lock` held."""
        handler = self._handlers.get(rec[0])
        if handler is not None:
            self.event_ns = rec[3]
            handler(rec)

    def _ticks(self, ts_ns: int) -> int:
        return self.clock.ticks(ts_ns)

    def _is_stale(self, node: Node, ts_ns: int) -> bool:
        """The event predates the process now holding the pid: it names an older one."""
        if node.start_ticks > self._ticks(ts_ns) + 1:
            self.stats.stale_events += 1
            return True
        return False

    def _on_fork(self, rec: tuple) -> None:
        _what, _cpu, _seq, ts_ns, _parent_pid, parent_tgid, pid, child_tgid = rec
        live = self._live
        if pid != child_tgid:
            self.stats.threads_created += 1
            owner = live.get(child_tgid)
            if owner is not None:
                owner.threads += 1
                self.stats.threads_live += 1
            return
        start = self._ticks(ts_ns)
        parent = live.get(parent_tgid)
        old = live.get(pid)
        if old is not None:
            if not old.exited and old.same_start(start):
                # already known from a snapshot taken after this event was queued:
                # the event is the better witness of lineage
                if old.lineage_source != LINEAGE_FORK and parent is not None and parent is not old:
                    self._set_parent(old, parent)
                    old.lineage_source = LINEAGE_FORK
                    self._set_lineage_known(old, True)
                return
            if old.start_ticks > start + 1:
                self.stats.stale_events += 1
                return
            self._retire(old)
        node = Node(pid, start, start_exact=False, ppid=parent_tgid, parent=parent,
                    lineage_source=LINEAGE_FORK)
        if parent is not None:
            # fork copies these; EXEC, COMM and UID events refresh them
            node.comm = parent.comm
            node.exe = parent.exe
            node.cmdline = parent.cmdline
            node.uid = parent.uid
            node.cgroup = parent.cgroup
            if parent.children is None:
                parent.children = {node: None}
            else:
                parent.children[node] = None
        live[pid] = node
        kids = self._by_ppid.get(parent_tgid)
        if kids is None:
            self._by_ppid[parent_tgid] = {node}
        else:
            kids.add(node)
        self.stats.processes_forked += 1
        self.stats.threads_live += 1
        self.listener.spawned(node)

    def _on_exec(self, rec: tuple) -> None:
        ts_ns, pid = rec[3], rec[5]  # the tgid: a thread's exec is its process's
        self.stats.execs += 1
        node = self._live.get(pid)
        if node is not None and self._is_stale(node, ts_ns):
            return
        reader = self.reader
        first = node is None
        prev = None if node is None else (node.comm, node.exe, node.cmdline)
        try:
            if node is None:
                # first sight of this process: stat gives its parent and exact start
                st = reader.stat(pid)
                node = self._add_from_proc(pid, st.start_ticks, st.ppid, LINEAGE_LATE)
                node.state = st.state
                comm = st.comm
            else:
                # a known process: comm is all stat would add (its start is known to
                # within a tick, and exec keeps pid and start), at 2/3 of stat's cost
                comm = reader.comm(pid)
                if node.exited and not node.reaped:
                    # a non-leader thread exec'd: the old leader's EXIT was not the process's
                    self._revive(node)
            # interned: a host runs few distinct programs, and every node keeps its own.
            # exe last but cgroup: another user's is refused without CAP_SYS_PTRACE
            node.comm = intern(comm)
            node.cmdline = (reader.cmdline(pid, self.cmdline_max_chars)
                            if self.read_cmdlines else None)
            exe = reader.exe(pid)
            node.exe = intern(exe) if exe else exe
            if self.read_cgroups:
                cg = reader.cgroup(pid)
                node.cgroup = intern(cg) if cg else cg
        except ProcessGone:
            # gone before we could look: it keeps what fork told us
            self.stats.exec_unread += 1
            if node is None:
                self.stats.unknown_pid_events += 1
                return
        except AccessDenied:
            if node is None:
                self.stats.unknown_pid_events += 1
                return
        except ValueError:
            self.stats.exec_unread += 1
            if node is None:
                return
        if first:
            self.listener.spawned(node)  # with what this EXEC let us read
        self.listener.changed(node, prev)

    def _on_exit(self, rec: tuple) -> None:
        _what, _cpu, _seq, ts_ns, pid, tgid, status = rec[:7]
        if pid != tgid:
            self.stats.threads_exited += 1
            owner = self._live.get(tgid)
            # only a thread we counted can leave (a live process keeps its leader)
            if owner is not None and owner.threads > (0 if owner.exited else 1):
                owner.threads -= 1
                self.stats.threads_live -= 1
            return
        node = self._live.get(pid)
        if node is None:
            node = self._vanished.get(pid)
            if node is None or not node.exit_inferred or self._is_stale(node, ts_ns):
                self.stats.unknown_pid_events += 1
                return
        if node.exited:
            if node.exit_inferred and not self._is_stale(node, ts_ns):
                # a resync concluded this exit; the queued event brings its details
                self._record_exit(node, status, ts_ns)
                self.stats.missed_exits -= 1
            return
        if self._is_stale(node, ts_ns):
            return
        self._record_exit(node, status, ts_ns)
        node.exited = True
        node.state = "X"
        if node.threads > 0:  # the leader; other threads' EXITs may still come
            node.threads -= 1
            self.stats.threads_live -= 1
        self.stats.processes_exited += 1
        self._pending.append(node)
        self.listener.exited(node)

    @staticmethod
    def _record_exit(node: Node, status: int, ts_ns: int) -> None:
        node.exit_code, node.exit_signal, node.core_dumped = nl.decode_wait_status(status)
        node.exit_ns = ts_ns
        node.exit_inferred = False

    def _on_comm(self, rec: tuple) -> None:
        _what, _cpu, _seq, ts_ns, pid, tgid, comm = rec
        if pid != tgid:
            return  # a thread's name is not the process's comm
        node = self._live.get(pid)
        if node is not None and not self._is_stale(node, ts_ns) and node.comm != comm:
            prev = (node.comm, node.exe, node.cmdline)
            node.comm = comm
            self.listener.changed(node, prev)

    def _on_uid(self, rec: tuple) -> None:
        _what, _cpu, _seq, ts_ns, pid, tgid, _ruid, euid = rec
        if pid != tgid:
            return
        node = self._live.get(pid)
        if node is not None and not self._is_stale(node, ts_ns):
            node.uid = euid

    # -- writing: structure ------------------------------------------------------

    def _set_parent(self, node: Node, parent: Node | None) -> None:
        old = node.parent
        if old is not None and old.children:
            old.children.pop(node, None)
        node.parent = parent
        if parent is not None:
            if parent.children is None:
                parent.children = {node: None}
            else:
                parent.children[node] = None

    def _set_ppid(self, node: Node, ppid: int) -> None:
        prev = node.ppid
        if ppid == prev:
            return
        kids = self._by_ppid.get(prev)
        if kids is not None:
            kids.discard(node)
            if not kids:
                del self._by_ppid[prev]
        node.ppid = ppid
        self._by_ppid.setdefault(ppid, set()).add(node)
        self.stats.reparented += 1
        self.listener.reparented(node, prev)

    def _add_from_proc(self, pid: int, start: int, ppid: int, source: str,
                       info: ProcessInfo | None = None) -> Node:
        """A node for a process first learned from /proc; lineage = current parent."""
        parent = self._live.get(ppid)
        node = Node(pid, start, start_exact=True, ppid=ppid, parent=None, lineage_source=source)
        if info is not None:
            st = info.stat
            node.comm, node.state, node.threads = intern(st.comm), st.state, st.num_threads
            node.cmdline, node.uid = info.cmdline, info.uid
            node.exe = intern(info.exe) if info.exe else info.exe
            node.cgroup = intern(info.cgroup) if info.cgroup else info.cgroup
        elif parent is not None:
            node.uid, node.cgroup = parent.uid, parent.cgroup
        self._live[pid] = node
        self._by_ppid.setdefault(ppid, set()).add(node)
        self.stats.threads_live += node.threads
        if parent is not None and parent is not node:
            self._set_parent(node, parent)
        if ppid == 1 or (parent is not None and parent.start_ticks > start):
            self._set_lineage_known(node, False)
        return node

    def _set_lineage_known(self, node: Node, known: bool) -> None:
        if node.lineage_known != known:
            node.lineage_known = known
            self.stats.lineage_unknown += -1 if known else 1

    def _revive(self, node: Node) -> None:
        node.exited = False
        node.exit_code = node.exit_signal = node.exit_ns = None
        node.core_dumped = False
        self.stats.processes_exited -= 1
        self.stats.threads_live += 1
        node.threads += 1
        try:
            self._pending.remove(node)
        except ValueError:
            self._recheck = deque(e for e in self._recheck if e[2] is not node)

    def _retire(self, node: Node) -> None:
        """A new identity holds ``node``'s pid: the old one must be gone (missed or reaped)."""
        self.stats.pid_reuse += 1
        if not node.exited:
            self._infer_exit(node)
        self._bury(node)

    def _infer_exit(self, node: Node) -> None:
        """Mark ``node`` exited without its EXIT event (lost, or still queued)."""
        self.stats.missed_exits += 1
        self.stats.processes_exited += 1
        self.stats.threads_live -= node.threads
        node.exited = True
        node.exit_inferred = True
        node.threads = 0
        self.listener.exited(node)

    def _bury(self, node: Node) -> None:
        """The kernel has reaped ``node``: free its pid, keep it as a tombstone."""
        if self._live.get(node.pid) is node:
            del self._live[node.pid]
        kids = self._by_ppid.get(node.ppid)
        if kids is not None:
            kids.discard(node)
            if not kids:
                del self._by_ppid[node.ppid]
        if self._zombies.get(node.pid) is node:
            del self._zombies[node.pid]
        node.reaped = True
        node.state = "X"
        if not node.lineage_known:
            self.stats.lineage_unknown -= 1
        self.stats.threads_live -= node.threads  # threads whose EXIT never came
        node.threads = 0
        if node.exit_ns is None:
            node.exit_ns = self.clock.monotonic_ns()
        self._tombstones[node] = None
        self.listener.reaped(node)

    def _evict(self, node: Node) -> None:
        """Forget a tombstone; its lineage children move up to its parent."""
        del self._tombstones[node]
        parent = node.parent
        if parent is not None and parent.children:
            parent.children.pop(node, None)
        if node.children:
            for child in node.children:
                child.parent = parent
                if parent is not None:
                    if parent.children is None:
                        parent.children = {}
                    parent.children[child] = None
        node.children = None
        node.parent = None
        self.stats.evicted += 1

    # -- writing: /proc ----------------------------------------------------------

    def housekeeping(self, now_ns: int | None = None, *, settle: bool = False) -> None:
        """Deferred work: tell reaped from zombie, refresh reparented children,
        recheck zombies, evict tombstones. Call with :attr:`lock` held, often
        (the collector does so whenever it is idle and at least every 100 ms).
        ``settle``: check every exit now, however recent (before a new root looks
        at the tree, so that children the kernel has moved are seen as moved).
        """
        now = self.clock.monotonic_ns() if now_ns is None else now_ns
        self.event_ns = now
        pending = self._pending
        live = self._live
        delay = self.reap_check_delay_ns
        cutoff = now - (0 if settle else delay)
        requeue: list[tuple[int, int, Node]] = []
        while pending and (pending[0].exit_ns or 0) <= cutoff:
            node = pending.popleft()
            if node.reaped or live.get(node.pid) is not node:
                continue
            if not self._check_exited(node, now):
                requeue.append((now + delay, 1, node))
        recheck = self._recheck
        while recheck and (settle or recheck[0][0] <= now):
            _due, tries, node = recheck.popleft()
            if node.reaped or live.get(node.pid) is not node:
                continue
            if not self._check_exited(node, now):
                requeue.append((now + min(delay << tries, RECHECK_MAX_NS), tries + 1, node))
        recheck.extend(requeue)
        if self._zombies and now - self._zombie_checked_ns >= self.zombie_recheck_ns:
            self._zombie_checked_ns = now
            for node in list(self._zombies.values()):
                self._check_exited(node, now)
        self._evict_tombstones(now)
        self.listener.tick(now)
        self.clock.refresh(now)  # the boot offset moves only across a suspend

    def _check_exited(self, node: Node, now: int) -> bool:
        """Look at an exited node in /proc; False if the kernel has not settled it yet."""
        settled = True
        st = None
        # nearly every exited process is already reaped: asking the kernel whether
        # the pid exists costs a quarter of failing to open its stat file
        if self.reader.exists(node.pid) is False:
            self._refresh_children(node)
            self._bury(node)
            return True
        try:
            st = self.reader.stat(node.pid)
        except (ProcessGone, ValueError):
            st = None
        except AccessDenied:
            return True  # cannot know; leave it as it is
        if st is None or not node.same_start(st.start_ticks):
            self._refresh_children(node)
            self._bury(node)
            return True
        if st.state == "Z":
            if node.zombie_ns is None:
                node.zombie_ns = now
                self.stats.zombies_seen += 1
                self.listener.zombie(node)
            node.state = "Z"
            self._zombies[node.pid] = node
        else:
            settled = False  # still in do_exit
        if not self._refresh_children(node):
            settled = False
        return settled

    def _refresh_children(self, node: Node) -> bool:
        """Read the new current parent of ``node``'s live children; False if not yet moved."""
        kids = self._by_ppid.get(node.pid)
        if not kids:
            return True
        moved_all = True
        for child in list(kids):
            try:
                st = self.reader.stat(child.pid)
            except (ProcessGone, AccessDenied, ValueError):
                continue  # its own EXIT will settle it
            if not child.same_start(st.start_ticks):
                continue
            if st.ppid == node.pid:
                moved_all = False
            else:
                self._set_ppid(child, st.ppid)
        return moved_all

    def _evict_tombstones(self, now: int) -> None:
        tomb = self._tombstones
        ttl_cut = now - self.tombstone_ttl_ns
        room = self.max_nodes - len(self._live)
        if room < 0:
            self.stats.over_capacity += 1
            room = 0
        while tomb:
            oldest = next(iter(tomb))
            if len(tomb) > room or (oldest.exit_ns or 0) < ttl_cut:
                self._evict(oldest)
            else:
                break

    def reconcile(self, infos: Iterable[ProcessInfo], *, source: str = LINEAGE_RESYNC,
                  now_ns: int | None = None) -> ReconcileResult:
        """Make the tree agree with a /proc snapshot. Call with :attr:`lock` held.

        Processes /proc no longer has are retired; new ones are added with
        lineage = current parent (marked by ``source``); known ones get their
        current parent, state and comm refreshed. Lineage already known is kept.
        """
        now = self.clock.monotonic_ns() if now_ns is None else now_ns
        self.event_ns = now
        by_pid = {info.stat.pid: info for info in infos}
        self._vanished = {}
        vanished = reused = reparented = 0
        gone: list[tuple[Node, bool]] = []  # (node, its pid now names another process)
        zombies: list[Node] = []
        # survivors first, so that when a parent's exit is concluded below, its
        # children already have the parent the kernel gave them
        for pid, node in list(self._live.items()):
            info = by_pid.get(pid)
            if info is None or not node.same_start(info.stat.start_ticks):
                gone.append((node, info is not None))
                continue
            st = info.stat
            if st.ppid != node.ppid:
                reparented += 1
                self._set_ppid(node, st.ppid)
            node.state = st.state
            node.comm = intern(st.comm)
            node.threads = st.num_threads
            if st.state == "Z":
                zombies.append(node)
        for node, reused_pid in gone:
            reused += reused_pid
            if not node.exited:
                vanished += 1
            if reused_pid:
                self._retire(node)
            else:
                self._vanish(node)
        for node in zombies:
            if not node.exited:
                self._infer_exit(node)
                node.exit_ns = now
            if node.zombie_ns is None:
                node.zombie_ns = now
                self.stats.zombies_seen += 1
                self.listener.zombie(node)
            self._zombies[node.pid] = node
        new = [info for pid, info in by_pid.items() if pid not in self._live]
        new.sort(key=lambda i: i.stat.start_ticks)  # parents before children
        added = [self._add_from_proc(i.stat.pid, i.stat.start_ticks, i.stat.ppid, source, i)
                 for i in new]
        # a child may have been listed before its parent: link what is still unlinked
        for node in added:
            parent = self._live.get(node.ppid)
            if node.parent is None and parent is not None and parent is not node:
                self._set_parent(node, parent)
                if parent.start_ticks > node.start_ticks:  # adopted by a younger subreaper
                    self._set_lineage_known(node, False)
        for node in added:  # parents first, so that downstream inherits along lineage
            self.listener.spawned(node)
            if node.state == "Z":
                node.exited = True
                node.exit_ns = node.zombie_ns = now
                self._zombies[node.pid] = node
                self.stats.zombies_seen += 1
                self.listener.exited(node)
                self.listener.zombie(node)
        # thread counts drift when thread events are lost: /proc is the truth now
        self.stats.threads_live = sum(n.threads for n in self._live.values() if not n.exited)
        self.stats.resync_added += len(new)
        self.stats.resync_vanished += vanished
        self._evict_tombstones(now)
        return ReconcileResult(added=len(new), vanished=vanished, reused=reused,
                               reparented=reparented)

    def restore_lineage(self, saved: Iterable[SavedProcess]) -> LineageRestore:
        """Give live processes back the fork parents an earlier run learned.

        A saved process is restored only onto the live node that is that same
        process (pid and start time, by the rule of :mod:`.identity`); one whose
        pid is free now, or held by another process, is dropped and counted.
        Its fork parent becomes its lineage parent again: the live process, or a
        tombstone rebuilt from the saved entry (with its own saved parent), so a
        wrapper that exited before the restart still carries its orphans.
        Restored nodes say ``lineage_source: restored``. Call right after the
        tree is seeded; takes :attr:`lock`.
        """
        with self.lock:
            by_id = {Identity(s.pid, s.start_ticks): s for s in saved}
            result = LineageRestore({}, {DROP_EXITED: 0, DROP_PID_REUSED: 0,
                                         DROP_INCONSISTENT: 0})
            for ident, s in by_id.items():
                if not s.alive:
                    continue
                node = self._live.get(s.pid)
                if node is None:
                    result.dropped[DROP_EXITED] += 1
                elif not same_start(s.start_ticks, node.start_ticks):
                    result.dropped[DROP_PID_REUSED] += 1
                else:
                    result.restored[ident] = node
            tombs: dict[Identity, Node] = {}
            for t in self._tombstones:
                tombs.setdefault(t.identity, t)
            now = self.clock.monotonic_ns()

            def resolve(ident: Identity) -> Node:
                """The node for a saved parent identity; dead ones become tombstones."""
                chain: list[Identity] = []
                seen: set[Identity] = set()
                top: Node | None = None
                cur: Identity | None = ident
                while cur is not None and cur not in seen:
                    seen.add(cur)
                    live = self._live.get(cur.pid)
                    if live is not None and same_start(cur.start_ticks, live.start_ticks):
                        top = live
                        break
                    if cur in tombs:
                        top = tombs[cur]
                        break
                    chain.append(cur)
                    entry = by_id.get(cur)
                    cur = entry.parent if entry is not None else None
                for link_id in reversed(chain):  # oldest first: each under the one above
                    entry = by_id.get(link_id)
                    link = Node(link_id.pid, link_id.start_ticks, start_exact=False, ppid=0,
                                parent=None, lineage_source=LINEAGE_RESTORED,
                                comm=entry.comm if entry is not None else None, state="X",
                                threads=0)
                    link.exited = link.reaped = True
                    link.exit_ns = now
                    if top is not None and top.start_ticks <= link.start_ticks + 1:
                        self._set_parent(link, top)
                    self._tombstones[link] = None
                    tombs[link_id] = link
                    result.links += 1
                    top = link
                assert top is not None
                return top

            for ident, node in list(result.restored.items()):
                want = by_id[ident].parent
                if want is None:
                    continue
                parent = resolve(want)
                if parent is node or parent.start_ticks > node.start_ticks + 1 \
                        or any(a is node for a in self.ancestors(parent)):
                    result.dropped[DROP_INCONSISTENT] += 1
                    del result.restored[ident]
                    continue
                if node.parent is not parent:
                    self._set_parent(node, parent)
                node.lineage_source = LINEAGE_RESTORED
                self._set_lineage_known(node, True)
            return result

    def _vanish(self, node: Node) -> None:
        """A tracked process is gone from /proc without an EXIT we saw."""
        self._vanished[node.pid] = node
        if not node.exited:
            self._infer_exit(node)
        self._bury(node)


def forest(views: Iterable[ProcessView], root_pid: int | None = None) -> list[TreeNode]:
    """Nest process views by lineage, oldest first at every level.

    Processes whose lineage parent is not among ``views`` are top-level. With
    ``root_pid``, only the unreaped process holding that pid and its descendants.
    """
    views = list(views)
    by_id = {v.identity: v for v in views}
    kids: dict[Identity, list[ProcessView]] = {}
    tops: list[ProcessView] = []
    for v in views:
        key = Identity(v.lineage_ppid, v.lineage_start) if v.lineage_ppid is not None else None
        if key is not None and key in by_id and key != v.identity:
            kids.setdefault(key, []).append(v)
        else:
            tops.append(v)
    if root_pid is not None:
        tops = [v for v in views if v.pid == root_pid and not v.reaped]
    seen: set[Identity] = set()
    out = []
    for top in sorted(tops, key=_age):
        if top.identity in seen:
            continue
        seen.add(top.identity)
        # iterative post-order: lineage chains can be deeper than Python's recursion
        stack: list[tuple[ProcessView, list[ProcessView], list[TreeNode]]] = []
        # children to visit, youngest first: pop() takes the oldest
        todo = [c for c in sorted(kids.get(top.identity, ()), key=_age, reverse=True)
                if c.identity not in seen]
        seen.update(c.identity for c in todo)
        stack.append((top, todo, []))
        while True:
            view, todo, done = stack[-1]
            if todo:
                child = todo.pop()
                grand = [c for c in sorted(kids.get(child.identity, ()), key=_age, reverse=True)
                         if c.identity not in seen]
                seen.update(c.identity for c in grand)
                stack.append((child, grand, []))
                continue
            stack.pop()
            node = TreeNode(view, tuple(done))
            if not stack:
                out.append(node)
                break
            stack[-1][2].append(node)
    return out


def _age(v: ProcessView) -> tuple[int, int]:
    return (v.start_ticks, v.pid)
