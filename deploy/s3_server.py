"""The local S3-compatible server behind the durable embedded broker: localbucket (PyPI), quieter.

    python -m deploy.s3_server --host 127.0.0.1 --port P DATA_ROOT

localbucket keeps each bucket as a folder and each object as a file, written to a temporary file and
renamed into place (atomic; no fsync). It logs one line per request, which for Tansu is one line per
produced batch and per offset commit; here successful requests are not logged, errors still are.
"""

from __future__ import annotations

import logging
import re

_SUCCESS = re.compile(r'" [23]\d\d ')


class DropSuccessfulRequests(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not _SUCCESS.search(record.getMessage())


def main() -> None:
    import localbucket

    localbucket.logger.addFilter(DropSuccessfulRequests())
    localbucket.main()


if __name__ == "__main__":
    main()
