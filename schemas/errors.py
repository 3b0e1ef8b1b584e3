"""Machine-readable reasons a message is rejected (the DLQ's `error_code`).

One enum, one table in docs/events.md (Dead-letter queue): upstream teams key their
alerting and fixes on these codes, so a code's meaning never changes once released.
"""

from __future__ import annotations

from enum import StrEnum


class ErrorCode(StrEnum):
    """Why a message went to the dead-letter queue."""

    TOO_LARGE = "too_large"
    """The message is over the 64 KiB limit."""
    INVALID_ENCODING = "invalid_encoding"
    """The bytes are not valid UTF-8."""
    INVALID_JSON = "invalid_json"
    """The text is not JSON."""
    NOT_AN_OBJECT = "not_an_object"
    """The JSON is not an object."""
    MISSING_FIELD = "missing_field"
    """A required top-level field is absent or null."""
    INVALID_FIELD = "invalid_field"
    """A top-level field has the wrong type, length or format."""
    UNKNOWN_TYPE = "unknown_type"
    """`type` is not one of the canonical event types."""
    UNKNOWN_SOURCE = "unknown_source"
    """`source` is not one of the canonical sources."""
    NAIVE_TIMESTAMP = "naive_timestamp"
    """A timestamp has no UTC offset."""
    FUTURE_TIMESTAMP = "future_timestamp"
    """`occurred_at` is more than 24 h after ingestion (clock skew)."""
    TIMESTAMP_OUT_OF_RANGE = "timestamp_out_of_range"
    """A timestamp is before 1900 or after 2262, outside what is stored."""
    MISSING_DATA_FIELD = "missing_data_field"
    """A field the event type requires in `data` is absent."""
    INVALID_DATA_FIELD = "invalid_data_field"
    """A field in `data` has the wrong type or value."""
    UNSUPPORTED_MESSAGE = "unsupported_message"
    """A source message or resource type no adapter maps (docs/integrations.md)."""
    INVALID_FHIR = "invalid_fhir"
    """The JSON is not a FHIR R4 resource the adapter can read (shape or type wrong)."""
    INVALID_HL7 = "invalid_hl7"
    """The text is not an HL7 v2 message the adapter can read (no MSH, bad segments)."""
    UNMAPPED_CODE = "unmapped_code"
    """A status or code in the source message has no mapping to a canonical event."""
    UNKNOWN_ORG = "unknown_org"
    """No org could be told from the message, its sender or its identifier systems."""
    MISSING_REFERRAL_ID = "missing_referral_id"
    """The source message names no referral in any identifier system configured for the org."""
    UNRESOLVED_REFERRAL = "unresolved_referral"
    """Events named only by an alias id that no message ever linked to a referral id."""
    INTERNAL_ERROR = "internal_error"
    """The pipeline failed on this message; a bug to report, the message is kept."""


class EventRejected(ValueError):
    """A message that cannot become a canonical event; carries the DLQ code."""

    def __init__(self, code: ErrorCode, message: str, field: str | None = None) -> None:
        super().__init__(f"{code.value}: {message}")
        self.code = code
        self.detail = message
        self.field = field
