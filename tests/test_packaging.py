"""The sdist and the wheel, built and installed the way a new user would (README, "Install").

From a copy of the checkout as a fresh clone has it (no .venv, no egg-info, no caches), the
build frontend makes both with an isolated backend, twine checks their metadata as an index
would, the wheel holds the package with its page and nothing else, the sdist unpacked builds
the same wheel again, and the wheel installed into a fresh venv (no system site-packages,
nothing of this checkout) runs its command on the built-in defaults.

The builds and the fresh venv use the package registry (setuptools for the isolated build,
the runtime dependencies for the venv). ``build`` and ``twine`` come with the test extra
(scripts/bootstrap test): without them these tests fail, they do not skip.
"""

from __future__ import annotations

import configparser
import email.parser
import importlib.util
import os
import shutil
import subprocess
import sys
import tarfile
import tomllib
import zipfile
from dataclasses import dataclass
from email.message import Message
from pathlib import Path

import pytest
from packaging.requirements import Requirement  # build's own dependency

from proctree_exporter.ui import ASSETS

from .conftest import REPO

pytestmark = pytest.mark.packaging

PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())
PROJECT = PYPROJECT["project"]
VERSION = PROJECT["version"]
# installed under PREFIX/share/proctree-exporter (pyproject's data-files): there -> here
SHARED = {"config.yaml": "config.yaml",
          "dashboards/proctree-overview.json": "dashboards/proctree-overview.json",
          "dashboards/proctree-root.json": "dashboards/proctree-root.json",
          "prometheus/rules.yml": "deploy/prometheus/rules.yml"}
DIST_NAME = PROJECT["name"].replace("-", "_")  # proctree_exporter, as in the file names
PACKAGE = "proctree_exporter"
ETC_CONFIG = Path("/etc/proctree-exporter/config.yaml")  # config.DEFAULT_PATHS[1]

# what .gitignore keeps out of a clone, and .git itself
CLEAN_CHECKOUT = shutil.ignore_patterns(
    ".git", ".venv", "__pycache__", "*.egg-info", ".pytest_cache", ".ruff_cache",
    ".hypothesis", "build", "dist", "test-artifacts", ".coverage")
# a build fetches setuptools, an install the dependencies: the registry's time, not ours
NETWORK_TIMEOUT = 300


