"""The encoder worker's retry policies (tenacity), without a broker: store calls are retried until
they succeed; dead letters are retried within worker.send_timeout_ms, then the worker stops."""

import asyncio

import pytest

import encoder.worker as worker
from streams.schemas import DeadLetter


def flaky(failures: int, result="ok"):
    """A function that raises `failures` times, then returns `result`; `calls` counts the calls."""
    calls = []

    def fn(*args):
        calls.append(args)
        if len(calls) <= failures:
            raise ConnectionError(f"store down (call {len(calls)})")
        return result

    return fn, calls


def test_until_done_retries_a_failing_store_call_and_counts_the_retries():
    fn, calls = flaky(2)
    before = worker.STORE_RETRIES._value.get()
    assert asyncio.run(worker.until_done(fn, "batch", doing="writing")) == "ok"
    assert calls == [("batch",)] * 3 and worker.STORE_RETRIES._value.get() == before + 2


@pytest.fixture
def letters(monkeypatch):
    stopped = []

    def stop_loudly(why):
        stopped.append(why)
        raise SystemExit(why)

    monkeypatch.setattr(worker, "stop_loudly", stop_loudly)
    s = worker.settings
    monkeypatch.setattr(worker, "settings", s.model_copy(update={"worker": s.worker.model_copy(update={"send_timeout_ms": 2000})}))
    return [DeadLetter(reason="bad", source_topic="items", payload="x", payload_bytes=1)], stopped


def test_dead_letters_are_sent_again_after_a_failed_send(letters, monkeypatch):
    batch, stopped = letters
    sent, calls = flaky(1)

    async def send_all(xs):
        sent(xs)

    monkeypatch.setattr(worker, "_send_all", send_all)
    before = worker.DEAD_LETTERS.labels(worker.WORKER)._value.get()
    asyncio.run(worker.send_dead_letters(batch))
    assert len(calls) == 2 and not stopped
    assert worker.DEAD_LETTERS.labels(worker.WORKER)._value.get() == before + 1


def test_dead_letters_that_keep_failing_stop_the_worker_at_the_deadline(letters, monkeypatch):
    batch, stopped = letters
    sent, calls = flaky(10**6)

    async def send_all(xs):
        sent(xs)

    monkeypatch.setattr(worker, "_send_all", send_all)
    with pytest.raises(SystemExit):
        asyncio.run(worker.send_dead_letters(batch))
    # tries at 0, 0.5, 1.5 s (later on a loaded machine); the next would start past the 2 s deadline
    assert 2 <= len(calls) <= 3 and "could not be sent" in stopped[0] and "ConnectionError" in stopped[0]


def test_a_send_still_pending_at_the_deadline_stops_the_worker_without_a_retry(letters, monkeypatch):
    batch, stopped = letters
    calls = []

    async def send_all(xs):
        calls.append(xs)
        await asyncio.sleep(30)

    monkeypatch.setattr(worker, "_send_all", send_all)
    with pytest.raises(SystemExit):
        asyncio.run(worker.send_dead_letters(batch))
    assert len(calls) == 1 and "no ack within 2.0s" in stopped[0]
