"""The state file without the kernel: its format refuses every damaged byte, and a
restart on the pretend host restores lineage, classes and counters (tests/fakehost.py)."""

from __future__ import annotations

import base64
import time
from array import array
from pathlib import Path

import pytest

from proctree_exporter.classification import ORPHANED
from proctree_exporter.identity import Identity
from proctree_exporter.membership import Roots
from proctree_exporter.mirror import Mirrors
from proctree_exporter.rootspec import RootSpec
from proctree_exporter.snapshot import _root
from proctree_exporter.state import (
    IGNORE_CORRUPT,
    IGNORE_OTHER_BOOT,
    IGNORE_TRUNCATED,
    IGNORE_VERSION,
    MAGIC,
    StateDoc,
    StateError,
    StateStats,
    StateTables,
    StateWriter,
    boot_id,
    decode,
    encode,
    read,
    write_atomically,
)
from proctree_exporter.tree import (
    DROP_EXITED,
    DROP_INCONSISTENT,
    DROP_PID_REUSED,
    LINEAGE_RESTORED,
    LineageRestore,
    PidTree,
    SavedProcess,
)

from .fakehost import Host

BOOT = "0f5e6960-0871-4c78-80b1-3bd77add0005"
FIXTURE = Path(__file__).parent / "fixtures" / "state" / "v1.state"
JOB = RootSpec("job", "comm", "wrapper", zombie_grace_s=0.0)
HOST = RootSpec("host", "pid", "1")


def wrapper_scene() -> Host:
    """init -> shell -> wrapper (the job's instance) -> 3 workers; the wrapper exits."""
    h = Host(JOB, HOST)
    h.spawn("shell", comm="bash")
    h.spawn("wrapper", "shell", comm="wrapper")
    for i in range(3):
        h.spawn(f"w{i}", "wrapper", comm="worker")
    h.spawn("grandchild", "w0", comm="worker")
    h.exit("wrapper")
    h.tick(0.1, rounds=4)
    return h


def saved_doc(h: Host, *, clean: bool = False) -> StateDoc:
    return decode(rendered(h, clean=clean), boot=BOOT)


def rendered(h: Host, *, clean: bool = False) -> bytes:
    """The state file a writer following ``h``'s roots would write now."""
    tables = StateTables(h.roots)
    tables.sync()
    counters = [_root(h.roots, r) for r in h.roots.roots.values()] if clean else None
    return tables.render(counters, clean=clean, boot=BOOT)


def restart(h: Host, doc: StateDoc | None, specs: tuple[RootSpec, ...] = (JOB, HOST)
            ) -> tuple[PidTree, Roots, Mirrors, LineageRestore | None]:
    """A new tree and roots on the same pretend host, as a restarted exporter builds them."""
    tree = PidTree(reader=h.reader, clock=h.clock)  # type: ignore[arg-type]
    with tree.lock:
        tree.reconcile(h.reader.snapshot(), source="snapshot")
    restored = tree.restore_lineage(doc.processes) if doc else None
    roots = Roots(tree, specs, clock=h.clock)
    if doc and restored:
        roots.restore(doc.roots if doc.clean else [r._replace(counters=None) for r in doc.roots],
                      restored.restored)
    roots.attach()
    return tree, roots, Mirrors(roots), restored


def members(m: Mirrors, root: str) -> dict[int, object]:
    return {info.pid: info for info in m.get(root).members.values()}


# -- format -----------------------------------------------------------------------------


def test_a_state_survives_encoding_exactly() -> None:
    h = wrapper_scene()
    doc = decode(rendered(h), boot=BOOT)
    assert decode(encode(doc), boot=BOOT) == doc
    assert {p.pid for p in doc.processes} >= {h.pid(f"w{i}") for i in range(3)}


def test_a_state_cut_at_any_byte_is_refused_cleanly() -> None:
    data = rendered(wrapper_scene())
    reasons = set()
    for cut in range(len(data)):
        with pytest.raises(StateError) as exc:
            decode(data[:cut], boot=BOOT)
        reasons.add(exc.value.reason)
    assert reasons == {IGNORE_TRUNCATED}


