"""Taskstats exit records: what each process used, as the kernel reports it when it exits.

The kernel's generic netlink family ``TASKSTATS`` sends one message per exiting
task to every listener registered (TASKSTATS_CMD_GET with
TASKSTATS_CMD_ATTR_REGISTER_CPUMASK) for the CPU the task exits on. Layout of
one message (host byte order, attributes padded to 4 bytes)::

    nlmsghdr      len u32, type u16 (the family id), flags u16, seq u32, pid u32   16
    genlmsghdr    cmd u8 (TASKSTATS_CMD_NEW), version u8, reserved u16               4
    AGGR_PID      nest: PID u32 (the thread id) + STATS (struct taskstats)
    [AGGR_TGID]   nest: TGID u32 + STATS, only when a thread group dies (below)

Exactly once per process, as established on Linux 6.18 (taskstats struct
version 16) with tests/test_taskstats_kernel.py, and as kernel/taskstats.c
(taskstats_exit) reads:

* Every exiting task, thread or not, sends an AGGR_PID record of its own
  figures only. The record of the task that ends its thread group (the last
  one to exit, which need not be the leader: the main thread may
  pthread_exit first) carries AGROUP in ``ac_flag``.
* A group that had a second thread when one of its tasks exited
  (``signal->stats`` got allocated) also gets an AGGR_TGID nest in that last
  message. What it holds depends on the kernel. Here (6.18.44) it is struct
  version 16 with utime/stime/nvcsw/nivcsw, the delay-accounting fields and
  the elapsed times of all threads summed. Older kernel/taskstats.c (read,
  not run) adds only the delay-accounting fields in fill_tgid_exit() and
  leaves ``version`` 0 (a 2026 stable fix sets it). None sums IO, page faults
  or peak RSS, and none fills comm, pid, ppid or exit code.
  A group that never had a second thread sends no AGGR_TGID at all (nor does
  one whose sum the kernel failed to allocate): its one AGROUP record is the
  whole process.

So the one dependable whole-process figure is the sum of the group's
AGGR_PID records, and that is what :class:`ExitFolder` builds: it keeps a
partial sum per thread group from records without AGROUP and emits one
:class:`TaskExit` with ``whole_group`` set when the AGROUP record arrives,
exactly one per exited process whatever the order its threads exit in. The
AGGR_TGID nest serves as a check: its summed runtime (``cpu_run_virtual_total``)
is never more than ours unless a thread's record is missing (exited before
we listened, or dropped), and then the record says ``complete=False``.

CPU: ``ac_utime``/``ac_stime`` are the tick samples (task_cputime; 4 ms ticks
here): on a busy 2-CPU VM their sum was up to 18% off the true runtime of a
threaded process. getrusage() and /proc/PID/stat scale the two samples so that
they add up to the scheduler's runtime (``se.sum_exec_runtime``, the kernel's
cputime_adjust), and taskstats carries that runtime too, in
``cpu_run_virtual_total`` (filled without delay accounting switched on,
kernel.task_delayacct=0; absent without CONFIG_TASK_DELAY_ACCT). We apply the
same scaling to the group's sums, so ``cpu_user_us + cpu_system_us`` is
``cpu_ns`` and matches what the parent's getrusage(RUSAGE_CHILDREN) gains when
it reaps the process, less the few hundred microseconds the process still
runs in do_exit after its record is sent, and never including what that
process in turn reaped from its own children (RUSAGE_CHILDREN does add that).

What identity can be derived: the record has no start time in clock ticks.
``ac_btime``/``ac_btime64`` are whole seconds of wall clock (``now - etime``),
and ``ac_etime``/``ac_tgetime`` the task's and the group's elapsed
microseconds up to the moment the kernel wrote the record, in
CLOCK_MONOTONIC, which is not sent. Given the moment we received it,
``start_ticks`` is estimated as (receipt - ``ac_tgetime``) in CLOCK_BOOTTIME
ticks: late by however long the record waited in the socket (within one 10 ms
tick, the :data:`~proctree_exporter.identity.TICK_TOLERANCE` of any derived
start, when the reader polls :meth:`TaskstatsListener.fileno` and keeps up),
and late by any time the machine spent suspended during the process's life.
Match it with ``identity.same_start(exact=False)``. Exact to within the same
tick whatever the delay: the proc connector EXIT event of the same task
carries the kernel's own CLOCK_MONOTONIC timestamp, taken a little later in
do_exit; that minus ``group_etime_us`` is the start. What can be derived
kernel-side alone, with no clock of ours, is the start in wall-clock seconds:
``btime64 + etime_us // 10**6`` is exactly the second the record was written
in (the kernel subtracts whole seconds), so the group started
``group_etime_us`` before a moment within that second; the fold uses that to
tell two processes with one pid apart.

Why written by hand and not on pyroute2 (bench/taskstats.py,
bench/results/taskstats.txt: the same 2,500 recorded datagrams, one run):
pyroute2 0.9.7's taskstats module costs 14 times the CPU per record
(decoding and reading the fields, median 103 µs against our 7.6; 13 to 23
times across runs on a 2-CPU VM shared with other work), and on this kernel
it reads the struct short: it knows the v15 layout by name (delay max/min in
the middle, which v16 moved to the end) and reads every other version, 16
included, with a layout that stops before ``ac_btime64``, ``ac_tgid`` and
``ac_tgetime``, so it cannot tell which process a thread's record belongs
to; its ``ac_comm`` keeps its NUL padding. It has no fold of thread records
into processes. The rule is to write by hand only what no well-kept library
does: pyroute2 is well kept, but of this module its own docstring says "you
should not use it", and it would be a new dependency for one socket.

Parsing is pure (:func:`parse_datagram`, :class:`ExitFolder`: bytes in,
records out; anything malformed raises :class:`ParseError`).
:class:`TaskstatsListener` is the thin layer that touches the kernel.
"""

