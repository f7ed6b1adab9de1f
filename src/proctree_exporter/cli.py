"""Command line: ``run`` (default), ``check-config``, ``tree``, ``watch`` (here, or of a
remote exporter with ``--url``), ``capabilities``, ``roots`` (a running exporter's write
API)."""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
import textwrap
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import yaml

from . import __version__
from .capabilities import negotiate
from .classification import EXACT, EXITED, INFERRED_LINEAGE, ORPHANED, ZOMBIE, Confidence
from .collector import Collector
from .config import Config, ConfigError, load_config
from .control_client import DEFAULT_SOCKET, ApiError, ControlClient, Unreachable
from .daemon import build, check_write_users, make_tree
from .events import EventKind, RootEvent
from .httpserver import parse_listen_address
from .mirror import MemberInfo, member_from
from .monitor import Monitor, MonitorError
from .remote import RemoteWatch, Seed, Target
from .resources import accounting_capability, probe
from .rootspec import SELECT_KINDS
from .tree import PidTree, ProcessView, TreeNode, forest
from .web_config import WebConfigError, load_web_config

log = logging.getLogger("proctree_exporter")

EXIT_CONFIG = 2


# Log lines are a short message plus fields: log.info("ready", extra={"fields": {...}}).
# Both formats show the same fields: logfmt pairs after msg, or keys of the JSON object.


def _fields(record: logging.LogRecord) -> dict[str, Any]:
    fields = getattr(record, "fields", None)
    return fields if isinstance(fields, dict) else {}


def _logfmt_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    text = "" if value is None else str(value)
    if not text or any(c in text for c in ' ="\\\n\t'):
        return json.dumps(text)
    return text


class _LogfmtFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        ts = self.formatTime(record, "%Y-%m-%dT%H:%M:%S") + f".{int(record.msecs):03d}Z"
        parts = [f"ts={ts}", f"level={record.levelname}", f"logger={record.name}",
                 f"msg={_logfmt_value(record.getMessage())}"]
        parts.extend(f"{k}={_logfmt_value(v)}" for k, v in _fields(record).items())
        line = " ".join(parts)
        if record.exc_info:
            line += "\n" + self.formatException(record.exc_info)
        return line


class _JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        doc = {
            "ts": self.formatTime(record, "%Y-%m-%dT%H:%M:%S") + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
            **_fields(record),
        }
        if record.exc_info:
            doc["exc"] = self.formatException(record.exc_info)
        return json.dumps(doc, default=str)


