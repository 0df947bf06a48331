"""The augmentation catalogue and the drip query augmenter, on real photos."""

from __future__ import annotations

import math
import pickle

import numpy as np
import pytest
from PIL import Image
from skimage import data

from embedlab.augment import (
    AugContext,
    FontBank,
    OverlayPool,
    QueryAugmenter,
    format_query_table,
    get_transform,
    query_augmentation_table,
    transform_names,
)

SIZE = 96
FIXED = {"scale": 0.1, "jpeg": 0.1, "color_jitter": 0.2, "shuffle_pixels": 0.1, "hflip": 0.5, "vflip": 0.1}
# Probabilities at I=1, as listed in docs/originals/drip.md.
AT_ONE = {
    "rotate": 0.1, "perspective": 0.1, "grayscale": 0.1, "opacity": 0.05, "crop": 0.1, "pad": 0.05,
    "overlay_image": 0.1, "overlay_onto_image": 0.1, "blur": 0.1, "sharpen": 0.1, "stripes": 0.1,
    "emoji": 0.1, "text": 0.1, "pixelization": 0.1, "meme": 0.1, "screenshot": 0.05,
    "channel_invert": 0.05, "channel_swap": 0.05, "channel_shift": 0.05, **FIXED,
}  # fmt: skip


def _photo(fn, size: int = SIZE) -> Image.Image:
    return Image.fromarray(fn()).resize((size, size), Image.BILINEAR)


@pytest.fixture(scope="module")
def astronaut() -> Image.Image:
    return _photo(data.astronaut)


@pytest.fixture(scope="module")
def cat() -> Image.Image:
    return _photo(data.chelsea)


@pytest.fixture(scope="module")
def ctx() -> AugContext:
    return AugContext(pool=OverlayPool.from_images([_photo(data.coffee), _photo(data.rocket)]))


def _apply(name: str, img: Image.Image, ctx: AugContext, seed: int = 0, **kw) -> np.ndarray:
    out = get_transform(name)(img, np.random.default_rng(seed), ctx, **kw)
    assert isinstance(out, Image.Image) and out.mode == "RGB"
    return np.asarray(out)


def _changed_fraction(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.any(a != b, axis=-1).mean())


# --- the query augmenter -----------------------------------------------------


def test_same_seed_gives_same_bytes_and_seeds_differ(astronaut, ctx):
    aug = QueryAugmenter(0.8, ctx.pool)
    outs = [aug(astronaut, np.random.default_rng(s)).tobytes() for s in range(12)]
    again = [aug(astronaut, np.random.default_rng(s)).tobytes() for s in range(12)]
    assert outs == again
    assert len(set(outs)) > 6  # the seed actually drives the augmentation


def test_pickled_augmenter_gives_the_same_output(astronaut, ctx):
    # DataLoader workers receive a pickled copy; it must augment identically.
    aug = QueryAugmenter(0.7, ctx.pool)
    clone = pickle.loads(pickle.dumps(aug))
    for s in range(8):
        assert aug(astronaut, s).tobytes() == clone(astronaut, s).tobytes()


def test_intensity_zero_leaves_only_the_fixed_ops(astronaut):
    active = {r.name: r.probability for r in query_augmentation_table(0.0) if r.probability > 0}
    assert active == pytest.approx(FIXED)
    aug, fired = QueryAugmenter(0.0), []
    for s in range(150):
        aug(astronaut, np.random.default_rng(s), trace=fired)
    assert set(fired) <= set(FIXED) and "hflip" in fired


def test_probabilities_match_the_reference_and_scale_linearly():
    at_one = {r.name: r.probability for r in query_augmentation_table(1.0)}
    assert at_one == pytest.approx(AT_ONE)
    for i in (0.25, 0.5, 0.9):
        for name, p, _ in query_augmentation_table(i):
            expected = FIXED[name] if name in FIXED else AT_ONE[name] * i
            assert p == pytest.approx(expected), name


def test_magnitudes_grow_with_intensity():
    low = {r.name: r.kwargs for r in query_augmentation_table(0.2)}
    high = {r.name: r.kwargs for r in query_augmentation_table(0.9)}
    assert high["jpeg"]["quality"][1] < low["jpeg"]["quality"][1]  # sane JPEG: stronger, lower quality
    assert high["jpeg"]["quality"][0] < low["jpeg"]["quality"][0]
    assert high["rotate"]["angle"][1] > low["rotate"]["angle"][1]
    assert high["perspective"]["sigma"] > low["perspective"]["sigma"]
    assert high["pixelization"]["ratio"][0] < low["pixelization"]["ratio"][0]
    assert high["blur"]["sigma"][1] > low["blur"]["sigma"][1]
    assert "| jpeg |" in format_query_table(0.5)


def test_hflip_fires_about_half_the_time(astronaut):
    aug, n, hits = QueryAugmenter(1.0), 300, 0
    for s in range(n):
        trace: list[str] = []
        aug(astronaut, s, trace=trace)
        hits += "hflip" in trace
    assert abs(hits / n - 0.5) < 4 * math.sqrt(0.25 / n)


