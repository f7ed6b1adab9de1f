"""A prometheus_client Collector that builds every family from one :class:`Snapshot`.

Each scrape takes one snapshot (O(roots)) and formats it; concurrent scrapes
each take their own. Families are built fresh per scrape, so a root removed
by a reload disappears from /metrics at once. No family carries a ``pid``
label: per-process detail belongs to the JSON API and OpenTelemetry.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator

from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from ..classification import LIVE_CLASSES
from ..resources import FIELDS as RESOURCE_FIELDS
from ..resources import UNACCOUNTED_REASONS
from ..snapshot import Snapshot
from ..state import IGNORE_REASONS
from ..stream import DROP_REASONS
from ..tree import DROP_EXITED, DROP_INCONSISTENT, DROP_PID_REUSED


def families(snap: Snapshot) -> Iterator[Metric]:
    """Every metric family for ``snap``, in a stable order."""
    yield from _root_families(snap)
    yield from _host_families(snap)
    yield from _self_families(snap)
    yield from _otel_families(snap)
    yield from _stream_families(snap)
    yield from _state_families(snap)
    yield from _resource_families(snap)
    yield from _control_families(snap)


def _root_families(snap: Snapshot) -> Iterator[Metric]:
    roots = snap.roots
    up = GaugeMetricFamily("proctree_root_up",
                           "1 while at least one process matching the root is alive.",
                           labels=["root"])
    instances = GaugeMetricFamily("proctree_root_instances",
                                  "Live processes matching the root's selector (nested "
                                  "matches count once).", labels=["root"])
    start = GaugeMetricFamily("proctree_root_start_time_seconds",
                              "Start time of the newest live root instance, seconds since "
                              "the epoch.", labels=["root"])
    procs = GaugeMetricFamily("proctree_root_processes",
                              "Live members of the root's tree by class (zombie: exited, "
                              "unreaped past the grace).", labels=["root", "class"])
    spawned = CounterMetricFamily("proctree_root_spawned",
                                  "Processes that joined the root's tree, short-lived "
                                  "included.", labels=["root"])
    exited = CounterMetricFamily("proctree_root_exited",
                                 "Processes that left the root's tree (exited).",
                                 labels=["root"])
    restarts = CounterMetricFamily("proctree_root_restarts",
                                   "Times a root instance was replaced by a new identity.",
                                   labels=["root"])
    reuse = CounterMetricFamily("proctree_root_pid_reuse",
                                "Exited members whose pid was given to another process.",
                                labels=["root"])
    actions = CounterMetricFamily("proctree_root_actions",
                                  "Signals sent (or, in dry run, not sent) to members, by "
                                  "action and outcome.", labels=["root", "action", "outcome"])
    changes = CounterMetricFamily("proctree_root_class_changes",
                                  "Members that changed to a class.", labels=["root", "class"])
    depth = GaugeMetricFamily("proctree_root_max_depth",
                              "Deepest live member, in generations below its instance.",
                              labels=["root"])
    truncated = GaugeMetricFamily("proctree_root_truncated",
                                  "1 when the root has more members than max_members lists.",
                                  labels=["root"])
    tombstones = GaugeMetricFamily("proctree_root_tombstones",
                                   "Exited members kept for inspection.", labels=["root"])
    exact = GaugeMetricFamily("proctree_root_confidence_exact",
                              "1 when every live member below an instance was placed by a "
                              "fork event; 0 (degraded) when /proc placed some (see "
                              "proctree_root_inferred_members).", labels=["root"])
    inferred = GaugeMetricFamily("proctree_root_inferred_members",
                                 "Live members placed by /proc rather than a fork event, by "
                                 "how: snapshot (present at start), resync (after lost "
                                 "events), late, poll.", labels=["root", "source"])
    runtime = GaugeMetricFamily("proctree_root_runtime",
                                "1 for a root added at run time (write API), 0 for one of "
                                "config.yaml.", labels=["root"])
    for r in roots:
        n = [r.name]
        up.add_metric(n, 1.0 if r.up else 0.0)
        instances.add_metric(n, r.instances)
        if r.start_time is not None:
            start.add_metric(n, r.start_time)
        for cls in LIVE_CLASSES:
            procs.add_metric([r.name, cls], r.classes.get(cls, 0))
        spawned.add_metric(n, r.spawned_total)
        exited.add_metric(n, r.exited_total)
        restarts.add_metric(n, r.restarts_total)
        reuse.add_metric(n, r.pid_reuse_total)
        for (action, outcome), count in sorted(r.actions.items()):
            actions.add_metric([r.name, action, outcome], count)
        for cls, count in sorted(r.class_changes.items()):
            changes.add_metric([r.name, cls], count)
        depth.add_metric(n, r.max_depth)
        truncated.add_metric(n, 1.0 if r.truncated else 0.0)
        tombstones.add_metric(n, r.tombstones)
        exact.add_metric(n, 0.0 if r.inferred else 1.0)
        for source, count in sorted(r.inferred.items()):
            inferred.add_metric([r.name, source], count)
        runtime.add_metric(n, 1.0 if r.runtime else 0.0)
    yield from (up, instances, start, procs, spawned, exited, restarts, reuse, actions, changes,
                depth, truncated, tombstones, exact, inferred, runtime)


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


def _resource_families(snap: Snapshot) -> Iterator[Metric]:
    """What each root's processes cost (only while resources.enabled is on)."""
    res = snap.resources
    if res is None:
        return
    shown = res.last_round_wall is not None  # before the first sample round, no figures:
    # a counter shown as 0 and then as the running members' totals would read as a spike
    c = {f: i for i, f in enumerate(RESOURCE_FIELDS)}
    cpu = CounterMetricFamily("proctree_root_cpu_seconds",
                              "CPU time of the root's processes, exited ones included (at "
                              "exit, from the kernel's taskstats record), by mode.",
                              labels=["root", "mode"])
    io = CounterMetricFamily("proctree_root_io_bytes",
                             "Storage IO of the root's processes: bytes read from devices and "
                             "dirtied for writing (/proc/PID/io read_bytes, write_bytes).",
                             labels=["root", "direction"])
    ctx = CounterMetricFamily("proctree_root_context_switches",
                              "Context switches of the root's processes, by kind (live "
                              "processes: main thread; exited: every thread).",
                              labels=["root", "kind"])
    faults = CounterMetricFamily("proctree_root_page_faults",
                                 "Page faults of the root's processes, by kind.",
                                 labels=["root", "kind"])
    rss = GaugeMetricFamily("proctree_root_memory_rss_bytes",
                            "Resident memory of the root's live processes, summed (shared "
                            "pages count once per process).", labels=["root"])
    pss = GaugeMetricFamily("proctree_root_memory_pss_bytes",
                            "Proportional set size of the root's live processes, summed "
                            "(resources.pss).", labels=["root"])
    fds = GaugeMetricFamily("proctree_root_open_fds",
                            "Open file descriptors of the root's live processes.",
                            labels=["root"])
    threads = GaugeMetricFamily("proctree_root_threads",
                                "Threads of the root's live processes.", labels=["root"])
    sampled = GaugeMetricFamily("proctree_root_sampled_processes",
                                "Live processes of the root with a resource sample.",
                                labels=["root"])
    if shown:
        for r in res.roots:
            v = r.counters
            cpu.add_metric([r.name, "user"], v[c["cpu_user_us"]] / 1e6)
            cpu.add_metric([r.name, "system"], v[c["cpu_system_us"]] / 1e6)
            io.add_metric([r.name, "read"], v[c["read_bytes"]])
            io.add_metric([r.name, "write"], v[c["write_bytes"]])
            ctx.add_metric([r.name, "voluntary"], v[c["voluntary_ctx_switches"]])
            ctx.add_metric([r.name, "involuntary"], v[c["involuntary_ctx_switches"]])
            faults.add_metric([r.name, "minor"], v[c["minor_faults"]])
            faults.add_metric([r.name, "major"], v[c["major_faults"]])
            rss.add_metric([r.name], r.rss_bytes)
            if r.pss_bytes is not None:
                pss.add_metric([r.name], r.pss_bytes)
            fds.add_metric([r.name], r.open_fds)
            threads.add_metric([r.name], r.threads)
            sampled.add_metric([r.name], r.sampled)
    yield from (cpu, io, ctx, faults, rss, pss, fds, threads, sampled)
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
    """Registered once; every collect() takes a fresh snapshot."""

    def __init__(self, take: Callable[[], Snapshot]) -> None:
        self._take = take

    def describe(self) -> list[Metric]:
        return []  # no describe-time snapshot: registration must not touch the tree

    def collect(self) -> Iterator[Metric]:
        t0 = time.monotonic()
        yield from families(self._take())
        yield GaugeMetricFamily("proctree_scrape_duration_seconds",
                                "Time to snapshot the state and build the families above.",
                                value=time.monotonic() - t0)
