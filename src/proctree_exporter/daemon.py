"""The running exporter: collector, roots, host sampler, resource accounting, state file
and web server, wired together.

Signals: SIGTERM and SIGINT shut down cleanly (well within 2 s); SIGHUP
reloads the config. A reload adds and removes roots without touching the
tree; settings that only take effect at start (event source, buffer size,
listen address, web config) are reported as such. A bad reload keeps the
running config and is counted.
"""

from __future__ import annotations

import gc
import logging
import os
import signal
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry

from .capabilities import Capability, negotiate
from .clock import Clock
from .collector import Collector
from .config import Config, ConfigError, load_config
from .control import Controller, ControlStats
from .export.prometheus import SnapshotCollector
from .host import HostStateSampler
from .httpserver import Server, make_server, make_unix_server
from .identity import Identity
from .membership import Roots
from .mirror import Mirrors
from .procfs import ProcFS
from .resources import Accountant, Ledger, ProcessUsage, accounting_capability
from .sampler import Sampler
from .snapshot import ReloadStatus, Snapshot, take
from .state import StateDoc, StateError, StateStats, StateWriter, boot_id
from .state import read as read_state
from .stream import StreamHub
from .tree import LineageRestore, PidTree
from .web import App, event_json
from .web_config import WebConfig, load_web_config

log = logging.getLogger("proctree_exporter")

GC_FREEZE_INTERVAL_S = 60.0
# Threads that serve readers (HTTP workers, the host-state walk) run at this nice
# value: Linux schedules threads one by one, so when the CPUs are short, clients
# polling in a loop take their time from each other rather than from the
# collector, whose lag is what overflows the socket and loses events. Measured in
# bench/collector_blocking.py (2,000 forks/s, 20 clients, 2 CPUs): lag p99 157
# and 161 ms at nice 10, 361 and 1,985 ms at nice 0. Nice 19 was worse again: the
# GIL then sits with threads the kernel rarely runs.
BACKGROUND_NICE = 10


def yield_to_the_collector() -> None:
    """Lower the calling thread's scheduling priority to ``BACKGROUND_NICE``."""
    try:
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), BACKGROUND_NICE)
    except OSError:  # a seccomp filter or no such call: serve at the same priority
        pass


def make_tree(cfg: Config) -> PidTree:
    """A PidTree configured from ``tree:``, on the real /proc and clocks."""
    t = cfg.tree
    return PidTree(max_nodes=t.max_nodes, tombstone_ttl_s=t.tombstone_ttl_seconds,
                   cmdline_max_chars=t.cmdline_max_chars, read_cgroups=t.read_cgroups,
                   read_cmdlines=any(r.spec().needs_cmdline for r in cfg.roots),
                   reader=ProcFS(), clock=Clock())


