"""The OTLP pipeline: resource, exporters, bounded batch queues, and what got through.

One :class:`Pipeline` per running exporter holds the SDK providers (traces;
logs when lifecycle events go to log records; metrics when asked for), each
behind a bounded batch queue. Nothing here knows about processes: it moves
spans and log records to the endpoint and counts, exactly, every item exported
and every item dropped with its reason (:class:`Counts`), for /metrics.

Endpoint, headers, TLS, timeout and compression come from ``otel:`` when set
there, else from the standard ``OTEL_EXPORTER_OTLP_*`` environment variables
(which the SDK's exporters read themselves), else the SDK defaults.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from opentelemetry.sdk._logs import LoggerProvider, LogRecordProcessor, ReadWriteLogRecord
from opentelemetry.sdk._logs.export import (
    BatchLogRecordProcessor,
    LogRecordExporter,
    LogRecordExportResult,
)
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, SpanLimits, SpanProcessor, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult
from opentelemetry.util.re import parse_env_headers

from .. import __version__
from ..snapshot import OtelStats

if TYPE_CHECKING:
    from opentelemetry._logs import Logger
    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.metrics.export import MetricExporter, MetricReader
    from opentelemetry.trace import Tracer

    from ..config import OtelConfig

log = logging.getLogger("proctree_exporter.otel")

SCOPE = "proctree_exporter"

# what is counted: signal -> the reasons it can be dropped for (all exposed, from 0)
SPANS = "spans"
SPAN_EVENTS = "span_events"
LOGS = "logs"
DROP_REASONS: Mapping[str, tuple[str, ...]] = {
    # rate_limit: over the root's max_spans_per_second; capacity: max_open_spans reached;
    # unobserved: joined and left while the change log wrapped (or past max_members)
    SPANS: ("rate_limit", "capacity", "unobserved", "queue_full", "export_failed"),
    # span_limit: past max_events_per_span; no_span: its process has no span
    SPAN_EVENTS: ("span_limit", "no_span"),
    LOGS: ("queue_full", "export_failed"),
}


class Counts:
    """Exported and dropped items, by signal and reason. Thread-safe (several writers)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.exported = {SPANS: 0, LOGS: 0}
        self.dropped = {(s, r): 0 for s, reasons in DROP_REASONS.items() for r in reasons}
        self.open_spans = 0  # gauge, set by the tracer

    def export_ok(self, signal: str, n: int) -> None:
        with self._lock:
            self.exported[signal] += n

    def drop(self, signal: str, reason: str, n: int = 1) -> None:
        if n <= 0:
            return
        with self._lock:
            self.dropped[(signal, reason)] += n

    def stats(self) -> OtelStats:
        """An immutable copy for the snapshot."""
        with self._lock:
            return OtelStats(open_spans=self.open_spans, exported=dict(self.exported),
                             dropped=dict(self.dropped))


class _Gate:
    """Items handed to a batch queue and not yet taken by its exporter.

    Admitting only while this is below the queue's size means the SDK queue
    never overflows (it would drop the oldest item without telling us), so
    every queue drop is counted here, at the moment it happens.
    """

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self._pending = 0
        self._lock = threading.Lock()

    def admit(self) -> bool:
        with self._lock:
            if self._pending >= self.capacity:
                return False
            self._pending += 1
            return True

    def taken(self, n: int) -> None:
        with self._lock:
            self._pending = max(self._pending - n, 0)


class _Failures:
    """Log the first export failure and the recovery, not every failing batch."""

    def __init__(self, signal: str) -> None:
        self.signal = signal
        self.failing = False

    def result(self, ok: bool, n: int) -> None:
        if ok and self.failing:
            log.info("otel export of %s works again", self.signal)
        elif not ok and not self.failing:
            log.warning("otel export of %s failed; %d dropped (counted in "
                        "proctree_otel_dropped_total)", self.signal, n)
        self.failing = not ok


class CountingSpanExporter(SpanExporter):
    """Forwards batches to the real exporter and counts the outcome."""

    def __init__(self, inner: SpanExporter, gate: _Gate, counts: Counts) -> None:
        self.inner = inner
        self._gate = gate
        self._counts = counts
        self._failures = _Failures(SPANS)

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        n = len(spans)
        self._gate.taken(n)
        try:
            result = self.inner.export(spans)
        except Exception:  # an exporter must not kill the batch thread; count and go on
            log.debug("span export raised", exc_info=True)
            result = SpanExportResult.FAILURE
        ok = result == SpanExportResult.SUCCESS
        if ok:
            self._counts.export_ok(SPANS, n)
        else:
            self._counts.drop(SPANS, "export_failed", n)
        self._failures.result(ok, n)
        return result

    def shutdown(self) -> None:
        self.inner.shutdown()

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        return self.inner.force_flush(timeout_millis)


