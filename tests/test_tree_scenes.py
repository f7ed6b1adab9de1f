"""The PID tree on plain event sequences: a pretend host plays the kernel (no kernel).

tests/test_tree_kernel.py checks the same tree on real processes; here every
path is taken on purpose: reads that fail, events that come late or never,
resyncs, eviction, and the lineage questions.
"""

from __future__ import annotations

import pytest

from proctree_exporter import netlink as nl
from proctree_exporter.rootspec import RootSpec
from proctree_exporter.tree import (
    LINEAGE_FORK,
    LINEAGE_LATE,
    LINEAGE_RESYNC,
    PidTree,
    ProcessView,
    TreeListener,
    forest,
)

from .fakehost import Host, Proc


def node(h: Host, name: str):  # type: ignore[no-untyped-def]
    n = h.tree.get(h.pid(name))
    assert n is not None, name
    return n


def test_fork_exec_exit_reap_make_a_tombstone_with_lineage() -> None:
    h = Host()
    h.spawn("sh", comm="sh")
    h.spawn("a", "sh")
    a = node(h, "a")
    assert (a.comm, a.lineage_source, a.start_exact) == ("sh", LINEAGE_FORK, False)
    assert a.same_start(h.start("a")) and a.identity == (h.pid("a"), a.start_ticks)
    h.exec("a", "sleep", "/bin/sleep", "sleep 1")
    assert (a.comm, a.exe, a.cmdline) == ("sleep", "/bin/sleep", "sleep 1")
    h.exit("a", 2)
    assert a.exited and not a.reaped and a.exit_code == 2 and h.tree.stats.processes_exited == 1
    h.tick()
    assert a.reaped and h.tree.get(a.pid) is None and h.tree.find(a.pid) == [a]
    assert h.tree.tombstone_count == 1 and "exited=True" in repr(a)
    v = h.tree.view(a)
    assert isinstance(v, ProcessView) and v.identity == a.identity and v.lineage_ppid == h.pid("sh")


def test_an_exec_of_a_process_first_seen_reads_its_parent_and_start() -> None:
    h = Host()
    h.spawn("p", comm="p")
    pid = h.spawn("x", "p", silent=True)  # its FORK was lost
    h.exec("x", "late")
    x = h.tree.get(pid)
    assert x is not None and x.lineage_source == LINEAGE_LATE and x.start_exact
    assert x.parent is node(h, "p") and x.comm == "late"


def test_exec_reads_that_fail_keep_what_fork_told() -> None:
    h = Host()
    h.spawn("a", comm="a")
    p = h.procs[h.pid("a")]
    p.denied.add("cmdline")
    h.exec("a", "b")
    assert node(h, "a").comm == "b" and h.tree.stats.exec_unread == 0  # denied: not unread
    p.denied = {"stat-malformed", "comm"}
    h.exec("a", "c")
    assert node(h, "a").comm == "b"
    # gone before its EXEC could be read: counted, it keeps its name
    h.spawn("g", "a")
    g = h.pid("g")
    del h.procs[g]
    h._event(nl.ExecEvent, g, g)
    assert node(h, "g").comm == "b" and h.tree.stats.exec_unread == 1
    # an EXEC for a pid never seen, gone or unreadable before the read: unknown
    h._event(nl.ExecEvent, 4242, 4242)
    h.procs[4343] = Proc(4343, 1, h.ticks(), "secret", denied={"stat"})
    h._event(nl.ExecEvent, 4343, 4343)
    h.procs[4444] = Proc(4444, 1, h.ticks(), "odd", denied={"stat-malformed"})
    h._event(nl.ExecEvent, 4444, 4444)
    assert h.tree.get(4242) is None and h.tree.get(4343) is None and h.tree.get(4444) is None
    assert h.tree.stats.unknown_pid_events == 2
    # a value error on a known process counts as unread
    h.procs[h.pid("a")].denied = {"malformed"}
    h._event(nl.ExecEvent, h.pid("a"), h.pid("a"))
    assert h.tree.stats.exec_unread == 3


