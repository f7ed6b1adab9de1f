"""The proc connector parser on bytes: every event type, old layouts, and bad input."""

from __future__ import annotations

import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from proctree_exporter import netlink as nl
from proctree_exporter.netlink import What

TS = 123_456_789_000


def one(what: int, data: bytes, **kw: int) -> nl.Event:
    events = nl.parse_datagram(nl.build_event(what, data, cpu=1, seq=42, ts_ns=TS, **kw))
    assert len(events) == 1
    ev = events[0]
    assert (ev.cpu, ev.seq, ev.ts_ns) == (1, 42, TS)
    return ev


def test_every_event_type_parses() -> None:
    u = struct.pack
    assert one(What.FORK, u("=IIII", 10, 10, 11, 11)) == nl.ForkEvent(1, 42, TS, 10, 10, 11, 11)
    assert one(What.EXEC, u("=II", 11, 11)) == nl.ExecEvent(1, 42, TS, 11, 11)
    assert one(What.UID, u("=IIII", 11, 11, 0, 1000)) == nl.UidEvent(1, 42, TS, 11, 11, 0, 1000)
    assert one(What.GID, u("=IIII", 11, 11, 5, 6)) == nl.GidEvent(1, 42, TS, 11, 11, 5, 6)
    assert one(What.SID, u("=II", 11, 11)) == nl.SidEvent(1, 42, TS, 11, 11)
    assert one(What.PTRACE, u("=IIII", 11, 11, 9, 9)) == nl.PtraceEvent(1, 42, TS, 11, 11, 9, 9)
    comm = one(What.COMM, u("=II16s", 11, 11, b"a) b (c\0garbage!"))
    assert comm == nl.CommEvent(1, 42, TS, 11, 11, "a) b (c")
    assert one(What.COREDUMP, u("=IIII", 11, 11, 10, 10)) == \
        nl.CoredumpEvent(1, 42, TS, 11, 11, 10, 10)
    assert one(What.EXIT, u("=IIIIII", 11, 11, 0x0900, 17, 10, 10)) == \
        nl.ExitEvent(1, 42, TS, 11, 11, 0x0900, 17, 10, 10)
    assert one(What.NONE, u("=I", 0)) == nl.AckEvent(1, 42, TS, 0)


def test_the_kernels_own_shape_parses_the_same() -> None:
    # the kernel sends the whole 24-byte union for every event; the records path
    # reads it in one unpack and must give what the per-type layout gives
    u = struct.pack
    for what, data, expected in [
        (What.FORK, u("=IIII", 10, 10, 11, 11), nl.ForkEvent(1, 42, TS, 10, 10, 11, 11)),
        (What.EXEC, u("=II", 11, 11), nl.ExecEvent(1, 42, TS, 11, 11)),
        (What.EXIT, u("=IIIIII", 11, 11, 0x0900, 17, 10, 10),
         nl.ExitEvent(1, 42, TS, 11, 11, 0x0900, 17, 10, 10)),
        (What.UID, u("=IIII", 11, 11, 0, 1000), nl.UidEvent(1, 42, TS, 11, 11, 0, 1000)),
        (What.COMM, u("=II16s", 11, 11, b"sh\0"), nl.CommEvent(1, 42, TS, 11, 11, "sh")),
        (What.NONE, u("=I", 0), nl.AckEvent(1, 42, TS, 0)),
    ]:
        msg = nl.build_event(what, data.ljust(24, b"\xff" if what != What.COMM else b"\0"),
                             cpu=1, seq=42, ts_ns=TS)
        assert len(msg) == 76  # as the kernel sends it
        records = nl.parse_records(msg)
        assert records == [expected.record()]
        assert records[0][:4] == (int(what), 1, 42, TS)
        assert nl.parse_datagram(msg) == [expected] == [nl.event_of(records[0])]


def test_thread_events_say_so() -> None:
    fork = one(What.FORK, struct.pack("=IIII", 10, 10, 12, 11))
    exit_ = one(What.EXIT, struct.pack("=IIIIII", 12, 11, 0, 0, 10, 10))
    assert fork.is_thread and exit_.is_thread  # type: ignore[attr-defined]


def test_shorter_layouts_of_older_kernels_parse_by_cn_msg_len() -> None:
    # EXIT before parent_pid/parent_tgid existed, COREDUMP before its parent fields
    ev = one(What.EXIT, struct.pack("=IIII", 11, 11, 256, 17))
    assert isinstance(ev, nl.ExitEvent) and ev.exit_code == 256 and ev.parent_pid == 0
    ev = one(What.COREDUMP, struct.pack("=II", 11, 11))
    assert isinstance(ev, nl.CoredumpEvent) and ev.parent_pid == 0


