"""The resource ledger without the kernel: counters from exit records and samples on the
pretend host (tests/fakehost.py), never backwards, each exit counted once."""

from __future__ import annotations

import sys

from proctree_exporter.identity import Identity
from proctree_exporter.resources import (
    APPLY_CHUNK,
    FIELDS,
    UNACCOUNTED_NO_RECORD,
    Ledger,
    RootResources,
)
from proctree_exporter.rootspec import RootSpec
from proctree_exporter.sampler import Sample, SampleRound
from proctree_exporter.taskstats import TaskExit

from .fakehost import Host

JOB = RootSpec("job", "comm", "wrapper")
HOST = RootSpec("host", "pid", "1")
CPU = FIELDS.index("cpu_user_us")
WRITE = FIELDS.index("write_bytes")


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def sample(ident: Identity, cpu_s: float, *, write: int = 0, rss: int = 1 << 20,
           threads: int = 1, fds: int = 3) -> Sample:
    return Sample(ident, 0.0, cpu_s, 0.0, rss, 0, write, 0, write, fds, threads, 1, 0, 10, 0)


def record(ident: Identity, cpu_s: float, *, write: int = 0) -> TaskExit:
    fields = dict.fromkeys(TaskExit._fields, 0)
    fields.update(pid=ident.pid, tid=ident.pid, whole_group=True, last_thread=True,
                  complete=True, comm="worker", start_ticks=ident.start_ticks,
                  cpu_user_us=round(cpu_s * 1e6), write_bytes=write, wchar=write,
                  minor_faults=10)
    return TaskExit(**fields)


def round_of(*samples: Sample) -> SampleRound:
    return SampleRound({s.identity: s for s in samples}, frozenset(), frozenset(), frozenset(),
                       0.0, 0.001, 0.0, False)


def ident(h: Host, name: str) -> Identity:
    with h.tree.lock:
        node = h.tree.get(h.pid(name))
        assert node is not None
        return node.identity


def root(ledger: Ledger, name: str) -> RootResources:
    return next(r for r in ledger.stats().roots if r.name == name)


def scene() -> tuple[Host, Ledger, Clock]:
    h = Host(JOB, HOST)
    clock = Clock()
    h.spawn("shell", comm="bash")
    h.spawn("old", "shell", comm="wrapper")  # running before the ledger starts
    ledger = Ledger(h.roots, clock=clock)
    ledger.proc_dir = "/nonexistent"  # the pretend host's pids are not this host's
    ledger.sync()
    return h, ledger, clock


def test_a_short_lived_member_costs_exactly_its_exit_record() -> None:
    h, ledger, _ = scene()
    h.spawn("kid", "old", comm="worker")
    kid = ident(h, "kid")
    ledger.sync()
    h.exit("kid")
    ledger.sync()  # its exit seen before its record: it waits for it
    assert root(ledger, "job").counters[CPU] == 0
    ledger.add_records([record(kid, 0.25, write=4096)])
    job = root(ledger, "job")
    assert job.counters[CPU] == 250_000 and job.counters[WRITE] == 4096
    assert root(ledger, "host").counters[CPU] == 250_000  # every root it belonged to
    assert ledger.stats().exits_accounted == 1


def test_a_record_before_the_exit_event_is_kept_for_it() -> None:
    h, ledger, _ = scene()
    h.spawn("kid", "old", comm="worker")
    kid = ident(h, "kid")
    ledger.add_records([record(kid, 0.1)])  # the taskstats socket was quicker
    h.exit("kid")
    ledger.sync()
    assert root(ledger, "job").counters[CPU] == 100_000


