"""The tree page in a real headless Chromium, against the real daemon and real processes.

Chromium is driven through chromedriver's W3C WebDriver HTTP API (a few calls over
urllib: no extra Python package). Both come from Debian (`scripts/bootstrap test`).
The browser's network traffic is read from chromedriver's performance log (the
DevTools protocol's Network events), so a test sees every request the page makes.
"""

from __future__ import annotations

import base64
import json
import os
import re
import shutil
import ssl
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import bcrypt
import pytest

from .conftest import PYTHON, REPO, Janitor, read_lines, spawn_at_pid, wait_for
from .daemon_helpers import free_port, start_daemon
from .test_web_config import Pki, pki  # noqa: F401 - the certificate fixture

pytestmark = pytest.mark.kernel

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
ARTIFACTS = REPO / "test-artifacts"
TOKEN = "ptx-ui-holder"
CONFIG = f"""
roots:
  - name: ui-job
    select: cmdline
    match: "{TOKEN}"
    zombie_grace_seconds: 0.5
    capture_cmdline: true
  - name: exporter
    select: pid
    match: self
"""

# The holder (the root's instance) starts a small pool, one child that exits with
# code 3 and one that exits cleanly (tombstones), then obeys the test line by line:
#   spawn  -> a wrapper shell that starts `sleep` in the background; prints "SLEEP WRAPPER"
#   orphan -> the wrapper exits (its sleep lives on, orphaned); prints "ok"
#   zombie -> a child that exits and is never reaped; prints its pid
SCENE = f"""# {TOKEN}
import os, subprocess, sys
pool = subprocess.Popen(['/bin/sh', '-c', 'sleep 70 & sleep 70 & wait'])
subprocess.run(['/bin/sh', '-c', 'exit 3'])
done = subprocess.Popen(['/bin/true'])
done.wait()
print(done.pid, flush=True)
wrapper = None
for line in sys.stdin:
    cmd = line.strip()
    if cmd == 'spawn':
        wrapper = subprocess.Popen(['/bin/sh', '-c', 'sleep 60 & echo $!; read x'],
                                   stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        print(wrapper.stdout.readline().strip(), wrapper.pid, flush=True)
    elif cmd == 'orphan':
        wrapper.stdin.close()
        wrapper.wait()
        print('ok', flush=True)
    elif cmd == 'zombie':
        z = os.fork()
        if z == 0:
            os._exit(0)
        print(z, flush=True)
"""

# the process rows in view (not the "N exited" rows that stand for folded tombstones)
ROWS_JS = """
return [...document.querySelectorAll('#tree-canvas .row[data-pid]:not([hidden])')].map(r => ({
  pid: Number(r.dataset.pid), cls: r.dataset.class, depth: Number(r.dataset.depth),
  gone: r.classList.contains('gone'), text: r.textContent}));
"""


