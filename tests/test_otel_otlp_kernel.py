"""The daemon exporting to a real OTLP receiver: OTLP/HTTP (protobuf) and gRPC.

The receivers are started by the tests on 127.0.0.1 and decode what arrives
with opentelemetry-proto, as a collector would. The daemon runs as a
subprocess with an ``otel:`` config pointing at them.
"""

from __future__ import annotations

import gzip
import os
import signal
import socket
import subprocess
import threading
from collections.abc import Callable, Iterator
from concurrent import futures
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from opentelemetry.proto.collector.logs.v1 import logs_service_pb2
from opentelemetry.proto.collector.metrics.v1 import metrics_service_pb2
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue

from .conftest import PYTHON, Janitor, read_lines, start_ticks, wait_for
from .daemon_helpers import Running, free_port, start_daemon, value

pytestmark = pytest.mark.kernel

TOKEN = "ptx-otel-e2e"


def _value(v: AnyValue) -> Any:
    kind = v.WhichOneof("value")
    return getattr(v, kind) if kind else None


def attrs(kvs: Iterator[KeyValue] | Any) -> dict[str, Any]:
    return {kv.key: _value(kv.value) for kv in kvs}


class Received:
    """Everything a receiver decoded, whatever the transport."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.traces: list[trace_service_pb2.ExportTraceServiceRequest] = []
        self.logs: list[logs_service_pb2.ExportLogsServiceRequest] = []
        self.metrics: list[metrics_service_pb2.ExportMetricsServiceRequest] = []
        self.headers: list[dict[str, str]] = []

    def spans(self) -> list[tuple[dict[str, Any], Any]]:
        """(resource attributes, span) for every span received."""
        with self.lock:
            return [(attrs(rs.resource.attributes), span) for req in self.traces
                    for rs in req.resource_spans for ss in rs.scope_spans for span in ss.spans]

    def log_records(self) -> list[Any]:
        with self.lock:
            return [rec for req in self.logs for rl in req.resource_logs
                    for sl in rl.scope_logs for rec in sl.log_records]

    def metric_names(self) -> dict[str, Any]:
        with self.lock:
            return {m.name: m for req in self.metrics for rm in req.resource_metrics
                    for sm in rm.scope_metrics for m in sm.metrics}


class HttpReceiver(Received):
    """OTLP/HTTP with protobuf bodies: /v1/traces, /v1/logs, /v1/metrics."""

    MESSAGES = {
        "/v1/traces": (trace_service_pb2.ExportTraceServiceRequest,
                       trace_service_pb2.ExportTraceServiceResponse, "traces"),
        "/v1/logs": (logs_service_pb2.ExportLogsServiceRequest,
                     logs_service_pb2.ExportLogsServiceResponse, "logs"),
        "/v1/metrics": (metrics_service_pb2.ExportMetricsServiceRequest,
                        metrics_service_pb2.ExportMetricsServiceResponse, "metrics"),
    }

    def __init__(self) -> None:
        super().__init__()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                if self.headers.get("Content-Encoding") == "gzip":
                    body = gzip.decompress(body)
                entry = receiver.MESSAGES.get(self.path)
                if entry is None:
                    self.send_error(404)
                    return
                request_type, response_type, kind = entry
                msg = request_type.FromString(body)
                with receiver.lock:
                    getattr(receiver, kind).append(msg)
                    receiver.headers.append({k.lower(): v for k, v in self.headers.items()})
                out = response_type().SerializeToString()
                self.send_response(200)
                self.send_header("Content-Type", "application/x-protobuf")
                self.send_header("Content-Length", str(len(out)))
                self.end_headers()
                self.wfile.write(out)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


class GrpcReceiver(Received):
    """OTLP/gRPC: the trace, logs and metrics services."""

    def __init__(self) -> None:
        super().__init__()
        try:
            import grpc
            from opentelemetry.proto.collector.logs.v1 import logs_service_pb2_grpc
            from opentelemetry.proto.collector.metrics.v1 import metrics_service_pb2_grpc
            from opentelemetry.proto.collector.trace.v1 import trace_service_pb2_grpc
        except ImportError as exc:  # pragma: no cover - the test env installs it
            pytest.fail(f"grpc missing ({exc}): scripts/bootstrap test installs the [grpc] extra")
        receiver = self

        def record(kind: str, msg: Any, context: Any) -> None:
            with receiver.lock:
                getattr(receiver, kind).append(msg)
                receiver.headers.append(dict(context.invocation_metadata()))

        class Traces(trace_service_pb2_grpc.TraceServiceServicer):
            def Export(self, request: Any, context: Any) -> Any:
                record("traces", request, context)
                return trace_service_pb2.ExportTraceServiceResponse()

        class Logs(logs_service_pb2_grpc.LogsServiceServicer):
            def Export(self, request: Any, context: Any) -> Any:
                record("logs", request, context)
                return logs_service_pb2.ExportLogsServiceResponse()

        class Metrics(metrics_service_pb2_grpc.MetricsServiceServicer):
            def Export(self, request: Any, context: Any) -> Any:
                record("metrics", request, context)
                return metrics_service_pb2.ExportMetricsServiceResponse()

        self.server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
        trace_service_pb2_grpc.add_TraceServiceServicer_to_server(Traces(), self.server)
        logs_service_pb2_grpc.add_LogsServiceServicer_to_server(Logs(), self.server)
        metrics_service_pb2_grpc.add_MetricsServiceServicer_to_server(Metrics(), self.server)
        self.port = self.server.add_insecure_port("127.0.0.1:0")
        self.server.start()

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def stop(self) -> None:
        self.server.stop(grace=None)


@pytest.fixture
def http_receiver() -> Iterator[HttpReceiver]:
    r = HttpReceiver()
    try:
        yield r
    finally:
        r.stop()


@pytest.fixture
def grpc_receiver() -> Iterator[GrpcReceiver]:
    r = GrpcReceiver()
    try:
        yield r
    finally:
        r.stop()


def config(endpoint: str, **otel: Any) -> str:
    settings = {"enabled": "true", "endpoint": endpoint, "events": "both",
                "poll_interval_seconds": 0.1, "schedule_delay_seconds": 0.2,
                "checkpoint_interval_seconds": 1, "roots": "[job]",
                "headers": "{x-proctree-test: 'yes'}", **otel}
    lines = "".join(f"  {k}: {v}\n" for k, v in settings.items())
    return f"""
