"""What this host lets the exporter know, per category, and why.

Each category is ``supported``, ``partial`` or ``unavailable``, with the
backend that serves it and an honest reason. Derived from the collector's
negotiated source and from what the kernel offers; printed by the CLI and
exported as an info metric.
"""

from __future__ import annotations

import os
import signal
from dataclasses import dataclass

from .collector import SOURCE_NETLINK, CollectorStats
from .procfs import PROC, read_cgroup

SUPPORTED = "supported"
PARTIAL = "partial"
UNAVAILABLE = "unavailable"
CATEGORIES = ("process_lifecycle", "exec_details", "lineage", "zombie_detection", "cgroup",
              "actions", "resource_accounting")


@dataclass(frozen=True, slots=True)
class Capability:
    """One category of knowledge and how well this host provides it."""

    category: str
    status: str
    backend: str
    reason: str


def negotiate(stats: CollectorStats, *, read_cgroups: bool, poll_interval_s: float,
              proc: str = PROC, resource_accounting: Capability | None = None
              ) -> list[Capability]:
    """The capabilities implied by the collector's source and this kernel, and how
    resources are accounted (see :func:`.resources.accounting_capability`)."""
    netlink = stats.source == SOURCE_NETLINK
    poll = f"procfs polling every {poll_interval_s:g}s"
    caps = []
    if netlink:
        caps.append(Capability("process_lifecycle", SUPPORTED, "netlink",
                               "proc connector FORK/EXIT: every process, however short; "
                               "losses are detected and repaired by a /proc resync"))
        caps.append(Capability("exec_details", PARTIAL, "netlink+procfs",
                               "EXEC carries only the pid: comm, exe and argv are read from "
                               "/proc at once; a process gone first keeps its parent's "
                               "(counted as exec_unread)"))
        caps.append(Capability("lineage", SUPPORTED, "netlink",
                               "fork parent from FORK events, kept across reparenting; "
                               "processes older than the daemon: parent at start-up"))
    else:
        reason = stats.source_reason or "proc connector not in use"
        caps.append(Capability("process_lifecycle", PARTIAL, "procfs",
                               f"{poll}: processes shorter than the interval are missed "
                               f"({reason})"))
        caps.append(Capability("exec_details", PARTIAL, "procfs",
                               f"{poll}: only the command a process runs when polled"))
        caps.append(Capability("lineage", PARTIAL, "procfs",
                               f"{poll}: parent at first sight; a reparenting before that "
                               f"is invisible"))
    caps.append(Capability("zombie_detection", SUPPORTED, "procfs",
                           "exited processes are checked in /proc for state Z" +
                           (" after their EXIT" if netlink else f" at each poll ({poll})")))
    cgroup_v2 = False
    try:
        cgroup_v2 = read_cgroup(os.getpid(), proc) is not None
    except OSError:
        pass
    if not read_cgroups:
        caps.append(Capability("cgroup", UNAVAILABLE, "procfs",
                               "tree.read_cgroups is off"))
    elif not cgroup_v2:
        caps.append(Capability("cgroup", UNAVAILABLE, "procfs",
                               "no cgroup v2 hierarchy (/proc/PID/cgroup has no 0:: line)"))
    else:
        caps.append(Capability("cgroup", PARTIAL, "procfs",
                               "cgroup v2 path read at EXEC and start-up, inherited at fork; "
                               "migrations of running processes are not seen"))
    if hasattr(os, "pidfd_open") and hasattr(signal, "pidfd_send_signal"):
        if os.geteuid() == 0:
            caps.append(Capability("actions", SUPPORTED, "pidfd",
                                   "signals go through a pidfd checked against (pid, start): "
                                   "a reused pid is never hit; off unless a root enables them"))
        else:
            caps.append(Capability("actions", PARTIAL, "pidfd",
                                   "not root: only processes of this user can be signalled"))
    else:
        caps.append(Capability("actions", UNAVAILABLE, "none",
                               "kernel or Python without pidfd_open/pidfd_send_signal"))
    if resource_accounting is not None:
        caps.append(resource_accounting)
    return caps
