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
from typing import Sequence

import numpy as np
import torch
from torch.utils.data import DataLoader

from embedlab.atomic import write_csv_atomic, write_json_atomic
from embedlab.config import Params, RuntimeConfig
from embedlab.data.collate import collate_skipping_bad
from embedlab.data.faces import natural_key, split_persons, read_face_meta
from embedlab.data.photo_list import PhotoList
from embedlab.data.templates import PhotoFiles, check_templates
from embedlab.descriptor_chunks import Chunk, ChunkedDescriptors, images_digest
from embedlab.devices import runtime_loader_options, torch_device
from embedlab.models.face_models import FaceModel, load_face_model
from embedlab.digests import file_digest


CHUNK = 8192  # photos per chunk file of a templates embedding (a killed run resumes after the last one)


@torch.no_grad()
def embed_photos_to_file(model: FaceModel, photos: Sequence[Path], names: Sequence[str], out: Path,
                         identity: dict, runtime: RuntimeConfig, on_bad_image: str = "fail",
                         chunk: int = CHUNK) -> tuple[int, list[int]]:
    """The templates of ``photos`` into the descriptor file ``out``, named ``names``, chunk by chunk.

    Memory holds one chunk of templates whatever the number of photos; a run
    killed part-way resumes after its last complete chunk when run again with
    the same photos and ``identity`` (the model). Returns (templates written,
    indices of the photos skipped as unreadable).
    """
    device = torch_device(runtime.device)
    model.to(device)
    parts = ChunkedDescriptors(out, {"images": images_digest(names), "count": len(photos), **identity})
    start = parts.resume()
    batch_size = runtime.inference_batch_size
    loader = DataLoader(PhotoFiles(photos[start:], model.input_size, on_bad_image), batch_size=batch_size,
                        collate_fn=collate_skipping_bad, **runtime_loader_options(runtime, keep_workers=False))
    kept: list[int] = []
    vectors: list[np.ndarray] = []
    at = start  # the first photo not yet in a chunk file

    def flush(stop: int) -> None:
        nonlocal at
        block = np.concatenate(vectors) if vectors else np.zeros((0, model.embedding_dim), np.float32)
        check_templates(block, model.source)  # a model that emits NaN is caught here, not in training
        seen = set(kept)
        parts.write(Chunk(at, stop, [names[i] for i in kept], block, [i for i in range(at, stop) if i not in seen]))
        kept.clear(), vectors.clear()
        at = stop

    for number, batch in enumerate(loader):
        if batch is not None:  # None: every photo of the batch was skipped as unreadable
            images, indices = batch
            vectors.append(model.embed(images.to(device, non_blocking=True)).float().cpu().numpy())
            kept.extend(start + int(i) for i in indices)
        covered = min(start + (number + 1) * batch_size, len(photos))
        if covered - at >= chunk or covered == len(photos):
            flush(covered)
    return parts.finish(len(photos), model.embedding_dim)


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
    model_digest = file_digest(cfg.model)  # hashed once: a face model is hundreds of MB
    identity = {"model": model_digest, "input_size": model.input_size}
    out = Path(cfg.out)
    counts, skipped = {}, 0
    for split in ("train", "test"):
        rows_of_split = [row for row in rows if (row[1] in test_persons) == (split == "test")]
        written, left_out = embed_photos_to_file(
            model, [photo_root / path for path, _ in rows_of_split], [path for path, _ in rows_of_split],
            out / f"{split}.h5", identity, params.runtime, params.data.on_bad_image, chunk=CHUNK)
        gone = set(left_out)
        write_csv_atomic(out / f"{split}.csv", ("path", "person"),
                         (row for i, row in enumerate(rows_of_split) if i not in gone))
        skipped += len(left_out)
        counts[split] = {"photos": written, "persons": len({p for i, (_, p) in enumerate(rows_of_split)
                                                               if i not in gone})}
    manifest = {
        "template_model": str(cfg.model), "template_model_sha256": model_digest,
        "template_dim": model.embedding_dim, "input_size": model.input_size,
        "faces_root": str(photo_root), "photos": cfg.photos, "include_fakes": cfg.include_fakes, "seed": params.seed,
        "skipped_photos": skipped, "splits": counts,
    }
    write_json_atomic(out / "manifest.json", manifest)
    return manifest
