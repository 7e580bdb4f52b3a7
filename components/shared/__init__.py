"""Code every step shares: typed pipeline config, object storage, image references, artifact helpers."""
