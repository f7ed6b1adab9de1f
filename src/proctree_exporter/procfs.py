"""Read /proc: one process's stat, status, cmdline, exe and cgroup, and whole-host snapshots.

Pure functions and frozen values, no state. Parsers take the text the kernel
wrote and raise ``ValueError`` on anything else; readers open the file and turn
the two ways a read can fail into distinct exceptions: the process is gone
(:class:`ProcessGone`) or the read was refused (:class:`AccessDenied`).

Why not psutil here: the collector reads /proc on the event path (EXEC, and
the deferred exit check), where a psutil ``Process`` costs several times the
plain ``os.open``/``os.read`` used below, and the snapshot must parse stat
exactly as the event path does so that identities (pid, start_ticks) agree.
"""

from __future__ import annotations

import errno
import os
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from .identity import same_start

PROC = "/proc"
_READ_CHUNK = 8192
_PAGE = 4096


class ProcReadError(Exception):
    """A read of /proc/PID/... failed; ``pid`` and ``what`` name the file."""

    def __init__(self, pid: int, what: str, detail: str = "") -> None:
        super().__init__(f"/proc/{pid}/{what}: {detail or self.reason}")
        self.pid = pid
        self.what = what

    reason = "read failed"


class ProcessGone(ProcReadError):
    """The process exited (and was reaped) before or during the read."""

    reason = "process gone"


class AccessDenied(ProcReadError):
    """The kernel refused the read (another user's process, ptrace rules)."""

    reason = "access denied"


def _classify(pid: int, what: str, exc: OSError) -> ProcReadError:
    if exc.errno in (errno.ENOENT, errno.ESRCH):
        return ProcessGone(pid, what)
    if exc.errno in (errno.EACCES, errno.EPERM):
        return AccessDenied(pid, what)
    return ProcReadError(pid, what, os.strerror(exc.errno or 0))


def read_bytes(pid: int, what: str, limit: int = _READ_CHUNK, proc: str = PROC) -> bytes:
    """Return up to ``limit`` bytes of /proc/PID/WHAT, raising ProcessGone/AccessDenied."""
    path = f"{proc}/{pid}/{what}"
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError as exc:
        raise _classify(pid, what, exc) from None
    try:
        data = os.read(fd, limit)
        # A /proc file arrives whole in one read when the buffer is big enough; a
        # seq_file may stop at a page boundary, so read on only after a read that
        # ended on one (a second read of every EXEC's comm cost 0.3 us)
        last = len(data)
        while last and last % _PAGE == 0 and len(data) < limit:
            more = os.read(fd, limit - len(data))
            last = len(more)
            data += more
        return data
    except OSError as exc:
        raise _classify(pid, what, exc) from None
    finally:
        os.close(fd)


# --- stat -------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Stat:
    """The fields of /proc/PID/stat that the tree uses."""

    pid: int
    comm: str
    state: str
    ppid: int
    pgrp: int
    session: int
    num_threads: int
    start_ticks: int  # clock ticks since boot (field 22)


def parse_stat(text: str) -> Stat:
    """Parse /proc/PID/stat.

    comm is whatever lies between the first ``(`` and the *last* ``)``: a
    process may name itself ``a) b (c``, and only the last parenthesis is
    the kernel's.
    """
    open_ = text.find("(")
    close = text.rfind(")")
    if open_ < 1 or close < open_:
        raise ValueError(f"stat: no (comm) in {text[:64]!r}")
    fields = text[close + 2 :].split()
    # fields[0] is field 3 (state); field N is fields[N - 3]
    if len(fields) < 20:
        raise ValueError(f"stat: {len(fields) + 2} fields, expected at least 22")
    try:
        return Stat(
            pid=int(text[: open_ - 1]),
            comm=text[open_ + 1 : close],
            state=fields[0],
            ppid=int(fields[1]),
            pgrp=int(fields[2]),
            session=int(fields[3]),
            num_threads=int(fields[17]),
            start_ticks=int(fields[19]),
        )
    except ValueError as exc:
        raise ValueError(f"stat: {exc}") from None


def read_stat(pid: int, proc: str = PROC) -> Stat:
    """Read and parse /proc/PID/stat."""
    raw = read_bytes(pid, "stat", proc=proc)
    if not raw:
        raise ProcessGone(pid, "stat")
    return parse_stat(raw.decode("utf-8", "replace"))


