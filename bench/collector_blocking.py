"""Collector blocking benchmark: how long readers keep the collector thread from the tree.

The collector thread applies kernel events to the PID tree under the tree lock;
readers (HTTP worker threads serving the JSON API, /metrics snapshots) take the
same lock to copy. While a reader holds it, the collector waits and the event
lag grows. This bench measures that, with the daemon run IN-PROCESS so that the
lock can be timed:

- ``load_config`` (a temporary config: the ``host`` root, PID 1, 10,000 members
  listed at most; loopback on a free port), ``build``, then ``daemon.tree.lock``
  is replaced by :class:`TimedRLock` before ``daemon.start()``. Every user looks
  the lock up at call time, so every hold is seen. For each outermost hold it
  records the thread and the duration; for each outermost acquire, how long the
  thread waited (lock and then the GIL: both are time the thread could not run).
- The event lag (kernel timestamp to applied) comes from the collector's
  ``stats.lag`` (a LagRecorder): a bench thread drains its ring of recent lags
  (``recent``/``recent_n``, 65,536 samples) every 0.2 s, so each phase has every
  lag sample applied in its window (exact p50/p99/max; ``ring_overwritten``
  counts samples overwritten before they were read, normally 0). The histogram
  delta (``counts``) gives a bucket-bound p99 over the same window as a
  cross-check. A window ends when the storm (or the phase's time) ends, the
  clients are told to stop, the daemon's other threads have been idle for 0.5 s
  (requests already taken finish) and 0.5 s more have passed (at most 40 s): so
  storm events applied late, after a reader let go, still count. Storm events
  (2 per fork) with no lag sample in the window were dropped by the kernel (or
  were still queued): the judged p99 (``p99*``) counts them as infinitely late.
- The host holds at least 10,000 processes under PID 1: sleeping children of one
  ``bench/sleepers.c`` group (compiled at run time), started before the daemon.
- The storm is ``bench/loadgen.c`` fork+exit, 2 workers paced to 7,000 forks/s
  in total (``--rate``; this 2-core VM reaches about 6,000-6,500/s flat out on an
  idle host, less with 10,000 processes and the daemon beside it: the rate
  reached is reported per phase).
- The 20 clients run in a separate process (this file with ``client``), one
  thread each, GET ``/api/v1/roots/host`` in a loop, a new connection per
  request (the server answers one request per connection), the body read to the
  end and counted, until told to stop or their deadline.

Phases, in order (each ``--seconds`` long, default 10):

- ``solo``: one client, 5 requests one after another, no storm: what one
  request costs (size, time, lock hold).
- a warm-up storm (``--warmup-storm``, 3 s, not measured), so that A does not
  start from a tree without tombstones; then 3 s for the daemon to notice and
  resync any loss of the warm-up (a /proc walk under the lock) before A.
- ``A``: storm, no clients.
- ``B``: storm with 20 clients (started ``--client-warmup`` s before the storm).
- ``C``: 20 clients, no storm (``--no-phase-c`` skips it).

Targets (from the issue): lag p99 in B at most 1.2 x lag p99 in A; no hold of
the tree lock by any thread other than the collector over 1 ms (over the
measured phases solo, A, B, C; the daemon's own start-up is reported apart).

Prints a table and writes ``bench/results/collector_blocking.json``. A missed
target is printed as MISS, never turned into a failing exit status: this
measures. Every process it starts is ended by pid in a ``finally`` block; a hard
deadline (SIGALRM) bounds the run. The machine may be shared: the load average
is printed with each phase, and the CPU used by other work (host busy time less
this process, loadgen and the client) with its busiest kernel threads: kernel
memory monitoring (DAMON's ``kdamond``) can cost more with 10,000 processes.

Usage (root, initial namespaces, a C compiler)::

    .venv/bin/python bench/collector_blocking.py [--seconds 10] [--rate 7000] [--clients 20]

It measures the ``proctree_exporter`` Python imports: this checkout's src/
through the editable install, or another tree put first on ``PYTHONPATH``
(e.g. ``git archive`` of a commit); the JSON records which, with a fingerprint.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import gc
import http.client
import importlib.util
import json
import logging
import math
import os
import platform
import re
import select
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from array import array
from pathlib import Path
from typing import Any

from harness import (
    HardDeadline,
    free_port,
    git_describe,
    loadavg,
    on_alarm,
    on_sigterm,
    percentile,
    source_fingerprint,
    start_ticks,
    stat_fields,
)

REPO = Path(__file__).resolve().parent.parent
VENV_PYTHON = REPO / ".venv" / "bin" / "python"
LOADGEN_SRC = REPO / "bench" / "loadgen.c"
SLEEPERS_C = REPO / "bench" / "sleepers.c"
DEFAULT_OUT = REPO / "bench" / "results" / "collector_blocking.json"

COLLECTOR_THREAD = "proctree-collector"
API_PATH = "/api/v1/roots/host"
HOST_MEMBERS = 10_000  # the host root's max_members: the listing the clients fetch
MEMBER_MARGIN = 50  # sleepers beyond HOST_MEMBERS, so the listing stays full
SOLO_REQUESTS = 5
LAG_RING = 65_536  # LagRecorder.recent
TAP_INTERVAL_S = 0.2
HOLD_TARGET_MS = 1.0
LAG_RATIO_TARGET = 1.2
REQUEST_TIMEOUT_S = 30.0
CLIENT_GRACE_S = 3.0  # after the stop, in-flight requests may finish this long
SETTLE_S = 1.0  # between phases
# after the warm-up storm: if it lost events, the daemon's kernel-drop check (1 s) and the
# resync it triggers (a /proc walk under the lock) happen now, not in phase A
WARMUP_SETTLE_S = 3.0
# After a phase's storm (or time), the clients are stopped and the window stays open until
# the daemon's threads other than the collector have been idle for IDLE_S (requests already
# taken finish), then DRAIN_S more for the collector to apply what queued meanwhile; at
# most DRAIN_MAX_S. Events applied in that drain still belong to the phase.
IDLE_S = 0.5
DRAIN_S = 0.5
DRAIN_MAX_S = 40.0
EVENTS_PER_FORK = 2  # fork-exit: a FORK and an EXIT event per process
READY_TIMEOUT_S = 60.0
SLEEPERS_READY_S = 120.0
LOADGEN_GRACE_S = 30.0


# -- small helpers ---------------------------------------------------------------------


def http_get(port: int, path: str, timeout: float = REQUEST_TIMEOUT_S) -> tuple[int, bytes]:
    """Status and body of GET ``path`` on 127.0.0.1:``port``, new connection."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request("GET", path)
        resp = conn.getresponse()
        return resp.status, resp.read()
    finally:
        conn.close()


def kernel_threads() -> dict[int, str]:
    """kthreadd and its kernel threads: pid -> comm."""
    out = {}
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        f = stat_fields(int(name))
        if f is not None and (name == "2" or f[1] == b"2"):
            with contextlib.suppress(OSError):
                out[int(name)] = Path(f"/proc/{name}/comm").read_text().strip()
    return out


def kernel_thread_cpu(threads: dict[int, str]) -> dict[str, float]:
    """CPU s so far of each of ``threads`` still there, by ``comm[pid]``."""
    out = {}
    for pid, comm in threads.items():
        f = stat_fields(pid)
        if f is not None:
            out[f"{comm}[{pid}]"] = (int(f[11]) + int(f[12])) / os.sysconf("SC_CLK_TCK")
    return out


def user_processes() -> int:
    """Processes under PID 1 right now (kthreadd and its kernel threads left out)."""
    n = 0
    for name in os.listdir("/proc"):
        if not name.isdigit() or name == "2":
            continue
        f = stat_fields(int(name))
        if f is not None and f[1] != b"2":  # ppid
            n += 1
    return n


def host_busy_seconds() -> float:
    """CPU seconds all CPUs have been busy since boot (idle and iowait left out)."""
    fields = Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]
    user, nice, system, _idle, _iowait, irq, softirq, steal = (int(x) for x in fields[:8])
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")


