"""Property-based fuzzing of everything that reads untrusted bytes.

Netlink datagrams go through :meth:`Collector.ingest`, the same path the
collector thread uses: nothing raises, every bad datagram is counted by
reason, and a forged one changes nothing. Random event sequences keep the
tree's invariants. Odd /proc files are counted by the snapshot walk.
"""

from __future__ import annotations

import struct
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from proctree_exporter import netlink as nl
from proctree_exporter import procfs
from proctree_exporter.collector import Collector, CollectorSettings
from proctree_exporter.tree import PidTree

WHATS = [int(w) for w in nl.What if w != nl.What.NONZERO_EXIT]


def fresh() -> tuple[PidTree, Collector]:
    # /proc reads fail on purpose: only the bytes decide what happens
    tree = PidTree(reader=procfs.ProcFS("/nonexistent"), max_nodes=1000)
    return tree, Collector(tree, CollectorSettings(source="procfs"))


def check_tree(tree: PidTree) -> None:
    with tree.lock:
        for node in tree.nodes():
            if not node.reaped:
                assert tree.get(node.pid) is node
            list(tree.ancestors(node))  # terminates, even on a corrupt lineage
        tree.housekeeping()
    assert tree.live_count + tree.tombstone_count == len(tree)


@settings(max_examples=1500, deadline=None)
@given(st.binary(max_size=200), st.integers(0, 2**32 - 1))
def test_forged_datagrams_change_nothing_and_are_counted(data: bytes, sender: int) -> None:
    tree, collector = fresh()
    sender = sender or 1  # anything but the kernel
    with tree.lock:
        assert collector.ingest(data, len(data), sender) == 0
    assert collector.stats.parse_errors == {"spoofed": 1}
    assert len(tree) == 0


def kernel_message() -> st.SearchStrategy[bytes]:
    body = st.binary(min_size=0, max_size=40)
    return st.builds(lambda what, b, seq, cpu: nl.build_event(what, b, seq=seq, cpu=cpu),
                     st.sampled_from([*WHATS, 0x1234, 0x8]), body,
                     st.integers(0, 2**32 - 1), st.integers(0, 3))


@settings(max_examples=1500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.one_of(kernel_message(), st.binary(max_size=120)), max_size=20),
       st.lists(st.integers(-60, 60), max_size=20))
def test_kernel_sender_datagrams_never_raise_and_every_one_is_accounted(
        datagrams: list[bytes], cuts: list[int]) -> None:
    tree, collector = fresh()
    applied = 0
    for i, data in enumerate(datagrams):
        cut = cuts[i] if i < len(cuts) else 0
        # negative: truncated by the sender; positive: recv says more than fits (oversized)
        buf = data[:len(data) + cut] if cut < 0 else data
        nbytes = len(buf) + max(cut, 0)
        errors_before = sum(collector.stats.parse_errors.values())
        with tree.lock:
            n = collector.ingest(buf, nbytes, 0)
        counted = sum(collector.stats.parse_errors.values()) - errors_before
        # every datagram is either applied (one event or more) or counted once, never lost
        assert (n >= 1 and counted == 0) or (n == 0 and counted == 1), (buf, nbytes, n, counted)
        applied += n
    assert sum(collector.stats.events.values()) == applied
    assert set(collector.stats.parse_errors) <= {"truncated", "oversized", "bad_type",
                                                 "wrong_family", "bad_length", "unknown_event"}
    check_tree(tree)


PIDS = st.integers(1, 40)


def event_for(kind: str, pid: int, other: int, tick: int) -> nl.Event:
    ts = tick * 10_000_000
    if kind == "fork":
        return nl.ForkEvent(0, 0, ts, other, other, pid, pid)
    if kind == "thread":
        return nl.ForkEvent(0, 0, ts, other, other, pid + 100, pid)
    if kind == "exec":
        return nl.ExecEvent(0, 0, ts, pid, pid)
    if kind == "exit":
        return nl.ExitEvent(0, 0, ts, pid, pid, other << 8, 17, other, other)
    if kind == "thread_exit":
        return nl.ExitEvent(0, 0, ts, pid + 100, pid, 0, 0, 0, 0)
    if kind == "comm":
        return nl.CommEvent(0, 0, ts, pid, pid, "x" * (other % 16))
    return nl.UidEvent(0, 0, ts, pid, pid, other, other)


@settings(max_examples=800, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(["fork", "thread", "exec", "exit", "thread_exit",
                                           "comm", "uid"]), PIDS, PIDS, st.integers(0, 50)),
                max_size=120))
def test_any_event_sequence_keeps_the_tree_consistent(steps: list) -> None:  # type: ignore[type-arg]
    tree, _ = fresh()
    with tree.lock:
        for kind, pid, other, tick in steps:
            tree.apply(event_for(kind, pid, other, tick))
    check_tree(tree)
    with tree.lock:
        for node in tree.nodes():
            assert node.threads >= 0 or node.exited


STAT_LINE = st.one_of(
    st.text(max_size=120),
    st.builds(lambda pid, comm, rest: f"{pid} ({comm}) {rest}", st.integers(-5, 99999),
              st.text(max_size=20), st.text(max_size=80)),
)


@settings(max_examples=150, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(st.lists(st.tuples(STAT_LINE, st.text(max_size=200)), min_size=1, max_size=8))
def test_odd_proc_files_are_counted_not_raised(tmp_path_factory, files) -> None:  # type: ignore[no-untyped-def]
    root = Path(tmp_path_factory.mktemp("proc"))
    good = 0
    for i, (stat, status) in enumerate(files):
        d = root / str(100 + i)
        d.mkdir()
        (d / "stat").write_text(stat)
        (d / "status").write_text(status)
        (d / "cmdline").write_bytes(stat.encode()[:50].replace(b" ", b"\0"))
        try:
            procfs.parse_stat(stat)
            good += 1
        except ValueError:
            pass
    stats = procfs.SnapshotStats()
    infos = procfs.snapshot(proc=str(root), stats=stats)
    assert len(infos) == good
    # an empty stat reads as a process that went away; anything else odd is malformed
    assert stats.malformed + stats.vanished == len(files) - good
    tree = PidTree(reader=procfs.ProcFS(str(root)))
    with tree.lock:
        tree.reconcile(infos)
    check_tree(tree)


def test_a_real_fork_message_is_applied_once() -> None:
    tree, collector = fresh()
    msg = nl.build_event(nl.What.FORK, struct.pack("=IIII", 1, 1, 7, 7), cpu=1, seq=5)
    with tree.lock:
        assert collector.ingest(msg, len(msg), 0) == 1
    assert collector.stats.events["fork"] == 1 and tree.get(7) is not None
