"""A storm against the running daemon, bounded for the suite (bench/storm.py is the long one).

Fork+exit and thread storms from bench/loadgen.c with a 64 KiB receive
buffer, so that the kernel drops events, and a config reload in the middle:
the daemon keeps serving, every loss is counted and repaired by a resync, and
afterwards its tree equals /proc.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest

from proctree_exporter import procfs

from .conftest import REPO, Janitor, wait_for
from .daemon_helpers import Running, start_daemon, value

pytestmark = pytest.mark.kernel

LOADGEN_SRC = REPO / "bench" / "loadgen.c"
STORM_S = 6
NETLINK_CONNECTOR = 11
KTHREADD = 2
RSS_BOUND_KIB = 512 * 1024  # generous: the daemon needs about 100 MiB after a storm

CONFIG = """\
collector:
  receive_buffer_bytes: 65536
roots:
  - name: host
    select: pid
    match: 1
    max_members: 100000
"""
# the reload adds a root on the storm itself (loadgen's comm)
RELOADED = CONFIG + """\
  - name: storm
    select: comm
    match: loadgen
"""


def build_loadgen(tmp_path: Path) -> Path:
    cc = shutil.which("cc")
    assert cc, "no C compiler: scripts/bootstrap test installs gcc and libc6-dev"
    binary = tmp_path / "loadgen"
    subprocess.run([cc, "-O2", "-Wall", "-pthread", "-o", str(binary), str(LOADGEN_SRC)],
                   check=True)
    return binary


def connector_drops(pid: int) -> int:
    """The kernel's drop counter of the proc connector socket that ``pid`` holds."""
    inodes = set()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(int(target[8:-1]))
    with open("/proc/net/netlink", encoding="ascii") as f:
        header = f.readline().split()
        for line in f:
            row = dict(zip(header, line.split(), strict=False))
            if int(row["Eth"]) == NETLINK_CONNECTOR and int(row["Inode"]) in inodes:
                return int(row["Drops"])
    raise AssertionError(f"pid {pid} holds no proc connector socket")


def proc_walk() -> dict[int, tuple[int, int]]:
    """pid -> (start_ticks, ppid) for every process under PID 1 (not kthreadd's)."""
    out = {}
    for pid in procfs.iter_pids():
        try:
            st = procfs.read_stat(pid)
        except (procfs.ProcReadError, ValueError):
            continue
        if pid != KTHREADD and st.ppid != KTHREADD:
            out[pid] = (st.start_ticks, st.ppid)
    return out


def mismatches(d: Running) -> list[str]:
    """The daemon's host root against /proc, judging only processes that did not change
    between a walk before and a walk after reading the API (the host is never still)."""
    before = proc_walk()
    doc: dict[str, Any] = d.json("/api/v1/roots/host")
    after = proc_walk()
    assert not doc["truncated"]
    listed = {m["pid"]: m for m in doc["members"]}
    problems = []
    for pid, (start, ppid) in before.items():
        if after.get(pid) != (start, ppid):
            continue
        m = listed.get(pid)
        if m is None:
            problems.append(f"missing {pid}")
        elif abs(m["start_ticks"] - start) > 1:  # a FORK's start is derived: +-1 tick
            problems.append(f"wrong identity {pid}: {m['start_ticks']} vs {start}")
        elif m["ppid"] != ppid:
            problems.append(f"wrong parent {pid}: {m['ppid']} vs {ppid}")
    for pid, m in listed.items():
        if not any(abs(m["start_ticks"] - w[pid][0]) <= 1 for w in (before, after) if pid in w):
            problems.append(f"ghost {pid} {m['comm']}")
    return problems


def test_storm_with_small_buffer_loses_resyncs_and_ends_equal_to_proc(
        janitor: Janitor, tmp_path: Path) -> None:
    loadgen = build_loadgen(tmp_path)
    d = start_daemon(janitor, tmp_path, CONFIG, log_file=tmp_path / "daemon.log")
    drops0 = connector_drops(d.proc.pid)
    storms = []
    for mode, workers in (("fork-exit", 2), ("threads", 1)):
        outdir = tmp_path / mode
        outdir.mkdir()
        storms.append(janitor.spawn([str(loadgen), mode, str(workers), str(STORM_S),
                                     str(outdir)]))
    # scrapes all through the storm, and one reload in the middle of it
    statuses = []
    reloaded = False
    start = time.monotonic()
    while any(p.poll() is None for p in storms):
        statuses.append(d.get("/metrics")[0])
        if not reloaded and time.monotonic() - start >= STORM_S / 2:
            d.config.write_text(RELOADED)
            os.kill(d.proc.pid, signal.SIGHUP)
            reloaded = True
        time.sleep(0.5)
    for p in storms:
        out, _ = p.communicate(timeout=30)
        assert p.returncode == 0, out
    assert reloaded and len(statuses) >= 5
    assert set(statuses) == {200}, statuses

    # the kernel dropped events for the small buffer; every one is counted and resynced
    def loss_repaired() -> dict | None:
        m = d.metrics()
        lost = value(m, "proctree_events_lost_total")
        resyncs = sum(value(m, "proctree_resyncs_total", reason=r) or 0
                      for r in ("overrun", "seq_gap", "kernel_drops"))
        drops = connector_drops(d.proc.pid) - drops0
        return m if resyncs > 0 and lost > 0 and lost >= drops else None

    m = wait_for(loss_repaired, timeout=15, interval=0.5)
    assert value(m, "proctree_overruns_total") + value(m, "proctree_events_lost_total") > 0
    assert value(m, "proctree_config_reloads_total", result="success") == 1
    assert value(m, "proctree_config_last_reload_successful") == 1
    roots = {r["name"]: r for r in d.json("/api/v1/roots")["roots"]}
    assert set(roots) == {"host", "storm"}

    # after the storm, the tree is /proc: every live process, its parent, no ghost
    last: list[str] = []

    def equal_to_proc() -> bool:
        last[:] = mismatches(d)
        return not last

    deadline = time.monotonic() + 20
    while not equal_to_proc():
        assert time.monotonic() < deadline, f"tree differs from /proc: {last[:20]}"
        time.sleep(0.3)

    with open(f"/proc/{d.proc.pid}/status", encoding="ascii") as f:
        rss = next(int(line.split()[1]) for line in f if line.startswith("VmRSS:"))
    assert rss < RSS_BOUND_KIB
    assert d.proc.poll() is None
    rc, _, _ = d.stop()
    assert rc == 0, (tmp_path / "daemon.log").read_text()[-2000:]
