"""Evaluate step: metrics on the test split and the blessing gate."""
