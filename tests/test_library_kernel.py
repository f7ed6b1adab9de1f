"""The Python API as an embedding program uses it: public names only, real processes.

Nothing here imports a module of the package: only what ``proctree_exporter``
exports. If this file needs a private name, the public API is missing something.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator

import pytest

import proctree_exporter
from proctree_exporter import (
    Capability,
    EventKind,
    Identity,
    MemberInfo,
    Monitor,
    MonitorError,
    Observation,
    ProcessClass,
    ProcessView,
    Root,
    RootEvent,
    TreeNode,
)

from .conftest import REPO, Janitor, read_lines, running, wait_for

pytestmark = pytest.mark.kernel


@pytest.fixture(scope="module")
def monitor() -> Iterator[Monitor]:
    with Monitor() as m:
        yield m


def collect(root: Root, until, timeout: float = 10.0) -> list[RootEvent]:  # type: ignore[no-untyped-def]
    """Events of ``root`` until ``until(events)`` holds (fails after ``timeout``)."""
    got: list[RootEvent] = []
    deadline = time.monotonic() + timeout
    while not until(got):
        assert time.monotonic() < deadline, [(e.kind, e.pid) for e in got]
        got.extend(root.events(timeout=0.2))
    return got


WRAPPER = "sleep 60 & echo $!; read go; exit 3"


def test_attach_events_and_observe_follow_a_wrapper_that_leaves_an_orphan(
        monitor: Monitor, janitor: Janitor) -> None:
    wrapper = janitor.spawn(WRAPPER, stdin=subprocess.PIPE)
    (sleeper,) = (int(x) for x in read_lines(wrapper, 1))
    janitor.track(sleeper)
    with monitor.attach(pid=wrapper.pid) as root:
        first = root.observe()
        assert isinstance(first, Observation) and first.root_alive
        assert {m.pid for m in first.members.values()} == {wrapper.pid, sleeper}
        assert first.instances == (Identity(wrapper.pid, first.instances[0].start_ticks),)
        assert wrapper.stdin is not None
        wrapper.stdin.write("go\n")
        wrapper.stdin.close()
        wrapper.wait(timeout=10)
        events = collect(root, lambda evs: any(e.kind is EventKind.CLASS for e in evs))
        kinds = [(e.kind, e.pid) for e in events]
        # the members already there when attached, then what happened, in order
        assert kinds[:3] == [(EventKind.JOINED, wrapper.pid), (EventKind.ROOT_UP, wrapper.pid),
                             (EventKind.JOINED, sleeper)]
        exited = next(e for e in events if e.kind is EventKind.EXITED)
        assert (exited.pid, exited.exit_code, exited.reason) == (
            wrapper.pid, 3, f"process {wrapper.pid} (sh) exited with code 3")
        orphaned = next(e for e in events if e.kind is EventKind.CLASS)
        assert orphaned.new_class is ProcessClass.ORPHANED and orphaned.other_pid == wrapper.pid
        assert orphaned.ppid != wrapper.pid and orphaned.comm == "sleep"
        assert kinds.index((EventKind.EXITED, wrapper.pid)) < kinds.index(
            (EventKind.CLASS, sleeper))
        obs = root.observe()
        assert not obs.root_alive and obs.classes["orphaned"] == 1 and obs.exited == 1
        assert [m.pid for m in obs.delta.removed] == [wrapper.pid]
        (orphan,) = obs.members.values()
        assert isinstance(orphan, MemberInfo) and orphan.cls == "orphaned"
        assert orphan.lineage_ppid == wrapper.pid and "is dead; reparented to PID" in \
            orphan.reason
        assert [t.pid for t in obs.tombstones] == [wrapper.pid]
        # lineage survives the wrapper's exit
        assert monitor.is_descendant(sleeper, wrapper.pid)
        assert [a.pid for a in monitor.ancestors(sleeper)][:1] == [wrapper.pid]
        os.kill(sleeper, signal.SIGTERM)
        gone = collect(root, lambda evs: any(e.kind is EventKind.EXITED and e.pid == sleeper
                                            for e in evs))
        assert gone[-1].exit_signal == signal.SIGTERM


def test_a_thousand_short_lived_processes_are_counted_exactly(monitor: Monitor,
                                                              janitor: Janitor) -> None:
    code = ("import os, sys\nsys.stdin.readline()\n"
            "for _ in range(1000):\n"
            "    pid = os.fork()\n"
            "    if pid == 0:\n        os._exit(0)\n"
            "    os.waitpid(pid, 0)\n"
            "print('done', flush=True)\nsys.stdin.readline()\n")
    holder = janitor.python(code, stdin=subprocess.PIPE)
    root = monitor.attach(pid=holder.pid)
    try:
        assert root.observe().spawned_total == 1
        assert holder.stdin is not None
        holder.stdin.write("go\n")
        holder.stdin.flush()
        read_lines(holder, 1, timeout=60)
        obs = wait_for(lambda: (o := root.observe()).exited_total == 1000 and o, timeout=10)
        assert obs.spawned_total == 1001
    finally:
        root.detach()


def test_subscribe_delivers_in_order_on_its_own_thread(monitor: Monitor,
                                                       janitor: Janitor) -> None:
    holder = janitor.spawn("read go; for i in 1 2 3; do sh -c 'exit 0'; done; read end",
                           stdin=subprocess.PIPE)
    root = monitor.attach(pid=holder.pid)
    got: list[RootEvent] = []
    threads: set[str] = set()
    done = threading.Event()

    def on_event(ev: RootEvent) -> None:
        threads.add(threading.current_thread().name)
        got.append(ev)
        if sum(e.kind is EventKind.EXITED for e in got) == 3:
            done.set()
        if ev.kind is EventKind.EXEC:
            raise RuntimeError("a failing callback is logged, delivery goes on")

    sub = root.subscribe(on_event)
    try:
        assert holder.stdin is not None
        holder.stdin.write("go\n")
        holder.stdin.flush()
        assert done.wait(10), [(e.kind, e.pid) for e in got]
        assert threading.current_thread().name not in threads and sub.active
        seqs = [e.seq for e in got]
        assert seqs == sorted(seqs) == list(range(1, len(seqs) + 1))
        assert sub.errors >= 1
    finally:
        root.detach()
    assert not sub.active


def test_selectors_options_and_handles(monitor: Monitor, janitor: Janitor, tmp_path) -> None:  # type: ignore[no-untyped-def]
    p = janitor.spawn(["/bin/sleep", "61"])
    # its fork was queued before Popen returned: caught up, the monitor knows it
    assert monitor.catch_up() and monitor.process(p.pid) is not None
    wait_for(lambda: (v := monitor.process(p.pid)) is not None and v.comm == "sleep")
    pidfile = tmp_path / "app.pid"
    pidfile.write_text(str(p.pid))
    for kw in ({"comm": "sleep"}, {"exe": "sleep"}, {"cmdline": r"^/bin/sleep 61$"},
               {"pidfile": str(pidfile)}, {"pid": str(p.pid)}):
        with monitor.attach(**kw, max_members=5000) as r:
            assert p.pid in {m.pid for m in r.observe().members.values()}, kw
    a = monitor.attach("same", pid=p.pid)
    b = monitor.attach("same", pid=p.pid)  # a second handle on the same root
    with pytest.raises(ValueError, match="different root"):
        monitor.attach("same", comm="sleep")
    with pytest.raises(ValueError, match="exactly one"):
        monitor.attach(pid=1, comm="x")
    with pytest.raises(ValueError, match="max_members"):
        monitor.attach(pid=1, max_members=0)
    with pytest.raises(ValueError, match="Extra inputs"):
        monitor.attach(pid=1, no_such_option=True)
    a.detach()
    assert b.observe().root_alive  # the root lives while a handle does
    b.detach()
    b.detach()  # twice is harmless


def test_the_hosts_tree_and_what_it_can_know(monitor: Monitor) -> None:
    forest = monitor.tree()
    assert all(isinstance(t, TreeNode) for t in forest)
    assert 1 in {t.process.pid for t in forest}
    mine = monitor.tree(os.getpid())
    assert len(mine) == 1 and isinstance(mine[0].process, ProcessView)
    assert mine[0].process.pid == os.getpid()
    assert monitor.process(os.getpid()) is not None and monitor.process(2**22 + 1) is None
    assert monitor.ancestors(2**22 + 1) == []
    caps = monitor.capabilities()
    assert all(isinstance(c, Capability) for c in caps)
    assert {c.category: c.status for c in caps}["process_lifecycle"] == "supported"
    assert monitor.source == "netlink"


def test_a_monitor_not_running_says_so() -> None:
    m = Monitor()
    with pytest.raises(MonitorError, match="not running"):
        m.attach(pid=1)
    with pytest.raises(ValueError, match="source"):
        Monitor(source="carrier-pigeon")
    m.close()
    with pytest.raises(MonitorError, match="closed"):
        m.start()


def test_every_public_name_is_documented() -> None:
    for name in proctree_exporter.__all__:
        obj = getattr(proctree_exporter, name)
        if name == "__version__":
            continue
        assert obj.__doc__ and obj.__doc__.strip(), name
        for attr, member in vars(obj).items() if isinstance(obj, type) else ():
            if not attr.startswith("_") and callable(member):
                assert member.__doc__, f"{name}.{attr}"


def test_the_readme_library_example_runs(janitor: Janitor) -> None:
    readme = (REPO / "README.md").read_text()
    section = readme.split("\n## Library\n", 1)[1]
    code = re.search(r"```python\n(.*?)```", section, re.S)
    assert code, "README's Library section has a python example"
    proc = janitor.spawn([sys.executable, "-c", code.group(1)], stderr=subprocess.PIPE)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    assert "orphaned" in out and "exited with code 3" in out, out


# a subreaper that runs a job (argv[1]) and reaps whatever it is handed, so that what a
# kill ends is gone from /proc (this sandbox's PID 1 does not reap)
SUBREAPER = (
    "import ctypes, os, subprocess, sys, time\n"
    "assert ctypes.CDLL(None).prctl(36, 1, 0, 0, 0) == 0\n"
    "print(subprocess.Popen(['/bin/sh', '-c', sys.argv[1]]).pid, flush=True)\n"
    "while True:\n"
    "    try:\n"
    "        os.wait()\n"
    "    except ChildProcessError:\n"
    "        time.sleep(0.05)\n"
)


def test_a_root_kills_its_tree_and_says_how_sure_it_is(monitor: Monitor,
                                                       janitor: Janitor) -> None:
    holder = janitor.spawn([sys.executable, "-c", SUBREAPER,
                            "sh -c 'sleep 301 & sleep 302 &'; sleep 303 & exec sleep 304"])
    job = int(read_lines(holder, 1)[0])
    janitor.track(job)
    monitor.catch_up()
    with monitor.attach("kill-me", pid=job) as root:
        # the whole job is there: two orphans, its live child, and itself exec'd (its last
        # step, after it started the child)
        obs = wait_for(lambda: (o := root.observe()).classes.get("orphaned") == 2
                       and any(m.depth == 1 for m in o.members.values())
                       and any(m.pid == job and m.comm == "sleep" for m in o.members.values())
                       and o)
        assert root.confidence.level == "exact" and root.confidence.reason == ""
        assert isinstance(root.confidence, proctree_exporter.Confidence)
        for m in obs.members.values():
            janitor.track(m.pid)
        one = next(m for m in obs.members.values() if m.depth == 1)
        with pytest.raises(LookupError):
            root.kill(one.pid, start_ticks=one.start_ticks + 1000)  # not that identity
        report = root.kill(one.pid, one.start_ticks, grace_seconds=1)
        assert isinstance(report, proctree_exporter.KillReport)
        assert report.complete and [p["outcome"] for p in report.processes] == ["exited"]
        report = root.kill_tree(grace_seconds=1)
        assert report.complete, report.doc()
        pids = {m.pid for m in obs.members.values()}
        assert {p["pid"] for p in report.processes} == pids - {one.pid}
        assert not any(running(m.pid, m.start_ticks) for m in obs.members.values())
        assert running(holder.pid), "the holder is not in the root: untouched"


def test_a_root_over_processes_older_than_the_monitor_is_degraded(janitor: Janitor) -> None:
    old = janitor.spawn("sleep 300 & sleep 300 & wait")
    kids = wait_for(lambda: len(_children(old.pid)) == 2 and _children(old.pid))
    for pid in kids:
        janitor.track(pid)
    with Monitor() as late:
        root = late.attach(pid=old.pid)
        conf = root.confidence
        assert (conf.level, conf.inferred) == ("degraded", {"snapshot": 2})
        assert "start-up snapshot" in conf.reason
        forked = janitor.spawn("sleep 300")
        later = late.attach(pid=forked.pid)
        assert later.confidence.level == "exact"


def _children(pid: int) -> list[int]:
    out = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    if int(f.read().rsplit(")", 1)[1].split()[1]) == pid:
                        out.append(int(entry))
            except OSError:
                continue
    return out
