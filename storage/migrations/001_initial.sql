-- 001: cost windows (time series), decisions, alert outbox and log, dead letters.
-- Natural keys everywhere: replaying an event upserts the same row, never adds money.

CREATE TABLE cost_windows (
    window_start        timestamptz NOT NULL,
    window_end          timestamptz NOT NULL,
    resource            text        NOT NULL,  -- host or cloud instance id
    workload            text        NOT NULL,
    environment         text        NOT NULL CHECK (environment IN ('onprem', 'cloud')),
    gpu_class           text        NOT NULL,
    basis               text        NOT NULL CHECK (basis IN ('estimated', 'billed')),
    team                text        NOT NULL DEFAULT '',
    provider            text        NOT NULL DEFAULT '',
    instance_type       text        NOT NULL DEFAULT '',
    purchase_option     text        NOT NULL DEFAULT '',
    -- usage is stored exactly, as integers; hours = ms / 3600000 (in the query layer, after summing)
    allocated_gpu_ms    bigint      NOT NULL,
    busy_gpu_ms         bigint      NOT NULL,
    energy_mj           bigint      NOT NULL,  -- measured energy, millijoules
    sample_count        integer     NOT NULL,
    cost_usd            numeric(20, 6) NOT NULL,
    event_id            text        NOT NULL,
    updated_at          timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (window_start, resource, workload, environment, gpu_class, basis)
) /*PARTITION_BY(window_start)*/;  -- a hypertable on TimescaleDB, monthly partitions on PostgreSQL
CREATE INDEX cost_windows_workload_time ON cost_windows (workload, window_start DESC);

CREATE TABLE decisions (
    decision_id          text PRIMARY KEY,
    decided_at           timestamptz NOT NULL,  -- end of the window that completed the dwell
    window_start         timestamptz NOT NULL,
    workload             text        NOT NULL,
    team                 text        NOT NULL DEFAULT '',
    from_env             text        NOT NULL,
    to_env               text        NOT NULL,
    kind                 text        NOT NULL,
    gpu_class            text        NOT NULL,
    current_usd_per_busy_gpu_hour     numeric(20, 6),
    alternative_usd_per_busy_gpu_hour numeric(20, 6),
    utilization          numeric(10, 6) NOT NULL,
    monthly_savings_usd  numeric(20, 6) NOT NULL,
    confidence           numeric(10, 6) NOT NULL,
    alternative_label    text        NOT NULL,
    gpus_needed          integer     NOT NULL,
    reason               text        NOT NULL,
    basis                text        NOT NULL
);
CREATE INDEX decisions_workload_time ON decisions (workload, decided_at DESC);

CREATE TABLE alert_outbox (
    alert_id        text PRIMARY KEY,           -- decision id + route: the dedupe key
    route           text        NOT NULL,
    decision_id     text        NOT NULL,
    payload         jsonb       NOT NULL,       -- the Slack message (Block Kit)
    created_at      timestamptz NOT NULL DEFAULT now(),
    attempts        integer     NOT NULL DEFAULT 0,
    next_attempt_at timestamptz NOT NULL DEFAULT now(),
    delivered_at    timestamptz,
    last_error      text
);
CREATE INDEX alert_outbox_pending ON alert_outbox (next_attempt_at) WHERE delivered_at IS NULL;

CREATE TABLE alert_log (
    id          bigserial PRIMARY KEY,
    alert_id    text        NOT NULL,
    attempt_at  timestamptz NOT NULL DEFAULT now(),
    status      text        NOT NULL,           -- delivered | retry | console
    detail      text        NOT NULL DEFAULT ''
);

CREATE TABLE dead_letters (
    event_id     text PRIMARY KEY,              -- source topic|partition|offset
    received_at  timestamptz NOT NULL,
    source_topic text        NOT NULL,
    reason       text        NOT NULL,
    payload      text        NOT NULL
);