STATE_NAMES = {
    "R": "running",
    "S": "sleeping",
    "D": "disk_sleep",
    "Z": "zombie",
    "T": "stopped",
    "t": "tracing_stop",
    "X": "dead",
    "x": "dead",
    "K": "wakekill",
    "W": "waking",
    "P": "parked",
    "I": "idle",
}


# --- status -----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Status:
    """Identity fields of /proc/PID/status."""

    name: str
    tgid: int
    ppid: int
    uids: tuple[int, int, int, int]  # real, effective, saved, filesystem
    gids: tuple[int, int, int, int]
    threads: int


def parse_status(text: str) -> Status:
    """Parse the key: value lines of /proc/PID/status that identify a process."""
    values: dict[str, str] = {}
    for line in text.splitlines():
        key, sep, value = line.partition(":")
        if sep:
            values[key] = value.strip()
    try:
        uids = tuple(int(v) for v in values["Uid"].split())
        gids = tuple(int(v) for v in values["Gid"].split())
        if len(uids) != 4 or len(gids) != 4:
            raise ValueError("Uid/Gid need four values")
        return Status(
            name=values.get("Name", ""),
            tgid=int(values["Tgid"]),
            ppid=int(values["PPid"]),
            uids=uids,  # type: ignore[arg-type]
            gids=gids,  # type: ignore[arg-type]
            threads=int(values.get("Threads", "1")),
        )
    except (KeyError, ValueError) as exc:
        raise ValueError(f"status: bad or missing field: {exc}") from None


def read_status(pid: int, proc: str = PROC) -> Status:
    """Read and parse /proc/PID/status."""
    raw = read_bytes(pid, "status", limit=16384, proc=proc)
    if not raw:
        raise ProcessGone(pid, "status")
    return parse_status(raw.decode("utf-8", "replace"))


# --- cmdline, exe, cgroup ---------------------------------------------------


def parse_cmdline(raw: bytes, max_chars: int) -> str:
    """NUL-separated argv into one space-joined line of at most ``max_chars``."""
    text = raw.rstrip(b"\0").replace(b"\0", b" ").decode("utf-8", "replace")
    return text[:max_chars]


def read_cmdline(pid: int, max_chars: int = 4096, proc: str = PROC) -> str:
    """Read /proc/PID/cmdline; empty for kernel threads and zombies."""
    # 4 bytes per char bounds what UTF-8 can need for max_chars characters
    return parse_cmdline(read_bytes(pid, "cmdline", limit=max_chars * 4 + 1, proc=proc), max_chars)


def read_exe(pid: int, proc: str = PROC) -> str | None:
    """The executable path, or None for kernel threads and zombies (no mm).

    A replaced or deleted binary keeps the kernel's `` (deleted)`` suffix.
    """
    try:
        return os.readlink(f"{proc}/{pid}/exe")
    except OSError as exc:
        if exc.errno == errno.ENOENT and os.path.exists(f"{proc}/{pid}"):
            return None  # the process exists but has no executable
        raise _classify(pid, "exe", exc) from None


def parse_cgroup(text: str) -> str | None:
    """The cgroup v2 path (the ``0::`` line), or None on a v1-only host."""
    for line in text.splitlines():
        if line.startswith("0::"):
            return line[3:]
    return None


def read_cgroup(pid: int, proc: str = PROC) -> str | None:
    """Read the cgroup v2 path of a process."""
    return parse_cgroup(read_bytes(pid, "cgroup", proc=proc).decode("utf-8", "replace"))


# --- whole-host snapshot ----------------------------------------------------


def iter_pids(proc: str = PROC) -> Iterator[int]:
    """Pids of the processes (thread group leaders) in /proc, in directory order."""
    with os.scandir(proc) as entries:
        for entry in entries:
            if entry.name.isdigit():
                yield int(entry.name)


@dataclass(frozen=True, slots=True)
class ProcessInfo:
    """One process as a /proc snapshot saw it. Optional fields are None when unreadable."""

    stat: Stat
    uid: int | None
    cmdline: str | None
    exe: str | None
    cgroup: str | None
    denied: tuple[str, ...] = ()  # files that were refused


