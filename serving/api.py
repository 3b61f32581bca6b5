"""The HTTP query API: `create_app(settings)` (FastAPI) and `run(settings)` (uvicorn).

    GET  /users/{user_id}/recommendations?k=10[&fallback=popular]
    POST /recommendations             {"history": [...], "k": 10, "filter": {...}, "fallback": "none"}
    GET  /items/{item_id}/similar?k=10
    GET  /health   GET /ready[?require_model=true]   GET /metrics   (OpenAPI at /docs, /openapi.json)

Handlers are thin: they validate, call the `Recommender` (serving/recommend.py) that the lifespan
built, and return typed models; domain errors become 404 / 422 / 503 in one place. The API binds
127.0.0.1 by default; bound to any other address it refuses to start without a bearer token
(`serving.token`), and a configured token is required on every route except /health and /ready.

To run it as its own process (the demo does): `[sys.executable, "-m", "serving.api"]` with the settings
in the environment (deploy/stack.py `settings_env`), then wait for GET /ready; see `command()`.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import secrets
import sys
from contextlib import asynccontextmanager
from typing import Annotated

from fastapi import APIRouter, Depends, FastAPI, Query, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from config import Settings, load_settings
from serving.metrics import ApiMetrics, LatencyMiddleware
from serving.recommend import NoModel, NothingKnown, Recommender, UnknownItem, UnknownUser
from serving.runtime import Runtime
from serving.schemas import Fallback, Health, HistoryRequest, Readiness, Recommendations, SimilarItems

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


def top_k(settings: Annotated[Settings, Depends(get_settings)],
          k: Annotated[int, Query(ge=1, description="how many items (at most serving.max_k)")] = 10) -> int:  # fmt: skip
    check_k(k, settings.serving.max_k, ("query", "k"))
    return k


def check_k(k: int, max_k: int, loc: tuple) -> None:
    if k > max_k:
        raise RequestValidationError([{"type": "less_than_equal", "loc": loc, "input": k, "ctx": {"le": max_k},
                                       "msg": f"Input should be less than or equal to {max_k}"}])  # fmt: skip


Recs = Annotated[Recommender, Depends(get_recommender)]
K = Annotated[int, Depends(top_k)]


# ---- routes ------------------------------------------------------------------------------------
recommendations = APIRouter(tags=["recommendations"], dependencies=[Depends(require_token)])


@recommendations.get("/users/{user_id}/recommendations", response_model=Recommendations)
async def user_recommendations(user_id: str, rec: Recs, k: K, fallback: Fallback = "none") -> Recommendations:
    """Top-k items for a user from the state store's history, leaving out the items the user has."""
    return await rec.for_user(user_id, k, fallback)


@recommendations.post("/recommendations", response_model=Recommendations)
async def history_recommendations(body: HistoryRequest, rec: Recs, settings: Annotated[Settings, Depends(get_settings)]):
    """Top-k items for an explicit history (an anonymous session), with an optional filter."""
    check_k(body.k, settings.serving.max_k, ("body", "k"))
    return await rec.for_history(body)


@recommendations.get("/items/{item_id}/similar", response_model=SimilarItems)
async def similar_items(item_id: str, rec: Recs, k: K) -> SimilarItems:
    """The items whose item-tower vectors are nearest to this item's."""
    return await rec.similar(item_id, k)


operations = APIRouter(tags=["operations"])


@operations.get("/health", response_model=Health)
async def health() -> Health:
    """The process answers."""
    return Health()


@operations.get("/ready", response_model=Readiness, responses={503: {"model": Readiness}})
async def ready(runtime: Annotated[Runtime, Depends(get_runtime)], response: Response,
                require_model: bool = Query(False, description="also wait for a model version to be served")):  # fmt: skip
    """200 once the stores are open and the registry has been read (and a version loaded, if asked)."""
    snap = runtime.follower.snapshot
    ok = runtime.ready and (snap is not None or not require_model)
    response.status_code = 200 if ok else 503
    return Readiness(ready=ok, model_version=snap.version if snap else None, search=runtime.settings.serving.search,
                     items_in_memory=len(snap.index) if snap and snap.index is not None else None,
                     content_cached=len(runtime.content), error=runtime.follower.error)  # fmt: skip


@operations.get("/metrics", dependencies=[Depends(require_token)], response_class=Response)
async def metrics(request: Request) -> Response:
    """Prometheus text: the API's request latency and serving gauges, and the workers' learn_* metrics."""
    body = await asyncio.to_thread(generate_latest, request.app.state.metrics.registry)
    return Response(body, media_type=CONTENT_TYPE_LATEST)


# ---- errors ------------------------------------------------------------------------------------
class _Unauthorized(Exception):
    pass


def _error(status: int, headers: dict | None = None):
    def handler(request: Request, exc: Exception) -> JSONResponse:
        content = {"detail": str(exc)}
        if isinstance(exc, NothingKnown):
            content["unknown_items"] = exc.unknown
        return JSONResponse(content, status_code=status, headers=headers)

    return handler


ERRORS = {
    UnknownUser: _error(404),
    UnknownItem: _error(404),
    NothingKnown: _error(422),
    NoModel: _error(503),
    _Unauthorized: lambda request, exc: JSONResponse({"detail": "a valid bearer token is required"}, 401,
                                                     headers={"WWW-Authenticate": "Bearer"}),  # fmt: skip
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
    app.include_router(recommendations)
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