def setup_logging(level: str, fmt: str) -> None:
    """Structured logs on stderr: logfmt text, or one JSON object per line."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_JsonFormatter() if fmt == "json" else _LogfmtFormatter())
    logging.Formatter.converter = time.gmtime
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())


def _load(path: str | None) -> tuple[Config, Path | None]:
    """Load the config or exit with status 2 and the reason."""
    try:
        return load_config(path)
    except ConfigError as exc:
        print(f"proctree-exporter: bad config: {exc}", file=sys.stderr)
        sys.exit(EXIT_CONFIG)


def cmd_check_config(args: argparse.Namespace) -> int:
    """Validate the config (and the web config it names) and say so."""
    cfg, path = _load(args.config)
    web = args.web_config_file or cfg.web.config_file
    if web and path is not None and not os.path.isabs(web) and not args.web_config_file:
        web = str(path.parent / web)  # as the daemon reads it
    try:
        check_write_users(cfg, load_web_config(web))
    except WebConfigError as exc:
        print(f"proctree-exporter: bad web config: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    except ConfigError as exc:
        print(f"proctree-exporter: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    print(f"{path or '(built-in defaults)'}: ok")
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    """Run the exporter until SIGTERM or SIGINT."""
    cfg, path = _load(args.config)
    if args.listen_address:
        try:  # a bad flag is a usage error, said before anything starts
            parse_listen_address(args.listen_address)
        except ValueError as exc:
            print(f"proctree-exporter: --web.listen-address: {exc}", file=sys.stderr)
            return EXIT_CONFIG
    if args.state_path:  # a path given on the command line is relative to the cwd
        cfg = cfg.model_copy(update={"state": cfg.state.model_copy(
            update={"path": os.path.abspath(args.state_path)})})
    setup_logging(args.log_level or cfg.log.level, args.log_format or cfg.log.format)
    log.info("starting", extra={"fields": {"version": __version__,
                                            "config": str(path or "(built-in defaults)")}})
    try:
        daemon = build(cfg, path, args.listen_address, args.web_config_file)
    except WebConfigError as exc:
        print(f"proctree-exporter: bad web config: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    except ValueError as exc:  # listen address
        print(f"proctree-exporter: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    except OSError as exc:
        log.error("cannot listen", extra={"fields": {
            "address": args.listen_address or cfg.web.listen_address,
            "error": exc.strerror or str(exc)}})
        return 1
    return daemon.run()


# --- tree ---------------------------------------------------------------------


def build_forest(views: Sequence[ProcessView], root_pid: int | None = None) -> list[dict[str, Any]]:
    """Nest process views by lineage into JSON-ready dicts (see :func:`.tree.forest`)."""
    out: list[dict[str, Any]] = []
    # iterative: lineage chains can be deeper than Python's recursion limit
    stack: list[tuple[TreeNode, list[dict[str, Any]]]] = [
        (t, out) for t in reversed(forest(views, root_pid))]
    while stack:
        node, siblings = stack.pop()
        v = node.process
        children: list[dict[str, Any]] = []
        siblings.append({
            "pid": v.pid, "start_ticks": v.start_ticks, "ppid": v.ppid,
            "lineage_ppid": v.lineage_ppid, "lineage_source": v.lineage_source,
            "lineage_known": v.lineage_known, "comm": v.comm, "state": v.state,
            "exited": v.exited, "exit_code": v.exit_code, "exit_signal": v.exit_signal,
            "zombie": v.zombie, "orphaned": v.orphaned, "children": children,
        })
        stack.extend((c, children) for c in reversed(node.children))
    return out


def _marks(d: dict[str, Any]) -> str:
    marks = []
    if d["zombie"]:
        marks.append("ZOMBIE")
    elif d["exited"]:
        if d["exit_signal"] is not None:
            marks.append(f"exited signal={d['exit_signal']}")
        elif d["exit_code"] is not None:
            marks.append(f"exited code={d['exit_code']}")
        else:
            marks.append("exited")
    if d["orphaned"]:
        marks.append(f"ORPHAN ppid={d['ppid']}")
    return f"  [{', '.join(marks)}]" if marks else ""


def print_forest(forest: list[dict[str, Any]], out: Any = sys.stdout) -> None:
    """Print the nested forest as an indented tree."""
    stack = [(d, "", True, True) for d in reversed(forest)]
    while stack:
        d, prefix, last, top = stack.pop()
        branch = "" if top else ("└─ " if last else "├─ ")
        out.write(f"{prefix}{branch}{d['pid']} {d['comm']}{_marks(d)}\n")
        child_prefix = prefix if top else prefix + ("   " if last else "│  ")
        children = d["children"]
        for i, c in reversed(list(enumerate(children))):
            stack.append((c, child_prefix, i == len(children) - 1, False))


def cmd_tree(args: argparse.Namespace) -> int:
    """Snapshot (and optionally watch) the host, then print the tree by lineage."""
    cfg, _ = _load(args.config)
    setup_logging("warning", "text")
    tree, collector = _start(cfg)
    if args.for_seconds > 0:
        print(f"watching events for {args.for_seconds:g}s", file=sys.stderr, flush=True)
        time.sleep(args.for_seconds)
    collector.stop()
    forest = build_forest(tree.snapshot(), args.root)
    if args.root is not None and not forest:
        print(f"proctree-exporter: no live process {args.root}", file=sys.stderr)
        return 1
    if args.json:
        json.dump({"source": collector.stats.source, "nodes": forest}, sys.stdout)
        sys.stdout.write("\n")
    else:
        print_forest(forest)
    return 0


def _start(cfg: Config) -> tuple[PidTree, Collector]:
    """A seeded tree fed by a running collector, or exit 1 saying why not."""
    tree = make_tree(cfg)
    collector = Collector(tree, cfg.collector.settings())
    collector.start()
    collector.ready.wait()
    if collector.failed:
        print(f"proctree-exporter: {collector.failed}", file=sys.stderr)
        sys.exit(1)
    return tree, collector


def cmd_capabilities(args: argparse.Namespace) -> int:
    """Print what this host lets the exporter know."""
    cfg, _ = _load(args.config)
    setup_logging("error", "text")
    _, collector = _start(cfg)
    collector.stop()
    rc = cfg.resources
    caps = negotiate(collector.stats, read_cgroups=cfg.tree.read_cgroups,
                     poll_interval_s=cfg.collector.poll_interval_seconds,
                     resource_accounting=accounting_capability(
                         rc.enabled, rc.taskstats,
                         probe(rc.taskstats) if rc.enabled else None))
    if args.json:
        json.dump({c.category: {"status": c.status, "backend": c.backend, "reason": c.reason}
                   for c in caps}, sys.stdout)
        sys.stdout.write("\n")
    else:
        for c in caps:
            print(f"{c.category:<20} {c.status:<12} {c.backend:<17} {c.reason}")
    return 0


# --- watch ----------------------------------------------------------------------

_LINE_KINDS = {EventKind.JOINED: "added", EventKind.EXITED: "removed",
               EventKind.EXEC: "exec", EventKind.CLASS: "class", EventKind.RESTART: "restart",
               EventKind.ACTION: "action", EventKind.LOST: "lost"}


def event_line(ev: RootEvent, member: MemberInfo | None, *, as_json: bool,
               show_root: bool = False) -> str | None:
    """One ``watch`` line for ``ev`` (None for kinds watch does not print). ``show_root``
    puts the root's name in text lines, for a remote watch of several roots."""
    kind = _LINE_KINDS.get(ev.kind)
    if kind is None:
        return None
    cls = ev.new_class if ev.kind is EventKind.CLASS else (
        ev.outcome if ev.kind is EventKind.ACTION else member.cls if member else "")
    doc: dict[str, Any] = {"event": kind, "ts": round(ev.ts, 6), "root": ev.root,
                           "pid": ev.pid, "start_ticks": ev.start_ticks, "comm": ev.comm,
                           "class": cls or "", "reason": ev.reason}
    if member is not None and ev.kind in (EventKind.JOINED, EventKind.EXITED):
        doc.update(ppid=member.ppid, lineage_ppid=member.lineage_ppid, depth=member.depth,
                   exit_code=member.exit_code, exit_signal=member.exit_signal)
        if ev.kind is EventKind.JOINED:
            doc["reason"] = ""
    if ev.kind is EventKind.LOST:
        doc["lost"] = ev.count
    if as_json:
        return json.dumps(doc)
    stamp = time.strftime("%H:%M:%S", time.localtime(ev.ts)) + f".{int(ev.ts % 1 * 1000):03d}"
    where = f"{ev.root:<12} " if show_root else ""
    text = f"{stamp} {kind:<8} {where}{doc['pid']:>7} {doc['comm'] or '?':<16} {doc['class']}"
    return f"{text}  {doc['reason']}" if doc["reason"] else text


