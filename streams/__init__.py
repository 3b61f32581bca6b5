"""Kafka topics, event schemas, producers, the faust app and its agents. Knows no model."""
