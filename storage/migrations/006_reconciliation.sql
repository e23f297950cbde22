-- 006: payback of buy-capacity decisions; estimates matched with billed lines by resource and hour;
-- rolling 1 h / 24 h / 7 d views of every workload in every environment.

ALTER TABLE decisions ADD COLUMN payback_months numeric(20, 6);

-- Cloud cost estimated live (instance state x price, per window) against the provider's bill, per
-- resource and hour.  Bills name resources by ARN or path; the last path segment is the instance id.
-- Both sides are kept; a side that is missing shows as NULL (not yet billed, or billed but not seen live).
CREATE VIEW estimate_vs_billed_hourly AS
WITH estimated AS (
    SELECT date_trunc('hour', window_start) AS hour, provider, resource, sum(cost_usd) AS cost_usd
      FROM cost_windows
     WHERE environment = 'cloud' AND basis = 'estimated'
     GROUP BY 1, 2, 3
), billed AS (
    SELECT date_trunc('hour', charge_period_start) AS hour, provider,
           regexp_replace(resource_id, '^.*/', '') AS resource, sum(effective_cost_usd) AS cost_usd
      FROM cost_lines
     WHERE resource_id <> ''
     GROUP BY 1, 2, 3
)
SELECT coalesce(e.hour, b.hour) AS hour, coalesce(e.provider, b.provider) AS provider,
       coalesce(e.resource, b.resource) AS resource,
       e.cost_usd AS estimated_usd, b.cost_usd AS billed_usd
  FROM estimated e
  FULL JOIN billed b ON e.hour = b.hour AND e.resource = b.resource AND e.provider = b.provider;

-- Rolling windows per workload and environment, ending at the latest closed window.
CREATE VIEW workload_rolling AS
WITH latest AS (SELECT max(window_end) AS at FROM cost_windows WHERE basis = 'estimated'),
spans(span, width) AS (VALUES ('1h', INTERVAL '1 hour'), ('24h', INTERVAL '24 hours'), ('7d', INTERVAL '7 days'))
SELECT s.span, c.workload, c.environment, l.at AS until,
       sum(c.allocated_gpu_ms) / 3600000.0 AS allocated_gpu_hours,
       sum(c.busy_gpu_ms) / 3600000.0 AS busy_gpu_hours,
       sum(c.cost_usd) AS cost_usd,
       sum(c.cost_usd) / NULLIF(sum(c.busy_gpu_ms) / 3600000.0, 0) AS usd_per_busy_gpu_hour
  FROM latest l CROSS JOIN spans s
  JOIN cost_windows c ON c.basis = 'estimated' AND c.window_end > l.at - s.width AND c.window_end <= l.at
 GROUP BY s.span, s.width, c.workload, c.environment, l.at;

-- The daily view the dashboards and the report read, now from the matched hours above: billed lines
-- carry no workload, so each resource-day is attributed to the workload that ran most of it.
CREATE OR REPLACE VIEW estimate_vs_billed_daily AS
WITH owner AS (
    SELECT DISTINCT ON (day, resource) day, resource, workload
      FROM (SELECT date_trunc('day', window_start) AS day, resource, workload, sum(allocated_gpu_ms) AS ms
              FROM cost_windows WHERE environment = 'cloud' GROUP BY 1, 2, 3) t
     ORDER BY day, resource, ms DESC, workload
)
SELECT date_trunc('day', h.hour) AS day, coalesce(o.workload, 'unattributed') AS workload,
       'cloud'::text AS environment,
       sum(h.estimated_usd) AS estimated_usd, sum(h.billed_usd) AS billed_usd,
       (sum(h.estimated_usd) - sum(h.billed_usd)) / NULLIF(sum(h.billed_usd), 0) AS estimate_error_ratio
  FROM estimate_vs_billed_hourly h
  LEFT JOIN owner o ON o.day = date_trunc('day', h.hour) AND o.resource = h.resource
 GROUP BY 1, 2;
