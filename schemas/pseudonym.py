"""Patient pseudonyms (SPEC §9): a keyed hash replaces `patient_id` at ingest.

HMAC-SHA256 over org and patient id, so the same MRN at two health systems gives two
pseudonyms, and nobody without the key can test a guessed MRN against the hash.
Rotating the key changes every pseudonym (see docs/events.md, Pseudonyms).
"""

from __future__ import annotations

import hashlib
import hmac
from functools import lru_cache


def pseudonymize(key: bytes, org_id: str, patient_id: str) -> str:
    """Return a stable, non-reversible reference for one patient within one org."""
    if not key:
        raise ValueError("the pseudonym key must not be empty")
    mac = _keyed(key).copy()
    mac.update(f"{org_id}\x1f{patient_id}".encode())
    return "p_" + mac.hexdigest()[:32]


@lru_cache(maxsize=8)
def _keyed(key: bytes) -> hmac.HMAC:
    """The HMAC with the key already absorbed: copying it skips the key setup that
    `hmac.new` repeats for every message (half the cost of a pseudonym)."""
    return hmac.new(key, digestmod=hashlib.sha256)
