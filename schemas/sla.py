"""The SLA file: per-org and per-specialty targets for the at-risk flags (SPEC §5), and
optional business hours. docs/sla.md is the operator's guide; this is its parser.

    defaults:                      # optional; SPEC §5 values for anything left out
      routing:    {stat: 2h, urgent: 24h, routine: 72h}
      scheduling: {stat: 24h, urgent: 72h, routine: 14d}
      unresponsive_attempts: 3
      unresponsive_after: 7d
      no_show_grace: 3d
      loop_close: 14d
    specialties:                   # optional; per specialty, for every org
      oncology:
        scheduling: {routine: 7d}
    orgs:
      northwind:                   # an org_id, exactly as in the events
        routing: {urgent: 12h}
        calendar:                  # optional business hours for this org
          timezone: America/New_York
          hours: {mon: "08:00-18:00", tue: "08:00-18:00", fri: "08:00-16:00"}
          holidays: [2025-12-25]
        specialties:               # optional; per specialty, for this org only
          cardiology:
            scheduling: {routine: 7d}

Resolution, key by key (a later layer wins for the keys it sets; `routing` and
`scheduling` merge priority by priority):

    SPEC §5  <-  defaults  <-  specialties[s]  <-  orgs[o]  <-  orgs[o].specialties[s]

so whatever an org's own section says beats anything written for all orgs. With a
calendar every duration counts working time only (schemas.calendar).

Durations are strings: a number and a unit, units w, d, h, m, s, largest first, each at
most once ("90m", "2h", "14d", "1d12h"); positive, at most 365d. A bare number is refused:
"2" might mean seconds, hours or days.

Every problem is a `SlaConfigError` naming the file and the field path, e.g.
`sla file /etc/reftrack/sla.yaml: orgs.northwind.routing.urgnt: unknown priority 'urgnt'
(use stat, urgent or routine)`. Pure: `parse_policy` takes text; only `load_policy` reads
a file.
"""

from __future__ import annotations

import re
import types
from collections.abc import Hashable
from dataclasses import replace
from datetime import date, datetime
from pathlib import Path
from typing import Annotated, Any, ClassVar, Union, get_args, get_origin

import yaml
from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PrivateAttr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_core import ErrorDetails

from schemas.calendar import WEEKDAYS, BusinessCalendar, Hours, load_zone, parse_hours
from schemas.flags import DEFAULT_TARGETS, SlaTargets, WorkingTime

PRIORITIES: tuple[str, ...] = ("stat", "urgent", "routine")

_US_PER: dict[str, int] = {
    "w": 7 * 86_400_000_000,
    "d": 86_400_000_000,
    "h": 3_600_000_000,
    "m": 60_000_000,
    "s": 1_000_000,
}
MAX_DURATION = 365 * _US_PER["d"]
_DURATION_RE = re.compile(r"^(?:(\d+)w)?(?:(\d+)d)?(?:(\d+)h)?(?:(\d+)m)?(?:(\d+)s)?$")
_DURATION_HELP = "use a number and a unit (w, d, h, m, s), e.g. 90m, 2h, 14d or 1d12h"


# -- errors -----------------------------------------------------------------------------


class SlaConfigError(ValueError):
    """The SLA file cannot be used. The message names the file and, for each problem,
    the field path: `sla file <source>: <path>: <problem>`; `problems` lists them as
    (path, problem), the path empty for whole-file problems (unreadable, not YAML)."""

    def __init__(self, source: str, problems: list[tuple[str, str]]) -> None:
        self.source = source
        self.problems = problems
        parts = [f"{path}: {problem}" if path else problem for path, problem in problems]
        super().__init__(f"sla file {source}: " + "; ".join(parts))

    @property
    def path(self) -> str:
        """The field path of the first problem ('' for a whole-file problem)."""
        return self.problems[0][0] if self.problems else ""


# -- durations --------------------------------------------------------------------------


