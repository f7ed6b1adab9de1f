#!/usr/bin/env python3
"""Tree page: first render, redraw per refresh, Expand / Collapse all, and the JSON each
refresh costs, with 500, 1,000 and 5,000 live members in one root.

    .venv/bin/python bench/page.py [--sizes 500,1000,5000] [--refreshes 30] [--polls 6]
                                   [--timeout 900]

The root is real: a small Python holder (the root's instance, ``select: pid``) runs
bench/sleepers.c (compiled at run time) with N - 2 sleeping children, so the root has N
live members; at the bench's word the holder forks a child that exits at once. For each
size the real daemon (.venv/bin/proctree-exporter, a config in a temporary directory) is
started twice: as configured by default, where the page follows the root's event stream,
and with ``web.max_streams: 0``, where it falls back to polling the root's document once a
second. The page is opened (``/#root=page``) in the headless Chromium the UI tests use
(Debian's chromium, driven by chromedriver's W3C WebDriver API; 1440 x 900, three panes).

Timing is the page's own: app.js ends each redraw with a Performance API measure
("ptx:doc": a fetched document becomes the page; "ptx:frame": the events since the last
frame are applied and drawn; "ptx:refresh": refilter and redraw). A script the bench adds
before the page's own wraps performance.measure to force style and layout right after each
one (reading offsetHeight), so a figure is the script's work plus style and layout; paint
of the ~60 rows in view is not in it, but every frame of 50 ms or more, paint included,
is a Long Animation Frame, and the longest is reported ("LoAF max").

- first render: from navigation start (performance.timeOrigin) to the first full tree,
  laid out: page load, the document's fetch and parse, the index, the rows in view.
- redraw (stream): ``--refreshes`` times, the holder forks a child that exits (its
  ``joined`` and ``exited`` events) and the bench waits for the page to draw them; the
  "ptx:frame" figures.
- redraw (poll): the "ptx:doc" figures of ``--polls`` polls, each a whole document.
- Collapse all / Expand all: a click (5 each, alternating), to the tree laid out again.
- JSON per refresh: stream, the event-stream bytes received during the refreshes (the
  DevTools Network log: encodedDataLength of the stream's dataReceived), per refresh;
  poll, the transferSize (headers and body, from Resource Timing) of what each poll fetches
  (``/api/v1/roots`` and ``/api/v1/roots/page``).

Target (issue 17): a redraw at 5,000 members in <= 100 ms, judged on the 95th percentile
of the stream's and the polls' redraws together (the slowest is printed beside it: on a
shared 2-CPU machine one redraw in a run can meet another's CPU burst or a garbage
collection; the load average before and after the run is printed too). Prints a table
with PASS/MISS and writes ``bench/results/page.json``; a MISS is printed, never turned into
a failing exit status. Every process it starts (holder, sleepers, daemons, chromedriver
and the Chromium it starts) is ended by pid in a ``finally``, also on failure; the whole
run is bounded by ``--timeout`` (SIGALRM).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import select
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

from harness import free_port, start_ticks

sys.path.insert(0, str(Path(__file__).resolve().parent))

import scrape  # compile_sleepers, raised_limits, http_get, leftovers

REPO = Path(__file__).resolve().parent.parent
EXE = REPO / ".venv" / "bin" / "proctree-exporter"
OUT = REPO / "bench" / "results" / "page.json"
CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
TARGET_MS = 100.0
TARGET_SIZE = 5000
ROOT = "page"

# The root's instance: runs the sleepers (N - 2 children), prints "ready K SLEEPERS_PID";
# then, for each "fork" line, forks a child that exits at once and prints its pid. EOF on
# stdin (the bench is done or gone): it closes the sleepers' stdin (they end) and exits.
HOLDER = r"""
import os, subprocess, sys
g = subprocess.Popen([sys.argv[1], "ptxpage", sys.argv[2]], stdin=subprocess.PIPE,
                     stdout=subprocess.PIPE)
print(g.stdout.readline().decode().strip(), g.pid, flush=True)
for line in sys.stdin:
    if line.strip() == "fork":
        pid = os.fork()
        if pid == 0:
            os._exit(0)
        os.waitpid(pid, 0)
        print(pid, flush=True)