class CountingLogExporter(LogRecordExporter):
    """Forwards log batches to the real exporter and counts the outcome."""

    def __init__(self, inner: LogRecordExporter, gate: _Gate, counts: Counts) -> None:
        self.inner = inner
        self._gate = gate
        self._counts = counts
        self._failures = _Failures(LOGS)

    def export(self, batch: Sequence[Any]) -> LogRecordExportResult:
        n = len(batch)
        self._gate.taken(n)
        try:
            result = self.inner.export(batch)
        except Exception:  # see CountingSpanExporter
            log.debug("log export raised", exc_info=True)
            result = LogRecordExportResult.FAILURE
        ok = result == LogRecordExportResult.SUCCESS
        if ok:
            self._counts.export_ok(LOGS, n)
        else:
            self._counts.drop(LOGS, "export_failed", n)
        self._failures.result(ok, n)
        return result

    def shutdown(self) -> None:
        self.inner.shutdown()

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        return self.inner.force_flush(timeout_millis)


class BoundedSpanProcessor(SpanProcessor):
    """The SDK's BatchSpanProcessor behind a gate that counts queue-full drops."""

    def __init__(self, exporter: SpanExporter, counts: Counts, *, max_queue_size: int,
                 max_export_batch_size: int, schedule_delay_s: float) -> None:
        self._gate = _Gate(max_queue_size)
        self._counts = counts
        self.exporter = CountingSpanExporter(exporter, self._gate, counts)
        self._batch = BatchSpanProcessor(
            self.exporter, max_queue_size=max_queue_size,
            max_export_batch_size=min(max_export_batch_size, max_queue_size),
            schedule_delay_millis=schedule_delay_s * 1000)

    def on_start(self, span: Any, parent_context: Any = None) -> None:
        pass

    def on_end(self, span: ReadableSpan) -> None:
        if not (span.context and span.context.trace_flags.sampled):
            return  # a sampler (OTEL_TRACES_SAMPLER) said no: not a drop
        if self._gate.admit():
            self._batch.on_end(span)
        else:
            self._counts.drop(SPANS, "queue_full")

    def shutdown(self) -> None:
        self._batch.shutdown()

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        return self._batch.force_flush(timeout_millis)


class BoundedLogProcessor(LogRecordProcessor):
    """The SDK's BatchLogRecordProcessor behind a gate that counts queue-full drops."""

    def __init__(self, exporter: LogRecordExporter, counts: Counts, *, max_queue_size: int,
                 max_export_batch_size: int, schedule_delay_s: float) -> None:
        self._gate = _Gate(max_queue_size)
        self._counts = counts
        self.exporter = CountingLogExporter(exporter, self._gate, counts)
        self._batch = BatchLogRecordProcessor(
            self.exporter, max_queue_size=max_queue_size,
            max_export_batch_size=min(max_export_batch_size, max_queue_size),
            schedule_delay_millis=schedule_delay_s * 1000)

    def on_emit(self, log_record: ReadWriteLogRecord) -> None:
        if self._gate.admit():
            self._batch.on_emit(log_record)
        else:
            self._counts.drop(LOGS, "queue_full")

    def shutdown(self) -> None:
        self._batch.shutdown()

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        return self._batch.force_flush(timeout_millis)


# -- resource and exporters ------------------------------------------------------------

def make_resource(cfg: OtelConfig) -> Resource:
    """``service.name``, ``service.version``, ``host.name``, ``k8s.node.name`` (from
    ``K8S_NODE_NAME``); ``OTEL_RESOURCE_ATTRIBUTES`` and ``OTEL_SERVICE_NAME`` override
    these defaults, ``otel.service_name`` overrides everything."""
    defaults: dict[str, str] = {
        "service.name": "proctree-exporter",
        "service.version": __version__,
        "host.name": socket.gethostname(),
    }
    node = os.environ.get("K8S_NODE_NAME")
    if node:
        defaults["k8s.node.name"] = node
    env = Resource.create({})  # SDK attributes plus the OTEL_* environment
    from_env = {k: v for k, v in env.attributes.items()
                if not (k == "service.name" and str(v).startswith("unknown_service"))}
    resource = Resource(defaults).merge(Resource(from_env))
    if cfg.service_name:
        resource = resource.merge(Resource({"service.name": cfg.service_name}))
    return resource


