-- 016: what the Grafana panels read so that each loads in about a second on 10,000 GPUs x 90 days
-- (bench/panels.py, docs/performance.md), each giving the rows its query over the raw rows gives
-- (tests/test_panel_queries.py).

-- decision_log counts each decision's delivered alerts: one index probe per decision, not a scan of the outbox
CREATE INDEX alert_outbox_decision_delivered ON alert_outbox (decision_id) WHERE delivered_at IS NOT NULL;

-- The cost rollups of a Grafana time range: the hourly buckets starting in [from_ts, to_ts], as
-- `$__timeFilter(bucket)` on cost_hourly selects them, with every whole UTC day of them read from
-- cost_daily instead (one row a day instead of 24) when step_s, the width of the time groups the
-- caller makes, is a whole number of days (a day's row then falls in the group of its hours; any
-- other step reads hourly rows only).  The same sums: cost_daily's buckets are the sums of
-- cost_hourly's (both are aggregated from the cost windows by the sink, or by TimescaleDB).
-- `team` is the rollup's max(team) of its bucket: a workload that changed teams within a day shows
-- under the later-sorting team for that day.  Inlined by the planner, so the callers' filters reach
-- both rollups' indexes.
CREATE FUNCTION cost_rollup_between(from_ts timestamptz, to_ts timestamptz, step_s numeric DEFAULT 86400)
RETURNS TABLE (bucket timestamptz, workload text, environment text, gpu_class text, basis text, team text,
               allocated_gpu_ms bigint, busy_gpu_ms bigint, energy_mj bigint, cost_usd numeric, windows bigint)
LANGUAGE sql STABLE AS $$
    SELECT d.bucket, d.workload, d.environment, d.gpu_class, d.basis, d.team, d.allocated_gpu_ms, d.busy_gpu_ms,
           d.energy_mj, d.cost_usd, d.windows
      FROM cost_daily d
     WHERE step_s % 86400 = 0
       -- whole days: the first midnight at or after from_ts, up to the last day whose 23:00 bucket is <= to_ts
       AND d.bucket >= date_bin(INTERVAL '1 day', from_ts - INTERVAL '1 microsecond',
                                TIMESTAMPTZ '2000-01-01 00:00:00+00') + INTERVAL '1 day'
       AND d.bucket < date_bin(INTERVAL '1 day', to_ts + INTERVAL '1 hour', TIMESTAMPTZ '2000-01-01 00:00:00+00')
    UNION ALL
    SELECT h.bucket, h.workload, h.environment, h.gpu_class, h.basis, h.team, h.allocated_gpu_ms, h.busy_gpu_ms,
           h.energy_mj, h.cost_usd, h.windows
      FROM cost_hourly h
     WHERE h.bucket BETWEEN from_ts AND to_ts
       AND (step_s % 86400 <> 0
            OR h.bucket < date_bin(INTERVAL '1 day', from_ts - INTERVAL '1 microsecond',
                                   TIMESTAMPTZ '2000-01-01 00:00:00+00') + INTERVAL '1 day'
            OR h.bucket >= greatest(date_bin(INTERVAL '1 day', to_ts + INTERVAL '1 hour',
                                             TIMESTAMPTZ '2000-01-01 00:00:00+00'),
                                    date_bin(INTERVAL '1 day', from_ts - INTERVAL '1 microsecond',
                                             TIMESTAMPTZ '2000-01-01 00:00:00+00') + INTERVAL '1 day'))
$$;

