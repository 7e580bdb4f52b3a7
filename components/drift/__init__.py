"""Drift step: per-column drift verdicts identical to Evidently's DataDriftPreset, on every row, in seconds."""
