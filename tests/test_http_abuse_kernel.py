"""Hostile HTTP clients against the real daemon: others are still served, threads and
memory stay bounded."""

from __future__ import annotations

import socket
import threading
import time
from pathlib import Path

import pytest

from .conftest import Janitor
from .daemon_helpers import Running, start_daemon

pytestmark = pytest.mark.kernel

CONFIG = """
web:
  max_connections: 16
  read_timeout_seconds: 3
roots:
  - {name: host, select: pid, match: 1}
"""


def threads_and_rss(pid: int) -> tuple[int, int]:
    fields = dict(line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text()
                  .splitlines() if ":" in line)
    return int(fields["Threads"]), int(fields["VmRSS"].split()[0])


def slow_clients(d: Running, n: int) -> list[socket.socket]:
    """Connections that send part of a request head and then nothing (slowloris)."""
    socks = []
    for _ in range(n):
        s = socket.create_connection(("127.0.0.1", d.port), timeout=5)
        s.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\nX-Slow: ")
        socks.append(s)
    return socks


def test_slowloris_huge_headers_and_200_scrapers(janitor: Janitor, tmp_path: Path) -> None:
    d = start_daemon(janitor, tmp_path, CONFIG)
    threads_before, rss_before = threads_and_rss(d.proc.pid)
    slow = slow_clients(d, 100)  # far more than the 16 workers
    try:
        # a client with a 1 MB header is refused without reading it all
        with socket.create_connection(("127.0.0.1", d.port), timeout=10) as s:
            try:
                s.sendall(b"GET /metrics HTTP/1.1\r\nX-Big: " + b"a" * (1 << 20) + b"\r\n\r\n")
            except (BrokenPipeError, ConnectionResetError):
                pass  # the server hung up mid-send: also a refusal
            reply = s.recv(100)
            assert reply == b"" or reply.startswith(b"HTTP/1.1 431"), reply
        # invalid methods are answered, not served
        assert d.get("/metrics", method="DELETE")[0] == 405
        assert d.get("/metrics", method="PUT")[0] == 405
        # 200 concurrent scrapers, all served, while the slow clients hang on
        results: list[int] = []
        lock = threading.Lock()

        def scrape() -> None:
            status = d.get("/metrics")[0]
            with lock:
                results.append(status)

        workers = [threading.Thread(target=scrape) for _ in range(200)]
        for t in workers:
            t.start()
        for t in workers:
            t.join(60)
        assert results.count(200) == 200, sorted(set(results))
        threads, rss = threads_and_rss(d.proc.pid)
        # the HTTP pool (16) plus the daemon's own few: slow clients cost no thread
        assert threads <= threads_before + 16, (threads_before, threads)
        assert rss - rss_before < 64 * 1024, f"RSS grew by {rss - rss_before} kB"
    finally:
        for s in slow:
            s.close()


def test_slow_clients_are_timed_out(janitor: Janitor, tmp_path: Path) -> None:
    d = start_daemon(janitor, tmp_path, CONFIG)
    (slow,) = slow_clients(d, 1)
    try:
        slow.settimeout(10)
        t0 = time.monotonic()
        reply = slow.recv(100)
        # read_timeout_seconds (3 s) after connecting, the server gives up on it
        assert reply.startswith(b"HTTP/1.1 408"), reply
        assert time.monotonic() - t0 < 8
    finally:
        slow.close()
    assert d.get("/-/healthy")[0] == 200
