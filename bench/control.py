"""Write API benchmark: PUT a root, kill its tree, and PUT+DELETE under load, on the real daemon.

Usage (root, a C compiler, cgroup v2 mounted)::

    .venv/bin/python bench/control.py [--quick] [--sizes 10,100,1000] [--reps 5]
        [--clients 1,4,16] [--seconds 5] [--rate 1500] [--deadline 300]

``--quick`` (sizes 10,100, 2 reps, clients 1,4, 1.5 s phases) smoke-runs the whole
thing in well under a minute.

Each group of rows (each phase of group 3) runs against its own fresh daemon
(``.venv/bin/proctree-exporter``, a subprocess; its log in a temporary file),
configured with the write API on a Unix socket and one ``host`` root (PID 1,
max_members 1000); a fresh daemon so that what one group leaves behind (the cgroup
reads a ``cgroup`` root switches on for good) does not weigh on the next. The bench
talks to the socket over HTTP/1.1, one kept-alive connection per client thread
(``UnixHTTPConnection`` below). A tree of N processes is ``bench/sleepers.c``
(compiled at run time) renamed to a unique comm, with N-1 forked children that inherit
the name and pause; a ``select: comm`` root on that name has the parent as its one
instance and the children as members.

1. PUT -> listed. For each size (and an anchor: a root whose comm matches nothing),
   ``--reps`` times: build the tree, let the collector settle (0.5 s), PUT the root and
   time from sending it to having read the whole response; count whether the response
   itself lists ``member_count == N`` (and N entries in ``members``). If it does not,
   GET the root every 5 ms until it does: ``listed`` is then that time.
2. POST kill -> last member gone. Same sizes, three ways, ``--reps`` each:
   ``signals`` (the comm root, ``grace_seconds=0``: SIGKILL per process through
   pidfds), ``cgroup.kill`` (a ``select: cgroup`` root over a cgroup made for the tree
   under the v2 mount, ``grace_seconds=0``; sleepers is moved into it by a ``sh`` that
   writes ``cgroup.procs`` and then execs it, so the daemon reads the cgroup at that
   EXEC: a process moved after its last exec is never seen to move, as no event tells)
   and ``SIGTERM`` (the comm root, the daemon's default grace; the sleepers exit on
   SIGTERM). Before the POST, the bench opens a pidfd on every process of the tree
   (checked against its start time); a watcher thread polls them: ``dead`` is when the
   last one exited (its pidfd readable: zombie or gone), ``gone`` when the last one has
   also left /proc (reaped: by sleepers, or by the bench, which is the subreaper of its
   trees, so orphans come to it rather than to init; with ``--no-subreaper`` they go to
   init, and ``gone`` includes however long init takes to reap them: on the machine
   this was written on, about 1.5 s). Both are measured from sending the POST, as is
   ``resp`` (the response read). The
   report's own ``seconds``, ``complete``, ``remaining``, ``method`` and per-process
   ``outcome`` are kept.
3. PUT+DELETE throughput. K client threads (``--clients``, default 1, 4, 16) each PUT
   and DELETE roots of their own (unique names, ``select: comm`` on a name no process
   has) for ``--seconds``; once with the machine quiet (the anchor) and once during a
   fork storm (``bench/loadgen.c fork-exit``, 2 workers paced to ``--rate`` forks/s in
   all). Each phase has a daemon of its own: a storm leaves its exited processes in the
   tree as tombstones (15,000 after 10 s at 1,500/s, all still there 50 s later), a
   PUT's scan for the new root's instances walks them all, and a phase after a storm
   would not be quiet. Reported: roots created (PUT 201) per second, PUT and DELETE
   latency p50/p99, every other status, the storm's actual forks/s, the daemon's CPU,
   its VmRSS growth and tombstones at the end, and storm over no-storm ratios.

Prints tables (machine facts first) and writes ``bench/results/control.json``. It
measures and judges nothing. Every process it starts (daemon, trees, loadgen) is ended
by pid in a ``finally`` block (the daemon: SIGTERM, SIGKILL after 5 s; a tree: EOF on
its stdin, SIGKILL to its parent after 5 s, the children die with it by
PR_SET_PDEATHSIG); every cgroup it made is emptied (cgroup.kill) and removed. A hard
deadline (SIGALRM, ``--deadline``) bounds the run.
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
import resource
import select
import shlex
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
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
    start_ticks,
)
from proctree_exporter.control_client import UnixHTTPConnection  # the CLI's own client

REPO = Path(__file__).resolve().parent.parent
EXE = REPO / ".venv" / "bin" / "proctree-exporter"
SLEEPERS_SRC = REPO / "bench" / "sleepers.c"
LOADGEN_SRC = REPO / "bench" / "loadgen.c"
DEFAULT_OUT = REPO / "bench" / "results" / "control.json"

READY_TIMEOUT_S = 60.0
DAEMON_STOP_S = 5.0  # SIGTERM, then SIGKILL after this long
HTTP_TIMEOUT_S = 30.0
TREE_READY_TIMEOUT_S = 20.0
TREE_STOP_S = 5.0
SETTLE_S = 0.5  # after a tree is built, before the PUT: the collector has caught up
LIST_POLL_S = 0.005
LIST_TIMEOUT_S = 5.0
KILL_WATCH_S = 15.0  # how long the watcher waits for the last process to go
STORM_LEAD_S = 0.5  # the storm runs this long before the clients start
STORM_WORKERS = 2
LOADGEN_GRACE_S = 20.0
DEFAULT_GRACE_LABEL = "SIGTERM"
PR_SET_CHILD_SUBREAPER = 36


# -- small helpers -------------------------------------------------------------------------


def median(values: list[float]) -> float | None:
    return statistics.median(values) if values else None


def fmt(v: float | None, spec: str = ".1f") -> str:
    """A table cell; ``-`` for none."""
    return "-" if v is None else format(v, spec)


def become_subreaper() -> bool:
    """Make orphans of the bench's trees its own children (PR_SET_CHILD_SUBREAPER), so that
    it reaps them at once instead of waiting on init."""
    libc = ctypes.CDLL(None, use_errno=True)
    return libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) == 0


def reap(pid: int) -> None:
    """waitpid(pid, WNOHANG) if it is (now) the bench's child; nothing otherwise."""
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pid, os.WNOHANG)


