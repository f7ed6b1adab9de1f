"""The command line as a user runs it: tree (text and JSON), check-config, bad configs;
watch --url's event-stream parser fed bytes, and its reconnects against a scripted server."""

from __future__ import annotations

import itertools
import json
import os
import socket
import subprocess
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from proctree_exporter.actions import ActionOutcome
from proctree_exporter.changelog import lost_event
from proctree_exporter.classification import EXITED, HEALTHY, ORPHANED, ZOMBIE
from proctree_exporter.cli import _track, event_line
from proctree_exporter.events import Ancestor, EventKind, RootEvent
from proctree_exporter.remote import SseError, SseMessage, SseParser, Target, event_from_doc
from proctree_exporter.web import event_doc

from .conftest import PYTHON, REPO, Janitor, read_lines

EXE = str(REPO / ".venv" / "bin" / "proctree-exporter")

# holder -> wrapper (exits) -> sleeper (orphan); holder -> zombie child (never reaped)
SCENE = (
    "import os, subprocess, sys, time\n"
    "sys.stdin.readline()\n"
    # the wrapper lives 0.2 s so that its exec is read in time even on a loaded machine
    "w = subprocess.Popen(['/bin/sh', '-c', 'sleep 60 & echo $!; sleep 0.2'],"
    " stdout=subprocess.PIPE, text=True)\n"
    "orphan = w.stdout.readline().strip(); w.wait()\n"
    "z = os.fork()\n"
    "if z == 0:\n    os._exit(4)\n"
    "print(w.pid, orphan, z, flush=True)\n"
    "time.sleep(60)\n"
)


def walk(nodes: list[dict[str, Any]]) -> dict[int, dict[str, Any]]:
    out: dict[int, dict[str, Any]] = {}
    stack = list(nodes)
    while stack:
        d = stack.pop()
        out[d["pid"]] = d
        stack.extend(d["children"])
    return out


def watch_scene(janitor: Janitor, *extra: str) -> tuple[str, tuple[int, int, int, int]]:
    """Run `tree --for` on a holder that builds SCENE while the CLI watches."""
    holder = janitor.spawn([PYTHON, "-c", SCENE], stdin=subprocess.PIPE)
    cli = janitor.spawn([EXE, "tree", "--root", str(holder.pid), "--for", "2", *extra],
                        stderr=subprocess.PIPE)
    assert cli.stderr is not None and "watching" in cli.stderr.readline()
    # the scene happens while the CLI watches: lineage comes from real FORK events
    assert holder.stdin is not None
    holder.stdin.write("go\n")
    holder.stdin.flush()
    wrapper, orphan, zombie = (int(x) for x in read_lines(holder, 1)[0].split())
    janitor.track(orphan)
    out, err = cli.communicate(timeout=60)
    assert cli.returncode == 0, err
    return out, (holder.pid, wrapper, orphan, zombie)


@pytest.mark.kernel
def test_tree_json_shows_lineage_orphans_zombies_and_exits(janitor: Janitor) -> None:
    out, (holder, wrapper, orphan, zombie) = watch_scene(janitor, "--json")
    doc = json.loads(out)
    assert doc["source"] == "netlink"
    (root,) = doc["nodes"]
    assert root["pid"] == holder
    nodes = walk(doc["nodes"])
    keys = {"pid", "start_ticks", "ppid", "lineage_ppid", "comm", "state", "exited",
            "exit_code", "children"}
    assert all(keys <= set(d) for d in nodes.values())
    o = nodes[orphan]
    assert o["lineage_ppid"] == wrapper and o["ppid"] != wrapper and not o["exited"]
    assert o["orphaned"] and o["comm"] == "sleep"
    z = nodes[zombie]
    assert z["state"] == "Z" and z["zombie"] and z["lineage_ppid"] == holder
    w = nodes[wrapper]
    assert w["exited"] and w["exit_code"] == 0 and w["comm"] == "sh"
    assert o in w["children"], "the orphan is nested under its exited wrapper"


