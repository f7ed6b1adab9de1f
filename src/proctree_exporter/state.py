"""The state file: what only the event stream knew, kept across restarts.

The kernel tells who forked whom once, at FORK. After a restart /proc shows
only current parents, so a wrapper's orphans would come back under PID 1 with
no lineage and no class. The state file keeps, for every live member of every
root whose fork parent is known, its identity and its fork parent's identity
(dead ancestors too, as links), its class, each root's live instances and,
written at a clean shutdown, each root's cumulative figures.

It is written from the typed events alone: :class:`StateWriter` keeps its own
tables from the roots' change logs (:class:`StateTables`) and takes counters
from /metrics' snapshot, on its own thread, never the tree or its lock. Every
``state.interval_seconds`` and at shutdown it writes a temporary file, fsyncs
it, renames it over the old one and fsyncs the directory, so a crash leaves
the old file or the new one.

Format, version 1: one ASCII header line, then a UTF-8 JSON body::

    proctree-exporter-state 1 <body bytes> <sha256 of the body, hex>\n
    {"written_at": ..., "clean": ..., "boot_id": ..., "classes": [...],
     "processes": {"table": "<base64>", "comms": "<NUL-separated>"}, "roots": [...]}

The per-process tables (``processes.table``: pid, start, parent pid, parent
start, alive; each root's ``members``: pid, start, depth, class index) are
little-endian int64 arrays in base64, -1 for "none": as JSON lists they cost
2.5 µs a row to encode on the 2-core VM, most of a write at 10,000 processes.

Readers of version 1 ignore keys they do not know; a change that old readers
would misread gets a new version, which they refuse. A file is refused as a
whole, with one reason (:data:`IGNORE_REASONS`): unreadable, truncated,
corrupt (header, checksum or content), version (another format), other_boot
(start times count from boot, so another boot's identities name nothing).
Nothing in a refused file is used.
"""

from __future__ import annotations

import base64
import json
import logging
import os
import sys
import threading
import time
import zlib
from array import array
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from itertools import chain
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

from .changelog import ChangeLog, EventSource, Relist, read_root
from .classification import EXITED, HEALTHY, ORPHANED, PID_REUSED, ZOMBIE
from .events import EventKind, RootEvent
from .identity import Identity
from .membership import SavedCounters, SavedMember, SavedRoot
from .tree import SavedProcess

if TYPE_CHECKING:  # snapshot.py imports StateStats from here
    from .snapshot import RootSnapshot

log = logging.getLogger(__name__)

MAGIC = b"proctree-exporter-state"
VERSION = 1
MAX_HEADER = 128
BOOT_ID_PATH = Path("/proc/sys/kernel/random/boot_id")

IGNORE_UNREADABLE = "unreadable"
IGNORE_TRUNCATED = "truncated"
IGNORE_CORRUPT = "corrupt"
IGNORE_VERSION = "version"
IGNORE_OTHER_BOOT = "other_boot"
IGNORE_REASONS = (IGNORE_UNREADABLE, IGNORE_TRUNCATED, IGNORE_CORRUPT, IGNORE_VERSION,
                  IGNORE_OTHER_BOOT)


