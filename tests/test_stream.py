"""The event stream's wire format, fed strings: cursors, frames, the response head."""

from __future__ import annotations

import json

import pytest

from proctree_exporter.stream import frame, parse_cursor, response_head


@pytest.mark.parametrize(("text", "roots", "want"), [
    ("", None, {}),
    ("  ", ["a"], {}),
    ("web:41", None, {"web": (41, None)}),
    ("web:41@0a9f3c,db:7@ffffff", None, {"web": (41, "0a9f3c"), "db": (7, "ffffff")}),
    ("ns:web:3", None, {"ns:web": (3, None)}),  # names may hold ':', the seq is after the last
    ("12", ["web"], {"web": (12, None)}),
    (" web:0 , db:5 ", ["web", "db"], {"web": (0, None), "db": (5, None)}),
])
def test_cursors_parse(text: str, roots: list[str] | None,
                       want: dict[str, tuple[int, str | None]]) -> None:
    assert parse_cursor(text, roots) == want


@pytest.mark.parametrize(("text", "roots", "match"), [
    ("12", None, "exactly one root"),
    ("12", ["a", "b"], "exactly one root"),
    ("web", None, "NAME:SEQ"),
    ("web:x", None, "NAME:SEQ"),
    (":5", None, "NAME:SEQ"),
    ("web:-1", None, "NAME:SEQ"),
    ("web:1,", None, "NAME:SEQ"),
    ("web:1@", None, "NAME:SEQ"),
    ("web:1@a-b", None, "NAME:SEQ"),
])
def test_bad_cursors_say_what_is_expected(text: str, roots: list[str] | None,
                                          match: str) -> None:
    with pytest.raises(ValueError, match=match):
        parse_cursor(text, roots)


def test_a_frame_is_id_event_and_one_data_line() -> None:
    data = json.dumps({"reason": "a\nb"}).encode()  # JSON escapes newlines: one line
    out = frame("exited", data, "web:3,db:1")
    assert out == b'id: web:3,db:1\nevent: exited\ndata: {"reason": "a\\nb"}\n\n'
    assert frame("error", b"{}") == b"event: error\ndata: {}\n\n"


def test_the_response_head_streams_until_close() -> None:
    head = response_head([("X-Frame-Options", "DENY")]).decode("latin-1")
    lines = head.split("\r\n")
    assert lines[0] == "HTTP/1.1 200 OK" and head.endswith("\r\n\r\n")
    assert "Content-Type: text/event-stream; charset=utf-8" in lines
    assert "Cache-Control: no-cache" in lines and "Connection: close" in lines
    assert "X-Frame-Options: DENY" in lines
    assert not any(line.lower().startswith("content-length") for line in lines)
