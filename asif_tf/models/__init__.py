"""ASIF and the baselines; ``registry.build_model`` builds any of them by name."""
