"""Runtime roots and confidence, on plain event sequences (no kernel).

tests/fakehost.py plays the kernel. What a kill does to real processes, the
write API's HTTP side and its security are in tests/test_control_kernel.py.
"""

from __future__ import annotations

import pytest

from proctree_exporter.classification import DEGRADED, EXACT, INFERRED_LINEAGE, confidence_of
from proctree_exporter.control import ControlError, Controller, ControlStats, spec_from_body
from proctree_exporter.identity import Identity
from proctree_exporter.membership import SavedRoot
from proctree_exporter.mirror import RootMirror
from proctree_exporter.rootspec import RootSpec
from proctree_exporter.state import StateDoc, decode, encode
from proctree_exporter.tree import (
    LINEAGE_FORK,
    LINEAGE_LATE,
    LINEAGE_POLL,
    LINEAGE_RESTORED,
    LINEAGE_RESYNC,
    LINEAGE_SNAPSHOT,
)

from .fakehost import Host


def test_inferred_lineage_is_every_source_but_a_fork_event() -> None:
    assert {LINEAGE_SNAPSHOT, LINEAGE_RESYNC, LINEAGE_LATE, LINEAGE_POLL} == INFERRED_LINEAGE
    assert not {LINEAGE_FORK, LINEAGE_RESTORED} & INFERRED_LINEAGE


def test_confidence_says_why_it_is_degraded() -> None:
    assert confidence_of([]) == (EXACT, {})
    assert confidence_of([]).reason == ""
    conf = confidence_of(["snapshot", "resync", "snapshot"])
    assert conf.level == DEGRADED and conf.inferred == {"snapshot": 2, "resync": 1}
    assert conf.reason == ("3 members placed by /proc, not by a fork event: 1 from a resync "
                           "after lost events, 2 from the start-up snapshot (they predate "
                           "the exporter)")
    assert confidence_of(["poll"]).reason.startswith("1 member placed")


def test_a_root_over_processes_older_than_the_exporter_is_degraded_until_they_go() -> None:
    h = Host()
    h.spawn("job", comm="job")
    h.spawn("old", "job", silent=True)  # no FORK event: as if before the exporter
    h.seed()
    h.roots.add(RootSpec(name="r", select="comm", match="job"))
    mirror = RootMirror(h.roots, "r")
    mirror.sync()
    assert h.roots.confidence("r") == (DEGRADED, {"snapshot": 1})
    assert mirror.confidence() == h.roots.confidence("r"), "the API's view agrees"
    h.spawn("new", "job")  # seen forking: does not change it
    assert h.roots.confidence("r").inferred == {"snapshot": 1}
    h.exit("old")
    assert h.roots.confidence("r") == (EXACT, {})
    mirror.sync()
    assert mirror.confidence() == (EXACT, {})


def test_a_member_whose_fork_is_learnt_after_its_join_still_uncounts_at_exit() -> None:
    # the tree may upgrade a node's lineage to "fork" after it joined (a late FORK);
    # its exit must take back what its join counted, or the root stays degraded
    h = Host()
    h.spawn("job", comm="job")
    h.spawn("old", "job", silent=True)
    h.seed()
    h.roots.add(RootSpec(name="r", select="comm", match="job"))
    assert h.roots.confidence("r").inferred == {"snapshot": 1}
    with h.tree.lock:
        h.tree.get(h.pid("old")).lineage_source = "fork"
    h.exit("old")
    assert h.roots.confidence("r") == (EXACT, {})


def test_an_instance_found_by_its_selector_does_not_degrade_its_root() -> None:
    h = Host()
    h.spawn("job", comm="job", silent=True)
    h.seed()
    h.roots.add(RootSpec(name="r", select="comm", match="job"))
    h.spawn("child", "job")
    assert h.roots.confidence("r").level == EXACT


def test_members_picked_up_by_a_resync_degrade_their_root() -> None:
    h = Host(RootSpec(name="r", select="comm", match="job"))
    h.spawn("job", comm="job")
    h.spawn("lost", "job", silent=True)  # its FORK was lost
    h.resync()
    assert h.roots.confidence("r") == (DEGRADED, {"resync": 1})


# -- request bodies -----------------------------------------------------------------------

@pytest.mark.parametrize(("body", "key", "words"), [
    ({"match": "x"}, "select", "missing key 'select'"),
    ({"select": "comm"}, "match", "missing key 'match'"),
    ({"select": "comm", "match": "x", "bogus": 1}, "bogus", "unknown key 'bogus'"),
    ({"select": "comm", "match": "x", "actions": {"bogus": 1}}, "actions.bogus",
     "unknown key"),
    ({"select": "nope", "match": "x"}, "select", "select:"),
    ({"select": "pid", "match": "abc"}, None, "a pid root matches a number"),
    ({"select": "cgroup", "match": "relative"}, None, "absolute path"),
    ({"select": "comm", "match": "x", "max_members": 0}, "max_members", "max_members:"),
    ({"select": "comm", "match": "x", "name": "other"}, "name", "is not the name"),
    (["select", "comm"], None, "JSON object"),
])
def test_a_bad_body_names_its_key(body: object, key: str | None, words: str) -> None:
    with pytest.raises(ControlError) as info:
        spec_from_body("job", body)
    assert info.value.status == 400
    assert words in str(info.value)
    if key is not None:
        assert info.value.key == key


