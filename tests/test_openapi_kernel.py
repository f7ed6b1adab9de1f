"""/api/v1/openapi.json: a valid OpenAPI 3.1 document that every real response obeys.

The daemon runs with real process trees (a live child, exited ones, an orphan, a
zombie, a restart, dry-run actions, a root whose change log overflows), and each
body it sends, errors and event-stream frames included, is validated against the
document's schema for that path and status. Objects are closed for the check
(``unevaluatedProperties: false``), so a field the daemon sends that the document
does not describe fails here; and the documented paths must be exactly the paths
the app answers.
"""

from __future__ import annotations

import base64
import json
import os
import re
import signal
import socket
import subprocess
import time
import urllib.parse
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import bcrypt
import pytest
from jsonschema import Draft202012Validator
from openapi_spec_validator import OpenAPIV31SpecValidator, validate

from proctree_exporter import openapi, ui, web
from proctree_exporter.events import EventKind

from .conftest import PYTHON, REPO, Janitor, read_lines, wait_for
from .daemon_helpers import Running, start_daemon

DOC = openapi.document()
TOKEN = "ptx-openapi-holder"
CHURN = "ptx-openapi-churn"
CONFIG = f"""
roots:
  - name: job
    select: cmdline
    match: "{TOKEN}"
    capture_cmdline: true
    zombie_grace_seconds: 0.5
    actions:
      enabled: true
      term_grace_seconds: 0.5
  - name: churn
    select: cmdline
    match: "{CHURN}"
    change_log_size: 10
    max_tombstones: 0
  - name: exporter
    select: pid
    match: self
"""

# the instance: a wrapper that leaves an orphan, a zombie, children that exit with 7,
# and a live child; then it reaps the zombie, and exits 3 (the root goes down, and
# dry-run actions reach the orphans it leaves)
SCENE = f"""# {TOKEN}
import os, subprocess, sys
sys.stdin.readline()
w = subprocess.Popen(['/bin/sh', '-c', 'sleep 120 & echo $!; sleep 0.2'],
                     stdout=subprocess.PIPE, text=True)
orphan = w.stdout.readline().strip()
w.wait()
z = os.fork()
if z == 0:
    os._exit(0)
for _ in range(3):
    pid = os.fork()
    if pid == 0:
        os._exit(7)
    os.waitpid(pid, 0)
live = subprocess.Popen(['/bin/sleep', '120'])
print(orphan, z, live.pid, flush=True)
sys.stdin.readline()
os.waitpid(z, 0)
print('reaped', flush=True)
sys.stdin.readline()
os._exit(3)
"""
SECOND = f"# {TOKEN}\nimport time\ntime.sleep(120)\n"  # a new instance: a restart
STORM = f"""# {CHURN}
import os, sys
for line in sys.stdin:
    for _ in range(int(line)):
        pid = os.fork()
        if pid == 0:
            os._exit(0)
        os.waitpid(pid, 0)
    print('done', flush=True)
"""


# -- the document ---------------------------------------------------------------------------

def _closed(schema: Any) -> Any:
    """``schema`` with every object that lists its properties closed to others."""
    if isinstance(schema, list):
        return [_closed(s) for s in schema]
    if not isinstance(schema, dict):
        return schema
    out = {k: _closed(v) for k, v in schema.items()}
    if (out.get("type") == "object" and "properties" in out
            and "additionalProperties" not in out and "unevaluatedProperties" not in out):
        out["unevaluatedProperties"] = False
    return out


COMPONENTS = _closed(DOC["components"])


def check(instance: Any, schema: dict[str, Any]) -> None:
    """Validate against a schema of the document (its $refs resolved in the document)."""
    Draft202012Validator({**_closed(schema), "components": COMPONENTS}).validate(instance)


def component(name: str) -> dict[str, Any]:
    return {"$ref": f"#/components/schemas/{name}"}


def test_document_is_valid_openapi_3_1() -> None:
    validate(DOC, cls=OpenAPIV31SpecValidator)
    assert DOC["openapi"].startswith("3.1.")
    assert json.loads(openapi.body()) == DOC
    assert openapi.body() is openapi.body(), "encoded once"
    # every schema is itself valid JSON Schema 2020-12 (the OAS dialect adds keywords only)
    for schema in DOC["components"]["schemas"].values():
        Draft202012Validator.check_schema(schema)


