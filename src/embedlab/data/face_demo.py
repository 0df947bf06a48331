"""The embedded demo face set: synthetic faces with deepfakes, in the Kryptonite layout.

No network and no photos: every face is drawn with Pillow from a parameter
vector, so the set is small, fast to build and free of personal data::

    <root>/train/meta.json                 {"<person>/<i>.jpg": 0 real | 1 deepfake}
    <root>/train/images/<person>/<i>.jpg
    <root>/test_public/<pair_id>/0.jpg, 1.jpg
    <root>/test_public/labels.csv          pair_id,same
    <root>/demo_manifest.csv               every image: identity, is_fake, donor, blend
    <root>/demo_pairs.csv                  pair_id,same,kind,identity_0,identity_1
    <root>/README.txt

- An identity (:class:`Identity`) is a head (face outline, jaw, skin, ears,
  hair colour and style, beard, glasses) plus inner features (eyes, iris
  colour, brows, nose, mouth, lips).
- Every image (:class:`Shot`) varies pose (shift, rotation, scale, a yaw
  that moves the inner features), expression (smile, open mouth, eye
  openness, gaze, raised brows), glasses on/off, clothes, background,
  lighting (brightness, contrast, colour cast, a directional gradient),
  blur, noise and JPEG: identities are told apart by their parameters, not
  by any single pixel.
- A deepfake of person A keeps A's head and takes the inner features of a
  donor B blended in at fake_blend_min..max (demo: 0.75-0.95), with B's skin tone softly pasted over the
  inner face (the swap mask); it is drawn with A's kind of per-image
  variation and stored under A's folder with meta value 1. All fakes of a
  person share one donor and one blend, so they form a class of their own.
- ``test_public`` pairs are fresh renders (never files of ``train``), a third
  of each kind: genuine (two real images of one person), other_person (real
  images of two persons) and fake_same_person (a real image and a deepfake
  of one person). Half the persons of genuine and fake pairs are held out
  from ``train`` (``n_test_persons`` identities that only the test set has).

Everything random comes from ``numpy.random.default_rng`` seeded with
``cfg.seed`` (one stream per identity, image and pair); the same config and
the same Pillow/libjpeg give byte-identical files.
"""

from __future__ import annotations

import dataclasses
import math
import re
import shutil
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from embedlab.atomic import write_csv_atomic, write_json_atomic, write_text_atomic
from embedlab.config import FaceDemoConfig
from embedlab.data.shards import pack_folder, store_at
from embedlab.images import save_jpeg_atomic

MARKER = "embedlab demo faces"
PAIR_KINDS = ("genuine", "other_person", "fake_same_person")

_SKIN = np.array([[255, 224, 196], [241, 194, 160], [224, 172, 133], [198, 134, 96], [161, 102, 64],
                  [112, 72, 48], [87, 55, 36]], dtype=np.float64)
_HAIR = np.array([[25, 20, 18], [60, 40, 28], [105, 70, 40], [170, 125, 70], [220, 190, 120], [150, 60, 30],
                  [140, 140, 140], [205, 205, 200]], dtype=np.float64)
_IRIS = np.array([[60, 40, 25], [95, 62, 30], [60, 100, 150], [70, 120, 80], [110, 110, 125]], dtype=np.float64)
_N_HAIR_STYLES = 5  # short, long, side sweep, receding, curly


@dataclasses.dataclass(frozen=True)
class Identity:
    """Who a face is. Lengths are shares of the image side, or of the face (``face_w``/``face_h``)."""

    # head: kept by a deepfake
    face_w: float
    face_h: float
    jaw: float  # width of the chin relative to the cheeks
    chin_power: float  # how square the jaw is
    skin: tuple[float, float, float]
    hair: tuple[float, float, float]
    hair_style: int
    hairline: float  # how low the hair comes over the forehead (share of face_h)
    hair_volume: float
    ear: float
    beard: bool
    glasses: bool
    glasses_colour: tuple[float, float, float]
    # inner features: taken from the donor by a deepfake
    eye_dx: float  # half the eye spacing, share of face_w
    eye_y: float  # eye height below the face centre, share of face_h
    eye_w: float  # eye half-width, share of face_w
    eye_h: float  # eye half-height / half-width
    iris: tuple[float, float, float]
    brow_dy: float
    brow_tilt: float
    brow_thick: float
    nose_len: float
    nose_w: float
    mouth_y: float
    mouth_w: float
    mouth_curve: float
    lip: tuple[float, float, float]


