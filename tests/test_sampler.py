"""The sampler's parsers on bytes the kernel wrote, and its thread without /proc reads.

The fixtures below were read from Linux 6.18 (/proc/PID/{stat,io,status,smaps_rollup}
of a python process that renamed itself ``a) b (c``). Real processes: see
test_sampler_kernel.py.
"""

from __future__ import annotations

import logging
import threading
import time

import pytest

from proctree_exporter.identity import Identity
from proctree_exporter.sampler import (
    Sample,
    Sampler,
    SampleRound,
    parse_ctx_switches,
    parse_io,
    parse_smaps_rollup,
    parse_stat_figures,
    sample,
)

STAT = (b"586 (a) b (c) S 585 583 20987 0 -1 4194304 916 0 0 0 2 0 0 0 20 0 1 0 2869028 "
        b"13180928 2261 18446744073709551615 94752109928448 94752109928789 140720966005312 0 "
        b"0 0 0 16781312 2 1 0 0 17 0 0 0 0 0 0 94752109940144 94752109940760 94752696381440 "
        b"140720966007368 140720966007505 140720966007505 140720966008796 0\n")
IO = (b"rchar: 91219\nwchar: 2\nsyscr: 49\nsyscw: 2\nread_bytes: 0\nwrite_bytes: 0\n"
      b"cancelled_write_bytes: 0\n")
STATUS_TAIL = (b"Name:\ta) b (c\nUmask:\t0022\nState:\tS (sleeping)\nTgid:\t586\nThreads:\t1\n"
               b"Cpus_allowed:\t3\nCpus_allowed_list:\t0-1\nMems_allowed:\t00000000,00000001\n"
               b"Mems_allowed_list:\t0\nvoluntary_ctxt_switches:\t1\n"
               b"nonvoluntary_ctxt_switches:\t3\n")
ROLLUP = (b"562d31da9000-7ffc27310000 ---p 00000000 00:00 0                          [rollup]\n"
          b"Rss:                9172 kB\nPss:                5644 kB\nPss_Dirty:          3160 kB\n"
          b"Pss_Anon:           3160 kB\nPss_File:           2484 kB\nPss_Shmem:             0 kB\n"
          b"Shared_Clean:       6004 kB\nShared_Dirty:          0 kB\n"
          b"Private_Clean:         8 kB\nPrivate_Dirty:      3160 kB\nReferenced:         9172 kB\n"
          b"Anonymous:          3160 kB\nKSM:                   0 kB\nLazyFree:              0 kB\n"
          b"AnonHugePages:         0 kB\nShmemPmdMapped:        0 kB\nFilePmdMapped:         0 kB\n"
          b"Shared_Hugetlb:        0 kB\nPrivate_Hugetlb:       0 kB\nSwap:                  0 kB\n"
          b"SwapPss:               0 kB\nLocked:                0 kB\n")


def test_stat_fields_are_read_after_a_comm_with_parentheses() -> None:
    s = parse_stat_figures(STAT)
    assert (s.state, s.minor_faults, s.major_faults) == ("S", 916, 0)
    assert (s.utime_ticks, s.stime_ticks, s.threads) == (2, 0, 1)
    assert (s.start_ticks, s.rss_pages) == (2869028, 2261)


def test_stat_without_comm_or_short_is_malformed() -> None:
    with pytest.raises(ValueError):
        parse_stat_figures(b"586 a S 585")
    with pytest.raises(ValueError):
        parse_stat_figures(b"586 (x) S 1 2 3")
    with pytest.raises(ValueError):
        parse_stat_figures(STAT.replace(b" 916 ", b" many "))


def test_io_gives_chars_and_storage_bytes() -> None:
    assert parse_io(IO) == (91219, 2, 0, 0)


def test_io_in_another_order_is_still_read_by_name() -> None:
    shuffled = b"read_bytes: 5\nwrite_bytes: 6\nrchar: 7\nwchar: 8\nsyscr: 1\nsyscw: 2\n"
    assert parse_io(shuffled) == (7, 8, 5, 6)
    with pytest.raises(ValueError):
        parse_io(b"rchar: 7\n")


def test_context_switches_from_the_end_of_status() -> None:
    assert parse_ctx_switches(STATUS_TAIL) == (1, 3)
    # lines a later kernel might append after them
    assert parse_ctx_switches(STATUS_TAIL + b"x86_Thread_features:\t\n") == (1, 3)
    with pytest.raises(ValueError):
        parse_ctx_switches(b"Name:\tx\nThreads:\t1\n")


def test_rollup_gives_pss_and_private_as_uss() -> None:
    assert parse_smaps_rollup(ROLLUP) == (5644 * 1024, (8 + 3160) * 1024)


def test_empty_rollup_has_no_figures() -> None:
    assert parse_smaps_rollup(b"") == (None, None)
    with pytest.raises(ValueError):
        parse_smaps_rollup(b"Rss: 1 kB\n")


def test_nothing_to_sample_is_an_empty_round() -> None:
    r = sample([])
    assert isinstance(r, SampleRound)
    assert (r.samples, r.vanished, r.reused, r.unreadable) == ({}, frozenset(), frozenset(),
                                                               frozenset())
    assert r.duration_s >= 0 and r.cpu_s >= 0 and not r.pss


def test_sample_pss_fields_default_to_none() -> None:
    s = Sample(Identity(1, 2), 0.0, 0.0, 0.0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0, 0)
    assert s.pss_bytes is None and s.uss_bytes is None


def test_interval_must_be_positive() -> None:
    with pytest.raises(ValueError):
        Sampler(list, 0, lambda r: None)


def test_a_failing_callback_is_logged_and_the_thread_goes_on(
        caplog: pytest.LogCaptureFixture) -> None:
    rounds: list[SampleRound] = []
    third = threading.Event()

    def on_round(r: SampleRound) -> None:
        rounds.append(r)
        if len(rounds) >= 3:
            third.set()
        if len(rounds) == 1:
            raise RuntimeError("boom")

    s = Sampler(list, 0.02, on_round)
    with caplog.at_level(logging.WARNING, logger="proctree_exporter.sampler"):
        s.start()
        try:
            assert third.wait(5), "the sampler stopped after a failing callback"
        finally:
            s.stop()
    st = s.status()
    assert st.errors == 1 and st.rounds >= 3 and not st.running
    (rec,) = [r for r in caplog.records if r.getMessage() == "sampler on_round failed"]
    assert "boom" in rec.fields["error"]  # type: ignore[attr-defined]


def test_a_failing_get_identities_skips_that_round_only() -> None:
    calls = 0
    got = threading.Event()

    def identities() -> list[Identity]:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise OSError("no tree yet")
        return []

    s = Sampler(identities, 0.02, lambda r: got.set())
    s.start()
    try:
        assert got.wait(5)
    finally:
        s.stop()
    assert s.status().errors == 1


def test_status_before_start_and_stop_without_start() -> None:
    s = Sampler(list, 1.0, lambda r: None)
    st = s.status()
    assert (st.rounds, st.last_duration_s, st.last_wall_time, st.errors, st.running) == \
        (0, None, None, 0, False)
    t0 = time.monotonic()
    s.stop()
    assert time.monotonic() - t0 < 0.1
