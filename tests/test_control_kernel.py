"""The write API on the real kernel: runtime roots over real trees, kills, who may write.

The trees are started by a holder that is a child subreaper, as a job supervisor
would be: a wrapper's orphans are handed to it and it reaps every child that dies,
so a killed process is gone from /proc, not a zombie of this sandbox's PID 1. The
daemon serves the API on a Unix socket in the test's directory and, for basic-auth
users, on its TCP port; every answer is checked against the OpenAPI document.
"""

from __future__ import annotations

import base64
import http.client
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import bcrypt
import pytest

from proctree_exporter import openapi
from proctree_exporter.control import cgroup2_mount

from .conftest import PYTHON, Janitor, read_lines, running, spawn_at_pid, start_ticks, wait_for
from .daemon_helpers import EXE, Running, start_daemon, value
from .test_openapi_kernel import check

pytestmark = pytest.mark.kernel
DOC = openapi.document()

# A child subreaper that runs the job (argv[1], a shell command) and an outsider (a
# sleep that is not part of the job), prints both pids, and reaps every child it gets.
HOLDER = r"""
import ctypes, os, subprocess, sys, time
assert ctypes.CDLL(None, use_errno=True).prctl(36, 1, 0, 0, 0) == 0  # CHILD_SUBREAPER
job = subprocess.Popen(["/bin/sh", "-c", sys.argv[1]])
outsider = subprocess.Popen(["/bin/sleep", "300"])
print(job.pid, outsider.pid, flush=True)
while True:
    try:
        os.wait()
    except ChildProcessError:
        time.sleep(0.05)
"""
# the job: a wrapper that leaves two orphans, a live child, and itself (exec'd sleep)
JOB = "sh -c 'sleep 301 & sleep 302 &'; sleep 303 & exec sleep 304"


class Api:
    """Requests over the daemon's Unix socket (or its TCP port, with ``auth``)."""

    def __init__(self, d: Running, sock: Path | None, auth: tuple[str, str] | None = None):
        self.d, self.sock, self.auth = d, sock, auth

    def call(self, method: str, path: str, body: Any = None) -> tuple[int, Any]:
        if self.sock is not None:
            conn: http.client.HTTPConnection = _Unix(str(self.sock))
        else:
            conn = http.client.HTTPConnection("127.0.0.1", self.d.port, timeout=30)
        headers = {"Content-Type": "application/json"}
        if self.auth is not None:
            token = base64.b64encode(f"{self.auth[0]}:{self.auth[1]}".encode()).decode()
            headers["Authorization"] = "Basic " + token
        data = json.dumps(body).encode() if body is not None else None
        try:
            conn.request(method, path, body=data, headers=headers)
            r = conn.getresponse()
            raw = r.read()
            ctype = r.getheader("Content-Type", "")
            doc = json.loads(raw) if ctype.startswith("application/json") else raw.decode()
            return r.status, doc
        finally:
            conn.close()

    def checked(self, method: str, template: str, path: str, status: int,
                body: Any = None) -> Any:
        """The request's answer, which must have ``status`` and obey the document."""
        got, doc = self.call(method, path, body)
        assert got == status, (method, path, got, doc)
        resp = DOC["paths"][template][method.lower()]["responses"][str(status)]
        if "$ref" in resp:
            resp = DOC["components"]["responses"][resp["$ref"].rsplit("/", 1)[1]]
        check(doc, resp["content"]["application/json"]["schema"])
        return doc


class _Unix(http.client.HTTPConnection):
    def __init__(self, path: str) -> None:
        super().__init__("localhost", timeout=30)
        self.path = path

    def connect(self) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(30)
        self.sock.connect(self.path)


def write_config(sock: Path, *, users: str = "[]", extra: str = "") -> str:
    return (f"api:\n  write:\n    enabled: true\n    socket: {sock}\n    users: {users}\n"
            f"    socket_mode: '0666'\n"
            f"roots:\n  - name: exporter\n    select: pid\n    match: self\n{extra}")


