"""The model registry on a real local S3 server (deploy/s3_server.py over nanio; tests/s3_server.py):
a version published on one "machine" is followed from another (its own data dir, the same URI) with
the same bytes; a publish killed half-way never reaches a reader; two publishers at once never
corrupt CURRENT or each other's versions; a registry that cannot be reached keeps readers serving."""

from __future__ import annotations

import json
import threading

import numpy as np
import pytest
import torch

from config import load_settings
from encoder.item_tower import ItemTower
from serving.index import ModelFollower
from store.registry import CURRENT, PUBLISHED, CurrentFollower, RegistryUnavailable, open_registry
from store.s3_registry import CLAIM, S3Registry, group_by_version, parse_uri
from store.vectors import VectorStore
from trainer.publish import Publisher
from trainer.towers import LEARN, Features, TowerConfig

pytestmark = pytest.mark.integration

N, D_RAW = 24, 12
IDS = [f"item{j}" for j in range(N)]


def raw_catalogue() -> np.ndarray:
    x = np.random.default_rng(0).normal(size=(N, D_RAW)) + 2.0
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def model(seed: int, raw: np.ndarray) -> LEARN:
    torch.manual_seed(seed)
    cfg = TowerConfig(n_items=N, d_raw=D_RAW, d_llm=8, d_model=8, n_layers=1, n_heads=2, d_out=8, max_seq_len=10)
    return LEARN(cfg, torch.from_numpy(raw), Features.fit(raw, dim=8)).eval()


def machine(tmp_path, s3_server, bucket: str, name: str):
    """One machine's registry: its own data dir (so its own download cache), the shared URI."""
    return open_registry(load_settings(data_dir=tmp_path / name, registry=s3_server.registry(bucket)))


def objects(s3_server, bucket: str) -> dict[str, bytes]:
    client = s3_server.client()
    keys = [o["Key"] for o in client.list_objects_v2(Bucket=bucket).get("Contents", [])]
    return {k: client.get_object(Bucket=bucket, Key=k)["Body"].read() for k in keys}


@pytest.fixture
def store(tmp_path):
    with VectorStore(tmp_path / "vectors.db") as s:
        yield s


def test_uris_and_listings_are_parsed():
    assert parse_uri("s3://bucket/a/b/") == ("bucket", "a/b/") and parse_uri("s3://bucket") == ("bucket", "")
    with pytest.raises(ValueError, match="s3://"):
        parse_uri("/a/folder")
    keys = ["p/versions/v000001/config.json", "p/versions/v000001/PUBLISHED", "p/versions/v000002/.claim"]
    assert group_by_version(keys, "p/versions/") == {"v000001": {"config.json", PUBLISHED}, "v000002": {CLAIM}}
    with pytest.raises(ValueError, match="registry.uri"):
        load_settings(registry={"uri": "gs://bucket/models"})
    assert isinstance(open_registry(load_settings(registry={"uri": "s3://bucket/p"})), S3Registry)


def test_a_version_published_on_one_machine_is_followed_from_another(tmp_path, s3_server, s3_bucket, store):
    raw = raw_catalogue()
    a, b = machine(tmp_path, s3_server, s3_bucket, "A"), machine(tmp_path, s3_server, s3_bucket, "B")
    assert b.current() is None and b.versions() == []
    tower, follower = ItemTower(b), ModelFollower(b, store, in_memory=True)
    assert not tower.refresh() and not follower.poll()

    m1 = model(1, raw)
    v1 = Publisher(a, store).publish(m1, IDS, raw, {"source": "test"})
    assert v1.published and a.current().name == v1.name
    # machine B: the same bytes as uploaded, as plain files in its own cache
    current = b.current()
    assert current.name == v1.name and current.path == tmp_path / "B" / "registry-cache" / v1.name
    uploaded = objects(s3_server, s3_bucket)
    files = sorted(p.name for p in current.path.iterdir())
    assert files == sorted(["PUBLISHED", "config.json", "item_tower.pt2", "model.json", "model.safetensors"])
    for f in files:
        assert (current.path / f).read_bytes() == uploaded[f"models/versions/{v1.name}/{f}"]
        assert (current.path / f).read_bytes() == (v1.path / f).read_bytes()  # A's copy (never downloaded)
    assert current.config["source"] == "test" and json.loads(uploaded["models/CURRENT"])["version"] == v1.name
    # B's readers load it: the encoder worker's item tower and serving compute the model's vectors
    assert tower.refresh() and tower.version.name == v1.name
    with torch.no_grad():
        expected = m1.encode_items(torch.from_numpy(raw)).numpy()
    np.testing.assert_allclose(tower(raw), expected, atol=1e-5)
    assert follower.poll() and follower.snapshot.version == v1.name and not follower.poll()

    v2 = Publisher(a, store, keep_versions=1).publish(model(2, raw), IDS, raw)
    assert tower.refresh() and tower.version.name == v2.name
    assert follower.poll() and follower.snapshot.version == v2.name
    assert [v.name for v in b.versions()] == [v2.name]  # v1 pruned on S3, and from B's cache when B
    assert not (tmp_path / "B" / "registry-cache" / v1.name).exists()  # downloaded v2


