"""Event stream benchmark: /api/v1/events followed by 1, 10 and 100 clients during a fork storm.

Runs the real daemon (``.venv/bin/proctree-exporter``, a subprocess) with a
temporary config: one root, ``storm``, selecting by pid a ``/bin/sh`` that the
bench starts first and that runs every storm (so the root stays up between
phases and every storm process is its descendant); loopback on a free port;
``web.max_streams`` and ``web.max_connections`` above the largest client count.
The storm is ``bench/loadgen.c`` fork+exit (compiled at run time), 2 workers
paced to ``--rate`` forks/s in all (default 2,000; ``--flat-out``: as fast as the
machine goes). loadgen records every pid it forked in OUTDIR/worker-N.pids.

Phases, in order (each one storm of ``--seconds``, default 10): no clients, then
each of ``--clients`` (default 1, 10, 100), then no clients again (the second
baseline shows the drift of the machine over the run). Per phase:

- ``GET /api/v1/roots/storm`` gives ``seq`` (the change log position), and the
  counters ``spawned_total`` / ``exited_total``; /metrics is scraped.
- The clients (this file run as ``clients``: one process, one selector thread,
  raw sockets, SSE parsed by hand) connect with ``?root=storm&since=storm:SEQ``,
  so every client's window starts at the same log position, and the bench waits
  until every response head has arrived. Then the storm runs.
- After the storm, the bench waits until the root's counters have moved by at
  least the processes loadgen made and ``seq`` has been still for 0.5 s: that
  ``seq`` (END) closes every client's window, and /metrics is scraped again.
- Each client reads until it has END (or is cut off, or ``--finish-timeout``).

Per client and phase it reports:

- events/s delivered: events of the window received, over the time from the
  storm's start to the client's last one; total: all clients.
- completeness. ``complete``: every seq of (SEQ, END] exactly once and in order,
  ``joined`` and ``exited`` counts equal to the root's counter deltas.
  ``reset``: ``reset`` frames whose ``lost`` account for every seq not received
  (counted, not a failure). ``cut``: an ``error`` frame (``slow``: counted by the
  server in ``proctree_event_stream_clients_dropped_total{reason="slow"}``)
  before END, no unexplained gap before it. Anything else is a failure:
  ``incomplete`` (gaps, duplicates, counts that differ), ``closed`` (EOF without
  an ``error`` frame), ``behind`` (still short of END at the timeout),
  ``refused`` (not 200). With ``--kinds`` (which must include joined and
  exited) seqs skip the other kinds, END's too: complete is then the two
  counts equal to the counter deltas, in order. Apart from that, the pids of
  the ``joined`` and ``exited`` events are compared with the pids loadgen
  forked (its worker-N.pids, its main process and workers): ``loadgen ok``
  means both multisets are equal.
- delivery latency p50/p99: receipt by the client (wall clock when the bytes
  were read) minus the event's ``ts`` (wall-clock seconds of the kernel's FORK
  or EXIT), over every ``joined`` and ``exited`` event of every client of the
  phase. It includes the collector's lag, the stream hub, loopback and the
  client's own queueing (one thread reads all streams).
- the collector's event lag p99 (``proctree_event_lag_seconds`` bucket deltas
  over the phase, linear within a bucket as Prometheus's histogram_quantile
  does; buckets are coarse: 0.5, 1, 2.5, 5, 10 ms...), and its ratio to the
  first no-client phase's.

Targets (from the issue): every client complete, or reset/cut and counted;
delivery p99 <= 50 ms at 10 clients; collector lag p99 with clients within
1.2 x of no clients. A miss is printed as MISS, never turned into a failing
exit status: this measures.

By default the client reads only what it needs of each frame (kind from
``event:``, seq from ``id:``, ts and pid by a regular expression; the first 20
frames of each stream are also fully decoded and checked); ``--parse json``
decodes every frame with ``json.loads`` (about 10 us per event, 4x the regex):
on 2 cores the client competes with the daemon for CPU.

Prints a table and writes ``bench/results/stream.json``. Every process it
starts is ended by pid in a ``finally`` block; a hard deadline (SIGALRM, default
175 s) bounds the run.

Usage (root, initial namespaces, a C compiler)::

    .venv/bin/python bench/stream.py [--seconds 10] [--rate 2000 | --flat-out]
        [--clients 1,10,100] [--kinds joined,exited] [--parse fast|json]
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import http.client
import json
import math
import os
import platform
import re
import selectors
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from array import array
from collections import Counter
from pathlib import Path
from typing import Any

from harness import (
    HardDeadline,
    free_port,
    git_describe,
    loadavg,
    on_alarm,
    on_sigterm,
    percentile,
    process_cpu_seconds,
    source_fingerprint,
)

REPO = Path(__file__).resolve().parent.parent
VENV_PYTHON = REPO / ".venv" / "bin" / "python"
EXE = REPO / ".venv" / "bin" / "proctree-exporter"
LOADGEN_SRC = REPO / "bench" / "loadgen.c"
DEFAULT_OUT = REPO / "bench" / "results" / "stream.json"

ROOT = "storm"
DELIVERY_P99_TARGET_MS = 50.0
DELIVERY_TARGET_CLIENTS = 10
LAG_RATIO_TARGET = 1.2
READY_TIMEOUT_S = 60.0
HTTP_TIMEOUT_S = 10.0
CONNECT_TIMEOUT_S = 15.0  # every client's response head must have come by then
SETTLE_S = 1.0  # before each phase: the previous one's stragglers
SEQ_STILL_S = 0.5  # the root's seq unchanged this long: the storm's events are all applied
SETTLE_MAX_S = 15.0
LOADGEN_GRACE_S = 30.0
CHECK_FRAMES = 20  # frames per stream decoded in full even with --parse fast
RECV_BYTES = 65536  # per read: small enough that one busy stream does not starve the others
# the SSE kinds whose ts is kernel time and whose pids are loadgen's
TIMED_KINDS = (b"joined", b"exited")
STATUS_OK = ("complete", "reset", "cut")


# -- small helpers ---------------------------------------------------------------------


def http_get(port: int, path: str, timeout: float = HTTP_TIMEOUT_S) -> tuple[int, bytes]:
    """Status and body of GET ``path`` on 127.0.0.1:``port``, new connection."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request("GET", path)
        resp = conn.getresponse()
        return resp.status, resp.read()
    finally:
        conn.close()


def reaped_children_cpu_seconds(pid: int) -> float | None:
    """cutime + cstime of ``pid``: CPU of the children it has waited for, s."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_bytes()
    except OSError:
        return None
    f = raw[raw.rfind(b")") + 2:].split()
    return (int(f[13]) + int(f[14])) / os.sysconf("SC_CLK_TCK")


def all_process_cpu() -> dict[int, tuple[str, float]]:
    """Every process now: pid -> (command, CPU s so far of its threads)."""
    out = {}
    tck = os.sysconf("SC_CLK_TCK")
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            raw = Path(f"/proc/{name}/stat").read_bytes()
        except OSError:
            continue
        f = raw[raw.rfind(b")") + 2:].split()
        comm = raw[raw.find(b"(") + 1:raw.rfind(b")")].decode(errors="replace")
        out[int(name)] = (comm, (int(f[11]) + int(f[12])) / tck)
    return out


def thread_cpu(pid: int) -> dict[int, float]:
    """CPU s so far of each thread of ``pid``, by tid (the daemon's Python threads have no
    names of their own in /proc)."""
    out = {}
    tck = os.sysconf("SC_CLK_TCK")
    with contextlib.suppress(OSError):
        for tid in os.listdir(f"/proc/{pid}/task"):
            try:
                raw = Path(f"/proc/{pid}/task/{tid}/stat").read_bytes()
            except OSError:
                continue
            f = raw[raw.rfind(b")") + 2:].split()
            out[int(tid)] = (int(f[11]) + int(f[12])) / tck
    return out


def command_line(pid: int, limit: int = 70) -> str:
    """A process's command line, shortened; its comm in brackets if it has none."""
    with contextlib.suppress(OSError):
        text = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").strip()
        if text:
            return text.decode(errors="replace")[:limit]
    return ""


def host_busy_seconds() -> float:
    """CPU seconds all CPUs have been busy since boot (idle and iowait left out)."""
    fields = Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]
    user, nice, system, _idle, _iowait, irq, softirq, steal = (int(x) for x in fields[:8])
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")


def children_of(pid: int) -> list[int]:
    """The pids ``pid``'s main thread forked that are still its children."""
    try:
        text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
    except OSError:
        return []
    return [int(p) for p in text.split()]


