"""The conditions deploy/s3_server.py enforces on a PUT (If-Match / If-None-Match, RFC 9110)."""

import pytest

from deploy.s3_server import etags, precondition_holds

ETAG = '"b17dcbe28af2277074db23a59eaf252e"'


def test_etags_drop_quotes_and_weak_prefix():
    assert etags('"a", W/"b" ,*') == {"a", "b", "*"}


@pytest.mark.parametrize(
    ("if_match", "if_none_match", "current", "holds"),
    [
        (None, None, None, True),  # unconditional
        (None, None, ETAG, True),
        (None, "*", None, True),  # create: nothing there yet
        (None, "*", ETAG, False),  # create over an existing object (a restarted Tansu's first watermark)
        (ETAG, None, ETAG, True),  # update of the version read
        ('"0123"', None, ETAG, False),  # update of an older version (a concurrent writer won)
        (ETAG, None, None, False),  # update of an object that is gone
        ("*", None, ETAG, True),
        (None, ETAG, ETAG, False),
        (None, '"0123"', ETAG, True),
    ],
)
def test_precondition(if_match, if_none_match, current, holds):
    assert precondition_holds(if_match, if_none_match, current) is holds
