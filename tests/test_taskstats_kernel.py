"""Taskstats exit records from the real kernel: one per process, and what it used.

Each process here is a child of the test process, started by the janitor and
reaped by the test itself, so that getrusage(RUSAGE_CHILDREN) before and after
the reap is exactly what the kernel charged the parent for that child: the
figure a whole-process record must match. The workloads are a small C program
(threads that really burn CPU in parallel, a main thread that leaves first)
compiled into the test's temporary directory.
"""

from __future__ import annotations

import os
import resource
import select
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from proctree_exporter import taskstats as ts
from proctree_exporter.identity import same_start
from proctree_exporter.taskstats import TaskExit, TaskstatsListener

from .conftest import PYTHON, Janitor

pytestmark = pytest.mark.kernel

MIB = 1 << 20
NOBODY = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", "--inh-caps=-all",
          "--bounding-set=-all"]

WORKLOADS = r"""
#define _GNU_SOURCE
#include <fcntl.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static double cpu(void) {
    struct timespec t;
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &t);
    return t.tv_sec + t.tv_nsec / 1e9;
}
/* burn this thread's CPU for s seconds, mostly in user mode */
static void burn(double s) {
    double end = cpu() + s;
    volatile unsigned long x = 0;
    while (cpu() < end)
        for (int i = 0; i < 200000; i++) x += i;
}
static void *burner(void *arg) { burn(*(double *)arg); return NULL; }
static void *forever(void *arg) { for (;;) burn(1); return NULL; }
static pthread_t siblings[2];
static void *last(void *arg) {  /* outlives its siblings, then ends the process */
    burn(0.1);
    pthread_join(siblings[0], NULL);
    pthread_join(siblings[1], NULL);
    exit(3);
}

int main(int argc, char **argv) {
    const char *mode = argv[1];
    if (!strcmp(mode, "burn")) {           /* burn SECONDS: single-threaded, exit(7) */
        burn(atof(argv[2]));
        return 7;
    }
    if (!strcmp(mode, "threads")) {        /* 4 threads, 2 of them exit early */
        pthread_t t[4];
        double s[4] = {0.1, 0.1, 0.3, 0.3};
        for (int i = 0; i < 4; i++) pthread_create(&t[i], NULL, burner, &s[i]);
        pthread_join(t[0], NULL);
        pthread_join(t[1], NULL);
        usleep(50000);                     /* the early two are gone for a while */
        pthread_join(t[2], NULL);
        pthread_join(t[3], NULL);
        burn(0.05);
        return 0;
    }
    if (!strcmp(mode, "leaderfirst")) {    /* the main thread pthread_exit()s first */
        static double s[2] = {0.2, 0.3};
        pthread_t t;
        burn(0.05);
        pthread_create(&siblings[0], NULL, burner, &s[0]);
        pthread_create(&siblings[1], NULL, burner, &s[1]);
        pthread_create(&t, NULL, last, NULL);
        pthread_exit(NULL);
    }
    if (!strcmp(mode, "exitgroup")) {      /* exit() while 3 threads burn */
        pthread_t t;
        for (int i = 0; i < 3; i++) pthread_create(&t, NULL, forever, NULL);
        burn(0.2);
        exit(9);
    }
    if (!strcmp(mode, "write")) {          /* write PATH BYTES, fsync */
        long n = atol(argv[3]);
        char *buf = malloc(1 << 20);
        memset(buf, 'x', 1 << 20);
        int fd = open(argv[2], O_WRONLY | O_CREAT | O_TRUNC, 0600);
        for (long done = 0; done < n; done += 1 << 20)
            if (write(fd, buf, 1 << 20) != 1 << 20) return 1;
        if (fsync(fd) || close(fd)) return 1;
        return 0;
    }
    if (!strcmp(mode, "alloc")) {          /* alloc MIB: touch every page */
        size_t n = (size_t)atol(argv[2]) << 20;
        char *p = malloc(n);
        memset(p, 1, n);
        return p[n - 1] == 1 ? 0 : 1;
    }
    if (!strcmp(mode, "early")) {          /* a thread comes and goes, then wait for stdin */
        static double s = 0.05;
        pthread_t t;
        char c;
        pthread_create(&t, NULL, burner, &s);
        pthread_join(t, NULL);
        write(1, "ready\n", 6);
        return read(0, &c, 1) < 0;
    }
    if (!strcmp(mode, "forks")) {          /* forks N: N children that exit at once */
        int n = atoi(argv[2]);
        for (int i = 0; i < n; i++) {
            pid_t pid = fork();
            if (pid == 0) _exit(0);
            if (pid < 0 || waitpid(pid, NULL, 0) != pid) return 1;
        }
        return 0;
    }
    return 2;
}
"""