# members and exited processes as the events describe them, keyed by (root, pid,
# start_ticks): the details an event does not carry itself (parent, depth, exit status)
Known = dict[tuple[str, int, int], MemberInfo]


def _seed_lines(seed: Seed, known: Known, *, as_json: bool, show_root: bool) -> list[str]:
    """Make a remote root's members known; the lines for those that were not."""
    lines = []
    for m in seed.members:
        key = (seed.root, m.pid, m.start_ticks)
        new = key not in known
        known[key] = m
        if new:
            ev = RootEvent(EventKind.JOINED, seed.root, 0, seed.ts, m.pid, m.start_ticks, m.comm)
            line = event_line(ev, m, as_json=as_json, show_root=show_root)
            if line is not None:
                lines.append(line)
    for m in seed.tombstones:
        known[(seed.root, m.pid, m.start_ticks)] = m
    return lines


class _Confidences:
    """Each watched root's confidence, from the members ``watch`` knows: a line when it
    is first known and whenever its level changes (see :meth:`.Roots.confidence`)."""

    def __init__(self) -> None:
        self.inferred: dict[str, dict[str, int]] = {}  # root -> lineage source -> live
        self.shown: dict[str, str] = {}

    def count(self, root: str, m: MemberInfo, delta: int) -> None:
        c = self.inferred.setdefault(root, {})
        if m.depth > 0 and m.lineage_source in INFERRED_LINEAGE:
            c[m.lineage_source] = c.get(m.lineage_source, 0) + delta
            if c[m.lineage_source] <= 0:
                del c[m.lineage_source]

    def lines(self, *, as_json: bool, show_root: bool) -> list[str]:
        out = []
        for root, counts in self.inferred.items():
            conf = Confidence.of_counts(counts)
            # an exact root is the quiet normal case: a line once it is degraded, and
            # when that changes
            if self.shown.get(root, EXACT) == conf.level:
                continue
            self.shown[root] = conf.level
            ts = time.time()
            if as_json:
                # the shape of every other line: about the root, so no process
                out.append(json.dumps({"event": "confidence", "ts": round(ts, 6),
                                       "root": root, "pid": 0, "start_ticks": 0,
                                       "comm": None, "class": "", "reason": conf.reason,
                                       "confidence": conf.level}))
                continue
            stamp = time.strftime("%H:%M:%S", time.localtime(ts)) + f".{int(ts % 1 * 1000):03d}"
            where = f"{root:<12} " if show_root else ""
            text = f"{stamp} {'tracking':<8} {where}confidence {conf.level}"
            out.append(f"{text}  {conf.reason}" if conf.reason else text)
        return out


def _follow(changes: Callable[[float], Iterable[RootEvent | Seed]], stopping: threading.Event,
            deadline: float | None, *, as_json: bool, show_root: bool = False) -> None:
    """The loop of both ``watch`` paths: one line per change until ``stopping`` is set or
    ``deadline`` (monotonic) passes. ``changes(wait)`` yields what happened in order and
    ends after ``wait`` seconds without anything."""
    out = sys.stdout
    known: Known = {}
    confidences = _Confidences()
    while not stopping.is_set():
        wait = 0.1 if deadline is None else max(min(0.1, deadline - time.monotonic()), 0)
        lines: list[str] = []
        for change in changes(wait):
            if isinstance(change, Seed):
                lines.extend(_seed_lines(change, known, as_json=as_json, show_root=show_root))
                for m in change.members:
                    confidences.count(change.root, m, 1)
            else:
                before = known.get((change.root, change.pid, change.start_ticks))
                member = _track(known, change)
                if change.kind is EventKind.JOINED and member is not None and (
                        before is None or before.exited_at is not None):
                    confidences.count(change.root, member, 1)
                elif change.kind is EventKind.EXITED and before is not None \
                        and before.exited_at is None:
                    confidences.count(change.root, before, -1)
                line = event_line(change, member, as_json=as_json, show_root=show_root)
                if line is not None:
                    lines.append(line)
            if len(lines) >= 256 or stopping.is_set():
                break
        lines.extend(confidences.lines(as_json=as_json, show_root=show_root))
        if lines:
            out.write("\n".join(lines) + "\n")
            out.flush()
        if deadline is not None and time.monotonic() >= deadline:
            break


