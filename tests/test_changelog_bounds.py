"""A root's change log is bounded in entries and in bytes: whichever is hit first drops
the oldest events, and a reader behind them is told how many it lost.

The bytes are an estimate per event (``changelog.event_bytes``); here it is held
against Python's own count (tracemalloc) for a mix of events made by the real
membership code. bench/changelog.py measures the same at full size.
"""

from __future__ import annotations

import gc
import threading
import tracemalloc

import pytest

from proctree_exporter.changelog import (
    EVENT_BYTES,
    ChangeLog,
    event_bytes,
    pack,
    record_bytes,
)
from proctree_exporter.config import Config, ConfigError, parse_config
from proctree_exporter.events import Ancestor, EventKind, RootEvent
from proctree_exporter.mirror import Mirrors, RootMirror
from proctree_exporter.rootspec import RootSpec

from .fakehost import Host

# the estimate errs high (a forked child's exe and command line are its parent's
# strings, counted anyway) and never far: bench/changelog.py measures 1.04 to 1.08
ESTIMATE_OVER_TRACED = (1.0, 1.2)


def exited(seq: int) -> RootEvent:
    return RootEvent(EventKind.EXITED, "r", seq, float(seq), 1000 + seq, 5000 + seq, "worker",
                     depth=1, exit_code=0)


def joined(seq: int, cmdline: str) -> RootEvent:
    return RootEvent(EventKind.JOINED, "r", seq, float(seq), 1000 + seq, 5000 + seq, "worker",
                     exe="/usr/bin/worker", cmdline=cmdline, uid=0, ppid=1, depth=1)


# an exited event as these tests make it: a record of the common fields, depth and
# exit code (trailing Nones are not held)
EXITED_BYTES = EVENT_BYTES + 2 * 8


def fill(log: ChangeLog, events: list[RootEvent]) -> None:
    for ev in events:
        log.append(ev)


def test_a_log_bounded_by_bytes_drops_the_oldest_once_over() -> None:
    log = ChangeLog("r", 1000, max_bytes=10 * EXITED_BYTES)
    assert event_bytes(exited(1)) == EXITED_BYTES
    fill(log, [exited(s) for s in range(1, 11)])
    assert (log.held, log.first_seq, log.bytes) == (10, 1, 10 * EXITED_BYTES)
    log.append(exited(11))  # one byte over: the oldest goes
    assert (log.held, log.first_seq, log.bytes) == (10, 2, 10 * EXITED_BYTES)
    fill(log, [exited(s) for s in range(12, 101)])
    assert [e.seq for e in log.since(0)[0]] == list(range(91, 101))
    assert log.bytes == sum(event_bytes(e) for e in log.since(0)[0]) <= log.max_bytes
    assert log.capacity == 10  # what a reader has to keep up with, not the 1000 slots


def test_bigger_events_leave_room_for_fewer() -> None:
    log = ChangeLog("r", 1000, max_bytes=100_000)
    fill(log, [joined(s, "x" * 2000) for s in range(1, 201)])
    each = event_bytes(joined(1, "x" * 2000))
    # a record of 15 fields (up to cmdline), pid, start and started_at, two strings
    assert each == EVENT_BYTES + 10 * 8 + 80 + (49 + len("/usr/bin/worker")) + (49 + 2000)
    assert log.held == 100_000 // each and log.bytes <= 100_000
    assert [e.seq for e in log.since(0)[0]] == list(range(201 - log.held, 201))


def test_the_entry_bound_still_holds_and_keeps_the_byte_count_exact() -> None:
    log = ChangeLog("r", 8, max_bytes=1 << 30)
    fill(log, [joined(s, "y" * (s % 7) * 10) if s % 2 else exited(s) for s in range(1, 51)])
    held = log.since(0)[0]
    assert [e.seq for e in held] == list(range(43, 51)) and log.capacity == 8
    assert log.bytes == sum(event_bytes(e) for e in held)


def test_the_newest_event_stays_even_when_it_alone_is_over_the_bound() -> None:
    log = ChangeLog("r", 100, max_bytes=1000)
    fill(log, [exited(1), joined(2, "z" * 5000)])
    assert [e.seq for e in log.since(0)[0]] == [2] and log.first_seq == 2
    log.append(exited(3))
    assert [e.seq for e in log.since(0)[0]] == [3]


