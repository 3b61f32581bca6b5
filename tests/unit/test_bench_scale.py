"""bench/scale.py copies measured figures only: sources named, missing ones listed, conflicts kept out."""

import json

from bench.scale import REQUIRED, assemble, main


def write(path, doc):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(doc))


def test_figures_sources_missing_conflicts_and_the_100k_milvus_run(tmp_path):
    parts = tmp_path / "scale"
    write(parts / "ann.json", {"ann_1m_query_p99_ms": 3.5, "ann_1m_recall_at_10": 0.97, "configs": {"x": 1},
                               "command": "python -m bench.ann", "load_avg": {"before": [1, 1, 1]}, "wall_s": 9.0})
    write(parts / "workers.json", {"encoder_workers_1_items_per_s": 10.0, "ddp_valid_ndcg10_1": 0.08,
                                   "multi_machine_lost": 0, "command": "python -m bench.workers"})
    write(parts / "ddp.json", {"ddp_valid_ndcg10_1": 0.081, "ddp_valid_ndcg10_2": 0.082, "command": "torchrun"})
    (parts / "broken.json").write_text("{not json")
    milvus = tmp_path / "milvus_server.json"
    write(milvus, {"items": 100000, "milvus_server_query_p50_ms": 25.0, "milvus_server_query_p99_ms": 250.0,
                   "command": "python -m bench.milvus_server"})
    r = assemble(parts, milvus, root=tmp_path)
    assert r["ann_1m_query_p99_ms"] == 3.5 and r["sources"]["ann_1m_query_p99_ms"] == "scale/ann.json"
    assert r["milvus_server_query_p99_ms"] == 250.0 and r["sources"]["milvus_server_query_p50_ms"] == "milvus_server.json"
    assert r["multi_machine_lost"] == 0 and "configs" not in r  # only numeric top-level keys are figures
    assert "ddp_valid_ndcg10_1" not in r and r["conflicts"]["ddp_valid_ndcg10_1"] == {
        "scale/ddp.json": 0.081, "scale/workers.json": 0.08}  # two files disagree: neither is chosen
    assert set(r["missing"]) == set(REQUIRED) - {k for k in REQUIRED if k in r}
    assert "multi_machine_duplicated" in r["missing"] and "ddp_valid_ndcg10_1" in r["missing"]
    assert r["parts"]["scale/ann.json"]["command"] == "python -m bench.ann"
    assert r["parts"]["scale/ann.json"]["load_avg"] == {"before": [1, 1, 1]}
    assert any("broken.json" in n for n in r["notes"])


def test_milvus_figures_at_another_size_are_not_copied(tmp_path):
    milvus = tmp_path / "milvus_server.json"
    write(milvus, {"items": 10000, "milvus_server_query_p50_ms": 5.0, "milvus_server_query_p99_ms": 9.0})
    r = assemble(tmp_path / "none", milvus, root=tmp_path)
    assert "milvus_server_query_p99_ms" in r["missing"] and "items=[10000]" in r["notes"][0]
    write(milvus, {"runs": [{"items": 10000, "milvus_server_query_p99_ms": 9.0, "milvus_server_query_p50_ms": 5.0},
                            {"items": 100000, "milvus_server_query_p99_ms": 90.0, "milvus_server_query_p50_ms": 50.0}]})
    assert assemble(tmp_path / "none", milvus, root=tmp_path)["milvus_server_query_p99_ms"] == 90.0


def test_the_command_writes_the_file_and_strict_fails_on_missing_keys(tmp_path):
    out = tmp_path / "scale.json"
    args = ["--parts", str(tmp_path / "none"), "--milvus", str(tmp_path / "nope.json"), "--out", str(out)]
    assert main(args) == 0 and json.loads(out.read_text())["missing"] == list(REQUIRED)
    assert main(args + ["--strict"]) == 1
