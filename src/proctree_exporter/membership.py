"""Membership: which processes belong to each root, kept current from the tree's changes.

A *root* is chosen by a selector (pid, pidfile, comm, exe, cmdline regex,
cgroup prefix). Every live process that matches, and is not already inside
another instance of the same root, is an *instance*; the root's *members* are
its instances and their lineage descendants, including those whose parent
has exited (orphans).

:class:`Roots` listens to the PidTree on the collector thread, with the tree
lock held. A forked child joins the roots of its fork parent (O(roots of the
parent) per FORK, never a scan of the host); EXEC and COMM re-run the
comm/exe/cmdline/cgroup selectors on that one process; EXIT moves it out.
It classifies members with the pure functions of :mod:`.classification`, runs
the opt-in cleanup of :mod:`.actions`, and records every change as one typed
:class:`~.events.RootEvent` in the root's :class:`~.changelog.ChangeLog`:
that log (and the O(roots) counters :mod:`.snapshot` copies for /metrics) is
all that leaves this module. It is the one owner of each root's state.
"""

from __future__ import annotations

import logging
import os
import re
import signal
from collections import OrderedDict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

from .actions import ActionOutcome, Cleanup, action_name, send_to_identity
from .changelog import ChangeLog, Record, Relist, Wakeup, expand
from .classification import (
    EXITED,
    HEALTHY,
    INFERRED_LINEAGE,
    ORPHANED,
    PID_REUSED,
    ZOMBIE,
    Confidence,
    ProcessClass,
    is_orphaned,
    zombie_due,
)
from .clock import Clock
from .events import Ancestor, EventKind, RootEvent
from .identity import Identity
from .rootspec import RootSpec
from .tree import Node, PidTree, TreeListener

log = logging.getLogger(__name__)

_REMATCH_KINDS = frozenset({"comm", "exe", "cmdline", "cgroup"})
PIDFILE_CHECK_NS = 1_000_000_000  # a down pidfile root re-reads its file this often
MAX_ANCESTORS = 256  # ancestors an instance's join carries
# an enum's attribute costs a lookup
_JOINED, _EXEC, _EXITED = EventKind.JOINED, EventKind.EXEC, EventKind.EXITED
_REPARENTED, _LEFT = EventKind.REPARENTED, EventKind.LEFT


class Selector:
    """Decides whether one process is an instance of a root."""

    def __init__(self, spec: RootSpec) -> None:
        self.kind = spec.select
        self.value = spec.match
        self.pid: int | None = None
        if self.kind == "pid":
            self.pid = os.getpid() if spec.match == "self" else int(spec.match)
        self.regex = re.compile(spec.match) if self.kind == "cmdline" else None
        self.cgroup_prefix = spec.match.rstrip("/") + "/" if self.kind == "cgroup" else ""
        self.pidfile_error: str | None = None
        if self.kind == "pidfile":
            self.reload_pidfile()

    @property
    def rematches(self) -> bool:
        """Whether EXEC and COMM can make a process match (comm, exe, cmdline, cgroup)."""
        return self.kind in _REMATCH_KINDS

    def reload_pidfile(self) -> None:
        """Re-read the pidfile; a missing or bad file leaves no pid and says why."""
        try:
            text = Path(self.value).read_text(encoding="ascii", errors="replace").strip()
            self.pid = int(text.split()[0])
            self.pidfile_error = None
        except (OSError, ValueError, IndexError) as exc:
            self.pid = None
            self.pidfile_error = f"pidfile {self.value}: {getattr(exc, 'strerror', None) or exc}"

    def matches(self, node: Node) -> bool:
        """Whether ``node`` is (the start of) an instance of this root."""
        kind = self.kind
        if kind in ("pid", "pidfile"):
            return node.pid == self.pid
        if kind == "comm":
            return node.comm == self.value
        if kind == "exe":
            exe = node.exe
            if not exe:
                return False
            exe = exe.removesuffix(" (deleted)")
            return exe == self.value if "/" in self.value else exe.rsplit("/", 1)[-1] == self.value
        if kind == "cmdline":
            return bool(node.cmdline and self.regex and self.regex.search(node.cmdline))
        cg = node.cgroup  # cgroup
        return cg is not None and (cg == self.value.rstrip("/") or cg.startswith(
            self.cgroup_prefix) or self.cgroup_prefix == "/")


