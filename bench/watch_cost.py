"""Watch-cost benchmark: what one root watcher costs, and how fast it sees an exit.

Compares this project's public Python API (``Monitor.attach`` and
``Root.observe``: proc connector -> PidTree -> Roots -> the root's change log ->
the handle's own mirror) with process-watchman 0.2.1 (psutil polling) on the
same watched root, at
three host sizes: 100, 1,000 and 10,000 background processes (sleeping
children of a tiny C program compiled at run time into a temporary directory,
statically linked: see :func:`compile_helpers` for why).

The watched root is a separate process (a second copy of the same program,
``root`` mode) with ten sleeping children. At each host size:

1. attach and observe cost: the time ``Monitor.attach(pid=...)`` takes (it
   relists the new root's members, under the tree lock), and per call of
   ``root.observe()``, ``root.observe(members=False)`` and process-watchman's
   ``poll()`` (``include_root=True``, default ``children_recursive``
   strategy), median and p99 microseconds, wall clock around each call.
2. exit-to-delta latency: the root forks a child; once the observer under
   test lists it, the bench signals it; the child reads CLOCK_MONOTONIC,
   writes that to the bench over a pipe and ``_exit``s. Latency is from that
   timestamp to the moment a loop polling the observer first shows the
   removal (ours: the pid in ``observe(members=False).delta.removed``, with
   ``time.sleep(0)`` between calls so the collector thread can take the GIL;
   process-watchman: the pid gone from ``poll().processes``). All clocks are
   CLOCK_MONOTONIC. Ours is split at the proc connector EXIT event's kernel
   timestamp and at the moment the collector thread applied it. A second
   loop that never yields the GIL shows what a spinning consumer costs.
3. ratios, process-watchman / ours, side by side in the same run.

Prints a table and writes ``bench/results/watch_cost.json``. A missed target
is printed as MISS, never turned into a failing exit status: this measures.
Every process it starts is ended by pid in a ``finally`` block.

Usage (root, initial namespaces)::

    .venv/bin/python bench/watch_cost.py [--sizes 100,1000,10000] [--scale 1.0]
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import importlib
import json
import math
import os
import platform
import resource
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any

REPO = Path(__file__).resolve().parent.parent
VENV_PYTHON = REPO / ".venv" / "bin" / "python"
DEFAULT_OUT = REPO / "bench" / "results" / "watch_cost.json"
WATCHMAN_REQ = "process-watchman==0.2.1"
WATCHMAN_VERSION = "0.2.1"
ROOT_CHILDREN = 10
SLEEPERS_PER_PARENT = 1_000
LATENCY_TARGET_MS = 5.0
RATIO_TARGET = 100.0
RATIO_AT = 1_000
FLAT_TOLERANCE = 1.5  # "independent of host size": max/min median across sizes
HARD_DEADLINE_S = 900.0  # the whole run, set-up included

# One C program, two modes. C rather than Python or sh so that 10,000
# sleepers cost only kernel memory, and so that the exit timestamp is taken
# one syscall before _exit. All output goes through write(2) (dprintf), never
# stdio buffers, which fork would duplicate.
HELPER_C = r"""
#define _GNU_SOURCE
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static volatile sig_atomic_t stop_flag;
static void on_term(int s) { (void)s; stop_flag = 1; }

static long long now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (long long)ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

/* A child that sleeps until killed, and dies with its parent whatever happens. */
static pid_t sleeper(pid_t parent) {
    pid_t pid = fork();
    if (pid == 0) {
        signal(SIGTERM, SIG_DFL);
        prctl(PR_SET_PDEATHSIG, SIGKILL);
        if (getppid() != parent) _exit(0);
        for (;;) pause();
    }
    return pid;
}

static void end_all(pid_t *kids, int n) {
    for (int i = 0; i < n; i++) kill(kids[i], SIGKILL);
    for (int i = 0; i < n; i++) while (waitpid(kids[i], NULL, 0) < 0 && errno == EINTR) {}
}

int main(int argc, char **argv) {
    if (argc != 3) { dprintf(2, "usage: %s sleepers|root N\n", argv[0]); return 2; }
    int n = atoi(argv[2]);
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_term;  /* no SA_RESTART: read and waitpid return EINTR */
    sigaction(SIGTERM, &sa, NULL);
    sigset_t usr1;
    sigemptyset(&usr1);
    sigaddset(&usr1, SIGUSR1);
    sigprocmask(SIG_BLOCK, &usr1, NULL);  /* test children sigwait for it */
    pid_t self = getpid();
    pid_t *kids = calloc(n > 0 ? n : 1, sizeof(pid_t));
    int made = 0;
    for (; made < n; made++) {
        pid_t pid = sleeper(self);
        if (pid < 0) { dprintf(1, "forkfail %d\n", errno); break; }
        kids[made] = pid;
    }
    dprintf(1, "ready %d\n", made);
    int root = strcmp(argv[1], "root") == 0;
    char c;
    while (!stop_flag) {
        ssize_t got = read(0, &c, 1);  /* EOF: the bench is gone or done */
        if (got == 0) break;
        if (got < 0) { if (errno == EINTR) continue; break; }
        if (!root || c != 'f') continue;
        pid_t pid = fork();
        if (pid == 0) {
            prctl(PR_SET_PDEATHSIG, SIGKILL);
            dprintf(1, "C %d\n", (int)getpid());
            int sig;
            sigwait(&usr1, &sig);
            long long t = now_ns();
            dprintf(1, "E %d %lld\n", (int)getpid(), t);
            _exit(0);
        }
        if (pid < 0) { dprintf(1, "forkfail %d\n", errno); continue; }
        int st;
        while (waitpid(pid, &st, 0) < 0) {
            if (errno != EINTR) break;
            if (stop_flag) { kill(pid, SIGKILL); }
        }
        dprintf(1, "R %d %lld\n", (int)pid, now_ns());
    }
    end_all(kids, made);
    return 0;
}
"""


# -- small helpers ---------------------------------------------------------------------


def ensure_environment() -> None:
    """Re-run under the project venv and install process-watchman there if missing."""
    if VENV_PYTHON.exists() and Path(sys.prefix).resolve() != (REPO / ".venv").resolve():
        os.execv(str(VENV_PYTHON), [str(VENV_PYTHON), str(Path(__file__).resolve()),
                                    *sys.argv[1:]])
    from importlib import metadata

    try:
        have = metadata.version("process-watchman")
    except metadata.PackageNotFoundError:
        have = None
    if have != WATCHMAN_VERSION:
        print(f"installing {WATCHMAN_REQ} into {sys.prefix} (found {have})", flush=True)
        subprocess.run([sys.executable, "-m", "pip", "install", "-q", WATCHMAN_REQ], check=True)
        importlib.invalidate_caches()


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank q-quantile (0..1) of ``values``; nan when empty."""
    if not values:
        return math.nan
    ordered = sorted(values)
    return ordered[max(0, math.ceil(q * len(ordered)) - 1)]


