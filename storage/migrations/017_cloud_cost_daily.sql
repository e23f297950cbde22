-- 017: the reconciliation panels read a rollup of the cloud estimates and the bill per UTC day, resource
-- and provider (`cloud_cost_daily`), kept by the sink in each batch's own transaction as it keeps
-- `cost_hourly`: over 90 days the panels matched 540,000 hourly cloud windows with 520,000 bill lines when
-- read, 2.9-5.5 s on 10,000 GPUs (docs/performance.md).  The same sink-kept table on both engines: a
-- continuous aggregate can neither full-join the bill with the estimates nor pick each day's owner.
--
-- A row holds one day of one resource as `estimate_vs_billed_hourly` matches it (per hour, provider and
-- resource), summed: the panels group those rows per day and workload, or per provider, and give the rows
-- the views give, for UTC days and hours as `cost_daily` has them.  The views truncate in the session's time
-- zone (the same where it is UTC, the servers' default here); the panel functions below compute in UTC
-- whatever the session's zone (`SET TimeZone = 'UTC'`): the rollup's days are UTC days, and the hours
-- around them must be UTC hours too, or in a zone off UTC by a fraction of an hour (Asia/Kolkata) the edge
-- hours overlap the whole days and count their windows twice.
CREATE TABLE cloud_cost_daily (
    day              timestamptz NOT NULL,  -- the UTC day of the windows' start and the lines' charge period start
    resource         text        NOT NULL,  -- the instance: a window's resource, the last path segment of a bill's
                                            -- resource_id
    provider         text        NOT NULL,
    workload         text,                  -- who ran most of the resource's day (its cloud windows' allocated
                                            -- GPU-ms, any basis; ties: the first name), as the daily view
                                            -- attributes it; NULL: no cloud window that day (billed only)
    -- unconstrained numeric: the sums keep the scale of the summed amounts, so the panels' error ratios divide
    -- the very numbers the views divide (a fixed scale would round them differently)
    estimated_usd    numeric,               -- the estimated cloud windows' cost; NULL: none
    billed_usd       numeric,               -- the bill lines' effective cost; NULL: none
    hours_not_billed integer     NOT NULL,  -- hours of the day with an estimate and no bill line
    PRIMARY KEY (day, resource, provider)
);

-- what a refresh reads: one resource's cloud windows and bill lines of a day, from the indexes alone (an
-- index-only scan of an expression needs the column it is computed from in the index too)
CREATE INDEX cost_windows_cloud_resource ON cost_windows (resource, window_start)
    INCLUDE (basis, provider, workload, allocated_gpu_ms, cost_usd) WHERE environment = 'cloud';
CREATE INDEX cost_lines_bill_resource ON cost_lines ((reverse(split_part(reverse(resource_id), '/', 1))),
                                                     charge_period_start)
    INCLUDE (resource_id, provider, effective_cost_usd) WHERE resource_id <> '';

-- The transaction locks a refresh of `resources` takes before it reads anything, held to its commit.  What
-- they protect: two transactions recomputing one (day, resource) from different snapshots, each seeing its
-- own uncommitted windows or lines and not the other's (sink A stores a resource's windows while sink B
-- stores its bill lines); the one that commits last would leave rows without the other's.  A refresh
-- deletes and writes the rows of its resources only, and reads only their windows and lines, so a lock per
-- resource is enough: two refreshes of one resource take turns, the second reading (a fresh snapshot, after
-- its lock is granted) what the first committed; refreshes of different resources run side by side.  The
-- keys are (727275, hashtext(resource)), taken in the order of the key, so two refreshes never wait on each
-- other in a cycle (two resources of one hash share a key: they only take turns).  The sink refreshes once
-- per transaction, as the last thing it does before it commits (storage/sink.py), so a transaction that
-- holds these locks waits on no other lock and no deadlock runs through them.  A refresh of more than 256
-- distinct keys (a backfill, a batch of a big fleet's hour) takes the whole table instead, one exclusive
-- lock: so many locks would crowd the server's shared lock table (max_locks_per_transaction per
-- connection); the others take that lock shared, first, so it waits for the refreshes under way and they
-- for it.  (One refresh a transaction: a second one could need the exclusive lock after the shared one.)
CREATE FUNCTION lock_cloud_cost_daily(resources text[]) RETURNS void
LANGUAGE plpgsql AS $$
DECLARE
    lock_key integer;
BEGIN
    IF (SELECT count(DISTINCT hashtext(r)) FROM unnest(resources) r) > 256 THEN
        PERFORM pg_advisory_xact_lock(727275);
        RETURN;
    END IF;
    PERFORM pg_advisory_xact_lock_shared(727275);  -- a one-bigint key: not among the two-integer keys below
    FOR lock_key IN SELECT DISTINCT hashtext(r) FROM unnest(resources) r ORDER BY 1 LOOP
        PERFORM pg_advisory_xact_lock(727275, lock_key);
    END LOOP;
