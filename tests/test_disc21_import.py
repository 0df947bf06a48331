"""`embedlab import disc21`: the published layout, checked and linked into the project's DISC layout."""

from __future__ import annotations

import filecmp
import shutil
from pathlib import Path

import pytest

from embedlab.data.disc21_import import Disc21ImportError, import_disc21
from embedlab.images import list_images, read_image_bytes

from conftest import PROJECT, run


def _published(tiny_demo: Path, root: Path) -> Path:
    """The demo's images under the download's names (images/train, images/references, images/queries),
    its ground truth as list_files/public_ground_truth.csv with a distractor query's empty reference id."""
    disc = tiny_demo / "disc"
    for part, name in (("training", "train"), ("reference", "references"), ("query", "queries")):
        shutil.copytree(disc / part, root / "images" / name)
    (root / "list_files").mkdir()
    gt = (disc / "ground_truth.csv").read_text().strip().splitlines()
    matched = {line.split(",")[0] for line in gt[1:]}
    distractor = next(p.stem for p in sorted((disc / "query").glob("*.jpg")) if p.stem not in matched)
    (root / "list_files" / "public_ground_truth.csv").write_text("\n".join(gt + [f"{distractor},"]) + "\n")
    return root


def _same_images(imported: Path, built: Path) -> None:
    """The same image names with the same bytes, whether ``imported`` holds files or a store."""
    names = [p.name for p in list_images(built)]
    assert [p.name for p in list_images(imported)] == names, imported
    assert all(read_image_bytes(imported / n) == (built / n).read_bytes() for n in names), imported


def test_the_published_layout_imports_as_the_demo_builder_writes_it(tmp_path, tiny_demo):
    src = _published(tiny_demo, tmp_path / "download")
    result = run(["embedlab", "import", "disc21", str(src), "--out", str(tmp_path / "disc"),
                  "--params", str(PROJECT / "params.yaml")], tmp_path)
    assert '"skipped": 0' in result.stdout
    disc = tmp_path / "disc"
    assert (disc / "ground_truth.csv").read_text() == (tiny_demo / "disc" / "ground_truth.csv").read_text()
    for part in ("training", "reference", "query"):
        _same_images(disc / part, tiny_demo / "disc" / part)
        # Each part is a store: a few files for DVC to track, not one per image.
        assert (disc / part / "store.json").is_file() and not list((disc / part).glob("*.jpg"))

    # --images hardlink: loose files, hard links of the download's (no second copy on disk).
    import_disc21(src, tmp_path / "linked", images="hardlink", workers=1)
    compared = filecmp.dircmp(tmp_path / "linked", tiny_demo / "disc", ignore=["README.txt", "manifest.csv"])
    assert not compared.left_only and not compared.right_only and not compared.diff_files
    for part in ("training", "reference", "query"):
        sub = compared.subdirs[part]
        assert not sub.left_only and not sub.right_only and not sub.diff_files, part
    one = next((tmp_path / "linked" / "training").iterdir())
    assert one.stat().st_ino == (src / "images" / "train" / one.name).stat().st_ino


def test_a_bad_download_is_refused_naming_the_file_and_nothing_is_written(tmp_path, tiny_demo):
    src = _published(tiny_demo, tmp_path / "download")
    out = tmp_path / "disc"
    truncated = sorted((src / "images" / "references").glob("*.jpg"))[3]
    truncated.write_bytes(truncated.read_bytes()[:400])
    with pytest.raises(Disc21ImportError, match=rf"{truncated.name}: unreadable image"):
        import_disc21(src, out, workers=2)
    assert not out.exists() and not list(tmp_path.glob(".disc.*"))

    summary = import_disc21(src, out, on_bad_image="skip", workers=2)
    assert summary["skipped"] == 1 and truncated.name not in {p.name for p in list_images(out / "reference")}
    assert truncated.stem not in (out / "ground_truth.csv").read_text()  # its pairs leave with it
    with pytest.raises(Disc21ImportError, match="exists and is not empty"):
        import_disc21(src, out)

    other = tmp_path / "other"
    shutil.copy(sorted((src / "images" / "train").glob("*.jpg"))[0],
                src / "images" / "train" / (sorted((src / "images" / "train").glob("*.jpg"))[0].stem + ".png"))
    with pytest.raises(Disc21ImportError, match=r"images/train: image id T\d+ appears twice"):
        import_disc21(src, other)


def test_ground_truth_naming_unknown_images_or_a_missing_part_is_refused(tmp_path, tiny_demo):
    src = _published(tiny_demo, tmp_path / "download")
    gt = src / "list_files" / "public_ground_truth.csv"
    gt.write_text(gt.read_text() + "Q99999,R000001\n")
    with pytest.raises(ValueError, match=r"public_ground_truth\.csv: 1 query ids are not among the query images"):
        import_disc21(src, tmp_path / "disc", workers=1)
    shutil.rmtree(src / "images" / "queries")
    with pytest.raises(Disc21ImportError, match=r"no query images found \(looked for dev_queries, queries"):
        import_disc21(src, tmp_path / "disc", workers=1)
