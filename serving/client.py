"""A small client of the query API, and its answers as rich tables (`learn recommend`, the demo)."""

from __future__ import annotations

from urllib.parse import quote

import httpx
from rich.console import Group
from rich.table import Table

from config import Settings
from serving.schemas import Fallback, Recommendations


class ApiError(RuntimeError):
    pass


def base_url(settings: Settings) -> str:
    host = settings.serving.host
    host = "127.0.0.1" if host in ("0.0.0.0", "::") else host
    return f"http://{host}:{settings.serving.port}"


def fetch_recommendations(url: str, user_id: str, k: int = 10, fallback: Fallback = "none", token: str = "",
                          timeout_s: float = 10.0) -> Recommendations:  # fmt: skip
    """GET /users/{user_id}/recommendations; ApiError with the API's message (ErrorBody.detail) on a
    refusal. The id is percent-encoded whole ("/", "?", "#" and "%" are id characters here)."""
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    try:
        r = httpx.get(f"{url}/users/{quote(user_id, safe='')}/recommendations", params={"k": k, "fallback": fallback},
                      headers=headers, timeout=timeout_s)  # fmt: skip
    except httpx.ConnectError as e:
        raise ApiError(f"no query API answers at {url} ({e}); start it with `learn serve`") from e
    if r.status_code != 200:
        try:
            detail = r.json().get("detail", r.text)
        except ValueError:
            detail = r.text
        raise ApiError(f"{r.status_code}: {detail}")
    return Recommendations.model_validate(r.json())


def recommendations_table(rec: Recommendations) -> Group:
    """The user's newest items, then the recommendations, with titles."""
    who = rec.user_id or "this history"
    recent = Table("item", "title", title=f"{who}: newest items", title_justify="left")
    for it in rec.recent_items:
        recent.add_row(it.item_id, it.title or "")
    source = f"model {rec.model_version}" if rec.source == "model" else "popular items (fallback)"
    top = Table("#", "item", "title", "score", title=f"recommended for {who} ({source})", title_justify="left")
    for n, it in enumerate(rec.items, 1):
        top.add_row(str(n), it.item_id, it.title or "", f"{it.score:.3f}" if rec.source == "model" else f"{it.score:.0f}")
    parts = [recent, top] if rec.recent_items else [top]
    if rec.unknown_items:
        parts.append(f"[yellow]items without content embeddings (ignored): {', '.join(rec.unknown_items)}[/]")
    return Group(*parts)
