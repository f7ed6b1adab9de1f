"""Membership and classification of roots, on plain event sequences (no kernel).

Each case is a table row: what exists before the root is added, the root, what
happens next, and the typed events the root's change log must hold, in order,
as (kind, process) pairs. :class:`~tests.fakehost.Host` plays the kernel, so
these run anywhere; tests/test_watch_kernel.py checks the same behaviour on
real processes.
"""

from __future__ import annotations

import signal
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from proctree_exporter.actions import ActionOutcome, ActionSpec
from proctree_exporter.classification import EXITED, ORPHANED, PID_REUSED, ZOMBIE
from proctree_exporter.events import EventKind
from proctree_exporter.rootspec import RootSpec

from .fakehost import Host

Step = tuple[Any, ...]


@dataclass
class Case:
    name: str
    setup: list[Step]  # before the root exists
    root: dict[str, Any]  # RootSpec fields; "{x}" in match is process x's pid
    steps: list[Step]  # after
    expect: list[tuple[str, str]]  # (kind, process) of the root's events, in order
    counts: dict[str, int] = field(default_factory=dict)  # RootState attributes

    def __str__(self) -> str:
        return self.name


def run(h: Host, steps: list[Step]) -> None:
    for step in steps:
        op, *args = step
        kw = args.pop() if args and isinstance(args[-1], dict) else {}
        getattr(h, op)(*args, **kw)


def scene(case: Case) -> Host:
    h = Host()
    run(h, case.setup)
    fields = dict(case.root)
    fields["match"] = str(fields["match"]).format(**h.names)
    h.roots.add(RootSpec(name="r", **fields))
    run(h, case.steps)
    return h


