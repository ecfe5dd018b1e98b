"""Plain functions that each do one job; flows wrap them as Prefect tasks."""
