"""Event schemas on the wire: JSON objects validated by pydantic v2 models.

Every record carries `schema_version`. `decode_item` / `decode_interaction` turn raw bytes into a
model or raise `RecordError` with a readable reason naming the field, the value and the rule broken,
which is what lands in the dead-letter topic. A null value (a Kafka tombstone) is a `RecordError` too:
what a tombstone means is the worker's decision (an item deletion, a dead-lettered interaction).
"""

from __future__ import annotations

import json
import time
from enum import Enum
from typing import Annotated, Any, Literal, TypeVar

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    ValidationError,
    field_validator,
    model_validator,
)

SCHEMA_VERSION = 1
MAX_ID_CHARS = 128
ID_PATTERN = r"^[^\x00-\x1f\x7f]+$"  # an id holds no control character (the API's ids follow this rule)
MAX_RECORD_BYTES = 8 * 1024 * 1024  # larger payloads are dead-lettered, not parsed
# The interaction worker's dead letters carry at most this much of the original payload (a Kafka
# request's default limit is 1 MiB, and a letter that cannot be sent stops the worker; a valid
# interaction is a few hundred bytes): `payload_bytes` keeps the true size.
MAX_DLQ_PAYLOAD_BYTES = 256 * 1024
# Event times are epoch seconds; anything outside these bounds is a producer bug, not an event.
MIN_EVENT_TIME = 946_684_800.0  # 2000-01-01
MAX_FUTURE_S = 24 * 3600.0

Id = Annotated[
    str,
    StringConstraints(strip_whitespace=True, min_length=1, max_length=MAX_ID_CHARS, pattern=ID_PATTERN),
]
EventTime = Annotated[float, Field(allow_inf_nan=False)]


class RecordError(ValueError):
    """A record that cannot be accepted. `reason` is one line; `errors` lists field/value/rule."""

    def __init__(self, reason: str, errors: list[dict[str, Any]] | None = None):
        super().__init__(reason)
        self.reason = reason
        self.errors = errors or []