g.stdin.close()
g.wait()
"""

# Added before the page's own scripts: force style + layout after each of app.js's
# measures and keep the figures; collect Resource Timing and Long Animation Frames.
INSTRUMENT = """
window.__ptx = []; window.__res = []; window.__loaf = [];
const measure = performance.measure.bind(performance);
performance.measure = function (name, opts) {
  const e = measure(name, opts);
  if (String(name).startsWith('ptx:')) {
    void document.documentElement.offsetHeight;  // style and layout, now
    const at = performance.now();
    window.__ptx.push({name: String(name), start: e.startTime, script: e.duration,
                       laid: at - e.startTime, at,
                       rows: document.querySelectorAll('#tree-canvas .row:not([hidden])').length});
  }
  return e;
};
new PerformanceObserver((l) => { for (const e of l.getEntries()) window.__res.push({
  url: e.name, transfer: e.transferSize, encoded: e.encodedBodySize, decoded: e.decodedBodySize,
  start: e.startTime, end: e.responseEnd}); }).observe({type: 'resource', buffered: true});
try {
  new PerformanceObserver((l) => { for (const e of l.getEntries()) window.__loaf.push({
    start: e.startTime, duration: e.duration,
    render: e.renderStart ? e.startTime + e.duration - e.renderStart : 0,
    scripts: e.scripts.map((x) => ({what: x.invoker, ms: x.duration}))});
  }).observe({type: 'long-animation-frame',
                                                             buffered: true});
} catch (_) { /* no LoAF in this browser */ }
"""


class Timeout(Exception):
    pass


# -- processes ---------------------------------------------------------------------------


def descendants(pid: int) -> list[int]:
    """Every process below ``pid`` now (the kernel's children lists), with start times."""
    out: list[int] = []
    todo = [pid]
    while todo:
        p = todo.pop()
        try:
            tasks = os.listdir(f"/proc/{p}/task")
        except OSError:
            continue
        for t in tasks:
            try:
                kids = Path(f"/proc/{p}/task/{t}/children").read_text().split()
            except OSError:
                continue
            for k in kids:
                out.append(int(k))
                todo.append(int(k))
    return out


class Procs:
    """What the bench started, each to be ended by pid (checked by start time)."""

    def __init__(self) -> None:
        self.known: list[tuple[int, int | None, subprocess.Popen[Any] | None]] = []

    def add(self, popen: subprocess.Popen[Any]) -> subprocess.Popen[Any]:
        self.known.append((popen.pid, start_ticks(popen.pid), popen))
        return popen

    def adopt(self, pid: int) -> None:
        self.known.append((pid, start_ticks(pid), None))

    def end(self, popen: subprocess.Popen[Any], sig: int = signal.SIGTERM,
            wait_s: float = 15.0) -> None:
        """End one: ``sig``, then SIGKILL after ``wait_s``; its descendants too, by pid."""
        below = [(p, start_ticks(p)) for p in descendants(popen.pid)]
        if popen.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                popen.send_signal(sig)
            try:
                popen.wait(timeout=wait_s)
            except subprocess.TimeoutExpired:
                popen.kill()
                popen.wait(timeout=10)
        deadline = time.monotonic() + 10
        for p, st in below:
            while st is not None and start_ticks(p) == st and time.monotonic() < deadline:
                time.sleep(0.02)  # they end by themselves (EOF, a death signal)
            if st is not None and start_ticks(p) == st:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(p, signal.SIGKILL)

    def end_all(self) -> None:
        for pid, st, popen in reversed(self.known):
            if popen is not None:
                with contextlib.suppress(OSError, subprocess.TimeoutExpired):
                    self.end(popen)
            elif st is not None and start_ticks(pid) == st:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
        self.known.clear()


def read_line(p: subprocess.Popen[bytes], timeout: float) -> str:
    assert p.stdout is not None
    fd = p.stdout.fileno()
    buf = b""
    end = time.monotonic() + timeout
    while not buf.endswith(b"\n"):
        left = end - time.monotonic()
        if left <= 0 or not select.select([fd], [], [], left)[0]:
            raise Timeout(f"pid {p.pid} said nothing in {timeout:g} s")
        chunk = os.read(fd, 1)
        if not chunk:
            raise RuntimeError(f"pid {p.pid} exited")
        buf += chunk
    return buf.decode().strip()


def start_holder(procs: Procs, binary: Path, members: int) -> tuple[subprocess.Popen[bytes], int]:
    """The root's instance with its sleepers: ``members`` live processes in all."""
    h = procs.add(subprocess.Popen([sys.executable, "-c", HOLDER, str(binary), str(members - 2)],
                                   stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                   start_new_session=True))
    words = read_line(h, 120).split()
    if words[0] != "ready":
        raise RuntimeError(f"sleepers: {' '.join(words)}")
    procs.adopt(int(words[2]))
    return h, int(words[2])


def start_daemon(procs: Procs, tmp: Path, holder: int, poll: bool
                 ) -> tuple[subprocess.Popen[bytes], int]:
    cfg = tmp / "config.yaml"
    cfg.write_text(f"roots:\n  - name: {ROOT}\n    select: pid\n    match: {holder}\n"
                   "    max_members: 20000\n"
                   + ("web:\n  max_streams: 0\n" if poll else ""))
    port = free_port()
    log = open(tmp / "daemon.log", "ab")  # noqa: SIM115 - closed with the process
    with log:
        d = procs.add(subprocess.Popen([str(EXE), "--config", str(cfg), "--web.listen-address",
                                        f"127.0.0.1:{port}"], stdout=log,
                                       stderr=subprocess.STDOUT, start_new_session=True))
    end = time.monotonic() + 120
    while True:
        with contextlib.suppress(OSError):
            if scrape.http_get(port, "/-/ready", timeout=2)[0] == 200:
                break
        if d.poll() is not None:
            raise RuntimeError(f"daemon exited: see {tmp / 'daemon.log'}")
        if time.monotonic() > end:
            raise Timeout("daemon not ready in 120 s")
        time.sleep(0.05)
    return d, port


# -- the browser ---------------------------------------------------------------------------


class Browser:
    """Headless Chromium through chromedriver's W3C WebDriver API (as the UI tests)."""

    def __init__(self, procs: Procs, profile: Path) -> None:
        for exe in (CHROMIUM, CHROMEDRIVER):
            if not shutil.which(exe):
                raise SystemExit(f"{exe} missing: `scripts/bootstrap test` installs Debian's "
                                 "chromium and chromium-driver")
        port = free_port()
        self.driver = procs.add(subprocess.Popen([CHROMEDRIVER, f"--port={port}"],
                                                 stdout=subprocess.DEVNULL,
                                                 stderr=subprocess.DEVNULL,
                                                 start_new_session=True))
        self.procs = procs
        self.base = f"http://127.0.0.1:{port}"
        self.session = ""
        end = time.monotonic() + 30
        while True:
            with contextlib.suppress(OSError, RuntimeError):
                if self.call("GET", "/status").get("ready"):
                    break
            if time.monotonic() > end:
                raise Timeout("chromedriver not ready in 30 s")
            time.sleep(0.05)
        args = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                "--no-first-run", "--disable-background-networking",
                "--disable-component-update", "--disable-sync", "--disable-dev-shm-usage",
                f"--user-data-dir={profile}", "--window-size=1440,900"]
        caps = {"browserName": "chrome",
                "goog:chromeOptions": {"binary": CHROMIUM, "args": args,
                                       "perfLoggingPrefs": {"enableNetwork": True,
                                                            "enablePage": False}},
                "goog:loggingPrefs": {"performance": "ALL"}}
        self.session = self.call("POST", "/session",
                                 {"capabilities": {"alwaysMatch": caps}})["sessionId"]
        self.s("POST", "/goog/cdp/execute", {"cmd": "Page.addScriptToEvaluateOnNewDocument",
                                             "params": {"source": INSTRUMENT}})

    def call(self, method: str, path: str, body: Any = None) -> Any:
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(self.base + path, data=data, method=method,
                                     headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=60) as r:
                return json.loads(r.read())["value"]
        except urllib.error.HTTPError as e:
            raise RuntimeError(f"webdriver {method} {path}: {e.code} {e.read()[:300]!r}") from e

    def s(self, method: str, path: str, body: Any = None) -> Any:
        return self.call(method, f"/session/{self.session}{path}", body)

    def js(self, script: str, *args: Any) -> Any:
        return self.s("POST", "/execute/sync", {"script": script, "args": list(args)})

    def network(self) -> list[tuple[str, dict[str, Any]]]:
        out = []
        for entry in self.s("POST", "/se/log", {"type": "performance"}):
            msg = json.loads(entry["message"])["message"]
            if msg["method"].startswith("Network."):
                out.append((msg["method"], msg["params"]))
        return out

    def close(self) -> None:
        if self.session:
            with contextlib.suppress(OSError, RuntimeError):
                self.call("DELETE", f"/session/{self.session}")  # Chromium ends
            self.session = ""
        self.procs.end(self.driver)


