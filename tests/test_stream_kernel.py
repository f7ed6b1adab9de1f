"""/api/v1/events on the real daemon: real process storms, real sockets, real resumes."""

from __future__ import annotations

import base64
import json
import selectors
import socket
import ssl
import subprocess
import time
from pathlib import Path

import bcrypt
import pytest

from .conftest import REPO, Janitor, read_lines, wait_for
from .daemon_helpers import Running, start_daemon, value
from .test_web_config import Pki, pki  # noqa: F401 - the certificate fixture

pytestmark = pytest.mark.kernel

# forks N children that exit at once, when told; prints its pid first, "done" after
STORM = """
import os, sys
print(os.getpid(), flush=True)
for line in sys.stdin:
    n = int(line)
    for _ in range(n):
        pid = os.fork()
        if pid == 0:
            os._exit(0)
        os.waitpid(pid, 0)
    print("done", flush=True)
"""


class Stream:
    """A minimal SSE client on a raw socket: frames as dicts (id, event, data)."""

    def __init__(self, port: int, query: str, headers: dict[str, str] | None = None,
                 rcvbuf: int | None = None, ctx: ssl.SSLContext | None = None) -> None:
        sock = socket.socket()
        if rcvbuf is not None:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        sock.settimeout(10)
        sock.connect(("127.0.0.1", port))
        if ctx is not None:
            sock = ctx.wrap_socket(sock, server_hostname="localhost")
        self.sock = sock
        extra = "".join(f"{k}: {v}\r\n" for k, v in (headers or {}).items())
        # one request: an error answer (404, 400) ends the connection, as a stream's end does
        sock.sendall(f"GET /api/v1/events{query} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
                     f"{extra}\r\n".encode())
        self.buf = b""
        self.last_id: str | None = None  # as a browser keeps it: id-only frames count
        self.eof = False
        self.status = 0
        self.head = b""

    def read_head(self) -> int:
        while b"\r\n\r\n" not in self.buf:
            self._recv()
            assert not self.eof or b"\r\n\r\n" in self.buf, self.buf[:200]
        self.head, self.buf = self.buf.split(b"\r\n\r\n", 1)
        self.status = int(self.head.split(b" ", 2)[1])
        return self.status

    def _recv(self) -> None:
        chunk = self.sock.recv(65536)
        if not chunk:
            self.eof = True
        self.buf += chunk

    def frames(self, until, timeout: float = 20.0) -> list[dict]:  # type: ignore[no-untyped-def]
        """Frames until ``until(frames)`` holds or EOF; fails after ``timeout``."""
        got: list[dict] = []
        deadline = time.monotonic() + timeout
        while not until(got):
            while b"\n\n" in self.buf:
                raw, self.buf = self.buf.split(b"\n\n", 1)
                for line in raw.decode().split("\n"):
                    if line.startswith("id: "):
                        self.last_id = line[4:]
                f = parse_frame(raw)
                if f is not None:
                    got.append(f)
                if until(got):
                    return got
            if self.eof:
                return got
            assert time.monotonic() < deadline, (len(got), got[-3:])
            self.sock.settimeout(max(deadline - time.monotonic(), 0.01))
            self._recv()
        return got

    def close(self) -> None:
        self.sock.close()


def parse_frame(raw: bytes) -> dict | None:
    f: dict = {}
    for line in raw.decode().split("\n"):
        if not line or line.startswith(":"):
            continue
        key, _, val = line.partition(":")
        f[key] = val.removeprefix(" ")
    if "data" in f:
        f["data"] = json.loads(f["data"])
    return f if "event" in f else None


def storm_daemon(janitor: Janitor, tmp_path: Path, *, small_log: bool = False
                 ) -> tuple[Running, subprocess.Popen[str]]:
    """A daemon watching a storm holder as root ``storm`` (and as ``small``, with a
    change log of 10 events, when asked)."""
    holder = janitor.python(STORM, stdin=subprocess.PIPE)
    (pid,) = read_lines(holder, 1)
    roots = f"roots:\n  - name: storm\n    select: pid\n    match: {pid}\n"
    if small_log:
        roots += f"  - name: small\n    select: pid\n    match: {pid}\n    change_log_size: 10\n"
    return start_daemon(janitor, tmp_path, roots), holder


