"""Instance classes: every chosen image of a source folder is one class (drip steps, generated sets)."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import NamedTuple, Sequence

from embedlab.images import list_images


class ClassImage(NamedTuple):
    name: str  # the class's name: its source's prefix + the image's stem
    path: str  # the one image the class is made from


@dataclasses.dataclass(frozen=True)
class ClassSource:
    """A folder whose images each make one class, taken in name order."""

    folder: Path
    count: int = 0  # the first ``count`` images (after ``every``); 0: all of them
    every: int = 1  # keep every n-th image
    prefix: str = ""  # class names: prefix + stem (keeps the names of two sources apart)
    label: str = ""  # how messages name the source (e.g. "facebook"); default: the folder
    exact: bool = False  # fewer than ``count`` images is an error (a drip step asks for that many classes)

    def pick(self) -> list[ClassImage]:
        if self.every < 1 or self.count < 0:
            raise ValueError(f"{self.folder}: every must be >= 1 and count >= 0, got {self.every}, {self.count}")
        chosen = list_images(self.folder)[:: self.every]
        if self.exact and len(chosen) < self.count:
            raise ValueError(f"{self.folder}: {self.label or 'the source'} has {len(chosen)} images, "
                             f"the step asks for {self.count}")
        if self.count:
            chosen = chosen[: self.count]
        return [ClassImage(self.prefix + p.stem, str(p)) for p in chosen]


def select_classes(sources: Sequence[ClassSource], unique_names: bool = False) -> list[ClassImage]:
    """The classes of each source in turn (a source with ``exact`` and count 0 adds none).

    ``unique_names``: two classes of one name are an error (a generated set names its folders by them).
    """
    classes = [c for source in sources if not (source.exact and source.count == 0) for c in source.pick()]
    if unique_names:
        seen: dict[str, str] = {}
        for c in classes:
            if c.name in seen:
                raise ValueError(f"two sources make class {c.name!r}: {seen[c.name]} and {c.path} (rename one)")
            seen[c.name] = c.path
    return classes
