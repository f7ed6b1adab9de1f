"""The taskstats parser and the per-process fold, on bytes: real kernel datagrams and crafted ones.

The real datagrams were recorded from Linux 6.18 (struct version 16) by
TaskstatsListener's socket: a single-threaded C program that burned 0.3 s and
exited 7, and one whose main thread pthread_exit()ed first while three
threads went on, the last of which called exit(3).
"""

from __future__ import annotations

import base64
import itertools
import struct
import zlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from proctree_exporter import taskstats as ts
from proctree_exporter.taskstats import ExitFolder, ParseError, TaskExit, parse_datagram

FAMILY = 31  # the family id the recordings were made with
REASONS = {"truncated", "wrong_family", "bad_command", "bad_length", "bad_message",
           "old_version", "netlink_error"}

# length-prefixed datagrams, zlib, base64
SINGLE = (
    "eNoLYWJgCAFieQYGhnIGCGBiZGBwYGJh4GBgZDBjZmAwYWJmEABJsDMwKEDV6EDpil+VDMSAp7nCQiD6wL53giC6"
    "ODk1j4EEAHYHEFdE8mWD+LNPsEDcwccEposmQWhTNH2GhRB1niVcYDoFwmXw4YQq4GGgCGjDwgPNHTD/EgIw/2Dz"
    "L7I/Gf5B7TmoQJS7lrMYgOkvagwDAgA8vRqO")
LEADER_FIRST = (
    "eNoLYWJgCAFieQYGhgoGCGBiZGBwYGJh4GBgZLBjZmAwYWJmEGBABTpQ+pbwDnYGIsCKBeLMIPqoKz+YLk5OzWMg"
    "AYDdAcQVkXzZIP6980xg8Rc5EPkDsRDaGU1f+iMIrfZGBEz3sEL4MVlQBQIMFAFtKI3uDph/CQGYf7D5F9mfDP+g"
    "4X5QgSh3cV6LA9MTpBgGBIQgpatKLOnKHke6mg6l/bM0iXL5vJk3eUH0XbU33OSkK3touqqExsOVC5yQ8N/ECKZz"
    "b0JoFjR9F2ZCRJgKY8C0BxtauqIQTIOlAzR3wPxLCFQSSFevrnKSla5Ey7aD6QWqA5+uqrCkKwcc6WozlH5X5k9U"
    "ujpxKw9sxI0XDwXJSVcOaOnKPBecPBn27IDEo0UNJF8zoukTfgkpoBQX5NMkXW2C0ujugPmX0nQ1s4ibrHSlLOoN"
    "ppllBiZdTWGBYFC6qsGSrhyR0xWQDfNVH5ROO8IuTYw95wO1eUC0Xg155ZUjWrpaKgEpDqblQ+Lz/VpGrOlqvS6k"
    "vKpdFkTVdAWzpwdWbqG5A+ZfStPVOhVestLVS9svYPpj98CkKwcmVmD6YcLZjmKBVu+1Oy3CiTHvblq3Lrh9cfGk"
    "DjXcV6YGKcgr3CHlTkgiG13DB5Z+/jPi9+9AgYFOPwAy2Yeu")


def recorded(blob: str) -> list[bytes]:
    raw = zlib.decompress(base64.b64decode(blob))
    out, off = [], 0
    while off < len(raw):
        (n,) = struct.unpack_from("=I", raw, off)
        out.append(raw[off + 4:off + 4 + n])
        off += 4 + n
    return out


# --- crafting struct taskstats ------------------------------------------------

# Offsets from offsetof() on x86-64: <linux/taskstats.h> (every version but 15)
# and the version 15 struct (delay max/min after each delay total).
STD = {"version": (0, "H"), "exit_code": (4, "I"), "flag": (8, "B"), "cpu_ns": (72, "Q"),
       "comm": (80, "32s"), "tid": (128, "I"), "ppid": (132, "I"), "btime": (136, "I"),
       "etime": (144, "Q"), "utime": (152, "Q"), "stime": (160, "Q"), "minflt": (168, "Q"),
       "majflt": (176, "Q"), "rss_kib": (200, "Q"), "rchar": (216, "Q"), "wchar": (224, "Q"),
       "read_bytes": (248, "Q"), "write_bytes": (256, "Q"), "nvcsw": (272, "Q"),
       "nivcsw": (280, "Q"), "btime64": (344, "Q"), "tgid": (368, "I"), "tgetime": (376, "Q")}
