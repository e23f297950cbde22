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

-- Billed lines.  A newer export_version of the same (source, billing_account, billing period)
-- replaces the older lines: a restated period never adds to itself.  Bills carry sub-micro-dollar
-- line amounts (FOCUS files have 10-11 decimals), kept exactly.
CREATE TABLE cost_lines (
    charge_period_start  timestamptz NOT NULL,
    event_id             text        NOT NULL,
    charge_period_end    timestamptz NOT NULL,
    provider             text        NOT NULL,           -- aws, gcp, azure, oracle, ...
    provider_name        text        NOT NULL DEFAULT '', -- as the bill names it
    billing_account      text        NOT NULL DEFAULT '',
    billing_period_start timestamptz NOT NULL,
    resource_id          text        NOT NULL DEFAULT '',
    charge_category      text        NOT NULL DEFAULT '',
    service              text        NOT NULL DEFAULT '',
    sku                  text        NOT NULL DEFAULT '',
    region               text        NOT NULL DEFAULT '',
    instance_type        text        NOT NULL DEFAULT '',  -- GPU instance type, from the catalog
    gpu_class            text        NOT NULL DEFAULT '',
    gpus                 integer     NOT NULL DEFAULT 0,
    source               text        NOT NULL,           -- focus-file, aws-cur, aws-ce, gcp-export, ...
    export_version       text        NOT NULL,
    billed_cost_usd      numeric(30, 12) NOT NULL,
    effective_cost_usd   numeric(30, 12) NOT NULL,
    tags                 jsonb       NOT NULL DEFAULT '{}',
    extra                jsonb       NOT NULL DEFAULT '{}', -- x_ columns
    PRIMARY KEY (charge_period_start, event_id)
) /*PARTITION_BY(charge_period_start)*/;
CREATE INDEX cost_lines_resource_time ON cost_lines (resource_id, charge_period_start);
CREATE INDEX cost_lines_period ON cost_lines (source, billing_account, billing_period_start, export_version);

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
