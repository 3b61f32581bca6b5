"""The S3 server fixture: one real local S3-compatible server per test run (deploy/s3_server.py over
nanio, as the durable broker runs it: 127.0.0.1, a random free port, the stack's local credentials),
and one fresh bucket per test."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from pathlib import Path

import pytest

from config import load_settings
from deploy.broker import S3_KEY, S3_SECRET, free_port, s3_program, start_program, stop_process


@dataclass(frozen=True)
class S3Server:
    endpoint: str
    root: Path  # one folder per bucket, one file per object

    def registry(self, bucket: str, prefix: str = "models") -> dict:
        """The `registry` settings of an S3 registry at s3://<bucket>/<prefix> on this server."""
        return {"uri": f"s3://{bucket}/{prefix}", "s3_endpoint_url": self.endpoint, "s3_access_key": S3_KEY,
                "s3_secret_key": S3_SECRET}  # fmt: skip

    def client(self):
        from store.s3_registry import make_client

        return make_client(self.endpoint, S3_KEY, S3_SECRET, "us-east-1")


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory) -> S3Server:
    root = tmp_path_factory.mktemp("s3")
    s = load_settings(data_dir=root, broker={"s3_port": free_port()})
    program = s3_program(s)
    proc = start_program(program, root / "s3.log")
    yield S3Server(f"http://{program.host}:{program.port}", root / "broker")
    stop_process(proc)


@pytest.fixture
def s3_bucket(s3_server) -> str:
    """A fresh, empty bucket on the test run's S3 server."""
    name = f"reg-{uuid.uuid4().hex[:10]}"
    s3_server.client().create_bucket(Bucket=name)
    return name
