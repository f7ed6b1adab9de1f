"""What a root is: its selector and its limits, as config.yaml's ``roots:`` gives them."""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from .actions import ActionSpec

SELECT_KINDS = ("pid", "pidfile", "comm", "exe", "cmdline", "cgroup")


@dataclass(frozen=True, slots=True)
class RootSpec:
    """One root to watch (see README, "Roots")."""

    name: str
    select: str
    match: str
    include_root: bool = True
    max_depth: int | None = None
    max_members: int = 10_000
    capture_cmdline: bool = False
    cmdline_max_chars: int = 256
    tombstone_ttl_s: float = 60.0
    max_tombstones: int = 1_000
    zombie_grace_s: float = 5.0
    change_log_size: int = 100_000
    change_log_max_bytes: int = 64 << 20
    actions: ActionSpec = field(default_factory=ActionSpec)
    runtime: bool = False  # added at run time (write API, Python API), not by config.yaml

    @property
    def needs_cmdline(self) -> bool:
        """Whether this root reads command lines (the tree skips them for nobody else)."""
        return self.capture_cmdline or self.select == "cmdline"

    def __post_init__(self) -> None:
        if self.select not in SELECT_KINDS:
            raise ValueError(f"select must be one of {', '.join(SELECT_KINDS)}")
        if self.select == "pid" and self.match != "self" and not self.match.isdigit():
            raise ValueError("a pid selector matches a number or 'self'")
        if self.select == "cmdline":
            re.compile(self.match)  # raises re.error, reported by config
        if self.change_log_size < 1:
            raise ValueError("change_log_size must be at least 1")
        if self.change_log_max_bytes < 1:
            raise ValueError("change_log_max_bytes must be at least 1")