def _track(known: Known, ev: RootEvent) -> MemberInfo | None:
    """Keep ``known`` current from ``ev``; return the member it is about, as of now."""
    key = (ev.root, ev.pid, ev.start_ticks)
    if ev.kind is EventKind.JOINED:
        known[key] = member = member_from(ev)
        return member
    member = known.get(key)
    if member is None:
        return None
    if ev.kind is EventKind.EXITED:
        member = known[key] = member._replace(exited_at=ev.ts, exit_code=ev.exit_code,
                                              exit_signal=ev.exit_signal, cls=EXITED)
    elif ev.kind is EventKind.CLASS and ev.new_class is not None:
        member = known[key] = member._replace(cls=ev.new_class)
    elif ev.kind is EventKind.EXEC:
        member = known[key] = member._replace(comm=ev.comm, exe=ev.exe)
    elif ev.kind is EventKind.LEFT:
        del known[key]
    return member


def _stop_on_signals(stopping: threading.Event) -> None:
    signal.signal(signal.SIGINT, lambda *_: stopping.set())
    signal.signal(signal.SIGTERM, lambda *_: stopping.set())


def _usage(message: str) -> int:
    print(f"proctree-exporter watch: {message}", file=sys.stderr)
    return EXIT_CONFIG


def cmd_watch(args: argparse.Namespace) -> int:
    """Stream one line per change of one tree, in the order things happened, like
    forkstat scoped to it. Built on the Python API (:class:`.monitor.Monitor`); with
    ``--url``, on a remote exporter's event stream (:class:`RemoteWatch`)."""
    if args.url is not None:
        return _watch_remote(args)
    if args.ca_file is not None or args.insecure:
        return _usage("--ca-file and --insecure go with --url")
    roots = args.root or []
    if len(roots) > 1 or (roots and not roots[0].isdigit()):
        return _usage("--root takes one PID (root names are for --url)")
    if not roots and args.comm is None and args.pidfile is None:
        return _usage("give --root PID, --comm NAME or --pidfile PATH (or --url URL)")
    cfg, _ = _load(args.config)
    setup_logging("warning", "text")
    if roots:
        select, match = "pid", roots[0]
    elif args.comm is not None:
        select, match = "comm", args.comm
    else:
        select, match = "pidfile", args.pidfile
    c, t = cfg.collector, cfg.tree
    monitor = Monitor(source=c.source, receive_buffer_bytes=c.receive_buffer_bytes,
                      poll_interval_seconds=c.poll_interval_seconds, max_nodes=t.max_nodes,
                      tombstone_ttl_seconds=t.tombstone_ttl_seconds,
                      cmdline_max_chars=t.cmdline_max_chars, read_cgroups=t.read_cgroups)
    try:
        monitor.start()
    except MonitorError as exc:
        print(f"proctree-exporter: {exc}", file=sys.stderr)
        return 1
    stopping = threading.Event()
    _stop_on_signals(stopping)
    deadline = time.monotonic() + args.for_seconds if args.for_seconds > 0 else None
    try:
        try:
            root = monitor.attach("watch", **{select: match})
        except ValueError as exc:
            print(f"proctree-exporter: {exc}", file=sys.stderr)
            return EXIT_CONFIG
        print(f"watching {select}={match} (source {monitor.source})", file=sys.stderr,
              flush=True)
        first = root.observe(members=False)
        for w in first.warnings:
            if "listing capped" not in w:
                print(f"warning: {w}", file=sys.stderr, flush=True)
        _follow(root.events, stopping, deadline, as_json=args.json)
    finally:
        monitor.close()
    return 0


def _watch_remote(args: argparse.Namespace) -> int:
    """``watch --url``: follow an exporter's ``/api/v1/events`` until interrupted."""
    if args.comm is not None or args.pidfile is not None:
        return _usage("--comm and --pidfile watch this host; with --url, name the "
                      "exporter's roots with --root NAME")
    try:
        target = Target.from_url(args.url, ca_file=args.ca_file, insecure=args.insecure)
    except ValueError as exc:
        return _usage(str(exc))
    setup_logging("warning", "text")
    stopping = threading.Event()
    _stop_on_signals(stopping)
    deadline = time.monotonic() + args.for_seconds if args.for_seconds > 0 else None
    remote = RemoteWatch(target, args.root, stopping)
    remote.start()
    try:
        _follow(remote.changes, stopping, deadline, as_json=args.json,
                show_root=len(args.root or ()) != 1)
    finally:
        remote.close()
    if remote.failed is not None:
        print(f"proctree-exporter: {remote.failed}", file=sys.stderr)
        return 1
    return 0


