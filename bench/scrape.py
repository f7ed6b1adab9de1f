"""Scrape benchmark: how long a GET /metrics takes, against the usual process exporters.

Measures the wall time of a full HTTP GET of /metrics over loopback (a new
TCP connection per scrape, body read to the end, no compression asked for)
at three host sizes, 1,000, 10,000 and 20,000 processes in /proc, for:

- proctree-exporter with 10 roots and with 100 roots,
- prometheus-process-exporter (Debian's package) grouping by comm
  (``process_names: [{name: "{{.Comm}}", cmdline: [".+"]}]``, default flags:
  -threads, -children and -gather-smaps on), which is what users typically run,
- prometheus-node-exporter (Debian's package) with ``--collector.processes``
  on top of its default collectors, and with only the processes collector
  (``--collector.disable-defaults --collector.processes``).

The host is filled with cheap sleeping processes: 50 named groups, each a
small static C program (``bench/sleepers.c``, compiled at run time into a
temporary directory) that renames itself (its comm) and forks sleeping
children. Five groups hold 12% of the sleepers each (hundreds to thousands),
the other 45 share the remaining 40%. Roots: ``host`` (pid 1, every
user-space process), ``select: comm`` roots on groups, ``select: pid`` roots
on group leaders and on single sleepers.

Each exporter is started fresh for each host size, measured alone (nothing
else of ours runs beside it but the sleepers), and stopped before the next.
After it is ready and a few warm-up scrapes, scrapes run one after the other
with a short gap, for a fixed window (proctree-exporter: one host-state
sample interval plus a margin, so that exactly one of its background /proc
walks falls inside; others: a time window with a minimum scrape count).

Why proctree-exporter's scrape does not grow with the host: it keeps the
tree from proc connector events, and host-wide process states come from a
background thread that walks /proc every ``host.state_sample_interval_seconds``
(default 15 s); a scrape copies O(roots) numbers and formats them. The walk
still costs CPU, and while it runs it holds the GIL in turns with the scrape,
so the scrapes that overlap it are reported separately.

Prints a table and writes ``bench/results/scrape.json``. A missed target is
printed as MISS, never turned into a failing exit status: this measures.
Every process it starts is ended by pid in a ``finally`` block.

Usage (root)::

    python3 bench/scrape.py [--sizes 1000,10000,20000] [--window 20] [--no-bootstrap]
                            [--targets proctree_100,process_exporter]

``--targets`` measures only some exporters (keys: proctree_10, proctree_100,
process_exporter, node_defaults, node_processes); the ratios need the anchors
measured in the same run.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import http.client
import itertools
import json
import math
import os
import platform
import re
import resource
import select
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from harness import free_port

REPO = Path(__file__).resolve().parent.parent
VENV_PYTHON = REPO / ".venv" / "bin" / "python"
PROCTREE_BIN = REPO / ".venv" / "bin" / "proctree-exporter"
SLEEPERS_C = REPO / "bench" / "sleepers.c"
DEFAULT_OUT = REPO / "bench" / "results" / "scrape.json"
PROCESS_EXPORTER = "/usr/bin/prometheus-process-exporter"
NODE_EXPORTER = "/usr/bin/prometheus-node-exporter"
DEBIAN_PORTS = {9100: "prometheus-node-exporter", 9256: "prometheus-process-exporter"}

GROUPS = 50
BIG_GROUPS = 5
BIG_SHARE = 0.12  # of all sleepers, per big group
SAMPLE_INTERVAL_S = 15.0  # proctree host.state_sample_interval_seconds (its default)
LATENCY_TARGET_MS = 10.0
RATIO_TARGET = 10.0
RATIO_AT = 10_000
WARMUP_SCRAPES = 3
GAP_S = 0.002  # between scrapes: each one finds the server idle, as Prometheus would
HARD_DEADLINE_S = 1500.0  # the whole run, set-up included
ENV_BOOTSTRAPPED = "SCRAPE_BENCH_BOOTSTRAPPED"


# -- small helpers -------------------------------------------------------------------------


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank q-quantile (0..1) of ``values``; nan when empty."""
    if not values:
        return math.nan
    ordered = sorted(values)
    return ordered[max(0, math.ceil(q * len(ordered)) - 1)]


def summary(values: list[float]) -> dict[str, float | int]:
    """Count, median, p99, min, max and mean of ``values``."""
    return {
        "n": len(values),
        "median": percentile(values, 0.5),
        "p99": percentile(values, 0.99),
        "min": min(values) if values else math.nan,
        "max": max(values) if values else math.nan,
        "mean": statistics.fmean(values) if values else math.nan,
    }


def proc_count() -> int:
    """Processes on the host right now (numeric entries of /proc, kernel threads included)."""
    return sum(1 for name in os.listdir("/proc") if name.isdigit())


def read_int(path: str) -> int:
    """An integer from a /proc/sys file."""
    return int(Path(path).read_text().split()[0])


def write_int(path: str, value: int) -> None:
    """Write an integer to a /proc/sys file."""
    Path(path).write_text(f"{value}\n")


def rss_kib(pid: int) -> int | None:
    """VmRSS of ``pid`` in KiB (None if it is gone)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


CLK_TCK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """User plus system CPU time of ``pid``, all its threads (from /proc/PID/stat)."""
    stat = Path(f"/proc/{pid}/stat").read_bytes()
    fields = stat[stat.rfind(b")") + 2:].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK  # utime, stime (fields 14, 15)


def host_busy_seconds() -> float:
    """CPU seconds all CPUs have spent busy since boot (/proc/stat, idle and iowait left
    out; guest time is already inside user)."""
    fields = Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]
    user, nice, system, _idle, _iowait, irq, softirq, steal = (int(x) for x in fields[:8])
    return (user + nice + system + irq + softirq + steal) / CLK_TCK


def self_cpu_seconds() -> float:
    """CPU seconds of this bench process (all threads)."""
    t = os.times()
    return t.user + t.system


def port_open(port: int) -> bool:
    """Whether something accepts connections on 127.0.0.1:``port``."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.settimeout(0.5)
        return s.connect_ex(("127.0.0.1", port)) == 0


