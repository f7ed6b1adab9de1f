"""A prometheus_client Collector that builds every family from one :class:`Snapshot`.

Each scrape takes one snapshot (O(roots)) and formats it; concurrent scrapes
each take their own. Families are built per scrape from that snapshot alone,
so a root removed by a reload disappears from /metrics at once; only the text
of each root's lines is kept from one scrape to the next, for as long as the
root's numbers are the same. No family carries a ``pid`` label: per-process
detail belongs to the JSON API and OpenTelemetry.
"""

from __future__ import annotations

import math
import re
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Generic, TypeVar

from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector
from prometheus_client.samples import Sample

from ..classification import LIVE_CLASSES
from ..resources import FIELDS as RESOURCE_FIELDS
from ..resources import UNACCOUNTED_REASONS, RootResources
from ..snapshot import RootSnapshot, Snapshot
from ..state import IGNORE_REASONS
from ..stream import DROP_REASONS
from ..tree import DROP_EXITED, DROP_INCONSISTENT, DROP_PID_REUSED
from .exposition import RenderedFamily, sample_line


def families(snap: Snapshot) -> Iterator[Metric]:
    """Every metric family for ``snap``, in a stable order."""
    return _families(snap, _built(ROOT_FAMILIES), _built(RESOURCE_ROOT_FAMILIES))


def _families(snap: Snapshot, roots: PerRoot[RootSnapshot],
              resources: PerRoot[RootResources]) -> Iterator[Metric]:
    yield from roots(snap.roots)
    yield from _host_families(snap)
    yield from _self_families(snap)
    yield from _otel_families(snap)
    yield from _stream_families(snap)
    yield from _state_families(snap)
    yield from _resource_families(snap, resources)
    yield from _control_families(snap)


# -- the families with a `root` label ------------------------------------------------------
#
# Most of /metrics is these: one group of lines per root and family (about 14 lines a root).
# Each family is declared once, below, and built two ways from the same declaration:
# plainly, with prometheus_client's families (:func:`families`, which OpenTelemetry and the
# golden file read), and per root with its lines kept while the root's record is unchanged
# (:class:`SnapshotCollector`, which /metrics serves): most roots are the same scrape after
# scrape, and formatting their lines again was two thirds of a 100-root scrape.

R = TypeVar("R", RootSnapshot, RootResources)
# the values of the labels after ``root``, and the value
Values = tuple[tuple[str, ...], float]
_LEGACY_NAME = re.compile(r"[a-zA-Z_][a-zA-Z0-9_]*")


@dataclass(frozen=True, slots=True)
class RootFamily(Generic[R]):
    """A family with a ``root`` label first: ``samples`` gives one root's samples."""

    name: str
    kind: str  # gauge | counter
    documentation: str
    labels: tuple[str, ...]  # after root
    samples: Callable[[R], Iterable[Values]]

    def __post_init__(self) -> None:
        # the lines kept per root are written for legacy names (exposition.sample_line)
        for name in (self.name, *self.labels):
            if not _LEGACY_NAME.fullmatch(name):
                raise ValueError(f"{self.name}: {name!r} is not a legacy metric or label name")

    @property
    def sample_name(self) -> str:
        return self.name + "_total" if self.kind == "counter" else self.name

    def family(self) -> GaugeMetricFamily | CounterMetricFamily:
        """An empty prometheus_client family for it."""
        cls = CounterMetricFamily if self.kind == "counter" else GaugeMetricFamily
        return cls(self.name, self.documentation, labels=["root", *self.labels])



def _gauge(name: str, documentation: str, samples: Callable[[R], Iterable[Values]],
           labels: tuple[str, ...] = ()) -> RootFamily[R]:
    return RootFamily(name, "gauge", documentation, labels, samples)


def _counter(name: str, documentation: str, samples: Callable[[R], Iterable[Values]],
             labels: tuple[str, ...] = ()) -> RootFamily[R]:
    return RootFamily(name, "counter", documentation, labels, samples)


def _one(value: float) -> tuple[Values]:
    return (((), value),)


