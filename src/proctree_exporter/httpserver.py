"""The HTTP server: slow clients cost a socket, never a thread.

One thread accepts connections and, without blocking, completes TLS handshakes
and reads request heads, each within ``read_timeout_s`` and ``max_head_bytes``.
Only a complete request head is handed to a bounded pool of worker threads
that run the WSGI app and write the response (one request per connection).
A long-lived response (the event stream) takes the connection over through
``environ["proctree.hijack"]`` and frees its worker at once.
So a slowloris client, a stuck TLS handshake or a 1 MB header holds a small
buffer at most, for a bounded time, while other clients are served; the
number of threads is fixed and the number of connections is capped.
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
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, NamedTuple
from wsgiref.simple_server import ServerHandler, WSGIRequestHandler

from . import __version__

log = logging.getLogger(__name__)

MAX_HEAD_BYTES = 64 * 1024
QUEUE_PER_WORKER = 4
MIN_QUEUE = 256
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


class _PrefixedRaw(io.RawIOBase):
    """The request head already read, then whatever else the socket sends (a body)."""

    def __init__(self, head: bytes, sock: socket.socket) -> None:
        self._head = memoryview(head)
        self._sock = sock

    def readable(self) -> bool:
        return True

    def readinto(self, b: Any) -> int:
        if self._head:
            n = min(len(b), len(self._head))
            b[:n] = self._head[:n]
            self._head = self._head[n:]
            return n
        return self._sock.recv_into(b)


class _Muted(io.RawIOBase):
    """The response writer; once the connection is taken over, writes go nowhere
    (wsgiref still "sends" the empty response the app returned)."""

    def __init__(self, inner: Any) -> None:
        self._inner = inner
        self.muted = False

    def writable(self) -> bool:
        return True

    def write(self, b: Any) -> int:
        return len(b) if self.muted else self._inner.write(b)

    def flush(self) -> None:
        if not self.muted:
            self._inner.flush()


SERVER_SOFTWARE = f"proctree-exporter/{__version__}"  # the Server header: no Python version


class _ServerHandler(ServerHandler):
    """wsgiref's response writer, naming this server, with its errors in our log."""

    server_software = SERVER_SOFTWARE

    def log_exception(self, exc_info: Any) -> None:
        # a client that hangs up mid-response (SSLEOFError, BrokenPipe) is not news: debug
        # level. Anything else is a bug of ours: an error, with its traceback, in the log.
        client = self.request_handler.client_address  # type: ignore[attr-defined]
        if isinstance(exc_info[1], OSError):
            log.debug("response to %s failed", client, exc_info=exc_info)
        else:
            log.error("request from %s failed", client, exc_info=exc_info)


class _Handler(WSGIRequestHandler):
    """wsgiref's request handler fed from a pre-read head; quiet (requests are not notable)."""

    server_version = SERVER_SOFTWARE
    # error replies to a malformed request line are HTTP/0.9 (a bare body, no headers)
    # unless the default says otherwise; nobody speaks 0.9 to an exporter
    default_request_version = "HTTP/1.1"

    def __init__(self, sock: socket.socket, head: bytes, client: Any, server: Server,
                 taken: list[bool]) -> None:
        self._head = head
        self._taken = taken
        super().__init__(sock, client, server)  # type: ignore[arg-type]

    def setup(self) -> None:
        super().setup()
        plain = self.rfile  # holds a reference on the socket until closed
        self.rfile = io.BufferedReader(_PrefixedRaw(self._head, self.connection))
        plain.close()
        self.wfile = _Muted(self.wfile)  # type: ignore[assignment]

    def version_string(self) -> str:
        return SERVER_SOFTWARE  # also on the handler's own error replies (400, 414, ...)

    def end_headers(self) -> None:
        # only the handler's own error replies (send_error) come through here; the app's
        # responses carry the same headers from the app
        for name, value in self.server.headers:  # type: ignore[attr-defined]
            self.send_header(name, value)
        super().end_headers()

    def handle(self) -> None:
        """wsgiref's, with :class:`_ServerHandler` for the response."""
        self.raw_requestline = self.rfile.readline(65537)
        if len(self.raw_requestline) > 65536:
            self.requestline = self.request_version = self.command = ""
            self.send_error(414)
            return
        if not self.parse_request():  # an error reply has been sent
            return
        handler = _ServerHandler(self.rfile, self.wfile, self.get_stderr(), self.get_environ(),
                                 multithread=False)
        handler.request_handler = self  # type: ignore[attr-defined]
        handler.run(self.server.get_app())  # type: ignore[attr-defined]

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
        self._taken[0] = True
        return self.connection

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("http %s %s", self.address_string(), format % args)


@dataclass(slots=True)
class _Pending:
    """A connection whose request head is still arriving."""

    sock: socket.socket
    client: Any
    deadline: float
    buf: bytearray = field(default_factory=bytearray)
    handshaking: bool = False


