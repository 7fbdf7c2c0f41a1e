"""Slurm host lists, as ``ResumeProgram`` and ``SuspendProgram`` receive them: ``c[1-3,5]``.

Pure code (no ``scontrol show hostnames`` needed): ``expand("c[1-2],gpu[01-02]")`` is
``["c1", "c2", "gpu01", "gpu02"]``. Supported: comma-separated items at the top level, any number
of bracket groups in one item (``r[1-2]n[1-2]``: their product, in order), ranges and single
numbers in a group, zero padding (``[08-10]`` -> 08, 09, 10). Malformed text raises ``ValueError``
naming the problem.
"""

from __future__ import annotations

import re

MAX_HOSTS = 1_000_000  # a host list that expands further is a mistake, not a cluster

_NUMBER = re.compile(r"^\d+$")


def _split_top(text: str) -> list[str]:
    """Split at commas outside brackets."""
    items: list[str] = []
    depth = 0
    current: list[str] = []
    for ch in text:
        if ch == "[":
            if depth:
                raise ValueError(f"nested '[' in host list {text!r}")
            depth = 1
        elif ch == "]":
            if not depth:
                raise ValueError(f"unmatched ']' in host list {text!r}")
            depth = 0
        if ch == "," and not depth:
            items.append("".join(current))
            current = []
        else:
            current.append(ch)
    if depth:
        raise ValueError(f"unmatched '[' in host list {text!r}")
    items.append("".join(current))
    return items


def _group(body: str, text: str) -> list[str]:
    """``1-3,5`` -> ["1", "2", "3", "5"], keeping the width of zero-padded bounds."""
    out: list[str] = []
    for part in body.split(","):
        lo, sep, hi = part.partition("-")
        if not _NUMBER.match(lo) or (sep and not _NUMBER.match(hi)):
            raise ValueError(f"bad range {part!r} in host list {text!r}")
        if not sep:
            out.append(lo)
            continue
        start, end = int(lo), int(hi)
        if end < start:
            raise ValueError(f"range {part!r} runs backwards in host list {text!r}")
        if end - start + 1 > MAX_HOSTS:
            raise ValueError(f"range {part!r} is too large in host list {text!r}")
        width = len(lo) if lo.startswith("0") and len(lo) > 1 else 0
        out.extend(str(i).zfill(width) for i in range(start, end + 1))
    return out


def _item(item: str, text: str) -> list[str]:
    names = [""]
    rest = item
    while rest:
        open_ = rest.find("[")
        if open_ < 0:
            names = [n + rest for n in names]
            break
        close = rest.index("]", open_)
        prefix, body, rest = rest[:open_], rest[open_ + 1 : close], rest[close + 1 :]
        values = _group(body, text)
        names = [n + prefix + v for n in names for v in values]
        if len(names) > MAX_HOSTS:
            raise ValueError(f"host list {text!r} names more than {MAX_HOSTS} hosts")
    return names


def expand(text: str) -> list[str]:
    """The host names of a Slurm host list, in order, each once."""
    text = text.strip()
    if not text:
        return []
    if any(ch.isspace() for ch in text):
        raise ValueError(f"white space in host list {text!r}")
    seen: dict[str, None] = {}
    for item in _split_top(text):
        if not item:
            raise ValueError(f"empty item in host list {text!r}")
        for name in _item(item, text):
            if not name:
                raise ValueError(f"empty host name in host list {text!r}")
            seen.setdefault(name, None)
    return list(seen)
