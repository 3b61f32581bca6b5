import hashlib
import json

import pytest

from config.settings import BUILTIN_DATASETS
from streams.datasets import DatasetError, locate, read_plain, resolve, split_unisrec_text
from tests.conftest import SHARED_DATA, needs_shared_data
from tests.gen_data import write_atomic, write_lcrec, write_plain
from trainer.data import load_dataset, load_lcrec, load_plain, load_source, load_unisrec, write_atomic_split

ROOT = ("Industrial & Scientific",)


def test_split_unisrec_text():
    f = split_unisrec_text("Gorilla Glue, 8 oz. Industrial & Scientific Tapes, Adhesives Urethane. Gorilla. ", ROOT)
    assert f == {"title": "Gorilla Glue, 8 oz", "categories": "Tapes, Adhesives Urethane", "brand": "Gorilla", "description": ""}
    f = split_unisrec_text("TPI Fan, 24 Diameter. . TPI. ", ROOT)
    assert (f["title"], f["categories"], f["brand"]) == ("TPI Fan, 24 Diameter", "", "TPI")
    f = split_unisrec_text("No. 2 Pencil. Industrial & Scientific. Acme Inc. ", ROOT)
    assert (f["title"], f["categories"], f["brand"]) == ("No. 2 Pencil", "", "Acme Inc")
    # the root is the dataset's setting, not code: without it nothing is dropped
    f = split_unisrec_text("Gorilla Glue. Industrial & Scientific Tapes. Gorilla. ")
    assert f["categories"] == "Industrial & Scientific Tapes"


def write(p, header, rows):
    p.write_text("\n".join([header] + ["\t".join(map(str, r)) for r in rows]) + "\n")


def test_load_unisrec(tmp_path):
    write(tmp_path / "S.item2index", "", [])
    (tmp_path / "S.item2index").write_text("A\t0\nB\t1\nC\t2\nD\t3\n")
    (tmp_path / "S.user2index").write_text("u0\t0\nu1\t1\n")
    write(tmp_path / "S.text", "item_id:token\ttext:token_seq",
          [(a, f"Item {a}. Industrial & Scientific Cat {a}. Brand{a}. ") for a in "ABCD"])  # fmt: skip
    h = "user_id:token\titem_id_list:token_seq\titem_id:token"
    write(tmp_path / "S.train.inter", h, [(0, "0 1", 2), (0, "0", 1), (1, "3", 2)])
    write(tmp_path / "S.valid.inter", h, [(0, "0 1 2", 3), (1, "3 2", 0)])
    write(tmp_path / "S.test.inter", h, [(0, "0 1 2 3", 1), (1, "3 2 0", 1)])
    d = load_unisrec(tmp_path, prefix="S", drop_categories=ROOT)
    assert d.n_items == 4 and d.n_users == 2 and d.users == ["u0", "u1"]
    assert d.train == [[0, 1, 2], [3, 2]]
    assert d.valid == [([0, 1, 2], 3), ([3, 2], 0)]
    assert d.test[0] == ([0, 1, 2, 3], 1)
    assert d.item_fields[1] == {"title": "Item B", "categories": "Cat B", "brand": "BrandB", "description": ""}
    assert d.prompts()[0] == "Title: Item A Brand: BrandA Category: Cat A"
    assert d.item_popularity() == [1, 1, 2, 1]
    assert d.subsample(1, seed=0).n_users == 1
    # the format and prefix are found from the files
    src = locate(tmp_path)
    assert (src.format, src.prefix) == ("atomic", "S")


def test_load_lcrec_builds_leave_one_out(tmp_path):
    items = {str(i): {"title": f"T{i}", "description": "", "brand": "B",
                      "categories": "Industrial & Scientific,Glue,Epoxy"} for i in range(5)}  # fmt: skip
    (tmp_path / "S.item.json").write_text(json.dumps(items))
    (tmp_path / "S.inter.json").write_text(json.dumps({"0": [0, 1, 2, 3], "1": [4, 3, 2], "2": [1, 2]}))
    d = load_lcrec(tmp_path, prefix="S", drop_categories=ROOT)
    assert d.n_items == 5 and d.users == ["0", "1"]  # a 2-item user has no training sequence
    assert d.train == [[0, 1], [4]]
    assert d.valid == [([0, 1], 2), ([4], 3)]
    assert d.test == [([0, 1, 2], 3), ([4, 3], 2)]
    assert d.item_fields[0]["categories"] == "Glue, Epoxy"
    assert d.prompts()[0] == "Title: T0 Brand: B Category: Glue, Epoxy"
    # any prefix, found by itself; the name is the folder's, and no category is dropped by code
    (tmp_path / "S.item.json").rename(tmp_path / "Toys.item.json")
    (tmp_path / "S.inter.json").rename(tmp_path / "Toys.inter.json")
    d = load_source(locate(tmp_path))
    assert d.name == tmp_path.name and d.item_fields[0]["categories"] == "Industrial & Scientific, Glue, Epoxy"