def fork(holder: subprocess.Popen[str], n: int, wait: bool = True) -> None:
    assert holder.stdin is not None
    holder.stdin.write(f"{n}\n")
    holder.stdin.flush()
    if wait:
        assert read_lines(holder, 1, timeout=60) == ["done"]


def settled(d: Running, n_children: int) -> dict:
    """The storm root once the daemon counted every child's exit."""
    return wait_for(lambda: (r := d.json("/api/v1/roots/storm"))["exited_total"] == n_children
                    and r, timeout=30)


def seqs(frames: list[dict]) -> list[int]:
    return [f["data"]["seq"] for f in frames if f["event"] not in ("reset", "error")]


def test_a_client_that_resumes_mid_storm_gets_every_event_exactly_once(
        janitor: Janitor, tmp_path: Path) -> None:
    d, holder = storm_daemon(janitor, tmp_path)
    first = Stream(d.port, "?root=storm&since=storm:0")
    assert first.read_head() == 200
    assert b"text/event-stream" in first.head
    fork(holder, 1500, wait=False)
    part1 = first.frames(lambda fs: len(fs) >= 800)
    first.close()  # dropped mid-storm
    last_id = part1[-1]["id"]
    assert read_lines(holder, 1, timeout=60) == ["done"]
    doc = settled(d, 1500)
    second = Stream(d.port, "?root=storm", {"Last-Event-ID": last_id})
    assert second.read_head() == 200
    part2 = second.frames(lambda fs: bool(fs) and fs[-1]["data"]["seq"] >= doc["seq"])
    second.close()
    got = seqs(part1) + seqs(part2)
    # in order, none missing, none twice, up to the position the root document is at
    assert got == list(range(1, doc["seq"] + 1))
    events = [f["data"] for f in part1 + part2]
    joined = {(e["pid"], e["start_ticks"]) for e in events if e["kind"] == "joined"}
    exited = [e for e in events if e["kind"] == "exited"]
    assert len(joined) == doc["spawned_total"] == 1501  # the holder and its 1,500 children
    assert len(exited) == doc["exited_total"] == 1500
    assert all(e["exit_code"] == 0 for e in exited)
    # ids are cursors: each names the root, the seq of its frame and the log's epoch
    (epoch,) = {f["id"].rpartition("@")[2] for f in part1 + part2}
    assert all(f["id"] == f"storm:{f['data']['seq']}@{epoch}" for f in part1 + part2)


def test_a_stalled_client_is_cut_off_while_others_keep_receiving(
        janitor: Janitor, tmp_path: Path) -> None:
    d, holder = storm_daemon(janitor, tmp_path)
    stalled = Stream(d.port, "?root=storm&since=storm:0", rcvbuf=4096)
    reader = Stream(d.port, "?root=storm&since=storm:0")
    assert reader.read_head() == 200
    wait_for(lambda: value(d.metrics(), "proctree_event_streams_open") == 2)
    fork(holder, 5000)  # some 3 MB of frames: more than the stalled one may hold unsent
    doc = settled(d, 5000)
    got = reader.frames(lambda fs: bool(fs) and fs[-1]["data"]["seq"] >= doc["seq"], timeout=60)
    assert seqs(got) == list(range(1, doc["seq"] + 1))
    wait_for(lambda: value(d.metrics(), "proctree_event_stream_clients_dropped_total",
                           reason="slow") == 1)
    # what the stalled client finds when it reads at last (within CUT_LINGER_S): the
    # frames its buffers held, in order, then a last error frame saying why, the end
    assert stalled.read_head() == 200
    tail = stalled.frames(lambda fs: False, timeout=30)
    assert stalled.eof and tail
    assert seqs(tail) == list(range(1, len(seqs(tail)) + 1))
    assert tail[-1]["event"] == "error" and tail[-1]["data"]["reason"] == "slow"
    wait_for(lambda: value(d.metrics(), "proctree_event_streams_open") == 1, timeout=10)
    stalled.close()
    reader.close()


