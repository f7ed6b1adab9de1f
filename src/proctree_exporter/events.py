"""The typed events that leave the core: every change to a root is one :class:`RootEvent`.

A root's change log (:mod:`.changelog`) holds these in order; every consumer
(the JSON API and tree page, OpenTelemetry, the ``watch`` command, the Python
API) reads them through its own cursor and builds its own view from them.
Events are immutable and carry facts, not prose: :attr:`RootEvent.reason` is a
sentence built from the fields when asked for, and nothing parses it back.

Which fields a kind sets (the first seven are always set):

===============  =================================================================
kind             fields
===============  =================================================================
``joined``       exe, cmdline (roots with capture_cmdline), uid, ppid, lineage_ppid,
                 lineage_start, lineage_known, lineage_source, depth (0: an
                 instance), started_at; ancestors (instances: lineage ancestors
                 outside the root, nearest first)
``exec``         exe, cmdline, uid, prev_comm, prev_exe, prev_cmdline
``reparented``   ppid (the new current parent), prev_ppid
``exited``       exit_code or exit_signal (neither: the exit was not observed),
                 core_dumped; depth
``class``        old_class, new_class; other_pid/other_start_ticks/other_comm, the
                 process it is about: the dead parent (orphaned, with ppid = the
                 new parent), the parent that fails to reap it (zombie, with
                 seconds = how long unreaped), the new holder of its pid
                 (pid_reused)
``action``       signal, outcome
``restart``      (the new instance is the subject)
``root_up``      instances (live instances after it); the subject is the instance
``root_down``    instances (0); the subject is the last instance that exited
``root_removed`` (the root is no longer watched: the last event of its log)
``left``         (a member the root no longer keeps: its tombstone expired or was
                 evicted, or it exited where no tombstones are kept)
``lost``         count (synthetic, made by a reader that fell behind the log: so
                 many events were dropped before it could read them)
===============  =================================================================
"""

from __future__ import annotations

from enum import StrEnum
from typing import Any, NamedTuple

from .actions import ActionOutcome
from .classification import (
    EXITED,
    ORPHANED,
    PID_REUSED,
    ZOMBIE,
    ProcessClass,
    exit_reason,
    orphan_reason,
    pid_reused_reason,
    reaped_reason,
    signal_name,
    zombie_reason,
)
from .identity import Identity


class EventKind(StrEnum):
    """What happened (see the module docstring for the fields each kind sets)."""

    JOINED = "joined"
    EXEC = "exec"
    REPARENTED = "reparented"
    EXITED = "exited"
    CLASS = "class"
    ACTION = "action"
    RESTART = "restart"
    ROOT_UP = "root_up"
    ROOT_DOWN = "root_down"
    ROOT_REMOVED = "root_removed"
    LEFT = "left"
    LOST = "lost"


class Ancestor(NamedTuple):
    """A lineage ancestor of a root's instance, outside the root, as it was at the join."""

    pid: int
    start_ticks: int
    comm: str | None
    uid: int | None
    exited: bool


class RootEvent(NamedTuple):
    """One change to one root. Immutable; ``seq`` orders a root's events from 1."""

    kind: EventKind
    root: str
    seq: int
    ts: float  # wall-clock seconds: when it happened (kernel time for joins and exits)
    pid: int
    start_ticks: int
    comm: str | None  # its name now (after an exec: the new one)
    exe: str | None = None
    cmdline: str | None = None
    uid: int | None = None
    ppid: int | None = None
    lineage_ppid: int | None = None
    lineage_start: int | None = None
    lineage_known: bool | None = None
    lineage_source: str | None = None
    depth: int | None = None
    started_at: float | None = None
    ancestors: tuple[Ancestor, ...] | None = None
    prev_comm: str | None = None
    prev_exe: str | None = None
    prev_cmdline: str | None = None
    prev_ppid: int | None = None
    old_class: ProcessClass | None = None
    new_class: ProcessClass | None = None
    other_pid: int | None = None
    other_start_ticks: int | None = None
    other_comm: str | None = None
    seconds: float | None = None
    exit_code: int | None = None
    exit_signal: int | None = None
    core_dumped: bool | None = None
    signal: int | None = None
    outcome: ActionOutcome | None = None
    instances: int | None = None
    count: int | None = None

    @property
    def identity(self) -> Identity:
        """The process this event is about."""
        return Identity(self.pid, self.start_ticks)

    @property
    def reason(self) -> str:
        """The event as a sentence, built from its fields."""
        return describe(self)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: the fields that are set, ``kind`` as a string, and ``reason``."""
        doc: dict[str, Any] = {}
        for key, value in zip(self._fields, self, strict=True):
            if value is None:
                continue
            if key == "ancestors":
                value = [a._asdict() for a in value]
            doc[key] = value
        doc["reason"] = describe(self)
        return doc


def _who(ev: RootEvent) -> str:
    return f"{ev.pid} ({ev.comm or '?'})"


def describe(ev: RootEvent) -> str:
    """A sentence for ``ev`` (what :attr:`RootEvent.reason` returns)."""
    kind = ev.kind
    if kind is EventKind.EXITED:
        return exit_reason(ev.pid, ev.comm, ev.exit_code, ev.exit_signal)
    if kind is EventKind.CLASS:
        new = ev.new_class
        if new == ORPHANED:
            return orphan_reason(ev.pid, ev.comm, ev.other_pid, ev.other_comm, ev.ppid)
        if new == ZOMBIE:
            return zombie_reason(ev.pid, ev.comm, ev.seconds, ev.other_pid, ev.other_comm)
        if new == EXITED and ev.old_class == ZOMBIE:
            return reaped_reason(ev.pid, ev.comm)
        if new == PID_REUSED:
            return pid_reused_reason(ev.pid, ev.comm, ev.start_ticks, ev.other_comm,
                                     ev.other_start_ticks)
        return f"process {_who(ev)} is {new} now (was {ev.old_class})"
    if kind is EventKind.JOINED:
        if ev.depth == 0:
            return f"process {_who(ev)} matches root {ev.root}"
        return f"process {_who(ev)} joined root {ev.root}, forked by PID {ev.lineage_ppid}"
    if kind is EventKind.EXEC:
        return f"process {ev.pid} ({ev.prev_comm or '?'}) now runs {ev.exe or ev.comm or '?'}"
    if kind is EventKind.REPARENTED:
        return f"process {_who(ev)} was reparented from PID {ev.prev_ppid} to PID {ev.ppid}"
    if kind is EventKind.ACTION:
        sent = "would send" if ev.outcome == ActionOutcome.DRY_RUN else "sent"
        return f"{sent} {signal_name(ev.signal or 0)} to {_who(ev)}: {ev.outcome}"
    if kind is EventKind.RESTART:
        return f"root {ev.root} restarted: new instance {_who(ev)}"
    if kind is EventKind.ROOT_UP:
        return f"root {ev.root} is up: process {_who(ev)} matches"
    if kind is EventKind.ROOT_DOWN:
        return f"root {ev.root} is down: its last instance {_who(ev)} exited"
    if kind is EventKind.ROOT_REMOVED:
        return f"root {ev.root} is no longer watched"
    if kind is EventKind.LEFT:
        return f"process {_who(ev)} is no longer kept by root {ev.root}"
    return (f"{ev.count} events of root {ev.root} were lost before they could be read: "
            f"refetch the root's state")
