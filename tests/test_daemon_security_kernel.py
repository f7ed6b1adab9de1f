"""TLS and basic auth on the real daemon, with a web config promtool accepts."""

from __future__ import annotations

import base64
import socket
import ssl
import subprocess
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import bcrypt
import pytest

from proctree_exporter import __version__, openapi

from .conftest import Janitor
from .daemon_helpers import start_daemon
from .test_web_config import Pki, pki  # noqa: F401 - the certificate fixture

pytestmark = pytest.mark.kernel


def fetch(url: str, ctx: ssl.SSLContext, auth: tuple[str, str] | None = None) -> int:
    req = urllib.request.Request(url)
    if auth:
        token = base64.b64encode(f"{auth[0]}:{auth[1]}".encode()).decode()
        req.add_header("Authorization", f"Basic {token}")
    try:
        with urllib.request.urlopen(req, context=ctx, timeout=10) as r:
            return r.status
    except urllib.error.HTTPError as e:
        return e.code


def test_tls_and_basic_auth_guard_everything_but_health(janitor: Janitor, tmp_path: Path,
                                                        pki: Pki) -> None:  # noqa: F811
    hashed = bcrypt.hashpw(b"s3cret", bcrypt.gensalt(rounds=4)).decode()
    web = pki.dir / "daemon-web.yml"
    web.write_text(f"tls_server_config:\n  cert_file: {pki.server_crt}\n"
                   f"  key_file: {pki.server_key}\n  min_version: TLS12\n"
                   f"basic_auth_users:\n  prom: {hashed}\n")
    check = subprocess.run(["promtool", "check", "web-config", str(web)], capture_output=True,
                           text=True, timeout=30)
    assert check.returncode == 0, check.stdout + check.stderr
    ctx = ssl.create_default_context(cafile=str(pki.ca))
    d = start_daemon(janitor, tmp_path, "roots: []\n", "--web.config.file", str(web),
                     ssl_context=ctx)
    base = d.url
    assert fetch(base + "/-/healthy", ctx) == 200  # health checks need no credentials
    assert fetch(base + "/metrics", ctx) == 401
    assert fetch(base + "/metrics", ctx, ("prom", "wrong")) == 401
    assert fetch(base + "/metrics", ctx, ("nobody", "s3cret")) == 401
    assert fetch(base + "/metrics", ctx, ("prom", "s3cret")) == 200
    assert fetch(base + "/api/v1/roots", ctx) == 401
    # a client that does not trust our CA cannot talk to it
    with pytest.raises(urllib.error.URLError):
        fetch(base + "/-/healthy", ssl.create_default_context())
    # plain HTTP on the TLS port gets nothing useful
    with pytest.raises((urllib.error.URLError, ConnectionError, OSError)):
        urllib.request.urlopen(f"http://127.0.0.1:{d.port}/metrics", timeout=5).read()
    status, took, err = d.stop()
    assert status == 0 and took < 2.0, err


def test_bad_web_config_exits_2_naming_the_key(janitor: Janitor, tmp_path: Path,
                                               pki: Pki) -> None:  # noqa: F811
    web = pki.dir / "bad-web.yml"
    web.write_text(f"tls_server_config:\n  cert_file: {pki.server_crt}\n")
    for args in (["run"], ["check-config"]):
        p = janitor.spawn([str(Path(__file__).resolve().parent.parent / ".venv/bin/"
                               "proctree-exporter"), *args, "--web.config.file", str(web)],
                          stderr=subprocess.PIPE)
        _, err = p.communicate(timeout=30)
        assert p.returncode == 2, err
        assert "key_file" in err, err


def test_tls_clients_that_hang_up_leave_no_traceback_and_server_names_itself(
        janitor: Janitor, tmp_path: Path, pki: Pki) -> None:  # noqa: F811
    web = tmp_path / "web.yml"
    web.write_text(f"tls_server_config:\n  cert_file: {pki.server_crt}\n"
                   f"  key_file: {pki.server_key}\n")
    ctx = ssl.create_default_context(cafile=str(pki.ca))
    d = start_daemon(janitor, tmp_path, "roots: []\n", "--web.config.file", str(web),
                     ssl_context=ctx)
    base = d.url
    # the Server header names the exporter, not Python, on answers and on error replies
    for path in ("/metrics", "/-/healthy", "/nope"):
        req = urllib.request.Request(base + path)
        try:
            with urllib.request.urlopen(req, context=ctx, timeout=10) as r:
                server = r.headers["Server"]
        except urllib.error.HTTPError as e:
            server = e.headers["Server"]
        assert server == f"proctree-exporter/{__version__}", (path, server)
    # clients that send a request and hang up at once, without reading the answer
    for _ in range(20):
        raw = socket.create_connection(("127.0.0.1", d.port), timeout=5)
        tls = ctx.wrap_socket(raw, server_hostname="localhost")
        tls.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
        tls.close()
    time.sleep(0.5)
    status, _, err = d.stop()
    assert status == 0
    assert "Traceback" not in err and "SSLEOFError" not in err, err[-2000:]