def wait(pred: Callable[[], Any], timeout: float, what: str, interval: float = 0.02) -> Any:
    end = time.monotonic() + timeout
    while True:
        got = pred()
        if got:
            return got
        if time.monotonic() > end:
            raise Timeout(f"{what}: not within {timeout:g} s")
        time.sleep(interval)


# -- one size -------------------------------------------------------------------------------


def stats(values: list[float]) -> dict[str, float]:
    if not values:
        return {"n": 0}
    v = sorted(values)
    return {"n": len(v), "median": statistics.median(v), "p95": v[min(len(v) - 1,
                                                                      int(0.95 * len(v)))],
            "max": v[-1], "min": v[0]}


def ptx(b: Browser, name: str, since: int = 0) -> list[dict[str, Any]]:
    return b.js("return window.__ptx.slice(arguments[1]).filter(e => e.name === arguments[0])",
                name, since)


def count_text(b: Browser) -> str:
    return b.js("return document.getElementById('match-count').textContent")


def open_page(b: Browser, port: int, members: int) -> dict[str, Any]:
    b.s("POST", "/url", {"url": f"http://127.0.0.1:{port}/#root={ROOT}"})
    try:
        wait(lambda: ptx(b, "ptx:doc"), 120, "first document drawn")
    except Timeout as exc:
        status = b.js("return document.getElementById('status').textContent")
        raise Timeout(f"{exc} (the page's status line: {status!r})") from exc
    # the first document lists every member: the tree's count says so
    wait(lambda: count_text(b).startswith(f"{members} processes"), 30,
         f"{members} processes listed (page says {count_text(b)!r})")
    first = ptx(b, "ptx:doc")[0]
    res = b.js("return window.__res")
    doc = next((r for r in res if r["url"].endswith(f"/api/v1/roots/{ROOT}")), None)
    return {"first_render_ms": first["at"], "first_doc_ms": first["laid"],
            "first_doc_script_ms": first["script"], "rows_in_dom": first["rows"],
            "doc_fetch_ms": (doc["end"] - doc["start"]) if doc else None,
            "doc_bytes": doc["transfer"] if doc else None,
            "doc_body_bytes": doc["decoded"] if doc else None}


