"""A generated training set (``embedlab augment``) as labelled images.

Layout: ``<root>/<class>/<class>_<i>.jpg`` with ``_0`` the anchor, plus the
generator's ``manifest.json``. Each folder is one class; classes are indexed
in sorted name order, so the labels of a set are the same on every machine.
"""

from __future__ import annotations

from pathlib import Path

from embedlab.data.labelled import LabelledImages
from embedlab.images import is_image_file


class AugmentedSet(LabelledImages):
    """(image tensor, class index) for every image of a generated set."""

    def __init__(self, root: str | Path, img_size: int, on_bad_image: str = "fail",
                 bad_log: Path | None = None) -> None:
        self.root = Path(root)
        if not (self.root / "manifest.json").is_file():
            raise FileNotFoundError(
                f"{self.root}: not a generated training set (no manifest.json); "
                f"create it with `embedlab augment --recipe <name>` or `dvc repro augment`"
            )
        self.classes = sorted(p.name for p in self.root.iterdir() if p.is_dir() and not p.name.startswith("."))
        if len(self.classes) < 2:
            raise ValueError(f"{self.root}: {len(self.classes)} class folder(s); training needs at least 2")
        rows = [(path, label) for label, name in enumerate(self.classes)
                for path in sorted(p for p in (self.root / name).iterdir() if is_image_file(p))]
        super().__init__(rows, img_size, on_bad_image=on_bad_image, bad_log=bad_log)

    @property
    def n_classes(self) -> int:
        return len(self.classes)
