"""Robust image reading and writing, shared by every stage.

One broken file among a million must not crash a run with an unreadable
traceback: every decoding problem becomes a :class:`BadImageError` naming the
file and what is wrong, and callers choose (``on_bad_image``) to fail or skip.

Colour policy of :func:`load_rgb` (all images come out as 8-bit RGB):

- alpha (RGBA, LA, PA, palette with transparency) is composited onto a white
  background: transparent parts of logos and screenshots are meant to be seen
  on a page, and the colour values hidden under alpha 0 are often garbage;
- 16-bit and 32-bit integer (I;16, I;16B, I) and float (F) images are
  stretched from their own min..max value range to 0..255 instead of being
  clipped (clipping turns most 16-bit images white); a constant image
  becomes black;
- CMYK and other modes go through Pillow's conversion (no ICC colour
  management).
"""

from __future__ import annotations

import io
import logging
import os
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, ImageFile, ImageOps

from embedlab.atomic import atomic_path
from embedlab.data.shards import StoreError, locate, store_at, stored_bytes

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff")
ON_BAD_IMAGE = ("fail", "skip")

_ALPHA_MODES = ("RGBA", "LA", "PA", "RGBa", "La")
_HIGH_DEPTH_MODES = ("I", "I;16", "I;16B", "I;16L", "I;16N", "F")
_EXIF_ORIENTATION = 0x0112  # the EXIF tag of how the camera was held


class BadImageError(ValueError):
    """A file that cannot be decoded into an image; names the file and why."""

    def __init__(self, path: str | os.PathLike, reason: str = "") -> None:
        if not reason and "\n" in str(path):
            # PyTorch re-raises a DataLoader worker's error as exc_type(worker traceback):
            # its last line holds the original "<path>: <reason>".
            last = str(path).strip().splitlines()[-1].split("BadImageError: ", 1)[-1]
            path, _, reason = last.partition(": ")
        self.path = Path(path)
        self.reason = reason
        super().__init__(f"{self.path}: {reason}")


def is_image_file(path: Path) -> bool:
    """True for a visible file whose suffix is an image suffix (any case), or a link by such a name.

    A dangling or looping link is listed, not dropped: reading it then fails
    like any unreadable image, as ``on_bad_image`` says (``fail`` names it).
    """
    # Hidden names are temporary files of atomic writes (or OS litter).
    return (path.suffix.lower() in IMAGE_SUFFIXES and not path.name.startswith(".")
            and (path.is_file() or path.is_symlink()))


def list_images(folder: str | os.PathLike, recursive: bool = False, allow_empty: bool = False) -> list[Path]:
    """The image files of ``folder`` sorted by (relative) name, hidden files skipped.

    A store folder (one holding ``store.json``) lists its images as the paths ``tar xf`` would give them.
    """
    folder = Path(folder)
    store = store_at(folder)
    if store is not None:
        if not len(store) and not allow_empty:
            raise FileNotFoundError(f"image store {folder} holds no images")
        return store.member_paths()
    if not folder.exists():
        raise FileNotFoundError(f"image folder {folder} does not exist")
    if not folder.is_dir():
        raise NotADirectoryError(f"{folder} is not a folder")
    candidates = folder.rglob("*") if recursive else folder.iterdir()
    # Skip files inside hidden folders too when recursing.
    images = [
        p for p in candidates if is_image_file(p) and not any(s.startswith(".") for s in p.relative_to(folder).parts)
    ]
    if not images and not allow_empty:
        raise FileNotFoundError(f"image folder {folder} holds no images (looked for {', '.join(IMAGE_SUFFIXES)})")
    return sorted(images, key=lambda p: p.relative_to(folder).as_posix())


