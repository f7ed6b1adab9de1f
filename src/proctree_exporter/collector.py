"""The collector thread: proc connector (or /proc polling) into the PidTree.

Start-up subscribes first and seeds from /proc second, so nothing that
happens in between is missed: events queued during the walk are applied
after it, and the tree's staleness guard drops those that name an older
process than the one /proc showed.

Loss is never silent. It is detected three ways: ENOBUFS from recv (once per
overflow episode), gaps in the per-CPU ``cn_msg.seq`` counter (unfiltered
sockets only: the counter also counts events the filter withholds), and the
kernel's own drop counter for the socket in /proc/net/netlink (exact). Any of
them schedules a resync: drain what is queued, walk /proc, reconcile.
"""

from __future__ import annotations

import bisect
import logging
import select
import threading
import time
from array import array
from collections.abc import Callable
from dataclasses import dataclass, field

from . import netlink as nl
from . import procfs
from .tree import LINEAGE_POLL, LINEAGE_RESYNC, LINEAGE_SNAPSHOT, PidTree

log = logging.getLogger(__name__)

# Housekeeping (deferred exit checks, tombstone eviction, watcher ticks) runs
# every HOUSEKEEPING_S, not on every wake-up. Above STORM_EVENTS_PER_S (judged
# per STORM_WINDOW_S) each wake-up first waits COALESCE_S to batch events: it
# halves the CPU per event in fork storms (measured in bench/event_capture.py).
HOUSEKEEPING_S = 0.01
STORM_EVENTS_PER_S = 2000
STORM_WINDOW_S = 0.1
COALESCE_S = 0.001
MAX_BATCHES_PER_WAKE = 32

SOURCE_NETLINK = "netlink"
SOURCE_PROCFS = "procfs"