# --- roots ----------------------------------------------------------------------

EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_NOT_FOUND = 3
EXIT_CONFLICT = 4
EXIT_NOT_PERMITTED = 5
_EXIT_BY_STATUS = {400: EXIT_USAGE, 401: EXIT_NOT_PERMITTED, 403: EXIT_NOT_PERMITTED,
                   404: EXIT_NOT_FOUND, 409: EXIT_CONFLICT, 429: EXIT_NOT_PERMITTED}
ROOTS_EXIT_CODES = """exit codes:
  0  success
  1  failure: cannot connect, no answer, a server error (5xx), a kill not complete
  2  usage, or a request the exporter rejected as invalid (400)
  3  not found: no such root, or no such member (404)
  4  conflict: a root of that name exists and differs, or is from config.yaml (409)
  5  not permitted: no or wrong credentials (401), not allowed to write (403),
     too many attempts (429), or the socket's mode keeps you out"""
# the keys of a root that --select, --match and the name give
_ROOT_OWN_KEYS = ("name", "select", "match")


class _Usage(Exception):
    """A usage error of ``roots``, said before anything is sent."""


def _roots_usage(message: str) -> int:
    print(f"proctree-exporter roots: {message}", file=sys.stderr)
    return EXIT_USAGE


def _control(args: argparse.Namespace) -> ControlClient:
    """The exporter to talk to: ``--socket``, ``--url``, ``PROCTREE_EXPORTER_URL``,
    ``PROCTREE_EXPORTER_SOCKET``, then the default socket, in that order."""
    if args.timeout <= 0:
        raise _Usage("--timeout: give a number of seconds above 0")
    url = None if args.socket is not None else (
        args.url or os.environ.get("PROCTREE_EXPORTER_URL") or None)
    if url is None:
        if args.ca_file is not None or args.insecure:
            raise _Usage("--ca-file and --insecure go with --url")
        path = args.socket or os.environ.get("PROCTREE_EXPORTER_SOCKET") or DEFAULT_SOCKET
        return ControlClient.unix(path, timeout=args.timeout)
    try:
        return ControlClient.http(url, ca_file=args.ca_file, insecure=args.insecure,
                                  timeout=args.timeout)
    except ValueError as exc:
        raise _Usage(str(exc)) from None


def parse_settings(pairs: Sequence[str]) -> dict[str, Any]:
    """``--set KEY=VALUE`` pairs as a root's keys: each VALUE read as YAML (``true``,
    ``5``, ``1.5`` are typed), a dotted KEY (``actions.enabled``) a nested mapping.
    :class:`_Usage` says what is wrong."""
    out: dict[str, Any] = {}
    for pair in pairs:
        key, eq, text = pair.partition("=")
        path = key.strip().split(".")
        if not eq or not all(path):
            raise _Usage(f"--set {pair!r}: expected KEY=VALUE (KEY may be dotted: "
                         f"actions.enabled=true)")
        if path[0] in _ROOT_OWN_KEYS:
            raise _Usage(f"--set {key}: give the name as NAME, and --select and --match")
        try:
            value = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            raise _Usage(f"--set {key}: not a YAML value: "
                         f"{str(exc).splitlines()[0]}") from None
        where = out
        for i, part in enumerate(path[:-1]):
            inner = where.setdefault(part, {})
            if not isinstance(inner, dict):
                raise _Usage(f"--set {key}: {'.'.join(path[:i + 1])} is set to a value")
            where = inner
        if path[-1] in where and (isinstance(where[path[-1]], dict) or len(path) == 1):
            raise _Usage(f"--set {key}: given twice")
        where[path[-1]] = value
    return out


def _print_json(doc: Any) -> None:
    json.dump(doc, sys.stdout, indent=2)
    sys.stdout.write("\n")


def _table(rows: Sequence[Sequence[str]], numeric: frozenset[int]) -> list[str]:
    """Rows as aligned text: columns in ``numeric`` right-aligned, the last one unpadded."""
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = []
    for r in rows:
        cells = [c.rjust(w) if i in numeric else c.ljust(w)
                 for i, (c, w) in enumerate(zip(r, widths, strict=True))]
        lines.append("  ".join(cells).rstrip())
    return lines