def summary(values: list[float]) -> dict[str, float | int]:
    """Median, p99, min, max and count of ``values``."""
    return {
        "n": len(values),
        "median": percentile(values, 0.5),
        "p99": percentile(values, 0.99),
        "min": min(values) if values else math.nan,
        "max": max(values) if values else math.nan,
    }


def proc_count() -> int:
    """Processes on the host right now (numeric entries of /proc)."""
    return sum(1 for name in os.listdir("/proc") if name.isdigit())


def read_int(path: str) -> int:
    """An integer from a /proc/sys file."""
    return int(Path(path).read_text().split()[0])


def write_int(path: str, value: int) -> None:
    """Write an integer to a /proc/sys file."""
    Path(path).write_text(f"{value}\n")


class Deadline:
    """The whole run's time bound, checked between measurements."""

    def __init__(self, seconds: float) -> None:
        self.end = time.monotonic() + seconds

    def left(self) -> float:
        """Seconds until the run must stop."""
        return self.end - time.monotonic()


class Child:
    """One helper process (C ``sleepers`` or ``root``) with a line reader on its stdout."""

    def __init__(self, binary: Path, mode: str, count: int) -> None:
        # own session: a stray signal for our terminal never reaches it, and
        # its group can be killed whole as the last resort
        self.popen = subprocess.Popen([str(binary), mode, str(count)], stdin=subprocess.PIPE,
                                      stdout=subprocess.PIPE, start_new_session=True)
        self.pid = self.popen.pid
        self.count = 0  # sleepers it reported forked
        assert self.popen.stdout is not None
        self._fd = self.popen.stdout.fileno()
        self._buf = b""

    def readline(self, timeout: float) -> str:
        """The next line of output; raises TimeoutError (or EOFError) rather than block."""
        end = time.monotonic() + timeout
        while b"\n" not in self._buf:
            left = end - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"pid {self.pid}: no output line in {timeout}s")
            ready, _, _ = select.select([self._fd], [], [], left)
            if ready:
                chunk = os.read(self._fd, 65536)
                if not chunk:
                    raise EOFError(f"pid {self.pid} closed its output")
                self._buf += chunk
        line, self._buf = self._buf.split(b"\n", 1)
        return line.decode()

    def expect(self, tag: str, timeout: float = 10.0) -> list[str]:
        """Read lines until one starting with ``tag``; return its fields after the tag."""
        while True:
            fields = self.readline(timeout).split()
            if fields and fields[0] == "forkfail":
                raise RuntimeError(f"pid {self.pid}: fork failed, errno {fields[1]}")
            if fields and fields[0] == tag:
                return fields[1:]

    def send(self, data: bytes) -> None:
        """Write a command byte to the helper's stdin."""
        assert self.popen.stdin is not None
        self.popen.stdin.write(data)
        self.popen.stdin.flush()

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
                p.wait(timeout=20)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.pid, signal.SIGKILL)
                p.wait(timeout=10)
        if p.stdout:
            p.stdout.close()


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
    """Raise pid_max, threads-max and RLIMIT_NPROC if ``needed_pids`` would not fit;
    restore them afterwards."""
    restore: list[Callable[[], None]] = []
    try:
        for path in ("/proc/sys/kernel/pid_max", "/proc/sys/kernel/threads-max"):
            old = read_int(path)
            # room for the sleepers, what runs already, and pid churn of other work
            if old < needed_pids * 2:
                new = min(max(needed_pids * 2, 65_536), 4_194_304)
                write_int(path, new)
                notes.append(f"raised {path} {old} -> {new} for the run")
                restore.append(lambda path=path, old=old: write_int(path, old))
        soft, hard = resource.getrlimit(resource.RLIMIT_NPROC)
        if soft != resource.RLIM_INFINITY and soft < needed_pids * 2:
            new_soft = hard if hard == resource.RLIM_INFINITY else max(soft, min(hard,
                                                                               needed_pids * 2))
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


@dataclass(frozen=True)
class Helpers:
    """The compiled helper, as two files: one for the sleepers, one for the watched root."""

    sleepers: Path
    root: Path
    linkage: str  # static | dynamic


