"""Running the real daemon as a subprocess, and talking to it over loopback."""

from __future__ import annotations

import gzip
import json
import signal
import socket
import ssl
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

from .conftest import REPO, Janitor

EXE = str(REPO / ".venv" / "bin" / "proctree-exporter")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Running:
    """A daemon started by a test (over https when ``ssl_context`` is set)."""

    proc: subprocess.Popen[str]
    port: int
    config: Path
    ssl_context: ssl.SSLContext | None = None
    log_file: Path | None = None  # its stdout and stderr, when not a pipe

    @property
    def url(self) -> str:
        scheme = "https" if self.ssl_context is not None else "http"
        return f"{scheme}://127.0.0.1:{self.port}"

    def get(self, path: str, headers: dict[str, str] | None = None,
            method: str = "GET") -> tuple[int, dict[str, str], bytes]:
        req = urllib.request.Request(self.url + path, headers=headers or {}, method=method)
        try:
            with urllib.request.urlopen(req, timeout=10, context=self.ssl_context) as r:
                return r.status, dict(r.headers), r.read()
        except urllib.error.HTTPError as e:
            return e.code, dict(e.headers), e.read()

    def wait_ready(self, timeout: float = 30.0) -> Running:
        """Return once /-/ready says 200; fail with the daemon's log if it exits, or
        after ``timeout``."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                if self.get("/-/ready")[0] == 200:
                    return self
            except OSError:  # not listening yet
                pass
            if self.proc.poll() is not None:
                raise AssertionError(f"daemon exited: {self.output()}")
            assert time.monotonic() < deadline, f"daemon not ready in {timeout:g} s"
            time.sleep(0.05)

    def output(self) -> str:
        """What the daemon wrote, once it has exited (its log file, or stderr)."""
        if self.log_file is not None:
            return self.log_file.read_text(errors="replace")
        return self.proc.stderr.read() if self.proc.stderr else ""

    def json(self, path: str) -> Any:
        status, _, body = self.get(path)
        assert status == 200, (status, body)
        return json.loads(body)

    def metrics(self) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
        """One scrape as {(sample name, sorted labels): value}."""
        status, headers, body = self.get("/metrics")
        assert status == 200, body
        if headers.get("Content-Encoding") == "gzip":
            body = gzip.decompress(body)
        out = {}
        for fam in text_string_to_metric_families(body.decode()):
            for s in fam.samples:
                out[(s.name, tuple(sorted(s.labels.items())))] = s.value
        return out

    def stop(self, sig: int = signal.SIGTERM) -> tuple[int, float, str]:
        """Signal the daemon, wait; return (exit status, seconds it took, stderr)."""
        t0 = time.monotonic()
        self.proc.send_signal(sig)
        try:
            _, err = self.proc.communicate(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            _, err = self.proc.communicate()
        return self.proc.returncode, time.monotonic() - t0, err


def value(m: dict, name: str, **labels: str) -> float | None:
    return m.get((name, tuple(sorted(labels.items()))))


def start_daemon(janitor: Janitor, tmp_path: Path, config: str, *extra: str,
                 wait_ready: bool = True, ssl_context: ssl.SSLContext | None = None,
                 log_file: Path | None = None, prefix: Sequence[str] = ()) -> Running:
    """The daemon on ``config`` (written to tmp_path/config.yaml) and a free loopback
    port, with ``extra`` flags; ready (/-/ready 200) unless ``wait_ready`` is false.
    ``ssl_context``: it serves https (a web config in ``extra``), trusted with this.
    ``log_file``: its output goes there, not to a pipe (a storm logs more than a pipe
    holds unread). ``prefix``: run it under this command (``setpriv ...``)."""
    cfg = tmp_path / "config.yaml"
    cfg.write_text(config)
    port = free_port()
    args = [*prefix, EXE, "--config", str(cfg), "--web.listen-address", f"127.0.0.1:{port}",
            *extra]
    if log_file is not None:
        with open(log_file, "wb") as out:
            proc = janitor.spawn(args, stdout=out, stderr=subprocess.STDOUT)
    else:
        proc = janitor.spawn(args, stderr=subprocess.PIPE)
    d = Running(proc, port, cfg, ssl_context, log_file)
    return d.wait_ready() if wait_ready else d


@dataclass
class PrometheusServer:
    """A real Prometheus (Debian package) started by a test, on loopback."""

    proc: subprocess.Popen[str]
    port: int

    def query(self, expr: str) -> list[dict[str, Any]]:
        url = (f"http://127.0.0.1:{self.port}/api/v1/query?"
               + urllib.parse.urlencode({"query": expr}))
        with urllib.request.urlopen(url, timeout=10) as r:
            doc = json.loads(r.read())
        assert doc["status"] == "success", doc
        return doc["data"]["result"]

    def scalar(self, expr: str) -> float | None:
        """The single value of an instant query, or None when it returns nothing."""
        result = self.query(expr)
        return float(result[0]["value"][1]) if len(result) == 1 else None


def start_prometheus(janitor: Janitor, tmp_path: Path, target_port: int,
                     rule_files: tuple[Path, ...] = (), interval: str = "1s") -> PrometheusServer:
    """Prometheus scraping 127.0.0.1:target_port every ``interval``; fails if not installed."""
    import shutil

    binary = shutil.which("prometheus")
    assert binary, "prometheus missing: scripts/bootstrap test installs Debian's prometheus"
    port = free_port()
    cfg = tmp_path / "prometheus.yml"
    rules = "".join(f"  - {p}\n" for p in rule_files)
    cfg.write_text(
        f"global:\n  scrape_interval: {interval}\n  evaluation_interval: {interval}\n"
        + (f"rule_files:\n{rules}" if rules else "")
        + "scrape_configs:\n  - job_name: proctree\n    static_configs:\n"
        f"      - targets: ['127.0.0.1:{target_port}']\n")
    data = tmp_path / "prom-data"
    proc = janitor.spawn([binary, f"--config.file={cfg}", f"--storage.tsdb.path={data}",
                          f"--web.listen-address=127.0.0.1:{port}", "--log.level=warn"],
                         stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    server = PrometheusServer(proc, port)
    deadline = time.monotonic() + 60
    while True:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/-/ready", timeout=2) as r:
                if r.status == 200:
                    return server
        except OSError:
            pass
        if proc.poll() is not None:
            raise AssertionError(f"prometheus exited: {proc.stderr.read() if proc.stderr else ''}")
        assert time.monotonic() < deadline, "prometheus not ready in 60 s"
        time.sleep(0.2)
