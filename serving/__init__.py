"""The query path: top-K logic and the HTTP API."""
