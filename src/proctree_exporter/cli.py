"""Command line: ``run`` (default), ``check-config``, ``tree``."""

from __future__ import annotations

import argparse
import json
import logging
import signal
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from . import __version__
from .capabilities import negotiate
from .collector import Collector
from .config import Config, ConfigError, load_config
from .daemon import build, make_tree
from .tree import NodeView, PidTree
from .watch import MemberInfo, RootSpec, Watchers
from .web_config import WebConfigError, load_web_config

log = logging.getLogger("proctree_exporter")

EXIT_CONFIG = 2


class _JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        doc = {
            "ts": self.formatTime(record, "%Y-%m-%dT%H:%M:%S") + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        if record.exc_info:
            doc["exc"] = self.formatException(record.exc_info)
        return json.dumps(doc)


def setup_logging(level: str, fmt: str) -> None:
    """Structured logs on stderr: ``key=value`` text, or one JSON object per line."""
    handler = logging.StreamHandler(sys.stderr)
    if fmt == "json":
        handler.setFormatter(_JsonFormatter())
    else:
        formatter = logging.Formatter("ts=%(asctime)s.%(msecs)03dZ level=%(levelname)s "
                                      "logger=%(name)s msg=%(message)s", "%Y-%m-%dT%H:%M:%S")
        handler.setFormatter(formatter)
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
    setup_logging(args.log_level or cfg.log.level, args.log_format or cfg.log.format)
    log.info("starting version=%s config=%s", __version__, path or "(built-in defaults)")
    try:
        daemon = build(cfg, path, args.listen_address, args.web_config_file)
    except WebConfigError as exc:
        print(f"proctree-exporter: bad web config: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    except ValueError as exc:  # listen address
        print(f"proctree-exporter: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    except OSError as exc:
        log.error("cannot listen on %s: %s", args.listen_address or cfg.web.listen_address,
                  exc.strerror or exc)
        return 1
    return daemon.run()


# --- tree ---------------------------------------------------------------------


def build_forest(views: Sequence[NodeView], root_pid: int | None = None) -> list[dict[str, Any]]:
    """Nest node views by lineage into JSON-ready dicts.

    Nodes whose lineage parent is not in ``views`` become top-level. With
    ``root_pid``, only the live process holding that pid and its descendants.
    """
    by_id = {(v.pid, v.start_ticks): v for v in views}
    kids: dict[tuple[int, int], list[NodeView]] = {}
    tops: list[NodeView] = []
    for v in views:
        key = (v.lineage_ppid, v.lineage_start)
        if v.lineage_ppid is not None and key in by_id and key != (v.pid, v.start_ticks):
            kids.setdefault(key, []).append(v)  # type: ignore[arg-type]
        else:
            tops.append(v)
    if root_pid is not None:
        tops = [v for v in views if v.pid == root_pid and not v.reaped]

    def doc(v: NodeView, seen: set[tuple[int, int]]) -> dict[str, Any]:
        ident = (v.pid, v.start_ticks)
        seen.add(ident)
        children = sorted(kids.get(ident, ()), key=lambda c: (c.start_ticks, c.pid))
        return {
            "pid": v.pid,
            "start_ticks": v.start_ticks,
            "ppid": v.ppid,
            "lineage_ppid": v.lineage_ppid,
            "lineage_source": v.lineage_source,
            "lineage_known": v.lineage_known,
            "comm": v.comm,
            "state": v.state,
            "exited": v.exited,
            "exit_code": v.exit_code,
            "exit_signal": v.exit_signal,
            "zombie": v.zombie,
            "orphaned": v.orphaned,
            "children": [doc(c, seen) for c in children if (c.pid, c.start_ticks) not in seen],
        }

    seen: set[tuple[int, int]] = set()
    return [doc(v, seen) for v in sorted(tops, key=lambda t: (t.start_ticks, t.pid))]


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
    caps = negotiate(collector.stats, read_cgroups=cfg.tree.read_cgroups,
                     poll_interval_s=cfg.collector.poll_interval_seconds)
    if args.json:
        json.dump({c.category: {"status": c.status, "backend": c.backend, "reason": c.reason}
                   for c in caps}, sys.stdout)
        sys.stdout.write("\n")
    else:
        for c in caps:
            print(f"{c.category:<18} {c.status:<12} {c.backend:<15} {c.reason}")
    return 0


def _event_line(kind: str, info: MemberInfo | None, *, root: str, ts: float, pid: int = 0,
                start: int = 0, comm: str | None = None, cls: str = "", reason: str = "",
                as_json: bool) -> str:
    doc: dict[str, Any] = {"event": kind, "ts": round(ts, 6), "root": root}
    if info is not None:
        doc.update(pid=info.pid, start_ticks=info.start_ticks, comm=info.comm, ppid=info.ppid,
                   lineage_ppid=info.lineage_ppid, depth=info.depth, **{"class": info.cls},
                   reason=info.reason, exit_code=info.exit_code, exit_signal=info.exit_signal)
    else:
        doc.update(pid=pid, start_ticks=start, comm=comm, **{"class": cls}, reason=reason)
    if as_json:
        return json.dumps(doc)
    stamp = time.strftime("%H:%M:%S", time.localtime(ts)) + f".{int(ts % 1 * 1000):03d}"
    text = f"{stamp} {kind:<8} {doc['pid']:>7} {doc['comm'] or '?':<16} {doc['class']}"
    return f"{text}  {doc['reason']}" if doc["reason"] else text


def cmd_watch(args: argparse.Namespace) -> int:
    """Stream one line per delta and class change of one tree, like forkstat scoped to it."""
    cfg, _ = _load(args.config)
    setup_logging("warning", "text")
    if args.root is not None:
        spec = RootSpec(name="watch", select="pid", match=str(args.root))
    elif args.comm is not None:
        spec = RootSpec(name="watch", select="comm", match=args.comm)
    else:
        spec = RootSpec(name="watch", select="pidfile", match=args.pidfile)
    tree, collector = _start(cfg)
    watchers = Watchers(tree, [spec])
    watchers.attach()
    watcher = watchers.watcher("watch")
    stopping = threading.Event()
    signal.signal(signal.SIGINT, lambda *_: stopping.set())
    signal.signal(signal.SIGTERM, lambda *_: stopping.set())
    deadline = time.monotonic() + args.for_seconds if args.for_seconds > 0 else None
    print(f"watching {spec.select}={spec.match} (source {collector.stats.source})",
          file=sys.stderr, flush=True)
    out = sys.stdout
    first = True
    try:
        while not stopping.is_set():
            obs = watcher.observe(members=False)
            if first:
                for w in obs.warnings:
                    print(f"warning: {w}", file=sys.stderr, flush=True)
                first = False
            lines = []
            for i in obs.delta.transient:  # lived and died since the last look
                lines.append(_event_line("added", i, root=spec.name, ts=i.started_at,
                                         as_json=args.json))
                lines.append(_event_line("removed", i, root=spec.name,
                                         ts=i.exited_at or obs.ts, as_json=args.json))
            lines += [_event_line("added", i, root=spec.name, ts=obs.ts, as_json=args.json)
                      for i in obs.delta.added]
            lines += [_event_line("removed", i, root=spec.name, ts=i.exited_at or obs.ts,
                                  as_json=args.json) for i in obs.delta.removed]
            lines += [_event_line(e.kind if e.kind != "class" else "class", None,
                                  root=spec.name, ts=e.ts, pid=e.pid, start=e.start_ticks,
                                  comm=e.comm, cls=e.new, reason=e.reason, as_json=args.json)
                      for e in obs.events]
            if lines:
                out.write("\n".join(lines) + "\n")
                out.flush()
            if deadline is not None and time.monotonic() >= deadline:
                break
            stopping.wait(0.05)
    finally:
        collector.stop()
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
    for q, default in ((p, None), (run, argparse.SUPPRESS), (check, argparse.SUPPRESS)):
        q.add_argument("--web.config.file", dest="web_config_file", default=default,
                       help="exporter-toolkit web config: TLS and basic auth")
    for q in (run, check, tree):
        q.add_argument("--config", default=argparse.SUPPRESS, help=argparse.SUPPRESS)
    tree.add_argument("--root", type=int, help="only this live pid and its descendants")
    tree.add_argument("--for", dest="for_seconds", type=float, default=0.0,
                      help="watch events this many seconds before printing (default 0)")
    tree.add_argument("--json", action="store_true", help="one JSON document")
    watch = sub.add_parser("watch", help="stream the changes of one process tree")
    watch.add_argument("--config", default=argparse.SUPPRESS, help=argparse.SUPPRESS)
    which = watch.add_mutually_exclusive_group(required=True)
    which.add_argument("--root", type=int, help="the tree under this pid")
    which.add_argument("--comm", help="the trees under processes with this comm")
    which.add_argument("--pidfile", help="the tree under the pid in this file (re-read "
                       "when that process dies)")
    watch.add_argument("--for", dest="for_seconds", type=float, default=0.0,
                       help="stop after this many seconds (default: until interrupted)")
    watch.add_argument("--json", action="store_true", help="one JSON object per line")
    caps = sub.add_parser("capabilities", help="what this host lets the exporter know")
    caps.add_argument("--config", default=argparse.SUPPRESS, help=argparse.SUPPRESS)
    caps.add_argument("--json", action="store_true", help="one JSON document")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``proctree-exporter`` console script."""
    args = build_parser().parse_args(argv)
    command = args.command or "run"
    handler = {"run": cmd_run, "check-config": cmd_check_config, "tree": cmd_tree,
               "watch": cmd_watch, "capabilities": cmd_capabilities}[command]
    return handler(args)


if __name__ == "__main__":
    sys.exit(main())
