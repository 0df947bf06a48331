"""The embedded demo data set: a small DISC21 look-alike cut from real photos.

No network: the photos ship inside installed packages (scikit-image's
``skimage.data``, scikit-learn's sample images, matplotlib's sample data).

How it is built (see also the README.txt written next to the data):

- each photo (long side capped; textures smaller so they do not dominate) is
  cut into a grid of cells, near-blank cells dropped; every cell belongs to
  exactly ONE split (training, reference, distractor, imagenet), so no two
  splits share a single pixel, yet all splits come from the same photos (the
  same "domain", as in DISC21);
- crops of varied scale and aspect are drawn inside the cells of their split;
  two crops of a split share at most ``MAX_OVERLAP[split]`` of the smaller one
  (references 25 %: no near-duplicate references, no reference inside another);
- queries are edited copies of distinct references plus edited distractor
  crops, with interleaved shuffled ids (edit chain: :mod:`embedlab.data.demo_edits`);
  ``frm_faces`` are LFW faces from ``skimage.data.lfw_subset``
  (25 px, upscaled); with ``n_frm_faces=0`` no ``frm_faces`` folder is made.

Same seed and package versions -> byte-identical files. With ``store`` each
image folder ends as an image store (:mod:`embedlab.data.shards`), the
layout ``embedlab import disc21`` writes.
"""

from __future__ import annotations

import math
import re
import shutil
from pathlib import Path

import numpy as np
from PIL import Image

from embedlab.atomic import write_csv_atomic, write_text_atomic
from embedlab.config import DemoDataConfig
from embedlab.data.demo_edits import EDITS, edit_query
from embedlab.data.shards import pack_folder, store_at
from embedlab.images import list_images, load_rgb, save_jpeg_atomic
from embedlab.package_files import package_file

MARKER = "embedlab demo data"
SPLITS = ("training", "reference", "distractor", "imagenet")
MAX_OVERLAP = {"training": 0.5, "reference": 0.25, "distractor": 0.25, "imagenet": 0.5}
# Cells per requested crop: the strict splits get about one cell per crop.
_ROOM = {"training": 0.9, "reference": 1.15, "distractor": 1.15, "imagenet": 0.9}
# (name, package, file inside the package, long-side cap). Textures get a small
# cap so that their look-alike crops do not dominate the set. Left out: the
# Hubble field, the brick wall and the blurry cell (almost every crop is a flat
# area) and the synthetic images (logo, colour wheel, checkerboard, phantom).
_PHOTOS = tuple(
    [(n, "skimage", f"data/{f}", 640) for n, f in (
        ("astronaut", "astronaut.png"), ("camera", "camera.png"),
        ("chelsea", "chelsea.png"), ("clock", "clock_motion.png"), ("coffee", "coffee.png"),
        ("coins", "coins.png"), ("immunohistochemistry", "ihc.png"), ("moon", "moon.png"), ("page", "page.png"),
        ("retina", "retina.jpg"), ("rocket", "rocket.jpg"), ("text", "text.png"),
        # the right view of the stereo pair would be a near-duplicate
        ("motorcycle", "motorcycle_left.png"))]
    + [(n, "skimage", f"data/{n}.png", 320) for n in ("grass", "gravel")]
    + [(n, "sklearn", f"datasets/images/{n}.jpg", 640) for n in ("china", "flower")]
    + [("grace_hopper", "matplotlib", "mpl-data/sample_data/grace_hopper.jpg", 640)]
)
_N_LFW_FACES = 100

Box = tuple[int, int, int, int, int]  # photo index, x0, y0, x1, y1


def _fit(img: Image.Image, max_side: int) -> Image.Image:
    """Resize so that the long side is ``max_side`` (up or down)."""
    w, h = img.size
    s = max_side / max(w, h)
    return img.resize((max(1, round(w * s)), max(1, round(h * s))), Image.Resampling.LANCZOS)


def demo_photos() -> list[tuple[str, np.ndarray]]:
    """(name, HxWx3 uint8) of every packaged photo, in a fixed order."""
    photos = []
    for name, package, relative, max_side in _PHOTOS:
        img = load_rgb(package_file(package, relative))
        if max(img.size) > max_side:
            img = _fit(img, max_side)
        photos.append((name, np.asarray(img)))
    return photos


def _informative(gray: np.ndarray) -> bool:
    """Not mostly one flat tone: blank crops (black borders, sky) would all look alike."""
    flat = np.abs(gray - np.median(gray)) < 4
    return bool(gray.std() >= 8 and flat.mean() < 0.5)