def test_plain_format_orders_each_user_by_timestamp(tmp_path):
    (tmp_path / "items.jsonl").write_text("\n".join(json.dumps(x) for x in [
        {"item_id": "a", "title": "Alpha", "categories": ["Root", "Lab"], "brand": "Acme"},
        {"item_id": "b", "title": "Beta", "description": ["two", "parts"]},
        {"item_id": "c", "title": "Gamma", "categories": "Root, Glass"}, {"item_id": 4, "title": "Delta"}]) + "\n")  # fmt: skip
    (tmp_path / "interactions.csv").write_text(
        "user_id,item_id,timestamp,action\n"
        "u1,c,2021-01-03T00:00:00Z,purchase\nu1,a,2021-01-01,view\nu2,4,300,\nu1,b,2021-01-02 12:00,cart\n"
        "u2,a,100,\nu2,zz,150,\nu2,b,200,review\nu1,4,2021-01-04,\n"
    )
    raw = read_plain(locate(tmp_path, drop_categories=["Root"]))
    assert raw.sequences == {"u1": ["a", "b", "c", "4"], "u2": ["a", "b", "4"]}
    assert raw.times["u2"] == [100.0, 200.0, 300.0] and raw.times["u1"][0] == 1609459200.0
    assert raw.actions["u1"][:3] == ["view", "cart", "purchase"] and raw.actions["u2"][0] == "review"
    assert raw.meta["dropped_unknown_items"] == 1  # "zz" has no text: dropped and counted, not lost silently
    d = load_plain(tmp_path, drop_categories=["Root"])
    assert d.item_ids == ["a", "b", "c", "4"] and d.users == ["u1", "u2"]
    assert d.test == [([0, 1, 2], 3), ([0, 1], 3)] and d.valid[1] == ([0], 1)
    assert d.item_fields[0]["categories"] == "Lab" and d.item_fields[1]["description"] == "two parts"
    assert d.meta["timestamps"] is True


@pytest.mark.parametrize("interactions, items, message", [
    ("user,item,time\nu,a,1\n", '{"item_id": "a"}\n', "missing user_id, item_id, timestamp"),
    ("user_id,item_id,timestamp\nu,a,yesterday\n", '{"item_id": "a"}\n', "interactions.csv:2: timestamp 'yesterday'"),
    ("user_id,item_id,timestamp\nu,a,nan\n", '{"item_id": "a"}\n', "interactions.csv:2: timestamp"),
    ("user_id,item_id,timestamp,action\nu,a,1,like\n", '{"item_id": "a"}\n', "action 'like' is not one of"),
    ("user_id,item_id,timestamp\nu,a,1\n", '{"item_id": "a"}\n{"title": "x"}\n', "items.jsonl:2: each line must be"),
    ("user_id,item_id,timestamp\nu,a,1\n", '{"item_id": "a"}\n{"item_id": "a"}\n', "item_id 'a' appears twice"),
    ("user_id,item_id,timestamp\nu,a,1\n", '{"item_id": "a"\n', "items.jsonl:1: not a JSON object"),
    ("user_id,item_id,timestamp\nu,b,1\n", '{"item_id": "a"}\n', "no interaction names an item of the catalogue"),
])  # fmt: skip
def test_plain_format_errors_name_the_file_and_line(tmp_path, interactions, items, message):
    (tmp_path / "interactions.csv").write_text(interactions)
    (tmp_path / "items.jsonl").write_text(items)
    with pytest.raises(DatasetError, match=message.replace("(", r"\(")):
        load_plain(tmp_path)


