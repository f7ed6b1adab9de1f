"""Root watchers: which processes belong to each configured root, and what changed.

A *root* is chosen by a selector (pid, pidfile, comm, exe, cmdline regex,
cgroup prefix). Every live process that matches, and is not already inside
another instance of the same root, is an *instance*; the root's *members* are
its instances and their lineage descendants.

Membership is incremental. :class:`Watchers` listens to the PidTree: a
forked child joins the roots of its fork parent (O(roots of the parent) per
FORK, never a scan of the host); EXEC and COMM re-run the comm/exe/cmdline/
cgroup selectors on that one process; EXIT removes it. Every change goes into
a per-root log with a sequence number, so each consumer (:class:`Watcher`)
observes the changes since *its* previous observation in O(changes).

Everything here runs on the collector thread with the tree lock held, except
:meth:`Watcher.observe`, which takes the lock to copy.
"""

from __future__ import annotations

import os
import re
import time
from collections import deque
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType

from .procfs import CLOCK_TICKS, boot_time_s
from .reaper import EXITED, HEALTHY, ORPHANED, ZOMBIE, ActionSpec, Reaper, RootEvent
from .tree import Node, PidTree, TreeListener

SELECT_KINDS = ("pid", "pidfile", "comm", "exe", "cmdline", "cgroup")
_REMATCH_KINDS = frozenset({"comm", "exe", "cmdline", "cgroup"})
Identity = tuple[int, int]


@dataclass(frozen=True, slots=True)
class RootSpec:
    """One configured root (see README, "Roots")."""

    name: str
    select: str
    match: str
    include_root: bool = True
    max_depth: int | None = None
    max_members: int = 10_000
    capture_cmdline: bool = False
    cmdline_max_chars: int = 256
    tombstone_ttl_s: float = 60.0
    max_tombstones: int = 1_000
    zombie_grace_s: float = 5.0
    change_log_size: int = 100_000
    actions: ActionSpec = field(default_factory=ActionSpec)

    def __post_init__(self) -> None:
        if self.select not in SELECT_KINDS:
            raise ValueError(f"select must be one of {', '.join(SELECT_KINDS)}")
        if self.select == "pid" and self.match != "self" and not self.match.isdigit():
            raise ValueError("a pid selector matches a number or 'self'")
        if self.select == "cmdline":
            re.compile(self.match)  # raises re.error, reported by config


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
        if kind == "cgroup":
            cg = node.cgroup
            return cg is not None and (cg == self.value.rstrip("/") or cg.startswith(
                self.cgroup_prefix) or self.cgroup_prefix == "/")
        return False


@dataclass(frozen=True, slots=True)
class MemberInfo:
    """One member (or tombstone) of a root, as an observation shows it."""

    pid: int
    start_ticks: int
    comm: str | None
    exe: str | None
    cmdline: str | None  # only for roots with capture_cmdline
    user: str
    ppid: int
    lineage_ppid: int | None
    lineage_known: bool  # False: first seen under PID 1 or a younger parent (see README)
    depth: int
    cls: str
    reason: str
    started_at: float  # wall-clock seconds
    exited_at: float | None = None
    exit_code: int | None = None
    exit_signal: int | None = None

    @property
    def identity(self) -> Identity:
        return (self.pid, self.start_ticks)


@dataclass(frozen=True, slots=True)
class Delta:
    """Members added and removed between two observations (by identity)."""

    added: tuple[MemberInfo, ...]
    removed: tuple[MemberInfo, ...]
    complete: bool  # False when the change log wrapped since the previous observation
    # joined and left between the two observations: in neither list above, kept
    # here (as they were when they left) for consumers that want every process
    transient: tuple[MemberInfo, ...] = ()


