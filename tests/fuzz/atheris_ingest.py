"""Coverage-guided fuzzing of canonical ingest with atheris (libFuzzer), for `make fuzz`.

The same property as tests/unit/test_fuzz_canonical.py: every input becomes an event or
a DLQ record naming its code, without a raw patient id, and nothing else escapes. Seeds
are valid events; libFuzzer mutates bytes and keeps what reaches new code.

    python tests/fuzz/atheris_ingest.py -runs=200000 -max_len=70000
"""

from __future__ import annotations

import json
import sys

import atheris

with atheris.instrument_imports():
    from schemas.events import EventType
    from tests.unit.test_fuzz_canonical import VALID, account_for


def test_one(data: bytes) -> None:
    # Byte mutations can put the id under another key or into a field an error message
    # quotes: only the `patient_id` values are held to "never raw" here.
    account_for(data, messages_checked=False)


def seeds() -> list[bytes]:
    out = []
    for event_type in EventType:
        out.append(json.dumps({**VALID, "type": event_type.value}).encode())
    return out


if __name__ == "__main__":
    import os
    import tempfile

    corpus = tempfile.mkdtemp(prefix="reftrack-fuzz-")
    for i, seed in enumerate(seeds()):
        with open(os.path.join(corpus, f"seed-{i}"), "wb") as f:
            f.write(seed)
    atheris.Setup([*sys.argv, corpus], test_one)
    atheris.Fuzz()