def raw_reply(port: int, request: bytes, wait: float = 0) -> str:
    """The head of the server's reply to ``request`` (bytes as sent) on a fresh socket."""
    with socket.create_connection(("127.0.0.1", port), timeout=15) as s:
        s.sendall(request)
        time.sleep(wait)
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = s.recv(65536)
            if not chunk:
                break
            data += chunk
    return data.split(b"\r\n\r\n", 1)[0].decode("latin-1")


def test_safe_headers_by_default_and_configured_ones_on_every_reply(
        janitor: Janitor, tmp_path: Path) -> None:
    web = tmp_path / "web.yml"
    web.write_text("http_server_config:\n  headers:\n    X-Frame-Options: sameorigin\n"
                   "    Strict-Transport-Security: max-age=60\n")
    d = start_daemon(janitor, tmp_path, "roots: []\nweb:\n  read_timeout_seconds: 1\n",
                     "--web.config.file", str(web))
    want = {"x-content-type-options: nosniff",
            "content-security-policy: default-src 'self'; frame-ancestors 'none'",
            "x-frame-options: sameorigin",  # configured: it wins over the default "deny"
            "strict-transport-security: max-age=60",
            f"server: proctree-exporter/{__version__}"}
    replies = {
        "page": raw_reply(d.port, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"),
        "404 (app)": raw_reply(d.port, b"GET /nope HTTP/1.1\r\nHost: x\r\n\r\n"),
        "505 (handler)": raw_reply(d.port, b"GET / HTTP/2.0\r\nHost: x\r\n\r\n"),
        "400 (handler)": raw_reply(d.port, b"BREW /\r\n\r\n"),
        "431 (server)": raw_reply(d.port, b"GET / HTTP/1.1\r\nX-Big: " + b"a" * 70_000),
        "408 (server)": raw_reply(d.port, b"GET / HTTP/1.1\r\n", wait=1.5),
        "stream": raw_reply(d.port, b"GET /api/v1/events HTTP/1.1\r\nHost: x\r\n\r\n"),
    }
    for what, head in replies.items():
        lines = {line.lower() for line in head.split("\r\n")[1:]}
        assert want <= lines, (what, head)
        assert sum(line.startswith("x-frame-options") for line in lines) == 1, (what, head)


def test_a_flood_of_bad_logins_never_holds_up_health_checks_or_cached_logins(
        janitor: Janitor, tmp_path: Path) -> None:
    hashed = bcrypt.hashpw(b"s3cret", bcrypt.gensalt(rounds=12)).decode()  # ~0.25 s a check
    web = tmp_path / "web.yml"
    web.write_text(f"basic_auth_users:\n  prom: {hashed}\n")
    d = start_daemon(janitor, tmp_path, "roots: []\n", "--web.config.file", str(web))
    good = {"Authorization": "Basic " + base64.b64encode(b"prom:s3cret").decode()}
    assert d.get("/metrics", good)[0] == 200  # now cached
    stop = time.monotonic() + 4.0  # bounded: 100 clients (more than the 64 workers), 4 s
    answers: list[int] = []
    refusals: list[dict[str, str]] = []  # the headers of 429 answers

    def flood() -> None:  # a guesser: a new password each time, so none is cached
        n = 0
        while time.monotonic() < stop:
            n += 1
            guess = base64.b64encode(f"prom:guess-{threading.get_ident()}-{n}".encode())
            try:
                status, headers, _ = d.get("/metrics", {"Authorization": "Basic " +
                                                        guess.decode()})
            except OSError:
                status, headers = -1, {}
            answers.append(status)
            if status == 429:
                refusals.append(headers)

    threads = [threading.Thread(target=flood) for _ in range(100)]
    for t in threads:
        t.start()
    healthy: list[float] = []
    scrape: list[float] = []
    try:
        time.sleep(0.5)  # the flood is on
        while time.monotonic() < stop - 0.5:
            for path, headers, took in (("/-/healthy", None, healthy), ("/metrics", good, scrape)):
                t0 = time.monotonic()
                assert d.get(path, headers)[0] == 200, path
                took.append(time.monotonic() - t0)
            time.sleep(0.1)
    finally:
        for t in threads:
            t.join(30)
    # bounds far above what it takes (ms) and far below what the flood used to cost
    # (503s, or 12-30 s waits behind one bcrypt lock)
    assert healthy and max(healthy) < 0.5, healthy
    assert max(scrape) < 2.0, scrape
    assert 429 in answers and 401 in answers and 503 not in answers, sorted(set(answers))
    # as the OpenAPI document says (components.responses.TooManyLogins)
    doc = openapi.document()["components"]["responses"]["TooManyLogins"]
    assert openapi.document()["paths"]["/metrics"]["get"]["responses"]["429"]["$ref"].endswith(
        "/TooManyLogins")
    for headers in refusals[:5]:
        assert headers["Retry-After"].isdigit()
        assert headers["Content-Type"] in doc["content"]