@pytest.mark.kernel
def test_tree_text_marks_orphans_zombies_and_exits(janitor: Janitor) -> None:
    out, (holder, wrapper, orphan, zombie) = watch_scene(janitor)
    lines = out.splitlines()
    assert lines[0].startswith(f"{holder} python")
    assert any(f"{wrapper} sh" in line and "[exited code=0]" in line for line in lines), lines
    assert any(f"{orphan} sleep" in line and "ORPHAN ppid=" in line for line in lines), lines
    assert any(f"{zombie} python" in line and "[ZOMBIE]" in line for line in lines), lines


@pytest.mark.kernel
def test_tree_seeded_after_a_reparenting_does_not_guess_lineage(janitor: Janitor) -> None:
    holder = janitor.spawn([PYTHON, "-c", SCENE], stdin=subprocess.PIPE)
    assert holder.stdin is not None
    holder.stdin.write("go\n")
    holder.stdin.flush()
    _, orphan, zombie = (int(x) for x in read_lines(holder, 1)[0].split())
    janitor.track(orphan)
    out = subprocess.run([EXE, "tree", "--json"], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    nodes = walk(json.loads(out.stdout)["nodes"])
    # the wrapper exited before start-up: the orphan's lineage is unknowable, so it
    # hangs under its current parent, marked as learned from the snapshot
    o = nodes[orphan]
    assert o["lineage_ppid"] == o["ppid"] != holder.pid
    assert o["lineage_source"] == "snapshot" and not o["orphaned"]
    assert nodes[zombie]["zombie"] and nodes[zombie]["lineage_ppid"] == holder.pid


def test_tree_of_a_pid_that_does_not_exist_fails_clearly() -> None:
    out = subprocess.run([EXE, "tree", "--root", "4000000"], capture_output=True, text=True,
                         timeout=60)
    assert out.returncode == 1 and "no live process 4000000" in out.stderr


def test_embedded_default_config_is_valid() -> None:
    out = subprocess.run([EXE, "check-config", "--config", str(REPO / "config.yaml")],
                         capture_output=True, text=True, timeout=30)
    assert out.returncode == 0 and out.stdout.strip().endswith(": ok"), out.stderr


@pytest.mark.kernel
def test_watch_streams_json_lines_for_one_tree(janitor: Janitor) -> None:
    holder = janitor.spawn("read line; sh -c 'exit 5'; sleep 60", stdin=subprocess.PIPE)
    cli = janitor.spawn([EXE, "watch", "--root", str(holder.pid), "--for", "2", "--json"],
                        stderr=subprocess.PIPE)
    assert cli.stderr is not None and "watching pid=" in cli.stderr.readline()
    assert holder.stdin is not None
    holder.stdin.write("go\n")
    holder.stdin.flush()
    out, err = cli.communicate(timeout=60)
    assert cli.returncode == 0, err
    events = [json.loads(line) for line in out.splitlines()]
    assert all({"event", "pid", "start_ticks", "comm", "class", "reason", "ts"} <= set(e)
               for e in events)
    assert events[0]["event"] == "added" and events[0]["pid"] == holder.pid
    exits = [e for e in events if e["event"] == "removed" and e["exit_code"] == 5]
    assert len(exits) == 1 and "exited with code 5" in exits[0]["reason"]
    added = [e for e in events if e["event"] == "added" and e["pid"] == exits[0]["pid"]]
    assert len(added) == 1, "a short-lived child is shown joining and leaving"
    # a child joins at its fork (with its parent's name), then execs
    sleeper = next(e for e in events if e["event"] == "exec" and e["comm"] == "sleep")
    joined = [e for e in events if e["event"] == "added" and e["pid"] == sleeper["pid"]]
    assert len(joined) == 1 and events.index(joined[0]) < events.index(sleeper)
    assert "now runs /usr/bin/sleep" in sleeper["reason"] or "now runs /bin/sleep" in \
        sleeper["reason"]


@pytest.mark.kernel
def test_capabilities_are_reported_per_category() -> None:
    out = subprocess.run([EXE, "capabilities", "--json"], capture_output=True, text=True,
                         timeout=60)
    assert out.returncode == 0, out.stderr
    caps = json.loads(out.stdout)
    assert set(caps) == {"process_lifecycle", "exec_details", "lineage", "zombie_detection",
                         "cgroup", "actions", "resource_accounting"}
    assert caps["process_lifecycle"]["status"] == "supported"
    # root in the initial namespaces: the kernel's taskstats exit records
    assert caps["resource_accounting"]["status"] == "supported"
    assert caps["resource_accounting"]["backend"] == "taskstats+procfs"
    assert caps["process_lifecycle"]["backend"] == "netlink"
    assert all(c["status"] in ("supported", "partial", "unavailable") and c["reason"]
               for c in caps.values())


@pytest.mark.kernel
def test_capabilities_without_the_connector_say_what_is_missed() -> None:
    out = subprocess.run(["unshare", "-n", EXE, "capabilities", "--json"], capture_output=True,
                         text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    caps = json.loads(out.stdout)
    life = caps["process_lifecycle"]
    assert life["status"] == "partial" and life["backend"] == "procfs"
    assert "shorter than the interval are missed" in life["reason"]
    # taskstats records go to the initial network namespace only: /proc while unreaped
    acct = caps["resource_accounting"]
    assert acct["status"] == "partial" and acct["backend"] == "procfs", acct


BAD_CONFIGS = [
    ("collector:\n  sauce: auto\n", "collector.sauce, line 2: unknown key"),
    ("colector: {}\n", "colector, line 1: unknown key"),
    ("collector:\n  source: kernel\n", "collector.source, line 2"),
    ("collector:\n  receive_buffer_bytes: lots\n", "collector.receive_buffer_bytes, line 2"),
    ("collector:\n  receive_buffer_bytes: 10\n", "collector.receive_buffer_bytes, line 2"),
    ("tree:\n  max_nodes: -1\n", "tree.max_nodes, line 2"),
    ("tree:\n  tombstone_ttl_seconds: [1]\n", "tree.tombstone_ttl_seconds, line 2"),
    ("tree: 5\n", "tree, line 1"),
    ("log:\n  level: loud\n", "log.level, line 2"),
    ("- just\n- a list\n", "top level must be a mapping"),
    ("collector:\n  source: [unclosed\n", "line 3: not valid YAML"),
    ("collector:\n\tsource: auto\n", "not valid YAML"),
    ("collector:\n  source: auto\n  source: procfs\n", "collector.source, line 3: duplicate key"),
    ("roots:\n  - name: a\n    select: pid\n    match: one\n", "roots[0] (a), line 2"),
    ("roots:\n  - name: a\n    select: uid\n    match: 1\n", "roots[0] (a).select, line 3"),
    ("roots:\n  - name: a\n    select: cmdline\n    match: '(('\n",
     "not a valid regular expression"),
    ("roots:\n  - {name: a, select: pid, match: 1}\n  - {name: a, select: pid, match: 2}\n",
     "root name 'a' is used twice"),
    ("roots:\n  - name: a b\n    select: pid\n    match: 1\n", "roots[0] (a b).name, line 2"),
    ("roots:\n  - name: a\n    select: pidfile\n    match: rel.pid\n",
     "needs an absolute path"),
    ("roots:\n  - name: a\n    select: pid\n    match: 1\n    actions: {enable: true}\n",
     "roots[0] (a).actions.enable, line 5: unknown key"),
    ("roots:\n  - name: a\n    select: pid\n    match: 1\n    max_members: 0\n",
     "roots[0] (a).max_members, line 5"),
    ("roots:\n  - name: nginx\n    select: comm\n",
     'roots[0] (nginx), line 2: missing key "match"'),
]


@pytest.mark.parametrize("text,message", BAD_CONFIGS)
def test_bad_config_exits_2_naming_the_key(tmp_path: Path, text: str, message: str) -> None:
    cfg = tmp_path / "bad.yaml"
    cfg.write_text(text)
    for args in (["check-config"], ["run"], ["tree"]):
        out = subprocess.run([EXE, "--config", str(cfg), *args], capture_output=True,
                             text=True, timeout=30)
        assert out.returncode == 2, (args, out.stderr)
        assert message in out.stderr, out.stderr
        assert "Traceback" not in out.stderr


def test_missing_and_binary_config_files_exit_2(tmp_path: Path) -> None:
    out = subprocess.run([EXE, "--config", str(tmp_path / "nope.yaml"), "check-config"],
                         capture_output=True, text=True, timeout=30)
    assert out.returncode == 2 and "cannot read" in out.stderr
    binary = tmp_path / "bin.yaml"
    binary.write_bytes(b"\xff\xfe\x00garbage")
    out = subprocess.run([EXE, "--config", str(binary), "check-config"], capture_output=True,
                         text=True, timeout=30)
    assert out.returncode == 2 and "bad config" in out.stderr


# --- watch --url: the event-stream parser, fed bytes -----------------------------------

STREAM = (
    b"\xef\xbb\xbfretry: 2000\n\n"
    b": keepalive\n\n"
    b"id: web:42\nevent: exited\ndata: {\"a\":1}\n\n"
    b"event: reset\r\nid: web:142\r\ndata: one\r\ndata:two\r\n\r\n"  # CRLF; no space
    b"data\rid: web:143\r\r"  # CR alone; a field name alone is an empty value
    b"id: web:144\n\n"  # an id without data: the cursor moves, nothing is dispatched
    b"event: joined\ndata: {\"b\":2}\nunknown: x\n\n"  # keeps web:144; unknown field
    b"id: web:1\x0045\ndata: nul\n\n"  # an id holding NUL is ignored
    b"id: web:200\ndata: cut off by the end of the stream"
)
EXPECTED = [
    SseMessage("exited", '{"a":1}', "web:42"),
    SseMessage("reset", "one\ntwo", "web:142"),
    SseMessage("message", "", "web:143"),
    SseMessage("joined", '{"b":2}', "web:144"),
    SseMessage("message", "nul", "web:144"),
]


def parse(chunks: list[bytes]) -> tuple[list[SseMessage], SseParser]:
    parser = SseParser()
    out = []
    for chunk in chunks:
        out.extend(parser.feed(chunk))
    return out, parser


def test_sse_parser_reads_every_line_ending_comment_and_field_form() -> None:
    messages, parser = parse([STREAM])
    assert messages == EXPECTED
    assert parser.retry_ms == 2000
    # the message cut off at the end is not dispatched, and its id is not taken
    assert parser.last_id == "web:144"


def test_sse_parser_is_indifferent_to_how_the_bytes_are_split() -> None:
    assert parse([STREAM[i:i + 1] for i in range(len(STREAM))])[0] == EXPECTED
    # a CRLF split between two reads is one line end, not two (which would dispatch)
    messages, _ = parse([b"id: 1\r", b"\ndata: x\r", b"\n\r", b"\n"])
    assert messages == [SseMessage("message", "x", "1")]


@settings(max_examples=200, deadline=None)
@given(st.lists(st.integers(min_value=0, max_value=len(STREAM)), max_size=20))
def test_sse_parser_gives_the_same_messages_for_any_chunking(cuts: list[int]) -> None:
    edges = [0, *sorted(cuts), len(STREAM)]
    assert parse([STREAM[a:b] for a, b in itertools.pairwise(edges)])[0] == EXPECTED


def test_sse_parser_refuses_a_message_beyond_its_bound() -> None:
    parser = SseParser(max_message_bytes=100)
    parser.feed(b"data: " + b"x" * 60 + b"\n")
    with pytest.raises(SseError):
        parser.feed(b"data: " + b"x" * 60)


def test_sse_parser_takes_a_stream_without_a_bom_and_a_bom_only_at_the_start() -> None:
    assert parse([b"\xef", b"\xbb\xbfdata: a\n\n"])[0] == [SseMessage("message", "a", "")]
    # later, the same bytes are part of a field name: not a field the parser knows
    assert parse([b"data: a\n\n\xef\xbb\xbfdata: b\n\n"])[0] == [SseMessage("message", "a", "")]


# --- watch --url prints what the local watch prints --------------------------------------

EVENTS = [
    RootEvent(EventKind.JOINED, "web", 1, 1764558000.25, 100, 5000, "sh", exe="/bin/sh",
              uid=0, ppid=1, lineage_ppid=1, lineage_start=1, lineage_known=True,
              lineage_source="fork", depth=0, started_at=1764557999.5,
              ancestors=(Ancestor(1, 1, "init", 0, False),)),
    RootEvent(EventKind.JOINED, "web", 2, 1764558000.5, 101, 5001, "sh", uid=0, ppid=100,
              lineage_ppid=100, lineage_start=5000, lineage_known=True,
              lineage_source="fork", depth=1, started_at=1764558000.5),
    RootEvent(EventKind.EXEC, "web", 3, 1764558000.6, 101, 5001, "sleep", exe="/bin/sleep",
              prev_comm="sh", prev_exe="/bin/sh"),
    RootEvent(EventKind.REPARENTED, "web", 4, 1764558000.7, 101, 5001, "sleep", ppid=1,
              prev_ppid=100),
    RootEvent(EventKind.EXITED, "web", 5, 1764558000.7, 100, 5000, "sh", exit_code=3, depth=0),
    RootEvent(EventKind.CLASS, "web", 6, 1764558000.8, 101, 5001, "sleep", ppid=1,
              old_class=HEALTHY, new_class=ORPHANED, other_pid=100, other_start_ticks=5000,
              other_comm="sh"),
    RootEvent(EventKind.ACTION, "web", 7, 1764558000.9, 101, 5001, "sleep", signal=15,
              outcome=ActionOutcome.SENT),
    RootEvent(EventKind.EXITED, "web", 8, 1764558001.0, 101, 5001, "sleep", exit_signal=15,
              depth=1),
    RootEvent(EventKind.CLASS, "web", 9, 1764558001.0, 101, 5001, "sleep", old_class=ORPHANED,
              new_class=ZOMBIE, other_pid=1, other_comm="init", seconds=5.0),
    RootEvent(EventKind.CLASS, "web", 10, 1764558002.0, 101, 5001, "sleep", old_class=ZOMBIE,
              new_class=EXITED),
    RootEvent(EventKind.RESTART, "web", 11, 1764558003.0, 102, 5002, "sh"),
    RootEvent(EventKind.LEFT, "web", 12, 1764558004.0, 100, 5000, "sh"),
    RootEvent(EventKind.JOINED, "web", 13, 1764558004.5, 103, 5003, None, ppid=102,
              lineage_ppid=102, depth=1, started_at=1764558004.5),
    RootEvent(EventKind.ROOT_REMOVED, "web", 14, 1764558005.0, 0, 0, None),
]


def printed(events: list[RootEvent], as_json: bool) -> list[str]:
    known: dict[tuple[str, int, int], Any] = {}
    lines = (event_line(ev, _track(known, ev), as_json=as_json) for ev in events)
    return [line for line in lines if line is not None]


def test_events_come_back_from_their_json_unchanged() -> None:
    for ev in EVENTS:
        # what the server sends: the JSON API's form of the event, on one line
        doc = json.loads(json.dumps(event_doc(ev), separators=(",", ":")))
        assert event_from_doc(doc) == ev, ev.kind
    assert event_from_doc({"kind": "teleported", "root": "web"}) is None
    with pytest.raises(ValueError):
        event_from_doc({"kind": "exited", "root": "web", "seq": "1", "ts": 0, "pid": 1,
                        "start_ticks": 1})


@pytest.mark.parametrize("as_json", [False, True])
def test_remote_events_print_the_lines_the_local_watch_prints(as_json: bool) -> None:
    remote = [event_from_doc(json.loads(json.dumps(event_doc(ev)))) for ev in EVENTS]
    assert None not in remote
    local = printed(EVENTS, as_json)
    assert printed(remote, as_json) == local  # type: ignore[arg-type]
    assert len(local) == 11  # reparented, left and root_removed print nothing
    if as_json:
        exited = json.loads(local[3])
        assert exited["event"] == "removed" and exited["exit_code"] == 3
        assert exited["depth"] == 0 and exited["ppid"] == 1


def test_a_reset_prints_the_lost_line_of_a_local_watch() -> None:
    line = event_line(lost_event("web", 42, 100, 1764558000.0), None, as_json=True)
    doc = json.loads(line or "")
    assert doc["event"] == "lost" and doc["lost"] == 100 and doc["root"] == "web"
    assert "100 events of root web were lost" in doc["reason"]


# --- watch --url: addresses and options ---------------------------------------------------


def test_url_credentials_come_from_userinfo_or_the_environment() -> None:
    t = Target.from_url("http://ops:s%40cret@127.0.0.1:9632/proctree/", environ={})
    assert (t.host, t.port, t.prefix, t.https) == ("127.0.0.1", 9632, "/proctree", False)
    assert t.authorization == "Basic b3BzOnNAY3JldA=="  # ops:s@cret
    assert "s%40cret" not in t.shown and "ops" not in t.shown
    t = Target.from_url("https://ops@[::1]:9632", environ={"PROCTREE_PASSWORD": "pw"},
                        insecure=True)
    assert t.authorization == "Basic b3BzOnB3" and t.host == "::1" and t.https
    assert t.context is not None and not t.context.check_hostname
    assert Target.from_url("http://host", environ={}).port == 80
    assert Target.from_url("http://host", environ={"PROCTREE_PASSWORD": "x"}).authorization \
        is None


@pytest.mark.parametrize(("url", "message"), [
    ("ftp://host:1", "expected http[s]://HOST:PORT"),
    ("http://:9632", "expected http[s]://HOST:PORT"),
    ("http://host:port", "expected http[s]://HOST:PORT"),
    ("http://host:1/?root=web", "without ?query"),
    ("http://ops@host:1", "set PROCTREE_PASSWORD"),
])
def test_bad_urls_are_refused_saying_why(url: str, message: str) -> None:
    with pytest.raises(ValueError, match=message.replace("[", r"\[").replace("?", r"\?")):
        Target.from_url(url, environ={})


@pytest.mark.parametrize(("args", "message"), [
    (["--root", "web"], "--root takes one PID"),
    (["--root", "1", "--root", "2"], "--root takes one PID"),
    ([], "give --root PID, --comm NAME or --pidfile PATH"),
    (["--root", "1", "--insecure"], "--ca-file and --insecure go with --url"),
    (["--url", "http://127.0.0.1:1", "--comm", "sh"], "name the exporter's roots"),
    (["--url", "http://127.0.0.1:1", "--insecure"], "are for https:// URLs"),
])
def test_watch_options_that_do_not_go_together_exit_2(args: list[str], message: str) -> None:
    out = subprocess.run([EXE, "watch", *args], capture_output=True, text=True, timeout=30)
    assert out.returncode == 2 and message in out.stderr, out.stderr


def test_watch_url_that_nothing_answers_fails_at_once() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))  # bound, never listening: connections are refused
        port = s.getsockname()[1]
        out = subprocess.run([EXE, "watch", "--url", f"http://127.0.0.1:{port}", "--root",
                              "web"], capture_output=True, text=True, timeout=30)
    assert out.returncode == 1, out.stderr
    assert f"cannot follow http://127.0.0.1:{port}: Connection refused" in out.stderr


