"""Classification: pure functions from a process's facts to its class and the reason.

Classes of a root's member: ``healthy``; ``orphaned`` (below an instance, its
fork parent exited and the kernel gave it another parent); ``zombie`` (it
exited and its parent has not reaped it for longer than the root's grace);
``exited`` (gone, kept for a while as a tombstone); ``pid_reused`` (a
tombstone whose pid now belongs to another process).

Nothing here reads /proc, a clock or any state: membership supplies the facts
and records the outcome as typed events. Reason sentences are built here from
those facts, and nothing ever parses them back.
"""

from __future__ import annotations

import signal
from collections.abc import Iterable, Mapping
from enum import StrEnum
from typing import NamedTuple


class ProcessClass(StrEnum):
    """What state a member of a root is in."""

    HEALTHY = "healthy"
    ORPHANED = "orphaned"
    ZOMBIE = "zombie"
    EXITED = "exited"
    PID_REUSED = "pid_reused"


HEALTHY = ProcessClass.HEALTHY
ORPHANED = ProcessClass.ORPHANED
ZOMBIE = ProcessClass.ZOMBIE
EXITED = ProcessClass.EXITED
PID_REUSED = ProcessClass.PID_REUSED
LIVE_CLASSES = (HEALTHY, ORPHANED, ZOMBIE)  # what proctree_root_processes counts


def is_orphaned(*, depth: int, parent_exited: bool, ppid: int, parent_pid: int) -> bool:
    """A live member is orphaned once its fork parent has exited and the kernel has
    moved it to another parent. An instance (depth 0) never is: its parent is
    outside the root."""
    return depth > 0 and parent_exited and ppid != parent_pid


def zombie_due(*, exit_ns: int | None, seen_unreaped: bool, now_ns: int, grace_ns: int) -> bool:
    """An exited member is a zombie once /proc showed it unreaped (state Z) and it
    exited at least ``grace_ns`` ago: parents reap most children well within that."""
    return seen_unreaped and exit_ns is not None and now_ns - exit_ns >= grace_ns


def signal_name(sig: int) -> str:
    """``SIGTERM`` for 15; ``signal 77`` for numbers without a name."""
    try:
        return signal.Signals(sig).name
    except ValueError:
        return f"signal {sig}"


def _who(pid: int | None, comm: str | None) -> str:
    return f"{pid} ({comm or '?'})"


def exit_reason(pid: int, comm: str | None, exit_code: int | None,
                exit_signal: int | None) -> str:
    """How a process ended, in words."""
    if exit_signal is not None:
        return f"process {_who(pid, comm)} was killed by {signal_name(exit_signal)}"
    if exit_code is not None:
        return f"process {_who(pid, comm)} exited with code {exit_code}"
    return f"process {_who(pid, comm)} is gone; its exit was not observed (lost events)"


def orphan_reason(pid: int, comm: str | None, parent_pid: int | None,
                  parent_comm: str | None, new_ppid: int | None) -> str:
    """Why a member is orphaned: its fork parent is dead (and who has it now)."""
    where = f"; reparented to PID {new_ppid}" if new_ppid is not None else ""
    return (f"parent PID {_who(parent_pid, parent_comm)} of process {_who(pid, comm)} "
            f"is dead{where}")


def zombie_reason(pid: int, comm: str | None, seconds: float | None, parent_pid: int | None,
                  parent_comm: str | None) -> str:
    """Why a member is a zombie: exited long ago, and who fails to reap it."""
    ago = f"{seconds:.1f}s ago" if seconds is not None else "a while ago"
    return (f"process {_who(pid, comm)} exited {ago} and its parent PID "
            f"{_who(parent_pid, parent_comm)} has not reaped it")


def reaped_reason(pid: int, comm: str | None) -> str:
    """A zombie's end."""
    return f"zombie {_who(pid, comm)} was reaped"


def pid_reused_reason(pid: int, comm: str | None, start_ticks: int, new_comm: str | None,
                      new_start: int | None) -> str:
    """An exited member's pid now names another process."""
    return (f"pid {pid} of exited process {comm or '?'} (start {start_ticks}) now belongs to "
            f"{new_comm or '?'} (start {new_start})")


# -- a root's confidence in its membership ------------------------------------------------

# tree.LINEAGE_SNAPSHOT, _RESYNC, _LATE, _POLL: a member with one of these was placed by
# what /proc said, not by a fork event (tree.LINEAGE_FORK: this run's; _RESTORED: an
# earlier run's, kept in the state file)
INFERRED_LINEAGE = frozenset({"snapshot", "resync", "late", "poll"})
EXACT, DEGRADED = "exact", "degraded"


class Confidence(NamedTuple):
    """How sure a root is of its membership (see :meth:`.membership.Roots.confidence`)."""

    level: str  # EXACT or DEGRADED
    inferred: dict[str, int]  # live members by lineage source, for those not seen forking

    @classmethod
    def of_counts(cls, inferred: Mapping[str, int]) -> Confidence:
        """The confidence of a root with ``inferred`` (lineage source -> live members
        placed by /proc; sources with none left out)."""
        counts = {src: n for src, n in inferred.items() if n}
        return cls(DEGRADED if counts else EXACT, counts)

    @property
    def reason(self) -> str:
        """Why it is degraded, as a sentence ('' when exact)."""
        if not self.inferred:
            return ""
        parts = [f"{n} from {_SOURCE_WORDS.get(src, src)}"
                 for src, n in sorted(self.inferred.items())]
        total = sum(self.inferred.values())
        return (f"{total} member{'s' if total != 1 else ''} placed by /proc, not by a "
                f"fork event: " + ", ".join(parts))


_SOURCE_WORDS = {
    "snapshot": "the start-up snapshot (they predate the exporter)",
    "resync": "a resync after lost events",
    "late": "a late first sighting (fork event missed)",
    "poll": "/proc polling (no event source)",
}


def confidence_of(inferred: Iterable[str]) -> Confidence:
    """The confidence of a root whose live members' lineage sources not in
    ``INFERRED_LINEAGE`` are ``inferred`` (one item per member)."""
    counts: dict[str, int] = {}
    for src in inferred:
        counts[src] = counts.get(src, 0) + 1
    return Confidence.of_counts(counts)
