"""OpenTelemetry traces of process trees: each root instance a trace, each process a span.

The model (README, "OpenTelemetry"):

- Every instance of a root starts a trace; every member process is a span,
  parented on its fork parent's span, from its start (fork) to its exit.
  Attributes follow the OpenTelemetry process conventions (``process.*``).
- Every change is an event named ``proctree.*`` (exec, orphaned, zombie,
  pid_reused, action, exit, restart), added to the span it concerns and/or
  emitted as an OpenTelemetry log record (``otel.events``).
- A span is exported when its process exits. So that a process that runs for
  weeks is visible meanwhile, it gets a *checkpoint span* every
  ``checkpoint_interval_seconds``: a child of its process span covering the
  interval since the previous checkpoint, with the process's current
  attributes and copies of the events of that interval.

Data comes from the roots' typed events only: one cursor per root over its
change log, created before the daemon reports ready, read every
``poll_interval_seconds``; a round costs O(events since the previous one), plus
O(due checkpoints). Nothing here reads the tree, its lock or /proc: what a
span needs (names, classes, parents) is what the events said.

Bounds: a token bucket per root on new spans, ``max_open_spans`` for open
spans (and as many stand-ins: processes without a span, kept so that their
children still find an ancestor's span), a bounded LRU of ended spans (for
late children and events), and bounded batch queues (:mod:`.otlp`). Every
drop is counted.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from opentelemetry import trace
from opentelemetry._logs import SeverityNumber
from opentelemetry.context import Context
from opentelemetry.trace import NonRecordingSpan, SpanContext, Status, StatusCode

from ..changelog import ChangeLog, EventSource, Relist
from ..classification import EXITED, HEALTHY, ORPHANED, PID_REUSED, ZOMBIE, signal_name
from ..events import EventKind, RootEvent
from ..identity import Identity, same_start
from ..resources import FIELDS as RESOURCE_FIELDS
from ..resources import ProcessUsage
from ..users import USER_NAMES
from .otlp import SPAN_EVENTS, SPANS, Counts, Pipeline

if TYPE_CHECKING:
    from opentelemetry._logs import Logger
    from opentelemetry.sdk._logs.export import LogRecordExporter
    from opentelemetry.sdk.metrics.export import MetricReader
    from opentelemetry.sdk.trace.export import SpanExporter
    from opentelemetry.trace import Span, Tracer

    from ..config import OtelConfig
    from ..snapshot import OtelStats, Snapshot

log = logging.getLogger("proctree_exporter.otel")

# Event names: span events and log records alike (README lists their attributes)
EV_START = "proctree.process.start"  # log records only: in a trace, the span's start says it
EV_EXEC = "proctree.process.exec"
EV_ORPHANED = "proctree.process.orphaned"
EV_ZOMBIE = "proctree.process.zombie"
EV_ZOMBIE_REAPED = "proctree.process.zombie_reaped"
EV_PID_REUSED = "proctree.process.pid_reused"
EV_ACTION = "proctree.process.action"
EV_EXIT = "proctree.process.exit"
EV_CLASS = "proctree.process.class"  # any other class change
EV_RESTART = "proctree.root.restart"
EVENT_NAMES = (EV_START, EV_EXEC, EV_ORPHANED, EV_ZOMBIE, EV_ZOMBIE_REAPED, EV_PID_REUSED,
               EV_ACTION, EV_EXIT, EV_CLASS, EV_RESTART)

CHECKPOINT = "checkpoint"  # proctree.span.kind of checkpoint spans



def _ns(t: float) -> int:
    return round(t * 1e9)


def iso8601(t: float) -> str:
    """Wall-clock seconds as ISO 8601 in UTC, as the process conventions want."""
    return datetime.fromtimestamp(t, tz=UTC).isoformat(timespec="milliseconds").replace(
        "+00:00", "Z")


def _program_attrs(comm: str | None, exe: str | None, cmdline: str | None) -> dict[str, Any]:
    """What a process runs, as span attributes (``cmdline``: only when captured)."""
    attrs: dict[str, Any] = {"process.executable.name": _exe_name(exe, comm)}
    if comm:
        attrs["proctree.process.comm"] = comm
    if exe:
        attrs["process.executable.path"] = exe
    if cmdline:
        attrs["process.command_line"] = cmdline
        attrs["process.command"] = cmdline.split(" ", 1)[0]
    return attrs


def _exe_name(exe: str | None, comm: str | None) -> str:
    if exe:
        return exe.removesuffix(" (deleted)").rsplit("/", 1)[-1]
    return comm or "?"


class TokenBucket:
    """``rate`` tokens a second, at most ``burst`` saved up."""

    def __init__(self, rate: float, burst: int, clock: Callable[[], float] = time.monotonic):
        self.rate = rate
        self.burst = float(burst)
        self.tokens = float(burst)
        self._clock = clock
        self._last = clock()

    def take(self) -> bool:
        """Spend one token; False when there is none."""
        now = self._clock()
        self.tokens = min(self.burst, self.tokens + (now - self._last) * self.rate)
        self._last = now
        if self.tokens < 1.0:
            return False
        self.tokens -= 1.0
        return True


@dataclass(slots=True, eq=False)
class _Proc:
    """A live member as this module tracks it: with an open span, or a stand-in."""

    identity: Identity
    span: Span | None  # None for a stand-in (its span was dropped)
    ctx: SpanContext | None  # its span's; a stand-in's nearest ancestor's (or None)
    lineage_ppid: int | None
    depth: int
    comm: str | None
    exe: str | None
    cmdline: str | None
    started_at: float = 0.0
    cls: str = HEALTHY
    mark: float = 0.0  # start of the current checkpoint interval (wall clock)
    checkpoints: int = 0
    recent: list[tuple[str, dict[str, Any], int]] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class _Ended:
    """A span that ended (or a process that never had one), for late lookups."""

    start_ticks: int
    ctx: SpanContext | None  # a stand-in's is its ancestor's
    own: bool  # ctx is this process's own span
    exited_at: float


class _RootTrace:
    """Per-root state: its cursor, its open spans, recently ended ones, its rate limit."""

    def __init__(self, name: str, log: ChangeLog, relist: Relist, bucket: TokenBucket,
                 max_ended: int) -> None:
        self.name = name
        self.log = log
        self.seq = relist.seq  # the cursor: events after it are read by the next round
        self.pending: Relist | None = relist  # applied by the first round
        self.spec = relist.spec
        self.spawned = relist.spawned_total  # joins accounted for (spans, drops)
        self.bucket = bucket
        self.capture = relist.spec.capture_cmdline
        # spans, ordered by mark (checkpoint order); an OrderedDict so that moving the
        # oldest to the end again and again stays O(1)
        self.open: OrderedDict[Identity, _Proc] = OrderedDict()
        self.standins: dict[Identity, _Proc] = {}
        self.by_pid: dict[int, _Proc] = {}  # live members tracked here, by pid
        self.instances: dict[int, _Proc] = {}  # trace id -> its open instance span
        self.ended: OrderedDict[int, _Ended] = OrderedDict()  # pid -> newest, LRU
        self.max_ended = max_ended
        # zombie identity -> (its parent's identity, its exit time), until reaped
        self.zombies: OrderedDict[Identity, tuple[Identity, float]] = OrderedDict()
        self.exited_at: OrderedDict[Identity, float] = OrderedDict()  # for zombie seconds

    def listed(self, depth: int | None) -> bool:
        return bool(depth) or self.spec.include_root

    def live(self, pid: int, start: int) -> _Proc | None:
        p = self.by_pid.get(pid)
        if p is not None and same_start(p.identity[1], start):
            return p
        # by_pid names the newest holder of a pid: an older one that exited in the
        # same round (a reuse within one look) is still found by identity
        p = self.open.get((pid, start)) or self.standins.get((pid, start))
        if p is not None:
            return p
        for q in (*self.open.values(), *self.standins.values()):
            if q.identity[0] == pid and same_start(q.identity[1], start):
                return q
        return None

    def gone(self, pid: int, start: int) -> _Ended | None:
        e = self.ended.get(pid)
        return e if e is not None and same_start(e.start_ticks, start) else None

    def remember(self, pid: int, ended: _Ended) -> None:
        self.ended[pid] = ended
        self.ended.move_to_end(pid)
        while len(self.ended) > self.max_ended:
            self.ended.popitem(last=False)


def _usage_attrs(used: ProcessUsage) -> dict[str, Any]:
    """An exited process's cost as span attributes (its exit record, or last sample)."""
    c = dict(zip(RESOURCE_FIELDS, used.counters, strict=True))
    attrs: dict[str, Any] = {
        "proctree.process.cpu.user_seconds": c["cpu_user_us"] / 1e6,
        "proctree.process.cpu.system_seconds": c["cpu_system_us"] / 1e6,
        "proctree.process.disk.read_bytes": c["read_bytes"],
        "proctree.process.disk.write_bytes": c["write_bytes"],
        "proctree.process.context_switches.voluntary": c["voluntary_ctx_switches"],
        "proctree.process.context_switches.involuntary": c["involuntary_ctx_switches"],
        "proctree.process.page_faults.minor": c["minor_faults"],
        "proctree.process.page_faults.major": c["major_faults"],
    }
    if used.rss_bytes:
        attrs["proctree.process.memory.rss_bytes"] = used.rss_bytes
    return attrs