def test_a_publish_killed_half_way_never_reaches_a_reader(tmp_path, s3_server, s3_bucket, store):
    raw = raw_catalogue()
    a, b = machine(tmp_path, s3_server, s3_bucket, "A"), machine(tmp_path, s3_server, s3_bucket, "B")
    first = Publisher(a, store).publish(model(1, raw), IDS, raw)
    follower = CurrentFollower(b)
    assert follower.poll().name == first.name
    follower.accept(b.current())

    def crash(point):
        if point == "mid_vectors":
            raise KeyboardInterrupt  # every file uploaded, PUBLISHED not yet

    with pytest.raises(KeyboardInterrupt):
        Publisher(a, store, pause=crash).publish(model(2, raw), IDS, raw)
    half = b.versions()[-1]
    assert half.name != first.name and not half.published
    assert b.current().name == first.name and follower.poll() is None
    with pytest.raises(ValueError, match="not completely published"):
        b.promote(half.name)
    assert not half.path.exists()  # never downloaded
    # CURRENT pointed at it by hand (or by a buggy writer) is refused, not loaded
    s3_server.client().put_object(Bucket=s3_bucket, Key="models/CURRENT", Body=json.dumps({"version": half.name}))
    c = machine(tmp_path, s3_server, s3_bucket, "C")
    with pytest.raises(ValueError, match="not completely published"):
        c.current()
    assert CurrentFollower(c).poll() is None and not (tmp_path / "C" / "registry-cache" / half.name).exists()
    a.promote(first.name)

    # killed during the uploads themselves: some files of the version are on S3, the rest never come
    uploads = []
    real_put = a._put

    def dying_put(key, body, **kw):
        if "/versions/" in key and not key.endswith(CLAIM):
            uploads.append(key)
            if len(uploads) == 3:
                raise KeyboardInterrupt
        return real_put(key, body, **kw)

    a._put = dying_put
    with pytest.raises(KeyboardInterrupt):
        Publisher(a, store).publish(model(3, raw), IDS, raw)
    a._put = real_put
    assert len(b.versions()) == 3 and b.current().name == first.name

    complete = Publisher(a, store).recover()
    assert [v.name for v in complete] == [first.name] == [v.name for v in b.versions()]
    assert set(objects(s3_server, s3_bucket)) == {f"models/{CURRENT}"} | {
        f"models/versions/{first.name}/{f}" for f in [CLAIM, PUBLISHED, "config.json", "item_tower.pt2", "model.json",
                                                      "model.safetensors"]}  # fmt: skip
    assert not store.has(half.collection)
    after = Publisher(a, store).publish(model(4, raw), IDS, raw)
    assert follower.poll().name == after.name


def test_two_publishers_at_once_never_corrupt_current(tmp_path, s3_server, s3_bucket, monkeypatch):
    import trainer.publish

    raw = raw_catalogue()
    export, export_lock = trainer.publish.export_item_tower, threading.Lock()

    def one_export_at_a_time(*args):  # torch.export is not thread-safe; two publishers are two processes
        with export_lock:
            return export(*args)

    monkeypatch.setattr(trainer.publish, "export_item_tower", one_export_at_a_time)
    regs = [machine(tmp_path, s3_server, s3_bucket, m) for m in "AB"]
    # a name claimed by one publisher is never written by the other
    regs[1].next_name = lambda: "v000001"
    name_a, _ = regs[0].new_version()
    name_b, _ = regs[1].new_version()
    assert (name_a, name_b) == ("v000001", "v000002")
    del regs[1].next_name
    for r in regs:
        r.remove("v000001"), r.remove("v000002"), r.clean_staging()

    stores = [VectorStore(tmp_path / f"vectors-{m}.db").open() for m in "AB"]
    published: list[list[str]] = [[], []]
    barrier, errors = threading.Barrier(2), []

    def run(k: int) -> None:
        try:
            # both reach PUBLISHED and CURRENT together (the step the conditional PUT guards)
            publisher = Publisher(regs[k], stores[k], keep_versions=10, pause=lambda point: barrier.wait(60))
            barrier.wait()
            for step in range(2):
                published[k].append(publisher.publish(model(10 * k + step, raw), IDS, raw, {"by": k}).name)
        except BaseException as e:  # noqa: BLE001 - reported below
            errors.append(e)

    threads = [threading.Thread(target=run, args=(k,)) for k in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=300)
    for s in stores:
        s.close()
    assert not errors, errors
    names = published[0] + published[1]
    assert len(set(names)) == 4  # every publish got a name of its own
    reader = machine(tmp_path, s3_server, s3_bucket, "C")
    assert reader.current().name == max(names)  # CURRENT never went back to an older version
    for k in range(2):
        for name in published[k]:
            v = reader.get(name)
            assert v.published and v.config["version"] == name and v.config["by"] == k  # not mixed
    pointer = json.loads(objects(s3_server, s3_bucket)["models/CURRENT"])
    assert pointer["version"] == max(names) and pointer["collection"] == f"items_{max(names)}"