def start_job(janitor: Janitor, command: str = JOB) -> tuple[subprocess.Popen[str], int, int]:
    """The holder with its job and outsider; returns (holder, job pid, outsider pid)."""
    holder = janitor.spawn([PYTHON, "-c", HOLDER, command])
    job, outsider = (int(x) for x in read_lines(holder, 1, timeout=30)[0].split())
    janitor.track(job)
    janitor.track(outsider)
    return holder, job, outsider


def descendants(holder: int) -> dict[int, int]:
    """The holder's children now: pid -> start ticks."""
    out = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    fields = f.read().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == holder and fields[0] not in "ZX":
                out[int(entry)] = int(fields[19])
    return out


def orphans_ready(holder: int, job: int, outsider: int) -> list[int] | None:
    """The two orphans once the wrapper has exited and they are the holder's, and the
    job has started its live child and exec'd (its last step)."""
    found = [p for p in descendants(holder) if p not in (job, outsider)]
    try:
        with open(f"/proc/{job}/comm") as f:
            done = f.read().strip() == "sleep"
    except OSError:
        done = False
    return found if len(found) == 2 and done else None


def test_a_runtime_root_finds_its_orphans_and_a_kill_ends_exactly_its_tree(
        janitor: Janitor, tmp_path: Path) -> None:
    sock = tmp_path / "api.sock"
    d = start_daemon(janitor, tmp_path, write_config(sock))
    api = Api(d, sock)
    holder, job, outsider = start_job(janitor)
    orphans = wait_for(lambda: orphans_ready(holder.pid, job, outsider), timeout=10)
    for pid in orphans:
        janitor.track(pid)

    # added after the fact: every member is there at once, the orphans classed
    doc = api.checked("PUT", "/api/v1/roots/{name}", "/api/v1/roots/job", 201,
                      {"select": "pid", "match": job, "zombie_grace_seconds": 0})
    live = {m["pid"]: m for m in doc["members"]}
    child = next(p for p, m in live.items() if m["depth"] == 1 and p not in orphans)
    assert set(live) == {job, child, *orphans}, doc["members"]
    assert {live[p]["class"] for p in orphans} == {"orphaned"}, json.dumps(doc, indent=1)
    assert live[child]["class"] == "healthy" and doc["runtime"] is True
    assert doc["confidence"] == "exact", doc["confidence_reason"]
    assert all(live[p]["lineage_source"] == "fork" for p in orphans)
    # the same again: unchanged; different: conflict
    api.checked("PUT", "/api/v1/roots/{name}", "/api/v1/roots/job", 200,
                {"select": "pid", "match": job, "zombie_grace_seconds": 0})
    err = api.checked("PUT", "/api/v1/roots/{name}", "/api/v1/roots/job", 409,
                      {"select": "pid", "match": outsider})
    assert err["key"] == "name"
    assert api.checked("PUT", "/api/v1/roots/{name}", "/api/v1/roots/x", 400,
                       {"select": "pid", "match": job, "bogus": 1})["key"] == "bogus"
    assert api.checked("PUT", "/api/v1/roots/{name}", "/api/v1/roots/exporter", 409,
                       {"select": "pid", "match": "self"})["key"] == "name"

    # a member's pid reused between listing and kill: the stranger is not signalled
    victim = orphans[0]
    victim_start = live[victim]["start_ticks"]
    os.kill(victim, signal.SIGKILL)
    wait_for(lambda: not running(victim, victim_start), timeout=10)
    stranger = spawn_at_pid(janitor, victim)
    out = api.checked("POST", "/api/v1/roots/{name}/processes/{pid}/kill",
                      f"/api/v1/roots/job/processes/{victim}/kill?start_ticks={victim_start}",
                      404)
    assert out["key"] == "pid"
    assert running(stranger.pid), "a stranger holding a member's old pid is never signalled"
    api.checked("POST", "/api/v1/roots/{name}/processes/{pid}/kill",
                f"/api/v1/roots/job/processes/{child}/kill", 400)  # no start_ticks

    # one member, by identity
    one = api.checked("POST", "/api/v1/roots/{name}/processes/{pid}/kill",
                      f"/api/v1/roots/job/processes/{child}/kill"
                      f"?start_ticks={live[child]['start_ticks']}&grace_seconds=1", 200)
    assert (one["target"], one["complete"]) == ("process", True)
    assert [(p["pid"], p["outcome"]) for p in one["processes"]] == [(child, "exited")]
    assert not running(child, live[child]["start_ticks"]) and running(job)

    # the whole tree: the instance and the orphan left, nothing else
    report = api.checked("POST", "/api/v1/roots/{name}/kill", "/api/v1/roots/job/kill", 200)
    assert report["complete"] and report["method"] == "signals"
    assert {p["pid"] for p in report["processes"]} == {job, orphans[1]}
    assert {p["outcome"] for p in report["processes"]} == {"exited"}
    assert all(p["signals"] == ["SIGTERM"] for p in report["processes"])
    wait_for(lambda: not running(job, live[job]["start_ticks"])
             and not running(orphans[1], live[orphans[1]]["start_ticks"]), timeout=10)
    assert running(outsider) and running(stranger.pid) and running(holder.pid)
    # (documents are rebuilt at most every 0.5 s while a root changes)
    wait_for(lambda: (doc := api.checked("GET", "/api/v1/roots/{name}", "/api/v1/roots/job",
                                         200))["member_count"] == 0 and not doc["up"],
             timeout=5)

    removed = api.checked("DELETE", "/api/v1/roots/{name}", "/api/v1/roots/job", 200)
    assert removed == {"root": "job", "removed": True, "kill": None}
    api.checked("DELETE", "/api/v1/roots/{name}", "/api/v1/roots/job", 404)
    api.checked("POST", "/api/v1/roots/{name}/kill", "/api/v1/roots/exporter/kill", 409)
    m = d.metrics()
    assert value(m, "proctree_api_writes_total", operation="ensure", code="201") == 1
    assert value(m, "proctree_api_writes_total", operation="kill_tree", code="200") == 1
    assert value(m, "proctree_runtime_roots") == 0
    status, _, err = d.stop()
    assert status == 0, err
    assert 'msg="api write" who="unix:pid=' in err and "operation=kill_tree root=job" in err


