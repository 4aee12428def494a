"""Test helpers shared by every test package: a real FHIR server, a delaying proxy, a fake EHR."""
