#!/usr/bin/env python3
"""Generate the Grafana dashboards in this folder from code, with Grafana's Python builder.

    .venv/bin/python dashboards/generate.py          # rewrite proctree-overview.json, ...-root.json
    .venv/bin/python dashboards/generate.py --check  # exit 1 if the committed JSON differs

The JSON files are committed so they can be imported as they are (Grafana: Dashboards >
New > Import, or file provisioning); this script is their source. Edit here, regenerate, and
run `python3 dashboards/lint.py`.

The models come from grafana-foundation-sdk (Grafana's own builders, generated from its
dashboard schema), the Grafana 10.4 flavour of it, pinned in pyproject.toml's `test` extra
(`scripts/bootstrap test` installs it). Its versions carry an epoch (the build time) before
the Grafana version they follow, so the newest upload of a batch is the 10.1 flavour: an
unpinned install gets the wrong schema, hence the exact pin and the check in `_check_sdk`.

Every query filters on the `job` and `instance` variables (and `root` where the metric has
one), takes its data source from the `datasource` variable, and uses `$__rate_interval` in
rates, so the dashboards pass the rules of Grafana's dashboard-linter (see lint.py).
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

try:
    from grafana_foundation_sdk.builders import common as cb
    from grafana_foundation_sdk.builders import dashboard as db
    from grafana_foundation_sdk.builders import prometheus, stat, table, timeseries
    from grafana_foundation_sdk.cog.encoder import JSONEncoder
    from grafana_foundation_sdk.models import common as cm
    from grafana_foundation_sdk.models import dashboard as dm
    from grafana_foundation_sdk.models import prometheus as pm
except ImportError as e:  # pragma: no cover - a setup problem, said plainly
    raise SystemExit("dashboards/generate.py needs grafana-foundation-sdk: run scripts/bootstrap "
                     "test, then .venv/bin/python dashboards/generate.py") from e

Builder = timeseries.Panel | stat.Panel | table.Panel

HERE = Path(__file__).resolve().parent
SDK = "1769699796!10.4.0"  # grafana-foundation-sdk for Grafana 10.4; the same pin as pyproject.toml
# Grafana 10.4 / 11. The SDK's schema still defaults to 36; what we emit is already in the
# shape of 39 (legend showLegend, table cellHeight), so Grafana migrates nothing on import.
SCHEMA_VERSION = 39
DATASOURCE = dm.DataSourceRef(type_val="prometheus", uid="${datasource}")
INSTANCE = 'job=~"$job", instance=~"$instance"'
ROOT = INSTANCE + ', root=~"$root"'
OVERVIEW_UID = "proctree-overview"
ROOT_UID = "proctree-root"


@dataclass(frozen=True, slots=True)
class Q:
    """One query of a panel."""

    expr: str
    legend: str = ""
    instant: bool = False


def _targets(panel: Builder, queries: list[Q], *, table_format: bool = False) -> None:
    for i, q in enumerate(queries):
        t = (prometheus.Dataquery().ref_id(chr(ord("A") + i)).datasource(DATASOURCE)
             .editor_mode(pm.QueryEditorMode.CODE).expr(q.expr)
             .legend_format(q.legend or "__auto"))
        t = t.instant() if q.instant else t.range()
        if table_format:
            t.format(pm.PromQueryFormat.TABLE)
        panel.with_target(t)


def _mappings(values: dict[int, tuple[str, str]]) -> list[dm.ValueMapping]:
    """Value mappings: number -> (text, colour)."""
    return [dm.ValueMap(options={str(k): dm.ValueMappingResult(text=text, color=color, index=i)
                                 for i, (k, (text, color)) in enumerate(sorted(values.items()))})]


UP_MAPPING = _mappings({0: ("down", "red"), 1: ("up", "green")})
READY_MAPPING = _mappings({0: ("starting", "orange"), 1: ("ready", "green")})
YES_NO_MAPPING = _mappings({0: ("no", "green"), 1: ("yes", "orange")})
EXACT_MAPPING = _mappings({0: ("degraded", "orange"), 1: ("exact", "green")})


def _thresholds(*steps: tuple[float | None, str]) -> db.ThresholdsConfig:
    return (db.ThresholdsConfig().mode(dm.ThresholdsMode.ABSOLUTE)
            .steps([dm.Threshold(value=v, color=c) for v, c in steps]))


GREEN = ((None, "green"),)
RED_ABOVE_0 = ((None, "green"), (1, "red"))
ORANGE_ABOVE_0 = ((None, "green"), (1, "orange"))


def _common(panel: Builder, title: str, description: str, unit: str, width: int, height: int,
            thresholds: tuple[tuple[float | None, str], ...],
            mappings: list[dm.ValueMapping]) -> None:
    (panel.title(title).description(description).datasource(DATASOURCE)
     .span(width).height(height).unit(unit).thresholds(_thresholds(*thresholds))
     .mappings(mappings))


def series(title: str, description: str, unit: str, queries: list[Q], *, width: int = 12,
           height: int = 8, min_val: float | None = None, stack: bool = False) -> Builder:
    """A time series panel: lines, every series in the tooltip, legend below."""
    p = timeseries.Panel()
    _common(p, title, description, unit, width, height, GREEN, [])
    (p.color_scheme(db.FieldColor().mode(dm.FieldColorModeId.PALETTE_CLASSIC))
     .draw_style(cm.GraphDrawStyle.LINE).line_width(1).fill_opacity(10)
     .show_points(cm.VisibilityMode.NEVER).span_nulls(False)
     .stacking(cb.StackingConfig().mode(cm.StackingMode.NORMAL if stack
                                        else cm.StackingMode.NONE).group("A"))
     .legend(cb.VizLegendOptions().display_mode(cm.LegendDisplayMode.LIST)
             .placement(cm.LegendPlacement.BOTTOM).show_legend(True))
     .tooltip(cb.VizTooltipOptions().mode(cm.TooltipDisplayMode.MULTI)
              .sort(cm.SortOrder.DESCENDING)))
    if min_val is not None:
        p.min(min_val)
    _targets(p, queries)
    return p


def single(title: str, description: str, unit: str, queries: list[Q], *, width: int,
           height: int = 4, thresholds: tuple[tuple[float | None, str], ...] = GREEN,
           mappings: list[dm.ValueMapping] | None = None, graph: bool = True,
           text_mode: cm.BigValueTextMode = cm.BigValueTextMode.AUTO) -> Builder:
    """A stat panel: the last value, coloured by thresholds or mappings."""
    p = stat.Panel()
    _common(p, title, description, unit, width, height, thresholds, mappings or [])
    (p.color_scheme(db.FieldColor().mode(dm.FieldColorModeId.THRESHOLDS))
     .reduce_options(cb.ReduceDataOptions().calcs(["lastNotNull"]).fields("").values(False))
     .color_mode(cm.BigValueColorMode.VALUE)
     .graph_mode(cm.BigValueGraphMode.AREA if graph else cm.BigValueGraphMode.NONE)
     .justify_mode(cm.BigValueJustifyMode.AUTO).orientation(cm.VizOrientation.AUTO)
     .text_mode(text_mode))
    _targets(p, queries)
    return p


def grid(title: str, description: str, unit: str, queries: list[Q], *, width: int,
         height: int = 8, rename: dict[str, str], merge: bool = False) -> table.Panel:
    """A table of instant queries, one row per series; `rename` names its value columns."""
    p = table.Panel()
    _common(p, title, description, unit, width, height, GREEN, [])
    (p.color_scheme(db.FieldColor().mode(dm.FieldColorModeId.THRESHOLDS))
     .show_header(True).cell_height(cm.TableCellHeight.SM)
     .footer(cb.TableFooterOptions().show(False).reducer(["sum"])))
    if merge:
        p.with_transformation(dm.DataTransformerConfig(id_val="merge", options={}))
    p.with_transformation(dm.DataTransformerConfig(id_val="organize", options={
        "excludeByName": {"Time": True}, "indexByName": {}, "renameByName": rename}))
    _targets(p, queries, table_format=True)
    return p


def _layout(dash: db.Dashboard, sections: list[tuple[str, list[Builder]]]) -> None:
    """Rows of panels, filled left to right, 24 columns wide: a panel that does not fit goes
    to the next line. (The SDK's own placement wraps only after a line is full, so it would
    put a 12-wide panel at x=16; every position here is explicit.)"""
    pid, y = 1, 0
    for title, panels in sections:
        dash.with_row(db.Row(title).id(pid).collapsed(False)
                      .grid_pos(dm.GridPos(h=1, w=24, x=0, y=y)))
        pid, y = pid + 1, y + 1
        x, line_h = 0, 0
        for p in panels:
            pos = p.build().grid_pos
            assert pos is not None
            if x + pos.w > 24:
                x, y, line_h = 0, y + line_h, 0
            pos.x, pos.y = x, y
            dash.with_panel(p.id(pid))
            pid, x, line_h = pid + 1, x + pos.w, max(line_h, pos.h)
        y += line_h


def _query_var(name: str, query: str, *, multi: bool = True) -> db.QueryVariable:
    v = (db.QueryVariable(name).label(name.capitalize()).datasource(DATASOURCE)
         .query({"qryType": 1, "query": query,
                 "refId": "PrometheusVariableQueryEditor-VariableQuery"})
         .refresh(dm.VariableRefresh.ON_TIME_RANGE_CHANGED)  # roots come and go
         .multi(multi).include_all(multi).options([]).regex("")
         .sort(dm.VariableSort.ALPHABETICAL_ASC).hide(dm.VariableHide.DONT_HIDE))
    return v.all_value(".+") if multi else v


def _datasource_var() -> db.DatasourceVariable:
    v = (db.DatasourceVariable("datasource").label("Data source").type("prometheus")
         .regex("").hide(dm.VariableHide.DONT_HIDE))
    model = v.build()  # the model has these, the builder has no methods for them
    model.refresh, model.options = dm.VariableRefresh.ON_DASHBOARD_LOAD, []
    return v


def _dashboard(uid: str, title: str, description: str, *, root_multi: bool,
               link: tuple[str, str], sections: list[tuple[str, list[Builder]]]
               ) -> dict[str, Any]:
    dash = (db.Dashboard(title).uid(uid).description(description).tags(["proctree"])
            .readonly().tooltip(dm.DashboardCursorSync.CROSSHAIR).fiscal_year_start_month(0)
            .live_now(False).refresh("30s").time("now-6h", "now")
            .timezone("").version(1)
            .annotation(db.AnnotationQuery().built_in(1).name("Annotations & Alerts")
                        .datasource(dm.DataSourceRef(type_val="grafana", uid="-- Grafana --"))
                        .enable(True).hide(True).icon_color("rgba(0, 211, 255, 1)")
                        .type("dashboard"))
            .link(db.DashboardLink(link[0]).type(dm.DashboardLinkType.LINK).icon("dashboard")
                  .url(f"/d/{link[1]}/").include_vars(True).keep_time(True)
                  .target_blank(False).tooltip("").as_dropdown(False).tags([]))
            .with_variable(_datasource_var())
            .with_variable(_query_var("job", "label_values(proctree_build_info, job)"))
            .with_variable(_query_var(
                "instance", 'label_values(proctree_build_info{job=~"$job"}, instance)'))
            .with_variable(_query_var(
                "root", f"label_values(proctree_root_up{{{INSTANCE}}}, root)",
                multi=root_multi)))
    _layout(dash, sections)
    model = dash.build()
    model.schema_version = SCHEMA_VERSION  # no builder method for it
    # through the SDK's encoder once, so the model is plain JSON from here on
    out: dict[str, Any] = json.loads(json.dumps(model, cls=JSONEncoder))
    for v in out["templating"]["list"]:
        if v["type"] == "query":
            # the text Grafana lists for the query: a field the SDK's variable model lacks
            v["definition"] = v["query"]["query"]
    return out


def _rate(metric: str, sel: str, by: str) -> str:
    return f"sum by ({by}) (rate({metric}{{{sel}}}[$__rate_interval]))"


def overview() -> dict[str, Any]:
    """Per instance: source, events, loss, resyncs, roots; per root: orphans, zombies, churn,
    CPU and memory."""
    by_i = "job, instance"
    by_r = "job, instance, root"
    exporter = [
        single("Event source",
               "Where events come from: netlink (the kernel's proc connector: every process, "
               "however short-lived) or procfs (polling fallback: misses short-lived ones).",
               "none", [Q(f"proctree_source_info{{{INSTANCE}}}", "{{instance}}: {{source}}")],
               width=6, text_mode=cm.BigValueTextMode.NAME, graph=False),
        single("Ready", "1 once the tree is seeded from /proc and the roots attached.",
               "none", [Q(f"proctree_ready{{{INSTANCE}}}", "{{instance}}")], width=6,
               mappings=READY_MAPPING, graph=False),
        single("Roots up", "Selected roots with at least one live instance.", "none",
               [Q(f"sum by ({by_i}) (proctree_root_up{{{ROOT}}})", "{{instance}}")], width=6),
        single("Roots down",
               "Selected roots with no live instance (see ProctreeRootDown).",
               "none",
               [Q(f"sum by ({by_i}) (1 - proctree_root_up{{{ROOT}}})", "{{instance}}")],
               width=6, thresholds=RED_ABOVE_0),
        series("Events per second",
               "Proc connector events received, by type.", "cps",
               [Q(_rate("proctree_events_total", INSTANCE, by_i + ", type"),
                  "{{instance}} {{type}}")], width=8),
        series("Lost events",
               "Events the kernel dropped for the exporter, and receive buffer overruns. Each "
               "loss triggers a resync from /proc (see ProctreeEventsLost).", "cps",
               [Q(_rate("proctree_events_lost_total", INSTANCE, by_i), "{{instance}} lost"),
                Q(_rate("proctree_overruns_total", INSTANCE, by_i), "{{instance}} overruns")],
               width=8, min_val=0),
        series("Resyncs", "Resyncs of the tree from /proc after detected loss, by reason.",
               "cps",
               [Q(_rate("proctree_resyncs_total", INSTANCE, by_i + ", reason"),
                  "{{instance}} {{reason}}")], width=8, min_val=0),
        series("Event lag (p99)",
               "Kernel event timestamp to event applied to the tree, 99th percentile.", "s",
               [Q("histogram_quantile(0.99, " + _rate("proctree_event_lag_seconds_bucket",
                                                       INSTANCE, by_i + ", le") + ")",
                  "{{instance}}")], width=8),
        series("Collector CPU", "CPU used by the collector thread.", "percentunit",
               [Q(_rate("proctree_collector_cpu_seconds_total", INSTANCE, by_i),
                  "{{instance}}")], width=8, min_val=0),
        series("Tree size", "Processes in the tree (live and exited), exited ones kept as "
               "tombstones, and the node budget (tree.max_nodes).", "short",
               [Q(f"sum by ({by_i}) (proctree_tree_nodes{{{INSTANCE}}})", "{{instance}} nodes"),
                Q(f"sum by ({by_i}) (proctree_tree_tombstones{{{INSTANCE}}})",
                  "{{instance}} tombstones"),
                Q(f"sum by ({by_i}) (proctree_tree_capacity{{{INSTANCE}}})",
                  "{{instance}} capacity")], width=8),
        series("Event stream clients",
               "Clients following /api/v1/events (the tree page, watch --url, your programs), "
               "and the events written to them.", "short",
               [Q(f"sum by ({by_i}) (proctree_event_streams_open{{{INSTANCE}}})",
                  "{{instance}} open"),
                Q(_rate("proctree_event_stream_events_sent_total", INSTANCE, by_i),
                  "{{instance}} events/s")], width=12, min_val=0),
        series("Event stream clients dropped",
               "Stream clients cut off because they fell more than 1 MiB behind (slow; they "
               "resume with their last id), refused beyond web.max_streams (limit), or ended "
               "by a shutdown.", "cps",
               [Q(_rate("proctree_event_stream_clients_dropped_total", INSTANCE,
                        by_i + ", reason"), "{{instance}} {{reason}}")],
               width=12, min_val=0),
    ]
    columns = {"Value #A": "up", "Value #B": "members", "Value #C": "orphaned",
               "Value #D": "zombie", "Value #E": "spawned/s", "Value #F": "exited/s",
               "Value #G": "tracking"}
    drill = (f"/d/{ROOT_UID}/?var-datasource=${{datasource}}&var-job=${{__data.fields.job}}"
             "&var-instance=${__data.fields.instance}&var-root=${__data.fields.root}"
             "&${__url_time_range}")
    roots_table = grid(
        "Roots",
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
        width=24, rename=columns, merge=True)
    (roots_table
     .override_by_name("up", [dm.DynamicConfigValue(id_val="mappings", value=UP_MAPPING)])
     .override_by_name("tracking",
                       [dm.DynamicConfigValue(id_val="mappings", value=EXACT_MAPPING)])
     .override_by_regexp("(spawned|exited)/s", [dm.DynamicConfigValue(id_val="unit",
                                                                      value="cps")])
     # a data link ({title, url}): not the SDK's DashboardLink, which is a dashboard's link
     .override_by_name("root", [dm.DynamicConfigValue(id_val="links", value=[
         {"title": "Drill down to ${__data.fields.root}", "url": drill}])]))
    roots = [
        roots_table,
        series("Orphans by root",
               "Live members whose fork parent exited (see ProctreeOrphansGrowing).", "short",
               [Q(f'sum by ({by_r}) (proctree_root_processes{{{ROOT}, class="orphaned"}})',
                  "{{instance}} {{root}}")], min_val=0),
        series("Zombies by root",
               "Exited members not reaped past the grace (see ProctreeZombiesPresent).",
               "short",
               [Q(f'sum by ({by_r}) (proctree_root_processes{{{ROOT}, class="zombie"}})',
                  "{{instance}} {{root}}")], min_val=0),
        series("Spawn rate by root",
               "Processes joining each root's tree, short-lived ones included.", "cps",
               [Q(_rate("proctree_root_spawned_total", ROOT, by_r), "{{instance}} {{root}}")],
               min_val=0),
        series("Exit rate by root", "Processes leaving each root's tree.", "cps",
               [Q(_rate("proctree_root_exited_total", ROOT, by_r), "{{instance}} {{root}}")],
               min_val=0),
        grid("Top roots by CPU",
             "The ten roots whose processes use the most CPU now (cores), short-lived and "
             "orphaned ones included.", "percentunit",
             [Q("topk(10, " + _rate("proctree_root_cpu_seconds_total", ROOT, by_r) + ")",
                instant=True)],
             width=8, rename={"Value": "CPU"}),
        series("CPU by root",
               "CPU used by each root's processes (1 = one core): exited ones at their exit, "
               "from the kernel's record; live ones from their samples.", "percentunit",
               [Q(_rate("proctree_root_cpu_seconds_total", ROOT, by_r),
                  "{{instance}} {{root}}")], width=8, min_val=0),
        series("Memory by root",
               "Resident memory of each root's live processes, summed.", "bytes",
               [Q(f"sum by ({by_r}) (proctree_root_memory_rss_bytes{{{ROOT}}})",
                  "{{instance}} {{root}}")], width=8, min_val=0),
    ]
    host = [
        series("Host processes by state",
               "Every process on the host by /proc state, from the background walk.", "short",
               [Q(f"sum by ({by_i}, state) (proctree_processes{{{INSTANCE}}})",
                  "{{instance}} {{state}}")], stack=True, min_val=0),
        series("Host forks and exits", "Processes created and exited on the host.", "cps",
               [Q(_rate("proctree_processes_forked_total", INSTANCE, by_i),
                  "{{instance}} forked"),
                Q(_rate("proctree_processes_exited_total", INSTANCE, by_i),
                  "{{instance}} exited")], min_val=0),
    ]
    return _dashboard(
        OVERVIEW_UID, "proctree-exporter / Overview",
        "Process trees on every host: the exporter's health, each root's orphans, zombies and "
        "churn, and the host's processes.", root_multi=True,
        link=("Root drill-down", ROOT_UID),
        sections=[("Exporter", exporter), ("Roots", roots), ("Host", host)])


def root() -> dict[str, Any]:
    """One root: up, members by class, spawned and exited, restarts, actions, depth, and
    what it costs (CPU, memory, IO, threads, files, switches, faults)."""
    by_r = "job, instance, root"
    stats = [
        single("Up", "Whether a process matching the root's selector is alive.", "none",
               [Q(f"max by ({by_r}) (proctree_root_up{{{ROOT}}})", "{{instance}}")],
               width=3, mappings=UP_MAPPING, graph=False),
        single("Instances", "Live processes matching the selector.", "none",
               [Q(f"sum by ({by_r}) (proctree_root_instances{{{ROOT}}})", "{{instance}}")],
               width=3),
        single("Members", "Live members of the tree, every class.", "none",
               [Q(f"sum by ({by_r}) (proctree_root_processes{{{ROOT}}})", "{{instance}}")],
               width=4),
        single("Instance uptime", "Age of the newest live instance.", "s",
               [Q(f"time() - max by ({by_r}) (proctree_root_start_time_seconds{{{ROOT}}})",
                  "{{instance}}")], width=4, graph=False),
        single("Restarts in range",
               "Instances replaced by a new identity in the selected time range.", "none",
               [Q(f"sum by ({by_r}) (increase(proctree_root_restarts_total{{{ROOT}}}"
                  "[$__range]))", "{{instance}}")],
               width=4, thresholds=ORANGE_ABOVE_0, graph=False),
        single("Listing truncated",
               "Whether the root has more members than max_members lists (counts stay exact).",
               "none", [Q(f"max by ({by_r}) (proctree_root_truncated{{{ROOT}}})",
                          "{{instance}}")],
               width=3, mappings=YES_NO_MAPPING, graph=False),
        single("Tracking",
               "exact: every live member was placed by a fork event; degraded: /proc placed "
               "some (present before the exporter, a resync after lost events; the API's "
               "confidence_reason says which).", "none",
               [Q(f"min by ({by_r}) (proctree_root_confidence_exact{{{ROOT}}})",
                  "{{instance}}")],
               width=3, mappings=EXACT_MAPPING, graph=False),
    ]
    over_time = [
        series("Members by class",
               "Live members: healthy, orphaned (fork parent exited), zombie (exited, unreaped "
               "past the grace).", "short",
               [Q(f"sum by ({by_r}, class) (proctree_root_processes{{{ROOT}}})",
                  "{{instance}} {{class}}")], stack=True, min_val=0),
        series("Spawned and exited",
               "Processes joining and leaving the tree, however short-lived.", "cps",
               [Q(_rate("proctree_root_spawned_total", ROOT, by_r), "{{instance}} spawned"),
                Q(_rate("proctree_root_exited_total", ROOT, by_r), "{{instance}} exited")],
               min_val=0),
        series("Class changes",
               "Members changing class: orphaned, zombie, exited, pid_reused, restarted.", "cps",
               [Q(_rate("proctree_root_class_changes_total", ROOT, by_r + ", class"),
                  "{{instance}} {{class}}")], min_val=0),
        series("Restarts and PID reuse",
               "Instances replaced by a new identity, and exited members whose pid went to "
               "another process.", "cps",
               [Q(_rate("proctree_root_restarts_total", ROOT, by_r), "{{instance}} restarts"),
                Q(_rate("proctree_root_pid_reuse_total", ROOT, by_r),
                  "{{instance}} pid reused")], min_val=0),
        series("Actions",
               "Cleanup signals by action (term, kill, chld) and outcome (sent, dry_run, gone, "
               "identity_changed, failed).", "cps",
               [Q(_rate("proctree_root_actions_total", ROOT, by_r + ", action, outcome"),
                  "{{instance}} {{action}} {{outcome}}")], min_val=0),
        series("Deepest depth",
               "Generations between an instance and its deepest live member.", "short",
               [Q(f"max by ({by_r}) (proctree_root_max_depth{{{ROOT}}})", "{{instance}}")],
               min_val=0),
        series("Tombstones", "Exited members kept for the API.", "short",
               [Q(f"sum by ({by_r}) (proctree_root_tombstones{{{ROOT}}})", "{{instance}}")],
               min_val=0),
    ]
    cost = [
        series("CPU",
               "CPU used by the tree's processes by mode (1 = one core): exited ones from the "
               "kernel's exit record, live ones from their samples.", "percentunit",
               [Q(_rate("proctree_root_cpu_seconds_total", ROOT, by_r + ", mode"),
                  "{{instance}} {{mode}}")], stack=True, min_val=0),
        series("Memory",
               "Resident memory of the live processes, summed (and PSS with resources.pss).",
               "bytes",
               [Q(f"sum by ({by_r}) (proctree_root_memory_rss_bytes{{{ROOT}}})",
                  "{{instance}} rss")], min_val=0),
        series("Storage IO", "Bytes read from and dirtied for storage.", "binBps",
               [Q(_rate("proctree_root_io_bytes_total", ROOT, by_r + ", direction"),
                  "{{instance}} {{direction}}")], min_val=0),
        series("Threads and open files",
               "Threads and open file descriptors of the live processes.", "short",
               [Q(f"sum by ({by_r}) (proctree_root_threads{{{ROOT}}})", "{{instance}} threads"),
                Q(f"sum by ({by_r}) (proctree_root_open_fds{{{ROOT}}})",
                  "{{instance}} open fds")], min_val=0),
        series("Context switches and page faults",
               "Per second, by kind.", "cps",
               [Q(_rate("proctree_root_context_switches_total", ROOT, by_r + ", kind"),
                  "{{instance}} {{kind}} switches"),
                Q(_rate("proctree_root_page_faults_total", ROOT, by_r + ", kind"),
                  "{{instance}} {{kind}} faults")], width=24, min_val=0),
    ]
    return _dashboard(
        ROOT_UID, "proctree-exporter / Root",
        "One process tree: its instances, members by class, churn, restarts and cleanup "
        "actions. Per-process detail: the exporter's /api/v1/roots/NAME.", root_multi=False,
        link=("Overview", OVERVIEW_UID),
        sections=[("Now", stats), ("Over time", over_time), ("Cost", cost)])


def _check_sdk() -> None:
    """Another SDK flavour emits other defaults: fail with the fix rather than a diff."""
    installed = metadata.version("grafana-foundation-sdk")
    if installed != SDK:
        raise SystemExit(f"grafana-foundation-sdk {installed} is installed, the dashboards are "
                         f"made with {SDK}: pip install 'grafana-foundation-sdk=={SDK}'")


def dashboards() -> dict[str, dict[str, Any]]:
    """File name -> dashboard model, for every dashboard this folder ships."""
    _check_sdk()
    return {"proctree-overview.json": overview(), "proctree-root.json": root()}


def render(model: dict[str, Any]) -> str:
    """The committed text of a dashboard: keys sorted, so an SDK update that only reorders
    its output changes nothing here."""
    return json.dumps(model, indent=2, sort_keys=True, ensure_ascii=False) + "\n"


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
        print("stale, run .venv/bin/python dashboards/generate.py: " + ", ".join(stale),
              file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
