"""Erosion checks: evaluation plans, cached sampling, checks, gates and the visual report."""
