"""Reports for finance: the monthly repatriation / migration report."""