class Daemon:
    """One exporter process. Construct (binds the port), then :meth:`run`."""

    def __init__(self, cfg: Config, *, config_path: Path | None, listen_address: str,
                 web_config: WebConfig) -> None:
        self.cfg = cfg
        self.config_path = config_path
        self.listen_address = listen_address
        self.web_config = web_config
        self.tree = make_tree(cfg)
        self.collector = Collector(self.tree, cfg.collector.settings())
        self.sampler = HostStateSampler(cfg.host.state_sample_interval_seconds,
                                        on_start=yield_to_the_collector)
        self.roots: Roots | None = None  # set once ready: /-/ready says 200 from then on
        self.mirrors: Mirrors | None = None  # what the JSON API reads
        self.streams: StreamHub | None = None  # /api/v1/events
        self.otel: Any = None  # export.otel.OtelExporter while otel.enabled (imported then)
        self.capabilities: tuple[Capability, ...] = ()
        self.state_stats = StateStats(enabled=cfg.state.path is not None)
        self.state_writer: StateWriter | None = None
        self.ledger: Ledger | None = None  # resources: per-root CPU, memory, IO
        self._accountant: Accountant | None = None
        self._resource_sampler: Sampler | None = None
        self.reloads = ReloadStatus()
        write = cfg.api.write
        self.control_stats = ControlStats(enabled=write.enabled)
        self.controller: Controller | None = None  # the write API's, once ready
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(SnapshotCollector(self.snapshot))
        self.app = App(self.registry, web_config, lambda: self.mirrors,
                       lambda: self.roots is not None, lambda: self.streams,
                       lambda: self.ledger, control=lambda: self.controller,
                       write=write, control_stats=self.control_stats)
        self.server: Server = make_server(listen_address, self.app,
                                          ssl_context=web_config.ssl_context(),
                                          max_connections=cfg.web.max_connections,
                                          read_timeout_s=cfg.web.read_timeout_seconds,
                                          worker_init=yield_to_the_collector,
                                          headers=web_config.response_headers())
        self.socket_server: Server | None = None
        if write.socket is not None:
            try:
                self.socket_server = make_unix_server(
                    write.socket, self.app, mode=int(write.socket_mode, 8),
                    read_timeout_s=cfg.web.read_timeout_seconds,
                    worker_init=yield_to_the_collector,
                    headers=web_config.response_headers())
            except OSError as exc:
                self.server.server_close()
                raise OSError(exc.errno, f"api.write.socket {write.socket}: "
                                         f"{exc.strerror or exc}") from None
        self._stop = threading.Event()
        self._reload = threading.Event()
        self._server_thread = threading.Thread(target=self.server.serve_forever,
                                               kwargs={"poll_interval": 0.1},
                                               name="proctree-http", daemon=True)
        self._socket_thread = threading.Thread(
            target=self.socket_server.serve_forever, kwargs={"poll_interval": 0.1},
            name="proctree-socket", daemon=True) if self.socket_server is not None else None

    def snapshot(self) -> Snapshot:
        """The state as /metrics shows it, now."""
        return take(self.tree, self.collector, self.roots, self.capabilities,
                    self.sampler.latest, self.reloads,
                    self.otel.stats() if self.otel is not None else None,
                    self.streams.stats if self.streams is not None else None,
                    self.state_stats,
                    self.ledger.stats() if self.ledger is not None else None,
                    self.control_stats if self.control_stats.enabled else None)

    def state_path(self) -> Path | None:
        """Where the state file is (a relative ``state.path`` is beside the config)."""
        path = self.cfg.state.path
        if path is None:
            return None
        p = Path(path)
        return p if p.is_absolute() or self.config_path is None else self.config_path.parent / p

    def start(self) -> None:
        """Start collecting and serving; return once the tree is seeded and roots attached."""
        self.collector.start()
        self._server_thread.start()
        host, port = self.server.server_address[:2]
        log.info("listening", extra={"fields": {
            "address": host, "port": port, "tls": self.server.ssl_context is not None,
            "auth": self.web_config.auth_required(),
            "write_users": ",".join(self.cfg.api.write.users) if self.cfg.api.write.enabled
            else ""}})
        if self._socket_thread is not None and self.socket_server is not None:
            self._socket_thread.start()
            log.info("listening", extra={"fields": {
                "socket": self.socket_server.unix_path, "mode": self.cfg.api.write.socket_mode,
                "uids": ",".join(map(str, [0, *self.cfg.api.write.uids]))}})
        self.collector.ready.wait()
        if self.collector.failed is not None:
            raise RuntimeError(f"collector failed: {self.collector.failed}")
        self.sampler.start()
        state_path = self.state_path()
        boot = boot_id()
        # read and checked before the lock: the collector keeps applying events meanwhile
        saved = self._read_state(state_path, boot) if state_path is not None else None
        t0 = time.monotonic()
        write = self.cfg.api.write
        with self.tree.lock:  # one step: no event lands between the restore and the roots
            lineage = self.tree.restore_lineage(saved.processes) if saved else None
            roots = Roots(self.tree, self.cfg.root_specs(), clock=self.tree.clock)
            controller = Controller(
                roots, catch_up=lambda t: self.collector.catch_up(t),
                config_names=lambda: [r.name for r in self.cfg.roots],
                max_runtime_roots=write.max_runtime_roots, grace_s=write.kill_grace_seconds,
                stats=self.control_stats)
            if saved is not None and lineage is not None:
                controller.restore(saved.runtime_roots, saved.roots)
                self._restore_roots(roots, saved, lineage, time.monotonic() - t0)
                controller.forget_gone()
            roots.attach()
        rc = self.cfg.resources
        if rc.enabled:
            self.ledger = Ledger(roots, roots=rc.roots)
            self._accountant = Accountant(self.ledger, use_taskstats=rc.taskstats)
            self.ledger.sync()  # its cursors exist before ready: no member goes uncounted
            self._resource_sampler = Sampler(self.ledger.live_identities,
                                             rc.sample_interval_seconds,
                                             self.ledger.apply_round, pss=rc.pss,
                                             on_start=yield_to_the_collector)
            sampler = self._resource_sampler
            self.ledger.sampler_cpu = lambda: sampler.status().cpu_seconds
        self.capabilities = tuple(negotiate(
            self.collector.stats, read_cgroups=self.tree.read_cgroups,
            poll_interval_s=self.cfg.collector.poll_interval_seconds,
            resource_accounting=self._accountant.capability if self._accountant is not None
            else accounting_capability(False, rc.taskstats)))
        # every consumer's cursor exists before /-/ready says so: what happens from
        # here on reaches OpenTelemetry and the API, however soon after ready
        if self.cfg.otel.enabled:
            self.otel = _start_otel(self.cfg, self.config_path, roots, self.snapshot,
                                    self.ledger.final if self.ledger is not None else None)
        mirrors = Mirrors(roots)
        for name in roots.root_names():
            mirrors.get(name)
        # not niced like the HTTP workers: its work grows with events, not with what
        # clients ask for, and a starved hub falls behind every client at once
        # (bench/stream.py: at nice 10, 10 clients fell 18 s behind a 2,000 forks/s storm)
        streams = StreamHub(roots, event_json, max_streams=self.cfg.web.max_streams)
        streams.start()
        if self._accountant is not None and self._resource_sampler is not None:
            self._accountant.start()
            self._resource_sampler.start()
        if state_path is not None:
            self.state_writer = StateWriter(
                state_path, self.cfg.state.interval_seconds, roots,
                lambda: self.snapshot().roots, self.state_stats, boot,
                runtime_roots=controller.saved)
            self.state_writer.start()
        # the tree's nodes live long: keep the cyclic GC from rescanning them on every
        # full collection (which put 40-90 ms pauses into scrapes on 20,000-process
        # hosts). Evicted nodes have their links cut, so refcounting still frees them.
        gc.freeze()
        self.mirrors = mirrors
        self.streams = streams
        self.controller = controller
        self.roots = roots  # from here /-/ready says 200
        log.info("ready", extra={"fields": {"source": self.collector.stats.source,
                                            "processes": self.tree.live_count,
                                            "roots": len(roots.roots)}})

    def run(self) -> int:
        """Serve until SIGTERM/SIGINT; reload on SIGHUP. Returns the exit status."""
        def on_stop(signum: int, _frame: object) -> None:
            log.info("shutting down", extra={"fields": {"signal": signal.Signals(signum).name}})
            self._stop.set()

        signal.signal(signal.SIGTERM, on_stop)
        signal.signal(signal.SIGINT, on_stop)
        signal.signal(signal.SIGHUP, lambda *_: self._reload.set())
        try:
            self.start()
            next_freeze = time.monotonic() + GC_FREEZE_INTERVAL_S
            while not self._stop.wait(0.2):
                if self.mirrors is not None:
                    self.mirrors.keep_up()  # so that no API mirror falls off its log
                if time.monotonic() >= next_freeze:
                    next_freeze = time.monotonic() + GC_FREEZE_INTERVAL_S
                    gc.freeze()  # what survived this long is likely tree state, not garbage
                if self._reload.is_set():
                    self._reload.clear()
                    self.reload()
                if not self.collector.is_alive():
                    log.error("collector stopped; exiting",
                              extra={"fields": {"error": str(self.collector.failed)}})
                    return 1
            return 0
        except RuntimeError as exc:
            log.error("%s", exc)
            return 1
        finally:
            self.stop()

    def stop(self) -> None:
        """Stop serving and collecting."""
        self._stop.set()
        if self.streams is not None:
            self.streams.stop()  # each stream gets a last frame saying why
        if self._server_thread.is_alive():
            self.server.shutdown()
        self.server.server_close()
        if self.socket_server is not None:
            if self._socket_thread is not None and self._socket_thread.is_alive():
                self.socket_server.shutdown()
            self.socket_server.server_close()
        self.sampler.stop()
        if self._resource_sampler is not None:
            self._resource_sampler.stop()
        if self._accountant is not None:
            self._accountant.stop()
        if self.state_writer is not None:
            self.state_writer.stop()  # the last, clean write: counters continue after it
        if self.otel is not None:
            self.otel.stop()  # ends open spans, flushes within otel.shutdown_timeout_seconds
        self.collector.stop(timeout=1.0)

    def _read_state(self, path: Path, boot: str) -> StateDoc | None:
        """The state file, or None (none yet, or ignored: one log line and a metric)."""
        try:
            doc = read_state(path, boot=boot)
        except StateError as exc:
            self.state_stats.ignored[exc.reason] += 1
            log.warning("state file ignored", extra={"fields": {
                "path": str(path), "reason": exc.reason, "detail": exc.detail}})
            return None
        if doc is None:
            log.info("no state file yet", extra={"fields": {"path": str(path)}})
        return doc

    def _restore_roots(self, roots: Roots, saved: StateDoc, lineage: LineageRestore,
                       lineage_s: float) -> None:
        stats = self.state_stats
        t0 = time.monotonic()
        members = roots.restore(
            saved.roots if saved.clean else [r._replace(counters=None) for r in saved.roots],
            lineage.restored)
        stats.restored_processes = len(lineage.restored)
        stats.restored_members = members
        stats.dropped = dict(lineage.dropped)
        stats.counters_continued = saved.clean
        log.info("state restored", extra={"fields": {
            "processes": len(lineage.restored), "members": members,
            "links": lineage.links, "clean": saved.clean,
            "age_seconds": round(time.time() - saved.written_at, 1),
            "seconds": round(lineage_s + time.monotonic() - t0, 3),
            **{f"dropped_{k}": v for k, v in lineage.dropped.items()}}})

    def reload(self) -> bool:
        """Re-read the config file and apply what can change while running."""
        t0 = time.time()
        try:
            new, _ = load_config(self.config_path)
            assert self.controller is not None
            self.controller.set_config_roots(new.root_specs())
            assert self.roots is not None
        except (ConfigError, ValueError, AssertionError) as exc:
            r = self.reloads
            self.reloads = ReloadStatus(r.success_total, r.failure_total + 1, False, t0, str(exc))
            log.error("reload failed, keeping the running config",
                      extra={"fields": {"error": str(exc)}})
            return False
        with self.tree.lock:
            self.tree.max_nodes = new.tree.max_nodes
            self.tree.tombstone_ttl_ns = int(new.tree.tombstone_ttl_seconds * 1e9)
            self.tree.cmdline_max_chars = new.tree.cmdline_max_chars
        if new.tree.read_cgroups and not self.tree.read_cgroups:
            self.tree.enable_cgroups()
        logging.getLogger().setLevel(new.log.level.upper())
        restart = [key for key, old, now in (
            ("collector", self.cfg.collector, new.collector),
            ("web", self.cfg.web, new.web),
            ("host", self.cfg.host, new.host),
            ("state", self.cfg.state, new.state),
            ("resources", self.cfg.resources, new.resources),
            ("api", self.cfg.api, new.api),
            ("log.format", self.cfg.log.format, new.log.format),
            ("otel", self.cfg.otel, new.otel)) if old != now]
        if restart:
            log.warning("reload: some changes take effect at the next start",
                        extra={"fields": {"changed": ",".join(restart)}})
        self.cfg = new
        r = self.reloads
        self.reloads = ReloadStatus(r.success_total + 1, r.failure_total, True, t0, "")
        log.info("reloaded", extra={"fields": {"config": str(self.config_path),
                                               "roots": len(self.roots.roots)}})
        return True


