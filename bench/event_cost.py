#!/usr/bin/env python3
"""Where the collector's time per event goes: record a storm's datagrams, replay them.

    .venv/bin/python bench/event_cost.py [--seconds 1.5] [--rounds 5]

bench/event_capture.py measures the whole collector thread during a live storm
(recv, parse, apply, exit checks and wake-ups together). This bench splits that
cost into stages, so a change to one of them can be measured on its own:

1. Record: a proc connector socket (64 MiB buffer) receives every datagram of a
   ``bench/loadgen.c`` storm (fork+exit, fork+exec, threads), copied out as bytes.
   The recording loop's CPU per datagram is the ``recv`` figure
   (``ConnectorSocket.recv_batch``, the collector's receive: up to 64 datagrams
   per recvmmsg call, plus the copy).
2. Replay, each stage ``--rounds`` times on a fresh tree seeded from /proc
   (the best round counts; the garbage collector is off while timing, as it
   barely runs in the daemon's event path, which allocates few containers):

   - ``parse``: :func:`netlink.parse_records` alone (what the collector parses with);
   - ``ingest``: :meth:`Collector.ingest`, parse + bookkeeping + ``PidTree.apply``
     (the recorded processes are gone by now, so an EXEC's /proc reads fail fast:
     their real cost is the ``exec reads`` row);
   - ``exit checks``: ``PidTree.housekeeping`` after every 100 events (about every
     10 ms at the storm's rate), which tells reaped from zombie for each exited
     process.

3. ``exec reads``: what an EXEC reads from /proc for a known process (comm and
   exe; cmdline and cgroup only when a root needs them), timed on a live process.

The collector's CPU per event in a live storm is about recv + ingest + exit
checks + its share of wake-ups (bench/event_capture.py). Writes
``bench/results/event_cost.json``.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "bench"))

from event_capture import Storm, build_loadgen, running_loadgen  # noqa: E402
from proctree_exporter import netlink as nl  # noqa: E402
from proctree_exporter.collector import Collector  # noqa: E402
from proctree_exporter.procfs import ProcFS  # noqa: E402
from proctree_exporter.tree import LINEAGE_SNAPSHOT, PidTree  # noqa: E402

DEFAULT_OUT = REPO / "bench" / "results" / "event_cost.json"
HOUSEKEEPING_EVERY = 100
RECORD_RCVBUF = 64 << 20
# the recorder stops this long after loadgen has ended and the socket is quiet
QUIET_S = 0.3


def record(binary: Path, storm, seconds: float, tmp: Path) -> tuple[list[bytes], float]:
    """Every datagram of one storm, and the recorder's CPU per datagram (us)."""
    sock = nl.ConnectorSocket(rcvbuf_bytes=RECORD_RCVBUF)
    grams: list[bytes] = []
    cpu_ns = 0
    try:
        outdir = tmp / storm.name
        outdir.mkdir()
        done = threading.Event()

        def run() -> None:
            with running_loadgen(binary, storm, seconds, outdir) as proc:
                proc.communicate(timeout=seconds + 30)
            done.set()

        gen = threading.Thread(target=run, daemon=True)
        gen.start()
        recv = sock.recv_batch
        deadline = time.monotonic() + seconds + 60
        quiet_since = None
        # drain without blocking every millisecond, timing only the receives that
        # return a datagram: a blocking receive would add its wake-ups to the figure
        while time.monotonic() < deadline:
            time.sleep(0.001)
            got = 0
            while True:
                t0 = time.thread_time_ns()
                batch = recv()
                if not batch:
                    break
                grams.extend([bytes(buf[:n]) for buf, n, _sender in batch])
                cpu_ns += time.thread_time_ns() - t0
                got += len(batch)
            if got or not done.is_set():
                quiet_since = None
            elif quiet_since is None:
                quiet_since = time.monotonic()
            elif time.monotonic() - quiet_since > QUIET_S:
                break
        gen.join(5)
    finally:
        sock.close()
    return grams, cpu_ns / max(len(grams), 1) / 1000


def seeded_tree() -> PidTree:
    tree = PidTree(max_nodes=2_000_000, tombstone_ttl_s=3600.0, reader=ProcFS())
    with tree.lock:
        tree.reconcile(ProcFS().snapshot(), source=LINEAGE_SNAPSHOT)
    return tree