-- The panels filter the rollups on the team as they show it, an expression the planner had no statistics
-- of: it expected a twenty-fourth of the rows a week of a per-workload panel reads, and sorted them to
-- group them.  (Tables on plain PostgreSQL; TimescaleDB's rollups are views over its own tables.)
DO $$
BEGIN
    IF (SELECT relkind FROM pg_class WHERE oid = 'cost_hourly'::regclass) = 'r' THEN
        CREATE STATISTICS cost_hourly_team ON (coalesce(nullif(team, ''), '(none)')) FROM cost_hourly;
        CREATE STATISTICS cost_daily_team ON (coalesce(nullif(team, ''), '(none)')) FROM cost_daily;
    END IF;
END
$$;

-- The reconciliation views of a time range, reading only the cost windows and bill lines of that range
-- (a filter on the views' hour or day column cannot reach through their grouping and full join: every
-- panel read every cloud window and every bill line ever stored).  The same rows as the views, for
-- `hour BETWEEN from_ts AND to_ts` and `day BETWEEN from_ts AND to_ts`.  A bill's resource is the last
-- segment of its path, as the views' regexp_replace(resource_id, '^.*/', '') has it, cut without a
-- regular expression (a third of the time of the daily function over 90 days).
CREATE FUNCTION estimate_vs_billed_hourly_between(from_ts timestamptz, to_ts timestamptz)
RETURNS TABLE (hour timestamptz, provider text, resource text, estimated_usd numeric, billed_usd numeric)
LANGUAGE sql STABLE AS $$
    WITH estimated AS (  -- the windows and lines whose hour is in [from_ts, to_ts]
        SELECT date_trunc('hour', c.window_start) AS hour, c.provider, c.resource, sum(c.cost_usd) AS cost_usd
          FROM cost_windows c
         WHERE c.environment = 'cloud' AND c.basis = 'estimated'
           AND c.window_start >= date_trunc('hour', from_ts + INTERVAL '1 hour' - INTERVAL '1 microsecond')
           AND c.window_start < date_trunc('hour', to_ts) + INTERVAL '1 hour'
         GROUP BY 1, 2, 3
    ), billed AS (
        SELECT date_trunc('hour', l.charge_period_start) AS hour, l.provider,
               reverse(split_part(reverse(l.resource_id), '/', 1)) AS resource, sum(l.effective_cost_usd) AS cost_usd
          FROM cost_lines l
         WHERE l.resource_id <> ''
           AND l.charge_period_start >= date_trunc('hour', from_ts + INTERVAL '1 hour' - INTERVAL '1 microsecond')
           AND l.charge_period_start < date_trunc('hour', to_ts) + INTERVAL '1 hour'
         GROUP BY 1, 2, 3
    )
    SELECT coalesce(e.hour, b.hour), coalesce(e.provider, b.provider), coalesce(e.resource, b.resource),
           e.cost_usd, b.cost_usd
      FROM estimated e
      FULL JOIN billed b ON e.hour = b.hour AND e.resource = b.resource AND e.provider = b.provider
$$;

-- Per day as the daily view has it, summed per resource and day before the match (the view matches
-- per hour and then sums the hours of each resource-day: the same sums, 24 x fewer rows to join).
CREATE FUNCTION estimate_vs_billed_daily_between(from_ts timestamptz, to_ts timestamptz)
RETURNS TABLE (day timestamptz, workload text, environment text, estimated_usd numeric, billed_usd numeric,
               estimate_error_ratio numeric)
LANGUAGE sql STABLE AS $$
    WITH cloud AS (  -- the cloud windows of the days in [from_ts, to_ts]
        SELECT date_trunc('day', c.window_start) AS day, c.resource, c.workload, c.basis, c.allocated_gpu_ms, c.cost_usd
          FROM cost_windows c
         WHERE c.environment = 'cloud'
           AND c.window_start >= date_trunc('day', from_ts + INTERVAL '1 day' - INTERVAL '1 microsecond')
           AND c.window_start < date_trunc('day', to_ts) + INTERVAL '1 day'
    ), estimated AS (
        SELECT day, resource, sum(cost_usd) AS cost_usd FROM cloud WHERE basis = 'estimated' GROUP BY 1, 2
    ), billed AS (
        SELECT date_trunc('day', l.charge_period_start) AS day,
               reverse(split_part(reverse(l.resource_id), '/', 1)) AS resource, sum(l.effective_cost_usd) AS cost_usd
          FROM cost_lines l
         WHERE l.resource_id <> ''
           AND l.charge_period_start >= date_trunc('day', from_ts + INTERVAL '1 day' - INTERVAL '1 microsecond')
           AND l.charge_period_start < date_trunc('day', to_ts) + INTERVAL '1 day'
         GROUP BY 1, 2
    ), owner AS (  -- each resource-day is attributed to the workload that ran most of it (as the view does)
        SELECT DISTINCT ON (day, resource) day, resource, workload
          FROM (SELECT day, resource, workload, sum(allocated_gpu_ms) AS ms FROM cloud GROUP BY 1, 2, 3) t
         ORDER BY day, resource, ms DESC, workload
    ), matched AS (
        SELECT coalesce(e.day, b.day) AS day, coalesce(e.resource, b.resource) AS resource,
               e.cost_usd AS estimated_usd, b.cost_usd AS billed_usd
          FROM estimated e FULL JOIN billed b ON e.day = b.day AND e.resource = b.resource
    )
    SELECT m.day, coalesce(o.workload, 'unattributed'), 'cloud'::text,
           sum(m.estimated_usd), sum(m.billed_usd),
           (sum(m.estimated_usd) - sum(m.billed_usd)) / NULLIF(sum(m.billed_usd), 0)
      FROM matched m
      LEFT JOIN owner o ON o.day = m.day AND o.resource = m.resource
     GROUP BY 1, 2
$$;

-- the cloud windows and the bill lines those read, from the index alone (a tenth of the windows are cloud ones)
CREATE INDEX cost_windows_cloud ON cost_windows (window_start)
    INCLUDE (basis, provider, resource, workload, allocated_gpu_ms, cost_usd) WHERE environment = 'cloud';
CREATE INDEX cost_lines_resource_hours ON cost_lines (charge_period_start)
    INCLUDE (provider, resource_id, effective_cost_usd) WHERE resource_id <> '';

-- Rollups of the raw GPU samples for the panels that read them (GPUs seen, utilization, collector
-- freshness), which read up to 30 days of samples: 29 million rows a day at 10,000 GPUs every 30 s.
-- `refresh_gpu_sample_rollups(until)` aggregates the samples up to `until` (whole minutes) and moves the
-- watermark there; the panels read the rollups before the watermark and the raw samples after it, so they
-- give the raw samples' rows however long ago the rollups were refreshed (all raw when never).  Samples are
-- append-only: a refresh aggregates again from an hour (`late`) before the watermark, so a sample stored up
-- to an hour behind it still counts; one stored later than that is left out of the rollups (a refresh with
-- a longer `late` takes it in).  The rollups outlive the raw samples' 30 days of retention (a range further
-- back counts what they kept) and have no retention of their own yet.  TimescaleDB's job scheduler refreshes
-- them (below); on plain PostgreSQL the sink calls the function every 15 minutes (Sink.refresh_sample_rollups).
CREATE TABLE gpu_utilization_minutely (
    bucket              timestamptz NOT NULL,  -- the minute of the samples' ts
    environment         text        NOT NULL,
    gpu_class           text        NOT NULL,
    samples             bigint      NOT NULL,
    utilization_pct_sum double precision NOT NULL,
    PRIMARY KEY (bucket, environment, gpu_class)
);
CREATE TABLE gpu_seen_daily (
    day         timestamptz NOT NULL,  -- the UTC day of the samples' ts
    environment text        NOT NULL,
    gpu_class   text        NOT NULL,
    resource    text        NOT NULL,
    gpu_uuid    text        NOT NULL,
    first_ts    timestamptz NOT NULL,  -- its first and last sample that day
    last_ts     timestamptz NOT NULL,
    PRIMARY KEY (day, environment, gpu_class, resource, gpu_uuid)
);
CREATE TABLE rollup_watermarks (
    rollup text PRIMARY KEY,
    until  timestamptz NOT NULL  -- the rollups hold the samples with ts before it
);
INSERT INTO rollup_watermarks (rollup, until) VALUES ('gpu_samples', '-infinity');