def fold_all(b: Browser, reps: int) -> dict[str, Any]:
    """Collapse all, Expand all, alternately; each: click -> tree laid out again."""
    out: dict[str, list[float]] = {"collapse": [], "expand": []}
    rows = {}
    for _ in range(reps):
        for what in ("collapse", "expand"):
            ms = b.js("const t0 = performance.now();"
                      "document.getElementById(arguments[0] + '-all').click();"
                      "void document.documentElement.offsetHeight;"
                      "return performance.now() - t0", what)
            out[what].append(ms)
            rows[what] = b.js("return document.querySelectorAll("
                              "'#tree-canvas .row:not([hidden])').length")
    return {"collapse_ms": stats(out["collapse"]), "expand_ms": stats(out["expand"]),
            "rows_after": rows}


def stream_refreshes(b: Browser, holder: subprocess.Popen[bytes], n: int) -> dict[str, Any]:
    """``n`` forks, each drawn from the stream before the next; the frames and the bytes."""
    wait(lambda: b.js("return document.getElementById('status').dataset.mode") == "stream",
         30, "page following the stream")
    b.network()  # drop what came before
    since = b.js("return window.__ptx.length")
    applied0 = int(b.js("return document.getElementById('status').dataset.events"))
    assert holder.stdin is not None
    for _ in range(n):
        before = int(b.js("return document.getElementById('status').dataset.events"))
        holder.stdin.write(b"fork\n")
        holder.stdin.flush()
        pid = int(read_line(holder, 10))
        # its joined and its exited, applied and drawn (the row's key shows the pid)
        wait(lambda before=before: int(b.js(
            "return document.getElementById('status').dataset.events")) >= before + 2,
             10, f"events of pid {pid} applied")
        time.sleep(0.15)  # the frame after them (at most one per animation frame)
    time.sleep(0.3)
    frames = ptx(b, "ptx:frame", since)
    applied = int(b.js("return document.getElementById('status').dataset.events")) - applied0
    stream_bytes = 0
    messages = 0
    for method, p in b.network():
        if method == "Network.dataReceived":
            stream_bytes += p.get("encodedDataLength") or 0
        elif method == "Network.eventSourceMessageReceived":
            messages += 1
    # every request the page made meanwhile (there should be only the stream's data)
    return {"refreshes": n, "frames": len(frames), "events": applied, "messages": messages,
            "laid_ms": [f["laid"] for f in frames],
            "frame_ms": stats([f["laid"] for f in frames]),
            "frame_script_ms": stats([f["script"] for f in frames]),
            "bytes": stream_bytes, "bytes_per_refresh": stream_bytes / n}