INNER = ("eye_dx", "eye_y", "eye_w", "eye_h", "iris", "brow_dy", "brow_tilt", "brow_thick", "nose_len", "nose_w",
         "mouth_y", "mouth_w", "mouth_curve", "lip")


@dataclasses.dataclass(frozen=True)
class Shot:
    """How one image of an identity is taken."""

    dx: float
    dy: float
    angle: float  # degrees
    scale: float
    yaw: float  # -1..1: inner features move sideways, the far eye narrows
    smile: float
    mouth_open: float
    eye_open: float
    gaze: float
    brow_raise: float
    wear_glasses: bool
    clothes: tuple[int, int, int]
    bg: tuple[tuple[int, int, int], tuple[int, int, int]]
    bg_angle: float
    light_angle: float
    light: float  # strength of the directional gradient
    brightness: float
    contrast: float
    cast: tuple[float, float, float]
    blur: float
    noise: float


def _colour(palette: np.ndarray, rng: np.random.Generator, jitter: float) -> tuple[float, float, float]:
    c = palette[int(rng.integers(len(palette)))] + rng.normal(0, jitter, 3)
    return tuple(float(v) for v in np.clip(c, 0, 255))


def random_identity(rng: np.random.Generator) -> Identity:
    """A random identity; the ranges keep every face plausible at 64 px."""
    u = rng.uniform
    skin = _colour(_SKIN, rng, 10)
    lip_rgb = np.asarray(skin) * [0.85, 0.55, 0.55] + [40, 0, 5] + rng.normal(0, 8, 3)
    lip = tuple(float(v) for v in np.clip(lip_rgb, 0, 255))
    return Identity(
        face_w=u(0.21, 0.27), face_h=u(0.27, 0.34), jaw=u(0.55, 0.95), chin_power=u(1.0, 3.0),
        skin=skin, hair=_colour(_HAIR, rng, 12), hair_style=int(rng.integers(_N_HAIR_STYLES)),
        hairline=u(0.25, 0.5), hair_volume=u(1.02, 1.15), ear=u(0.7, 1.3), beard=bool(rng.random() < 0.2),
        glasses=bool(rng.random() < 0.2), glasses_colour=_colour(np.array([[20, 20, 20], [120, 70, 30],
                                                                           [180, 180, 190]]), rng, 10),
        eye_dx=u(0.3, 0.52), eye_y=u(-0.12, 0.0), eye_w=u(0.13, 0.26), eye_h=u(0.3, 0.7),
        iris=_colour(_IRIS, rng, 12), brow_dy=u(0.08, 0.24), brow_tilt=u(-0.4, 0.4), brow_thick=u(0.015, 0.055),
        nose_len=u(0.2, 0.42), nose_w=u(0.1, 0.28), mouth_y=u(0.4, 0.6), mouth_w=u(0.25, 0.58),
        mouth_curve=u(-0.25, 0.45), lip=lip,
    )


def blend_identity(head: Identity, donor: Identity, alpha: float) -> Identity:
    """``head``'s head with its inner features moved ``alpha`` of the way to ``donor``'s (a face swap)."""
    inner = {}
    for name in INNER:
        a, b = np.asarray(getattr(head, name), dtype=np.float64), np.asarray(getattr(donor, name), dtype=np.float64)
        mixed = (1 - alpha) * a + alpha * b
        inner[name] = tuple(float(v) for v in mixed) if mixed.ndim else float(mixed)
    return dataclasses.replace(head, **inner)


