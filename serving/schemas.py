"""The API's request and response models (they document themselves in the OpenAPI schema)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field

Fallback = Literal["none", "popular"]


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
    exclude: list[str] = Field(default_factory=list, description="never recommend these items")
    only: list[str] | None = Field(None, description="recommend only among these items")
    exclude_history: bool = Field(True, description="leave out the history's own items")


class HistoryRequest(BaseModel):
    history: list[str] = Field(description="item ids, oldest first", max_length=1000)
    k: int = Field(10, ge=1)
    filter: ItemFilter = Field(default_factory=ItemFilter)
    fallback: Fallback = Field("none", description="'popular': popular items when no history item is known")


class Health(BaseModel):
    status: Literal["ok"] = "ok"


class Readiness(BaseModel):
    ready: bool
    model_version: str | None
    search: Literal["memory", "store"]
    items_in_memory: int | None = None
    content_cached: int
    error: str | None = None
