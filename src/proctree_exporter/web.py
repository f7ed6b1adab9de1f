"""HTTP: the WSGI app (/, /metrics, /api/v1/..., /-/healthy, /-/ready).

The server that runs it is in httpserver.py. Basic auth comes from an
exporter-toolkit style web config and applies to everything but the health
checks (TLS is the server's part).
"""

from __future__ import annotations

import html
import json
import logging
from collections.abc import Callable, Iterable
from dataclasses import asdict
from typing import Any
from urllib.parse import parse_qs

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