def random_shot(rng: np.random.Generator) -> Shot:
    """Pose, expression, scene and camera of one image."""
    u, n = rng.uniform, rng.normal
    blink = rng.random() < 0.07
    bg = tuple(tuple(int(v) for v in rng.integers(45, 215, 3)) for _ in range(2))
    return Shot(
        dx=float(np.clip(n(0, 0.035), -0.08, 0.08)), dy=float(np.clip(n(0, 0.03), -0.07, 0.07)),
        angle=float(np.clip(n(0, 7), -18, 18)), scale=u(0.88, 1.1), yaw=float(np.clip(n(0, 0.25), -0.7, 0.7)),
        smile=float(n(0, 0.18)), mouth_open=float(u(0.2, 1.0)) if rng.random() < 0.3 else 0.0,
        eye_open=0.15 if blink else u(0.6, 1.1), gaze=u(-0.35, 0.35), brow_raise=float(n(0, 0.03)),
        wear_glasses=bool(rng.random() < 0.85), clothes=tuple(int(v) for v in rng.integers(20, 235, 3)),
        bg=bg, bg_angle=u(0, 2 * math.pi), light_angle=u(0, 2 * math.pi), light=u(0.0, 0.4),
        brightness=u(0.75, 1.15), contrast=u(0.75, 1.15), cast=tuple(float(v) for v in n(1, 0.05, 3)),
        blur=u(0.0, 0.7), noise=u(2.0, 9.0),
    )


def _rgb(c) -> tuple[int, int, int, int]:
    return (*(int(round(v)) for v in c), 255)


def _shade(c, f: float) -> tuple[float, float, float]:
    return tuple(float(np.clip(v * f, 0, 255)) for v in c)


def _face_outline(cx: float, cy: float, fw: float, fh: float, jaw: float, power: float) -> list[tuple[float, float]]:
    """The face contour: an ellipse above the centre line, narrowing to the chin below it."""
    points = []
    for t in np.linspace(0, 2 * math.pi, 64, endpoint=False):
        s = math.sin(t)
        width = 1.0 if s < 0 else 1.0 - (1.0 - jaw) * s**power
        points.append((cx + fw * math.cos(t) * width, cy + fh * s))
    return points


