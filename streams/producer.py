"""Producing events with kafka-python, as the product's services do.

Records are validated before they leave (a producer bug should fail at the producer), keyed by the id
that partitions them (item id for items, user id for interactions), and sent as JSON.
"""

from __future__ import annotations

from collections.abc import Iterable

from kafka import KafkaProducer

from config import Settings
from streams.kafka_options import client_options
from streams.schemas import Interaction, ItemRecord, encode


def make_producer(settings: Settings, **overrides) -> KafkaProducer:
    options = client_options(settings.broker, "kafka-python") | dict(
        acks="all",
        linger_ms=5,
        batch_size=256 * 1024,
        max_request_size=16 * 1024 * 1024,
        retries=5,
    )
    options.update(overrides)
    return KafkaProducer(**options)


class EventProducer:
    """Sends validated item and interaction records to their topics."""

    def __init__(self, settings: Settings, producer: KafkaProducer | None = None):
        self.topics = settings.topics
        self.producer = producer or make_producer(settings)

    def send_item(self, item: ItemRecord):
        return self.producer.send(self.topics.items, key=item.item_id.encode(), value=encode(item))

    def send_interaction(self, event: Interaction):
        return self.producer.send(self.topics.interactions, key=event.user_id.encode(), value=encode(event))

    def send_raw(self, topic: str, key: bytes | None, value: bytes):
        """For tests and replays of foreign data: bytes as they are, no validation."""
        return self.producer.send(topic, key=key, value=value)

    def send_items(self, items: Iterable[ItemRecord]) -> int:
        n = 0
        for n, item in enumerate(items, 1):
            self.send_item(item)
        return n

    def flush(self, timeout: float | None = 60) -> None:
        self.producer.flush(timeout)

    def close(self) -> None:
        self.producer.flush()
        self.producer.close()

    def __enter__(self) -> "EventProducer":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