CREATE FUNCTION refresh_gpu_sample_rollups(until timestamptz DEFAULT now(), late interval DEFAULT INTERVAL '1 hour')
RETURNS timestamptz LANGUAGE plpgsql AS $$
DECLARE
    upto timestamptz := date_bin(INTERVAL '1 minute', until, TIMESTAMPTZ '2000-01-01 00:00:00+00');
    done timestamptz;
    since timestamptz;
BEGIN
    SELECT w.until INTO done FROM rollup_watermarks w WHERE w.rollup = 'gpu_samples' FOR UPDATE;
    IF upto <= done THEN
        RETURN done;
    END IF;
    since := CASE WHEN done = '-infinity' THEN done
                  ELSE date_bin(INTERVAL '1 minute', done - late, TIMESTAMPTZ '2000-01-01 00:00:00+00') END;
    DELETE FROM gpu_utilization_minutely WHERE bucket >= since AND bucket < upto;
    INSERT INTO gpu_utilization_minutely (bucket, environment, gpu_class, samples, utilization_pct_sum)
    SELECT date_bin(INTERVAL '1 minute', ts, TIMESTAMPTZ '2000-01-01 00:00:00+00'), environment, gpu_class, count(*),
           sum(utilization_pct::double precision)
      FROM gpu_samples WHERE ts >= since AND ts < upto
     GROUP BY 1, 2, 3;
    INSERT INTO gpu_seen_daily (day, environment, gpu_class, resource, gpu_uuid, first_ts, last_ts)
    SELECT date_bin(INTERVAL '1 day', ts, TIMESTAMPTZ '2000-01-01 00:00:00+00'), environment, gpu_class, resource,
           gpu_uuid, min(ts), max(ts)
      FROM gpu_samples WHERE ts >= since AND ts < upto
     GROUP BY 1, 2, 3, 4, 5
    ON CONFLICT (day, environment, gpu_class, resource, gpu_uuid) DO UPDATE
       SET first_ts = least(gpu_seen_daily.first_ts, EXCLUDED.first_ts),
           last_ts = greatest(gpu_seen_daily.last_ts, EXCLUDED.last_ts);
    UPDATE rollup_watermarks SET until = upto WHERE rollup = 'gpu_samples';
    RETURN upto;
END
$$;

CREATE PROCEDURE refresh_gpu_sample_rollups_job(job_id integer, config jsonb) LANGUAGE plpgsql AS $$
BEGIN
    PERFORM refresh_gpu_sample_rollups();
END
$$;

DO $$
BEGIN
    IF EXISTS (SELECT 1 FROM pg_extension WHERE extname = 'timescaledb') THEN
        PERFORM add_job('refresh_gpu_sample_rollups_job', INTERVAL '15 minutes');
    END IF;
END
$$;
