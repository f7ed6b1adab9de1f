"""config.yaml -> validated settings. Errors name the key and, where it can, the line.

Unknown keys are rejected everywhere: a typo must fail loudly, not be ignored.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from .collector import CollectorSettings

DEFAULT_PATHS = (Path("config.yaml"), Path("/etc/proctree-exporter/config.yaml"))


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class CollectorConfig(_Strict):
    """``collector:`` how events are read from the kernel."""

    source: Literal["auto", "netlink", "procfs"] = "auto"
    receive_buffer_bytes: int = Field(8 << 20, ge=65536, le=1 << 30)
    event_filter: bool = True
    poll_interval_seconds: float = Field(1.0, gt=0, le=3600)
    resync_min_interval_seconds: float = Field(1.0, ge=0, le=3600)

    def settings(self) -> CollectorSettings:
        return CollectorSettings(
            source=self.source,
            receive_buffer_bytes=self.receive_buffer_bytes,
            event_filter=self.event_filter,
            poll_interval_s=self.poll_interval_seconds,
            resync_min_interval_s=self.resync_min_interval_seconds,
        )


class TreeConfig(_Strict):
    """``tree:`` what the PID tree keeps and for how long."""

    max_nodes: int = Field(50_000, ge=100, le=10_000_000)
    tombstone_ttl_seconds: float = Field(300.0, ge=0, le=7 * 86400)
    cmdline_max_chars: int = Field(4096, ge=0, le=1 << 20)
    read_cgroups: bool = True


class LogConfig(_Strict):
    """``log:`` level and format of the daemon's own log lines."""

    level: Literal["debug", "info", "warning", "error"] = "info"
    format: Literal["text", "json"] = "text"


class Config(_Strict):
    """The whole config.yaml."""

    collector: CollectorConfig = CollectorConfig()
    tree: TreeConfig = TreeConfig()
    log: LogConfig = LogConfig()


class ConfigError(ValueError):
    """A config that cannot be used; the message names file, key and line."""


class _LineLoader(yaml.SafeLoader):
    """A SafeLoader that remembers the line of every mapping key and value."""


def _key_lines(node: yaml.Node, path: tuple[Any, ...], out: dict[tuple[Any, ...], int]) -> None:
    out[path] = node.start_mark.line + 1
    if isinstance(node, yaml.MappingNode):
        for key_node, value_node in node.value:
            key = key_node.value
            out[(*path, key)] = key_node.start_mark.line + 1
            _key_lines(value_node, (*path, key), out)
            out[(*path, key)] = key_node.start_mark.line + 1
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            _key_lines(item, (*path, i), out)


def parse_config(text: str, source: str = "<config>") -> Config:
    """Parse and validate YAML text; raise :class:`ConfigError` naming key and line."""
    try:
        node = yaml.compose(text, Loader=_LineLoader)
        data = yaml.load(text, Loader=_LineLoader)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark is not None else ""
        raise ConfigError(f"{source}:{where}: not valid YAML: "
                          f"{getattr(exc, 'problem', None) or exc}") from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: the top level must be a mapping of keys, "
                          f"got {type(data).__name__}")
    lines: dict[tuple[Any, ...], int] = {}
    if node is not None:
        _key_lines(node, (), lines)
    try:
        return Config.model_validate(data)
    except ValidationError as exc:
        msgs = []
        for err in exc.errors():
            loc = tuple(err["loc"])
            key = ".".join(str(p) for p in loc) or "(top level)"
            line = None
            for i in range(len(loc), -1, -1):
                line = lines.get(loc[:i])
                if line is not None:
                    break
            where = f" (line {line})" if line is not None else ""
            msg = err["msg"]
            if err["type"] == "extra_forbidden":
                msg = "unknown key"
            msgs.append(f"{key}{where}: {msg}")
        raise ConfigError(f"{source}: " + "; ".join(msgs)) from None


def load_config(path: str | Path | None) -> tuple[Config, Path | None]:
    """Load ``path``, or the first default path that exists, or the built-in defaults."""
    if path is None:
        for candidate in DEFAULT_PATHS:
            if candidate.is_file():
                path = candidate
                break
        else:
            return Config(), None
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read: {exc.strerror}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: not UTF-8 text") from None
    return parse_config(text, str(path)), path
