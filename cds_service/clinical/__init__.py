"""Interpretation of B12 and iron data. Knows nothing of HTTP or CDS Hooks."""
