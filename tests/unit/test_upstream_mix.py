"""The simulator's raw traffic: every simulated event rendered in a raw format reads back,
through its adapter and the sources file the demo writes, as the very same event."""

from __future__ import annotations

import json
from datetime import UTC, datetime

from schemas.adapters.config import parse_sources
from schemas.events import parse_event
from streams.adapt import ADAPTERS, adapt_message
from streams.simulator import SimConfig, generate
from streams.upstream.mix import ENCODERS, render, sources_yaml

NOW = datetime(2025, 6, 1, tzinfo=UTC)
KEY = b"unit-test-pseudonym-key"


def test_every_rendered_event_reads_back_as_itself() -> None:
    config = SimConfig(seed=4, referrals=300, invalid_rate=0.0)
    sources = parse_sources(sources_yaml(config.orgs))
    docs = [json.loads(m.value) for m in generate(config, now=NOW)]
    used: dict[str, int] = {}
    for doc in docs:
        rendered = render(doc)
        if rendered is None:
            assert doc["type"] == "patient.feedback"
            continue
        name, kind, raw = rendered
        used[name] = used.get(name, 0) + 1
        assert render(doc) == rendered  # a duplicate renders the same bytes
        [got] = adapt_message(ADAPTERS[kind], raw, NOW, sources, KEY).tracked
        want = parse_event(json.dumps(doc).encode(), NOW)
        assert (got.org_id, got.referral_id, got.type) == (want.org_id, want.referral_id, want.type)
        assert got.occurred_at == int(want.occurred_at.timestamp() * 1_000_000)
        data = want.data.model_dump(exclude_none=True)
        for field, value in data.items():
            if isinstance(value, datetime):
                value = int(value.timestamp() * 1_000_000)
            assert got.data.get(field) == getattr(value, "value", value), (name, field)
    assert set(used) == set(ENCODERS), used
