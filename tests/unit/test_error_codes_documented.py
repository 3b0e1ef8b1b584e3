"""Upstream teams key their fixes on DLQ codes: every code has a row in docs/events.md."""

from __future__ import annotations

from pathlib import Path

from schemas.errors import ErrorCode

DOC = Path(__file__).resolve().parents[2] / "docs" / "events.md"


def test_every_error_code_has_a_row() -> None:
    rows = {
        line.split("|")[1].strip().strip("`")
        for line in DOC.read_text().splitlines()
        if line.startswith("| `")
    }
    missing = [code.value for code in ErrorCode if code.value not in rows]
    assert not missing, f"docs/events.md has no row for {missing}"
