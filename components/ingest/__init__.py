"""Ingest step: read, validate, deduplicate and split the raw data."""
