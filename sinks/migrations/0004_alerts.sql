-- Alert lifecycle (SPEC §5): one row per (alert, version). An alert is raised when a
-- flag turns on for a referral and resolved when it turns off or the referral reaches a
-- terminal status. Rows arrive from referrals.alerts.v1 once alerting is switched on
-- (issue 4); the table is part of the schema now so that the KPI, alert and dashboard
-- work share one migration history.
CREATE TABLE IF NOT EXISTS {db}.alerts
(
    alert_id    String,
    org_id      LowCardinality(String),
    referral_id String,
    rule        LowCardinality(String),
    severity    LowCardinality(String),
    state       LowCardinality(String),
    raised_at   DateTime64(6, 'UTC'),
    resolved_at Nullable(DateTime64(6, 'UTC')),
    details     String,
    version     UInt64,
    inserted_at DateTime64(6, 'UTC') DEFAULT now64(6)
)
ENGINE = ReplacingMergeTree(version)
PARTITION BY toYYYYMM(raised_at)
ORDER BY (org_id, referral_id, rule, alert_id);