ROOT_FAMILIES: tuple[RootFamily[RootSnapshot], ...] = (
    _gauge("proctree_root_up", "1 while at least one process matching the root is alive.",
           lambda r: _one(1.0 if r.up else 0.0)),
    _gauge("proctree_root_instances", "Live processes matching the root's selector (nested "
           "matches count once).", lambda r: _one(r.instances)),
    _gauge("proctree_root_start_time_seconds", "Start time of the newest live root instance, "
           "seconds since the epoch.",
           lambda r: () if r.start_time is None else _one(r.start_time)),
    _gauge("proctree_root_processes", "Live members of the root's tree by class (zombie: "
           "exited, unreaped past the grace).",
           lambda r: [((cls,), r.classes.get(cls, 0)) for cls in LIVE_CLASSES], ("class",)),
    _counter("proctree_root_spawned", "Processes that joined the root's tree, short-lived "
             "included.", lambda r: _one(r.spawned_total)),
    _counter("proctree_root_exited", "Processes that left the root's tree (exited).",
             lambda r: _one(r.exited_total)),
    _counter("proctree_root_restarts", "Times a root instance was replaced by a new identity.",
             lambda r: _one(r.restarts_total)),
    _counter("proctree_root_pid_reuse", "Exited members whose pid was given to another "
             "process.", lambda r: _one(r.pid_reuse_total)),
    _counter("proctree_root_actions", "Signals sent (or, in dry run, not sent) to members, by "
             "action and outcome.", lambda r: sorted(r.actions.items()), ("action", "outcome")),
    _counter("proctree_root_class_changes", "Members that changed to a class.",
             lambda r: [((cls,), n) for cls, n in sorted(r.class_changes.items())], ("class",)),
    _gauge("proctree_root_max_depth", "Deepest live member, in generations below its "
           "instance.", lambda r: _one(r.max_depth)),
    _gauge("proctree_root_truncated", "1 when the root has more members than max_members "
           "lists.", lambda r: _one(1.0 if r.truncated else 0.0)),
    _gauge("proctree_root_tombstones", "Exited members kept for inspection.",
           lambda r: _one(r.tombstones)),
    _gauge("proctree_root_confidence_exact", "1 when every live member below an instance was "
           "placed by a fork event; 0 (degraded) when /proc placed some (see "
           "proctree_root_inferred_members).", lambda r: _one(0.0 if r.inferred else 1.0)),
    _gauge("proctree_root_inferred_members", "Live members placed by /proc rather than a fork "
           "event, by how: snapshot (present at start), resync (after lost events), late, "
           "poll.", lambda r: [((src,), n) for src, n in sorted(r.inferred.items())],
           ("source",)),
    _gauge("proctree_root_runtime", "1 for a root added at run time (write API), 0 for one of "
           "config.yaml.", lambda r: _one(1.0 if r.runtime else 0.0)),
)

_F = {f: i for i, f in enumerate(RESOURCE_FIELDS)}


def _fields(r: RootResources, *pairs: tuple[str, str]) -> list[Values]:
    """For each ``(label value, field)`` pair, that field of ``r.counters``."""
    return [((label,), r.counters[_F[field]]) for label, field in pairs]


RESOURCE_ROOT_FAMILIES: tuple[RootFamily[RootResources], ...] = (
    _counter("proctree_root_cpu_seconds", "CPU time of the root's processes, exited ones "
             "included (at exit, from the kernel's taskstats record), by mode.",
             lambda r: [(mode, us / 1e6) for mode, us in _fields(
                 r, ("user", "cpu_user_us"), ("system", "cpu_system_us"))], ("mode",)),
    _counter("proctree_root_io_bytes", "Storage IO of the root's processes: bytes read from "
             "devices and dirtied for writing (/proc/PID/io read_bytes, write_bytes).",
             lambda r: _fields(r, ("read", "read_bytes"), ("write", "write_bytes")),
             ("direction",)),
    _counter("proctree_root_context_switches", "Context switches of the root's processes, by "
             "kind (live processes: main thread; exited: every thread).",
             lambda r: _fields(r, ("voluntary", "voluntary_ctx_switches"),
                               ("involuntary", "involuntary_ctx_switches")), ("kind",)),
    _counter("proctree_root_page_faults", "Page faults of the root's processes, by kind.",
             lambda r: _fields(r, ("minor", "minor_faults"), ("major", "major_faults")),
             ("kind",)),
    _gauge("proctree_root_memory_rss_bytes", "Resident memory of the root's live processes, "
           "summed (shared pages count once per process).", lambda r: _one(r.rss_bytes)),
    _gauge("proctree_root_memory_pss_bytes", "Proportional set size of the root's live "
           "processes, summed (resources.pss).",
           lambda r: () if r.pss_bytes is None else _one(r.pss_bytes)),
    _gauge("proctree_root_open_fds", "Open file descriptors of the root's live processes.",
           lambda r: _one(r.open_fds)),
    _gauge("proctree_root_threads", "Threads of the root's live processes.",
           lambda r: _one(r.threads)),
    _gauge("proctree_root_sampled_processes", "Live processes of the root with a resource "
           "sample.", lambda r: _one(r.sampled)),
)

