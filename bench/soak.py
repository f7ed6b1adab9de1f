"""Soak benchmark: a million short-lived processes; memory, tombstones and per-root counters.

Starts the exporter as a subprocess with a small tree (``tree.max_nodes:
20000``, ``tree.tombstone_ttl_seconds: 30``) and two roots: ``host`` (PID 1,
as in the shipped config) and ``soak``, a ``select: comm`` root on the load
generator (``bench/loadgen.c`` compiled under a name unique to this run, so
its comm matches nothing else on the host). Then ``loadgen fork-exit`` with
2 workers runs in batches until ``--processes`` (default 1,000,000) children
have been created, or ``--max-seconds`` (default 900) have passed. The first
batch lasts 10 s; each next one is sized from the rate so far (at most 120 s).

Measured:

- the daemon's VmRSS every 2 s (the curve is printed every 10 s): it must
  level off once the tree is full, whatever the number of processes;
- ``proctree_tree_tombstones`` and ``proctree_tree_nodes`` against
  ``proctree_tree_capacity`` at every scrape (every 2 s, every 1 s after the
  storm): nodes stay within the capacity;
- the TTL: after the last batch, how long until no tombstone of the soak is
  left, i.e. the tree holds no more tombstones than the host's exits since
  (other work on the host keeps making some), and the ``soak`` root's own
  tombstones (``tombstone_ttl_seconds: 30``) are 0;
- per-root counters: ``proctree_root_spawned_total{root="soak"}`` and
  ``_exited_total`` must equal what loadgen created, plus, per batch, its
  main process and its workers (members of the root too). loadgen reports
  its count; its pid files (one int32 per child) are checked against it.

Prints a table and writes ``bench/results/soak.json``. A missed target is
printed as MISS, never turned into a failing exit status. Every process it
starts is ended by pid in a ``finally`` block.

Usage (root, initial namespaces)::

    .venv/bin/python bench/soak.py [--processes 1000000] [--max-seconds 900]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import signal
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from harness import on_sigterm
from storm import (
    NODE_SLACK,
    DaemonProcess,
    Sampler,
    build_loadgen,
    fmt,
    loadavg,
    loadgen_report,
    loadgens,
    metric,
    metric_by,
    running_daemon,
)

REPO = Path(__file__).resolve().parent.parent
DEFAULT_OUT = REPO / "bench" / "results" / "soak.json"

TREE_MAX_NODES = 20_000
TOMBSTONE_TTL_S = 30.0
WORKERS = 2
FIRST_BATCH_S = 10.0
MAX_BATCH_S = 120.0
LOADGEN_GRACE_S = 30.0
SAMPLE_EVERY_S = 2.0
SETTLE_BOUND_S = 30.0  # for the root's counters to take in the last batch
TTL_MARGIN_S = 15.0  # watched past the TTL (housekeeping, other work on the host)
TTL_SLACK_S = 5.0  # the soak's tombstones must be gone this long after the TTL
RSS_PLATEAU_SLACK = 1.10
RSS_PLATEAU_SLACK_MIB = 8.0


def soak_config(comm: str) -> str:
    """The soak's config: a small tree with a short TTL, the host root and the soak root."""
    return f"""\
tree:
  max_nodes: {TREE_MAX_NODES}
  tombstone_ttl_seconds: {TOMBSTONE_TTL_S:g}
roots:
  - name: host
    select: pid
    match: 1
    max_members: 1000
  - name: soak
    select: comm
    match: {comm}
    tombstone_ttl_seconds: {TOMBSTONE_TTL_S:g}
"""


