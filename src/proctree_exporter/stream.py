"""The event stream: roots' typed events to remote clients as Server-Sent Events.

``GET /api/v1/events`` is answered by a worker thread like any request; once
the request is valid, the worker hands the connection to the :class:`StreamHub`
and is free again. One hub thread serves every stream: it reads each stream's
roots through its own cursors on their change logs (never the tree or its
lock), writes frames with non-blocking sends, and holds at most
``max_buffer_bytes`` unsent per client. So an open stream costs a socket and a
bounded buffer, not a thread; a client too slow for the events is cut off with
a final ``error`` frame and counted, and never holds up the collector or the
other clients.

The SSE ``id`` of each frame is the stream's cursor: ``NAME:SEQ@EPOCH`` per
root, joined by ``,`` (EPOCH tells the root's change log from one before a
restart). A client that reconnects with it (``Last-Event-ID`` or ``?since=``)
gets every event after it exactly once, or, when the cursor has fallen off a
root's log or belongs to an earlier one, a ``reset`` frame first.
"""

from __future__ import annotations

import contextlib
import json
import logging
import selectors
import socket
import ssl
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import NamedTuple

from .changelog import ChangeLog, EventSource
from .events import EventKind, RootEvent

log = logging.getLogger(__name__)

HEARTBEAT_S = 15.0  # a comment line on an idle stream keeps proxies from closing it
RETRY_MS = 2000  # what EventSource clients wait before reconnecting
CUT_LINGER_S = 5.0  # a cut-off client this long to read its last frame before the close
ID_INTERVAL_S = 1.0  # at most this often, an id-only frame after filtered-out events
MAX_BUFFER_BYTES = 1 << 20  # unsent bytes per client before it is cut off as too slow
EVENTS_PER_ROUND = 1024  # per root and stream per hub round: fair to the other streams
_ENCODED_KEEP = 65536  # events kept encoded, shared by every stream that sends them
DROP_REASONS = ("slow", "limit", "shutdown")
ERROR_REASONS = ("slow", "shutdown")  # why a stream's last frame (``error``) ends it
# kinds a stream sends: ``lost`` is made by readers that fall behind (the Python API);
# a stream says ``reset`` instead
STREAM_KINDS = tuple(k.value for k in EventKind if k is not EventKind.LOST)


class StreamsFull(Exception):
    """``max_streams`` streams are open already."""


@dataclass
class StreamStats:
    """What /metrics shows of the event streams."""

    open: int = 0
    events_sent: int = 0
    dropped: dict[str, int] = field(default_factory=lambda: dict.fromkeys(DROP_REASONS, 0))


Cursor = dict[str, tuple[int, str | None]]  # root -> (seq, epoch of its log if known)


def parse_cursor(text: str, roots: list[str] | None) -> Cursor:
    """``NAME:SEQ[@EPOCH],...`` (or a bare SEQ for a stream of one root) ->
    {name: (seq, epoch or None)}. Raises ValueError with what is wrong."""
    text = text.strip()
    if not text:
        return {}
    if text.isdigit():
        if roots is None or len(roots) != 1:
            raise ValueError("a bare number as cursor needs exactly one root=")
        return {roots[0]: (int(text), None)}
    out: Cursor = {}
    for token in text.split(","):
        name, sep, position = token.strip().rpartition(":")
        seq, at, epoch = position.partition("@")
        if not sep or not name or not seq.isdigit() or (at and not epoch.isalnum()):
            raise ValueError(f"cursor {text[:200]!r}: expected NAME:SEQ[,NAME:SEQ...]")
        out[name] = (int(seq), epoch or None)
    return out


def frame(event: str, data: bytes, ident: str | None = None) -> bytes:
    """One SSE frame; ``data`` must be one line."""
    head = f"id: {ident}\nevent: {event}\n" if ident is not None else f"event: {event}\n"
    return head.encode() + b"data: " + data + b"\n\n"


class _Stream:
    """One client: its roots and cursors, kinds wanted, unsent bytes."""

    __slots__ = ("closed", "closing", "cursors", "id_at", "id_due", "kinds", "last_write",
                 "logs", "names", "out", "sock")

    def __init__(self, sock: socket.socket, names: list[str] | None,
                 logs: dict[str, ChangeLog], cursors: dict[str, int],
                 kinds: frozenset[str] | None, head: bytes) -> None:
        self.sock = sock
        self.names = names  # None: every root, those added later too
        # the logs themselves, not their names: a root removed meanwhile still has
        # its last event (root_removed) to send
        self.logs = logs
        self.cursors = cursors
        self.kinds = kinds
        self.out = bytearray(head)
        self.last_write = time.monotonic()
        self.closed = False
        self.closing = 0.0  # cut off: the monotonic time its last bytes must be gone by
        self.id_at = self.last_write  # when a frame last carried the cursor
        self.id_due = False  # events were filtered out since: the cursor moved unseen

    def ident(self) -> str:
        logs = self.logs
        return ",".join(f"{n}:{s}@{logs[n].epoch}" for n, s in self.cursors.items())


