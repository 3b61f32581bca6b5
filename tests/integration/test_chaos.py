"""The chaos harness, small (bench/chaos.py is the full run): the `learn up` stack on the durable broker,
every bad-record class, two producers with different partitioners and keyless records, one SIGKILL
of every process but Tansu (the S3 server included) while the stream flows; nothing lost, nothing
applied twice, no user split, no worker exit on input, every bad record dead-lettered, no API 5xx
outside broker outages. Tansu itself is spared here: its S3 engine loses acknowledged records when it
is SIGKILLed while producers send (README, "The broker"), which the full run shows."""

import argparse

import pytest

from bench.chaos import run

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def test_nothing_lost_nothing_stuck_under_bad_records_and_kills():
    args = argparse.Namespace(interactions=600, users=60, items=60, kills=1, duration=60.0, encoder="minilm",
                              seed=7, keep=False, spare=["broker"])  # fmt: skip
    r = run(args)
    assert r["stores_settled"] and r["harness_errors"] == []
    assert set(r["kills"]) == {"encoder", "interactions", "trainer", "api", "s3"}
    assert r["records_never_acknowledged"] == 0
    assert (r["interactions_lost"], r["interactions_duplicated"], r["split_users"]) == (0, 0, 0), r
    assert (r["items_lost"], r["items_duplicated"], r["items_not_deleted"]) == (0, 0, 0), r
    assert r["bad_records_missing"] == [] and r["bad_records_dead_lettered"] == r["bad_records_sent"], r
    assert r["worker_crashes_on_input"] == 0, r
    assert r["api_5xx"] == 0, r
