"""Loaders for the two Amazon Scientific preprocessings under `shared_data_dir`, into one `RecData`.

- amazon-scientific-unisrec (primary): RecBole atomic files. Item text comes from `Scientific.text`
  keyed by ASIN, and item indices from `Scientific.item2index` (line order). The `.inter` files already
  hold the split: train = every prefix of each training sequence, valid/test = one (history, target)
  row per user. A user's training sequence is their longest train row's history + its target.
  The text is one string "title. category path. brand." and is split into fields as follows: when the
  string contains "Industrial & Scientific" (the category root, 97% of items) the title is everything
  before ". Industrial & Scientific", the category path runs from there to the last ". ", and the
  brand is the last piece; otherwise the string is split from the right on ". " into title, category,
  brand (the category is empty for those items: "title. . brand."). The root category
  "Industrial & Scientific" is shared by every item and is dropped. No description exists there.
  (streams/datasets.py holds this parsing, so the live stream and offline training read the same fields.)
- amazon-scientific-lcrec: `Scientific.item.json` (index -> title, description, brand, categories)
  and `Scientific.inter.json` (user -> chronological items). Leave-one-out built here: last item =
  test target, second-to-last = validation target, the rest = training sequence.

Histories are capped to the most recent `history_cap` (50) items, like the UniSRec files.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass, field, replace
from pathlib import Path

from encoder.prompt import DEFAULT_TEMPLATE, build_prompt
from streams.datasets import lcrec_fields, read_atomic, split_unisrec_text
DATASETS = ("amazon-scientific-unisrec", "amazon-scientific-lcrec")


@dataclass
class RecData:
    """Items and one leave-one-out split. Item ids are 0..n_items-1; users are list positions."""

    name: str
    item_ids: list[str]  # external id per internal item id
    item_fields: list[dict[str, str]]  # title, brand, categories, description
    users: list[str]
    train: list[list[int]]  # per user: training sequence, oldest first
    valid: list[tuple[list[int], int]]  # per user: (history, target)
    test: list[tuple[list[int], int]]
    meta: dict = field(default_factory=dict)

    @property
    def n_items(self) -> int:
        return len(self.item_ids)

    @property
    def n_users(self) -> int:
        return len(self.users)

    def prompts(self, template: str = DEFAULT_TEMPLATE) -> list[str]:
        return [build_prompt(f, template) for f in self.item_fields]

    def subsample(self, users: int | None, seed: int = 0) -> "RecData":
        """A random subset of users (the whole catalogue is kept, so ranking stays full)."""
        if not users or users >= self.n_users:
            return self
        keep = sorted(random.Random(seed).sample(range(self.n_users), users))
        return replace(
            self,
            users=[self.users[u] for u in keep],
            train=[self.train[u] for u in keep],
            valid=[self.valid[u] for u in keep],
            test=[self.test[u] for u in keep],
            meta={**self.meta, "subsample_users": users, "subsample_seed": seed},
        )

    def item_popularity(self) -> list[int]:
        """Training interaction count per item (what the popularity baseline ranks by)."""
        counts = [0] * self.n_items
        for seq in self.train:
            for i in seq:
                counts[i] += 1
        return counts


# -- UniSRec atomic files ----------------------------------------------------------------------
def load_unisrec(directory: Path, prefix: str = "Scientific", history_cap: int = 50) -> RecData:
    directory = Path(directory)
    item2index = {}
    for line in (directory / f"{prefix}.item2index").read_text().splitlines():
        if line.strip():
            asin, idx = line.split("\t")
            item2index[asin] = int(idx)
    n_items = len(item2index)
    assert sorted(item2index.values()) == list(range(n_items)), "item2index is not 0..N-1"
    item_ids = [""] * n_items
    for asin, idx in item2index.items():
        item_ids[idx] = asin
    texts = {row[0]: row[1] if len(row) > 1 else "" for row in read_atomic(directory / f"{prefix}.text")}
    fields = [split_unisrec_text(texts.get(a, "")) for a in item_ids]

    user_rows = [line.split("\t")[0] for line in (directory / f"{prefix}.user2index").read_text().splitlines() if line.strip()]

    def rows(split: str) -> dict[int, tuple[list[int], int]]:
        out: dict[int, tuple[list[int], int]] = {}
        for row in read_atomic(directory / f"{prefix}.{split}.inter"):
            u, hist, target = int(row[0]), [int(x) for x in row[1].split()], int(row[2])
            if split != "train" or u not in out or len(hist) > len(out[u][0]):
                out[u] = (hist, target)
        return out

    train_rows, valid_rows, test_rows = rows("train"), rows("valid"), rows("test")
    users = sorted(valid_rows.keys() & test_rows.keys())
    train = []
    for u in users:
        if u in train_rows:
            h, t = train_rows[u]
            seq = h + [t]
        else:
            seq = list(valid_rows[u][0])
        train.append(seq[-history_cap:])
    return RecData(
        name="amazon-scientific-unisrec",
        item_ids=item_ids,
        item_fields=fields,
        users=[user_rows[u] if u < len(user_rows) else str(u) for u in users],
        train=train,
        valid=[(valid_rows[u][0][-history_cap:], valid_rows[u][1]) for u in users],
        test=[(test_rows[u][0][-history_cap:], test_rows[u][1]) for u in users],
    )


# -- LC-Rec JSON -------------------------------------------------------------------------------
def load_lcrec(directory: Path, prefix: str = "Scientific", history_cap: int = 50) -> RecData:
    directory = Path(directory)
    items = json.loads((directory / f"{prefix}.item.json").read_text(encoding="utf-8"))
    n_items = max(int(k) for k in items) + 1
    fields = [lcrec_fields({}) for _ in range(n_items)]
    for k, v in items.items():
        fields[int(k)] = lcrec_fields(v)
    inter = json.loads((directory / f"{prefix}.inter.json").read_text(encoding="utf-8"))
    users, train, valid, test = [], [], [], []
    for u in sorted(inter, key=int):
        seq = [int(i) for i in inter[u]]
        if len(seq) < 3:
            continue
        users.append(u)
        train.append(seq[:-2][-history_cap:])
        valid.append((seq[:-2][-history_cap:], seq[-2]))
        test.append((seq[:-1][-history_cap:], seq[-1]))
    return RecData(
        name="amazon-scientific-lcrec",
        item_ids=[str(i) for i in range(n_items)],
        item_fields=fields,
        users=users,
        train=train,
        valid=valid,
        test=test,
    )


def load_dataset(name: str, shared_data_dir: str | Path, history_cap: int = 50) -> RecData:
    """Load one of `DATASETS` from the shared data directory (read-only)."""
    directory = Path(shared_data_dir) / name
    if not directory.is_dir():
        raise FileNotFoundError(f"dataset {name!r} not found under {shared_data_dir}")
    if name == "amazon-scientific-unisrec":
        return load_unisrec(directory, history_cap=history_cap)
    if name == "amazon-scientific-lcrec":
        return load_lcrec(directory, history_cap=history_cap)
    raise ValueError(f"unknown dataset {name!r}; known: {', '.join(DATASETS)}")
