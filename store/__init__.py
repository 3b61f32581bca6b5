"""Durable state: per-user sequences, embedding cache, vector store, model registry. Knows no model or API."""
