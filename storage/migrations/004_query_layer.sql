-- 004: the query layer shared by dashboards, reports and the demo (each number computed here once).

CREATE VIEW workload_daily_cost AS
SELECT bucket AS day, workload, team, environment, gpu_class, basis,
       allocated_gpu_ms / 3600000.0 AS allocated_gpu_hours,
       busy_gpu_ms / 3600000.0 AS busy_gpu_hours,
       busy_gpu_ms::numeric / NULLIF(allocated_gpu_ms, 0) AS utilization,
       cost_usd,
       cost_usd * 3600000 / NULLIF(busy_gpu_ms, 0) AS usd_per_busy_gpu_hour
  FROM cost_daily
 WHERE workload <> 'idle';

CREATE VIEW idle_cost_daily AS
SELECT bucket AS day, environment, gpu_class,
       sum(allocated_gpu_ms) / 3600000.0 AS idle_gpu_hours,
       sum(cost_usd) AS idle_cost_usd
  FROM cost_daily
 WHERE workload = 'idle' AND basis = 'estimated'
 GROUP BY bucket, environment, gpu_class;

CREATE VIEW estimate_vs_billed_daily AS
SELECT coalesce(e.day, b.day) AS day, coalesce(e.workload, b.workload) AS workload,
       coalesce(e.environment, b.environment) AS environment,
       e.cost_usd AS estimated_usd, b.cost_usd AS billed_usd,
       (e.cost_usd - b.cost_usd) / NULLIF(b.cost_usd, 0) AS estimate_error_ratio
  FROM (SELECT bucket AS day, workload, environment, sum(cost_usd) AS cost_usd
          FROM cost_daily WHERE basis = 'estimated' GROUP BY 1, 2, 3) e
  FULL JOIN (SELECT bucket AS day, workload, environment, sum(cost_usd) AS cost_usd
               FROM cost_daily WHERE basis = 'billed' GROUP BY 1, 2, 3) b
    ON e.day = b.day AND e.workload = b.workload AND e.environment = b.environment;

CREATE VIEW decision_log AS
SELECT d.*,
       (SELECT count(*) FROM alert_outbox a WHERE a.decision_id = d.decision_id AND a.delivered_at IS NOT NULL)
         AS alerts_delivered
  FROM decisions d;
