"""OpenTelemetry traces of real process trees, through in-memory exporters.

The exporter is driven by hand (``poll()``) over the session's live tree, so
each test decides when an observation happens; nothing here asserts timing.
"""

from __future__ import annotations

import os
import pwd
import select
import signal
import subprocess
from collections.abc import Iterator
from datetime import datetime
from typing import Any

import pytest
from opentelemetry.sdk._logs.export import InMemoryLogRecordExporter
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import StatusCode

from proctree_exporter.actions import ActionSpec
from proctree_exporter.collector import Collector
from proctree_exporter.config import OtelConfig
from proctree_exporter.export.otel import (
    CHECKPOINT,
    EV_ACTION,
    EV_EXEC,
    EV_EXIT,
    EV_ORPHANED,
    EV_START,
    EV_ZOMBIE,
    EV_ZOMBIE_REAPED,
    EVENT_NAMES,
    OtelExporter,
)
from proctree_exporter.membership import Roots
from proctree_exporter.resources import Accountant, Ledger
from proctree_exporter.rootspec import RootSpec
from proctree_exporter.tree import PidTree, TreeListener

from .conftest import PYTHON, Janitor, find_node, read_lines, start_ticks, wait_for

pytestmark = pytest.mark.kernel


@pytest.fixture
def tree(live: tuple[PidTree, Collector]) -> Iterator[PidTree]:
    t, _ = live
    yield t
    with t.lock:
        t.listener = TreeListener()


class Harness:
    """Roots over the live tree and an OtelExporter with in-memory exporters."""

    def __init__(self, tree: PidTree, specs: list[RootSpec], *, resources: bool = False,
                 **otel: Any) -> None:
        self.roots = Roots(tree, specs)
        self.roots.attach()
        self.spans_out = InMemorySpanExporter()
        self.logs_out = InMemoryLogRecordExporter()
        settings = {"enabled": True, "events": "both", "checkpoint_interval_seconds": 0,
                    "schedule_delay_seconds": 0.2, **otel}
        self.cfg = OtelConfig(**settings)
        self.accountant: Accountant | None = None
        usage = None
        if resources:  # exit records of the roots' members, as the daemon keeps them
            ledger = Ledger(self.roots)
            ledger.sync()
            self.accountant = Accountant(ledger)
            self.accountant.start()
            usage = ledger.final
        self.exporter = OtelExporter(self.cfg, self.roots, span_exporter=self.spans_out,
                                     log_exporter=self.logs_out, usage=usage)

    def poll_until(self, pred: Any, timeout: float = 30.0) -> Any:
        def check() -> Any:
            self.exporter.poll()
            return pred()
        return wait_for(check, timeout=timeout, interval=0.05)

    def spans(self) -> tuple[ReadableSpan, ...]:
        self.exporter.pipeline.force_flush()
        return self.spans_out.get_finished_spans()

    def process_spans(self, root: str) -> dict[int, ReadableSpan]:
        return {s.attributes["process.pid"]: s for s in self.spans()
                if s.attributes.get("proctree.root") == root
                and s.attributes.get("proctree.span.kind") != CHECKPOINT}

    def logs(self) -> list[Any]:
        self.exporter.pipeline.force_flush()
        return [r.log_record for r in self.logs_out.get_finished_logs()]

    def close(self) -> None:
        self.exporter.stop()
        if self.accountant is not None:
            self.accountant.stop()


@pytest.fixture
def harnesses() -> Iterator[list[Harness]]:
    made: list[Harness] = []
    yield made
    for h in made:
        h.close()


def events(span: ReadableSpan) -> list[str]:
    return [e.name for e in span.events]


