"""The core is tested without the kernel: line coverage of its modules from those tests alone.

Membership, classification, the tree, the change log and the mirrors must be
testable on plain event sequences (tests/fakehost.py plays the kernel). This
runs exactly those tests under coverage, in a subprocess, and fails when a
module falls below the bar: a change that can only be tested on the kernel
shows up here.
"""

from __future__ import annotations

import json
import subprocess
import sys

import coverage  # noqa: F401  (the test dependency this needs: fail, not skip, without it)

from .conftest import REPO

NO_KERNEL_TESTS = ("tests/test_membership.py", "tests/test_tree_scenes.py",
                   "tests/test_mirror.py", "tests/test_events.py", "tests/test_state.py",
                   "tests/test_control.py", "tests/test_changelog_bounds.py")
BAR = 90.0
MODULES = ("tree", "membership", "classification", "changelog", "mirror", "events",
           "identity", "state")


def test_the_core_is_covered_by_tests_that_need_no_kernel(tmp_path) -> None:  # type: ignore[no-untyped-def]
    data = tmp_path / ".coverage"
    src = REPO / "src" / "proctree_exporter"
    include = ",".join(str(src / f"{m}.py") for m in MODULES)
    env = {"COVERAGE_FILE": str(data), "PATH": "/usr/bin:/bin"}
    run = subprocess.run([sys.executable, "-m", "coverage", "run", f"--include={include}",
                          "-m", "pytest", "-q", "-p", "no:cacheprovider", *NO_KERNEL_TESTS],
                         cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    report = tmp_path / "coverage.json"
    subprocess.run([sys.executable, "-m", "coverage", "json", "-o", str(report)], cwd=REPO,
                   env=env, check=True, capture_output=True, timeout=120)
    files = json.loads(report.read_text())["files"]
    covered = {name.rsplit("/", 1)[-1].removesuffix(".py"): f["summary"]["percent_covered"]
               for name, f in files.items()}
    low = {m: round(covered.get(m, 0.0), 1) for m in MODULES if covered.get(m, 0.0) < BAR}
    assert not low, f"line coverage below {BAR}% from tests without the kernel: {low}"
    print("coverage without the kernel:", {m: round(covered[m], 1) for m in MODULES})