@pytest.mark.parametrize("bad", [-0.01, 1.5, float("nan"), float("inf"), "strong", None, True])
def test_out_of_range_intensity_is_a_clear_error(bad):
    with pytest.raises(ValueError, match="intensity"):
        QueryAugmenter(bad)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        query_augmentation_table(bad)


def test_full_intensity_never_crashes_and_returns_rgb(tmp_path, cat):
    paths = []
    for k, fn in enumerate((data.coffee, data.rocket)):
        paths.append(tmp_path / f"T{k:06d}.jpg")
        _photo(fn, 200).save(paths[-1])
    aug = QueryAugmenter.from_paths(1.0, paths, max_side=64)
    for s in range(50):
        out = aug(cat.convert("L") if s % 5 == 0 else cat, np.random.default_rng(s))
        assert out.mode == "RGB" and min(out.size) >= 1
        assert out is not cat


def test_input_is_never_modified(astronaut, ctx):
    before = astronaut.tobytes()
    aug = QueryAugmenter(1.0, ctx.pool)
    for s in range(30):
        aug(astronaut, s)
    assert astronaut.tobytes() == before


# --- the catalogue, op by op ---------------------------------------------------


@pytest.mark.parametrize("name", transform_names())
def test_every_op_returns_rgb_without_touching_its_input(name, cat, ctx):
    before = cat.tobytes()
    out = get_transform(name)(cat, np.random.default_rng(1), ctx)
    assert out.mode == "RGB" and out is not cat and cat.tobytes() == before


def test_unknown_op_lists_known_ones():
    with pytest.raises(KeyError, match="hflip"):
        get_transform("no_such_op")


def test_grayscale_has_equal_channels(astronaut, ctx):
    out = _apply("grayscale", astronaut, ctx).astype(int)
    assert np.array_equal(out[..., 0], out[..., 1]) and np.array_equal(out[..., 1], out[..., 2])
    assert not np.array_equal(np.asarray(astronaut)[..., 0], np.asarray(astronaut)[..., 1])


def _high_freq(arr: np.ndarray) -> float:
    g = arr.astype(np.float32).mean(axis=-1)
    return float(np.abs(4 * g[1:-1, 1:-1] - g[:-2, 1:-1] - g[2:, 1:-1] - g[1:-1, :-2] - g[1:-1, 2:]).mean())


def test_blur_lowers_and_sharpen_raises_high_frequencies(astronaut, ctx):
    base = _high_freq(np.asarray(astronaut))
    assert _high_freq(_apply("blur", astronaut, ctx, sigma=0.02)) < 0.6 * base
    assert _high_freq(_apply("sharpen", astronaut, ctx, alpha=0.8)) > 1.3 * base


def test_flips_mirror(astronaut, ctx):
    arr = np.asarray(astronaut)
    assert np.array_equal(_apply("hflip", astronaut, ctx), arr[:, ::-1])
    assert np.array_equal(_apply("vflip", astronaut, ctx), arr[::-1])


def test_jpeg_damage_grows_as_quality_drops(astronaut, ctx):
    arr = np.asarray(astronaut).astype(np.float32)
    err = {q: np.abs(_apply("jpeg", astronaut, ctx, quality=q) - arr).mean() for q in (5, 30, 95)}
    assert err[5] > err[30] > err[95] and err[5] > 3.0


def test_pixelization_makes_blocks(astronaut, ctx):
    out = _apply("pixelization", astronaut, ctx, ratio=0.125)
    # 96 px at ratio 1/8: 12×12 blocks, each one flat colour.
    assert len(np.unique(out.reshape(-1, 3), axis=0)) <= 12 * 12
    assert len(np.unique(np.asarray(astronaut).reshape(-1, 3), axis=0)) > 2000
    assert np.all(out[:8, :8] == out[0, 0])


@pytest.mark.parametrize("name", ["text", "emoji", "stripes"])
def test_drawn_overlays_change_some_pixels_but_not_all(name, astronaut, ctx):
    fractions = [_changed_fraction(_apply(name, astronaut, ctx, seed=s), np.asarray(astronaut)) for s in range(5)]
    assert all(0.002 < f < 0.8 for f in fractions), fractions


def test_rotate_keeps_the_size_and_turns_the_content(cat, ctx):
    arr = np.asarray(cat).astype(np.float32)
    cropped = _apply("rotate", cat, ctx, angle=30.0)
    assert cropped.shape == arr.shape
    assert cropped[[0, 0, -1, -1], [0, -1, 0, -1]].max(axis=-1).min() > 10  # no black corners
    corners = _apply("rotate", cat, ctx, angle=30.0, crop_border=False)
    assert corners.shape == arr.shape and corners[0, 0].max() == 0
    half_turn = _apply("rotate", cat, ctx, angle=180.0).astype(np.float32)
    assert np.abs(half_turn - arr[::-1, ::-1]).mean() < 0.1 * np.abs(arr - arr[::-1, ::-1]).mean()