# holder (instance) -> a -> a1 (exec sleep), a2
#                   -> b (exec sh -c 'exit 3')
#                   -> w (exits) -> o (orphan, left running until the test ends it)
#                   -> z (exits, reaped 1.5 s later: a zombie meanwhile)
SCENE = r"""
import os, sys, time
sys.stdin.readline()
r, w = os.pipe()
def child(fn):
    pid = os.fork()
    if pid == 0:
        try:
            fn()
        finally:
            os._exit(0)
    return pid
def a():
    a1 = child(lambda: os.execv('/bin/sleep', ['sleep', '1']))
    a2 = child(lambda: time.sleep(0.05))
    os.write(w, f'{a1} {a2}\n'.encode())
    os.waitpid(a1, 0); os.waitpid(a2, 0)
pa = child(a)
a1, a2 = os.read(r, 100).decode().split()
pb = child(lambda: os.execv('/bin/sh', ['sh', '-c', 'exit 3']))
def wrap():
    o = child(lambda: time.sleep(60))
    os.write(w, f'{o}\n'.encode())
pw = child(wrap)
o = os.read(r, 100).decode().strip()
os.waitpid(pw, 0)
pz = child(lambda: None)
print(pa, a1, a2, pb, pw, o, pz, flush=True)
time.sleep(1.5)
os.waitpid(pz, 0); os.waitpid(pa, 0); os.waitpid(pb, 0)
sys.stdin.readline()
"""


