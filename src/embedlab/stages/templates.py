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

from embedlab.atomic import write_csv_atomic, write_json_atomic
from embedlab.config import Params, RuntimeConfig
from embedlab.data.collate import collate_skipping_bad
from embedlab.data.faces import natural_key, split_persons, read_face_meta
from embedlab.data.path_table import PathTable
from embedlab.data.photo_list import PhotoList, person_indices
from embedlab.data.templates import PhotoFiles, check_templates
from embedlab.descriptor_chunks import Chunk, ChunkedDescriptors, images_digest
from embedlab.devices import runtime_loader_options, torch_device
from embedlab.models.face_models import FaceModel, load_face_model
from embedlab.digests import file_digest


CHUNK = 8192  # photos per chunk file of a templates embedding (a killed run resumes after the last one)


@torch.no_grad()
def embed_photos_to_file(model: FaceModel, root: Path, photos: PathTable, out: Path, identity: dict,
                         runtime: RuntimeConfig, on_bad_image: str = "fail", chunk: int = CHUNK) -> tuple[int, list[int]]:
    """The templates of ``photos`` (paths under ``root``) into the descriptor file ``out``, each named by its
    path, chunk by chunk.

    Memory holds one chunk of templates whatever the number of photos; a run
    killed part-way resumes after its last complete chunk when run again with
    the same photos and ``identity`` (the model). Returns (templates written,
    indices of the photos skipped as unreadable).
    """
    device = torch_device(runtime.device)
    model.to(device)
    parts = ChunkedDescriptors(out, {"images": images_digest(photos), "count": len(photos), **identity})
    start = parts.resume()
    batch_size = runtime.inference_batch_size
    loader = DataLoader(PhotoFiles(root, photos[start:], model.input_size, on_bad_image), batch_size=batch_size,
                        collate_fn=collate_skipping_bad, **runtime_loader_options(runtime, keep_workers=False))
    kept: list[int] = []
    vectors: list[np.ndarray] = []
    at = start  # the first photo not yet in a chunk file

    def flush(stop: int) -> None:
        nonlocal at
        block = np.concatenate(vectors) if vectors else np.zeros((0, model.embedding_dim), np.float32)
        check_templates(block, model.source)  # a model that emits NaN is caught here, not in training
        seen = set(kept)
        parts.write(Chunk(at, stop, [str(photos[i]) for i in kept], block,
                          [i for i in range(at, stop) if i not in seen]))
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


def _photo_list(params: Params) -> PhotoList:
    """An imported photo list (templates.photos), or the face set's photos (its real ones; the deepfakes too
    with include_fakes), paths relative to the face root."""
    cfg = params.templates
    if cfg.photos:
        return PhotoList.load(cfg.photos)
    faces_root = Path(params.data.faces)
    keys = [key for key, fake in read_face_meta(faces_root / "train").items() if cfg.include_fakes or not fake]
    return PhotoList(faces_root, PathTable(f"train/images/{key}" for key in keys),
                     *person_indices(key.split("/")[0] for key in keys))


def build_templates(params: Params) -> dict:
    """Embed the face photos, split them by person, write both splits and the manifest."""
    cfg = params.templates
    photos = _photo_list(params)
    names = [name.decode() for name in photos.persons]
    test_persons = split_persons(sorted(names, key=natural_key), cfg.test_fraction, params.seed)
    row_is_test = np.array([name in test_persons for name in names], bool)[photos.person]

    model = load_face_model(cfg.model, "template")
    model_digest = file_digest(cfg.model)  # hashed once: a face model is hundreds of MB
    identity = {"model": model_digest, "input_size": model.input_size}
    out = Path(cfg.out)
    counts, skipped = {}, 0
    for split in ("train", "test"):
        rows = np.flatnonzero(row_is_test == (split == "test"))
        written, left_out = embed_photos_to_file(
            model, photos.root, photos.paths.take(rows), out / f"{split}.h5", identity, params.runtime,
            params.data.on_bad_image, chunk=CHUNK)
        rows = np.delete(rows, left_out)
        write_csv_atomic(out / f"{split}.csv", ("path", "person"),
                         ((str(photos.paths[i]), names[photos.person[i]]) for i in rows))
        skipped += len(left_out)
        counts[split] = {"photos": written, "persons": len(np.unique(photos.person[rows]))}
    manifest = {
        "template_model": str(cfg.model), "template_model_sha256": model_digest,
        "template_dim": model.embedding_dim, "input_size": model.input_size,
        "faces_root": str(photos.root), "photos": cfg.photos, "include_fakes": cfg.include_fakes, "seed": params.seed,
        "skipped_photos": skipped, "splits": counts,
    }
    write_json_atomic(out / "manifest.json", manifest)
    return manifest