def test_events_for_unknown_pids_and_stale_events_change_nothing() -> None:
    h = Host()
    h.spawn("a")
    a = node(h, "a")
    h._event(nl.ExitEvent, 999, 999, 0, 17, 1, 1)
    assert h.tree.stats.unknown_pid_events == 1
    # an EXIT stamped before the process it names started: queued before a resync
    with h.tree.lock:
        h.tree.apply(nl.ExitEvent(0, 0, h.clock.mono_at_ticks(a.start_ticks - 50), a.pid, a.pid,
                                  0, 17, 1, 1))
        h.tree.apply(nl.CommEvent(0, 0, h.clock.mono_at_ticks(a.start_ticks - 50), a.pid, a.pid,
                                  "old"))
        h.tree.apply(nl.ForkEvent(0, 0, h.clock.mono_at_ticks(a.start_ticks - 50), 1, 1, a.pid,
                                  a.pid))
    assert not a.exited and a.comm != "old" and h.tree.stats.stale_events == 3
    h._event(nl.SidEvent, a.pid, a.pid)  # not applied by the tree at all
    h.exit("a")
    h._event(nl.ExitEvent, a.pid, a.pid, 0, 17, 1, 1)  # a second EXIT for it
    assert h.tree.stats.processes_exited == 1


def test_renames_uids_and_threads() -> None:
    h = Host()
    h.spawn("a", comm="a")
    a = node(h, "a")
    h.rename("a", "b")
    h.setuid("a", 1000)
    assert (a.comm, a.uid) == ("b", 1000)
    h._event(nl.CommEvent, 7777, a.pid, "thread-name")  # a thread's name is not the comm
    assert a.comm == "b"
    h._event(nl.UidEvent, 7777, a.pid, 5, 5)
    assert a.uid == 1000
    h.thread("a", 7777)
    h.thread("a", 7778)
    assert a.threads == 3 and h.tree.stats.threads_live == 4  # init and a's three
    h.thread("a", 7777, exit=True)
    assert a.threads == 2
    h.exit("a")
    assert a.threads == 1  # the leader's exit; the other thread's EXIT may still come
    h._event(nl.ExitEvent, 7778, a.pid, 0, 0, 1, 1)
    assert a.threads == 0
    h._event(nl.ExitEvent, 7779, a.pid, 0, 0, 1, 1)  # a thread never counted
    assert a.threads == 0 and h.tree.stats.threads_exited == 3


def test_a_non_leader_exec_revives_the_leader_whose_exit_was_the_threads() -> None:
    h = Host()
    h.spawn("a")
    a = node(h, "a")
    h._event(nl.ExitEvent, a.pid, a.pid, 0, 17, 1, 1)  # de_thread: the old leader goes
    assert a.exited
    h.exec("a", "new")
    assert not a.exited and a.comm == "new" and h.tree.stats.processes_exited == 0


def test_a_fork_over_a_live_pid_retires_the_process_whose_exit_was_lost() -> None:
    h = Host()
    h.spawn("a")
    old = node(h, "a")
    h.exit("a", silent=True)
    h.clock.advance(1)
    h.spawn("b", pid=old.pid)
    assert old.reaped and old.exit_inferred and h.tree.stats.pid_reuse == 1
    assert h.tree.stats.missed_exits == 1


def test_a_fork_known_from_a_snapshot_upgrades_its_lineage() -> None:
    h = Host()
    h.spawn("p")
    pid = h.spawn("c", "p", silent=True)
    h.resync()  # /proc shows c before its FORK is applied
    c = h.tree.get(pid)
    assert c is not None and c.lineage_source == LINEAGE_RESYNC
    h._event(nl.ForkEvent, h.pid("p"), h.pid("p"), pid, pid)
    assert c.lineage_source == LINEAGE_FORK and h.tree.get(pid) is c


def test_deferred_exit_check_tells_reaped_from_zombie_and_waits_for_do_exit() -> None:
    h = Host()
    h.spawn("a")
    a = node(h, "a")
    h.exit("a", reap=False)
    h.procs[a.pid].state = "R"  # still in do_exit
    h.tick()
    assert not a.reaped and a.zombie_ns is None
    h.procs[a.pid].state = "Z"
    h.tick()
    assert a.zombie_ns is not None and a.state == "Z" and h.tree.zombie_count == 1
    h.procs[a.pid].denied.add("stat")
    h.tick(1.1)
    assert not a.reaped  # cannot know: left as it is
    h.reap("a")
    h.tick(1.1)  # zombies are rechecked every second
    assert a.reaped and h.tree.zombie_count == 0


