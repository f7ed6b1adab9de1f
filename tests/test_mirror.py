"""Mirrors and the change log they read: a view built from events equals the root (no kernel).

The central property: a mirror that followed a root's events from the start
holds exactly what a mirror made afresh from a relist holds, and both agree
with the core's own counts, whatever happened in between (hypothesis drives
the pretend host through random fork, exec, exit, reap and resync).
"""

from __future__ import annotations

import threading
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from proctree_exporter.changelog import ChangeLog, Wakeup
from proctree_exporter.classification import ORPHANED, ZOMBIE
from proctree_exporter.events import EventKind, RootEvent
from proctree_exporter.mirror import Mirrors, RootMirror
from proctree_exporter.rootspec import RootSpec

from .fakehost import Host
from .test_membership import CASES, Case, run


def state(m: RootMirror) -> dict[str, Any]:
    return {
        "members": dict(m.members), "exited": dict(m.exited), "instances": dict(m.instances),
        "classes": {k: v for k, v in m.class_counts().items() if v},
        "up": m.up, "counts": (m.spawned_total, m.exited_total, m.restarts_total),
    }


def agrees_with_core(h: Host, m: RootMirror) -> None:
    root = h.roots.roots[m.name]
    assert len(m.members) == root.n_listed
    assert {k: v for k, v in m.class_counts().items() if v} == {
        str(k): v for k, v in root.n_class.items() if v}
    assert (m.spawned_total, m.exited_total, m.restarts_total) == (
        root.spawned_total, root.exited_total, root.restarts)
    assert m.up == root.alive


def followed_and_fresh(case: Case) -> tuple[Host, RootMirror]:
    h = Host()
    run(h, case.setup)
    fields = dict(case.root)
    fields["match"] = str(fields["match"]).format(**h.names)
    h.roots.add(RootSpec(name="r", **fields))
    m = RootMirror(h.roots, "r")
    m.sync()
    for step in case.steps:
        run(h, [step])
        m.sync()
    fresh = RootMirror(h.roots, "r")
    fresh.sync()
    assert state(m) == state(fresh), case.name
    agrees_with_core(h, m)
    return h, m


def test_a_followed_mirror_equals_a_fresh_one_in_every_membership_case() -> None:
    for case in CASES:
        followed_and_fresh(case)


def test_the_mirror_knows_classes_reasons_and_exits() -> None:
    _, m = followed_and_fresh(CASES[2])  # an orphan
    (orphan,) = [x for x in m.members.values() if x.cls == ORPHANED]
    assert "is dead; reparented to PID 1" in orphan.reason and orphan.ppid == 1
    (w,) = m.exited.values()
    assert w.exit_code == 0 and w.reason.endswith("exited with code 0") and w.exited_at
    assert [k for k, _ in m.recent] == ["added", "added", "added", "removed"]
    assert [e.new_class for e in m.events] == [ORPHANED]
    _, m = followed_and_fresh(CASES[5])  # a zombie, then reaped
    assert m.zombies() == [] and len(m.tombstones()) == 1


def test_a_mirror_lists_zombies_with_live_members_and_caps_the_listing() -> None:
    h = Host()
    h.spawn("job")
    h.roots.add(RootSpec(name="r", select="pid", match=str(h.pid("job")), zombie_grace_s=0.1,
                         max_members=3))
    for i in range(4):
        h.spawn(f"k{i}", "job")
    h.spawn("z", "job")
    h.exit("z", reap=False)
    h.tick()
    h.tick(0.2)
    m = RootMirror(h.roots, "r")
    m.sync()
    assert [x.cls for x in m.listing(10)][-1] == ZOMBIE
    assert len(m.listing()) == 3 and m.listing()[0].depth == 0
    assert len(m.listing(3, zombies=False)) == 3
    assert m.class_counts()["zombie"] == 1 and m.zombies()[0].pid == h.pid("z")
    lineage = m.lineage_up(m.zombies()[0].identity)
    assert [x.pid for x in lineage] == [h.pid("job")]
    assert m.ancestors[m.instances and next(iter(m.instances))][0].pid == 1


