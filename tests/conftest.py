"""Shared fixtures: a live collector on the real kernel, and a janitor for test processes.

Every process a test starts is ended by the janitor, by pid (checked against
its start time, so a reused pid is never hit), even when the test fails.
Processes are started in their own session, so their whole group can be
killed even after the kernel has reparented some of them to PID 1.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from proctree_exporter import procfs
from proctree_exporter.collector import Collector, CollectorSettings
from proctree_exporter.tree import Node, PidTree

REPO = Path(__file__).resolve().parent.parent
PYTHON = sys.executable


def wait_for(pred: Callable[[], Any], timeout: float = 5.0, interval: float = 0.01) -> Any:
    """Poll ``pred`` until it returns something truthy; fail the test on timeout."""
    deadline = time.monotonic() + timeout
    while True:
        value = pred()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout}s waiting for {getattr(pred, '__name__', pred)}")
        time.sleep(interval)


def start_ticks(pid: int) -> int | None:
    try:
        return procfs.read_stat(pid).start_ticks
    except (procfs.ProcReadError, ValueError):
        return None


# Start times of the processes the current test's janitor started or tracked,
# so find_node() picks that process, never an older tombstone of its pid
# (a long suite wraps pids; the fork may not be applied yet when a test looks).
_KNOWN_STARTS: dict[int, int] = {}


class Janitor:
    """Starts test processes and guarantees they end."""

    def __init__(self) -> None:
        self.procs: list[subprocess.Popen[str]] = []
        self.groups: set[int] = set()
        self.pids: dict[int, int | None] = {}

    def spawn(self, args: list[str] | str, **kw: Any) -> subprocess.Popen[str]:
        """Start a process in a new session (its own process group)."""
        if isinstance(args, str):
            args = ["/bin/sh", "-c", args]
        kw.setdefault("stdout", subprocess.PIPE)
        kw.setdefault("stdin", subprocess.DEVNULL)
        kw.setdefault("text", True)
        p = subprocess.Popen(args, start_new_session=True, **kw)
        self.procs.append(p)
        self.groups.add(p.pid)
        self.track(p.pid)
        return p

    def python(self, code: str, **kw: Any) -> subprocess.Popen[str]:
        """Start ``python -c code`` in a new session."""
        return self.spawn([PYTHON, "-c", code], **kw)

    def track(self, pid: int) -> None:
        """Also end this pid at teardown (if it still is the same process)."""
        start = self.pids.setdefault(pid, start_ticks(pid))
        if start is not None:
            _KNOWN_STARTS[pid] = start

    def cleanup(self) -> None:
        for pid in self.pids:
            _KNOWN_STARTS.pop(pid, None)
        for pgid in self.groups:
            try:
                os.killpg(pgid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        for pid, start in self.pids.items():
            if start is not None and start_ticks(pid) == start:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
        for p in self.procs:
            try:
                p.wait(timeout=5)
            except subprocess.TimeoutExpired:
                pass
            for stream in (p.stdout, p.stderr):
                if stream:
                    stream.close()


@pytest.fixture
def janitor() -> Iterator[Janitor]:
    j = Janitor()
    try:
        yield j
    finally:
        j.cleanup()


@pytest.fixture(scope="session")
def live() -> Iterator[tuple[PidTree, Collector]]:
    """One PidTree fed by the real proc connector for the whole session."""
    tree = PidTree(max_nodes=200_000, tombstone_ttl_s=600)
    collector = Collector(tree, CollectorSettings(source="netlink"))
    collector.start()
    assert collector.ready.wait(30), "collector did not become ready"
    assert collector.failed is None, f"collector failed: {collector.failed}"
    try:
        yield tree, collector
    finally:
        collector.stop()


def find_node(tree: PidTree, pid: int, start: int | None = None) -> Node | None:
    """The newest node for ``pid`` (live or tombstone) of one start time.

    Without ``start``, the start time is the one the janitor recorded for
    ``pid``, else the one /proc shows now; only for a pid neither knows is it
    the newest node whatever its start.
    """
    if start is None:
        start = _KNOWN_STARTS.get(pid) or start_ticks(pid)
    with tree.lock:
        for node in tree.find(pid):
            if start is None or node.same_start(start):
                return node
    return None


def read_lines(p: subprocess.Popen[str], n: int, timeout: float = 10.0) -> list[str]:
    """Read ``n`` lines from a child's stdout (bounded in time by the child's own sleep)."""
    assert p.stdout is not None
    lines = []
    deadline = time.monotonic() + timeout
    while len(lines) < n and time.monotonic() < deadline:
        line = p.stdout.readline()
        if not line:
            break
        lines.append(line.strip())
    assert len(lines) == n, f"expected {n} lines from pid {p.pid}, got {lines}"
    return lines


def tree_mismatches(tree: PidTree) -> list[str]:
    """Differences between the tree's live processes and /proc right now.

    Every process in /proc must be a node with the same start time and
    current parent; every live node must still be in /proc. Racy by nature:
    callers retry until the host is quiet (see :func:`assert_matches_proc`).
    """
    problems = []
    infos = {i.stat.pid: i for i in procfs.snapshot(details=False)}
    with tree.lock:
        for pid, info in infos.items():
            node = tree.get(pid)
            if node is None:
                problems.append(f"missing {pid} {info.stat.comm}")
            elif not node.same_start(info.stat.start_ticks):
                problems.append(f"wrong identity {pid}: {node.start_ticks} vs "
                                f"{info.stat.start_ticks}")
            elif node.ppid != info.stat.ppid:
                problems.append(f"wrong ppid {pid}: {node.ppid} vs {info.stat.ppid}")
            elif (info.stat.state == "Z") != (node.state == "Z"):
                problems.append(f"zombie state {pid}: {node.state} vs {info.stat.state}")
        for node in list(tree.nodes()):
            if not node.reaped and node.pid not in infos:
                problems.append(f"ghost {node.pid} {node.comm} exited={node.exited}")
    return problems


def assert_matches_proc(tree: PidTree, timeout: float = 10.0) -> None:
    """Wait until the tree equals /proc ground truth; fail with the differences."""
    deadline = time.monotonic() + timeout
    while True:
        problems = tree_mismatches(tree)
        if not problems:
            return
        if time.monotonic() > deadline:
            pytest.fail("tree differs from /proc: " + "; ".join(problems[:20]))
        time.sleep(0.1)


def spawn_at_pid(janitor: Janitor, want: int, attempts: int = 50) -> subprocess.Popen[str]:
    """Start ``sleep`` under exactly pid ``want`` (forced PID reuse) by writing
    ns_last_pid just before forking; fail the test after ``attempts`` misses."""
    for _ in range(attempts):
        with open("/proc/sys/kernel/ns_last_pid", "w") as f:
            f.write(str(want - 1))
        p = janitor.spawn(["/bin/sleep", "60"])
        if p.pid == want:
            return p
        os.kill(p.pid, signal.SIGKILL)
        p.wait()
    pytest.fail(f"could not get pid {want} in {attempts} attempts")


def running(pid: int, start: int | None = None) -> bool:
    """Whether ``pid`` is a running process (not a zombie), and with ``start`` still
    that process (within the tick a start derived from a fork event may differ by):
    on a busy host a killed process's pid can go to someone else."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except OSError:
        return False
    return fields[0] not in "ZX" and (start is None or abs(int(fields[19]) - start) <= 1)
