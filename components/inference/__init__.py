"""Inference step: batch predictions of the serving model on Feast point-in-time features, into the prediction log."""