# what builds the families of ROOT_FAMILIES (or RESOURCE_ROOT_FAMILIES) from the roots' records
PerRoot = Callable[[Sequence[R]], Iterable[Metric]]


def _built(specs: tuple[RootFamily[R], ...]) -> PerRoot[R]:
    """Plain prometheus_client families, built afresh: the reference for the kept lines."""
    def build(records: Sequence[R]) -> Iterator[Metric]:
        for spec in specs:
            fam = spec.family()
            for r in records:
                for values, value in spec.samples(r):
                    fam.add_metric([r.name, *values], value)
            yield fam
    return build


def _samples(spec: RootFamily[R], r: R) -> tuple[Sample, ...]:
    """One root's samples of one family."""
    return tuple(Sample(spec.sample_name,
                        {"root": r.name, **dict(zip(spec.labels, values, strict=True))}, value)
                 for values, value in spec.samples(r))


class KeptLines(Generic[R]):
    """The families of ``specs`` with each root's lines kept until its record changes.

    Records are frozen (dataclasses, named tuples) and compared by value: an unchanged
    root costs one comparison, a changed one is rendered again. The kept rows are never
    changed in place, only replaced whole, so concurrent scrapes need no lock: each reads
    one consistent dict, and the last to finish leaves its own behind.

    Only lines are kept (bytes, which the cyclic GC does not track); the samples are made
    again from the records when a family's ``samples`` is read, as the text formats never
    do. Kept samples were the most of what every full collection rescanned (2,800 objects
    at 100 roots, a tuple subclass each).
    """

    def __init__(self, specs: tuple[RootFamily[R], ...]) -> None:
        self._specs = specs
        self._kept: dict[str, tuple[R, tuple[bytes, ...]]] = {}  # name -> (record, lines)
        # roots rendered since start, the others' lines were kept (a figure for tests:
        # concurrent scrapes may lose a count)
        self.rendered = 0

    def __call__(self, records: Sequence[R]) -> list[Metric]:
        kept = self._kept
        fresh: dict[str, tuple[R, tuple[bytes, ...]]] = {}
        rows = []
        for r in records:
            hit = kept.get(r.name)
            row = hit[1] if hit is not None and (hit[0] is r or hit[0] == r) else self._row(r)
            fresh[r.name] = (r, row)
            rows.append(row)
        self._kept = fresh  # roots gone since the last scrape are dropped with the old dict
        specs = self._specs
        if not rows:
            return [RenderedFamily(spec.name, spec.documentation, spec.kind, (), b"")
                    for spec in specs]
        # rows by root to columns by family in C (zip), not family by family in Python:
        # that took a tenth of a 100-root scrape
        lines = zip(*rows, strict=True)
        return [RenderedFamily(spec.name, spec.documentation, spec.kind,
                               _LazyParts(spec, records), b"".join(text))
                for spec, text in zip(specs, lines, strict=True)]

    def _row(self, r: R) -> tuple[bytes, ...]:
        self.rendered += 1
        return tuple("".join([sample_line(s) for s in _samples(spec, r)]).encode()
                     for spec in self._specs)


class _LazyParts(Generic[R]):
    """Each record's samples of one family, made when iterated."""

    __slots__ = ("_records", "_spec")

    def __init__(self, spec: RootFamily[R], records: Sequence[R]) -> None:
        self._spec = spec
        self._records = records

    def __iter__(self) -> Iterator[tuple[Sample, ...]]:
        spec = self._spec
        return (_samples(spec, r) for r in self._records)