def parse_duration(value: object) -> int:
    """'1d12h' -> µs. Raises ValueError for anything but a positive duration string of at
    most 365 days."""
    if isinstance(value, bool) or not isinstance(value, str | int | float):
        raise ValueError(f"bad duration {value!r}: {_DURATION_HELP}")
    if not isinstance(value, str):
        raise ValueError(f"bad duration {value!r}: a bare number has no unit; {_DURATION_HELP}")
    text = value.strip().lower().replace(" ", "")
    match = _DURATION_RE.match(text)
    if not text or match is None:
        raise ValueError(f"bad duration {value!r}: {_DURATION_HELP}")
    total = sum(
        int(amount) * _US_PER[unit]
        for amount, unit in zip(match.groups(), "wdhms", strict=True)
        if amount is not None
    )
    if total <= 0:
        raise ValueError(f"bad duration {value!r}: must be more than zero")
    if total > MAX_DURATION:
        raise ValueError(f"bad duration {value!r}: at most 365d")
    return total


def format_duration(us: int) -> str:
    """µs -> the shortest duration string parse_duration reads back ('1d12h', '90m').
    Sub-second remainders are dropped."""
    parts: list[str] = []
    rest = us
    for unit in "dhms":
        amount, rest = divmod(rest, _US_PER[unit])
        if amount:
            parts.append(f"{amount}{unit}")
    return "".join(parts) or "0s"


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _duration(value: object) -> object:
    return None if value is None else parse_duration(value)


def _hours(value: object) -> object:
    if value is None or (isinstance(value, str) and value.strip().lower() == "closed"):
        return None
    if not isinstance(value, str):
        raise ValueError(f'bad hours {value!r}: use a quoted "HH:MM-HH:MM" or closed')
    return parse_hours(value)


def _holiday(value: object) -> object:
    if isinstance(value, datetime):
        raise ValueError(f"bad holiday {_short(value)}: a date like 2025-12-25, without a time")
    if not isinstance(value, date | str):
        raise ValueError(f"bad holiday {_short(value)}: a date like 2025-12-25")
    return value


Duration = Annotated[int | None, BeforeValidator(_duration)]
Holiday = Annotated[date, BeforeValidator(_holiday)]
Attempts = Annotated[int, Field(strict=True, ge=1, le=100)]
WeekdayHours = Annotated[Hours | None, BeforeValidator(_hours)]


# -- the file's shape -------------------------------------------------------------------


