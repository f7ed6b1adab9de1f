"""Following a remote exporter's event stream: what ``watch --url`` reads.

The stream is Server-Sent Events (``GET /api/v1/events``, see README "Event
stream"). :class:`SseParser` is written here by hand: it is a short
transcription of the HTML standard's parsing rules (tested on bytes, split
every way, in tests/test_cli.py), and one command does not justify a new
dependency beside those README lists. HTTP is the standard library's
``http.client``. :class:`RemoteWatch` turns the stream back into typed
:class:`~.events.RootEvent` values (and a :class:`Seed` per root: its members
at the start), which ``watch`` prints exactly as it prints local ones.
"""

from __future__ import annotations

import base64
import contextlib
import http.client
import json
import os
import queue
import re
import socket
import ssl
import sys
import threading
import time
import urllib.parse
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

from . import __version__
from .actions import ActionOutcome
from .changelog import lost_event
from .classification import HEALTHY, ProcessClass
from .events import Ancestor, EventKind, RootEvent
from .mirror import MemberInfo


class Seed(NamedTuple):
    """A root's members as its document shows them when a remote watch (re)starts: the
    remote counterpart of the ``joined`` events a local watch begins with."""

    root: str
    ts: float
    members: tuple[MemberInfo, ...]  # live: listed as ``added`` unless known already
    tombstones: tuple[MemberInfo, ...]  # exited, still kept: known, not listed


@dataclass(frozen=True, slots=True)
class SseMessage:
    """One message of a Server-Sent-Events stream."""

    event: str  # the ``event:`` field; ``message`` when there was none
    data: str  # the ``data:`` lines, joined by newlines
    id: str  # the stream's last event id as of this message (sticks until the next ``id:``)


class SseError(ValueError):
    """The stream is not one this parser will hold (a message beyond its size bound)."""


_EOL = re.compile(rb"\r\n?|\n")
_BOM = b"\xef\xbb\xbf"


class SseParser:
    """Server-Sent Events, bytes in, messages out, parsed as the HTML standard's
    EventSource does: lines end with CRLF, LF or CR (also split across chunks); a line
    starting with ``:`` is a comment; ``field: value`` loses one space after the colon,
    a line without a colon is a field with an empty value; an empty line ends a message,
    dispatched if it has data. ``id`` (the resume cursor) takes effect when its message
    ends: a message cut off by the end of the stream is dropped, and so is its id.
    """

    def __init__(self, max_message_bytes: int = 16 << 20) -> None:
        self.last_id = ""  # of the last message ended: what a client resumes after
        self.retry_ms: int | None = None  # the server's ``retry:`` hint
        self._max = max_message_bytes
        self._buf = bytearray()
        self._at_start = True  # a byte order mark may open the stream
        self._after_cr = False  # the last chunk ended in CR: a LF opening the next ends no line
        self._event = ""
        self._data: list[str] = []
        self._held = 0  # bytes of data held for the message being built
        self._id = ""

    def feed(self, chunk: bytes) -> list[SseMessage]:
        """The messages that ``chunk`` completes, in order."""
        if not chunk:
            return []
        if self._after_cr:
            self._after_cr = False
            if chunk[:1] == b"\n":
                chunk = chunk[1:]
        buf = self._buf
        buf += chunk
        if self._at_start:
            if len(buf) < len(_BOM) and _BOM.startswith(buf):
                return []
            if buf.startswith(_BOM):
                del buf[:len(_BOM)]
            self._at_start = False
        out = []
        pos = 0
        for m in _EOL.finditer(buf):
            msg = self._line(bytes(buf[pos:m.start()]))
            pos = m.end()
            if msg is not None:
                out.append(msg)
        if pos and buf[pos - 1:pos] == b"\r":
            self._after_cr = True
        del buf[:pos]
        if len(buf) + self._held > self._max:
            raise SseError(f"an event stream message beyond {self._max} bytes")
        return out

    def _line(self, raw: bytes) -> SseMessage | None:
        if not raw:
            return self._dispatch()
        if raw[:1] == b":":
            return None
        line = raw.decode("utf-8", "replace")
        name, colon, value = line.partition(":")
        if colon and value[:1] == " ":
            value = value[1:]
        if name == "data":
            self._data.append(value)
            self._held += len(raw)
        elif name == "event":
            self._event = value
        elif name == "id":
            if "\0" not in value:
                self._id = value
        elif name == "retry" and value.isascii() and value.isdigit():
            self.retry_ms = int(value)
        return None

    def _dispatch(self) -> SseMessage | None:
        self.last_id = self._id
        data, event = self._data, self._event
        self._data, self._event, self._held = [], "", 0
        if not data:
            return None
        return SseMessage(event or "message", "\n".join(data), self.last_id)