@dataclass(frozen=True, slots=True)
class Observation:
    """What :meth:`Watcher.observe` returns: one root at one moment."""

    root: str
    ts: float
    root_alive: bool
    instances: tuple[Identity, ...]
    members: Mapping[Identity, MemberInfo]
    delta: Delta
    spawned: int  # joined since the previous observation, short-lived included
    exited: int
    spawned_total: int
    exited_total: int
    classes: Mapping[str, int]  # live members by class, plus exited tombstones
    events: tuple[RootEvent, ...]  # class changes, restarts and actions since the previous
    tombstones: tuple[MemberInfo, ...]
    truncated: bool
    warnings: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class RootView:
    """A root as the JSON API shows it (see :meth:`Watchers.view`)."""

    name: str
    select: str
    match: str
    up: bool
    instances: tuple[MemberInfo, ...]
    member_count: int
    classes: Mapping[str, int]
    spawned_total: int
    exited_total: int
    restarts_total: int
    truncated: bool
    members: tuple[MemberInfo, ...]  # capped by max_members; empty unless asked for
    recent: tuple[tuple[str, MemberInfo], ...]  # ("added" | "removed", member), newest last
    tombstones: tuple[MemberInfo, ...]
    events: tuple[RootEvent, ...]  # newest last
    warnings: tuple[str, ...]


_ADD, _REMOVE = 1, 2


class RootState:
    """Membership, counters and logs of one root. Owned by :class:`Watchers`."""

    def __init__(self, spec: RootSpec) -> None:
        self.spec = spec
        self.selector = Selector(spec)
        self.instances: dict[Node, None] = {}
        self.members: dict[Node, int] = {}  # live member -> depth below its instance
        self.unreaped: dict[Node, int] = {}  # exited members still holding their pid
        self.classes: dict[Node, tuple[str, str]] = {}  # non-healthy class and reason
        self.depth_counts: dict[int, int] = {}
        self.n_listed = 0  # live members shown (instances hidden with include_root off)
        self.n_class = {HEALTHY: 0, ORPHANED: 0, ZOMBIE: 0}
        self.tombstones: dict[Identity, MemberInfo] = {}
        self.log: deque[tuple[int, int, Node, MemberInfo | None]] = deque(
            maxlen=spec.change_log_size)
        self.class_log: deque[tuple[int, RootEvent]] = deque(maxlen=spec.change_log_size)
        self.seq = 0
        self.spawned_total = 0
        self.exited_total = 0
        self.restarts = 0
        self.pid_reuse_seen = 0
        self.class_changes_total: dict[str, int] = {}
        self.actions: dict[tuple[str, str], int] = {}  # (action, outcome) -> count
        self.instance_start: float | None = None
        self.had_instance = False
        self.lost_instance = False  # an instance exited: the next new one is a restart

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

    def member_count(self) -> int:
        """Live members shown by this root. O(1)."""
        return self.n_listed

    def class_counts(self) -> dict[str, int]:
        """Live members by class; zombies are exited, unreaped and past the grace. O(1)."""
        return dict(self.n_class)

    def class_of(self, node: Node) -> str:
        return self.classes[node][0] if node in self.classes else HEALTHY

    def set_class(self, node: Node, cls: str, reason: str) -> str:
        """Give ``node`` a class, keeping the per-class counts exact; return the old class."""
        old = self.class_of(node)
        if node in self.members:
            if self.listed(self.members[node]):
                self.n_class[old] -= 1
                self.n_class[cls] += 1
        elif node in self.unreaped and self.listed(self.unreaped[node]):
            # only the zombie count is kept for exited members
            self.n_class[ZOMBIE] += (cls == ZOMBIE) - (old == ZOMBIE)
        self.classes[node] = (cls, reason)
        return old


