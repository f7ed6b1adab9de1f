"""The tree page with a big root, in a real headless Chromium, against the real daemon and
3,000 real processes in one root (bench/sleepers.c, compiled here).

Behaviour, not timing (the timings are bench/page.py's): the page lists every member and
says how many, yet keeps only the rows in view in the DOM; scrolling to the end shows the
last member; the filter finds one member among thousands; the keyboard moves the
selection past the rows first in view and scrolls it into view; Collapse all and Expand
all fold and unfold the thousands; a process forked into the big root shows from the
event stream. Fails (never skips) without Chromium, like the other UI tests.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

from .conftest import PYTHON, REPO, Janitor, read_lines, wait_for
from .daemon_helpers import start_daemon
from .test_ui_chromium import Browser, open_browser, row, send

pytestmark = pytest.mark.kernel

SLEEPERS_C = REPO / "bench" / "sleepers.c"
MEMBERS = 3000  # the holder, the sleepers' parent and its 2,998 children
ROW_H = 22      # px, app.js's ROW_H

# The root's instance: runs the sleepers, prints "ready K SLEEPERS_PID"; on "spawn" starts
# one more (a sleepers process with no children, comm ptxlate) and prints its pid. EOF on
# stdin: it ends what it started (the sleepers end on EOF of their own stdin) and exits.
HOLDER = """
import subprocess, sys
g = subprocess.Popen([sys.argv[1], 'ptxscale', sys.argv[2]], stdin=subprocess.PIPE,
                     stdout=subprocess.PIPE)
print(g.stdout.readline().decode().strip(), g.pid, flush=True)
late = []
for line in sys.stdin:
    if line.strip() == 'spawn':
        p = subprocess.Popen([sys.argv[1], 'ptxlate', '0'], stdin=subprocess.PIPE,
                             stdout=subprocess.DEVNULL)
        late.append(p)
        print(p.pid, flush=True)
for p in [g, *late]:
    p.stdin.close()
for p in [g, *late]:
    p.wait()
"""

CONFIG = """
roots:
  - name: scale
    select: pid
    match: {holder}
    max_members: 20000
"""

# the rows drawn (those a reader sees: a pooled row not in use must not be), top to
# bottom, with where they sit
SHOWN_JS = """
const sc = document.getElementById('tree-scroll');
return {top: sc.scrollTop, height: sc.clientHeight,
  rows: [...document.querySelectorAll('#tree-canvas .row')]
    .filter(r => getComputedStyle(r).display !== 'none').map(r => ({
    pid: r.dataset.pid ? Number(r.dataset.pid) : null, key: r.dataset.key,
    y: new DOMMatrix(getComputedStyle(r).transform).m42,
    selected: r.classList.contains('selected'), text: r.textContent}))
    .sort((a, b) => a.y - b.y)};
