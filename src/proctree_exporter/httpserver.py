"""The HTTP server: slow and idle clients cost a socket, never a thread.

One thread accepts connections and, without blocking, completes TLS handshakes
and reads request heads, each within ``read_timeout_s`` and ``max_head_bytes``.
Only a complete request head is handed to a bounded pool of worker threads
that run the WSGI app and write the response. A long-lived response (the event
stream) takes the connection over through ``environ["proctree.hijack"]`` and
frees its worker at once.

Connections are kept alive (HTTP/1.1): once a response is complete, its worker
hands the socket back to the reception thread, which waits for the next request
head as it waits for a new connection's first: up to ``keepalive_idle_s`` for
it to begin, and ``read_timeout_s`` from there for it to complete. A connection
is closed instead after ``max_requests`` requests, when the client says
``Connection: close`` or speaks HTTP/1.0, when the response has no
Content-Length, and when a request body was not read to its end by the app.
Idle connections count against the same ``max_pending`` as new ones, and the
longest idle is closed first when it is reached.

So a slowloris client, a stuck TLS handshake, an idle keep-alive client or a
1 MB header holds a small buffer at most, for a bounded time, while other
clients are served; the number of threads is fixed and the number of
connections is capped.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import resource
import selectors
import socket
import ssl
import stat
import struct
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, NamedTuple
from wsgiref.simple_server import ServerHandler, WSGIRequestHandler

from . import __version__

log = logging.getLogger(__name__)

MAX_HEAD_BYTES = 64 * 1024
QUEUE_PER_WORKER = 4
MIN_QUEUE = 256
# A kept-alive connection may wait this long for its next request. Longer than the
# usual scrape intervals (15, 30, 60 s: Prometheus keeps its connection to a target
# between scrapes), so that a scraper does not reconnect each time, nor race our
# close with its next request.
KEEPALIVE_IDLE_S = 75.0
MAX_REQUESTS = 100  # per connection; the last response says Connection: close
# An unread request body up to this size is read (within the read timeout) before the
# connection closes, so that the client reads the answer
DISCARD_BODY_MAX = 64 << 10
DISCARD_BODY_S = 1.0
# At server_close, requests in flight get this long to finish writing their
# response (their request bodies are cut at once); then their sockets are shut,
# so that no worker holds up the exit (the interpreter waits for every worker).
CLOSE_GRACE_S = 0.5
_HEAD_END = b"\r\n\r\n"


def parse_listen_address(text: str) -> tuple[int, str, int]:
    """``":9632"``, ``"127.0.0.1:9632"``, ``"[::1]:9632"`` -> (family, host, port)."""
    host, sep, port_text = text.rpartition(":")
    if not sep or not port_text.isdigit():
        raise ValueError(f"listen address {text!r}: expected [HOST]:PORT")
    port = int(port_text)
    if port > 65535:
        raise ValueError(f"listen address {text!r}: port {port} out of range (0-65535)")
    if host.startswith("[") and host.endswith("]"):
        return socket.AF_INET6, host[1:-1], port
    if host == "":
        return (socket.AF_INET6, "::", port) if socket.has_ipv6 else (socket.AF_INET, "", port)
    if ":" in host:
        raise ValueError(f"listen address {text!r}: put IPv6 hosts in brackets")
    return socket.AF_INET, host, port


class _Body(io.RawIOBase):
    """A request's body (``wsgi.input``): what arrived with the head, then the socket,
    never past its Content-Length, so the next request on the connection stays
    where it is (in ``pipelined``, or unread in the socket)."""

    def __init__(self, early: bytes, sock: socket.socket, length: int) -> None:
        self._early = memoryview(early)[:length]
        self.pipelined = early[length:]  # what the client sent after the body
        self._sock = sock
        self.left = length  # bytes of the body not yet read

    def readable(self) -> bool:
        return True

    def readinto(self, b: Any) -> int:
        want = min(len(b), self.left)
        if want <= 0:
            return 0
        if self._early:
            n = min(want, len(self._early))
            b[:n] = self._early[:n]
            self._early = self._early[n:]
        else:
            n = self._sock.recv_into(b, want)
            if n == 0:  # the client hung up mid-body: there is no next request
                self.left = -1
                return 0
        self.left -= n
        return n


class _ResponseWriter(io.RawIOBase):
    """The response writer: collects what is written until a flush, so that a
    response's status line, headers and body leave in one send; once the
    connection is taken over, writes go nowhere (wsgiref still "sends" the empty
    response the app returned)."""

    def __init__(self, inner: Any) -> None:
        self._inner = inner
        self._out = bytearray()
        self.muted = False

    def writable(self) -> bool:
        return True

    def write(self, b: Any) -> int:
        if not self.muted:
            self._out += b
        return len(b)

    def flush(self) -> None:
        if self._out and not self.muted:
            out, self._out = self._out, bytearray()
            self._inner.write(out)


SERVER_SOFTWARE = f"proctree-exporter/{__version__}"  # the Server header: no Python version


class _ServerHandler(ServerHandler):
    """wsgiref's response writer, naming this server, speaking HTTP/1.1, with its
    errors in our log; it says whether the connection may carry another request."""

    server_software = SERVER_SOFTWARE
    http_version = "1.1"

    def cleanup_headers(self) -> None:
        super().cleanup_headers()  # Content-Length, where the app returned one block
        handler: _Handler = self.request_handler  # type: ignore[attr-defined]
        headers = self.headers
        assert headers is not None
        if handler.may_keep_alive() and "Content-Length" in headers:
            handler.keep_alive = True
        else:  # the length is not known, or the client or we are done
            headers["Connection"] = "close"

    def finish_content(self) -> None:
        super().finish_content()
        handler: _Handler = self.request_handler  # type: ignore[attr-defined]
        headers = self.headers
        assert headers is not None and self.environ is not None
        length = headers.get("Content-Length", "").strip()
        # a body other than its Content-Length says would be read as (part of) the next
        # response; HEAD answers carry the length of the GET answer, and no body
        sent = "0" if self.environ.get("REQUEST_METHOD") == "HEAD" else length
        handler.complete = str(self.bytes_sent) == sent

    def handle_error(self) -> None:
        self.request_handler.failed = True  # type: ignore[attr-defined]  # then: close
        super().handle_error()

    def log_exception(self, exc_info: Any) -> None:
        # a client that hangs up mid-response (SSLEOFError, BrokenPipe) is not news: debug
        # level. Anything else is a bug of ours: an error, with its traceback, in the log.
        client = self.request_handler.client_address  # type: ignore[attr-defined]
        if isinstance(exc_info[1], OSError):
            log.debug("response to %s failed", client, exc_info=exc_info)
        else:
            log.error("request from %s failed", client, exc_info=exc_info)


class _Handler(WSGIRequestHandler):
    """wsgiref's request handler for one request of a connection, fed from a pre-read
    head; quiet (requests are not notable). After it returns, ``reusable`` says
    whether the connection may carry another request, and ``conn.buf`` holds what
    the client sent after this request (a pipelined next one)."""

    server_version = SERVER_SOFTWARE
    # the status line of its own replies (400, 414, 431, 505), and 100 Continue
    protocol_version = "HTTP/1.1"
    # error replies to a malformed request line are HTTP/0.9 (a bare body, no headers)
    # unless the default says otherwise; nobody speaks 0.9 to an exporter
    default_request_version = "HTTP/1.1"

    def __init__(self, conn: _Connection, head: bytes, early: bytes, server: Server) -> None:
        self.conn = conn
        self._head = head  # the request line and headers, through the blank line
        self._early = early  # what came after them in the same reads
        self.body: _Body | None = None
        self._input: io.BufferedReader | None = None
        self.keep_alive = False  # the response head said so (no Connection: close)
        self.complete = False  # the response went out whole, as long as it said
        self.failed = False
        self.reusable = False
        self._framed = False  # the request body's end is known
        super().__init__(conn.sock, conn.client, server)  # type: ignore[arg-type]

    def setup(self) -> None:
        super().setup()
        plain = self.rfile  # holds a reference on the socket until closed
        self.rfile = io.BytesIO(self._head)
        plain.close()
        self.wfile = _ResponseWriter(self.wfile)  # type: ignore[assignment]

    def version_string(self) -> str:
        return SERVER_SOFTWARE  # also on the handler's own error replies (400, 414, ...)

    def end_headers(self) -> None:
        # only the handler's own error replies (send_error) come through here; the app's
        # responses carry the same headers from the app
        for name, value in self.server.headers:  # type: ignore[attr-defined]
            self.send_header(name, value)
        super().end_headers()

    def handle_expect_100(self) -> bool:
        """``Expect: 100-continue`` (curl, for bodies over 1 KiB): go ahead at once."""
        self.wfile.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        self.wfile.flush()
        return True

    def handle(self) -> None:
        """wsgiref's, with :class:`_ServerHandler` for the response and a bounded body."""
        self.raw_requestline = self.rfile.readline(65537)
        if len(self.raw_requestline) > 65536:
            self.requestline = self.request_version = self.command = ""
            self.send_error(414)
            return
        if not self.parse_request():  # an error reply has been sent
            return
        length = _content_length(self.headers)
        self.body = _Body(self._early, self.connection, length or 0)
        self._input = io.BufferedReader(self.body)
        self._framed = length is not None
        handler = _ServerHandler(self._input, self.wfile, self.get_stderr(), self.get_environ(),
                                 multithread=False)
        handler.request_handler = self  # type: ignore[attr-defined]
        handler.run(self.server.get_app())  # type: ignore[attr-defined]
        self.wfile.flush()
        if self.keep_alive and self.complete and not self.failed and not self.conn.taken:
            self.conn.buf = bytearray(self.body.pipelined)
            self.reusable = True
        elif not self.conn.taken:
            self._discard_body()

    def _discard_body(self) -> None:
        """Read the rest of a small request body the app answered without reading (a
        401, 403 or 404 to a PUT) before the connection closes: closed with unread
        data, it is reset, and a client still sending the body after the head (as
        http.client does) gets a broken pipe instead of the answer."""
        body = self.body
        if body is None or not self._framed or not 0 < body.left <= DISCARD_BODY_MAX:
            return
        assert self._input is not None
        # a worker waits for it at most DISCARD_BODY_S, not the read timeout: an
        # unauthenticated client must not hold workers with bodies it never sends
        deadline = time.monotonic() + DISCARD_BODY_S
        with contextlib.suppress(OSError, ValueError):
            while body.left > 0:
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                self.connection.settimeout(left)
                if not self._input.read(min(body.left, 65536)):
                    break

    def may_keep_alive(self) -> bool:
        """Whether the connection may carry another request after this one (its
        response's length being known): asked when the response head is written."""
        server: Server = self.server  # type: ignore[assignment]
        version = self.request_version
        tokens = {t.strip().lower() for v in self.headers.get_all("Connection", ())
                  for t in v.split(",")}
        return (version.startswith("HTTP/1.") and version != "HTTP/1.0"
                and "close" not in tokens and self._framed and not self.failed
                and self._body_read() and self.conn.served < server.max_requests
                and not server.stopping)

    def _body_read(self) -> bool:
        """The app has read the request body to its end (else its rest would be taken
        for the next request)."""
        assert self.body is not None and self._input is not None
        return self.body.left == 0 and not self._input.peek(1)

    def get_environ(self) -> dict[str, Any]:
        env = super().get_environ()
        env["proctree.hijack"] = self._hijack
        if isinstance(self.client_address, Peer):  # the Unix socket: who is asking
            env["proctree.peer"] = self.client_address
            env["REMOTE_ADDR"] = str(self.client_address)
        return env

    def address_string(self) -> str:
        return str(self.client_address[0]) if not isinstance(
            self.client_address, Peer) else str(self.client_address)

    def _hijack(self) -> socket.socket:
        """Take the connection over: the caller owns the socket (and closes it); the
        app's own response is discarded."""
        self.wfile.muted = True  # type: ignore[attr-defined]
        self.server.hand_over(self.conn)  # type: ignore[attr-defined]
        return self.connection

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("http %s %s", self.address_string(), format % args)


