"""Datasets by path: find which supported format a folder holds, and read it as catalogue items and
users' chronological event sequences.

Both the stream replay (what producers would send) and offline training read the data through here.
Ids stay the dataset's own. Three formats (README, "Bring your own data", shows each):

- plain:  `interactions.csv` (header `user_id,item_id,timestamp[,action]`; timestamp in seconds or ISO
  8601) + `items.jsonl` (one object per line: `item_id` plus title / brand / categories / description);
- lcrec:  `<prefix>.item.json` (item index -> title, description, brand, categories) +
  `<prefix>.inter.json` (user index -> chronological item indices), any prefix;
- atomic: the UniSRec / RecBole pre-split atomic files `<prefix>.text`, `.item2index`, `.user2index`,
  `.train.inter`, `.valid.inter`, `.test.inter` (tab-separated, `name:type` header lines).

`locate()` turns a folder (plus an optional format and prefix) into a `DatasetSource`, or raises ONE
`DatasetError` naming the files it looked for. Dataset-specific cleaning (categories to drop, e.g. a
root every item shares) comes from the dataset's settings (config/settings.py: DatasetSettings).
Only the plain format has timestamps; events are then ordered by time (ties keep the file's order).
"""

from __future__ import annotations

import csv
import json
import logging
import math
import random
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

from config.settings import DatasetSettings
from streams.schemas import ActionType

log = logging.getLogger(__name__)

UNISREC = "amazon-scientific-unisrec"
LCREC = "amazon-scientific-lcrec"

PLAIN_FILES = ("interactions.csv", "items.jsonl")
LCREC_SUFFIXES = (".item.json", ".inter.json")
ATOMIC_SUFFIXES = (".text", ".item2index", ".user2index", ".train.inter", ".valid.inter", ".test.inter")
ACTIONS = tuple(a.value for a in ActionType)


class DatasetError(ValueError):
    """A dataset that cannot be read: the message says what is wrong and where (file, line)."""


@dataclass(frozen=True)
class DatasetSource:
    """Where a dataset lives and how to read it."""

    name: str
    directory: Path
    format: str  # plain | lcrec | atomic
    prefix: str = ""
    drop_categories: tuple[str, ...] = ()

    def file(self, suffix: str) -> Path:
        return self.directory / f"{self.prefix}{suffix}"

    def describe(self) -> dict:
        return {"name": self.name, "path": str(self.directory), "format": self.format, "prefix": self.prefix,
                "drop_categories": list(self.drop_categories)}  # fmt: skip


@dataclass
class CatalogItem:
    item_id: str
    title: str
    brand: str = ""
    categories: list[str] = field(default_factory=list)
    description: str = ""


@dataclass
class RawDataset:
    """Items by id and each user's full chronological sequence of item ids (oldest first); with the
    event times (seconds) and actions alongside when the data has them."""

    name: str
    items: dict[str, CatalogItem]
    sequences: dict[str, list[str]]
    times: dict[str, list[float]] | None = None
    actions: dict[str, list[str]] | None = None
    meta: dict = field(default_factory=dict)