class _Block(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    # Said after "unknown key 'x'" when x is one of these.
    _hints: ClassVar[dict[str, str]] = {}


class PriorityTargets(_Block):
    """A target per priority; a priority left out keeps the value from the layer below."""

    stat: Duration = None
    urgent: Duration = None
    routine: Duration = None

    def values(self) -> dict[str, int]:
        return {p: v for p in PRIORITIES if (v := getattr(self, p)) is not None}


_TARGET_HINTS = {
    **dict.fromkeys(PRIORITIES, "priorities go under routing: or scheduling:"),
    "calendar": "business hours are set per org (orgs.<org_id>.calendar)",
    "specialties": "specialties go at the top level or under an org, not deeper",
}


class TargetsBlock(_Block):
    """Targets at one layer; anything left out comes from the layer below."""

    _hints: ClassVar[dict[str, str]] = _TARGET_HINTS

    routing: PriorityTargets | None = None
    scheduling: PriorityTargets | None = None
    unresponsive_attempts: Attempts | None = None
    unresponsive_after: Duration = None
    no_show_grace: Duration = None
    loop_close: Duration = None

    def apply_to(self, base: SlaTargets) -> SlaTargets:
        changes: dict[str, Any] = {}
        if self.routing is not None:
            changes["routing"] = {**base.routing, **self.routing.values()}
        if self.scheduling is not None:
            changes["scheduling"] = {**base.scheduling, **self.scheduling.values()}
        for name in ("unresponsive_attempts", "unresponsive_after", "no_show_grace", "loop_close"):
            value = getattr(self, name)
            if value is not None:
                changes[name] = value
        return replace(base, **changes) if changes else base


class WeekHours(_Block):
    """Opening hours per weekday, "HH:MM-HH:MM" local time; left out or closed: closed."""

    mon: WeekdayHours = None
    tue: WeekdayHours = None
    wed: WeekdayHours = None
    thu: WeekdayHours = None
    fri: WeekdayHours = None
    sat: WeekdayHours = None
    sun: WeekdayHours = None

    @model_validator(mode="after")
    def _some_working_day(self) -> WeekHours:
        if all(getattr(self, day) is None for day in WEEKDAYS):
            raise ValueError("no working day: give hours for at least one weekday")
        return self


class CalendarBlock(_Block):
    """Business hours for one org."""

    timezone: str
    hours: WeekHours
    holidays: list[Holiday] = []
    _calendar: BusinessCalendar = PrivateAttr()

    @field_validator("timezone")
    @classmethod
    def _known_zone(cls, value: str) -> str:
        load_zone(value)
        return value

    @model_validator(mode="after")
    def _build(self) -> CalendarBlock:
        week = tuple(getattr(self.hours, day) for day in WEEKDAYS)
        self._calendar = BusinessCalendar(self.timezone, week, frozenset(self.holidays))
        return self

    @property
    def calendar(self) -> BusinessCalendar:
        return self._calendar


def _string_keys(value: object) -> object:
    """YAML reads `1234:` as an int; org ids and specialties are strings."""
    if isinstance(value, dict):
        return {
            str(k) if isinstance(k, int) and not isinstance(k, bool) else k: v
            for k, v in value.items()
        }
    return value


class OrgBlock(TargetsBlock):
    """One org's targets, its business hours, and its per-specialty targets."""

    _hints: ClassVar[dict[str, str]] = {
        **dict.fromkeys(PRIORITIES, "priorities go under routing: or scheduling:"),
    }

    calendar: CalendarBlock | None = None
    specialties: dict[str, TargetsBlock] = {}

    @field_validator("specialties", mode="before")
    @classmethod
    def _string_keys(cls, value: object) -> object:
        return _string_keys(value)


class SlaFile(_Block):
    """The whole file."""

    _hints: ClassVar[dict[str, str]] = {
        **dict.fromkeys(TargetsBlock.model_fields, "targets for every org go under defaults:"),
        **dict.fromkeys(PRIORITIES, "priorities go under routing: or scheduling:"),
        "calendar": "business hours are set per org (orgs.<org_id>.calendar)",
    }

    defaults: TargetsBlock | None = None
    specialties: dict[str, TargetsBlock] = {}
    orgs: dict[str, OrgBlock] = {}

    @field_validator("specialties", "orgs", mode="before")
    @classmethod
    def _string_keys(cls, value: object) -> object:
        return _string_keys(value)

    @field_validator("orgs")
    @classmethod
    def _org_ids(cls, value: dict[str, OrgBlock]) -> dict[str, OrgBlock]:
        for org_id in value:
            if not org_id or "/" in org_id or len(org_id) > 64:
                raise ValueError(f"{org_id!r} is not an org id (1 to 64 characters, no '/')")
        return value


# -- the policy -------------------------------------------------------------------------


class SlaPolicy:
    """Targets per (org, specialty), resolved from an SLA file (see the module docstring).

    `targets_for` is called per event: resolved targets are cached, keyed only by the
    org and specialty names the file mentions, so the cache stays as small as the file.
    The returned SlaTargets are shared: do not mutate their dicts."""

    def __init__(self, config: SlaFile | None = None, source: str = "<defaults>") -> None:
        self.config = config if config is not None else SlaFile()
        self.source = source
        defaults = self.config.defaults
        self._base = defaults.apply_to(DEFAULT_TARGETS) if defaults else DEFAULT_TARGETS
        self._cache: dict[tuple[str | None, str | None], SlaTargets] = {}

    @classmethod
    def default(cls) -> SlaPolicy:
        """SPEC §5 targets for every org and specialty, no business hours."""
        return cls()

    def targets_for(self, org_id: str, specialty: str | None) -> SlaTargets:
        """The targets for a referral of `org_id` with this specialty (None: unknown)."""
        org = self.config.orgs.get(org_id)
        org_key = org_id if org is not None else None
        spec_key: str | None = None
        if specialty is not None and (
            specialty in self.config.specialties
            or (org is not None and specialty in org.specialties)
        ):
            spec_key = specialty
        key = (org_key, spec_key)
        targets = self._cache.get(key)
        if targets is None:
            targets = self._resolve(org, spec_key)
            self._cache[key] = targets
        return targets

    def _resolve(self, org: OrgBlock | None, specialty: str | None) -> SlaTargets:
        targets = self._base
        if specialty is not None and specialty in self.config.specialties:
            targets = self.config.specialties[specialty].apply_to(targets)
        if org is not None:
            targets = org.apply_to(targets)
            if org.calendar is not None:
                calendar: WorkingTime = org.calendar.calendar
                targets = replace(targets, calendar=calendar)
            if specialty is not None and specialty in org.specialties:
                targets = org.specialties[specialty].apply_to(targets)
        return targets

    @property
    def org_ids(self) -> tuple[str, ...]:
        """The orgs the file has a section for."""
        return tuple(self.config.orgs)

    def __repr__(self) -> str:
        calendars = sum(1 for org in self.config.orgs.values() if org.calendar is not None)
        return (
            f"SlaPolicy(source={self.source!r}, orgs={len(self.config.orgs)}, "
            f"specialties={len(self.config.specialties)}, calendars={calendars})"
        )


# -- reading ----------------------------------------------------------------------------


class _Loader(yaml.SafeLoader):
    """SafeLoader that refuses duplicate keys (PyYAML keeps the last one silently)."""


def _no_duplicates(loader: _Loader, node: yaml.MappingNode, deep: bool = False) -> Any:
    seen: set[Hashable] = set()
    for key_node, _ in node.value:
        if key_node.tag == "tag:yaml.org,2002:merge":
            continue  # `<<: *anchor` merges; keys written next to it override, by design
        key = loader.construct_object(key_node, deep=deep)
        if isinstance(key, Hashable) and key in seen:
            raise yaml.constructor.ConstructorError(
                "while reading a mapping",
                node.start_mark,
                f"duplicate key {key!r}",
                key_node.start_mark,
            )
        seen.add(key)
    return loader.construct_mapping(node, deep=deep)


_Loader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _no_duplicates)