def _draw_head(d: ImageDraw.ImageDraw, who: Identity, shot: Shot, S: int, fake_skin: tuple | None,
               layer: Image.Image) -> Image.Image | None:
    """Draw one face on ``layer`` (RGBA, transparent), centred, upright, at ``S`` px; return the swap mask."""
    cx, cy = 0.5 * S, 0.5 * S
    fw, fh = who.face_w * S, who.face_h * S
    skin, hair = who.skin, who.hair
    lw = max(1, round(S / 64))  # a line width of one final pixel

    # behind the head: long or curly hair, shoulders, neck, ears
    v = who.hair_volume
    if who.hair_style == 1:  # long
        d.rounded_rectangle((cx - fw * 1.18 * v, cy - fh * 0.75, cx + fw * 1.18 * v, cy + fh * 1.15), radius=fw * 0.5,
                            fill=_rgb(hair))
    elif who.hair_style == 4:  # curly
        d.ellipse((cx - fw * 1.35 * v, cy - fh * 1.3 * v, cx + fw * 1.35 * v, cy + fh * 0.45), fill=_rgb(hair))
    elif who.hair_style == 3:  # receding: a rim of hair round the sides, the face covers the rest
        d.ellipse((cx - fw * 1.07, cy - fh * 0.75, cx + fw * 1.07, cy + fh * 0.05), fill=_rgb(hair))
    d.ellipse((cx - fw * 2.3, cy + fh * 1.25, cx + fw * 2.3, cy + fh * 3.2), fill=_rgb(shot.clothes))
    d.rectangle((cx - fw * 0.45, cy + fh * 0.5, cx + fw * 0.45, cy + fh * 1.45), fill=_rgb(_shade(skin, 0.85)))
    ear_w, ear_h = fw * 0.17 * who.ear, fh * 0.2 * who.ear
    for side in (-1, 1):
        ex = cx + side * fw * (0.97 - 0.1 * side * shot.yaw)
        ey = cy - fh * 0.05
        d.ellipse((ex - ear_w, ey - ear_h, ex + ear_w, ey + ear_h), fill=_rgb(_shade(skin, 0.92)))

    d.polygon(_face_outline(cx, cy, fw, fh, who.jaw, who.chin_power), fill=_rgb(skin))
    mask = None
    if fake_skin is not None:  # the swap mask: the donor's skin softly over the inner face
        mask = Image.new("L", layer.size, 0)
        ImageDraw.Draw(mask).ellipse((cx - fw * 0.72, cy - fh * 0.45, cx + fw * 0.72, cy + fh * 0.62), fill=200)
        mask = mask.filter(ImageFilter.GaussianBlur(fw * 0.15))
        layer.paste(_rgb(fake_skin), (0, 0), mask)
    if who.beard:
        beard = _rgb(_shade(hair, 0.8))
        d.chord((cx - fw * who.jaw * 1.02, cy + fh * 0.05, cx + fw * who.jaw * 1.02, cy + fh * 1.02), 10, 170,
                fill=beard)
        d.ellipse((cx - fw * 0.45, cy + fh * (who.mouth_y - 0.12), cx + fw * 0.45, cy + fh * (who.mouth_y + 0.02)),
                  fill=beard)

    # hair on top
    hy = cy - fh * (0.9 - who.hairline)  # the hairline
    if who.hair_style != 3:  # 3, receding: only the rim drawn behind the face
        d.chord((cx - fw * 1.07 * v, cy - fh * 1.12 * v, cx + fw * 1.07 * v, 2 * hy - (cy - fh * 1.12 * v)), 180, 360,
                fill=_rgb(hair))
        d.rectangle((cx - fw * 1.02, hy - fh * 0.05, cx - fw * 0.8, cy - fh * 0.2), fill=_rgb(hair))
        d.rectangle((cx + fw * 0.8, hy - fh * 0.05, cx + fw * 1.02, cy - fh * 0.2), fill=_rgb(hair))
        if who.hair_style == 2:  # a sweep across the forehead
            d.polygon([(cx - fw * 1.0, hy), (cx + fw * 0.9, hy - fh * 0.05), (cx - fw * 0.6, hy + fh * 0.22)],
                      fill=_rgb(hair))

    # inner features, moved by the yaw
    ix = cx + shot.yaw * fw * 0.18
    ey = cy + fh * who.eye_y
    for side in (-1, 1):
        narrow = 1.0 - 0.3 * max(0.0, side * -shot.yaw)  # the eye on the far side looks narrower
        ex = ix + side * fw * who.eye_dx * (1 - 0.12 * side * shot.yaw)
        ew = fw * who.eye_w * narrow
        eh = max(0.6 * lw, fw * who.eye_w * who.eye_h * shot.eye_open)
        d.ellipse((ex - ew, ey - eh, ex + ew, ey + eh), fill=(245, 245, 240, 255))
        r = min(eh, ew * 0.55)
        gx = ex + shot.gaze * ew * 0.4
        d.ellipse((gx - r, ey - r, gx + r, ey + r), fill=_rgb(who.iris))
        d.ellipse((gx - r * 0.45, ey - r * 0.45, gx + r * 0.45, ey + r * 0.45), fill=(10, 10, 10, 255))
        d.arc((ex - ew, ey - eh, ex + ew, ey + eh), 180, 360, fill=_rgb(_shade(skin, 0.45)), width=lw)
        by = ey - fh * (who.brow_dy + shot.brow_raise)
        tilt = who.brow_tilt * ew * 0.6  # > 0: the outer end higher
        d.line((ex - ew * 1.15, by + side * tilt, ex + ew * 1.15, by - side * tilt), fill=_rgb(_shade(hair, 0.7)),
               width=max(lw, round(who.brow_thick * S)))
        if who.glasses and shot.wear_glasses:
            gw, gh = ew * 1.55, ew * 1.25
            d.ellipse((ex - gw, ey - gh, ex + gw, ey + gh), outline=_rgb(who.glasses_colour), width=lw)
    if who.glasses and shot.wear_glasses:
        left, right = ix - fw * who.eye_dx, ix + fw * who.eye_dx
        d.line((left + fw * who.eye_w * 1.5, ey, right - fw * who.eye_w * 1.5, ey), fill=_rgb(who.glasses_colour),
               width=lw)

    nx = ix + shot.yaw * fw * 0.08
    ny0, ny1 = ey + fh * 0.05, ey + fh * who.nose_len
    nose = _rgb(_shade(skin, 0.7))
    d.line((nx, ny0, nx + shot.yaw * fw * 0.06, ny1), fill=nose, width=lw)
    nw = fw * who.nose_w
    d.arc((nx - nw, ny1 - nw * 0.5, nx + nw, ny1 + nw * 0.5), 10, 170, fill=nose, width=lw + 1)

    my = cy + fh * who.mouth_y
    mw = fw * who.mouth_w * (1 + 0.15 * max(0.0, shot.smile))
    curve = who.mouth_curve + shot.smile
    lips = _rgb(who.lip)
    if shot.mouth_open > 0:
        oh = fh * 0.12 * shot.mouth_open
        d.chord((ix - mw, my - oh * 0.3, ix + mw, my + oh), 0, 180, fill=(60, 20, 25, 255), outline=lips, width=lw)
    bend = abs(curve) * mw * 0.5
    if bend < lw:
        d.line((ix - mw, my, ix + mw, my), fill=lips, width=lw + 1)
    elif curve > 0:  # smile: the lower half of an ellipse
        d.arc((ix - mw, my - bend, ix + mw, my + bend), 0, 180, fill=lips, width=lw + 1)
    else:
        d.arc((ix - mw, my, ix + mw, my + 2 * bend), 180, 360, fill=lips, width=lw + 1)
    return mask


