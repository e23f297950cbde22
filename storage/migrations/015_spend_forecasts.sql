-- 015: each budgeted team's month as the alerter last forecast it (alerts/forecaster.py): the running
-- month-to-date total at the end of every remaining day of the month and at its end, with its 80 % and
-- 95 % intervals (the last row is the month's total, the figure the budget notice quotes).  A new
-- forecast of a team's month replaces the old one.  Grafana's spend dashboard draws it as a band.
CREATE TABLE spend_forecasts (
    team text NOT NULL,
    month date NOT NULL,
    at timestamptz NOT NULL,
    made_at timestamptz NOT NULL,  -- event time: the hour the forecast is as of
    spend_usd numeric(30, 6) NOT NULL,
    low_80_usd numeric(30, 6) NOT NULL,
    high_80_usd numeric(30, 6) NOT NULL,
    low_95_usd numeric(30, 6) NOT NULL,
    high_95_usd numeric(30, 6) NOT NULL,
    overrun_probability numeric(6, 3) NOT NULL,  -- of the month's total exceeding the team's budget
    model text NOT NULL,
    PRIMARY KEY (team, month, at)
);