def compile_helpers(tmp: Path, dynamic: bool) -> Helpers:
    """Build the C helper into ``tmp``: statically linked unless ``dynamic`` (or no libc.a),
    and as two copies.

    Why: an exiting process unmaps its files under each file's i_mmap lock. If
    the watched root's children map the same files (the binary, libc) as the
    10,000 sleepers, an rmap walk over those files' 10,000 mappings (kdamond,
    reclaim) now and then holds that lock for 20-40 ms, and the child's exit
    stalls in the kernel before any observer can see it. Separate static
    binaries keep that kernel effect out of an observer benchmark;
    ``--dynamic`` puts it back.
    """
    cc = shutil.which("cc") or shutil.which("gcc")
    if cc is None:
        raise SystemExit("watch_cost: needs a C compiler (apt-get install gcc)")
    src = tmp / "ptxwatch.c"
    src.write_text(HELPER_C)
    linkage = "dynamic" if dynamic else "static"
    out = []
    for name in ("ptxsleepers", "ptxroot"):
        binary = tmp / name
        cmd = [cc, "-O2", "-Wall", "-o", str(binary), str(src)]
        if linkage == "static":
            done = subprocess.run([*cmd, "-static"], capture_output=True)
            if done.returncode != 0:
                linkage = "dynamic"  # no static libc here: measure as it is
        if linkage == "dynamic":
            subprocess.run(cmd, check=True)
        out.append(binary)
    return Helpers(sleepers=out[0], root=out[1], linkage=linkage)


# -- measurements ------------------------------------------------------------------------


@dataclass
class Budget:
    """Bounds for one host size (calls or iterations, and seconds)."""

    cost_calls: int = 20_000
    cost_s: float = 3.0  # per function
    rounds: int = 10
    wm_cost_calls: int = 2_000
    wm_cost_s: float = 6.0
    lat_iters: int = 400
    lat_s: float = 12.0
    spin_iters: int = 100
    spin_s: float = 4.0
    idle_iters: int = 100
    idle_s: float = 4.0
    wm_lat_iters: int = 150
    wm_lat_s: float = 20.0

    def scaled(self, k: float) -> Budget:
        """The same budget with every bound multiplied by ``k`` (at least one call)."""
        scaled = Budget(*(max(1, int(v * k)) if isinstance(v, int) else v * k
                          for v in vars(self).values()))
        scaled.rounds = self.rounds
        return scaled


def _time_into(fn: Callable[[], object], calls: int, end: float, wall: list[float],
               cpu: list[float]) -> None:
    """Append microseconds per call of ``fn`` (wall and thread CPU) for ``calls`` calls
    or until monotonic time ``end`` (at least 10 calls)."""
    clock, cpu_clock, mono = time.perf_counter_ns, time.thread_time_ns, time.monotonic
    for i in range(calls):
        if i >= 10 and mono() > end:
            return
        c0 = cpu_clock()
        t0 = clock()
        fn()
        t1 = clock()
        cpu.append((cpu_clock() - c0) / 1e3)
        wall.append((t1 - t0) / 1e3)


@dataclass(frozen=True, slots=True)
class _RefInfo:
    """A stand-in for MemberInfo: the reference workload allocates these."""

    a: int
    b: int
    c: str
    d: str
    e: float
    f: float | None = None


def reference_work() -> object:
    """A fixed pure-Python workload of observe()'s kind (small frozen objects into a
    read-only mapping), touching nothing host-sized: the machine-speed yardstick."""
    items = {(i, i): _RefInfo(i, i, "sleep", "/bin/sleep", 1.5 * i) for i in range(11)}
    return MappingProxyType(items)


