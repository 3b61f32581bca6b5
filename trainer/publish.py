"""The publisher: the one writer of model versions and of their `items_<version>` collections.

Whoever trained the model (the incremental trainer after each window, `learn model publish RUN_DIR`
for an offline run, the benchmark/test fixture bench/seed.py) hands it here with the catalogue's raw
content embeddings, and a version is written in four steps (store/registry.py has the file rules):

1. stage: the model artefact (trainer/checkpoint.py: model.safetensors + model.json, the format
   `learn train` writes too), the exported item tower, the optimiser state if any, and config.json
   (the version record: model config, where it came from, its window and metrics); commit = one rename;
2. fill: every item's item-tower vector, computed by `LEARN.encode_items` from the raw vectors (the
   call serving and the encoder worker make), into the version's collection; a model with a non-zero
   content-kNN weight (trainer/history.py) serves d_out + d_llm wide vectors (`LEARN.served_dim`), and
   one with a chosen EASE term (trainer/collab.py) collab_rank more: each item's factor row Q[row],
   looked up by its string id in the term's id index (zeros for an item the fit never saw: content
   alone), so the served inner product is the model's score. The index and Q are files of the version
   (store/collab.py) for the encoder worker and serving;
3. mark it PUBLISHED;
4. promote (optional): CURRENT names it, atomically; old versions and their collections are pruned.
A crash anywhere leaves CURRENT on the previous complete version; `recover()` removes what it left.
The registry is a folder or an S3 bucket (store/s3_registry.py): the same steps, in the same order.
On S3 two publishers may run at once: each claims its own version name, and a promotion never
replaces a CURRENT that already names a newer version. `recover()` is for a publisher starting
alone: it removes every version not yet PUBLISHED, another publisher's one in flight included.

The exported item tower (`item_tower.pt2`, a `torch.export` program: raw content (N, d_raw) -> item
vectors (N, d_out)) is for the encoder worker only. It adds the vectors of items encoded after a
version was published to that version's collection, so a new item is searchable about a second after
its record arrives, and it must not import trainer/ (encoder/ comes before trainer/ in the flow). A
torch.export program is a graph stored as JSON with its tensors as raw bytes: loading it runs no
archived code (encoder/worker.py refuses an archive whose sample inputs need more than tensors).
Serving needs no such program: it imports the model module and reads the safetensors weights.
"""

from __future__ import annotations

import copy
import json
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from store.collab import CollabIndex, write_collab
from store.registry import ITEM_TOWER, ModelRegistry, Version, items_collection
from store.s3_registry import S3Registry
from store.vectors import CONTENT, ITEMS_PREFIX, VectorStore
from trainer.checkpoint import is_checkpoint, load_checkpoint, save_checkpoint
from trainer.towers import LEARN

log = logging.getLogger(__name__)

CHUNK = 4096  # items per vector computation and upsert
OPTIMIZER = "optimizer.pt"


class _RawItemTower(torch.nn.Module):
    """What the exported program computes: LEARN.encode_items, nothing else (whether it appends the
    kNN term's dimensions is decided here, eagerly: the program holds no branch on a weight)."""

    def __init__(self, model: LEARN):
        super().__init__()
        self.model = model
        self.knn = model.knn_scale() is not None

    def forward(self, raw: torch.Tensor) -> torch.Tensor:
        return self.model.encode_items(raw, knn=self.knn)


def export_item_tower(model: LEARN, path: Path) -> Path:
    """Write `model`'s item tower as a torch.export program over any number of raw vectors."""
    if model.cfg.use_id_embedding:
        raise ValueError("a model with the item-ID embedding cannot be published: new items have no ID row")
    clean = LEARN(copy.deepcopy(model.cfg))  # the same weights without the catalogue's feature table
    clean.load_state_dict(model.state_dict())
    example = torch.randn(3, model.cfg.d_raw)
    program = torch.export.export(_RawItemTower(clean.eval()), (example,),
                                  dynamic_shapes=({0: torch.export.Dim("items", min=1)},))  # fmt: skip
    torch.export.save(program, str(path))
    return path