def test_delete_with_kill_ends_the_tree_even_when_sigterm_is_ignored(
        janitor: Janitor, tmp_path: Path) -> None:
    sock = tmp_path / "api.sock"
    d = start_daemon(janitor, tmp_path, write_config(sock))
    api = Api(d, sock)
    # a tree that ignores SIGTERM and keeps forking while it can
    holder, job, outsider = start_job(
        janitor, "trap '' TERM; (trap '' TERM; sleep 301 &) ; "
        "while true; do sleep 0.05; done")
    wait_for(lambda: len(descendants(holder.pid)) >= 3, timeout=10)
    api.checked("PUT", "/api/v1/roots/{name}", "/api/v1/roots/stubborn", 201,
                {"select": "pid", "match": job})
    t0 = time.monotonic()
    out = api.checked("DELETE", "/api/v1/roots/{name}",
                      "/api/v1/roots/stubborn?kill=true&grace_seconds=0.5", 200)
    report = out["kill"]
    assert report["complete"], report
    outcomes = {p["pid"]: p["outcome"] for p in report["processes"]}
    assert outcomes[job] == "killed"
    assert all(o in ("killed", "exited", "gone") for o in outcomes.values())
    assert time.monotonic() - t0 < 10
    wait_for(lambda: set(descendants(holder.pid)) == {outsider}, timeout=10)
    api.checked("GET", "/api/v1/roots/{name}", "/api/v1/roots/stubborn", 404)


