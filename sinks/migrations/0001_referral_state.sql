-- One row per (referral, version): the status snapshots of referrals.status.v1.
-- ReplacingMergeTree keeps the highest version per referral, so a retried insert, a
-- replay or a redelivered snapshot never double-counts. No partitioning: a referral's
-- rows must stay in one partition for FINAL to collapse them.
CREATE TABLE IF NOT EXISTS {db}.referral_state
(
    org_id            LowCardinality(String),
    referral_id       String,
    version           UInt64,
    status            LowCardinality(String),
    priority          LowCardinality(Nullable(String)),
    specialty         LowCardinality(Nullable(String)),
    patient_ref       Nullable(String),
    created_at        Nullable(DateTime64(6, 'UTC')),
    routed_at         Nullable(DateTime64(6, 'UTC')),
    contacted_at      Nullable(DateTime64(6, 'UTC')),
    scheduled_at      Nullable(DateTime64(6, 'UTC')),
    seen_at           Nullable(DateTime64(6, 'UTC')),
    closed_at         Nullable(DateTime64(6, 'UTC')),
    first_outreach_at Nullable(DateTime64(6, 'UTC')),
    outreach_attempts UInt32,
    no_shows          UInt32,
    completions       UInt32,
    appointment_at    Nullable(DateTime64(6, 'UTC')),
    in_network        Nullable(Bool),
    leaked            Bool,
    feedback_score    Nullable(UInt8),
    flags             Array(LowCardinality(String)),
    updated_at        DateTime64(6, 'UTC'),
    evaluated_at      DateTime64(6, 'UTC'),
    inserted_at       DateTime64(6, 'UTC') DEFAULT now64(6)
)
ENGINE = ReplacingMergeTree(version)
ORDER BY (org_id, referral_id);

-- SPEC §7: one row per referral, its latest state.
CREATE OR REPLACE VIEW {db}.referral_status AS
SELECT
    org_id,
    referral_id,
    status,
    priority,
    specialty,
    created_at,
    routed_at,
    contacted_at,
    scheduled_at,
    seen_at,
    closed_at,
    first_outreach_at,
    appointment_at,
    outreach_attempts,
    no_shows,
    leaked,
    flags,
    updated_at,
    patient_ref,
    version
FROM {db}.referral_state FINAL;
