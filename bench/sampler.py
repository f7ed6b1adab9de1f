"""Sampler benchmark: CPU per sampled process of ``sampler.sample()``, against psutil.

Fills the host with 1,000 and then 10,000 sleeping processes (``bench/sleepers.c``,
compiled at run time into a temporary directory, as bench/scrape.py does: one
sleeper group per 2,500 children), and measures, on the sleepers only:

- ``sample(ids)`` and ``sample(ids, pss=True)``: the round's own CPU time
  (``time.thread_time``, user + system of the sampling thread) per sampled
  process, over several rounds; and the share of one core that costs at one
  round every 15 s. Target: under 75 µs per process without PSS (10,000
  processes every 15 s within 5% of one core).
- anchors in the same run, one round each: psutil ``Process(pid).as_dict()``
  with the figures the sampler gives, ``Process(pid)`` + ``oneshot()`` with the
  individual calls, and the same plus ``memory_full_info()`` (PSS, USS).
- at 1,000 only: what each /proc read costs alone, and the :class:`Sampler`
  thread's own account (``status().cpu_seconds`` per round) and how long its
  ``stop()`` takes.

A sleeper has a tiny address space, so its smaps_rollup is cheap; the cost of
PSS grows with mapped memory, shown on one process that touched 256 MiB.

Prints a table and writes ``bench/results/sampler.txt``. A missed target is
printed as MISS, never turned into a failing exit status. Every process it
starts is ended by pid in a ``finally`` block, within bounded time.

Usage (root)::

    .venv/bin/python bench/sampler.py [--sizes 1000,10000] [--rounds 5]
"""

from __future__ import annotations

import argparse
import contextlib
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterable
from pathlib import Path

import psutil

from proctree_exporter import procfs, sampler
from proctree_exporter.identity import Identity
from scrape import (
    Group,
    compile_sleepers,
    host_busy_seconds,
    leftovers,
    proc_count,
    raised_limits,
    self_cpu_seconds,
)

REPO = Path(__file__).resolve().parent.parent
DEFAULT_OUT = REPO / "bench" / "results" / "sampler.txt"
INTERVAL_S = 15.0
TARGET_US = 75.0  # 5% of one core for 10,000 processes every 15 s
GROUP_MAX = 2500  # children per sleeper group
READY_TIMEOUT_S = 120.0
BIG_MIB = 256


def us_per_process(cpu_s: float, n: int) -> float:
    """CPU seconds of a round as microseconds per process."""
    return cpu_s * 1e6 / n


def core_share(us: float, n: int, interval_s: float = INTERVAL_S) -> float:
    """Share of one core (0..1) that ``n`` processes at ``us`` each cost every ``interval_s``."""
    return us * n / 1e6 / interval_s


def timed(fn: Callable[[Identity], object], ids: list[Identity]) -> float:
    """CPU µs per identity of calling ``fn`` on each (this thread's CPU time)."""
    t0 = time.thread_time()
    for ident in ids:
        fn(ident)
    return us_per_process(time.thread_time() - t0, len(ids))


# -- psutil anchors: the same figures through psutil's public API ---------------------------


def psutil_as_dict(ident: Identity) -> object:
    """``as_dict`` of what the sampler gives (page faults: psutil has none on Linux)."""
    try:
        return psutil.Process(ident.pid).as_dict(
            ["create_time", "status", "cpu_times", "memory_info", "io_counters", "num_fds",
             "num_threads", "num_ctx_switches"])
    except psutil.NoSuchProcess:
        return None


def psutil_oneshot(ident: Identity, full: bool = False) -> object:
    """``Process(pid)`` and the individual calls inside ``oneshot()``."""
    try:
        p = psutil.Process(ident.pid)
        with p.oneshot():
            out = (p.create_time(), p.status(), p.cpu_times(),
                   p.memory_full_info() if full else p.memory_info(), p.io_counters(),
                   p.num_fds(), p.num_threads(), p.num_ctx_switches())
        return out
    except psutil.NoSuchProcess:
        return None


# -- what each read costs alone ---------------------------------------------------------------


def _read(path: str) -> bytes:
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        return os.read(fd, 8192)
    finally:
        os.close(fd)


def breakdown(ids: list[Identity]) -> list[tuple[str, float]]:
    """CPU µs per process of each read alone (open, read, close; no parsing)."""
    reads: list[tuple[str, Callable[[Identity], object]]] = [
        ("/proc/PID/stat", lambda i: _read(f"/proc/{i.pid}/stat")),
        ("/proc/PID/io", lambda i: _read(f"/proc/{i.pid}/io")),
        ("/proc/PID/status", lambda i: _read(f"/proc/{i.pid}/status")),
        ("stat(/proc/PID/fd)", lambda i: os.stat(f"/proc/{i.pid}/fd").st_size),
        ("listdir(/proc/PID/fd)", lambda i: os.listdir(f"/proc/{i.pid}/fd")),
        ("/proc/PID/statm", lambda i: _read(f"/proc/{i.pid}/statm")),
        ("/proc/PID/smaps_rollup", lambda i: _read(f"/proc/{i.pid}/smaps_rollup")),
        ("psutil.Process(pid) alone", lambda i: psutil.Process(i.pid)),
    ]
    timed(reads[0][1], ids)  # warm the dentries
    return [(name, timed(fn, ids)) for name, fn in reads]


