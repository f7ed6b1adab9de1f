"""`proctree-exporter roots` against the real daemon's write API, as an operator runs it.

The daemon serves its API on a Unix socket in the test's directory. The processes a
root is added for are copies of /bin/sleep under a name of their own (so their comm
is theirs alone on the host), started by a holder that reaps them as they die, the
way a supervisor would. The CLI runs as a subprocess; what it says (exit code,
stdout, stderr) is checked against what the daemon's API and /proc show.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

from .conftest import PYTHON, Janitor, read_lines, start_ticks, wait_for
from .daemon_helpers import EXE, Running, start_daemon

pytestmark = pytest.mark.kernel

# starts N copies of the binary argv[1] (N = argv[2]), prints their pids, reaps each
# as it dies, then waits to be ended by the janitor
HOLDER = (
    "import os, subprocess, sys, time\n"
    "ps = [subprocess.Popen([sys.argv[1], '300']) for _ in range(int(sys.argv[2]))]\n"
    "print(*[p.pid for p in ps], flush=True)\n"
    "try:\n"
    "    while True:\n"
    "        os.wait()\n"
    "except ChildProcessError:\n"
    "    pass\n"
    "time.sleep(300)\n"
)


def config(sock: Path) -> str:
    """Write API on ``sock`` only; one root from the config file."""
    return (f"api:\n  write:\n    enabled: true\n    socket: {sock}\n"
            f"    kill_grace_seconds: 2.0\n"
            f"roots:\n  - name: exporter\n    select: pid\n    match: self\n")


def start(janitor: Janitor, tmp_path: Path) -> tuple[Running, Path]:
    """The daemon, once its API socket is there."""
    sock = tmp_path / "api.sock"
    d = start_daemon(janitor, tmp_path, config(sock))
    wait_for(sock.exists, timeout=10)
    return d, sock


def roots(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """``proctree-exporter roots ARGS``, without PROCTREE_* variables of the caller."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith("PROCTREE_")}
    return subprocess.run([EXE, "roots", *args], capture_output=True, text=True,
                          timeout=30, env={**clean, **(env or {})})


def said(out: subprocess.CompletedProcess[str]) -> str:
    return f"rc={out.returncode}\nstdout:\n{out.stdout}\nstderr:\n{out.stderr}"


def listed(sock: Path) -> dict[str, dict[str, Any]]:
    """The daemon's roots by name, from ``roots list --json``."""
    out = roots("--socket", str(sock), "list", "--json")
    assert out.returncode == 0, said(out)
    return {r["name"]: r for r in json.loads(out.stdout)["roots"]}


def sleepers(janitor: Janitor, tmp_path: Path, n: int) -> tuple[str, list[int]]:
    """``n`` sleeping processes with a comm of their own: (that comm, their pids)."""
    comm = f"ptxcli{secrets.token_hex(4)}"  # 14 characters: the kernel keeps 15
    binary = tmp_path / comm
    shutil.copy("/bin/sleep", binary)
    holder = janitor.spawn([PYTHON, "-c", HOLDER, str(binary), str(n)])
    pids = [int(p) for p in read_lines(holder, 1)[0].split()]
    for pid in pids:
        janitor.track(pid)
    return comm, pids


def alive(pid: int, start: int | None) -> bool:
    return start is not None and start_ticks(pid) == start