class ProcessTracer:
    """Turns roots' events into spans, span events and log records. No thread:
    :meth:`poll` does one round; :class:`OtelExporter` calls it periodically.

    The cursors are placed when the tracer is made (and when a root appears),
    so everything after that is traced, however long until the first round.
    """

    def __init__(self, source: EventSource, cfg: OtelConfig, tracer: Tracer,
                 logger: Logger | None, counts: Counts,
                 clock: Callable[[], float] = time.time,
                 usage: Callable[[Identity], ProcessUsage | None] | None = None) -> None:
        self.source = source
        self.usage = usage  # an exited member's CPU, IO and memory (resources), if known
        self.cfg = cfg
        self.tracer = tracer
        self.logger = logger
        self.counts = counts
        self.clock = clock
        self.span_events = cfg.events in ("spans", "both")
        self.roots: dict[str, _RootTrace] = {}
        self.n_open = 0
        self.n_standins = 0
        self._lock = threading.Lock()
        with self._lock:
            self._follow_roots()

    # -- the round ---------------------------------------------------------------------

    def _follow_roots(self) -> None:
        """Place a cursor on every exported root that has none; close the traces of
        roots that are gone (or were replaced by a reload)."""
        names = set(self.source.root_names())
        wanted = (set(self.cfg.roots) & names) if self.cfg.roots else names
        for name in list(self.roots):
            rt = self.roots[name]
            try:
                same = self.source.log(name) is rt.log
            except KeyError:
                same = False
            if name not in wanted or not same:
                self._close_root(rt, "root_removed")
        for name in wanted:
            if name not in self.roots:
                try:
                    relist = self.source.relist(name)
                    log_ = self.source.log(name)
                except KeyError:
                    continue
                self.roots[name] = _RootTrace(
                    name, log_, relist, TokenBucket(self.cfg.max_spans_per_second,
                                                    self.cfg.burst),
                    self.cfg.max_open_spans)

    def poll(self) -> None:
        """Read every exported root's new events and emit them; run due checkpoints."""
        with self._lock:
            self._follow_roots()
            for rt in list(self.roots.values()):
                if rt.pending is not None:
                    relist, rt.pending = rt.pending, None
                    self._load(rt, relist, first=True)
                while True:
                    events, lost = rt.log.since(rt.seq, limit=4096)
                    if lost:
                        self._resync(rt)
                        continue
                    if not events:
                        break
                    rt.seq = events[-1].seq
                    for ev in events:
                        self._apply(rt, ev)
                    if rt.name not in self.roots:
                        break  # removed
            if self.cfg.checkpoint_interval_seconds > 0:
                self._checkpoints(self.clock())
            self.counts.open_spans = self.n_open

    def close(self) -> None:
        """End every open span now (the exporter stops): marked ``proctree.process.running``."""
        with self._lock:
            for rt in list(self.roots.values()):
                self._close_root(rt, "shutdown")
            self.counts.open_spans = self.n_open

    def _close_root(self, rt: _RootTrace, why: str) -> None:
        now = self.clock()
        for p in list(rt.open.values()):
            span = p.span
            assert span is not None
            span.set_attributes({"proctree.process.running": True,
                                 "proctree.span.end_reason": why})
            self._end_span(span, now)
        self.n_open -= len(rt.open)
        self.n_standins -= len(rt.standins)
        self.roots.pop(rt.name, None)

    def _load(self, rt: _RootTrace, relist: Relist, *, first: bool) -> int:
        """Begin spans for the relist's live members not tracked yet; return how many.
        On the first round they were there before us (``preexisting``)."""
        gone = {ev.identity for ev in relist.events if ev.kind is EventKind.EXITED}
        classes = {ev.identity: ev.new_class for ev in relist.events
                   if ev.kind is EventKind.CLASS and ev.new_class is not None}
        begun = 0
        for ev in relist.events:
            if ev.kind is not EventKind.JOINED or ev.identity in gone:
                continue
            if rt.live(ev.pid, ev.start_ticks) is not None or not rt.listed(ev.depth):
                continue
            self._begin(rt, ev, preexisting=True, late=not first)
            begun += 1
            p = rt.live(ev.pid, ev.start_ticks)
            if p is not None and ev.identity in classes:
                p.cls = classes[ev.identity]
        return begun

    def _resync(self, rt: _RootTrace) -> None:
        """The root's log moved on past our cursor: end the spans of processes that
        are gone, begin those we never saw join, count the ones that came and went."""
        try:
            relist = self.source.relist(rt.name)
        except KeyError:
            self._close_root(rt, "root_removed")
            return
        alive = {ev.identity for ev in relist.events if ev.kind is EventKind.JOINED} - {
            ev.identity for ev in relist.events if ev.kind is EventKind.EXITED}
        now = self.clock()
        for p in [*rt.open.values(), *rt.standins.values()]:
            if p.identity not in alive:
                self._finish(rt, p.identity, now, None, None, unobserved=True)
        begun = self._load(rt, relist, first=False)
        self.counts.drop(SPANS, "unobserved", max(relist.spawned_total - rt.spawned - begun, 0))
        rt.spawned = relist.spawned_total
        rt.seq = relist.seq

    def _apply(self, rt: _RootTrace, ev: RootEvent) -> None:
        kind = ev.kind
        if kind is EventKind.JOINED:
            if rt.listed(ev.depth):
                rt.spawned += 1
                self._begin(rt, ev, preexisting=False)
        elif kind is EventKind.EXITED:
            rt.exited_at[ev.identity] = ev.ts
            while len(rt.exited_at) > self.cfg.max_open_spans:
                rt.exited_at.popitem(last=False)
            self._finish(rt, ev.identity, ev.ts, ev.exit_code, ev.exit_signal, reason=ev.reason)
        elif kind is EventKind.EXEC:
            p = rt.live(ev.pid, ev.start_ticks)
            if p is not None:
                self._exec(rt, p, ev.comm, ev.exe, ev.cmdline, ev.ts, "exec", ev.prev_comm,
                           ev.prev_exe)
        elif kind in (EventKind.CLASS, EventKind.ACTION, EventKind.RESTART):
            self._on_event(rt, ev)
        elif kind is EventKind.ROOT_REMOVED:
            self._close_root(rt, "root_removed")

    # -- spans ---------------------------------------------------------------------------

    def _parent(self, rt: _RootTrace, ev: RootEvent) -> tuple[SpanContext | None,
                                                               _Proc | None, bool]:
        """(parent span context, the parent if tracked live, whether the parent is known)."""
        if ev.depth == 0:
            return None, None, True  # an instance starts a trace
        ppid = ev.lineage_ppid if ev.lineage_ppid is not None else ev.ppid
        p = rt.by_pid.get(ppid) if ppid is not None else None
        if p is not None and p.identity[1] <= ev.start_ticks + 1:
            return p.ctx, p, p.ctx is not None
        e = rt.ended.get(ppid) if ppid is not None else None
        if e is not None and e.start_ticks <= ev.start_ticks + 1:
            return e.ctx, None, e.ctx is not None
        return None, None, False

    def _attributes(self, rt: _RootTrace, ev: RootEvent) -> dict[str, Any]:
        ppid = ev.lineage_ppid if ev.lineage_ppid is not None else ev.ppid
        started = ev.started_at or ev.ts
        attrs: dict[str, Any] = {
            "process.pid": ev.pid,
            "process.parent_pid": ppid if ppid is not None else 0,
            "process.command": ev.comm or "?",  # the command line's first word, if captured
            "process.owner": USER_NAMES(ev.uid),
            "process.creation.time": iso8601(started),
            "proctree.root": rt.name,
            "proctree.process.start_ticks": ev.start_ticks,
            "proctree.process.depth": ev.depth or 0,
        }
        attrs.update(_program_attrs(ev.comm, ev.exe, ev.cmdline if rt.capture else None))
        if ev.lineage_known is False:
            attrs["proctree.lineage.known"] = False
        return attrs

    def _begin(self, rt: _RootTrace, ev: RootEvent, *, preexisting: bool,
               late: bool = False) -> None:
        pid, start = ev.pid, ev.start_ticks
        ident = Identity(pid, start)
        started = ev.started_at or ev.ts
        parent_ctx, parent, known = self._parent(rt, ev)
        reason = None
        if not preexisting and not rt.bucket.take():
            reason = "rate_limit"  # processes already there at the first look are no storm
        elif self.n_open >= self.cfg.max_open_spans:
            reason = "capacity"
        if reason is not None:
            self.counts.drop(SPANS, reason)
            if self.n_standins < self.cfg.max_open_spans:
                p = _Proc(ident, None, parent_ctx, ev.lineage_ppid, ev.depth or 0, ev.comm,
                          ev.exe, ev.cmdline, started)
                rt.standins[ident] = p
                rt.by_pid[pid] = p
                self.n_standins += 1
            return
        attrs = self._attributes(rt, ev)
        if preexisting and not late:
            attrs["proctree.process.preexisting"] = True
        if not known:
            attrs["proctree.parent.unknown"] = True
        ctx = (trace.set_span_in_context(NonRecordingSpan(parent_ctx)) if parent_ctx is not None
               else Context())  # an empty context: a new trace
        span = self.tracer.start_span(ev.comm or "process", context=ctx,
                                      start_time=_ns(started), attributes=attrs)
        p = _Proc(ident, span, span.get_span_context(), ev.lineage_ppid, ev.depth or 0,
                  ev.comm, ev.exe, ev.cmdline if rt.capture else None, started,
                  mark=self.clock())
        rt.open[ident] = p
        rt.by_pid[pid] = p
        self.n_open += 1
        if ev.depth == 0 and p.ctx is not None:
            rt.instances[p.ctx.trace_id] = p
        self._log(rt, p, p.ctx, EV_START, started, {}, SeverityNumber.INFO,
                  f"process {pid} ({ev.comm}) started")
        if preexisting and parent is not None and parent.span is not None and (
                parent.comm != ev.comm or (ev.exe and parent.exe and parent.exe != ev.exe)):
            # running something else than its parent when first seen: the usual
            # fork-then-exec happened before we looked; it belongs to the start
            self._exec_event(rt, p, started, "start", parent.comm, parent.exe)

    def _exec_event(self, rt: _RootTrace, p: _Proc, ts: float, seen: str,
                    old_comm: str | None, old_exe: str | None) -> None:
        attrs: dict[str, Any] = {"process.executable.name": _exe_name(p.exe, p.comm),
                                 "proctree.exec.seen": seen}
        if p.exe:
            attrs["process.executable.path"] = p.exe
        if rt.capture and p.cmdline:
            attrs["process.command_line"] = p.cmdline
        attrs["proctree.exec.previous.executable.name"] = _exe_name(old_exe, old_comm)
        self._event(rt, p, p.ctx, EV_EXEC, ts, attrs, SeverityNumber.INFO,
                    f"process {p.identity[0]} ({old_comm}) now runs "
                    f"{p.exe or p.comm}")

    def _exec(self, rt: _RootTrace, p: _Proc, comm: str | None, exe: str | None,
              cmdline: str | None, ts: float, seen: str, old_comm: str | None,
              old_exe: str | None) -> None:
        """``p`` runs something else now: an exec event, and its span renamed."""
        p.comm, p.exe = comm, exe or p.exe
        if rt.capture:
            p.cmdline = cmdline
        if p.span is None:
            return
        self._exec_event(rt, p, ts, seen, old_comm, old_exe)
        p.span.update_name(p.comm or "process")
        p.span.set_attributes(_program_attrs(p.comm, p.exe,
                                             p.cmdline if rt.capture else None))

    def _finish(self, rt: _RootTrace, ident: Identity, ended_at: float,
                exit_code: int | None, exit_signal: int | None, *, reason: str = "",
                unobserved: bool = False) -> None:
        pid, start = ident
        p = rt.live(pid, start)
        if p is None:
            return  # never tracked (its span drop is counted where it happened)
        if rt.by_pid.get(pid) is p:
            del rt.by_pid[pid]
        if p.span is None:
            del rt.standins[p.identity]
            self.n_standins -= 1
            rt.remember(pid, _Ended(start, p.ctx, False, ended_at))
            return
        attrs: dict[str, Any] = {"process.exit.time": iso8601(ended_at)}
        failed = False
        if exit_signal is not None:
            attrs["proctree.exit.signal"] = exit_signal
            attrs["proctree.exit.signal_name"] = signal_name(exit_signal)
            failed = True
        elif exit_code is not None:
            attrs["process.exit.code"] = exit_code
            failed = exit_code != 0
        else:
            attrs["proctree.exit.unobserved"] = True  # lost events: found gone
        used = self.usage(ident) if self.usage is not None else None
        if used is not None:
            attrs.update(_usage_attrs(used))
        if not reason:
            reason = f"process {pid} ({p.comm}) is gone; its exit was not observed" + (
                " (the exporter fell behind)" if unobserved else "")
        self._event(rt, p, p.ctx, EV_EXIT, ended_at, {**attrs, "proctree.reason": reason},
                    SeverityNumber.WARN if failed else SeverityNumber.INFO, reason)
        span = p.span
        span.set_attributes(attrs)
        if failed:
            span.set_status(Status(StatusCode.ERROR, reason))
        self._end_span(span, max(ended_at, p.started_at))
        del rt.open[p.identity]
        self.n_open -= 1
        if p.ctx is not None and rt.instances.get(p.ctx.trace_id) is p:
            del rt.instances[p.ctx.trace_id]
        rt.remember(pid, _Ended(start, p.ctx, True, ended_at))

    def _end_span(self, span: Span, at: float) -> None:
        span.end(end_time=_ns(at))
        self.counts.drop(SPAN_EVENTS, "span_limit", getattr(span, "dropped_events", 0))

    # -- events ----------------------------------------------------------------------------

    def _event(self, rt: _RootTrace, carrier: _Proc | None, subject_ctx: SpanContext | None,
               name: str, ts: float, attrs: dict[str, Any], severity: SeverityNumber,
               body: str, subject: Mapping[str, Any] | None = None) -> None:
        """One lifecycle event: a span event on ``carrier``'s span, and/or a log record
        tied to the span of the process it is about."""
        if self.span_events:
            if carrier is not None and carrier.span is not None:
                carrier.span.add_event(name, attrs, timestamp=_ns(ts))
                if len(carrier.recent) < self.cfg.max_events_per_span:
                    carrier.recent.append((name, attrs, _ns(ts)))
            else:
                self.counts.drop(SPAN_EVENTS, "no_span")
        ctx = subject_ctx or (carrier.ctx if carrier is not None else None)
        self._log(rt, carrier, ctx, name, ts, {**(subject or {}), **attrs}, severity, body)

    def _log(self, rt: _RootTrace, p: _Proc | None, ctx: SpanContext | None, name: str,
             ts: float, attrs: dict[str, Any], severity: SeverityNumber, body: str) -> None:
        if self.logger is None:
            return
        base: dict[str, Any] = {"proctree.root": rt.name}
        if p is not None and "process.pid" not in attrs:
            base["process.pid"] = p.identity[0]
            base["process.executable.name"] = _exe_name(p.exe, p.comm)
        context = (trace.set_span_in_context(NonRecordingSpan(ctx)) if ctx is not None
                   else Context())
        self.logger.emit(timestamp=_ns(ts), context=context, severity_number=severity,
                         severity_text=severity.name, body=body,
                         attributes={**base, **attrs}, event_name=name)

    def _fallback(self, rt: _RootTrace, ctx: SpanContext | None) -> _Proc | None:
        """The open instance span of the trace ``ctx`` belongs to (events about processes
        whose own span has ended go there)."""
        return rt.instances.get(ctx.trace_id) if ctx is not None else None

    def _on_event(self, rt: _RootTrace, ev: RootEvent) -> None:
        pid, start = ev.pid, ev.start_ticks
        p = rt.live(pid, start)
        ended = rt.gone(pid, start)
        own_ctx = p.ctx if p is not None and p.span is not None else (
            ended.ctx if ended is not None and ended.own else None)
        if (p is not None and p.span is None) or (p is None and ended is not None
                                                  and not ended.own):
            if p is not None and ev.kind is EventKind.CLASS and ev.new_class:
                p.cls = ev.new_class
            return  # a process without a span: its events go with it (the drop is counted)
        subject = {"process.pid": pid, "process.executable.name": ev.comm or "?"}
        reason = ev.reason
        base = {"proctree.reason": reason}
        warn, info = SeverityNumber.WARN, SeverityNumber.INFO
        if ev.kind is EventKind.RESTART:
            self._event(rt, p, own_ctx, EV_RESTART, ev.ts, base, info, reason, subject)
            return
        if ev.kind is EventKind.ACTION:
            attrs = {**base, "proctree.action.outcome": str(ev.outcome),
                     "proctree.action.signal": signal_name(ev.signal or 0)}
            carrier = p if p is not None else self._fallback(rt, own_ctx)
            self._event(rt, carrier, own_ctx, EV_ACTION, ev.ts, attrs,
                        warn if ev.outcome == "sent" else info, reason, subject)
            return
        new, old = ev.new_class, ev.old_class
        if p is not None and new:
            p.cls = new
        if new == ORPHANED:
            attrs: dict[str, Any] = dict(base)
            if ev.ppid is not None:
                attrs["process.parent_pid"] = ev.ppid  # its new parent
            if ev.other_pid is not None:
                attrs["proctree.lineage.parent_pid"] = ev.other_pid
            carrier = p if p is not None else self._fallback(rt, own_ctx)
            self._event(rt, carrier, own_ctx, EV_ORPHANED, ev.ts, attrs, warn, reason, subject)
        elif new == ZOMBIE:
            # on the span of the parent that fails to reap it
            parent = rt.by_pid.get(ev.other_pid) if ev.other_pid is not None else None
            if parent is not None and ev.other_start_ticks is not None and not same_start(
                    parent.identity[1], ev.other_start_ticks):
                parent = None
            exited_at = rt.exited_at.get((pid, start),
                                         ev.ts - (ev.seconds or 0.0))
            rt.zombies[(pid, start)] = (parent.identity if parent is not None else (-1, -1),
                                        exited_at)
            while len(rt.zombies) > self.cfg.max_open_spans:
                rt.zombies.popitem(last=False)
            attrs = {**base, "proctree.zombie.pid": pid,
                     "proctree.zombie.executable.name": ev.comm or "?",
                     "proctree.zombie.seconds": round(max(ev.ts - exited_at, 0.0), 3)}
            carrier = parent if parent is not None else self._fallback(rt, own_ctx)
            self._event(rt, carrier, own_ctx, EV_ZOMBIE, ev.ts, attrs, warn, reason, subject)
        elif new == EXITED and old == ZOMBIE:
            seen = rt.zombies.pop((pid, start), None)
            carrier = rt.live(*seen[0]) if seen is not None else None
            attrs = {**base, "proctree.zombie.pid": pid,
                     "proctree.zombie.executable.name": ev.comm or "?"}
            if seen is not None:
                attrs["proctree.zombie.seconds"] = round(max(ev.ts - seen[1], 0.0), 3)
            self._event(rt, carrier or self._fallback(rt, own_ctx), own_ctx, EV_ZOMBIE_REAPED,
                        ev.ts, attrs, info, reason, subject)
        elif new == PID_REUSED:
            self._event(rt, p or self._fallback(rt, own_ctx), own_ctx, EV_PID_REUSED, ev.ts,
                        base, info, reason, subject)
        else:
            attrs = {**base, "proctree.class.old": str(old), "proctree.class.new": str(new)}
            self._event(rt, p or self._fallback(rt, own_ctx), own_ctx, EV_CLASS, ev.ts, attrs,
                        info, reason, subject)

    # -- long-lived processes ----------------------------------------------------------------

    def _checkpoints(self, now: float) -> None:
        interval = self.cfg.checkpoint_interval_seconds
        for rt in self.roots.values():
            # rt.open is ordered by mark: the due ones are at the front
            while rt.open:
                ident, p = next(iter(rt.open.items()))
                if p.mark + interval > now:
                    break
                self._checkpoint(p, now)
                rt.open.move_to_end(ident)

    def _checkpoint(self, p: _Proc, now: float) -> None:
        span = p.span
        assert span is not None
        p.checkpoints += 1
        attrs = dict(getattr(span, "attributes", None) or {})
        attrs.update({"proctree.span.kind": CHECKPOINT, "proctree.checkpoint.seq": p.checkpoints,
                      "proctree.process.running": True, "proctree.process.class": p.cls})
        cp = self.tracer.start_span(f"{p.comm or 'process'} (running)",
                                    context=trace.set_span_in_context(span),
                                    start_time=_ns(p.mark), attributes=attrs)
        for name, ev_attrs, ts in p.recent:
            cp.add_event(name, ev_attrs, timestamp=ts)
        cp.end(end_time=_ns(now))
        p.recent.clear()
        p.mark = now


