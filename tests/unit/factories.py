"""Shared builders for the unit tests' events."""

from __future__ import annotations

from typing import Any


def default_data(kind: str, *, scheduled_at: int, rescheduled_at: int) -> dict[str, Any]:
    """A fresh copy of the minimal valid `data` for an event of type `kind` (empty if the
    type needs none); the appointment times are the caller's, since tests pick their own."""
    defaults: dict[str, dict[str, Any]] = {
        "referral.created": {"priority": "routine", "specialty": "cardiology", "in_network": True},
        "referral.routed": {"in_network": True},
        "patient.outreach": {"channel": "sms"},
        "appointment.scheduled": {
            "appointment_id": "A-1",
            "appointment_at": scheduled_at,
            "in_network": True,
        },
        "appointment.rescheduled": {
            "appointment_id": "A-1",
            "appointment_at": rescheduled_at,
            "in_network": True,
        },
        "appointment.cancelled": {"appointment_id": "A-1"},
        "appointment.no_show": {"appointment_id": "A-1"},
        "appointment.completed": {"appointment_id": "A-1", "in_network": True},
        "patient.feedback": {"score": 4},
    }
    return defaults.get(kind, {})