def compile_loadgen(out: Path) -> None:
    """Build bench/loadgen.c into ``out``."""
    cc = shutil.which("cc") or shutil.which("gcc")
    if cc is None:
        raise SystemExit("stream: needs a C compiler (apt-get install gcc)")
    subprocess.run([cc, "-O2", "-Wall", "-pthread", "-o", str(out), str(LOADGEN_SRC)],
                   check=True)


def read_line(fd: int, timeout: float, what: str) -> bytes:
    """One line from the pipe ``fd`` (unbuffered reads: nothing is left in a buffer)."""
    buf = b""
    end = time.monotonic() + timeout
    while b"\n" not in buf:
        left = end - time.monotonic()
        if left <= 0:
            raise TimeoutError(f"{what}: no answer in {timeout:g} s")
        if _readable(fd, left):
            chunk = os.read(fd, 1)  # one byte at a time: the line is short
            if not chunk:
                raise EOFError(f"{what}: closed its output")
            buf += chunk
    return buf


def _readable(fd: int, timeout: float) -> bool:
    with selectors.DefaultSelector() as sel:
        sel.register(fd, selectors.EVENT_READ)
        return bool(sel.select(timeout))


# -- metrics ----------------------------------------------------------------------------------


def scrape(port: int) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """/metrics as {(sample name, sorted labels): value}."""
    from prometheus_client.parser import text_string_to_metric_families

    status, body = http_get(port, "/metrics")
    if status != 200:
        raise RuntimeError(f"/metrics answered {status}")
    out = {}
    for fam in text_string_to_metric_families(body.decode()):
        for s in fam.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def metric(m: dict, name: str, **labels: str) -> float:
    """One sample's value, 0 when absent."""
    return m.get((name, tuple(sorted(labels.items()))), 0.0)


def lag_buckets(m: dict) -> list[tuple[float, float]]:
    """proctree_event_lag_seconds buckets: (upper bound s, cumulative count), ascending."""
    out = [(float(dict(lbls)["le"]), v) for (n, lbls), v in m.items()
           if n == "proctree_event_lag_seconds_bucket"]
    return sorted(out)


def bucket_delta(before: list[tuple[float, float]],
                 after: list[tuple[float, float]]) -> list[tuple[float, float]]:
    """Cumulative bucket counts over a window."""
    b0 = dict(before)
    return [(le, v - b0.get(le, 0.0)) for le, v in after]


def hist_quantile(buckets: list[tuple[float, float]], q: float) -> tuple[float, float] | None:
    """(interpolated q-quantile, upper bound of its bucket), s, of cumulative ``buckets``,
    the way Prometheus's histogram_quantile does (linear within a bucket; a quantile in
    the +Inf bucket is the last finite bound). None without observations."""
    if not buckets or buckets[-1][1] <= 0:
        return None
    total = buckets[-1][1]
    rank = q * total
    prev_le, prev_c = 0.0, 0.0
    for le, c in buckets:
        if c >= rank:
            if math.isinf(le):
                return prev_le, le
            if c == prev_c:
                return le, le
            return prev_le + (le - prev_le) * (rank - prev_c) / (c - prev_c), le
        prev_le, prev_c = le, c
    return prev_le, math.inf


# -- processes we start ------------------------------------------------------------------------


class Daemon:
    """proctree-exporter as a subprocess on loopback, its log in a file."""

    def __init__(self, workdir: Path, config: str, port: int) -> None:
        self.config_path = workdir / "config.yaml"
        self.config_path.write_text(config)
        self.port = port
        self.log_path = workdir / "daemon.log"
        self._log = open(self.log_path, "wb")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            [str(EXE), "--config", str(self.config_path),
             "--web.listen-address", f"127.0.0.1:{port}"],
            stdin=subprocess.DEVNULL, stdout=self._log, stderr=subprocess.STDOUT,
            start_new_session=True)
        self.pid = self.proc.pid

    def wait_ready(self, timeout: float = READY_TIMEOUT_S) -> float:
        """Until /-/ready answers 200; seconds taken."""
        t0 = time.monotonic()
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"daemon exited {self.proc.returncode}: "
                                   f"{self.log_tail()}")
            with contextlib.suppress(OSError, http.client.HTTPException):
                if http_get(self.port, "/-/ready", timeout=5)[0] == 200:
                    return time.monotonic() - t0
            if time.monotonic() - t0 > timeout:
                raise TimeoutError(f"daemon not ready in {timeout:g}s")
            time.sleep(0.05)

    def log_size(self) -> int:
        with contextlib.suppress(OSError):
            return self.log_path.stat().st_size
        return 0

    def log_since(self, offset: int) -> list[str]:
        """Its log lines written after byte ``offset``."""
        with contextlib.suppress(OSError), open(self.log_path, "rb") as f:
            f.seek(offset)
            return f.read().decode(errors="replace").splitlines()
        return []

    def log_tail(self, n: int = 5) -> str:
        return " | ".join(self.log_since(0)[-n:])

    def stop(self) -> int | None:
        """SIGTERM by pid, then SIGKILL; its exit status."""
        p = self.proc
        if p.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, signal.SIGTERM)
            try:
                p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(self.pid, signal.SIGKILL)
                p.wait(timeout=10)
        self._log.close()
        return p.returncode


class StormParent:
    """A ``/bin/sh`` reading commands from a pipe: the root's one instance. Each storm
    is a loadgen it runs (so loadgen, its workers and their children are the root's
    descendants, and the root stays up between storms)."""

    def __init__(self, workdir: Path) -> None:
        self._err = open(workdir / "storm-parent.err", "wb")  # noqa: SIM115 - closed in end()
        self.popen = subprocess.Popen(["/bin/sh"], stdin=subprocess.PIPE,
                                      stdout=subprocess.PIPE, stderr=self._err,
                                      start_new_session=True)
        self.pid = self.popen.pid

    def storm(self, loadgen: Path, workers: int, seconds: float, rate: float,
              outdir: Path) -> dict[str, Any]:
        """Run one loadgen fork-exit and return its JSON report."""
        outdir.mkdir(parents=True, exist_ok=True)
        cmd = (f"{shlex.quote(str(loadgen))} fork-exit {workers} {seconds:g} "
               f"{shlex.quote(str(outdir))} {rate:g} || echo '{{\"failed\": true}}'\n")
        assert self.popen.stdin is not None and self.popen.stdout is not None
        self.popen.stdin.write(cmd.encode())
        self.popen.stdin.flush()
        line = read_line(self.popen.stdout.fileno(), seconds + LOADGEN_GRACE_S, "loadgen")
        report = json.loads(line)
        if report.get("failed") and "created" not in report:
            raise RuntimeError("loadgen failed (see storm-parent.err)")
        return report

    def end(self) -> None:
        """Kill by pid whatever it is running (loadgen's workers die by PR_SET_PDEATHSIG
        with their main process: killed here too, by pid, while they are its children),
        then it."""
        for child in children_of(self.pid):
            for grandchild in children_of(child):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(grandchild, signal.SIGKILL)
            with contextlib.suppress(ProcessLookupError):
                os.kill(child, signal.SIGKILL)
        p = self.popen
        if p.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, signal.SIGKILL)
        p.wait(timeout=10)
        for stream in (p.stdin, p.stdout):
            if stream:
                with contextlib.suppress(OSError):
                    stream.close()
        self._err.close()


class Clients:
    """The client process (this file, ``clients`` mode)."""

    def __init__(self, port: int, n: int, since: int, kinds: str, parse: str) -> None:
        cmd = [sys.executable, str(Path(__file__).resolve()), "clients", "--port", str(port),
               "--root", ROOT, "--since", str(since), "--clients", str(n), "--parse", parse,
               "--parent", str(os.getpid())]
        if kinds:
            cmd += ["--kinds", kinds]
        self.popen = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                      stderr=subprocess.PIPE, start_new_session=True)
        self.pid = self.popen.pid

    def wait_ready(self) -> dict[str, Any]:
        """Its first line: every response head has come (or CONNECT_TIMEOUT_S passed)."""
        assert self.popen.stdout is not None
        line = read_line(self.popen.stdout.fileno(), CONNECT_TIMEOUT_S + 10, "clients")
        return json.loads(line)

    def finish(self, end: dict[str, Any], timeout: float) -> dict[str, Any]:
        """Tell it where the window ends; its report."""
        p = self.popen
        assert p.stdin is not None
        p.stdin.write((json.dumps(end) + "\n").encode())
        p.stdin.flush()
        out, err = p.communicate(timeout=timeout + 60)  # it stops waiting at ``timeout``
        if p.returncode != 0:
            raise RuntimeError(f"clients exited {p.returncode}: {err.decode()[-500:]}")
        return json.loads(out)

    def kill(self) -> None:
        """SIGKILL by pid if still running; reap."""
        p = self.popen
        if p.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, signal.SIGKILL)
        p.wait()
        for stream in (p.stdin, p.stdout, p.stderr):
            if stream:
                with contextlib.suppress(OSError):
                    stream.close()


