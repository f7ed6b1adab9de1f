"""PidTree event logic for paths the kernel cannot be made to take on demand.

A lost EXIT, an event queued before a resync, a missing parent: fed as events
so that each path is exercised exactly. Behaviour on the real kernel is in
the *_kernel.py tests.
"""

from __future__ import annotations

import os
import time

from proctree_exporter import netlink as nl
from proctree_exporter import procfs
from proctree_exporter.clock import CLOCK_TICKS
from proctree_exporter.tree import PidTree


def ts_at_ticks(tree: PidTree, ticks: int) -> int:
    return ticks * 1_000_000_000 // CLOCK_TICKS - tree.clock.boottime_offset_ns + 1000


def fork(tree: PidTree, parent: int, child: int, ticks: int) -> None:
    tree.apply(nl.ForkEvent(0, 0, ts_at_ticks(tree, ticks), parent, parent, child, child))


def exit_(tree: PidTree, pid: int, ticks: int, status: int = 0) -> None:
    tree.apply(nl.ExitEvent(0, 0, ts_at_ticks(tree, ticks), pid, pid, status, 17, 0, 0))


def fresh_tree() -> PidTree:
    tree = PidTree(reader=procfs.ProcFS("/nonexistent"))  # /proc reads fail: only events count
    fork(tree, 0, 100, 1000)
    return tree


def test_fork_over_a_live_pid_retires_the_missed_process() -> None:
    tree = fresh_tree()
    fork(tree, 100, 200, 1010)
    old = tree.get(200)
    fork(tree, 100, 200, 5000)  # its EXIT was lost; the pid came round again
    new = tree.get(200)
    assert new is not old and old.reaped and old.exited and old.exit_inferred
    assert tree.stats.pid_reuse == 1 and tree.stats.missed_exits == 1


def test_events_older_than_the_process_holding_the_pid_are_ignored() -> None:
    tree = fresh_tree()
    fork(tree, 100, 300, 2000)
    exit_(tree, 300, 1500)  # queued before a resync: names an older process
    assert not tree.get(300).exited and tree.stats.stale_events == 1
    fork(tree, 100, 300, 1400)  # an older FORK for the same pid
    assert tree.get(300).start_ticks == 2000


def test_a_queued_exit_completes_an_exit_a_resync_inferred() -> None:
    tree = fresh_tree()
    fork(tree, 100, 400, 1100)
    tree.reconcile([])  # /proc no longer has it (nor anything: the stand-in /proc is empty)
    node = next(iter(n for n in tree.find(400)))
    assert node.exit_inferred and tree.stats.missed_exits >= 1
    missed = tree.stats.missed_exits
    exit_(tree, 400, 1200, status=0x0500)
    assert node.exit_code == 5 and not node.exit_inferred
    assert tree.stats.missed_exits == missed - 1


def test_exec_by_a_non_leader_thread_revives_the_leader_exit() -> None:
    tree = fresh_tree()
    fork(tree, 100, 500, 1100)
    exit_(tree, 500, 1200)  # the old leader thread dies in de_thread
    assert tree.get(500).exited
    tree.reader = procfs.ProcFS()
    # the exec that follows finds the same identity alive: use our own pid as a stand-in
    me = procfs.read_stat(os.getpid())
    fork(tree, 100, me.pid, me.start_ticks)
    exit_(tree, me.pid, me.start_ticks + 1)
    tree.apply(nl.ExecEvent(0, 0, time.monotonic_ns(), me.pid, me.pid))
    assert not tree.get(me.pid).exited and tree.stats.processes_exited == 1


def test_thread_events_move_counts_only() -> None:
    tree = fresh_tree()
    for tid in range(101, 111):
        tree.apply(nl.ForkEvent(0, 0, ts_at_ticks(tree, 1001), 1, 1, tid, 100))
    assert tree.get(100).threads == 11 and tree.live_count == 1
    tree.apply(nl.ExitEvent(0, 0, ts_at_ticks(tree, 1002), 105, 100, 0, 0, 0, 0))
    assert tree.get(100).threads == 10 and not tree.get(100).exited
    assert tree.stats.threads_created == 10 and tree.stats.threads_exited == 1


def test_ancestor_walks_stop_on_cycles() -> None:
    tree = fresh_tree()
    fork(tree, 100, 600, 1100)
    a, b = tree.get(100), tree.get(600)
    a.parent = b  # corrupt on purpose: a two-node cycle
    assert [n.pid for n in tree.ancestors(b)] == [100]
    assert not tree.is_descendant(600, "nonexistent")
    assert tree.chain(600) == "600|?|?;100|?|?"
