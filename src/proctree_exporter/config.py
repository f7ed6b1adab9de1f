"""config.yaml -> validated settings. Errors name the key and, where it can, the line.

Unknown keys are rejected everywhere: a typo must fail loudly, not be ignored.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from .actions import ActionSpec
from .collector import CollectorSettings
from .rootspec import RootSpec
from .yamlfile import line_of, load_mapping

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
    read_cgroups: bool = False  # switched on anyway when a root selects by cgroup


class ActionsConfig(_Strict):
    """``roots[].actions:`` opt-in cleanup of a root's leftovers."""

    enabled: bool = False
    dry_run: bool = True
    term_grace_seconds: float = Field(5.0, ge=0, le=3600)
    signal_zombie_parents: bool = False


class RootConfig(_Strict):
    """``roots[]:`` one root to watch."""

    name: str = Field(pattern=r"^[A-Za-z_][A-Za-z0-9_.:-]{0,63}$")
    select: Literal["pid", "pidfile", "comm", "exe", "cmdline", "cgroup"]
    match: str | int
    include_root: bool = True
    max_depth: int | None = Field(None, ge=0, le=10_000)
    max_members: int = Field(10_000, ge=1, le=1_000_000)
    capture_cmdline: bool = False
    cmdline_max_chars: int = Field(256, ge=1, le=1 << 20)
    tombstone_ttl_seconds: float = Field(60.0, ge=0, le=7 * 86400)
    max_tombstones: int = Field(1_000, ge=0, le=1_000_000)
    zombie_grace_seconds: float = Field(5.0, ge=0, le=86400)
    change_log_size: int = Field(100_000, ge=10, le=10_000_000)
    # 64 MiB: 100,000 events of up to 670 bytes each (bench/changelog.py estimates 200
    # to 220 in storms without captured command lines, 280 with 90-character ones)
    change_log_max_bytes: int = Field(64 << 20, ge=1 << 16, le=1 << 40)
    actions: ActionsConfig = ActionsConfig()

    @field_validator("match")
    @classmethod
    def _match_text(cls, v: str | int) -> str:
        return str(v)

    @model_validator(mode="after")
    def _match_fits_select(self) -> RootConfig:
        m = str(self.match)
        if self.select == "pid" and not (m == "self" or m.isdigit()):
            raise ValueError("match: a pid root matches a number or 'self'")
        if self.select == "cmdline":
            try:
                re.compile(m)
            except re.error as exc:
                raise ValueError(f"match: not a valid regular expression: {exc}") from None
        if self.select in ("pidfile", "cgroup") and not m.startswith("/"):
            raise ValueError(f"match: a {self.select} root needs an absolute path")
        if not m:
            raise ValueError("match: must not be empty")
        return self

    def spec(self, *, runtime: bool = False) -> RootSpec:
        """The core's view of this root; ``runtime``: added at run time, not by config."""
        a = self.actions
        return RootSpec(
            name=self.name, select=self.select, match=str(self.match),
            include_root=self.include_root, max_depth=self.max_depth,
            max_members=self.max_members, capture_cmdline=self.capture_cmdline,
            cmdline_max_chars=self.cmdline_max_chars,
            tombstone_ttl_s=self.tombstone_ttl_seconds, max_tombstones=self.max_tombstones,
            zombie_grace_s=self.zombie_grace_seconds,
            change_log_size=self.change_log_size,
            change_log_max_bytes=self.change_log_max_bytes,
            actions=ActionSpec(enabled=a.enabled, dry_run=a.dry_run,
                               term_grace_s=a.term_grace_seconds,
                               signal_zombie_parents=a.signal_zombie_parents),
            runtime=runtime,
        )


DEFAULT_ROOTS = (
    # the root every storm passes through: its change log is held to 16 MiB (about
    # 37,000 events of a fork storm, bench/changelog.py), not 100,000 events (43 MiB)
    RootConfig(name="host", select="pid", match="1", max_members=1000,
               change_log_max_bytes=16 << 20),
    RootConfig(name="exporter", select="pid", match="self"),
)


