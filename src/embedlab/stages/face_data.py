"""The face data set of the triplet stage, from the Kryptonite face layout.

    embedlab face-data      # data/raw/faces/train → data/faces/{train,valid,valid_pairs}.csv

Deepfakes become classes of their own (``triplet.fake_classes``), classes
of one image are dropped, persons are split into train / valid, and the
valid persons give the validation pairs (see :mod:`embedlab.data.faces`).
"""

from __future__ import annotations

from pathlib import Path

from embedlab.config import Params
from embedlab.data.faces import build_face_dataset, write_face_dataset


def write_face_data(params: Params) -> dict:
    cfg = params.triplet
    dataset = build_face_dataset(Path(params.data.faces) / "train", cfg.fake_classes, cfg.valid_fraction,
                                 params.seed)
    paths = write_face_dataset(dataset, cfg.data_out)
    return {"out": str(Path(cfg.data_out)), "files": sorted(p.name for p in paths.values()), **dataset.info}