roots:
  - name: job
    select: cmdline
    match: "{TOKEN}"
    capture_cmdline: true
  - name: exporter
    select: pid
    match: self
otel:
{lines}"""


# the instance -> a child that fails (exit 3), and a sleeper that runs until the test ends it
SCENE = f"""# {TOKEN}
import subprocess, sys, time
sys.stdin.readline()
s = subprocess.Popen(['/bin/sleep', '60'])
subprocess.run(['/bin/sh', '-c', 'sleep 0.5; exit 3'])
print(s.pid, flush=True)
sys.stdin.readline()
"""


def run_scene(janitor: Janitor) -> tuple[subprocess.Popen[str], int]:
    holder = janitor.spawn([PYTHON, "-c", SCENE], stdin=subprocess.PIPE)
    assert holder.stdin is not None
    holder.stdin.write("go\n")
    holder.stdin.flush()
    sleeper = int(read_lines(holder, 1)[0])
    janitor.track(sleeper)
    return holder, sleeper


def by_pid(received: Received, pred: Callable[[dict[str, Any]], bool] = lambda a: True,
           ) -> dict[int, list[Any]]:
    out: dict[int, list[Any]] = {}
    for _, span in received.spans():
        a = attrs(span.attributes)
        if a.get("proctree.root") == "job" and pred(a):
            out.setdefault(a["process.pid"], []).append(span)
    return out


def checkpoints(received: Received) -> dict[int, list[Any]]:
    return by_pid(received, lambda a: a.get("proctree.span.kind") == "checkpoint")


def processes(received: Received) -> dict[int, list[Any]]:
    return by_pid(received, lambda a: a.get("proctree.span.kind") != "checkpoint")


def stop_cleanly(d: Running) -> str:
    status, took, err = d.stop()
    assert status == 0, err
    assert took < 2.0, f"shutdown took {took:.2f}s"
    return err


def test_spans_logs_and_metrics_reach_an_otlp_http_receiver(
        janitor: Janitor, tmp_path: Path, http_receiver: HttpReceiver,
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("K8S_NODE_NAME", "node-a")
    monkeypatch.setenv("OTEL_RESOURCE_ATTRIBUTES", "deployment.environment.name=test")
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_HEADERS", "x-from-env=1")
    d = start_daemon(janitor, tmp_path, config(
        http_receiver.endpoint, metrics="{enabled: true, interval_seconds: 1}"))
    holder, sleeper = run_scene(janitor)
    sleeper_start = start_ticks(sleeper)
    r = http_receiver

    def failed_child() -> Any:
        return next((s[0] for s in processes(r).values()
                     if attrs(s[0].attributes).get("process.exit.code") == 3), None)

    child = wait_for(failed_child, timeout=30)
    # long-lived ones are visible while they run: checkpoints of the instance and the sleeper
    wait_for(lambda: holder.pid in checkpoints(r) and sleeper in checkpoints(r), timeout=30)
    assert start_ticks(sleeper) == sleeper_start, "the sleeper is still running"
    assert holder.pid not in processes(r) and sleeper not in processes(r)
    holder_span_id = checkpoints(r)[holder.pid][0].parent_span_id
    assert child.parent_span_id == holder_span_id
    assert checkpoints(r)[sleeper][0].parent_span_id != holder_span_id
    sleeper_span_id = checkpoints(r)[sleeper][0].parent_span_id
    ca = attrs(child.attributes)
    assert ca["process.parent_pid"] == holder.pid
    assert ca["process.command_line"] == "/bin/sh -c sleep 0.5; exit 3"
    assert ca["process.executable.name"] == os.path.basename(os.path.realpath("/bin/sh"))
    assert child.status.code == child.status.STATUS_CODE_ERROR
    assert [e.name for e in child.events][-1] == "proctree.process.exit"

    resource = r.spans()[0][0]
    assert resource["service.name"] == "proctree-exporter"
    assert resource["host.name"] == socket.gethostname()
    assert resource["k8s.node.name"] == "node-a"
    assert resource["deployment.environment.name"] == "test"
    assert all(h.get("x-proctree-test") == "yes" and h.get("x-from-env") == "1"
               for h in r.headers), "config headers go with the OTEL_* ones"

    # the same events as log records, tied to the child's span
    def child_logs() -> list[Any]:
        return [rec for rec in r.log_records() if rec.span_id == child.span_id]
    wait_for(lambda: any(rec.event_name == "proctree.process.exit" for rec in child_logs()),
             timeout=30)
    exit_log = next(rec for rec in child_logs() if rec.event_name == "proctree.process.exit")
    assert exit_log.trace_id == child.trace_id
    assert attrs(exit_log.attributes)["process.exit.code"] == 3
    assert "exited with code 3" in _value(exit_log.body)

    # the /metrics families over OTLP too
    def root_up() -> float | None:
        m = r.metric_names().get("proctree_root_up")
        if m is None:
            return None
        points = {attrs(p.attributes)["root"]: p.as_double for p in m.gauge.data_points}
        return points.get("job")
    assert wait_for(root_up, timeout=30) == 1.0
    assert "proctree_root_spawned" in r.metric_names()

    m = d.metrics()
    assert (value(m, "proctree_otel_exported_total", signal="spans") or 0) > 0
    assert (value(m, "proctree_otel_exported_total", signal="logs") or 0) > 0
    dropped = {k: v for k, v in m.items() if k[0] == "proctree_otel_dropped_total" and v}
    assert dropped == {}

    # stopping ends the spans of what still runs, marked as running, and flushes them
    stop_cleanly(d)
    procs = processes(r)
    for pid, span_id in ((holder.pid, holder_span_id), (sleeper, sleeper_span_id)):
        (span,) = procs[pid]
        assert span.span_id == span_id
        a = attrs(span.attributes)
        assert a["proctree.process.running"] is True and "process.exit.code" not in a


def test_spans_and_log_records_reach_an_otlp_grpc_receiver(
        janitor: Janitor, tmp_path: Path, grpc_receiver: GrpcReceiver) -> None:
    d = start_daemon(janitor, tmp_path, config(grpc_receiver.endpoint, protocol="grpc"))
    holder, sleeper = run_scene(janitor)
    r = grpc_receiver
    child = wait_for(lambda: next((s[0] for s in processes(r).values()
                                   if attrs(s[0].attributes).get("process.exit.code") == 3),
                                  None), timeout=30)
    wait_for(lambda: holder.pid in checkpoints(r), timeout=30)
    assert child.parent_span_id == checkpoints(r)[holder.pid][0].parent_span_id
    wait_for(lambda: any(rec.span_id == child.span_id
                         and rec.event_name == "proctree.process.exit"
                         for rec in r.log_records()), timeout=30)
    assert all(h.get("x-proctree-test") == "yes" for h in r.headers)
    os.kill(sleeper, signal.SIGKILL)
    wait_for(lambda: sleeper in processes(r), timeout=30)
    (span,) = processes(r)[sleeper]
    assert attrs(span.attributes)["proctree.exit.signal_name"] == "SIGKILL"
    stop_cleanly(d)


def test_an_unreachable_endpoint_is_counted_and_does_not_hold_shutdown(
        janitor: Janitor, tmp_path: Path) -> None:
    dead = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    d = start_daemon(janitor, tmp_path, config(dead, timeout_seconds=0.3,
                                               shutdown_timeout_seconds=0.5))
    run_scene(janitor)

    def failed() -> float:
        m = d.metrics()
        return ((value(m, "proctree_otel_dropped_total", signal="spans",
                       reason="export_failed") or 0)
                + (value(m, "proctree_otel_dropped_total", signal="logs",
                         reason="export_failed") or 0))
    assert wait_for(failed, timeout=30) > 0
    assert value(d.metrics(), "proctree_otel_exported_total", signal="spans") == 0
    err = stop_cleanly(d)
    assert "otel export of" in err and "failed" in err


STORM = f"""# {TOKEN}
import os, sys, time
sys.stdin.readline()
for _ in range(40):
    kids = []
    for _ in range(50):
        pid = os.fork()
        if pid == 0:
            os._exit(0)
        kids.append(pid)
    for k in kids:
        os.waitpid(k, 0)
