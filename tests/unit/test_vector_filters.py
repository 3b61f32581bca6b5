"""Ids as filter-expression text (store/vectors.py `_in_filter`): every id a store can hold is read
back exactly by milvus-lite's expression parser and by a real milvus-lite file; an id it cannot hold
(a lone surrogate, more than MAX_ID_BYTES) never reaches an expression and simply has no row."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from milvus_lite.search.filter import parse_expr
from milvus_lite.search.filter.ast import InOp, StringLit

import store.vectors as vectors_module
from store.vectors import CONTENT, MAX_ID_BYTES, VectorStore, _in_filter, storable

HOSTILE = ['q"uote', "s'ingle", "back\\slash", "ends\\", '\\"', "tab\tx", "nl\nx", "cr\rx", "nul\x00x",
           "ctl\x01\x1f\x7fx", "c1\x85x", "bell\a\b\f\vx", "uni\u00e9\u4e2d\U0001f600", '" or item_id != "',
           "a/b?c#d%20", "{ids}", "x" * 128, "\u00e9" * 256]  # fmt: skip
UNSTORABLE = ["sur\ud800x", "\udfff", "x" * (MAX_ID_BYTES + 1), "\u00e9" * 257, ""]


def parsed(ids: list[str]) -> list[str]:
    ast = parse_expr(_in_filter(ids))
    assert isinstance(ast, InOp) and ast.field.name == "item_id" and not ast.negate
    assert all(isinstance(e, StringLit) for e in ast.values.elements)
    return [e.value for e in ast.values.elements]


def test_hostile_ids_parse_back_exactly():
    assert parsed(HOSTILE) == HOSTILE
    for i in HOSTILE:
        assert parsed([i]) == [i]


@settings(max_examples=300, deadline=None)
@given(st.lists(st.text(min_size=1, max_size=40), min_size=1, max_size=5))
def test_any_storable_text_parses_back_exactly(ids):
    assert parsed(ids) == ids


def test_unstorable_ids_never_reach_an_expression():
    assert not any(storable(i) for i in UNSTORABLE)
    assert _in_filter(UNSTORABLE) == ""
    assert parsed(["ok", *UNSTORABLE]) == ["ok"]


@pytest.fixture
def store(tmp_path):
    with VectorStore(tmp_path / "vectors.db") as s:
        yield s


def test_get_and_delete_find_exactly_the_asked_rows(store):
    store.ensure_collection(CONTENT, 4)
    plain = ["a", "b", "item_id"]
    ids = HOSTILE + plain
    store.upsert(CONTENT, ids, np.eye(4, dtype=np.float32)[np.arange(len(ids)) % 4])
    for i in ids:
        assert set(store.get(CONTENT, [i])) == {i}, repr(i)
    assert set(store.get(CONTENT, ids + UNSTORABLE + ["absent"])) == set(ids)
    assert store.get(CONTENT, UNSTORABLE) == {}  # no error, no row (and not every row)
    store.delete(CONTENT, UNSTORABLE)  # nothing to delete, and no error
    store.delete(CONTENT, ['" or item_id != "', "nul\x00x"])
    assert store.count(CONTENT) == len(ids) - 2
    assert set(store.get(CONTENT, ids)) == set(ids) - {'" or item_id != "', "nul\x00x"}


def test_a_scan_pages_past_any_id(store, monkeypatch):
    monkeypatch.setattr(vectors_module, "SCAN_BATCH", 2)  # every hostile id lands on a page boundary
    store.ensure_collection(CONTENT, 4)
    ids = HOSTILE + ["a", "b", "item_id", "zz"]
    store.upsert(CONTENT, ids, np.eye(4, dtype=np.float32)[np.arange(len(ids)) % 4], event_times=range(len(ids)))
    seen = [r["item_id"] for r in store.scan(CONTENT, ["event_time"])]
    assert sorted(seen) == sorted(ids)  # each exactly once
    late = [r["item_id"] for r in store.scan(CONTENT, ["event_time"], filter=f"event_time >= {len(HOSTILE)}")]
    assert sorted(late) == ["a", "b", "item_id", "zz"]