# Upper bounds (seconds) of the kernel-to-applied lag histogram.
LAG_BUCKETS = (0.00001, 0.000025, 0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005,
               0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
_LAG_BOUNDS_NS = [int(b * 1e9) for b in LAG_BUCKETS]
_EVENT_NAMES = {
    nl.What.FORK: "fork", nl.What.EXEC: "exec", nl.What.EXIT: "exit", nl.What.COMM: "comm",
    nl.What.UID: "uid", nl.What.GID: "gid", nl.What.SID: "sid", nl.What.PTRACE: "ptrace",
    nl.What.COREDUMP: "coredump", nl.What.NONE: "ack",
}
EVENT_TYPES = tuple(_EVENT_NAMES.values())
_NAME_OF = {int(what): name for what, name in _EVENT_NAMES.items()}
_ACK = int(nl.What.NONE)
_CONSUMED = int(nl.CONSUMED)


@dataclass(frozen=True, slots=True)
class CollectorSettings:
    """How the collector reads the kernel."""

    source: str = "auto"  # auto | netlink | procfs
    receive_buffer_bytes: int = 8 << 20
    event_filter: bool = True
    poll_interval_s: float = 1.0
    resync_min_interval_s: float = 1.0
    batch_max: int = 256  # events applied per lock hold


@dataclass(slots=True)
class LagRecorder:
    """Histogram (cumulative on export) of kernel-timestamp-to-applied lag, plus recent samples."""

    counts: list[int] = field(default_factory=lambda: [0] * (len(LAG_BUCKETS) + 1))
    sum_ns: int = 0
    recent: array = field(default_factory=lambda: array("q", bytes(8 * 65536)))
    recent_n: int = 0

    def add(self, lag_ns: int) -> None:
        self.counts[bisect.bisect_left(_LAG_BOUNDS_NS, lag_ns)] += 1
        self.sum_ns += lag_ns
        self.recent[self.recent_n & 0xFFFF] = lag_ns
        self.recent_n += 1

    def percentile(self, q: float) -> float | None:
        """The q-quantile (0..1) of the last 65,536 lags, in seconds."""
        n = min(self.recent_n, 65536)
        if n == 0:
            return None
        samples = sorted(self.recent[:n])
        return samples[min(n - 1, int(q * n))] / 1e9


@dataclass(slots=True)
class CollectorStats:
    """What the collector has done. Read by exporters; written by the collector thread only."""

    source: str = ""
    source_reason: str = ""
    filtered: bool = False
    rcvbuf_bytes: int = 0
    events: dict[str, int] = field(default_factory=lambda: dict.fromkeys(EVENT_TYPES, 0))
    parse_errors: dict[str, int] = field(default_factory=dict)
    overruns: int = 0  # ENOBUFS reports
    seq_gap_events: int = 0  # events missing from per-CPU sequences
    kernel_drops: int = 0  # drops the kernel counted for our socket
    events_lost: int = 0  # best estimate per episode: max of the three above
    resyncs: int = 0
    resync_reasons: dict[str, int] = field(default_factory=dict)
    last_resync_s: float = 0.0  # duration of the last /proc walk + reconcile
    polls: int = 0
    wakeups: int = 0  # collector loop iterations (each costs a scheduler wake-up)
    lag: LagRecorder = field(default_factory=LagRecorder)
    snapshot_vanished: int = 0  # processes gone mid-walk
    snapshot_denied: int = 0


class Collector(threading.Thread):
    """Reads process events into ``tree`` until :meth:`stop`."""

    def __init__(self, tree: PidTree, settings: CollectorSettings | None = None,
                 on_ready: Callable[[], None] | None = None) -> None:
        super().__init__(name="proctree-collector", daemon=True)
        self.tree = tree
        self.settings = settings or CollectorSettings()
        self.stats = CollectorStats()
        self.ready = threading.Event()
        self.failed: BaseException | None = None
        self._stop_event = threading.Event()
        self._on_ready = on_ready
        self._sock: nl.ConnectorSocket | None = None
        self._last_seq: dict[int, int] = {}
        self._check_seq = False
        self._resync_due: str | None = None
        self._last_resync = 0.0
        self._drops_seen = 0
        self._gaps_at_resync = 0
        self._overrun_pending = False

    # -- control ---------------------------------------------------------------

    def stop(self, timeout: float | None = 2.0) -> None:
        """Ask the thread to finish and wait for it."""
        self._stop_event.set()
        if self.is_alive():
            self.join(timeout)

    @property
    def netlink_port(self) -> int | None:
        """The netlink port id of the connector socket (None when polling)."""
        return self._sock.port_id if self._sock is not None else None

    def cpu_seconds(self) -> float:
        """CPU time this thread has used so far (readable from any thread)."""
        if self.ident is None:
            return 0.0
        try:
            return time.clock_gettime(time.pthread_getcpuclockid(self.ident))
        except OSError:  # the thread has ended
            return 0.0

    def catch_up(self, timeout: float = 1.0) -> bool:
        """Wait until every event the kernel queued before this call is applied to
        the tree: True, or False after ``timeout`` (a storm that never lets the
        socket empty). Immediately True when polling /proc or not running.

        The kernel queues a fork's event before fork() returns to the parent, so a
        caller that just started a process and then calls this finds it in the tree.
        The collector only reads the socket under the tree lock, so an empty socket
        seen under that lock means nothing queued earlier is still unapplied.
        """
        sock = self._sock
        if sock is None or not self.is_alive():
            return True
        poller = select.poll()
        poller.register(sock.fileno(), select.POLLIN)
        deadline = time.monotonic() + timeout
        while True:
            with self.tree.lock:
                if not poller.poll(0):
                    return True
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.001)

    def request_resync(self, reason: str) -> None:
        """Schedule a /proc resync (rate-limited by ``resync_min_interval_s``)."""
        self._resync_due = self._resync_due or reason

    def open_source(self) -> None:
        """Choose and open the event source; called by :meth:`run`, or early by callers
        that want the choice (and its failure) before starting the thread."""
        if self.stats.source:
            return
        s = self.settings
        if s.source in ("auto", SOURCE_NETLINK):
            try:
                self._sock = nl.ConnectorSocket(rcvbuf_bytes=s.receive_buffer_bytes,
                                                use_filter=s.event_filter)
            except nl.ConnectorUnavailable as exc:
                if s.source == SOURCE_NETLINK:
                    raise
                self.stats.source = SOURCE_PROCFS
                self.stats.source_reason = (
                    f"proc connector unavailable ({exc}); polling /proc every "
                    f"{s.poll_interval_s:g}s: processes shorter than that are missed")
                log.warning("event source", extra={"fields": {
                    "source": SOURCE_PROCFS, "reason": self.stats.source_reason}})
                return
            sub = self._sock.subscription
            self.stats.source = SOURCE_NETLINK
            self.stats.filtered = sub.filtered
            self.stats.rcvbuf_bytes = sub.rcvbuf_bytes
            self._check_seq = not sub.filtered
            self._drops_seen = self._sock.drops() or 0
            self.stats.source_reason = (
                f"proc connector, kernel event filter {'on' if sub.filtered else 'off'}, "
                f"receive buffer {sub.rcvbuf_bytes} bytes"
                f"{'' if sub.rcvbuf_forced else ' (SO_RCVBUFFORCE refused, capped by rmem_max)'}")
            # the kernel doubles what it is asked for (bookkeeping): say both
            log.info("event source", extra={"fields": {
                "source": SOURCE_NETLINK, "filtered": sub.filtered,
                "rcvbuf_bytes": sub.rcvbuf_bytes, "requested_bytes": s.receive_buffer_bytes}})
        else:
            self.stats.source = SOURCE_PROCFS
            self.stats.source_reason = (f"configured: polling /proc every {s.poll_interval_s:g}s; "
                                        f"processes shorter than that are missed")
            log.info("event source", extra={"fields": {"source": SOURCE_PROCFS,
                                                       "reason": "configured"}})

    # -- thread ------------------------------------------------------------------

    def run(self) -> None:
        try:
            self.open_source()
            self._seed()
            self.ready.set()
            if self._on_ready:
                self._on_ready()
            if self._sock is not None:
                self._run_netlink(self._sock)
            else:
                self._run_polling()
        except BaseException as exc:  # surfaced to the owner, never swallowed
            self.failed = exc
            log.exception("collector failed")
            self.ready.set()
        finally:
            if self._sock is not None:
                self._sock.close()

    def _walk(self) -> list[procfs.ProcessInfo]:
        tree = self.tree
        known = tree.known_starts()
        walk_stats = procfs.SnapshotStats()
        infos = tree.reader.snapshot(cmdline_max_chars=tree.cmdline_max_chars,
                                     cgroup=tree.read_cgroups, cmdline=tree.read_cmdlines,
                                     known=known, stats=walk_stats)
        self.stats.snapshot_vanished += walk_stats.vanished
        self.stats.snapshot_denied += walk_stats.denied
        return infos

    def _seed(self) -> None:
        t0 = time.monotonic()
        infos = self._walk()
        with self.tree.lock:
            res = self.tree.reconcile(infos, source=LINEAGE_SNAPSHOT)
        log.info("seeded", extra={"fields": {"processes": res.added,
                                             "seconds": round(time.monotonic() - t0, 3)}})

    def _run_polling(self) -> None:
        interval = self.settings.poll_interval_s
        while not self._stop_event.wait(interval):
            infos = self._walk()
            with self.tree.lock:
                self.tree.reconcile(infos, source=LINEAGE_POLL)
                self.tree.housekeeping()
            self.stats.polls += 1

    def _run_netlink(self, sock: nl.ConnectorSocket) -> None:
        poller = select.poll()
        poller.register(sock.fileno(), select.POLLIN)
        tree = self.tree
        stop = self._stop_event
        now = time.monotonic()
        next_housekeeping = now
        next_drops_check = now + 1.0
        storm = False
        window_end = now + STORM_WINDOW_S
        window_events = 0
        while not stop.is_set():
            if storm:
                # a storm: let events pile up for a moment so that one wake-up (about
                # 20 us of CPU in a VM) serves many, and sleep instead of polling: a
                # poll would wake at the next event only to sleep again. Not otherwise:
                # EXEC details must be read before a short-lived process exits.
                time.sleep(COALESCE_S)
            else:
                poller.poll(HOUSEKEEPING_S * 1000)
            self.stats.wakeups += 1
            # bounded, so that housekeeping, loss checks and resyncs run during a
            # storm the collector cannot outpace
            for _ in range(MAX_BATCHES_PER_WAKE):
                n = self._drain(sock)
                window_events += n
                if n < self.settings.batch_max or stop.is_set():
                    break
            now = time.monotonic()
            if now >= window_end:
                storm = window_events >= STORM_EVENTS_PER_S * STORM_WINDOW_S
                window_end = now + STORM_WINDOW_S
                window_events = 0
            if now >= next_housekeeping:
                next_housekeeping = now + HOUSEKEEPING_S
                with tree.lock:
                    tree.housekeeping()
            if now >= next_drops_check:
                next_drops_check = now + 1.0
                self._check_drops(sock)
            if self._resync_due and now - self._last_resync >= self.settings.resync_min_interval_s:
                self._resync(sock, self._resync_due)

    def _drain(self, sock: nl.ConnectorSocket, limit: int | None = None) -> int:
        """Apply one batch of queued events (``limit``, plus the rest of the last
        datagrams received with it); return how many."""
        stats = self.stats
        ingest = self.ingest
        limit = limit or self.settings.batch_max
        n_events = 0
        with self.tree.lock:
            while n_events < limit:
                try:
                    grams = sock.recv_batch()
                except nl.Overrun:
                    stats.overruns += 1
                    self._overrun_pending = True
                    self.request_resync("overrun")
                    log.warning("overrun: the kernel dropped events (ENOBUFS); resync scheduled")
                    continue
                if not grams:
                    return n_events
                for got in grams:
                    n_events += ingest(*got)
        return n_events

    def ingest(self, buf: bytes | bytearray | memoryview, nbytes: int, sender: int) -> int:
        """Parse one datagram and apply its events; count what is malformed or forged.

        Never raises for bad input: a datagram that does not parse is counted in
        ``stats.parse_errors`` by reason and dropped whole. Call with the tree
        lock held. Returns the number of events applied.
        """
        stats = self.stats
        try:
            records = nl.parse_records(buf, nbytes, sender)
        except nl.ParseError as exc:
            stats.parse_errors[exc.reason] = stats.parse_errors.get(exc.reason, 0) + 1
            log.debug("dropped datagram: %s", exc)
            return 0
        now = time.monotonic_ns()
        counts = stats.events
        lag = stats.lag
        apply = self.tree.apply_record
        for rec in records:
            what = rec[0]
            counts[_NAME_OF[what]] += 1
            if what == _ACK:
                continue
            if self._check_seq:
                self._check_gap(rec[1], rec[2])
            elif not what & _CONSUMED and stats.filtered:
                self._filter_not_honoured()
            apply(rec)
            lag.add(now - rec[3])
        return len(records)

    def _check_gap(self, cpu: int, seq: int) -> None:
        """Count the events missing from ``cpu``'s sequence before ``seq``."""
        prev = self._last_seq.get(cpu)
        if prev is not None:
            gap = (seq - prev - 1) & 0xFFFFFFFF
            if 0 < gap < 0x80000000:
                self.stats.seq_gap_events += gap
                self.request_resync("seq_gap")
        self._last_seq[cpu] = seq

    def _filter_not_honoured(self) -> None:
        """An event outside the filter arrived: the kernel ignored the filter."""
        self.stats.filtered = False
        self._check_seq = True
        self._last_seq.clear()
        log.warning("kernel event filter not honoured; sequence-gap loss detection enabled")

    def _check_drops(self, sock: nl.ConnectorSocket) -> None:
        drops = sock.drops()
        if drops is not None and drops > self._drops_seen:
            self.request_resync("kernel_drops")

    def _resync(self, sock: nl.ConnectorSocket, reason: str) -> None:
        # apply what is already queued first: the walk must be the newest truth
        self._drain(sock, limit=max(self.stats.rcvbuf_bytes // nl.BYTES_PER_QUEUED_EVENT, 64))
        # what the kernel dropped up to now, this walk repairs; drops during the walk
        # must show up as new, so that the next drops check schedules another resync
        drops = sock.drops()
        t0 = time.monotonic()
        self._resync_due = None
        infos = self._walk()
        with self.tree.lock:
            res = self.tree.reconcile(infos, source=LINEAGE_RESYNC)
        self._last_resync = time.monotonic()
        st = self.stats
        drop_delta = 0
        if drops is not None:
            drop_delta = max(drops - self._drops_seen, 0)
            self._drops_seen = drops
            st.kernel_drops += drop_delta
        gap_delta = st.seq_gap_events - self._gaps_at_resync
        self._gaps_at_resync = st.seq_gap_events
        st.events_lost += max(drop_delta, gap_delta, 1 if self._overrun_pending else 0)
        self._overrun_pending = False
        st.resyncs += 1
        st.resync_reasons[reason] = st.resync_reasons.get(reason, 0) + 1
        st.last_resync_s = self._last_resync - t0
        log.warning("resync", extra={"fields": {
            "reason": reason, "lost_estimate": max(drop_delta, gap_delta), "added": res.added,
            "vanished": res.vanished, "reused": res.reused, "reparented": res.reparented,
            "seconds": round(st.last_resync_s, 3)}})