def _ensure_truncation_is_an_error() -> None:
    # Some libraries switch this global on; with it Pillow silently pads a
    # truncated file with grey and we would train on broken images.
    if ImageFile.LOAD_TRUNCATED_IMAGES:
        warnings.warn(
            "PIL.ImageFile.LOAD_TRUNCATED_IMAGES was on; embedlab turns it off so truncated files are reported",
            RuntimeWarning,
            stacklevel=3,
        )
        ImageFile.LOAD_TRUNCATED_IMAGES = False


def _stretch_to_uint8(img: Image.Image) -> Image.Image:
    """High bit depth (I;16*, I, F) to 8-bit L by the image's own value range."""
    a = np.asarray(img).astype(np.float64)
    a = np.nan_to_num(a, nan=0.0, posinf=0.0, neginf=0.0)
    lo, hi = float(a.min()), float(a.max())
    scaled = (a - lo) * (255.0 / (hi - lo)) if hi > lo else np.zeros_like(a)
    return Image.fromarray(np.rint(scaled).astype(np.uint8), mode="L")


def _on_white(img: Image.Image) -> Image.Image:
    rgba = img.convert("RGBA")
    background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
    return Image.alpha_composite(background, rgba).convert("RGB")


def to_rgb(img: Image.Image) -> Image.Image:
    """Convert any Pillow mode to 8-bit RGB following the module's colour policy."""
    mode = img.mode
    if mode == "RGB":
        return img
    if mode in _HIGH_DEPTH_MODES:
        return _stretch_to_uint8(img).convert("RGB")
    if mode in _ALPHA_MODES or (mode == "P" and "transparency" in img.info):
        return _on_white(img)
    # L, 1, P, CMYK, YCbCr, ...: Pillow's own conversion (ValueError if none).
    return img.convert("RGB")


def read_image_bytes(path: str | os.PathLike) -> bytes:
    """The encoded bytes of ``path``: a file, or an image of a store folder (:mod:`embedlab.data.shards`).

    Raises :class:`BadImageError` when there is nothing to read.
    """
    path = Path(path)
    try:
        data = stored_bytes(path)
        if data is None:
            data = path.read_bytes()
    except StoreError as exc:
        raise BadImageError(path, str(exc).removeprefix(f"{path}: ")) from None
    except FileNotFoundError:
        raise BadImageError(path, "no such file") from None
    except OSError as exc:
        raise BadImageError(path, f"cannot read the file ({exc.strerror or exc})") from exc
    if not data:
        raise BadImageError(path, "empty file (0 bytes)")
    return data


def encoded_size(path: str | os.PathLike) -> int:
    """The byte size of a file or of an image of a store folder; -1 when there is none."""
    found = locate(path)
    if found is None:
        return os.path.getsize(path) if os.path.isfile(path) else -1
    store, index = found
    return -1 if index is None else store.size(index)


def is_upright(im: Image.Image) -> bool:
    """True when the image's EXIF says nothing of a rotation or mirroring (its pixels show as stored)."""
    return im.getexif().get(_EXIF_ORIENTATION, 1) == 1


def load_rgb(path: str | os.PathLike, at_least: int | None = None) -> Image.Image:
    """Read ``path`` fully into an RGB image, EXIF orientation applied.

    ``path`` is a file or an image of a store folder. Raises
    :class:`BadImageError` for a missing, empty, truncated, corrupt or
    non-image file (and for colour modes that cannot become RGB).

    ``at_least``: the caller resizes to at most this many pixels a side, so a
    JPEG twice that size or more is decoded at 1/2, 1/4 or 1/8 scale (DCT
    scaling, Pillow's draft mode), never below ``at_least`` a side: a quarter
    of the decoding work per halving, and less for the resize after it.
    """
    path = Path(path)
    _ensure_truncation_is_an_error()
    data = read_image_bytes(path)
    try:
        with Image.open(io.BytesIO(data)) as im:
            if at_least and im.format == "JPEG":
                im.draft(None, (at_least, at_least))
            im.load()  # decode now: lazy decoding would hide truncation until later
            # exif_transpose copies even an upright image: only a rotated one goes through it.
            img = im if is_upright(im) else ImageOps.exif_transpose(im)
    except Image.UnidentifiedImageError:
        raise BadImageError(path, f"not an image file Pillow can read ({len(data)} bytes, unrecognised format)") \
            from None
    except MemoryError:
        raise
    except Exception as exc:  # Pillow raises OSError, SyntaxError, ValueError, struct.error, ...
        raise BadImageError(path, f"truncated or corrupt image data ({type(exc).__name__}: {exc})") from exc
    try:
        return to_rgb(img)
    except (ValueError, OSError) as exc:
        raise BadImageError(path, f"cannot convert colour mode {img.mode!r} to RGB ({exc})") from exc


