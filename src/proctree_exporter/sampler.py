"""Resource figures of known live processes (CPU, memory, IO, fds, threads, faults), sampled.

:func:`sample` reads each process named by an :class:`~.identity.Identity` and
returns a :class:`SampleRound`: a :class:`Sample` per process that is still the
one its identity names, and the identities that vanished, were reused by a
stranger, or could not be read. :class:`Sampler` runs it on a thread of its own
every ``interval_s`` and hands each round to a callback.

Per process it reads four files and stats one directory, no more::

    /proc/PID/io      rchar, wchar, read_bytes, write_bytes (whole process)
    /proc/PID/status  voluntary/nonvoluntary_ctxt_switches (main thread only, see Sample)
    /proc/PID/fd      st_size is the number of open fds (Linux >= 6.2; else a listdir)
    /proc/PID/stat    state, minflt, majflt, utime, stime, num_threads, starttime, rss
    /proc/PID/smaps_rollup   Pss and Private_* (only with pss=True)

Why not psutil (bench/sampler.py, 1,000 and 10,000 sleepers on a 2-core VM,
bench/results/sampler.txt): ``Process(pid).as_dict([...])`` costs 380-510 µs
of CPU per process and ``Process(pid)`` + ``oneshot()`` with the individual
calls 330-430 µs, four to six times the reads below (63-93 µs), against a
budget of 75 µs (10,000 processes every 15 s within 5% of one core), most of
which the kernel spends making the files. psutil reads stat twice (once in the
constructor for its own identity), statm for RSS (which stat already holds),
lists /proc/PID/fd, and parses status with regular expressions; it has no page
fault counts on Linux at all, and its cpu_times() mixes in children's times
(children_user/children_system), which a per-process figure must not include.

Why stat is read last: it proves the other reads were of the right process.
If stat, read after them, still shows the identity's start time, then that
process held the pid from before the round began until after the last read,
so none of the reads before can have found a stranger under the pid. That
proof is free: no second stat read, no /proc/PID directory fd held open.
"""

from __future__ import annotations

import errno
import functools
import logging
import os
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from enum import Enum
from typing import NamedTuple

from .clock import CLOCK_TICKS
from .identity import Identity, same_start

log = logging.getLogger(__name__)

PAGE_SIZE = os.sysconf("SC_PAGE_SIZE")
_O_READ = os.O_RDONLY | os.O_CLOEXEC
# One read(2) each: a short read of these seq_files is their end, so no read
# returning 0 is needed (one syscall fewer per file). Longer files read on.
_STAT_LIMIT = 1024
_IO_LIMIT = 512
_STATUS_LIMIT = 8192
_ROLLUP_LIMIT = 4096
_STOP_CHECK_EVERY = 256  # processes between looks at the stop flag


class Sample(NamedTuple):
    """One process's figures at ``monotonic`` (time.monotonic() when its stat was read).

    Counters (CPU, IO, faults, context switches) count from the process's start.
    CPU times are the process's own (all its threads, live and exited), never
    its children's; the kernel keeps them in clock ticks, so they step by
    1/SC_CLK_TCK (10 ms). ``read_bytes``/``write_bytes`` are storage IO
    (/proc/PID/io), ``rchar``/``wchar`` all bytes through read/write-like calls
    (pipes, sockets, page cache). ``voluntary_ctx_switches`` and
    ``involuntary_ctx_switches`` are the main thread's only: /proc/PID/status
    counts the thread group leader's task, and no /proc file sums them over
    threads. ``pss_bytes`` and ``uss_bytes`` (Private_Clean + Private_Dirty +
    Private_Hugetlb) are None unless asked for, and for processes without an
    address space (kernel threads).

    None also stands for a figure the kernel refused: /proc/PID/io, fd and
    smaps_rollup need ptrace access to the process, which even root can lack
    (without CAP_SYS_PTRACE, or across user namespaces); stat and status,
    where the other figures come from, are readable by anyone.

    A process whose main thread has exited while others run on (its leader a
    zombie) is sampled, its memory and fds read through a live thread.
    """

    identity: Identity
    monotonic: float
    cpu_user_seconds: float
    cpu_system_seconds: float
    rss_bytes: int
    read_bytes: int | None
    write_bytes: int | None
    rchar: int | None
    wchar: int | None
    open_fds: int | None
    threads: int
    voluntary_ctx_switches: int
    involuntary_ctx_switches: int
    minor_faults: int
    major_faults: int
    pss_bytes: int | None = None
    uss_bytes: int | None = None