def test_a_cgroup_root_is_killed_through_cgroup_kill(janitor: Janitor, tmp_path: Path) -> None:
    mount = cgroup2_mount()
    assert mount is not None, "cgroup v2 is mounted on every machine this runs on"
    name = f"ptxtest-{secrets.token_hex(4)}"
    cg = mount / name
    cg.mkdir()
    try:
        sock = tmp_path / "api.sock"
        d = start_daemon(janitor, tmp_path, write_config(sock))
        api = Api(d, sock)
        holder, job, outsider = start_job(janitor, f"echo $$ > {cg}/cgroup.procs; {JOB}")
        wait_for(lambda: orphans_ready(holder.pid, job, outsider), timeout=10)
        in_cgroup = {int(p) for p in (cg / "cgroup.procs").read_text().split()}
        assert job in in_cgroup and len(in_cgroup) == 4
        doc = api.checked("PUT", "/api/v1/roots/{name}", "/api/v1/roots/cg", 201,
                          {"select": "cgroup", "match": f"/{name}"})
        assert {m["pid"] for m in doc["members"]} == in_cgroup
        report = api.checked("POST", "/api/v1/roots/{name}/kill",
                             "/api/v1/roots/cg/kill?grace_seconds=0", 200)
        assert (report["method"], report["complete"]) == ("cgroup.kill", True), report
        assert {p["outcome"] for p in report["processes"]} == {"killed"}
        assert all("cgroup.kill" in p["signals"] for p in report["processes"])
        wait_for(lambda: not (cg / "cgroup.procs").read_text().split(), timeout=10)
        assert running(outsider) and running(holder.pid)
    finally:
        for pid in (cg / "cgroup.procs").read_text().split() if cg.exists() else ():
            os.kill(int(pid), signal.SIGKILL)
        wait_for(lambda: not cg.exists() or not (cg / "cgroup.procs").read_text().split(),
                 timeout=10)
        if cg.exists():
            cg.rmdir()


def test_only_writers_write(janitor: Janitor, tmp_path: Path) -> None:
    hashed = bcrypt.hashpw(b"pw", bcrypt.gensalt(rounds=4)).decode()
    web = tmp_path / "web.yml"
    web.write_text(f"basic_auth_users:\n  ci: {hashed}\n  prom: {hashed}\n")
    # a directory another uid can search: pytest's tmp_path is root's alone
    sock_dir = Path(tempfile.mkdtemp(prefix="ptx-sock-"))
    sock_dir.chmod(0o755)
    try:
        _only_writers_write(janitor, tmp_path, web, sock_dir / "api.sock", hashed)
    finally:
        shutil.rmtree(sock_dir, ignore_errors=True)


def _only_writers_write(janitor: Janitor, tmp_path: Path, web: Path, sock: Path,
                        hashed: str) -> None:
    d = start_daemon(janitor, tmp_path, write_config(sock, users="[ci]"),
                     "--web.config.file", str(web))
    body = {"select": "comm", "match": "ptx-nothing"}
    tcp = Api(d, None)
    assert tcp.call("PUT", "/api/v1/roots/a", body)[0] == 401  # no credentials
    assert Api(d, None, ("ci", "wrong")).call("PUT", "/api/v1/roots/a", body)[0] == 401
    reader = Api(d, None, ("prom", "pw"))
    assert reader.checked("GET", "/api/v1/roots/{name}", "/api/v1/roots/exporter", 200)
    err = reader.checked("PUT", "/api/v1/roots/{name}", "/api/v1/roots/a", 403, body)
    assert "'prom' may not write" in err["error"]
    writer = Api(d, None, ("ci", "pw"))
    writer.checked("PUT", "/api/v1/roots/{name}", "/api/v1/roots/a", 201, body)
    reader.checked("DELETE", "/api/v1/roots/{name}", "/api/v1/roots/a", 403)
    writer.checked("DELETE", "/api/v1/roots/{name}", "/api/v1/roots/a", 200)

    # the socket: root is served without basic auth; another uid is not
    Api(d, sock).checked("GET", "/api/v1/roots/{name}", "/api/v1/roots/exporter", 200)
    nobody = subprocess.run(  # the system's python: the venv's is root's alone
        ["/usr/bin/python3", "-c", "import http.client, socket, sys\n"
         "c = http.client.HTTPConnection('localhost')\n"
         "c.sock = socket.socket(socket.AF_UNIX); c.sock.connect(sys.argv[1])\n"
         "c.request('PUT', '/api/v1/roots/b', body=b'{}')\n"
         "r = c.getresponse(); print(r.status, r.read().decode())", str(sock)],
        user=65534, capture_output=True, text=True, timeout=30)
    assert nobody.stdout.startswith("403 "), nobody
    assert "uid 65534 may not use this socket" in nobody.stdout
    assert oct(os.stat(sock).st_mode & 0o777) == "0o666"
    status, _, err = d.stop()
    assert status == 0, err
    assert not sock.exists(), "the socket is removed at shutdown"
    assert 'who=user:prom operation=ensure root=a code=403' in err