@dataclass
class SoakResult:
    """Everything measured (serialised as-is into the JSON)."""

    processes_target: int
    max_seconds: float
    loadavg_before: str = ""
    loadavg_after: str = ""
    batches: list[dict[str, Any]] = field(default_factory=list)  # per batch: s, created
    created: int = 0
    pid_file_entries: int = 0
    loadgen_failed: int = 0
    storm_s: float = 0.0
    rate_per_s: float = 0.0
    capped: bool = False  # stopped by --max-seconds before reaching the count
    events: dict[str, int] = field(default_factory=dict)
    events_total: int = 0
    events_lost: int = 0
    overruns: int = 0
    resyncs: dict[str, int] = field(default_factory=dict)
    kernel_drops_observed: int | None = None
    # the soak root's counters and what they must be
    root_spawned: int = 0
    root_exited: int = 0
    root_expected: int = 0
    root_restarts: int = 0
    root_tombstones_end: int | None = None
    root_tombstones_after_ttl: int | None = None
    # the tree
    capacity: int = TREE_MAX_NODES
    ttl_s: float = TOMBSTONE_TTL_S
    nodes_max: int = 0
    tombstones_max: int = 0
    over_capacity_rounds: int = 0
    tombstones_at_end: int = 0
    tombstones_after_ttl: int = 0
    tombstones_drained_after_s: float | None = None  # from the last batch's end
    # RSS (MiB)
    rss_start_mib: float = 0.0
    rss_at_fill_mib: float | None = None  # when the tree first reached 95% of capacity
    rss_max_mib: float = 0.0
    rss_first_half_max_mib: float = 0.0
    rss_second_half_max_mib: float = 0.0
    rss_end_mib: float = 0.0  # at the last batch's end
    rss_after_ttl_mib: float = 0.0
    rss_hwm_mib: float | None = None
    rss_curve: list[tuple[float, float]] = field(default_factory=list)  # (t s, MiB)
    tree_curve: list[tuple[float, int, int]] = field(default_factory=list)  # (t, nodes, tombs)
    scrapes: int = 0
    scrapes_ok: int = 0
    daemon_exit: int | None = None
    log_loss_lines: list[str] = field(default_factory=list)  # the daemon's last overrun/resync
    targets: dict[str, bool] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)