def poll_refreshes(b: Browser, n: int) -> dict[str, Any]:
    wait(lambda: b.js("return document.getElementById('status').dataset.mode") == "polling",
         30, "page polling")
    since = b.js("return window.__ptx.length")
    res_since = b.js("return window.__res.length")
    wait(lambda: len(ptx(b, "ptx:doc", since)) >= n, n * 3 + 20, f"{n} polls")
    docs = ptx(b, "ptx:doc", since)[:n]
    res = b.js("return window.__res.slice(arguments[0])", res_since)
    root_doc = [r for r in res if r["url"].endswith(f"/api/v1/roots/{ROOT}")]
    roots = [r for r in res if r["url"].endswith("/api/v1/roots")]
    per_poll = (statistics.median(r["transfer"] for r in root_doc)
                + (statistics.median(r["transfer"] for r in roots) if roots else 0))
    return {"polls": len(docs), "laid_ms": [d["laid"] for d in docs],
            "doc_ms": stats([d["laid"] for d in docs]),
            "doc_script_ms": stats([d["script"] for d in docs]),
            "fetch_ms": stats([r["end"] - r["start"] for r in root_doc]),
            "bytes_per_refresh": per_poll,
            "doc_body_bytes": statistics.median(r["decoded"] for r in root_doc)}


def loaf_max(b: Browser, since_ms: float) -> float:
    return b.js("return Math.max(0, ...window.__loaf.filter(e => e.start >= arguments[0])"
                ".map(e => e.duration))", since_ms)


def measure_size(procs: Procs, binary: Path, tmp: Path, members: int, args: argparse.Namespace
                 ) -> dict[str, Any]:
    holder, _ = start_holder(procs, binary, members)
    row: dict[str, Any] = {"members": members}
    try:
        # the page following the stream
        daemon, port = start_daemon(procs, tmp, holder.pid, poll=False)
        b = Browser(procs, tmp / f"chromium-{members}")
        try:
            row.update(open_page(b, port, members))
            t_mark = b.js("return performance.now()")
            row["stream"] = stream_refreshes(b, holder, args.refreshes)
            row["stream"]["loaf_max_ms"] = loaf_max(b, t_mark)
            t_mark = b.js("return performance.now()")
            row["fold"] = fold_all(b, 5)
            row["fold"]["loaf_max_ms"] = loaf_max(b, t_mark)
        finally:
            b.close()
            procs.end(daemon)
        # the page polling (no stream may open)
        daemon, port = start_daemon(procs, tmp, holder.pid, poll=True)
        b = Browser(procs, tmp / f"chromium-{members}-poll")
        try:
            b.s("POST", "/url", {"url": f"http://127.0.0.1:{port}/#root={ROOT}"})
            t_mark = b.js("return performance.now()")
            row["poll"] = poll_refreshes(b, args.polls)
            row["poll"]["loaf_max_ms"] = loaf_max(b, t_mark)
        finally:
            b.close()
            procs.end(daemon)
    finally:
        procs.end(holder)
    row["stream_frames"] = row["stream"].pop("laid_ms")
    row["poll_docs"] = row["poll"].pop("laid_ms")
    return row


# -- main -------------------------------------------------------------------------------------


