"""The shipped rules and dashboards against a real Prometheus scraping the real daemon.

A real zombie, real orphans, a root that never comes up, a real kernel event loss, a rejected
reload and a stopped exporter: each alert of deploy/prometheus/rules.yml (but the procfs
fallback, which needs a host without the proc connector; promtool's unit tests cover it) goes
pending, then firing, in Prometheus's /api/v1/alerts. Then every query of every dashboard
panel, and every variable, is evaluated the way Grafana would, with real values: each
returns data.

Also: the daemon run with exactly the capabilities the systemd unit and the DaemonSet grant
(no more) still uses the proc connector and reads other users' executables.
"""

from __future__ import annotations

import json
import math
import os
import re
import signal
import subprocess
import threading
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from .conftest import PYTHON, Janitor, read_lines, wait_for
from .daemon_helpers import (
    PrometheusServer,
    start_daemon,
    start_prometheus,
    value,
)
from .test_operate_dashboards import committed, panels, regex_value, substitute
from .test_operate_deploy import daemonset_capabilities, unit_capabilities
from .test_operate_rules import RULES

pytestmark = pytest.mark.kernel

TOKEN = "ptx-operate-holder"
# `for:` in the e2e copy of the rules, and the longest range window there (see fast_rules)
FAST_FOR = "5s"
FAST_WINDOW = "30s"

CONFIG = f"""
roots:
  - name: job
    select: cmdline
    match: "{TOKEN}"
    zombie_grace_seconds: 0.5
    actions:
      enabled: true
      dry_run: true
      term_grace_seconds: 1
  - name: absent
    select: pidfile
    match: {{absent}}
  - name: exporter
    select: pid
    match: self
host:
  state_sample_interval_seconds: 1
resources:
  sample_interval_seconds: 1
collector:
  # the smallest buffer allowed (the kernel doubles it: about 160 events), so that a
  # stalled reader loses events
  receive_buffer_bytes: 65536
  resync_min_interval_seconds: 0
"""

# holder (the instance) waits for "go", then: a wrapper that exits, leaving 3 sleepers
# (orphans); a child that exits unreaped (zombie); 50 children living a few ms
SCENE = f"""# {TOKEN}
import os, subprocess, sys, time
sys.stdin.readline()
w = subprocess.Popen(['/bin/sh', '-c', 'for i in 1 2 3; do sleep 120 & echo $!; done'],
                     stdout=subprocess.PIPE, text=True)
orphans = [w.stdout.readline().strip() for _ in range(3)]
w.wait()
if os.fork() == 0:
    os._exit(0)
for _ in range(50):
    pid = os.fork()
    if pid == 0:
        time.sleep(0.002); os._exit(0)
    os.waitpid(pid, 0)
print(' '.join(orphans), flush=True)
time.sleep(120)
"""

BURST = """
import os
for _ in range(800):  # 1,600 events or more: ten times the buffer, in about a second
    pid = os.fork()
    if pid == 0:
        os._exit(0)
    os.waitpid(pid, 0)
print('done', flush=True)
"""


def fast_rules(tmp_path: Path) -> Path:
    """A copy of the shipped rules with every alert's `for:` set to seconds and every range
    window of alert expressions cut to FAST_WINDOW.

    Why: the shipped durations are minutes (5m to 15m, windows up to 1h), which would make
    this test take over a quarter of an hour. The expressions, labels and annotations are
    otherwise exactly the shipped ones; the shipped durations themselves are proven by the
    promtool unit tests (tests/test_operate_rules.py), which run on virtual time.
    """
    doc = yaml.safe_load(RULES.read_text())
    for group in doc["groups"]:
        for rule in group["rules"]:
            if "alert" in rule:
                rule["for"] = FAST_FOR
                rule["expr"] = re.sub(r"\[\d+[smhdwy]\]", f"[{FAST_WINDOW}]", rule["expr"])
    path = tmp_path / "rules.yml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


def get_json(prom: PrometheusServer, path: str, **params: Any) -> Any:
    url = f"http://127.0.0.1:{prom.port}{path}"
    if params:
        url += "?" + urllib.parse.urlencode(params, doseq=True)
    with urllib.request.urlopen(url, timeout=10) as r:
        doc = json.loads(r.read())
    assert doc["status"] == "success", doc
    return doc["data"]


