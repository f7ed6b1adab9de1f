#!/usr/bin/env python3
"""Lint the Grafana dashboards in this folder, in the spirit of Grafana's dashboard-linter.

    python3 dashboards/lint.py [FILE.json ...]   # default: every *.json here; exit 1 on problems

Rules (dashboard-linter's names where it has one):

- template-datasource-rule: a `datasource` variable of type datasource, label "Data source",
  for Prometheus.
- template-job-rule, template-instance-rule: `job` and `instance` query variables on
  `${datasource}`, labelled "Job" and "Instance", multi-select with allValue `.+`.
- template-on-time-change-reload-rule: query variables refresh on time range change (2).
- template-label-promql-rule: variable queries are `label_values(selector, label)` over
  known metrics and labels.
- uneditable-rule: the dashboard is not editable.
- panel-datasource-rule: panels and their targets use `${datasource}`.
- panel-title-description-rule, panel-units-rule, panel-no-targets-rule.
- target-rate-interval-rule: every range in a query is `$__rate_interval` (`$__range` is also
  accepted for increase and *_over_time): no fixed windows.
- target-job-rule, target-instance-rule: every selector has `job=~"$job"` and
  `instance=~"$instance"`; and here also `root=~"$root"` on metrics that have a root label.
- target-counter-agg-rule: counters (`_total`) only inside rate, irate or increase.
- Beyond the linter: panel types are current ones (timeseries, stat, table, row); metric and
  label names exist (the exporter's exposition, tests/golden/metrics.prom, plus the recording
  rules of deploy/prometheus/rules.yml); panel ids are unique and panels fit the 24-column grid.

PromQL validity itself is checked by the tests with promtool (a real parser), and every
expression is evaluated against a real Prometheus scraping the real exporter.
"""

from __future__ import annotations

import json
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
GOLDEN = REPO / "tests" / "golden" / "metrics.prom"
RULES = REPO / "deploy" / "prometheus" / "rules.yml"

PANEL_TYPES = {"timeseries", "stat", "table", "row"}
# Grafana unit ids this project may use (a subset of dashboard-linter's list).
UNITS = {"none", "short", "percent", "percentunit", "s", "ms", "µs", "ns", "dtdurations",
         "cps", "ops", "bytes", "decbytes", "binBps", "bool", "bool_yes_no", "bool_on_off",
         "dateTimeFromNow", "string"}
TARGET_LABELS = {"job", "instance"}  # added by Prometheus to every scraped series
COUNTER_FUNCS = {"rate", "irate", "increase"}
RATE_FUNCS = {"rate", "irate"}
KEYWORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "bool", "and",
            "or", "unless", "offset"}
LABEL_LISTS = {"by", "without", "on", "ignoring", "group_left", "group_right"}
AGGREGATIONS = {"sum", "min", "max", "avg", "group", "stddev", "stdvar", "count",
                "count_values", "bottomk", "topk", "quantile"}
VARIABLE = re.compile(r"\$(\w+)|\$\{(\w+)(?::\w+)?\}")

_TOKEN = re.compile(r"""
    \s*(?:
      (?P<str>"(?:[^"\\]|\\.)*"|'(?:[^'\\]|\\.)*')
    | (?P<range>\[[^\]]*\])
    | (?P<dur>(?:[0-9]+(?:ms|[smhdwy]))+(?![A-Za-z0-9_]))
    | (?P<ident>[A-Za-z_:][A-Za-z0-9_:]*)
    | (?P<num>[0-9]+(?:\.[0-9]*)?(?:[eE][-+]?[0-9]+)?)
    | (?P<op>=~|!~|!=|==|>=|<=|[-+*/%^<>=(){},])
    )""", re.VERBOSE)


@dataclass
class Selector:
    """One vector selector of a query, with its context."""

    name: str
    matchers: dict[str, tuple[str, str]]  # label -> (op, value without quotes)
    range: str | None
    call: str | None  # the function or aggregation it is directly inside


@dataclass
class Parsed:
    selectors: list[Selector] = field(default_factory=list)
    grouping: list[str] = field(default_factory=list)  # labels in by/without/on/... lists


def tokenize(expr: str) -> list[tuple[str, str]]:
    """PromQL as (kind, text) tokens; raises ValueError on text it cannot read."""
    out, pos = [], 0
    expr = expr.rstrip()
    while pos < len(expr):
        m = _TOKEN.match(expr, pos)
        if not m or m.end() == pos:
            raise ValueError(f"cannot read PromQL at {expr[pos:pos + 20]!r}")
        kind = m.lastgroup or ""
        out.append((kind, m.group(kind)))
        pos = m.end()
    return out


