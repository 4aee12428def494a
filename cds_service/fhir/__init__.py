"""Talking to FHIR servers and reading FHIR JSON. Knows nothing clinical."""
