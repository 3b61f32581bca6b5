"""The HTTP query API: `create_app(settings)` (FastAPI) and `run(settings)` (uvicorn).

    GET  /users/{user_id}/recommendations?k=10[&fallback=popular]
    POST /recommendations             {"history": [...], "k": 10, "filter": {...}, "fallback": "none"}
    GET  /items/{item_id}/similar?k=10
    GET  /health   GET /ready[?require_model=true]   GET /metrics   (OpenAPI at /docs, /openapi.json)

Handlers are thin: they validate, call the `Recommender` (serving/recommend.py) that the lifespan
built, and return typed models. Every error answer is an `ErrorBody` ({"detail": str, ...}), made in one
place (ERRORS) and documented per route in the OpenAPI schema, FastAPI's own 422s included; the
schema's bounds (id rules, history length, k <= serving.max_k) are the ones the handlers apply.
(Routes are built per app, `recommendation_routes(max_k)`, because k's bound is a setting; no
`from __future__ import annotations` here: FastAPI must see their local annotations.) The API binds
127.0.0.1 by default; bound to any other address it refuses to start without a bearer token
(`serving.token`), and a configured token is required on every route except /health and /ready.

To run it as its own process (the demo does): `[sys.executable, "-m", "serving.api"]` with the settings
in the environment (deploy/stack.py `settings_env`), then wait for GET /ready; see `command()`.
"""

import asyncio
import ipaddress
import logging
import secrets
import sys
from contextlib import asynccontextmanager
from typing import Annotated

from collections.abc import Sequence

from fastapi import APIRouter, Depends, FastAPI, Path, Query, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.exceptions import HTTPException as StarletteHTTPException

from config import Settings, load_settings
from serving.metrics import ApiMetrics, LatencyMiddleware
from serving.recommend import NoModel, NothingKnown, Recommender, UnknownItem, UnknownUser
from serving.runtime import Runtime
from serving.schemas import (ID_PATTERN, ErrorBody, Fallback, FieldError, Health, Readiness, Recommendations,
                             SimilarItems, history_request)
from store.vectors import StoreUnavailable
from streams.schemas import MAX_ID_CHARS

log = logging.getLogger(__name__)


# ---- dependencies ------------------------------------------------------------------------------
def get_settings(request: Request) -> Settings:
    return request.app.state.settings


def get_runtime(request: Request) -> Runtime:
    return request.app.state.runtime


def get_recommender(runtime: Annotated[Runtime, Depends(get_runtime)]) -> Recommender:
    return runtime.recommender


_bearer = HTTPBearer(auto_error=False, description="required when serving.token is set")


def require_token(settings: Annotated[Settings, Depends(get_settings)],
                  credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)]) -> None:  # fmt: skip
    token = settings.serving.token
    if token and (credentials is None or not secrets.compare_digest(credentials.credentials, token)):
        raise _Unauthorized()


Recs = Annotated[Recommender, Depends(get_recommender)]
# Ids travel in the path as one segment or several: an id may hold "/" (sent percent-encoded).
UserId = Annotated[str, Path(min_length=1, max_length=MAX_ID_CHARS, pattern=ID_PATTERN, description="a user id")]
ItemId = Annotated[str, Path(min_length=1, max_length=MAX_ID_CHARS, pattern=ID_PATTERN, description="an item id")]


# ---- the documented answers ----------------------------------------------------------------------
def _answers(*statuses: int) -> dict:
    """OpenAPI `responses=` for the error statuses a route answers, each an ErrorBody."""
    return {s: {"model": ErrorBody, "description": ANSWERS[s]} for s in statuses}


ANSWERS = {
    400: "the request body could not be read (not UTF-8)",
    401: "serving.token is set and the request has no valid bearer token",
    404: "unknown user, or no vector for the item in the served model version",
    422: "invalid input (`errors` says where), or no history item is known (`unknown_items`)",
    503: "no model version is served yet, or the vector store is unavailable",
}


# ---- routes ------------------------------------------------------------------------------------
def recommendation_routes(max_k: int) -> APIRouter:
    """The query routes, with k bounded by serving.max_k in the schema as in the handlers."""
    router = APIRouter(tags=["recommendations"], dependencies=[Depends(require_token)])
    K = Annotated[int, Query(ge=1, le=max_k, description=f"how many items (at most {max_k})")]
    Body = history_request(max_k)

    @router.get("/users/{user_id:path}/recommendations", response_model=Recommendations,
                responses=_answers(401, 404, 422, 503))  # fmt: skip
    async def user_recommendations(user_id: UserId, rec: Recs, k: K = 10, fallback: Fallback = "none"):
        """Top-k items for a user from the state store's history, leaving out the items the user has."""
        return await rec.for_user(user_id, k, fallback)

    @router.post("/recommendations", response_model=Recommendations, responses=_answers(400, 401, 422, 503))
    async def history_recommendations(body: Body, rec: Recs):  # type: ignore[valid-type]
        """Top-k items for an explicit history (an anonymous session), with an optional filter."""
        return await rec.for_history(body)

    @router.get("/items/{item_id:path}/similar", response_model=SimilarItems, responses=_answers(401, 404, 422, 503))
    async def similar_items(item_id: ItemId, rec: Recs, k: K = 10):
        """The items whose item-tower vectors are nearest to this item's."""
        return await rec.similar(item_id, k)

    return router


operations = APIRouter(tags=["operations"])


