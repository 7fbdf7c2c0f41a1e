"""AutoPyFactory's INI semantics, read into plain dicts that remember where each value came from.

What operators rely on (apf-reference.md 4.1):
- keys are case-sensitive; ``;`` after whitespace starts an inline comment (Python 2 ConfigParser);
- each *file*'s ``[DEFAULT]`` is flattened into that file's sections only; several files merge in
  order, later wins key by key (including values that came from the later file's DEFAULT);
- a directory source reads all ``*.conf`` files as one document, so a DEFAULT in any of them
  applies to all of their sections;
- ``%(key)s`` interpolation happens after merging, against the merged section; ``%%`` is a literal %;
- values starting with ``~`` are user-expanded.

Every value remembers its location (file or URL, line, and whether the line is in ``[DEFAULT]``),
computed once while reading. Sources are read by ``config.sources`` (encodings, size limits,
special files refused, deadlines for URLs). Interpolation is bounded: each key is resolved once per
section (memoised) and no value may grow beyond ``MAX_VALUE_CHARS``, so a ``%(a)s%(a)s`` chain
cannot blow up. No message here ever quotes a value or a line of a file: a file may be auth.conf.
"""

from __future__ import annotations

import configparser
import os
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from autopyfactory.config.errors import ConfigProblem, Location
from autopyfactory.config.sources import (
    MAX_SOURCE_BYTES,
    SourceError,
    SourceText,
    local_path,
    read_file,
    read_source,
)

_INTERP = re.compile(r"%\(([^)]+)\)s")
MAX_VALUE_CHARS = 65536  # an interpolated value longer than this is a mistake (or a bomb)
MAX_DIRECTORY_BYTES = 512 * 1024 * 1024

_SECTION_LINE = re.compile(r"\[(?P<header>.+)\]")
_OPTION_LINE = re.compile(r"(?P<option>.*?)\s*(?P<vi>[=:])\s*(?P<value>.*)$")


@dataclass
class RawSection:
    values: dict[str, str] = field(default_factory=dict)
    origin: dict[str, str] = field(default_factory=dict)  # key -> file (or URL) the value came from
    where: dict[str, Location] = field(default_factory=dict)  # key -> file, line, section of the line
    header: Location | None = None  # where the section is (first) defined

    def locate(self, key: str | None) -> Location | None:
        """Where ``key``'s value is written; the section header when the key is absent."""
        if key is not None and key in self.where:
            return self.where[key]
        return self.header


@dataclass
class RawConfig:
    sections: dict[str, RawSection] = field(default_factory=dict)
    files: list[str] = field(default_factory=list)
    problems: list[ConfigProblem] = field(default_factory=list)

    def merge(self, other: RawConfig) -> None:
        """Later wins, key by key."""
        for name, section in other.sections.items():
            target = self.sections.get(name)
            if target is None:
                target = self.sections[name] = RawSection(header=section.header)
            target.values.update(section.values)
            target.origin.update(section.origin)
            target.where.update(section.where)
        self.files.extend(f for f in other.files if f not in self.files)
        self.problems.extend(other.problems)


def _parser() -> configparser.RawConfigParser:
    parser = configparser.RawConfigParser(strict=False, inline_comment_prefixes=(";",), interpolation=None)
    parser.optionxform = str  # type: ignore[assignment,method-assign]  # case-sensitive keys
    return parser


def scan_locations(text: str) -> tuple[dict[tuple[str, str], int], dict[str, int]]:
    """Line numbers of ``(section, key)`` (the last occurrence wins, as in the parser) and of each
    section's first header. Follows configparser's rules closely enough for messages."""
    keys: dict[tuple[str, str], int] = {}
    headers: dict[str, int] = {}
    section: str | None = None
    for number, line in enumerate(text.splitlines(), 1):
        stripped = line.strip()
        if not stripped or stripped[0] in "#;":
            continue
        if line[0].isspace():
            continue  # a continuation line of the previous value
        header = _SECTION_LINE.match(stripped)
        if header:
            section = header.group("header")
            headers.setdefault(section, number)
            continue
        option = _OPTION_LINE.match(stripped)
        if option and section is not None:
            keys[(section, option.group("option").strip())] = number
    return keys, headers