# -- the client process -----------------------------------------------------------------------

_TS = re.compile(rb'"ts":(-?[0-9.eE+-]+)')
_PID = re.compile(rb'"pid":(\d+)')


class Stream:
    """One SSE client: its socket, HTTP head, SSE parser and tallies."""

    def __init__(self, idx: int, sock: socket.socket, since: int, root: str, full: bool,
                 filtered: bool) -> None:
        self.idx = idx
        self.sock = sock
        self.since = since
        self.root = root.encode()
        self.full = full  # decode every frame with json.loads
        self.filtered = filtered  # ?kinds=: seq gaps are expected
        self.raw = b""  # before the head, and chunked bytes not yet decoded
        self.buf = b""  # SSE text not yet a complete frame
        self.head_done = False
        self.status = 0
        self.chunked = False
        self.chunk_left = -1  # bytes left of the current chunk (+2 for CRLF); -1: a size
        self.error_body = b""
        self.last = since  # seq of the last event (or reset) taken
        self.end: int | None = None  # END, once the bench says
        self.want: tuple[int, int] | None = None  # the root's joined, exited deltas: END
        self.received = 0
        self.resets: list[tuple[int, int, int]] = []  # (seq - lost, seq of reset, lost)
        self.reset_mismatch = 0  # resets whose lost != seq - the last seq taken before
        self.gaps = 0  # seqs skipped without a reset
        self.dups = 0  # seqs at or below one already taken
        self.beyond = 0  # events after END
        self.kinds: Counter[str] = Counter()
        self.joined = array("i")
        self.exited = array("i")
        self.lat = array("d")  # receipt - ts, s
        self.first_rx: float | None = None
        self.last_rx: float | None = None
        self.keepalives = 0
        self.retry: int | None = None
        self.checked = 0
        self.check_errors: list[str] = []
        self.cut: dict[str, Any] | None = None  # the error frame
        self.closed = False  # EOF or socket error
        self.error = ""
        self.done = False  # END reached
        self.sock_open = True

    # bytes in

    def feed(self, data: bytes, now: float) -> None:
        if not self.head_done:
            self.raw += data
            i = self.raw.find(b"\r\n\r\n")
            if i < 0:
                if len(self.raw) > 65536:
                    self.error = "response head over 64 KiB"
                    self.closed = True
                return
            head, data, self.raw = self.raw[:i], self.raw[i + 4:], b""
            lines = head.decode("latin-1").split("\r\n")
            parts = lines[0].split(" ", 2)
            self.status = int(parts[1]) if len(parts) > 1 and parts[1].isdigit() else -1
            headers = {k.strip().lower(): v.strip()
                       for k, _, v in (ln.partition(":") for ln in lines[1:])}
            self.chunked = "chunked" in headers.get("transfer-encoding", "").lower()
            self.head_done = True
            if not data:
                return
        if self.status != 200:
            if len(self.error_body) < 4096:
                self.error_body += data[:4096]
            return
        if self.chunked:
            data = self._dechunk(data)
        self._sse(data, now)

    def _dechunk(self, data: bytes) -> bytes:
        raw = self.raw + data
        out = []
        pos = 0
        while pos < len(raw):
            if self.chunk_left < 0:
                j = raw.find(b"\r\n", pos)
                if j < 0:
                    break
                size = int(raw[pos:j].split(b";")[0] or b"0", 16)
                pos = j + 2
                if size == 0:
                    self.closed = True
                    pos = len(raw)
                    break
                self.chunk_left = size + 2
            take = min(self.chunk_left, len(raw) - pos)
            body_take = max(0, min(take, self.chunk_left - 2))
            out.append(raw[pos:pos + body_take])
            pos += take
            self.chunk_left -= take
            if self.chunk_left == 0:
                self.chunk_left = -1
        self.raw = raw[pos:]
        return b"".join(out)

    def _sse(self, data: bytes, now: float) -> None:
        buf = self.buf + data
        if b"\r" in buf:  # CRLF or CR line ends; a CR last may be half of a CRLF
            tail = b"\r" if buf.endswith(b"\r") else b""
            if tail:
                buf = buf[:-1]
            buf = buf.replace(b"\r\n", b"\n").replace(b"\r", b"\n") + tail
        i = buf.rfind(b"\n\n")
        if i < 0:
            self.buf = buf
            return
        self.buf = buf[i + 2:]
        for frame in buf[:i].split(b"\n\n"):
            if frame:
                self._frame(frame.lstrip(b"\n"), now)

    def _frame(self, frame: bytes, now: float) -> None:
        kind = b"message"
        ident = None
        data: list[bytes] = []
        for line in frame.split(b"\n"):
            if not line:
                continue
            if line[0] == 58:  # ':' a comment: the keepalive
                self.keepalives += 1
                continue
            name, _, value = line.partition(b":")
            if value[:1] == b" ":
                value = value[1:]
            if name == b"data":
                data.append(value)
            elif name == b"event":
                kind = value
            elif name == b"id":
                ident = value
            elif name == b"retry" and value.isdigit():
                self.retry = int(value)
        if data:
            self._event(kind, ident, b"\n".join(data), now)

    def _event(self, kind: bytes, ident: bytes | None, data: bytes, now: float) -> None:
        if kind == b"error":
            try:
                self.cut = json.loads(data)
            except ValueError:
                self.cut = {"reason": "?", "message": data[:200].decode(errors="replace")}
            return
        doc = None
        seq = -1
        if ident is not None:
            name, _, num = ident.rpartition(b":")
            if name == self.root and num.isdigit():
                seq = int(num)
        if self.full or self.checked < CHECK_FRAMES or seq < 0 or kind in (b"reset", b"lost"):
            doc = json.loads(data)
            if self.checked < CHECK_FRAMES:
                self.checked += 1
                self._check(kind, seq, doc)
            if seq < 0:
                seq = int(doc["seq"])
        if kind in (b"reset", b"lost"):  # the stream goes on after seq
            assert doc is not None
            lost = int(doc.get("lost", doc.get("count", 0)))
            if seq - self.last != lost and not self.filtered:
                self.reset_mismatch += 1
            self.resets.append((seq - lost, seq, lost))  # seqs (seq - lost, seq] are lost
            self.last = max(self.last, seq)
            return
        if seq <= self.last:
            self.dups += 1
            return
        end = self.end
        if end is not None and seq > end:
            self.beyond += 1
            self.done = True
            return
        if seq != self.last + 1 and not self.filtered:
            self.gaps += seq - self.last - 1
        self.last = seq
        self.received += 1
        if self.first_rx is None:
            self.first_rx = now
        self.last_rx = now
        k = kind.decode()
        self.kinds[k] += 1
        if kind in TIMED_KINDS:
            if doc is not None:
                ts, pid = float(doc["ts"]), int(doc["pid"])
            else:
                m_ts, m_pid = _TS.search(data), _PID.search(data)
                if m_ts is None or m_pid is None:
                    doc = json.loads(data)
                    ts, pid = float(doc["ts"]), int(doc["pid"])
                else:
                    ts, pid = float(m_ts.group(1)), int(m_pid.group(1))
            self.lat.append(now - ts)
            (self.joined if kind == b"joined" else self.exited).append(pid)
            if self.filtered and self.reached():
                self.done = True
        if end is not None and seq >= end:
            self.done = True

    def reached(self) -> bool:
        """END reached: its seq, or with ?kinds= (whose frames skip the seqs of other
        kinds, END's included) as many joined and exited events as the root counted."""
        if self.end is None:
            return False
        if self.last >= self.end:
            return True
        want = self.want
        return (self.filtered and want is not None and self.kinds["joined"] >= want[0]
                and self.kinds["exited"] >= want[1])

    def _check(self, kind: bytes, seq: int, doc: dict[str, Any]) -> None:
        """A frame decoded in full: id, event and data must agree."""
        problems = []
        if kind not in (b"reset", b"lost") and doc.get("kind") != kind.decode():
            problems.append(f"event {kind.decode()!r} but data kind {doc.get('kind')!r}")
        if seq >= 0 and doc.get("seq") != seq:
            problems.append(f"id seq {seq} but data seq {doc.get('seq')}")
        if doc.get("root") != self.root.decode():
            problems.append(f"root {doc.get('root')!r}")
        if kind in TIMED_KINDS and not isinstance(doc.get("ts"), int | float):
            problems.append("no numeric ts")
        if problems and len(self.check_errors) < 5:
            self.check_errors.append("; ".join(problems))

    # the verdict

    def summary(self, end: int, spawned: int, exited: int,
                expected: list[int] | None) -> dict[str, Any]:
        lost = sum(max(0, min(s, end) - max(lb, self.since)) for lb, s, _ in self.resets
                   if lb < end)
        reached = self.reached()
        taken = self.received + lost  # seqs of the window accounted for
        ok_counts = (self.kinds.get("joined", 0) == spawned
                     and self.kinds.get("exited", 0) == exited)
        if self.status != 200:
            status = "refused"
        elif self.gaps or self.dups or self.reset_mismatch or self.check_errors:
            status = "incomplete"
        elif reached and not self.resets:
            complete = (ok_counts and self.received == end - self.since) if not self.filtered \
                else ok_counts
            status = "complete" if complete else "incomplete"
        elif reached:
            status = "reset" if self.filtered or taken == end - self.since else "incomplete"
        elif self.cut is not None:
            status = "cut"
        elif self.closed:
            status = "closed"
        else:
            status = "behind"
        doc: dict[str, Any] = {
            "idx": self.idx, "status": status, "http_status": self.status,
            "received": self.received, "last_seq": self.last, "lost_in_resets": lost,
            "resets": len(self.resets), "reset_mismatch": self.reset_mismatch,
            "gaps": self.gaps, "dups": self.dups, "beyond_end": self.beyond,
            "kinds": dict(self.kinds), "first_rx": self.first_rx, "last_rx": self.last_rx,
            "keepalives": self.keepalives, "retry_ms": self.retry, "frames_checked": self.checked,
            "check_errors": self.check_errors, "cut": self.cut, "error": self.error,
        }
        if self.status != 200:
            doc["error_body"] = self.error_body[:300].decode(errors="replace")
        if expected is not None:
            got_j, got_e = sorted(self.joined), sorted(self.exited)
            if got_j == expected and got_e == expected:
                doc["loadgen_ok"] = True
            else:
                want = Counter(expected)
                cj, ce = Counter(got_j), Counter(got_e)
                doc["loadgen_ok"] = False
                doc["joined_missing"] = sum((want - cj).values())
                doc["joined_extra"] = sum((cj - want).values())
                doc["exited_missing"] = sum((want - ce).values())
                doc["exited_extra"] = sum((ce - want).values())
        lat = sorted(self.lat)
        doc["latency_ms"] = {"n": len(lat), "p50": _ms(percentile(lat, 0.5)),
                             "p99": _ms(percentile(lat, 0.99)),
                             "max": _ms(lat[-1] if lat else None)}
        return doc