JOB = [("spawn", "job", "init", {"comm": "job"})]
CASES = [
    Case("a fork below the instance joins; its exit and reap keep a tombstone",
         JOB, {"select": "pid", "match": "{job}"},
         [("spawn", "a", "job"), ("exec", "a", "sleep"), ("exit", "a"), ("tick",)],
         [("joined", "job"), ("root_up", "job"), ("joined", "a"), ("exec", "a"),
          ("exited", "a")],
         {"spawned_total": 2, "exited_total": 1, "n_listed": 1}),
    Case("short-lived children are counted exactly",
         JOB, {"select": "pid", "match": "{job}"},
         [("spawn", "a", "job"), ("exit", "a"), ("spawn", "b", "job"), ("exit", "b"),
          ("tick",)],
         [("joined", "job"), ("root_up", "job"), ("joined", "a"), ("exited", "a"),
          ("joined", "b"), ("exited", "b")],
         {"spawned_total": 3, "exited_total": 2}),
    Case("an orphan is classed once the kernel has moved it",
         [*JOB, ("spawn", "w", "job"), ("spawn", "o", "w")], {"select": "pid", "match": "{job}"},
         [("exit", "w"), ("tick",)],
         [("joined", "job"), ("root_up", "job"), ("joined", "w"), ("joined", "o"),
          ("exited", "w"), ("reparented", "o"), ("class", "o")],
         {"n_listed": 2}),
    Case("an instance's own parent is outside the root: never orphaned",
         [("spawn", "w", "init"), ("spawn", "job", "w")], {"select": "pid", "match": "{job}"},
         [("exit", "w"), ("tick",)],
         [("joined", "job"), ("root_up", "job"), ("reparented", "job")]),
    Case("a child that dies with its parent is not called an orphan",
         [*JOB, ("spawn", "w", "job"), ("spawn", "o", "w")], {"select": "pid", "match": "{job}"},
         [("exit", "w"), ("exit", "o"), ("tick",)],
         [("joined", "job"), ("root_up", "job"), ("joined", "w"), ("joined", "o"),
          ("exited", "w"), ("exited", "o")]),
    Case("a zombie past the grace is classed, then reaped",
         JOB, {"select": "pid", "match": "{job}", "zombie_grace_s": 1.0},
         [("spawn", "z", "job"), ("exit", "z", {"reap": False}), ("tick",), ("tick", 0.5),
          ("tick", 1.0), ("reap", "z"), ("tick", 1.1)],
         [("joined", "job"), ("root_up", "job"), ("joined", "z"), ("exited", "z"),
          ("class", "z"), ("class", "z"), ("left", "z")][:-1],
         {"exited_total": 1}),
    Case("a new instance while another lives is no restart; after the last one is",
         [], {"select": "comm", "match": "worker"},
         [("spawn", "w1", "init", {"comm": "worker"}), ("spawn", "w2", "init", {"comm": "worker"}),
          ("exit", "w1"), ("spawn", "w3", "init", {"comm": "worker"}), ("exit", "w2"),
          ("exit", "w3"), ("tick",), ("spawn", "w4", "init", {"comm": "worker"})],
         [("joined", "w1"), ("root_up", "w1"), ("joined", "w2"), ("exited", "w1"),
          ("joined", "w3"), ("exited", "w2"), ("exited", "w3"), ("root_down", "w3"),
          ("joined", "w4"), ("root_up", "w4"), ("restart", "w4")],
         {"restarts": 1}),
    Case("a pid root is one identity: a stranger under its pid is not it",
         JOB, {"select": "pid", "match": "{job}"},
         [("exit", "job"), ("tick",), ("spawn", "stranger", "init", {"pid": 100})],
         [("joined", "job"), ("root_up", "job"), ("exited", "job"), ("root_down", "job"),
          ("class", "job")],
         {"restarts": 0, "pid_reuse_seen": 1}),
    Case("a tombstone's pid taken by another process is pid_reused",
         JOB, {"select": "pid", "match": "{job}"},
         [("spawn", "a", "job"), ("exit", "a"), ("tick",), ("spawn", "b", "init", {"pid": 101})],
         [("joined", "job"), ("root_up", "job"), ("joined", "a"), ("exited", "a"),
          ("class", "a")],
         {"pid_reuse_seen": 1}),
    Case("include_root off: the instance is a member inside, never listed or counted",
         [], {"select": "comm", "match": "job", "include_root": False},
         [("spawn", "job", "init", {"comm": "job"}), ("spawn", "a", "job"), ("exit", "job")],
         [("joined", "job"), ("root_up", "job"), ("joined", "a"), ("exited", "job"),
          ("root_down", "job")],
         {"spawned_total": 1, "exited_total": 0, "n_listed": 1}),
    Case("max_depth: deeper descendants are not members",
         JOB, {"select": "pid", "match": "{job}", "max_depth": 1},
         [("spawn", "a", "job"), ("spawn", "b", "a")],
         [("joined", "job"), ("root_up", "job"), ("joined", "a")],
         {"n_listed": 2}),
    Case("an exec'ing wrapper becomes an instance when it execs",
         [("spawn", "sh", "init", {"comm": "sh"})], {"select": "comm", "match": "app"},
         [("exec", "sh", "app")],
         [("joined", "sh"), ("root_up", "sh")]),
    Case("a renamed process (prctl) is re-matched and its rename is an exec",
         [("spawn", "a", "init", {"comm": "a"})], {"select": "comm", "match": "b"},
         [("rename", "a", "b"), ("spawn", "k", "a"), ("rename", "k", "kid")],
         [("joined", "a"), ("root_up", "a"), ("joined", "k"), ("exec", "k")]),
    Case("a match inside another instance counts once, as a member",
         [("spawn", "outer", "init", {"cmdline": "run mark"})], {"select": "cmdline",
                                                                  "match": "mark$"},
         [("spawn", "inner", "outer", {"cmdline": "sleep mark"})],
         [("joined", "outer"), ("root_up", "outer"), ("joined", "inner"), ("exec", "inner")],
         {"n_listed": 2}),
    Case("a cgroup root takes what runs in the cgroup and below",
         [], {"select": "cgroup", "match": "/batch"},
         [("spawn", "x", "init", {"cgroup": "/other"}), ("spawn", "j", "init",
                                                          {"cgroup": "/batch/job1",
                                                           "comm": "j"})],
         [("joined", "j"), ("root_up", "j")]),
    Case("an exe root matches a basename, a path, and a deleted binary",
         [("spawn", "a", "init", {"exe": "/opt/app (deleted)", "comm": "app"}),
          ("spawn", "b", "init", {"exe": "/usr/bin/app", "comm": "app"})],
         {"select": "exe", "match": "app"}, [],
         [("joined", "a"), ("root_up", "a"), ("joined", "b")]),
    Case("tombstones beyond max_tombstones are let go, oldest first",
         JOB, {"select": "pid", "match": "{job}", "max_tombstones": 1},
         [("spawn", "a", "job"), ("exit", "a"), ("spawn", "b", "job"), ("exit", "b"),
          ("tick",)],
         [("joined", "job"), ("root_up", "job"), ("joined", "a"), ("exited", "a"),
          ("joined", "b"), ("exited", "b"), ("left", "a")]),
    Case("tombstones expire after their TTL",
         JOB, {"select": "pid", "match": "{job}", "tombstone_ttl_s": 1.0},
         [("spawn", "a", "job"), ("exit", "a"), ("tick",), ("tick", 1.5)],
         [("joined", "job"), ("root_up", "job"), ("joined", "a"), ("exited", "a"),
          ("left", "a")]),
    Case("without tombstones, a reaped member is let go at once",
         JOB, {"select": "pid", "match": "{job}", "max_tombstones": 0},
         [("spawn", "a", "job"), ("exit", "a"), ("tick",)],
         [("joined", "job"), ("root_up", "job"), ("joined", "a"), ("exited", "a"),
          ("left", "a")]),
    Case("a root added later finds orphans and zombies already there",
         [*JOB, ("spawn", "w", "job"), ("spawn", "o", "w"), ("spawn", "z", "job"),
          ("exit", "z", {"reap": False}), ("exit", "w"), ("tick",)],
         {"select": "pid", "match": "{job}"}, [],
         [("joined", "job"), ("root_up", "job"), ("joined", "o"), ("class", "o"),
          ("joined", "z"), ("exited", "z")],
         {"n_listed": 2}),
    Case("dry-run actions: SIGTERM to leftovers, SIGKILL after the grace; SIGCHLD to a "
         "zombie's parent",
         [*JOB, ("spawn", "w", "job"), ("spawn", "o", "w"), ("spawn", "z", "w")],
         {"select": "pid", "match": "{job}", "zombie_grace_s": 0.1,
          "actions": ActionSpec(enabled=True, term_grace_s=1.0, signal_zombie_parents=True)},
         [("exit", "z", {"reap": False}), ("tick",), ("tick", 0.2), ("exit", "job"),
          ("tick",), ("tick", 1.5)],
         [("joined", "job"), ("root_up", "job"), ("joined", "w"), ("joined", "o"),
          ("joined", "z"), ("exited", "z"), ("class", "z"), ("action", "w"), ("exited", "job"),
          ("root_down", "job"), ("reparented", "w"), ("class", "w"), ("action", "w"),
          ("action", "o"), ("action", "w"), ("action", "o")]),
    Case("a resync after lost events: a vanished member exits unobserved, a new one joins",
         [*JOB, ("spawn", "a", "job")], {"select": "pid", "match": "{job}"},
         [("exit", "a", {"silent": True}), ("spawn", "b", "job", {"silent": True}), ("resync",),
          ("tick",)],
         [("joined", "job"), ("root_up", "job"), ("joined", "a"), ("exited", "a"),
          ("joined", "b")]),
    Case("a resync finds a parent gone and its child moved: orphaned at the parent's exit",
         [*JOB, ("spawn", "w", "job"), ("spawn", "o", "w")], {"select": "pid", "match": "{job}"},
         [("exit", "w", {"silent": True}), ("resync",)],
         [("joined", "job"), ("root_up", "job"), ("joined", "w"), ("joined", "o"),
          ("reparented", "o"), ("exited", "w"), ("class", "o")]),
]


