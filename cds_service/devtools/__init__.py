"""Developer tools: replay fixture Bundles offline, act as an EHR against a running service."""