def fmt(v: float | None, unit: str = "ms") -> str:
    if v is None:
        return "-"
    if unit == "B":
        return f"{v / 1024:,.1f} KiB" if v >= 10240 else f"{v:,.0f} B"
    return f"{v:.1f}"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", default="500,1000,5000")
    ap.add_argument("--refreshes", type=int, default=30)
    ap.add_argument("--polls", type=int, default=6)
    ap.add_argument("--timeout", type=float, default=900.0, help="the whole run, in s")
    args = ap.parse_args()
    sizes = [int(x) for x in args.sizes.split(",")]

    def on_alarm(signum: int, frame: Any) -> None:
        raise Timeout(f"the run took more than --timeout {args.timeout:g} s")

    signal.signal(signal.SIGALRM, on_alarm)
    signal.alarm(max(1, int(args.timeout)))
    procs = Procs()
    load_before = os.getloadavg()
    notes: list[str] = []
    rows = []
    try:
        with tempfile.TemporaryDirectory(prefix="ptx-page-") as tmp_s, \
                scrape.raised_limits(max(sizes) + 2000, notes):
            tmp = Path(tmp_s)
            binary, linkage = scrape.compile_sleepers(tmp)
            for members in sizes:
                rows.append(measure_size(procs, binary, tmp, members, args))
                print(f"page: {members:,} done", file=sys.stderr, flush=True)
    finally:
        signal.alarm(0)
        sessions = {pid for pid, _, p in procs.known if p is not None}
        procs.end_all()
        left = scrape.leftovers(sessions)
        if left:
            print(f"page: processes left over: {left}", file=sys.stderr)
    chromium = subprocess.run([CHROMIUM, "--version"], capture_output=True, text=True,
                              timeout=30).stdout.strip()
    load_after = os.getloadavg()
    print(f"tree page, headless {chromium} at 1440x900; {os.cpu_count()} CPUs, "
          f"{platform.release()}; sleepers {linkage}; load average {load_before[0]:.1f} "
          f"before, {load_after[0]:.1f} after")
    for n in notes:
        print(f"  {n}")
    print("  ms: the page's work plus style and layout (Performance API measures in app.js); "
          "median / max")
    head = (f"{'members':>8} {'first render':>13} {'redraw stream':>14} {'redraw poll':>12} "
            f"{'collapse all':>13} {'expand all':>11} {'JSON/refresh stream':>20} "
            f"{'JSON/refresh poll':>18} {'LoAF max':>9} {'target':>7}")
    print(head)
    for r in rows:
        st, po, fo = r["stream"], r["poll"], r["fold"]
        both = stats(r["stream_frames"] + r["poll_docs"])
        verdict = ("PASS" if both["p95"] <= TARGET_MS else "MISS") \
            if r["members"] == TARGET_SIZE else ""
        r["redraw_ms"] = both
        r["verdict"] = verdict
        loaf = max(st["loaf_max_ms"], fo["loaf_max_ms"], po["loaf_max_ms"])
        print(f"{r['members']:>8,} {fmt(r['first_render_ms']):>13} "
              f"{fmt(st['frame_ms'].get('median')) + ' / ' + fmt(st['frame_ms'].get('max')):>14} "
              f"{fmt(po['doc_ms'].get('median')) + ' / ' + fmt(po['doc_ms'].get('max')):>12} "
              f"{fmt(fo['collapse_ms']['median']) + ' / ' + fmt(fo['collapse_ms']['max']):>13} "
              f"{fmt(fo['expand_ms']['median']) + ' / ' + fmt(fo['expand_ms']['max']):>11} "
              f"{fmt(st['bytes_per_refresh'], 'B'):>20} {fmt(po['bytes_per_refresh'], 'B'):>18} "
              f"{fmt(loaf) if loaf else '<50':>9} {verdict or '':>7}")
    print(f"  target: redraw <= {TARGET_MS:g} ms at {TARGET_SIZE:,} members (95th percentile "
          "of the stream's and the polls' redraws)")
    for r in rows:
        red = r["redraw_ms"]
        print(f"  {r['members']:,}: redraws p95 {fmt(red['p95'])} ms, max {fmt(red['max'])} ms "
              f"({red['n']}); Collapse all leaves {r['fold']['rows_after']['collapse']} rows "
              "in the DOM")
    for r in rows:
        st = r["stream"]
        print(f"  {r['members']:,}: first document {fmt(r['doc_bytes'], 'B')} in "
              f"{fmt(r['doc_fetch_ms'])} ms, drawn in {fmt(r['first_doc_ms'])} ms "
              f"({r['rows_in_dom']} rows in the DOM); stream: {st['refreshes']} forks, "
              f"{st['events']} events in {st['frames']} frames, {st['bytes']:,} B")
    OUT.parent.mkdir(exist_ok=True)
    OUT.write_text(json.dumps({"chromium": chromium, "cpus": os.cpu_count(),
                               "kernel": platform.release(), "target_ms": TARGET_MS,
                               "loadavg_before": load_before, "loadavg_after": load_after,
                               "rows": rows, "notes": notes}, indent=1))
    print(f"wrote {OUT}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
