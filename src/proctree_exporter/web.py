"""HTTP: the WSGI app (/, /metrics, /api/v1/..., /-/healthy, /-/ready).

The server that runs it is in httpserver.py. Basic auth comes from an
exporter-toolkit style web config and applies to everything but the health
checks (TLS is the server's part).

The JSON API reads the roots' mirrors (:mod:`.mirror`), which follow the
roots' change logs: a request never takes the tree lock or reads /proc, so
however many clients ask, the collector is not held up. Each member's JSON is
encoded once per change and kept in its mirror; a root's document is the join
of those pieces (a single ``json.dumps`` of thousands of members would hold
the GIL, and with it the collector, for tens of milliseconds).
"""

from __future__ import annotations

import gzip
import html
import json
import logging
import time
from collections.abc import Callable, Iterable
from json.encoder import encode_basestring_ascii as _jstr
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs

from prometheus_client import CollectorRegistry, make_wsgi_app
from prometheus_client.exposition import gzip_accepted

from . import __version__, ui
from .classification import HEALTHY, ORPHANED, ZOMBIE
from .control import ControlError, Controller, ControlStats
from .events import EventKind, RootEvent
from .export.exposition import GZIP_LEVEL
from .export.exposition import make_wsgi_app as exposition_app
from .httpserver import SERVER_SOFTWARE, Peer
from .identity import Identity
from .mirror import MemberInfo, Mirrors, RootMirror
from .stream import STREAM_KINDS, StreamHub, StreamsFull, parse_cursor, response_head
from .users import USER_NAMES
from .web_config import AuthBusy, WebConfig

if TYPE_CHECKING:
    from .config import ApiWriteConfig
    from .resources import Ledger

log = logging.getLogger(__name__)

StartResponse = Callable[..., Any]
_PAGES = ("/", "/metrics", "/api/v1/roots", "/api/v1/tree", "/-/healthy", "/-/ready")
_PAGES += ("/api/v1/ancestors",)  # the tree page's chain of ancestors
_PAGES += ("/api/v1/events", "/api/v1/openapi.json")
_MAX_ANCESTORS = 256
# JSON documents, the page and its script go gzipped to a client that accepts it, from
# this size: a 5,000-member root's document is 1.9 MiB, about 9 times that unzipped,
# and level 1 takes about 2.5 ms for it (the /metrics body's level, measured there)
GZIP_MIN_BYTES = 1024
_COMPRESSIBLE = ("application/json", "text/html", "text/css", "text/javascript",
                 "application/javascript", "image/svg+xml")
# A root's document (members, tree) is rebuilt at most this often while the root
# changes; requests in between share the last one. Thousands of members take tens
# of milliseconds to assemble, and clients that poll in a loop must not take the
# CPU the collector needs (measured in bench/collector_blocking.py).
REBUILD_INTERVAL_S = 0.5
_STREAM_KINDS = frozenset(STREAM_KINDS)