def thread_cpu_seconds() -> dict[str, float]:
    """CPU seconds of every live thread of this process, by thread group name."""
    out: dict[str, float] = {}
    for t in threading.enumerate():
        if t.ident is None:
            continue
        try:
            cpu = time.clock_gettime(time.pthread_getcpuclockid(t.ident))
        except (OSError, ProcessLookupError):
            continue
        key = thread_group(t.name)
        out[key] = out.get(key, 0.0) + cpu
    return out


def thread_group(name: str) -> str:
    """``proctree-http_7`` -> ``proctree-http_*``: pool threads are one group."""
    return re.sub(r"_\d+$", "_*", name)


def package_dir() -> Path:
    """Where ``proctree_exporter`` is imported from (found, not imported): the project's
    src/ through the editable install, or a checkout put first on PYTHONPATH."""
    spec = importlib.util.find_spec("proctree_exporter")
    if spec is None or spec.origin is None:
        raise SystemExit("collector_blocking: proctree_exporter is not importable")
    return Path(spec.origin).resolve().parent


# -- the instrumented lock -----------------------------------------------------------


class TimedRLock:
    """A drop-in for ``threading.RLock`` that times outermost holds and waits.

    ``holds``: (acquired at, held) in monotonic ns and the thread's name, one per
    outermost hold (reentrant acquires are free and not counted). ``waits``:
    (asked at, waited) and the name, one per outermost acquire; the wait ends
    when ``acquire`` returns, so it includes getting the GIL back. Both lists
    are appended to under the lock; :meth:`take` swaps them for empty ones.
    """

    def __init__(self) -> None:
        self._lock = threading.RLock()
        self._depth = 0  # changed by the owner only
        self._since = 0
        self._owner = ""
        self.holds: list[tuple[int, int, str]] = []
        self.waits: list[tuple[int, int, str]] = []

    def acquire(self, blocking: bool = True, timeout: float = -1) -> bool:
        t0 = time.monotonic_ns()
        if not self._lock.acquire(blocking, timeout):
            return False
        if self._depth == 0:
            t1 = time.monotonic_ns()
            self._since = t1
            self._owner = threading.current_thread().name
            self.waits.append((t0, t1 - t0, self._owner))
        self._depth += 1
        return True

    def release(self) -> None:
        if not self._lock._is_owned():  # type: ignore[attr-defined]
            raise RuntimeError("cannot release un-acquired lock")
        self._depth -= 1
        if self._depth == 0:
            self.holds.append((self._since, time.monotonic_ns() - self._since, self._owner))
        self._lock.release()

    def __enter__(self) -> bool:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()

    def take(self) -> tuple[list[tuple[int, int, str]], list[tuple[int, int, str]]]:
        """The holds and waits recorded so far; start new lists.

        A hold that spans the call lands in the list of the window it ends in.
        """
        holds, self.holds = self.holds, []
        waits, self.waits = self.waits, []
        return holds, waits


def lock_summary(holds: list[tuple[int, int, str]],
                 waits: list[tuple[int, int, str]], t0_ns: int) -> dict[str, Any]:
    """Holds by thread group, the longest non-collector hold, the collector's waits."""
    groups: dict[str, dict[str, Any]] = {}
    per_group: dict[str, list[int]] = {}
    for _, held, name in holds:
        per_group.setdefault(thread_group(name), []).append(held)
    for g, vals in sorted(per_group.items()):
        groups[g] = {"holds": len(vals), "max_ms": max(vals) / 1e6,
                     "p99_ms": (percentile(vals, 0.99) or 0) / 1e6,
                     "total_ms": sum(vals) / 1e6,
                     "over_1ms": sum(1 for v in vals if v > HOLD_TARGET_MS * 1e6)}
    readers = [(held, at, name) for at, held, name in holds if name != COLLECTOR_THREAD]
    longest = max(readers, default=None)
    coll_holds = [held for _, held, name in holds if name == COLLECTOR_THREAD]
    coll_waits = [w for _, w, name in waits if name == COLLECTOR_THREAD]
    return {
        "by_thread": groups,
        "reader_holds": len(readers),
        "reader_hold_max_ms": longest[0] / 1e6 if longest else None,
        "reader_hold_max_thread": longest[2] if longest else None,
        "reader_hold_max_at_s": (longest[1] - t0_ns) / 1e9 if longest else None,
        "reader_hold_p99_ms": (percentile([r[0] for r in readers], 0.99) or 0) / 1e6
        if readers else None,
        "reader_holds_over_1ms": sum(1 for r in readers if r[0] > HOLD_TARGET_MS * 1e6),
        "reader_hold_total_ms": sum(r[0] for r in readers) / 1e6,
        "collector_holds": len(coll_holds),
        "collector_hold_max_ms": max(coll_holds) / 1e6 if coll_holds else None,
        "collector_hold_p99_ms": (percentile(coll_holds, 0.99) or 0) / 1e6
        if coll_holds else None,
        "collector_acquires": len(coll_waits),
        "collector_wait_p50_ms": (percentile(coll_waits, 0.5) or 0) / 1e6
        if coll_waits else None,
        "collector_wait_p99_ms": (percentile(coll_waits, 0.99) or 0) / 1e6
        if coll_waits else None,
        "collector_wait_max_ms": max(coll_waits) / 1e6 if coll_waits else None,
        "collector_wait_total_ms": sum(coll_waits) / 1e6,
        "collector_waits_over_1ms": sum(1 for w in coll_waits if w > 1e6),
    }


# -- the lag ring, drained -------------------------------------------------------------


class LagTap:
    """Copies every new sample of a LagRecorder's ring every ``interval`` s.

    ``recent[i & 0xFFFF]`` is written before ``recent_n`` is incremented, so the
    samples below a ``recent_n`` read are complete. A sample overwritten before
    it was copied (more than 65,536 newer ones) is counted in ``lost``.

    Each poll also adds a row to ``timeline``: (s since the window opened, lag
    samples applied since the previous poll, their max lag ms, CPU s of the
    collector, of the daemon's other threads, and of the whole host since the
    previous poll), to tell when a stall happened and who had the CPU then.
    """

    def __init__(self, lag: Any, interval: float = TAP_INTERVAL_S) -> None:
        self.lag = lag
        self.interval = interval
        self._mu = threading.Lock()
        self._active = False
        self._seen = 0
        self._counts0: list[int] = []
        self.samples = array("q")
        self.lost = 0
        self.timeline: list[tuple[float, int, float, float, float, float]] = []
        self._t0 = 0.0
        self._cpu_prev = (0.0, 0.0, 0.0)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="bench-lag-tap", daemon=True)

    def __enter__(self) -> LagTap:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            with self._mu:
                if self._active:
                    self._poll()

    def _poll(self) -> None:
        lag = self.lag
        n = lag.recent_n
        start = self._seen
        if n - start > LAG_RING:
            self.lost += n - start - LAG_RING
            start = n - LAG_RING
        if n > start:
            a, b = start % LAG_RING, n % LAG_RING
            ring = lag.recent
            chunk = ring[a:b] if a < b else ring[a:] + ring[:b]
            over = lag.recent_n - start - LAG_RING  # overwritten while we copied
            if over > 0:
                chunk = chunk[over:]
                self.lost += over
            self.samples.extend(chunk)
            biggest = max(chunk) / 1e6 if len(chunk) else 0.0
        else:
            biggest = 0.0
        cpu = self._cpu()
        prev, self._cpu_prev = self._cpu_prev, cpu
        self.timeline.append((round(time.monotonic() - self._t0, 2), n - self._seen,
                              round(biggest, 2), *(round(b - a, 3) for a, b in zip(prev, cpu,
                                                                                    strict=True))))
        self._seen = n

    @staticmethod
    def _cpu() -> tuple[float, float, float]:
        """CPU s so far: the collector thread, the daemon's other threads, the host."""
        threads = thread_cpu_seconds()
        coll = threads.get(COLLECTOR_THREAD, 0.0)
        others = sum(v for k, v in threads.items()
                     if k not in (COLLECTOR_THREAD, "MainThread", "bench-lag-tap"))
        return coll, others, host_busy_seconds()

    def begin(self) -> None:
        """Start a window: forget what came before."""
        with self._mu:
            self._seen = self.lag.recent_n
            self._counts0 = list(self.lag.counts)
            self.samples = array("q")
            self.lost = 0
            self.timeline = []
            self._t0 = time.monotonic()
            self._cpu_prev = self._cpu()
            self._active = True

    def end(self) -> tuple[array, int, list[int], list[tuple[float, ...]]]:
        """End the window: its samples (ns), how many were lost, the histogram delta,
        the timeline."""
        with self._mu:
            self._poll()
            self._active = False
            delta = [b - a for a, b in zip(self._counts0, self.lag.counts, strict=True)]
            return self.samples, self.lost, delta, self.timeline


