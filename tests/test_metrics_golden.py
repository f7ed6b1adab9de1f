"""The metric contract: a fixed snapshot renders exactly as tests/golden/metrics.prom.

A change to any metric family shows up as a readable diff of that file.
Regenerate it deliberately with ``UPDATE_GOLDEN=1 scripts/test tests/test_metrics_golden.py``.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.openmetrics.exposition import generate_latest as generate_openmetrics
from prometheus_client.registry import Collector

from proctree_exporter.capabilities import Capability
from proctree_exporter.collector import LAG_BUCKETS
from proctree_exporter.control import ControlStats
from proctree_exporter.export.prometheus import families
from proctree_exporter.host import HostStates
from proctree_exporter.resources import ResourceStats, RootResources
from proctree_exporter.snapshot import ReloadStatus, RootSnapshot, Snapshot
from proctree_exporter.state import StateStats
from proctree_exporter.stream import StreamStats

GOLDEN = Path(__file__).parent / "golden" / "metrics.prom"


def fixed_snapshot() -> Snapshot:
    lag = [(b, min(i * 10, 50)) for i, b in enumerate((*LAG_BUCKETS, float("inf")))]
    return Snapshot(
        ts=1_800_000_100.0, version="1.2.3", ready=True, source="netlink", filtered=True,
        capabilities=(Capability("process_lifecycle", "supported", "netlink", "r"),
                      Capability("cgroup", "unavailable", "procfs", "r")),
        roots=(
            RootSnapshot(name="ci-job", select="cmdline", up=False, instances=0,
                         start_time=None, members=3,
                         classes={"healthy": 0, "orphaned": 2, "zombie": 1},
                         spawned_total=1204, exited_total=1201, restarts_total=0,
                         pid_reuse_total=1, actions={("term", "sent"): 2, ("kill", "gone"): 1},
                         class_changes={"orphaned": 2, "zombie": 1, "pid_reused": 1},
                         max_depth=3, truncated=False, tombstones=17, runtime=True),
            RootSnapshot(name="host", select="pid", up=True, instances=1,
                         start_time=1_799_990_000.5, members=1500,
                         classes={"healthy": 1490, "orphaned": 10, "zombie": 0},
                         spawned_total=90_000, exited_total=88_500, restarts_total=0,
                         pid_reuse_total=0, actions={}, class_changes={"orphaned": 10},
                         max_depth=9, truncated=True, tombstones=1000,
                         inferred={"snapshot": 1480, "resync": 3}),
        ),
        events={"fork": 100, "exec": 40, "exit": 99, "comm": 3, "uid": 1, "gid": 0, "sid": 0,
                "ptrace": 0, "coredump": 0, "ack": 1},
        events_lost=12, overruns=1, seq_gap_events=0, kernel_drops=12,
        resyncs={"overrun": 1}, parse_errors={"spoofed": 2},
        lag_buckets=tuple(lag), lag_sum_s=0.125, collector_cpu_seconds=1.5,
        tree_live=1600, tree_tombstones=4000, tree_capacity=50_000, tree_over_capacity=0,
        processes_forked=95_000, processes_exited=93_500, missed_exits=3, exec_unread=5,
        stale_events=2, pid_reuse=1, threads=2100, lineage_unknown=35, host_zombies=1,
        host_states=HostStates(ts=1_800_000_095.0,
                               by_state={"running": 2, "sleeping": 1590, "zombie": 1}),
        reloads=ReloadStatus(success_total=2, failure_total=1, last_success=False),
        streams=StreamStats(open=3, events_sent=12_345,
                            dropped={"slow": 1, "limit": 4, "shutdown": 0}),
        state=StateStats(enabled=True, writes_total=120, write_failures_total=1,
                         last_write_ts=1_800_000_098.0, last_write_seconds=0.012,
                         last_write_bytes=183_000,
                         ignored={"unreadable": 0, "truncated": 0, "corrupt": 1, "version": 0,
                                  "other_boot": 0},
                         restored_processes=1480, restored_members=20,
                         dropped={"exited": 12, "pid_reused": 1, "inconsistent": 0},
                         counters_continued=False),
        resources=ResourceStats(
            roots=(RootResources("ci-job", (12_500_000, 3_250_000, 4096, 1_048_576, 5000, 120,
                                            90_000, 3), 0, 0, 0, 0, 0),
                   RootResources("host", (9_000_000_000, 2_500_000_000, 10_485_760,
                                          524_288_000, 9_000_000, 400_000, 80_000_000, 1200),
                                 1_610_612_736, 1_073_741_824, 12_000, 2100, 1490)),
            accounting="supported", reason="taskstats exit records", exit_records=95_000,
            exits_accounted=89_700, exits_unaccounted={"no_record": 2}, records_lost=0,
            last_round_wall=1_800_000_090.0, last_round_seconds=0.104,
            sampler_cpu_seconds=12.5, sampled_total=200_000),
        control=ControlStats(enabled=True, writes={("ensure", "201"): 40, ("ensure", "409"): 1,
                                                   ("kill_tree", "200"): 38},
                             runtime_roots=2, restored=1, gone=1),
    )


class _Fixed(Collector):
    def collect(self):  # type: ignore[no-untyped-def]
        yield from families(fixed_snapshot())


def render(openmetrics: bool = False) -> str:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Fixed())
    gen = generate_openmetrics if openmetrics else generate_latest
    return gen(registry).decode()


def test_exposition_matches_the_golden_file() -> None:
    text = render()
    if os.environ.get("UPDATE_GOLDEN"):
        GOLDEN.write_text(text)
    assert text == GOLDEN.read_text(), "metric contract changed: review, then UPDATE_GOLDEN=1"


def test_no_family_has_a_pid_label() -> None:
    for line in render().splitlines():
        if not line.startswith("#"):
            assert "pid=" not in line and "cmdline" not in line, line


def test_promtool_finds_nothing_to_complain_about() -> None:
    promtool = shutil.which("promtool")
    assert promtool, "promtool missing: scripts/bootstrap test installs Debian's prometheus"
    out = subprocess.run([promtool, "check", "metrics"], input=render(), capture_output=True,
                         text=True, timeout=30)
    assert out.returncode == 0 and not out.stdout.strip() and not out.stderr.strip(), (
        out.stdout + out.stderr)


def test_openmetrics_rendering_ends_with_eof() -> None:
    text = render(openmetrics=True)
    assert text.endswith("# EOF\n")
    assert "# TYPE proctree_root_spawned counter" in text
    assert 'proctree_root_spawned_total{root="host"} 90000.0' in text


@pytest.mark.parametrize("family", [
    "proctree_root_up", "proctree_root_processes", "proctree_root_spawned_total",
    "proctree_root_exited_total", "proctree_processes", "proctree_events_total",
    "proctree_events_lost_total", "proctree_resyncs_total", "proctree_tree_nodes",
    "proctree_build_info", "proctree_source_info",
])
def test_the_design_contract_families_exist(family: str) -> None:
    assert any(line.startswith(family + "{") or line.startswith(family + " ")
               for line in render().splitlines())


def test_every_family_served_is_in_the_readme_metrics_reference() -> None:
    readme = (Path(__file__).parent.parent / "README.md").read_text()
    reference = readme.split("\n## Metrics\n", 1)[1].split("\n## ", 1)[0]
    served = re.findall(r"^# TYPE (\S+) ", render(), re.M)
    assert len(served) > 40
    undocumented = [name for name in served if f"`{name}`" not in reference]
    assert not undocumented, f"served but not in README's Metrics: {undocumented}"