class AlertLog:
    """Polls /api/v1/alerts in a thread; remembers when each (alert, key label) was first
    seen in each state."""

    def __init__(self, prom: PrometheusServer) -> None:
        self.prom = prom
        self.first: dict[tuple[str, str, str], float] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                now = time.monotonic()
                for a in get_json(self.prom, "/api/v1/alerts")["alerts"]:
                    labels = a["labels"]
                    key = (labels["alertname"], labels.get("root", ""), a["state"])
                    self.first.setdefault(key, now)
            except OSError:
                pass
            self._stop.wait(0.2)

    def __enter__(self) -> AlertLog:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join(5)

    def fired(self, alert: str, root: str = "") -> bool:
        return (alert, root, "firing") in self.first

    def pending_then_firing(self, alert: str, root: str = "", after: float = 0.0) -> None:
        pending = self.first.get((alert, root, "pending"))
        firing = self.first.get((alert, root, "firing"))
        assert pending is not None, f"{alert} {root} never pending: {sorted(self.first)}"
        assert firing is not None, f"{alert} {root} never firing"
        assert after <= pending < firing, (alert, root, after, pending, firing)


@pytest.fixture
def stopped_guard() -> Iterator[list[int]]:
    """Pids this test SIGSTOPs: continued at teardown whatever happens."""
    pids: list[int] = []
    yield pids
    for pid in pids:
        try:
            os.kill(pid, signal.SIGCONT)
        except ProcessLookupError:
            pass


def test_alerts_fire_and_every_dashboard_query_returns_data(
        janitor: Janitor, tmp_path: Path, stopped_guard: list[int]) -> None:
    holder = janitor.spawn([PYTHON, "-c", SCENE], stdin=subprocess.PIPE)
    daemon = start_daemon(janitor, tmp_path, CONFIG.format(absent=tmp_path / "absent.pid"))
    prom = start_prometheus(janitor, tmp_path, daemon.port, rule_files=(fast_rules(tmp_path),))
    t_start = time.time()
    instance = f"127.0.0.1:{daemon.port}"

    # a baseline: Prometheus has seen the root with no orphans before there are any
    def baseline() -> bool:
        n = prom.scalar('count_over_time(proctree_root_processes{root="job", '
                        f'class="orphaned"}}[{FAST_WINDOW}])')
        return n is not None and n >= 2
    wait_for(baseline, timeout=30, interval=0.2)
    assert prom.scalar('proctree_root_processes{root="job", class="orphaned"}') == 0

    with AlertLog(prom) as log:
        t_scene = time.monotonic()
        assert holder.stdin is not None
        holder.stdin.write("go\n")
        holder.stdin.flush()
        for pid in read_lines(holder, 1, timeout=30)[0].split():
            janitor.track(int(pid))

        # a rejected reload: the previous config stays in force
        daemon.config.write_text("roots: [\n")
        daemon.proc.send_signal(signal.SIGHUP)

        # real loss: the daemon stalls (SIGSTOP) while a fork burst overflows its socket
        stopped_guard.append(daemon.proc.pid)
        os.kill(daemon.proc.pid, signal.SIGSTOP)
        try:
            read_lines(janitor.python(BURST), 1, timeout=30)
        finally:
            os.kill(daemon.proc.pid, signal.SIGCONT)
        wait_for(lambda: (value(daemon.metrics(), "proctree_events_lost_total") or 0) > 0,
                 timeout=10)

        expected = [("ProctreeZombiesPresent", "job"), ("ProctreeOrphansGrowing", "job"),
                    ("ProctreeRootDown", "absent"), ("ProctreeEventsLost", ""),
                    ("ProctreeConfigReloadFailed", "")]
        wait_for(lambda: all(log.fired(a, r) for a, r in expected), timeout=40, interval=0.2)
        for alert, root in expected:
            log.pending_then_firing(alert, root, after=0 if alert == "ProctreeRootDown"
                                    else t_scene)
        firing = get_json(prom, "/api/v1/alerts")["alerts"]
        zombie = next(a for a in firing if a["labels"]["alertname"] == "ProctreeZombiesPresent")
        assert zombie["labels"]["severity"] == "warning"
        assert zombie["labels"]["instance"] == instance
        assert zombie["annotations"]["runbook_url"] == "docs/runbooks/ProctreeZombiesPresent.md"
        assert f"Root job on {instance} has had 1 zombie" in zombie["annotations"]["description"]
        assert not log.fired("ProctreeExporterDown")

        # the instance exits: cleanup actions (dry run) on the orphans it left behind
        os.kill(holder.pid, signal.SIGKILL)
        holder.wait(10)
        # (a few samples of it, so that a rate over it has two points)
        wait_for(lambda: (prom.scalar('max(count_over_time(proctree_root_actions_total{'
                                      'root="job", outcome="dry_run"}[10s]))') or 0) >= 3,
                 timeout=20, interval=0.2)

        check_dashboards(prom, instance, t_start)

        # the exporter stops: ExporterDown, the one alert about the target itself
        t_stop = time.monotonic()
        status, _, err = daemon.stop()
        assert status == 0, err
        wait_for(lambda: log.fired("ProctreeExporterDown"), timeout=30, interval=0.2)
        log.pending_then_firing("ProctreeExporterDown", after=t_stop)