@pytest.mark.parametrize("case", CASES, ids=str)
def test_membership_table(case: Case) -> None:
    h = scene(case)
    assert h.kinds("r") == case.expect
    root = h.roots.roots["r"]
    for attr, want in case.counts.items():
        assert getattr(root, attr) == want, attr
    # the O(1) counts agree with the members they count
    listed = [n for n, d in root.members.items() if root.listed(d)]
    assert root.n_listed == len(listed)
    assert sum(root.n_class.values()) - root.n_class[ZOMBIE] == len(listed)


def events(h: Host, kind: EventKind) -> list[Any]:
    return [e for e in h.events("r") if e.kind is kind]


def test_orphan_reason_names_the_dead_parent_its_current_name_and_its_new_parent() -> None:
    h = scene(CASES[2])
    (ev,) = events(h, EventKind.CLASS)
    assert ev.new_class == ORPHANED and ev.old_class == "healthy"
    assert (ev.other_pid, ev.ppid) == (h.pid("w"), 1)
    assert ev.reason == (f"parent PID {h.pid('w')} (job) of process {h.pid('o')} (job) is "
                         f"dead; reparented to PID 1")


def test_a_subreaper_adopts_the_orphan_and_the_reason_says_so() -> None:
    h = Host()
    run(h, [*JOB, ("spawn", "w", "job"), ("spawn", "o", "w")])
    h.subreapers.add(h.pid("job"))
    h.roots.add(RootSpec(name="r", select="pid", match=str(h.pid("job"))))
    h.exit("w")
    h.tick()
    (ev,) = events(h, EventKind.CLASS)
    assert ev.ppid == h.pid("job") and f"reparented to PID {h.pid('job')}" in ev.reason


