"""Pipelines for checking the system itself (transfer, progress, cancel)."""
