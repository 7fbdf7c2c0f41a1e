"""Reading a policy document's text (YAML or JSON) into plain data, with errors naming the file and
line. Kept apart from the models in ``config.policy`` so the pure decision code, which imports the
models, does not import a YAML parser."""

from __future__ import annotations

import json
from typing import Any

import yaml

from autopyfactory.config.errors import ConfigError, ConfigProblem


class _UniqueKeyLoader(yaml.SafeLoader):
    """SafeLoader that refuses duplicate keys (PyYAML silently keeps the last one)."""


def _construct_mapping(loader: _UniqueKeyLoader, node: yaml.MappingNode, deep: bool = False) -> Any:
    seen: dict[Any, int] = {}
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=deep)  # type: ignore[no-untyped-call]
        line = key_node.start_mark.line + 1
        if key in seen:
            raise yaml.constructor.ConstructorError(
                None, None, f"duplicate key {key!r} (first on line {seen[key]})", key_node.start_mark
            )
        seen[key] = line
    return loader.construct_mapping(node, deep=deep)


_UniqueKeyLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)


def parse_text(text: str, file: str, fmt: str) -> Any:
    """A policy document's data: JSON, or YAML (safe, duplicate keys refused); ConfigError otherwise."""
    if fmt == "json":
        try:
            return json.loads(text)
        except json.JSONDecodeError as exc:
            raise ConfigError(
                [
                    ConfigProblem(
                        file, None, None, f"not valid JSON: line {exc.lineno} column {exc.colno}: {exc.msg}"
                    )
                ]
            ) from None
    try:
        return yaml.load(text, Loader=_UniqueKeyLoader)  # a SafeLoader subclass
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1} column {mark.column + 1}: " if mark is not None else ""
        problem = getattr(exc, "problem", None) or str(exc)
        raise ConfigError([ConfigProblem(file, None, None, f"not valid YAML: {where}{problem}")]) from None
