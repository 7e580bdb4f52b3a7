"""Train step: a PyTorch tabular classifier trained with DeepSpeed across worker processes."""
