"""A real Prometheus server scrapes the real daemon; its query API returns our numbers."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from .conftest import PYTHON, REPO, Janitor, read_lines, wait_for
from .daemon_helpers import start_daemon, start_prometheus
from .test_daemon_kernel import CONFIG, SCENE

pytestmark = pytest.mark.kernel


def test_prometheus_scrapes_roots_and_orphans(janitor: Janitor, tmp_path: Path) -> None:
    daemon = start_daemon(janitor, tmp_path, CONFIG)
    prom = start_prometheus(janitor, tmp_path, daemon.port)
    holder = janitor.spawn([PYTHON, "-c", SCENE], stdin=subprocess.PIPE)
    assert holder.stdin is not None
    holder.stdin.write("go\n")
    holder.stdin.flush()
    *orphans, _ = (int(x) for x in read_lines(holder, 1, timeout=30)[0].split())
    for o in orphans:
        janitor.track(o)
    wait_for(lambda: prom.scalar('up{job="proctree"}') == 1, timeout=30)
    wait_for(lambda: prom.scalar('proctree_root_processes{root="job",class="zombie"}') == 1,
             timeout=30)
    assert prom.scalar('proctree_root_processes{root="job",class="orphaned"}') == 3
    assert prom.scalar('proctree_root_spawned_total{root="job"}') == 207
    assert prom.scalar('proctree_root_up{root="exporter"}') == 1
    assert prom.scalar('sum(proctree_events_total{type="fork"}) > 0') is not None
    assert prom.scalar('proctree_build_info') == 1
    # every PromQL example in README.md evaluates as written, and the zombie one finds ours
    examples = readme_promql()
    assert len(examples) >= 6
    for expr in examples:
        prom.query(expr)  # raises unless Prometheus accepts and evaluates it
    zombies = prom.query('proctree_root_processes{class="zombie"} > 0')
    assert [r["metric"]["root"] for r in zombies] == ["job"]


def readme_promql() -> list[str]:
    text = (REPO / "README.md").read_text()
    block = text.split("```promql\n", 1)[1].split("```", 1)[0]
    return [line for line in block.splitlines() if line.strip() and not line.startswith("#")]
