"""sinks.rows.column_json writes exactly the standard library's text, fast path or not."""

from __future__ import annotations

import json
from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from sinks.rows import column_json

SCALARS = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**64)
    | st.text()
    | st.text(alphabet=st.characters(max_codepoint=0x7F))
    | st.floats(allow_nan=True, allow_infinity=True)
)
VALUES = st.recursive(
    SCALARS,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4),
    max_leaves=12,
)


def stdlib(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"), sort_keys=True)


@given(st.dictionaries(st.text(), VALUES, max_size=6))
def test_same_text_as_the_standard_library(value: dict[str, Any]) -> None:
    assert column_json(value) == stdlib(value)


def test_typical_columns_and_the_edges_of_the_fast_path() -> None:
    for value in (
        {"priority": "routine", "specialty": "cardiology", "in_network": True, "score": 5},
        {"appointment_at": 1741100400000000, "appointment_id": "A-55"},
        {"reason": "Équipe B"},  # non-ASCII: escaped
        {"reason": "a\x7fb"},  # DEL: escaped by the standard library only
        {"reason": "line\nbreak\ttab\x01"},
        {"ratio": 1e-07, "nan": float("nan"), "big": 2**70},
        {"b": 1, "a": {"d": [1, "x"], "c": None}},
        {},
    ):
        assert column_json(value) == stdlib(value)
