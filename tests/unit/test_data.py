import json

from streams.datasets import split_unisrec_text
from trainer.data import load_lcrec, load_unisrec


def test_split_unisrec_text():
    f = split_unisrec_text("Gorilla Glue, 8 oz. Industrial & Scientific Tapes, Adhesives Urethane. Gorilla. ")
    assert f == {"title": "Gorilla Glue, 8 oz", "categories": "Tapes, Adhesives Urethane", "brand": "Gorilla", "description": ""}
    f = split_unisrec_text("TPI Fan, 24 Diameter. . TPI. ")
    assert (f["title"], f["categories"], f["brand"]) == ("TPI Fan, 24 Diameter", "", "TPI")
    f = split_unisrec_text("No. 2 Pencil. Industrial & Scientific. Acme Inc. ")
    assert (f["title"], f["categories"], f["brand"]) == ("No. 2 Pencil", "", "Acme Inc")


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
    d = load_unisrec(tmp_path, prefix="S")
    assert d.n_items == 4 and d.n_users == 2 and d.users == ["u0", "u1"]
    assert d.train == [[0, 1, 2], [3, 2]]
    assert d.valid == [([0, 1, 2], 3), ([3, 2], 0)]
    assert d.test[0] == ([0, 1, 2, 3], 1)
    assert d.item_fields[1] == {"title": "Item B", "categories": "Cat B", "brand": "BrandB", "description": ""}
    assert d.prompts()[0] == "Title: Item A Brand: BrandA Category: Cat A"
    assert d.item_popularity() == [1, 1, 2, 1]
    assert d.subsample(1, seed=0).n_users == 1


def test_load_lcrec_builds_leave_one_out(tmp_path):
    items = {str(i): {"title": f"T{i}", "description": "", "brand": "B",
                      "categories": "Industrial & Scientific,Glue,Epoxy"} for i in range(5)}  # fmt: skip
    (tmp_path / "S.item.json").write_text(json.dumps(items))
    (tmp_path / "S.inter.json").write_text(json.dumps({"0": [0, 1, 2, 3], "1": [4, 3, 2], "2": [1, 2]}))
    d = load_lcrec(tmp_path, prefix="S")
    assert d.n_items == 5 and d.users == ["0", "1"]  # a 2-item user has no training sequence
    assert d.train == [[0, 1], [4]]
    assert d.valid == [([0, 1], 2), ([4], 3)]
    assert d.test == [([0, 1, 2], 3), ([4, 3], 2)]
    assert d.item_fields[0]["categories"] == "Glue, Epoxy"
    assert d.prompts()[0] == "Title: T0 Brand: B Category: Glue, Epoxy"
