"""A custom network for the kfp-mlops train step: the tabular ResNet of Gorishniy et al. (2021)."""