def test_configs_that_would_open_writes_to_anyone_are_refused(janitor: Janitor,
                                                              tmp_path: Path) -> None:
    cfg = tmp_path / "c.yaml"
    cfg.write_text("api:\n  write:\n    enabled: true\n")
    out = subprocess.run([EXE, "--config", str(cfg), "check-config"], capture_output=True,
                         text=True, timeout=60)
    assert out.returncode == 2 and "api.write.users" in out.stderr, out
    cfg.write_text("api:\n  write:\n    enabled: true\n    users: [ci]\n")
    out = subprocess.run([EXE, "--config", str(cfg), "--web.listen-address",
                          "127.0.0.1:0"], capture_output=True, text=True, timeout=60)
    assert out.returncode == 2, out
    assert "writes over TCP would be unauthenticated" in out.stderr
    web = tmp_path / "web.yml"
    web.write_text("basic_auth_users:\n  prom: "
                   + bcrypt.hashpw(b"pw", bcrypt.gensalt(rounds=4)).decode() + "\n")
    out = subprocess.run([EXE, "--config", str(cfg), "--web.config.file", str(web),
                          "check-config"], capture_output=True, text=True, timeout=60)
    assert out.returncode == 2 and "'ci' not in the web config" in out.stderr, out
    # the write API off (the default): every write is 403, reads as before
    d = start_daemon(janitor, tmp_path, "roots:\n  - name: exporter\n    select: pid\n"
                                        "    match: self\n")
    status, body = Api(d, None).call("PUT", "/api/v1/roots/a", {"select": "comm",
                                                                "match": "x"})
    assert status == 403 and "api.write.enabled" in body["error"]
    assert Api(d, None).call("POST", "/api/v1/roots/exporter", None)[0] == 405


