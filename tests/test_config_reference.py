"""README's config reference against the config model: every key, and its default.

The tables of *Configuration* and *OpenTelemetry* (the top-level sections) and
*Roots* (a root's keys) must list every key the model accepts, no key it does
not, and the model's default for each. A key added to config.py without a
README row, or a default changed on one side only, fails here.
"""

from __future__ import annotations

import re
from typing import Any

import yaml
from pydantic import BaseModel

from proctree_exporter.config import Config, RootConfig

from .conftest import REPO

README = (REPO / "README.md").read_text()


def model_keys(model: type[BaseModel], prefix: str = "") -> dict[str, Any]:
    """Every leaf key of ``model`` (dotted) with its default."""
    out: dict[str, Any] = {}
    for name, f in model.model_fields.items():
        ann = f.annotation
        if isinstance(ann, type) and issubclass(ann, BaseModel):
            out.update(model_keys(ann, f"{prefix}{name}."))
        else:
            out[prefix + name] = f.get_default(call_default_factory=True)
    return out


def readme_rows(section: str, only: str = "") -> dict[str, str]:
    """The key table rows of a README section: key -> its default cell (``only``: keys
    starting with it; other tables of the section list other things)."""
    body = README.split(f"\n## {section}\n", 1)[1].split("\n## ", 1)[0]
    rows: dict[str, str] = {}
    for line in body.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split(" | ")]
        if len(cells) < 3 or not cells[0].startswith("`") or cells[0] == "`key`":
            continue
        names = re.findall(r"`([^`]+)`", cells[0])
        defaults = [d.strip() for d in cells[1].split(", ")]
        if len(defaults) != len(names):
            defaults = [cells[1]] * len(names)
        prefix = ""
        for name, default in zip(names, defaults, strict=True):
            if "." not in name and prefix:  # `otel.tls.ca_file`, `cert_file`: same prefix
                name = prefix + name
            prefix = name.rsplit(".", 1)[0] + "." if "." in name else ""
            if name.startswith(only):
                rows[name] = default
    return rows


def same_default(cell: str, value: Any) -> bool:
    text = cell.strip("`")
    if value is None:
        return text in ("none", "null")
    if isinstance(value, bool):
        return text == str(value).lower()
    if isinstance(value, int | float):
        try:
            return float(text) == float(value)
        except ValueError:
            return False
    if isinstance(value, list | dict):
        return text in ("[]", "{}", "none", "all") if not value else True
    return text == str(value)


def test_every_top_level_key_is_in_the_readme_with_its_default() -> None:
    keys = model_keys(Config)
    keys.pop("roots")  # a list of roots: its own section
    rows = {**readme_rows("Configuration"), **readme_rows("OpenTelemetry", "otel.")}
    rows.pop("roots", None)
    missing = sorted(set(keys) - set(rows))
    extra = sorted(set(rows) - set(keys))
    assert not missing, f"config keys without a README row: {missing}"
    assert not extra, f"README rows for keys the config does not have: {extra}"
    wrong = {k: (rows[k], keys[k]) for k in keys if not same_default(rows[k], keys[k])}
    assert not wrong, f"README default differs from the model's (README, model): {wrong}"


def test_every_root_key_is_in_the_readme_with_its_default() -> None:
    keys = model_keys(RootConfig)
    rows = readme_rows("Roots")
    assert set(rows) == set(keys), (sorted(set(keys) - set(rows)),
                                    sorted(set(rows) - set(keys)))
    required = {"name", "select", "match"}
    assert {k for k, v in rows.items() if v == "(required)"} == required
    wrong = {k: (rows[k], keys[k]) for k in keys if k not in required
             and not same_default(rows[k], keys[k])}
    assert not wrong, f"README default differs from the model's (README, model): {wrong}"


def test_the_parser_reads_combined_rows() -> None:
    # the shorthand rows this test relies on are read as meant
    rows = readme_rows("OpenTelemetry", "otel.")
    assert rows["otel.tls.cert_file"] == "none"
    assert (rows["otel.max_spans_per_second"], rows["otel.burst"]) == ("`100`", "`1000`")


def _flat(data: Any, prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in data.items():
        if isinstance(v, dict) and v and k not in ("headers",):
            out.update(_flat(v, f"{prefix}{k}."))
        else:
            out[prefix + k] = v
    return out


def test_config_yaml_is_the_model_s_defaults_and_lists_readme_s_keys() -> None:
    # config.yaml is the embedded default: every key it sets has the model's default
    # value and a README row, so its comments, README and the code cannot drift apart
    data = yaml.safe_load((REPO / "config.yaml").read_text())
    roots = data.pop("roots")
    keys = model_keys(Config)
    rows = {**readme_rows("Configuration"), **readme_rows("OpenTelemetry", "otel.")}
    for key, value in _flat(data).items():
        assert key in keys, f"config.yaml: {key} is not a config key"
        assert key in rows, f"config.yaml: {key} has no README row"
        assert value == keys[key] or (isinstance(value, list | dict) and not value
                                      and not keys[key]), (key, value, keys[key])
    assert [RootConfig.model_validate(r) for r in roots] == list(Config().roots)
