"""The sampler against real processes: its figures agree with the kernel's own accounts.

Every process is started by the janitor, which ends it by pid even when a test fails.
"""

from __future__ import annotations

import gc
import itertools
import json
import os
import signal
import subprocess
import threading
import time
from pathlib import Path

import pytest

from proctree_exporter import procfs
from proctree_exporter.identity import Identity
from proctree_exporter.sampler import Sample, Sampler, SampleRound, sample

from .conftest import PYTHON, REPO, Janitor, read_lines, spawn_at_pid, start_ticks, wait_for

pytestmark = pytest.mark.kernel

MIB = 1 << 20
TICK = 1 / os.sysconf("SC_CLK_TCK")


def identity(pid: int) -> Identity:
    start = start_ticks(pid)
    assert start is not None, f"pid {pid} is gone"
    return Identity(pid, start)


def sample_of(ident: Identity, pss: bool = False) -> Sample:
    r = sample([ident], pss=pss)
    assert ident in r.samples, f"not sampled: {r}"
    return r.samples[ident]


def stat_fields(pid: int) -> list[bytes]:
    """/proc/PID/stat from field 3 on (field N is [N - 3])."""
    raw = Path(f"/proc/{pid}/stat").read_bytes()
    return raw[raw.rfind(b")") + 2 :].split()


# A process that burns CPU for ``secs`` in itself, says so, then waits for EOF on stdin and
# leaves by _exit (no interpreter teardown, so its rusage is what was sampled).
BURN = ("import os, sys, time\n"
        "end = time.process_time() + {secs}\n"
        "while time.process_time() < end: pass\n"
        "print('burnt', flush=True)\n"
        "sys.stdin.read()\n"
        "os._exit(0)\n")


def test_cpu_of_a_busy_process_matches_proc_and_its_rusage(janitor: Janitor) -> None:
    # 0.5 s, not less: stat truncates utime and stime to whole ticks each, so the sample
    # may lie up to two ticks (20 ms) under the rusage, which must stay within 5%
    p = janitor.python(BURN.format(secs=0.5), stdin=subprocess.PIPE)
    read_lines(p, 1)
    s = sample_of(identity(p.pid))
    cpu = s.cpu_user_seconds + s.cpu_system_seconds
    f = stat_fields(p.pid)
    proc_cpu = (int(f[11]) + int(f[12])) * TICK
    assert cpu >= 0.5 - 2 * TICK
    assert abs(cpu - proc_cpu) <= 0.05 * proc_cpu
    assert p.stdin is not None
    p.stdin.close()
    _, status, rusage = os.wait4(p.pid, 0)
    p.returncode = os.waitstatus_to_exitcode(status)
    reaped = rusage.ru_utime + rusage.ru_stime
    assert abs(cpu - reaped) <= 0.05 * reaped, (cpu, reaped)


def test_cpu_of_reaped_children_is_not_the_parents(janitor: Janitor) -> None:
    burner = BURN.format(secs=0.3).replace("sys.stdin.read()\n", "")
    p = janitor.spawn(["/bin/sh", "-c", f'{PYTHON} -c "$0"; echo done; exec sleep 60', burner])
    read_lines(p, 2)  # "burnt" from the child, "done" once the shell has reaped it
    s = sample_of(identity(p.pid))
    f = stat_fields(p.pid)
    assert (int(f[13]) + int(f[14])) * TICK >= 0.3  # cutime + cstime: the child's
    assert s.cpu_user_seconds + s.cpu_system_seconds < 0.1  # sh's own


def test_open_fds_and_threads_of_a_process(janitor: Janitor) -> None:
    code = ("import os, threading, time\n"
            "fds = [os.open('/dev/null', os.O_RDONLY) for _ in range(7)]\n"
            "ev = threading.Event()\n"
            "ts = [threading.Thread(target=ev.wait, daemon=True) for _ in range(5)]\n"
            "[t.start() for t in ts]\n"
            "print('up', flush=True); time.sleep(60)\n")
    p = janitor.python(code)
    read_lines(p, 1)
    s = sample_of(identity(p.pid))
    assert s.open_fds is not None and s.open_fds >= 7
    assert s.open_fds == len(os.listdir(f"/proc/{p.pid}/fd"))
    assert s.threads == 5 + 1


def test_rss_pss_and_uss_after_allocating_50_mib(janitor: Janitor) -> None:
    code = ("import time\n"
            "b = bytearray(b'\\x01') * (50 << 20)  # written, so resident\n"
            "print('up', flush=True); time.sleep(60)\n")
    p = janitor.python(code)
    read_lines(p, 1)
    ident = identity(p.pid)
    s = sample_of(ident)
    assert s.rss_bytes >= 50 * MIB
    assert s.pss_bytes is None and s.uss_bytes is None  # not asked for
    full = sample_of(ident, pss=True)
    assert full.pss_bytes is not None and full.pss_bytes >= 50 * MIB
    assert full.uss_bytes is not None and full.uss_bytes >= 50 * MIB
    assert full.uss_bytes <= full.pss_bytes <= full.rss_bytes + MIB


