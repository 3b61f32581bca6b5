"""Readers of the public Amazon Scientific files in ../shared/data, as catalogue items and user sequences.

Both the stream replay (what producers would send) and offline training read the data through here.
Ids stay the dataset's own: ASINs for items, reviewer ids for users (UniSRec) or the file's indices
(LC-Rec).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

UNISREC = "amazon-scientific-unisrec"
LCREC = "amazon-scientific-lcrec"

ROOT_CATEGORY = "Industrial & Scientific"  # the category root every Scientific item shares: dropped


@dataclass
class CatalogItem:
    item_id: str
    title: str
    brand: str = ""
    categories: list[str] = field(default_factory=list)
    description: str = ""


@dataclass
class RawDataset:
    """Items by id and each user's full chronological sequence of item ids (oldest first)."""

    name: str
    items: dict[str, CatalogItem]
    sequences: dict[str, list[str]]


def split_unisrec_text(text: str) -> dict[str, str]:
    """"title. category path. brand." -> fields (a leading root category is dropped)."""
    t = text.strip()
    if t.endswith("."):
        t = t[:-1]
    marker = ". " + ROOT_CATEGORY
    if marker in t:
        title, rest = t.split(marker, 1)
        cats, _, brand = rest.rpartition(". ")
        if not _:  # no brand piece
            cats, brand = rest, ""
    else:
        parts = t.rsplit(". ", 2)
        parts = [""] * (3 - len(parts)) + parts if len(parts) < 3 else parts
        title, cats, brand = parts
        if not title:  # fewer than three pieces: the text is all title
            title, cats, brand = t, "", ""
    cats = cats.strip()
    if cats.startswith(ROOT_CATEGORY):
        cats = cats[len(ROOT_CATEGORY) :].strip()
    return {"title": title.strip(), "categories": cats, "brand": brand.strip(), "description": ""}


def parse_unisrec_text(item_id: str, text: str) -> CatalogItem:
    """UniSRec's item text "title. category path. brand." as a catalogue item. The title is
    everything before ". Industrial & Scientific" when the text has the root category (97% of
    items), the category path runs from there to the last ". ", the brand is the last piece;
    otherwise the text is split from the right on ". " (the category is empty there)."""
    f = split_unisrec_text(text)
    return CatalogItem(item_id, f["title"], f["brand"], [f["categories"]] if f["categories"] else [])


def lcrec_fields(x: dict) -> dict[str, str]:
    """One LC-Rec item record -> prompt fields (the root category dropped, categories joined)."""
    cats = x.get("categories") or ""
    if isinstance(cats, str):
        cats = [c.strip() for c in cats.split(",")]
    cats = [str(c).strip() for c in cats if str(c).strip() and str(c).strip() != ROOT_CATEGORY]
    return {"title": str(x.get("title") or "").strip(), "brand": str(x.get("brand") or "").strip(),
            "categories": ", ".join(cats), "description": str(x.get("description") or "").strip()}  # fmt: skip


def read_atomic(path: Path, header: bool = True) -> list[list[str]]:
    """Rows of a tab-separated RecBole atomic file (skipping its `name:type` header line)."""
    with open(path, encoding="utf-8") as f:
        if header:
            next(f, None)
        return [line.rstrip("\n").split("\t") for line in f if line.strip()]


def read_unisrec(root: Path) -> RawDataset:
    """The UniSRec split. A user's full sequence is the test row's history followed by its target."""
    d = root / UNISREC
    items = {asin: parse_unisrec_text(asin, text) for asin, text in read_atomic(d / "Scientific.text")}
    index_to_item = {int(i): asin for asin, i in read_atomic(d / "Scientific.item2index", header=False)}
    index_to_user = {int(i): user for user, i in read_atomic(d / "Scientific.user2index", header=False)}
    sequences = {}
    for user, history, target in read_atomic(d / "Scientific.test.inter"):
        ids = [int(x) for x in history.split()] + [int(target)]
        sequences[index_to_user[int(user)]] = [index_to_item[i] for i in ids]
    return RawDataset(UNISREC, items, sequences)


def read_lcrec(root: Path) -> RawDataset:
    """The LC-Rec preprocessing: item index -> fields, user index -> chronological item indices."""
    d = root / LCREC
    with open(d / "Scientific.item.json", encoding="utf-8") as f:
        raw_items = json.load(f)
    items = {}
    for i, x in raw_items.items():
        f = lcrec_fields(x)
        cats = f["categories"].split(", ") if f["categories"] else []
        items[i] = CatalogItem(i, f["title"], f["brand"], cats, f["description"])
    with open(d / "Scientific.inter.json", encoding="utf-8") as f:
        sequences = {u: [str(i) for i in seq] for u, seq in json.load(f).items()}
    return RawDataset(LCREC, items, sequences)


READERS = {UNISREC: read_unisrec, LCREC: read_lcrec}


def read_dataset(root: Path, name: str) -> RawDataset:
    if name not in READERS:
        raise ValueError(f"unknown dataset {name!r}; known: {', '.join(READERS)}")
    return READERS[name](root)
