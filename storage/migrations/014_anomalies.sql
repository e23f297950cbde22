-- 014: anomaly episodes the worker detects (anomalies/detect.py, streams/watch.py): one row per
-- episode, opened and then closed (revision 0, then 1: a replayed opening never reopens a closed
-- one).  Grafana draws them as annotations; the alerter routes them from the topic.
CREATE TABLE anomalies (
    episode_id text PRIMARY KEY,
    revision integer NOT NULL,
    kind text NOT NULL,
    state text NOT NULL,
    subject text NOT NULL,
    workload text NOT NULL DEFAULT '',
    team text NOT NULL DEFAULT '',
    gpu_class text NOT NULL DEFAULT '',
    environment text NOT NULL DEFAULT '',
    resource text NOT NULL DEFAULT '',
    started_at timestamptz NOT NULL,
    detected_at timestamptz NOT NULL,
    ended_at timestamptz,
    score numeric(20, 6) NOT NULL,
    baseline numeric(30, 6) NOT NULL,
    observed numeric(30, 6) NOT NULL,
    unit text NOT NULL,
    usd_so_far numeric(30, 6) NOT NULL,
    usd_per_day_at_stake numeric(30, 6) NOT NULL,
    reason text NOT NULL,
    event_id text NOT NULL
);
CREATE INDEX anomalies_started_at ON anomalies (started_at);
