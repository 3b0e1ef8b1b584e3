"""The sources file: placing raw messages in an org, and choosing the referral id among
the identifiers of several systems (docs/integrations.md, Orgs and referral ids)."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest

from schemas.adapters.base import Draft, Identifier, Resolved, Unresolved, derive_event_id
from schemas.adapters.config import SourcesConfigError, load_sources, parse_sources
from schemas.errors import ErrorCode, EventRejected
from schemas.events import EventType, Source
from streams.config import ConfigError, load_settings

ROOT = Path(__file__).resolve().parents[2]
CONFIG = parse_sources(
    """
default_timezone: Europe/Paris
orgs:
  northwind:
    timezone: America/New_York
    hl7v2_senders: [NWH, "EPIC^MAIN"]
    fhir_sources: ["https://fhir.nw.example/"]
    referral_id_system: P
    alias_systems: [F, G]
  lakeside:
    hl7v2_senders: [MAIN]
  shared:
    alias_systems: [S]
  other:
    alias_systems: [S]
"""
)


def draft(*ids: Identifier, org: str | None = None) -> Draft:
    return Draft(
        type=EventType.REFERRAL_ACCEPTED,
        occurred_at=datetime(2025, 3, 1, tzinfo=UTC),
        source=Source.EHR,
        anchor="Task/1",
        identifiers=ids,
        org_id=org,
    )


def test_the_example_file_parses() -> None:
    config = load_sources(ROOT / "deploy" / "sources.example.yaml")
    assert config.org_for_hl7_sender("EPIC", "NWH") == "northwind"
    assert config.timezone_for("lakeside") == ZoneInfo("America/Chicago")


def test_senders_application_and_facility_before_facility_alone() -> None:
    assert CONFIG.org_for_hl7_sender("EPIC", "MAIN") == "northwind"
    assert CONFIG.org_for_hl7_sender("OTHER", "MAIN") == "lakeside"
    assert CONFIG.org_for_hl7_sender("X", "NOPE") is None
    assert CONFIG.org_for_fhir_source("https://fhir.nw.example/r4") == "northwind"
    assert CONFIG.org_for_fhir_source("https://elsewhere/") is None


def test_time_zones_per_org_with_a_default() -> None:
    assert CONFIG.timezone_for("northwind") == ZoneInfo("America/New_York")
    assert CONFIG.timezone_for("lakeside") == ZoneInfo("Europe/Paris")
    assert CONFIG.timezone_for(None) == ZoneInfo("Europe/Paris")


def test_referral_id_system_wins_and_aliases_are_recorded() -> None:
    placed = CONFIG.resolve(draft(Identifier("F", "f-9"), Identifier("P", "R-1")))
    assert isinstance(placed, Resolved)
    assert (placed.org_id, placed.referral_id) == ("northwind", "R-1")
    assert placed.aliases == (Identifier("F", "f-9"),)


def test_only_aliases_wait() -> None:
    placed = CONFIG.resolve(draft(Identifier("G", "g-1"), Identifier("F", "f-9")))
    assert isinstance(placed, Unresolved)
    assert placed.aliases[0] == Identifier("G", "g-1")


def test_identifiers_of_no_configured_system_are_refused() -> None:
    with pytest.raises(EventRejected) as caught:
        CONFIG.resolve(draft(Identifier("Q", "1"), org="northwind"))
    assert caught.value.code is ErrorCode.MISSING_REFERRAL_ID
    assert "Q" in caught.value.detail


def test_no_identifier_at_all() -> None:
    with pytest.raises(EventRejected) as caught:
        CONFIG.resolve(draft(org="lakeside"))
    assert caught.value.code is ErrorCode.MISSING_REFERRAL_ID


def test_org_without_referral_id_system_takes_the_first_identifier() -> None:
    placed = CONFIG.resolve(draft(Identifier("x", "A"), Identifier("y", "B"), org="lakeside"))
    assert isinstance(placed, Resolved) and placed.referral_id == "A"


def test_a_system_shared_by_two_orgs_does_not_place_a_message() -> None:
    with pytest.raises(EventRejected) as caught:
        CONFIG.resolve(draft(Identifier("S", "1")))
    assert caught.value.code is ErrorCode.UNKNOWN_ORG


def test_default_org_places_the_rest() -> None:
    config = parse_sources("default_org: solo")
    placed = config.resolve(draft(Identifier("", "R-7")))
    assert isinstance(placed, Resolved) and (placed.org_id, placed.referral_id) == ("solo", "R-7")


def test_event_ids_ignore_identifiers_but_not_facts() -> None:
    a = draft(Identifier("P", "R-1"))
    b = draft(Identifier("F", "f-9"))
    assert derive_event_id("fhir", "nw", a) == derive_event_id("fhir", "nw", b)
    assert derive_event_id("fhir", "nw", a) != derive_event_id("hl7v2", "nw", a)
    assert derive_event_id("fhir", "nw", a) != derive_event_id("fhir", "lk", a)


@pytest.mark.parametrize(
    ("text", "where"),
    [
        ("orgs: {a: {timezone: Mars/Base}}", "orgs.a.timezone"),
        ("orgs: {a: {hl7_senders: [X]}}", "orgs.a.hl7_senders"),
        ("orgs: {'a/b': {}}", "orgs"),
        ("default_org: 'has space'", "default_org"),
        ("[1, 2]", "top level"),
        ("orgs: {a: [", "not YAML"),
    ],
)
def test_mistakes_name_the_field(text: str, where: str) -> None:
    with pytest.raises(SourcesConfigError) as caught:
        parse_sources(text, "sources.yaml")
    assert where in str(caught.value) and "sources.yaml" in str(caught.value)


def test_a_bad_sources_file_stops_start_up(tmp_path: Path) -> None:
    bad = tmp_path / "sources.yaml"
    bad.write_text("orgs: {a: {referral_id_sytem: P}}")
    with pytest.raises(ConfigError) as caught:
        load_settings(sources_file=bad)
    assert "REFTRACK_SOURCES_FILE" in str(caught.value)
    assert "referral_id_sytem" in str(caught.value)
    with pytest.raises(ConfigError, match="cannot read"):
        load_settings(sources_file=tmp_path / "missing.yaml")