class _Event(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    schema_version: Literal[1] = SCHEMA_VERSION
    event_time: EventTime

    @field_validator("event_time")
    @classmethod
    def _plausible_time(cls, v: float) -> float:
        if v < MIN_EVENT_TIME or v > time.time() + MAX_FUTURE_S:
            raise ValueError("event_time must be epoch seconds between 2000-01-01 and now + 1 day")
        return v


class ItemRecord(_Event):
    """A new or changed item text, keyed by item id. `deleted=True` is a tombstone."""

    item_id: Id
    title: str | None = None
    brand: str | None = None
    categories: list[str] = Field(default_factory=list)
    description: str | None = None
    attributes: dict[str, str] = Field(default_factory=dict)
    deleted: bool = False

    def text_fields(self) -> dict[str, str]:
        """The non-empty text fields, as the prompt builder wants them."""
        fields = {
            "title": (self.title or "").strip(),
            "brand": (self.brand or "").strip(),
            "categories": ", ".join(c.strip() for c in self.categories if c and c.strip()),
            "description": (self.description or "").strip(),
        }
        fields.update({k: v.strip() for k, v in self.attributes.items() if v and v.strip()})
        return {k: v for k, v in fields.items() if v}

    @model_validator(mode="after")
    def _has_text(self) -> "ItemRecord":
        if not self.deleted and not self.text_fields():
            raise ValueError("an item needs some text: title, description, brand, categories or attributes")
        return self


class ActionType(str, Enum):
    view = "view"
    click = "click"
    cart = "cart"
    purchase = "purchase"
    review = "review"
    rating = "rating"


class Interaction(_Event):
    """A user's action on an item, keyed by user id."""

    event_id: Id
    user_id: Id
    item_id: Id
    action: ActionType = ActionType.review


class DeadLetter(BaseModel):
    """What goes to a `.dlq` topic: the original payload and why it was refused."""

    schema_version: Literal[1] = SCHEMA_VERSION
    reason: str
    errors: list[dict[str, Any]] = Field(default_factory=list)
    source_topic: str
    partition: int | None = None
    offset: int | None = None
    key: str | None = None
    payload: str  # the original bytes, decoded as UTF-8 with invalid bytes escaped (\x..)
    payload_bytes: int
    refused_at: float = Field(default_factory=time.time)
    null_value: bool = False  # the record had no value at all (a tombstone); payload is ""
    payload_truncated: bool = False  # payload holds only the first MAX_DLQ_PAYLOAD_BYTES bytes


def _reject_constant(token: str) -> float:
    raise RecordError(f"JSON constant {token} is not allowed (NaN/Infinity)")


def _load_json(raw: bytes) -> dict[str, Any]:
    if len(raw) > MAX_RECORD_BYTES:
        raise RecordError(f"record of {len(raw)} bytes exceeds the {MAX_RECORD_BYTES}-byte limit")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise RecordError(f"payload is not UTF-8 (byte {e.start}: {raw[e.start:e.start + 1]!r})") from None
    try:
        obj = json.loads(text, parse_constant=_reject_constant)
    except json.JSONDecodeError as e:
        raise RecordError(f"malformed JSON: {e.msg} at line {e.lineno} column {e.colno}") from None
    if not isinstance(obj, dict):
        raise RecordError(f"a record must be a JSON object, got {type(obj).__name__}")
    return obj


def _short(value: Any, limit: int = 80) -> str:
    s = repr(value)
    return s if len(s) <= limit else s[: limit - 3] + "..."


def _readable(e: ValidationError) -> RecordError:
    errors = [
        {
            "field": ".".join(str(p) for p in err["loc"]) or "(record)",
            "value": _short(err.get("input")),
            "rule": err["msg"],
        }
        for err in e.errors(include_url=False)
    ]
    reason = "; ".join(f"{x['field']}={x['value']}: {x['rule']}" for x in errors)
    return RecordError(reason, errors)


M = TypeVar("M", bound=_Event)


def _decode(raw: bytes | None, model: type[M]) -> M:
    if raw is None:
        raise RecordError(f"null value (a tombstone): a {model.__name__} record needs a JSON object")
    if not isinstance(raw, (bytes, bytearray, memoryview)):
        raise RecordError(f"a record value must be bytes, got {type(raw).__name__}")
    if not isinstance(raw, bytes):
        raw = bytes(raw)
    # Fast path: pydantic-core parses and validates in one pass (about 2x faster than json + validate).
    if len(raw) <= MAX_RECORD_BYTES:
        try:
            return model.model_validate_json(raw)
        except ValidationError:
            pass  # fall through to the slow path, which explains what is wrong
    obj = _load_json(raw)
    try:
        return model.model_validate(obj)
    except ValidationError as e:
        raise _readable(e) from None


def decode_item(raw: bytes | None) -> ItemRecord:
    return _decode(raw, ItemRecord)


def decode_interaction(raw: bytes | None) -> Interaction:
    return _decode(raw, Interaction)


def encode(record: BaseModel) -> bytes:
    """The wire form of any record: compact JSON, UTF-8."""
    return record.model_dump_json(exclude_defaults=False).encode("utf-8")


def unexpected_error(exc: BaseException) -> RecordError:
    """A RecordError for an exception that is not a record error (a bug, a surprise in a library), so
    the record that caused it is dead-lettered with what went wrong instead of stopping its partition."""
    return RecordError(f"unexpected {type(exc).__name__} while handling the record: {_short(str(exc), 300)}")


def dead_letter(
    raw: bytes | None,
    error: RecordError,
    topic: str,
    partition=None,
    offset=None,
    key=None,
    max_payload: int | None = None,
) -> DeadLetter:
    """The letter for a refused record. `raw=None` (a tombstone) gives payload "" and null_value=True;
    `max_payload` cuts the payload at that many bytes (payload_truncated=True, payload_bytes stays)."""
    raw_bytes = b"" if raw is None else bytes(raw)
    max_payload = len(raw_bytes) if max_payload is None else max_payload
    return DeadLetter(
        reason=error.reason,
        errors=error.errors,
        source_topic=topic,
        partition=partition,
        offset=offset,
        key=key.decode("utf-8", "backslashreplace") if isinstance(key, (bytes, bytearray)) else key,
        payload=raw_bytes[:max_payload].decode("utf-8", "backslashreplace"),
        payload_bytes=len(raw_bytes),
        null_value=raw is None,
        payload_truncated=len(raw_bytes) > max_payload,
    )
