"""The vector store: content embeddings and item-tower vectors, searchable by inner product.

Collections (one schema for all, primary key = item id, so every write is an idempotent upsert):
    content            the frozen LLM's content embedding of each live item (written by encoder/worker.py)
    items_<version>    the item-tower vectors of model version <version> (store/registry.py names it);
                       the collection that queries search is the current version's
Fields: item_id (VARCHAR pk), vector (FLOAT_VECTOR), text_hash (sha256 of the prompt), model_id,
event_time (the record's), written_at (wall clock of the write), truncated (the prompt was cut).

Where the data lives (`settings.vector_uri`):
- `http(s)://...` : a Milvus server; any number of processes connect to it. A (re)started server keeps
  every collection released until it is loaded: opening the store loads them, and a call that finds a
  collection released (the server restarted while the store was open) or the server gone (within
  `wait_s`) loads it or re-connects and repeats the call. Consistency: see CONSISTENCY.
  (deploy/milvus_server.py runs a real one on this machine, for the tests and bench/milvus_server.py.)
- a local path (default `<data_dir>/vectors.db`): milvus-lite. milvus-lite 3.x is pure Python and
  in-process, and it allows ONE process per directory (an flock on `<path>/LOCK`). So the process that
  opens the path first becomes its *host*: it opens milvus-lite, serves it on a loopback gRPC port
  (milvus-lite's own Milvus-protocol server, one request at a time: milvus-lite is single-writer per
  collection) and, once its collections are loaded, writes that address to `<path>/ENDPOINT`. Every other process that opens the same
  path while the host lives becomes a *guest*: it finds the lock taken, reads ENDPOINT and talks to the
  host over gRPC, exactly as it would talk to a Milvus server. In the running system the encoder
  worker is the long-lived host; the trainer, the API, the demo and tests are guests. If the host goes
  away (stop, crash, SIGKILL: the OS drops the flock), a guest's next call fails to connect; the
  store then re-opens, becoming the host itself or the guest of whoever took the lock, and repeats the
  call. Every operation is idempotent (upserts and deletes by primary key, reads), so repeating one is
  harmless.

Durability: milvus-lite appends each write to its WAL and flushes it to the OS before the call
returns, so a write that returned survives a kill of the process (not a power loss).

This module imports no torch and no model code.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tenacity import (Retrying, before_sleep_log, retry_if_exception, retry_if_exception_type, stop_after_delay,
                      wait_fixed)

from store.process import pid_alive
from store.registry import ITEMS_PREFIX, items_collection  # noqa: F401 - the naming rule lives with the versions

log = logging.getLogger(__name__)

CONTENT = "content"
ENDPOINT_FILE = "ENDPOINT"
MAX_ID_BYTES = 512  # ids are <= 128 characters (streams/schemas.py); UTF-8 needs up to 4 bytes each
QUERY_CAP = 16384  # Milvus caps one query's results at this many rows
SCAN_BATCH = 8192  # rows per page of a scan
PAGE = 4096  # rows per page when listing ids by offset
# On a Milvus server, "Session": a process reads its own writes at once, others within Milvus' time
# tick (milliseconds); "Strong" made every search wait ~400 ms for the tick here, "Bounded" (the
# default) hid a write from its own writer's next count. `count` alone reads "Strong" (see there).
# milvus-lite reads every write at once.
CONSISTENCY = "Session"
# pymilvus pings every 10 s; the loopback host's grpc server answers an idle client's pings with
# GOAWAY "too_many_pings" after a while, which fails the next call. Loopback needs no keepalive.
LOOPBACK_GRPC = {"grpc.keepalive_time_ms": 2**31 - 1, "grpc.keepalive_permit_without_calls": 0}


@dataclass(frozen=True)
class Row:
    """One stored item (the vector only when asked for)."""

    item_id: str
    text_hash: str
    model_id: str
    event_time: float
    written_at: float
    truncated: bool
    vector: np.ndarray | None = None


class StoreUnavailable(RuntimeError):
    """No host answered for a local store within the wait, or the server is unreachable."""


class _NoHost(Exception):
    """One try at a milvus-lite path found no host that answers (its cause: the client's error)."""


def _is_connection_error(e: Exception) -> bool:
    text = f"{type(e).__name__} {e}".lower()
    return any(s in text for s in ("unavailable", "connect", "deadline", "socket closed", "channel"))


def _is_not_loaded(e: Exception) -> bool:
    """A Milvus server's answer for a search or query on a released collection (code 101)."""
    msg = str(e).lower()  # a server: "collection not loaded"; milvus-lite: "... is in state 'released'"
    return getattr(e, "code", None) == 101 or "not loaded" in msg or "state 'released'" in msg


def _quiet_unimplemented(record: logging.LogRecord) -> bool:
    """milvus-lite lacks AllocTimestamp, which pymilvus calls (and survives) after creating an index:
    drop the server's traceback for it."""
    return "Method not implemented" not in record.getMessage() and "AllocTimestamp" not in str(record.exc_info)


class VectorStore:
    """Collections of item vectors behind a milvus-lite file or a Milvus server (see module doc)."""

    def __init__(self, uri: str | Path, token: str = "", wait_s: float = 30.0):
        self.uri = str(uri)
        self.token = token
        self.wait_s = wait_s
        self.mode = ""  # "server" | "host" | "guest" once open
        self._client = None
        self._server = None  # (grpc server, MilvusLite db) when hosting
        self._dims: dict[str, int] = {}

    @property
    def is_remote(self) -> bool:
        return self.uri.startswith(("http://", "https://"))

    # ---- opening ------------------------------------------------------------------------------
    def open(self) -> "VectorStore":
        """Connect: as the host or a guest of a milvus-lite path, or to a Milvus server; retried every
        0.1 s (a path) or 0.5 s (a server) for `wait_s`, then StoreUnavailable."""
        if self._client is not None:
            return self
        if self.is_remote:
            self._open_server()
            return self
        path = Path(self.uri)
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            self._retrying(0.1, retry_if_exception_type(_NoHost))(self._open_path, path)
        except _NoHost as e:
            raise StoreUnavailable(f"vector store {path}: no host answered within {self.wait_s}s "
                                   f"(last error: {e.__cause__})") from e.__cause__  # fmt: skip
        return self

    def _retrying(self, every_s: float, retry) -> Retrying:
        """The opening policy: try again every `every_s` while `retry` says so, for `wait_s` at most."""
        return Retrying(retry=retry, wait=wait_fixed(every_s), stop=stop_after_delay(self.wait_s), reraise=True,
                        before_sleep=before_sleep_log(log, logging.DEBUG))  # fmt: skip

    def _open_path(self, path: Path) -> None:
        """One try at a milvus-lite path: host it, or be the guest of the process that does."""
        from pymilvus import MilvusClient

        endpoint, mode = self._try_host(path), "host"
        if endpoint is None:  # another process holds the file: be its guest
            endpoint, mode = self._read_endpoint(path), "guest"
        if not endpoint:
            raise _NoHost("no endpoint yet")  # the host has not written it yet
        try:
            self._client = MilvusClient(uri=endpoint, timeout=5.0, grpc_options=LOOPBACK_GRPC)
            if mode == "host":  # milvus-lite re-opens collections released: load them, then publish
                self._load_released()
                self._publish_endpoint(path, endpoint)
            else:
                self._client.list_collections()  # the host answers
        except Exception as e:  # a host that just went away, or not ready yet
            self._client = None
            self._stop_hosting(path)
            raise _NoHost(str(e)) from e
        self.mode = mode
        log.info("vector store %s opened as %s (%s)", path, mode, endpoint)

    def _open_server(self) -> None:
        """Connect to a Milvus server, retrying for `wait_s` (it may be restarting), and load every
        collection: a (re)started server keeps them released, and a search on a released collection
        fails ("collection not loaded"). Any other error (e.g. a refused token) fails at once."""
        try:
            self._retrying(0.5, retry_if_exception(_is_connection_error))(self._connect_server)
        except Exception as e:
            if not _is_connection_error(e):
                raise
            raise StoreUnavailable(f"Milvus server {self.uri} unreachable for {self.wait_s}s: {e}") from e

    def _connect_server(self) -> None:
        from pymilvus import MilvusClient

        try:
            self._client = MilvusClient(uri=self.uri, token=self.token, timeout=min(self.wait_s, 10.0))
            self._load_released()
        except Exception:
            self._close_client()
            raise
        self.mode = "server"
        log.info("vector store opened on the Milvus server %s", self.uri)

    def _load_released(self) -> None:
        """Load each collection that is not loaded (loading a loaded one would also be harmless)."""
        from pymilvus.client.types import LoadState

        for name in self._client.list_collections():
            if self._client.get_load_state(name)["state"] != LoadState.Loaded:
                self._client.load_collection(name)

    def _try_host(self, path: Path) -> str | None:
        """Take the milvus-lite directory and serve it on loopback; None if another process has it."""
        from milvus_lite.adapter.grpc.server import start_server_in_thread
        from milvus_lite.exceptions import DataDirLockedError

        try:
            server, db, port = start_server_in_thread(str(path), "127.0.0.1", 0, max_workers=1)
        except DataDirLockedError:
            return None
        self._server = (server, db)
        logging.getLogger("grpc._server").addFilter(_quiet_unimplemented)
        return f"http://127.0.0.1:{port}"

    @staticmethod
    def _publish_endpoint(path: Path, endpoint: str) -> None:
        """Tell guests where the host serves, once it is ready (its collections loaded): a guest
        that came earlier would find a collection released."""
        tmp = path / f".{ENDPOINT_FILE}.tmp-{os.getpid()}"
        tmp.write_text(json.dumps({"uri": endpoint, "pid": os.getpid()}))
        os.replace(tmp, path / ENDPOINT_FILE)

    @staticmethod
    def _read_endpoint(path: Path) -> str | None:
        try:
            info = json.loads((path / ENDPOINT_FILE).read_text())
        except (FileNotFoundError, ValueError):
            return None  # the host has not written it yet
        return info["uri"] if pid_alive(int(info["pid"])) else None

    def _stop_hosting(self, path: Path | None = None) -> None:
        if self._server is None:
            return
        server, db = self._server
        self._server = None
        try:
            server.stop(grace=1).wait(2)
        finally:
            db.close()  # releases the LOCK

    def _close_client(self) -> None:
        if self._client is not None:
            try:
                self._client.close()
            except Exception:  # noqa: BLE001 - closing a dead channel
                pass
            self._client = None

    def close(self) -> None:
        self._close_client()
        if self._server is not None:
            path = Path(self.uri)
            try:
                info = json.loads((path / ENDPOINT_FILE).read_text())
                if info.get("pid") == os.getpid():
                    (path / ENDPOINT_FILE).unlink(missing_ok=True)
            except (FileNotFoundError, ValueError):
                pass
            self._stop_hosting()
        self.mode = ""

    def __enter__(self) -> "VectorStore":
        return self.open()

    def __exit__(self, *exc) -> None:
        self.close()

    def _call(self, method: str, *args, **kwargs):
        """Call the client; as a guest or on a server, after a lost connection or on a released
        collection, `_repeat` it once (every call is idempotent)."""
        self.open()
        try:
            return getattr(self._client, method)(*args, **kwargs)
        except Exception as e:
            if not (self.is_remote or self.mode == "guest"):
                raise
            return self._repeat(e, method, args, kwargs)

    def _repeat(self, e: Exception, method: str, args: tuple, kwargs: dict):
        """A server's or a host's failed call: a released collection is loaded (a restarted server, a
        host that had not loaded it yet), a lost connection re-opened (a restart, a host gone); then
        the call is repeated once. Any other error propagates."""
        if _is_not_loaded(e) and args:
            log.warning("collection %s was released (a restart?): loading it", args[0])
            self._client.load_collection(args[0])
        elif _is_connection_error(e):
            log.warning("vector store %s unreachable (%s): re-opening", self.uri, type(e).__name__)
            self.close()
            self.open()
        else:
            raise e
        return getattr(self._client, method)(*args, **kwargs)

    # ---- collections --------------------------------------------------------------------------
    def collections(self) -> list[str]:
        return sorted(self._call("list_collections"))

    def has(self, name: str) -> bool:
        return name in self.collections()

    def ensure_collection(self, name: str, dim: int, metric: str = "IP") -> None:
        """Create `name` for vectors of `dim` if absent; refuse an existing one of another dim."""
        if self._dims.get(name) == dim:
            return
        if self.has(name):
            have = self.dim(name)
            if have != dim:
                raise ValueError(f"collection {name!r} in {self.uri} holds vectors of dim {have}, not {dim} "
                                 f"(another model wrote it): use another vectors.uri or drop it")  # fmt: skip
            self._dims[name] = dim
            return
        from pymilvus import DataType, MilvusClient

        schema = MilvusClient.create_schema(auto_id=False, enable_dynamic_field=False)
        schema.add_field("item_id", DataType.VARCHAR, is_primary=True, max_length=MAX_ID_BYTES)
        schema.add_field("vector", DataType.FLOAT_VECTOR, dim=dim)
        schema.add_field("text_hash", DataType.VARCHAR, max_length=64)
        schema.add_field("model_id", DataType.VARCHAR, max_length=512)
        schema.add_field("event_time", DataType.DOUBLE)
        schema.add_field("written_at", DataType.DOUBLE)
        schema.add_field("truncated", DataType.BOOL)
        index = self._client.prepare_index_params()
        index.add_index("vector", index_type="FLAT", metric_type=metric)
        try:
            self._call("create_collection", name, schema=schema, index_params=index, consistency_level=CONSISTENCY)
        except Exception:
            if not self.has(name):  # else: created by another process in between
                raise
        self._dims[name] = dim

    def dim(self, name: str) -> int:
        desc = self._call("describe_collection", name)
        return next(int(f["params"]["dim"]) for f in desc["fields"] if f["name"] == "vector")

    def drop(self, name: str) -> None:
        self._dims.pop(name, None)
        if self.has(name):
            self._call("drop_collection", name)

    # ---- writing ------------------------------------------------------------------------------
    def upsert(
        self,
        name: str,
        ids: Sequence[str],
        vectors: np.ndarray,
        text_hashes: Sequence[str] | None = None,
        model_id: str = "",
        event_times: Sequence[float] | None = None,
        truncated: Sequence[bool] | None = None,
    ) -> int:
        """Insert or replace one row per id (the collection must exist). Returns the rows written."""
        vectors = np.asarray(vectors, dtype=np.float32)
        n = len(ids)
        assert vectors.shape[0] == n, (vectors.shape, n)
        if n == 0:
            return 0
        now = time.time()
        rows = [
            {
                "item_id": ids[i],
                "vector": vectors[i].tolist(),
                "text_hash": text_hashes[i] if text_hashes is not None else "",
                "model_id": model_id,
                "event_time": float(event_times[i]) if event_times is not None else now,
                "written_at": now,
                "truncated": bool(truncated[i]) if truncated is not None else False,
            }
            for i in range(n)
        ]
        self._call("upsert", name, rows)
        return n

    def delete(self, name: str, ids: Iterable[str]) -> None:
        expr = _in_filter(ids)
        if expr:  # an id that cannot be stored has nothing to delete
            self._call("delete", name, filter=expr)

    # ---- reading ------------------------------------------------------------------------------
    def get(self, name: str, ids: Sequence[str], with_vectors: bool = False) -> dict[str, Row]:
        """The stored rows of `ids` that exist, by id (an id that cannot be stored has none)."""
        expr = _in_filter(ids)
        if not expr:  # "" would match every row
            return {}
        fields = ["text_hash", "model_id", "event_time", "written_at", "truncated"]
        fields += ["vector"] if with_vectors else []
        res = self._call("query", name, filter=expr, output_fields=fields, limit=len(ids))
        return {r["item_id"]: _row(r) for r in res}

    def search(
        self, name: str, queries: np.ndarray, k: int = 10, exclude: Iterable[str] = ()
    ) -> list[list[tuple[str, float]]]:
        """Top-`k` (item id, score) per query row by the collection's metric (inner product by
        default), leaving out the ids in `exclude` (e.g. what the user has already seen)."""
        q = np.atleast_2d(np.asarray(queries, dtype=np.float32))
        excluded = set(exclude)
        # Filtered after the search rather than in a filter expression: ids are free text, and
        # expression quoting differs between milvus-lite and Milvus.
        limit = min(k + len(excluded), 16384)
        res = self._call("search", name, data=q.tolist(), limit=limit, output_fields=["item_id"])
        out = []
        for hits in res:
            kept = [(h["item_id"] if "item_id" in h else h["id"], float(h["distance"])) for h in hits]
            out.append([(i, s) for i, s in kept if i not in excluded][:k])
        return out

    def count(self, name: str) -> int:
        """The rows there are now. On a server a "Strong" read (~400 ms: it waits for Milvus' time tick):
        a session read of count(*) there missed this process's own deletes."""
        strong = {"consistency_level": "Strong"} if self.is_remote else {}
        res = self._call("query", name, filter="", output_fields=["count(*)"], **strong)
        return int(res[0]["count(*)"])

    def query(self, name: str, filter: str, fields: Sequence[str], limit: int = QUERY_CAP) -> list[dict]:
        """Rows matching a filter expression (at most `limit`, itself at most QUERY_CAP), with `fields`."""
        return self._call("query", name, filter=filter, output_fields=["item_id", *fields], limit=min(limit, QUERY_CAP))

    def scan(self, name: str, fields: Sequence[str], filter: str = "") -> Iterator[dict]:
        """Every row of a collection (matching `filter`), with `fields`: pages of SCAN_BATCH rows in
        primary-key order, each after the last id seen (so a scan is O(N); paging by offset is O(N^2) in
        milvus-lite, 111 s for 100k ids). Its own cursor rather than pymilvus' query iterator, which
        pastes the last id into `item_id > "..."` unescaped: an id holding a quote or a backslash at a
        page boundary broke the scan (or widened it).
        On a Milvus server, pymilvus sends a query with `iterator` at no consistency guarantee
        (eventual: right after a write it returned no rows at all), so a scan first waits for a
        "Strong" read (`count`, ~400 ms): the pages then see every write made before the scan."""
        if self.is_remote:
            self.count(name)
        last: str | None = None
        while True:
            parts = [f"item_id > {_literal(last)}" if last is not None else "", filter]
            expr = " and ".join(f"({p})" for p in parts if p)
            page = self._call("query", name, filter=expr, output_fields=["item_id", *fields], limit=SCAN_BATCH,
                              iterator="True", reduce_stop_for_best="True")  # fmt: skip
            yield from page
            if len(page) < SCAN_BATCH:
                return
            last = max(r["item_id"] for r in page)  # code-point order = UTF-8 byte order (Milvus' order)

    def ids(self, name: str) -> list[str]:
        """Every item id in a collection in the store's own order, paged by offset (slower than `scan`,
        which returns them in primary-key order, on large collections)."""
        out: list[str] = []
        while True:
            page = self._call("query", name, filter="", output_fields=["item_id"], limit=PAGE, offset=len(out))
            out.extend(r["item_id"] for r in page)
            if len(page) < PAGE:
                return out


def _quiet_mvcc(record: logging.LogRecord) -> bool:
    """milvus-lite returns no MVCC timestamp to the query iterator, which then uses the client's clock
    (fine on one machine) and warns on every scan: drop that warning."""
    return "mvccTs" not in record.getMessage()


logging.getLogger("pymilvus.client.iterator.query_iterator").addFilter(_quiet_mvcc)


# The one place where ids become expression text. Parameterised filters (`filter_params`) are not
# understood by milvus-lite 3.2 ("unexpected character '{'") nor by a Milvus 2.3.5 server ("cannot parse
# expression"), both checked here, so ids are written as string literals in the subset of escapes that
# both grammars read back exactly: milvus-lite's tokenizer knows only \\ \" \' \n \r \t (a JSON-style
# \u0000 is a parse error there); Milvus' ANTLR grammar takes those and any other character raw. Every
# id class of tests/unit/test_vector_filters.py (NUL and control characters included) was also read
# back exactly, got, scanned and deleted on that Milvus 2.3.5 server (the `milvus` embedded-server
# wheel, inside `unshare -n`). An id that is not valid UTF-8 (a lone surrogate) or longer than a
# primary key can be cannot be stored, so it never reaches an expression at all.
_ESCAPES = str.maketrans({"\\": "\\\\", '"': '\\"', "\n": "\\n", "\r": "\\r", "\t": "\\t"})


def storable(item_id: str) -> bool:
    """Whether an id can be a primary key here: valid UTF-8 of 1..MAX_ID_BYTES bytes."""
    try:
        return 0 < len(item_id.encode("utf-8")) <= MAX_ID_BYTES
    except UnicodeEncodeError:
        return False


def _literal(item_id: str) -> str:
    """A double-quoted string literal that milvus-lite and Milvus both read back as `item_id`."""
    return '"' + item_id.translate(_ESCAPES) + '"'


def _in_filter(ids: Iterable[str]) -> str:
    """`item_id in [...]` over the storable ids (see `storable`); "" when none is."""
    literals = [_literal(i) for i in ids if storable(i)]
    return "item_id in [" + ", ".join(literals) + "]" if literals else ""


def _row(r: dict) -> Row:
    vec = r.get("vector")
    return Row(
        item_id=r["item_id"],
        text_hash=r.get("text_hash", ""),
        model_id=r.get("model_id", ""),
        event_time=float(r.get("event_time", 0.0)),
        written_at=float(r.get("written_at", 0.0)),
        truncated=bool(r.get("truncated", False)),
        vector=None if vec is None else np.asarray(vec, dtype=np.float32),
    )


def open_store(settings) -> VectorStore:
    """The configured store (settings: config.Settings), opened."""
    return VectorStore(settings.vector_uri, settings.vectors.token).open()