def _yaml_problem(exc: yaml.YAMLError) -> str:
    mark = getattr(exc, "problem_mark", None) or getattr(exc, "context_mark", None)
    problem = getattr(exc, "problem", None) or str(exc)
    if mark is None:
        return f"invalid YAML: {problem}"
    return f"invalid YAML at line {mark.line + 1}, column {mark.column + 1}: {problem}"


def _path(loc: tuple[int | str, ...]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += ("." if out else "") + str(part)
    return out


def _unwrap(tp: Any) -> Any:
    while True:
        origin = get_origin(tp)
        if origin is Annotated:
            tp = get_args(tp)[0]
        elif origin is Union or origin is types.UnionType:
            tp = next(a for a in get_args(tp) if a is not type(None))
        else:
            return tp


def _model_at(loc: tuple[int | str, ...]) -> type[BaseModel] | None:
    """The model class that validates the value at `loc` (None: not a model)."""
    current: Any = SlaFile
    for part in loc:
        current = _unwrap(current)
        if isinstance(current, type) and issubclass(current, BaseModel):
            info = current.model_fields.get(str(part))
            if info is None:
                return None
            current = info.annotation
        elif get_origin(current) is dict:
            current = get_args(current)[1]
        elif get_origin(current) is list:
            current = get_args(current)[0]
        else:
            return None
    current = _unwrap(current)
    return current if isinstance(current, type) and issubclass(current, BaseModel) else None


def _or_list(names: list[str]) -> str:
    return names[0] if len(names) == 1 else ", ".join(names[:-1]) + " or " + names[-1]


_TYPE_MESSAGES = {
    "dict_type": "expected a mapping (key: value lines)",
    "model_type": "expected a mapping (key: value lines)",
    "model_attributes_type": "expected a mapping (key: value lines)",
    "list_type": "expected a list",
    "string_type": "expected a string",
    "int_type": "expected a whole number",
    "int_parsing": "expected a whole number",
    "int_from_float": "expected a whole number",
    "date_type": "expected a date like 2025-12-25",
    "date_parsing": "expected a date like 2025-12-25",
    "date_from_datetime_parsing": "expected a date like 2025-12-25",
    "date_from_datetime_inexact": "expected a date like 2025-12-25, without a time",
}


def _problem(err: ErrorDetails) -> tuple[str, str]:
    loc = tuple(err["loc"])
    kind = err["type"]
    if kind == "extra_forbidden":
        parent, key = _model_at(loc[:-1]), loc[-1]
        path = _path(loc)
        if parent is PriorityTargets:
            return path, f"unknown priority {key!r} (use {_or_list(list(PRIORITIES))})"
        if parent is WeekHours:
            return path, f"unknown weekday {key!r} (use {_or_list(list(WEEKDAYS))})"
        if parent is None:
            return path, f"unknown key {key!r}"
        message = f"unknown key {key!r} (use {_or_list(list(parent.model_fields))})"
        hints: dict[str, str] = getattr(parent, "_hints", {})
        hint = hints.get(str(key))
        return path, f"{message}; {hint}" if hint else message
    if kind == "missing":
        return _path(loc), "required"
    if kind == "value_error":
        ctx = err.get("ctx") or {}
        return _path(loc), str(ctx.get("error", err["msg"]))
    if kind in ("greater_than_equal", "less_than_equal"):
        return _path(loc), f"{err['msg'].lower()}, got {_short(err['input'])}"
    message = _TYPE_MESSAGES.get(kind, err["msg"])
    return _path(loc), f"{message}, got {_short(err['input'])}"


def parse_policy(text: str, source: str = "<string>") -> SlaPolicy:
    """The policy in `text` (YAML); SlaConfigError naming `source` and the field path.
    An empty document (or comments only) means SPEC defaults."""
    try:
        data = yaml.load(text, Loader=_Loader)  # noqa: S506 - a SafeLoader subclass
    except yaml.YAMLError as exc:
        raise SlaConfigError(source, [("", _yaml_problem(exc))]) from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise SlaConfigError(
            source, [("", f"expected a mapping at the top level, got {_short(data)}")]
        )
    try:
        config = SlaFile.model_validate(data)
    except ValidationError as exc:
        problems = [_problem(err) for err in exc.errors(include_url=False)]
        raise SlaConfigError(source, problems) from None
    return SlaPolicy(config, source)


def load_policy(path: str | Path | None) -> SlaPolicy:
    """The policy in the file at `path`; None (or an empty string, i.e. an environment
    variable set to nothing) means SPEC defaults. SlaConfigError when the file cannot be
    read or is not a valid SLA file."""
    if path is None or (isinstance(path, str) and not path.strip()):
        return SlaPolicy.default()
    source = str(path)
    try:
        text = Path(path).read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise SlaConfigError(source, [("", "cannot read it: not UTF-8 text")]) from None
    except OSError as exc:
        raise SlaConfigError(source, [("", f"cannot read it: {exc.strerror or exc}")]) from None
    return parse_policy(text, source)