class Samples(Mapping[Identity, Sample]):
    """A round's samples by identity, read-only; each :class:`Sample` is made as it is read.

    Why not a dict of Samples: a Sample is a tuple subclass, which CPython's cyclic GC
    keeps tracked for good, so the 20,000 of a 20,000-process round were rescanned by
    every full collection while the round was kept and applied: 6-16 ms with the GIL
    held, paid by whichever thread allocated (mostly a scrape). The figures are kept
    as plain tuples of numbers, which the GC untracks at its first look.
    """

    __slots__ = ("_figures",)

    def __init__(self, figures: dict[Identity, tuple[float | int | None, ...]]) -> None:
        self._figures = figures  # identity -> the Sample's fields after ``identity``

    def __getitem__(self, ident: Identity) -> Sample:
        return Sample(ident, *self._figures[ident])

    def __iter__(self) -> Iterator[Identity]:
        return iter(self._figures)

    def __len__(self) -> int:
        return len(self._figures)

    def __contains__(self, ident: object) -> bool:
        return ident in self._figures

    def __repr__(self) -> str:
        return f"Samples({dict(self.items())!r})"


@dataclass(frozen=True, slots=True)
class SampleRound:
    """What one :func:`sample` call found.

    Every identity asked about is in exactly one of: ``samples`` (still that
    process), ``vanished`` (exited, whether reaped or a zombie: a zombie's final
    figures come from its exit, not from here), ``reused`` (the pid now belongs
    to another process, which is not sampled) and ``unreadable`` (stat or
    status could not be read or did not parse; a refused io, fd or
    smaps_rollup read only leaves those figures None).
    """

    samples: Mapping[Identity, Sample]  # a Samples from sample(); any mapping will do
    vanished: frozenset[Identity]
    reused: frozenset[Identity]
    unreadable: frozenset[Identity]
    started: float  # time.monotonic() at the start of the round
    duration_s: float  # wall time the round took
    cpu_s: float  # CPU time of the sampling thread during the round
    pss: bool  # whether pss_bytes/uss_bytes were read


# --- parsers (bytes the kernel wrote in, figures out; ValueError on anything else) ------


class StatFigures(NamedTuple):
    """The fields of /proc/PID/stat the sampler uses (times in ticks, rss in pages)."""

    state: str
    minor_faults: int
    major_faults: int
    utime_ticks: int
    stime_ticks: int
    threads: int
    start_ticks: int
    rss_pages: int


def parse_stat_figures(raw: bytes) -> StatFigures:
    """Parse /proc/PID/stat; comm ends at the *last* ``)`` (a process may name itself ``a) b``)."""
    close = raw.rfind(b")")
    if close < 0:
        raise ValueError(f"stat: no (comm) in {raw[:64]!r}")
    # fields[0] is field 3 (state); field N is fields[N - 3]; rss is field 24
    fields = raw[close + 2 :].split(None, 22)
    if len(fields) < 22:
        raise ValueError(f"stat: {len(fields) + 2} fields, expected at least 24")
    return StatFigures(
        fields[0].decode("ascii", "replace"),
        int(fields[7]),  # minflt (whole thread group, exited threads included)
        int(fields[9]),  # majflt
        int(fields[11]),  # utime
        int(fields[12]),  # stime
        int(fields[17]),  # num_threads
        int(fields[19]),  # starttime
        int(fields[21]),  # rss
    )


def parse_io(raw: bytes) -> tuple[int, int, int, int]:
    """Parse /proc/PID/io into ``(rchar, wchar, read_bytes, write_bytes)``."""
    f = raw.split()
    # the kernel's fixed order (rchar wchar syscr syscw read_bytes write_bytes ...);
    # look the names up only if some kernel ever changes it
    if len(f) >= 12 and f[0] == b"rchar:" and f[2] == b"wchar:" and f[8] == b"read_bytes:" \
            and f[10] == b"write_bytes:":
        return int(f[1]), int(f[3]), int(f[9]), int(f[11])
    values = dict(zip(f[::2], f[1::2], strict=False))
    try:
        return (int(values[b"rchar:"]), int(values[b"wchar:"]), int(values[b"read_bytes:"]),
                int(values[b"write_bytes:"]))
    except (KeyError, ValueError) as exc:
        raise ValueError(f"io: bad or missing field: {exc}") from None


