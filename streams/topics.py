"""Topic names and their explicit creation.

Tansu auto-creates unknown topics with 4 partitions and Apache Kafka may not auto-create at all, so
every topic the system uses is created here, with its partition count, before anything produces.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from kafka.admin import KafkaAdminClient, NewTopic
from kafka.errors import TopicAlreadyExistsError

from config import Settings
from config.settings import BrokerSettings
from streams.kafka_options import client_options


@dataclass(frozen=True)
class TopicSpec:
    name: str
    partitions: int
    replication_factor: int = 1
    configs: dict[str, str] = field(default_factory=dict)  # topic-level configs, e.g. min.insync.replicas


def topic_specs(settings: Settings) -> list[TopicSpec]:
    t = settings.topics
    configs = {"min.insync.replicas": str(t.min_insync_replicas)} if t.min_insync_replicas else {}
    # the state's changelog: partition p holds state partition p; last value per key is the state
    changelog = TopicSpec(t.changelog_topic, t.partitions, t.replication_factor, configs | {"cleanup.policy": "compact"})
    return [
        TopicSpec(name, partitions, t.replication_factor, configs)
        for name, partitions in [
            (t.items, t.partitions),
            (t.interactions, t.partitions),
            # co-partitioned with `interactions`: partition p of both feeds the state of partition p
            (t.interactions_repartition_topic, t.partitions),
            (t.items_dlq, t.dlq_partitions),
            (t.interactions_dlq, t.dlq_partitions),
        ]
    ] + [changelog]


def admin_client(broker: str | BrokerSettings, **kwargs) -> KafkaAdminClient:
    """An admin client of `broker`: the settings (bootstrap list, SASL / TLS), or a bare address."""
    opts = {"bootstrap_servers": broker} if isinstance(broker, str) else client_options(broker, "kafka-python")
    return KafkaAdminClient(**opts, **kwargs)


def ensure_topics(broker: str | BrokerSettings, specs: list[TopicSpec], timeout_ms: int = 10_000) -> list[str]:
    """Create the topics that do not exist yet; return the names created. Idempotent."""
    admin = admin_client(broker, request_timeout_ms=timeout_ms)
    try:
        existing = set(admin.list_topics())
        new = [NewTopic(s.name, s.partitions, s.replication_factor, topic_configs=s.configs or None)
               for s in specs if s.name not in existing]  # fmt: skip
        if new:
            try:
                admin.create_topics(new, timeout_ms=timeout_ms)
            except TopicAlreadyExistsError:
                pass  # another process created it in between
        return [t.name for t in new]
    finally:
        admin.close()


def partition_counts(broker: str | BrokerSettings, names: list[str]) -> dict[str, int]:
    """Partition count of each named topic, as the broker reports it."""
    admin = admin_client(broker)
    try:
        # kafka-python < 3 names the topic "topic", 3.x "name"
        return {d.get("name", d.get("topic")): len(d["partitions"]) for d in admin.describe_topics(names)}
    finally:
        admin.close()


def main() -> None:
    """`python -m streams.topics`: create the configured topics (the cluster layout's one-shot job)."""
    from config import load_settings

    settings = load_settings()
    created = ensure_topics(settings.broker, topic_specs(settings), timeout_ms=60_000)
    print(f"topics on {settings.broker.bootstrap}: created {', '.join(created) or 'none (all existed)'}")


if __name__ == "__main__":
    main()