def test_zombie_reason_names_the_parent_that_fails_to_reap_it() -> None:
    h = scene(CASES[5])
    zombie, reaped = events(h, EventKind.CLASS)
    assert (zombie.old_class, zombie.new_class, reaped.old_class, reaped.new_class) == (
        "healthy", ZOMBIE, ZOMBIE, EXITED)
    assert zombie.other_pid == h.pid("job") and zombie.seconds >= 1.0
    assert "has not reaped it" in zombie.reason and f"PID {h.pid('job')} (job)" in zombie.reason
    assert reaped.reason == f"zombie {h.pid('z')} (job) was reaped"
    assert h.roots.roots["r"].n_class[ZOMBIE] == 0


def test_exit_status_and_reason_come_from_the_kernels_wait_status() -> None:
    h = scene(CASES[0])
    h.spawn("k", "job")
    h.exit("k", signal=signal.SIGKILL)
    h.spawn("c", "job")
    h.exit("c", 3)
    exits = events(h, EventKind.EXITED)
    assert [(e.exit_code, e.exit_signal) for e in exits] == [(0, None), (None, 9), (3, None)]
    assert exits[1].reason == f"process {h.pid('k')} (job) was killed by SIGKILL"
    assert exits[2].reason == f"process {h.pid('c')} (job) exited with code 3"


def test_exec_events_carry_before_and_after() -> None:
    h = Host()
    h.spawn("job", comm="job")
    h.roots.add(RootSpec(name="r", select="pid", match=str(h.pid("job")), capture_cmdline=True,
                         cmdline_max_chars=8))
    h.spawn("a", "job")
    h.exec("a", "sleep", "/bin/sleep", "sleep 60 --long")
    (ev,) = events(h, EventKind.EXEC)
    assert (ev.prev_comm, ev.comm, ev.exe, ev.cmdline) == ("job", "sleep", "/bin/sleep",
                                                           "sleep 60")
    assert ev.reason == f"process {h.pid('a')} (job) now runs /bin/sleep"


def test_pid_reused_reason_names_the_new_holder() -> None:
    h = scene(CASES[8])
    (ev,) = events(h, EventKind.CLASS)
    assert ev.new_class == PID_REUSED and ev.other_pid == 101
    assert ev.reason == (f"pid 101 of exited process job (start {ev.start_ticks}) now belongs "
                         f"to init (start {h.start('b')})")


def test_dry_run_actions_are_counted_and_reach_nothing() -> None:
    h = scene(CASES[20])
    actions = events(h, EventKind.ACTION)
    assert [(a.signal, a.outcome) for a in actions] == [
        (signal.SIGCHLD, ActionOutcome.DRY_RUN), (signal.SIGTERM, "dry_run"),
        (signal.SIGTERM, "dry_run"), (signal.SIGKILL, "dry_run"), (signal.SIGKILL, "dry_run")]
    assert actions[1].reason == f"would send SIGTERM to {h.pid('w')} (job): dry_run"
    assert h.roots.roots["r"].actions == {("chld", "dry_run"): 1, ("term", "dry_run"): 2,
                                          ("kill", "dry_run"): 2}


def test_a_root_that_comes_back_cancels_its_cleanup() -> None:
    h = Host()
    h.roots.add(RootSpec(name="r", select="comm", match="svc",
                         actions=ActionSpec(enabled=True, term_grace_s=1.0)))
    h.spawn("s1", comm="svc")
    h.spawn("kid", "s1")
    h.exit("s1")
    h.tick()  # SIGTERM (dry run) to the kid
    h.spawn("s2", comm="svc")  # back up before the grace: no SIGKILL
    h.tick(2.0)
    assert [a.signal for a in events(h, EventKind.ACTION)] == [signal.SIGTERM]


