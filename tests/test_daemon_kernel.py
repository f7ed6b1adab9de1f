"""The daemon end to end: a real subprocess, real process trees, scraped over loopback."""

from __future__ import annotations

import gzip
import json
import signal
import socket
import subprocess
import threading
import time
from pathlib import Path

import pytest

from .conftest import PYTHON, Janitor, read_lines, wait_for
from .daemon_helpers import EXE, Running, start_daemon, value

pytestmark = pytest.mark.kernel

TOKEN = "ptx-e2e-holder"
CONFIG = f"""
roots:
  - name: job
    select: cmdline
    match: "{TOKEN}"
    zombie_grace_seconds: 0.5
    capture_cmdline: true
  - name: exporter
    select: pid
    match: self
host:
  state_sample_interval_seconds: 1
"""

# holder (the instance) -> wrapper (exits) -> 3 sleepers (orphans)
#                       -> one child that exits unreaped (zombie)
#                       -> 200 children living a few ms (short-lived)
SCENE = f"""# {TOKEN}
import os, subprocess, sys, time
sys.stdin.readline()
w = subprocess.Popen(['/bin/sh', '-c', 'for i in 1 2 3; do sleep 60 & echo $!; done; sleep 0.2'],
                     stdout=subprocess.PIPE, text=True)
orphans = [w.stdout.readline().strip() for _ in range(3)]
w.wait()
z = os.fork()
if z == 0:
    os._exit(0)
for _ in range(200):
    pid = os.fork()
    if pid == 0:
        time.sleep(0.002); os._exit(0)
    os.waitpid(pid, 0)
print(' '.join(orphans), z, flush=True)
time.sleep(60)
"""


@pytest.fixture
def daemon(janitor: Janitor, tmp_path: Path) -> Running:
    d = start_daemon(janitor, tmp_path, CONFIG)
    yield d
    if d.proc.poll() is None:
        status, took, err = d.stop()
        assert status == 0, err
        assert took < 2.0, f"shutdown took {took:.2f}s"


def test_scrape_counts_orphans_zombies_and_short_lived_exactly(daemon: Running,
                                                              janitor: Janitor) -> None:
    holder = janitor.spawn([PYTHON, "-c", SCENE], stdin=subprocess.PIPE)
    assert holder.stdin is not None
    holder.stdin.write("go\n")
    holder.stdin.flush()
    *orphans, zombie = (int(x) for x in read_lines(holder, 1, timeout=30)[0].split())
    for o in orphans:
        janitor.track(o)

    def settled() -> dict | None:
        m = daemon.metrics()
        ok = (value(m, "proctree_root_processes", root="job", **{"class": "zombie"}) == 1
              and value(m, "proctree_root_exited_total", root="job") == 203)
        return m if ok else None

    m = wait_for(settled, timeout=10)
    assert value(m, "proctree_root_up", root="job") == 1
    assert value(m, "proctree_root_instances", root="job") == 1  # the forks match too: nested
    assert value(m, "proctree_root_processes", root="job", **{"class": "orphaned"}) == 3
    assert value(m, "proctree_root_processes", root="job", **{"class": "healthy"}) == 1
    # holder + wrapper + its 3 sleepers + its `sleep 0.2` + zombie child + 200 short-lived
    assert value(m, "proctree_root_spawned_total", root="job") == 207
    assert value(m, "proctree_root_exited_total", root="job") == 203
    assert value(m, "proctree_root_class_changes_total", root="job",
                 **{"class": "orphaned"}) == 3
    assert value(m, "proctree_zombies") >= 1
    assert value(m, "proctree_root_up", root="exporter") == 1
    assert value(m, "proctree_source_info", source="netlink", filtered="true") == 1
    assert value(m, "proctree_ready") == 1
    # the API agrees, with the zombie's parent named and command lines for this root only
    doc = daemon.json("/api/v1/roots/job")
    assert doc["classes"] == {"healthy": 1, "orphaned": 3, "zombie": 1}
    assert {mem["pid"] for mem in doc["members"]} == {holder.pid, *orphans, zombie}
    assert all("cmdline" in mem for mem in doc["members"])
    zev = [e for e in doc["events"] if e["new"] == "zombie"]
    assert zev and zev[0]["pid"] == zombie and f"parent PID {holder.pid}" in zev[0]["reason"]
    assert "cmdline" not in json.dumps(daemon.json("/api/v1/roots/exporter")["members"])
    _, _, body = daemon.get("/metrics")
    assert TOKEN.encode() not in body, "command lines never appear in metrics"


