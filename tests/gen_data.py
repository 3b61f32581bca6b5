"""Small generated datasets in every supported format (tests of datasets by path)."""

from __future__ import annotations

import csv
import json
import random
from pathlib import Path

WORDS = "steel brass glass beaker flask pipette caliper epoxy filament nozzle sensor thermistor".split()


def catalogue(n_items: int = 40, seed: int = 7) -> dict[str, dict]:
    rng = random.Random(seed)
    return {f"I{i:03d}": {"title": " ".join(rng.sample(WORDS, 3)) + f" model {i}",
                          "brand": rng.choice(["Acme", "Karter", "Neiko"]), "categories": ["Lab", rng.choice(["Tools", "Glass"])],
                          "description": " ".join(rng.choices(WORDS, k=8))} for i in range(n_items)}  # fmt: skip


def events(items: list[str], n_users: int = 60, per_user: int = 7, seed: int = 7,
           extra: int = 0) -> list[tuple[str, str, float]]:  # fmt: skip
    """(user, item, unix time) per event; each user's items follow a theme so there is signal.
    `extra` > 0: user u has per_user + (u % (extra + 1)) events (sequences of different lengths)."""
    rng = random.Random(seed)
    out = []
    for u in range(n_users):
        start = rng.randrange(len(items))
        seq = [items[(start + 2 * k + rng.randrange(2)) % len(items)] for k in range(per_user + u % (extra + 1))]
        out += [(f"U{u:03d}", i, 1_600_000_000 + 3600 * k + 60 * u) for k, i in enumerate(seq)]
    return out


def write_plain(root: Path, n_items: int = 40, n_users: int = 60, shuffle: bool = True, extra: int = 0) -> Path:
    """interactions.csv (rows shuffled: order comes from the timestamps) + items.jsonl."""
    root.mkdir(parents=True, exist_ok=True)
    items = catalogue(n_items)
    evs = events(list(items), n_users, extra=extra)
    if shuffle:
        random.Random(1).shuffle(evs)
    with open(root / "interactions.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["user_id", "item_id", "timestamp", "action"])
        w.writerows([u, i, t, "purchase"] for u, i, t in evs)
    with open(root / "items.jsonl", "w") as f:
        for i, v in items.items():
            f.write(json.dumps({"item_id": i, **v}) + "\n")
    return root


def write_lcrec(root: Path, prefix: str = "Toys", n_items: int = 40, n_users: int = 60) -> Path:
    """The same data as write_plain, as <prefix>.item.json + <prefix>.inter.json (indices)."""
    root.mkdir(parents=True, exist_ok=True)
    items = catalogue(n_items)
    index = {i: n for n, i in enumerate(items)}
    seqs: dict[str, list[int]] = {}
    for u, i, _ in sorted(events(list(items), n_users), key=lambda e: (e[0], e[2])):
        seqs.setdefault(str(int(u[1:])), []).append(index[i])
    item_json = {str(index[i]): {**v, "categories": ",".join(v["categories"])} for i, v in items.items()}
    (root / f"{prefix}.item.json").write_text(json.dumps(item_json))
    (root / f"{prefix}.inter.json").write_text(json.dumps(seqs))
    return root


def write_atomic(root: Path, prefix: str = "Office", n_items: int = 40, n_users: int = 60) -> Path:
    """The same data as UniSRec/RecBole pre-split atomic files."""
    from trainer.data import load_plain, write_atomic_split

    data = load_plain(write_plain(root.parent / f"{root.name}-plain-source", n_items, n_users))
    write_atomic_split(data, root, prefix)
    return root