def run(args: list[str | Path], *, cwd: Path | None = None,
        timeout: float = NETWORK_TIMEOUT) -> str:
    """Run a command as a user's shell would (no PYTHONPATH, no active venv); its stdout."""
    env = {k: v for k, v in os.environ.items()
           if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV", "PYTHONSTARTUP")}
    out = subprocess.run([str(a) for a in args], cwd=cwd, env=env, capture_output=True,
                         text=True, timeout=timeout, stdin=subprocess.DEVNULL)
    assert out.returncode == 0, (
        f"{' '.join(map(str, args))} exited {out.returncode}\n{out.stdout}\n{out.stderr}")
    return out.stdout


def python_tool(module: str) -> list[str | Path]:
    """``python -m module`` of this venv, where the test extra installs it."""
    assert importlib.util.find_spec(module), (
        f"{module} missing: scripts/bootstrap test installs it (pyproject.toml, test extra)")
    return [sys.executable, "-m", module]


def build(source: Path, outdir: Path, *dists: str) -> None:
    """``python -m build`` with an isolated backend, as the README tells users to build."""
    run([*python_tool("build"), *(f"--{d}" for d in dists), "--outdir", outdir, source])


def package_files(src: Path) -> set[str]:
    """Every file of the package in a source tree, as a wheel names it."""
    pkg = src / PACKAGE
    return {f"{PACKAGE}/{p.relative_to(pkg).as_posix()}" for p in pkg.rglob("*")
            if p.is_file() and "__pycache__" not in p.parts}


def wheel_files(wheel: Path) -> dict[str, bytes]:
    with zipfile.ZipFile(wheel) as z:
        return {name: z.read(name) for name in z.namelist()}


def metadata(text: bytes) -> Message:
    return email.parser.Parser().parsestr(text.decode())


@dataclass(frozen=True)
class Dists:
    checkout: Path
    sdist: Path
    wheel: Path


@pytest.fixture(scope="module")
def dists(tmp_path_factory: pytest.TempPathFactory) -> Dists:
    """The sdist and wheel built from a clean copy of this checkout."""
    root = tmp_path_factory.mktemp("packaging")
    checkout = root / "checkout"
    shutil.copytree(REPO, checkout, ignore=CLEAN_CHECKOUT)
    build(checkout, root / "dist", "sdist", "wheel")
    sdist = root / "dist" / f"{DIST_NAME}-{VERSION}.tar.gz"
    wheel = root / "dist" / f"{DIST_NAME}-{VERSION}-py3-none-any.whl"
    assert sorted((root / "dist").iterdir()) == [wheel, sdist]
    return Dists(checkout, sdist, wheel)


@pytest.fixture(scope="module")
def unpacked_sdist(dists: Dists, tmp_path_factory: pytest.TempPathFactory) -> Path:
    into = tmp_path_factory.mktemp("unpacked")
    with tarfile.open(dists.sdist) as tar:
        tar.extractall(into, filter="data")
    return into / f"{DIST_NAME}-{VERSION}"


@dataclass(frozen=True)
class Venv:
    python: Path
    command: Path
    empty_dir: Path


@pytest.fixture(scope="module")
def venv(dists: Dists, tmp_path_factory: pytest.TempPathFactory) -> Venv:
    """A fresh venv (python -m venv, no system site-packages) with the wheel installed."""
    root = tmp_path_factory.mktemp("fresh")
    run([sys.executable, "-m", "venv", root / "venv"], timeout=120)
    assert "include-system-site-packages = false" in (root / "venv/pyvenv.cfg").read_text()
    python = root / "venv/bin/python"
    run([python, "-m", "pip", "install", "--quiet", "--disable-pip-version-check", dists.wheel])
    (root / "empty").mkdir()
    return Venv(python, root / "venv/bin/proctree-exporter", root / "empty")


def test_sdist_and_wheel_pass_twine_check(dists: Dists) -> None:
    out = run([*python_tool("twine"), "check", "--strict", dists.sdist, dists.wheel], timeout=120)
    assert out.count("PASSED") == 2, out


def test_metadata_says_what_pyproject_says(dists: Dists, unpacked_sdist: Path) -> None:
    expected = {Requirement(d) for d in PROJECT["dependencies"]} | {
        Requirement(f'{d}; extra == "{extra}"')
        for extra, deps in PROJECT["optional-dependencies"].items() for d in deps}
    wheel_meta = wheel_files(dists.wheel)[f"{DIST_NAME}-{VERSION}.dist-info/METADATA"]
    for meta in (metadata(wheel_meta), metadata((unpacked_sdist / "PKG-INFO").read_bytes())):
        assert meta["Name"] == PROJECT["name"] and meta["Version"] == VERSION
        assert meta["Summary"] == PROJECT["description"]
        assert meta["Requires-Python"] == PROJECT["requires-python"]
        assert meta["License-Expression"] == PROJECT["license"]
        assert meta.get_all("Classifier") == PROJECT["classifiers"]
        assert meta["Description-Content-Type"] == "text/markdown"
        assert meta.get_payload().strip() == (REPO / "README.md").read_text().strip()
        assert {Requirement(r) for r in meta.get_all("Requires-Dist")} == expected
        assert meta.get_all("Provides-Extra") == list(PROJECT["optional-dependencies"])


def test_wheel_holds_the_package_its_page_and_nothing_else(dists: Dists) -> None:
    files = wheel_files(dists.wheel)
    dist_info = f"{DIST_NAME}-{VERSION}.dist-info"
    data = f"{DIST_NAME}-{VERSION}.data"
    assert {name.split("/")[0] for name in files} == {PACKAGE, dist_info, data}
    # README's dashboards, alert rules and annotated config, for PREFIX/share
    shared = {n.removeprefix(f"{data}/data/share/proctree-exporter/"): files[n]
              for n in files if n.startswith(f"{data}/")}
    assert shared == {rel: (dists.checkout / src).read_bytes() for rel, src in SHARED.items()}
    assert not [n for n in files if n.startswith(("tests/", "bench/"))]
    # every file of the package ships: modules, py.typed, and what the tree page serves
    shipped = {n for n in files if n.startswith(f"{PACKAGE}/")}
    expected = package_files(dists.checkout / "src")
    assert shipped == expected, (
        f"not in the wheel: {sorted(expected - shipped)}; only in it: {sorted(shipped - expected)}")
    assert f"{PACKAGE}/py.typed" in files
    ui = dists.checkout / "src" / PACKAGE / "ui"
    for asset in [*ASSETS, "index.html"]:
        assert files[f"{PACKAGE}/ui/{asset}"] == (ui / asset).read_bytes()
    entry_points = configparser.ConfigParser()
    entry_points.read_string(files[f"{dist_info}/entry_points.txt"].decode())
    assert dict(entry_points["console_scripts"]) == {
        "proctree-exporter": "proctree_exporter.cli:main"}


def test_sdist_unpacked_builds_the_same_wheel(dists: Dists, unpacked_sdist: Path,
                                              tmp_path: Path) -> None:
    names = {p.relative_to(unpacked_sdist).as_posix() for p in unpacked_sdist.rglob("*")
             if p.is_file()}
    assert {"PKG-INFO", "pyproject.toml", "README.md", "config.yaml"} <= names
    if (REPO / "LICENSE").exists():
        assert "LICENSE" in names
    assert {f"src/{n}" for n in package_files(dists.checkout / "src")} <= names
    assert not [n for n in names if n.startswith(("tests/", "bench/"))]
    build(unpacked_sdist, tmp_path, "wheel")
    assert wheel_files(tmp_path / dists.wheel.name) == wheel_files(dists.wheel)


def test_installed_command_says_its_version(venv: Venv) -> None:
    out = run([venv.command, "--version"], cwd=venv.empty_dir, timeout=60)
    assert out.strip() == f"proctree-exporter {VERSION}"


def test_installed_check_config_runs_on_the_built_in_defaults(venv: Venv) -> None:
    # no ./config.yaml here; /etc's is the host's business (this test never writes it)
    source = str(ETC_CONFIG) if ETC_CONFIG.is_file() else "(built-in defaults)"
    out = run([venv.command, "check-config"], cwd=venv.empty_dir, timeout=60)
    assert out.strip() == f"{source}: ok"


def test_built_in_defaults_are_the_config_yaml_of_the_sdist(venv: Venv,
                                                            unpacked_sdist: Path) -> None:
    # the wheel carries no config.yaml: its defaults are in the code, and must be that file
    check = ("import sys\n"
             "from proctree_exporter.config import Config, parse_config\n"
             "text = open(sys.argv[1], encoding='utf-8').read()\n"
             "assert parse_config(text, 'config.yaml') == Config(), 'config.yaml != defaults'\n")
    run([venv.python, "-c", check, unpacked_sdist / "config.yaml"], cwd=venv.empty_dir,
        timeout=60)


def test_installed_share_holds_the_dashboards_rules_and_config(venv: Venv) -> None:
    # what README's Install section points a pip user to
    share = venv.python.parent.parent / "share" / "proctree-exporter"
    for rel, src in SHARED.items():
        assert (share / rel).read_bytes() == (REPO / src).read_bytes(), rel


def test_installed_package_imports_from_the_venv_with_its_page(venv: Venv) -> None:
    run([venv.python, "-c", "import proctree_exporter; proctree_exporter.Monitor"],
        cwd=venv.empty_dir, timeout=60)
    where = run([venv.python, "-c",
                 "import proctree_exporter, proctree_exporter.ui as ui\n"
                 "assert ui.asset('app.js') and 'v9' in ui.index_page('v9', '')\n"
                 "print(proctree_exporter.__version__, proctree_exporter.__file__, sep='\\n')"],
                cwd=venv.empty_dir, timeout=60).splitlines()
    assert where[0] == VERSION
    assert Path(where[1]).is_relative_to(venv.python.parent.parent)
