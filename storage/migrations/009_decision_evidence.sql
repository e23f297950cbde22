-- 009: what a decision rests on and what it commits to.  The savings range is the 25th and 75th
-- percentile of the monthly savings of the windows in the evidence (widened to hold the point
-- estimate); evidence_hours is how long the crossing held; a purchase is named in whole nodes, a
-- migration in whole instances.  Decisions stored before this migration have NULL there.
ALTER TABLE decisions ADD COLUMN monthly_savings_low_usd numeric(20, 6);
ALTER TABLE decisions ADD COLUMN monthly_savings_high_usd numeric(20, 6);
ALTER TABLE decisions ADD COLUMN evidence_hours numeric(20, 6);
ALTER TABLE decisions ADD COLUMN nodes_needed integer;
ALTER TABLE decisions ADD COLUMN instances_needed integer;

-- the view lists the table's columns as they were when it was created: recreate it to show the new ones
DROP VIEW decision_log;
CREATE VIEW decision_log AS
SELECT d.*,
       (SELECT count(*) FROM alert_outbox a WHERE a.decision_id = d.decision_id AND a.delivered_at IS NOT NULL)
         AS alerts_delivered
  FROM decisions d;