def test_an_exit_the_kernel_has_not_settled_is_rechecked_less_and_less_often() -> None:
    h = Host()
    h.spawn("a")
    a = node(h, "a")
    h.exit("a", reap=False)
    h.procs[a.pid].state = "R"  # still in do_exit: a parent slow to reap, under load
    stats = []
    real_stat = h.reader.stat

    def counting_stat(pid: int):  # type: ignore[no-untyped-def]
        stats.append(pid)
        return real_stat(pid)

    h.reader.stat = counting_stat  # type: ignore[method-assign]
    h.tick(2.0, rounds=200)  # the collector's housekeeping, every 10 ms for 2 s
    # 20, 40, 80, 160 ms, then every 250 ms: not 200 stat reads
    assert 8 <= len(stats) <= 12 and not a.reaped and a.zombie_ns is None
    h.procs[a.pid].state = "Z"
    h.tick(0.26, rounds=26)
    assert a.zombie_ns is not None and h.tree.zombie_count == 1
    h.reap("a")
    h.tick(1.1, rounds=2)
    assert a.reaped


def test_an_exec_in_a_non_leader_thread_after_an_unsettled_exit_revives_the_process() -> None:
    h = Host()
    h.spawn("a")
    a = node(h, "a")
    h.exit("a", reap=False)
    h.procs[a.pid].state = "R"
    h.tick()  # checked once, not settled: waiting for its recheck
    assert a.exited and not a.reaped
    h.exec("a", "b")  # the leader's EXIT was a thread's: the process lives on
    assert not a.exited and a.comm == "b"
    h.tick(1.0, rounds=100)
    assert not a.exited and not a.reaped


def test_command_lines_are_read_only_while_a_root_needs_them() -> None:
    h = Host(read_cmdlines=False)
    h.spawn("a", comm="sleep", cmdline="sleep 100")
    a = node(h, "a")
    assert (a.comm, a.exe, a.cmdline) == ("sleep", "/usr/bin/sleep", None)
    init = node(h, "init")
    assert init.cmdline is None  # the seed skipped them too
    h.roots.add(RootSpec(name="job", select="cmdline", match="^sleep"))
    assert h.tree.read_cmdlines and a.cmdline == "sleep 100"  # read for the live ones now
    assert [n.pid for n in h.roots.roots["job"].members] == [a.pid]
    h.exec("a", "sleep", cmdline="sleep 200")
    assert a.cmdline == "sleep 200"


def test_comm_exe_and_cgroup_strings_are_shared_between_processes() -> None:
    h = Host()
    h.spawn("a", comm="worker", exe="/usr/bin/worker")
    h.spawn("b", comm="worker", exe="/usr/bin/worker")
    a, b = node(h, "a"), node(h, "b")
    assert a.comm is b.comm and a.exe is b.exe


def test_a_pid_reused_while_a_zombie_check_is_pending_buries_the_old_one() -> None:
    h = Host()
    h.spawn("a")
    a = node(h, "a")
    h.exit("a", reap=False)
    h.procs[a.pid] = Proc(a.pid, 1, a.start_ticks + 500, "other")  # reused before the check
    h.reader.exists = lambda pid: None  # type: ignore[method-assign]  # stat decides
    h.tick()
    assert a.reaped


def test_children_of_an_exited_parent_get_their_new_parent_when_the_kernel_moved_them() -> None:
    h = Host()
    h.spawn("w")
    h.spawn("c", "w")
    h.spawn("d", "w")
    c, d = node(h, "c"), node(h, "d")
    h.exit("w", reap=False)
    h.procs[c.pid].ppid = h.pid("w")  # the kernel has not moved c yet
    del h.procs[d.pid]  # d is gone already: its own EXIT will settle it
    h.tick()
    assert c.ppid == h.pid("w") and not node(h, "c").exited
    h.procs[c.pid].ppid = 1
    h.tick()
    assert c.ppid == 1 and c.parent is not None and c.parent.pid == h.pid("w")


