"""The stage entry points: each trains one stage from a YAML config and writes its product."""