def _path(base: Path | None, p: str | None) -> str | None:
    if p is None:
        return None
    return str(base / p) if base is not None and not os.path.isabs(p) else p


def _http_url(cfg: OtelConfig, signal_path: str) -> str | None:
    # like OTEL_EXPORTER_OTLP_ENDPOINT: a base URL to which the signal path is added
    if not cfg.endpoint:
        return None
    return cfg.endpoint.rstrip("/") + "/" + signal_path


def _grpc_kwargs(cfg: OtelConfig, base: Path | None) -> dict[str, Any]:
    import grpc  # the [grpc] extra

    kw: dict[str, Any] = {"endpoint": cfg.endpoint, "timeout": cfg.timeout_seconds,
                          "insecure": cfg.tls.insecure}
    if cfg.headers:
        # the gRPC exporter replaces OTEL_EXPORTER_OTLP_HEADERS with explicit headers: merge
        merged = dict(parse_env_headers(os.environ.get("OTEL_EXPORTER_OTLP_HEADERS", ""),
                                        liberal=True))
        merged.update({k.lower(): v for k, v in cfg.headers.items()})
        kw["headers"] = merged
    if cfg.compression is not None:
        kw["compression"] = (grpc.Compression.Gzip if cfg.compression == "gzip"
                             else grpc.Compression.NoCompression)
    tls = cfg.tls
    if tls.ca_file or tls.cert_file:
        def read(p: str | None) -> bytes | None:
            path = _path(base, p)
            return Path(path).read_bytes() if path else None
        kw["credentials"] = grpc.ssl_channel_credentials(
            root_certificates=read(tls.ca_file), private_key=read(tls.key_file),
            certificate_chain=read(tls.cert_file))
    return kw


def _http_kwargs(cfg: OtelConfig, base: Path | None) -> dict[str, Any]:
    from opentelemetry.exporter.otlp.proto.http import Compression

    kw: dict[str, Any] = {
        "headers": dict(cfg.headers) or None,  # merged over the environment's by the SDK
        "timeout": cfg.timeout_seconds,
        "certificate_file": _path(base, cfg.tls.ca_file),
        "client_certificate_file": _path(base, cfg.tls.cert_file),
        "client_key_file": _path(base, cfg.tls.key_file),
    }
    if cfg.compression is not None:
        kw["compression"] = (Compression.Gzip if cfg.compression == "gzip"
                             else Compression.NoCompression)
    return kw


def _grpc_missing(exc: ImportError) -> RuntimeError:
    return RuntimeError(f"otel.protocol grpc needs the gRPC exporter ({exc.name} is missing): "
                        "pip install 'proctree-exporter[grpc]'")


def make_span_exporter(cfg: OtelConfig, base: Path | None = None) -> SpanExporter:
    """The OTLP span exporter ``otel.protocol`` asks for."""
    if cfg.protocol == "grpc":
        try:
            from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import (
                OTLPSpanExporter as GrpcSpanExporter,
            )
            kw = _grpc_kwargs(cfg, base)
        except ImportError as exc:
            raise _grpc_missing(exc) from None
        return GrpcSpanExporter(**kw)
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    return OTLPSpanExporter(endpoint=_http_url(cfg, "v1/traces"), **_http_kwargs(cfg, base))


def make_log_exporter(cfg: OtelConfig, base: Path | None = None) -> LogRecordExporter:
    """The OTLP log record exporter ``otel.protocol`` asks for."""
    if cfg.protocol == "grpc":
        try:
            from opentelemetry.exporter.otlp.proto.grpc._log_exporter import (
                OTLPLogExporter as GrpcLogExporter,
            )
            kw = _grpc_kwargs(cfg, base)
        except ImportError as exc:
            raise _grpc_missing(exc) from None
        return GrpcLogExporter(**kw)
    from opentelemetry.exporter.otlp.proto.http._log_exporter import OTLPLogExporter
    return OTLPLogExporter(endpoint=_http_url(cfg, "v1/logs"), **_http_kwargs(cfg, base))