def test_tree_endpoint_nests_members_by_lineage(daemon: Running, janitor: Janitor) -> None:
    holder = janitor.spawn([PYTHON, "-c", SCENE], stdin=subprocess.PIPE)
    assert holder.stdin is not None
    holder.stdin.write("go\n")
    holder.stdin.flush()
    *orphans, zombie = (int(x) for x in read_lines(holder, 1, timeout=30)[0].split())
    for o in orphans:
        janitor.track(o)

    def nested() -> dict | None:
        doc = daemon.json("/api/v1/tree?root=job")
        kids = {c["pid"]: c for c in doc["nodes"][0]["children"]} if doc["nodes"] else {}
        return doc if zombie in kids and kids[zombie]["class"] == "zombie" else None

    doc = wait_for(nested, timeout=10)
    (top,) = doc["nodes"]
    assert top["pid"] == holder.pid and top["class"] == "healthy"
    kids = {c["pid"]: c for c in top["children"]}
    (wrapper,) = [c for c in kids.values() if c["comm"] == "sh"]
    assert wrapper["class"] == "exited" and wrapper["exit_code"] == 0
    live = [c for c in wrapper["children"] if c["class"] != "exited"]
    assert sorted(c["pid"] for c in live) == sorted(orphans)
    assert all(c["class"] == "orphaned" for c in live)
    # and its short-lived `sleep 0.2` is there too, as an exited tombstone
    assert [c["comm"] for c in wrapper["children"] if c["class"] == "exited"] == ["sleep"]


def test_http_contract(daemon: Running) -> None:
    assert daemon.get("/nope")[0] == 404
    assert daemon.get("/api/v1/roots/nope")[0] == 404
    assert daemon.get("/api/v1/tree")[0] == 400
    status, headers, _ = daemon.get("/metrics", method="POST")
    assert status == 405 and "GET" in headers["Allow"]
    status, _, body = daemon.get("/metrics", method="HEAD")
    assert status == 200 and body == b""
    status, headers, body = daemon.get(
        "/metrics", {"Accept": "application/openmetrics-text; version=1.0.0"})
    assert status == 200 and headers["Content-Type"].startswith("application/openmetrics-text")
    assert body.endswith(b"# EOF\n")
    status, headers, body = daemon.get("/metrics", {"Accept-Encoding": "gzip"})
    assert headers.get("Content-Encoding") == "gzip"
    assert b"proctree_build_info" in gzip.decompress(body)
    status, headers, body = daemon.get("/")
    assert status == 200 and b"/metrics" in body and b"exporter" in body
    roots = daemon.json("/api/v1/roots")["roots"]
    assert [r["name"] for r in roots] == ["job", "exporter"]
    assert daemon.get("/-/healthy")[0] == 200
    # JSON, the page and its script go gzipped to a client that asks for it
    for path in ("/api/v1/openapi.json", "/ui/app.js", "/"):
        _, plain_headers, plain = daemon.get(path)
        status, headers, body = daemon.get(path, {"Accept-Encoding": "gzip, deflate"})
        assert status == 200 and headers.get("Content-Encoding") == "gzip", path
        assert headers["Vary"] == "Accept-Encoding" == plain_headers["Vary"]
        assert "Content-Encoding" not in plain_headers
        assert int(headers["Content-Length"]) == len(body) < len(plain) // 2
        if path != "/":  # the page shows ages: two reads may differ
            assert gzip.decompress(body) == plain
    _, headers, body = daemon.get("/api/v1/roots", {"Accept-Encoding": "gzip"})
    assert json.loads(gzip.decompress(body) if headers.get("Content-Encoding") else body)
    status, headers, body = daemon.get("/-/healthy", {"Accept-Encoding": "gzip"})
    assert body == b"OK\n" and "Content-Encoding" not in headers  # small: as it is


def test_promtool_accepts_a_live_scrape(daemon: Running) -> None:
    _, _, body = daemon.get("/metrics")
    out = subprocess.run(["promtool", "check", "metrics"], input=body, capture_output=True,
                         timeout=30)
    assert out.returncode == 0 and not out.stdout.strip() and not out.stderr.strip(), (
        out.stdout + out.stderr)