def host_forks() -> int:
    """Processes (and threads) created on the host since boot: /proc/stat ``processes``."""
    for line in Path("/proc/stat").read_text().splitlines():
        if line.startswith("processes "):
            return int(line.split()[1])
    return 0


def status_kib(pid: int, key: str) -> int | None:
    """A ``kB`` line of /proc/PID/status (VmRSS), or None."""
    try:
        with open(f"/proc/{pid}/status", encoding="ascii") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1])
    except (OSError, ValueError):
        pass
    return None


def compile_c(src: Path, out: Path) -> Path:
    cc = shutil.which("cc") or shutil.which("gcc")
    if cc is None:
        raise RuntimeError("no C compiler (cc) to build " + src.name)
    subprocess.run([cc, "-O2", "-o", str(out), str(src), "-lpthread"], check=True,
                   capture_output=True, timeout=120)
    return out


def cgroup2_mount() -> Path | None:
    """Where the cgroup v2 hierarchy is mounted (/proc/self/mountinfo, fstype cgroup2)."""
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        pre, sep, post = line.partition(" - ")
        if sep and post.split(" ", 1)[0] == "cgroup2":
            fields = pre.split(" ")
            if fields[3] == "/":
                return Path(fields[4])
    return None


# -- the daemon and its socket -----------------------------------------------------------------


@dataclass(slots=True)
class Reply:
    status: int
    body: bytes
    seconds: float  # request sent -> whole response read

    def doc(self) -> Any:
        return json.loads(self.body) if self.body else None


class Api:
    """One client's kept-alive connection to the write API socket."""

    def __init__(self, socket_path: str) -> None:
        self.conn = UnixHTTPConnection(socket_path, HTTP_TIMEOUT_S)
        self.reconnects = 0

    def request(self, method: str, path: str, body: Any = None) -> Reply:
        """Send and read one request; a broken kept-alive connection is reopened (counted)
        and the request sent again, once."""
        data = json.dumps(body).encode() if body is not None else None
        headers = {"Content-Type": "application/json"} if data is not None else {}
        for attempt in (0, 1):
            t0 = time.perf_counter()
            try:
                self.conn.request(method, path, body=data, headers=headers)
                resp = self.conn.getresponse()
                raw = resp.read()
            except (http.client.RemoteDisconnected, BrokenPipeError, ConnectionResetError):
                self.conn.close()
                self.reconnects += 1
                if attempt:
                    raise
                continue
            if resp.will_close:
                self.conn.close()
            return Reply(resp.status, raw, time.perf_counter() - t0)
        raise AssertionError("unreachable")

    def close(self) -> None:
        self.conn.close()


