"""Render benchmark: CPU to build the per-root families of one /metrics scrape.

The families with a ``root`` label are most of a scrape's body at 100 roots
(``export.prometheus.KeptLines``: each root's lines kept until its record
changes). This times one scrape's worth of them, the root and the resource
families of N roots, of which C changed since the last scrape, and the body
those lines join into, in this process, as CPU time (no HTTP, no snapshot, no
other families: bench/scrape.py measures the whole scrape). As in the daemon,
the objects alive after warm-up are frozen out of the cyclic GC (gc.freeze).

Prints a table and writes ``bench/results/render.json``.

Usage::

    .venv/bin/python bench/render.py [--roots 100] [--changed 0,1,10,100]
"""

from __future__ import annotations

import argparse
import gc
import json
import statistics
import sys
import time
from pathlib import Path

from proctree_exporter.export.prometheus import (
    RESOURCE_ROOT_FAMILIES,
    ROOT_FAMILIES,
    KeptLines,
)
from proctree_exporter.resources import RootResources
from proctree_exporter.snapshot import RootSnapshot

REPO = Path(__file__).resolve().parent.parent
DEFAULT_OUT = REPO / "bench" / "results" / "render.json"
SCRAPES = 300
REPEATS = 5


def root(i: int, spawned: int) -> RootSnapshot:
    """A root like bench/scrape.py's: some members, classes, actions, inferred lineage."""
    return RootSnapshot(
        name=f"root-{i:03d}", select="comm", up=True, instances=1,
        start_time=1_800_000_000.0 + i, members=170 + i,
        classes={"healthy": 160 + i, "orphaned": 8, "zombie": 2},
        spawned_total=spawned, exited_total=spawned - 170, restarts_total=1,
        pid_reuse_total=0, actions={("term", "sent"): 2}, class_changes={"orphaned": 8},
        max_depth=4, truncated=False, tombstones=300, inferred={"snapshot": 150})


def resources(i: int, rss: int) -> RootResources:
    return RootResources(f"root-{i:03d}", (12_500_000 + i, 3_250_000, 4096, 1_048_576, 5000,
                                           120, 90_000, 3), rss, None, 40 + i, 200 + i, 170)


def measure(n_roots: int, changed: int) -> dict[str, float]:
    """CPU µs per scrape: KeptLines for both family sets, and the body joined."""
    roots = [root(i, 10_000) for i in range(n_roots)]
    res = [resources(i, 1 << 30) for i in range(n_roots)]
    kept_roots, kept_res = KeptLines(ROOT_FAMILIES), KeptLines(RESOURCE_ROOT_FAMILIES)
    step = [0]

    def scrape() -> int:
        step[0] += 1
        for k in range(changed):
            i = (step[0] * changed + k) % n_roots
            roots[i] = root(i, roots[i].spawned_total + 1)
            res[i] = resources(i, res[i].rss_bytes + 4096)
        fams = kept_roots(tuple(roots)) + kept_res(tuple(res))
        return len(b"".join([f.lines for f in fams]))

    for _ in range(50):
        body = scrape()
    gc.collect()
    gc.freeze()
    per: list[float] = []
    for _ in range(REPEATS):
        t0 = time.thread_time()
        for _ in range(SCRAPES):
            scrape()
        per.append((time.thread_time() - t0) / SCRAPES * 1e6)
    gc.unfreeze()
    return {"roots": n_roots, "changed": changed, "body_bytes": body,
            "us_per_scrape_min": min(per), "us_per_scrape_median": statistics.median(per)}


def main(argv: list[str] | None = None) -> int:
    """Measure each --changed count, print the table, write the JSON."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--roots", type=int, default=100)
    ap.add_argument("--changed", default="0,1,10,100",
                    help="comma-separated counts of roots changed between scrapes")
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = ap.parse_args(argv)
    counts = [int(c) for c in args.changed.split(",")]
    if args.roots < 1 or any(not 0 <= c <= args.roots for c in counts):
        ap.error("--changed counts must lie within 0..--roots")
    rows = [measure(args.roots, c) for c in counts]
    print(f"{'roots':>6} {'changed':>8} {'body bytes':>11} {'CPU us/scrape (min, median)':>28}")
    for r in rows:
        print(f"{r['roots']:>6} {r['changed']:>8} {r['body_bytes']:>11,} "
              f"{r['us_per_scrape_min']:>14.0f} {r['us_per_scrape_median']:>12.0f}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"benchmark": "render", "time": time.strftime(
        "%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "python": sys.version.split()[0],
        "rows": rows}, indent=2) + "\n")
    print(f"\nwrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