def _roots_list(client: ControlClient, args: argparse.Namespace) -> int:
    doc = client.roots().doc
    if args.json:
        _print_json(doc)
        return 0
    rows = [("NAME", "ORIGIN", "STATE", "MEMBERS", "ORPHANED", "ZOMBIE", "CONFIDENCE")]
    for r in doc.get("roots") or ():
        classes = r.get("classes") or {}
        rows.append((str(r.get("name")), "runtime" if r.get("runtime") else "config",
                     "up" if r.get("up") else "down", str(r.get("member_count", 0)),
                     str(classes.get(str(ORPHANED), 0)), str(classes.get(str(ZOMBIE), 0)),
                     str(r.get("confidence") or "-")))
    print("\n".join(_table(rows, frozenset({3, 4, 5}))))
    return 0


def _roots_add(client: ControlClient, args: argparse.Namespace) -> int:
    spec = {"select": args.select, "match": args.match, **parse_settings(args.set or ())}
    reply = client.put_root(args.name, spec)
    if args.json:
        _print_json(reply.doc)
        return 0
    count = (reply.doc or {}).get("member_count", 0)
    if reply.status == 201:
        print(f"created root {args.name}: {count} members")
    else:
        print(f"root {args.name} exists unchanged: {count} members")
    return 0


def _kill_lines(report: dict[str, Any]) -> tuple[list[str], bool]:
    """A kill report as lines (one per process, then a summary); whether it completed."""
    procs = report.get("processes") or []
    rows = [(str(p.get("pid")), str(p.get("comm") or "?"), str(p.get("outcome")),
             ",".join(p.get("signals") or ()) or "-") for p in procs]
    lines = _table(rows, frozenset({0})) if rows else []
    outcomes: dict[str, int] = {}
    for p in procs:
        outcomes[str(p.get("outcome"))] = outcomes.get(str(p.get("outcome")), 0) + 1
    what = ("the tree" if report.get("target") == "tree"
            else f"process {procs[0].get('pid')}" if len(procs) == 1 else "a process")
    complete = bool(report.get("complete"))
    counted = ", ".join(f"{n} {o}" for o, n in outcomes.items()) or "nothing to kill"
    seconds = float(report.get("seconds") or 0.0)
    lines.append(f"{'killed' if complete else 'kill INCOMPLETE:'} {what} of root "
                 f"{report.get('root')}: {counted}; {report.get('remaining', 0)} remaining "
                 f"({report.get('method')}, {seconds:.2f} s)")
    return lines, complete


def _kill_incomplete(report: dict[str, Any]) -> int:
    print(f"proctree-exporter: kill of root {report.get('root')} incomplete: "
          f"{report.get('remaining', '?')} processes remain after the grace period",
          file=sys.stderr)
    return EXIT_FAILED


def _roots_remove(client: ControlClient, args: argparse.Namespace) -> int:
    if args.grace is not None and not args.kill:
        raise _Usage("--grace goes with --kill")
    reply = client.delete_root(args.name, kill=args.kill, grace_seconds=args.grace)
    doc = reply.doc or {}
    report = doc.get("kill")
    if args.json:
        _print_json(doc)
    else:
        if report:
            print("\n".join(_kill_lines(report)[0]))
        print(f"removed root {args.name}" if doc.get("removed") else
              f"root {args.name} not removed")
    if report and not report.get("complete"):
        return _kill_incomplete(report)
    return 0 if doc.get("removed") else EXIT_FAILED


def _member_start(client: ControlClient, name: str, pid: int) -> int | None:
    """The start time of the live member ``pid`` of root ``name`` (None: no such member)."""
    doc = client.root(name).doc or {}
    for m in doc.get("members") or ():
        if m.get("pid") == pid and m.get("exited_at") is None:
            return int(m["start_ticks"])
    return None


def _roots_kill(client: ControlClient, args: argparse.Namespace) -> int:
    if args.start_ticks is not None and args.pid is None:
        raise _Usage("--start-ticks goes with --pid")
    if args.pid is None:
        reply = client.kill_root(args.name, grace_seconds=args.grace)
    else:
        start = args.start_ticks
        if start is None:
            start = _member_start(client, args.name, args.pid)
            if start is None:
                print(f"proctree-exporter: pid {args.pid} is not a live member of root "
                      f"{args.name}", file=sys.stderr)
                return EXIT_NOT_FOUND
        reply = client.kill_process(args.name, args.pid, start, grace_seconds=args.grace)
    report = reply.doc or {}
    if args.json:
        _print_json(report)
    else:
        print("\n".join(_kill_lines(report)[0]))
    return 0 if report.get("complete") else _kill_incomplete(report)


def cmd_roots(args: argparse.Namespace) -> int:
    """Ask a running exporter's write API to list, add, remove or kill roots."""
    actions: dict[str, Callable[[ControlClient, argparse.Namespace], int]] = {
        "list": _roots_list, "add": _roots_add, "remove": _roots_remove, "kill": _roots_kill}
    try:
        client = _control(args)
    except _Usage as exc:
        return _roots_usage(str(exc))
    try:
        return actions[args.action](client, args)
    except _Usage as exc:
        return _roots_usage(str(exc))
    except Unreachable as exc:
        print(f"proctree-exporter: {exc}", file=sys.stderr)
        return EXIT_NOT_PERMITTED if exc.refused else EXIT_FAILED
    except ApiError as exc:
        hint = ""
        if exc.status == 401:
            hint = ("; the user or password is wrong" if client.sends_credentials else
                    "; give a user (USER@ in the URL, or PROCTREE_USER) and PROCTREE_PASSWORD")
        print(f"proctree-exporter: {exc}{hint}", file=sys.stderr)
        return _EXIT_BY_STATUS.get(exc.status, EXIT_FAILED)


