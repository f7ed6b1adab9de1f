"""/metrics with each root's lines kept until it changes: the same bytes as prometheus_client.

The served body must be exactly what prometheus_client writes for the same families
(the golden file pins that text), whichever roots changed since the last scrape, and
whatever concurrent scrapes do to the kept lines.
"""

from __future__ import annotations

import gzip
import itertools
import re
import sys
import threading
from collections.abc import Callable, Iterable
from dataclasses import replace
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client import make_wsgi_app as prometheus_wsgi_app
from prometheus_client.metrics_core import Metric
from prometheus_client.openmetrics.exposition import generate_latest as generate_openmetrics
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.registry import Collector

from proctree_exporter.export import exposition
from proctree_exporter.export.prometheus import (
    ROOT_FAMILIES,
    SnapshotCollector,
    families,
)
from proctree_exporter.snapshot import Snapshot

from .test_metrics_golden import GOLDEN, fixed_snapshot

TEXT = exposition.negotiate(None)
OPENMETRICS = exposition.negotiate("application/openmetrics-text; version=1.0.0")
# what Prometheus 2.x sends: OpenMetrics first
PROMETHEUS_ACCEPT = ("application/openmetrics-text;version=1.0.0,application/openmetrics-text;"
                     "version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1")
DURATION = (b"# HELP proctree_scrape_duration_seconds Time to snapshot the state and build "
            b"the families above.\n# TYPE proctree_scrape_duration_seconds gauge\n"
            b"proctree_scrape_duration_seconds 0.0\n")


def serving(take: Callable[[], Snapshot]) -> tuple[CollectorRegistry, SnapshotCollector]:
    """A registry as the daemon has it, with a clock that stands still (the scrape
    duration is then always 0.0)."""
    registry = CollectorRegistry(auto_describe=False)
    collector = SnapshotCollector(take, clock=lambda: 0.0)
    registry.register(collector)
    return registry, collector


def many_roots(n: int = 100) -> Snapshot:
    """The golden snapshot with ``n`` roots, alternately like its two."""
    base = fixed_snapshot()
    a, b = base.roots
    return replace(base, roots=tuple(replace(b if i % 2 else a, name=f"root-{i:03d}")
                                     for i in range(n)))


def test_rendered_exposition_is_the_golden_file() -> None:
    registry, _ = serving(fixed_snapshot)
    assert TEXT is not None
    body = exposition.render(registry, TEXT)
    assert body == GOLDEN.read_bytes() + DURATION
    assert body == generate_latest(registry)


def test_rendered_openmetrics_is_prometheus_clients() -> None:
    registry, _ = serving(fixed_snapshot)
    assert OPENMETRICS is not None and OPENMETRICS.openmetrics
    body = exposition.render(registry, OPENMETRICS)
    assert body == generate_openmetrics(registry)
    assert body.endswith(b"# EOF\n") and body.count(b"# EOF") == 1


def test_kept_families_equal_the_plain_ones_sample_for_sample() -> None:
    snap = fixed_snapshot()
    _, collector = serving(lambda: snap)
    collected = list(collector.collect())
    assert collected[:-1] == list(families(snap))  # Metric equality: names, types, samples
    assert collected[-1].name == "proctree_scrape_duration_seconds"


def test_without_roots_every_root_family_is_there_empty() -> None:
    base = fixed_snapshot()
    assert base.resources is not None
    snap = replace(base, roots=(), resources=base.resources._replace(roots=()))
    registry, collector = serving(lambda: snap)
    assert TEXT is not None
    body = exposition.render(registry, TEXT)
    assert body == generate_latest(registry)
    assert b"# TYPE proctree_root_up gauge" in body and b'root="' not in body
    assert list(collector.collect())[:-1] == list(families(snap))


def test_only_the_changed_root_is_rendered_again() -> None:
    snap = many_roots()
    registry, collector = serving(lambda: snap)
    assert TEXT is not None
    first = exposition.render(registry, TEXT)
    assert collector.roots.rendered == 100
    assert exposition.render(registry, TEXT) == first
    assert collector.roots.rendered == 100  # nothing changed: every line was kept

    roots = list(snap.roots)
    roots[7] = replace(roots[7], spawned_total=roots[7].spawned_total + 5, up=not roots[7].up,
                       classes={**roots[7].classes, "healthy": 4})
    snap = replace(snap, roots=tuple(roots))
    second = exposition.render(registry, TEXT)
    assert collector.roots.rendered == 101
    assert second == generate_latest(registry)
    changed = set(first.splitlines()) ^ set(second.splitlines())
    assert len(changed) == 2 * 3  # up, spawned_total, processes{class="healthy"}: old and new
    assert all(b'root="root-007"' in line for line in changed), changed


def test_roots_added_and_removed_appear_and_vanish_at_once() -> None:
    snap = many_roots(10)
    registry, collector = serving(lambda: snap)
    assert TEXT is not None
    exposition.render(registry, TEXT)
    snap = replace(snap, roots=(*snap.roots[1:], replace(snap.roots[0], name="newcomer")))
    body = exposition.render(registry, TEXT)
    assert body == generate_latest(registry)
    assert b'root="root-000"' not in body and b'root="newcomer"' in body
    assert collector.roots.rendered == 11  # the newcomer only


@settings(max_examples=60, deadline=None)
@given(st.lists(st.text(st.characters(blacklist_categories=("Cs",)), min_size=1, max_size=12),
                min_size=1, max_size=4, unique=True))
