"""CDS Hooks 2.0 service for vitamin B12, ferritin and iron studies."""

__version__ = "0.1.0"