def test_a_mirror_that_falls_off_the_log_relists_and_says_how_much_it_lost() -> None:
    h = Host()
    h.spawn("job")
    h.roots.add(RootSpec(name="r", select="pid", match=str(h.pid("job")), change_log_size=8))
    m = RootMirror(h.roots, "r")
    m.sync()
    for i in range(10):
        h.spawn(f"k{i}", "job")
    h.exit("k0")
    h.tick()
    events = m.sync()
    assert events[0].kind is EventKind.LOST and events[0].count > 0 and m.lost == events[0].count
    assert m.relists == 2
    fresh = RootMirror(h.roots, "r")
    fresh.sync()
    assert state(m) == state(fresh)
    agrees_with_core(h, m)


def test_a_removed_root_ends_its_mirror_and_a_replaced_one_is_relisted() -> None:
    h = Host()
    h.spawn("job", comm="job")
    spec = RootSpec(name="r", select="comm", match="job")
    h.roots.add(spec)
    mirrors = Mirrors(h.roots)
    m = mirrors.get("r")
    assert mirrors.names() == ["r"] and m.up
    h.roots.remove("r")
    assert [e.kind for e in m.sync()] == [EventKind.ROOT_REMOVED]
    assert m.sync() == [] and m.removed
    try:
        mirrors.get("r")
        raise AssertionError("a removed root has no mirror")
    except KeyError:
        pass
    h.roots.add(spec)
    m2 = mirrors.get("r")
    assert m2 is not m and m2.up
    # replaced while a reader held the old mirror: it relists onto the new log
    h.roots.set_roots([RootSpec(name="r", select="comm", match="job", max_depth=3)])
    assert m2.sync()[-1].kind is EventKind.ROOT_REMOVED
    reset = m2.sync()
    assert reset[0].kind is EventKind.LOST and reset[0].count == 0 and m2.spec.max_depth == 3
    m3 = RootMirror(h.roots, "r")
    m3.sync()
    h.roots.set_roots([spec])
    assert [e.kind for e in m3.sync()] == [EventKind.ROOT_REMOVED]
    assert m3.sync()[0].kind is EventKind.LOST and m3.spec == spec and m3.up
    h.roots.remove("r")
    gone = RootMirror(h.roots, "r")
    assert [e.kind for e in gone.sync()] == [EventKind.ROOT_REMOVED]


def test_keep_up_syncs_mirrors_half_a_log_behind_and_drops_removed_roots() -> None:
    h = Host()
    h.spawn("job")
    h.roots.add(RootSpec(name="r", select="pid", match=str(h.pid("job")), change_log_size=10))
    mirrors = Mirrors(h.roots)
    m = mirrors.get("r")
    seq = m.seq
    h.spawn("a", "job")
    mirrors.keep_up()
    assert m.seq == seq  # one event behind: not worth a sync yet
    for i in range(6):
        h.spawn(f"k{i}", "job")
    mirrors.keep_up()
    assert m.seq == h.roots.log("r").seq and m.lost == 0
    h.roots.remove("r")
    mirrors.keep_up()
    assert mirrors._mirrors == {}


OPS = st.lists(st.tuples(st.sampled_from(["spawn", "exec", "exit", "zombie", "reap", "tick",
                                          "resync", "lost_exit", "reuse", "rename"]),
                         st.integers(0, 30)), min_size=1, max_size=60)