def test_any_root_name_is_escaped_as_prometheus_client_does(names: list[str]) -> None:
    a, b = fixed_snapshot().roots
    snap = replace(fixed_snapshot(), roots=tuple(replace(b if i % 2 else a, name=name)
                                                 for i, name in enumerate(names)))
    registry, _ = serving(lambda: snap)
    assert TEXT is not None and OPENMETRICS is not None
    assert exposition.render(registry, TEXT) == generate_latest(registry)
    assert exposition.render(registry, OPENMETRICS) == generate_openmetrics(registry)


def test_every_root_family_has_a_legacy_name() -> None:
    # sample_line writes names as they are; the escaping schemes negotiate admits agree
    for spec in ROOT_FAMILIES:
        for name in (spec.name, *spec.labels):
            assert re.fullmatch(r"[a-zA-Z_][a-zA-Z0-9_]*", name), name


@pytest.mark.parametrize(("accept", "openmetrics"), [
    (None, False),
    ("text/plain", False),
    ("text/plain;version=0.0.4", False),
    (PROMETHEUS_ACCEPT, True),
    ("application/openmetrics-text", True),
    ("application/openmetrics-text; version=1.0.0; escaping=allow-utf-8", True),
    ("application/openmetrics-text; version=1.0.0; escaping=dots", None),
    ("application/openmetrics-text; version=1.0.0; escaping=values", None),
    ("text/plain; version=1.0.0; escaping=dots", None),
])
def test_negotiation_renders_only_formats_written_alike(accept: str | None,
                                                       openmetrics: bool | None) -> None:
    fmt = exposition.negotiate(accept)
    assert (fmt.openmetrics if fmt is not None else None) == openmetrics


def call(app: Callable[..., Iterable[bytes]], accept: str | None = None,
         encoding: str | None = None, query: str = "") -> tuple[str, dict[str, str], bytes]:
    environ: dict[str, Any] = {"REQUEST_METHOD": "GET", "PATH_INFO": "/metrics",
                               "QUERY_STRING": query}
    if accept is not None:
        environ["HTTP_ACCEPT"] = accept
    if encoding is not None:
        environ["HTTP_ACCEPT_ENCODING"] = encoding
    got: dict[str, Any] = {}

    def start_response(status: str, headers: list[tuple[str, str]]) -> None:
        got.update(status=status, headers=dict(headers))

    body = b"".join(app(environ, start_response))
    if got["headers"].get("Content-Encoding") == "gzip":
        body = gzip.decompress(body)
    return got["status"], got["headers"], body


@pytest.mark.parametrize(("accept", "encoding", "query"), [
    (None, None, ""),
    (None, "gzip", ""),
    (PROMETHEUS_ACCEPT, "gzip", ""),
    ("application/openmetrics-text; version=1.0.0", None, ""),
    ("application/openmetrics-text; version=1.0.0; escaping=dots", None, ""),
    (None, None, "name[]=proctree_root_up&name[]=proctree_build_info"),
])
def test_the_app_answers_as_prometheus_clients_would(accept: str | None, encoding: str | None,
                                                     query: str) -> None:
    registry, _ = serving(many_roots)
    theirs = prometheus_wsgi_app(registry)
    ours = exposition.make_wsgi_app(registry, theirs)
    status, headers, body = call(ours, accept, encoding, query)
    want_status, want_headers, want_body = call(theirs, accept, encoding, query)
    assert (status, headers, body) == (want_status, want_headers, want_body)


def test_head_and_other_methods_go_to_prometheus_client() -> None:
    registry, _ = serving(fixed_snapshot)
    ours = exposition.make_wsgi_app(registry, prometheus_wsgi_app(registry))
    got: list[str] = []
    body = ours({"REQUEST_METHOD": "OPTIONS", "PATH_INFO": "/metrics"},
                lambda status, headers: got.append(status))
    assert got == ["200 OK"] and b"".join(body) == b""


class _Plain(Collector):
    """The reference: prometheus_client's families for one snapshot, built afresh."""

    def __init__(self, snap: Snapshot) -> None:
        self._snap = snap

    def collect(self) -> Iterable[Metric]:
        return families(self._snap)


def test_concurrent_scrapes_each_get_one_whole_snapshot() -> None:
    # every take() is a new snapshot: a third of the roots count it, some roots come and
    # go, and eight threads scrape at once over the same kept lines
    base = many_roots(40)
    taken = itertools.count(1)
    mine = threading.local()  # the snapshot this thread's scrape took

    def take() -> Snapshot:
        g = next(taken)
        roots = tuple(replace(r, exited_total=g) if i % 3 == 0 else r
                      for i, r in enumerate(base.roots) if i >= 14 or (i + g) % 7)
        mine.snap = replace(base, roots=roots)
        return mine.snap

    registry, collector = serving(take)
    assert TEXT is not None
    problems: list[str] = []
    scrapes = 8 * 15

    def scrape() -> None:
        for _ in range(scrapes // 8):
            body = exposition.render(registry, TEXT)
            try:
                parsed = list(text_string_to_metric_families(body.decode()))
            except ValueError as exc:
                problems.append(f"not a valid exposition: {exc}")
                continue
            if len(parsed) != body.count(b"# TYPE "):
                problems.append("families lost in parsing")
            if body != generate_latest(_Plain(mine.snap)) + DURATION:
                problems.append("not the exposition of the snapshot this scrape took")

    switch = sys.getswitchinterval()
    sys.setswitchinterval(1e-4)  # threads take turns every 0.1 ms (default: 5 ms)
    try:
        threads = [threading.Thread(target=scrape) for _ in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    finally:
        sys.setswitchinterval(switch)
    assert not problems, problems[:5]
    assert next(taken) == scrapes + 1
    # about 16 of the 38 roots of a snapshot are new or changed: the others were kept
    assert collector.roots.rendered < scrapes * 30