# -- the Sampler thread -----------------------------------------------------------------------


def sampler_thread(ids: list[Identity], rounds: int, interval_s: float = 0.5
                   ) -> tuple[float, float, int, int]:
    """Run a Sampler for ``rounds`` rounds: (its CPU µs per process per round, stop() seconds,
    rounds seen, errors)."""
    seen: list[sampler.SampleRound] = []
    done = threading.Event()

    def on_round(r: sampler.SampleRound) -> None:
        seen.append(r)
        if len(seen) >= rounds:
            done.set()

    s = sampler.Sampler(lambda: ids, interval_s, on_round)
    s.start()
    try:
        done.wait(rounds * interval_s + 60)
    finally:
        t0 = time.monotonic()
        s.stop()
        stop_s = time.monotonic() - t0
    st = s.status()
    return us_per_process(st.cpu_seconds / max(st.rounds, 1), len(ids)), stop_s, st.rounds, \
        st.errors


# -- PSS on a process with memory -------------------------------------------------------------


def big_process_costs(repeats: int = 50) -> tuple[float, float, int]:
    """µs per sample of one process that touched BIG_MIB, without and with PSS; its RSS."""
    code = (f"b = bytearray({BIG_MIB} << 20)\n"
            "for i in range(0, len(b), 4096): b[i] = 1\n"
            "print('ready', flush=True)\n"
            "import time; time.sleep(120)\n")
    p = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True,
                         stdin=subprocess.DEVNULL, start_new_session=True)
    try:
        assert p.stdout is not None
        if p.stdout.readline().strip() != "ready":
            raise RuntimeError("the big process did not start")
        ident = Identity(p.pid, procfs.read_stat(p.pid).start_ticks)
        plain = timed(lambda i: sampler.sample([i]), [ident] * repeats)
        with_pss = timed(lambda i: sampler.sample([i], pss=True), [ident] * repeats)
        rss = sampler.sample([ident]).samples[ident].rss_bytes
        return plain, with_pss, rss
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(p.pid, signal.SIGKILL)
        p.wait(timeout=10)
        if p.stdout:
            p.stdout.close()


# -- one host size ----------------------------------------------------------------------------


def start_sleepers(binary: Path, n: int, started: list[Group]) -> list[Identity]:
    """Start ``n`` sleepers in groups of at most GROUP_MAX; their identities."""
    groups = []
    left = n
    while left > 0:
        g = Group(binary, f"ptxsampl{len(started)}", min(left, GROUP_MAX))
        started.append(g)
        groups.append(g)
        left -= g.count
    for g in groups:
        g.wait_ready(READY_TIMEOUT_S)
    ids = []
    for g in groups:
        for pid in g.children():
            ids.append(Identity(pid, procfs.read_stat(pid).start_ticks))
    if len(ids) != n:
        raise RuntimeError(f"started {len(ids)} sleepers, wanted {n}")
    return ids


def ours(ids: list[Identity], pss: bool, rounds: int, gap_s: float) -> list[float]:
    """CPU µs per process of ``rounds`` sample() rounds, ``gap_s`` apart (after one round
    not kept: dentries, the fd-count probe)."""
    sampler.sample(ids, pss=pss)
    cpu = []
    for i in range(rounds):
        if i and gap_s:
            time.sleep(gap_s)
        r = sampler.sample(ids, pss=pss)
        if len(r.samples) != len(ids):
            raise RuntimeError(f"sampled {len(r.samples)} of {len(ids)} sleepers: "
                               f"{len(r.vanished)} vanished, {len(r.reused)} reused, "
                               f"{len(r.unreadable)} unreadable")
        cpu.append(us_per_process(r.cpu_s, len(ids)))
    return cpu


def fmt_us(values: Iterable[float]) -> str:
    """Median [min-max] of microsecond figures."""
    v = sorted(values)
    return f"{statistics.median(v):.1f} [{v[0]:.0f}-{v[-1]:.0f}]"


def row(label: str, spaced: str, warm: str, share: str, verdict: str = "") -> str:
    """One line of the table."""
    return f"{label:34s} {spaced:>18s} {warm:>18s} {share:>10s}  {verdict}".rstrip()


