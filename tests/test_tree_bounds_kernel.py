"""Memory bounds on the real kernel: tombstone capacity and TTL, lineage kept across eviction."""

from __future__ import annotations

import pytest

from proctree_exporter import procfs
from proctree_exporter.collector import Collector, CollectorSettings
from proctree_exporter.tree import PidTree

from .conftest import PYTHON, Janitor, find_node, read_lines, wait_for

pytestmark = pytest.mark.kernel

CHURN = (
    "import subprocess, sys, time\n"
    "w = subprocess.Popen(['/bin/sh', '-c', 'sleep 60 & echo $!'], stdout=subprocess.PIPE,"
    " text=True)\n"
    "print(w.pid, flush=True); print(w.stdout.readline().strip(), flush=True); w.wait()\n"
    "for _ in range(int(sys.argv[1])):\n"
    "    subprocess.run(['/bin/true'])\n"
    "print('done', flush=True); time.sleep(60)\n"
)


def _collector(tree: PidTree) -> Collector:
    c = Collector(tree, CollectorSettings(source="netlink"))
    c.start()
    assert c.ready.wait(30) and c.failed is None
    return c


def test_tombstones_stay_within_capacity_and_lineage_survives_eviction(janitor: Janitor) -> None:
    room = 40
    tree = PidTree(max_nodes=len(list(procfs.iter_pids())) + room, tombstone_ttl_s=600)
    c = _collector(tree)
    try:
        holder = janitor.spawn([PYTHON, "-c", CHURN, "300"])
        wrapper, kid = (int(x) for x in read_lines(holder, 2))
        janitor.track(kid)
        read_lines(holder, 1, timeout=60)
        wait_for(lambda: tree.stats.evicted >= 250, timeout=10)
        with tree.lock:
            tree.housekeeping()  # the bound holds after every round
            assert tree.tombstone_count <= max(tree.max_nodes - tree.live_count, 0)
            assert not [n for n in tree.find(wrapper) if n.reaped], \
                "the exited wrapper's tombstone was evicted"
        node = find_node(tree, kid)
        assert node is not None and not node.exited
        # the wrapper is gone from memory; its child now hangs under the wrapper's parent
        assert node.parent is not None and node.parent.pid == holder.pid
        assert tree.is_descendant(kid, holder.pid)
    finally:
        c.stop()


def test_tombstones_expire_after_their_ttl(janitor: Janitor) -> None:
    tree = PidTree(tombstone_ttl_s=0.3)
    c = _collector(tree)
    try:
        p = janitor.spawn(["/bin/true"])
        p.wait()
        node = wait_for(lambda: (n := find_node(tree, p.pid)) is not None and n.reaped and n)
        wait_for(lambda: find_node(tree, p.pid) is None, timeout=5)
        assert node.reaped and tree.stats.evicted >= 1
    finally:
        c.stop()


def test_live_processes_are_never_evicted_but_over_capacity_is_counted() -> None:
    tree = PidTree(max_nodes=10)  # far fewer than the host's processes
    c = _collector(tree)
    try:
        wait_for(lambda: tree.stats.over_capacity >= 1, timeout=5)
        with tree.lock:
            live = {n.pid for n in tree.nodes() if not n.reaped}
        on_host = set(procfs.iter_pids())
        assert len(on_host - live) <= 2  # a process or two may start between the reads
        assert tree.tombstone_count == 0
    finally:
        c.stop()