def judged_p99_ms(lags: list[int], missing: int) -> float | None:
    """p99 of the lags (sorted, ns) with ``missing`` events counted as infinitely late, ms."""
    n = len(lags) + missing
    if not n:
        return None
    rank = max(1, math.ceil(0.99 * n))
    return math.inf if rank > len(lags) else lags[rank - 1] / 1e6


def hist_quantile_bound(counts: list[int], q: float, buckets: tuple[float, ...]) -> float | None:
    """Upper bound (s) of the histogram bucket holding the q-quantile; inf past the last."""
    total = sum(counts)
    if not total:
        return None
    acc = 0
    for i, c in enumerate(counts):
        acc += c
        if acc >= q * total:
            return buckets[i] if i < len(buckets) else math.inf
    return math.inf


# -- processes we start ------------------------------------------------------------------


def compile_c(src: Path, out: Path, *extra: str, static: bool = False) -> str:
    """Build ``src`` into ``out``; static when asked and libc.a is there."""
    cc = shutil.which("cc") or shutil.which("gcc")
    if cc is None:
        raise SystemExit("collector_blocking: needs a C compiler (apt-get install gcc)")
    cmd = [cc, "-O2", "-Wall", *extra, "-o", str(out), str(src)]
    if static and subprocess.run([*cmd, "-static"], capture_output=True).returncode == 0:
        return "static"
    subprocess.run(cmd, check=True)
    return "dynamic"


class Sleepers:
    """A ``sleepers NAME N`` process and its N sleeping children (bench/sleepers.c)."""

    def __init__(self, binary: Path, name: str, count: int) -> None:
        self.popen = subprocess.Popen([str(binary), name, str(count)], stdin=subprocess.PIPE,
                                      stdout=subprocess.PIPE, start_new_session=True)
        self.pid = self.popen.pid
        self.count = count
        self.children: dict[int, int | None] = {}  # pid -> start ticks

    def wait_ready(self, timeout: float) -> None:
        """Block until it says ``ready``; then note its children's pids and start times."""
        assert self.popen.stdout is not None
        fd = self.popen.stdout.fileno()
        buf = b""
        end = time.monotonic() + timeout
        while b"\n" not in buf:
            left = end - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"sleepers (pid {self.pid}) not ready in {timeout:g}s")
            if select.select([fd], [], [], left)[0]:
                chunk = os.read(fd, 4096)
                if not chunk:
                    raise EOFError(f"sleepers (pid {self.pid}) exited")
                buf += chunk
        line = buf.split(b"\n", 1)[0].decode()
        if not line.startswith("ready"):
            raise RuntimeError(f"sleepers: {line}")
        text = Path(f"/proc/{self.pid}/task/{self.pid}/children").read_text()
        self.children = {int(p): start_ticks(int(p)) for p in text.split()}

    def end(self) -> int:
        """Stop it by pid (EOF and SIGTERM: it kills and reaps its children); then SIGKILL,
        by pid, any child still there with the same start time. Returns how many were."""
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
                    os.kill(self.pid, signal.SIGKILL)
                p.wait(timeout=10)
        if p.stdout:
            p.stdout.close()
        survivors = 0
        # one listing of /proc, then only pids still there are read (cheap even when the
        # GIL is busy with a stopping daemon's HTTP threads)
        present = {int(n) for n in os.listdir("/proc") if n.isdigit()}
        for pid, ticks in self.children.items():
            if pid not in present:
                continue
            now = start_ticks(pid)
            if now is not None and now == ticks:
                survivors += 1
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
        return survivors


class Loadgen:
    """One ``loadgen fork-exit WORKERS SECONDS OUTDIR RATE`` run in its own session."""

    def __init__(self, binary: Path, workers: int, seconds: float, rate: float,
                 outdir: Path) -> None:
        outdir.mkdir(parents=True, exist_ok=True)
        self.seconds = seconds
        self.popen = subprocess.Popen(
            [str(binary), "fork-exit", str(workers), f"{seconds:g}", str(outdir), f"{rate:g}"],
            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            text=True, start_new_session=True)
        self.pid = self.popen.pid

    def report(self) -> dict[str, Any]:
        """Wait for it (it stops itself at its deadline) and parse its JSON."""
        out, err = self.popen.communicate(timeout=self.seconds + LOADGEN_GRACE_S)
        if self.popen.returncode != 0:
            raise RuntimeError(f"loadgen exited {self.popen.returncode}: {err.strip()}")
        return json.loads(out)

    def kill(self) -> None:
        """Kill its group by id while its main process lives (so the group is still ours;
        workers that outlive it die by PR_SET_PDEATHSIG)."""
        p = self.popen
        if p.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.pid, signal.SIGKILL)
        p.wait()
        for stream in (p.stdout, p.stderr):
            if stream:
                stream.close()


class Clients:
    """The client process (this file, ``client`` mode): THREADS loops of GET ``path``."""

    def __init__(self, port: int, threads: int, seconds: float, max_requests: int = 0) -> None:
        self.popen = subprocess.Popen(
            [sys.executable, str(Path(__file__).resolve()), "client", "--port", str(port),
             "--path", API_PATH, "--threads", str(threads), "--seconds", f"{seconds:g}",
             "--max-requests", str(max_requests), "--parent", str(os.getpid())],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            start_new_session=True)
        self.pid = self.popen.pid
        self.seconds = seconds

    def stop(self) -> None:
        """EOF on its stdin: no new requests; it reports and exits within CLIENT_GRACE_S."""
        p = self.popen
        if p.stdin is not None:
            with contextlib.suppress(OSError):
                p.stdin.close()
            p.stdin = None  # communicate() must not flush it

    def finish(self, stop: bool = True) -> dict[str, Any]:
        """Stop it (unless ``stop`` is false: then wait for it to end by itself, a few
        requests whose report fits in the pipe) and read its report."""
        p = self.popen
        if stop:
            self.stop()
        else:
            p.wait(timeout=self.seconds + CLIENT_GRACE_S + 10)
        out, err = p.communicate(timeout=CLIENT_GRACE_S + 10)
        if p.returncode != 0:
            raise RuntimeError(f"client exited {p.returncode}: {err.decode()[-300:]}")
        return json.loads(out)

    def kill(self) -> None:
        """SIGKILL by pid if still running; reap."""
        p = self.popen
        if p.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, signal.SIGKILL)
        p.wait()
        for stream in (p.stdin, p.stdout, p.stderr):
            if stream:
                with contextlib.suppress(OSError):
                    stream.close()


# -- the client process ---------------------------------------------------------------------


