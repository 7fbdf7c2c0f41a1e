"""The provisioning policy document: cascades of tiers sharing one demand (YAML or JSON).

One pydantic schema (``PolicyDocument``) is the format; ``apf policy schema`` prints it as JSON
Schema. ``load_policy``/``parse_policy`` validate a document and raise ``ConfigError`` with one
``ConfigProblem`` per bad key, naming the file, the cascade and tier, and the key's JSON path
(``cascades[0].tiers[1].cap``). See docs/policy.md for the format and the worked example.
"""

from __future__ import annotations

import math
import types
import typing
from collections.abc import Sequence
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationError, WithJsonSchema
from pydantic import model_validator as _model_validator

from autopyfactory.config.errors import ConfigError, ConfigProblem
from autopyfactory.decide.periods import Period, parse_duration, parse_period
from autopyfactory.hints import did_you_mean

SPILL_CONDITIONS = ("capped", "full", "quota", "backoff")
SpillCondition = Literal["capped", "full", "quota", "backoff"]

_DURATION_PATTERN = r"^\s*(\d+(\.\d+)?\s*[smhdwSMHDW]\s*)+$|^\s*\d+(\.\d+)?\s*$"


def _duration(value: Any) -> Any:
    # accept numbers (seconds) and '10m'/'1h30m'/'7d'; pydantic then checks the float
    if isinstance(value, int | float | str) and not isinstance(value, bool):
        return parse_duration(value)
    return value


def _period(value: Any) -> Any:
    if isinstance(value, int | float | str) and not isinstance(value, bool):
        return parse_period(value).label
    return value


Duration = Annotated[
    float,
    BeforeValidator(_duration),
    WithJsonSchema(
        {
            "anyOf": [
                {"type": "number", "minimum": 0},
                {"type": "string", "pattern": _DURATION_PATTERN},
            ],
            "description": "seconds, or a number with a unit s, m, h, d, w: '90', '10m', '1h30m', '7d'",
        }
    ),
]

PeriodText = Annotated[
    str,
    BeforeValidator(_period),
    WithJsonSchema(
        {
            "anyOf": [
                {"enum": ["month", "week", "day"]},
                {"type": "string", "pattern": _DURATION_PATTERN},
            ],
            "description": "calendar month, ISO week or day in UTC, or a rolling window such as '7d'",
        }
    ),
]


