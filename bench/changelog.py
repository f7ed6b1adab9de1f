#!/usr/bin/env python3
"""What a root's change log costs: bytes per event by kind, and a full log.

    .venv/bin/python bench/changelog.py [--processes 36000] [--out PATH]

The events are made by the daemon's own code: tests/fakehost.py plays the kernel
(a table of processes, their /proc, their proc connector events), fed to the same
PidTree and Roots the daemon runs, so each event holds what a real one holds, and
shares what a real one shares (a forked child's comm and exe are its parent's
strings; an exec's are fresh reads). Scenes:

- ``fork``: the ``host`` root (PID 1, max_members 1000, as config.yaml has it) under
  a fork+exit storm, as ``bench/loadgen.c fork-exit``: ``joined``, ``exited``,
  ``left`` (tombstones past ``max_tombstones``).
- ``exec``: fork+exec+exit: each child execs one of 50 programs with a command
  line of about 90 characters: ``exec`` events too.
- ``cmdline``: the exec storm seen by a root with ``capture_cmdline`` (256 chars).
- ``jobs``: a ``select: comm`` root whose instances come and go under 100 shells
  (``joined`` with ancestors, ``root_up``, ``root_down``, ``restart``), leaving
  orphans and zombies (``class`` events).

Per scene, in a fresh interpreter: the storm runs with a log big enough to keep
every event; then the pretend host, tree and roots are dropped, so only the log
holds what it holds, and the log is dropped too: the fall in Python's traced memory
(tracemalloc) is what the log cost, its ring included. Against it, the sum of
``changelog.record_bytes`` (the O(1) estimate a byte-bounded log keeps). Per kind:
each kind's records alone, as the log holds them (kinds dropped one after another: an
object two kinds share counts for the one dropped last, joined last, as the estimate
counts it).

Full log at the default size: the fork scene in fresh interpreters (no
tracemalloc) with ``change_log_size`` 100,000 and no byte bound, with 10 events,
and with the byte bounds 16 MiB and 64 MiB: VmRSS after the storm minus the
10-event run's is what the host pays, allocator slack included. Also the cost of
an append with and without the byte bound.

Prints tables and writes ``bench/results/changelog.json``. It measures; it judges
nothing.
"""

from __future__ import annotations

import argparse
import gc
import json
import platform
import subprocess
import sys
import time
import tracemalloc
from collections import Counter
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

DEFAULT_OUT = REPO / "bench" / "results" / "changelog.json"
SCENES = ("fork", "exec", "cmdline", "jobs")
# kinds dropped in this order: a shared object counts for the kind dropped last
DROP_ORDER = ("left", "exited", "root_down", "root_up", "restart", "action", "reparented",
              "class", "exec", "joined", "root_removed", "lost")
MIB = 1 << 20


def rss_bytes() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


