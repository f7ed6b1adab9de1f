"""A member's JSON in the API: the fast encoder writes what json.dumps writes, and the
mirror's per-member cache never serves a member as it was before it changed."""

from __future__ import annotations

import json

from proctree_exporter.classification import EXITED, HEALTHY
from proctree_exporter.mirror import MemberInfo, Mirrors
from proctree_exporter.rootspec import RootSpec
from proctree_exporter.web import _root_body, _tree_body, member_doc, member_json

from .fakehost import Host


def dumped(m: MemberInfo) -> bytes:
    return json.dumps(member_doc(m), separators=(",", ":")).encode()


def test_member_json_is_json_dumps_byte_for_byte() -> None:
    h = Host(RootSpec("job", "comm", "job", capture_cmdline=True, zombie_grace_s=0.5))
    h.spawn("j", comm="job", cmdline='job --name "\u00f6\u4e2d" \\ \n\t\x01')
    h.spawn("w", "j", comm="w\u00f6rk\"er")
    h.spawn("z", "w", uid=4242)
    h.exit("w", signal=9)  # z is orphaned
    h.spawn("y", "j")
    h.exit("y", code=3, reap=False)
    h.tick(0.6, rounds=2)  # y: a zombie
    mirror = Mirrors(h.roots).get("job")
    members = [*mirror.members.values(), *mirror.exited.values(), *mirror.instances.values()]
    assert len({m.cls for m in members}) >= 3
    odd = [MemberInfo(1, 2, None, None, None, "root", 0, None, False, "", 0, HEALTHY, "",
                      float("inf")),  # json.dumps' Infinity
           MemberInfo(1, 2, "c", "/e", "", "u", 0, 1, True, "fork", 3, EXITED, "r", 17,
                      exited_at=18.5, exit_code=0, exit_signal=None, lineage_start=9)]
    for m in [*members, *odd]:
        assert member_json(m) == dumped(m), m


def test_the_cache_drops_a_member_that_changed_or_left() -> None:
    h = Host(RootSpec("job", "comm", "job", max_tombstones=2))
    h.spawn("j", comm="job")
    for i in range(5):
        h.spawn(f"w{i}", "j")
    mirrors = Mirrors(h.roots)
    body = mirrors.get("job").read(lambda m: _root_body(m, {}))
    assert [m["comm"] for m in json.loads(body)["members"]] == ["job"] * 6
    h.exec("w0", "renamed")
    h.exit("w1")
    for i in range(2, 5):
        h.exit(f"w{i}")
    h.tick(0.05)
    mirror = mirrors.get("job")
    body = mirror.read(lambda m: _root_body(m, {}))
    tree = mirror.read(lambda m: _tree_body(m, {}))
    doc = json.loads(body)
    assert [m["comm"] for m in doc["members"]] == ["job", "renamed"]
    assert len(doc["tombstones"]) == 2 and b'"comm":"renamed"' in tree
    # only what is listed now is kept encoded
    listed = [*mirror.listing(), *mirror.tombstones()]
    assert set(mirror.cache) == set(listed)
    assert all(mirror.cache[m] == member_json(m) for m in listed)