def test_span_tree_equals_the_process_tree_with_conventional_attributes_and_ordered_events(
        tree: PidTree, janitor: Janitor, harnesses: list[Harness]) -> None:
    holder = janitor.spawn([PYTHON, "-c", SCENE], stdin=subprocess.PIPE)
    wait_for(lambda: find_node(tree, holder.pid))
    job = RootSpec(name="job", select="pid", match=str(holder.pid), capture_cmdline=True,
                   zombie_grace_s=0.5, actions=ActionSpec(enabled=True, dry_run=True))
    plain = RootSpec(name="plain", select="pid", match=str(holder.pid))
    h = Harness(tree, [job, plain])
    harnesses.append(h)
    h.exporter.poll()
    assert holder.stdin is not None
    holder.stdin.write("go\n")
    holder.stdin.flush()
    pa, a1, a2, pb, pw, o, pz = (int(x) for x in read_lines(holder, 1, timeout=30)[0].split())
    janitor.track(o)
    o_start = start_ticks(o)

    def holder_events(name: str) -> list[Any]:
        return [r for r in h.logs() if r.event_name == name
                and r.attributes.get("proctree.root") == "job"]

    # b and z are zombies until the holder reaps them after 1.5 s (a and a2 may be too,
    # for a while); the tree finds a zombie reaped within a second
    h.poll_until(lambda: len(holder_events(EV_ZOMBIE)) >= 2
                 and len(holder_events(EV_ZOMBIE_REAPED)) == len(holder_events(EV_ZOMBIE)))
    holder.stdin.write("done\n")
    holder.stdin.close()
    holder.wait(timeout=10)
    # the root is down with the orphan left over: the (dry-run) cleanup says so on its span
    h.poll_until(lambda: holder_events(EV_ACTION))
    assert start_ticks(o) == o_start
    os.kill(o, signal.SIGTERM)
    expected = {holder.pid, pa, a1, a2, pb, pw, o, pz}
    h.poll_until(lambda: set(h.process_spans("job")) == expected
                 and set(h.process_spans("plain")) == expected)

    spans = h.process_spans("job")
    lineage = {pa: holder.pid, a1: pa, a2: pa, pb: holder.pid, pw: holder.pid, o: pw,
               pz: holder.pid}
    root_span = spans[holder.pid]
    assert root_span.parent is None, "the instance starts the trace"
    assert root_span.attributes["proctree.process.preexisting"] is True
    for pid, ppid in lineage.items():
        span, parent = spans[pid], spans[ppid]
        assert span.parent is not None and span.parent.span_id == parent.context.span_id, pid
        assert span.context.trace_id == root_span.context.trace_id
        assert span.start_time >= parent.start_time, "a child starts after its parent"
        assert span.attributes["process.parent_pid"] == ppid
    for pid in (a1, a2):
        assert spans[pid].end_time <= spans[pa].end_time, "a waits for its children"
    assert spans[o].end_time > spans[pw].end_time, "the orphan outlives its parent"

    # attributes after the OpenTelemetry process conventions
    user = pwd.getpwuid(os.getuid()).pw_name
    sleep_path = os.path.realpath("/bin/sleep")
    for pid, span in spans.items():
        a = span.attributes
        assert a["process.pid"] == pid
        assert a["process.owner"] == user
        created = datetime.fromisoformat(a["process.creation.time"].replace("Z", "+00:00"))
        assert abs(created.timestamp() - span.start_time / 1e9) < 0.01
        exited = datetime.fromisoformat(a["process.exit.time"].replace("Z", "+00:00"))
        assert abs(exited.timestamp() - span.end_time / 1e9) < 0.01
        assert "process.command_line" not in h.process_spans("plain")[pid].attributes
        assert events(span)[-1] == EV_EXIT
        # zombie_reaped is stamped when the tree finds the zombie gone (within a second),
        # so it may come after an exit that happened earlier: the rest is in time order
        stamps = [e.timestamp for e in span.events if e.name != EV_ZOMBIE_REAPED]
        assert stamps == sorted(stamps), f"events of {pid} out of order: {events(span)}"
        assert all(name in EVENT_NAMES for name in events(span))
    assert "-c" in root_span.attributes["process.command_line"]
    a1s = spans[a1]
    assert a1s.name == "sleep"
    assert a1s.attributes["process.executable.name"] == "sleep"
    assert a1s.attributes["process.executable.path"] == sleep_path
    assert a1s.attributes["process.command_line"] == "sleep 1"
    assert a1s.attributes["process.command"] == "sleep"
    assert a1s.attributes["process.exit.code"] == 0
    assert events(a1s) == [EV_EXEC, EV_EXIT], "fork then exec: exec at the start"
    exec_ev = a1s.events[0]
    assert exec_ev.attributes["process.executable.path"] == sleep_path
    assert exec_ev.attributes["proctree.exec.previous.executable.name"].startswith("python")
    bs = spans[pb]
    assert bs.attributes["process.exit.code"] == 3
    assert bs.status.status_code == StatusCode.ERROR
    assert spans[a2].status.status_code != StatusCode.ERROR
    os_ = spans[o]
    assert events(os_) == [EV_ORPHANED, EV_ACTION, EV_EXIT]
    orphaned = os_.events[0].attributes
    assert orphaned["proctree.lineage.parent_pid"] == pw
    assert orphaned["process.parent_pid"] != pw
    assert f"parent PID {pw}" in orphaned["proctree.reason"]
    action = os_.events[1].attributes
    assert action["proctree.action.outcome"] == "dry_run"
    assert action["proctree.action.signal"] == "SIGTERM"
    assert os_.attributes["proctree.exit.signal"] == signal.SIGTERM
    assert os_.attributes["proctree.exit.signal_name"] == "SIGTERM"
    assert os_.status.status_code == StatusCode.ERROR
    # the zombie is told on the span of the parent that fails to reap it
    def about(name: str) -> dict[int, tuple[int, int, Any]]:
        """zombie pid -> (pid of the span carrying the event, index there, attributes)."""
        return {e.attributes["proctree.zombie.pid"]: (carrier, i, e.attributes)
                for carrier, span in spans.items()
                for i, e in enumerate(span.events) if e.name == name}
    zombies, reaped = about(EV_ZOMBIE), about(EV_ZOMBIE_REAPED)
    assert set(zombies) == set(reaped) and {pb, pz} <= set(zombies) <= {pa, pb, pz, a2}
    for pid in zombies:
        parent = pa if pid == a2 else holder.pid
        zcarrier, zi, zattrs = zombies[pid]
        rcarrier, ri, rattrs = reaped[pid]
        assert zcarrier == parent, "on the span of the parent that fails to reap it"
        # reaped is found within a second: by then a may have ended, and the instance
        # carries it
        assert rcarrier in (parent, holder.pid)
        assert rcarrier != zcarrier or zi < ri
        assert zattrs["proctree.zombie.seconds"] >= 0.5
        assert rattrs["proctree.zombie.seconds"] >= zattrs["proctree.zombie.seconds"]

    # the same events as log records, tied to the span of the process they are about
    by_span = {s.context.span_id: s for s in spans.values()}
    logs = [r for r in h.logs() if r.attributes.get("proctree.root") == "job"]
    for pid, span in spans.items():
        mine = [r for r in logs if r.span_id == span.context.span_id
                and r.attributes.get("process.pid") == pid]
        # a zombie's records are its own, although the span events are its parent's
        expected = [n for n in events(span) if n not in (EV_ZOMBIE, EV_ZOMBIE_REAPED)]
        if pid in zombies:
            expected += [EV_ZOMBIE, EV_ZOMBIE_REAPED]
        assert [r.event_name for r in mine if r.event_name != EV_START] == expected, pid
        assert mine[0].event_name == EV_START
        assert all(r.trace_id == span.context.trace_id for r in mine)
    zlog = next(r for r in logs if r.event_name == EV_ZOMBIE
                and r.attributes["process.pid"] == pz)
    assert by_span[zlog.span_id].attributes["process.pid"] == pz
    assert zlog.severity_text == "WARN" and "has not reaped it" in zlog.body
    assert h.exporter.stats().open_spans == 0
    assert sum(h.exporter.stats().dropped.values()) == 0