def test_a_hundred_streams_during_a_storm_and_the_hundred_and_first_refused(
        janitor: Janitor, tmp_path: Path) -> None:
    d, holder = storm_daemon(janitor, tmp_path)
    clients = [Stream(d.port, "?root=storm&since=storm:0") for _ in range(100)]
    for c in clients:
        assert c.read_head() == 200
    wait_for(lambda: value(d.metrics(), "proctree_event_streams_open") == 100, timeout=10)
    extra = Stream(d.port, "?root=storm")
    assert extra.read_head() == 503  # web.max_streams, 100 by default
    extra.close()
    fork(holder, 500, wait=False)
    sel = selectors.DefaultSelector()
    for c in clients:
        c.sock.setblocking(False)
        sel.register(c.sock, selectors.EVENT_READ, c)
    assert read_lines(holder, 1, timeout=60) == ["done"]
    doc = settled(d, 500)
    want = doc["seq"]
    last = {id(c): 0 for c in clients}
    got: dict[int, list[int]] = {id(c): [] for c in clients}
    deadline = time.monotonic() + 60
    while any(v < want for v in last.values()):
        assert time.monotonic() < deadline, sorted(last.values())[:5]
        for key, _ in sel.select(1.0):
            c = key.data
            c.buf += c.sock.recv(1 << 20)
            while b"\n\n" in c.buf:
                raw, c.buf = c.buf.split(b"\n\n", 1)
                f = parse_frame(raw)
                if f is not None:
                    got[id(c)].append(f["data"]["seq"])
                    last[id(c)] = f["data"]["seq"]
    sel.close()
    assert all(s == list(range(1, want + 1)) for s in got.values())
    m = d.metrics()
    assert value(m, "proctree_event_stream_clients_dropped_total", reason="limit") == 1
    assert value(m, "proctree_event_stream_events_sent_total") >= 100 * want
    for c in clients:
        c.close()


def test_filters_errors_reset_and_shutdown(janitor: Janitor, tmp_path: Path) -> None:
    d, holder = storm_daemon(janitor, tmp_path, small_log=True)
    for query, status in (("?root=nope", 404), ("?root=storm&kinds=exited,bogus", 400),
                          ("?root=storm&since=storm:x", 400), ("?since=7", 400)):
        s = Stream(d.port, query)
        assert s.read_head() == status, query
        s.frames(lambda fs: False, timeout=5)  # to the end: a JSON error, no frames
        assert s.eof and json.loads(s.buf)["error"], query
        s.close()
    exits = Stream(d.port, "?root=storm&kinds=exited")
    assert exits.read_head() == 200
    fork(holder, 20)
    settled(d, 20)
    got = exits.frames(lambda fs: len(fs) == 20)
    assert {f["event"] for f in got} == {"exited"}
    # the log holds 10 events: a cursor from the start has fallen off it
    doc = d.json("/api/v1/roots/small")
    late = Stream(d.port, "?root=small&since=0")
    assert late.read_head() == 200
    frames = late.frames(lambda fs: bool(fs) and fs[-1]["data"]["seq"] >= doc["seq"])
    reset = frames[0]
    assert reset["event"] == "reset"
    assert reset["data"]["lost"] == doc["seq"] - 10 == reset["data"]["seq"]
    assert seqs(frames[1:]) == list(range(doc["seq"] - 9, doc["seq"] + 1))
    late.close()
    # a cursor from an earlier log of the root (another epoch, or ahead of this log):
    # a reset that says so, then the log from its start
    epoch = got[-1]["id"].rpartition("@")[2]  # storm's (small has a log of its own)
    for cursor in (f"storm:3@{'0' if epoch != '000000' else '1'}00000", "storm:999999"):
        again = Stream(d.port, "?root=storm", {"Last-Event-ID": cursor})
        assert again.read_head() == 200
        first = again.frames(lambda fs: len(fs) >= 2)
        assert first[0]["event"] == "reset" and first[0]["data"]["restarted"] is True, cursor
        assert first[1]["data"]["seq"] == 1, cursor
        again.close()
    # events a client filtered out still move its cursor: an id-only frame says so
    downs = Stream(d.port, "?root=storm&kinds=root_down")
    assert downs.read_head() == 200
    before = d.json("/api/v1/roots/storm")["seq"]
    fork(holder, 3)
    want = f"storm:{before + 6}@{epoch}"  # joined + exited for each child
    downs.frames(lambda fs: downs.last_id == want, timeout=10)
    assert downs.last_id == want
    # stopping the daemon ends every stream promptly, saying why
    t0 = time.monotonic()
    d.proc.send_signal(15)
    for s in (exits, downs):
        tail = s.frames(lambda fs: bool(fs) and fs[-1]["event"] == "error", timeout=5)
        assert tail[-1]["data"]["reason"] == "shutdown"
        s.frames(lambda fs: False, timeout=5)
        assert s.eof
        s.close()
    assert time.monotonic() - t0 < 3
    assert d.proc.wait(10) == 0