class WebSettings(_Strict):
    """``web:`` the HTTP server."""

    listen_address: str = ":9632"
    config_file: str | None = None  # exporter-toolkit web config: TLS and basic auth
    max_connections: int = Field(64, ge=1, le=10_000)
    read_timeout_seconds: float = Field(10.0, gt=0, le=600)
    max_streams: int = Field(100, ge=0, le=10_000)  # /api/v1/events at once

    @field_validator("listen_address")
    @classmethod
    def _address(cls, v: str) -> str:
        _, sep, port = v.rpartition(":")
        if not sep or not port.isdigit():
            raise ValueError("expected [HOST]:PORT, for example ':9632' or '127.0.0.1:9632'")
        if int(port) > 65535:
            raise ValueError(f"port {int(port)} out of range (0-65535)")
        return v


class HostConfig(_Strict):
    """``host:`` host-wide numbers that need a /proc walk."""

    state_sample_interval_seconds: float = Field(15.0, ge=1, le=3600)


class ResourcesConfig(_Strict):
    """``resources:`` what each root's processes cost: CPU, memory, IO, threads, faults."""

    enabled: bool = True
    sample_interval_seconds: float = Field(15.0, ge=1, le=3600)
    roots: list[str] = Field(default_factory=list)  # empty: every root
    pss: bool = False  # PSS from smaps_rollup: costly, opt-in
    taskstats: bool = True  # exit records from the kernel; off: /proc while unreaped


class StateConfig(_Strict):
    """``state:`` the state file that keeps lineage, classes and counters across restarts."""

    path: str | None = None  # off when unset; scripts/run and deploy/ set it
    interval_seconds: float = Field(5.0, ge=0.5, le=3600)

    @field_validator("path")
    @classmethod
    def _not_blank(cls, v: str | None) -> str | None:
        if v is not None and not v.strip():
            raise ValueError("an empty path: leave it unset (null) to keep no state")
        return v


class ApiWriteConfig(_Strict):
    """``api.write:`` the write API: roots added, removed and killed at run time."""

    enabled: bool = False
    users: list[str] = Field(default_factory=list)  # web-config basic-auth users, over TCP
    socket: str | None = None  # a Unix socket serving the whole API
    socket_mode: str = Field("0600", pattern=r"^0?[0-7]{3}$")
    uids: list[int] = Field(default_factory=list)  # besides root, on the socket
    kill_grace_seconds: float = Field(5.0, ge=0, le=600)
    max_runtime_roots: int = Field(1000, ge=1, le=100_000)

    @field_validator("socket")
    @classmethod
    def _absolute(cls, v: str | None) -> str | None:
        if v is not None and not v.startswith("/"):
            raise ValueError("an absolute path, such as /run/proctree-exporter/api.sock")
        return v

    @model_validator(mode="after")
    def _someone_may_write(self) -> ApiWriteConfig:
        if self.enabled and not self.users and self.socket is None:
            # never a write API open to anyone who reaches the port
            raise ValueError("enabled: name api.write.users (basic-auth users of the web "
                             "config) or an api.write.socket; writes are never open to "
                             "unauthenticated clients")
        return self


class ApiConfig(_Strict):
    """``api:`` the JSON API."""

    write: ApiWriteConfig = ApiWriteConfig()


class LogConfig(_Strict):
    """``log:`` level and format of the daemon's own log lines."""

    level: Literal["debug", "info", "warning", "error"] = "info"
    format: Literal["text", "json"] = "text"


class OtelTlsConfig(_Strict):
    """``otel.tls:`` trusting the OTLP endpoint, and the client certificate (mutual TLS)."""

    ca_file: str | None = None  # else OTEL_EXPORTER_OTLP_CERTIFICATE, else the system CAs
    cert_file: str | None = None
    key_file: str | None = None
    insecure: bool | None = None  # gRPC: plaintext; default from the endpoint's scheme

    @model_validator(mode="after")
    def _pair(self) -> OtelTlsConfig:
        if (self.cert_file is None) != (self.key_file is None):
            raise ValueError("cert_file and key_file go together")
        return self


class OtelMetricsConfig(_Strict):
    """``otel.metrics:`` the /metrics families over OTLP too."""

    enabled: bool = False
    interval_seconds: float = Field(60.0, ge=1, le=3600)


