"""Reading the legacy PanDA pickle (``/server/panda/getJobStatisticsPerSite``) without trusting it.

Old PanDA servers (up to 0.8.1) answer with ``pickle.dumps(data, protocol=0)`` of
``{site: {jobStatus: int}}``. ``pickle.loads`` on bytes from the network can run any code (a
``GLOBAL``/``REDUCE`` pair calls any function), so this module never hands such bytes to a plain
unpickler. Two independent fences:

1. Every opcode is checked *before* anything is built (``pickletools.genops`` only parses): only
   the opcodes that build dicts, strings and integers, plus memo bookkeeping, are allowed.
2. The unpickler refuses every global (``find_class`` raises), and the result is checked to be a
   dict of dicts of strings to integers.
"""

from __future__ import annotations

import io
import pickle
import pickletools

# Opcodes that can only build dicts, str and int (and manage the memo / framing).
_ALLOWED_OPCODES = frozenset(
    {
        "PROTO",
        "FRAME",
        "STOP",
        "MARK",
        "DICT",
        "EMPTY_DICT",
        "SETITEM",
        "SETITEMS",
        "PUT",
        "BINPUT",
        "LONG_BINPUT",
        "MEMOIZE",
        "GET",
        "BINGET",
        "LONG_BINGET",
        # strings: protocol 0 Python 3 (V), Python 2 str (S), and the binary forms
        "UNICODE",
        "BINUNICODE",
        "SHORT_BINUNICODE",
        "BINUNICODE8",
        "STRING",
        "BINSTRING",
        "SHORT_BINSTRING",
        # integers (I also carries Python 2 booleans, I00/I01)
        "INT",
        "BININT",
        "BININT1",
        "BININT2",
        "LONG",
        "LONG1",
        "LONG4",
    }
)

# A real answer for every PanDA queue in the world is a few hundred kB.
MAX_PICKLE_BYTES = 32 * 1024 * 1024


class UnsafePickle(ValueError):
    """The bytes are not a pickle of dicts, strings and integers; nothing was executed."""


class _NoGlobals(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> object:
        raise UnsafePickle(f"pickle refers to {module}.{name}: globals are never loaded")


def check_opcodes(data: bytes) -> None:
    """Raise UnsafePickle unless every opcode is one that builds dicts, strings or integers."""
    if len(data) > MAX_PICKLE_BYTES:
        raise UnsafePickle(f"pickle of {len(data)} bytes exceeds the {MAX_PICKLE_BYTES} byte limit")
    try:
        for opcode, _arg, pos in pickletools.genops(data):
            if opcode.name not in _ALLOWED_OPCODES:
                raise UnsafePickle(f"pickle opcode {opcode.name} at byte {pos} is not allowed")
    except UnsafePickle:
        raise
    except Exception as exc:  # genops raises ValueError and friends on garbage or truncation
        raise UnsafePickle(f"not a valid pickle: {exc}") from None


def safe_loads(data: bytes) -> dict[str, dict[str, int]]:
    """Decode ``{site: {status: int}}`` from a legacy PanDA pickle, or raise UnsafePickle."""
    check_opcodes(data)
    try:
        obj = _NoGlobals(io.BytesIO(data), encoding="latin-1").load()
    except UnsafePickle:
        raise
    except Exception as exc:
        raise UnsafePickle(f"not a valid pickle: {exc}") from None
    return _check_shape(obj)


def _check_shape(obj: object) -> dict[str, dict[str, int]]:
    if not isinstance(obj, dict):
        raise UnsafePickle(f"expected a dict of sites, got {type(obj).__name__}")
    out: dict[str, dict[str, int]] = {}
    for site, states in obj.items():
        if not isinstance(site, str) or not isinstance(states, dict):
            raise UnsafePickle(f"site entry {site!r} is not a string mapped to a dict")
        counts: dict[str, int] = {}
        for state, n in states.items():
            if not isinstance(state, str) or not isinstance(n, int):
                raise UnsafePickle(f"site {site!r}: entry {state!r} is not a string mapped to an integer")
            counts[state] = int(n)
        out[site] = counts
    return out