def _ms(v: float | None) -> float | None:
    return None if v is None else v * 1e3


def read_pids(directory: Path) -> list[int]:
    """Every pid loadgen recorded in DIRECTORY/worker-N.pids (native int32)."""
    out = array("i")
    for f in sorted(directory.glob("worker-*.pids")):
        chunk = array("i")
        chunk.frombytes(f.read_bytes())
        out.extend(chunk)
    return list(out)


def clients_main(argv: list[str]) -> int:
    """N streams of ``/api/v1/events?root=ROOT&since=ROOT:SINCE`` in one selector loop.

    Prints ``{"ready": ...}`` once every response head has come; then reads until a
    JSON line on stdin gives END (``end_seq``, the counter deltas, the loadgen pid
    directory and its main and worker pids), and every stream has END, ended, or
    ``timeout`` s passed; prints one JSON report. EOF on stdin before that: exit.
    """
    ap = argparse.ArgumentParser(prog="stream.py clients")
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--root", default=ROOT)
    ap.add_argument("--since", type=int, required=True)
    ap.add_argument("--clients", type=int, required=True)
    ap.add_argument("--kinds", default="")
    ap.add_argument("--parse", choices=("fast", "json"), default="fast")
    ap.add_argument("--parent", type=int, default=0)
    args = ap.parse_args(argv)
    # die with the bench even if it is SIGKILLed
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(1, int(signal.SIGKILL), 0, 0, 0)
    if args.parent and os.getppid() != args.parent:
        return 1
    path = f"/api/v1/events?root={args.root}&since={args.root}:{args.since}"
    if args.kinds:
        path += f"&kinds={args.kinds}"
    request = (f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{args.port}\r\n"
               f"Accept: text/event-stream\r\nConnection: close\r\n\r\n").encode()
    sel = selectors.DefaultSelector()
    streams: list[Stream] = []
    t_connect = time.monotonic()
    for i in range(args.clients):
        sock = socket.create_connection(("127.0.0.1", args.port), timeout=CONNECT_TIMEOUT_S)
        sock.sendall(request)
        sock.setblocking(False)
        st = Stream(i, sock, args.since, args.root, args.parse == "json", bool(args.kinds))
        streams.append(st)
        sel.register(sock, selectors.EVENT_READ, st)
    sel.register(sys.stdin.fileno(), selectors.EVENT_READ, None)
    stdin_buf = b""
    end: dict[str, Any] | None = None
    finish_by = math.inf
    ready_sent = False
    live = len(streams)

    def close(st: Stream) -> None:
        nonlocal live
        if not st.sock_open:
            return
        st.sock_open = False
        with contextlib.suppress(KeyError, ValueError):
            sel.unregister(st.sock)
        with contextlib.suppress(OSError):
            st.sock.close()
        live -= 1

    while True:
        for key, _ in sel.select(0.1):
            st = key.data
            if st is None:
                chunk = os.read(sys.stdin.fileno(), 65536)
                if not chunk:
                    os._exit(3)  # the bench is gone or gave up
                stdin_buf += chunk
                if b"\n" in stdin_buf:
                    end = json.loads(stdin_buf.split(b"\n", 1)[0])
                    sel.unregister(sys.stdin.fileno())
                    finish_by = time.monotonic() + float(end["timeout"])
                    for s in streams:
                        s.end = int(end["end_seq"])
                        s.want = (int(end["spawned"]), int(end["exited"]))
                        if s.reached():
                            s.done = True
                            close(s)
                continue
            if not st.sock_open:
                continue
            try:
                data = st.sock.recv(RECV_BYTES)
            except (BlockingIOError, InterruptedError):
                continue
            except OSError as exc:
                st.error = repr(exc)
                data = b""
            if not data:
                st.closed = True
                close(st)
                continue
            st.feed(data, time.time())
            if st.done or st.closed or st.cut is not None:
                close(st)
        if not ready_sent and (all(s.head_done or s.closed for s in streams)
                               or time.monotonic() - t_connect > CONNECT_TIMEOUT_S):
            ready_sent = True
            statuses = Counter(s.status for s in streams)
            sys.stdout.write(json.dumps({"ready": True, "connect_s": time.monotonic() - t_connect,
                                         "statuses": {str(k): v for k, v in statuses.items()},
                                         }) + "\n")
            sys.stdout.flush()
        if end is not None and (live <= 0 or time.monotonic() > finish_by):
            break
    for st in streams:
        close(st)
    cpu = os.times()
    expected = None
    if end.get("pids_dir"):
        expected = sorted(read_pids(Path(end["pids_dir"])) + list(end.get("extra_pids", [])))
    summaries = [st.summary(int(end["end_seq"]), int(end["spawned"]), int(end["exited"]),
                            expected) for st in streams]
    lat = array("d")
    for st in streams:
        lat.extend(st.lat)
    ordered = sorted(lat)
    doc = {
        "clients": args.clients, "parse": args.parse, "kinds": args.kinds,
        "cpu_s": cpu.user + cpu.system, "expected_pids": len(expected or ()),
        "streams": summaries,
        "latency_ms": {"n": len(ordered), "p50": _ms(percentile(ordered, 0.5)),
                       "p90": _ms(percentile(ordered, 0.9)),
                       "p99": _ms(percentile(ordered, 0.99)),
                       "p999": _ms(percentile(ordered, 0.999)),
                       "min": _ms(ordered[0] if ordered else None),
                       "max": _ms(ordered[-1] if ordered else None)},
    }
    sys.stdout.write(json.dumps(doc) + "\n")
    sys.stdout.flush()
    os._exit(0)


# -- the phases ---------------------------------------------------------------------------------


def daemon_config(port: int, storm_parent: int, max_clients: int) -> str:
    """One root on the storm's parent; room for every client; nothing else to do."""
    return f"""\
web:
  listen_address: "127.0.0.1:{port}"
  max_connections: {max_clients + 64}
  max_streams: {max_clients + 16}
log:
  level: info
tree:
  # exited processes leave the tree after 5 s, so that every phase starts from the same
  # small tree (at the default 300 s, later phases would run with a tree at capacity)
  tombstone_ttl_seconds: 5
roots:
  - name: {ROOT}
    select: pid
    match: {storm_parent}
    max_members: 1000
    # no tombstone expires during the run: no 'left' event long after its storm
    tombstone_ttl_seconds: 3600
"""