def best_of(rounds: int, fn) -> float:
    """The smallest CPU time (ns) of ``rounds`` calls of ``fn`` (fresh state each)."""
    best = None
    for _ in range(rounds):
        setup = fn()
        gc.collect()
        gc.disable()
        try:
            t0 = time.thread_time_ns()
            setup()
            took = time.thread_time_ns() - t0
        finally:
            gc.enable()
        best = took if best is None else min(best, took)
    return float(best or 0)


def replay(grams: list[bytes], rounds: int) -> dict[str, float]:
    n_events = sum(len(nl.parse_records(g)) for g in grams)

    def parse():
        parse_records = nl.parse_records

        def go():
            for g in grams:
                parse_records(g, len(g), 0)
        return go

    def ingest(housekeeping: bool):
        def setup():
            tree = seeded_tree()
            col = Collector(tree)
            ing = col.ingest

            def go():
                with tree.lock:
                    for i, g in enumerate(grams):
                        ing(g, len(g), 0)
                        if housekeeping and i % HOUSEKEEPING_EVERY == 0:
                            tree.housekeeping(settle=True)
                    if housekeeping:
                        tree.housekeeping(settle=True)
            return go
        return setup

    parse_ns = best_of(rounds, parse)
    ingest_ns = best_of(rounds, ingest(False))
    with_hk_ns = best_of(rounds, ingest(True))
    per = max(n_events, 1) * 1000
    return {"events": n_events, "parse_us": parse_ns / per, "ingest_us": ingest_ns / per,
            "exit_checks_us": max(with_hk_ns - ingest_ns, 0) / per}


def exec_reads(rounds: int, n: int = 2000) -> dict[str, float]:
    """/proc reads of one EXEC of a known process, on a live process (this one)."""
    reader = ProcFS()
    pid = os.getpid()
    out = {}
    for name, fn in (("comm", lambda: reader.comm(pid)), ("exe", lambda: reader.exe(pid)),
                     ("cmdline", lambda: reader.cmdline(pid, 4096)),
                     ("cgroup", lambda: reader.cgroup(pid))):
        best = None
        for _ in range(rounds):
            t0 = time.thread_time_ns()
            for _ in range(n):
                fn()
            took = (time.thread_time_ns() - t0) / n / 1000
            best = took if best is None else min(best, took)
        out[name] = best
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seconds", type=float, default=1.5)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = ap.parse_args()
    rows = []
    with tempfile.TemporaryDirectory(prefix="event-cost-") as tmpname:
        tmp = Path(tmpname)
        binary = build_loadgen(tmp)
        ncpu = os.cpu_count() or 1
        for storm in (Storm("fork-exit", "fork-exit", 1), Storm("fork-exec", "fork-exec", ncpu),
                      Storm("threads", "threads", ncpu)):
            print(f"storm {storm.name}: recording {args.seconds:g}s ...", flush=True)
            grams, recv_us = record(binary, storm, args.seconds, tmp)
            r = replay(grams, args.rounds)
            r.update(storm=storm.name, datagrams=len(grams), recv_us=recv_us)
            rows.append(r)
    reads = exec_reads(args.rounds)
    print(f"\nkernel {platform.release()}, Python {platform.python_version()}, best of "
          f"{args.rounds} replays, CPU us per event")
    print(f"{'storm':<14}{'events':>10}{'recv':>8}{'parse':>8}{'ingest':>8}"
          f"{'exit chk':>10}{'sum':>8}")
    for r in rows:
        total = r["recv_us"] + r["ingest_us"] + r["exit_checks_us"]
        r["sum_us"] = total
        print(f"{r['storm']:<14}{r['events']:>10,}{r['recv_us']:>8.2f}{r['parse_us']:>8.2f}"
              f"{r['ingest_us']:>8.2f}{r['exit_checks_us']:>10.2f}{total:>8.2f}")
    print("\nparse is part of ingest; sum = recv + ingest + exit checks (wake-ups not included)")
    print("exec reads (us, live process): " + ", ".join(f"{k} {v:.2f}" for k, v in reads.items()))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"kernel": platform.release(), "rounds": args.rounds,
                                    "seconds": args.seconds, "storms": rows,
                                    "exec_reads_us": reads}, indent=2) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