class Daemon:
    """proctree-exporter as a subprocess with the write API on a Unix socket."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.socket_path = str(workdir / "api.sock")
        config = workdir / "config.yaml"
        config.write_text(
            "api:\n  write:\n    enabled: true\n    socket: " + self.socket_path + "\n"
            "roots:\n  - {name: host, select: pid, match: 1, max_members: 1000}\n")
        self.port = free_port()
        self.log_path = workdir / "daemon.log"
        self._log = open(self.log_path, "wb")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            [str(EXE), "--config", str(config), "--web.listen-address",
             f"127.0.0.1:{self.port}"],
            stdin=subprocess.DEVNULL, stdout=self._log, stderr=subprocess.STDOUT,
            start_new_session=True)
        self.pid = self.proc.pid

    def wait_ready(self) -> float:
        """Seconds until GET /-/ready says 200; raise if it exits or takes too long."""
        t0 = time.monotonic()
        while True:
            with contextlib.suppress(OSError, http.client.HTTPException):
                conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=2.0)
                try:
                    conn.request("GET", "/-/ready")
                    resp = conn.getresponse()
                    resp.read()
                    if resp.status == 200 and os.path.exists(self.socket_path):
                        return time.monotonic() - t0
                finally:
                    conn.close()
            if self.proc.poll() is not None:
                raise RuntimeError(f"daemon exited {self.proc.returncode}: {self.log_tail()}")
            if time.monotonic() - t0 > READY_TIMEOUT_S:
                raise RuntimeError(f"daemon not ready in {READY_TIMEOUT_S:g} s")
            time.sleep(0.05)

    def metrics_text(self) -> str:
        """GET /metrics over TCP."""
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=HTTP_TIMEOUT_S)
        try:
            conn.request("GET", "/metrics")
            return conn.getresponse().read().decode(errors="replace")
        finally:
            conn.close()

    def log_tail(self, n: int = 10) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return ""

    def log_lines(self, needle: str) -> list[str]:
        try:
            return [x for x in self.log_path.read_text(errors="replace").splitlines()
                    if needle in x]
        except OSError:
            return []

    def stop(self) -> int:
        """SIGTERM, then SIGKILL after DAEMON_STOP_S; the exit status."""
        rc = self.proc.poll()
        if rc is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, signal.SIGTERM)
            try:
                rc = self.proc.wait(timeout=DAEMON_STOP_S)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(self.pid, signal.SIGKILL)
                rc = self.proc.wait()
        self._log.close()
        return rc


@contextlib.contextmanager
def running_daemon(tmp: Path, label: str, notes: list[str]) -> Iterator[Daemon]:
    workdir = tmp / label
    workdir.mkdir()
    d = Daemon(workdir)
    try:
        ready = d.wait_ready()
        print(f"control: [{label}] daemon {d.pid} ready in {ready:.2f} s", file=sys.stderr,
              flush=True)
        yield d
    finally:
        rc = d.stop()
        if rc not in (0, -signal.SIGTERM):
            notes.append(f"[{label}] daemon exited {rc}: {d.log_tail(3)}")
        warnings = [x for x in d.log_lines("level=") if "level=WARNING" in x
                    or "level=ERROR" in x]
        if warnings:
            notes.append(f"[{label}] daemon logged {len(warnings)} warning/error lines, "
                         f"e.g. {warnings[0][:300]}")


# -- trees of sleepers ---------------------------------------------------------------------------


class Tree:
    """N processes: sleepers renamed ``name`` and its N-1 children, optionally started in
    cgroup ``cgroup_dir`` (sh writes cgroup.procs, then execs sleepers)."""

    def __init__(self, binary: Path, name: str, n: int, cgroup_dir: Path | None = None) -> None:
        self.name = name
        self.n = n
        argv = [str(binary), name, str(n - 1)]
        if cgroup_dir is not None:
            argv = ["/bin/sh", "-c", 'echo 0 > "$0" && exec "$@"',
                    str(cgroup_dir / "cgroup.procs"), *argv]
        self.proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE, start_new_session=True)
        self.identities: list[tuple[int, int]] = []

    def wait_ready(self) -> None:
        """Until sleepers says ``ready``; then list the tree's (pid, start ticks)."""
        assert self.proc.stdout is not None
        ready, _, _ = select.select([self.proc.stdout], [], [], TREE_READY_TIMEOUT_S)
        line = self.proc.stdout.readline().decode(errors="replace").strip() if ready else ""
        if not line.startswith("ready"):
            err = b""
            if self.proc.poll() is not None and self.proc.stderr is not None:
                err = self.proc.stderr.read()
            raise RuntimeError(f"tree {self.name} of {self.n}: {line or 'no ready line'} "
                               f"{err.decode(errors='replace').strip()}")
        pid = self.proc.pid
        kids = [int(p) for p in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
        if len(kids) != self.n - 1:
            raise RuntimeError(f"tree {self.name}: {len(kids)} children, not {self.n - 1}")
        for p in (pid, *kids):
            st = start_ticks(p)
            if st is None:
                raise RuntimeError(f"tree {self.name}: pid {p} gone before the test")
            self.identities.append((p, st))

    def stop(self) -> None:
        """EOF on stdin (sleepers kills and reaps its children), SIGKILL after TREE_STOP_S
        (its children die by PDEATHSIG); then wait until they have left /proc."""
        if self.proc.poll() is None:
            with contextlib.suppress(OSError):
                assert self.proc.stdin is not None
                self.proc.stdin.close()
            try:
                self.proc.wait(timeout=TREE_STOP_S)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        for stream in (self.proc.stdin, self.proc.stdout, self.proc.stderr):
            if stream is not None:
                with contextlib.suppress(OSError):
                    stream.close()
        deadline = time.monotonic() + TREE_STOP_S
        left = list(self.identities)
        while left and time.monotonic() < deadline:
            for p, _ in left[1:]:  # orphans, if sleepers died first (the bench is subreaper)
                reap(p)
            left = [(p, st) for p, st in left if start_ticks(p) == st]
            if left:
                time.sleep(0.01)


class Cgroup:
    """A cgroup v2 directory made for one tree; emptied (cgroup.kill) and removed at the end."""

    def __init__(self, mount: Path, name: str) -> None:
        self.path = mount / name
        self.inside = "/" + name  # as /proc/PID/cgroup and a cgroup root's match name it
        self.path.mkdir()

    def remove(self) -> str | None:
        """rmdir once empty (cgroup.kill first if anything is left); None, or why not."""
        if not self.path.exists():
            return None
        deadline = time.monotonic() + TREE_STOP_S
        killed = False
        while True:
            try:
                self.path.rmdir()
                return None
            except OSError as exc:
                if time.monotonic() > deadline:
                    return f"rmdir {self.path}: {exc.strerror}"
                if not killed:
                    with contextlib.suppress(OSError):
                        (self.path / "cgroup.kill").write_text("1")
                    killed = True
                time.sleep(0.02)


@contextlib.contextmanager
def tree(binary: Path, name: str, n: int, cg: Cgroup | None = None) -> Iterator[Tree]:
    t = Tree(binary, name, n, cg.path if cg is not None else None)
    try:
        t.wait_ready()
        yield t
    finally:
        t.stop()


def unique(prefix: str) -> str:
    """A name of at most 15 characters (a comm), unique to this run."""
    return (prefix + uuid.uuid4().hex)[:15]


# -- 1. PUT -> listed -------------------------------------------------------------------------


def put_rows(d: Daemon, sleepers: Path, sizes: list[int], reps: int) -> list[dict[str, Any]]:
    api = Api(d.socket_path)
    rows = []
    try:
        for n in [0, *sizes]:
            runs = []
            for _ in range(reps):
                name = unique("ptxp")
                body = {"select": "comm", "match": name}
                if n == 0:
                    runs.append(put_once(api, name, body, 0))
                else:
                    with tree(sleepers, name, n):
                        time.sleep(SETTLE_S)
                        runs.append(put_once(api, name, body, n))
            rows.append(summarise_puts(n, runs))
            print(f"control: PUT n={n} done", file=sys.stderr, flush=True)
    finally:
        api.close()
    return rows


def put_once(api: Api, name: str, body: dict[str, Any], n: int) -> dict[str, Any]:
    path = f"/api/v1/roots/{name}"
    t0 = time.perf_counter()
    r = api.request("PUT", path, body)
    doc = r.doc() or {}
    out = {"status": r.status, "put_ms": r.seconds * 1e3, "bytes": len(r.body),
           "member_count": doc.get("member_count"), "members": len(doc.get("members") or []),
           "error": doc.get("error")}
    out["in_response"] = out["member_count"] == n and out["members"] == n
    listed = r.seconds if out["in_response"] else None
    polls = 0
    while listed is None and r.status in (200, 201) and time.perf_counter() - t0 < LIST_TIMEOUT_S:
        time.sleep(LIST_POLL_S)
        g = api.request("GET", path)
        polls += 1
        gd = g.doc() or {}
        if g.status == 200 and gd.get("member_count") == n:
            listed = time.perf_counter() - t0
    out["listed_ms"] = listed * 1e3 if listed is not None else None
    out["get_polls"] = polls
    dr = api.request("DELETE", path)
    out["delete_status"] = dr.status
    out["delete_ms"] = dr.seconds * 1e3
    return out


def summarise_puts(n: int, runs: list[dict[str, Any]]) -> dict[str, Any]:
    put = [r["put_ms"] for r in runs if r["status"] in (200, 201)]
    listed = [r["listed_ms"] for r in runs if r["listed_ms"] is not None]
    return {
        "n": n, "reps": len(runs),
        "statuses": dict(Counter(str(r["status"]) for r in runs)),
        "put_ms_median": median(put), "put_ms_max": max(put, default=None),
        "in_response": sum(r["in_response"] for r in runs),
        "listed": len(listed),
        "listed_ms_median": median(listed), "listed_ms_max": max(listed, default=None),
        "bytes_median": median([r["bytes"] for r in runs]),
        "delete_ms_median": median([r["delete_ms"] for r in runs]),
        "member_counts": sorted({r["member_count"] for r in runs if r["member_count"] is not None}),
        "runs": runs,
    }


# -- 2. POST kill -> last member gone --------------------------------------------------------------


class Watcher(threading.Thread):
    """Times the end of every process of a tree: pidfds polled for exit (``dead``), then
    /proc for the pid to go (``gone``: reaped). ``parent`` is the bench's own child
    (sleepers), which only the bench can reap: it is waited for here."""

    def __init__(self, identities: list[tuple[int, int]], parent: subprocess.Popen[bytes],
                 timeout: float = KILL_WATCH_S) -> None:
        super().__init__(name="kill-watcher", daemon=True)
        self.parent = parent
        self.timeout = timeout
        self.fds: dict[int, tuple[int, int]] = {}  # pidfd -> identity
        self.missing = 0  # already gone, or a different process, when the pidfd was opened
        for pid, st in identities:
            try:
                fd = os.pidfd_open(pid)
            except ProcessLookupError:
                self.missing += 1
                continue
            if start_ticks(pid) != st:  # the pid is someone else's now
                os.close(fd)
                self.missing += 1
                continue
            self.fds[fd] = (pid, st)
        self.dead_at: dict[tuple[int, int], float] = {}
        self.gone_at: dict[tuple[int, int], float] = {}

    def run(self) -> None:
        poller = select.poll()
        for fd in self.fds:
            poller.register(fd, select.POLLIN)
        alive = dict(self.fds)
        unreaped: set[tuple[int, int]] = set()
        deadline = time.monotonic() + self.timeout
        try:
            while (alive or unreaped) and time.monotonic() < deadline:
                events = poller.poll(1 if unreaped else 20)
                now = time.monotonic()
                for fd, _ in events:
                    ident = alive.pop(fd, None)
                    if ident is not None:
                        self.dead_at[ident] = now
                        unreaped.add(ident)
                        poller.unregister(fd)
                if unreaped:
                    for ident in list(unreaped):
                        if ident[0] == self.parent.pid:
                            self.parent.poll()  # sleepers: the bench's own child
                        else:
                            reap(ident[0])  # an orphan the bench (subreaper) inherited
                        if start_ticks(ident[0]) != ident[1]:
                            self.gone_at[ident] = now
                            unreaped.discard(ident)
        finally:
            for fd in self.fds:
                with contextlib.suppress(OSError):
                    os.close(fd)


KILL_VARIANTS = (  # label, root kind, grace_seconds query (None: the daemon's default)
    ("signals", "comm", 0.0),
    ("cgroup.kill", "cgroup", 0.0),
    (DEFAULT_GRACE_LABEL, "comm", None),
)


def kill_rows(d: Daemon, sleepers: Path, sizes: list[int], reps: int,
              cg_mount: Path | None, notes: list[str]) -> list[dict[str, Any]]:
    api = Api(d.socket_path)
    rows = []
    try:
        for n in sizes:
            for label, kind, grace in KILL_VARIANTS:
                if kind == "cgroup" and cg_mount is None:
                    notes.append("no cgroup v2 mount: cgroup.kill rows skipped")
                    continue
                runs = [kill_once(api, sleepers, n, kind, grace, cg_mount, notes)
                        for _ in range(reps)]
                rows.append(summarise_kills(n, label, grace, runs))
                print(f"control: kill n={n} {label} done", file=sys.stderr, flush=True)
    finally:
        api.close()
    return rows


def kill_once(api: Api, sleepers: Path, n: int, kind: str, grace: float | None,
              cg_mount: Path | None, notes: list[str]) -> dict[str, Any]:
    name = unique("ptxk")
    cg = Cgroup(cg_mount, f"ptxbench-{name}") if kind == "cgroup" and cg_mount else None
    path = f"/api/v1/roots/{name}"
    out: dict[str, Any] = {}
    try:
        with tree(sleepers, name, n, cg) as t:
            time.sleep(SETTLE_S)
            body = ({"select": "cgroup", "match": cg.inside} if cg is not None
                    else {"select": "comm", "match": name})
            r = api.request("PUT", path, body)
            doc = r.doc() or {}
            out.update(put_status=r.status, put_ms=r.seconds * 1e3,
                       member_count=doc.get("member_count"))
            if r.status not in (200, 201):
                out["error"] = doc.get("error")
                return out
            watcher = Watcher(t.identities, t.proc)
            watcher.start()
            query = f"?grace_seconds={grace:g}" if grace is not None else ""
            t_send = time.monotonic()
            k = api.request("POST", f"{path}/kill{query}")
            t_resp = time.monotonic()
            watcher.join(KILL_WATCH_S + 5)
            rep = k.doc() or {}
            watched = len(watcher.fds)
            out.update(
                kill_status=k.status, resp_ms=(t_resp - t_send) * 1e3,
                report_s=rep.get("seconds"), method=rep.get("method"),
                complete=rep.get("complete"), remaining=rep.get("remaining"),
                reported=len(rep.get("processes") or []),
                outcomes=dict(Counter(p.get("outcome") for p in rep.get("processes") or [])),
                signals=dict(Counter("+".join(p.get("signals") or []) or "none"
                                     for p in rep.get("processes") or [])),
                error=rep.get("error"), watched=watched, missing=watcher.missing,
                dead=len(watcher.dead_at), gone=len(watcher.gone_at),
                dead_ms=((max(watcher.dead_at.values()) - t_send) * 1e3
                         if watcher.dead_at and len(watcher.dead_at) == watched else None),
                gone_ms=((max(watcher.gone_at.values()) - t_send) * 1e3
                         if watcher.gone_at and len(watcher.gone_at) == watched else None),
                first_dead_ms=((min(watcher.dead_at.values()) - t_send) * 1e3
                               if watcher.dead_at else None),
                parent_gone_ms=(None if t.identities[0] not in watcher.gone_at
                                else (watcher.gone_at[t.identities[0]] - t_send) * 1e3),
                children_gone_ms=(max((v for k, v in watcher.gone_at.items()
                                       if k != t.identities[0]), default=t_send) - t_send)
                * 1e3 if len(watcher.gone_at) == watched else None)
            dr = api.request("DELETE", path)
            out["delete_status"] = dr.status
    finally:
        if cg is not None:
            why = cg.remove()
            if why:
                notes.append(why)
    return out


def summarise_kills(n: int, label: str, grace: float | None,
                    runs: list[dict[str, Any]]) -> dict[str, Any]:
    ok = [r for r in runs if r.get("kill_status") == 200]

    def col(key: str) -> list[float]:
        return [r[key] for r in ok if r.get(key) is not None]

    outcomes: Counter[str] = Counter()
    for r in ok:
        outcomes.update(r["outcomes"])
    return {
        "n": n, "variant": label, "grace_seconds": grace, "reps": len(runs),
        "put_statuses": dict(Counter(str(r.get("put_status")) for r in runs)),
        "kill_statuses": dict(Counter(str(r.get("kill_status")) for r in runs)),
        "methods": dict(Counter(str(r.get("method")) for r in ok)),
        "complete": sum(1 for r in ok if r.get("complete")),
        "listed_n": sum(1 for r in runs if r.get("member_count") == n),
        "reported_n": sum(1 for r in ok if r.get("reported") == n),
        "all_dead": sum(1 for r in ok if r.get("dead_ms") is not None),
        "all_gone": sum(1 for r in ok if r.get("gone_ms") is not None),
        "resp_ms_median": median(col("resp_ms")), "resp_ms_max": max(col("resp_ms"), default=None),
        "dead_ms_median": median(col("dead_ms")), "dead_ms_max": max(col("dead_ms"), default=None),
        "gone_ms_median": median(col("gone_ms")), "gone_ms_max": max(col("gone_ms"), default=None),
        "first_dead_ms_median": median(col("first_dead_ms")),
        "parent_gone_ms_median": median(col("parent_gone_ms")),
        "children_gone_ms_median": median(col("children_gone_ms")),
        "report_ms_median": (median(col("report_s")) or 0) * 1e3 if col("report_s") else None,
        "put_ms_median": median([r["put_ms"] for r in runs if "put_ms" in r]),
        "outcomes": dict(outcomes),
        "runs": runs,
    }


# -- 3. PUT+DELETE throughput --------------------------------------------------------------------


@dataclass
class ClientResult:
    put_ms: list[float] = field(default_factory=list)
    delete_ms: list[float] = field(default_factory=list)
    statuses: Counter[str] = field(default_factory=Counter)  # "PUT 201", "DELETE 200", ...
    created: int = 0
    errors: list[str] = field(default_factory=list)
    reconnects: int = 0


def client_loop(socket_path: str, tag: str, start: threading.Barrier, stop: threading.Event,
                res: ClientResult) -> None:
    api = Api(socket_path)
    i = 0
    try:
        start.wait(timeout=30)
        while not stop.is_set():
            name = f"{tag}-{i}"
            i += 1
            path = f"/api/v1/roots/{name}"
            try:
                r = api.request("PUT", path, {"select": "comm", "match": f"ptxnone{tag}x{i}"})
                res.statuses[f"PUT {r.status}"] += 1
                if r.status == 201:
                    res.created += 1
                    res.put_ms.append(r.seconds * 1e3)
                elif len(res.errors) < 3:
                    res.errors.append(f"PUT {r.status} {r.body[:200]!r}")
                if r.status in (200, 201):
                    dr = api.request("DELETE", path)
                    res.statuses[f"DELETE {dr.status}"] += 1
                    if dr.status == 200:
                        res.delete_ms.append(dr.seconds * 1e3)
                    elif len(res.errors) < 3:
                        res.errors.append(f"DELETE {dr.status} {dr.body[:200]!r}")
            except (OSError, http.client.HTTPException) as exc:
                res.statuses[f"error {type(exc).__name__}"] += 1
                if len(res.errors) < 3:
                    res.errors.append(repr(exc))
                api.close()
                time.sleep(0.01)
    except threading.BrokenBarrierError:
        res.errors.append("start barrier broken")
    finally:
        res.reconnects = api.reconnects
        api.close()


def throughput_phase(d: Daemon, clients: int, seconds: float, storm: bool, loadgen: Path | None,
                     rate: float, tmp: Path, phase_no: int) -> dict[str, Any]:
    results = [ClientResult() for _ in range(clients)]
    start = threading.Barrier(clients + 1)
    stop = threading.Event()
    threads = [threading.Thread(target=client_loop, name=f"client-{k}", daemon=True,
                                args=(d.socket_path, f"w{phase_no}c{k}", start, stop, results[k]))
               for k in range(clients)]
    storm_proc: subprocess.Popen[str] | None = None
    report: dict[str, Any] | None = None
    out: dict[str, Any] = {"clients": clients, "storm": storm}
    try:
        if storm:
            assert loadgen is not None
            outdir = tmp / f"storm-{phase_no}"
            outdir.mkdir()
            storm_proc = subprocess.Popen(
                [str(loadgen), "fork-exit", str(STORM_WORKERS),
                 f"{seconds + 2 * STORM_LEAD_S:g}", str(outdir), f"{rate:g}"],
                stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                text=True, start_new_session=True)
            time.sleep(STORM_LEAD_S)
        for th in threads:
            th.start()
        cpu0 = process_cpu_seconds(d.pid)
        ru0 = resource.getrusage(resource.RUSAGE_SELF)
        start.wait(timeout=30)
        t0 = time.monotonic()
        forks0 = host_forks()
        time.sleep(seconds)
        stop.set()
        for th in threads:
            th.join(HTTP_TIMEOUT_S + 5)
        elapsed = time.monotonic() - t0
        host_forks_per_s = (host_forks() - forks0) / elapsed
        cpu1 = process_cpu_seconds(d.pid)
        ru1 = resource.getrusage(resource.RUSAGE_SELF)
        if storm_proc is not None:
            stdout, stderr = storm_proc.communicate(timeout=seconds + LOADGEN_GRACE_S)
            if storm_proc.returncode != 0:
                raise RuntimeError(f"loadgen exited {storm_proc.returncode}: {stderr.strip()}")
            report = json.loads(stdout)
    finally:
        stop.set()
        start.abort()  # clients still at the barrier (the run broke before it) go
        if storm_proc is not None and storm_proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(storm_proc.pid, signal.SIGKILL)  # its workers die by PDEATHSIG
            storm_proc.wait()
    put = [x for r in results for x in r.put_ms]
    dele = [x for r in results for x in r.delete_ms]
    statuses: Counter[str] = Counter()
    for r in results:
        statuses.update(r.statuses)
    out.update(
        seconds=elapsed, created=sum(r.created for r in results),
        created_per_s=sum(r.created for r in results) / elapsed,
        put_p50_ms=percentile(put, 0.5), put_p99_ms=percentile(put, 0.99),
        put_max_ms=max(put, default=None),
        delete_p50_ms=percentile(dele, 0.5), delete_p99_ms=percentile(dele, 0.99),
        statuses=dict(statuses), errors=[e for r in results for e in r.errors][:5],
        reconnects=sum(r.reconnects for r in results),
        per_client_created=[r.created for r in results],
        daemon_cpus=((cpu1 - cpu0) / elapsed if cpu0 is not None and cpu1 is not None
                     else None),
        bench_cpus=((ru1.ru_utime + ru1.ru_stime - ru0.ru_utime - ru0.ru_stime) / elapsed),
        host_forks_per_s=host_forks_per_s, loadavg=loadavg())
    if report is not None:
        out["forks_per_s"] = report["created"] / report["elapsed_s"]
        out["storm_failed"] = report["failed"]
    return out


def throughput_rows(loadgen: Path, client_counts: list[int], seconds: float, rate: float,
                    tmp: Path, notes: list[str]) -> list[dict[str, Any]]:
    """A fresh daemon per phase: a storm leaves thousands of tombstones in the tree (and
    every PUT's scan walks them), so a phase after a storm would not be quiet."""
    rows = []
    phase_no = 0
    for k in client_counts:
        pair = {}
        for storm in (False, True):
            phase_no += 1
            with running_daemon(tmp, f"throughput-{phase_no}", notes) as d:
                rss0 = status_kib(d.pid, "VmRSS")
                pair[storm] = throughput_phase(d, k, seconds, storm, loadgen, rate, tmp,
                                               phase_no)
                rss1 = status_kib(d.pid, "VmRSS")
                pair[storm]["rss_growth_mib"] = ((rss1 - rss0) / 1024 if rss0 and rss1
                                                 else None)
                pair[storm].update(tree_gauges(d))
            rows.append(pair[storm])
            print(f"control: throughput K={k} storm={storm} done", file=sys.stderr, flush=True)
        quiet, loud = pair[False], pair[True]
        if quiet["created_per_s"]:
            loud["created_ratio"] = loud["created_per_s"] / quiet["created_per_s"]
        if quiet["put_p99_ms"] and loud["put_p99_ms"] is not None:
            loud["p99_ratio"] = loud["put_p99_ms"] / quiet["put_p99_ms"]
        if quiet["put_p50_ms"] and loud["put_p50_ms"] is not None:
            loud["p50_ratio"] = loud["put_p50_ms"] / quiet["put_p50_ms"]
    return rows


def tree_gauges(d: Daemon) -> dict[str, float | None]:
    """The daemon's tree size now: proctree_tree_nodes and proctree_tree_tombstones."""
    out: dict[str, float | None] = {"tree_nodes": None, "tree_tombstones": None}
    with contextlib.suppress(OSError, http.client.HTTPException, ValueError):
        for line in d.metrics_text().splitlines():
            name, _, value = line.partition(" ")
            if name in ("proctree_tree_nodes", "proctree_tree_tombstones"):
                out[name.removeprefix("proctree_")] = float(value)
    return out


# -- output ----------------------------------------------------------------------------------


def print_table(title: str, cols: list[tuple[str, int, Any]], rows: list[dict[str, Any]],
                legend: list[str]) -> None:
    print()
    print(title)
    print(" ".join(f"{n:>{w}}" for n, w, _ in cols))
    for r in rows:
        print(" ".join(f"{get(r):>{w}}" for _, w, get in cols))
    for line in legend:
        print(line)


def print_report(doc: dict[str, Any]) -> None:
    print()
    print(f"control: write API bench; {doc['cpu_count']} CPUs (nproc), kernel {doc['kernel']}, "
          f"Python {doc['python']}, git {doc['git']}, src {doc['source_fingerprint']}")
    print(f"command: {doc['command']}")
    print(f"load {doc['loadavg_start']} -> {doc.get('loadavg_end', '?')}; run "
          f"{doc.get('run_s', 0):.0f} s; reps {doc['reps']}; bench is "
          f"{'' if doc['subreaper'] else 'not '}the subreaper of its trees")
    if doc.get("put"):
        print_table("1. PUT -> members listed (tree of N existing processes, select: comm)", [
            ("N", 6, lambda r: f"{r['n']:,}" if r["n"] else "none"),
            ("status", 10, lambda r: ",".join(f"{k}x{v}" for k, v in r["statuses"].items())),
            ("PUT med", 8, lambda r: fmt(r["put_ms_median"])),
            ("PUT max", 8, lambda r: fmt(r["put_ms_max"])),
            ("all N in resp", 13, lambda r: f"{r['in_response']}/{r['reps']}"),
            ("listed med", 10, lambda r: fmt(r["listed_ms_median"])),
            ("listed max", 10, lambda r: fmt(r["listed_ms_max"])),
            ("resp KiB", 8, lambda r: fmt(r["bytes_median"] / 1024 if r["bytes_median"] else 0)),
            ("DEL med", 8, lambda r: fmt(r["delete_ms_median"])),
            ("counts", 10, lambda r: ",".join(map(str, r["member_counts"]))),
        ], doc["put"], [
            "ms from sending the PUT to its whole response read; N=none: a comm nothing has "
            "(the anchor);",
            "all N in resp: PUTs whose own response had member_count == N and N members; "
            "listed: until a response (PUT, or GET",
            "  polled every 5 ms after it) listed all N; DEL: the DELETE after, ms; "
            "counts: member_count values seen in the PUT responses"])
    if doc.get("kill"):
        print_table("2. POST kill -> every process gone (same trees; ms from sending the POST)", [
            ("N", 6, lambda r: f"{r['n']:,}"),
            ("variant", 11, lambda r: r["variant"]),
            ("grace", 5, lambda r: "dflt" if r["grace_seconds"] is None
             else f"{r['grace_seconds']:g}"),
            ("resp med", 8, lambda r: fmt(r["resp_ms_median"])),
            ("resp max", 8, lambda r: fmt(r["resp_ms_max"])),
            ("dead med", 8, lambda r: fmt(r["dead_ms_median"])),
            ("dead max", 8, lambda r: fmt(r["dead_ms_max"])),
            ("gone med", 8, lambda r: fmt(r["gone_ms_median"])),
            ("gone max", 8, lambda r: fmt(r["gone_ms_max"])),
            ("rep.s med", 9, lambda r: fmt(r["report_ms_median"])),
            ("complete", 8, lambda r: f"{r['complete']}/{r['reps']}"),
            ("method", 14, lambda r: ",".join(f"{k}x{v}" for k, v in r["methods"].items())),
            ("PUT med", 8, lambda r: fmt(r["put_ms_median"])),
        ], doc["kill"], [
            "resp: POST sent -> kill report read; dead: -> the last process exited (pidfd "
            "readable); gone: -> the last one left /proc (reaped);",
            "rep.s: the report's own \"seconds\" (ms); complete: reports with complete true "
            "(remaining 0); method: the report's;",
            "variant signals/cgroup.kill: grace_seconds=0; SIGTERM: the default grace "
            "(api.write.kill_grace_seconds, 5 s), the processes exit on SIGTERM;",
            "PUT: the root's PUT before the kill (a cgroup root's first PUT switches on "
            "cgroup reads)"])
        for r in doc["kill"]:
            extra = (f"outcomes {r['outcomes']}; all N listed at PUT {r['listed_n']}/{r['reps']}, "
                     f"in report {r['reported_n']}/{r['reps']}; med ms: first dead "
                     f"{fmt(r['first_dead_ms_median'])}, sleepers gone (reaped by the bench) "
                     f"{fmt(r['parent_gone_ms_median'])}, its children gone "
                     f"{fmt(r['children_gone_ms_median'])}")
            print(f"  [{r['n']:,} {r['variant']}] {extra}")
    if doc.get("throughput"):
        rate = doc["rate"]
        print_table(f"3. PUT+DELETE throughput, {doc['seconds']:g} s per phase, storm: loadgen "
                    f"fork-exit x{STORM_WORKERS} paced to {rate:,.0f}/s", [
                        ("K", 3, lambda r: str(r["clients"])),
                        ("storm", 5, lambda r: "yes" if r["storm"] else "no"),
                        ("forks/s", 7, lambda r: fmt(r.get("forks_per_s"), ",.0f")),
                        ("host", 6, lambda r: fmt(r.get("host_forks_per_s"), ",.0f")),
                        ("roots/s", 8, lambda r: fmt(r["created_per_s"], ",.1f")),
                        ("x quiet", 7, lambda r: fmt(r.get("created_ratio"), ".2f")),
                        ("PUT p50", 8, lambda r: fmt(r["put_p50_ms"])),
                        ("PUT p99", 8, lambda r: fmt(r["put_p99_ms"])),
                        ("x quiet", 7, lambda r: fmt(r.get("p99_ratio"), ".2f")),
                        ("PUT max", 8, lambda r: fmt(r["put_max_ms"])),
                        ("DEL p50", 8, lambda r: fmt(r["delete_p50_ms"])),
                        ("DEL p99", 8, lambda r: fmt(r["delete_p99_ms"])),
                        ("daemon", 6, lambda r: fmt(r["daemon_cpus"], ".2f")),
                        ("RSS+MiB", 7, lambda r: fmt(r.get("rss_growth_mib"))),
                        ("tombst", 6, lambda r: fmt(r.get("tree_tombstones"), ".0f")),
                        ("bench", 6, lambda r: fmt(r["bench_cpus"], ".2f")),
                        ("other statuses", 14, lambda r: ",".join(
                            f"{k}x{v}" for k, v in r["statuses"].items()
                            if k not in ("PUT 201", "DELETE 200")) or "none"),
                    ], doc["throughput"], [
                        "forks/s: the storm's (loadgen's report, whole run); host: every "
                        "process and thread created on the host per s while the clients ran "
                        "(/proc/stat),",
                        "  storm included: more than the storm is someone else's work;",
                        "K client threads, each PUT then DELETE of its own roots (select: "
                        "comm, no match); roots/s: PUT 201s per second;",
                        "x quiet: storm over the no-storm phase of the same K (roots/s; PUT "
                        "p99); latencies ms; daemon, bench: CPUs used;",
                        "a fresh daemon per phase; RSS+MiB: its VmRSS growth over the phase; "
                        "tombst: proctree_tree_tombstones at the phase's end"])
    for n in doc["notes"]:
        print(f"note: {n}")


# -- main --------------------------------------------------------------------------------------


def int_list(text: str) -> list[int]:
    out = [int(x) for x in text.split(",") if x.strip()]
    if any(n < 1 for n in out):
        raise argparse.ArgumentTypeError("values must be at least 1")
    return out


def run(args: argparse.Namespace, tmp: Path, doc: dict[str, Any]) -> None:
    notes: list[str] = doc["notes"]
    sleepers = compile_c(SLEEPERS_SRC, tmp / "ptxsleepers")
    loadgen = compile_c(LOADGEN_SRC, tmp / "loadgen")
    cg_mount = cgroup2_mount()
    doc["cgroup2_mount"] = str(cg_mount) if cg_mount else None
    if "put" in args.groups:
        with running_daemon(tmp, "put", notes) as d:
            doc["put"] = put_rows(d, sleepers, args.sizes, args.reps)
    if "kill" in args.groups:
        with running_daemon(tmp, "kill", notes) as d:
            doc["kill"] = kill_rows(d, sleepers, args.sizes, args.reps, cg_mount, notes)
    if "throughput" in args.groups:
        doc["throughput"] = throughput_rows(loadgen, args.clients, args.seconds, args.rate,
                                            tmp, notes)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true",
                    help="smoke run: sizes 10,100, 2 reps, clients 1,4, 1.5 s phases")
    ap.add_argument("--sizes", type=int_list, default=None, help="tree sizes (10,100,1000)")
    ap.add_argument("--reps", type=int, default=None, help="repetitions per size (5)")
    ap.add_argument("--clients", type=int_list, default=None, help="client threads (1,4,16)")
    ap.add_argument("--seconds", type=float, default=None, help="per throughput phase (5)")
    ap.add_argument("--rate", type=float, default=1500.0, help="storm forks/s (paced)")
    ap.add_argument("--groups", default="put,kill,throughput", help="which row groups to run")
    ap.add_argument("--deadline", type=float, default=None, help="hard bound, s (300; quick 90)")
    ap.add_argument("--no-subreaper", action="store_true",
                    help="leave orphans to init (gone then includes init's reaping)")
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT, help="JSON results path")
    args = ap.parse_args(argv)
    q = args.quick
    args.sizes = args.sizes or ([10, 100] if q else [10, 100, 1000])
    args.reps = args.reps or (2 if q else 5)
    args.clients = args.clients or ([1, 4] if q else [1, 4, 16])
    args.seconds = args.seconds or (1.5 if q else 5.0)
    args.deadline = args.deadline or (90.0 if q else 300.0)
    args.groups = {g.strip() for g in args.groups.split(",")}
    if os.geteuid() != 0:
        print("control: needs root (the proc connector, cgroups, signals)", file=sys.stderr)
        return 2
    if not EXE.exists():
        print(f"control: no {EXE}; run scripts/bootstrap first", file=sys.stderr)
        return 2
    if not 0 < args.seconds <= 60:
        ap.error("--seconds must be in (0, 60]")
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    need = max(args.sizes) + 256  # a pidfd per process of the largest tree
    if soft != resource.RLIM_INFINITY and soft < need:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(need, hard), hard))
    subreaper = not args.no_subreaper and become_subreaper()
    signal.signal(signal.SIGTERM, on_sigterm)
    signal.signal(signal.SIGALRM, on_alarm)
    signal.alarm(math.ceil(args.deadline))
    doc: dict[str, Any] = {
        "benchmark": "control",
        "command": " ".join(shlex.quote(a) for a in [sys.executable, *sys.argv]),
        "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "kernel": platform.release(), "cpu_count": os.cpu_count(),
        "python": platform.python_version(), "git": git_describe(),
        "source_fingerprint": source_fingerprint(), "loadavg_start": loadavg(),
        "sizes": args.sizes, "reps": args.reps, "clients": args.clients,
        "seconds": args.seconds, "rate": args.rate, "quick": q, "subreaper": subreaper,
        "notes": [],
    }
    rc = 0
    t_run = time.monotonic()
    tmp = Path(tempfile.mkdtemp(prefix="control-bench-"))
    try:
        run(args, tmp, doc)
    except (HardDeadline, RuntimeError, OSError, ValueError, KeyError, AssertionError,
            http.client.HTTPException, subprocess.SubprocessError,
            threading.BrokenBarrierError) as exc:
        doc["notes"].append(f"run stopped early: {exc!r}")
        print(f"control: run stopped early: {exc!r}", file=sys.stderr)
        rc = 1
    except (SystemExit, KeyboardInterrupt) as exc:
        rc = 130 if isinstance(exc, KeyboardInterrupt) else int(exc.code or 1)
        doc["notes"].append(f"run stopped early: {exc!r} (signal)")
    finally:
        signal.alarm(0)
        shutil.rmtree(tmp, ignore_errors=True)
    doc["run_s"] = time.monotonic() - t_run
    doc["loadavg_end"] = loadavg()
    if source_fingerprint() != doc["source_fingerprint"]:
        doc["notes"].append("src/proctree_exporter changed during the run (each daemon "
                            "loaded it when it started)")
    print_report(doc)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(doc, indent=1, default=str) + "\n")
    print(f"\nwrote {args.out} ({doc['run_s']:.0f} s)")
    return rc


if __name__ == "__main__":
    sys.exit(main())
