"""The local S3-compatible server behind the durable embedded broker, with two fixes for Tansu's use.

    python -m deploy.s3_server nanio serve --data-dir DIR --host 127.0.0.1 --port P ...
    python -m deploy.s3_server localbucket --host 127.0.0.1 --port P DIR

Both servers keep each bucket as a folder and each object as a file, written to a temporary file in
the object's folder and renamed into place (nanio fsyncs it first; localbucket does not).

- nanio 0.1.7 lists those in-flight temporary files (`.tmp.<uuid>`) in ListObjects: it hides only
  names starting with `.nanio`. Tansu's S3 engine parses every name it lists under a partition's
  `records/` as an offset, so a fetch that lists while a produce is being written fails
  (`ParseIntError`, the consumer's connection is closed; measured: 465 failed fetches in one
  30-second run). Here they are hidden too.
- localbucket logs one line per request (for Tansu: per produced batch and per offset commit); here
  successful requests are not logged, errors still are.
"""

from __future__ import annotations

import logging
import re
import sys

NANIO_TEMP_PREFIX = ".tmp."  # nanio/storage/filesystem.py: `final.parent / f".tmp.{uuid4().hex}"`
_SUCCESS = re.compile(r'" [23]\d\d ')


def nanio_hidden(name: str) -> bool:
    """nanio's internal names (`.nanio*`) and its in-flight temporary files."""
    return name.startswith(".nanio") or name.startswith(NANIO_TEMP_PREFIX)


class DropSuccessfulRequests(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not _SUCCESS.search(record.getMessage())


def patch_nanio() -> None:
    from nanio.storage import filesystem

    filesystem.is_internal_name = nanio_hidden


def main() -> None:
    server, args = sys.argv[1], sys.argv[2:]
    sys.argv = [server, *args]
    if server == "nanio":
        patch_nanio()
        from nanio.cli import main as nanio_main

        sys.exit(nanio_main())
    if server == "localbucket":
        import localbucket

        localbucket.logger.addFilter(DropSuccessfulRequests())
        localbucket.main()
        return
    sys.exit(f"unknown S3 server {server!r}: nanio | localbucket")


if __name__ == "__main__":
    main()
