"""YAML documents whose errors can name the line: parse once, remember where each key is.

Used by both config files (config.yaml and the web config). Duplicate keys are
refused: PyYAML would keep the last one silently, and Go's strict decoders (the
exporter-toolkit's, for the web config) refuse them.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import yaml

Lines = dict[tuple[Any, ...], int]


class _LineLoader(yaml.SafeLoader):
    """A SafeLoader; composed nodes carry the line of every key."""


def _key_lines(node: yaml.Node, path: tuple[Any, ...], out: Lines,
               dups: list[tuple[tuple[Any, ...], int]]) -> None:
    out.setdefault(path, node.start_mark.line + 1)
    if isinstance(node, yaml.MappingNode):
        seen: set[Any] = set()
        for key_node, value_node in node.value:
            key = (*path, key_node.value)
            line = key_node.start_mark.line + 1
            if isinstance(key_node.value, str):
                if key_node.value in seen:
                    dups.append((key, line))
                seen.add(key_node.value)
            out[key] = line
            _key_lines(value_node, key, out, dups)
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            _key_lines(item, (*path, i), out, dups)


def load_mapping(text: str, source: str, error: type[Exception]) -> tuple[dict[str, Any], Lines]:
    """Parse ``text`` as a YAML mapping (empty -> ``{}``) and the line of every key path.

    Raises ``error`` with a message naming ``source`` and the line for invalid YAML,
    a top level that is not a mapping, or a duplicate key.
    """
    try:
        node = yaml.compose(text, Loader=_LineLoader)
        data = yaml.load(text, Loader=_LineLoader)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark is not None else ""
        raise error(f"{source}:{where}: not valid YAML: "
                    f"{getattr(exc, 'problem', None) or exc}") from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise error(f"{source}: the top level must be a mapping of keys, "
                    f"got {type(data).__name__}")
    lines: Lines = {}
    dups: list[tuple[tuple[Any, ...], int]] = []
    if node is not None:
        _key_lines(node, (), lines, dups)
    if dups:
        raise error(f"{source}: " + "; ".join(
            f"{'.'.join(map(str, k))}, line {n}: duplicate key" for k, n in dups))
    return data, lines


def line_of(lines: Mapping[tuple[Any, ...], int], loc: tuple[Any, ...]) -> int | None:
    """The line of ``loc``, or of its nearest enclosing key that has one."""
    return next((lines[loc[:i]] for i in range(len(loc), -1, -1) if loc[:i] in lines), None)
