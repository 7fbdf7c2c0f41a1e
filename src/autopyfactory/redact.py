"""Removing secrets from text that came back from a server (error bodies, echoed headers).

A server may echo part of a token (a 300-byte error snippet cut mid-token, a JSON field holding
its tail): ``redact`` masks every run of text that is a substring of a secret and at least
``min_len`` characters long, not only the whole secret. Short runs are left alone: any 3 letters
of a token also occur in ordinary words.
"""

from __future__ import annotations

from collections.abc import Iterable

MASK = "********"
MIN_LEN = 8


def redact(text: str, secrets: Iterable[str], *, min_len: int = MIN_LEN, mask: str = MASK) -> str:
    """``text`` with every substring of a secret of length >= ``min_len`` replaced by ``mask``
    (a secret shorter than ``min_len`` is masked only whole)."""
    if not text:
        return text
    covered = [False] * len(text)
    for secret in secrets:
        if not secret:
            continue
        width = min(min_len, len(secret))
        windows = {secret[i : i + width] for i in range(len(secret) - width + 1)}
        for i in range(len(text) - width + 1):
            if text[i : i + width] in windows:
                for j in range(i, i + width):
                    covered[j] = True
    if not any(covered):
        return text
    out: list[str] = []
    i = 0
    while i < len(text):
        if covered[i]:
            while i < len(text) and covered[i]:
                i += 1
            out.append(mask)
        else:
            out.append(text[i])
            i += 1
    return "".join(out)