def http_get(port: int, path: str, timeout: float = 10.0) -> tuple[int, bytes]:
    """Status and body of GET ``path`` on 127.0.0.1:``port``."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request("GET", path)
        resp = conn.getresponse()
        return resp.status, resp.read()
    finally:
        conn.close()


def foreign_exporters(ours: set[int]) -> list[str]:
    """Debian's exporters running but not started by this bench (their packages may try to
    start services), and anything on their default ports."""
    found = []
    for name in os.listdir("/proc"):
        if not name.isdigit() or int(name) in ours:
            continue
        try:
            exe = os.readlink(f"/proc/{name}/exe")
        except OSError:
            continue
        if exe in (PROCESS_EXPORTER, NODE_EXPORTER):
            found.append(f"pid {name} {exe}")
    found += [f"port {p} ({what}'s default) is open" for p, what in DEBIAN_PORTS.items()
              if port_open(p)]
    return found


def source_fingerprint() -> str:
    """A hash of the exporter's source files and pyproject.toml: the exporter is started
    fresh from this checkout per host size, so an edit during the run mixes versions."""
    h = hashlib.sha256()
    files = [*sorted(f for f in (REPO / "src").rglob("*")
                     if f.is_file() and "__pycache__" not in f.parts and ".egg-info" not in str(f)),
             REPO / "pyproject.toml"]
    for f in files:
        with contextlib.suppress(OSError):
            h.update(str(f.relative_to(REPO)).encode() + b"\0" + f.read_bytes())
    return h.hexdigest()[:16]


def tool_version(argv: list[str]) -> str:
    """First line of a tool's version output (both exporters print it on stderr)."""
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"? ({exc})"
    text = (done.stdout + done.stderr).strip().splitlines()
    return text[0] if text else "?"


class Deadline:
    """The whole run's time bound, checked between measurements."""

    def __init__(self, seconds: float) -> None:
        self.end = time.monotonic() + seconds

    def left(self) -> float:
        """Seconds until the run must stop."""
        return self.end - time.monotonic()


def leftovers(sessions: set[int]) -> list[int]:
    """Processes still in a session this bench created (should be none after cleanup)."""
    left = []
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            stat = Path(f"/proc/{name}/stat").read_bytes()
        except OSError:
            continue
        fields = stat[stat.rfind(b")") + 2:].split()
        if int(fields[3]) in sessions:  # field 6 of stat: session id
            left.append(int(name))
    return left


@contextlib.contextmanager
def raised_limits(needed_pids: int, notes: list[str]) -> Iterator[None]:
    """Raise pid_max, threads-max and RLIMIT_NPROC if ``needed_pids`` would not fit with
    room to spare; restore them afterwards."""
    restore: list[Callable[[], None]] = []
    try:
        for path in ("/proc/sys/kernel/pid_max", "/proc/sys/kernel/threads-max"):
            old = read_int(path)
            # headroom: pids of exporter threads and of other work come and go meanwhile
            if old < needed_pids * 1.25:
                new = min(max(int(needed_pids * 2), 65_536), 4_194_304)
                write_int(path, new)
                notes.append(f"raised {path} {old} -> {new} for the run")
                restore.append(lambda path=path, old=old: write_int(path, old))
            else:
                notes.append(f"{path} {old} is enough for {needed_pids:,} pids: not changed")
        soft, hard = resource.getrlimit(resource.RLIMIT_NPROC)
        if soft != resource.RLIM_INFINITY and soft < needed_pids * 1.25:
            new_soft = hard if hard == resource.RLIM_INFINITY else max(
                soft, min(hard, needed_pids * 2))
            resource.setrlimit(resource.RLIMIT_NPROC, (new_soft, hard))
            notes.append(f"raised RLIMIT_NPROC {soft} -> {new_soft} for the run")
            restore.append(lambda: resource.setrlimit(resource.RLIMIT_NPROC, (soft, hard)))
        yield
    finally:
        for undo in reversed(restore):
            try:
                undo()
            except OSError as exc:
                notes.append(f"could not restore a limit: {exc}")


def compile_sleepers(tmp: Path) -> tuple[Path, str]:
    """Build bench/sleepers.c into ``tmp``; statically linked when libc.a is there, because
    20,000 copies then map one small file and no libc (cheaper forks, less kernel memory)."""
    cc = shutil.which("cc") or shutil.which("gcc")
    if cc is None:
        raise SystemExit("scrape: needs a C compiler (apt-get install gcc)")
    binary = tmp / "ptxsleepers"
    cmd = [cc, "-O2", "-Wall", "-o", str(binary), str(SLEEPERS_C)]
    if subprocess.run([*cmd, "-static"], capture_output=True).returncode == 0:
        return binary, "static"
    subprocess.run(cmd, check=True)
    return binary, "dynamic"


# -- processes we start -----------------------------------------------------------------


