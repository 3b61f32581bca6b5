"""The served OpenAPI schema tells the truth: schemathesis generates requests from the schema (valid
and invalid ones) against a live API (uvicorn on 127.0.0.1, real seeded stores) and checks every answer:
no 5xx, only documented statuses and content types, every body valid against its documented schema.
Bounded: at most MAX_EXAMPLES generated cases per operation.

The cases are generated at collection from the app's schema for the same settings (schemathesis' lazy
`from_fixture` loader fails on pytest 9: it sets `node._nodeid`); the first test checks that the live
server serves exactly that schema."""

from __future__ import annotations

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (content_type_conformance, response_schema_conformance,
                                               status_code_conformance)  # fmt: skip

from config import load_settings
from deploy.broker import free_port
from serving.api import create_app
from serving.seed import publish_version, random_unit, write_catalogue, write_sequences
from store.vectors import VectorStore
from tests.integration.test_api import D, IDS, N, SEQUENCES, Api

pytestmark = pytest.mark.integration

MAX_EXAMPLES = 60
CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance]


SERVING = {"poll_s": 0.1, "sync_s": 0.3, "max_k": 50}
SPEC = create_app(load_settings(serving=SERVING)).openapi()  # no stores opened: that is the lifespan's job
schema = schemathesis.openapi.from_dict(SPEC)


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """One seeded deployment and one live API for every generated case of this module."""
    settings = load_settings(data_dir=tmp_path_factory.mktemp("schema") / "data",
                             serving={**SERVING, "port": free_port()})  # fmt: skip
    content = random_unit(N, D)
    store = VectorStore(settings.vector_uri).open()
    write_catalogue(settings, store, IDS, content, {i: f"Title of {i}" for i in IDS})
    write_sequences(settings, SEQUENCES)
    publish_version(settings, store, IDS, content, seed=0)
    with Api(settings) as api:
        yield api
    store.close()


def test_the_live_server_serves_this_schema(served):
    assert httpx.get(f"{served.url}/openapi.json", timeout=10).json() == SPEC


@schema.parametrize()
@settings(max_examples=MAX_EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck))
def test_every_answer_is_documented(case, served):
    case.call_and_validate(base_url=served.url, checks=CHECKS, timeout=30)