class Watchers(TreeListener):
    """All roots of the running config, kept current by the tree's changes."""

    def __init__(self, tree: PidTree, specs: Iterable[RootSpec]) -> None:
        self.tree = tree
        self.roots: dict[str, RootState] = {}
        self.reaper = Reaper(self)
        self.boot_time = boot_time_s(tree.proc)
        # live or unreaped member -> [(root, depth)]: what a forked child inherits
        self._of: dict[Node, list[tuple[RootState, int]]] = {}
        # pid of a root tombstone -> roots that remember it (for pid_reused)
        self._tomb_pids: dict[int, list[RootState]] = {}
        self._rematch: list[RootState] = []
        self._next_pidfile_check = 0.0
        self.set_roots(specs)

    # -- configuration -----------------------------------------------------------

    def attach(self) -> None:
        """Start listening to the tree (after it has been seeded)."""
        with self.tree.lock:
            self.tree.listener = self

    def set_roots(self, specs: Iterable[RootSpec]) -> None:
        """Apply a (new) list of roots: keep unchanged ones, add and scan new ones.

        Scanning a new root is the one O(host) step, done once per root.
        """
        specs = list(specs)
        names = [s.name for s in specs]
        if len(set(names)) != len(names):
            raise ValueError("root names must be unique")
        with self.tree.lock:
            for name in list(self.roots):
                old = self.roots[name]
                new = next((s for s in specs if s.name == name), None)
                if new is None or new != old.spec:
                    self._drop_root(old)
            if any(s.select == "cgroup" for s in specs) and not self.tree.read_cgroups:
                self.tree.enable_cgroups()
            for spec in specs:
                if spec.name not in self.roots:
                    root = RootState(spec)
                    self.roots[spec.name] = root
                    self._scan(root)
            self._rematch = [r for r in self.roots.values() if r.selector.rematches]

    def _drop_root(self, root: RootState) -> None:
        del self.roots[root.name]
        for node in list(root.members) + list(root.unreaped):
            self._forget(node, root)
        for pid in {info.pid for info in root.tombstones.values()}:
            self._untrack_tomb_pid(pid, root)

    def _forget(self, node: Node, root: RootState) -> None:
        entries = self._of.get(node)
        if entries:
            entries[:] = [e for e in entries if e[0] is not root]
            if not entries:
                del self._of[node]

    def _scan(self, root: RootState) -> None:
        """Find a new root's instances among the live processes (start-up and reload)."""
        nodes = sorted((n for n in self.tree.nodes() if not n.exited),
                       key=lambda n: (n.start_ticks, n.pid))
        for node in nodes:
            if node not in root.members and root.selector.matches(node):
                self._new_instance(root, node, scanning=True)

    # -- membership ----------------------------------------------------------------

    def _new_instance(self, root: RootState, node: Node, scanning: bool = False) -> None:
        if root.selector.kind == "pid" and root.had_instance:
            return  # a pid root is one identity: a stranger under its pid is not it
        root.instances[node] = None
        if root.lost_instance and not scanning:
            root.restarts += 1
            root.lost_instance = False
            self.reaper.restarted(root, node)
        root.had_instance = True
        if root.instance_start is None or not scanning:
            root.instance_start = self.start_time(node)
        # the instance and its live lineage subtree join (they may predate the match)
        stack = [(node, 0)]
        while stack:
            n, depth = stack.pop()
            if n in root.members or n in root.unreaped:
                continue
            if n.exited:
                if not n.reaped and root.listed(depth):
                    # a zombie already there when the root was added (start-up, reload):
                    # it belongs to the root until reaped, and the reaper will class it
                    root.unreaped[n] = depth
                    self._of.setdefault(n, []).append((root, depth))
                continue
            if root.spec.max_depth is not None and depth > root.spec.max_depth:
                continue
            self._join(root, n, depth)
            if n.children:
                stack.extend((c, depth + 1) for c in n.children)

    def _join(self, root: RootState, node: Node, depth: int) -> None:
        # an instance of an include_root=false root is a member internally (its
        # children inherit through it) but is never listed or counted
        root.members[node] = depth
        entries = self._of.get(node)
        if entries is None:
            self._of[node] = [(root, depth)]
        else:
            entries.append((root, depth))
        if depth == 0 and not root.spec.include_root:
            return
        root.depth_counts[depth] = root.depth_counts.get(depth, 0) + 1
        root.n_listed += 1
        root.n_class[HEALTHY] += 1
        root.spawned_total += 1
        root.seq += 1
        root.log.append((root.seq, _ADD, node, None))

    def _leave(self, root: RootState, node: Node) -> None:
        depth = root.members.pop(node)
        root.unreaped[node] = depth
        if depth > 0 or root.spec.include_root:
            root.depth_counts[depth] -= 1
            root.n_listed -= 1
            cls = root.class_of(node)
            root.n_class[cls if cls in (HEALTHY, ORPHANED) else HEALTHY] -= 1
            root.exited_total += 1
            info = self.info(root, node, depth, EXITED, self.reaper.exit_reason(node))
            root.seq += 1
            root.log.append((root.seq, _REMOVE, node, info))
        if node in root.instances:
            del root.instances[node]
            root.lost_instance = True
            if root.selector.kind == "pidfile":
                self._next_pidfile_check = 0.0  # re-read the file now

    # -- TreeListener ----------------------------------------------------------------

    def spawned(self, node: Node) -> None:
        reused = self._tomb_pids.get(node.pid)
        if reused:
            for root in list(reused):
                self.reaper.pid_reused(root, node)
        parent = node.parent
        if parent is None:
            return
        entries = self._of.get(parent)
        if not entries:
            return
        for root, depth in list(entries):
            if parent in root.members:
                max_depth = root.spec.max_depth
                if max_depth is None or depth < max_depth:
                    self._join(root, node, depth + 1)

    def changed(self, node: Node) -> None:
        if node.exited:
            return
        for root in self._rematch:
            if node not in root.members and root.selector.matches(node):
                self._new_instance(root, node)

    def exited(self, node: Node) -> None:
        entries = self._of.get(node)
        if entries:
            for root, _ in entries:
                if node in root.members:
                    self._leave(root, node)
        # its live lineage children in the same roots are orphans from now on
        if node.children:
            for child in node.children:
                if not child.exited and child in self._of:
                    self.reaper.parent_exited(child, node)

    def zombie(self, node: Node) -> None:
        pass  # the reaper's tick promotes unreaped members after the grace

    def reaped(self, node: Node) -> None:
        entries = self._of.pop(node, None)
        if not entries:
            return
        for root, depth in entries:
            if root.unreaped.pop(node, None) is None:
                continue
            if depth == 0 and not root.spec.include_root:
                continue
            cls = root.classes.pop(node, None)
            info = self.info(root, node, depth, EXITED, self.reaper.exit_reason(node))
            if cls and cls[0] == ZOMBIE:
                root.n_class[ZOMBIE] -= 1
                self.reaper.record(root, node, ZOMBIE, EXITED,
                                   f"zombie {node.pid} ({node.comm}) was reaped")
            self._add_tombstone(root, info)

    def reparented(self, node: Node) -> None:
        parent = node.parent
        if parent is not None and parent.exited and node in self._of:
            self.reaper.parent_exited(node, parent)

    def tick(self, now_ns: int) -> None:
        """Periodic work (collector thread, tree lock held): pidfiles, zombies, actions."""
        now = time.monotonic()
        if now >= self._next_pidfile_check:
            self._next_pidfile_check = now + 1.0
            for root in self.roots.values():
                if root.selector.kind == "pidfile" and not root.instances:
                    root.selector.reload_pidfile()
                    node = self.tree.get(root.selector.pid) if root.selector.pid else None
                    if node is not None and not node.exited:
                        self._new_instance(root, node)
        for root in self.roots.values():
            self._expire_tombstones(root, time.time())
        self.reaper.tick(now_ns)

    # -- tombstones --------------------------------------------------------------------

    def _add_tombstone(self, root: RootState, info: MemberInfo) -> None:
        if root.spec.max_tombstones <= 0 or root.spec.tombstone_ttl_s <= 0:
            return
        root.tombstones[info.identity] = info
        self._tomb_pids.setdefault(info.pid, []).append(root)
        while len(root.tombstones) > root.spec.max_tombstones:
            self._evict_tombstone(root)

    def _evict_tombstone(self, root: RootState) -> None:
        ident, info = next(iter(root.tombstones.items()))
        del root.tombstones[ident]
        self._untrack_tomb_pid(info.pid, root)

    def _untrack_tomb_pid(self, pid: int, root: RootState) -> None:
        roots = self._tomb_pids.get(pid)
        if roots and root in roots:
            roots.remove(root)
            if not roots:
                del self._tomb_pids[pid]

    def _expire_tombstones(self, root: RootState, now: float) -> None:
        cutoff = now - root.spec.tombstone_ttl_s
        while root.tombstones:
            info = next(iter(root.tombstones.values()))
            if (info.exited_at or 0) >= cutoff:
                break
            self._evict_tombstone(root)

    def replace_tombstone(self, root: RootState, info: MemberInfo) -> None:
        """Swap a tombstone's info (same identity) keeping its place in the TTL order."""
        if info.identity in root.tombstones:
            root.tombstones[info.identity] = info

    # -- views -------------------------------------------------------------------------

    def start_time(self, node: Node) -> float:
        """Wall-clock start of ``node``."""
        return self.boot_time + node.start_ticks / CLOCK_TICKS

    def info(self, root: RootState, node: Node, depth: int, cls: str | None = None,
             reason: str | None = None) -> MemberInfo:
        """An immutable view of ``node`` as a member of ``root``."""
        if cls is None:
            cls, reason = root.classes.get(node, (HEALTHY, ""))
        parent = node.parent
        spec = root.spec
        exited_at = None
        if node.exited:
            exited_at = (time.time() - (time.monotonic_ns() - node.exit_ns) / 1e9
                         if node.exit_ns is not None else time.time())
        return MemberInfo(
            pid=node.pid,
            start_ticks=node.start_ticks,
            comm=node.comm,
            exe=node.exe,
            cmdline=(node.cmdline or "")[: spec.cmdline_max_chars] if spec.capture_cmdline
            else None,
            user=self.tree.user_name(node.uid),
            ppid=node.ppid,
            lineage_ppid=parent.pid if parent else None,
            lineage_known=node.lineage_known,
            depth=depth,
            cls=cls,
            reason=reason or "",
            started_at=self.start_time(node),
            exited_at=exited_at,
            exit_code=node.exit_code,
            exit_signal=node.exit_signal,
        )

    def view(self, name: str, *, members: bool = False, recent: int = 100) -> RootView:
        """One root for the API: counts, and with ``members`` the capped listing,
        the last ``recent`` membership changes, tombstones and events."""
        with self.tree.lock:
            root = self.roots[name]
            spec = root.spec
            listing: tuple[MemberInfo, ...] = ()
            recent_changes: list[tuple[str, MemberInfo]] = []
            tombstones: tuple[MemberInfo, ...] = ()
            events: tuple[RootEvent, ...] = ()
            if members:
                # live members, then zombies (exited, seen unreaped in /proc)
                chosen = [(n, d) for n, d in root.members.items() if root.listed(d)]
                if len(chosen) > spec.max_members:
                    chosen = sorted(chosen, key=lambda kv: (kv[1], kv[0].start_ticks))
                    chosen = chosen[: spec.max_members]
                listing = tuple(self.info(root, n, d) for n, d in chosen)
                room = spec.max_members - len(listing)
                unreaped = [(n, d) for n, d in root.unreaped.items()
                            if root.listed(d) and n.zombie_ns is not None][:room]
                listing += tuple(
                    self.info(root, n, d, *(root.classes[n] if root.class_of(n) == ZOMBIE
                                            else (EXITED, self.reaper.exit_reason(n))))
                    for n, d in unreaped)
                for _, kind, node, info in list(root.log)[-recent:] if recent else ():
                    if kind == _ADD:
                        depth = root.members.get(node, root.unreaped.get(node, 0))
                        recent_changes.append(("added", self.info(root, node, depth)))
                    elif info is not None:
                        recent_changes.append(("removed", info))
                tombstones = tuple(root.tombstones.values())
                events = tuple(e for _, e in list(root.class_log)[-recent:]) if recent else ()
            warnings = []
            if not root.alive and root.selector.pidfile_error:
                warnings.append(root.selector.pidfile_error)
            return RootView(
                name=root.name, select=spec.select, match=spec.match, up=root.alive,
                instances=tuple(self.info(root, n, 0) for n in root.instances),
                member_count=root.member_count(), classes=root.class_counts(),
                spawned_total=root.spawned_total, exited_total=root.exited_total,
                restarts_total=root.restarts,
                truncated=root.member_count() > spec.max_members, members=listing,
                recent=tuple(recent_changes), tombstones=tombstones, events=events,
                warnings=tuple(warnings))

    def watcher(self, name: str) -> Watcher:
        """A new consumer of ``name``'s changes; its first observation has every member added."""
        if name not in self.roots:
            raise KeyError(name)
        return Watcher(self, name)