class Group:
    """One sleeper group: a ``ptxsleepers NAME N`` process and its N sleeping children."""

    def __init__(self, binary: Path, name: str, count: int) -> None:
        # own session: a stray signal for our terminal never reaches it, and its
        # group can be killed whole as the last resort
        self.popen = subprocess.Popen([str(binary), name, str(count)], stdin=subprocess.PIPE,
                                      stdout=subprocess.PIPE, start_new_session=True)
        self.pid = self.popen.pid
        self.name = name
        self.count = count
        assert self.popen.stdout is not None
        self._fd = self.popen.stdout.fileno()
        self._buf = b""

    def wait_ready(self, timeout: float) -> None:
        """Block until the group says ``ready``; raise if it cannot fork or says nothing."""
        end = time.monotonic() + timeout
        while b"\n" not in self._buf:
            left = end - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"sleeper group {self.name} (pid {self.pid}) not ready")
            ready, _, _ = select.select([self._fd], [], [], left)
            if ready:
                chunk = os.read(self._fd, 4096)
                if not chunk:
                    raise EOFError(f"sleeper group {self.name} (pid {self.pid}) exited")
                self._buf += chunk
        line = self._buf.split(b"\n", 1)[0].decode()
        if not line.startswith("ready"):
            raise RuntimeError(f"sleeper group {self.name}: {line}")

    def children(self) -> list[int]:
        """Pids of its sleeping children (the kernel's children list of its only thread)."""
        text = Path(f"/proc/{self.pid}/task/{self.pid}/children").read_text()
        return [int(p) for p in text.split()]

    def end(self) -> None:
        """Stop it by pid: EOF and SIGTERM (it kills and reaps its own children),
        SIGKILL to its process group only if it does not exit in time."""
        p = self.popen
        if p.stdin:
            with contextlib.suppress(OSError):
                p.stdin.close()
        if p.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, signal.SIGTERM)
            try:
                p.wait(timeout=30)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.pid, signal.SIGKILL)
                p.wait(timeout=10)
        if p.stdout:
            p.stdout.close()


class Exporter:
    """One exporter process under test, its output in a log file."""

    def __init__(self, label: str, argv: list[str], port: int, ready_path: str,
                 log: Path) -> None:
        self.label = label
        self.port = port
        self.ready_path = ready_path
        self.log = log
        with log.open("wb") as out:
            # own session, as for the sleepers; stdin closed so it never waits on us
            self.popen = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=out,
                                          stderr=subprocess.STDOUT, start_new_session=True)
        self.pid = self.popen.pid
        self.started = time.monotonic()

    def log_tail(self, lines: int = 5) -> str:
        """The last lines of its output."""
        try:
            return " | ".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def wait_ready(self, timeout: float) -> float:
        """Poll the ready path until it answers 200; return seconds since start."""
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if self.popen.poll() is not None:
                raise RuntimeError(f"{self.label} exited with {self.popen.returncode}: "
                                   f"{self.log_tail()}")
            with contextlib.suppress(OSError, http.client.HTTPException):
                if http_get(self.port, self.ready_path, timeout=5)[0] == 200:
                    return time.monotonic() - self.started
            time.sleep(0.05)
        raise TimeoutError(f"{self.label} not ready within {timeout}s: {self.log_tail()}")

    def stop(self) -> None:
        """SIGTERM by pid, SIGKILL (then its process group) if it does not exit in time."""
        p = self.popen
        if p.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, signal.SIGTERM)
            try:
                p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(self.pid, signal.SIGKILL)
                try:
                    p.wait(timeout=5)
                except subprocess.TimeoutExpired:
                    with contextlib.suppress(ProcessLookupError):
                        os.killpg(self.pid, signal.SIGKILL)
                    p.wait(timeout=5)


# -- host set-up ---------------------------------------------------------------------------


def group_sizes(sleepers: int) -> list[int]:
    """Children per group: the first BIG_GROUPS get BIG_SHARE of ``sleepers`` each, the
    rest share what is left; the rounding remainder goes to group 0."""
    big = int(sleepers * BIG_SHARE)
    small = (sleepers - big * BIG_GROUPS) // (GROUPS - BIG_GROUPS)
    sizes = [big] * BIG_GROUPS + [small] * (GROUPS - BIG_GROUPS)
    sizes[0] += sleepers - sum(sizes)
    return sizes


def start_groups(binary: Path, host_size: int, started: list[Group]) -> list[Group]:
    """Fill the host up to ``host_size`` processes in /proc with sleeper groups."""
    sleepers = host_size - proc_count() - GROUPS  # each group's own process counts too
    if sleepers < GROUPS:
        raise RuntimeError(f"host already has {proc_count()} processes: cannot reach "
                           f"{host_size:,} with {GROUPS} groups")
    groups = []
    for i, n in enumerate(group_sizes(sleepers)):
        g = Group(binary, f"ptxg{i:02d}", n)
        started.append(g)  # ended in main's finally even if a later one fails
        groups.append(g)
    for g in groups:
        g.wait_ready(120)
    return groups


def end_groups(groups: list[Group]) -> None:
    """End every group (each reaps its children before it exits)."""
    for g in groups:
        with contextlib.suppress(OSError):
            g.popen.stdin.close()  # type: ignore[union-attr]  # all of them start exiting
    for g in groups:
        g.end()


def root_configs(groups: list[Group], count: int) -> list[dict[str, Any]]:
    """``count`` (10 or 100) roots: ``host`` (pid 1), comm roots on groups, pid roots on
    group leaders and on single sleepers (one member each). The big groups come first,
    so both configs watch hundreds to thousands of members somewhere."""
    n_comm, n_leader = (5, 3) if count == 10 else (50, 40)
    n_single = count - 1 - n_comm - n_leader
    roots: list[dict[str, Any]] = [
        # as in the embedded config.yaml: counts stay exact, the API listing is capped
        {"name": "host", "select": "pid", "match": 1, "max_members": 1000}]
    roots += [{"name": f"comm-{g.name}", "select": "comm", "match": g.name}
              for g in groups[:n_comm]]
    roots += [{"name": f"leader-{g.name}", "select": "pid", "match": g.pid}
              for g in groups[:n_leader]]
    # single sleepers from groups the leader roots do not cover
    singles = groups[n_leader:n_leader + n_single]
    roots += [{"name": f"single-{g.name}", "select": "pid", "match": g.children()[0]}
              for g in singles]
    assert len(roots) == count, len(roots)
    return roots


