"""The encoder worker's pure parts, without a broker: tombstones, dead letters for any error of one
record, the batch-then-each fallback, and an import that builds nothing."""

import json
import time
from concurrent.futures import ThreadPoolExecutor
from types import SimpleNamespace

import pytest

import encoder.worker as worker
from config import load_settings
from encoder.content import ContentEncoder
from encoder.worker import PROBE, Pipeline, batch_or_each, parse_batch
from store.vectors import VectorStore

SETTINGS = load_settings()


def event(value, key=None, offset=0, ts_ms=None):
    """What faust hands the agent: value and key as bytes (or None), and the message's coordinates."""
    ts_ms = time.time() * 1000 if ts_ms is None else ts_ms
    return SimpleNamespace(value=value, key=key, message=SimpleNamespace(partition=2, offset=offset, timestamp=ts_ms))


def item(item_id, title="Beaker 250 ml", **kw) -> bytes:
    return json.dumps({"item_id": item_id, "title": title, "event_time": time.time(), **kw}).encode()


def test_a_null_value_with_a_key_deletes_that_item_and_the_last_record_of_an_item_wins():
    t = 1_750_000_000_000  # the record's broker timestamp (ms)
    batch = parse_batch([
        event(item("a"), b"a", 0),
        event(None, b"a", 1, ts_ms=t),  # deletes a, which was upserted earlier in the batch
        event(None, b"b", 2),
        event(item("b"), b"b", 3),  # b comes back after its tombstone
        event(None, b"c", 4),
    ], SETTINGS)  # fmt: skip
    assert set(batch.deletes) == {"a", "c"} and set(batch.upserts) == {"b"}
    assert batch.deletes["a"] == t / 1000
    assert batch.superseded == 2 and batch.rejected == []


def test_a_null_value_without_a_key_is_dead_lettered_and_the_rest_of_the_batch_is_kept():
    events = [event(item(f"i{n}"), None, n) for n in range(10)]
    events.insert(4, event(None, None, 99))
    batch = parse_batch(events, SETTINGS)
    assert len(batch.upserts) == 10 and not batch.deletes
    (x,) = batch.rejected
    assert "null value" in x.reason and "without a key" in x.reason
    assert (x.offset, x.partition, x.payload, x.payload_bytes, x.key) == (99, 2, "", 0, None)


@pytest.mark.parametrize("key, needle", [
    (b"caf\xe9", "not UTF-8"),
    (b"bad\x00id", "not an item id"),
    (b"   ", "not an item id"),
    (b"x" * 200, "not an item id"),
])  # fmt: skip
def test_a_tombstone_whose_key_is_no_item_id_is_dead_lettered(key, needle):
    batch = parse_batch([event(None, key, 7), event(item("ok"), b"ok", 8)], SETTINGS)
    assert set(batch.upserts) == {"ok"} and not batch.deletes
    (x,) = batch.rejected
    assert needle in x.reason and "tombstone" in x.reason and x.offset == 7


def test_any_exception_while_reading_one_record_dead_letters_that_record_only(monkeypatch):
    nested = b'{"item_id": "deep", "title": "t", "event_time": 1700000000, "attributes": {"a": ' + b"[" * 100_000
    real = worker.build_prompt

    def prompt_that_breaks_on_poison(fields, template):
        if "poison" in fields.get("title", ""):
            raise KeyError("a template bug")
        return real(fields, template)

    monkeypatch.setattr(worker, "build_prompt", prompt_that_breaks_on_poison)
    batch = parse_batch([
        event(item("a"), b"a", 0),
        event(nested, b"deep", 1),  # json raises RecursionError, not a RecordError
        event(item("p", title="poison flask"), b"p", 2),
        event(b"\xff\xfe", None, 3),
        event(item("b"), b"b", 4),
    ], SETTINGS)  # fmt: skip
    assert set(batch.upserts) == {"a", "b"}
    reasons = {x.offset: x.reason for x in batch.rejected}
    assert set(reasons) == {1, 2, 3}
    assert "RecursionError" in reasons[1] and "KeyError" in reasons[2] and "not UTF-8" in reasons[3]
    assert all(len(r) <= worker.MAX_REASON_CHARS for r in reasons.values())


def test_batch_or_each_runs_once_when_the_batch_works():
    calls = []

    def fn(xs):
        calls.append(list(xs))
        return [len(x) for x in xs]

    assert batch_or_each(fn, ["ab", "c"], "counting") == ({0: 2, 1: 1}, {})
    assert calls == [["ab", "c"]]


def test_batch_or_each_refuses_only_the_inputs_that_fail_alone():
    def fn(xs):
        if any("bad" in x for x in xs):
            raise ValueError("cannot read bad")
        return [x.upper() for x in xs]

    done, failed = batch_or_each(fn, ["a", "bad", "c"], "encoding")
    assert done == {0: "A", 2: "C"}
    assert list(failed) == [1] and failed[1].startswith("encoding failed: ValueError: cannot read bad")


def test_batch_or_each_raises_when_the_probe_fails_too():
    """An error that is about no record (the model is broken) must not dead-letter the batch."""

    def broken(xs):
        raise RuntimeError("device lost")

    with pytest.raises(RuntimeError, match="device lost"):
        batch_or_each(broken, ["a", "b"], "encoding")
    probed = []

    def probe():
        probed.append(1)
        raise OSError("the probe fails too")

    with pytest.raises(OSError, match="probe"):
        batch_or_each(broken, ["a"], "encoding", probe=probe)
    assert probed == [1]
    assert PROBE  # the default probe is a real item text


def test_importing_the_worker_builds_no_model_store_or_executor():
    built = [name for name, v in vars(worker).items()
             if isinstance(v, (Pipeline, ContentEncoder, VectorStore, ThreadPoolExecutor))]  # fmt: skip
    assert built == []
    assert worker.pipeline.cache_info().currsize == 0 and worker.executor.cache_info().currsize == 0
