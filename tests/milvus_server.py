"""The Milvus server fixture: one real Milvus 2.3.5 standalone per test run (deploy/milvus_server.py:
a private network namespace with only loopback, one forwarded loopback port). Tests that need it are
skipped, with the reason, only where the server cannot be installed or started here."""

from __future__ import annotations

import pytest

from deploy import milvus_server as ms


@pytest.fixture(scope="session")
def milvus_server(tmp_path_factory) -> ms.MilvusServer:
    """A running Milvus server; `.uri` is its address, `.restart()` restarts it on the same URI."""
    reason = ms.unavailable_reason()
    if reason:
        pytest.skip(f"Milvus server unavailable: {reason}")
    try:
        server = ms.start(tmp_path_factory.mktemp("milvus"))
    except ms.MilvusServerError as e:
        pytest.skip(f"Milvus server did not start: {e}")
    yield server
    server.stop()


def drop_all(uri: str) -> None:
    """Empty the server (its collections), so each test starts from nothing."""
    from pymilvus import MilvusClient

    client = MilvusClient(uri=uri, timeout=30)
    try:
        for name in client.list_collections():
            client.drop_collection(name)
    finally:
        client.close()