class Watcher:
    """One consumer's cursor over a root: each :meth:`observe` reports changes since its last."""

    def __init__(self, watchers: Watchers, name: str) -> None:
        self.watchers = watchers
        self.name = name
        self._seq = 0
        self._class_seq = 0
        self._spawned = 0
        self._exited = 0
        self._first = True

    def observe(self, members: bool = True) -> Observation:
        """Snapshot the root. O(changes since the previous call), plus O(members) and
        O(tombstones) when ``members`` is true (the listing is capped by ``max_members``).

        In-process consumers should sleep between calls, not spin: the collector
        thread needs the GIL to apply events (a loop that never yields delays it
        by Python's 5 ms switch interval).
        """
        w = self.watchers
        with w.tree.lock:
            root = w.roots.get(self.name)
            if root is None:
                raise KeyError(f"root {self.name!r} is no longer configured")
            spec = root.spec
            warnings: list[str] = []
            # -- delta from the change log, newest first until our cursor
            added: dict[Node, None] = {}
            removed: dict[Node, MemberInfo] = {}
            transient: dict[Node, MemberInfo] = {}
            complete = True
            if self._first:
                added = {n: None for n, d in root.members.items() if root.listed(d)}
                self._first = False
            else:
                changes = []
                for entry in reversed(root.log):
                    if entry[0] <= self._seq:
                        break
                    changes.append(entry)
                if root.log and root.log[0][0] > self._seq + 1:
                    complete = False
                    warnings.append("more changes than the change log holds since the previous "
                                    "observation: the delta is incomplete, counts are exact")
                for _, kind, node, info in reversed(changes):
                    if kind == _ADD:
                        added[node] = None
                    elif node in added:
                        del added[node]  # born and gone between observations
                        transient[node] = info  # type: ignore[assignment]
                    else:
                        removed[node] = info  # type: ignore[assignment]
            self._seq = root.seq
            events = []
            for seq, event in reversed(root.class_log):
                if seq <= self._class_seq:
                    break
                events.append(event)
            events.reverse()
            if root.class_log:
                self._class_seq = root.class_log[-1][0]
            cap = spec.max_members
            count = root.member_count()
            truncated = count > cap or len(added) > cap
            added_infos = tuple(w.info(root, n, root.members.get(n, 0))
                                for n in list(added)[:cap] if n in root.members)
            listing: Mapping[Identity, MemberInfo] = MappingProxyType({})
            if members:
                chosen = [(n, d) for n, d in root.members.items() if root.listed(d)]
                if count > cap:
                    # the shallowest, oldest members first: instances are always listed
                    chosen = sorted(chosen, key=lambda kv: (kv[1], kv[0].start_ticks))[:cap]
                listing = MappingProxyType(
                    {n.identity: w.info(root, n, d) for n, d in chosen})
            if truncated:
                warnings.append(f"{count} members, listing capped at {cap}")
            if not root.alive:
                if root.selector.pidfile_error:
                    warnings.append(root.selector.pidfile_error)
                elif not root.had_instance:
                    warnings.append(f"no process matches {spec.select}={spec.match!r}")
            obs = Observation(
                root=root.name,
                ts=time.time(),
                root_alive=root.alive,
                instances=tuple(n.identity for n in root.instances),
                members=listing,
                delta=Delta(added=added_infos, removed=tuple(removed.values())[:cap],
                            complete=complete, transient=tuple(transient.values())[:cap]),
                spawned=root.spawned_total - self._spawned,
                exited=root.exited_total - self._exited,
                spawned_total=root.spawned_total,
                exited_total=root.exited_total,
                classes=MappingProxyType({**root.class_counts(),
                                          EXITED: len(root.tombstones)}),
                events=tuple(events),
                tombstones=tuple(root.tombstones.values()) if members else (),
                truncated=truncated,
                warnings=tuple(warnings),
            )
            self._spawned = root.spawned_total
            self._exited = root.exited_total
            return obs


__all__ = [
    "SELECT_KINDS",
    "Delta",
    "MemberInfo",
    "Observation",
    "RootSpec",
    "RootState",
    "Selector",
    "Watcher",
    "Watchers",
]