def read_documents(documents: Iterable[SourceText], *, sensitive: bool = False) -> RawConfig:
    """Parse texts as ONE document (directory semantics: a DEFAULT applies to all sections)."""
    combined = _parser()
    raw = RawConfig()
    where: dict[tuple[str, str], Location] = {}
    headers: dict[str, Location] = {}
    for doc in documents:
        own = _parser()
        try:
            own.read_string(doc.text, source=doc.label)
            combined.read_string(doc.text, source=doc.label)
        except configparser.Error as exc:
            raw.problems.extend(_parse_problems(doc.label, exc, sensitive))
            continue
        raw.files.append(doc.label)
        lines, section_lines = scan_locations(doc.text)
        for section, number in section_lines.items():
            headers.setdefault(section, Location(doc.label, number, section))
        for (section, key), number in lines.items():
            where[(section, key)] = Location(doc.label, number, section)
    for section in combined.sections():
        rs = RawSection(header=headers.get(section))
        for key, value in combined.items(section, raw=True):
            rs.values[key] = value
            loc = where.get((section, key)) or where.get(("DEFAULT", key))
            if loc is not None:
                rs.where[key] = loc
                rs.origin[key] = loc.file
        raw.sections[section] = rs
    return raw


def _parse_problems(label: str, exc: configparser.Error, sensitive: bool) -> list[ConfigProblem]:
    """One problem per bad line. The line's text is shown only for files that hold no secrets,
    and shortened: a pasted key must not end up in a terminal or a log."""

    def shown(line: str) -> str:
        if sensitive:
            return ""
        text = line.strip().strip("'").removesuffix("\\n").strip()
        return f": {text[:60] + '...' if len(text) > 60 else text!r}"

    if isinstance(exc, configparser.MissingSectionHeaderError):
        return [
            ConfigProblem(
                label,
                None,
                None,
                "text before the first [section] header (or a malformed header)" + shown(exc.line),
                line=exc.lineno,
            )
        ]
    if isinstance(exc, configparser.ParsingError):
        return [
            ConfigProblem(
                label,
                None,
                None,
                "not 'key = value', a [section] header, a comment or an indented continuation" + shown(line),
                line=number,
            )
            for number, line in exc.errors
        ]
    # DuplicateSectionError and friends cannot happen with strict=False; keep the message generic
    return [ConfigProblem(label, None, None, f"cannot parse ({type(exc).__name__})")]


def source_problem(exc: SourceError, key: str | None = None, section: str | None = None) -> ConfigProblem:
    return ConfigProblem(exc.label, section, key, exc.message, line=exc.line)


def read_sources(
    sources: Iterable[str], base: Path | None = None, *, sensitive: bool = False, timeout: float = 30.0
) -> RawConfig:
    """Files (or URLs) merged one by one: each file's DEFAULT flattens into its own sections."""
    merged = RawConfig()
    for source in sources:
        source = source.strip()
        if not source:
            continue
        try:
            doc = read_source(source, base, timeout=timeout)
        except SourceError as exc:
            merged.problems.append(source_problem(exc))
            continue
        merged.merge(read_documents([doc], sensitive=sensitive))
    return merged