class StateError(Exception):
    """A state file that cannot be used; ``reason`` is one of :data:`IGNORE_REASONS`."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


class StateDoc(NamedTuple):
    """The content of a state file."""

    written_at: float  # wall-clock seconds
    clean: bool  # written at a clean shutdown: the root counters may continue
    boot_id: str
    processes: tuple[SavedProcess, ...]
    roots: tuple[SavedRoot, ...]
    # roots added through the write API: name, keys (config.yaml's), created_at, created_by
    runtime_roots: tuple[dict[str, Any], ...] = ()


def boot_id() -> str:
    """This boot's id (the kernel's random boot_id), or "" if unreadable."""
    try:
        return BOOT_ID_PATH.read_text(encoding="ascii").strip()
    except OSError:
        return ""


# -- format ----------------------------------------------------------------------------


def encode(doc: StateDoc) -> bytes:
    """The bytes of a state file holding ``doc``."""
    table: list[int] = []
    for p in doc.processes:
        parent = p.parent
        table.extend((p.pid, p.start_ticks, parent.pid if parent else NONE,
                      parent.start_ticks if parent else NONE, int(p.alive)))
    roots = []
    for r in doc.roots:
        members: list[int] = []
        for m in r.members:
            members.extend((m.identity.pid, m.identity.start_ticks, m.depth,
                            _CLASS_INDEX[m.cls]))
        roots.append(_root_json(r.name, r.select, r.match, r.had_instance,
                                [list(i) for i in r.instances], members, r.counters))
    return _frame(doc.written_at, doc.clean, doc.boot_id, table,
                  [p.comm or "" for p in doc.processes], roots, doc.runtime_roots)


NONE = -1  # in the integer tables: no parent
PROCESS_COLUMNS = 5  # pid, start, parent pid, parent start, alive (0/1)
MEMBER_COLUMNS = 4  # pid, start, depth, class (an index into "classes")
CLASSES = (HEALTHY, ORPHANED, ZOMBIE, EXITED, PID_REUSED)
_CLASS_INDEX = {str(c): i for i, c in enumerate(CLASSES)}


def _pack(ints: list[int] | array[int]) -> str:
    a = ints if isinstance(ints, array) else array("q", ints)
    if sys.byteorder == "big":
        a = array("q", a)
        a.byteswap()
    return base64.b64encode(a.tobytes()).decode("ascii")


def _unpack(text: Any, columns: int) -> list[int]:
    raw = base64.b64decode(_str(text), validate=True)
    if len(raw) % (8 * columns):
        raise ValueError(f"a table of {len(raw)} bytes is not a whole number of rows")
    a = array("q")
    a.frombytes(raw)
    if sys.byteorder == "big":
        a.byteswap()
    if a and min(a) < NONE:
        raise ValueError("a negative number in a table")
    return a.tolist()


def _root_json(name: str, select: str, match: str, had_instance: bool,
               instances: list[list[int]], members: list[int] | array[int],
               counters: SavedCounters | None) -> dict[str, Any]:
    out: dict[str, Any] = {"name": name, "select": select, "match": match,
                           "had_instance": had_instance, "instances": instances,
                           "members": _pack(members)}
    if counters is not None:
        c = counters
        out["counters"] = {
            "spawned": c.spawned_total, "exited": c.exited_total, "restarts": c.restarts_total,
            "pid_reuse": c.pid_reuse_total, "class_changes": c.class_changes_total,
            "actions": [[a, o, n] for (a, o), n in c.actions_total.items()]}
    return out


def _frame(written_at: float, clean: bool, boot: str, table: list[int] | array[int],
           comms: list[str], roots: list[dict[str, Any]],
           runtime_roots: Iterable[dict[str, Any]] = ()) -> bytes:
    doc = {
        "written_at": written_at, "clean": clean, "boot_id": boot,
        "classes": [str(c) for c in CLASSES],
        # comms NUL-separated: one string encodes far faster than a list of them
        "processes": {"table": _pack(table), "comms": "\0".join(comms)},
        "roots": roots,
    }
    runtime = list(runtime_roots)
    if runtime:  # a key version 1 readers without it ignore
        doc["runtime_roots"] = runtime
    body = json.dumps(doc, separators=(",", ":"), ensure_ascii=False).encode()
    return b"%s %d %d %08x\n" % (MAGIC, VERSION, len(body), zlib.crc32(body)) + body


def decode(data: bytes, *, boot: str) -> StateDoc:
    """Parse and check a state file; :class:`StateError` says why it cannot be used."""
    nl = data.find(b"\n", 0, MAX_HEADER)
    if nl < 0:
        if len(data) < MAX_HEADER and MAGIC.startswith(data[:len(MAGIC)]):
            raise StateError(IGNORE_TRUNCATED, f"header cut short at byte {len(data)}")
        raise StateError(IGNORE_CORRUPT, "no header line")
    parts = data[:nl].split(b" ")
    if len(parts) != 4 or parts[0] != MAGIC:
        raise StateError(IGNORE_CORRUPT, "not a proctree-exporter state file")
    try:
        version, length = int(parts[1]), int(parts[2])
    except ValueError:
        raise StateError(IGNORE_CORRUPT, "bad header") from None
    if version != VERSION:
        raise StateError(IGNORE_VERSION,
                         f"format version {version}, this exporter reads {VERSION}")
    body = data[nl + 1:]
    if len(body) < length:
        raise StateError(IGNORE_TRUNCATED, f"{len(body)} of {length} bytes")
    if len(body) > length:
        raise StateError(IGNORE_CORRUPT, f"{len(body) - length} bytes after the document")
    if b"%08x" % zlib.crc32(body) != parts[3]:
        raise StateError(IGNORE_CORRUPT, "checksum mismatch")
    try:
        doc = json.loads(body)
        return _decode_doc(doc, boot)
    except StateError:
        raise
    except (ValueError, TypeError, KeyError, IndexError, AttributeError) as exc:
        # checksummed but malformed: written by a broken or foreign writer
        raise StateError(IGNORE_CORRUPT, f"bad content: {type(exc).__name__}: {exc}") from None


def _int(v: Any) -> int:
    if type(v) is not int or v < 0:
        raise ValueError(f"expected a non-negative integer, got {v!r}")
    return v


def _str(v: Any) -> str:
    if not isinstance(v, str):
        raise ValueError(f"expected a string, got {v!r}")
    return v


def _rows(flat: list[int], columns: int) -> Iterator[tuple[int, ...]]:
    it = iter(flat)
    return zip(*[it] * columns, strict=True)


def _decode_doc(doc: Any, boot: str) -> StateDoc:
    if not isinstance(doc, dict):
        raise ValueError("the document is not an object")
    saved_boot = _str(doc["boot_id"])
    if saved_boot != boot:
        raise StateError(IGNORE_OTHER_BOOT, f"written during boot {saved_boot or '?'}, "
                         f"this is boot {boot or '?'}")
    classes = [_str(c) for c in doc["classes"]]
    procs = doc["processes"]
    table = list(_rows(_unpack(procs["table"], PROCESS_COLUMNS), PROCESS_COLUMNS))
    comms = _str(procs["comms"]).split("\0") if table else []
    if len(comms) != len(table):
        raise ValueError("processes: as many comms as rows")
    processes = []
    for (pid, start, ppid, pstart, alive), comm in zip(table, comms, strict=True):
        if alive not in (0, 1) or pid < 0 or start < 0 or (ppid < 0) != (pstart < 0):
            raise ValueError(f"processes: a bad row for pid {pid}")
        processes.append(SavedProcess(pid, start, Identity(ppid, pstart) if ppid >= 0 else None,
                                      comm or None, bool(alive)))
    roots = []
    for r in doc["roots"]:
        counters = None
        c = r.get("counters")
        if c is not None:
            counters = SavedCounters(
                _int(c["spawned"]), _int(c["exited"]), _int(c["restarts"]),
                _int(c["pid_reuse"]),
                {_str(k): _int(v) for k, v in c["class_changes"].items()},
                {(_str(a), _str(o)): _int(n) for a, o, n in c["actions"]})
        members = []
        for pid, start, depth, cls in _rows(_unpack(r["members"], MEMBER_COLUMNS),
                                            MEMBER_COLUMNS):
            members.append(SavedMember(Identity(pid, start), depth, classes[cls]))
        roots.append(SavedRoot(
            _str(r["name"]), _str(r["select"]), _str(r["match"]), bool(r["had_instance"]),
            tuple(Identity(_int(p), _int(s)) for p, s in r["instances"]), tuple(members),
            counters))
    written = doc["written_at"]
    if not isinstance(written, int | float):
        raise ValueError("written_at is not a number")
    runtime = doc.get("runtime_roots", [])
    if not isinstance(runtime, list) or not all(isinstance(r, dict) for r in runtime):
        raise ValueError("runtime_roots is not a list of objects")
    return StateDoc(float(written), bool(doc["clean"]), saved_boot, tuple(processes),
                    tuple(roots), tuple(runtime))


def read(path: Path, *, boot: str) -> StateDoc | None:
    """The state file at ``path``; None if there is none. :class:`StateError` if unusable."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise StateError(IGNORE_UNREADABLE, exc.strerror or str(exc)) from None
    return decode(data, boot=boot)


