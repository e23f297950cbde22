-- 013: every option a decision weighed over a horizon (staying, committing, buying, moving), each
-- with its quantity, up-front and monthly cost, horizon total, present value and the month it
-- overtakes staying; and the horizon and cost of capital they were priced at.  Decisions stored
-- before this migration, withdrawals and notices have none.
ALTER TABLE decisions ADD COLUMN options jsonb;
ALTER TABLE decisions ADD COLUMN horizon_months integer;
ALTER TABLE decisions ADD COLUMN discount_rate_pct numeric(20, 6);

-- the view lists the table's columns as they were when it was created: recreate it to show the new ones
DROP VIEW decision_log;
CREATE VIEW decision_log AS
SELECT d.*,
       (SELECT count(*) FROM alert_outbox a WHERE a.decision_id = d.decision_id AND a.delivered_at IS NOT NULL)
         AS alerts_delivered
  FROM decisions d;
