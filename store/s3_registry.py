"""The model registry on an S3 bucket (`registry.uri = "s3://bucket/prefix"`), for readers on any machine.

The same layout as the folder (store/registry.py), under the prefix:
    <prefix>/versions/<name>/<file>   every file of a version, uploaded in any order
    <prefix>/versions/<name>/.claim   written first with If-None-Match: *, so two publishers never
                                      write one name (the loser takes the next number)
    <prefix>/versions/<name>/PUBLISHED uploaded after every other file and the version's vectors
    <prefix>/CURRENT                  replaced by one PUT (atomic on S3), If-Match the ETag it had
                                      when read, so two publishers never silently overwrite each other

A reader reads CURRENT, refuses a version without PUBLISHED, and downloads the version once into its
local cache (`<cache>/<name>/`, written to a temporary directory and renamed), so every reader keeps
loading plain files (trainer/checkpoint.py, the exported item tower). Only published versions enter
the cache, and a published version never changes, so a cached copy is never stale. The writer keeps
its staging directory under `<cache>/.staging/` and renames it into the cache once published.
Deleting a version (pruning, recovery) removes PUBLISHED first, so a version being deleted is never
downloaded. boto3 is imported when a registry is opened, not at import.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
import uuid
from pathlib import Path
from urllib.parse import urlparse

from store.registry import (
    CURRENT,
    PUBLISHED,
    REQUIRED,
    ConcurrentPublish,
    RegistryUnavailable,
    Version,
    next_version_name,
    pointer_bytes,
    superseded,
)

log = logging.getLogger(__name__)

CLAIM = ".claim"
STAGING = ".staging"
PROMOTE_TRIES = 5  # re-reads of CURRENT after a lost conditional PUT
STALE_DOWNLOAD_S = 3600.0  # a temporary download directory this old was left by a dead reader


def parse_uri(uri: str) -> tuple[str, str]:
    """s3://bucket/a/b -> ("bucket", "a/b/"); s3://bucket -> ("bucket", "")."""
    parsed = urlparse(uri)
    if parsed.scheme != "s3" or not parsed.netloc:
        raise ValueError(f"not an S3 registry URI (s3://bucket/prefix): {uri!r}")
    prefix = parsed.path.strip("/")
    return parsed.netloc, f"{prefix}/" if prefix else ""


def group_by_version(keys: list[str], versions_prefix: str) -> dict[str, set[str]]:
    """Object keys under `<prefix>versions/` -> {version name: its file names}."""
    out: dict[str, set[str]] = {}
    for key in keys:
        name, _, file = key[len(versions_prefix) :].partition("/")
        if name and file:
            out.setdefault(name, set()).add(file)
    return out