class _Chunk(NamedTuple):
    """A root's frames for one stream in one round, and where they leave its cursor."""

    data: bytes
    cursor: int
    sent: int  # events in it
    skipped: bool  # its last events were left out by the kinds filter
    removed: bool  # it ends with root_removed


class StreamHub:
    """Every open event stream, served by one thread (see the module docstring)."""

    def __init__(self, source: EventSource, encode: Callable[[RootEvent], bytes], *,
                 max_streams: int = 100, max_buffer_bytes: int = MAX_BUFFER_BYTES,
                 heartbeat_s: float = HEARTBEAT_S,
                 on_start: Callable[[], None] | None = None) -> None:
        self.source = source
        self.encode = encode  # an event's JSON, one line
        self.max_streams = max_streams
        self.max_buffer_bytes = max_buffer_bytes
        self.heartbeat_s = heartbeat_s
        self.stats = StreamStats()
        self._on_start = on_start
        self._lock = threading.Lock()  # guards _incoming and the count of streams
        self._incoming: list[_Stream] = []
        self._streams: dict[int, _Stream] = {}
        self._count = 0  # open and incoming
        self._sel = selectors.DefaultSelector()
        self._encoded: dict[tuple[str, str, int], bytes] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="proctree-streams", daemon=True)

    # -- called by request handlers ---------------------------------------------------

    def reserve(self) -> None:
        """Count a stream about to open; StreamsFull (counted) beyond ``max_streams``."""
        with self._lock:
            if self._count >= self.max_streams or self._stop.is_set():
                self.stats.dropped["limit"] += 1
                raise StreamsFull(f"{self._count} event streams are open (web.max_streams)")
            self._count += 1

    def release(self) -> None:
        """Give back a reservation that did not become a stream."""
        with self._lock:
            self._count -= 1

    def open(self, sock: socket.socket, names: list[str] | None, cursors: Cursor,
             kinds: frozenset[str] | None, head: bytes) -> None:
        """Serve a reserved stream on ``sock`` (the response head not yet sent) after
        ``cursors``: with none, from now; roots a resume cursor does not name, from
        their first event held. The hub owns ``sock`` from here."""
        source = self.source
        logs: dict[str, ChangeLog] = {}
        start: dict[str, int] = {}
        stale: list[str] = []
        for name in names if names is not None else source.root_names():
            try:
                logs[name] = log_ = source.log(name)
            except KeyError:  # removed meanwhile: its stream shows nothing of it
                continue
            if name not in cursors:
                start[name] = 0 if cursors else log_.seq
                continue
            seq, epoch = cursors[name]
            if (epoch is not None and epoch != log_.epoch) or seq > log_.seq:
                stale.append(name)  # from an earlier log: its seqs meant other events
                seq = 0
            start[name] = seq
        st = _Stream(sock, names, logs, start, kinds,
                     head + f"retry: {RETRY_MS}\n\n".encode())
        for name in stale:
            doc = {"kind": "reset", "root": name, "lost": 0, "seq": 0, "ts": time.time(),
                   "restarted": True,
                   "reason": f"the cursor of root {name} is from an earlier change log "
                             f"(the exporter or the root restarted): what happened in "
                             f"between is unknown; refetch the root's state"}
            st.out += frame("reset", _line(doc), st.ident())
        with self._lock:
            self._incoming.append(st)
        source.wakeup.notify()

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout: float = 2.0) -> None:
        """End every stream (each gets an ``error`` frame, reason ``shutdown``)."""
        self._stop.set()
        self.source.wakeup.notify()
        if self._thread.is_alive():
            self._thread.join(timeout)

    # -- the hub thread ---------------------------------------------------------------

    def _run(self) -> None:
        if self._on_start is not None:
            self._on_start()
        wakeup = self.source.wakeup
        try:
            while not self._stop.is_set():
                gen = wakeup.generation
                self._adopt()
                now = time.monotonic()
                backlog = False
                memo: dict[tuple[ChangeLog, int, frozenset[str] | None], _Chunk] = {}
                for st in list(self._streams.values()):
                    if self._pump(st, now, memo):
                        backlog = True
                if self._stop.is_set():
                    break
                # a client's socket full: retry it soon; otherwise sleep until events
                wakeup.wait(gen, 0.02 if backlog else 0.5)
                self._select(0)
        except Exception:  # never silently: a dead hub would leave clients hanging
            log.exception("event stream hub failed")
        finally:
            for st in list(self._streams.values()):
                if st.closing:
                    self._close(st)
                else:
                    self._cut(st, "shutdown", "the exporter is stopping", linger=False)
            with self._lock:
                incoming, self._incoming = self._incoming, []
            for st in incoming:
                self._close(st)
                self.stats.dropped["shutdown"] += 1
            self._sel.close()

    def _adopt(self) -> None:
        if not self._incoming:
            return
        with self._lock:
            incoming, self._incoming = self._incoming, []
        for st in incoming:
            try:
                st.sock.setblocking(False)
                self._sel.register(st.sock, selectors.EVENT_READ)
            except (OSError, ValueError):
                self._close(st, registered=False)
                continue
            self._streams[st.sock.fileno()] = st
            self.stats.open = len(self._streams)

    def _select(self, timeout: float) -> None:
        """Notice clients that closed (readable: EOF), so they are dropped promptly."""
        for key, _ in self._sel.select(timeout):
            st = self._streams.get(key.fd)
            if st is None:
                continue
            try:
                data = st.sock.recv(4096)
            except (BlockingIOError, InterruptedError, ssl.SSLWantReadError,
                    ssl.SSLWantWriteError):
                continue
            except OSError:
                data = b""
            if not data:  # the client went away
                self._close(st)

    def _pump(self, st: _Stream, now: float,
              memo: dict[tuple[ChangeLog, int, frozenset[str] | None], _Chunk]) -> bool:
        """Queue ``st``'s new events and send what its socket takes; True if bytes
        are left unsent."""
        if st.closing:  # cut off: only its last bytes still go out, for a while
            if not self._send(st, now):
                return False
            if not st.out or now >= st.closing:
                self._close(st)
                return False
            return True
        if self._fill(st, memo) or st.closed:
            return False  # the stream ended
        if st.id_due and now - st.id_at >= ID_INTERVAL_S:
            # events the client filtered out moved its cursor: an id-only frame (no
            # event is dispatched) keeps its Last-Event-ID current for a resume
            st.out += f"id: {st.ident()}\n\n".encode()
            st.id_due, st.id_at = False, now
        if not st.out and now - st.last_write >= self.heartbeat_s:
            st.out += b": keepalive\n\n"
        if st.out and not self._send(st, now):
            return False
        if len(st.out) > self.max_buffer_bytes:
            self._cut(st, "slow", f"more than {self.max_buffer_bytes} bytes unsent: the "
                                  f"client does not keep up; reconnect with Last-Event-ID")
            return False
        return bool(st.out)

    def _fill(self, st: _Stream, memo: dict[tuple[ChangeLog, int, frozenset[str] | None],
                                             _Chunk]) -> bool:
        """Append frames for the events after ``st``'s cursors; True if the stream ended.

        Streams of one root at the same position in the same round get the same bytes:
        ``memo`` holds them, so a hundred clients of a root cost one encoding of each
        event and one copy per client, not a hundred frames per event.
        """
        source = self.source
        if st.names is None:  # every root: roots added since join from their first event
            for name in source.root_names():
                if name not in st.logs:
                    with contextlib.suppress(KeyError):
                        st.logs[name] = source.log(name)
                        st.cursors[name] = 0
        sent = 0
        single = len(st.cursors) == 1
        for name, cursor in list(st.cursors.items()):
            if len(st.out) > self.max_buffer_bytes:
                break
            log_ = st.logs[name]
            key = (log_, cursor, st.kinds)
            chunk = memo.get(key) if single else None
            if chunk is None:
                chunk = self._chunk(st, name, log_, cursor, single)
                if single:
                    memo[key] = chunk
            st.out += chunk.data
            sent += chunk.sent
            if chunk.sent:
                st.id_due = False
            st.id_due = st.id_due or chunk.skipped
            if chunk.removed:
                del st.cursors[name], st.logs[name]
            else:
                st.cursors[name] = chunk.cursor
        self.stats.events_sent += sent
        if sent:
            st.id_at = time.monotonic()
        if st.names is not None and not st.cursors:  # every root it followed is gone
            self._send(st, time.monotonic())
            self._close(st)
            return True
        return False

    def _chunk(self, st: _Stream, name: str, log_: ChangeLog, cursor: int,
               single: bool) -> _Chunk:
        """The frames of ``name``'s events after ``cursor`` for ``st`` (ids are the
        stream's cursor; for a stream of one root, that of the root alone)."""
        events, lost = log_.since(cursor, limit=EVENTS_PER_ROUND)
        kinds = st.kinds
        epoch = log_.epoch
        parts: list[bytes] = []
        cursors = st.cursors
        if lost:
            cursor += lost
            cursors[name] = cursor
            doc = {"kind": "reset", "root": name, "lost": lost, "seq": cursor,
                   "ts": time.time(),
                   "reason": f"{lost} events of root {name} fell off its change log "
                             f"before they could be sent: refetch the root's state"}
            parts.append(frame("reset", _line(doc), st.ident()))
        sent = 0
        skipped = removed = False
        for ev in events:
            cursor = ev.seq
            if kinds is None or ev.kind in kinds:
                if single:
                    parts.append(self._single_frame(ev, epoch))
                else:
                    cursors[name] = cursor
                    parts.append(frame(ev.kind, self._encoded_event(ev, epoch), st.ident()))
                sent += 1
                skipped = False
            else:
                skipped = True
            if ev.kind is EventKind.ROOT_REMOVED:
                removed = True
                break
        return _Chunk(b"".join(parts), cursor, sent, skipped, removed)

    def _encoded_event(self, ev: RootEvent, epoch: str) -> bytes:
        key = (ev.root, epoch, ev.seq)  # a root re-added by a reload numbers from 1 again
        data = self._encoded.get(key)
        if data is None:
            data = self._keep(key, self.encode(ev))
        return data

    def _keep(self, key: tuple[str, str, int], data: bytes) -> bytes:
        if len(self._encoded) >= _ENCODED_KEEP:
            del self._encoded[next(iter(self._encoded))]  # the oldest
        self._encoded[key] = data
        return data

    def _single_frame(self, ev: RootEvent, epoch: str) -> bytes:
        """``ev``'s whole frame as a stream of its root alone sends it."""
        key = (ev.root, epoch, -ev.seq)  # beside the plain encodings, in the same dict
        out = self._encoded.get(key)
        if out is None:
            out = self._keep(key, frame(ev.kind, self._encoded_event(ev, epoch),
                                        f"{ev.root}:{ev.seq}@{epoch}"))
        return out

    def _send(self, st: _Stream, now: float) -> bool:
        """Send what the socket takes without blocking; False if the client is gone."""
        try:
            while st.out:
                n = st.sock.send(memoryview(st.out)[:256 * 1024])
                if n <= 0:
                    break
                del st.out[:n]
                st.last_write = now
        except (BlockingIOError, InterruptedError, ssl.SSLWantWriteError,
                ssl.SSLWantReadError):
            pass
        except OSError:
            self._close(st)
            return False
        return True

    def _cut(self, st: _Stream, reason: str, message: str, linger: bool = True) -> None:
        """End a stream on purpose, counted: what it has unsent is dropped but for the
        rest of the frame on the wire, then a last ``error`` frame goes out (for up to
        ``CUT_LINGER_S`` when ``linger``, if the client reads) and the connection closes."""
        self.stats.dropped[reason] += 1
        end = st.out.find(b"\n\n")
        del st.out[end + 2 if end >= 0 else 0:]  # frames end in a blank line, none inside
        st.out += frame("error", _line({"kind": "error", "reason": reason, "message": message}))
        now = time.monotonic()
        if not self._send(st, now):
            return
        if st.out and linger:
            st.closing = now + CUT_LINGER_S
        else:
            self._close(st)

    def _close(self, st: _Stream, registered: bool = True) -> None:
        if st.closed:
            return
        st.closed = True
        fd = st.sock.fileno()
        if registered:
            with contextlib.suppress(KeyError, ValueError, OSError):
                self._sel.unregister(st.sock)
        self._streams.pop(fd, None)
        with contextlib.suppress(OSError):
            st.sock.close()
        with self._lock:
            self._count -= 1
        self.stats.open = len(self._streams)


def _line(doc: object) -> bytes:
    return json.dumps(doc, separators=(",", ":")).encode()


def response_head(headers: Iterable[tuple[str, str]]) -> bytes:
    """The HTTP response head of a stream (HTTP/1.1, no length: it ends at close)."""
    lines = ["HTTP/1.1 200 OK", "Content-Type: text/event-stream; charset=utf-8",
             "Cache-Control: no-cache", "X-Accel-Buffering: no", "Connection: close",
             *(f"{k}: {v}" for k, v in headers)]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
