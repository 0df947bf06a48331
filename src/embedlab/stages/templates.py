"""Templates stage: the decoder's training pairs (photo, template).

    embedlab templates       # data/raw/faces/train -> data/templates/{train,test}.{h5,csv}

Every real photo of the face set (``templates.include_fakes`` adds the
deepfakes) is embedded by the template model (``templates.model``: the
triplet stage's encoder by default, or an ONNX face model). Persons are
split into train and test, so the test templates belong to faces the
decoder never saw.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader

from embedlab.atomic import write_json_atomic
from embedlab.config import Params, RuntimeConfig
from embedlab.data.collate import collate_skipping_bad
from embedlab.data.faces import natural_key, split_persons, read_face_meta
from embedlab.data.photo_list import PhotoList
from embedlab.data.templates import PhotoFiles, TemplateSet, check_templates, write_template_set
from embedlab.devices import runtime_loader_options, torch_device
from embedlab.models.face_models import FaceModel, load_face_model
from embedlab.digests import file_digest


@torch.no_grad()
def embed_photos(model: FaceModel, paths: list[Path], runtime: RuntimeConfig,
                 on_bad_image: str = "fail") -> tuple[list[int], np.ndarray]:
    """(indices of the photos read, their templates): skipped unreadable photos are left out."""
    device = torch_device(runtime.device)
    model.to(device)
    loader = DataLoader(PhotoFiles(paths, model.input_size, on_bad_image), batch_size=runtime.inference_batch_size,
                        collate_fn=collate_skipping_bad, **runtime_loader_options(runtime, keep_workers=False))
    kept, vectors = [], []
    for batch in loader:
        if batch is None:
            continue
        images, indices = batch
        vectors.append(model.embed(images.to(device, non_blocking=True)).float().cpu().numpy())
        kept.extend(indices.tolist())
    dim = model.embedding_dim
    return kept, np.concatenate(vectors) if vectors else np.zeros((0, dim), np.float32)


def _photo_rows(params: Params) -> tuple[Path, list[tuple[str, str]]]:
    """(the root the photo paths are relative to, (path, person) rows): an imported photo list, or the
    face set's photos (its real ones; the deepfakes too with include_fakes)."""
    cfg = params.templates
    if cfg.photos:
        photos = PhotoList.load(cfg.photos)
        return photos.root, [(str(photos.paths[i]), photos.persons[photos.person[i]].decode())
                             for i in range(len(photos))]
    faces_root = Path(params.data.faces)
    meta = read_face_meta(faces_root / "train")
    return faces_root, [(f"train/images/{key}", key.split("/")[0]) for key, fake in meta.items()
                        if cfg.include_fakes or not fake]


def build_templates(params: Params) -> dict:
    """Embed the face photos, split them by person, write both splits and the manifest."""
    cfg = params.templates
    photo_root, rows = _photo_rows(params)
    persons = sorted({person for _, person in rows}, key=natural_key)
    test_persons = split_persons(persons, cfg.test_fraction, params.seed)

    model = load_face_model(cfg.model, "template")
    kept, templates = embed_photos(model, [photo_root / path for path, _ in rows], params.runtime,
                                   params.data.on_bad_image)
    check_templates(templates, cfg.model)  # a model that emits NaN is caught here, not in training
    out = Path(cfg.out)
    counts = {}
    for split in ("train", "test"):
        pick = [j for j, i in enumerate(kept) if (rows[i][1] in test_persons) == (split == "test")]
        ts = TemplateSet([rows[kept[j]][0] for j in pick], [rows[kept[j]][1] for j in pick], templates[pick])
        write_template_set(out, split, ts)
        counts[split] = {"photos": len(ts), "persons": len(set(ts.persons))}
    manifest = {
        "template_model": str(cfg.model), "template_model_sha256": file_digest(cfg.model),
        "template_dim": model.embedding_dim, "input_size": model.input_size,
        "faces_root": str(photo_root), "photos": cfg.photos, "include_fakes": cfg.include_fakes, "seed": params.seed,
        "skipped_photos": len(rows) - len(kept), "splits": counts,
    }
    write_json_atomic(out / "manifest.json", manifest)
    return manifest
