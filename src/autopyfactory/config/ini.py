"""AutoPyFactory's INI semantics, read into plain dicts that remember where each value came from.

What operators rely on (apf-reference.md 4.1):
- keys are case-sensitive; ``;`` after whitespace starts an inline comment (Python 2 ConfigParser);
- each *file*'s ``[DEFAULT]`` is flattened into that file's sections only; several files merge in
  order, later wins key by key (including values that came from the later file's DEFAULT);
- a directory source reads all ``*.conf`` files as one document, so a DEFAULT in any of them
  applies to all of their sections;
- ``%(key)s`` interpolation happens after merging, against the merged section; ``%%`` is a literal %;
- values starting with ``~`` are user-expanded.
"""

from __future__ import annotations

import configparser
import os
import re
import urllib.request
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from autopyfactory.config.errors import ConfigProblem

_INTERP = re.compile(r"%\(([^)]+)\)s")
_MAX_DEPTH = 10


@dataclass
class RawSection:
    values: dict[str, str] = field(default_factory=dict)
    origin: dict[str, str] = field(default_factory=dict)  # key -> file


@dataclass
class RawConfig:
    sections: dict[str, RawSection] = field(default_factory=dict)
    files: list[str] = field(default_factory=list)
    problems: list[ConfigProblem] = field(default_factory=list)

    def merge(self, other: RawConfig) -> None:
        """Later wins, key by key."""
        for name, section in other.sections.items():
            target = self.sections.setdefault(name, RawSection())
            target.values.update(section.values)
            target.origin.update(section.origin)
        self.files.extend(f for f in other.files if f not in self.files)
        self.problems.extend(other.problems)


def _parser() -> configparser.RawConfigParser:
    parser = configparser.RawConfigParser(strict=False, inline_comment_prefixes=(";",), interpolation=None)
    parser.optionxform = str  # type: ignore[assignment,method-assign]  # case-sensitive keys
    return parser


def _fetch(source: str, base: Path | None) -> tuple[str, str]:
    """(label, text) of one source: a path, file:// URI, or http(s):// URL."""
    if source.startswith(("http://", "https://")):
        with urllib.request.urlopen(source, timeout=30) as resp:
            return source, resp.read().decode()
    path = Path(source.removeprefix("file://")).expanduser()
    if not path.is_absolute() and base is not None:
        path = base / path
    return str(path), path.read_text()


def read_documents(documents: Iterable[tuple[str, str]]) -> RawConfig:
    """Parse texts as ONE document (directory semantics: a DEFAULT applies to all sections)."""
    combined = _parser()
    raw = RawConfig()
    origin: dict[tuple[str, str], str] = {}
    for label, text in documents:
        own = _parser()
        try:
            own.read_string(text, source=label)
            combined.read_string(text, source=label)
        except configparser.Error as exc:
            raw.problems.append(ConfigProblem(label, None, None, _parse_message(exc)))
            continue
        raw.files.append(label)
        for key in own.defaults():
            origin[("DEFAULT", key)] = label
        for section in own.sections():
            for key in own.options(section):
                if key not in own.defaults() or own.get(section, key, raw=True) != own.defaults()[key]:
                    origin[(section, key)] = label
    for section in combined.sections():
        rs = RawSection()
        for key, value in combined.items(section, raw=True):
            rs.values[key] = value
            rs.origin[key] = origin.get((section, key)) or origin.get(("DEFAULT", key), "")
        raw.sections[section] = rs
    return raw


def _parse_message(exc: configparser.Error) -> str:
    if isinstance(exc, configparser.MissingSectionHeaderError):
        return f"line {exc.lineno}: text before the first [section] header: {exc.line.strip()!r}"
    if isinstance(exc, configparser.ParsingError):
        lines = ", ".join(f"line {n}: {line.strip()!r}" for n, line in exc.errors)
        return f"cannot parse {lines} (expected 'key = value')"
    return str(exc).splitlines()[0]


def read_sources(sources: Iterable[str], base: Path | None = None) -> RawConfig:
    """Files (or URLs) merged one by one: each file's DEFAULT flattens into its own sections."""
    merged = RawConfig()
    for source in sources:
        source = source.strip()
        if not source:
            continue
        try:
            label, text = _fetch(source, base)
        except OSError as exc:
            merged.problems.append(ConfigProblem(source, None, None, f"cannot read: {exc.strerror or exc}"))
            continue
        merged.merge(read_documents([(label, text)]))
    return merged


def read_directory(directory: str, base: Path | None = None) -> RawConfig:
    path = Path(directory).expanduser()
    if not path.is_absolute() and base is not None:
        path = base / path
    if not path.is_dir():
        return RawConfig(problems=[ConfigProblem(str(path), None, None, "queueDirConf is not a directory")])
    docs = []
    for file in sorted(path.glob("*.conf")):
        docs.append((str(file), file.read_text()))
    return read_documents(docs)


def interpolate(raw: RawConfig) -> RawConfig:
    """Resolve %(key)s against each merged section, expand ~; problems name file, section, key."""
    out = RawConfig(files=list(raw.files), problems=list(raw.problems))
    for name, section in raw.sections.items():
        rs = RawSection(origin=dict(section.origin))
        for key, value in section.values.items():
            try:
                resolved = _resolve(value, section.values, depth=0)
            except _InterpolationError as exc:
                out.problems.append(ConfigProblem(section.origin.get(key), name, key, str(exc)))
                continue
            if resolved.startswith("~"):
                resolved = os.path.expanduser(resolved)
            rs.values[key] = resolved
        out.sections[name] = rs
    return out


class _InterpolationError(Exception):
    pass


def _resolve(value: str, env: dict[str, str], depth: int) -> str:
    if "%" not in value:
        return value
    if depth > _MAX_DEPTH:
        raise _InterpolationError("interpolation is nested too deeply (a %(key)s cycle?)")
    out: list[str] = []
    i = 0
    while i < len(value):
        ch = value[i]
        if ch != "%":
            out.append(ch)
            i += 1
            continue
        nxt = value[i + 1 : i + 2]
        if nxt == "%":
            out.append("%")
            i += 2
            continue
        match = _INTERP.match(value, i)
        if not match:
            raise _InterpolationError(
                f"'%' must be followed by '%' or '(key)s' (write %% for a literal %): {value!r}"
            )
        ref = match.group(1)
        if ref not in env:
            raise _InterpolationError(
                f"%({ref})s refers to a key that is not set in this section or [DEFAULT]"
            )
        out.append(_resolve(env[ref], env, depth + 1))
        i = match.end()
    return "".join(out)


def key_line(file: str | None, section: str | None, key: str | None) -> int | None:
    """Best-effort line number of ``key`` in ``section`` of ``file`` (for error messages only)."""
    if not file or not key or file.startswith(("http://", "https://")):
        return None
    try:
        lines = Path(file).read_text().splitlines()
    except OSError:
        return None
    current = None
    pattern = re.compile(rf"^\s*{re.escape(key)}\s*[=:]")
    fallback = None
    for number, line in enumerate(lines, 1):
        header = re.match(r"^\s*\[([^\]]+)\]", line)
        if header:
            current = header.group(1)
            continue
        if pattern.match(line):
            if current == section:
                return number
            if current == "DEFAULT" and fallback is None:
                fallback = number
    return fallback
