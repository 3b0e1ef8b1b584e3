"""schemas.jsoncodec: the same JSON as the standard library, faster."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from schemas import jsoncodec

JSON_VALUES = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**63 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(),
    lambda children: (
        st.lists(children, max_size=5) | st.dictionaries(st.text(max_size=10), children, max_size=5)
    ),
    max_leaves=20,
)


@given(JSON_VALUES)
def test_what_is_written_reads_back_as_the_standard_library_reads_it(value: Any) -> None:
    raw = jsoncodec.dumps(value)
    assert isinstance(raw, bytes)
    assert jsoncodec.loads(raw) == value
    assert json.loads(raw) == value


def test_compact_utf8_like_the_records_written_before() -> None:
    doc = {"org_id": "café", "n": [1, 2.5, None, True], "nested": {"a": "ü"}}
    assert jsoncodec.dumps(doc) == json.dumps(
        doc, separators=(",", ":"), ensure_ascii=False
    ).encode("utf-8")


def test_an_integer_beyond_64_bits_falls_back_to_the_standard_library() -> None:
    raw = jsoncodec.dumps({"n": 2**70})
    assert json.loads(raw) == {"n": 2**70}


@pytest.mark.parametrize("raw", [b"", b"{", b"not json", b'{"a": NaN}'])
def test_not_json_is_a_value_error(raw: bytes) -> None:
    with pytest.raises(ValueError):
        jsoncodec.loads(raw)


def test_reads_str_bytearray_and_memoryview() -> None:
    for raw in ('{"a":1}', bytearray(b'{"a":1}'), memoryview(b'{"a":1}')):
        assert jsoncodec.loads(raw) == {"a": 1}
