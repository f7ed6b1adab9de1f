"""The Grafana dashboards: committed JSON is the generator's output, and it lints clean.

The generator builds them with grafana-foundation-sdk, at the exact version the `test` extra
of pyproject.toml pins.

Every panel query is also parsed by promtool (Prometheus's own PromQL parser) here, and
evaluated against a real Prometheus scraping the real daemon in test_operate_e2e.py.
"""

from __future__ import annotations

import copy
import json
import re
import subprocess
import sys
import tomllib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from .conftest import REPO
from .test_operate_rules import load_module, promtool

DASHBOARDS = REPO / "dashboards"
generate = load_module(DASHBOARDS / "generate.py")
lint = load_module(DASHBOARDS / "lint.py")


def committed() -> dict[str, dict[str, Any]]:
    return {p.name: json.loads(p.read_text()) for p in sorted(DASHBOARDS.glob("*.json"))}


def panels(dash: dict[str, Any]) -> list[dict[str, Any]]:
    return [p for p in dash["panels"] if p["type"] != "row"]


def exprs(dash: dict[str, Any]) -> list[str]:
    return [t["expr"] for p in panels(dash) for t in p["targets"]]


def substitute(expr: str, values: dict[str, str]) -> str:
    """Grafana's interpolation for these dashboards: $__rate_interval, $__range, and
    variables inside regex matchers (values regex-escaped, as Grafana's Prometheus data
    source does)."""
    def one(m: re.Match[str]) -> str:
        name = m.group(1) or m.group(2)
        return values[name]

    return re.sub(r"\$\{(\w+)\}|\$(\w+)", one, expr)


def regex_value(value: str) -> str:
    """A single variable value as it appears inside a PromQL =~ string."""
    return re.escape(value).replace("\\", "\\\\")


