"""The CDS Hooks wire format: requests, prefetch, cards, client authentication. Knows nothing clinical."""
