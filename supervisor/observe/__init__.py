"""Observability: structured logs, metrics, goodput, plots."""
