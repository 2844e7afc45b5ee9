"""Baselines of the paper's Table 2; each module registers its builder with ``registry.register``."""