def _described(prose: str) -> str:
    """A subcommand's description: ``prose`` wrapped, then the exit codes as a table."""
    return textwrap.fill(prose, 79) + "\n\n" + ROOTS_EXIT_CODES


def _add_roots_parser(sub: Any) -> None:
    """``roots`` and its actions, on the subcommands ``sub``."""
    raw = argparse.RawDescriptionHelpFormatter  # keeps the table of exit codes a table
    roots = sub.add_parser(
        "roots", help="list, add, remove and kill the roots of a running exporter",
        formatter_class=raw, description=_described(
            "Talk to a running exporter's write API (api.write in its config): list its "
            "roots, add one at run time, remove one, or end the processes of one. By "
            "default over the Unix socket of api.write.socket (--socket, or "
            f"PROCTREE_EXPORTER_SOCKET, else {DEFAULT_SOCKET}); with --url (or "
            "PROCTREE_EXPORTER_URL), over HTTP(S) as a user of api.write.users: the user "
            "from USER@ in the URL or PROCTREE_USER, the password from PROCTREE_PASSWORD "
            "(or USER:PASSWORD@ in the URL)."))
    where = roots.add_mutually_exclusive_group()
    where.add_argument("--socket", metavar="PATH", help="the exporter's API socket "
                       f"(default: PROCTREE_EXPORTER_SOCKET, else {DEFAULT_SOCKET})")
    where.add_argument("--url", metavar="URL", help="the exporter at "
                       "http[s]://[USER@]HOST:PORT instead (default: PROCTREE_EXPORTER_URL)")
    roots.add_argument("--ca-file", metavar="FILE", help="with an https --url: trust the "
                       "CA certificates in this PEM file (default: the system's)")
    roots.add_argument("--insecure", action="store_true", help="with an https --url: "
                       "do not verify the exporter's certificate")
    roots.add_argument("--timeout", type=float, default=30.0, metavar="SECONDS",
                       help="wait this long for an answer (default 30; a kill waits for "
                       "its grace period and 10 s more at least)")
    actions = roots.add_subparsers(dest="action", required=True, metavar="ACTION")
    listing = actions.add_parser(
        "list", help="the exporter's roots, one a line", formatter_class=raw,
        description=_described(
            "The exporter's roots: where each comes from (config.yaml, or added at run "
            "time), whether it is up, its members, orphans and zombies, and whether those "
            "are exact or degraded (events lost, or /proc polled)."))
    add = actions.add_parser(
        "add", help="watch a new root", formatter_class=raw, description=_described(
            "Watch a new root, as a roots[] entry of config.yaml would (until the exporter "
            "stops). Adding a root that is there already with the same keys changes "
            "nothing; with other keys, it is a conflict."))
    add.add_argument("name", metavar="NAME")
    add.add_argument("--select", required=True,
                     choices=SELECT_KINDS)
    add.add_argument("--match", required=True, metavar="X", help="what --select matches")
    add.add_argument("--set", action="append", metavar="KEY=VALUE",
                     help="another key of the root, VALUE read as YAML (max_depth=3, "
                     "capture_cmdline=true, actions.enabled=true); repeatable")
    remove = actions.add_parser(
        "remove", help="stop watching a root", formatter_class=raw, description=_described(
            "Stop watching a root; with --kill, end its processes first (SIGTERM, then "
            "SIGKILL after the grace period) and print what became of each."))
    remove.add_argument("name", metavar="NAME")
    remove.add_argument("--kill", action="store_true", help="end the root's processes first")
    remove.add_argument("--grace", type=float, metavar="SECONDS", help="with --kill: "
                        "seconds between SIGTERM and SIGKILL (default: the exporter's "
                        "api.write.kill_grace_seconds)")
    kill = actions.add_parser(
        "kill", help="end a root's processes, or one of them", formatter_class=raw,
        description=_described(
            "End every live process of a root (SIGTERM, then SIGKILL after the grace "
            "period; or cgroup.kill), or only the member --pid. One line per process: "
            "pid, comm, what became of it, the signals sent; then a summary."))
    kill.add_argument("name", metavar="NAME")
    kill.add_argument("--pid", type=int, help="only this member")
    kill.add_argument("--start-ticks", type=int, metavar="N", help="with --pid: only if it "
                      "started at this time (default: the live member's, as the exporter "
                      "lists it), so that a reused pid is never hit")
    kill.add_argument("--grace", type=float, metavar="SECONDS", help="seconds between "
                      "SIGTERM and SIGKILL (default: the exporter's "
                      "api.write.kill_grace_seconds)")
    for q in (listing, add, remove, kill):
        q.add_argument("--json", action="store_true", help="the exporter's JSON answer")