def pid_file_entries(outdir: Path) -> int:
    """int32 entries in loadgen's pid files: one per child it created."""
    return sum(p.stat().st_size // 4 for p in outdir.glob("worker-*.pids"))


def drained_after(tree: list[tuple[float, ...]], t_end: float,
                  t_settled: float) -> float | None:
    """Seconds from ``t_end`` until every tombstone left is a process that exited after it.

    A tombstone lives at most the TTL after its exit (the kernel's timestamp),
    so at time t the tree only holds processes that exited in (t - TTL, t].
    Once the daemon has applied the soak's last exit (``t_settled``), every
    exit it applies is someone else's: when the tombstones are no more than
    the host's exits applied since max(t_settled, t - TTL), none of the
    soak's own processes is left.
    """
    rows = [(t, tombs, exits) for t, _, tombs, _, _, exits in tree]
    for t, tombs, exits in rows:
        if t <= t_settled:
            continue
        since = max(t_settled, t - TOMBSTONE_TTL_S - 1.0)
        base = next((e for tt, _, e in reversed(rows) if tt <= since), rows[0][2])
        if tombs <= exits - base:
            return round(t - t_end, 1)
    return None


def wait_root_settled(d: DaemonProcess, expected: int) -> dict[str, Any]:
    """The soak root's document once it has taken in every batch (or after the bound)."""
    deadline = time.monotonic() + SETTLE_BOUND_S
    while True:
        doc = next(r for r in d.json("/api/v1/roots")["roots"] if r["name"] == "soak")
        done = not doc["up"] and doc["exited_total"] in (doc["spawned_total"], expected)
        if done or time.monotonic() > deadline:
            return doc
        time.sleep(0.5)


def run_soak(processes: int, max_seconds: float) -> SoakResult:
    """The whole soak against a fresh daemon."""
    res = SoakResult(processes_target=processes, max_seconds=max_seconds)
    comm = f"soakgen-{os.getpid()}"[:15]
    with tempfile.TemporaryDirectory(prefix="soak-") as tmp_s:
        tmp = Path(tmp_s)
        binary = build_loadgen(tmp, comm)
        with running_daemon(tmp, soak_config(comm)) as d:
            time.sleep(1.0)
            m0 = d.metrics()
            drops0 = d.connector_drops()
            res.loadavg_before = loadavg()
            with Sampler(d, rss_every=SAMPLE_EVERY_S, scrape_every=SAMPLE_EVERY_S) as sampler:
                t_start = sampler.now()
                started = time.monotonic()
                while res.created < processes:
                    left = max_seconds - (time.monotonic() - started)
                    if left < 1.0:
                        res.capped = True
                        break
                    if res.storm_s:
                        want = (processes - res.created) / res.rate_per_s * 1.01 + 0.5
                    else:
                        want = FIRST_BATCH_S
                    secs = round(min(max(want, 1.0), MAX_BATCH_S, left), 1)
                    with loadgens(binary, [("fork-exit", WORKERS)], secs, tmp) as procs:
                        report = loadgen_report(procs[0], secs + LOADGEN_GRACE_S)
                    outdir = tmp / "pids-0-fork-exit"
                    entries = pid_file_entries(outdir)
                    res.batches.append({"seconds": report["elapsed_s"],
                                        "created": report["created"],
                                        "pid_file_entries": entries,
                                        "main_pid": report["main_pid"],
                                        "worker_pids": report["worker_pids"]})
                    res.created += report["created"]
                    res.pid_file_entries += entries
                    res.loadgen_failed += report["failed"]
                    res.storm_s += report["elapsed_s"]
                    res.rate_per_s = res.created / res.storm_s
                    # loadgen's main process and its workers are members of the root too
                    res.root_expected += report["created"] + 1 + len(report["worker_pids"])
                    print(f"soak: {res.created:,} processes in {res.storm_s:.0f}s "
                          f"({res.rate_per_s:,.0f}/s), daemon RSS "
                          f"{(d.status_kib('VmRSS') or 0) / 1024:.0f} MiB",
                          file=sys.stderr, flush=True)
                t_end = sampler.now()
                res.rss_end_mib = (d.status_kib("VmRSS") or 0) / 1024
                root = wait_root_settled(d, res.root_expected)
                t_settled = sampler.now()
                res.root_spawned = root["spawned_total"]
                res.root_exited = root["exited_total"]
                res.root_restarts = root["restarts_total"]
                m_end = sampler.samples.last or d.metrics()
                res.tombstones_at_end = int(metric(m_end, "proctree_tree_tombstones"))
                res.root_tombstones_end = int(metric(m_end, "proctree_root_tombstones",
                                                     root="soak"))
                # the TTL at work: sample every second until it has surely passed
                sampler.scrape_every = 1.0
                while sampler.now() < t_end + TOMBSTONE_TTL_S + TTL_MARGIN_S:
                    time.sleep(1.0)
                res.tombstones_drained_after_s = drained_after(sampler.samples.tree, t_end,
                                                             t_settled)
            m1 = d.metrics()
            drops1 = d.connector_drops()
            res.loadavg_after = loadavg()
            res.tombstones_after_ttl = int(metric(m1, "proctree_tree_tombstones"))
            res.root_tombstones_after_ttl = int(metric(m1, "proctree_root_tombstones",
                                                       root="soak"))
            res.rss_after_ttl_mib = (d.status_kib("VmRSS") or 0) / 1024
            res.rss_hwm_mib = (d.status_kib("VmHWM") or 0) / 1024
            # the root's counters as /metrics shows them (the same numbers as the API)
            metric_spawned = int(metric(m1, "proctree_root_spawned_total", root="soak"))
            metric_exited = int(metric(m1, "proctree_root_exited_total", root="soak"))
        res.daemon_exit = d.proc.returncode
        res.log_loss_lines = [line for line in d.log_lines("", 10_000)
                              if "overrun" in line or "resync" in line][-10:]
        if res.daemon_exit != 0:
            res.notes.append(f"daemon exited {res.daemon_exit}: {d.log_tail(5)}")

    if (metric_spawned, metric_exited) != (res.root_spawned, res.root_exited):
        res.notes.append(f"/metrics says spawned {metric_spawned}, exited {metric_exited}; "
                         f"the API said {res.root_spawned}, {res.root_exited}")
    ev0 = metric_by(m0, "proctree_events_total", "type")
    ev1 = metric_by(m1, "proctree_events_total", "type")
    res.events = {k: int(v - ev0.get(k, 0)) for k, v in sorted(ev1.items())
                  if v - ev0.get(k, 0)}
    res.events_total = sum(res.events.values())
    res.events_lost = int(metric(m1, "proctree_events_lost_total")
                          - metric(m0, "proctree_events_lost_total"))
    res.overruns = int(metric(m1, "proctree_overruns_total")
                       - metric(m0, "proctree_overruns_total"))
    r0 = metric_by(m0, "proctree_resyncs_total", "reason")
    r1 = metric_by(m1, "proctree_resyncs_total", "reason")
    res.resyncs = {k: int(v - r0.get(k, 0)) for k, v in r1.items() if v - r0.get(k, 0)}
    if drops0 is not None and drops1 is not None:
        res.kernel_drops_observed = drops1 - drops0

    s = sampler.samples
    res.scrapes = len(s.scrapes)
    res.scrapes_ok = sum(1 for _, status, _ in s.scrapes if status == 200)
    res.tree_curve = [(t, int(n), int(tomb)) for t, n, tomb, *_ in s.tree]
    if s.tree:
        res.nodes_max = max(n for _, n, _ in res.tree_curve)
        res.tombstones_max = max(tomb for _, _, tomb in res.tree_curve)
        res.capacity = int(s.tree[-1][3])
        res.over_capacity_rounds = int(s.tree[-1][4])
    rss = [(t, kib / 1024) for t, kib in s.rss]
    res.rss_curve = [(round(t, 1), round(mib, 1)) for t, mib in rss]
    if rss:
        res.rss_start_mib = rss[0][1]
        res.rss_max_mib = max(mib for _, mib in rss)
        mid = (t_start + t_end) / 2
        res.rss_first_half_max_mib = max((mib for t, mib in rss if t < mid), default=0.0)
        res.rss_second_half_max_mib = max((mib for t, mib in rss if mid <= t <= t_end),
                                          default=0.0)
        fill = next((t for t, n, _ in res.tree_curve if n >= 0.95 * res.capacity), None)
        if fill is not None:
            res.rss_at_fill_mib = next((mib for t, mib in rss if t >= fill), rss[-1][1])
    judge(res)
    return res


def judge(res: SoakResult) -> None:
    """Fill in the PASS/MISS targets."""
    res.targets["processes_reached"] = res.created >= res.processes_target and not res.capped
    res.targets["counters_exact"] = (res.root_spawned == res.root_expected
                                     and res.root_exited == res.root_expected
                                     and res.pid_file_entries == res.created)
    res.targets["nodes_within_capacity"] = res.nodes_max <= res.capacity + NODE_SLACK
    res.targets["rss_levels_off"] = (
        res.rss_second_half_max_mib
        <= res.rss_first_half_max_mib * RSS_PLATEAU_SLACK + RSS_PLATEAU_SLACK_MIB)
    res.targets["ttl_drains_tombstones"] = (
        res.tombstones_drained_after_s is not None
        and res.tombstones_drained_after_s <= res.ttl_s + TTL_SLACK_S
        and res.root_tombstones_after_ttl == 0)
    if res.events_lost or res.overruns:
        res.notes.append(f"the daemon lost {res.events_lost:,} events ({res.overruns} "
                         f"overruns, resyncs {res.resyncs}): processes born and gone inside "
                         f"a loss are not counted, so exact counters cannot be expected")
    if res.pid_file_entries != res.created:
        res.notes.append(f"pid files hold {res.pid_file_entries:,} entries, loadgen reported "
                         f"{res.created:,}")
    if res.nodes_max > res.capacity:
        res.notes.append(f"tree nodes reached {res.nodes_max:,}, capacity {res.capacity:,} "
                         f"(overshoot allowed within one drain round: {NODE_SLACK:,}; "
                         f"live-over-capacity rounds {res.over_capacity_rounds})")
    if res.scrapes_ok != res.scrapes:
        res.notes.append(f"{res.scrapes - res.scrapes_ok} of {res.scrapes} scrapes failed")


def print_table(r: SoakResult) -> None:
    """The summary table, the curves, targets and notes."""
    rows = [
        ("processes created", f"{r.created:,} of {r.processes_target:,} in {r.storm_s:.0f} s "
                              f"({r.rate_per_s:,.0f}/s, {len(r.batches)} batches)"
                              + (" [time cap]" if r.capped else "")),
        ("load average", f"{r.loadavg_before} -> {r.loadavg_after}"),
        ("events", f"{r.events_total:,} ("
                   + ", ".join(f"{k} {v:,}" for k, v in r.events.items()) + ")"),
        ("lost / kernel drops", f"{r.events_lost:,} / {fmt(r.kernel_drops_observed)}; "
                                f"overruns {r.overruns}; resyncs {r.resyncs or 0}"),
        ("root spawned_total", f"{r.root_spawned:,} (expected {r.root_expected:,}: created "
                               f"+ main + {WORKERS} workers per batch)"),
        ("root exited_total", f"{r.root_exited:,} (expected {r.root_expected:,}); "
                              f"restarts {r.root_restarts}"),
        ("tree capacity", f"{r.capacity:,} nodes (tree.max_nodes), tombstone TTL {r.ttl_s:g} s"),
        ("tree nodes max", f"{r.nodes_max:,}; tombstones max {r.tombstones_max:,}"),
        ("tombstones", f"{r.tombstones_at_end:,} at the end -> {r.tombstones_after_ttl:,} "
                       f"after TTL+{TTL_MARGIN_S:g}s (the rest: exits since, host-wide); "
                       f"the soak's own gone after {fmt(r.tombstones_drained_after_s, '.1f')} s"),
        ("root tombstones", f"{fmt(r.root_tombstones_end)} at the end -> "
                            f"{fmt(r.root_tombstones_after_ttl)} after TTL"),
        ("RSS MiB", f"start {r.rss_start_mib:.1f}, tree full {fmt(r.rss_at_fill_mib, '.1f')}, "
                    f"max {r.rss_max_mib:.1f} (HWM {fmt(r.rss_hwm_mib, '.1f')}), "
                    f"end {r.rss_end_mib:.1f}, after TTL {r.rss_after_ttl_mib:.1f}"),
        ("RSS halves", f"first half max {r.rss_first_half_max_mib:.1f}, "
                       f"second half max {r.rss_second_half_max_mib:.1f}"),
        ("scrapes", f"{r.scrapes_ok}/{r.scrapes} answered 200"),
    ]
    width = max(len(k) for k, _ in rows)
    for k, v in rows:
        print(f"{k:<{width}}  {v}")
    print()
    step = max(1, round(10 / SAMPLE_EVERY_S))
    print("RSS MiB every 10 s: " + ", ".join(f"{t:.0f}s {mib:.0f}"
                                             for t, mib in r.rss_curve[::step]))
    print("tree nodes/tombstones every 10 s: " + ", ".join(
        f"{t:.0f}s {n:,}/{tomb:,}" for t, n, tomb in r.tree_curve[::step]))
    print()
    labels = {
        "processes_reached": "process count reached in time",
        "counters_exact": "root spawned/exited == created",
        "nodes_within_capacity": "tree nodes <= capacity (+1 drain round)",
        "rss_levels_off": "RSS levels off",
        "ttl_drains_tombstones": f"soak's tombstones gone by TTL+{TTL_SLACK_S:g}s",
    }
    for k, ok in r.targets.items():
        print(f"{labels[k]}: {'PASS' if ok else 'MISS'}")
    for note in r.notes:
        print(f"   note: {note}")


def main(argv: list[str] | None = None) -> int:
    """Run the soak, print the table, write the JSON. Exit 0 unless the bench itself broke."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--processes", type=int, default=1_000_000,
                    help="short-lived processes to create")
    ap.add_argument("--max-seconds", type=float, default=900.0,
                    help="stop creating after this long even if the count is not reached")
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT, help="JSON results path")
    args = ap.parse_args(argv)
    if os.geteuid() != 0:
        print("soak: needs root (the proc connector)", file=sys.stderr)
        return 2
    if args.processes < 1 or not 0 < args.max_seconds <= 3600:
        ap.error("--processes must be >= 1 and --max-seconds in (0, 3600]")
    signal.signal(signal.SIGTERM, on_sigterm)
    res = run_soak(args.processes, args.max_seconds)
    print()
    print(f"kernel {os.uname().release}, {os.cpu_count()} CPUs, fork-exit x{WORKERS}, "
          f"load now {loadavg()}")
    print_table(res)
    doc = {
        "benchmark": "soak",
        "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "kernel": os.uname().release,
        "cpu_count": os.cpu_count(),
        "python": platform.python_version(),
        "tree_max_nodes": TREE_MAX_NODES,
        "tombstone_ttl_s": TOMBSTONE_TTL_S,
        "result": asdict(res),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(doc, indent=2) + "\n")
    print(f"\nwrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