LONG = r"""
import subprocess, sys, time
s = subprocess.Popen(['/bin/sleep', '60'])
t = subprocess.Popen(['/bin/sh', '-c', 'read x; exec /bin/sleep 60'], stdin=subprocess.PIPE)
print(s.pid, t.pid, flush=True)
sys.stdin.readline()
t.stdin.write(b'go\n'); t.stdin.flush()
sys.stdin.readline()
"""


def test_a_long_lived_process_is_visible_before_it_exits(tree: PidTree, janitor: Janitor,
                                                         harnesses: list[Harness]) -> None:
    holder = janitor.spawn([PYTHON, "-c", LONG], stdin=subprocess.PIPE)
    sleeper, shell = (int(x) for x in read_lines(holder, 1)[0].split())
    janitor.track(sleeper)
    janitor.track(shell)
    # both have exec'd (the tree applied their EXEC) before the first look
    wait_for(lambda: (getattr(find_node(tree, shell), "comm", None) == "sh"
                      and getattr(find_node(tree, sleeper), "comm", None) == "sleep"))
    h = Harness(tree, [RootSpec(name="long", select="pid", match=str(holder.pid))],
                events="spans", checkpoint_interval_seconds=0.3)
    harnesses.append(h)

    def checkpoints(pid: int) -> list[ReadableSpan]:
        return [s for s in h.spans() if s.attributes.get("proctree.span.kind") == CHECKPOINT
                and s.attributes["process.pid"] == pid]

    h.poll_until(lambda: len(checkpoints(sleeper)) >= 2 and checkpoints(shell))
    assert os.kill(sleeper, 0) is None, "still running"
    assert sleeper not in h.process_spans("long"), "its own span ends when it exits"
    first, second = checkpoints(sleeper)[:2]
    assert first.name == "sleep (running)"
    assert first.attributes["proctree.process.running"] is True
    assert first.attributes["process.executable.name"] == "sleep"
    assert first.attributes["proctree.process.class"] == "healthy"
    assert first.parent is not None and second.parent is not None
    assert first.parent.span_id == second.parent.span_id
    assert second.start_time == first.end_time, "checkpoints tile the process's life"
    assert events(first) == [EV_EXEC], "events of the interval are copied onto it"
    assert events(second) == []

    # an exec long after the start is an event when it happens (the kernel's EXEC),
    # copied onto the next checkpoint, which carries the new name
    assert holder.stdin is not None
    holder.stdin.write("exec\n")
    holder.stdin.flush()
    def seen_late(c: ReadableSpan) -> list[Any]:
        return [e for e in c.events if e.name == EV_EXEC
                and e.attributes["proctree.exec.seen"] == "exec"
                and e.attributes["process.executable.name"] == "sleep"]
    h.poll_until(lambda: any(seen_late(c) for c in checkpoints(shell)))
    renamed = next(c for c in checkpoints(shell) if seen_late(c))
    assert renamed.name == "sleep (running)"
    ev = seen_late(renamed)[0]
    assert ev.attributes["process.executable.path"] == os.path.realpath("/bin/sleep")
    assert ev.attributes["proctree.exec.previous.executable.name"] in ("sh", "dash")

    os.kill(sleeper, signal.SIGKILL)
    h.poll_until(lambda: sleeper in h.process_spans("long"))
    span = h.process_spans("long")[sleeper]
    assert span.context.span_id == first.parent.span_id
    assert events(span) == [EV_EXEC, EV_EXIT]
    assert span.start_time < first.start_time < first.end_time <= span.end_time

    # the exporter stops: spans of processes still running end, marked as such
    h.exporter.stop()
    shell_span = h.process_spans("long")[shell]
    assert shell_span.name == "sleep"
    assert shell_span.attributes["proctree.process.running"] is True
    assert shell_span.attributes["proctree.span.end_reason"] == "shutdown"
    assert "process.exit.code" not in shell_span.attributes