def test_a_pidfile_root_follows_the_file(tmp_path: Path) -> None:
    pidfile = tmp_path / "app.pid"
    h = Host()
    h.roots.add(RootSpec(name="r", select="pidfile", match=str(pidfile)))
    assert any("app.pid" in w for w in h.roots.warnings("r"))
    a = h.spawn("a", comm="app")
    pidfile.write_text(f"{a}\n")
    h.tick(1.1)
    assert h.roots.roots["r"].alive and h.roots.warnings("r") == ()
    h.exit("a")
    b = h.spawn("b", comm="app")
    pidfile.write_text(f"{b} extra\n")
    h.tick(0.05)  # the instance's exit makes the next round re-read the file
    assert h.kinds("r")[-3:] == [("joined", "b"), ("root_up", "b"), ("restart", "b")]
    pidfile.write_text("garbage")
    h.exit("b")
    h.tick(1.1)
    assert any("invalid literal" in w for w in h.roots.warnings("r"))


def test_no_match_is_a_warning() -> None:
    h = Host(RootSpec(name="r", select="comm", match="nothing"))
    assert h.roots.warnings("r") == ("no process matches comm='nothing'",)


def test_set_roots_keeps_unchanged_roots_and_replaces_changed_ones() -> None:
    h = Host()
    run(h, JOB)
    keep = RootSpec(name="keep", select="pid", match=str(h.pid("job")))
    change = RootSpec(name="change", select="comm", match="job")
    h.roots.set_roots([keep, change])
    old_log = h.roots.log("change")
    h.roots.set_roots([keep, RootSpec(name="change", select="comm", match="job", max_depth=2)])
    assert h.roots.log("change") is not old_log
    assert old_log.tail(1)[0].kind is EventKind.ROOT_REMOVED
    assert h.roots.log("keep").seq == 2  # untouched: joined, root_up
    h.roots.set_roots([])
    assert h.roots.root_names() == []
    with pytest.raises(ValueError, match="unique"):
        h.roots.set_roots([keep, keep])
    h.roots.add(keep)
    with pytest.raises(ValueError, match="exists"):
        h.roots.add(keep)


def test_a_cgroup_root_switches_cgroup_reading_on() -> None:
    h = Host()
    assert not h.tree.read_cgroups
    h.spawn("j", cgroup="/batch")
    h.roots.add(RootSpec(name="r", select="cgroup", match="/batch/"))
    assert h.tree.read_cgroups and h.roots.roots["r"].alive


def test_every_cgroup_matches_the_root_cgroup() -> None:
    h = Host()
    h.roots.add(RootSpec(name="r", select="cgroup", match="/"))
    assert h.roots.roots["r"].alive  # init is in /


def test_relist_describes_members_exited_members_and_tombstones() -> None:
    h = scene(CASES[19])  # job, w (exited), o (orphaned), z (zombie)
    h.spawn("t", "job")
    h.exit("t")
    h.tick()
    rl = h.roots.relist("r")
    assert rl.seq == h.roots.log("r").seq and rl.up and rl.spec.name == "r"
    assert [(str(e.kind), h.name_of(e.pid, e.start_ticks)) for e in rl.events] == [
        ("joined", "t"), ("exited", "t"), ("joined", "z"), ("exited", "z"), ("joined", "job"),
        ("joined", "o"), ("class", "o")]
    joined = rl.events[4]
    assert joined.depth == 0 and joined.ancestors == ((1, 1, "init", 0, False),)
    assert (rl.spawned_total, rl.exited_total) == (3, 1)  # z was unreaped when found


def test_threads_are_not_members() -> None:
    h = scene(CASES[0])
    h.thread("job", 5000)
    h.thread("job", 5000, exit=True)
    assert h.kinds("r") == CASES[0].expect
    assert h.tree.get(h.pid("job")).threads == 1


def test_wakeup_is_notified_once_per_round_with_changes() -> None:
    h = scene(CASES[0])
    gen = h.roots.wakeup.generation
    h.tick()
    assert h.roots.wakeup.generation == gen  # nothing new
    h.spawn("b", "job")
    h.tick()
    assert h.roots.wakeup.generation == gen + 1
