"""Prefect flows: each composes tasks into one job (sync, build, retrain, the whole pipeline)."""