def test_counters_never_go_backwards_from_sample_to_exit() -> None:
    h, ledger, _ = scene()
    h.spawn("kid", "old", comm="worker")
    kid = ident(h, "kid")
    ledger.sync()
    seen = []
    ledger.apply_round(round_of(sample(kid, 1.0)))
    seen.append(root(ledger, "job").counters[CPU])
    ledger.apply_round(round_of(sample(kid, 0.9)))  # a sample can never take back
    seen.append(root(ledger, "job").counters[CPU])
    h.exit("kid")
    ledger.sync()
    seen.append(root(ledger, "job").counters[CPU])
    ledger.add_records([record(kid, 0.95)])  # a record below the last sample: the sample
    seen.append(root(ledger, "job").counters[CPU])
    assert seen == [1_000_000] * 4


def test_an_exit_between_samples_counts_what_it_used_after_the_last_one() -> None:
    h, ledger, _ = scene()
    h.spawn("kid", "old", comm="worker")
    kid = ident(h, "kid")
    ledger.sync()
    ledger.apply_round(round_of(sample(kid, 1.0, rss=5 << 20, threads=4, fds=9)))
    job = root(ledger, "job")
    assert (job.rss_bytes, job.threads, job.open_fds, job.sampled) == (5 << 20, 4, 9, 1)
    h.exit("kid")
    ledger.sync()
    ledger.add_records([record(kid, 1.5)])
    job = root(ledger, "job")
    assert job.counters[CPU] == 1_500_000
    assert (job.rss_bytes, job.threads, job.open_fds, job.sampled) == (0, 0, 0, 0)


def test_a_member_running_before_the_ledger_counts_from_its_first_sample() -> None:
    h, ledger, _ = scene()
    old = ident(h, "old")
    ledger.apply_round(round_of(sample(old, 30.0)))  # 30 s before we looked: not counted
    assert root(ledger, "job").counters[CPU] == 0
    ledger.apply_round(round_of(sample(old, 30.5)))
    assert root(ledger, "job").counters[CPU] == 500_000
    h.exit("old")
    ledger.sync()
    ledger.add_records([record(old, 31.0)])
    assert root(ledger, "job").counters[CPU] == 1_000_000


def test_an_exit_without_a_record_keeps_its_last_sample_and_is_counted() -> None:
    h, ledger, clock = scene()
    h.spawn("kid", "old", comm="worker")
    kid = ident(h, "kid")
    ledger.sync()
    ledger.apply_round(round_of(sample(kid, 2.0)))
    h.exit("kid")
    ledger.sync()
    clock.t += 10  # past the wait for its record
    ledger.sync()
    assert root(ledger, "job").counters[CPU] == 2_000_000
    assert ledger.stats().exits_unaccounted[UNACCOUNTED_NO_RECORD] == 1
    assert kid not in ledger.live_identities() and ident(h, "old") in ledger.live_identities()


def test_a_record_of_another_process_is_not_taken_for_a_member() -> None:
    h, ledger, clock = scene()
    h.spawn("kid", "old", comm="worker")
    kid = ident(h, "kid")
    ledger.sync()
    ledger.add_records([record(Identity(kid.pid, kid.start_ticks - 10_000), 9.0)])  # earlier holder
    h.exit("kid")
    ledger.sync()
    clock.t += 10
    ledger.sync()
    assert root(ledger, "job").counters[CPU] == 0


def test_orphans_keep_costing_their_root() -> None:
    h, ledger, _ = scene()
    h.spawn("wrap", "old", comm="sh")
    h.spawn("orphan", "wrap", comm="worker")
    orphan = ident(h, "orphan")
    h.exit("wrap")
    h.tick(0.1, rounds=3)
    ledger.sync()
    ledger.apply_round(round_of(sample(orphan, 0.0)))
    ledger.apply_round(round_of(sample(orphan, 3.0)))
    assert root(ledger, "job").counters[CPU] == 3_000_000


def test_a_removed_root_stops_sampling_its_processes() -> None:
    h = Host(JOB, HOST)
    h.spawn("shell", comm="bash")
    h.spawn("old", "shell", comm="wrapper")
    ledger = Ledger(h.roots, roots=["job"])  # only the job is accounted
    ledger.proc_dir = "/nonexistent"
    ledger.sync()
    assert ledger.live_identities() == [ident(h, "old")]
    h.roots.remove("job")
    ledger.sync()
    assert ledger.live_identities() == [] and ledger.stats().roots == ()