def reference_ms(repeats: int = 15) -> float:
    """Median ms of a fixed pure-Python loop in the bench process: a yardstick of machine
    speed at that moment (this VM's speed drifts), taken before each exporter's window."""
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        total = 0
        for i in range(50_000):
            total += i * i
        times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)


def time_walk(repeats: int = 3) -> float:
    """Milliseconds for the /proc walk proctree-exporter's host-state thread does
    (``proctree_exporter.host.count_states``), run here, in the bench process: the
    O(processes) work kept out of its scrape."""
    from proctree_exporter.host import count_states

    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        count_states()
        times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)


# -- measurement ---------------------------------------------------------------------------

AGE_RE = re.compile(rb"^proctree_host_states_age_seconds (\S+)$", re.MULTILINE)
ROUND_AGE_RE = re.compile(rb"^proctree_resources_sample_age_seconds (\S+)$", re.MULTILINE)
ROUND_S_RE = re.compile(rb"^proctree_resources_sample_duration_seconds (\S+)$", re.MULTILINE)


@dataclass
class Samples:
    """Scrapes of one exporter: wall ms each, body sizes, wall-clock windows."""

    ms: list[float] = field(default_factory=list)
    spans: list[tuple[float, float]] = field(default_factory=list)  # time.time() start, end
    body_bytes: list[int] = field(default_factory=list)
    walk_ends: list[float] = field(default_factory=list)  # proctree: end of its /proc walk
    # proctree: its resource sample rounds, (end, reading time) as its metrics say
    rounds: set[tuple[float, float]] = field(default_factory=set)
    errors: int = 0


def scrape_once(port: int) -> tuple[float, float, float, bytes]:
    """One full GET /metrics on a new connection: (ms, wall start, wall end, body)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
    w0 = time.time()
    t0 = time.perf_counter_ns()
    try:
        conn.request("GET", "/metrics")  # connects here: the TCP handshake is timed too
        resp = conn.getresponse()
        body = resp.read()
        t1 = time.perf_counter_ns()
        status = resp.status
    finally:
        conn.close()
    if status != 200:
        raise http.client.HTTPException(f"status {status}")
    return (t1 - t0) / 1e6, w0, time.time(), body


def run_scrapes(port: int, window_s: float, min_n: int, hard_s: float,
                proctree: bool) -> Samples:
    """Scrape back to back (GAP_S apart) for ``window_s``, or longer, up to ``hard_s``, until
    ``min_n`` scrapes are in."""
    s = Samples()
    start = time.monotonic()
    while True:
        elapsed = time.monotonic() - start
        if elapsed >= hard_s or (elapsed >= window_s and len(s.ms) >= min_n):
            break
        try:
            ms, w0, w1, body = scrape_once(port)
        except (OSError, http.client.HTTPException):
            s.errors += 1
            if s.errors > 20:
                break
            time.sleep(0.1)
            continue
        s.ms.append(ms)
        s.spans.append((w0, w1))
        s.body_bytes.append(len(body))
        if proctree:
            # the snapshot behind this body is from inside the scrape; the age says
            # when the last /proc walk of the host-state thread ended
            m = AGE_RE.search(body)
            if m:
                s.walk_ends.append((w0 + w1) / 2 - float(m.group(1)))
            age, took = ROUND_AGE_RE.search(body), ROUND_S_RE.search(body)
            if age and took:
                end = (w0 + w1) / 2 - float(age.group(1))
                s.rounds.add((round(end, 1), float(took.group(1))))
        time.sleep(GAP_S)
    return s


def walk_windows(walk_ends: list[float], interval_s: float) -> list[tuple[float, float]]:
    """Wall-clock spans of the host-state walks that ended while we scraped.

    The thread does ``sample(); wait(interval)``, so a walk that ended at E2 began
    one interval after the previous one ended at E1: it ran over [E1 + interval, E2].
    """
    ends: list[float] = []
    for e in sorted(walk_ends):
        if not ends or e - ends[-1] > 1.0:  # same walk seen by many scrapes, a few ms apart
            ends.append(e)
    return [(a + interval_s, b) for a, b in itertools.pairwise(ends)
            if b > a + interval_s]


def round_windows(rounds: set[tuple[float, float]]) -> list[tuple[float, float]]:
    """Wall-clock spans of the resource sample rounds seen while we scraped.

    A round's metrics give when it was applied (its end, to 0.1 s here, as many
    scrapes see one round) and how long its reads took; applying it takes a
    little longer, so each span starts 0.2 s earlier than the reads alone say.
    """
    ends: dict[float, float] = {}
    for end, took in sorted(rounds):
        if not ends or end - max(ends) > 1.0:
            ends[end] = took
    return [(end - took - 0.2, end + 0.1) for end, took in ends.items()]


def overlaps(span: tuple[float, float], windows: list[tuple[float, float]]) -> bool:
    """Whether a scrape's wall-clock span overlaps any of ``windows``."""
    return any(span[0] < b and span[1] > a for a, b in windows)


def split_by(s: Samples, windows: list[tuple[float, float]],
             skip: list[tuple[float, float]] | None = None) -> tuple[list[float], list[float]]:
    """Scrape ms of those overlapping any of ``windows``, and of the rest; scrapes that
    overlap any of ``skip`` are in neither."""
    during, quiet = [], []
    for ms, span in zip(s.ms, s.spans, strict=True):
        if skip and overlaps(span, skip):
            continue
        (during if overlaps(span, windows) else quiet).append(ms)
    return during, quiet