def _content_length(headers: Any) -> int | None:
    """A request's body length: 0 without one; None when it cannot be told where the
    body ends (a chunked body, a bad or ambiguous Content-Length)."""
    if headers.get("Transfer-Encoding") is not None:
        return None
    values = {v.strip() for v in headers.get_all("Content-Length", ())}
    if not values:
        return 0
    if len(values) != 1:
        return None
    (text,) = values
    return int(text) if text.isascii() and text.isdigit() else None


@dataclass(slots=True, eq=False)
class _Connection:
    """A client connection: its request head arriving, in a worker, or idle between
    requests (kept alive)."""

    sock: socket.socket
    client: Any
    deadline: float  # the head must be in by then (idle: the next one must begin)
    fd: int = -1  # while the reception loop has it
    buf: bytearray = field(default_factory=bytearray)
    handshaking: bool = False
    idle: bool = False  # kept alive, waiting for its next request to begin
    served: int = 0  # requests handed to a worker so far
    taken: bool = False  # taken over by the app (the event stream)
    future: Future[None] | None = None


class Server:
    """A WSGI server: non-blocking reception, a fixed pool of worker threads."""

    def __init__(self, address: tuple[str, int] | str, app: Callable[..., Any], *,
                 family: int, ssl_context: ssl.SSLContext | None = None,
                 max_connections: int = 64, socket_mode: int = 0o600,
                 read_timeout_s: float = 10.0, max_pending: int = 1024,
                 max_head_bytes: int = MAX_HEAD_BYTES,
                 keepalive_idle_s: float = KEEPALIVE_IDLE_S, max_requests: int = MAX_REQUESTS,
                 worker_init: Callable[[], None] | None = None,
                 headers: Sequence[tuple[str, str]] = ()) -> None:
        self.ssl_context = ssl_context
        self.headers = tuple(headers)  # on every reply this server writes itself
        self.read_timeout_s = read_timeout_s
        self.keepalive_idle_s = keepalive_idle_s
        self.max_requests = max_requests
        self.max_pending = max_pending
        self.max_head_bytes = max_head_bytes
        self._app = app
        self.socket = socket.socket(family, socket.SOCK_STREAM)
        try:
            if family == socket.AF_UNIX:
                _bind_unix(self.socket, str(address), socket_mode)
            else:
                self.socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                if family == socket.AF_INET6 and address[0] == "::":
                    # ":9632" means every address, v4 and v6
                    with contextlib.suppress(OSError):
                        self.socket.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
                self.socket.bind(address)
            self.socket.listen(128)
            self.socket.setblocking(False)
        except OSError:
            self.socket.close()
            raise
        self.unix_path = str(address) if family == socket.AF_UNIX else None
        self.server_address = self.socket.getsockname()
        host, port = (self.server_address, 0) if self.unix_path else self.server_address[:2]
        # what wsgiref's handler expects of its server
        self.base_environ = {"SERVER_NAME": host or "localhost",  # no reverse DNS lookup
                             "GATEWAY_INTERFACE": "CGI/1.1", "SERVER_PORT": str(port),
                             "REMOTE_HOST": "", "CONTENT_LENGTH": "", "SCRIPT_NAME": ""}
        self._workers = ThreadPoolExecutor(max_workers=max_connections,
                                           thread_name_prefix="proctree-http",
                                           initializer=worker_init)
        # complete requests wait for a worker, up to this many in flight; past that, 503.
        # Both bounds stay inside the file descriptor limit, with room for the rest.
        fds = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
        fds = fds if fds != resource.RLIM_INFINITY else 65536
        in_flight = max(max_connections * QUEUE_PER_WORKER, MIN_QUEUE)
        in_flight = max(min(in_flight, (fds - 64) // 2), max_connections)
        self.max_pending = max(min(max_pending, fds - 64 - in_flight), 16)
        self._slots = threading.BoundedSemaphore(in_flight)
        self._sel = selectors.DefaultSelector()
        self._pending: dict[int, _Connection] = {}  # by fd: reception's connections
        self._idle: dict[int, _Connection] = {}  # the idle ones of those, longest idle first
        # workers hand kept-alive connections back through here, and wake the loop
        self._lock = threading.Condition()
        self._returned: list[_Connection] = []
        self._busy: set[_Connection] = set()  # handed to a worker, not yet back
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        self._closed = False  # no more connections come back (the loop has ended)
        self._stop = threading.Event()
        self._stopped = threading.Event()
        self.rejected = 0  # requests answered 503 because the queue was full

    def get_app(self) -> Callable[..., Any]:
        return self._app

    @property
    def stopping(self) -> bool:
        return self._stop.is_set()

    @property
    def idle_connections(self) -> int:
        """Kept-alive connections waiting for their next request."""
        return len(self._idle)

    # -- reception loop (one thread) ------------------------------------------------

    def serve_forever(self, poll_interval: float = 0.1) -> None:
        """Accept and read request heads until :meth:`shutdown`."""
        self._sel.register(self.socket, selectors.EVENT_READ)
        self._sel.register(self._wake_r, selectors.EVENT_READ)
        next_expiry = 0.0
        try:
            while not self._stop.is_set():
                for key, _ in self._sel.select(poll_interval):
                    if key.fileobj is self.socket:
                        self._accept()
                    elif key.fileobj is self._wake_r:
                        self._take_back()
                    else:
                        conn = self._pending.get(key.fd)
                        if conn is not None:  # not dropped by an earlier event of this round
                            self._advance(conn)
                now = time.monotonic()
                if now >= next_expiry:  # a walk of every connection: not on every event
                    next_expiry = now + poll_interval
                    self._expire(now)
        finally:
            with self._lock:
                self._closed = True
                returned, self._returned = self._returned, []
            for conn in [*self._pending.values(), *returned]:
                self._drop(conn)
            self._sel.close()
            self._stopped.set()

    def _accept(self) -> None:
        for _ in range(64):  # a burst of connections, without starving the others
            try:
                sock, client = self.socket.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                log.debug("accept failed: %s", exc)
                if self._pending:  # out of descriptors: shed an idle or the slowest client
                    self._shed()
                return
            if len(self._pending) >= self.max_pending:
                self._shed()
            sock.setblocking(False)
            if self.unix_path is not None:
                client = peer_credentials(sock)
            else:  # a response's last bytes must not wait for the client's delayed ACK
                with contextlib.suppress(OSError):
                    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            conn = _Connection(sock, client, time.monotonic() + self.read_timeout_s)
            if self.ssl_context is not None:
                try:
                    conn.sock = self.ssl_context.wrap_socket(sock, server_side=True,
                                                             do_handshake_on_connect=False)
                except (ssl.SSLError, OSError):
                    sock.close()
                    continue
                conn.handshaking = True
            conn.fd = conn.sock.fileno()
            self._pending[conn.fd] = conn
            self._sel.register(conn.sock, selectors.EVENT_READ)
            self._advance(conn)

    def _shed(self) -> None:
        """Make room: close the longest idle kept-alive connection, else the oldest
        unfinished request."""
        if self._idle:
            self._drop(next(iter(self._idle.values())))
        elif self._pending:
            self._drop(min(self._pending.values(), key=lambda c: c.deadline))

    def _take_back(self) -> None:
        """Connections whose response is complete: wait for their next request."""
        with contextlib.suppress(OSError):
            while self._wake_r.recv(4096):
                pass
        with self._lock:
            returned, self._returned = self._returned, []
        now = time.monotonic()
        for conn in returned:
            try:
                conn.sock.setblocking(False)
            except OSError:
                self._drop(conn)
                continue
            if len(self._pending) >= self.max_pending:
                self._shed()
            conn.idle = not conn.buf
            conn.deadline = now + (self.keepalive_idle_s if conn.idle else self.read_timeout_s)
            conn.fd = conn.sock.fileno()
            self._pending[conn.fd] = conn
            if conn.idle:
                self._idle[conn.fd] = conn
            self._sel.register(conn.sock, selectors.EVENT_READ)
            # a pipelined request may be in already (in buf, or decrypted in the TLS
            # layer where the selector does not see it)
            self._advance(conn)

    def _advance(self, conn: _Connection) -> None:
        """Progress a connection's handshake or head; hand it over once the head is in."""
        sock = conn.sock
        try:
            if conn.handshaking:
                sock.do_handshake()  # type: ignore[attr-defined]
                conn.handshaking = False
            while not self._head_in(conn):
                chunk = sock.recv(8192)
                if not chunk:
                    self._drop(conn)
                    return
                if conn.idle:  # the next request begins: read_timeout_s for its head
                    conn.idle = False
                    self._idle.pop(conn.fd, None)
                    conn.deadline = time.monotonic() + self.read_timeout_s
                conn.buf += chunk
                if not self._head_in(conn) and not (isinstance(sock, ssl.SSLSocket)
                                                    and sock.pending()):
                    return
        except ssl.SSLWantWriteError:
            self._sel.modify(sock, selectors.EVENT_WRITE)
            return
        except (ssl.SSLWantReadError, BlockingIOError, InterruptedError):
            self._sel.modify(sock, selectors.EVENT_READ)
            return
        except (ssl.SSLError, OSError) as exc:
            log.debug("connection from %s failed: %s", conn.client, exc)
            self._drop(conn)
            return
        if _HEAD_END not in conn.buf:
            self._reply_and_close(conn, b"431 Request Header Fields Too Large")
            return
        self._dispatch(conn)

    def _head_in(self, conn: _Connection) -> bool:
        """The request head is complete, or longer than allowed."""
        buf = conn.buf
        if buf[:1] in (b"\r", b"\n"):  # blank lines before a request line are ignored
            del buf[:len(buf) - len(buf.lstrip(b"\r\n"))]
        return _HEAD_END in buf or len(buf) > self.max_head_bytes

    def _dispatch(self, conn: _Connection) -> None:
        self._forget(conn)
        if not self._slots.acquire(blocking=False):
            self.rejected += 1
            self._reply_and_close(conn, b"503 Service Unavailable", forgotten=True)
            return
        end = conn.buf.index(_HEAD_END) + len(_HEAD_END)
        head, early = bytes(conn.buf[:end]), bytes(conn.buf[end:])
        conn.buf = bytearray()
        conn.served += 1
        with self._lock:
            self._busy.add(conn)
        try:
            conn.sock.settimeout(self.read_timeout_s)
            conn.future = self._workers.submit(self._handle, conn, head, early)
        except RuntimeError:  # shutting down
            self._slots.release()
            with self._lock:
                self._busy.discard(conn)
            conn.sock.close()

    def _handle(self, conn: _Connection, head: bytes, early: bytes) -> None:
        reusable = False
        try:
            reusable = _Handler(conn, head, early, self).reusable
        except Exception:  # a broken client must not take a worker down
            log.debug("request from %s failed", conn.client, exc_info=True)
        finally:
            self._slots.release()
            if not self._give_back(conn, reusable) and not conn.taken:
                with contextlib.suppress(OSError):
                    conn.sock.close()

    def _give_back(self, conn: _Connection, reusable: bool) -> bool:
        """Hand a connection whose response is complete back to the reception loop,
        unless it is not to be kept; True if it went back."""
        with self._lock:
            self._busy.discard(conn)
            self._lock.notify_all()
            if conn.taken or not reusable or self._closed or self.stopping:
                return False
            self._returned.append(conn)
            with contextlib.suppress(OSError):  # full: a wake-up is pending anyway
                self._wake_w.send(b"\0")
            return True

    def hand_over(self, conn: _Connection) -> None:
        """The app has taken ``conn`` over (it is no longer this server's)."""
        conn.taken = True
        with self._lock:
            self._busy.discard(conn)
            self._lock.notify_all()

    def _expire(self, now: float) -> None:
        for conn in [c for c in self._pending.values() if c.deadline < now]:
            if conn.idle:  # between requests: a plain close, as HTTP allows
                self._drop(conn)
            else:
                self._reply_and_close(conn, b"408 Request Timeout")

    def _reply_and_close(self, conn: _Connection, status: bytes,
                         forgotten: bool = False) -> None:
        if not forgotten:
            self._forget(conn)
        with contextlib.suppress(OSError, ssl.SSLError, ValueError):
            conn.sock.setblocking(False)
            extra = "".join(f"{k}: {v}\r\n" for k, v in self.headers).encode("latin-1")
            conn.sock.send(b"HTTP/1.1 " + status + b"\r\nContent-Length: 0\r\n"
                           b"Connection: close\r\nServer: " + SERVER_SOFTWARE.encode()
                           + b"\r\n" + extra + b"\r\n")
        with contextlib.suppress(OSError):
            conn.sock.close()

    def _forget(self, conn: _Connection) -> None:
        self._pending.pop(conn.fd, None)
        self._idle.pop(conn.fd, None)
        conn.fd = -1
        with contextlib.suppress(KeyError, ValueError, OSError):
            self._sel.unregister(conn.sock)

    def _drop(self, conn: _Connection) -> None:
        self._forget(conn)
        with contextlib.suppress(OSError):
            conn.sock.close()

    # -- lifecycle ------------------------------------------------------------------------

    def shutdown(self) -> None:
        """Stop the reception loop and wait for it (at once, or within poll_interval)."""
        self._stop.set()
        with self._lock, contextlib.suppress(OSError):
            self._wake_w.send(b"\0")
        self._stopped.wait(5)

    def server_close(self) -> None:
        """Close the listening socket. Requests in flight get ``CLOSE_GRACE_S`` to
        finish (without reading more of the client), then their sockets are shut."""
        self._stop.set()
        self.socket.close()
        if self.unix_path is not None:
            with contextlib.suppress(OSError):
                os.unlink(self.unix_path)
        self._workers.shutdown(wait=False, cancel_futures=True)
        with self._lock:
            busy = list(self._busy)
        for conn in busy:
            if conn.future is not None and conn.future.cancelled():  # never to run
                with self._lock:
                    self._busy.discard(conn)
                with contextlib.suppress(OSError):
                    conn.sock.close()
            else:  # a worker waiting for a request body gets its end now
                _shut(conn.sock, socket.SHUT_RD)
        deadline = time.monotonic() + CLOSE_GRACE_S
        with self._lock:
            while self._busy and self._lock.wait(max(deadline - time.monotonic(), 0)):
                pass
            stuck = list(self._busy)
        for conn in stuck:  # a client that does not read its response
            _shut(conn.sock, socket.SHUT_RDWR)
        with self._lock:
            self._closed = True
            for s in (self._wake_r, self._wake_w):
                s.close()


def _shut(sock: socket.socket, how: int) -> None:
    """``shutdown(2)`` the socket under a worker, waking its blocked reads or writes;
    never ``SSLSocket.shutdown``, which drops the TLS layer the worker still uses."""
    with contextlib.suppress(OSError, ValueError):
        socket.socket.shutdown(sock, how)


class Peer(NamedTuple):
    """Who is at the other end of a Unix socket (SO_PEERCRED, taken at connect)."""

    pid: int
    uid: int
    gid: int

    def __str__(self) -> str:
        return f"unix:pid={self.pid},uid={self.uid}"


def peer_credentials(sock: socket.socket) -> Peer:
    """The credentials of a Unix socket's peer, as the kernel recorded them at connect."""
    data = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _PEERCRED.size)
    return Peer(*_PEERCRED.unpack(data))


_PEERCRED = struct.Struct("3i")


def _bind_unix(sock: socket.socket, path: str, mode: int) -> None:
    """Bind ``sock`` at ``path`` with ``mode``, replacing a stale socket (never a file
    of another kind); the file has ``mode`` from the start (umask), not after a chmod."""
    with contextlib.suppress(FileNotFoundError):
        if stat.S_ISSOCK(os.lstat(path).st_mode):
            os.unlink(path)
    os.makedirs(os.path.dirname(path) or ".", mode=0o755, exist_ok=True)
    old = os.umask(0o777 & ~mode)
    try:
        sock.bind(path)
    finally:
        os.umask(old)
    os.chmod(path, mode)


def make_unix_server(path: str, app: Callable[..., Any], *, mode: int = 0o600,
                     max_connections: int = 16, read_timeout_s: float = 10.0,
                     worker_init: Callable[[], None] | None = None,
                     headers: Sequence[tuple[str, str]] = ()) -> Server:
    """A server on a Unix socket at ``path`` (file mode ``mode``): the app sees each
    client's credentials as ``environ["proctree.peer"]`` (a :class:`Peer`)."""
    return Server(path, app, family=socket.AF_UNIX, socket_mode=mode,
                  max_connections=max_connections, read_timeout_s=read_timeout_s,
                  worker_init=worker_init, headers=headers)


def make_server(listen: str, app: Callable[..., Any], *, ssl_context: ssl.SSLContext | None,
                max_connections: int = 64, read_timeout_s: float = 10.0,
                worker_init: Callable[[], None] | None = None,
                headers: Sequence[tuple[str, str]] = ()) -> Server:
    """Bind the server (raises OSError if the address is taken or not ours).
    ``worker_init`` runs first in every worker thread; ``headers`` go on the replies the
    server writes itself (408, 431, 503, and the handler's 400/414/505)."""
    family, host, port = parse_listen_address(listen)
    try:
        return Server((host, port), app, family=family, ssl_context=ssl_context,
                      max_connections=max_connections, read_timeout_s=read_timeout_s,
                      worker_init=worker_init, headers=headers)
    except OSError:
        if family == socket.AF_INET6 and host == "::":
            # no IPv6 on this host: every IPv4 address instead
            return Server(("", port), app, family=socket.AF_INET, ssl_context=ssl_context,
                          max_connections=max_connections, read_timeout_s=read_timeout_s,
                          worker_init=worker_init, headers=headers)
        raise