_VOLUNTARY = b"\nvoluntary_ctxt_switches:"


def parse_ctx_switches(raw: bytes) -> tuple[int, int]:
    """``(voluntary, involuntary)`` context switches from /proc/PID/status."""
    # near the end of the file: a search from the end leaves the rest unparsed
    i = raw.rfind(_VOLUNTARY)
    f = raw[i + len(_VOLUNTARY) :].split(None, 3) if i >= 0 else []
    if len(f) < 3 or f[1] != b"nonvoluntary_ctxt_switches:":
        raise ValueError("status: no voluntary/nonvoluntary_ctxt_switches")
    return int(f[0]), int(f[2])


_ROLLUP_KEYS = (b"\nPss:", b"\nPrivate_Clean:", b"\nPrivate_Dirty:", b"\nPrivate_Hugetlb:")


def parse_smaps_rollup(raw: bytes) -> tuple[int | None, int | None]:
    """``(pss_bytes, uss_bytes)`` from /proc/PID/smaps_rollup; (None, None) when empty.

    USS is Private_Clean + Private_Dirty + Private_Hugetlb (as psutil counts it).
    """
    if not raw.strip():
        return None, None
    kib = []
    for key in _ROLLUP_KEYS:  # four searches: a third of the cost of splitting every line
        i = raw.find(key)
        if i < 0:
            kib.append(None)
            continue
        end = raw.find(b"\n", i + 1)
        value, unit = raw[i + len(key) : end if end >= 0 else None].split()
        if unit != b"kB":
            raise ValueError(f"smaps_rollup: {key.strip()!r} in {unit!r}, expected kB")
        kib.append(int(value))
    pss, clean, dirty, hugetlb = kib
    if pss is None or clean is None or dirty is None:
        raise ValueError("smaps_rollup: no Pss, Private_Clean or Private_Dirty")
    return pss * 1024, (clean + dirty + (hugetlb or 0)) * 1024


# --- reading ------------------------------------------------------------------------


def _read(path: str, limit: int) -> bytes:
    fd = os.open(path, _O_READ)
    try:
        data = os.read(fd, limit)
        if len(data) == limit:  # longer than expected: read to the end
            chunks = [data]
            while chunk := os.read(fd, 65536):
                chunks.append(chunk)
            data = b"".join(chunks)
        return data
    finally:
        os.close(fd)


@functools.cache
def _fd_count_by_stat() -> bool:
    """Whether stat() of /proc/PID/fd gives the number of open fds (Linux >= 6.2).

    Measured: 9 µs for the stat against 19 µs for a listdir of a sleeper's
    few fds; the listdir grows with the fds, the stat does not.
    """
    r, w = os.pipe()  # at least two fds open whatever the daemon inherited
    try:
        return os.stat("/proc/self/fd").st_size >= 2
    finally:
        os.close(r)
        os.close(w)


def _open_fds(base: str) -> int:
    if _fd_count_by_stat():
        return os.stat(base + "fd").st_size
    return len(os.listdir(base + "fd"))


def _rollup(base: str) -> tuple[int | None, int | None]:
    try:
        return parse_smaps_rollup(_read(base + "smaps_rollup", _ROLLUP_LIMIT))
    except (OSError, ValueError):
        # ESRCH for a live process without an address space (kernel thread, one
        # exiting), EACCES without ptrace access; whether the process is gone,
        # stat (read next) says. PSS is an extra: its loss never costs the sample.
        return None, None


class _Outcome(Enum):
    VANISHED = "vanished"
    REUSED = "reused"
    UNREADABLE = "unreadable"


_GONE_ERRNOS = frozenset({errno.ENOENT, errno.ESRCH})


def _restat(pid: int, start: int) -> StatFigures | _Outcome:
    """Read stat (again): its figures if the pid still is the process, else what became of it."""
    try:
        seen = parse_stat_figures(_read(f"/proc/{pid}/stat", _STAT_LIMIT))
    except OSError as exc:
        return _Outcome.VANISHED if exc.errno in _GONE_ERRNOS else _Outcome.UNREADABLE
    except ValueError:
        return _Outcome.UNREADABLE
    return seen if same_start(start, seen.start_ticks) else _Outcome.REUSED