def write_atomically(path: Path, data: bytes) -> None:
    """Replace ``path`` by ``data``: temporary file, fsync, rename, fsync of the directory."""
    directory = path.parent
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    tmp = directory / f".{path.name}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)
    dfd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)


# -- what goes in -----------------------------------------------------------------------


class _RootTables:
    """One root's rows for the file, kept from its events (see :class:`StateTables`)."""

    __slots__ = ("comms", "had_instance", "instances", "links", "log", "members", "procs",
                 "seq", "spec")

    def __init__(self, log: ChangeLog, rl: Relist) -> None:
        self.log = log
        self.seq = rl.seq
        self.spec = rl.spec
        self.had_instance = rl.had_instance
        self.instances: dict[tuple[int, int], None] = {}
        # live members whose fork parent is known: (pid, start, depth, class index)
        self.members: dict[tuple[int, int], tuple[int, int, int, int]] = {}
        # live members and instances, and exited members still kept (dead parents):
        # (pid, start, parent pid, parent start, alive); comms in the same key order
        self.procs: dict[tuple[int, int], tuple[int, int, int, int, int]] = {}
        self.comms: dict[tuple[int, int], str] = {}
        # orphan -> its dead fork parent, as the event that made it an orphan named it
        self.links: dict[tuple[int, int], tuple[tuple[int, int], str]] = {}
        for ev in rl.events:
            self.apply(ev)

    def apply(self, ev: RootEvent) -> None:
        kind = ev.kind
        key = (ev.pid, ev.start_ticks)
        if kind is EventKind.JOINED:
            known = ev.lineage_known and ev.lineage_ppid is not None \
                and ev.lineage_start is not None
            parent = (ev.lineage_ppid, ev.lineage_start) if known else (NONE, NONE)
            self.procs[key] = (ev.pid, ev.start_ticks, *parent, 1)  # type: ignore[assignment]
            self.comms[key] = ev.comm or ""
            if ev.depth == 0:
                self.instances[key] = None
            if known:
                self.members[key] = (ev.pid, ev.start_ticks, ev.depth or 0, 0)
        elif kind is EventKind.EXITED:
            row = self.procs.get(key)
            if row is not None:
                self.procs[key] = (*row[:4], 0)
            self.members.pop(key, None)
            self.instances.pop(key, None)
            self.links.pop(key, None)
        elif kind is EventKind.LEFT:
            if self.procs.pop(key, None) is not None:
                del self.comms[key]
        elif kind is EventKind.CLASS:
            member = self.members.get(key)
            new = ev.new_class
            if member is not None and new is not None:
                self.members[key] = (*member[:3], _CLASS_INDEX[new])
            if new == ORPHANED and ev.other_pid is not None \
                    and ev.other_start_ticks is not None:
                self.links[key] = ((ev.other_pid, ev.other_start_ticks), ev.other_comm or "")
        elif kind is EventKind.EXEC:
            if key in self.comms:
                self.comms[key] = ev.comm or ""
        elif kind is EventKind.ROOT_UP:
            self.had_instance = True


