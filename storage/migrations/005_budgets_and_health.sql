-- 005: team budgets (from the configuration) and consumer lag (measured by the sink), for the
-- month-to-date and pipeline-health dashboards.

CREATE TABLE team_budgets (
    team               text PRIMARY KEY,
    monthly_budget_usd numeric(20, 2) NOT NULL CHECK (monthly_budget_usd >= 0),
    updated_at         timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE consumer_lag (
    group_id    text        NOT NULL,
    topic       text        NOT NULL,
    partition   integer     NOT NULL,
    lag         bigint      NOT NULL,
    measured_at timestamptz NOT NULL,
    PRIMARY KEY (group_id, topic, partition)
);

CREATE VIEW team_spend_month AS
SELECT date_trunc('month', bucket) AS month, coalesce(nullif(team, ''), '(none)') AS team,
       sum(cost_usd) AS spend_usd
  FROM cost_daily
 WHERE basis = 'estimated'
 GROUP BY 1, 2;