# --- watch --url against a scripted server: resume, reset, shutdown ----------------------

Handler = Callable[[socket.socket, str, dict[str, str]], None]


class ScriptedServer:
    """Answers each request by the next handler for its path, and records the requests."""

    def __init__(self, script: dict[str, list[Handler]]) -> None:
        self.script = script
        self.requests: list[tuple[str, dict[str, str]]] = []
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(8)
        self.sock.settimeout(0.2)
        self.port = self.sock.getsockname()[1]
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self.run, daemon=True)
        self.thread.start()

    def run(self) -> None:
        while not self.stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except TimeoutError:
                continue
            with conn:
                conn.settimeout(5)
                head = b""
                while b"\r\n\r\n" not in head:
                    data = conn.recv(4096)
                    if not data:
                        break
                    head += data
                lines = head.decode().split("\r\n")
                target = lines[0].split()[1]
                headers = dict(line.split(": ", 1) for line in lines[1:] if ": " in line)
                self.requests.append((target, headers))
                handlers = self.script.get(target.split("?")[0], [])
                if handlers:
                    handlers.pop(0)(conn, target, headers)
                else:  # nothing more scripted: a stream that stays silent
                    conn.sendall(SSE_HEAD)
                    self.stop.wait(10)

    def close(self) -> None:
        self.stop.set()
        self.thread.join(5)
        self.sock.close()