def read_process(
    pid: int,
    *,
    cmdline_max_chars: int = 4096,
    details: bool = True,
    cgroup: bool = True,
    cmdline: bool = True,
    proc: str = PROC,
) -> ProcessInfo:
    """Read one process; raise ProcessGone if it vanished, tolerate denied detail reads.

    ``details=False`` reads stat alone (for resync of already-known processes);
    ``cmdline``/``cgroup`` False leave those None.
    """
    stat = read_stat(pid, proc)
    if not details:
        return ProcessInfo(stat, None, None, None, None)
    denied: list[str] = []
    uid = cmd = exe = cg = None
    try:
        uid = read_status(pid, proc).uids[1]
    except AccessDenied:
        denied.append("status")
    except ValueError:
        pass  # an odd status file costs the owner, not the process
    if cmdline:
        try:
            cmd = read_cmdline(pid, cmdline_max_chars, proc)
        except AccessDenied:
            denied.append("cmdline")
    try:
        exe = read_exe(pid, proc)
    except AccessDenied:
        denied.append("exe")
    if cgroup:
        try:
            cg = read_cgroup(pid, proc)
        except AccessDenied:
            denied.append("cgroup")
    return ProcessInfo(stat, uid, cmd, exe, cg, tuple(denied))


@dataclass(slots=True)
class SnapshotStats:
    """What a snapshot walk ran into."""

    vanished: int = 0  # listed in /proc, gone before it could be read
    denied: int = 0  # processes with at least one refused read
    malformed: int = 0  # stat that did not parse


def snapshot(
    *,
    cmdline_max_chars: int = 4096,
    details: bool = True,
    cgroup: bool = True,
    cmdline: bool = True,
    known: dict[int, int] | None = None,
    proc: str = PROC,
    stats: SnapshotStats | None = None,
) -> list[ProcessInfo]:
    """Read every process in /proc.

    ``known`` maps pid -> start_ticks of processes whose details the caller
    already holds: those get a stat read only, which keeps a resync cheap.
    Processes that vanish mid-walk are skipped and counted in ``stats``.
    """
    stats = stats if stats is not None else SnapshotStats()
    out: list[ProcessInfo] = []
    for pid in iter_pids(proc):
        try:
            if known is not None and pid in known:
                info = read_process(pid, details=False, proc=proc)
                if not same_start(known[pid], info.stat.start_ticks):  # reused: read it all
                    info = read_process(pid, cmdline_max_chars=cmdline_max_chars,
                                        cgroup=cgroup, cmdline=cmdline, proc=proc)
            else:
                info = read_process(
                    pid,
                    cmdline_max_chars=cmdline_max_chars,
                    details=details,
                    cgroup=cgroup,
                    cmdline=cmdline,
                    proc=proc,
                )
        except ProcessGone:
            stats.vanished += 1
            continue
        except AccessDenied:
            stats.denied += 1
            continue
        except ValueError:
            stats.malformed += 1
            continue
        if info.denied:
            stats.denied += 1
        out.append(info)
    return out


class ProcFS:
    """The reads the PID tree makes of one /proc, as methods, so that tests can
    hand the tree a fake /proc and the tree never opens files by itself."""

    def __init__(self, proc: str = PROC) -> None:
        self.proc = proc

    def stat(self, pid: int) -> Stat:
        """/proc/PID/stat (raises ProcessGone, AccessDenied, ValueError)."""
        return read_stat(pid, self.proc)

    def comm(self, pid: int) -> str:
        """/proc/PID/comm: cheaper than stat when only the name is wanted."""
        return read_bytes(pid, "comm", proc=self.proc).decode("utf-8", "replace").rstrip("\n")

    def cmdline(self, pid: int, max_chars: int) -> str:
        """/proc/PID/cmdline, arguments joined by spaces, cut to ``max_chars``."""
        return read_cmdline(pid, max_chars, self.proc)

    def exe(self, pid: int) -> str | None:
        """/proc/PID/exe's target (None for kernel threads and zombies)."""
        return read_exe(pid, self.proc)

    def cgroup(self, pid: int) -> str | None:
        """The cgroup v2 path of /proc/PID/cgroup (None without a v2 hierarchy)."""
        return read_cgroup(pid, self.proc)

    def uid(self, pid: int) -> int | None:
        """Effective uid from /proc/PID/status (None when unreadable)."""
        try:
            return read_status(pid, self.proc).uids[1]
        except (ProcReadError, ValueError):
            return None

    def snapshot(self, **kwargs: Any) -> list[ProcessInfo]:
        """Every process of this /proc (see :func:`snapshot` for the arguments)."""
        return snapshot(proc=self.proc, **kwargs)

    def exists(self, pid: int) -> bool | None:
        """Whether the kernel still holds ``pid``, by ``kill(pid, 0)``: at a quarter of
        the cost of failing to open its stat file. None when this /proc is not the
        running kernel's (then the caller reads stat instead)."""
        if self.proc != PROC:
            return None
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            pass  # exists, owned by someone else
        return True
