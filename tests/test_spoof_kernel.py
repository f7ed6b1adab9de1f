"""A local process forging proc connector messages to the daemon's own socket."""

from __future__ import annotations

import os
import socket
import struct
import time
from pathlib import Path

import pytest

from proctree_exporter import netlink as nl

from .conftest import Janitor, wait_for
from .daemon_helpers import start_daemon, value

pytestmark = pytest.mark.kernel


def connector_port(pid: int) -> int:
    """The netlink port id of ``pid``'s proc connector socket, found through /proc."""
    inodes = set()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
        except FileNotFoundError:  # closed since the listing (an HTTP connection, a file)
            continue
        if target.startswith("socket:["):
            inodes.add(int(target[8:-1]))
    with open("/proc/net/netlink") as f:
        header = f.readline().split()
        for line in f:
            cols = dict(zip(header, line.split(), strict=False))
            if int(cols["Eth"]) == nl.NETLINK_CONNECTOR and int(cols["Inode"]) in inodes:
                return int(cols["Pid"])
    raise AssertionError(f"no proc connector socket in pid {pid}")


def test_forged_events_cannot_change_the_daemons_tree(janitor: Janitor, tmp_path: Path) -> None:
    victim = janitor.spawn(["/bin/sleep", "60"])
    config = f"roots:\n  - {{name: v, select: pid, match: {victim.pid}}}\n"
    d = start_daemon(janitor, tmp_path, config)
    wait_for(lambda: value(d.metrics(), "proctree_root_up", root="v") == 1)
    port = connector_port(d.proc.pid)
    now = time.monotonic_ns()
    forged = [
        # "the victim exited" and "a stranger was forked under it"
        nl.build_event(nl.What.EXIT, struct.pack("=IIIIII", victim.pid, victim.pid, 0, 17,
                                                 1, 1), ts_ns=now),
        nl.build_event(nl.What.FORK, struct.pack("=IIII", victim.pid, victim.pid, 3_999_999,
                                                 3_999_999), ts_ns=now),
    ]
    with socket.socket(socket.AF_NETLINK, socket.SOCK_DGRAM, nl.NETLINK_CONNECTOR) as s:
        s.bind((0, 0))
        for _ in range(20):
            for msg in forged:
                s.sendto(msg, (port, 0))
    def all_refused() -> dict | None:
        m = d.metrics()
        return m if value(m, "proctree_parse_errors_total", reason="spoofed") == 40 else None

    m = wait_for(all_refused)
    assert value(m, "proctree_root_up", root="v") == 1
    assert value(m, "proctree_root_spawned_total", root="v") == 1  # the victim alone
    members = d.json("/api/v1/roots/v")["members"]
    assert [mem["pid"] for mem in members] == [victim.pid]