STORM = r"""
import os, sys, time
sys.stdin.readline()
kids = []
for _ in range(int(sys.argv[1])):
    pid = os.fork()
    if pid == 0:
        time.sleep(float(sys.argv[2])); os._exit(0)
    kids.append(pid)
    if len(kids) >= int(sys.argv[3]):
        for k in kids:
            os.waitpid(k, 0)
        kids = []
print(' '.join(map(str, kids)), flush=True)
sys.stdin.readline()
"""


def _storm(tree: PidTree, janitor: Janitor, harnesses: list[Harness], n: int, life: float,
           batch: int, **otel: Any) -> tuple[Harness, subprocess.Popen[str]]:
    """A holder that forks ``n`` children living ``life`` s, waiting for each ``batch``."""
    holder = janitor.spawn([PYTHON, "-c", STORM, str(n), str(life), str(batch)],
                           stdin=subprocess.PIPE)
    wait_for(lambda: find_node(tree, holder.pid))
    h = Harness(tree, [RootSpec(name="storm", select="pid", match=str(holder.pid))],
                schedule_delay_seconds=0.05, **otel)
    harnesses.append(h)
    h.exporter.poll()
    assert holder.stdin is not None
    holder.stdin.write("go\n")
    holder.stdin.flush()
    return h, holder


def _assert_bounded(h: Harness) -> None:
    t = h.exporter.tracer
    cfg = h.cfg
    assert t.n_open <= cfg.max_open_spans and t.n_standins <= cfg.max_open_spans
    for rt in t.roots.values():
        assert len(rt.open) + len(rt.standins) == len(rt.by_pid)
        assert len(rt.ended) <= cfg.max_open_spans
        assert len(rt.zombies) <= cfg.max_open_spans
    assert h.exporter.pipeline.span_processor._gate._pending <= cfg.max_queue_size


def test_fork_storm_with_a_low_rate_limit_is_bounded_and_every_drop_is_counted(
        tree: PidTree, janitor: Janitor, harnesses: list[Harness]) -> None:
    n = 600
    h, holder = _storm(tree, janitor, harnesses, n, 0.001, 50, max_spans_per_second=20, burst=10,
                       max_open_spans=30, max_queue_size=16, max_export_batch_size=8)
    assert holder.stdout is not None
    lines: list[str] = []

    def done() -> bool:
        _assert_bounded(h)
        if not lines and select.select([holder.stdout], [], [], 0)[0]:
            lines.append(holder.stdout.readline())
        return bool(lines)

    h.poll_until(done, timeout=60)
    h.poll_until(lambda: h.exporter.tracer.n_open == 1)  # only the holder is left
    holder.stdin.write("done\n")  # type: ignore[union-attr]
    holder.stdin.close()  # type: ignore[union-attr]
    holder.wait(timeout=10)
    h.poll_until(lambda: h.exporter.tracer.n_open == 0)
    finished = [s for s in h.spans() if s.attributes.get("proctree.root") == "storm"]
    stats = h.exporter.stats()
    d = stats.dropped
    assert d[("spans", "rate_limit")] > 0
    # every process of the storm (and the holder) either became a span or is counted
    given = n + 1 - d[("spans", "rate_limit")] - d[("spans", "capacity")] - \
        d[("spans", "unobserved")]
    assert len(finished) + d[("spans", "queue_full")] + d[("spans", "export_failed")] == given
    assert stats.exported["spans"] == len(finished)


def test_long_lived_processes_past_max_open_spans_are_counted_and_bounded(
        tree: PidTree, janitor: Janitor, harnesses: list[Harness]) -> None:
    n = 60
    h, holder = _storm(tree, janitor, harnesses, n, 60, n + 1, max_open_spans=20)
    pids = [int(x) for x in read_lines(holder, 1, timeout=30)[0].split()]
    assert len(pids) == n
    for p in pids:
        janitor.track(p)
    # the holder and 19 children get spans, 20 more are stand-ins, the rest untracked
    h.poll_until(lambda: h.exporter.stats().dropped[("spans", "capacity")] == n + 1 - 20)
    _assert_bounded(h)
    t = h.exporter.tracer
    assert (t.n_open, t.n_standins) == (20, 20)
    for p in pids:
        os.kill(p, signal.SIGKILL)
    h.poll_until(lambda: len(h.exporter.tracer.roots["storm"].by_pid) == 1)
    _assert_bounded(h)


