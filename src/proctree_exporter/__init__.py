"""proctree-exporter: Linux process trees from the kernel's proc connector.

Besides the exporter (``proctree-exporter run``), the package is a library for
programs that watch the process trees they start (README, "Library")::

    from proctree_exporter import Monitor

    with Monitor() as monitor:
        job = monitor.attach(pid=child.pid)
        for event in job.events(timeout=1.0):
            print(event.kind, event.pid, event.reason)

Everything public is re-exported here; other names are internal.
"""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("proctree-exporter")
except PackageNotFoundError:  # running from a source tree without install
    __version__ = "0.0.0+unknown"

# after __version__, which the modules below import
from .actions import ActionOutcome
from .capabilities import Capability
from .classification import Confidence, ProcessClass
from .control import KillReport
from .events import Ancestor, EventKind, RootEvent
from .identity import Identity
from .mirror import MemberInfo
from .monitor import Delta, Monitor, MonitorError, Observation, Root, Subscription
from .tree import ProcessView, TreeNode

__all__ = [
    "ActionOutcome",
    "Ancestor",
    "Capability",
    "Confidence",
    "Delta",
    "EventKind",
    "Identity",
    "KillReport",
    "MemberInfo",
    "Monitor",
    "MonitorError",
    "Observation",
    "ProcessClass",
    "ProcessView",
    "Root",
    "RootEvent",
    "Subscription",
    "TreeNode",
    "__version__",
]
