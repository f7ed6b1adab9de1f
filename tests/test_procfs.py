"""/proc parsers on files copied from a real /proc, and readers on the live one."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from proctree_exporter import procfs
from proctree_exporter.clock import boottime_offset_ns, monotonic_to_ticks

FIX = Path(__file__).parent / "fixtures" / "proc"


def fixture(name: str, what: str) -> str:
    return (FIX / name / what).read_bytes().decode()


def test_stat_with_spaces_and_parentheses_in_comm() -> None:
    st = procfs.parse_stat(fixture("parens", "stat"))
    assert st.comm == "a) b (c"
    assert (st.pid, st.state, st.ppid, st.num_threads, st.start_ticks) == (9037, "S", 8995, 1,
                                                                            73116)


def test_stat_of_shell_zombie_and_kernel_thread() -> None:
    sh = procfs.parse_stat(fixture("shell", "stat"))
    assert (sh.pid, sh.comm, sh.state, sh.ppid, sh.start_ticks) == (9112, "sh", "S", 9071, 73475)
    z = procfs.parse_stat(fixture("zombie", "stat"))
    assert (z.comm, z.state, z.ppid) == ("python3", "Z", 9038)
    k = procfs.parse_stat(fixture("kthread", "stat"))
    assert (k.pid, k.comm, k.ppid) == (2, "kthreadd", 0)


def test_status_identity_fields() -> None:
    s = procfs.parse_status(fixture("parens", "status"))
    assert s.name == "a) b (c" and s.tgid == 9037 and s.ppid == 8995
    assert s.uids == (0, 0, 0, 0) and s.threads == 1


def test_cmdline_joins_argv_and_bounds_length() -> None:
    raw = (FIX / "shell" / "cmdline").read_bytes()
    assert procfs.parse_cmdline(raw, 4096) == "/bin/sh -c sleep 300; echo 'two words'"
    assert procfs.parse_cmdline(raw, 7) == "/bin/sh"
    assert procfs.parse_cmdline(b"", 10) == ""  # kernel threads and zombies


def test_cgroup_v2_path_from_a_hybrid_host() -> None:
    assert procfs.parse_cgroup(fixture("shell", "cgroup")) == "/"
    assert procfs.parse_cgroup("0::/system.slice/ssh.service\n") == "/system.slice/ssh.service"
    assert procfs.parse_cgroup("4:memory:/x\n") is None


@pytest.mark.parametrize("text", ["", "garbage", "12 (x", "12 (x) S 1 2",
                                  "x (y) S a b c d e f g h i j k l m n o p q r s t u"])
def test_malformed_stat_is_a_value_error(text: str) -> None:
    with pytest.raises(ValueError):
        procfs.parse_stat(text)


@settings(max_examples=1000, deadline=None)
@given(st.text(max_size=200))
def test_any_stat_text_parses_or_raises_value_error(text: str) -> None:
    try:
        procfs.parse_stat(text)
    except ValueError:
        pass


@settings(max_examples=500, deadline=None)
@given(st.text(max_size=300))
def test_any_status_text_parses_or_raises_value_error(text: str) -> None:
    try:
        procfs.parse_status(text)
    except ValueError:
        pass


def test_readers_say_gone_for_a_vanished_process() -> None:
    p = subprocess.Popen(["/bin/true"])
    p.wait()
    for read in (procfs.read_stat, procfs.read_status, procfs.read_cmdline, procfs.read_exe,
                 procfs.read_cgroup):
        with pytest.raises(procfs.ProcessGone):
            read(p.pid)


def test_reader_says_denied_when_refused(tmp_path: Path) -> None:
    # a stand-in /proc whose file we may not read (root ignores modes: drop to nobody)
    (tmp_path / "77").mkdir()
    (tmp_path / "77" / "stat").write_text("77 (x) S 1 1 1 0 -1 0 0 0 0 0 0 0 0 0 20 0 1 0 5 0\n")
    os.chmod(tmp_path / "77" / "stat", 0)
    pkg = str(Path(procfs.__file__).parent.parent)
    code = (f"import sys; sys.path.insert(0, {pkg!r})\n"
            "from proctree_exporter import procfs\n"
            "try:\n"
            f"    procfs.read_stat(77, proc={str(tmp_path)!r})\n"
            "except procfs.AccessDenied as e:\n    print('denied', e)\n")
    out = subprocess.run(["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups",
                          sys.executable, "-c", code],
                         capture_output=True, text=True, timeout=30)
    assert out.stdout.startswith("denied"), out.stderr


def test_live_reads_of_this_process() -> None:
    st = procfs.read_stat(os.getpid())
    assert st.pid == os.getpid() and st.ppid == os.getppid() and st.state in "RS"
    info = procfs.read_process(os.getpid())
    assert info.uid == os.geteuid() and info.exe and "python" in info.exe
    assert info.cmdline and "pytest" in info.cmdline


def test_snapshot_covers_the_host_and_counts_what_it_skipped() -> None:
    stats = procfs.SnapshotStats()
    infos = procfs.snapshot(stats=stats)
    pids = {i.stat.pid for i in infos}
    assert 1 in pids and os.getpid() in pids
    assert len(pids) == len(infos)


def test_derived_start_ticks_agree_with_proc_within_a_tick() -> None:
    p = subprocess.Popen(["/bin/sleep", "5"])
    try:
        derived = monotonic_to_ticks(time.monotonic_ns(), boottime_offset_ns())
        actual = procfs.read_stat(p.pid).start_ticks
        assert 0 <= derived - actual <= 2
    finally:
        p.kill()
        p.wait()