def root_doc(port: int) -> dict[str, Any]:
    """/api/v1/roots/storm without its listings."""
    status, body = http_get(port, f"/api/v1/roots/{ROOT}")
    if status != 200:
        raise RuntimeError(f"/api/v1/roots/{ROOT} answered {status}: {body[:200]!r}")
    doc = json.loads(body)
    if "seq" not in doc:  # an older server: the newest event listed
        doc["seq"] = max((e.get("seq", 0) for e in doc.get("events", [])), default=0)
        doc["seq_from_events"] = True
    return {k: doc[k] for k in ("seq", "up", "spawned_total", "exited_total", "instances")
            if k in doc} | ({"seq_from_events": True} if doc.get("seq_from_events") else {})


class Bench:
    """The daemon, the storm's parent, and the phases."""

    def __init__(self, args: argparse.Namespace, tmp: Path, loadgen: Path) -> None:
        self.args = args
        self.tmp = tmp
        self.loadgen = loadgen
        self.daemon: Daemon | None = None
        self.parent: StormParent | None = None
        self.clients: list[Clients] = []
        self.storms = 0

    def settle(self, seq0: int, spawned0: int, exited0: int, made: int) -> tuple[dict, float]:
        """Wait until the root's counters moved by at least ``made`` and its seq has been
        still for SEQ_STILL_S (at most SETTLE_MAX_S). The root doc then, and the time."""
        assert self.daemon is not None
        t0 = time.monotonic()
        last_seq, still_since = -1, t0
        while True:
            doc = root_doc(self.daemon.port)
            now = time.monotonic()
            if doc["seq"] != last_seq:
                last_seq, still_since = doc["seq"], now
            counted = (doc["spawned_total"] - spawned0 >= made
                       and doc["exited_total"] - exited0 >= made)
            if (counted and now - still_since >= SEQ_STILL_S) or now - t0 > SETTLE_MAX_S:
                return doc, now - t0
            time.sleep(0.1)

    def cpu_sample(self, client: Clients | None) -> dict[str, Any]:
        """CPU s so far: the daemon (and by thread), the clients, loadgen (what the storm's
        parent has reaped), this process, the whole host."""
        assert self.daemon is not None and self.parent is not None
        me = os.times()
        return {"daemon": process_cpu_seconds(self.daemon.pid) or 0.0,
                "procs": all_process_cpu(),
                "threads": thread_cpu(self.daemon.pid),
                "client": (process_cpu_seconds(client.pid) or 0.0) if client else 0.0,
                "loadgen": reaped_children_cpu_seconds(self.parent.pid) or 0.0,
                "bench": me.user + me.system, "host": host_busy_seconds()}

    def other_top(self, before: dict[int, tuple[str, float]],
                  after: dict[int, tuple[str, float]], wall: float,
                  client: Clients | None) -> list[dict[str, Any]]:
        """The busiest other processes over the window (alive at its end; those that ended
        within it are only in the total): other proctree-exporter daemons on the host see
        every fork of the storm too."""
        assert self.daemon is not None and self.parent is not None
        mine = {os.getpid(), self.daemon.pid, self.parent.pid}
        if client is not None:
            mine.add(client.pid)
        rows = []
        for pid, (comm, cpu) in after.items():
            if pid in mine:
                continue
            # a process started in the window: all its CPU is the window's
            used = (cpu - (before[pid][1] if pid in before else 0.0)) / wall
            if used >= 0.02:
                rows.append({"pid": pid, "comm": comm, "cpus": round(used, 3),
                             "cmdline": command_line(pid)})
        return sorted(rows, key=lambda r: -r["cpus"])[:5]

    def phase(self, name: str, n_clients: int) -> dict[str, Any]:
        args = self.args
        assert self.daemon is not None and self.parent is not None
        port = self.daemon.port
        time.sleep(SETTLE_S)
        res: dict[str, Any] = {"phase": name, "clients": n_clients,
                               "loadavg_before": loadavg()}
        log0 = self.daemon.log_size()
        doc0 = root_doc(port)
        m0 = scrape(port)
        res["root_before"] = doc0
        client = None
        if n_clients:
            client = Clients(port, n_clients, doc0["seq"], args.kinds, args.parse)
            self.clients.append(client)
            res["connect"] = client.wait_ready()
        self.storms += 1
        outdir = self.tmp / f"pids-{self.storms}"
        cpu0 = self.cpu_sample(client)
        wall0, t0 = time.time(), time.monotonic()
        report = self.parent.storm(self.loadgen, args.workers, args.seconds, args.rate, outdir)
        t_storm = time.monotonic() - t0
        made = report["created"] + len(report["worker_pids"]) + 1
        doc1, res["settle_s"] = self.settle(doc0["seq"], doc0["spawned_total"],
                                            doc0["exited_total"], made)
        t1 = time.monotonic()
        cpu1 = self.cpu_sample(client)
        m1 = scrape(port)
        res["root_after"] = doc1
        spawned = doc1["spawned_total"] - doc0["spawned_total"]
        exited = doc1["exited_total"] - doc0["exited_total"]
        res["storm"] = {k: report.get(k) for k in ("workers", "rate", "elapsed_s", "created",
                                                   "failed", "ok", "main_pid", "worker_pids")}
        res["forks_per_s"] = report["created"] / report["elapsed_s"]
        res["storm_s"] = t_storm
        res["window_s"] = t1 - t0
        res["root_delta"] = {"seq": doc1["seq"] - doc0["seq"], "spawned": spawned,
                             "exited": exited, "loadgen_processes": made}
        res["offered_events_per_s"] = (doc1["seq"] - doc0["seq"]) / max(t_storm, 1e-9)
        hist = bucket_delta(lag_buckets(m0), lag_buckets(m1))
        q = hist_quantile(hist, 0.99)
        q50 = hist_quantile(hist, 0.5)
        res["lag"] = {"events": hist[-1][1] if hist else 0,
                      "p99_ms": q[0] * 1e3 if q else None,
                      "p99_bucket_le_ms": q[1] * 1e3 if q else None,
                      "p50_ms": q50[0] * 1e3 if q50 else None,
                      "buckets": [[le if not math.isinf(le) else "+Inf", c] for le, c in hist]}
        res["collector"] = {
            "events_lost": metric(m1, "proctree_events_lost_total")
            - metric(m0, "proctree_events_lost_total"),
            "resyncs": metric(m1, "proctree_resyncs_total") - metric(m0, "proctree_resyncs_total"),
            "cpu_s": metric(m1, "proctree_collector_cpu_seconds_total")
            - metric(m0, "proctree_collector_cpu_seconds_total"),
        }
        wall = max(t1 - t0, 1e-9)
        used = {k: (cpu1[k] - cpu0[k]) / wall for k in ("daemon", "client", "loadgen", "bench",
                                                         "host")}
        res["cpu"] = {
            "daemon_cpus": used["daemon"], "client_cpus": used["client"] if client else None,
            "loadgen_cpus": used["loadgen"], "bench_cpus": used["bench"],
            "host_cpus_busy": used["host"],
            # what else kept the CPUs busy: other work on the machine, and kernel threads
            "other_cpus": max(0.0, used["host"] - used["daemon"] - used["client"]
                              - used["loadgen"] - used["bench"]),
            "other_top": self.other_top(cpu0["procs"], cpu1["procs"], wall, client),
            # the daemon's busiest threads (one near 1.0: that thread, or the GIL, bounds it)
            "daemon_threads_top": sorted(
                (round((v - cpu0["threads"].get(t, 0.0)) / wall, 3) for t, v in
                 cpu1["threads"].items()), reverse=True)[:4],
        }
        if client is not None:
            end = {"end_seq": doc1["seq"], "spawned": spawned, "exited": exited,
                   "pids_dir": str(outdir),
                   "extra_pids": [report["main_pid"], *report["worker_pids"]],
                   "timeout": args.finish_timeout}
            t_f = time.monotonic()
            rep = client.finish(end, args.finish_timeout)
            res["finish_s"] = time.monotonic() - t_f
            client.kill()
            m2 = scrape(port)
            t2 = time.monotonic()
            res["stream_metrics"] = {
                "events_sent": metric(m2, "proctree_event_stream_events_sent_total")
                - metric(m0, "proctree_event_stream_events_sent_total"),
                "dropped": {r: metric(m2, "proctree_event_stream_clients_dropped_total",
                                      reason=r)
                            - metric(m0, "proctree_event_stream_clients_dropped_total",
                                     reason=r) for r in ("slow", "limit", "shutdown")},
                "open_after": metric(m2, "proctree_event_streams_open"),
            }
            # the hub's throughput: events written to all clients per s, storm start to
            # the clients' end (whether they reached END or gave up)
            res["stream_metrics"]["sent_per_s"] = (res["stream_metrics"]["events_sent"]
                                                   / max(t2 - t0, 1e-9))
            res["delivery"] = summarize_clients(rep, wall0)
        res["daemon_log"] = [ln for ln in self.daemon.log_since(log0)
                             if re.search(r"overrun|resync|lost|WARN|ERROR|Traceback", ln)][:20]
        res["loadavg_after"] = loadavg()
        return res


