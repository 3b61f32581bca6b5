"""The incremental trainer: LEARN's towers follow the interaction stream, one event-time window at a time.

For each closed window [start, end) (tumbling, `trainer.window_s` of event time, or closed every
`trainer.window_events` applied events), in order:
1. test: the current version ranks every event of the window against all known items, given the
   user's sequence before it (the offline protocol of trainer/evaluation.py) -> prequential NDCG@10
   and Recall@10 of the window;
2. train: the sequences (cut at `end`: never the future) of the users who changed in the window, plus a
   replay sample of older users against forgetting, for a bounded number of optimiser steps,
   warm-started from the current version with its optimiser state; each changed user's last event of
   the window is held out. As offline (issue 17), the towers train without the content-kNN term and
   the history penalty, which are then chosen on the held-out events (trainer/history.choose_knn_blend)
   and published with the weights, so the served model is the offline one. With an EASE term
   (trainer/collab.py, `model.collab_rank` > 0 and `trainer.collab_rank` > 0), every
   `trainer.collab_every` windows it is fitted on the sequences the trainer holds (every user seen so
   far, cut at the window's end, without this window's held-out events), at `trainer.collab_rank` and
   the one lambda `trainer.collab_lambda`, and its weight is chosen with the kNN blend on the same
   held-out sample (trainer/collab.choose_collab_blend, offline's choice on validation); the fit's
   time comes out of the next window's training budget. Its rows index the catalogue's first items
   (new items are appended: an item added after the fit keeps the content-only score until the next);
3. gate: the candidate and the current version are scored on the held-out events; a candidate worse by
   more than `trainer.promote_margin` NDCG@10 is published but not promoted (logged), and training
   continues from the promoted weights;
4. publish (trainer/publish.py): the model artefact, its optimiser state and the exported item tower
   are staged and committed; every item's item-tower vector goes into the version's collection; a
   PUBLISHED marker is written; then the serving pointer is switched atomically. A crash anywhere
   leaves serving on the previous complete version; on restart, incomplete versions and orphan
   collections are removed and training resumes after the last published window, warm-started from
   the served version (which may be an offline run published with `learn model publish`).

`IncrementalTrainer.process` is these four steps as one plain loop body, in the style of River's
progressive validation (`test`, `train`, `gate`, `publish`); the pure helpers below are unit-tested.
The maths (`OnlineLearner`) is separate from the I/O (`IncrementalTrainer`), so it is testable on
lists of sequences without a broker or a store.
"""

from __future__ import annotations

import json
import logging
import random
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from tenacity import Retrying, before_sleep_log, retry_if_result, stop_after_delay, stop_never, wait_fixed

from config import Settings
from store.registry import Version, open_registry
from store.state import Entry, StateReader
from streams.replica import state_reader
from store.vectors import CONTENT, VectorStore
from trainer.collab import choose_collab_blend
from trainer.evaluation import evaluate_examples
from trainer.history import choose_knn_blend
from trainer.offline import length_bucketed_batches, model_scorer, train_step
from trainer.publish import Publisher, load_version, read_content
from trainer.towers import LEARN, Features, TowerConfig

log = logging.getLogger(__name__)


# ---- pure helpers --------------------------------------------------------------------------------


def window_examples(
    seqs: dict[str, list[Entry]], start: float, end: float, index: dict[str, int], max_len: int
) -> list[tuple[list[int], int]]:
    """Prequential examples: each event in [start, end) with the user's known items before it."""
    out = []
    for seq in seqs.values():
        ids = [index.get(e.item_id) for e in seq]
        for k, e in enumerate(seq):
            if start <= e.event_time < end and ids[k] is not None:
                history = [i for i in ids[:k] if i is not None][-max_len:]
                if history:
                    out.append((history, ids[k]))
    return out


def training_sequence(seq: list[Entry], end: float, index: dict[str, int], max_len: int) -> list[int]:
    """A user's known items before `end`, oldest first, the last `max_len`."""
    return [index[e.item_id] for e in seq if e.event_time < end and e.item_id in index][-max_len:]


