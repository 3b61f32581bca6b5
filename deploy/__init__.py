"""Processes and wiring: the embedded stack, the `learn` CLI, configs and manifests."""