def summarize_clients(rep: dict[str, Any], wall0: float) -> dict[str, Any]:
    """The clients' report reduced to the table's figures (streams kept in full)."""
    streams = rep["streams"]
    statuses = Counter(s["status"] for s in streams)
    rates = []
    for s in streams:
        if s["received"] and s["last_rx"]:
            rates.append(s["received"] / max(s["last_rx"] - wall0, 1e-9))
        else:
            rates.append(0.0)
    span = max((s["last_rx"] or wall0 for s in streams), default=wall0) - wall0
    received = sum(s["received"] for s in streams)
    loadgen = [s.get("loadgen_ok") for s in streams if s["status"] == "complete"]
    return {
        "statuses": dict(statuses),
        "failed": sum(v for k, v in statuses.items() if k not in STATUS_OK),
        "events_received": received,
        "events_per_s_per_client_mean": sum(rates) / len(rates) if rates else None,
        "events_per_s_per_client_min": min(rates) if rates else None,
        "events_per_s_per_client_max": max(rates) if rates else None,
        "events_per_s_total": received / span if span > 0 else None,
        "lost_in_resets": sum(s["lost_in_resets"] for s in streams),
        "complete_match_loadgen": sum(1 for x in loadgen if x),
        "complete_differ_loadgen": sum(1 for x in loadgen if x is False),
        "latency_ms": rep["latency_ms"],
        "client_cpu_s": rep["cpu_s"],
        "expected_pids": rep["expected_pids"],
        "streams": streams,
    }


def run(args: argparse.Namespace, tmp: Path, doc: dict[str, Any], phases: list[dict[str, Any]],
        notes: list[str]) -> None:
    """Start the pieces, run the phases (appended as they end), end every piece by pid."""
    loadgen = tmp / "loadgen"
    compile_loadgen(loadgen)
    bench = Bench(args, tmp, loadgen)
    try:
        bench.parent = StormParent(tmp)
        port = free_port()
        cfg = daemon_config(port, bench.parent.pid, max(args.clients, default=0))
        doc["daemon_config"] = cfg
        bench.daemon = Daemon(tmp, cfg, port)
        doc["daemon_ready_s"] = bench.daemon.wait_ready()
        first = root_doc(port)
        if not first.get("up"):
            raise RuntimeError(f"root {ROOT} is not up: {first}")
        if first.get("seq_from_events"):
            notes.append("the root document has no 'seq': taken from its newest event listed")
        print(f"stream: daemon pid {bench.daemon.pid} ready in {doc['daemon_ready_s']:.1f} s "
              f"on port {port}; root {ROOT} = sh pid {bench.parent.pid}",
              file=sys.stderr, flush=True)
        plan = [("none", 0), *((f"c{n}", n) for n in args.clients)]
        if not args.no_closing_baseline:
            plan.append(("none-again", 0))
        for name, n in plan:
            print(f"stream: phase {name}: {n} clients, storm {args.seconds:g} s ...",
                  file=sys.stderr, flush=True)
            res = bench.phase(name, n)
            phases.append(res)
            print_phase_line(res)
    finally:
        for c in bench.clients:
            c.kill()
        if bench.parent is not None:
            bench.parent.end()
        if bench.daemon is not None:
            rc = bench.daemon.stop()
            doc["daemon_exit"] = rc
            tail = [ln for ln in bench.daemon.log_since(0)
                    if re.search(r"Traceback|ERROR|exception", ln)]
            if tail:
                notes.append(f"daemon log has errors: {tail[:3]}")


# -- report ---------------------------------------------------------------------------------


