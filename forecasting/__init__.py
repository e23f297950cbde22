"""Spend forecasts with prediction intervals (statsforecast), backtested on the series' own history."""