# holder -> a -> b (no span: over capacity) -> c, forked after a ended: c's span hangs
# under a's, the nearest ancestor with a span
GAP = r"""
import os, sys, time
r, w = os.pipe()
pa = os.fork()
if pa == 0:
    pb = os.fork()
    if pb == 0:
        os.read(r, 1)
        pc = os.fork()
        if pc == 0:
            os.write(1, f"{os.getpid()}\n".encode())
            time.sleep(0.1); os._exit(0)
        os.waitpid(pc, 0); os._exit(0)
    os.write(1, f"{os.getpid()} {pb}\n".encode())
    os.read(0, 1)
    os._exit(0)
os.waitpid(pa, 0)
os.read(0, 1)
os.write(w, b"x")
time.sleep(60)
"""


def test_a_process_without_a_span_hands_its_children_to_its_nearest_traced_ancestor(
        tree: PidTree, janitor: Janitor, harnesses: list[Harness]) -> None:
    holder = janitor.spawn([PYTHON, "-c", GAP], stdin=subprocess.PIPE)
    pa, pb = (int(x) for x in read_lines(holder, 1)[0].split())
    janitor.track(pb)
    wait_for(lambda: find_node(tree, pb))
    h = Harness(tree, [RootSpec(name="gap", select="pid", match=str(holder.pid))],
                max_open_spans=2)
    harnesses.append(h)
    h.exporter.poll()
    assert h.exporter.stats().dropped[("spans", "capacity")] == 1  # b
    assert holder.stdin is not None
    holder.stdin.write("x")
    holder.stdin.flush()
    h.poll_until(lambda: pa in h.process_spans("gap"))
    holder.stdin.write("x")
    holder.stdin.flush()
    pc = int(read_lines(holder, 1)[0])
    h.poll_until(lambda: pc in h.process_spans("gap"))
    spans = h.process_spans("gap")
    assert pb not in spans
    c = spans[pc]
    assert c.parent is not None and c.parent.span_id == spans[pa].context.span_id
    assert c.context.trace_id == spans[pa].context.trace_id
    assert c.attributes["process.parent_pid"] == pb, "the attribute still tells the truth"
    assert h.exporter.stats().dropped[("spans", "capacity")] == 1


def test_a_root_removed_by_reload_ends_its_open_spans(tree: PidTree, janitor: Janitor,
                                                      harnesses: list[Harness]) -> None:
    sleeper = janitor.spawn(["/bin/sleep", "60"])
    wait_for(lambda: find_node(tree, sleeper.pid))
    spec = RootSpec(name="gone", select="pid", match=str(sleeper.pid))
    h = Harness(tree, [spec])
    harnesses.append(h)
    h.exporter.poll()
    assert h.exporter.stats().open_spans == 1
    h.roots.set_roots([])
    h.poll_until(lambda: sleeper.pid in h.process_spans("gone"))
    span = h.process_spans("gone")[sleeper.pid]
    assert span.attributes["proctree.span.end_reason"] == "root_removed"
    assert h.exporter.stats().open_spans == 0
    # and it comes back as a new trace when the root is configured again
    h.roots.set_roots([spec])
    h.poll_until(lambda: h.exporter.stats().open_spans == 1)


def test_a_process_span_says_what_the_process_cost(tree: PidTree, janitor: Janitor,
                                                   harnesses: list[Harness]) -> None:
    code = """# ptx-otel-cost
import time
end = time.thread_time() + 0.3
while time.thread_time() < end:
    pass
with open("/dev/null", "wb") as f:
    f.write(b"x" * 4096)
"""
    h = Harness(tree, [RootSpec("cost", "cmdline", "ptx-otel-cost")], resources=True)
    harnesses.append(h)
    p = janitor.python(code)
    p.wait(timeout=30)

    def spans() -> dict[int, ReadableSpan] | None:
        got = h.process_spans("cost")
        return got if p.pid in got else None
    span = h.poll_until(spans)[p.pid]
    a = span.attributes
    cpu = a["proctree.process.cpu.user_seconds"] + a["proctree.process.cpu.system_seconds"]
    assert 0.3 <= cpu < 5, a  # its loop, Python's start and exit: from its exit record
    assert a["proctree.process.page_faults.minor"] > 0
    assert "proctree.process.disk.write_bytes" in a