def test_tombstones_are_evicted_by_capacity_and_ttl_keeping_lineage() -> None:
    h = Host(max_nodes=5, tombstone_ttl_s=10)
    h.spawn("a")
    h.spawn("b", "a")
    h.spawn("c", "b")
    a, b, c = node(h, "a"), node(h, "b"), node(h, "c")
    h.exit("b")
    h.tick()
    assert b.reaped and c.parent is b
    for i in range(3):
        h.spawn(f"x{i}")
        h.exit(f"x{i}")
    h.tick()
    assert len(h.tree) <= 5 and h.tree.stats.evicted >= 1
    assert c.parent is a and b not in (a.children or {}) and c in (a.children or {})
    h.tick(11)
    assert h.tree.tombstone_count == 0
    for i in range(4):
        h.spawn(f"y{i}")
    h.tick()
    assert h.tree.stats.over_capacity >= 1  # live processes alone exceed it: counted


def test_reconcile_adds_retires_reparents_and_marks_lineage_it_cannot_know() -> None:
    h = Host()
    h.spawn("p")
    h.spawn("gone", "p")
    gone = node(h, "gone")
    h.exit("gone", silent=True)
    h.spawn("reused", "p", silent=True, pid=gone.pid)
    h.procs[h.pid("reused")].start += 100
    h.spawn("z", "p", silent=True)
    h.exit("z", reap=False, silent=True)
    h.spawn("older_child", "p", silent=True)
    # a process under a parent younger than itself: adopted by a subreaper started later
    h.procs[h.pid("older_child")].start = 0
    h.spawn("orphan", "init", silent=True)
    with h.tree.lock:
        res = h.tree.reconcile(h.reader.snapshot())
    assert (res.added, res.vanished, res.reused) == (4, 1, 1)
    assert gone.reaped and gone.exit_inferred
    z = h.tree.get(h.pid("z"))
    assert z is not None and z.exited and z.zombie_ns is not None
    assert not node(h, "older_child").lineage_known and not node(h, "orphan").lineage_known
    assert h.tree.stats.lineage_unknown == 2
    h.exit("orphan")
    h.tick()
    assert h.tree.stats.lineage_unknown == 1
    # a queued EXIT for the process the resync found gone completes its exit
    missed = h.tree.stats.missed_exits
    h.spawn("v")
    v = node(h, "v")
    h.exit("v", 7, silent=True)
    h.resync()
    h._event(nl.ExitEvent, v.pid, v.pid, 7 << 8, 17, 1, 1)
    assert v.exit_code == 7 and h.tree.stats.missed_exits == missed
    # the zombie found by a resync: a queued EXIT of a live zombie completes it too
    h.spawn("zz")
    zz = node(h, "zz")
    h.exit("zz", reap=False, silent=True)
    h.resync()
    h._event(nl.ExitEvent, zz.pid, zz.pid, 1 << 8, 17, 1, 1)
    assert zz.exit_code == 1 and not zz.exit_inferred


def test_a_resync_lists_a_child_before_its_parent_and_still_links_them() -> None:
    h = Host()
    h.spawn("p", silent=True)
    h.spawn("c", "p", silent=True)
    h.procs = dict(reversed(list(h.procs.items())))
    h.procs[h.pid("c")].start = h.procs[h.pid("p")].start  # same tick: order by listing
    h.resync()
    assert node(h, "c").parent is node(h, "p")