class App:
    """The exporter's WSGI application."""

    def __init__(self, registry: CollectorRegistry, web_config: WebConfig,
                 mirrors: Callable[[], Mirrors | None], ready: Callable[[], bool],
                 streams: Callable[[], StreamHub | None] = lambda: None,
                 resources: Callable[[], Ledger | None] = lambda: None, *,
                 control: Callable[[], Controller | None] = lambda: None,
                 write: ApiWriteConfig | None = None,
                 control_stats: ControlStats | None = None) -> None:
        # /metrics: the usual formats written with each root's lines kept from scrape to
        # scrape (export/exposition.py); prometheus_client's own app answers the rest
        self.metrics_app = exposition_app(registry, make_wsgi_app(registry))
        self._control = control
        self._write_cfg = write
        self._socket_uids = frozenset(write.uids) if write is not None else frozenset()
        self._control_stats = control_stats if control_stats is not None else ControlStats()
        self._resources = resources
        self.web_config = web_config
        self._mirrors = mirrors
        self._ready = ready
        self._streams = streams
        self._headers = web_config.response_headers()
        # (root, path) -> (mirror, its position, built at (monotonic), body)
        self._bodies: dict[tuple[str, str],
                           tuple[RootMirror, tuple[int, int, int], float, bytes]] = {}

    def __call__(self, environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        path = environ.get("PATH_INFO", "") or "/"
        method = environ.get("REQUEST_METHOD", "GET")
        extra = self._headers

        def respond(status: str, body: bytes, ctype: str = "text/plain; charset=utf-8",
                    headers: list[tuple[str, str]] | None = None) -> list[bytes]:
            more = headers or []
            if len(body) >= GZIP_MIN_BYTES and ctype.startswith(_COMPRESSIBLE):
                more = [("Vary", "Accept-Encoding"), *more]
                if gzip_accepted(environ.get("HTTP_ACCEPT_ENCODING", "")):
                    body = gzip.compress(body, compresslevel=GZIP_LEVEL)
                    more = [("Content-Encoding", "gzip"), *more]
            hdrs = [("Content-Type", ctype), ("Content-Length", str(len(body))), *extra, *more]
            start_response(status, hdrs)
            return [b""] if method == "HEAD" else [body]

        known = path in _PAGES or path.startswith(("/api/v1/roots/", "/ui/"))
        if not known:
            return respond("404 Not Found", b"404 page not found\n")
        write = _write_route(path)
        allow = write[0] if write is not None else "GET, HEAD"
        if method not in ("GET", "HEAD") and method not in allow.split(", "):
            return respond("405 Method Not Allowed", b"method not allowed\n",
                           headers=[("Allow", allow)])
        if path == "/-/healthy":
            return respond("200 OK", b"OK\n")
        if path == "/-/ready":
            if self._ready():
                return respond("200 OK", b"OK\n")
            return respond("503 Service Unavailable", b"not ready: seeding from /proc\n")
        peer = environ.get("proctree.peer")
        user = None
        if peer is not None:  # the Unix socket: the kernel says who is asking
            if peer.uid != 0 and peer.uid not in self._socket_uids:
                return respond("403 Forbidden", _json({
                    "error": f"uid {peer.uid} may not use this socket (api.write.uids)"}),
                    "application/json")
        else:
            header = environ.get("HTTP_AUTHORIZATION")
            try:
                allowed = self.web_config.check_basic_auth(header)
            except AuthBusy:  # a flood of unknown logins: refuse at once rather than queue
                return respond("429 Too Many Requests", b"429 Too Many Requests\n",
                               headers=[("Retry-After", "1")])
            if not allowed:
                return respond("401 Unauthorized", b"401 Unauthorized\n",
                               headers=[("WWW-Authenticate",
                                         'Basic realm="proctree-exporter", charset="UTF-8"')])
            user = self.web_config.user_of(header)
        if write is not None and method not in ("GET", "HEAD"):
            return self._write(environ, method, write[1], peer, user, respond)
        if path == "/metrics":
            return self._metrics(environ, start_response, extra)
        if path.startswith("/ui/"):  # the tree page's script, style and icon
            found = ui.asset(path.removeprefix("/ui/"))
            if found is None:
                return respond("404 Not Found", b"404 page not found\n")
            return respond("200 OK", found[0], found[1], headers=[("Cache-Control", "no-cache")])
        if path == "/":
            return respond("200 OK", self._landing().encode(), "text/html; charset=utf-8")
        if path == "/api/v1/openapi.json":
            from . import openapi  # built when first asked for

            return respond("200 OK", openapi.body(), "application/json")
        mirrors = self._mirrors()
        hub = self._streams()
        if mirrors is None or (path == "/api/v1/events" and hub is None):
            return respond("503 Service Unavailable", b"not ready: seeding from /proc\n")
        try:
            if path == "/api/v1/events":
                assert hub is not None
                return self._events(environ, hub, extra, respond)
            body = self._api(path, environ.get("QUERY_STRING", ""), mirrors)
        except KeyError as exc:
            return respond("404 Not Found", _json({"error": f"no root {exc.args[0]!r}"}),
                           "application/json")
        except LookupError as exc:  # a pid that is not (or no longer) a member
            return respond("404 Not Found", _json({"error": str(exc)}), "application/json")
        except ValueError as exc:
            return respond("400 Bad Request", _json({"error": str(exc)}), "application/json")
        except StreamsFull as exc:
            return respond("503 Service Unavailable", _json({"error": str(exc)}),
                           "application/json", headers=[("Retry-After", "5")])
        return respond("200 OK", body, "application/json")

    # -- write API -----------------------------------------------------------------------

    def _write(self, environ: dict[str, Any], method: str, target: tuple[str, int | None],
               peer: Peer | None, user: str | None,
               respond: Callable[..., list[bytes]]) -> list[bytes]:
        """PUT/DELETE /api/v1/roots/{name}, POST .../kill, POST .../processes/{pid}/kill:
        authorise, do, log and count (see README, "Write API")."""
        name, pid = target
        op = {"PUT": "ensure", "DELETE": "remove"}.get(
            method, "kill_tree" if pid is None else "kill_process")
        who = str(peer) if peer is not None else f"user:{user}"
        params = parse_qs(environ.get("QUERY_STRING", ""))
        status, doc = self._do_write(environ, op, name, pid, params, peer, user, who)
        code = status.split(" ", 1)[0]
        stats = self._control_stats
        stats.writes[(op, code)] = stats.writes.get((op, code), 0) + 1
        fields: dict[str, Any] = {"who": who, "operation": op, "root": name, "code": int(code)}
        if pid is not None:
            fields["pid"] = pid
        if "error" in doc:
            fields["error"] = doc["error"]
        elif "complete" in doc:
            fields.update(signalled=len(doc["processes"]), remaining=doc["remaining"])
        elif "kill" in doc and doc["kill"] is not None:
            fields.update(signalled=len(doc["kill"]["processes"]),
                          remaining=doc["kill"]["remaining"])
        log.log(logging.INFO if code < "400" else logging.WARNING, "api write",
                extra={"fields": fields})
        return respond(status, _json(doc), "application/json")

    def _do_write(self, environ: dict[str, Any], op: str, name: str, pid: int | None,
                  params: dict[str, list[str]], peer: Peer | None, user: str | None,
                  who: str) -> tuple[str, dict[str, Any]]:
        controller = self._control()
        if self._write_cfg is None or not self._write_cfg.enabled:
            return "403 Forbidden", {"error": "the write API is off (api.write.enabled)"}
        if peer is None and (user is None or user not in self._write_cfg.users):
            who_text = f"user {user!r}" if user is not None else "a client without a login"
            return "403 Forbidden", {"error": f"{who_text} may not write: only users in "
                                     "api.write.users, or clients of api.write.socket"}
        if controller is None:
            return "503 Service Unavailable", {"error": "not ready: seeding from /proc"}
        # a non-root client of the socket signals only its own processes, as kill(2) would
        owner = peer.uid if peer is not None and peer.uid != 0 else None
        try:
            grace = _float_param(params, "grace_seconds")
            if op == "ensure":
                body = _read_json(environ)
                created = controller.ensure(name, body, who)
                mirrors = self._mirrors()
                assert mirrors is not None
                doc = json.loads(self._document(mirrors.get(name), "root",
                                                lambda m: _root_body(m, self._latest())))
                return ("201 Created" if created else "200 OK"), doc
            if op == "remove":
                kill = (params.get("kill") or ["false"])[0].lower() in ("true", "1", "yes")
                report = controller.remove(name, kill=kill, grace_s=grace, owner=owner)
                return "200 OK", {"root": name, "removed": True,
                                  "kill": report.doc() if report is not None else None}
            start = None
            if pid is not None:
                start_text = (params.get("start_ticks") or [""])[0]
                if not start_text.isdigit():
                    raise ControlError(400, "start_ticks is required: the member's start "
                                       "time, as the API lists it (identity, not just a pid)",
                                       key="start_ticks")
                start = int(start_text)
            report = controller.kill(name, pid=pid, start_ticks=start, grace_s=grace,
                                     owner=owner)
            return "200 OK", report.doc()
        except ControlError as exc:
            return _STATUS[exc.status], exc.doc()

    def _events(self, environ: dict[str, Any], hub: StreamHub,
                extra: list[tuple[str, str]], respond: Callable[..., list[bytes]]
                ) -> list[bytes]:
        """``/api/v1/events``: validate, then hand the connection to the stream hub."""
        params = parse_qs(environ.get("QUERY_STRING", ""))
        names = params.get("root") or None
        if names is not None:
            names = list(dict.fromkeys(names))
            for name in names:
                hub.source.log(name)  # KeyError: 404
        kinds = None
        if "kinds" in params:
            wanted = {k.strip() for v in params["kinds"] for k in v.split(",") if k.strip()}
            bad = sorted(wanted - _STREAM_KINDS)
            if bad:
                raise ValueError(f"unknown event kinds {', '.join(bad)}: expected some of "
                                 f"{', '.join(sorted(_STREAM_KINDS))}")
            kinds = frozenset(wanted)
        cursor_text = environ.get("HTTP_LAST_EVENT_ID") or (params.get("since") or [""])[0]
        cursors = parse_cursor(cursor_text, names)
        if names is not None:
            cursors = {n: c for n, c in cursors.items() if n in names}
        if environ.get("REQUEST_METHOD") == "HEAD":
            return respond("200 OK", b"", "text/event-stream; charset=utf-8")
        hijack = environ.get("proctree.hijack")
        if hijack is None:  # another WSGI server: streams need this one
            return respond("501 Not Implemented", _json({"error": "no event streams here"}),
                           "application/json")
        hub.reserve()  # StreamsFull: 503
        try:
            sock = hijack()
        except BaseException:
            hub.release()
            raise
        try:
            hub.open(sock, names, cursors, kinds,
                     response_head([("Server", SERVER_SOFTWARE), *extra]))
        except BaseException:
            hub.release()
            sock.close()
            raise
        return respond("200 OK", b"")  # wsgiref's copy of the response goes nowhere

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

    def _api(self, path: str, query: str, mirrors: Mirrors) -> bytes:
        if path == "/api/v1/roots":
            docs = []
            for name in mirrors.names():
                try:
                    mirror = mirrors.get(name)
                except KeyError:  # removed by a reload meanwhile
                    continue
                docs.append(mirror.read(_root_doc))
            return _json({"roots": docs})
        if path.startswith("/api/v1/roots/"):
            return self._document(mirrors.get(path.removeprefix("/api/v1/roots/")), "root",
                                  lambda m: _root_body(m, self._latest()))
        if path == "/api/v1/ancestors":
            return self._ancestors(query, mirrors)
        # /api/v1/tree?root=NAME
        params = parse_qs(query)
        names = params.get("root")
        if not names:
            raise ValueError("query parameter root is required: /api/v1/tree?root=NAME")
        return self._document(mirrors.get(names[0]), "tree",
                              lambda m: _tree_body(m, self._latest()))

    def _latest(self) -> dict[Identity, tuple[float, int]]:
        ledger = self._resources()
        return ledger.latest if ledger is not None else {}

    def _document(self, mirror: RootMirror, what: str,
                  build: Callable[[RootMirror], bytes]) -> bytes:
        """``build(mirror)``, or the body built last for this root if the root has not
        changed since, or changed less than ``REBUILD_INTERVAL_S`` ago."""
        key = (mirror.name, what)

        def cached(m: RootMirror) -> bytes:
            now = time.monotonic()
            ledger = self._resources()
            # a new sample round changes the members' CPU and RSS, not the root's log
            at = (m.seq, m.relists, ledger.rounds if ledger is not None else 0)
            hit = self._bodies.get(key)
            if hit is not None and hit[0] is m and (hit[1] == at
                                                    or now - hit[2] < REBUILD_INTERVAL_S):
                return hit[3]
            body = build(m)
            bodies = self._bodies
            bodies[key] = (m, at, now, body)
            watched = set(m.source.root_names())
            if len(bodies) > 2 * len(watched) + 16:
                # drop the bodies of roots no longer watched (runtime roots come and go)
                for k in [k for k, v in bodies.items() if v[0].removed or v[0].ended
                          or k[0] not in watched]:
                    bodies.pop(k, None)
            return body

        return mirror.read(cached)

    def _ancestors(self, query: str, mirrors: Mirrors) -> bytes:
        """``/api/v1/ancestors?root=NAME&pid=PID[&start_ticks=T]``: a live (or unreaped)
        member's lineage ancestors, nearest first, up to PID 1; at most
        ``_MAX_ANCESTORS``. Inside the root they come from its members; above its
        instance, from what the instance's join recorded. The tree page shows them
        above the root's own processes."""
        params = parse_qs(query)
        name = (params.get("root") or [""])[0]
        pid_text = (params.get("pid") or [""])[0]
        start_text = (params.get("start_ticks") or [""])[0]
        if not name or not pid_text.isdigit() or not (start_text or "0").isdigit():
            raise ValueError("query parameters root and pid are required: "
                             "/api/v1/ancestors?root=NAME&pid=PID[&start_ticks=T]")
        pid = int(pid_text)
        mirror = mirrors.get(name)

        def walk(m: RootMirror) -> dict[str, Any]:
            member = next((x for x in (*m.members.values(), *m.zombies())
                           if x.pid == pid and (not start_text or Identity(
                               x.pid, x.start_ticks).matches(pid, int(start_text)))), None)
            if member is None:
                raise LookupError(f"pid {pid} is not a live member of root {name!r}")
            inside = m.lineage_up(member.identity)
            found = [{"pid": a.pid, "start_ticks": a.start_ticks, "comm": a.comm,
                      "user": a.user, "exited": a.exited_at is not None, "in_root": True}
                     for a in inside]
            top = inside[-1] if inside else member
            for a in m.ancestors.get(top.identity, ()):
                found.append({"pid": a.pid, "start_ticks": a.start_ticks, "comm": a.comm,
                              "user": USER_NAMES(a.uid), "exited": a.exited, "in_root": False})
            return {"root": name, "pid": pid, "ancestors": found[:_MAX_ANCESTORS],
                    "truncated": len(found) > _MAX_ANCESTORS}

        return _json(mirror.read(walk))

    # -- landing page ----------------------------------------------------------------

    def _landing(self) -> str:
        mirrors = self._mirrors()
        rows = []
        if mirrors is not None:
            for name in mirrors.names():
                try:
                    doc = mirrors.get(name).read(_root_doc)
                except KeyError:
                    continue
                e = html.escape(name)
                rows.append(
                    f"<tr><td><a href='/api/v1/roots/{e}'>{e}</a></td>"
                    f"<td>{'up' if doc['up'] else 'DOWN'}</td><td>{doc['member_count']}</td>"
                    + "".join(f"<td>{doc['classes'].get(c, 0)}</td>" for c in
                              (HEALTHY, ORPHANED, ZOMBIE))
                    + f"<td><a href='/api/v1/tree?root={e}'>tree</a></td></tr>")
        table = ("<table><tr><th>root</th><th>state</th><th>members</th><th>healthy</th>"
                 "<th>orphaned</th><th>zombie</th><th></th></tr>" + "".join(rows) + "</table>"
                 if rows else "<p>Seeding from /proc…</p>")
        # the live tree page (ui/), with this table for clients without scripts
        return ui.index_page(html.escape(__version__), table)


def _json(doc: Any) -> bytes:
    return (json.dumps(doc, separators=(",", ":")) + "\n").encode()


def member_doc(m: MemberInfo) -> dict[str, Any]:
    """A member as the JSON API shows it."""
    doc = m._asdict()
    doc["class"] = doc.pop("cls")
    if m.cmdline is None:
        del doc["cmdline"]  # only roots with capture_cmdline show command lines
    return doc


_MEMBER_JSON = ('{"pid":%d,"start_ticks":%d,"comm":%s,"exe":%s,%s"user":%s,"ppid":%d,'
                '"lineage_ppid":%s,"lineage_known":%s,"lineage_source":%s,"depth":%d,'
                '"reason":%s,"started_at":%s,"exited_at":%s,"exit_code":%s,"exit_signal":%s,'
                '"lineage_start":%s,"class":%s}')
_BOOL = ("false", "true")
_float_repr = float.__repr__


def member_json(m: MemberInfo) -> bytes:
    """``json.dumps(member_doc(m))``, byte for byte, in a quarter of its time (about
    2 us): the fields' types are known (anything else takes json.dumps)."""
    (pid, start, comm, exe, cmdline, user, ppid, lineage_ppid, known, source, depth, cls,
     reason, started_at, exited_at, code, sig, lineage_start) = m
    try:
        if started_at - started_at == 0.0 and (exited_at is None or exited_at - exited_at
                                               == 0.0):  # finite (JSON has no inf, nan)
            return (_MEMBER_JSON % (
                pid, start, "null" if comm is None else _jstr(comm),
                "null" if exe is None else _jstr(exe),
                "" if cmdline is None else '"cmdline":' + _jstr(cmdline) + ",", _jstr(user),
                ppid, "null" if lineage_ppid is None else int(lineage_ppid), _BOOL[known],
                _jstr(source), depth, _jstr(reason), _float_repr(started_at),
                "null" if exited_at is None else _float_repr(exited_at),
                "null" if code is None else int(code), "null" if sig is None else int(sig),
                "null" if lineage_start is None else int(lineage_start), _jstr(cls))).encode()
    except (TypeError, IndexError):
        pass
    return json.dumps(member_doc(m), separators=(",", ":")).encode()


def _encoded(mirror: RootMirror, m: MemberInfo) -> bytes:
    """``m``'s JSON, encoded once per change of the member: kept in the mirror, keyed
    by the MemberInfo itself (the mirror drops it when it replaces the member)."""
    data = mirror.cache.get(m)
    if data is None:
        data = mirror.cache[m] = member_json(m)
    return data


def _root_doc(m: RootMirror) -> dict[str, Any]:
    spec = m.spec
    assert spec is not None
    count = len(m.members)
    conf = m.confidence()
    return {
        "name": m.name, "seq": m.seq, "select": spec.select, "match": spec.match,
        "include_root": spec.include_root, "up": m.up,
        "instances": [{"pid": i.pid, "start_ticks": i.start_ticks, "comm": i.comm,
                       "started_at": i.started_at} for i in m.instances.values()],
        "member_count": count, "classes": m.class_counts(),
        "spawned_total": m.spawned_total, "exited_total": m.exited_total,
        "restarts_total": m.restarts_total, "truncated": count > spec.max_members,
        "warnings": list(m.source.warnings(m.name)) if not m.up else [],
        "runtime": spec.runtime, "confidence": conf.level,
        "confidence_reason": conf.reason, "inferred_members": conf.inferred,
    }


def event_doc(ev: RootEvent) -> dict[str, Any]:
    """An event as the JSON API shows it: its fields (see :mod:`.events`), ``user``
    beside ``uid``, and for class changes, restarts and actions the ``old`` and
    ``new`` of the first API."""
    doc = ev.to_dict()
    if ev.uid is not None:
        doc["user"] = USER_NAMES(ev.uid)
    if ev.kind is EventKind.CLASS:
        doc["old"], doc["new"] = ev.old_class, ev.new_class
    elif ev.kind is EventKind.ACTION:
        doc["new"] = ev.outcome
    elif ev.kind is EventKind.RESTART:
        doc["old"], doc["new"] = "exited", "restarted"
    return doc


def event_json(ev: RootEvent) -> bytes:
    """An event as one line of JSON (the event stream's ``data``)."""
    return json.dumps(event_doc(ev), separators=(",", ":")).encode()


def _with_usage(data: bytes, m: MemberInfo, latest: dict[Identity, tuple[float, int]],
                close: bool = True) -> bytes:
    """A member's encoded JSON with its CPU seconds and RSS from the last sample round
    (null for exited members, and before a live one's first sample)."""
    usage = latest.get(m.identity) if m.exited_at is None else None
    tail = (b',"cpu_seconds":%.6f,"rss_bytes":%d' % usage if usage is not None
            else b',"cpu_seconds":null,"rss_bytes":null')
    return data[:-1] + tail + (b"}" if close else b"")


def _root_body(m: RootMirror, latest: dict[Identity, tuple[float, int]]) -> bytes:
    """``/api/v1/roots/{name}``: the root, its members (capped by ``max_members``),
    recent membership changes, tombstones and events."""
    doc = _root_doc(m)
    head = json.dumps(doc, separators=(",", ":"))[:-1].encode()
    members = b",".join(_with_usage(_encoded(m, x), x, latest) for x in m.listing())
    tombs = b",".join(_with_usage(_encoded(m, x), x, latest) for x in m.tombstones())
    recent = json.dumps([{"event": kind, **member_doc(x)} for kind, x in m.recent],
                        separators=(",", ":")).encode()
    events = json.dumps([event_doc(e) for e in m.events], separators=(",", ":")).encode()
    return b"".join((head, b',"members":[', members, b'],"recent":', recent,
                     b',"tombstones":[', tombs, b'],"events":', events, b"}\n"))


def _tree_body(m: RootMirror, latest: dict[Identity, tuple[float, int]]) -> bytes:
    """``/api/v1/tree?root=NAME``: members and tombstones nested by lineage, so an
    exited wrapper still holds its orphans. Where a pid appears twice (a tombstone
    and the process that reused its pid), the first listed (live) wins."""
    spec = m.spec
    assert spec is not None
    listed = [*m.listing(), *m.tombstones()]
    by_pid: dict[int, MemberInfo] = {}
    for x in listed:
        by_pid.setdefault(x.pid, x)
    kids: dict[int, list[MemberInfo]] = {}
    tops: list[MemberInfo] = []
    for x in by_pid.values():
        parent = x.lineage_ppid
        if parent is not None and parent != x.pid and parent in by_pid:
            kids.setdefault(parent, []).append(x)
        else:
            tops.append(x)
    # each node is its encoded member with its children spliced in before the brace,
    # built bottom-up without recursion (lineage can be deeper than Python's stack)
    parts: list[bytes] = []
    stack: list[tuple[MemberInfo, bool]] = [(x, False) for x in reversed(tops)]
    first = [True]  # per open list: whether the next item is its first
    seen: set[int] = set()
    while stack:
        x, closing = stack.pop()
        if closing:
            parts.append(b"]}")
            first.pop()
            continue
        if x.pid in seen:
            continue
        seen.add(x.pid)
        if not first[-1]:
            parts.append(b",")
        first[-1] = False
        parts.append(_with_usage(_encoded(m, x), x, latest, close=False))
        parts.append(b',"children":[')
        first.append(True)
        stack.append((x, True))
        stack.extend((c, False) for c in reversed(kids.get(x.pid, ())))
    head = json.dumps({"root": m.name, "seq": m.seq, "up": m.up,
                       "truncated": len(m.members) > spec.max_members},
                      separators=(",", ":"))[:-1].encode()
    return b"".join((head, b',"nodes":[', *parts, b"]}\n"))


_STATUS = {400: "400 Bad Request", 403: "403 Forbidden", 404: "404 Not Found",
           409: "409 Conflict", 413: "413 Content Too Large", 503: "503 Service Unavailable"}
MAX_BODY_BYTES = 64 * 1024


def _write_route(path: str) -> tuple[str, tuple[str, int | None]] | None:
    """For a path the write API serves: (the methods it allows, (root, pid or None))."""
    if not path.startswith("/api/v1/roots/"):
        return None
    parts = path.removeprefix("/api/v1/roots/").split("/")
    if len(parts) == 1 and parts[0]:
        return "GET, HEAD, PUT, DELETE", (parts[0], None)
    if len(parts) == 2 and parts[1] == "kill" and parts[0]:
        return "POST", (parts[0], None)
    if len(parts) == 4 and parts[1] == "processes" and parts[3] == "kill" \
            and parts[2].isdigit() and parts[0]:
        return "POST", (parts[0], int(parts[2]))
    return None


def _float_param(params: dict[str, list[str]], key: str) -> float | None:
    text = (params.get(key) or [""])[0]
    if not text:
        return None
    try:
        return float(text)
    except ValueError:
        raise ControlError(400, f"{key}: not a number: {text!r}", key=key) from None


def _read_json(environ: dict[str, Any]) -> Any:
    try:
        length = int(environ.get("CONTENT_LENGTH") or 0)
    except ValueError:
        raise ControlError(400, "a bad Content-Length") from None
    if length > MAX_BODY_BYTES:
        raise ControlError(413, f"the body is larger than {MAX_BODY_BYTES} bytes")
    data = environ["wsgi.input"].read(length) if length > 0 else b""
    if not data.strip():
        raise ControlError(400, "the body must be a JSON object with a root's keys "
                           "(select, match, ...)")
    try:
        return json.loads(data)
    except (ValueError, UnicodeDecodeError) as exc:
        raise ControlError(400, f"the body is not JSON: {exc}") from None