def test_longer_layouts_of_newer_kernels_parse() -> None:
    ev = one(What.FORK, struct.pack("=IIII", 10, 10, 11, 11) + b"\0" * 8)
    assert isinstance(ev, nl.ForkEvent) and ev.child_pid == 11


@pytest.mark.parametrize("status,expected", [
    (0x0000, (0, None, False)),
    (0x0300, (3, None, False)),
    (0x0009, (None, 9, False)),
    (0x008B, (None, 11, True)),
])
def test_raw_wait_status_is_decoded(status: int, expected: tuple) -> None:
    assert nl.decode_wait_status(status) == expected


def reason(data: bytes, nbytes: int | None = None, sender: int = 0) -> str:
    with pytest.raises(nl.ParseError) as exc:
        nl.parse_datagram(data, nbytes, sender)
    return exc.value.reason


def test_bad_input_is_rejected_with_a_reason() -> None:
    good = nl.build_event(What.FORK, struct.pack("=IIII", 1, 1, 2, 2))
    assert reason(good, sender=4242) == "spoofed"
    assert reason(good[:30]) == "truncated"
    assert reason(good, nbytes=len(good) + 100) == "oversized"
    assert reason(b"\x00" * 60) == "truncated"  # nlmsg_len 0
    assert reason(nl.build_event(What.FORK, b"\1\2\3")) == "bad_length"
    assert reason(nl.build_event(0x1234, b"\0" * 16)) == "unknown_event"
    wrong = nl.build_message(struct.pack("=IIQ", 1, 0, 0) + b"\0" * 16, idx=2, val=1)
    assert reason(wrong) == "wrong_family"
    err = nl.build_message(struct.pack("=IIQ", 1, 0, 0) + b"\0" * 16, nl_type=nl.NLMSG_ERROR)
    assert reason(err) == "bad_type"
    # cn_msg.len claims more than the netlink message holds
    lying = bytearray(good)
    struct.pack_into("=H", lying, 16 + 16, 200)
    assert reason(bytes(lying)) == "bad_length"


def test_several_messages_in_one_datagram() -> None:
    a = nl.build_event(What.EXEC, struct.pack("=II", 5, 5))
    b = nl.build_event(What.EXIT, struct.pack("=IIIIII", 5, 5, 0, 17, 1, 1))
    events = nl.parse_datagram(a + b)
    assert [type(e) for e in events] == [nl.ExecEvent, nl.ExitEvent]


@settings(max_examples=3000, deadline=None)
@given(st.binary(max_size=300), st.integers(0, 400), st.sampled_from([0, 0, 0, 7]))
def test_arbitrary_bytes_never_raise_anything_but_parse_error(data: bytes, nbytes: int,
                                                              sender: int) -> None:
    try:
        events = nl.parse_datagram(data, min(nbytes, len(data)) if nbytes else None, sender)
    except nl.ParseError as exc:
        assert exc.reason in {"truncated", "oversized", "bad_type", "wrong_family",
                              "bad_length", "spoofed", "unknown_event"}
    else:
        assert all(isinstance(e, nl.Event) for e in events)


@settings(max_examples=2000, deadline=None)
@given(st.sampled_from(list(What)), st.binary(max_size=40), st.integers(0, 2**32 - 1))
def test_records_and_typed_events_agree(what: What, body: bytes, seq: int) -> None:
    data = nl.build_event(int(what), body, cpu=1, seq=seq, ts_ns=TS)
    try:
        records = nl.parse_records(data)
    except nl.ParseError as exc:
        with pytest.raises(nl.ParseError) as again:
            nl.parse_datagram(data)
        assert again.value.reason == exc.reason
        return
    events = nl.parse_datagram(data)
    assert [ev.record() for ev in events] == records
    assert [nl.event_of(r) for r in records] == events


@settings(max_examples=2000, deadline=None)
@given(st.sampled_from(list(What)), st.binary(max_size=40), st.integers(0, 2**32 - 1))
def test_kernel_shaped_messages_with_any_body_parse_or_are_rejected(what: What, body: bytes,
                                                                     seq: int) -> None:
    try:
        nl.parse_datagram(nl.build_event(int(what), body, seq=seq))
    except nl.ParseError:
        pass