@pytest.fixture(scope="module")
def workloads(tmp_path_factory: pytest.TempPathFactory) -> Path:
    cc = shutil.which("cc") or shutil.which("gcc")
    assert cc, "no C compiler: apt-get install gcc libc6-dev"
    d = tmp_path_factory.mktemp("taskstats")
    (d / "workloads.c").write_text(WORKLOADS)
    subprocess.run([cc, "-O1", "-Wall", "-pthread", "-o", str(d / "workloads"),
                    str(d / "workloads.c")], check=True, timeout=60)
    return d / "workloads"


@pytest.fixture
def listener() -> Iterator[TaskstatsListener]:
    with TaskstatsListener() as lst:
        yield lst


def drain(listener: TaskstatsListener, quiet_s: float = 0.2) -> list[TaskExit]:
    """Whatever the listener has until nothing came for ``quiet_s``."""
    seen: list[TaskExit] = []
    quiet_since = time.monotonic()
    while time.monotonic() - quiet_since < quiet_s:
        select.select([listener], [], [], 0.02)
        batch = listener.read()
        if batch:
            seen += batch
            quiet_since = time.monotonic()
    return seen


def run_and_reap(listener: TaskstatsListener, janitor: Janitor, args: list[str],
                 timeout_s: float = 60) -> tuple[subprocess.Popen[str], float, float,
                                                 list[TaskExit]]:
    """Run a child to its end and reap it, reading the listener all along (promptly: the
    start_ticks estimate is late by however long a record waits to be read).

    Returns the child, the user and system seconds its reap charged us
    (getrusage(RUSAGE_CHILDREN) before and after), and every record seen.
    """
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    p = janitor.spawn(args, stdout=subprocess.DEVNULL)
    seen: list[TaskExit] = []
    deadline = time.monotonic() + timeout_s
    while p.poll() is None:  # reaps it
        assert time.monotonic() < deadline, f"{args} still running after {timeout_s}s"
        select.select([listener], [], [], 0.01)
        seen += listener.read()
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    seen += drain(listener)
    return p, after.ru_utime - before.ru_utime, after.ru_stime - before.ru_stime, seen


def the_record(p: subprocess.Popen[str], seen: list[TaskExit]) -> TaskExit:
    """The one record of ``p``; and no other record of ours (a thread posing as a process)."""
    found = [r for r in seen if r.pid == p.pid]
    assert len(found) == 1, f"{len(found)} records for one process: {found}"
    assert [r for r in seen if r.ppid == os.getpid()] == found
    return found[0]


def within(measured_us: int, reaped_s: float) -> bool:
    """Within 1% or 20 ms, whichever is larger, of what the reap charged."""
    reaped_us = reaped_s * 1e6
    return abs(measured_us - reaped_us) <= max(0.01 * reaped_us, 20_000)


