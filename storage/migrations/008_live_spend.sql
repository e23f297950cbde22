-- 008: live cloud spend.  The stream sends each cloud instance's state change at once, with what the
-- instance costs per hour from then on; this keeps the latest per instance (a replay of an older one
-- changes nothing).  Cost windows stay the record; this is the live view of the windows still open.
CREATE TABLE live_instances (
    instance_id text PRIMARY KEY,
    changed_at timestamptz NOT NULL,
    provider text NOT NULL,
    region text NOT NULL,
    instance_type text NOT NULL,
    purchase_option text NOT NULL,
    workload text NOT NULL,
    team text NOT NULL DEFAULT '',
    gpu_class text NOT NULL,
    gpus integer NOT NULL,
    state text NOT NULL,
    usd_per_hour numeric(20, 6) NOT NULL,
    running_since timestamptz,
    ends_at timestamptz,
    event_id text NOT NULL
);

-- What each workload spends in the cloud right now, per provider: the instances running (a reclaimed
-- spot instance stops counting at its reclaim instant), their hourly rate, and what they cost since
-- they started, at that rate.
CREATE VIEW live_cloud_spend AS
SELECT workload, team, provider, count(*) AS instances_running, sum(gpus) AS gpus_running,
       sum(usd_per_hour) AS usd_per_hour,
       sum(usd_per_hour * extract(epoch FROM (now() - running_since)) / 3600) AS usd_since_start,
       min(running_since) AS running_since, max(changed_at) AS changed_at
  FROM live_instances
 WHERE state <> 'stopped' AND (ends_at IS NULL OR ends_at > now())
 GROUP BY workload, team, provider;