def check_dashboards(prom: PrometheusServer, instance: str, t_start: float) -> None:
    """Evaluate every variable and panel query as Grafana would, over the test's time range."""
    end = time.time()
    step = 1.0
    scrape = 1.0  # start_prometheus's interval
    values = {
        "datasource": "prometheus",
        "job": "proctree",
        "instance": regex_value(instance),
        "root": "job",
        # Grafana: max($__interval + scrape interval, 4 * scrape interval)
        "__rate_interval": f"{int(max(step + scrape, 4 * scrape))}s",
        "__range": f"{math.ceil(end - t_start)}s",
    }
    expected_var = {"job": "proctree", "instance": instance, "root": "job"}
    checked = 0
    for name, dash in committed().items():
        for v in dash["templating"]["list"]:
            if v["type"] != "query":
                continue
            m = re.fullmatch(r"label_values\((.*),\s*(\w+)\)", v["query"]["query"])
            assert m
            # what Grafana asks for label_values(selector, label)
            got = get_json(prom, f"/api/v1/label/{m.group(2)}/values",
                           **{"match[]": substitute(m.group(1), values), "start": t_start,
                              "end": end})
            assert expected_var[v["name"]] in got, (name, v["name"], got)
        for p in panels(dash):
            for t in p["targets"]:
                expr = substitute(t["expr"], values)
                if t.get("instant"):
                    result = get_json(prom, "/api/v1/query", query=expr, time=end)["result"]
                    samples = [r["value"][1] for r in result]
                else:
                    result = get_json(prom, "/api/v1/query_range", query=expr, start=t_start,
                                      end=end, step=step)["result"]
                    samples = [v[1] for r in result for v in r["values"]]
                assert result, f"{name} / {p['title']} / {t['refId']}: no data for {expr}"
                assert any(math.isfinite(float(s)) for s in samples), \
                    f"{name} / {p['title']} / {t['refId']}: only NaN for {expr}"
                checked += 1
    assert checked >= 30


@pytest.mark.parametrize("granted", ["systemd unit and DaemonSet", "without SYS_PTRACE"])
def test_deploy_capabilities_are_enough(janitor: Janitor, tmp_path: Path, granted: str) -> None:
    caps = unit_capabilities()
    assert caps == daemonset_capabilities()
    if granted == "without SYS_PTRACE":
        caps = caps - {"sys_ptrace"}  # the control: shows the check below can fail
    # as the unit and the pod run it: root, only these capabilities, no new privileges
    bounding = "-all," + ",".join(f"+{c}" for c in sorted(caps))
    daemon = start_daemon(janitor, tmp_path, "roots:\n  - name: other\n    select: cmdline\n"
                          '    match: "^sleep 31\\\\.4159"\n',
                          prefix=["setpriv", f"--bounding-set={bounding}", "--inh-caps=-all",
                                  "--no-new-privs"])
    m = daemon.metrics()
    assert value(m, "proctree_source_info", source="netlink", filtered="true") == 1 or \
        value(m, "proctree_source_info", source="netlink", filtered="false") == 1
    # a process of another user (nobody): its executable is readable only with SYS_PTRACE
    other = janitor.spawn(["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups",
                           "sleep", "31.4159"])
    members = wait_for(lambda: daemon.json("/api/v1/roots/other").get("members"), timeout=10)
    assert members[0]["pid"] == other.pid
    exe = members[0]["exe"]
    if granted == "without SYS_PTRACE":
        assert exe in (None, ""), exe
    else:
        assert exe and exe.endswith("/sleep"), members[0]
    status, _, err = daemon.stop()
    assert status == 0, err