def split_holdout(seqs: list[list[int]], min_len: int = 3) -> tuple[list[list[int]], list[tuple[list[int], int]]]:
    """Hold out the last item of each sequence long enough to keep two for training."""
    train, held = [], []
    for s in seqs:
        if len(s) >= min_len:
            train.append(s[:-1])
            held.append((s[:-1], s[-1]))
        else:
            train.append(s)
    return train, held


# ---- the maths ----------------------------------------------------------------------------------


class OnlineLearner:
    """The twin towers over a growing catalogue, trained in bounded steps with a persistent optimiser."""

    def __init__(self, cfg: TowerConfig, features: Features, lr: float, weight_decay: float, seed: int):
        self.cfg = cfg
        torch.manual_seed(seed)
        self.model = LEARN(cfg, features=features)
        self.opt = torch.optim.AdamW(self.model.parameters(), lr=lr, weight_decay=weight_decay)
        self.rng = random.Random(seed)

    def set_catalogue(self, raw: np.ndarray) -> None:
        """Replace the content table (items may have been added). (N, d_raw) raw embeddings."""
        self.model.set_catalogue(torch.from_numpy(np.asarray(raw, np.float32)))

    def evaluate(self, examples: list[tuple[list[int], int]]) -> dict[str, float]:
        if not examples:
            return {}
        examples = sorted(examples, key=lambda e: len(e[0]))
        return evaluate_examples(model_scorer(self.model, self.cfg.max_seq_len), examples)

    def train(self, seqs: list[list[int]], steps: int, batch_size: int, max_s: float = float("inf")) -> dict:
        """Up to `steps` optimiser steps over `seqs` (cycled in length-bucketed batches), stopping
        early after `max_s` seconds so a window's training never outlasts the window."""
        deadline = time.perf_counter() + max_s
        seqs = [s for s in seqs if len(s) >= 2]
        if not seqs or steps <= 0:
            return {"steps": 0, "loss": None, "samples": 0}
        self.model.train()
        losses, samples, done = [], 0, 0
        while done < steps:
            for batch in length_bucketed_batches([len(s) for s in seqs], batch_size, self.rng):
                losses.append(train_step(self.model, self.opt, [seqs[j] for j in batch], self.cfg.max_seq_len))
                samples += len(batch)
                done += 1
                if done >= steps or time.perf_counter() > deadline:
                    break
            if time.perf_counter() > deadline:
                break
        self.model.eval()
        return {"steps": done, "loss": float(np.mean(losses)), "samples": samples}

    # -- issue 17's post-training step, as offline (trainer/offline.train_model) -------------------
    def clear_blend(self, collab: bool = False) -> None:
        """Zero the terms `choose_blend` sets (the kNN weight; the history penalty where it is not
        learned), so a window trains the towers as offline training does: without them; with `collab`
        also the EASE term's weight (it is refitted after training: the kNN blend is then chosen
        without it, as offline)."""
        if collab and self.model.collab is not None:
            with torch.no_grad():
                self.model.collab.weight.fill_(0.0)
        h = self.model.history
        if h is None or not self.cfg.history_knn_blend:
            return
        with torch.no_grad():
            h.knn_weight.fill_(0.0)
            if h.age_bias is not None and not h.age_bias.requires_grad:
                h.age_bias.fill_(0.0)

    def choose_blend(self, examples: list[tuple[list[int], int]], at_most: int = 0) -> dict | None:
        """After training: the kNN weight and history penalty with the best NDCG@10 (mean of both
        conventions) on `examples`, a random `at_most` of them (0: all) (trainer/history.choose_knn_blend,
        offline's choice on validation); None when the settings do not blend (or there is nothing to
        choose on: the terms stay cleared)."""
        if not (self.cfg.history_knn_blend and self.model.history is not None and examples):
            return None
        examples = self.blend_sample(examples, at_most)
        chosen = choose_knn_blend(self.model, lambda m: model_scorer(m, self.cfg.max_seq_len), examples)
        return {"weight": chosen["weight"], "penalty": chosen["penalty"]}

    def blend_sample(self, examples: list[tuple[list[int], int]], at_most: int = 0) -> list[tuple[list[int], int]]:
        """A random `at_most` of `examples` (0 or fewer than that: all), shortest history first."""
        if 0 < at_most < len(examples):
            examples = self.rng.sample(examples, at_most)
        return sorted(examples, key=lambda e: len(e[0]))

    def choose_collab(self, fit_seqs: list[list[int]], examples: list[tuple[list[int], int]], lam: float,
                      rank: int, knn: dict | None = None) -> dict | None:  # fmt: skip
        """Fit the EASE term on `fit_seqs` (training sequences: no target of `examples` in them) at
        `rank` (at most the model's served collab_rank; the rest stays zero) with lambda `lam`, and
        set its weight, with the kNN weight and history penalty (`knn`: choose_blend's choice joins
        the grid), to the best NDCG@10 on `examples` (trainer/collab.choose_collab_blend, weight 0 on
        the grid). -> the choice; None when the model has no term or nothing to fit or choose on."""
        if self.model.collab is None or rank <= 0 or not examples or not any(fit_seqs):
            return None
        served = self.cfg.collab_rank
        self.cfg.collab_rank = min(rank, served)  # the fit's rank: CollabScore.set pads to the served one
        try:
            chosen = choose_collab_blend(self.model, lambda m: model_scorer(m, self.cfg.max_seq_len), fit_seqs,
                                         examples, lambdas=(lam,), start=knn)  # fmt: skip
        finally:
            self.cfg.collab_rank = served
        keys = ("lambda", "rank", "collab_weight", "knn_weight", "penalty", "valid_history_excluded_ndcg@10",
                "valid_recbole_ndcg@10")  # fmt: skip
        return {k: chosen[k] for k in keys}

    # -- state (weights + optimiser) -------------------------------------------------------------
    def load(self, weights: dict, opt_state: dict | None) -> None:
        """Warm start from a published version's weights and optimiser state."""
        self.model.load_state_dict(weights)
        if opt_state is not None:
            self.opt.load_state_dict(opt_state)
        self.model.eval()

    def snapshot(self) -> tuple[dict, dict]:
        return (
            {k: v.clone() for k, v in self.model.state_dict().items()},
            _clone_tree(self.opt.state_dict()),
        )

    def restore(self, snap: tuple[dict, dict]) -> None:
        self.model.load_state_dict(snap[0])
        self.opt.load_state_dict(snap[1])


