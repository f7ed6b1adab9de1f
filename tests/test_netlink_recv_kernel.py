"""Receiving on the real kernel: many datagrams per system call (recvmmsg) and
one at a time (the fallback where libc has no recvmmsg) give the same thing."""

from __future__ import annotations

import contextlib
import socket
import struct
import time
from collections.abc import Iterator

import pytest

from proctree_exporter import netlink as nl
from proctree_exporter.collector import Collector, CollectorSettings
from proctree_exporter.tree import PidTree

from .conftest import Janitor, find_node, wait_for

pytestmark = pytest.mark.kernel


@contextlib.contextmanager
def connector(batch: bool) -> Iterator[nl.ConnectorSocket]:
    sock = nl.ConnectorSocket(batch=batch)
    try:
        # recvmmsg is in every glibc and musl this runs on: a missing one is a failure
        assert sock.batched is batch
        yield sock
    finally:
        sock.close()


def drain(sock: nl.ConnectorSocket, settle_s: float = 0.2) -> list[tuple[bytes, int, int]]:
    """Everything queued until the socket stays empty for ``settle_s``, copied out
    (the buffers are reused), as (bytes received, length reported, sender port)."""
    out: list[tuple[bytes, int, int]] = []
    quiet_since = time.monotonic()
    while time.monotonic() - quiet_since < settle_s:
        grams = sock.recv_batch()
        if not grams:
            time.sleep(0.01)
            continue
        assert len(grams) <= nl.RECV_BATCH
        out.extend((bytes(buf[:min(n, len(buf))]), n, sender) for buf, n, sender in grams)
        quiet_since = time.monotonic()
    return out


@pytest.mark.parametrize("batch", [True, False], ids=["recvmmsg", "recvfrom"])
def test_datagrams_arrive_whole_in_order_with_length_and_sender(batch: bool) -> None:
    payloads = [struct.pack("=I", i) * (1 + i % 7) for i in range(2 * nl.RECV_BATCH + 10)]
    too_long = b"\xab" * (nl.RECV_SLOT + 500)  # longer than a recvmmsg slot
    with connector(batch) as sock, \
            socket.socket(socket.AF_NETLINK, socket.SOCK_DGRAM, nl.NETLINK_CONNECTOR) as s:
        s.bind((0, 0))
        me = s.getsockname()[0]
        for p in [*payloads, too_long]:
            s.sendto(p, (sock.port_id, 0))
        got = [g for g in drain(sock) if g[2] == me]  # the host's own events arrive too
    assert [g[0] for g in got[:-1]] == payloads
    assert [g[1] for g in got] == [len(p) for p in payloads] + [len(too_long)]
    data, nbytes, sender = got[-1]
    assert nbytes == len(too_long)
    if batch:
        # cut to the slot, its full length reported: the parser calls it oversized
        assert data == too_long[:nl.RECV_SLOT]
        with pytest.raises(nl.ParseError) as exc:
            nl.parse_records(data, nbytes, 0)
        assert exc.value.reason == "oversized"
    else:
        assert data == too_long
    with pytest.raises(nl.ParseError) as exc:
        nl.parse_records(data, min(nbytes, len(data)), sender)
    assert exc.value.reason == "spoofed"


def test_both_ways_receive_the_same_kernel_events(janitor: Janitor) -> None:
    with connector(True) as many, connector(False) as one:
        pids = set()
        for _ in range(40):
            p = janitor.spawn(["/bin/true"])
            p.wait()
            pids.add(p.pid)

        def ours(sock: nl.ConnectorSocket) -> list[tuple[int, int]]:
            out = []
            for data, n, sender in drain(sock):
                for rec in nl.parse_records(data, n, sender):
                    pid = rec[7] if rec[0] == nl.What.FORK else rec[5]  # child / process
                    if rec[0] in (nl.What.FORK, nl.What.EXEC, nl.What.EXIT) and pid in pids:
                        out.append((rec[0], pid))
            return out

        seen = ours(many)
        assert seen == ours(one)
    assert {what for what, _ in seen} == {nl.What.FORK, nl.What.EXEC, nl.What.EXIT}
    assert {pid for _, pid in seen} == pids


@pytest.mark.parametrize("batch", [True, False], ids=["recvmmsg", "recvfrom"])
def test_collector_overrun_and_recovery_either_way(
        batch: bool, janitor: Janitor, monkeypatch: pytest.MonkeyPatch) -> None:
    if not batch:
        monkeypatch.setattr(nl, "_RECVMMSG", None)  # as on a libc without recvmmsg
    tree = PidTree(max_nodes=100_000)
    collector = Collector(tree, CollectorSettings(source="netlink", receive_buffer_bytes=4096,
                                                  resync_min_interval_s=0))
    collector.start()
    try:
        assert collector.ready.wait(30) and collector.failed is None
        assert collector._sock is not None and collector._sock.batched is batch
        with tree.lock:  # a stalled consumer: the tiny buffer overflows
            kids = [janitor.spawn(["/bin/true"]) for _ in range(200)]
            for k in kids:
                k.wait()
            keep = janitor.spawn(["/bin/sleep", "60"])
        wait_for(lambda: collector.stats.resyncs >= 1, timeout=10)
        assert collector.stats.overruns >= 1
        node = find_node(tree, keep.pid)
        assert node is not None and not node.exited
        later = janitor.spawn(["/bin/sleep", "60"])  # events flow again after the loss
        wait_for(lambda: find_node(tree, later.pid) is not None, timeout=5)
    finally:
        collector.stop()