def test_document_lists_every_path_the_app_answers() -> None:
    # _PAGES are the app's exact paths; /api/v1/roots/NAME and /ui/ASSET its prefixes
    answered = set(web._PAGES) | {"/api/v1/roots/{name}", "/ui/{asset}",
                                  "/api/v1/roots/{name}/kill",
                                  "/api/v1/roots/{name}/processes/{pid}/kill"}
    assert set(DOC["paths"]) == answered
    # GET (and HEAD, said once in info.description) but for the write API's operations,
    # which the app routes exactly as documented
    for template, item in DOC["paths"].items():
        path = template.replace("{name}", "x").replace("{pid}", "1")
        route = web._write_route(path)
        writes = {m.upper() for m in item} - {"GET"}
        if route is None:
            assert set(item) == {"get"}, template
        else:
            assert set(route[0].split(", ")) - {"GET", "HEAD"} == writes, template


def test_document_follows_the_code_s_enums() -> None:
    schemas = DOC["components"]["schemas"]
    from proctree_exporter import ActionOutcome, ProcessClass, RootEvent

    assert schemas["ProcessClass"]["enum"] == [c.value for c in ProcessClass]
    assert schemas["ActionOutcome"]["enum"] == [o.value for o in ActionOutcome]
    kinds = [k.value for k in EventKind if k is not EventKind.LOST]
    assert schemas["Event"]["properties"]["kind"]["enum"] == kinds
    per_kind = [b["if"]["properties"]["kind"]["const"] for b in schemas["Event"]["allOf"]]
    assert per_kind == kinds
    assert set(RootEvent._fields) <= set(schemas["Event"]["properties"])
    assert DOC["paths"]["/ui/{asset}"]["get"]["parameters"][0]["schema"]["enum"] == sorted(
        ui.ASSETS)


# -- talking to the daemon ------------------------------------------------------------------

class Checked:
    """Fetches from a daemon and validates each response against the document."""

    def __init__(self, d: Running, auth: str | None = None) -> None:
        self.d = d
        self.headers = {"Authorization": auth} if auth else {}
        self.seen: set[tuple[str, int]] = set()  # (path template, status)

    def get(self, template: str, path: str, status: int,
            headers: dict[str, str] | None = None) -> Any:
        got, hdrs, body = self.d.get(path, {**self.headers, **(headers or {})})
        assert got == status, (path, got, body[:300])
        return self.validate(template, status, hdrs, body)

    def validate(self, template: str, status: int, hdrs: dict[str, str], body: bytes,
                 method: str = "get") -> Any:
        op = DOC["paths"][template][method]
        resp = op["responses"].get(str(status))
        assert resp is not None, f"{template}: status {status} is not documented"
        if "$ref" in resp:
            resp = DOC["components"]["responses"][resp["$ref"].rsplit("/", 1)[1]]
        ctype = hdrs.get("Content-Type", "")
        content = resp["content"]
        media = ctype if ctype in content else ctype.split(";")[0].strip()
        assert media in content, f"{template} {status}: {ctype!r} not in {list(content)}"
        for name, h in resp.get("headers", {}).items():
            if h.get("required"):
                assert name in hdrs, f"{template} {status}: no {name} header"
                Draft202012Validator(h["schema"]).validate(hdrs[name])
        value: Any = json.loads(body) if media == "application/json" else body.decode()
        check(value, content[media]["schema"])
        self.seen.add((template, status))
        return value


def _q(**params: Any) -> str:
    return "?" + urllib.parse.urlencode(params, doseq=True)