from __future__ import annotations

import errno
import os
import socket
import struct
import threading
import time
from collections.abc import Iterator
from typing import NamedTuple

from .clock import CLOCK_TICKS, boottime_offset_ns
from .netlink import netlink_drops, set_receive_buffer

NETLINK_GENERIC = 16
GENL_ID_CTRL = 0x10
CTRL_CMD_GETFAMILY = 3
CTRL_ATTR_FAMILY_ID = 1
CTRL_ATTR_FAMILY_NAME = 2
TASKSTATS_GENL_NAME = b"TASKSTATS"
TASKSTATS_GENL_VERSION = 1
TASKSTATS_CMD_GET = 1
TASKSTATS_CMD_NEW = 2
TASKSTATS_TYPE_PID = 1
TASKSTATS_TYPE_TGID = 2
TASKSTATS_TYPE_STATS = 3
TASKSTATS_TYPE_AGGR_PID = 4
TASKSTATS_TYPE_AGGR_TGID = 5
TASKSTATS_TYPE_NULL = 6  # padding, on architectures without efficient unaligned access
TASKSTATS_CMD_ATTR_PID = 1
TASKSTATS_CMD_ATTR_REGISTER_CPUMASK = 3
TASKSTATS_CMD_ATTR_DEREGISTER_CPUMASK = 4
NLMSG_NOOP = 1
NLMSG_ERROR = 2
NLM_F_REQUEST = 0x1
NLM_F_ACK = 0x4
NLA_TYPE_MASK = 0x3FFF  # without NLA_F_NESTED and NLA_F_NET_BYTEORDER
SOL_NETLINK = 270
NETLINK_NO_ENOBUFS = 5
AGROUP = 0x20  # <linux/acct.h>: the last task of its thread group (since struct version 12)

MIN_VERSION = 12  # ac_tgid, ac_tgetime and AGROUP: without them threads cannot be told apart
MAX_DATAGRAM = 65536
# /proc/net/netlink costs about 50 µs to read, and every scrape asks for `lost`
DROPS_MAX_AGE_S = 1.0
# Two estimates of one thread group's start (see _group_start_us) differ by less
# than a second; a partial sum further off belongs to an earlier process with the pid.
REUSE_TOLERANCE_US = 2_000_000
_TICK_NS = 1_000_000_000 // CLOCK_TICKS

_NL = struct.Struct("=IHHII")
_NLA = struct.Struct("=HH")
_U16 = struct.Struct("=H")
_U32 = struct.Struct("=I")
_I32 = struct.Struct("=i")
_Q = struct.Struct("=Q")


def _layout(fields: list[tuple[int, str]]) -> struct.Struct:
    """A Struct reading ``(offset, code)`` fields in order and skipping the bytes between."""
    fmt, pos = "=", 0
    for offset, code in fields:
        if offset < pos:
            raise ValueError(f"field at {offset} overlaps the previous one ending at {pos}")
        fmt += (f"{offset - pos}x" if offset > pos else "") + code
        pos = offset + struct.calcsize("=" + code)
    return struct.Struct(fmt)


def _stats_layout(basic: int, btime64: int, tgid: int) -> tuple[struct.Struct, int]:
    """The fields we read from a struct taskstats, and the offset of its runtime.

    The arguments shift the basic accounting fields, ``ac_btime64`` and
    ``ac_tgid``/``ac_tgetime`` from where every version but 15 has them.
    """
    return _layout([
        (0, "H"),  # version
        (4, "I"),  # ac_exitcode: a raw wait status
        (8, "B"),  # ac_flag
        (72 + basic, "Q"),  # cpu_run_virtual_total: se.sum_exec_runtime, ns
        (80 + basic, "32s"),  # ac_comm
        (128 + basic, "III"),  # ac_pid, ac_ppid, ac_btime
        (144 + basic, "QQQQQ"),  # ac_etime, ac_utime, ac_stime, ac_minflt, ac_majflt
        (200 + basic, "Q"),  # hiwater_rss, KiB
        (216 + basic, "QQ"),  # read_char, write_char
        (248 + basic, "QQ"),  # read_bytes, write_bytes
        (272 + basic, "QQ"),  # nvcsw, nivcsw
        (344 + btime64, "Q"),  # ac_btime64 (v10)
        (368 + tgid, "I"),  # ac_tgid (v12)
        (376 + tgid, "Q"),  # ac_tgetime (v12)
    ]), 72 + basic


# Every struct version appends to the last, except 15, which put delay max/min
# after each delay total; 16 moved them to the end (Linux 6.14.y stable fix).
# Offsets checked with offsetof() against <linux/taskstats.h> and a v15 copy.
_STATS, _RUNTIME_OFF = _stats_layout(0, 0, 0)
_STATS_V15, _RUNTIME_OFF_V15 = _stats_layout(48, 80, 96)


class ParseError(ValueError):
    """A datagram that is not a well-formed taskstats exit message from the kernel.

    ``reason`` is a short stable word for counting: truncated, wrong_family,
    bad_command, bad_length, bad_message, old_version, netlink_error.
    """

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason


class TaskExit(NamedTuple):
    """What one exited process used, from its taskstats exit records.

    From :class:`TaskstatsListener` and :class:`ExitFolder` every record is a
    whole process (``whole_group``): its threads' records summed, ``tid`` the
    thread that exited last. From :func:`parse_datagram` a record is one task
    as the kernel sent it; only a process that never had a second thread is
    whole then.

    ``pid`` is the thread group id: the process. ``exit_code`` is a raw wait
    status (see :func:`proctree_exporter.netlink.decode_wait_status`), of the
    task that ended the group, as its parent's wait() sees it. ``comm`` and
    ``btime``/``btime64`` (start, whole seconds of wall clock) are the main
    thread's when its record was seen. ``etime_us`` is the elapsed time of
    task ``tid``, ``group_etime_us`` of the process from its start to this exit
    (CLOCK_MONOTONIC, so without suspended time). ``start_ticks`` is an
    estimate (see the module docstring), None when the receipt time is unknown.

    ``cpu_user_us``/``cpu_system_us`` add up to ``cpu_ns`` as getrusage() and
    /proc/PID/stat scale them; on a kernel that does not report runtime
    (``cpu_ns`` 0) they are the raw tick samples. Byte counts are rounded
    down to whole KiB per thread by the kernel: ``read_bytes``/``write_bytes``
    are storage IO (bytes dirtied for writing, read from a device),
    ``rchar``/``wchar`` every byte through read/write-like calls.
    ``peak_rss_bytes`` is the address space's RSS high-water mark (since the
    last exec). ``threads`` is how many task records were summed: the
    process's thread count over its life when we listened throughout.
    ``complete`` is False when the kernel's own group totals show a thread's
    record missing.
    """

    pid: int
    tid: int
    whole_group: bool
    last_thread: bool
    complete: bool
    ppid: int
    comm: str
    exit_code: int
    start_ticks: int | None
    btime: int
    btime64: int
    etime_us: int
    group_etime_us: int
    cpu_user_us: int
    cpu_system_us: int
    cpu_ns: int
    read_bytes: int
    write_bytes: int
    rchar: int
    wchar: int
    peak_rss_bytes: int
    voluntary_ctx_switches: int
    involuntary_ctx_switches: int
    minor_faults: int
    major_faults: int
    threads: int


_new_exit = tuple.__new__


def split_cpu(utime_us: int, stime_us: int, cpu_ns: int) -> tuple[int, int]:
    """Tick-sampled user and system µs scaled to add up to ``cpu_ns``, as the kernel's
    cputime_adjust does for getrusage() and /proc/PID/stat. ``cpu_ns`` 0 (not reported)
    leaves the samples as they are."""
    if cpu_ns <= 0:
        return utime_us, stime_us
    if stime_us == 0:
        return cpu_ns // 1000, 0
    if utime_us == 0:
        return 0, cpu_ns // 1000
    system_ns = stime_us * cpu_ns // (stime_us + utime_us)
    return (cpu_ns - system_ns) // 1000, system_ns // 1000