def item_vectors(model: LEARN, raw: np.ndarray, rows: np.ndarray | None = None) -> np.ndarray:
    """(N, d_raw) raw content embeddings -> (N, model.served_dim(ids=...)) float32 item vectors, in
    chunks; `rows` (N,): the items' rows in the EASE term's index (store/collab.py), for a model with
    a chosen term (None: the content model's vectors)."""
    out = []
    with torch.inference_mode():
        for k in range(0, len(raw), CHUNK):
            ids = None if rows is None else torch.from_numpy(np.asarray(rows[k : k + CHUNK], np.int64))
            out.append(model.encode_items(torch.from_numpy(np.ascontiguousarray(raw[k : k + CHUNK], np.float32)), ids=ids))
    return torch.cat(out).numpy() if out else np.zeros((0, model.served_dim(ids=rows is not None)), np.float32)


def collab_index(model: LEARN, ids: Sequence[str], raw: np.ndarray, collab_ids: Sequence[str] | None) -> CollabIndex | None:
    """The id index and item factors of `model`'s EASE term (None without a chosen term). `collab_ids`:
    the string ids of the fitted rows (an offline run's checkpoint records them, `collab_item_ids`);
    None: the catalogue (`ids`, `raw`) must start with the fitted items, in order (a model fitted over
    the catalogue it is published with, as the incremental trainer's), which their content checks."""
    if not model.collab_active():
        return None
    n = len(model.collab.item_factor)
    if collab_ids is None:
        with torch.no_grad():
            feats = model.features(torch.from_numpy(np.ascontiguousarray(raw, np.float32)))
        if not model.collab.fits(feats):
            raise ValueError(f"the model's EASE term indexes {n} items that are not the first {n} of the catalogue "
                             f"published: pass collab_ids (the checkpoint's collab_item_ids)")  # fmt: skip
        collab_ids = ids[:n]
    if len(collab_ids) != n:
        raise ValueError(f"the model's EASE term has {n} item rows and {len(collab_ids)} collab ids were given")
    return CollabIndex.build(collab_ids, model.collab.item_factor.detach().cpu().numpy())


def read_content(vectors: VectorStore, ids: Sequence[str]) -> tuple[list[str], np.ndarray]:
    """The raw content embeddings of `ids` in the `content` collection -> (the ids found, (n, d_raw))."""
    rows = {}
    for k in range(0, len(ids), 2048):
        rows.update(vectors.get(CONTENT, ids[k : k + 2048], with_vectors=True))
    found = [i for i in ids if i in rows]
    if not found:
        return [], np.zeros((0, 0), np.float32)
    return found, np.stack([rows[i].vector for i in found]).astype(np.float32)


def collab_summary(collab: CollabIndex | None, ids: Sequence[str]) -> dict | None:
    """The version record's account of its EASE term: its rows, its rank, how many catalogue items
    have a row (the others are served as content alone); a warning when none has."""
    if collab is None:
        return None
    known = int((collab.rows(ids) < len(collab.ids)).sum())
    if known == 0:
        log.warning("no item of the catalogue published is in the EASE term's id index (%d ids): the term "
                    "adds nothing; are collab_ids the catalogue's ids?", len(collab.ids))  # fmt: skip
    return {"items": len(collab.ids), "rank": collab.rank, "catalogue_items_with_a_row": known}


