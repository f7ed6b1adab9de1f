#!/usr/bin/env python3
"""Generate the Grafana dashboards in this folder from code.

    python3 dashboards/generate.py          # rewrite proctree-overview.json, proctree-root.json
    python3 dashboards/generate.py --check  # exit 1 if the committed JSON differs

The JSON files are committed so they can be imported as they are (Grafana: Dashboards >
New > Import, or file provisioning); this script is their source. Edit here, regenerate, and
run `python3 dashboards/lint.py`. Standard library only.

Every query filters on the `job` and `instance` variables (and `root` where the metric has
one), takes its data source from the `datasource` variable, and uses `$__rate_interval` in
rates, so the dashboards pass the rules of Grafana's dashboard-linter (see lint.py).
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
SCHEMA_VERSION = 39  # Grafana 10.4 / 11
DATASOURCE = {"type": "prometheus", "uid": "${datasource}"}
INSTANCE = 'job=~"$job", instance=~"$instance"'
ROOT = INSTANCE + ', root=~"$root"'
OVERVIEW_UID = "proctree-overview"
ROOT_UID = "proctree-root"


@dataclass
class Q:
    """One query of a panel."""

    expr: str
    legend: str = ""
    instant: bool = False


@dataclass
class Panel:
    """A panel before layout: kind is timeseries, stat or table."""

    kind: str
    title: str
    description: str
    unit: str
    queries: list[Q]
    width: int = 12
    height: int = 8
    extra: dict[str, Any] = field(default_factory=dict)


def _target(q: Q, ref: str, table: bool) -> dict[str, Any]:
    t: dict[str, Any] = {
        "datasource": DATASOURCE,
        "editorMode": "code",
        "expr": q.expr,
        "legendFormat": q.legend or "__auto",
        "range": not q.instant,
        "instant": q.instant,
        "refId": ref,
    }
    if table:
        t["format"] = "table"
    return t


def _mappings(values: dict[int, tuple[str, str]]) -> list[dict[str, Any]]:
    """Value mappings: number -> (text, colour)."""
    return [{"type": "value", "options": {str(k): {"text": text, "color": color, "index": i}
                                          for i, (k, (text, color)) in
                                          enumerate(sorted(values.items()))}}]


UP_MAPPING = _mappings({0: ("down", "red"), 1: ("up", "green")})
READY_MAPPING = _mappings({0: ("starting", "orange"), 1: ("ready", "green")})
YES_NO_MAPPING = _mappings({0: ("no", "green"), 1: ("yes", "orange")})
EXACT_MAPPING = _mappings({0: ("degraded", "orange"), 1: ("exact", "green")})


def _thresholds(*steps: tuple[float | None, str]) -> dict[str, Any]:
    return {"mode": "absolute", "steps": [{"value": v, "color": c} for v, c in steps]}


GREEN = _thresholds((None, "green"))
RED_ABOVE_0 = _thresholds((None, "green"), (1, "red"))
ORANGE_ABOVE_0 = _thresholds((None, "green"), (1, "orange"))


def _render(p: Panel, pid: int, x: int, y: int) -> dict[str, Any]:
    table = p.kind == "table"
    defaults: dict[str, Any] = {"unit": p.unit, "thresholds": p.extra.get("thresholds", GREEN),
                                "color": {"mode": "thresholds" if p.kind != "timeseries"
                                          else "palette-classic"},
                                "mappings": p.extra.get("mappings", [])}
    if p.kind == "timeseries":
        defaults["custom"] = {"drawStyle": "line", "lineWidth": 1, "fillOpacity": 10,
                              "showPoints": "never", "spanNulls": False,
                              "stacking": {"mode": "normal" if p.extra.get("stack") else "none",
                                           "group": "A"}}
        if "min" in p.extra:
            defaults["min"] = p.extra["min"]
    options: dict[str, Any]
    if p.kind == "timeseries":
        options = {"legend": {"displayMode": "list", "placement": "bottom", "showLegend": True},
                   "tooltip": {"mode": "multi", "sort": "desc"}}
    elif p.kind == "stat":
        options = {"reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": False},
                   "colorMode": "value", "graphMode": p.extra.get("graph_mode", "area"),
                   "justifyMode": "auto", "orientation": "auto",
                   "textMode": p.extra.get("text_mode", "auto")}
    else:
        options = {"showHeader": True, "cellHeight": "sm",
                   "footer": {"show": False, "reducer": ["sum"], "fields": ""}}
    panel: dict[str, Any] = {
        "id": pid,
        "type": p.kind,
        "title": p.title,
        "description": p.description,
        "datasource": DATASOURCE,
        "gridPos": {"h": p.height, "w": p.width, "x": x, "y": y},
        "fieldConfig": {"defaults": defaults, "overrides": p.extra.get("overrides", [])},
        "options": options,
        "targets": [_target(q, chr(ord("A") + i), table) for i, q in enumerate(p.queries)],
    }
    if "transformations" in p.extra:
        panel["transformations"] = p.extra["transformations"]
    return panel


def _layout(sections: list[tuple[str, list[Panel]]]) -> list[dict[str, Any]]:
    """Rows of panels, filled left to right, 24 columns wide."""
    out: list[dict[str, Any]] = []
    pid, y = 1, 0
    for title, panels in sections:
        out.append({"id": pid, "type": "row", "title": title, "collapsed": False,
                    "gridPos": {"h": 1, "w": 24, "x": 0, "y": y}, "panels": []})
        pid, y = pid + 1, y + 1
        x, line_h = 0, 0
        for p in panels:
            if x + p.width > 24:
                x, y, line_h = 0, y + line_h, 0
            out.append(_render(p, pid, x, y))
            pid, x, line_h = pid + 1, x + p.width, max(line_h, p.height)
        y += line_h
    return out


def _query_var(name: str, query: str, *, multi: bool = True) -> dict[str, Any]:
    return {
        "type": "query",
        "name": name,
        "label": name.capitalize(),
        "datasource": DATASOURCE,
        "definition": query,
        "query": {"qryType": 1, "query": query,
                  "refId": "PrometheusVariableQueryEditor-VariableQuery"},
        "refresh": 2,  # on time range change: roots come and go
        "multi": multi,
        "includeAll": multi,
        "allValue": ".+" if multi else None,
        "current": {},
        "options": [],
        "regex": "",
        "sort": 1,
        "hide": 0,
    }


def _variables(root_multi: bool) -> list[dict[str, Any]]:
    return [
        {"type": "datasource", "name": "datasource", "label": "Data source",
         "query": "prometheus", "current": {}, "options": [], "refresh": 1, "regex": "",
         "hide": 0},
        _query_var("job", "label_values(proctree_build_info, job)"),
        _query_var("instance", 'label_values(proctree_build_info{job=~"$job"}, instance)'),
        _query_var("root", f"label_values(proctree_root_up{{{INSTANCE}}}, root)",
                   multi=root_multi),
    ]


def _dashboard(uid: str, title: str, description: str, panels: list[dict[str, Any]],
               root_multi: bool, links: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "uid": uid,
        "title": title,
        "description": description,
        "tags": ["proctree"],
        "editable": False,
        "graphTooltip": 1,
        "fiscalYearStartMonth": 0,
        "liveNow": False,
        "refresh": "30s",
        "schemaVersion": SCHEMA_VERSION,
        "time": {"from": "now-6h", "to": "now"},
        "timepicker": {},
        "timezone": "",
        "version": 1,
        "annotations": {"list": [{
            "builtIn": 1, "datasource": {"type": "grafana", "uid": "-- Grafana --"},
            "enable": True, "hide": True, "iconColor": "rgba(0, 211, 255, 1)",
            "name": "Annotations & Alerts", "type": "dashboard"}]},
        "links": links,
        "templating": {"list": _variables(root_multi)},
        "panels": panels,
    }


def _rate(metric: str, sel: str, by: str) -> str:
    return f"sum by ({by}) (rate({metric}{{{sel}}}[$__rate_interval]))"


def overview() -> dict[str, Any]:
    """Per instance: source, events, loss, resyncs, roots; per root: orphans, zombies, churn,
    CPU and memory."""
    by_i = "job, instance"
    by_r = "job, instance, root"
    exporter = [
        Panel("stat", "Event source",
              "Where events come from: netlink (the kernel's proc connector: every process, "
              "however short-lived) or procfs (polling fallback: misses short-lived ones).",
              "none", [Q(f"proctree_source_info{{{INSTANCE}}}", "{{instance}}: {{source}}")],
              width=6, height=4, extra={"text_mode": "name", "graph_mode": "none"}),
        Panel("stat", "Ready", "1 once the tree is seeded from /proc and the roots attached.",
              "none", [Q(f"proctree_ready{{{INSTANCE}}}", "{{instance}}")], width=6, height=4,
              extra={"mappings": READY_MAPPING, "graph_mode": "none"}),
        Panel("stat", "Roots up", "Selected roots with at least one live instance.", "none",
              [Q(f"sum by ({by_i}) (proctree_root_up{{{ROOT}}})", "{{instance}}")],
              width=6, height=4),
        Panel("stat", "Roots down",
              "Selected roots with no live instance (see ProctreeRootDown).",
              "none",
              [Q(f"sum by ({by_i}) (1 - proctree_root_up{{{ROOT}}})", "{{instance}}")],
              width=6, height=4, extra={"thresholds": RED_ABOVE_0}),
        Panel("timeseries", "Events per second",
              "Proc connector events received, by type.", "cps",
              [Q(_rate("proctree_events_total", INSTANCE, by_i + ", type"),
                 "{{instance}} {{type}}")], width=8),
        Panel("timeseries", "Lost events",
              "Events the kernel dropped for the exporter, and receive buffer overruns. Each "
              "loss triggers a resync from /proc (see ProctreeEventsLost).", "cps",
              [Q(_rate("proctree_events_lost_total", INSTANCE, by_i), "{{instance}} lost"),
               Q(_rate("proctree_overruns_total", INSTANCE, by_i), "{{instance}} overruns")],
              width=8, extra={"min": 0}),
        Panel("timeseries", "Resyncs", "Resyncs of the tree from /proc after detected loss, "
              "by reason.", "cps",
              [Q(_rate("proctree_resyncs_total", INSTANCE, by_i + ", reason"),
                 "{{instance}} {{reason}}")], width=8, extra={"min": 0}),
        Panel("timeseries", "Event lag (p99)",
              "Kernel event timestamp to event applied to the tree, 99th percentile.", "s",
              [Q("histogram_quantile(0.99, " + _rate("proctree_event_lag_seconds_bucket",
                                                      INSTANCE, by_i + ", le") + ")",
                 "{{instance}}")], width=8),
        Panel("timeseries", "Collector CPU", "CPU used by the collector thread.",
              "percentunit",
              [Q(_rate("proctree_collector_cpu_seconds_total", INSTANCE, by_i),
                 "{{instance}}")], width=8, extra={"min": 0}),
        Panel("timeseries", "Tree size", "Processes in the tree (live and exited), exited ones "
              "kept as tombstones, and the node budget (tree.max_nodes).", "short",
              [Q(f"sum by ({by_i}) (proctree_tree_nodes{{{INSTANCE}}})", "{{instance}} nodes"),
               Q(f"sum by ({by_i}) (proctree_tree_tombstones{{{INSTANCE}}})",
                 "{{instance}} tombstones"),
               Q(f"sum by ({by_i}) (proctree_tree_capacity{{{INSTANCE}}})",
                 "{{instance}} capacity")], width=8),
        Panel("timeseries", "Event stream clients",
              "Clients following /api/v1/events (the tree page, watch --url, your programs), "
              "and the events written to them.", "short",
              [Q(f"sum by ({by_i}) (proctree_event_streams_open{{{INSTANCE}}})",
                 "{{instance}} open"),
               Q(_rate("proctree_event_stream_events_sent_total", INSTANCE, by_i),
                 "{{instance}} events/s")], width=12, extra={"min": 0}),
        Panel("timeseries", "Event stream clients dropped",
              "Stream clients cut off because they fell more than 1 MiB behind (slow; they "
              "resume with their last id), refused beyond web.max_streams (limit), or ended "
              "by a shutdown.", "cps",
              [Q(_rate("proctree_event_stream_clients_dropped_total", INSTANCE,
                       by_i + ", reason"), "{{instance}} {{reason}}")],
              width=12, extra={"min": 0}),
    ]
    columns = {"Value #A": "up", "Value #B": "members", "Value #C": "orphaned",
               "Value #D": "zombie", "Value #E": "spawned/s", "Value #F": "exited/s",
               "Value #G": "tracking"}
    drill = (f"/d/{ROOT_UID}/?var-datasource=${{datasource}}&var-job=${{__data.fields.job}}"
             "&var-instance=${__data.fields.instance}&var-root=${__data.fields.root}"
             "&${__url_time_range}")
    roots_table = Panel(
        "table", "Roots",
        "Every root now: up, members, orphans, zombies, churn over 5 minutes (recording "
        "rules from deploy/prometheus/rules.yml), and tracking (exact: every member seen "
        "forking; degraded: /proc placed some). Click a root for its drill-down.", "short",
        [Q(f"max by ({by_r}) (proctree_root_up{{{ROOT}}})", instant=True),
         Q(f"sum by ({by_r}) (instance_root:proctree_root_members:sum{{{ROOT}}})",
           instant=True),
         Q(f'sum by ({by_r}) (proctree_root_processes{{{ROOT}, class="orphaned"}})',
           instant=True),
         Q(f'sum by ({by_r}) (proctree_root_processes{{{ROOT}, class="zombie"}})',
           instant=True),
         Q(f"sum by ({by_r}) (instance_root:proctree_root_spawned:rate5m{{{ROOT}}})",
           instant=True),
         Q(f"sum by ({by_r}) (instance_root:proctree_root_exited:rate5m{{{ROOT}}})",
           instant=True),
         Q(f"min by ({by_r}) (proctree_root_confidence_exact{{{ROOT}}})", instant=True)],
        width=24, height=8,
        extra={"transformations": [
            {"id": "merge", "options": {}},
            {"id": "organize", "options": {"excludeByName": {"Time": True},
                                           "indexByName": {},
                                           "renameByName": columns}}],
               "overrides": [
                   {"matcher": {"id": "byName", "options": "up"},
                    "properties": [{"id": "mappings", "value": UP_MAPPING}]},
                   {"matcher": {"id": "byName", "options": "tracking"},
                    "properties": [{"id": "mappings", "value": EXACT_MAPPING}]},
                   {"matcher": {"id": "byRegexp", "options": "(spawned|exited)/s"},
                    "properties": [{"id": "unit", "value": "cps"}]},
                   {"matcher": {"id": "byName", "options": "root"},
                    "properties": [{"id": "links", "value": [
                        {"title": "Drill down to ${__data.fields.root}", "url": drill}]}]}]})
    roots = [
        roots_table,
        Panel("timeseries", "Orphans by root",
              "Live members whose fork parent exited (see ProctreeOrphansGrowing).", "short",
              [Q(f'sum by ({by_r}) (proctree_root_processes{{{ROOT}, class="orphaned"}})',
                 "{{instance}} {{root}}")], width=12, extra={"min": 0}),
        Panel("timeseries", "Zombies by root",
              "Exited members not reaped past the grace (see ProctreeZombiesPresent).", "short",
              [Q(f'sum by ({by_r}) (proctree_root_processes{{{ROOT}, class="zombie"}})',
                 "{{instance}} {{root}}")], width=12, extra={"min": 0}),
        Panel("timeseries", "Spawn rate by root",
              "Processes joining each root's tree, short-lived ones included.", "cps",
              [Q(_rate("proctree_root_spawned_total", ROOT, by_r), "{{instance}} {{root}}")],
              width=12, extra={"min": 0}),
        Panel("timeseries", "Exit rate by root", "Processes leaving each root's tree.", "cps",
              [Q(_rate("proctree_root_exited_total", ROOT, by_r), "{{instance}} {{root}}")],
              width=12, extra={"min": 0}),
        Panel("table", "Top roots by CPU",
              "The ten roots whose processes use the most CPU now (cores), short-lived and "
              "orphaned ones included.", "percentunit",
              [Q("topk(10, " + _rate("proctree_root_cpu_seconds_total", ROOT, by_r) + ")",
                 instant=True)],
              width=8, height=8,
              extra={"transformations": [
                  {"id": "organize", "options": {"excludeByName": {"Time": True},
                                                 "indexByName": {},
                                                 "renameByName": {"Value": "CPU"}}}]}),
        Panel("timeseries", "CPU by root",
              "CPU used by each root's processes (1 = one core): exited ones at their exit, "
              "from the kernel's record; live ones from their samples.", "percentunit",
              [Q(_rate("proctree_root_cpu_seconds_total", ROOT, by_r), "{{instance}} {{root}}")],
              width=8, extra={"min": 0}),
        Panel("timeseries", "Memory by root",
              "Resident memory of each root's live processes, summed.", "bytes",
              [Q(f"sum by ({by_r}) (proctree_root_memory_rss_bytes{{{ROOT}}})",
                 "{{instance}} {{root}}")], width=8, extra={"min": 0}),
    ]
    host = [
        Panel("timeseries", "Host processes by state",
              "Every process on the host by /proc state, from the background walk.", "short",
              [Q(f"sum by ({by_i}, state) (proctree_processes{{{INSTANCE}}})",
                 "{{instance}} {{state}}")], width=12, extra={"stack": True, "min": 0}),
        Panel("timeseries", "Host forks and exits", "Processes created and exited on the host.",
              "cps",
              [Q(_rate("proctree_processes_forked_total", INSTANCE, by_i),
                 "{{instance}} forked"),
               Q(_rate("proctree_processes_exited_total", INSTANCE, by_i),
                 "{{instance}} exited")], width=12, extra={"min": 0}),
    ]
    return _dashboard(
        OVERVIEW_UID, "proctree-exporter / Overview",
        "Process trees on every host: the exporter's health, each root's orphans, zombies and "
        "churn, and the host's processes.",
        _layout([("Exporter", exporter), ("Roots", roots), ("Host", host)]), root_multi=True,
        links=[{"title": "Root drill-down", "type": "link", "icon": "dashboard",
                "url": f"/d/{ROOT_UID}/", "includeVars": True, "keepTime": True,
                "targetBlank": False, "tooltip": "", "asDropdown": False, "tags": []}])


def root() -> dict[str, Any]:
    """One root: up, members by class, spawned and exited, restarts, actions, depth, and
    what it costs (CPU, memory, IO, threads, files, switches, faults)."""
    by_r = "job, instance, root"
    stats = [
        Panel("stat", "Up", "Whether a process matching the root's selector is alive.", "none",
              [Q(f"max by ({by_r}) (proctree_root_up{{{ROOT}}})", "{{instance}}")],
              width=3, height=4, extra={"mappings": UP_MAPPING, "graph_mode": "none"}),
        Panel("stat", "Instances", "Live processes matching the selector.", "none",
              [Q(f"sum by ({by_r}) (proctree_root_instances{{{ROOT}}})", "{{instance}}")],
              width=3, height=4),
        Panel("stat", "Members", "Live members of the tree, every class.", "none",
              [Q(f"sum by ({by_r}) (proctree_root_processes{{{ROOT}}})", "{{instance}}")],
              width=4, height=4),
        Panel("stat", "Instance uptime", "Age of the newest live instance.", "s",
              [Q(f"time() - max by ({by_r}) (proctree_root_start_time_seconds{{{ROOT}}})",
                 "{{instance}}")], width=4, height=4, extra={"graph_mode": "none"}),
        Panel("stat", "Restarts in range",
              "Instances replaced by a new identity in the selected time range.", "none",
              [Q(f"sum by ({by_r}) (increase(proctree_root_restarts_total{{{ROOT}}}"
                 "[$__range]))", "{{instance}}")],
              width=4, height=4, extra={"thresholds": ORANGE_ABOVE_0, "graph_mode": "none"}),
        Panel("stat", "Listing truncated",
              "Whether the root has more members than max_members lists (counts stay exact).",
              "none", [Q(f"max by ({by_r}) (proctree_root_truncated{{{ROOT}}})",
                         "{{instance}}")],
              width=3, height=4, extra={"mappings": YES_NO_MAPPING, "graph_mode": "none"}),
        Panel("stat", "Tracking",
              "exact: every live member was placed by a fork event; degraded: /proc placed "
              "some (present before the exporter, a resync after lost events; the API's "
              "confidence_reason says which).", "none",
              [Q(f"min by ({by_r}) (proctree_root_confidence_exact{{{ROOT}}})",
                 "{{instance}}")],
              width=3, height=4, extra={"mappings": EXACT_MAPPING, "graph_mode": "none"}),
    ]
    series = [
        Panel("timeseries", "Members by class",
              "Live members: healthy, orphaned (fork parent exited), zombie (exited, unreaped "
              "past the grace).", "short",
              [Q(f"sum by ({by_r}, class) (proctree_root_processes{{{ROOT}}})",
                 "{{instance}} {{class}}")], width=12, extra={"stack": True, "min": 0}),
        Panel("timeseries", "Spawned and exited",
              "Processes joining and leaving the tree, however short-lived.", "cps",
              [Q(_rate("proctree_root_spawned_total", ROOT, by_r), "{{instance}} spawned"),
               Q(_rate("proctree_root_exited_total", ROOT, by_r), "{{instance}} exited")],
              width=12, extra={"min": 0}),
        Panel("timeseries", "Class changes",
              "Members changing class: orphaned, zombie, exited, pid_reused, restarted.", "cps",
              [Q(_rate("proctree_root_class_changes_total", ROOT, by_r + ", class"),
                 "{{instance}} {{class}}")], width=12, extra={"min": 0}),
        Panel("timeseries", "Restarts and PID reuse",
              "Instances replaced by a new identity, and exited members whose pid went to "
              "another process.", "cps",
              [Q(_rate("proctree_root_restarts_total", ROOT, by_r), "{{instance}} restarts"),
               Q(_rate("proctree_root_pid_reuse_total", ROOT, by_r),
                 "{{instance}} pid reused")], width=12, extra={"min": 0}),
        Panel("timeseries", "Actions",
              "Cleanup signals by action (term, kill, chld) and outcome (sent, dry_run, gone, "
              "identity_changed, failed).", "cps",
              [Q(_rate("proctree_root_actions_total", ROOT, by_r + ", action, outcome"),
                 "{{instance}} {{action}} {{outcome}}")], width=12, extra={"min": 0}),
        Panel("timeseries", "Deepest depth",
              "Generations between an instance and its deepest live member.", "short",
              [Q(f"max by ({by_r}) (proctree_root_max_depth{{{ROOT}}})", "{{instance}}")],
              width=12, extra={"min": 0}),
        Panel("timeseries", "Tombstones", "Exited members kept for the API.", "short",
              [Q(f"sum by ({by_r}) (proctree_root_tombstones{{{ROOT}}})", "{{instance}}")],
              width=12, extra={"min": 0}),
    ]
    cost = [
        Panel("timeseries", "CPU",
              "CPU used by the tree's processes by mode (1 = one core): exited ones from the "
              "kernel's exit record, live ones from their samples.", "percentunit",
              [Q(_rate("proctree_root_cpu_seconds_total", ROOT, by_r + ", mode"),
                 "{{instance}} {{mode}}")], width=12, extra={"stack": True, "min": 0}),
        Panel("timeseries", "Memory",
              "Resident memory of the live processes, summed (and PSS with resources.pss).",
              "bytes",
              [Q(f"sum by ({by_r}) (proctree_root_memory_rss_bytes{{{ROOT}}})",
                 "{{instance}} rss")], width=12, extra={"min": 0}),
        Panel("timeseries", "Storage IO", "Bytes read from and dirtied for storage.", "binBps",
              [Q(_rate("proctree_root_io_bytes_total", ROOT, by_r + ", direction"),
                 "{{instance}} {{direction}}")], width=12, extra={"min": 0}),
        Panel("timeseries", "Threads and open files",
              "Threads and open file descriptors of the live processes.", "short",
              [Q(f"sum by ({by_r}) (proctree_root_threads{{{ROOT}}})", "{{instance}} threads"),
               Q(f"sum by ({by_r}) (proctree_root_open_fds{{{ROOT}}})",
                 "{{instance}} open fds")], width=12, extra={"min": 0}),
        Panel("timeseries", "Context switches and page faults",
              "Per second, by kind.", "cps",
              [Q(_rate("proctree_root_context_switches_total", ROOT, by_r + ", kind"),
                 "{{instance}} {{kind}} switches"),
               Q(_rate("proctree_root_page_faults_total", ROOT, by_r + ", kind"),
                 "{{instance}} {{kind}} faults")], width=24, extra={"min": 0}),
    ]
    return _dashboard(
        ROOT_UID, "proctree-exporter / Root",
        "One process tree: its instances, members by class, churn, restarts and cleanup "
        "actions. Per-process detail: the exporter's /api/v1/roots/NAME.",
        _layout([("Now", stats), ("Over time", series), ("Cost", cost)]), root_multi=False,
        links=[{"title": "Overview", "type": "link", "icon": "dashboard",
                "url": f"/d/{OVERVIEW_UID}/", "includeVars": True, "keepTime": True,
                "targetBlank": False, "tooltip": "", "asDropdown": False, "tags": []}])


def dashboards() -> dict[str, dict[str, Any]]:
    """File name -> dashboard model, for every dashboard this folder ships."""
    return {"proctree-overview.json": overview(), "proctree-root.json": root()}


def render(model: dict[str, Any]) -> str:
    """The committed text of a dashboard."""
    return json.dumps(model, indent=2, ensure_ascii=False) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--check", action="store_true",
                    help="do not write; exit 1 if a committed file differs")
    args = ap.parse_args(argv)
    stale = []
    for name, model in dashboards().items():
        path = HERE / name
        text = render(model)
        if args.check:
            if not path.exists() or path.read_text() != text:
                stale.append(name)
        else:
            path.write_text(text)
    if stale:
        print("stale, run dashboards/generate.py: " + ", ".join(stale), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