def parse(expr: str) -> Parsed:
    """The selectors and grouping labels of a PromQL expression (enough for linting)."""
    toks = tokenize(expr)
    res = Parsed()
    calls: list[str | None] = []  # callee of each open parenthesis
    i = 0
    while i < len(toks):
        kind, text = toks[i]
        nxt = toks[i + 1] if i + 1 < len(toks) else ("", "")
        if kind == "ident" and text in LABEL_LISTS and nxt[1] == "(":
            j = i + 2
            while toks[j][1] != ")":
                if toks[j][0] == "ident":
                    res.grouping.append(toks[j][1])
                j += 1
            i = j + 1
            continue
        if kind == "ident" and text in AGGREGATIONS and nxt[1] in ("by", "without"):
            # sum by (a, b) (...): the label list comes before the operand
            j = i + 3
            while toks[j][1] != ")":
                if toks[j][0] == "ident":
                    res.grouping.append(toks[j][1])
                j += 1
            calls.append(text)
            i = j + 2
            continue
        if kind == "ident" and nxt[1] == "(":
            calls.append(text)
            i += 2
            continue
        if kind == "op" and text == "(":
            calls.append(None)
        elif kind == "op" and text == ")":
            calls.pop()
        elif kind == "ident" and text not in KEYWORDS and not (i and toks[i - 1][1] == "offset"):
            matchers: dict[str, tuple[str, str]] = {}
            j = i + 1
            if nxt[1] == "{":
                j = i + 2
                while toks[j][1] != "}":
                    if toks[j][1] == ",":
                        j += 1
                        continue
                    label, op, value = toks[j][1], toks[j + 1][1], toks[j + 2][1]
                    matchers[label] = (op, value[1:-1])
                    j += 3
                j += 1
            rng = None
            if j < len(toks) and toks[j][0] == "range":
                rng = toks[j][1][1:-1]
                j += 1
            res.selectors.append(Selector(text, matchers, rng, calls[-1] if calls else None))
            i = j
            continue
        i += 1
    return res


def known_metrics(golden: Path = GOLDEN, rules: Path = RULES) -> dict[str, dict[str, set[str]]]:
    """Series name -> label -> values seen, from the golden exposition and the recording rules."""
    metrics: dict[str, dict[str, set[str]]] = {}
    sample = re.compile(r"^([A-Za-z_:][A-Za-z0-9_:]*)(?:\{(.*)\})? ")
    pair = re.compile(r'(\w+)="((?:[^"\\]|\\.)*)"')
    for line in golden.read_text().splitlines():
        if line.startswith("#") or not line.strip():
            continue
        m = sample.match(line)
        if m:
            labels = metrics.setdefault(m.group(1), {})
            for k, v in pair.findall(m.group(2) or ""):
                labels.setdefault(k, set()).add(v)
    import yaml  # PyYAML is a dependency of the exporter itself

    for group in yaml.safe_load(rules.read_text())["groups"]:
        for rule in group["rules"]:
            if "record" in rule:
                kept = parse(rule["expr"]).grouping
                metrics[rule["record"]] = {k: set() for k in kept if k not in TARGET_LABELS}
    return metrics