class Browser:
    """One headless Chromium session, through chromedriver's W3C WebDriver API."""

    def __init__(self, port: int) -> None:
        self.base = f"http://127.0.0.1:{port}"
        self.session = ""

    def call(self, method: str, path: str, body: Any = None) -> Any:
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(self.base + path, data=data, method=method,
                                     headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=60) as r:
                return json.loads(r.read())["value"]
        except urllib.error.HTTPError as e:
            raise AssertionError(f"webdriver {method} {path}: {e.code} {e.read()[:500]!r}") from e

    def s(self, method: str, path: str, body: Any = None) -> Any:
        return self.call(method, f"/session/{self.session}{path}", body)

    def open(self, url: str) -> None:
        self.s("POST", "/url", {"url": url})

    def js(self, script: str, *args: Any) -> Any:
        return self.s("POST", "/execute/sync", {"script": script, "args": list(args)})

    def find(self, css: str) -> str:
        found = self.s("POST", "/element", {"using": "css selector", "value": css})
        return next(iter(found.values()))

    def type(self, css: str, text: str) -> None:
        self.s("POST", f"/element/{self.find(css)}/value", {"text": text})

    def click(self, css: str) -> None:
        self.s("POST", f"/element/{self.find(css)}/click", {})

    def screenshot(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(base64.b64decode(self.s("GET", "/screenshot")))

    def console_errors(self) -> list[str]:
        """Console errors and uncaught exceptions since the previous call."""
        logs = self.s("POST", "/se/log", {"type": "browser"})
        return [f"{e['source']}: {e['message']}" for e in logs if e["level"] == "SEVERE"]

    def rows(self) -> list[dict[str, Any]]:
        return self.js(ROWS_JS)

    def status(self) -> dict[str, str]:
        """The status line: its text and data attributes (mode, polls, events, resyncs)."""
        return self.js("const s = document.getElementById('status');"
                       "return Object.assign({text: s.textContent}, s.dataset)")

    def before_scripts(self, source: str) -> None:
        """Run ``source`` in every page this session opens, before the page's scripts."""
        self.s("POST", "/goog/cdp/execute", {"cmd": "Page.addScriptToEvaluateOnNewDocument",
                                             "params": {"source": source}})

    def network(self) -> list[tuple[str, dict[str, Any]]]:
        """The DevTools Network events (method, params) since the previous call."""
        logs = self.s("POST", "/se/log", {"type": "performance"})
        out = []
        for entry in logs:
            msg = json.loads(entry["message"])["message"]
            if msg["method"].startswith("Network."):
                out.append((msg["method"], msg["params"]))
        return out


class NetLog:
    """The page's requests, from the Network events read so far."""

    def __init__(self) -> None:
        self.requests: dict[str, dict[str, Any]] = {}  # requestId -> what we know of it

    def read(self, b: Browser) -> list[dict[str, Any]]:
        """Take in the events since the last read; return the requests they started."""
        started = []
        for method, p in b.network():
            rid = p.get("requestId")
            if method == "Network.requestWillBeSent":
                req = {"url": p["request"]["url"], "type": p.get("type"), "status": None,
                       "mime": None, "done": False, "messages": []}
                self.requests[rid] = req
                started.append(req)
            elif rid not in self.requests:
                continue
            elif method == "Network.responseReceived":
                self.requests[rid]["status"] = p["response"]["status"]
                self.requests[rid]["mime"] = p["response"]["mimeType"]
            elif method in ("Network.loadingFinished", "Network.loadingFailed"):
                self.requests[rid]["done"] = True
            elif method == "Network.eventSourceMessageReceived":
                self.requests[rid]["messages"].append((p["eventName"], p["data"]))
        return started

    def open_streams(self) -> list[dict[str, Any]]:
        """/api/v1/events requests answered 200 with an event stream, not ended yet."""
        return [r for r in self.requests.values() if "/api/v1/events" in r["url"]
                and r["status"] == 200 and r["mime"] == "text/event-stream" and not r["done"]]


def polls(requests: list[dict[str, Any]]) -> list[str]:
    """The URLs among ``requests`` that fetch a root's document or the roots."""
    return [r["url"] for r in requests
            if "/api/v1/roots" in r["url"] or "/api/v1/tree" in r["url"]]


@contextmanager
def open_browser(janitor: Janitor, profile: Path) -> Iterator[Browser]:
    """A headless Chromium session (1440x900 window) with its profile in ``profile``;
    chromedriver is started through the janitor. Fails (never skips) without Chromium."""
    for exe in (CHROMIUM, CHROMEDRIVER):
        assert shutil.which(exe), (f"{exe} missing: `scripts/bootstrap test` installs Debian's "
                                   "chromium and chromium-driver")
    port = free_port()
    janitor.spawn([CHROMEDRIVER, f"--port={port}"], stdout=subprocess.DEVNULL,
                  stderr=subprocess.DEVNULL)
    b = Browser(port)
    deadline = time.monotonic() + 30
    while True:
        try:
            if b.call("GET", "/status").get("ready"):
                break
        except (OSError, AssertionError):
            pass
        assert time.monotonic() < deadline, "chromedriver not ready in 30 s"
        time.sleep(0.05)
    # the flags keep a headless Chromium from calling Google hosts (refused here anyway)
    args = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
            "--disable-background-networking", "--disable-component-update", "--disable-sync",
            "--disable-dev-shm-usage", f"--user-data-dir={profile}",
            "--window-size=1440,900", "--force-prefers-reduced-motion"]
    caps = {"browserName": "chrome", "acceptInsecureCerts": True,
            "goog:chromeOptions": {"binary": CHROMIUM, "args": args,
                                   "perfLoggingPrefs": {"enableNetwork": True,
                                                        "enablePage": False}},
            "goog:loggingPrefs": {"browser": "ALL", "performance": "ALL"}}
    b.session = b.call("POST", "/session", {"capabilities": {"alwaysMatch": caps}})["sessionId"]
    try:
        yield b
    finally:
        try:
            b.call("DELETE", f"/session/{b.session}")  # ends Chromium; the janitor ends the rest
        except (OSError, AssertionError):
            pass


