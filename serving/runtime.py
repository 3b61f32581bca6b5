"""Everything the API holds while it runs: store handles, the model follower, caches, threads."""

from __future__ import annotations

import logging
import threading

import torch

from config import Settings
from serving.ann import index_chooser
from serving.content import ContentCache
from serving.index import ModelFollower
from serving.metrics import ApiMetrics
from serving.recommend import Popularity, Recommender, StateView
from store.registry import open_registry
from store.titles import TitleReader
from store.vectors import VectorStore

log = logging.getLogger(__name__)


class Runtime:
    def __init__(self, settings: Settings, metrics: ApiMetrics):
        s = settings.serving
        if s.torch_threads > 0:
            torch.set_num_threads(s.torch_threads)
        self.settings, self.metrics = settings, metrics
        self.store = VectorStore(settings.vector_uri, settings.vectors.token).open()
        self.state = StateView(settings)
        self.titles = TitleReader(settings.titles_path)
        self.content = ContentCache(self.store, s.content_cache_items)
        self.follower = ModelFollower(open_registry(settings), self.store, s.search == "memory",
                                      on_content_change=self.content.invalidate, on_switch=self._switched,
                                      make_index=index_chooser(s))  # fmt: skip
        self.recommender = Recommender(settings, self.state, self.follower, self.content, self.titles, self.store,
                                       Popularity(settings, state=self.state), metrics.search.observe,
                                       lambda n, _: metrics.batch.observe(n))  # fmt: skip
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._follow_state, name="state-follower", daemon=True)

    def start(self) -> "Runtime":
        s = self.settings.serving
        self.follower.start(s.poll_s, s.sync_s)
        self._thread.start()
        return self

    def _switched(self, snap, seconds: float) -> None:
        self.metrics.switches.inc()
        self.metrics.load_seconds.set(seconds)
        self.metrics.served_at.set(snap.loaded_at)

    def _follow_state(self) -> None:
        """See new interactions and titles within `poll_s`."""
        while not self._stop.wait(self.settings.serving.poll_s):
            try:
                self.state.catch_up()
                self.titles.catch_up()
                snap = self.follower.snapshot
                self.metrics.index_items.set(len(snap.index) if snap and snap.index is not None else 0)
                self.metrics.content_cached.set(len(self.content))
                self.metrics.sync_seconds.set(self.follower.last_sync_s)
            except Exception:  # noqa: BLE001 - keep serving what was read
                log.exception("following the state store failed")

    @property
    def ready(self) -> bool:
        return self.follower.checked

    def close(self) -> None:
        self._stop.set()
        self.follower.stop()
        self._thread.join(timeout=10)
        self.recommender.close()
        self.state.close()
        self.titles.close()
        self.store.close()