def lint(dash: dict, metrics: dict[str, dict[str, set[str]]]) -> list[str]:
    """Problems with one dashboard model, each prefixed with where it is."""
    problems: list[str] = []
    title = dash.get("title", "?")

    def err(msg: str) -> None:
        problems.append(f"{title}: {msg}")

    variables = {v.get("name"): v for v in dash.get("templating", {}).get("list", [])}
    ds = variables.get("datasource")
    if not ds or ds.get("type") != "datasource" or ds.get("query") != "prometheus":
        err("template-datasource-rule: needs a 'datasource' variable of type datasource "
            "for prometheus")
    elif ds.get("label") != "Data source":
        err("template-datasource-rule: the datasource variable should be labelled 'Data source'")
    for name in ("job", "instance"):
        v = variables.get(name)
        if v is None:
            err(f"template-{name}-rule: missing the {name} variable")
            continue
        if v.get("type") != "query":
            err(f"template-{name}-rule: {name} should be a query variable")
        if v.get("datasource", {}).get("uid") not in ("$datasource", "${datasource}"):
            err(f"template-{name}-rule: {name} should use the datasource variable")
        if v.get("label") != name.capitalize():
            err(f"template-{name}-rule: {name} should be labelled {name.capitalize()!r}")
        if not v.get("multi") or v.get("allValue") != ".+":
            err(f"template-{name}-rule: {name} should be multi-select with allValue '.+'")
    for name, v in variables.items():
        if v.get("type") != "query":
            continue
        if v.get("refresh") != 2:
            err(f"template-on-time-change-reload-rule: {name} should refresh on time change")
        q = v.get("query")
        q = q.get("query") if isinstance(q, dict) else q
        m = re.fullmatch(r"label_values\((.*),\s*(\w+)\)", q or "")
        if not m:
            err(f"template-label-promql-rule: {name}: query {q!r} is not label_values(...)")
            continue
        problems += [f"{title}: variable {name}: {p}"
                     for p in _check_expr(m.group(1), metrics, variables, require_matchers=False)]
        sel = parse(m.group(1)).selectors
        if sel and m.group(2) not in set(metrics.get(sel[0].name, {})) | TARGET_LABELS:
            err(f"template-label-promql-rule: {name}: {sel[0].name} has no label {m.group(2)}")
    if dash.get("editable") is not False:
        err("uneditable-rule: set editable to false (edit the generator instead)")

    ids = set()
    for p in dash.get("panels", []):
        ptitle = p.get("title", "?")

        def perr(msg: str, ptitle: str = ptitle, out: list[str] = problems) -> None:
            out.append(f"{title} / {ptitle}: {msg}")

        if p.get("id") in ids:
            perr(f"duplicate panel id {p.get('id')}")
        ids.add(p.get("id"))
        grid = p.get("gridPos", {})
        if grid.get("x", 0) + grid.get("w", 0) > 24 or grid.get("w", 0) <= 0:
            perr(f"gridPos {grid} does not fit 24 columns")
        kind = p.get("type")
        if kind not in PANEL_TYPES:
            perr(f"panel type {kind!r} is not one of {sorted(PANEL_TYPES)}")
            continue
        if kind == "row":
            continue
        if not p.get("title") or not p.get("description"):
            perr("panel-title-description-rule: needs a title and a description")
        if p.get("datasource", {}).get("uid") != "${datasource}":
            perr("panel-datasource-rule: the panel should use ${datasource}")
        unit = p.get("fieldConfig", {}).get("defaults", {}).get("unit")
        if unit not in UNITS:
            perr(f"panel-units-rule: unit {unit!r} is missing or unknown")
        for o in p.get("fieldConfig", {}).get("overrides", []):
            for prop in o.get("properties", []):
                if prop.get("id") == "unit" and prop.get("value") not in UNITS:
                    perr(f"panel-units-rule: override unit {prop.get('value')!r} is unknown")
        targets = p.get("targets") or []
        if not targets:
            perr("panel-no-targets-rule: no targets")
        for t in targets:
            if t.get("datasource", {}).get("uid") != "${datasource}":
                perr(f"panel-datasource-rule: target {t.get('refId')} should use ${{datasource}}")
            problems += [f"{title} / {ptitle} / {t.get('refId')}: {msg}"
                         for msg in _check_expr(t.get("expr", ""), metrics, variables)]
    return problems


def _check_expr(expr: str, metrics: dict[str, dict[str, set[str]]], variables: dict,
                require_matchers: bool = True) -> list[str]:
    out: list[str] = []
    try:
        parsed = parse(expr)
    except (ValueError, IndexError) as e:
        return [f"target-promql-rule: {e}: {expr}"]
    if not parsed.selectors:
        out.append(f"no metric in {expr!r}")
    labels_here = set(TARGET_LABELS) | {"le"}
    for s in parsed.selectors:
        known = metrics.get(s.name)
        if known is None:
            out.append(f"unknown metric {s.name}")
            continue
        labels_here |= set(known)
        for label, (op, value) in s.matchers.items():
            if label not in known and label not in TARGET_LABELS:
                out.append(f"{s.name} has no label {label}")
            elif (op == "=" and not VARIABLE.search(value) and known.get(label)
                  and value not in known[label]):
                out.append(f"{s.name}{{{label}={value!r}}} matches no value the exporter "
                           f"exposes ({sorted(known[label])})")
        for name in ("job", "instance"):
            if require_matchers and s.matchers.get(name) != ("=~", f"${name}"):
                out.append(f"target-{name}-rule: {s.name} needs {name}=~\"${name}\"")
        if require_matchers and "root" in known and "root" in variables \
                and s.matchers.get("root") != ("=~", "$root"):
            out.append(f"{s.name} needs root=~\"$root\"")
        if s.name.endswith("_total") and (s.range is None or s.call not in COUNTER_FUNCS):
            out.append(f"target-counter-agg-rule: counter {s.name} must be inside rate, irate "
                       "or increase")
        if s.range is not None:
            allowed = {"$__rate_interval"} if s.call in RATE_FUNCS else \
                {"$__rate_interval", "$__range"}
            if s.range not in allowed:
                out.append(f"target-rate-interval-rule: {s.name}[{s.range}] in {s.call}() "
                           f"should use one of {sorted(allowed)}")
    for g in parsed.grouping:
        if g not in labels_here:
            out.append(f"grouping label {g!r} is on none of the metrics of {expr!r}")
    return out


def main(argv: list[str]) -> int:
    files = [Path(a) for a in argv] or sorted(HERE.glob("*.json"))
    metrics = known_metrics()
    problems = []
    for f in files:
        problems += lint(json.loads(f.read_text()), metrics)
    for p in problems:
        print(p)
    print(f"{len(files)} dashboards, {len(problems)} problems", file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