def test_write_bytes_after_writing_and_fsyncing_4_mib(janitor: Janitor, tmp_path: Path) -> None:
    code = ("import os, sys, time\n"
            "fd = os.open(sys.argv[1], os.O_WRONLY | os.O_CREAT | os.O_TRUNC)\n"
            "os.write(fd, b'x' * (4 << 20)); os.fsync(fd); os.close(fd)\n"
            "print('written', flush=True); time.sleep(60)\n")
    p = janitor.spawn([PYTHON, "-c", code, str(tmp_path / "data")])
    read_lines(p, 1)
    s = sample_of(identity(p.pid))
    assert s.write_bytes is not None and s.write_bytes >= 4 * MIB
    assert s.wchar is not None and s.wchar >= 4 * MIB
    assert s.rchar is not None and s.rchar > 0  # the interpreter read its own files


def test_page_faults_and_context_switches_count(janitor: Janitor) -> None:
    code = ("import time\n"
            "b = bytearray(b'\\x01') * (8 << 20)\n"
            "for _ in range(20): time.sleep(0.001)\n"
            "print('up', flush=True); time.sleep(60)\n")
    p = janitor.python(code)
    read_lines(p, 1)
    s = sample_of(identity(p.pid))
    assert s.minor_faults >= (8 * MIB) // os.sysconf("SC_PAGE_SIZE")
    assert s.major_faults >= 0
    assert s.voluntary_ctx_switches >= 20
    assert s.involuntary_ctx_switches >= 0
    assert time.monotonic() - 5 < s.monotonic <= time.monotonic()


def test_a_reused_pid_is_reported_reused_and_the_stranger_not_sampled(janitor: Janitor) -> None:
    holder = janitor.spawn("sleep 60 & echo $!; wait")
    (old_pid,) = (int(x) for x in read_lines(holder, 1))
    janitor.track(old_pid)
    old = identity(old_pid)
    assert old in sample([old]).samples
    time.sleep(4 * TICK)  # so the stranger's start differs by more than the tolerance
    os.kill(old_pid, signal.SIGKILL)
    holder.wait(timeout=10)  # its `wait` returns and it exits: the pid is free
    wait_for(lambda: not os.path.exists(f"/proc/{old_pid}"))
    stranger = spawn_at_pid(janitor, old_pid)
    r = sample([old])
    assert r.reused == {old}
    assert not r.samples and not r.vanished and not r.unreadable
    new = identity(stranger.pid)
    assert new.pid == old.pid and new != old
    assert new in sample([new]).samples


def test_an_exited_process_is_reported_vanished(janitor: Janitor) -> None:
    p = janitor.spawn(["/bin/sleep", "60"])
    ident = identity(p.pid)
    p.kill()
    p.wait(timeout=10)
    r = sample([ident])
    assert r.vanished == {ident} and not r.samples and not r.reused


def test_a_zombie_yields_no_sample(janitor: Janitor) -> None:
    # the child of a shell that then execs sleep: nobody reaps it when it exits
    p = janitor.spawn("sleep 0.2 & echo $!; exec sleep 60")
    (kid,) = (int(x) for x in read_lines(p, 1))
    janitor.track(kid)
    ident = identity(kid)
    wait_for(lambda: procfs.read_stat(kid).state == "Z")
    r = sample([ident], pss=True)
    assert r.vanished == {ident} and not r.samples


def test_a_process_whose_main_thread_exited_is_still_sampled(janitor: Janitor) -> None:
    # the main thread leaves by pthread_exit: the leader is a zombie, a thread holding
    # memory runs on, and memory and fds show only through that thread
    code = ("import ctypes, threading, time\n"
            "def hold():\n"
            "    b = bytearray(b'\\x01') * (50 << 20)\n"
            "    print('up', flush=True); time.sleep(60)\n"
            "threading.Thread(target=hold).start()\n"
            "time.sleep(0.5)\n"
            "ctypes.CDLL(None).pthread_exit(None)\n")
    p = janitor.python(code)
    read_lines(p, 1)
    ident = identity(p.pid)
    wait_for(lambda: procfs.read_stat(p.pid).state == "Z")
    s = sample_of(ident, pss=True)
    assert s.rss_bytes >= 50 * MIB
    assert s.pss_bytes is not None and s.pss_bytes >= 50 * MIB
    assert s.open_fds is not None and s.open_fds >= 1
    assert s.threads == 2  # the live thread and the exited leader, until it is reaped