@pytest.fixture
def browser(janitor: Janitor, tmp_path: Path) -> Iterator[Browser]:
    with open_browser(janitor, tmp_path / "chromium") as b:
        yield b


def row(b: Browser, pid: int) -> dict[str, Any] | None:
    return next((r for r in b.rows() if r["pid"] == pid), None)


def send(holder: subprocess.Popen[str], line: str) -> None:
    assert holder.stdin is not None
    holder.stdin.write(line + "\n")
    holder.stdin.flush()


def test_tree_page_shows_children_orphans_zombies_and_filters(janitor: Janitor, tmp_path: Path,
                                                              browser: Browser) -> None:
    d = start_daemon(janitor, tmp_path, CONFIG)
    holder = janitor.spawn([PYTHON, "-c", SCENE], stdin=subprocess.PIPE)
    (done,) = (int(x) for x in read_lines(holder, 1))
    browser.open(d.url + "/")
    # the roots with their counts by class, the version, links to /metrics and the API
    wait_for(lambda: browser.js("return document.querySelector('#roots tr[data-root=\"ui-job\"]')"
                                " !== null"), timeout=10)
    head = browser.js("return document.querySelector('header').textContent")
    assert "/metrics" in head and "/api/v1/roots" in head and "version" in head
    assert browser.js("return [...document.querySelectorAll('#roots th')].map(t => t.textContent)"
                      ) == ["root", "up", "members", "orphan", "zombie"]
    browser.click('#roots tr[data-root="ui-job"] a')
    wait_for(lambda: row(browser, holder.pid), timeout=10)
    assert "root" in row(browser, holder.pid)["text"]
    # the holder's exited children (`sh -c 'exit 3'` and `true`) are one folded row;
    # a click shows them, faded
    group = '#tree-canvas .row.exited-group[data-depth="1"]'
    wait_for(lambda: browser.js(f"return document.querySelector('{group}')?.textContent")
             == "▶2 exited", timeout=10)
    assert row(browser, done) is None
    browser.click(group)
    exited = wait_for(lambda: (r := row(browser, done)) and r["cls"] == "exited" and r, timeout=10)
    assert exited["gone"] and "exited" in exited["text"] and exited["depth"] == 1
    browser.click(group)  # folded again
    wait_for(lambda: row(browser, done) is None, timeout=2)

    # a child started now appears within 2 s (the page follows the root's event stream)
    send(holder, "spawn")
    sleeper, wrapper = (int(x) for x in read_lines(holder, 1)[0].split())
    janitor.track(sleeper)
    child = wait_for(lambda: row(browser, sleeper), timeout=2.0, interval=0.05)
    assert child["cls"] == "healthy" and "sleep" in child["text"]

    # the wrapper exits: its sleep is an orphan, still under the (faded) exited wrapper
    send(holder, "orphan")
    read_lines(holder, 1)
    orphan = wait_for(lambda: (r := row(browser, sleeper)) and r["cls"] == "orphaned" and r,
                      timeout=10)
    assert "orphan" in orphan["text"]
    w = row(browser, wrapper)
    assert w is not None and w["gone"] and w["cls"] == "exited"
    assert orphan["depth"] == w["depth"] + 1

    # an unreaped child is a zombie once past the grace
    send(holder, "zombie")
    (zombie,) = (int(x) for x in read_lines(holder, 1))
    janitor.track(zombie)
    z = wait_for(lambda: (r := row(browser, zombie)) and r["cls"] == "zombie" and r, timeout=10)
    assert "zombie" in z["text"]

    # the exited `true` hands its pid to a stranger: its tombstone says pid reused
    spawn_at_pid(janitor, done)
    reused = wait_for(lambda: (r := row(browser, done)) and r["cls"] == "pid_reused" and r,
                      timeout=10)
    assert "pid reused" in reused["text"]
    # counts by class in the roots list
    wait_for(lambda: browser.js(
        "return [...document.querySelectorAll('#roots tr[data-root=\"ui-job\"] td')]"
        ".map(t => t.textContent)")[3:] == ["1", "1"], timeout=10)

    # the filter: matches and their ancestors only; Escape clears it
    browser.type("#filter", "orphan")

    def filtered() -> set[int] | None:
        pids = {r["pid"] for r in browser.rows()}
        return pids if zombie not in pids else None

    shown = wait_for(filtered, timeout=5)
    assert shown == {holder.pid, wrapper, sleeper}
    browser.type("#filter", "\ue00c")  # Escape
    wait_for(lambda: row(browser, zombie), timeout=5)

    # selecting the orphan shows its chain of ancestors, beyond the root up to PID 1
    browser.js("document.querySelector(`#tree-canvas .row[data-pid=\"${arguments[0]}\"]`)"
               ".click()", sleeper)
    chain = wait_for(lambda: (t := browser.js(
        "return document.querySelector('#details .chain')?.textContent || ''"))
        and "starts here" in t and t, timeout=10)
    for pid in (1, os.getpid(), holder.pid, wrapper, sleeper):
        assert f"{pid} " in chain, (pid, chain)
    assert chain.index(f"{os.getpid()} ") < chain.index(f"{holder.pid} ") < chain.index(
        f"{wrapper} ") < chain.index(f"{sleeper} ")
    recent = browser.js("return document.getElementById('recent').textContent")
    assert "orphaned" in recent and "zombie" in recent and "added" in recent

    browser.screenshot(ARTIFACTS / "tree-page.png")
    assert browser.console_errors() == []


