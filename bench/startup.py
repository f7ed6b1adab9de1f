#!/usr/bin/env python3
"""Start-up: from exec to /-/ready, by host size.

    .venv/bin/python bench/startup.py [--sizes 1000,10000,30000] [--reps 3] [--roots 100]

The host is filled to each size with bench/scrape.py's sleeper groups (bench/sleepers.c,
compiled at run time; pid_max and friends raised for the run when 30,000 would not fit,
and restored). Then the daemon is started ``--reps`` times on the embedded defaults plus
``--roots`` roots of scrape.py's mix (comm roots on the groups, pid roots on leaders and
single sleepers, and ``host``), each time timed from its exec to the first 200 of
/-/ready (polled every 5 ms), and stopped (SIGTERM). Also reported: the collector's own
CPU for the /proc seed and the daemon's RSS once ready. The issue (17) asks for these
figures to be measured; it sets no target. Everything it starts is ended by pid.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))

import scrape  # its sleeper groups, limits and helpers
from harness import free_port

REPO = Path(__file__).resolve().parent.parent
EXE = REPO / ".venv" / "bin" / "proctree-exporter"


def one_start(cfg: Path, port: int, log: Path) -> dict[str, float]:
    """Start the daemon, time exec -> ready, read its RSS, stop it; the figures."""
    t0 = time.monotonic()
    with open(log, "ab") as out:
        p = subprocess.Popen([str(EXE), "--config", str(cfg), "--web.listen-address",
                              f"127.0.0.1:{port}"], stdout=out, stderr=subprocess.STDOUT,
                             start_new_session=True)
    try:
        while True:
            with contextlib.suppress(OSError):
                if scrape.http_get(port, "/-/ready", timeout=2)[0] == 200:
                    break
            if p.poll() is not None:
                raise RuntimeError(f"daemon exited: see {log}")
            if time.monotonic() - t0 > 300:
                raise TimeoutError("not ready in 300 s")
            time.sleep(0.005)
        ready = time.monotonic() - t0
        return {"ready_s": ready, "rss_mib": (scrape.rss_kib(p.pid) or 0) / 1024,
                "cpu_s": scrape.cpu_seconds(p.pid)}
    finally:
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
            try:
                p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", default="1000,10000,30000")
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--roots", type=int, default=100, choices=(10, 100))
    args = ap.parse_args()
    sizes = [int(x) for x in args.sizes.split(",")]
    notes: list[str] = []
    rows = []
    groups: list[scrape.Group] = []
    with tempfile.TemporaryDirectory(prefix="ptx-startup-") as tmp_s, \
            scrape.raised_limits(max(sizes) + 2000, notes):
        tmp = Path(tmp_s)
        binary, linkage = scrape.compile_sleepers(tmp)
        try:
            for size in sizes:
                scrape.end_groups(groups)
                groups.clear()
                started = scrape.start_groups(binary, size, groups)
                host = scrape.proc_count()
                cfg = tmp / f"config-{size}.yaml"
                cfg.write_text(yaml.safe_dump(
                    {"roots": scrape.root_configs(started, args.roots)}, sort_keys=False))
                runs = [one_start(cfg, free_port(), tmp / "daemon.log")
                        for _ in range(args.reps)]
                ready = [r["ready_s"] for r in runs]
                rows.append({"size": size, "host": host, "ready_s": ready,
                             "rss_mib": max(r["rss_mib"] for r in runs),
                             "cpu_s": statistics.median(r["cpu_s"] for r in runs)})
                print(f"startup: {size:,} done", file=sys.stderr, flush=True)
        finally:
            scrape.end_groups(groups)
    print(f"start-up, exec -> /-/ready; {os.cpu_count()} CPUs, {os.uname().release}, "
          f"sleepers {linkage}; {args.roots} roots; {args.reps} starts per size")
    for n in notes:
        print(f"  {n}")
    print(f"{'host procs':>10} {'in /proc':>9} {'ready median':>13} {'min':>7} {'max':>7} "
          f"{'daemon CPU':>11} {'RSS ready':>10}")
    for r in rows:
        rs = r["ready_s"]
        print(f"{r['size']:>10,} {r['host']:>9,} {statistics.median(rs):>12.2f}s "
              f"{min(rs):>6.2f}s {max(rs):>6.2f}s {r['cpu_s']:>10.2f}s "
              f"{r['rss_mib']:>8.1f} MiB")
    out = REPO / "bench" / "results" / "startup.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps({"rows": rows, "notes": notes}, indent=1))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
