"""The query API over real HTTP (uvicorn on 127.0.0.1) on real stores: per-partition rocksdict state
written by PartitionState, a registry with exported towers, a milvus-lite file, titles."""

from __future__ import annotations

import json
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from urllib.parse import quote

import httpx
import pytest
import torch
import uvicorn

from bench.seed import publish_version, random_unit, write_catalogue, write_sequences
from config import load_settings
from deploy.broker import free_port
from serving.api import create_app
from serving.client import fetch_recommendations
from serving.schemas import ErrorBody
from store.registry import ModelRegistry
from store.vectors import CONTENT, VectorStore
from trainer.checkpoint import load_checkpoint

pytestmark = pytest.mark.integration

N, D = 300, 32
# ids the stream accepts, stored as they are: quotes, backslashes, URL characters, an injection attempt
ODD = ['q"uote', "back\\slash", "ends\\", '" or item_id != "', "a/b?c#d%20&k=1", "s'ingle", "\u00e9\u4e2d\U0001f600",
       "c1\x85", "x" * 128]  # fmt: skip
IDS = [f"item{j}" for j in range(N - len(ODD))] + ODD
SEQUENCES = {f"user{u}": [IDS[(7 * u + j) % N] for j in range(3 + u % 5)] for u in range(40)}
SEQUENCES["user0"] = ["item1", "item2", "item3", "ghost"]  # "ghost" was never encoded
SEQUENCES.update({f"{odd[:100]}-user": [odd, "item1"] for odd in ODD})
# ids no stored id can be: control characters, NUL, lone surrogates, too long; and unknown ones
HOSTILE = ["nul\x00x", "\x00", "ctl\x01\x1fx", "nl\nx", "cr\rx", "tab\tx", "del\x7fx", "sur\ud800x", "\udfff", "x" * 10_000,
           "x" * 129, '" or "1"=="1', "back\\", "%00", "%", " ", "\u00e9\u4e2d\U0001f600-unknown", "{ids}"]  # fmt: skip


class Api:
    """create_app(settings) served by uvicorn in a thread."""

    def __init__(self, settings):
        self.settings = settings
        self.server = uvicorn.Server(uvicorn.Config(create_app(settings), host="127.0.0.1",
                                                    port=settings.serving.port, log_level="warning"))  # fmt: skip
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.url = f"http://127.0.0.1:{settings.serving.port}"

    def __enter__(self) -> "Api":
        self.thread.start()
        wait_for(lambda: httpx.get(f"{self.url}/ready?require_model=true", timeout=2).status_code == 200, 60)
        return self

    def __exit__(self, *exc) -> None:
        self.server.should_exit = True
        self.thread.join(30)


