"""Readers of the public Amazon Scientific files in ../shared/data, as catalogue items and user sequences.

Both the stream replay (what producers would send) and offline training read the data through here.
Ids stay the dataset's own: ASINs for items, reviewer ids for users (UniSRec) or the file's indices
(LC-Rec).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path

UNISREC = "amazon-scientific-unisrec"
LCREC = "amazon-scientific-lcrec"

# UniSRec's item text is "title. category path. brand. " with the category path possibly empty.
_UNISREC_TEXT = re.compile(r"^(?P<title>.*?)\. (?P<categories>Industrial & Scientific.*?|)\. (?P<brand>.*?)\.?\s*$", re.S)


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


def parse_unisrec_text(item_id: str, text: str) -> CatalogItem:
    m = _UNISREC_TEXT.match(text)
    if not m:
        return CatalogItem(item_id, text.strip())
    cats = m["categories"].strip()
    return CatalogItem(item_id, m["title"].strip(), m["brand"].strip(), [cats] if cats else [])


def _atomic_rows(path: Path, header: bool = True) -> list[list[str]]:
    with open(path, encoding="utf-8") as f:
        if header:
            next(f)  # RecBole header: name:type columns
        return [line.rstrip("\n").split("\t") for line in f if line.strip()]


def read_unisrec(root: Path) -> RawDataset:
    """The UniSRec split. A user's full sequence is the test row's history followed by its target."""
    d = root / UNISREC
    items = {asin: parse_unisrec_text(asin, text) for asin, text in _atomic_rows(d / "Scientific.text")}
    index_to_item = {int(i): asin for asin, i in _atomic_rows(d / "Scientific.item2index", header=False)}
    index_to_user = {int(i): user for user, i in _atomic_rows(d / "Scientific.user2index", header=False)}
    sequences = {}
    for user, history, target in _atomic_rows(d / "Scientific.test.inter"):
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
        cats = [c.strip() for c in (x.get("categories") or "").split(",") if c.strip()]
        items[i] = CatalogItem(i, (x.get("title") or "").strip(), (x.get("brand") or "").strip(),
                               cats, (x.get("description") or "").strip())  # fmt: skip
    with open(d / "Scientific.inter.json", encoding="utf-8") as f:
        sequences = {u: [str(i) for i in seq] for u, seq in json.load(f).items()}
    return RawDataset(LCREC, items, sequences)


READERS = {UNISREC: read_unisrec, LCREC: read_lcrec}


def read_dataset(root: Path, name: str) -> RawDataset:
    if name not in READERS:
        raise ValueError(f"unknown dataset {name!r}; known: {', '.join(READERS)}")
    return READERS[name](root)
