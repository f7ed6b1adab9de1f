#!/usr/bin/env python3
"""Memory per tracked process: the tree, the roots, and the API's view of them.

    .venv/bin/python bench/memory.py [--sizes 5000,20000]

Each size runs in a fresh interpreter. The processes are the pretend host's of the
test suite (tests/fakehost.py plays the kernel: the same PidTree, Roots and Mirrors
code the daemon runs, fed the same events), so 2 x 20,000 of them cost no kernel
memory or pid space. Scene: N live processes under 100 shells (comm from a few
dozen names, an exe, a command line of ~40 characters, as a busy host has: the tree
does not read it, as in the daemon while no root selects or captures by it), and N
more that forked, exec'd, exited and were reaped: tombstones, kept (tree TTL and
capacity above 2N). Roots: ``host`` (PID 1, every process a member) and ``job``
(comm ``job``: one shell in ten and its subtree), about 1.1 root memberships per
live process (printed: ``members``).

Measured, after a full GC, as the difference from the empty host (the pretend
host's own process table dropped first: what is left is what the daemon holds,
the strings of comm, exe and command line included): Python's own
allocations (tracemalloc: exact, what the objects hold) and the process's VmRSS
(what the host pays, allocator slack included; it errs high: the freed blocks of the
pretend host's table stay in the allocator's arenas, about 250 bytes per tracked
process at N = 20,000, and later steps' objects fill some of them, which is why
"+roots rss" can grow less than "+roots py"); per tracked process (live or
tombstone) = difference / 2N. Three steps: the tree alone (no roots), with the
roots attached, and with the JSON API's mirrors of both roots (members' encoded
JSON is built on the first API read: a ``/api/v1/roots/host`` is done here).
Target (issue 17): <= 1 KiB per tracked process, measured.
"""

from __future__ import annotations

import argparse
import gc
import json
import subprocess
import sys
import tracemalloc
from collections import deque
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

COMMS = [f"worker{i}" for i in range(30)] + ["sh", "bash", "python3", "sleep", "nginx"]


def rss_kib() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def measure(n: int, traced: bool) -> dict[str, float]:
    """One size; ``traced``: Python's allocations by tracemalloc (whose own bookkeeping
    would swell VmRSS: the RSS figures come from a run without it)."""
    from tests.fakehost import Host

    from proctree_exporter.mirror import Mirrors
    from proctree_exporter.rootspec import RootSpec
    from proctree_exporter.web import _root_body

    if traced:
        tracemalloc.start()
    gc.collect()
    base = tracemalloc.get_traced_memory()[0] if traced else rss_kib() * 1024

    def step() -> int:
        gc.collect()
        now = tracemalloc.get_traced_memory()[0] if traced else rss_kib() * 1024
        return now - base

    # as the daemon runs these roots: neither selects nor captures by command line
    h = Host(max_nodes=2 * n + 1000, tombstone_ttl_s=1e9, read_cmdlines=False)
    h.tree.max_nodes = 2 * n + 1000
    # the pretend /proc logs every read for tests to look at (three per process: 190
    # bytes per tracked process, counted as the tree's until this was dropped): not here
    h.reader.reads = deque(maxlen=0)  # type: ignore[assignment]
    # one shell in ten is a job's (as said above: a "sh" match made every shell a job's)
    shells = [h.spawn(f"sh{s}", comm="job" if s % 10 == 0 else "sh",
                      exe="/usr/bin/job" if s % 10 == 0 else "/usr/bin/sh",
                      cmdline="job --run" if s % 10 == 0 else "sh -c serve")
              for s in range(100)]
    for i in range(n):
        comm = COMMS[i % len(COMMS)]
        h.spawn(f"p{i}", shells[i % 100], comm=comm, exe=f"/usr/bin/{comm}",
                cmdline=f"/usr/bin/{comm} --id {i} --config /etc/{comm}.conf")
        t = f"t{i}"
        h.spawn(t, shells[i % 100], comm=comm, exe=f"/usr/bin/{comm}",
                cmdline=f"/usr/bin/{comm} --once {i}")
        h.exit(t)
        if i % 1000 == 999:
            h.tick(0.05)
    h.tick(0.1, rounds=3)
    tracked = h.tree.live_count + h.tree.tombstone_count
    # the pretend host's own process table is not the daemon's: gone before measuring
    # (the strings its processes share with the tree's nodes stay, as /proc reads would)
    h.procs.clear()
    h.names.clear()
    h.idents.clear()
    del shells
    tree = step()

    h.roots.add(RootSpec(name="host", select="pid", match="1", max_members=10 * n,
                         max_tombstones=0))
    h.roots.add(RootSpec(name="job", select="comm", match="job", max_members=10 * n,
                         max_tombstones=0))
    h.tick(0.1)
    roots = step()
    members = sum(len(r.members) for r in h.roots.roots.values())

    mirrors = Mirrors(h.roots)
    body = mirrors.get("host").read(lambda m: _root_body(m, {}))
    mirrors.get("job")
    api = step()
    return {"n": n, "tracked": tracked, "members": members, "tree": tree, "roots": roots,
            "api": api, "body_bytes": len(body)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", default="5000,20000")
    ap.add_argument("--one", type=int, help=argparse.SUPPRESS)  # a child run
    ap.add_argument("--traced", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.one:
        print(json.dumps(measure(args.one, args.traced)))
        return 0
    rows = []
    for n in (int(x) for x in args.sizes.split(",")):
        got = {}
        for traced in (True, False):
            out = subprocess.run([sys.executable, __file__, "--one", str(n),
                                  *(["--traced"] if traced else [])], check=True,
                                 capture_output=True, text=True, timeout=600)
            got[traced] = json.loads(out.stdout)
        r = got[False]
        rows.append({"n": n, "tracked": r["tracked"], "members": r["members"],
                     **{f"{k}_py": got[True][k] for k in ("tree", "roots", "api")},
                     **{f"{k}_rss": r[k] for k in ("tree", "roots", "api")}})
    print(f"memory per tracked process; Python {sys.version.split()[0]}; "
          "bytes per process (live or tombstone), tracemalloc / VmRSS")
    print(f"{'N live':>8} {'tracked':>8} {'members':>8} {'tree py':>8} {'tree rss':>9} "
          f"{'+roots py':>10} "
          f"{'+roots rss':>11} {'+api py':>8} {'+api rss':>9}  target 1024")
    for r in rows:
        t = r["tracked"]
        print(f"{r['n']:>8,} {t:>8,} {r['members']:>8,} {r['tree_py'] / t:>8.0f} "
              f"{r['tree_rss'] / t:>9.0f} "
              f"{r['roots_py'] / t:>10.0f} {r['roots_rss'] / t:>11.0f} "
              f"{r['api_py'] / t:>8.0f} {r['api_rss'] / t:>9.0f}  "
              f"{'PASS' if r['roots_rss'] / t <= 1024 else 'MISS'}")
    print("members: live root memberships (host's and job's). "
          "tree: the PidTree alone; +roots: with host (every process) and job attached; "
          "+api: with the JSON API's mirrors and a /api/v1/roots/host body built. "
          "PASS/MISS: +roots rss (what the daemon holds per process without API readers).")
    return 0


if __name__ == "__main__":
    sys.exit(main())
