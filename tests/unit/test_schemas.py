import json
import time

import pytest

from streams.schemas import (
    MAX_DLQ_PAYLOAD_BYTES,
    MAX_ID_CHARS,
    ActionType,
    Interaction,
    ItemRecord,
    RecordError,
    dead_letter,
    decode_interaction,
    decode_item,
    encode,
)

NOW = time.time()


def test_item_round_trip_and_text_fields():
    item = ItemRecord(item_id="B01", title=" Drill ", brand="", categories=["Tools", " "],
                      attributes={"voltage": "18V"}, event_time=NOW)  # fmt: skip
    back = decode_item(encode(item))
    assert back == item
    assert back.text_fields() == {"title": "Drill", "categories": "Tools", "voltage": "18V"}


def test_interaction_round_trip():
    ev = Interaction(event_id="e1", user_id="u1", item_id="i1", action=ActionType.cart, event_time=NOW)
    assert decode_interaction(encode(ev)) == ev


@pytest.mark.parametrize(
    "raw, fragment",
    [
        (b"{not json", "malformed JSON"),
        (b"\xff\xfe", "not UTF-8"),
        (b"[1, 2]", "must be a JSON object"),
        (b'{"event_id":"e","user_id":"u","item_id":"i","event_time":NaN}', "NaN"),
        (b'{"event_id":"e","user_id":"u","item_id":"i"}', "event_time"),
        (b'{"event_id":"e","user_id":"u","item_id":"i","event_time":5}', "event_time"),
        (b'{"event_id":"e","user_id":"u","item_id":"i","event_time":1e12}', "event_time"),
        (b'{"event_id":"e","user_id":"","item_id":"i","event_time":1.7e9}', "user_id"),
        (b'{"event_id":"e","user_id":"u","item_id":"i","event_time":1.7e9,"action":"steal"}', "action"),
        (b'{"event_id":"e","user_id":"u","item_id":"i","event_time":1.7e9,"extra":1}', "extra"),
        (b'{"schema_version":2,"event_id":"e","user_id":"u","item_id":"i","event_time":1.7e9}', "schema_version"),
    ],
)
def test_bad_interactions_have_readable_reasons(raw, fragment):
    with pytest.raises(RecordError) as err:
        decode_interaction(raw)
    assert fragment in err.value.reason


def test_too_long_id_names_the_field_and_rule():
    raw = json.dumps({"event_id": "e", "user_id": "u" * (MAX_ID_CHARS + 1), "item_id": "i",
                      "event_time": NOW}).encode()  # fmt: skip
    with pytest.raises(RecordError) as err:
        decode_interaction(raw)
    (e,) = err.value.errors
    assert e["field"] == "user_id" and str(MAX_ID_CHARS) in e["rule"]


def test_item_without_text_is_refused_but_tombstone_is_not():
    with pytest.raises(RecordError, match="needs some text"):
        decode_item(json.dumps({"item_id": "a", "title": "   ", "event_time": NOW}).encode())
    assert decode_item(json.dumps({"item_id": "a", "deleted": True, "event_time": NOW}).encode()).deleted


def test_huge_text_is_accepted_for_the_encoder_to_truncate():
    item = decode_item(json.dumps({"item_id": "a", "description": "x" * 2_000_000, "event_time": NOW}).encode())
    assert len(item.description) == 2_000_000


def test_dead_letter_keeps_the_original_bytes():
    raw = b"\xff{bad"
    with pytest.raises(RecordError) as err:
        decode_item(raw)
    letter = dead_letter(raw, err.value, "items", partition=2, offset=7, key=b"k")
    assert letter.payload == "\\xff{bad" and letter.payload_bytes == 5
    assert (letter.partition, letter.offset, letter.key) == (2, 7, "k")
    assert "UTF-8" in letter.reason


def test_a_null_value_is_a_record_error_not_a_crash():
    for decode in (decode_interaction, decode_item):
        with pytest.raises(RecordError) as err:
            decode(None)
        assert "null value (a tombstone)" in err.value.reason
    with pytest.raises(RecordError, match="must be bytes"):
        decode_interaction(42)


def test_dead_letter_of_a_tombstone_and_of_a_huge_record():
    x = dead_letter(None, RecordError("null value"), "interactions", 0, 7, b"u1")
    assert (x.payload, x.payload_bytes, x.null_value, x.key) == ("", 0, True, "u1")
    huge = b"x" * (MAX_DLQ_PAYLOAD_BYTES + 10)
    y = dead_letter(huge, RecordError("too big"), "interactions")
    assert len(y.payload) == MAX_DLQ_PAYLOAD_BYTES and y.payload_truncated and y.payload_bytes == len(huge)
    assert not y.null_value