def test_any_flipped_bit_is_refused_cleanly() -> None:
    data = rendered(wrapper_scene())
    for i in range(len(data)):
        for bit in (0, 5):
            damaged = bytearray(data)
            damaged[i] ^= 1 << bit
            with pytest.raises(StateError) as exc:
                decode(bytes(damaged), boot=BOOT)
            assert exc.value.reason in (IGNORE_CORRUPT, IGNORE_TRUNCATED, IGNORE_VERSION)


def test_another_version_or_boot_is_refused() -> None:
    data = rendered(wrapper_scene())
    future = data.replace(MAGIC + b" 1 ", MAGIC + b" 2 ", 1)
    with pytest.raises(StateError) as exc:
        decode(future, boot=BOOT)
    assert exc.value.reason == IGNORE_VERSION and "version 2" in str(exc.value)
    with pytest.raises(StateError) as exc:
        decode(data, boot="another-boot")
    assert exc.value.reason == IGNORE_OTHER_BOOT


def test_the_committed_version_1_file_still_reads() -> None:
    """An upgrade reads the files earlier releases wrote: this one was written by the
    first release of the format (regenerate only with a new version number)."""
    doc = decode(FIXTURE.read_bytes(), boot=BOOT)
    assert doc.clean and {r.name for r in doc.roots} == {"job", "host"}
    job = next(r for r in doc.roots if r.name == "job")
    assert sorted(m.cls for m in job.members) == ["healthy"] + [ORPHANED] * 3
    assert job.counters is not None and job.counters.spawned_total == 5


def test_checksummed_nonsense_is_corrupt_not_a_crash() -> None:
    import hashlib
    for body in (b"[]", b'{"boot_id": "%s"}' % BOOT.encode(), b"\xff\xfe",
                 b'{"boot_id":"%s","processes":[[1,2,3]],"roots":[]}' % BOOT.encode()):
        data = b"%s 1 %d %s\n" % (MAGIC, len(body), hashlib.sha256(body).hexdigest().encode())
        with pytest.raises(StateError) as exc:
            decode(data + body, boot=BOOT)
        assert exc.value.reason == IGNORE_CORRUPT


def test_written_atomically_and_read_back(tmp_path: Path) -> None:
    path = tmp_path / "sub" / "state"
    data = rendered(wrapper_scene(), clean=True)
    write_atomically(path, data)
    assert read(path, boot=BOOT) == decode(data, boot=BOOT)
    assert oct(path.stat().st_mode & 0o777) == "0o600"
    assert [p.name for p in path.parent.iterdir()] == ["state"]  # no temporary file left
    assert read(tmp_path / "none", boot=BOOT) is None


# -- restoring ----------------------------------------------------------------------------


def test_orphans_of_an_exited_wrapper_come_back_as_its_orphans() -> None:
    h = wrapper_scene()
    doc = saved_doc(h)
    tree, _, mirrors, _ = restart(h, doc)
    job = members(mirrors, "job")
    workers = {h.pid(f"w{i}") for i in range(3)}
    assert set(job) == workers | {h.pid("grandchild")}
    for pid in workers:
        m = job[pid]
        assert m.cls == ORPHANED and m.lineage_ppid == h.pid("wrapper")
        assert m.lineage_source == LINEAGE_RESTORED and m.lineage_known
        assert "(wrapper)" in m.reason, m.reason
    assert job[h.pid("grandchild")].cls == "healthy"
    with tree.lock:
        assert tree.is_descendant(h.pid("w1"), h.pid("shell"))
    assert tree.stats.lineage_unknown == 0


def test_without_a_state_the_orphans_are_lost_to_the_root() -> None:
    h = wrapper_scene()
    _, _, mirrors, _ = restart(h, None)
    assert members(mirrors, "job") == {}
    assert all(not m.lineage_known for pid, m in members(mirrors, "host").items()
               if pid in {h.pid(f"w{i}") for i in range(3)})


def test_a_reused_pid_is_not_restored_onto_the_stranger() -> None:
    h = wrapper_scene()
    doc = saved_doc(h)
    w1 = h.pid("w1")
    h.exit("w1")
    h.spawn("stranger", "shell", comm="worker", pid=w1)
    h.exit("w2")
    _, _, mirrors, restored = restart(h, doc)
    assert restored is not None
    assert restored.dropped[DROP_PID_REUSED] == 1 and restored.dropped[DROP_EXITED] == 1
    job = members(mirrors, "job")
    assert w1 not in job and h.pid("w2") not in job and h.pid("w0") in job
    stranger = members(mirrors, "host")[w1]
    assert stranger.lineage_source != LINEAGE_RESTORED
    assert stranger.start_ticks == h.start("stranger")