def test_tree_page_goes_through_tls_and_basic_auth(janitor: Janitor, tmp_path: Path,
                                                   browser: Browser, pki: Pki) -> None:  # noqa: F811
    hashed = bcrypt.hashpw(b"s3cret", bcrypt.gensalt(rounds=4)).decode()
    web = pki.dir / "ui-web.yml"
    web.write_text(f"tls_server_config:\n  cert_file: {pki.server_crt}\n"
                   f"  key_file: {pki.server_key}\n"
                   f"basic_auth_users:\n  prom: {hashed}\n")
    ctx = ssl.create_default_context(cafile=str(pki.ca))
    d = start_daemon(janitor, tmp_path, CONFIG, "--web.config.file", str(web), ssl_context=ctx)
    base = d.url

    def status(path: str, auth: bool) -> int:
        req = urllib.request.Request(base + path)
        if auth:
            req.add_header("Authorization", "Basic " + base64.b64encode(b"prom:s3cret").decode())
        try:
            with urllib.request.urlopen(req, context=ctx, timeout=10) as r:
                return r.status
        except urllib.error.HTTPError as e:
            return e.code

    for path in ("/", "/ui/app.js", "/ui/app.css", "/ui/favicon.svg",
                 "/api/v1/ancestors?root=exporter&pid=1"):
        assert status(path, False) == 401, path
    for path in ("/", "/ui/app.js", "/ui/app.css", "/ui/favicon.svg"):
        assert status(path, True) == 200, path
    assert status("/ui/nope.js", True) == 404
    assert status(f"/api/v1/ancestors?root=exporter&pid={d.proc.pid}", True) == 200
    assert status("/api/v1/events?root=exporter", False) == 401
    # in the browser: credentials typed once (here in the URL) serve the page's event
    # stream too (an EventSource sends them to its own origin; a 401 would mean polling)
    browser.open(f"https://prom:s3cret@127.0.0.1:{d.port}/#root=exporter")
    exporter = wait_for(lambda: row(browser, d.proc.pid), timeout=10)
    assert exporter["cls"] == "healthy" and "root" in exporter["text"]
    wait_for(lambda: browser.status().get("mode") == "stream", timeout=10)
    net = NetLog()
    net.read(browser)
    (stream,) = net.open_streams()
    assert stream["url"].startswith(f"https://127.0.0.1:{d.port}/api/v1/events?root=exporter&"), \
        stream["url"]
    assert browser.console_errors() == []


