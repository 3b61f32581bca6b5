"""Item titles for display: item id -> title, in a small rocksdict beside the state store.

The vector store keeps vectors and provenance, not display text, so the process that sees each item's
text (the encoder worker) records its title here, and the query path reads it to label results.
Raw keys `t/<item id>` -> UTF-8 title. One writer process at a time: the writer opens the database
for each batch only (a restarted or second encoder worker waits a moment for the lock, never for the
lifetime of another process). Readers use a RocksDB secondary instance and `catch_up()`, which follows
the writer across its re-opens. This module imports no model code.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterable, Mapping
from pathlib import Path

from rocksdict import AccessType, Options, Rdict, WriteBatch

from store.state import open_with_retry

TITLE = b"t/"


def _options() -> Options:
    opt = Options(raw_mode=True)
    opt.create_if_missing(True)
    return opt


def write_titles(path: Path, titles: Mapping[str, str], deleted: Iterable[str] = ()) -> None:
    """Record `titles` and forget `deleted` items, in one atomic write (opens and closes the database)."""
    deleted = list(deleted)
    if not titles and not deleted:
        return
    path.mkdir(parents=True, exist_ok=True)
    db = open_with_retry(path)
    try:
        wb = WriteBatch(raw_mode=True)
        for item_id, title in titles.items():
            wb.put(TITLE + item_id.encode(), title.encode())
        for item_id in deleted:
            wb.delete(TITLE + item_id.encode())
        db.write(wb)
    finally:
        db.close()


class TitleReader:
    """Reads titles while the writer writes them. Before the first write there is nothing to read."""

    def __init__(self, path: Path):
        self.path = path
        self._tmp = Path(tempfile.mkdtemp(prefix="learn-titles-reader-"))
        self.db: Rdict | None = None
        self.catch_up()

    def catch_up(self) -> None:
        if self.db is None:
            if not (self.path / "CURRENT").exists():
                return
            self.db = Rdict(str(self.path), _options(), access_type=AccessType.secondary(str(self._tmp)))
        self.db.try_catch_up_with_primary()

    def get(self, item_id: str) -> str | None:
        if self.db is None:
            return None
        raw = self.db.get(TITLE + item_id.encode())
        return raw.decode() if raw is not None else None

    def close(self) -> None:
        if self.db is not None:
            self.db.close()
            self.db = None
        shutil.rmtree(self._tmp, ignore_errors=True)
