-- Analytics: every distinct event, stage durations, and the SPEC §7 KPI views.

-- One row per distinct event (pseudonymized), from referrals.tracked.v1. Redelivered
-- events collapse on (org_id, referral_id, event_id).
CREATE TABLE IF NOT EXISTS {db}.events
(
    org_id      LowCardinality(String),
    referral_id String,
    event_id    String,
    type        LowCardinality(String),
    source      LowCardinality(String),
    occurred_at DateTime64(6, 'UTC'),
    patient_ref Nullable(String),
    data        String,
    inserted_at DateTime64(6, 'UTC') DEFAULT now64(6)
)
ENGINE = ReplacingMergeTree
ORDER BY (org_id, referral_id, event_id);

-- One row per finished stage of a referral (SPEC §4), from the status snapshots. A late
-- event that moves or adds a milestone raises the referral's version: the stage rows
-- follow. Stages never disappear (milestones are only ever added or moved earlier).
CREATE TABLE IF NOT EXISTS {db}.stage_durations
(
    org_id      LowCardinality(String),
    referral_id String,
    stage       LowCardinality(String),
    version     UInt64,
    priority    LowCardinality(Nullable(String)),
    specialty   LowCardinality(Nullable(String)),
    entered_at  DateTime64(6, 'UTC'),
    left_at     DateTime64(6, 'UTC'),
    duration_us UInt64,
    inserted_at DateTime64(6, 'UTC') DEFAULT now64(6)
)
ENGINE = ReplacingMergeTree(version)
ORDER BY (org_id, referral_id, stage);

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
    completions,
    leaked,
    in_network,
    feedback_score,
    flags,
    updated_at,
    evaluated_at,
    patient_ref,
    version
FROM {db}.referral_state FINAL;

-- Per referral in the KPI cohort (has a `created` milestone): the facts the KPI views
-- aggregate. Not part of the BI contract; the kpi_* views are.
CREATE OR REPLACE VIEW {db}.referral_facts AS
SELECT
    org_id,
    referral_id,
    specialty,
    toDate(created_at) AS day,
    seen_at IS NOT NULL AS is_completed,
    closed_at IS NOT NULL AS is_closed,
    leaked AS is_leaked,
    outreach_attempts > 0 AS is_outreached,
    outreach_attempts > 0 AND contacted_at IS NOT NULL AS is_responded,
    no_shows AS no_show_events,
    completions AS completion_events,
    if(scheduled_at IS NULL, NULL,
       greatest(0, toUnixTimestamp64Micro(scheduled_at) - toUnixTimestamp64Micro(created_at))
       / 3600000000) AS hours_to_schedule,
    if(seen_at IS NULL, NULL,
       greatest(0, toUnixTimestamp64Micro(seen_at) - toUnixTimestamp64Micro(created_at))
       / 3600000000) AS hours_to_appointment,
    feedback_score,
    status IN ('created', 'routed', 'contacted', 'scheduled', 'seen') AS is_open,
    is_open AND length(flags) > 0 AS is_at_risk
FROM {db}.referral_state FINAL
WHERE created_at IS NOT NULL;

-- SPEC §7: one row per org_id.
CREATE OR REPLACE VIEW {db}.kpi_summary AS
SELECT
    org_id,
    count() AS referrals,
    countIf(is_completed) AS completed,
    if(referrals = 0, 0, completed / referrals) AS completion_rate,
    countIf(is_closed) AS closed_loop,
    if(referrals = 0, 0, closed_loop / referrals) AS closed_loop_rate,
    countIf(is_leaked) AS leaked,
    if(referrals = 0, 0, leaked / referrals) AS leakage_rate,
    countIf(is_outreached) AS outreached,
    countIf(is_responded) AS responded,
    if(outreached = 0, 0, responded / outreached) AS engagement_rate,
    sum(no_show_events) AS no_shows,
    if(no_shows + sum(completion_events) = 0, 0,
       no_shows / (no_shows + sum(completion_events))) AS no_show_rate,
    quantileExact(0.5)(hours_to_schedule) AS median_hours_to_schedule,
    quantileExact(0.9)(hours_to_schedule) AS p90_hours_to_schedule,
    quantileExact(0.5)(hours_to_appointment) AS median_hours_to_appointment,
    quantileExact(0.9)(hours_to_appointment) AS p90_hours_to_appointment,
    avg(feedback_score) AS avg_satisfaction,
    countIf(is_open) AS open,
    countIf(is_at_risk) AS at_risk
FROM {db}.referral_facts
GROUP BY org_id;

-- SPEC §7: kpi_summary's columns per (org_id, specialty, day of `created`, UTC).
CREATE OR REPLACE VIEW {db}.kpi_daily AS
SELECT
    org_id,
    specialty,
    day,
    count() AS referrals,
    countIf(is_completed) AS completed,
    if(referrals = 0, 0, completed / referrals) AS completion_rate,
    countIf(is_closed) AS closed_loop,
    if(referrals = 0, 0, closed_loop / referrals) AS closed_loop_rate,
    countIf(is_leaked) AS leaked,
    if(referrals = 0, 0, leaked / referrals) AS leakage_rate,
    countIf(is_outreached) AS outreached,
    countIf(is_responded) AS responded,
    if(outreached = 0, 0, responded / outreached) AS engagement_rate,
    sum(no_show_events) AS no_shows,
    if(no_shows + sum(completion_events) = 0, 0,
       no_shows / (no_shows + sum(completion_events))) AS no_show_rate,
    quantileExact(0.5)(hours_to_schedule) AS median_hours_to_schedule,
    quantileExact(0.9)(hours_to_schedule) AS p90_hours_to_schedule,
    quantileExact(0.5)(hours_to_appointment) AS median_hours_to_appointment,
    quantileExact(0.9)(hours_to_appointment) AS p90_hours_to_appointment,
    avg(feedback_score) AS avg_satisfaction,
    countIf(is_open) AS open,
    countIf(is_at_risk) AS at_risk
FROM {db}.referral_facts
GROUP BY org_id, specialty, day;

-- SPEC §7: time spent per stage, over the referrals that finished the stage.
CREATE OR REPLACE VIEW {db}.stage_stats AS
SELECT
    org_id,
    specialty,
    stage,
    count() AS referrals,
    quantileExact(0.5)(hours) AS median_hours,
    quantileExact(0.9)(hours) AS p90_hours,
    avg(hours) AS avg_hours
FROM
(
    SELECT org_id, specialty, stage, duration_us / 3600000000 AS hours
    FROM {db}.stage_durations FINAL
)
GROUP BY org_id, specialty, stage;
