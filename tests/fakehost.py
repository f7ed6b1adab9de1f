"""A pretend host for tests of the core without the kernel.

:class:`Host` plays the kernel: it keeps a table of processes (its /proc) and
turns what happens to them (fork, exec, exit, reap, rename) into the proc
connector's events, fed to a real :class:`~proctree_exporter.tree.PidTree`
with :class:`~proctree_exporter.membership.Roots` attached. The tree reads its
/proc through :class:`FakeProc`, which answers from that table, and its time
from a :class:`~proctree_exporter.clock.ManualClock` that moves only when a
test says so. Processes are named: tests speak of ``"sh"`` and ``"worker"``,
the host picks the pids.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from proctree_exporter import netlink as nl
from proctree_exporter.clock import ManualClock
from proctree_exporter.membership import Roots
from proctree_exporter.procfs import (
    AccessDenied,
    ProcessGone,
    ProcessInfo,
    SnapshotStats,
    Stat,
)
from proctree_exporter.rootspec import RootSpec
from proctree_exporter.tree import PidTree


@dataclass
class Proc:
    """One process of the pretend host."""

    pid: int
    ppid: int
    start: int
    comm: str
    exe: str | None = None
    cmdline: str = ""
    cgroup: str | None = "/"
    uid: int = 0
    state: str = "S"
    threads: int = 1
    denied: set[str] = field(default_factory=set)  # files the reader may not open


class FakeProc:
    """The reads PidTree makes, answered from a :class:`Host`'s table."""

    def __init__(self, host: Host) -> None:
        self.host = host
        self.reads: list[tuple[str, int]] = []

    def _get(self, pid: int, what: str) -> Proc:
        self.reads.append((what, pid))
        p = self.host.procs.get(pid)
        if p is None:
            raise ProcessGone(pid, what)
        if what in p.denied:
            raise AccessDenied(pid, what)
        if what == "malformed":
            raise ValueError("malformed")
        return p

    def stat(self, pid: int) -> Stat:
        p = self._get(pid, "stat")
        if "stat-malformed" in p.denied:
            raise ValueError(f"/proc/{pid}/stat: malformed")
        return Stat(pid, p.comm, p.state, p.ppid, pid, pid, p.threads, p.start)

    def comm(self, pid: int) -> str:
        return self._get(pid, "comm").comm

    def cmdline(self, pid: int, max_chars: int) -> str:
        return self._get(pid, "cmdline").cmdline[:max_chars]

    def exe(self, pid: int) -> str | None:
        p = self._get(pid, "exe")
        return None if p.state == "Z" else p.exe

    def cgroup(self, pid: int) -> str | None:
        return self._get(pid, "cgroup").cgroup

    def uid(self, pid: int) -> int | None:
        try:
            return self._get(pid, "status").uid
        except (ProcessGone, AccessDenied):
            return None

    def exists(self, pid: int) -> bool | None:
        return pid in self.host.procs

    def snapshot(self, **kwargs: Any) -> list[ProcessInfo]:
        stats: SnapshotStats | None = kwargs.get("stats")
        out = []
        for p in self.host.procs.values():
            if "stat" in p.denied:
                if stats is not None:
                    stats.denied += 1
                continue
            st = Stat(p.pid, p.comm, p.state, p.ppid, p.pid, p.pid, p.threads, p.start)
            out.append(ProcessInfo(st, p.uid, p.cmdline if kwargs.get("cmdline", True) else None,
                                   p.exe, p.cgroup if kwargs.get("cgroup", True) else None))
        return out