class Server:
    """A WSGI server: non-blocking reception, a fixed pool of worker threads."""

    def __init__(self, address: tuple[str, int] | str, app: Callable[..., Any], *,
                 family: int, ssl_context: ssl.SSLContext | None = None,
                 max_connections: int = 64, socket_mode: int = 0o600,
                 read_timeout_s: float = 10.0, max_pending: int = 1024,
                 max_head_bytes: int = MAX_HEAD_BYTES,
                 worker_init: Callable[[], None] | None = None,
                 headers: Sequence[tuple[str, str]] = ()) -> None:
        self.ssl_context = ssl_context
        self.headers = tuple(headers)  # on every reply this server writes itself
        self.read_timeout_s = read_timeout_s
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
        self._pending: dict[int, _Pending] = {}
        self._stop = threading.Event()
        self._stopped = threading.Event()
        self.rejected = 0  # requests answered 503 because the queue was full

    def get_app(self) -> Callable[..., Any]:
        return self._app

    # -- reception loop (one thread) ------------------------------------------------

    def serve_forever(self, poll_interval: float = 0.1) -> None:
        """Accept and read request heads until :meth:`shutdown`."""
        self._sel.register(self.socket, selectors.EVENT_READ)
        try:
            while not self._stop.is_set():
                for key, _ in self._sel.select(poll_interval):
                    if key.fileobj is self.socket:
                        self._accept()
                    else:
                        self._advance(self._pending[key.fd])
                self._expire(time.monotonic())
        finally:
            for conn in list(self._pending.values()):
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
                if self._pending:  # out of descriptors: shed the slowest pending client
                    self._drop(min(self._pending.values(), key=lambda c: c.deadline))
                return
            if len(self._pending) >= self.max_pending:
                # too many unfinished requests: the oldest slow ones go first
                oldest = min(self._pending.values(), key=lambda c: c.deadline)
                self._drop(oldest)
            sock.setblocking(False)
            if self.unix_path is not None:
                client = peer_credentials(sock)
            conn = _Pending(sock, client, time.monotonic() + self.read_timeout_s)
            if self.ssl_context is not None:
                try:
                    conn.sock = self.ssl_context.wrap_socket(sock, server_side=True,
                                                             do_handshake_on_connect=False)
                except (ssl.SSLError, OSError):
                    sock.close()
                    continue
                conn.handshaking = True
            self._pending[conn.sock.fileno()] = conn
            self._sel.register(conn.sock, selectors.EVENT_READ)
            self._advance(conn)

    def _advance(self, conn: _Pending) -> None:
        """Progress a connection's handshake or head; hand it over once the head is in."""
        sock = conn.sock
        try:
            if conn.handshaking:
                sock.do_handshake()  # type: ignore[attr-defined]
                conn.handshaking = False
            while True:
                chunk = sock.recv(8192)
                if not chunk:
                    self._drop(conn)
                    return
                conn.buf += chunk
                if _HEAD_END in conn.buf or len(conn.buf) > self.max_head_bytes:
                    break
                if not (isinstance(sock, ssl.SSLSocket) and sock.pending()):
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
        if len(conn.buf) > self.max_head_bytes and _HEAD_END not in conn.buf:
            self._reply_and_close(conn, b"431 Request Header Fields Too Large")
            return
        self._dispatch(conn)

    def _dispatch(self, conn: _Pending) -> None:
        self._forget(conn)
        if not self._slots.acquire(blocking=False):
            self.rejected += 1
            self._reply_and_close(conn, b"503 Service Unavailable", forgotten=True)
            return
        try:
            conn.sock.settimeout(self.read_timeout_s)
            self._workers.submit(self._handle, conn.sock, bytes(conn.buf), conn.client)
        except RuntimeError:  # shutting down
            self._slots.release()
            conn.sock.close()

    def _handle(self, sock: socket.socket, head: bytes, client: Any) -> None:
        taken = [False]
        try:
            _Handler(sock, head, client, self, taken)
        except Exception:  # a broken client must not take a worker down
            log.debug("request from %s failed", client, exc_info=True)
        finally:
            self._slots.release()
            if not taken[0]:
                with contextlib.suppress(OSError):
                    sock.close()

    def _expire(self, now: float) -> None:
        for conn in [c for c in self._pending.values() if c.deadline < now]:
            self._reply_and_close(conn, b"408 Request Timeout")

    def _reply_and_close(self, conn: _Pending, status: bytes, forgotten: bool = False) -> None:
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

    def _forget(self, conn: _Pending) -> None:
        self._pending.pop(conn.sock.fileno(), None)
        with contextlib.suppress(KeyError, ValueError, OSError):
            self._sel.unregister(conn.sock)

    def _drop(self, conn: _Pending) -> None:
        self._forget(conn)
        with contextlib.suppress(OSError):
            conn.sock.close()

    # -- lifecycle ------------------------------------------------------------------------

    def shutdown(self) -> None:
        """Stop the reception loop and wait for it (returns within ~poll_interval)."""
        self._stop.set()
        self._stopped.wait(5)

    def server_close(self) -> None:
        """Close the listening socket; requests in flight finish on their own."""
        self._stop.set()
        self.socket.close()
        if self.unix_path is not None:
            with contextlib.suppress(OSError):
                os.unlink(self.unix_path)
        self._workers.shutdown(wait=False, cancel_futures=True)


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