def _failed_read_outcome(pid: int, start: int) -> _Outcome:
    """After a refused, failed or unparsable read: gone, reused, or unreadable."""
    seen = _restat(pid, start)
    if isinstance(seen, _Outcome):
        return seen
    return _Outcome.VANISHED if seen.state in ("Z", "X") else _Outcome.UNREADABLE


def _live_thread_figures(pid: int, pss: bool
                         ) -> tuple[int, int | None, int | None, int | None] | None:
    """``(rss_pages, open_fds, pss, uss)`` read through a live thread of a process whose
    main thread has exited (the leader is a zombie, and reads through it find no
    memory and no files). None when no other thread is left."""
    try:
        tids = [t for t in os.listdir(f"/proc/{pid}/task") if t != str(pid)]
        for tid in tids:
            base = f"/proc/{pid}/task/{tid}/"
            try:
                pss_bytes, uss_bytes = _rollup(base) if pss else (None, None)
                try:
                    fds: int | None = _open_fds(base)
                except PermissionError:
                    fds = None
                stat = parse_stat_figures(_read(base + "stat", _STAT_LIMIT))
            except OSError:
                continue  # that thread ended meanwhile: try the next
            if stat.state not in ("Z", "X"):
                return stat.rss_pages, fds, pss_bytes, uss_bytes
    except OSError:
        pass
    return None


def _read_one(ident: Identity, pss: bool) -> tuple[float | int | None, ...] | _Outcome:
    """A Sample's fields after ``identity`` (a plain tuple: see :class:`Samples`), or what
    became of the process."""
    pid, start = ident
    base = f"/proc/{pid}/"
    try:
        try:
            rchar, wchar, read_bytes, write_bytes = parse_io(_read(base + "io", _IO_LIMIT))
        except PermissionError:  # ptrace rules; the rest is still worth having
            rchar = wchar = read_bytes = write_bytes = None
        voluntary, involuntary = parse_ctx_switches(_read(base + "status", _STATUS_LIMIT))
        try:
            fds: int | None = _open_fds(base)
        except PermissionError:
            fds = None
        pss_bytes, uss_bytes = _rollup(base) if pss else (None, None)
        # last: see the module docstring
        stat = parse_stat_figures(_read(base + "stat", _STAT_LIMIT))
    except OSError as exc:
        if exc.errno in _GONE_ERRNOS:
            return _Outcome.VANISHED  # nobody holds the pid: ours has gone
        return _failed_read_outcome(pid, start)
    except ValueError:
        return _failed_read_outcome(pid, start)
    now = time.monotonic()
    if not same_start(start, stat.start_ticks):
        return _Outcome.REUSED
    rss_pages = stat.rss_pages
    if stat.state in ("Z", "X"):
        if stat.state == "X" or stat.threads <= 1:
            return _Outcome.VANISHED
        # the main thread exited and others run on: alive, but memory and fds are
        # only visible through a live thread
        live = _live_thread_figures(pid, pss)
        if live is None:
            return _Outcome.VANISHED
        rss_pages, fds, pss_bytes, uss_bytes = live
        again = _restat(pid, start)  # not reaped (and the pid reused) meanwhile
        if isinstance(again, _Outcome):
            return again
    return (now, stat.utime_ticks / CLOCK_TICKS, stat.stime_ticks / CLOCK_TICKS,
            rss_pages * PAGE_SIZE, read_bytes, write_bytes, rchar, wchar, fds,
            stat.threads, voluntary, involuntary, stat.minor_faults, stat.major_faults,
            pss_bytes, uss_bytes)


def _sample_round(identities: Iterable[Identity], pss: bool,
                  stop: threading.Event | None) -> SampleRound | None:
    started = time.monotonic()
    cpu0 = time.thread_time()
    samples: dict[Identity, tuple[float | int | None, ...]] = {}
    vanished: set[Identity] = set()
    reused: set[Identity] = set()
    unreadable: set[Identity] = set()
    by_outcome = {_Outcome.VANISHED: vanished, _Outcome.REUSED: reused,
                  _Outcome.UNREADABLE: unreadable}
    for n, ident in enumerate(identities):
        if stop is not None and n % _STOP_CHECK_EVERY == 0 and stop.is_set():
            return None
        if type(ident) is not Identity:
            ident = Identity(*ident)
        got = _read_one(ident, pss)
        if isinstance(got, tuple):
            samples[ident] = got
        else:
            by_outcome[got].add(ident)
    return SampleRound(Samples(samples), frozenset(vanished), frozenset(reused),
                       frozenset(unreadable), started, time.monotonic() - started,
                       time.thread_time() - cpu0, pss)