class OtelExporter:
    """OpenTelemetry export for a running daemon: the pipeline, the tracer and its thread."""

    def __init__(self, cfg: OtelConfig, source: EventSource,
                 snapshot: Callable[[], Snapshot] | None = None, *,
                 base_dir: Path | None = None, span_exporter: SpanExporter | None = None,
                 log_exporter: LogRecordExporter | None = None,
                 metric_reader: MetricReader | None = None,
                 usage: Callable[[Identity], ProcessUsage | None] | None = None) -> None:
        self.cfg = cfg
        self.counts = Counts()
        self.pipeline = Pipeline(cfg, self.counts, base_dir=base_dir,
                                 span_exporter=span_exporter, log_exporter=log_exporter,
                                 metric_reader=metric_reader)
        self.tracer = ProcessTracer(source, cfg, self.pipeline.tracer, self.pipeline.logger,
                                    self.counts, usage=usage)
        if self.pipeline.meter_provider is not None and snapshot is not None:
            from .otel_metrics import register_snapshot_instruments

            register_snapshot_instruments(self.pipeline.meter_provider, snapshot)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="proctree-otel", daemon=True)

    def start(self) -> None:
        """Start observing in the background."""
        self._thread.start()

    def poll(self) -> None:
        """One round now (tests drive the exporter with this instead of the thread)."""
        self.tracer.poll()

    def _run(self) -> None:
        while not self._stop.wait(self.cfg.poll_interval_seconds):
            try:
                self.tracer.poll()
            except Exception:  # keep exporting; the next round starts afresh
                log.exception("otel: a round failed")

    def stop(self) -> None:
        """Stop the thread, end open spans, flush within ``shutdown_timeout_seconds``."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(1.0)
        try:
            self.tracer.close()
        except Exception:
            log.exception("otel: ending open spans failed")
        self.pipeline.shutdown(self.cfg.shutdown_timeout_seconds)

    def stats(self) -> OtelStats:
        """Counts for /metrics."""
        return self.counts.stats()
