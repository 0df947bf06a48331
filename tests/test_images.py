"""embedlab.images: bad files give clear errors, odd colour modes decode correctly."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageFile

from embedlab.images import (
    BadImageError,
    list_images,
    load_or_skip,
    load_rgb,
    save_jpeg_atomic,
)


def _photo(h: int = 48, w: int = 64) -> Image.Image:
    """A smooth, non-trivial RGB test picture."""
    y, x = np.mgrid[0:h, 0:w]
    a = np.stack([x * 255 // (w - 1), y * 255 // (h - 1), (x + y) * 255 // (w + h - 2)], axis=2)
    return Image.fromarray(a.astype(np.uint8))


@pytest.fixture
def jpeg(tmp_path: Path) -> Path:
    path = tmp_path / "good.jpg"
    _photo().save(path, quality=90)
    return path


# --- bad input -------------------------------------------------------------


def test_corrupt_file_names_path(tmp_path: Path) -> None:
    path = tmp_path / "corrupt.jpg"
    path.write_bytes(b"this is not a jpeg at all" * 20)
    with pytest.raises(BadImageError) as info:
        load_rgb(path)
    assert info.value.path == path
    assert str(path) in str(info.value)
    assert "unrecognised format" in info.value.reason


def test_truncated_jpeg(tmp_path: Path, jpeg: Path) -> None:
    path = tmp_path / "truncated.jpg"
    path.write_bytes(jpeg.read_bytes()[: jpeg.stat().st_size * 2 // 3])
    with pytest.raises(BadImageError, match="truncated") as info:
        load_rgb(path)
    assert str(path) in str(info.value)


def test_truncated_png(tmp_path: Path) -> None:
    full = tmp_path / "full.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(full)
    path = tmp_path / "truncated.png"
    path.write_bytes(full.read_bytes()[: full.stat().st_size // 2])
    with pytest.raises(BadImageError, match="truncated.png"):
        load_rgb(path)


def test_zero_byte_file(tmp_path: Path) -> None:
    path = tmp_path / "empty.jpg"
    path.touch()
    with pytest.raises(BadImageError, match="empty file") as info:
        load_rgb(path)
    assert info.value.path == path


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(BadImageError, match="no such file"):
        load_rgb(tmp_path / "nope.jpg")


def test_truncation_stays_an_error_when_another_library_allows_it(
    tmp_path: Path, jpeg: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(ImageFile, "LOAD_TRUNCATED_IMAGES", True)
    path = tmp_path / "truncated.jpg"
    path.write_bytes(jpeg.read_bytes()[: jpeg.stat().st_size // 2])
    with pytest.warns(RuntimeWarning, match="LOAD_TRUNCATED_IMAGES"), pytest.raises(BadImageError):
        load_rgb(path)
    assert ImageFile.LOAD_TRUNCATED_IMAGES is False


# --- colour modes ----------------------------------------------------------


def test_grayscale_becomes_equal_rgb_channels(tmp_path: Path) -> None:
    gray = np.arange(0, 256, 4, dtype=np.uint8).reshape(8, 8)
    Image.fromarray(gray, mode="L").save(tmp_path / "g.png")
    out = load_rgb(tmp_path / "g.png")
    assert out.mode == "RGB"
    a = np.asarray(out)
    for c in range(3):
        np.testing.assert_array_equal(a[..., c], gray)


def test_cmyk_jpeg(tmp_path: Path) -> None:
    Image.new("CMYK", (32, 32), (255, 0, 0, 0)).save(tmp_path / "cyan.jpg", quality=95)  # pure cyan ink
    out = load_rgb(tmp_path / "cyan.jpg")
    assert out.mode == "RGB"
    r, g, b = np.asarray(out).reshape(-1, 3).mean(axis=0)
    assert r < 30 and g > 225 and b > 225


def test_palette_with_transparency_is_composited_on_white(tmp_path: Path) -> None:
    img = Image.new("P", (10, 10), 0)
    img.putpalette([255, 0, 0, 0, 0, 255] + [0] * 762)  # 0 red, 1 blue
    img.paste(1, (5, 0, 10, 10))  # right half: index 1, made transparent below
    img.save(tmp_path / "p.png", transparency=1)
    a = np.asarray(load_rgb(tmp_path / "p.png"))
    assert tuple(a[5, 2]) == (255, 0, 0)
    assert tuple(a[5, 7]) == (255, 255, 255)


def test_rgba_alpha_is_composited_on_white(tmp_path: Path) -> None:
    a = np.zeros((4, 4, 4), dtype=np.uint8)
    a[..., 2] = 255  # blue
    a[:, :2, 3] = 255  # left: opaque
    a[:, 2:, 3] = 0  # right: fully transparent
    Image.fromarray(a, mode="RGBA").save(tmp_path / "a.png")
    out = np.asarray(load_rgb(tmp_path / "a.png"))
    assert tuple(out[0, 0]) == (0, 0, 255)
    assert tuple(out[0, 3]) == (255, 255, 255)


def test_16_bit_png_is_scaled_not_clipped(tmp_path: Path) -> None:
    ramp = np.linspace(1000, 60000, 64).astype(np.uint16).reshape(1, 64).repeat(4, axis=0)
    Image.fromarray(ramp).save(tmp_path / "deep.png")
    with Image.open(tmp_path / "deep.png") as im:
        assert im.mode in ("I;16", "I")  # really a 16-bit file
    row = np.asarray(load_rgb(tmp_path / "deep.png"))[0, :, 0].astype(int)
    assert row[0] == 0 and row[-1] == 255
    assert np.all(np.diff(row) >= 0) and len(np.unique(row)) > 50  # a ramp, not a saturated block
    assert abs(row[32] - 128) <= 3


def test_exif_orientation_6_is_applied(tmp_path: Path) -> None:
    stored = np.zeros((20, 40, 3), dtype=np.uint8)  # 40 wide, 20 high
    stored[:10] = (255, 0, 0)  # stored top half red
    stored[10:] = (0, 0, 255)  # stored bottom half blue
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90° clockwise to display": the stored top becomes the right side
    Image.fromarray(stored).save(tmp_path / "rot.jpg", quality=95, exif=exif.tobytes())
    out = load_rgb(tmp_path / "rot.jpg")
    assert out.size == (20, 40)
    a = np.asarray(out).astype(int)
    assert a[20, 16, 0] > 200 and a[20, 16, 2] < 60  # right side red
    assert a[20, 3, 2] > 200 and a[20, 3, 0] < 60  # left side blue


# --- skip / fail -----------------------------------------------------------


def test_skip_returns_none_and_warns(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"\xff\xd8garbage")
    with caplog.at_level(logging.WARNING):
        assert load_or_skip(bad, "skip") is None
    assert str(bad) in caplog.text


def test_fail_raises_and_good_images_load_either_way(tmp_path: Path, jpeg: Path) -> None:
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"")
    with pytest.raises(BadImageError, match="bad.jpg"):
        load_or_skip(bad, "fail")
    assert load_or_skip(jpeg, "skip").size == (64, 48)
    assert load_or_skip(jpeg, "fail").size == (64, 48)


def test_invalid_on_bad_image_setting(jpeg: Path) -> None:
    with pytest.raises(ValueError, match="fail.*skip"):
        load_or_skip(jpeg, "ignore")


# --- listing and writing ---------------------------------------------------


def test_list_images_sorted_skips_hidden_and_non_images(tmp_path: Path) -> None:
    for name in ("b.jpg", "a.PNG", "c.webp", ".b.jpg.x1y2z3.jpg", "notes.txt"):
        (tmp_path / name).write_bytes(b"x")
    (tmp_path / "sub.jpg").mkdir()
    assert [p.name for p in list_images(tmp_path)] == ["a.PNG", "b.jpg", "c.webp"]


def test_list_images_errors_name_the_folder(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="does not exist") as info:
        list_images(tmp_path / "missing")
    assert str(tmp_path / "missing") in str(info.value)
    (tmp_path / ".tmp.jpg").write_bytes(b"x")  # only a hidden temp file
    with pytest.raises(FileNotFoundError, match="holds no images"):
        list_images(tmp_path)
    assert list_images(tmp_path, allow_empty=True) == []


def test_save_jpeg_atomic_is_reproducible_and_strips_exif(tmp_path: Path) -> None:
    exif = Image.Exif()
    exif[0x0112] = 1
    exif[0x0132] = "2021:01:01 00:00:00"  # DateTime
    src = tmp_path / "src.jpg"
    _photo().save(src, exif=exif.tobytes())
    img = load_rgb(src)
    save_jpeg_atomic(img, tmp_path / "out" / "a.jpg", quality=85)
    save_jpeg_atomic(img, tmp_path / "out" / "b.jpg", quality=85)
    a, b = (tmp_path / "out" / "a.jpg").read_bytes(), (tmp_path / "out" / "b.jpg").read_bytes()
    assert a == b
    with Image.open(tmp_path / "out" / "a.jpg") as im:
        assert len(im.getexif()) == 0
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["a.jpg", "b.jpg"]  # no temp files left
    with pytest.raises(ValueError, match="quality"):
        save_jpeg_atomic(img, tmp_path / "c.jpg", quality=0)
