"""Actions: signals to a root's processes, each reaching exactly the process meant.

Off unless a root enables them, and dry-run until told otherwise. A signal
goes through a pidfd opened first and checked against the process's identity
after, so it reaches that process or none: never a stranger that got its pid
meanwhile (a pid never goes back to an older process, so a pidfd that passes
the check pins the right one).

:class:`Cleanup` is the schedule of a root's cleanup once every instance has
exited: SIGTERM to what is left, then SIGKILL after the grace. Membership
decides who is left and records each outcome as a typed event.
"""

from __future__ import annotations

import errno
import os
import signal
from dataclasses import dataclass
from enum import StrEnum

from .identity import Identity, same_start
from .procfs import PROC, AccessDenied, ProcessGone, read_stat, read_status


class ActionOutcome(StrEnum):
    """What became of one signal."""

    SENT = "sent"
    DRY_RUN = "dry_run"  # counted and logged, not sent
    GONE = "gone"  # the process had already exited
    IDENTITY_CHANGED = "identity_changed"  # its pid belongs to another process now
    FAILED = "failed"  # refused, or outside the root's lineage
    NOT_PERMITTED = "not_permitted"  # the asker may not signal this process's owner


@dataclass(frozen=True, slots=True)
class ActionSpec:
    """Opt-in cleanup of a root's leftovers once every instance has exited."""

    enabled: bool = False
    dry_run: bool = True
    term_grace_s: float = 5.0
    signal_zombie_parents: bool = False  # send SIGCHLD to a zombie's parent


def action_name(sig: int) -> str:
    """The ``action`` label of a signal: ``term``, ``kill``, ``chld``."""
    try:
        return signal.Signals(sig).name.removeprefix("SIG").lower()
    except ValueError:
        return f"signal{sig}"


def send_to_identity(identity: Identity, sig: int, *, exact: bool = True,
                     proc: str = PROC, owner: int | None = None) -> ActionOutcome:
    """Signal the process ``identity`` and no other (see the module docstring).

    ``exact``: the identity's start was read from /proc rather than derived
    from an event timestamp (see :mod:`.identity`). ``owner``: signal only if
    the process's real or saved uid is this one (kill(2)'s rule for an
    unprivileged sender), for a caller acting for that user.
    """
    pid = identity.pid
    try:
        fd = os.pidfd_open(pid)
    except ProcessLookupError:
        return ActionOutcome.GONE
    except OSError:
        return ActionOutcome.FAILED
    try:
        try:
            st = read_stat(pid, proc)
        except ProcessGone:
            return ActionOutcome.GONE
        except (AccessDenied, ValueError):
            return ActionOutcome.FAILED
        if not same_start(identity.start_ticks, st.start_ticks, exact):
            return ActionOutcome.IDENTITY_CHANGED
        if owner is not None:
            try:
                uids = read_status(pid, proc).uids
            except ProcessGone:
                return ActionOutcome.GONE
            except (AccessDenied, ValueError):
                return ActionOutcome.FAILED
            if owner not in (uids[0], uids[2]):
                return ActionOutcome.NOT_PERMITTED
        try:
            signal.pidfd_send_signal(fd, sig)
        except ProcessLookupError:
            return ActionOutcome.GONE
        except OSError as exc:
            return ActionOutcome.GONE if exc.errno == errno.ESRCH else ActionOutcome.FAILED
        return ActionOutcome.SENT
    finally:
        os.close(fd)


@dataclass(slots=True)
class Cleanup:
    """One root's cleanup schedule: SIGTERM once, then SIGKILL after the grace."""

    started_ns: int | None = None
    killed: bool = False

    def step(self, *, down: bool, leftovers: bool, now_ns: int, grace_ns: int) -> int | None:
        """The signal every leftover gets now, or None.

        ``down``: the root had instances and none is alive. A root that comes
        back up cancels the cleanup; the next time it goes down starts afresh.
        """
        if not down:
            self.started_ns, self.killed = None, False
            return None
        if not leftovers:
            return None
        if self.started_ns is None:
            self.started_ns = now_ns
            return signal.SIGTERM
        if not self.killed and now_ns - self.started_ns >= grace_ns:
            self.killed = True
            return signal.SIGKILL
        return None
