"""The /metrics families over OTLP: observable instruments reading the same snapshot.

For users without Prometheus (``otel.metrics.enabled``). Each Prometheus
family becomes one instrument of the same name (counters without the
``_total`` suffix, as OTLP-to-Prometheus translation adds it back), with the
same labels as attributes. One snapshot serves every instrument of a
collection. The event lag histogram is left out: OpenTelemetry has no
observable histogram.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable

from opentelemetry.metrics import CallbackOptions, Observation
from opentelemetry.sdk.metrics import MeterProvider

from .. import __version__
from ..snapshot import Snapshot
from .prometheus import families


class _SnapshotCache:
    """One snapshot per collection: instruments called within ``max_age_s`` share it."""

    def __init__(self, take: Callable[[], Snapshot], max_age_s: float = 1.0) -> None:
        self._take = take
        self._max_age_s = max_age_s
        self._lock = threading.Lock()
        self._at = -1e18
        self._samples: dict[str, list[tuple[float, dict[str, str]]]] = {}

    def samples(self, name: str) -> list[tuple[float, dict[str, str]]]:
        with self._lock:
            now = time.monotonic()
            if now - self._at > self._max_age_s:
                self._samples = _by_family(self._take())
                self._at = now
            return self._samples.get(name, [])


def _by_family(snap: Snapshot) -> dict[str, list[tuple[float, dict[str, str]]]]:
    out: dict[str, list[tuple[float, dict[str, str]]]] = {}
    for fam in families(snap):
        want = fam.name + "_total" if fam.type == "counter" else fam.name
        out[fam.name] = [(s.value, dict(s.labels)) for s in fam.samples if s.name == want]
    return out


def register_snapshot_instruments(provider: MeterProvider,
                                  take: Callable[[], Snapshot]) -> list[str]:
    """Create one observable instrument per /metrics family; return their names."""
    meter = provider.get_meter("proctree_exporter", __version__)
    cache = _SnapshotCache(take)
    names = []
    for fam in families(take()):
        if fam.type not in ("counter", "gauge"):
            continue

        def callback(_options: CallbackOptions, name: str = fam.name) -> Iterable[Observation]:
            return [Observation(value, labels) for value, labels in cache.samples(name)]

        if fam.type == "counter":
            meter.create_observable_counter(fam.name, callbacks=[callback],
                                            description=fam.documentation)
        else:
            meter.create_observable_gauge(fam.name, callbacks=[callback],
                                          description=fam.documentation)
        names.append(fam.name)
    return names
