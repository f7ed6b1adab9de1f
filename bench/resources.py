#!/usr/bin/env python3
"""What a tree costs, as each exporter reports it, against the kernel's ground truth.

    .venv/bin/python bench/resources.py [--scrape-interval 15]

Three workloads, each run under a child subreaper (PR_SET_CHILD_SUBREAPER) that reaps the
whole tree, so that its getrusage(RUSAGE_CHILDREN) afterwards is exactly the CPU the
tree used (every process, however short, orphans included):

  (a) one long-lived process burning 5 s;
  (b) 1,000 short-lived children burning 3 ms each;
  (c) a wrapper that exits at once, leaving 3 orphans that burn 1.5 s each.

The same processes are grouped by both exporters: proctree-exporter with a `select:
cmdline` root, Debian's prometheus-process-exporter with a `cmdline` group on the same
pattern. Both are scraped every --scrape-interval seconds (process-exporter reads /proc
only when scraped), and each reports the growth of its CPU counter over the workload.

The cost: the daemon's CPU per short-lived process with resource accounting on, less a
second daemon's with it off, in the same run (exit records, matching, samples). The
sampler's cost per process is bench/sampler.py's.

Every process started here is ended by pid; each workload stops by itself.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
PROCTREE = REPO / ".venv" / "bin" / "proctree-exporter"
PROCESS_EXPORTER = "/usr/bin/prometheus-process-exporter"
TOKEN = "ptx-bench-resources"
TICKS = os.sysconf("SC_CLK_TCK")

HARNESS = r"""
import ctypes, json, os, resource, subprocess, sys
assert ctypes.CDLL(None).prctl(36, 1, 0, 0, 0) == 0  # PR_SET_CHILD_SUBREAPER
subprocess.Popen([sys.executable, "-c", sys.argv[1], os.environ["PTX_TOKEN"]])
while True:
    try:
        os.wait()
    except ChildProcessError:
        break
ru = resource.getrusage(resource.RUSAGE_CHILDREN)
print(json.dumps(ru.ru_utime + ru.ru_stime), flush=True)
"""

BURN = r"""
import os, sys, time
def burn(s):
    end = time.thread_time() + s
    while time.thread_time() < end:
        pass
"""
WORKLOADS = {
    "(a) one long-lived burner, 5 s": BURN + "burn(5.0)\n",
    "(b) 1,000 short-lived burners, 3 ms each": BURN + """
for _ in range(1000):
    pid = os.fork()
    if pid == 0:
        burn(0.003)
        os._exit(0)
    os.waitpid(pid, 0)
""",
    "(c) 3 orphans burning 1.5 s after their wrapper exits": BURN + """
if os.fork() == 0:
    for _ in range(3):
        if os.fork() == 0:
            time.sleep(0.2)
            burn(1.5)
            os._exit(0)
    os._exit(0)