class OtelConfig(_Strict):
    """``otel:`` OpenTelemetry export: each root instance a trace, each process a span."""

    enabled: bool = False
    protocol: Literal["http/protobuf", "grpc"] = "http/protobuf"
    endpoint: str | None = None  # else OTEL_EXPORTER_OTLP_ENDPOINT, else localhost
    headers: dict[str, str] = Field(default_factory=dict)
    timeout_seconds: float | None = Field(None, gt=0, le=600)
    compression: Literal["none", "gzip"] | None = None
    tls: OtelTlsConfig = OtelTlsConfig()
    service_name: str | None = None
    events: Literal["spans", "logs", "both"] = "spans"
    roots: list[str] = Field(default_factory=list)  # empty: every root
    poll_interval_seconds: float = Field(0.5, ge=0.05, le=60)
    checkpoint_interval_seconds: float = Field(300.0, ge=0, le=7 * 86400)
    max_spans_per_second: float = Field(100.0, gt=0, le=1_000_000)
    burst: int = Field(1000, ge=1, le=10_000_000)
    max_open_spans: int = Field(10_000, ge=1, le=1_000_000)
    max_events_per_span: int = Field(128, ge=1, le=10_000)
    max_queue_size: int = Field(2048, ge=1, le=1_000_000)
    max_export_batch_size: int = Field(512, ge=1, le=1_000_000)
    schedule_delay_seconds: float = Field(2.0, gt=0, le=600)
    shutdown_timeout_seconds: float = Field(1.0, ge=0, le=60)
    metrics: OtelMetricsConfig = OtelMetricsConfig()

    @field_validator("endpoint")
    @classmethod
    def _url(cls, v: str | None) -> str | None:
        if v is not None and not re.match(r"^https?://[^/\s]+", v):
            raise ValueError("expected a URL such as http://collector:4318 "
                             "(gRPC: http://collector:4317)")
        return v


class Config(_Strict):
    """The whole config.yaml."""

    web: WebSettings = WebSettings()
    collector: CollectorConfig = CollectorConfig()
    tree: TreeConfig = TreeConfig()
    host: HostConfig = HostConfig()
    state: StateConfig = StateConfig()
    resources: ResourcesConfig = ResourcesConfig()
    api: ApiConfig = ApiConfig()
    roots: list[RootConfig] = Field(default_factory=lambda: list(DEFAULT_ROOTS),
                                    max_length=1000)
    log: LogConfig = LogConfig()
    otel: OtelConfig = OtelConfig()

    @model_validator(mode="after")
    def _listed_roots_exist(self) -> Config:
        names = {r.name for r in self.roots}
        for key, listed in (("otel.roots", self.otel.roots),
                            ("resources.roots", self.resources.roots)):
            unknown = [n for n in listed if n not in names]
            if unknown:
                raise ValueError(f"{key}: no root named {', '.join(map(repr, unknown))}")
        return self

    @field_validator("roots")
    @classmethod
    def _unique_names(cls, roots: list[RootConfig]) -> list[RootConfig]:
        seen: set[str] = set()
        for r in roots:
            if r.name in seen:
                raise ValueError(f"root name {r.name!r} is used twice")
            seen.add(r.name)
        return roots

    def root_specs(self) -> list[RootSpec]:
        return [r.spec() for r in self.roots]


class ConfigError(ValueError):
    """A config that cannot be used; the message names file, key and line."""


def parse_config(text: str, source: str = "<config>") -> Config:
    """Parse and validate YAML text; raise :class:`ConfigError` naming key and line."""
    data, lines = load_mapping(text, source, ConfigError)
    try:
        return Config.model_validate(data)
    except ValidationError as exc:
        msgs = []
        for err in exc.errors():
            loc = tuple(err["loc"])
            msg = err["msg"]
            if err["type"] == "missing":  # said of the mapping that lacks the key
                loc, msg = loc[:-1], f"missing key {loc[-1]!r}".replace("'", '"')
            elif err["type"] == "extra_forbidden":
                msg = "unknown key"
            line = line_of(lines, loc)
            where = f", line {line}" if line is not None else ""
            msgs.append(f"{_key_path(loc, data)}{where}: {msg}")
        raise ConfigError(f"{source}: " + "; ".join(msgs)) from None


def _key_path(loc: tuple[Any, ...], data: Any) -> str:
    """A location as the user wrote it: ``roots[0] (nginx).select``, not ``roots.0.select``."""
    out = ""
    node = data
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
            node = node[part] if isinstance(node, list) and part < len(node) else None
            name = node.get("name") if isinstance(node, dict) else None
            if isinstance(name, str) and name:
                out += f" ({name})"
        else:
            out += f".{part}" if out else str(part)
            node = node.get(part) if isinstance(node, dict) else None
    return out or "(top level)"


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
