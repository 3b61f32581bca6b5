"""The API's request and response models (they document themselves in the OpenAPI schema).

Ids in requests follow the stream's rule for ids (streams/schemas.py): 1 to MAX_ID_CHARS characters,
no control characters, and valid UTF-8 (a lone surrogate is refused), so an id the API accepts is one
the stores could hold. Every refusal and failure answers an `ErrorBody`.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import AfterValidator, BaseModel, Field, StringConstraints, create_model

from streams.schemas import ID_PATTERN, MAX_ID_CHARS

Fallback = Literal["none", "popular"]
MAX_HISTORY = 1000  # history items in one request
MAX_FILTER_IDS = 10_000  # ids in `exclude` or `only`


def _utf8(item_id: str) -> str:
    try:
        item_id.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError("an id must be valid UTF-8 text (it holds a lone surrogate)") from None
    return item_id


Id = Annotated[str, StringConstraints(min_length=1, max_length=MAX_ID_CHARS, pattern=ID_PATTERN),
               AfterValidator(_utf8)]  # fmt: skip


class FieldError(BaseModel):
    loc: list[str | int] = Field(description="where: 'path', 'query' or 'body', then the field names")
    msg: str
    type: str


class ErrorBody(BaseModel):
    """Every non-2xx answer of the API (400, 401, 404, 422, 503)."""

    detail: str = Field(description="what went wrong, in one line")
    errors: list[FieldError] = Field(default_factory=list, description="422 on invalid input: each field's error")
    unknown_items: list[str] = Field(default_factory=list, description="422 when no history item is known: "
                                     "the history items with no content embedding")  # fmt: skip


class ScoredItem(BaseModel):
    item_id: str
    score: float = Field(description="inner product of user and item vectors; for popular items, the number "
                                     "of users whose recent history holds the item")  # fmt: skip
    title: str | None = Field(None, description="None when the item's title is not known")


class HistoryItem(BaseModel):
    item_id: str
    title: str | None = None
    event_time: float | None = None


class Recommendations(BaseModel):
    user_id: str | None = Field(None, description="None for an explicit (anonymous) history")
    model_version: str | None = Field(None, description="the model version that ranked the items")
    source: Literal["model", "popular"] = "model"
    items: list[ScoredItem]
    recent_items: list[HistoryItem] = Field(default_factory=list, description="the history's newest items, "
                                            "newest first (up to 5)")  # fmt: skip
    unknown_items: list[str] = Field(default_factory=list, description="history items with no content "
                                     "embedding in the store (ignored)")  # fmt: skip


class SimilarItems(BaseModel):
    item_id: str
    title: str | None = None
    model_version: str
    items: list[ScoredItem]


class ItemFilter(BaseModel):
    exclude: list[Id] = Field(default_factory=list, description="never recommend these items",
                              max_length=MAX_FILTER_IDS)  # fmt: skip
    only: list[Id] | None = Field(None, description="recommend only among these items", max_length=MAX_FILTER_IDS)
    exclude_history: bool = Field(True, description="leave out the history's own items")


class HistoryRequest(BaseModel):
    history: list[Id] = Field(description="item ids, oldest first", min_length=1, max_length=MAX_HISTORY)
    k: int = Field(10, ge=1, description="how many items (at most serving.max_k)")
    filter: ItemFilter = Field(default_factory=ItemFilter)
    fallback: Fallback = Field("none", description="'popular': popular items when no history item is known")


def history_request(max_k: int) -> type[HistoryRequest]:
    """HistoryRequest with k bounded by `max_k` (serving.max_k), so that the schema states the bound."""
    return create_model("HistoryRequest", __base__=HistoryRequest, __doc__=HistoryRequest.__doc__,
                        k=(int, Field(10, ge=1, le=max_k, description=f"how many items (at most {max_k})")))  # fmt: skip


class Health(BaseModel):
    status: Literal["ok"] = "ok"


class Readiness(BaseModel):
    ready: bool
    model_version: str | None
    search: Literal["memory", "store"]
    items_in_memory: int | None = None
    content_cached: int
    error: str | None = None