def test_a_body_gives_the_spec_a_config_root_would_have() -> None:
    spec, keys = spec_from_body("job", {"select": "pid", "match": 42,
                                        "actions": {"enabled": True}})
    assert spec == RootSpec(name="job", select="pid", match="42", runtime=True,
                            actions=spec.actions)
    assert spec.actions.enabled and spec.actions.dry_run
    assert keys == {"select": "pid", "match": "42", "actions": {"enabled": True}}
    with pytest.raises(ControlError) as info:
        spec_from_body("9bad", {"select": "comm", "match": "x"})
    assert info.value.key == "name"


# -- the controller ----------------------------------------------------------------------

def controller(h: Host, config: tuple[str, ...] = ("host",), **kw: object) -> Controller:
    args: dict = {"max_runtime_roots": 3, "grace_s": 1.0, **kw}
    return Controller(h.roots, catch_up=lambda _t: True, config_names=lambda: config,
                      stats=ControlStats(enabled=True), **args)


def test_ensure_is_idempotent_and_refuses_what_differs() -> None:
    h = Host(RootSpec(name="host", select="pid", match="1"))
    h.spawn("job", comm="job")
    h.spawn("kid", "job")
    c = controller(h)
    assert c.ensure("j", {"select": "comm", "match": "job"}, "user:ci") is True
    assert c.ensure("j", {"select": "comm", "match": "job"}, "user:ci") is False
    assert h.roots.roots["j"].spec.runtime and len(h.roots.roots["j"].members) == 2
    for name, body in (("j", {"select": "comm", "match": "other"}),
                       ("host", {"select": "pid", "match": 1})):
        with pytest.raises(ControlError) as info:
            c.ensure(name, body, "user:ci")
        assert (info.value.status, info.value.key) == (409, "name")
    c.ensure("k", {"select": "comm", "match": "k"}, "x")
    c.ensure("l", {"select": "comm", "match": "l"}, "x")
    with pytest.raises(ControlError, match="max_runtime_roots"):
        c.ensure("m", {"select": "comm", "match": "m"}, "x")
    assert c.stats.runtime_roots == 3
    with pytest.raises(ControlError) as info:
        c.remove("host", kill=False, grace_s=None, owner=None)
    assert info.value.status == 409
    with pytest.raises(ControlError) as info:
        c.remove("nope", kill=False, grace_s=None, owner=None)
    assert info.value.status == 404
    assert c.remove("j", kill=False, grace_s=None, owner=None) is None
    assert "j" not in h.roots.roots and c.stats.runtime_roots == 2
    with pytest.raises(ControlError) as info:
        c.kill("k", grace_s=601, owner=None)
    assert info.value.key == "grace_seconds"


def test_a_reload_keeps_runtime_roots_and_refuses_to_take_their_names() -> None:
    h = Host(RootSpec(name="host", select="pid", match="1"))
    c = controller(h)
    c.ensure("j", {"select": "comm", "match": "job"}, "x")
    c.set_config_roots([RootSpec(name="other", select="pid", match="1")])
    assert set(h.roots.roots) == {"other", "j"}
    with pytest.raises(ValueError, match="runtime roots"):
        c.set_config_roots([RootSpec(name="j", select="pid", match="1")])
    assert set(h.roots.roots) == {"other", "j"}, "a failed reload changes nothing"


def test_runtime_roots_go_through_the_state_file_and_come_back() -> None:
    h = Host()
    pid = h.spawn("job", comm="job")
    c = controller(h, config=())
    c.ensure("byname", {"select": "comm", "match": "job"}, "user:ci")
    c.ensure("bypid", {"select": "pid", "match": pid}, "unix:pid=7,uid=0")
    saved = c.saved()
    doc = StateDoc(1.0, True, "boot", (), (), tuple(saved))
    back = decode(encode(doc), boot="boot")
    assert list(back.runtime_roots) == saved
    assert decode(encode(doc._replace(runtime_roots=())), boot="boot").runtime_roots == ()

    # a new run where the pid root's process is the same identity
    h2 = Host()
    h2.procs, h2.names = h.procs, h.names
    h2.seed()
    c2 = controller(h2, config=())
    specs = c2.restore(back.runtime_roots, [
        SavedRoot("bypid", "pid", str(pid), True, (Identity(pid, h.start("job")),), (), None)])
    assert {s.name for s in specs} == {"byname", "bypid"}
    assert c2.runtime["bypid"].created_by == "unix:pid=7,uid=0"
    assert h2.roots.roots["bypid"].instances, "its own process: the root is back"
    assert c2.forget_gone() == []

    # a run where a stranger holds the pid: the pid root is gone, the comm root stays
    h3 = Host()
    h3.procs, h3.names = h.procs, h.names
    h3.seed()
    c3 = controller(h3, config=())
    c3.restore(back.runtime_roots, [
        SavedRoot("bypid", "pid", str(pid), True, (Identity(pid, h.start("job") + 999),), (),
                  None)])
    assert not h3.roots.roots["bypid"].instances, "never the stranger"
    assert c3.forget_gone() == ["bypid"]
    assert set(c3.runtime) == {"byname"} and c3.stats.gone == 1


def test_a_saved_runtime_root_that_is_broken_or_taken_is_skipped() -> None:
    h = Host()
    c = controller(h, config=("taken",))
    specs = c.restore([{"name": "bad", "keys": {"select": "nope", "match": "x"},
                        "created_at": 1.0, "created_by": "x"},
                       {"name": "taken", "keys": {"select": "comm", "match": "x"},
                        "created_at": 1.0, "created_by": "x"},
                       {"keys": {}}], [])
    assert specs == [] and c.runtime == {}