@settings(max_examples=100, deadline=None)
@given(OPS, st.booleans(), st.sampled_from([4, 50, 100_000]))
def test_random_histories_leave_a_followed_mirror_equal_to_a_fresh_one(
        ops: list[tuple[str, int]], include_root: bool, log_size: int) -> None:
    h = Host()
    h.spawn("p0", comm="job")
    spec = RootSpec(name="r", select="comm", match="job", include_root=include_root,
                    zombie_grace_s=0.1, max_tombstones=5, tombstone_ttl_s=1.0,
                    change_log_size=log_size)
    h.roots.add(spec)
    m = RootMirror(h.roots, "r")
    m.sync()
    names = ["p0"]
    for i, (op, k) in enumerate(ops):
        alive = [n for n in names if h.names[n] in h.procs and h.procs[h.names[n]].state != "Z"]
        target = alive[k % len(alive)] if alive else None
        if op == "spawn" and target is not None:
            name = f"p{i + 1}"
            h.spawn(name, target, comm="job" if k % 5 == 0 else None)
            names.append(name)
        elif op == "exec" and target is not None:
            h.exec(target, "job" if k % 2 else "other")
        elif op in ("exit", "zombie", "lost_exit") and target is not None:
            h.exit(target, k, reap=op != "zombie", silent=op == "lost_exit")
        elif op == "reap":
            zombies = [n for n in names if h.names[n] in h.procs
                       and h.procs[h.names[n]].state == "Z"]
            if zombies:
                h.reap(zombies[k % len(zombies)])
        elif op == "reuse":
            free = [h.names[n] for n in names if h.names[n] not in h.procs]
            if free and alive:
                name = f"p{i + 1}"
                h.clock.advance(0.05)
                h.spawn(name, alive[0], pid=free[k % len(free)])
                names.append(name)
        elif op == "rename" and target is not None:
            h.rename(target, "job" if k % 2 else f"r{k}")
        elif op == "tick":
            h.tick(k / 10)
        elif op == "resync":
            h.resync()
        if k % 3 == 0:
            m.sync()
    h.tick(0.05)
    m.sync()
    fresh = RootMirror(h.roots, "r")
    fresh.sync()
    assert state(m) == state(fresh)
    agrees_with_core(h, m)


def event(seq: int) -> RootEvent:
    return RootEvent(EventKind.JOINED, "r", seq, float(seq), seq, seq, None)


def test_the_change_log_keeps_the_newest_and_counts_what_a_reader_lost() -> None:
    log = ChangeLog("r", 4)
    assert log.since(0) == ([], 0) and log.first_seq == 1 and log.tail(3) == []
    for s in range(1, 4):
        log.append(event(s))
    assert [e.seq for e in log.since(1)[0]] == [2, 3] and log.first_seq == 1
    for s in range(4, 11):
        log.append(event(s))
    assert log.first_seq == 7 and [e.seq for e in log.tail(2)] == [9, 10]
    got, lost = log.since(2)
    assert [e.seq for e in got] == [7, 8, 9, 10] and lost == 4
    got, lost = log.since(2, limit=2)
    assert [e.seq for e in got] == [7, 8] and lost == 4
    assert log.since(10) == ([], 0)


def test_readers_racing_the_writer_see_every_event_once_or_count_it_lost() -> None:
    log = ChangeLog("r", 64)
    total = 200_000
    results: list[tuple[int, int]] = []

    def reader() -> None:
        cursor = seen = lost = 0
        while cursor < total:
            got, gone = log.since(cursor, limit=50)
            lost += gone
            for ev in got:
                assert ev.seq == cursor + 1 + (gone if ev is got[0] else 0) or ev.seq > cursor
                cursor = ev.seq
                seen += 1
            if gone and not got:
                cursor += gone
        results.append((seen, lost))

    threads = [threading.Thread(target=reader) for _ in range(3)]
    for t in threads:
        t.start()
    for s in range(1, total + 1):
        log.append(event(s))
    for t in threads:
        t.join(60)
    assert len(results) == 3
    for seen, lost in results:
        assert seen + lost == total


def test_a_wakeup_wakes_waiters_and_does_not_block_without_them() -> None:
    w = Wakeup()
    gen = w.generation
    w.notify()  # nobody waits: just counts
    assert w.wait(gen, 5.0) == gen + 1  # already moved on: no wait
    woke: list[int] = []
    t = threading.Thread(target=lambda: woke.append(w.wait(gen + 1, 5.0)))
    t.start()
    while not w._waiting:
        pass
    w.notify()
    t.join(5)
    assert woke == [gen + 2]
    assert w.wait(w.generation, 0.01) == w.generation  # a timeout, nothing new