def test_committed_json_is_what_the_generator_makes() -> None:
    made = generate.dashboards()
    assert set(made) == set(committed()), "a dashboard file without generator, or vice versa"
    for name, model in made.items():
        assert (DASHBOARDS / name).read_text() == generate.render(model), \
            f"{name} is stale: run .venv/bin/python dashboards/generate.py"
    out = subprocess.run([sys.executable, str(DASHBOARDS / "generate.py"), "--check"],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr


def test_generator_uses_the_sdk_the_test_extra_pins() -> None:
    # an unpinned install takes the newest upload, the Grafana 10.1 flavour (see generate.py)
    extra = tomllib.loads((REPO / "pyproject.toml").read_text())["project"][
        "optional-dependencies"]["test"]
    assert f"grafana-foundation-sdk=={generate.SDK}" in extra
    assert generate.SDK.endswith("!10.4.0"), "the oldest Grafana the dashboards support"


def test_dashboards_lint_clean() -> None:
    metrics = lint.known_metrics()
    for name, dash in committed().items():
        assert lint.lint(dash, metrics) == [], name
    out = subprocess.run([sys.executable, str(DASHBOARDS / "lint.py")], capture_output=True,
                         text=True, timeout=60)
    assert out.returncode == 0, out.stdout + out.stderr


def _first(dash: dict[str, Any], kind: str = "timeseries") -> dict[str, Any]:
    return next(p for p in panels(dash) if p["type"] == kind)


def _retarget(expr_from: str, expr_to: str) -> Callable[[dict[str, Any]], None]:
    def mutate(dash: dict[str, Any]) -> None:
        for p in panels(dash):
            for t in p["targets"]:
                if expr_from in t["expr"]:
                    t["expr"] = t["expr"].replace(expr_from, expr_to)
                    return
        raise AssertionError(f"{expr_from!r} not found")
    return mutate


MUTATIONS: dict[str, tuple[Callable[[dict[str, Any]], None], str]] = {
    "fixed rate window": (_retarget("[$__rate_interval]", "[5m]"), "target-rate-interval-rule"),
    "bare counter": (_retarget("rate(proctree_events_total", "(proctree_events_total"),
                     "target-counter-agg-rule"),
    "no instance matcher": (_retarget(', instance=~"$instance"', ""), "target-instance-rule"),
    "no root matcher": (_retarget(', root=~"$root"', ""), "needs root"),
    "unknown metric": (_retarget("proctree_events_total", "proctree_events_totals"),
                       "unknown metric"),
    "unknown label value": (_retarget('class="zombie"', 'class="zombies"'), "matches no value"),
    "bad unit": (lambda d: _first(d)["fieldConfig"]["defaults"].update(unit="events/s"),
                 "panel-units-rule"),
    "no description": (lambda d: _first(d).update(description=""),
                       "panel-title-description-rule"),
    "old panel type": (lambda d: _first(d).update(type="graph"), "panel type"),
    "fixed datasource": (lambda d: _first(d).update(datasource={"uid": "prom1"}),
                         "panel-datasource-rule"),
    "editable": (lambda d: d.update(editable=True), "uneditable-rule"),
    "no datasource variable": (lambda d: d["templating"]["list"].pop(0),
                               "template-datasource-rule"),
    "variable not reloaded": (lambda d: d["templating"]["list"][2].update(refresh=1),
                              "template-on-time-change-reload-rule"),
    "single-select job": (lambda d: d["templating"]["list"][1].update(multi=False),
                          "template-job-rule"),
}


@pytest.mark.parametrize("mutation", sorted(MUTATIONS))
def test_lint_catches(mutation: str) -> None:
    mutate, rule = MUTATIONS[mutation]
    dash = copy.deepcopy(committed()["proctree-overview.json"])
    mutate(dash)
    problems = lint.lint(dash, lint.known_metrics())
    assert any(rule in p for p in problems), problems


def test_every_query_parses_with_promtool(tmp_path: Path) -> None:
    # promtool parses each expression, variables substituted, as a recording rule
    values = {"job": "proctree", "instance": regex_value("127.0.0.1:9632"), "root": "host",
              "datasource": "prometheus", "__rate_interval": "1m", "__range": "6h"}
    rules = []
    for dash in committed().values():
        uid = dash["uid"].replace("-", "_")
        for i, expr in enumerate(exprs(dash)):
            rules.append({"record": f"dashboard:{uid}:{i}", "expr": substitute(expr, values)})
        for v in dash["templating"]["list"]:
            if v["type"] == "query":
                m = re.fullmatch(r"label_values\((.*),\s*(\w+)\)", v["query"]["query"])
                assert m, v["name"]
                rules.append({"record": f"dashboard:{uid}_variable:{v['name']}",
                              "expr": substitute(m.group(1), values)})
    path = tmp_path / "dashboard_exprs.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboards", "rules": rules}]}))
    out = subprocess.run([promtool(), "check", "rules", str(path)], capture_output=True,
                         text=True, timeout=60)
    assert out.returncode == 0, out.stdout + out.stderr
    assert f"SUCCESS: {len(rules)} rules found" in out.stdout


def test_dashboards_cover_what_operators_ask() -> None:
    dashes = committed()
    overview = " ".join(exprs(dashes["proctree-overview.json"]))
    for metric in ("proctree_source_info", "proctree_events_total", "proctree_events_lost_total",
                   "proctree_resyncs_total", "proctree_root_up", "proctree_root_processes",
                   "proctree_root_spawned_total", "proctree_root_exited_total",
                   "proctree_event_streams_open", "proctree_event_stream_clients_dropped_total"):
        assert metric in overview, metric
    assert 'class="orphaned"' in overview and 'class="zombie"' in overview
    root = " ".join(exprs(dashes["proctree-root.json"]))
    for metric in ("proctree_root_processes", "proctree_root_spawned_total",
                   "proctree_root_exited_total", "proctree_root_restarts_total",
                   "proctree_root_actions_total", "proctree_root_max_depth"):
        assert metric in root, metric
    assert "class)" in root, "members by class"
    for dash in dashes.values():
        names = [v["name"] for v in dash["templating"]["list"]]
        assert {"datasource", "instance", "root"} <= set(names)
        assert {p["type"] for p in panels(dash)} <= {"timeseries", "stat", "table"}
        assert dash["schemaVersion"] >= 36
    # drill-down links between the two
    table = _first(dashes["proctree-overview.json"], "table")
    links = json.dumps(table["fieldConfig"]["overrides"])
    assert "/d/proctree-root/" in links and "var-root=${__data.fields.root}" in links
