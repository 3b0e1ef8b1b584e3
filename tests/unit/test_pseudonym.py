"""SPEC §9: patient ids become a keyed hash at ingest."""

from __future__ import annotations

import hashlib
import hmac

import pytest

from schemas.pseudonym import pseudonymize

KEY = b"k" * 32
MRN = "MRN-884412"


def test_deterministic() -> None:
    assert pseudonymize(KEY, "northwind", MRN) == pseudonymize(KEY, "northwind", MRN)


def test_differs_by_key() -> None:
    assert pseudonymize(KEY, "northwind", MRN) != pseudonymize(b"other-key", "northwind", MRN)


def test_differs_by_org() -> None:
    assert pseudonymize(KEY, "northwind", MRN) != pseudonymize(KEY, "southwind", MRN)


def test_differs_by_patient() -> None:
    assert pseudonymize(KEY, "northwind", MRN) != pseudonymize(KEY, "northwind", "MRN-884413")


def test_org_and_patient_boundary_is_unambiguous() -> None:
    assert pseudonymize(KEY, "north", "wind1") != pseudonymize(KEY, "northw", "ind1")


def test_no_raw_id_in_output() -> None:
    ref = pseudonymize(KEY, "northwind", MRN)
    assert MRN not in ref
    assert "884412" not in ref
    assert "northwind" not in ref


def test_format_is_a_keyed_hash() -> None:
    ref = pseudonymize(KEY, "northwind", MRN)
    assert ref.startswith("p_")
    assert len(ref) == 34
    int(ref[2:], 16)
    expected = hmac.new(KEY, b"northwind\x1fMRN-884412", hashlib.sha256).hexdigest()[:32]
    assert ref == "p_" + expected
    assert ref[2:] != hashlib.sha256(MRN.encode()).hexdigest()[:32]  # not an unkeyed hash


def test_empty_key_rejected() -> None:
    with pytest.raises(ValueError, match="key"):
        pseudonymize(b"", "northwind", MRN)