V15 = {"version": (0, "H"), "exit_code": (4, "I"), "flag": (8, "B"), "cpu_ns": (120, "Q"),
       "comm": (128, "32s"), "tid": (176, "I"), "ppid": (180, "I"), "btime": (184, "I"),
       "etime": (192, "Q"), "utime": (200, "Q"), "stime": (208, "Q"), "minflt": (216, "Q"),
       "majflt": (224, "Q"), "rss_kib": (248, "Q"), "rchar": (264, "Q"), "wchar": (272, "Q"),
       "read_bytes": (296, "Q"), "write_bytes": (304, "Q"), "nvcsw": (320, "Q"),
       "nivcsw": (328, "Q"), "btime64": (424, "Q"), "tgid": (464, "I"), "tgetime": (472, "Q")}
NOW_S = 1_800_000_000  # the wall-clock second crafted records are written in


def stats(version: int = 16, size: int = 560, **values: int | bytes) -> bytes:
    layout = V15 if version == 15 else STD
    buf = bytearray(size)
    for name, value in {"version": version, **values}.items():
        off, code = layout[name]
        struct.pack_into("=" + code, buf, off, value)
    return bytes(buf)


def task(tid: int, tgid: int, *, last: bool = False, version: int = 16, started_us: int = 0,
         group_started_us: int = 0, **values: int | bytes) -> bytes:
    """A task's stats, written at NOW_S, for a task started ``started_us`` before that and
    a group started ``group_started_us`` before (btime64 as the kernel derives it)."""
    etime = values.pop("etime", started_us or 500_000)
    tgetime = values.pop("tgetime", group_started_us or etime)
    return stats(version, tid=tid, tgid=tgid, flag=ts.AGROUP if last else 0, etime=etime,
                 tgetime=tgetime, btime64=NOW_S - etime // 1_000_000,
                 btime=NOW_S - etime // 1_000_000, comm=values.pop("comm", b"worker"),
                 **values)


def message(task_stats: bytes, group_stats: bytes | None = None, *, family: int = FAMILY,
            null_pad: bool = False) -> bytes:
    """A TASKSTATS_CMD_NEW message: AGGR_PID, and AGGR_TGID when ``group_stats`` is given."""
    layout = V15 if struct.unpack_from("=H", task_stats)[0] == 15 else STD
    tid, tgid = (struct.unpack_from("=I", task_stats, layout[f][0])[0]
                 if len(task_stats) >= layout[f][0] + 4 else 0 for f in ("tid", "tgid"))
    attrs = ts.nla(ts.TASKSTATS_TYPE_NULL, b"") if null_pad else b""
    attrs += ts.nla(ts.TASKSTATS_TYPE_AGGR_PID, ts.nla(ts.TASKSTATS_TYPE_PID, struct.pack(
        "=I", tid)) + ts.nla(ts.TASKSTATS_TYPE_STATS, task_stats))
    if group_stats is not None:
        attrs += ts.nla(ts.TASKSTATS_TYPE_AGGR_TGID, ts.nla(ts.TASKSTATS_TYPE_TGID, struct.pack(
            "=I", tgid)) + ts.nla(ts.TASKSTATS_TYPE_STATS, group_stats))
    return ts.genl_message(family, ts.TASKSTATS_CMD_NEW, attrs)


def group_sum(cpu_ns: int, version: int = 0) -> bytes:
    """An AGGR_TGID stats as Linux 6.1 sends it: version 0, only the delay sums."""
    buf = bytearray(560)
    struct.pack_into("=HQ", buf, 0, version, 0)
    struct.pack_into("=Q", buf, 72, cpu_ns)
    return bytes(buf)


def fold(*datagrams: bytes, received_ns: int | None = None) -> list[TaskExit]:
    folder = ExitFolder(FAMILY, boot_offset_ns=0)
    return [r for d in datagrams for r in folder.feed(d, received_ns)]


# --- real datagrams -------------------------------------------------------------


