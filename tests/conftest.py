"""Shared fixtures: a real Tansu broker per test run (random free port), torn down at the end."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest

from config import Settings, load_settings
from deploy.broker import free_port, start_broker, stop_process
from tests.milvus_server import milvus_server  # noqa: F401 - a fixture

SHARED_DATA = load_settings().shared_data_dir


def needs_shared_data() -> pytest.MarkDecorator:
    return pytest.mark.skipif(not (SHARED_DATA / "amazon-scientific-unisrec").is_dir(),
                              reason=f"real data not found at {SHARED_DATA}")  # fmt: skip


@pytest.fixture(scope="session")
def broker(tmp_path_factory) -> tuple[str, int]:
    """A Tansu broker on 127.0.0.1 for the whole test run."""
    port = free_port()
    log = tmp_path_factory.mktemp("broker") / "broker.log"
    proc = start_broker("127.0.0.1", port, log)
    yield "127.0.0.1", port
    stop_process(proc)


@pytest.fixture
def settings(broker, tmp_path: Path) -> Settings:
    """Settings for one test: its own data dir and its own topic names on the shared broker."""
    suffix = uuid.uuid4().hex[:8]
    return load_settings(
        data_dir=tmp_path / "data",
        broker={"host": broker[0], "port": broker[1]},
        worker={"app_prefix": f"learn-{suffix}"},  # own consumer groups: tests share the broker
        topics={"items": f"items-{suffix}", "interactions": f"interactions-{suffix}",
                "items_dlq": f"items-{suffix}.dlq", "interactions_dlq": f"interactions-{suffix}.dlq"},
    )  # fmt: skip
