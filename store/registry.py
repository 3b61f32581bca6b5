"""The model registry: published versions of the twin towers and the pointer serving follows.

Layout under the registry root:
    versions/<name>/           one complete version (written elsewhere, then renamed into place)
        model.safetensors      the model artefact (trainer/checkpoint.py, the format `learn train`
        model.json             writes too): weights incl. the feature step's whitening; config, metrics
        item_tower.pt2         torch.export program, raw content (N, d_raw) -> item vectors (N, d_out),
                               for the encoder worker (which must not import trainer/)
        optimizer.pt           the optimiser state (incremental versions only: the warm start)
        collab_ids.json        a model with an EASE term only (store/collab.py): its rows' item ids
        collab_items.npy       and item factors, for the encoder worker and serving
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

The registry may also live on an object store (`registry.uri = "s3://bucket/prefix"`): the same
layout under the prefix, the same API (store/s3_registry.py: `S3Registry`), and every reader gets a
version as plain local files, downloaded into its cache first. `open_registry(settings)` picks the
backend; callers use only this API (versions, get, current, pointer_tag; new_version,
commit_version, mark_published, promote, prune, remove, clean_staging).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from config import Settings

log = logging.getLogger(__name__)

CURRENT = "CURRENT"
PUBLISHED = "PUBLISHED"
VERSION_PREFIX = "v"
ITEMS_PREFIX = "items_"
ITEM_TOWER = "item_tower.pt2"
REQUIRED = ("model.safetensors", "model.json", ITEM_TOWER, "config.json")


def items_collection(version: str) -> str:
    """The vector collection of a model version's item-tower vectors."""
    return f"{ITEMS_PREFIX}{version}"


class RegistryUnavailable(OSError):
    """The registry's store could not be reached or answered an error (S3: network, credentials)."""


class ConcurrentPublish(RuntimeError):
    """Another publisher replaced CURRENT between our read and our write, more often than we retried."""


def version_number(name: str) -> int:
    """v000012 -> 12 (-1 for a name not written by `new_version`)."""
    return int(name[1:]) if name.startswith(VERSION_PREFIX) and name[1:].isdigit() else -1


def next_version_name(names: list[str]) -> str:
    numbers = [version_number(n) for n in names]
    return f"{VERSION_PREFIX}{max(numbers, default=0) + 1:06d}"


@dataclass(frozen=True)
class Version:
    name: str
    path: Path  # a local directory with the version's files (an S3 registry: its download cache)
    registry: Any = field(default=None, compare=False, repr=False)  # the backend it was read from

    @property
    def config(self) -> dict:
        if self.registry is None or (self.path / "config.json").exists():
            return json.loads((self.path / "config.json").read_text())
        return self.registry.read_config(self.name)

    @property
    def collection(self) -> str:
        return items_collection(self.name)

    @property
    def published(self) -> bool:
        if self.registry is None:
            return (self.path / PUBLISHED).exists()
        return self.registry.is_published(self.name)

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


def pointer_bytes(version: Version) -> bytes:
    """CURRENT's content: the version, its collection and when it was promoted (so each write differs)."""
    return json.dumps({"version": version.name, "collection": version.collection, "promoted_at": time.time()}).encode()


def superseded(name: str, current: str) -> bool:
    """Whether CURRENT (`current`) already names a version newer than `name`."""
    return version_number(current) > version_number(name)