SSE_HEAD = (b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream; charset=utf-8\r\n"
            b"Connection: close\r\n\r\nretry: 2000\n\n")


def json_response(doc: Any, status: str = "200 OK") -> Handler:
    body = json.dumps(doc).encode()

    def answer(conn: socket.socket, target: str, headers: dict[str, str]) -> None:
        conn.sendall(f"HTTP/1.1 {status}\r\nContent-Type: application/json\r\n"
                     f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n".encode()
                     + body)
    return answer


def sse(*frames: bytes) -> Handler:
    def answer(conn: socket.socket, target: str, headers: dict[str, str]) -> None:
        conn.sendall(SSE_HEAD + b"".join(frames))
    return answer


def event_frame(ev: RootEvent, ident: str) -> bytes:
    data = json.dumps(event_doc(ev), separators=(",", ":")).encode()
    return f"id: {ident}\nevent: {ev.kind}\n".encode() + b"data: " + data + b"\n\n"


MEMBER = {"pid": 100, "start_ticks": 5000, "comm": "sh", "exe": "/bin/sh", "user": "root",
          "ppid": 1, "lineage_ppid": 1, "lineage_known": True, "lineage_source": "fork",
          "depth": 0, "class": "healthy", "reason": "", "started_at": 1764557999.5,
          "exited_at": None, "exit_code": None, "exit_signal": None}