def test_roots_add_list_kill_and_remove_over_the_socket(janitor: Janitor,
                                                        tmp_path: Path) -> None:
    d, sock = start(janitor, tmp_path)
    comm, (p1, p2) = sleepers(janitor, tmp_path, 2)
    s1, s2 = start_ticks(p1), start_ticks(p2)
    at = ("--socket", str(sock))

    out = roots(*at, "add", "ptx", "--select", "comm", "--match", comm)
    assert out.returncode == 0, said(out)
    assert re.fullmatch(r"created root ptx: \d+ members\n", out.stdout), said(out)
    wait_for(lambda: listed(sock).get("ptx", {}).get("member_count") == 2, timeout=10)

    # the socket from the environment; config roots and runtime roots told apart
    out = roots("list", env={"PROCTREE_EXPORTER_SOCKET": str(sock)})
    assert out.returncode == 0, said(out)
    head, *rows = out.stdout.splitlines()
    assert head.split() == ["NAME", "ORIGIN", "STATE", "MEMBERS", "ORPHANED", "ZOMBIE",
                            "CONFIDENCE"], said(out)
    by_name = {r.split()[0]: r.split() for r in rows}
    assert by_name["ptx"][1:6] == ["runtime", "up", "2", "0", "0"], said(out)
    assert by_name["ptx"][6] in ("exact", "degraded"), said(out)
    assert by_name["exporter"][1:3] == ["config", "up"], said(out)
    members = {m["pid"] for m in d.json("/api/v1/roots/ptx")["members"]}
    assert members == {p1, p2}

    out = roots(*at, "add", "ptx", "--select", "comm", "--match", comm)
    assert out.returncode == 0, said(out)
    assert out.stdout == "root ptx exists unchanged: 2 members\n", said(out)

    out = roots(*at, "add", "ptx", "--select", "comm", "--match", comm + "x")
    assert out.returncode == 4, said(out)
    assert out.stderr.startswith("proctree-exporter: "), said(out)

    out = roots(*at, "add", "ptxbad", "--select", "comm", "--match", comm, "--set",
                "nosuchkey=1")
    assert out.returncode == 2, said(out)
    assert "nosuchkey" in out.stderr, said(out)
    assert "ptxbad" not in listed(sock)

    # a pid that is no member of the root is not looked for elsewhere
    out = roots(*at, "kill", "ptx", "--pid", str(os.getpid()))
    assert out.returncode == 3, said(out)

    out = roots(*at, "kill", "ptx", "--pid", str(p1), "--grace", "1")
    assert out.returncode == 0, said(out)
    line, summary = out.stdout.splitlines()
    pid, shown_comm, outcome, signals = line.split()
    assert (int(pid), shown_comm) == (p1, comm), said(out)
    assert outcome in ("exited", "killed") and signals.startswith("SIGTERM"), said(out)
    assert "0 remaining" in summary, said(out)
    wait_for(lambda: not alive(p1, s1), timeout=10)
    assert alive(p2, s2), "the other member was hit too"

    out = roots(*at, "remove", "ptx", "--kill", "--grace", "1")
    assert out.returncode == 0, said(out)
    lines = out.stdout.splitlines()
    assert lines[-1] == "removed root ptx", said(out)
    assert [int(x.split()[0]) for x in lines[:-2]] == [p2], said(out)
    wait_for(lambda: not alive(p2, s2), timeout=10)
    assert "ptx" not in listed(sock)
    assert d.get("/api/v1/roots/ptx")[0] == 404

    for name in ("ptx", "nosuchroot"):
        out = roots(*at, "remove", name)
        assert out.returncode == 3, said(out)
        assert out.stderr.startswith("proctree-exporter: "), said(out)


def test_settings_are_typed_and_dotted_keys_nest(janitor: Janitor, tmp_path: Path) -> None:
    d, sock = start(janitor, tmp_path)
    comm, _ = sleepers(janitor, tmp_path, 1)
    out = roots("--socket", str(sock), "add", "ptxset", "--select", "comm", "--match", comm,
                "--set", "include_root=false", "--set", "max_depth=3",
                "--set", "actions.enabled=false", "--json")
    assert out.returncode == 0, said(out)
    assert json.loads(out.stdout)["member_count"] >= 0, said(out)
    assert listed(sock)["ptxset"]["include_root"] is False
    # no value, a value that is not YAML, no key, a key --select gives: said before sending
    for bad in ("max_depth", "max_depth=[", "=1", "select=pid", "actions..enabled=1"):
        out = roots("--socket", str(sock), "add", "ptxset2", "--select", "comm",
                    "--match", comm, "--set", bad)
        assert out.returncode == 2, said(out)
    assert "ptxset2" not in listed(sock)
    assert d.proc.poll() is None


def test_url_without_credentials_may_read_but_not_write(janitor: Janitor,
                                                        tmp_path: Path) -> None:
    d, sock = start(janitor, tmp_path)
    out = roots("--url", d.url, "list")
    assert out.returncode == 0, said(out)
    assert "exporter" in out.stdout, said(out)
    out = roots("--url", d.url, "add", "ptxurl", "--select", "comm", "--match", "nothing")
    assert out.returncode == 5, said(out)
    assert out.stderr.startswith("proctree-exporter: "), said(out)
    # the URL from the environment; refused the same way
    out = roots("remove", "exporter", env={"PROCTREE_EXPORTER_URL": d.url})
    assert out.returncode == 5, said(out)
    assert set(listed(sock)) == {"exporter"}


def test_list_json_is_the_servers_document(janitor: Janitor, tmp_path: Path) -> None:
    _, sock = start(janitor, tmp_path)
    out = roots("--socket", str(sock), "list", "--json")
    assert out.returncode == 0, said(out)
    doc = json.loads(out.stdout)
    (root,) = doc["roots"]
    assert root["name"] == "exporter" and root["up"] and root["runtime"] is False
    assert root["member_count"] >= 1


def test_a_socket_nobody_serves_is_named_with_the_os_error(tmp_path: Path) -> None:
    sock = tmp_path / "nothing.sock"
    out = roots("--socket", str(sock), "list")
    assert out.returncode == 1, said(out)
    assert out.stderr == (f"proctree-exporter: cannot connect to {sock}: No such file or "
                          f"directory; is the exporter running with api.write.socket set?\n")
    out = roots("--socket", str(sock), "--insecure", "list")
    assert out.returncode == 2, said(out)
