"""What a tree costs, on the real kernel: a root's CPU counter against the ground truth of
getrusage(RUSAGE_CHILDREN) in a subreaper that reaps the whole tree, short-lived and
orphaned processes included, within 1% or 20 ms; a long-lived member's likewise; bytes
written by short-lived members; gauges, and the JSON API's figures, of a live one."""

from __future__ import annotations

import json
import resource
import subprocess
import time
from pathlib import Path

import pytest

from .conftest import PYTHON, Janitor, read_lines, wait_for
from .daemon_helpers import Running, start_daemon, value

pytestmark = pytest.mark.kernel

TOKEN = "ptx-resources-job"

# The harness: a child subreaper (so every orphan of the tree comes back to it to be
# reaped), which runs the job (the root's instance) and waits for the whole tree; then
# its RUSAGE_CHILDREN is exactly what the job's processes used, every one of them.
HARNESS = r"""
import ctypes, json, os, resource, subprocess, sys, time
libc = ctypes.CDLL(None, use_errno=True)
assert libc.prctl(36, 1, 0, 0, 0) == 0  # PR_SET_CHILD_SUBREAPER
# the job's command line names the root (ours does not: we are not its instance)
job = subprocess.Popen([sys.executable, "-c", sys.argv[1], os.environ["PTX_TOKEN"]])
while True:  # reap the job and every orphan handed to us
    try:
        os.wait()
    except ChildProcessError:
        break
ru = resource.getrusage(resource.RUSAGE_CHILDREN)
print(json.dumps({"user": ru.ru_utime, "system": ru.ru_stime}), flush=True)
sys.stdin.readline()  # stay until the test is done: it ends us
"""

# The job: 1,000 short-lived children burning a little CPU each, a wrapper whose three
# children burn CPU after it has exited (orphans), and some CPU of its own.
JOB = r"""
import os, sys, time
def burn(seconds):
    end = time.thread_time() + seconds
    while time.thread_time() < end:
        pass
for _ in range(1000):
    pid = os.fork()
    if pid == 0:
        burn(0.002)
        os._exit(0)
    os.waitpid(pid, 0)
wrapper = os.fork()
if wrapper == 0:
    for _ in range(3):
        if os.fork() == 0:
            time.sleep(0.3)  # until the wrapper is gone
            burn(0.4)
            os._exit(0)
    os._exit(0)
os.waitpid(wrapper, 0)
burn(0.3)
"""


def config(extra: str = "") -> str:
    return f"""
resources:
  sample_interval_seconds: 1
roots:
  - name: job
    select: cmdline
    match: "{TOKEN}"
{extra}"""


def cpu(d: Running, root: str) -> float:
    m = d.metrics()
    return sum(value(m, "proctree_root_cpu_seconds_total", root=root, mode=mode) or 0.0
               for mode in ("user", "system"))


def test_a_trees_cpu_matches_what_its_subreaper_reaped(janitor: Janitor,
                                                       tmp_path: Path) -> None:
    d = start_daemon(janitor, tmp_path, config())
    harness = janitor.spawn([PYTHON, "-c", HARNESS, JOB], stdin=subprocess.PIPE,
                            env={"PTX_TOKEN": TOKEN, "PATH": "/usr/bin:/bin"})
    truth = json.loads(read_lines(harness, 1, timeout=120)[0])
    expected = truth["user"] + truth["system"]
    assert expected > 2.5  # the tree did burn what it was told to

    def settled() -> bool:
        m = d.metrics()
        spawned = value(m, "proctree_root_spawned_total", root="job")
        return spawned is not None and spawned >= 1005 \
            and value(m, "proctree_root_exited_total", root="job") == spawned
    wait_for(settled, timeout=30)
    # every process's CPU is in, exit paths included (the children the job reaped through
    # its children's CPU, the rest from their exit records), nothing twice
    deadline = time.monotonic() + 10
    while abs((got := cpu(d, "job")) - expected) > max(0.01 * expected, 0.02) \
            and time.monotonic() < deadline:
        time.sleep(0.2)
    assert abs(got - expected) <= max(0.01 * expected, 0.02), (got, truth)
    wait_for(lambda: value(d.metrics(), "proctree_resources_exits_accounted_total") >= 1005,
             timeout=10)
    assert value(d.metrics(), "proctree_resources_exits_unaccounted_total",
                 reason="no_record") == 0


