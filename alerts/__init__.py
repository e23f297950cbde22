"""Alerts: breakeven decisions to Slack through a durable outbox."""