class S3Registry:
    """The model registry on S3: the API of store/registry.py's `ModelRegistry`."""

    def __init__(self, uri: str, cache_dir: Path, endpoint_url: str | None = None, access_key: str | None = None,
                 secret_key: str | None = None, region: str = "us-east-1", client=None):  # fmt: skip
        self.uri = uri
        self.bucket, self.prefix = parse_uri(uri)
        self.versions_prefix = f"{self.prefix}versions/"
        self.cache_dir = Path(cache_dir)
        self.staging_dir = self.cache_dir / STAGING
        self.cache_dir.mkdir(parents=True, exist_ok=True)
        self.staging_dir.mkdir(parents=True, exist_ok=True)
        self.s3 = client or make_client(endpoint_url, access_key, secret_key, region)
        from botocore.exceptions import BotoCoreError, ClientError

        self._errors = (BotoCoreError, ClientError)

    # ---- objects ----
    def _key(self, name: str, file: str) -> str:
        return f"{self.versions_prefix}{name}/{file}"

    def _call(self, what: str, fn, passthrough: tuple[int, ...] = (), **kwargs):
        """One S3 call; a failure becomes RegistryUnavailable, except the statuses in `passthrough`."""
        try:
            return fn(Bucket=self.bucket, **kwargs)
        except self._errors as e:
            if status(e) in passthrough:
                raise
            raise RegistryUnavailable(f"model registry {self.uri}: {what} failed: {e}") from e

    def _get(self, key: str) -> tuple[bytes, str] | None:
        """An object's bytes and ETag, None if there is none."""
        try:
            r = self._call(f"GET {key}", self.s3.get_object, (404,), Key=key)
            return r["Body"].read(), r["ETag"]
        except self._errors:
            return None  # 404

    def _head(self, key: str) -> str | None:
        try:
            return self._call(f"HEAD {key}", self.s3.head_object, (404,), Key=key)["ETag"]
        except self._errors:
            return None  # 404

    def _put(self, key: str, body: bytes, if_match: str | None = None, if_none_match: bool = False) -> bool:
        """PUT one object; with a condition, False when the server refuses it (412; 409 on AWS)."""
        cond = {"IfMatch": if_match} if if_match else {"IfNoneMatch": "*"} if if_none_match else {}
        try:
            self._call(f"PUT {key}", self.s3.put_object, (412, 409) if cond else (), Key=key, Body=body, **cond)
        except self._errors:
            return False
        return True

    def _list(self, prefix: str) -> list[dict]:
        out, token = [], None
        while True:
            kwargs = {"Prefix": prefix, **({"ContinuationToken": token} if token else {})}
            page = self._call(f"LIST {prefix}", self.s3.list_objects_v2, **kwargs)
            out.extend(page.get("Contents", []))
            if not page.get("IsTruncated"):
                return out
            token = page["NextContinuationToken"]

    def _delete(self, keys: list[str]) -> None:
        for k in range(0, len(keys), 1000):
            objects = [{"Key": key} for key in keys[k : k + 1000]]
            r = self._call("DELETE", self.s3.delete_objects, Delete={"Objects": objects, "Quiet": True})
            if r.get("Errors"):
                raise RegistryUnavailable(f"model registry {self.uri}: could not delete {r['Errors'][:3]}")

    def _files(self) -> dict[str, set[str]]:
        return group_by_version([o["Key"] for o in self._list(self.versions_prefix)], self.versions_prefix)

    # ---- reading ----
    def versions(self) -> list[Version]:
        """Versions with any file uploaded (complete or not: see `published`), oldest first."""
        return [Version(n, self.cache_dir / n, self) for n in sorted(self._files())]

    def get(self, name: str) -> Version:
        """Version `name`; a published one is in the local cache when this returns."""
        return self._fetch(name)[0]

    def _fetch(self, name: str) -> tuple[Version, bool]:
        """Version `name` and whether it is published (then it is downloaded into the cache)."""
        objects = {o["Key"][len(self._key(name, "")) :]: o for o in self._list(self._key(name, ""))}
        if not objects:
            known = ", ".join(v.name for v in self.versions()) or "none"
            raise KeyError(f"no model version {name!r} in {self.uri} (known: {known})")
        version = Version(name, self.cache_dir / name, self)
        published = PUBLISHED in objects
        if published and not version.path.is_dir():
            self._download(name, objects)
        return version, published

    def _download(self, name: str, objects: dict[str, dict]) -> None:
        """Every file of a published version into `<cache>/<name>/`, via a temporary directory."""
        tmp = self.cache_dir / f".download-{name}-{uuid.uuid4().hex[:8]}"
        tmp.mkdir()
        try:
            for file, obj in objects.items():
                if file == CLAIM or "/" in file:
                    continue
                got = self._get(obj["Key"])
                if got is None or len(got[0]) != obj["Size"]:
                    raise RegistryUnavailable(f"model registry {self.uri}: {obj['Key']} changed while downloading")
                with open(tmp / file, "wb") as f:
                    f.write(got[0])
                    f.flush()
                    os.fsync(f.fileno())
            try:
                os.rename(tmp, self.cache_dir / name)
            except OSError:  # another local reader downloaded it meanwhile
                if not (self.cache_dir / name).is_dir():
                    raise
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        log.info("model version %s downloaded from %s into %s", name, self.uri, self.cache_dir / name)
        self._forget_removed()

    def _forget_removed(self) -> None:
        """Drop cached versions the registry no longer has (pruned): the cache keeps what it keeps."""
        kept = set(self._files())
        for path in self.cache_dir.iterdir():
            if path.is_dir() and not path.name.startswith(".") and path.name not in kept:
                shutil.rmtree(path, ignore_errors=True)

    def is_published(self, name: str) -> bool:
        return self._head(self._key(name, PUBLISHED)) is not None

    def read_config(self, name: str) -> dict:
        got = self._get(self._key(name, "config.json"))
        if got is None:
            raise KeyError(f"model version {name!r} in {self.uri} has no config.json (not completely uploaded)")
        return json.loads(got[0])

    def _pointer(self) -> tuple[dict | None, str | None]:
        got = self._get(f"{self.prefix}{CURRENT}")
        return (json.loads(got[0]), got[1]) if got else (None, None)

    def current(self) -> Version | None:
        """The version serving uses now (downloaded), or None before the first promotion."""
        pointer, _ = self._pointer()
        if pointer is None:
            return None
        version, published = self._fetch(pointer["version"])
        if not published:
            raise ValueError(f"{self.uri}: CURRENT names {version.name}, which is not completely published; "
                             f"refusing to load it")  # fmt: skip
        return version

    def pointer_tag(self) -> str | None:
        """CURRENT's ETag (one HEAD): changes whenever CURRENT is replaced."""
        return self._head(f"{self.prefix}{CURRENT}")

    # ---- publishing ----
    def next_name(self) -> str:
        return next_version_name(list(self._files()))

    def new_version(self) -> tuple[str, Path]:
        """Claim the next free version name (If-None-Match: a name another publisher claimed is
        skipped) and a fresh local staging directory to write it into."""
        name = self.next_name()
        claim = json.dumps({"host": os.uname().nodename, "pid": os.getpid()}).encode()
        while not self._put(self._key(name, CLAIM), claim, if_none_match=True):
            log.info("version name %s was claimed by another publisher: trying the next", name)
            name = next_version_name([name])
        path = self.staging_dir / name
        shutil.rmtree(path, ignore_errors=True)
        path.mkdir(parents=True)
        return name, path

    def commit_version(self, name: str) -> Version:
        """Upload every staged file of version `name` (not yet PUBLISHED: readers still refuse it)."""
        src = self.staging_dir / name
        for required in REQUIRED:
            if not (src / required).exists():
                raise FileNotFoundError(f"version {name} is incomplete: {required} missing")
        for f in sorted(src.iterdir()):
            self._put(self._key(name, f.name), f.read_bytes())
        return Version(name, self.cache_dir / name, self)

    def mark_published(self, name: str) -> None:
        """PUBLISHED, uploaded last: from now on readers may load version `name`."""
        self._put(self._key(name, PUBLISHED), b"")
        staged, cached = self.staging_dir / name, self.cache_dir / name
        if staged.is_dir():  # the writer's own copy is the uploaded bytes: cache it without a download
            (staged / PUBLISHED).write_bytes(b"")
            shutil.rmtree(cached, ignore_errors=True)
            os.rename(staged, cached)

    def promote(self, name: str, newer_only: bool = False) -> Version:
        """Replace CURRENT with one conditional PUT (If-Match the ETag read, If-None-Match: * when there
        is none); a lost race re-reads CURRENT and tries again. With `newer_only`, a CURRENT that names a
        newer version is left as it is. -> the version CURRENT names."""
        version, published = self._fetch(name)
        if not published:
            raise ValueError(f"version {name} is not completely published; refusing to serve it")
        for _ in range(PROMOTE_TRIES):
            pointer, etag = self._pointer()
            if newer_only and pointer is not None and superseded(name, pointer["version"]):
                log.info("not promoting %s: CURRENT already names %s", name, pointer["version"])
                return self.get(pointer["version"])
            key = f"{self.prefix}{CURRENT}"
            if self._put(key, pointer_bytes(version), if_match=etag, if_none_match=etag is None):
                return version
            log.info("CURRENT changed while promoting %s (another publisher): reading it again", name)
        raise ConcurrentPublish(f"{self.uri}: CURRENT kept changing while promoting {name} ({PROMOTE_TRIES} tries)")

    def prune(self, keep: int) -> list[str]:
        """Delete all but the newest `keep` versions, never the current one; return the names removed."""
        pointer, _ = self._pointer()
        names = sorted(self._files())
        removable = [n for n in names[:-keep] if not pointer or n != pointer["version"]]
        for n in removable:
            self.remove(n)
        return removable

    def remove(self, name: str) -> None:
        """Delete one version: PUBLISHED first (so no reader starts downloading it), then the rest."""
        files = self._files().get(name, set())
        if PUBLISHED in files:
            self._delete([self._key(name, PUBLISHED)])
        self._delete([self._key(name, f) for f in sorted(files - {PUBLISHED})])
        shutil.rmtree(self.cache_dir / name, ignore_errors=True)

    def clean_staging(self) -> None:
        """Remove what a crashed publish left half-written locally (uploads: `Publisher.recover`)."""
        shutil.rmtree(self.staging_dir, ignore_errors=True)
        self.staging_dir.mkdir(parents=True, exist_ok=True)
        for tmp in self.cache_dir.glob(".download-*"):  # not a download another local reader runs now
            if time.time() - tmp.stat().st_mtime > STALE_DOWNLOAD_S:
                shutil.rmtree(tmp, ignore_errors=True)


def status(error: Exception) -> int | None:
    """The HTTP status of a botocore ClientError (None for other errors)."""
    response = getattr(error, "response", None) or {}
    return response.get("ResponseMetadata", {}).get("HTTPStatusCode")


def make_client(endpoint_url: str | None, access_key: str | None, secret_key: str | None, region: str):
    """A boto3 S3 client: path-style addressing (works with any S3-compatible server), checksums only
    where the API requires them (S3-compatible servers differ on the newer default ones)."""
    import boto3
    from botocore.config import Config

    config = Config(region_name=region, s3={"addressing_style": "path"}, connect_timeout=5, read_timeout=60,
                    retries={"max_attempts": 4, "mode": "standard"}, request_checksum_calculation="when_required",
                    response_checksum_validation="when_required")  # fmt: skip
    return boto3.session.Session().client("s3", endpoint_url=endpoint_url, aws_access_key_id=access_key,
                                          aws_secret_access_key=secret_key, config=config)  # fmt: skip