def test_a_lost_race_for_current_rereads_it_instead_of_overwriting(tmp_path, s3_server, s3_bucket, store):
    raw = raw_catalogue()
    a, b = machine(tmp_path, s3_server, s3_bucket, "A"), machine(tmp_path, s3_server, s3_bucket, "B")
    older = Publisher(a, store).publish(model(1, raw), IDS, raw, promote=False)
    newer = Publisher(b, store).publish(model(2, raw), IDS, raw, promote=False)
    b.promote(older.name)
    stale = a._pointer()  # A read CURRENT (older) ...
    b.promote(newer.name)  # ... B replaced it meanwhile ...
    reads = iter([stale])
    real = a._pointer
    a._pointer = lambda: next(reads, None) or real()
    assert a.promote(older.name, newer_only=True).name == newer.name  # ... A's If-Match PUT lost: re-read
    a._pointer = real
    assert b.current().name == newer.name
    assert not a._put(f"models/{CURRENT}", b"{}", if_match=stale[1])  # the server enforces If-Match
    assert not a._put(f"models/{CURRENT}", b"{}", if_none_match=True)
    assert a.promote(older.name).name == older.name  # a rollback is explicit
    assert b.current().name == older.name

    # `learn model list` / `rollback` on a third machine, configured by the environment only
    from typer.testing import CliRunner

    from deploy.cli import app

    env, data = {"LEARN_REGISTRY": json.dumps(s3_server.registry(s3_bucket))}, str(tmp_path / "C")
    listed = CliRunner().invoke(app, ["model", "list", "--data-dir", data], env=env)
    assert listed.exit_code == 0 and older.name in listed.output and newer.name in listed.output, listed.output
    rolled = CliRunner().invoke(app, ["model", "rollback", newer.name, "--data-dir", data], env=env)
    assert rolled.exit_code == 0 and b.current().name == newer.name, rolled.output
    unknown = CliRunner().invoke(app, ["model", "rollback", "v999999", "--data-dir", data], env=env)
    assert unknown.exit_code == 1 and "no model version" in unknown.output


def test_a_registry_out_of_reach_keeps_readers_on_their_version(tmp_path, s3_server, s3_bucket, store):
    raw = raw_catalogue()
    a = machine(tmp_path, s3_server, s3_bucket, "A")
    v1 = Publisher(a, store).publish(model(1, raw), IDS, raw)
    follower = CurrentFollower(a)
    follower.accept(follower.poll())
    a.s3 = S3Registry("s3://nowhere/x", tmp_path / "Z", endpoint_url="http://127.0.0.1:9", access_key="k",
                      secret_key="s").s3  # fmt: skip
    assert follower.poll() is None and follower.version.name == v1.name
    with pytest.raises(RegistryUnavailable, match="nowhere|127.0.0.1:9|failed"):
        a.current()


def test_a_refused_conditional_put_leaves_the_connection_usable(s3_server, s3_bucket):
    # deploy/s3_server.py used to refuse before reading the body: the body left on the keep-alive
    # connection was parsed as the next request, which got 400 (a publisher's claim after a lost one)
    from botocore.exceptions import ClientError

    client = s3_server.client()
    client.put_object(Bucket=s3_bucket, Key="a", Body=b"x" * 100)
    with pytest.raises(ClientError, match="PreconditionFailed"):
        client.put_object(Bucket=s3_bucket, Key="a", Body=b"y" * 100, IfNoneMatch="*")
    client.put_object(Bucket=s3_bucket, Key="b", Body=b"z" * 100, IfNoneMatch="*")
    assert client.get_object(Bucket=s3_bucket, Key="a")["Body"].read() == b"x" * 100