def make_metric_exporter(cfg: OtelConfig, base: Path | None = None) -> MetricExporter:
    """The OTLP metric exporter ``otel.protocol`` asks for."""
    if cfg.protocol == "grpc":
        try:
            from opentelemetry.exporter.otlp.proto.grpc.metric_exporter import (
                OTLPMetricExporter as GrpcMetricExporter,
            )
            kw = _grpc_kwargs(cfg, base)
        except ImportError as exc:
            raise _grpc_missing(exc) from None
        return GrpcMetricExporter(**kw)
    from opentelemetry.exporter.otlp.proto.http.metric_exporter import OTLPMetricExporter
    return OTLPMetricExporter(endpoint=_http_url(cfg, "v1/metrics"), **_http_kwargs(cfg, base))


class Pipeline:
    """The SDK providers for one exporter run, bounded and counted.

    Tests pass in-memory exporters; the daemon lets ``otel:`` choose OTLP ones.
    """

    def __init__(self, cfg: OtelConfig, counts: Counts, *, base_dir: Path | None = None,
                 span_exporter: SpanExporter | None = None,
                 log_exporter: LogRecordExporter | None = None,
                 metric_reader: MetricReader | None = None) -> None:
        self.counts = counts
        for key in ("ca_file", "cert_file", "key_file"):
            path = _path(base_dir, getattr(cfg.tls, key))
            if path is not None and not os.path.isfile(path):
                raise ValueError(f"otel.tls.{key}: {path}: no such file")
        self.resource = make_resource(cfg)
        batch = {"max_queue_size": cfg.max_queue_size,
                 "max_export_batch_size": cfg.max_export_batch_size,
                 "schedule_delay_s": cfg.schedule_delay_seconds}
        # shutdown_on_exit=False: an atexit flush to a dead endpoint would hold the
        # process for the SDK's 30 s; the daemon shuts down within its own deadline
        self.tracer_provider = TracerProvider(
            resource=self.resource, shutdown_on_exit=False,
            span_limits=SpanLimits(max_events=cfg.max_events_per_span))
        self.span_processor = BoundedSpanProcessor(
            span_exporter or make_span_exporter(cfg, base_dir), counts, **batch)
        self.tracer_provider.add_span_processor(self.span_processor)
        self.tracer: Tracer = self.tracer_provider.get_tracer(SCOPE, __version__)
        self.logger_provider: LoggerProvider | None = None
        self.logger: Logger | None = None
        if cfg.events in ("logs", "both"):
            self.logger_provider = LoggerProvider(resource=self.resource, shutdown_on_exit=False)
            self.logger_provider.add_log_record_processor(BoundedLogProcessor(
                log_exporter or make_log_exporter(cfg, base_dir), counts, **batch))
            self.logger = self.logger_provider.get_logger(SCOPE, __version__)
        self.meter_provider: MeterProvider | None = None
        if cfg.metrics.enabled:
            from opentelemetry.sdk.metrics import MeterProvider
            from opentelemetry.sdk.metrics.export import PeriodicExportingMetricReader

            reader = metric_reader
            if reader is None:
                reader = PeriodicExportingMetricReader(
                    make_metric_exporter(cfg, base_dir),
                    export_interval_millis=cfg.metrics.interval_seconds * 1000)
            self.meter_provider = MeterProvider(metric_readers=[reader], resource=self.resource,
                                                shutdown_on_exit=False)

    def force_flush(self) -> None:
        """Export everything queued now (tests; blocks while the endpoint is slow)."""
        self.tracer_provider.force_flush()
        if self.logger_provider is not None:
            self.logger_provider.force_flush()

    def shutdown(self, timeout_s: float) -> bool:
        """Flush and stop every provider; give up after ``timeout_s`` (a dead endpoint
        must not hold the daemon's exit). True when everything finished in time."""
        providers: list[Any] = [self.tracer_provider]
        if self.logger_provider is not None:
            providers.append(self.logger_provider)
        if self.meter_provider is not None:
            providers.append(self.meter_provider)

        def run() -> None:
            for p in providers:
                try:
                    p.shutdown()
                except Exception:  # one provider's failure must not keep the others queued
                    log.debug("otel provider shutdown failed", exc_info=True)

        t = threading.Thread(target=run, name="proctree-otel-shutdown", daemon=True)
        t.start()
        t.join(timeout_s)
        if t.is_alive():
            log.warning("otel: flushing to the endpoint did not finish within %.1fs; "
                        "queued spans and log records are lost", timeout_s)
            return False
        return True
