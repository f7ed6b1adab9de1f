"""OpenTelemetry settings, resource, rate limit and the OTLP metrics, without the kernel."""

from __future__ import annotations

import dataclasses
import socket
from pathlib import Path

import pytest
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.registry import Collector

from proctree_exporter.config import ConfigError, OtelConfig, parse_config
from proctree_exporter.export.otel import EVENT_NAMES, TokenBucket, iso8601
from proctree_exporter.export.otel_metrics import register_snapshot_instruments
from proctree_exporter.export.otlp import DROP_REASONS, Counts, make_resource
from proctree_exporter.export.prometheus import families
from proctree_exporter.snapshot import Snapshot

from .conftest import REPO
from .test_metrics_golden import fixed_snapshot


def test_otel_is_off_by_default_and_in_the_embedded_config() -> None:
    assert parse_config("").otel.enabled is False
    cfg = parse_config((REPO / "config.yaml").read_text(), "config.yaml")
    assert cfg.otel == OtelConfig()


@pytest.mark.parametrize(("text", "message"), [
    ("otel:\n  enabled: true\n  spans: yes\n", "otel.spans, line 3: unknown key"),
    ("otel:\n  tls:\n    ca: x\n", "otel.tls.ca, line 3: unknown key"),
    ("otel:\n  events: traces\n", "otel.events, line 2"),
    ("otel:\n  protocol: http/json\n", "otel.protocol, line 2"),
    ("otel:\n  endpoint: collector:4317\n", "expected a URL"),
    ("otel:\n  max_spans_per_second: 0\n", "otel.max_spans_per_second, line 2"),
    ("otel:\n  tls:\n    cert_file: c.pem\n", "cert_file and key_file go together"),
    ("otel:\n  roots: [nope]\n", "otel.roots: no root named 'nope'"),
])
def test_bad_otel_settings_name_the_key(text: str, message: str) -> None:
    with pytest.raises(ConfigError) as err:
        parse_config(text)
    assert message in str(err.value)


def test_otel_roots_name_configured_roots() -> None:
    cfg = parse_config("roots:\n  - {name: a, select: pid, match: 1}\n"
                       "otel:\n  enabled: true\n  roots: [a]\n")
    assert cfg.otel.roots == ["a"]


def test_resource_defaults_give_way_to_the_environment_and_config_to_both(
        monkeypatch: pytest.MonkeyPatch) -> None:
    for var in ("OTEL_SERVICE_NAME", "OTEL_RESOURCE_ATTRIBUTES", "K8S_NODE_NAME"):
        monkeypatch.delenv(var, raising=False)
    r = make_resource(OtelConfig()).attributes
    assert r["service.name"] == "proctree-exporter"
    assert r["host.name"] == socket.gethostname()
    assert "k8s.node.name" not in r
    monkeypatch.setenv("K8S_NODE_NAME", "node-7")
    monkeypatch.setenv("OTEL_SERVICE_NAME", "from-env")
    monkeypatch.setenv("OTEL_RESOURCE_ATTRIBUTES", "host.name=override,team=sre")
    r = make_resource(OtelConfig()).attributes
    assert (r["service.name"], r["host.name"], r["team"], r["k8s.node.name"]) == (
        "from-env", "override", "sre", "node-7")
    assert make_resource(OtelConfig(service_name="mine")).attributes["service.name"] == "mine"


def test_token_bucket_allows_the_burst_then_the_rate() -> None:
    now = [0.0]
    bucket = TokenBucket(rate=10, burst=5, clock=lambda: now[0])
    assert [bucket.take() for _ in range(6)] == [True] * 5 + [False]
    now[0] += 0.25  # 2.5 tokens
    assert [bucket.take() for _ in range(3)] == [True, True, False]
    now[0] += 100
    assert sum(bucket.take() for _ in range(10)) == 5, "never more than the burst"


def test_event_names_live_in_one_namespace() -> None:
    assert all(n.startswith("proctree.") for n in EVENT_NAMES)
    assert len(set(EVENT_NAMES)) == len(EVENT_NAMES)
    assert iso8601(0.5) == "1970-01-01T00:00:00.500Z"


def test_every_drop_reason_is_exposed_from_zero() -> None:
    counts = Counts()
    counts.drop("spans", "rate_limit", 3)
    counts.export_ok("logs", 2)
    snap = dataclasses.replace(fixed_snapshot(), otel=counts.stats())

    class Fixed(Collector):
        def collect(self):  # type: ignore[no-untyped-def]
            yield from families(snap)

    registry = CollectorRegistry(auto_describe=False)
    registry.register(Fixed())
    text = generate_latest(registry).decode()
    assert 'proctree_otel_dropped_total{reason="rate_limit",signal="spans"} 3.0' in text
    assert 'proctree_otel_exported_total{signal="logs"} 2.0' in text
    assert "proctree_otel_open_spans 0.0" in text
    for signal, reasons in DROP_REASONS.items():
        for reason in reasons:
            assert f'proctree_otel_dropped_total{{reason="{reason}",signal="{signal}"}}' in text


def test_otlp_metrics_carry_the_same_families_as_the_exposition() -> None:
    snap: Snapshot = dataclasses.replace(fixed_snapshot(), otel=Counts().stats())
    reader = InMemoryMetricReader()
    provider = MeterProvider(metric_readers=[reader], shutdown_on_exit=False)
    try:
        names = register_snapshot_instruments(provider, lambda: snap)
        data = reader.get_metrics_data()
    finally:
        provider.shutdown()
    metrics = {m.name: m for rm in data.resource_metrics for sm in rm.scope_metrics
               for m in sm.metrics}
    assert set(metrics) == set(names)
    assert "proctree_event_lag_seconds" not in names  # no observable histograms
    points = metrics["proctree_root_spawned"].data.data_points
    spawned = {p.attributes["root"]: p.value for p in points}
    assert spawned == {"ci-job": 1204, "host": 90_000}
    assert metrics["proctree_root_spawned"].data.is_monotonic
    up = {p.attributes["root"]: p.value for p in metrics["proctree_root_up"].data.data_points}
    assert up == {"ci-job": 0, "host": 1}


def test_config_yaml_documents_the_otel_block() -> None:
    text = Path(REPO / "config.yaml").read_text()
    assert "\notel:\n" in text and "enabled: false" in text