def time_calls(fns: dict[str, Callable[[], object]], calls: int, seconds: float,
               rounds: int = 1, reference: bool = False) -> dict[str, dict[str, Any]]:
    """Microseconds per call of each of ``fns``, interleaved in ``rounds`` rounds,
    until ``calls`` calls each or ``seconds`` in all have passed.

    Wall clock is the headline; the calling thread's CPU time is kept beside it.
    This machine is shared and its speed drifts (a fixed pure-Python loop runs
    anywhere from 1x to 1.6x its best time from one minute to the next), so
    with ``reference`` each round also times :func:`reference_work`, and each
    function's median over rounds of (its round median / the reference's) is
    kept as ``normalized``: comparable across host sizes measured minutes apart.
    """
    if reference:
        fns = {**fns, "_reference": reference_work}
    for fn in fns.values():
        for _ in range(min(50, calls)):  # warm caches and the allocator first
            fn()
    per_round = max(10, calls // rounds)
    round_s = seconds / (rounds * len(fns))
    samples: dict[str, tuple[list[float], list[float]]] = {k: ([], []) for k in fns}
    round_medians: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(rounds):
        for name, fn in fns.items():
            wall: list[float] = []
            cpu: list[float] = []
            _time_into(fn, per_round, time.monotonic() + round_s, wall, cpu)
            samples[name][0].extend(wall)
            samples[name][1].extend(cpu)
            round_medians[name].append(percentile(wall, 0.5))
    out: dict[str, dict[str, Any]] = {}
    for name, (wall, cpu) in samples.items():
        if name == "_reference":
            continue
        out[name] = {**summary(wall), "cpu_median": percentile(cpu, 0.5),
                     "cpu_p99": percentile(cpu, 0.99), "rounds": rounds}
        if reference:
            ratios = [m / r for m, r in zip(round_medians[name], round_medians["_reference"],
                                            strict=True)]
            out[name]["normalized"] = percentile(ratios, 0.5)
            out[name]["reference_median_us"] = percentile(samples["_reference"][0], 0.5)
    return out


@dataclass
class LatencySamples:
    """Exit-to-visible samples (ms) and their split, for one observer."""

    total_ms: list[float] = field(default_factory=list)
    kernel_ms: list[float] = field(default_factory=list)  # child's last read -> EXIT event ts
    apply_ms: list[float] = field(default_factory=list)  # EXIT event ts -> collector applied it
    notice_ms: list[float] = field(default_factory=list)  # applied -> an observe() showed it
    reap_ms: list[float] = field(default_factory=list)  # child's last read -> root's waitpid
    windows: list[tuple[int, int]] = field(default_factory=list)  # (exit, seen) monotonic ns
    seen_before_reap: int = 0  # visible before the root's waitpid returned
    timeouts: int = 0


class GcWatch:
    """Records CPython's full (generation 2) collections, in any thread of this process.

    A full collection walks every tracked object, the tree's nodes included,
    with the GIL held: it is the one pause here that grows with the host.
    """

    def __init__(self) -> None:
        self.full: list[tuple[int, int]] = []  # (start, stop) monotonic ns
        self._start = 0

    def __call__(self, phase: str, info: dict[str, int]) -> None:
        if info.get("generation") != 2:
            return
        if phase == "start":
            self._start = time.monotonic_ns()
        else:
            self.full.append((self._start, time.monotonic_ns()))

    def overlap_ms(self, start: int, stop: int) -> float:
        """Milliseconds of full collection inside [start, stop]."""
        return sum(max(0, min(b, stop) - max(a, start)) for a, b in self.full) / 1e6

    def since(self, t0: int) -> dict[str, Any]:
        """Count and durations of the full collections that started after ``t0``."""
        ms = [(b - a) / 1e6 for a, b in self.full if a >= t0]
        return {"count": len(ms), "max_ms": max(ms, default=0.0),
                "median_ms": percentile(ms, 0.5) if ms else 0.0}


class ApplyProbe:
    """Notes when the collector thread has applied the EXIT event of a wanted pid.

    Wraps the tree's ``apply_record`` on this one instance (the collector looks
    it up at every datagram), so the latency splits into kernel, collector and
    observer parts without touching the project's code.
    """

    def __init__(self, tree: Any) -> None:
        from proctree_exporter import netlink as nl

        self._exit = int(nl.What.EXIT)
        self._apply = tree.apply_record
        self.wanted: set[int] = set()
        self.applied: dict[int, tuple[int, int]] = {}  # pid -> (kernel ts, applied at)
        tree.apply_record = self.apply_record

    def apply_record(self, rec: tuple) -> None:
        """Apply event record ``rec`` (what, cpu, seq, ts_ns, pid, tgid, ...) as the tree
        would, noting a wanted process's EXIT."""
        self._apply(rec)
        if rec[0] == self._exit and rec[4] == rec[5] and rec[4] in self.wanted:
            self.applied[rec[4]] = (rec[3], time.monotonic_ns())

    def take(self, pid: int) -> tuple[int, int] | None:
        """(kernel EXIT timestamp, applied at) for ``pid``, and stop watching it."""
        self.wanted.discard(pid)
        return self.applied.pop(pid, None)


def ours_latency(root: Child, watcher: Any, probe: ApplyProbe, iters: int, seconds: float,
                 spin: bool) -> LatencySamples:
    """Exit-to-delta latency of our watcher, polling observe(members=False).

    With ``spin`` the loop never yields the GIL, so the collector thread (same
    process) runs only when CPython forces a switch (every 5 ms by default).
    """
    out = LatencySamples()
    end = time.monotonic() + seconds
    watcher.observe(members=False)  # cursor to now
    while len(out.total_ms) + out.timeouts < iters and time.monotonic() < end:
        root.send(b"f")
        pid = int(root.expect("C")[0])
        probe.wanted.add(pid)
        # wait for the ADD so that the removal is its own change, not "born and gone"
        seen_add = False
        add_deadline = time.monotonic() + 5
        while not seen_add and time.monotonic() < add_deadline:
            obs = watcher.observe(members=False)
            seen_add = any(m.pid == pid for m in obs.delta.added)
            if not seen_add:
                time.sleep(0.0005)
        if not seen_add:
            raise RuntimeError(f"our watcher never listed test child {pid}")
        os.kill(pid, signal.SIGUSR1)
        t_seen = None
        give_up = time.monotonic_ns() + 2_000_000_000
        while True:
            obs = watcher.observe(members=False)
            now = time.monotonic_ns()
            if any(m.pid == pid for m in obs.delta.removed):
                t_seen = now
                break
            if now > give_up:
                break
            if not spin:
                time.sleep(0)  # release the GIL: the collector thread shares it
        t_exit = int(root.expect("E")[1])
        t_reaped = int(root.expect("R")[1])
        split = probe.take(pid)
        if t_seen is None:
            out.timeouts += 1
            continue
        out.total_ms.append((t_seen - t_exit) / 1e6)
        out.windows.append((t_exit, t_seen))
        out.reap_ms.append((t_reaped - t_exit) / 1e6)
        if t_seen < t_reaped:
            out.seen_before_reap += 1
        if split is not None:
            kernel_ts, applied = split
            out.kernel_ms.append((kernel_ts - t_exit) / 1e6)
            out.apply_ms.append((applied - kernel_ts) / 1e6)
            out.notice_ms.append((t_seen - applied) / 1e6)
    return out


def idle_consumer_latency(root: Child, probe: ApplyProbe, iters: int,
                          seconds: float) -> LatencySamples:
    """Child exit -> collector applied its EXIT, while this thread sleeps (no GIL contention).

    What an observe() called at that moment would show; it isolates the
    collector from a polling consumer in the same process.
    """
    out = LatencySamples()
    end = time.monotonic() + seconds
    while len(out.total_ms) + out.timeouts < iters and time.monotonic() < end:
        root.send(b"f")
        pid = int(root.expect("C")[0])
        probe.wanted.add(pid)
        time.sleep(0.002)  # let the FORK be applied first
        os.kill(pid, signal.SIGUSR1)
        t_exit = int(root.expect("E")[1])
        root.expect("R")
        time.sleep(0.02)  # asleep: the collector has the GIL to itself
        split = probe.take(pid)
        if split is None:
            out.timeouts += 1
            continue
        kernel_ts, applied = split
        out.total_ms.append((applied - t_exit) / 1e6)
        out.windows.append((t_exit, applied))
        out.kernel_ms.append((kernel_ts - t_exit) / 1e6)
        out.apply_ms.append((applied - kernel_ts) / 1e6)
        out.notice_ms.append(0.0)
    return out


def watchman_latency(root: Child, wm: Any, iters: int, seconds: float) -> LatencySamples:
    """Exit-to-delta latency of process-watchman, polling poll() back to back."""
    out = LatencySamples()
    end = time.monotonic() + seconds
    while len(out.total_ms) + out.timeouts < iters and time.monotonic() < end:
        root.send(b"f")
        pid = int(root.expect("C")[0])
        listed = False
        list_deadline = time.monotonic() + 10
        while not listed and time.monotonic() < list_deadline:
            listed = pid in wm.poll().processes
        if not listed:
            raise RuntimeError(f"process-watchman never listed test child {pid}")
        os.kill(pid, signal.SIGUSR1)
        t_seen = None
        give_up = time.monotonic_ns() + 5_000_000_000
        while True:
            snap = wm.poll()
            now = time.monotonic_ns()
            if pid not in snap.processes:
                t_seen = now
                break
            if now > give_up:
                break
        t_exit = int(root.expect("E")[1])
        t_reaped = int(root.expect("R")[1])
        if t_seen is None:
            out.timeouts += 1
            continue
        out.total_ms.append((t_seen - t_exit) / 1e6)
        out.windows.append((t_exit, t_seen))
        out.reap_ms.append((t_reaped - t_exit) / 1e6)
        if t_seen < t_reaped:
            out.seen_before_reap += 1
    return out


def lat_summary(s: LatencySamples, gcw: GcWatch) -> dict[str, Any]:
    """JSON form of latency samples, with the five slowest and what they overlapped."""
    worst = sorted(range(len(s.total_ms)), key=s.total_ms.__getitem__, reverse=True)[:5]
    split = len(s.apply_ms) == len(s.total_ms)
    return {
        "slowest": [{
            "total_ms": round(s.total_ms[i], 3),
            **({"kernel_ms": round(s.kernel_ms[i], 3), "apply_ms": round(s.apply_ms[i], 3),
                "notice_ms": round(s.notice_ms[i], 3)} if split else {}),
            "full_gc_overlap_ms": round(gcw.overlap_ms(*s.windows[i]), 3),
        } for i in worst],
        "samples_overlapping_full_gc": sum(1 for w in s.windows if gcw.overlap_ms(*w) > 0),
        "total_ms": summary(s.total_ms),
        "child_exit_to_kernel_exit_event_ms": summary(s.kernel_ms),
        "kernel_exit_event_to_collector_applied_ms": summary(s.apply_ms),
        "collector_applied_to_visible_ms": summary(s.notice_ms),
        "kernel_exit_event_to_visible_ms": summary(
            [a + b for a, b in zip(s.apply_ms, s.notice_ms, strict=True)]),
        "child_exit_to_parent_waitpid_returned_ms": summary(s.reap_ms),
        "seen_before_parent_reaped": s.seen_before_reap,
        "timeouts": s.timeouts,
    }


def wait_until(pred: Callable[[], bool], timeout: float, what: str) -> None:
    """Poll ``pred`` every 10 ms; raise TimeoutError naming ``what``."""
    end = time.monotonic() + timeout
    while not pred():
        if time.monotonic() > end:
            raise TimeoutError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.01)


