-- 007: alerts beyond crossings (budgets, spend rate, idle capacity, collector silence) share the outbox.
-- subject: what an alert is about, the cooldown key; severity: a higher one within the cooldown is an
-- escalation and is sent again.
ALTER TABLE alert_outbox ADD COLUMN subject text;
ALTER TABLE alert_outbox ADD COLUMN severity integer NOT NULL DEFAULT 1;
UPDATE alert_outbox SET subject = decision_id WHERE subject IS NULL;
ALTER TABLE alert_outbox ALTER COLUMN subject SET NOT NULL;
CREATE INDEX alert_outbox_subject ON alert_outbox (subject, route, created_at DESC);