def wait_first_walk(port: int, timeout: float) -> None:
    """Until /metrics shows a host-state sample: the walk that starts with the daemon is
    not a steady-state one, so the timed window starts after it."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        with contextlib.suppress(OSError, http.client.HTTPException):
            status, body = http_get(port, "/metrics", timeout=30)
            if status == 200 and AGE_RE.search(body):
                return
        time.sleep(0.1)
    raise TimeoutError("proctree-exporter: no host-state sample in /metrics")


def roots_summary(port: int) -> dict[str, Any]:
    """Members per root, from proctree-exporter's own /api/v1/roots."""
    status, body = http_get(port, "/api/v1/roots", timeout=30)
    if status != 200:
        return {"error": f"status {status}"}
    roots = json.loads(body)["roots"]
    members = [r["member_count"] for r in roots]
    return {
        "roots": len(roots),
        "up": sum(1 for r in roots if r["up"]),
        "members_min": min(members),
        "members_median": statistics.median(members),
        "members_max": max(members),
        "members_total": sum(members),
        "roots_with_100_plus": sum(1 for m in members if m >= 100),
        "roots_with_1000_plus": sum(1 for m in members if m >= 1000),
        "roots_without_members": [r["name"] for r in roots if not r["member_count"]],
        "per_root": {r["name"]: r["member_count"] for r in roots},
    }


@dataclass(frozen=True)
class Target:
    """An exporter configuration to measure."""

    key: str
    label: str
    kind: str  # proctree | process | node


TARGETS = (
    Target("proctree_10", "proctree-exporter, 10 roots", "proctree"),
    Target("proctree_100", "proctree-exporter, 100 roots", "proctree"),
    Target("process_exporter", "process-exporter, by comm", "process"),
    Target("node_defaults", "node-exporter, defaults + processes", "node"),
    Target("node_processes", "node-exporter, processes only", "node"),
)


def launch(t: Target, groups: list[Group], tmp: Path) -> Exporter:
    """Write ``t``'s config (YAML files are written as JSON, a subset of YAML) and start it."""
    port = free_port()
    listen = f"127.0.0.1:{port}"
    log = tmp / f"{t.key}.log"
    if t.kind == "proctree":
        cfg = {
            "web": {"listen_address": listen},
            "host": {"state_sample_interval_seconds": SAMPLE_INTERVAL_S},
            "roots": root_configs(groups, 10 if t.key == "proctree_10" else 100),
        }
        path = tmp / f"{t.key}.yaml"
        path.write_text(json.dumps(cfg, indent=1))
        argv = [str(PROCTREE_BIN), "--config", str(path), "--web.listen-address", listen]
        return Exporter(t.label, argv, port, "/-/ready", log)
    if t.kind == "process":
        path = tmp / "process-exporter.yaml"
        path.write_text(json.dumps({"process_names": [{"name": "{{.Comm}}",
                                                       "cmdline": [".+"]}]}))
        argv = [PROCESS_EXPORTER, "-config.path", str(path), "-web.listen-address", listen]
        # no ready endpoint: the landing page answers once it listens
        return Exporter(t.label, argv, port, "/", log)
    argv = [NODE_EXPORTER, f"--web.listen-address={listen}", "--collector.processes"]
    if t.key == "node_processes":
        argv.insert(1, "--collector.disable-defaults")
    return Exporter(t.label, argv, port, "/", log)


def measure_target(t: Target, groups: list[Group], tmp: Path, window_s: float,
                   started: list[Exporter]) -> dict[str, Any]:
    """Start ``t`` fresh, wait until ready, warm up, time scrapes, stop it."""
    ex = launch(t, groups, tmp)
    started.append(ex)
    try:
        ready_s = ex.wait_ready(180)
        out: dict[str, Any] = {"label": t.label, "ready_s": ready_s}
        if t.kind == "proctree":
            wait_first_walk(ex.port, 120)
            out["roots"] = roots_summary(ex.port)
            # one interval and a margin after the first walk: exactly one more walk
            # starts inside the window, and it has time to finish there
            window, min_n, hard = SAMPLE_INTERVAL_S + 5.0, 20, SAMPLE_INTERVAL_S + 30.0
        else:
            window, min_n, hard = window_s, 20, max(window_s, 90.0)
        for _ in range(WARMUP_SCRAPES):
            scrape_once(ex.port)
        procs = proc_count()
        out["reference_ms"] = reference_ms()
        host0, me0 = host_busy_seconds(), self_cpu_seconds()
        cpu0, w0 = cpu_seconds(ex.pid), time.monotonic()
        s = run_scrapes(ex.port, window, min_n, hard, proctree=t.kind == "proctree")
        cpu1, w1 = cpu_seconds(ex.pid), time.monotonic()
        host1, me1 = host_busy_seconds(), self_cpu_seconds()
        out.update({
            "host_processes": procs,
            "scrape_ms": summary(s.ms),
            "errors": s.errors,
            "body_bytes": {"min": min(s.body_bytes, default=0),
                           "max": max(s.body_bytes, default=0)},
            "window_s": w1 - w0,
            # whole process, background threads included, over the timed window
            "cpu_ms_per_scrape": (cpu1 - cpu0) * 1e3 / max(1, len(s.ms)),
            "cpu_share_of_one_core": (cpu1 - cpu0) / (w1 - w0),
            "rss_kib": rss_kib(ex.pid),
            # CPUs kept busy by anything but the exporter and the bench (other work on the
            # host, kernel threads): contention that inflates every number in this window
            "other_cpus_busy": max(0.0, ((host1 - host0) - (cpu1 - cpu0) - (me1 - me0))
                                   / (w1 - w0)),
            "loadavg_1m_after": float(Path("/proc/loadavg").read_text().split()[0]),
        })
        if t.kind == "proctree":
            windows = walk_windows(s.walk_ends, SAMPLE_INTERVAL_S)
            during, quiet = split_by(s, windows)
            out["host_walk"] = {
                "walks_in_window": len(windows),
                "walk_s_in_daemon": [round(b - a, 3) for a, b in windows],
                "scrapes_during_walk": summary(during),
                "scrapes_outside_walk": summary(quiet),
            }
            rounds = round_windows(s.rounds)
            in_round, outside = split_by(s, rounds, skip=windows)
            out["resource_rounds"] = {
                "rounds_in_window": len(rounds),
                "round_s_in_daemon": [round(b - a, 3) for a, b in rounds],
                "scrapes_during_round_not_walk": summary(in_round),
                "scrapes_outside_walk_and_rounds": summary(outside),
            }
        return out
    finally:
        ex.stop()