def test_tree_page_follows_the_event_stream_without_polling(janitor: Janitor, tmp_path: Path,
                                                             browser: Browser) -> None:
    d = start_daemon(janitor, tmp_path, CONFIG)
    holder = janitor.spawn([PYTHON, "-c", SCENE], stdin=subprocess.PIPE)
    read_lines(holder, 1)
    browser.open(d.url + "/#root=ui-job")
    wait_for(lambda: row(browser, holder.pid), timeout=10)
    wait_for(lambda: browser.status().get("mode") == "stream", timeout=10)
    st = browser.status()
    assert st["text"].startswith("live stream"), st
    net = NetLog()
    net.read(browser)
    # the document first, then one stream from the position that document is true at
    (stream,) = net.open_streams()
    seq = d.json("/api/v1/roots/ui-job")["seq"]
    assert re.fullmatch(rf"{re.escape(d.url)}/api/v1/events\?root=ui-job&since=ui-job%3A\d+",
                        stream["url"]), stream["url"]
    assert int(stream["url"].rsplit("%3A", 1)[1]) <= seq

    # a child forked now is on the page within a second, with no poll meanwhile
    t0 = time.monotonic()
    send(holder, "spawn")
    sleeper, wrapper = (int(x) for x in read_lines(holder, 1)[0].split())
    janitor.track(sleeper)
    child = wait_for(lambda: row(browser, sleeper), timeout=max(0.0, t0 + 1.0 - time.monotonic()),
                     interval=0.02)
    took = time.monotonic() - t0
    assert child["cls"] == "healthy" and child["depth"] == 2, child
    assert row(browser, wrapper) is not None
    time.sleep(max(0.0, t0 + 1.0 - time.monotonic()))  # the whole second
    during = net.read(browser)
    assert polls(during) == [], (polls(during), took)
    assert [r["url"] for r in during] == [], during  # no request at all: the stream carried it
    assert net.open_streams() == [stream], net.requests
    joined = [json.loads(data) for name, data in stream["messages"] if name == "joined"]
    assert sleeper in {e["pid"] for e in joined}, stream["messages"]
    st = browser.status()
    assert st["mode"] == "stream" and st["resyncs"] == "0" and int(st["events"]) >= 2, st
    # the exited wrapper and its orphan, from the stream too
    send(holder, "orphan")
    read_lines(holder, 1)
    wait_for(lambda: (r := row(browser, sleeper)) and r["cls"] == "orphaned", timeout=2)
    w = row(browser, wrapper)
    assert w is not None and w["gone"] and w["cls"] == "exited"
    wait_for(lambda: browser.js(
        "return [...document.querySelectorAll('#roots tr[data-root=\"ui-job\"] td')]"
        ".map(t => t.textContent)")[3] == "1", timeout=2)
    # what the page built from events is what the exporter's own document says
    shown_js = ("return [...document.querySelectorAll('#tree-canvas .row[data-pid]:not([hidden])')]"
                ".map(r => r.dataset.pid + ' ' + r.dataset.class).sort().join(',')")
    browser.click("#expand-all")  # the exited groups too

    def same_as_server() -> bool:
        doc = d.json("/api/v1/roots/ui-job")
        want = sorted(f"{m['pid']} {m['class']}" for m in doc["members"] + doc["tombstones"])
        return browser.js(shown_js) == ",".join(want)

    wait_for(same_as_server, timeout=3, interval=0.1)
    # the exited toggle hides tombstones (an exited parent of a live process stays, faded)
    done = next(r["pid"] for r in browser.rows() if r["gone"] and r["pid"] != wrapper)
    browser.click("#exited")
    wait_for(lambda: row(browser, done) is None, timeout=2)
    assert row(browser, sleeper) is not None and row(browser, wrapper)["gone"]
    browser.click("#exited")
    wait_for(lambda: row(browser, done), timeout=2)
    assert polls(net.read(browser)) == []
    assert browser.status()["resyncs"] == "0"
    assert browser.console_errors() == []


# keeps every EventSource the page opens, so a test can hand it frames of its own
KEEP_STREAMS = """
window.__streams = [];
window.EventSource = class extends window.EventSource {
  constructor(...args) { super(...args); window.__streams.push(this); }
};
"""


