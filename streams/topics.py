"""Topic names and their explicit creation.

Tansu auto-creates unknown topics with 4 partitions and Apache Kafka may not auto-create at all, so
every topic the system uses is created here, with its partition count, before anything produces.
"""

from __future__ import annotations

from dataclasses import dataclass

from kafka.admin import KafkaAdminClient, NewTopic
from kafka.errors import TopicAlreadyExistsError

from config import Settings


@dataclass(frozen=True)
class TopicSpec:
    name: str
    partitions: int


def topic_specs(settings: Settings) -> list[TopicSpec]:
    t = settings.topics
    return [
        TopicSpec(t.items, t.partitions),
        TopicSpec(t.interactions, t.partitions),
        # co-partitioned with `interactions`: partition p of both feeds the state of partition p
        TopicSpec(t.interactions_repartition_topic, t.partitions),
        TopicSpec(t.items_dlq, t.dlq_partitions),
        TopicSpec(t.interactions_dlq, t.dlq_partitions),
    ]


def ensure_topics(bootstrap: str, specs: list[TopicSpec], timeout_ms: int = 10_000) -> list[str]:
    """Create the topics that do not exist yet; return the names created. Idempotent."""
    admin = KafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=timeout_ms)
    try:
        existing = set(admin.list_topics())
        new = [NewTopic(s.name, s.partitions, 1) for s in specs if s.name not in existing]
        if new:
            try:
                admin.create_topics(new, timeout_ms=timeout_ms)
            except TopicAlreadyExistsError:
                pass  # another process created it in between
        return [t.name for t in new]
    finally:
        admin.close()


def partition_counts(bootstrap: str, names: list[str]) -> dict[str, int]:
    """Partition count of each named topic, as the broker reports it."""
    admin = KafkaAdminClient(bootstrap_servers=bootstrap)
    try:
        # kafka-python < 3 names the topic "topic", 3.x "name"
        return {d.get("name", d.get("topic")): len(d["partitions"]) for d in admin.describe_topics(names)}
    finally:
        admin.close()
