"""PidTree fed by the real proc connector: lineage, zombies, threads, PID reuse."""

from __future__ import annotations

import os
import signal

import pytest

from proctree_exporter import procfs
from proctree_exporter.collector import Collector
from proctree_exporter.tree import LINEAGE_FORK, PidTree

from .conftest import PYTHON, Janitor, find_node, read_lines, spawn_at_pid, start_ticks, wait_for

pytestmark = pytest.mark.kernel


def test_millisecond_child_appears_with_fork_exec_and_exit(live: tuple[PidTree, Collector],
                                                           janitor: Janitor) -> None:
    tree, _ = live
    p = janitor.spawn(["/bin/sleep", "0.001"])
    p.wait(timeout=5)
    node = wait_for(lambda: (n := find_node(tree, p.pid)) is not None and n.reaped and n)
    assert node.lineage_source == LINEAGE_FORK
    assert node.parent is not None and node.parent.pid == os.getpid()
    assert node.comm == "sleep", "EXEC must refresh comm from /proc"
    assert node.exe is not None and node.exe.endswith("/sleep")
    assert node.cmdline == "/bin/sleep 0.001"
    assert node.exited and node.exit_code == 0 and node.exit_signal is None


def test_exit_code_and_signal_are_decoded(live: tuple[PidTree, Collector],
                                          janitor: Janitor) -> None:
    tree, _ = live
    p1 = janitor.spawn("exit 7")
    p2 = janitor.spawn(["/bin/sleep", "30"])
    p1.wait(timeout=5)
    wait_for(lambda: find_node(tree, p2.pid) is not None)
    os.kill(p2.pid, signal.SIGKILL)
    p2.wait(timeout=5)
    n1 = wait_for(lambda: (n := find_node(tree, p1.pid)) is not None and n.reaped and n)
    n2 = wait_for(lambda: (n := find_node(tree, p2.pid)) is not None and n.reaped and n)
    assert (n1.exit_code, n1.exit_signal) == (7, None)
    assert (n2.exit_code, n2.exit_signal) == (None, signal.SIGKILL)


def test_wrapper_exit_keeps_children_by_lineage_under_init(live: tuple[PidTree, Collector],
                                                           janitor: Janitor) -> None:
    tree, _ = live
    wrapper = janitor.spawn("sleep 60 & echo $!; sleep 60 & echo $!; exit 0")
    kids = [int(x) for x in read_lines(wrapper, 2)]
    for k in kids:
        janitor.track(k)
    wrapper.wait(timeout=5)
    for k in kids:
        node = wait_for(lambda k=k: (n := find_node(tree, k)) is not None
                        and n.ppid != wrapper.pid and n)
        real_ppid = procfs.read_stat(k).ppid
        assert real_ppid != wrapper.pid
        assert node.ppid == real_ppid, "current parent must follow the kernel's reparenting"
        assert node.parent is not None and node.parent.pid == wrapper.pid
        assert node.parent.exited, "the wrapper is a tombstone, still the lineage parent"
        assert not node.exited
        assert tree.view(node).orphaned
        assert tree.is_descendant(k, wrapper.pid)
        assert tree.is_descendant(k, os.getpid())


def test_wrapper_exit_reparents_to_subreaper_and_keeps_lineage(
        live: tuple[PidTree, Collector], janitor: Janitor) -> None:
    tree, _ = live
    # a subreaper runs a wrapper that starts a grandchild and exits
    code = (
        "import ctypes, os, subprocess, sys, time\n"
        "ctypes.CDLL(None, use_errno=True).prctl(36, 1, 0, 0, 0)  # PR_SET_CHILD_SUBREAPER\n"
        "w = subprocess.Popen(['/bin/sh', '-c', 'sleep 60 & echo $!; exit 0'],"
        " stdout=subprocess.PIPE, text=True)\n"
        "print(w.pid, flush=True); print(w.stdout.readline().strip(), flush=True)\n"
        "w.wait(); time.sleep(60)\n"
    )
    reaper = janitor.python(code)
    wrapper_pid, grandchild = (int(x) for x in read_lines(reaper, 2))
    janitor.track(grandchild)
    node = wait_for(lambda: (n := find_node(tree, grandchild)) is not None
                    and n.ppid == reaper.pid and n)
    assert procfs.read_stat(grandchild).ppid == reaper.pid
    assert node.parent is not None and node.parent.pid == wrapper_pid
    assert node.parent.exited
    assert tree.is_descendant(grandchild, reaper.pid)
    chain = tree.chain(grandchild)
    pids = [int(part.split("|")[0]) for part in chain.split(";")]
    assert pids[:3] == [grandchild, wrapper_pid, reaper.pid], chain


def test_unreaped_child_is_a_zombie_after_its_exit(live: tuple[PidTree, Collector],
                                                   janitor: Janitor) -> None:
    tree, _ = live
    code = ("import os, time\n"
            "pid = os.fork()\n"
            "if pid == 0:\n    os._exit(3)\n"
            "print(pid, flush=True); time.sleep(60)\n")
    parent = janitor.python(code)
    (child,) = (int(x) for x in read_lines(parent, 1))
    node = wait_for(lambda: (n := find_node(tree, child)) is not None and n.state == "Z" and n,
                    timeout=10)
    assert procfs.read_stat(child).state == "Z"
    view = tree.view(node)
    assert view.zombie and view.exited and not view.reaped
    assert node.exit_code == 3
    assert node.ppid == parent.pid
    assert tree.get(child) is node, "a zombie still holds its pid"
    # the parent dies: init reaps the zombie, the tree must notice
    os.kill(parent.pid, signal.SIGKILL)
    parent.wait(timeout=5)
    wait_for(lambda: node.reaped, timeout=10)
    assert not tree.view(node).zombie