def _host_families(snap: Snapshot) -> Iterator[Metric]:
    states = GaugeMetricFamily("proctree_processes",
                               "Processes on the host by state, from a periodic walk of "
                               "/proc (see proctree_host_states_age_seconds).",
                               labels=["state"])
    age = GaugeMetricFamily("proctree_host_states_age_seconds",
                            "Age of the /proc walk behind proctree_processes.")
    if snap.host_states is not None:
        for state, count in sorted(snap.host_states.by_state.items()):
            states.add_metric([state], count)
        age.add_metric([], max(snap.ts - snap.host_states.ts, 0.0))
    yield states
    yield age
    yield GaugeMetricFamily("proctree_zombies",
                            "Exited processes on the host not yet reaped by their parent.",
                            value=snap.host_zombies)
    yield GaugeMetricFamily("proctree_threads",
                            "Threads of live processes on the host (leaders included).",
                            value=max(snap.threads, 0))
    yield GaugeMetricFamily("proctree_lineage_unknown_processes",
                            "Live processes whose fork parent cannot be known: first seen "
                            "(at start-up or a resync) under PID 1, which may be a "
                            "reparenting, or under a parent younger than themselves.",
                            value=snap.lineage_unknown)
    yield CounterMetricFamily("proctree_processes_forked",
                              "Processes created on the host since start (events).",
                              value=snap.processes_forked)
    yield CounterMetricFamily("proctree_processes_exited",
                              "Processes that exited on the host since start.",
                              value=snap.processes_exited)


def _self_families(snap: Snapshot) -> Iterator[Metric]:
    events = CounterMetricFamily("proctree_events",
                                 "Proc connector events received, by type.", labels=["type"])
    for kind, count in snap.events.items():
        events.add_metric([kind], count)
    yield events
    yield CounterMetricFamily("proctree_events_lost",
                              "Events the kernel dropped for this exporter (best estimate "
                              "per loss episode: socket drop counter, sequence gaps, "
                              "overruns); each loss triggers a resync.",
                              value=snap.events_lost)
    yield CounterMetricFamily("proctree_overruns",
                              "Receive buffer overruns reported by the kernel (ENOBUFS).",
                              value=snap.overruns)
    resyncs = CounterMetricFamily("proctree_resyncs",
                                  "Resyncs of the tree from /proc after detected loss, by "
                                  "reason.", labels=["reason"])
    for reason in ("overrun", "seq_gap", "kernel_drops"):
        resyncs.add_metric([reason], snap.resyncs.get(reason, 0))
    yield resyncs
    errors = CounterMetricFamily("proctree_parse_errors",
                                 "Netlink datagrams dropped as malformed or not from the "
                                 "kernel, by reason.", labels=["reason"])
    for reason, count in sorted(snap.parse_errors.items()):
        errors.add_metric([reason], count)
    yield errors
    yield CounterMetricFamily("proctree_missed_exits",
                              "Processes found gone by a resync without their EXIT event.",
                              value=snap.missed_exits)
    yield CounterMetricFamily("proctree_exec_unread",
                              "EXEC events whose process was gone before /proc could be read.",
                              value=snap.exec_unread)
    yield CounterMetricFamily("proctree_stale_events",
                              "Events ignored because they named an older process than the "
                              "one holding the pid.", value=snap.stale_events)
    yield CounterMetricFamily("proctree_pid_reuse",
                              "Times a new process took a pid the tree still held.",
                              value=snap.pid_reuse)
    yield GaugeMetricFamily("proctree_tree_nodes", "Processes in the tree, live and exited.",
                            value=snap.tree_live + snap.tree_tombstones)
    yield GaugeMetricFamily("proctree_tree_tombstones",
                            "Exited processes kept in the tree (bounded by capacity and TTL).",
                            value=snap.tree_tombstones)
    yield GaugeMetricFamily("proctree_tree_capacity", "tree.max_nodes: the node budget.",
                            value=snap.tree_capacity)
    yield CounterMetricFamily("proctree_tree_over_capacity",
                              "Housekeeping rounds in which live processes alone exceeded "
                              "the capacity.", value=snap.tree_over_capacity)
    source = GaugeMetricFamily("proctree_source_info",
                               "The active event source (netlink or procfs) and whether the "
                               "kernel event filter is on.", labels=["source", "filtered"])
    source.add_metric([snap.source or "none", "true" if snap.filtered else "false"], 1.0)
    yield source
    caps = GaugeMetricFamily("proctree_capability_info",
                             "What this host lets the exporter know, per category.",
                             labels=["category", "status", "backend"])
    for cap in snap.capabilities:
        caps.add_metric([cap.category, cap.status, cap.backend], 1.0)
    yield caps
    build = GaugeMetricFamily("proctree_build_info", "Version of proctree-exporter.",
                              labels=["version"])
    build.add_metric([snap.version], 1.0)
    yield build
    yield GaugeMetricFamily("proctree_ready", "1 once the first /proc snapshot is applied.",
                            value=1.0 if snap.ready else 0.0)
    yield CounterMetricFamily("proctree_collector_cpu_seconds",
                              "CPU time used by the collector thread.",
                              value=snap.collector_cpu_seconds)
    buckets = [(_le(bound), count) for bound, count in snap.lag_buckets]
    yield HistogramMetricFamily("proctree_event_lag_seconds",
                                "Delay from the kernel's event timestamp to the event being "
                                "applied to the tree.", buckets=buckets,
                                sum_value=snap.lag_sum_s)
    reloads = CounterMetricFamily("proctree_config_reloads",
                                  "Config reloads (SIGHUP) by result.", labels=["result"])
    reloads.add_metric(["success"], snap.reloads.success_total)
    reloads.add_metric(["failure"], snap.reloads.failure_total)
    yield reloads
    yield GaugeMetricFamily("proctree_config_last_reload_successful",
                            "1 if the last reload succeeded (or none happened).",
                            value=1.0 if snap.reloads.last_success else 0.0)