def client_main(argv: list[str]) -> int:
    """THREADS threads, each GET PATH in a loop (new connection each, body read and counted)
    until EOF on stdin, the deadline, or MAX_REQUESTS in all. Prints one JSON report."""
    ap = argparse.ArgumentParser(prog="collector_blocking.py client")
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--path", default=API_PATH)
    ap.add_argument("--threads", type=int, default=20)
    ap.add_argument("--seconds", type=float, required=True)
    ap.add_argument("--max-requests", type=int, default=0)
    ap.add_argument("--parent", type=int, default=0)
    args = ap.parse_args(argv)
    # die with the bench even if it is SIGKILLed (the deadline bounds us anyway)
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(1, int(signal.SIGKILL), 0, 0, 0)
    if args.parent and os.getppid() != args.parent:
        return 1
    deadline = time.monotonic() + args.seconds
    stop = threading.Event()
    mu = threading.Lock()
    started = [0]
    records: list[tuple[float, float, int, int, str]] = []  # t0, t1, status, bytes, error

    def take_ticket() -> bool:
        with mu:
            if args.max_requests and started[0] >= args.max_requests:
                return False
            started[0] += 1
            return True

    def loop() -> None:
        while not stop.is_set() and time.monotonic() < deadline and take_ticket():
            t0 = time.monotonic()
            status, nbytes, error = 0, 0, ""
            conn = http.client.HTTPConnection("127.0.0.1", args.port, timeout=REQUEST_TIMEOUT_S)
            try:
                conn.request("GET", args.path)
                resp = conn.getresponse()
                while chunk := resp.read(1 << 16):
                    nbytes += len(chunk)
                status = resp.status
            except (OSError, http.client.HTTPException) as exc:
                error = type(exc).__name__
            finally:
                conn.close()
            records.append((t0, time.monotonic(), status, nbytes, error))

    def watch_stdin() -> None:
        with contextlib.suppress(OSError):
            while sys.stdin.buffer.read(1):
                pass
        stop.set()

    threading.Thread(target=watch_stdin, daemon=True).start()
    workers = [threading.Thread(target=loop, daemon=True) for _ in range(args.threads)]
    t_start = time.monotonic()
    for w in workers:
        w.start()
    while (not stop.is_set() and time.monotonic() < deadline
           and any(w.is_alive() for w in workers)):
        stop.wait(0.05)
    stop.set()
    grace_end = time.monotonic() + CLIENT_GRACE_S
    for w in workers:
        w.join(timeout=max(0.0, grace_end - time.monotonic()))
    cpu = os.times()
    doc = {"threads": args.threads, "started": t_start, "stopped": time.monotonic(),
           "in_flight_at_exit": sum(w.is_alive() for w in workers),
           "cpu_s": cpu.user + cpu.system, "records": list(records)}
    sys.stdout.write(json.dumps(doc) + "\n")
    sys.stdout.flush()
    os._exit(0)  # threads still in a request are abandoned, not waited for


def request_summary(report: dict[str, Any], t0: float, t1: float) -> dict[str, Any]:
    """Requests completed in [t0, t1] (monotonic s, shared by both processes)."""
    recs = [r for r in report["records"] if t0 <= r[1] <= t1]
    ok = [r for r in recs if r[2] == 200]
    failed = [r for r in recs if r[2] != 200]
    errors: dict[str, int] = {}
    for r in failed:
        key = r[4] or f"HTTP {r[2]}"
        errors[key] = errors.get(key, 0) + 1
    lat = [(r[1] - r[0]) * 1e3 for r in ok]
    sizes = [r[3] for r in ok]
    span = max(t1 - t0, 1e-9)
    return {
        "window_s": span,
        "completed": len(recs),
        "ok": len(ok),
        "failed": len(failed),
        "errors": errors,
        "requests_per_s": len(ok) / span,
        "bytes": sum(sizes),
        "mean_bytes": statistics.fmean(sizes) if sizes else None,
        "latency_ms_p50": percentile(lat, 0.5),
        "latency_ms_p99": percentile(lat, 0.99),
        "latency_ms_max": max(lat) if lat else None,
        "latency_ms_min": min(lat) if lat else None,
        "client_cpu_s": report.get("cpu_s"),
        "client_records_total": len(report["records"]),
        "in_flight_at_exit": report.get("in_flight_at_exit"),
    }


# -- the daemon, in-process -------------------------------------------------------------------


class WarningLog(logging.Handler):
    """Counts the daemon's warning lines (overruns, resyncs) per phase; keeps a few."""

    def __init__(self) -> None:
        super().__init__(level=logging.WARNING)
        self.lines: list[tuple[float, str]] = []

    def emit(self, record: logging.LogRecord) -> None:
        if len(self.lines) < 10_000:
            self.lines.append((time.monotonic(), record.getMessage()))

    def between(self, t0: float, t1: float) -> dict[str, Any]:
        msgs = [m for t, m in self.lines if t0 <= t <= t1]
        lost = [int(m.group(1)) for m in map(re.compile(r"lost_estimate=(\d+)").search, msgs)
                if m]
        return {"warnings": len(msgs),
                "overruns": sum(1 for m in msgs if m.startswith("overrun")),
                "resyncs": sum(1 for m in msgs if m.startswith("resync")),
                "resync_lost_estimate": sum(lost),
                "examples": msgs[:5]}


def daemon_config(port: int) -> str:
    """The daemon's config: the host root, listing at most HOST_MEMBERS; loopback."""
    return f"""\
web:
  listen_address: "127.0.0.1:{port}"
roots:
  - name: host
    select: pid
    match: 1
    max_members: {HOST_MEMBERS}
"""


# -- the phases --------------------------------------------------------------------------