def measure_size(binary: Path, n: int, rounds: int, gap_s: float, out: list[str],
                 started: list[Group]) -> None:
    """Everything measured at one host size, appended to ``out`` as lines."""
    ids = start_sleepers(binary, n, started)
    out.append("")
    out.append(f"== {n:,} sleepers ({proc_count():,} processes in /proc) ==")
    out.append(row("", f"{gap_s:g} s apart", "back-to-back", "core"))
    out.append(row("CPU µs per sampled process", f"({rounds} rounds)", "(3 rounds)",
                   f"@{INTERVAL_S:g} s"))
    medians = {}
    for pss in (False, True):
        warm = ours(ids, pss, 3, 0.0)
        spaced = ours(ids, pss, rounds, gap_s)
        med = medians[pss] = statistics.median(spaced)
        verdict = "" if pss else \
            f"{'PASS' if med < TARGET_US else 'MISS'} (< {TARGET_US:.0f} µs, {gap_s:g} s apart)"
        out.append(row(f"sample(ids{', pss=True' if pss else ''})", fmt_us(spaced),
                       fmt_us(warm), f"{core_share(med, n):.2%}", verdict))
        if not pss:
            warm_plain = statistics.median(warm)
    for label, fn in [("psutil as_dict (anchor)", psutil_as_dict),
                      ("psutil Process+oneshot (anchor)", psutil_oneshot),
                      ("psutil oneshot+memory_full_info", lambda i: psutil_oneshot(i, True))]:
        us = timed(fn, ids)
        out.append(row(label, "-", f"{us:.1f}", f"{core_share(us, n):.2%}",
                       f"x{us / warm_plain:.1f} ours back-to-back"))
    out.append(f"CPU per round: {medians[False] * n / 1e6:.3f} s without PSS, "
               f"{medians[True] * n / 1e6:.3f} s with PSS")
    if n <= 1000:
        out.append("")
        out.append("each read alone, back-to-back (CPU µs/process, open+read+close, no parsing):")
        for name, us in breakdown(ids):
            out.append(f"  {name:36s} {us:6.1f}")
        us, stop_s, got, errors = sampler_thread(ids, rounds=3)
        out.append(f"Sampler thread, 3 rounds 0.5 s apart: status().cpu_seconds = {us:.1f} µs "
                   f"per process per round (rounds {got}, errors {errors}); "
                   f"stop() took {stop_s * 1000:.1f} ms")


def header() -> list[str]:
    """What the numbers were measured on."""
    model = "?"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    return [
        "bench/sampler.py: CPU per sampled process, proctree_exporter.sampler vs psutil",
        f"date {time.strftime('%Y-%m-%d %H:%M:%S %Z')}; kernel {platform.release()}; "
        f"{os.cpu_count()} CPUs ({model}); Python {platform.python_version()}; "
        f"psutil {psutil.__version__}; loadavg {os.getloadavg()[0]:.2f}",
        "CPU = time.thread_time() of the sampling thread (user + system), per process;"
        " median [min-max] over the rounds",
        "rounds N s apart are what a deployed sampler pays (caches cold); back-to-back"
        " rounds are the floor, and what the psutil anchors are compared with",
        f"core share = CPU per round / {INTERVAL_S:g} s interval;"
        f" target: < {TARGET_US:.0f} µs/process without PSS",
    ]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    ap.add_argument("--sizes", default="1000,10000", help="sleepers per run, comma-separated")
    ap.add_argument("--rounds", type=int, default=4, help="sample() rounds per measurement")
    ap.add_argument("--gap", type=float, default=INTERVAL_S,
                    help="seconds between measured rounds (the deployed interval: caches "
                         "go cold in between, which back-to-back rounds hide)")
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = ap.parse_args()
    if os.geteuid() != 0:
        print("sampler bench: run as root (it raises pid limits if needed)", file=sys.stderr)
        return 2
    sizes = [int(s) for s in args.sizes.split(",")]
    out = header()
    notes: list[str] = []
    tmp = Path(tempfile.mkdtemp(prefix="ptxsampler-"))
    started: list[Group] = []
    busy0, self0, wall0 = host_busy_seconds(), self_cpu_seconds(), time.monotonic()
    try:
        binary, linkage = compile_sleepers(tmp)
        notes.append(f"sleepers linked {linkage}")
        with raised_limits(max(sizes) + proc_count() + 1000, notes):
            for n in sizes:
                print(f"sampler bench: {n:,} sleepers ...", flush=True)
                try:
                    measure_size(binary, n, args.rounds, args.gap, out, started)
                finally:
                    for g in started:
                        g.end()
                    sessions = {g.pid for g in started}
                    started.clear()
                    if left := leftovers(sessions):
                        notes.append(f"left behind after {n:,}: {left[:20]}")
        plain, with_pss, rss = big_process_costs()
        out.append("")
        out.append(f"one process with {rss / 2**20:.0f} MiB resident: sample() {plain:.1f} µs, "
                   f"with PSS {with_pss:.1f} µs (smaps_rollup walks its page tables)")
    finally:
        for g in started:
            try:
                g.end()
            except (OSError, subprocess.TimeoutExpired) as exc:
                print(f"sampler bench: could not end group pid {g.pid}: {exc}", file=sys.stderr)
        shutil.rmtree(tmp, ignore_errors=True)
    other = (host_busy_seconds() - busy0 - (self_cpu_seconds() - self0)) \
        / (time.monotonic() - wall0)
    notes.append(f"other work on the host kept {other:.2f} CPUs busy on average during the run"
                 f" (loadavg at the end {os.getloadavg()[0]:.2f}); above ~0.2 the figures"
                 " are inflated")
    out.append("")
    out += [f"note: {n}" for n in notes]
    text = "\n".join(out) + "\n"
    print(text)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