def test_watch_url_resumes_after_drops_resets_and_a_restart() -> None:
    child = RootEvent(EventKind.JOINED, "web", 6, 1764558000.5, 101, 5001, "sh", ppid=100,
                      lineage_ppid=100, lineage_known=True, lineage_source="fork", depth=1,
                      started_at=1764558000.5)
    gone = RootEvent(EventKind.EXITED, "web", 7, 1764558000.7, 101, 5001, "sh", exit_code=3,
                     depth=1)
    after = RootEvent(EventKind.JOINED, "web", 3, 1764558010.0, 102, 5002, "sh", ppid=100,
                      lineage_ppid=100, depth=1, started_at=1764558010.0)
    orphan = {**MEMBER, "pid": 200, "start_ticks": 6000, "comm": "sleep", "class": "orphaned",
              "depth": 1, "ppid": 1, "lineage_ppid": 101}
    server = ScriptedServer({
        "/api/v1/roots/web": [
            json_response({"name": "web", "seq": 5, "members": [MEMBER], "tombstones": []}),
            # the exporter restarted: its log starts over; one member is new to the watch
            json_response({"name": "web", "seq": 2, "members": [MEMBER, orphan],
                           "tombstones": []}),
        ],
        "/api/v1/events": [
            # two events, then the connection drops in the middle of a third
            sse(event_frame(child, "web:6"), event_frame(gone, "web:7"),
                b"id: web:8\nevent: exited\ndata: {\"kind\":"),
            json_response({"error": "50 event streams are open"}, "503 Service Unavailable"),
            sse(b"id: web:120\nevent: reset\ndata: {\"kind\":\"reset\",\"root\":\"web\","
                b"\"lost\":112,\"seq\":120,\"reason\":\"...\"}\n\n",
                b"event: error\ndata: {\"kind\":\"error\",\"reason\":\"shutdown\","
                b"\"message\":\"the exporter is stopping\"}\n\n"),
            json_response({"error": "not ready"}, "503 Service Unavailable"),
            sse(b": keepalive\n\n", event_frame(after, "web:3")),
        ],
    })
    try:
        out = subprocess.run([EXE, "watch", "--url", f"http://127.0.0.1:{server.port}",
                              "--root", "web", "--json", "--for", "6"],
                             capture_output=True, text=True, timeout=60)
    finally:
        server.close()
    assert out.returncode == 0, out.stderr
    events = [json.loads(line) for line in out.stdout.splitlines()]
    assert [(e["event"], e["pid"]) for e in events] == [
        ("added", 100), ("added", 101), ("removed", 101), ("lost", 0), ("added", 200),
        ("added", 102)]
    assert events[2]["exit_code"] == 3 and events[2]["ppid"] == 100 and events[2]["depth"] == 1
    assert events[3]["lost"] == 112 and events[4]["class"] == "orphaned"
    streams = [h.get("Last-Event-ID") for t, h in server.requests if "/events" in t]
    # resumed after the last whole event; from the documents' seq at first and after the
    # restart; the last scripted stream closes after its event, and is resumed after it
    assert streams == ["web:5", "web:7", "web:7", "web:2", "web:2", "web:3"], server.requests
    assert all("kinds=" in t and "root=web" in t for t, _ in server.requests if "/events" in t)
    err = out.stderr
    assert "watching root=web at http://127.0.0.1:" in err
    assert "reconnecting in 0.5s" in err and "reconnecting in 1s" in err  # doubled after 503
    assert "resuming after web:7" in err and "(shutdown: the exporter is stopping)" in err