def test_streams_go_through_tls_and_basic_auth(janitor: Janitor, tmp_path: Path,
                                               pki: Pki) -> None:  # noqa: F811
    hashed = bcrypt.hashpw(b"s3cret", bcrypt.gensalt(rounds=4)).decode()
    web = tmp_path / "web.yml"
    web.write_text(f"tls_server_config:\n  cert_file: {pki.server_crt}\n"
                   f"  key_file: {pki.server_key}\n"
                   f"basic_auth_users:\n  prom: {hashed}\n")
    holder = janitor.python(STORM, stdin=subprocess.PIPE)
    (pid,) = read_lines(holder, 1)
    ctx = ssl.create_default_context(cafile=str(pki.ca))
    d = start_daemon(janitor, tmp_path, f"roots:\n  - name: storm\n    select: pid\n"
                                        f"    match: {pid}\n", "--web.config.file", str(web),
                     ssl_context=ctx)
    anon = Stream(d.port, "?root=storm", ctx=ctx)
    assert anon.read_head() == 401
    anon.close()
    auth = "Basic " + base64.b64encode(b"prom:s3cret").decode()
    s = Stream(d.port, "?root=storm", {"Authorization": auth}, ctx=ctx)
    assert s.read_head() == 200
    fork(holder, 3)
    got = s.frames(lambda fs: sum(f["event"] == "exited" for f in fs) == 3)
    assert [f["data"]["kind"] for f in got].count("joined") == 3
    s.close()


def test_the_readme_python_client_prints_exits(janitor: Janitor, tmp_path: Path) -> None:
    text = (REPO / "README.md").read_text()
    code = text.split("A Python client, with the standard library only:\n\n```python\n", 1)[1]
    code = code.split("```", 1)[0]
    d, holder = storm_daemon(janitor, tmp_path)
    code = code.replace("http://localhost:9632", d.url).replace("root=exporter", "root=storm")
    client = janitor.python(code)
    wait_for(lambda: value(d.metrics(), "proctree_event_streams_open") == 1)
    fork(holder, 2)
    lines = read_lines(client, 2)
    assert [line.split("@")[0] for line in lines] == ["storm:4", "storm:6"]  # joined, exited x2
    assert all(line.endswith("exited with code 0") for line in lines)


def test_a_root_removed_and_added_again_streams_its_new_log(janitor: Janitor,
                                                            tmp_path: Path) -> None:
    d, holder = storm_daemon(janitor, tmp_path)
    roots_yaml = d.config.read_text()
    every = Stream(d.port, "")  # every root, from now
    assert every.read_head() == 200
    wait_for(lambda: value(d.metrics(), "proctree_event_streams_open") == 1)
    fork(holder, 2)
    first = every.frames(lambda fs: sum(f["event"] == "exited" for f in fs) == 2)
    old_children = {f["data"]["pid"] for f in first if f["event"] == "joined"}
    d.config.write_text("roots: []\n")
    d.proc.send_signal(1)  # SIGHUP: reload
    removed = every.frames(lambda fs: any(f["event"] == "root_removed" for f in fs))
    assert removed[-1]["data"]["root"] == "storm"
    # removed: the API says so at once (no document of the old root is served)
    assert d.get("/api/v1/roots/storm")[0] == 404
    d.config.write_text(roots_yaml)
    d.proc.send_signal(1)
    again = every.frames(lambda fs: any(f["event"] == "root_up" for f in fs))
    assert d.json("/api/v1/roots/storm")["seq"] == 2
    fork(holder, 1)
    again += every.frames(lambda fs: any(f["event"] == "exited" for f in fs))
    every.close()
    # the new log from its first event: the holder, the root up, the new child
    assert [(f["event"], f["data"]["seq"]) for f in again] == [
        ("joined", 1), ("root_up", 2), ("joined", 3), ("exited", 4)]
    assert again[0]["data"]["pid"] == int(d.config.read_text().split("match: ")[1].split()[0])
    assert again[2]["data"]["pid"] not in old_children  # not the old log's seq 3
    assert again[2]["data"]["pid"] == again[3]["data"]["pid"]
    epochs = {f["id"].rpartition("@")[2] for f in first} | {
        f["id"].rpartition("@")[2] for f in again}
    assert len(epochs) == 2  # the re-added root's log is a new one