def _clone_tree(x):
    if isinstance(x, torch.Tensor):
        return x.clone()
    if isinstance(x, dict):
        return {k: _clone_tree(v) for k, v in x.items()}
    if isinstance(x, list):
        return [_clone_tree(v) for v in x]
    return x


# ---- the process ---------------------------------------------------------------------------------


@dataclass
class WindowResult:
    window: int
    start: float
    end: float
    events: int
    users: int
    replay_users: int
    prequential: dict
    holdout_current: dict
    holdout_candidate: dict
    train: dict
    train_s: float
    publish_s: float
    version: str | None
    promoted: bool
    published_at: float
    items: int
    note: str = ""
    extra: dict = field(default_factory=dict)


@dataclass
class Window:
    """What one window's steps read: the catalogue index, the changed users and their sequences."""

    start: float
    end: float
    index: dict[str, int]
    users: list[str]  # sorted
    seqs: dict[str, list[Entry]]
    examples: list[tuple[list[int], int]]  # the prequential test events


class IncrementalTrainer:
    """Reads the state store and the content vectors, publishes versions through trainer/publish.py.

    `process` is the window as one plain loop body, in the order of River's progressive validation:
    `test` the current version on the window, `train` a candidate, `gate` it, `publish` it."""

    def __init__(self, settings: Settings, vectors: VectorStore, reader: StateReader | None = None):
        self.s = settings
        self.ts = settings.trainer
        self.registry = open_registry(settings)
        self.publisher = Publisher(self.registry, vectors, self.ts.keep_versions, self._pause)
        self.vectors = vectors
        self.reader = reader or state_reader(settings, "trainer")  # secondary or changelog replica (state.reader)
        self.metrics_path = settings.data_dir / "trainer" / "windows.jsonl"
        self.metrics_path.parent.mkdir(parents=True, exist_ok=True)
        self.learner: OnlineLearner | None = None
        self.catalogue_ids: list[str] = []
        self.catalogue_raw = np.zeros((0, 0), np.float32)
        self.next_start: float | None = None
        self.windows_done = 0
        self.applied_at_close = 0
        self.replay_pool: list[str] = []
        self.popularity: dict[str, int] = {}  # item -> events seen in processed windows (a baseline)
        self.histories: dict[str, list[int]] = {}  # user -> sequence cut at the last window's end (EASE's data)
        self.collab_s = 0.0  # the last EASE fit's seconds (taken from the next window's training budget)
        self.rng = random.Random(settings.model.seed)

    # -- recovery ---------------------------------------------------------------------------
    def recover(self) -> Version | None:
        """Clean what a crash left, then resume from the newest complete version."""
        complete = self.publisher.recover()
        current = self.registry.current()
        windowed = [v.config["window"] for v in complete if "window" in v.config]  # offline versions have none
        if windowed:
            self.next_start = windowed[-1]["end"]
            self.windows_done = windowed[-1]["index"] + 1
            self.applied_at_close = windowed[-1].get("applied", 0)
        if complete:  # warm start from the served version (it may be one published from an offline run)
            self._refresh_catalogue()
            promoted = current or complete[-1]
            model, opt_state = load_version(promoted)
            self.learner = self._new_learner(model.features, model.cfg)
            self.learner.set_catalogue(self.catalogue_raw)
            self.learner.load(model.state_dict(), opt_state)
            if self.next_start is not None:
                self.histories = self.held_sequences(self.next_start)
            log.info("resuming after window %d (end %s) from version %s", self.windows_done - 1,
                     self.next_start, promoted.name)  # fmt: skip
        return current

    # -- inputs -------------------------------------------------------------------------------
    def _refresh_catalogue(self) -> None:
        """Add items the encoder worker wrote since the last window (their raw content vectors)."""
        if not self.vectors.has(CONTENT):
            return
        known = set(self.catalogue_ids)
        new, vecs = read_content(self.vectors, [i for i in self.vectors.ids(CONTENT) if i not in known])
        if not new:
            return
        self.catalogue_raw = vecs if not self.catalogue_ids else np.concatenate([self.catalogue_raw, vecs])
        self.catalogue_ids = self.catalogue_ids + new

    def _new_learner(self, features: Features, cfg: TowerConfig | None = None) -> OnlineLearner:
        ms = self.s.model
        if cfg is None:  # a fresh model serves the EASE term at the trainer's rank (0: none)
            cfg = TowerConfig.from_settings(ms, len(self.catalogue_ids), features.mean.shape[0], features.d_out)
            cfg.collab_rank = min(cfg.collab_rank, self.ts.collab_rank)
        return OnlineLearner(cfg, features, ms.lr, ms.weight_decay, ms.seed)

    def closed_window(self) -> tuple[float, float] | None:
        """The next window to process, if the watermark has passed its end."""
        self.reader.catch_up()
        watermark = self.reader.watermark()
        if watermark <= 0:
            return None
        slot = self.s.state.slot_s
        if self.next_start is None:  # the first window starts at the first slot with data
            self.next_start = self.reader.first_slot()
            if self.next_start is None:
                return None
        if self.ts.window_events > 0:  # close every N applied events, at a slot boundary
            applied = self.reader.counters()["applied"]
            end = watermark // slot * slot
            if applied - self.applied_at_close >= self.ts.window_events and end > self.next_start:
                return self.next_start, end
            return None
        end = self.next_start + self.ts.window_s
        return (self.next_start, end) if watermark >= end + self.ts.grace_s else None

    def read_window(self, start: float, end: float) -> Window:
        self._refresh_catalogue()
        index = {item: i for i, item in enumerate(self.catalogue_ids)}
        users = sorted(self.reader.changed_users(start, end))
        seqs = {u: self.reader.sequence(u) or [] for u in users}
        examples = window_examples(seqs, start, end, index, self.s.model.max_seq_len)
        return Window(start, end, index, users, seqs, examples)

    # -- one window: test, train, gate, publish ------------------------------------------------
    def process(self, start: float, end: float) -> WindowResult:
        t0 = time.perf_counter()
        w = self.read_window(start, end)
        note = self._ensure_learner()
        self.learner.set_catalogue(self.catalogue_raw)
        has_current = self.registry.current() is not None
        prequential, popularity = self.test(w) if has_current else ({}, {})
        add_counts(self.popularity, window_items(w.seqs, start, end))
        train_seqs, held, replay_users = self.training_set(w)
        held_current = self.learner.evaluate(held) if has_current else {}
        before = self.learner.snapshot()
        refit = self.refit_collab(w)
        self.learner.clear_blend(collab=refit)
        budget = max(self.ts.max_train_s - (self.collab_s if refit else 0.0), 0.25 * self.ts.max_train_s)
        train = self.learner.train(train_seqs, self.ts.steps_per_window, self.ts.batch_size, budget)
        sample = self.learner.blend_sample(held, self.ts.blend_examples)  # then gated on all of held
        train["knn_blend"] = self.learner.choose_blend(sample)
        if refit:
            t2 = time.perf_counter()
            fit_seqs = self.collab_sequences(w, train_seqs[: len(w.users)])
            train["collab_blend"] = self.learner.choose_collab(fit_seqs, sample, self.ts.collab_lambda,
                                                               self.ts.collab_rank, train["knn_blend"])  # fmt: skip
            self.collab_s = train["collab_s"] = time.perf_counter() - t2
            train["collab_users"] = len(fit_seqs)
        held_candidate = self.learner.evaluate(held)
        promote = gate(held_current if has_current else None, held_candidate, self.ts.promote_margin)
        train_s = time.perf_counter() - t0

        t1 = time.perf_counter()
        applied = self.reader.counters()["applied"]
        window = {"index": self.windows_done, "start": start, "end": end, "applied": applied}
        metrics = {"prequential": prequential, "prequential_popularity": popularity,
                   "holdout_current": held_current, "holdout_candidate": held_candidate}  # fmt: skip
        version = self.publish(window, metrics, promote)
        if not promote:
            log.warning("version %s not promoted: holdout NDCG@10 %.4f < current %.4f - margin %.3f",
                        version.name, held_candidate.get("ndcg@10", 0), held_current.get("ndcg@10", 0),
                        self.ts.promote_margin)  # fmt: skip
            self.learner.restore(before)  # keep learning from the promoted weights
            note = (note + "; " if note else "") + "not promoted (holdout regression)"
        publish_s = time.perf_counter() - t1

        known = set(self.replay_pool)
        self.replay_pool.extend(u for u in w.users if u not in known)
        for u in w.users:  # their whole sequence up to the window's end (the held-out event is no target next)
            self.histories[u] = training_sequence(w.seqs[u], end, w.index, self.s.model.max_seq_len)
        self.next_start, self.applied_at_close = end, applied
        self.windows_done += 1
        result = WindowResult(
            window=window["index"], start=start, end=end, events=len(w.examples), users=len(w.users),
            replay_users=len(replay_users), prequential=prequential, holdout_current=held_current,
            holdout_candidate=held_candidate, train=train, train_s=train_s, publish_s=publish_s,
            version=version.name, promoted=promote, published_at=time.time(),
            items=len(self.catalogue_ids), note=note, extra={"prequential_popularity": popularity},
        )  # fmt: skip
        with open(self.metrics_path, "a") as f:
            f.write(json.dumps(result.__dict__) + "\n")
        return result

    def _ensure_learner(self) -> str:
        if self.learner is not None:
            return ""
        if len(self.catalogue_ids) < 2:
            raise RuntimeError("no content embeddings in the vector store yet: is the encoder worker running?")
        ms = self.s.model
        self.learner = self._new_learner(Features.fit(self.catalogue_raw, ms.whiten, ms.whiten_dim))
        return "first version: no model to test with"

    def refit_collab(self, w: Window) -> bool:
        """Whether this window fits the EASE term: every `collab_every` windows, and whenever the model
        has no active term (none yet, weight 0 chosen, or set_catalogue switched it off); never when
        its dense matrices would pass `trainer.collab_max_cells` (logged; a fitted term is kept)."""
        collab = self.learner.model.collab
        if collab is None or self.ts.collab_rank <= 0 or self.ts.collab_every <= 0:
            return False
        n_users = len(self.histories.keys() | set(w.users))
        if ease_cells(n_users, len(self.catalogue_ids)) > self.ts.collab_max_cells:
            log.warning("EASE term not fitted: %d users x %d items pass trainer.collab_max_cells (%d)",
                        n_users, len(self.catalogue_ids), self.ts.collab_max_cells)  # fmt: skip
            return False
        return self.windows_done % self.ts.collab_every == 0 or not self.learner.model.collab_active()

    def held_sequences(self, end: float) -> dict[str, list[int]]:
        """Every user's sequence cut at `end` (the EASE data a restarted trainer resumes with)."""
        index, max_len = {item: i for i, item in enumerate(self.catalogue_ids)}, self.s.model.max_seq_len
        out = {u: training_sequence(seq, end, index, max_len) for u, seq in self.reader.users()}
        return {u: seq for u, seq in out.items() if seq}

    def collab_sequences(self, w: Window, fresh_train: list[list[int]]) -> list[list[int]]:
        """EASE's training data: the held sequences of every earlier user who did not change in the
        window, plus the changed users' training sequences (`fresh_train`: held-out event removed)."""
        changed = set(w.users)
        return [s for u, s in self.histories.items() if u not in changed] + fresh_train

    def test(self, w: Window) -> tuple[dict, dict]:
        """Prequential: the current version, then a popularity ranking of the earlier windows, on the
        window's events (each given the user's history before it)."""
        return self.learner.evaluate(w.examples), self._popularity_baseline(w.examples)

    def training_set(self, w: Window) -> tuple[list[list[int]], list[tuple[list[int], int]], list[str]]:
        """The changed users' sequences cut at the window's end (last event held out) plus a replay
        sample of earlier users; -> (training sequences, held-out examples, replayed users)."""
        ms = self.s.model
        fresh = [training_sequence(w.seqs[u], w.end, w.index, ms.max_seq_len) for u in w.users]
        train_seqs, held = split_holdout(fresh)
        n_replay = min(len(self.replay_pool), int(self.ts.replay_ratio * len(w.users)))
        replay_users = self.rng.sample(self.replay_pool, n_replay) if n_replay else []
        for u in replay_users:
            train_seqs.append(training_sequence(self.reader.sequence(u) or [], w.end, w.index, ms.max_seq_len))
        return train_seqs, held, replay_users

    def _popularity_baseline(self, examples: list[tuple[list[int], int]]) -> dict[str, float]:
        """The same prequential test for a popularity ranking of the windows before this one."""
        if not examples:
            return {}
        pop = torch.tensor([float(self.popularity.get(i, 0)) for i in self.catalogue_ids])
        return evaluate_examples(lambda hs: pop.expand(len(hs), -1), examples)

    def publish(self, window: dict, metrics: dict, promote: bool) -> Version:
        record = {"source": "incremental", "window": window, "metrics": metrics}
        collab = self.learner.model.collab
        if self.learner.model.collab_active():  # as offline's checkpoint (trainer/offline.collab_extra)
            record["collab_item_ids"] = self.catalogue_ids[: len(collab.item_factor)]
        return self.publisher.publish(self.learner.model, self.catalogue_ids, self.catalogue_raw, record, promote,
                                      optimizer=self.learner.opt.state_dict())  # fmt: skip

    def _pause(self, point: str) -> None:
        """Fault injection for the crash test: sleep at a named point of the publish."""
        if self.ts.pause_at == point and self.ts.pause_s > 0:
            log.warning("pausing %.1fs at %s (fault injection)", self.ts.pause_s, point)
            time.sleep(self.ts.pause_s)

    # -- the loop -------------------------------------------------------------------------------
    def run(self, poll_s: float = 1.0, max_windows: int | None = None, idle_exit_s: float | None = None) -> Iterable[WindowResult]:
        """Process windows as they close, forever (or `max_windows`, or until idle for `idle_exit_s`)."""
        torch.set_num_threads(self.ts.threads)
        self.recover()
        done = 0
        while max_windows is None or done < max_windows:
            w = wait_for_window(self.closed_window, poll_s, idle_exit_s)
            if w is None:
                return
            yield self.process(*w)
            done += 1


