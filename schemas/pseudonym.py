"""Patient pseudonyms (SPEC §9): a keyed hash replaces `patient_id` at ingest.

HMAC-SHA256 over org and patient id, so the same MRN at two health systems gives two
pseudonyms, and nobody without the key can test a guessed MRN against the hash.
Rotating the key changes every pseudonym (see docs/events.md, Pseudonyms).
"""

from __future__ import annotations

import hashlib
import hmac


def pseudonymize(key: bytes, org_id: str, patient_id: str) -> str:
    """Return a stable, non-reversible reference for one patient within one org."""
    if not key:
        raise ValueError("the pseudonym key must not be empty")
    message = f"{org_id}\x1f{patient_id}".encode()
    return "p_" + hmac.new(key, message, hashlib.sha256).hexdigest()[:32]
