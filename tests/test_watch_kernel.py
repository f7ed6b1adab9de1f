"""Root membership, classification and actions on real process trees.

Each test watches its roots through the public :class:`~proctree_exporter.Root`
handle over the session's live tree: what a program using the Python API sees.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from proctree_exporter import Identity, Observation, Root, procfs
from proctree_exporter.actions import ActionOutcome, ActionSpec, send_to_identity
from proctree_exporter.classification import ORPHANED, PID_REUSED, ZOMBIE
from proctree_exporter.collector import Collector
from proctree_exporter.membership import Roots
from proctree_exporter.rootspec import RootSpec
from proctree_exporter.tree import PidTree, TreeListener

from .conftest import PYTHON, Janitor, find_node, read_lines, spawn_at_pid, wait_for

pytestmark = pytest.mark.kernel

DRY_RUN, IDENTITY_CHANGED, SENT = (ActionOutcome.DRY_RUN, ActionOutcome.IDENTITY_CHANGED,
                                   ActionOutcome.SENT)


@pytest.fixture
def tree(live: tuple[PidTree, Collector]) -> Iterator[PidTree]:
    t, _ = live
    yield t
    with t.lock:
        t.listener = TreeListener()


class Watched(Roots):
    """The roots of one test, with a handle per root as a program would hold it."""

    def watcher(self, name: str) -> Root:
        return Root(self, name)


def watch(tree: PidTree, *specs: RootSpec) -> Watched:
    w = Watched(tree, specs)
    w.attach()
    return w


def settle(watcher: Root, cond, timeout: float = 5.0,  # type: ignore[no-untyped-def]
           seen: list[Observation] | None = None) -> Observation:
    """Observe until ``cond(obs)`` holds; every observation is also put in ``seen``."""
    deadline = time.monotonic() + timeout
    while True:
        obs = watcher.observe()
        if seen is not None:
            seen.append(obs)
        if cond(obs):
            return obs
        if time.monotonic() > deadline:
            pytest.fail(f"condition not met; last observation: alive={obs.root_alive} "
                        f"members={len(obs.members)} classes={dict(obs.classes)} "
                        f"warnings={obs.warnings}")
        time.sleep(0.02)


def pids(obs: Observation) -> set[int]:
    return {pid for pid, _ in obs.members}


FIFTY = "for i in $(seq 50); do sleep 60 & done; echo ready; read line; exit 0"


def test_wrapper_exit_leaves_its_50_children_as_orphaned_members(tree: PidTree,
                                                                 janitor: Janitor) -> None:
    wrapper = janitor.spawn(FIFTY, stdin=subprocess.PIPE)
    read_lines(wrapper, 1)
    wait_for(lambda: len(tree.descendants(wrapper.pid)) == 50)
    kids = [n.pid for n in tree.descendants(wrapper.pid)]
    for k in kids:
        janitor.track(k)
    w = watch(tree, RootSpec(name="job", select="pid", match=str(wrapper.pid)))
    watcher = w.watcher("job")
    obs = watcher.observe()
    assert obs.root_alive and pids(obs) == {wrapper.pid, *kids}
    assert obs.classes["healthy"] == 51
    assert wrapper.stdin is not None
    wrapper.stdin.write("go\n")
    wrapper.stdin.close()
    wrapper.wait(timeout=5)
    seen: list[Observation] = []
    obs = settle(watcher, lambda o: o.classes["orphaned"] == 50, seen=seen)
    assert not obs.root_alive
    assert pids(obs) == set(kids), "every child is still a member after the wrapper exited"
    assert all(m.cls == ORPHANED for m in obs.members.values())
    one = next(iter(obs.members.values()))
    assert f"parent PID {wrapper.pid}" in one.reason and "is dead" in one.reason
    assert "; reparented to PID " in one.reason and one.comm == "sleep"
    assert [m.pid for o in seen for m in o.delta.removed] == [wrapper.pid]
    assert all(o.delta.added == () for o in seen)


BURST = (
    "import os, sys, time\n"
    "sys.stdin.readline()\n"
    "for _ in range(20):\n"
    "    kids = []\n"
    "    for _ in range(50):\n"
    "        pid = os.fork()\n"
    "        if pid == 0:\n            time.sleep(0.005); os._exit(0)\n"
    "        kids.append(pid)\n"
    "    for k in kids:\n        os.waitpid(k, 0)\n"
    "print('done', flush=True); time.sleep(60)\n"
)


def test_a_thousand_5ms_processes_are_counted_exactly(tree: PidTree, janitor: Janitor) -> None:
    holder = janitor.spawn([PYTHON, "-c", BURST], stdin=subprocess.PIPE)
    wait_for(lambda: find_node(tree, holder.pid))
    w = watch(tree, RootSpec(name="burst", select="pid", match=str(holder.pid)))
    watcher = w.watcher("burst")
    first = watcher.observe()
    assert pids(first) == {holder.pid}
    assert holder.stdin is not None
    holder.stdin.write("go\n")
    holder.stdin.flush()
    read_lines(holder, 1, timeout=60)
    # every observation reports what happened since the previous one: summed over
    # however many observations it takes, spawned and exited are exactly 1,000
    spawned = exited = listed = transient = 0
    deadline = time.monotonic() + 10
    while True:
        obs = watcher.observe()
        spawned += obs.spawned
        exited += obs.exited
        listed += len(obs.delta.added)
        transient += len(obs.delta.transient)
        if obs.exited_total >= 1000 or time.monotonic() > deadline:
            break
        time.sleep(0.01)
    time.sleep(0.2)
    last = watcher.observe()
    assert (spawned + last.spawned, exited + last.exited) == (1000, 1000)
    assert last.spawned_total == 1001 and last.exited_total == 1000  # the holder joined first
    assert pids(last) == {holder.pid}
    # lived and died between two observations: not in added/removed, but handed
    # over as transient for consumers that want every process
    assert listed + transient + len(last.delta.transient) == 1000 and transient > 0


def test_exec_wrapper_becomes_an_instance_when_it_execs(tree: PidTree, janitor: Janitor,
                                                        tmp_path: Path) -> None:
    app = tmp_path / "ptx-app"
    app.symlink_to("/bin/sleep")
    w = watch(tree, RootSpec(name="app", select="comm", match="ptx-app"),
              RootSpec(name="argv", select="cmdline", match=r"^\S*ptx-app 61$"))
    watcher, argv = w.watcher("app"), w.watcher("argv")
    assert not watcher.observe().root_alive
    p = janitor.spawn(f"sleep 0.2; exec {app} 61")
    obs = settle(watcher, lambda o: o.root_alive)
    assert obs.instances[0][0] == p.pid  # the sh became the app: same pid
    assert settle(argv, lambda o: o.root_alive).instances[0][0] == p.pid


def test_pidfile_root_follows_the_file_across_a_restart(tree: PidTree, janitor: Janitor,
                                                        tmp_path: Path) -> None:
    pidfile = tmp_path / "app.pid"
    a = janitor.spawn(["/bin/sleep", "60"])
    pidfile.write_text(f"{a.pid}\n")
    w = watch(tree, RootSpec(name="svc", select="pidfile", match=str(pidfile)))
    watcher = w.watcher("svc")
    assert settle(watcher, lambda o: o.root_alive).instances[0][0] == a.pid
    a.kill()
    a.wait()
    settle(watcher, lambda o: not o.root_alive)
    b = janitor.spawn(["/bin/sleep", "60"])
    pidfile.write_text(f"{b.pid}\n")
    obs = settle(watcher, lambda o: o.root_alive, timeout=5)
    assert obs.instances[0][0] == b.pid
    assert w.roots["svc"].restarts == 1
    events = [e for e in obs.events if e.kind == "restart"]
    assert events and events[0].pid == b.pid


def test_missing_pidfile_is_a_warning_not_a_crash(tree: PidTree, tmp_path: Path) -> None:
    w = watch(tree, RootSpec(name="svc", select="pidfile", match=str(tmp_path / "none.pid")))
    obs = w.watcher("svc").observe()
    assert not obs.root_alive and any("none.pid" in x for x in obs.warnings)


CGROUP_BASE = Path("/sys/fs/cgroup/unified") if Path("/sys/fs/cgroup/unified").is_dir() \
    else Path("/sys/fs/cgroup")


def test_cgroup_root_tracks_processes_in_that_cgroup(tree: PidTree, janitor: Janitor) -> None:
    cg = CGROUP_BASE / f"ptx-test-{os.getpid()}"
    cg.mkdir()
    try:
        w = watch(tree, RootSpec(name="cg", select="cgroup", match=f"/{cg.name}"))
        watcher = w.watcher("cg")
        assert not watcher.observe().root_alive
        p = janitor.spawn(f"echo $$ > {cg}/cgroup.procs; exec sh -c 'sleep 60 & wait'")
        obs = settle(watcher, lambda o: o.root_alive and len(o.members) == 2)
        assert obs.instances[0][0] == p.pid
        assert all(m.comm in ("sh", "sleep") for m in obs.members.values())
    finally:
        janitor.cleanup()
        wait_for(lambda: not (cg / "cgroup.procs").read_text().strip())
        cg.rmdir()


def test_a_match_nested_in_another_instance_counts_once(tree: PidTree, janitor: Janitor) -> None:
    w = watch(tree, RootSpec(name="nest", select="cmdline", match="ptxnestmark"))
    watcher = w.watcher("nest")
    outer = janitor.spawn("true ptxnestmark; sh -c 'sleep 60 # ptxnestmark' & wait")
    obs = settle(watcher, lambda o: len(o.members) >= 3)
    assert len(obs.instances) == 1 and obs.instances[0][0] == outer.pid
    inner = [m for m in obs.members.values() if m.depth == 1]
    assert len(inner) == 1 and inner[0].lineage_ppid == outer.pid


def test_zombie_class_after_the_grace_names_its_parent(tree: PidTree, janitor: Janitor) -> None:
    code = ("import os, sys, time\n"
            "sys.stdin.readline()\n"
            "pid = os.fork()\n"
            "if pid == 0:\n    os._exit(3)\n"
            "print(pid, flush=True); time.sleep(60)\n")
    holder = janitor.spawn([PYTHON, "-c", code], stdin=subprocess.PIPE)
    wait_for(lambda: find_node(tree, holder.pid))
    w = watch(tree, RootSpec(name="z", select="pid", match=str(holder.pid),
                             zombie_grace_s=0.5))
    watcher = w.watcher("z")
    watcher.observe()
    assert holder.stdin is not None
    holder.stdin.write("go\n")
    holder.stdin.flush()
    (child,) = (int(x) for x in read_lines(holder, 1))
    early = watcher.observe()
    assert early.classes["zombie"] == 0  # not before the grace
    obs = settle(watcher, lambda o: o.classes["zombie"] == 1)
    (change,) = [e for e in obs.events if e.new_class == ZOMBIE]
    assert change.pid == child
    assert f"parent PID {holder.pid} (python" in change.reason and "has not reaped" in change.reason


def test_a_stranger_under_a_reused_pid_is_never_a_member(tree: PidTree, janitor: Janitor) -> None:
    holder = janitor.spawn("sleep 60 & echo $!; wait")
    (kid,) = (int(x) for x in read_lines(holder, 1))
    janitor.track(kid)
    wait_for(lambda: (n := find_node(tree, kid)) is not None and n.comm == "sleep")
    w = watch(tree, RootSpec(name="r", select="pid", match=str(holder.pid)))
    watcher = w.watcher("r")
    assert kid in pids(watcher.observe())
    os.kill(kid, signal.SIGKILL)
    settle(watcher, lambda o: kid not in pids(o) and any(t.pid == kid for t in o.tombstones))
    stranger = spawn_at_pid(janitor, kid)
    obs = settle(watcher, lambda o: any(t.cls == PID_REUSED for t in o.tombstones))
    assert stranger.pid not in pids(obs)
    assert kid not in {m.pid for m in obs.delta.added}
    (tomb,) = [t for t in obs.tombstones if t.pid == kid]
    stranger_start = procfs.read_stat(stranger.pid).start_ticks
    assert f"pid {kid} of exited process sleep" in tomb.reason
    assert abs(int(tomb.reason.rsplit("start ", 1)[1].rstrip(")")) - stranger_start) <= 1
    assert w.roots["r"].pid_reuse_seen == 1


def test_max_members_caps_the_listing_not_the_counts(tree: PidTree, janitor: Janitor) -> None:
    holder = janitor.spawn("for i in $(seq 20); do sleep 60 & done; echo $!; wait")
    (last,) = (int(x) for x in read_lines(holder, 1))
    wait_for(lambda: len(tree.descendants(holder.pid)) == 20)
    for n in tree.descendants(holder.pid):
        janitor.track(n.pid)
    w = watch(tree, RootSpec(name="cap", select="pid", match=str(holder.pid), max_members=5))
    watcher = w.watcher("cap")
    obs = watcher.observe()
    assert obs.truncated and len(obs.members) == 5 and obs.classes["healthy"] == 21
    assert holder.pid in pids(obs), "instances are listed first"
    listed = pids(obs)
    victim = last if last not in listed else next(p for p in listed if p != holder.pid)
    os.kill(victim, signal.SIGKILL)
    obs = settle(watcher, lambda o: o.exited == 1 or bool(o.delta.removed))
    assert [m.pid for m in obs.delta.removed] == [victim], "no removal of unlisted members"
    assert obs.classes["healthy"] == 20


IGNORES_TERM = ("import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
                "time.sleep(60)")
LEFTOVERS = (f"sleep 60 & echo $!; {PYTHON} -c '{IGNORES_TERM}' & echo $!; read line; exit 0")


def _ignores_term(pid: int) -> bool:
    with open(f"/proc/{pid}/status") as f:
        mask = next(line for line in f if line.startswith("SigIgn:")).split()[1]
    return bool(int(mask, 16) & (1 << (signal.SIGTERM - 1)))


def _leftover_scene(tree: PidTree, janitor: Janitor, actions: ActionSpec):  # type: ignore[no-untyped-def]
    """A wrapper leaving two children (one ignores SIGTERM) in root ``job``; returns the
    roots, the children, an outsider and a handle on ``job`` made before the wrapper ends."""
    wrapper = janitor.spawn(LEFTOVERS, stdin=subprocess.PIPE)
    kids = [int(x) for x in read_lines(wrapper, 2)]
    for k in kids:
        janitor.track(k)
    outsider = janitor.spawn(["/bin/sleep", "60"])
    wait_for(lambda: all(find_node(tree, k) for k in kids))
    wait_for(lambda: _ignores_term(kids[1]))
    w = watch(tree, RootSpec(name="job", select="pid", match=str(wrapper.pid), actions=actions))
    handle = w.watcher("job")
    assert handle.observe().root_alive
    assert wrapper.stdin is not None
    wrapper.stdin.write("go\n")
    wrapper.stdin.close()
    wrapper.wait(timeout=5)
    return w, kids, outsider, handle


def test_actions_terminate_only_the_roots_leftovers(tree: PidTree, janitor: Janitor) -> None:
    w, kids, outsider, handle = _leftover_scene(
        tree, janitor, ActionSpec(enabled=True, dry_run=False, term_grace_s=0.5))
    for k in kids:
        node = find_node(tree, k)
        wait_for(lambda node=node: node.reaped, timeout=10)
    root = w.roots["job"]
    assert root.actions.get(("term", SENT)) == 2
    # the one that ignored SIGTERM got SIGKILL after the grace; sleep was already gone
    assert root.actions.get(("kill", SENT)) == 1
    assert find_node(tree, kids[1]).exit_signal == signal.SIGKILL
    assert find_node(tree, kids[0]).exit_signal == signal.SIGTERM
    assert outsider.poll() is None, "a process outside the root's lineage was touched"
    obs = handle.observe()
    sent = [e for e in obs.events if e.kind == "action" and e.outcome == SENT]
    assert [e.pid for e in sent].count(kids[1]) == 2
    assert {e.signal for e in sent if e.pid == kids[1]} == {signal.SIGTERM, signal.SIGKILL}


def test_dry_run_actions_signal_nothing(tree: PidTree, janitor: Janitor) -> None:
    w, kids, _, _ = _leftover_scene(tree, janitor, ActionSpec(enabled=True, term_grace_s=0.2))
    wait_for(lambda: w.roots["job"].actions.get(("kill", DRY_RUN)) == 2, timeout=5)
    assert w.roots["job"].actions.get(("term", DRY_RUN)) == 2
    for k in kids:
        assert procfs.read_stat(k).state != "Z" and not find_node(tree, k).exited


def test_a_pid_reused_between_check_and_signal_is_left_alone(janitor: Janitor) -> None:
    victim = janitor.spawn(["/bin/sleep", "60"])
    start = procfs.read_stat(victim.pid).start_ticks
    victim.kill()
    victim.wait()
    # identity is (pid, start in 10 ms clock ticks): only a forced reuse inside the
    # same tick could collide, so leave a few ticks between the two
    time.sleep(0.05)
    stranger = spawn_at_pid(janitor, victim.pid)
    assert send_to_identity(Identity(victim.pid, start), signal.SIGKILL) == IDENTITY_CHANGED
    time.sleep(0.1)
    assert stranger.poll() is None, "the stranger holding the reused pid was signalled"
    assert send_to_identity(Identity(stranger.pid, procfs.read_stat(stranger.pid).start_ticks),
                            signal.SIGTERM) == SENT
    assert stranger.wait(timeout=5) == -signal.SIGTERM
