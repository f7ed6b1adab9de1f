"""Keep-alive on the real daemon (and on the server alone, where a bound must be small):
connections carry many requests, idle ones cost a socket and no thread, and every
request gets its own answer, in order."""

from __future__ import annotations

import http.client
import io
import json
import os
import selectors
import socket
import ssl
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from proctree_exporter import httpserver

from .conftest import Janitor, wait_for
from .daemon_helpers import Running, start_daemon
from .test_web_config import Pki, pki  # noqa: F401 - the certificate fixture

pytestmark = pytest.mark.kernel

CONFIG = """
web:
  max_connections: 16
  read_timeout_seconds: 3
roots:
  - {name: host, select: pid, match: 1}
"""


def threads(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/task"))


def read_response(f: io.BufferedReader) -> tuple[int, dict[str, str], bytes]:
    """One response from a connection's reader: (status, headers lower-cased, body);
    the body by its Content-Length. (0, {}, b"") at the end of the connection."""
    line = f.readline()
    if not line:
        return 0, {}, b""
    status = int(line.split()[1])
    headers = {}
    while (line := f.readline()) not in (b"\r\n", b""):
        name, _, value = line.decode("latin-1").partition(":")
        headers[name.strip().lower()] = value.strip()
    return status, headers, f.read(int(headers.get("content-length", "0")))


def closed_by_server(sock: socket.socket, timeout: float) -> bool:
    """The server has closed the connection (EOF) within ``timeout``, sending nothing."""
    sock.settimeout(timeout)
    try:
        return sock.recv(1) == b""
    except TimeoutError:
        return False


def local_port(c: http.client.HTTPConnection) -> int:
    assert c.sock is not None, "the connection was closed"
    return c.sock.getsockname()[1]


def test_many_requests_share_one_connection(janitor: Janitor, tmp_path: Path) -> None:
    d = start_daemon(janitor, tmp_path, CONFIG)
    c = http.client.HTTPConnection("127.0.0.1", d.port, timeout=10)
    ports = []
    for method, path, want in (("GET", "/metrics", 200), ("GET", "/-/healthy", 200),
                               ("GET", "/api/v1/roots", 200), ("HEAD", "/metrics", 200),
                               ("GET", "/nope", 404), ("GET", "/metrics", 200)):
        c.request(method, path)
        r = c.getresponse()
        body = r.read()
        assert (r.status, r.version) == (want, 11), (path, r.status, r.version)
        assert r.getheader("Connection") is None, path
        if method == "GET":
            assert int(r.headers["Content-Length"]) == len(body), path
        ports.append(local_port(c))
    assert len(set(ports)) == 1, ports  # one socket for all of them
    # prometheus_client sets no Content-Length; wsgiref adds it (one block), so a
    # scrape keeps its connection
    c.request("GET", "/metrics", headers={"Accept-Encoding": "gzip"})
    r = c.getresponse()
    assert r.headers["Content-Encoding"] == "gzip" and int(r.headers["Content-Length"]) > 0
    r.read()
    assert local_port(c) == ports[0]
    c.close()


def test_connection_close_and_http_1_0_end_the_connection(janitor: Janitor,
                                                          tmp_path: Path) -> None:
    d = start_daemon(janitor, tmp_path, CONFIG)
    for request in (b"GET /-/healthy HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
                    b"GET /-/healthy HTTP/1.1\r\nHost: x\r\nConnection: TE, Close\r\n\r\n",
                    b"GET /-/healthy HTTP/1.0\r\n\r\n",
                    # HTTP/1.0 keep-alive is not offered: an HTTP/1.0 request is the last
                    b"GET /-/healthy HTTP/1.0\r\nConnection: keep-alive\r\n\r\n"):
        with socket.create_connection(("127.0.0.1", d.port), timeout=5) as s:
            s.sendall(request)
            f = s.makefile("rb")
            status, headers, body = read_response(f)
            assert (status, body) == (200, b"OK\n"), request
            assert headers["connection"] == "close", (request, headers)
            assert f.read() == b"", request  # and then the server closes it


def test_a_connection_ends_after_max_requests(janitor: Janitor, tmp_path: Path) -> None:
    d = start_daemon(janitor, tmp_path, CONFIG)
    c = http.client.HTTPConnection("127.0.0.1", d.port, timeout=10)
    ports = set()
    for i in range(1, httpserver.MAX_REQUESTS + 1):
        c.request("GET", "/-/healthy")
        r = c.getresponse()
        assert r.read() == b"OK\n"
        if i < httpserver.MAX_REQUESTS:
            assert r.getheader("Connection") is None, i
            ports.add(local_port(c))
    assert r.getheader("Connection") == "close"
    assert c.sock is None  # http.client closed it, as the response said
    assert len(ports) == 1
    c.request("GET", "/-/healthy")  # the next one goes on a new connection
    assert c.getresponse().read() == b"OK\n"
    assert local_port(c) not in ports
    c.close()


def test_pipelined_requests_are_answered_in_order(janitor: Janitor, tmp_path: Path) -> None:
    d = start_daemon(janitor, tmp_path, CONFIG)
    with socket.create_connection(("127.0.0.1", d.port), timeout=10) as s:
        s.sendall(b"GET /-/healthy HTTP/1.1\r\nHost: x\r\n\r\n"
                  b"GET /api/v1/roots HTTP/1.1\r\nHost: x\r\n\r\n"
                  b"HEAD /metrics HTTP/1.1\r\nHost: x\r\n\r\n"
                  b"GET /nope HTTP/1.1\r\nHost: x\r\n\r\n"
                  b"GET /-/ready HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        f = s.makefile("rb")
        status, _, body = read_response(f)
        assert (status, body) == (200, b"OK\n")
        status, _, body = read_response(f)
        assert status == 200 and [r["name"] for r in json.loads(body)["roots"]] == ["host"]
        line = f.readline()  # HEAD: a head and no body, whatever its Content-Length says
        assert line.startswith(b"HTTP/1.1 200 ")
        while f.readline() != b"\r\n":
            pass
        status, _, body = read_response(f)
        assert (status, body) == (404, b"404 page not found\n")
        status, headers, body = read_response(f)
        assert (status, body, headers["connection"]) == (200, b"OK\n", "close")
        assert f.read() == b""


def test_idle_clients_cost_no_thread_and_do_not_hold_up_a_scrape(janitor: Janitor,
                                                                 tmp_path: Path) -> None:
    d = start_daemon(janitor, tmp_path, CONFIG)
    before = threads(d.proc.pid)
    idle = []
    try:
        for _ in range(200):  # far more than the 16 workers
            c = http.client.HTTPConnection("127.0.0.1", d.port, timeout=10)
            c.request("GET", "/-/healthy")
            assert c.getresponse().read() == b"OK\n"
            idle.append(c)
        t0 = time.monotonic()
        status, _, body = d.get("/metrics")  # a new client
        took = time.monotonic() - t0
        assert status == 200 and b"proctree_build_info" in body
        assert took < 2.0, took
        # the pool (16) plus the daemon's own few, whatever the number of idle clients
        assert threads(d.proc.pid) <= before + 16, (before, threads(d.proc.pid))
        # and the idle ones are still there, on their sockets
        for c in idle[::20]:
            port = local_port(c)
            c.request("GET", "/-/healthy")
            assert c.getresponse().read() == b"OK\n"
            assert local_port(c) == port
    finally:
        for c in idle:
            c.close()


def test_an_event_stream_takes_over_a_kept_alive_connection(janitor: Janitor,
                                                            tmp_path: Path) -> None:
    d = start_daemon(janitor, tmp_path, CONFIG)
    with socket.create_connection(("127.0.0.1", d.port), timeout=10) as s:
        f = s.makefile("rb")
        s.sendall(b"GET /-/healthy HTTP/1.1\r\nHost: x\r\n\r\n")
        assert read_response(f)[:3:2] == (200, b"OK\n")
        s.sendall(b"GET /api/v1/events HTTP/1.1\r\nHost: x\r\n\r\n")
        head = b""
        while not head.endswith(b"\r\n\r\n"):
            head += f.readline()
        assert head.startswith(b"HTTP/1.1 200 ") and b"text/event-stream" in head, head
        assert f.readline().startswith(b"retry: ")


def test_unix_socket_keeps_alive_with_its_peer_credentials(janitor: Janitor,
                                                          tmp_path: Path) -> None:
    sock_path = tmp_path / "api.sock"
    d = start_daemon(janitor, tmp_path, CONFIG + f"api:\n  write:\n    enabled: true\n"
                     f"    socket: {sock_path}\n")
    c = http.client.HTTPConnection("localhost", timeout=10)
    c.sock = socket.socket(socket.AF_UNIX)
    c.sock.connect(str(sock_path))
    raw = c.sock
    body = json.dumps({"select": "pid", "match": 1}).encode()
    for method, path, payload, want in (
            ("PUT", "/api/v1/roots/extra", body, 201),  # a body the app reads
            ("GET", "/api/v1/roots/extra", None, 200),
            ("PUT", "/api/v1/roots/extra", body, 200),
            ("DELETE", "/api/v1/roots/extra", None, 200)):
        c.request(method, path, body=payload,
                  headers={"Content-Type": "application/json"} if payload else {})
        r = c.getresponse()
        assert r.status == want, (method, r.status, r.read())
        r.read()
        assert r.getheader("Connection") is None and c.sock is raw, method
    c.close()
    status, _, err = d.stop()
    assert status == 0, err
    # each request was the same peer's: the credentials the kernel took at connect
    who = f'who="unix:pid={os.getpid()},uid=0"'
    assert err.count(who) == 3, err[-2000:]


def test_shutdown_does_not_wait_for_a_body_that_never_comes(janitor: Janitor,
                                                           tmp_path: Path) -> None:
    sock_path = tmp_path / "api.sock"
    config = CONFIG.replace("read_timeout_seconds: 3", "read_timeout_seconds: 10")
    d = start_daemon(janitor, tmp_path, config + f"api:\n  write:\n    enabled: true\n"
                     f"    socket: {sock_path}\n")
    with socket.socket(socket.AF_UNIX) as s:
        s.connect(str(sock_path))
        # a worker now waits for 50 bytes of body, up to read_timeout_seconds (10 s)
        s.sendall(b"PUT /api/v1/roots/x HTTP/1.1\r\nHost: x\r\nContent-Length: 50\r\n\r\n")
        time.sleep(0.5)
        status, took, err = d.stop()
    assert status == 0, err
    assert took < 2.0, (took, err[-2000:])


# -- the server alone: bounds small enough for a test ----------------------------------


def _echo_app(environ: dict[str, Any], start_response: Callable[..., Any]) -> list[bytes]:
    """/read answers with the body it read; /boom fails; anything else leaves the body
    unread."""
    if environ["PATH_INFO"] == "/boom":
        raise RuntimeError("a bug in the app")
    body = b""
    if environ["PATH_INFO"] == "/read":
        body = environ["wsgi.input"].read(int(environ.get("CONTENT_LENGTH") or 0))
    out = environ["PATH_INFO"].encode() + b" " + body
    start_response("200 OK", [("Content-Type", "text/plain"),
                              ("Content-Length", str(len(out)))])
    return [out]


@contextmanager
def serving(address: Any = ("127.0.0.1", 0), **kw: Any) -> Iterator[httpserver.Server]:
    family = socket.AF_UNIX if isinstance(address, str) else socket.AF_INET
    server = httpserver.Server(address, _echo_app, family=family, max_connections=4, **kw)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05},
                              name="test-http", daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


def test_an_idle_connection_is_closed_after_the_idle_bound() -> None:
    with serving(keepalive_idle_s=0.5, read_timeout_s=5) as server, \
            socket.create_connection(server.server_address, timeout=5) as s:
        s.sendall(b"GET /a HTTP/1.1\r\nHost: x\r\n\r\n")
        status, headers, body = read_response(s.makefile("rb"))
        assert (status, body) == (200, b"/a ") and "connection" not in headers
        t0 = time.monotonic()
        assert closed_by_server(s, timeout=5)  # a plain close between requests: no 408
        assert 0.4 < time.monotonic() - t0 < 2.0


def test_a_kept_alive_connection_has_read_timeout_for_its_next_head() -> None:
    with serving(keepalive_idle_s=5, read_timeout_s=0.5) as server, \
            socket.create_connection(server.server_address, timeout=5) as s:
        f = s.makefile("rb")
        s.sendall(b"GET /a HTTP/1.1\r\nHost: x\r\n\r\n")
        assert read_response(f)[0] == 200
        time.sleep(1.0)  # idle past read_timeout_s, within the idle bound: still open
        s.sendall(b"GET /b HTTP/1.1\r\nHost: x\r\n")  # and a head that never ends
        t0 = time.monotonic()
        status, headers, _ = read_response(f)
        assert (status, headers["connection"]) == (408, "close")
        assert time.monotonic() - t0 < 2.0


def test_a_request_body_is_read_before_the_next_request_or_the_connection_ends() -> None:
    with serving() as server, socket.create_connection(server.server_address, timeout=5) as s:
        f = s.makefile("rb")
        # the body arrives later than its head: the worker reads it from the socket
        s.sendall(b"POST /read HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\n")
        time.sleep(0.2)
        s.sendall(b"hello" + b"GET /next HTTP/1.1\r\nHost: x\r\n\r\n")
        assert read_response(f)[::2] == (200, b"/read hello")
        assert read_response(f)[::2] == (200, b"/next ")
        # a body the app did not read: answered, then the connection ends
        s.sendall(b"POST /ignore HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello"
                  b"GET /never HTTP/1.1\r\nHost: x\r\n\r\n")
        status, headers, body = read_response(f)
        assert (status, body, headers["connection"]) == (200, b"/ignore ", "close")
        assert f.read() == b""


def test_an_answer_to_an_unread_body_reaches_a_client_still_sending_it(tmp_path: Path) -> None:
    # as http.client sends a PUT: the head, then the body; the app answers at once
    # without reading it (a 403 to a reader on the Unix socket). Closed with the body
    # unread, the client's send of the body broke (EPIPE) before it read the answer
    path = str(tmp_path / "s.sock")
    with serving(path), socket.socket(socket.AF_UNIX) as s:
        s.settimeout(5)
        s.connect(path)
        s.sendall(b"PUT /ignore HTTP/1.1\r\nHost: x\r\nContent-Length: 2000\r\n\r\n")
        time.sleep(0.3)  # the answer is written meanwhile
        s.sendall(b"x" * 2000)
        f = s.makefile("rb")
        status, headers, body = read_response(f)
        assert (status, body, headers["connection"]) == (200, b"/ignore ", "close")
        assert f.read() == b""
        # one that never sends its body holds a worker for a second at most
        s2 = socket.socket(socket.AF_UNIX)
        with s2:
            s2.settimeout(5)
            s2.connect(path)
            s2.sendall(b"PUT /ignore HTTP/1.1\r\nHost: x\r\nContent-Length: 2000\r\n\r\n")
            t0 = time.monotonic()
            assert read_response(s2.makefile("rb"))[0] == 200
            assert closed_by_server(s2, timeout=5)
            assert time.monotonic() - t0 < 2.5


def test_an_app_error_ends_the_connection() -> None:
    with serving() as server, socket.create_connection(server.server_address, timeout=5) as s:
        s.sendall(b"GET /boom HTTP/1.1\r\nHost: x\r\n\r\nGET /never HTTP/1.1\r\nHost: x\r\n\r\n")
        f = s.makefile("rb")
        status, headers, _ = read_response(f)
        assert (status, headers["connection"]) == (500, "close")
        assert f.read() == b""


def test_the_longest_idle_connections_are_shed_first_when_pending_is_full() -> None:
    with serving(max_pending=16) as server:
        assert server.max_pending == 16
        idle = []
        for i in range(16):
            s = socket.create_connection(server.server_address, timeout=5)
            s.sendall(f"GET /{i} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
            assert read_response(s.makefile("rb"))[0] == 200
            idle.append(s)
        try:
            # each is back with the reception loop once its worker has handed it over
            wait_for(lambda: server.idle_connections == 16)
            with socket.create_connection(server.server_address, timeout=5) as new:
                new.sendall(b"GET /new HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
                assert read_response(new.makefile("rb"))[::2] == (200, b"/new ")
            assert closed_by_server(idle[0], timeout=2)  # the longest idle made room
            sel = selectors.DefaultSelector()
            for s in idle[1:]:
                sel.register(s, selectors.EVENT_READ)
            assert sel.select(0.3) == []  # the others are still open, and quiet
            sel.close()
        finally:
            for s in idle:
                s.close()


def test_tls_connections_are_kept_alive(pki: Pki) -> None:  # noqa: F811
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(pki.server_crt, pki.server_key)
    client_ctx = ssl.create_default_context(cafile=str(pki.ca))
    with serving(ssl_context=ctx) as server:
        port = server.server_address[1]
        c = http.client.HTTPSConnection("127.0.0.1", port, context=client_ctx, timeout=5)
        ports = set()
        for i in range(5):
            c.request("GET", f"/{i}")
            r = c.getresponse()
            assert (r.status, r.read()) == (200, f"/{i} ".encode())
            ports.add(local_port(c))
        assert len(ports) == 1
        c.close()
        # a body and the next request in one TLS record, after the head: the worker
        # reads the body and leaves the next request in the TLS layer, where the
        # selector does not see it
        raw = socket.create_connection(("127.0.0.1", port), timeout=5)
        with client_ctx.wrap_socket(raw, server_hostname="127.0.0.1") as s:
            f = s.makefile("rb")
            s.sendall(b"POST /read HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\n")
            time.sleep(0.2)
            s.sendall(b"hello" + b"GET /next HTTP/1.1\r\nHost: x\r\n\r\n")
            assert read_response(f)[::2] == (200, b"/read hello")
            assert read_response(f)[::2] == (200, b"/next ")


def test_daemon_tls_keeps_alive(janitor: Janitor, tmp_path: Path,
                                pki: Pki) -> None:  # noqa: F811
    web = tmp_path / "web.yml"
    web.write_text(f"tls_server_config:\n  cert_file: {pki.server_crt}\n"
                   f"  key_file: {pki.server_key}\n")
    d: Running = start_daemon(janitor, tmp_path, CONFIG, "--web.config.file", str(web),
                              wait_ready=False)
    ctx = ssl.create_default_context(cafile=str(pki.ca))
    c = http.client.HTTPSConnection("127.0.0.1", d.port, context=ctx, timeout=5)
    deadline = time.monotonic() + 30
    while True:
        try:
            c.request("GET", "/-/ready")
            r = c.getresponse()
            if (r.status, r.read()) == (200, b"OK\n"):
                break
        except OSError:
            c.close()
        assert time.monotonic() < deadline and d.proc.poll() is None, "daemon not ready"
        time.sleep(0.1)
    port = local_port(c)
    for path in ("/metrics", "/api/v1/roots", "/-/healthy"):
        c.request("GET", path)
        r = c.getresponse()
        assert r.status == 200 and r.read(), path
        assert local_port(c) == port, path
    c.close()