class Host:
    """A pretend kernel with a PidTree and Roots listening to it."""

    def __init__(self, *specs: RootSpec, max_nodes: int = 50_000,
                 tombstone_ttl_s: float = 300.0, boot: bool = True,
                 read_cmdlines: bool = True) -> None:
        self.clock = ManualClock()
        self.procs: dict[int, Proc] = {}
        self.names: dict[str, int] = {}
        self.idents: dict[tuple[int, int], str] = {}  # (pid, start) -> name
        self.subreapers: set[int] = set()
        self.reader = FakeProc(self)
        self._next_pid = 100
        self._cpu_seq = 0
        self.tree = PidTree(max_nodes=max_nodes, tombstone_ttl_s=tombstone_ttl_s,
                            read_cmdlines=read_cmdlines,
                            reader=self.reader, clock=self.clock)  # type: ignore[arg-type]
        if boot:
            self.procs[1] = Proc(1, 0, 1, "init", "/sbin/init", "/sbin/init")
            self.names["init"] = 1
            self.idents[(1, 1)] = "init"
            self.seed()
        self.roots = Roots(self.tree, specs, clock=self.clock)
        self.roots.attach()

    # -- naming ----------------------------------------------------------------------

    def pid(self, name: str | int) -> int:
        return name if isinstance(name, int) else self.names[name]

    def start(self, name: str | int) -> int:
        return self.procs[self.pid(name)].start

    def ticks(self) -> int:
        return self.clock.ticks(self.clock.mono)

    # -- the kernel -------------------------------------------------------------------

    def seed(self) -> None:
        """Seed the tree from this /proc, as the collector does at start."""
        with self.tree.lock:
            self.tree.reconcile(self.reader.snapshot(cgroup=self.tree.read_cgroups,
                                                     cmdline=self.tree.read_cmdlines),
                                source="snapshot")

    def resync(self) -> None:
        """A /proc resync after lost events."""
        with self.tree.lock:
            self.tree.reconcile(self.reader.snapshot(cgroup=self.tree.read_cgroups,
                                                     cmdline=self.tree.read_cmdlines))

    def _event(self, cls: type, *fields: Any) -> None:
        self._cpu_seq += 1
        with self.tree.lock:
            self.tree.apply(cls(0, self._cpu_seq, self.clock.mono, *fields))

    def spawn(self, name: str, parent: str | int = "init", *, comm: str | None = None,
              exe: str | None = None, cmdline: str | None = None, silent: bool = False,
              pid: int | None = None, cgroup: str | None = None, uid: int | None = None) -> int:
        """``parent`` forks ``name`` (comm and the rest inherited unless given, as an
        exec would set them). ``silent``: no FORK event (lost, or before the tree)."""
        ppid = self.pid(parent)
        if pid is None:
            pid = self._next_pid
            self._next_pid += 1
        par = self.procs[ppid]
        self.clock.advance(0.001)
        proc = Proc(pid, ppid, self.ticks(), par.comm, par.exe, par.cmdline, par.cgroup,
                    par.uid)
        if cgroup is not None:
            proc.cgroup = cgroup
        if uid is not None:
            proc.uid = uid
        self.procs[pid] = proc
        self.names[name] = pid
        self.idents[(pid, proc.start)] = name
        if not silent:
            self._event(nl.ForkEvent, ppid, ppid, pid, pid)
        if comm is not None or exe is not None or cmdline is not None:
            self.exec(name, comm or par.comm, exe, cmdline, silent=silent)
        return pid

    def exec(self, name: str | int, comm: str, exe: str | None = None,
             cmdline: str | None = None, *, silent: bool = False) -> None:
        p = self.procs[self.pid(name)]
        self.clock.advance(0.0001)
        p.comm, p.exe = comm[:15], exe or f"/usr/bin/{comm}"
        p.cmdline = cmdline if cmdline is not None else comm
        if not silent:
            self._event(nl.ExecEvent, p.pid, p.pid)

    def rename(self, name: str | int, comm: str) -> None:
        p = self.procs[self.pid(name)]
        p.comm = comm[:15]
        self._event(nl.CommEvent, p.pid, p.pid, comm[:15])

    def setuid(self, name: str | int, uid: int) -> None:
        p = self.procs[self.pid(name)]
        p.uid = uid
        self._event(nl.UidEvent, p.pid, p.pid, uid, uid)

    def thread(self, name: str | int, tid: int, *, exit: bool = False) -> None:
        p = self.procs[self.pid(name)]
        if exit:
            p.threads -= 1
            self._event(nl.ExitEvent, tid, p.pid, 0, 0, p.ppid, p.ppid)
        else:
            p.threads += 1
            self._event(nl.ForkEvent, p.ppid, p.ppid, tid, p.pid)

    def exit(self, name: str | int, code: int = 0, *, signal: int | None = None,
             reap: bool = True, silent: bool = False) -> None:
        """``name`` exits: its children go to the nearest subreaper (or init) at once,
        as the kernel does right after the EXIT event; it stays a zombie unless ``reap``."""
        pid = self.pid(name)
        p = self.procs[pid]
        self.clock.advance(0.001)
        p.state = "Z"
        p.threads = 0
        for child in self.procs.values():
            if child.ppid == pid and child is not p:
                child.ppid = self._adopter(pid)
        status = (signal & 0x7F) if signal is not None else (code & 0xFF) << 8
        if not silent:
            self._event(nl.ExitEvent, pid, pid, status, 17, p.ppid, p.ppid)
        if reap:
            del self.procs[pid]

    def _adopter(self, pid: int) -> int:
        cur = self.procs[pid].ppid
        while cur > 1:
            if cur in self.subreapers and self.procs[cur].state != "Z":
                return cur
            cur = self.procs[cur].ppid if cur in self.procs else 1
        return 1

    def reap(self, name: str | int) -> None:
        """The parent waits for a zombie: its pid is free."""
        del self.procs[self.pid(name)]

    def tick(self, seconds: float = 0.05, rounds: int = 1) -> None:
        """Let time pass and run the tree's housekeeping (deferred exit checks,
        zombie promotion, tombstone expiry, actions)."""
        for _ in range(rounds):
            self.clock.advance(seconds / rounds)
            with self.tree.lock:
                self.tree.housekeeping()

    # -- looking ------------------------------------------------------------------------

    def events(self, root: str, after: int = 0) -> list[Any]:
        return self.roots.log(root).since(after)[0]

    def kinds(self, root: str, after: int = 0) -> list[tuple[str, str]]:
        """(kind, process name) of a root's events: what a table expects."""
        return [(str(e.kind), self.name_of(e.pid, e.start_ticks))
                for e in self.events(root, after)]

    def name_of(self, pid: int, start: int) -> str:
        """The name of the process (pid, start) (a FORK's start may be a tick off)."""
        for s in (start, start - 1, start + 1):
            name = self.idents.get((pid, s))
            if name is not None:
                return name
        return str(pid)