def scene(name: str, processes: int, size: int, max_bytes: int | None) -> tuple[Any, Any]:
    """Run scene ``name``; return (the pretend host, the log of its root)."""
    from tests.fakehost import Host

    from proctree_exporter.rootspec import RootSpec

    big = max_bytes if max_bytes is not None else 1 << 40
    host = RootSpec("host", "pid", "1", max_members=1000, change_log_size=size,
                    change_log_max_bytes=big)
    if name == "cmdline":
        specs = [host, RootSpec("job", "comm", "runner", capture_cmdline=True,
                                change_log_size=size, change_log_max_bytes=big)]
    elif name == "jobs":
        specs = [host, RootSpec("job", "comm", "job", change_log_size=size,
                                change_log_max_bytes=big, zombie_grace_s=0.5)]
    else:
        specs = [host]
    h = Host(*specs, max_nodes=5000, tombstone_ttl_s=60)
    h.spawn("lg", comm="loadgen", exe="/usr/local/bin/loadgen",
            cmdline="/usr/local/bin/loadgen fork-exit --workers 2 --rate 4000 /tmp/lg")
    if name == "cmdline":
        h.spawn("run", "lg", comm="runner", exe="/usr/bin/runner",
                cmdline="/usr/bin/runner --job 42")
    if name == "jobs":
        for s in range(100):
            h.spawn(f"sh{s}", comm="bash", exe="/usr/bin/bash", cmdline="bash -l")
        for i in range(processes // 5):
            job = f"j{i}"
            h.spawn(job, f"sh{i % 100}", comm="job", exe="/opt/jobs/bin/job",
                    cmdline=f"/opt/jobs/bin/job --id {i}")
            for w in range(3):
                h.spawn(f"{job}.{w}", job, comm=f"step{w}", exe=f"/opt/jobs/bin/step{w}",
                        cmdline=f"/opt/jobs/bin/step{w} --job {i} --part {w}")
            h.exit(job)  # its steps are orphaned
            h.tick(0.05)
            h.exit(f"{job}.0")
            h.exit(f"{job}.1", signal=9)
            h.exit(f"{job}.2", reap=False)  # a zombie past the grace, then reaped
            h.tick(0.6, rounds=2)
            h.reap(f"{job}.2")
            h.tick(0.05)
        return h, h.roots.log("job")
    parent = "run" if name == "cmdline" else "lg"
    for i in range(processes):
        child = f"c{i}"
        if name == "fork":
            h.spawn(child, parent)
        else:  # a fresh program per child, its strings fresh reads as from /proc
            prog = f"worker-{i % 50}"
            h.spawn(child, parent, comm=f"work{i % 50}", exe=f"/usr/lib/jobs/bin/{prog}",
                    cmdline=f"/usr/lib/jobs/bin/{prog} --task {i} "
                            f"--input /var/lib/jobs/in/{i}.json --verbose")
        h.exit(child)
        if i % 200 == 199:
            h.tick(0.05)
    h.tick(0.05)
    return h, h.roots.log("job" if name == "cmdline" else "host")


def traced(name: str, processes: int) -> dict[str, Any]:
    """Bytes per event of scene ``name``, traced and estimated, overall and per kind."""
    from proctree_exporter.changelog import record_bytes

    size = 10_000_000
    tracemalloc.start()
    h, log = scene(name, processes, size, None)
    # what the log holds: each event as a record (a tuple of its kind's fields), kind first
    held = [r for r in log._ring if r is not None]
    n = len(held)
    kinds = Counter(str(r[0]) for r in held)
    estimate = sum(record_bytes(r) for r in held)
    est_kind: Counter[str] = Counter()
    for r in held:
        est_kind[str(r[0])] += record_bytes(r)
    del h
    gc.collect()
    before = tracemalloc.get_traced_memory()[0] - sys.getsizeof(held)
    # the log alone: every other holder of these objects is gone
    groups: dict[str, list[Any]] = {k: [] for k in kinds}
    for r in held:
        groups[str(r[0])].append(r)
    del held, log
    per_kind: dict[str, float] = {}
    for k in sorted(groups, key=DROP_ORDER.index):
        count = len(groups[k])
        gc.collect()
        a = tracemalloc.get_traced_memory()[0]
        container = sys.getsizeof(groups[k])
        del groups[k]
        gc.collect()
        b = tracemalloc.get_traced_memory()[0]
        per_kind[k] = (a - b - container) / count + 12  # + its ring slot and size record
    del groups
    gc.collect()
    total = before - tracemalloc.get_traced_memory()[0]
    tracemalloc.stop()
    return {
        "scene": name, "events": n, "kinds": dict(kinds),
        "traced_bytes": total,
        "traced_per_event": total / n, "estimate_per_event": estimate / n,
        "estimate_over_traced": estimate / total,
        "per_kind": {k: {"events": kinds[k], "traced": per_kind[k],
                         "estimate": est_kind[k] / kinds[k]} for k in per_kind},
    }


def full_log(size: int, max_bytes: int | None, processes: int) -> dict[str, Any]:
    """The fork scene with a log of ``size`` events (and ``max_bytes``): RSS, held."""
    gc.collect()
    _host, log = scene("fork", processes, size, max_bytes)  # the host kept, as in every run
    gc.collect()
    return {"size": size, "max_bytes": max_bytes, "rss": rss_bytes(), "held": log.held,
            "estimate": log.bytes, "seq": log.seq}


class EntriesOnly:
    """The anchor: the change log's append as it was before the byte bound (a ring of
    ``capacity`` slots, nothing estimated)."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.seq = 0
        self._ring: list[Any] = []

    def append(self, event: Any) -> None:
        ring = self._ring
        if len(ring) < self.capacity:
            ring.append(event)
        else:
            ring[(event.seq - 1) % self.capacity] = event
        self.seq = event.seq


def append_cost(processes: int) -> dict[str, float]:
    """Microseconds per append of the exec scene's events: the anchor, the byte-bounded
    log with its bound far off and binding, and one event_bytes call."""
    from proctree_exporter.changelog import ChangeLog, event_bytes, pack

    h, log = scene("exec", processes, 10_000_000, None)
    events = log.since(0)[0]
    records = [pack(e, "host") for e in events]
    del h, log

    def best_of(fn: Any) -> float:
        best = float("inf")
        for _ in range(5):
            t0 = time.perf_counter()
            fn()
            best = min(best, (time.perf_counter() - t0) / len(events) * 1e6)
        return best

    def fill(make: Any) -> Any:
        def go() -> None:
            cl = make()
            for e in events:
                cl.append(e)
        return go

    def add(make: Any) -> Any:
        def go() -> None:
            cl = make()
            for r in records:
                cl.add(r)
        return go

    def estimate() -> None:
        for e in events:
            event_bytes(e)

    return {
        "anchor: entries only": best_of(fill(lambda: EntriesOnly(100_000))),
        "records (the core's add), bytes not reached": best_of(
            add(lambda: ChangeLog("host", 100_000, 1 << 40))),
        "records, binding (4 MiB)": best_of(add(lambda: ChangeLog("host", 100_000, 4 * MIB))),
        "RootEvents (append), bytes not reached": best_of(
            fill(lambda: ChangeLog("host", 100_000, 1 << 40))),
        "event_bytes alone": best_of(estimate),
    }


def child(args: argparse.Namespace) -> None:
    if args.child == "traced":
        doc: Any = traced(args.scene, args.processes)
    elif args.child == "full":
        doc = full_log(args.size, args.max_bytes, args.processes)
    else:
        doc = append_cost(args.processes)
    print(json.dumps(doc))


def run_child(*argv: str) -> Any:
    out = subprocess.run([sys.executable, __file__, *argv], check=True, capture_output=True,
                         text=True, cwd=REPO)
    return json.loads(out.stdout)


def sizes() -> dict[str, int]:
    from proctree_exporter.events import Ancestor, EventKind, RootEvent

    ev = RootEvent(EventKind.JOINED, "host", 123_456, 1.5, 4242, 987_654, "worker")
    return {
        "RootEvent (35 slots)": sys.getsizeof(ev),
        "int > 256": sys.getsizeof(123_456),
        "float": sys.getsizeof(1.5),
        "str, ASCII, n chars": sys.getsizeof(""),
        "str, non-ASCII (UCS-4), n chars": sys.getsizeof("\U0001f600") - 4,
        "Ancestor (5 slots)": sys.getsizeof(Ancestor(1, 1, "init", 0, False)),
        "tuple of k (k >= 1)": sys.getsizeof((1,)) - 8,
        "ring slot + size record": 8 + 4,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--processes", type=int, default=36_000,
                    help="processes per storm scene (36,000: 100,000+ events in the fork scene)")
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT)
    ap.add_argument("--child", choices=("traced", "full", "append"), help=argparse.SUPPRESS)
    ap.add_argument("--scene", choices=SCENES, help=argparse.SUPPRESS)
    ap.add_argument("--size", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--max-bytes", type=int, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        child(args)
        return

    from proctree_exporter.config import RootConfig

    n = args.processes
    doc: dict[str, Any] = {
        "benchmark": "changelog", "command": " ".join([sys.executable, *sys.argv]),
        "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "python": platform.python_version(), "processes": n,
        "default_change_log_size": RootConfig.model_fields["change_log_size"].default,
        "default_change_log_max_bytes": RootConfig.model_fields[
            "change_log_max_bytes"].default,
        "sizes": sizes(),
    }
    print(f"Python {doc['python']}; sizes of the pieces (sys.getsizeof, GC header included):")
    for k, v in doc["sizes"].items():
        print(f"  {k:34} {v:5} B" + (" + n" if k.startswith("str, ASCII") else "")
              + (" + 4n" if "UCS-4" in k else "") + (" + 8k" if k.startswith("tuple") else ""))

    doc["scenes"] = [run_child("--child", "traced", "--scene", s, "--processes",
                               str(n if s != "jobs" else n // 4)) for s in SCENES]
    print("\nBytes per event held (tracemalloc; the log alone, ring included) and the "
          "estimate (event_bytes):")
    print(f"  {'scene':8} {'events':>8} {'traced':>8} {'estimate':>9} {'est/traced':>10}  "
          f"100,000 events (traced)")
    for r in doc["scenes"]:
        print(f"  {r['scene']:8} {r['events']:8,} {r['traced_per_event']:8.0f} "
              f"{r['estimate_per_event']:9.0f} {r['estimate_over_traced']:10.3f}  "
              f"{r['traced_per_event'] * 1e5 / MIB:6.1f} MiB")
    print("\nPer kind (each kind's events alone, + 12 B of ring):")
    print(f"  {'scene':8} {'kind':11} {'events':>8} {'traced':>8} {'estimate':>9}")
    for r in doc["scenes"]:
        for k, v in r["per_kind"].items():
            print(f"  {r['scene']:8} {k:11} {v['events']:8,} {v['traced']:8.0f} "
                  f"{v['estimate']:9.0f}")

    runs = [(10, None), (100_000, None), (100_000, 16 * MIB), (100_000, 64 * MIB)]
    doc["full"] = []
    for size, max_bytes in runs:
        argv = ["--child", "full", "--size", str(size), "--processes", str(n)]
        if max_bytes is not None:
            argv += ["--max-bytes", str(max_bytes)]
        doc["full"].append(run_child(*argv))
    base = doc["full"][0]["rss"]
    print(f"\nFull log, fork storm of {n:,} processes ({doc['full'][0]['seq']:,} events; "
          "VmRSS minus the 10-event run's):")
    print(f"  {'change_log_size':>15} {'max_bytes':>10} {'held':>8} {'estimate':>9} "
          f"{'RSS':>9} {'RSS/event':>9}")
    for r in doc["full"][1:]:
        mb = "none" if r["max_bytes"] is None else f"{r['max_bytes'] / MIB:.0f} MiB"
        extra = r["rss"] - base
        r["rss_over_10"] = extra
        print(f"  {r['size']:15,} {mb:>10} {r['held']:8,} {r['estimate'] / MIB:5.1f} MiB "
              f"{extra / MIB:5.1f} MiB {extra / r['held']:7.0f} B")

    doc["append_us"] = run_child("--child", "append", "--processes", str(min(n, 25_000)))
    print("\nCost per append, exec scene's events (best of 5):")
    for k, v in doc["append_us"].items():
        print(f"  {k:44} {v:6.2f} us")

    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(doc, indent=1) + "\n")
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