def sample(identities: Iterable[Identity], *, pss: bool = False) -> SampleRound:
    """Sample every process in ``identities`` once; never raises for a process that is gone.

    ``pss``: also read PSS and USS from /proc/PID/smaps_rollup, which walks the
    process's page tables: its cost grows with the process's mapped memory.
    """
    got = _sample_round(identities, pss, None)
    assert got is not None  # only a stop event cuts a round short
    return got


# --- the background thread ----------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SamplerStatus:
    """The figures a :class:`Sampler` exports about itself, read together."""

    rounds: int  # rounds completed and handed to on_round
    last_duration_s: float | None  # wall time of the last round (None before the first)
    last_wall_time: float | None  # time.time() at the end of the last round
    cpu_seconds: float  # CPU the sampler thread used: sampling, get_identities, on_round
    errors: int  # get_identities or on_round calls that raised (each logged)
    running: bool


class Sampler:
    """Calls :func:`sample` on ``get_identities()`` every ``interval_s`` on a thread of its
    own and hands each round to ``on_round``.

    The first round runs at :meth:`start`; later ones on a fixed schedule (a round
    that overruns skips the slots it missed, never runs twice in a row to catch
    up). An exception in ``get_identities`` (that round is skipped) or ``on_round``
    is logged and counted; the thread goes on.
    """

    def __init__(self, get_identities: Callable[[], Iterable[Identity]], interval_s: float,
                 on_round: Callable[[SampleRound], None], pss: bool = False,
                 on_start: Callable[[], None] | None = None) -> None:
        if not interval_s > 0:
            raise ValueError(f"interval_s must be positive, got {interval_s!r}")
        self.interval_s = interval_s
        self.pss = pss
        self._get_identities = get_identities
        self._on_round = on_round
        self._on_start = on_start  # run first on the thread (the daemon lowers its priority)
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._rounds = 0
        self._errors = 0
        self._last_duration_s: float | None = None
        self._last_wall_time: float | None = None
        self._cpu_seconds = 0.0
        self._thread = threading.Thread(target=self._run, name="proctree-sampler", daemon=True)

    def start(self) -> None:
        """Start the thread (once)."""
        self._thread.start()

    def stop(self, timeout: float | None = 5.0) -> None:
        """Stop the thread and wait for it: a round in progress is abandoned within
        ``_STOP_CHECK_EVERY`` processes; a callback in progress is waited for."""
        self._stop.set()
        if self._thread.is_alive() and self._thread is not threading.current_thread():
            self._thread.join(timeout)
            if self._thread.is_alive():
                log.warning("sampler did not stop in time",
                            extra={"fields": {"timeout_s": timeout}})

    def status(self) -> SamplerStatus:
        """The sampler's own figures, consistent with each other."""
        with self._lock:
            return SamplerStatus(self._rounds, self._last_duration_s, self._last_wall_time,
                                 self._cpu_seconds, self._errors, self._thread.is_alive())

    def _run(self) -> None:
        if self._on_start is not None:
            self._on_start()
        cpu0 = time.thread_time()  # this thread's own clock: read it here, not in status()
        next_at = time.monotonic()
        while not self._stop.is_set():
            self._one_round()
            with self._lock:
                self._cpu_seconds = time.thread_time() - cpu0
            now = time.monotonic()
            next_at += self.interval_s
            if next_at <= now:  # overran: the next slot still ahead
                next_at += ((now - next_at) // self.interval_s + 1) * self.interval_s
            if self._stop.wait(next_at - now):
                return

    def _one_round(self) -> None:
        try:
            identities = list(self._get_identities())
        except Exception as exc:
            self._count_error()
            log.warning("sampler get_identities failed", exc_info=True,
                        extra={"fields": {"error": repr(exc)}})
            return
        got = _sample_round(identities, self.pss, self._stop)
        if got is None:
            return  # stopping
        with self._lock:
            self._rounds += 1
            self._last_duration_s = got.duration_s
            self._last_wall_time = time.time()
        try:
            self._on_round(got)
        except Exception as exc:
            self._count_error()
            log.warning("sampler on_round failed", exc_info=True,
                        extra={"fields": {"error": repr(exc), "processes": len(got.samples)}})

    def _count_error(self) -> None:
        with self._lock:
            self._errors += 1
