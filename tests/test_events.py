"""Typed events and the pure classification functions behind their sentences (no kernel)."""

from __future__ import annotations

import signal

import pytest

from proctree_exporter.actions import ActionOutcome, Cleanup, action_name
from proctree_exporter.classification import (
    EXITED,
    HEALTHY,
    ORPHANED,
    PID_REUSED,
    ZOMBIE,
    exit_reason,
    is_orphaned,
    signal_name,
    zombie_due,
)
from proctree_exporter.events import Ancestor, EventKind, RootEvent
from proctree_exporter.identity import Identity, same_start


@pytest.mark.parametrize(("depth", "parent_exited", "ppid", "parent_pid", "orphaned"), [
    (1, True, 1, 40, True),  # its fork parent died and the kernel moved it
    (1, True, 40, 40, False),  # died, but the kernel has not moved it yet
    (1, False, 40, 40, False),
    (0, True, 1, 40, False),  # an instance: its parent is outside the root
])
def test_is_orphaned(depth: int, parent_exited: bool, ppid: int, parent_pid: int,
                     orphaned: bool) -> None:
    assert is_orphaned(depth=depth, parent_exited=parent_exited, ppid=ppid,
                       parent_pid=parent_pid) is orphaned


@pytest.mark.parametrize(("exit_ns", "seen", "now", "due"), [
    (0, True, 5_000_000_000, True),
    (0, True, 4_999_999_999, False),  # within the grace
    (0, False, 9_000_000_000, False),  # never seen unreaped: reaped, not a zombie
    (None, True, 9_000_000_000, False),
])
def test_zombie_due(exit_ns: int | None, seen: bool, now: int, due: bool) -> None:
    assert zombie_due(exit_ns=exit_ns, seen_unreaped=seen, now_ns=now,
                      grace_ns=5_000_000_000) is due


def test_signal_and_action_names() -> None:
    assert (signal_name(15), signal_name(77)) == ("SIGTERM", "signal 77")
    assert (action_name(signal.SIGTERM), action_name(signal.SIGCHLD), action_name(77)) == (
        "term", "chld", "signal77")
    assert exit_reason(5, None, None, None) == (
        "process 5 (?) is gone; its exit was not observed (lost events)")


def test_identity_matching_rule() -> None:
    ident = Identity(10, 500)
    assert ident == (10, 500) and hash(ident) == hash((10, 500))
    assert ident.matches(10, 501) and ident.matches(10, 499) and not ident.matches(10, 502)
    assert not ident.matches(10, 501, exact=True) and ident.matches(10, 500, exact=True)
    assert not ident.matches(11, 500)
    assert same_start(500, 501) and not same_start(500, 501, exact=True)


def test_cleanup_schedule() -> None:
    c = Cleanup()
    assert c.step(down=False, leftovers=True, now_ns=0, grace_ns=10) is None
    assert c.step(down=True, leftovers=False, now_ns=0, grace_ns=10) is None
    assert c.step(down=True, leftovers=True, now_ns=0, grace_ns=10) == signal.SIGTERM
    assert c.step(down=True, leftovers=True, now_ns=5, grace_ns=10) is None
    assert c.step(down=True, leftovers=True, now_ns=10, grace_ns=10) == signal.SIGKILL
    assert c.step(down=True, leftovers=True, now_ns=99, grace_ns=10) is None
    assert c.step(down=False, leftovers=True, now_ns=100, grace_ns=10) is None
    assert c.started_ns is None and not c.killed  # back up: the next cleanup starts afresh


def ev(kind: EventKind, **fields: object) -> RootEvent:
    return RootEvent(kind, "job", 7, 1.5, 42, 900, "worker", **fields)  # type: ignore[arg-type]


@pytest.mark.parametrize(("event", "sentence"), [
    (ev(EventKind.JOINED, depth=0), "process 42 (worker) matches root job"),
    (ev(EventKind.JOINED, depth=2, lineage_ppid=41),
     "process 42 (worker) joined root job, forked by PID 41"),
    (ev(EventKind.EXEC, prev_comm="sh", exe="/usr/bin/worker"),
     "process 42 (sh) now runs /usr/bin/worker"),
    (ev(EventKind.REPARENTED, ppid=1, prev_ppid=41),
     "process 42 (worker) was reparented from PID 41 to PID 1"),
    (ev(EventKind.EXITED, exit_signal=9), "process 42 (worker) was killed by SIGKILL"),
    (ev(EventKind.CLASS, old_class=HEALTHY, new_class=ORPHANED, other_pid=41, other_comm="sh",
        ppid=1), "parent PID 41 (sh) of process 42 (worker) is dead; reparented to PID 1"),
    (ev(EventKind.CLASS, old_class=HEALTHY, new_class=ZOMBIE, other_pid=41, other_comm="sh",
        seconds=6.25), "process 42 (worker) exited 6.2s ago and its parent PID 41 (sh) has "
                       "not reaped it"),
    (ev(EventKind.CLASS, old_class=HEALTHY, new_class=ZOMBIE),
     "process 42 (worker) exited a while ago and its parent PID None (?) has not reaped it"),
    (ev(EventKind.CLASS, old_class=ZOMBIE, new_class=EXITED), "zombie 42 (worker) was reaped"),
    (ev(EventKind.CLASS, old_class=EXITED, new_class=PID_REUSED, other_comm="bash",
        other_start_ticks=950),
     "pid 42 of exited process worker (start 900) now belongs to bash (start 950)"),
    (ev(EventKind.CLASS, old_class=ORPHANED, new_class=HEALTHY),
     "process 42 (worker) is healthy now (was orphaned)"),
    (ev(EventKind.ACTION, signal=15, outcome=ActionOutcome.SENT),
     "sent SIGTERM to 42 (worker): sent"),
    (ev(EventKind.ACTION, signal=9, outcome=ActionOutcome.DRY_RUN),
     "would send SIGKILL to 42 (worker): dry_run"),
    (ev(EventKind.RESTART), "root job restarted: new instance 42 (worker)"),
    (ev(EventKind.ROOT_UP, instances=1), "root job is up: process 42 (worker) matches"),
    (ev(EventKind.ROOT_DOWN, instances=0),
     "root job is down: its last instance 42 (worker) exited"),
    (ev(EventKind.ROOT_REMOVED), "root job is no longer watched"),
    (ev(EventKind.LEFT), "process 42 (worker) is no longer kept by root job"),
    (ev(EventKind.LOST, count=3),
     "3 events of root job were lost before they could be read: refetch the root's state"),
])
def test_every_kind_says_what_happened_from_its_fields(event: RootEvent, sentence: str) -> None:
    assert event.reason == sentence


def test_an_event_as_json_has_its_set_fields_its_kind_and_its_reason() -> None:
    e = ev(EventKind.JOINED, depth=0, ancestors=(Ancestor(1, 1, "init", 0, False),), uid=0)
    doc = e.to_dict()
    assert doc == {"kind": "joined", "root": "job", "seq": 7, "ts": 1.5, "pid": 42,
                   "start_ticks": 900, "comm": "worker", "uid": 0, "depth": 0,
                   "ancestors": [{"pid": 1, "start_ticks": 1, "comm": "init", "uid": 0,
                                  "exited": False}],
                   "reason": "process 42 (worker) matches root job"}
    assert e.identity == Identity(42, 900)