class StateTables:
    """What goes into the state file, kept from the roots' typed events.

    Its own cursor on each root's change log: :meth:`sync` applies what happened
    since the last call, O(changes); a root seen first, or whose log moved on by
    more than it holds, is relisted (O(members), once). :meth:`render` turns the
    tables into the file's bytes with C-level copies, without a Python step per
    process: at 10,000 processes, rebuilding every row from the mirrors on each
    write took 80-90 ms here, this takes a few ms (bench/state.py).
    """

    def __init__(self, source: EventSource) -> None:
        self.source = source
        self.roots: dict[str, _RootTables] = {}

    def sync(self) -> None:
        """Apply every root's events since the last sync."""
        source = self.source
        names = source.root_names()
        for name in [n for n in self.roots if n not in names]:
            del self.roots[name]
        for name in names:
            t = self.roots.get(name)
            try:
                log, relist, events = read_root(source, name, t.log if t else None,
                                                t.seq if t else 0)
            except KeyError:  # removed meanwhile
                self.roots.pop(name, None)
                continue
            if relist is not None or t is None:
                assert relist is not None
                t = self.roots[name] = _RootTables(log, relist)
            for ev in events:
                t.apply(ev)
                t.seq = ev.seq

    def render(self, counters: Iterable[RootSnapshot] | None, *, clean: bool,
               boot: str, runtime_roots: Iterable[dict[str, Any]] = ()) -> bytes:
        """The state file's bytes for the tables as of the last :meth:`sync` and, at a
        clean shutdown, /metrics' per-root counters."""
        procs: dict[tuple[int, int], tuple[int, int, int, int, int]] = {}
        comms: dict[tuple[int, int], str] = {}
        for t in self.roots.values():
            procs.update(t.procs)  # procs and comms: the same keys in the same order
            comms.update(t.comms)
        for t in self.roots.values():
            for link, comm in t.links.values():
                if link not in procs:
                    procs[link] = (*link, NONE, NONE, 0)
                    comms[link] = comm
        by_name = {r.name: r for r in counters} if counters is not None else {}
        roots = []
        for name, t in self.roots.items():
            snap = by_name.get(name)
            spec = t.spec
            roots.append(_root_json(
                name, spec.select, spec.match, t.had_instance, [list(k) for k in t.instances],
                array("q", chain.from_iterable(t.members.values())),
                SavedCounters(snap.spawned_total, snap.exited_total, snap.restarts_total,
                              snap.pid_reuse_total, dict(snap.class_changes),
                              dict(snap.actions)) if snap is not None else None))
        return _frame(time.time(), clean, boot, array("q", chain.from_iterable(procs.values())),
                      list(comms.values()), roots, runtime_roots)


