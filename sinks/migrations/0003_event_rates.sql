-- Event rates: 1-minute tumbling windows by event time per (org_id, type), counted in
-- the workers' window table (schemas/windows.py) and sunk as they change. One row per
-- window segment per tracked partition; the highest version (offset) of a segment wins,
-- and the view adds segments and partitions up.
CREATE TABLE IF NOT EXISTS {db}.event_rates
(
    org_id       LowCardinality(String),
    type         LowCardinality(String),
    window_start DateTime('UTC'),
    partition    UInt32,
    segment      UInt64,
    events       UInt64,
    version      UInt64,
    inserted_at  DateTime64(6, 'UTC') DEFAULT now64(6)
)
ENGINE = ReplacingMergeTree(version)
PARTITION BY toYYYYMM(window_start)
ORDER BY (org_id, type, window_start, partition, segment);

-- SPEC §7: (window_start, org_id, type, events).
CREATE OR REPLACE VIEW {db}.event_rates_1m AS
SELECT window_start, org_id, type, sum(events) AS events
FROM {db}.event_rates FINAL
GROUP BY window_start, org_id, type;
