-- 002: raw GPU samples (short retention), billed cost lines, cloud prices.

CREATE TABLE gpu_samples (
    ts               timestamptz NOT NULL,       -- end of the sampled interval
    resource         text        NOT NULL,       -- host or cloud instance id
    gpu_uuid         text        NOT NULL,
    gpu_index        integer     NOT NULL,
    gpu_model        text        NOT NULL,
    gpu_class        text        NOT NULL,
    environment      text        NOT NULL,
    interval_ms      integer     NOT NULL,
    utilization_pct  real        NOT NULL,
    memory_used_mib  integer     NOT NULL,
    memory_total_mib integer     NOT NULL,
    power_mw         bigint,                     -- NULL: not measured
    workloads        text[]      NOT NULL DEFAULT '{}',  -- empty: idle
    PRIMARY KEY (ts, resource, gpu_uuid)
) /*PARTITION_BY(ts)*/;

CREATE TABLE cost_lines (
    charge_period_start timestamptz NOT NULL,
    event_id            text        NOT NULL,
    charge_period_end   timestamptz NOT NULL,
    provider            text        NOT NULL,
    billing_account     text        NOT NULL DEFAULT '',
    resource_id         text        NOT NULL DEFAULT '',
    service             text        NOT NULL DEFAULT '',
    sku                 text        NOT NULL DEFAULT '',
    source              text        NOT NULL,
    billed_cost_usd     numeric(20, 6) NOT NULL,
    effective_cost_usd  numeric(20, 6) NOT NULL,
    tags                jsonb       NOT NULL DEFAULT '{}',
    PRIMARY KEY (charge_period_start, event_id)
) /*PARTITION_BY(charge_period_start)*/;
CREATE INDEX cost_lines_resource_time ON cost_lines (resource_id, charge_period_start);

CREATE TABLE prices (
    provider        text        NOT NULL,
    region          text        NOT NULL,
    instance_type   text        NOT NULL,
    purchase_option text        NOT NULL,
    effective_at    timestamptz NOT NULL,
    usd_per_hour    numeric(20, 6) NOT NULL,
    source          text        NOT NULL,
    event_id        text        NOT NULL,
    PRIMARY KEY (provider, region, instance_type, purchase_option, effective_at)
);