@dataclass
class Publisher:
    registry: ModelRegistry | S3Registry  # store/registry.py: open_registry(settings)
    vectors: VectorStore
    keep_versions: int = 5
    pause: Callable[[str], None] = lambda point: None  # fault injection at "after_commit", "mid_vectors"

    def publish(self, model: LEARN, ids: Sequence[str], raw: np.ndarray, record: dict | None = None,
                promote: bool = True, optimizer: dict | None = None,
                collab_ids: Sequence[str] | None = None) -> Version:  # fmt: skip
        """Write `model` as the next version over the catalogue (`ids`, raw vectors (N, d_raw));
        `record` (source, window, metrics, ...) goes into its config.json. `collab_ids`: the string
        ids of the EASE term's rows, when they are not the catalogue's first ones (`collab_index`)."""
        raw = np.asarray(raw, np.float32)
        if raw.shape != (len(ids), model.cfg.d_raw):
            raise ValueError(f"the catalogue's raw vectors are {raw.shape}, the model reads {model.cfg.d_raw} wide "
                             f"rows and {len(ids)} ids were given (another encoder?)")  # fmt: skip
        training = model.training
        model.eval()
        try:
            collab = collab_index(model, list(ids), raw, collab_ids)
            version = self._write(model, list(ids), raw, record or {}, optimizer, collab)
        finally:
            model.train(training)
        if promote:  # a concurrent publisher's newer version stays served (S3: conditional PUT)
            self.registry.promote(version.name, newer_only=True)
        for old in self.registry.prune(self.keep_versions):
            if self.vectors.has(items_collection(old)):
                self.vectors.drop(items_collection(old))
        return version

    def _write(self, model: LEARN, ids: list[str], raw: np.ndarray, record: dict, optimizer: dict | None,
               collab: CollabIndex | None) -> Version:  # fmt: skip
        name, stage = self.registry.new_version()
        save_checkpoint(model, stage, metrics=record.get("metrics"), extra={"source": record.get("source")})
        export_item_tower(model, stage / ITEM_TOWER)  # content only: the worker appends the EASE rows
        if collab is not None:
            write_collab(stage, collab)
        if optimizer is not None:
            torch.save(optimizer, stage / OPTIMIZER)
        config = {"version": name, "model": model.cfg.to_dict(), "items": len(ids), "created_at": time.time(),
                  "collab": collab_summary(collab, ids), **record}  # fmt: skip
        (stage / "config.json").write_text(json.dumps(config, indent=2))
        version = self.registry.commit_version(name)
        self.pause("after_commit")
        self.vectors.ensure_collection(version.collection, model.served_dim(ids=collab is not None))
        for k in range(0, len(ids), CHUNK):
            rows = None if collab is None else collab.rows(ids[k : k + CHUNK])
            self.vectors.upsert(version.collection, ids[k : k + CHUNK], item_vectors(model, raw[k : k + CHUNK], rows),
                                model_id=name)  # fmt: skip
            self.pause("mid_vectors")
        self.registry.mark_published(name)
        return version

    def recover(self) -> list[Version]:
        """Remove what a crashed publish left (staging, versions never marked published, collections
        of versions that never got committed); -> the complete versions, oldest first."""
        self.registry.clean_staging()
        complete = []
        for v in self.registry.versions():
            if v.published:
                complete.append(v)
                continue
            log.warning("removing incomplete version %s (crashed publish)", v.name)
            if self.vectors.has(v.collection):
                self.vectors.drop(v.collection)
            self.registry.remove(v.name)
        known = {v.collection for v in complete}
        for name in self.vectors.collections():
            if name.startswith(ITEMS_PREFIX) and name not in known:
                self.vectors.drop(name)
        return complete


def load_version(version: Version, raw: torch.Tensor | None = None) -> tuple[LEARN, dict | None]:
    """A published version's model (eval mode) and its optimiser state (None if it has none)."""
    model, _ = load_checkpoint(version.path, raw)
    opt_path = version.path / OPTIMIZER
    return model, torch.load(opt_path, weights_only=True) if opt_path.exists() else None


def publish_run(run_dir: Path, registry: ModelRegistry | S3Registry, vectors: VectorStore, promote: bool = True,
                keep_versions: int = 5) -> Version:  # fmt: skip
    """`learn model publish RUN_DIR`: serve a model trained offline over the live catalogue (the
    vector store's `content` collection, written by the encoder worker)."""
    ck = run_dir / "checkpoint" if is_checkpoint(run_dir / "checkpoint") else run_dir
    if not is_checkpoint(ck):
        raise FileNotFoundError(f"{run_dir} holds no model artefact (model.safetensors + model.json, or checkpoint/ "
                                f"with them): was it written by `learn train` with a LEARN model?")  # fmt: skip
    model, meta = load_checkpoint(ck)
    if not vectors.has(CONTENT) or vectors.count(CONTENT) == 0:
        raise RuntimeError("the vector store has no content embeddings yet: run the encoder worker (learn up) first")
    ids, raw = read_content(vectors, vectors.ids(CONTENT))
    record = {"source": "offline", "run_dir": str(run_dir), "metrics": meta.get("metrics", {}),
              "trained_on": meta.get("extra", {})}  # fmt: skip
    collab_ids = meta.get("extra", {}).get("collab_item_ids")  # the EASE term's rows (trainer/offline.py)
    return Publisher(registry, vectors, keep_versions).publish(model, ids, raw, record, promote, collab_ids=collab_ids)