@dataclass(slots=True, eq=False)  # one per root: hashed and compared by identity
class RootState:
    """Membership, classes and counters of one root. Collector thread only."""

    spec: RootSpec
    selector: Selector
    log: ChangeLog
    instances: dict[Node, None] = field(default_factory=dict)
    members: dict[Node, int] = field(default_factory=dict)  # live member -> depth
    unreaped: dict[Node, int] = field(default_factory=dict)  # exited, pid still held
    # reaped members kept for pid_reused and relists, oldest first:
    # node -> (depth, lineage parent (pid, start) at the reap)
    # (an OrderedDict: taking the oldest of a dict again and again walks its deleted slots)
    tombstones: OrderedDict[Node, tuple[int, Identity | None]] = field(
        default_factory=OrderedDict)
    classes: dict[Node, RootEvent] = field(default_factory=dict)  # the event that set it
    depth_counts: dict[int, int] = field(default_factory=dict)
    n_listed: int = 0  # live members shown (instances hidden with include_root off)
    n_class: dict[ProcessClass, int] = field(
        default_factory=lambda: {HEALTHY: 0, ORPHANED: 0, ZOMBIE: 0})
    spawned_total: int = 0
    exited_total: int = 0
    restarts: int = 0
    pid_reuse_seen: int = 0
    class_changes_total: dict[str, int] = field(default_factory=dict)
    actions: dict[tuple[str, str], int] = field(default_factory=dict)  # (action, outcome)
    had_instance: bool = False
    cleanup: Cleanup = field(default_factory=Cleanup)
    # live listed members below an instance whose lineage came from /proc, by source,
    # and each such member's source as it joined (the tree may learn its fork later:
    # what the join counted is what its exit uncounts, as the mirrors see it)
    inferred: dict[str, int] = field(default_factory=dict)
    inferred_at_join: dict[Node, str] = field(default_factory=dict)

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def alive(self) -> bool:
        return bool(self.instances)

    @property
    def deepest(self) -> int:
        return max((d for d, n in self.depth_counts.items() if n), default=0)

    def listed(self, depth: int) -> bool:
        """Whether a member at ``depth`` is shown (instances hide with include_root off)."""
        return depth > 0 or self.spec.include_root

    def class_of(self, node: Node) -> ProcessClass:
        ev = self.classes.get(node)
        return ev.new_class if ev is not None and ev.new_class else HEALTHY


class SavedCounters(NamedTuple):
    """A root's cumulative figures as an earlier run left them at its shutdown."""

    spawned_total: int
    exited_total: int
    restarts_total: int
    pid_reuse_total: int
    class_changes_total: dict[str, int]
    actions_total: dict[tuple[str, str], int]  # (action, outcome) -> count


class SavedMember(NamedTuple):
    """A live member of a root as an earlier run knew it."""

    identity: Identity
    depth: int
    cls: str


class SavedRoot(NamedTuple):
    """One root as an earlier run's state file describes it (see :meth:`Roots.restore`)."""

    name: str
    select: str
    match: str
    had_instance: bool
    instances: tuple[Identity, ...]  # live when saved
    members: tuple[SavedMember, ...]
    counters: SavedCounters | None  # only after a clean shutdown: then they continue


