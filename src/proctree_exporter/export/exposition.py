"""The /metrics text: prometheus_client's formats, without formatting kept lines again.

prometheus_client formats every sample of every family on every scrape. A family
that arrives as a :class:`RenderedFamily` carries its sample lines already written
(:class:`~.prometheus.SnapshotCollector` keeps each root's lines until that root
changes); every other family is formatted by prometheus_client's own encoder. The
body is byte for byte what prometheus_client would send (tests/test_exposition.py),
in the text format 0.0.4 and in OpenMetrics 1.0.0, which write such lines alike.
Any other format a scraper asks for, and ``name[]`` filters, are left to
prometheus_client's app, which reads the same families' samples.
"""

from __future__ import annotations

import functools
import gzip
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from itertools import chain
from typing import Any
from urllib.parse import parse_qs

from prometheus_client import exposition as text
from prometheus_client.metrics_core import Metric
from prometheus_client.openmetrics import exposition as openmetrics
from prometheus_client.registry import Collector
from prometheus_client.samples import Sample
from prometheus_client.utils import floatToGoString

WsgiApp = Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]

# Measured here on a 100-root body (120 KB): level 1 takes 0.15 ms, 6 takes 0.7 ms and
# 9 (gzip.compress's default, which prometheus_client uses) 4.8 ms, for 13 KB, 11 KB
# and 10.6 KB. Prometheus asks for gzip on every scrape.
GZIP_LEVEL = 1
# name escaping schemes that leave legacy names (letters, digits, underscores) as they are
_LEGACY_KEPT = ("underscores", "allow-utf-8")
_EOF = b"# EOF\n"


class RenderedFamily(Metric):
    """A family whose sample lines are already written, each by :func:`sample_line`.

    Its ``samples`` are there too, so prometheus_client's encoders (and OpenTelemetry)
    read it like any other family; they are gathered from ``parts`` (one iterable of
    samples per root, which may make them as it goes) only when read, as the text
    formats never do: gathering them took a fifth of a 100-root scrape. Its name and
    label names must be legacy names.
    """

    def __init__(self, name: str, documentation: str, typ: str,
                 parts: Iterable[Iterable[Sample]], lines: bytes) -> None:
        super().__init__(name, documentation, typ)
        self._parts = parts
        self._samples: list[Sample] | None = None
        self.lines = lines

    @property  # type: ignore[override]
    def samples(self) -> list[Sample]:
        """Every root's samples of this family, in order."""
        if self._samples is None:
            self._samples = list(chain.from_iterable(self._parts))
        return self._samples

    @samples.setter
    def samples(self, value: list[Sample]) -> None:
        self._samples = value


def sample_line(s: Sample) -> str:
    """``s`` as prometheus_client writes it in the text format 0.0.4 and in OpenMetrics
    1.0.0 alike, given legacy metric and label names, no timestamp and no exemplar."""
    value = floatToGoString(s.value)
    if not s.labels:
        return f"{s.name} {value}\n"
    labels = ",".join([f'{k}="{_escape(v)}"' for k, v in sorted(s.labels.items())])
    return f"{s.name}{{{labels}}} {value}\n"


def _escape(value: str) -> str:
    return value.replace("\\", r"\\").replace("\n", r"\n").replace('"', r"\"")


@dataclass(frozen=True, slots=True)
class Format:
    """A format that :func:`render` writes, as negotiated for one scrape."""

    content_type: str
    openmetrics: bool
    encoder: Callable[[Collector], bytes]  # prometheus_client's: for the other families


def negotiate(accept: str | None) -> Format | None:
    """The format prometheus_client answers ``accept`` (an Accept header) with, if it is
    one whose sample lines :func:`sample_line` writes: the text format (0.0.4, or 1.0.0)
    or OpenMetrics 1.0.0, with an escaping that keeps legacy names. None otherwise."""
    encoder, content_type = text.choose_encoder(accept or "")
    func, keywords = encoder, {}
    if isinstance(encoder, functools.partial):
        func, keywords = encoder.func, encoder.keywords
    if keywords.get("escaping", "underscores") not in _LEGACY_KEPT:
        return None
    if func is text.generate_latest:
        return Format(content_type, False, encoder)
    if func is openmetrics.generate_latest and keywords.get("version", "1.0.0") == "1.0.0":
        return Format(content_type, True, encoder)
    return None


def render(registry: Collector, fmt: Format) -> bytes:
    """What ``fmt.encoder(registry)`` returns, with the lines of rendered families reused."""
    out: list[bytes] = []
    other: list[Metric] = []
    for metric in registry.collect():
        if isinstance(metric, RenderedFamily):
            if other:
                out.append(_encoded(fmt, other))
                other = []
            out.append(_header(metric.name, metric.documentation, metric.type, fmt.openmetrics))
            out.append(metric.lines)
        else:
            other.append(metric)
    if other:
        out.append(_encoded(fmt, other))
    if fmt.openmetrics:
        out.append(_EOF)
    return b"".join(out)


class _Families(Collector):
    def __init__(self, metrics: Sequence[Metric]) -> None:
        self._metrics = metrics

    def collect(self) -> Sequence[Metric]:
        return self._metrics


def _encoded(fmt: Format, metrics: Sequence[Metric]) -> bytes:
    body = fmt.encoder(_Families(metrics))
    return body.removesuffix(_EOF) if fmt.openmetrics else body


@functools.lru_cache(maxsize=256)
def _header(name: str, documentation: str, typ: str, om: bool) -> bytes:
    """The HELP and TYPE lines, as prometheus_client writes them for a family without
    samples (a legacy name is written alike in every escaping :func:`negotiate` admits)."""
    encoder = openmetrics.generate_latest if om else text.generate_latest
    body = encoder(_Families([Metric(name, documentation, typ)]))
    return body.removesuffix(_EOF) if om else body


def make_wsgi_app(registry: Collector, fallback: WsgiApp) -> WsgiApp:
    """A /metrics app for ``registry`` that answers a GET in the formats :func:`negotiate`
    admits with :func:`render` (gzipped if asked), and leaves every other request to
    ``fallback``, prometheus_client's app for the same registry."""

    def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        fmt = negotiate(environ.get("HTTP_ACCEPT"))
        if (fmt is None or environ.get("REQUEST_METHOD") != "GET"
                or "name[]" in parse_qs(environ.get("QUERY_STRING", ""))):
            return fallback(environ, start_response)
        body = render(registry, fmt)
        headers = [("Content-Type", fmt.content_type)]
        if text.gzip_accepted(environ.get("HTTP_ACCEPT_ENCODING", "")):
            body = gzip.compress(body, compresslevel=GZIP_LEVEL)
            headers.append(("Content-Encoding", "gzip"))
        start_response("200 OK", headers)
        return [body]

    return app
