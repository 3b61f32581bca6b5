"""Datasets (any supported format, by path: streams/datasets.py) as one `RecData` leave-one-out split.

- atomic (the UniSRec / RecBole pre-split files, e.g. amazon-scientific-unisrec): item text from
  `<prefix>.text` keyed by ASIN, item indices from `<prefix>.item2index` (line order). The `.inter`
  files already hold the split: train = every prefix of each training sequence, valid/test = one
  (history, target) row per user. A user's training sequence is their longest train row's history +
  its target. The text "title. category path. brand." is split into fields by
  streams/datasets.py: split_unisrec_text (the dataset's `drop_categories`, for Scientific its root
  "Industrial & Scientific", mark where the title ends and are dropped). No description exists there.
- lcrec and plain: each user's chronological sequence (the plain format is ordered by its
  timestamps) is split here: last item = test target, second-to-last = validation target, the rest =
  training sequence; users with fewer than 3 events are left out. Items keep the file's order.

Histories are capped to the most recent `history_cap` (50) items, like the UniSRec files.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass, field, replace
from pathlib import Path

from encoder.prompt import DEFAULT_TEMPLATE, build_prompt
from config.settings import BUILTIN_DATASETS
from streams.datasets import (
    DatasetError,
    DatasetSource,
    RawDataset,
    json_fields,
    locate,
    read_atomic,
    read_source,
    resolve,
    split_unisrec_text,
)

DATASETS = tuple(BUILTIN_DATASETS)


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
def load_unisrec(directory: Path, prefix: str = "Scientific", history_cap: int = 50,
                 drop_categories: tuple[str, ...] | list[str] = (), name: str = "") -> RecData:  # fmt: skip
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
    fields = [split_unisrec_text(texts.get(a, ""), drop_categories) for a in item_ids]

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
        name=name or directory.resolve().name,
        item_ids=item_ids,
        item_fields=fields,
        users=[user_rows[u] if u < len(user_rows) else str(u) for u in users],
        train=train,
        valid=[(valid_rows[u][0][-history_cap:], valid_rows[u][1]) for u in users],
        test=[(test_rows[u][0][-history_cap:], test_rows[u][1]) for u in users],
    )


# -- chronological sequences (lcrec, plain) ---------------------------------------------------------
def leave_one_out(raw: RawDataset, history_cap: int = 50) -> RecData:
    """Items in the catalogue's order; per user (3+ events): train = all but the last two, valid =
    (train, second-to-last), test = (all but the last, last)."""
    item_ids = list(raw.items)
    index = {i: n for n, i in enumerate(item_ids)}
    fields = [{"title": it.title, "brand": it.brand, "categories": ", ".join(it.categories),
               "description": it.description} for it in raw.items.values()]  # fmt: skip
    users, train, valid, test = [], [], [], []
    for u, items in raw.sequences.items():
        seq = [index[i] for i in items]
        if len(seq) < 3:
            continue
        users.append(u)
        train.append(seq[:-2][-history_cap:])
        valid.append((seq[:-2][-history_cap:], seq[-2]))
        test.append((seq[:-1][-history_cap:], seq[-1]))
    meta = {**raw.meta, "timestamps": raw.times is not None, "users_too_short": len(raw.sequences) - len(users)}
    return RecData(raw.name, item_ids, fields, users, train, valid, test, meta)


def load_lcrec(directory: Path, prefix: str = "Scientific", history_cap: int = 50,
               drop_categories: tuple[str, ...] | list[str] = ()) -> RecData:  # fmt: skip
    return load_source(locate(directory, "lcrec", prefix, drop_categories=drop_categories), history_cap)


def load_plain(directory: Path, history_cap: int = 50, drop_categories: tuple[str, ...] | list[str] = ()) -> RecData:
    return load_source(locate(directory, "plain", drop_categories=drop_categories), history_cap)


# -- any source ----------------------------------------------------------------------------------
def load_source(src: DatasetSource, history_cap: int = 50) -> RecData:
    """One dataset, located (streams/datasets.py: locate / resolve), as a leave-one-out split."""
    if src.format == "atomic":
        try:
            data = load_unisrec(src.directory, src.prefix, history_cap, src.drop_categories, src.name)
        except (ValueError, KeyError, IndexError, AssertionError) as e:
            raise DatasetError(f"{src.directory}: malformed atomic files with prefix {src.prefix!r} ({e!r})") from None
    else:
        data = leave_one_out(read_source(src), history_cap)
    data.meta.update(source=src.describe())
    return data


def load_dataset(name: str, shared_data_dir: str | Path, history_cap: int = 50) -> RecData:
    """A built-in dataset (`DATASETS`) under the shared data directory, or a dataset folder."""
    return load_source(resolve(name, BUILTIN_DATASETS, Path(shared_data_dir)), history_cap)


# -- writing the split as RecBole atomic files (the peer's input) -----------------------------------
def _clean(text: str) -> str:
    return " ".join(text.split())  # no tabs or newlines inside a field


def write_atomic_split(data: RecData, directory: Path, prefix: str) -> list[Path]:
    """`data`'s split as UniSRec-style pre-split atomic files (what bench/recbole/sasrec.py reads and
    `load_unisrec` reads back to the same split): `<prefix>.train.inter` holds every prefix of each
    training sequence, valid/test one row per user, item/user indices in `.item2index` /
    `.user2index`, item text "title. categories. brand." in `.text` (no description: the format
    has none)."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    for kind, ids in (("item", data.item_ids), ("user", data.users)):
        bad = next((i for i in ids if i != _clean(i) or not i), None)
        if bad is not None:
            raise DatasetError(f"{kind} id {bad!r} has white space at its ends or inside: not writable as an atomic token")
    head = "user_id:token\titem_id_list:token_seq\titem_id:token"

    def rows(examples) -> list[str]:
        return [f"{u}\t{' '.join(map(str, h))}\t{t}" for u, (h, t) in examples]

    train = [(u, (seq[max(0, j - 50) : j], seq[j])) for u, seq in enumerate(data.train) for j in range(1, len(seq))]
    files = {
        ".train.inter": [head, *rows(train)],
        ".valid.inter": [head, *rows(enumerate(data.valid))],
        ".test.inter": [head, *rows(enumerate(data.test))],
        ".item2index": [f"{i}\t{n}" for n, i in enumerate(data.item_ids)],
        ".user2index": [f"{u}\t{n}" for n, u in enumerate(data.users)],
        ".text": ["item_id:token\ttext:token_seq"] + [
            f"{i}\t{_clean(f['title'])}. {_clean(f['categories'])}. {_clean(f['brand'])}. "
            for i, f in zip(data.item_ids, data.item_fields)
        ],
    }
    paths = []
    for suffix, lines in files.items():
        path = directory / f"{prefix}{suffix}"
        path.write_text("\n".join(lines) + "\n", encoding="utf-8")
        paths.append(path)
    return paths