def _cells(grays: list[np.ndarray], side: float) -> list[Box]:
    """Grid cells of about ``side`` px over every photo, near-blank ones dropped."""
    cells = []
    for i, g in enumerate(grays):
        h, w = g.shape
        ys = np.linspace(0, h, max(1, round(h / side)) + 1).astype(int)
        xs = np.linspace(0, w, max(1, round(w / side)) + 1).astype(int)
        for y0, y1 in zip(ys[:-1], ys[1:]):
            for x0, x1 in zip(xs[:-1], xs[1:]):
                if _informative(g[y0:y1, x0:x1]):
                    cells.append((i, int(x0), int(y0), int(x1), int(y1)))
    return cells


def _assign_cells(cells: list[Box], demand: dict[str, int], rng: np.random.Generator) -> dict[str, list[Box]]:
    """Give each split a disjoint random share of the cells, by demand."""
    need = {s: demand[s] * _ROOM[s] for s in SPLITS}
    total = sum(need.values())
    counts = {s: (max(1, math.floor(len(cells) * need[s] / total)) if demand[s] else 0) for s in SPLITS}
    counts["training"] += len(cells) - sum(counts.values())  # rounding leftovers
    if counts["training"] < (1 if demand["training"] else 0):
        raise ValueError(f"the demo photos give only {len(cells)} cells; ask for fewer images")
    order = [cells[k] for k in rng.permutation(len(cells))]
    out, start = {}, 0
    for s in SPLITS:
        out[s], start = order[start : start + counts[s]], start + counts[s]
    return out


def _overlap(box: Box, others: list[Box]) -> float:
    """Largest share of the smaller box covered by its intersection with any other box."""
    worst = 0.0
    _, x0, y0, x1, y1 = box
    for _, a0, b0, a1, b1 in others:  # a handful per cell: plain Python beats numpy here
        inter = max(0, min(x1, a1) - max(x0, a0)) * max(0, min(y1, b1) - max(y0, b0))
        worst = max(worst, inter / min((x1 - x0) * (y1 - y0), (a1 - a0) * (b1 - b0)))
    return worst


def _random_box(cell: Box, rng: np.random.Generator, min_area: float = 0.3) -> Box:
    """A crop inside ``cell``: area 30-100 % of it, aspect 3:4 to 4:3."""
    i, x0, y0, x1, y1 = cell
    cw, ch = x1 - x0, y1 - y0
    area = rng.uniform(min_area, 1.0) * cw * ch
    aspect = math.exp(rng.uniform(math.log(3 / 4), math.log(4 / 3)))
    w = min(cw, max(16, round(math.sqrt(area * aspect))))
    h = min(ch, max(16, round(math.sqrt(area / aspect))))
    bx, by = x0 + int(rng.integers(0, cw - w + 1)), y0 + int(rng.integers(0, ch - h + 1))
    return (i, bx, by, bx + w, by + h)


def _sample_boxes(
    split: str, cells: list[Box], n: int, grays: list[np.ndarray], rng: np.random.Generator
) -> list[Box]:
    """``n`` crops spread round-robin over ``cells``, at most MAX_OVERLAP[split] apart."""
    taken: dict[int, list[Box]] = {k: [] for k in range(len(cells))}
    full: set[int] = set()
    boxes, k = [], 0
    while len(boxes) < n:
        if len(full) == len(cells):
            raise ValueError(f"the demo photos cannot give {n} distinct {split} crops (got {len(boxes)}); "
                             "ask for fewer images")
        c, k = k % len(cells), k + 1
        if c in full:
            continue
        for _ in range(40):
            b = _random_box(cells[c], rng)
            if _overlap(b, taken[c]) <= MAX_OVERLAP[split] and _informative(grays[b[0]][b[2] : b[4], b[1] : b[3]]):
                taken[c].append(b)
                boxes.append(b)
                break
        else:
            full.add(c)
    return [boxes[j] for j in rng.permutation(len(boxes))]  # ids must not reveal the photo


def _plan(photos: list[np.ndarray], demand: dict[str, int], rng: np.random.Generator) -> tuple:
    """Cell side, cells per split and crops per split; smaller cells until every split fits."""
    grays = [a.mean(axis=2) for a in photos]
    area = 0.8 * sum(g.size for g in grays)  # about a fifth of the cells are near-blank
    side = float(np.clip(math.sqrt(area / sum(demand[s] * _ROOM[s] for s in SPLITS)), 48, 256))
    while True:
        try:
            cells = _assign_cells(_cells(grays, side), demand, rng)
            return side, cells, {s: _sample_boxes(s, cells[s], demand[s], grays, rng) for s in SPLITS}
        except ValueError:
            if side <= 48:
                raise
            side = max(48.0, side * 0.9)