_EVENT_FIELDS = frozenset(RootEvent._fields)


def _class(value: Any) -> Any:
    """A ProcessClass from its name (a name this version does not know stays a string)."""
    try:
        return ProcessClass(value)
    except ValueError:
        return value


def event_from_doc(doc: dict[str, Any]) -> RootEvent | None:
    """The :class:`RootEvent` that a JSON event (``/api/v1/events`` data, or an item of
    ``/api/v1/roots/NAME`` ``events``) describes: the inverse of ``RootEvent.to_dict``.
    None for a kind this version does not know. ValueError when the fields are not an
    event's."""
    try:
        kind = EventKind(doc.get("kind"))
    except ValueError:
        return None
    fields = {k: v for k, v in doc.items() if k in _EVENT_FIELDS}
    fields["kind"] = kind
    fields.setdefault("comm", None)  # to_dict leaves out what is None
    if not (isinstance(fields.get("root"), str) and isinstance(fields.get("ts"), int | float)
            and all(type(fields.get(k)) is int for k in ("seq", "pid", "start_ticks"))):
        raise ValueError(f"not an event: {json.dumps(doc)[:200]}")
    if fields.get("ancestors") is not None:
        fields["ancestors"] = tuple(Ancestor(**a) for a in fields["ancestors"])
    for key in ("old_class", "new_class"):
        if fields.get(key) is not None:
            fields[key] = _class(fields[key])
    if fields.get("outcome") is not None:
        try:
            fields["outcome"] = ActionOutcome(fields["outcome"])
        except ValueError:
            pass
    return RootEvent(**fields)


def member_from_doc(d: dict[str, Any]) -> MemberInfo:
    """A member from its JSON (``/api/v1/roots/NAME`` ``members`` and ``tombstones``)."""
    return MemberInfo(
        int(d["pid"]), int(d["start_ticks"]), d.get("comm"), d.get("exe"), d.get("cmdline"),
        d.get("user") or "?", d.get("ppid") or 0, d.get("lineage_ppid"),
        bool(d.get("lineage_known")), d.get("lineage_source") or "", d.get("depth") or 0,
        _class(d.get("class") or HEALTHY), d.get("reason") or "", d.get("started_at") or 0.0,
        d.get("exited_at"), d.get("exit_code"), d.get("exit_signal"), d.get("lineage_start"))


@dataclass(frozen=True, slots=True)
class Target:
    """An exporter to follow: where it is and how to talk to it."""

    https: bool
    host: str
    port: int
    prefix: str  # path the exporter is served under ("" at the root)
    shown: str  # the URL without credentials, for messages
    authorization: str | None
    context: ssl.SSLContext | None

    @classmethod
    def from_url(cls, url: str, *, ca_file: str | None = None, insecure: bool = False,
                 environ: Mapping[str, str] = os.environ) -> Target:
        """``http[s]://[USER[:PASSWORD]@]HOST[:PORT][/PREFIX]``; a user without a password
        in the URL takes it from ``PROCTREE_PASSWORD``. ValueError says what is wrong."""
        parts = urllib.parse.urlsplit(url)
        try:
            port = parts.port
        except ValueError:
            port = -1
        host = parts.hostname or ""
        shown = f"{parts.scheme}://{host if ':' not in host else f'[{host}]'}" + (
            f":{port}" if port else "") + parts.path.rstrip("/")
        if parts.scheme not in ("http", "https") or not host or port == -1:
            raise ValueError(f"--url {shown!r}: expected http[s]://HOST:PORT")
        if parts.query or parts.fragment:
            raise ValueError(f"--url {shown!r}: give the exporter's address, without ?query "
                             f"or #fragment")
        https = parts.scheme == "https"
        authorization = None
        if parts.username is not None:
            user = urllib.parse.unquote(parts.username)
            password = (urllib.parse.unquote(parts.password) if parts.password is not None
                        else environ.get("PROCTREE_PASSWORD"))
            if password is None:
                raise ValueError(f"--url names user {user!r} but no password: set "
                                 f"PROCTREE_PASSWORD (or give USER:PASSWORD@ in the URL)")
            token = base64.b64encode(f"{user}:{password}".encode()).decode("ascii")
            authorization = f"Basic {token}"
        context = None
        if https:
            try:
                context = ssl.create_default_context(cafile=ca_file)
            except (OSError, ssl.SSLError) as exc:
                raise ValueError(f"--ca-file {ca_file}: {exc}") from None
            if insecure:
                context.check_hostname = False
                context.verify_mode = ssl.CERT_NONE
        elif ca_file is not None or insecure:
            raise ValueError("--ca-file and --insecure are for https:// URLs")
        return cls(https, host, port or (443 if https else 80), parts.path.rstrip("/"),
                   shown, authorization, context)

    def connection(self, timeout: float) -> http.client.HTTPConnection:
        """A new connection (opened by its first request)."""
        if self.https:
            return http.client.HTTPSConnection(self.host, self.port, timeout=timeout,
                                               context=self.context)
        return http.client.HTTPConnection(self.host, self.port, timeout=timeout)

    def headers(self, **extra: str) -> dict[str, str]:
        """Request headers: the user agent, credentials, and ``extra``."""
        out = {"User-Agent": f"proctree-exporter/{__version__}", **extra}
        if self.authorization is not None:
            out["Authorization"] = self.authorization
        return out