def _group_start_us(btime64: int, etime: int, tgetime: int) -> int:
    """When the thread group started, wall clock µs, from one of its records alone.

    The kernel computes ``ac_btime64`` as the wall-clock second it writes the
    record minus the task's elapsed whole seconds, so that second is
    ``btime64 + etime // 10**6`` exactly, and the group started ``tgetime`` µs
    before a moment within it: an estimate up to one second early, whatever
    the queueing delay (only a wall clock step or a suspend between two
    records of one process moves it).
    """
    return (btime64 + etime // 1_000_000) * 1_000_000 - tgetime


def _comm(raw: bytes) -> str:
    return raw.split(b"\0", 1)[0].decode("utf-8", "replace")


# --- parsing ----------------------------------------------------------------

# One task's record as read: the _STATS fields (version first), then whether it
# ended its group, then the AGGR_TGID nest's summed runtime (None without one).
_Raw = tuple[tuple, bool, int | None]


def _nest(data: bytes | bytearray | memoryview, start: int, end: int,
          id_type: int) -> tuple[int, int, int]:
    """The id and the stats payload (offset, length) of an AGGR_PID/AGGR_TGID nest."""
    ident = stats_off = stats_len = -1
    off = start
    while off < end:
        if end - off < 4:
            raise ParseError("truncated", f"{end - off} bytes left in a nest, an attribute "
                             "needs 4")
        nla_len, nla_type = _NLA.unpack_from(data, off)
        if nla_len < 4 or nla_len > end - off:
            raise ParseError("truncated", f"attribute length {nla_len} with {end - off} "
                             "bytes left in the nest")
        nla_type &= NLA_TYPE_MASK
        if nla_type == id_type:
            if nla_len != 8:
                raise ParseError("bad_length", f"id attribute of {nla_len - 4} bytes")
            ident = _U32.unpack_from(data, off + 4)[0]
        elif nla_type == TASKSTATS_TYPE_STATS:
            stats_off, stats_len = off + 4, nla_len - 4
        off += (nla_len + 3) & ~3
    if ident < 0 or stats_off < 0:
        raise ParseError("bad_message", "nest without its id or its stats")
    return ident, stats_off, stats_len


def _stats(data: bytes | bytearray | memoryview, off: int, length: int) -> tuple:
    """The fields of one struct taskstats, by its version."""
    if length < 2:
        raise ParseError("bad_length", f"struct taskstats of {length} bytes")
    version = _U16.unpack_from(data, off)[0]
    if version < MIN_VERSION:
        raise ParseError("old_version", f"struct taskstats version {version}, "
                         f"{MIN_VERSION} or later needed to tell threads from processes")
    layout = _STATS_V15 if version == 15 else _STATS
    if length < layout.size:
        raise ParseError("bad_length", f"struct taskstats version {version} of {length} "
                         f"bytes, needs {layout.size}")
    return layout.unpack_from(data, off)


def _message(data: bytes | bytearray | memoryview, start: int, end: int) -> _Raw:
    """One TASKSTATS_CMD_NEW message's attributes (after the genl header)."""
    task = None
    group: tuple[int, int, int] | None = None
    off = start
    while off < end:
        if end - off < 4:
            raise ParseError("truncated", f"{end - off} bytes left, an attribute needs 4")
        nla_len, nla_type = _NLA.unpack_from(data, off)
        if nla_len < 4 or nla_len > end - off:
            raise ParseError("truncated", f"attribute length {nla_len} with {end - off} "
                             "bytes left")
        nla_type &= NLA_TYPE_MASK
        if nla_type == TASKSTATS_TYPE_AGGR_PID:
            if task is not None:
                raise ParseError("bad_message", "two AGGR_PID records in one message")
            tid, s_off, s_len = _nest(data, off + 4, off + nla_len, TASKSTATS_TYPE_PID)
            task = _stats(data, s_off, s_len)
            if task[5] != tid:
                raise ParseError("bad_message", f"AGGR_PID {tid} holds the stats of {task[5]}")
        elif nla_type == TASKSTATS_TYPE_AGGR_TGID:
            if group is not None:
                raise ParseError("bad_message", "two AGGR_TGID records in one message")
            group = _nest(data, off + 4, off + nla_len, TASKSTATS_TYPE_TGID)
        off += (nla_len + 3) & ~3  # TASKSTATS_TYPE_NULL padding and newer types: skipped
    if task is None:
        raise ParseError("bad_message", "no AGGR_PID record: not an exit message")
    last = bool(task[2] & AGROUP)
    if group is None:
        return task, last, None
    tgid, g_off, g_len = group
    if tgid != task[21]:
        raise ParseError("bad_message", f"AGGR_TGID {tgid} with the task of group {task[21]}")
    if not last:
        raise ParseError("bad_message", "AGGR_TGID without AGROUP on its task")
    # The group's own version field is 0 on kernels without a 2026 stable fix (it was
    # never set): read its struct by the task's version, from the same kernel.
    runtime_off = _RUNTIME_OFF_V15 if task[0] == 15 else _RUNTIME_OFF
    if g_len < runtime_off + 8:
        raise ParseError("bad_length", f"AGGR_TGID stats of {g_len} bytes")
    return task, last, _Q.unpack_from(data, g_off + runtime_off)[0]


def _records(data: bytes | bytearray | memoryview, family_id: int) -> list[_Raw]:
    """Every exit message in one datagram, as read."""
    size = len(data)
    if size == 0:
        raise ParseError("truncated", "empty datagram")
    out = []
    off = 0
    while off < size:
        if size - off < _NL.size + 4:
            raise ParseError("truncated", f"{size - off} bytes left, a message needs "
                             f"{_NL.size + 4}")
        nl_len, nl_type, _flags, _seq, _port = _NL.unpack_from(data, off)
        if nl_len < _NL.size or nl_len > size - off:
            raise ParseError("truncated", f"nlmsg_len {nl_len} with {size - off} bytes left")
        if nl_type == NLMSG_ERROR:
            err = -_I32.unpack_from(data, off + 16)[0] if nl_len >= 20 else 0
            raise ParseError("netlink_error", f"NLMSG_ERROR {err}" if err else "an ACK")
        if nl_type != NLMSG_NOOP:
            if nl_type != family_id:
                raise ParseError("wrong_family", f"message type {nl_type}, family is {family_id}")
            if nl_len < _NL.size + 4:
                raise ParseError("bad_length", f"nlmsg_len {nl_len} without a genl header")
            if data[off + 16] != TASKSTATS_CMD_NEW:
                raise ParseError("bad_command", f"genl command {data[off + 16]}")
            out.append(_message(data, off + 20, off + nl_len))
        off += (nl_len + 3) & ~3
    return out


def parse_datagram(data: bytes | bytearray | memoryview, family_id: int, *,
                   received_ns: int | None = None,
                   boot_offset_ns: int = 0) -> list[TaskExit]:
    """Every task record in one datagram, one :class:`TaskExit` each, as the kernel sent them.

    A thread's record is just that thread (``whole_group`` False); feed the
    datagrams to :class:`ExitFolder` for one record per process. ``received_ns``
    is CLOCK_MONOTONIC at receipt and ``boot_offset_ns`` CLOCK_BOOTTIME minus
    CLOCK_MONOTONIC; with them ``start_ticks`` is estimated. Raises
    :class:`ParseError` for anything malformed: the whole datagram is dropped.
    """
    out = []
    for task, last, group_cpu in _records(data, family_id):
        (_v, exit_code, _flag, cpu_ns, comm, tid, ppid, btime, etime, utime, stime, minflt,
         majflt, rss_kib, rchar, wchar, rbytes, wbytes, nvcsw, nivcsw, btime64, tgid,
         tgetime) = task
        user, system = split_cpu(utime, stime, cpu_ns)
        start = (None if received_ns is None
                 else (received_ns + boot_offset_ns - tgetime * 1000) // _TICK_NS)
        whole = last and group_cpu is None
        out.append(_new_exit(TaskExit, (
            tgid, tid, whole, last, True, ppid, _comm(comm), exit_code, start, btime, btime64,
            etime, tgetime, user, system, cpu_ns, rbytes, wbytes, rchar, wchar, rss_kib * 1024,
            nvcsw, nivcsw, minflt, majflt, 1)))
    return out


# --- one record per process ----------------------------------------------------


class _Partial:
    """The summed records of a thread group's tasks that exited so far."""

    __slots__ = ("btime", "btime64", "comm", "cpu_ns", "group_start_us", "majflt", "minflt",
                 "nivcsw", "nvcsw", "rbytes", "rchar", "rss_kib", "stime", "threads", "utime",
                 "wbytes", "wchar")

    def __init__(self, group_start_us: int) -> None:
        self.group_start_us = group_start_us
        self.threads = self.utime = self.stime = self.cpu_ns = 0
        self.rchar = self.wchar = self.rbytes = self.wbytes = self.rss_kib = 0
        self.nvcsw = self.nivcsw = self.minflt = self.majflt = 0
        self.comm: bytes | None = None
        self.btime = self.btime64 = 0

    def add(self, task: tuple) -> None:
        (_v, _code, _flag, cpu_ns, comm, tid, _ppid, btime, _etime, utime, stime, minflt, majflt,
         rss_kib, rchar, wchar, rbytes, wbytes, nvcsw, nivcsw, btime64, tgid, _tgetime) = task
        self.threads += 1
        self.utime += utime
        self.stime += stime
        self.cpu_ns += cpu_ns
        self.rchar += rchar
        self.wchar += wchar
        self.rbytes += rbytes
        self.wbytes += wbytes
        self.rss_kib = max(self.rss_kib, rss_kib)  # one address space: its high-water mark
        self.nvcsw += nvcsw
        self.nivcsw += nivcsw
        self.minflt += minflt
        self.majflt += majflt
        if tid == tgid:  # the main thread names and dates the process
            self.comm, self.btime, self.btime64 = comm, btime, btime64


class ExitFolder:
    """Folds taskstats exit datagrams into exactly one :class:`TaskExit` per exited process.

    Pure but for its memory: feed it datagrams in the order received. Records of
    threads that exit before their group ends wait in a partial sum per thread
    group (at most ``max_pending`` groups; the oldest goes first, counted in
    ``evicted``). A partial whose group's last record never comes (dropped by
    an overrun) is discarded when its pid shows up again for another process,
    counted in ``orphaned`` (thread records).

    A thread that exits together with its group's last thread (exit_group, a
    fatal signal) could have its record queued after the last one: the kernel
    decides which task is last before either sends (not seen in 2,000 8-thread
    exit_group storms here, but nothing orders them). Such a record arriving
    after its process was emitted is counted in ``late`` and dropped: it cannot
    be added to a record already handed out. The kernel's own group sum
    usually counted it, and then that record said ``complete=False``.

    Both checks tell processes sharing a pid apart by the group start each
    record implies (:func:`_group_start_us`): kernel-side, so right to within
    a second however late we read, and more than two seconds apart for two
    processes unless the first lived less than that and lost its last record.
    """

    ENDED_KEPT = 4096  # groups remembered after their end, to recognise late records

    def __init__(self, family_id: int, *, max_pending: int = 65536,
                 boot_offset_ns: int | None = None) -> None:
        self.family_id = family_id
        self.max_pending = max_pending
        # CLOCK_BOOTTIME - CLOCK_MONOTONIC, for start_ticks: refresh after a suspend.
        self.boot_offset_ns = boottime_offset_ns() if boot_offset_ns is None else boot_offset_ns
        self.evicted = 0
        self.orphaned = 0
        self.late = 0
        self._pending: dict[int, _Partial] = {}
        self._ended: dict[int, int] = {}  # tgid -> group start (wall µs), oldest first

    @property
    def pending(self) -> int:
        """Thread groups with exited threads whose last thread has not exited yet."""
        return len(self._pending)

    def forget(self, tgid: int) -> None:
        """Drop the partial sum of one thread group (say, our own: we never see it end)."""
        self._pending.pop(tgid, None)

    def feed(self, data: bytes | bytearray | memoryview,
             received_ns: int | None = None) -> list[TaskExit]:
        """The processes whose exit this datagram completes.

        ``received_ns`` is CLOCK_MONOTONIC when it was received, for
        ``start_ticks`` (None without it). Raises :class:`ParseError` for a
        malformed datagram, which then changes nothing.
        """
        out = []
        pending = self._pending
        for task, last, group_cpu in _records(data, self.family_id):
            tgid = task[21]
            group_start = _group_start_us(task[20], task[8], task[22])
            partial = pending.get(tgid)
            if partial is not None and abs(partial.group_start_us - group_start) > \
                    REUSE_TOLERANCE_US:
                del pending[tgid]  # an earlier process with this pid; its end was lost
                self.orphaned += partial.threads
                partial = None
            if not last:
                if partial is None:
                    ended = self._ended.get(tgid)
                    if ended is not None and abs(ended - group_start) <= REUSE_TOLERANCE_US:
                        self.late += 1
                        continue
                    if len(pending) >= self.max_pending:
                        del pending[next(iter(pending))]
                        self.evicted += 1
                    partial = pending[tgid] = _Partial(group_start)
                partial.add(task)
                continue
            if partial is None:
                out.append(self._single(task, group_cpu, received_ns))
            else:
                del pending[tgid]
                partial.add(task)
                out.append(self._folded(partial, task, group_cpu, received_ns))
            if group_cpu is not None:  # only a group that had threads can have a late one
                ended = self._ended
                ended.pop(tgid, None)
                ended[tgid] = group_start
                if len(ended) > self.ENDED_KEPT:
                    del ended[next(iter(ended))]
        return out

    def _start_ticks(self, received_ns: int | None, tgetime: int) -> int | None:
        if received_ns is None:
            return None
        return (received_ns + self.boot_offset_ns - tgetime * 1000) // _TICK_NS

    def _single(self, task: tuple, group_cpu: int | None, received_ns: int | None) -> TaskExit:
        """The last task of a group none of whose other tasks we saw."""
        (_v, exit_code, _flag, cpu_ns, comm, tid, ppid, btime, etime, utime, stime, minflt,
         majflt, rss_kib, rchar, wchar, rbytes, wbytes, nvcsw, nivcsw, btime64, tgid,
         tgetime) = task
        user, system = split_cpu(utime, stime, cpu_ns)
        complete = group_cpu is None or group_cpu <= cpu_ns
        return _new_exit(TaskExit, (
            tgid, tid, True, True, complete, ppid, _comm(comm), exit_code,
            self._start_ticks(received_ns, tgetime), btime, btime64, etime, tgetime, user, system,
            cpu_ns, rbytes, wbytes, rchar, wchar, rss_kib * 1024, nvcsw, nivcsw, minflt, majflt,
            1))

    def _folded(self, p: _Partial, task: tuple, group_cpu: int | None,
                received_ns: int | None) -> TaskExit:
        """A group's summed records, completed by its last task's ``task``."""
        (_v, exit_code, _flag, _cpu, comm, tid, ppid, btime, etime, *_sums, btime64, tgid,
         tgetime) = task
        if p.comm is not None:
            comm, btime, btime64 = p.comm, p.btime, p.btime64
        user, system = split_cpu(p.utime, p.stime, p.cpu_ns)
        # Each task's record reads its runtime after the kernel added it to the group's sum,
        # so ours is at least the kernel's unless a record is missing.
        complete = group_cpu is None or group_cpu <= p.cpu_ns
        return _new_exit(TaskExit, (
            tgid, tid, True, True, complete, ppid, _comm(comm), exit_code,
            self._start_ticks(received_ns, tgetime), btime, btime64, etime, tgetime, user, system,
            p.cpu_ns, p.rbytes, p.wbytes, p.rchar, p.wchar, p.rss_kib * 1024, p.nvcsw, p.nivcsw,
            p.minflt, p.majflt, p.threads))


# --- building messages (what we send, and what tests feed the parser) -------


def nla(nla_type: int, payload: bytes) -> bytes:
    """One netlink attribute, padded to 4 bytes."""
    head = _NLA.pack(4 + len(payload), nla_type)
    return head + payload + b"\0" * (-len(payload) % 4)


def genl_message(family_id: int, cmd: int, attrs: bytes, *, seq: int = 0, port: int = 0,
                 flags: int = 0, version: int = TASKSTATS_GENL_VERSION) -> bytes:
    """A generic netlink message around ``attrs``."""
    body = struct.pack("=BBH", cmd, version, 0) + attrs
    return _NL.pack(_NL.size + len(body), family_id, flags, seq, port) + body


# --- the socket ---------------------------------------------------------------


class TaskstatsUnavailable(OSError):
    """Taskstats exit records cannot be had here; ``strerror`` says why."""


def possible_cpus(path: str = "/sys/devices/system/cpu/possible") -> str:
    """The CPUs that can ever be online, as a cpulist ("0-1").

    Without sysfs, every CPU up to the count Python sees (which may miss ones
    hot-plugged later).
    """
    try:
        with open(path, encoding="ascii") as f:
            return f.read().strip()
    except OSError:
        return f"0-{max(os.cpu_count() or 1, 1) - 1}"


class TaskstatsListener:
    """A registered taskstats exit listener: one :class:`TaskExit` per exited process.

    Opening resolves the family id (CTRL_CMD_GETFAMILY), asks the kernel for
    this process's own record to learn the struct version it sends, registers
    for exits on ``cpumask`` and checks that a record really arrives (a thread
    of ours exits). Failing any step raises :class:`TaskstatsUnavailable` with
    the reason: no CONFIG_TASKSTATS, no CAP_NET_ADMIN, not in the initial user
    and PID namespaces (the kernel refuses), records not delivered (not in the
    initial network namespace, where the kernel sends them), or a kernel older
    than struct version 12.

    The default ``cpumask`` is every *possible* CPU, not only the online ones:
    the kernel sends a record to the listeners of the CPU the task exits on, so
    a CPU brought online later would otherwise lose its exits unnoticed.

    Loss is visible: NETLINK_NO_ENOBUFS stays off, so an overrun reports
    ENOBUFS (``overruns``, episodes) and ``lost`` is the kernel's own count of
    messages dropped for this socket (one per exiting task).

    Also: ``family_id``; ``version``, the struct version the kernel sends;
    ``exact_cpu``, whether it reports runtime (else CPU is tick samples);
    ``cpumask``; ``rcvbuf_bytes``, the receive buffer granted (getsockopt's
    figure, twice what was asked) and ``rcvbuf_forced`` (SO_RCVBUFFORCE was
    allowed, else rmem_max capped it); ``malformed`` and ``spoofed``
    datagrams dropped; ``folder``, the :class:`ExitFolder` with its
    ``pending``, ``orphaned``, ``late`` and ``evicted``.
    """

    def __init__(self, *, rcvbuf_bytes: int = 8 << 20, cpumask: str | None = None,
                 timeout_s: float = 1.0, max_pending: int = 65536) -> None:
        try:
            self.sock = socket.socket(socket.AF_NETLINK, socket.SOCK_DGRAM, NETLINK_GENERIC)
        except OSError as exc:
            raise TaskstatsUnavailable(exc.errno, f"cannot open a NETLINK_GENERIC socket: "
                                       f"{exc.strerror}") from None
        self._buf = bytearray(MAX_DATAGRAM)
        self._view = memoryview(self._buf)
        self._seq = 0
        self._registered = False
        self._backlog: list[TaskExit] = []
        self.overruns = 0
        self.malformed = 0
        self.spoofed = 0
        self._drops: tuple[float, int, int | None] | None = None  # (when, overruns, Drops)
        try:
            self.rcvbuf_forced = self._set_rcvbuf(rcvbuf_bytes)
            self.rcvbuf_bytes = self.sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF)
            # Off (the default, said out loud): an overrun must report ENOBUFS.
            self.sock.setsockopt(SOL_NETLINK, NETLINK_NO_ENOBUFS, 0)
            self.sock.bind((0, 0))
            self.port_id = self.sock.getsockname()[0]
            self.inode = os.fstat(self.sock.fileno()).st_ino
            self.sock.settimeout(timeout_s)
            self._timeout_s = timeout_s
            self.family_id = self._resolve_family()
            self.folder = ExitFolder(self.family_id, max_pending=max_pending)
            self.version, self.exact_cpu = self._probe_version()
            self.cpumask = cpumask or possible_cpus()
            self._register()
            self._await_delivery()
            self.sock.setblocking(False)
        except BaseException:
            self.close()
            raise

    # -- opening

    def _set_rcvbuf(self, size: int) -> bool:
        return set_receive_buffer(self.sock, size)

    def _request(self, family: int, cmd: int, attrs: bytes, what: str) -> bytes | None:
        """Send one request with NLM_F_ACK; the reply's attributes (None for a bare ACK).

        Exit records arriving meanwhile are folded into the backlog for :meth:`read`.
        """
        self._seq += 1
        seq = self._seq
        try:
            self.sock.send(genl_message(family, cmd, attrs, seq=seq, port=self.port_id,
                                        flags=NLM_F_REQUEST | NLM_F_ACK))
        except OSError as exc:
            raise TaskstatsUnavailable(exc.errno, f"{what}: send failed: {exc.strerror}") \
                from None
        reply = None
        for data in self._receive(what):
            r_seq, r_port = _NL.unpack_from(data, 0)[3:]
            if r_port != self.port_id or r_seq != seq:
                self._fold(data)  # an exit record (the kernel's own port id 0)
                continue
            off = 0
            while off + _NL.size <= len(data):
                nl_len, nl_type = _NL.unpack_from(data, off)[:2]
                if nl_len < _NL.size:
                    break
                if nl_type == NLMSG_ERROR:
                    err = -_I32.unpack_from(data, off + 16)[0]
                    if err:
                        raise TaskstatsUnavailable(err, self._refusal(what, err))
                    return reply
                reply = bytes(data[off + 20:off + nl_len])
                off += (nl_len + 3) & ~3
        raise AssertionError("unreachable")  # _receive raises on timeout

    def _receive(self, what: str) -> Iterator[memoryview]:
        """Datagrams from the kernel until the timeout (then TaskstatsUnavailable)."""
        deadline = time.monotonic() + self._timeout_s
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TaskstatsUnavailable(errno.ETIMEDOUT, f"{what}: no answer from the "
                                           f"kernel within {self._timeout_s:g}s")
            self.sock.settimeout(remaining)
            try:
                n, (sender, _groups) = self.sock.recvfrom_into(self._buf)
            except TimeoutError:
                continue
            except OSError as exc:
                if exc.errno == errno.ENOBUFS:
                    self.overruns += 1
                    continue
                raise TaskstatsUnavailable(exc.errno, f"{what}: recv failed: "
                                           f"{exc.strerror}") from None
            if sender != 0:
                self.spoofed += 1
                continue
            if n >= _NL.size:
                yield self._view[:n]

    @staticmethod
    def _refusal(what: str, err: int) -> str:
        if err == errno.EPERM:
            return (f"{what}: refused (EPERM): taskstats needs CAP_NET_ADMIN in the initial "
                    f"user namespace")
        if err == errno.ENOENT:
            return (f"{what}: the kernel has no TASKSTATS generic netlink family "
                    f"(built without CONFIG_TASKSTATS)")
        if err == errno.EINVAL:
            return (f"{what}: refused (EINVAL): exit records go only to listeners in the "
                    f"initial user and PID namespaces (or the cpumask names CPUs that are "
                    f"not possible)")
        return f"{what}: refused: {os.strerror(err)}"

    def _resolve_family(self) -> int:
        reply = self._request(GENL_ID_CTRL, CTRL_CMD_GETFAMILY,
                              nla(CTRL_ATTR_FAMILY_NAME, TASKSTATS_GENL_NAME + b"\0"),
                              "resolving the TASKSTATS family")
        for nla_type, value in _attrs(reply or b""):
            if nla_type == CTRL_ATTR_FAMILY_ID and len(value) >= 2:
                return int(_U16.unpack_from(value)[0])
        raise TaskstatsUnavailable(errno.ENOENT, "the generic netlink controller answered "
                                   "without a TASKSTATS family id")

    def _probe_version(self) -> tuple[int, bool]:
        """The struct version the kernel sends, and whether it reports runtime in ns."""
        reply = self._request(self.family_id, TASKSTATS_CMD_GET,
                              nla(TASKSTATS_CMD_ATTR_PID, _U32.pack(os.getpid())),
                              "asking for this process's taskstats")
        for nla_type, value in _attrs(reply or b""):
            if nla_type == TASKSTATS_TYPE_AGGR_PID:
                for sub_type, stats in _attrs(value):
                    if sub_type == TASKSTATS_TYPE_STATS and len(stats) >= 2:
                        version = _U16.unpack_from(stats)[0]
                        if version < MIN_VERSION:
                            raise TaskstatsUnavailable(
                                errno.ENOTSUP, f"the kernel sends taskstats struct version "
                                f"{version}; {MIN_VERSION} or later is needed to tell a "
                                f"thread's exit from its process's")
                        try:
                            task = _stats(stats, 0, len(stats))
                        except ParseError as exc:
                            raise TaskstatsUnavailable(errno.EPROTO, str(exc)) from None
                        return version, task[3] > 0
        raise TaskstatsUnavailable(errno.EPROTO, "the kernel answered a taskstats query "
                                   "without stats")

    def _register(self) -> None:
        self._request(self.family_id, TASKSTATS_CMD_GET,
                      nla(TASKSTATS_CMD_ATTR_REGISTER_CPUMASK, self.cpumask.encode() + b"\0"),
                      f"registering for exits on CPUs {self.cpumask}")
        self._registered = True

    def _await_delivery(self) -> None:
        """Let a thread of ours exit and wait for its record."""
        probe = threading.Thread(target=lambda: None, name="taskstats-probe")
        probe.start()
        probe.join()
        tid = probe.native_id
        what = "waiting for a test thread's exit record"
        try:
            for data in self._receive(what):
                try:
                    tids = [task[5] for task, _last, _g in _records(data, self.family_id)]
                except ParseError:
                    tids = []
                self._fold(data)
                if tid in tids:
                    self.folder.forget(os.getpid())
                    return
        except TaskstatsUnavailable as exc:
            if exc.errno != errno.ETIMEDOUT:
                raise
            raise TaskstatsUnavailable(errno.ETIMEDOUT, f"registered, but no exit record "
                                       f"arrived within {self._timeout_s:g}s (not in the "
                                       f"initial network namespace?)") from None

    def _fold(self, data: memoryview) -> None:
        try:
            self._backlog.extend(self.folder.feed(data, time.monotonic_ns()))
        except ParseError:
            self.malformed += 1

    # -- running

    def fileno(self) -> int:
        """The socket's descriptor, for select/poll (readable: records are queued)."""
        return self.sock.fileno()

    def read(self, max_datagrams: int = 4096) -> list[TaskExit]:
        """The processes whose exit records are queued now (never blocks).

        Reads at most ``max_datagrams`` datagrams, so that one call under an
        exit storm stays short; poll again while :meth:`fileno` is readable.
        Malformed datagrams are dropped (``malformed``), ones not sent by the
        kernel too (``spoofed``); an overrun counts in ``overruns``/``lost``.
        """
        out, self._backlog = self._backlog, []
        folder = self.folder
        folder.boot_offset_ns = boottime_offset_ns()
        recv = self.sock.recvfrom_into
        buf, view = self._buf, self._view
        for _ in range(max_datagrams):
            try:
                n, (sender, _groups) = recv(buf)
            except BlockingIOError:
                break
            except OSError as exc:
                if exc.errno == errno.ENOBUFS:
                    self.overruns += 1
                    continue
                raise
            if sender != 0:
                self.spoofed += 1
                continue
            try:
                out.extend(folder.feed(view[:n], time.monotonic_ns()))
            except ParseError:
                self.malformed += 1
        return out

    @property
    def lost(self) -> int:
        """Exit messages the kernel dropped for this socket: the Drops column of
        /proc/net/netlink (one per exiting task), or the overruns seen when that cannot
        be read.

        0 until :meth:`read` has seen an overrun (the first drop queues an ENOBUFS for
        the next read); after that the column is read again once :meth:`read` sees
        another overrun or the last reading is ``DROPS_MAX_AGE_S`` old.
        """
        overruns = self.overruns
        if not overruns:
            return 0
        now = time.monotonic()
        got = self._drops
        if got is None or got[1] != overruns or now - got[0] >= DROPS_MAX_AGE_S:
            got = self._drops = (now, overruns, netlink_drops(self.inode))
        drops = got[2]
        return overruns if drops is None else max(drops, overruns)

    def close(self) -> None:
        """Deregister (so the kernel stops sending to this port id) and close."""
        if self.sock.fileno() < 0:
            return
        if self._registered:
            try:
                self._seq += 1
                self.sock.send(genl_message(
                    self.family_id, TASKSTATS_CMD_GET,
                    nla(TASKSTATS_CMD_ATTR_DEREGISTER_CPUMASK, self.cpumask.encode() + b"\0"),
                    seq=self._seq, port=self.port_id, flags=NLM_F_REQUEST))
            except OSError:
                pass  # closing anyway: the kernel drops a listener whose socket is gone
            self._registered = False
        self.sock.close()

    def __enter__(self) -> TaskstatsListener:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _attrs(data: bytes | memoryview) -> Iterator[tuple[int, bytes]]:
    """(type, payload) of each attribute in ``data``, stopping at the first malformed one."""
    off = 0
    while off + 4 <= len(data):
        nla_len, nla_type = _NLA.unpack_from(data, off)
        if nla_len < 4 or off + nla_len > len(data):
            return
        yield nla_type & NLA_TYPE_MASK, bytes(data[off + 4:off + nla_len])
        off += (nla_len + 3) & ~3