def wait_for_window(closed_window, poll_s: float, idle_exit_s: float | None) -> tuple[float, float] | None:
    """Poll `closed_window()` every `poll_s` until it returns a window, or None after `idle_exit_s`."""
    waiting = Retrying(
        retry=retry_if_result(lambda w: w is None), wait=wait_fixed(poll_s), reraise=True,
        stop=stop_never if idle_exit_s is None else stop_after_delay(idle_exit_s),
        retry_error_callback=lambda state: None, before_sleep=before_sleep_log(log, logging.DEBUG),
    )  # fmt: skip
    return waiting(closed_window)


def ease_cells(n_users: int, n_items: int) -> int:
    """The largest dense matrix an EASE fit builds (trainer/collab.fit_ease), in cells: the (users x
    items) interactions, or the (items x items) weights."""
    return max(n_users, n_items) * n_items


def gate(current: dict | None, candidate: dict, margin: float) -> bool:
    """Promote the candidate unless it is worse than the current version on the holdout by more than
    `margin` NDCG@10 (no current version, or nothing held out: promote)."""
    if not current:
        return True
    return candidate.get("ndcg@10", 0.0) >= current.get("ndcg@10", 0.0) - margin


def window_items(seqs: dict[str, list[Entry]], start: float, end: float) -> dict[str, int]:
    """How many events of [start, end) each item has."""
    out: dict[str, int] = {}
    for seq in seqs.values():
        for e in seq:
            if start <= e.event_time < end:
                out[e.item_id] = out.get(e.item_id, 0) + 1
    return out


def add_counts(total: dict[str, int], counts: dict[str, int]) -> None:
    for k, n in counts.items():
        total[k] = total.get(k, 0) + n


def read_windows(path: Path) -> list[dict]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def plot_windows(rows: list[dict], path: Path) -> None:
    """Prequential NDCG@10 and Recall@10 per window (PNG)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    xs = [r["window"] for r in rows if r["prequential"]]
    fig, ax = plt.subplots(figsize=(7, 3.5))
    ax.plot(xs, [r["prequential"]["ndcg@10"] for r in rows if r["prequential"]], marker="o", label="NDCG@10")
    ax.plot(xs, [r["prequential"]["recall@10"] for r in rows if r["prequential"]], marker="s", label="Recall@10")
    ax.set_xlabel("window")
    ax.set_title("prequential (test, then train) per window")
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