def _otel_families(snap: Snapshot) -> Iterator[Metric]:
    # families without samples while OpenTelemetry export is off
    otel = snap.otel
    open_spans = GaugeMetricFamily("proctree_otel_open_spans",
                                   "Process spans open now (exported when the process exits; "
                                   "checkpoint spans show them meanwhile).")
    exported = CounterMetricFamily("proctree_otel_exported",
                                   "Items the OTLP endpoint accepted, by signal (spans, logs).",
                                   labels=["signal"])
    dropped = CounterMetricFamily("proctree_otel_dropped",
                                  "Spans, span events and log records not delivered, by signal "
                                  "and reason (README: OpenTelemetry).",
                                  labels=["signal", "reason"])
    if otel is not None:
        open_spans.add_metric([], otel.open_spans)
        for signal, count in sorted(otel.exported.items()):
            exported.add_metric([signal], count)
        for (signal, reason), count in sorted(otel.dropped.items()):
            dropped.add_metric([signal, reason], count)
    yield from (open_spans, exported, dropped)


def _stream_families(snap: Snapshot) -> Iterator[Metric]:
    streams = snap.streams
    yield GaugeMetricFamily("proctree_event_streams_open",
                            "Clients following /api/v1/events now.",
                            value=streams.open if streams is not None else 0)
    yield CounterMetricFamily("proctree_event_stream_events_sent",
                              "Events written to /api/v1/events clients (one per client).",
                              value=streams.events_sent if streams is not None else 0)
    dropped = CounterMetricFamily("proctree_event_stream_clients_dropped",
                                  "Event stream clients cut off or refused, by reason: slow "
                                  "(fell more than the send buffer behind), limit (beyond "
                                  "web.max_streams), shutdown.", labels=["reason"])
    for reason in DROP_REASONS:
        dropped.add_metric([reason], streams.dropped.get(reason, 0) if streams else 0)
    yield dropped


def _control_families(snap: Snapshot) -> Iterator[Metric]:
    """The write API's families: only while it is on (``api.write.enabled``)."""
    c = snap.control
    if c is None:
        return
    writes = CounterMetricFamily("proctree_api_writes",
                                 "Write API requests by operation (ensure, remove, kill_tree, "
                                 "kill_process) and HTTP status code, refusals included.",
                                 labels=["operation", "code"])
    for (op, code), count in sorted(c.writes.items()):
        writes.add_metric([op, code], count)
    yield writes
    yield GaugeMetricFamily("proctree_runtime_roots", "Roots added through the write API.",
                            value=c.runtime_roots)
    yield GaugeMetricFamily("proctree_runtime_roots_restored",
                            "Runtime roots brought back from the state file at start.",
                            value=c.restored)
    yield CounterMetricFamily("proctree_runtime_roots_gone",
                              "Runtime pid roots not brought back: their process exited (or "
                              "its pid was reused) while the exporter was down.",
                              value=c.gone)


