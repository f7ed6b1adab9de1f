"""HTTP: the WSGI app (/, /metrics, /api/v1/..., /-/healthy, /-/ready) and its server.

The server is threaded and bounded: each connection gets a thread, at most
``max_connections`` at once (more are answered 503 and closed), and a socket
timeout drops clients that stop talking. TLS handshakes happen in the
connection's thread, so a slow handshake never holds up the accept loop.
Basic auth and TLS come from an exporter-toolkit style web config and apply to
everything but the health checks.
"""

from __future__ import annotations

import html
import json
import logging
import socket
import socketserver
import ssl
import threading
from collections.abc import Callable, Iterable
from dataclasses import asdict
from typing import Any
from urllib.parse import parse_qs
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer

from prometheus_client import CollectorRegistry, make_wsgi_app

from . import __version__
from .reaper import HEALTHY, ORPHANED, ZOMBIE
from .watch import MemberInfo, RootView, Watchers
from .web_config import WebConfig

log = logging.getLogger(__name__)

StartResponse = Callable[..., Any]
_PAGES = ("/", "/metrics", "/api/v1/roots", "/api/v1/tree", "/-/healthy", "/-/ready")


class App:
    """The exporter's WSGI application."""

    def __init__(self, registry: CollectorRegistry, web_config: WebConfig,
                 watchers: Callable[[], Watchers | None], ready: Callable[[], bool]) -> None:
        self.metrics_app = make_wsgi_app(registry)
        self.web_config = web_config
        self._watchers = watchers
        self._ready = ready

    def __call__(self, environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        path = environ.get("PATH_INFO", "") or "/"
        method = environ.get("REQUEST_METHOD", "GET")
        extra = list(self.web_config.headers.items())

        def respond(status: str, body: bytes, ctype: str = "text/plain; charset=utf-8",
                    headers: list[tuple[str, str]] | None = None) -> list[bytes]:
            hdrs = [("Content-Type", ctype), ("Content-Length", str(len(body))),
                    *extra, *(headers or [])]
            start_response(status, hdrs)
            return [b""] if method == "HEAD" else [body]

        known = path in _PAGES or path.startswith("/api/v1/roots/")
        if not known:
            return respond("404 Not Found", b"404 page not found\n")
        if method not in ("GET", "HEAD"):
            return respond("405 Method Not Allowed", b"method not allowed\n",
                           headers=[("Allow", "GET, HEAD")])
        if path == "/-/healthy":
            return respond("200 OK", b"OK\n")
        if path == "/-/ready":
            if self._ready():
                return respond("200 OK", b"OK\n")
            return respond("503 Service Unavailable", b"not ready: seeding from /proc\n")
        if not self.web_config.check_basic_auth(environ.get("HTTP_AUTHORIZATION")):
            return respond("401 Unauthorized", b"401 Unauthorized\n",
                           headers=[("WWW-Authenticate",
                                     'Basic realm="proctree-exporter", charset="UTF-8"')])
        if path == "/metrics":
            return self._metrics(environ, start_response, extra)
        if path == "/":
            return respond("200 OK", self._landing().encode(), "text/html; charset=utf-8")
        watchers = self._watchers()
        if watchers is None:
            return respond("503 Service Unavailable", b"not ready: seeding from /proc\n")
        try:
            doc = self._api(path, environ.get("QUERY_STRING", ""), watchers)
        except KeyError as exc:
            return respond("404 Not Found", _json({"error": f"no root {exc.args[0]!r}"}),
                           "application/json")
        except ValueError as exc:
            return respond("400 Bad Request", _json({"error": str(exc)}), "application/json")
        return respond("200 OK", _json(doc), "application/json")

    def _metrics(self, environ: dict[str, Any], start_response: StartResponse,
                 extra: list[tuple[str, str]]) -> Iterable[bytes]:
        def with_headers(status: str, headers: list[tuple[str, str]], *a: Any) -> Any:
            return start_response(status, [*headers, *extra], *a)

        if environ.get("REQUEST_METHOD") == "HEAD":
            # prometheus_client answers GET only; HEAD is GET without the body
            self.metrics_app({**environ, "REQUEST_METHOD": "GET"}, with_headers)
            return [b""]
        return self.metrics_app(environ, with_headers)

    # -- JSON API ----------------------------------------------------------------

    def _api(self, path: str, query: str, watchers: Watchers) -> dict[str, Any]:
        if path == "/api/v1/roots":
            return {"roots": [_root_doc(watchers.view(name)) for name in watchers.roots]}
        if path.startswith("/api/v1/roots/"):
            name = path.removeprefix("/api/v1/roots/")
            if name not in watchers.roots:
                raise KeyError(name)
            view = watchers.view(name, members=True)
            doc = _root_doc(view)
            doc["members"] = [_member(m) for m in view.members]
            doc["recent"] = [{"event": kind, **_member(m)} for kind, m in view.recent]
            doc["tombstones"] = [_member(m) for m in view.tombstones]
            doc["events"] = [asdict(e) for e in view.events]
            return doc
        # /api/v1/tree?root=NAME
        params = parse_qs(query)
        names = params.get("root")
        if not names:
            raise ValueError("query parameter root is required: /api/v1/tree?root=NAME")
        name = names[0]
        if name not in watchers.roots:
            raise KeyError(name)
        view = watchers.view(name, members=True, recent=0)
        # tombstones too: an exited wrapper keeps its orphans under it
        return {"root": name, "up": view.up, "truncated": view.truncated,
                "nodes": _nest((*view.members, *view.tombstones))}

    # -- landing page ----------------------------------------------------------------

    def _landing(self) -> str:
        watchers = self._watchers()
        rows = []
        if watchers is not None:
            for name in watchers.roots:
                v = watchers.view(name)
                e = html.escape(name)
                rows.append(
                    f"<tr><td><a href='/api/v1/roots/{e}'>{e}</a></td>"
                    f"<td>{'up' if v.up else 'DOWN'}</td><td>{v.member_count}</td>"
                    + "".join(f"<td>{v.classes.get(c, 0)}</td>" for c in
                              (HEALTHY, ORPHANED, ZOMBIE))
                    + f"<td><a href='/api/v1/tree?root={e}'>tree</a></td></tr>")
        table = ("<table><tr><th>root</th><th>state</th><th>members</th><th>healthy</th>"
                 "<th>orphaned</th><th>zombie</th><th></th></tr>" + "".join(rows) + "</table>"
                 if rows else "<p>Seeding from /proc…</p>")
        return (f"<!doctype html><html><head><meta charset='utf-8'><title>proctree-exporter"
                f"</title></head><body><h1>proctree-exporter</h1><p>version "
                f"{html.escape(__version__)}</p><ul><li><a href='/metrics'>metrics</a></li>"
                f"<li><a href='/api/v1/roots'>/api/v1/roots</a></li>"
                f"<li><a href='/-/healthy'>/-/healthy</a></li>"
                f"<li><a href='/-/ready'>/-/ready</a></li></ul>{table}</body></html>")


def _json(doc: Any) -> bytes:
    return (json.dumps(doc, separators=(",", ":")) + "\n").encode()


def _member(m: MemberInfo) -> dict[str, Any]:
    doc = asdict(m)
    doc["class"] = doc.pop("cls")
    if m.cmdline is None:
        del doc["cmdline"]  # only roots with capture_cmdline show command lines
    return doc


def _root_doc(v: RootView) -> dict[str, Any]:
    return {
        "name": v.name, "select": v.select, "match": v.match, "up": v.up,
        "instances": [{"pid": i.pid, "start_ticks": i.start_ticks, "comm": i.comm,
                       "started_at": i.started_at} for i in v.instances],
        "members": v.member_count, "classes": dict(v.classes),
        "spawned_total": v.spawned_total, "exited_total": v.exited_total,
        "restarts_total": v.restarts_total, "truncated": v.truncated,
        "warnings": list(v.warnings),
    }


def _nest(members: Iterable[MemberInfo]) -> list[dict[str, Any]]:
    """Members nested by lineage; those whose lineage parent is not listed are top-level.

    Where a pid appears twice (a tombstone and the process that reused its pid),
    the first listed (live) wins.
    """
    docs: dict[int, dict[str, Any]] = {}
    for m in members:
        docs.setdefault(m.pid, {**_member(m), "children": []})
    tops = []
    for doc in docs.values():
        parent = docs.get(doc["lineage_ppid"]) if doc["lineage_ppid"] != doc["pid"] else None
        (parent["children"] if parent is not None else tops).append(doc)
    return tops


# --- server -------------------------------------------------------------------------


class _Handler(WSGIRequestHandler):
    """wsgiref's handler, quiet (requests are not notable events) and with a timeout."""

    timeout = 10.0  # per socket read: a client that stops sending is dropped

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("http %s %s", self.address_string(), format % args)


class Server(socketserver.ThreadingMixIn, WSGIServer):
    """A WSGI server with one thread per connection, bounded, optionally TLS."""

    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 128

    def __init__(self, address: tuple[str, int], app: App, *, family: int,
                 ssl_context: ssl.SSLContext | None = None, max_connections: int = 64,
                 read_timeout_s: float = 10.0) -> None:
        self.address_family = family
        self.ssl_context = ssl_context
        self._slots = threading.BoundedSemaphore(max_connections)
        self._read_timeout = read_timeout_s
        super().__init__(address, _Handler)
        self.set_app(app)

    def server_bind(self) -> None:
        if self.address_family == socket.AF_INET6 and self.server_address[0] == "::":
            # ":9632" means every address, v4 and v6
            try:
                self.socket.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
            except OSError:
                pass
        super().server_bind()

    def process_request(self, request: Any, client_address: Any) -> None:
        if not self._slots.acquire(blocking=False):
            # over the connection limit: answer without a thread and close
            try:
                request.settimeout(1.0)
                request.sendall(b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\n"
                                b"Connection: close\r\n\r\n")
            except OSError:
                pass
            self.shutdown_request(request)
            return
        try:
            super().process_request(request, client_address)
        except BaseException:
            self._slots.release()
            raise

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            request.settimeout(self._read_timeout)
            if self.ssl_context is not None:
                try:
                    request = self.ssl_context.wrap_socket(request, server_side=True)
                except (ssl.SSLError, OSError) as exc:
                    log.debug("tls handshake from %s failed: %s", client_address, exc)
                    self.shutdown_request(request)
                    return
            super().process_request_thread(request, client_address)
        finally:
            self._slots.release()

    def handle_error(self, request: Any, client_address: Any) -> None:
        log.debug("http connection from %s ended with an error", client_address,
                  exc_info=True)


def parse_listen_address(text: str) -> tuple[int, str, int]:
    """``":9632"``, ``"127.0.0.1:9632"``, ``"[::1]:9632"`` -> (family, host, port)."""
    host, sep, port_text = text.rpartition(":")
    if not sep or not port_text.isdigit() or not 0 <= int(port_text) <= 65535:
        raise ValueError(f"listen address {text!r}: expected [HOST]:PORT")
    port = int(port_text)
    if host.startswith("[") and host.endswith("]"):
        return socket.AF_INET6, host[1:-1], port
    if host == "":
        return (socket.AF_INET6, "::", port) if socket.has_ipv6 else (socket.AF_INET, "", port)
    if ":" in host:
        raise ValueError(f"listen address {text!r}: put IPv6 hosts in brackets")
    return socket.AF_INET, host, port


def make_server(listen: str, app: App, *, web_config: WebConfig, max_connections: int = 64,
                read_timeout_s: float = 10.0) -> Server:
    """Bind the server (raises OSError if the address is taken or not ours)."""
    family, host, port = parse_listen_address(listen)
    try:
        return Server((host, port), app, family=family, ssl_context=web_config.ssl_context(),
                      max_connections=max_connections, read_timeout_s=read_timeout_s)
    except OSError:
        if family == socket.AF_INET6 and host == "::":
            # no IPv6 on this host: all IPv4 addresses instead
            return Server(("", port), app, family=socket.AF_INET,
                          ssl_context=web_config.ssl_context(),
                          max_connections=max_connections, read_timeout_s=read_timeout_s)
        raise
