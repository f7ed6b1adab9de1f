"""`watch --url` against the real daemon: the lines of a local `watch`, across a cut.

The daemon watches a holder process; the holder starts children that exit with
known codes, in batches. A remote watch follows the daemon through a loopback
proxy that the test cuts in the middle of a batch (and keeps refusing
connections for a while), a second remote watch prints text without the proxy,
and a local `watch` of the same pid prints what the remote ones must print.
"""

from __future__ import annotations

import contextlib
import json
import re
import signal
import socket
import struct
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from .conftest import PYTHON, Janitor, read_lines, wait_for
from .daemon_helpers import EXE, start_daemon

pytestmark = pytest.mark.kernel

# each line on stdin names exit codes: one child per code, one after another; each child
# is a shell that waits on its stdin (so that its exec is read from /proc in time), then
# exits with its code. The child pids are printed when the batch is done.
HOLDER = (
    "import subprocess, sys, time\n"
    "for line in sys.stdin:\n"
    "    pids = []\n"
    "    for code in line.split():\n"
    "        p = subprocess.Popen(['/bin/sh', '-c', 'read x; exit ' + code],"
    " stdin=subprocess.PIPE)\n"
    "        time.sleep(0.1)\n"
    "        p.stdin.close(); p.wait(); pids.append(str(p.pid))\n"
    "    print(' '.join(pids), flush=True)\n"
)


class Proxy:
    """A loopback TCP proxy in front of the daemon. :meth:`cut` resets every connection
    through it and refuses new ones until :meth:`resume`."""

    def __init__(self, upstream: int) -> None:
        self.upstream = upstream
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.sock.settimeout(0.1)
        self.port = self.sock.getsockname()[1]
        self.forwarding = threading.Event()
        self.forwarding.set()
        self.forwarded = 0  # connections passed on to the daemon
        self.refused = 0
        self.lock = threading.Lock()
        self.pairs: list[tuple[socket.socket, socket.socket]] = []
        self.every: list[socket.socket] = []
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self.accept, daemon=True)
        self.thread.start()

    def accept(self) -> None:
        while not self.stop.is_set():
            try:
                client, _ = self.sock.accept()
            except TimeoutError:
                continue
            if not self.forwarding.is_set():
                self.refused += 1
                client.close()
                continue
            try:
                server = socket.create_connection(("127.0.0.1", self.upstream), timeout=5)
            except OSError:
                client.close()
                continue
            server.settimeout(None)
            with self.lock:
                self.forwarded += 1
                self.pairs.append((client, server))
                self.every += [client, server]
            for a, b in ((client, server), (server, client)):
                threading.Thread(target=self.pump, args=(a, b), daemon=True).start()

    @staticmethod
    def pump(src: socket.socket, dst: socket.socket) -> None:
        with contextlib.suppress(OSError):
            while data := src.recv(65536):
                dst.sendall(data)
        with contextlib.suppress(OSError):
            dst.shutdown(socket.SHUT_WR)

    def cut(self) -> None:
        """Drop every connection now (a reset to the client, as when a link dies)."""
        self.forwarding.clear()
        with self.lock:
            pairs, self.pairs = self.pairs, []
        for client, server in pairs:
            for s in (client, server):
                with contextlib.suppress(OSError):
                    # no lingering: close sends RST, and the watch sees its stream break
                    s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                    s.shutdown(socket.SHUT_RD)  # wakes this side's pump
                with contextlib.suppress(OSError):
                    s.close()

    def resume(self) -> None:
        self.forwarding.set()

    def close(self) -> None:
        self.stop.set()
        self.cut()
        self.thread.join(5)
        self.sock.close()
        for s in self.every:
            s.close()


class Lines:
    """Every line a child writes on one of its pipes, read by a thread of its own."""

    def __init__(self, stream: Any) -> None:
        self.lines: list[str] = []
        self.thread = threading.Thread(target=self.read, args=(stream,), daemon=True)
        self.thread.start()

    def read(self, stream: Any) -> None:
        for line in stream:
            self.lines.append(line.rstrip("\n"))

    def has(self, text: str) -> bool:
        return any(text in line for line in list(self.lines))


def run_batch(holder: subprocess.Popen[str], janitor: Janitor, codes: list[int]) -> list[int]:
    assert holder.stdin is not None
    holder.stdin.write(" ".join(map(str, codes)) + "\n")
    holder.stdin.flush()
    pids = [int(p) for p in read_lines(holder, 1, timeout=30)[0].split()]
    assert len(pids) == len(codes)
    return pids


def removed(lines: list[str]) -> dict[int, int]:
    """pid -> exit code of every ``removed`` line (JSON)."""
    out = {}
    for e in map(json.loads, lines):
        if e["event"] == "removed":
            out[e["pid"]] = e["exit_code"]
    return out


def stop(p: subprocess.Popen[str], reader: Lines) -> list[str]:
    """SIGTERM a watch; it must end cleanly, at once, having printed everything."""
    p.send_signal(signal.SIGTERM)
    assert p.wait(timeout=10) == 0
    reader.thread.join(5)
    return reader.lines