os.wait()
""",
}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def scrape(port: int) -> dict[str, float]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=30) as r:
        text = r.read().decode()
    out: dict[str, float] = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, _, v = line.rpartition(" ")
            out[name] = float(v)
    return out


def cpu_of(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS


def ours(m: dict[str, float]) -> float:
    return sum(v for k, v in m.items()
               if k.startswith("proctree_root_cpu_seconds_total{") and 'root="bench"' in k)


def theirs(m: dict[str, float]) -> float:
    return sum(v for k, v in m.items()
               if k.startswith("namedprocess_namegroup_cpu_seconds_total{")
               and 'groupname="bench"' in k)


def wait_up(port: int, path: str, proc: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"exporter exited: {proc.args}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=2):
                return
        except OSError:
            time.sleep(0.1)
    raise SystemExit(f"exporter not up: {proc.args}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--scrape-interval", type=float, default=15.0)
    ap.add_argument("--json", default=str(REPO / "bench" / "results" / "resources.json"))
    args = ap.parse_args()
    if not os.path.exists(PROCESS_EXPORTER):
        raise SystemExit("prometheus-process-exporter missing: scripts/bootstrap bench")
    procs: list[subprocess.Popen[bytes]] = []
    results = []
    with tempfile.TemporaryDirectory() as tmp_s:
        tmp = Path(tmp_s)
        root = {"name": "bench", "select": "cmdline", "match": TOKEN}
        ports = {}
        try:
            for key, enabled in (("on", True), ("off", False)):
                cfg = tmp / f"{key}.json"
                cfg.write_text(json.dumps({"resources": {"enabled": enabled},
                                           "roots": [root]}))
                ports[key] = free_port()
                procs.append(subprocess.Popen(
                    [str(PROCTREE), "--config", str(cfg), "--web.listen-address",
                     f"127.0.0.1:{ports[key]}", "--log.level", "warning"]))
                wait_up(ports[key], "/-/ready", procs[-1])
            pe_cfg = tmp / "process-exporter.yaml"
            pe_cfg.write_text(json.dumps({"process_names": [
                {"name": "bench", "cmdline": [TOKEN]}]}))
            ports["pe"] = free_port()
            procs.append(subprocess.Popen([PROCESS_EXPORTER, "-config.path", str(pe_cfg),
                                           "-web.listen-address", f"127.0.0.1:{ports['pe']}"],
                                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
            wait_up(ports["pe"], "/", procs[-1])
            on_pid, off_pid = procs[0].pid, procs[1].pid
            print(f"scrape interval {args.scrape_interval:g} s; ground truth: a subreaper's "
                  "RUSAGE_CHILDREN", flush=True)
            for title, code in WORKLOADS.items():
                before_ours = ours(scrape(ports["on"]))
                before_theirs = theirs(scrape(ports["pe"]))
                cpu_on, cpu_off = cpu_of(on_pid), cpu_of(off_pid)
                harness = subprocess.Popen([sys.executable, "-c", HARNESS, code],
                                           stdout=subprocess.PIPE,
                                           env={"PTX_TOKEN": TOKEN, "PATH": "/usr/bin:/bin"})
                procs.append(harness)
                # scrape both as Prometheus would while the workload runs
                next_scrape = time.monotonic()
                while harness.poll() is None:
                    if time.monotonic() >= next_scrape:
                        scrape(ports["on"])
                        scrape(ports["pe"])
                        next_scrape += args.scrape_interval
                    time.sleep(0.05)
                assert harness.stdout is not None
                truth = float(harness.stdout.read().decode().strip())
                time.sleep(1.0)  # let the last exit records be matched
                spent_on, spent_off = cpu_of(on_pid) - cpu_on, cpu_of(off_pid) - cpu_off
                # two more scrapes, on the interval: what each reports in the end
                for _ in range(2):
                    time.sleep(args.scrape_interval)
                    got_ours = ours(scrape(ports["on"])) - before_ours
                    got_theirs = theirs(scrape(ports["pe"])) - before_theirs
                r = {"workload": title, "truth_s": truth, "ours_s": got_ours,
                     "process_exporter_s": got_theirs, "ours_ratio": got_ours / truth,
                     "process_exporter_ratio": got_theirs / truth,
                     "daemon_cpu_on_s": spent_on, "daemon_cpu_off_s": spent_off}
                results.append(r)
                print(f"{title:<55} truth {truth:6.3f} s | ours {got_ours:6.3f} s "
                      f"({got_ours / truth:6.1%}) | process-exporter {got_theirs:6.3f} s "
                      f"({got_theirs / truth:6.1%}) | daemon CPU on {spent_on:.3f} s, off "
                      f"{spent_off:.3f} s", flush=True)
        finally:
            for p in procs:
                if p.poll() is None:
                    p.send_signal(signal.SIGTERM)
            for p in procs:
                try:
                    p.wait(10)
                except subprocess.TimeoutExpired:
                    p.kill()
                    p.wait()
    short = results[1]
    per = (short["daemon_cpu_on_s"] - short["daemon_cpu_off_s"]) / 1000
    print(f"resource accounting's CPU per short-lived process (daemon on - off, workload b): "
          f"{per * 1e6:.0f} µs")
    for r in results:
        ok = abs(r["ours_ratio"] - 1) <= 0.01 or abs(r["ours_s"] - r["truth_s"]) <= 0.02
        print(f"{'PASS' if ok else 'MISS'}: {r['workload']}: ours within 1% or 20 ms "
              f"({r['ours_ratio']:.1%})")
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps({"scrape_interval_s": args.scrape_interval,
                                           "per_short_process_cpu_s": per,
                                           "results": results}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
