"""A real Prometheus server scrapes the real daemon; its query API returns our numbers."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from .conftest import PYTHON, Janitor, read_lines, wait_for
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
    assert prom.scalar('proctree_root_spawned_total{root="job"}') == 206
    assert prom.scalar('proctree_root_up{root="exporter"}') == 1
    assert prom.scalar('sum(proctree_events_total{type="fork"}) > 0') is not None
    assert prom.scalar('proctree_build_info') == 1
    # the examples README gives work as written
    assert prom.scalar('sum by (root) (proctree_root_processes{class="zombie"})'
                       ' and on(root) proctree_root_up{root="job"}') == 1