def test_concurrent_scrapes_slow_and_malformed_clients(daemon: Running) -> None:
    # a slowloris: a request that never finishes its headers
    slow = socket.create_connection(("127.0.0.1", daemon.port))
    slow.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\n")
    try:
        # malformed request line and a 1 MB header both get an error, not a hang
        with socket.create_connection(("127.0.0.1", daemon.port), timeout=5) as s:
            s.sendall(b"\x00\x01garbage\r\n\r\n")
            # a one-word request line is answered HTTP/0.9 style: the error page alone
            assert b"400" in s.recv(4096)
        with socket.create_connection(("127.0.0.1", daemon.port), timeout=5) as s:
            s.sendall(b"GET /metrics HTTP/1.1\r\nX-Big: " + b"a" * (1 << 20) + b"\r\n\r\n")
            reply = s.recv(100)
            assert reply.startswith(b"HTTP/1.") and b" 200 " not in reply[:16]
        results: list[int] = []

        def scrape() -> None:
            results.append(daemon.get("/metrics")[0])

        threads = [threading.Thread(target=scrape) for _ in range(50)]
        t0 = time.monotonic()
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
        assert results == [200] * 50, results
        assert time.monotonic() - t0 < 20
        assert daemon.get("/-/healthy")[0] == 200
    finally:
        slow.close()


def test_sighup_adds_and_removes_roots_without_losing_the_tree(daemon: Running) -> None:
    before = daemon.metrics()
    forked = value(before, "proctree_processes_forked_total")
    daemon.config.write_text(CONFIG.replace("name: job", "name: job2"))
    daemon.proc.send_signal(signal.SIGHUP)
    def has(name: str, wanted: float | None = None, **labels: str):  # type: ignore[no-untyped-def]
        def check() -> dict | None:
            m = daemon.metrics()
            v = value(m, name, **labels)
            return m if v is not None and (wanted is None or v == wanted) else None
        return check

    # the new root shows as soon as it is added; the reload is counted once all of it is done
    wait_for(has("proctree_root_up", root="job2"), timeout=15)
    m = wait_for(has("proctree_config_reloads_total", 1, result="success"), timeout=15)
    assert value(m, "proctree_root_up", root="job") is None, "removed root still exported"
    assert value(m, "proctree_processes_forked_total") >= forked, "the tree was rebuilt"
    # a broken config keeps the running one and is counted
    daemon.config.write_text("roots: [{name: x, select: nonsense, match: 1}]\n")
    daemon.proc.send_signal(signal.SIGHUP)
    m = wait_for(has("proctree_config_reloads_total", 1, result="failure"), timeout=15)
    assert value(m, "proctree_config_last_reload_successful") == 0
    assert value(m, "proctree_root_up", root="job2") is not None


def test_json_logs_and_clean_shutdown(janitor: Janitor, tmp_path: Path) -> None:
    d = start_daemon(janitor, tmp_path, CONFIG, "--log.format", "json")
    status, took, err = d.stop(signal.SIGINT)
    assert status == 0 and took < 2.0
    lines = [json.loads(line) for line in err.splitlines() if line.strip()]
    assert {"ts", "level", "logger", "msg"} <= set(lines[0])
    # a short message, its facts as fields (the same ones the text format shows)
    ready = next(rec for rec in lines if rec["msg"] == "ready")
    assert ready["source"] == "netlink" and ready["processes"] > 0 and ready["roots"] >= 1
    source = next(rec for rec in lines if rec["msg"] == "event source")
    assert source["filtered"] in (True, False)
    assert source["rcvbuf_bytes"] >= source["requested_bytes"] > 0
    assert next(rec for rec in lines if rec["msg"] == "shutting down")["signal"] == "SIGINT"
    assert not any("=" in rec["msg"] for rec in lines), "key=value belongs in fields"
    assert len(lines) < 20, "one line per notable event, not per process event"


def test_port_in_use_is_a_clear_error(janitor: Janitor, tmp_path: Path) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        p = janitor.spawn([EXE, "--web.listen-address", f"127.0.0.1:{port}"],
                          stderr=subprocess.PIPE)
        _, err = p.communicate(timeout=30)
    assert p.returncode == 1 and "cannot listen" in err and "in use" in err


def test_bad_listen_address_exits_2(janitor: Janitor) -> None:
    p = janitor.spawn([EXE, "--web.listen-address", "nonsense"], stderr=subprocess.PIPE)
    _, err = p.communicate(timeout=30)
    assert p.returncode == 2 and "HOST]:PORT" in err
    # said in the user's terms, before anything starts (no "starting" line first)
    p = janitor.spawn([EXE, "--web.listen-address", ":99999"], stderr=subprocess.PIPE)
    _, err = p.communicate(timeout=30)
    assert p.returncode == 2 and "port 99999 out of range (0-65535)" in err, err
    assert "starting" not in err