def render_face(who: Identity, shot: Shot, size: int, rng: np.random.Generator,
                fake_skin: tuple | None = None) -> Image.Image:
    """One RGB image: drawn at 2× on a transparent layer, posed, downsampled, lit, blurred and noised."""
    S = 2 * size
    layer = Image.new("RGBA", (S, S), (0, 0, 0, 0))
    mask = _draw_head(ImageDraw.Draw(layer), who, shot, S, fake_skin, layer)
    if mask is not None:  # the swapped region is a little smoother than the rest (a generator's look)
        layer.paste(layer.filter(ImageFilter.GaussianBlur(S / 90)), (0, 0), mask)

    # pose: output = C + t + s·R(input − C); Image.transform takes the inverse map
    c, t = S / 2, (shot.dx * S, shot.dy * S)
    a, s = math.radians(shot.angle), shot.scale
    ca, sa = math.cos(a) / s, math.sin(a) / s
    ox, oy = c + t[0], c + t[1]
    inverse = (ca, sa, c - ca * ox - sa * oy, -sa, ca, c + sa * ox - ca * oy)
    layer = layer.convert("RGBa").transform((S, S), Image.Transform.AFFINE, inverse, Image.Resampling.BILINEAR)
    layer = layer.resize((size, size), Image.Resampling.BOX).convert("RGBA")

    yy, xx = np.mgrid[0:size, 0:size].astype(np.float64) / max(1, size - 1) - 0.5
    ramp = np.clip(xx * math.cos(shot.bg_angle) + yy * math.sin(shot.bg_angle) + 0.5, 0, 1)[..., None]
    bg = (1 - ramp) * np.asarray(shot.bg[0], np.float64) + ramp * np.asarray(shot.bg[1], np.float64)
    background = Image.fromarray(np.rint(bg).astype(np.uint8), "RGB").convert("RGBA")
    img = Image.alpha_composite(background, layer).convert("RGB")
    if shot.blur > 0.05:
        img = img.filter(ImageFilter.GaussianBlur(shot.blur * size / 64))

    x = np.asarray(img, dtype=np.float64)
    gradient = 1 + shot.light * 2 * (xx * math.cos(shot.light_angle) + yy * math.sin(shot.light_angle))
    x = ((x - 128) * shot.contrast + 128) * shot.brightness * gradient[..., None] * np.asarray(shot.cast)
    x += rng.normal(0, shot.noise, x.shape)
    return Image.fromarray(np.clip(np.rint(x), 0, 255).astype(np.uint8), "RGB")


def _check(cfg: FaceDemoConfig) -> None:
    problems = []
    if cfg.n_persons < 2:
        problems.append(f"n_persons must be >= 2, got {cfg.n_persons}")
    if cfg.images_per_person < 2:
        problems.append(f"images_per_person must be >= 2 (a genuine pair needs two), got {cfg.images_per_person}")
    if cfg.fakes_per_person < 0 or not 0 <= cfg.fake_share <= 1:
        problems.append(f"fakes_per_person must be >= 0 and fake_share in 0..1, got {cfg.fakes_per_person}, "
                        f"{cfg.fake_share}")
    if cfg.n_test_persons < 0 or cfg.n_test_pairs < 0:
        problems.append(f"n_test_persons and n_test_pairs must be >= 0, got {cfg.n_test_persons}, {cfg.n_test_pairs}")
    if cfg.image_size < 32:
        problems.append(f"image_size must be >= 32 px, got {cfg.image_size}")
    if not 1 <= cfg.jpeg_quality <= 100:
        problems.append(f"jpeg_quality must be in 1..100, got {cfg.jpeg_quality}")
    if not 0 <= cfg.fake_blend_min <= cfg.fake_blend_max <= 1:
        problems.append(f"need 0 <= fake_blend_min <= fake_blend_max <= 1, got {cfg.fake_blend_min}, "
                        f"{cfg.fake_blend_max}")
    if problems:
        raise ValueError("face demo config: " + "; ".join(problems))


