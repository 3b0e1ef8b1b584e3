"""Prometheus metrics of one worker (SPEC §8), in a registry of its own.

Label sets are bounded: topic, type, source, error code, table. Never a referral or
patient id.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from schemas.errors import ErrorCode

_LAG_BUCKETS = (0.1, 0.5, 1, 5, 30, 60, 300, 900, 3600, 6 * 3600, 86400, 7 * 86400)


class Metrics:
    def __init__(self) -> None:
        r = self.registry = CollectorRegistry()
        self.messages_in = Counter(
            "reftrack_messages_in", "Messages consumed by ingest", ["topic"], registry=r
        )
        self.events_processed = Counter(
            "reftrack_events_processed",
            "Distinct events applied to referral state",
            ["type", "source"],
            registry=r,
        )
        self.events_duplicate = Counter(
            "reftrack_events_duplicate", "Events dropped as duplicates", ["type"], registry=r
        )
        self.dlq = Counter(
            "reftrack_dlq_messages", "Messages sent to the DLQ", ["error_code"], registry=r
        )
        for code in ErrorCode:  # every series from 0, so rate() sees a first burst too
            self.dlq.labels(code.value)
        self.adapter_messages = Counter(
            "reftrack_adapter_messages",
            "Raw source messages read by the adapters, by outcome (adapted, ignored, rejected)",
            ["format", "outcome"],
            registry=r,
        )
        self.adapter_events = Counter(
            "reftrack_adapter_events",
            "Canonical events the adapters derived from raw messages",
            ["format"],
            registry=r,
        )
        self.adapter_parked = Counter(
            "reftrack_adapter_parked_events",
            "Events named only by an alias id, parked until the alias is linked",
            registry=r,
        )
        self.adapter_released = Counter(
            "reftrack_adapter_released_events",
            "Parked events released once their alias was linked to a referral",
            registry=r,
        )
        self.alias_conflicts = Counter(
            "reftrack_alias_conflicts",
            "Alias ids linked to a second, different referral id (the first link is kept)",
            registry=r,
        )
        self.status_out = Counter(
            "reftrack_status_snapshots_out", "Status snapshots published", registry=r
        )
        self.event_time_lag = Histogram(
            "reftrack_event_time_lag_seconds",
            "Ingestion time minus occurred_at",
            buckets=_LAG_BUCKETS,
            registry=r,
        )
        self.windows_open = Gauge(
            "reftrack_windows_open", "Event-rate window cells kept open (within grace)", registry=r
        )
        self.windows_reopened = Counter(
            "reftrack_windows_reopened",
            "Events later than the window grace period (counted in a new segment)",
            registry=r,
        )
        self.sink_rows = Counter(
            "reftrack_sink_rows", "Rows written to ClickHouse", ["table"], registry=r
        )
        self.sink_flushes = Counter(
            "reftrack_sink_flushes", "Successful sink flushes", ["table"], registry=r
        )
        self.sink_failures = Counter(
            "reftrack_sink_failures", "Failed sink flush attempts", ["table"], registry=r
        )
        self.sink_batch_rows = Histogram(
            "reftrack_sink_batch_rows",
            "Rows per sink flush",
            ["table"],
            buckets=(1, 10, 100, 500, 1000, 5000, 10000, 50000),
            registry=r,
        )
        self.sink_flush_seconds = Histogram(
            "reftrack_sink_flush_seconds", "Sink flush latency", ["table"], registry=r
        )
        self.sink_rows_pending = Gauge(
            "reftrack_sink_rows_pending",
            "Rows buffered, not yet in ClickHouse",
            ["sink"],
            registry=r,
        )
        self.sink_last_flush = Gauge(
            "reftrack_sink_last_flush_timestamp_seconds",
            "Unix time of the sink's last flush (0: none yet)",
            ["sink"],
            registry=r,
        )

        self.last_event_processed = Gauge(
            "reftrack_last_event_processed_timestamp_seconds",
            "Unix time at which the last new event was applied to referral state",
            registry=r,
        )
        self.consumer_lag = Gauge(
            "reftrack_consumer_lag_messages",
            "Messages not yet read, summed over this worker's partitions of a topic",
            ["topic"],
            registry=r,
        )
        self.stalled_partitions = Gauge(
            "reftrack_stalled_partitions",
            "Partitions with messages waiting whose read position has not moved for the "
            "stall time (streams/stall.py), by consumer: ingest, tracker or sink:<name>",
            ["consumer"],
            registry=r,
        )
        self.referrals_open = Gauge(
            "reftrack_referrals_open",
            "Open referrals in this worker's partitions, by status",
            ["status"],
            registry=r,
        )
        self.alerts_firing = Gauge(
            "reftrack_alerts_firing",
            "SLA alerts firing in this worker's partitions",
            ["org_id", "rule"],
            registry=r,
        )
        self.alerts_raised = Counter(
            "reftrack_alerts_raised", "SLA alerts raised", ["org_id", "rule"], registry=r
        )
        self.alerts_resolved = Counter(
            "reftrack_alerts_resolved", "SLA alerts resolved", ["org_id", "rule"], registry=r
        )
        self.deadlines_pending = Gauge(
            "reftrack_deadlines_pending",
            "Referrals in the deadline index (a flag can still turn on by time alone)",
            registry=r,
        )
        self.tracker_batch_events = Histogram(
            "reftrack_tracker_batch_events",
            "Tracked events per tracker batch",
            buckets=(1, 10, 50, 100, 250, 500, 1000, 2000, 4000, 8000),
            registry=r,
        )
        self.tracker_batch_seconds = Histogram(
            "reftrack_tracker_batch_seconds",
            "Time to process one tracker batch (state, alerts, snapshots, windows)",
            buckets=(0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5),
            registry=r,
        )
        self.tracker_reread = Counter(
            "reftrack_tracker_rereads",
            "Times a tracked partition was read again because the consumer had fetched past "
            "events that never reached the tracker (streams/tracker.py: retry_lost)",
            registry=r,
        )
        self.tracker_out_of_sequence = Counter(
            "reftrack_tracker_out_of_sequence_events",
            "Tracked events delivered out of offset order after a rebalance, held back and "
            "read again in order (streams/faust_compat.py)",
            registry=r,
        )
        self.alert_tick_seconds = Histogram(
            "reftrack_alert_tick_seconds",
            "Time to judge the referrals due at one clock tick",
            buckets=(0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1, 5),
            registry=r,
        )

    def render(self) -> bytes:
        return generate_latest(self.registry)

    @staticmethod
    def total(counter: Counter) -> int:
        """Sum of a counter over all its labels."""
        return int(
            sum(s.value for m in counter.collect() for s in m.samples if s.name.endswith("_total"))
        )
