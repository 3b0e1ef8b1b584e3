"""The sources file: which org a raw message belongs to, and which of its identifiers is
the referral id. docs/integrations.md is the operator's guide; this is its parser.

    default_org: northwind          # optional: the org of messages nothing else places
    default_timezone: UTC           # optional: HL7 v2 times without an offset (default UTC)
    orgs:
      northwind:                    # an org_id, as it will appear in every event
        timezone: America/New_York  # this org's HL7 v2 times without an offset
        hl7v2_senders: [NWH, "EPIC^NWH"]   # MSH-4 facility, or MSH-3^MSH-4
        fhir_sources: ["https://fhir.northwind.example/"]   # prefixes of meta.source
        comms_accounts: [AC0123]    # messaging provider account ids (Twilio AccountSid)
        referral_id_system: "urn:oid:2.16.840.1.113883.19.1"   # the placer's numbers
        alias_systems:              # other systems' numbers for the same referral
          - "urn:oid:2.16.840.1.113883.19.2"

Org, first that holds: the message names it (an `org_id` field, a FHIR meta.tag with
system `https://reftrack.dev/fhir/org`); its sender is listed under an org; one of its
identifiers is in exactly one org's systems; `default_org`. Otherwise `unknown_org`.

Referral id: with `referral_id_system` set, the identifier in that system is the
referral id, and identifiers in `alias_systems` are recorded as its aliases; a message
with only alias identifiers waits until some message links the alias (streams/adapt.py).
Without it, the first identifier the message gives is the referral id.

Pure: `parse_sources` takes text; only `load_sources` reads a file.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import tzinfo
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from schemas.adapters.base import Draft, Identifier, Resolved, Unresolved
from schemas.errors import ErrorCode, EventRejected

ORG_TAG_SYSTEM = "https://reftrack.dev/fhir/org"


class SourcesConfigError(ValueError):
    """The sources file cannot be used; the message names the file and the field."""


def _zone(value: str) -> str:
    try:
        ZoneInfo(value)
    except (ZoneInfoNotFoundError, ValueError):
        raise ValueError(f"unknown time zone {value!r} (use an IANA name, e.g. UTC)") from None
    return value


class OrgSources(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    timezone: str | None = None
    hl7v2_senders: tuple[str, ...] = ()
    fhir_sources: tuple[str, ...] = ()
    comms_accounts: tuple[str, ...] = ()
    referral_id_system: str | None = None
    alias_systems: tuple[str, ...] = ()

    @field_validator("timezone")
    @classmethod
    def _tz(cls, value: str | None) -> str | None:
        return None if value is None else _zone(value)


class SourcesFile(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    default_org: str | None = Field(None, min_length=1, max_length=64, pattern=r"^[^/\s]+$")
    default_timezone: str = "UTC"
    orgs: dict[str, OrgSources] = Field(default_factory=dict)

    @field_validator("default_timezone")
    @classmethod
    def _tz(cls, value: str) -> str:
        return _zone(value)

    @field_validator("orgs")
    @classmethod
    def _org_ids(cls, value: dict[str, OrgSources]) -> dict[str, OrgSources]:
        for org in value:
            if not org or len(org) > 64 or "/" in org or any(c.isspace() for c in org):
                raise ValueError(f"org id {org!r} must be 1-64 characters, no '/' or spaces")
        return value


@dataclass(frozen=True)
class SourceConfig:
    """Lookups the adapters and `resolve` need, built once from the sources file."""

    file: SourcesFile

    @classmethod
    def default(cls) -> SourceConfig:
        return cls(SourcesFile(default_org=None))

    def __post_init__(self) -> None:
        senders: dict[str, str] = {}
        systems: dict[str, set[str]] = {}
        accounts: dict[str, str] = {}
        for org, block in self.file.orgs.items():
            for sender in block.hl7v2_senders:
                senders[sender] = org
            for account in block.comms_accounts:
                accounts[account] = org
            for system in (block.referral_id_system, *block.alias_systems):
                if system is not None:
                    systems.setdefault(system, set()).add(org)
        object.__setattr__(self, "_senders", senders)
        object.__setattr__(self, "_systems", systems)
        object.__setattr__(self, "_accounts", accounts)

    # -- orgs ------------------------------------------------------------------------

    def org_for_hl7_sender(self, application: str, facility: str) -> str | None:
        """MSH-3 and MSH-4 (their first components) to an org: `APP^FAC`, then `FAC`."""
        senders: dict[str, str] = self._senders  # type: ignore[attr-defined]
        return senders.get(f"{application}^{facility}") or senders.get(facility)

    def org_for_fhir_source(self, meta_source: str | None) -> str | None:
        if not meta_source:
            return None
        for org, block in self.file.orgs.items():
            if any(meta_source.startswith(prefix) for prefix in block.fhir_sources):
                return org
        return None

    def org_for_comms_account(self, account: str | None) -> str | None:
        accounts: dict[str, str] = self._accounts  # type: ignore[attr-defined]
        return accounts.get(account) if account else None

    def org_for_identifiers(self, identifiers: tuple[Identifier, ...]) -> str | None:
        systems: dict[str, set[str]] = self._systems  # type: ignore[attr-defined]
        for identifier in identifiers:
            orgs = systems.get(identifier.system)
            if orgs is not None and len(orgs) == 1:
                return next(iter(orgs))
        return None

    def timezone_for(self, org_id: str | None) -> tzinfo:
        """The zone of an org's HL7 v2 times that carry no offset."""
        block = self.file.orgs.get(org_id) if org_id else None
        if block is not None and block.timezone:
            return ZoneInfo(block.timezone)
        return ZoneInfo(self.file.default_timezone)

    # -- referral ids -----------------------------------------------------------------

    def resolve(self, draft: Draft) -> Resolved | Unresolved:
        """Place a draft: its org, and its referral id or the aliases it waits on."""
        org = draft.org_id or self.org_for_identifiers(draft.identifiers) or self.file.default_org
        if org is None:
            raise EventRejected(
                ErrorCode.UNKNOWN_ORG,
                "no org for this message: name it (org_id, FHIR meta.tag "
                f"{ORG_TAG_SYSTEM}), list its sender or identifier systems in the sources "
                "file, or set default_org",
            )
        block = self.file.orgs.get(org)
        if not draft.identifiers:
            raise EventRejected(
                ErrorCode.MISSING_REFERRAL_ID, "the message carries no referral identifier"
            )
        if block is None or block.referral_id_system is None:
            return Resolved(draft, org, draft.identifiers[0].value, ())
        aliases = tuple(i for i in draft.identifiers if i.system in block.alias_systems)
        for identifier in draft.identifiers:
            if identifier.system == block.referral_id_system:
                return Resolved(draft, org, identifier.value, aliases)
        if aliases:
            return Unresolved(draft, org, aliases)
        seen = sorted({i.system or '""' for i in draft.identifiers})
        raise EventRejected(
            ErrorCode.MISSING_REFERRAL_ID,
            f"no identifier in org {org}'s referral_id_system or alias_systems "
            f"(the message has systems {', '.join(seen)})",
        )


def parse_sources(text: str, source: str = "<text>") -> SourceConfig:
    try:
        doc: Any = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise SourcesConfigError(f"sources file {source}: not YAML ({exc})") from None
    if doc is None:
        doc = {}
    if not isinstance(doc, dict):
        raise SourcesConfigError(f"sources file {source}: the top level must be a mapping")
    try:
        return SourceConfig(SourcesFile.model_validate(doc))
    except ValidationError as exc:
        problems = [
            f"{'.'.join(str(p) for p in err['loc']) or '(top)'}: {err['msg']}"
            for err in exc.errors(include_url=False, include_input=False)
        ]
        raise SourcesConfigError(f"sources file {source}: " + "; ".join(problems)) from None


def load_sources(path: Path | None) -> SourceConfig:
    if path is None:
        return SourceConfig.default()
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise SourcesConfigError(f"sources file {path}: cannot read ({exc.strerror})") from None
    return parse_sources(text, str(path))