def jsonable(obj: Any) -> Any:
    """``obj`` with infinities as the string "inf" (JSON has no infinity)."""
    if isinstance(obj, float) and math.isinf(obj):
        return "inf" if obj > 0 else "-inf"
    if isinstance(obj, dict):
        return {k: jsonable(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [jsonable(v) for v in obj]
    return obj


def fmt(v: float | int | None, spec: str = ",.1f") -> str:
    """A number for a table cell; ``-`` for none."""
    return "-" if v is None else format(v, spec)


def status_cell(r: dict[str, Any]) -> str:
    d = r.get("delivery")
    if d is None:
        return "-"
    s = d["statuses"]
    other = d["failed"]
    return f"{s.get('complete', 0)}/{s.get('reset', 0)}/{s.get('cut', 0)}/{other}"


COLUMNS: list[tuple[str, int, Any]] = [
    ("phase", 10, lambda r: r["phase"]),
    ("cli", 3, lambda r: str(r["clients"])),
    ("forks/s", 7, lambda r: fmt(r.get("forks_per_s"), ",.0f")),
    ("ev/s made", 9, lambda r: fmt(r.get("offered_events_per_s"), ",.0f")),
    ("ev/s/cli", 8, lambda r: fmt((r.get("delivery") or {}).get("events_per_s_per_client_mean"),
                                  ",.0f")),
    ("min", 6, lambda r: fmt((r.get("delivery") or {}).get("events_per_s_per_client_min"),
                             ",.0f")),
    ("ev/s total", 10, lambda r: fmt((r.get("delivery") or {}).get("events_per_s_total"),
                                     ",.0f")),
    ("srv sent/s", 10, lambda r: fmt((r.get("stream_metrics") or {}).get("sent_per_s"),
                                     ",.0f")),
    ("ok/rst/cut/bad", 14, status_cell),
    ("lg ok", 5, lambda r: "-" if "delivery" not in r else
     f"{r['delivery']['complete_match_loadgen']}"),
    ("dlv p50", 7, lambda r: fmt(((r.get("delivery") or {}).get("latency_ms") or {}).get("p50"),
                                 ",.1f")),
    ("dlv p99", 7, lambda r: fmt(((r.get("delivery") or {}).get("latency_ms") or {}).get("p99"),
                                 ",.1f")),
    ("lag p50", 7, lambda r: fmt(r["lag"]["p50_ms"], ",.2f")),
    ("lag p99", 7, lambda r: fmt(r["lag"]["p99_ms"], ",.2f")),
    ("x base", 6, lambda r: fmt(r.get("lag_ratio"), ",.2f")),
    ("daemon", 6, lambda r: fmt(r["cpu"]["daemon_cpus"], ".2f")),
    ("client", 6, lambda r: fmt(r["cpu"]["client_cpus"], ".2f")),
    ("loadgen", 7, lambda r: fmt(r["cpu"]["loadgen_cpus"], ".2f")),
    ("other", 5, lambda r: fmt(r["cpu"]["other_cpus"], ".2f")),
    ("host", 5, lambda r: fmt(r["cpu"]["host_cpus_busy"], ".2f")),
]


def print_phase_line(r: dict[str, Any]) -> None:
    d = r.get("delivery")
    extra = ""
    if d:
        extra = (f", clients {d['statuses']}, {fmt(d['events_per_s_per_client_mean'], ',.0f')} "
                 f"ev/s/client, delivery p99 {fmt(d['latency_ms']['p99'], ',.1f')} ms")
    print(f"  {r['phase']}: {r['forks_per_s']:,.0f} forks/s, lag p99 "
          f"{fmt(r['lag']['p99_ms'], '.2f')} ms{extra}", file=sys.stderr, flush=True)


def evaluate(phases: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The issue's targets, each with its value and PASS/MISS."""
    out = []
    with_clients = [p for p in phases if p.get("delivery")]
    if with_clients:
        bad = {p["phase"]: {k: v for k, v in p["delivery"]["statuses"].items()
                            if k not in STATUS_OK}
               for p in with_clients if p["delivery"]["failed"]}
        uncounted = []
        silent = []
        for p in with_clients:
            cut = p["delivery"]["statuses"].get("cut", 0)
            closed = p["delivery"]["statuses"].get("closed", 0)
            slow = p["stream_metrics"]["dropped"]["slow"]
            if cut > slow:
                uncounted.append(f"{p['phase']}: {cut} cut, {slow:g} counted slow")
            if closed and slow >= cut + closed:
                silent.append(f"{p['phase']}: {closed} closed without an error frame while the "
                              f"server counted {slow:g} slow drops (cut off, but the client was "
                              f"not told)")
        total = sum(p["clients"] for p in with_clients)
        summary = "; ".join(f"{p['phase']}: {status_cell(p)}" for p in with_clients)
        value = f"complete/reset/cut/failed {summary}"
        if bad:
            value += f"; failed: {bad}"
        if uncounted:
            value += f"; cut but not counted by the server: {uncounted}"
        if silent:
            value += f"; {'; '.join(silent)}"
        out.append({"target": f"every client complete, or reset/cut and counted ({total} "
                              f"clients)", "value": value, "pass": not bad and not uncounted})
    else:
        out.append({"target": "every client complete or reset/cut and counted",
                    "value": "not measured", "pass": False})
    at = [p for p in with_clients if p["clients"] == DELIVERY_TARGET_CLIENTS]
    if at:
        p99 = at[0]["delivery"]["latency_ms"]["p99"]
        out.append({"target": f"delivery p99 <= {DELIVERY_P99_TARGET_MS:g} ms at "
                              f"{DELIVERY_TARGET_CLIENTS} clients",
                    "value": f"{fmt(p99, ',.1f')} ms over "
                             f"{at[0]['delivery']['latency_ms']['n']:,} events",
                    "pass": p99 is not None and p99 <= DELIVERY_P99_TARGET_MS})
    else:
        out.append({"target": f"delivery p99 <= {DELIVERY_P99_TARGET_MS:g} ms at "
                              f"{DELIVERY_TARGET_CLIENTS} clients", "value": "not measured",
                    "pass": False})
    bases = [p for p in phases if p["clients"] == 0]
    base = bases[0] if bases else None
    closing = bases[1] if len(bases) > 1 else None
    for p in with_clients:
        r = p.get("lag_ratio")
        b = base["lag"]["p99_ms"] if base else None
        value = (f"{fmt(p['lag']['p99_ms'], '.2f')} ms vs {fmt(b, '.2f')} ms (first no-client "
                 f"phase): {fmt(r, '.2f')}x")
        if closing and closing["lag"]["p99_ms"] and p["lag"]["p99_ms"] is not None:
            value += (f"; vs the closing one's {closing['lag']['p99_ms']:.2f} ms: "
                      f"{p['lag']['p99_ms'] / closing['lag']['p99_ms']:.2f}x")
        out.append({"target": f"collector lag p99 with {p['clients']} clients <= "
                              f"{LAG_RATIO_TARGET:g} x no clients",
                    "value": value, "ratio": r, "pass": r is not None and r <= LAG_RATIO_TARGET})
    return out


def add_ratios(phases: list[dict[str, Any]]) -> None:
    base = next((p for p in phases if p["clients"] == 0), None)
    b = base["lag"]["p99_ms"] if base else None
    for p in phases:
        a = p["lag"]["p99_ms"]
        p["lag_ratio"] = a / b if a is not None and b else None


def auto_notes(phases: list[dict[str, Any]], doc: dict[str, Any], notes: list[str]) -> None:
    """Things a reader of the table should know."""
    bases = [p for p in phases if p["clients"] == 0]
    if len(bases) == 2 and bases[0]["lag"]["p99_ms"] and bases[1]["lag"]["p99_ms"]:
        r = bases[1]["lag"]["p99_ms"] / bases[0]["lag"]["p99_ms"]
        if not 1 / LAG_RATIO_TARGET <= r <= LAG_RATIO_TARGET:
            notes.append(f"the two no-client phases differ: lag p99 "
                         f"{bases[0]['lag']['p99_ms']:.2f} then {bases[1]['lag']['p99_ms']:.2f} ms "
                         f"({r:.2f}x): the ratios carry that much noise")
    for p in phases:
        rd = p["root_delta"]
        if rd["spawned"] != rd["loadgen_processes"] or rd["exited"] != rd["loadgen_processes"]:
            notes.append(f"phase {p['phase']}: the root counted {rd['spawned']:,} joined / "
                         f"{rd['exited']:,} exited, loadgen made {rd['loadgen_processes']:,} "
                         f"processes (settle {p['settle_s']:.1f} s)")
        c = p["collector"]
        if c["events_lost"] or c["resyncs"]:
            notes.append(f"phase {p['phase']}: the collector lost {c['events_lost']:g} kernel "
                         f"events, {c['resyncs']:g} resyncs")
        if doc["rate"] and p["forks_per_s"] < 0.9 * doc["rate"]:
            notes.append(f"phase {p['phase']}: {p['forks_per_s']:,.0f} forks/s, below the "
                         f"{doc['rate']:,.0f}/s asked for (CPU taken by the daemon and clients)")
        if p["cpu"]["other_cpus"] > 0.25:
            top = ", ".join(f"{o['comm']} {o['cpus']:.2f}" for o in p["cpu"]["other_top"][:3])
            notes.append(f"phase {p['phase']}: other work (not the daemon, clients, loadgen or "
                         f"this bench: other processes, kernel threads) kept "
                         f"{p['cpu']['other_cpus']:.2f} CPUs busy (busiest: {top or '?'}): "
                         f"the machine was shared")
        if p["cpu"]["host_cpus_busy"] > 1.8:
            notes.append(f"phase {p['phase']}: CPUs saturated ({p['cpu']['host_cpus_busy']:.2f} "
                         f"of {os.cpu_count()} busy)")
        d = p.get("delivery")
        if not d:
            continue
        if (p["cpu"]["client_cpus"] or 0) > 0.8:
            notes.append(f"phase {p['phase']}: the client process used "
                         f"{p['cpu']['client_cpus']:.2f} CPUs (one thread): client-side "
                         f"parsing bounds the figures")
        if d["complete_differ_loadgen"]:
            notes.append(f"phase {p['phase']}: {d['complete_differ_loadgen']} complete clients' "
                         f"pids differ from loadgen's (the root's view differs from the storm)")
        errs = [s for s in d["streams"] if s["check_errors"] or s["error"]]
        if errs:
            notes.append(f"phase {p['phase']}: stream errors, e.g. "
                         f"{[(s['idx'], s['check_errors'], s['error']) for s in errs[:3]]}")
        closed = [s for s in d["streams"] if s["status"] == "closed"]
        if closed:
            notes.append(f"phase {p['phase']}: {len(closed)} clients saw EOF before END without an "
                         f"'error' frame (last seq min {min(s['last_seq'] for s in closed):,} of "
                         f"{p['root_after']['seq']:,}); the server counted "
                         f"{p['stream_metrics']['dropped']['slow']:g} slow drops: a cut whose "
                         f"error frame did not reach the client (stream-spec.md: it is the last "
                         f"frame before close)")
        cuts = Counter((s["cut"] or {}).get("reason") for s in d["streams"] if s["cut"])
        if cuts:
            notes.append(f"phase {p['phase']}: cut off by the server: {dict(cuts)}; "
                         f"server counted {p['stream_metrics']['dropped']}")
        behind = [s for s in d["streams"] if s["status"] == "behind"]
        if behind:
            clean = sum(1 for s in behind if not (s["gaps"] or s["dups"] or s["resets"]))
            notes.append(f"phase {p['phase']}: {len(behind)} clients short of END after "
                         f"{doc['finish_timeout']:g} s (last seq min "
                         f"{min(s['last_seq'] for s in behind):,} of "
                         f"{p['root_after']['seq']:,}; {clean} of them in order without a gap "
                         f"or reset so far: late, not lossy; neither cut nor reset by the server)")
        if p["daemon_log"]:
            notes.append(f"phase {p['phase']}: daemon log: {p['daemon_log'][:3]}")


def print_report(doc: dict[str, Any], phases: list[dict[str, Any]],
                 targets: list[dict[str, Any]], notes: list[str]) -> None:
    print()
    print(f"stream: {doc['time']}  kernel {doc['kernel']}  {doc['cpu_count']} CPUs  python "
          f"{doc['python']}  checkout {doc['git']} (src fingerprint "
          f"{doc['source_fingerprint']})")
    print(f"storm: loadgen fork-exit x{doc['workers']} at "
          f"{'flat out' if not doc['rate'] else format(doc['rate'], ',g') + '/s asked'}, "
          f"{doc['seconds']:g} s per phase; clients follow ?root={ROOT}&since=SEQ"
          f"{'&kinds=' + doc['kinds'] if doc['kinds'] else ''}, parse {doc['parse']}; "
          f"load now {doc.get('loadavg_end', '?')}")
    print()
    print(" ".join(f"{n:>{w}}" for n, w, _ in COLUMNS))
    for r in phases:
        print(" ".join(f"{get(r):>{w}}" for _, w, get in COLUMNS))
    print()
    print("ev/s made: the root's events (seq) per second of storm; ev/s/cli: events of the "
          "window a client received per s\n  (storm start to its last one), mean and min; "
          "total: all clients;\n  srv sent/s: the server's events written to all clients "
          "(proctree_event_stream_events_sent_total) per s,\n  storm start until the clients "
          "stopped")
    print("ok/rst/cut/bad: clients complete / reset (losses counted in reset frames) / cut "
          "off (error frame) / failed;\n  lg ok: complete clients whose joined and exited pids "
          "equal loadgen's")
    print("dlv: delivery latency, ms, receipt minus the event's ts (kernel FORK/EXIT), every "
          "joined and exited event of every client")
    print("lag p50/p99: collector event lag, ms, from proctree_event_lag_seconds bucket "
          "deltas (interpolated); x base: p99 over the first\n  no-client phase's")
    print("daemon, client, loadgen, other, host: CPUs used over storm + settle (other: host "
          "busy minus the rest, i.e. other work\n  on the machine and kernel threads)")
    for r in phases:
        d = r.get("delivery")
        rd = r["root_delta"]
        line = (f"\n[{r['phase']}] storm {r['storm_s']:.1f} s, {r['storm']['created']:,} forks; "
                f"root: seq +{rd['seq']:,}, joined +{rd['spawned']:,}, exited +{rd['exited']:,} "
                f"(loadgen {rd['loadgen_processes']:,}); settle {r['settle_s']:.1f} s; lag "
                f"p50/p99 {fmt(r['lag']['p50_ms'], '.3f')}/{fmt(r['lag']['p99_ms'], '.2f')} ms "
                f"(p99 bucket <= {fmt(r['lag']['p99_bucket_le_ms'], 'g')} ms, "
                f"{r['lag']['events']:,.0f} events); load {r['loadavg_before']} -> "
                f"{r['loadavg_after']}")
        print(line)
        top = "; ".join(f"{o['comm']}[{o['pid']}] {o['cpus']:.2f}" + (
            f" ({o['cmdline']})" if o["cmdline"] else "") for o in r["cpu"]["other_top"][:3])
        print(f"  CPUs: daemon {r['cpu']['daemon_cpus']:.2f} (busiest threads "
              f"{', '.join(f'{x:.2f}' for x in r['cpu']['daemon_threads_top'])}), loadgen "
              f"{r['cpu']['loadgen_cpus']:.2f}, clients {fmt(r['cpu']['client_cpus'], '.2f')}, "
              f"other {r['cpu']['other_cpus']:.2f}; busiest others: {top or 'none'}")
        if d:
            lat = d["latency_ms"]
            sm = r["stream_metrics"]
            print(f"  clients: connect {r['connect'].get('connect_s', 0):.2f} s, finish "
                  f"{r['finish_s']:.1f} s, {d['statuses']}; received {d['events_received']:,} "
                  f"events, lost in resets {d['lost_in_resets']:,}; server sent "
                  f"{sm['events_sent']:,.0f}, dropped {sm['dropped']}")
            print(f"  delivery ms: n {lat['n']:,}, min/p50/p90/p99/p99.9/max "
                  f"{fmt(lat['min'], '.2f')}/{fmt(lat['p50'], '.2f')}/{fmt(lat['p90'], '.2f')}/"
                  f"{fmt(lat['p99'], '.2f')}/{fmt(lat['p999'], '.1f')}/{fmt(lat['max'], '.1f')}; "
                  f"per-client ev/s min/mean/max "
                  f"{fmt(d['events_per_s_per_client_min'], ',.0f')}/"
                  f"{fmt(d['events_per_s_per_client_mean'], ',.0f')}/"
                  f"{fmt(d['events_per_s_per_client_max'], ',.0f')}; client CPU "
                  f"{d['client_cpu_s']:.1f} s")
    print("\ntargets")
    for t in targets:
        print(f"  {'PASS' if t['pass'] else 'MISS'}  {t['target']}: {t['value']}")
    for n in notes:
        print(f"note: {n}")


# -- main ---------------------------------------------------------------------------------------


def ensure_venv() -> None:
    """Re-exec under the project's venv (prometheus_client parses /metrics)."""
    if Path(sys.prefix).resolve() == (REPO / ".venv").resolve():
        return
    if not VENV_PYTHON.exists():
        raise SystemExit("stream: no .venv; run scripts/bootstrap test first")
    os.execv(str(VENV_PYTHON), [str(VENV_PYTHON), str(Path(__file__).resolve()), *sys.argv[1:]])


def client_counts(text: str) -> list[int]:
    out = [int(x) for x in text.split(",") if x.strip()]
    if any(n < 1 for n in out):
        raise argparse.ArgumentTypeError("client counts must be at least 1")
    return out


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["clients"]:
        return clients_main(argv[1:])
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=10.0, help="storm length per phase")
    ap.add_argument("--rate", type=float, default=2000.0, help="forks/s asked of loadgen")
    ap.add_argument("--flat-out", action="store_true", help="loadgen as fast as it goes")
    ap.add_argument("--workers", type=int, default=2, help="loadgen fork-exit workers")
    ap.add_argument("--clients", type=client_counts, default=[1, 10, 100],
                    help="client counts, one phase each (default 1,10,100)")
    ap.add_argument("--kinds", default="", help="?kinds= for the clients (default: all)")
    ap.add_argument("--parse", choices=("fast", "json"), default="fast",
                    help="client frame decoding (see the module docstring)")
    ap.add_argument("--finish-timeout", type=float, default=15.0,
                    help="after the storm, how long clients may take to reach END")
    ap.add_argument("--no-closing-baseline", action="store_true",
                    help="skip the second no-client phase")
    ap.add_argument("--deadline", type=float, default=175.0, help="hard bound on the run, s")
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT, help="JSON results path")
    args = ap.parse_args(argv)
    if os.geteuid() != 0:
        print("stream: needs root (the proc connector)", file=sys.stderr)
        return 2
    if not 0 < args.seconds <= 120:
        ap.error("--seconds must be in (0, 120]")
    if args.flat_out:
        args.rate = 0.0
    if args.kinds and not {"joined", "exited"} <= {k.strip() for k in args.kinds.split(",")}:
        ap.error("--kinds must include joined and exited (completeness is judged on them)")
    ensure_venv()
    signal.signal(signal.SIGTERM, on_sigterm)
    signal.signal(signal.SIGALRM, on_alarm)
    signal.alarm(math.ceil(args.deadline))
    notes: list[str] = []
    doc: dict[str, Any] = {
        "benchmark": "stream",
        "command": " ".join(shlex.quote(a) for a in [sys.executable, *sys.argv]),
        "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "kernel": platform.release(), "cpu_count": os.cpu_count(),
        "python": platform.python_version(), "git": git_describe(),
        "source_fingerprint": source_fingerprint(),
        "loadavg_start": loadavg(), "seconds": args.seconds, "rate": args.rate,
        "workers": args.workers, "clients": args.clients, "kinds": args.kinds,
        "parse": args.parse, "finish_timeout": args.finish_timeout,
        "hard_deadline_s": args.deadline,
    }
    phases: list[dict[str, Any]] = []
    rc = 0
    t_run = time.monotonic()
    tmp = Path(tempfile.mkdtemp(prefix="stream-bench-"))
    try:
        run(args, tmp, doc, phases, notes)
    except (HardDeadline, RuntimeError, OSError, TimeoutError, EOFError, ValueError, KeyError,
            subprocess.SubprocessError) as exc:
        notes.append(f"run stopped early: {exc!r}")
        print(f"stream: run stopped early: {exc!r}", file=sys.stderr)
    except (SystemExit, KeyboardInterrupt) as exc:
        rc = 130 if isinstance(exc, KeyboardInterrupt) else int(exc.code or 1)
        notes.append(f"run stopped early: {exc!r} (signal)")
    finally:
        signal.alarm(0)
        shutil.rmtree(tmp, ignore_errors=True)
    doc["run_s"] = time.monotonic() - t_run
    if source_fingerprint() != doc["source_fingerprint"]:
        notes.append("src/proctree_exporter changed during the run (the daemon loaded it at "
                     "the start)")
    doc["loadavg_end"] = loadavg()
    add_ratios(phases)
    auto_notes(phases, doc, notes)
    targets = evaluate(phases)
    doc["phases"] = phases
    doc["targets"] = targets
    doc["notes"] = notes
    print_report(doc, phases, targets, notes)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(jsonable(doc), indent=1, default=str) + "\n")
    print(f"\nwrote {args.out} ({doc['run_s']:.0f} s)")
    return rc


if __name__ == "__main__":
    sys.exit(main())