def _render(photos: list[np.ndarray], box: Box, size: int, flip: bool) -> Image.Image:
    i, x0, y0, x1, y1 = box
    img = _fit(Image.fromarray(photos[i][y0:y1, x0:x1]), size)
    return img.transpose(Image.Transpose.FLIP_LEFT_RIGHT) if flip else img


def _check(cfg: DemoDataConfig) -> None:
    counts = {k: getattr(cfg, k) for k in ("n_training", "n_reference", "n_matched_queries", "n_distractor_queries",
                                           "n_imagenet", "n_frm_faces")}
    bad = [k for k, v in counts.items() if v < 0]
    if bad:
        raise ValueError(f"demo_data: counts must be >= 0, got {bad}")
    if cfg.n_reference < 1 or cfg.n_matched_queries > cfg.n_reference:
        raise ValueError(f"demo_data: need 1 <= n_reference and n_matched_queries ({cfg.n_matched_queries}) "
                         f"<= n_reference ({cfg.n_reference})")
    if cfg.n_frm_faces > _N_LFW_FACES:
        raise ValueError(f"demo_data: n_frm_faces must be <= {_N_LFW_FACES} (the LFW faces in scikit-image)")
    if cfg.image_size < 32:
        raise ValueError(f"demo_data: image_size must be >= 32 px, got {cfg.image_size}")
    if not 1 <= cfg.jpeg_quality <= 100:
        raise ValueError(f"demo_data: jpeg_quality must be in 1..100, got {cfg.jpeg_quality}")


def _claim_folders(out_root: Path, pattern: dict[Path, str]) -> None:
    """Refuse to mix with images this builder did not write (real data, say)."""
    readme = out_root / "disc" / "README.txt"
    ours = readme.is_file() and readme.read_text(errors="replace").startswith(MARKER)
    for folder, rx in pattern.items():
        found = list_images(folder, allow_empty=True) if folder.is_dir() else []
        foreign = [p.name for p in found if not (ours and re.fullmatch(rx, p.name))]
        if foreign:
            raise FileExistsError(f"{folder} holds images that are not from an embedlab demo build "
                                  f"({', '.join(foreign[:3])}...); build the demo data into another folder")


def _readme(cfg: DemoDataConfig, photos: list[tuple[str, np.ndarray]], counts: dict[str, int]) -> str:
    from importlib.metadata import version

    pkgs = ("numpy", "Pillow", "scikit-image", "scikit-learn", "matplotlib")
    lines = [f"{MARKER} (DISC21 layout), built by embedlab.data.demo.build_demo_data", "",
             f"config: {cfg}", f"counts: {counts}", "versions: " + ", ".join(f"{p} {version(p)}" for p in pkgs), "",
             "Photos (cut into grid cells; each cell belongs to one split, so splits share no pixels):"]
    lines += [f"  {name} {a.shape[1]}x{a.shape[0]}" for name, a in photos]
    lines += ["", f"Query edits (2-4 per query): {', '.join(EDITS)}.",
              "Matched queries are edited references; distractor queries are edited crops of distractor cells.",
              "manifest.csv gives every image's source box; ground_truth.csv the matched queries."]
    return "\n".join(lines) + "\n"