def _claim(root: Path) -> None:
    """Refuse to write into (or clean) a face folder this builder did not make (real data, say)."""
    readme = root / "README.txt"
    ours = readme.is_file() and readme.read_text(errors="replace").startswith(MARKER)
    for sub in ("train", "test_public"):
        if (root / sub).is_dir() and any((root / sub).iterdir()) and not ours:
            raise FileExistsError(f"{root / sub} holds files that are not from an embedlab demo build "
                                  f"(no {readme} starting with {MARKER!r}); build the demo faces into another folder")


def _remove_stale(folder: Path, keep: set[str], pattern: str) -> None:
    """Remove entries of an earlier, larger demo build that this build did not write."""
    if not folder.is_dir():
        return
    for p in folder.iterdir():
        if p.name in keep or not re.fullmatch(pattern, p.name):
            continue
        if p.is_dir():
            shutil.rmtree(p)
        else:
            p.unlink()


def _plan_pairs(cfg: FaceDemoConfig, rng: np.random.Generator) -> list[tuple]:
    """(kind, identity_0, identity_1, fake_slot) for every test pair, in pair-id order."""
    n_all = cfg.n_persons + cfg.n_test_persons
    held_out = list(range(cfg.n_persons, n_all))
    kinds = [PAIR_KINDS[j % 3] for j in range(cfg.n_test_pairs)]
    pairs = []
    for kind in (kinds[k] for k in rng.permutation(len(kinds))):
        # genuine and fake pairs: half from held-out persons (when there are any)
        pool = held_out if held_out and rng.random() < 0.5 else list(range(cfg.n_persons))
        person = int(pool[int(rng.integers(len(pool)))])
        if kind == "genuine":
            pairs.append((kind, person, person, None))
        elif kind == "fake_same_person":
            pairs.append((kind, person, person, int(rng.integers(2))))  # which of 0.jpg / 1.jpg is the fake
        else:
            a, b = rng.choice(n_all, size=2, replace=False)
            pairs.append((kind, int(a), int(b), None))
    return pairs


