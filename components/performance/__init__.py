"""Performance step: the prediction log joined with the labels that arrived later, scored with evaluate's metrics."""