def test_cycles_and_younger_parents_in_a_state_are_refused() -> None:
    h = Host(HOST)
    a = h.spawn("a", comm="a")
    h.tick(0.5)
    b = h.spawn("b", comm="b")
    sa, sb = h.start("a"), h.start("b")
    tree = h.tree
    result = tree.restore_lineage([
        SavedProcess(a, sa, Identity(b, sb), "a", True),  # b is younger than a
        SavedProcess(b, sb, Identity(a, sa), "b", True),
    ])
    assert result.dropped[DROP_INCONSISTENT] == 1
    with tree.lock:
        assert tree.get(b).parent is tree.get(a)
        assert tree.get(a).parent is tree.get(1)
    # and a cycle between processes of the same tick: one link of it is refused
    h.spawn("c", comm="c")
    h.spawn("d", comm="d")
    c, d, sc, sd = h.pid("c"), h.pid("d"), h.start("c"), h.start("d")
    assert sc == sd
    result = tree.restore_lineage([SavedProcess(c, sc, Identity(d, sd), "c", True),
                                   SavedProcess(d, sd, Identity(c, sc), "d", True)])
    assert result.dropped[DROP_INCONSISTENT] == 1
    with tree.lock:
        assert tree.is_descendant(c, 1) and tree.is_descendant(d, 1)


def test_a_clean_shutdown_continues_the_counters() -> None:
    h = wrapper_scene()
    h.spawn("short", "w0", comm="worker")
    h.exit("short")
    h.tick(0.1, rounds=2)
    before = {r.name: (r.spawned_total, r.exited_total, dict(r.class_changes_total))
              for r in h.roots.roots.values()}
    doc = saved_doc(h, clean=True)
    h.exit("w2")  # while the exporter is down: one exit, one newcomer
    h.spawn("late", "shell", comm="wrapper")
    _, roots, _, _ = restart(h, doc)
    job = roots.roots["job"]
    spawned, exited, changes = before["job"]
    assert job.spawned_total == spawned + 1  # the new instance
    assert job.exited_total == exited + 1  # w2
    assert job.class_changes_total[ORPHANED] == changes[ORPHANED]  # restored, not new
    assert job.restarts == 1  # down at the save, up again now


def test_after_a_crash_the_counters_start_from_zero() -> None:
    h = wrapper_scene()
    doc = saved_doc(h, clean=False)
    _, roots, _, _ = restart(h, doc)
    job = roots.roots["job"]
    # only what this run saw: the restored members joining, and their classes
    assert job.spawned_total == 4 and job.exited_total == 0


def test_a_root_whose_selector_changed_is_not_restored() -> None:
    h = wrapper_scene()
    doc = saved_doc(h)
    _, _, mirrors, _ = restart(h, doc, (RootSpec("job", "comm", "other"), HOST))
    assert members(mirrors, "job") == {}


# -- the writer -------------------------------------------------------------------------


def test_the_writer_writes_at_start_on_its_interval_and_cleanly_at_stop(tmp_path: Path) -> None:
    h = wrapper_scene()
    stats = StateStats(enabled=True)
    path = tmp_path / "state"
    writer = StateWriter(path, 0.05, h.roots,
                         lambda: [_root(h.roots, r) for r in h.roots.roots.values()],
                         stats, BOOT)
    writer.start()
    first = read(path, boot=BOOT)
    assert first is not None and not first.clean, "the start marks any clean file used"
    deadline = time.monotonic() + 5
    while stats.writes_total < 3 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert stats.writes_total >= 3
    writer.stop()
    last = read(path, boot=BOOT)
    assert last is not None and last.clean
    job = next(r for r in last.roots if r.name == "job")
    assert job.counters is not None and job.counters.spawned_total == 5
    assert stats.last_write_bytes == path.stat().st_size and stats.last_write_seconds > 0
    assert stats.write_failures_total == 0