def _start_otel(cfg: Config, config_path: Path | None, roots: Roots,
                snapshot: Callable[[], Snapshot],
                usage: Callable[[Identity], ProcessUsage | None] | None) -> Any:
    """Start OpenTelemetry export (the SDK is imported only when it is enabled)."""
    from .export.otel import OtelExporter

    try:
        exporter = OtelExporter(cfg.otel, roots, snapshot,
                                base_dir=config_path.parent if config_path else None,
                                usage=usage)
    except (OSError, ValueError) as exc:
        raise RuntimeError(f"otel: {exc}") from None
    exporter.start()
    log.info("otel exporting", extra={"fields": {
        "protocol": cfg.otel.protocol,
        "endpoint": cfg.otel.endpoint or "(OTEL_EXPORTER_OTLP_ENDPOINT or default)",
        "events": cfg.otel.events, "roots": ",".join(cfg.otel.roots) or "all"}})
    return exporter


def build(cfg: Config, config_path: Path | None, listen_override: str | None,
          web_config_override: str | None) -> Daemon:
    """A Daemon from config and flags (flags win). Raises WebConfigError, OSError."""
    web_path = web_config_override or cfg.web.config_file
    if web_path and config_path and not os.path.isabs(web_path) and not web_config_override:
        web_path = str(config_path.parent / web_path)
    web_config = load_web_config(web_path)
    check_write_users(cfg, web_config)
    return Daemon(cfg, config_path=config_path,
                  listen_address=listen_override or cfg.web.listen_address,
                  web_config=web_config)


def check_write_users(cfg: Config, web_config: WebConfig) -> None:
    """ConfigError unless every ``api.write.users`` entry is a basic-auth user of the
    web config: writes over TCP are never unauthenticated."""
    write = cfg.api.write
    if not write.enabled or not write.users:
        return
    if not web_config.basic_auth_users:
        raise ConfigError("api.write.users: the web config has no basic_auth_users, so "
                          "writes over TCP would be unauthenticated; add the users to "
                          "--web.config.file, or write through api.write.socket only")
    unknown = [u for u in write.users if u not in web_config.basic_auth_users]
    if unknown:
        raise ConfigError(f"api.write.users: {', '.join(map(repr, unknown))} not in the web "
                          "config's basic_auth_users")