def decode_problem(path: str | os.PathLike) -> str | None:
    """None when ``path`` decodes, else why not. JPEGs are decoded at 1/8 scale: fast, and it still reads
    the whole file, so truncation shows (a check of many files; training decodes with :func:`load_rgb`)."""
    _ensure_truncation_is_an_error()
    try:
        with Image.open(io.BytesIO(read_image_bytes(path))) as img:
            if img.format == "JPEG":
                img.draft("RGB", (max(img.width // 8, 1), max(img.height // 8, 1)))
                img.load()
                return None
        load_rgb(path)
        return None
    except BadImageError as err:
        return err.reason or str(err)
    except Exception as err:  # whatever Pillow raises for a broken file
        return f"{type(err).__name__}: {err}"


def check_on_bad_image(on_bad_image: str) -> str:
    """Validate an ``on_bad_image`` setting; return it."""
    if on_bad_image not in ON_BAD_IMAGE:
        raise ValueError(f"on_bad_image must be one of {ON_BAD_IMAGE}, got {on_bad_image!r}")
    return on_bad_image


def load_or_skip(path: str | os.PathLike, on_bad_image: str, bad_log: Path | None = None,
                 at_least: int | None = None) -> Image.Image | None:
    """:func:`load_rgb`, or ``None`` plus a warning for a bad file when ``on_bad_image='skip'``.

    A skipped file is also appended to ``bad_log`` when given (one short line
    per event, written with O_APPEND, so DataLoader worker processes can all
    report); :func:`count_bad_images` reads it back for a run's summary.
    """
    check_on_bad_image(on_bad_image)
    try:
        return load_rgb(path, at_least)
    except BadImageError as exc:
        if on_bad_image == "fail":
            raise
        log.warning("skipping bad image %s: %s", exc.path, exc.reason)
        if bad_log is not None:
            with open(bad_log, "a") as f:
                f.write(f"{exc.path}\t{exc.reason}\n")
        return None


def count_bad_images(bad_log: Path) -> int:
    """Distinct images recorded as skipped in ``bad_log`` (0 when there is none)."""
    if not bad_log.is_file():
        return 0
    return len({line.split("\t", 1)[0] for line in bad_log.read_text().splitlines() if line})


def encode_jpeg(img: Image.Image, quality: int = 90) -> bytes:
    """``img`` as JPEG bytes, reproducible: no EXIF, ICC profile or DPI, and fixed encoder settings
    (4:2:0 subsampling, baseline, no optimisation), so the same pixels give the same bytes with the same libjpeg.
    """
    if not 1 <= int(quality) <= 100:
        raise ValueError(f"JPEG quality must be in 1..100, got {quality}")
    if img.mode not in ("RGB", "L"):
        img = to_rgb(img)
    out = io.BytesIO()
    img.save(out, "JPEG", quality=int(quality), subsampling=2, optimize=False, progressive=False, exif=b"")
    return out.getvalue()


def save_jpeg_atomic(img: Image.Image, path: str | os.PathLike, quality: int = 90) -> None:
    """Write :func:`encode_jpeg` of ``img`` at ``path`` atomically."""
    data = encode_jpeg(img, quality)
    with atomic_path(path, suffix=".jpg") as tmp:
        Path(tmp).write_bytes(data)