def test_a_single_threaded_process_is_one_whole_record() -> None:
    (datagram,) = recorded(SINGLE)
    (rec,) = parse_datagram(datagram, FAMILY)
    assert (rec.pid, rec.tid, rec.ppid, rec.comm) == (822, 822, 820, "scen")
    assert rec.whole_group and rec.last_thread and rec.complete and rec.threads == 1
    assert rec.exit_code == 7 << 8  # a raw wait status: exit(7)
    # 0.3 s burned; user + system add up to the runtime, as getrusage() has them
    assert rec.cpu_ns == 300_859_072
    assert rec.cpu_user_us + rec.cpu_system_us in (rec.cpu_ns // 1000, rec.cpu_ns // 1000 - 1)
    assert rec.group_etime_us == rec.etime_us == 313_499
    assert rec.btime == rec.btime64 == 1_796_102_520
    assert rec.peak_rss_bytes == 1124 * 1024 and rec.minor_faults == 53 and rec.rchar == 3072
    assert rec.start_ticks is None  # no receipt time given
    assert fold(datagram) == [rec]


def test_threads_of_a_process_whose_main_thread_exited_first_fold_into_one_record() -> None:
    datagrams = recorded(LEADER_FIRST)
    tasks = [r for d in datagrams for r in parse_datagram(d, FAMILY)]
    assert [(t.tid, t.whole_group, t.last_thread) for t in tasks] == [
        (830, False, False), (831, False, False), (832, False, False), (833, False, True)]
    assert {t.pid for t in tasks} == {830}
    folder = ExitFolder(FAMILY)
    emitted = [folder.feed(d) for d in datagrams]
    assert emitted[:3] == [[], [], []] and folder.pending == 0
    (rec,) = emitted[3]
    assert (rec.pid, rec.tid, rec.threads) == (830, 833, 4)
    assert rec.whole_group and rec.last_thread and rec.complete
    assert rec.exit_code == 3 << 8  # the last thread's exit(3): what waitpid() said
    # the main thread names and dates the process; the last one ends it
    assert rec.btime == tasks[0].btime == 1_796_102_520 != tasks[3].btime
    assert rec.group_etime_us == tasks[3].group_etime_us == 861_358
    for field in ("cpu_ns", "rchar", "wchar", "read_bytes", "write_bytes", "minor_faults",
                  "major_faults", "voluntary_ctx_switches", "involuntary_ctx_switches"):
        assert getattr(rec, field) == sum(getattr(t, field) for t in tasks), field
    assert rec.peak_rss_bytes == max(t.peak_rss_bytes for t in tasks) == 1608 * 1024
    # user/system are split over the group's sums, not summed per thread
    assert rec.cpu_user_us + rec.cpu_system_us in (rec.cpu_ns // 1000, rec.cpu_ns // 1000 - 1)
    assert (rec.cpu_user_us, rec.cpu_system_us) == (340_232, 411_191)


def test_every_length_short_of_a_real_datagram_is_rejected_as_malformed() -> None:
    for datagram in recorded(SINGLE) + recorded(LEADER_FIRST):
        for n in range(len(datagram)):
            with pytest.raises(ParseError) as exc:
                parse_datagram(datagram[:n], FAMILY)
            assert exc.value.reason in {"truncated", "bad_length", "bad_message"}


# --- crafted datagrams: layouts ---------------------------------------------------


def test_every_field_is_read_from_its_place_in_the_struct() -> None:
    values = dict(exit_code=0x0B, cpu_ns=9_000_000, comm=b"a) b (c\0garbage", ppid=77,
                  utime=3000, stime=1000, minflt=11, majflt=12, rss_kib=5, rchar=13 * 1024,
                  wchar=14 * 1024, read_bytes=15 * 1024, write_bytes=16 * 1024, nvcsw=17,
                  nivcsw=18)
    for version in (12, 13, 14, 15, 16, 17):
        size = {12: 400, 13: 416, 14: 432}.get(version, 560 if version < 17 else 688)
        raw = task(42, 42, last=True, version=version, **values)
        raw = raw.ljust(size, b"\0")[:size] if version != 15 else raw
        (rec,) = parse_datagram(message(raw), FAMILY)
        assert rec == TaskExit(
            pid=42, tid=42, whole_group=True, last_thread=True, complete=True, ppid=77,
            comm="a) b (c", exit_code=0x0B, start_ticks=None, btime=NOW_S, btime64=NOW_S,
            etime_us=500_000, group_etime_us=500_000, cpu_user_us=6750, cpu_system_us=2250,
            cpu_ns=9_000_000, read_bytes=15 * 1024, write_bytes=16 * 1024, rchar=13 * 1024,
            wchar=14 * 1024, peak_rss_bytes=5 * 1024, voluntary_ctx_switches=17,
            involuntary_ctx_switches=18, minor_faults=11, major_faults=12, threads=1), version


def test_structs_older_than_version_12_cannot_tell_threads_apart_and_are_refused() -> None:
    with pytest.raises(ParseError) as exc:
        parse_datagram(message(stats(11, 352, tid=5)), FAMILY)
    assert exc.value.reason == "old_version"


def test_a_struct_shorter_than_its_version_says_is_refused() -> None:
    with pytest.raises(ParseError) as exc:
        parse_datagram(message(task(5, 5, last=True)[:383]), FAMILY)
    assert exc.value.reason == "bad_length"


def test_padding_attributes_and_the_nested_flag_are_understood() -> None:
    plain = message(task(5, 5, last=True))
    padded = message(task(5, 5, last=True), null_pad=True)
    flagged = bytearray(plain)
    struct.pack_into("=H", flagged, 22, ts.TASKSTATS_TYPE_AGGR_PID | 0x8000)  # NLA_F_NESTED
    noop = struct.pack("=IHHII", 16, ts.NLMSG_NOOP, 0, 0, 0)
    expected = parse_datagram(plain, FAMILY)
    assert parse_datagram(padded, FAMILY) == parse_datagram(bytes(flagged), FAMILY) == expected
    assert parse_datagram(noop + plain, FAMILY) == expected


def test_several_messages_in_one_datagram_are_all_read() -> None:
    both = message(task(5, 5, last=True)) + message(task(6, 6, last=True))
    assert [r.pid for r in parse_datagram(both, FAMILY)] == [5, 6]


@pytest.mark.parametrize("utime,stime,cpu_ns,expected", [
    (3000, 1000, 9_000_000, (6750, 2250)),  # samples 3:1, runtime 9 ms
    (0, 4000, 1_000_500, (0, 1000)),  # only system samples: all of it is system
    (4000, 0, 1_000_500, (1000, 0)),
    (0, 0, 700_000, (700, 0)),  # too short for any tick: counted as user, as the kernel does
    (4000, 8000, 0, (4000, 8000)),  # runtime not reported: the samples as they are
])
def test_cpu_is_split_like_getrusage(utime: int, stime: int, cpu_ns: int,
                                     expected: tuple[int, int]) -> None:
    assert ts.split_cpu(utime, stime, cpu_ns) == expected


def test_start_ticks_is_estimated_from_the_receipt_time() -> None:
    boot_offset = 7_000_000_000
    received = 100_000_000_000  # CLOCK_MONOTONIC
    raw = message(task(5, 5, last=True, etime=2_345_678))
    (rec,) = parse_datagram(raw, FAMILY, received_ns=received, boot_offset_ns=boot_offset)
    expected = (received + boot_offset - 2_345_678_000) * ts.CLOCK_TICKS // 1_000_000_000
    assert rec.start_ticks == expected
    folder = ExitFolder(FAMILY, boot_offset_ns=boot_offset)
    assert folder.feed(raw, received)[0].start_ticks == expected


# --- crafted datagrams: one record per process ---------------------------------


def threaded_process(tgid: int = 100, *, leader_first: bool, lost: int | None = None) -> list[
        bytes]:
    """The datagrams of a process with three more threads: 1 ms of CPU and 1 KiB written
    each, thread i started i seconds after the main thread, all exiting 10 s after."""
    tids = [tgid, tgid + 1, tgid + 2, tgid + 3]
    order = tids if leader_first else tids[1:] + tids[:1]
    group_cpu = 4 * 1_000_000
    out = []
    for i, tid in enumerate(order):
        last = i == len(order) - 1
        raw = task(tid, tgid, last=last, started_us=(10 - (tid - tgid)) * 1_000_000,
                   group_started_us=10_000_000, cpu_ns=1_000_000, utime=4000, wchar=1024,
                   rss_kib=100 * (i + 1), exit_code=256 if last else 0,
                   comm=b"main" if tid == tgid else b"worker")
        out.append(message(raw, group_sum(group_cpu) if last else None))
    if lost is not None:
        del out[lost]
    return out


@pytest.mark.parametrize("leader_first", [True, False])
def test_one_record_per_process_whichever_thread_exits_last(leader_first: bool) -> None:
    for order in itertools.permutations(threaded_process(leader_first=leader_first)[:3]):
        datagrams = [*order, threaded_process(leader_first=leader_first)[3]]
        folder = ExitFolder(FAMILY)
        records = [r for d in datagrams for r in folder.feed(d)]
        assert len(records) == 1 and folder.pending == 0
        (rec,) = records
        assert (rec.pid, rec.threads, rec.cpu_ns, rec.wchar) == (100, 4, 4_000_000, 4096)
        assert rec.whole_group and rec.complete and rec.exit_code == 256
        assert rec.comm == "main" and rec.peak_rss_bytes == 400 * 1024
        assert rec.tid == (103 if leader_first else 100)  # the one that exited last


def test_a_missing_thread_record_shows_in_the_kernel_group_sum() -> None:
    (rec,) = fold(*threaded_process(leader_first=True, lost=1))
    assert rec.threads == 3 and rec.cpu_ns == 3_000_000 and not rec.complete
    # the group's last record alone: its earlier threads exited before we listened
    (alone,) = fold(threaded_process(leader_first=True)[-1])
    assert alone.threads == 1 and alone.whole_group and not alone.complete


def test_a_kernel_that_sends_no_runtime_is_never_called_incomplete() -> None:
    datagrams = threaded_process(leader_first=True, lost=1)
    last = bytearray(datagrams[-1])
    # the AGGR_TGID stats are the last 560 bytes: zero its runtime
    struct.pack_into("=Q", last, len(last) - 560 + 72, 0)
    (rec,) = fold(*datagrams[:-1], bytes(last))
    assert rec.complete


def test_a_partial_sum_whose_end_was_lost_is_not_added_to_the_next_process_with_its_pid(
        ) -> None:
    folder = ExitFolder(FAMILY)
    # the process's three threads exit; its last record is lost in an overrun
    for d in threaded_process(leader_first=True)[:3]:
        assert folder.feed(d) == []
    # much later the pid is a new single-threaded process (started 3 s before its exit)
    (rec,) = folder.feed(message(task(100, 100, last=True, etime=3_000_000, cpu_ns=5)))
    assert rec.threads == 1 and rec.cpu_ns == 5 and folder.orphaned == 3
    assert folder.pending == 0


def test_a_thread_record_queued_after_its_process_ended_is_counted_late_and_dropped() -> None:
    folder = ExitFolder(FAMILY)
    datagrams = threaded_process(leader_first=False)
    straggler = datagrams.pop(1)
    (rec,) = [r for d in datagrams for r in folder.feed(d)]
    assert rec.threads == 3
    assert folder.feed(straggler) == [] and folder.late == 1 and folder.pending == 0


def test_partial_sums_are_bounded() -> None:
    folder = ExitFolder(FAMILY, max_pending=10)
    for tgid in range(1000, 1020):
        folder.feed(message(task(tgid + 1, tgid)))
    assert folder.pending == 10 and folder.evicted == 10


def test_our_own_partial_sum_can_be_forgotten() -> None:
    folder = ExitFolder(FAMILY)
    folder.feed(message(task(501, 500)))
    folder.forget(500)
    folder.forget(12345)  # nothing to forget: fine
    assert folder.pending == 0


# --- malformed input ------------------------------------------------------------


def reason(data: bytes) -> str:
    with pytest.raises(ParseError) as exc:
        parse_datagram(data, FAMILY)
    assert exc.value.reason in REASONS
    # a malformed datagram changes nothing in the fold
    folder = ExitFolder(FAMILY)
    folder.feed(message(task(9, 8)))
    with pytest.raises(ParseError):
        folder.feed(data)
    assert folder.pending == 1
    return exc.value.reason


def test_malformed_datagrams_are_rejected_with_a_reason() -> None:
    good = message(task(5, 5, last=True))
    assert reason(b"") == "truncated"
    assert reason(b"\0" * 20) == "truncated"  # nlmsg_len 0
    assert reason(message(task(5, 5, last=True), family=FAMILY + 1)) == "wrong_family"
    err = struct.pack("=IHHIIi", 36, ts.NLMSG_ERROR, 0, 1, 0, -1) + b"\0" * 16
    assert reason(err) == "netlink_error"
    cmd = bytearray(good)
    cmd[16] = ts.TASKSTATS_CMD_GET
    assert reason(bytes(cmd)) == "bad_command"
    zero_nla = bytearray(good)
    struct.pack_into("=H", zero_nla, 20, 0)
    assert reason(bytes(zero_nla)) == "truncated"
    assert reason(ts.genl_message(FAMILY, ts.TASKSTATS_CMD_NEW, b"")) == "bad_message"
    no_stats = ts.genl_message(FAMILY, ts.TASKSTATS_CMD_NEW, ts.nla(
        ts.TASKSTATS_TYPE_AGGR_PID, ts.nla(ts.TASKSTATS_TYPE_PID, struct.pack("=I", 5))))
    assert reason(no_stats) == "bad_message"
    other_pid = bytearray(good)
    struct.pack_into("=I", other_pid, 28, 6)  # the PID attribute says 6, the stats 5
    assert reason(bytes(other_pid)) == "bad_message"
    two = ts.genl_message(FAMILY, ts.TASKSTATS_CMD_NEW, good[20:] + good[20:])
    assert reason(two) == "bad_message"
    no_agroup = message(task(5, 5), group_sum(1))
    assert reason(no_agroup) == "bad_message"
    wrong_group = bytearray(message(task(5, 5, last=True), group_sum(1)))
    struct.pack_into("=I", wrong_group, len(wrong_group) - 560 - 8, 7)  # the TGID
    assert reason(bytes(wrong_group)) == "bad_message"
    short_group = message(task(5, 5, last=True), b"\0" * 60)
    assert reason(short_group) == "bad_length"
    short_id = ts.genl_message(FAMILY, ts.TASKSTATS_CMD_NEW, ts.nla(
        ts.TASKSTATS_TYPE_AGGR_PID, ts.nla(ts.TASKSTATS_TYPE_PID, b"\5\0") +
        ts.nla(ts.TASKSTATS_TYPE_STATS, task(5, 5))))
    assert reason(short_id) == "bad_length"
    one_byte = ts.genl_message(FAMILY, ts.TASKSTATS_CMD_NEW, ts.nla(
        ts.TASKSTATS_TYPE_AGGR_PID, ts.nla(ts.TASKSTATS_TYPE_PID, struct.pack("=I", 5)) +
        ts.nla(ts.TASKSTATS_TYPE_STATS, b"\x10")))
    assert reason(one_byte) == "bad_length"


@settings(max_examples=3000, deadline=None)
@given(st.binary(max_size=1300))
def test_arbitrary_bytes_never_raise_anything_but_parse_error(data: bytes) -> None:
    for parse in (lambda d: parse_datagram(d, FAMILY), ExitFolder(FAMILY).feed):
        try:
            records = parse(data)
        except ParseError as exc:
            assert exc.reason in REASONS
        else:
            assert all(isinstance(r, TaskExit) for r in records)


REAL = recorded(SINGLE) + recorded(LEADER_FIRST)


@settings(max_examples=3000, deadline=None)
@given(st.sampled_from(REAL),
       st.lists(st.tuples(st.integers(0, 1171), st.integers(0, 255)), min_size=1, max_size=8),
       st.integers(0, 1200))
def test_damaged_real_datagrams_never_raise_anything_but_parse_error(
        datagram: bytes, flips: list[tuple[int, int]], cut: int) -> None:
    damaged = bytearray(datagram)
    for pos, value in flips:
        damaged[pos % len(damaged)] = value
    folder = ExitFolder(FAMILY)
    for data in (bytes(damaged), bytes(damaged[:cut])):
        try:
            parse_datagram(memoryview(data), FAMILY, received_ns=10**12)
            folder.feed(memoryview(data), 10**12)
        except ParseError as exc:
            assert exc.reason in REASONS
