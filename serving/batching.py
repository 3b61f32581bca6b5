"""Micro-batching: concurrent requests' work done in one call on one worker thread.

A request `await`s `submit(job)`. The worker thread takes the oldest job plus every job queued behind
it (up to `max_batch`) and runs `fn(jobs) -> results` once
(a result that is an exception is raised in its request only). There is no waiting window: a lone request
runs at once, and under load the jobs that arrive while a batch computes form the next batch, so the
batch size follows the load. The event loop never blocks on the work.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
import time
from collections.abc import Callable
from typing import Any

log = logging.getLogger(__name__)

_STOP = object()


class MicroBatcher:
    def __init__(self, fn: Callable[[list[Any]], list[Any]], max_batch: int, name: str,
                 observe: Callable[[int, float], None] | None = None):  # fmt: skip
        self.fn, self.max_batch, self.name, self.observe = fn, max_batch, name, observe
        self._queue: queue.SimpleQueue = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    async def submit(self, job: Any) -> Any:
        loop = asyncio.get_running_loop()
        fut = loop.create_future()
        self._queue.put((job, fut, loop))
        return await fut

    def _run(self) -> None:
        while True:
            first = self._queue.get()
            if first is _STOP:
                return
            batch = [first]
            while len(batch) < self.max_batch:
                try:
                    item = self._queue.get_nowait()
                except queue.Empty:
                    break
                if item is _STOP:
                    self._queue.put(_STOP)
                    break
                batch.append(item)
            t0 = time.perf_counter()
            try:
                results = self.fn([job for job, _, _ in batch])
                outcomes = [(r, None) for r in results]
            except Exception as e:  # noqa: BLE001 - handed to every waiting request
                log.exception("%s: a batch of %d failed", self.name, len(batch))
                outcomes = [(None, e)] * len(batch)
            if self.observe:
                self.observe(len(batch), time.perf_counter() - t0)
            for (_, fut, loop), (result, error) in zip(batch, outcomes):
                loop.call_soon_threadsafe(_resolve, fut, result, error)

    def close(self) -> None:
        self._queue.put(_STOP)
        self._thread.join(timeout=10)


def _resolve(fut: asyncio.Future, result: Any, error: BaseException | None) -> None:
    if fut.done():  # the request was cancelled (client went away)
        return
    if error is None and isinstance(result, BaseException):  # `fn` refused this one job
        error = result
    if error is not None:
        fut.set_exception(error)
    else:
        fut.set_result(result)
