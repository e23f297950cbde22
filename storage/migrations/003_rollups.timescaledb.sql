-- 003 (TimescaleDB): hourly and daily continuous aggregates of cost windows per workload and
-- environment, real-time (materialized_only = false): buckets after the refresh policy's end offset
-- are aggregated from the raw rows when read, and the sink refreshes a materialized bucket right
-- after it restates one (storage/timeseries.py), so they equal the raw rows.

CREATE MATERIALIZED VIEW cost_hourly
WITH (timescaledb.continuous, timescaledb.materialized_only = false) AS
SELECT time_bucket(INTERVAL '1 hour', window_start) AS bucket, workload, environment, gpu_class, basis,
       max(team) AS team, sum(allocated_gpu_ms)::bigint AS allocated_gpu_ms, sum(busy_gpu_ms)::bigint AS busy_gpu_ms,
       sum(energy_mj)::bigint AS energy_mj, sum(cost_usd) AS cost_usd, count(*) AS windows
  FROM cost_windows
 GROUP BY 1, 2, 3, 4, 5
WITH NO DATA;

CREATE MATERIALIZED VIEW cost_daily
WITH (timescaledb.continuous, timescaledb.materialized_only = false) AS
SELECT time_bucket(INTERVAL '1 day', window_start) AS bucket, workload, environment, gpu_class, basis,
       max(team) AS team, sum(allocated_gpu_ms)::bigint AS allocated_gpu_ms, sum(busy_gpu_ms)::bigint AS busy_gpu_ms,
       sum(energy_mj)::bigint AS energy_mj, sum(cost_usd) AS cost_usd, count(*) AS windows
  FROM cost_windows
 GROUP BY 1, 2, 3, 4, 5
WITH NO DATA;

-- late billing restates windows up to a billing period back: refresh that far
SELECT add_continuous_aggregate_policy('cost_hourly', start_offset => INTERVAL '40 days',
       end_offset => INTERVAL '1 hour', schedule_interval => INTERVAL '15 minutes');
SELECT add_continuous_aggregate_policy('cost_daily', start_offset => INTERVAL '40 days',
       end_offset => INTERVAL '1 day', schedule_interval => INTERVAL '1 hour');