def test_lineage_questions() -> None:
    h = Host()
    h.spawn("a", comm="a")
    h.spawn("b", "a", comm="b")
    h.spawn("c", "b", comm="c")
    h.exit("b")
    h.tick()
    tree = h.tree
    assert [n.pid for n in tree.descendants(h.pid("a"))] == [h.pid("c")]
    assert [n.pid for n in tree.descendants(h.pid("a"), include_exited=True)] == [
        h.pid("b"), h.pid("c")]
    assert tree.descendants(99999) == []
    assert tree.is_descendant(h.pid("c"), h.pid("a")) and tree.is_descendant(h.pid("c"), "b")
    assert not tree.is_descendant(h.pid("c"), "zzz") and not tree.is_descendant(99999, 1)
    assert tree.chain(h.pid("c")) == (f"{h.pid('c')}|c|root;{h.pid('b')}|b|root;"
                                      f"{h.pid('a')}|a|root;1|init|root")
    # a pid the tree does not know continues through /proc's current parent
    h.procs[5000] = Proc(5000, h.pid("a"), h.ticks(), "stranger", uid=12345)
    assert tree.chain(5000) == f"5000|stranger|12345;{h.pid('a')}|a|root;1|init|root"
    h.procs[5001] = Proc(5001, 5002, h.ticks(), "x")
    assert tree.chain(5001) == "5001|x|root;5002|?|?"
    assert tree.known_starts()[h.pid("a")] == node(h, "a").start_ticks


def test_forest_nests_by_lineage_through_deep_chains_and_cycles() -> None:
    h = Host()
    h.spawn("top", comm="top")
    last = "top"
    for i in range(1500):  # deeper than Python's recursion limit
        h.spawn(f"n{i}", last, silent=True)
        last = f"n{i}"
    h.resync()
    trees = forest(h.tree.snapshot())
    assert [t.process.pid for t in trees] == [1]
    depth, cur = 0, trees[0]
    while cur.children:
        cur, depth = cur.children[0], depth + 1
    assert depth == 1501
    only = forest(h.tree.snapshot(), h.pid("n1498"))
    assert len(only) == 1 and only[0].children[0].process.pid == h.pid("n1499")
    a, b = node(h, "n0"), node(h, "n1")
    a.parent = b  # corrupt on purpose: a two-node cycle
    views = [v._replace(lineage_ppid=b.pid, lineage_start=b.start_ticks) if v.pid == a.pid else v
             for v in h.tree.snapshot() if v.pid in (a.pid, b.pid)]
    assert forest(views) == []  # a cycle has no top: nothing, and no endless walk


def test_cgroups_are_read_once_switched_on() -> None:
    h = Host()
    h.spawn("a", cgroup="/x")
    h.spawn("b", cgroup="/y")
    h.procs[h.pid("b")].denied.add("cgroup")
    assert node(h, "a").cgroup is None
    h.tree.enable_cgroups()
    assert node(h, "a").cgroup == "/x" and node(h, "b").cgroup is None
    h.exec("a", "a2")
    assert node(h, "a").cgroup == "/x"


def test_a_listener_gets_every_change_in_order() -> None:
    seen: list[tuple[str, int]] = []

    class Recorder(TreeListener):
        def spawned(self, node):  # type: ignore[no-untyped-def]
            seen.append(("spawned", node.pid))

        def changed(self, node, prev):  # type: ignore[no-untyped-def]
            seen.append(("changed", node.pid))

        def exited(self, node):  # type: ignore[no-untyped-def]
            seen.append(("exited", node.pid))

        def zombie(self, node):  # type: ignore[no-untyped-def]
            seen.append(("zombie", node.pid))

        def reaped(self, node):  # type: ignore[no-untyped-def]
            seen.append(("reaped", node.pid))

        def reparented(self, node, prev_ppid):  # type: ignore[no-untyped-def]
            seen.append(("reparented", node.pid))

    h = Host()
    h.tree.listener = Recorder()
    a = h.spawn("a")
    c = h.spawn("c", "a")
    h.exec("c", "x")
    h.exit("a")
    h.exit("c", reap=False)
    h.tick()
    h.reap("c")
    h.tick(1.1)
    # c, a zombie by then, is given to init when a is found reaped: the parent that
    # must reap it now
    assert seen == [("spawned", a), ("spawned", c), ("changed", c), ("exited", a),
                    ("exited", c), ("reparented", c), ("reaped", a), ("zombie", c),
                    ("reaped", c)]


def test_the_base_listener_and_an_empty_tree_do_nothing() -> None:
    listener = TreeListener()
    tree = PidTree()
    assert tree.live_count == 0 and len(tree) == 0 and tree.snapshot() == []
    listener.tick(0)
    with pytest.raises(AttributeError):
        listener.unknown  # type: ignore[attr-defined]  # noqa: B018