class Roots(TreeListener):
    """Every root being watched, kept current by the tree's changes; the core's
    :class:`~.changelog.EventSource`."""

    def __init__(self, tree: PidTree, specs: Iterable[RootSpec] = (), *,
                 clock: Clock | None = None) -> None:
        self.tree = tree
        self.clock = clock if clock is not None else tree.clock
        self.roots: dict[str, RootState] = {}
        self.wakeup = Wakeup()
        self.relists = 0  # relists served (a reader fell behind a log, or a new reader)
        # live or unreaped member -> the roots it is a member of (its depth in each is
        # the root's members[node] or unreaped[node]): what a forked child inherits.
        # The tuples are shared (see _with): a host has a few sets of roots, not one
        # per process
        self._of: dict[Node, tuple[RootState, ...]] = {}
        self._sets: dict[tuple[int, ...], tuple[RootState, ...]] = {(): ()}
        # pid of a root tombstone -> [(root, tombstone)] (for pid_reused)
        self._tomb_pids: dict[int, list[tuple[RootState, Node]]] = {}
        self._rematch: list[RootState] = []
        self._next_pidfile_ns = 0
        self._dirty = False
        self.set_roots(specs)

    # -- configuration -----------------------------------------------------------

    def attach(self) -> None:
        """Start listening to the tree (after it has been seeded)."""
        with self.tree.lock:
            self.tree.listener = self

    def set_roots(self, specs: Iterable[RootSpec]) -> None:
        """Apply a (new) list of roots: keep unchanged ones, add and scan new ones,
        drop the rest. Scanning a new root is the one O(host) step, done once."""
        specs = list(specs)
        names = [s.name for s in specs]
        if len(set(names)) != len(names):
            raise ValueError("root names must be unique")
        wanted = {s.name: s for s in specs}
        with self.tree.lock:
            for name in list(self.roots):
                if wanted.get(name) != self.roots[name].spec:
                    self.remove(name)
            for spec in specs:
                if spec.name not in self.roots:
                    self.add(spec)

    def add(self, spec: RootSpec, *, instances: Iterable[Identity] | None = None) -> None:
        """Start watching one more root (ValueError if the name is taken).

        ``instances`` (a pid root brought back from the state file): only these
        identities may be its instance, so a stranger that got the pid while the
        exporter was down is not taken for it.
        """
        with self.tree.lock:
            if spec.name in self.roots:
                raise ValueError(f"root {spec.name!r} exists")
            if spec.select == "cgroup" and not self.tree.read_cgroups:
                self.tree.enable_cgroups()
            if spec.needs_cmdline and not self.tree.read_cmdlines:
                self.tree.enable_cmdlines()
            root = RootState(spec, Selector(spec), ChangeLog(spec.name, spec.change_log_size,
                                                             spec.change_log_max_bytes))
            self.roots[spec.name] = root
            if instances is not None and spec.select == "pid":
                wanted = set(instances)
                for node in (self.tree.get(i.pid) for i in wanted):
                    if node is not None and not node.exited and node.identity in wanted:
                        self._new_instance(root, node, scanning=True)
                root.had_instance = True  # a pid root is one identity: no stranger
            else:
                self._scan(root)
            self._rematch = [r for r in self.roots.values() if r.selector.rematches]
            self._publish()

    def remove(self, name: str) -> None:
        """Stop watching root ``name``; its log ends with a ``root_removed`` event."""
        with self.tree.lock:
            root = self.roots.pop(name)
            for node in (*root.members, *root.unreaped):
                entries = self._of.get(node)
                if entries:
                    rest = self._set(tuple(r for r in entries if r is not root))
                    if rest:
                        self._of[node] = rest
                    else:
                        del self._of[node]
            self._sets = {k: v for k, v in self._sets.items() if root not in v}
            for node in root.tombstones:
                self._untrack_tomb(root, node)
            self._rematch = [r for r in self.roots.values() if r.selector.rematches]
            self._emit(root, EventKind.ROOT_REMOVED, None, self.clock.now())
            self._publish()

    def restore(self, saved: Iterable[SavedRoot], nodes: dict[Identity, Node]) -> int:
        """Bring back what an earlier run knew of each root that is still configured
        the same way (same selector); return the members restored.

        Call once, right after the roots were added to a tree whose lineage was
        restored (``nodes``: saved identity -> live node, from
        :meth:`~.tree.PidTree.restore_lineage`). A root with a live instance has
        found its restored members by lineage already; this joins the members of
        a root whose instance exited before the restart (orphans left by a
        wrapper), at their saved depth, and classes them. With ``counters`` (a
        clean shutdown), the cumulative figures continue from the saved ones,
        plus what can be known of the time in between: members that appeared
        count as spawned, members gone as exited, a new instance as a restart.
        """
        joined = 0
        with self.tree.lock:
            for sr in saved:
                root = self.roots.get(sr.name)
                if root is None or (root.spec.select, root.spec.match) != (sr.select, sr.match):
                    continue
                ts = self._now()
                for member in sorted(sr.members, key=lambda m: m.depth):
                    node = nodes.get(member.identity)
                    if node is None or node.exited or member.depth == 0 \
                            or node in root.members or node in root.unreaped:
                        continue
                    max_depth = root.spec.max_depth
                    if max_depth is not None and member.depth > max_depth:
                        continue
                    joined += 1
                    self._join(root, node, member.depth, ts)
                    parent = node.parent
                    if parent is not None and is_orphaned(
                            depth=member.depth, parent_exited=parent.exited, ppid=node.ppid,
                            parent_pid=parent.pid):
                        self._orphan(node, parent, only=root)
                    self._join_subtree(root, node, ts)
                root.had_instance = root.had_instance or sr.had_instance
                if sr.counters is not None:
                    self._continue_counters(root, sr, nodes)
            self._publish()
        return joined

    def _continue_counters(self, root: RootState, sr: SavedRoot,
                           nodes: dict[Identity, Node]) -> None:
        c = sr.counters
        assert c is not None
        now = {n: root.class_of(n) for n, d in root.members.items() if root.listed(d)}
        before: dict[Node | Identity, str] = {}
        for m in sr.members:
            if root.listed(m.depth):
                before[nodes.get(m.identity, m.identity)] = m.cls
        changes = dict(c.class_changes_total)
        for node, cls in now.items():
            if cls != HEALTHY and before.get(node) != cls:
                changes[cls] = changes.get(cls, 0) + 1
        restarts = c.restarts_total
        saved_instances = {nodes.get(i, i) for i in sr.instances}
        if root.instances and sr.had_instance and not saved_instances & set(root.instances):
            restarts += 1  # the instance it had (or its last one) was replaced meanwhile
            changes["restarted"] = changes.get("restarted", 0) + 1
        root.spawned_total = c.spawned_total + sum(1 for n in now if n not in before)
        root.exited_total = c.exited_total + sum(1 for n in before if n not in now)
        root.restarts = restarts
        root.pid_reuse_seen = c.pid_reuse_total
        root.class_changes_total = changes
        root.actions = dict(c.actions_total)

    def _scan(self, root: RootState) -> None:
        """Find a new root's instances among the live processes (start-up, reload)."""
        # live nodes only: after a storm the tombstones can outnumber them tenfold
        nodes = sorted((n for n in self.tree.live_nodes() if not n.exited),
                       key=lambda n: (n.start_ticks, n.pid))
        for node in nodes:
            if node not in root.members and root.selector.matches(node):
                self._new_instance(root, node, scanning=True)

    # -- EventSource ------------------------------------------------------------------

    def root_names(self) -> Sequence[str]:
        """The roots being watched now (any thread)."""
        return list(self.roots)

    def log(self, name: str) -> ChangeLog:
        """Root ``name``'s change log (any thread; KeyError if not watched)."""
        return self.roots[name].log

    def warnings(self, name: str) -> tuple[str, ...]:
        """Why root ``name`` is down, when it is (any thread; KeyError)."""
        root = self.roots[name]
        if root.instances:
            return ()
        if root.selector.pidfile_error:
            return (root.selector.pidfile_error,)
        if not root.had_instance:
            return (f"no process matches {root.spec.select}={root.spec.match!r}",)
        return ()

    def confidence(self, name: str) -> Confidence:
        """How sure root ``name`` is of its live members (collector thread or tree
        lock held; KeyError): ``exact`` when every member below an instance was
        placed by a fork event (or by an earlier run's, kept in the state file);
        ``degraded`` when some were placed by what /proc said: present before the
        exporter started (or restarted without state), picked up by a resync after
        lost events, first seen late, or polled."""
        return Confidence.of_counts(self.roots[name].inferred)

    def kill_targets(self, name: str) -> list[Node]:
        """Root ``name``'s live listed members, shallowest first (tree lock held;
        KeyError). Who a kill of the root's tree signals."""
        root = self.roots[name]
        return [n for n, d in sorted(root.members.items(), key=lambda kv: kv[1])
                if root.listed(d) and not n.exited]

    def member(self, name: str, pid: int, start_ticks: int) -> Node | None:
        """Root ``name``'s live listed member with this identity, or None (tree lock
        held; KeyError for an unknown root)."""
        root = self.roots[name]
        node = self.tree.get(pid)
        if node is None or node.exited or not Identity(pid, start_ticks).matches(
                node.pid, node.start_ticks, exact=node.start_exact):
            return None
        depth = root.members.get(node)
        return node if depth is not None and root.listed(depth) else None

    def relist(self, name: str) -> Relist:
        """Root ``name``'s state as typed events, true at its log's current position.

        Takes the tree lock for O(members + tombstones): for a reader that is new
        or fell behind its log, not for every look.
        """
        with self.tree.lock:
            root = self.roots[name]
            self.relists += 1
            events: list[RootEvent] = []

            def describe(node: Node, depth: int, lineage: Identity | None = None) -> None:
                events.append(self._joined(root, node, depth,
                                           self.clock.started_at(node.start_ticks), 0,
                                           lineage=lineage))
                if node.exited:
                    events.append(self._exited(root, node, depth, 0))
                cls = root.classes.get(node)
                # an exited member keeps its orphaned class inside (a later zombie class
                # says what it was), but once exited it is shown as exited
                if cls is not None and not (node.exited and cls.new_class == ORPHANED):
                    events.append(cls)

            for node, (depth, lineage) in root.tombstones.items():
                describe(node, depth, lineage)
            for node, depth in root.unreaped.items():
                describe(node, depth)
            for node, depth in sorted(root.members.items(),
                                      key=lambda kv: (kv[1], kv[0].start_ticks)):
                describe(node, depth)
            return Relist(root=name, seq=root.log.seq, spec=root.spec, up=root.alive,
                          events=tuple(events), spawned_total=root.spawned_total,
                          exited_total=root.exited_total, restarts_total=root.restarts,
                          had_instance=root.had_instance)

    # -- events ---------------------------------------------------------------------

    def _emit(self, root: RootState, kind: EventKind, node: Node | None, ts: float,
              **fields: object) -> RootEvent:
        log = root.log
        if node is None:
            ev = RootEvent(kind, root.spec.name, log.seq + 1, ts, 0, 0, None, **fields)
        else:
            ev = RootEvent(kind, root.spec.name, log.seq + 1, ts, node.pid, node.start_ticks,
                           node.comm, **fields)
        log.append(ev)
        self._dirty = True
        return ev

    # The events of the fork/exec/exit path go to the log as records (see
    # changelog.LAYOUT), made here without a RootEvent: a third of the cost.

    def _set(self, roots: tuple[RootState, ...]) -> tuple[RootState, ...]:
        """The shared tuple equal to ``roots``."""
        key = tuple(map(id, roots))
        got = self._sets.get(key)
        if got is None:
            got = self._sets[key] = roots
        return got

    def _with(self, node: Node, root: RootState) -> None:
        """``node`` is a member (live or unreaped) of ``root`` now."""
        entries = self._of.get(node)
        self._of[node] = self._set((root,) if entries is None else (*entries, root))

    def _join_record(self, root: RootState, node: Node, depth: int, ts: float,
                     started_at: float, lineage: Identity | None = None) -> Record:
        """A ``joined`` event's record describing ``node`` as a member at ``depth``."""
        parent = node.parent
        if lineage is not None:
            lpid, lstart = lineage
        elif parent is not None:
            lpid, lstart = parent.pid, parent.start_ticks
        else:
            lpid = lstart = None
        rec = (_JOINED, ts, node.pid, node.start_ticks, node.comm, node.exe, node.uid,
               node.ppid, lpid, lstart, node.lineage_known, node.lineage_source, depth,
               started_at)
        spec = root.spec
        cmdline = ((node.cmdline or "")[: spec.cmdline_max_chars]
                   if spec.capture_cmdline else None)
        if depth == 0:
            found = []
            for anc in self.tree.ancestors(node):
                found.append(Ancestor(anc.pid, anc.start_ticks, anc.comm, anc.uid, anc.exited))
                if len(found) >= MAX_ANCESTORS:
                    break
            return (*rec, cmdline, tuple(found))
        return rec if cmdline is None else (*rec, cmdline)

    def _exit_record(self, node: Node, depth: int) -> Record:
        exit_ns = node.exit_ns if node.exit_ns is not None else self.tree.event_ns
        return (_EXITED, self.clock.wall(exit_ns), node.pid, node.start_ticks, node.comm,
                depth, node.exit_code, node.exit_signal,
                node.core_dumped if node.exit_code is not None
                or node.exit_signal is not None else None)

    def _add(self, root: RootState, rec: Record) -> None:
        root.log.add(rec)
        self._dirty = True

    def _publish(self) -> None:
        if self._dirty:
            self._dirty = False
            self.wakeup.notify()

    def _joined(self, root: RootState, node: Node, depth: int, ts: float, seq: int,
                lineage: Identity | None = None) -> RootEvent:
        """A ``joined`` event describing ``node`` as a member at ``depth``."""
        return expand(self._join_record(root, node, depth, ts,
                                        self.clock.started_at(node.start_ticks), lineage),
                      root.spec.name, seq)

    def _exited(self, root: RootState, node: Node, depth: int, seq: int) -> RootEvent:
        return expand(self._exit_record(node, depth), root.spec.name, seq)

    def _now(self) -> float:
        """Wall-clock time of the change being applied."""
        return self.clock.wall(self.tree.event_ns)

    # -- membership ----------------------------------------------------------------

    def _new_instance(self, root: RootState, node: Node, scanning: bool = False) -> None:
        if root.selector.kind == "pid" and root.had_instance:
            return  # a pid root is one identity: a stranger under its pid is not it
        was_down = not root.instances
        restarted = was_down and root.had_instance and not scanning
        root.instances[node] = None
        root.had_instance = True
        ts = self._now()
        self._join(root, node, 0, ts)
        if was_down:
            self._emit(root, EventKind.ROOT_UP, node, ts, instances=len(root.instances))
        if restarted:
            # the root was down (its last instance exited) and is back: a restart
            root.restarts += 1
            root.class_changes_total["restarted"] = (
                root.class_changes_total.get("restarted", 0) + 1)
            self._emit(root, EventKind.RESTART, node, ts)
        self._join_subtree(root, node, ts)

    def _join_subtree(self, root: RootState, top: Node, ts: float) -> None:
        """The lineage subtree below a new instance joins: it may predate the match.

        Exited processes are walked through, so orphans already present join
        (and are classed), and unreaped ones join as exited members.
        """
        max_depth = root.spec.max_depth
        stack = [(c, 1) for c in reversed(top.children or ())]
        while stack:
            n, depth = stack.pop()
            if max_depth is not None and depth > max_depth:
                continue
            if n in root.members or n in root.unreaped or n in root.instances:
                continue
            if n.exited:
                if not n.reaped:
                    # a zombie already there when the root was added (start-up, reload):
                    # it belongs to the root until reaped, and will be classed
                    root.unreaped[n] = depth
                    self._with(n, root)
                    self._add(root, self._join_record(
                        root, n, depth, ts, self.clock.started_at(n.start_ticks)))
                    self._add(root, self._exit_record(n, depth))
            else:
                self._join(root, n, depth, ts)
                parent = n.parent
                if parent is not None and is_orphaned(depth=depth, parent_exited=parent.exited,
                                                      ppid=n.ppid, parent_pid=parent.pid):
                    self._orphan(n, parent, only=root)
            if n.children:
                stack.extend((c, depth + 1) for c in reversed(n.children))

    def _join(self, root: RootState, node: Node, depth: int, ts: float,
              started_at: float | None = None) -> None:
        # an instance of an include_root=false root is a member internally (its
        # children inherit through it) but is never listed or counted
        root.members[node] = depth
        entries = self._of.get(node)
        self._of[node] = self._set((root,) if entries is None else (*entries, root))
        if depth > 0 or root.spec.include_root:
            root.depth_counts[depth] = root.depth_counts.get(depth, 0) + 1
            root.n_listed += 1
            root.n_class[HEALTHY] += 1
            root.spawned_total += 1
            src = node.lineage_source
            if depth > 0 and src in INFERRED_LINEAGE:
                root.inferred[src] = root.inferred.get(src, 0) + 1
                root.inferred_at_join[node] = src
        if started_at is None:
            started_at = self.clock.started_at(node.start_ticks)
        root.log.add(self._join_record(root, node, depth, ts, started_at))
        self._dirty = True

    def _leave(self, root: RootState, node: Node) -> None:
        """``node`` exited: out of the live members, into the unreaped ones."""
        depth = root.members.pop(node)
        root.unreaped[node] = depth
        if depth > 0 or root.spec.include_root:
            root.depth_counts[depth] -= 1
            root.n_listed -= 1
            src = root.inferred_at_join.pop(node, None)
            if src is not None:
                root.inferred[src] -= 1
                if not root.inferred[src]:
                    del root.inferred[src]
            cls = root.class_of(node)
            root.n_class[cls if cls in (HEALTHY, ORPHANED) else HEALTHY] -= 1
            root.exited_total += 1
        root.log.add(self._exit_record(node, depth))
        self._dirty = True
        if node in root.instances:
            del root.instances[node]
            if not root.instances:
                self._emit(root, EventKind.ROOT_DOWN, node, self._now(), instances=0)
                if root.selector.kind == "pidfile":
                    self._next_pidfile_ns = 0  # re-read the file now

    def _set_class(self, root: RootState, node: Node, new: ProcessClass, **facts: object) -> None:
        old = root.class_of(node)
        if old == new:
            return
        if node in root.members:
            if root.listed(root.members[node]):
                root.n_class[old] -= 1
                root.n_class[new] += 1
        elif node in root.unreaped and root.listed(root.unreaped[node]):
            # only the zombie count is kept for exited members
            root.n_class[ZOMBIE] += (new == ZOMBIE) - (old == ZOMBIE)
        ev = self._emit(root, EventKind.CLASS, node, self._now(), old_class=old, new_class=new,
                        **facts)
        root.classes[node] = ev
        root.class_changes_total[new] = root.class_changes_total.get(new, 0) + 1

    def _orphan(self, child: Node, parent: Node, only: RootState | None = None) -> None:
        """``child`` lives on, reparented, after its fork parent exited: orphaned in
        every root it is a member of below an instance."""
        for root in self._of.get(child, ()):
            if (only is not None and root is not only) or not root.members.get(child):
                continue  # not a live member, or an instance (depth 0)
            self._set_class(root, child, ORPHANED, ppid=child.ppid, other_pid=parent.pid,
                            other_start_ticks=parent.start_ticks, other_comm=parent.comm)

    # -- TreeListener ----------------------------------------------------------------

    def spawned(self, node: Node) -> None:
        reused = self._tomb_pids.get(node.pid)
        if reused:
            for root, tomb in list(reused):
                self._pid_reused(root, tomb, node)
        parent = node.parent
        if parent is None:
            return
        entries = self._of.get(parent)
        if not entries:
            return
        ts = self._now()
        started_at = self.clock.started_at(node.start_ticks)
        for root in entries:
            depth = root.members.get(parent)
            if depth is not None:
                max_depth = root.spec.max_depth
                if max_depth is None or depth < max_depth:
                    self._join(root, node, depth + 1, ts, started_at)

    def changed(self, node: Node, prev: tuple[str | None, str | None, str | None] | None) -> None:
        if node.exited:
            return
        if prev is not None:
            entries = self._of.get(node)
            if entries:
                ts = self._now()
                for root in entries:
                    if node in root.members:
                        spec = root.spec
                        rec = (_EXEC, ts, node.pid, node.start_ticks, node.comm, node.exe,
                               node.uid, prev[0], prev[1])
                        if spec.capture_cmdline:
                            cap = spec.cmdline_max_chars
                            rec = (*rec, (node.cmdline or "")[:cap], (prev[2] or "")[:cap])
                        self._add(root, rec)
        for root in self._rematch:
            if node not in root.members and root.selector.matches(node):
                self._new_instance(root, node)

    def exited(self, node: Node) -> None:
        entries = self._of.get(node)
        if entries:
            for root in entries:
                if node in root.members:
                    self._leave(root, node)
        # its children are orphans once the kernel has moved them (see reparented);
        # those it already moved (the procfs fallback sees both at once) are now
        if node.children:
            for child in node.children:
                if not child.exited and child.ppid != node.pid and child in self._of:
                    self._orphan(child, node)

    def zombie(self, node: Node) -> None:
        pass  # tick() promotes unreaped members once their grace has passed

    def reaped(self, node: Node) -> None:
        entries = self._of.pop(node, None)
        if not entries:
            return
        ts = self._now()
        for root in entries:
            depth = root.unreaped.pop(node, None)
            if depth is None:
                continue
            cls = root.classes.get(node)
            if cls is not None and cls.new_class == ZOMBIE:
                if root.listed(depth):
                    root.n_class[ZOMBIE] -= 1
                self._set_class_reaped(root, node, ts)
            elif cls is not None:
                del root.classes[node]  # an exited orphan: a plain tombstone now
            self._bury(root, node, depth)

    def _set_class_reaped(self, root: RootState, node: Node, ts: float) -> None:
        root.class_changes_total[EXITED] = root.class_changes_total.get(EXITED, 0) + 1
        self._emit(root, EventKind.CLASS, node, ts, old_class=ZOMBIE, new_class=EXITED)
        del root.classes[node]

    def reparented(self, node: Node, prev_ppid: int) -> None:
        entries = self._of.get(node)
        if not entries:
            return
        ts = self._now()
        for root in entries:
            if node in root.members or node in root.unreaped:
                self._add(root, (_REPARENTED, ts, node.pid, node.start_ticks, node.comm,
                                 node.ppid, prev_ppid))
        parent = node.parent
        if not node.exited and parent is not None and parent.exited \
                and node.ppid != parent.pid:
            self._orphan(node, parent)

    def tick(self, now_ns: int) -> None:
        """Periodic work (collector thread, tree lock held): pidfiles, tombstones,
        zombies, actions; then wake readers if any log moved."""
        if now_ns >= self._next_pidfile_ns:
            self._next_pidfile_ns = now_ns + PIDFILE_CHECK_NS
            for root in self.roots.values():
                if root.selector.kind == "pidfile" and not root.instances:
                    root.selector.reload_pidfile()
                    node = self.tree.get(root.selector.pid) if root.selector.pid else None
                    if node is not None and not node.exited:
                        self._new_instance(root, node)
        for root in self.roots.values():
            if root.tombstones:
                self._expire_tombstones(root, now_ns)
            if root.unreaped:
                self._promote_zombies(root, now_ns)
            if root.spec.actions.enabled:
                self._cleanup(root, now_ns)
        self._publish()

    # -- classification over time ------------------------------------------------------

    def _promote_zombies(self, root: RootState, now_ns: int) -> None:
        grace_ns = int(root.spec.zombie_grace_s * 1e9)
        for node in list(root.unreaped):
            if node.reaped or root.class_of(node) == ZOMBIE:
                continue
            if not zombie_due(exit_ns=node.exit_ns, seen_unreaped=node.zombie_ns is not None,
                              now_ns=now_ns, grace_ns=grace_ns):
                continue
            parent = self.tree.get(node.ppid)
            self._set_class(root, node, ZOMBIE, other_pid=node.ppid,
                            other_start_ticks=parent.start_ticks if parent else None,
                            other_comm=parent.comm if parent else None,
                            seconds=round((now_ns - (node.exit_ns or now_ns)) / 1e9, 3))
            actions = root.spec.actions
            if actions.enabled and actions.signal_zombie_parents and parent is not None \
                    and not parent.exited:
                self._signal(root, parent, signal.SIGCHLD, lineage_only=False)

    # -- tombstones --------------------------------------------------------------------

    def _bury(self, root: RootState, node: Node, depth: int) -> None:
        """A reaped member: kept as a tombstone, or let go at once."""
        spec = root.spec
        if spec.max_tombstones <= 0 or spec.tombstone_ttl_s <= 0:
            self._add(root, (_LEFT, self._now(), node.pid, node.start_ticks, node.comm))
            return
        parent = node.parent
        root.tombstones[node] = (depth, parent.identity if parent is not None else None)
        self._tomb_pids.setdefault(node.pid, []).append((root, node))
        while len(root.tombstones) > spec.max_tombstones:
            self._forget(root, next(iter(root.tombstones)))

    def _forget(self, root: RootState, node: Node) -> None:
        del root.tombstones[node]
        root.classes.pop(node, None)
        self._untrack_tomb(root, node)
        self._add(root, (_LEFT, self._now(), node.pid, node.start_ticks, node.comm))

    def _untrack_tomb(self, root: RootState, node: Node) -> None:
        entries = self._tomb_pids.get(node.pid)
        if entries:
            entries[:] = [e for e in entries if e[1] is not node]
            if not entries:
                del self._tomb_pids[node.pid]

    def _expire_tombstones(self, root: RootState, now_ns: int) -> None:
        cutoff = now_ns - int(root.spec.tombstone_ttl_s * 1e9)
        tombs = root.tombstones
        while tombs:
            oldest = next(iter(tombs))
            if (oldest.exit_ns or 0) >= cutoff:
                break
            self._forget(root, oldest)

    def _pid_reused(self, root: RootState, tomb: Node, node: Node) -> None:
        """A new process got the pid of one of ``root``'s tombstones."""
        if tomb is node or root.class_of(tomb) == PID_REUSED or tomb not in root.tombstones:
            return
        root.pid_reuse_seen += 1
        self._set_class(root, tomb, PID_REUSED, other_pid=node.pid,
                        other_start_ticks=node.start_ticks, other_comm=node.comm)

    # -- actions -------------------------------------------------------------------

    def _cleanup(self, root: RootState, now_ns: int) -> None:
        down = root.had_instance and not root.instances
        # O(members), so only once the root is down
        leftovers = [n for n, depth in root.members.items() if depth > 0] if down else []
        sig = root.cleanup.step(down=down, leftovers=bool(leftovers), now_ns=now_ns,
                                grace_ns=int(root.spec.actions.term_grace_s * 1e9))
        if sig is not None:
            for node in leftovers:
                self._signal(root, node, sig)

    def _signal(self, root: RootState, node: Node, sig: int, *,
                lineage_only: bool = True) -> ActionOutcome:
        """Send ``sig`` to exactly ``node`` (checked by identity); count and record it."""
        if lineage_only and node not in root.members:
            outcome = ActionOutcome.FAILED  # never touch a process outside the root
        elif root.spec.actions.dry_run:
            outcome = ActionOutcome.DRY_RUN
        else:
            outcome = send_to_identity(node.identity, sig, exact=node.start_exact)
        key = (action_name(sig), str(outcome))
        root.actions[key] = root.actions.get(key, 0) + 1
        self._emit(root, EventKind.ACTION, node, self.clock.now(), signal=sig, outcome=outcome)
        if outcome not in (ActionOutcome.DRY_RUN, ActionOutcome.SENT):
            log.info("action", extra={"fields": {"root": root.name, "signal": sig,
                                                 "pid": node.pid, "outcome": str(outcome)}})
        return outcome