def build_parser() -> argparse.ArgumentParser:
    """The argument parser for every subcommand."""
    p = argparse.ArgumentParser(prog="proctree-exporter",
                                description="Process-tree monitor for Linux.")
    p.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    p.add_argument("--config", help="config file (default ./config.yaml, then "
                   "/etc/proctree-exporter/config.yaml)")
    sub = p.add_subparsers(dest="command")
    run = sub.add_parser("run", help="run the exporter (the default)")
    check = sub.add_parser("check-config", help="validate the config and exit")
    tree = sub.add_parser("tree", help="print the process tree by lineage")
    # options accepted before or after the subcommand; SUPPRESS keeps a
    # subcommand's absent option from overwriting the one given before it
    for q, default in ((p, None), (run, argparse.SUPPRESS)):
        q.add_argument("--log.level", dest="log_level", default=default,
                       choices=["debug", "info", "warning", "error"])
        q.add_argument("--log.format", dest="log_format", default=default,
                       choices=["text", "json"])
        q.add_argument("--web.listen-address", dest="listen_address", default=default,
                       help="[HOST]:PORT to serve on (default from config, ':9632')")
        q.add_argument("--state.path", dest="state_path", default=default,
                       help="the state file kept across restarts (default from config: none)")
    for q, default in ((p, None), (run, argparse.SUPPRESS), (check, argparse.SUPPRESS)):
        q.add_argument("--web.config.file", dest="web_config_file", default=default,
                       help="exporter-toolkit web config: TLS and basic auth")
    for q in (run, check, tree):
        q.add_argument("--config", default=argparse.SUPPRESS, help=argparse.SUPPRESS)
    tree.add_argument("--root", type=int, help="only this live pid and its descendants")
    tree.add_argument("--for", dest="for_seconds", type=float, default=0.0,
                      help="watch events this many seconds before printing (default 0)")
    tree.add_argument("--json", action="store_true", help="one JSON document")
    watch = sub.add_parser(
        "watch", help="stream the changes of one process tree (here, or of an exporter "
        "with --url)",
        description="Stream one line per change of a process tree, in the order things "
        "happened. Here: the tree under --root PID, --comm NAME or --pidfile PATH, watched "
        "by this command itself. With --url: the roots of a running exporter, from its "
        "event stream (/api/v1/events); --root NAME (repeatable) names roots of its "
        "config, none means every root (text lines then name the root). A remote watch "
        "first lists each root's members as 'added', like a local one, then resumes "
        "where it left off after a dropped connection (a 'lost' line if the exporter no "
        "longer holds what it missed).")
    watch.add_argument("--config", default=argparse.SUPPRESS, help=argparse.SUPPRESS)
    which = watch.add_mutually_exclusive_group()
    which.add_argument("--root", action="append", metavar="PID|NAME",
                       help="the tree under this pid; with --url, a root of the exporter "
                       "by name (repeatable; default: every root)")
    which.add_argument("--comm", help="the trees under processes with this comm")
    which.add_argument("--pidfile", help="the tree under the pid in this file (re-read "
                       "when that process dies)")
    watch.add_argument("--url", metavar="URL", help="follow the exporter at "
                       "http[s]://[USER@]HOST:PORT instead of watching this host; the "
                       "password comes from PROCTREE_PASSWORD (or USER:PASSWORD@ in the URL)")
    watch.add_argument("--ca-file", metavar="FILE", help="with an https --url: trust the "
                       "CA certificates in this PEM file (default: the system's)")
    watch.add_argument("--insecure", action="store_true", help="with an https --url: "
                       "do not verify the exporter's certificate")
    watch.add_argument("--for", dest="for_seconds", type=float, default=0.0,
                       help="stop after this many seconds (default: until interrupted)")
    watch.add_argument("--json", action="store_true", help="one JSON object per line")
    caps = sub.add_parser("capabilities", help="what this host lets the exporter know")
    caps.add_argument("--config", default=argparse.SUPPRESS, help=argparse.SUPPRESS)
    caps.add_argument("--json", action="store_true", help="one JSON document")
    _add_roots_parser(sub)
    return p


EXIT_PIPE = 128 + signal.SIGPIPE  # what a shell reports for `ls | head`'s ls


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``proctree-exporter`` console script."""
    args = build_parser().parse_args(argv)
    command = args.command or "run"
    handler = {"run": cmd_run, "check-config": cmd_check_config, "tree": cmd_tree,
               "watch": cmd_watch, "capabilities": cmd_capabilities,
               "roots": cmd_roots}[command]
    try:
        return handler(args)
    except BrokenPipeError:
        # the reader went away (`tree | head`): stop quietly, as ls does. stdout goes
        # to /dev/null so that the interpreter's last flush does not complain either.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return EXIT_PIPE


if __name__ == "__main__":
    sys.exit(main())