def measure_size(size: int, helpers: Helpers, sleepers: list[Child], started: list[Child],
                 monitor: Any, probe: ApplyProbe, gcw: GcWatch, budget: Budget,
                 deadline: Deadline) -> dict[str, Any]:
    """Top the background up to ``size`` sleepers, then measure both observers on a new root."""
    tree, collector = monitor._tree, monitor._collector  # the bench peeks at the collector
    from process_watchman import ProcessTreeWatcher, WatcherConfig

    have = sum(c.count for c in sleepers)
    t0 = time.monotonic()
    while have < size:
        n = min(SLEEPERS_PER_PARENT, size - have)
        c = Child(helpers.sleepers, "sleepers", n)
        started.append(c)
        made = int(c.expect("ready", timeout=120)[0])
        c.count = made
        sleepers.append(c)
        if made < n:
            raise RuntimeError(f"only {made} of {n} sleepers could be forked")
        have += made
    # the tree must hold them all before the host size means anything
    wait_until(lambda: sum(len(tree.descendants(c.pid)) for c in sleepers) >= size, 120,
               f"the tree to learn {size} sleepers")
    spawn_s = time.monotonic() - t0

    root = Child(helpers.root, "root", ROOT_CHILDREN)
    started.append(root)
    root.expect("ready")
    # the pid selector matches when attach scans: the tree must know the root and its
    # children first (and have applied its EXEC, so comm is right)
    wait_until(lambda: len(tree.descendants(root.pid)) == ROOT_CHILDREN
               and (n := tree.get(root.pid)) is not None and n.comm == helpers.root.name,
               30, "the tree to learn the watched root")
    t_attach = time.perf_counter_ns()
    watcher = monitor.attach("bench", pid=root.pid)
    attach_us = (time.perf_counter_ns() - t_attach) / 1e3
    first = watcher.observe()
    wm = ProcessTreeWatcher.attach(root.pid, WatcherConfig(include_root=True))
    wm_first = wm.poll()
    res: dict[str, Any] = {
        "sleepers": size,
        "host_processes": proc_count(),
        "tree_live_nodes": tree.live_count,
        "spawn_and_learn_s": round(spawn_s, 3),
        "loadavg_1m_before": os.getloadavg()[0],
        "members_ours": len(first.members),
        "members_watchman": len(wm_first.processes),
        "attach_us": round(attach_us, 1),
    }
    ev0 = sum(collector.stats.events.values())
    gc_t0 = time.monotonic_ns()
    t_phase = time.monotonic()

    res["cost_us"] = {
        **time_calls({"ours_observe": watcher.observe,
                      "ours_observe_no_members": lambda: watcher.observe(members=False)},
                     budget.cost_calls, 3 * budget.cost_s, rounds=budget.rounds,
                     reference=True),
        **time_calls({"watchman_poll": wm.poll}, budget.wm_cost_calls, budget.wm_cost_s),
    }
    lat_s = min(budget.lat_s, max(1.0, deadline.left() / 4))
    ours = ours_latency(root, watcher, probe, budget.lat_iters, lat_s, spin=False)
    spin = ours_latency(root, watcher, probe, budget.spin_iters, budget.spin_s, spin=True)
    idle = idle_consumer_latency(root, probe, budget.idle_iters, budget.idle_s)
    wm_lat = watchman_latency(root, wm, budget.wm_lat_iters,
                              min(budget.wm_lat_s, max(1.0, deadline.left() / 4)))
    # the latency loops left tombstones in the root: observe() copies them every call
    tombs = len(watcher.observe().tombstones)
    res["cost_us"].update(time_calls(
        {"ours_observe_no_members_with_tombstones": lambda: watcher.observe(members=False)},
        budget.cost_calls, 2 * budget.cost_s, rounds=budget.rounds, reference=True))
    res["tombstones_after_latency"] = tombs
    res["latency"] = {"ours": lat_summary(ours, gcw), "ours_spinning": lat_summary(spin, gcw),
                      "ours_consumer_asleep": lat_summary(idle, gcw),
                      "watchman": lat_summary(wm_lat, gcw)}
    res["full_gc_during"] = gcw.since(gc_t0)
    elapsed = time.monotonic() - t_phase
    res["collector_events_per_s_during"] = round(
        (sum(collector.stats.events.values()) - ev0) / elapsed, 1)
    res["loadavg_1m_after"] = os.getloadavg()[0]
    cost = res["cost_us"]
    res["ratio_watchman_over_ours"] = {
        "cost_vs_observe": cost["watchman_poll"]["median"] / cost["ours_observe"]["median"],
        "cost_vs_observe_no_members": (cost["watchman_poll"]["median"]
                                       / cost["ours_observe_no_members"]["median"]),
        "latency_p50": (res["latency"]["watchman"]["total_ms"]["median"]
                        / res["latency"]["ours"]["total_ms"]["median"]),
    }
    watcher.detach()  # the next size attaches its own root
    root.end()
    return res


