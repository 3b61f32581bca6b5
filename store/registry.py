"""The model registry: published versions of the twin towers and the pointer serving follows.

Layout under the registry root:
    versions/<name>/           one complete version (written elsewhere, then renamed into place)
        model.safetensors      the model artefact (trainer/checkpoint.py, the format `learn train`
        model.json             writes too): weights incl. the feature step's whitening; config, metrics
        item_tower.pt2         torch.export program, raw content (N, d_raw) -> item vectors (N, d_out),
                               for the encoder worker (which must not import trainer/)
        optimizer.pt           the optimiser state (incremental versions only: the warm start)
        config.json            the version record: model config, source, data window, metrics, created time
        PUBLISHED              written last, once the version's vector collection is complete
    CURRENT                    JSON {"version": name, "collection": vector collection}: what serving uses
    .staging/                  versions being written (never read by anyone else)
and in the vector store, `items_<name>` (`items_collection`): the version's item-tower vectors.

Publishing is four steps, each atomic: `stage()` a directory and `commit_version()` renames it into
`versions/`; the caller fills the vector collection and calls `mark_published()`; `promote()` (which
refuses a version not marked published) replaces CURRENT with os.replace. A crash at any point leaves
CURRENT naming the previous complete version. trainer/publish.py is the one caller that writes.
`CurrentFollower` is how readers (the encoder worker, serving) follow CURRENT. This module knows files,
not models: it never imports torch.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

CURRENT = "CURRENT"
PUBLISHED = "PUBLISHED"
VERSION_PREFIX = "v"
ITEMS_PREFIX = "items_"
ITEM_TOWER = "item_tower.pt2"
REQUIRED = ("model.safetensors", "model.json", ITEM_TOWER, "config.json")


def items_collection(version: str) -> str:
    """The vector collection of a model version's item-tower vectors."""
    return f"{ITEMS_PREFIX}{version}"


@dataclass(frozen=True)
class Version:
    name: str
    path: Path

    @property
    def config(self) -> dict:
        return json.loads((self.path / "config.json").read_text())

    @property
    def collection(self) -> str:
        return items_collection(self.name)

    @property
    def published(self) -> bool:
        return (self.path / PUBLISHED).exists()

    @property
    def item_tower_path(self) -> Path:
        return self.path / ITEM_TOWER


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_atomic(path: Path, data: bytes) -> None:
    """Write a file so that readers see the old or the new content, never a mix."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    _fsync_dir(path.parent)


class ModelRegistry:
    def __init__(self, root: Path):
        self.root = root
        self.versions_dir = root / "versions"
        self.staging_dir = root / ".staging"
        self.versions_dir.mkdir(parents=True, exist_ok=True)
        self.staging_dir.mkdir(parents=True, exist_ok=True)

    # ---- reading ----
    def versions(self) -> list[Version]:
        """Complete versions, oldest first."""
        names = sorted(p.name for p in self.versions_dir.iterdir() if p.is_dir())
        return [Version(n, self.versions_dir / n) for n in names]

    def get(self, name: str) -> Version:
        path = self.versions_dir / name
        if not path.is_dir():
            known = ", ".join(v.name for v in self.versions()) or "none"
            raise KeyError(f"no model version {name!r} (known: {known})")
        return Version(name, path)

    def current(self) -> Version | None:
        """The version serving uses now, or None before the first promotion."""
        try:
            pointer = json.loads((self.root / CURRENT).read_text())
        except FileNotFoundError:
            return None
        return self.get(pointer["version"])

    def pointer_mtime(self) -> float:
        """Changes whenever CURRENT is replaced: cheap polling for readers that cache a version."""
        try:
            return (self.root / CURRENT).stat().st_mtime_ns / 1e9
        except FileNotFoundError:
            return 0.0

    # ---- publishing ----
    def next_name(self) -> str:
        existing = [int(v.name[1:]) for v in self.versions() if v.name[1:].isdigit()]
        return f"{VERSION_PREFIX}{(max(existing) + 1) if existing else 1:06d}"

    def stage(self, name: str) -> Path:
        """A fresh private directory to write version `name` into."""
        path = self.staging_dir / name
        shutil.rmtree(path, ignore_errors=True)
        path.mkdir(parents=True)
        return path

    def commit_version(self, name: str) -> Version:
        """Move a fully written staging directory into versions/ (one rename)."""
        src = self.staging_dir / name
        for required in REQUIRED:
            if not (src / required).exists():
                raise FileNotFoundError(f"version {name} is incomplete: {required} missing")
        for f in src.iterdir():
            with open(f, "rb") as fh:
                os.fsync(fh.fileno())
        dst = self.versions_dir / name
        os.rename(src, dst)
        _fsync_dir(self.versions_dir)
        return Version(name, dst)

    def mark_published(self, name: str) -> None:
        """Record that version `name` is complete (its vectors are all written)."""
        write_atomic(self.get(name).path / PUBLISHED, b"")

    def promote(self, name: str) -> Version:
        """Point serving at version `name` (atomic)."""
        version = self.get(name)
        if not version.published:
            raise ValueError(f"version {name} is not completely published; refusing to serve it")
        pointer = {"version": name, "collection": version.collection, "promoted_at": time.time()}
        write_atomic(self.root / CURRENT, json.dumps(pointer).encode())
        return version

    def prune(self, keep: int) -> list[str]:
        """Delete all but the newest `keep` versions, never the current one; return the names removed."""
        current = self.current()
        removable = [v for v in self.versions()[:-keep] if not current or v.name != current.name]
        for v in removable:
            shutil.rmtree(v.path, ignore_errors=True)
        return [v.name for v in removable]

    def clean_staging(self) -> None:
        """Remove what a crashed publish left half-written."""
        shutil.rmtree(self.staging_dir, ignore_errors=True)
        self.staging_dir.mkdir(parents=True, exist_ok=True)


class CurrentFollower:
    """Follows CURRENT for a reader that loads a version (the encoder worker, serving): `poll()` costs
    one stat while nothing changes and returns the version CURRENT newly names; the reader loads it and
    calls `accept()`. A load that fails is not accepted, so the next poll offers the version again."""

    def __init__(self, registry: ModelRegistry):
        self.registry = registry
        self.version: Version | None = None  # the accepted (loaded) version
        self._seen = -1.0  # CURRENT's mtime when last looked at with nothing new to load
        self._offered = -1.0

    def poll(self) -> Version | None:
        mtime = self.registry.pointer_mtime()
        if mtime == self._seen:
            return None
        current = self.registry.current()
        if current is None or (self.version is not None and current.name == self.version.name):
            self._seen = mtime
            return None
        self._offered = mtime
        return current

    def accept(self, version: Version) -> None:
        self.version, self._seen = version, self._offered
