"""What the bench programs that run the daemon share: their time bound and signals, the
facts about the machine and the code they record, and the reads they make of a process.

Imported by the bench programs as ``harness`` (``python bench/X.py`` puts bench/ first
on the path). Nothing here starts or stops a process.
"""

from __future__ import annotations

import contextlib
import hashlib
import math
import os
import signal
import socket
import subprocess
import sys
from collections.abc import Iterable
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
PACKAGE = REPO / "src" / "proctree_exporter"


class HardDeadline(Exception):
    """The run's time bound passed (SIGALRM)."""


def on_alarm(_signum: int, _frame: object) -> None:
    """SIGALRM handler: the run's time bound has passed."""
    raise HardDeadline("hard deadline reached")


def on_sigterm(_signum: int, _frame: object) -> None:
    """SIGTERM handler: SystemExit, so that the finally blocks end what the bench started."""
    sys.exit(128 + signal.SIGTERM)


def percentile(values: Iterable[float], q: float) -> float | None:
    """Nearest-rank q-quantile (0..1) of ``values``; None when empty."""
    ordered = sorted(values)
    if not ordered:
        return None
    return ordered[max(0, math.ceil(q * len(ordered)) - 1)]


def free_port() -> int:
    """An unused TCP port on loopback."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def loadavg() -> str:
    """/proc/loadavg's first three fields."""
    with open("/proc/loadavg", encoding="ascii") as f:
        return " ".join(f.read().split()[:3])


def git_describe() -> str:
    """``git describe --always --dirty`` of the checkout, or ``?``."""
    try:
        done = subprocess.run(["git", "-C", str(REPO), "describe", "--always", "--dirty"],
                              capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return "?"
    return done.stdout.strip() or "?"


def source_fingerprint(pkg: Path = PACKAGE) -> str:
    """A hash of the package's .py files, to tell which code a result was measured on
    (src/ changes under a bench while others work)."""
    h = hashlib.sha256()
    for f in sorted(pkg.rglob("*.py")):
        with contextlib.suppress(OSError):
            h.update(str(f.relative_to(pkg)).encode() + b"\0" + f.read_bytes())
    return h.hexdigest()[:16]


def stat_fields(pid: int) -> list[bytes] | None:
    """/proc/PID/stat's fields after the command name (field 3 first); None once gone."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_bytes()
    except OSError:
        return None
    return raw[raw.rfind(b")") + 2:].split()


def start_ticks(pid: int) -> int | None:
    """Field 22 of /proc/PID/stat (start time in clock ticks); None once reaped."""
    f = stat_fields(pid)
    return int(f[19]) if f else None


def process_cpu_seconds(pid: int) -> float | None:
    """utime + stime of ``pid`` (all its threads), s; None once gone."""
    f = stat_fields(pid)
    return (int(f[11]) + int(f[12])) / os.sysconf("SC_CLK_TCK") if f else None