def assert_cpu_matches_reap(rec: TaskExit, user_s: float, system_s: float) -> None:
    total = user_s + system_s
    assert within(rec.cpu_ns // 1000, total), (rec.cpu_ns, total)
    assert within(rec.cpu_user_us, user_s), (rec.cpu_user_us, user_s)
    assert within(rec.cpu_system_us, system_s), (rec.cpu_system_us, system_s)
    # the runtime is the exact one: only what the child ran after its record was written
    # (the rest of do_exit) separates them
    assert -10_000 <= total * 1e9 - rec.cpu_ns < 5_000_000, (rec.cpu_ns, total)


def assert_start_matches(janitor: Janitor, pid: int, rec: TaskExit) -> None:
    """The estimated start is the one the janitor read from /proc at spawn, to the tick."""
    known = janitor.pids[pid]
    assert known is not None and rec.start_ticks is not None
    assert same_start(known, rec.start_ticks), (known, rec.start_ticks)


def test_a_cpu_burner_costs_what_its_parent_reaps(listener: TaskstatsListener, janitor: Janitor,
                                                  workloads: Path) -> None:
    assert listener.version >= ts.MIN_VERSION and listener.exact_cpu
    p, user_s, system_s, seen = run_and_reap(listener, janitor, [str(workloads), "burn", "0.5"])
    rec = the_record(p, seen)
    assert rec.whole_group and rec.last_thread and rec.complete and rec.threads == 1
    assert (rec.tid, rec.ppid, rec.comm) == (p.pid, os.getpid(), "workloads")
    assert rec.exit_code == 7 << 8 and p.returncode == 7
    assert rec.cpu_ns >= 500_000_000
    assert_cpu_matches_reap(rec, user_s, system_s)
    assert_start_matches(janitor, p.pid, rec)
    assert abs(rec.btime64 - (time.time() - rec.group_etime_us / 1e6)) <= 2
    assert rec.btime == rec.btime64


def test_threads_that_exit_before_the_main_thread_are_counted_once(
        listener: TaskstatsListener, janitor: Janitor, workloads: Path) -> None:
    p, user_s, system_s, seen = run_and_reap(listener, janitor, [str(workloads), "threads"])
    rec = the_record(p, seen)
    assert rec.whole_group and rec.complete and rec.threads == 5
    assert rec.tid == p.pid and rec.exit_code == 0
    assert rec.cpu_ns >= 850_000_000  # 0.1 + 0.1 + 0.3 + 0.3 + 0.05 s
    assert_cpu_matches_reap(rec, user_s, system_s)
    assert_start_matches(janitor, p.pid, rec)


def test_a_process_whose_main_thread_exits_first_is_counted_once(
        listener: TaskstatsListener, janitor: Janitor, workloads: Path) -> None:
    p, user_s, system_s, seen = run_and_reap(listener, janitor, [str(workloads), "leaderfirst"])
    rec = the_record(p, seen)
    assert rec.whole_group and rec.complete and rec.threads == 4
    assert rec.tid != p.pid  # a thread ended the process, after the main thread had left
    assert rec.exit_code == 3 << 8 and p.returncode == 3
    assert rec.comm == "workloads"
    assert_cpu_matches_reap(rec, user_s, system_s)
    assert_start_matches(janitor, p.pid, rec)  # the group's start, not its last thread's


def test_exit_while_threads_burn_is_counted_once(listener: TaskstatsListener,
                                                 janitor: Janitor, workloads: Path) -> None:
    p, user_s, system_s, seen = run_and_reap(listener, janitor, [str(workloads), "exitgroup"])
    rec = the_record(p, seen)
    assert rec.whole_group and rec.complete and rec.threads == 4
    assert rec.exit_code == 9 << 8 and p.returncode == 9
    assert_cpu_matches_reap(rec, user_s, system_s)


def fs_type(path: Path) -> str:
    """The filesystem type of ``path`` from /proc/self/mountinfo (no child process: the
    tests count the records of ours)."""
    best, fs = "", "?"
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        fields = line.split()
        mount_point = fields[4].replace("\\040", " ")
        fs_field = fields[fields.index("-") + 1]
        inside = str(path) == mount_point or str(path).startswith(mount_point.rstrip("/") + "/")
        if inside and len(mount_point) >= len(best):
            best, fs = mount_point, fs_field
    return fs


def test_a_thread_that_exited_before_we_listened_makes_the_record_incomplete(
        janitor: Janitor, workloads: Path) -> None:
    p = janitor.spawn([str(workloads), "early"], stdin=subprocess.PIPE)
    assert p.stdout is not None and p.stdin is not None
    assert p.stdout.readline() == "ready\n"  # its thread's record went to nobody
    with TaskstatsListener() as late_listener:
        p.stdin.close()
        assert p.wait(timeout=10) == 0
        seen = drain(late_listener)
    (rec,) = [r for r in seen if r.pid == p.pid]
    # the kernel's group sum has the thread's runtime, ours only the main thread's
    assert rec.whole_group and rec.threads == 1 and not rec.complete


@pytest.fixture
def disk_dir() -> Iterator[Path]:
    """A directory on a block device: tmpfs pages are never written back, so writes to
    tmpfs count in wchar but never in write_bytes."""
    d = Path(tempfile.mkdtemp(prefix="ptx-taskstats-", dir="/var/tmp"))
    try:
        fs = fs_type(d)
        assert fs not in ("tmpfs", "ramfs"), f"/var/tmp is {fs}: need a disk-backed directory"
        yield d
    finally:
        shutil.rmtree(d, ignore_errors=True)


def test_bytes_written_and_synced_show_in_wchar_and_write_bytes(
        listener: TaskstatsListener, janitor: Janitor, workloads: Path, disk_dir: Path) -> None:
    n = 8 * MIB
    p, _, _, seen = run_and_reap(listener, janitor,
                                 [str(workloads), "write", str(disk_dir / "out"), str(n)])
    assert p.returncode == 0
    rec = the_record(p, seen)
    # wchar: every byte handed to write(), whatever became of it: exactly what we wrote
    assert rec.wchar == n
    # write_bytes: page cache the process dirtied for storage, counted as it dirties it
    # (writeback may come later, from another thread); the fsync makes sure none of it was
    # cancelled. Metadata and journal writes are the filesystem's, not ours.
    assert n <= rec.write_bytes < n + MIB, rec.write_bytes
    assert rec.rchar < MIB and rec.read_bytes < MIB


def test_peak_rss_counts_a_100_mib_allocation(listener: TaskstatsListener, janitor: Janitor,
                                              workloads: Path) -> None:
    p, _, _, seen = run_and_reap(listener, janitor, [str(workloads), "alloc", "100"])
    assert p.returncode == 0
    rec = the_record(p, seen)
    assert 100 * MIB <= rec.peak_rss_bytes < 200 * MIB, rec.peak_rss_bytes
    assert rec.minor_faults >= 100 * MIB // os.sysconf("SC_PAGE_SIZE") // 2  # huge pages: fewer


def test_a_burst_of_2000_exits_is_reported_once_each(listener: TaskstatsListener,
                                                     janitor: Janitor, workloads: Path) -> None:
    p, _, _, seen = run_and_reap(listener, janitor, [str(workloads), "forks", "2000"])
    assert p.returncode == 0
    the_record(p, seen)
    children = [r.pid for r in seen if r.ppid == p.pid]
    assert len(children) == len(set(children)) == 2000
    assert listener.lost == 0 and listener.overruns == 0 and listener.malformed == 0


def test_an_overrun_is_counted(janitor: Janitor, workloads: Path) -> None:
    with TaskstatsListener(rcvbuf_bytes=32 * 1024) as small:
        assert small.rcvbuf_forced
        p = janitor.spawn([str(workloads), "forks", "500"], stdout=subprocess.DEVNULL)
        assert p.wait(timeout=60) == 0  # nobody reads meanwhile
        got = [r for r in small.read(max_datagrams=10_000) if r.ppid == p.pid]
        assert small.overruns >= 1
        assert len(got) < 500 and small.lost >= 500 - len(got)


def test_closing_deregisters_the_port(janitor: Janitor) -> None:
    """After close() no exit record goes to the port id the listener had.

    The kernel keeps a listener's port id until a send to it fails, so a socket
    bound to the same port id afterwards would receive the records of an
    underegistered listener: shown first with a socket closed behind the
    listener's back, as the control.
    """
    def records_reach(port: int) -> bool:
        with socket.socket(socket.AF_NETLINK, socket.SOCK_DGRAM, ts.NETLINK_GENERIC) as sock:
            sock.bind((port, 0))
            janitor.spawn(["/bin/true"]).wait(timeout=10)
            return bool(select.select([sock], [], [], 0.3)[0])

    leaky = TaskstatsListener()
    port = leaky.port_id
    leaky.sock.close()  # no deregistration
    assert records_reach(port), "control: a stale registration delivers to the port"

    tidy = TaskstatsListener()
    port = tidy.port_id
    tidy.close()
    tidy.close()  # twice is harmless
    assert not records_reach(port)


@pytest.mark.parametrize("wrap,expected_errno,words", [
    (NOBODY, 1, "CAP_NET_ADMIN"),
    (["unshare", "--user", "--map-root-user"], 1, "CAP_NET_ADMIN in the initial user namespace"),
    (["unshare", "--pid", "--fork", "--mount-proc"], 22, "initial user and PID namespaces"),
    (["unshare", "--net"], 110, "not in the initial network namespace"),
])
def test_where_taskstats_cannot_be_had_the_reason_is_given(
        janitor: Janitor, wrap: list[str], expected_errno: int, words: str) -> None:
    code = ("from proctree_exporter.taskstats import TaskstatsListener, TaskstatsUnavailable\n"
            "try:\n"
            "    TaskstatsListener(timeout_s=0.5).close()\n"
            "    print('opened')\n"
            "except TaskstatsUnavailable as exc:\n"
            "    print(exc.errno, exc.strerror)\n")
    p = janitor.spawn([*wrap, PYTHON, "-c", code], stderr=subprocess.PIPE)
    out, err = p.communicate(timeout=30)
    assert p.returncode == 0, err
    number, _, reason = out.strip().partition(" ")
    assert int(number) == expected_errno and words in reason, out
