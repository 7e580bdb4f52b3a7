"""Features step: Feast feature repository, materialization and point-in-time correct splits."""