# -- report ------------------------------------------------------------------------------


def fmt_cost(s: dict[str, Any]) -> str:
    """``median [p99]`` in microseconds."""
    return f"{s['median']:,.1f} [{s['p99']:,.1f}]"


def fmt_ms(s: dict[str, Any]) -> str:
    """``p50 [p99]`` in milliseconds."""
    if not s["n"]:
        return "-"
    return f"{s['median']:.3f} [{s['p99']:.3f}]"


def evaluate(results: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The brief's targets, each with its measured value and PASS/MISS."""
    targets = []
    worst = max(r["latency"]["ours"]["total_ms"]["p99"] for r in results)
    pipe = max(r["latency"]["ours"]["kernel_exit_event_to_visible_ms"]["p99"] for r in results)
    targets.append({"target": f"ours exit-to-delta p99 <= {LATENCY_TARGET_MS:g} ms at every size",
                    "value": f"worst p99 {worst:.3f} ms (from the kernel's EXIT event "
                             f"timestamp instead: worst p99 {pipe:.3f} ms)",
                    "pass": worst <= LATENCY_TARGET_MS})
    for key, label in (("ours_observe", "observe()"),
                       ("ours_observe_no_members", "observe(members=False)")):
        norm = [r["cost_us"][key]["normalized"] for r in results]
        raw = [r["cost_us"][key]["median"] for r in results]
        spread = max(norm) / min(norm)
        targets.append({
            "target": f"ours {label} independent of host size (max/min of the median "
                      f"normalized to the reference loop <= {FLAT_TOLERANCE:g})",
            "value": f"{spread:.2f}x (normalized {' / '.join(f'{m:.2f}' for m in norm)}; "
                     f"raw wall medians {' / '.join(f'{m:.1f}' for m in raw)} us, "
                     f"{max(raw) / min(raw):.2f}x)",
            "pass": len(results) > 1 and spread <= FLAT_TOLERANCE})
    at = next((r for r in results if r["sleepers"] == RATIO_AT), None)
    if at is not None:
        for key, label in (("cost_vs_observe", "vs observe()"),
                           ("cost_vs_observe_no_members", "vs observe(members=False)")):
            ratio = at["ratio_watchman_over_ours"][key]
            targets.append({"target": f"process-watchman/ours cost >= {RATIO_TARGET:g}x at "
                                      f"{RATIO_AT:,} sleepers, {label}",
                            "value": f"{ratio:,.0f}x", "pass": ratio >= RATIO_TARGET})
    return targets


def print_table(meta: dict[str, Any], results: list[dict[str, Any]],
                targets: list[dict[str, Any]]) -> None:
    """The human-readable report."""
    w = 44
    cols = [f"{r['sleepers']:,} sleepers" for r in results]
    colw = max(24, *(len(c) + 2 for c in cols))

    def row(label: str, cells: list[str]) -> None:
        print(f"{label:<{w}}" + "".join(f"{c:>{colw}}" for c in cells))

    print(f"\nwatch_cost: {meta['time']}  kernel {meta['kernel']}  {meta['cpus']} CPUs  "
          f"collector source {meta['collector_source']}  process-watchman "
          f"{meta['watchman_version']}")
    print(f"watched root: C process ({meta['helper_linkage']}ally linked, its own binary) with "
          f"10 sleeping children (11 members);\nprocess-watchman include_root=True, strategy "
          f"children_recursive\n")
    row("", cols)
    row("host processes in /proc / live tree nodes",
        [f"{r['host_processes']:,} / {r['tree_live_nodes']:,}" for r in results])
    row("members listed: ours / process-watchman",
        [f"{r['members_ours']} / {r['members_watchman']}" for r in results])
    row("events the collector applied, per s (all)",
        [f"{r['collector_events_per_s_during']:,.0f}" for r in results])
    row("load average 1m, before -> after",
        [f"{r['loadavg_1m_before']:.2f} -> {r['loadavg_1m_after']:.2f}" for r in results])
    print("\npublic API: attach, then observe; cost in us per call: median [p99] (wall clock "
          "unless said)")
    row("  ours Monitor.attach(pid=...), once", [f"{r['attach_us']:,.0f}" for r in results])
    for key, label in (("ours_observe", "ours Root.observe()"),
                       ("ours_observe_no_members", "ours Root.observe(members=False)"),
                       ("watchman_poll", "process-watchman poll()")):
        row(f"  {label}", [fmt_cost(r["cost_us"][key]) for r in results])
        row("    thread CPU time", [fmt_cost({"median": r["cost_us"][key]["cpu_median"],
                                              "p99": r["cost_us"][key]["cpu_p99"]})
                                    for r in results])
        if key != "watchman_poll":
            row("    normalized to the reference loop",
                [f"{r['cost_us'][key]['normalized']:.2f}" for r in results])
    row("  reference loop (machine speed), median",
        [f"{r['cost_us']['ours_observe']['reference_median_us']:,.1f}" for r in results])
    row("  calls timed: ours / process-watchman",
        [f"{r['cost_us']['ours_observe']['n']:,} / {r['cost_us']['watchman_poll']['n']:,}"
         for r in results])
    row("  ratio watchman/ours, vs observe()",
        [f"{r['ratio_watchman_over_ours']['cost_vs_observe']:,.0f}x" for r in results])
    row("  ratio watchman/ours, vs members=False",
        [f"{r['ratio_watchman_over_ours']['cost_vs_observe_no_members']:,.0f}x"
         for r in results])
    row("  ours members=False, after latency loops",
        [fmt_cost(r["cost_us"]["ours_observe_no_members_with_tombstones"]) for r in results])
    row("    (tombstones it copies per call)",
        [f"{r['tombstones_after_latency']:,}" for r in results])
    print("\nexit-to-delta latency, ms: p50 [p99]  (from the child's last CLOCK_MONOTONIC "
          "read, one write(2)\n  before its _exit, to the first poll showing the removal)")
    lat = [r["latency"] for r in results]
    row("  ours, poll observe(members=False) + sleep(0)", [fmt_ms(x["ours"]["total_ms"])
                                                         for x in lat])
    row("    child exit -> kernel EXIT event ts",
        [fmt_ms(x["ours"]["child_exit_to_kernel_exit_event_ms"]) for x in lat])
    row("    kernel EXIT event ts -> collector applied",
        [fmt_ms(x["ours"]["kernel_exit_event_to_collector_applied_ms"]) for x in lat])
    row("    collector applied -> observe() shows it",
        [fmt_ms(x["ours"]["collector_applied_to_visible_ms"]) for x in lat])
    row("    samples / seen before parent reaped",
        [f"{x['ours']['total_ms']['n']} / {x['ours']['seen_before_parent_reaped']}" for x in lat])
    row("  kernel alone: child exit -> root's waitpid",
        [fmt_ms(x["ours"]["child_exit_to_parent_waitpid_returned_ms"]) for x in lat])
    row("    slowest: total = kernel + apply + notice",
        [(lambda w: f"{w['total_ms']:.2f}={w['kernel_ms']:.2f}+{w['apply_ms']:.2f}"
                    f"+{w['notice_ms']:.2f}" if w else "-")(
            next(iter(x["ours"]["slowest"]), None)) for x in lat])
    row("    samples overlapping a full GC / slowest's",
        [f"{x['ours']['samples_overlapping_full_gc']} / "
         f"{x['ours']['slowest'][0]['full_gc_overlap_ms']:.2f} ms" if x["ours"]["slowest"]
         else "-" for x in lat])
    row("  ours, consumer asleep: exit -> applied",
        [fmt_ms(x["ours_consumer_asleep"]["total_ms"]) for x in lat])
    row("    kernel EXIT event ts -> collector applied",
        [fmt_ms(x["ours_consumer_asleep"]["kernel_exit_event_to_collector_applied_ms"])
         for x in lat])
    row("  ours, spinning (GIL never yielded)", [fmt_ms(x["ours_spinning"]["total_ms"])
                                                for x in lat])
    row("  process-watchman, poll() back to back", [fmt_ms(x["watchman"]["total_ms"])
                                                   for x in lat])
    row("    samples", [str(x["watchman"]["total_ms"]["n"]) for x in lat])
    row("  full GCs in this process during / longest",
        [f"{r['full_gc_during']['count']} / {r['full_gc_during']['max_ms']:.2f} ms"
         for r in results])
    row("  ratio watchman/ours, p50",
        [f"{r['ratio_watchman_over_ours']['latency_p50']:,.0f}x" for r in results])
    timeouts = sum(x[k]["timeouts"] for x in lat for k in x)
    if timeouts:
        print(f"  timeouts (removal never seen within the give-up bound): {timeouts}")
    print("\ntargets")
    for t in targets:
        print(f"  {'PASS' if t['pass'] else 'MISS'}  {t['target']}: {t['value']}")
    for note in meta["notes"]:
        print(f"note: {note}")


# -- main --------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark; exit 0 whatever the targets say."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    ap.add_argument("--sizes", default="100,1000,10000",
                    help="background sleeper counts, ascending (default 100,1000,10000)")
    ap.add_argument("--scale", type=float, default=1.0,
                    help="multiply every call/iteration/time bound (default 1.0)")
    ap.add_argument("--dynamic", action="store_true",
                    help="link the helpers dynamically: the watched root's children then share "
                         "libc and the binary with every sleeper (see compile_helpers)")
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = ap.parse_args(argv)
    sizes = sorted(int(s) for s in args.sizes.split(","))
    if os.geteuid() != 0:
        print("watch_cost: needs root (the proc connector needs CAP_NET_ADMIN)", file=sys.stderr)
        return 2
    ensure_environment()
    watchman = importlib.import_module("process_watchman")

    from proctree_exporter import Monitor

    deadline = Deadline(HARD_DEADLINE_S)
    budget = Budget().scaled(args.scale)
    notes: list[str] = []
    started: list[Child] = []
    sleepers: list[Child] = []
    results: list[dict[str, Any]] = []
    monitor = None
    gcw = GcWatch()
    gc.callbacks.append(gcw)
    tmp = Path(tempfile.mkdtemp(prefix="watch_cost-"))
    try:
        with raised_limits(proc_count() + max(sizes) + 2_000, notes):
            helpers = compile_helpers(tmp, args.dynamic)
            monitor = Monitor()
            probe = ApplyProbe(monitor._tree)  # before start: the collector looks it up
            monitor.start()
            for size in sizes:
                if deadline.left() < 60:
                    notes.append(f"stopped before {size:,} sleepers: run time bound reached")
                    break
                print(f"measuring with {size:,} sleepers ...", flush=True)
                results.append(measure_size(size, helpers, sleepers, started, monitor,
                                            probe, gcw, budget, deadline))
            cstats = monitor._collector.stats
            meta = {
                "benchmark": "watch_cost",
                "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                "kernel": platform.release(),
                "cpus": os.cpu_count(),
                "python": platform.python_version(),
                "collector_source": cstats.source,
                "helper_linkage": helpers.linkage,
                "collector_overruns": cstats.overruns,
                "collector_resyncs": cstats.resyncs,
                "collector_events_lost": cstats.events_lost,
                "watchman_version": getattr(watchman, "__version__", "?"),
                "budget": vars(budget),
                "definitions": {
                    "cost": "wall clock (perf_counter_ns) around one call, in the bench "
                            "process whose collector thread shares the GIL",
                    "latency": "child's CLOCK_MONOTONIC just before _exit(0) -> first poll "
                               "result showing the removal, in the bench process; ours polls "
                               "observe(members=False) with time.sleep(0) between calls",
                    "latency_split": "kernel ts is the proc connector EXIT event's own "
                                     "timestamp (CLOCK_MONOTONIC); applied is taken right "
                                     "after PidTree.apply() returned for it, on the "
                                     "collector thread",
                },
                "notes": notes,
            }
            if cstats.resyncs or cstats.overruns:
                notes.append(f"collector lost events during the run: overruns "
                             f"{cstats.overruns}, resyncs {cstats.resyncs}")
    finally:
        for c in reversed(started):
            try:
                c.end()
            except (OSError, subprocess.TimeoutExpired) as exc:
                print(f"watch_cost: could not end pid {c.pid}: {exc}", file=sys.stderr)
        if monitor is not None:
            monitor.close()
        shutil.rmtree(tmp, ignore_errors=True)
        gc.callbacks.remove(gcw)
    left = leftovers({c.pid for c in started})
    notes.append(f"processes left behind after cleanup: {len(left)}"
                 + (f" {left[:20]}" if left else ""))
    if not results:
        print("watch_cost: nothing measured", file=sys.stderr)
        return 0
    targets = evaluate(results)
    print_table(meta, results, targets)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({**meta, "sizes": results, "targets": targets}, indent=2,
                                   default=str) + "\n")
    print(f"\nwrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
