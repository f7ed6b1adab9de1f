"""The reaper: classifies each root's members and, when asked to, cleans up leftovers.

Classes: ``healthy``; ``orphaned`` (its fork parent exited while it lives on);
``zombie`` (exited, unreaped for longer than the root's ``zombie_grace``);
``exited`` (a tombstone); ``pid_reused`` (a tombstone whose pid now belongs to
another process); and per root ``restarted`` (an instance replaced by a new
identity). Every change is a :class:`ClassChange` with a reason a person can
read, kept in the root's class log for the API and OpenTelemetry.

Actions are off unless a root enables them, and dry-run until told otherwise.
A signal goes through a pidfd opened and then checked against the member's
start time, so it reaches that process or none: never a stranger that got its
pid. Only members of the root's lineage are ever signalled.
"""

from __future__ import annotations

import errno
import os
import signal
import time
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

from .procfs import AccessDenied, ProcessGone, read_stat

if TYPE_CHECKING:
    from .tree import Node
    from .watch import RootState, Watchers

HEALTHY = "healthy"
ORPHANED = "orphaned"
ZOMBIE = "zombie"
EXITED = "exited"
PID_REUSED = "pid_reused"
RESTARTED = "restarted"
CLASSES = (HEALTHY, ORPHANED, ZOMBIE, EXITED, PID_REUSED, RESTARTED)

# action outcomes, as counted per root
SENT = "sent"
DRY_RUN = "dry_run"
GONE = "gone"
IDENTITY_CHANGED = "identity_changed"
FAILED = "failed"


@dataclass(frozen=True, slots=True)
class ActionSpec:
    """Opt-in cleanup of a root's leftovers once every instance has exited."""

    enabled: bool = False
    dry_run: bool = True
    term_grace_s: float = 5.0
    signal_zombie_parents: bool = False  # send SIGCHLD to a zombie's parent


@dataclass(frozen=True, slots=True)
class RootEvent:
    """Something that happened to a member: a class change, a restart, or an action.

    ``kind`` is ``class`` (``old`` -> ``new``), ``restart`` (``new`` is
    ``restarted``) or ``action`` (``new`` is the action's outcome).
    """

    ts: float
    root: str
    kind: str
    pid: int
    start_ticks: int
    comm: str | None
    old: str
    new: str
    reason: str


@dataclass(slots=True)
class _Cleanup:
    started: float
    killed: bool = False