# -- the writer -------------------------------------------------------------------------


@dataclass(slots=True)
class StateStats:
    """What /metrics shows of the state file."""

    enabled: bool = False
    writes_total: int = 0
    write_failures_total: int = 0
    last_write_ts: float = 0.0
    last_write_seconds: float = 0.0
    last_write_bytes: int = 0
    ignored: dict[str, int] = field(default_factory=lambda: dict.fromkeys(IGNORE_REASONS, 0))
    restored_processes: int = 0
    restored_members: int = 0
    dropped: dict[str, int] = field(default_factory=dict)  # reason -> saved processes
    counters_continued: bool = False


class StateWriter:
    """Writes the state file every ``interval_s`` and at :meth:`stop`, on its own thread."""

    def __init__(self, path: Path, interval_s: float, source: EventSource,
                 counters: Callable[[], Iterable[RootSnapshot]], stats: StateStats,
                 boot: str,
                 runtime_roots: Callable[[], Iterable[dict[str, Any]]] = lambda: ()) -> None:
        self.path = path
        self.runtime_roots = runtime_roots
        self.interval_s = interval_s
        self.tables = StateTables(source)
        self.counters = counters
        self.stats = stats
        self.boot = boot
        self._stop = threading.Event()
        self._lock = threading.Lock()  # one write at a time (the loop's, or the last one)
        self._thread = threading.Thread(target=self._run, name="proctree-state", daemon=True)

    def start(self) -> None:
        """Write now (marking any clean file as used), then every interval."""
        self.write(clean=False)
        self._thread.start()

    def stop(self) -> None:
        """Stop the loop and write the final, clean state."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()
        self.write(clean=True)

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            self.write(clean=False)

    def write(self, *, clean: bool) -> bool:
        """Capture and write the state now; False (logged, counted) if it failed."""
        with self._lock:
            t0 = time.perf_counter()
            try:
                # counters first: the members are then at least as new as them
                counters = self.counters() if clean else None
                self.tables.sync()
                data = self.tables.render(counters, clean=clean, boot=self.boot,
                                          runtime_roots=self.runtime_roots())
                write_atomically(self.path, data)
            except OSError as exc:
                self.stats.write_failures_total += 1
                log.error("cannot write the state file", extra={"fields": {
                    "path": str(self.path), "error": exc.strerror or str(exc)}})
                return False
            s = self.stats
            s.writes_total += 1
            s.last_write_ts = time.time()
            s.last_write_seconds = time.perf_counter() - t0
            s.last_write_bytes = len(data)
            return True
