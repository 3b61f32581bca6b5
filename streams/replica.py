"""The changelog read replica's consumer, and the choice of state reader for the API and the trainer.

`ChangelogReplica` follows every partition of the changelog topic with a consumer that assigns the
partitions itself (no consumer group: each replica reads everything) and hands the records to
store/replica.py, which writes them to the replica's own databases under
`<data_dir>/replica-<name>`: one directory per reading process (the API names its by its port, the
trainer "trainer"), since a database has one writer. Opening it catches up completely; later
`catch_up` calls fetch until a fetch returns nothing or `max_s` passed (short: the API calls it under
its state lock). It needs no end offset, so Tansu's approximate end offsets do not matter here.

`state_reader(settings, name)`: `state.reader = "secondary"` opens the workers' databases on this machine
(store/state.py StateReader, the fast path); "changelog" keeps a replica (any machine).
"""

from __future__ import annotations

import time

from kafka import KafkaConsumer, TopicPartition

from config import Settings
from store.replica import ReplicaState
from store.state import StateReader
from streams.kafka_options import client_options


class ChangelogReplica(ReplicaState):
    """A `StateReader` fed by the changelog topic."""

    def __init__(self, settings: Settings, name: str, max_s: float = 1.0, poll_ms: int = 100, first_s: float = 600.0):
        t = settings.topics
        super().__init__(settings.data_dir / f"replica-{name}", t.interactions, settings.state.slot_s)
        self.max_s, self.poll_ms = max_s, poll_ms
        self.consumer = KafkaConsumer(**client_options(settings.broker, "kafka-python"), group_id=None,
                                      enable_auto_commit=False, auto_offset_reset="earliest",
                                      fetch_max_wait_ms=poll_ms, max_partition_fetch_bytes=8 * 1024 * 1024)  # fmt: skip
        parts = self.consumer.partitions_for_topic(t.changelog_topic)
        if not parts:
            self.consumer.close()
            raise RuntimeError(f"changelog topic {t.changelog_topic} does not exist: create the topics first")
        tps = [TopicPartition(t.changelog_topic, p) for p in sorted(parts)]
        self.consumer.assign(tps)
        for tp in tps:
            self.consumer.seek(tp, self.position(tp.partition))
        self.catch_up(first_s)

    def catch_up(self, max_s: float | None = None) -> None:
        deadline = time.monotonic() + (self.max_s if max_s is None else max_s)
        while time.monotonic() < deadline:
            batches = self.consumer.poll(timeout_ms=self.poll_ms, max_records=50_000)
            if not batches:
                return
            for tp, records in batches.items():
                self.apply(tp.partition, ((m.offset, m.key, m.value) for m in records))

    def close(self) -> None:
        self.consumer.close()
        super().close()


def state_reader(settings: Settings, name: str) -> StateReader:
    """The reader `state.reader` names (module docstring); `name`: the reading process's replica."""
    if settings.state.reader == "changelog":
        return ChangelogReplica(settings, name)
    return StateReader(settings.state_path, settings.topics.interactions)
