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

Data comes from the root watchers only: one :class:`~..watch.Watcher` per
root, observed every ``poll_interval_seconds``; an observation costs
O(changes), so does this module per poll (plus O(due checkpoints)).

Bounds: a token bucket per root on new spans, ``max_open_spans`` for open
spans (and as many stand-ins: processes without a span, kept so that their
children still find an ancestor's span), a bounded LRU of ended spans (for
late children and events), and bounded batch queues (:mod:`.otlp`). Every
drop is counted.
"""

from __future__ import annotations

import logging
import re
import signal
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

from ..procfs import ProcReadError, read_stat
from ..reaper import EXITED, ORPHANED, PID_REUSED, ZOMBIE, RootEvent
from .otlp import SPAN_EVENTS, SPANS, Counts, Pipeline

if TYPE_CHECKING:
    from opentelemetry._logs import Logger
    from opentelemetry.sdk._logs.export import LogRecordExporter
    from opentelemetry.sdk.metrics.export import MetricReader
    from opentelemetry.sdk.trace.export import SpanExporter
    from opentelemetry.trace import Span, Tracer

    from ..config import OtelConfig
    from ..snapshot import OtelStats, Snapshot
    from ..watch import MemberInfo, Observation, RootState, Watcher, Watchers

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
_SIGNAL_RE = re.compile(r"\bSIG[A-Z0-9]+")

Identity = tuple[int, int]


def _ns(t: float) -> int:
    return round(t * 1e9)


def iso8601(t: float) -> str:
    """Wall-clock seconds as ISO 8601 in UTC, as the process conventions want."""
    return datetime.fromtimestamp(t, tz=UTC).isoformat(timespec="milliseconds").replace(
        "+00:00", "Z")


def _same(a: int, b: int) -> bool:
    # start ticks derived from a FORK's timestamp are exact to within one tick
    return abs(a - b) <= 1


def _signal_name(sig: int) -> str:
    try:
        return signal.Signals(sig).name
    except ValueError:
        return str(sig)


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
    ppid: int  # its parent when it exited (the one that has to reap it)


class _RootTrace:
    """Per-root state: its watcher, its open spans, recently ended ones, its rate limit."""

    def __init__(self, name: str, state: RootState, watcher: Watcher, bucket: TokenBucket,
                 max_ended: int) -> None:
        self.name = name
        self.state = state
        self.watcher = watcher
        self.bucket = bucket
        self.capture = state.spec.capture_cmdline
        self.cmdline_max = state.spec.cmdline_max_chars
        self.first = True
        self.open: dict[Identity, _Proc] = {}  # spans, ordered by mark (checkpoint order)
        self.standins: dict[Identity, _Proc] = {}
        self.by_pid: dict[int, _Proc] = {}  # live members tracked here, by pid
        self.instances: dict[int, _Proc] = {}  # trace id -> its open instance span
        self.ended: OrderedDict[int, _Ended] = OrderedDict()  # pid -> newest, LRU
        self.max_ended = max_ended
        # zombie identity -> (its parent's identity, its exit time), until reaped
        self.zombies: OrderedDict[Identity, tuple[Identity, float]] = OrderedDict()

    def live(self, pid: int, start: int) -> _Proc | None:
        p = self.by_pid.get(pid)
        if p is not None and _same(p.identity[1], start):
            return p
        # by_pid names the newest holder of a pid: an older one that exited in the
        # same window (a reuse within one look) is still found by identity
        for s in (start, start - 1, start + 1):
            p = self.open.get((pid, s)) or self.standins.get((pid, s))
            if p is not None:
                return p
        return None

    def gone(self, pid: int, start: int) -> _Ended | None:
        e = self.ended.get(pid)
        return e if e is not None and _same(e.start_ticks, start) else None

    def remember(self, pid: int, ended: _Ended) -> None:
        self.ended[pid] = ended
        self.ended.move_to_end(pid)
        while len(self.ended) > self.max_ended:
            self.ended.popitem(last=False)


class ProcessTracer:
    """Turns root observations into spans, span events and log records. No thread:
    :meth:`poll` does one round; :class:`OtelExporter` calls it periodically."""

    def __init__(self, watchers: Watchers, cfg: OtelConfig, tracer: Tracer,
                 logger: Logger | None, counts: Counts,
                 clock: Callable[[], float] = time.time) -> None:
        self.watchers = watchers
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

    # -- the round ---------------------------------------------------------------------

    def poll(self) -> None:
        """Observe every exported root once and emit what changed; run due checkpoints."""
        with self._lock:
            tree = self.watchers.tree
            with tree.lock:  # a reload replaces entries of this dict
                states = dict(self.watchers.roots)
            wanted = set(self.cfg.roots) or set(states)
            for name in list(self.roots):
                rt = self.roots[name]
                if name not in wanted or states.get(name) is not rt.state:
                    self._close_root(rt, "root_removed")
            for name, state in states.items():
                if name in wanted and name not in self.roots:
                    self.roots[name] = _RootTrace(
                        name, state, self.watchers.watcher(name),
                        TokenBucket(self.cfg.max_spans_per_second, self.cfg.burst),
                        self.cfg.max_open_spans)
            for rt in list(self.roots.values()):
                try:
                    obs = rt.watcher.observe(members=False)
                except KeyError:  # removed by a reload since we looked
                    self._close_root(rt, "root_removed")
                    continue
                self._apply(rt, obs)
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

    def _apply(self, rt: _RootTrace, obs: Observation) -> None:
        first, rt.first = rt.first, False
        delta = obs.delta
        if not first:
            # joined since the previous look but listed nowhere: the change log wrapped,
            # or more than max_members joined
            self.counts.drop(SPANS, "unobserved",
                             obs.spawned - len(delta.added) - len(delta.transient))
        # births first, parents before children (depth grows by one per generation)
        births = sorted((*delta.added, *delta.transient), key=lambda i: (i.depth, i.started_at))
        for info in births:
            self._begin(rt, info, preexisting=first)
        # then exits and events in time order, so that a span carries its events
        # before it ends and the order of events is the order things happened
        timeline: list[tuple[float, int, MemberInfo | RootEvent]] = []
        for info in (*delta.transient, *delta.removed):
            timeline.append((info.exited_at or obs.ts, 1, info))
        for ev in obs.events:
            timeline.append((ev.ts, 0, ev))
        timeline.sort(key=lambda t: (t[0], t[1]))
        for _, kind, item in timeline:
            if kind == 1:
                self._finish(rt, item)  # type: ignore[arg-type]
            else:
                self._on_event(rt, item)  # type: ignore[arg-type]

    # -- spans ---------------------------------------------------------------------------

    def _parent(self, rt: _RootTrace, info: MemberInfo) -> tuple[SpanContext | None,
                                                                  _Proc | None, bool]:
        """(parent span context, the parent if tracked live, whether the parent is known)."""
        if info.depth == 0:
            return None, None, True  # an instance starts a trace
        ppid = info.lineage_ppid if info.lineage_ppid is not None else info.ppid
        p = rt.by_pid.get(ppid)
        if p is not None and p.identity[1] <= info.start_ticks + 1:
            return p.ctx, p, p.ctx is not None
        e = rt.ended.get(ppid)
        if e is not None and e.start_ticks <= info.start_ticks + 1:
            return e.ctx, None, e.ctx is not None
        return None, None, False

    def _attributes(self, rt: _RootTrace, info: MemberInfo) -> dict[str, Any]:
        ppid = info.lineage_ppid if info.lineage_ppid is not None else info.ppid
        attrs: dict[str, Any] = {
            "process.pid": info.pid,
            "process.parent_pid": ppid,
            "process.executable.name": _exe_name(info.exe, info.comm),
            "process.command": (info.cmdline.split(" ", 1)[0] if rt.capture and info.cmdline
                                else info.comm or "?"),
            "process.owner": info.user,
            "process.creation.time": iso8601(info.started_at),
            "proctree.root": rt.name,
            "proctree.process.start_ticks": info.start_ticks,
            "proctree.process.depth": info.depth,
        }
        if info.comm:
            attrs["proctree.process.comm"] = info.comm
        if info.exe:
            attrs["process.executable.path"] = info.exe
        if rt.capture and info.cmdline:
            attrs["process.command_line"] = info.cmdline
        if not getattr(info, "lineage_known", True):
            attrs["proctree.lineage.known"] = False
        return attrs

    def _begin(self, rt: _RootTrace, info: MemberInfo, *, preexisting: bool) -> None:
        pid, start = info.identity
        transient = info.exited_at is not None
        parent_ctx, parent, known = self._parent(rt, info)
        reason = None
        if not preexisting and not rt.bucket.take():
            reason = "rate_limit"  # processes already there at the first look are no storm
        elif self.n_open >= self.cfg.max_open_spans:
            reason = "capacity"
        if reason is not None:
            self.counts.drop(SPANS, reason)
            if transient:
                rt.remember(pid, _Ended(start, parent_ctx, False, info.exited_at or 0.0,
                                        info.ppid))
            elif self.n_standins < self.cfg.max_open_spans:
                p = _Proc(info.identity, None, parent_ctx, info.lineage_ppid, info.depth,
                          info.comm, info.exe, info.cmdline)
                rt.standins[info.identity] = p
                rt.by_pid[pid] = p
                self.n_standins += 1
            return
        attrs = self._attributes(rt, info)
        if preexisting:
            attrs["proctree.process.preexisting"] = True
        if not known:
            attrs["proctree.parent.unknown"] = True
        ctx = (trace.set_span_in_context(NonRecordingSpan(parent_ctx)) if parent_ctx is not None
               else Context())  # an empty context: a new trace
        span = self.tracer.start_span(info.comm or "process", context=ctx,
                                      start_time=_ns(info.started_at), attributes=attrs)
        p = _Proc(info.identity, span, span.get_span_context(), info.lineage_ppid, info.depth,
                  info.comm, info.exe, info.cmdline, mark=self.clock())
        rt.open[info.identity] = p
        rt.by_pid[pid] = p
        self.n_open += 1
        if info.depth == 0 and p.ctx is not None:
            rt.instances[p.ctx.trace_id] = p
        self._log(rt, p, p.ctx, EV_START, info.started_at, {}, SeverityNumber.INFO,
                  f"process {pid} ({info.comm}) started")
        if parent is not None and parent.span is not None and self._execd(rt, parent, info):
            # the usual fork-then-exec happened before we looked: it belongs to the start
            self._exec_event(rt, p, info.started_at, "start", parent.comm, parent.exe)

    def _execd(self, rt: _RootTrace, before: _Proc, info: MemberInfo | _Proc) -> bool:
        if info.comm != before.comm:
            return True
        if info.exe and before.exe and info.exe != before.exe:
            return True
        return bool(rt.capture and info.cmdline and before.cmdline
                    and info.cmdline != before.cmdline)

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

    def _refresh(self, rt: _RootTrace, p: _Proc, comm: str | None, exe: str | None,
                 cmdline: str | None, ts: float, seen: str) -> None:
        """Emit an exec event if ``p`` runs something else now, and update its span."""
        now = _Proc(p.identity, None, None, None, 0, comm, exe, cmdline)
        if not self._execd(rt, p, now):
            return
        old_comm, old_exe = p.comm, p.exe
        p.comm, p.exe = comm, exe or p.exe
        if rt.capture:
            p.cmdline = cmdline
        if p.span is None:
            return
        self._exec_event(rt, p, ts, seen, old_comm, old_exe)
        p.span.update_name(p.comm or "process")
        attrs: dict[str, Any] = {"process.executable.name": _exe_name(p.exe, p.comm)}
        if p.comm:
            attrs["proctree.process.comm"] = p.comm
        if p.exe:
            attrs["process.executable.path"] = p.exe
        if rt.capture and p.cmdline:
            attrs["process.command_line"] = p.cmdline
            attrs["process.command"] = p.cmdline.split(" ", 1)[0]
        p.span.set_attributes(attrs)

    def _finish(self, rt: _RootTrace, info: MemberInfo) -> None:
        pid, start = info.identity
        p = rt.live(pid, start)
        ended_at = info.exited_at or self.clock()
        if p is None:
            return  # never tracked (its span drop is counted where it happened)
        if rt.by_pid.get(pid) is p:
            del rt.by_pid[pid]
        if p.span is None:
            del rt.standins[p.identity]
            self.n_standins -= 1
            rt.remember(pid, _Ended(start, p.ctx, False, ended_at, info.ppid))
            return
        self._refresh(rt, p, info.comm, info.exe, info.cmdline, ended_at, "exit")
        attrs: dict[str, Any] = {"process.exit.time": iso8601(ended_at)}
        failed = False
        if info.exit_signal is not None:
            attrs["proctree.exit.signal"] = info.exit_signal
            attrs["proctree.exit.signal_name"] = _signal_name(info.exit_signal)
            failed = True
        elif info.exit_code is not None:
            attrs["process.exit.code"] = info.exit_code
            failed = info.exit_code != 0
        else:
            attrs["proctree.exit.unobserved"] = True  # lost events: found gone
        self._event(rt, p, p.ctx, EV_EXIT, ended_at, {**attrs, "proctree.reason": info.reason},
                    SeverityNumber.WARN if failed else SeverityNumber.INFO, info.reason)
        span = p.span
        span.set_attributes(attrs)
        if failed:
            span.set_status(Status(StatusCode.ERROR, info.reason))
        self._end_span(span, max(ended_at, info.started_at))
        del rt.open[p.identity]
        self.n_open -= 1
        if p.ctx is not None and rt.instances.get(p.ctx.trace_id) is p:
            del rt.instances[p.ctx.trace_id]
        rt.remember(pid, _Ended(start, p.ctx, True, ended_at, info.ppid))

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

    def _node_now(self, pid: int, start: int) -> int | None:
        """The current parent of a process the tree still holds."""
        tree = self.watchers.tree
        with tree.lock:
            node = tree.get(pid)
            if node is None or not _same(node.start_ticks, start):
                return None
            return node.ppid

    def _new_parent(self, pid: int, start: int, dead: int | None) -> int | None:
        """The parent an orphan was given. The tree re-reads it about 20 ms after the
        parent's exit; the kernel has reparented it microseconds after, so when the
        tree still names the dead parent, /proc knows better (one read per orphan)."""
        ppid = self._node_now(pid, start)
        if ppid is None or ppid != dead:
            return ppid
        try:
            st = read_stat(pid, self.watchers.tree.proc)
        except (ProcReadError, ValueError):
            return None
        return st.ppid if _same(st.start_ticks, start) and st.ppid != dead else None

    def _on_event(self, rt: _RootTrace, ev: RootEvent) -> None:
        pid, start = ev.pid, ev.start_ticks
        p = rt.live(pid, start)
        ended = rt.gone(pid, start)
        own_ctx = p.ctx if p is not None and p.span is not None else (
            ended.ctx if ended is not None and ended.own else None)
        if (p is not None and p.span is None) or (p is None and ended is not None
                                                  and not ended.own):
            return  # a process without a span: its events go with it (the drop is counted)
        subject = {"process.pid": pid, "process.executable.name": ev.comm or "?"}
        reason = {"proctree.reason": ev.reason}
        warn, info = SeverityNumber.WARN, SeverityNumber.INFO
        if ev.kind == "restart":
            self._event(rt, p, own_ctx, EV_RESTART, ev.ts, reason, info, ev.reason, subject)
        elif ev.kind == "action":
            m = _SIGNAL_RE.search(ev.reason)
            attrs = {**reason, "proctree.action.outcome": ev.new}
            if m:
                attrs["proctree.action.signal"] = m.group(0)
            carrier = p if p is not None else self._fallback(rt, own_ctx)
            self._event(rt, carrier, own_ctx, EV_ACTION, ev.ts, attrs,
                        warn if ev.new == "sent" else info, ev.reason, subject)
        elif ev.new == ORPHANED:
            ppid = self._new_parent(pid, start, p.lineage_ppid if p is not None else None)
            attrs = dict(reason)
            if ppid is not None:
                attrs["process.parent_pid"] = ppid
            if p is not None and p.lineage_ppid is not None:
                attrs["proctree.lineage.parent_pid"] = p.lineage_ppid
            carrier = p if p is not None else self._fallback(rt, own_ctx)
            self._event(rt, carrier, own_ctx, EV_ORPHANED, ev.ts, attrs, warn, ev.reason,
                        subject)
        elif ev.new == ZOMBIE:
            # on the span of the parent that fails to reap it: the one it had at exit,
            # unless the tree (which still holds it, unless reaped since) knows a newer one
            ppid = self._node_now(pid, start)
            if ppid is None and ended is not None:
                ppid = ended.ppid
            parent = rt.by_pid.get(ppid) if ppid is not None else None
            exited_at = ended.exited_at if ended is not None else ev.ts
            rt.zombies[(pid, start)] = (parent.identity if parent is not None else (-1, -1),
                                        exited_at)
            while len(rt.zombies) > self.cfg.max_open_spans:
                rt.zombies.popitem(last=False)
            attrs = {**reason, "proctree.zombie.pid": pid,
                     "proctree.zombie.executable.name": ev.comm or "?",
                     "proctree.zombie.seconds": round(max(ev.ts - exited_at, 0.0), 3)}
            carrier = parent if parent is not None else self._fallback(rt, own_ctx)
            self._event(rt, carrier, own_ctx, EV_ZOMBIE, ev.ts, attrs, warn, ev.reason, subject)
        elif ev.new == EXITED and ev.old == ZOMBIE:
            seen = rt.zombies.pop((pid, start), None)
            carrier = rt.live(*seen[0]) if seen is not None else None
            attrs = {**reason, "proctree.zombie.pid": pid,
                     "proctree.zombie.executable.name": ev.comm or "?"}
            if seen is not None:
                attrs["proctree.zombie.seconds"] = round(max(ev.ts - seen[1], 0.0), 3)
            self._event(rt, carrier or self._fallback(rt, own_ctx), own_ctx, EV_ZOMBIE_REAPED,
                        ev.ts, attrs, info, ev.reason, subject)
        elif ev.new == PID_REUSED:
            self._event(rt, p or self._fallback(rt, own_ctx), own_ctx, EV_PID_REUSED, ev.ts,
                        reason, info, ev.reason, subject)
        else:
            attrs = {**reason, "proctree.class.old": ev.old, "proctree.class.new": ev.new}
            self._event(rt, p or self._fallback(rt, own_ctx), own_ctx, EV_CLASS, ev.ts, attrs,
                        info, ev.reason, subject)

    # -- long-lived processes ----------------------------------------------------------------

    def _checkpoints(self, now: float) -> None:
        interval = self.cfg.checkpoint_interval_seconds
        for rt in self.roots.values():
            # rt.open is ordered by mark: the due ones are at the front
            while rt.open:
                ident, p = next(iter(rt.open.items()))
                if p.mark + interval > now:
                    break
                self._checkpoint(rt, p, now)
                del rt.open[ident]
                rt.open[ident] = p

    def _checkpoint(self, rt: _RootTrace, p: _Proc, now: float) -> None:
        span = p.span
        assert span is not None
        pid, start = p.identity
        tree = self.watchers.tree
        with tree.lock:  # O(1): what it runs now, and its class
            node = tree.get(pid)
            current = None
            if node is not None and _same(node.start_ticks, start) and not node.exited:
                current = (node.comm, node.exe, (node.cmdline or "")[: rt.cmdline_max])
            cls = rt.state.class_of(node) if node is not None else None
        if current is not None:
            self._refresh(rt, p, *current, now, "checkpoint")
        p.checkpoints += 1
        attrs = dict(getattr(span, "attributes", None) or {})
        attrs.update({"proctree.span.kind": CHECKPOINT, "proctree.checkpoint.seq": p.checkpoints,
                      "proctree.process.running": True})
        if cls is not None:
            attrs["proctree.process.class"] = cls
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

    def __init__(self, cfg: OtelConfig, watchers: Watchers,
                 snapshot: Callable[[], Snapshot] | None = None, *,
                 base_dir: Path | None = None, span_exporter: SpanExporter | None = None,
                 log_exporter: LogRecordExporter | None = None,
                 metric_reader: MetricReader | None = None) -> None:
        self.cfg = cfg
        self.counts = Counts()
        self.pipeline = Pipeline(cfg, self.counts, base_dir=base_dir,
                                 span_exporter=span_exporter, log_exporter=log_exporter,
                                 metric_reader=metric_reader)
        self.tracer = ProcessTracer(watchers, cfg, self.pipeline.tracer, self.pipeline.logger,
                                    self.counts)
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
