"""Assembles bench/results/scale.json (issue 16) from the measured parts; it measures nothing itself.

    .venv/bin/python -m bench.scale [--parts bench/results/scale] [--milvus bench/results/milvus_server.json]
                                    [--out bench/results/scale.json] [--strict]

Inputs:
- every `<parts>/*.json`: one benchmark's part (bench/ann.py writes ann.json, the other scale
  benchmarks theirs). Each part's numeric top-level keys are its figures; `command`, `load_avg`,
  `wall_s`, `cpu_count` and `notes` describe the run.
- `--milvus`: bench/milvus_server.py's result, a flat object whose `items` says the catalogue size;
  its `milvus_server_query_p50_ms` / `_p99_ms` are copied only when it was measured at 100,000 items
  (a file of several runs, objects each with `items`, is searched for the 100k one).
Output: every figure at the top level, `sources` (which file each top-level key came from), `parts`
(per file: its command, load, wall time, cpu count, notes and all its figures), `missing` (the
issue's keys that no input measured: left out, never filled in) and `conflicts` (a key two files give
different values for: left out of the top level, both kept under `parts`).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "bench" / "results"
REQUIRED = (
    "encoder_workers_1_items_per_s", "encoder_workers_2_items_per_s", "interaction_workers_1_events_per_s",
    "interaction_workers_2_events_per_s", "changelog_restore_s_per_100k_users", "ddp_2_ranks_vs_1_time",
    "ddp_valid_ndcg10_1", "ddp_valid_ndcg10_2", "milvus_server_query_p50_ms", "milvus_server_query_p99_ms",
    "ann_1m_query_p99_ms", "ann_1m_recall_at_10", "multi_machine_lost", "multi_machine_duplicated",
)  # fmt: skip
META = ("command", "load_avg", "wall_s", "cpu_count", "notes", "machine")
MILVUS_KEYS = ("milvus_server_query_p50_ms", "milvus_server_query_p99_ms")
MILVUS_ITEMS = 100_000


def is_figure(value) -> bool:
    return isinstance(value, (int, float))  # bools too (int); never None, strings or objects


def part_of(doc: dict) -> tuple[dict, dict]:
    """-> (figures: the numeric top-level keys, run: the META keys present)."""
    figures = {k: v for k, v in doc.items() if k not in META and is_figure(v)}
    return figures, {k: doc[k] for k in META if k in doc}


def runs_in(doc, depth: int = 3):
    """The objects with an "items" key in `doc`: itself, or nested in lists/objects (a few levels)."""
    if isinstance(doc, dict) and "items" in doc:
        yield doc
    elif depth > 0 and isinstance(doc, (dict, list)):
        for v in doc.values() if isinstance(doc, dict) else doc:
            yield from runs_in(v, depth - 1)


def milvus_part(doc) -> tuple[dict, dict, str | None]:
    """The 100k-item Milvus server figures of bench/milvus_server.py's file -> (figures, run, why not)."""
    runs = list(runs_in(doc))
    for r in runs:
        if r.get("items") == MILVUS_ITEMS and all(is_figure(r.get(k)) for k in MILVUS_KEYS):
            return {k: r[k] for k in MILVUS_KEYS}, {k: r[k] for k in META if k in r} | {"items": r["items"]}, None
    sizes = [r.get("items") for r in runs]
    return {}, {}, f"no run at {MILVUS_ITEMS:,} items with {', '.join(MILVUS_KEYS)} (runs at items={sizes})"


def assemble(parts_dir: Path, milvus: Path, root: Path = REPO) -> dict:
    sources: dict[str, list[tuple[str, object]]] = {}
    parts: dict[str, dict] = {}
    notes: list[str] = []

    def add(name: str, figures: dict, run: dict) -> None:
        parts[name] = {**run, "figures": figures}
        for k, v in figures.items():
            sources.setdefault(k, []).append((name, v))

    def rel(path: Path) -> str:
        try:
            return str(path.resolve().relative_to(root.resolve()))
        except ValueError:
            return str(path)

    for path in sorted(parts_dir.glob("*.json")):
        try:
            doc = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError) as e:
            notes.append(f"{rel(path)} unreadable, skipped: {e}")
            continue
        if not isinstance(doc, dict):
            notes.append(f"{rel(path)} is not a JSON object, skipped")
            continue
        add(rel(path), *part_of(doc))
    if milvus.exists():
        try:
            figures, run, why = milvus_part(json.loads(milvus.read_text()))
        except (OSError, json.JSONDecodeError) as e:
            figures, run, why = {}, {}, f"unreadable: {e}"
        if why:
            notes.append(f"{rel(milvus)}: {why}")
        else:
            add(rel(milvus), figures, run)
    else:
        notes.append(f"{rel(milvus)} does not exist")

    out: dict = {}
    conflicts = {}
    for k, given in sources.items():
        if len({json.dumps(v) for _, v in given}) > 1:
            conflicts[k] = {name: v for name, v in given}
        else:
            out[k] = given[0][1]
    return {
        **{k: out[k] for k in REQUIRED if k in out},
        **{k: v for k, v in out.items() if k not in REQUIRED},
        "sources": {k: [name for name, _ in sources[k]] if len(sources[k]) > 1 else sources[k][0][0] for k in out},
        "missing": [k for k in REQUIRED if k not in out],
        "conflicts": conflicts,
        "parts": parts,
        "notes": notes,
        "command": "python -m bench.scale",
    }


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--parts", type=Path, default=RESULTS / "scale")
    p.add_argument("--milvus", type=Path, default=RESULTS / "milvus_server.json")
    p.add_argument("--out", type=Path, default=RESULTS / "scale.json")
    p.add_argument("--strict", action="store_true", help="exit 1 when a required key is missing or in conflict")
    a = p.parse_args(argv)
    result = assemble(a.parts, a.milvus)
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(json.dumps(result, indent=2) + "\n")
    for k in REQUIRED:
        if k in result:
            print(f"{k:40s} {result[k]!r:>24}  from {result['sources'][k]}")
    for k in result["missing"]:
        print(f"{k:40s} {'MISSING':>24}" + ("  (conflicting: " + json.dumps(result["conflicts"][k]) + ")"
                                             if k in result["conflicts"] else ""))  # fmt: skip
    for n in result["notes"]:
        print(f"note: {n}")
    print(f"-> {a.out}")
    return 1 if a.strict and result["missing"] else 0


if __name__ == "__main__":
    sys.exit(main())
