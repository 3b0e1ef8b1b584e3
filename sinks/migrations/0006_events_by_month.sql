-- `events` partitioned by month of event time, so queries over a period read only its
-- months and old months can be dropped or moved whole; and a `version` so that of
-- several copies of one event the table keeps the copy the referral state accepted (the
-- first one read from referrals.tracked.v1): version = 2^64 - 1 - offset. Rows from
-- before this migration get version 0, so any copy read again (a replay) replaces them.
--
-- A copy that disagrees on `occurred_at` lands in another month's partition, where
-- background merges cannot collapse it; queries use `FINAL`, which does.
CREATE TABLE {db}.events_by_month
(
    org_id      LowCardinality(String),
    referral_id String,
    event_id    String,
    type        LowCardinality(String),
    source      LowCardinality(String),
    occurred_at DateTime64(6, 'UTC'),
    patient_ref Nullable(String),
    data        String,
    version     UInt64,
    inserted_at DateTime64(6, 'UTC') DEFAULT now64(6)
)
ENGINE = ReplacingMergeTree(version)
PARTITION BY toYYYYMM(occurred_at)
ORDER BY (org_id, referral_id, event_id);

INSERT INTO {db}.events_by_month
    (org_id, referral_id, event_id, type, source, occurred_at, patient_ref, data, version,
     inserted_at)
SELECT org_id, referral_id, event_id, type, source, occurred_at, patient_ref, data, 0,
       inserted_at
FROM {db}.events FINAL;

EXCHANGE TABLES {db}.events AND {db}.events_by_month;
DROP TABLE {db}.events_by_month;