class _Doc(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class FullCondition(_Doc):
    """When a tier counts as full: its pilots stop starting."""

    pending: int | None = Field(
        None, ge=0, description="full when more than this many of the tier's pilots are pending"
    )
    oldest_pending: Duration | None = Field(
        None, description="full when the tier's oldest pending pilot has waited longer than this"
    )

    @_model_validator(mode="after")
    def _one_condition(self) -> FullCondition:
        if self.pending is None and self.oldest_pending is None:
            raise ValueError("give 'pending', 'oldest_pending' or both")
        return self


class Quota(_Doc):
    """A limit per period: pilots started, and/or pilot-hours used."""

    per: PeriodText = Field(description="month, week, day (calendar, UTC) or a rolling window ('7d')")
    pilots: int | None = Field(None, ge=0, description="pilots started per period")
    pilot_hours: float | None = Field(
        None, ge=0, le=1e12, allow_inf_nan=False, description="pilot-hours (start to end) per period"
    )

    @_model_validator(mode="after")
    def _one_limit(self) -> Quota:
        if self.pilots is None and self.pilot_hours is None:
            raise ValueError("give 'pilots', 'pilot_hours' or both")
        return self

    @property
    def period(self) -> Period:
        return parse_period(self.per)

    def describe(self) -> str:
        parts = []
        if self.pilots is not None:
            parts.append(f"{self.pilots} pilots")
        if self.pilot_hours is not None:
            parts.append(f"{self.pilot_hours:g} pilot-hours")
        per = self.per if self.period.kind != "rolling" else f"rolling {self.per}"
        return " and ".join(parts) + f" per {per}"


class Drain(_Doc):
    """How a tier gives capacity back when demand falls below supply."""

    cancel_pending: bool = Field(True, description="cancel pilots that have not started")
    retire_running: bool = Field(False, description="also retire (drain peacefully) running pilots")
    hysteresis: Duration = Field(0.0, description="no scale-down within this time after the tier scaled up")


class Tier(_Doc):
    """One resource of a cascade: an existing queue section of queues.conf."""

    queue: str = Field(min_length=1, description="the queues.conf section this tier submits through")
    cap: int | None = Field(None, ge=0, description="most pilots (running + pending) at once; none = no cap")
    full: FullCondition | None = Field(None, description="when the tier counts as full")
    spill_on: tuple[SpillCondition, ...] = Field(
        SPILL_CONDITIONS,
        description="conditions that pass unmet demand on to the next tier; on any other, it waits",
    )
    quotas: tuple[Quota, ...] = Field((), description="period limits; all of them hold")
    cost_per_hour: float = Field(
        0.0, ge=0, le=1e9, allow_inf_nan=False, description="cost of one pilot-hour (reports)"
    )
    priority: int | None = Field(
        None, description="fill order: lower first; tiers without one keep their list position"
    )
    weight: float = Field(
        1.0,
        gt=0,
        le=1e6,
        allow_inf_nan=False,  # an infinite weight would overflow the split
        description="tiers of equal priority split the demand they take in proportion to their weights",
    )
    drain: Drain = Field(default_factory=Drain)
    provisioning_deadline: Duration | None = Field(
        None, description="pilots not started within this mark the tier backed off"
    )
    backoff: Duration = Field(1800.0, description="how long a backed-off tier is skipped")

    @property
    def name(self) -> str:
        """A tier is named by its queue (also its key in the quota ledger)."""
        return self.queue


def _headroom(value: Any) -> Any:
    # '5%' or a whole number of pilots; validated here so the error names the key
    if isinstance(value, bool):
        raise ValueError(f"a whole number of pilots or a percentage like '5%', not {value!r}")
    if isinstance(value, str):
        text = value.strip()
        number = text[:-1] if text.endswith("%") else text
        try:
            amount = float(number)
        except ValueError:
            raise ValueError(f"not a number of pilots or a percentage like '5%': {value!r}") from None
        if not math.isfinite(amount) or amount < 0 or (not text.endswith("%") and amount != int(amount)):
            raise ValueError(f"a whole number of pilots >= 0 or a percentage >= 0: {value!r}")
        return text if text.endswith("%") else int(amount)
    if isinstance(value, int | float) and not isinstance(value, bool):
        if not math.isfinite(value) or value < 0 or value != int(value):
            raise ValueError(f"a whole number of pilots >= 0 or a percentage >= 0: {value!r}")
        return int(value)
    return value


Headroom = Annotated[
    int | str,
    BeforeValidator(_headroom),
    WithJsonSchema(
        {
            "anyOf": [
                {"type": "integer", "minimum": 0},
                {"type": "string", "pattern": r"^\s*\d+(\.\d+)?\s*%$"},
            ],
            "description": "pilots kept above the demand: a number, or a percentage of the demand ('5%')",
        }
    ),
]


class Cascade(_Doc):
    """Ordered tiers sharing one demand."""

    name: str = Field(min_length=1)
    demand: str = Field(min_length=1, description="the WMS queue whose activated jobs are the demand")
    tiers: tuple[Tier, ...] = Field(min_length=1)
    headroom: Headroom = Field(
        0,
        description="pilots kept above the demand while there is demand (a number or a percentage such as "
        "'5%'): they cover pilots that end between cycles while their replacements start",
    )

    def headroom_for(self, demand: int) -> int:
        """Pilots to keep above ``demand`` (none without demand)."""
        if demand <= 0:
            return 0
        if isinstance(self.headroom, str):
            return math.ceil(demand * float(self.headroom.strip()[:-1]) / 100 - 1e-9)
        return self.headroom

    @property
    def ordered(self) -> tuple[Tier, ...]:
        """Tiers in fill order (scale-down runs it backwards)."""
        return tuple(t for group in self.groups for t in group)

    @property
    def groups(self) -> tuple[tuple[Tier, ...], ...]:
        """Tiers in fill order, tiers of equal priority together (they share demand by weight)."""
        groups: list[list[Tier]] = []
        last: int | None = None
        for index, tier in sorted(enumerate(self.tiers), key=lambda it: (self._rank(it[0]), it[0])):
            rank = self._rank(index)
            if groups and rank == last:
                groups[-1].append(tier)
            else:
                groups.append([tier])
            last = rank
        return tuple(tuple(g) for g in groups)

    def _rank(self, index: int) -> int:
        priority = self.tiers[index].priority
        return priority if priority is not None else index

    def tier(self, queue: str) -> Tier:
        for t in self.tiers:
            if t.queue == queue:
                return t
        raise KeyError(queue)


class PolicyDocument(_Doc):
    """A provisioning policy: any number of cascades."""

    model_config = ConfigDict(
        extra="forbid",
        frozen=True,
        title="autopyfactory provisioning policy",
        json_schema_extra={"$schema": "https://json-schema.org/draft/2020-12/schema"},
    )

    version: Literal[1] = 1
    cascades: tuple[Cascade, ...] = ()

    def cascade_of(self, queue: str) -> Cascade | None:
        for cascade in self.cascades:
            if any(t.queue == queue for t in cascade.tiers):
                return cascade
        return None

    @property
    def tier_queues(self) -> list[str]:
        return [t.queue for c in self.cascades for t in c.tiers]


def policy_json_schema() -> dict[str, Any]:
    return PolicyDocument.model_json_schema()


# ---------------------------------------------------------------------------------------------
# Loading and validation


def load_policy(path: str | Path) -> PolicyDocument:
    """Read and validate a policy file (``.json`` as JSON, anything else as YAML)."""
    from autopyfactory.config.sources import SourceError, read_file

    file = str(path)
    try:  # UTF-8, a size limit, and no FIFO or device (it would hang or never end)
        text = read_file(Path(path)).text
    except SourceError as exc:
        raise ConfigError(
            [ConfigProblem(file, None, None, f"cannot read policy: {exc.message}", line=exc.line)]
        ) from None
    fmt = "json" if file.lower().endswith(".json") else "yaml"
    return parse_policy(text, file=file, fmt=fmt)


def parse_policy(text: str, *, file: str = "<policy>", fmt: str = "yaml") -> PolicyDocument:
    # the text parser (and YAML) is loaded only here: the pure decision code imports these models
    from autopyfactory.config.policy_text import parse_text

    data = parse_text(text, file, fmt)
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError([ConfigProblem(file, None, None, "a policy document must be a mapping")])
    try:
        doc = PolicyDocument.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(_problems(exc, data, file)) from None
    problems = _semantic_problems(doc, file)
    if problems:
        raise ConfigError(problems)
    return doc


def location_of(cascade: object, tier: object = None) -> str | None:
    if cascade is None and tier is None:
        return None
    parts = [f"cascade {cascade}" if cascade is not None else "cascade ?"]
    if tier is not None:
        parts.append(f"tier {tier}")
    return ", ".join(parts)


def _path(loc: Sequence[int | str]) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def _context(data: Any, loc: Sequence[int | str]) -> str | None:
    """'cascade NAME, tier QUEUE' for an error location, read from the raw document."""
    if len(loc) < 2 or loc[0] != "cascades" or not isinstance(loc[1], int):
        return None
    try:
        cascade = data["cascades"][loc[1]]
    except (KeyError, IndexError, TypeError):
        return None
    name = cascade.get("name") if isinstance(cascade, dict) else None
    tier_name = None
    if len(loc) >= 4 and loc[2] == "tiers" and isinstance(loc[3], int):
        try:
            tier = cascade["tiers"][loc[3]]
            tier_name = tier.get("queue") if isinstance(tier, dict) else None
            tier_name = tier_name if tier_name is not None else f"#{loc[3]}"
        except (KeyError, IndexError, TypeError):
            tier_name = f"#{loc[3]}"
    return location_of(name if name is not None else f"#{loc[1]}", tier_name)


def _model_at(loc: Sequence[int | str]) -> type[BaseModel] | None:
    """The model class whose field the last element of ``loc`` names (for 'did you mean')."""
    model: type[BaseModel] | None = PolicyDocument
    for part in loc[:-1]:
        if isinstance(part, int) or model is None:
            continue
        field = model.model_fields.get(part)
        model = _inner_model(field.annotation) if field is not None else None
    return model


def _inner_model(annotation: Any) -> type[BaseModel] | None:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    if typing.get_origin(annotation) in (typing.Union, types.UnionType, tuple, list, Annotated):
        for arg in typing.get_args(annotation):
            found = _inner_model(arg)
            if found is not None:
                return found
    return None


def _problems(exc: ValidationError, data: Any, file: str) -> list[ConfigProblem]:
    problems: list[ConfigProblem] = []
    errors = exc.errors()
    for err in errors:
        # drop pydantic's internal union/validator tags from the location
        loc = [p for p in err["loc"] if isinstance(p, int) or not ("[" in p or p in ("float", "int"))]
        if err["type"] == "too_short" and any(
            len(other["loc"]) > len(err["loc"]) and other["loc"][: len(err["loc"])] == err["loc"]
            for other in errors
        ):
            continue  # "at least 1 item" only because an item inside was invalid: noise
        kind = err["type"]
        where = _context(data, loc)
        key = _path(loc) or None
        if kind == "extra_forbidden":
            model = _model_at(loc)
            fields = list(model.model_fields) if model is not None else []
            message = f"unknown key{did_you_mean(str(loc[-1]), fields)}"
        elif kind == "missing":
            message = "required key is missing"
        else:
            message = err["msg"].removeprefix("Value error, ")
            shown = repr(err.get("input"))
            if "input" in err and not isinstance(err["input"], dict | list) and shown not in message:
                message += f" (got {shown})"
        problems.append(ConfigProblem(file, where, key, message))
    return problems


def _semantic_problems(doc: PolicyDocument, file: str) -> list[ConfigProblem]:
    """What one model cannot see: names unique, a queue in one tier only, a demand in one cascade."""
    problems: list[ConfigProblem] = []
    names: dict[str, int] = {}
    demands: dict[str, str] = {}
    queues: dict[str, str] = {}
    for ci, cascade in enumerate(doc.cascades):
        if cascade.name in names:
            problems.append(
                ConfigProblem(
                    file,
                    location_of(cascade.name),
                    f"cascades[{ci}].name",
                    f"cascade name {cascade.name!r} is already used by cascades[{names[cascade.name]}]",
                )
            )
        names.setdefault(cascade.name, ci)
        if cascade.demand in demands:
            problems.append(
                ConfigProblem(
                    file,
                    location_of(cascade.name),
                    f"cascades[{ci}].demand",
                    f"demand {cascade.demand!r} is already served by cascade {demands[cascade.demand]!r}; "
                    "two cascades on one demand would each fill it",
                )
            )
        demands.setdefault(cascade.demand, cascade.name)
        for ti, tier in enumerate(cascade.tiers):
            if tier.queue in queues:
                problems.append(
                    ConfigProblem(
                        file,
                        location_of(cascade.name, tier.queue),
                        f"cascades[{ci}].tiers[{ti}].queue",
                        f"queue {tier.queue!r} is already a tier of cascade {queues[tier.queue]!r}",
                    )
                )
            queues.setdefault(tier.queue, cascade.name)
            spill = tier.spill_on
            if len(set(spill)) != len(spill):
                problems.append(
                    ConfigProblem(
                        file,
                        location_of(cascade.name, tier.queue),
                        f"cascades[{ci}].tiers[{ti}].spill_on",
                        "a condition is listed twice",
                    )
                )
            for qi, quota in enumerate(tier.quotas):
                same = [q for q in tier.quotas[:qi] if q.per == quota.per]
                if same:
                    problems.append(
                        ConfigProblem(
                            file,
                            location_of(cascade.name, tier.queue),
                            f"cascades[{ci}].tiers[{ti}].quotas[{qi}].per",
                            f"a second quota per {quota.per}; put both limits in one entry",
                        )
                    )
    return problems
