"""The robustness query set: references edited by a held-out family of edits, plus distractors.

    embedlab robustness-set        # -> data/robustness (robustness.out)

For each edit kind of :mod:`embedlab.data.robust_edits`, ``per_kind``
references (drawn with the seed, each at most once while there are enough)
are edited into queries; ``distractors`` more queries are edited training
images, which match no reference. The folder holds:

- ``query/RQ00000.jpg ...``: the queries, shuffled ids (no kind or match in a name);
- ``ground_truth.csv``: ``query_id,reference_id`` of the edited references (DISC's format);
- ``edits.csv``: ``query_id,edit,source`` for every query (``distractor`` rows say which edit too);
- ``manifest.json``: the settings and the count per kind.

The whole folder is written beside the old one and swapped in at the end:
a failure leaves the previous set whole.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image

from embedlab.atomic import write_csv_atomic, write_json_atomic
from embedlab.config import RobustnessConfig
from embedlab.data.disc import DiscLayout
from embedlab.data.robust_edits import ROBUST_EDITS
from embedlab.images import list_images, load_rgb, save_jpeg_atomic

DISTRACTOR = "distractor"
QUERY_DIR = "query"
GROUND_TRUTH = "ground_truth.csv"
EDITS_CSV = "edits.csv"
MANIFEST = "manifest.json"


def _draw(n_items: int, n: int, rng: np.random.Generator) -> np.ndarray:
    """``n`` indices of ``n_items``: distinct while there are enough, then drawn again."""
    if n_items == 0 and n:
        raise ValueError("no images to edit")
    rounds = [rng.permutation(n_items) for _ in range(-(-n // max(n_items, 1)))]
    return np.concatenate(rounds)[:n] if rounds else np.zeros(0, int)


def plan_queries(n_references: int, n_training: int, cfg: RobustnessConfig) -> list[tuple[str, str, int]]:
    """(edit, "reference" | "training", source index) of every query, in query-id order (shuffled)."""
    rng = np.random.default_rng([cfg.seed, 17])
    kinds = list(ROBUST_EDITS)
    refs = _draw(n_references, cfg.per_kind * len(kinds), rng)
    plan = [(kinds[i // cfg.per_kind], "reference", int(r)) for i, r in enumerate(refs)]
    if cfg.distractors:
        picks = _draw(n_training, cfg.distractors, rng)
        plan += [(kinds[int(rng.integers(len(kinds)))], "training", int(t)) for t in picks]
    return [plan[i] for i in rng.permutation(len(plan))]


def build_robustness_set(params, progress: bool = True) -> dict:
    """Write the set to ``robustness.out`` from ``data.disc``'s references and training images."""
    from tqdm import tqdm

    cfg: RobustnessConfig = params.robustness
    layout = DiscLayout(Path(params.data.disc)).validate()
    references, training = list_images(layout.reference_dir), list_images(layout.training_dir)
    plan = plan_queries(len(references), len(training), cfg)
    out = Path(cfg.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}-new-", dir=out.parent))
    try:
        (staging / QUERY_DIR).mkdir()
        truth, edits, counts = [], [], {}
        for number, (kind, source, index) in enumerate(tqdm(plan, desc="robustness set", disable=not progress)):
            query_id = f"RQ{number:05d}"
            path = (references if source == "reference" else training)[index]
            rng = np.random.default_rng([cfg.seed, 23, number])
            edited = ROBUST_EDITS[kind](np.asarray(load_rgb(path)), rng)
            save_jpeg_atomic(Image.fromarray(edited), staging / QUERY_DIR / f"{query_id}.jpg", cfg.jpeg_quality)
            label = kind if source == "reference" else DISTRACTOR
            counts[label] = counts.get(label, 0) + 1
            edits.append((query_id, kind if source == "reference" else f"{DISTRACTOR}:{kind}", path.stem))
            if source == "reference":
                truth.append((query_id, path.stem))
        write_csv_atomic(staging / GROUND_TRUTH, ["query_id", "reference_id"], truth)
        write_csv_atomic(staging / EDITS_CSV, ["query_id", "edit", "source"], edits)
        manifest = {"seed": cfg.seed, "per_kind": cfg.per_kind, "distractors": cfg.distractors,
                    "jpeg_quality": cfg.jpeg_quality, "edits": list(ROBUST_EDITS), "queries": len(plan),
                    "counts": counts, "disc": str(layout.root)}
        write_json_atomic(staging / MANIFEST, manifest)
        _swap_in(staging, out)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return manifest


def _swap_in(new: Path, out: Path) -> None:
    """Replace folder ``out`` by ``new`` (two renames; the old one is removed only once the new one is in)."""
    old = out.parent / f".{out.name}-old"
    shutil.rmtree(old, ignore_errors=True)
    if out.exists():
        os.replace(out, old)
    os.replace(new, out)
    shutil.rmtree(old, ignore_errors=True)


def read_edit_kinds(root: str | os.PathLike) -> dict[str, str]:
    """query id → edit kind (``distractor`` for the queries that match nothing), from ``edits.csv``."""
    import csv

    with open(Path(root) / EDITS_CSV, newline="") as f:
        return {row["query_id"]: row["edit"].split(":")[0] for row in csv.DictReader(f)}


def read_manifest(root: str | os.PathLike) -> dict:
    path = Path(root) / MANIFEST
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no robustness set there; run `embedlab robustness-set` (or dvc repro)")
    return json.loads(path.read_text())