sleepers = []
for _ in range(150):
    pid = os.fork()
    if pid == 0:
        time.sleep(60); os._exit(0)
    sleepers.append(pid)
print(' '.join(map(str, sleepers)), flush=True)
sys.stdin.readline()
"""


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


def test_a_fork_storm_with_a_low_limit_stays_bounded_and_counts_its_drops(
        janitor: Janitor, tmp_path: Path, http_receiver: HttpReceiver) -> None:
    d = start_daemon(janitor, tmp_path, config(
        http_receiver.endpoint, max_spans_per_second=50, burst=50, max_open_spans=40,
        max_queue_size=64, checkpoint_interval_seconds=0))
    holder = janitor.spawn([PYTHON, "-c", STORM], stdin=subprocess.PIPE)
    wait_for(lambda: value(d.metrics(), "proctree_otel_open_spans") == 1, timeout=30)
    before = rss_kib(d.proc.pid)
    assert holder.stdin is not None
    holder.stdin.write("go\n")
    holder.stdin.flush()
    sleepers = [int(x) for x in read_lines(holder, 1, timeout=60)[0].split()]
    for p in sleepers:
        janitor.track(p)
    total = 1 + 40 * 50 + 150

    def accounted() -> dict[str, float] | None:
        m = d.metrics()
        spawned = value(m, "proctree_root_spawned_total", root="job")
        if spawned != total:
            return None
        drops = {r: value(m, "proctree_otel_dropped_total", signal="spans", reason=r) or 0
                 for r in ("rate_limit", "capacity", "unobserved", "queue_full",
                           "export_failed")}
        open_ = value(m, "proctree_otel_open_spans") or 0
        exported = value(m, "proctree_otel_exported_total", signal="spans") or 0
        # every process is an open span, an exported one, or a counted drop
        if open_ + exported + sum(drops.values()) != total:
            return None
        return {**drops, "open": open_}
    counts = wait_for(accounted, timeout=30, interval=0.2)
    assert counts["rate_limit"] > 0
    assert counts["open"] <= 40
    grown = rss_kib(d.proc.pid) - before
    assert grown < 40 * 1024, f"the daemon grew by {grown} KiB in the storm"
    stop_cleanly(d)


def test_a_bad_otel_setting_stops_the_daemon_with_a_clear_message(
        janitor: Janitor, tmp_path: Path) -> None:
    d = start_daemon(janitor, tmp_path, config("https://127.0.0.1:1",
                                               tls="{ca_file: missing-ca.pem}"),
                     wait_ready=False)
    _, err = d.proc.communicate(timeout=30)
    assert d.proc.returncode == 1
    assert f"otel.tls.ca_file: {tmp_path / 'missing-ca.pem'}: no such file" in err


def test_what_happens_right_after_ready_becomes_spans(janitor: Janitor, tmp_path: Path,
                                                       http_receiver: HttpReceiver) -> None:
    # the first round comes a poll interval after ready; the cursors exist before ready
    d = start_daemon(janitor, tmp_path, config(http_receiver.endpoint, poll_interval_seconds=1))
    runner = janitor.spawn(f"for i in 1 2 3 4 5; do /bin/true; done # {TOKEN}")
    assert runner.wait(timeout=10) == 0

    def children() -> list[Any]:
        # (a child gone before its EXEC could be read keeps its parent's name: count by parent)
        return [s for pid, spans in processes(http_receiver).items() for s in spans
                if pid != runner.pid
                and attrs(s.attributes).get("process.parent_pid") == runner.pid]

    wait_for(lambda: len(children()) == 5 and runner.pid in processes(http_receiver),
             timeout=30)
    (runner_span,) = processes(http_receiver)[runner.pid]
    assert "proctree.process.preexisting" not in attrs(runner_span.attributes)
    for span in children():
        assert span.parent_span_id == runner_span.span_id
        assert attrs(span.attributes)["process.exit.code"] == 0
    m = d.metrics()
    assert not {k: v for k, v in m.items() if k[0] == "proctree_otel_dropped_total" and v}
    stop_cleanly(d)