class Bench:
    """The running pieces and the phases."""

    def __init__(self, args: argparse.Namespace, tmp: Path, loadgen_bin: Path) -> None:
        self.args = args
        self.tmp = tmp
        self.loadgen_bin = loadgen_bin
        self.daemon: Any = None
        self.lock = TimedRLock()
        self.tap: LagTap | None = None
        self.warnlog: WarningLog | None = None
        self.port = 0
        self.loadgens: list[Loadgen] = []
        self.clients: list[Clients] = []
        self.t0_ns = time.monotonic_ns()
        self.lag_buckets: tuple[float, ...] = ()
        self.kthreads: dict[int, str] = {}
        self.storms = 0

    def storm(self, seconds: float) -> dict[str, Any]:
        """One loadgen run; its report."""
        self.storms += 1
        lg = Loadgen(self.loadgen_bin, self.args.workers, seconds, self.args.rate,
                     self.tmp / f"pids-{self.storms}")
        self.loadgens.append(lg)
        try:
            return lg.report()
        finally:
            lg.kill()

    def drain(self) -> tuple[float, bool]:
        """Wait until the daemon's threads other than the collector (HTTP workers, mostly)
        have used no CPU for IDLE_S, then DRAIN_S more; at most DRAIN_MAX_S. Returns the
        time taken and whether they went idle."""
        t_start = time.monotonic()
        end = t_start + DRAIN_MAX_S
        mine = {COLLECTOR_THREAD, "MainThread", "bench-lag-tap"}

        def others_cpu() -> float:
            return sum(v for k, v in thread_cpu_seconds().items() if k not in mine)

        last = others_cpu()
        idle_since: float | None = None
        complete = False
        while time.monotonic() < end:
            time.sleep(0.1)
            now_cpu = others_cpu()
            if now_cpu - last < 0.005:
                idle_since = idle_since or time.monotonic()
                if time.monotonic() - idle_since >= IDLE_S:
                    complete = True
                    break
            else:
                idle_since = None
            last = now_cpu
        time.sleep(DRAIN_S)
        return time.monotonic() - t_start, complete

    def phase(self, name: str, *, storm: bool, clients: int, seconds: float,
              max_requests: int = 0) -> dict[str, Any]:
        """Measure one phase: storm and/or clients for ``seconds``."""
        assert self.tap is not None and self.warnlog is not None
        gc.freeze()  # as the daemon's main loop does every 60 s
        time.sleep(SETTLE_S)
        res: dict[str, Any] = {"phase": name, "storm": storm, "clients": clients,
                               "loadavg_before": loadavg()}
        client = None
        if clients and not max_requests:  # a loop: warm up before the window opens
            client = Clients(self.port, clients, seconds + self.args.client_warmup + 30)
            self.clients.append(client)
            time.sleep(self.args.client_warmup)
        self.lock.take()  # what came before is not this phase's
        cpu0, busy0, threads0 = os.times(), host_busy_seconds(), thread_cpu_seconds()
        kthreads0 = kernel_thread_cpu(self.kthreads)
        self.tap.begin()
        t0 = time.monotonic()
        t0_ns = time.monotonic_ns()
        report = None
        rep = None
        if clients and max_requests:  # a fixed number of requests, all in the window
            client = Clients(self.port, clients, 60, max_requests)
            self.clients.append(client)
            rep = client.finish(stop=False)
        elif storm:
            report = self.storm(seconds)
        else:
            time.sleep(seconds)
        t1 = time.monotonic()
        if client is not None:
            client.stop()
        res["drain_s"], res["drain_complete"] = self.drain()
        holds, waits = self.lock.take()
        samples, overwritten, hist, timeline = self.tap.end()
        t2 = time.monotonic()
        cpu1, busy1, threads1 = os.times(), host_busy_seconds(), thread_cpu_seconds()
        kthreads1 = kernel_thread_cpu(self.kthreads)
        res["loadavg_after"] = loadavg()
        res["window_s"] = t2 - t0
        if client is not None:
            if rep is None:
                rep = client.finish()
            client.kill()
            res["requests"] = request_summary(rep, t0, t2 if max_requests else t1)
        cpu3 = os.times()  # loadgen and the client are reaped by now: their CPU is in children
        if report is not None:
            res["storm_report"] = {k: report[k] for k in ("workers", "rate", "elapsed_s",
                                                          "created", "failed")}
            res["forks_per_s"] = report["created"] / report["elapsed_s"]
        lags = sorted(samples)
        expected = EVENTS_PER_FORK * report["created"] if report is not None else None
        # events the storm made that were never applied in the window (kernel drops, or
        # still queued at its end): they have no lag sample; counted as infinitely late
        missing = max(0, expected - len(lags)) if expected is not None else 0
        res["lag"] = {
            "source": "every sample of the collector's recent-lag ring in the window "
                      "(drained every 0.2 s)",
            "samples": len(lags),
            "ring_overwritten": overwritten,
            "storm_events_expected": expected,
            "storm_events_missing": missing,
            "applied_pct": 100.0 * min(len(lags), expected) / expected if expected else None,
            "p99_judged_ms": judged_p99_ms(lags, missing),
            "p50_ms": (percentile(lags, 0.5) or 0) / 1e6 if lags else None,
            "p99_ms": (percentile(lags, 0.99) or 0) / 1e6 if lags else None,
            "p999_ms": (percentile(lags, 0.999) or 0) / 1e6 if lags else None,
            "max_ms": lags[-1] / 1e6 if lags else None,
            "hist_events": sum(hist),
            "hist_p99_le_ms": (lambda b: None if b is None else b * 1e3)(
                hist_quantile_bound(hist, 0.99, self.lag_buckets)),
            "hist_delta": hist,
            # per tap poll: t s, samples, max lag ms, CPU s: collector, other daemon
            # threads, host (all CPUs)
            "timeline": timeline,
            "worst_slices": sorted(timeline, key=lambda row: -row[2])[:3],
        }
        res["lock"] = lock_summary(holds, waits, t0_ns)
        res["daemon_log"] = self.warnlog.between(t0, t2 + 0.5)
        wall = max(t2 - t0, 1e-9)
        own = (cpu1.user + cpu1.system) - (cpu0.user + cpu0.system)
        kids = ((cpu3.children_user + cpu3.children_system)
                - (cpu0.children_user + cpu0.children_system))
        res["cpu"] = {
            "bench_process_cpus": own / wall,  # the daemon, mostly
            "children_cpus": kids / wall,  # loadgen and the client process
            "host_cpus_busy": (busy1 - busy0) / wall,
            # what else kept CPUs busy (approximate: the client's warm-up is in children)
            "other_work_cpus": max(0.0, (busy1 - busy0) - own - kids) / wall,
            # part of it: the busiest kernel threads (CPUs)
            "kernel_threads_cpus": dict(sorted(
                ((k, round((v - kthreads0.get(k, v)) / wall, 3)) for k, v in kthreads1.items()
                 if v - kthreads0.get(k, v) > 0.01 * wall), key=lambda kv: -kv[1])[:5]),
            "threads_s": {k: round(v - threads0.get(k, 0.0), 3) for k, v in threads1.items()
                          if v - threads0.get(k, 0.0) > 0.001},
        }
        return res


def run(args: argparse.Namespace, tmp: Path, notes: list[str], doc: dict[str, Any],
        phases: list[dict[str, Any]]) -> None:
    """Set up the host and the daemon, run the phases (appended to ``phases`` as they end,
    so that a run stopped early keeps them); clean up whatever happens."""
    from proctree_exporter.collector import LAG_BUCKETS
    from proctree_exporter.config import load_config
    from proctree_exporter.daemon import build

    loadgen_bin = tmp / "loadgen"
    compile_c(LOADGEN_SRC, loadgen_bin, "-pthread")
    sleepers_bin = tmp / "ptxsleepers"
    doc["sleeper_linkage"] = compile_c(SLEEPERS_C, sleepers_bin, static=True)
    bench = Bench(args, tmp, loadgen_bin)
    bench.lag_buckets = tuple(LAG_BUCKETS)
    sleepers: Sleepers | None = None
    daemon = None
    try:
        bench.kthreads = kernel_threads()
        before = user_processes()
        count = max(0, HOST_MEMBERS + MEMBER_MARGIN - before - 1)
        pid_max = int(Path("/proc/sys/kernel/pid_max").read_text())
        if pid_max < (before + count) * 1.5:
            notes.append(f"pid_max {pid_max} is tight for {before + count:,} processes plus "
                         f"the storm")
        print(f"collector_blocking: {before} processes under PID 1; starting {count:,} "
              f"sleepers ...", file=sys.stderr, flush=True)
        if count:
            sleepers = Sleepers(sleepers_bin, "ptxblock", count)
            sleepers.wait_ready(SLEEPERS_READY_S)
        doc["host"] = {"processes_before": before, "sleepers": count,
                       "processes_under_pid1": user_processes()}

        bench.port = free_port()
        cfg_path = tmp / "config.yaml"
        cfg_path.write_text(daemon_config(bench.port))
        doc["daemon_config"] = cfg_path.read_text()
        cfg, path = load_config(cfg_path)
        daemon = build(cfg, path, f"127.0.0.1:{bench.port}", None)
        daemon.tree.lock = bench.lock  # before start(): every user looks it up at call time
        bench.daemon = daemon
        t_start = time.monotonic()
        daemon.start()
        ready_s = time.monotonic() - t_start
        wait_ready(bench.port)
        startup_holds, startup_waits = bench.lock.take()
        doc["startup"] = {"ready_s": ready_s,
                          "lock": lock_summary(startup_holds, startup_waits, bench.t0_ns)}
        collector = daemon.collector
        if collector.name != COLLECTOR_THREAD:
            notes.append(f"collector thread is named {collector.name!r}, not "
                         f"{COLLECTOR_THREAD!r}: holds are attributed by name")

        # one request from here: what the listing holds
        t = time.monotonic()
        status, body = http_get(bench.port, API_PATH)
        probe_ms = (time.monotonic() - t) * 1e3
        probe: dict[str, Any] = {"status": status, "bytes": len(body), "ms_in_process": probe_ms}
        if status == 200:
            root = json.loads(body)
            probe.update(members_listed=len(root["members"]), truncated=root["truncated"],
                         tombstones_listed=len(root["tombstones"]))
            if len(root["members"]) < HOST_MEMBERS:
                notes.append(f"the host root lists {len(root['members']):,} members, fewer "
                             f"than {HOST_MEMBERS:,}")
        else:
            notes.append(f"GET {API_PATH} answered {status}")
        doc["probe"] = probe
        print(f"collector_blocking: daemon ready in {ready_s:.1f}s on port {bench.port}; "
              f"{API_PATH}: {probe.get('members_listed', '?')} members, "
              f"{len(body) / 1024:,.0f} KiB, {probe_ms:.0f} ms", file=sys.stderr, flush=True)

        bench.warnlog = WarningLog()
        logging.getLogger().addHandler(bench.warnlog)
        with LagTap(collector.stats.lag) as tap:
            bench.tap = tap
            plan: list[tuple[str, str, dict[str, Any]]] = [
                ("solo", f"1 client, {SOLO_REQUESTS} requests, no storm",
                 {"storm": False, "clients": 1, "seconds": 0, "max_requests": SOLO_REQUESTS}),
                ("warmup", f"storm {args.warmup_storm:g}s (not measured)", {}),
                ("A", "storm, no clients",
                 {"storm": True, "clients": 0, "seconds": args.seconds}),
                ("B", f"storm + {args.clients} clients",
                 {"storm": True, "clients": args.clients, "seconds": args.seconds}),
            ]
            if not args.no_phase_c:
                plan.append(("C", f"{args.clients} clients, no storm",
                             {"storm": False, "clients": args.clients,
                              "seconds": args.seconds}))
            for name, what, kw in plan:
                print(f"collector_blocking: phase {name}: {what} ...", file=sys.stderr,
                      flush=True)
                if name == "warmup":
                    if args.warmup_storm > 0:
                        t_w = time.monotonic()
                        r = bench.storm(args.warmup_storm)
                        time.sleep(WARMUP_SETTLE_S)
                        doc["warmup_storm"] = {"created": r["created"],
                                               "forks_per_s": r["created"] / r["elapsed_s"],
                                               "settle_s": WARMUP_SETTLE_S,
                                               "daemon_log": bench.warnlog.between(
                                                   t_w, time.monotonic())}
                    continue
                res = bench.phase(name, **kw)
                res["what"] = what
                phases.append(res)
                print_phase_line(res)
    finally:
        for c in bench.clients:
            c.kill()
        for lg in bench.loadgens:
            lg.kill()
        if daemon is not None:
            try:
                daemon.stop()
            except Exception as exc:  # the figures so far still count
                notes.append(f"daemon.stop() raised {exc!r}")
        if bench.warnlog is not None:
            logging.getLogger().removeHandler(bench.warnlog)
        if sleepers is not None:
            survivors = sleepers.end()
            doc["sleepers_killed_after_group_exit"] = survivors
            if survivors:
                notes.append(f"{survivors} sleepers outlived their group: SIGKILLed by pid")