class Reaper:
    """Classification and actions for every root of a :class:`Watchers`."""

    def __init__(self, watchers: Watchers) -> None:
        self.watchers = watchers
        self._cleanups: dict[str, _Cleanup] = {}
        self._class_seq = 0

    # -- classification ------------------------------------------------------------

    def record(self, root: RootState, node: Node, old: str, new: str, reason: str,
               kind: str = "class") -> None:
        """Log an event about ``node`` in ``root``."""
        self._log(root, RootEvent(ts=time.time(), root=root.name, kind=kind, pid=node.pid,
                                  start_ticks=node.start_ticks, comm=node.comm, old=old,
                                  new=new, reason=reason))

    def _log(self, root: RootState, event: RootEvent) -> None:
        self._class_seq += 1
        root.class_log.append((self._class_seq, event))
        if event.kind != "action":
            root.class_changes_total[event.new] = root.class_changes_total.get(event.new, 0) + 1

    def _set(self, root: RootState, node: Node, new: str, reason: str) -> None:
        if root.class_of(node) == new:
            return
        old = root.set_class(node, new, reason)
        self.record(root, node, old, new, reason)

    @staticmethod
    def exit_reason(node: Node) -> str:
        """How ``node`` ended, in words."""
        if node.exit_signal is not None:
            name = _signal_name(node.exit_signal)
            return f"process {node.pid} ({node.comm}) was killed by {name}"
        if node.exit_code is not None:
            return f"process {node.pid} ({node.comm}) exited with code {node.exit_code}"
        return f"process {node.pid} ({node.comm}) is gone; its exit was not observed (lost events)"

    def parent_exited(self, child: Node, parent: Node) -> None:
        """``child`` lives on after its fork parent exited: orphaned in every root below
        its instance (an instance's own parent is outside the root)."""
        for root, depth in self.watchers._of.get(child, ()):
            if depth == 0 or child not in root.members:
                continue
            now_parent = child.ppid if child.ppid != parent.pid else None
            where = f"; reparented to PID {now_parent}" if now_parent else ""
            self._set(root, child, ORPHANED,
                      f"parent PID {parent.pid} ({parent.comm}) of process {child.pid} "
                      f"({child.comm}) is dead{where}")

    def pid_reused(self, root: RootState, node: Node) -> None:
        """A new process got the pid of one of ``root``'s tombstones."""
        for ident, info in list(root.tombstones.items()):
            if info.pid != node.pid or info.cls == PID_REUSED or ident == node.identity:
                continue
            reason = (f"pid {info.pid} of exited process {info.comm} (start {info.start_ticks}) "
                      f"now belongs to {node.comm} (start {node.start_ticks})")
            self.watchers.replace_tombstone(root, replace(info, cls=PID_REUSED, reason=reason))
            root.pid_reuse_seen += 1
            self._log(root, RootEvent(ts=time.time(), root=root.name, kind="class",
                                      pid=info.pid, start_ticks=info.start_ticks,
                                      comm=info.comm, old=info.cls, new=PID_REUSED,
                                      reason=reason))

    def restarted(self, root: RootState, node: Node) -> None:
        """A new instance replaced an exited one."""
        self.record(root, node, EXITED, RESTARTED,
                    f"root {root.name} restarted: new instance {node.pid} ({node.comm})",
                    kind="restart")

    def tick(self, now_ns: int) -> None:
        """Promote zombies past their grace, and run cleanups that are due."""
        tree = self.watchers.tree
        for root in self.watchers.roots.values():
            grace_ns = int(root.spec.zombie_grace_s * 1e9)
            for node in root.unreaped:
                if node.zombie_ns is None or node.exit_ns is None or node.reaped:
                    continue
                if now_ns - node.exit_ns < grace_ns:
                    continue
                if root.classes.get(node, (HEALTHY,))[0] == ZOMBIE:
                    continue
                parent = tree.get(node.ppid)
                pname = parent.comm if parent is not None else "?"
                self._set(root, node, ZOMBIE,
                          f"process {node.pid} ({node.comm}) exited "
                          f"{(now_ns - node.exit_ns) / 1e9:.1f}s ago and its parent PID "
                          f"{node.ppid} ({pname}) has not reaped it")
                if root.spec.actions.enabled and root.spec.actions.signal_zombie_parents:
                    self._signal_parent(root, node, parent)
            if root.spec.actions.enabled:
                self._cleanup(root)

    # -- actions -------------------------------------------------------------------

    def _cleanup(self, root: RootState) -> None:
        state = self._cleanups.get(root.name)
        if root.alive or not root.had_instance:
            self._cleanups.pop(root.name, None)
            return
        leftovers = [n for n, depth in root.members.items() if depth > 0]
        if not leftovers:
            return
        now = time.monotonic()
        if state is None:
            self._cleanups[root.name] = _Cleanup(started=now)
            for node in leftovers:
                self.signal(root, node, signal.SIGTERM)
        elif not state.killed and now - state.started >= root.spec.actions.term_grace_s:
            state.killed = True
            for node in leftovers:
                self.signal(root, node, signal.SIGKILL)

    def _signal_parent(self, root: RootState, zombie: Node, parent: Node | None) -> None:
        if parent is None or parent.exited:
            return
        self.signal(root, parent, signal.SIGCHLD, lineage_only=False)

    def signal(self, root: RootState, node: Node, sig: int, *, lineage_only: bool = True) -> str:
        """Send ``sig`` to exactly ``node`` (checked by identity); count and return the outcome."""
        action = _signal_name(sig).removeprefix("SIG").lower()
        if lineage_only and node not in root.members:
            outcome = FAILED  # never touch a process outside the root's lineage
        elif root.spec.actions.dry_run:
            outcome = DRY_RUN
        else:
            outcome = send_to_identity(node.pid, node.start_ticks, node.start_exact, sig)
        key = (action, outcome)
        root.actions[key] = root.actions.get(key, 0) + 1
        cls = root.classes.get(node, (HEALTHY,))[0]
        self.record(root, node, cls, outcome,
                    f"{'would send' if outcome == DRY_RUN else 'sent'} SIG{action.upper()} to "
                    f"{node.pid} ({node.comm}): {outcome}", kind="action")
        return outcome


def send_to_identity(pid: int, start_ticks: int, exact: bool, sig: int) -> str:
    """Signal the process ``(pid, start_ticks)`` and no other.

    The pidfd pins whatever process holds the pid when it is opened; the start
    time read afterwards proves it is ours (a pid never goes back to an older
    process), so the signal cannot land on a stranger.
    """
    try:
        fd = os.pidfd_open(pid)
    except ProcessLookupError:
        return GONE
    except OSError:
        return FAILED
    try:
        try:
            st = read_stat(pid)
        except ProcessGone:
            return GONE
        except (AccessDenied, ValueError):
            return FAILED
        same = st.start_ticks == start_ticks if exact else abs(st.start_ticks - start_ticks) <= 1
        if not same:
            return IDENTITY_CHANGED
        try:
            signal.pidfd_send_signal(fd, sig)
        except ProcessLookupError:
            return GONE
        except OSError as exc:
            return GONE if exc.errno == errno.ESRCH else FAILED
        return SENT
    finally:
        os.close(fd)


def _signal_name(sig: int) -> str:
    try:
        return signal.Signals(sig).name
    except ValueError:
        return f"signal {sig}"