class Stream:
    """An SSE client on a raw socket (bounded by a socket timeout and deadlines)."""

    def __init__(self, d: Running, query: str, headers: dict[str, str] | None = None) -> None:
        self.sock = socket.create_connection(("127.0.0.1", d.port), timeout=10)
        extra = "".join(f"{k}: {v}\r\n" for k, v in (headers or {}).items())
        self.sock.sendall(f"GET /api/v1/events{query} HTTP/1.1\r\nHost: x\r\n{extra}\r\n"
                          .encode())
        self.buf = b""
        self.eof = False
        while b"\r\n\r\n" not in self.buf and not self.eof:
            self._recv()
        head, _, self.buf = self.buf.partition(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        self.status = int(lines[0].split()[1])
        self.headers = dict(line.split(": ", 1) for line in lines[1:])
        self.frames: list[dict[str, str]] = []

    def _recv(self) -> None:
        try:
            data = self.sock.recv(65536)
        except TimeoutError:
            return
        if not data:
            self.eof = True
        self.buf += data

    def read(self, until: Any = None, timeout: float = 10.0) -> list[dict[str, str]]:
        """Frames (each a dict of its fields; comments dropped) until ``until(frames)`` is
        true, the server closes, or ``timeout`` passes."""
        deadline = time.monotonic() + timeout
        while True:
            while b"\n\n" in self.buf:
                block, _, self.buf = self.buf.partition(b"\n\n")
                fields: dict[str, str] = {}
                for line in block.decode().split("\n"):
                    if line.startswith(":"):
                        continue
                    key, _, val = line.partition(": ")
                    fields[key] = val
                if fields:
                    self.frames.append(fields)
            if (until is not None and until(self.frames)) or self.eof \
                    or time.monotonic() > deadline:
                return self.frames
            self._recv()

    def close(self) -> None:
        self.sock.close()


CURSOR = re.compile(DOC["components"]["schemas"]["Cursor"]["pattern"])


def check_frames(frames: list[dict[str, str]]) -> list[dict[str, Any]]:
    """Validate every frame (its fields, its data); return the data."""
    out = []
    for f in frames:
        if set(f) == {"retry"}:
            assert int(f["retry"]) > 0
            continue
        fields = {**f, **({"retry": int(f["retry"])} if "retry" in f else {})}
        check(fields, component("StreamFrame"))
        data = json.loads(f["data"])
        check(data, component("StreamData"))
        assert f["event"] == data["kind"]
        if data["kind"] != "error":
            assert CURSOR.match(f["id"]), f["id"]
        out.append(data)
    return out


# -- the real daemon ------------------------------------------------------------------------

@pytest.fixture
def daemon(janitor: Janitor, tmp_path: Path) -> Iterator[Running]:
    d = start_daemon(janitor, tmp_path, CONFIG)
    yield d
    if d.proc.poll() is None:
        d.stop()


def _send(p: subprocess.Popen[str], line: str) -> None:
    assert p.stdin is not None
    p.stdin.write(line + "\n")
    p.stdin.flush()


@pytest.mark.kernel
def test_every_response_of_a_real_daemon_obeys_the_document(daemon: Running,
                                                            janitor: Janitor) -> None:
    api = Checked(daemon)
    holder = janitor.spawn([PYTHON, "-c", SCENE], stdin=subprocess.PIPE)
    _send(holder, "go")
    orphan, zombie, live = (int(x) for x in read_lines(holder, 1, timeout=30)[0].split())
    for pid in (orphan, live):
        janitor.track(pid)
    # a root whose change log (10 events) overflows: a reset frame for a stream from 0
    storm = janitor.spawn([PYTHON, "-c", STORM], stdin=subprocess.PIPE)
    _send(storm, "20")
    assert read_lines(storm, 1, timeout=30) == ["done"]

    def job() -> dict[str, Any]:
        return api.get("/api/v1/roots/{name}", "/api/v1/roots/job", 200)

    def settled() -> dict[str, Any] | None:
        doc = job()
        return doc if doc["classes"] == {"healthy": 2, "orphaned": 1, "zombie": 1} else None

    doc = wait_for(settled, timeout=15)
    assert {m["pid"] for m in doc["members"]} == {holder.pid, orphan, zombie, live}
    assert {m["exit_code"] for m in doc["tombstones"]} >= {7}
    _send(holder, "reap")
    assert read_lines(holder, 1) == ["reaped"]
    wait_for(lambda: job()["classes"]["zombie"] == 0, timeout=10)

    # the member and lineage endpoints while the instance lives
    tree = api.get("/api/v1/tree", "/api/v1/tree" + _q(root="job"), 200)
    assert [n["pid"] for n in tree["nodes"]] == [holder.pid]
    anc = api.get("/api/v1/ancestors", "/api/v1/ancestors" + _q(root="job", pid=orphan), 200)
    assert [a["in_root"] for a in anc["ancestors"]][:2] == [True, True]  # wrapper, holder
    assert not anc["ancestors"][-1]["in_root"]
    start = next(m["start_ticks"] for m in job()["members"] if m["pid"] == live)
    api.get("/api/v1/ancestors", "/api/v1/ancestors" + _q(root="job", pid=live,
                                                          start_ticks=start), 200)

    # the instance exits: down, dry-run actions on what it leaves, then a restart
    _send(holder, "exit")
    wait_for(lambda: any(e["kind"] == "action" and e["new"] == "dry_run"
                         for e in job()["events"]), timeout=10)
    janitor.spawn([PYTHON, "-c", SECOND])
    doc = wait_for(lambda: (d := job())["restarts_total"] == 1 and d, timeout=10)
    assert doc["up"] and any(e["kind"] == "restart" for e in doc["events"])

    # every path, every documented error
    roots = api.get("/api/v1/roots", "/api/v1/roots", 200)
    assert {r["name"] for r in roots["roots"]} == {"job", "churn", "exporter"}
    for name in ("churn", "exporter"):
        api.get("/api/v1/roots/{name}", f"/api/v1/roots/{name}", 200)
        api.get("/api/v1/tree", "/api/v1/tree" + _q(root=name), 200)
    api.get("/api/v1/roots/{name}", "/api/v1/roots/nope", 404)
    api.get("/api/v1/tree", "/api/v1/tree", 400)
    api.get("/api/v1/tree", "/api/v1/tree" + _q(root="nope"), 404)
    api.get("/api/v1/ancestors", "/api/v1/ancestors" + _q(root="job"), 400)
    api.get("/api/v1/ancestors", "/api/v1/ancestors" + _q(root="job", pid="x"), 400)
    api.get("/api/v1/ancestors", "/api/v1/ancestors" + _q(root="nope", pid=1), 404)
    api.get("/api/v1/ancestors", "/api/v1/ancestors" + _q(root="job", pid=1), 404)
    api.get("/", "/", 200)
    for asset in ui.ASSETS:
        api.get("/ui/{asset}", f"/ui/{asset}", 200)
    api.get("/ui/{asset}", "/ui/nope.js", 404)
    api.get("/metrics", "/metrics", 200)
    api.get("/metrics", "/metrics", 200,
            {"Accept": "application/openmetrics-text; version=1.0.0"})
    api.get("/-/healthy", "/-/healthy", 200)
    api.get("/-/ready", "/-/ready", 200)
    served = api.get("/api/v1/openapi.json", "/api/v1/openapi.json", 200)
    assert served == DOC
    # HEAD everywhere (the head of GET), 405 for other methods
    for template in (t for t, item in DOC["paths"].items() if "get" in item):
        path = template.replace("{name}", "job").replace("{asset}", "app.js")
        path += _q(root="job", pid=live) if template == "/api/v1/ancestors" else ""
        path += _q(root="job") if template == "/api/v1/tree" else ""
        status, _, body = daemon.get(path, method="HEAD")
        assert (status, body) == (200, b""), path
        assert daemon.get(path, method="POST")[0] == 405, path

    # the event stream: every event of job from the start, each frame valid
    st = Stream(daemon, _q(root="job", since="job:0"))
    assert st.status == 200
    api.validate("/api/v1/events", 200, st.headers, b"")
    seq = job()["seq"]
    events = check_frames(st.read(until=lambda fs: any(
        f.get("id") == f"job:{seq}" for f in fs)))
    st.close()
    assert [e["seq"] for e in events if e["seq"] <= seq] == list(range(1, seq + 1))
    kinds = {e["kind"] for e in events}
    assert kinds >= {"joined", "exec", "reparented", "exited", "class", "action",
                     "root_up", "root_down", "restart"}, kinds
    assert {e["new_class"] for e in events if e["kind"] == "class"} >= {
        "orphaned", "zombie", "exited"}

    # a change log that overflowed: reset first; only the kinds asked for after it
    st = Stream(daemon, _q(root="churn", since="churn:0", kinds="exited,left"))
    churn = check_frames(st.read(until=lambda fs: len(fs) >= 4))
    st.close()
    assert churn[0]["kind"] == "reset" and churn[0]["lost"] > 0
    assert {e["kind"] for e in churn[1:]} <= {"exited", "left"}
    assert "left" in {e["kind"] for e in churn[1:]}

    # every root, from now, and a resume by Last-Event-ID
    st = Stream(daemon, "")
    st.read(until=lambda fs: bool(fs), timeout=2)  # the retry line: the stream is open
    _send(storm, "2")
    assert read_lines(storm, 1) == ["done"]
    live_frames = check_frames(st.read(until=lambda fs: sum(
        "data" in f and json.loads(f["data"])["kind"] == "left" for f in fs) >= 2))
    last_id = st.frames[-1]["id"]
    st.close()
    assert "churn" in {e["root"] for e in live_frames}
    assert {n for n, _ in (t.rsplit(":", 1) for t in last_id.split(","))} == {
        "job", "churn", "exporter"}, "the cursor names every root of the stream"
    _send(storm, "1")
    assert read_lines(storm, 1) == ["done"]
    st = Stream(daemon, _q(root="churn"), {"Last-Event-ID": last_id})
    resumed = check_frames(st.read(until=lambda fs: any(
        "data" in f and json.loads(f["data"])["kind"] == "left" for f in fs)))
    st.close()
    after = int(dict(t.rsplit(":", 1) for t in last_id.split(","))["churn"].split("@")[0])
    assert resumed and resumed[0]["seq"] == after + 1

    # stream errors are JSON
    for query, status in ((_q(root="nope"), 404), (_q(kinds="joined,bogus"), 400),
                          (_q(since="garbage"), 400), (_q(since="5"), 400)):
        api.get("/api/v1/events", "/api/v1/events" + query, status)

    # a stream open at shutdown gets a last error frame
    st = Stream(daemon, _q(root="job"))
    st.read(until=lambda fs: bool(fs), timeout=2)
    status, _, err = daemon.stop()
    assert status == 0, err
    last = check_frames(st.read(timeout=10))
    st.close()
    assert st.eof, "the stream ends at shutdown"
    assert (last[-1]["kind"], last[-1]["reason"]) == ("error", "shutdown")

    # every documented path and status was fetched and checked against the document, but
    # 401 (the next test), 429 (tests/test_daemon_security_kernel.py floods logins) and
    # 503 (still seeding: over before a test can ask)
    documented = {(t, int(code)) for t, item in DOC["paths"].items() if "get" in item
                  for code in item["get"]["responses"]
                  if code not in ("401", "429", "503")}
    assert documented <= api.seen, documented - api.seen


@pytest.mark.kernel
def test_credentials_and_stream_limit_responses_obey_the_document(janitor: Janitor,
                                                                  tmp_path: Path) -> None:
    hashed = bcrypt.hashpw(b"s3cret", bcrypt.gensalt(rounds=4)).decode()
    web_cfg = tmp_path / "web.yml"
    web_cfg.write_text(f"basic_auth_users:\n  prom: {hashed}\n")
    d = start_daemon(janitor, tmp_path, f"roots:\n  - name: me\n    select: pid\n"
                                        f"    match: {os.getpid()}\nweb:\n  max_streams: 0\n",
                     "--web.config.file", str(web_cfg))
    try:
        anon = Checked(d)
        for template in (t for t, item in DOC["paths"].items() if "get" in item):
            path = template.replace("{name}", "me").replace("{asset}", "app.js")
            public = DOC["paths"][template]["get"].get("security") == []
            anon.get(template, path, 200 if public else 401)
        auth = Checked(d, "Basic " + base64.b64encode(b"prom:s3cret").decode())
        assert auth.get("/api/v1/openapi.json", "/api/v1/openapi.json", 200) == DOC
        auth.get("/api/v1/roots/{name}", "/api/v1/roots/me", 200)
        # beyond web.max_streams: 503 with a JSON error
        auth.get("/api/v1/events", "/api/v1/events", 503)
    finally:
        status, _, err = d.stop()
    assert status == 0, err


@pytest.mark.kernel
def test_stream_of_a_root_removed_by_reload_ends_with_root_removed(daemon: Running) -> None:
    # README, Event stream: a removed root's stream ends with its root_removed event
    st = Stream(daemon, _q(root="churn"))
    assert st.status == 200
    st.read(until=lambda fs: bool(fs), timeout=2)  # the retry line: the stream is open
    daemon.config.write_text(CONFIG.replace("  - name: churn", "  - name: churn2", 1))
    daemon.proc.send_signal(signal.SIGHUP)
    ended = check_frames(st.read(timeout=10))
    st.close()
    assert st.eof, "a single-root stream ends with its root"
    assert [e["kind"] for e in ended] == ["root_removed"], ended
    assert Checked(daemon).get("/api/v1/roots/{name}", "/api/v1/roots/churn", 404)


def test_every_field_served_is_in_the_readme() -> None:
    # the document has every field a real daemon sends (the tests above close its
    # schemas); README must name each: the HTTP section for documents, Library for events
    readme = (REPO / "README.md").read_text()
    http = readme.split("\n## HTTP\n", 1)[1].split("\n## ", 1)[0]
    library = readme.split("\n## Library\n", 1)[1].split("\n## ", 1)[0]
    schemas = DOC["components"]["schemas"]
    missing = [f"{name}.{field}" for name in ("Root", "RootDetail", "Member", "Tree",
                                              "TreeNode", "Ancestor", "Instance",
                                              "KillReport", "KilledProcess", "Removed",
                                              "WriteError")
               for field in schemas[name]["properties"] if f"`{field}`" not in http]
    missing += [f"Event.{field}" for field in schemas["Event"]["properties"]
                if field not in ("old", "new") and f"`{field}`" not in library]
    assert not missing, f"served but not in README: {missing}"