def test_what_a_reaped_child_used_after_its_record_comes_from_its_reaper(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """The exit record is written before a process's exit path; its reaper's children's
    CPU (cutime, cstime) includes it, and tops the root up to it, never down."""
    h = Host(JOB, HOST)
    h.spawn("shell", comm="bash")
    h.spawn("job", "shell", comm="wrapper")
    ledger = Ledger(h.roots)
    ledger.proc_dir = str(tmp_path)
    job = ident(h, "job")

    def reaper_stat(cutime_ticks: int, cstime_ticks: int) -> None:
        d = tmp_path / str(job.pid)
        d.mkdir(exist_ok=True)
        fields = ["S", "1"] + ["0"] * 11 + [str(cutime_ticks), str(cstime_ticks)] + \
            ["0"] * 4 + [str(job.start_ticks)] + ["0"] * 10
        (d / "stat").write_text(f"{job.pid} (wrapper) " + " ".join(fields))

    reaper_stat(0, 0)
    ledger.sync()
    h.spawn("kid", "job", comm="worker")  # the job forks: what its children used so far
    kid = ident(h, "kid")
    ledger.sync()
    h.exit("kid")
    ledger.add_records([record(kid, 0.10)])
    reaper_stat(15, 2)  # reaped: 0.15 s user, 0.02 s system, exit path included
    ledger.sync()
    job_cpu = root(ledger, "job").counters
    assert (job_cpu[CPU], job_cpu[CPU + 1]) == (150_000, 20_000)
    reaper_stat(14, 2)  # a reading can never take back what was given
    h.spawn("kid2", "job", comm="worker")
    kid2 = ident(h, "kid2")
    ledger.sync()
    h.exit("kid2")
    ledger.add_records([record(kid2, 0.01)])
    ledger.sync()
    assert root(ledger, "job").counters[CPU] == 160_000


def test_the_ledger_keeps_nothing_of_a_round_it_applied() -> None:
    # it once kept the whole round for two of its figures: 20,000 samples alive until the
    # next round, rescanned by every full collection of the cyclic GC
    h, ledger, _ = scene()
    h.spawn("kid", "old", comm="worker")
    ledger.sync()
    rnd = round_of(sample(ident(h, "kid"), 1.0))
    refs = sys.getrefcount(rnd), sys.getrefcount(rnd.samples)
    ledger.apply_round(rnd)
    assert (sys.getrefcount(rnd), sys.getrefcount(rnd.samples)) == refs
    assert ledger.sampled_once() and ledger.stats().last_round_seconds == rnd.duration_s


def test_a_big_round_is_applied_in_chunks_so_readers_get_in_between() -> None:
    # a 20,000-process round held the ledger's lock for about 100 ms at once, and every
    # scrape (stats()) waited for it: readers must find it free between chunks
    h, ledger, _ = scene()
    kids = []
    for i in range(2 * APPLY_CHUNK + 10):
        h.spawn(f"k{i}", "old", comm="worker")
        kids.append(ident(h, f"k{i}"))
    ledger.sync()
    real = ledger.lock
    holds: list[int] = []

    class Counting:
        def __enter__(self) -> None:
            real.acquire()
            holds.append(1)

        def __exit__(self, *exc: object) -> None:
            real.release()

    ledger.lock = Counting()  # type: ignore[assignment]
    ledger.apply_round(round_of(*(sample(k, 1.0, rss=1 << 20) for k in kids)))
    ledger.lock = real
    assert len(holds) >= 3  # one per chunk of APPLY_CHUNK, and one to publish the round
    job = root(ledger, "job")
    assert job.sampled == len(kids) and job.rss_bytes == len(kids) << 20
