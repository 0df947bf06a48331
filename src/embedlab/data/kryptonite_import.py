"""``embedlab import kryptonite``: the Kryptonite ML Challenge download, as it unpacks, into the project's face layout.

The challenge ships two archives, ``train.zip`` (``train/meta.json`` and
``train/images/<person>/<i>.jpg``) and ``test_public.zip``
(``test_public/<pair_id>/0.jpg, 1.jpg``). Unpacked, each may sit one folder
deeper (``train/train/...``) or inside a ``data/`` folder, as the challenge's
README asks; the importer looks in each of those places (:data:`TRAIN`,
:data:`TEST`). The project's layout is the same as the download's
(:mod:`embedlab.data.faces`), so the import checks and links:

- ``meta.json`` against the images (:func:`embedlab.data.faces.read_face_meta`:
  its keys, 0/1 values, a file for every key and a key for every file);
- the test pairs (both images of every pair folder, ``labels.csv`` when there is one);
- every image decodes, on every core. A bad image fails the import naming
  it, or with ``on_bad_image: skip`` is left out and counted: a training
  image with its meta.json entry, a test image with its whole pair.

Nothing is written until every check has passed; the layout is built beside
``out`` and renamed into place. The training images become one image
store (:mod:`embedlab.data.shards`, keys ``<person>/<i>``: a few hundred
files for DVC instead of one per photo); ``--images hardlink`` or ``copy``
writes them as files.
"""

from __future__ import annotations

import json
from pathlib import Path

from embedlab.atomic import write_csv_atomic
from embedlab.data.faces import read_face_meta, read_test_pairs
from embedlab.data.importing import (DownloadError, decoding_failures, first_found, link_or_copy, refuse_filled,
                                    staged_output)
from embedlab.data.shards import store_files
from embedlab.images import check_on_bad_image

TRAIN = ("train", "train/train", "data/train", "data/train/train")
# The archive's own folder first: "test_public" holding only "test_public" is the archive unpacked into its name.
TEST = ("test_public/test_public", "test_public", "data/test_public/test_public", "data/test_public")


class KryptoniteImportError(DownloadError):
    """The download is incomplete or inconsistent; the message names the file or folder."""


def _train_folder(src: Path) -> Path:
    for name in TRAIN:
        if (src / name / "meta.json").is_file():
            return src / name
    raise KryptoniteImportError(f"{src}: no training set found (looked for meta.json in {', '.join(TRAIN)})")


def import_kryptonite(src: str | Path, out: str | Path, on_bad_image: str = "fail", images: str = "store",
                      workers: int | None = None) -> dict:
    """Check the download at ``src`` and write the project's face layout at ``out``; returns a summary.

    ``images``: ``store`` (train/images as one image store, keys ``<person>/<i>``), ``hardlink`` or ``copy``
    (loose files). The test pairs stay files either way: a few thousand, beside their labels.
    """
    src, out = Path(src), Path(out)
    check_on_bad_image(on_bad_image)
    if images not in ("store", "hardlink", "copy"):
        raise ValueError(f"images must be store, hardlink or copy, got {images!r}")
    if not src.is_dir():
        raise KryptoniteImportError(f"{src}: not a folder")
    refuse_filled(out, KryptoniteImportError)  # before the checks, which take minutes at full size
    train = _train_folder(src)
    meta = read_face_meta(train)
    test = first_found(src, TEST, "test_public pairs", error=KryptoniteImportError)
    pairs = read_test_pairs(test)

    train_images = {key: train / "images" / key for key in meta}
    every = [*train_images.values(), *(p for _, a, b, _ in pairs for p in (a, b))]
    bad = decoding_failures(every, on_bad_image, KryptoniteImportError, workers)
    kept_meta = {key: fake for key, fake in meta.items() if train_images[key] not in bad}
    kept_pairs = [pair for pair in pairs if pair[1] not in bad and pair[2] not in bad]
    link = images == "hardlink"
    with staged_output(out, KryptoniteImportError) as staging:
        if images == "store":
            store_files(staging / "train" / "images", train / "images", sorted(kept_meta))
        else:
            for key in kept_meta:
                link_or_copy(train_images[key], staging / "train" / "images" / key, link)
        (staging / "train" / "meta.json").write_text(json.dumps(kept_meta, indent=0) + "\n")
        for pair_id, a, b, _ in kept_pairs:
            link_or_copy(a, staging / "test_public" / pair_id / "0.jpg", link)
            link_or_copy(b, staging / "test_public" / pair_id / "1.jpg", link)
        if any(same is not None for *_, same in kept_pairs):
            write_csv_atomic(staging / "test_public" / "labels.csv", ["pair_id", "same"],
                             [(pair_id, same) for pair_id, _, _, same in kept_pairs])
    return {"out": str(out), "train_images": len(kept_meta), "deepfakes": sum(kept_meta.values()),
            "persons": len({key.split("/")[0] for key in kept_meta}), "test_pairs": len(kept_pairs),
            "skipped": len(bad), "test_pairs_of_skipped_images": len(pairs) - len(kept_pairs),
            "sources": {"train": str(train), "test_public": str(test)}}
