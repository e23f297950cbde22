-- 003 (plain PostgreSQL): hourly and daily rollups of cost windows per workload and environment.
-- The sink refreshes the buckets a batch touched, in the batch's own transaction.

CREATE TABLE cost_hourly (
    bucket           timestamptz NOT NULL,
    workload         text        NOT NULL,
    environment      text        NOT NULL,
    gpu_class        text        NOT NULL,
    basis            text        NOT NULL,
    team             text        NOT NULL,
    allocated_gpu_ms bigint      NOT NULL,
    busy_gpu_ms      bigint      NOT NULL,
    energy_mj        bigint      NOT NULL,
    cost_usd         numeric(20, 6) NOT NULL,
    windows          bigint      NOT NULL,
    PRIMARY KEY (bucket, workload, environment, gpu_class, basis)
);
CREATE TABLE cost_daily (LIKE cost_hourly INCLUDING ALL);