def test_remote_watch_prints_the_local_lines_and_resumes_after_a_cut(
        janitor: Janitor, tmp_path: Path) -> None:
    holder = janitor.spawn([PYTHON, "-c", HOLDER], stdin=subprocess.PIPE)
    daemon = start_daemon(janitor, tmp_path, (
        "log:\n  level: warning\n"
        f"roots:\n  - name: job\n    select: pid\n    match: '{holder.pid}'\n"))
    proxy = Proxy(daemon.port)
    try:
        remote = janitor.spawn([EXE, "watch", "--url", f"http://127.0.0.1:{proxy.port}",
                                "--root", "job", "--json"], stderr=subprocess.PIPE)
        text = janitor.spawn([EXE, "watch", "--url", daemon.url, "--root", "job"],
                             stderr=subprocess.PIPE)
        local = janitor.spawn([EXE, "watch", "--root", str(holder.pid), "--json"],
                              stderr=subprocess.PIPE)
        outs = {name: Lines(p.stdout) for name, p in
                (("remote", remote), ("text", text), ("local", local))}
        errs = {name: Lines(p.stderr) for name, p in
                (("remote", remote), ("text", text), ("local", local))}
        for name in errs:
            wait_for(lambda n=name: errs[n].has("watching "), timeout=30)  # type: ignore[misc]

        first = run_batch(holder, janitor, [11, 12, 13])
        wait_for(lambda: set(first) <= set(removed(outs["remote"].lines)), timeout=15)

        # a cut in the middle of a batch: its events go on while the watch cannot connect
        assert holder.stdin is not None
        holder.stdin.write("21 22 23 24 25 26 27 28\n")
        holder.stdin.flush()
        time.sleep(0.35)
        proxy.cut()
        at_cut = len(outs["remote"].lines)
        second = [int(p) for p in read_lines(holder, 1, timeout=30)[0].split()]
        wait_for(lambda: proxy.refused >= 1, timeout=15)  # it retried, and was refused
        proxy.resume()
        wait_for(lambda: errs["remote"].has("resuming after job:"), timeout=15)

        third = run_batch(holder, janitor, [31, 32])
        everyone = first + second + third
        for name in ("remote", "local"):
            wait_for(lambda n=name: set(everyone) <= set(removed(outs[n].lines)),  # type: ignore[misc]
                     timeout=15)
        wait_for(lambda: sum(" removed " in x for x in outs["text"].lines) >= len(everyone),
                 timeout=15)
        time.sleep(0.3)  # anything printed twice would be printed by now
        got = {name: stop(p, outs[name]) for name, p in
               (("remote", remote), ("text", text), ("local", local))}
    finally:
        proxy.close()

    remote_events = [json.loads(x) for x in got["remote"]]
    local_events = [json.loads(x) for x in got["local"]]
    codes = dict(zip(everyone, [11, 12, 13, *range(21, 29), 31, 32], strict=True))
    # every child shown once: joined (forked by the holder), exec'd the shell, exited
    # with its code; after the cut nothing is missing and nothing is printed twice
    for pid, code in codes.items():
        # pid_max is 32768 here: a busy host may give an exited child's pid to a new
        # process within the test, which its tombstone shows as a class change
        assert {e["class"] for e in remote_events if e["pid"] == pid
                and e["event"] == "class"} <= {"pid_reused"}
        mine = [(e["event"], e["comm"], e.get("exit_code")) for e in remote_events
                if e["pid"] == pid and e["event"] != "class"]
        assert [m[0] for m in mine] == ["added", "exec", "removed"], (pid, mine)
        assert mine[1][1] == "sh" and mine[2] == ("removed", "sh", code), (pid, mine)
        assert next(e for e in remote_events if e["pid"] == pid and e["event"] == "removed")[
            "reason"] == f"process {pid} (sh) exited with code {code}"
    assert len(set(got["remote"])) == len(got["remote"]), "a line printed twice"
    # the batch lasts 0.8 s or more and was cut after 0.35 s: the end of it came through
    # the resumed stream only
    last_of_second = max(i for i, e in enumerate(remote_events) if e["pid"] in second)
    assert at_cut <= last_of_second, (at_cut, last_of_second)
    assert remote_events[0]["event"] == "added" and remote_events[0]["pid"] == holder.pid

    # the local watch printed the same lines (its root is named "watch", and each
    # process turns kernel times into wall-clock times with its own clock). Left out: a
    # pid reuse of some tombstone, which may come between the ends of the two watches
    def same(events: list[dict[str, Any]]) -> list[dict[str, Any]]:
        return [{k: v for k, v in e.items() if k not in ("root", "ts")} for e in events
                if e["class"] != "pid_reused"]

    assert same(remote_events) == same(local_events)
    assert all(e["root"] == "job" for e in remote_events)

    # the cut: a reconnect that was refused, then a resume with Last-Event-ID
    err = "\n".join(errs["remote"].lines)
    assert "connection to http://127.0.0.1:" in err and "reconnecting in 0.5s" in err, err
    assert proxy.forwarded >= 3 and "Traceback" not in err  # documents, stream, resumed

    # text: the local format, one line per change, the same lines as the JSON ones
    lines = [x for x in got["text"] if " pid_reused " not in x]
    assert len(lines) == len(same(remote_events))
    for pid, code in codes.items():
        pattern = (rf"\d\d:\d\d:\d\d\.\d{{3}} removed +{pid} sh +exited  "
                   rf"process {pid} \(sh\) exited with code {code}")
        assert sum(bool(re.fullmatch(pattern, x)) for x in lines) == 1, (pid, lines)
