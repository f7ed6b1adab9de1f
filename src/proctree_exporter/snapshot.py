"""One consistent, immutable picture of the exporter's numbers, for /metrics.

Prometheus (and the OTLP copy of the same families) never read the tree or
the roots while they format: :func:`take` copies the counters they need under
the tree lock, O(roots) plus O(event types), and releases it. Building
/metrics from a :class:`Snapshot` therefore costs the same whatever the number
of processes on the host. Everything per process leaves the core through the
roots' change logs instead (:mod:`.changelog`).
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass, field, replace

from . import __version__
from .capabilities import Capability
from .collector import LAG_BUCKETS, Collector
from .control import ControlStats
from .host import HostStates
from .membership import Roots, RootState
from .resources import ResourceStats
from .state import StateStats
from .stream import StreamStats
from .tree import PidTree


@dataclass(frozen=True, slots=True)
class RootSnapshot:
    """One root's numbers."""

    name: str
    select: str
    up: bool
    instances: int
    start_time: float | None  # wall-clock start of the newest live instance
    members: int
    classes: Mapping[str, int]  # healthy, orphaned, zombie
    spawned_total: int
    exited_total: int
    restarts_total: int
    pid_reuse_total: int
    actions: Mapping[tuple[str, str], int]  # (action, outcome) -> count
    class_changes: Mapping[str, int]  # new class -> count
    max_depth: int
    truncated: bool
    tombstones: int
    runtime: bool = False  # added at run time (write API), not by config.yaml
    inferred: Mapping[str, int] = field(default_factory=dict)  # see Roots.confidence


@dataclass(frozen=True, slots=True)
class ReloadStatus:
    """Outcome of config reloads (SIGHUP)."""

    success_total: int = 0
    failure_total: int = 0
    last_success: bool = True
    last_ts: float = 0.0
    last_error: str = ""


@dataclass(frozen=True, slots=True)
class OtelStats:
    """What the OpenTelemetry export got through and what it dropped (see README)."""

    open_spans: int
    exported: Mapping[str, int]  # signal (spans, logs) -> items the endpoint accepted
    dropped: Mapping[tuple[str, str], int]  # (signal, reason) -> items dropped


@dataclass(frozen=True, slots=True)
class Snapshot:
    """Everything /metrics shows, at one moment."""

    ts: float
    version: str
    ready: bool
    source: str
    filtered: bool
    capabilities: tuple[Capability, ...]
    roots: tuple[RootSnapshot, ...]
    events: Mapping[str, int]
    events_lost: int
    overruns: int
    seq_gap_events: int
    kernel_drops: int
    resyncs: Mapping[str, int]
    parse_errors: Mapping[str, int]
    lag_buckets: tuple[tuple[float, int], ...]  # (upper bound s, cumulative count), +Inf last
    lag_sum_s: float
    collector_cpu_seconds: float
    tree_live: int
    tree_tombstones: int
    tree_capacity: int
    tree_over_capacity: int
    processes_forked: int
    processes_exited: int
    missed_exits: int
    exec_unread: int
    stale_events: int
    pid_reuse: int
    threads: int
    lineage_unknown: int
    host_zombies: int
    host_states: HostStates | None
    reloads: ReloadStatus = field(default_factory=ReloadStatus)
    otel: OtelStats | None = None  # None while OpenTelemetry export is off
    streams: StreamStats | None = None  # None until ready
    state: StateStats | None = None  # None while no state file is kept
    resources: ResourceStats | None = None  # None while resources.enabled is off
    control: ControlStats | None = None  # None while the write API is off


def take(tree: PidTree, collector: Collector, roots: Roots | None,
         capabilities: tuple[Capability, ...], host_states: HostStates | None,
         reloads: ReloadStatus, otel: OtelStats | None = None,
         streams: StreamStats | None = None, state: StateStats | None = None,
         resources: ResourceStats | None = None,
         control: ControlStats | None = None) -> Snapshot:
    """Copy the current state under the tree lock. O(roots), not O(processes)."""
    cs = collector.stats
    with tree.lock:
        ts = tree.stats
        root_snaps = tuple(_root(roots, r) for r in roots.roots.values()) if roots else ()
        cumulative = []
        running = 0
        for bound, count in zip((*LAG_BUCKETS, float("inf")), cs.lag.counts, strict=True):
            running += count
            cumulative.append((bound, running))
        snap = Snapshot(
            ts=time.time(),
            version=__version__,
            ready=collector.ready.is_set() and roots is not None,
            source=cs.source,
            filtered=cs.filtered,
            capabilities=capabilities,
            roots=root_snaps,
            events=dict(cs.events),
            events_lost=cs.events_lost,
            overruns=cs.overruns,
            seq_gap_events=cs.seq_gap_events,
            kernel_drops=cs.kernel_drops,
            resyncs=dict(cs.resync_reasons),
            parse_errors=dict(cs.parse_errors),
            lag_buckets=tuple(cumulative),
            lag_sum_s=cs.lag.sum_ns / 1e9,
            collector_cpu_seconds=collector.cpu_seconds(),
            tree_live=tree.live_count,
            tree_tombstones=tree.tombstone_count,
            tree_capacity=tree.max_nodes,
            tree_over_capacity=ts.over_capacity,
            processes_forked=ts.processes_forked,
            processes_exited=ts.processes_exited,
            missed_exits=ts.missed_exits,
            exec_unread=ts.exec_unread,
            stale_events=ts.stale_events,
            pid_reuse=ts.pid_reuse,
            threads=ts.threads_live,
            lineage_unknown=ts.lineage_unknown,
            host_zombies=tree.zombie_count,
            host_states=host_states,
            reloads=reloads,
            otel=otel,
            streams=StreamStats(streams.open, streams.events_sent, dict(streams.dropped))
            if streams is not None else None,
            state=replace(state, ignored=dict(state.ignored), dropped=dict(state.dropped))
            if state is not None and state.enabled else None,
            resources=resources,
            control=replace(control, writes=dict(control.writes))
            if control is not None else None,
        )
    return snap


def _root(roots: Roots, root: RootState) -> RootSnapshot:
    starts = [roots.clock.started_at(n.start_ticks) for n in root.instances]
    return RootSnapshot(
        name=root.name,
        select=root.spec.select,
        up=root.alive,
        instances=len(root.instances),
        start_time=max(starts) if starts else None,
        members=root.n_listed,
        classes={str(k): v for k, v in root.n_class.items()},
        spawned_total=root.spawned_total,
        exited_total=root.exited_total,
        restarts_total=root.restarts,
        pid_reuse_total=root.pid_reuse_seen,
        actions=dict(root.actions),
        class_changes=dict(root.class_changes_total),
        max_depth=root.deepest,
        truncated=root.n_listed > root.spec.max_members,
        tombstones=len(root.tombstones),
        runtime=root.spec.runtime,
        inferred=dict(root.inferred),
    )