def wait_ready(port: int, timeout: float = READY_TIMEOUT_S) -> None:
    """Until /-/ready answers 200 (start() has returned, so this is at once)."""
    end = time.monotonic() + timeout
    while True:
        with contextlib.suppress(OSError, http.client.HTTPException):
            if http_get(port, "/-/ready", timeout=5)[0] == 200:
                return
        if time.monotonic() > end:
            raise TimeoutError(f"daemon not ready in {timeout:g}s")
        time.sleep(0.05)


# -- report ---------------------------------------------------------------------------------


def jsonable(obj: Any) -> Any:
    """``obj`` with infinities as the string "inf" (JSON has no infinity)."""
    if isinstance(obj, float) and math.isinf(obj):
        return "inf" if obj > 0 else "-inf"
    if isinstance(obj, dict):
        return {k: jsonable(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [jsonable(v) for v in obj]
    return obj


def fmt(v: float | int | None, spec: str = ",.1f") -> str:
    """A number for a table cell; ``-`` for none."""
    return "-" if v is None else format(v, spec)


COLUMNS: list[tuple[str, int, Any]] = [
    ("phase", 5, lambda r: r["phase"]),
    ("forks/s", 7, lambda r: fmt(r.get("forks_per_s"), ",.0f")),
    ("cli", 3, lambda r: str(r["clients"])),
    ("req/s", 6, lambda r: fmt(r.get("requests", {}).get("requests_per_s"))),
    ("resp KiB", 8, lambda r: fmt((r.get("requests", {}).get("mean_bytes") or 0) / 1024
                                   if r.get("requests", {}).get("mean_bytes") else None,
                                   ",.0f")),
    ("req p50/p99 ms", 15, lambda r: "-" if "requests" not in r else
     f"{fmt(r['requests']['latency_ms_p50'], ',.0f')}/"
     f"{fmt(r['requests']['latency_ms_p99'], ',.0f')}"),
    ("lag n", 7, lambda r: fmt(r["lag"]["samples"], ",d")),
    ("applied", 7, lambda r: "-" if r["lag"]["applied_pct"] is None
     else f"{r['lag']['applied_pct']:.1f}%"),
    ("lag p50", 7, lambda r: fmt(r["lag"]["p50_ms"], ",.2f")),
    ("lag p99", 8, lambda r: fmt(r["lag"]["p99_ms"], ",.2f")),
    ("p99*", 8, lambda r: fmt(r["lag"]["p99_judged_ms"], ",.2f") if r["storm"] else "-"),
    ("hist<=", 6, lambda r: fmt(r["lag"]["hist_p99_le_ms"], ",g")),
    ("lag max", 8, lambda r: fmt(r["lag"]["max_ms"], ",.1f")),
    ("rdr hold max", 12, lambda r: fmt(r["lock"]["reader_hold_max_ms"], ",.2f")),
    ("rdr >1ms", 8, lambda r: f"{r['lock']['reader_holds_over_1ms']}/"
                              f"{r['lock']['reader_holds']}"),
    ("coll wait p99/max", 17, lambda r: f"{fmt(r['lock']['collector_wait_p99_ms'], ',.2f')}/"
                                        f"{fmt(r['lock']['collector_wait_max_ms'], ',.1f')}"),
    ("coll hold max", 13, lambda r: fmt(r["lock"]["collector_hold_max_ms"], ",.2f")),
    ("load before", 14, lambda r: r["loadavg_before"]),
]


def print_phase_line(r: dict[str, Any]) -> None:
    """One progress line per phase on stderr."""
    lk, lag = r["lock"], r["lag"]
    print(f"  {r['phase']}: forks/s {fmt(r.get('forks_per_s'), ',.0f')}, lag p99 "
          f"{fmt(lag['p99_ms'], '.2f')} ms (n={lag['samples']:,}), reader hold max "
          f"{fmt(lk['reader_hold_max_ms'], '.2f')} ms, collector wait max "
          f"{fmt(lk['collector_wait_max_ms'], '.2f')} ms", file=sys.stderr, flush=True)


def evaluate(phases: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The issue's two targets, each with its value and PASS/MISS."""
    by = {p["phase"]: p for p in phases}
    out = []
    a, b = by.get("A"), by.get("B")
    pa = a["lag"]["p99_judged_ms"] if a else None
    pb = b["lag"]["p99_judged_ms"] if b else None
    if a and b and pa and pb is not None:
        ratio = pb / pa
        value = f"A {fmt(pa, '.2f')} ms, B {fmt(pb, ',.2f')} ms: {fmt(ratio, ',.2f')}x"
        for p in (a, b):
            lag = p["lag"]
            if lag["storm_events_missing"]:
                value += (f"; {p['phase']}: {lag['storm_events_missing']:,} of "
                          f"{lag['storm_events_expected']:,} storm events not applied in the "
                          f"window (counted as infinitely late), the applied ones' p99 "
                          f"{fmt(lag['p99_ms'], ',.1f')} ms")
        out.append({"target": f"event lag p99 with {b['clients']} clients (B) <= "
                              f"{LAG_RATIO_TARGET:g} x without (A)",
                    "value": value, "ratio": ratio, "pass": ratio <= LAG_RATIO_TARGET})
    else:
        out.append({"target": "event lag p99 B <= 1.2 x A", "value": "not measured",
                     "pass": False})
    holds = [(p["lock"]["reader_hold_max_ms"], p["phase"], p["lock"]["reader_hold_max_thread"])
             for p in phases if p["lock"]["reader_hold_max_ms"] is not None]
    if holds:
        worst = max(holds)
        over = sum(p["lock"]["reader_holds_over_1ms"] for p in phases)
        total = sum(p["lock"]["reader_holds"] for p in phases)
        names = ", ".join(p["phase"] for p in phases)
        out.append({"target": f"no tree-lock hold by a thread other than the collector over "
                              f"{HOLD_TARGET_MS:g} ms (phases {names})",
                    "value": f"longest {worst[0]:.2f} ms ({worst[2]}, phase {worst[1]}); "
                             f"{over:,} of {total:,} reader holds over {HOLD_TARGET_MS:g} ms",
                    "longest_ms": worst[0], "pass": worst[0] <= HOLD_TARGET_MS})
    else:
        out.append({"target": f"no non-collector hold over {HOLD_TARGET_MS:g} ms",
                    "value": "no reader hold seen" if phases else "not measured",
                    "pass": bool(phases)})
    return out


def auto_notes(phases: list[dict[str, Any]], doc: dict[str, Any], notes: list[str]) -> None:
    """Things a reader of the table should know."""
    by = {p["phase"]: p for p in phases}
    a, b = by.get("A"), by.get("B")
    if (a and b and a.get("forks_per_s") and b.get("forks_per_s")
            and b["forks_per_s"] < 0.9 * a["forks_per_s"]):
        notes.append(f"the storm ran slower in B ({b['forks_per_s']:,.0f}/s) than in A "
                     f"({a['forks_per_s']:,.0f}/s): the clients and the daemon took CPU "
                     f"from loadgen, so B had fewer events to apply")
    for p in phases:
        if p.get("forks_per_s") and p["forks_per_s"] < 0.9 * doc["rate"] and doc["rate"]:
            notes.append(f"phase {p['phase']}: {p['forks_per_s']:,.0f} forks/s, below the "
                         f"{doc['rate']:,.0f}/s asked for (loadgen at the machine's limit)")
        if p["lag"]["ring_overwritten"]:
            notes.append(f"phase {p['phase']}: {p['lag']['ring_overwritten']:,} lag samples "
                         f"were overwritten in the ring before the tap read them")
        if not p["drain_complete"]:
            notes.append(f"phase {p['phase']}: the daemon's HTTP threads were still busy "
                         f"{DRAIN_MAX_S:g} s after the phase: the window was closed anyway")
        req = p.get("requests")
        if req and req["failed"]:
            notes.append(f"phase {p['phase']}: {req['failed']} requests failed: {req['errors']}")
        log = p["daemon_log"]
        if log["warnings"]:
            notes.append(f"phase {p['phase']}: daemon logged {log['warnings']} warnings "
                         f"({log['overruns']} overruns, {log['resyncs']} resyncs, lost "
                         f"estimate {log['resync_lost_estimate']:,}), e.g. "
                         f"{log['examples'][:2]}")
        if p["storm"] and p["clients"] == 0 and p["lock"]["reader_holds"]:
            notes.append(f"phase {p['phase']}: {p['lock']['reader_holds']} non-collector "
                         f"holds without clients: {sorted(p['lock']['by_thread'])}")
        if p["cpu"]["other_work_cpus"] > 0.25:
            kt = ", ".join(f"{k} {v:.2f}" for k, v in p["cpu"]["kernel_threads_cpus"].items())
            notes.append(f"phase {p['phase']}: other work kept {p['cpu']['other_work_cpus']:.2f}"
                         f" CPUs busy (kernel threads among it: {kt or 'none'}): its figures "
                         f"are inflated")
        if p["cpu"]["host_cpus_busy"] > 1.9:
            notes.append(f"phase {p['phase']}: both CPUs busy "
                         f"({p['cpu']['host_cpus_busy']:.2f} of {os.cpu_count()})")


def print_report(doc: dict[str, Any], phases: list[dict[str, Any]],
                 targets: list[dict[str, Any]], notes: list[str]) -> None:
    """The table, the details, the targets and the notes."""
    print()
    print(f"collector_blocking: {doc['time']}  kernel {doc['kernel']}  {doc['cpu_count']} CPUs  "
          f"python {doc['python']}")
    print(f"code: {doc['package_dir']} (fingerprint {doc['source_fingerprint']}); checkout "
          f"{doc['git']}")
    host = doc.get("host", {})
    probe = doc.get("probe", {})
    print(f"host: {host.get('processes_under_pid1', '?'):,} processes under PID 1 "
          f"({host.get('sleepers', 0):,} sleepers); storm: loadgen fork-exit x{doc['workers']} "
          f"at {doc['rate']:g}/s asked, {doc['seconds']:g} s per phase; load now "
          f"{doc.get('loadavg_end', '?')}")
    if probe:
        print(f"GET {API_PATH}: {probe.get('members_listed', '?'):,} members listed "
              f"(truncated {probe.get('truncated')}), {probe['bytes'] / 1024:,.0f} KiB, "
              f"{probe['ms_in_process']:.0f} ms (one request from the bench process, idle)")
    if "startup" in doc:
        s = doc["startup"]
        print(f"start-up (not judged): ready in {s['ready_s']:.2f} s; longest non-collector "
              f"hold {fmt(s['lock']['reader_hold_max_ms'], '.1f')} ms "
              f"({s['lock']['reader_hold_max_thread']}), collector's longest "
              f"{fmt(s['lock']['collector_hold_max_ms'], '.1f')} ms")
    print()
    print(" ".join(f"{n:>{w}}" for n, w, _ in COLUMNS))
    for r in phases:
        print(" ".join(f"{get(r):>{w}}" for _, w, get in COLUMNS))
    print()
    print("forks/s: loadgen's rate in the phase; req/s, resp KiB, req ms: GET "
          f"{API_PATH} completed in the window")
    print("lag: kernel timestamp to applied, ms, every event applied in the window (the "
          "collector's recent-lag ring, drained);\n  applied: lag samples / storm events "
          "(2 per fork); p99*: p99 counting storm events never applied in the window as "
          "infinitely late (judged);\n  hist<=: bucket bound of p99 from the histogram delta")
    print("load: /proc/loadavg; it also counts this bench's own 10,000 sleepers while they "
          "start (and a previous run's while they exit):\n  'other work' in the details "
          "(host busy minus this process, loadgen and the client) is the better sign of "
          "a shared machine")
    print("rdr hold: outermost tree-lock holds by threads other than the collector, ms "
          "(>1ms: count over 1 ms / all); coll wait: the collector's time to acquire (lock, "
          "then GIL), ms; coll hold: its own longest hold")
    for r in phases:
        lk = r["lock"]
        by = ", ".join(f"{g} {v['holds']:,} holds max {v['max_ms']:.2f} ms total "
                       f"{v['total_ms']:,.0f} ms" for g, v in lk["by_thread"].items())
        cpu = ", ".join(f"{k} {v:.2f}" for k, v in sorted(r["cpu"]["threads_s"].items()))
        print(f"\n[{r['phase']}] {r['what']}; window {r['window_s']:.1f} s (drain "
              f"{r['drain_s']:.1f} s{'' if r['drain_complete'] else ', cut short'}); load "
              f"{r['loadavg_before']} -> {r['loadavg_after']}; CPUs busy: host "
              f"{r['cpu']['host_cpus_busy']:.2f}, daemon+bench {r['cpu']['bench_process_cpus']:.2f}"
              f", loadgen+client {r['cpu']['children_cpus']:.2f}, other work "
              f"{r['cpu']['other_work_cpus']:.2f}")
        print(f"  holds: {by or 'none'}")
        if lk["reader_hold_max_ms"] is not None:
            print(f"  longest reader hold {lk['reader_hold_max_ms']:.2f} ms by "
                  f"{lk['reader_hold_max_thread']} at {lk['reader_hold_max_at_s']:.2f} s; "
                  f"reader p99 {fmt(lk['reader_hold_p99_ms'], '.2f')} ms, total "
                  f"{lk['reader_hold_total_ms']:,.0f} ms")
        print(f"  collector: {lk['collector_acquires']:,} acquires, wait p50/p99/max "
              f"{fmt(lk['collector_wait_p50_ms'], '.3f')}/{fmt(lk['collector_wait_p99_ms'], '.2f')}"
              f"/{fmt(lk['collector_wait_max_ms'], '.1f')} ms ({lk['collector_waits_over_1ms']} "
              f"over 1 ms, {lk['collector_wait_total_ms']:,.0f} ms in all); holds p99/max "
              f"{fmt(lk['collector_hold_p99_ms'], '.2f')}/{fmt(lk['collector_hold_max_ms'], '.2f')}"
              f" ms")
        lag = r["lag"]
        print(f"  lag: {lag['samples']:,} samples ({lag['ring_overwritten']} overwritten "
              f"unread), p50/p99/p99.9/max {fmt(lag['p50_ms'], '.2f')}/"
              f"{fmt(lag['p99_ms'], '.2f')}/{fmt(lag['p999_ms'], '.2f')}/"
              f"{fmt(lag['max_ms'], '.1f')} ms; histogram {lag['hist_events']:,} events, "
              f"p99 <= {fmt(lag['hist_p99_le_ms'], 'g')} ms")
        if lag["worst_slices"] and lag["samples"]:
            print("  worst 0.2 s slices (t s: samples, max lag ms; CPU s collector / other "
                  "daemon threads / host): " + "; ".join(
                      f"{t:.1f}: {n:,}, {mx:,.0f}; {c:.2f}/{o:.2f}/{h:.2f}"
                      for t, n, mx, c, o, h in lag["worst_slices"]))
        if lag["storm_events_expected"] is not None:
            log = r["daemon_log"]
            print(f"  storm events: {lag['storm_events_expected']:,} made, "
                  f"{lag['storm_events_missing']:,} without a lag sample; daemon log: "
                  f"{log['overruns']} overruns, {log['resyncs']} resyncs (lost estimate "
                  f"{log['resync_lost_estimate']:,})")
        req = r.get("requests")
        if req:
            print(f"  requests: {req['ok']:,} OK, {req['failed']} failed in "
                  f"{req['window_s']:.1f} s ({req['requests_per_s']:.2f}/s), mean "
                  f"{(req['mean_bytes'] or 0) / 1024:,.0f} KiB, latency min/p50/p99/max "
                  f"{fmt(req['latency_ms_min'], ',.0f')}/{fmt(req['latency_ms_p50'], ',.0f')}/"
                  f"{fmt(req['latency_ms_p99'], ',.0f')}/{fmt(req['latency_ms_max'], ',.0f')} ms;"
                  f" client process CPU {fmt(req['client_cpu_s'], '.1f')} s")
        print(f"  CPU s by thread of this process: {cpu}")
        kt = ", ".join(f"{k} {v:.2f}" for k, v in r["cpu"]["kernel_threads_cpus"].items())
        print(f"  busiest kernel threads, CPUs: {kt or 'none over 0.01'}")
    print("\ntargets")
    for t in targets:
        print(f"  {'PASS' if t['pass'] else 'MISS'}  {t['target']}: {t['value']}")
    for n in notes:
        print(f"note: {n}")


# -- main ---------------------------------------------------------------------------------------


def ensure_venv() -> None:
    """Re-exec under the project's venv: the daemon runs in this process."""
    if Path(sys.prefix).resolve() == (REPO / ".venv").resolve():
        return
    if not VENV_PYTHON.exists():
        raise SystemExit("collector_blocking: no .venv; run scripts/bootstrap test first")
    os.execv(str(VENV_PYTHON), [str(VENV_PYTHON), str(Path(__file__).resolve()), *sys.argv[1:]])


def main(argv: list[str] | None = None) -> int:
    """Run the phases, print the table, write the JSON. Exit 0 unless the bench broke."""
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["client"]:
        return client_main(argv[1:])
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=10.0, help="length of each phase")
    ap.add_argument("--rate", type=float, default=7000.0,
                    help="forks/s asked of loadgen, all workers (0: flat out)")
    ap.add_argument("--workers", type=int, default=2, help="loadgen fork-exit workers")
    ap.add_argument("--clients", type=int, default=20, help="client threads in phases B and C")
    ap.add_argument("--client-warmup", type=float, default=1.0,
                    help="seconds the clients run before a phase's window opens")
    ap.add_argument("--warmup-storm", type=float, default=3.0,
                    help="seconds of unmeasured storm before phase A (0: none)")
    ap.add_argument("--no-phase-c", action="store_true", help="skip phase C")
    ap.add_argument("--deadline", type=float, default=0.0,
                    help="hard bound on the whole run, s (default 100 + 8 x --seconds)")
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT, help="JSON results path")
    args = ap.parse_args(argv)
    if os.geteuid() != 0:
        print("collector_blocking: needs root (the proc connector)", file=sys.stderr)
        return 2
    if not 0 < args.seconds <= 120:
        ap.error("--seconds must be in (0, 120]")
    if args.clients < 1:
        ap.error("--clients must be at least 1")
    ensure_venv()
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr,
                        format="daemon: %(levelname)s %(name)s: %(message)s")
    signal.signal(signal.SIGTERM, on_sigterm)
    signal.signal(signal.SIGALRM, on_alarm)
    deadline = args.deadline or 100 + 8 * args.seconds
    signal.alarm(math.ceil(deadline))

    notes: list[str] = []
    pkg = package_dir()
    if not pkg.is_relative_to(REPO):
        notes.append(f"proctree_exporter imported from {pkg} (PYTHONPATH), not this checkout's "
                     f"src/: 'git' describes the checkout, not the code measured")
    doc: dict[str, Any] = {
        "benchmark": "collector_blocking",
        "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "kernel": platform.release(),
        "cpu_count": os.cpu_count(),
        "python": platform.python_version(),
        "git": git_describe(),
        "package_dir": str(pkg),
        "source_fingerprint": source_fingerprint(pkg),
        "loadavg_start": loadavg(),
        "seconds": args.seconds,
        "rate": args.rate,
        "workers": args.workers,
        "clients": args.clients,
        "client_warmup_s": args.client_warmup,
        "warmup_storm_s": args.warmup_storm,
        "api_path": API_PATH,
        "host_members": HOST_MEMBERS,
        "hard_deadline_s": deadline,
    }
    phases: list[dict[str, Any]] = []
    rc = 0
    t_run = time.monotonic()
    tmp = Path(tempfile.mkdtemp(prefix="collector-blocking-"))
    try:
        run(args, tmp, notes, doc, phases)
    except (HardDeadline, RuntimeError, OSError, TimeoutError, EOFError,
            subprocess.SubprocessError, ValueError, KeyError) as exc:
        notes.append(f"run stopped early: {exc!r}")
        print(f"collector_blocking: run stopped early: {exc!r}", file=sys.stderr)
    except (SystemExit, KeyboardInterrupt) as exc:  # SIGTERM or ^C: report what we have
        rc = 130 if isinstance(exc, KeyboardInterrupt) else int(exc.code or 1)
        notes.append(f"run stopped early: {exc!r} (signal)")
        print(f"collector_blocking: stopped by a signal; {len(phases)} phases done",
              file=sys.stderr)
    finally:
        signal.alarm(0)
        shutil.rmtree(tmp, ignore_errors=True)
    doc["run_s"] = time.monotonic() - t_run
    doc["loadavg_end"] = loadavg()
    if source_fingerprint(pkg) != doc["source_fingerprint"]:
        notes.append(f"{pkg} changed during the run (the daemon imported it at the start)")
    auto_notes(phases, doc, notes)
    targets = evaluate(phases)
    doc["definitions"] = {
        "reader hold": "an outermost hold of daemon.tree.lock by a thread other than "
                       f"{COLLECTOR_THREAD!r}, from acquire's return to release, ms",
        "collector wait": "time the collector thread spent in tree.lock.acquire for an "
                          "outermost acquire (the lock, then the GIL)",
        "lag": "kernel event timestamp to applied in the tree (LagRecorder), every event "
               "applied during the phase's window",
        "window": "a phase's measured window: the storm (or --seconds), plus 0.3 s drain "
                  "after a storm; clients start --client-warmup s earlier",
    }
    doc["phases"] = phases
    doc["targets"] = targets
    doc["notes"] = notes
    print_report(doc, phases, targets, notes)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(jsonable(doc), indent=2, default=str) + "\n")
    print(f"\nwrote {args.out} ({doc['run_s']:.0f} s)")
    return rc


if __name__ == "__main__":
    status = main()
    sys.stdout.flush()
    sys.stderr.flush()
    # The daemon is stopped and every process we started is ended. Its HTTP pool threads
    # may still be finishing requests of clients that are gone (after a run stopped early):
    # interpreter exit would join them, so leave without waiting.
    os._exit(status)