def test_a_cursor_behind_the_byte_bound_gets_the_right_lost_count() -> None:
    log = ChangeLog("r", 1000, max_bytes=20 * EXITED_BYTES)
    fill(log, [exited(s) for s in range(1, 6)])
    cursor = 3  # read up to 3
    fill(log, [exited(s) for s in range(6, 51)])  # holds 31..50: 4..30 dropped
    got, lost = log.since(cursor)
    assert lost == 27 and [e.seq for e in got] == list(range(31, 51))
    got, lost = log.since(cursor, limit=5)
    assert lost == 27 and [e.seq for e in got] == list(range(31, 36))
    assert log.since(50) == ([], 0) and log.tail(3) == log.since(47)[0]


def test_non_ascii_text_is_counted_wide() -> None:
    narrow = event_bytes(joined(1, "a" * 100))
    wide = event_bytes(joined(1, "ä" * 100))
    assert wide - narrow == (80 + 400) - (49 + 100)


def test_readers_racing_a_byte_bounded_writer_see_every_event_once_or_count_it_lost() -> None:
    log = ChangeLog("r", 256, max_bytes=40 * EXITED_BYTES)
    events = [exited(s) if s % 3 else joined(s, "c" * (s % 500)) for s in range(1, 60_001)]
    results: list[tuple[int, int]] = []

    def reader() -> None:
        cursor = seen = lost = 0
        while cursor < len(events):
            got, gone = log.since(cursor, limit=50)
            lost += gone
            for i, ev in enumerate(got):
                assert ev.seq == cursor + 1 + (gone if i == 0 else 0)
                cursor = ev.seq
                seen += 1
            if gone and not got:
                cursor += gone
        results.append((seen, lost))

    threads = [threading.Thread(target=reader) for _ in range(3)]
    for t in threads:
        t.start()
    fill(log, events)
    for t in threads:
        t.join(60)
    assert len(results) == 3 and all(seen + lost == len(events) for seen, lost in results)
    assert log.bytes <= log.max_bytes


def test_a_mirror_behind_a_byte_bounded_log_relists_and_says_how_much_it_lost() -> None:
    h = Host()
    h.spawn("job")
    h.roots.add(RootSpec(name="r", select="pid", match=str(h.pid("job")),
                         change_log_max_bytes=30 * EVENT_BYTES))
    m = RootMirror(h.roots, "r")
    m.sync()
    cursor = m.seq
    for i in range(40):
        h.spawn(f"k{i}", "job")
        h.exit(f"k{i}")
    log = h.roots.log("r")
    assert log.max_events == 100_000 and log.held < 30 and log.bytes <= 30 * EVENT_BYTES
    events = m.sync()
    assert events[0].kind is EventKind.LOST and events[0].count == log.first_seq - 1 - cursor
    assert m.lost == events[0].count and m.seq == log.seq


def test_mirrors_keep_up_with_what_a_byte_bounded_log_holds() -> None:
    # Mirrors.keep_up syncs a mirror once the log has moved on by half its capacity:
    # the events the byte bound lets it hold, not change_log_size
    h = Host()
    h.spawn("job")
    h.roots.add(RootSpec(name="r", select="pid", match=str(h.pid("job")),
                         change_log_max_bytes=60 * EVENT_BYTES))
    mirrors = Mirrors(h.roots)
    m = mirrors.get("r")
    for i in range(200):
        h.spawn(f"k{i}", "job")
        h.exit(f"k{i}")
        mirrors.keep_up()
    log = h.roots.log("r")
    assert log.first_seq > 1 and m.seq >= log.first_seq  # events dropped, none unread
    m.sync()
    assert m.lost == 0 and m.relists == 1 and m.seq == log.seq


def test_the_estimate_is_close_to_what_python_counts_for_a_mix_of_events() -> None:
    gc.collect()
    tracemalloc.start()
    try:
        h = Host(RootSpec("job", "comm", "job", capture_cmdline=True, zombie_grace_s=0.5),
                 max_nodes=2000)
        h.spawn("sh", comm="bash", exe="/usr/bin/bash", cmdline="bash -l")
        for i in range(300):
            job = f"j{i}"
            h.spawn(job, "sh", comm="job", exe="/opt/bin/job", cmdline=f"/opt/bin/job --id {i}")
            for w in range(3):  # each step a fresh program, its strings fresh reads
                h.spawn(f"{job}.{w}", job, comm=f"step{w}", exe=f"/opt/bin/step{w}-{i}",
                        cmdline=f"/opt/bin/step{w}-{i} --job {i} --input /var/in/{i}.json")
            h.exit(job)  # orphans
            h.tick(0.05)
            h.exit(f"{job}.0")
            h.exit(f"{job}.1", signal=9)
            h.exit(f"{job}.2", reap=False)  # a zombie, then reaped
            h.tick(0.6, rounds=2)
            h.reap(f"{job}.2")
            h.tick(0.05)
        log = h.roots.log("job")
        kinds = {e.kind for e in log.since(0)[0]}
        estimate = log.bytes
        del h  # the log alone holds what it holds now
        gc.collect()
        before = tracemalloc.get_traced_memory()[0]
        del log
        gc.collect()
        traced = before - tracemalloc.get_traced_memory()[0]
    finally:
        tracemalloc.stop()
    assert {EventKind.JOINED, EventKind.EXEC, EventKind.EXITED, EventKind.CLASS,
            EventKind.REPARENTED, EventKind.ROOT_UP, EventKind.ROOT_DOWN,
            EventKind.RESTART} <= kinds
    low, high = ESTIMATE_OVER_TRACED
    assert low <= estimate / traced <= high, (estimate, traced)