@operations.get("/health", response_model=Health)
async def health() -> Health:
    """The process answers."""
    return Health()


@operations.get("/ready", response_model=Readiness, responses={503: {"model": Readiness}, **_answers(422)})
async def ready(runtime: Annotated[Runtime, Depends(get_runtime)], response: Response,
                require_model: bool = Query(False, description="also wait for a model version to be served")):  # fmt: skip
    """200 once the stores are open and the registry has been read (and a version loaded, if asked)."""
    snap = runtime.follower.snapshot
    ok = runtime.ready and (snap is not None or not require_model)
    response.status_code = 200 if ok else 503
    return Readiness(ready=ok, model_version=snap.version if snap else None, search=runtime.settings.serving.search,
                     items_in_memory=len(snap.index) if snap and snap.index is not None else None,
                     content_cached=len(runtime.content), error=runtime.follower.error)  # fmt: skip


@operations.get("/metrics", dependencies=[Depends(require_token)], response_class=Response,
                responses={200: {"content": {CONTENT_TYPE_LATEST.split(";")[0]: {"schema": {"type": "string"}}},
                                 "description": "Prometheus text format"}, **_answers(401)})  # fmt: skip
async def metrics(request: Request) -> Response:
    """Prometheus text: the API's request latency and serving gauges, and the workers' learn_* metrics."""
    body = await asyncio.to_thread(generate_latest, request.app.state.metrics.registry)
    return Response(body, media_type=CONTENT_TYPE_LATEST)


# ---- errors ------------------------------------------------------------------------------------
class _Unauthorized(Exception):
    pass


def _error(status: int, headers: dict | None = None):
    def handler(request: Request, exc: Exception) -> JSONResponse:
        body = ErrorBody(detail=str(exc), unknown_items=exc.unknown if isinstance(exc, NothingKnown) else [])
        return JSONResponse(body.model_dump(), status_code=status, headers=headers)

    return handler


def field_errors(errors: Sequence[dict]) -> list[FieldError]:
    """pydantic's error dicts as FieldErrors (their `input` and `ctx` may hold anything: left out)."""
    return [FieldError(loc=[p if isinstance(p, int) else str(p) for p in e.get("loc", ())], msg=str(e.get("msg", "")),
                       type=str(e.get("type", ""))) for e in errors]  # fmt: skip


def validation_body(errors: Sequence[dict]) -> ErrorBody:
    """The documented 422 body for invalid input: one line naming each field, and the list."""
    fields = field_errors(errors)
    detail = "; ".join(f"{'.'.join(map(str, f.loc))}: {f.msg}" for f in fields) or "invalid request"
    return ErrorBody(detail=f"invalid request: {detail}", errors=fields)


def _invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
    return JSONResponse(validation_body(exc.errors()).model_dump(), status_code=422)


def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
    return JSONResponse(ErrorBody(detail=str(exc.detail)).model_dump(), status_code=exc.status_code,
                        headers=getattr(exc, "headers", None))  # fmt: skip


ERRORS = {
    RequestValidationError: _invalid,
    StarletteHTTPException: _http,
    UnknownUser: _error(404),
    UnknownItem: _error(404),
    NothingKnown: _error(422),
    NoModel: _error(503),
    StoreUnavailable: _error(503),
    _Unauthorized: lambda request, exc: JSONResponse(ErrorBody(detail="a valid bearer token is required").model_dump(),
                                                     401, headers={"WWW-Authenticate": "Bearer"}),  # fmt: skip
}


# ---- the app -----------------------------------------------------------------------------------
def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_exposure(settings: Settings) -> None:
    s = settings.serving
    if not is_loopback(s.host) and not s.token:
        raise ValueError(f"serving.host={s.host} is not loopback: set serving.token (LEARN_SERVING__TOKEN) so that "
                         f"requests need a bearer token, or bind 127.0.0.1")  # fmt: skip


@asynccontextmanager
async def lifespan(app: FastAPI):
    runtime = await asyncio.to_thread(Runtime, app.state.settings, app.state.metrics)
    app.state.runtime = runtime.start()
    try:
        yield
    finally:
        await asyncio.to_thread(runtime.close)


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or load_settings()
    check_exposure(settings)
    app = FastAPI(title="learn-stream queries", version="1", lifespan=lifespan, exception_handlers=ERRORS,
                  description="Top-K recommendations from the LEARN twin towers, following the stream.")  # fmt: skip
    app.state.settings = settings
    app.state.metrics = ApiMetrics(settings.serving.metrics_urls)
    app.add_middleware(LatencyMiddleware, metrics=app.state.metrics)
    app.include_router(recommendation_routes(settings.serving.max_k))
    app.include_router(operations)
    return app


def run(settings: Settings | None = None, log_level: str = "info") -> None:
    """Serve on settings.serving.host:port until stopped (SIGINT/SIGTERM end it cleanly)."""
    import uvicorn

    settings = settings or load_settings()
    logging.basicConfig(level=log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    app = create_app(settings)
    uvicorn.run(app, host=settings.serving.host, port=settings.serving.port, log_level=log_level,
                access_log=False, lifespan="on")  # fmt: skip


def command() -> list[str]:
    """The argv that runs the API as its own process, reading its settings from LEARN_* variables:

        stack.start_process("api", command(), {**os.environ, **settings_env(s)})
        stack.wait_http("api", f"http://{s.serving.host}:{s.serving.port}/ready")
    """
    return [sys.executable, "-m", "serving.api"]


if __name__ == "__main__":
    run()
