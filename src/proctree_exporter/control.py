"""Control: roots added, removed and killed at run time.

The write API (``PUT``/``DELETE /api/v1/roots/{name}``, ``POST .../kill``), and
through it the ``roots`` CLI, come through :class:`Controller`; the Python API
(:mod:`.monitor`) uses :func:`kill_tree` and :func:`kill_process` directly.

A kill signals the root's live members, never anything else: the targets are
listed under the tree lock from the root's membership, and each signal goes
through a pidfd checked against the member's identity (:func:`.actions.
send_to_identity`), so a stranger that got a member's pid meanwhile is not
reached. SIGTERM first; members that appear meanwhile (forked by a dying
parent) get it too; after the grace, SIGKILL to whatever is left. For a
``cgroup`` root the SIGKILL step writes the cgroup's ``cgroup.kill``, which
no fork can escape, then signals any member outside the cgroup. PID 1 and the
exporter itself are never signalled.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from .actions import ActionOutcome, send_to_identity
from .config import RootConfig
from .identity import Identity
from .membership import Roots, SavedRoot
from .procfs import PROC, AccessDenied, ProcessGone, read_cgroup
from .rootspec import RootSpec
from .tree import Node

log = logging.getLogger(__name__)

# between looks at what is left of a tree being killed, unless the collector reports a
# change sooner (the roots' wakeup)
SWEEP_INTERVAL_S = 0.02
KILL_WAIT_S = 2.0  # after SIGKILL: how long to wait for the last member to go
MAX_GRACE_S = 600.0
_PROTECTED = frozenset({1, os.getpid()})

# per-process outcomes of a kill (the report's "outcome")
EXITED, KILLED, GONE, SURVIVED, PROTECTED = "exited", "killed", "gone", "survived", "protected"


class ControlError(Exception):
    """A write that cannot be done: ``status`` is the HTTP status, ``key`` the
    offending key of the request, if one is to blame."""

    def __init__(self, status: int, message: str, key: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.key = key

    def doc(self) -> dict[str, Any]:
        """The JSON error body."""
        out: dict[str, Any] = {"error": str(self)}
        if self.key is not None:
            out["key"] = self.key
        return out


# -- root specs from requests ---------------------------------------------------------------


def spec_from_body(name: str, body: Any) -> tuple[RootSpec, dict[str, Any]]:
    """A runtime root's spec from a request body holding a root's config.yaml keys,
    validated as config.yaml's roots are; and the keys as given (for the state file).
    :class:`ControlError` (400) names the offending key."""
    if not isinstance(body, dict):
        raise ControlError(400, "the body must be a JSON object with a root's keys "
                           "(select, match, ...)")
    if "name" in body and body["name"] != name:
        raise ControlError(400, f"name {body['name']!r} in the body is not the name in "
                           f"the path ({name!r})", key="name")
    try:
        cfg = RootConfig.model_validate({**body, "name": name})
    except ValidationError as exc:
        err = exc.errors()[0]
        loc = [str(p) for p in err["loc"]]
        if err["type"] == "missing":
            raise ControlError(400, f"missing key {loc[-1]!r}", key=".".join(loc)) from None
        if err["type"] == "extra_forbidden":
            raise ControlError(400, f"unknown key {'.'.join(loc)!r}",
                               key=".".join(loc)) from None
        msg = err["msg"].removeprefix("Value error, ")
        key = ".".join(loc) or (msg.split(":", 1)[0] if ":" in msg else None)
        if key == "name":
            msg = "a name of letters, digits and _.:- (at most 64), not starting with a digit"
        raise ControlError(400, f"{key}: {msg}" if key else msg, key=key) from None
    keys = cfg.model_dump(exclude_defaults=True, exclude={"name"})
    keys["select"], keys["match"] = cfg.select, str(cfg.match)
    return cfg.spec(runtime=True), keys


# -- kills ----------------------------------------------------------------------------------


@dataclass(slots=True)
class _Target:
    identity: Identity
    comm: str | None
    depth: int
    signals: list[str] = field(default_factory=list)
    outcome: str | None = None  # final once set by a refusal; else decided at the end
    live: bool = True


@dataclass(slots=True)
class KillReport:
    """What a kill did, per process (see README, "Write API")."""

    root: str
    target: str  # "tree" or "process"
    method: str  # "signals" or "cgroup.kill"
    grace_seconds: float
    seconds: float
    processes: list[dict[str, Any]]
    remaining: int

    @property
    def complete(self) -> bool:
        """Whether every process meant is gone."""
        return self.remaining == 0

    def doc(self) -> dict[str, Any]:
        """The JSON body."""
        return {"root": self.root, "target": self.target, "method": self.method,
                "grace_seconds": self.grace_seconds, "complete": self.complete,
                "seconds": round(self.seconds, 4), "processes": self.processes,
                "remaining": self.remaining}


def cgroup2_mount(proc: str = PROC) -> Path | None:
    """Where the unified (v2) cgroup hierarchy is mounted, or None."""
    try:
        text = Path(proc, "self", "mountinfo").read_text()
    except OSError:
        return None
    for line in text.splitlines():
        pre, sep, post = line.partition(" - ")
        if sep and post.split(" ", 1)[0] == "cgroup2":
            fields = pre.split(" ")
            if len(fields) > 4 and fields[3] == "/":
                return Path(fields[4])
    return None


def _cgroup_kill(path: str) -> str | None:
    """Write ``cgroup.kill`` of cgroup ``path``; None when done, else why not."""
    mount = cgroup2_mount()
    if mount is None:
        return "no cgroup v2 hierarchy is mounted"
    inside = path.rstrip("/")
    if not inside:
        return "the root cgroup cannot be killed"
    for pid, who in ((os.getpid(), "the exporter"), (1, "PID 1")):  # never us, never init
        try:
            cg = read_cgroup(pid)
        except (ProcessGone, AccessDenied):
            cg = None
        if cg is not None and (cg == inside or cg.startswith(inside + "/")):
            return f"{who} is in that cgroup"
    try:
        with open(mount / inside.lstrip("/") / "cgroup.kill", "w") as f:
            f.write("1")
    except OSError as exc:
        return f"cgroup.kill: {exc.strerror or exc}"
    return None


def _kill(roots: Roots, name: str, what: str, targets: Callable[[], list[Node]], *,
          grace_s: float, catch_up: Callable[[float], object], owner: int | None,
          cgroup: str | None) -> KillReport:
    t0 = time.monotonic()
    seen: dict[Identity, _Target] = {}

    def sweep(sig: int | None) -> int:
        """Signal the current targets not yet given ``sig``; return those still live."""
        catch_up(0.2)
        with roots.tree.lock:
            now = [(n.identity, n.start_exact, n.comm, roots.roots[name].members.get(n, 0))
                   for n in targets()] if name in roots.roots else []
        live_now = {ident for ident, *_ in now}
        for t in seen.values():
            t.live = t.identity in live_now
        for ident, exact, comm, depth in now:
            t = seen.get(ident)
            if t is None:
                t = seen[ident] = _Target(ident, comm, depth)
            if t.outcome is not None or sig is None:
                continue
            if ident.pid in _PROTECTED:
                t.outcome = PROTECTED
                continue
            signame = signal.Signals(sig).name
            if signame in t.signals:
                continue
            outcome = send_to_identity(ident, sig, exact=exact, owner=owner)
            if outcome is ActionOutcome.SENT:
                t.signals.append(signame)
            elif outcome is not ActionOutcome.GONE:  # identity_changed, not_permitted, failed
                t.outcome = str(outcome)
                t.live = outcome is ActionOutcome.NOT_PERMITTED
        return sum(1 for t in seen.values() if t.live and t.outcome is None)

    def settle(deadline: float) -> bool:
        """Wait for the collector's next change (or a sweep interval); False past
        ``deadline``."""
        if time.monotonic() >= deadline:
            return False
        gen[0] = roots.wakeup.wait(gen[0], min(SWEEP_INTERVAL_S,
                                               max(deadline - time.monotonic(), 0)))
        return True

    gen = [roots.wakeup.generation]
    method = "signals"
    if grace_s > 0:
        deadline = t0 + grace_s
        while sweep(signal.SIGTERM) and settle(deadline):
            pass
    else:
        sweep(None)  # who is there: the report lists them
    # cgroup.kill bypasses the per-process owner check: only for a privileged caller
    if cgroup is not None and owner is None and any(
            t.live and t.outcome is None for t in seen.values()):
        why = _cgroup_kill(cgroup)
        if why is None:
            method = "cgroup.kill"
            for t in seen.values():
                if t.live and t.outcome is None:
                    t.signals.append("cgroup.kill")
        else:
            log.info("cgroup.kill not used", extra={"fields": {"root": name, "reason": why}})
    deadline = time.monotonic() + KILL_WAIT_S
    while sweep(signal.SIGKILL) and settle(deadline):
        pass
    sweep(None)  # who is left, after the last signals
    processes = []
    remaining = 0
    for t in seen.values():
        outcome = t.outcome
        if outcome is None:
            if t.live:
                outcome = SURVIVED
            elif "SIGKILL" in t.signals or "cgroup.kill" in t.signals:
                outcome = KILLED
            elif t.signals:
                outcome = EXITED
            else:
                outcome = GONE
        if t.live:
            remaining += 1
        processes.append({"pid": t.identity.pid, "start_ticks": t.identity.start_ticks,
                          "comm": t.comm, "depth": t.depth, "signals": t.signals,
                          "outcome": outcome})
    return KillReport(name, what, method, grace_s, time.monotonic() - t0, processes, remaining)


def kill_tree(roots: Roots, name: str, *, grace_s: float,
              catch_up: Callable[[float], object] = lambda _t: None,
              owner: int | None = None) -> KillReport:
    """End root ``name``'s whole tree, orphans included (see the module docstring).
    ``owner``: signal only processes of this uid (a non-root caller). KeyError for an
    unknown root."""
    catch_up(1.0)
    with roots.tree.lock:
        spec = roots.roots[name].spec
    return _kill(roots, name, "tree", lambda: roots.kill_targets(name), grace_s=grace_s,
                 catch_up=catch_up, owner=owner,
                 cgroup=spec.match if spec.select == "cgroup" else None)


def kill_process(roots: Roots, name: str, pid: int, start_ticks: int, *, grace_s: float,
                 catch_up: Callable[[float], object] = lambda _t: None,
                 owner: int | None = None) -> KillReport:
    """End one live member of root ``name``, named by identity: SIGTERM, SIGKILL after
    the grace. LookupError if no live member has that identity; KeyError for an
    unknown root."""
    catch_up(1.0)
    with roots.tree.lock:
        node = roots.member(name, pid, start_ticks)
        if node is None:
            raise LookupError(f"no live member of root {name!r} is pid {pid} started at "
                              f"tick {start_ticks}")

    def targets() -> list[Node]:
        return [node] if roots.member(name, pid, start_ticks) is node else []

    return _kill(roots, name, "process", targets, grace_s=grace_s, catch_up=catch_up,
                 owner=owner, cgroup=None)


# -- the controller ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class RuntimeRoot:
    """A root added through the write API."""

    spec: RootSpec
    keys: Mapping[str, Any]  # its config.yaml keys, as accepted
    created_at: float
    created_by: str

    def saved(self) -> dict[str, Any]:
        """As the state file keeps it."""
        return {"name": self.spec.name, "keys": dict(self.keys),
                "created_at": self.created_at, "created_by": self.created_by}


@dataclass(slots=True)
class ControlStats:
    """What /metrics shows of the write API."""

    enabled: bool = False
    writes: dict[tuple[str, str], int] = field(default_factory=dict)  # (operation, code)
    runtime_roots: int = 0
    restored: int = 0
    gone: int = 0


class Controller:
    """Runtime roots and kills for the write API. Any thread; one write at a time."""

    def __init__(self, roots: Roots, *, catch_up: Callable[[float], object],
                 config_names: Callable[[], Iterable[str]], max_runtime_roots: int,
                 grace_s: float, stats: ControlStats) -> None:
        self.roots = roots
        self.catch_up = catch_up
        self.config_names = config_names
        self.max_runtime_roots = max_runtime_roots
        self.grace_s = grace_s
        self.stats = stats
        self.runtime: dict[str, RuntimeRoot] = {}
        self._lock = threading.Lock()

    def set_config_roots(self, specs: Iterable[RootSpec]) -> None:
        """Apply a reloaded config's roots, keeping the runtime ones (ValueError if the
        config now names one of them: the reload fails, nothing changes)."""
        specs = list(specs)
        with self._lock:
            clash = sorted(s.name for s in specs if s.name in self.runtime)
            if clash:
                raise ValueError(f"roots: {', '.join(map(repr, clash))} exist as runtime "
                                 "roots: remove them through the API first, or rename")
            self.roots.set_roots([*specs, *(r.spec for r in self.runtime.values())])

    def is_runtime(self, name: str) -> bool:
        """Whether ``name`` was added at run time."""
        return name in self.runtime

    def ensure(self, name: str, body: Any, who: str) -> bool:
        """Add runtime root ``name`` from a request body; True if created, False if an
        identical one was there. ControlError: 400 (bad keys), 409 (a config root, a
        different runtime root, or too many)."""
        spec, keys = spec_from_body(name, body)
        with self._lock:
            if name in set(self.config_names()):
                raise ControlError(409, f"root {name!r} comes from config.yaml: change "
                                   "it there", key="name")
            have = self.runtime.get(name)
            if have is not None:
                if have.spec != spec:
                    raise ControlError(409, f"a different root named {name!r} exists "
                                       "(remove it first)", key="name")
                return False
            if name in self.roots.roots:  # attached otherwise (cannot happen in the daemon)
                raise ControlError(409, f"root {name!r} exists", key="name")
            if len(self.runtime) >= self.max_runtime_roots:
                raise ControlError(409, f"already {len(self.runtime)} runtime roots "
                                   "(api.write.max_runtime_roots)")
            # every process started before the request is in the tree, and every exit
            # settled (the kernel's reparenting read): members found, orphans classed
            self.catch_up(1.0)
            with self.roots.tree.lock:
                self.roots.tree.housekeeping(settle=True)
                self.roots.add(spec)
            self.runtime[name] = RuntimeRoot(spec, keys, time.time(), who)
            self.stats.runtime_roots = len(self.runtime)
        return True

    def remove(self, name: str, *, kill: bool, grace_s: float | None,
               owner: int | None) -> KillReport | None:
        """Stop tracking runtime root ``name``, after killing its tree if ``kill``."""
        self._runtime(name)
        report = None
        if kill:
            report = kill_tree(self.roots, name, grace_s=self._grace(grace_s),
                               catch_up=self.catch_up, owner=owner)
        with self._lock:
            if self.runtime.pop(name, None) is not None:
                self.roots.remove(name)
            self.stats.runtime_roots = len(self.runtime)
        return report

    def kill(self, name: str, *, pid: int | None = None, start_ticks: int | None = None,
             grace_s: float | None, owner: int | None) -> KillReport:
        """Kill runtime root ``name``'s tree, or one member of it by identity."""
        self._runtime(name)
        grace = self._grace(grace_s)
        try:
            if pid is None:
                return kill_tree(self.roots, name, grace_s=grace, catch_up=self.catch_up,
                                 owner=owner)
            assert start_ticks is not None
            return kill_process(self.roots, name, pid, start_ticks, grace_s=grace,
                                catch_up=self.catch_up, owner=owner)
        except KeyError:
            raise ControlError(404, f"no root {name!r}") from None
        except LookupError as exc:
            raise ControlError(404, str(exc), key="pid") from None

    def _runtime(self, name: str) -> None:
        if name in self.runtime:
            return
        if name in set(self.config_names()):
            raise ControlError(409, f"root {name!r} comes from config.yaml: only runtime "
                               "roots are removed or killed through the API", key="name")
        raise ControlError(404, f"no runtime root {name!r}")

    def _grace(self, grace_s: float | None) -> float:
        if grace_s is None:
            return self.grace_s
        if not 0 <= grace_s <= MAX_GRACE_S:
            raise ControlError(400, f"grace_seconds: between 0 and {MAX_GRACE_S:g}",
                               key="grace_seconds")
        return grace_s

    # -- the state file ----------------------------------------------------------------------

    def saved(self) -> list[dict[str, Any]]:
        """The runtime roots as the state file keeps them."""
        return [r.saved() for r in list(self.runtime.values())]

    def restore(self, saved: Iterable[Mapping[str, Any]],
                saved_roots: Iterable[SavedRoot]) -> list[RootSpec]:
        """Add back the runtime roots an earlier run kept (tree lock held by the
        caller, before :meth:`.Roots.restore`); return their specs. A pid root comes
        back only onto its saved instance's identity (never a stranger holding the
        pid); see :meth:`forget_gone` for those with nothing left."""
        instances = {r.name: r.instances for r in saved_roots}
        taken = set(self.config_names())
        specs = []
        for entry in saved:
            try:
                name = str(entry["name"])
                spec, keys = spec_from_body(name, dict(entry["keys"]))
                created_at, created_by = float(entry["created_at"]), str(entry["created_by"])
            except (ControlError, KeyError, TypeError, ValueError) as exc:
                log.warning("runtime root not restored", extra={"fields": {
                    "root": str(entry.get("name", "?")) if isinstance(entry, Mapping)
                    else "?", "reason": str(exc)}})
                continue
            if name in taken or name in self.roots.roots:
                log.warning("runtime root not restored", extra={"fields": {
                    "root": name, "reason": "config.yaml now has a root of that name"}})
                continue
            self.roots.add(spec, instances=instances.get(name, ()))
            self.runtime[name] = RuntimeRoot(spec, keys, created_at, created_by)
            specs.append(spec)
        self.stats.restored = len(specs)
        self.stats.runtime_roots = len(self.runtime)
        return specs

    def forget_gone(self) -> list[str]:
        """Drop restored pid roots with no instance and no member left (their process
        exited, or its pid went to a stranger, while the exporter was down); return
        their names. Call after :meth:`.Roots.restore`."""
        gone = []
        with self.roots.tree.lock:
            for name, rr in list(self.runtime.items()):
                root = self.roots.roots.get(name)
                if rr.spec.select == "pid" and root is not None and not root.instances \
                        and not root.members and not root.unreaped:
                    self.roots.remove(name)
                    del self.runtime[name]
                    gone.append(name)
        for name in gone:
            log.warning("runtime root gone", extra={"fields": {
                "root": name, "reason": "its process exited while the exporter was down"}})
        self.stats.gone += len(gone)
        self.stats.restored -= len(gone)
        self.stats.runtime_roots = len(self.runtime)
        return gone