END
$$;

-- Recompute the rows of the given (UTC day, resource) pairs from the cost windows and bill lines stored:
-- the sink calls it for the days its batch's cloud windows and bill lines fall in, and those of the lines
-- a newer billing delivery superseded (storage/sink.py), in the batch's transaction.  Each pair's windows
-- and lines are read through the indexes above, in lateral aggregates the planner cannot turn into a join
-- of every window and line stored (what it did with the tables' statistics missing or stale).  Several
-- sinks may store one resource's windows and lines (the topics are keyed by workload and by bill line): the
-- refreshes of a resource take turns (lock_cloud_cost_daily), each reading what the one before committed,
-- so the last one to commit leaves the day as its rows are.  Each statement reads its own snapshot (a
-- volatile function, READ COMMITTED), so the rows are computed after the locks are granted.
CREATE FUNCTION refresh_cloud_cost_daily(days timestamptz[], resources text[]) RETURNS void
LANGUAGE sql AS $$
    SELECT lock_cloud_cost_daily(resources);
    DELETE FROM cloud_cost_daily d
     USING unnest(days, resources) AS k(day, resource)
     WHERE d.day = date_bin(INTERVAL '1 day', k.day, TIMESTAMPTZ '2000-01-01 00:00:00+00') AND d.resource = k.resource;
    INSERT INTO cloud_cost_daily (day, resource, provider, workload, estimated_usd, billed_usd, hours_not_billed)
    WITH k AS (
        SELECT DISTINCT date_bin(INTERVAL '1 day', day, TIMESTAMPTZ '2000-01-01 00:00:00+00') AS day, resource
          FROM unnest(days, resources) AS k(day, resource)
    ), estimated AS (  -- per hour and provider, as estimate_vs_billed_hourly sums them
        SELECT k.day, k.resource, e.hour, e.provider, e.usd
          FROM k CROSS JOIN LATERAL (
               SELECT date_bin(INTERVAL '1 hour', c.window_start, TIMESTAMPTZ '2000-01-01 00:00:00+00') AS hour,
                      c.provider, sum(c.cost_usd) AS usd
                 FROM cost_windows c
                WHERE c.environment = 'cloud' AND c.resource = k.resource AND c.basis = 'estimated'
                  AND c.window_start >= k.day AND c.window_start < k.day + INTERVAL '1 day'
                GROUP BY 1, 2) e
    ), billed AS (
        SELECT k.day, k.resource, b.hour, b.provider, b.usd
          FROM k CROSS JOIN LATERAL (
               SELECT date_bin(INTERVAL '1 hour', l.charge_period_start, TIMESTAMPTZ '2000-01-01 00:00:00+00') AS hour,
                      l.provider, sum(l.effective_cost_usd) AS usd
                 FROM cost_lines l
                WHERE l.resource_id <> '' AND reverse(split_part(reverse(l.resource_id), '/', 1)) = k.resource
                  AND l.charge_period_start >= k.day AND l.charge_period_start < k.day + INTERVAL '1 day'
                GROUP BY 1, 2) b
    ), owner AS (  -- as estimate_vs_billed_daily attributes a resource-day
        SELECT k.day, k.resource, o.workload
          FROM k CROSS JOIN LATERAL (
               SELECT c.workload FROM cost_windows c
                WHERE c.environment = 'cloud' AND c.resource = k.resource
                  AND c.window_start >= k.day AND c.window_start < k.day + INTERVAL '1 day'
                GROUP BY c.workload ORDER BY sum(c.allocated_gpu_ms) DESC, c.workload LIMIT 1) o
    ), hours AS (  -- matched per hour, provider and resource, as estimate_vs_billed_hourly matches them
        SELECT coalesce(e.day, b.day) AS day, coalesce(e.resource, b.resource) AS resource,
               coalesce(e.provider, b.provider) AS provider, e.usd AS estimated_usd, b.usd AS billed_usd
          FROM estimated e
          FULL JOIN billed b
            ON e.day = b.day AND e.resource = b.resource AND e.hour = b.hour AND e.provider = b.provider
    )
    SELECT h.day, h.resource, h.provider, o.workload, sum(h.estimated_usd), sum(h.billed_usd),
           count(*) FILTER (WHERE h.billed_usd IS NULL)
      FROM hours h
      LEFT JOIN owner o ON o.day = h.day AND o.resource = h.resource
     GROUP BY h.day, h.resource, h.provider, o.workload;
$$;

-- Recompute every day in [from_ts, to_ts) that has cloud windows, bill lines or rollup rows; how many rows
-- the rollup has for those days.  For what the sink did not write: the rows stored before this migration
-- (below), and rows written into the tables by other means (bench/panels.py seeds them by COPY).
CREATE FUNCTION refresh_cloud_cost_daily_between(from_ts timestamptz, to_ts timestamptz) RETURNS bigint
LANGUAGE sql AS $$
    SELECT refresh_cloud_cost_daily(array_agg(day), array_agg(resource))
      FROM (SELECT date_bin(INTERVAL '1 day', window_start, TIMESTAMPTZ '2000-01-01 00:00:00+00') AS day, resource
              FROM cost_windows WHERE environment = 'cloud' AND window_start >= from_ts AND window_start < to_ts
            UNION
            SELECT date_bin(INTERVAL '1 day', charge_period_start, TIMESTAMPTZ '2000-01-01 00:00:00+00'),
                   reverse(split_part(reverse(resource_id), '/', 1))
              FROM cost_lines WHERE resource_id <> '' AND charge_period_start >= from_ts AND charge_period_start < to_ts
            UNION
            SELECT day, resource FROM cloud_cost_daily WHERE day >= from_ts AND day < to_ts) k;
    SELECT count(*) FROM cloud_cost_daily WHERE day >= from_ts AND day < to_ts;
$$;

SELECT refresh_cloud_cost_daily_between('-infinity', 'infinity');  -- what is stored already

-- The daily reconciliation of a time range from the rollup: a row per resource and day instead of each cloud
-- window and bill line of the range.  UTC days whatever the session's time zone (016's function and the view
-- truncate in the session's zone: the same rows where it is UTC).
CREATE OR REPLACE FUNCTION estimate_vs_billed_daily_between(from_ts timestamptz, to_ts timestamptz)
RETURNS TABLE (day timestamptz, workload text, environment text, estimated_usd numeric, billed_usd numeric,
               estimate_error_ratio numeric)
LANGUAGE sql STABLE SET TimeZone = 'UTC' AS $$
    SELECT d.day, coalesce(d.workload, 'unattributed'), 'cloud'::text, sum(d.estimated_usd), sum(d.billed_usd),
           (sum(d.estimated_usd) - sum(d.billed_usd)) / NULLIF(sum(d.billed_usd), 0)
      FROM cloud_cost_daily d
     WHERE d.day BETWEEN from_ts AND to_ts
     GROUP BY 1, 2
$$;

-- The hourly reconciliation of a time range summed per provider, as the panel "Estimate error per provider"
-- sums `estimate_vs_billed_hourly` over the hours in [from_ts, to_ts]: the whole UTC days of the range from
-- the rollup, the hours before the first and after the last whole day from the windows and lines
-- (`estimate_vs_billed_hourly_between`: at most a day at each end).  In UTC whatever the session's time zone:
-- the setting holds for the hourly function called here too, which truncates its hours in the zone it runs
-- in (in Asia/Kolkata its hours begin at half past a UTC hour, and the edge hours overlapped the whole days).
CREATE FUNCTION estimate_vs_billed_per_provider_between(from_ts timestamptz, to_ts timestamptz)
RETURNS TABLE (provider text, estimated_usd numeric, billed_usd numeric, resource_hours_not_billed bigint)
LANGUAGE sql STABLE SET TimeZone = 'UTC' AS $$
    SELECT provider, sum(estimated_usd), sum(billed_usd), sum(hours_not_billed)::bigint
      FROM (SELECT d.provider, d.estimated_usd, d.billed_usd, d.hours_not_billed
              FROM cloud_cost_daily d
             -- the whole days: from the first midnight at or after from_ts to the last day whose 23:00 is <= to_ts
             WHERE d.day >= date_bin(INTERVAL '1 day', from_ts - INTERVAL '1 microsecond',
                                     TIMESTAMPTZ '2000-01-01 00:00:00+00') + INTERVAL '1 day'
               AND d.day < date_bin(INTERVAL '1 day', to_ts + INTERVAL '1 hour', TIMESTAMPTZ '2000-01-01 00:00:00+00')
            UNION ALL  -- the hours before the first whole day (all of the range's when it has none)
            SELECT h.provider, h.estimated_usd, h.billed_usd, (h.billed_usd IS NULL)::int
              FROM estimate_vs_billed_hourly_between(
                       from_ts, least(to_ts, date_bin(INTERVAL '1 day', from_ts - INTERVAL '1 microsecond',
                                                      TIMESTAMPTZ '2000-01-01 00:00:00+00')
                                             + INTERVAL '1 day' - INTERVAL '1 microsecond')) h
            UNION ALL  -- the hours after the last whole day (after the first midnight when there is none)
            SELECT h.provider, h.estimated_usd, h.billed_usd, (h.billed_usd IS NULL)::int
              FROM estimate_vs_billed_hourly_between(
                       greatest(from_ts,
                                date_bin(INTERVAL '1 day', from_ts - INTERVAL '1 microsecond',
                                         TIMESTAMPTZ '2000-01-01 00:00:00+00') + INTERVAL '1 day',
                                date_bin(INTERVAL '1 day', to_ts + INTERVAL '1 hour',
                                         TIMESTAMPTZ '2000-01-01 00:00:00+00')),
                       to_ts) h) parts
     GROUP BY provider
$$;