def _state_families(snap: Snapshot) -> Iterator[Metric]:
    """The state file's families: only while one is kept (``state.path``)."""
    st = snap.state
    if st is None:
        return
    yield CounterMetricFamily("proctree_state_writes",
                              "State file writes that succeeded.", value=st.writes_total)
    yield CounterMetricFamily("proctree_state_write_failures",
                              "State file writes that failed (the log says why).",
                              value=st.write_failures_total)
    yield GaugeMetricFamily("proctree_state_last_write_timestamp_seconds",
                            "When the state file was last written successfully (Unix time).",
                            value=st.last_write_ts)
    yield GaugeMetricFamily("proctree_state_last_write_duration_seconds",
                            "How long the last successful write took, capture to fsync.",
                            value=st.last_write_seconds)
    yield GaugeMetricFamily("proctree_state_last_write_bytes",
                            "Size of the state file last written.", value=st.last_write_bytes)
    ignored = CounterMetricFamily("proctree_state_ignored",
                                  "State files ignored at start, by reason: unreadable, "
                                  "truncated, corrupt, version, other_boot.", labels=["reason"])
    for reason in IGNORE_REASONS:
        ignored.add_metric([reason], st.ignored.get(reason, 0))
    yield ignored
    yield GaugeMetricFamily("proctree_state_restored_processes",
                            "Live processes whose fork parent came back from the state file "
                            "at start.", value=st.restored_processes)
    dropped = GaugeMetricFamily("proctree_state_dropped_processes",
                                "Processes in the state file not restored at start, by reason: "
                                "exited (while the exporter was down), pid_reused (their pid "
                                "names another process now), inconsistent.", labels=["reason"])
    for reason in (DROP_EXITED, DROP_PID_REUSED, DROP_INCONSISTENT):
        dropped.add_metric([reason], st.dropped.get(reason, 0))
    yield dropped
    yield GaugeMetricFamily("proctree_state_counters_continued",
                            "1 if the per-root counters continued from a state file written "
                            "at a clean shutdown, 0 if they started from zero.",
                            value=int(st.counters_continued))


def _resource_families(snap: Snapshot, per_root: PerRoot[RootResources]) -> Iterator[Metric]:
    """What each root's processes cost (only while resources.enabled is on)."""
    res = snap.resources
    if res is None:
        return
    # before the first sample round, no figures: a counter shown as 0 and then as the
    # running members' totals would read as a spike
    yield from per_root(res.roots if res.last_round_wall is not None else ())
    age = GaugeMetricFamily("proctree_resources_sample_age_seconds",
                            "Age of the last resource sample round (absent before the first).")
    if res.last_round_wall is not None:
        age.add_metric([], max(snap.ts - res.last_round_wall, 0.0))
    yield age
    yield GaugeMetricFamily("proctree_resources_sample_duration_seconds",
                            "Wall time of the last sample round.", value=res.last_round_seconds)
    yield CounterMetricFamily("proctree_resources_sampler_cpu_seconds",
                              "CPU used by the resource sampler thread.",
                              value=res.sampler_cpu_seconds)
    yield CounterMetricFamily("proctree_resources_samples",
                              "Live member samples taken.", value=res.sampled_total)
    yield CounterMetricFamily("proctree_resources_exit_records",
                              "Whole-process taskstats exit records received (host-wide).",
                              value=res.exit_records)
    yield CounterMetricFamily("proctree_resources_exit_records_lost",
                              "Taskstats exit records the kernel dropped (socket overrun).",
                              value=res.records_lost)
    yield CounterMetricFamily("proctree_resources_exits_accounted",
                              "Exited members whose final figures were counted (from their "
                              "exit record, or from /proc while unreaped).",
                              value=res.exits_accounted)
    unaccounted = CounterMetricFamily("proctree_resources_exits_unaccounted",
                                      "Exited members whose final figures never came: their "
                                      "last sample counts instead, by reason.",
                                      labels=["reason"])
    for reason in UNACCOUNTED_REASONS:
        unaccounted.add_metric([reason], res.exits_unaccounted.get(reason, 0))
    yield unaccounted


def _le(bound: float) -> str:
    return "+Inf" if math.isinf(bound) else repr(bound)


class SnapshotCollector(Collector):
    """Registered once; every collect() takes a fresh snapshot.

    The families with a ``root`` label come with their lines already rendered
    (:class:`~.exposition.RenderedFamily`), each root's kept from the last scrape while
    its record is unchanged; prometheus_client's encoders read their samples as usual.
    """

    def __init__(self, take: Callable[[], Snapshot],
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._take = take
        self._clock = clock
        self.roots = KeptLines(ROOT_FAMILIES)
        self.resources = KeptLines(RESOURCE_ROOT_FAMILIES)

    def describe(self) -> list[Metric]:
        return []  # no describe-time snapshot: registration must not touch the tree

    def collect(self) -> Iterator[Metric]:
        t0 = self._clock()
        yield from _families(self._take(), self.roots, self.resources)
        yield GaugeMetricFamily("proctree_scrape_duration_seconds",
                                "Time to snapshot the state and build the families above.",
                                value=self._clock() - t0)