def test_channel_swap_permutes_and_invert_inverts(astronaut, ctx):
    arr = np.asarray(astronaut)
    for s in range(6):
        out = _apply("channel_swap", astronaut, ctx, seed=s)
        perm = [next(c for c in range(3) if np.array_equal(out[..., k], arr[..., c])) for k in range(3)]
        assert sorted(perm) == [0, 1, 2] and perm != [0, 1, 2]
        inv = _apply("channel_invert", astronaut, ctx, seed=s).astype(int)
        flipped = [np.array_equal(inv[..., c], 255 - arr[..., c]) for c in range(3)]
        kept = [np.array_equal(inv[..., c], arr[..., c]) for c in range(3)]
        assert any(flipped) and all(f or k for f, k in zip(flipped, kept))


def test_shuffle_pixels_moves_pixels_but_keeps_them(astronaut, ctx):
    arr = np.asarray(astronaut).reshape(-1, 3)
    out = _apply("shuffle_pixels", astronaut, ctx, fraction=0.3).reshape(-1, 3)
    assert 0.1 < _changed_fraction(out, arr) <= 0.32
    assert np.array_equal(np.sort(out.view("V3").ravel()), np.sort(arr.view("V3").ravel()))


def test_size_changing_ops(astronaut, ctx):
    h, w = SIZE, SIZE
    assert _apply("meme", astronaut, ctx).shape[0] > h
    assert _apply("pad", astronaut, ctx, frac=0.1).shape[:2] == (h + 2 * round(0.1 * h), w + 2 * round(0.1 * w))
    assert _apply("crop", astronaut, ctx, keep=0.5).shape[:2] == (h // 2, w // 2)
    assert _apply("random_resized_crop", astronaut, ctx, size=64).shape[:2] == (64, 64)
    assert _apply("screenshot", astronaut, ctx).shape[:2] == (h, w)


# --- overlays and the pool ------------------------------------------------------


def _solid(color: tuple[int, int, int]) -> Image.Image:
    return Image.new("RGB", (50, 40), color)


def test_overlays_use_pool_content(astronaut):
    magenta = (255, 0, 255)
    ctx = AugContext(pool=OverlayPool.from_images([_solid(magenta)]))
    is_magenta = lambda a: np.all(a == magenta, axis=-1).mean()  # noqa: E731
    assert is_magenta(np.asarray(astronaut)) == 0
    onto = _apply("overlay_onto_image", astronaut, ctx, scale=0.5)
    assert 0.6 < is_magenta(onto) < 0.8  # the background shows around a quarter-area copy
    over = _apply("overlay_image", astronaut, ctx, scale=0.5, opacity=1.0)
    assert 0.05 < is_magenta(over) < 0.3
    assert is_magenta(_apply("opacity", astronaut, ctx, level=0.0)) == 1.0


def test_overlays_without_a_pool_fall_back_to_a_synthetic_image(astronaut):
    for pool in (None, OverlayPool([])):
        ctx = AugContext(pool=pool)
        for name in ("overlay_onto_image", "overlay_image", "opacity"):
            out = _apply(name, astronaut, ctx)
            assert out.shape == np.asarray(astronaut).shape
            assert _changed_fraction(out, np.asarray(astronaut)) > 0.05


def test_pool_from_paths_is_lazy_bounded_and_survives_broken_files(tmp_path, caplog):
    good = [tmp_path / f"{k}.png" for k in range(3)]
    for k, p in enumerate(good):
        _solid((80 * k, 0, 0)).resize((400, 300)).save(p)
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"not a jpeg")
    pool = OverlayPool.from_paths([*good, broken], max_side=64, cache_size=2)
    rng = np.random.default_rng(0)
    samples = [pool.sample(rng) for _ in range(40)]
    assert all(s.mode == "RGB" and max(s.size) <= 64 for s in samples)
    assert pool.n_failed == 1  # one warning, and the file is not re-read every time
    assert len([r for r in caplog.records if "broken.jpg" in r.getMessage()]) == 1
    assert len(pool._cache) <= 2
    assert {s.getpixel((0, 0)) for s in samples} >= {(0, 0, 0), (80, 0, 0), (160, 0, 0)}


def test_missing_font_file_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="nofont.ttf"):
        FontBank([tmp_path / "nofont.ttf"])


@pytest.mark.parametrize("name", transform_names())
def test_every_op_survives_tiny_images(name):
    """Crop and scale can leave a few pixels; the next op must still work (a
    screenshot frame on a 4-px-high image once stopped a training run)."""
    fn = get_transform(name)
    ctx = AugContext(OverlayPool.from_images([Image.new("RGB", (50, 50), (255, 0, 0))]))
    for size in [(1, 1), (2, 3), (3, 2), (7, 4), (16, 9)]:
        for seed in range(10):
            rng = np.random.default_rng(seed)
            img = Image.fromarray(rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8))
            out = fn(img, rng, ctx)
            assert out.mode == "RGB" and min(out.size) >= 1