def wait_for(cond, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            if cond():
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    raise AssertionError(f"not true within {timeout_s}s")


@pytest.fixture
def deployment(tmp_path):
    """A seeded data dir; the test process holds the milvus-lite file (the encoder worker's role)."""
    settings = load_settings(data_dir=tmp_path / "data",
                             serving={"port": free_port(), "poll_s": 0.1, "sync_s": 0.3, "max_k": 50})  # fmt: skip
    content = random_unit(N, D)
    store = VectorStore(settings.vector_uri).open()
    write_catalogue(settings, store, IDS, content, {i: f"Title of {i}" for i in IDS})
    write_sequences(settings, SEQUENCES)
    publish_version(settings, store, IDS, content, seed=0)
    yield settings, store, content
    store.close()


def test_queries_validation_and_metrics(deployment):
    settings, _, _ = deployment
    with Api(settings) as api, httpx.Client(base_url=api.url, timeout=10) as c:
        r = c.get("/users/user0/recommendations", params={"k": 5})
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["model_version"] == "v000001" and body["source"] == "model" and len(body["items"]) == 5
        got = [x["item_id"] for x in body["items"]]
        assert not set(got) & set(SEQUENCES["user0"])  # the user's own items are left out
        assert all(x["title"] == f"Title of {x['item_id']}" for x in body["items"])
        assert [x["item_id"] for x in body["recent_items"]] == ["ghost", "item3", "item2", "item1"]
        assert body["unknown_items"] == ["ghost"]

        r = c.get("/users/stranger/recommendations")
        assert r.status_code == 404 and "unknown user 'stranger'" in r.json()["detail"]
        r = c.get("/users/stranger/recommendations", params={"fallback": "popular", "k": 3})
        assert r.status_code == 200 and r.json()["source"] == "popular" and len(r.json()["items"]) == 3
        for k in (0, 51, "x"):
            assert c.get("/users/user1/recommendations", params={"k": k}).status_code == 422

        r = c.post("/recommendations", json={"history": ["item5", "nope", "item6"], "k": 4,
                                             "filter": {"exclude": ["item9"], "only": IDS[:20]}})  # fmt: skip
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["user_id"] is None and body["unknown_items"] == ["nope"]
        assert {x["item_id"] for x in body["items"]} <= set(IDS[:20]) - {"item5", "item6", "item9"}
        r = c.post("/recommendations", json={"history": ["nope"]})
        assert r.status_code == 422 and r.json()["unknown_items"] == ["nope"]
        r = c.post("/recommendations", json={"history": ["nope"], "fallback": "popular"})
        assert r.status_code == 200 and r.json()["source"] == "popular"
        assert c.post("/recommendations", json={"history": ["item1"], "k": 500}).status_code == 422

        r = c.get("/items/item4/similar", params={"k": 3})
        assert r.status_code == 200 and r.json()["title"] == "Title of item4"
        assert "item4" not in [x["item_id"] for x in r.json()["items"]]
        assert c.get("/items/nope/similar").status_code == 404

        assert c.get("/health").json() == {"status": "ok"}
        assert c.get("/ready").json()["items_in_memory"] == N
        assert "/users/{user_id}/recommendations" in c.get("/openapi.json").json()["paths"]
        text = c.get("/metrics").text
        assert 'learn_api_request_seconds_count{method="GET",route="/users/{user_id}/recommendations",status="200"}' in text
        assert "learn_api_search_seconds_count" in text


def path_part(i: str) -> str:
    """An id as one percent-encoded path segment (a lone surrogate as the bytes it would be)."""
    return quote(i.encode("utf-8", "surrogatepass"), safe="")


def post_history(c: httpx.Client, history: list[str], **extra) -> httpx.Response:
    """JSON with \\u escapes, so that lone surrogates travel as JSON allows."""
    body = json.dumps({"history": history, **extra}).encode()
    return c.post("/recommendations", content=body, headers={"Content-Type": "application/json"})


def assert_documented_answer(r: httpx.Response, allowed: set[int]) -> None:
    assert r.status_code in allowed, (r.request.url, r.status_code, r.text)
    if r.status_code != 200:
        ErrorBody.model_validate(r.json())  # the one documented error body


@pytest.mark.parametrize("search", ["memory", "store"])
def test_any_id_answers_200_404_or_422_never_500(deployment, search):
    settings, _, _ = deployment
    settings = settings.model_copy(update={"serving": settings.serving.model_copy(update={"search": search})})
    with Api(settings) as api, httpx.Client(base_url=api.url, timeout=30) as c:
        for i in HOSTILE:
            assert_documented_answer(post_history(c, [i]), {422})
            r = post_history(c, [i, "item1"])
            assert_documented_answer(r, {200, 422})
            if r.status_code == 200:  # a valid id that no store holds
                assert r.json()["unknown_items"] == [i]
            assert_documented_answer(post_history(c, ["item1"], filter={"exclude": [i], "only": [i, "item2"]}),
                                     {200, 422})  # fmt: skip
            assert_documented_answer(c.get(f"/users/{path_part(i)}/recommendations"), {404, 422})
            assert_documented_answer(c.get(f"/items/{path_part(i)}/similar"), {404, 422})
        for bad in (b'{"history": ["\xff"]}', b'{"history": ', b'[1]', b'{"history": "item1"}'):
            assert_documented_answer(c.post("/recommendations", content=bad, headers={"Content-Type": "application/json"}),
                                     {400, 422})  # fmt: skip

        for odd in ODD:  # stored odd ids are found through every route
            r = post_history(c, [odd], k=3)
            assert r.status_code == 200 and r.json()["unknown_items"] == [], (odd, r.text)
            r = c.get(f"/items/{path_part(odd)}/similar", params={"k": 3})
            assert r.status_code == 200 and r.json()["item_id"] == odd, (odd, r.text)
            assert r.json()["title"] == f"Title of {odd}"
            rec = fetch_recommendations(api.url, f"{odd[:100]}-user", k=3)  # the client encodes the id
            assert rec.user_id == f"{odd[:100]}-user" and [x.item_id for x in rec.recent_items] == ["item1", odd]


def test_the_schema_bounds_are_the_api_bounds(deployment):
    settings, _, _ = deployment
    with Api(settings) as api, httpx.Client(base_url=api.url, timeout=10) as c:
        assert c.post("/recommendations", json={"history": ["item1"], "k": 50}).status_code == 200
        assert c.get("/users/user1/recommendations", params={"k": 50}).status_code == 200
        for r in (c.post("/recommendations", json={"history": ["item1"], "k": 51}),
                  c.post("/recommendations", json={"history": []}),
                  c.post("/recommendations", json={"history": ["item1"] * 1001}),
                  c.get("/users/user1/recommendations", params={"k": 51}),
                  c.get("/items/item1/similar", params={"k": 0})):  # fmt: skip
            assert r.status_code == 422 and ErrorBody.model_validate(r.json()).errors, r.text
        body = c.post("/recommendations", json={"history": ["item1"], "k": 51}).json()
        assert body["detail"].startswith("invalid request: body.k:") and body["errors"][0]["loc"] == ["body", "k"]
        r = c.get("/users/stranger/recommendations")
        assert r.status_code == 404 and ErrorBody.model_validate(r.json()).detail.startswith("unknown user")


def test_the_api_follows_new_users_new_items_and_deletions(deployment):
    settings, store, content = deployment
    with Api(settings) as api, httpx.Client(base_url=api.url, timeout=10) as c:
        assert c.get("/users/newcomer/recommendations").status_code == 404
        write_sequences(settings, {"newcomer": ["item10", "item11"]}, t0=1.8e9)
        wait_for(lambda: c.get("/users/newcomer/recommendations").status_code == 200, 10)

        # a new item, written the encoder worker's way: content, then the current version's vectors
        version = ModelRegistry(settings.registry_path).current()
        tower = load_checkpoint(version.path)[0].encode_items  # the model artefact, as the publisher wrote it
        fresh = random_unit(1, D, seed=7)
        store.upsert(CONTENT, ["fresh"], fresh)
        with torch.no_grad():
            store.upsert(version.collection, ["fresh"], tower(torch.from_numpy(fresh)).numpy())
        only = {"history": ["item1"], "k": 3, "filter": {"only": ["fresh", "item2"]}}
        wait_for(lambda: "fresh" in [x["item_id"] for x in c.post("/recommendations", json=only).json()["items"]], 10)

        store.delete(version.collection, ["item2"])  # a tombstone deletes from every collection
        store.delete(CONTENT, ["item2"])
        wait_for(lambda: [x["item_id"] for x in c.post("/recommendations", json=only).json()["items"]] == ["fresh"], 10)
        assert c.get("/items/item2/similar").status_code == 404


def test_versions_switch_under_load_without_failed_requests(deployment):
    settings, store, content = deployment
    users = sorted(SEQUENCES)
    stop, seen, failures = threading.Event(), [], []

    def load(n: int) -> None:
        with httpx.Client(base_url=api.url, timeout=10) as c:
            j = n
            while not stop.is_set():
                r = c.get(f"/users/{path_part(users[j % len(users)])}/recommendations")
                if r.status_code == 200:
                    seen.append(r.json()["model_version"])
                else:
                    failures.append((r.status_code, r.text))
                j += 1

    with Api(settings) as api, ThreadPoolExecutor(4) as pool:
        futures = [pool.submit(load, n) for n in range(4)]
        wait_for(lambda: len(seen) > 20, 10)
        v2 = publish_version(settings, store, IDS, content, seed=1)  # stage, fill, mark published, promote
        wait_for(lambda: seen[-1] == v2.name, 30)
        # the ten answers after the switch, checked below, all come before the rollback (a loaded
        # machine answers few requests per poll interval)
        wait_for(lambda: len(seen) - seen.index(v2.name) > 10, 30)
        ModelRegistry(settings.registry_path).promote("v000001")  # and a rollback, still under load
        wait_for(lambda: seen[-1] == "v000001", 30)
        n = len(seen)
        wait_for(lambda: len(seen) > n + 20, 10)
        stop.set()
        for f in futures:
            f.result()
    assert not failures, failures[:3]
    assert {"v000001", "v000002"} <= set(seen)
    switch = seen.index("v000002")
    assert all(v == "v000002" for v in seen[switch : switch + 10])  # no flapping once switched


def test_a_token_is_required_when_configured_and_when_not_on_loopback(deployment):
    settings, _, _ = deployment
    with pytest.raises(ValueError, match="token"):
        create_app(settings.model_copy(update={"serving": settings.serving.model_copy(update={"host": "0.0.0.0"})}))
    secured = settings.model_copy(update={"serving": settings.serving.model_copy(update={"token": "s3cret"})})
    with Api(secured) as api, httpx.Client(base_url=api.url, timeout=10) as c:
        r = c.get("/users/user1/recommendations")
        assert r.status_code == 401 and ErrorBody.model_validate(r.json()).detail == "a valid bearer token is required"
        assert c.get("/users/user1/recommendations", headers={"Authorization": "Bearer wrong"}).status_code == 401
        assert c.get("/users/user1/recommendations", headers={"Authorization": "Bearer s3cret"}).status_code == 200
        assert c.get("/health").status_code == 200  # probes stay open


def test_the_api_answers_from_the_ann_index_as_from_the_exact_one(deployment):
    """serving.index = "ann" with every cell scored answers what the exact index answers, and follows
    an upserted and then deleted item (the ANN index's fresh rows and stale labels)."""
    settings, store, content = deployment
    asks = [("get", f"/users/user{u}/recommendations", {"k": 7}) for u in range(1, 6)]
    asks += [("get", "/items/item4/similar", {"k": 5}),
             ("post", "/recommendations", {"history": ["item5", "item6"], "k": 6, "filter": {"exclude": ["item9"]}})]  # fmt: skip

    def answers(c):
        got = [c.get(p, params=a) if m == "get" else c.post(p, json=a) for m, p, a in asks]
        assert all(r.status_code == 200 for r in got), [r.text for r in got]
        return [[x["item_id"] for x in r.json()["items"]] for r in got]

    with Api(settings) as api, httpx.Client(base_url=api.url, timeout=10) as c:
        want = answers(c)
        assert type(api.server.config.app.state.runtime.follower.snapshot.index).__name__ == "ItemIndex"
    ann = settings.model_copy(update={"serving": settings.serving.model_copy(
        update={"index": "ann", "ann_nlist": 4, "ann_nprobe": 4, "port": free_port()})})  # fmt: skip
    with Api(ann) as api, httpx.Client(base_url=api.url, timeout=10) as c:
        index = api.server.config.app.state.runtime.follower.snapshot.index
        assert type(index).__name__ == "AnnIndex" and index.base.nlist == 4
        assert answers(c) == want
        # an item made to be user1's best: its vector is user1's own user vector
        version = ModelRegistry(settings.registry_path).current()
        model = load_checkpoint(version.path)[0]
        history = torch.from_numpy(content[[IDS.index(i) for i in SEQUENCES["user1"]]])[None]
        with torch.no_grad():
            best = model.encode_users(history, torch.tensor([history.shape[1]])).numpy()
        store.upsert(version.collection, ["best"], best)
        first = lambda: c.get("/users/user1/recommendations", params={"k": 7}).json()["items"][0]["item_id"]  # noqa: E731
        wait_for(lambda: first() == "best", 10)
        store.delete(version.collection, ["best"])
        wait_for(lambda: first() == want[0][0], 10)