def test_a_failed_write_is_counted_and_the_old_file_kept(tmp_path: Path,
                                                         caplog: pytest.LogCaptureFixture
                                                         ) -> None:
    path = tmp_path / "state"
    path.mkdir()
    (path / "in-the-way").touch()  # rename() cannot replace a non-empty directory
    stats = StateStats(enabled=True)
    writer = StateWriter(path, 60, wrapper_scene().roots, list, stats, BOOT)
    assert writer.write(clean=False) is False
    assert stats.write_failures_total == 1 and stats.writes_total == 0
    assert "cannot write the state file" in caplog.text
    assert (path / "in-the-way").exists()


def test_the_boot_id_is_the_kernels() -> None:
    assert boot_id() == Path("/proc/sys/kernel/random/boot_id").read_text().strip() != ""


def test_tables_kept_from_events_equal_tables_built_afresh() -> None:
    """Whatever happens between two writes (exec, exit, reaping, tombstones let go,
    more events than a log holds, a root removed), the writer's incremental tables say
    what tables built from scratch say."""
    small = RootSpec("small", "comm", "wrapper", change_log_size=8, tombstone_ttl_s=0.2)
    h = Host(JOB, HOST, small)
    follower = StateTables(h.roots)

    def same() -> None:
        follower.sync()
        fresh = StateTables(h.roots)
        fresh.sync()
        a = decode(follower.render(None, clean=False, boot=BOOT), boot=BOOT)
        b = decode(fresh.render(None, clean=False, boot=BOOT), boot=BOOT)
        assert sorted(a.processes) == sorted(b.processes)
        assert sorted(a.roots) == sorted(b.roots)

    h.spawn("shell", comm="bash")
    h.spawn("wrapper", "shell", comm="wrapper")
    same()
    for i in range(12):  # more than the small root's log holds: it relists
        h.spawn(f"w{i}", "wrapper", comm="worker")
    h.exec("w0", "python3")
    h.exit("w1")
    h.exit("wrapper")
    h.tick(0.1, rounds=4)
    same()
    assert any(p.comm == "python3" for p in decode(
        follower.render(None, clean=False, boot=BOOT), boot=BOOT).processes)
    h.tick(1.0, rounds=4)  # tombstones past their TTL are let go
    same()
    h.roots.remove("small")
    same()
    assert set(follower.roots) == {"job", "host"}


def test_a_checksummed_file_with_bad_content_is_corrupt() -> None:
    import json
    import zlib

    good = json.loads(rendered(wrapper_scene()).split(b"\n", 1)[1])

    def framed(doc: object) -> bytes:
        body = json.dumps(doc).encode()
        return b"%s 1 %d %08x\n" % (MAGIC, len(body), zlib.crc32(body)) + body

    def spoil(**changes: object) -> dict:
        doc = json.loads(json.dumps(good))
        for key, value in changes.items():
            if "." in key:
                outer, inner = key.split(".")
                doc[outer][inner] = value
            else:
                doc[key] = value
        return doc

    bad = [
        [],  # not an object
        spoil(written_at="yesterday"),
        spoil(**{"processes.comms": "a\0b"}),  # fewer rows than comms
        spoil(**{"processes.table": "AAAA"}),  # 3 bytes: not whole rows
        spoil(**{"processes.table": "not base64!"}),
        spoil(classes=[1, 2]),
    ]
    row = [5, 6, -1, 7, 1]  # a parent pid without a parent start
    bad.append(spoil(**{"processes.table": base64.b64encode(
        array("q", row).tobytes()).decode(), "processes.comms": "x"}))
    bad.append(spoil(**{"processes.table": base64.b64encode(
        array("q", [5, 6, -2, -1, 1]).tobytes()).decode(), "processes.comms": "x"}))
    for doc in bad:
        with pytest.raises(StateError) as exc:
            decode(framed(doc), boot=BOOT)
        assert exc.value.reason == IGNORE_CORRUPT, doc
    for header in (b"%s x 1 0\n" % MAGIC, b"%s 1 2\n" % MAGIC, b"garbage\n"):
        with pytest.raises(StateError) as exc:
            decode(header + b"{}", boot=BOOT)
        assert exc.value.reason == IGNORE_CORRUPT
    with pytest.raises(StateError) as exc:
        decode(b"\x00" * 200, boot=BOOT)
    assert exc.value.reason == IGNORE_CORRUPT


def test_an_unreadable_file_is_said_so(tmp_path: Path) -> None:
    (tmp_path / "state").mkdir()
    with pytest.raises(StateError) as exc:
        read(tmp_path / "state", boot=BOOT)
    assert exc.value.reason == "unreadable"