def test_watch_url_with_bad_credentials_or_an_unknown_root_exits_1() -> None:
    server = ScriptedServer({"/api/v1/roots/web": [
        json_response({"error": "401"}, "401 Unauthorized")],
        "/api/v1/roots/nope": [json_response({"error": "no root 'nope'"}, "404 Not Found")]})
    try:
        for root, message in (("web", "401 Unauthorized"), ("nope", "404 no root 'nope'")):
            out = subprocess.run([EXE, "watch", "--url", f"http://127.0.0.1:{server.port}",
                                  "--root", root], capture_output=True, text=True, timeout=30)
            assert out.returncode == 1 and message in out.stderr, out.stderr
            assert "Traceback" not in out.stderr
    finally:
        server.close()


def test_watch_url_ends_cleanly_on_sigterm() -> None:
    server = ScriptedServer({"/api/v1/roots/web": [
        json_response({"name": "web", "seq": 5, "members": [MEMBER], "tombstones": []})]})
    try:
        cli = subprocess.Popen([EXE, "watch", "--url", f"http://127.0.0.1:{server.port}",
                                "--root", "web"], stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True)
        try:
            assert cli.stderr is not None and "watching root=web" in cli.stderr.readline()
            time.sleep(0.2)
            t0 = time.monotonic()
            cli.terminate()
            out, err = cli.communicate(timeout=10)
        finally:
            if cli.poll() is None:
                cli.kill()
                cli.wait()
        assert cli.returncode == 0 and time.monotonic() - t0 < 2, err
        assert out.split()[1:4] == ["added", "100", "sh"] and "Traceback" not in err
    finally:
        server.close()