def test_fifty_writers_during_a_fork_storm_leave_no_root_behind(janitor: Janitor,
                                                                tmp_path: Path) -> None:
    sock = tmp_path / "api.sock"
    d = start_daemon(janitor, tmp_path, write_config(sock))
    storm = janitor.spawn([PYTHON, "-c", STORM, "6"])  # stops by itself after 6 s
    failures: list[Any] = []
    created = [0]
    lock = threading.Lock()

    def client(n: int) -> None:
        api = Api(d, sock)
        try:
            for i in range(4):
                name = f"c{n}-{i}"
                st, doc = api.call("PUT", f"/api/v1/roots/{name}",
                                   {"select": "comm", "match": "sh"})
                if st != 201:
                    failures.append((name, st, doc))
                    continue
                with lock:
                    created[0] += 1
                st, doc = api.call("DELETE", f"/api/v1/roots/{name}")
                if st != 200:
                    failures.append((name, st, doc))
        except Exception as exc:  # a broken connection is a failure, not a crash
            failures.append((n, repr(exc)))

    threads = [threading.Thread(target=client, args=(n,)) for n in range(50)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not any(t.is_alive() for t in threads)
    assert storm.wait(timeout=60) == 0
    assert not failures, failures[:5]
    assert created[0] == 200
    names = {r["name"] for r in Api(d, sock).checked("GET", "/api/v1/roots", "/api/v1/roots",
                                                     200)["roots"]}
    assert names == {"exporter"}, "no leaked root"
    m = d.metrics()
    assert value(m, "proctree_runtime_roots") == 0
    assert value(m, "proctree_api_writes_total", operation="ensure", code="201") == 200
    assert value(m, "proctree_api_writes_total", operation="remove", code="200") == 200
    # the tree stayed consistent: the exporter's own root still holds exactly itself
    doc = Api(d, sock).checked("GET", "/api/v1/roots/{name}", "/api/v1/roots/exporter", 200)
    assert [m_["pid"] for m_ in doc["members"]] == [d.proc.pid]
    assert value(m, "proctree_tree_over_capacity_total") in (None, 0)
    status, _, err = d.stop()
    assert status == 0, err


# forks and reaps short-lived children for argv[1] seconds (about a thousand a second)
STORM = r"""
import os, sys, time
end = time.monotonic() + float(sys.argv[1])
while time.monotonic() < end:
    for _ in range(50):
        pid = os.fork()
        if pid == 0:
            os._exit(0)
        os.waitpid(pid, 0)
    time.sleep(0.02)
"""


def test_a_runtime_root_survives_kill_9_of_the_daemon(janitor: Janitor,
                                                      tmp_path: Path) -> None:
    sock = tmp_path / "api.sock"
    state = tmp_path / "state"
    cfg = write_config(sock, extra=f"state:\n  path: {state}\n  interval_seconds: 0.5\n")
    d = start_daemon(janitor, tmp_path, cfg)
    api = Api(d, sock)
    holder, job, outsider = start_job(janitor)
    orphans = wait_for(lambda: orphans_ready(holder.pid, job, outsider), timeout=10)
    for pid in orphans:
        janitor.track(pid)
    api.checked("PUT", "/api/v1/roots/{name}", "/api/v1/roots/job", 201,
                {"select": "pid", "match": job})
    gone = janitor.spawn(["/bin/sleep", "300"])
    api.checked("PUT", "/api/v1/roots/{name}", "/api/v1/roots/gone", 201,
                {"select": "pid", "match": gone.pid})
    wait_for(lambda: state.exists() and b'"name":"gone"' in state.read_bytes(), timeout=10)
    d.stop(signal.SIGKILL)
    os.kill(gone.pid, signal.SIGKILL)  # its process ends while the exporter is down
    gone.wait()

    d2 = start_daemon(janitor, tmp_path, cfg)
    api2 = Api(d2, sock)
    doc = api2.checked("GET", "/api/v1/roots/{name}", "/api/v1/roots/job", 200)
    live = {m["pid"]: m for m in doc["members"]}
    assert doc["runtime"] and doc["up"]
    assert set(orphans) <= set(live), doc["members"]
    assert {live[p]["class"] for p in orphans} == {"orphaned"}
    assert {live[p]["lineage_source"] for p in orphans} == {"restored"}
    assert doc["confidence"] == "exact", doc["confidence_reason"]
    api2.checked("GET", "/api/v1/roots/{name}", "/api/v1/roots/gone", 404)
    m = d2.metrics()
    assert value(m, "proctree_runtime_roots") == 1
    assert value(m, "proctree_runtime_roots_restored") == 1
    assert value(m, "proctree_runtime_roots_gone_total") == 1
    # still a runtime root: it can be killed and removed
    out = api2.checked("DELETE", "/api/v1/roots/{name}", "/api/v1/roots/job?kill=true", 200)
    assert out["kill"]["complete"]
    assert {p["pid"] for p in out["kill"]["processes"]} >= {job, *orphans}
    wait_for(lambda: set(descendants(holder.pid)) == {outsider}, timeout=10)
    assert start_ticks(outsider) is not None
    status, _, err = d2.stop()
    assert status == 0, err
    assert "runtime root gone" in err
