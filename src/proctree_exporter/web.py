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

from . import __version__, ui
from .reaper import HEALTHY, ORPHANED, ZOMBIE
from .watch import MemberInfo, RootView, Watchers
from .web_config import WebConfig

log = logging.getLogger(__name__)

StartResponse = Callable[..., Any]
_PAGES = ("/", "/metrics", "/api/v1/roots", "/api/v1/tree", "/-/healthy", "/-/ready")
_PAGES += ("/api/v1/ancestors",)  # the tree page's chain of ancestors
_MAX_ANCESTORS = 256


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

        known = path in _PAGES or path.startswith(("/api/v1/roots/", "/ui/"))
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
        if path.startswith("/ui/"):  # the tree page's script, style and icon
            found = ui.asset(path.removeprefix("/ui/"))
            if found is None:
                return respond("404 Not Found", b"404 page not found\n")
            return respond("200 OK", found[0], found[1], headers=[("Cache-Control", "no-cache")])
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
        except LookupError as exc:  # a pid that is not (or no longer) a member
            return respond("404 Not Found", _json({"error": str(exc)}), "application/json")
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
        if path == "/api/v1/ancestors":
            return self._ancestors(query, watchers)
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

    def _ancestors(self, query: str, watchers: Watchers) -> dict[str, Any]:
        """``/api/v1/ancestors?root=NAME&pid=PID[&start_ticks=T]``: a live (or unreaped)
        member's lineage ancestors, nearest first, up to PID 1; O(depth), at most
        ``_MAX_ANCESTORS``. The tree page shows them above the root's own processes."""
        params = parse_qs(query)
        name = (params.get("root") or [""])[0]
        pid_text = (params.get("pid") or [""])[0]
        start_text = (params.get("start_ticks") or [""])[0]
        if not name or not pid_text.isdigit() or not (start_text or "0").isdigit():
            raise ValueError("query parameters root and pid are required: "
                             "/api/v1/ancestors?root=NAME&pid=PID[&start_ticks=T]")
        if name not in watchers.roots:
            raise KeyError(name)
        pid = int(pid_text)
        tree = watchers.tree
        with tree.lock:
            root = watchers.roots[name]
            node = tree.get(pid)
            if (node is None or (node not in root.members and node not in root.unreaped)
                    or (start_text and not node.same_start(int(start_text)))):
                raise LookupError(f"pid {pid} is not a live member of root {name!r}")
            found = []
            for anc in tree.ancestors(node):
                found.append({"pid": anc.pid, "start_ticks": anc.start_ticks, "comm": anc.comm,
                              "user": tree.user_name(anc.uid), "exited": anc.exited,
                              "in_root": anc in root.members or anc in root.unreaped})
                if len(found) > _MAX_ANCESTORS:
                    break
        return {"root": name, "pid": pid, "ancestors": found[:_MAX_ANCESTORS],
                "truncated": len(found) > _MAX_ANCESTORS}

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
        # the live tree page (ui/), with this table for clients without scripts
        return ui.index_page(html.escape(__version__), table)


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