def test_watch_url_begins_again_when_the_cursor_is_from_an_earlier_log() -> None:
    # the exporter restarted while the watch was away (no shutdown frame reached it):
    # resuming, the server says the cursor belongs to an earlier change log
    newcomer = {**MEMBER, "pid": 300, "start_ticks": 7000, "comm": "late"}
    server = ScriptedServer({
        "/api/v1/roots/web": [
            json_response({"name": "web", "seq": 5, "members": [MEMBER], "tombstones": []}),
            json_response({"name": "web", "seq": 1, "members": [MEMBER, newcomer],
                           "tombstones": []}),
        ],
        "/api/v1/events": [
            sse(b"id: web:0@00aa11\nevent: reset\ndata: {\"kind\":\"reset\",\"root\":\"web\","
                b"\"lost\":0,\"seq\":0,\"ts\":1764558000.0,\"restarted\":true,"
                b"\"reason\":\"...\"}\n\n"),
        ],
    })
    try:
        out = subprocess.run([EXE, "watch", "--url", f"http://127.0.0.1:{server.port}",
                              "--root", "web", "--json", "--for", "3"],
                             capture_output=True, text=True, timeout=60)
    finally:
        server.close()
    assert out.returncode == 0, out.stderr
    events = [json.loads(line) for line in out.stdout.splitlines()]
    assert [(e["event"], e["pid"]) for e in events] == [("added", 100), ("added", 300)]
    assert "change log started over" in out.stderr
    streams = [h.get("Last-Event-ID") for t, h in server.requests if "/events" in t]
    assert streams[:2] == ["web:5", "web:1"], server.requests


@pytest.mark.kernel
@pytest.mark.parametrize("args", [["tree"], ["tree", "--json"], ["capabilities", "--json"]])
def test_a_reader_that_goes_away_stops_the_cli_quietly(args: list[str]) -> None:
    # `proctree-exporter tree | head -c 0`: the reader is gone before the first write
    read_end, write_end = os.pipe()
    os.close(read_end)
    try:
        cli = subprocess.Popen([EXE, *args], stdout=write_end, stderr=subprocess.PIPE)
    finally:
        os.close(write_end)
    try:
        _, err = cli.communicate(timeout=60)
    finally:
        if cli.poll() is None:
            cli.kill()
            cli.wait()
    assert b"Traceback" not in err and b"BrokenPipe" not in err, err.decode()
    assert cli.returncode in (0, 141)  # 141: cut off, as `ls | head` reports for ls