def read_directory(directory: str, base: Path | None = None, *, key: str = "queueDirConf") -> RawConfig:
    """All ``*.conf`` regular files of a directory, as one document (sorted by name)."""
    path = local_path(directory, base)
    if not path.is_dir():
        what = "does not exist" if not path.exists() else "is not a directory"
        return RawConfig(problems=[ConfigProblem(str(path), None, key, f"{key} {what}")])
    docs: list[SourceText] = []
    problems: list[ConfigProblem] = []
    total = 0
    try:
        entries = sorted(path.glob("*.conf"))
    except OSError as exc:
        return RawConfig(problems=[ConfigProblem(str(path), None, key, f"cannot list: {exc.strerror}")])
    for file in entries:
        try:
            doc = read_file(file, max_bytes=MAX_SOURCE_BYTES)
        except SourceError as exc:
            problems.append(source_problem(exc))
            continue
        total += len(doc.text)
        if total > MAX_DIRECTORY_BYTES:
            problems.append(
                ConfigProblem(str(path), None, key, f"*.conf files exceed {MAX_DIRECTORY_BYTES} bytes")
            )
            break
        docs.append(doc)
    raw = read_documents(docs)
    raw.problems[:0] = problems
    return raw


class InterpolationError(Exception):
    """``key`` is the key whose own value is at fault (keys referring to it fail too, silently)."""

    def __init__(self, message: str, key: str | None = None) -> None:
        super().__init__(message)
        self.key = key


def interpolate(raw: RawConfig) -> RawConfig:
    """Resolve %(key)s against each merged section, expand ~; problems name file, section, key."""
    out = RawConfig(files=list(raw.files), problems=list(raw.problems))
    for name, section in raw.sections.items():
        rs = RawSection(origin=dict(section.origin), where=dict(section.where), header=section.header)
        resolver = _Resolver(section.values)
        for key in section.values:
            try:
                resolved = resolver.get(key)
            except InterpolationError as exc:
                if exc.key in (None, key):  # one problem, at the key whose value is wrong
                    out.problems.append(ConfigProblem.at(section.locate(key), name, key, str(exc)))
                continue
            if resolved.startswith("~"):
                resolved = os.path.expanduser(resolved)
            rs.values[key] = resolved
        out.sections[name] = rs
    return out


class _Resolver:
    """Memoised, cycle-checked, size-bounded resolution of one section's values."""

    def __init__(self, env: dict[str, str]) -> None:
        self.env = env
        self.done: dict[str, str] = {}
        self.failed: dict[str, InterpolationError] = {}
        self.active: list[str] = []

    def get(self, key: str) -> str:
        if key in self.done:
            return self.done[key]
        if key in self.failed:
            raise self.failed[key]
        if key in self.active:
            cycle = " -> ".join([*self.active[self.active.index(key) :], key])
            raise InterpolationError(f"interpolation cycle: {cycle}", key)
        self.active.append(key)
        try:
            value = self._expand(self.env[key])
        except InterpolationError as exc:
            if exc.key is None:
                exc.key = key
            self.failed[key] = exc
            raise
        finally:
            self.active.pop()
        self.done[key] = value
        return value

    def _expand(self, value: str) -> str:
        if "%" not in value:
            return value
        out: list[str] = []
        size = 0
        i = 0
        while i < len(value):
            j = value.find("%", i)
            if j < 0:
                piece = value[i:]
                i = len(value)
            elif value[j + 1 : j + 2] == "%":
                piece = value[i:j] + "%"
                i = j + 2
            else:
                match = _INTERP.match(value, j)
                if not match:
                    raise InterpolationError(
                        f"'%' at character {j + 1} of the value must be followed by '%' or '(key)s' "
                        "(write %% for a literal %)"
                    )
                ref = match.group(1)
                if ref not in self.env:
                    raise InterpolationError(
                        f"%({ref})s refers to a key that is not set in this section or [DEFAULT]"
                    )
                piece = value[i:j] + self.get(ref)  # its failure is reported at its own key
                i = match.end()
            size += len(piece)
            if size > MAX_VALUE_CHARS:
                raise InterpolationError(
                    f"the interpolated value exceeds {MAX_VALUE_CHARS} characters (a %(key)s chain that repeats itself?)"
                )
            out.append(piece)
        return "".join(out)