def subsample(ds: RawDataset, users: int | None, seed: int = 0) -> RawDataset:
    """`users` users of a seeded shuffle, with only the items they touch plus 10% others."""
    if not users or users >= len(ds.sequences):
        return ds
    rng = random.Random(seed)
    chosen = rng.sample(sorted(ds.sequences), users)
    sequences = {u: ds.sequences[u] for u in chosen}
    used = {i for seq in sequences.values() for i in seq}
    others = [i for i in ds.items if i not in used]
    keep = used | set(rng.sample(others, min(len(others), len(used) // 10)))

    def pick(per_user: dict | None) -> dict | None:
        return None if per_user is None else {u: per_user[u] for u in chosen}

    return RawDataset(ds.name, {i: it for i, it in ds.items.items() if i in keep}, sequences, pick(ds.times),
                      pick(ds.actions), {**ds.meta, "subsample_users": users})  # fmt: skip


# -- finding the files ---------------------------------------------------------------------------
def _looked_for() -> str:
    plain = " + ".join(PLAIN_FILES)
    lcrec = " + ".join(f"<prefix>{s}" for s in LCREC_SUFFIXES)
    atomic = " + ".join(f"<prefix>{s}" for s in ATOMIC_SUFFIXES)
    return f"{plain} (plain), {lcrec} (lcrec), {atomic} (atomic)"


def _prefixes(names: set[str], suffix: str) -> set[str]:
    return {n[: -len(suffix)] for n in names if n.endswith(suffix) and len(n) > len(suffix)}


def _required(fmt: str, prefix: str) -> list[str]:
    if fmt == "plain":
        return list(PLAIN_FILES)
    return [prefix + s for s in (LCREC_SUFFIXES if fmt == "lcrec" else ATOMIC_SUFFIXES)]


def _candidates(names: set[str], fmt: str, prefix: str) -> list[tuple[str, list[str]]]:
    """(prefix, missing files) for each prefix of `fmt` with at least one of its files present."""
    if fmt == "plain":
        return [("", [f for f in PLAIN_FILES if f not in names])] if names & set(PLAIN_FILES) else []
    suffixes = LCREC_SUFFIXES if fmt == "lcrec" else ATOMIC_SUFFIXES
    found = {prefix} if prefix else set().union(*(_prefixes(names, s) for s in suffixes))
    out = []
    for p in sorted(found):
        req = _required(fmt, p)
        if any(f in names for f in req):
            out.append((p, [f for f in req if f not in names]))
    return out


def locate(directory: Path, format: str = "auto", prefix: str = "", name: str = "",
           drop_categories: tuple[str, ...] | list[str] = ()) -> DatasetSource:  # fmt: skip
    """The dataset in `directory`, its format detected unless given; `DatasetError` otherwise."""
    directory = Path(directory).expanduser()
    if format not in ("auto", *READERS):
        raise DatasetError(f"unknown dataset format {format!r}: choose auto, {', '.join(READERS)}")
    if not directory.is_dir():
        raise DatasetError(f"{directory}: no such folder (a dataset is a folder holding {_looked_for()})")
    names = {p.name for p in directory.iterdir() if p.is_file()}
    formats = ("plain", "lcrec", "atomic") if format == "auto" else (format,)
    complete, partial = [], []
    for fmt in formats:
        for p, missing in _candidates(names, fmt, prefix):
            (partial if missing else complete).append((fmt, p, missing))
    if len(complete) == 1:
        fmt, p, _ = complete[0]
        return DatasetSource(name or directory.resolve().name, directory, fmt, p, tuple(drop_categories))
    if len(complete) > 1:
        which = ", ".join(f"{f} prefix {p!r}" if p else f for f, p, _ in complete)
        raise DatasetError(f"{directory} holds several datasets ({which}): choose one with --format / --prefix")
    if partial:
        fmt, p, missing = partial[0]
        present = [f for f in _required(fmt, p) if f not in missing]
        raise DatasetError(f"{directory}: incomplete {fmt} dataset: missing {', '.join(missing)} "
                           f"(found {', '.join(present)})")  # fmt: skip
    looked = _looked_for() if format == "auto" else " + ".join(_required(format, prefix or "<prefix>"))
    held = ", ".join(sorted(names)[:8]) + (" ..." if len(names) > 8 else "") if names else "no files"
    raise DatasetError(f"no dataset found in {directory}: looked for {looked}; the folder holds {held}")


def resolve(data: str | Path, datasets: dict[str, DatasetSettings], shared_data_dir: Path,
            format: str = "auto", prefix: str = "") -> DatasetSource:  # fmt: skip
    """`data` is a dataset name from the settings (`[datasets.<name>]`, the two built-in ones
    included) or a folder. A folder that is a configured dataset's folder gets that dataset's settings
    (name, cleaning), so `--data ../shared/data/amazon-scientific-unisrec` is the built-in split."""
    key = str(data)
    spec, name = datasets.get(key), key
    if spec is None:
        path = Path(key).expanduser()
        if not path.exists() and "/" not in key and "\\" not in key:
            raise DatasetError(f"{key!r} is neither a folder nor a dataset named in the settings "
                               f"(known: {', '.join(sorted(datasets))})")  # fmt: skip
        for n, sp in datasets.items():
            known = Path(sp.path or Path(shared_data_dir) / n).expanduser()
            if path.is_dir() and known.is_dir() and known.resolve() == path.resolve():
                spec, name = sp, n
                break
        else:
            return locate(path, format, prefix)
    directory = Path(spec.path or Path(shared_data_dir) / name).expanduser()
    return locate(directory, spec.format if format == "auto" else format, prefix or spec.prefix, name,
                  spec.drop_categories)  # fmt: skip


# -- item text -----------------------------------------------------------------------------------
def split_unisrec_text(text: str, roots: tuple[str, ...] | list[str] = ()) -> dict[str, str]:
    """UniSRec's item text "title. category path. brand." -> fields. A category root from `roots`
    marks where the title ends and is dropped (titles hold ". " too); without one the text is split
    from the right on ". " into title, category, brand (category empty: "title. . brand.")."""
    t = text.strip()
    if t.endswith("."):
        t = t[:-1]
    root = next((r for r in roots if ". " + r in t), None)
    if root is not None:
        title, rest = t.split(". " + root, 1)
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
    for r in roots:
        if cats.startswith(r):
            cats = cats[len(r) :].strip()
    return {"title": title.strip(), "categories": cats, "brand": brand.strip(), "description": ""}


def parse_unisrec_text(item_id: str, text: str, roots: tuple[str, ...] | list[str] = ()) -> CatalogItem:
    f = split_unisrec_text(text, roots)
    return CatalogItem(item_id, f["title"], f["brand"], [f["categories"]] if f["categories"] else [])


def _text(v) -> str:
    if v is None:
        return ""
    if isinstance(v, list):
        return " ".join(_text(x) for x in v).strip()
    return str(v).strip()


def json_fields(x: dict, drop: tuple[str, ...] | list[str] = ()) -> dict[str, str]:
    """One item object (LC-Rec, items.jsonl) -> prompt fields: categories as a list or a
    comma-separated string, joined with ", ", the `drop` ones removed."""
    cats = x.get("categories") or ""
    if isinstance(cats, str):
        cats = cats.split(",")
    elif not isinstance(cats, list):
        cats = [cats]
    cats = [_text(c) for c in cats]
    cats = [c for c in cats if c and c not in drop]
    return {"title": _text(x.get("title")), "brand": _text(x.get("brand")), "categories": ", ".join(cats),
            "description": _text(x.get("description"))}  # fmt: skip


def lcrec_fields(x: dict, drop: tuple[str, ...] | list[str] = ()) -> dict[str, str]:
    return json_fields(x, drop)


def catalog_item(item_id: str, f: dict[str, str]) -> CatalogItem:
    cats = f["categories"].split(", ") if f["categories"] else []
    return CatalogItem(item_id, f["title"], f["brand"], cats, f["description"])


# -- readers -------------------------------------------------------------------------------------
def read_atomic(path: Path, header: bool = True) -> list[list[str]]:
    """Rows of a tab-separated RecBole atomic file (skipping its `name:type` header line)."""
    with open(path, encoding="utf-8") as f:
        if header:
            next(f, None)
        return [line.rstrip("\n").split("\t") for line in f if line.strip()]


def _load_json(path: Path):
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise DatasetError(f"{path}: not valid JSON ({e})") from None


def read_atomic_split(src: DatasetSource) -> RawDataset:
    """The stream view of the atomic split: a user's full sequence is the test row's history
    followed by its target."""
    try:
        roots = src.drop_categories
        items = {row[0]: parse_unisrec_text(row[0], row[1] if len(row) > 1 else "", roots)
                 for row in read_atomic(src.file(".text"))}  # fmt: skip
        index_to_item = {int(i): a for a, i in read_atomic(src.file(".item2index"), header=False)}
        index_to_user = {int(i): u for u, i in read_atomic(src.file(".user2index"), header=False)}
        sequences = {}
        for user, history, target in read_atomic(src.file(".test.inter")):
            ids = [int(x) for x in history.split()] + [int(target)]
            sequences[index_to_user[int(user)]] = [index_to_item[i] for i in ids]
    except (ValueError, KeyError, IndexError, UnicodeDecodeError) as e:
        if isinstance(e, DatasetError):
            raise
        raise DatasetError(f"{src.directory}: malformed atomic files with prefix {src.prefix!r} ({e!r})") from None
    return RawDataset(src.name, items, sequences)


def read_lcrec(src: DatasetSource) -> RawDataset:
    """item index -> fields, user index -> chronological item indices (users in index order)."""
    raw_items, inter = _load_json(src.file(".item.json")), _load_json(src.file(".inter.json"))
    if not isinstance(raw_items, dict) or not isinstance(inter, dict):
        raise DatasetError(f"{src.directory}: {src.prefix}.item.json and {src.prefix}.inter.json must each hold one JSON object")
    try:
        order = sorted(raw_items, key=int)
        users = sorted(inter, key=int)
    except ValueError as e:
        raise DatasetError(f"{src.directory}: LC-Rec keys must be integer indices ({e})") from None
    items = {}
    for i in order:
        if not isinstance(raw_items[i], dict):
            raise DatasetError(f"{src.file('.item.json')}: item {i} is not an object")
        items[str(int(i))] = catalog_item(str(int(i)), json_fields(raw_items[i], src.drop_categories))
    sequences, unknown = {}, 0
    for u in users:
        seq = inter[u] if isinstance(inter[u], list) else None
        if seq is None:
            raise DatasetError(f"{src.file('.inter.json')}: user {u} has no list of items")
        kept = [str(i) for i in seq if str(i) in items]
        unknown += len(seq) - len(kept)
        sequences[u] = kept
    return _finish(RawDataset(src.name, items, sequences), unknown)


def parse_time(value: str) -> float:
    """Seconds since the epoch from a number or an ISO 8601 date/time (UTC unless it says otherwise)."""
    v = value.strip()
    try:
        t = float(v)
    except ValueError:
        d = datetime.fromisoformat(v.replace("Z", "+00:00"))  # ValueError when it is no date either
        t = (d if d.tzinfo else d.replace(tzinfo=timezone.utc)).timestamp()
    if not math.isfinite(t):
        raise ValueError(f"not a finite time: {value!r}")
    return t


def read_items_jsonl(path: Path, drop: tuple[str, ...]) -> dict[str, CatalogItem]:
    items: dict[str, CatalogItem] = {}
    with open(path, encoding="utf-8", errors="strict") as f:
        try:
            lines = list(f)
        except UnicodeDecodeError as e:
            raise DatasetError(f"{path}: not UTF-8 text ({e})") from None
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            x = json.loads(line)
        except json.JSONDecodeError as e:
            raise DatasetError(f"{path}:{n}: not a JSON object ({e})") from None
        if not isinstance(x, dict) or _text(x.get("item_id")) == "":
            raise DatasetError(f"{path}:{n}: each line must be a JSON object with an item_id")
        item_id = _text(x["item_id"])
        if item_id in items:
            raise DatasetError(f"{path}:{n}: item_id {item_id!r} appears twice")
        items[item_id] = catalog_item(item_id, json_fields(x, drop))
    if not items:
        raise DatasetError(f"{path}: no items")
    return items


def read_plain(src: DatasetSource) -> RawDataset:
    """interactions.csv + items.jsonl. Users in the order of their first row; each user's events ordered
    by timestamp (ties: file order); interactions whose item is not in items.jsonl are dropped, counted and logged."""
    items = read_items_jsonl(src.directory / "items.jsonl", src.drop_categories)
    path = src.directory / "interactions.csv"
    events: dict[str, list[tuple[float, int, str, str]]] = {}
    unknown = 0
    try:
        with open(path, encoding="utf-8", newline="") as f:
            reader = csv.DictReader(f)
            header = [h.strip() for h in (reader.fieldnames or [])]
            missing = [c for c in ("user_id", "item_id", "timestamp") if c not in header]
            if missing:
                raise DatasetError(f"{path}: the header must be user_id,item_id,timestamp[,action]; "
                                   f"missing {', '.join(missing)} (found {','.join(header) or 'nothing'})")  # fmt: skip
            reader.fieldnames = header
            for n, row in enumerate(reader, 2):
                user, item = (row.get("user_id") or "").strip(), (row.get("item_id") or "").strip()
                if not user or not item:
                    raise DatasetError(f"{path}:{n}: empty user_id or item_id")
                try:
                    t = parse_time(row.get("timestamp") or "")
                except ValueError:
                    raise DatasetError(f"{path}:{n}: timestamp {row.get('timestamp')!r} is neither a number "
                                       "of seconds nor an ISO 8601 date") from None  # fmt: skip
                action = (row.get("action") or "").strip() or ActionType.review.value
                if action not in ACTIONS:
                    raise DatasetError(f"{path}:{n}: action {action!r} is not one of {', '.join(ACTIONS)}")
                if item not in items:
                    unknown += 1
                    continue
                events.setdefault(user, []).append((t, n, item, action))
    except UnicodeDecodeError as e:
        raise DatasetError(f"{path}: not UTF-8 text ({e})") from None
    except csv.Error as e:
        raise DatasetError(f"{path}: not a CSV file ({e})") from None
    sequences, times, actions = {}, {}, {}
    for user, evs in events.items():
        evs.sort()
        sequences[user] = [e[2] for e in evs]
        times[user] = [e[0] for e in evs]
        actions[user] = [e[3] for e in evs]
    return _finish(RawDataset(src.name, items, sequences, times, actions), unknown)


def _finish(ds: RawDataset, unknown_items: int) -> RawDataset:
    if unknown_items:
        log.warning("%s: %d interactions name items with no text in the catalogue: dropped", ds.name, unknown_items)
        ds.meta["dropped_unknown_items"] = unknown_items
    if not any(ds.sequences.values()):
        raise DatasetError(f"{ds.name}: no interaction names an item of the catalogue")
    return ds


READERS = {"plain": read_plain, "lcrec": read_lcrec, "atomic": read_atomic_split}


def read_source(src: DatasetSource) -> RawDataset:
    return READERS[src.format](src)


def read_dataset(root: Path, name: str) -> RawDataset:
    """A dataset by name (the settings' `datasets`, the built-in two included) or by path."""
    from config.settings import BUILTIN_DATASETS

    return read_source(resolve(name, BUILTIN_DATASETS, Path(root)))


def read_unisrec(root: Path) -> RawDataset:
    return read_dataset(root, UNISREC)