def build_demo_faces(root: str | Path, cfg: FaceDemoConfig, progress: bool = True) -> dict:
    """Write the demo face set under ``root`` (``train/``, ``test_public/``); return a summary of counts."""
    from tqdm import tqdm

    _check(cfg)
    root = Path(root)
    _claim(root)
    n_all = cfg.n_persons + cfg.n_test_persons
    identities = [random_identity(np.random.default_rng([cfg.seed, 0, k])) for k in range(n_all)]

    plan_rng = np.random.default_rng([cfg.seed, 1])
    donors: dict[int, tuple[int, float]] = {}  # person -> (donor, blend)
    n_fakes = {}
    for k in range(n_all):
        donor = int(plan_rng.integers(n_all - 1))
        donors[k] = (donor + (donor >= k), float(plan_rng.uniform(cfg.fake_blend_min, cfg.fake_blend_max)))
        has = cfg.fakes_per_person > 0 and plan_rng.random() < cfg.fake_share
        fewer = plan_rng.random() < 0.2  # some persons have one fake less (a 1-image class gets dropped)
        n_fakes[k] = max(1, cfg.fakes_per_person - int(fewer)) if has else 0
    pairs = _plan_pairs(cfg, plan_rng)

    def draw(person: int, fake: bool, stream: list[int]) -> Image.Image:
        rng = np.random.default_rng([cfg.seed, *stream])
        who, fake_skin = identities[person], None
        if fake:
            donor, alpha = donors[person]
            who = blend_identity(who, identities[donor], alpha)
            fake_skin = tuple((1 - alpha) * np.asarray(who.skin) + alpha * np.asarray(identities[donor].skin))
        return render_face(who, random_shot(rng), cfg.image_size, rng, fake_skin)

    README = (f"{MARKER} (Kryptonite ML Challenge layout), built by embedlab.data.face_demo.build_demo_faces\n\n"
              f"config: {cfg}\n\nSynthetic faces drawn from parameters; deepfakes blend a donor's inner features "
              "into a person's head.\ndemo_manifest.csv: every image; demo_pairs.csv: the kind of every test pair.\n")
    write_text_atomic(root / "README.txt", README)
    n_train = cfg.n_persons * cfg.images_per_person + sum(n_fakes[k] for k in range(cfg.n_persons))
    bar = tqdm(total=n_train + 2 * cfg.n_test_pairs, desc="demo faces", unit="img", disable=not progress)

    images_dir = root / "train" / "images"
    if store_at(images_dir) is not None:  # a store of an earlier build (ours: claimed above) is built afresh
        shutil.rmtree(images_dir)
    meta: dict[str, int] = {}
    manifest: list[list] = []
    persons = [f"{k:08d}" for k in range(cfg.n_persons)]
    for k, person in enumerate(persons):
        is_fake = [0] * cfg.images_per_person + [1] * n_fakes[k]
        order = np.random.default_rng([cfg.seed, 2, k]).permutation(len(is_fake))  # names do not tell fakes
        written = set()
        for i, j in enumerate(order):
            fake = bool(is_fake[j])
            name = f"{person}/{i}.jpg"
            save_jpeg_atomic(draw(k, fake, [3, k, i]), images_dir / name, cfg.jpeg_quality)
            meta[name] = int(fake)
            written.add(f"{i}.jpg")
            donor, alpha = donors[k] if fake else ("", "")
            manifest.append([f"train/images/{name}", k, int(fake), donor, f"{alpha:.3f}" if fake else ""])
            bar.update()
        _remove_stale(images_dir / person, written, r"\d+\.jpg")
    _remove_stale(images_dir, set(persons), r"\d{8}")
    write_json_atomic(root / "train" / "meta.json", meta)
    if cfg.store:
        pack_folder(images_dir)  # as `embedlab import kryptonite` writes it

    test_dir = root / "test_public"
    labels, pair_rows, pair_ids = [], [], []
    for p, (kind, a, b, fake_slot) in enumerate(pairs):
        pair_id = f"{p:08d}"
        for slot, person in enumerate((a, b)):
            fake = fake_slot == slot
            save_jpeg_atomic(draw(person, fake, [4, p, slot]), test_dir / pair_id / f"{slot}.jpg", cfg.jpeg_quality)
            donor, alpha = donors[person] if fake else ("", "")
            manifest.append([f"test_public/{pair_id}/{slot}.jpg", person, int(fake), donor,
                             f"{alpha:.3f}" if fake else ""])
            bar.update()
        same = int(kind == "genuine")
        labels.append([pair_id, same])
        pair_rows.append([pair_id, same, kind, a, b])
        pair_ids.append(pair_id)
    bar.close()
    test_dir.mkdir(parents=True, exist_ok=True)
    _remove_stale(test_dir, set(pair_ids), r"\d{8}")
    write_csv_atomic(test_dir / "labels.csv", ["pair_id", "same"], labels)
    write_csv_atomic(root / "demo_pairs.csv", ["pair_id", "same", "kind", "identity_0", "identity_1"], pair_rows)
    write_csv_atomic(root / "demo_manifest.csv", ["path", "identity", "is_fake", "donor", "blend"], manifest)

    n_fake_train = sum(meta.values())
    return {
        "root": str(root),
        "persons": cfg.n_persons,
        "test_only_persons": cfg.n_test_persons,
        "train_images": len(meta),
        "train_real": len(meta) - n_fake_train,
        "train_fake": n_fake_train,
        "persons_with_fakes": sum(1 for k in range(cfg.n_persons) if n_fakes[k]),
        "test_pairs": len(pairs),
        "test_pairs_by_kind": {kind: sum(1 for q in pairs if q[0] == kind) for kind in PAIR_KINDS},
    }