"""


def build_sleepers(tmp_path: Path) -> Path:
    cc = shutil.which("cc")
    assert cc, "no C compiler: scripts/bootstrap test installs gcc and libc6-dev"
    binary = tmp_path / "ptxsleepers"
    subprocess.run([cc, "-O2", "-Wall", "-o", str(binary), str(SLEEPERS_C)], check=True)
    return binary


def shown(b: Browser) -> dict[str, Any]:
    return b.js(SHOWN_JS)


def in_view(view: dict[str, Any], r: dict[str, Any]) -> bool:
    return view["top"] <= r["y"] and r["y"] + ROW_H <= view["top"] + view["height"]


def count_text(b: Browser) -> str:
    return b.js("return document.getElementById('match-count').textContent")


def scroll_to_end(b: Browser) -> None:
    b.js("const sc = document.getElementById('tree-scroll'); sc.scrollTop = sc.scrollHeight;")


def test_tree_page_with_thousands_of_members(janitor: Janitor, tmp_path: Path) -> None:
    binary = build_sleepers(tmp_path)
    holder = janitor.spawn([PYTHON, "-c", HOLDER, str(binary), str(MEMBERS - 2)],
                           stdin=subprocess.PIPE)
    try:
        ready, kids, sleepers = read_lines(holder, 1, timeout=60)[0].split()
        assert ready == "ready" and int(kids) == MEMBERS - 2, (ready, kids)
        janitor.track(int(sleepers))
        d = start_daemon(janitor, tmp_path, CONFIG.format(holder=holder.pid))
        doc = wait_for(lambda: (x := d.json("/api/v1/roots/scale"))["member_count"] == MEMBERS
                       and x, timeout=20, interval=0.2)
        # the page's order: by lineage, then by start time and pid among siblings
        children = sorted((m for m in doc["members"] if m["depth"] == 2),
                          key=lambda m: (m["start_ticks"], m["pid"]))
        order = [holder.pid, int(sleepers)] + [m["pid"] for m in children]
        assert len(order) == MEMBERS

        with open_browser(janitor, tmp_path / "chromium") as b:
            b.open(d.url + "/#root=scale")
            # every member listed and counted, in the tree and in the roots list
            wait_for(lambda: count_text(b) == f"{MEMBERS} processes", timeout=20)
            wait_for(lambda: b.js("return document.querySelector("
                                  "'#roots tr[data-root=\"scale\"] td:nth-child(3)')"
                                  "?.textContent") == str(MEMBERS), timeout=10)
            view = shown(b)
            assert [r["pid"] for r in view["rows"][:3]] == order[:3], view["rows"][:3]
            # only the rows in view (and a few either side) are in the DOM
            assert 10 <= len(view["rows"]) < 200, len(view["rows"])
            assert b.js("return document.getElementById('tree-canvas').offsetHeight") \
                == MEMBERS * ROW_H

            # scrolling to the end shows the last member, at the bottom of the view
            scroll_to_end(b)
            view = wait_for(lambda: (v := shown(b))["rows"][-1]["pid"] == order[-1] and v,
                            timeout=5)
            last = view["rows"][-1]
            assert in_view(view, last) and last["y"] == (MEMBERS - 1) * ROW_H, (last, view["top"])
            assert [r["pid"] for r in view["rows"] if in_view(view, r)] == \
                order[MEMBERS - len([r for r in view["rows"] if in_view(view, r)]):]
            assert len(view["rows"]) < 200

            # the filter finds one member among thousands (with its ancestors)
            wanted = order[MEMBERS // 2]
            b.type("#filter", str(wanted))
            wait_for(lambda: count_text(b).endswith(f"of {MEMBERS} match"), timeout=5)
            found = wait_for(lambda: row(b, wanted), timeout=5)
            assert found["depth"] == 2 and "ptxscale" in found["text"]
            pids = [r["pid"] for r in shown(b)["rows"]]
            assert pids[:2] == [holder.pid, int(sleepers)], pids[:5]
            assert all(str(wanted) in str(p) for p in pids[2:]), pids
            b.type("#filter", "\ue00c")  # Escape
            wait_for(lambda: count_text(b) == f"{MEMBERS} processes", timeout=5)

            # the keyboard: from the first row, 60 rows down (past what was in view); the
            # selection is shown and scrolled into view
            b.js("document.getElementById('tree-scroll').scrollTop = 0")
            b.js("document.querySelector(`#tree-canvas .row[data-pid=\"${arguments[0]}\"]`)"
                 ".click()", holder.pid)
            b.type("#tree-scroll", "\ue015" * 60)  # ArrowDown
            view = wait_for(lambda: (v := shown(b)) and any(
                r["selected"] and r["pid"] == order[60] for r in v["rows"]) and v, timeout=5)
            sel = next(r for r in view["rows"] if r["selected"])
            assert in_view(view, sel) and sel["y"] == 60 * ROW_H, (sel, view["top"])
            details = b.js("return document.querySelector('#details h3')?.textContent || ''")
            assert details.startswith(f"{order[60]}ptxscale"), details

            # Collapse all: the sleepers' parent folds its thousands into one row
            b.click("#collapse-all")
            view = wait_for(lambda: (v := shown(b)) and len(v["rows"]) == 2 and v, timeout=5)
            assert [r["pid"] for r in view["rows"]] == [holder.pid, int(sleepers)]
            assert f"+{MEMBERS - 2}" in view["rows"][1]["text"], view["rows"][1]
            assert count_text(b) == f"{MEMBERS} processes"
            assert b.js("return document.getElementById('tree-canvas').offsetHeight") \
                == 2 * ROW_H
            # Expand all: every row again, the last one at the end
            b.click("#expand-all")
            wait_for(lambda: b.js("return document.getElementById('tree-canvas')"
                                  ".offsetHeight") == MEMBERS * ROW_H, timeout=5)
            scroll_to_end(b)
            wait_for(lambda: shown(b)["rows"][-1]["pid"] == order[-1], timeout=5)

            # a process started in the big root now shows from the event stream, last
            wait_for(lambda: b.js("return document.getElementById('status').dataset.mode")
                     == "stream", timeout=10)
            send(holder, "spawn")
            (late,) = (int(x) for x in read_lines(holder, 1))
            janitor.track(late)
            wait_for(lambda: count_text(b) == f"{MEMBERS + 1} processes", timeout=5)
            scroll_to_end(b)
            view = wait_for(lambda: (v := shown(b))["rows"][-1]["pid"] == late and v,
                            timeout=5)
            assert view["rows"][-2]["pid"] == order[-1]
            assert b.console_errors() == []
    finally:
        # the holder ends what it started (the sleepers reap their children); the janitor
        # ends by pid (and process group) whatever is left
        if holder.stdin is not None:
            holder.stdin.close()
        try:
            holder.wait(timeout=20)
        except subprocess.TimeoutExpired:
            pass
    assert holder.returncode == 0