class ModelRegistry:
    """The registry in a local folder (the default backend)."""

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
        return [Version(n, self.versions_dir / n, self) for n in names]

    def get(self, name: str) -> Version:
        path = self.versions_dir / name
        if not path.is_dir():
            known = ", ".join(v.name for v in self.versions()) or "none"
            raise KeyError(f"no model version {name!r} (known: {known})")
        return Version(name, path, self)

    def is_published(self, name: str) -> bool:
        return (self.versions_dir / name / PUBLISHED).exists()

    def read_config(self, name: str) -> dict:
        return json.loads((self.versions_dir / name / "config.json").read_text())

    def current(self) -> Version | None:
        """The version serving uses now, or None before the first promotion."""
        try:
            pointer = json.loads((self.root / CURRENT).read_text())
        except FileNotFoundError:
            return None
        return self.get(pointer["version"])

    def pointer_tag(self) -> float:
        """Changes whenever CURRENT is replaced (its mtime): cheap polling for readers that cache a version."""
        try:
            return (self.root / CURRENT).stat().st_mtime_ns / 1e9
        except FileNotFoundError:
            return 0.0

    # ---- publishing ----
    def next_name(self) -> str:
        return next_version_name([v.name for v in self.versions()])

    def stage(self, name: str) -> Path:
        """A fresh private directory to write version `name` into."""
        path = self.staging_dir / name
        shutil.rmtree(path, ignore_errors=True)
        path.mkdir(parents=True)
        return path

    def new_version(self) -> tuple[str, Path]:
        """The next version's name and a fresh staging directory to write it into (one writer)."""
        name = self.next_name()
        return name, self.stage(name)

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
        return Version(name, dst, self)

    def mark_published(self, name: str) -> None:
        """Record that version `name` is complete (its vectors are all written)."""
        write_atomic(self.get(name).path / PUBLISHED, b"")

    def promote(self, name: str, newer_only: bool = False) -> Version:
        """Point serving at version `name` (atomic); with `newer_only` (a publisher's own promotion),
        leave a CURRENT that already names a newer version as it is. -> the version CURRENT names."""
        version = self.get(name)
        if not version.published:
            raise ValueError(f"version {name} is not completely published; refusing to serve it")
        if newer_only and (current := self.current()) is not None and superseded(name, current.name):
            return current
        write_atomic(self.root / CURRENT, pointer_bytes(version))
        return version

    def prune(self, keep: int) -> list[str]:
        """Delete all but the newest `keep` versions, never the current one; return the names removed."""
        current = self.current()
        removable = [v for v in self.versions()[:-keep] if not current or v.name != current.name]
        for v in removable:
            self.remove(v.name)
        return [v.name for v in removable]

    def remove(self, name: str) -> None:
        """Delete one version (a pruned one, or what a crashed publish left)."""
        shutil.rmtree(self.versions_dir / name, ignore_errors=True)

    def clean_staging(self) -> None:
        """Remove what a crashed publish left half-written."""
        shutil.rmtree(self.staging_dir, ignore_errors=True)
        self.staging_dir.mkdir(parents=True, exist_ok=True)


class CurrentFollower:
    """Follows CURRENT for a reader that loads a version (the encoder worker, serving): `poll()` costs
    one stat (S3: one HEAD) while nothing changes and returns the version CURRENT newly names; the reader loads it and
    calls `accept()`. A load that fails is not accepted, so the next poll offers the version again."""

    def __init__(self, registry: ModelRegistry):
        self.registry = registry
        self.version: Version | None = None  # the accepted (loaded) version
        self._seen: object = -1.0  # CURRENT's tag (mtime, ETag) when last looked at with nothing new to load
        self._offered: object = -1.0

    def poll(self) -> Version | None:
        try:
            tag = self.registry.pointer_tag()
            if tag == self._seen:
                return None
            current = self.registry.current()
        except (RegistryUnavailable, ValueError) as e:  # S3 unreachable, or CURRENT names an unpublished
            log.warning("model registry: %s; keeping version %s, looking again at the next poll", e,  # version
                        self.version.name if self.version else None)  # fmt: skip
            return None
        if current is None or (self.version is not None and current.name == self.version.name):
            self._seen = tag
            return None
        self._offered = tag
        return current

    def accept(self, version: Version) -> None:
        self.version, self._seen = version, self._offered


def open_registry(settings: Settings):
    """The registry `settings.registry` names: a folder (default <data_dir>/registry) or
    `s3://bucket/prefix` (downloads cached under `settings.registry_cache_path`)."""
    r = settings.registry
    if not r.is_s3:
        return ModelRegistry(settings.registry_path)
    from store.s3_registry import S3Registry

    return S3Registry(r.uri, settings.registry_cache_path, endpoint_url=r.s3_endpoint_url or None,
                      access_key=r.s3_access_key or None, secret_key=r.s3_secret_key or None,
                      region=r.s3_region)  # fmt: skip
