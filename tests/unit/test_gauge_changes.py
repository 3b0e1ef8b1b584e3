"""streams/tracker.GaugeChanges: a batch's metric changes, applied once per label set."""

from __future__ import annotations

from streams.metrics import Metrics
from streams.tracker import GaugeChanges


def test_a_batch_moves_each_gauge_by_its_net_change() -> None:
    m = Metrics()
    m.referrals_open.labels("created").inc(5)
    m.alerts_firing.labels("acme", "loop_not_closed").inc(2)
    changes = GaugeChanges()
    for status, n in (("created", -1), ("created", -1), ("scheduled", +1), ("seen", 0)):
        changes.open_by_status[status] += n
    changes.firing[("acme", "loop_not_closed")] -= 1
    changes.resolved[("acme", "loop_not_closed")] += 1
    for _ in range(2):  # raised and resolved within the batch: none firing, both counted
        changes.raised[("acme", "not_scheduled")] += 1
        changes.resolved[("acme", "not_scheduled")] += 1
    changes.publish(m)

    def sample(name: str, **labels: str) -> float | None:
        return m.registry.get_sample_value(name, labels)

    assert sample("reftrack_referrals_open", status="created") == 3
    assert sample("reftrack_referrals_open", status="scheduled") == 1
    assert sample("reftrack_referrals_open", status="seen") is None  # no net change
    firing = {"org_id": "acme", "rule": "loop_not_closed"}
    assert sample("reftrack_alerts_firing", **firing) == 1
    assert sample("reftrack_alerts_resolved_total", **firing) == 1
    pair = {"org_id": "acme", "rule": "not_scheduled"}
    assert sample("reftrack_alerts_firing", **pair) is None
    assert sample("reftrack_alerts_raised_total", **pair) == 2
    assert sample("reftrack_alerts_resolved_total", **pair) == 2
