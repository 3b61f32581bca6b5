"""The local S3-compatible server behind the durable embedded broker, with three fixes for Tansu's use.

    python -m deploy.s3_server nanio serve --data-dir DIR --host 127.0.0.1 --port P ...
    python -m deploy.s3_server localbucket --host 127.0.0.1 --port P DIR

Both servers keep each bucket as a folder and each object as a file, written to a temporary file in
the object's folder and renamed into place (nanio fsyncs it first; localbucket does not).

- nanio 0.1.7 lists those in-flight temporary files (`.tmp.<uuid>`) in ListObjects: it hides only
  names starting with `.nanio`. Tansu's S3 engine parses every name it lists under a partition's
  `records/` as an offset, so a fetch that lists while a produce is being written fails
  (`ParseIntError`, the consumer's connection is closed; measured: 465 failed fetches in one
  30-second run). Here they are hidden too.
- nanio 0.1.7 ignores the conditions of a PUT (`If-None-Match: *`, `If-Match: <etag>`). Tansu's S3
  engine relies on them: it keeps each partition's `watermark.json` in memory with the etag it last
  wrote, and reserves offsets by a conditional PUT of the new watermark, re-reading the stored one
  when the server answers 412. A restarted Tansu starts from an empty watermark (high 0) and PUTs it
  with `If-None-Match: *`; nanio accepted that, so Tansu handed out offsets from 0 again and wrote
  new batches over acknowledged ones (measured: 2,335 of 3,740 acknowledged records lost after 3
  SIGKILLs of Tansu while one producer sent; `bench.broker_kills`). Two concurrent produces to one
  partition could likewise both win the same offsets (measured: 900 of 1,200 records lost with 4
  concurrent producers, no kill). Here a PUT's conditions are checked and the object written under
  a lock (one per key stripe: the server runs one worker process), else 412. The refused request's body
  is read first: left unread on a keep-alive connection, it was parsed as the next request (400).
- nanio writes an object's file, then its metadata sidecar (size, etag); a GET between the two sends
  the new file cut to the old size (Tansu, re-reading `meta.json` after a 412: "EOF while parsing",
  the produce fails). Here GET and HEAD take the same lock and read the whole object under it.
- localbucket logs one line per request (for Tansu: per produced batch and per offset commit); here
  successful requests are not logged, errors still are.
"""

from __future__ import annotations

import asyncio
import logging
import re
import sys
import zlib

NANIO_TEMP_PREFIX = ".tmp."  # nanio/storage/filesystem.py: `final.parent / f".tmp.{uuid4().hex}"`
_SUCCESS = re.compile(r'" [23]\d\d ')


def nanio_hidden(name: str) -> bool:
    """nanio's internal names (`.nanio*`) and its in-flight temporary files."""
    return name.startswith(".nanio") or name.startswith(NANIO_TEMP_PREFIX)


class DropSuccessfulRequests(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not _SUCCESS.search(record.getMessage())


def etags(header: str) -> set[str]:
    """The entity tags of an If-Match / If-None-Match header, without quotes or weak prefix."""
    return {t.strip().removeprefix("W/").strip('"') for t in header.split(",") if t.strip()}


def precondition_holds(if_match: str | None, if_none_match: str | None, current: str | None) -> bool:
    """Whether a PUT may replace the object whose etag is `current` (None: there is none) (RFC 9110)."""
    if if_match is not None:
        wanted = etags(if_match)
        if current is None or ("*" not in wanted and current.strip('"') not in wanted):
            return False
    if if_none_match is not None and current is not None:
        unwanted = etags(if_none_match)
        if "*" in unwanted or current.strip('"') in unwanted:
            return False
    return True


_LOCK_STRIPES = 256
_locks: list[asyncio.Lock] = []


def key_lock(bucket: str, key: str) -> asyncio.Lock:
    """One of a fixed set of locks, picked by the object's name (created on first use, in the loop)."""
    if not _locks:
        _locks.extend(asyncio.Lock() for _ in range(_LOCK_STRIPES))
    return _locks[zlib.crc32(f"{bucket}/{key}".encode()) % _LOCK_STRIPES]


def conditional_put(put_object):
    """nanio's PUT handler, honouring If-Match / If-None-Match atomically per object."""
    from nanio.app_state import get_storage
    from nanio.errors import NoSuchKey, PreconditionFailed

    async def put(request, bucket: str, key: str):
        async with key_lock(bucket, key):
            if_match, if_none_match = request.headers.get("if-match"), request.headers.get("if-none-match")
            if if_match is not None or if_none_match is not None:
                try:
                    current = get_storage(request).head_object(bucket, key).etag
                except NoSuchKey:
                    current = None
                if not precondition_holds(if_match, if_none_match, current):
                    await request.body()  # read it: left on a keep-alive connection, it is parsed as
                    raise PreconditionFailed()  # the next request, which then fails with 400
            return await put_object(request, bucket, key)

    return put


def locked_read(handler):
    """nanio's GET / HEAD handler, run under the object's lock, its body read before the lock is let go."""
    from starlette.responses import Response

    async def read(request, bucket: str, key: str):
        async with key_lock(bucket, key):
            response = await handler(request, bucket, key)
            iterator = getattr(response, "body_iterator", None)
            if iterator is None:
                return response
            body = b"".join([chunk async for chunk in iterator])
        return Response(content=body, status_code=response.status_code, headers=dict(response.headers))

    return read


def patch_nanio() -> None:
    from nanio.handlers import object as object_handlers
    from nanio.storage import filesystem

    filesystem.is_internal_name = nanio_hidden
    object_handlers.put_object = conditional_put(object_handlers.put_object)
    object_handlers.get_object = locked_read(object_handlers.get_object)
    object_handlers.head_object = locked_read(object_handlers.head_object)


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