def test_figures_the_kernel_refuses_are_none(janitor: Janitor) -> None:
    """As nobody, /proc/PID/io of a root process is refused; CPU and memory still come."""
    target = janitor.spawn(["/bin/sleep", "60"])
    ident = identity(target.pid)
    code = ("import json, sys\n"
            "from proctree_exporter.sampler import sample\n"
            "from proctree_exporter.identity import Identity\n"
            "ident = Identity(int(sys.argv[1]), int(sys.argv[2]))\n"
            "r = sample([ident], pss=True)\n"
            "print(json.dumps({'sample': r.samples[ident]._asdict() if ident in r.samples "
            "else None, 'unreadable': len(r.unreadable)}), flush=True)\n")
    # setpriv rather than Popen(user=...): it keeps root's capabilities up to the exec,
    # so the interpreter (found through /root, mode 0700, here) can still be started
    nobody = janitor.spawn(["setpriv", "--reuid", "65534", "--regid", "65534", "--clear-groups",
                            PYTHON, "-c", code, str(ident.pid), str(ident.start_ticks)],
                           cwd=str(REPO))
    (line,) = read_lines(nobody, 1)
    got = json.loads(line)
    s = got["sample"]
    assert s is not None, got
    assert s["read_bytes"] is None and s["write_bytes"] is None and s["rchar"] is None
    assert s["pss_bytes"] is None and s["uss_bytes"] is None
    assert s["threads"] == 1 and s["rss_bytes"] > 0


def sleepers(janitor: Janitor, n: int) -> list[Identity]:
    """``n`` sleeping processes, children of one shell; the janitor ends each by pid."""
    holder = janitor.spawn(f"for i in $(seq {n}); do sleep 60 & done; echo ok; wait")
    read_lines(holder, 1)
    kids = [int(x) for x in
            Path(f"/proc/{holder.pid}/task/{holder.pid}/children").read_text().split()]
    for k in kids:
        janitor.track(k)
    assert len(kids) == n
    return [identity(k) for k in kids]


def test_many_processes_in_one_round_each_once(janitor: Janitor) -> None:
    ids = sleepers(janitor, 30)
    gone = Identity(ids[0].pid, ids[0].start_ticks + 100)  # same pid, other start: reused
    r = sample([*ids, gone, *ids[:3]])  # duplicates are sampled as one
    assert set(r.samples) == set(ids) and r.reused == {gone}
    assert all(s.identity == i for i, s in r.samples.items())


def test_a_round_leaves_no_sample_for_the_cyclic_gc_to_rescan(janitor: Janitor) -> None:
    # a Sample (a tuple subclass) stays tracked by the cyclic GC for good: the 20,000 of
    # a 20,000-process round were rescanned by every full collection until the next
    # round, 6-16 ms with the GIL held, inside whichever scrape allocated at the time
    ids = sleepers(janitor, 20)
    r = sample(ids)
    gc.collect()
    assert len(r.samples) == 20
    assert not [o for o in gc.get_objects() if type(o) is Sample and o.identity in r.samples]
    s = r.samples[ids[0]]  # made as it is read, whole
    assert type(s) is Sample and s.identity == ids[0] and s.threads == 1
    assert dict(r.samples.items()) == {i: r.samples[i] for i in ids}


def test_the_sampler_thread_calls_on_round_at_the_interval_and_stops_promptly(
        janitor: Janitor) -> None:
    p = janitor.spawn(["/bin/sleep", "60"])
    ident = identity(p.pid)
    rounds: list[tuple[float, SampleRound]] = []
    enough = threading.Event()

    def on_round(r: SampleRound) -> None:
        rounds.append((time.monotonic(), r))
        if len(rounds) >= 5:
            enough.set()

    s = Sampler(lambda: [ident], 0.2, on_round)
    t0 = time.monotonic()
    s.start()
    try:
        assert enough.wait(10)
    finally:
        stop0 = time.monotonic()
        s.stop()
        stopped_in = time.monotonic() - stop0
    assert stopped_in < 0.5 and not s.status().running
    n = len(rounds)
    time.sleep(0.5)
    assert len(rounds) == n, "on_round called after stop()"
    starts = [r.started for _, r in rounds]
    assert starts[0] - t0 < 0.2  # the first round at once
    gaps = [b - a for a, b in itertools.pairwise(starts)]
    assert all(0.15 <= g <= 0.3 for g in gaps), gaps
    assert all(ident in r.samples for _, r in rounds)
    st = s.status()
    assert st.rounds == n and st.errors == 0
    assert st.last_duration_s is not None and 0 < st.last_duration_s < 0.2
    assert st.last_wall_time is not None and abs(time.time() - st.last_wall_time) < 2
    assert 0 < st.cpu_seconds < 1


def test_stop_abandons_a_long_round(janitor: Janitor) -> None:
    p = janitor.spawn(["/bin/sleep", "60"])
    ident = identity(p.pid)
    called = threading.Event()
    s = Sampler(lambda: [ident] * 50_000, 60, lambda r: called.set())  # a round of seconds
    s.start()
    time.sleep(0.2)
    t0 = time.monotonic()
    s.stop()
    assert time.monotonic() - t0 < 0.3
    assert not s.status().running and not called.is_set()