CONNECT_TIMEOUT_S = 10.0
# the exporter writes a keepalive comment after 15 s of silence: three missed ones mean a
# dead connection (a host that vanished, a NAT that forgot us), not a quiet tree
IDLE_TIMEOUT_S = 45.0
BACKOFF_S = (0.5, 5.0)  # first wait before reconnecting, doubled up to the second
MAX_DOCUMENT_BYTES = 256 << 20
# the kinds watch prints or keeps its members by (see _track); the rest stay on the server
WATCH_KINDS = ("joined", "exec", "exited", "class", "action", "restart", "left",
               "root_removed")


class _Fatal(Exception):
    """Retrying will not help (bad credentials, an unknown root, a bad certificate)."""


class _Unavailable(Exception):
    """The exporter is there but cannot serve now (503: starting, too many streams)."""


class _End(NamedTuple):
    error: str | None


class RemoteWatch:
    """Follows an exporter's ``/api/v1/events`` (Server-Sent Events, one JSON event per
    message, the stream's cursor as each message's id) on a thread of its own, and hands
    the events on, in order, to :meth:`changes`.

    It begins from the roots' documents (their members, listed as a local watch lists
    them, and the log position they are true at), then streams from that position, so
    nothing between the two is missed. A dropped connection is resumed where it left off
    (``Last-Event-ID``: the id of the last event handed on), after a wait of 0.5 s doubled
    up to 5 s; a ``reset`` becomes the ``lost`` event a local watch shows when it falls
    behind. After the exporter says it is shutting down, its logs start over when it is
    back: the watch begins again from the roots' documents (listing only members it had
    not listed). The first connection failing, bad credentials, an unknown root or a bad
    certificate end the watch (:attr:`failed`).
    """

    def __init__(self, target: Target, roots: Sequence[str] | None,
                 stopping: threading.Event, queue_size: int = 4096) -> None:
        self.target = target
        self.roots = list(roots) if roots else None  # None: every root
        self.cursor: str | None = None  # the id of the last event handed on
        self.failed: str | None = None
        self._stopping = stopping
        # bounded: a reader that does not keep up (stdout into a pager) stops reading the
        # socket, and the exporter cuts it off as slow rather than we holding everything
        self._queue: queue.Queue[RootEvent | Seed | _End] = queue.Queue(queue_size)
        self._closed = threading.Event()
        self._sock: socket.socket | None = None  # of the open stream
        self._opened_once = False
        self._opened = False
        self._thread = threading.Thread(target=self._run, name="proctree-watch-url",
                                        daemon=True)

    def start(self) -> None:
        """Connect and follow, on the thread."""
        self._thread.start()

    def close(self) -> None:
        """Stop following (the open connection is shut down)."""
        self._closed.set()
        sock = self._sock
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)  # wakes the thread's blocked read
        self._thread.join(2.0)

    def changes(self, wait: float) -> Iterator[RootEvent | Seed]:
        """What the exporter sent since the previous call, in order, for up to ``wait``
        seconds. At the end of the watch, sets ``stopping``."""
        until = time.monotonic() + wait
        while True:
            try:
                item = self._queue.get(timeout=max(until - time.monotonic(), 0))
            except queue.Empty:
                return
            if isinstance(item, _End):
                self.failed = item.error
                self._stopping.set()
                return
            yield item

    # -- the thread ---------------------------------------------------------------------

    def _say(self, text: str) -> None:
        print(text, file=sys.stderr, flush=True)

    def _put(self, item: RootEvent | Seed | _End) -> None:
        while not self._closed.is_set():
            try:
                self._queue.put(item, timeout=0.5)
                return
            except queue.Full:
                continue

    def _run(self) -> None:
        try:
            self._loop()
        except _Fatal as exc:
            self._put(_End(str(exc)))
        except Exception as exc:  # never a silent hang: say what broke
            self._put(_End(f"watch --url failed: {exc!r}"))

    def _loop(self) -> None:
        delay = BACKOFF_S[0]
        begin = True  # from the roots' documents: at first, and after a shutdown
        while not self._closed.is_set():
            self._opened = False
            try:
                if begin:
                    self.cursor = self._begin()
                    begin = False
                why, begin = self._stream()
            except ssl.SSLCertVerificationError as exc:
                raise _Fatal(f"{self.target.shown}: {exc.verify_message or exc}") from None
            except (OSError, http.client.HTTPException, SseError, _Unavailable) as exc:
                if self._closed.is_set():
                    return
                why = _failure(exc)
                if not self._opened_once and not isinstance(exc, _Unavailable):
                    raise _Fatal(f"cannot follow {self.target.shown}: {why}") from None
            if self._closed.is_set():
                return
            if self._opened:
                delay = BACKOFF_S[0]
            self._say(f"connection to {self.target.shown} lost: {why}; reconnecting in "
                      f"{delay:g}s")
            if self._closed.wait(delay):
                return
            delay = min(delay * 2, BACKOFF_S[1])

    def _begin(self) -> str | None:
        """Queue each root's members from its document; the cursor those are true at."""
        names = self.roots
        if names is None:
            try:
                names = [r["name"] for r in self._get_json("/api/v1/roots")["roots"]]
            except (KeyError, TypeError):
                raise _Fatal(f"{self.target.shown}/api/v1/roots: not a list of roots") from None
        tokens = []
        now = time.time()
        for name in names:
            path = "/api/v1/roots/" + urllib.parse.quote(name, safe="")
            doc = self._get_json(path)
            try:
                seed = Seed(name, now, tuple(member_from_doc(d) for d in doc["members"]),
                            tuple(member_from_doc(d) for d in doc.get("tombstones", ())))
            except (KeyError, TypeError, ValueError, AttributeError):
                raise _Fatal(f"{self.target.shown}{path}: not a root's document") from None
            self._put(seed)
            seq = doc.get("seq")
            if type(seq) is not int:
                self._say(f"warning: the root document of {name!r} has no seq: changes "
                          f"between it and the stream may be missed")
                continue
            tokens.append(f"{name}:{seq}")
        return ",".join(tokens) or None

    def _get_json(self, path: str) -> Any:
        conn = self.target.connection(CONNECT_TIMEOUT_S)
        try:
            conn.request("GET", self.target.prefix + path,
                         headers=self.target.headers(Accept="application/json"))
            with conn.getresponse() as resp:
                body = resp.read(MAX_DOCUMENT_BYTES + 1)
            if resp.status != 200:
                self._refused(resp.status, resp.reason, body)
            if len(body) > MAX_DOCUMENT_BYTES:
                raise _Fatal(f"{self.target.shown}{path}: more than {MAX_DOCUMENT_BYTES} bytes")
            try:
                return json.loads(body)
            except ValueError:
                raise _Fatal(f"{self.target.shown}{path}: not JSON") from None
        finally:
            conn.close()

    def _refused(self, status: int, reason: str, body: bytes) -> None:
        """Raise for a response other than 200: _Unavailable if it may pass, else _Fatal."""
        try:
            message = str(json.loads(body)["error"])
        except (ValueError, KeyError, TypeError):
            message = body[:200].decode("utf-8", "replace").strip() or reason
        if not message.startswith(str(status)):
            message = f"{status} {message}"
        if status == 503 or status == 429 or status >= 500:
            raise _Unavailable(message)
        if status == 401:
            raise _Fatal(f"{self.target.shown}: 401 Unauthorized: give the user in the URL "
                         f"(USER@HOST:PORT) and the password in PROCTREE_PASSWORD")
        raise _Fatal(f"{self.target.shown}: {message}")

    def _events_path(self) -> str:
        query = [("root", n) for n in self.roots or ()]
        query.append(("kinds", ",".join(WATCH_KINDS)))
        return f"{self.target.prefix}/api/v1/events?{urllib.parse.urlencode(query)}"

    def _stream(self) -> tuple[str, bool]:
        """Follow one connection to its end: (why it ended, whether to begin again from
        the roots' documents). Raises for a connection that failed."""
        conn = self.target.connection(CONNECT_TIMEOUT_S)
        resp = None
        try:
            headers = self.target.headers(Accept="text/event-stream")
            headers["Cache-Control"] = "no-cache"
            if self.cursor is not None:
                headers["Last-Event-ID"] = self.cursor
            conn.request("GET", self._events_path(), headers=headers)
            # the response owns the socket from here (the connection forgets it at a
            # "Connection: close" response): keep it, to set its timeout and to wake it
            self._sock = sock = conn.sock
            resp = conn.getresponse()
            if resp.status != 200:
                self._refused(resp.status, resp.reason, resp.read(65536))
            ctype = resp.getheader("Content-Type", "")
            if not ctype.startswith("text/event-stream"):
                raise _Fatal(f"{self.target.shown}: /api/v1/events answered {ctype!r}, "
                             f"not an event stream")
            if sock is not None:
                sock.settimeout(IDLE_TIMEOUT_S)
            self._on_open()
            parser = SseParser()
            while not self._closed.is_set():
                chunk = resp.read1(65536)
                if not chunk:
                    return "the exporter closed the stream", False
                for msg in parser.feed(chunk):
                    ended = self._handle(msg)
                    if ended is not None:
                        return ended
            return "closed", False
        finally:
            self._sock = None
            if resp is not None:
                resp.close()
            conn.close()

    def _on_open(self) -> None:
        self._opened = True
        if not self._opened_once:
            self._opened_once = True
            which = ("every root" if self.roots is None else
                     ",".join(f"root={n}" for n in self.roots))
            self._say(f"watching {which} at {self.target.shown} (remote)")
        elif self.cursor is not None:
            self._say(f"reconnected to {self.target.shown}: resuming after {self.cursor}")
        else:
            self._say(f"reconnected to {self.target.shown}")

    def _handle(self, msg: SseMessage) -> tuple[str, bool] | None:
        """Hand on one message; (why, begin again) when it ends the stream."""
        try:
            doc = json.loads(msg.data)
            if not isinstance(doc, dict):
                raise ValueError(msg.data[:200])
            if msg.event == "error":
                reason = doc.get("reason")
                why = f"the exporter ended the stream ({reason}: {doc.get('message')})"
                if reason == "shutdown":
                    # its change logs start over when it is back: the cursor means nothing
                    # there, so begin again from the roots' documents
                    return f"{why}; changes while it is down are not shown", True
                return why, False
            if msg.event == "reset" and doc.get("restarted"):
                # the cursor was from an earlier change log (the exporter restarted
                # while we were away): begin again from the roots' documents
                return (f"root {doc.get('root')}: the exporter's change log started over; "
                        f"changes while it was down are not shown"), True
            if msg.event == "reset":
                root, lost, seq = doc["root"], int(doc["lost"]), int(doc["seq"])
                ev: RootEvent | None = lost_event(root, seq - lost, lost,
                                                  float(doc.get("ts") or time.time()))
            else:
                ev = event_from_doc(doc)
        except (ValueError, KeyError, TypeError) as exc:
            self._say(f"warning: skipped a malformed {msg.event!r} message: {exc}")
            ev = None
        if ev is not None:
            self._put(ev)
        if msg.id:
            self.cursor = msg.id
        if ev is not None and ev.kind is EventKind.ROOT_REMOVED and self.roots is not None:
            if ev.root in self.roots:
                self.roots.remove(ev.root)
                self._say(f"root {ev.root!r} is no longer watched by the exporter")
            if not self.roots:
                raise _Fatal(f"root {ev.root!r} was removed from the exporter's config")
        return None


def _failure(exc: BaseException) -> str:
    """A connection failure in a few words."""
    if isinstance(exc, TimeoutError | socket.timeout):
        return "no data (not even a keepalive) for a while"
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return str(exc) or type(exc).__name__
