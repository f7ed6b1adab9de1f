"""The state file on the real kernel: a wrapper's orphans survive `kill -9` of the
exporter, a pid reused while it was down is not mistaken for its old holder, SIGTERM
writes a final state the counters continue from, and a damaged file is ignored."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from proctree_exporter import procfs
from proctree_exporter.state import boot_id, decode

from .conftest import Janitor, read_lines, spawn_at_pid, start_ticks, wait_for
from .daemon_helpers import Running, start_daemon, value

pytestmark = pytest.mark.kernel

TOKEN = "ptx-state-wrapper"


def config(tmp_path: Path, interval: float = 1.0) -> str:
    return f"""
state:
  path: {tmp_path / "state" / "proctree.state"}
  interval_seconds: {interval}
roots:
  - name: job
    select: cmdline
    match: "{TOKEN}"
  - name: host
    select: pid
    match: 1
    max_members: 100000
"""


def wrapper(janitor: Janitor, n: int, d: Running, tag: str = "") -> tuple[int, list[int]]:
    """A shell (the job's instance) that starts ``n`` sleepers and exits: n orphans.

    It exits only once ``d`` counts the sleepers as the job's: a shell gone before the
    exporter read its command line would not be the job's instance at all."""
    w = janitor.spawn(f": {TOKEN} {tag}; for i in $(seq {n}); do sleep 120 & echo $!; done; "
                      "read x", stdin=subprocess.PIPE)
    kids = [int(x) for x in read_lines(w, n)]
    for k in kids:
        janitor.track(k)
    wait_for(lambda: set(kids) <= set(job_members(d)), timeout=10)
    assert w.stdin is not None
    w.stdin.close()
    w.wait(timeout=10)
    return w.pid, kids


def job_members(d: Running) -> dict[int, dict]:
    return {m["pid"]: m for m in d.json("/api/v1/roots/job")["members"]}


def writes(d: Running) -> float:
    return value(d.metrics(), "proctree_state_writes_total") or 0


def saved_pids(tmp_path: Path) -> set[int]:
    doc = decode((tmp_path / "state" / "proctree.state").read_bytes(), boot=boot_id())
    return {p.pid for p in doc.processes if p.alive}


def test_orphans_survive_kill_9_and_later_ones_are_not_guessed(janitor: Janitor,
                                                               tmp_path: Path) -> None:
    first = start_daemon(janitor, tmp_path, config(tmp_path, interval=2.0))
    wrapper_pid, orphans = wrapper(janitor, 20, first)
    wait_for(lambda: value(first.metrics(), "proctree_root_processes", root="job",
                           **{"class": "orphaned"}) == 20)
    # a write after the orphans were classed, then more orphans right after a write
    # (the next one is 2 s away), then kill -9
    w0 = writes(first)
    wait_for(lambda: writes(first) >= w0 + 2, timeout=10)
    assert set(orphans) <= saved_pids(tmp_path)
    w1 = writes(first)
    wait_for(lambda: writes(first) > w1, timeout=10, interval=0.005)
    late_wrapper, late = wrapper(janitor, 3, first, "late")
    first.proc.kill()
    first.proc.wait(timeout=5)
    assert not set(late) & saved_pids(tmp_path), "a write came between: the scene is void"

    second = start_daemon(janitor, tmp_path, config(tmp_path, interval=2.0))
    job = job_members(second)
    assert set(orphans) <= set(job), "every orphan saved is the root's again"
    for o in orphans:
        m = job[o]
        assert m["class"] == "orphaned", m
        assert (m["lineage_ppid"], m["lineage_known"], m["lineage_source"]) == (
            wrapper_pid, True, "restored")
        assert m["ppid"] == procfs.read_stat(o).ppid != wrapper_pid
        assert f"parent PID {wrapper_pid} (sh)" in m["reason"], m["reason"]
    # born after the last write: their fork parent is not known, and not guessed
    host = {m["pid"]: m for m in second.json("/api/v1/roots/host")["members"]}
    for o in late:
        assert o not in job
        assert host[o]["lineage_known"] is False and host[o]["lineage_source"] == "snapshot"
        assert host[o]["lineage_ppid"] != late_wrapper
    m = second.metrics()
    assert value(m, "proctree_root_processes", root="job", **{"class": "orphaned"}) == 20
    assert value(m, "proctree_state_restored_processes") >= 20
    assert value(m, "proctree_state_counters_continued") == 0  # a crash: from zero
    assert value(m, "proctree_state_ignored_total", reason="corrupt") == 0


def test_a_pid_reused_while_down_is_not_restored_onto_the_stranger(janitor: Janitor,
                                                                   tmp_path: Path) -> None:
    first = start_daemon(janitor, tmp_path, config(tmp_path))
    _, (victim, keeper) = wrapper(janitor, 2, first)
    w0 = writes(first)
    wait_for(lambda: writes(first) > w0 + 1, timeout=10)
    assert {victim, keeper} <= saved_pids(tmp_path)
    first.proc.kill()
    first.proc.wait(timeout=5)
    old_start = start_ticks(victim)
    os.kill(victim, signal.SIGKILL)  # an orphan under PID 1 now: init reaps it
    wait_for(lambda: start_ticks(victim) is None, timeout=10)
    stranger = spawn_at_pid(janitor, victim)
    assert start_ticks(victim) != old_start

    second = start_daemon(janitor, tmp_path, config(tmp_path))
    job = job_members(second)
    assert keeper in job and job[keeper]["lineage_source"] == "restored"
    assert victim not in job, "the stranger holding the old pid is not the job's"
    host = {m["pid"]: m for m in second.json("/api/v1/roots/host")["members"]}
    assert host[stranger.pid]["start_ticks"] == start_ticks(stranger.pid)
    assert host[stranger.pid]["lineage_source"] != "restored"
    assert host[stranger.pid]["lineage_ppid"] == os.getpid()
    m = second.metrics()
    assert value(m, "proctree_state_dropped_processes", reason="pid_reused") == 1


def test_sigterm_writes_a_final_state_and_the_counters_continue(janitor: Janitor,
                                                                tmp_path: Path) -> None:
    first = start_daemon(janitor, tmp_path, config(tmp_path, interval=3600))
    _, orphans = wrapper(janitor, 3, first)
    wait_for(lambda: value(first.metrics(), "proctree_root_processes", root="job",
                           **{"class": "orphaned"}) == 3)
    for _ in range(5):  # short-lived members: counted, gone before the final write
        p = janitor.spawn(f": {TOKEN}; sleep 0.05")
        p.wait(timeout=5)
    wait_for(lambda: value(first.metrics(), "proctree_root_exited_total", root="job") >= 6)
    before = first.metrics()
    status, _, err = first.stop()
    assert status == 0, err
    doc = decode((tmp_path / "state" / "proctree.state").read_bytes(), boot=boot_id())
    assert doc.clean, "the shutdown write is the clean one"

    second = start_daemon(janitor, tmp_path, config(tmp_path, interval=3600))
    after = second.metrics()
    assert value(after, "proctree_state_counters_continued") == 1
    for name in ("proctree_root_spawned_total", "proctree_root_exited_total"):
        # never backwards across the restart, and nothing invented: the same figures
        assert value(after, name, root="job") == value(before, name, root="job"), name
    assert value(after, "proctree_root_class_changes_total", root="job",
                 **{"class": "orphaned"}) == value(before, "proctree_root_class_changes_total",
                                                   root="job", **{"class": "orphaned"})
    assert set(orphans) <= set(job_members(second))
    # the first write of a run marks the file used: a crash now would not continue
    # counters from it a second time
    doc = decode((tmp_path / "state" / "proctree.state").read_bytes(), boot=boot_id())
    assert not doc.clean


@pytest.mark.parametrize("damage", ["truncated", "corrupt", "version", "unreadable"])
def test_a_damaged_state_file_is_ignored_with_a_log_line_and_a_metric(
        janitor: Janitor, tmp_path: Path, damage: str) -> None:
    first = start_daemon(janitor, tmp_path, config(tmp_path))
    wrapper(janitor, 2, first)
    time.sleep(1.5)
    first.proc.kill()
    first.proc.wait(timeout=5)
    path = tmp_path / "state" / "proctree.state"
    data = path.read_bytes()
    if damage == "truncated":
        path.write_bytes(data[: len(data) // 2])
    elif damage == "corrupt":
        path.write_bytes(data[:-10] + bytes(b ^ 0x20 for b in data[-10:]))
    elif damage == "version":
        path.write_bytes(data.replace(b"state 1 ", b"state 9 ", 1))
    else:
        path.unlink()
        path.mkdir()  # reading a directory fails: unreadable

    second = start_daemon(janitor, tmp_path, config(tmp_path))
    m = second.metrics()
    assert value(m, "proctree_state_ignored_total", reason=damage) == 1
    assert value(m, "proctree_state_restored_processes") == 0
    assert job_members(second) == {}
    status, _, err = second.stop()
    assert status == 0, err
    lines = [ln for ln in err.splitlines() if "state file ignored" in ln]
    assert len(lines) == 1 and f"reason={damage}" in lines[0], err