def test_an_instance_join_counts_its_ancestors() -> None:
    ev = joined(1, "")._replace(depth=0, ancestors=(Ancestor(1, 1, "init", 0, False),) * 3)
    assert event_bytes(ev) - event_bytes(joined(1, "")) == 8 + 40 + 3 * 88


def test_the_config_key_reaches_the_log_and_the_host_root_has_its_own() -> None:
    cfg = parse_config("roots:\n  - name: a\n    select: pid\n    match: 1\n"
                       "    change_log_max_bytes: 1048576\n")
    assert cfg.roots[0].spec().change_log_max_bytes == 1 << 20
    h = Host(cfg.roots[0].spec())
    assert h.roots.log("a").max_bytes == 1 << 20
    defaults = {r.name: r.change_log_max_bytes for r in Config().roots}
    assert defaults == {"host": 16 << 20, "exporter": 64 << 20}
    with pytest.raises(ConfigError, match=r"roots\[0\] \(a\)\.change_log_max_bytes, line 5"):
        parse_config("roots:\n  - name: a\n    select: pid\n    match: 1\n"
                     "    change_log_max_bytes: 1000\n")


def test_the_log_gives_back_every_event_as_it_was_appended() -> None:
    # the log holds records (the fields each kind sets), not RootEvents: a reader
    # gets back the very event, for every kind the core makes, and an event with a
    # field its kind's record has no place for (or another root's name) is kept whole
    h = Host(RootSpec("job", "comm", "job", capture_cmdline=True, zombie_grace_s=0.5,
                      max_tombstones=1))
    h.spawn("sh", comm="bash", exe="/usr/bin/bash", cmdline="bash -l")
    for i in range(3):
        h.spawn(f"j{i}", "sh", comm="job", cmdline=f'job --name "\u00f6 {i}"\n')
        h.spawn(f"w{i}", f"j{i}", comm="step", cmdline="step")
        h.exec(f"w{i}", "step2", cmdline="step2 --x")
        h.exit(f"j{i}")
        h.tick(0.05)
        h.exit(f"w{i}", signal=9, reap=False)
        h.tick(0.6, rounds=2)
        h.reap(f"w{i}")
        h.tick(0.05)
    made = list(h.roots.relist("job").events)
    log = h.roots.log("job")
    h.roots.remove("job")
    made += log.since(0)[0]  # ends with root_removed
    assert {e.kind for e in made} >= {
        EventKind.JOINED, EventKind.EXEC, EventKind.EXITED, EventKind.CLASS,
        EventKind.REPARENTED, EventKind.ROOT_UP, EventKind.ROOT_DOWN, EventKind.RESTART,
        EventKind.LEFT, EventKind.ROOT_REMOVED}
    assert any(e.ancestors for e in made) and any(e.cmdline for e in made)
    odd = [RootEvent(EventKind.EXITED, "job", 0, 1.5, 7, 8, "x", exe="/odd", depth=1),
           RootEvent(EventKind.LEFT, "other", 0, 1.5, 7, 8, "x"),
           RootEvent(EventKind.LOST, "job", 0, 1.5, 0, 0, None, count=3)]
    log = ChangeLog("job", 1000)
    appended = []
    for seq, ev in enumerate([*made, *odd], start=1):
        appended.append(ev._replace(seq=seq))
        log.append(appended[-1])
    assert log.since(0) == (appended, 0)
    assert log.bytes == sum(record_bytes(pack(e, "job")) for e in appended)
    assert pack(odd[1], "job") is odd[1] and pack(odd[0], "job") is odd[0]
    whole = event_bytes(odd[0])  # kept whole: its 35 slots
    assert whole > event_bytes(odd[0]._replace(exe=None)) + 200
    with pytest.raises(ValueError, match="does not follow"):
        log.append(odd[1]._replace(seq=log.seq + 2))