def measure_size(host_size: int, binary: Path, tmp: Path, window_s: float,
                 started_groups: list[Group], started_ex: list[Exporter],
                 deadline: Deadline, notes: list[str],
                 targets: tuple[Target, ...] = TARGETS) -> dict[str, Any]:
    """Fill the host to ``host_size`` processes, measure ``targets``, empty it again."""
    groups = start_groups(binary, host_size, started_groups)
    try:
        sizes = [g.count for g in groups]
        res: dict[str, Any] = {
            "host_size": host_size,
            "host_processes": proc_count(),
            "sleepers": sum(sizes),
            "group_children": {"big": sizes[0], "small": sizes[-1]},
            "walk_ms_in_bench": time_walk(),
            "targets": {},
        }
        print(f"  {res['host_processes']:,} processes in /proc ({res['sleepers']:,} sleepers "
              f"in {GROUPS} groups); the host-state walk takes {res['walk_ms_in_bench']:.0f} "
              f"ms here", flush=True)
        for t in targets:
            if deadline.left() < 120:
                notes.append(f"{host_size:,}: skipped {t.label}: run time bound reached")
                continue
            try:
                r = measure_target(t, groups, tmp, window_s, started_ex)
            except (RuntimeError, TimeoutError, OSError, http.client.HTTPException) as exc:
                notes.append(f"{host_size:,}: {t.label} failed: {exc}")
                print(f"    {t.label}: FAILED {exc}", flush=True)
                continue
            res["targets"][t.key] = r
            sm = r["scrape_ms"]
            print(f"    {t.label:<36} median {sm['median']:9.2f} ms  p99 {sm['p99']:9.2f} ms  "
                  f"n={sm['n']}", flush=True)
        res["ratios"] = ratios(res["targets"])
        return res
    finally:
        end_groups(groups)


def ratios(targets: dict[str, Any]) -> dict[str, Any]:
    """Their latency / ours, by median and by p99, against both proctree configs."""
    out: dict[str, Any] = {}
    for ours in ("proctree_100", "proctree_10"):
        if ours not in targets:
            continue
        o = targets[ours]["scrape_ms"]
        for theirs in ("process_exporter", "node_defaults", "node_processes"):
            if theirs in targets:
                t = targets[theirs]["scrape_ms"]
                out[f"{theirs}/{ours}"] = {"median": t["median"] / o["median"],
                                           "p99": t["p99"] / o["p99"]}
    return out


# -- report --------------------------------------------------------------------------------