def test_tree_page_resubscribes_after_reset_gap_cut_off_and_pause(
        janitor: Janitor, tmp_path: Path, browser: Browser) -> None:
    d = start_daemon(janitor, tmp_path, CONFIG)
    holder = janitor.spawn([PYTHON, "-c", SCENE], stdin=subprocess.PIPE)
    read_lines(holder, 1)
    browser.before_scripts(KEEP_STREAMS)
    browser.open(d.url + "/#root=ui-job")
    wait_for(lambda: row(browser, holder.pid), timeout=10)
    wait_for(lambda: browser.status().get("mode") == "stream", timeout=10)
    net = NetLog()
    net.read(browser)

    def frame(name: str, data: dict[str, Any]) -> None:
        browser.js("window.__streams.at(-1).dispatchEvent("
                   "new MessageEvent(arguments[0], {data: JSON.stringify(arguments[1])}))",
                   name, data)

    def resubscribed(resyncs: int, streams: int) -> dict[str, Any]:
        """The page refetched the document and follows a new stream (its ``streams``th)
        from the document's seq; ``resyncs`` of them after a reset, a gap or a cut-off."""
        st = wait_for(lambda: (s := browser.status())["mode"] == "stream"
                      and s["resyncs"] == str(resyncs) and s, timeout=5)
        started = net.read(browser)
        assert f"{d.url}/api/v1/roots/ui-job" in polls(started), started
        # the old stream's end reaches the browser's network log a moment after the page
        # closed it
        wait_for(lambda: (started.extend(net.read(browser)) or True)
                 and len(net.open_streams()) == 1, timeout=3, interval=0.05)
        (stream,) = net.open_streams()
        assert stream["url"].endswith(f"&since=ui-job%3A{st['seq']}"), (stream, st)
        assert browser.js("return window.__streams.length") == streams
        return stream

    # reset: events were dropped before the page saw them
    seq = int(browser.status()["seq"])
    frame("reset", {"kind": "reset", "root": "ui-job", "lost": 5, "seq": seq + 6,
                    "reason": "test"})
    resubscribed(1, 2)
    # a gap in the seqs (never sent by the exporter, never ignored by the page)
    seq = int(browser.status()["seq"])
    frame("joined", {"kind": "joined", "root": "ui-job", "seq": seq + 2, "ts": time.time(),
                     "pid": 999999, "start_ticks": 1, "comm": "ghost", "depth": 1})
    resubscribed(2, 3)
    assert row(browser, 999999) is None
    # the exporter cuts the stream off (a slow client)
    frame("error", {"kind": "error", "reason": "slow", "message": "test"})
    resubscribed(3, 4)

    # paused: no stream, no polls; resumed: a fresh document and a stream again
    browser.click("#pause")
    wait_for(lambda: browser.status()["mode"] == "paused", timeout=2)
    # the stream's end reaches the browser's network log a moment after the page closed it
    wait_for(lambda: net.read(browser) is not None and net.open_streams() == [], timeout=3,
             interval=0.05)
    send(holder, "spawn")
    sleeper, _ = (int(x) for x in read_lines(holder, 1)[0].split())
    janitor.track(sleeper)
    time.sleep(1.2)
    assert net.read(browser) == [] and row(browser, sleeper) is None
    browser.click("#pause")
    wait_for(lambda: row(browser, sleeper), timeout=3)
    stream = resubscribed(3, 5)  # resuming is no resync
    # and it is live: the next process shows from the new stream
    send(holder, "zombie")
    (zombie,) = (int(x) for x in read_lines(holder, 1))
    janitor.track(zombie)
    wait_for(lambda: (r := row(browser, zombie)) and r["cls"] == "zombie", timeout=5)
    net.read(browser)
    assert zombie in {json.loads(data)["pid"] for name, data in stream["messages"]
                      if name == "joined"}
    assert browser.console_errors() == []


def test_tree_page_polls_when_the_stream_is_refused(janitor: Janitor, tmp_path: Path,
                                                   browser: Browser) -> None:
    # no stream may open (web.max_streams: 0, every /api/v1/events is a 503)
    d = start_daemon(janitor, tmp_path, CONFIG + "web:\n  max_streams: 0\n")
    holder = janitor.spawn([PYTHON, "-c", SCENE], stdin=subprocess.PIPE)
    read_lines(holder, 1)
    browser.open(d.url + "/#root=ui-job")
    wait_for(lambda: row(browser, holder.pid), timeout=10)
    st = wait_for(lambda: (s := browser.status())["mode"] == "polling" and s, timeout=10)
    assert st["text"].startswith("polling every 1 s (event stream: 503 "), st
    net = NetLog()
    net.read(browser)
    assert net.open_streams() == []
    # the polls go on, once a second, and still show a new child
    send(holder, "spawn")
    sleeper, _ = (int(x) for x in read_lines(holder, 1)[0].split())
    janitor.track(sleeper)
    wait_for(lambda: row(browser, sleeper), timeout=3, interval=0.05)
    time.sleep(1.5)
    assert f"{d.url}/api/v1/roots/ui-job" in polls(net.read(browser))
    assert browser.status()["mode"] == "polling"
    # the 503s the page met are in the console; nothing else is
    assert all("/api/v1/events" in e for e in browser.console_errors())
