"""Less privilege: the daemon as an unprivileged user, and inside a new network namespace."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from proctree_exporter.netlink import kernel_supports_filter

from .conftest import PYTHON, Janitor, wait_for
from .daemon_helpers import EXE, free_port

pytestmark = pytest.mark.kernel

NOBODY = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", "--inh-caps=-all",
          "--bounding-set=-all"]
CONFIG = ("roots:\n  - {name: host, select: pid, match: 1}\n"
          "host:\n  state_sample_interval_seconds: 1\n")


@pytest.fixture
def public_dir() -> Iterator[Path]:
    """A directory nobody can read (pytest's tmp_path lives under a root-only directory)."""
    d = Path(tempfile.mkdtemp(prefix="ptx-public-"))
    d.chmod(0o755)
    try:
        yield d
    finally:
        shutil.rmtree(d, ignore_errors=True)


def readable_config(d: Path) -> Path:
    cfg = d / "config.yaml"
    cfg.write_text(CONFIG)
    cfg.chmod(0o644)
    return cfg


def fetch(port: int, path: str, netns_of: int | None = None) -> str:
    """GET on 127.0.0.1, from inside the network namespace of ``netns_of`` if given."""
    code = ("import sys, urllib.request\n"
            f"sys.stdout.write(urllib.request.urlopen('http://127.0.0.1:{port}{path}', "
            "timeout=5).read().decode())\n")
    cmd = [PYTHON, "-c", code]
    if netns_of is not None:
        cmd = ["nsenter", "-t", str(netns_of), "-n", *cmd]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=30)
    if out.returncode != 0:
        raise OSError(out.stderr.strip().splitlines()[-1] if out.stderr else "fetch failed")
    return out.stdout


def metrics(port: int, netns_of: int | None = None) -> dict[tuple, float]:
    text = fetch(port, "/metrics", netns_of)
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for fam in text_string_to_metric_families(text) for s in fam.samples}


def wait_ready(port: int, proc: subprocess.Popen[str], netns_of: int | None = None) -> None:
    deadline = time.monotonic() + 30
    while True:
        try:
            if fetch(port, "/-/ready", netns_of).startswith("OK"):
                return
        except OSError:
            pass
        assert proc.poll() is None, proc.stderr.read() if proc.stderr else "daemon exited"
        assert time.monotonic() < deadline, "daemon not ready in 30 s"
        time.sleep(0.2)


def test_unprivileged_daemon_serves_and_tolerates_unreadable_proc(janitor: Janitor,
                                                                  public_dir: Path) -> None:
    cfg = readable_config(public_dir)
    port = free_port()
    d = janitor.spawn([*NOBODY, EXE, "--config", str(cfg), "--web.listen-address",
                       f"127.0.0.1:{port}"], stderr=subprocess.PIPE)
    wait_ready(port, d)
    status = Path(f"/proc/{d.pid}/status").read_text()
    assert "Uid:\t65534" in status and "CapEff:\t0000000000000000" in status
    # kernels from 6.6 on let anyone listen to the connector; older ones need CAP_NET_ADMIN
    expected = "netlink" if kernel_supports_filter() else "procfs"
    m = metrics(port)
    assert m[("proctree_source_info", (("filtered", "true" if expected == "netlink" else
                                        "false"), ("source", expected)))] == 1
    assert m[("proctree_root_up", (("root", "host"),))] == 1
    # root's processes: their exe is not ours to read, and that is fine
    host = json.loads(fetch(port, "/api/v1/roots/host"))
    me = next(mem for mem in host["members"] if mem["pid"] == os.getpid())
    assert me["exe"] is None and me["comm"]
    caps = {dict(labels)["category"]: dict(labels) for name, labels in m
            if name == "proctree_capability_info"}
    assert caps["actions"]["status"] == "partial"
    d.terminate()
    _, err = d.communicate(timeout=10)
    assert d.returncode == 0, err


def test_no_connector_in_a_new_netns_falls_back_to_polling(janitor: Janitor,
                                                           public_dir: Path) -> None:
    cfg = readable_config(public_dir)
    port = free_port()
    script = (f"ip link set lo up && exec {' '.join(NOBODY)} {EXE} --config {cfg} "
              f"--web.listen-address 127.0.0.1:{port}")
    d = janitor.spawn(["unshare", "-n", "sh", "-c", script], stderr=subprocess.PIPE)
    wait_ready(port, d, netns_of=d.pid)
    m = metrics(port, netns_of=d.pid)
    assert m[("proctree_source_info", (("filtered", "false"), ("source", "procfs")))] == 1
    assert m[("proctree_capability_info", (("backend", "procfs"),
                                           ("category", "process_lifecycle"),
                                           ("status", "partial")))] == 1
    # polling still sees new processes, a poll interval late
    p = janitor.spawn(["/bin/sleep", "60"])
    wait_for(lambda: any(mem["pid"] == p.pid for mem in json.loads(
        fetch(port, "/api/v1/roots/host", netns_of=d.pid))["members"]), timeout=10)
    d.terminate()
    _, err = d.communicate(timeout=10)
    assert d.returncode == 0, err
    fallback = [line for line in err.splitlines()
                if 'msg="event source" source=procfs' in line]
    assert len(fallback) == 1, "one clear line saying why, not one per poll"
    assert "proc connector unavailable" in fallback[0]