def evaluate(results: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The brief's targets, each with its measured value and PASS/MISS."""
    out = []
    p100 = [(r["host_size"], r["targets"]["proctree_100"]["scrape_ms"]) for r in results
            if "proctree_100" in r["targets"]]
    if p100:
        worst = max(s["p99"] for _, s in p100)
        out.append({
            "target": f"proctree-exporter, 100 roots: <= {LATENCY_TARGET_MS:g} ms per scrape "
                      f"(p99) at every host size",
            "value": "; ".join(f"{size:,}: median {s['median']:.2f}, p99 {s['p99']:.2f}, "
                               f"max {s['max']:.2f} ms" for size, s in p100),
            "pass": len(p100) == len(results) and worst <= LATENCY_TARGET_MS})
    at = next((r for r in results if r["host_size"] == RATIO_AT), None)
    key = "process_exporter/proctree_100"
    if at is not None and key in at["ratios"]:
        ratio = at["ratios"][key]
        out.append({
            "target": f">= {RATIO_TARGET:g}x faster than process-exporter at {RATIO_AT:,} "
                      f"processes (median, vs 100 roots)",
            "value": f"{ratio['median']:,.1f}x (p99: {ratio['p99']:,.1f}x)",
            "pass": ratio["median"] >= RATIO_TARGET})
    return out


def proctree_rows(results: list[dict[str, Any]]
                  ) -> Iterator[tuple[dict[str, Any], int, dict[str, Any]]]:
    """(size's result, roots, proctree-exporter's figures) for each size and root count."""
    for r in results:
        for key, n in (("proctree_10", 10), ("proctree_100", 100)):
            x = r["targets"].get(key)
            if x is not None:
                yield r, n, x


def print_table(meta: dict[str, Any], results: list[dict[str, Any]],
                targets: list[dict[str, Any]]) -> None:
    """The human-readable report."""
    print(f"\nscrape: {meta['time']}  kernel {meta['kernel']}  {meta['cpus']} CPUs  "
          f"python {meta['python']}")
    print(f"versions: proctree-exporter {meta['versions']['proctree_exporter']}; "
          f"{meta['versions']['process_exporter']}; {meta['versions']['node_exporter']}")
    print("GET /metrics over loopback, new connection each, body read fully, no gzip; "
          "each exporter started\nfresh per host size and measured alone; "
          f"{WARMUP_SCRAPES} warm-up scrapes; sleepers {meta['sleeper_linkage']}ally linked")
    hdr = (f"{'host procs':>10}  {'exporter':<36}{'n':>6}{'median':>9}{'p99':>9}{'max':>9}"
           f"{'body KiB':>10}{'CPU ms':>8}{'RSS MiB':>9}{'ready s':>8}{'ref ms':>8}")
    print("\nscrape latency, ms  (CPU ms: the exporter process's CPU per scrape, background "
          "threads included;\nref ms: a fixed Python loop in the bench just before the "
          "window, to show machine-speed drift;\nother: CPUs kept busy meanwhile by "
          "anything but the exporter and the bench, i.e. contention)")
    print(hdr)
    print("-" * len(hdr))
    for r in results:
        first = True
        for t in TARGETS:
            x = r["targets"].get(t.key)
            size = f"{r['host_processes']:,}" if first else ""
            first = False
            if x is None:
                print(f"{size:>10}  {t.label:<36}  (not measured)")
                continue
            s = x["scrape_ms"]
            rss = f"{x['rss_kib'] / 1024:.1f}" if x["rss_kib"] else "-"
            print(f"{size:>10}  {t.label:<36}{s['n']:>6}{s['median']:>9.2f}{s['p99']:>9.2f}"
                  f"{s['max']:>9.2f}{x['body_bytes']['max'] / 1024:>10.1f}"
                  f"{x['cpu_ms_per_scrape']:>8.2f}{rss:>9}{x['ready_s']:>8.2f}"
                  f"{x['reference_ms']:>8.2f}{x['other_cpus_busy']:>7.2f}")
    print("\nratio, their latency / ours: median (p99)")
    cols = [("process_exporter", "process-exporter"), ("node_defaults", "node defaults+proc"),
            ("node_processes", "node proc only")]
    print(f"{'host procs':>10}  {'ours':<18}" + "".join(f"{c:>22}" for _, c in cols))
    for r in results:
        for ours, label in (("proctree_100", "100 roots"), ("proctree_10", "10 roots")):
            cells = []
            for key, _ in cols:
                x = r["ratios"].get(f"{key}/{ours}")
                cells.append(f"{x['median']:,.1f}x ({x['p99']:,.1f}x)" if x else "-")
            print(f"{r['host_processes']:>10,}  {label:<18}" + "".join(f"{c:>22}"
                                                                    for c in cells))
    print(f"\nproctree-exporter: its scrape does not walk /proc. Host-wide process states come "
          f"from a background\nthread that walks /proc every {SAMPLE_INTERVAL_S:g} s "
          "(host.state_sample_interval_seconds), so the scrape cost does not grow\nwith the "
          "host; the walk still shares the GIL, so scrapes overlapping it are shown apart.")
    print(f"{'host procs':>10}  {'roots':>5}  {'walk ms':>8}  {'walk s':>7}  "
          f"{'during walk: n / median / max':>30}  {'outside: median / p99':>22}  "
          f"{'members min/med/max':>20}  {'>=100':>5}  {'>=1000':>6}")
    for r, n, x in proctree_rows(results):
        hw, rs = x["host_walk"], x["roots"]
        d, q = hw["scrapes_during_walk"], hw["scrapes_outside_walk"]
        walk = ",".join(f"{w:.2f}" for w in hw["walk_s_in_daemon"]) or "-"
        dur = f"{d['n']} / {d['median']:.2f} / {d['max']:.2f}" if d["n"] else "0"
        print(f"{r['host_processes']:>10,}  {n:>5}  {r['walk_ms_in_bench']:>8.0f}  "
              f"{walk:>7}  {dur:>30}  {q['median']:>9.2f} / {q['p99']:>8.2f}  "
              f"{rs['members_min']:>6,}/{rs['members_median']:>6,.0f}/"
              f"{rs['members_max']:>6,}  {rs['roots_with_100_plus']:>5}  "
              f"{rs['roots_with_1000_plus']:>6}")
    print("  walk ms: count_states() timed in the bench process; walk s: the same walk inside "
          "the daemon,\n  from proctree_host_states_age_seconds (sampled while scraped back "
          "to back)")
    print("\nresource sample rounds (resources.sample_interval_seconds, from "
          "proctree_resources_sample_age_seconds and _duration_seconds)")
    print(f"{'host procs':>10}  {'roots':>5}  {'round s':>12}  "
          f"{'during a round: n / median / p99':>33}  "
          f"{'outside walk and rounds: n / median / p99':>42}")
    for r, n, x in proctree_rows(results):
        rr = x.get("resource_rounds")
        if rr is None:
            continue
        b, q = rr["scrapes_during_round_not_walk"], rr["scrapes_outside_walk_and_rounds"]
        took = ",".join(f"{w:.2f}" for w in rr["round_s_in_daemon"]) or "-"
        busy = f"{b['n']} / {b['median']:.2f} / {b['p99']:.2f}" if b["n"] else "0"
        idle = f"{q['n']} / {q['median']:.2f} / {q['p99']:.2f}" if q["n"] else "0"
        print(f"{r['host_processes']:>10,}  {n:>5}  {took:>12}  {busy:>33}  {idle:>42}")
    print("\ntargets")
    for t in targets:
        print(f"  {'PASS' if t['pass'] else 'MISS'}  {t['target']}: {t['value']}")
    for note in meta["notes"]:
        print(f"note: {note}")


# -- main ----------------------------------------------------------------------------------


def ensure_environment(bootstrap: bool) -> None:
    """Run ``scripts/bootstrap bench`` (venv, Debian's exporters), then re-exec under the
    project's venv: the bench imports proctree_exporter to time its /proc walk."""
    if bootstrap and not os.environ.get(ENV_BOOTSTRAPPED):
        subprocess.run([str(REPO / "scripts" / "bootstrap"), "bench"], check=True)
        os.environ[ENV_BOOTSTRAPPED] = "1"
    if Path(sys.prefix).resolve() != (REPO / ".venv").resolve():
        os.execv(str(VENV_PYTHON), [str(VENV_PYTHON), str(Path(__file__).resolve()),
                                    *sys.argv[1:]])


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark; exit 0 whatever the targets say."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    ap.add_argument("--sizes", default="1000,10000,20000",
                    help="processes on the host, ascending (default 1000,10000,20000)")
    ap.add_argument("--window", type=float, default=15.0,
                    help="seconds of scraping per Go exporter (at least 20 scrapes, at most "
                         "90 s); proctree-exporter always gets one sample interval + 5 s")
    ap.add_argument("--no-bootstrap", action="store_true",
                    help="skip scripts/bootstrap bench (already done)")
    ap.add_argument("--targets", default=",".join(t.key for t in TARGETS),
                    help="exporters to measure, comma-separated keys (default: all of "
                         + ", ".join(t.key for t in TARGETS) + ")")
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = ap.parse_args(argv)
    sizes = sorted(int(s) for s in args.sizes.split(","))
    keys = args.targets.split(",")
    unknown = sorted(set(keys) - {t.key for t in TARGETS})
    if unknown:
        ap.error(f"unknown --targets {', '.join(unknown)}")
    targets = tuple(t for t in TARGETS if t.key in keys)
    if os.geteuid() != 0:
        print("scrape: needs root (the proc connector, and filling the host)", file=sys.stderr)
        return 2
    ensure_environment(not args.no_bootstrap)
    from proctree_exporter import __version__

    deadline = Deadline(HARD_DEADLINE_S)
    notes: list[str] = []
    started_groups: list[Group] = []
    started_ex: list[Exporter] = []
    results: list[dict[str, Any]] = []
    foreign = foreign_exporters(set())
    notes.append("before the run, Debian's exporters running or on their default ports: "
                 + ("; ".join(foreign) if foreign else "none"))
    tmp = Path(tempfile.mkdtemp(prefix="scrape-"))
    meta: dict[str, Any] = {
        "benchmark": "scrape",
        "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "kernel": platform.release(),
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "versions": {
            "proctree_exporter": __version__,
            "process_exporter": tool_version([PROCESS_EXPORTER, "-version"]),
            "node_exporter": tool_version([NODE_EXPORTER, "--version"]),
        },
        "baseline_processes": proc_count(),
        "loadavg_before": Path("/proc/loadavg").read_text().split()[:3],
        "targets_measured": [t.key for t in targets],
        "source_fingerprint": source_fingerprint(),
        "notes": notes,
    }
    try:
        with raised_limits(max(sizes) + 2_000, notes):
            binary, meta["sleeper_linkage"] = compile_sleepers(tmp)
            for size in sizes:
                if deadline.left() < 300:
                    notes.append(f"stopped before {size:,} processes: run time bound reached")
                    break
                print(f"host size {size:,} ...", flush=True)
                try:
                    results.append(measure_size(size, binary, tmp, args.window,
                                                started_groups, started_ex, deadline, notes,
                                                targets))
                except (RuntimeError, TimeoutError, EOFError) as exc:
                    # e.g. other work already fills the host past this size
                    notes.append(f"{size:,} processes not measured: {exc}")
                    print(f"  not measured: {exc}", flush=True)
    finally:
        for ex in reversed(started_ex):
            try:
                ex.stop()
            except (OSError, subprocess.TimeoutExpired) as exc:
                print(f"scrape: could not end {ex.label} pid {ex.pid}: {exc}", file=sys.stderr)
        for g in reversed(started_groups):
            try:
                g.end()
            except (OSError, subprocess.TimeoutExpired) as exc:
                print(f"scrape: could not end group pid {g.pid}: {exc}", file=sys.stderr)
        shutil.rmtree(tmp, ignore_errors=True)
    if source_fingerprint() != meta["source_fingerprint"]:
        notes.append("the exporter's source files changed during the run: later host sizes "
                     "ran other code than earlier ones; run again on a quiet checkout")
    busy = [f"{r['host_size']:,} {x['label']} ({x['other_cpus_busy']:.2f})" for r in results
            for x in r["targets"].values() if x["other_cpus_busy"] > 0.25]
    if busy:
        notes.append("other work kept more than a quarter of a CPU busy during: "
                     + "; ".join(busy) + " (numbers there are inflated)")
    short = [f"{r['host_size']:,} {x['label']} (n={x['scrape_ms']['n']})" for r in results
             for x in r["targets"].values() if x["scrape_ms"]["n"] < 100]
    if short:
        notes.append("fewer than 100 scrapes (time bound), so p99 is the max: "
                     + "; ".join(short))
    left = leftovers({g.pid for g in started_groups} | {e.pid for e in started_ex})
    notes.append(f"processes left behind after cleanup: {len(left)}"
                 + (f" {left[:20]}" if left else ""))
    foreign = foreign_exporters(set())
    notes.append("after the run, Debian's exporters running or on their default ports: "
                 + ("; ".join(foreign) if foreign else "none"))
    if not results:
        print("scrape: nothing measured", file=sys.stderr)
        for note in notes:
            print(f"note: {note}", file=sys.stderr)
        return 0
    meta["definitions"] = {
        "scrape_ms": "wall time (perf_counter) of one GET /metrics on a new loopback TCP "
                     "connection, connect to last body byte, measured in the bench",
        "host_processes": "numeric entries of /proc (kernel threads included) just before "
                          "the timed window",
        "cpu_ms_per_scrape": "utime+stime of the whole exporter process over the timed "
                             "window / scrapes",
        "ratio": "their scrape_ms / proctree-exporter's, same host size, same run",
    }
    targets = evaluate(results)
    print_table(meta, results, targets)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({**meta, "sizes": results, "targets": targets}, indent=2,
                                   default=str) + "\n")
    print(f"\nwrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
