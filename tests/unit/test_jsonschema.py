"""The committed JSON Schema for producers (schemas/jsonschema/) matches the code."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from schemas import export
from schemas.errors import ErrorCode, EventRejected
from schemas.events import DATA_MODELS, EventType, parse_event

TOP_LEVEL_REQUIRED = {"event_id", "referral_id", "org_id", "type", "occurred_at", "source"}
# SPEC §3 table: required data fields per type.
REQUIRED_DATA: dict[str, set[str]] = {
    "referral.created": {"priority", "specialty"},
    "referral.routed": set(),
    "referral.accepted": set(),
    "referral.declined": set(),
    "referral.cancelled": set(),
    "patient.outreach": {"channel"},
    "patient.responded": set(),
    "appointment.scheduled": {"appointment_id", "appointment_at"},
    "appointment.rescheduled": {"appointment_id", "appointment_at"},
    "appointment.cancelled": {"appointment_id"},
    "appointment.no_show": {"appointment_id"},
    "appointment.completed": {"appointment_id"},
    "report.received": set(),
    "care.out_of_network": set(),
    "patient.feedback": {"score"},
}
SAMPLE_DATA: dict[str, Any] = {
    "priority": "urgent",
    "specialty": "cardiology",
    "channel": "sms",
    "appointment_id": "A-55",
    "appointment_at": "2025-03-11T09:00:00-05:00",
    "score": 5,
}
RECEIVED = datetime(2025, 3, 5, tzinfo=UTC)


@pytest.fixture(scope="module")
def committed() -> dict[str, Any]:
    return json.loads(export.SCHEMA_PATH.read_text(encoding="utf-8"))


def _resolve(schema: dict[str, Any], node: dict[str, Any]) -> dict[str, Any]:
    while "$ref" in node:
        prefix = "#/$defs/"
        assert node["$ref"].startswith(prefix)
        node = schema["$defs"][node["$ref"][len(prefix) :]]
    return node


def _variant(schema: dict[str, Any], event_type: str) -> dict[str, Any]:
    return _resolve(schema, {"$ref": schema["discriminator"]["mapping"][event_type]})


# -- freshness ----------------------------------------------------------------------------


def test_committed_schema_equals_a_fresh_export() -> None:
    assert export.SCHEMA_PATH.is_file(), "schema file missing: run `make schema`"
    on_disk = export.SCHEMA_PATH.read_text(encoding="utf-8")
    assert on_disk == export.render(), (
        f"{export.SCHEMA_PATH} is stale; run `make schema` and commit the result"
    )
    assert export.check() is None


def test_render_is_pretty_sorted_with_trailing_newline() -> None:
    text = export.render()
    assert text.endswith("}\n") and not text.endswith("\n\n")
    assert text.startswith('{\n  "$defs": {')
    assert text == json.dumps(json.loads(text), indent=2, sort_keys=True, ensure_ascii=False) + "\n"


def test_check_fails_on_a_stale_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "canonical-event.v1.json"
    path.write_text(export.render().replace("64 KiB", "32 KiB"), encoding="utf-8")
    assert export.main(["--check", "--path", str(path)]) == 1
    assert "make schema" in capsys.readouterr().err
    assert "make schema" in (export.check(path) or "")


def test_check_fails_on_a_missing_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert export.main(["--check", "--path", str(tmp_path / "nope.json")]) == 1
    assert "make schema" in capsys.readouterr().err


def test_export_writes_then_check_passes(tmp_path: Path) -> None:
    path = tmp_path / "sub" / "canonical-event.v1.json"
    assert export.main(["--path", str(path)]) == 0
    assert path.read_text(encoding="utf-8") == export.render()
    assert export.main(["--check", "--path", str(path)]) == 0


# -- structure ----------------------------------------------------------------------------


def test_schema_header(committed: dict[str, Any]) -> None:
    assert committed["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    assert committed["$id"].endswith("canonical-event.v1.json")


def test_discriminated_on_type_with_fifteen_variants(committed: dict[str, Any]) -> None:
    assert committed["discriminator"]["propertyName"] == "type"
    mapping = committed["discriminator"]["mapping"]
    assert set(mapping) == {t.value for t in EventType} == set(REQUIRED_DATA)
    assert len(mapping) == 15
    assert len(committed["oneOf"]) == 15
    assert {ref["$ref"] for ref in committed["oneOf"]} == set(mapping.values())
    for event_type in mapping:
        assert _variant(committed, event_type)["properties"]["type"]["const"] == event_type


@pytest.mark.parametrize("event_type", sorted(REQUIRED_DATA))
def test_required_fields_per_variant(committed: dict[str, Any], event_type: str) -> None:
    variant = _variant(committed, event_type)
    required = set(variant["required"])
    needs_data = bool(REQUIRED_DATA[event_type])
    assert required == TOP_LEVEL_REQUIRED | ({"data"} if needs_data else set())
    assert "patient_id" not in required
    data = _resolve(committed, variant["properties"]["data"])
    assert set(data.get("required", [])) == REQUIRED_DATA[event_type]


def test_required_data_table_matches_the_models() -> None:
    for event_type, model in DATA_MODELS.items():
        got = {n for n, f in model.model_fields.items() if f.is_required()}
        assert got == REQUIRED_DATA[event_type.value], event_type


def test_field_constraints(committed: dict[str, Any]) -> None:
    props = _variant(committed, "appointment.scheduled")["properties"]
    for name, limit in (("event_id", 128), ("referral_id", 128), ("org_id", 64)):
        assert (props[name]["minLength"], props[name]["maxLength"]) == (1, limit)
    assert "/" in props["org_id"]["pattern"]
    assert props["occurred_at"]["format"] == "date-time"
    source = _resolve(committed, props["source"])
    assert set(source["enum"]) == {
        "ehr",
        "scheduling",
        "referral_platform",
        "comms",
        "claims",
        "manual",
    }
    data = _resolve(committed, props["data"])["properties"]
    assert data["appointment_at"]["format"] == "date-time"
    assert data["in_network"] == {"default": True, "title": "In Network", "type": "boolean"}

    created = _resolve(committed, _variant(committed, "referral.created")["properties"]["data"])
    assert set(_resolve(committed, created["properties"]["priority"])["enum"]) == {
        "routine",
        "urgent",
        "stat",
    }
    outreach = _resolve(committed, _variant(committed, "patient.outreach")["properties"]["data"])
    assert set(_resolve(committed, outreach["properties"]["channel"])["enum"]) == {
        "sms",
        "email",
        "phone",
        "portal",
        "letter",
    }
    feedback = _resolve(committed, _variant(committed, "patient.feedback")["properties"]["data"])
    score = feedback["properties"]["score"]
    assert (score["type"], score["minimum"], score["maximum"]) == ("integer", 1, 5)


# -- consistent with parse_event ----------------------------------------------------------


def _sample(committed: dict[str, Any], event_type: str) -> dict[str, Any]:
    """A document holding exactly the fields the schema requires for this type."""
    variant = _variant(committed, event_type)
    doc: dict[str, Any] = {
        "event_id": "e-1",
        "referral_id": "R-1",
        "org_id": "northwind",
        "type": event_type,
        "occurred_at": "2025-03-04T15:20:00-05:00",
        "source": "ehr",
    }
    if "data" in variant["required"]:
        data_schema = _resolve(committed, variant["properties"]["data"])
        doc["data"] = {name: SAMPLE_DATA[name] for name in data_schema["required"]}
    return {k: doc[k] for k in variant["required"]}


@pytest.mark.parametrize("event_type", sorted(REQUIRED_DATA))
def test_schema_required_fields_agree_with_parse_event(
    committed: dict[str, Any], event_type: str
) -> None:
    sample = _sample(committed, event_type)
    assert parse_event(json.dumps(sample), RECEIVED).type == event_type
    for name in _variant(committed, event_type)["required"]:
        if name == "data":
            continue
        partial = {k: v for k, v in sample.items() if k != name}
        with pytest.raises(EventRejected) as info:
            parse_event(json.dumps(partial), RECEIVED)
        assert info.value.code is ErrorCode.MISSING_FIELD
    for name in sample.get("data", {}):
        partial = {**sample, "data": {k: v for k, v in sample["data"].items() if k != name}}
        with pytest.raises(EventRejected) as info:
            parse_event(json.dumps(partial), RECEIVED)
        assert info.value.code is ErrorCode.MISSING_DATA_FIELD