def test_threads_are_counted_not_noded(live: tuple[PidTree, Collector], janitor: Janitor) -> None:
    tree, _ = live
    code = ("import threading, time\n"
            "ev = threading.Event()\n"
            "ts = [threading.Thread(target=ev.wait, daemon=True) for _ in range(500)]\n"
            "[t.start() for t in ts]\n"
            "print('up', flush=True); time.sleep(60)\n")
    before_nodes = None
    with tree.lock:
        before_created = tree.stats.threads_created
        before_nodes = tree.live_count
    p = janitor.python(code)
    read_lines(p, 1)
    node = wait_for(lambda: (n := find_node(tree, p.pid)) is not None and n.threads >= 501 and n)
    tids = [int(t) for t in os.listdir(f"/proc/{p.pid}/task") if int(t) != p.pid]
    assert len(tids) == 500
    with tree.lock:
        assert not any(tree.get(t) for t in tids), "a thread became a node"
        assert tree.stats.threads_created - before_created >= 500
        assert tree.live_count - before_nodes < 50  # the process, not its threads
    assert node.threads == 501


def test_forced_pid_reuse_makes_a_new_identity(live: tuple[PidTree, Collector],
                                               janitor: Janitor) -> None:
    tree, _ = live
    old_parent = janitor.spawn("sleep 60 & echo $!; wait")
    (old_pid,) = (int(x) for x in read_lines(old_parent, 1))
    janitor.track(old_pid)
    # by identity: after pid-wrapping tests, an older tombstone may hold this pid too
    old = wait_for(lambda: find_node(tree, old_pid, start_ticks(old_pid)))
    assert old.parent is not None and old.parent.pid == old_parent.pid
    os.kill(old_pid, signal.SIGKILL)
    wait_for(lambda: old.reaped, timeout=10)
    new_proc = spawn_at_pid(janitor, old_pid)
    new = wait_for(lambda: (n := tree.get(old_pid)) is not None and n is not old and n)
    assert new.start_ticks != old.start_ticks or new.identity != old.identity
    assert new.parent is not None and new.parent.pid == os.getpid()
    assert not tree.is_descendant(new_proc.pid, old_parent.pid), \
        "the stranger under a reused pid must not inherit the old lineage"
    with tree.lock:
        incarnations = tree.find(old_pid)
    assert incarnations[0] is new and old in incarnations
    assert start_ticks(old_pid) is not None and new.same_start(start_ticks(old_pid))


def test_chain_format_runs_up_to_pid_1(live: tuple[PidTree, Collector], janitor: Janitor) -> None:
    tree, _ = live
    p = janitor.spawn("sh -c 'sleep 60 & echo $!; wait' & wait")
    (leaf,) = (int(x) for x in read_lines(p, 1))
    wait_for(lambda: (n := find_node(tree, leaf)) is not None and n.comm == "sleep")
    chain = tree.chain(leaf)
    parts = [part.split("|") for part in chain.split(";")]
    assert all(len(part) == 3 for part in parts), chain
    assert parts[0] == [str(leaf), "sleep", "root"]
    assert parts[1][1] == "sh" and parts[2][1] == "sh" and int(parts[2][0]) == p.pid
    assert parts[-1][0] == "1"
    assert str(os.getpid()) in [part[0] for part in parts]


def test_chain_of_unknown_pid_falls_back_to_proc() -> None:
    tree = PidTree()  # never fed: everything comes from /proc
    chain = tree.chain(os.getpid())
    pids = [int(p.split("|")[0]) for p in chain.split(";")]
    assert pids[0] == os.getpid() and pids[1] == os.getppid() and pids[-1] == 1


def test_descendants_follow_lineage_past_an_exited_wrapper(live: tuple[PidTree, Collector],
                                                           janitor: Janitor) -> None:
    tree, _ = live
    holder = janitor.python("import subprocess, time\n"
                            "w = subprocess.Popen(['/bin/sh', '-c', 'sleep 60 & echo $!'],"
                            " stdout=subprocess.PIPE, text=True)\n"
                            "print(w.pid, flush=True); print(w.stdout.readline().strip(),"
                            " flush=True); w.wait(); time.sleep(60)\n")
    wrapper_pid, kid = (int(x) for x in read_lines(holder, 2))
    janitor.track(kid)
    wait_for(lambda: (n := find_node(tree, wrapper_pid)) is not None and n.reaped)
    desc = wait_for(lambda: [n.pid for n in tree.descendants(holder.pid)])
    assert kid in desc
    assert wrapper_pid not in desc  # exited nodes only on request
    assert wrapper_pid in [n.pid for n in tree.descendants(holder.pid, include_exited=True)]
    assert PYTHON  # the holder is a python process started by the janitor
