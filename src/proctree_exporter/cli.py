"""Command line: ``run`` (default), ``check-config``, ``tree``, ``watch`` (here, or of a
remote exporter with ``--url``), ``capabilities``."""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

from . import __version__
from .capabilities import negotiate
from .classification import EXITED
from .collector import Collector
from .config import Config, ConfigError, load_config
from .daemon import build, make_tree
from .events import EventKind, RootEvent
from .httpserver import parse_listen_address
from .mirror import MemberInfo, member_from
from .monitor import Monitor, MonitorError
from .remote import RemoteWatch, Seed, Target
from .resources import accounting_capability, probe
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
    if web:
        try:
            load_web_config(web)
        except WebConfigError as exc:
            print(f"proctree-exporter: bad web config: {exc}", file=sys.stderr)
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


def _follow(changes: Callable[[float], Iterable[RootEvent | Seed]], stopping: threading.Event,
            deadline: float | None, *, as_json: bool, show_root: bool = False) -> None:
    """The loop of both ``watch`` paths: one line per change until ``stopping`` is set or
    ``deadline`` (monotonic) passes. ``changes(wait)`` yields what happened in order and
    ends after ``wait`` seconds without anything."""
    out = sys.stdout
    known: Known = {}
    while not stopping.is_set():
        wait = 0.1 if deadline is None else max(min(0.1, deadline - time.monotonic()), 0)
        lines: list[str] = []
        for change in changes(wait):
            if isinstance(change, Seed):
                lines.extend(_seed_lines(change, known, as_json=as_json, show_root=show_root))
            else:
                line = event_line(change, _track(known, change), as_json=as_json,
                                  show_root=show_root)
                if line is not None:
                    lines.append(line)
            if len(lines) >= 256 or stopping.is_set():
                break
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
    return p


EXIT_PIPE = 128 + signal.SIGPIPE  # what a shell reports for `ls | head`'s ls


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``proctree-exporter`` console script."""
    args = build_parser().parse_args(argv)
    command = args.command or "run"
    handler = {"run": cmd_run, "check-config": cmd_check_config, "tree": cmd_tree,
               "watch": cmd_watch, "capabilities": cmd_capabilities}[command]
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