def test_a_long_lived_members_cpu_is_exact(janitor: Janitor, tmp_path: Path) -> None:
    d = start_daemon(janitor, tmp_path, config())
    code = f"""# {TOKEN}
import sys, time
end = time.thread_time() + 1.5
while time.thread_time() < end:
    pass
sys.stdin.readline()
"""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    p = janitor.spawn([PYTHON, "-c", code], stdin=subprocess.PIPE)
    time.sleep(2.5)  # sampled while it burns, then it exits and this test reaps it
    assert p.stdin is not None
    p.stdin.close()
    p.wait(timeout=30)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    truth = (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime)
    assert truth >= 1.5
    wait_for(lambda: value(d.metrics(), "proctree_root_exited_total", root="job") == 1,
             timeout=10)
    deadline = time.monotonic() + 5
    while abs((got := cpu(d, "job")) - truth) > max(0.01 * truth, 0.02) \
            and time.monotonic() < deadline:
        time.sleep(0.1)
    assert abs(got - truth) <= max(0.01 * truth, 0.02), (got, truth)


def test_bytes_written_by_short_lived_members_are_counted(janitor: Janitor,
                                                          tmp_path: Path) -> None:
    d = start_daemon(janitor, tmp_path, config())
    out = tmp_path / "data"  # ext4 under /tmp here: write_bytes counts what reaches storage
    n, size = 20, 256 * 1024
    writer = (f": {TOKEN}; for i in $(seq {n}); do "
              f"head -c {size} /dev/zero > {out}.$i && sync {out}.$i; done")
    janitor.spawn(writer).wait(timeout=60)
    written = n * size
    wait_for(lambda: (value(d.metrics(), "proctree_root_io_bytes_total", root="job",
                            direction="write") or 0) >= written, timeout=10, interval=0.2)
    assert value(d.metrics(), "proctree_root_io_bytes_total", root="job",
                 direction="write") < written + 4 * 1024 * 1024


def test_a_live_members_files_threads_and_memory_show_in_the_gauges(janitor: Janitor,
                                                                    tmp_path: Path) -> None:
    d = start_daemon(janitor, tmp_path, config())
    code = f"""# {TOKEN}
import threading, sys, time, os
files = [open(os.devnull) for _ in range(7)]
block = bytearray(64 * 1024 * 1024)
for i in range(0, len(block), 4096):
    block[i] = 1
stop = threading.Event()
threads = [threading.Thread(target=stop.wait) for _ in range(5)]
for t in threads:
    t.start()
print("ready", flush=True)
sys.stdin.readline()
"""
    p = janitor.spawn([PYTHON, "-c", code], stdin=subprocess.PIPE)
    read_lines(p, 1)

    def gauges() -> tuple[float | None, ...]:
        m = d.metrics()
        return tuple(value(m, name, root="job") for name in (
            "proctree_root_threads", "proctree_root_open_fds", "proctree_root_memory_rss_bytes",
            "proctree_root_sampled_processes"))
    wait_for(lambda: gauges()[0] == 6, timeout=10, interval=0.2)
    threads, fds, rss, sampled = gauges()
    assert threads == 6
    assert sampled == 1
    assert 10 <= fds <= 14, fds  # stdin, stdout, stderr, the 7 files, and Python's own
    assert rss >= 64 * 1024 * 1024
    # the same process in the JSON API (and the tree page's details)
    member = next(x for x in d.json("/api/v1/roots/job")["members"] if x["pid"] == p.pid)
    assert member["rss_bytes"] >= 64 * 1024 * 1024
    assert 0 < member["cpu_seconds"] < 60
    node = d.json("/api/v1/tree?root=job")["nodes"][0]
    assert node["pid"] == p.pid and node["rss_bytes"] == member["rss_bytes"]