def build_demo_data(out_root: str | Path, cfg: DemoDataConfig, progress: bool = True) -> dict:
    """Write the demo data set under ``out_root`` (``disc/``, ``imagenet/``, ``frm_faces/``); return a summary."""
    from tqdm import tqdm

    _check(cfg)
    out_root = Path(out_root)
    disc = out_root / "disc"
    dirs = {"training": disc / "training", "reference": disc / "reference", "query": disc / "query",
            "imagenet": out_root / "imagenet", "frm_faces": out_root / "frm_faces"}
    rx = {dirs["training"]: r"T\d{6}\.jpg", dirs["reference"]: r"R\d{6}\.jpg", dirs["query"]: r"Q\d{5}\.jpg",
          dirs["imagenet"]: r"I\d{6}\.jpg", dirs["frm_faces"]: r"F\d{6}\.jpg"}
    _claim_folders(out_root, rx)
    for folder in dirs.values():  # a store of an earlier build (ours: claimed above) is built afresh
        if store_at(folder) is not None:
            shutil.rmtree(folder)

    rng = np.random.default_rng(cfg.seed)
    named = demo_photos()
    photos = [a for _, a in named]
    # Backgrounds for pasted queries come from the distractor cells: keep some even without distractor queries.
    demand = {"training": cfg.n_training, "reference": cfg.n_reference,
              "distractor": max(cfg.n_distractor_queries, 4), "imagenet": cfg.n_imagenet}
    side, cells, boxes = _plan(photos, demand, rng)

    counts = {"training": cfg.n_training, "reference": cfg.n_reference, "query": cfg.n_matched_queries +
              cfg.n_distractor_queries, "matched_queries": cfg.n_matched_queries,
              "distractor_queries": cfg.n_distractor_queries, "imagenet": cfg.n_imagenet, "frm_faces": cfg.n_frm_faces}
    write_text_atomic(disc / "README.txt", _readme(cfg, named, counts))
    for d in ("training", "reference", "query"):  # the DISC layout even when a count is 0
        dirs[d].mkdir(parents=True, exist_ok=True)
    manifest: list[list[str]] = []
    written: dict[Path, set[str]] = {d: set() for d in dirs.values()}
    bar = tqdm(total=sum(counts[k] for k in ("training", "reference", "query", "imagenet", "frm_faces")),
               desc="demo data", unit="img", disable=not progress)

    def emit(folder: str, name: str, img: Image.Image, source: str, box: Box | None, edits: str = "") -> None:
        save_jpeg_atomic(img, dirs[folder] / f"{name}.jpg", cfg.jpeg_quality)
        written[dirs[folder]].add(f"{name}.jpg")
        where = [named[box[0]][0], *map(str, box[1:])] if box else ["", "", "", "", ""]
        manifest.append([name, folder, source, *where, edits])
        bar.update()

    def crops(split: str, folder: str, fmt: str) -> list[Image.Image]:
        imgs = []
        for j, b in enumerate(boxes[split][: getattr(cfg, f"n_{split}")]):
            img = _render(photos, b, cfg.image_size, flip=bool(rng.random() < 0.5))
            emit(folder, fmt.format(j), img, "", b)
            imgs.append(img)
        return imgs

    crops("training", "training", "T{:06d}")
    references = crops("reference", "reference", "R{:06d}")
    crops("imagenet", "imagenet", "I{:06d}")

    def background() -> Image.Image:
        cell = cells["distractor"][int(rng.integers(len(cells["distractor"])))]
        return _render(photos, _random_box(cell, rng, min_area=0.5), cfg.image_size, flip=False)

    n_q = cfg.n_matched_queries + cfg.n_distractor_queries
    qids = [f"Q{k:05d}" for k in rng.permutation(n_q)]  # matched and distractors interleave
    matched = rng.choice(cfg.n_reference, size=cfg.n_matched_queries, replace=False)
    truth = []
    for j in range(n_q):
        if j < cfg.n_matched_queries:
            ref, box, src = references[matched[j]], None, f"R{matched[j]:06d}"
            truth.append((qids[j], src))
        else:
            box = boxes["distractor"][j - cfg.n_matched_queries]
            ref, src = _render(photos, box, cfg.image_size, flip=bool(rng.random() < 0.5)), "distractor"
        img, names = edit_query(ref, rng, background)
        emit("query", qids[j], _fit(img, cfg.image_size), src, box, "+".join(names))

    if cfg.n_frm_faces:
        faces = np.load(package_file("skimage", "data/lfw_subset.npy"), allow_pickle=False)[:_N_LFW_FACES]
        faces = np.rint(np.clip(faces, 0, 1) * 255).astype(np.uint8)  # stored as floats in 0..1
        for j, k in enumerate(rng.permutation(_N_LFW_FACES)[: cfg.n_frm_faces]):
            img = _fit(Image.fromarray(faces[k]).convert("RGB"), cfg.image_size)
            emit("frm_faces", f"F{j:06d}", img, f"lfw_subset[{k}]", None)
    bar.close()

    write_csv_atomic(disc / "ground_truth.csv", ["query_id", "reference_id"], sorted(truth))
    write_csv_atomic(disc / "manifest.csv", ["image_id", "folder", "source", "photo", "x0", "y0", "x1", "y1", "edits"],
                     sorted(manifest, key=lambda r: (r[1], r[0])))
    for folder, names in written.items():  # images of an earlier, larger demo build
        for p in list_images(folder, allow_empty=True) if folder.is_dir() else []:
            if p.name not in names:
                p.unlink()
        if cfg.store and folder.is_dir():
            pack_folder(folder)  # as `embedlab import disc21` writes it
    return {"counts": counts, "paths": {k: str(v) for k, v in dirs.items() if k != "frm_faces" or cfg.n_frm_faces}
            | {"ground_truth": str(disc / "ground_truth.csv"), "manifest": str(disc / "manifest.csv")},
            "cell_side_px": round(side, 1), "photos": [n for n, _ in named]}


