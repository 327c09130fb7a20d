"""Batch CSV files: contract, cleaning, Delta staging, KPIs and the execution steps."""
