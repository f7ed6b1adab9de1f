"""kill -9 the daemon during a workload, start it again: the tree is rebuilt from /proc,
and what a restart cannot know (lineage lost to reparenting) is marked, not guessed."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from proctree_exporter import procfs

from .conftest import PYTHON, Janitor, read_lines, wait_for
from .daemon_helpers import start_daemon, value
from .test_daemon_kernel import SCENE, TOKEN

pytestmark = pytest.mark.kernel

CONFIG = f"""
roots:
  - name: job
    select: cmdline
    match: "{TOKEN}"
    zombie_grace_seconds: 0.2
  - name: host
    select: pid
    match: 1
    max_members: 100000
    zombie_grace_seconds: 0.2
"""

WORKLOAD = """
import os, time
end = time.time() + 4
while time.time() < end:
    pid = os.fork()
    if pid == 0:
        time.sleep(0.001); os._exit(0)
    os.waitpid(pid, 0)
"""


def host_processes() -> int:
    """Processes under PID 1's lineage right now: all but kthreadd and kernel threads."""
    n = 0
    for info in procfs.snapshot(details=False):
        if info.stat.pid != 2 and info.stat.ppid != 2:
            n += 1
    return n


def test_restart_rebuilds_the_tree_and_marks_lost_lineage(janitor: Janitor,
                                                          tmp_path: Path) -> None:
    first = start_daemon(janitor, tmp_path, CONFIG)
    holder = janitor.spawn([PYTHON, "-c", SCENE], stdin=subprocess.PIPE)
    assert holder.stdin is not None
    holder.stdin.write("go\n")
    holder.stdin.flush()
    *orphans, zombie = (int(x) for x in read_lines(holder, 1, timeout=30)[0].split())
    for o in orphans:
        janitor.track(o)
    wait_for(lambda: value(first.metrics(), "proctree_root_processes", root="job",
                           **{"class": "orphaned"}) == 3)
    # the first daemon knew the orphans' lineage; now it dies mid-workload
    load = janitor.spawn([PYTHON, "-c", WORKLOAD])
    wait_for(lambda: value(first.metrics(), "proctree_processes_forked_total") > 300)
    first.proc.kill()
    first.proc.wait(timeout=5)
    second = start_daemon(janitor, tmp_path, CONFIG)
    load.wait(timeout=30)

    job = second.json("/api/v1/roots/job")
    assert [i["pid"] for i in job["instances"]] == [holder.pid]
    # the wrapper exited before this start: the orphans are not claimed for the job
    assert not {m["pid"] for m in job["members"]} & set(orphans)
    host = {m["pid"]: m for m in second.json("/api/v1/roots/host")["members"]}
    for o in orphans:
        assert host[o]["lineage_known"] is False and host[o]["lineage_ppid"] == host[o]["ppid"]
    # the holder's parent (this test) is alive and older: its lineage is certain
    assert host[holder.pid]["lineage_known"] is True
    assert host[holder.pid]["lineage_ppid"] == os.getpid()
    m = second.metrics()
    assert value(m, "proctree_lineage_unknown_processes") >= 3
    # the zombie survived the restart and is still seen as one, under its real parent
    assert host[zombie]["class"] in ("zombie", "exited") and host[zombie]["ppid"] == holder.pid

    # and the rebuilt tree covers every process on the host, exactly
    def counts_match() -> bool:
        mm = second.metrics()
        total = sum(value(mm, "proctree_root_processes", root="host", **{"class": c}) or 0
                    for c in ("healthy", "orphaned", "zombie"))
        return total == host_processes()

    wait_for(counts_match, timeout=10)