def test_a_wrong_or_incomplete_folder_gets_one_error_naming_the_files(tmp_path):
    (tmp_path / "notes.txt").write_text("not a dataset")
    with pytest.raises(DatasetError) as e:
        locate(tmp_path)
    for name in ("interactions.csv", "items.jsonl", "<prefix>.item.json", "<prefix>.inter.json", "<prefix>.text",
                 "<prefix>.train.inter", "notes.txt"):  # fmt: skip
        assert name in str(e.value)
    (tmp_path / "Toys.item.json").write_text("{}")
    with pytest.raises(DatasetError, match=r"incomplete lcrec dataset: missing Toys.inter.json \(found Toys.item.json\)"):
        locate(tmp_path)
    with pytest.raises(DatasetError, match="no such folder"):
        locate(tmp_path / "absent")
    with pytest.raises(DatasetError, match="neither a folder nor a dataset named in the settings"):
        resolve("no-such-dataset", BUILTIN_DATASETS, tmp_path)
    write_plain(tmp_path / "two")
    write_lcrec(tmp_path / "two")
    with pytest.raises(DatasetError, match="several datasets"):
        locate(tmp_path / "two")
    assert locate(tmp_path / "two", format="lcrec").prefix == "Toys"


def test_every_format_of_one_dataset_gives_the_same_split(tmp_path):
    plain = load_plain(write_plain(tmp_path / "plain"))
    lcrec = load_source(locate(write_lcrec(tmp_path / "lcrec", prefix="Toys")))
    atomic = load_source(locate(write_atomic(tmp_path / "atomic", prefix="Office")))
    assert plain.n_users == lcrec.n_users == atomic.n_users == 60 and plain.n_items == 40
    def by_user(d, users):  # the plain format keeps the users' order of first rows, LC-Rec its indices
        return {u: (d.train[n], d.valid[n], d.test[n]) for n, u in enumerate(users)}

    assert by_user(lcrec, [f"U{int(u):03d}" for u in lcrec.users]) == by_user(plain, plain.users)
    assert (atomic.train, atomic.valid, atomic.test) == (plain.train, plain.valid, plain.test)
    assert atomic.item_ids == plain.item_ids and atomic.users == plain.users
    assert plain.prompts() == lcrec.prompts()
    assert [f["title"] for f in atomic.item_fields] == [f["title"] for f in plain.item_fields]
    # write_atomic_split -> load_unisrec is the identity on the split
    write_atomic_split(lcrec, tmp_path / "again", "X")
    back = load_unisrec(tmp_path / "again", "X")
    assert (back.train, back.valid, back.test) == (lcrec.train, lcrec.valid, lcrec.test)


def _digest(d) -> str:
    return hashlib.sha256(json.dumps([d.item_ids, d.users, d.train, d.valid, d.test, d.prompts()]).encode()).hexdigest()[:16]


@needs_shared_data()
def test_the_builtin_scientific_splits_are_unchanged():
    """Ids, order and prompts of both built-in splits, as main's loaders produced them before datasets
    by path (digests computed with the old code), by name and by path."""
    expected = {"amazon-scientific-unisrec": (4385, 8442, "f7eafa9804174649"), "amazon-scientific-lcrec": (4344, 8317, "c9b29e18a5a85f47")}
    for name, (n_items, n_users, digest) in expected.items():
        d = load_dataset(name, SHARED_DATA)
        assert (d.name, d.n_items, d.n_users, _digest(d)) == (name, n_items, n_users, digest)
        by_path = load_source(resolve(str(SHARED_DATA / name), BUILTIN_DATASETS, SHARED_DATA))
        assert by_path.name == name and _digest(by_path) == digest


def test_a_dataset_named_in_the_settings_toml(tmp_path, monkeypatch):
    from config import load_settings

    folder = write_lcrec(tmp_path / "toys", prefix="Toys")
    toml = tmp_path / "learn.toml"
    toml.write_text(f'[datasets.toys]\npath = "{folder}"\nformat = "lcrec"\nprefix = "Toys"\ndrop_categories = ["Lab"]\n')
    monkeypatch.setenv("LEARN_CONFIG", str(toml))
    s = load_settings()
    assert set(BUILTIN_DATASETS) < set(s.datasets)  # a table adds a dataset; the built-in ones stay
    src = resolve("toys", s.datasets, s.shared_data_dir)
    assert (src.name, src.format, src.prefix, src.drop_categories) == ("toys", "lcrec", "Toys", ("Lab",))
    d = load_source(src)
    assert d.name == "toys" and all("Lab" not in f["categories"] for f in d.item_fields)
    assert d.item_fields[0]["categories"] in ("Tools", "Glass")
