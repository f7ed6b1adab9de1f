"""The collector on the real kernel: loss detection, resync, spoofing, fallback."""

from __future__ import annotations

import json
import os
import socket
import struct
import subprocess
import time

import pytest

from proctree_exporter import netlink as nl
from proctree_exporter.collector import SOURCE_PROCFS, Collector, CollectorSettings
from proctree_exporter.tree import LINEAGE_POLL, PidTree

from .conftest import PYTHON, REPO, Janitor, assert_matches_proc, find_node, read_lines, wait_for

pytestmark = pytest.mark.kernel

BURST = (
    "import os, subprocess, sys\n"
    "keep = [subprocess.Popen(['/bin/sleep', '60']) for _ in range(5)]\n"
    "for _ in range(int(sys.argv[1])):\n"
    "    pid = os.fork()\n"
    "    if pid == 0:\n        os._exit(0)\n"
    "    os.waitpid(pid, 0)\n"
    "print(' '.join(str(k.pid) for k in keep), flush=True)\n"
    "import time; time.sleep(60)\n"
)


@pytest.fixture
def tiny_buffer_collector() -> tuple[PidTree, Collector]:
    tree = PidTree(max_nodes=100_000)
    collector = Collector(tree, CollectorSettings(source="netlink", receive_buffer_bytes=4096,
                                                  resync_min_interval_s=0))
    collector.start()
    assert collector.ready.wait(30) and collector.failed is None
    yield tree, collector
    collector.stop()


def test_forced_overrun_is_detected_resynced_and_matches_proc(
        tiny_buffer_collector: tuple[PidTree, Collector], janitor: Janitor) -> None:
    tree, collector = tiny_buffer_collector
    assert collector.stats.rcvbuf_bytes < 20_000
    # a stalled consumer (we hold the tree lock) and a burst overflow the tiny buffer
    with tree.lock:
        burst = janitor.spawn([PYTHON, "-c", BURST, "2000"])
        kept = [int(x) for x in read_lines(burst, 1)[0].split()]
    for k in kept:
        janitor.track(k)
    wait_for(lambda: collector.stats.resyncs >= 1, timeout=10)
    st = collector.stats
    assert st.overruns >= 1
    assert st.events_lost >= 1
    assert st.kernel_drops > 100, "the kernel's own drop count shows the real size of the loss"
    # processes born and dead during the loss are known now, with the right parents
    for k in kept:
        node = find_node(tree, k)
        assert node is not None and not node.exited and node.ppid == burst.pid
    assert_matches_proc(tree)


def test_forged_messages_from_a_local_process_change_nothing(
        live: tuple[PidTree, Collector]) -> None:
    tree, collector = live
    port = collector.netlink_port
    assert port is not None
    before = dict(collector.stats.parse_errors)
    fake_pid = 4_000_000  # above any pid_max: no real process can have it
    forged = nl.build_event(nl.What.FORK, struct.pack("=IIII", 1, 1, fake_pid, fake_pid),
                            ts_ns=time.monotonic_ns())
    with socket.socket(socket.AF_NETLINK, socket.SOCK_DGRAM, nl.NETLINK_CONNECTOR) as s:
        s.bind((0, 0))
        for _ in range(10):
            s.sendto(forged, (port, 0))
        s.sendto(b"\xff" * 40, (port, 0))
    wait_for(lambda: collector.stats.parse_errors.get("spoofed", 0)
             >= before.get("spoofed", 0) + 11)
    assert find_node(tree, fake_pid) is None


def test_unavailable_connector_falls_back_to_polling_and_says_why(janitor: Janitor) -> None:
    # a new network namespace: the proc connector only talks to the initial one
    p = janitor.spawn(["unshare", "-n", str(REPO / ".venv/bin/proctree-exporter"), "tree",
                       "--json", "--for", "1.5"], stderr=subprocess.PIPE)
    out, err = p.communicate(timeout=30)
    assert p.returncode == 0, err
    doc = json.loads(out)
    assert doc["source"] == SOURCE_PROCFS
    assert "proc connector unavailable" in err and "polling /proc" in err
    assert err.count("source=procfs") == 1, "one clear line, not one per poll"
    pids = set()
    stack = list(doc["nodes"])
    while stack:
        d = stack.pop()
        pids.add(d["pid"])
        stack.extend(d["children"])
    assert 1 in pids and p.pid in pids


def test_polling_source_sees_new_and_gone_processes(janitor: Janitor) -> None:
    tree = PidTree()
    collector = Collector(tree, CollectorSettings(source="procfs", poll_interval_s=0.1))
    collector.start()
    try:
        assert collector.ready.wait(10) and collector.stats.source == SOURCE_PROCFS
        p = janitor.spawn(["/bin/sleep", "60"])
        node = wait_for(lambda: find_node(tree, p.pid))
        assert node.comm == "sleep" and node.ppid == os.getpid()
        assert node.lineage_source == LINEAGE_POLL
        p.kill()
        p.wait()
        wait_for(lambda: node.reaped)
        assert collector.stats.polls >= 1
    finally:
        collector.stop()
